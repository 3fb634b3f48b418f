/* Storage of map/reduce view indexes in the environment's LMDB: one table ("views") holds
 * the rows of every index of every database, keyed by database id, index id and view number,
 * then the collation key of the emitted key and the document id, so that LMDB's byte order
 * is CouchDB's row order; a per-document entry lists the rows a document emitted (for
 * incremental updates), and a meta entry holds the index's update_seq and row counts.
 * The layout is drawn in vstore.c. */
#ifndef MIMEO_VIEW_VSTORE_H
#define MIMEO_VIEW_VSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "mimeo.h"

/* Longest collation key kept in a row's key; longer ones are cut (vstore.c says what then). */
#define VSTORE_CKEY_MAX 300
#define VSTORE_VIEWS_MAX 256

/* The meta entry of an index. */
typedef struct vstore_meta {
    uint64_t seq;                       /* rows are up to date with this database seq */
    uint64_t bytes;                     /* bytes of keys and values of all its rows */
    unsigned nviews;
    uint64_t rows[VSTORE_VIEWS_MAX];    /* rows per view */
    bool     blocks_ok;                 /* blocks exist and writes mark what they change */
} vstore_meta;

/* Fills *m (zeroes when the index has never been written). */
int vstore_meta_get(mimeo_db *db, uint64_t idx, vstore_meta *m);

/* One emitted row: view number, collation key (cut here to VSTORE_CKEY_MAX), and the key
 * and value as compact JSON text. */
typedef struct vstore_emit {
    unsigned             view;
    const unsigned char *ckey;
    size_t               ckey_len;
    const char          *key;
    size_t               key_len;
    const char          *value;
    size_t               value_len;
} vstore_emit;

/* A document's new rows (n 0: it has none, e.g. deleted). */
typedef struct vstore_doc {
    const char        *id;
    size_t             id_len;
    const vstore_emit *emits;
    size_t             n;
} vstore_doc;

/* Replaces the rows of docs[0..n) and moves the index's seq from `from` to `to`, in one
 * durable transaction. info (the design document id) is kept in the index's directory
 * entry. MIMEO_ECONFLICT (nothing written) when the stored seq is no longer `from`. */
int vstore_apply(mimeo_db *db, uint64_t idx, unsigned nviews, const char *info,
                 size_t info_len, uint64_t from, uint64_t to, const vstore_doc *docs,
                 size_t n);

/* A row as read: rk is the row's position (key bytes after the view prefix; pass it back
 * as a position), key/id/value its stored parts. All borrowed for the callback. */
typedef struct vstore_row {
    const unsigned char *rk;
    size_t               rk_len;
    const char          *key;
    size_t               key_len;
    const char          *id;
    size_t               id_len;
    const char          *value;
    size_t               value_len;
} vstore_row;
typedef int (*vstore_row_fn)(void *ctx, const vstore_row *row);

typedef enum {
    VSTORE_FIRST,   /* from the first row (descending: the last) */
    VSTORE_SEEK,    /* ascending: first row ≥ pos; descending: last row whose bytes, cut to
                       pos's length, are ≤ pos */
    VSTORE_AFTER,   /* strictly after the row at pos in the scan's direction */
} vstore_pos;

/* What a row callback returns: go on, stop after this row, or stop before it (the row is
 * then read again by a scan resuming after the last row taken); negative: an error. */
#define VSTORE_NEXT   0
#define VSTORE_STOP   1
#define VSTORE_BEFORE 2

/* Reads up to max rows of one view in one short read transaction, calling fn for each.
 * last (reset first) receives the position of the last row taken, if any, for VSTORE_AFTER;
 * *more: whether rows may follow. Returns fn's stop code, or an error. */
int vstore_scan(mimeo_db *db, uint64_t idx, unsigned view, vstore_pos how,
                const unsigned char *pos, size_t pos_len, bool desc, size_t max,
                vstore_row_fn fn, void *ctx, bool *more, buf *last);

/* ---- blocks ------------------------------------------------------------------------------
 * Runs of about VSTORE_BLOCK_ROWS consecutive rows of a view, each with its row count, its
 * last row and (for a built-in reduce) the partial reduction of its rows, so that counting
 * rows before a key (offset) and reducing a range cost a walk over blocks plus the rows of
 * the two blocks at the range's edges. Writes do not recompute blocks: they mark the rows
 * they change, and vstore_blocks_repair recomputes the blocks around the marks (or all of a
 * view's blocks when the marks are many, or the index has none yet). */
#define VSTORE_BLOCK_ROWS 256

typedef struct vstore_block {
    const unsigned char *first, *last;   /* rk of its first and last rows */
    size_t               first_len, last_len;
    uint64_t             count;
    const char          *partial;        /* reducer's partial JSON; "" when none */
    size_t               partial_len;
} vstore_block;
typedef int (*vstore_block_fn)(void *ctx, const vstore_block *b);

/* kinds[v]: the view_reduce_kind of view v's built-in reduce, or -1 (blocks keep counts). */
int vstore_blocks_repair(mimeo_db *db, uint64_t idx, unsigned nviews, const int *kinds);
/* *clean: the view's blocks are current (repaired since the last write). */
int vstore_blocks_clean(mimeo_db *db, uint64_t idx, unsigned view, bool *clean);
/* Blocks in ascending order from the one holding pos (pos NULL: the first), up to max in one
 * read transaction; fn returns VSTORE_NEXT or VSTORE_STOP. *more: blocks may follow, after
 * the last one delivered (whose first rk is copied into last). */
int vstore_blocks_scan(mimeo_db *db, uint64_t idx, unsigned view, const unsigned char *pos,
                       size_t pos_len, bool after, size_t max, vstore_block_fn fn, void *ctx,
                       bool *more, buf *last);

/* A partial reduction computed outside the store for one block (a JavaScript reduce): the
 * block as vstore_blocks_scan gave it, and the partial's JSON text ("!" when the function
 * failed on its rows: queries then read them and report the error). */
typedef struct vstore_partial {
    const unsigned char *first, *last;
    size_t               first_len, last_len;
    uint64_t             count;
    const char          *text;
    size_t               len;
} vstore_partial;

/* Stores the partials of blocks still without one, in one write, when the index is still at
 * seq and the view has no marks; a block changed since it was read keeps none (the next
 * repair recomputes it, and the next fill reduces it again). MIMEO_ECONFLICT when the
 * index moved (nothing written). */
int vstore_blocks_put_partials(mimeo_db *db, uint64_t idx, unsigned view, uint64_t seq,
                               const vstore_partial *p, size_t n);

/* Drops every entry of the index, in bounded chunks. */
int vstore_drop(mimeo_db *db, uint64_t idx);

/* Calls fn with each index of the database and its info text (borrowed). */
int vstore_list(mimeo_db *db, int (*fn)(void *ctx, uint64_t idx, const char *info,
                                         size_t info_len), void *ctx);

#endif
