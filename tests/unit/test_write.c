/* The write and storage edges: randomness when getrandom is refused, bounded _revisions,
 * one failing job inside a write group, checked appends, CouchDB's revision rules for
 * replicated writes, long document ids (storage and _all_docs order), the data-directory
 * lock, and compacting the data file. */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <nettle/md5.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/buf.h"
#include "db/db_int.h"
#include "json/json.h"
#include "mimeo.h"

static char tmpdir[256];

/* ---- randomness ---------------------------------------------------------------------------- */

/* Makes getrandom(2) fail with EPERM in this process, as a seccomp sandbox may. */
static int refuse_getrandom(void) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getrandom, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof code / sizeof *code, code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

static void test_random_without_getrandom(void) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(10); /* the old code spun here forever */
        if (refuse_getrandom()) _exit(2);
        unsigned char a[32] = {0}, b[32] = {0};
        random_bytes(a, sizeof a);
        random_bytes(b, sizeof b);
        _exit(memcmp(a, b, sizeof a) != 0 ? 0 : 3);
    }
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ_INT(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static mimeo_env *open_env(const mimeo_options *o) {
    mimeo_env *env = NULL;
    mimeo_err err;
    int rc = mimeo_env_open(tmpdir, o, &env, &err);
    if (rc) fprintf(stderr, "env open: %s\n", err.reason);
    return env;
}

static mimeo_db *fresh_db(mimeo_env *env, const char *name) {
    mimeo_err err;
    mimeo_db_delete(env, name, &err);
    CHECK_EQ_INT(mimeo_db_create(env, name, &err), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, name, &db, &err), 0);
    return db;
}

/* ---- checked appends ------------------------------------------------------------------------ */

typedef struct name_seen {
    size_t count;
    bool   bad;
} name_seen;

static int on_name(void *ctx, const char *name, size_t len) {
    name_seen *s = ctx;
    s->count++;
    if (!mimeo_db_name_valid(name, len)) s->bad = true;
    return 0;
}

/* A failed append while listing must fail the call, not leave a count that disagrees with
 * the bytes (the listing then read past its buffer). */
static void test_list_append_failure(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_err err;
    char name[64];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "db-with-a-rather-long-name-%04d", i);
        CHECK_EQ_INT(mimeo_db_create(env, name, &err), 0);
    }
    name_seen all = {0};
    CHECK_EQ_INT(mimeo_db_list(env, NULL, on_name, &all), 0);
    CHECK_EQ_INT(all.count, 300);
    for (unsigned n = 1; n <= 8; n++) {
        name_seen s = {0};
        atomic_store(&buf_fault_countdown, n);
        int rc = mimeo_db_list(env, NULL, on_name, &s);
        atomic_store(&buf_fault_countdown, 0);
        CHECK(rc == 0 || rc == MIMEO_ENOMEM);
        CHECK(!s.bad);
        CHECK(rc != 0 || s.count == 300);
    }
    mimeo_env_close(env);
}

/* ---- replicated revisions ------------------------------------------------------------------- */

static int put_json(mimeo_db *db, const char *id, const char *json, bool replicated,
                    mimeo_err *err) {
    mimeo_put_opts o = {.new_edits_false = replicated};
    mimeo_put_result res;
    int rc = mimeo_doc_put(db, id, strlen(id), json, strlen(json), &o, &res, err);
    if (!rc) mimeo_free(res.id);
    return rc;
}

static char *winner(mimeo_db *db, const char *id) {
    mimeo_get_opts o = {0};
    o.revs = true;
    char *out = NULL;
    size_t len;
    mimeo_err err;
    if (mimeo_doc_get(db, id, strlen(id), &o, &out, &len, &err)) return NULL;
    return out;
}

/* Peak RSS growth of a _revisions of n ids, measured in a child so earlier tests do not
 * hide it. Returns kilobytes, or -1. */
static long revisions_rss_kb(size_t n) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        mimeo_env *env = open_env(NULL);
        if (!env) _exit(255);
        mimeo_db *db = fresh_db(env, "revs");
        buf b;
        buf_init(&b, 0);
        buf_printf(&b, "{\"_id\":\"big\",\"_rev\":\"%zu-%032zx\",\"_revisions\":{\"start\":%zu,\"ids\":[", n, n, n);
        for (size_t i = n; i >= 1; i--) buf_printf(&b, "%s\"%032zx\"", i == n ? "" : ",", i);
        buf_puts(&b, "]}}");
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        long before = ru.ru_maxrss;
        mimeo_err err;
        mimeo_put_opts o = {.new_edits_false = true};
        mimeo_put_result res;
        int rc = mimeo_doc_put(db, NULL, 0, b.data, b.len, &o, &res, &err);
        getrusage(RUSAGE_SELF, &ru);
        long grew = ru.ru_maxrss - before;
        if (rc) _exit(254);
        mimeo_free(res.id);
        /* Only the newest _revs_limit (1000) revisions are kept. */
        char *doc = winner(db, "big");
        char want[64];
        snprintf(want, sizeof want, "\"%032zx\"]}", n - 999);
        bool ok = doc && strstr(doc, want);
        mimeo_free(doc);
        buf_destroy(&b);
        mimeo_db_close(db);
        mimeo_env_close(env);
        if (!ok) _exit(253);
        _exit(grew / 1024 > 250 ? 250 : (int)(grew / 1024));
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
    int code = WEXITSTATUS(status);
    if (code >= 253) {
        fprintf(stderr, "revisions child failed: %d\n", code);
        return -1;
    }
    return (long)code * 1024;
}

/* A 3.9 MB _revisions once grew the peak RSS by ~107 MB (a tree node per id before
 * stemming); now the ids past _revs_limit are never kept. */
static void test_revisions_bounded(void) {
    long kb = revisions_rss_kb(100000);
    fprintf(stderr, "  100000 _revisions ids: peak RSS grew by ~%ld MB\n", kb / 1024);
    CHECK(kb >= 0);
    CHECK(kb < 12 * 1024); /* it was ~33 MB under ASan, ~107 MB without */

    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_db *db = fresh_db(env, "revs");
    /* Beyond MIMEO_REVISIONS_MAX: refused as a bad request. */
    buf b;
    buf_init(&b, 0);
    size_t n = MIMEO_REVISIONS_MAX + 1;
    buf_printf(&b, "{\"_rev\":\"%zu-a\",\"_revisions\":{\"start\":%zu,\"ids\":[", n, n);
    for (size_t i = 0; i < n; i++) buf_puts(&b, i ? ",\"a\"" : "\"a\"");
    buf_puts(&b, "]}}");
    mimeo_err err;
    CHECK_EQ_INT(put_json(db, "huge", b.data, true, &err), MIMEO_EDOCVALIDATION);
    buf_destroy(&b);
    mimeo_db_close(db);
    mimeo_env_close(env);
}

