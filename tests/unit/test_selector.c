/* Unit tests of src/query/selector: CouchDB's normalisation (the documented examples of
 * mango_selector), every operator CouchDB 3.5 documents, missing fields and bad paths,
 * dotted and escaped field names, combinations at depth, the _id raw order, the 400 errors
 * with CouchDB's names, and a regular expression that backtracks catastrophically. */
#include "check.h"
#include "query/selector.h"

#include <time.h>

#define S(lit) lit, sizeof(lit) - 1

/* 1 match, 0 no match, -1 the selector or the document did not parse. */
static int M(const char *sel, const char *doc) {
    selector *s = NULL;
    mimeo_err err;
    if (selector_parse(sel, strlen(sel), &s, &err)) {
        fprintf(stderr, "selector refused: %s: %s %s\n", sel, err.error, err.reason);
        return -1;
    }
    bool m = false;
    int rc = selector_match_json(s, doc, strlen(doc), &m);
    selector_free(s);
    return rc ? -1 : m;
}

static char norm_out[2048];
static const char *NORM(const char *sel) {
    selector *s = NULL;
    mimeo_err err;
    norm_out[0] = 0;
    if (selector_parse(sel, strlen(sel), &s, &err)) return "(error)";
    buf b;
    buf_init(&b, 0);
    selector_to_json(s, &b);
    snprintf(norm_out, sizeof norm_out, "%s", buf_cstr(&b));
    buf_destroy(&b);
    selector_free(s);
    return norm_out;
}

static mimeo_err last_err;
static int ERR(const char *sel) {
    selector *s = NULL;
    memset(&last_err, 0, sizeof last_err);
    int rc = selector_parse(sel, strlen(sel), &s, &last_err);
    selector_free(s);
    return rc;
}

#define CHECK_ERR(sel, name) do { \
    CHECK_EQ_INT(ERR(sel), MIMEO_EINVAL); CHECK_EQ_STR(last_err.error, name); } while (0)

static void test_normalise(void) {
    /* the examples in mango_selector.erl's comments */
    CHECK_EQ_STR(NORM("{\"foo\":{\"$and\":[{\"$gt\":5},{\"$lt\":10}]}}"),
                 "{\"$and\":[{\"foo\":{\"$gt\":5}},{\"foo\":{\"$lt\":10}}]}");
    CHECK_EQ_STR(NORM("{\"foo\":{\"bar\":{\"$gt\":10}}}"), "{\"foo.bar\":{\"$gt\":10}}");
    CHECK_EQ_STR(NORM("{\"$not\":{\"foo\":{\"$gt\":10}}}"), "{\"foo\":{\"$lte\":10}}");
    CHECK_EQ_STR(NORM("{\"$not\":{\"$and\":[{\"foo\":{\"$gt\":10}},{\"foo\":{\"$lt\":5}}]}}"),
                 "{\"$or\":[{\"foo\":{\"$lte\":10}},{\"foo\":{\"$gte\":5}}]}");
    /* implicit $and and $eq */
    CHECK_EQ_STR(NORM("{\"a\":1,\"b\":\"x\"}"),
                 "{\"$and\":[{\"a\":{\"$eq\":1}},{\"b\":{\"$eq\":\"x\"}}]}");
    CHECK_EQ_STR(NORM("{}"), "{}");
    CHECK_EQ_STR(NORM("{\"a\":{}}"), "{\"a\":{\"$eq\":{}}}");
    /* $nor becomes $and of negations; $not over an operator without an inverse stays */
    CHECK_EQ_STR(NORM("{\"$nor\":[{\"a\":1},{\"b\":{\"$in\":[1]}}]}"),
                 "{\"$and\":[{\"a\":{\"$ne\":1}},{\"b\":{\"$nin\":[1]}}]}");
    CHECK_EQ_STR(NORM("{\"a\":{\"$not\":{\"$regex\":\"x\"}}}"),
                 "{\"a\":{\"$not\":{\"$regex\":\"x\"}}}");
    CHECK_EQ_STR(NORM("{\"$not\":{\"$not\":{\"a\":{\"$exists\":true}}}}"),
                 "{\"a\":{\"$exists\":true}}");
    CHECK_EQ_STR(NORM("{\"$not\":{\"a\":{\"$exists\":true}}}"), "{\"a\":{\"$exists\":false}}");
    /* $elemMatch's argument is normalised on its own, with the element as the field "" */
    CHECK_EQ_STR(NORM("{\"a\":{\"$elemMatch\":{\"$gte\":80,\"$lt\":85}}}"),
                 "{\"a\":{\"$elemMatch\":{\"$and\":[{\"\":{\"$gte\":80}},{\"\":{\"$lt\":85}}]}}}");
    CHECK_EQ_STR(NORM("{\"a\":{\"$elemMatch\":{\"b\":{\"c\":1}}}}"),
                 "{\"a\":{\"$elemMatch\":{\"b.c\":{\"$eq\":1}}}}");
}

