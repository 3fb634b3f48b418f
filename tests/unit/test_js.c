/* The query-server client against the real query server (build/mimeo-js, or $MIMEO_JS):
 * the protocol commands CouchDB sends, and hostile functions — a loop that never ends, a
 * heap that grows without bound, throws, syntax errors, require('fs') — each giving its
 * error while the pool goes on serving. */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "js/qs.h"

static const char *qs_command(void) {
    const char *cmd = getenv("MIMEO_JS");
    return cmd && cmd[0] ? cmd : "build/mimeo-js";
}

static char last_log[512];
static int log_count;
static void capture_log(void *ctx, const char *text, size_t len) {
    (void)ctx;
    if (len >= sizeof last_log) len = sizeof last_log - 1;
    memcpy(last_log, text, len);
    last_log[len] = 0;
    log_count++;
}

static qs_pool *pool_new(unsigned size, unsigned timeout_ms) {
    qs_config cfg = {.command = qs_command(), .size = size, .timeout_ms = timeout_ms,
                     .log = capture_log};
    qs_pool *pool = NULL;
    CHECK_EQ_INT(qs_pool_new(&cfg, &pool), 0);
    return pool;
}

/* Sends line and checks that the reply is the protocol error `name`. */
static void expect_error(qs_proc *q, const char *line, const char *name) {
    buf reply = BUF_INIT;
    mimeo_err err = {0};
    CHECK_EQ_INT(qs_call(q, line, strlen(line), &reply, &err), 0);
    CHECK(qs_reply_error(reply.data, reply.len, &err));
    CHECK_EQ_STR(err.error, name);
    buf_destroy(&reply);
}

/* Sends line and checks that the reply is exactly want. */
static void expect(qs_proc *q, const char *line, const char *want) {
    buf reply = BUF_INIT;
    mimeo_err err = {0};
    int rc = qs_call(q, line, strlen(line), &reply, &err);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0) fprintf(stderr, "  call %s: %s %s\n", line, err.error, err.reason);
    CHECK_EQ_STR(buf_cstr(&reply), want);
    buf_destroy(&reply);
}

static void test_views(void) {
    qs_pool *pool = pool_new(1, 5000);
    qs_proc *q = NULL;
    CHECK_EQ_INT(qs_acquire(pool, &q, NULL), 0);
    expect(q, "[\"reset\",{\"reduce_limit\":true}]", "true");
    expect(q, "[\"add_fun\",\"function(doc){ if (doc.type === 'post') emit(doc.date, doc.title); }\"]",
           "true");
    /* ES2015+ as CouchDB 3.5 accepts it: arrows, template strings, let/const, spread. */
    expect(q, "[\"add_fun\",\"(doc) => { const t = `${doc.type}!`; let n = [...(doc.tags||[])].length; emit([t, n]); }\"]",
           "true");
    expect(q, "[\"map_doc\",{\"_id\":\"a\",\"type\":\"post\",\"date\":\"2024\",\"title\":\"hi\",\"tags\":[1,2]}]",
           "[[[\"2024\",\"hi\"]],[[[\"post!\",2],null]]]");
    expect(q, "[\"map_doc\",{\"_id\":\"b\",\"type\":\"note\"}]", "[[],[[[\"note!\",0],null]]]");
    expect_error(q, "[\"reduce\",[\"function(k,v,re){ return sum(v); }\",\"not_a_function\"],[[[1,\"a\"],2]]]",
                 "compilation_error");
    expect(q, "[\"reduce\",[\"function(k,v,re){ return sum(v); }\"],[[[1,\"a\"],2],[[2,\"b\"],3]]]",
           "[true,[5]]");
    expect(q, "[\"rereduce\",[\"function(k,v,re){ return re ? sum(v) * 10 : 0; }\"],[1,2]]",
           "[true,[30]]");
    /* reduce_limit: output that does not shrink is refused like CouchDB does. */
    buf big = BUF_INIT;
    buf_puts(&big, "[\"reduce\",[\"function(k,v){ return v.concat(v); }\"],[");
    for (int i = 0; i < 100; i++) buf_printf(&big, "%s[[%d,\"id\"],\"value-%d\"]", i ? "," : "", i, i);
    buf_puts(&big, "]]");
    buf reply = BUF_INIT;
    CHECK_EQ_INT(qs_call(q, big.data, big.len, &reply, NULL), 0);
    mimeo_err err = {0};
    CHECK(qs_reply_error(reply.data, reply.len, &err));
    CHECK_EQ_STR(err.error, "reduce_overflow_error");
    buf_destroy(&big);
    buf_destroy(&reply);
    qs_release(pool, q);
    qs_pool_free(pool);
}