/* What CouchDB 3.5 stores, mimeo must store (or answer as CouchDB does). */
static void test_couchdb_revisions_accepted(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_db *db = fresh_db(env, "couchrevs");
    mimeo_err err;
    /* "1-" with new_edits=false: CouchDB answers [] and keeps nothing. */
    const char *bulk = "{\"new_edits\":false,\"docs\":[{\"_id\":\"bare\",\"_rev\":\"1-\"}]}";
    char *out = NULL;
    size_t out_len = 0;
    CHECK_EQ_INT(mimeo_bulk_docs(db, bulk, strlen(bulk), &out, &out_len, &err), 0);
    CHECK_EQ_STR(out, "[]");
    mimeo_free(out);
    char *doc = winner(db, "bare");
    CHECK(doc == NULL);
    mimeo_free(doc);

    /* Generation 0. */
    CHECK_EQ_INT(put_json(db, "zero", "{\"_rev\":\"0-abc\",\"v\":1}", true, &err), 0);
    doc = winner(db, "zero");
    CHECK(doc && strstr(doc, "\"_rev\":\"0-abc\""));
    mimeo_free(doc);
    /* An edit on top of it makes generation 1. */
    mimeo_put_opts po = {.rev = "0-abc"};
    mimeo_put_result res;
    CHECK_EQ_INT(mimeo_doc_put(db, "zero", 4, "{\"v\":2}", 7, &po, &res, &err), 0);
    CHECK(strncmp(res.rev, "1-", 2) == 0);
    mimeo_free(res.id);

    /* start smaller than the number of ids: the ids below generation 0 are dropped. */
    CHECK_EQ_INT(put_json(db, "short",
                          "{\"_rev\":\"1-c\",\"_revisions\":{\"start\":1,\"ids\":[\"c\",\"b\",\"a\"]}}",
                          true, &err), 0);
    doc = winner(db, "short");
    CHECK(doc && strstr(doc, "\"_revisions\":{\"start\":1,\"ids\":[\"c\",\"b\"]}"));
    mimeo_free(doc);

    /* Generations at and above 2^63. */
    CHECK_EQ_INT(put_json(db, "high",
                          "{\"_rev\":\"9223372036854775809-b\",\"_revisions\":"
                          "{\"start\":9223372036854775809,\"ids\":[\"b\",\"a\"]}}",
                          true, &err), 0);
    doc = winner(db, "high");
    CHECK(doc && strstr(doc, "\"_rev\":\"9223372036854775809-b\""));
    mimeo_free(doc);
    CHECK_EQ_INT(put_json(db, "max", "{\"_rev\":\"18446744073709551615-z\"}", true, &err), 0);
    doc = winner(db, "max");
    CHECK(doc && strstr(doc, "\"_rev\":\"18446744073709551615-z\""));
    mimeo_free(doc);

    /* Still refused: a negative start, and a non-integer one. */
    CHECK_EQ_INT(put_json(db, "neg", "{\"_rev\":\"1-a\",\"_revisions\":{\"start\":-1,\"ids\":[\"a\"]}}",
                          true, &err), MIMEO_EDOCVALIDATION);
    CHECK_EQ_INT(put_json(db, "flt", "{\"_rev\":\"1-a\",\"_revisions\":{\"start\":1.5,\"ids\":[\"a\"]}}",
                          true, &err), MIMEO_EDOCVALIDATION);
    mimeo_db_close(db);
    mimeo_env_close(env);
}

/* ---- one failing job in a group ----------------------------------------------------------- */

typedef struct gjob {
    store      *st;
    int         kind;   /* GJ_* */
    int         n;      /* key number written by a good job */
    int         calls;
    int         rc;
    pthread_t   th;
} gjob;

enum { GJ_SLOW, GJ_GOOD, GJ_LMDB_ERROR, GJ_TXN_FULL_ONCE, GJ_TXN_FULL_ALWAYS };

static int gjob_fn(MDB_txn *txn, void *arg) {
    gjob *g = arg;
    g->calls++;
    const store_tables *t = store_tables_get(g->st);
    switch (g->kind) {
    case GJ_SLOW: {
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL); /* the others queue meanwhile and form the next group */
        return 0;
    }
    case GJ_GOOD: {
        char key[32];
        int n = snprintf(key, sizeof key, "group-test-%d", g->n);
        MDB_val k = {(size_t)n, key}, v = {1, "x"};
        return store_err(mdb_put(txn, t->meta, &k, &v, 0));
    }
    case GJ_LMDB_ERROR: {
        /* A key longer than LMDB allows: an error no other job of the group caused. */
        static char huge[2048];
        memset(huge, 'k', sizeof huge);
        MDB_val k = {sizeof huge, huge}, v = {1, "x"};
        return store_err(mdb_put(txn, t->meta, &k, &v, 0));
    }
    case GJ_TXN_FULL_ONCE:
        /* Does not fit after the others' writes, fits in a group of its own. */
        return g->calls == 1 ? store_err(MDB_TXN_FULL) : 0;
    default:
        return store_err(MDB_TXN_FULL);
    }
}

static void *gjob_thread(void *arg) {
    gjob *g = arg;
    g->rc = store_write(g->st, gjob_fn, g);
    return NULL;
}

static void test_group_job_isolation(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    enum { N = 9 };
    gjob jobs[N];
    const int kinds[N] = {GJ_SLOW, GJ_GOOD, GJ_GOOD, GJ_LMDB_ERROR, GJ_GOOD, GJ_TXN_FULL_ONCE,
                          GJ_GOOD, GJ_TXN_FULL_ALWAYS, GJ_GOOD};
    for (int i = 0; i < N; i++) {
        jobs[i] = (gjob){.st = env->store, .kind = kinds[i], .n = i};
        pthread_create(&jobs[i].th, NULL, gjob_thread, &jobs[i]);
        struct timespec ts = {0, (i == 0 ? 50 : 5) * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < N; i++) pthread_join(jobs[i].th, NULL);
    for (int i = 0; i < N; i++) {
        int want = kinds[i] == GJ_LMDB_ERROR ? MIMEO_EIO
                 : kinds[i] == GJ_TXN_FULL_ALWAYS ? MIMEO_ETOOLARGE : 0;
        if (jobs[i].rc != want) fprintf(stderr, "  job %d (kind %d): %d\n", i, kinds[i], jobs[i].rc);
        CHECK_EQ_INT(jobs[i].rc, want);
    }
    /* The good jobs' writes are durable. */
    MDB_txn *txn;
    CHECK_EQ_INT(store_read_begin(env->store, &txn), 0);
    for (int i = 0; i < N; i++) {
        if (kinds[i] != GJ_GOOD) continue;
        char key[32];
        int n = snprintf(key, sizeof key, "group-test-%d", i);
        MDB_val k = {(size_t)n, key}, v;
        CHECK_EQ_INT(mdb_get(txn, store_tables_get(env->store)->meta, &k, &v), 0);
    }
    store_read_end(env->store, txn);
    mimeo_env_close(env);
}

/* A failed job right before one that no longer fits the transaction: the group is cut
 * before the latter, and the failed job is still answered (it was once cut off with the
 * jobs after it and its writer waited for ever). The slow job makes the four others queue
 * while it runs, so they form one group. */
static void test_group_failed_job_before_full(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    enum { N = 5 };
    gjob jobs[N];
    const int kinds[N] = {GJ_SLOW, GJ_GOOD, GJ_LMDB_ERROR, GJ_TXN_FULL_ONCE, GJ_GOOD};
    for (int i = 0; i < N; i++) {
        jobs[i] = (gjob){.st = env->store, .kind = kinds[i], .n = 100 + i};
        pthread_create(&jobs[i].th, NULL, gjob_thread, &jobs[i]);
        struct timespec ts = {0, (i == 0 ? 50 : 5) * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    bool all_answered = true;
    for (int i = 0; i < N; i++) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 20;
        if (pthread_timedjoin_np(jobs[i].th, NULL, &until) != 0) {
            fprintf(stderr, "  job %d (kind %d) was never answered\n", i, kinds[i]);
            all_answered = false;
        }
    }
    CHECK(all_answered);
    if (!all_answered) {
        check_report();
        _exit(1); /* a writer still waits on the store: closing it would wait too */
    }
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(jobs[i].rc, kinds[i] == GJ_LMDB_ERROR ? MIMEO_EIO : 0);
    CHECK_EQ_INT(jobs[3].calls, 2);
    mimeo_env_close(env);
}

/* ---- the commit observer (mimeo_env_on_commit) ---------------------------------------------- */

struct seen_commit {
    char db[64];
    uint64_t seq;
};
static struct seen_commit seen_commits[16];
static int nseen_commits;

static void record_commit(void *ctx, const char *db, size_t len, uint64_t seq) {
    CHECK(ctx == &nseen_commits);
    if (nseen_commits < 16 && len < 64) {
        memcpy(seen_commits[nseen_commits].db, db, len);
        seen_commits[nseen_commits].db[len] = '\0';
        seen_commits[nseen_commits].seq = seq;
    }
    nseen_commits++;
}

/* Once per write that advanced a database, with its new update_seq; never for _local
 * documents (replication checkpoints), so a mesh pushing on commit does not echo. */
static void test_commit_observer(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_err e = {0};
    mimeo_db *a = NULL, *b = NULL;
    CHECK_EQ_INT(mimeo_db_create(env, "obs-a", &e), 0);
    CHECK_EQ_INT(mimeo_db_create(env, "obs-b", &e), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "obs-a", &a, &e), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "obs-b", &b, &e), 0);
    mimeo_env_on_commit(env, record_commit, &nseen_commits);
    nseen_commits = 0;
    mimeo_put_result r;
    CHECK_EQ_INT(mimeo_doc_put(a, "x", 1, "{\"v\":1}", 7, NULL, &r, &e), 0);
    mimeo_free(r.id);
    CHECK_EQ_INT(nseen_commits, 1);
    CHECK_EQ_STR(seen_commits[0].db, "obs-a");
    CHECK_EQ_INT((int)seen_commits[0].seq, 1);
    CHECK_EQ_INT(mimeo_local_put(b, "ckpt", 4, "{\"seq\":1}", 9, NULL, &r, &e), 0);
    mimeo_free(r.id);
    CHECK_EQ_INT(nseen_commits, 1);
    CHECK_EQ_INT(mimeo_doc_put(b, "y", 1, "{\"v\":2}", 7, NULL, &r, &e), 0);
    mimeo_free(r.id);
    CHECK_EQ_INT(nseen_commits, 2);
    CHECK_EQ_STR(seen_commits[1].db, "obs-b");
    CHECK_EQ_INT((int)seen_commits[1].seq, 1);
    mimeo_env_on_commit(env, NULL, NULL);
    CHECK_EQ_INT(mimeo_doc_put(a, "z", 1, "{\"v\":3}", 7, NULL, &r, &e), 0);
    mimeo_free(r.id);
    CHECK_EQ_INT(nseen_commits, 2);
    mimeo_db_close(a);
    mimeo_db_close(b);
    mimeo_env_close(env);
}

