/* jval trees for small, cold JSON (query values, _revs_diff, _bulk_get requests, _revisions,
 * _attachments): built from json_parse's events by json_builder, so a tree accepts exactly
 * what the event parser accepts. Freeing and writing walk the tree with an explicit stack:
 * a tree is as deep as the configured nesting cap allows, never as deep as the C stack. */
#include "json.h"

#include <stdlib.h>
#include <string.h>

/* ---- building ------------------------------------------------------------------------ */

typedef struct jb_frame {
    jval  *v;
    size_t cap; /* room in v->items (and v->keys, v->key_lens for objects) */
} jb_frame;

struct json_builder {
    jval     *root;   /* the value being built, complete when depth == 0 */
    jb_frame *stack;  /* open containers, innermost last */
    size_t    depth, alloc;
};

json_builder *json_builder_new(void) {
    return calloc(1, sizeof(json_builder));
}

void json_builder_free(json_builder *jb) {
    if (!jb) return;
    jval_free(jb->root);
    free(jb->stack);
    free(jb);
}

jval *json_builder_take(json_builder *jb) {
    if (!jb->root || jb->depth) return NULL;
    jval *v = jb->root;
    jb->root = NULL;
    return v;
}

/* Makes a node and hangs it where the next value goes: the root, the next array item, or
 * the value slot that the last key of an object opened. A string or number keeps its text
 * in the same allocation, right after the node (str_len + 1 bytes), so a replication batch's
 * thousands of scalars cost one malloc and one free each, not two. */
static jval *jb_add(json_builder *jb, jv_type type, size_t str_len) {
    if (jb->depth == 0 && jb->root) return NULL; /* one value per take */
    bool text = type == JV_STRING || type == JV_NUMBER;
    if (text && str_len > SIZE_MAX - sizeof(jval) - 1) return NULL;
    jval *v = text ? malloc(sizeof *v + str_len + 1) : calloc(1, sizeof *v);
    if (!v) return NULL;
    if (text) {
        memset(v, 0, sizeof *v);
        v->str = (char *)(v + 1);
    }
    v->type = type;
    if (jb->depth == 0) {
        jb->root = v;
        return v;
    }
    jb_frame *f = &jb->stack[jb->depth - 1];
    jval *p = f->v;
    if (p->type == JV_OBJECT) {
        /* jb_key already made the slot: count includes it, the value is still NULL */
        if (p->count == 0 || p->items[p->count - 1]) { free(v); return NULL; }
        p->items[p->count - 1] = v;
        return v;
    }
    if (ARRAY_GROW(p->items, f->cap, p->count + 1)) { free(v); return NULL; }
    p->items[p->count++] = v;
    return v;
}

static int jb_scalar(json_builder *jb, jv_type type, const char *s, size_t n, bool bv) {
    jval *v = jb_add(jb, type, n);
    if (!v) return MIMEO_ENOMEM;
    if (v->str) {
        if (n) memcpy(v->str, s, n);
        v->str[n] = 0;
    }
    v->len = n;
    v->boolean = bv;
    return 0;
}

static int jb_null(void *c) { return jb_scalar(c, JV_NULL, NULL, 0, false); }
static int jb_bool(void *c, bool v) { return jb_scalar(c, JV_BOOL, NULL, 0, v); }
static int jb_number(void *c, const char *s, size_t n) {
    return jb_scalar(c, JV_NUMBER, s, n, false);
}
static int jb_string(void *c, const char *s, size_t n) {
    return jb_scalar(c, JV_STRING, s, n, false);
}

static int jb_open(void *c, jv_type type) {
    json_builder *jb = c;
    if (ARRAY_GROW(jb->stack, jb->alloc, jb->depth + 1)) return MIMEO_ENOMEM;
    jval *v = jb_add(jb, type, 0);
    if (!v) return MIMEO_ENOMEM;
    jb->stack[jb->depth].v = v;
    jb->stack[jb->depth].cap = 0;
    jb->depth++;
    return 0;
}

static int jb_start_map(void *c) { return jb_open(c, JV_OBJECT); }
static int jb_start_array(void *c) { return jb_open(c, JV_ARRAY); }

static int jb_close(void *c) {
    json_builder *jb = c;
    if (jb->depth) jb->depth--;
    return 0;
}

