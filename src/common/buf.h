/* Growable byte buffers with a hard cap, and the small helpers every module shares.
 * A buf never grows past its cap: appends that would return MIMEO_ETOOLARGE and leave the
 * buffer unchanged, so a hostile request can only cost as much memory as its cap allows. */
#ifndef MIMEO_BUF_H
#define MIMEO_BUF_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

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

#endif
