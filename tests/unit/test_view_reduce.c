/* Built-in reducers against CouchDB's documented results (and the cases of its own unit
 * tests): _sum over numbers, arrays and objects; its error object; _count; _stats with
 * pre-aggregated input and arrays; _approx_count_distinct's accuracy and merging. */
#include "check.h"
#include "view/reduce.h"

static jval *J(const char *text) {
    jval *v = NULL;
    if (json_tree_parse(text, strlen(text), NULL, &v, NULL) != 0) {
        fprintf(stderr, "bad test JSON: %s\n", text);
        abort();
    }
    return v;
}

/* Reduces the values (a JSON array text) with kind and returns the result text (static). */
static const char *reduce_values(view_reduce_kind kind, const char *values, int *rc_out) {
    static char out[4096];
    jval *vs = J(values);
    jval *key = J("null");
    view_reducer *r = view_reducer_new(kind);
    mimeo_err err = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < vs->count; i++) rc = view_reducer_add(r, key, vs->items[i], &err);
    buf b = BUF_INIT;
    if (!rc) rc = view_reducer_put(r, &b);
    snprintf(out, sizeof out, "%s", rc ? err.reason : buf_cstr(&b));
    if (rc_out) *rc_out = rc;
    buf_destroy(&b);
    view_reducer_free(r);
    jval_free(vs);
    jval_free(key);
    return out;
}

static void test_sum(void) {
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[]", NULL), "0");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[1,2,3]", NULL), "6");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[1,2.5]", NULL), "3.5");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[1.5,1.5]", NULL), "3.0");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[-4,4]", NULL), "0");
    /* a number counts as a one-element array; the longer tail is kept */
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[[1,4,6],1]", NULL), "[2,4,6]");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[[0,3,3],[3,2,4]]", NULL), "[3,5,7]");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[[1],[1,2,3]]", NULL), "[2,2,3]");
    /* objects field by field, nested, in key order */
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM,
                               "[{\"a\":1,\"b\":[1,2],\"c\":{\"d\":3},\"g\":1},"
                               "{\"a\":2,\"b\":3,\"c\":{\"e\":5},\"f\":1,\"g\":1}]", NULL),
                 "{\"a\":3,\"b\":[4,2],\"c\":{\"d\":3,\"e\":5},\"f\":1,\"g\":2}");
    /* 64-bit integers stay exact */
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_SUM, "[4611686018427387904,4611686018427387903]", NULL),
                 "9223372036854775807");
}

static void test_sum_errors(void) {
    int rc = 0;
    /* Not a query failure: the value becomes CouchDB's error object. */
    const char *r = reduce_values(VIEW_REDUCE_SUM, "[1,\"two\",3]", &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(strncmp(r, "{\"error\":\"builtin_reduce_error\",\"reason\":\"The _sum function requires", 68) == 0);
    CHECK(strstr(r, "\"caused_by\":\"two\"}") != NULL);
    r = reduce_values(VIEW_REDUCE_SUM, "[{\"a\":1},5]", &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(strstr(r, "builtin_reduce_error") != NULL);
    r = reduce_values(VIEW_REDUCE_SUM, "[[1,2],[\"x\"]]", &rc);
    CHECK(strstr(r, "builtin_reduce_error") != NULL);
    /* an error from a lower level stays the result on rereduce */
    view_reducer *red = view_reducer_new(VIEW_REDUCE_SUM);
    jval *e = J("{\"error\":\"builtin_reduce_error\",\"reason\":\"r\",\"caused_by\":null}");
    jval *n = J("5");
    CHECK_EQ_INT(view_reducer_add_partial(red, n, NULL), 0);
    CHECK_EQ_INT(view_reducer_add_partial(red, e, NULL), 0);
    CHECK_EQ_INT(view_reducer_add_partial(red, n, NULL), 0);
    buf b = BUF_INIT;
    view_reducer_put(red, &b);
    CHECK_EQ_STR(buf_cstr(&b), "{\"error\":\"builtin_reduce_error\",\"reason\":\"r\",\"caused_by\":null}");
    buf_destroy(&b);
    view_reducer_free(red);
    jval_free(e);
    jval_free(n);
}

static void test_count(void) {
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_COUNT, "[]", NULL), "0");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_COUNT, "[null,\"a\",{},1]", NULL), "4");
    view_reducer *r = view_reducer_new(VIEW_REDUCE_COUNT);
    jval *a = J("3"), *b = J("4"), *bad = J("\"x\"");
    CHECK_EQ_INT(view_reducer_add_partial(r, a, NULL), 0);
    CHECK_EQ_INT(view_reducer_add_partial(r, b, NULL), 0);
    mimeo_err err = {0};
    CHECK_EQ_INT(view_reducer_add_partial(r, bad, &err), MIMEO_EINVAL);
    buf out = BUF_INIT;
    view_reducer_put(r, &out);
    CHECK_EQ_STR(buf_cstr(&out), "7");
    buf_destroy(&out);
    view_reducer_free(r);
    jval_free(a); jval_free(b); jval_free(bad);
}

