/* mimeo compact DIR: shrinks the data file of a data directory that no server has open.
 * LMDB reuses the pages that deletions free but never returns them to the file system, so
 * after deleting big databases the file stays at its high-water size until compacted. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "mimeo.h"
#include "cli.h"

static void compact_usage(FILE *out) {
    fprintf(out,
            "usage: mimeo compact DIR\n\n"
            "Rewrites DIR's data file with only the pages in use and swaps it in atomically.\n"
            "The server must be stopped (a running one holds DIR's lock); the copy needs\n"
            "free disk space up to the size of the data in use.\n");
}

int cli_compact(int argc, char **argv) {
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        compact_usage(stdout);
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        compact_usage(stderr);
        return 2;
    }
    uint64_t before = 0, after = 0;
    mimeo_err err;
    memset(&err, 0, sizeof err);
    int rc = mimeo_dir_compact(argv[1], &before, &after, &err);
    if (rc) {
        fprintf(stderr, "mimeo compact: %s\n", err.reason[0] ? err.reason : mimeo_strerror(rc));
        return 1;
    }
    printf("mimeo compact: %s: %" PRIu64 " bytes -> %" PRIu64 " bytes\n", argv[1], before, after);
    return 0;
}
