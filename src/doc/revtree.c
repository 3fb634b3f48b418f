/* Revision trees as CouchDB keeps them: merging replicated paths, interactive children,
 * stemming, compaction, the winner and the on-disk form. Nodes live in one array in which
 * every parent precedes its children and (gen, hash) is unique, so a tree is a set of
 * revisions plus parent links. Trees are small: queries scan the array rather than keep child
 * lists, and only merge and stem build a temporary view. */
#include "revtree.h"

#include "mimeo.h"

#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define FLAG_MASK (REVTREE_DELETED | REVTREE_HAS_BODY)

/* ---- lifecycle ------------------------------------------------------------------------- */

void revtree_init(revtree *t) {
    t->nodes = NULL;
    t->count = t->alloc = 0;
}

void revtree_destroy(revtree *t) {
    free(t->nodes);
    revtree_init(t);
}

void revtree_clear(revtree *t) { t->count = 0; }

/* Room for `extra` more nodes. REVTREE_NONE is reserved, so a tree stays below it. */
static int tree_reserve(revtree *t, uint64_t extra) {
    uint64_t need = (uint64_t)t->count + extra;
    if (need >= REVTREE_NONE) return MIMEO_ENOMEM;
    if (need <= t->alloc) return 0;
    uint64_t want = t->alloc ? (uint64_t)t->alloc * 2 : 8;
    if (want < need) want = need;
    if (want >= REVTREE_NONE) want = REVTREE_NONE - 1;
    if (want > SIZE_MAX / sizeof(revtree_node)) return MIMEO_ENOMEM;
    revtree_node *p = realloc(t->nodes, (size_t)want * sizeof *p);
    if (!p) return MIMEO_ENOMEM;
    t->nodes = p;
    t->alloc = (uint32_t)want;
    return 0;
}

int revtree_copy(revtree *dst, const revtree *src) {
    if (dst == src) return 0;
    dst->count = 0;
    int rc = tree_reserve(dst, src->count);
    if (rc) return rc;
    if (src->count) memcpy(dst->nodes, src->nodes, (size_t)src->count * sizeof *src->nodes);
    dst->count = src->count;
    return 0;
}

/* ---- small helpers --------------------------------------------------------------------- */

/* Per byte: 1 if a lowercase hex digit, 2 if a verbatim hash may hold it (printable ASCII
 * but quotes and backslash, as rev_hash_check). A table, not a branch per byte: every write
 * checks its new hash and every stored one. */
static const unsigned char hash_class[256] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,2,0,2,2,2,2,0,2,2,2,2,2,2,2,2,3,3,3,3,3,3,3,3,3,3,2,2,2,2,2,2,
    2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,0,2,2,2,
    2,3,3,3,3,3,3,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
};

/* The form rev_hash_check produces: what a tree may hold, so that every tree encodes and
 * decodes back to itself. */
static bool hash_canonical(const char *s, size_t n) {
#ifdef __SSE2__
    /* the usual case, 32 lowercase hex digits, sixteen bytes a step: every write checks its
     * new hash and encodes it */
    if (s && n == 32) {
        const __m128i d0 = _mm_set1_epi8('0' - 1), d9 = _mm_set1_epi8('9' + 1);
        const __m128i la = _mm_set1_epi8('a' - 1), lf = _mm_set1_epi8('f' + 1);
        unsigned ok = 0xFFFF;
        for (int k = 0; k < 2; k++) {
            /* signed compares: a byte >= 0x80 is negative and fails both ranges */
            __m128i x = _mm_loadu_si128((const __m128i *)(s + 16 * k));
            __m128i dig = _mm_and_si128(_mm_cmpgt_epi8(x, d0), _mm_cmplt_epi8(x, d9));
            __m128i low = _mm_and_si128(_mm_cmpgt_epi8(x, la), _mm_cmplt_epi8(x, lf));
            ok &= (unsigned)_mm_movemask_epi8(_mm_or_si128(dig, low));
        }
        return ok == 0xFFFF;
    }
#endif
    if (!s || n == 0 || n > REV_HASH_MAX) return false;
    unsigned char need = n == 32 ? 1 : 2, all = need;
    for (size_t i = 0; i < n; i++) all &= hash_class[(unsigned char)s[i]];
    return all == need;
}

static bool node_is(const revtree_node *nd, uint64_t gen, const char *hash, size_t len) {
    return nd->gen == gen && nd->hash_len == len && memcmp(nd->hash, hash, len) == 0;
}

