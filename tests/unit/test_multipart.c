/* Unit tests of src/http/multipart.c: bodies written with the writer's pieces parse back to
 * the same parts whatever the split of the input (every split point, byte by byte, random
 * chunkings of random bodies), CouchDB's exact bytes, nested multipart/mixed, parameters of
 * header values, and malformed bodies (each a bad_request, never a crash). A failing
 * property prints its seed: test_multipart [seed]. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "common/err.h"
#include "http/multipart.h"

static uint64_t g_seed;

/* ---- a consumer that records every part -------------------------------------------------- */
#define MAXP 16
typedef struct rec {
    size_t nparts;
    buf    hdrs[MAXP];    /* "name=value\n" per header */
    buf    data[MAXP];
    int    ended[MAXP];
    int    fail_at_begin; /* >0: the Nth on_begin fails */
    size_t data_calls;
} rec;

static void rec_init(rec *r) {
    memset(r, 0, sizeof *r);
    for (int i = 0; i < MAXP; i++) {
        buf_init(&r->hdrs[i], 0);
        buf_init(&r->data[i], 0);
    }
}

static void rec_destroy(rec *r) {
    for (int i = 0; i < MAXP; i++) {
        buf_destroy(&r->hdrs[i]);
        buf_destroy(&r->data[i]);
    }
}

static int rec_begin(void *ctx, const multipart_part *p, mimeo_err *err) {
    rec *r = ctx;
    if (r->fail_at_begin && (size_t)r->fail_at_begin == r->nparts + 1) {
        err_set(err, MIMEO_ETOOLARGE, "too_large", "refused");
        return MIMEO_ETOOLARGE;
    }
    if (r->nparts >= MAXP) return MIMEO_ENOMEM;
    for (size_t i = 0; i < p->nheaders; i++)
        buf_printf(&r->hdrs[r->nparts], "%s=%s\n", p->names[i], p->values[i]);
    r->nparts++;
    return 0;
}

static int rec_data(void *ctx, const char *d, size_t n, mimeo_err *err) {
    (void)err;
    rec *r = ctx;
    r->data_calls++;
    return buf_put(&r->data[r->nparts - 1], d, n);
}

static int rec_end(void *ctx, mimeo_err *err) {
    (void)err;
    rec *r = ctx;
    r->ended[r->nparts - 1]++;
    return 0;
}

static const multipart_handlers rec_h = { rec_begin, rec_data, rec_end };

/* Parses body (boundary b) fed in the pieces cut at cuts[0..ncuts); returns the first
 * nonzero code of feed/finish. */
static int parse_cuts(const char *b, const char *body, size_t len, const size_t *cuts,
                      size_t ncuts, rec *r, mimeo_err *e) {
    multipart_parser p;
    memset(e, 0, sizeof *e);
    int rc = multipart_init_boundary(&p, b, strlen(b), &rec_h, r, e);
    size_t at = 0;
    for (size_t i = 0; !rc && i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : len;
        rc = multipart_feed(&p, body + at, to - at, e);
        at = to;
    }
    if (!rc) rc = multipart_finish(&p, e);
    multipart_destroy(&p);
    return rc;
}

static int parse_whole(const char *ctype, const char *body, size_t len, rec *r, mimeo_err *e) {
    multipart_parser p;
    memset(e, 0, sizeof *e);
    int rc = multipart_init(&p, ctype, &rec_h, r, e);
    if (!rc) rc = multipart_feed(&p, body, len, e);
    if (!rc) rc = multipart_finish(&p, e);
    multipart_destroy(&p);
    return rc;
}

/* ---- a body written the way CouchDB writes one ------------------------------------------- */
static const char BND[] = "0123456789abcdef0123456789abcdef";
/* Binary data full of near-delimiters: CRs, "\r\n--", "\r\n--0123" and NULs. */
static const char ATT2[] = "x\r\r\n\r\n-\r\n--\r\n--0123456789abcdef0123456789abcde\0\r";
#define ATT2_LEN (sizeof ATT2 - 1)

static void write_doc(buf *b) {
    const char *json = "{\"_id\":\"d\",\"_attachments\":{\"a.txt\":{\"follows\":true},"
                       "\"e\":{\"follows\":true},\"q\\\"x\":{\"follows\":true}}}";
    multipart_put_doc_head(b, BND);
    buf_puts(b, json);
    multipart_put_att_head(b, BND, "a.txt", 5, "text/plain", 5, false);
    buf_put(b, "hello", 5);
    multipart_put_att_head(b, BND, "e", 1, "application/octet-stream", 0, false);
    multipart_put_att_head(b, BND, "q\"x", 3, "image/png", ATT2_LEN, true);
    buf_put(b, ATT2, ATT2_LEN);
    multipart_put_close(b, BND);
}

