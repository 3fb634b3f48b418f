/* libFuzzer driver for src/json: every entry point that reads untrusted bytes (the event
 * parser, trees, documents, _bulk_docs bodies), under both default and tiny limits. Beyond
 * "no crash, no leak, no hang" it checks two properties: a tree written back out parses to
 * the same text, and a document body re-emitted by json_doc is itself a valid JSON object
 * that splits to the same body. json_skim_docs must agree with the event parser on what it
 * accepts and on the documents it finds, and a tree in one block with the tree.
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

/* ---- json_skim_docs against the event parser ----
 * The reference reads the same replies with json_parse's events: the object value of every
 * "ok" member met outside a document is built as a tree, "error" members with an object
 * value are counted. The skimmer must accept exactly the same texts, hand over the same
 * documents in the same order (their spans parse to the same trees) and locate the members
 * it reports where they are. */
typedef struct skim_ref {
    json_builder *jb;
    unsigned depth, cap;   /* cap: depth of the document being built; 0: none */
    bool want, want_err;
    size_t errors;
    buf docs;              /* each document's compact text, one after another */
    size_t ndocs;
} skim_ref;

static int sr_value(skim_ref *r, bool map) {
    if (!r->cap) {
        if (r->want && map) r->cap = r->depth + 1;
        else if (r->want_err && map) r->errors++;
    }
    r->want = r->want_err = false;
    return 0;
}

static int sr_done(skim_ref *r) {
    jval *v = json_builder_take(r->jb);
    fuzz_check(v != NULL);
    fuzz_check(json_put_jval(&r->docs, v) == 0 && buf_putc(&r->docs, '\n') == 0);
    jval_free(v);
    r->ndocs++;
    r->cap = 0;
    return 0;
}

static int sr_null(void *c) {
    skim_ref *r = c;
    sr_value(r, false);
    return r->cap ? json_builder_handlers.on_null(r->jb) : 0;
}
static int sr_bool(void *c, bool b) {
    skim_ref *r = c;
    sr_value(r, false);
    return r->cap ? json_builder_handlers.on_bool(r->jb, b) : 0;
}
static int sr_number(void *c, const char *s, size_t n) {
    skim_ref *r = c;
    sr_value(r, false);
    return r->cap ? json_builder_handlers.on_number(r->jb, s, n) : 0;
}
static int sr_string(void *c, const char *s, size_t n) {
    skim_ref *r = c;
    sr_value(r, false);
    return r->cap ? json_builder_handlers.on_string(r->jb, s, n) : 0;
}
static int sr_start(void *c, bool map) {
    skim_ref *r = c;
    sr_value(r, map);
    r->depth++;
    if (!r->cap) return 0;
    return map ? json_builder_handlers.on_start_map(r->jb)
               : json_builder_handlers.on_start_array(r->jb);
}
static int sr_start_map(void *c) { return sr_start(c, true); }
static int sr_start_array(void *c) { return sr_start(c, false); }
static int sr_end(void *c) {
    skim_ref *r = c;
    if (r->cap) {
        json_builder_handlers.on_end_map(r->jb);
        if (r->depth == r->cap) sr_done(r);
    }
    r->depth--;
    return 0;
}
static int sr_key(void *c, const char *s, size_t n) {
    skim_ref *r = c;
    if (!r->cap) {
        r->want = n == 2 && memcmp(s, "ok", 2) == 0;
        r->want_err = n == 5 && memcmp(s, "error", 5) == 0;
        return 0;
    }
    return json_builder_handlers.on_key(r->jb, s, n);
}
static const json_handlers skim_ref_handlers = {
    .on_null = sr_null, .on_bool = sr_bool, .on_number = sr_number, .on_string = sr_string,
    .on_start_map = sr_start_map, .on_key = sr_key, .on_end_map = sr_end,
    .on_start_array = sr_start_array, .on_end_array = sr_end,
};

typedef struct skim_got {
    buf docs;
    size_t ndocs;
} skim_got;