static void test_errors(void) {
    CHECK_ERR("[1]", "invalid_selector_json");
    CHECK_ERR("\"x\"", "invalid_selector_json");
    CHECK_ERR("{\"a\":{\"$in\":5}}", "bad_arg");
    CHECK_EQ_STR(last_err.reason, "Bad argument for operator $in: 5");
    CHECK_ERR("{\"a\":{\"$nin\":{}}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$all\":\"x\"}}", "bad_arg");
    CHECK_ERR("{\"$and\":{}}", "bad_arg");
    CHECK_ERR("{\"$or\":1}", "bad_arg");
    CHECK_ERR("{\"$nor\":null}", "bad_arg");
    CHECK_ERR("{\"$not\":[]}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$exists\":\"yes\"}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$type\":1}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$size\":-1}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$size\":1.5}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$size\":\"1\"}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$mod\":[2]}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$mod\":[2.0,1]}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$mod\":[0,1]}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$mod\":\"x\"}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$elemMatch\":[]}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$allMatch\":1}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$keyMapMatch\":\"k\"}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$regex\":\"(\"}}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$regex\":\"a[\"}}", "bad_arg");
    /* CouchDB takes $regex and $beginsWith only with strings: others are unknown operators */
    CHECK_ERR("{\"a\":{\"$regex\":5}}", "invalid_operator");
    CHECK_ERR("{\"a\":{\"$beginsWith\":1}}", "invalid_operator");
    CHECK_ERR("{\"a\":{\"$foo\":1}}", "invalid_operator");
    CHECK_EQ_STR(last_err.reason, "Invalid operator: $foo");
    CHECK_ERR("{\"$foo\":[]}", "invalid_operator");
    CHECK_ERR("{\"a\":{\"$and\":[{\"$bad\":1}]}}", "invalid_operator");
    CHECK_ERR("{\"$where\":\"1\"}", "not_supported");
    CHECK_EQ_STR(last_err.reason, "Unsupported operator: $where");
    CHECK_ERR("{\"a\":{\"$near\":[1,2]}}", "not_supported");
    CHECK_ERR("{\"$eq\":1}", "invalid_selector");
    CHECK_EQ_STR(last_err.reason, "One or more conditions is missing a field name.");
    CHECK_ERR("{\"$gt\":1}", "invalid_selector");
    CHECK_ERR("{\"a..b\":1}", "invalid_field_name");
    CHECK_ERR("{\"a.\":1}", "invalid_field_name");
    CHECK_ERR("{\"a\":{\"\":1}}", "invalid_field_name");
    CHECK_EQ_INT(ERR("{\"a\":"), MIMEO_EBADJSON);
    CHECK_EQ_INT(ERR("{\"a\":1,\"a\":2}"), MIMEO_EBADJSON);
    /* errors deep inside combinations */
    CHECK_ERR("{\"$or\":[{\"a\":1},{\"$and\":[{\"b\":{\"$size\":\"x\"}}]}]}", "bad_arg");
    CHECK_ERR("{\"a\":{\"$elemMatch\":{\"b\":{\"$in\":1}}}}", "bad_arg");
}

