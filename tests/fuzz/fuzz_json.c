/* libFuzzer driver for src/json: every entry point that reads untrusted bytes (the event
 * parser, trees, documents, _bulk_docs bodies), under both default and tiny limits. Beyond
 * "no crash, no leak, no hang" it checks two properties: a tree written back out parses to
 * the same text, and a document body re-emitted by json_doc is itself a valid JSON object
 * that splits to the same body.
 * Build: clang -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *        tests/fuzz/fuzz_json.c src/json/json_*.c src/common/buf.c -o fuzz_json
 * (the comparison with yajl, which mimeo's parser replaced, is fuzz_json_diff.c's) */
#include "json/json.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void fuzz_check(int cond) {
    if (!cond) abort();
}

/* Tree → text → tree → text must be a fixed point. */
static void fuzz_tree(const char *p, size_t n, const json_limits *lim) {
    jval *v = NULL;
    json_error err;
    if (json_tree_parse(p, n, lim, &v, &err) != 0) {
        fuzz_check(v == NULL && err.code != 0 && err.error[0] != 0);
        return;
    }
    buf a = BUF_INIT, b = BUF_INIT;
    fuzz_check(json_put_jval(&a, v) == 0);
    jval *w = NULL;
    fuzz_check(json_tree_parse(a.data, a.len, lim, &w, &err) == 0);
    fuzz_check(json_put_jval(&b, w) == 0);
    fuzz_check(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    jval_free(w);
    jval_free(v);
    buf_destroy(&a);
    buf_destroy(&b);
}

static void fuzz_body_stable(const json_doc *d, const json_limits *lim) {
    json_doc again;
    json_error err;
    int rc = json_doc_parse(d->body.data, d->body.len, lim, &again, &err);
    fuzz_check(rc == 0);
    fuzz_check(again.body.len == d->body.len &&
               memcmp(again.body.data, d->body.data, d->body.len) == 0);
    json_doc_destroy(&again);
}

static void fuzz_docs(const char *p, size_t n, const json_limits *lim) {
    json_doc d;
    json_error err;
    if (json_doc_parse(p, n, lim, &d, &err) == 0) {
        fuzz_check(d.body.len >= 2 && d.body.data[0] == '{');
        fuzz_body_stable(&d, lim);
    } else {
        fuzz_check(err.code != 0 && err.error[0] != 0);
    }
    json_doc_destroy(&d);

    json_bulk bk;
    if (json_bulk_parse(p, n, lim, &bk, &err) == 0) {
        for (size_t i = 0; i < bk.count; i++) fuzz_body_stable(&bk.docs[i], lim);
    } else {
        fuzz_check(bk.count == 0 && bk.docs == NULL && err.code != 0);
    }
    json_bulk_destroy(&bk);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = (const char *)data;
    static const json_limits tiny = {4, 64};
    json_error err;
    int rc = json_parse(p, size, NULL, NULL, NULL, &err);
    fuzz_check(rc == 0 || rc == MIMEO_EBADJSON);
    json_parse(p, size, &tiny, NULL, NULL, &err);
    fuzz_tree(p, size, NULL);
    fuzz_tree(p, size, &tiny);
    fuzz_docs(p, size, NULL);
    fuzz_docs(p, size, &tiny);
    return 0;
}
