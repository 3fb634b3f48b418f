/* Unit tests of src/json: the validating event parser (syntax, UTF-8, escapes, duplicate
 * keys, depth), jval trees, document and _bulk_docs splitting, and the writers. The timing of
 * the big _bulk_docs body below is a benchmark: bench/json_speed.c (make bench). */
#include "check.h"
#include "json/json.h"

#include <stdint.h>
#include <time.h>

#define S(lit) lit, sizeof(lit) - 1

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_ok(const char *p, size_t n) {
    json_error err;
    return json_parse(p, n, NULL, NULL, NULL, &err);
}

/* Parses with a tree and writes it back compactly; "" on failure. */
static char roundtrip_buf[4096];
static const char *roundtrip(const char *p, size_t n) {
    jval *v = NULL;
    json_error err;
    roundtrip_buf[0] = 0;
    if (json_tree_parse(p, n, NULL, &v, &err)) return roundtrip_buf;
    buf b;
    buf_init(&b, 0);
    if (json_put_jval(&b, v) == 0 && b.len < sizeof roundtrip_buf)
        memcpy(roundtrip_buf, b.data, b.len + 1);
    buf_destroy(&b);
    jval_free(v);
    return roundtrip_buf;
}

/* ---- event parser ------------------------------------------------------------------------ */

static void test_syntax(void) {
    const char *good[] = {
        "{}", "[]", "1", "-0.5e+10", "\"x\"", "true", "null", " \n\t{ \"a\" : [ 1 , 2 ] } \n",
        "{\"a\":{\"b\":[{},[],\"\"]}}", "\"\\u0000\"", "\"\\ud83d\\ude00\"", "\"\\\\ud800\"", "\v1\f",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        int rc = parse_ok(good[i], strlen(good[i]));
        if (rc) fprintf(stderr, "refused: %s\n", good[i]);
        CHECK_EQ_INT(rc, 0);
    }
    const char *bad[] = {
        "", " ", "{", "}", "[1,]", "{\"a\":1,}", "{\"a\"}", "01", "-", "1.", "1e", "+1",
        "[1] x", "1 2", "{} {}", "/* c */ 1", "[1 // c\n]", "'a'", "\"a\x01\"", "nul",
        "{a:1}", "[\"\\x\"]", "\"\\u12\"", "NaN", "[1,,2]", "\"abc",
        /* a value followed by an unterminated string (yajl took these whole) */
        "{}\"abc", "1 \"x", "true\"x", "\"a\"\"b", "{\"a\":1}\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_error err;
        int rc = json_parse(bad[i], strlen(bad[i]), NULL, NULL, NULL, &err);
        if (rc != MIMEO_EBADJSON) fprintf(stderr, "accepted: %s\n", bad[i]);
        CHECK_EQ_INT(rc, MIMEO_EBADJSON);
        CHECK_EQ_INT(err.code, MIMEO_EBADJSON);
        CHECK_EQ_STR(err.error, "bad_request");
        CHECK_EQ_STR(err.reason, "invalid UTF-8 JSON");
    }
    json_error err;
    CHECK_EQ_INT(json_parse(NULL, 0, NULL, NULL, NULL, &err), MIMEO_EBADJSON);
    CHECK_EQ_INT(json_parse(S("{}"), NULL, NULL, NULL, NULL), 0); /* err may be NULL */
}

typedef struct rec { buf out; int stop_at; int events; } rec;

static int rec_ev(rec *r, const char *tag, const char *s, size_t n) {
    buf_puts(&r->out, tag);
    if (s) { buf_putc(&r->out, '('); buf_put(&r->out, s, n); buf_putc(&r->out, ')'); }
    buf_putc(&r->out, ' ');
    return ++r->events == r->stop_at ? 42 : 0;
}
static int r_null(void *c) { return rec_ev(c, "null", NULL, 0); }
static int r_bool(void *c, bool v) { return rec_ev(c, v ? "true" : "false", NULL, 0); }
static int r_num(void *c, const char *s, size_t n) { return rec_ev(c, "num", s, n); }
static int r_str(void *c, const char *s, size_t n) { return rec_ev(c, "str", s, n); }
static int r_key(void *c, const char *s, size_t n) { return rec_ev(c, "key", s, n); }
static int r_sm(void *c) { return rec_ev(c, "{", NULL, 0); }
static int r_em(void *c) { return rec_ev(c, "}", NULL, 0); }
static int r_sa(void *c) { return rec_ev(c, "[", NULL, 0); }
static int r_ea(void *c) { return rec_ev(c, "]", NULL, 0); }
static const json_handlers rec_h = {r_null, r_bool, r_num, r_str, r_sm, r_key, r_em, r_sa, r_ea};

static void test_events(void) {
    rec r = {BUF_INIT, 0, 0};
    json_error err;
    const char *t = "{\"a\":[1,-2.50E+3,true,false,null,\"x\\n\"],\"b\":{}}";
    CHECK_EQ_INT(json_parse(t, strlen(t), NULL, &rec_h, &r, &err), 0);
    CHECK_EQ_STR(buf_cstr(&r.out), "{ key(a) [ num(1) num(-2.50E+3) true false null str(x\n) ] "
                                   "key(b) { } } ");
    buf_destroy(&r.out);

    /* a handler's non-zero return stops the parse and comes back unchanged, err untouched */
    rec r2 = {BUF_INIT, 3, 0};
    CHECK_EQ_INT(json_parse(t, strlen(t), NULL, &rec_h, &r2, &err), 42);
    CHECK_EQ_INT(r2.events, 3);
    CHECK_EQ_INT(err.code, 0);
    buf_destroy(&r2.out);

    /* a handler's return that stops the parse on its first event must come back as is */
    rec r3 = {BUF_INIT, 1, 0};
    CHECK_EQ_INT(json_parse(S("[1]"), NULL, &rec_h, &r3, &err), 42);
    buf_destroy(&r3.out);

    /* handlers may be partly NULL */
    json_handlers only_num = {0};
    only_num.on_number = r_num;
    rec r4 = {BUF_INIT, 0, 0};
    CHECK_EQ_INT(json_parse(S("{\"k\":[\"s\",7]}"), NULL, &only_num, &r4, &err), 0);
    CHECK_EQ_STR(buf_cstr(&r4.out), "num(7) ");
    buf_destroy(&r4.out);
}

static void test_big_numbers(void) {
    const char *nums[] = {
        "123456789012345678901234567890", "-0.000000000000000000000000000001",
        "1.7976931348623157e+309", "1E400", "-0", "0.10", "2.50", "1e-0005",
    };
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) {
        char in[128], want[128];
        snprintf(in, sizeof in, "[ %s ]", nums[i]);
        snprintf(want, sizeof want, "[%s]", nums[i]);
        CHECK_EQ_STR(roundtrip(in, strlen(in)), want);
        /* and through a document body */
        snprintf(in, sizeof in, "{\"n\" : %s}", nums[i]);
        snprintf(want, sizeof want, "{\"n\":%s}", nums[i]);
        json_doc d;
        json_error err;
        CHECK_EQ_INT(json_doc_parse(in, strlen(in), NULL, &d, &err), 0);
        CHECK_EQ_STR(buf_cstr(&d.body), want);
        json_doc_destroy(&d);
    }
}

