/* Mango selectors: parsing, CouchDB's normalisation (implicit $and, field paths pushed down
 * to the conditions, negations pushed down by De Morgan), validation with CouchDB's 400
 * errors, and matching a document tree. The rules follow CouchDB 3.5's mango_selector.erl
 * clause by clause, so that what matches here matches there; the few deliberate
 * differences are listed in docs/queries.md. */
#ifndef MIMEO_SELECTOR_H
#define MIMEO_SELECTOR_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/buf.h"
#include "../json/json.h"
#include "mimeo.h"

typedef struct selector selector;

/* Parses a selector from JSON text. New *out (selector_free). Errors are MIMEO_EINVAL with
 * CouchDB's names: invalid_selector_json (not an object), bad_arg ("Bad argument for
 * operator $x: …"), invalid_operator ("Invalid operator: $x"), not_supported
 * ("Unsupported operator: $where"), invalid_selector ("One or more conditions is missing a
 * field name."), invalid_field_name (a path with an empty part, "a..b"); MIMEO_EBADJSON for
 * text that is not JSON; MIMEO_ENOMEM. */
int  selector_parse(const char *json, size_t len, selector **out, mimeo_err *err);
/* The same from a tree (borrowed; the selector keeps its own copy). */
int  selector_from_jval(const jval *v, selector **out, mimeo_err *err);
void selector_free(selector *s);

/* True when the document (a JSON object tree) matches. An empty selector ({}) matches
 * everything. Thread-safe: a selector is read-only once parsed. */
bool selector_match(const selector *s, const jval *doc);
/* The same on JSON text: 0 and *match, or MIMEO_EBADJSON / MIMEO_ENOMEM. */
int  selector_match_json(const selector *s, const char *json, size_t len, bool *match);

/* Appends the normalised selector as JSON, in CouchDB's normalised shape (what _explain
 * shows): {"$and":[{"age":{"$gt":5}},…]}. */
int  selector_to_json(const selector *s, buf *b);

/* True when the selector is empty ({}). */
bool selector_is_empty(const selector *s);

/* ---- for query planning (find.c, mindex.c) ---- */

/* A field path split at unescaped dots ("a\\.b.c" → ["a.b", "c"]). */
typedef struct sel_path {
    char  **parts;
    size_t *lens;
    size_t  n;
} sel_path;
/* MIMEO_EINVAL (invalid_field_name) for an empty part, MIMEO_ENOMEM. */
int  sel_path_parse(const char *path, size_t len, sel_path *out, mimeo_err *err);
void sel_path_destroy(sel_path *p);
/* mango_doc:get_field: 1 and *out (borrowed from v) when found, 0 when missing or when the
 * path runs through a scalar or past an array's end. */
int  sel_path_get(const jval *v, const sel_path *p, const jval **out);

/* CouchDB's has_required_fields: true when every listed field must exist in any matching
 * document. */
bool selector_has_required_fields(const selector *s, const char *const *fields,
                                  const size_t *lens, size_t n);
/* CouchDB's is_constant_field: the top-level conjunction holds {field: {$eq: v}}. */
bool selector_is_constant_field(const selector *s, const char *field, size_t len);

/* The range the top-level conjunction puts on one field, from $eq $gt $gte $lt $lte and
 * $beginsWith (as collation bounds; lo/hi NULL: unbounded; strings_hi: the end of the
 * strings). A superset of the matching values: the caller still runs the selector. */
typedef struct sel_range {
    const jval *lo, *hi;
    bool        lo_incl, hi_incl;
    bool        strings_hi;
    bool        any;        /* some condition restricts the field */
} sel_range;
void selector_field_range(const selector *s, const char *field, size_t len, sel_range *out);
/* True when some condition anywhere names the field. */
bool selector_fields_include(const selector *s, const char *field, size_t len);
/* True when the selector is exactly one {field: {$eq: scalar}} per listed field and nothing
 * else: the rows of an index on those fields whose keys equal the values are then exactly
 * the matching documents ($eq compares by collation, as index keys order), so a row read
 * from an up-to-date index needs no second look at its document. */
bool selector_is_equalities(const selector *s, const char *const *fields, const size_t *lens,
                            size_t n);

/* Limits that stop a regular expression that backtracks catastrophically: past them the
 * value does not match (as Erlang's re reports nomatch at its match limit). */
#define SELECTOR_REGEX_MATCH_LIMIT 1000000u
#define SELECTOR_REGEX_DEPTH_LIMIT 10000u

#endif