static int jb_key(void *c, const char *s, size_t n) {
    json_builder *jb = c;
    if (!jb->depth) return MIMEO_EINVAL;
    jb_frame *f = &jb->stack[jb->depth - 1];
    jval *p = f->v;
    if (p->count == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 4;
        /* grow the three arrays one by one; each success is kept, so a failure part way
         * leaves the node consistent for jval_free */
        jval **items = realloc(p->items, cap * sizeof *items);
        if (!items) return MIMEO_ENOMEM;
        p->items = items;
        char **keys = realloc(p->keys, cap * sizeof *keys);
        if (!keys) return MIMEO_ENOMEM;
        p->keys = keys;
        size_t *lens = realloc(p->key_lens, cap * sizeof *lens);
        if (!lens) return MIMEO_ENOMEM;
        p->key_lens = lens;
        f->cap = cap;
    }
    char *k = malloc(n + 1);
    if (!k) return MIMEO_ENOMEM;
    if (n) memcpy(k, s, n);
    k[n] = 0;
    p->keys[p->count] = k;
    p->key_lens[p->count] = n;
    p->items[p->count] = NULL; /* filled by the value that follows */
    p->count++;
    return 0;
}

const json_handlers json_builder_handlers = {
    .on_null = jb_null,
    .on_bool = jb_bool,
    .on_number = jb_number,
    .on_string = jb_string,
    .on_start_map = jb_start_map,
    .on_key = jb_key,
    .on_end_map = jb_close,
    .on_start_array = jb_start_array,
    .on_end_array = jb_close,
};

int json_tree_parse(const char *p, size_t n, const json_limits *limits, jval **out,
                    json_error *err) {
    *out = NULL;
    json_builder *jb = json_builder_new();
    if (!jb) {
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
        return MIMEO_ENOMEM;
    }
    int rc = json_parse(p, n, limits, &json_builder_handlers, jb, err);
    if (rc == 0) {
        *out = json_builder_take(jb);
        if (!*out) rc = MIMEO_EBADJSON; /* cannot happen after a clean parse */
    }
    if (rc == MIMEO_ENOMEM)
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
    else if (rc && err && !err->code)
        err_set(err, rc, "bad_request", "invalid UTF-8 JSON");
    json_builder_free(jb);
    return rc;
}

/* ---- walking ------------------------------------------------------------------------- */

/* Frees one node's own memory, not its children. */
static void jv_free_node(jval *v) {
    if (v->str != (char *)(v + 1)) free(v->str); /* else it lives in the node's block */
    if (v->keys)
        for (size_t i = 0; i < v->count; i++) free(v->keys[i]);
    free(v->keys);
    free(v->key_lens);
    free(v->items);
    free(v);
}

void jval_free(jval *v) {
    if (!v) return;
    /* depth-first with an explicit stack of (container, next child); frames live on the C
     * stack until the tree is deeper than that, then on the heap */
    struct fr { jval *v; size_t i; } local[64], *st = local;
    size_t depth = 0, alloc = 64;
    st[depth++] = (struct fr){v, 0};
    while (depth) {
        struct fr *f = &st[depth - 1];
        jval *c = f->v;
        if ((c->type == JV_ARRAY || c->type == JV_OBJECT) && f->i < c->count) {
            jval *child = c->items[f->i++];
            if (!child) continue;
            if (child->type != JV_ARRAY && child->type != JV_OBJECT) {
                jv_free_node(child);
                continue;
            }
            if (depth == alloc) {
                struct fr *g = malloc(alloc * 2 * sizeof *g);
                /* out of memory: this one subtree is freed by recursion instead */
                if (!g) { jval_free(child); continue; }
                memcpy(g, st, depth * sizeof *g);
                if (st != local) free(st);
                st = g;
                alloc *= 2;
            }
            st[depth++] = (struct fr){child, 0};
            continue;
        }
        jv_free_node(c);
        depth--;
    }
    if (st != local) free(st);
}

jval *jval_get(const jval *v, const char *key) {
    if (!v || v->type != JV_OBJECT) return NULL;
    size_t n = strlen(key);
    for (size_t i = 0; i < v->count; i++)
        if (v->key_lens[i] == n && memcmp(v->keys[i], key, n) == 0) return v->items[i];
    return NULL;
}

bool jval_as_i64(const jval *v, int64_t *out) {
    if (!v || v->type != JV_NUMBER || !v->str || v->len == 0) return false;
    const char *s = v->str, *end = s + v->len;
    bool neg = false;
    if (*s == '-') { neg = true; s++; }
    if (s == end) return false;
    uint64_t acc = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9') return false; /* fraction or exponent: not an integer */
        unsigned d = (unsigned)(*s - '0');
        if (acc > (limit - d) / 10) return false;
        acc = acc * 10 + d;
    }
    *out = neg ? (int64_t)(0 - acc) : (int64_t)acc;
    return true;
}

