/* Unit tests of the HTTP front end's request-target parsing (src/http/url.c: percent-decoding,
 * path segments, query arguments and their typed readers) and of routing (src/http/route.c:
 * which method and path reach which handler, 405 with CouchDB's Allow list, 404 for endpoints
 * not served, 501 for attachments), on requests built in memory: no socket, no MHD daemon. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "http/http_int.h"

static char tmpdir[256];
static http_server server;

/* A request context as server.c makes one, for target; free with req_free. */
static http_req *req_new(http_method m, const char *target) {
    http_req *r = http_req_new(target);
    r->srv = &server;
    r->method = m;
    buf_init(&r->body, 0);
    buf_init(&r->scratch, 0);
    return r;
}

static void req_free(http_req *r) {
    if (r->resp) MHD_destroy_response(r->resp);
    if (r->db) mimeo_db_close(r->db);
    buf_destroy(&r->body);
    buf_destroy(&r->scratch);
    free(r);
}

static bool seg_is(const http_req *r, size_t i, const char *s, size_t len) {
    return i < r->nseg && r->seg_len[i] == len && memcmp(r->seg[i], s, len) == 0 &&
           r->seg[i][len] == '\0';
}

#define SEG_IS(r, i, lit) seg_is(r, i, lit, sizeof(lit) - 1)

/* ---- percent-decoding ------------------------------------------------------------------ */

static size_t decode(char *out, const char *in, bool plus) {
    size_t n = strlen(in);
    memcpy(out, in, n + 1);
    size_t dl = http_pct_decode(out, n, plus);
    if (dl != (size_t)-1) out[dl] = 0;
    return dl;
}

static void test_pct_decode(void) {
    char b[64];
    CHECK_EQ_INT(decode(b, "abc", false), 3);
    CHECK_EQ_STR(b, "abc");
    CHECK_EQ_INT(decode(b, "a%2Fb%2fc", false), 5);
    CHECK_EQ_STR(b, "a/b/c");
    CHECK_EQ_INT(decode(b, "a+b", false), 3);
    CHECK_EQ_STR(b, "a+b");
    CHECK_EQ_INT(decode(b, "a+b%2B", true), 4);
    CHECK_EQ_STR(b, "a b+");
    CHECK_EQ_INT(decode(b, "%41%42", false), 2);
    CHECK_EQ_STR(b, "AB");
    CHECK_EQ_INT(decode(b, "", false), 0);
    /* A NUL byte is data: the length keeps it. */
    CHECK_EQ_INT(decode(b, "a%00b", false), 3);
    CHECK(memcmp(b, "a\0b", 3) == 0);
    /* Truncated or non-hex escapes are refused. */
    CHECK_EQ_INT(decode(b, "%", false), (size_t)-1);
    CHECK_EQ_INT(decode(b, "a%4", false), (size_t)-1);
    CHECK_EQ_INT(decode(b, "%zz", false), (size_t)-1);
    CHECK_EQ_INT(decode(b, "%4g", false), (size_t)-1);
    CHECK_EQ_INT(decode(b, "ok%", false), (size_t)-1);
}

/* ---- paths ----------------------------------------------------------------------------- */

static void test_paths(void) {
    http_req *r = req_new(HTTP_GET, "/");
    CHECK_EQ_INT(r->nseg, 0);
    CHECK(!r->url_bad);
    req_free(r);

    r = req_new(HTTP_GET, "/db/doc");
    CHECK_EQ_INT(r->nseg, 2);
    CHECK(SEG_IS(r, 0, "db") && SEG_IS(r, 1, "doc"));
    req_free(r);

    /* A trailing slash adds no segment; an inner empty segment is kept. */
    r = req_new(HTTP_GET, "/db/");
    CHECK_EQ_INT(r->nseg, 1);
    CHECK(SEG_IS(r, 0, "db"));
    req_free(r);
    r = req_new(HTTP_GET, "/db//x");
    CHECK_EQ_INT(r->nseg, 3);
    CHECK(SEG_IS(r, 0, "db") && SEG_IS(r, 1, "") && SEG_IS(r, 2, "x"));
    req_free(r);

    /* Split first, decode after: an encoded slash stays inside its segment; '+' is a plus. */
    r = req_new(HTTP_GET, "/my%2Fdb/_design%2Fx/a+b");
    CHECK_EQ_INT(r->nseg, 3);
    CHECK(SEG_IS(r, 0, "my/db") && SEG_IS(r, 1, "_design/x") && SEG_IS(r, 2, "a+b"));
    req_free(r);

    /* A NUL in an id is kept with its length. */
    r = req_new(HTTP_GET, "/db/a%00b");
    CHECK_EQ_INT(r->nseg, 2);
    CHECK(seg_is(r, 1, "a\0b", 3));
    req_free(r);

    /* More segments than are kept are still counted (attachment names hold slashes). */
    r = req_new(HTTP_GET, "/1/2/3/4/5/6/7/8/9/10");
    CHECK_EQ_INT(r->nseg, 10);
    CHECK(SEG_IS(r, 7, "8"));
    req_free(r);

    r = req_new(HTTP_GET, "/db/bad%zzescape");
    CHECK(r->url_bad);
    req_free(r);

    /* A long target is parsed the same (its bytes sized to it, after the context). */
    char *big = malloc(4096);
    strcpy(big, "/db/");
    memset(big + 4, 'x', 3000);
    strcpy(big + 3004, "?k=v");
    r = req_new(HTTP_GET, big);
    CHECK(r->raw == (char *)(r->args + r->args_cap));
    CHECK_EQ_INT(r->nseg, 2);
    CHECK_EQ_INT(r->seg_len[1], 3000);
    CHECK_EQ_INT(r->nargs, 1);
    req_free(r);
    free(big);
}