/* ---- duplicate keys ---------------------------------------------------------------------- */

static void expect_dup(const char *t, size_t n, const char *reason) {
    json_error err;
    int rc = json_parse(t, n, NULL, NULL, NULL, &err);
    CHECK_EQ_INT(rc, MIMEO_EBADJSON);
    CHECK_EQ_STR(err.error, "bad_request");
    if (reason) CHECK_EQ_STR(err.reason, reason);
    jval *v = (jval *)1;
    CHECK_EQ_INT(json_tree_parse(t, n, NULL, &v, &err), MIMEO_EBADJSON);
    CHECK(v == NULL);
}

static void test_duplicate_keys(void) {
    expect_dup(S("{\"a\":1,\"a\":2}"), "Duplicate key \"a\" in JSON object");
    expect_dup(S("{\"a\":1,\"b\":2,\"\\u0061\":3}"), "Duplicate key \"a\" in JSON object");
    expect_dup(S("{\"\":1,\"\":2}"), "Duplicate key \"\" in JSON object");
    /* depth 5 */
    expect_dup(S("[{\"x\":[{\"y\":{\"z\":{\"q\":1,\"r\":2,\"q\":3}}}]}]"),
               "Duplicate key \"q\" in JSON object");
    /* keys of an outer object stay known while an inner one is open and after it closes */
    expect_dup(S("{\"a\":{\"b\":1,\"c\":{}},\"b\":0,\"a\":2}"), "Duplicate key \"a\" in JSON object");
    CHECK_EQ_INT(parse_ok(S("{\"a\":{\"a\":{\"a\":1}},\"b\":{\"a\":2}}")), 0);
    CHECK_EQ_INT(parse_ok(S("[{\"a\":1},{\"a\":2},{\"a\":3}]")), 0);
    CHECK_EQ_INT(parse_ok(S("{\"a\":1,\"A\":2,\"a \":3,\"\":4}")), 0);
    /* a long key is quoted shortened */
    char big[700];
    int k = snprintf(big, sizeof big, "{\"");
    for (int i = 0; i < 300; i++) big[k++] = 'k';
    memcpy(big + k, "\":1,\"", 5); k += 5;
    for (int i = 0; i < 300; i++) big[k++] = 'k';
    memcpy(big + k, "\":2}", 4); k += 4;
    json_error err;
    CHECK_EQ_INT(json_parse(big, (size_t)k, NULL, NULL, NULL, &err), MIMEO_EBADJSON);
    CHECK(strstr(err.reason, "Duplicate key \"kkkk") == err.reason);
    CHECK(strstr(err.reason, "...\" in JSON object") != NULL);
    /* documents and bulk bodies too */
    json_doc d;
    CHECK_EQ_INT(json_doc_parse(S("{\"_id\":\"a\",\"x\":{\"y\":1,\"y\":1}}"), NULL, &d, &err),
                 MIMEO_EBADJSON);
    CHECK_EQ_STR(err.reason, "Duplicate key \"y\" in JSON object");
    json_doc_destroy(&d);
    CHECK_EQ_INT(json_doc_parse(S("{\"_id\":\"a\",\"_id\":\"b\"}"), NULL, &d, &err),
                 MIMEO_EBADJSON);
    json_bulk bk;
    CHECK_EQ_INT(json_bulk_parse(S("{\"docs\":[{\"a\":1}],\"docs\":[]}"), NULL, &bk, &err),
                 MIMEO_EBADJSON);
    CHECK_EQ_INT(bk.count, 0);
}

/* 100k distinct keys must be linear; a duplicate at the very end must still be seen. */
static void test_many_keys(void) {
    buf b;
    buf_init(&b, 0);
    buf_putc(&b, '{');
    for (int i = 0; i < 100000; i++) buf_printf(&b, "%s\"key%d\":%d", i ? "," : "", i, i);
    size_t open_len = b.len;
    buf_putc(&b, '}');
    double t0 = now_s();
    CHECK_EQ_INT(parse_ok(b.data, b.len), 0);
    double dt = now_s() - t0;
    CHECK(dt < 2.0);
    b.len = open_len;
    buf_puts(&b, ",\"key77777\":0}");
    json_error err;
    CHECK_EQ_INT(json_parse(b.data, b.len, NULL, NULL, NULL, &err), MIMEO_EBADJSON);
    CHECK_EQ_STR(err.reason, "Duplicate key \"key77777\" in JSON object");
    /* keys with escapes are copied, not pointed to: check them in a big object too */
    buf_reset(&b);
    buf_putc(&b, '{');
    for (int i = 0; i < 1000; i++) buf_printf(&b, "%s\"\\u006b%d\":1", i ? "," : "", i);
    buf_puts(&b, ",\"k500\":2}");
    CHECK_EQ_INT(json_parse(b.data, b.len, NULL, NULL, NULL, &err), MIMEO_EBADJSON);
    CHECK_EQ_STR(err.reason, "Duplicate key \"k500\" in JSON object");
    buf_destroy(&b);
}

/* ---- depth ------------------------------------------------------------------------------- */

static char *nested(size_t depth, size_t *len, bool objects) {
    size_t per = objects ? 6 : 1; /* {"a": … } */
    char *p = malloc(depth * (per + 1) + 2);
    size_t n = 0;
    for (size_t i = 0; i < depth; i++) {
        if (objects) { memcpy(p + n, "{\"a\":", 5); n += 5; }
        else p[n++] = '[';
    }
    p[n++] = '1';
    for (size_t i = 0; i < depth; i++) p[n++] = objects ? '}' : ']';
    *len = n;
    return p;
}

