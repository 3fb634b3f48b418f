/* Revision trees, revision ids and document-id rules: CouchDB's model as pure code, no I/O.
 * A document's history is a forest of revisions; replication merges paths into it (set
 * union), interactive edits add children to leaves, stemming bounds its depth, and every
 * replica with the same tree picks the same winner. */
#ifndef MIMEO_REVTREE_H
#define MIMEO_REVTREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"

/* Longest revision hash accepted (the part after "N-"). CouchDB and PouchDB emit 32. */
#define REV_HASH_MAX 64
#define REVTREE_NONE UINT32_MAX

enum {
    REVTREE_DELETED  = 1, /* the revision is a tombstone */
    REVTREE_HAS_BODY = 2, /* the body is stored ("available"); else "missing" */
};

typedef struct revtree_node {
    uint64_t gen;                     /* generation N */
    uint32_t parent;                  /* index of the parent, REVTREE_NONE for a root */
    uint8_t  flags;                   /* REVTREE_DELETED | REVTREE_HAS_BODY */
    uint8_t  hash_len;
    char     hash[REV_HASH_MAX + 1];  /* NUL-terminated; 32-hex ids are lowercase */
    uint64_t body;                    /* caller's reference to the stored body, when HAS_BODY */
} revtree_node;

/* Nodes live in one array; indices are stable until the next merge/stem/decode.
 * Invariant: a parent's index is lower than its children's; no two nodes have the same
 * (gen, hash). */
typedef struct revtree {
    revtree_node *nodes;
    uint32_t      count;
    uint32_t      alloc;
} revtree;

void revtree_init(revtree *t);
void revtree_destroy(revtree *t);
void revtree_clear(revtree *t);
int  revtree_copy(revtree *dst, const revtree *src);

/* On-disk form (varints, see revtree.c for the byte layout). decode: 0 or MIMEO_ECORRUPT
 * for anything malformed (never asserts on input). */
int revtree_encode(const revtree *t, buf *out);
int revtree_decode(revtree *t, const void *p, size_t n);
/* encode appends to out; on failure (MIMEO_ENOMEM/ETOOLARGE from out, or MIMEO_EINVAL for a
 * tree whose nodes break the invariants) out is left as it was. decode replaces t's contents;
 * on failure t is left empty. decode(encode(t)) reproduces t node for node. */

/* ---- revision ids ---------------------------------------------------------------------- */
/* Parses "N-hash" (N ≥ 1 decimal without sign, hash 1..REV_HASH_MAX bytes of [0-9A-Za-z]
 * or other printable non-space ASCII). A 32-byte hash must be hex and is lowercased; a 32-byte
 * non-hex hash is refused. gen 0 is refused unless allow_zero. 0 or MIMEO_EBADREV. */
int rev_parse(const char *s, size_t n, bool allow_zero, uint64_t *gen, char *hash,
              size_t *hash_len);
/* Same rule for one element of _revisions.ids (no "N-" part). */
int rev_hash_check(const char *s, size_t n, char *hash, size_t *hash_len);
/* Details: hash receives REV_HASH_MAX + 1 bytes at most (NUL-terminated). A verbatim hash is
 * bytes 0x21..0x7e except '"', '\'' and '\\' (ids travel unescaped in ETags); it may contain
 * '-' since rev_parse splits at the first one. N may have leading zeros ("01-x" is gen 1, as
 * in CouchDB) and must fit in 64 bits. */
/* Appends "N-hash". */
int rev_put(buf *b, uint64_t gen, const char *hash, size_t hash_len);
/* The same into out (MIMEO_REV_MAX bytes, NUL-terminated), without allocating; returns its
 * length, or 0 (out empty) when it would not fit. */
size_t rev_format(char *out, uint64_t gen, const char *hash, size_t hash_len);

/* mimeo's deterministic new revision hash: 32 lowercase hex chars of an MD5 over the parent
 * revision text ("" for a new document), the deleted flag and the body bytes, so the same
 * edit made twice anywhere yields the same id. */
void rev_hash_new(const char *parent_rev, size_t parent_len, bool deleted,
                  const char *body, size_t body_len, char out[33]);

/* ---- document ids ---------------------------------------------------------------------- */
/* CouchDB's id rule: non-empty valid UTF-8; a leading '_' only for "_design/x" and
 * "_local/x" with non-empty x. 0, or MIMEO_EBADID with *reason set to CouchDB's text. */
int docid_validate(const char *id, size_t n, const char **reason);
/* The same with another length limit than MIMEO_ID_MAX. */
int docid_validate_max(const char *id, size_t n, size_t max, const char **reason);
/* Reasons, checked in CouchDB's order: "Document id must not be empty", "Illegal document id
 * `_design/`" (or `_local/`), "Document id is too long" (over MIMEO_ID_MAX bytes), "Document
 * id must be valid UTF-8" (strict: no overlongs, surrogates or code points past U+10FFFF),
 * "Only reserved document ids may start with underscore.". *reason is NULL on success. */