static void node_set(revtree_node *nd, uint64_t gen, uint32_t parent, const char *hash,
                     size_t len, uint8_t flags, uint64_t body) {
    nd->gen = gen;
    nd->parent = parent;
    nd->flags = flags & FLAG_MASK;
    nd->hash_len = (uint8_t)len;
    memcpy(nd->hash, hash, len);
    memset(nd->hash + len, 0, sizeof nd->hash - len);
    nd->body = (flags & REVTREE_HAS_BODY) ? body : 0;
}

static int hash_cmp(const revtree_node *a, const revtree_node *b) {
    size_t m = a->hash_len < b->hash_len ? a->hash_len : b->hash_len;
    int c = memcmp(a->hash, b->hash, m);
    if (c) return c;
    return (a->hash_len > b->hash_len) - (a->hash_len < b->hash_len);
}

/* §1.6: a live leaf beats a tombstone, then the higher generation, then the greater hash
 * compared bytewise (CouchDB compares the 16 binary bytes of hex ids, which orders the same
 * as their lowercase text). Positive when a ranks above b. */
static int win_cmp(const revtree_node *a, const revtree_node *b) {
    bool la = !(a->flags & REVTREE_DELETED), lb = !(b->flags & REVTREE_DELETED);
    if (la != lb) return la ? 1 : -1;
    if (a->gen != b->gen) return a->gen > b->gen ? 1 : -1;
    return hash_cmp(a, b);
}

typedef int (*idx_cmp_fn)(const revtree *t, uint32_t a, uint32_t b);

/* In-place heapsort of node indices, ascending by cmp: O(k log k), no allocation, and every
 * comparator here is a total order on distinct nodes so stability does not matter. */
static void sort_idx(const revtree *t, uint32_t *v, uint32_t n, idx_cmp_fn cmp) {
    if (n < 2) return;
    for (uint32_t start = n / 2; start-- > 0;) {
        uint32_t root = start;
        for (;;) {
            uint32_t c = 2 * root + 1;
            if (c >= n) break;
            if (c + 1 < n && cmp(t, v[c], v[c + 1]) < 0) c++;
            if (cmp(t, v[root], v[c]) >= 0) break;
            uint32_t tmp = v[root]; v[root] = v[c]; v[c] = tmp;
            root = c;
        }
    }
    for (uint32_t end = n - 1; end > 0; end--) {
        uint32_t tmp = v[0]; v[0] = v[end]; v[end] = tmp;
        uint32_t root = 0;
        for (;;) {
            uint32_t c = 2 * root + 1;
            if (c >= end) break;
            if (c + 1 < end && cmp(t, v[c], v[c + 1]) < 0) c++;
            if (cmp(t, v[root], v[c]) >= 0) break;
            tmp = v[root]; v[root] = v[c]; v[c] = tmp;
            root = c;
        }
    }
}

/* Best first: the winner order, reversed. */
static int best_first_cmp(const revtree *t, uint32_t a, uint32_t b) {
    return win_cmp(&t->nodes[b], &t->nodes[a]);
}

/* Generation, then position: sorting by it restores parent-before-child after a merge gave an
 * old root a parent (a child's generation is always its parent's plus one). */
static int gen_pos_cmp(const revtree *t, uint32_t a, uint32_t b) {
    const revtree_node *x = &t->nodes[a], *y = &t->nodes[b];
    if (x->gen != y->gen) return x->gen < y->gen ? -1 : 1;
    return (a > b) - (a < b);
}

static int gen_hash_cmp(const revtree *t, uint32_t a, uint32_t b) {
    const revtree_node *x = &t->nodes[a], *y = &t->nodes[b];
    if (x->gen != y->gen) return x->gen < y->gen ? -1 : 1;
    return hash_cmp(x, y);
}

/* "Has a child" bits for every node, on the stack for ordinary trees. NULL when a large tree
 * cannot get memory; callers then fall back to revtree_is_leaf's scan. */
#define CHILD_BITS_STACK 64
static uint64_t *child_bits(const revtree *t, uint64_t *stack) {
    size_t words = ((size_t)t->count + 63) / 64;
    uint64_t *bits = words <= CHILD_BITS_STACK ? stack : malloc(words * sizeof *bits);
    if (!bits) return NULL;
    memset(bits, 0, words * sizeof *bits);
    for (uint32_t i = 0; i < t->count; i++) {
        uint32_t p = t->nodes[i].parent;
        if (p != REVTREE_NONE) bits[p / 64] |= (uint64_t)1 << (p % 64);
    }
    return bits;
}