static void test_depth(void) {
    size_t n;
    json_error err;
    char *p = nested(256, &n, false);
    CHECK_EQ_INT(parse_ok(p, n), 0);
    free(p);
    p = nested(257, &n, false);
    CHECK_EQ_INT(json_parse(p, n, NULL, NULL, NULL, &err), MIMEO_EBADJSON);
    CHECK_EQ_STR(err.error, "bad_request");
    CHECK_EQ_STR(err.reason, "JSON nesting deeper than 256");
    free(p);
    p = nested(256, &n, true);
    jval *v = NULL;
    CHECK_EQ_INT(json_tree_parse(p, n, NULL, &v, &err), 0);
    buf b;
    buf_init(&b, 0);
    CHECK_EQ_INT(json_put_jval(&b, v), 0);
    CHECK(b.len == n && memcmp(b.data, p, n) == 0);
    buf_destroy(&b);
    jval_free(v);
    free(p);
    p = nested(257, &n, true);
    CHECK_EQ_INT(json_tree_parse(p, n, NULL, &v, &err), MIMEO_EBADJSON);
    free(p);

    /* a custom cap, counted over objects and arrays together */
    json_limits lim = {3, 0};
    CHECK_EQ_INT(json_parse(S("[{\"a\":[1]}]"), &lim, NULL, NULL, &err), 0);
    CHECK_EQ_INT(json_parse(S("[{\"a\":[[1]]}]"), &lim, NULL, NULL, &err), MIMEO_EBADJSON);
    CHECK_EQ_STR(err.reason, "JSON nesting deeper than 3");

    /* 100k deep: refused quickly, by every entry point */
    double t0 = now_s();
    p = nested(100000, &n, false);
    CHECK_EQ_INT(parse_ok(p, n), MIMEO_EBADJSON);
    CHECK_EQ_INT(json_tree_parse(p, n, NULL, &v, &err), MIMEO_EBADJSON);
    free(p);
    p = nested(100000, &n, true);
    json_doc d;
    CHECK_EQ_INT(json_doc_parse(p, n, NULL, &d, &err), MIMEO_EBADJSON);
    CHECK_EQ_STR(err.reason, "JSON nesting deeper than 256");
    free(p);
    CHECK(now_s() - t0 < 1.0);

    /* a big cap works too: the tree is freed and written without recursion */
    lim.max_depth = 100000;
    p = nested(100000, &n, true);
    CHECK_EQ_INT(json_tree_parse(p, n, &lim, &v, &err), 0);
    buf_init(&b, 0);
    CHECK_EQ_INT(json_put_jval(&b, v), 0);
    CHECK(b.len == n && memcmp(b.data, p, n) == 0);
    buf_destroy(&b);
    jval_free(v);
    free(p);
}

/* ---- UTF-8 ------------------------------------------------------------------------------- */

