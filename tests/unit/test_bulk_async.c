/* mimeo_bulk_docs_async against mimeo_bulk_docs_as: the same body sent to two databases in
 * the same state, one each way, must get the same answer byte for byte (revision ids are a
 * hash of the content, so they match), the same error, and leave the same documents. Also:
 * the completion runs on the writer thread when the write was queued, and the entry-by-entry
 * form lists what the entry_fn of the waiting call lists. */
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "common/buf.h"
#include "db/db_int.h"
#include "store/store.h"
#include "mimeo.h"

static char tmpdir[256];

static mimeo_db *fresh_db(mimeo_env *env, const char *name) {
    mimeo_err err;
    mimeo_db_delete(env, name, &err);
    CHECK_EQ_INT(mimeo_db_create(env, name, &err), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, name, &db, &err), 0);
    return db;
}

/* ---- one asynchronous call, waited for ---------------------------------------------------- */

typedef struct waiter {
    pthread_mutex_t    mu;
    pthread_cond_t     cv;
    bool               called;
    int                calls;
    bool               on_caller;   /* done ran on the calling thread */
    pthread_t          caller;
    mimeo_bulk_result *res;
} waiter;

static void on_done(void *arg, mimeo_bulk_result *res) {
    waiter *w = arg;
    pthread_mutex_lock(&w->mu);
    w->res = res;
    w->calls++;
    w->on_caller = pthread_equal(pthread_self(), w->caller);
    w->called = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* The result of mimeo_bulk_docs_async, once done was called; *on_caller tells where. */
static mimeo_bulk_result *bulk_async(mimeo_db *db, const char *body, size_t len,
                                     const mimeo_bulk_docs_opts *o, bool *on_caller) {
    waiter w = {.caller = pthread_self()};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    mimeo_bulk_docs_async(db, body, len, o, on_done, &w);
    pthread_mutex_lock(&w.mu);
    while (!w.called) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    usleep(1000);   /* a second call would come now */
    pthread_mutex_lock(&w.mu);
    CHECK_EQ_INT(w.calls, 1);
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    if (on_caller) *on_caller = w.on_caller;
    return w.res;
}

/* ---- answers compared ----------------------------------------------------------------------- */

enum { ON_ANY, ON_CALLER, ON_WRITER };

/* body to s the waiting way and to a without waiting: the same code, reply and error. want
 * is a piece of the reply (or the error's name) that must be there; where says which
 * thread must have run the completion. */
static void pair(mimeo_db *s, mimeo_db *a, const char *body, int want_rc, const char *want,
                 int where) {
    size_t len = strlen(body);
    mimeo_bulk_docs_opts o = {0};
    char *so = NULL, *ao = NULL;
    size_t sl = 0, al = 0;
    mimeo_err se = {0}, ae = {0};
    int src = mimeo_bulk_docs_as(s, body, len, &o, &so, &sl, &se);
    bool on_caller = false;
    mimeo_bulk_result *res = bulk_async(a, body, len, &o, &on_caller);
    CHECK(res != NULL);
    int arc = mimeo_bulk_result_take(res, &ao, &al, &ae);
    CHECK_EQ_INT(src, want_rc);
    CHECK_EQ_INT(arc, src);
    CHECK((!so && !ao) || (so && ao && sl == al && !strcmp(so, ao)));
    if (so && ao && strcmp(so, ao)) fprintf(stderr, "sync:  %s\nasync: %s\n", so, ao);
    if (src) {
        CHECK_EQ_STR(se.error, ae.error);
        CHECK_EQ_STR(se.reason, ae.reason);
        CHECK_EQ_STR(se.error, want);
    } else {
        CHECK(so && strstr(so, want) != NULL);
    }
    if (where == ON_CALLER) CHECK(on_caller);
    if (where == ON_WRITER) CHECK(!on_caller);
    mimeo_free(so);
    mimeo_free(ao);
}

/* Both databases hold the same winners for ids prefix000 … and the same counts. */
static void same_dbs(mimeo_db *s, mimeo_db *a, const char *prefix, int n) {
    mimeo_db_info is, ia;
    CHECK_EQ_INT(mimeo_db_info_get(s, &is), 0);
    CHECK_EQ_INT(mimeo_db_info_get(a, &ia), 0);
    CHECK_EQ_INT(is.doc_count, ia.doc_count);
    CHECK_EQ_INT(is.doc_del_count, ia.doc_del_count);
    CHECK_EQ_INT(is.update_seq, ia.update_seq);
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "%s%03d", prefix, i);
        char *x = NULL, *y = NULL;
        size_t xl = 0, yl = 0;
        mimeo_err e;
        int xr = mimeo_doc_get(s, id, strlen(id), NULL, &x, &xl, &e);
        int yr = mimeo_doc_get(a, id, strlen(id), NULL, &y, &yl, &e);
        CHECK_EQ_INT(xr, yr);
        CHECK((!x && !y) || (x && y && !strcmp(x, y)));
        mimeo_free(x);
        mimeo_free(y);
    }
}

