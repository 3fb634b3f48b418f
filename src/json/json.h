/* JSON in and out: mimeo's own parser and writers.
 * - A validating event parser: syntax, UTF-8, duplicate object keys at every depth and a
 *   nesting cap are checked here, once, for every byte that enters mimeo.
 * - json_doc: splits a document object into its special `_` members and its body, which is
 *   re-emitted as compact bytes; no tree is ever built for a body (hot path).
 * - jval: a small tree for cold, small control objects (query values, _revs_diff, _bulk_get
 *   requests, keys lists, _revisions).
 * - writers that append escaped JSON to a buf. */
#ifndef MIMEO_JSON_H
#define MIMEO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/buf.h"
#include "../common/err.h"
#include "mimeo.h"

typedef struct json_limits {
    unsigned max_depth;     /* nesting of arrays+objects; deeper input is refused */
    size_t   max_doc_bytes; /* cap on one document's re-emitted body (json_doc) */
} json_limits;

#define JSON_DEFAULT_MAX_DEPTH 256
#define JSON_DEFAULT_MAX_DOC   (8u << 20)
/* Longest _revisions.ids accepted at all (the ids past the kept ones are only counted, so
 * this bounds parsing time, not memory). */
#define JSON_MAX_REVISION_IDS  MIMEO_REVISIONS_MAX

/* Why parsing failed: code is a MIMEO_E* value (MIMEO_EBADJSON for syntax/UTF-8/duplicate
 * keys/depth, MIMEO_EDOCVALIDATION, MIMEO_EBADID, MIMEO_EBADREV, MIMEO_EINVAL for shape,
 * MIMEO_ETOOLARGE for size); error/reason are CouchDB's strings for the HTTP reply. */
typedef mimeo_err json_error;

/* ---- event parser -------------------------------------------------------------------------
 * Callbacks return 0 to go on, non-zero to stop (json_parse then returns that value).
 * Strings and keys are decoded UTF-8, not NUL-terminated, valid only during the call.
 * Numbers arrive as their exact source text. Any handler may be NULL. */
typedef struct json_handlers {
    int (*on_null)(void *ctx);
    int (*on_bool)(void *ctx, bool v);
    int (*on_number)(void *ctx, const char *text, size_t n);
    int (*on_string)(void *ctx, const char *s, size_t n);
    int (*on_start_map)(void *ctx);
    int (*on_key)(void *ctx, const char *s, size_t n);
    int (*on_end_map)(void *ctx);
    int (*on_start_array)(void *ctx);
    int (*on_end_array)(void *ctx);
} json_handlers;

/* Parses exactly one JSON value (surrounding whitespace allowed). 0 on success; a handler's
 * non-zero return; or MIMEO_EBADJSON with err filled ("bad_request"/"invalid UTF-8 JSON" or a
 * more precise reason for duplicate keys and depth). limits may be NULL (defaults). */
/* Also: h may be NULL (validate only), err may be NULL; empty input is an error; keys are
 * compared after escapes are decoded ("a" and "\u0061" are duplicates); a limit of 0 means
 * the default; MIMEO_ENOMEM when memory runs out. A handler's return leaves err as the
 * handler left it. */
/* Parses begun on the calling thread: tests read it to prove that a path parses nothing. */
extern _Thread_local uint64_t json_parse_calls;
int json_parse(const char *p, size_t n, const json_limits *limits,
               const json_handlers *h, void *ctx, json_error *err);

/* True when s[0..n) is well-formed UTF-8 (see utf8_valid in common/buf.h, which this names
 * for the JSON layer); json_parse applies it to every string and key. */
static inline bool json_utf8_valid(const char *s, size_t n) { return utf8_valid(s, n); }
/* Length of the longest prefix of UTF-8 text s[0..n) that is at most max bytes and does not
 * split a character (for quoting user text in a bounded error reason). */
size_t json_utf8_prefix(const char *s, size_t n, size_t max);

/* ---- skimming replies that carry documents (json_skim.c) -----------------------------------
 * A _bulk_get or open_revs reply is validated exactly as json_parse would (same limits, same
 * refusals), and the object value of every "ok" member met outside a document is handed over
 * as its bytes in the input: nothing is decoded or copied. */
typedef struct json_skim_doc {
    const char *text;      /* the document object's bytes, from '{' to '}' */
    size_t      len;
    const char *rev;       /* the top-level "_rev" string's contents when it holds no escape,
                              else NULL */
    size_t      rev_len;
    /* the top-level "_revisions" member, as offsets into text: its key's opening quote, its
     * value's first byte and the end of its value; revisions_end 0 when there is none */
    size_t      revisions_key, revisions_value, revisions_end;
    bool        has_attachments;  /* a top-level "_attachments" member */
} json_skim_doc;
/* Called per document (borrowed for the call); non-zero stops the skim with that code. */
typedef int (*json_skim_fn)(void *ctx, const json_skim_doc *d);
/* 0, the callback's code, or json_parse's errors (err filled). *errors (when not NULL) is
 * increased by the "error" members with an object value met outside a document: revisions
 * a _bulk_get reply did not serve. */