static void test_comparisons(void) {
    const char *doc = "{\"n\":5,\"s\":\"abc\",\"z\":null,\"t\":true,\"f\":1.5,\"arr\":[1,2]}";
    CHECK_EQ_INT(M("{\"n\":5}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":5.0}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$eq\":6}}", doc), 0);
    CHECK_EQ_INT(M("{\"n\":{\"$ne\":6}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$ne\":5}}", doc), 0);
    CHECK_EQ_INT(M("{\"n\":{\"$gt\":4}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$gt\":5}}", doc), 0);
    CHECK_EQ_INT(M("{\"n\":{\"$gte\":5}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$lt\":5}}", doc), 0);
    CHECK_EQ_INT(M("{\"n\":{\"$lte\":5}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$gt\":4,\"$lt\":6}}", doc), 1);
    /* across types by collation: strings sort after numbers, null before everything */
    CHECK_EQ_INT(M("{\"s\":{\"$gt\":1000}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$lt\":\"\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"z\":{\"$lt\":false}}", doc), 1);
    CHECK_EQ_INT(M("{\"t\":{\"$gt\":false}}", doc), 1);
    CHECK_EQ_INT(M("{\"arr\":{\"$gt\":\"zzz\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"arr\":[1,2]}", doc), 1);
    CHECK_EQ_INT(M("{\"arr\":{\"$lt\":[1,3]}}", doc), 1);
    /* strings by ICU: a < B, case after letters */
    CHECK_EQ_INT(M("{\"s\":{\"$lt\":\"ABD\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"s\":{\"$lt\":\"Abc\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"s\":{\"$gt\":\"Abc\"}}", doc), 0);
    /* a missing field matches no comparison, $ne included */
    CHECK_EQ_INT(M("{\"nope\":{\"$ne\":1}}", doc), 0);
    CHECK_EQ_INT(M("{\"nope\":{\"$lt\":1}}", doc), 0);
    CHECK_EQ_INT(M("{\"nope\":null}", doc), 0);
    CHECK_EQ_INT(M("{\"z\":null}", doc), 1);
    CHECK_EQ_INT(M("{\"o\":{}}", "{\"o\":{}}"), 1);
    CHECK_EQ_INT(M("{\"o\":{}}", "{\"o\":{\"a\":1}}"), 0);
}

static void test_id_raw_order(void) {
    /* Mango compares _id in Erlang's term order (bytes), other fields by ICU */
    CHECK_EQ_INT(M("{\"_id\":{\"$gt\":\"B\"}}", "{\"_id\":\"a\"}"), 1);
    CHECK_EQ_INT(M("{\"k\":{\"$gt\":\"B\"}}", "{\"k\":\"a\"}"), 0);
    CHECK_EQ_INT(M("{\"_id\":{\"$gt\":null}}", "{\"_id\":\"a\"}"), 1);
    CHECK_EQ_INT(M("{\"_id\":{\"$gt\":[]}}", "{\"_id\":\"a\"}"), 1);  /* lists < binaries */
    CHECK_EQ_INT(M("{\"k\":{\"$gt\":[]}}", "{\"k\":\"a\"}"), 0);      /* arrays > strings */
    CHECK_EQ_INT(M("{\"_id\":{\"$in\":[\"a\",\"b\"]}}", "{\"_id\":\"b\"}"), 1);
}

