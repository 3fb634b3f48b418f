/* The validating event parser: one pass over a complete text (RFC 8259 grammar, strict
 * UTF-8, \u escapes decoded with surrogate pairs checked), refusing duplicate object keys at
 * every depth and capping the nesting. Every JSON byte that enters mimeo passes through
 * json_parse, whole _bulk_docs batches included, so string contents are scanned sixteen bytes
 * a step and handed over in place when they hold no escape. It accepts exactly what the
 * yajl-driven parser it replaced accepted. */
#include "json.h"
#include "json_lex.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Objects with up to this many keys are checked for duplicates by scanning their keys;
 * bigger ones switch to a hash table so that 100k keys cost 100k probes, not 10^10. */
#define JP_LINEAR_KEYS 16

/* A key of an open object. Keys without escapes point into the input (stable for the whole
 * parse); decoded keys are copied to the arena and found by offset, since it may move. */
typedef struct jp_key {
    const char *ptr; /* into the input, or NULL: then at arena + off */
    size_t      off;
    size_t      len;
    uint32_t    hash;
} jp_key;

/* One open object. Frames are reused by the next object at the same nesting, keeping their
 * table memory; a table is cleared only up to the size the current object needs. */
typedef struct jp_frame {
    size_t  key0;      /* index of this object's first key in keys[] */
    size_t  arena0;    /* arena length when the object opened */
    size_t *tab;       /* open addressing: key index + 1, 0 = empty */
    size_t  tab_size;  /* power of two in use; 0 = linear mode */
    size_t  tab_alloc;
} jp_frame;

typedef struct jp_state {
    const json_handlers *h;
    void       *ctx;
    json_error *err;
    const char *in;
    size_t      in_len;
    unsigned    max_depth;
    unsigned    depth;
    int         rc;     /* why the parse stopped: a handler's value or our own error */
    uint64_t    seed;   /* of the key hash */

    jp_frame   *frames;
    size_t      nframes, frames_alloc, frames_used; /* used: how many hold table memory */
    jp_key     *keys;
    size_t      nkeys, keys_alloc;
    char       *arena;
    size_t      arena_len, arena_alloc;
    char       *str;    /* a string's decoded text, when it holds escapes */
    bool        high;   /* the string just read has raw bytes >= 0x80 (else it is ASCII,
                           and valid UTF-8 without a check: escapes decode to valid text) */
    size_t      str_alloc;
    unsigned char *stack; /* per open container: 1 object, 0 array */
    size_t      stack_alloc;
} jp_state;

/* Random per process, so a client cannot precompute keys that collide in the hash. */
static _Atomic uint64_t jp_seed;

size_t json_utf8_prefix(const char *s, size_t n, size_t max) {
    if (n <= max) return n;
    /* back off continuation bytes so a cut never splits a character */
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80) max--;
    return max;
}

/* ---- UTF-8 and escapes ---------------------------------------------------------------- */

/* True when every \u escape that names a surrogate is a high one followed by a low one.
 * In valid JSON a backslash only occurs inside strings, where it always starts an escape,
 * so a plain scan from backslash to backslash sees the escapes exactly; on invalid input it
 * may misjudge, but the grammar refuses that input anyway with the same error. */
static bool jp_escapes_ok(const char *p, size_t n) {
    const char *end = p + n, *q = p;
    while (q < end && (q = memchr(q, '\\', (size_t)(end - q))) != NULL) {
        if (end - q < 6 || q[1] != 'u') { q += 2; continue; }
        unsigned cp, lo;
        if (!json_lex_hex4((const unsigned char *)q + 2, &cp)) { q += 2; continue; }
        if (cp >= 0xDC00 && cp <= 0xDFFF) return false;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - q < 12 || q[6] != '\\' || q[7] != 'u' || !json_lex_hex4((const unsigned char *)q + 8, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return false;
            q += 12;
            continue;
        }
        q += 6;
    }
    return true;
}

/* ---- duplicate keys -------------------------------------------------------------------- */

