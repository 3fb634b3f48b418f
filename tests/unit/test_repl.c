/* Unit tests of the replicator without HTTP: request parsing, replication ids, and whole
 * replications between two local databases through mimeo_replicate (conflicts, deletions,
 * no_changes, doc_ids, continuous start and cancel, a missing source). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "check.h"
#include "mimeo.h"
#include "repl/repl_int.h"
#include "json/json.h"

static void test_req_parse(void) {
    repl_req r;
    mimeo_err e = {0};
    const char *js = "{\"source\":\"http://u:secret@h:5984/a/\",\"target\":{\"url\":\"b\","
                     "\"headers\":{\"X-A\":\"1\"},\"auth\":{\"basic\":{\"username\":\"adm\","
                     "\"password\":\"pw\"}}},\"continuous\":true,\"doc_ids\":[\"z\",\"a\"],"
                     "\"since_seq\":5,\"checkpoint_interval\":250}";
    CHECK_EQ_INT(repl_req_parse(js, strlen(js), &r, &e), 0);
    CHECK(!r.source.local);
    CHECK(r.target.local);
    CHECK_EQ_STR(r.target.url, "b");
    CHECK_EQ_INT(r.target.nheaders, 1);
    CHECK_EQ_STR(r.target.headers[0], "X-A: 1");
    CHECK_EQ_STR(r.target.user, "adm");
    CHECK(r.continuous);
    CHECK_EQ_STR(r.doc_ids, "[\"a\",\"z\"]");
    CHECK_EQ_STR(r.since_seq, "5");
    CHECK_EQ_INT(r.checkpoint_interval_ms, 250);
    repl_req_destroy(&r);

    const char *as_text = "{\"source\":\"a\",\"target\":\"b\",\"worker_processes\":\"2\","
                          "\"max_response_size\":2048}";
    CHECK_EQ_INT(repl_req_parse(as_text, strlen(as_text), &r, &e), 0);
    CHECK_EQ_INT(r.workers, 2);
    CHECK_EQ_INT(r.max_response, 2048);
    repl_req_destroy(&r);

    const char *bad[] = {
        "{\"source\":\"a\"}", "[]", "{\"source\":1,\"target\":\"b\"}",
        "{\"source\":\"a\",\"target\":\"b\",\"filter\":\"noslash\"}",
        "{\"source\":\"a\",\"target\":\"b\",\"filter\":\"_view\"}",
        "{\"source\":\"a\",\"target\":\"b\",\"filter\":\"a/f\",\"query_params\":[1]}",
        "{\"source\":\"a\",\"target\":\"b\",\"selector\":[1]}",
        "{\"source\":\"a\",\"target\":\"b\",\"selector\":{\"n\":{\"$bogus\":1}}}",
        "{\"source\":\"a\",\"target\":\"b\",\"selector\":{\"n\":1},\"doc_ids\":[\"x\"]}",
        "{\"source\":\"a\",\"target\":\"b\",\"selector\":{\"n\":1},\"filter\":\"a/f\"}",
        "{\"source\":\"a\",\"target\":\"b\",\"doc_ids\":[1]}", "{bad",
        /* Numbers are checked, not read as 0 or a default. */
        "{\"source\":\"a\",\"target\":\"b\",\"worker_processes\":\"a few\"}",
        "{\"source\":\"a\",\"target\":\"b\",\"checkpoint_interval\":-5}",
        "{\"source\":\"a\",\"target\":\"b\",\"retries_per_request\":\"3x\"}",
        "{\"source\":\"a\",\"target\":\"b\",\"worker_batch_size\":true}",
        "{\"source\":\"a\",\"target\":\"b\",\"max_response_size\":10}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&e, 0, sizeof e);
        CHECK(repl_req_parse(bad[i], strlen(bad[i]), &r, &e) != 0);
        CHECK(e.error[0] != '\0');
    }
}

static void test_ids(void) {
    const char *a = "{\"source\":\"http://u:one@h/a\",\"target\":\"http://h2/b\"}";
    const char *b = "{\"source\":\"http://u:two@h/a/\",\"target\":\"http://h2/b\","
                    "\"continuous\":true,\"create_target\":true}";
    const char *c = "{\"source\":\"http://u:one@h/a\",\"target\":\"http://h2/b\","
                    "\"doc_ids\":[\"x\"]}";
    const char *d = "{\"source\":\"http://h2/b\",\"target\":\"http://u:one@h/a\"}";
    repl_req ra, rb, rc, rd;
    char ia[33], ib[33], ic[33], id[33];
    CHECK_EQ_INT(repl_req_parse(a, strlen(a), &ra, NULL), 0);
    CHECK_EQ_INT(repl_req_parse(b, strlen(b), &rb, NULL), 0);
    CHECK_EQ_INT(repl_req_parse(c, strlen(c), &rc, NULL), 0);
    CHECK_EQ_INT(repl_req_parse(d, strlen(d), &rd, NULL), 0);
    repl_req_id(NULL, &ra, ia);
    repl_req_id(NULL, &rb, ib);
    repl_req_id(NULL, &rc, ic);
    repl_req_id(NULL, &rd, id);
    CHECK_EQ_INT(strlen(ia), 32);
    CHECK_EQ_STR(ia, ib);              /* password, slash, continuous do not count */
    CHECK(strcmp(ia, ic) != 0);        /* doc_ids do */
    CHECK(strcmp(ia, id) != 0);        /* and so does the direction */
    repl_req_destroy(&ra);
    repl_req_destroy(&rb);
    repl_req_destroy(&rc);
    repl_req_destroy(&rd);

    /* A selector, a filter and its query_params are part of the id (CouchDB's too). */
    const char *variants[] = {
        "{\"source\":\"http://h/a\",\"target\":\"b\"}",
        "{\"source\":\"http://h/a\",\"target\":\"b\",\"selector\":{\"n\":1}}",
        "{\"source\":\"http://h/a\",\"target\":\"b\",\"selector\":{\"n\":2}}",
        "{\"source\":\"http://h/a\",\"target\":\"b\",\"filter\":\"d/f\"}",
        "{\"source\":\"http://h/a\",\"target\":\"b\",\"filter\":\"d/f\",\"query_params\":{\"t\":\"x\"}}",
        "{\"source\":\"http://h/a\",\"target\":\"b\",\"filter\":\"d/g\",\"query_params\":{\"t\":\"x\"}}",
    };
    char vid[6][33];
    for (size_t i = 0; i < 6; i++) {
        repl_req rv;
        CHECK_EQ_INT(repl_req_parse(variants[i], strlen(variants[i]), &rv, NULL), 0);
        repl_req_id(NULL, &rv, vid[i]);
        repl_req_destroy(&rv);
        for (size_t k = 0; k < i; k++) CHECK(strcmp(vid[i], vid[k]) != 0);
    }

    char *s = repl_url_display("https://bob:pw@example.org:6984/db");
    CHECK_EQ_STR(s, "https://example.org:6984/db/");
    free(s);
    s = repl_url_display("http://h/db@x");
    CHECK_EQ_STR(s, "http://h/db@x/");
    free(s);
    s = repl_url_display("http://only-user@h:5984/db/");
    CHECK_EQ_STR(s, "http://h:5984/db/");
    free(s);
    s = repl_url_display("http://a%40b:p%3Aw@h/db");   /* encoded @ and : in userinfo */
    CHECK_EQ_STR(s, "http://h/db/");
    free(s);
    s = repl_url_display("localdb");
    CHECK_EQ_STR(s, "localdb");
    free(s);
}