static void test_utf8(void) {
    struct { const char *s; size_t n; } bad[] = {
        {S("\"\xc0\x80\"")},             /* overlong NUL */
        {S("\"\xc1\xbf\"")},             /* overlong 2-byte */
        {S("\"\xe0\x80\xaf\"")},         /* overlong 3-byte */
        {S("\"\xf0\x80\x80\xaf\"")},     /* overlong 4-byte */
        {S("\"\xed\xa0\x80\"")},         /* encoded high surrogate */
        {S("\"\xed\xbf\xbf\"")},         /* encoded low surrogate */
        {S("\"\xed\xa0\xbd\xed\xb8\x80\"")}, /* CESU-8 pair */
        {S("\"\xf4\x90\x80\x80\"")},     /* past U+10FFFF */
        {S("\"\xf5\x80\x80\x80\"")},
        {S("\"\xf8\x88\x80\x80\x80\"")}, /* 5-byte form */
        {S("\"\xe2\x82\"")},             /* truncated */
        {S("\"\xe2\x82")},               /* truncated at the end of input */
        {S("\"\x80\"")},                 /* lone continuation */
        {S("\"a\xff\"")},
        {S("\"\xc3\x28\"")},             /* bad continuation */
        {S("{\"\xc0\x80\":1}")},         /* in a key */
        {S("{\"\xed\xa0\x80\":1}")},
        {S("{\"k\xe2\x82\":1}")},
        {S("\"\\ud800\"")},              /* escaped lone high surrogate */
        {S("\"\\udc00\"")},              /* escaped lone low surrogate */
        {S("\"\\uDBFFx\"")},
        {S("\"\\ud800\\u0041\"")},       /* high followed by a non-surrogate */
        {S("\"\\ud800\\ud800\"")},       /* high followed by high */
        {S("\"\\udc00\\ud800\"")},       /* reversed pair */
        {S("{\"\\ud800\":1}")},          /* in a key */
        {S("[\"ok\",\"\\ud83d\"]")},
        {S("\xef\xbb\xbf{}")},           /* a BOM is not JSON */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_error err;
        int rc = json_parse(bad[i].s, bad[i].n, NULL, NULL, NULL, &err);
        if (rc != MIMEO_EBADJSON) fprintf(stderr, "accepted bad UTF-8 case %zu\n", i);
        CHECK_EQ_INT(rc, MIMEO_EBADJSON);
        CHECK_EQ_STR(err.reason, "invalid UTF-8 JSON");
    }
    struct { const char *s; size_t n; const char *want; } good[] = {
        {S("\"\xc2\x80\""), "\"\xc2\x80\""},
        {S("\"\xe0\xa0\x80\""), "\"\xe0\xa0\x80\""},
        {S("\"\xed\x9f\xbf\""), "\"\xed\x9f\xbf\""},             /* U+D7FF */
        {S("\"\xee\x80\x80\""), "\"\xee\x80\x80\""},             /* U+E000 */
        {S("\"\xef\xbf\xbf\""), "\"\xef\xbf\xbf\""},             /* U+FFFF */
        {S("\"\xf0\x90\x80\x80\""), "\"\xf0\x90\x80\x80\""},     /* U+10000 */
        {S("\"\xf4\x8f\xbf\xbf\""), "\"\xf4\x8f\xbf\xbf\""},     /* U+10FFFF */
        {S("\"\\ud83d\\ude00\""), "\"\xf0\x9f\x98\x80\""},
        {S("\"\\uDBFF\\uDFFF\""), "\"\xf4\x8f\xbf\xbf\""},
        {S("\"\\u00e9\\u20AC\""), "\"\xc3\xa9\xe2\x82\xac\""},
        {S("\"\\\\ud800\""), "\"\\\\ud800\""},                   /* an escaped backslash */
        {S("\"\\u0000\""), "\"\\u0000\""},
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECK_EQ_STR(roundtrip(good[i].s, good[i].n), good[i].want);

    CHECK(json_utf8_valid(S("plain ascii text that is long enough for words")));
    CHECK(!json_utf8_valid(S("plain ascii text that is long enough\xff")));
    CHECK(json_utf8_valid("", 0));
    CHECK_EQ_INT(json_utf8_prefix(S("ab\xc3\xa9"), 3), 2);
    CHECK_EQ_INT(json_utf8_prefix(S("ab\xc3\xa9"), 4), 4);
    CHECK_EQ_INT(json_utf8_prefix(S("ab\xc3\xa9z"), 4), 4);
}

/* ---- trees ------------------------------------------------------------------------------- */

static void test_tree(void) {
    jval *v = NULL;
    json_error err;
    const char *t = "{\"start\":3,\"ids\":[\"c\",\"b\",\"a\"],\"s\":\"x\\u0000y\",\"f\":1.5,"
                    "\"e\":1e2,\"o\":{},\"t\":true,\"n\":null}";
    CHECK_EQ_INT(json_tree_parse(t, strlen(t), NULL, &v, &err), 0);
    CHECK(v && v->type == JV_OBJECT && v->count == 8);
    int64_t i = 0;
    CHECK(jval_as_i64(jval_get(v, "start"), &i) && i == 3);
    jval *ids = jval_get(v, "ids");
    CHECK(ids && ids->type == JV_ARRAY && ids->count == 3);
    CHECK_EQ_STR(ids->items[0]->str, "c");
    jval *s = jval_get(v, "s");
    CHECK(s && s->type == JV_STRING && s->len == 3 && memcmp(s->str, "x\0y", 3) == 0);
    CHECK(!jval_as_i64(jval_get(v, "f"), &i));
    CHECK(!jval_as_i64(jval_get(v, "e"), &i));
    CHECK(!jval_as_i64(jval_get(v, "s"), &i));
    CHECK(jval_get(v, "missing") == NULL);
    CHECK(jval_get(ids, "start") == NULL);
    CHECK(jval_get(v, "t")->boolean);
    CHECK(jval_get(v, "n")->type == JV_NULL);
    CHECK_EQ_STR(roundtrip(t, strlen(t)), t);
    jval_free(v);
    jval_free(NULL);

    struct { const char *t; bool ok; int64_t v; } ints[] = {
        {"0", true, 0}, {"-0", true, 0}, {"9223372036854775807", true, INT64_MAX},
        {"-9223372036854775808", true, INT64_MIN}, {"9223372036854775808", false, 0},
        {"-9223372036854775809", false, 0}, {"99999999999999999999", false, 0},
        {"1.0", false, 0}, {"1E3", false, 0}, {"-12", true, -12},
    };
    for (size_t k = 0; k < sizeof ints / sizeof *ints; k++) {
        CHECK_EQ_INT(json_tree_parse(ints[k].t, strlen(ints[k].t), NULL, &v, &err), 0);
        int64_t got = 7;
        bool ok = jval_as_i64(v, &got);
        CHECK_EQ_INT(ok, ints[k].ok);
        if (ok) CHECK_EQ_INT(got, ints[k].v);
        jval_free(v);
    }
    CHECK_EQ_INT(json_tree_parse(S("{\"a\":1} x"), NULL, &v, &err), MIMEO_EBADJSON);
    CHECK(v == NULL);
    CHECK_EQ_STR(err.reason, "invalid UTF-8 JSON");
    CHECK_EQ_STR(roundtrip(S(" [ \"\\/\\b\\f\\n\\r\\t\\\"\\\\\\u001f\" , { } , [ ] ] ")),
                 "[\"/\\b\\f\\n\\r\\t\\\"\\\\\\u001f\",{},[]]");
}

/* ---- documents --------------------------------------------------------------------------- */

static void test_doc_body(void) {
    json_doc d;
    json_error err;
    const char *t = " { \"_id\" : \"doc1\" , \"a\" : [ 1 , 2.50 , { \"b\" : null } ] ,"
                    " \"s\" : \"\\u00e9\\n\\\"\\/\\u001F\" , \"_rev\" : \"1-abc\" ,"
                    " \"t\" : true , \"f\":false, \"e\":{}, \"z\":[[]] } ";
    CHECK_EQ_INT(json_doc_parse(t, strlen(t), NULL, &d, &err), 0);
    CHECK_EQ_STR(buf_cstr(&d.body), "{\"a\":[1,2.50,{\"b\":null}],\"s\":\"\xc3\xa9\\n\\\"/"
                                    "\\u001f\",\"t\":true,\"f\":false,\"e\":{},\"z\":[[]]}");
    CHECK_EQ_STR(d.id, "doc1");
    CHECK_EQ_INT(d.id_len, 4);
    CHECK_EQ_STR(d.rev, "1-abc");
    CHECK(!d.deleted && !d.revisions && !d.attachments);
    json_doc_destroy(&d);
    json_doc_destroy(&d); /* safe twice */

    CHECK_EQ_INT(json_doc_parse(S("{}"), NULL, &d, &err), 0);
    CHECK_EQ_STR(buf_cstr(&d.body), "{}");
    CHECK(d.id == NULL && d.rev == NULL);
    json_doc_destroy(&d);

    CHECK_EQ_INT(json_doc_parse(S("{\"_id\":\"only\",\"_deleted\":true}"), NULL, &d, &err), 0);
    CHECK_EQ_STR(buf_cstr(&d.body), "{}");
    CHECK(d.deleted);
    json_doc_destroy(&d);

    /* a body that is already compact comes out byte for byte */
    const char *c = "{\"a\":\"x\",\"b\":[1,{\"c\":-1.25e-7}],\"d\":{\"e\":[true,false,null]}}";
    CHECK_EQ_INT(json_doc_parse(c, strlen(c), NULL, &d, &err), 0);
    CHECK_EQ_STR(buf_cstr(&d.body), c);
    json_doc_destroy(&d);

    /* strings copied straight from the source and strings rebuilt after an escape mix in
     * one body, as keys and as values, with the same compact form either way */
    const char *m = "{\"k\\u0041\":\"plain \xc3\xa9 / text\",\"raw\":\"a\\tb\\/\","
                    "\"\\\"q\":[\"x\",\"\\u0041\",\"\"],\"\":\"end\"}";
    CHECK_EQ_INT(json_doc_parse(m, strlen(m), NULL, &d, &err), 0);
    CHECK_EQ_STR(buf_cstr(&d.body), "{\"kA\":\"plain \xc3\xa9 / text\",\"raw\":\"a\\tb/\","
                                    "\"\\\"q\":[\"x\",\"A\",\"\"],\"\":\"end\"}");
    json_doc_destroy(&d);

    /* an id with escapes is decoded; ids may contain NUL */
    CHECK_EQ_INT(json_doc_parse(S("{\"_id\":\"a\\u0000\\u00e9\"}"), NULL, &d, &err), 0);
    CHECK_EQ_INT(d.id_len, 4);
    CHECK(memcmp(d.id, "a\0\xc3\xa9", 4) == 0);
    json_doc_destroy(&d);
}

static void expect_doc_err(const char *t, size_t n, int code, const char *error,
                           const char *reason) {
    json_doc d;
    json_error err;
    int rc = json_doc_parse(t, n, NULL, &d, &err);
    CHECK_EQ_INT(rc, code);
    CHECK_EQ_INT(err.code, code);
    CHECK_EQ_STR(err.error, error);
    CHECK_EQ_STR(err.reason, reason);
    CHECK(d.id == NULL && d.body.data == NULL && d.revisions == NULL);
    json_doc_destroy(&d);
}

static void test_doc_special(void) {
    json_doc d;
    json_error err;
    const char *t = "{\"_id\":\"x\",\"_rev\":\"2-b\",\"_revisions\":{\"start\":2,\"ids\":[\"b\",\"a\"]},"
                    "\"v\":1,\"_attachments\":{\"f.txt\":{\"stub\":true,\"length\":3}},"
                    "\"_conflicts\":[\"1-a\",{\"deep\":[1]}],\"_revs_info\":[],"
                    "\"_deleted_conflicts\":{\"a\":{}},\"_local_seq\":5,"
                    "\"_replication_state\":\"completed\",\"_replication_stats\":{\"w\":1},"
                    "\"_access\":[\"u\"],\"_deleted\":false,\"w\":{\"_x\":1}}";
    CHECK_EQ_INT(json_doc_parse(t, strlen(t), NULL, &d, &err), 0);
    CHECK_EQ_STR(buf_cstr(&d.body), "{\"v\":1,\"_replication_state\":\"completed\","
                                    "\"_replication_stats\":{\"w\":1},\"_access\":[\"u\"],"
                                    "\"w\":{\"_x\":1}}");
    CHECK(!d.deleted);
    int64_t start = 0;
    CHECK(d.revisions && jval_as_i64(jval_get(d.revisions, "start"), &start) && start == 2);
    jval *ids = jval_get(d.revisions, "ids");
    CHECK(ids && ids->count == 2 && strcmp(ids->items[1]->str, "a") == 0);
    jval *f = jval_get(d.attachments, "f.txt");
    CHECK(f && jval_get(f, "stub") && jval_get(f, "stub")->boolean);
    buf b;
    buf_init(&b, 0);
    json_put_jval(&b, d.attachments);
    CHECK_EQ_STR(buf_cstr(&b), "{\"f.txt\":{\"stub\":true,\"length\":3}}");
    buf_destroy(&b);
    json_doc_destroy(&d);

    expect_doc_err(S("{\"_id\":1}"), MIMEO_EBADID, "illegal_docid",
                   "Document id must be a string");
    expect_doc_err(S("{\"_id\":null}"), MIMEO_EBADID, "illegal_docid",
                   "Document id must be a string");
    expect_doc_err(S("{\"a\":1,\"_id\":{\"x\":1}}"), MIMEO_EBADID, "illegal_docid",
                   "Document id must be a string");
    expect_doc_err(S("{\"_rev\":7}"), MIMEO_EBADREV, "bad_request", "Invalid rev format");
    expect_doc_err(S("{\"_rev\":[\"1-a\"]}"), MIMEO_EBADREV, "bad_request", "Invalid rev format");
    expect_doc_err(S("{\"_deleted\":\"true\"}"), MIMEO_EDOCVALIDATION, "doc_validation",
                   "Bad special document member: _deleted");
    expect_doc_err(S("{\"_deleted\":1}"), MIMEO_EDOCVALIDATION, "doc_validation",
                   "Bad special document member: _deleted");
    expect_doc_err(S("{\"_revisions\":[1]}"), MIMEO_EDOCVALIDATION, "doc_validation",
                   "Bad special document member: _revisions");
    expect_doc_err(S("{\"_attachments\":\"x\"}"), MIMEO_EDOCVALIDATION, "doc_validation",
                   "Bad special document member: _attachments");
    expect_doc_err(S("{\"a\":1,\"_foo\":{\"b\":2}}"), MIMEO_EDOCVALIDATION, "doc_validation",
                   "Bad special document member: _foo");
    expect_doc_err(S("{\"_\":1}"), MIMEO_EDOCVALIDATION, "doc_validation",
                   "Bad special document member: _");
    expect_doc_err(S("{\"_replication\":1}"), MIMEO_EDOCVALIDATION, "doc_validation",
                   "Bad special document member: _replication");
    expect_doc_err(S("[{}]"), MIMEO_EINVAL, "bad_request", "Document must be a JSON object");
    expect_doc_err(S("\"doc\""), MIMEO_EINVAL, "bad_request", "Document must be a JSON object");
    expect_doc_err(S("{\"a\":1"), MIMEO_EBADJSON, "bad_request", "invalid UTF-8 JSON");
    expect_doc_err(S("{\"_id\":\"a\",\"b\":\"\\udc00\"}"), MIMEO_EBADJSON, "bad_request",
                   "invalid UTF-8 JSON");
    expect_doc_err(S(""), MIMEO_EBADJSON, "bad_request", "invalid UTF-8 JSON");
    /* a revisions tree is freed when a later member fails */
    expect_doc_err(S("{\"_revisions\":{\"start\":1,\"ids\":[\"a\"]},\"_bad\":1}"),
                   MIMEO_EDOCVALIDATION, "doc_validation", "Bad special document member: _bad");
    /* …and when the parse fails inside it */
    expect_doc_err(S("{\"_revisions\":{\"start\":1,\"ids\":[\"a\",]}}"), MIMEO_EBADJSON,
                   "bad_request", "invalid UTF-8 JSON");
}

static void test_doc_too_large(void) {
    json_limits lim = {0, 32};
    json_doc d;
    json_error err;
    /* body {"a":"0123456789012345678901"} is 30 bytes: fits; one more byte does not */
    CHECK_EQ_INT(json_doc_parse(S("{\"_id\":\"big\",\"a\":\"012345678901234567890123\"}"),
                                &lim, &d, &err), 0);
    CHECK_EQ_INT(d.body.len, 32);
    json_doc_destroy(&d);
    CHECK_EQ_INT(json_doc_parse(S("{\"_id\":\"big\",\"a\":\"0123456789012345678901234\"}"),
                                &lim, &d, &err), MIMEO_ETOOLARGE);
    CHECK_EQ_STR(err.error, "document_too_large");
    CHECK_EQ_STR(err.reason, "big");
    CHECK(d.body.data == NULL && d.id == NULL);
    json_doc_destroy(&d);
    /* the id comes after the body: not known yet */
    CHECK_EQ_INT(json_doc_parse(S("{\"a\":[\"0123456789\",\"0123456789\",\"0123456789\"],"
                                  "\"_id\":\"late\"}"), &lim, &d, &err), MIMEO_ETOOLARGE);
    CHECK_EQ_STR(err.reason, "");
    /* special members do not count */
    CHECK_EQ_INT(json_doc_parse(S("{\"_id\":\"0123456789012345678901234567890123456789\","
                                  "\"_revisions\":{\"start\":1,\"ids\":[\"0123456789012345678901234567890123456789\"]}}"),
                                &lim, &d, &err), 0);
    json_doc_destroy(&d);
}

/* ---- _bulk_docs -------------------------------------------------------------------------- */

static void test_bulk(void) {
    json_bulk bk;
    json_error err;
    /* the document cap: at the cap the body parses; one more entry of any kind is refused
     * with CouchDB's error, even when it would be a bad document or the text a bad body */
    const char *two = "{\"docs\":[{\"a\":1},{\"b\":2}]}";
    CHECK_EQ_INT(json_bulk_parse_revs(two, strlen(two), NULL, 0, 2, &bk, &err), 0);
    CHECK_EQ_INT(bk.count, 2);
    json_bulk_destroy(&bk);
    const char *over[] = {"{\"docs\":[{\"a\":1},{\"b\":2},{\"c\":3}]}",
                          "{\"docs\":[{},{},7]}", "{\"docs\":[{},{},{\"x\":"};
    for (size_t i = 0; i < 3; i++) {
        CHECK_EQ_INT(json_bulk_parse_revs(over[i], strlen(over[i]), NULL, 0, 2, &bk, &err),
                     MIMEO_ETOOLARGE);
        CHECK_EQ_STR(err.error, "max_bulk_docs_count_exceeded");
        CHECK_EQ_STR(err.reason,
                     "More than 2 documents in one request ([couchdb] max_bulk_docs_count).");
        CHECK(bk.count == 0 && bk.docs == NULL);
    }
    CHECK_EQ_INT(json_bulk_parse_revs(over[0], strlen(over[0]), NULL, 0, 0, &bk, &err), 0);
    CHECK_EQ_INT(bk.count, 3);
    json_bulk_destroy(&bk);
    const char *t = "{\"new_edits\":false,\"docs\":[{\"_id\":\"a\",\"_rev\":\"1-x\",\"v\":1},"
                    "{\"_id\":\"b\",\"_deleted\":true,\"_revisions\":{\"start\":1,\"ids\":[\"y\"]}},"
                    "{}],\"all_or_nothing\":true}";
    CHECK_EQ_INT(json_bulk_parse(t, strlen(t), NULL, &bk, &err), 0);
    CHECK_EQ_INT(bk.count, 3);
    CHECK(!bk.new_edits);
    CHECK(bk.all_or_nothing);
    CHECK_EQ_STR(bk.docs[0].id, "a");
    CHECK_EQ_STR(bk.docs[0].rev, "1-x");
    CHECK_EQ_STR(buf_cstr(&bk.docs[0].body), "{\"v\":1}");
    CHECK(bk.docs[1].deleted && bk.docs[1].revisions);
    CHECK_EQ_STR(buf_cstr(&bk.docs[1].body), "{}");
    CHECK(bk.docs[2].id == NULL);
    CHECK_EQ_STR(buf_cstr(&bk.docs[2].body), "{}");
    json_bulk_destroy(&bk);

    /* new_edits after docs; unknown members (even holding a "docs" key) ignored */
    t = "{\"x\":{\"docs\":1,\"y\":[{}]},\"docs\":[{\"a\":[{\"b\":{}}]}],\"w\":[1,[2]],"
        "\"new_edits\":false}";
    CHECK_EQ_INT(json_bulk_parse(t, strlen(t), NULL, &bk, &err), 0);
    CHECK_EQ_INT(bk.count, 1);
    CHECK(!bk.new_edits && !bk.all_or_nothing);
    CHECK_EQ_STR(buf_cstr(&bk.docs[0].body), "{\"a\":[{\"b\":{}}]}");
    json_bulk_destroy(&bk);

    CHECK_EQ_INT(json_bulk_parse(S("{\"docs\":[]}"), NULL, &bk, &err), 0);
    CHECK_EQ_INT(bk.count, 0);
    CHECK(bk.new_edits);
    json_bulk_destroy(&bk);

    CHECK_EQ_INT(json_bulk_parse(S("{\"docs\":[],\"all_or_nothing\":\"yes\"}"), NULL, &bk, &err),
                 0);
    CHECK(!bk.all_or_nothing);
    json_bulk_destroy(&bk);

    struct { const char *t; int code; const char *error, *reason; } bad[] = {
        {"{}", MIMEO_EINVAL, "bad_request", "POST body must include `docs` parameter."},
        {"{\"new_edits\":false}", MIMEO_EINVAL, "bad_request",
         "POST body must include `docs` parameter."},
        {"{\"docs\":{}}", MIMEO_EINVAL, "bad_request", "`docs` parameter must be an array."},
        {"{\"docs\":null}", MIMEO_EINVAL, "bad_request", "`docs` parameter must be an array."},
        {"{\"docs\":[],\"new_edits\":\"false\"}", MIMEO_EINVAL, "bad_request",
         "`new_edits` parameter must be a boolean."},
        {"{\"new_edits\":0,\"docs\":[]}", MIMEO_EINVAL, "bad_request",
         "`new_edits` parameter must be a boolean."},
        {"{\"docs\":[{},1]}", MIMEO_EINVAL, "bad_request", "Document must be a JSON object"},
        {"{\"docs\":[[]]}", MIMEO_EINVAL, "bad_request", "Document must be a JSON object"},
        {"[]", MIMEO_EINVAL, "bad_request", "Request body must be a JSON object"},
        {"{\"docs\":[{\"_id\":\"a\"},{\"_id\":2}]}", MIMEO_EBADID, "illegal_docid",
         "Document id must be a string"},
        {"{\"docs\":[{\"_bad\":1}]}", MIMEO_EDOCVALIDATION, "doc_validation",
         "Bad special document member: _bad"},
        {"{\"docs\":[{\"a\":1},{\"a\":1,\"a\":2}]}", MIMEO_EBADJSON, "bad_request",
         "Duplicate key \"a\" in JSON object"},
        {"{\"docs\":[{\"a\":1}]", MIMEO_EBADJSON, "bad_request", "invalid UTF-8 JSON"},
        {"{\"docs\":[{\"a\":\"\xc0\x80\"}]}", MIMEO_EBADJSON, "bad_request",
         "invalid UTF-8 JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memset(&err, 0, sizeof err);
        int rc = json_bulk_parse(bad[i].t, strlen(bad[i].t), NULL, &bk, &err);
        if (rc != bad[i].code) fprintf(stderr, "bulk case %zu: rc %d\n", i, rc);
        CHECK_EQ_INT(rc, bad[i].code);
        CHECK_EQ_INT(err.code, bad[i].code);
        CHECK_EQ_STR(err.error, bad[i].error);
        CHECK_EQ_STR(err.reason, bad[i].reason);
        CHECK(bk.docs == NULL && bk.count == 0);
        json_bulk_destroy(&bk);
    }

    /* a document over the cap names itself */
    json_limits lim = {0, 16};
    CHECK_EQ_INT(json_bulk_parse(S("{\"docs\":[{\"_id\":\"ok\",\"a\":1},"
                                   "{\"_id\":\"huge\",\"a\":\"0123456789abcdef\"}]}"),
                                 &lim, &bk, &err), MIMEO_ETOOLARGE);
    CHECK_EQ_STR(err.error, "document_too_large");
    CHECK_EQ_STR(err.reason, "huge");
    json_bulk_destroy(&bk);
}

/* ---- writers ----------------------------------------------------------------------------- */

static void ref_escape(buf *b, const unsigned char *s, size_t n) {
    buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned c = s[i];
        switch (c) {
        case '"':  buf_puts(b, "\\\""); break;
        case '\\': buf_puts(b, "\\\\"); break;
        case '\n': buf_puts(b, "\\n"); break;
        case '\r': buf_puts(b, "\\r"); break;
        case '\t': buf_puts(b, "\\t"); break;
        case '\b': buf_puts(b, "\\b"); break;
        case '\f': buf_puts(b, "\\f"); break;
        default:
            if (c < 0x20) buf_printf(b, "\\u%04x", c);
            else buf_putc(b, (char)c);
        }
    }
    buf_putc(b, '"');
}

static void test_writer(void) {
    buf b;
    buf_init(&b, 0);
    CHECK_EQ_INT(json_put_str(&b, S("a\"b\\c\n\r\t\b\f\x01\x1f\x7f/\xc3\xa9")), 0);
    CHECK_EQ_STR(buf_cstr(&b), "\"a\\\"b\\\\c\\n\\r\\t\\b\\f\\u0001\\u001f\x7f/\xc3\xa9\"");
    buf_reset(&b);
    CHECK_EQ_INT(json_put_str(&b, "", 0), 0);
    CHECK_EQ_STR(buf_cstr(&b), "\"\"");
    buf_reset(&b);
    CHECK_EQ_INT(json_put_str(&b, S("\0")), 0);
    CHECK_EQ_STR(buf_cstr(&b), "\"\\u0000\"");
    buf_reset(&b);
    CHECK_EQ_INT(json_put_key(&b, "id"), 0);
    CHECK_EQ_INT(json_put_cstr(&b, "v"), 0);
    CHECK_EQ_STR(buf_cstr(&b), "\"id\":\"v\"");

    /* property: same bytes as a one-byte-at-a-time reference, for escapes at every offset
     * of the eight-byte steps */
    unsigned seed = (unsigned)time(NULL);
    srand(seed);
    buf ref;
    buf_init(&ref, 0);
    unsigned char s[80];
    const unsigned char alphabet[] = {'a', 'Z', ' ', '"', '\\', '\n', 0, 0x1f, 0x20, 0x7f,
                                      0x80, 0xc3, 0xff, '/', 0x19, '!', '#', '[', ']'};
    int mismatches = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = (size_t)rand() % sizeof s;
        for (size_t i = 0; i < n; i++)
            s[i] = rand() % 4 ? (unsigned char)('a' + rand() % 26)
                              : alphabet[(size_t)rand() % sizeof alphabet];
        buf_reset(&b);
        buf_reset(&ref);
        buf_putc(&b, 'x'); /* not at the start of the buffer */
        buf_putc(&ref, 'x');
        json_put_str(&b, (const char *)s, n);
        ref_escape(&ref, s, n);
        if (b.len != ref.len || memcmp(b.data, ref.data, b.len) != 0) mismatches++;
    }
    if (mismatches) fprintf(stderr, "writer property failed, seed %u\n", seed);
    CHECK_EQ_INT(mismatches, 0);
    buf_destroy(&ref);
    buf_destroy(&b);

    /* over the cap: nothing appended */
    buf_init(&b, 10);
    buf_puts(&b, "ab");
    CHECK_EQ_INT(json_put_str(&b, S("abcdefgh")), MIMEO_ETOOLARGE);
    CHECK_EQ_INT(b.len, 2);
    CHECK_EQ_INT(json_put_str(&b, S("a\n\n\n")), MIMEO_ETOOLARGE); /* fails at an escape */
    CHECK_EQ_INT(b.len, 2);
    CHECK_EQ_STR(buf_cstr(&b), "ab");
    CHECK_EQ_INT(json_put_str(&b, S("a\nb")), 0);
    CHECK_EQ_STR(buf_cstr(&b), "ab\"a\\nb\"");
    buf_destroy(&b);
}

