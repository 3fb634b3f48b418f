/* Differential libFuzzer driver: mimeo's own JSON parser (src/json/json_parse.c) against yajl,
 * the parser it replaced. The oracle is yajl's event parser configured exactly as the old
 * yajl-driven json_parse configured it, plus that wrapper's own checks (strict UTF-8 of every
 * string and key, paired surrogate escapes, duplicate keys, the nesting cap), so any input
 * on which the two disagree is a change in what mimeo accepts or in the values it reads.
 * Only this driver links -lyajl (see the Makefile). */
#include "json/json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

/* ---- canonical form -------------------------------------------------------------------
 * One tag byte per event; strings, keys and numbers follow as "<length>:<bytes>". Strings
 * and keys are the decoded UTF-8 bytes; numbers are their source text: mimeo keeps number
 * text (a body re-emits it unchanged), and so did the old parser through yajl_number, so
 * "1.0" and "1" are different values here, as they are on disk. Members stay in input order
 * (duplicates are refused by both sides, so order is all that identifies a member). */

static void diff_fail(const char *what, const uint8_t *p, size_t n, const buf *a,
                      const buf *b) {
    fprintf(stderr, "fuzz_json_diff: %s\ninput (%zu bytes):", what, n);
    for (size_t i = 0; i < n && i < 512; i++) fprintf(stderr, " %02x", p[i]);
    fprintf(stderr, "\n");
    if (a) fprintf(stderr, "mimeo: %.*s\n", (int)a->len, a->data ? a->data : "");
    if (b) fprintf(stderr, "yajl:  %.*s\n", (int)b->len, b->data ? b->data : "");
    __builtin_trap();
}

static int canon_put(buf *b, char tag, const char *s, size_t n) {
    if (buf_putc(b, tag)) return MIMEO_ENOMEM;
    if (!s) return 0;
    if (buf_put_u64(b, n) || buf_putc(b, ':') || buf_put(b, s, n)) return MIMEO_ENOMEM;
    return 0;
}

static int m_null(void *c) { return canon_put(c, 'n', NULL, 0); }
static int m_bool(void *c, bool v) { return canon_put(c, v ? 't' : 'f', NULL, 0); }
static int m_number(void *c, const char *s, size_t n) { return canon_put(c, 'd', s, n); }
static int m_string(void *c, const char *s, size_t n) { return canon_put(c, 's', s, n); }
static int m_key(void *c, const char *s, size_t n) { return canon_put(c, 'k', s, n); }
static int m_start_map(void *c) { return canon_put(c, '{', NULL, 0); }
static int m_end_map(void *c) { return canon_put(c, '}', NULL, 0); }
static int m_start_array(void *c) { return canon_put(c, '[', NULL, 0); }
static int m_end_array(void *c) { return canon_put(c, ']', NULL, 0); }

static const json_handlers m_handlers = {
    m_null, m_bool, m_number, m_string, m_start_map, m_key, m_end_map, m_start_array,
    m_end_array,
};

static int canon_tree(buf *b, const jval *v) {
    switch (v->type) {
    case JV_NULL: return canon_put(b, 'n', NULL, 0);
    case JV_BOOL: return canon_put(b, v->boolean ? 't' : 'f', NULL, 0);
    case JV_NUMBER: return canon_put(b, 'd', v->str, v->len);
    case JV_STRING: return canon_put(b, 's', v->str, v->len);
    case JV_ARRAY:
    case JV_OBJECT: {
        bool obj = v->type == JV_OBJECT;
        if (canon_put(b, obj ? '{' : '[', NULL, 0)) return MIMEO_ENOMEM;
        for (size_t i = 0; i < v->count; i++) {
            if (obj && canon_put(b, 'k', v->keys[i], v->key_lens[i])) return MIMEO_ENOMEM;
            if (canon_tree(b, v->items[i])) return MIMEO_ENOMEM;
        }
        return canon_put(b, obj ? '}' : ']', NULL, 0);
    }
    }
    return 0;
}

/* ---- the oracle: yajl plus the checks the yajl-driven json_parse added ---------------- */

typedef struct oracle {
    buf       canon;
    unsigned  depth, max_depth;
    char    **keys;     /* keys of the open objects, innermost last */
    size_t   *key_lens;
    size_t    nkeys, keys_alloc, lens_alloc;
    size_t   *frame0;   /* per open object: its first key's index */
    size_t    nframes, frames_alloc;
    bool      oom;
} oracle;

static int o_canon(oracle *o, char tag, const char *s, size_t n) {
    if (canon_put(&o->canon, tag, s, n)) { o->oom = true; return 0; }
    return 1;
}

