/* libFuzzer driver for the HTTP request-target parser (src/http/url.c): path splitting,
 * per-segment percent-decoding, query arguments and their typed readers (boolean, integer,
 * JSON, string lists), on arbitrary bytes. Beyond "no crash, no overrun, no leak" it checks
 * that every segment and argument is NUL-terminated at its length inside the request's
 * buffer, that a target without escapes splits exactly like a plain split on '/', and that
 * a typed reader either yields a value or replies 400.
 * Build (the .c files of src/http and of the library, whose calls the handlers reference):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Iinclude -Isrc \
 *     tests/fuzz/fuzz_http_path.c $(ls src/http/[!.]*.c src/common/[!.]*.c src/json/[!.]*.c \
 *     src/doc/[!.]*.c src/store/[!.]*.c src/db/[!.]*.c src/repl/[!.]*.c) \
 *     -llmdb -lmicrohttpd -lcurl -lnettle -lpthread -o fuzz_http_path */
#include "http/http_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void fuzz_check(int cond) {
    if (!cond) abort();
}

static void fuzz_in_buffer(const http_req *r, const char *p, size_t len, size_t cap) {
    fuzz_check(p >= r->raw && p + len < r->raw + cap);
    fuzz_check(p[len] == '\0');
}

/* Each reader on one argument: a value (1) with no reply, or -1 with a 400 reply. */
static void fuzz_typed(http_req *r, const char *key) {
    bool b;
    uint64_t u;
    jval *v = NULL;
    http_string_list l;
    for (int kind = 0; kind < 4; kind++) {
        int rc;
        switch (kind) {
        case 0: rc = http_arg_bool(r, key, &b); break;
        case 1: rc = http_arg_u64(r, key, &u); break;
        case 2: rc = http_arg_json_str(r, key, &v); break;
        default: rc = http_arg_string_list(r, key, "bad_request", "not a list", &l); break;
        }
        fuzz_check(rc == 1 || rc == -1);
        fuzz_check((rc == -1) == (r->resp != NULL));
        if (rc == -1) {
            fuzz_check(r->status == 400);
            MHD_destroy_response(r->resp);
            r->resp = NULL;
            r->status = 0;
        }
        if (rc == 1 && kind == 2) {
            fuzz_check(v && v->type == JV_STRING);
            jval_free(v);
            v = NULL;
        }
        if (rc == 1 && kind == 3) http_string_list_destroy(&l);
    }
}

static http_server fuzz_srv;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* MHD hands us a C string: the target ends at the first NUL. */
    char *target = malloc(size + 1);
    if (!target) return 0;
    memcpy(target, data, size);
    target[size] = '\0';
    size_t n = strlen(target);

    http_req *r = http_req_new(target);
    if (!r) { free(target); return 0; }
    size_t cap = n + 1;

    size_t kept = r->nseg < HTTP_MAX_SEGS ? r->nseg : HTTP_MAX_SEGS;
    for (size_t i = 0; i < kept; i++) fuzz_in_buffer(r, r->seg[i], r->seg_len[i], cap);
    fuzz_check(r->nargs <= r->args_cap && r->args_cap <= HTTP_MAX_ARGS);
    for (size_t i = 0; i < r->nargs; i++) {
        fuzz_in_buffer(r, r->args[i].key, r->args[i].key_len, cap);
        fuzz_in_buffer(r, r->args[i].val, r->args[i].val_len, cap);
        size_t vl = 0;
        fuzz_check(http_arg_get(r, r->args[i].key, &vl) != NULL);
    }
    fuzz_srv.limits.max_depth = 64;
    fuzz_srv.limits.max_doc_bytes = 1 << 20;
    r->srv = &fuzz_srv;
    r->method = HTTP_GET;
    buf_init(&r->body, 0);
    for (size_t i = 0; i < r->nargs && i < 8; i++) fuzz_typed(r, r->args[i].key);
    buf_destroy(&r->body);

    /* Without escapes, queries or pluses the segments are the plain split. */
    if (!memchr(target, '%', n) && !memchr(target, '?', n) && !r->url_bad) {
        const char *p = target + (n > 0 && target[0] == '/');
        size_t i = 0;
        while (*p && i < kept) {
            const char *e = strchr(p, '/');
            size_t len = e ? (size_t)(e - p) : strlen(p);
            fuzz_check(len == r->seg_len[i] && memcmp(p, r->seg[i], len) == 0);
            i++;
            if (!e) break;
            p = e + 1;
        }
    }

    /* Decoding never grows and rejects truncated escapes. */
    char *copy = malloc(n + 1);
    if (copy) {
        memcpy(copy, target, n + 1);
        size_t dl = http_pct_decode(copy, n, true);
        fuzz_check(dl == (size_t)-1 || dl <= n);
        free(copy);
    }

    free(r);
    free(target);
    return 0;
}