/* ---- the data directory lock ------------------------------------------------------------- */

static void test_data_dir_locked(void) {
    mimeo_env *a = open_env(NULL);
    CHECK(a);
    mimeo_env *b = NULL;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_env_open(tmpdir, NULL, &b, &err), MIMEO_EBUSY);
    CHECK(b == NULL);
    CHECK(strstr(err.reason, "in use") != NULL);
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)getpid());
    CHECK(strstr(err.reason, pid) != NULL);
    mimeo_env_close(a);
    /* Closing frees the directory. */
    CHECK_EQ_INT(mimeo_env_open(tmpdir, NULL, &b, &err), 0);
    mimeo_env_close(b);
}

/* ---- compacting the data file -------------------------------------------------------------- */

static long long file_size(const char *dir) {
    char path[300];
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static void test_compact_data_file(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_db *big = fresh_db(env, "big");
    mimeo_db *keep = fresh_db(env, "keep");
    mimeo_err err;
    /* 24 MB of bodies in a database that is then deleted, and a few documents kept. */
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"docs\":[");
    for (int i = 0; i < 100; i++) {
        buf_printf(&b, "%s{\"_id\":\"d%03d\",\"pad\":\"", i ? "," : "", i);
        for (int k = 0; k < 2000; k++) buf_puts(&b, "0123456789abcdefghijklmnopqrstuvwxyz012345678901234567890123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq");
        buf_puts(&b, "\"}");
    }
    buf_puts(&b, "]}");
    for (int round = 0; round < 1; round++) {
        char *out = NULL;
        size_t out_len;
        CHECK_EQ_INT(mimeo_bulk_docs(big, b.data, b.len, &out, &out_len, &err), 0);
        mimeo_free(out);
    }
    buf_destroy(&b);
    for (int i = 0; i < 50; i++) {
        char id[16], json[64];
        snprintf(id, sizeof id, "k%02d", i);
        snprintf(json, sizeof json, "{\"n\":%d}", i);
        CHECK_EQ_INT(put_json(keep, id, json, false, &err), 0);
    }
    mimeo_db_close(big);
    mimeo_db_close(keep);
    CHECK_EQ_INT(mimeo_db_delete(env, "big", &err), 0);
    /* Not while the directory is open. */
    CHECK_EQ_INT(mimeo_dir_compact(tmpdir, NULL, NULL, &err), MIMEO_EBUSY);
    mimeo_env_close(env);

    long long was = file_size(tmpdir);
    uint64_t before = 0, after = 0;
    CHECK_EQ_INT(mimeo_dir_compact(tmpdir, &before, &after, &err), 0);
    long long now = file_size(tmpdir);
    fprintf(stderr, "  data file %lld -> %lld bytes\n", was, now);
    CHECK(was > 20 * 1024 * 1024);
    CHECK(now < 2 * 1024 * 1024);
    CHECK_EQ_INT((long long)before, was);
    CHECK_EQ_INT((long long)after, now);

    /* What was kept is intact, and the store goes on working. */
    env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    CHECK_EQ_INT(mimeo_db_open(env, "big", &big, &err), MIMEO_ENOTFOUND);
    CHECK_EQ_INT(mimeo_db_open(env, "keep", &keep, &err), 0);
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(keep, &info), 0);
    CHECK_EQ_INT(info.doc_count, 50);
    for (int i = 0; i < 50; i++) {
        char id[16], want[32];
        snprintf(id, sizeof id, "k%02d", i);
        snprintf(want, sizeof want, "\"n\":%d,", i);
        char *doc = winner(keep, id);
        CHECK(doc && strstr(doc, want));
        mimeo_free(doc);
    }
    CHECK_EQ_INT(put_json(keep, "after", "{\"x\":1}", false, &err), 0);
    mimeo_db_close(keep);
    mimeo_env_close(env);
    CHECK_EQ_INT(mimeo_dir_compact("/nonexistent/mimeo-dir", NULL, NULL, &err) != 0, 1);
}

/* ---- long document ids ------------------------------------------------------------------- */

typedef struct idv {
    char  *s;
    size_t n;
} idv;

static int idv_cmp(const void *a, const void *b) {
    const idv *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    if (c) return c;
    return x->n < y->n ? -1 : x->n > y->n;
}

static uint64_t lid_rng;
static uint64_t lid_rand(void) {
    lid_rng ^= lid_rng << 13;
    lid_rng ^= lid_rng >> 7;
    lid_rng ^= lid_rng << 17;
    return lid_rng;
}

/* An id over "ab" so that long ids share prefixes often. */
static idv id_make(const char *prefix, size_t plen, size_t extra) {
    idv v;
    v.n = plen + extra;
    v.s = malloc(v.n + 1);
    memcpy(v.s, prefix, plen);
    for (size_t i = 0; i < extra; i++) v.s[plen + i] = (char)('a' + lid_rand() % 2);
    v.s[v.n] = 0;
    return v;
}

typedef struct rows {
    idv   *ids;
    size_t count, alloc;
} rows;

static int on_row(void *ctx, const char *json, size_t len) {
    rows *r = ctx;
    jval *t = NULL;
    json_error e;
    if (json_tree_parse(json, len, NULL, &t, &e)) return -100;
    const jval *id = jval_get(t, "id");
    if (!id || id->type != JV_STRING) {
        jval_free(t);
        return -101;
    }
    if (r->count == r->alloc) {
        r->alloc = r->alloc ? r->alloc * 2 : 64;
        r->ids = realloc(r->ids, r->alloc * sizeof *r->ids);
    }
    idv *v = &r->ids[r->count++];
    v->n = id->len;
    v->s = malloc(id->len + 1);
    memcpy(v->s, id->str, id->len + 1);
    jval_free(t);
    return 0;
}

static void rows_free(rows *r) {
    for (size_t i = 0; i < r->count; i++) free(r->ids[i].s);
    free(r->ids);
    memset(r, 0, sizeof *r);
}