/* ---- local replications ---------------------------------------------------------------- */
static char env_dir[256];

static mimeo_env *env_new(void) {
    snprintf(env_dir, sizeof env_dir, "/tmp/mimeo-test-repl-XXXXXX");
    if (!mkdtemp(env_dir)) return NULL;
    mimeo_env *env = NULL;
    if (mimeo_env_open(env_dir, NULL, &env, NULL) != 0) return NULL;
    return env;
}

static void env_free(mimeo_env *env) {
    mimeo_env_close(env);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", env_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", env_dir);
}

static int collect(void *ctx, const char *json, size_t len) {
    buf *b = ctx;
    /* Rows without their seq: the two databases number their changes differently. */
    const char *id = strstr(json, "\"id\"");
    if (!id) return 0;
    buf_put(b, id, len - (size_t)(id - json));
    buf_putc(b, '\n');
    return 0;
}

/* Every document's leaves and deleted flag, in id order (from _changes style=all_docs). */
static char *state_of(mimeo_env *env, const char *name) {
    mimeo_db *db = NULL;
    if (mimeo_db_open(env, name, &db, NULL) != 0) return strdup("(no db)");
    buf b;
    buf_init(&b, 0);
    mimeo_changes_opts o;
    memset(&o, 0, sizeof o);
    o.all_docs_style = true;
    uint64_t last;
    mimeo_changes(db, &o, collect, &b, &last, NULL, NULL);
    mimeo_db_close(db);
    /* Sort lines so the order of writes does not matter. */
    size_t n = 0;
    char *text = buf_detach(&b, &n);
    if (!text) return strdup("");
    size_t lines = 0;
    for (size_t i = 0; i < n; i++) lines += text[i] == '\n';
    char **v = calloc(lines + 1, sizeof *v);
    size_t k = 0;
    for (char *p = strtok(text, "\n"); p && k < lines; p = strtok(NULL, "\n")) v[k++] = p;
    for (size_t i = 1; i < k; i++)
        for (size_t j = i; j > 0 && strcmp(v[j - 1], v[j]) > 0; j--) {
            char *t = v[j]; v[j] = v[j - 1]; v[j - 1] = t;
        }
    buf out;
    buf_init(&out, 0);
    for (size_t i = 0; i < k; i++) {
        buf_puts(&out, v[i]);
        buf_putc(&out, '\n');
    }
    free(v);
    free(text);
    size_t ol;
    char *r = buf_detach(&out, &ol);
    return r ? r : strdup("");
}

static int run(mimeo_env *env, const char *req, char **out, unsigned *status, mimeo_err *e) {
    size_t len;
    memset(e, 0, sizeof *e);
    return mimeo_replicate(env, req, strlen(req), out, &len, status, e);
}

