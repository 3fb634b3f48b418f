/* The skimmer of replies that carry documents (_bulk_get, open_revs): the same validation as
 * json_parse (grammar, strict UTF-8, paired surrogate escapes, duplicate keys at every depth,
 * the nesting cap), but no events and no decoding of string values. Each document is handed
 * over as its bytes in the input, with the few top-level members the replicator looks at
 * located, so it can be forwarded as it came instead of being rebuilt token by token. */
#include "json.h"
#include "json_lex.h"

#include <stdlib.h>
#include <string.h>

/* Objects with up to this many keys are checked for duplicates as keys arrive; bigger ones
 * are sorted once when they close (the whole reply is refused either way). */
#define SK_LINEAR_KEYS 16

typedef struct sk_key {
    const char *ptr;  /* into the input, or NULL: decoded, at arena + off */
    size_t      off;
    size_t      len;
} sk_key;

/* One open object. Arrays have none: a reply nested a million arrays deep costs a byte a
 * level (the kind stack), as in json_parse. */
typedef struct sk_frame {
    size_t key0;     /* index of the first key in keys[] */
    size_t arena0;   /* arena length when the object opened */
} sk_frame;

typedef struct sk_state {
    const unsigned char *p;
    size_t      n;
    unsigned    max_depth;
    json_error *err;
    unsigned char *kind;   /* per open container: 1 object, 0 array */
    size_t      kind_alloc;
    sk_frame   *frames;    /* per open object */
    size_t      nframes, frames_alloc;
    sk_key     *keys;
    size_t      nkeys, keys_alloc;
    char       *arena;
    size_t      arena_len, arena_alloc;
    size_t     *order;   /* sort scratch for big objects */
    size_t      order_alloc;
    int         fn_rc;
} sk_state;

/* STOP: err is filled already; CALLBACK: the callback's code is in fn_rc */
enum { SK_OK = 0, SK_SYNTAX = 1, SK_STOP = 2, SK_CALLBACK = 3 };

static int sk_oom(sk_state *st) {
    err_set(st->err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
    return SK_STOP;
}

/* A string whose opening quote is at p[*i]; *i ends just past the closing quote, *esc says
 * whether it holds escapes. Escapes are checked, not decoded: a backslash is ASCII, so the
 * raw contents are valid UTF-8 exactly when the decoded ones are. */
static int sk_string(sk_state *st, size_t *i, bool *esc) {
    const unsigned char *p = st->p;
    size_t n = st->n, a = *i + 1, e;
    bool high = false;
    *esc = false;
    for (e = json_lex_str_run(p, n, a, &high);; e = json_lex_str_run(p, n, e, &high)) {
        if (e >= n || p[e] < 0x20) return SK_SYNTAX;
        if (p[e] == '"') break;
        *esc = true;
        if (e + 1 >= n) return SK_SYNTAX;
        switch (p[e + 1]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            e += 2;
            break;
        case 'u': {
            unsigned cp, lo;
            if (n - (e + 2) < 4 || !json_lex_hex4(p + e + 2, &cp)) return SK_SYNTAX;
            e += 6;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return SK_SYNTAX;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                if (n - e < 6 || p[e] != '\\' || p[e + 1] != 'u' || !json_lex_hex4(p + e + 2, &lo) ||
                    lo < 0xDC00 || lo > 0xDFFF)
                    return SK_SYNTAX;
                e += 6;
            }
            break;
        }
        default:
            return SK_SYNTAX;
        }
    }
    if (high && !utf8_valid((const char *)p + a, e - a)) return SK_SYNTAX;
    *i = e + 1;
    return SK_OK;
}

/* Decodes the escapes of a string already checked by sk_string (contents s[0..n)) onto the
 * arena's end; its offset in *off and length in *len. Keys compare decoded. */
static int sk_decode(sk_state *st, const unsigned char *s, size_t n, size_t *off, size_t *len) {
    if (ARRAY_GROW(st->arena, st->arena_alloc, st->arena_len + n + 1)) return sk_oom(st);
    char *d = st->arena + st->arena_len;
    size_t o = 0;
    for (size_t k = 0; k < n;) {
        if (s[k] != '\\') {
            d[o++] = (char)s[k++];
            continue;
        }
        unsigned char c = s[k + 1];
        k += 2;
        switch (c) {
        case 'b': d[o++] = '\b'; break;
        case 'f': d[o++] = '\f'; break;
        case 'n': d[o++] = '\n'; break;
        case 'r': d[o++] = '\r'; break;
        case 't': d[o++] = '\t'; break;
        case 'u': {
            unsigned cp = 0, lo = 0xDC00;   /* both checked by sk_string */
            json_lex_hex4(s + k, &cp);
            k += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                json_lex_hex4(s + k + 2, &lo);
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                k += 6;
            }
            json_lex_put_utf8(d, &o, cp);   /* never longer than its escape */
            break;
        }
        default: d[o++] = (char)c; break;
        }
    }
    *off = st->arena_len;
    *len = o;
    st->arena_len += o;
    return SK_OK;
}