/* ---- a big body -------------------------------------------------------------------------- */

/* A 10 MB _bulk_docs body of ~1 KB documents splits into every document, each with its id,
 * rev, _revisions and body intact (the first, a middle and the last one are compared). */
static void test_bulk_big(void) {
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"new_edits\":false,\"docs\":[");
    size_t ndocs = 0;
    while (b.len < 10u << 20) {
        if (ndocs) buf_putc(&b, ',');
        buf_printf(&b, "{\"_id\":\"doc%08zu\",\"_rev\":\"1-%032zx\",\"_revisions\":{\"start\":1,"
                       "\"ids\":[\"%032zx\"]},\"value\":%zu,\"note\":\"",
                   ndocs, ndocs, ndocs, ndocs);
        size_t start = b.len;
        while (b.len - start < 640) buf_puts(&b, "lorem ipsum dolor sit amet \\\"q\\\" ");
        buf_puts(&b, "\",\"n\":[1,2,3]}");
        ndocs++;
    }
    buf_puts(&b, "]}");
    json_bulk bk;
    json_error err;
    CHECK_EQ_INT(json_bulk_parse(b.data, b.len, NULL, &bk, &err), 0);
    CHECK_EQ_INT(bk.count, ndocs);
    CHECK(!bk.new_edits);
    size_t probe[] = {0, ndocs / 2, ndocs - 1};
    for (size_t i = 0; i < 3 && bk.count == ndocs; i++) {
        const json_doc *d = &bk.docs[probe[i]];
        char want[64];
        snprintf(want, sizeof want, "doc%08zu", probe[i]);
        CHECK(d->id && d->id_len == 11 && memcmp(d->id, want, 11) == 0);
        snprintf(want, sizeof want, "1-%032zx", probe[i]);
        CHECK(d->rev && d->rev_len == 34 && memcmp(d->rev, want, 34) == 0);
        CHECK(d->revisions != NULL);
        snprintf(want, sizeof want, "{\"value\":%zu,\"note\":\"lorem", probe[i]);
        CHECK(d->body.len > 640 && strncmp(d->body.data, want, strlen(want)) == 0);
        CHECK(memcmp(d->body.data + d->body.len - 12, "\"n\":[1,2,3]}", 12) == 0);
    }
    json_bulk_destroy(&bk);
    buf_destroy(&b);
}