static void test_local_replication(void) {
    mimeo_env *env = env_new();
    CHECK(env != NULL);
    if (!env) return;
    CHECK_EQ_INT(mimeo_db_create(env, "a", NULL), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, "a", &db, NULL), 0);
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"new_edits\":false,\"docs\":[");
    for (int i = 0; i < 1200; i++) {
        if (i) buf_putc(&b, ',');
        buf_printf(&b, "{\"_id\":\"d%04d\",\"_rev\":\"1-%032x\",\"_revisions\":{\"start\":1,"
                   "\"ids\":[\"%032x\"]},\"n\":%d}", i, i + 1, i + 1, i);
        if (i % 10 == 0)   /* a conflicting branch */
            buf_printf(&b, ",{\"_id\":\"d%04d\",\"_rev\":\"1-%032x\",\"_revisions\":{"
                       "\"start\":1,\"ids\":[\"%032x\"]},\"other\":true}", i, i + 100000,
                       i + 100000);
        if (i % 7 == 0)    /* a deletion */
            buf_printf(&b, ",{\"_id\":\"d%04d\",\"_rev\":\"2-%032x\",\"_revisions\":{"
                       "\"start\":2,\"ids\":[\"%032x\",\"%032x\"]},\"_deleted\":true}", i,
                       i + 200000, i + 200000, i + 1);
    }
    buf_puts(&b, "]}");
    char *res = NULL;
    size_t rl;
    CHECK_EQ_INT(mimeo_bulk_docs(db, b.data, b.len, &res, &rl, NULL), 0);
    mimeo_free(res);
    buf_destroy(&b);
    mimeo_db_close(db);

    char *out = NULL;
    unsigned status = 0;
    mimeo_err e;
    CHECK_EQ_INT(run(env, "{\"source\":\"a\",\"target\":\"b\",\"create_target\":true,"
                          "\"worker_batch_size\":100}", &out, &status, &e), 0);
    CHECK_EQ_INT(status, 200);
    CHECK(out && strstr(out, "\"docs_written\":1320") != NULL);   /* leaves: 1200 + 120 branches */
    if (out && !strstr(out, "\"docs_written\":1320")) fprintf(stderr, "%s\n", out);
    mimeo_free(out);
    char *sa = state_of(env, "a"), *sb = state_of(env, "b");
    CHECK(strcmp(sa, sb) == 0);
    CHECK(strlen(sa) > 1000);
    free(sa);
    free(sb);

    CHECK_EQ_INT(run(env, "{\"source\":\"a\",\"target\":\"b\"}", &out, &status, &e), 0);
    CHECK_EQ_STR(out, "{\"ok\":true,\"no_changes\":true}");
    mimeo_free(out);

    /* Checkpoints whose top-level sessions differ still agree through their histories
     * (CouchDB's compare_rep_history): rewrite the source's session_id, keep its history. */
    {
        const char *q = "{\"source\":\"a\",\"target\":\"b\"}";
        repl_req rq;
        char rid[33];
        CHECK_EQ_INT(repl_req_parse(q, strlen(q), &rq, NULL), 0);
        repl_req_id(env, &rq, rid);
        repl_req_destroy(&rq);
        mimeo_db *sa_db = NULL;
        CHECK_EQ_INT(mimeo_db_open(env, "a", &sa_db, NULL), 0);
        char *ck = NULL;
        size_t cl = 0;
        CHECK_EQ_INT(mimeo_local_get(sa_db, rid, strlen(rid), &ck, &cl, NULL), 0);
        char *sid = ck ? strstr(ck, "\"session_id\":\"") : NULL;
        CHECK(sid != NULL);
        if (sid) memset(sid + 14, 'f', 32);   /* a session the target never saw */
        char rev[MIMEO_REV_MAX] = "";
        char *rp = ck ? strstr(ck, "\"_rev\":\"") : NULL;
        if (rp) sscanf(rp + 8, "%95[^\"]", rev);
        mimeo_put_result pr2;
        memset(&pr2, 0, sizeof pr2);
        CHECK_EQ_INT(mimeo_local_put(sa_db, rid, strlen(rid), ck, cl, rev, &pr2, NULL), 0);
        mimeo_free(pr2.id);
        mimeo_free(ck);
        mimeo_db_close(sa_db);
        CHECK_EQ_INT(run(env, q, &out, &status, &e), 0);
        CHECK_EQ_STR(out, "{\"ok\":true,\"no_changes\":true}");
        mimeo_free(out);
    }

    CHECK_EQ_INT(run(env, "{\"source\":\"a\",\"target\":\"c\",\"create_target\":true,"
                          "\"doc_ids\":[\"d0010\",\"d0011\"]}", &out, &status, &e), 0);
    mimeo_free(out);
    char *sc = state_of(env, "c");
    CHECK(strstr(sc, "\"d0010\"") && strstr(sc, "\"d0011\"") && !strstr(sc, "\"d0012\""));
    free(sc);

    CHECK(run(env, "{\"source\":\"nope\",\"target\":\"b\"}", &out, &status, &e) != 0);
    CHECK_EQ_STR(e.error, "db_not_found");
    CHECK_EQ_INT(status, 500);

    /* Continuous: started, then a new write arrives, then cancelled. */
    const char *cont = "{\"source\":\"a\",\"target\":\"b\",\"continuous\":true}";
    CHECK_EQ_INT(run(env, cont, &out, &status, &e), 0);
    CHECK_EQ_INT(status, 202);
    CHECK(out && strstr(out, "+continuous") != NULL);
    mimeo_free(out);
    CHECK_EQ_INT(mimeo_db_open(env, "a", &db, NULL), 0);
    mimeo_put_result pr;
    memset(&pr, 0, sizeof pr);
    CHECK_EQ_INT(mimeo_doc_put(db, "fresh", 5, "{\"x\":1}", 7, NULL, &pr, NULL), 0);
    mimeo_free(pr.id);
    mimeo_db_close(db);
    mimeo_db *tb = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, "b", &tb, NULL), 0);
    bool arrived = false;
    for (int i = 0; i < 200 && !arrived; i++) {
        char *doc = NULL;
        size_t dl;
        mimeo_get_opts go;
        memset(&go, 0, sizeof go);
        if (mimeo_doc_get(tb, "fresh", 5, &go, &doc, &dl, NULL) == 0) arrived = true;
        mimeo_free(doc);
        if (!arrived) usleep(10000);
    }
    mimeo_db_close(tb);
    CHECK(arrived);
    char *tasks = NULL;
    size_t tl;
    CHECK_EQ_INT(mimeo_active_tasks(env, &tasks, &tl), 0);
    CHECK(tasks && strstr(tasks, "\"continuous\":true") != NULL);
    mimeo_free(tasks);
    const char *cancel = "{\"source\":\"a\",\"target\":\"b\",\"continuous\":true,"
                         "\"cancel\":true}";
    CHECK_EQ_INT(run(env, cancel, &out, &status, &e), 0);
    CHECK_EQ_INT(status, 200);
    mimeo_free(out);
    CHECK(run(env, cancel, &out, &status, &e) != 0);
    CHECK_EQ_INT(status, 404);

    mimeo_replicator_stop(env);
    env_free(env);
}

/* ---- the registry lives in the environment --------------------------------------------- */
static mimeo_env *env_open_in(char *dir) {
    if (!mkdtemp(dir)) return NULL;
    mimeo_env *env = NULL;
    return mimeo_env_open(dir, NULL, &env, NULL) == 0 ? env : NULL;
}

static void env_close_rm(mimeo_env *env, const char *dir) {
    mimeo_env_close(env);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* A listening socket that never answers: a peer a job hangs on. */
static int listen_silent(unsigned *port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t n = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 8) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &n) != 0)
        return -1;
    *port = ntohs(a.sin_port);
    return s;
}

static bool lists_job(mimeo_env *env, const char *id) {
    char *out = NULL;
    size_t len = 0;
    bool found = mimeo_scheduler_jobs(env, &out, &len) == 0 && strstr(out, id) != NULL;
    mimeo_free(out);
    return found;
}

static void test_two_envs(void) {
    char da[64] = "/tmp/mimeo-test-repl-a-XXXXXX", db[64] = "/tmp/mimeo-test-repl-b-XXXXXX";
    mimeo_env *a = env_open_in(da), *b = env_open_in(db);
    CHECK(a && b);
    if (!a || !b) return;
    unsigned port = 0;
    int ls = listen_silent(&port);
    CHECK(ls >= 0);
    char body[256];
    snprintf(body, sizeof body, "{\"source\":\"http://127.0.0.1:%u/src\",\"target\":"
             "\"http://127.0.0.1:%u/tgt\",\"continuous\":true}", port, port);
    char *out = NULL;
    size_t len = 0;
    unsigned status = 0;
    mimeo_err e = {0};
    CHECK_EQ_INT(mimeo_replicate(a, body, strlen(body), &out, &len, &status, &e), 0);
    CHECK_EQ_INT(status, 202);
    char id[64] = "";
    const char *p = out ? strstr(out, "\"_local_id\":\"") : NULL;
    if (p) snprintf(id, sizeof id, "%.*s", (int)strcspn(p + 13, "\""), p + 13);
    mimeo_free(out);
    CHECK(id[0] != '\0');

    /* The same URL job is a different job in b: neither lists nor cancels a's. */
    CHECK(lists_job(a, id));
    CHECK(!lists_job(b, id));
    char cancel[300];
    snprintf(cancel, sizeof cancel, "{\"replication_id\":\"%s\",\"cancel\":true}", id);
    out = NULL;
    CHECK_EQ_INT(mimeo_replicate(b, cancel, strlen(cancel), &out, &len, &status, &e),
                 MIMEO_ENOTFOUND);
    mimeo_free(out);
    mimeo_replicator_stop(b);
    CHECK(lists_job(a, id));

    /* Closing a without mimeo_replicator_stop still stops its jobs: the registry goes with
     * the environment, so the request the job had open to the silent peer is dropped. */
    struct pollfd pf = { ls, POLLIN, 0 };
    CHECK_EQ_INT(poll(&pf, 1, 10000), 1);
    int conn = accept(ls, NULL, NULL);
    CHECK(conn >= 0);
    env_close_rm(a, da);
    struct pollfd pc = { conn, POLLIN, 0 };
    char junk[4096];
    bool closed = false;
    uint64_t end = check_now_ms() + 3000;
    while (!closed && check_now_ms() < end && poll(&pc, 1, 200) >= 0)
        if (pc.revents && read(conn, junk, sizeof junk) <= 0) closed = true;
    CHECK(closed);
    close(conn);
    close(ls);
    env_close_rm(b, db);
}