static void docs_body(buf *b, const char *head, const char *prefix, int n, const char *extra) {
    buf_reset(b);
    buf_printf(b, "{%s\"docs\":[", head);
    for (int i = 0; i < n; i++)
        buf_printf(b, "%s{\"_id\":\"%s%03d\",\"n\":%d%s}", i ? "," : "", prefix, i, i, extra);
    buf_puts(b, "]}");
}

static mimeo_env *env;
static mimeo_db *sdb, *adb;

static void test_normal_batch(void) {
    buf b;
    buf_init(&b, 0);
    docs_body(&b, "", "n", 10, "");
    pair(sdb, adb, buf_cstr(&b), 0, "{\"ok\":true,\"id\":\"n000\",\"rev\":\"1-", ON_WRITER);
    same_dbs(sdb, adb, "n", 10);
    /* A batch over the HTTP layer's inline reply size, with _local documents in it. */
    buf_reset(&b);
    buf_puts(&b, "{\"docs\":[");
    for (int i = 0; i < 200; i++)
        buf_printf(&b, "%s{\"_id\":\"%sm%03d\",\"v\":\"%0100d\"}", i ? "," : "",
                   i % 10 == 0 ? "_local/" : "", i, i);
    buf_puts(&b, "]}");
    pair(sdb, adb, buf_cstr(&b), 0, "\"id\":\"_local/m000\"", ON_WRITER);
    same_dbs(sdb, adb, "m", 200);
    /* No documents: answered at once. */
    pair(sdb, adb, "{\"docs\":[]}", 0, "[]", ON_CALLER);
    buf_destroy(&b);
}

static void test_conflicts(void) {
    buf b;
    buf_init(&b, 0);
    docs_body(&b, "", "c", 5, "");
    pair(sdb, adb, buf_cstr(&b), 0, "\"ok\":true", ON_WRITER);
    /* Again without revisions: each one a conflict; with a new one among them. */
    buf_reset(&b);
    buf_puts(&b, "{\"docs\":[{\"_id\":\"c000\"},{\"_id\":\"c005\"},{\"_id\":\"c001\",\"x\":1},"
                 "{\"_id\":\"c002\",\"_rev\":\"1-00000000000000000000000000000000\"}]}");
    pair(sdb, adb, buf_cstr(&b), 0, "{\"id\":\"c000\",\"error\":\"conflict\"", ON_WRITER);
    same_dbs(sdb, adb, "c", 6);
    buf_destroy(&b);
}

static void test_all_or_nothing(void) {
    buf b;
    buf_init(&b, 0);
    docs_body(&b, "", "a", 3, "");
    pair(sdb, adb, buf_cstr(&b), 0, "\"ok\":true", ON_WRITER);
    docs_body(&b, "\"all_or_nothing\":true,", "a", 6, ",\"again\":true");
    pair(sdb, adb, buf_cstr(&b), MIMEO_EEXPECTATION, "expectation_failed", ON_WRITER);
    same_dbs(sdb, adb, "a", 6);   /* a003 … a005 not written either way */
    buf_destroy(&b);
}

static void test_new_edits_false(void) {
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"new_edits\":false,\"docs\":[");
    for (int i = 0; i < 8; i++)
        buf_printf(&b, "%s{\"_id\":\"r%03d\",\"_rev\":\"3-%032x\",\"_revisions\":{\"start\":3,"
                       "\"ids\":[\"%032x\",\"%032x\",\"%032x\"]},\"i\":%d}",
                   i ? "," : "", i, i + 1, i + 1, i + 2, i + 3, i);
    buf_puts(&b, "]}");
    pair(sdb, adb, buf_cstr(&b), 0, "[]", ON_WRITER);
    /* the same again: nothing new, nothing listed */
    pair(sdb, adb, buf_cstr(&b), 0, "[]", ON_WRITER);
    same_dbs(sdb, adb, "r", 8);
    /* one without _rev: the request fails, nothing written */
    buf_reset(&b);
    buf_puts(&b, "{\"new_edits\":false,\"docs\":[{\"_id\":\"r100\",\"_rev\":\"1-aa\"},"
                 "{\"_id\":\"r101\"}]}");
    pair(sdb, adb, buf_cstr(&b), MIMEO_EINVAL, "bad_request", ON_CALLER);
    buf_destroy(&b);
}

