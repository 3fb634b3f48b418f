/* CRDT document states: PN-counters, last-writer-wins registers, add-wins observed-remove
 * sets (without tombstones: a version vector per set stands for every removed element) and
 * maps of them; their join, canonical encoding, rendering as a plain document, ops, and the
 * hybrid logical clock. Pure: no I/O, no global state. Layout of the encoding: docs/crdt.md. */
#include "crdt.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(mimeo_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(mimeo_err *err, const char *fmt, ...) {
    if (err) {
        err->code = MIMEO_EINVAL;
        snprintf(err->error, sizeof err->error, "bad_request");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->reason, sizeof err->reason, fmt, ap);
        va_end(ap);
    }
    return MIMEO_EINVAL;
}

static int key_cmp(const char *a, size_t al, const char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    if (c) return c < 0 ? -1 : 1;
    return al < bl ? -1 : al > bl ? 1 : 0;
}

static char *mem_dup(const char *p, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, p, n);
    d[n] = 0;
    return d;
}

/* ---- stamps and the clock ------------------------------------------------------------------- */

int crdt_stamp_cmp(const crdt_stamp *a, const crdt_stamp *b) {
    if (a->l != b->l) return a->l < b->l ? -1 : 1;
    if (a->c != b->c) return a->c < b->c ? -1 : 1;
    int c = strcmp(a->node, b->node);
    return c < 0 ? -1 : c > 0 ? 1 : 0;
}

static bool stamp_zero(const crdt_stamp *s) { return !s->l && !s->c && !s->node[0]; }

static void stamp_max(crdt_stamp *into, const crdt_stamp *o) {
    if (crdt_stamp_cmp(o, into) > 0) *into = *o;
}

bool crdt_node_valid(const char *s, size_t n) {
    if (n == 0 || n > CRDT_NODE_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok) return false;
    }
    return true;
}

void crdt_hlc_next(crdt_hlc *h, uint64_t now_ms, const crdt_stamp *seen, const char *node,
                   crdt_stamp *out) {
    uint64_t sl = seen ? seen->l : 0, sc = seen ? seen->c : 0;
    uint64_t l = h->l;
    if (sl > l) l = sl;
    if (now_ms > l) l = now_ms;
    uint64_t c;
    if (l == h->l && l == sl) c = (h->c > sc ? h->c : sc) + 1;
    else if (l == h->l) c = h->c + 1;
    else if (l == sl) c = sc + 1;
    else c = 0;
    h->l = l;
    h->c = c;
    memset(out, 0, sizeof *out);
    out->l = l;
    out->c = c;
    snprintf(out->node, sizeof out->node, "%s", node);
}

/* ---- node → count lists --------------------------------------------------------------------- */

static size_t ctr_pos(const crdt_ctr *a, size_t n, const char *node, bool *found) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(a[mid].node, node);
        if (c == 0) { *found = true; return mid; }
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    *found = false;
    return lo;
}

static uint64_t ctr_get(const crdt_ctr *a, size_t n, const char *node) {
    bool found;
    size_t i = ctr_pos(a, n, node, &found);
    return found ? a[i].n : 0;
}

static int ctr_set(crdt_ctr **a, size_t *n, const char *node, uint64_t v) {
    bool found;
    size_t i = ctr_pos(*a, *n, node, &found);
    if (found) { (*a)[i].n = v; return 0; }
    crdt_ctr *g = realloc(*a, (*n + 1) * sizeof *g);
    if (!g) return MIMEO_ENOMEM;
    memmove(g + i + 1, g + i, (*n - i) * sizeof *g);
    memset(&g[i], 0, sizeof g[i]);
    snprintf(g[i].node, sizeof g[i].node, "%s", node);
    g[i].n = v;
    *a = g;
    (*n)++;
    return 0;
}

static int ctr_dup(crdt_ctr **dst, size_t *nd, const crdt_ctr *src, size_t n) {
    *dst = NULL;
    *nd = 0;
    if (!n) return 0;
    *dst = malloc(n * sizeof **dst);
    if (!*dst) return MIMEO_ENOMEM;
    memcpy(*dst, src, n * sizeof **dst);
    *nd = n;
    return 0;
}

/* a := pointwise max(a, b). */
static int ctr_join_max(crdt_ctr **a, size_t *na, const crdt_ctr *b, size_t nb) {
    for (size_t j = 0; j < nb; j++) {
        bool found;
        size_t i = ctr_pos(*a, *na, b[j].node, &found);
        if (found) {
            if (b[j].n > (*a)[i].n) (*a)[i].n = b[j].n;
        } else {
            int rc = ctr_set(a, na, b[j].node, b[j].n);
            if (rc) return rc;
        }
    }
    return 0;
}

/* Dots are sorted by (node, n). */
static int dot_cmp(const crdt_ctr *a, const crdt_ctr *b) {
    int c = strcmp(a->node, b->node);
    if (c) return c < 0 ? -1 : 1;
    return a->n < b->n ? -1 : a->n > b->n ? 1 : 0;
}

static bool dot_in(const crdt_ctr *dots, size_t n, const crdt_ctr *d) {
    for (size_t i = 0; i < n; i++)
        if (dot_cmp(&dots[i], d) == 0) return true;
    return false;
}

/* ---- nodes: lifetime ------------------------------------------------------------------------ */

static void node_clear(crdt_node *n) {
    free(n->p);
    free(n->n);
    free(n->rval);
    for (size_t i = 0; i < n->nel; i++) {
        free(n->el[i].val);
        free(n->el[i].dots);
    }
    free(n->el);
    free(n->vv);
    for (size_t i = 0; i < n->nf; i++) {
        free(n->f[i].key);
        if (n->f[i].node) node_clear(n->f[i].node);
        free(n->f[i].node);
    }
    free(n->f);
    memset(n, 0, sizeof *n);
}

static int node_copy(crdt_node *dst, const crdt_node *src);

static int elem_copy(crdt_elem *dst, const crdt_elem *src) {
    memset(dst, 0, sizeof *dst);
    dst->val = mem_dup(src->val, src->len);
    if (!dst->val) return MIMEO_ENOMEM;
    dst->len = src->len;
    int rc = ctr_dup(&dst->dots, &dst->ndots, src->dots, src->ndots);
    if (rc) { free(dst->val); dst->val = NULL; }
    return rc;
}