static int jv_put_scalar(buf *b, const jval *v) {
    switch (v->type) {
    case JV_NULL:   return buf_put(b, "null", 4);
    case JV_BOOL:   return v->boolean ? buf_put(b, "true", 4) : buf_put(b, "false", 5);
    case JV_NUMBER: return buf_put(b, v->str, v->len);
    case JV_STRING: return json_put_str(b, v->str, v->len);
    default:        return MIMEO_EINVAL;
    }
}

int json_put_jval(buf *b, const jval *v) {
    if (!v) return buf_put(b, "null", 4);
    if (v->type != JV_ARRAY && v->type != JV_OBJECT) return jv_put_scalar(b, v);
    struct fr { const jval *v; size_t i; } local[64], *st = local;
    size_t depth = 0, alloc = 64;
    int rc = json_putc_fast(b, v->type == JV_OBJECT ? '{' : '[');
    st[depth++] = (struct fr){v, 0};
    while (!rc && depth) {
        struct fr *f = &st[depth - 1];
        const jval *c = f->v;
        if (f->i == c->count) {
            rc = json_putc_fast(b, c->type == JV_OBJECT ? '}' : ']');
            depth--;
            continue;
        }
        size_t i = f->i++;
        if (i) rc = json_putc_fast(b, ',');
        if (!rc && c->type == JV_OBJECT) {
            rc = json_put_str(b, c->keys[i], c->key_lens[i]);
            if (!rc) rc = json_putc_fast(b, ':');
        }
        if (rc) break;
        const jval *child = c->items[i];
        if (!child) { rc = buf_put(b, "null", 4); continue; }
        if (child->type != JV_ARRAY && child->type != JV_OBJECT) {
            rc = jv_put_scalar(b, child);
            continue;
        }
        if (depth == alloc) {
            struct fr *g = malloc(alloc * 2 * sizeof *g);
            if (!g) { rc = MIMEO_ENOMEM; break; }
            memcpy(g, st, depth * sizeof *g);
            if (st != local) free(st);
            st = g;
            alloc *= 2;
        }
        rc = json_putc_fast(b, child->type == JV_OBJECT ? '{' : '[');
        st[depth++] = (struct fr){child, 0};
    }
    if (st != local) free(st);
    return rc;
}

/* ---- trees in one block ----------------------------------------------------------------
 * The events are first recorded on a tape (one entry per key or value, texts appended to
 * one buffer), then laid out in a single allocation: the nodes, the containers' item, key
 * and key length arrays, then every text. A request of thousands of revisions costs a few
 * allocations instead of two per value, and one free. */

enum { JT_KEY = 16 };   /* tape entries: a jv_type, or a key */

typedef struct jt_tok {
    uint8_t type;
    bool    boolean;
    size_t  off, len;   /* text (strings, numbers, keys) */
    size_t  count;      /* containers: items */
} jt_tok;

typedef struct jt_tape {
    jt_tok *tok;
    size_t  n, alloc;
    buf     text;
    size_t *open;       /* tape index of each open container */
    size_t  depth, open_alloc;
    size_t  nvals, nitems, nkeys;
} jt_tape;

static int jt_push(jt_tape *t, uint8_t type, const char *s, size_t n, bool bv) {
    if (ARRAY_GROW(t->tok, t->alloc, t->n + 1)) return MIMEO_ENOMEM;
    jt_tok *k = &t->tok[t->n++];
    k->type = type;
    k->boolean = bv;
    k->count = 0;
    k->off = t->text.len;
    k->len = n;
    if (type == JV_STRING || type == JV_NUMBER || type == JT_KEY) {
        if (buf_put(&t->text, s, n) || buf_putc(&t->text, '\0')) return MIMEO_ENOMEM;
    }
    if (type == JT_KEY) {
        t->nkeys++;
        return 0;
    }
    t->nvals++;
    if (t->depth) {
        t->tok[t->open[t->depth - 1]].count++;
        t->nitems++;
    }
    return 0;
}

static int jt_null(void *c) { return jt_push(c, JV_NULL, NULL, 0, false); }
static int jt_bool(void *c, bool v) { return jt_push(c, JV_BOOL, NULL, 0, v); }
static int jt_number(void *c, const char *s, size_t n) { return jt_push(c, JV_NUMBER, s, n, false); }
static int jt_string(void *c, const char *s, size_t n) { return jt_push(c, JV_STRING, s, n, false); }
static int jt_key(void *c, const char *s, size_t n) { return jt_push(c, JT_KEY, s, n, false); }