/* Runs one _all_docs query and compares it with the sorted list. Returns true when equal. */
static bool all_docs_matches(mimeo_db *db, const idv *sorted, size_t n, const idv *start,
                             const idv *endk, bool incl, bool desc, uint64_t skip, uint64_t limit) {
    mimeo_all_docs_opts o = {0};
    if (start) { o.startkey = start->s; o.startkey_len = start->n; }
    if (endk) { o.endkey = endk->s; o.endkey_len = endk->n; }
    o.inclusive_end = incl;
    o.descending = desc;
    o.skip = skip;
    o.limit = limit;
    rows r = {0};
    mimeo_err err;
    int rc = mimeo_all_docs(db, &o, on_row, &r, &err);
    /* The expected rows, from the sorted list. */
    size_t want = 0, skipped = 0, at = 0;
    bool ok = rc == 0;
    for (size_t k = 0; k < n && ok; k++) {
        const idv *v = desc ? &sorted[n - 1 - k] : &sorted[k];
        if (start) {
            int c = idv_cmp(v, start);
            if (desc ? c > 0 : c < 0) continue;
        }
        if (endk) {
            int c = idv_cmp(v, endk);
            if (desc) c = -c;
            if (c > 0 || (c == 0 && !incl)) break;
        }
        if (skipped < skip) { skipped++; continue; }
        if (limit && want >= limit) break;
        want++;
        if (at >= r.count || idv_cmp(&r.ids[at], v) != 0) ok = false;
        at++;
    }
    if (ok && r.count != want) ok = false;
    if (!ok)
        fprintf(stderr, "  all_docs mismatch: rc %d, got %zu rows, want %zu (desc %d skip %llu limit %llu)\n",
                rc, r.count, want, desc, (unsigned long long)skip, (unsigned long long)limit);
    rows_free(&r);
    return ok;
}

static void test_long_ids(void) {
    lid_rng = (uint64_t)time(NULL) * 2654435761u | 1;
    uint64_t seed = lid_rng;
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_db *db = fresh_db(env, "longids");
    mimeo_err err;

    /* Ids around every edge of the key layout: short ones, 399/400/401 bytes, runs of long
     * ids sharing their first 400 bytes (one longer than a page of rows), ids that prefix
     * others, and 64 KiB ones. */
    enum { MAXIDS = 1400 };
    idv *ids = calloc(MAXIDS, sizeof *ids);
    size_t n = 0;
    idv p[3];
    for (int i = 0; i < 3; i++) p[i] = id_make("", 0, 400);
    for (int i = 0; i < 200; i++) ids[n++] = id_make("", 0, 1 + lid_rand() % 60);
    for (int i = 0; i < 3; i++) {
        ids[n++] = id_make(p[i].s, 399, 0);
        ids[n++] = id_make(p[i].s, 400, 0);
        ids[n++] = id_make(p[i].s, 398, 3);
    }
    for (int i = 0; i < 300; i++) ids[n++] = id_make(p[0].s, 400, 1 + lid_rand() % 40);
    for (int i = 0; i < 150; i++) ids[n++] = id_make(p[1].s, 400, 1 + lid_rand() % 900);
    for (int i = 0; i < 100; i++) ids[n++] = id_make(p[2].s, 390 + lid_rand() % 10, 1 + lid_rand() % 30);
    for (int i = 0; i < 3; i++) ids[n++] = id_make(p[i].s, 400, MIMEO_ID_MAX - 400);
    ids[n++] = id_make(p[0].s, 400, MIMEO_ID_MAX - 401);
    /* Duplicates are possible with short random ids: drop them. */
    qsort(ids, n, sizeof *ids, idv_cmp);
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (u && idv_cmp(&ids[u - 1], &ids[i]) == 0) { free(ids[i].s); continue; }
        ids[u++] = ids[i];
    }
    n = u;

    /* Written in a shuffled order, in one _bulk_docs. */
    size_t *order = malloc(n * sizeof *order);
    for (size_t i = 0; i < n; i++) order[i] = i;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = lid_rand() % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"docs\":[");
    for (size_t i = 0; i < n; i++) {
        buf_puts(&b, i ? ",{\"_id\":" : "{\"_id\":");
        json_put_str(&b, ids[order[i]].s, ids[order[i]].n);
        buf_printf(&b, ",\"len\":%zu}", ids[order[i]].n);
    }
    buf_puts(&b, "]}");
    char *out = NULL;
    size_t out_len;
    CHECK_EQ_INT(mimeo_bulk_docs(db, b.data, b.len, &out, &out_len, &err), 0);
    CHECK(out && !strstr(out, "\"error\""));
    mimeo_free(out);
    buf_destroy(&b);
    free(order);

    bool all_ok = true;
    all_ok &= all_docs_matches(db, ids, n, NULL, NULL, true, false, 0, 0);
    all_ok &= all_docs_matches(db, ids, n, NULL, NULL, true, true, 0, 0);
    for (int q = 0; q < 60; q++) {
        idv s1 = ids[lid_rand() % n], s2 = ids[lid_rand() % n];
        /* Bounds that are not ids: one byte longer or shorter. */
        idv m1 = s1, m2 = s2;
        char *t1 = NULL, *t2 = NULL;
        if (lid_rand() % 3 == 0) {
            t1 = malloc(s1.n + 2);
            memcpy(t1, s1.s, s1.n);
            t1[s1.n] = 'a';
            m1.s = t1;
            m1.n = s1.n + 1;
        }
        if (lid_rand() % 3 == 0 && s2.n > 1) m2.n = s2.n - 1;
        bool desc = lid_rand() % 2;
        if ((idv_cmp(&m1, &m2) > 0) != desc) { idv t = m1; m1 = m2; m2 = t; }
        bool use_start = lid_rand() % 4 != 0, use_end = lid_rand() % 4 != 0;
        bool ok = all_docs_matches(db, ids, n, use_start ? &m1 : NULL, use_end ? &m2 : NULL,
                                   lid_rand() % 2, desc, lid_rand() % 3 ? 0 : lid_rand() % 300,
                                   lid_rand() % 2 ? 0 : 1 + lid_rand() % 400);
        all_ok &= ok;
        free(t1);
        free(t2);
    }
    /* Every id reads back whole. */
    for (size_t i = 0; i < n; i++) {
        char *doc = NULL;
        size_t len;
        if (mimeo_doc_get(db, ids[i].s, ids[i].n, NULL, &doc, &len, &err) != 0) { all_ok = false; continue; }
        char want[32];
        snprintf(want, sizeof want, "\"len\":%zu", ids[i].n);
        if (!strstr(doc, want)) all_ok = false;
        mimeo_free(doc);
    }
    /* Updating and deleting a long id finds the same record. */
    idv *big = NULL;
    for (size_t i = 0; i < n; i++) if (ids[i].n == MIMEO_ID_MAX) big = &ids[i];
    CHECK(big != NULL);
    if (big) {
        char *doc = NULL;
        size_t len;
        CHECK_EQ_INT(mimeo_doc_get(db, big->s, big->n, NULL, &doc, &len, &err), 0);
        char *rev = doc ? strstr(doc, "\"_rev\":\"") : NULL;
        char revbuf[MIMEO_REV_MAX] = "";
        if (rev) sscanf(rev + 8, "%95[^\"]", revbuf);
        mimeo_free(doc);
        mimeo_put_opts po = {.rev = revbuf};
        mimeo_put_result res;
        CHECK_EQ_INT(mimeo_doc_put(db, big->s, big->n, "{\"v\":2}", 7, &po, &res, &err), 0);
        CHECK(strncmp(res.rev, "2-", 2) == 0);
        CHECK(res.id && strlen(res.id) == big->n);
        mimeo_free(res.id);
    }
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK_EQ_INT(info.doc_count, n);
    /* Compaction walks long keys too. */
    CHECK_EQ_INT(mimeo_db_compact(db, &err), 0);
    mimeo_db_close(db);
    mimeo_env_close(env);

    /* The layout survives a reopen. */
    env = open_env(NULL);
    CHECK(env);
    if (env) {
        CHECK_EQ_INT(mimeo_db_open(env, "longids", &db, &err), 0);
        all_ok &= all_docs_matches(db, ids, n, NULL, NULL, true, false, 0, 0);
        all_ok &= all_docs_matches(db, ids, n, &p[0], NULL, true, true, 3, 200);
        /* Over the limit: refused as CouchDB words it. */
        idv too = id_make("", 0, MIMEO_ID_MAX + 1);
        CHECK_EQ_INT(put_json(db, too.s, "{}", false, &err), MIMEO_EBADID);
        CHECK_EQ_STR(err.reason, "Document id is too long");
        free(too.s);
        mimeo_db_close(db);
        mimeo_env_close(env);
    }
    /* The limit is configurable. */
    mimeo_options o = {0};
    o.max_document_id_length = 200000;
    env = open_env(&o);
    CHECK(env);
    if (env) {
        CHECK_EQ_INT(mimeo_db_open(env, "longids", &db, &err), 0);
        idv huge = id_make("", 0, 150000);
        CHECK_EQ_INT(put_json(db, huge.s, "{\"h\":1}", false, &err), 0);
        char *doc = NULL;
        size_t len;
        CHECK_EQ_INT(mimeo_doc_get(db, huge.s, huge.n, NULL, &doc, &len, &err), 0);
        mimeo_free(doc);
        free(huge.s);
        mimeo_db_close(db);
        mimeo_env_close(env);
    }
    if (!all_ok) fprintf(stderr, "  test_long_ids seed %llu\n", (unsigned long long)seed);
    CHECK(all_ok);
    for (size_t i = 0; i < n; i++) free(ids[i].s);
    for (int i = 0; i < 3; i++) free(p[i].s);
    free(ids);
}

