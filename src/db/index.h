/* Storage of secondary-index rows (Mango JSON indexes) in the environment's LMDB: a table of
 * its own, opened on first use, with the rows of every index of every database. The rows'
 * keys are opaque bytes made by the caller (src/query builds them with collate_key_put so
 * that byte order is collation order); this file only keeps them, per (database, index),
 * with a reverse entry per document so an update can find and remove a document's old row,
 * and the sequence up to which the index has been brought. See index.c for the layout. */
#ifndef MIMEO_DB_INDEX_H
#define MIMEO_DB_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mimeo.h"

/* Longest key kept; longer keys are cut to this many bytes (see index.c). */
#define DBIDX_KEY_MAX 480

/* Who the database is, for caches keyed by database: its environment, its id there and its
 * creation time (a database dropped and made again under the same name differs); and its
 * current update sequence. */
int dbidx_identity(mimeo_db *db, uintptr_t *env, uint64_t *dbid, uint64_t *created,
                   uint64_t *update_seq);

/* The sequence the index has been brought up to (0 when it has no rows yet). */
int dbidx_seq(mimeo_db *db, uint64_t idx, uint64_t *seq);

/* One document's new state: key NULL means "not in the index" (deleted, filtered out, or
 * missing a field). The key is cut to DBIDX_KEY_MAX bytes here. */
typedef struct dbidx_change {
    const char          *id;
    size_t               id_len;
    const unsigned char *key;
    size_t               key_len;
} dbidx_change;

/* Applies changes in one durable transaction and moves the index's sequence from `from` to
 * `to`. Each document at most once per call (as the changes feed lists them). MIMEO_ECONFLICT (nothing written) when the stored sequence is no longer `from`:
 * someone else updated the index meanwhile; read it again. */
int dbidx_apply(mimeo_db *db, uint64_t idx, uint64_t from, uint64_t to,
                const dbidx_change *changes, size_t n);

/* Reads rows in key order (then id order), ascending or descending, from a position:
 *   key NULL:            from the first row (ascending) or the last (descending);
 *   key set, id NULL:    from the first row whose key is ≥ key (ascending), or the last row
 *                        whose key is ≤ key (descending);
 *   key and id set:      strictly after the row (key, id) in the scan's direction.
 * fn gets borrowed bytes valid during the call; it returns 0 to go on, non-zero to stop
 * (returned). At most max rows are delivered per call (the read snapshot is short). */
typedef int (*dbidx_row_fn)(void *ctx, const unsigned char *key, size_t key_len,
                            const char *id, size_t id_len);
int dbidx_scan(mimeo_db *db, uint64_t idx, const unsigned char *key, size_t key_len,
               const char *id, size_t id_len, bool descending, size_t max, dbidx_row_fn fn,
               void *ctx);

/* Drops every row of the index and its sequence, in chunks. */
int dbidx_drop(mimeo_db *db, uint64_t idx);

/* Calls fn with the id of each index that has rows or a sequence in this database. */
int dbidx_list(mimeo_db *db, int (*fn)(void *ctx, uint64_t idx), void *ctx);

#endif
