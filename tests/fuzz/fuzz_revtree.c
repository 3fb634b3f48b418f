/* libFuzzer driver for src/doc: the on-disk tree decoder, revision and document id parsers,
 * and merge/stem fed with arbitrary paths. Every accepted tree must keep the invariants and
 * survive encode → decode → encode unchanged; anything else must be refused, never crash.
 * Build: clang -std=c11 -D_GNU_SOURCE -g -fsanitize=fuzzer,address,undefined -Iinclude -Isrc
 *        tests/fuzz/fuzz_revtree.c src/doc/rev.c src/doc/revtree.c src/common/buf.c -lnettle */
#include "doc/revtree.h"
#include "mimeo.h"

#include <stdlib.h>
#include <string.h>

static void tree_check(const revtree *t) {
    for (uint32_t i = 0; i < t->count; i++) {
        const revtree_node *nd = &t->nodes[i];
        if (nd->hash_len == 0 || nd->hash_len > REV_HASH_MAX) abort();   /* generation 0 is valid: CouchDB stores "0-x" */
        if (nd->parent != REVTREE_NONE &&
            (nd->parent >= i || t->nodes[nd->parent].gen + 1 != nd->gen))
            abort();
    }
}

static void roundtrip(const revtree *t) {
    buf a = BUF_INIT, b = BUF_INIT;
    revtree u;
    revtree_init(&u);
    if (revtree_encode(t, &a) != 0) abort();
    if (revtree_decode(&u, a.data, a.len) != 0) abort();
    if (revtree_encode(&u, &b) != 0) abort();
    if (a.len != b.len || memcmp(a.data, b.data, a.len) != 0) abort();
    buf_destroy(&a);
    buf_destroy(&b);
    revtree_destroy(&u);
}

static void drop_none(void *ctx, uint64_t body) { (void)ctx; (void)body; }

/* Reads the input as "start\nhash\nhash…" (newest first) and merges it as a path. */
static void merge_text(revtree *t, const uint8_t *data, size_t size) {
    enum { MAXP = 64 };
    const char *hashes[MAXP];
    size_t lens[MAXP];
    uint32_t n = 0;
    uint64_t start = 0;
    size_t i = 0;
    while (i < size && data[i] >= '0' && data[i] <= '9' && start < UINT64_MAX / 10)
        start = start * 10 + (uint64_t)(data[i++] - '0');
    while (i < size && n < MAXP) {
        if (data[i] == '\n') i++;
        size_t j = i;
        while (j < size && data[j] != '\n') j++;
        hashes[n] = (const char *)data + i;
        lens[n] = j - i;
        n++;
        i = j;
    }
    if (n == 0) return;
    revtree_path_in in = {start, hashes, lens, n, size & 3, size};
    revtree_outcome o;
    uint32_t leaf;
    int rc = revtree_merge(t, &in, &o, &leaf);
    if (rc == 0 && leaf >= t->count) abort();
    tree_check(t);
    revtree_stem(t, (uint32_t)(size % 7), drop_none, NULL);
    tree_check(t);
    if (t->count) {
        uint32_t *out = malloc(t->count * sizeof *out);
        if (!out) return;
        if (revtree_leaves(t, out) == 0) abort();
        if (revtree_winner(t) < 0) abort();
        revtree_leaves_under(t, 0, out);
        revtree_path(t, t->count - 1, out);
        free(out);
    }
    roundtrip(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    revtree t;
    revtree_init(&t);
    if (revtree_decode(&t, data, size) == 0) {
        tree_check(&t);
        roundtrip(&t);
        revtree_compact(&t, drop_none, NULL);
        roundtrip(&t);
    } else if (t.count != 0) {
        abort();
    }

    uint64_t gen;
    char hash[REV_HASH_MAX + 1];
    size_t len;
    if (rev_parse((const char *)data, size, size & 1, &gen, hash, &len) == 0) {
        if (len == 0 || len > REV_HASH_MAX || strlen(hash) != len) abort();
        buf b = BUF_INIT;
        uint64_t g2;
        char h2[REV_HASH_MAX + 1];
        size_t l2;
        if (rev_put(&b, gen, hash, len) != 0) abort();
        if (rev_parse(b.data, b.len, true, &g2, h2, &l2) != 0 || g2 != gen || l2 != len ||
            memcmp(h2, hash, len) != 0)
            abort();
        buf_destroy(&b);
    }
    const char *reason;
    if (docid_validate((const char *)data, size, &reason) != 0 && !reason) abort();

    /* Merge the input as a path into an empty tree, then into itself again. */
    revtree_clear(&t);
    merge_text(&t, data, size);
    merge_text(&t, data, size);
    revtree_destroy(&t);
    return 0;
}
