/* The lexing steps the validating parser (json_parse.c) and the skimmer (json_skim.c) share,
 * so that both accept exactly the same texts. Private to src/json. */
#ifndef MIMEO_JSON_LEX_H
#define MIMEO_JSON_LEX_H

#include <stdbool.h>
#include <stddef.h>

#include "json.h"

/* Whitespace: RFC 8259's four, and \v and \f, which mimeo has always taken (yajl did). */
static inline size_t json_lex_ws(const unsigned char *p, size_t n, size_t i) {
    while (i < n && (p[i] == ' ' || (p[i] >= '\t' && p[i] <= '\r'))) i++;
    return i;
}

/* The four hex digits at p as a number in *out; false when one is not a hex digit. */
static inline bool json_lex_hex4(const unsigned char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

/* The index of the first byte at or after i that ends a plain run of string contents: a
 * quote, a backslash or a control character. Bytes >= 0x80 on the way set *high: they are
 * checked as UTF-8 later. */
static inline size_t json_lex_str_run(const unsigned char *p, size_t n, size_t i, bool *high) {
#ifdef __SSE2__
    while (i + 16 <= n) {
        __m128i w = _mm_loadu_si128((const __m128i *)(p + i));
        unsigned mask = json_special16(w);
        unsigned top = (unsigned)_mm_movemask_epi8(w); /* bytes >= 0x80 */
        if (mask) {
            unsigned at = (unsigned)__builtin_ctz(mask);
            if (top & ((1u << at) - 1)) *high = true;
            return i + at;
        }
        if (top) *high = true;
        i += 16;
    }
#endif
    while (i < n && p[i] != '"' && p[i] != '\\' && p[i] >= 0x20) {
        if (p[i] >= 0x80) *high = true;
        i++;
    }
    return i;
}

/* Appends code point cp as UTF-8 at d + *o. */
static inline void json_lex_put_utf8(char *d, size_t *o, unsigned cp) {
    if (cp < 0x80) {
        d[(*o)++] = (char)cp;
    } else if (cp < 0x800) {
        d[(*o)++] = (char)(0xC0 | cp >> 6);
        d[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        d[(*o)++] = (char)(0xE0 | cp >> 12);
        d[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        d[(*o)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        d[(*o)++] = (char)(0xF0 | cp >> 18);
        d[(*o)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        d[(*o)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        d[(*o)++] = (char)(0x80 | (cp & 0x3F));
    }
}

/* A number's extent from p[*i] (RFC 8259: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?):
 * *i moved past it, or false when it is malformed. */
static inline bool json_lex_number(const unsigned char *p, size_t n, size_t *i) {
#define JSON_LEX_DIGIT(x) ((x) >= '0' && (x) <= '9')
    size_t k = *i;
    if (k < n && p[k] == '-') k++;
    if (k >= n || !JSON_LEX_DIGIT(p[k])) return false;
    if (p[k] == '0') k++;
    else while (k < n && JSON_LEX_DIGIT(p[k])) k++;
    if (k < n && p[k] == '.') {
        k++;
        if (k >= n || !JSON_LEX_DIGIT(p[k])) return false;
        while (k < n && JSON_LEX_DIGIT(p[k])) k++;
    }
    if (k < n && (p[k] == 'e' || p[k] == 'E')) {
        k++;
        if (k < n && (p[k] == '+' || p[k] == '-')) k++;
        if (k >= n || !JSON_LEX_DIGIT(p[k])) return false;
        while (k < n && JSON_LEX_DIGIT(p[k])) k++;
    }
#undef JSON_LEX_DIGIT
    *i = k;
    return true;
}

#endif
