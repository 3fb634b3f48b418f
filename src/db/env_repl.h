/* The one piece of environment state the replicator keeps there: whether replication was
 * stopped on it. It lives as long as the environment, unlike the replicator's own records,
 * so a request that arrives while a server shuts down is refused instead of starting a job
 * on an environment about to be closed. */
#ifndef MIMEO_ENV_REPL_H
#define MIMEO_ENV_REPL_H

#include <stdbool.h>

#include "mimeo.h"

/* Marks env: replication was stopped; never cleared for the life of env. env may be NULL
 * (a replication between two remote peers has none). */
void env_repl_stop_mark(mimeo_env *env);
bool env_repl_stopped(mimeo_env *env);

#endif
