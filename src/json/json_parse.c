/* The validating event parser: drives yajl over one complete text and adds the checks yajl
 * lacks. yajl's own UTF-8 check only looks at byte patterns (it lets overlong forms, encoded
 * surrogates and code points past U+10FFFF through) and its \u decoder turns a lone
 * surrogate escape into '?' or into a wrong code point; we refuse all of these, refuse
 * duplicate object keys at every depth and cap the nesting. Every JSON byte that enters
 * mimeo passes through json_parse. */
#include "json.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

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
    int         rc;     /* why we cancelled yajl: a handler's value or our own error */
    uint64_t    seed;   /* of the key hash */

    jp_frame   *frames;
    size_t      nframes, frames_alloc, frames_used; /* used: how many hold table memory */
    jp_key     *keys;
    size_t      nkeys, keys_alloc;
    char       *arena;
    size_t      arena_len, arena_alloc;
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

static int jp_hex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = (unsigned char)p[i];
        unsigned d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return 0;
        v = v << 4 | d;
    }
    *out = v;
    return 1;
}

/* True when every \u escape that names a surrogate is a high one followed by a low one.
 * In valid JSON a backslash only occurs inside strings, where it always starts an escape,
 * so a plain scan from backslash to backslash sees the escapes exactly; on invalid input it
 * may misjudge, but yajl refuses that input anyway with the same error. */
static bool jp_escapes_ok(const char *p, size_t n) {
    const char *end = p + n, *q = p;
    while (q < end && (q = memchr(q, '\\', (size_t)(end - q))) != NULL) {
        if (end - q < 6 || q[1] != 'u') { q += 2; continue; }
        unsigned cp, lo;
        if (!jp_hex4(q + 2, &cp)) { q += 2; continue; }
        if (cp >= 0xDC00 && cp <= 0xDFFF) return false;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - q < 12 || q[6] != '\\' || q[7] != 'u' || !jp_hex4(q + 8, &lo) ||
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
    return 0; /* tells yajl to stop */
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

/* ---- yajl callbacks -------------------------------------------------------------------- */

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

static int jp_string(void *c, const unsigned char *s, size_t n) {
    jp_state *st = c;
    if (!utf8_valid((const char *)s, n)) return jp_bad_utf8(st);
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

static int jp_map_key(void *c, const unsigned char *s, size_t n) {
    jp_state *st = c;
    if (!utf8_valid((const char *)s, n)) return jp_bad_utf8(st);
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

static const yajl_callbacks jp_callbacks = {
    .yajl_null = jp_null,
    .yajl_boolean = jp_bool,
    .yajl_number = jp_number, /* takes precedence over integer/double: exact source text */
    .yajl_string = jp_string,
    .yajl_start_map = jp_start_map,
    .yajl_map_key = jp_map_key,
    .yajl_end_map = jp_end_map,
    .yajl_start_array = jp_start_array,
    .yajl_end_array = jp_end_array,
};

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
    yajl_handle y = yajl_alloc(&jp_callbacks, NULL, &st);
    if (!y) {
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
        return MIMEO_ENOMEM;
    }
    /* yajl's defaults are what we want; set them anyway so a library default can't change
     * what mimeo accepts */
    yajl_config(y, yajl_allow_comments, 0);
    yajl_config(y, yajl_dont_validate_strings, 0);
    yajl_config(y, yajl_allow_trailing_garbage, 0);
    yajl_config(y, yajl_allow_multiple_values, 0);
    yajl_config(y, yajl_allow_partial_values, 0);

    yajl_status ys = yajl_parse(y, (const unsigned char *)p, n);
    if (ys == yajl_status_ok) ys = yajl_complete_parse(y);
    if (ys == yajl_status_client_canceled) {
        rc = st.rc ? st.rc : MIMEO_EBADJSON;
    } else if (ys != yajl_status_ok) {
        rc = MIMEO_EBADJSON;
        err_set(err, MIMEO_EBADJSON, "bad_request", "invalid UTF-8 JSON");
    }
    yajl_free(y);

    for (size_t i = 0; i < st.frames_used; i++) free(st.frames[i].tab);
    free(st.frames);
    free(st.keys);
    free(st.arena);
    return rc;
}
