/* CouchDB's built-in reduce functions, computed in C: _count, _sum, _stats and
 * _approx_count_distinct. A reducer folds map rows (reduce) or partial results of its own
 * kind (rereduce) and renders the result as CouchDB does, with CouchDB's error names and
 * reasons for values it cannot combine (builtin_reduce_error). Pure: no I/O. */
#ifndef MIMEO_VIEW_REDUCE_H
#define MIMEO_VIEW_REDUCE_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/buf.h"
#include "../json/json.h"
#include "mimeo.h"

typedef enum {
    VIEW_REDUCE_COUNT,
    VIEW_REDUCE_SUM,
    VIEW_REDUCE_STATS,
    VIEW_REDUCE_APPROX_COUNT_DISTINCT,
} view_reduce_kind;

typedef struct view_reducer view_reducer;

/* True and *kind set when name (a view's "reduce" member) names a built-in. Names that start
 * with "_" but are not built-ins are the caller's error (CouchDB: 400 "unknown builtin reduce
 * function"); anything else is JavaScript. */
bool view_reduce_builtin(const char *name, size_t len, view_reduce_kind *kind);

/* New, empty reducer (view_reducer_free it), or NULL without memory. */
view_reducer *view_reducer_new(view_reduce_kind kind);
void          view_reducer_free(view_reducer *r);

/* Folds in one map row. key is the row's key (used by _approx_count_distinct), value its
 * value. MIMEO_EINVAL with err "builtin_reduce_error" when the value cannot be combined. */
int view_reducer_add(view_reducer *r, const jval *key, const jval *value, mimeo_err *err);
/* The common cases without a tree: _count, and _sum or _stats of a value whose JSON text
 * is a plain number. False (nothing done) when the value needs view_reducer_add. */
bool view_reducer_add_fast(view_reducer *r, const char *value, size_t len);
/* Folds in a result this kind of reducer rendered before (rereduce), e.g. stored per page. */
int view_reducer_add_partial(view_reducer *r, const jval *partial, mimeo_err *err);
/* Appends the result's JSON. _approx_count_distinct renders its estimate; its mergeable
 * state is rendered by view_reducer_put_partial (for every other kind the two are equal). */
int view_reducer_put(const view_reducer *r, buf *out);
int view_reducer_put_partial(const view_reducer *r, buf *out);

#endif