typedef struct forge_job {
    mimeo_env           *env;
    uint64_t             dbid;
    const unsigned char *key;
    const char          *id;
} forge_job;

/* Writes the record of "plain" again under a forged long key, as document `id`. */
static int forge_fn(MDB_txn *txn, void *arg) {
    forge_job *f = arg;
    const store_tables *t = store_tables_get(f->env->store);
    db_doc d;
    db_doc_init(&d);
    int rc = db_doc_load(txn, t, f->dbid, "plain", 5, &d);
    buf scratch;
    buf_init(&scratch, 0);
    MDB_val k = {8 + 400 + 8, (void *)f->key};
    if (!rc) rc = db_doc_put_at(txn, t, &k, f->id, 600, &d, &scratch);
    buf_destroy(&scratch);
    db_doc_destroy(&d);
    return rc;
}

/* Two long ids whose slots collide (forged here: an MD5 collision on 64 bits cannot be
 * made to order) must both be stored, found and listed in order: the second takes the next
 * slot of the chain. */
static void test_long_id_slot_collision(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_db *db = fresh_db(env, "collide");
    mimeo_err err;
    char a[601], b[601];
    memset(a, 'c', 600);
    a[600] = 0;
    memcpy(b, a, sizeof b);
    b[599] = 'd';
    /* A record of id b sitting in the slot that a's hash picks. */
    struct md5_ctx ctx;
    unsigned char dg[MD5_DIGEST_SIZE];
    md5_init(&ctx);
    md5_update(&ctx, 600, (const uint8_t *)a);
    md5_digest(&ctx, sizeof dg, dg);
    db_meta m;
    CHECK_EQ_INT(db_meta_snapshot(db, &m), 0);
    unsigned char key[8 + 400 + 8];
    be64_put(key, m.dbid);
    memcpy(key + 8, a, 400);
    memcpy(key + 408, dg, 8);
    CHECK_EQ_INT(put_json(db, "plain", "{}", false, &err), 0); /* a record to copy from */
    forge_job fj = {env, m.dbid, key, b};
    CHECK_EQ_INT(store_write(env->store, forge_fn, &fj), 0);

    /* a finds its slot taken by another id and goes to the next one. */
    CHECK_EQ_INT(put_json(db, a, "{\"who\":\"a\"}", false, &err), 0);
    char *doc = NULL;
    size_t len;
    CHECK_EQ_INT(mimeo_doc_get(db, a, 600, NULL, &doc, &len, &err), 0);
    CHECK(doc && strstr(doc, "\"who\":\"a\""));
    char rev[MIMEO_REV_MAX] = "";
    char *r = doc ? strstr(doc, "\"_rev\":\"") : NULL;
    if (r) sscanf(r + 8, "%95[^\"]", rev);
    mimeo_free(doc);
    mimeo_put_opts po = {.rev = rev};
    mimeo_put_result res;
    CHECK_EQ_INT(mimeo_doc_put(db, a, 600, "{\"who\":\"a2\"}", 12, &po, &res, &err), 0);
    mimeo_free(res.id);
    /* Listed whole and in order, each once. */
    idv want[3] = {{a, 600}, {b, 600}, {(char *)"plain", 5}};
    CHECK(all_docs_matches(db, want, 3, NULL, NULL, true, false, 0, 0));
    CHECK(all_docs_matches(db, want, 3, NULL, NULL, true, true, 0, 0));
    CHECK(all_docs_matches(db, want, 3, &want[1], NULL, true, true, 0, 0));
    mimeo_db_close(db);
    mimeo_env_close(env);
}

/* Compaction pages through more than one job's worth of documents; an append that fails
 * part way fails the call cleanly, and a later run finishes the work. */
static void test_db_compact_pages_and_faults(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_db *db = fresh_db(env, "compactme");
    mimeo_err err;
    enum { N = 2500 };
    for (int round = 0; round < 2; round++) {
        buf b;
        buf_init(&b, 0);
        buf_puts(&b, "{\"new_edits\":false,\"docs\":[");
        for (int i = 0; i < N; i++) {
            if (round == 0)
                buf_printf(&b, "%s{\"_id\":\"d%05d\",\"_rev\":\"1-%032x\",\"r\":0}",
                           i ? "," : "", i, i + 1);
            else
                buf_printf(&b, "%s{\"_id\":\"d%05d\",\"_rev\":\"2-%032x\",\"_revisions\":"
                               "{\"start\":2,\"ids\":[\"%032x\",\"%032x\"]},\"r\":1}",
                           i ? "," : "", i, i + 100001, i + 100001, i + 1);
        }
        buf_puts(&b, "]}");
        /* Round 1 extends each document: its first revision's body becomes compactable. */
        char *out = NULL;
        size_t out_len;
        CHECK_EQ_INT(mimeo_bulk_docs(db, b.data, b.len, &out, &out_len, &err), 0);
        CHECK_EQ_STR(out, "[]");
        mimeo_free(out);
        buf_destroy(&b);
    }
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK_EQ_INT(info.doc_count, N);
    uint64_t full = info.size_active;
    for (unsigned n = 1; n <= 6; n++) {
        atomic_store(&buf_fault_countdown, n);
        int rc = mimeo_db_compact(db, &err);
        atomic_store(&buf_fault_countdown, 0);
        CHECK(rc == 0 || rc == MIMEO_ENOMEM);
    }
    CHECK_EQ_INT(mimeo_db_compact(db, &err), 0);
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK(info.size_active < full * 2 / 3);
    for (int i = 0; i < N; i += 97) {
        char id[16];
        snprintf(id, sizeof id, "d%05d", i);
        char *doc = winner(db, id);
        if (!doc || !strstr(doc, "\"r\":1")) fprintf(stderr, "  %s: %.300s\n", id, doc ? doc : "(none)");
        CHECK(doc && strstr(doc, "\"r\":1"));
        mimeo_free(doc);
    }
    mimeo_db_close(db);
    mimeo_env_close(env);
}

/* Compaction while serving: readers and writers run throughout; every acknowledged write
 * is there afterwards (and after a reopen), and the file shrank. */