static uint32_t jp_hash(uint64_t seed, const char *s, size_t n) {
    /* multiply-xorshift over 8-byte words: fast on the short keys of documents */
    uint64_t h = seed ^ (n * 0x9E3779B97F4A7C15ull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        s += 8; n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94D049BB133111EBull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (uint32_t)h;
}

static inline const char *jp_key_ptr(const jp_state *st, const jp_key *k) {
    return k->ptr ? k->ptr : st->arena + k->off;
}

static inline bool jp_key_eq(const jp_state *st, const jp_key *k, const char *s, size_t n) {
    return k->len == n && (n == 0 || memcmp(jp_key_ptr(st, k), s, n) == 0);
}

/* Builds or doubles the frame's table over all of its keys. */
static int jp_rehash(jp_state *st, jp_frame *f, size_t size) {
    if (size > f->tab_alloc) {
        size_t *t = realloc(f->tab, size * sizeof *t);
        if (!t) return MIMEO_ENOMEM;
        f->tab = t;
        f->tab_alloc = size;
    }
    memset(f->tab, 0, size * sizeof *f->tab);
    f->tab_size = size;
    for (size_t i = f->key0; i < st->nkeys; i++) {
        jp_key *k = &st->keys[i];
        if (!k->hash) k->hash = jp_hash(st->seed, jp_key_ptr(st, k), k->len) | 1;
        size_t slot = k->hash & (size - 1);
        while (f->tab[slot]) slot = (slot + 1) & (size - 1);
        f->tab[slot] = i + 1;
    }
    return 0;
}

static int jp_fail(jp_state *st, int code, const char *fmt, ...) {
    st->rc = code;
    if (st->err) {
        st->err->code = code;
        snprintf(st->err->error, sizeof st->err->error, "bad_request");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(st->err->reason, sizeof st->err->reason, fmt, ap);
        va_end(ap);
    }
    return 0; /* stops the parse */
}

static int jp_bad_utf8(jp_state *st) {
    return jp_fail(st, MIMEO_EBADJSON, "invalid UTF-8 JSON");
}

static int jp_oom(jp_state *st) {
    st->rc = MIMEO_ENOMEM;
    err_set(st->err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
    return 0;
}

/* Records key s in the innermost object; 1 if it is new, 0 after failing the parse. */
static int jp_key_add(jp_state *st, const char *s, size_t n) {
    jp_frame *f = &st->frames[st->nframes - 1];
    size_t count = st->nkeys - f->key0;
    uint32_t hash = 0;
    if (f->tab_size == 0) {
        for (size_t i = f->key0; i < st->nkeys; i++)
            if (jp_key_eq(st, &st->keys[i], s, n)) goto dup;
    } else {
        hash = jp_hash(st->seed, s, n) | 1; /* 0 means "not hashed yet" */
        size_t mask = f->tab_size - 1;
        for (size_t slot = hash & mask; f->tab[slot]; slot = (slot + 1) & mask) {
            jp_key *k = &st->keys[f->tab[slot] - 1];
            if (k->hash == hash && jp_key_eq(st, k, s, n)) goto dup;
        }
    }
    if (ARRAY_GROW(st->keys, st->keys_alloc, st->nkeys + 1))
        return jp_oom(st);
    jp_key *k = &st->keys[st->nkeys];
    k->len = n;
    k->hash = hash;
    uintptr_t a = (uintptr_t)s, lo = (uintptr_t)st->in;
    if (a >= lo && a - lo <= st->in_len && st->in_len - (a - lo) >= n) {
        k->ptr = s;
        k->off = 0;
    } else {
        if (ARRAY_GROW(st->arena, st->arena_alloc, st->arena_len + n + 1))
            return jp_oom(st);
        if (n) memcpy(st->arena + st->arena_len, s, n);
        k->ptr = NULL;
        k->off = st->arena_len;
        st->arena_len += n;
    }
    st->nkeys++;
    count++;
    if (f->tab_size == 0 ? count > JP_LINEAR_KEYS : count * 2 > f->tab_size) {
        if (jp_rehash(st, f, f->tab_size ? f->tab_size * 2 : 4 * JP_LINEAR_KEYS))
            return jp_oom(st);
    } else if (f->tab_size) {
        size_t mask = f->tab_size - 1, slot = hash & mask;
        while (f->tab[slot]) slot = (slot + 1) & mask;
        f->tab[slot] = st->nkeys;
    }
    return 1;
dup:;
    /* the key is valid UTF-8 here; keep the reason short and cut on a character boundary */
    size_t show = json_utf8_prefix(s, n, 120);
    return jp_fail(st, MIMEO_EBADJSON, "Duplicate key \"%.*s%s\" in JSON object", (int)show,
                   s, show < n ? "..." : "");
}

/* ---- events ---------------------------------------------------------------------------- */

#define JP_FORWARD(call) do { \
        int rc_ = (call); \
        if (rc_) { st->rc = rc_; return 0; } \
    } while (0)

static int jp_null(void *c) {
    jp_state *st = c;
    if (st->h->on_null) JP_FORWARD(st->h->on_null(st->ctx));
    return 1;
}

static int jp_bool(void *c, int v) {
    jp_state *st = c;
    if (st->h->on_bool) JP_FORWARD(st->h->on_bool(st->ctx, v != 0));
    return 1;
}

static int jp_number(void *c, const char *s, size_t n) {
    jp_state *st = c;
    if (st->h->on_number) JP_FORWARD(st->h->on_number(st->ctx, s, n));
    return 1;
}

static int jp_string(void *c, const char *s, size_t n) {
    jp_state *st = c;
    if (st->high && !utf8_valid(s, n)) return jp_bad_utf8(st);
    if (st->h->on_string) JP_FORWARD(st->h->on_string(st->ctx, (const char *)s, n));
    return 1;
}

static int jp_open(jp_state *st) {
    if (st->depth >= st->max_depth)
        return jp_fail(st, MIMEO_EBADJSON, "JSON nesting deeper than %u", st->max_depth);
    st->depth++;
    return 1;
}

static int jp_start_map(void *c) {
    jp_state *st = c;
    if (!jp_open(st)) return 0;
    if (st->nframes == st->frames_alloc) {
        size_t old = st->frames_alloc;
        if (ARRAY_GROW(st->frames, st->frames_alloc, st->nframes + 1))
            return jp_oom(st);
        memset(st->frames + old, 0, (st->frames_alloc - old) * sizeof *st->frames);
    }
    jp_frame *f = &st->frames[st->nframes++];
    if (st->nframes > st->frames_used) st->frames_used = st->nframes;
    f->key0 = st->nkeys;
    f->arena0 = st->arena_len;
    f->tab_size = 0;
    if (st->h->on_start_map) JP_FORWARD(st->h->on_start_map(st->ctx));
    return 1;
}

static int jp_map_key(void *c, const char *s, size_t n) {
    jp_state *st = c;
    if (st->high && !utf8_valid(s, n)) return jp_bad_utf8(st);
    if (!jp_key_add(st, (const char *)s, n)) return 0;
    if (st->h->on_key) JP_FORWARD(st->h->on_key(st->ctx, (const char *)s, n));
    return 1;
}

static int jp_end_map(void *c) {
    jp_state *st = c;
    jp_frame *f = &st->frames[--st->nframes];
    st->nkeys = f->key0;
    st->arena_len = f->arena0;
    st->depth--;
    if (st->h->on_end_map) JP_FORWARD(st->h->on_end_map(st->ctx));
    return 1;
}

static int jp_start_array(void *c) {
    jp_state *st = c;
    if (!jp_open(st)) return 0;
    if (st->h->on_start_array) JP_FORWARD(st->h->on_start_array(st->ctx));
    return 1;
}

static int jp_end_array(void *c) {
    jp_state *st = c;
    st->depth--;
    if (st->h->on_end_array) JP_FORWARD(st->h->on_end_array(st->ctx));
    return 1;
}

/* ---- the grammar ------------------------------------------------------------------------ */

enum { JP_OK = 0, JP_SYNTAX = 1, JP_STOP = 2 }; /* STOP: an event failed, st->rc says why */

/* A string whose opening quote is at p[*i]: its text in *s (in place, or decoded into
 * st->str), *i just past the closing quote. */
static int jp_lex_string(jp_state *st, const unsigned char *p, size_t n, size_t *i,
                         const char **s, size_t *len) {
    st->high = false;
    size_t a = *i + 1, e = json_lex_str_run(p, n, a, &st->high);
    if (e < n && p[e] == '"') {
        *s = (const char *)p + a;
        *len = e - a;
        *i = e + 1;
        return JP_OK;
    }
    size_t o = 0;
    for (;;) {
        if (e >= n || p[e] < 0x20) return JP_SYNTAX;
        /* room for the run, then for one escape's (at most 4 bytes) and a final NUL */
        if (ARRAY_GROW(st->str, st->str_alloc, o + (e - a) + 5)) {
            jp_oom(st);
            return JP_STOP;
        }
        memcpy(st->str + o, p + a, e - a);
        o += e - a;
        if (p[e] == '"') break;
        if (e + 1 >= n) return JP_SYNTAX;
        unsigned char c = p[e + 1];
        a = e + 2;
        switch (c) {
        case '"': case '\\': case '/': st->str[o++] = (char)c; break;
        case 'b': st->str[o++] = '\b'; break;
        case 'f': st->str[o++] = '\f'; break;
        case 'n': st->str[o++] = '\n'; break;
        case 'r': st->str[o++] = '\r'; break;
        case 't': st->str[o++] = '\t'; break;
        case 'u': {
            unsigned cp, lo;
            if (n - a < 4 || !json_lex_hex4(p + a, &cp)) return JP_SYNTAX;
            a += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                /* jp_escapes_ok has made sure that a low surrogate escape follows */
                if (n - a < 6 || p[a] != '\\' || p[a + 1] != 'u' ||
                    !json_lex_hex4(p + a + 2, &lo))
                    return JP_SYNTAX;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                a += 6;
            }
            json_lex_put_utf8(st->str, &o, cp);
            break;
        }
        default:
            return JP_SYNTAX;
        }
        e = json_lex_str_run(p, n, a, &st->high);
    }
    st->str[o] = 0;
    *s = st->str;
    *len = o;
    *i = e + 1;
    return JP_OK;
}