static void test_request_errors(void) {
    pair(sdb, adb, "{\"docs\":[{\"_id\":\"x\"", MIMEO_EBADJSON, "bad_request", ON_CALLER);
    pair(sdb, adb, "not json", MIMEO_EBADJSON, "bad_request", ON_CALLER);
    pair(sdb, adb, "{\"doc\":[]}", MIMEO_EINVAL, "bad_request", ON_CALLER);
    pair(sdb, adb, "{\"docs\":[{\"_id\":\"_bad\"}]}", MIMEO_EBADID, "illegal_docid", ON_CALLER);
    /* too many documents */
    mimeo_bulk_docs_opts o = {.max_docs = 2};
    const char *body = "{\"docs\":[{},{},{}]}";
    char *so = NULL, *ao = NULL;
    size_t sl, al;
    mimeo_err se = {0}, ae = {0};
    int src = mimeo_bulk_docs_as(sdb, body, strlen(body), &o, &so, &sl, &se);
    int arc = mimeo_bulk_result_take(bulk_async(adb, body, strlen(body), &o, NULL), &ao, &al,
                                     &ae);
    CHECK_EQ_INT(src, MIMEO_ETOOLARGE);
    CHECK_EQ_INT(arc, src);
    CHECK_EQ_STR(se.error, ae.error);
    CHECK(!so && !ao);
}

/* The entry-by-entry form lists what entry_fn lists, and its errors are the same. */
typedef struct entries {
    buf text;
    int n;
} entries;

static int put_entry(void *ctx, const mimeo_bulk_entry *e) {
    entries *x = ctx;
    x->n++;
    buf_put(&x->text, e->id, e->id_len);
    buf_printf(&x->text, "|%d|%s|%s|%s\n", e->code, e->rev ? e->rev : "-",
               e->error ? e->error : "-", e->reason ? e->reason : "-");
    return 0;
}

static void test_entries(void) {
    const char *body = "{\"docs\":[{\"_id\":\"e000\"},{\"_id\":\"_local/e001\"},"
                       "{\"_id\":\"n000\"}]}";
    entries se = {0}, ae = {0};
    buf_init(&se.text, 0);
    buf_init(&ae.text, 0);
    mimeo_bulk_docs_opts so = {.entry_fn = put_entry, .entry_ctx = &se};
    char *out = NULL;
    size_t len = 0;
    mimeo_err e1 = {0}, e2 = {0};
    CHECK_EQ_INT(mimeo_bulk_docs_as(sdb, body, strlen(body), &so, &out, &len, &e1), 0);
    CHECK(out == NULL);
    mimeo_bulk_docs_opts ao = {.entry_fn = put_entry, .entry_ctx = &ae};   /* ignored */
    mimeo_bulk_result *res = bulk_async(adb, body, strlen(body), &ao, NULL);
    CHECK_EQ_INT(mimeo_bulk_result_count(res), 3);
    CHECK_EQ_INT(ae.n, 0);
    CHECK_EQ_INT(mimeo_bulk_result_entries(res, put_entry, &ae, &e2), 0);
    CHECK_EQ_INT(se.n, 3);
    CHECK_EQ_INT(ae.n, 3);
    CHECK(se.text.len == ae.text.len && !memcmp(se.text.data, ae.text.data, se.text.len));
    CHECK(strstr(buf_cstr(&ae.text), "n000|") != NULL);
    buf_destroy(&se.text);
    buf_destroy(&ae.text);
    /* all_or_nothing through the entries: the failures, then expectation_failed */
    body = "{\"all_or_nothing\":true,\"docs\":[{\"_id\":\"e100\"},{\"_id\":\"e000\"}]}";
    memset(&se, 0, sizeof se);
    memset(&ae, 0, sizeof ae);
    buf_init(&se.text, 0);
    buf_init(&ae.text, 0);
    int src = mimeo_bulk_docs_as(sdb, body, strlen(body), &so, &out, &len, &e1);
    int arc = mimeo_bulk_result_entries(bulk_async(adb, body, strlen(body), NULL, NULL),
                                        put_entry, &ae, &e2);
    CHECK_EQ_INT(src, MIMEO_EEXPECTATION);
    CHECK_EQ_INT(arc, src);
    CHECK_EQ_STR(e1.error, e2.error);
    CHECK(se.text.len == ae.text.len && !memcmp(se.text.data, ae.text.data, se.text.len));
    buf_destroy(&se.text);
    buf_destroy(&ae.text);
    /* NULL (out of memory) and free without a reply */
    mimeo_err e3 = {0};
    char *o3 = (char *)1;
    size_t l3 = 1;
    CHECK_EQ_INT(mimeo_bulk_result_take(NULL, &o3, &l3, &e3), MIMEO_ENOMEM);
    CHECK(o3 == NULL && l3 == 0);
    mimeo_bulk_result_free(NULL);
    mimeo_bulk_result_free(bulk_async(adb, "{\"docs\":[{\"_id\":\"f\"}]}", 22, NULL, NULL));
    CHECK_EQ_INT(mimeo_bulk_docs(sdb, "{\"docs\":[{\"_id\":\"f\"}]}", 22, &out, &len, &e1), 0);
    mimeo_free(out);
}