static void check_doc_parts(rec *r) {
    CHECK_EQ_INT(r->nparts, 4);
    CHECK_EQ_STR(buf_cstr(&r->hdrs[0]), "Content-Type=application/json\n");
    CHECK(strncmp(buf_cstr(&r->data[0]), "{\"_id\":\"d\"", 10) == 0);
    CHECK_EQ_STR(buf_cstr(&r->hdrs[1]),
                 "Content-Disposition=attachment; filename=\"a.txt\"\n"
                 "Content-Type=text/plain\nContent-Length=5\n");
    CHECK_EQ_STR(buf_cstr(&r->data[1]), "hello");
    CHECK_EQ_INT(r->data[2].len, 0);
    char want[160];
    snprintf(want, sizeof want, "Content-Disposition=attachment; filename=\"q\\\"x\"\n"
             "Content-Type=image/png\nContent-Length=%zu\nContent-Encoding=gzip\n", ATT2_LEN);
    CHECK_EQ_STR(buf_cstr(&r->hdrs[3]), want);
    CHECK_EQ_INT(r->data[3].len, ATT2_LEN);
    CHECK(r->data[3].len == ATT2_LEN && memcmp(r->data[3].data, ATT2, ATT2_LEN) == 0);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(r->ended[i], 1);
}

static void test_writer_bytes(void) {
    buf b;
    buf_init(&b, 0);
    multipart_put_ctype(&b, "related", "abc");
    CHECK_EQ_STR(buf_cstr(&b), "multipart/related; boundary=\"abc\"");
    buf_reset(&b);
    multipart_put_doc_head(&b, "abc");
    buf_puts(&b, "{}");
    multipart_put_att_head(&b, "abc", "a.png", 5, "image/png", 5, false);
    buf_puts(&b, "12345");
    multipart_put_close(&b, "abc");
    /* PROTOCOL.md §2.11, byte for byte */
    CHECK_EQ_STR(buf_cstr(&b),
                 "--abc\r\nContent-Type: application/json\r\n\r\n{}"
                 "\r\n--abc\r\nContent-Disposition: attachment; filename=\"a.png\"\r\n"
                 "Content-Type: image/png\r\nContent-Length: 5\r\n\r\n12345\r\n--abc--");
    buf_reset(&b);
    CHECK_EQ_INT(multipart_put_att_head(&b, "abc", "a\r\nX: y", 7, "t", 1, false), MIMEO_EINVAL);
    CHECK_EQ_INT(multipart_put_att_head(&b, "abc", "a", 1, "t\nX: y", 1, false), MIMEO_EINVAL);
    char bnd[33];
    multipart_boundary_new(bnd);
    CHECK_EQ_INT(strlen(bnd), 32);
    buf_destroy(&b);
}

static void test_round_trip_every_split(void) {
    buf b;
    buf_init(&b, 0);
    write_doc(&b);
    mimeo_err e;
    /* whole */
    rec r;
    rec_init(&r);
    CHECK_EQ_INT(parse_cuts(BND, b.data, b.len, NULL, 0, &r, &e), 0);
    check_doc_parts(&r);
    rec_destroy(&r);
    /* every single split point, and every pair of split points around the delimiters */
    for (size_t c = 0; c <= b.len; c++) {
        rec_init(&r);
        int rc = parse_cuts(BND, b.data, b.len, &c, 1, &r, &e);
        CHECK_EQ_INT(rc, 0);
        if (rc == 0) check_doc_parts(&r);
        rec_destroy(&r);
        if (check_case_failed) {
            fprintf(stderr, "split at %zu\n", c);
            break;
        }
    }
    for (size_t c1 = 0; c1 <= b.len && !check_case_failed; c1 += 3) {
        for (size_t c2 = c1; c2 <= b.len && !check_case_failed; c2 += 5) {
            size_t cuts[2] = { c1, c2 };
            rec_init(&r);
            CHECK_EQ_INT(parse_cuts(BND, b.data, b.len, cuts, 2, &r, &e), 0);
            check_doc_parts(&r);
            rec_destroy(&r);
        }
    }
    /* byte by byte */
    size_t *cuts = malloc(b.len * sizeof *cuts);
    for (size_t i = 0; i < b.len; i++) cuts[i] = i;
    rec_init(&r);
    CHECK_EQ_INT(parse_cuts(BND, b.data, b.len, cuts, b.len, &r, &e), 0);
    check_doc_parts(&r);
    rec_destroy(&r);
    free(cuts);
    buf_destroy(&b);
}

