/* libFuzzer driver for the multipart parser (src/http/multipart.c). Input: a Content-Type
 * line, '\n', then the body. The body is parsed twice, whole and in pieces whose size comes
 * from the first byte, with parts whose type is multipart parsed by nested parsers (as the
 * replicator reads CouchDB's open_revs replies); both runs must report the same events and
 * the same result, data only between a part's begin and end, and never more data than
 * the input holds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/multipart.h"

#define FUZZ_DEPTH 3

typedef struct fz {
    uint64_t hash;          /* of every event and byte, in order */
    size_t   data_bytes;
    int      depth;
    bool     in_part[FUZZ_DEPTH];
    bool     nested[FUZZ_DEPTH];
    multipart_parser sub[FUZZ_DEPTH];
} fz;

static void fz_check(int cond) {
    if (!cond) abort();
}

static void fz_mix(fz *f, const void *p, size_t n) {
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) f->hash = (f->hash ^ c[i]) * 1099511628211ULL;
}

typedef struct fz_level {
    fz *f;
    int level;
} fz_level;

static fz_level levels[FUZZ_DEPTH];
static const multipart_handlers fz_h;

static int fz_begin(void *ctx, const multipart_part *p, mimeo_err *err) {
    fz_level *l = ctx;
    fz *f = l->f;
    fz_check(!f->in_part[l->level]);
    f->in_part[l->level] = true;
    fz_mix(f, "B", 1);
    for (size_t i = 0; i < p->nheaders; i++) {
        fz_mix(f, p->names[i], strlen(p->names[i]) + 1);
        fz_mix(f, p->values[i], strlen(p->values[i]) + 1);
    }
    const char *ct = multipart_header(p, "content-type");
    f->nested[l->level] = false;
    if (l->level + 1 < FUZZ_DEPTH && ct && strncmp(ct, "multipart/", 10) == 0) {
        f->nested[l->level] = true;
        return multipart_init(&f->sub[l->level + 1], ct, &fz_h, &levels[l->level + 1], err);
    }
    return 0;
}

static int fz_data(void *ctx, const char *d, size_t n, mimeo_err *err) {
    fz_level *l = ctx;
    fz *f = l->f;
    fz_check(f->in_part[l->level]);
    if (f->nested[l->level]) return multipart_feed(&f->sub[l->level + 1], d, n, err);
    f->data_bytes += n;
    fz_mix(f, d, n);
    return 0;
}

static int fz_end(void *ctx, mimeo_err *err) {
    fz_level *l = ctx;
    fz *f = l->f;
    fz_check(f->in_part[l->level]);
    f->in_part[l->level] = false;
    fz_mix(f, "E", 1);
    int rc = 0;
    if (f->nested[l->level]) {
        rc = multipart_finish(&f->sub[l->level + 1], err);
        multipart_destroy(&f->sub[l->level + 1]);
        f->nested[l->level] = false;
    }
    return rc;
}

static const multipart_handlers fz_h = { fz_begin, fz_data, fz_end };

static int fz_run(fz *f, const char *ctype, const char *body, size_t n, size_t piece) {
    memset(f, 0, sizeof *f);
    for (int i = 0; i < FUZZ_DEPTH; i++) levels[i] = (fz_level){ f, i };
    multipart_parser p;
    mimeo_err e;
    memset(&e, 0, sizeof e);
    int rc = multipart_init(&p, ctype, &fz_h, &levels[0], &e);
    for (size_t at = 0; !rc && at < n; at += piece)
        rc = multipart_feed(&p, body + at, n - at < piece ? n - at : piece, &e);
    if (!rc) rc = multipart_finish(&p, &e);
    multipart_destroy(&p);
    /* nested parsers left open by an error */
    for (int i = 1; i < FUZZ_DEPTH; i++)
        if (f->nested[i - 1]) multipart_destroy(&f->sub[i]);
    fz_check(f->data_bytes <= n);
    if (rc) fz_check(e.error[0] != '\0');
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t piece = 1 + data[0] % 64;
    const char *nl = memchr(data + 1, '\n', size - 1);
    if (!nl) return 0;
    size_t clen = (size_t)(nl - (const char *)data) - 1;
    char *ctype = malloc(clen + 1);
    if (!ctype) return 0;
    memcpy(ctype, data + 1, clen);
    ctype[clen] = '\0';
    const char *body = nl + 1;
    size_t n = size - (size_t)(body - (const char *)data);
    fz a, b;
    int ra = fz_run(&a, ctype, body, n, n ? n : 1);
    int rb = fz_run(&b, ctype, body, n, piece);
    /* The split never changes the outcome; a callback's failure may cut the event stream at
     * another point, so only clean parses must hash the same. */
    fz_check((ra == 0) == (rb == 0));
    if (ra == 0) fz_check(a.hash == b.hash && a.data_bytes == b.data_bytes);
    free(ctype);
    return 0;
}