static void test_map_errors_are_per_document(void) {
    qs_pool *pool = pool_new(1, 5000);
    qs_proc *q = NULL;
    CHECK_EQ_INT(qs_acquire(pool, &q, NULL), 0);
    expect(q, "[\"reset\"]", "true");
    expect(q, "[\"add_fun\",\"function(doc){ if (doc.bad) throw new Error('nope'); emit(doc._id, 1); }\"]",
           "true");
    log_count = 0;
    expect(q, "[\"map_doc\",{\"_id\":\"x\",\"bad\":true}]", "[[]]");
    CHECK_EQ_INT(log_count, 1);
    CHECK(strstr(last_log, "nope") != NULL);
    CHECK(strstr(last_log, "x") != NULL);
    expect(q, "[\"map_doc\",{\"_id\":\"y\"}]", "[[[\"y\",1]]]");
    /* A syntax error is the caller's error, and the process goes on. */
    expect_error(q, "[\"add_fun\",\"function(doc) { emit(\"]", "compilation_error");
    expect(q, "[\"add_fun\",\"42\"]",
           "[\"error\",\"compilation_error\",\"Expression does not eval to a function. (42)\"]");
    /* No module system beyond the design document's: require('fs') fails for that doc only. */
    expect(q, "[\"reset\"]", "true");
    expect(q, "[\"add_fun\",\"function(doc){ var fs = require('fs'); emit(1, typeof fs); }\"]", "true");
    log_count = 0;
    expect(q, "[\"map_doc\",{\"_id\":\"z\"}]", "[[]]");
    CHECK_EQ_INT(log_count, 1);
    CHECK(strstr(last_log, "fs") != NULL);
    /* Nor any host object to reach files or processes with. */
    expect(q, "[\"reset\"]", "true");
    expect(q, "[\"add_fun\",\"function(doc){ emit([typeof os, typeof read, typeof snarf, typeof process, typeof _qs_write, typeof print], null); }\"]",
           "true");
    expect(q, "[\"map_doc\",{\"_id\":\"w\"}]",
           "[[[[\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\",\"undefined\"],null]]]");
    expect(q, "[\"bogus\"]", "[\"error\",\"unknown_command\",\"unknown command 'bogus'\"]");
    qs_release(pool, q);
    qs_pool_free(pool);
}

static const char DDOC[] =
    "[\"ddoc\",\"new\",\"_design/app\",{\"_id\":\"_design/app\","
    "\"filters\":{\"mine\":\"function(doc, req){ return doc.owner === req.userCtx.name && doc.kind == req.query.kind; }\"},"
    "\"validate_doc_update\":\"function(newDoc, oldDoc, userCtx, secObj){ "
    "if (!newDoc.owner) throw({forbidden: 'owner required'}); "
    "if (newDoc.owner !== userCtx.name && userCtx.roles.indexOf('_admin') < 0) throw({unauthorized: 'not yours'}); "
    "if (oldDoc && oldDoc.locked) throw({forbidden: 'locked'}); }\","
    "\"views\":{\"lib\":{\"util\":\"exports.isPost = function(d){ return d.kind === 'post'; };\"},"
    "\"posts\":{\"map\":\"function(doc){ if (require('views/lib/util').isPost(doc)) emit(doc._id); }\"}},"
    "\"lib\":{\"shared\":\"exports.k = require('./inner').k + 1;\",\"inner\":\"exports.k = 41;\"},"
    "\"filters2\":{}}]";

