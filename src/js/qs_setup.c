/* Where the query server lives when configuration does not say: the mimeo-js program built
 * with mimeo, found beside the running binary or one folder up (the sanitizer build runs
 * from build/asan/ while mimeo-js is built into build/). */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "qs.h"

int qs_default_command(char *out, size_t cap) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return MIMEO_EIO;
    exe[n] = 0;
    for (int up = 0; up < 2; up++) {
        char *slash = strrchr(exe, '/');
        if (!slash) break;
        *slash = 0;
        int w = snprintf(out, cap, "%s/mimeo-js", exe);
        if (w > 0 && (size_t)w < cap && access(out, X_OK) == 0) return 0;
    }
    return MIMEO_ENOTFOUND;
}