static bool leaf_in(const revtree *t, const uint64_t *bits, uint32_t i) {
    return bits ? !((bits[i / 64] >> (i % 64)) & 1) : revtree_is_leaf(t, i);
}

static void child_bits_free(uint64_t *bits, uint64_t *stack) {
    if (bits != stack) free(bits);
}

/* ---- queries --------------------------------------------------------------------------- */

int64_t revtree_find(const revtree *t, uint64_t gen, const char *hash, size_t hash_len) {
    if (!hash || hash_len == 0 || hash_len > REV_HASH_MAX) return -1;
    for (uint32_t i = 0; i < t->count; i++)
        if (node_is(&t->nodes[i], gen, hash, hash_len)) return i;
    return -1;
}

bool revtree_is_leaf(const revtree *t, uint32_t i) {
    if (i >= t->count) return false;
    /* Children always sit after their parent. */
    for (uint32_t j = i + 1; j < t->count; j++)
        if (t->nodes[j].parent == i) return false;
    return true;
}

int64_t revtree_winner(const revtree *t) {
    uint64_t stack[CHILD_BITS_STACK];
    uint64_t *bits = child_bits(t, stack);
    int64_t best = -1;
    for (uint32_t i = 0; i < t->count; i++) {
        if (!leaf_in(t, bits, i)) continue;
        if (best < 0 || win_cmp(&t->nodes[i], &t->nodes[best]) > 0) best = i;
    }
    child_bits_free(bits, stack);
    return best;
}

bool revtree_all_deleted(const revtree *t) {
    uint64_t stack[CHILD_BITS_STACK];
    uint64_t *bits = child_bits(t, stack);
    bool all = true;
    for (uint32_t i = 0; i < t->count && all; i++)
        if (!(t->nodes[i].flags & REVTREE_DELETED) && leaf_in(t, bits, i)) all = false;
    child_bits_free(bits, stack);
    return all;
}

/* out doubles as the mark array (it has t->count slots), so listing leaves never allocates:
 * bit 0 = has a child, bit 1 = descends from `top`. Compaction writes slot k ≤ j only after
 * slot j has been read. */
static uint32_t leaves_from(const revtree *t, uint32_t top, bool all, uint32_t *out) {
    uint32_t n = t->count;
    if (!all && top >= n) return 0;
    for (uint32_t j = 0; j < n; j++) out[j] = 0;
    for (uint32_t j = 0; j < n; j++) {
        uint32_t p = t->nodes[j].parent;
        if (p != REVTREE_NONE) out[p] |= 1;
    }
    uint32_t from = 0;
    if (!all) {
        from = top;
        out[top] |= 2;
        for (uint32_t j = top + 1; j < n; j++) {
            uint32_t p = t->nodes[j].parent;
            if (p != REVTREE_NONE && (out[p] & 2)) out[j] |= 2;
        }
    }
    uint32_t k = 0;
    for (uint32_t j = from; j < n; j++) {
        uint32_t m = out[j];
        if (!(m & 1) && (all || (m & 2))) out[k++] = j;
    }
    sort_idx(t, out, k, best_first_cmp);
    return k;
}

uint32_t revtree_leaves(const revtree *t, uint32_t *out) {
    return leaves_from(t, 0, true, out);
}

uint32_t revtree_leaves_under(const revtree *t, uint32_t i, uint32_t *out) {
    return leaves_from(t, i, false, out);
}

uint32_t revtree_path(const revtree *t, uint32_t i, uint32_t *out) {
    uint32_t n = 0;
    /* Parents have lower indices, so the walk ends within t->count steps. */
    while (i < t->count && n < t->count) {
        out[n++] = i;
        i = t->nodes[i].parent;
    }
    return n;
}

/* ---- merge ----------------------------------------------------------------------------- */

/* Appends a node; the caller has reserved room. */
static uint32_t append(revtree *t, uint64_t gen, uint32_t parent, const char *hash, size_t len,
                       uint8_t flags, uint64_t body) {
    uint32_t i = t->count++;
    node_set(&t->nodes[i], gen, parent, hash, len, flags, body);
    return i;
}

/* Re-establishes parent-before-child by a stable sort on generation and applies the
 * permutation in place. perm and inv have t->count slots. *track is remapped. */
