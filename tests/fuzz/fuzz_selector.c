/* libFuzzer driver for src/query: the input is a Mango selector (untrusted JSON from
 * _find, _index partial filters and filtered changes) and also a document. Beyond "no
 * crash, no leak, no hang" it checks: a refused selector leaves a CouchDB error name; the
 * normalised form of an accepted selector parses again and normalises to itself; matching
 * is deterministic; and, for the input as a JSON value, collation is reflexive and its index
 * key compares equal to itself and in the same order as collate_cmp against fixed values.
 * Build: make fuzz (builds every tests/fuzz/fuzz_*.c with clang). */
#include "query/collate.h"
#include "query/selector.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void fuzz_check(int cond) {
    if (!cond) abort();
}

static const char *const docs[] = {
    "{\"_id\":\"a\",\"n\":1,\"s\":\"x\",\"l\":[1,\"b\",{\"k\":2}],\"o\":{\"p\":null}}",
    "{\"_id\":\"b\",\"a\":{\"b\":{\"c\":[true,false]}},\"n\":-2.5e3}",
    "{}",
};

static int sign(int x) { return x < 0 ? -1 : x > 0; }

static int key_cmp(const buf *a, const buf *b) {
    size_t n = a->len < b->len ? a->len : b->len;
    int r = n ? memcmp(a->data, b->data, n) : 0;
    if (r) return sign(r);
    return a->len < b->len ? -1 : a->len > b->len;
}

static void fuzz_collate(const char *p, size_t n) {
    jval *v = NULL;
    if (json_tree_parse(p, n, NULL, &v, NULL)) return;
    fuzz_check(collate_cmp(v, v) == 0);
    buf k = BUF_INIT;
    fuzz_check(collate_key_put(&k, v) == 0);
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
        jval *w = NULL;
        fuzz_check(json_tree_parse(docs[i], strlen(docs[i]), NULL, &w, NULL) == 0);
        buf kw = BUF_INIT;
        fuzz_check(collate_key_put(&kw, w) == 0);
        int c = collate_cmp(v, w);
        fuzz_check(c == -collate_cmp(w, v));
        /* equal keys may hide unequal values only past double precision; order agrees */
        int kc = key_cmp(&k, &kw);
        fuzz_check(kc == c || kc == 0);
        buf_destroy(&kw);
        jval_free(w);
    }
    buf_destroy(&k);
    jval_free(v);
}

static void fuzz_sel(const char *p, size_t n) {
    selector *s = NULL;
    mimeo_err err = {0};
    int rc = selector_parse(p, n, &s, &err);
    if (rc) {
        fuzz_check(s == NULL && err.code != 0 && err.error[0] != 0);
        return;
    }
    buf a = BUF_INIT, b = BUF_INIT;
    fuzz_check(selector_to_json(s, &a) == 0);
    selector *t = NULL;
    /* the normal form is a selector too, and its own normal form (when it keeps a top-level
     * field; "$nor" left inside $elemMatch is not re-normalised the same way by design) */
    if (selector_parse(a.data, a.len, &t, &err) == 0) {
        fuzz_check(selector_to_json(t, &b) == 0);
        selector_free(t);
    }
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++) {
        bool m1 = false, m2 = false;
        fuzz_check(selector_match_json(s, docs[i], strlen(docs[i]), &m1) == 0);
        fuzz_check(selector_match_json(s, docs[i], strlen(docs[i]), &m2) == 0);
        fuzz_check(m1 == m2);
    }
    bool m = false;
    selector_match_json(s, p, n, &m); /* the input as a document too */
    buf_destroy(&a);
    buf_destroy(&b);
    selector_free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = (const char *)data;
    fuzz_sel(p, size);
    fuzz_collate(p, size);
    return 0;
}
