/* Paths of the store and database layer that the main store tests do not reach: a job that
 * fails alone inside a shared write group, map growth while a long read holds a snapshot,
 * finishing a database drop that a crash interrupted, and compaction of a database bigger
 * than one compaction page, and feeds that follow writers from other threads. Some checks read the LMDB tables directly (via src/db and
 * src/store internals) to see what the public API cannot: bodies, drop marks, commits. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mimeo.h"
#include "check.h"
#include "db/db_int.h"

static char tmpdir[256];

/* A fresh data folder per case, so no case sees another's keys or map size. */
static char *case_dir(const char *name) {
    static char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tmpdir, name);
    check_tmpdir_remove(dir);
    return dir;
}

static void sleep_ms(unsigned ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- store-level jobs ------------------------------------------------------------------- */

/* A key in the meta table, written by a job or read back in a snapshot. */
typedef struct kv_job {
    store      *s;
    const char *key;
    size_t      value_len;   /* bytes of 'v' to store */
    int         fail_with;   /* after writing: return this (0: keep) */
    atomic_uint group_seen;  /* the group number the job last ran in */
    int         rc;
} kv_job;

static atomic_uint group_no, commits_seen, aborts_seen;

static void hook_begin(void *ctx) { (void)ctx; atomic_fetch_add(&group_no, 1); }
static void hook_commit(void *ctx) { (void)ctx; atomic_fetch_add(&commits_seen, 1); }
static void hook_abort(void *ctx) { (void)ctx; atomic_fetch_add(&aborts_seen, 1); }

static int job_put(MDB_txn *txn, void *arg) {
    kv_job *j = arg;
    atomic_store(&j->group_seen, atomic_load(&group_no));
    char *val = malloc(j->value_len ? j->value_len : 1);
    if (!val) return MIMEO_ENOMEM;
    memset(val, 'v', j->value_len);
    MDB_val k = {strlen(j->key), (void *)j->key}, v = {j->value_len, val};
    int rc = store_err(mdb_put(txn, store_tables_get(j->s)->meta, &k, &v, 0));
    free(val);
    return rc ? rc : j->fail_with;
}

/* Whether key is in the meta table now; its value length in *len. */
static bool key_present(store *s, const char *key, size_t *len) {
    MDB_txn *txn;
    if (store_read_begin(s, &txn)) return false;
    MDB_val k = {strlen(key), (void *)key}, v;
    bool found = mdb_get(txn, store_tables_get(s)->meta, &k, &v) == 0;
    if (found && len) *len = v.mv_size;
    store_read_end(s, txn);
    return found;
}

/* The first job of the test holds the writer until every other job has been queued. */
typedef struct block_job {
    atomic_bool started, release;
} block_job;

static int job_block(MDB_txn *txn, void *arg) {
    (void)txn;
    block_job *b = arg;
    atomic_store(&b->started, true);
    for (int i = 0; i < 10000 && !atomic_load(&b->release); i++) sleep_ms(1);
    return 0;
}

typedef struct submit_arg {
    store      *s;
    store_job_fn fn;
    void       *job;
    atomic_bool submitting;
    int         rc;
} submit_arg;

static void *submit_main(void *p) {
    submit_arg *a = p;
    atomic_store(&a->submitting, true);
    a->rc = store_write(a->s, a->fn, a->job);
    return NULL;
}

/* Four jobs queued together form one group; two of them fail on their own (a refused
 * request, a corrupt record). They must get their own errors and leave nothing behind,
 * while the two good jobs commit in that same group, not in a group of their own. */
static void test_group_job_isolation(void) {
    char reason[200];
    store *s = NULL;
    CHECK_EQ_INT(store_open(case_dir("group"), 0, &s, reason, sizeof reason), 0);
    if (!s) return;
    store_group_hooks hooks = {hook_begin, NULL, hook_commit, hook_abort, NULL};
    store_set_group_hooks(s, &hooks);

    block_job blk;
    atomic_init(&blk.started, false);
    atomic_init(&blk.release, false);
    submit_arg first = {.s = s, .fn = job_block, .job = &blk};
    pthread_t th0;
    pthread_create(&th0, NULL, submit_main, &first);
    while (!atomic_load(&blk.started)) sleep_ms(1);

    kv_job jobs[4] = {
        {.s = s, .key = "t-bad", .value_len = 10, .fail_with = MIMEO_EINVAL},
        {.s = s, .key = "t-good1", .value_len = 10},
        {.s = s, .key = "t-corrupt", .value_len = 10, .fail_with = MIMEO_ECORRUPT},
        {.s = s, .key = "t-good2", .value_len = 10},
    };
    submit_arg subs[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        atomic_init(&jobs[i].group_seen, 0);
        subs[i] = (submit_arg){.s = s, .fn = job_put, .job = &jobs[i]};
        atomic_init(&subs[i].submitting, false);
        pthread_create(&th[i], NULL, submit_main, &subs[i]);
    }
    for (int i = 0; i < 4; i++)
        while (!atomic_load(&subs[i].submitting)) sleep_ms(1);
    sleep_ms(200); /* from "submitting" to queued is one mutex; this is ample */
    unsigned commits_before = atomic_load(&commits_seen);
    atomic_store(&blk.release, true);
    pthread_join(th0, NULL);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);

    CHECK_EQ_INT(first.rc, 0);
    CHECK_EQ_INT(subs[0].rc, MIMEO_EINVAL);
    CHECK_EQ_INT(subs[1].rc, 0);
    CHECK_EQ_INT(subs[2].rc, MIMEO_ECORRUPT);
    CHECK_EQ_INT(subs[3].rc, 0);
    CHECK(!key_present(s, "t-bad", NULL));
    CHECK(!key_present(s, "t-corrupt", NULL));
    CHECK(key_present(s, "t-good1", NULL));
    CHECK(key_present(s, "t-good2", NULL));
    /* The blocking job's commit and one more: the four shared a group, re-run without the
     * failed jobs (so at least one abort), and the good ones ran in the group that committed. */
    CHECK_EQ_INT(atomic_load(&commits_seen) - commits_before, 2);
    CHECK(atomic_load(&aborts_seen) >= 1);
    CHECK_EQ_INT(atomic_load(&jobs[1].group_seen), atomic_load(&jobs[3].group_seen));
    store_commit_stats st = store_stats(s);
    CHECK_EQ_INT(st.commits, 2);
    CHECK_EQ_INT(st.jobs, 3);
    store_close(s);
}