static void test_exists_type(void) {
    const char *doc = "{\"a\":null,\"b\":{\"c\":[1,{\"d\":2}]},\"s\":\"x\",\"t\":false}";
    CHECK_EQ_INT(M("{\"a\":{\"$exists\":true}}", doc), 1);
    CHECK_EQ_INT(M("{\"a\":{\"$exists\":false}}", doc), 0);
    CHECK_EQ_INT(M("{\"x\":{\"$exists\":false}}", doc), 1);
    CHECK_EQ_INT(M("{\"x\":{\"$exists\":true}}", doc), 0);
    CHECK_EQ_INT(M("{\"b.c.1.d\":{\"$exists\":true}}", doc), 1);
    CHECK_EQ_INT(M("{\"b.c.1.e\":{\"$exists\":false}}", doc), 1);
    /* a path through a scalar is a bad path: it fails even $exists:false (CouchDB) */
    CHECK_EQ_INT(M("{\"s.y\":{\"$exists\":false}}", doc), 0);
    CHECK_EQ_INT(M("{\"b.c.5\":{\"$exists\":false}}", doc), 0);
    CHECK_EQ_INT(M("{\"b.c.x\":{\"$exists\":false}}", doc), 0);
    CHECK_EQ_INT(M("{\"a\":{\"$type\":\"null\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"b\":{\"$type\":\"object\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"b.c\":{\"$type\":\"array\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"b.c.0\":{\"$type\":\"number\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"s\":{\"$type\":\"string\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"t\":{\"$type\":\"boolean\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"t\":{\"$type\":\"bool\"}}", doc), 0);
    CHECK_EQ_INT(M("{\"x\":{\"$type\":\"null\"}}", doc), 0);
}

static void test_paths(void) {
    const char *doc = "{\"a.b\":1,\"a\":{\"b\":2,\"c.d\":{\"e\":3}},\"l\":[\"x\",\"y\"]}";
    CHECK_EQ_INT(M("{\"a\\\\.b\":1}", doc), 1);
    CHECK_EQ_INT(M("{\"a.b\":2}", doc), 1);
    CHECK_EQ_INT(M("{\"a.b\":1}", doc), 0);
    CHECK_EQ_INT(M("{\"a\":{\"b\":2}}", doc), 1);
    CHECK_EQ_INT(M("{\"a\":{\"c\\\\.d\":{\"e\":3}}}", doc), 1);
    CHECK_EQ_INT(M("{\"a.c\\\\.d.e\":3}", doc), 1);
    CHECK_EQ_INT(M("{\"l.1\":\"y\"}", doc), 1);
    CHECK_EQ_INT(M("{\"l.+1\":\"y\"}", doc), 1);
    CHECK_EQ_INT(M("{\"l.2\":\"y\"}", doc), 0);
    CHECK_EQ_INT(M("{\"l.-1\":\"y\"}", doc), 0);
    CHECK_EQ_INT(M("{\"l.99999999999999999999999\":\"y\"}", doc), 0);
}