/* json_skim_docs: the documents of a reply as their bytes, with the members located. */
typedef struct skim_seen {
    char   text[4][256];
    char   rev[4][64];
    char   revisions[4][128];
    char   revisions_member[4][128];
    bool   atts[4];
    size_t n;
} skim_seen;

static int skim_cb(void *ctx, const json_skim_doc *d) {
    skim_seen *s = ctx;
    if (s->n == 4) return MIMEO_EINVAL;
    snprintf(s->text[s->n], sizeof s->text[0], "%.*s", (int)d->len, d->text);
    snprintf(s->rev[s->n], sizeof s->rev[0], "%.*s", d->rev ? (int)d->rev_len : 0,
             d->rev ? d->rev : "");
    if (d->revisions_end) {
        snprintf(s->revisions[s->n], sizeof s->revisions[0], "%.*s",
                 (int)(d->revisions_end - d->revisions_value), d->text + d->revisions_value);
        snprintf(s->revisions_member[s->n], sizeof s->revisions_member[0], "%.*s",
                 (int)(d->revisions_end - d->revisions_key), d->text + d->revisions_key);
    }
    s->atts[s->n] = d->has_attachments;
    s->n++;
    return 0;
}

static void test_skim(void) {
    const char *t = "{\"results\":[{\"id\":\"x\",\"docs\":[{\"ok\": {\"_id\":\"x\","
                    "\"_rev\":\"2-ab\", \"_revisions\" : {\"start\":2,\"ids\":[\"ab\",\"cd\"]} ,"
                    "\"v\":{\"ok\":{\"_rev\":\"9-z\"}}}},"
                    "{\"error\":{\"id\":\"x\",\"rev\":\"3-f\",\"error\":\"not_found\"}}]},"
                    "{\"id\":\"y\",\"docs\":[{\"ok\":{\"_rev\":\"1-\\u0061\",\"_attachments\":{}}}]}]}";
    skim_seen s;
    memset(&s, 0, sizeof s);
    size_t errors = 0;
    json_error err;
    CHECK_EQ_INT(json_skim_docs(t, strlen(t), NULL, skim_cb, &s, &errors, &err), 0);
    CHECK_EQ_INT(s.n, 2);
    CHECK_EQ_INT(errors, 1);
    CHECK_EQ_STR(s.text[0], "{\"_id\":\"x\",\"_rev\":\"2-ab\", \"_revisions\" : "
                            "{\"start\":2,\"ids\":[\"ab\",\"cd\"]} ,\"v\":{\"ok\":{\"_rev\":\"9-z\"}}}");
    CHECK_EQ_STR(s.rev[0], "2-ab");
    CHECK_EQ_STR(s.revisions[0], "{\"start\":2,\"ids\":[\"ab\",\"cd\"]}");
    CHECK_EQ_STR(s.revisions_member[0], "\"_revisions\" : {\"start\":2,\"ids\":[\"ab\",\"cd\"]}");
    CHECK(!s.atts[0]);
    CHECK_EQ_STR(s.rev[1], "");   /* escaped: not handed over */
    CHECK(s.atts[1]);

    /* refused exactly as json_parse refuses: duplicates (also past the linear check and
     * after decoding), syntax, bad UTF-8, lone surrogates, depth */
    char big[2048];
    size_t o = (size_t)snprintf(big, sizeof big, "[{\"ok\":{");
    for (int i = 0; i < 40; i++) o += (size_t)snprintf(big + o, sizeof big - o, "\"k%d\":1,", i);
    snprintf(big + o, sizeof big - o, "\"k7\":2}}]");
    const char *bad[] = { big, "[{\"ok\":{\"a\":1,\"\\u0061\":2}}]", "[{\"ok\":{\"a\":1,}}]",
                          "[{\"ok\":{\"a\":\"\xC3\"}}]", "[{\"ok\":{\"a\":\"\\udc00\"}}]",
                          "[{\"ok\":{\"a\":\"\\ud800x\"}}]", "[{\"ok\":{}}] x", "", "[01]",
                          "[{\"ok\":{\"a\":[[[[1]]]]}}]" };
    static const json_limits four = {4, 0};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const json_limits *lim = i == sizeof bad / sizeof bad[0] - 1 ? &four : NULL;
        memset(&s, 0, sizeof s);
        int want = json_parse(bad[i], strlen(bad[i]), lim, NULL, NULL, NULL);
        CHECK(want != 0);
        CHECK_EQ_INT(json_skim_docs(bad[i], strlen(bad[i]), lim, skim_cb, &s, NULL, &err), want);
    }
    /* a big object without duplicates passes */
    big[o] = 0;
    snprintf(big + o, sizeof big - o, "\"k99\":2}}]");
    memset(&s, 0, sizeof s);
    CHECK_EQ_INT(json_skim_docs(big, strlen(big), NULL, skim_cb, &s, NULL, &err), 0);
    CHECK_EQ_INT(s.n, 1);
    /* arrays nested far deeper than documents may be, under a cap that allows it:
     * {"ok":{"a":[[[…]]]}} */
    size_t levels = 200000, k = 0;
    char *deep = malloc(11 + 2 * levels + 2);
    CHECK(deep != NULL);
    if (deep) {
        memcpy(deep, "{\"ok\":{\"a\":", 11);
        k = 11;
        for (size_t d = 0; d < levels; d++) deep[k++] = '[';
        for (size_t d = 0; d < levels; d++) deep[k++] = ']';
        deep[k++] = '}';
        deep[k++] = '}';
        static const json_limits lots = {1u << 30, 0};
        memset(&s, 0, sizeof s);
        CHECK_EQ_INT(json_skim_docs(deep, k, &lots, skim_cb, &s, NULL, &err), 0);
        CHECK_EQ_INT(s.n, 1);
        CHECK_EQ_INT(json_skim_docs(deep, k, NULL, skim_cb, &s, NULL, &err), MIMEO_EBADJSON);
        free(deep);
    }

    /* the callback's code stops the skim */
    const char *five = "[{\"ok\":{}},{\"ok\":{}},{\"ok\":{}},{\"ok\":{}},{\"ok\":{}}]";
    memset(&s, 0, sizeof s);
    CHECK_EQ_INT(json_skim_docs(five, strlen(five), NULL, skim_cb, &s, NULL, &err), MIMEO_EINVAL);
}