/* The local endpoint hands entries and documents over through callbacks: what the target
 * lacks from a revs_diff cursor's rows, the documents as stored JSON with _revisions. */
typedef struct ep_seen {
    char ids[8][16];
    size_t nrevs[8];
    size_t n;
    buf docs;
    size_t ndocs;
} ep_seen;

static int ep_missing(void *ctx, const repl_want *w) {
    ep_seen *s = ctx;
    if (s->n < 8) {
        snprintf(s->ids[s->n], sizeof s->ids[0], "%.*s", (int)w->id_len, w->id);
        s->nrevs[s->n++] = w->nrevs;
    }
    return 0;
}

/* Each document as the _bulk_docs body would carry it: without the bytes it may leave out,
 * and marked with a '@' when it goes the attachments' way. */
static int ep_doc(void *ctx, const repl_doc *d) {
    ep_seen *s = ctx;
    s->ndocs++;
    if (d->atts) buf_putc(&s->docs, '@');
    if (d->cut_end) {
        buf_put(&s->docs, d->json, d->cut_at);
        buf_put(&s->docs, d->json + d->cut_end, d->len - d->cut_end);
    } else {
        buf_put(&s->docs, d->json, d->len);
    }
    return buf_putc(&s->docs, '\n');
}

static void test_local_endpoint(void) {
    mimeo_env *env = env_new();
    CHECK(env != NULL);
    if (!env) return;
    CHECK_EQ_INT(mimeo_db_create(env, "ep", NULL), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, "ep", &db, NULL), 0);
    mimeo_put_result res;
    const char *doc = "{\"_id\":\"a\",\"v\":1}";
    CHECK_EQ_INT(mimeo_doc_put(db, NULL, 0, doc, strlen(doc), NULL, &res, NULL), 0);
    mimeo_free(res.id);
    char rev[MIMEO_REV_MAX];
    snprintf(rev, sizeof rev, "%s", res.rev);

    atomic_bool cancel = false;
    repl_ep *ep = NULL;
    mimeo_err e = {0};
    CHECK_EQ_INT(repl_ep_local_new(env, "ep", false, &cancel, &ep, &e), 0);
    if (!ep) return;
    repl_resp out;
    buf_init(&out.body, 0);
    ep_seen s;
    memset(&s, 0, sizeof s);
    buf_init(&s.docs, 0);

    char diff[200];
    snprintf(diff, sizeof diff, "{\"a\":[\"%s\",\"2-ff\",\"3-ee\"],\"b\":[\"1-aa\"]}", rev);
    CHECK_EQ_INT(ep->ops->revs_diff(ep, diff, strlen(diff), ep_missing, &s, &out, &e), 0);
    CHECK_EQ_INT(out.status, 200);
    CHECK_EQ_INT(s.n, 2);
    CHECK_EQ_STR(s.ids[0], "a");
    CHECK_EQ_INT(s.nrevs[0], 2);
    CHECK_EQ_STR(s.ids[1], "b");
    CHECK_EQ_INT(s.nrevs[1], 1);

    /* one revision served, one unknown: the document comes, the other is unserved */
    const char *revs[] = { rev, "9-99" };
    size_t lens[] = { strlen(rev), 4 };
    repl_want w = { "a", 1, revs, lens, 2, NULL, NULL, 0 };
    size_t unserved = 0;
    CHECK_EQ_INT(ep->ops->bulk_get(ep, &w, 1, ep_doc, &s, &unserved, &out, &e), 0);
    CHECK_EQ_INT(out.status, 200);
    CHECK_EQ_INT(s.ndocs, 1);
    CHECK_EQ_INT(unserved, 1);
    CHECK(strstr(buf_cstr(&s.docs), "\"_revisions\":{\"start\":1") != NULL);
    CHECK(strstr(buf_cstr(&s.docs), "\"v\":1") != NULL);

    /* open_revs of a document that does not exist serves nothing (CouchDB answers its
     * revisions as missing); once the database is gone, it is a 404 */
    repl_want gone = { "zz", 2, revs, lens, 1, NULL, NULL, 0 };
    CHECK_EQ_INT(ep->ops->open_revs(ep, &gone, ep_doc, &s, &out, &e), 0);
    CHECK_EQ_INT(out.status, 200);
    CHECK_EQ_INT(s.ndocs, 1);
    CHECK_EQ_INT(mimeo_db_delete(env, "ep", NULL), 0);
    CHECK_EQ_INT(ep->ops->open_revs(ep, &w, ep_doc, &s, &out, &e), 0);
    CHECK_EQ_INT(out.status, 404);
    CHECK_EQ_INT(s.ndocs, 1);

    buf_destroy(&s.docs);
    buf_destroy(&out.body);
    repl_ep_free(ep);
    mimeo_db_close(db);
    env_free(env);
}

/* The local endpoint's changes op hands rows to the callback straight from the library's
 * cursor: no JSON page is built (the reply body stays empty), and paging by its last_seq
 * gives exactly the rows of one direct cursor read, with deletions, conflicts, doc_ids and
 * a selector filter. */
typedef struct lc_rows {
    buf text;
    size_t n;
} lc_rows;

static int lc_take(void *ctx, const repl_want *w) {
    lc_rows *r = ctx;
    r->n++;
    buf_put(&r->text, w->id, w->id_len);
    for (size_t k = 0; k < w->nrevs; k++) {
        buf_putc(&r->text, k ? ',' : '|');
        buf_put(&r->text, w->revs[k], w->rev_lens[k]);
    }
    return buf_putc(&r->text, '\n');
}

