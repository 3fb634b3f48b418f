/* Mango JSON indexes: their definitions (views of design documents with
 * "language":"query", as CouchDB stores them), the row key of a document, bringing an
 * index up to date from the changes feed, and the _index endpoints. Rows are kept by
 * src/db/index.c. */
#ifndef MIMEO_MINDEX_H
#define MIMEO_MINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../json/json.h"
#include "mimeo.h"
#include "selector.h"

typedef struct mindex {
    char     *ddoc;       /* "_design/…" */
    char     *name;
    char    **fields;     /* the indexed fields, as written */
    size_t   *field_lens;
    sel_path *paths;      /* the same, split */
    size_t    nfields;
    selector *partial;    /* partial_filter_selector, or NULL */
    char     *partial_json;
    uint64_t  id;         /* storage id: a hash of ddoc, name and definition */
} mindex;

typedef struct mindex_set {
    mindex *v;
    size_t  n;
} mindex_set;

/* Every JSON index of the database, in design-document order. */
int  mindex_load(mimeo_db *db, mindex_set *out, mimeo_err *err);
void mindex_set_destroy(mindex_set *s);

/* The same, from a per-database cache checked against the design documents (and the rows
 * of indexes no longer defined dropped whenever it loads afresh): shared and read-only,
 * handed back with mindex_release. */
int  mindex_acquire(mimeo_db *db, const mindex_set **out, mimeo_err *err);
void mindex_release(const mindex_set *set);

/* Appends the row key of doc (a JSON array of the field values, encoded by
 * collate_key_put); *indexed false when the document has no row (a field is missing, the
 * partial filter refuses it, or it is a design document). */
int  mindex_key(const mindex *ix, const char *id, size_t id_len, const jval *doc, buf *key,
                bool *indexed);

/* Brings the index's rows up to the database's current sequence; *upto: the sequence the
 * rows reflect (every change up to it), as far as this call saw. */
int  mindex_update(mimeo_db *db, const mindex *ix, uint64_t *upto, mimeo_err *err);

/* Appends {"ddoc":…,"name":…,"type":"json","partitioned":false,"def":{"fields":[{"f":"asc"}],
 * "partial_filter_selector"?}}. ix NULL: the special _all_docs index. */
int  mindex_put_json(buf *b, const mindex *ix);

/* Drops the rows of indexes the design documents no longer define. */
int  mindex_drop_orphans(mimeo_db *db, const mindex_set *set);

#endif
