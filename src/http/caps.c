/* Entry-count caps of bulk requests: _bulk_docs and _bulk_get docs, _revs_diff ids and
 * revisions, _all_docs keys and _changes doc_ids. The body (and the query value) is scanned
 * structurally before any handler runs: strings are skipped whole (memchr to the closing quote)
 * and only brackets, commas and colons are looked at, so the count costs a small fraction of
 * the handler's own parse and builds nothing. Malformed JSON is left to the handler, which
 * reports it as it always has. */
#include <stdio.h>
#include <string.h>

#include "http_int.h"

#define CAPS_BULK_DOCS 10000u
#define CAPS_BULK_GET  10000u
#define CAPS_REVS_DIFF 100000u
#define CAPS_KEYS      100000u

typedef struct caps_scan {
    const char *member;    /* count the items of this top-level member's array; NULL: the
                              top-level value is the array (a query value) */
    bool        revs_diff; /* {id: [rev, …], …}: count keys and array items instead */
    unsigned    depth;     /* containers open */
    bool        in_obj[3]; /* whether the container at depth 1 and 2 is an object */
    bool        want_key;  /* the next string in the current object is a key */
    bool        pending;   /* the next value at depth 1 is member's */
    bool        active;    /* inside the counted array (its items are at depth 2, or 1) */
    size_t      n, n2, cap;
} caps_scan;

/* A value starts (scalar or container) at the current depth: true when over the cap. */
static bool caps_value(caps_scan *c) {
    if (c->revs_diff) return c->depth == 2 && ++c->n2 > c->cap;
    unsigned at = c->member ? 2 : 1;
    if (c->active && c->depth == at && ++c->n > c->cap) return true;
    if (c->depth == 1 && c->member) c->pending = false;
    return false;
}

static bool caps_key(caps_scan *c, const char *s, size_t n) {
    if (c->depth != 1) return false;
    if (c->revs_diff) return ++c->n > c->cap;
    c->pending = c->member && strlen(c->member) == n && memcmp(c->member, s, n) == 0;
    return false;
}

/* The index just past the string whose opening quote is at p[i]; n when it never closes. */
static size_t caps_skip_string(const char *p, size_t n, size_t i) {
    for (size_t j = i + 1; j < n;) {
        const char *q = memchr(p + j, '"', n - j);
        if (!q) return n;
        size_t k = (size_t)(q - p), bs = 0;
        while (k - bs > i + 1 && p[k - bs - 1] == '\\') bs++;
        if (bs % 2 == 0) return k + 1;
        j = k + 1;
    }
    return n;
}

/* True when p[0..n) holds more than cap entries in the shape scan describes. */
static bool caps_over(const char *p, size_t n, caps_scan c, size_t cap) {
    if (!p || n == 0) return false;
    c.cap = cap;
    for (size_t i = 0; i < n;) {
        char ch = p[i];
        bool obj = c.depth >= 1 && c.depth <= 2 && c.in_obj[c.depth];
        switch (ch) {
        case ' ': case '\t': case '\n': case '\r':
            i++;
            break;
        case '"': {
            size_t end = caps_skip_string(p, n, i);
            if (obj && c.want_key) {
                c.want_key = false;
                if (end > i + 1 && caps_key(&c, p + i + 1, end - i - 2)) return true;
            } else if (caps_value(&c)) {
                return true;
            }
            i = end;
            break;
        }
        case '{': case '[': {
            bool mine = c.member ? c.depth == 1 && c.pending : c.depth == 0;
            if (caps_value(&c)) return true;
            if (ch == '[' && mine && !c.revs_diff) c.active = true;
            c.depth++;
            if (c.depth <= 2) c.in_obj[c.depth] = ch == '{';
            c.want_key = ch == '{';
            i++;
            break;
        }
        case '}': case ']':
            if (c.depth > 0) c.depth--;
            if (c.depth == (c.member ? 1u : 0u)) c.active = false;
            c.want_key = false;
            i++;
            break;
        case ',':
            c.want_key = obj;
            i++;
            break;
        case ':':
            c.want_key = false;
            i++;
            break;
        default: /* a number or literal: one value, skipped to the next delimiter */
            if (caps_value(&c)) return true;
            do i++; while (i < n && !strchr(" \t\n\r,:]}[{\"", p[i]));
            break;
        }
    }
    return false;
}

static bool caps_reply(http_req *r, const char *error, const char *what, size_t cap,
                       const char *key) {
    char reason[160];
    snprintf(reason, sizeof reason, "More than %zu %s in one request ([couchdb] %s).", cap,
             what, key);
    http_reply_error(r, 413, error, reason);
    return true;
}

static bool caps_seg(const http_req *r, const char *s) {
    return r->seg_len[1] == strlen(s) && memcmp(r->seg[1], s, r->seg_len[1]) == 0;
}

size_t http_caps_bulk_docs(const http_req *r) {
    return r->srv->cfg.caps.bulk_docs ? r->srv->cfg.caps.bulk_docs : CAPS_BULK_DOCS;
}

bool http_caps_refuse(http_req *r) {
    if (r->nseg != 2) return false;
    const http_caps *k = &r->srv->cfg.caps;
    const char *body = r->method == HTTP_POST ? r->body.data : NULL;
    size_t blen = r->method == HTTP_POST ? r->body.len : 0;

    if (caps_seg(r, "_bulk_docs")) {
        /* the streaming parse counts them (http_h_bulk_docs) and stops at the first past
         * the cap; only a member's body, which is read into a tree first, is scanned */
        size_t cap = http_caps_bulk_docs(r);
        if (r->bulk_no_design && caps_over(body, blen, (caps_scan){ .member = "docs" }, cap))
            return caps_reply(r, "max_bulk_docs_count_exceeded", "documents", cap,
                              "max_bulk_docs_count");
    } else if (caps_seg(r, "_bulk_get")) {
        size_t cap = k->bulk_get ? k->bulk_get : CAPS_BULK_GET;
        if (caps_over(body, blen, (caps_scan){ .member = "docs" }, cap))
            return caps_reply(r, "max_bulk_get_count_exceeded", "documents", cap,
                              "max_bulk_get_count");
    } else if (caps_seg(r, "_revs_diff")) {
        size_t cap = k->revs_diff ? k->revs_diff : CAPS_REVS_DIFF;
        if (caps_over(body, blen, (caps_scan){ .revs_diff = true }, cap))
            return caps_reply(r, "max_revs_diff_count_exceeded", "ids or revisions", cap,
                              "max_revs_diff_count");
    } else if (caps_seg(r, "_all_docs") || caps_seg(r, "_changes")) {
        const char *name = caps_seg(r, "_all_docs") ? "keys" : "doc_ids";
        size_t cap = k->keys ? k->keys : CAPS_KEYS;
        size_t qlen = 0;
        const char *q = http_arg_get(r, name, &qlen);
        if (caps_over(body, blen, (caps_scan){ .member = name }, cap) ||
            caps_over(q, q ? qlen : 0, (caps_scan){ 0 }, cap))
            return caps_reply(r, "max_keys_count_exceeded", name, cap, "max_keys_count");
    }
    return false;
}