/* Every row of a direct cursor read (all leaves), those whose winner matches sel if set. */
static void lc_expect(mimeo_db *db, mimeo_selector *sel, lc_rows *out) {
    mimeo_changes_opts o;
    memset(&o, 0, sizeof o);
    o.all_docs_style = true;
    o.include_docs = sel != NULL;
    mimeo_cursor *cur = NULL;
    CHECK_EQ_INT(mimeo_changes_open(db, &o, &cur, NULL), 0);
    const mimeo_row *row;
    while (cur && mimeo_cursor_next(cur, &row, NULL) == 0 && row) {
        bool match = true;
        if (sel) mimeo_selector_match(sel, row->body, row->body_len, &match);
        if (!match) continue;
        const char *revs[8];
        size_t lens[8], n = row->leaf_count < 8 ? row->leaf_count : 8;
        for (size_t k = 0; k < n; k++) {
            revs[k] = row->leaves[k].rev;
            lens[k] = row->leaves[k].rev_len;
        }
        repl_want w = { row->id, row->id_len, revs, lens, n, NULL, NULL, 0 };
        lc_take(out, &w);
    }
    mimeo_cursor_close(cur);
}

/* Pages through the endpoint's feed with limit, checking that no page body was built. */
static void lc_read(repl_ep *ep, size_t limit, const char *doc_ids, lc_rows *out,
                    size_t *pages) {
    char *since = strdup("0");
    repl_resp resp;
    repl_resp_init(&resp);
    mimeo_err e = {0};
    *pages = 0;
    for (int guard = 0; since && guard < 1000; guard++) {
        repl_page page = { NULL, -1, 0 };
        CHECK_EQ_INT(ep->ops->changes(ep, since, strlen(since), limit, doc_ids, 0, lc_take, out,
                                      &page, &resp, &e), 0);
        CHECK_EQ_INT(resp.status, 200);
        CHECK_EQ_INT(resp.body.len, 0);
        CHECK(page.last_seq != NULL);
        CHECK(page.rows <= limit);
        if (!page.last_seq || resp.status != 200) break;
        (*pages)++;
        free(since);
        since = page.last_seq;
        /* the end as repl.c reads it: an empty page, or a short one with nothing pending */
        if (page.rows == 0 || (page.rows < limit && page.pending == 0)) break;
    }
    free(since);
    repl_resp_destroy(&resp);
}

static void test_local_changes(void) {
    mimeo_env *env = env_new();
    CHECK(env != NULL);
    if (!env) return;
    CHECK_EQ_INT(mimeo_db_create(env, "lc", NULL), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, "lc", &db, NULL), 0);
    enum { N = 1200 };
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"new_edits\":false,\"docs\":[");
    for (unsigned i = 0; i < N; i++)
        buf_printf(&b, "%s{\"_id\":\"d%04u\",\"_rev\":\"1-%032x\",\"v\":%u}", i ? "," : "", i,
                   i + 1, i);
    buf_puts(&b, "]}");
    char *out = NULL;
    size_t out_len = 0;
    CHECK_EQ_INT(mimeo_bulk_docs(db, b.data, b.len, &out, &out_len, NULL), 0);
    mimeo_free(out);
    /* every 7th deleted, every 11th with a second branch (a conflict) */
    buf_reset(&b);
    buf_puts(&b, "{\"new_edits\":false,\"docs\":[");
    bool first = true;
    for (unsigned i = 0; i < N; i++) {
        if (i % 7 == 0) {
            buf_printf(&b, "%s{\"_id\":\"d%04u\",\"_rev\":\"2-%032x\",\"_deleted\":true,"
                       "\"_revisions\":{\"start\":2,\"ids\":[\"%032x\",\"%032x\"]}}",
                       first ? "" : ",", i, 0x10000u + i, 0x10000u + i, i + 1);
            first = false;
        }
        if (i % 11 == 0) {
            buf_printf(&b, "%s{\"_id\":\"d%04u\",\"_rev\":\"1-%032x\",\"v\":%u}",
                       first ? "" : ",", i, 0x20000u + i, N + i);
            first = false;
        }
    }
    buf_puts(&b, "]}");
    CHECK_EQ_INT(mimeo_bulk_docs(db, b.data, b.len, &out, &out_len, NULL), 0);
    mimeo_free(out);
    buf_destroy(&b);

    atomic_bool cancel = false;
    repl_ep *ep = NULL;
    mimeo_err e = {0};
    CHECK_EQ_INT(repl_ep_local_new(env, "lc", false, &cancel, &ep, &e), 0);
    if (!ep) return;
    lc_rows want = { .n = 0 }, got = { .n = 0 };
    buf_init(&want.text, 0);
    buf_init(&got.text, 0);
    size_t pages = 0;

    lc_expect(db, NULL, &want);
    CHECK_EQ_INT(want.n, N);
    lc_read(ep, 100, NULL, &got, &pages);
    CHECK_EQ_INT(got.n, N);
    CHECK(pages >= N / 100);
    CHECK_EQ_STR(buf_cstr(&got.text), buf_cstr(&want.text));
    CHECK(strstr(buf_cstr(&got.text), "d0011|1-") != NULL); /* a conflict: two leaves */

    /* doc_ids: only those, in feed order */
    buf_reset(&got.text);
    got.n = 0;
    lc_read(ep, 100, "[\"d0010\",\"d0007\",\"nope\"]", &got, &pages);
    CHECK_EQ_INT(got.n, 2);
    CHECK(strncmp(buf_cstr(&got.text), "d0010|", 6) == 0);

    /* a selector filter: the rows whose winner matches, the limit counting rows passed */
    const char *seltext = "{\"v\":{\"$gte\":600}}";
    mimeo_selector *sel = NULL;
    CHECK_EQ_INT(mimeo_selector_parse(seltext, strlen(seltext), &sel, NULL), 0);
    buf_reset(&want.text);
    want.n = 0;
    lc_expect(db, sel, &want);
    CHECK(want.n > 500 && want.n < N);
    repl_filter flt;
    memset(&flt, 0, sizeof flt);
    flt.selector = strdup(seltext);
    ep->filter = &flt;
    buf_reset(&got.text);
    got.n = 0;
    lc_read(ep, 64, NULL, &got, &pages);
    CHECK_EQ_INT(got.n, want.n);
    CHECK_EQ_STR(buf_cstr(&got.text), buf_cstr(&want.text));
    ep->filter = NULL;
    repl_filter_destroy(&flt);
    mimeo_selector_free(sel);

    buf_destroy(&want.text);
    buf_destroy(&got.text);
    repl_ep_free(ep);
    mimeo_db_close(db);
    env_free(env);
}

/* The local endpoint hands db info, _local documents and _bulk_docs outcomes over as fields
 * and callbacks: for info and the checkpoint read it runs the JSON parser not once (counted
 * on this thread), and for the checkpoint write and the bulk write once, the library reading
 * the document or request it is given; no reply text is made for repl.c to parse back. */
typedef struct ref_seen {
    size_t n;
    char   id[16];
    char   error[32];
} ref_seen;