static void test_content_type_and_params(void) {
    char out[64];
    CHECK_EQ_INT(multipart_param("multipart/related; boundary=\"abc\"", "boundary", out,
                                 sizeof out), 3);
    CHECK_EQ_STR(out, "abc");
    CHECK_EQ_INT(multipart_param("multipart/related;boundary=abc", "boundary", out, sizeof out), 3);
    CHECK_EQ_STR(out, "abc");
    CHECK_EQ_INT(multipart_param("multipart/mixed; charset=x; BOUNDARY = \"a\\\"b;c\" ",
                                 "boundary", out, sizeof out), 5);
    CHECK_EQ_STR(out, "a\"b;c");
    CHECK_EQ_INT(multipart_param("application/json; error=\"true\"", "error", out, sizeof out), 4);
    CHECK_EQ_STR(out, "true");
    CHECK_EQ_INT(multipart_param("application/json", "error", out, sizeof out), -1);
    CHECK_EQ_INT(multipart_param("x/y; a=\"unterminated", "a", out, sizeof out), -1);
    CHECK_EQ_INT(multipart_param("x/y; a=", "a", out, sizeof out), -1);
    CHECK_EQ_INT(multipart_param("x/y; =b", "a", out, sizeof out), -1);
    CHECK_EQ_INT(multipart_param("x/y; a=b", "a", out, 1), -1);  /* no room */
    CHECK_EQ_INT(multipart_param("x/y; b=\"1;a=2\"; a=3", "a", out, sizeof out), 1);
    CHECK_EQ_STR(out, "3");
    CHECK(multipart_type_is("Multipart/Related; boundary=x", "multipart/related"));
    CHECK(multipart_type_is(" application/json ", "application/json"));
    CHECK(!multipart_type_is("application/jsonx", "application/json"));
    CHECK(!multipart_type_is(NULL, "application/json"));

    /* the Content-Type forms a parser must accept (PROTOCOL.md §3.3) */
    static const char body[] = "--xyz\r\nContent-Type: application/json\r\n\r\n{}\r\n--xyz--";
    const char *ctypes[] = { "multipart/related; boundary=\"xyz\"",
                             "multipart/related; boundary=xyz",
                             "multipart/mixed;boundary=\"xyz\"" };
    for (size_t i = 0; i < 3; i++) {
        rec r;
        rec_init(&r);
        mimeo_err e;
        CHECK_EQ_INT(parse_whole(ctypes[i], body, sizeof body - 1, &r, &e), 0);
        CHECK_EQ_INT(r.nparts, 1);
        CHECK_EQ_STR(buf_cstr(&r.data[0]), "{}");
        rec_destroy(&r);
    }
}

static void test_preamble_padding_epilogue(void) {
    static const char body[] =
        "this is a preamble\r\n--b \t\r\nX-A: 1\r\n\r\none\r\n--b\r\n\r\n\r\n--b--\r\nepilogue --b";
    rec r;
    rec_init(&r);
    mimeo_err e;
    CHECK_EQ_INT(parse_whole("multipart/mixed; boundary=b", body, sizeof body - 1, &r, &e), 0);
    CHECK_EQ_INT(r.nparts, 2);
    CHECK_EQ_STR(buf_cstr(&r.hdrs[0]), "X-A=1\n");
    CHECK_EQ_STR(buf_cstr(&r.data[0]), "one");
    CHECK_EQ_INT(r.hdrs[1].len, 0);    /* a part with no headers */
    CHECK_EQ_INT(r.data[1].len, 0);
    rec_destroy(&r);
}

/* CouchDB's open_revs reply: multipart/mixed whose parts are JSON or multipart/related;
 * the consumer parses a related part with a nested parser fed from the outer one. */
typedef struct nest {
    rec              outer;
    rec              inner;
    multipart_parser in;
    bool             nested;
    size_t           nested_parts;
} nest;