/* A large body while the writer idles is written as it is parsed, both ways; the
 * asynchronous call hands the end of the request to the job's completion. */
static void wait_writer_idle(mimeo_db *db) {
    for (int i = 0; i < 1000 && !store_write_idle(db->env->store); i++) usleep(1000);
}

static void test_streamed(void) {
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"docs\":[");
    for (int i = 0; i < 400; i++)
        buf_printf(&b, "%s{\"_id\":\"s%03d\",\"pad\":\"%01000d\"}", i ? "," : "", i, i);
    buf_puts(&b, "]}");
    CHECK(b.len > db_bulk_stream_min_bytes);
    for (int round = 0; round < 2; round++) {   /* written, then every one a conflict */
        unsigned long before = db_bulk_streamed_count();
        wait_writer_idle(sdb);
        char *so = NULL, *ao = NULL;
        size_t sl = 0, al = 0;
        mimeo_err se = {0}, ae = {0};
        int src = mimeo_bulk_docs_as(sdb, b.data, b.len, NULL, &so, &sl, &se);
        wait_writer_idle(adb);
        bool on_caller = true;
        mimeo_bulk_result *res = bulk_async(adb, b.data, b.len, NULL, &on_caller);
        CHECK_EQ_INT(db_bulk_streamed_count() - before, 2);
        CHECK_EQ_INT(mimeo_bulk_result_count(res), 400);
        int arc = mimeo_bulk_result_take(res, &ao, &al, &ae);
        CHECK_EQ_INT(src, 0);
        CHECK_EQ_INT(arc, 0);
        CHECK(so && ao && sl == al && !strcmp(so, ao));
        CHECK(so && strstr(so, round ? "\"error\":\"conflict\"" : "\"ok\":true"));
        CHECK(!on_caller);
        mimeo_free(so);
        mimeo_free(ao);
    }
    same_dbs(sdb, adb, "s", 400);
    buf_destroy(&b);
}

/* Attachments and CRDT databases are written waiting (a second round after the commit):
 * the answers stay the same. */
static void test_written_waiting(void) {
    const char *body = "{\"docs\":[{\"_id\":\"t000\",\"_attachments\":{\"a.txt\":{"
                       "\"content_type\":\"text/plain\",\"data\":\"aGVsbG8=\"}}}]}";
    pair(sdb, adb, body, 0, "\"id\":\"t000\"", ON_CALLER);
    same_dbs(sdb, adb, "t", 1);
    /* CRDT: a replicated branch makes a conflict that the write's merge resolves. */
    mimeo_db *s = fresh_db(env, "crdt-s"), *a = fresh_db(env, "crdt-a");
    const char *ddoc = "{\"rules\":[{\"prefix\":\"c:\"}]}";
    mimeo_put_result pr;
    CHECK_EQ_INT(mimeo_doc_put(s, "_design/crdt", 12, ddoc, strlen(ddoc), NULL, &pr, NULL), 0);
    mimeo_free(pr.id);
    CHECK_EQ_INT(mimeo_doc_put(a, "_design/crdt", 12, ddoc, strlen(ddoc), NULL, &pr, NULL), 0);
    mimeo_free(pr.id);
    pair(s, a, "{\"new_edits\":false,\"docs\":[{\"_id\":\"c:000\",\"_rev\":\"1-aaaa\","
               "\"n\":1}]}", 0, "[]", ON_CALLER);
    pair(s, a, "{\"new_edits\":false,\"docs\":[{\"_id\":\"c:000\",\"_rev\":\"1-bbbb\","
               "\"m\":2}]}", 0, "[]", ON_CALLER);
    same_dbs(s, a, "c:", 1);
    char *doc = NULL;
    size_t dl = 0;
    mimeo_err e;
    mimeo_get_opts go = {.conflicts = true};
    CHECK_EQ_INT(mimeo_doc_get(a, "c:000", 5, &go, &doc, &dl, &e), 0);
    CHECK(doc && !strstr(doc, "_conflicts"));   /* merged */
    mimeo_free(doc);
    mimeo_db_close(s);
    mimeo_db_close(a);
}