/* ---- map growth under a long reader ------------------------------------------------------ */

typedef struct reader_arg {
    store      *s;
    atomic_bool holding;
    unsigned    hold_ms;
    size_t      len_before, len_after;
    bool        saw_new_key;
    uint64_t    released_ms;
} reader_arg;

static void *long_reader_main(void *p) {
    reader_arg *a = p;
    MDB_txn *txn;
    if (store_read_begin(a->s, &txn)) return NULL;
    MDB_dbi meta = store_tables_get(a->s)->meta;
    MDB_val k = {2, "k0"}, v;
    if (mdb_get(txn, meta, &k, &v) == 0) a->len_before = v.mv_size;
    atomic_store(&a->holding, true);
    sleep_ms(a->hold_ms);
    /* Still the same snapshot: the writes made meanwhile are invisible, the old value whole. */
    if (mdb_get(txn, meta, &k, &v) == 0) a->len_after = v.mv_size;
    MDB_val k2 = {4, "big0"};
    a->saw_new_key = mdb_get(txn, meta, &k2, &v) == 0;
    a->released_ms = check_now_ms();
    store_read_end(a->s, txn);
    return NULL;
}

/* The map starts at 1 MiB and a reader holds a snapshot for 400 ms while 8 MB are written:
 * growing the map must wait for that reader (not fail, not pull the map from under it),
 * and every write must then succeed and read back. */
static void test_map_growth_under_long_reader(void) {
    char reason[200];
    store *s = NULL;
    CHECK_EQ_INT(store_open(case_dir("grow"), 1 << 20, &s, reason, sizeof reason), 0);
    if (!s) return;
    kv_job k0 = {.s = s, .key = "k0", .value_len = 1000};
    CHECK_EQ_INT(store_write(s, job_put, &k0), 0);
    uint64_t size_before = store_file_size(s);

    reader_arg ra = {.s = s, .hold_ms = 400};
    atomic_init(&ra.holding, false);
    pthread_t rt;
    pthread_create(&rt, NULL, long_reader_main, &ra);
    while (!atomic_load(&ra.holding)) sleep_ms(1);

    enum { N = 64 };
    kv_job jobs[N];
    char keys[N][16];
    int failures = 0;
    uint64_t last_done = 0;
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "big%d", i);
        jobs[i] = (kv_job){.s = s, .key = keys[i], .value_len = 128 * 1024};
        if (store_write(s, job_put, &jobs[i])) failures++;
        last_done = check_now_ms();
    }
    pthread_join(rt, NULL);
    CHECK_EQ_INT(failures, 0);
    CHECK_EQ_INT(ra.len_before, 1000);
    CHECK_EQ_INT(ra.len_after, 1000);
    CHECK(!ra.saw_new_key);
    /* 8 MB cannot fit in 1 MiB: the map grew, which had to wait for the reader to end. */
    CHECK(store_file_size(s) > ((uint64_t)8 << 20));
    CHECK(store_file_size(s) > size_before);
    CHECK(last_done >= ra.released_ms);
    for (int i = 0; i < N; i++) {
        size_t len = 0;
        CHECK(key_present(s, keys[i], &len) && len == 128 * 1024);
    }
    store_close(s);
}