static inline const char *sk_key_ptr(const sk_state *st, const sk_key *k) {
    return k->ptr ? k->ptr : st->arena + k->off;
}

static int sk_dup(sk_state *st, const char *s, size_t n) {
    size_t show = json_utf8_prefix(s, n, 120);
    err_set(st->err, MIMEO_EBADJSON, "bad_request", "Duplicate key \"%.*s%s\" in JSON object",
            (int)show, s, show < n ? "..." : "");
    return SK_STOP;
}

/* Records a key of the innermost object (frame f); small objects are checked here. */
static int sk_key_add(sk_state *st, sk_frame *f, const char *ptr, size_t off, size_t len) {
    const char *s = ptr ? ptr : st->arena + off;
    if (st->nkeys - f->key0 < SK_LINEAR_KEYS)
        for (size_t i = f->key0; i < st->nkeys; i++) {
            const sk_key *k = &st->keys[i];
            if (k->len == len && (len == 0 || memcmp(sk_key_ptr(st, k), s, len) == 0))
                return sk_dup(st, s, len);
        }
    if (st->nkeys == st->keys_alloc && ARRAY_GROW(st->keys, st->keys_alloc, st->nkeys + 1))
        return sk_oom(st);
    st->keys[st->nkeys++] = (sk_key){ ptr, off, len };
    return SK_OK;
}

static _Thread_local const sk_state *sk_sort_st;   /* qsort has no context argument */