static void test_arrays(void) {
    const char *doc = "{\"g\":[\"comedy\",\"drama\"],\"n\":[80,90],\"e\":[],"
                      "\"o\":[{\"k\":1,\"v\":\"a\"},{\"k\":2,\"v\":\"b\"}],\"x\":3,"
                      "\"m\":{\"primary\":1,\"secondary\":2},\"f\":[1.0,2]}";
    /* $in: the field's elements against the list, or the scalar against it */
    CHECK_EQ_INT(M("{\"g\":{\"$in\":[\"drama\",\"x\"]}}", doc), 1);
    CHECK_EQ_INT(M("{\"g\":{\"$in\":[\"x\"]}}", doc), 0);
    CHECK_EQ_INT(M("{\"x\":{\"$in\":[1,3.0]}}", doc), 1);
    CHECK_EQ_INT(M("{\"x\":{\"$in\":[]}}", doc), 0);
    CHECK_EQ_INT(M("{\"g\":{\"$in\":[[\"comedy\",\"drama\"]]}}", doc), 0);
    CHECK_EQ_INT(M("{\"g\":{\"$nin\":[\"x\"]}}", doc), 1);
    CHECK_EQ_INT(M("{\"g\":{\"$nin\":[\"drama\"]}}", doc), 0);
    CHECK_EQ_INT(M("{\"x\":{\"$nin\":[]}}", doc), 1);
    CHECK_EQ_INT(M("{\"nope\":{\"$nin\":[1]}}", doc), 0);
    /* $all: members by exact term (1 is not 1.0), or the whole array as the one argument */
    CHECK_EQ_INT(M("{\"g\":{\"$all\":[\"drama\",\"comedy\"]}}", doc), 1);
    CHECK_EQ_INT(M("{\"g\":{\"$all\":[\"drama\",\"x\"]}}", doc), 0);
    CHECK_EQ_INT(M("{\"g\":{\"$all\":[[\"comedy\",\"drama\"]]}}", doc), 1);
    CHECK_EQ_INT(M("{\"g\":{\"$all\":[]}}", doc), 0);
    CHECK_EQ_INT(M("{\"x\":{\"$all\":[3]}}", doc), 0);
    CHECK_EQ_INT(M("{\"f\":{\"$all\":[1]}}", doc), 0);
    CHECK_EQ_INT(M("{\"f\":{\"$all\":[1.0]}}", doc), 1);
    CHECK_EQ_INT(M("{\"f\":{\"$all\":[[1,2]]}}", doc), 1);
    /* $size */
    CHECK_EQ_INT(M("{\"g\":{\"$size\":2}}", doc), 1);
    CHECK_EQ_INT(M("{\"e\":{\"$size\":0}}", doc), 1);
    CHECK_EQ_INT(M("{\"x\":{\"$size\":1}}", doc), 0);
    /* $elemMatch on scalars and on objects; never on an empty array */
    CHECK_EQ_INT(M("{\"n\":{\"$elemMatch\":{\"$gte\":80,\"$lt\":85}}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$elemMatch\":{\"$gte\":81,\"$lt\":85}}}", doc), 0);
    CHECK_EQ_INT(M("{\"o\":{\"$elemMatch\":{\"k\":2,\"v\":\"b\"}}}", doc), 1);
    CHECK_EQ_INT(M("{\"o\":{\"$elemMatch\":{\"k\":2,\"v\":\"a\"}}}", doc), 0);
    CHECK_EQ_INT(M("{\"e\":{\"$elemMatch\":{\"$exists\":true}}}", doc), 0);
    CHECK_EQ_INT(M("{\"x\":{\"$elemMatch\":{\"$eq\":3}}}", doc), 0);
    /* $allMatch: every element, and not on an empty array */
    CHECK_EQ_INT(M("{\"n\":{\"$allMatch\":{\"$gt\":50}}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$allMatch\":{\"$gt\":85}}}", doc), 0);
    CHECK_EQ_INT(M("{\"o\":{\"$allMatch\":{\"k\":{\"$type\":\"number\"}}}}", doc), 1);
    CHECK_EQ_INT(M("{\"e\":{\"$allMatch\":{\"$gt\":0}}}", doc), 0);
    /* $keyMapMatch: some key of an object */
    CHECK_EQ_INT(M("{\"m\":{\"$keyMapMatch\":{\"$eq\":\"secondary\"}}}", doc), 1);
    CHECK_EQ_INT(M("{\"m\":{\"$keyMapMatch\":{\"$eq\":\"third\"}}}", doc), 0);
    CHECK_EQ_INT(M("{\"m\":{\"$keyMapMatch\":{\"$beginsWith\":\"pri\"}}}", doc), 1);
    CHECK_EQ_INT(M("{\"g\":{\"$keyMapMatch\":{\"$eq\":\"0\"}}}", doc), 0);
    CHECK_EQ_INT(M("{\"e\":{\"$keyMapMatch\":{\"$exists\":true}}}", "{\"e\":{}}"), 0);
}