static int jp_push(jp_state *st, size_t depth, unsigned char obj) {
    if (ARRAY_GROW(st->stack, st->stack_alloc, depth + 1)) {
        jp_oom(st);
        return JP_STOP;
    }
    st->stack[depth] = obj;
    return JP_OK;
}

/* The whole text: exactly one value with whitespace around it. Events fire as each token is
 * read, so handlers see everything before the first syntax error, as from a stream parser. */
static int jp_run(jp_state *st, const unsigned char *p, size_t n) {
    size_t i = 0, depth = 0, len;
    const char *s;
    int rc;
#define JP_EV(call) do { if (!(call)) return JP_STOP; } while (0)
value:
    i = json_lex_ws(p, n, i);
    if (i >= n) return JP_SYNTAX;
    switch (p[i]) {
    case '{':
        JP_EV(jp_start_map(st));
        if ((rc = jp_push(st, depth++, 1))) return rc;
        i = json_lex_ws(p, n, i + 1);
        if (i < n && p[i] == '}') {
            i++;
            depth--;
            JP_EV(jp_end_map(st));
            goto after;
        }
        goto key;
    case '[':
        JP_EV(jp_start_array(st));
        if ((rc = jp_push(st, depth++, 0))) return rc;
        i = json_lex_ws(p, n, i + 1);
        if (i < n && p[i] == ']') {
            i++;
            depth--;
            JP_EV(jp_end_array(st));
            goto after;
        }
        goto value;
    case '"':
        if ((rc = jp_lex_string(st, p, n, &i, &s, &len))) return rc;
        JP_EV(jp_string(st, s, len));
        goto after;
    case 't':
        if (n - i < 4 || memcmp(p + i, "true", 4) != 0) return JP_SYNTAX;
        i += 4;
        JP_EV(jp_bool(st, 1));
        goto after;
    case 'f':
        if (n - i < 5 || memcmp(p + i, "false", 5) != 0) return JP_SYNTAX;
        i += 5;
        JP_EV(jp_bool(st, 0));
        goto after;
    case 'n':
        if (n - i < 4 || memcmp(p + i, "null", 4) != 0) return JP_SYNTAX;
        i += 4;
        JP_EV(jp_null(st));
        goto after;
    default: {
        size_t a = i;
        if (!json_lex_number(p, n, &i)) return JP_SYNTAX;
        JP_EV(jp_number(st, (const char *)p + a, i - a));
        goto after;
    }
    }
key:
    if (i >= n || p[i] != '"') return JP_SYNTAX;
    if ((rc = jp_lex_string(st, p, n, &i, &s, &len))) return rc;
    JP_EV(jp_map_key(st, s, len));
    i = json_lex_ws(p, n, i);
    if (i >= n || p[i] != ':') return JP_SYNTAX;
    i++;
    goto value;
after:
    i = json_lex_ws(p, n, i);
    if (depth == 0) return i == n ? JP_OK : JP_SYNTAX;
    if (i >= n) return JP_SYNTAX;
    if (p[i] == ',') {
        i = json_lex_ws(p, n, i + 1);
        if (st->stack[depth - 1]) goto key;
        goto value;
    }
    if (p[i] != (st->stack[depth - 1] ? '}' : ']')) return JP_SYNTAX;
    i++;
    depth--;
    if (st->stack[depth]) JP_EV(jp_end_map(st));
    else JP_EV(jp_end_array(st));
    goto after;
#undef JP_EV
}