/* The old wrapper's pre-check: yajl's \u decoder turns a lone surrogate into '?' or a wrong
 * code point, so every surrogate escape had to be a high one followed by a low one. The scan
 * runs backslash to backslash over the whole text, as the wrapper's did. It repeats
 * json_parse.c's jp_escapes_ok on purpose: an oracle calling that function would not see a
 * change to it. */
static int o_hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit((unsigned char)p[i]);
        if (d < 0) return 0;
        v = v << 4 | (unsigned)d;
    }
    *out = v;
    return 1;
}

static bool o_surrogates_paired(const char *p, size_t n) {
    const char *end = p + n, *q = p;
    while (q < end && (q = memchr(q, '\\', (size_t)(end - q))) != NULL) {
        unsigned cp, lo;
        if (end - q < 6 || q[1] != 'u' || !o_hex4(q + 2, &cp)) { q += 2; continue; }
        if (cp >= 0xDC00 && cp <= 0xDFFF) return false;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - q < 12 || q[6] != '\\' || q[7] != 'u' || !o_hex4(q + 8, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return false;
            q += 12;
            continue;
        }
        q += 6;
    }
    return true;
}

static int o_null(void *c) { return o_canon(c, 'n', NULL, 0); }
static int o_bool(void *c, int v) { return o_canon(c, v ? 't' : 'f', NULL, 0); }
static int o_number(void *c, const char *s, size_t n) { return o_canon(c, 'd', s, n); }

static int o_string(void *c, const unsigned char *s, size_t n) {
    if (!utf8_valid((const char *)s, n)) return 0;
    return o_canon(c, 's', (const char *)s, n);
}

/* The cap is mimeo's (yajl has none): the wrapper refused the opening of a container past
 * max_depth, so the oracle does the same and deeper inputs must be refused by both. */
static int o_open(oracle *o) {
    if (o->depth >= o->max_depth) return 0;
    o->depth++;
    return 1;
}

static int o_start_map(void *c) {
    oracle *o = c;
    if (!o_open(o)) return 0;
    if (ARRAY_GROW(o->frame0, o->frames_alloc, o->nframes + 1)) { o->oom = true; return 0; }
    o->frame0[o->nframes++] = o->nkeys;
    return o_canon(o, '{', NULL, 0);
}

/* Duplicates are found by comparing decoded bytes ("a" and "\u0061" are one key). */
static int o_key(void *c, const unsigned char *s, size_t n) {
    oracle *o = c;
    if (!utf8_valid((const char *)s, n)) return 0;
    for (size_t i = o->frame0[o->nframes - 1]; i < o->nkeys; i++)
        if (o->key_lens[i] == n && memcmp(o->keys[i], s, n) == 0) return 0;
    if (ARRAY_GROW(o->keys, o->keys_alloc, o->nkeys + 1) ||
        ARRAY_GROW(o->key_lens, o->lens_alloc, o->nkeys + 1)) {
        o->oom = true;
        return 0;
    }
    char *k = malloc(n + 1);
    if (!k) { o->oom = true; return 0; }
    memcpy(k, s, n);
    o->keys[o->nkeys] = k;
    o->key_lens[o->nkeys++] = n;
    return o_canon(o, 'k', (const char *)s, n);
}

static void o_pop_keys(oracle *o, size_t to) {
    while (o->nkeys > to) free(o->keys[--o->nkeys]);
}

static int o_end_map(void *c) {
    oracle *o = c;
    o_pop_keys(o, o->frame0[--o->nframes]);
    o->depth--;
    return o_canon(o, '}', NULL, 0);
}

static int o_start_array(void *c) {
    oracle *o = c;
    if (!o_open(o)) return 0;
    return o_canon(o, '[', NULL, 0);
}

static int o_end_array(void *c) {
    oracle *o = c;
    o->depth--;
    return o_canon(o, ']', NULL, 0);
}

static const yajl_callbacks o_callbacks = {
    .yajl_null = o_null,
    .yajl_boolean = o_bool,
    .yajl_number = o_number, /* takes precedence over integer/double: the source text */
    .yajl_string = o_string,
    .yajl_start_map = o_start_map,
    .yajl_map_key = o_key,
    .yajl_end_map = o_end_map,
    .yajl_start_array = o_start_array,
    .yajl_end_array = o_end_array,
};

