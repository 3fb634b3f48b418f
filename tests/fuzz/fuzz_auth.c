/* libFuzzer driver for the parsers of untrusted credentials in src/auth: AuthSession cookie
 * values, Authorization: Basic headers, config-file password hashes, and _users documents
 * through the account rules. The first byte picks the parser. Beyond "no crash, no overrun,
 * no leak" it checks that a parsed cookie name holds no ':' or NUL, that Basic names hold no
 * ':', that a parsed hash formats and re-parses to the same hash, and that a non-admin's
 * account write never stores roles or a cleartext password. Build: `make fuzz` (clang). */
#include "auth/auth.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void fuzz_check(int cond) {
    if (!cond) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned mode = data[0] % 4;
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    char *s = malloc(n + 1);
    if (!s) return 0;
    memcpy(s, p, n);
    s[n] = '\0';

    if (mode == 0) {
        auth_cookie c;
        if (auth_cookie_parse(p, n, &c) == 0) {
            fuzz_check(strchr(c.name, ':') == NULL);
            fuzz_check(strlen(c.name) > 0 && strlen(c.name) <= AUTH_NAME_MAX);
            (void)auth_cookie_valid(&c, "salt", 4, (const unsigned char *)"k", 1, c.time, 600);
        }
    } else if (mode == 1) {
        char *name, *pw;
        if (auth_basic_parse(s, &name, &pw) == 0) {
            fuzz_check(strchr(name, ':') == NULL);
            free(name);
            free(pw);
        }
    } else if (mode == 2) {
        auth_pw h, g;
        if (strlen(s) == n && auth_pw_parse_config(s, &h) == 0) {
            char text[512];
            fuzz_check(auth_pw_format_config(&h, text, sizeof text) == 0);
            fuzz_check(auth_pw_parse_config(text, &g) == 0);
            fuzz_check(g.prf == h.prf && g.iterations == h.iterations && g.key_len == h.key_len &&
                       memcmp(g.key, h.key, h.key_len) == 0 && g.salt_len == h.salt_len &&
                       memcmp(g.salt, h.salt, h.salt_len) == 0);
        }
    } else {
        jval *doc = NULL;
        if (json_tree_parse(p, n, NULL, &doc, NULL) == 0) {
            auth_user u;
            memset(&u, 0, sizeof u);
            u.known = true;
            strcpy(u.name, "alice");
            buf out;
            buf_init(&out, 0);
            mimeo_err e;
            /* Cheap hashes: the fuzzer looks at the rules, not at PBKDF2. */
            if (auth_user_doc_prepare("org.couchdb.user:alice", 22, doc, NULL, &u, 1, &out, &e) == 0) {
                jval *again = NULL;
                fuzz_check(json_tree_parse(out.data, out.len, NULL, &again, NULL) == 0);
                const jval *roles = jval_get(again, "roles");
                /* A non-admin sign-up never stores roles or a cleartext password. */
                fuzz_check(!jval_get(again, "password"));
                fuzz_check(!roles || roles->type != JV_ARRAY || roles->count == 0);
                jval_free(again);
            }
            buf_destroy(&out);
            jval_free(doc);
        }
    }
    free(s);
    return 0;
}
