/* Growable byte buffers with a hard cap, and the small helpers every module shares.
 * A buf never grows past its cap: appends that would return MIMEO_ETOOLARGE and leave the
 * buffer unchanged, so a hostile request can only cost as much memory as its cap allows. */
#ifndef MIMEO_BUF_H
#define MIMEO_BUF_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct buf {
    char  *data;  /* owned; always NUL-terminated when len > 0 or after buf_cstr() */
    size_t len;
    size_t alloc;
    size_t cap;   /* hard limit on len; 0 means BUF_DEFAULT_CAP */
} buf;

#define BUF_DEFAULT_CAP ((size_t)1 << 32)
#define BUF_INIT {0, 0, 0, 0}

void buf_init(buf *b, size_t cap);
void buf_destroy(buf *b);
/* Forgets the contents, keeps the memory. */
static inline void buf_reset(buf *b) { b->len = 0; if (b->data) b->data[0] = 0; }
/* Fault injection for tests: when set to N > 0, the Nth growth of any buf from then on
 * fails with MIMEO_ENOMEM (and the counter stops at 0), so tests can prove that every
 * caller checks its appends. */
extern atomic_uint buf_fault_countdown;

/* Ensures room for n more bytes. 0, MIMEO_ENOMEM or MIMEO_ETOOLARGE. */
int buf_reserve(buf *b, size_t n);
int buf_put(buf *b, const void *p, size_t n);
int buf_puts(buf *b, const char *s);
int buf_putc(buf *b, char c);
int buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_put_u64(buf *b, uint64_t v);
/* Returns the contents as a C string (never NULL). */
const char *buf_cstr(buf *b);
/* Hands the memory to the caller (free() it); the buf is left empty. */
char *buf_detach(buf *b, size_t *len);

/* Big-endian fixed-width integers: keys built with them sort numerically in LMDB. */
static inline void be64_put(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (unsigned char)v; v >>= 8; }
}
static inline uint64_t be64_get(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

/* Unsigned LEB128 varints, for compact on-disk records. */
int buf_put_varint(buf *b, uint64_t v);
/* Reads a varint at *p (bounded by end); advances *p. 0, or MIMEO_ECORRUPT. */
int varint_get(const unsigned char **p, const unsigned char *end, uint64_t *v);

/* Monotonic milliseconds, for timeouts and intervals. */
uint64_t clock_ms(void);
/* Fills p with n bytes from the system's CSPRNG. */
void random_bytes(void *p, size_t n);
/* Lowercase hex of n bytes into out (2n chars + NUL). */
void hex_encode(const unsigned char *p, size_t n, char *out);
/* The value of one hex digit (either case), or -1. Inline: revision parsing calls it per
 * character of every revision a replication moves. */
static inline int hex_digit(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}
/* Decodes exactly 2n hex chars (slen must be 2n) into n bytes; false on a bad digit. */
bool hex_decode(const char *s, size_t slen, unsigned char *out, size_t n);

/* Strict UTF-8 (RFC 3629): no overlong forms, no UTF-16 surrogates, nothing past U+10FFFF.
 * CouchDB refuses the same set; accepting them would let two spellings name one character. */
bool utf8_valid(const char *s, size_t n);

/* Decodes %XX escapes in place (and '+' as a space when plus_space); returns the new length,
 * or (size_t)-1 on a malformed escape. */
size_t pct_decode(char *p, size_t n, bool plus_space);
/* Appends s percent-encoded: everything but A-Z a-z 0-9 - . _ ~ (RFC 3986's unreserved set,
 * which is also CouchDB's). 0, MIMEO_ENOMEM or MIMEO_ETOOLARGE. */
int buf_put_pct(buf *b, const char *s, size_t n);

/* Whether the n bytes at p spell the C string s exactly (path segments, keys). */
static inline bool mem_eq_str(const char *p, size_t n, const char *s) {
    return strlen(s) == n && (n == 0 || memcmp(p, s, n) == 0);
}

/* Growable arrays: makes room for need elements in *arr (which holds *cap), doubling from 8.
 * On failure the array and cap are unchanged. 0 or MIMEO_ENOMEM. Typed use:
 *     if (ARRAY_GROW(v->items, v->cap, v->n + 1)) return MIMEO_ENOMEM;
 *     v->items[v->n++] = x; */
int array_grow(void *arr, size_t *cap, size_t need, size_t elem);
#define ARRAY_GROW(arr, cap, need) array_grow(&(arr), &(cap), (need), sizeof *(arr))

#endif