static void reorder(revtree *t, uint32_t *perm, uint32_t *inv, uint32_t *track) {
    uint32_t n = t->count;
    for (uint32_t i = 0; i < n; i++) perm[i] = i;
    sort_idx(t, perm, n, gen_pos_cmp);
    for (uint32_t i = 0; i < n; i++) inv[perm[i]] = i;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t p = t->nodes[i].parent;
        if (p != REVTREE_NONE) t->nodes[i].parent = inv[p];
    }
    if (*track != REVTREE_NONE) *track = inv[*track];
    /* inv[i] is where the node now at i belongs: swap it home until slot i holds its own. */
    for (uint32_t i = 0; i < n; i++) {
        while (inv[i] != i) {
            uint32_t j = inv[i];
            revtree_node tmp = t->nodes[i];
            t->nodes[i] = t->nodes[j];
            t->nodes[j] = tmp;
            inv[i] = inv[j];
            inv[j] = j;
        }
    }
}

/*
 * Merging is a set union: the tree gains every revision of the path, and every parent link
 * the path states. This is what CouchDB's couch_key_tree:merge computes once its stemming
 * pass has repaired the duplicate keys that merging into the first overlapping root can
 * leave behind, and it is independent of the order in which paths arrive. Aligning by
 * generation (§1.4 step 2) is implicit: a path revision matches a node only with the same
 * (gen, hash), and walking up from the newest match is the "descend to the path's first
 * generation" of the reference algorithm. A path that reaches past a root's generation
 * re-attaches the stemmed ancestors it carries, as CouchDB does.
 *
 * Let p_0 … p_m be the path oldest → newest and p_e the newest one already in the tree.
 *   p_{e+1} … p_m  are new: a chain hung under p_e (or a new root when e = -1);
 *   p_{e-1} … p_0  are walked up from p_e: where p_{k+1} already has a parent it must be
 *                  p_k; where p_{k+1} is a root, p_k becomes its parent (joining p_k's tree
 *                  when p_k exists elsewhere, else as a new node).
 * A path contradicting the stored ancestry (p_{k+1}'s parent is some other revision) only
 * happens with forged ids; the older part of the path is then ignored rather than creating a
 * second copy of a revision.
 */