static int skim_doc(void *ctx, const json_skim_doc *d) {
    skim_got *g = ctx;
    jval *v = NULL;
    json_error err;
    static const json_limits deep = {1u << 20, 0};
    fuzz_check(d->len >= 2 && d->text[0] == '{' && d->text[d->len - 1] == '}');
    fuzz_check(json_tree_parse(d->text, d->len, &deep, &v, &err) == 0 && v->type == JV_OBJECT);
    fuzz_check(json_put_jval(&g->docs, v) == 0 && buf_putc(&g->docs, '\n') == 0);
    g->ndocs++;
    const jval *rev = jval_get(v, "_rev");
    if (d->rev) {
        fuzz_check(rev && rev->type == JV_STRING && rev->len == d->rev_len &&
                   memcmp(rev->str, d->rev, d->rev_len) == 0);
    } else {
        fuzz_check(!rev || rev->type != JV_STRING || memchr(d->text, '\\', d->len));
    }
    fuzz_check(d->has_attachments == (jval_get(v, "_attachments") != NULL));
    const jval *revs = jval_get(v, "_revisions");
    fuzz_check((d->revisions_end != 0) == (revs != NULL));
    if (revs) {
        fuzz_check(d->revisions_key < d->revisions_value &&
                   d->revisions_value < d->revisions_end && d->revisions_end < d->len &&
                   d->text[d->revisions_key] == '"');
        jval *w = NULL;
        fuzz_check(json_tree_parse(d->text + d->revisions_value,
                                   d->revisions_end - d->revisions_value, &deep, &w,
                                   &err) == 0);
        buf a = BUF_INIT, b = BUF_INIT;
        fuzz_check(json_put_jval(&a, w) == 0 && json_put_jval(&b, revs) == 0);
        fuzz_check(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
        buf_destroy(&a);
        buf_destroy(&b);
        jval_free(w);
    }
    jval_free(v);
    return 0;
}

static void fuzz_skim(const char *p, size_t n, const json_limits *lim) {
    skim_ref r;
    memset(&r, 0, sizeof r);
    r.jb = json_builder_new();
    fuzz_check(r.jb != NULL);
    buf_init(&r.docs, 0);
    json_error err;
    int want = json_parse(p, n, lim, &skim_ref_handlers, &r, &err);
    skim_got g;
    memset(&g, 0, sizeof g);
    buf_init(&g.docs, 0);
    size_t errors = 0;
    int got = json_skim_docs(p, n, lim, skim_doc, &g, &errors, &err);
    fuzz_check((want == 0) == (got == 0));
    if (got) fuzz_check(err.code != 0 && err.error[0] != 0);
    if (want == 0) {
        fuzz_check(g.ndocs == r.ndocs && errors == r.errors);
        fuzz_check(g.docs.len == r.docs.len &&
                   (g.docs.len == 0 || memcmp(g.docs.data, r.docs.data, g.docs.len) == 0));
    }
    json_builder_free(r.jb);
    buf_destroy(&r.docs);
    buf_destroy(&g.docs);
}

/* A tree in one block writes out as the tree built node by node. */
static void fuzz_block(const char *p, size_t n, const json_limits *lim) {
    jval *v = NULL, *w = NULL;
    json_error err;
    int a = json_tree_parse(p, n, lim, &v, &err);
    int b = json_tree_parse_block(p, n, lim, &w, &err);
    fuzz_check((a == 0) == (b == 0));
    if (a == 0) {
        buf x = BUF_INIT, y = BUF_INIT;
        fuzz_check(json_put_jval(&x, v) == 0 && json_put_jval(&y, w) == 0);
        fuzz_check(x.len == y.len && memcmp(x.data, y.data, x.len) == 0);
        buf_destroy(&x);
        buf_destroy(&y);
    }
    jval_free(v);
    free(w);
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
    fuzz_skim(p, size, NULL);
    fuzz_skim(p, size, &tiny);
    fuzz_block(p, size, NULL);
    fuzz_block(p, size, &tiny);
    return 0;
}