static void test_design_documents(void) {
    qs_pool *pool = pool_new(1, 5000);
    qs_proc *q = NULL;
    CHECK_EQ_INT(qs_acquire(pool, &q, NULL), 0);
    expect(q, DDOC, "true");
    expect(q, "[\"ddoc\",\"_design/app\",[\"filters\",\"mine\"],[[{\"owner\":\"ann\",\"kind\":1},"
              "{\"owner\":\"bob\",\"kind\":1},{\"owner\":\"ann\",\"kind\":2}],"
              "{\"query\":{\"kind\":\"1\"},\"userCtx\":{\"name\":\"ann\",\"roles\":[]}}]]",
           "[true,[true,false,false]]");
    expect(q, "[\"ddoc\",\"_design/app\",[\"validate_doc_update\"],[{\"owner\":\"ann\"},null,"
              "{\"name\":\"ann\",\"roles\":[]},{}]]", "1");
    expect(q, "[\"ddoc\",\"_design/app\",[\"validate_doc_update\"],[{},null,"
              "{\"name\":\"ann\",\"roles\":[]},{}]]", "{\"forbidden\":\"owner required\"}");
    expect(q, "[\"ddoc\",\"_design/app\",[\"validate_doc_update\"],[{\"owner\":\"bob\"},null,"
              "{\"name\":\"ann\",\"roles\":[]},{}]]", "{\"unauthorized\":\"not yours\"}");
    expect(q, "[\"ddoc\",\"_design/app\",[\"validate_doc_update\"],[{\"owner\":\"ann\"},{\"locked\":true},"
              "{\"name\":\"ann\",\"roles\":[]},{}]]", "{\"forbidden\":\"locked\"}");
    /* A view's map as a changes filter (filter=_view): passes when it emits. */
    expect(q, "[\"ddoc\",\"_design/app\",[\"views\",\"posts\",\"map\"],[[{\"_id\":\"1\",\"kind\":\"post\"},"
              "{\"_id\":\"2\",\"kind\":\"note\"}]]]", "[true,[true,false]]");
    expect(q, "[\"ddoc\",\"_design/app\",[\"filters\",\"nope\"],[[],{}]]",
           "[\"error\",\"not_found\",\"missing function filters.nope in _design/app\"]");
    expect(q, "[\"ddoc\",\"_design/other\",[\"filters\",\"x\"],[[],{}]]",
           "[\"error\",\"query_protocol_error\",\"uncached design doc: _design/other\"]");
    /* CommonJS inside the design document, with relative paths. */
    expect(q, "[\"ddoc\",\"new\",\"_design/req\",{\"_id\":\"_design/req\",\"lib\":{\"a\":\"exports.v = require('./b').v * 2;\",\"b\":\"exports.v = 21;\"},"
              "\"filters\":{\"f\":\"function(doc){ return require('lib/a').v === 42; }\"}}]", "true");
    expect(q, "[\"ddoc\",\"_design/req\",[\"filters\",\"f\"],[[{}],{}]]", "[true,[true]]");
    qs_release(pool, q);
    qs_pool_free(pool);
}

static size_t thrown_count, thrown_at;
static void count_thrown(void *ctx, size_t i, const mimeo_err *e) {
    (void)ctx;
    (void)e;
    thrown_count++;
    thrown_at = i;
}

/* qs_filter_docs: many documents in one call give the verdicts one call each would give;
 * a function that throws skips only those documents, with mimeo-js (which answers per
 * document) and with a query server that fails the whole batch (CouchDB's). */