/* 1 accepted (value in o->canon), 0 refused, -1 out of memory. */
static int oracle_parse(oracle *o, const char *p, size_t n, unsigned max_depth) {
    memset(o, 0, sizeof *o);
    o->max_depth = max_depth;
    if (n == 0 || !o_surrogates_paired(p, n)) return 0;
    yajl_handle y = yajl_alloc(&o_callbacks, NULL, o);
    if (!y) return -1;
    /* the old parser's options, set explicitly as it set them */
    yajl_config(y, yajl_allow_comments, 0);
    yajl_config(y, yajl_dont_validate_strings, 0);
    yajl_config(y, yajl_allow_trailing_garbage, 0);
    yajl_config(y, yajl_allow_multiple_values, 0);
    yajl_config(y, yajl_allow_partial_values, 0);
    yajl_status ys = yajl_parse(y, (const unsigned char *)p, n);
    if (ys == yajl_status_ok) ys = yajl_complete_parse(y);
    yajl_free(y);
    return o->oom ? -1 : ys == yajl_status_ok;
}

static void oracle_destroy(oracle *o) {
    o_pop_keys(o, 0);
    free(o->keys);
    free(o->key_lens);
    free(o->frame0);
    buf_destroy(&o->canon);
}

/* ---- the one known difference ----------------------------------------------------------
 * yajl took a complete value followed by an unterminated string ({"a":1}"junk, 1 "x) whole:
 * its lexer waits for the rest of a string cut by the end of the input, and after the first
 * value nothing checks that the wait ended. mimeo refuses these. Recognized precisely: the
 * text ends inside a string that starts at q (a lexical scan is exact here, since yajl
 * accepted the text, so every quote before q opens or closes a string), and the bytes before
 * q are a text mimeo accepts with the very value yajl read from the whole input. */
static bool trailing_unterminated(const char *p, size_t n, const json_limits *lim,
                                  const buf *yajl_value) {
    size_t q = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        if (!in_str) {
            if (p[i] == '"') { in_str = true; q = i; }
        } else if (p[i] == '\\') {
            i++;
        } else if (p[i] == '"') {
            in_str = false;
        }
    }
    if (!in_str || q == 0) return false;
    buf head = BUF_INIT;
    bool same = json_parse(p, q, lim, &m_handlers, &head, NULL) == 0 &&
                head.len == yajl_value->len &&
                memcmp(head.data, yajl_value->data, head.len) == 0;
    buf_destroy(&head);
    return same;
}

/* ---- one comparison under one set of limits -------------------------------------------- */

static void diff_one(const uint8_t *data, size_t n, const json_limits *lim) {
    const char *p = (const char *)data;
    unsigned max_depth = lim && lim->max_depth ? lim->max_depth : JSON_DEFAULT_MAX_DEPTH;

    /* mimeo three ways: events (json_doc, _bulk_docs, the replicator's readers), validation
     * only, and a tree (control objects); they must agree with one another first */
    buf ev = BUF_INIT, tr = BUF_INIT;
    json_error err;
    int rc_ev = json_parse(p, n, lim, &m_handlers, &ev, &err);
    int rc_val = json_parse(p, n, lim, NULL, NULL, &err);
    jval *v = NULL;
    int rc_tree = json_tree_parse(p, n, lim, &v, &err);
    if (rc_ev == MIMEO_ENOMEM || rc_val == MIMEO_ENOMEM || rc_tree == MIMEO_ENOMEM) goto out;
    if ((rc_ev != 0 && rc_ev != MIMEO_EBADJSON) || rc_val != rc_ev || rc_tree != rc_ev)
        diff_fail("mimeo's event, validating and tree parses disagree", data, n, NULL, NULL);
    if (v && canon_tree(&tr, v)) goto out;
    if (rc_ev == 0 && (tr.len != ev.len || memcmp(tr.data, ev.data, ev.len) != 0))
        diff_fail("mimeo's tree and events differ", data, n, &tr, &ev);

    oracle o;
    int ok = oracle_parse(&o, p, n, max_depth);
    if (ok >= 0) {
        bool m_ok = rc_ev == 0;
        if (m_ok && !ok) {
            diff_fail("mimeo accepts, yajl refuses", data, n, &ev, NULL);
        } else if (!m_ok && ok) {
            if (!trailing_unterminated(p, n, lim, &o.canon))
                diff_fail("yajl accepts, mimeo refuses", data, n, NULL, &o.canon);
        } else if (m_ok && (ev.len != o.canon.len || memcmp(ev.data, o.canon.data, ev.len))) {
            diff_fail("both accept, values differ", data, n, &ev, &o.canon);
        }
    }
    oracle_destroy(&o);
out:
    jval_free(v);
    buf_destroy(&ev);
    buf_destroy(&tr);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* the store's limits and a tiny nesting cap, which small inputs reach */
    static const json_limits tiny = {4, 64};
    diff_one(data, size, NULL);
    diff_one(data, size, &tiny);
    return 0;
}