typedef struct live_worker {
    mimeo_db   *db;
    int         n;
    bool        writer;
    atomic_bool *stop;
    int         done;   /* writes acknowledged */
    int         errors;
    pthread_t   th;
} live_worker;

static void *live_worker_main(void *arg) {
    live_worker *w = arg;
    mimeo_err err;
    while (!atomic_load(w->stop)) {
        if (w->writer) {
            char id[32];
            snprintf(id, sizeof id, "w%d-%05d", w->n, w->done);
            if (put_json(w->db, id, "{\"live\":true}", false, &err) == 0) w->done++;
            else w->errors++;
        } else {
            char *doc = winner(w->db, "k07");
            if (!doc || !strstr(doc, "\"n\":7")) w->errors++;
            mimeo_free(doc);
        }
    }
    return NULL;
}

static void test_compact_live(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_db *big = fresh_db(env, "big");
    mimeo_db *keep = fresh_db(env, "keep");
    mimeo_err err;
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"docs\":[");
    for (int i = 0; i < 60; i++) {
        buf_printf(&b, "%s{\"_id\":\"d%03d\",\"pad\":\"", i ? "," : "", i);
        for (int k = 0; k < 2500; k++) buf_puts(&b, "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz");
        buf_puts(&b, "\"}");
    }
    buf_puts(&b, "]}");
    char *out = NULL;
    size_t out_len;
    CHECK_EQ_INT(mimeo_bulk_docs(big, b.data, b.len, &out, &out_len, &err), 0);
    mimeo_free(out);
    buf_destroy(&b);
    for (int i = 0; i < 20; i++) {
        char id[16], json[32];
        snprintf(id, sizeof id, "k%02d", i);
        snprintf(json, sizeof json, "{\"n\":%d}", i);
        CHECK_EQ_INT(put_json(keep, id, json, false, &err), 0);
    }
    mimeo_db_close(big);
    CHECK_EQ_INT(mimeo_db_delete(env, "big", &err), 0);

    atomic_bool stop = false;
    live_worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (live_worker){.db = keep, .n = i, .writer = i < 2, .stop = &stop};
        pthread_create(&w[i].th, NULL, live_worker_main, &w[i]);
    }
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    uint64_t before = 0, after = 0;
    CHECK_EQ_INT(mimeo_env_compact(env, &before, &after, &err), 0);
    nanosleep(&ts, NULL);
    atomic_store(&stop, true);
    for (int i = 0; i < 4; i++) pthread_join(w[i].th, NULL);
    fprintf(stderr, "  live compaction: %llu -> %llu bytes; writes %d+%d\n",
            (unsigned long long)before, (unsigned long long)after, w[0].done, w[1].done);
    CHECK(before > 15 * 1024 * 1024);
    CHECK(after < before / 4);
    CHECK(file_size(tmpdir) < (long long)before / 4);
    for (int i = 0; i < 4; i++) CHECK_EQ_INT(w[i].errors, 0);
    CHECK(w[0].done > 0 && w[1].done > 0);
    mimeo_db_close(keep);
    mimeo_env_close(env);

    env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    CHECK_EQ_INT(mimeo_db_open(env, "keep", &keep, &err), 0);
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(keep, &info), 0);
    CHECK_EQ_INT(info.doc_count, 20 + w[0].done + w[1].done);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < w[k].done; i++) {
            char id[32];
            snprintf(id, sizeof id, "w%d-%05d", k, i);
            char *doc = winner(keep, id);
            CHECK(doc != NULL);
            mimeo_free(doc);
        }
    }
    mimeo_db_close(keep);
    mimeo_env_close(env);
}

/* ---- revision hashes beside the writer -------------------------------------------------------- */

/* The rev of doc id as db has it (its "_rev" member), into rev. */
static void doc_rev(mimeo_db *db, const char *id, char *rev, size_t cap) {
    char *doc = winner(db, id);
    rev[0] = 0;
    const char *p = doc ? strstr(doc, "\"_rev\":\"") : NULL;
    if (p) {
        p += 8;
        size_t n = strcspn(p, "\"");
        snprintf(rev, cap, "%.*s", (int)(n < cap ? n : cap - 1), p);
    }
    mimeo_free(doc);
}

/* A large _bulk_docs has its revision hashes worked out by a helper thread while the writer
 * applies it (write.c, hashes_start); each revision must be the one the same edit gets
 * written alone (hashed before the write), for new documents, deletions, edits of a
 * given _rev, and a conflict in the middle. Repeated so a race shows. */
static void test_bulk_hashes_beside_writer(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    enum { N = 64, PAD = 2000 };
    char pad[PAD + 1];
    memset(pad, 'x', PAD);
    pad[PAD] = 0;
    for (int round = 0; round < 8; round++) {
        mimeo_db *bulk = fresh_db(env, "hb_bulk"), *one = fresh_db(env, "hb_one");
        if (!bulk || !one) break;
        mimeo_err err;
        char id[32], rev[MIMEO_REV_MAX], rev1[MIMEO_REV_MAX], body[PAD + 256];
        buf req;
        /* New documents (one of them born deleted), in one bulk and one by one. */
        buf_init(&req, 0);
        buf_puts(&req, "{\"docs\":[");
        for (int i = 0; i < N; i++) {
            snprintf(id, sizeof id, "d%02d", i);
            snprintf(body, sizeof body, "{\"n\":%d,\"r\":%d,%s\"pad\":\"%s\"}", i, round,
                     i == 7 ? "\"_deleted\":true," : "", pad);
            buf_printf(&req, "%s{\"_id\":\"%s\",%s", i ? "," : "", id, body + 1);
            CHECK_EQ_INT(put_json(one, id, body, false, &err), 0);
        }
        buf_puts(&req, "]}");
        char *out = NULL;
        size_t out_len = 0;
        CHECK_EQ_INT(mimeo_bulk_docs(bulk, req.data, req.len, &out, &out_len, &err), 0);
        mimeo_free(out);
        for (int i = 0; i < N; i++) {
            snprintf(id, sizeof id, "d%02d", i);
            if (i == 7) continue; /* deleted: no winner to read; its edit below conflicts */
            doc_rev(bulk, id, rev, sizeof rev);
            doc_rev(one, id, rev1, sizeof rev1);
            CHECK(rev[0] == '1' && rev[1] == '-');
            CHECK_EQ_STR(rev, rev1);
        }
        /* Edits naming their parent, with a stale one (d09 given a wrong rev) among them. */
        buf_reset(&req);
        buf_puts(&req, "{\"docs\":[");
        for (int i = 0; i < N; i++) {
            if (i == 7) continue;
            snprintf(id, sizeof id, "d%02d", i);
            doc_rev(one, id, rev, sizeof rev);
            if (i == 9) snprintf(rev, sizeof rev, "1-%032d", 0);
            snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"n\":%d,\"e\":1,\"pad\":\"%s\"}", rev,
                     i, pad);
            buf_printf(&req, "%s{\"_id\":\"%s\",%s", i ? "," : "", id, body + 1);
            CHECK_EQ_INT(put_json(one, id, body, false, &err), i == 9 ? MIMEO_ECONFLICT : 0);
        }
        buf_puts(&req, "]}");
        out = NULL;
        CHECK_EQ_INT(mimeo_bulk_docs(bulk, req.data, req.len, &out, &out_len, &err), 0);
        CHECK(out && strstr(out, "{\"id\":\"d09\",\"error\":\"conflict\""));
        mimeo_free(out);
        for (int i = 0; i < N; i++) {
            if (i == 7) continue;
            snprintf(id, sizeof id, "d%02d", i);
            doc_rev(bulk, id, rev, sizeof rev);
            doc_rev(one, id, rev1, sizeof rev1);
            CHECK(rev[0] == (i == 9 ? '1' : '2'));
            CHECK_EQ_STR(rev, rev1);
        }
        buf_destroy(&req);
        mimeo_db_close(bulk);
        mimeo_db_close(one);
    }
    mimeo_env_close(env);
}