/* ---- database-level helpers ------------------------------------------------------------- */

static mimeo_env *open_env(const char *dir) {
    mimeo_env *env = NULL;
    mimeo_err err;
    if (mimeo_env_open(dir, NULL, &env, &err)) fprintf(stderr, "env open: %s\n", err.reason);
    return env;
}

static mimeo_db *create_db(mimeo_env *env, const char *name) {
    mimeo_err err;
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_create(env, name, &err), 0);
    CHECK_EQ_INT(mimeo_db_open(env, name, &db, &err), 0);
    return db;
}

/* Writes n documents "%06d" {"v":i} in one _bulk_docs. */
static void fill(mimeo_db *db, int n, const char *extra) {
    char *bulk = malloc((size_t)n * (48 + strlen(extra)) + 32);
    char *p = bulk + sprintf(bulk, "{\"docs\":[");
    for (int i = 0; i < n; i++)
        p += sprintf(p, "%s{\"_id\":\"%06d\",\"v\":%d%s}", i ? "," : "", i, i, extra);
    sprintf(p, "]}");
    char *reply;
    size_t len;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_bulk_docs(db, bulk, strlen(bulk), &reply, &len, &err), 0);
    mimeo_free(reply);
    free(bulk);
}

/* Keys of table dbi that start with dbid. */
static long count_prefix(mimeo_env *env, MDB_dbi dbi, uint64_t dbid) {
    MDB_txn *txn;
    if (store_read_begin(env->store, &txn)) return -1;
    MDB_cursor *cur;
    long n = 0;
    unsigned char prefix[8];
    be64_put(prefix, dbid);
    if (mdb_cursor_open(txn, dbi, &cur) == 0) {
        MDB_val k = {8, prefix}, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && k.mv_size >= 8 && memcmp(k.mv_data, prefix, 8) == 0) {
            n++;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
    }
    store_read_end(env->store, txn);
    return n;
}

static long count_all_keys(mimeo_env *env, uint64_t dbid) {
    const store_tables *t = store_tables_get(env->store);
    return count_prefix(env, t->docs, dbid) + count_prefix(env, t->seqs, dbid) +
           count_prefix(env, t->bodies, dbid) + count_prefix(env, t->locals, dbid);
}

static long count_drop_marks(mimeo_env *env) {
    MDB_txn *txn;
    if (store_read_begin(env->store, &txn)) return -1;
    MDB_cursor *cur;
    long n = 0;
    if (mdb_cursor_open(txn, store_tables_get(env->store)->meta, &cur) == 0) {
        MDB_val k = {4, "drop"}, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && k.mv_size >= 4 && memcmp(k.mv_data, "drop", 4) == 0) {
            n++;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
    }
    store_read_end(env->store, txn);
    return n;
}

/* ---- an interrupted drop ---------------------------------------------------------------- */

/* What a crash leaves when it strikes while a deletion is dropping keys: the database record
 * gone, the "drop" · dbid mark in meta, and the first keys of each table already removed. */
typedef struct crash_job {
    store   *s;
    const char *name;
    uint64_t dbid;
} crash_job;

static int job_half_drop(MDB_txn *txn, void *arg) {
    crash_job *j = arg;
    const store_tables *t = store_tables_get(j->s);
    MDB_val k = {strlen(j->name), (void *)j->name};
    int rc = store_err(mdb_del(txn, t->dbs, &k, NULL));
    if (rc) return rc;
    unsigned char mark[12];
    memcpy(mark, "drop", 4);
    be64_put(mark + 4, j->dbid);
    MDB_val dk = {sizeof mark, mark}, dv = {0, ""};
    rc = store_err(mdb_put(txn, t->meta, &dk, &dv, 0));
    size_t budget = 5000;
    if (!rc) rc = store_delete_prefix(txn, t->docs, j->dbid, &budget);
    return rc < 0 ? rc : 0;
}

/* A database of 12,000 documents (36,000 keys: more than one drop chunk) whose deletion was
 * cut short by a crash is finished when the environment opens again: no key of it is left,
 * no mark, and the database next to it reads back whole. */