static int node_copy(crdt_node *dst, const crdt_node *src) {
    memset(dst, 0, sizeof *dst);
    dst->kind = src->kind;
    dst->t = src->t;
    dst->d = src->d;
    dst->rs = src->rs;
    int rc = ctr_dup(&dst->p, &dst->np, src->p, src->np);
    if (!rc) rc = ctr_dup(&dst->n, &dst->nn, src->n, src->nn);
    if (!rc) rc = ctr_dup(&dst->vv, &dst->nvv, src->vv, src->nvv);
    if (!rc && src->rval) {
        dst->rval = mem_dup(src->rval, src->rlen);
        if (!dst->rval) rc = MIMEO_ENOMEM;
        dst->rlen = src->rlen;
    }
    if (!rc && src->nel) {
        dst->el = calloc(src->nel, sizeof *dst->el);
        if (!dst->el) rc = MIMEO_ENOMEM;
        for (size_t i = 0; !rc && i < src->nel; i++) {
            rc = elem_copy(&dst->el[i], &src->el[i]);
            if (!rc) dst->nel++;
        }
    }
    if (!rc && src->nf) {
        dst->f = calloc(src->nf, sizeof *dst->f);
        if (!dst->f) rc = MIMEO_ENOMEM;
        for (size_t i = 0; !rc && i < src->nf; i++) {
            crdt_field *f = &dst->f[i];
            f->key = mem_dup(src->f[i].key, src->f[i].klen);
            f->klen = src->f[i].klen;
            f->node = calloc(1, sizeof *f->node);
            if (!f->key || !f->node) {
                free(f->key);
                free(f->node);
                f->key = NULL;
                f->node = NULL;
                rc = MIMEO_ENOMEM;
                break;
            }
            dst->nf++;
            rc = node_copy(f->node, src->f[i].node);
        }
    }
    if (rc) node_clear(dst);
    return rc;
}

void crdt_state_init(crdt_state *s) {
    memset(s, 0, sizeof *s);
    s->root.kind = 'm';
}

void crdt_state_destroy(crdt_state *s) {
    node_clear(&s->root);
    s->root.kind = 'm';
}

int crdt_state_copy(crdt_state *dst, const crdt_state *src) {
    crdt_state tmp;
    int rc = node_copy(&tmp.root, &src->root);
    if (rc) return rc;
    crdt_state_destroy(dst);
    *dst = tmp;
    return 0;
}

static void node_max_stamp(const crdt_node *n, crdt_stamp *m) {
    stamp_max(m, &n->t);
    stamp_max(m, &n->d);
    stamp_max(m, &n->rs);
    for (size_t i = 0; i < n->nf; i++) node_max_stamp(n->f[i].node, m);
}

void crdt_state_max_stamp(const crdt_state *s, crdt_stamp *out) {
    memset(out, 0, sizeof *out);
    node_max_stamp(&s->root, out);
}

/* ---- maps ----------------------------------------------------------------------------------- */

static size_t map_pos(const crdt_node *m, const char *k, size_t kl, bool *found) {
    size_t lo = 0, hi = m->nf;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = key_cmp(m->f[mid].key, m->f[mid].klen, k, kl);
        if (c == 0) { *found = true; return mid; }
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    *found = false;
    return lo;
}

static crdt_node *map_get(const crdt_node *m, const char *k, size_t kl) {
    bool found;
    size_t i = map_pos(m, k, kl, &found);
    return found ? m->f[i].node : NULL;
}

/* A new empty field of `kind` at key k (which must be absent), or NULL when out of memory. */
static crdt_node *map_add(crdt_node *m, const char *k, size_t kl, char kind) {
    bool found;
    size_t i = map_pos(m, k, kl, &found);
    if (found) return NULL;
    crdt_field *g = realloc(m->f, (m->nf + 1) * sizeof *g);
    if (!g) return NULL;
    m->f = g;
    crdt_node *n = calloc(1, sizeof *n);
    char *key = mem_dup(k, kl);
    if (!n || !key) {
        free(n);
        free(key);
        return NULL;
    }
    memmove(g + i + 1, g + i, (m->nf - i) * sizeof *g);
    g[i].key = key;
    g[i].klen = kl;
    g[i].node = n;
    m->nf++;
    n->kind = kind;
    return n;
}

/* ---- sets ----------------------------------------------------------------------------------- */

static size_t elem_pos(const crdt_node *s, const char *v, size_t vl, bool *found) {
    size_t lo = 0, hi = s->nel;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = key_cmp(s->el[mid].val, s->el[mid].len, v, vl);
        if (c == 0) { *found = true; return mid; }
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    *found = false;
    return lo;
}

static void elem_remove(crdt_node *s, size_t i) {
    free(s->el[i].val);
    free(s->el[i].dots);
    memmove(s->el + i, s->el + i + 1, (s->nel - i - 1) * sizeof *s->el);
    s->nel--;
}

/* Keeps the dots of `mine` that `other` also has, or that `other` has not seen (beyond its
 * version vector): the rule of an observed-remove set without tombstones. theirs may be NULL
 * (the other side has no such element). Writes into out (room for nm + nt); returns count. */
static size_t dots_join(const crdt_ctr *mine, size_t nm, const crdt_ctr *theirs, size_t nt,
                        const crdt_node *other_set, const crdt_node *my_set, crdt_ctr *out) {
    size_t k = 0;
    for (size_t i = 0; i < nm; i++) {
        bool both = theirs && dot_in(theirs, nt, &mine[i]);
        if (both || mine[i].n > ctr_get(other_set->vv, other_set->nvv, mine[i].node))
            out[k++] = mine[i];
    }
    for (size_t j = 0; j < nt; j++) {
        if (dot_in(mine, nm, &theirs[j])) continue;
        if (theirs[j].n > ctr_get(my_set->vv, my_set->nvv, theirs[j].node)) out[k++] = theirs[j];
    }
    /* insertion sort: element dot lists hold one dot per adding node, a handful at most */
    for (size_t i = 1; i < k; i++)
        for (size_t j = i; j > 0 && dot_cmp(&out[j - 1], &out[j]) > 0; j--) {
            crdt_ctr t = out[j];
            out[j] = out[j - 1];
            out[j - 1] = t;
        }
    return k;
}