static int ref_take(void *ctx, const repl_refusal *r) {
    ref_seen *s = ctx;
    if (s->n++ == 0) {
        snprintf(s->id, sizeof s->id, "%.*s", (int)r->id_len, r->id);
        snprintf(s->error, sizeof s->error, "%.*s", (int)r->error_len, r->error);
    }
    return 0;
}

static void test_local_endpoint_structs(void) {
    mimeo_env *env = env_new();
    CHECK(env != NULL);
    if (!env) return;
    CHECK_EQ_INT(mimeo_db_create(env, "st", NULL), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, "st", &db, NULL), 0);
    mimeo_put_result res;
    for (int i = 0; i < 3; i++) {
        char doc[40];
        snprintf(doc, sizeof doc, "{\"_id\":\"d%d\",\"v\":%d}", i, i);
        CHECK_EQ_INT(mimeo_doc_put(db, NULL, 0, doc, strlen(doc), NULL, &res, NULL), 0);
        mimeo_free(res.id);
    }
    atomic_bool cancel = false;
    repl_ep *ep = NULL;
    mimeo_err e = {0};
    CHECK_EQ_INT(repl_ep_local_new(env, "st", false, &cancel, &ep, &e), 0);
    if (!ep) return;
    repl_resp out;
    repl_resp_init(&out);

    uint64_t before = json_parse_calls;
    repl_db_info info = { NULL, -1 };
    CHECK_EQ_INT(ep->ops->info(ep, &info, &out, &e), 0);
    CHECK_EQ_INT(out.status, 200);
    CHECK_EQ_STR(info.update_seq, "3");
    CHECK_EQ_INT(info.update_seq_num, 3);
    CHECK_EQ_INT(out.body.len, 0);
    CHECK_EQ_INT(json_parse_calls - before, 0);
    free(info.update_seq);

    /* documents fetched for a batch: the revisions go to the library as a list */
    char *d0 = NULL;
    size_t d0n = 0;
    CHECK_EQ_INT(mimeo_doc_get(db, "d0", 2, NULL, &d0, &d0n, NULL), 0);
    const char *rv = d0 ? strstr(d0, "\"_rev\":\"") : NULL;
    char r0[MIMEO_REV_MAX] = "";
    if (rv) snprintf(r0, sizeof r0, "%.*s", (int)strcspn(rv + 8, "\""), rv + 8);
    mimeo_free(d0);
    const char *wr[] = { r0, "1-0123456789abcdef0123456789abcdef" };
    size_t wl[] = { strlen(r0), strlen(wr[1]) };
    repl_want want = { "d0", 2, wr, wl, 2, NULL, NULL, 0 };
    ep_seen es;
    memset(&es, 0, sizeof es);
    buf_init(&es.docs, 0);
    size_t unserved = 0;
    before = json_parse_calls;
    CHECK_EQ_INT(ep->ops->bulk_get(ep, &want, 1, ep_doc, &es, &unserved, &out, &e), 0);
    CHECK_EQ_INT(json_parse_calls - before, 0);
    CHECK_EQ_INT(out.status, 200);
    CHECK_EQ_INT(es.ndocs, 1);
    CHECK_EQ_INT(unserved, 1);
    CHECK(strstr(buf_cstr(&es.docs), "\"_revisions\":{\"start\":1") != NULL);
    buf_destroy(&es.docs);

    /* the checkpoint: written (the library reads the document once), read back as fields */
    const char *ck = "{\"session_id\":\"s1\",\"source_last_seq\":3,\"history\":[]}";
    char rev[MIMEO_REV_MAX] = "";
    before = json_parse_calls;
    CHECK_EQ_INT(ep->ops->local_put(ep, "ck", NULL, ck, strlen(ck), rev, &out, &e), 0);
    CHECK_EQ_INT(out.status, 201);
    CHECK_EQ_STR(rev, "0-1");
    CHECK_EQ_INT(out.body.len, 0);
    CHECK_EQ_INT(json_parse_calls - before, 1);
    char got[MIMEO_REV_MAX] = "";
    before = json_parse_calls;
    CHECK_EQ_INT(ep->ops->local_get(ep, "ck", got, &out, &e), 0);
    CHECK_EQ_INT(json_parse_calls - before, 0);
    CHECK_EQ_INT(out.status, 200);
    CHECK_EQ_STR(got, "0-1");
    CHECK_EQ_STR(buf_cstr(&out.body), ck);
    /* a stale rev is a conflict, a missing document a 404, as over HTTP */
    CHECK_EQ_INT(ep->ops->local_put(ep, "ck", "0-7", ck, strlen(ck), rev, &out, &e), 0);
    CHECK_EQ_INT(out.status, 409);
    CHECK_EQ_INT(ep->ops->local_get(ep, "nope", got, &out, &e), 0);
    CHECK_EQ_INT(out.status, 404);

    /* a replicated batch: one revision written, one refused (a stub its parent lacks) */
    const char *bulk =
        "{\"new_edits\":false,\"docs\":[{\"_id\":\"ok\",\"_rev\":\"1-aa\",\"v\":1},"
        "{\"_id\":\"st\",\"_rev\":\"2-bb\",\"_revisions\":{\"start\":2,\"ids\":[\"bb\",\"aa\"]},"
        "\"_attachments\":{\"a.txt\":{\"stub\":true,\"content_type\":\"text/plain\","
        "\"digest\":\"md5-AAAAAAAAAAAAAAAAAAAAAA==\",\"length\":3,\"revpos\":1}}}]}";
    ref_seen rs;
    memset(&rs, 0, sizeof rs);
    before = json_parse_calls;
    CHECK_EQ_INT(ep->ops->bulk_docs(ep, bulk, strlen(bulk), ref_take, &rs, &out, &e), 0);
    CHECK_EQ_INT(json_parse_calls - before, 1);
    CHECK_EQ_INT(out.status, 201);
    CHECK_EQ_INT(out.body.len, 0);
    CHECK_EQ_INT(rs.n, 1);
    CHECK_EQ_STR(rs.id, "st");
    CHECK_EQ_STR(rs.error, "missing_stub");
    char *json = NULL;
    size_t n = 0;
    CHECK_EQ_INT(mimeo_doc_get(db, "ok", 2, NULL, &json, &n, NULL), 0);
    mimeo_free(json);

    /* the same answer from a peer, as JSON, gives the same refusals */
    repl_resp peer;
    repl_resp_init(&peer);
    buf_puts(&peer.body, "[{\"id\":\"st\",\"rev\":\"2-bb\",\"error\":\"missing_stub\","
                         "\"reason\":\"x\"}]");
    memset(&rs, 0, sizeof rs);
    CHECK_EQ_INT(repl_reply_refusals(&peer, ref_take, &rs, &e), 0);
    CHECK_EQ_INT(rs.n, 1);
    CHECK_EQ_STR(rs.id, "st");
    CHECK_EQ_STR(rs.error, "missing_stub");
    repl_resp_destroy(&peer);

    repl_resp_destroy(&out);
    repl_ep_free(ep);
    mimeo_db_close(db);
    env_free(env);
}