/* A database deleted while its handle is open: not_found either way, nothing answered. */
static void test_deleted_db(void) {
    mimeo_db *s = fresh_db(env, "gone-s"), *a = fresh_db(env, "gone-a");
    mimeo_err e;
    CHECK_EQ_INT(mimeo_db_delete(env, "gone-s", &e), 0);
    CHECK_EQ_INT(mimeo_db_delete(env, "gone-a", &e), 0);
    pair(s, a, "{\"docs\":[{\"_id\":\"x\"}]}", MIMEO_ENOTFOUND, "not_found", ON_ANY);
    mimeo_db_close(s);
    mimeo_db_close(a);
}

/* Many in flight at once from one thread: each completion comes once, in its own group or
 * shared, and every document is written. */
#define MANY 64
static void test_many_in_flight(void) {
    waiter w[MANY];
    buf bodies[MANY];
    for (int i = 0; i < MANY; i++) {
        w[i] = (waiter){.caller = pthread_self()};
        pthread_mutex_init(&w[i].mu, NULL);
        pthread_cond_init(&w[i].cv, NULL);
        buf_init(&bodies[i], 0);
        buf_printf(&bodies[i], "{\"docs\":[{\"_id\":\"p%03d\"},{\"_id\":\"q%03d\"}]}", i, i);
        mimeo_bulk_docs_async(adb, bodies[i].data, bodies[i].len, NULL, on_done, &w[i]);
    }
    for (int i = 0; i < MANY; i++) {
        pthread_mutex_lock(&w[i].mu);
        while (!w[i].called) pthread_cond_wait(&w[i].cv, &w[i].mu);
        pthread_mutex_unlock(&w[i].mu);
        char *out = NULL;
        size_t len = 0;
        mimeo_err e;
        CHECK_EQ_INT(mimeo_bulk_result_take(w[i].res, &out, &len, &e), 0);
        CHECK(out && strstr(out, "\"ok\":true") && strstr(out, "q0"));
        mimeo_free(out);
        CHECK_EQ_INT(w[i].calls, 1);
        pthread_cond_destroy(&w[i].cv);
        pthread_mutex_destroy(&w[i].mu);
        buf_destroy(&bodies[i]);
    }
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(adb, &info), 0);
    char *doc = NULL;
    size_t dl = 0;
    mimeo_err e;
    CHECK_EQ_INT(mimeo_doc_get(adb, "q063", 4, NULL, &doc, &dl, &e), 0);
    mimeo_free(doc);
}

int main(void) {
    check_tmpdir_make(tmpdir, sizeof tmpdir, "bulk-async");
    mimeo_err err;
    if (mimeo_env_open(tmpdir, NULL, &env, &err) != 0) {
        fprintf(stderr, "env open: %s\n", err.reason);
        return 1;
    }
    sdb = fresh_db(env, "sync");
    adb = fresh_db(env, "async");
    RUN(test_normal_batch);
    RUN(test_conflicts);
    RUN(test_all_or_nothing);
    RUN(test_new_edits_false);
    RUN(test_request_errors);
    RUN(test_entries);
    RUN(test_streamed);
    RUN(test_written_waiting);
    RUN(test_deleted_db);
    RUN(test_many_in_flight);
    mimeo_db_close(sdb);
    mimeo_db_close(adb);
    mimeo_env_close(env);
    check_tmpdir_remove(tmpdir);
    return check_report();
}
