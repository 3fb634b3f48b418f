/* Growable buffers with caps, varints, clocks and randomness shared by all modules. */
#include "buf.h"
#include "mimeo.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

void buf_init(buf *b, size_t cap) {
    b->data = NULL;
    b->len = b->alloc = 0;
    b->cap = cap;
}

void buf_destroy(buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->alloc = 0;
}

atomic_uint buf_fault_countdown;

int buf_reserve(buf *b, size_t n) {
    size_t cap = b->cap ? b->cap : BUF_DEFAULT_CAP;
    if (n > cap || b->len > cap - n) return MIMEO_ETOOLARGE;
    size_t need = b->len + n + 1; /* room for the terminating NUL */
    if (need <= b->alloc) return 0;
    if (atomic_load_explicit(&buf_fault_countdown, memory_order_relaxed) &&
        atomic_fetch_sub(&buf_fault_countdown, 1) == 1)
        return MIMEO_ENOMEM;
    size_t grown = b->alloc ? b->alloc * 2 : 256;
    while (grown < need) grown *= 2;
    char *p = realloc(b->data, grown);
    if (!p) return MIMEO_ENOMEM;
    b->data = p;
    b->alloc = grown;
    return 0;
}

int buf_put(buf *b, const void *p, size_t n) {
    int rc = buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
    return 0;
}

int buf_puts(buf *b, const char *s) { return buf_put(b, s, strlen(s)); }

int buf_putc(buf *b, char c) {
    if (b->len + 1 < b->alloc && (b->cap == 0 || b->len < b->cap)) {
        b->data[b->len++] = c;
        b->data[b->len] = 0;
        return 0;
    }
    return buf_put(b, &c, 1);
}

int buf_printf(buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return MIMEO_EINVAL;
    int rc = buf_reserve(b, (size_t)n);
    if (rc) return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int buf_put_u64(buf *b, uint64_t v) {
    char tmp[24];
    int i = (int)sizeof tmp;
    do { tmp[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    return buf_put(b, tmp + i, sizeof tmp - (size_t)i);
}

const char *buf_cstr(buf *b) {
    if (!b->data) return "";
    return b->data;
}

char *buf_detach(buf *b, size_t *len) {
    char *p = b->data;
    if (len) *len = b->len;
    b->data = NULL;
    b->len = b->alloc = 0;
    return p;
}

int buf_put_varint(buf *b, uint64_t v) {
    unsigned char tmp[10];
    size_t n = 0;
    do {
        unsigned char byte = v & 0x7f;
        v >>= 7;
        tmp[n++] = byte | (v ? 0x80 : 0);
    } while (v);
    return buf_put(b, tmp, n);
}

int varint_get(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    uint64_t out = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return MIMEO_ECORRUPT;
        unsigned char byte = *(*p)++;
        out |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) { *v = out; return 0; }
    }
    return MIMEO_ECORRUPT;
}

uint64_t clock_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* getrandom(2) can be missing (ENOSYS on old kernels) or refused by a seccomp sandbox
 * (EPERM): then read /dev/urandom. Retrying such an error would loop forever. With neither
 * source there is no way to make unguessable ids, and going on with predictable ones would
 * be worse than stopping. */
static void random_fallback(unsigned char *out, size_t n) {
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    while (fd >= 0 && n) {
        ssize_t got = read(fd, out, n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        out += got;
        n -= (size_t)got;
    }
    if (fd >= 0) close(fd);
    if (n) {
        fprintf(stderr, "mimeo: no source of random bytes (getrandom and /dev/urandom failed)\n");
        abort();
    }
}

void random_bytes(void *p, size_t n) {
    unsigned char *out = p;
    while (n) {
        ssize_t got = getrandom(out, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            random_fallback(out, n);
            return;
        }
        out += got;
        n -= (size_t)got;
    }
}

void hex_encode(const unsigned char *p, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = 0;
}