/* The library calls the endpoint uses: mimeo_local_read (revision and stored body apart)
 * and mimeo_bulk_docs_opts.entry_fn (each entry of the reply, as the reply text lists them). */
typedef struct be_seen {
    size_t n, failed;
    buf    text;
} be_seen;

static int be_take(void *ctx, const mimeo_bulk_entry *en) {
    be_seen *s = ctx;
    s->n++;
    if (en->code) s->failed++;
    buf_put(&s->text, en->id, en->id_len);
    buf_printf(&s->text, "|%s|%s;", en->rev ? en->rev : "-", en->error ? en->error : "-");
    return 0;
}

static void test_library_structs(void) {
    mimeo_env *env = env_new();
    CHECK(env != NULL);
    if (!env) return;
    CHECK_EQ_INT(mimeo_db_create(env, "ls", NULL), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, "ls", &db, NULL), 0);
    mimeo_put_result res;
    const char *body = "{\"a\":[1,{\"b\":\"c\"}]}";
    CHECK_EQ_INT(mimeo_local_put(db, "x", 1, body, strlen(body), NULL, &res, NULL), 0);
    mimeo_free(res.id);
    char rev[MIMEO_REV_MAX];
    char *got = NULL;
    size_t n = 0;
    CHECK_EQ_INT(mimeo_local_read(db, "x", 1, rev, &got, &n, NULL), 0);
    CHECK_EQ_STR(rev, "0-1");
    CHECK_EQ_STR(got, body);
    CHECK_EQ_INT(n, strlen(body));
    mimeo_free(got);
    CHECK_EQ_INT(mimeo_local_read(db, "y", 1, rev, &got, &n, NULL), MIMEO_ENOTFOUND);
    CHECK(got == NULL);
    /* open_revs from a list gives the rows the JSON list gives */
    const char *doc = "{\"_id\":\"o\",\"v\":1}";
    CHECK_EQ_INT(mimeo_doc_put(db, NULL, 0, doc, strlen(doc), NULL, &res, NULL), 0);
    mimeo_free(res.id);
    const char *lr[] = { res.rev, "2-0123456789abcdef0123456789abcdef", res.rev };
    size_t ll[] = { strlen(res.rev), strlen(lr[1]), strlen(res.rev) };
    char lj[400];   /* three revisions of up to 96 bytes each, quoted */
    snprintf(lj, sizeof lj, "[\"%s\",\"%s\",\"%s\"]", lr[0], lr[1], lr[2]);
    mimeo_get_opts go;
    memset(&go, 0, sizeof go);
    go.revs = true;
    mimeo_cursor *c1 = NULL, *c2 = NULL;
    CHECK_EQ_INT(mimeo_open_revs_list_open(db, "o", 1, lr, ll, 3, &go, &c1, NULL), 0);
    CHECK_EQ_INT(mimeo_open_revs_open(db, "o", 1, lj, strlen(lj), &go, &c2, NULL), 0);
    size_t rows = 0;
    for (;;) {
        const mimeo_row *a = NULL, *b = NULL;
        CHECK_EQ_INT(c1 ? mimeo_cursor_next(c1, &a, NULL) : -1, 0);
        CHECK_EQ_INT(c2 ? mimeo_cursor_next(c2, &b, NULL) : -1, 0);
        CHECK((a == NULL) == (b == NULL));
        if (!a || !b) break;
        rows++;
        CHECK_EQ_INT(a->status, b->status);
        CHECK_EQ_STR(a->rev, b->rev);
        CHECK_EQ_INT(a->json_len, b->json_len);
        if (a->json && b->json) CHECK(memcmp(a->json, b->json, a->json_len) == 0);
    }
    CHECK_EQ_INT(rows, 3);
    mimeo_cursor_close(c1);
    mimeo_cursor_close(c2);
    const char *bad[] = { "nonsense" };
    size_t badl[] = { 8 };
    CHECK_EQ_INT(mimeo_open_revs_list_open(db, "o", 1, bad, badl, 1, &go, &c1, NULL),
                 MIMEO_EBADREV);
    CHECK(c1 == NULL);

    /* the JSON form still splices id and rev in */
    CHECK_EQ_INT(mimeo_local_get(db, "x", 1, &got, &n, NULL), 0);
    CHECK_EQ_STR(got, "{\"_id\":\"_local/x\",\"_rev\":\"0-1\",\"a\":[1,{\"b\":\"c\"}]}");
    mimeo_free(got);

    /* interactive: one entry per document, in order, local ids with their prefix */
    be_seen s;
    memset(&s, 0, sizeof s);
    buf_init(&s.text, 0);
    mimeo_bulk_docs_opts o = { .entry_fn = be_take, .entry_ctx = &s };
    const char *b1 = "{\"docs\":[{\"_id\":\"p\"},{\"_id\":\"_local/q\"},"
                     "{\"_id\":\"p\",\"_rev\":\"1-ff\"}]}";
    char *json = (char *)"untouched";
    CHECK_EQ_INT(mimeo_bulk_docs_as(db, b1, strlen(b1), &o, &json, &n, NULL), 0);
    CHECK(json == NULL);
    CHECK_EQ_INT(s.n, 3);
    CHECK_EQ_INT(s.failed, 1);
    const char *t = buf_cstr(&s.text);
    CHECK(strncmp(t, "p|1-", 4) == 0);
    CHECK(strstr(t, ";_local/q|0-1|-;") != NULL);
    CHECK(strstr(t, ";p|-|conflict;") != NULL);
    /* new_edits false: only the failures (none here) */
    s.n = s.failed = 0;
    const char *b2 = "{\"new_edits\":false,\"docs\":[{\"_id\":\"r\",\"_rev\":\"3-ab\"}]}";
    CHECK_EQ_INT(mimeo_bulk_docs_as(db, b2, strlen(b2), &o, &json, &n, NULL), 0);
    CHECK_EQ_INT(s.n, 0);
    buf_destroy(&s.text);
    mimeo_db_close(db);
    env_free(env);
}

/* A remote peer's _changes and _revs_diff replies, read by event handlers: only the members
 * at their place count (a document body carrying "changes" or "rev" does not), string seqs
 * come back as JSON text, a null last_seq falls back to the last row's seq. */