/* ---- entry point ----------------------------------------------------------------------- */

_Thread_local uint64_t json_parse_calls;

int json_parse(const char *p, size_t n, const json_limits *limits, const json_handlers *h,
               void *ctx, json_error *err) {
    static const json_handlers none;
    json_parse_calls++;
    json_error scratch;
    if (!err) err = &scratch;
    err->code = 0;
    err->error[0] = err->reason[0] = 0;

    uint64_t seed = atomic_load_explicit(&jp_seed, memory_order_relaxed);
    if (!seed) {
        /* two threads may both draw one; whichever store lands is as good as the other */
        random_bytes(&seed, sizeof seed);
        seed |= 1;
        atomic_store_explicit(&jp_seed, seed, memory_order_relaxed);
    }
    if (!p || n == 0 || !jp_escapes_ok(p, n)) {
        err_set(err, MIMEO_EBADJSON, "bad_request", "invalid UTF-8 JSON");
        return MIMEO_EBADJSON;
    }

    jp_state st;
    memset(&st, 0, sizeof st);
    st.h = h ? h : &none;
    st.ctx = ctx;
    st.err = err;
    st.in = p;
    st.in_len = n;
    st.seed = seed;
    st.max_depth = limits && limits->max_depth ? limits->max_depth : JSON_DEFAULT_MAX_DEPTH;

    int rc = 0;
    int r = jp_run(&st, (const unsigned char *)p, n);
    if (r == JP_STOP) {
        rc = st.rc ? st.rc : MIMEO_EBADJSON;
    } else if (r == JP_SYNTAX) {
        rc = MIMEO_EBADJSON;
        err_set(err, MIMEO_EBADJSON, "bad_request", "invalid UTF-8 JSON");
    }

    for (size_t i = 0; i < st.frames_used; i++) free(st.frames[i].tab);
    free(st.frames);
    free(st.keys);
    free(st.arena);
    free(st.str);
    free(st.stack);
    return rc;
}
