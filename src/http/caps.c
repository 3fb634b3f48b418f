/* Entry-count caps of bulk requests: _bulk_docs and _bulk_get docs, _revs_diff ids and
 * revisions, _all_docs keys and _changes doc_ids. The body (and the query value) is scanned
 * with the event parser, which builds nothing and stops at the first entry over the cap, so
 * a request of a million tiny entries costs one pass, not a million tree nodes. Malformed
 * JSON is left to the handler, which reports it as it always has. */
#include <stdio.h>
#include <string.h>

#include "http_int.h"

#define CAPS_BULK_DOCS 10000u
#define CAPS_BULK_GET  10000u
#define CAPS_REVS_DIFF 100000u
#define CAPS_KEYS      100000u
#define CAPS_OVER      1        /* a handler's "stop": the cap was passed */

typedef struct caps_scan {
    const char *member;    /* count the items of this top-level member's array; NULL: the
                              top-level value is the array (a query value) */
    bool        revs_diff; /* {id: [rev, …], …}: count keys and array items instead */
    unsigned    depth;     /* containers open */
    bool        pending;   /* the next value at depth 1 is member's */
    bool        active;    /* inside the counted array (its items are at depth 2, or 1) */
    size_t      n, n2, cap;
} caps_scan;

/* A value starts (scalar or container) at the current depth. */
static int caps_value(caps_scan *c)
{
    if (c->revs_diff) {
        if (c->depth == 2 && ++c->n2 > c->cap) return CAPS_OVER;
        return 0;
    }
    unsigned at = c->member ? 2 : 1;
    if (c->active && c->depth == at && ++c->n > c->cap) return CAPS_OVER;
    if (c->depth == 1 && c->member) c->pending = false;
    return 0;
}

static int caps_scalar(void *ctx) { return caps_value(ctx); }
static int caps_bool(void *ctx, bool v) { (void)v; return caps_value(ctx); }
static int caps_text(void *ctx, const char *s, size_t n)
{
    (void)s; (void)n;
    return caps_value(ctx);
}

static int caps_start_map(void *ctx)
{
    caps_scan *c = ctx;
    int rc = caps_value(c);
    c->depth++;
    return rc;
}

static int caps_start_array(void *ctx)
{
    caps_scan *c = ctx;
    bool mine = c->member ? c->depth == 1 && c->pending : c->depth == 0;
    int rc = caps_value(c);
    if (mine && !c->revs_diff) c->active = true;
    c->depth++;
    return rc;
}

static int caps_end(void *ctx)
{
    caps_scan *c = ctx;
    c->depth--;
    if (c->depth == (c->member ? 1u : 0u)) c->active = false;
    return 0;
}

static int caps_key(void *ctx, const char *s, size_t n)
{
    caps_scan *c = ctx;
    if (c->depth != 1) return 0;
    if (c->revs_diff) return ++c->n > c->cap ? CAPS_OVER : 0;
    c->pending = c->member && strlen(c->member) == n && memcmp(c->member, s, n) == 0;
    return 0;
}

static const json_handlers caps_handlers = {
    .on_null = caps_scalar,
    .on_bool = caps_bool,
    .on_number = caps_text,
    .on_string = caps_text,
    .on_start_map = caps_start_map,
    .on_key = caps_key,
    .on_end_map = caps_end,
    .on_start_array = caps_start_array,
    .on_end_array = caps_end,
};

/* True when p[0..n) holds more than cap entries in the shape scan describes. */
static bool caps_over(http_req *r, const char *p, size_t n, caps_scan scan, size_t cap)
{
    if (!p || n == 0) return false;
    scan.cap = cap;
    return json_parse(p, n, &r->srv->limits, &caps_handlers, &scan, NULL) == CAPS_OVER;
}

static bool caps_reply(http_req *r, const char *error, const char *what, size_t cap,
                       const char *key)
{
    char reason[160];
    snprintf(reason, sizeof reason, "More than %zu %s in one request ([couchdb] %s).", cap,
             what, key);
    http_reply_error(r, 413, error, reason);
    return true;
}

static bool caps_seg(const http_req *r, const char *s)
{
    return r->seg_len[1] == strlen(s) && memcmp(r->seg[1], s, r->seg_len[1]) == 0;
}

bool http_caps_refuse(http_req *r)
{
    if (r->nseg != 2) return false;
    const http_caps *k = &r->srv->cfg.caps;
    const char *body = r->method == HTTP_POST ? r->body.data : NULL;
    size_t blen = r->method == HTTP_POST ? r->body.len : 0;

    if (caps_seg(r, "_bulk_docs")) {
        size_t cap = k->bulk_docs ? k->bulk_docs : CAPS_BULK_DOCS;
        if (caps_over(r, body, blen, (caps_scan){ .member = "docs" }, cap))
            return caps_reply(r, "max_bulk_docs_count_exceeded", "documents", cap,
                              "max_bulk_docs_count");
    } else if (caps_seg(r, "_bulk_get")) {
        size_t cap = k->bulk_get ? k->bulk_get : CAPS_BULK_GET;
        if (caps_over(r, body, blen, (caps_scan){ .member = "docs" }, cap))
            return caps_reply(r, "max_bulk_get_count_exceeded", "documents", cap,
                              "max_bulk_get_count");
    } else if (caps_seg(r, "_revs_diff")) {
        size_t cap = k->revs_diff ? k->revs_diff : CAPS_REVS_DIFF;
        if (caps_over(r, body, blen, (caps_scan){ .revs_diff = true }, cap))
            return caps_reply(r, "max_revs_diff_count_exceeded", "ids or revisions", cap,
                              "max_revs_diff_count");
    } else if (caps_seg(r, "_all_docs") || caps_seg(r, "_changes")) {
        const char *name = caps_seg(r, "_all_docs") ? "keys" : "doc_ids";
        size_t cap = k->keys ? k->keys : CAPS_KEYS;
        size_t qlen = 0;
        const char *q = http_arg_get(r, name, &qlen);
        if (caps_over(r, body, blen, (caps_scan){ .member = name }, cap) ||
            caps_over(r, q, q ? qlen : 0, (caps_scan){ 0 }, cap))
            return caps_reply(r, "max_keys_count_exceeded", name, cap, "max_keys_count");
    }
    return false;
}