int revtree_merge(revtree *t, const revtree_path_in *path, revtree_outcome *outcome,
                  uint32_t *leaf) {
    if (!path || path->count == 0 || !path->hashes || !path->hash_lens) return MIMEO_EINVAL;
    /* CouchDB stores generation 0 ("0-x" is a revision); the oldest may not go below it. */
    if (path->count - 1 > path->start) return MIMEO_EINVAL;
    for (uint32_t k = 0; k < path->count; k++)
        if (!hash_canonical(path->hashes[k], path->hash_lens[k])) return MIMEO_EBADREV;

    const uint32_t m = path->count - 1;
    const uint64_t base = path->start - m; /* generation of p_0 */
#define PHASH(k) (path->hashes[m - (k)])
#define PLEN(k)  (path->hash_lens[m - (k)])

    /* Everything that can fail is acquired before the tree is touched. */
    uint64_t cap = (uint64_t)t->count + path->count;
    int rc = tree_reserve(t, path->count);
    if (rc) return rc;
    if (cap > SIZE_MAX / (3 * sizeof(uint32_t))) return MIMEO_ENOMEM;
    uint32_t *idx = malloc((size_t)(path->count + 2 * cap) * sizeof *idx);
    if (!idx) return MIMEO_ENOMEM;
    uint32_t *perm = idx + path->count, *inv = perm + cap;

    /* One scan finds every path revision already present: only nodes whose generation lies
     * in the path's range can match, and each generation names one path revision. */
    for (uint32_t k = 0; k <= m; k++) idx[k] = REVTREE_NONE;
    for (uint32_t i = 0; i < t->count; i++) {
        const revtree_node *nd = &t->nodes[i];
        if (nd->gen < base || nd->gen > path->start) continue;
        uint32_t k = (uint32_t)(nd->gen - base);
        if (nd->hash_len == PLEN(k) && memcmp(nd->hash, PHASH(k), PLEN(k)) == 0) idx[k] = i;
    }
    int64_t e = m;
    while (e >= 0 && idx[e] == REVTREE_NONE) e--;

    bool was_empty = t->count == 0, changed = false, grew_leaf = false, unordered = false;
    uint8_t lflags = path->leaf_flags & FLAG_MASK;

    if (e < (int64_t)m) {
        uint32_t parent = REVTREE_NONE;
        if (e >= 0) {
            parent = idx[e];
            if (revtree_is_leaf(t, parent)) grew_leaf = true;
        }
        for (uint32_t k = (uint32_t)(e + 1); k <= m; k++) {
            bool top = k == m;
            parent = append(t, base + k, parent, PHASH(k), PLEN(k), top ? lflags : 0,
                            top ? path->leaf_body : 0);
            idx[k] = parent;
        }
        changed = true;
    } else {
        /* The newest revision is known: only a body it lacked is news (a stored body is never
         * replaced, so replaying a revision is a no-op). */
        revtree_node *nd = &t->nodes[idx[m]];
        if (!(nd->flags & REVTREE_HAS_BODY) && (lflags & REVTREE_HAS_BODY)) {
            nd->flags = lflags;
            nd->body = path->leaf_body;
            changed = true;
        }
    }

    if (e >= 1) {
        uint32_t cur = idx[e];
        for (int64_t k = e - 1; k >= 0; k--) {
            uint32_t q = t->nodes[cur].parent;
            if (q != REVTREE_NONE) {
                if (q != idx[k]) break; /* contradicts the stored ancestry */
                cur = q;
                continue;
            }
            /* cur is a root (stemmed, or learnt without ancestors): the path names its parent. */
            uint32_t p = idx[k];
            if (p != REVTREE_NONE) {
                if (revtree_is_leaf(t, p)) grew_leaf = true;
            } else {
                p = append(t, base + (uint64_t)k, REVTREE_NONE, PHASH(k), PLEN(k), 0, 0);
                idx[k] = p;
            }
            t->nodes[cur].parent = p;
            if (p > cur) unordered = true;
            changed = true;
            cur = p;
        }
    }

    uint32_t newest = idx[m];
    if (unordered) reorder(t, perm, inv, &newest);
    free(idx);
#undef PHASH
#undef PLEN

    if (leaf) *leaf = newest;
    if (outcome) {
        if (was_empty) *outcome = REVTREE_NEW_LEAF;
        else if (!changed) *outcome = REVTREE_INTERNAL_NODE;
        else if (grew_leaf) *outcome = REVTREE_NEW_LEAF;
        else *outcome = REVTREE_NEW_BRANCH;
    }
    return 0;
}

int revtree_add_child(revtree *t, uint32_t parent, const char *hash, size_t hash_len,
                      uint8_t flags, uint64_t body, uint32_t *child) {
    if (parent != REVTREE_NONE && parent >= t->count) return MIMEO_EINVAL;
    if (!hash_canonical(hash, hash_len)) return MIMEO_EBADREV;
    uint64_t gen = 1;
    if (parent != REVTREE_NONE) {
        if (t->nodes[parent].gen == UINT64_MAX) return MIMEO_EINVAL;
        gen = t->nodes[parent].gen + 1;
    }
    int64_t found = revtree_find(t, gen, hash, hash_len);
    if (found >= 0) {
        /* The same edit made twice (deterministic ids): keep what is stored, but adopt the
         * body if the revision was only known by id. */
        revtree_node *nd = &t->nodes[found];
        if (!(nd->flags & REVTREE_HAS_BODY) && (flags & REVTREE_HAS_BODY)) {
            nd->flags = flags & FLAG_MASK;
            nd->body = body;
        }
        if (child) *child = (uint32_t)found;
        return 0;
    }
    int rc = tree_reserve(t, 1);
    if (rc) return rc;
    uint32_t i = append(t, gen, parent, hash, hash_len, flags, body);
    if (child) *child = i;
    return 0;
}

/* ---- stemming and compaction ----------------------------------------------------------- */

/*
 * §1.5: every root-to-leaf path keeps its newest `limit` revisions. A node survives iff some
 * leaf below it is fewer than `limit` generations away — exactly the union of the cut paths,
 * which is what CouchDB's stem_tree and PouchDB's re-merge of cut paths both compute. Nodes
 * whose parent is cut become roots and keep their own (now higher) generation; leaves have
 * distance 0 and always survive. Array order is kept, so parents still precede children.
 */