static void test_interrupted_drop_recovers(void) {
    const char *dir = case_dir("drop");
    mimeo_env *env = open_env(dir);
    CHECK(env != NULL);
    if (!env) return;
    enum { N = 12000 };
    mimeo_db *doomed = create_db(env, "doomed");
    mimeo_db *keep = create_db(env, "keep");
    fill(doomed, N, "");
    fill(keep, 100, "");
    mimeo_put_result res;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_local_put(doomed, "cp", 2, "{\"x\":1}", 7, NULL, &res, &err), 0);
    mimeo_free(res.id);
    uint64_t dbid = doomed->meta.dbid, keep_id = keep->meta.dbid;
    CHECK_EQ_INT(count_all_keys(env, dbid), 3L * N + 1);
    mimeo_db_close(doomed);
    mimeo_db_close(keep);

    crash_job cj = {env->store, "doomed", dbid};
    CHECK_EQ_INT(store_write(env->store, job_half_drop, &cj), 0);
    CHECK_EQ_INT(count_drop_marks(env), 1);
    CHECK_EQ_INT(count_all_keys(env, dbid), 3L * N + 1 - 5000);
    mimeo_env_close(env);

    env = open_env(dir);
    CHECK(env != NULL);
    if (!env) return;
    CHECK_EQ_INT(count_drop_marks(env), 0);
    CHECK_EQ_INT(count_all_keys(env, dbid), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, "doomed", &db, &err), MIMEO_ENOTFOUND);
    CHECK_EQ_INT(count_all_keys(env, keep_id), 3L * 100);
    CHECK_EQ_INT(mimeo_db_open(env, "keep", &keep, &err), 0);
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(keep, &info), 0);
    CHECK_EQ_INT(info.doc_count, 100);
    char *json = NULL;
    size_t len;
    CHECK_EQ_INT(mimeo_doc_get(keep, "000099", 6, NULL, &json, &len, &err), 0);
    CHECK(json && strstr(json, "\"v\":99"));
    mimeo_free(json);
    mimeo_db_close(keep);
    /* A database created under the same name starts empty. */
    db = create_db(env, "doomed");
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK_EQ_INT(info.doc_count, 0);
    mimeo_db_close(db);
    mimeo_env_close(env);
}

/* ---- compaction past one page ----------------------------------------------------------- */

/* 2,500 documents with two revisions each: compaction (1,000 documents per job) drops the
 * body of every first revision, down to the last document, keeps every current body, and
 * leaves the writer free between pages (several commits, not one). */
static void test_compact_many_documents(void) {
    mimeo_env *env = open_env(case_dir("compact"));
    CHECK(env != NULL);
    if (!env) return;
    enum { N = 2500 };
    mimeo_db *db = create_db(env, "c");
    fill(db, N, "");
    /* A second revision of every document. */
    mimeo_err err;
    char (*revs)[MIMEO_REV_MAX] = calloc(N, sizeof *revs);
    for (int i = 0; i < N; i++) {
        char id[16], *json = NULL;
        size_t len;
        snprintf(id, sizeof id, "%06d", i);
        if (mimeo_doc_get(db, id, 6, NULL, &json, &len, &err) == 0) {
            const char *r = strstr(json, "\"_rev\":\"");
            if (r) sscanf(r + 8, "%39[^\"]", revs[i]);
        }
        mimeo_free(json);
    }
    char *bulk = malloc((size_t)N * 120 + 32);
    char *p = bulk + sprintf(bulk, "{\"docs\":[");
    for (int i = 0; i < N; i++)
        p += sprintf(p, "%s{\"_id\":\"%06d\",\"_rev\":\"%s\",\"v\":%d,\"second\":true}",
                     i ? "," : "", i, revs[i], i);
    sprintf(p, "]}");
    char *reply;
    size_t len;
    CHECK_EQ_INT(mimeo_bulk_docs(db, bulk, strlen(bulk), &reply, &len, &err), 0);
    CHECK(reply && !strstr(reply, "\"error\""));
    mimeo_free(reply);
    free(bulk);

    const store_tables *t = store_tables_get(env->store);
    uint64_t dbid = db->meta.dbid;
    CHECK_EQ_INT(count_prefix(env, t->bodies, dbid), 2L * N);
    store_commit_stats before = store_stats(env->store);
    CHECK_EQ_INT(mimeo_db_compact(db, &err), 0);
    store_commit_stats after = store_stats(env->store);
    CHECK_EQ_INT(count_prefix(env, t->bodies, dbid), N);
    CHECK(after.commits - before.commits >= 3);

    const int probe[] = {0, 999, 1000, 1001, 2000, N - 1};
    for (size_t i = 0; i < sizeof probe / sizeof *probe; i++) {
        char id[16], *json = NULL;
        snprintf(id, sizeof id, "%06d", probe[i]);
        CHECK_EQ_INT(mimeo_doc_get(db, id, 6, NULL, &json, &len, &err), 0);
        CHECK(json && strstr(json, "\"second\":true") && strstr(json, "\"_rev\":\"2-"));
        mimeo_free(json);
        /* The first revision is still known, without its body. */
        mimeo_get_opts o = {0};
        o.rev = revs[probe[i]];
        json = NULL;
        int rc = mimeo_doc_get(db, id, 6, &o, &json, &len, &err);
        CHECK(rc != 0 || (json && !strstr(json, "\"v\":")));
        mimeo_free(json);
    }
    free(revs);
    mimeo_db_close(db);
    mimeo_env_close(env);
}