static int nest_begin(void *ctx, const multipart_part *p, mimeo_err *err) {
    nest *n = ctx;
    int rc = rec_begin(&n->outer, p, err);
    if (rc) return rc;
    const char *ct = multipart_header(p, "content-type");
    n->nested = multipart_type_is(ct, "multipart/related");
    if (n->nested) return multipart_init(&n->in, ct, &rec_h, &n->inner, err);
    return 0;
}

static int nest_data(void *ctx, const char *d, size_t len, mimeo_err *err) {
    nest *n = ctx;
    if (n->nested) return multipart_feed(&n->in, d, len, err);
    return rec_data(&n->outer, d, len, err);
}

static int nest_end(void *ctx, mimeo_err *err) {
    nest *n = ctx;
    int rc = 0;
    if (n->nested) {
        rc = multipart_finish(&n->in, err);
        multipart_destroy(&n->in);
        n->nested = false;
        n->nested_parts++;
    }
    return rc ? rc : rec_end(&n->outer, err);
}

static void test_nested_mixed(void) {
    static const multipart_handlers nh = { nest_begin, nest_data, nest_end };
    buf b, ct;
    buf_init(&b, 0);
    buf_init(&ct, 0);
    /* As chttpd_db:send_docs_multipart lays it out. */
    buf_puts(&b, "--outer");
    buf_puts(&b, "\r\nContent-Type: ");
    multipart_put_ctype(&ct, "related", BND);
    buf_puts(&b, buf_cstr(&ct));
    buf_puts(&b, "\r\n\r\n");
    write_doc(&b);
    buf_puts(&b, "\r\n--outer");
    buf_puts(&b, "\r\nContent-Type: application/json\r\n\r\n{\"_id\":\"x\"}\r\n--outer");
    buf_puts(&b, "\r\nContent-Type: application/json; error=\"true\"\r\n\r\n"
                 "{\"missing\":\"3-abc\"}\r\n--outer");
    buf_puts(&b, "--");
    for (size_t c = 0; c <= b.len; c += 7) {
        nest n;
        memset(&n, 0, sizeof n);
        rec_init(&n.outer);
        rec_init(&n.inner);
        multipart_parser p;
        mimeo_err e;
        memset(&e, 0, sizeof e);
        int rc = multipart_init(&p, "multipart/mixed; boundary=\"outer\"", &nh, &n, &e);
        if (!rc) rc = multipart_feed(&p, b.data, c, &e);
        if (!rc) rc = multipart_feed(&p, b.data + c, b.len - c, &e);
        if (!rc) rc = multipart_finish(&p, &e);
        multipart_destroy(&p);
        CHECK_EQ_INT(rc, 0);
        CHECK_EQ_INT(n.outer.nparts, 3);
        CHECK_EQ_INT(n.nested_parts, 1);
        check_doc_parts(&n.inner);
        CHECK_EQ_STR(buf_cstr(&n.outer.data[1]), "{\"_id\":\"x\"}");
        char v[16];
        CHECK_EQ_INT(multipart_param(strchr(buf_cstr(&n.outer.hdrs[2]), '=') + 1, "error", v,
                                     sizeof v), 4);
        rec_destroy(&n.outer);
        rec_destroy(&n.inner);
        if (check_case_failed) break;
    }
    buf_destroy(&b);
    buf_destroy(&ct);
}

