/* Growable buffers with caps, varints, clocks and randomness shared by all modules, and the
 * small text helpers (hex, UTF-8, percent-encoding) and growable arrays. */
#include "buf.h"
#include "mimeo.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

bool hex_decode(const char *s, size_t slen, unsigned char *out, size_t n) {
    if (slen != 2 * n) return false;
    for (size_t i = 0; i < n; i++) {
        int h = hex_digit((unsigned char)s[2 * i]), l = hex_digit((unsigned char)s[2 * i + 1]);
        if (h < 0 || l < 0) return false;
        out[i] = (unsigned char)(h << 4 | l);
    }
    return true;
}

bool utf8_valid(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        /* ASCII runs are the common case: eight bytes per step */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (w & 0x8080808080808080ull) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF; /* range of the first continuation byte */
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) { need = 2; lo = 0xA0; }           /* no overlongs */
        else if (c == 0xED) { need = 2; hi = 0x9F; }           /* no surrogates */
        else if (c >= 0xE1 && c <= 0xEF) need = 2;
        else if (c == 0xF0) { need = 3; lo = 0x90; }           /* no overlongs */
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else if (c == 0xF4) { need = 3; hi = 0x8F; }           /* nothing past U+10FFFF */
        else return false;
        if (n - i <= need) return false;
        if (s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return false;
        i += need + 1;
    }
    return true;
}

size_t pct_decode(char *p, size_t n, bool plus_space) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '%') {
            if (i + 2 >= n) return (size_t)-1;
            int hi = hex_digit((unsigned char)p[i + 1]), lo = hex_digit((unsigned char)p[i + 2]);
            if (hi < 0 || lo < 0) return (size_t)-1;
            p[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus_space) {
            p[o++] = ' ';
        } else {
            p[o++] = c;
        }
    }
    return o;
}

int buf_put_pct(buf *b, const char *s, size_t n) {
    if (n == 0) return 0;
    if (n > INT_MAX) return MIMEO_ETOOLARGE;
    /* libcurl's encoder keeps exactly the unreserved set; it takes no handle since 7.82 */
    char *e = curl_easy_escape(NULL, s, (int)n);
    if (!e) return MIMEO_ENOMEM;
    int rc = buf_puts(b, e);
    curl_free(e);
    return rc;
}

int array_grow(void *arr, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap : 8;
    while (n < need) {
        if (n > SIZE_MAX / 2) return MIMEO_ENOMEM;
        n *= 2;
    }
    if (elem && n > SIZE_MAX / elem) return MIMEO_ENOMEM;
    /* arr is the address of some T *; memcpy reads and writes it without type punning */
    void *old;
    memcpy(&old, arr, sizeof old);
    void *p = realloc(old, n * elem);
    if (!p) return MIMEO_ENOMEM;
    memcpy(arr, &p, sizeof p);
    *cap = n;
    return 0;
}