/* ---- feeds following writers ------------------------------------------------------------ */

enum { LIVE_WRITERS = 3, LIVE_DOCS = 200, LIVE_FOLLOWERS = 2 };

typedef struct live_arg {
    mimeo_db *db;
    int       n;           /* writer number */
    int       failures;
    uint64_t  rows, last;  /* followers: rows seen, last seq */
} live_arg;

static void *live_writer(void *p) {
    live_arg *a = p;
    for (int i = 0; i < LIVE_DOCS; i++) {
        char id[32];
        snprintf(id, sizeof id, "w%d-%04d", a->n, i);
        mimeo_put_result res;
        mimeo_err err;
        if (mimeo_doc_put(a->db, id, strlen(id), "{\"x\":1}", 7, NULL, &res, &err)) a->failures++;
        else mimeo_free(res.id);
    }
    return NULL;
}

static int live_row(void *ctx, const char *json, size_t len) {
    (void)json;
    (void)len;
    ((live_arg *)ctx)->rows++;
    return 0;
}

/* Reads the feed from where it left off, then waits for more, until every write is seen. */
static void *live_follower(void *p) {
    live_arg *a = p;
    const uint64_t total = LIVE_WRITERS * LIVE_DOCS;
    uint64_t deadline = check_now_ms() + 60000;
    while (a->last < total && check_now_ms() < deadline) {
        mimeo_changes_opts o = {0};
        o.since = a->last;
        uint64_t last = 0;
        mimeo_err err;
        if (mimeo_changes(a->db, &o, live_row, a, &last, NULL, &err)) {
            a->failures++;
            break;
        }
        if (last < a->last) a->failures++; /* a feed never goes back */
        a->last = last;
        if (a->last < total) mimeo_changes_wait(a->db, a->last, 100);
    }
    return NULL;
}

/* Three writers and two feed followers on one database at once (the threads TSan watches in
 * the unit tests): each follower sees every change exactly once, in one pass from 0 to the
 * end, and the counts agree with the writes. */
static void test_feeds_follow_writers(void) {
    mimeo_env *env = open_env(case_dir("live"));
    CHECK(env != NULL);
    if (!env) return;
    mimeo_db *db = create_db(env, "live");
    pthread_t th[LIVE_WRITERS + LIVE_FOLLOWERS];
    live_arg args[LIVE_WRITERS + LIVE_FOLLOWERS];
    for (int i = 0; i < LIVE_WRITERS + LIVE_FOLLOWERS; i++) {
        args[i] = (live_arg){.db = db, .n = i};
        pthread_create(&th[i], NULL, i < LIVE_WRITERS ? live_writer : live_follower, &args[i]);
    }
    for (int i = 0; i < LIVE_WRITERS + LIVE_FOLLOWERS; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(args[i].failures, 0);
    }
    for (int i = LIVE_WRITERS; i < LIVE_WRITERS + LIVE_FOLLOWERS; i++) {
        CHECK_EQ_INT(args[i].last, LIVE_WRITERS * LIVE_DOCS);
        CHECK_EQ_INT(args[i].rows, LIVE_WRITERS * LIVE_DOCS);
    }
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK_EQ_INT(info.doc_count, LIVE_WRITERS * LIVE_DOCS);
    CHECK_EQ_INT(info.update_seq, LIVE_WRITERS * LIVE_DOCS);
    mimeo_db_close(db);
    mimeo_env_close(env);
}

int main(void) {
    check_tmpdir_make(tmpdir, sizeof tmpdir, "paths");
    RUN(test_group_job_isolation);
    RUN(test_map_growth_under_long_reader);
    RUN(test_interrupted_drop_recovers);
    RUN(test_compact_many_documents);
    RUN(test_feeds_follow_writers);
    check_tmpdir_remove(tmpdir);
    return check_report();
}