static int set_join(crdt_node *a, const crdt_node *b) {
    size_t cap = a->nel + b->nel;
    crdt_elem *out = cap ? calloc(cap, sizeof *out) : NULL;
    if (cap && !out) return MIMEO_ENOMEM;
    size_t i = 0, j = 0, k = 0;
    int rc = 0;
    while (!rc && (i < a->nel || j < b->nel)) {
        int c = i == a->nel ? 1 : j == b->nel ? -1
              : key_cmp(a->el[i].val, a->el[i].len, b->el[j].val, b->el[j].len);
        const crdt_elem *ea = c <= 0 ? &a->el[i] : NULL;
        const crdt_elem *eb = c >= 0 ? &b->el[j] : NULL;
        size_t nm = ea ? ea->ndots : 0, nt = eb ? eb->ndots : 0;
        crdt_ctr *dots = malloc((nm + nt) * sizeof *dots);
        if (!dots) { rc = MIMEO_ENOMEM; break; }
        size_t nd = ea ? dots_join(ea->dots, nm, eb ? eb->dots : NULL, nt, b, a, dots)
                       : dots_join(eb->dots, nt, NULL, 0, a, b, dots);
        if (nd == 0) {
            free(dots);
        } else {
            const crdt_elem *src = ea ? ea : eb;
            out[k].val = mem_dup(src->val, src->len);
            if (!out[k].val) { free(dots); rc = MIMEO_ENOMEM; break; }
            out[k].len = src->len;
            out[k].dots = dots;
            out[k].ndots = nd;
            k++;
        }
        if (ea) i++;
        if (eb) j++;
    }
    if (!rc) rc = ctr_join_max(&a->vv, &a->nvv, b->vv, b->nvv);
    if (rc) {
        for (size_t x = 0; x < k; x++) { free(out[x].val); free(out[x].dots); }
        free(out);
        return rc;
    }
    for (size_t x = 0; x < a->nel; x++) { free(a->el[x].val); free(a->el[x].dots); }
    free(a->el);
    a->el = out;
    a->nel = k;
    return 0;
}

/* ---- join ----------------------------------------------------------------------------------- */

static int kind_rank(char k) {
    switch (k) {
    case 'r': return 0;
    case 'c': return 1;
    case 's': return 2;
    default:  return 3; /* 'm' */
    }
}

static int node_join(crdt_node *a, const crdt_node *b);

static int map_join(crdt_node *a, const crdt_node *b) {
    for (size_t j = 0; j < b->nf; j++) {
        const crdt_field *bf = &b->f[j];
        crdt_node *an = map_get(a, bf->key, bf->klen);
        int rc;
        if (an) {
            rc = node_join(an, bf->node);
        } else {
            crdt_node *n = map_add(a, bf->key, bf->klen, bf->node->kind);
            rc = n ? node_copy(n, bf->node) : MIMEO_ENOMEM;
        }
        if (rc) return rc;
    }
    return 0;
}

static int node_join(crdt_node *a, const crdt_node *b) {
    int ra = kind_rank(a->kind), rb = kind_rank(b->kind);
    /* Kinds ordered as a chain and compared first: the join of (kind, content) pairs is then
     * lexicographic, which stays a semilattice (a lower kind's content is simply dropped). */
    if (rb < ra) return 0;
    if (rb > ra) {
        crdt_node tmp;
        int rc = node_copy(&tmp, b);
        if (rc) return rc;
        node_clear(a);
        *a = tmp;
        return 0;
    }
    stamp_max(&a->t, &b->t);
    stamp_max(&a->d, &b->d);
    switch (a->kind) {
    case 'c': {
        int rc = ctr_join_max(&a->p, &a->np, b->p, b->np);
        return rc ? rc : ctr_join_max(&a->n, &a->nn, b->n, b->nn);
    }
    case 'r': {
        int c = crdt_stamp_cmp(&b->rs, &a->rs);
        /* Equal stamps cannot come from two real writers (a node never reuses one); a body
         * edited twice from the same state can, and then the value bytes decide. */
        if (c == 0 && b->rval && a->rval) c = key_cmp(b->rval, b->rlen, a->rval, a->rlen);
        if (c > 0 || !a->rval) {
            char *v = mem_dup(b->rval ? b->rval : "null", b->rval ? b->rlen : 4);
            if (!v) return MIMEO_ENOMEM;
            free(a->rval);
            a->rval = v;
            a->rlen = b->rval ? b->rlen : 4;
            a->rs = b->rs;
        }
        return 0;
    }
    case 's':
        return set_join(a, b);
    default:
        return map_join(a, b);
    }
}

int crdt_join(crdt_state *into, const crdt_state *other) {
    crdt_state tmp;
    int rc = node_copy(&tmp.root, &into->root);
    if (!rc) rc = map_join(&tmp.root, &other->root);
    if (rc) {
        node_clear(&tmp.root);
        return rc;
    }
    crdt_state_destroy(into);
    *into = tmp;
    return 0;
}

/* ---- canonical JSON ------------------------------------------------------------------------- */

typedef struct kidx {
    const char *k;
    size_t      kl;
    size_t      i;
} kidx;

static int kidx_cmp(const void *a, const void *b) {
    const kidx *x = a, *y = b;
    return key_cmp(x->k, x->kl, y->k, y->kl);
}

int crdt_canon(buf *b, const jval *v) {
    if (!v) return buf_puts(b, "null");
    switch (v->type) {
    case JV_NULL:   return buf_puts(b, "null");
    case JV_BOOL:   return buf_puts(b, v->boolean ? "true" : "false");
    case JV_NUMBER: return buf_put(b, v->str, v->len);
    case JV_STRING: return json_put_str(b, v->str, v->len);
    case JV_ARRAY: {
        int rc = buf_putc(b, '[');
        for (size_t i = 0; !rc && i < v->count; i++) {
            if (i) rc = buf_putc(b, ',');
            if (!rc) rc = crdt_canon(b, v->items[i]);
        }
        return rc ? rc : buf_putc(b, ']');
    }
    case JV_OBJECT: {
        kidx *ix = v->count ? malloc(v->count * sizeof *ix) : NULL;
        if (v->count && !ix) return MIMEO_ENOMEM;
        for (size_t i = 0; i < v->count; i++) ix[i] = (kidx){v->keys[i], v->key_lens[i], i};
        if (v->count > 1) qsort(ix, v->count, sizeof *ix, kidx_cmp);
        int rc = buf_putc(b, '{');
        for (size_t i = 0; !rc && i < v->count; i++) {
            if (i) rc = buf_putc(b, ',');
            if (!rc) rc = json_put_str(b, ix[i].k, ix[i].kl);
            if (!rc) rc = buf_putc(b, ':');
            if (!rc) rc = crdt_canon(b, v->items[ix[i].i]);
        }
        free(ix);
        return rc ? rc : buf_putc(b, '}');
    }
    }
    return MIMEO_EINVAL;
}

static int canon_dup(const jval *v, char **out, size_t *len) {
    buf b;
    buf_init(&b, 0);
    int rc = crdt_canon(&b, v);
    if (rc) {
        buf_destroy(&b);
        return rc;
    }
    buf_cstr(&b);
    *out = buf_detach(&b, len);
    return *out ? 0 : MIMEO_ENOMEM;
}