static int sk_cmp(const void *a, const void *b) {
    const sk_state *st = sk_sort_st;
    const sk_key *x = &st->keys[*(const size_t *)a], *y = &st->keys[*(const size_t *)b];
    size_t m = x->len < y->len ? x->len : y->len;
    int c = m ? memcmp(sk_key_ptr(st, x), sk_key_ptr(st, y), m) : 0;
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* A big object closes: its keys past the linear ones are checked against all, sorted. */
static int sk_check_big(sk_state *st, const sk_frame *f) {
    size_t count = st->nkeys - f->key0;
    if (count <= SK_LINEAR_KEYS) return SK_OK;
    if (ARRAY_GROW(st->order, st->order_alloc, count)) return sk_oom(st);
    for (size_t i = 0; i < count; i++) st->order[i] = f->key0 + i;
    sk_sort_st = st;
    qsort(st->order, count, sizeof *st->order, sk_cmp);
    for (size_t i = 1; i < count; i++) {
        const sk_key *x = &st->keys[st->order[i - 1]], *y = &st->keys[st->order[i]];
        if (x->len == y->len && (x->len == 0 ||
                                 memcmp(sk_key_ptr(st, x), sk_key_ptr(st, y), x->len) == 0))
            return sk_dup(st, sk_key_ptr(st, y), y->len);
    }
    return SK_OK;
}

/* The document member whose value is being read. */
enum { SK_M_NONE, SK_M_REV, SK_M_REVISIONS, SK_M_OTHER };

static bool sk_is(const char *s, size_t n, const char *lit, size_t litn) {
    return n == litn && memcmp(s, lit, n) == 0;
}

static int sk_run_text(sk_state *st, json_skim_fn fn, void *ctx, size_t *errors) {
    const unsigned char *p = st->p;
    size_t n = st->n, i = 0, depth = 0;
    size_t cap = 0;            /* depth of the document being skimmed; 0: none */
    bool want = false, want_err = false;
    int member = SK_M_NONE;
    json_skim_doc d;
    memset(&d, 0, sizeof d);
    size_t doc_at = 0;
    int rc;
value:
    i = json_lex_ws(p, n, i);
    if (i >= n) return SK_SYNTAX;
    if (!cap && want && p[i] == '{') {
        cap = depth + 1;
        doc_at = i;
        memset(&d, 0, sizeof d);
    } else if (!cap && want_err && p[i] == '{') {
        (*errors)++;
    }
    want = want_err = false;
    switch (p[i]) {
    case '{':
    case '[': {
        bool obj = p[i] == '{';
        if (depth >= st->max_depth) {
            err_set(st->err, MIMEO_EBADJSON, "bad_request", "JSON nesting deeper than %u",
                    st->max_depth);
            return SK_STOP;
        }
        if (depth == st->kind_alloc && ARRAY_GROW(st->kind, st->kind_alloc, depth + 1))
            return sk_oom(st);
        st->kind[depth++] = obj;
        if (obj) {
            if (st->nframes == st->frames_alloc &&
                ARRAY_GROW(st->frames, st->frames_alloc, st->nframes + 1))
                return sk_oom(st);
            sk_frame *f = &st->frames[st->nframes++];
            f->key0 = st->nkeys;
            f->arena0 = st->arena_len;
        }
        i = json_lex_ws(p, n, i + 1);
        if (i < n && p[i] == (obj ? '}' : ']')) {
            i++;
            depth--;
            goto closed;
        }
        if (obj) goto key;
        goto value;
    }
    case '"': {
        size_t a = i;
        bool esc;
        if ((rc = sk_string(st, &i, &esc))) return rc;
        if (member == SK_M_REV && depth == cap && !esc) {
            d.rev = (const char *)p + a + 1;
            d.rev_len = i - a - 2;
        }
        goto after;
    }
    case 't':
        if (n - i < 4 || memcmp(p + i, "true", 4) != 0) return SK_SYNTAX;
        i += 4;
        goto after;
    case 'f':
        if (n - i < 5 || memcmp(p + i, "false", 5) != 0) return SK_SYNTAX;
        i += 5;
        goto after;
    case 'n':
        if (n - i < 4 || memcmp(p + i, "null", 4) != 0) return SK_SYNTAX;
        i += 4;
        goto after;
    default:
        if (!json_lex_number(p, n, &i)) return SK_SYNTAX;
        goto after;
    }
key: {
        if (i >= n || p[i] != '"') return SK_SYNTAX;
        size_t a = i;
        bool esc;
        if ((rc = sk_string(st, &i, &esc))) return rc;
        const char *s = (const char *)p + a + 1;
        size_t len = i - a - 2, off = 0;
        if (esc) {
            if ((rc = sk_decode(st, (const unsigned char *)s, len, &off, &len))) return rc;
            s = st->arena + off;
        }
        if ((rc = sk_key_add(st, &st->frames[st->nframes - 1], esc ? NULL : s, off, len)))
            return rc;
        if (!cap) {
            want = sk_is(s, len, "ok", 2);
            want_err = sk_is(s, len, "error", 5);
        } else if (depth == cap) {
            member = SK_M_OTHER;
            if (len > 0 && s[0] == '_') {
                if (sk_is(s, len, "_rev", 4)) {
                    member = SK_M_REV;
                } else if (sk_is(s, len, "_revisions", 10)) {
                    member = SK_M_REVISIONS;
                    d.revisions_key = a - doc_at;
                } else if (sk_is(s, len, "_attachments", 12)) {
                    d.has_attachments = true;
                }
            }
        }
        i = json_lex_ws(p, n, i);
        if (i >= n || p[i] != ':') return SK_SYNTAX;
        i++;
        if (member == SK_M_REVISIONS && depth == cap && !d.revisions_value)
            d.revisions_value = json_lex_ws(p, n, i) - doc_at;
        goto value;
    }
closed: {
        if (st->kind[depth]) {
            sk_frame *f = &st->frames[--st->nframes];
            if ((rc = sk_check_big(st, f))) return rc;
            st->nkeys = f->key0;
            st->arena_len = f->arena0;
        }
        if (cap && depth + 1 == cap) {
            cap = 0;
            member = SK_M_NONE;
            d.text = (const char *)p + doc_at;
            d.len = i - doc_at;
            if ((st->fn_rc = fn(ctx, &d)) != 0) return SK_CALLBACK;
        }
    }
after:
    if (member == SK_M_REVISIONS && depth == cap && d.revisions_end == 0)
        d.revisions_end = i - doc_at;
    i = json_lex_ws(p, n, i);
    if (depth == 0) return i == n ? SK_OK : SK_SYNTAX;
    if (i >= n) return SK_SYNTAX;
    if (p[i] == ',') {
        i = json_lex_ws(p, n, i + 1);
        if (st->kind[depth - 1]) goto key;
        goto value;
    }
    if (p[i] != (st->kind[depth - 1] ? '}' : ']')) return SK_SYNTAX;
    i++;
    depth--;
    goto closed;
}

int json_skim_docs(const char *p, size_t n, const json_limits *limits, json_skim_fn fn,
                   void *ctx, size_t *errors, json_error *err) {
    json_error scratch;
    if (!err) err = &scratch;
    err->code = 0;
    err->error[0] = err->reason[0] = 0;
    size_t errs = 0;
    if (!p || n == 0) {
        err_set(err, MIMEO_EBADJSON, "bad_request", "invalid UTF-8 JSON");
        return MIMEO_EBADJSON;
    }
    sk_state st;
    memset(&st, 0, sizeof st);
    st.p = (const unsigned char *)p;
    st.n = n;
    st.err = err;
    st.max_depth = limits && limits->max_depth ? limits->max_depth : JSON_DEFAULT_MAX_DEPTH;
    int r = sk_run_text(&st, fn, ctx, &errs), rc = 0;
    if (r == SK_CALLBACK) {
        rc = st.fn_rc;
    } else if (r == SK_SYNTAX) {
        rc = MIMEO_EBADJSON;
        err_set(err, MIMEO_EBADJSON, "bad_request", "invalid UTF-8 JSON");
    } else if (r == SK_STOP) {
        rc = err->code ? err->code : MIMEO_EBADJSON;
    }
    if (errors) *errors += errs;
    free(st.kind);
    free(st.frames);
    free(st.keys);
    free(st.arena);
    free(st.order);
    return rc;
}