static void test_stats(void) {
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_STATS, "[]", NULL),
                 "{\"sum\":0,\"count\":0,\"min\":0,\"max\":0,\"sumsqr\":0}");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_STATS, "[1,10]", NULL),
                 "{\"sum\":11,\"count\":2,\"min\":1,\"max\":10,\"sumsqr\":101}");
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_STATS, "[[2,3,5],[7,11,13]]", NULL),
                 "[{\"sum\":9,\"count\":2,\"min\":2,\"max\":7,\"sumsqr\":53},"
                 "{\"sum\":14,\"count\":2,\"min\":3,\"max\":11,\"sumsqr\":130},"
                 "{\"sum\":18,\"count\":2,\"min\":5,\"max\":13,\"sumsqr\":194}]");
    /* pre-aggregated objects mix with raw numbers; extra keys are ignored */
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_STATS,
                               "[{\"sum\":10,\"count\":2,\"min\":4,\"max\":6,\"sumsqr\":52,\"x\":1},1.5]", NULL),
                 "{\"sum\":11.5,\"count\":3,\"min\":1.5,\"max\":6,\"sumsqr\":54.25}");
    int rc = 0;
    const char *r = reduce_values(VIEW_REDUCE_STATS, "[1,\"a\"]", &rc);
    CHECK_EQ_INT(rc, MIMEO_EINVAL);
    CHECK_EQ_STR(r, "The _stats function requires that map values be numbers or arrays of numbers, not '\"a\"'");
    r = reduce_values(VIEW_REDUCE_STATS, "[{\"sum\":1}]", &rc);
    CHECK_EQ_INT(rc, MIMEO_EINVAL);
    CHECK_EQ_STR(r, "user _stats input missing required field count");
    reduce_values(VIEW_REDUCE_STATS, "[[1,2],[1]]", &rc);
    CHECK_EQ_INT(rc, MIMEO_EINVAL);
}

static void test_approx_count_distinct(void) {
    view_reducer *whole = view_reducer_new(VIEW_REDUCE_APPROX_COUNT_DISTINCT);
    view_reducer *half[2] = {view_reducer_new(VIEW_REDUCE_APPROX_COUNT_DISTINCT),
                             view_reducer_new(VIEW_REDUCE_APPROX_COUNT_DISTINCT)};
    jval *value = J("null");
    for (int i = 0; i < 20000; i++) {
        char text[64];
        snprintf(text, sizeof text, "[\"user\",%d]", i % 10000);   /* each key twice */
        jval *key = J(text);
        CHECK_EQ_INT(view_reducer_add(whole, key, value, NULL), 0);
        CHECK_EQ_INT(view_reducer_add(half[i % 2], key, value, NULL), 0);
        jval_free(key);
    }
    buf out = BUF_INIT;
    view_reducer_put(whole, &out);
    long estimate = atol(buf_cstr(&out));
    CHECK(estimate > 9500 && estimate < 10500);     /* ~2% standard error at 2^11 registers */
    /* merged partial states give the same estimate as one pass */
    view_reducer *merged = view_reducer_new(VIEW_REDUCE_APPROX_COUNT_DISTINCT);
    for (int i = 0; i < 2; i++) {
        buf p = BUF_INIT;
        CHECK_EQ_INT(view_reducer_put_partial(half[i], &p), 0);
        jval *pv = J(buf_cstr(&p));
        CHECK_EQ_INT(view_reducer_add_partial(merged, pv, NULL), 0);
        jval_free(pv);
        buf_destroy(&p);
    }
    buf m = BUF_INIT;
    view_reducer_put(merged, &m);
    CHECK_EQ_STR(buf_cstr(&m), buf_cstr(&out));
    CHECK_EQ_STR(reduce_values(VIEW_REDUCE_APPROX_COUNT_DISTINCT, "[1,2,3]", NULL), "1");
    buf_destroy(&m);
    buf_destroy(&out);
    view_reducer_free(whole);
    view_reducer_free(half[0]);
    view_reducer_free(half[1]);
    view_reducer_free(merged);
    jval_free(value);
}

static void test_names(void) {
    view_reduce_kind k;
    CHECK(view_reduce_builtin("_sum", 4, &k) && k == VIEW_REDUCE_SUM);
    CHECK(view_reduce_builtin("_count", 6, &k) && k == VIEW_REDUCE_COUNT);
    CHECK(view_reduce_builtin("_stats", 6, &k) && k == VIEW_REDUCE_STATS);
    CHECK(view_reduce_builtin("_approx_count_distinct", 22, &k) &&
          k == VIEW_REDUCE_APPROX_COUNT_DISTINCT);
    CHECK(view_reduce_builtin("_sum_of_things", 14, &k) && k == VIEW_REDUCE_SUM);
    CHECK(!view_reduce_builtin("_mean", 5, &k));
    CHECK(!view_reduce_builtin("function(k,v){}", 15, &k));
}

int main(void) {
    RUN(test_sum);
    RUN(test_sum_errors);
    RUN(test_count);
    RUN(test_stats);
    RUN(test_approx_count_distinct);
    RUN(test_names);
    return check_report();
}