static void test_reply_events(void) {
    repl_resp r;
    repl_resp_init(&r);
    buf_puts(&r.body,
             "{\"results\":[{\"seq\":\"1-g1\",\"id\":\"a\",\"changes\":[{\"rev\":\"1-x\"},"
             "{\"rev\":\"2-y\"}],\"doc\":{\"_id\":\"a\",\"changes\":[{\"rev\":\"9-no\"}],"
             "\"rev\":\"8-no\",\"id\":\"zz\"}},{\"seq\":\"2-g\\\"2\",\"id\":\"b\\u0000c\","
             "\"deleted\":true,\"changes\":[{\"rev\":\"3-z\"}]},{\"seq\":3,\"id\":\"nochanges\"}],"
             "\"last_seq\":null,\"pending\":7}");
    lc_rows rows;
    memset(&rows, 0, sizeof rows);
    buf_init(&rows.text, 0);
    repl_page page = { NULL, -1, 0 };
    mimeo_err e = {0};
    CHECK_EQ_INT(repl_reply_changes(&r, lc_take, &rows, &page, &e), 0);
    CHECK_EQ_INT(rows.n, 2);
    CHECK(rows.text.len == 18 && memcmp(rows.text.data, "a|1-x,2-y\nb\0c|3-z\n", 18) == 0);
    CHECK_EQ_INT(page.rows, 3);
    CHECK_EQ_INT(page.pending, 7);
    CHECK_EQ_STR(page.last_seq, "3");
    free(page.last_seq);
    buf_reset(&r.body);
    buf_puts(&r.body, "{\"results\":[{\"seq\":\"5-q\",\"id\":\"a\",\"changes\":[]}],"
                      "\"last_seq\":\"5-\\\"q\"}");
    CHECK_EQ_INT(repl_reply_changes(&r, lc_take, &rows, &page, &e), 0);
    CHECK_EQ_STR(page.last_seq, "\"5-\\\"q\"");
    CHECK_EQ_INT(page.pending, -1);
    free(page.last_seq);
    buf_reset(&r.body);
    buf_puts(&r.body, "{\"last_seq\":1}");
    CHECK_EQ_INT(repl_reply_changes(&r, lc_take, &rows, &page, &e), MIMEO_EIO);

    ep_seen s;
    memset(&s, 0, sizeof s);
    buf_init(&s.docs, 0);
    buf_reset(&r.body);
    buf_puts(&r.body, "{\"a\":{\"missing\":[\"2-b\",\"3-c\"],\"possible_ancestors\":[\"1-a\"]},"
                      "\"b\":{\"missing\":[]},\"c\":{\"possible_ancestors\":[\"1-q\"],"
                      "\"missing\":[\"4-d\"],\"x\":{\"missing\":[\"no\"]}}}");
    CHECK_EQ_INT(repl_reply_missing(&r, ep_missing, &s, &e), 0);
    CHECK_EQ_INT(s.n, 2);
    CHECK_EQ_STR(s.ids[0], "a");
    CHECK_EQ_INT(s.nrevs[0], 2);
    CHECK_EQ_STR(s.ids[1], "c");
    CHECK_EQ_INT(s.nrevs[1], 1);
    buf_reset(&r.body);
    buf_puts(&r.body, "[1]");
    CHECK_EQ_INT(repl_reply_missing(&r, ep_missing, &s, &e), MIMEO_EIO);

    /* _bulk_get and open_revs replies: each "ok" document forwarded as it came, except a
     * _revisions that only repeats _rev (first, middle or last member; any spacing) */
    buf_reset(&r.body);
    buf_puts(&r.body,
             "{\"results\":[{\"id\":\"a\",\"docs\":[{\"ok\":{\"_id\":\"a\",\"_rev\":\"1-ab\","
             "\"v\":1,\"_revisions\":{\"start\":1,\"ids\":[\"ab\"]}}},"
             "{\"ok\":{\"_revisions\" : { \"ids\" : [ \"cd\" ] , \"start\" : 12 } , \"_rev\":\"12-cd\"}},"
             "{\"ok\":{\"_rev\":\"2-ab\",\"_revisions\":{\"start\":2,\"ids\":[\"ab\",\"00\"]},\"z\":0}},"
             "{\"ok\":{\"_rev\":\"2-AB\",\"_revisions\":{\"start\":2,\"ids\":[\"AB\"]}}},"
             "{\"ok\":{\"_rev\":\"3-ab\",\"_revisions\":{\"start\":3.0,\"ids\":[\"ab\"]}}},"
             "{\"ok\":{\"_rev\":\"1-ab\",\"_revisions\":{\"start\":1,\"ids\":[\"ab\"]},"
             "\"_attachments\":{\"f\":{\"stub\":true}}}},"
             "{\"error\":{\"id\":\"a\",\"rev\":\"9-x\",\"error\":\"not_found\"}}]}]}");
    buf_reset(&s.docs);
    s.ndocs = 0;
    size_t unserved = 0;
    CHECK_EQ_INT(repl_reply_docs(&r, ep_doc, &s, &unserved, &e), 0);
    CHECK_EQ_INT(s.ndocs, 6);
    CHECK_EQ_INT(unserved, 1);
    CHECK_EQ_STR(buf_cstr(&s.docs),
                 "{\"_id\":\"a\",\"_rev\":\"1-ab\",\"v\":1}\n"
                 "{ \"_rev\":\"12-cd\"}\n"
                 "{\"_rev\":\"2-ab\",\"_revisions\":{\"start\":2,\"ids\":[\"ab\",\"00\"]},\"z\":0}\n"
                 "{\"_rev\":\"2-AB\",\"_revisions\":{\"start\":2,\"ids\":[\"AB\"]}}\n"
                 "{\"_rev\":\"3-ab\",\"_revisions\":{\"start\":3.0,\"ids\":[\"ab\"]}}\n"
                 "@{\"_rev\":\"1-ab\",\"_revisions\":{\"start\":1,\"ids\":[\"ab\"]},"
                 "\"_attachments\":{\"f\":{\"stub\":true}}}\n");
    buf_reset(&r.body);
    buf_puts(&r.body, "[{\"ok\":{\"a\":1,\"a\":2}}]");
    CHECK_EQ_INT(repl_reply_docs(&r, ep_doc, &s, NULL, &e), MIMEO_EBADJSON);
    buf_destroy(&s.docs);
    buf_destroy(&rows.text);
    repl_resp_destroy(&r);
}

int main(void) {
    RUN(test_req_parse);
    RUN(test_ids);
    RUN(test_local_replication);
    RUN(test_local_endpoint);
    RUN(test_local_changes);
    RUN(test_two_envs);
    RUN(test_local_endpoint_structs);
    RUN(test_library_structs);
    RUN(test_reply_events);
    return check_report();
}