/* ---- query arguments ------------------------------------------------------------------- */

static void test_query(void) {
    http_req *r = req_new(HTTP_GET, "/db/_all_docs?limit=10&startkey=%22a+b%2B%22;descending=true&flag&=v&&x=");
    CHECK(!r->url_bad);
    CHECK_EQ_INT(r->nseg, 2);
    CHECK(SEG_IS(r, 1, "_all_docs"));
    size_t len = 0;
    CHECK_EQ_STR(http_arg_get(r, "limit", &len), "10");
    CHECK_EQ_INT(len, 2);
    CHECK_EQ_STR(http_arg_get(r, "startkey", &len), "\"a b+\"");
    CHECK_EQ_STR(http_arg_get(r, "descending", NULL), "true");
    CHECK_EQ_STR(http_arg_get(r, "flag", &len), "");
    CHECK_EQ_INT(len, 0);
    CHECK_EQ_STR(http_arg_get(r, "", NULL), "v");
    CHECK_EQ_STR(http_arg_get(r, "x", NULL), "");
    CHECK(http_arg_get(r, "missing", NULL) == NULL);
    CHECK_EQ_INT(r->nargs, 6);
    req_free(r);

    /* '?' ends the path even when the query is empty; a '?' inside the query is data. */
    r = req_new(HTTP_GET, "/db?");
    CHECK_EQ_INT(r->nseg, 1);
    CHECK_EQ_INT(r->nargs, 0);
    req_free(r);
    r = req_new(HTTP_GET, "/db?a=b?c");
    CHECK_EQ_STR(http_arg_get(r, "a", NULL), "b?c");
    req_free(r);

    /* The first of repeated arguments wins. */
    r = req_new(HTTP_GET, "/?k=1&k=2");
    CHECK_EQ_STR(http_arg_get(r, "k", NULL), "1");
    req_free(r);

    /* A bad escape in the query marks the request bad and drops that argument. */
    r = req_new(HTTP_GET, "/db?a=%g1&b=2");
    CHECK(r->url_bad);
    CHECK(http_arg_get(r, "a", NULL) == NULL);
    CHECK_EQ_STR(http_arg_get(r, "b", NULL), "2");
    req_free(r);

    /* Past HTTP_MAX_ARGS, arguments are ignored rather than overrun. */
    char q[2048] = "/db?";
    for (int i = 0; i < HTTP_MAX_ARGS + 10; i++)
        snprintf(q + strlen(q), sizeof q - strlen(q), "a%d=%d&", i, i);
    r = req_new(HTTP_GET, q);
    CHECK_EQ_INT(r->nargs, HTTP_MAX_ARGS);
    CHECK_EQ_STR(http_arg_get(r, "a0", NULL), "0");
    CHECK(http_arg_get(r, "a70", NULL) == NULL);
    req_free(r);
}

