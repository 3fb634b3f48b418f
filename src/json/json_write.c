/* JSON writers: string escaping and keys, appended to a buf. Every string mimeo emits goes
 * through json_put_str, bodies of whole _bulk_docs batches included, so it copies runs of
 * safe bytes in bulk and only stops at the bytes RFC 8259 says must be escaped. */
#include "json.h"

#include <string.h>

/* 0: copy as is; otherwise the letter after the backslash, or 'u' for \u00XX */
static const char jw_esc[256] = {
    ['\b'] = 'b', ['\t'] = 't', ['\n'] = 'n', ['\f'] = 'f', ['\r'] = 'r',
    [0x00] = 'u', [0x01] = 'u', [0x02] = 'u', [0x03] = 'u', [0x04] = 'u', [0x05] = 'u',
    [0x06] = 'u', [0x07] = 'u', [0x0B] = 'u', [0x0E] = 'u', [0x0F] = 'u', [0x10] = 'u',
    [0x11] = 'u', [0x12] = 'u', [0x13] = 'u', [0x14] = 'u', [0x15] = 'u', [0x16] = 'u',
    [0x17] = 'u', [0x18] = 'u', [0x19] = 'u', [0x1A] = 'u', [0x1B] = 'u', [0x1C] = 'u',
    [0x1D] = 'u', [0x1E] = 'u', [0x1F] = 'u',
    ['"'] = '"', ['\\'] = '\\',
};

/* Non-zero when one of the eight bytes of w is < 0x20, '"' or '\\' (exact as a yes/no:
 * the borrow trick only gives false positives above a byte that really matches). */
static inline uint64_t jw_special8(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    uint64_t lt = (w - ones * 0x20) & ~w;
    uint64_t zq = (q - ones) & ~q;
    uint64_t zb = (b - ones) & ~b;
    return (lt | zq | zb) & high;
}

/* The length of the run of bytes from u[i] on that need no escape. With SSE2 (every x86-64)
 * sixteen bytes are tested per step; elsewhere eight, with the borrow trick above. */
static inline size_t jw_safe_run(const unsigned char *u, size_t i, size_t n) {
#ifdef __SSE2__
    while (i + 16 <= n) {
        unsigned mask = json_special16(_mm_loadu_si128((const __m128i *)(u + i)));
        if (mask) return i + (size_t)__builtin_ctz(mask);
        i += 16;
    }
#endif
    while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, u + i, 8);
        if (jw_special8(w)) break;
        i += 8;
    }
    while (i < n && !jw_esc[u[i]]) i++;
    return i;
}

int json_put_str(buf *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t start = b->len;
    int rc = buf_reserve(b, n + 2);
    if (rc) return rc;
    char *o = b->data + b->len;
    *o++ = '"';
    size_t i = 0;
    for (;;) {
        size_t run = jw_safe_run(u, i, n);
        memcpy(o, u + i, run - i);
        o += run - i;
        if (run == n) break;
        /* one escape: 2 or 6 bytes where 1 was reserved; make room for it, the bytes
         * after it and the closing quote (exactly, so a string that fits the cap fits) */
        char e = jw_esc[u[run]];
        b->len = (size_t)(o - b->data);
        rc = buf_reserve(b, (e == 'u' ? 6 : 2) + (n - run - 1) + 1);
        if (rc) {
            /* like every buf append: all or nothing */
            b->len = start;
            b->data[start] = 0;
            return rc;
        }
        o = b->data + b->len;
        *o++ = '\\';
        *o++ = e;
        if (e == 'u') {
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[u[run] >> 4];
            *o++ = hex[u[run] & 15];
        }
        i = run + 1;
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = 0;
    return 0;
}

int json_put_key(buf *b, const char *key) {
    int rc = json_put_cstr(b, key);
    return rc ? rc : json_putc(b, ':');
}

int json_putc(buf *b, char c) {
    return json_putc_fast(b, c);
}