/* Writes docs k<from>…k<to-1> of db in one _bulk_docs, each an edit of its current
 * revision when `edit`, with a page-splitting pad. */
static void tail_bulk(mimeo_db *db, int from, int to, int round, bool edit) {
    static char pad[1501];
    memset(pad, 'p', 1500);
    buf req;
    buf_init(&req, 0);
    buf_puts(&req, "{\"docs\":[");
    for (int i = from; i < to; i++) {
        char id[16], rev[MIMEO_REV_MAX] = "";
        snprintf(id, sizeof id, "k%03d", i);
        if (edit) doc_rev(db, id, rev, sizeof rev);
        buf_printf(&req, "%s{\"_id\":\"%s\",%s%s%s\"n\":%d,\"round\":%d,\"pad\":\"%s\"}",
                   i > from ? "," : "", id, edit ? "\"_rev\":\"" : "", rev, edit ? "\"," : "",
                   i, round, pad);
    }
    buf_puts(&req, "]}");
    char *out = NULL;
    size_t len = 0;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_bulk_docs(db, req.data, req.len, &out, &len, &err), 0);
    CHECK(out && !strstr(out, "\"error\""));
    mimeo_free(out);
    buf_destroy(&req);
}

typedef struct tail_rows {
    int      count;
    uint64_t last;
    bool     unordered;
} tail_rows;

static int tail_row(void *ctx, const char *json, size_t len) {
    tail_rows *r = ctx;
    unsigned long long seq = strtoull(json + 7, NULL, 10); /* {"seq":N */
    if (len < 8 || memcmp(json, "{\"seq\":", 7) != 0 || seq <= r->last) r->unordered = true;
    r->last = seq;
    r->count++;
    return 0;
}

/* Every doc of db reads back from round `round`, its changes feed lists each once in order,
 * and the counts agree. */
static void tail_check(mimeo_db *db, int docs, int round, uint64_t update_seq) {
    for (int i = 0; i < docs; i++) {
        char id[16], want[32];
        snprintf(id, sizeof id, "k%03d", i);
        snprintf(want, sizeof want, "\"n\":%d,\"round\":%d,", i, round);
        char *doc = winner(db, id);
        CHECK(doc && strstr(doc, want));
        mimeo_free(doc);
    }
    tail_rows r = {0};
    mimeo_changes_opts o = {0};
    uint64_t last = 0;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_changes(db, &o, tail_row, &r, &last, NULL, &err), 0);
    CHECK_EQ_INT(r.count, docs);
    CHECK(!r.unordered);
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK_EQ_INT(info.doc_count, docs);
    CHECK_EQ_INT(info.update_seq, update_seq);
    CHECK_EQ_INT(last, update_seq);
}

/* Bodies and seqs are appended at the end of their tables while the database is the newest
 * one there (write.c, tail_put), and put the usual way when another database's keys follow;
 * edits delete old seqs and compaction old bodies in between. Whatever the path, every
 * write must read back and the feed must list each document once. */
static void test_bulk_tail_appends(void) {
    /* An environment of its own: the tables hold only these two databases' keys. */
    char dir[300];
    snprintf(dir, sizeof dir, "%s/tail", tmpdir);
    CHECK_EQ_INT(mkdir(dir, 0700), 0);
    mimeo_env *env = NULL;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_env_open(dir, NULL, &env, &err), 0);
    if (!env) return;
    mimeo_db *a = fresh_db(env, "tail_a"), *b = fresh_db(env, "tail_b");
    if (a && b) {
        tail_bulk(a, 0, 100, 1, false);    /* a's keys past the (empty) tail: appends */
        tail_bulk(b, 0, 100, 1, false);    /* b's after a's: appends */
        tail_bulk(a, 100, 200, 1, false);  /* b's keys follow: plain puts */
        tail_check(a, 200, 1, 200);
        tail_bulk(a, 0, 200, 2, true);     /* edits: old seqs deleted, plain puts */
        tail_bulk(b, 0, 100, 2, true);     /* edits at the tail: deletes between appends */
        tail_check(a, 200, 2, 400);
        tail_check(b, 100, 2, 200);
        CHECK_EQ_INT(mimeo_db_compact(a, &err), 0);
        CHECK_EQ_INT(mimeo_db_compact(b, &err), 0);
        tail_bulk(b, 0, 100, 3, true);
        tail_check(a, 200, 2, 400);
        tail_check(b, 100, 3, 300);
        /* A new id twice in one batch, past the end: the second is a conflict. */
        const char *twice = "{\"docs\":[{\"_id\":\"k300\",\"v\":1},{\"_id\":\"k300\",\"v\":2}]}";
        char *out = NULL;
        size_t len = 0;
        CHECK_EQ_INT(mimeo_bulk_docs(b, twice, strlen(twice), &out, &len, &err), 0);
        CHECK(out && strstr(out, "[{\"ok\":true,\"id\":\"k300\"") &&
              strstr(out, "{\"id\":\"k300\",\"error\":\"conflict\""));
        mimeo_free(out);
        char *doc = winner(b, "k300");
        CHECK(doc && strstr(doc, "\"v\":1"));
        mimeo_free(doc);
        CHECK_EQ_INT(mimeo_doc_delete(b, "k300", 4, NULL, NULL, &err), MIMEO_ECONFLICT);
    }
    if (a) mimeo_db_close(a);
    if (b) mimeo_db_close(b);
    mimeo_env_close(env);
}

/* ---- _bulk_docs, streamed ------------------------------------------------------------------ */

typedef struct bulk_answer {
    int       rc;
    char     *out;
    mimeo_err err;
} bulk_answer;

static void wait_writer_idle(mimeo_db *db) {
    for (int i = 0; i < 1000 && !store_write_idle(db->env->store); i++) usleep(1000);
}

/* body written to s (streaming allowed) and to p (never streamed): the answers must be the
 * same, byte for byte, and s's must have been streamed exactly when want_streamed. */
static void bulk_pair(mimeo_db *s, mimeo_db *p, const char *body, size_t len, size_t max_docs,
                      bool want_streamed, const char *want) {
    bulk_answer a[2];
    mimeo_db *dbs[2] = {s, p};
    unsigned long before = db_bulk_streamed_count();
    for (int k = 0; k < 2; k++) {
        size_t saved = db_bulk_stream_min_bytes;
        if (k == 1) db_bulk_stream_min_bytes = SIZE_MAX;
        else wait_writer_idle(s);
        mimeo_bulk_docs_opts o = {.max_docs = max_docs};
        size_t out_len = 0;
        memset(&a[k].err, 0, sizeof a[k].err);
        a[k].out = NULL;
        a[k].rc = mimeo_bulk_docs_as(dbs[k], body, len, &o, &a[k].out, &out_len, &a[k].err);
        db_bulk_stream_min_bytes = saved;
        if (k == 0) CHECK_EQ_INT(db_bulk_streamed_count() - before, want_streamed ? 1 : 0);
    }
    CHECK_EQ_INT(a[0].rc, a[1].rc);
    /* what the answer must say: a per-document failure, or the request's error */
    CHECK(a[0].rc ? !strcmp(a[0].err.error, want) : a[0].out && strstr(a[0].out, want) != NULL);
    CHECK((!a[0].out && !a[1].out) || (a[0].out && a[1].out && !strcmp(a[0].out, a[1].out)));
    if (a[0].rc) {
        CHECK_EQ_STR(a[0].err.error, a[1].err.error);
        CHECK_EQ_STR(a[0].err.reason, a[1].err.reason);
    }
    mimeo_free(a[0].out);
    mimeo_free(a[1].out);
}