/* ---- encoding ------------------------------------------------------------------------------- */
/* The "$crdt" member, compact and canonical (docs/crdt.md):
 *   {"v":1,"n":[node ids, sorted],"m":{field: entry, …keys sorted}}
 *   entry   ["c",t,d,P,N]  P, N: [[node index, count],…] sorted by node, counts ≥ 1
 *           ["r",t,d,stamp,value]
 *           ["s",t,d,VV,[[value,[[node index, n],…]],…]]  elements sorted by value bytes
 *           ["m",t,d,{field: entry,…}]
 *   stamp   0 (never) or [l,c,node index]
 * Node ids are interned once per document: they are 32-char server uuids, repeated in every
 * stamp and dot otherwise. */

typedef struct ntab {
    const char **v;
    size_t       n, alloc;
} ntab;

static int ntab_add(ntab *t, const char *s) {
    if (!s[0]) return 0;
    if (t->n == t->alloc) {
        size_t na = t->alloc ? t->alloc * 2 : 16;
        const char **g = realloc(t->v, na * sizeof *g);
        if (!g) return MIMEO_ENOMEM;
        t->v = g;
        t->alloc = na;
    }
    t->v[t->n++] = s;
    return 0;
}

static int ntab_collect(ntab *t, const crdt_node *n) {
    int rc = ntab_add(t, n->t.node);
    if (!rc) rc = ntab_add(t, n->d.node);
    if (!rc) rc = ntab_add(t, n->rs.node);
    for (size_t i = 0; !rc && i < n->np; i++) rc = ntab_add(t, n->p[i].node);
    for (size_t i = 0; !rc && i < n->nn; i++) rc = ntab_add(t, n->n[i].node);
    for (size_t i = 0; !rc && i < n->nvv; i++) rc = ntab_add(t, n->vv[i].node);
    for (size_t i = 0; !rc && i < n->nel; i++)
        for (size_t j = 0; !rc && j < n->el[i].ndots; j++) rc = ntab_add(t, n->el[i].dots[j].node);
    for (size_t i = 0; !rc && i < n->nf; i++) rc = ntab_collect(t, n->f[i].node);
    return rc;
}