static void test_filter_batches(void) {
    qs_pool *pool = pool_new(1, 5000);
    qs_proc *q = NULL;
    CHECK_EQ_INT(qs_acquire(pool, &q, NULL), 0);
    static const char ddoc[] = "{\"_id\":\"_design/b\",\"filters\":{\"f\":"
        "\"function(doc, req) { if (doc.n % 7 == 0) throw new Error('seven'); "
        "return doc.n % 3 == 0 && req.query.on == 'yes'; }\"}}";
    buf line = BUF_INIT, reply = BUF_INIT, docs = BUF_INIT;
    mimeo_err err = {0};
    CHECK_EQ_INT(qs_proc_teach(q, "k", 1, "_design/b", 9, ddoc, strlen(ddoc), &line, &reply,
                               &err), 0);
    enum { N = 250 };
    size_t offs[N + 1];
    bool keep[N], one[N];
    for (int i = 0; i < N; i++) {
        offs[i] = docs.len;
        buf_printf(&docs, "{\"_id\":\"d%d\",\"n\":%d}", i, i);
    }
    offs[N] = docs.len;
    static const char req[] = "{\"query\":{\"on\":\"yes\"}}";
    qs_filter_fn fn = {"_design/b", 9, false, "f", 1, req, strlen(req)};
    CHECK_EQ_INT(qs_filter_docs(q, &fn, docs.data, offs, N, &line, &reply, keep, NULL, NULL,
                                &err), 0);
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(keep[i], i % 3 == 0 && i % 7 != 0);
        CHECK_EQ_INT(qs_filter_doc(q, &fn, docs.data + offs[i], offs[i + 1] - offs[i], &line,
                                   &reply, &one[i], NULL, &err), 0);
        CHECK_EQ_INT(one[i], keep[i]);
    }
    qs_release(pool, q);
    qs_pool_free(pool);
    /* a query server that stops at the first throw: asked again per document */
    char script[] = "/tmp/mimeo-test-qs-XXXXXX";
    int fd = mkstemp(script);
    CHECK(fd >= 0);
    static const char sh[] =
        "while IFS= read -r l; do case \"$l\" in\n"
        "*'\"ddoc\",\"new\"'*) echo true ;;\n"
        "*'\"bad\"'*) echo '[\"error\",\"render_error\",\"threw\"]' ;;\n"
        "*'\"keep\"'*) echo '[true,[true]]' ;;\n"
        "*) echo '[true,[false]]' ;;\n"
        "esac; done\n";
    CHECK_EQ_INT(write(fd, sh, strlen(sh)), (int)strlen(sh));
    close(fd);
    char cmd[64];
    snprintf(cmd, sizeof cmd, "/bin/sh %s", script);
    qs_config cfg = {.command = cmd, .size = 1, .timeout_ms = 5000};
    CHECK_EQ_INT(qs_pool_new(&cfg, &pool), 0);
    CHECK_EQ_INT(qs_acquire(pool, &q, &err), 0);
    CHECK_EQ_INT(qs_proc_teach(q, "k", 1, "_design/b", 9, ddoc, strlen(ddoc), &line, &reply,
                               &err), 0);
    static const char four[] = "{\"keep\":1}{\"bad\":1}{\"c\":1}{\"keep\":2}";
    size_t o4[] = {0, 10, 19, 26, 36};
    CHECK_EQ_INT(qs_filter_docs(q, &fn, four, o4, 4, &line, &reply, keep, count_thrown, NULL,
                                &err), 0);
    CHECK(keep[0] && !keep[1] && !keep[2] && keep[3]);
    CHECK_EQ_INT(thrown_count, 1);
    CHECK_EQ_INT(thrown_at, 1);
    qs_release(pool, q);
    qs_pool_free(pool);
    unlink(script);
    buf_destroy(&line);
    buf_destroy(&reply);
    buf_destroy(&docs);
}

static void test_runaway_function_is_killed(void) {
    qs_pool *pool = pool_new(1, 500);
    qs_proc *q = NULL;
    CHECK_EQ_INT(qs_acquire(pool, &q, NULL), 0);
    int first_pid = qs_proc_pid(q);
    expect(q, "[\"add_fun\",\"function(doc){ while (true) {} }\"]", "true");
    buf reply = BUF_INIT;
    mimeo_err err = {0};
    uint64_t t0 = check_now_ms();
    const char *line = "[\"map_doc\",{\"_id\":\"loop\"}]";
    CHECK_EQ_INT(qs_call(q, line, strlen(line), &reply, &err), MIMEO_EIO);
    uint64_t took = check_now_ms() - t0;
    CHECK(took >= 450 && took < 3000);
    CHECK_EQ_STR(err.error, "os_process_error");
    CHECK_EQ_STR(err.reason, "OS process timed out.");
    CHECK(kill(first_pid, 0) != 0);  /* killed and reaped */
    qs_release(pool, q);
    /* The pool replaces it: the next caller gets a fresh, working process. */
    CHECK_EQ_INT(qs_acquire(pool, &q, NULL), 0);
    CHECK(qs_proc_pid(q) != first_pid);
    expect(q, "[\"reset\"]", "true");
    expect(q, "[\"add_fun\",\"function(doc){ emit(1,2); }\"]", "true");
    expect(q, "[\"map_doc\",{}]", "[[[1,2]]]");
    qs_release(pool, q);
    buf_destroy(&reply);
    qs_pool_free(pool);
}