/* ---- queries --------------------------------------------------------------------------- */
/* Index of the node (gen, hash), or -1. */
int64_t revtree_find(const revtree *t, uint64_t gen, const char *hash, size_t hash_len);
bool    revtree_is_leaf(const revtree *t, uint32_t i);
/* The winning leaf (§1.6: live before deleted, then higher gen, then greater hash), or -1
 * when empty. */
int64_t revtree_winner(const revtree *t);
/* All leaves, best first by the winner order. out must hold t->count entries. Returns n. */
uint32_t revtree_leaves(const revtree *t, uint32_t *out);
/* True when every leaf is a tombstone (or the tree is empty). */
bool    revtree_all_deleted(const revtree *t);
/* Path from node i up to its root: out[0] = i, out[k] = k-th ancestor. out must hold
 * t->count entries. Returns its length. */
uint32_t revtree_path(const revtree *t, uint32_t i, uint32_t *out);
/* Leaves that descend from node i (i itself when it is a leaf), best first. */
uint32_t revtree_leaves_under(const revtree *t, uint32_t i, uint32_t *out);
/* leaves/leaves_under use all t->count slots of out as scratch and never allocate. */

/* ---- changes ---------------------------------------------------------------------------- */
typedef enum {
    REVTREE_NEW_LEAF,      /* extended a leaf, or the tree was empty */
    REVTREE_NEW_BRANCH,    /* split off an internal node, or added a new root */
    REVTREE_INTERNAL_NODE, /* everything was already there: nothing changed */
} revtree_outcome;

/* A single-branch path as the replicator ships it (_revisions): hashes[0] is the newest
 * revision with generation `start`, hashes[k] has generation start - k. Only the newest
 * carries a body (leaf_flags, leaf_body). */
typedef struct revtree_path_in {
    uint64_t     start;
    const char **hashes;
    const size_t *hash_lens;
    uint32_t     count;
    uint8_t      leaf_flags;  /* REVTREE_DELETED | REVTREE_HAS_BODY for hashes[0] */
    uint64_t     leaf_body;
} revtree_path_in;

/* Merges path into t (§1.4): a node already present keeps the better status (a stored body
 * beats a missing one; when the path brings a body for a node that had none, the node takes
 * the path's flags and body). *leaf (may be NULL) receives the index of the path's newest
 * node after the merge. 0, or MIMEO_ENOMEM. Does not stem. */
int revtree_merge(revtree *t, const revtree_path_in *path, revtree_outcome *outcome,
                  uint32_t *leaf);
/* Details of revtree_merge:
 * - Also MIMEO_EINVAL (count 0, or start < count) and MIMEO_EBADREV (a hash not in
 *   rev_hash_check's form). On any error t is unchanged.
 * - The result is the union of t and the path (revisions and parent links), whatever the
 *   order paths arrive in; stemmed ancestors a path brings back are re-attached above a
 *   root, and a path linking a root under another tree's node joins the two.
 * - *outcome: INTERNAL_NODE exactly when t is unchanged (CouchDB's "already there"; the
 *   caller has nothing to write). NEW_LEAF when t was empty or a node that was a leaf gained
 *   a child. NEW_BRANCH for any other change: a new root, a split at an internal node, new
 *   ancestors above a root (CouchDB reports internal_node there; mimeo's tree did change),
 *   or a body stored for a revision that had none.
 * - Whether the path's body was taken: t->nodes[*leaf] has REVTREE_HAS_BODY and body ==
 *   leaf_body. A path whose leaf has no REVTREE_HAS_BODY sets flags only on a new node. */

/* Interactive edit: adds a child (gen = parent's + 1, or 1 with parent REVTREE_NONE) under
 * node `parent`. The caller has checked the conflict rules. Returns 0 and *child, or
 * MIMEO_ENOMEM. If the child already exists, it is reused (same deterministic id). */
int revtree_add_child(revtree *t, uint32_t parent, const char *hash, size_t hash_len,
                      uint8_t flags, uint64_t body, uint32_t *child);
/* add_child also returns MIMEO_EINVAL (parent out of range) or MIMEO_EBADREV (hash not in
 * rev_hash_check's form). A reused child keeps its stored body; one that had no body takes
 * flags and body. Existing indices are not moved. */

/* Called for each stored body that a stem or compaction drops, so the store can free it. */
typedef void (*revtree_drop_fn)(void *ctx, uint64_t body);

/* Cuts every root-to-leaf path to its newest `limit` nodes (§1.5); never drops a leaf. */
int revtree_stem(revtree *t, uint32_t limit, revtree_drop_fn drop, void *ctx);
/* stem, precisely (CouchDB's stem_tree): a node survives iff some leaf below it is fewer
 * than `limit` generations away; links between survivors are kept, a survivor whose parent
 * goes becomes a root at its own generation. Every leaf keeps its newest `limit` ancestors-
 * or-self, but a path that runs through a branch point kept for a nearer leaf can be longer
 * than `limit`. Limit 0 acts as 1. 0, or MIMEO_ENOMEM with t unchanged; drop may be NULL.
 * Array order is kept (surviving indices only shift down). */
/* Forgets the bodies of all non-leaf nodes (compaction). */
void revtree_compact(revtree *t, revtree_drop_fn drop, void *ctx);

#endif