/* json_tree_parse_block: the same tree as json_tree_parse, in one allocation. */
static void test_tree_block(void) {
    const char *texts[] = { "{\"a\":[1,\"x\",{\"b\":[],\"c\":{}},null,true,false],\"\\u00e9\":-1.5e3}",
                            "[]", "{}", "\"s\"", "7", "[[[[]]],[{}],{\"k\":[[1],[2,[3]]]}]" };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        jval *a = NULL, *b = NULL;
        json_error err;
        CHECK_EQ_INT(json_tree_parse(texts[i], strlen(texts[i]), NULL, &a, &err), 0);
        CHECK_EQ_INT(json_tree_parse_block(texts[i], strlen(texts[i]), NULL, &b, &err), 0);
        buf x = BUF_INIT, y = BUF_INIT;
        CHECK(a && b && json_put_jval(&x, a) == 0 && json_put_jval(&y, b) == 0);
        CHECK_EQ_STR(buf_cstr(&x), buf_cstr(&y));
        if (b && b->type == JV_OBJECT && b->count) CHECK(jval_get(b, "a") == b->items[0]);
        buf_destroy(&x);
        buf_destroy(&y);
        jval_free(a);
        free(b);
    }
    jval *b = NULL;
    json_error err;
    const char *dup = "{\"a\":1,\"a\":2}";
    CHECK_EQ_INT(json_tree_parse_block(dup, strlen(dup), NULL, &b, &err), MIMEO_EBADJSON);
    CHECK(b == NULL);
}

int main(void) {
    RUN(test_syntax);
    RUN(test_events);
    RUN(test_big_numbers);
    RUN(test_duplicate_keys);
    RUN(test_many_keys);
    RUN(test_depth);
    RUN(test_utf8);
    RUN(test_tree);
    RUN(test_doc_body);
    RUN(test_doc_special);
    RUN(test_doc_too_large);
    RUN(test_bulk);
    RUN(test_writer);
    RUN(test_bulk_big);
    RUN(test_skim);
    RUN(test_tree_block);
    return check_report();
}