int revtree_stem(revtree *t, uint32_t limit, revtree_drop_fn drop, void *ctx) {
    uint32_t n = t->count;
    if (n == 0) return 0;
    if (limit == 0) limit = 1; /* a tree cannot forget its leaves */
    if (limit >= n) return 0;
    uint32_t *dist = malloc((size_t)n * sizeof *dist);
    if (!dist) return MIMEO_ENOMEM;

    /* Distance to the nearest leaf below: children come after parents, so a backward pass
     * sees every child before its parent. */
    for (uint32_t i = 0; i < n; i++) dist[i] = REVTREE_NONE;
    bool any_cut = false;
    for (uint32_t i = n; i-- > 0;) {
        if (dist[i] == REVTREE_NONE) dist[i] = 0;
        if (dist[i] >= limit) any_cut = true;
        uint32_t p = t->nodes[i].parent;
        if (p != REVTREE_NONE && dist[i] + 1 < dist[p]) dist[p] = dist[i] + 1;
    }
    if (!any_cut) {
        free(dist);
        return 0;
    }

    /* dist becomes the old → new index map as the forward pass goes. */
    uint32_t w = 0;
    for (uint32_t i = 0; i < n; i++) {
        revtree_node nd = t->nodes[i];
        if (dist[i] >= limit) {
            if ((nd.flags & REVTREE_HAS_BODY) && drop) drop(ctx, nd.body);
            dist[i] = REVTREE_NONE;
            continue;
        }
        if (nd.parent != REVTREE_NONE) nd.parent = dist[nd.parent];
        dist[i] = w;
        t->nodes[w++] = nd;
    }
    t->count = w;
    free(dist);
    return 0;
}

void revtree_compact(revtree *t, revtree_drop_fn drop, void *ctx) {
    uint64_t stack[CHILD_BITS_STACK];
    uint64_t *bits = child_bits(t, stack);
    for (uint32_t i = 0; i < t->count; i++) {
        revtree_node *nd = &t->nodes[i];
        if (!(nd->flags & REVTREE_HAS_BODY) || leaf_in(t, bits, i)) continue;
        if (drop) drop(ctx, nd->body);
        nd->flags &= (uint8_t)~REVTREE_HAS_BODY;
        nd->body = 0;
    }
    child_bits_free(bits, stack);
}

/* ---- on-disk form ---------------------------------------------------------------------- */

/*
 * Encoded tree (all varints are unsigned LEB128, buf_put_varint):
 *
 *   field       size      meaning
 *   ----------  --------  ---------------------------------------------------------------
 *   format      1 byte    1
 *   count       varint    number of nodes N
 *   N records, in array order (so a parent always comes before its children):
 *     link      varint    0: a root, and `gen` follows; k ≥ 1: parent is record k-1 (< this
 *                         record), and gen = parent's gen + 1 (not stored)
 *     gen       varint    roots only; ≥ 0 (CouchDB accepts "0-x" revisions)
 *     flags     1 byte    REVTREE_DELETED (1) | REVTREE_HAS_BODY (2); other bits corrupt
 *     kind      1 byte    0: hash is 16 raw bytes, printed as 32 lowercase hex chars;
 *                         1..REV_HASH_MAX except 32: that many hash bytes follow verbatim
 *     hash      16 or kind bytes
 *     body      varint    only when flags has REVTREE_HAS_BODY: the caller's body reference
 *   nothing may follow the last record.
 *
 * Hex ids are the common case and halve in size; a 32-byte verbatim kind is refused so a
 * hash has one spelling on disk. A record takes at least 4 bytes, which bounds N by the input
 * length before anything is allocated.
 */
#define REVTREE_FORMAT 1
#define RECORD_MIN 4

/* Appends v as a little-endian base-128 varint at p; returns the end. */
static inline unsigned char *put_varint(unsigned char *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    *p++ = (unsigned char)v;
    return p;
}

/* Every write encodes the document's tree: one reservation for the worst case, then the
 * records are written in place rather than through an append call per field. */
