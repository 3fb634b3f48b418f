/* The read seam of src/query: every document, design document and change that _find and
 * the JSON indexes read comes through these calls. Today they sit on the JSON-text API of
 * mimeo.h (mimeo_all_docs, mimeo_changes, mimeo_doc_get) and parse what it returns; when
 * the database layer hands out rows and cursors, this file is the one to switch.
 * Trees passed to callbacks are borrowed for the call. */
#ifndef MIMEO_QUERY_SEAM_H
#define MIMEO_QUERY_SEAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../json/json.h"
#include "mimeo.h"

/* A document as _find returns it: its JSON text (the row's id, winning rev and, when asked,
 * _conflicts around the stored body), the sequence of its latest change, and its tree,
 * which is parsed only when a caller asks for it (seam_doc_tree): a query the index answers
 * alone copies the text and never parses it. Borrowed for the callback. */
typedef struct seam_doc {
    const char *json;
    size_t      len;
    uint64_t    seq;
    jval       *tree;
    int         parse_rc;
} seam_doc;

/* The document's tree, parsed on the first call; NULL when the text is not a JSON object
 * (then d->parse_rc says why, 0 for a non-object). */
const jval *seam_doc_tree(seam_doc *d);

/* Live documents by id, from `start` (exclusive when `after`; NULL: the first) in ascending
 * or descending byte order, up to `end` (inclusive; NULL: no end), a page at a time. fn
 * returns 0 to go on, > 0 to stop (seam_scan_docs then returns 0), < 0 to fail. Design
 * documents are included: callers decide. */
typedef int (*seam_doc_fn)(void *ctx, const char *id, size_t id_len, seam_doc *doc);
int seam_scan_docs(mimeo_db *db, const char *start, size_t start_len, bool after,
                   const char *end, size_t end_len, bool desc, bool conflicts, seam_doc_fn fn,
                   void *ctx, mimeo_err *err);

/* The documents of ids[0..n), in one read: fn(ctx, i, doc) for each id that has a live
 * document; > 0 from fn stops (returned). */
typedef int (*seam_ids_fn)(void *ctx, size_t i, seam_doc *doc);
int seam_get_docs(mimeo_db *db, const char *const *ids, const size_t *lens, size_t n,
                  bool conflicts, seam_ids_fn fn, void *ctx);

/* One document as a new tree (jval_free), or *out NULL when missing or deleted. */
int seam_get_doc(mimeo_db *db, const char *id, size_t id_len, jval **out, mimeo_err *err);

/* Changes after `since`, at most `limit`: fn(ctx, id, deleted, doc) with the winner (doc
 * NULL when absent). *last: the seq reached (the update_seq when the feed ended); *pending:
 * changes left. */
typedef int (*seam_change_fn)(void *ctx, const char *id, size_t id_len, bool deleted,
                              seam_doc *doc);
int seam_changes(mimeo_db *db, uint64_t since, uint64_t limit, seam_change_fn fn, void *ctx,
                 uint64_t *last, uint64_t *pending, mimeo_err *err);

/* Appends the id and winning revision of every live design document, in id order (no
 * bodies read): what a cache of their contents is checked against. */
int seam_ddoc_revs(mimeo_db *db, buf *out);

/* The database's current update sequence. */
int seam_update_seq(mimeo_db *db, uint64_t *seq);

#endif