static void test_typed_args(void) {
    http_req *r = req_new(HTTP_GET, "/db/_changes?t=true&f=false&n=42&max=18446744073709551615"
                                    "&big=99999999999999999999&neg=-1&j=%5B1%2C%22a%22%5D&s=%22x%22");
    bool b = false;
    uint64_t u = 0;
    CHECK_EQ_INT(http_arg_bool(r, "t", &b), 1);
    CHECK(b);
    CHECK_EQ_INT(http_arg_bool(r, "f", &b), 1);
    CHECK(!b);
    CHECK_EQ_INT(http_arg_bool(r, "absent", &b), 0);
    CHECK_EQ_INT(http_arg_u64(r, "n", &u), 1);
    CHECK_EQ_INT(u, 42);
    CHECK_EQ_INT(http_arg_u64(r, "absent", &u), 0);
    jval *v = NULL;
    CHECK_EQ_INT(http_arg_json(r, "j", &v), 1);
    CHECK(v && v->type == JV_ARRAY && v->count == 2);
    jval_free(v);
    v = NULL;
    CHECK_EQ_INT(http_arg_json_str(r, "s", &v), 1);
    CHECK(v && v->type == JV_STRING && v->len == 1 && v->str[0] == 'x');
    jval_free(v);
    CHECK(r->resp == NULL);   /* nothing so far was an error */
    req_free(r);

    /* Each bad value replies 400 query_parse_error and says so with -1. */
    const char *bad[] = {"/?x=yes", "/?x=TRUE", "/?x=", "/?x=1e3", "/?x=-1",
                         "/?x=99999999999999999999", "/?x=%7B", "/?x=1"};
    int kinds[] = {0, 0, 0, 1, 1, 1, 2, 3};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r = req_new(HTTP_GET, bad[i]);
        int rc;
        jval *t = NULL;
        switch (kinds[i]) {
        case 0: rc = http_arg_bool(r, "x", &b); break;
        case 1: rc = http_arg_u64(r, "x", &u); break;
        case 2: rc = http_arg_json(r, "x", &t); break;
        default: rc = http_arg_json_str(r, "x", &t); break;
        }
        CHECK_EQ_INT(rc, -1);
        CHECK(t == NULL);
        CHECK_EQ_INT(r->status, 400);
        CHECK(r->resp != NULL);
        if (rc != -1) fprintf(stderr, "  for %s\n", bad[i]);
        req_free(r);
    }

    /* String lists: from the query, or from a POST body's member, which wins. */
    http_string_list l;
    r = req_new(HTTP_GET, "/db/_all_docs?keys=%5B%22a%22%2C%22b%22%5D");
    CHECK_EQ_INT(http_arg_string_list(r, "keys", "bad_request", "keys must be strings", &l), 1);
    CHECK_EQ_INT(l.count, 2);
    CHECK(l.count == 2 && l.lens[1] == 1 && l.strs[1][0] == 'b');
    http_string_list_destroy(&l);
    req_free(r);
    r = req_new(HTTP_POST, "/db/_all_docs?keys=%5B%22q%22%5D");
    buf_puts(&r->body, "{\"keys\":[\"x\",\"y\",\"z\"]}");
    CHECK_EQ_INT(http_arg_string_list(r, "keys", "bad_request", "keys must be strings", &l), 1);
    CHECK_EQ_INT(l.count, 3);
    http_string_list_destroy(&l);
    req_free(r);
    r = req_new(HTTP_GET, "/db/_all_docs?keys=%5B1%5D");
    CHECK_EQ_INT(http_arg_string_list(r, "keys", "bad_request", "keys must be strings", &l), -1);
    CHECK_EQ_INT(r->status, 400);
    req_free(r);
    r = req_new(HTTP_GET, "/db/_all_docs");
    CHECK_EQ_INT(http_arg_string_list(r, "keys", "bad_request", "keys must be strings", &l), 0);
    req_free(r);
}

/* ---- routing --------------------------------------------------------------------------- */

typedef struct route_case {
    http_method m;
    const char *target;
    unsigned    status;
    const char *allow;   /* the Allow header of a 405, or NULL */
} route_case;

static void route_check(const route_case *c) {
    http_req *r = req_new(c->m, c->target);
    http_route(r);
    const char *allow = r->resp ? MHD_get_response_header(r->resp, MHD_HTTP_HEADER_ALLOW) : NULL;
    bool ok = r->resp != NULL && r->status == c->status &&
              (c->allow ? allow && strcmp(allow, c->allow) == 0 : allow == NULL);
    if (!ok) {
        fprintf(stderr, "route %d %s: got %u (Allow %s), want %u (Allow %s)\n", (int)c->m,
                c->target, r->status, allow ? allow : "-", c->status, c->allow ? c->allow : "-");
        CHECK(ok);
    }
    req_free(r);
}