static int str_cmp_p(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static size_t ntab_index(const ntab *t, const char *s) {
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(t->v[mid], s);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return (size_t)-1; /* not reached: every node was collected */
}

static int put_stamp(buf *b, const ntab *t, const crdt_stamp *s) {
    if (stamp_zero(s)) return buf_putc(b, '0');
    return buf_printf(b, "[%llu,%llu,%zu]", (unsigned long long)s->l, (unsigned long long)s->c,
                      ntab_index(t, s->node));
}

static int put_ctrs(buf *b, const ntab *t, const crdt_ctr *a, size_t n) {
    int rc = buf_putc(b, '[');
    for (size_t i = 0; !rc && i < n; i++)
        rc = buf_printf(b, "%s[%zu,%llu]", i ? "," : "", ntab_index(t, a[i].node),
                        (unsigned long long)a[i].n);
    return rc ? rc : buf_putc(b, ']');
}

static int put_fields(buf *b, const ntab *t, const crdt_node *m);

static int put_entry(buf *b, const ntab *t, const crdt_node *n) {
    int rc = buf_printf(b, "[\"%c\",", n->kind);
    if (!rc) rc = put_stamp(b, t, &n->t);
    if (!rc) rc = buf_putc(b, ',');
    if (!rc) rc = put_stamp(b, t, &n->d);
    if (!rc) rc = buf_putc(b, ',');
    if (rc) return rc;
    switch (n->kind) {
    case 'c':
        rc = put_ctrs(b, t, n->p, n->np);
        if (!rc) rc = buf_putc(b, ',');
        if (!rc) rc = put_ctrs(b, t, n->n, n->nn);
        break;
    case 'r':
        rc = put_stamp(b, t, &n->rs);
        if (!rc) rc = buf_putc(b, ',');
        if (!rc) rc = n->rval ? buf_put(b, n->rval, n->rlen) : buf_puts(b, "null");
        break;
    case 's':
        rc = put_ctrs(b, t, n->vv, n->nvv);
        if (!rc) rc = buf_puts(b, ",[");
        for (size_t i = 0; !rc && i < n->nel; i++) {
            rc = buf_puts(b, i ? ",[" : "[");
            if (!rc) rc = buf_put(b, n->el[i].val, n->el[i].len);
            if (!rc) rc = buf_putc(b, ',');
            if (!rc) rc = put_ctrs(b, t, n->el[i].dots, n->el[i].ndots);
            if (!rc) rc = buf_putc(b, ']');
        }
        if (!rc) rc = buf_putc(b, ']');
        break;
    default:
        rc = put_fields(b, t, n);
        break;
    }
    return rc ? rc : buf_putc(b, ']');
}

static int put_fields(buf *b, const ntab *t, const crdt_node *m) {
    int rc = buf_putc(b, '{');
    for (size_t i = 0; !rc && i < m->nf; i++) {
        if (i) rc = buf_putc(b, ',');
        if (!rc) rc = json_put_str(b, m->f[i].key, m->f[i].klen);
        if (!rc) rc = buf_putc(b, ':');
        if (!rc) rc = put_entry(b, t, m->f[i].node);
    }
    return rc ? rc : buf_putc(b, '}');
}

int crdt_state_encode(const crdt_state *s, buf *out) {
    ntab t = {0};
    int rc = ntab_collect(&t, &s->root);
    if (!rc && t.n > 1) {
        qsort(t.v, t.n, sizeof *t.v, str_cmp_p);
        size_t k = 1;
        for (size_t i = 1; i < t.n; i++)
            if (strcmp(t.v[i], t.v[k - 1]) != 0) t.v[k++] = t.v[i];
        t.n = k;
    }
    if (!rc) rc = buf_printf(out, "{\"v\":%d,\"n\":[", CRDT_FORMAT);
    for (size_t i = 0; !rc && i < t.n; i++) {
        if (i) rc = buf_putc(out, ',');
        if (!rc) rc = json_put_cstr(out, t.v[i]);
    }
    if (!rc) rc = buf_puts(out, "],\"m\":");
    if (!rc) rc = put_fields(out, &t, &s->root);
    if (!rc) rc = buf_putc(out, '}');
    free(t.v);
    return rc;
}

/* ---- rendering ------------------------------------------------------------------------------ */

static bool visible(const crdt_node *n) { return crdt_stamp_cmp(&n->t, &n->d) > 0; }

static int put_i128(buf *b, __int128 v) {
    char tmp[48];
    size_t k = sizeof tmp;
    bool neg = v < 0;
    unsigned __int128 u = neg ? (unsigned __int128)(-(v + 1)) + 1 : (unsigned __int128)v;
    do {
        tmp[--k] = (char)('0' + (int)(u % 10));
        u /= 10;
    } while (u);
    if (neg) tmp[--k] = '-';
    return buf_put(b, tmp + k, sizeof tmp - k);
}

static __int128 counter_value(const crdt_node *n) {
    __int128 v = 0;
    for (size_t i = 0; i < n->np; i++) v += n->p[i].n;
    for (size_t i = 0; i < n->nn; i++) v -= n->n[i].n;
    return v;
}

/* The order of a rendered set: null, false, true, numbers (by value), strings, arrays,
 * objects (by canonical bytes); ties by canonical bytes, so the order is total. */
static int val_rank(const char *v) {
    switch (v[0]) {
    case 'n': return 0;
    case 'f': return 1;
    case 't': return 2;
    case '"': return 4;
    case '[': return 5;
    case '{': return 6;
    default:  return 3;
    }
}

static int elem_render_cmp(const void *a, const void *b) {
    const crdt_elem *x = *(const crdt_elem *const *)a, *y = *(const crdt_elem *const *)b;
    int rx = val_rank(x->val), ry = val_rank(y->val);
    if (rx != ry) return rx < ry ? -1 : 1;
    if (rx == 3) {
        double dx = strtod(x->val, NULL), dy = strtod(y->val, NULL);
        if (dx != dy) return dx < dy ? -1 : 1;
    }
    return key_cmp(x->val, x->len, y->val, y->len);
}

static int render_fields(buf *b, const crdt_node *m, bool *first);

static int render_node(buf *b, const crdt_node *n) {
    switch (n->kind) {
    case 'c':
        return put_i128(b, counter_value(n));
    case 'r':
        return n->rval ? buf_put(b, n->rval, n->rlen) : buf_puts(b, "null");
    case 's': {
        const crdt_elem **ord = n->nel ? malloc(n->nel * sizeof *ord) : NULL;
        if (n->nel && !ord) return MIMEO_ENOMEM;
        for (size_t i = 0; i < n->nel; i++) ord[i] = &n->el[i];
        if (n->nel > 1) qsort(ord, n->nel, sizeof *ord, elem_render_cmp);
        int rc = buf_putc(b, '[');
        for (size_t i = 0; !rc && i < n->nel; i++) {
            if (i) rc = buf_putc(b, ',');
            if (!rc) rc = buf_put(b, ord[i]->val, ord[i]->len);
        }
        free(ord);
        return rc ? rc : buf_putc(b, ']');
    }
    default: {
        bool first = true;
        int rc = buf_putc(b, '{');
        if (!rc) rc = render_fields(b, n, &first);
        return rc ? rc : buf_putc(b, '}');
    }
    }
}

static int render_fields(buf *b, const crdt_node *m, bool *first) {
    int rc = 0;
    for (size_t i = 0; !rc && i < m->nf; i++) {
        const crdt_node *n = m->f[i].node;
        if (!visible(n)) continue;
        if (!*first) rc = buf_putc(b, ',');
        *first = false;
        if (!rc) rc = json_put_str(b, m->f[i].key, m->f[i].klen);
        if (!rc) rc = buf_putc(b, ':');
        if (!rc) rc = render_node(b, n);
    }
    return rc;
}

int crdt_render(const crdt_state *s, buf *out) {
    return render_node(out, &s->root);
}

int crdt_body_write(const crdt_state *s, buf *out) {
    bool first = true;
    int rc = buf_putc(out, '{');
    if (!rc) rc = render_fields(out, &s->root, &first);
    if (!rc && !first) rc = buf_putc(out, ',');
    if (!rc) rc = buf_puts(out, "\"" CRDT_MEMBER "\":");
    if (!rc) rc = crdt_state_encode(s, out);
    return rc ? rc : buf_putc(out, '}');
}

/* ---- decoding ------------------------------------------------------------------------------- */

typedef struct dec {
    const jval *nodes; /* the "n" array */
    mimeo_err  *err;
} dec;

static bool get_u64(const jval *v, uint64_t *out) {
    int64_t x;
    if (!jval_as_i64(v, &x) || x < 0) return false;
    *out = (uint64_t)x;
    return true;
}

static int dec_node_id(dec *d, const jval *v, char out[CRDT_NODE_MAX + 1]) {
    uint64_t i;
    if (!get_u64(v, &i) || i >= d->nodes->count) return fail(d->err, "bad node index in state");
    snprintf(out, CRDT_NODE_MAX + 1, "%s", d->nodes->items[i]->str);
    return 0;
}

static int dec_stamp(dec *d, const jval *v, crdt_stamp *s) {
    memset(s, 0, sizeof *s);
    uint64_t z;
    if (v && v->type == JV_NUMBER && get_u64(v, &z) && z == 0) return 0;
    if (!v || v->type != JV_ARRAY || v->count != 3 || !get_u64(v->items[0], &s->l) ||
        !get_u64(v->items[1], &s->c))
        return fail(d->err, "bad stamp in state");
    return dec_node_id(d, v->items[2], s->node);
}

static int dec_ctrs(dec *d, const jval *v, crdt_ctr **a, size_t *n, bool dots) {
    if (!v || v->type != JV_ARRAY) return fail(d->err, "bad counter list in state");
    for (size_t i = 0; i < v->count; i++) {
        const jval *e = v->items[i];
        crdt_ctr c;
        memset(&c, 0, sizeof c);
        if (!e || e->type != JV_ARRAY || e->count != 2 || !get_u64(e->items[1], &c.n) ||
            c.n == 0 || c.n > INT64_MAX)
            return fail(d->err, "bad counter entry in state");
        int rc = dec_node_id(d, e->items[0], c.node);
        if (rc) return rc;
        if (dots) {
            /* a dot list is a set of (node, n) pairs, kept sorted */
            if (dot_in(*a, *n, &c)) continue;
            crdt_ctr *g = realloc(*a, (*n + 1) * sizeof *g);
            if (!g) return MIMEO_ENOMEM;
            size_t at = *n;
            while (at > 0 && dot_cmp(&g[at - 1], &c) > 0) at--;
            memmove(g + at + 1, g + at, (*n - at) * sizeof *g);
            g[at] = c;
            *a = g;
            (*n)++;
            continue;
        }
        bool found;
        size_t at = ctr_pos(*a, *n, c.node, &found);
        if (found && (*a)[at].n >= c.n) continue;
        if ((rc = ctr_set(a, n, c.node, c.n))) return rc;
    }
    return 0;
}

static int dec_fields(dec *d, const jval *v, crdt_node *m, bool root);

static int dec_entry(dec *d, const jval *v, crdt_node *n) {
    if (!v || v->type != JV_ARRAY || v->count < 4 || !v->items[0] ||
        v->items[0]->type != JV_STRING || v->items[0]->len != 1)
        return fail(d->err, "bad field entry in state");
    char k = v->items[0]->str[0];
    size_t want = k == 'm' ? 4 : 5;
    if ((k != 'c' && k != 'r' && k != 's' && k != 'm') || v->count != want)
        return fail(d->err, "bad field entry in state");
    n->kind = k;
    int rc = dec_stamp(d, v->items[1], &n->t);
    if (!rc) rc = dec_stamp(d, v->items[2], &n->d);
    if (rc) return rc;
    switch (k) {
    case 'c':
        rc = dec_ctrs(d, v->items[3], &n->p, &n->np, false);
        return rc ? rc : dec_ctrs(d, v->items[4], &n->n, &n->nn, false);
    case 'r':
        if ((rc = dec_stamp(d, v->items[3], &n->rs))) return rc;
        return canon_dup(v->items[4], &n->rval, &n->rlen);
    case 's': {
        if ((rc = dec_ctrs(d, v->items[3], &n->vv, &n->nvv, false))) return rc;
        const jval *els = v->items[4];
        if (!els || els->type != JV_ARRAY) return fail(d->err, "bad set in state");
        for (size_t i = 0; i < els->count; i++) {
            const jval *e = els->items[i];
            if (!e || e->type != JV_ARRAY || e->count != 2)
                return fail(d->err, "bad set element in state");
            crdt_elem el = {0};
            rc = canon_dup(e->items[0], &el.val, &el.len);
            if (!rc) rc = dec_ctrs(d, e->items[1], &el.dots, &el.ndots, true);
            if (!rc && el.ndots == 0) rc = fail(d->err, "set element without dots in state");
            /* A dot beyond the version vector would make the join forget removals. */
            for (size_t j = 0; !rc && j < el.ndots; j++)
                if (el.dots[j].n > ctr_get(n->vv, n->nvv, el.dots[j].node))
                    rc = fail(d->err, "set dot beyond its version vector in state");
            bool found = false;
            size_t at = rc ? 0 : elem_pos(n, el.val, el.len, &found);
            if (!rc && found) rc = fail(d->err, "duplicate set element in state");
            if (!rc) {
                crdt_elem *g = realloc(n->el, (n->nel + 1) * sizeof *g);
                if (!g) rc = MIMEO_ENOMEM;
                else {
                    n->el = g;
                    memmove(g + at + 1, g + at, (n->nel - at) * sizeof *g);
                    g[at] = el;
                    n->nel++;
                }
            }
            if (rc) {
                free(el.val);
                free(el.dots);
                return rc;
            }
        }
        return 0;
    }
    default:
        return dec_fields(d, v->items[3], n, false);
    }
}

static int dec_fields(dec *d, const jval *v, crdt_node *m, bool root) {
    if (!v || v->type != JV_OBJECT) return fail(d->err, "bad map in state");
    for (size_t i = 0; i < v->count; i++) {
        const char *k = v->keys[i];
        size_t kl = v->key_lens[i];
        /* "" is an ordinary name at any depth (docs/crdt.md): only the top level reserves
         * `_` names and the member itself. */
        if (root && ((kl && k[0] == '_') || (kl == strlen(CRDT_MEMBER) &&
                                             memcmp(k, CRDT_MEMBER, kl) == 0)))
            return fail(d->err, "bad field name in state");
        crdt_node *n = map_add(m, k, kl, 'm');
        if (!n) return MIMEO_ENOMEM; /* keys are unique: the parser refuses duplicates */
        int rc = dec_entry(d, v->items[i], n);
        if (rc) return rc;
    }
    return 0;
}

int crdt_state_decode(crdt_state *out, const jval *v, mimeo_err *err) {
    crdt_state_destroy(out);
    dec d = {NULL, err};
    const jval *ver = jval_get(v, "v"), *nodes = jval_get(v, "n"), *m = jval_get(v, "m");
    int64_t fmt;
    if (!v || v->type != JV_OBJECT || v->count != 3 || !ver || !jval_as_i64(ver, &fmt) ||
        !nodes || nodes->type != JV_ARRAY || !m)
        return fail(err, "the " CRDT_MEMBER " member is not a CRDT state");
    if (fmt != CRDT_FORMAT) return fail(err, "unknown CRDT state format %lld", (long long)fmt);
    for (size_t i = 0; i < nodes->count; i++) {
        const jval *s = nodes->items[i];
        if (!s || s->type != JV_STRING || !crdt_node_valid(s->str, s->len))
            return fail(err, "bad node id in state");
        for (size_t j = 0; j < i; j++)
            if (strcmp(nodes->items[j]->str, s->str) == 0) return fail(err, "duplicate node id in state");
    }
    d.nodes = nodes;
    int rc = dec_fields(&d, m, &out->root, true);
    if (rc) crdt_state_destroy(out);
    return rc;
}

/* ---- plain bodies --------------------------------------------------------------------------- */

static bool is_member_name(const char *k, size_t kl) {
    return kl == strlen(CRDT_MEMBER) && memcmp(k, CRDT_MEMBER, kl) == 0;
}

static const jval *obj_get(const jval *o, const char *k, size_t kl) {
    if (!o || o->type != JV_OBJECT) return NULL;
    for (size_t i = 0; i < o->count; i++)
        if (o->key_lens[i] == kl && memcmp(o->keys[i], k, kl) == 0) return o->items[i];
    return NULL;
}

/* Reads plain values p (an object, or NULL when the client dropped the whole map) against
 * map m as implicit assigns and deletes of registers stamped s. */
static int reconcile(crdt_node *m, const jval *p, const crdt_stamp *s, bool root, bool *any) {
    int rc = 0;
    for (size_t i = 0; p && !rc && i < p->count; i++) {
        const char *k = p->keys[i];
        size_t kl = p->key_lens[i];
        /* A member named "" is a register like any other: skipping it would make a body
         * that has one disagree with its own rendering, and the hook would "merge" it away. */
        if (root && ((kl && k[0] == '_') || is_member_name(k, kl))) continue;
        crdt_node *f = map_get(m, k, kl);
        if (f && f->kind == 'm') {
            if (p->items[i] && p->items[i]->type == JV_OBJECT) {
                bool sub = false;
                rc = reconcile(f, p->items[i], s, false, &sub);
                if (sub) {
                    stamp_max(&f->t, s);
                    *any = true;
                }
            }
            continue;
        }
        if (f && f->kind != 'r') continue; /* counters and sets change only by ops */
        char *text;
        size_t tl;
        if ((rc = canon_dup(p->items[i], &text, &tl))) break;
        if (f && visible(f) && f->rval && key_cmp(f->rval, f->rlen, text, tl) == 0) {
            free(text);
            continue;
        }
        if (!f && !(f = map_add(m, k, kl, 'r'))) {
            free(text);
            rc = MIMEO_ENOMEM;
            break;
        }
        free(f->rval);
        f->rval = text;
        f->rlen = tl;
        f->rs = *s;
        stamp_max(&f->t, s);
        *any = true;
    }
    for (size_t i = 0; !rc && i < m->nf; i++) {
        crdt_node *f = m->f[i].node;
        if (!visible(f) || obj_get(p, m->f[i].key, m->f[i].klen)) continue;
        if (f->kind == 'r') {
            stamp_max(&f->d, s);
            *any = true;
        } else if (f->kind == 'm') {
            rc = reconcile(f, NULL, s, false, any);
        }
    }
    return rc;
}

int crdt_body_read(const jval *body, crdt_state *out, bool *edited, mimeo_err *err) {
    if (edited) *edited = false;
    crdt_state_destroy(out);
    if (!body || body->type != JV_OBJECT) return fail(err, "a document must be a JSON object");
    const jval *st = jval_get(body, CRDT_MEMBER);
    int rc = st ? crdt_state_decode(out, st, err) : 0;
    if (rc) return rc;
    crdt_stamp s;
    crdt_state_max_stamp(out, &s);
    s.c++;
    snprintf(s.node, sizeof s.node, "%s", CRDT_PLAIN_NODE);
    bool any = false;
    rc = reconcile(&out->root, body, &s, true, &any);
    if (rc) {
        crdt_state_destroy(out);
        return rc;
    }
    if (edited) *edited = any;
    return 0;
}

/* ---- operations ----------------------------------------------------------------------------- */

void crdt_ops_destroy(crdt_ops *ops) {
    for (size_t i = 0; i < ops->count; i++) {
        crdt_op *o = &ops->ops[i];
        for (size_t j = 0; j < o->depth; j++) free(o->path[j]);
        free(o->path);
        free(o->path_lens);
        free(o->val);
    }
    free(ops->ops);
    ops->ops = NULL;
    ops->count = 0;
}

static int parse_op(const jval *v, size_t idx, crdt_op *o, mimeo_err *err) {
    if (!v || v->type != JV_OBJECT) return fail(err, "op %zu: an op must be an object", idx);
    const jval *name = jval_get(v, "op"), *path = jval_get(v, "path"), *val = jval_get(v, "value");
    for (size_t i = 0; i < v->count; i++) {
        const char *k = v->keys[i];
        if (strcmp(k, "op") && strcmp(k, "path") && strcmp(k, "value"))
            return fail(err, "op %zu: unknown member \"%.40s\"", idx, k);
    }
    if (!name || name->type != JV_STRING) return fail(err, "op %zu: \"op\" must be a string", idx);
    static const struct { const char *name; crdt_op_kind kind; } names[] = {
        {"increment", CRDT_OP_INCREMENT}, {"assign", CRDT_OP_ASSIGN}, {"add", CRDT_OP_ADD},
        {"remove", CRDT_OP_REMOVE}, {"delete", CRDT_OP_DELETE},
    };
    size_t ni = 0;
    while (ni < sizeof names / sizeof names[0] && strcmp(names[ni].name, name->str)) ni++;
    if (ni == sizeof names / sizeof names[0])
        return fail(err, "op %zu: unknown op \"%.40s\"", idx, name->str);
    o->kind = names[ni].kind;
    if (!path || path->type != JV_ARRAY || path->count == 0 || path->count > CRDT_PATH_MAX)
        return fail(err, "op %zu: \"path\" must be an array of 1 to %d keys", idx, CRDT_PATH_MAX);
    for (size_t i = 0; i < path->count; i++) {
        const jval *k = path->items[i];
        if (!k || k->type != JV_STRING)
            return fail(err, "op %zu: path keys must be strings", idx);
    }
    const jval *k0 = path->items[0];
    if ((k0->len && k0->str[0] == '_') || is_member_name(k0->str, k0->len))
        return fail(err, "op %zu: a top-level field may not start with '_' nor be " CRDT_MEMBER,
                    idx);
    if (o->kind == CRDT_OP_DELETE) {
        if (val) return fail(err, "op %zu: delete takes no value", idx);
    } else if (!val) {
        return fail(err, "op %zu: \"value\" is missing", idx);
    }
    if (o->kind == CRDT_OP_INCREMENT &&
        (!jval_as_i64(val, &o->inc) || o->inc == INT64_MIN))
        return fail(err, "op %zu: increment takes an integer value", idx);
    o->path = calloc(path->count, sizeof *o->path);
    o->path_lens = calloc(path->count, sizeof *o->path_lens);
    if (!o->path || !o->path_lens) return MIMEO_ENOMEM;
    for (size_t i = 0; i < path->count; i++) {
        o->path[i] = mem_dup(path->items[i]->str, path->items[i]->len);
        if (!o->path[i]) return MIMEO_ENOMEM;
        o->path_lens[i] = path->items[i]->len;
        o->depth++;
    }
    if (o->kind == CRDT_OP_ASSIGN || o->kind == CRDT_OP_ADD || o->kind == CRDT_OP_REMOVE)
        return canon_dup(val, &o->val, &o->vlen);
    return 0;
}

int crdt_ops_parse(const char *json, size_t len, const json_limits *limits, crdt_ops *out,
                   mimeo_err *err) {
    memset(out, 0, sizeof *out);
    jval *root = NULL;
    int rc = json_tree_parse(json, len, limits, &root, err);
    if (rc) return rc;
    const jval *list = root;
    if (root->type == JV_OBJECT) {
        list = jval_get(root, "ops");
        for (size_t i = 0; !rc && i < root->count; i++)
            if (strcmp(root->keys[i], "ops"))
                rc = fail(err, "unknown member \"%.40s\" (expected {\"ops\":[…]})", root->keys[i]);
    }
    if (!rc && (!list || list->type != JV_ARRAY))
        rc = fail(err, "the body must be {\"ops\":[…]}");
    if (!rc && list->count) {
        out->ops = calloc(list->count, sizeof *out->ops);
        if (!out->ops) rc = MIMEO_ENOMEM;
    }
    for (size_t i = 0; !rc && i < list->count; i++) {
        out->count++;
        rc = parse_op(list->items[i], i, &out->ops[i], err);
    }
    if (rc == MIMEO_ENOMEM && err) {
        err->code = rc;
        snprintf(err->error, sizeof err->error, "error");
        snprintf(err->reason, sizeof err->reason, "out of memory");
    }
    if (rc) crdt_ops_destroy(out);
    jval_free(root);
    return rc;
}

static const char *kind_name(char k) {
    switch (k) {
    case 'c': return "counter";
    case 'r': return "register";
    case 's': return "set";
    default:  return "map";
    }
}

static int add_capped(uint64_t *into, unsigned __int128 v) {
    if (v > (unsigned __int128)(INT64_MAX - *into)) return MIMEO_EINVAL;
    *into += (uint64_t)v;
    return 0;
}

static int ctr_add(crdt_ctr **a, size_t *n, const char *node, unsigned __int128 v) {
    if (v == 0) return 0;
    uint64_t cur = ctr_get(*a, *n, node);
    if (add_capped(&cur, v)) return MIMEO_EINVAL;
    return ctr_set(a, n, node, cur);
}

/* An observed reset: every field below stops showing at stamp s; a counter is brought back
 * to zero by counting its value against this node, so increments it has not seen survive. */
static int node_delete(crdt_node *n, const crdt_stamp *s, const char *node) {
    stamp_max(&n->d, s);
    switch (n->kind) {
    case 'c': {
        __int128 v = counter_value(n);
        if (v > 0) return ctr_add(&n->n, &n->nn, node, (unsigned __int128)v);
        if (v < 0) return ctr_add(&n->p, &n->np, node, (unsigned __int128)(-v));
        return 0;
    }
    case 's':
        while (n->nel) elem_remove(n, n->nel - 1);
        return 0;
    case 'm':
        for (size_t i = 0; i < n->nf; i++) {
            int rc = node_delete(n->f[i].node, s, node);
            if (rc) return rc;
        }
        return 0;
    default:
        return 0;
    }
}

static int apply_one(crdt_node *root, const crdt_op *op, size_t idx, const crdt_stamp *s,
                     const char *node, mimeo_err *err) {
    crdt_node *anc[CRDT_PATH_MAX];
    size_t na = 0;
    crdt_node *m = root;
    bool del = op->kind == CRDT_OP_DELETE;
    for (size_t i = 0; i + 1 < op->depth; i++) {
        crdt_node *f = map_get(m, op->path[i], op->path_lens[i]);
        if (!f) {
            if (del) return 0; /* nothing there to delete */
            if (!(f = map_add(m, op->path[i], op->path_lens[i], 'm'))) return MIMEO_ENOMEM;
        } else if (f->kind != 'm') {
            return fail(err, "op %zu: \"%.40s\" is a %s, not a map", idx, op->path[i],
                        kind_name(f->kind));
        }
        anc[na++] = f;
        m = f;
    }
    const char *key = op->path[op->depth - 1];
    size_t kl = op->path_lens[op->depth - 1];
    char need = op->kind == CRDT_OP_INCREMENT ? 'c' : op->kind == CRDT_OP_ASSIGN ? 'r'
              : op->kind == CRDT_OP_DELETE ? 0 : 's';
    crdt_node *f = map_get(m, key, kl);
    if (!f) {
        if (del) return 0;
        if (!(f = map_add(m, key, kl, need))) return MIMEO_ENOMEM;
    } else if (!del && f->kind != need) {
        return fail(err, "op %zu: \"%.40s\" is a %s, not a %s", idx, key, kind_name(f->kind),
                    kind_name(need));
    }
    int rc = 0;
    switch (op->kind) {
    case CRDT_OP_INCREMENT:
        rc = op->inc >= 0 ? ctr_add(&f->p, &f->np, node, (unsigned __int128)op->inc)
                          : ctr_add(&f->n, &f->nn, node, (unsigned __int128)(-op->inc));
        if (rc == MIMEO_EINVAL) return fail(err, "op %zu: counter overflow", idx);
        break;
    case CRDT_OP_ASSIGN: {
        char *v = mem_dup(op->val, op->vlen);
        if (!v) return MIMEO_ENOMEM;
        free(f->rval);
        f->rval = v;
        f->rlen = op->vlen;
        f->rs = *s;
        break;
    }
    case CRDT_OP_ADD: {
        uint64_t k = ctr_get(f->vv, f->nvv, node) + 1;
        if ((rc = ctr_set(&f->vv, &f->nvv, node, k))) return rc;
        crdt_ctr dot;
        memset(&dot, 0, sizeof dot);
        snprintf(dot.node, sizeof dot.node, "%s", node);
        dot.n = k;
        bool found;
        size_t at = elem_pos(f, op->val, op->vlen, &found);
        crdt_ctr *dots = malloc(sizeof *dots);
        if (!dots) return MIMEO_ENOMEM;
        dots[0] = dot;
        if (found) {
            /* The new dot replaces the observed ones: a later remove of what this replica
             * saw must not leave the element alive by an old dot. */
            free(f->el[at].dots);
            f->el[at].dots = dots;
            f->el[at].ndots = 1;
        } else {
            char *v = mem_dup(op->val, op->vlen);
            crdt_elem *g = v ? realloc(f->el, (f->nel + 1) * sizeof *g) : NULL;
            if (!g) {
                free(v);
                free(dots);
                return MIMEO_ENOMEM;
            }
            f->el = g;
            memmove(g + at + 1, g + at, (f->nel - at) * sizeof *g);
            g[at] = (crdt_elem){v, op->vlen, dots, 1};
            f->nel++;
        }
        break;
    }
    case CRDT_OP_REMOVE: {
        bool found;
        size_t at = elem_pos(f, op->val, op->vlen, &found);
        if (found) elem_remove(f, at);
        break;
    }
    case CRDT_OP_DELETE:
        rc = node_delete(f, s, node);
        if (rc == MIMEO_EINVAL) return fail(err, "op %zu: counter overflow", idx);
        return rc;
    }
    if (rc) return rc;
    stamp_max(&f->t, s);
    for (size_t i = 0; i < na; i++) stamp_max(&anc[i]->t, s);
    return 0;
}

int crdt_apply(crdt_state *s, const crdt_ops *ops, const char *node, crdt_hlc *h,
               uint64_t now_ms, mimeo_err *err) {
    if (!crdt_node_valid(node, strlen(node))) return fail(err, "bad node id");
    crdt_state work;
    crdt_state_init(&work);
    int rc = crdt_state_copy(&work, s);
    if (rc) return rc;
    crdt_stamp seen;
    crdt_state_max_stamp(&work, &seen);
    for (size_t i = 0; !rc && i < ops->count; i++) {
        crdt_stamp st;
        crdt_hlc_next(h, now_ms, &seen, node, &st);
        seen = st;
        rc = apply_one(&work.root, &ops->ops[i], i, &st, node, err);
    }
    if (rc) {
        crdt_state_destroy(&work);
        return rc;
    }
    crdt_state_destroy(s);
    *s = work;
    return 0;
}