/* Every malformed body: MIMEO_EINVAL, a bad_request, and nothing after the error. */
static void test_malformed(void) {
    static const struct { const char *ctype, *body; } bad[] = {
        { "application/json", "{}" },
        { "multipart/related", "--b\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=\"\"", "--\r\n\r\nx\r\n----" },
        { "multipart/related; boundary=\"unterminated", "x" },
        { "multipart/related; boundary=b", "" },
        { "multipart/related; boundary=b", "no delimiter at all" },
        { "multipart/related; boundary=b", "--b\r\n\r\ncut" },
        { "multipart/related; boundary=b", "--b\r\nContent-Type: x\r\n" },
        { "multipart/related; boundary=b", "--bX\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=b", "--b-x" },
        { "multipart/related; boundary=b", "--b\rx" },
        { "multipart/related; boundary=b", "--b \tx" },
        { "multipart/related; boundary=b", "--b\r\nno colon\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=b", "--b\r\n: empty name\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=b", "--b\r\nBad Name: x\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=b", "--b\r\nA: b\nC: d\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=b", "--b\r\nA: b\r\n folded\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=b", "--b\r\nContent-Length: 2\r\n\r\nxyz\r\n--b--" },
        { "multipart/related; boundary=b", "--b\r\nContent-Length: 4\r\n\r\nxyz\r\n--b--" },
        { "multipart/related; boundary=b", "--b\r\nContent-Length: -1\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=b",
          "--b\r\nContent-Length: 99999999999999999999999\r\n\r\nx\r\n--b--" },
        { "multipart/related; boundary=b",
          "--b\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx\r\n--b--" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rec r;
        rec_init(&r);
        mimeo_err e;
        int rc = parse_whole(bad[i].ctype, bad[i].body, strlen(bad[i].body), &r, &e);
        if (rc != MIMEO_EINVAL || strcmp(e.error, "bad_request") != 0)
            fprintf(stderr, "malformed case %zu: rc %d error %s\n", i, rc, e.error);
        CHECK_EQ_INT(rc, MIMEO_EINVAL);
        CHECK_EQ_STR(e.error, "bad_request");
        rec_destroy(&r);
    }
    /* A header block over the cap, and more headers than kept. */
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "--b\r\n");
    for (int i = 0; i < 2000; i++) buf_puts(&b, "X-Long: 0123456789\r\n");
    buf_puts(&b, "\r\nx\r\n--b--");
    rec r;
    rec_init(&r);
    mimeo_err e;
    CHECK_EQ_INT(parse_whole("multipart/related; boundary=b", b.data, b.len, &r, &e),
                 MIMEO_EINVAL);
    rec_destroy(&r);
    buf_reset(&b);
    buf_puts(&b, "--b\r\n");
    for (int i = 0; i < MULTIPART_NHEADERS_MAX + 1; i++) buf_puts(&b, "X: 1\r\n");
    buf_puts(&b, "\r\nx\r\n--b--");
    rec_init(&r);
    CHECK_EQ_INT(parse_whole("multipart/related; boundary=b", b.data, b.len, &r, &e),
                 MIMEO_EINVAL);
    rec_destroy(&r);
    /* A boundary with a CR, and one too long. */
    multipart_parser p;
    CHECK_EQ_INT(multipart_init_boundary(&p, "a\rb", 3, &rec_h, &r, &e), MIMEO_EINVAL);
    multipart_destroy(&p);
    char lng[MULTIPART_BOUNDARY_MAX + 2];
    memset(lng, 'a', sizeof lng);
    CHECK_EQ_INT(multipart_init_boundary(&p, lng, sizeof lng, &rec_h, &r, &e), MIMEO_EINVAL);
    multipart_destroy(&p);
    /* After an error, feeding again repeats it. */
    rec_init(&r);
    CHECK_EQ_INT(multipart_init_boundary(&p, "b", 1, &rec_h, &r, &e), 0);
    CHECK_EQ_INT(multipart_feed(&p, "--b-x", 5, &e), MIMEO_EINVAL);
    CHECK_EQ_INT(multipart_feed(&p, "\r\n\r\n", 4, &e), MIMEO_EINVAL);
    CHECK_EQ_INT(multipart_finish(&p, &e), MIMEO_EINVAL);
    CHECK_EQ_INT(r.nparts, 0);
    multipart_destroy(&p);
    rec_destroy(&r);
    buf_destroy(&b);
}

static void test_callback_error(void) {
    buf b;
    buf_init(&b, 0);
    write_doc(&b);
    rec r;
    rec_init(&r);
    r.fail_at_begin = 2;
    mimeo_err e;
    CHECK_EQ_INT(parse_cuts(BND, b.data, b.len, NULL, 0, &r, &e), MIMEO_ETOOLARGE);
    CHECK_EQ_STR(e.error, "too_large");
    CHECK_EQ_INT(r.nparts, 1);
    rec_destroy(&r);
    buf_destroy(&b);
}