static void test_strings_numbers(void) {
    const char *doc = "{\"s\":\"Hello world\",\"u\":\"héllo\",\"n\":-7,\"f\":7.0,"
                      "\"big\":123456789012345678901234567890}";
    CHECK_EQ_INT(M("{\"s\":{\"$beginsWith\":\"Hell\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"s\":{\"$beginsWith\":\"hell\"}}", doc), 0);
    CHECK_EQ_INT(M("{\"s\":{\"$beginsWith\":\"\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$beginsWith\":\"-\"}}", doc), 0);
    CHECK_EQ_INT(M("{\"u\":{\"$beginsWith\":\"hé\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"s\":{\"$regex\":\"^H.*d$\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"s\":{\"$regex\":\"world\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"s\":{\"$regex\":\"^world\"}}", doc), 0);
    CHECK_EQ_INT(M("{\"s\":{\"$regex\":\"(?i)^hello\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"u\":{\"$regex\":\"é\"}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$regex\":\"7\"}}", doc), 0);
    CHECK_EQ_INT(M("{\"s\":{\"$not\":{\"$regex\":\"^x\"}}}", doc), 1);
    CHECK_EQ_INT(M("{\"nope\":{\"$not\":{\"$regex\":\"^x\"}}}", doc), 0);
    /* $mod: integers only (7.0 is a float), remainder takes the dividend's sign */
    CHECK_EQ_INT(M("{\"n\":{\"$mod\":[3,-1]}}", doc), 1);
    CHECK_EQ_INT(M("{\"n\":{\"$mod\":[3,2]}}", doc), 0);
    CHECK_EQ_INT(M("{\"n\":{\"$mod\":[-1,0]}}", doc), 1);
    CHECK_EQ_INT(M("{\"f\":{\"$mod\":[7,0]}}", doc), 0);
    CHECK_EQ_INT(M("{\"big\":{\"$gt\":1e29}}", doc), 1);
}

static void test_combinations(void) {
    const char *doc = "{\"a\":1,\"b\":2,\"c\":3,\"l\":[{\"x\":1},{\"y\":2}]}";
    CHECK_EQ_INT(M("{\"$or\":[{\"a\":2},{\"b\":2}]}", doc), 1);
    CHECK_EQ_INT(M("{\"$or\":[{\"a\":2},{\"b\":3}]}", doc), 0);
    CHECK_EQ_INT(M("{\"$or\":[]}", doc), 1);
    CHECK_EQ_INT(M("{\"$and\":[]}", doc), 1);
    CHECK_EQ_INT(M("{\"$nor\":[{\"a\":2},{\"b\":3}]}", doc), 1);
    CHECK_EQ_INT(M("{\"$nor\":[{\"a\":1}]}", doc), 0);
    CHECK_EQ_INT(M("{\"$not\":{\"a\":1}}", doc), 0);
    CHECK_EQ_INT(M("{\"a\":{\"$not\":{\"$eq\":2}}}", doc), 1);
    /* the negation of a missing field's condition does not match: $nor:[{q:1}] is
     * {q:{$ne:1}} after normalisation */
    CHECK_EQ_INT(M("{\"$nor\":[{\"q\":1}]}", doc), 0);
    CHECK_EQ_INT(M("{\"$not\":{\"q\":{\"$exists\":true}}}", doc), 1);
    CHECK_EQ_INT(M("{\"$or\":[{\"$and\":[{\"a\":1},{\"$nor\":[{\"b\":3}]}]},{\"c\":9}]}", doc), 1);
    CHECK_EQ_INT(M("{\"$and\":[{\"$or\":[{\"a\":{\"$gt\":0}},{\"z\":1}]},"
                   "{\"$not\":{\"$or\":[{\"b\":{\"$lt\":2}},{\"c\":{\"$in\":[4,5]}}]}}]}", doc), 1);
    CHECK_EQ_INT(M("{\"a\":{\"$or\":[{\"$lt\":0},{\"$gt\":0}]}}", doc), 1);
    CHECK_EQ_INT(M("{\"a\":{\"$and\":[{\"$gt\":0},{\"$lt\":1}]}}", doc), 0);
    /* inside $elemMatch a $not is not pushed down: a missing field negates to true */
    CHECK_EQ_INT(M("{\"l\":{\"$elemMatch\":{\"$not\":{\"x\":1}}}}", doc), 1);
    CHECK_EQ_INT(M("{\"l\":{\"$allMatch\":{\"$not\":{\"z\":1}}}}", doc), 1);
    CHECK_EQ_INT(M("{\"l\":{\"$elemMatch\":{\"$nor\":[{\"x\":1},{\"y\":2}]}}}", doc), 0);
    CHECK_EQ_INT(M("{\"l\":{\"$elemMatch\":{\"$or\":[{\"x\":5},{\"y\":2}]}}}", doc), 1);
    CHECK_EQ_INT(M("{\"l\":{\"$elemMatch\":{\"$and\":[{\"x\":1},{\"y\":2}]}}}", doc), 0);
}

