/* mimeo replicate: the command-line front of the replicator (replicate.c). */
#ifndef MIMEO_CLI_REPLICATE_H
#define MIMEO_CLI_REPLICATE_H

/* mimeo replicate SOURCE TARGET [--continuous] [--create-target] [--doc-ids a,b]
 *                 [--data DIR] [--checkpoint-interval MS] [--retries N] [--quiet]
 * Returns the exit status: 0 when the replication completed (continuous: when stopped by
 * SIGINT/SIGTERM), 1 when it failed, 2 on a usage error. */
int cli_replicate(int argc, char **argv);

#endif
