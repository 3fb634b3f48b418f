/* The subcommands of the mimeo program, one file each in src/cli/, each listed once in the
 * table in main.c. A command gets argv from its own name on (argv[0] reads "mimeo <name>",
 * for messages) and returns the exit status: 0 done, 1 failed, 2 a usage error. */
#ifndef MIMEO_CLI_H
#define MIMEO_CLI_H

/* mimeo serve [--config FILE] [--set S.K=V]… plus one flag per row of the option table in
 * config.c (--data, --bind, --port, TLS, mesh…) (serve.c): serves the HTTP API until SIGINT
 * or SIGTERM. */
int cli_serve(int argc, char **argv);
/* mimeo compact DIR (compact.c) */
int cli_compact(int argc, char **argv);

/* mimeo replicate SOURCE TARGET [--continuous] [--create-target] [--doc-ids a,b]
 *                 [--data DIR] [--checkpoint-interval MS] [--retries N]
 *                 [--max-response-size SIZE] [--quiet]
 * (replicate.c): 0 when the replication completed (continuous: when stopped by SIGINT or
 * SIGTERM), 1 when it failed, 2 on a usage error. */
int cli_replicate(int argc, char **argv);

/* mimeo mesh status [URL] [--config FILE] [--admin-file FILE] [--json] (mesh.c): prints
 * GET /_mesh as tables; 0 done, 1 unreachable or a bad reply, 2 usage, 3 not authorised,
 * 4 the node is not part of a mesh. */
int cli_mesh(int argc, char **argv);

#endif
