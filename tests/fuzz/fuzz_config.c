/* libFuzzer driver for the server's configuration file: INI text through inih and the one
 * table of options (src/cli/config.c), then the [admins] hashing and the views handed to the
 * library and the HTTP server. Beyond "no crash, no overrun, no leak" it checks that a failed
 * load says why, that every text field stays NUL-terminated inside its array, that loading
 * the same text twice gives the same configuration, that the port stays a port, and that
 * every admin password is a readable hash after hashing. Build: `make fuzz` (clang). */
#include "cli/config.h"
#include "auth/auth.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void fuzz_check(int cond) {
    if (!cond) abort();
}

/* Unknown keys are reported on stderr: kept out of the fuzzer's log (but not its crash
 * reports, which come after stderr is restored). */
static int fuzz_devnull = -1, fuzz_stderr = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fuzz_devnull = open("/dev/null", O_WRONLY);
    fuzz_stderr = dup(2);
    return 0;
}

static int fuzz_load(cli_config *c, const char *text, char *err, size_t errlen) {
    config_defaults(c);
    if (fuzz_devnull >= 0) dup2(fuzz_devnull, 2);
    int rc = config_load_string(c, text, "fuzz.ini", err, errlen);
    if (fuzz_stderr >= 0) dup2(fuzz_stderr, 2);
    return rc;
}

#define FIELD_TERMINATED(f) fuzz_check(memchr((f), '\0', sizeof(f)) != NULL)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size > 64 * 1024) return 0;
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    static cli_config a, b;
    char err[512], err2[512];
    err[0] = err2[0] = '\0';
    int rc = fuzz_load(&a, text, err, sizeof err);
    fuzz_check(rc == 0 || rc == -1);
    if (rc != 0) {
        fuzz_check(err[0] != '\0' && memchr(err, '\0', sizeof err) != NULL);
        free(text);
        return 0;
    }
    fuzz_check(fuzz_load(&b, text, err2, sizeof err2) == 0);
    /* The admin pointer views point into their own struct: compare everything else. */
    memcpy(b.admin_name_ptrs, a.admin_name_ptrs, sizeof a.admin_name_ptrs);
    memcpy(b.admin_value_ptrs, a.admin_value_ptrs, sizeof a.admin_value_ptrs);
    fuzz_check(memcmp(&a, &b, sizeof a) == 0);

    FIELD_TERMINATED(a.data_dir);
    FIELD_TERMINATED(a.bind_address);
    FIELD_TERMINATED(a.cors_origins);
    FIELD_TERMINATED(a.cors_methods);
    FIELD_TERMINATED(a.cors_headers);
    FIELD_TERMINATED(a.repl_cafile);
    FIELD_TERMINATED(a.default_security);
    FIELD_TERMINATED(a.auth_secret);
    FIELD_TERMINATED(a.auth_same_site);
    FIELD_TERMINATED(a.www_authenticate);
    FIELD_TERMINATED(a.allowed_hosts);
    FIELD_TERMINATED(a.tls_cert);
    FIELD_TERMINATED(a.mesh.join);
    FIELD_TERMINATED(a.mesh.name);
    fuzz_check(a.port <= 65535);
    fuzz_check(a.nadmins <= CFG_MAX_ADMINS);
    for (size_t i = 0; i < a.nadmins; i++) {
        FIELD_TERMINATED(a.admin_names[i]);
        FIELD_TERMINATED(a.admin_values[i]);
        fuzz_check(a.admin_names[i][0] != '\0' && a.admin_names[i][0] != '_' &&
                   strchr(a.admin_names[i], ':') == NULL);
    }

    /* Hashing: cheap iterations (the count is not what is fuzzed here), no file to
     * rewrite. Every plain password must come out as a hash that reads back. */
    bool was_hashed[CFG_MAX_ADMINS];
    for (size_t i = 0; i < a.nadmins; i++) was_hashed[i] = auth_pw_is_hashed(a.admin_values[i]);
    a.auth_iterations = 1;
    a.config_path[0] = '\0';
    fuzz_check(config_admins_hash(&a, err, sizeof err) == 0);
    for (size_t i = 0; i < a.nadmins; i++) {
        if (was_hashed[i]) continue;
        auth_pw h;
        fuzz_check(auth_pw_parse_config(a.admin_values[i], &h) == 0);
    }

    mimeo_options o;
    http_config h;
    mimeo_replicator_options r;
    config_to_options(&a, &o);
    config_to_http(&a, &h);
    config_to_replicator(&a, &r);
    fuzz_check(h.auth.nadmins == a.nadmins);
    free(text);
    return 0;
}
