/* CouchDB view collation of JSON values, and index keys whose byte order is that collation.
 * - collate_cmp: null < false < true < numbers < strings < arrays < objects; numbers by
 *   value, strings by the Unicode Collation Algorithm (ICU root locale, default attributes,
 *   as CouchDB's couch_ejson_compare), arrays and objects member by member.
 * - collate_raw_cmp: Erlang term order, which CouchDB's Mango uses for the _id field.
 * - collate_key_put: a byte string per value such that memcmp order (LMDB's default) equals
 *   collate_cmp order; see collate.c for where that cannot hold and what is done there. */
#ifndef MIMEO_COLLATE_H
#define MIMEO_COLLATE_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/buf.h"
#include "../json/json.h"

/* -1, 0 or 1 as a sorts before, with, or after b. Both must be complete trees (no NULL
 * items). Thread-safe. */
int collate_cmp(const jval *a, const jval *b);
/* Strings alone, by ICU (UTF-8 input, lengths in bytes). */
int collate_str(const char *a, size_t an, const char *b, size_t bn);
/* Erlang's term order on the decoded JSON (numbers < false < null < true < objects <
 * arrays < strings; strings by bytes). */
int collate_raw_cmp(const jval *a, const jval *b);

/* The value of a JSON number (its source text read as a double; out-of-range text gives
 * ±HUGE_VAL, which still orders correctly). */
double collate_number(const jval *v);
/* True when the number's source text is an integer (no fraction, no exponent): what
 * CouchDB's JSON decoder turns into an Erlang integer rather than a float. */
bool collate_is_integer(const jval *v);

/* Appends the index key of v to b. 0, or MIMEO_ENOMEM / MIMEO_ETOOLARGE (b's cap). */
int collate_key_put(buf *b, const jval *v);
/* Appends the ICU sort key of a UTF-8 string (no terminator; never contains a 0x00 byte). */
int collate_sort_key_put(buf *b, const char *s, size_t n);
/* The ICU collator's version as 8 hex chars + NUL: stored keys made with another version
 * must be rebuilt (ICU sort keys are only stable within one collator version). */
void collate_version(char out[9]);

#endif
