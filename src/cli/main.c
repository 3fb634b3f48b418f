/* The mimeo program: dispatches `mimeo <command> …` to the command's function (one file
 * per command, declared in cli.h), and answers --version and --help. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "mimeo.h"
#include "cli.h"

typedef struct cli_command {
    const char *name;
    int       (*run)(int argc, char **argv);
    const char *usage;
    const char *summary;
} cli_command;

/* Add a command here and in cli.h; its file goes in src/cli/. */
static const cli_command cli_commands[] = {
    { "serve", cli_serve, "serve [--data DIR] [--bind ADDR] [--port N] [--config FILE]",
      "serve the CouchDB HTTP API and replication protocol" },
    { "replicate", cli_replicate, "replicate SOURCE TARGET [--continuous] [--create-target] ...",
      "copy what SOURCE has and TARGET lacks (URLs or local names)" },
    { "compact", cli_compact, "compact DIR", "shrink the data file of a stopped server's DIR" },
    { "mesh", cli_mesh, "mesh status [URL] [--config FILE] [--admin-file FILE]",
      "print a mesh node's members and sync state" },
};
#define CLI_NCOMMANDS (sizeof cli_commands / sizeof cli_commands[0])

static void cli_usage(FILE *out) {
    fprintf(out,
            "mimeo %s: a replicating JSON document store that speaks CouchDB's API\n\n"
            "usage:\n",
            MIMEO_VERSION);
    for (size_t i = 0; i < CLI_NCOMMANDS; i++)
        fprintf(out, "  mimeo %-60s %s\n", cli_commands[i].usage, cli_commands[i].summary);
    fprintf(out,
            "  mimeo --version%-52s print the version\n"
            "  mimeo --help%-55s this text\n\n"
            "Run `mimeo <command> --help` for a command's options.\n",
            "", "");
}

static const struct option cli_options[] = {
    { "help",    no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
};

static int cli_version(void) {
    printf("mimeo %s (CouchDB API %s)\n", MIMEO_VERSION, MIMEO_COUCHDB_VERSION);
    return 0;
}

int main(int argc, char **argv) {
    /* "+": the options before the command are ours; the command parses the rest. */
    int ch;
    while ((ch = getopt_long(argc, argv, "+hV", cli_options, NULL)) != -1) {
        switch (ch) {
        case 'h':
            cli_usage(stdout);
            return 0;
        case 'V':
            return cli_version();
        default:
            cli_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        cli_usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    if (strcmp(cmd, "version") == 0) return cli_version();
    if (strcmp(cmd, "help") == 0) {
        cli_usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < CLI_NCOMMANDS; i++) {
        if (strcmp(cli_commands[i].name, cmd) != 0) continue;
        /* getopt_long names argv[0] in its messages: make that "mimeo serve". */
        char name[64];
        snprintf(name, sizeof name, "mimeo %s", cmd);
        argv[optind] = name;
        return cli_commands[i].run(argc - optind, argv + optind);
    }
    fprintf(stderr, "mimeo: unknown command '%s'\n\n", cmd);
    cli_usage(stderr);
    return 2;
}