static void test_catastrophic_regex(void) {
    char doc[256];
    char as[64];
    memset(as, 'a', 40);
    as[40] = 0;
    snprintf(doc, sizeof doc, "{\"s\":\"%sb\"}", as);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CHECK_EQ_INT(M("{\"s\":{\"$regex\":\"^(a+)+$\"}}", doc), 0);
    CHECK_EQ_INT(M("{\"s\":{\"$regex\":\"(a|aa|aaa)*c\"}}", doc), 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (s >= 5) fprintf(stderr, "catastrophic regexes took %.2f s\n", s);
    CHECK(s < 5);
    /* the same pattern still matches what it should */
    CHECK_EQ_INT(M("{\"s\":{\"$regex\":\"^(a+)+$\"}}", "{\"s\":\"aaaa\"}"), 1);
}

static void test_empty_and_bad_doc(void) {
    CHECK_EQ_INT(M("{}", "{\"a\":1}"), 1);
    CHECK_EQ_INT(M("{\"a\":1}", "[1]"), 0);
    CHECK_EQ_INT(M("{\"a\":1}", "{\"a\":"), -1);
}

/* The public face the changes feed uses. */
static void test_public_api(void) {
    mimeo_selector *sel = NULL;
    mimeo_err err = {0};
    CHECK_EQ_INT(mimeo_selector_parse(S("{\"type\":\"post\",\"n\":{\"$gt\":1}}"), &sel, &err), 0);
    bool m = false;
    CHECK_EQ_INT(mimeo_selector_match(sel, S("{\"_id\":\"x\",\"type\":\"post\",\"n\":2}"), &m), 0);
    CHECK(m);
    CHECK_EQ_INT(mimeo_selector_match(sel, S("{\"type\":\"post\",\"n\":1}"), &m), 0);
    CHECK(!m);
    CHECK_EQ_INT(mimeo_selector_match_change(sel, S("{\"seq\":3,\"id\":\"x\",\"changes\":[],"
                 "\"doc\":{\"_id\":\"x\",\"type\":\"post\",\"n\":5}}"), &m), 0);
    CHECK(m);
    CHECK_EQ_INT(mimeo_selector_match_change(sel, S("{\"seq\":3,\"id\":\"x\",\"changes\":[]}"), &m), 0);
    CHECK(!m);
    CHECK_EQ_INT(mimeo_selector_match_change(sel, S("{\"seq\":"), &m), MIMEO_EBADJSON);
    mimeo_selector_free(sel);
    sel = NULL;
    CHECK_EQ_INT(mimeo_selector_parse(S("{\"n\":{\"$in\":1}}"), &sel, &err), MIMEO_EINVAL);
    CHECK(sel == NULL);
    CHECK_EQ_STR(err.error, "bad_arg");
}

int main(void) {
    RUN(test_normalise);
    RUN(test_errors);
    RUN(test_comparisons);
    RUN(test_id_raw_order);
    RUN(test_exists_type);
    RUN(test_paths);
    RUN(test_arrays);
    RUN(test_strings_numbers);
    RUN(test_combinations);
    RUN(test_catastrophic_regex);
    RUN(test_empty_and_bad_doc);
    RUN(test_public_api);
    return check_report();
}