static void test_memory_hog_is_contained(void) {
    const char *base = qs_command();
    char cmd[512];
    snprintf(cmd, sizeof cmd, "%s --max-heap-mb 64", base);
    qs_config cfg = {.command = cmd, .size = 1, .timeout_ms = 10000, .log = capture_log};
    qs_pool *pool = NULL;
    CHECK_EQ_INT(qs_pool_new(&cfg, &pool), 0);
    qs_proc *q = NULL;
    CHECK_EQ_INT(qs_acquire(pool, &q, NULL), 0);
    expect(q, "[\"add_fun\",\"function(doc){ var a = []; for (;;) a.push(new Array(100000).fill(doc._id)); }\"]",
           "true");
    buf reply = BUF_INIT;
    mimeo_err err = {0};
    const char *line = "[\"map_doc\",{\"_id\":\"hog\"}]";
    int rc = qs_call(q, line, strlen(line), &reply, &err);
    /* Either the engine reports out of memory for this document (logged, skipped) or the
     * process dies and the call fails: never an unbounded heap, never a hang. */
    if (rc == 0) {
        CHECK_EQ_STR(buf_cstr(&reply), "[[]]");
        CHECK(strstr(last_log, "memory") != NULL);
    } else {
        CHECK_EQ_INT(rc, MIMEO_EIO);
        CHECK_EQ_STR(err.error, "os_process_error");
    }
    qs_release(pool, q);
    CHECK_EQ_INT(qs_acquire(pool, &q, NULL), 0);
    expect(q, "[\"reset\"]", "true");
    expect(q, "[\"add_fun\",\"function(doc){ emit(doc._id, null); }\"]", "true");
    expect(q, "[\"map_doc\",{\"_id\":\"ok\"}]", "[[[\"ok\",null]]]");
    qs_release(pool, q);
    buf_destroy(&reply);
    qs_pool_free(pool);
}

/* Several threads share a pool smaller than their number: each gets a process of its own,
 * the others wait, and nobody sees another's replies. */
static qs_pool *shared_pool;
static int thread_failures;
static void *pool_worker(void *arg) {
    long n = (long)arg;
    for (int i = 0; i < 20; i++) {
        qs_proc *q = NULL;
        if (qs_acquire(shared_pool, &q, NULL) != 0) { __atomic_add_fetch(&thread_failures, 1, __ATOMIC_SEQ_CST); continue; }
        char line[128], want[128];
        snprintf(line, sizeof line, "[\"rereduce\",[\"function(k,v){ return v[0] * 1000 + v[1]; }\"],[%ld,%d]]", n, i);
        snprintf(want, sizeof want, "[true,[%ld]]", n * 1000 + i);
        buf reply = BUF_INIT;
        if (qs_call(q, line, strlen(line), &reply, NULL) != 0 || strcmp(buf_cstr(&reply), want) != 0)
            __atomic_add_fetch(&thread_failures, 1, __ATOMIC_SEQ_CST);
        buf_destroy(&reply);
        qs_release(shared_pool, q);
    }
    return NULL;
}

static void test_pool_shared_by_threads(void) {
    shared_pool = pool_new(2, 5000);
    pthread_t t[5];
    for (long i = 0; i < 5; i++) pthread_create(&t[i], NULL, pool_worker, (void *)i);
    for (int i = 0; i < 5; i++) pthread_join(t[i], NULL);
    CHECK_EQ_INT(thread_failures, 0);
    qs_pool_free(shared_pool);
}

static void test_bad_command(void) {
    qs_config cfg = {.command = "/nonexistent/query-server", .size = 1};
    qs_pool *pool = NULL;
    CHECK_EQ_INT(qs_pool_new(&cfg, &pool), 0);
    qs_proc *q = NULL;
    mimeo_err err = {0};
    int rc = qs_acquire(pool, &q, &err);
    if (rc == 0) {
        /* posix_spawnp may only fail once the child runs: then the first call fails. */
        buf reply = BUF_INIT;
        CHECK_EQ_INT(qs_call(q, "[\"reset\"]", 9, &reply, &err), MIMEO_EIO);
        buf_destroy(&reply);
        qs_release(pool, q);
    }
    CHECK_EQ_STR(err.error, "os_process_error");
    qs_pool_free(pool);
    cfg.command = "   ";
    CHECK_EQ_INT(qs_pool_new(&cfg, &pool), MIMEO_EINVAL);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    if (access(qs_command(), X_OK) != 0) {
        fprintf(stderr, "test_js: query server %s not built\n", qs_command());
        printf("0 passed, 1 failed\n");
        return 1;
    }
    RUN(test_views);
    RUN(test_map_errors_are_per_document);
    RUN(test_design_documents);
    RUN(test_filter_batches);
    RUN(test_runaway_function_is_killed);
    RUN(test_memory_hog_is_contained);
    RUN(test_pool_shared_by_threads);
    RUN(test_bad_command);
    return check_report();
}