static int jt_open(jt_tape *t, uint8_t type) {
    if (jt_push(t, type, NULL, 0, false)) return MIMEO_ENOMEM;
    if (ARRAY_GROW(t->open, t->open_alloc, t->depth + 1)) return MIMEO_ENOMEM;
    t->open[t->depth++] = t->n - 1;
    return 0;
}

static int jt_start_map(void *c) { return jt_open(c, JV_OBJECT); }
static int jt_start_array(void *c) { return jt_open(c, JV_ARRAY); }
static int jt_close(void *c) {
    jt_tape *t = c;
    if (t->depth) t->depth--;
    return 0;
}

static const json_handlers jt_handlers = {
    .on_null = jt_null, .on_bool = jt_bool, .on_number = jt_number, .on_string = jt_string,
    .on_start_map = jt_start_map, .on_key = jt_key, .on_end_map = jt_close,
    .on_start_array = jt_start_array, .on_end_array = jt_close,
};

/* The tape's tree laid out in one block (NULL when out of memory). */
static jval *jt_layout(jt_tape *t) {
    size_t size = t->nvals * sizeof(jval) + t->nitems * sizeof(jval *) +
                  t->nkeys * (sizeof(char *) + sizeof(size_t)) + t->text.len;
    char *block = malloc(size ? size : 1);
    /* the containers being filled, with the item count each will have */
    struct jt_fill { jval *v; size_t want; } *open = malloc((t->open_alloc + 1) * sizeof *open);
    if (!block || !open) {
        free(block);
        free(open);
        return NULL;
    }
    jval *nodes = (jval *)block;
    jval **items = (jval **)(nodes + t->nvals);
    char **keys = (char **)(items + t->nitems);
    size_t *key_lens = (size_t *)(keys + t->nkeys);
    char *text = (char *)(key_lens + t->nkeys);
    if (t->text.len) memcpy(text, t->text.data, t->text.len);
    size_t depth = 0, v = 0, key_off = 0, key_len = 0;
    for (size_t i = 0; i < t->n; i++) {
        const jt_tok *k = &t->tok[i];
        if (k->type == JT_KEY) {
            key_off = k->off;
            key_len = k->len;
            continue;
        }
        jval *node = &nodes[v++];
        memset(node, 0, sizeof *node);
        node->type = (jv_type)k->type;
        node->boolean = k->boolean;
        if (k->type == JV_STRING || k->type == JV_NUMBER) {
            node->str = text + k->off;
            node->len = k->len;
        }
        if (depth) {
            jval *p = open[depth - 1].v;
            if (p->type == JV_OBJECT) {
                p->keys[p->count] = text + key_off;
                p->key_lens[p->count] = key_len;
            }
            p->items[p->count++] = node;
        }
        if (k->type == JV_ARRAY || k->type == JV_OBJECT) {
            node->items = items;
            items += k->count;
            if (k->type == JV_OBJECT) {
                node->keys = keys;
                node->key_lens = key_lens;
                keys += k->count;
                key_lens += k->count;
            }
            if (k->count) {
                open[depth++] = (struct jt_fill){ node, k->count };
                continue;
            }
        }
        /* a value is complete: so is every container it was the last item of */
        while (depth && open[depth - 1].v->count == open[depth - 1].want) depth--;
    }
    free(open);
    return nodes;
}

int json_tree_parse_block(const char *p, size_t n, const json_limits *limits, jval **out,
                          json_error *err) {
    *out = NULL;
    jt_tape t;
    memset(&t, 0, sizeof t);
    buf_init(&t.text, 0);
    int rc = json_parse(p, n, limits, &jt_handlers, &t, err);
    if (rc == 0 && t.nvals > 0 && !(*out = jt_layout(&t))) rc = MIMEO_ENOMEM;
    if (rc == 0 && !*out) rc = MIMEO_EBADJSON; /* cannot happen after a clean parse */
    if (rc == MIMEO_ENOMEM)
        err_set(err, MIMEO_ENOMEM, "internal_server_error", "out of memory");
    else if (rc && err && !err->code)
        err_set(err, rc, "bad_request", "invalid UTF-8 JSON");
    free(t.tok);
    free(t.open);
    buf_destroy(&t.text);
    return rc;
}