int revtree_encode(const revtree *t, buf *out) {
    size_t start = out->len;
    size_t worst = 1 + 10;
    for (uint32_t i = 0; i < t->count; i++) worst += 10 + 10 + 1 + 1 + t->nodes[i].hash_len + 10;
    int rc = buf_reserve(out, worst);
    if (rc) return rc;
    unsigned char *o = (unsigned char *)out->data + start;
    *o++ = REVTREE_FORMAT;
    o = put_varint(o, t->count);
    for (uint32_t i = 0; i < t->count; i++) {
        const revtree_node *nd = &t->nodes[i];
        /* Refuse to write what decode would refuse to read. */
        if (!hash_canonical(nd->hash, nd->hash_len) || (nd->flags & ~FLAG_MASK)) goto fail;
        if (nd->parent == REVTREE_NONE) {
            *o++ = 0;
            o = put_varint(o, nd->gen);
        } else {
            if (nd->parent >= i || t->nodes[nd->parent].gen + 1 != nd->gen ||
                t->nodes[nd->parent].gen == UINT64_MAX)
                goto fail;
            o = put_varint(o, (uint64_t)nd->parent + 1);
        }
        *o++ = (unsigned char)nd->flags;
        if (nd->hash_len == 32) {
            *o++ = 0;
            /* checked hex above: '0'-'9' and 'a'-'f' are x & 15, plus 9 for the letters */
            for (int k = 0; k < 16; k++) {
                unsigned hi = (unsigned char)nd->hash[2 * k];
                unsigned lo = (unsigned char)nd->hash[2 * k + 1];
                o[k] = (unsigned char)(((hi & 15) + 9 * (hi >> 6)) << 4 |
                                       ((lo & 15) + 9 * (lo >> 6)));
            }
            o += 16;
        } else {
            *o++ = (unsigned char)nd->hash_len;
            memcpy(o, nd->hash, nd->hash_len);
            o += nd->hash_len;
        }
        if (nd->flags & REVTREE_HAS_BODY) o = put_varint(o, nd->body);
    }
    out->len = (size_t)(o - (unsigned char *)out->data);
    out->data[out->len] = 0;
    return 0;
fail:
    out->data[start] = 0;
    return MIMEO_EINVAL;
}

int revtree_decode(revtree *t, const void *data, size_t n) {
    const unsigned char *p = data, *end = p + n;
    uint64_t count;
    uint32_t *order = NULL;
    int rc = MIMEO_ECORRUPT;
    t->count = 0;
    if (!data || n < 2 || *p++ != REVTREE_FORMAT) goto fail;
    if (varint_get(&p, end, &count)) goto fail;
    if (count > (uint64_t)(end - p) / RECORD_MIN) goto fail;
    if ((rc = tree_reserve(t, count))) goto fail;
    rc = MIMEO_ECORRUPT;

    for (uint32_t i = 0; i < (uint32_t)count; i++) {
        revtree_node *nd = &t->nodes[i];
        uint64_t link, gen;
        uint32_t parent = REVTREE_NONE;
        if (varint_get(&p, end, &link)) goto fail;
        if (link == 0) {
            if (varint_get(&p, end, &gen)) goto fail;
        } else {
            if (link - 1 >= i) goto fail;
            parent = (uint32_t)(link - 1);
            if (t->nodes[parent].gen == UINT64_MAX) goto fail;
            gen = t->nodes[parent].gen + 1;
        }
        if (end - p < 2) goto fail;
        uint8_t flags = *p++, kind = *p++;
        if (flags & ~FLAG_MASK) goto fail;
        char hash[REV_HASH_MAX + 1];
        size_t len;
        if (kind == 0) {
            if (end - p < 16) goto fail;
            hex_encode(p, 16, hash);
            p += 16;
            len = 32;
        } else {
            if (kind > REV_HASH_MAX || kind == 32 || (size_t)(end - p) < kind) goto fail;
            memcpy(hash, p, kind);
            p += kind;
            len = kind;
            if (!hash_canonical(hash, len)) goto fail;
        }
        uint64_t body = 0;
        if ((flags & REVTREE_HAS_BODY) && varint_get(&p, end, &body)) goto fail;
        node_set(nd, gen, parent, hash, len, flags, body);
        t->count = i + 1;
    }
    if (p != end) goto fail;

    /* (gen, hash) must be unique: merge and find rely on it. */
    if (t->count > 1) {
        order = malloc((size_t)t->count * sizeof *order);
        if (!order) { rc = MIMEO_ENOMEM; goto fail; }
        for (uint32_t i = 0; i < t->count; i++) order[i] = i;
        sort_idx(t, order, t->count, gen_hash_cmp);
        for (uint32_t i = 1; i < t->count; i++)
            if (gen_hash_cmp(t, order[i - 1], order[i]) == 0) goto fail;
        free(order);
    }
    return 0;
fail:
    free(order);
    t->count = 0;
    return rc;
}