/* A large part streams through in the feeder's pieces: the parser holds none of it. */
static void test_large_part_streams(void) {
    const size_t total = (size_t)8 << 20, piece = 65536;
    char *chunk = malloc(piece);
    for (size_t i = 0; i < piece; i++) chunk[i] = (char)(i * 7 + (i >> 8));
    chunk[100] = '\r';     /* near-delimiters inside the data */
    chunk[101] = '\n';
    chunk[102] = '-';
    chunk[103] = '-';
    buf head;
    buf_init(&head, 0);
    multipart_put_doc_head(&head, BND);
    buf_puts(&head, "{}");
    multipart_put_att_head(&head, BND, "big", 3, "application/octet-stream", total, false);
    rec r;
    rec_init(&r);
    multipart_parser p;
    mimeo_err e;
    memset(&e, 0, sizeof e);
    int rc = multipart_init_boundary(&p, BND, strlen(BND), &rec_h, &r, &e);
    if (!rc) rc = multipart_feed(&p, head.data, head.len, &e);
    size_t sent = 0;
    /* the data part is counted, not kept: swap the recorder's data callback */
    static const multipart_handlers count_h = { rec_begin, NULL, rec_end };
    p.h = &count_h;
    while (!rc && sent < total) {
        rc = multipart_feed(&p, chunk, piece, &e);
        sent += piece;
    }
    buf close;
    buf_init(&close, 0);
    multipart_put_close(&close, BND);
    if (!rc) rc = multipart_feed(&p, close.data, close.len, &e);
    if (!rc) rc = multipart_finish(&p, &e);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(r.nparts, 2);
    CHECK_EQ_INT(r.ended[1], 1);
    CHECK(p.hdr.alloc <= MULTIPART_HEADERS_MAX + 64);
    multipart_destroy(&p);
    rec_destroy(&r);
    buf_destroy(&head);
    buf_destroy(&close);
    free(chunk);
}

/* Random parts (random bytes drawn mostly from "\r\n-" and the boundary's letters), random
 * chunkings: the parts come back as written. */
static uint64_t rng;
static uint64_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static void test_property_random(void) {
    static const char alphabet[] = "\r\n-0123abcdef\r\r\n\n--x";
    const char *bnd = "0123";
    for (int iter = 0; iter < 400; iter++) {
        rng = (g_seed ^ 0x9E3779B97F4A7C15ULL) + (uint64_t)iter * 0xD1B54A32D192ED03ULL + 1;
        size_t nparts = 1 + rnd() % 5;
        buf body, want[5];
        buf_init(&body, 0);
        for (size_t k = 0; k < nparts; k++) {
            buf_init(&want[k], 0);
            size_t len = rnd() % 64;
            for (size_t i = 0; i < len; i++) {
                char c = alphabet[rnd() % (sizeof alphabet - 1)];
                buf_putc(&want[k], c);
            }
            /* a body may hold anything but the delimiter itself */
            if (strstr(buf_cstr(&want[k]), "\r\n--0123")) buf_reset(&want[k]);
            multipart_put_att_head(&body, bnd, "n", 1, "t", want[k].len, false);
            buf_put(&body, want[k].data, want[k].len);
        }
        multipart_put_close(&body, bnd);
        /* the leading CRLF of the first delimiter is optional */
        const char *start = body.data;
        size_t blen = body.len;
        if (rnd() & 1) { start += 2; blen -= 2; }
        size_t ncuts = rnd() % 8, cuts[8];
        for (size_t i = 0; i < ncuts; i++) cuts[i] = blen ? rnd() % (blen + 1) : 0;
        for (size_t i = 1; i < ncuts; i++)   /* sorted */
            for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
                size_t t = cuts[j]; cuts[j] = cuts[j - 1]; cuts[j - 1] = t;
            }
        rec r;
        rec_init(&r);
        mimeo_err e;
        int rc = parse_cuts(bnd, start, blen, cuts, ncuts, &r, &e);
        bool ok = rc == 0 && r.nparts == nparts;
        for (size_t k = 0; ok && k < nparts; k++)
            ok = r.data[k].len == want[k].len &&
                 (want[k].len == 0 || memcmp(r.data[k].data, want[k].data, want[k].len) == 0);
        if (!ok) {
            fprintf(stderr, "property failed: seed=%" PRIu64 " iteration=%d rc=%d (%s)\n",
                    g_seed, iter, rc, e.reason);
            CHECK(ok);
        }
        rec_destroy(&r);
        for (size_t k = 0; k < nparts; k++) buf_destroy(&want[k]);
        buf_destroy(&body);
        if (!ok) break;
    }
}

int main(int argc, char **argv) {
    g_seed = argc > 1 ? strtoull(argv[1], NULL, 10) : (uint64_t)time(NULL);
    RUN(test_writer_bytes);
    RUN(test_round_trip_every_split);
    RUN(test_content_type_and_params);
    RUN(test_preamble_padding_epilogue);
    RUN(test_nested_mixed);
    RUN(test_malformed);
    RUN(test_callback_error);
    RUN(test_large_part_streams);
    RUN(test_property_random);
    if (check_failed) fprintf(stderr, "seed=%" PRIu64 "\n", g_seed);
    return check_report();
}
