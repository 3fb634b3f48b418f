/* Internals shared by the files of src/view: a design document's index definition (vdef.c),
 * the environment's view state — query-server pool, updaters, tasks (vupdate.c) — and the
 * query engine (vquery.c). */
#ifndef MIMEO_VIEW_INT_H
#define MIMEO_VIEW_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../js/qs.h"
#include "../json/json.h"
#include "mimeo.h"
#include "reduce.h"
#include "vstore.h"

typedef enum { VRED_NONE, VRED_BUILTIN, VRED_JS } vred_type;

typedef struct vdef_view {
    char            *name;
    char            *map;       /* source */
    char            *reduce;    /* source or built-in name; NULL: none */
    vred_type        rtype;
    view_reduce_kind rkind;     /* VRED_BUILTIN */
} vdef_view;

/* The index a design document defines: every view with a map function, sorted by name (the
 * view number is the position), and what the signature covers. */
typedef struct vdef {
    char      *ddoc_id;     /* "_design/…" */
    size_t     ddoc_id_len;
    char      *language;
    char      *lib;         /* views.lib as JSON text, or NULL */
    vdef_view *views;
    size_t     nviews;
    bool       include_design;
    bool       local_seq;
    char       sig[33];     /* hex MD5 of the definition (CouchDB's "signature") */
    uint64_t   idx;         /* storage id: the definition and the ICU collator version */
} vdef;

/* Reads _design/{name} and builds its definition. New *out (vdef_free). MIMEO_ENOTFOUND
 * (not_found missing/deleted), MIMEO_EINVAL for a malformed one (err filled). */
int  vdef_load(mimeo_db *db, const char *name, size_t name_len, vdef **out, mimeo_err *err);
/* The same from a design document's JSON text. */
int  vdef_from_json(const char *id, size_t id_len, const char *json, size_t len, vdef **out,
                    mimeo_err *err);
void vdef_free(vdef *d);
/* The view number of name, or -1. */
int  vdef_find(const vdef *d, const char *name, size_t len);

/* ---- vquery.c ------------------------------------------------------------------------------ */
/* One reduce or rereduce call ("reduce"/"rereduce") of the JavaScript reduce src on p, a
 * process reset already: items are the comma-separated arguments ([[key, id], value] rows,
 * or partial results). Appends the result's JSON to result; line and reply are scratch. A
 * protocol error reply is MIMEO_EIO with err filled (reduce_error, reduce_overflow_error). */
int  view_js_reduce(qs_proc *p, const char *cmd, const char *src, const char *items,
                    size_t len, buf *line, buf *reply, buf *result, mimeo_err *err);

/* A view's blocks read into memory (vstore_blocks_scan), a read transaction per thousand:
 * offsets into data of each one's first and last rk and partial. */
typedef struct blist {
    buf    data;
    size_t n, cap;
    struct bent { size_t first, first_len, last, last_len, part, part_len; uint64_t count; } *e;
    const buf *hi;   /* stop at the first block whose first key is above this (NULL: none) */
    bool   stop;
} blist;
/* Appends the blocks from the one holding pos (NULL: the first) up to hi (NULL: the end) to
 * l (zeroed, data initialised); blist_free it. blist_add is the scan callback. */
int  blist_read(mimeo_db *db, uint64_t idx, unsigned view, const buf *pos, const buf *hi,
                blist *l);
int  blist_add(void *ctx, const vstore_block *b);
void blist_free(blist *l);

/* Appends a row as a reduce call takes it: [[key, id], value]. */
int  view_put_kv(buf *b, const vstore_row *r);

/* ---- vupdate.c ----------------------------------------------------------------------------- */
/* Brings the index of d up to date with the database (one updater per index at a time;
 * others wait for it). */
int  view_update(mimeo_db *db, const vdef *d, mimeo_err *err);
/* The same in a background thread (update=lazy); errors are logged. */
void view_update_later(mimeo_db *db, const vdef *d);
/* Whether an updater of this index runs now. */
bool view_updating(mimeo_db *db, uint64_t idx);
/* A process of the environment's view pool, reset with CouchDB's query server config
 * (reduce_limit); qs_release it to view_pool(db). */
int  view_proc(mimeo_db *db, qs_proc **out, buf *line, buf *reply, mimeo_err *err);
qs_pool *view_pool(mimeo_db *db);
void view_err(mimeo_err *err, int code, const char *error, const char *reason);

#endif