int json_skim_docs(const char *p, size_t n, const json_limits *limits, json_skim_fn fn,
                   void *ctx, size_t *errors, json_error *err);

/* ---- small trees --------------------------------------------------------------------------- */
typedef enum { JV_NULL, JV_BOOL, JV_NUMBER, JV_STRING, JV_ARRAY, JV_OBJECT } jv_type;

typedef struct jval jval;
struct jval {
    jv_type type;
    bool    boolean;
    char   *str;      /* JV_STRING: decoded, NUL-terminated; JV_NUMBER: source text */
    size_t  len;      /* string length / number text length */
    size_t  count;    /* JV_ARRAY / JV_OBJECT: number of items */
    jval  **items;    /* JV_ARRAY / JV_OBJECT: values */
    char  **keys;     /* JV_OBJECT: keys, NUL-terminated */
    size_t *key_lens; /* JV_OBJECT */
};

/* New tree in *out (free with jval_free). Same errors as json_parse. */
int  json_tree_parse(const char *p, size_t n, const json_limits *limits, jval **out,
                     json_error *err);
void jval_free(jval *v);
/* The same tree in one allocation: free it with free(), never jval_free; its nodes must not
 * be freed, grown or detached one by one. For large, read-only requests (_revs_diff,
 * _bulk_get bodies), which would otherwise cost two allocations per value. */
int  json_tree_parse_block(const char *p, size_t n, const json_limits *limits, jval **out,
                           json_error *err);
/* Borrowed member of an object, or NULL (also when v is not an object). */
jval *jval_get(const jval *v, const char *key);
/* True and *out set when v is a number that is an integer in range. */
bool jval_as_i64(const jval *v, int64_t *out);
/* Appends v's compact JSON text. */
int  json_put_jval(buf *b, const jval *v);

/* Building a jval from events, for parsers that stream a text but keep one member as a tree
 * (json_doc keeps _revisions and _attachments this way). Feed json_builder_handlers, with the
 * builder as ctx, the events of one value from its first to its last; handlers return
 * MIMEO_ENOMEM when memory runs out. */
typedef struct json_builder json_builder;
extern const json_handlers json_builder_handlers;
/* New empty builder (NULL when out of memory); free with json_builder_free, which also frees
 * a value still being built. */
json_builder *json_builder_new(void);
void          json_builder_free(json_builder *jb);
/* The completed value (new: free with jval_free), or NULL while it is incomplete. The builder
 * is then empty and takes the next value. */
jval         *json_builder_take(json_builder *jb);

/* ---- documents ----------------------------------------------------------------------------- */
/* One document split from its JSON object. Everything is owned by the json_doc. */
typedef struct json_doc {
    char  *id;            /* "_id" or NULL when absent; validated by json_doc_* (see below) */
    size_t id_len;
    char  *rev;           /* "_rev" or NULL; syntax not checked here */
    size_t rev_len;
    bool   deleted;       /* "_deleted": true */
    jval  *revisions;     /* "_revisions" as a tree, or NULL; shape not checked here,
                           * except that json_*_parse_revs keep at most max_revision_ids
                           * items of its "ids" array (the newest): the rest are counted,
                           * not kept, since stemming would drop them anyway */
    size_t revision_ids_total; /* items of _revisions.ids as sent (kept or not) */
    jval  *attachments;   /* "_attachments" as a tree, or NULL */
    buf    body;          /* the other members as a compact JSON object "{...}", in input
                           * order; "{}" when there are none. Members named
                           * _replication_* and _access are body members (CouchDB keeps
                           * them); _revs_info, _conflicts, _deleted_conflicts and
                           * _local_seq are dropped silently; any other "_" member fails
                           * with doc_validation "Bad special document member: _x". */
} json_doc;

void json_doc_destroy(json_doc *d);

/* Splits one document object (PUT /db/id, POST /db). A non-object is "bad_request" /
 * "Document must be a JSON object". A body over limits->max_doc_bytes is MIMEO_ETOOLARGE
 * ("document_too_large", reason the _id when it came before the overflow, else "").
 * 0 or an error with err filled; *out is initialised either way and must be destroyed.
 * Member types, as CouchDB checks them: _id not a string is MIMEO_EBADID ("illegal_docid",
 * "Document id must be a string"; only the type and UTF-8 are checked here); _rev not a
 * string is MIMEO_EBADREV ("bad_request", "Invalid rev format"); _deleted not a boolean, or
 * _revisions/_attachments not an object, is doc_validation "Bad special document member:
 * _x" (their inner shape is not checked here). */