/* Both databases hold the same documents, revision trees and sequence. */
static void same_dbs(mimeo_db *s, mimeo_db *p, int docs) {
    mimeo_db_info is, ip;
    CHECK_EQ_INT(mimeo_db_info_get(s, &is), 0);
    CHECK_EQ_INT(mimeo_db_info_get(p, &ip), 0);
    CHECK_EQ_INT(is.doc_count, ip.doc_count);
    CHECK_EQ_INT(is.doc_del_count, ip.doc_del_count);
    CHECK_EQ_INT(is.update_seq, ip.update_seq);
    for (int i = 0; i < docs; i++) {
        char id[16];
        snprintf(id, sizeof id, "d%03d", i);
        char *a = winner(s, id), *b = winner(p, id);
        CHECK((!a && !b) || (a && b && !strcmp(a, b)));
        mimeo_free(a);
        mimeo_free(b);
    }
}

enum { SB_DOCS = 400 };
static bool sb_bad_id;   /* an id CouchDB refuses, which fails the whole request */

/* A body of SB_DOCS documents of ~1 KB: new ones (with the odd cases below) or, with revs,
 * edits of s's current revisions. head goes before "docs", tail after the array. */
static void stream_body(buf *b, mimeo_db *s, bool edits, const char *head, const char *tail) {
    static char pad[1001];
    memset(pad, 'q', 1000);
    buf_reset(b);
    buf_printf(b, "{%s\"docs\":[", head);
    for (int i = 0; i < SB_DOCS; i++) {
        char id[32], rev[MIMEO_REV_MAX + 16] = "";
        snprintf(id, sizeof id, "d%03d", i);
        if (!edits && i == 5) snprintf(id, sizeof id, "d003");          /* twice in one batch */
        if (!edits && i == 10 && sb_bad_id) snprintf(id, sizeof id, "_bad");
        if (!edits && i == 20) snprintf(id, sizeof id, "_local/l20");
        if (!edits && i == 50) snprintf(id, sizeof id, "_design/bad");  /* invalid design doc */
        if (edits) {
            char r[MIMEO_REV_MAX];
            doc_rev(s, id, r, sizeof r);
            if (i == 77) snprintf(r, sizeof r, "1-%032d", 0);             /* stale */
            if (r[0]) snprintf(rev, sizeof rev, "\"_rev\":\"%s\",", r);
        }
        buf_printf(b, "%s{\"_id\":\"%s\",%s\"n\":%d,\"e\":%d,", i ? "," : "", id, rev, i, edits);
        if (!edits && i == 30) buf_puts(b, "\"_deleted\":true,");
        if (i == 40)
            buf_puts(b, "\"_attachments\":{\"a.txt\":{\"content_type\":\"text/plain\","
                        "\"data\":\"aGVsbG8=\"}},");
        if (!edits && i == 50) buf_puts(b, "\"views\":{\"v\":{\"map\":5}},");
        buf_printf(b, "\"pad\":\"%s\"}", pad);
    }
    buf_printf(b, "]%s}", tail);
}

/* A large _bulk_docs is written while its body is still parsed (write.c, bulk_stream). Its
 * answers must be the unstreamed ones in every case: per-document failures, a parse error
 * or a flag found after the documents (the started job is discarded, nothing written), an
 * all_or_nothing failure, a document cap. */
static void test_bulk_streamed(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_db *s = fresh_db(env, "st_s"), *p = fresh_db(env, "st_p");
    buf b;
    buf_init(&b, 0);
    if (s && p) {
        sb_bad_id = true;
        stream_body(&b, s, false, "", "");
        sb_bad_id = false;
        CHECK(b.len > db_bulk_stream_min_bytes);
        bulk_pair(s, p, b.data, b.len, 0, false, "illegal_docid");
        same_dbs(s, p, SB_DOCS);
        stream_body(&b, s, false, "", "");
        bulk_pair(s, p, b.data, b.len, 0, true,
                  "{\"id\":\"d003\",\"error\":\"conflict\"");
        char *ddoc = winner(s, "_design/bad"), *att = winner(s, "d040");
        CHECK(!ddoc);   /* refused: invalid_design_doc, in the answer both ways */
        CHECK(att && strstr(att, "\"a.txt\":{\"content_type\":\"text/plain\""));
        mimeo_free(ddoc);
        mimeo_free(att);
        same_dbs(s, p, SB_DOCS);
        stream_body(&b, s, true, "", "");
        bulk_pair(s, p, b.data, b.len, 0, true, "{\"id\":\"d077\",\"error\":\"conflict\"");
        same_dbs(s, p, SB_DOCS);
        /* A syntax error near the end: the job already ran on most documents. */
        stream_body(&b, s, true, "", "");
        b.len -= 2;
        buf_puts(&b, ",{\"_id\":\"zz\",]}");
        bulk_pair(s, p, b.data, b.len, 0, false, "bad_request");
        same_dbs(s, p, SB_DOCS);
        /* A document cap smaller than the batch. */
        stream_body(&b, s, true, "", "");
        bulk_pair(s, p, b.data, b.len, 100, false, "max_bulk_docs_count_exceeded");
        same_dbs(s, p, SB_DOCS);
        /* all_or_nothing after the documents, with a stale revision among them, padded so
         * that the flag is not in the body's last bytes: found only by the parse. */
        char tail[600];
        snprintf(tail, sizeof tail, ",\"all_or_nothing\":true,\"x\":\"%0400d\"", 0);
        stream_body(&b, s, true, "", tail);
        bulk_pair(s, p, b.data, b.len, 0, false, "expectation_failed");
        same_dbs(s, p, SB_DOCS);
        /* all_or_nothing first: streamed, and the stale revision fails it all. */
        stream_body(&b, s, true, "\"all_or_nothing\":true,", "");
        bulk_pair(s, p, b.data, b.len, 0, true, "expectation_failed");
        same_dbs(s, p, SB_DOCS);
        /* new_edits:false after the documents: replicated revisions, not edits. */
        snprintf(tail, sizeof tail, ",\"new_edits\":false,\"x\":\"%0400d\"", 0);
        buf_reset(&b);
        buf_puts(&b, "{\"docs\":[");
        for (int i = 0; i < SB_DOCS; i++)
            buf_printf(&b, "%s{\"_id\":\"d%03d\",\"_rev\":\"7-%032x\",\"r\":1,\"pad\":\"%0900d\"}",
                       i ? "," : "", i, i, 0);
        buf_printf(&b, "]%s}", tail);
        bulk_pair(s, p, b.data, b.len, 0, false, "[]");
        same_dbs(s, p, SB_DOCS);
        /* new_edits:false first: streamed. */
        buf_reset(&b);
        buf_puts(&b, "{\"new_edits\":false,\"docs\":[");
        for (int i = 0; i < SB_DOCS; i++)
            buf_printf(&b, "%s{\"_id\":\"d%03d\",\"_rev\":\"9-%032x\",\"_revisions\":{\"start\":9,"
                           "\"ids\":[\"%032x\",\"%032x\"]},\"r\":2,\"pad\":\"%0900d\"}",
                       i ? "," : "", i, i, i, i + 1, 0);
        buf_puts(&b, "]}");
        bulk_pair(s, p, b.data, b.len, 0, true, "[]");
        same_dbs(s, p, SB_DOCS);
    }
    buf_destroy(&b);
    if (s) mimeo_db_close(s);
    if (p) mimeo_db_close(p);
    mimeo_env_close(env);
}

int main(void) {
    check_tmpdir_make(tmpdir, sizeof tmpdir, "write");
    RUN(test_random_without_getrandom);
    RUN(test_list_append_failure);
    RUN(test_revisions_bounded);
    RUN(test_couchdb_revisions_accepted);
    RUN(test_group_job_isolation);
    RUN(test_group_failed_job_before_full);
    RUN(test_commit_observer);
    RUN(test_data_dir_locked);
    RUN(test_compact_data_file);
    RUN(test_long_ids);
    RUN(test_long_id_slot_collision);
    RUN(test_db_compact_pages_and_faults);
    RUN(test_compact_live);
    RUN(test_bulk_hashes_beside_writer);
    RUN(test_bulk_tail_appends);
    RUN(test_bulk_streamed);
    check_tmpdir_remove(tmpdir);
    return check_report();
}
