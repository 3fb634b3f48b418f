/* The subcommands of the mimeo program. Each lives in its own file and is listed once in
 * the table in main.c; it gets argv from the subcommand's name on and returns the exit
 * status. */
#ifndef MIMEO_CLI_H
#define MIMEO_CLI_H

/* mimeo serve [--data DIR] [--bind ADDR] [--port N] [--config FILE] (serve.c) */
int cli_serve(int argc, char **argv);
/* mimeo compact DIR (compact.c) */
int cli_compact(int argc, char **argv);

#endif