int json_doc_parse(const char *p, size_t n, const json_limits *limits, json_doc *out,
                   json_error *err);
/* The same, keeping only the newest max_revision_ids items of _revisions.ids (0: all). */
int json_doc_parse_revs(const char *p, size_t n, const json_limits *limits,
                        unsigned max_revision_ids, json_doc *out, json_error *err);

/* A _bulk_docs request body: {"docs":[…], "new_edits":bool, "all_or_nothing":bool}, members
 * in any order; unknown members are ignored. "docs" missing: bad_request
 * "POST body must include `docs` parameter."; not an array: "`docs` parameter must be an
 * array." (CouchDB's two reasons); new_edits not a boolean: bad_request "`new_edits`
 * parameter must be a boolean."; all_or_nothing is on only when it is true (as CouchDB);
 * a body that is not an object: "Request body must be a JSON object". All these are
 * MIMEO_EINVAL. Each element of docs must be an object (else bad_request "Document must be
 * a JSON object") and is split as by json_doc_parse, in the same pass.
 * Any error fails the whole body; on success *docs is a new array of *count json_docs (free
 * with json_bulk_destroy). */
typedef struct json_bulk {
    json_doc *docs;
    size_t    count;
    bool      new_edits;       /* default true */
    bool      all_or_nothing;  /* default false */
    bool      flags_after_docs; /* new_edits, all_or_nothing or another docs came after the
                                 * docs array began (json_bulk_parse_stream) */
} json_bulk;
int  json_bulk_parse(const char *p, size_t n, const json_limits *limits, json_bulk *out,
                     json_error *err);
/* As json_bulk_parse, with at most max_revision_ids items of each _revisions.ids kept (0:
 * all), and more than max_docs items of docs (0: no cap) refused with MIMEO_ETOOLARGE
 * "max_bulk_docs_count_exceeded" ([couchdb] max_bulk_docs_count) as soon as the first one
 * past the cap starts: the count comes with the parse, not from a scan of its own. */
int  json_bulk_parse_revs(const char *p, size_t n, const json_limits *limits,
                          unsigned max_revision_ids, size_t max_docs, json_bulk *out,
                          json_error *err);
/* As json_bulk_parse_revs, calling on_doc(arg, out, i) as each element i of docs is
 * complete, so that a caller may start on the first documents while the rest are parsed.
 * on_doc may take out->docs[i] (move it out and zero it: the array moves as it grows). A
 * non-zero return stops the parse and is its result (err left for the caller to fill).
 * What on_doc sees of new_edits and all_or_nothing is final unless out->flags_after_docs
 * ends up set. */
int  json_bulk_parse_stream(const char *p, size_t n, const json_limits *limits,
                            unsigned max_revision_ids, size_t max_docs,
                            int (*on_doc)(void *arg, json_bulk *out, size_t index), void *arg,
                            json_bulk *out, json_error *err);
void json_bulk_destroy(json_bulk *b);

/* ---- writers -------------------------------------------------------------------------------
 * Append compact JSON. Strings are escaped per RFC 8259 ("\"", "\\", control characters as
 * \n \r \t \b \f or \u00XX); other bytes pass through (input is valid UTF-8 already). */
int json_put_str(buf *b, const char *s, size_t n);
static inline int json_put_cstr(buf *b, const char *s) {
    size_t n = 0; while (s[n]) n++; return json_put_str(b, s, n);
}
/* "key": — a string key followed by a colon. */
int json_put_key(buf *b, const char *key);
/* One byte, like buf_putc but never past the buf's cap (MIMEO_ETOOLARGE instead). The inline
 * form is for the hot loops of this module. */
int json_putc(buf *b, char c);
static inline int json_putc_fast(buf *b, char c) {
    if (b->len + 1 < b->alloc && (b->cap == 0 || b->len < b->cap)) {
        b->data[b->len++] = c;
        b->data[b->len] = 0;
        return 0;
    }
    return buf_put(b, &c, 1);
}

#ifdef __SSE2__
#include <emmintrin.h>
/* Bit i set when byte i of w is a quote, a backslash or a control character: what ends a
 * string's plain run when reading, and what needs escaping when writing. Sixteen bytes a
 * step on every x86-64; the callers fall back to a byte loop elsewhere. */
static inline unsigned json_special16(__m128i w) {
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
    const __m128i ctl = _mm_set1_epi8(0x1F);
    /* unsigned w <= 0x1F exactly when max(w, 0x1F) == 0x1F */
    __m128i bad = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(w, quote), _mm_cmpeq_epi8(w, bslash)),
                               _mm_cmpeq_epi8(_mm_max_epu8(w, ctl), ctl));
    return (unsigned)_mm_movemask_epi8(bad);
}
#endif

#endif