static void test_routes(void) {
    const route_case cases[] = {
        {HTTP_GET, "/", 200, NULL},
        {HTTP_HEAD, "/", 200, NULL},
        {HTTP_POST, "/", 405, "GET,HEAD"},
        {HTTP_GET, "/_up", 200, NULL},
        {HTTP_DELETE, "/_up", 405, "GET,HEAD"},
        {HTTP_GET, "/_all_dbs", 200, NULL},
        {HTTP_GET, "/_uuids?count=3", 200, NULL},
        {HTTP_PUT, "/_uuids", 405, "GET,HEAD"},
        /* Endpoints not served are 404, other "_" names are illegal database names. */
        {HTTP_GET, "/_session", 200, NULL},
        {HTTP_PUT, "/_session", 405, "DELETE,GET,HEAD,POST"},
        {HTTP_GET, "/_config", 404, NULL},
        {HTTP_GET, "/_node/_local/_config", 404, NULL},
        {HTTP_GET, "/_nope", 400, NULL},
        {HTTP_GET, "/Bad", 400, NULL},
        {HTTP_GET, "/missing", 404, NULL},
        {HTTP_OTHER, "/db", 405, "DELETE,GET,HEAD,POST,PUT"},
        {HTTP_PUT, "/db", 201, NULL},
        {HTTP_PUT, "/db", 412, NULL},
        {HTTP_GET, "/db", 200, NULL},
        {HTTP_GET, "/db/", 200, NULL},
        {HTTP_GET, "/db/_all_docs", 200, NULL},
        /* A feed made outside a connection (no MHD connection to watch) still opens. */
        {HTTP_GET, "/db/_changes", 200, NULL},
        {HTTP_GET, "/db/_changes?filter=_doc_ids&doc_ids=%5B%22a%22%5D&descending=true", 200, NULL},
        {HTTP_DELETE, "/db/_all_docs", 405, "GET,HEAD,POST"},
        {HTTP_GET, "/db/_bulk_docs", 405, "POST"},
        {HTTP_GET, "/db/_revs_limit", 200, NULL},
        {HTTP_POST, "/db/_revs_limit", 405, "GET,PUT"},
        {HTTP_GET, "/db/_compact/ddoc", 405, "POST"},
        {HTTP_GET, "/db/_find", 405, "POST"},
        {HTTP_GET, "/db/_local", 400, NULL},
        {HTTP_GET, "/db/_local/", 400, NULL},
        {HTTP_GET, "/db/_local/x/y", 400, NULL},
        {HTTP_GET, "/db/_local%2Fx/y", 400, NULL},
        {HTTP_GET, "/db/_local/x", 404, NULL},
        {HTTP_GET, "/db/doc", 404, NULL},
        {HTTP_GET, "/db/_design/x", 404, NULL},
        {HTTP_GET, "/db/_design%2Fx", 404, NULL},
        {HTTP_GET, "/db/doc/att.txt", 404, NULL},     /* an attachment of a missing db */
        {HTTP_GET, "/db/_design/x/a/b", 404, NULL},
        {HTTP_POST, "/db/doc/att", 405, "DELETE,GET,HEAD,PUT"},
        {HTTP_POST, "/db/doc", 405, "DELETE,GET,HEAD,PUT"},
        {HTTP_GET, "/db/%zz", 400, NULL},
        {HTTP_GET, "/db?x=%", 400, NULL},
        {HTTP_DELETE, "/db", 200, NULL},
        {HTTP_GET, "/db/doc", 404, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) route_check(&cases[i]);
}

/* Comma-separated config lists (allowed_hosts, CORS origins): items trimmed, any case. */
static void test_list_has(void) {
    const char *l = " a.example.com ,B.example.com:5984,, c ";
    CHECK(http_list_has(l, "a.example.com", 13));
    CHECK(http_list_has(l, "b.EXAMPLE.com:5984", 18));
    CHECK(http_list_has(l, "c", 1));
    CHECK(!http_list_has(l, "b.example.com", 13));   /* a prefix of an item is not it */
    CHECK(!http_list_has(l, "a.example.co", 12));
    CHECK(!http_list_has(l, "", 0));
    CHECK(!http_list_has("", "a", 1));
    CHECK(!http_list_has(NULL, "a", 1));
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mimeo-test-http-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    mimeo_err err;
    if (mimeo_env_open(tmpdir, NULL, &server.env, &err) != 0) {
        fprintf(stderr, "env open: %s\n", err.reason);
        return 1;
    }
    server.limits.max_depth = JSON_DEFAULT_MAX_DEPTH;
    server.limits.max_doc_bytes = 1 << 20;
    RUN(test_pct_decode);
    RUN(test_paths);
    RUN(test_query);
    RUN(test_typed_args);
    RUN(test_routes);
    RUN(test_list_has);
    mimeo_env_close(server.env);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_report();
}
