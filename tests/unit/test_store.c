/* The storage and database layer through the public API: durability across reopen, the
 * revision rules of writes, the changes feed, _all_docs, local documents, map growth, many
 * databases, and group commit from many threads. */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mimeo.h"
#include "check.h"
#include "db/db_int.h"

static char tmpdir[256];

static mimeo_env *open_env(size_t map) {
    mimeo_options o = {0};
    o.initial_map_size = map;
    mimeo_env *env = NULL;
    mimeo_err err;
    int rc = mimeo_env_open(tmpdir, &o, &env, &err);
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

static int put(mimeo_db *db, const char *id, const char *json, char rev[MIMEO_REV_MAX]) {
    mimeo_put_result res;
    mimeo_err err;
    int rc = mimeo_doc_put(db, id, id ? strlen(id) : 0, json, strlen(json), NULL, &res, &err);
    if (rc == 0) {
        if (rev) strcpy(rev, res.rev);
        mimeo_free(res.id);
    }
    return rc;
}

static char *get(mimeo_db *db, const char *id, const mimeo_get_opts *o, int *rc) {
    char *json = NULL;
    size_t len;
    mimeo_err err;
    *rc = mimeo_doc_get(db, id, strlen(id), o, &json, &len, &err);
    return json;
}

static void test_put_get_update_delete(void) {
    mimeo_env *env = open_env(0);
    CHECK(env != NULL);
    if (!env) return;
    mimeo_db *db = fresh_db(env, "crud");
    char rev1[MIMEO_REV_MAX], rev2[MIMEO_REV_MAX], rev3[MIMEO_REV_MAX];
    CHECK_EQ_INT(put(db, "a", "{\"v\":1}", rev1), 0);
    CHECK(strncmp(rev1, "1-", 2) == 0 && strlen(rev1) == 34);
    /* Without a rev, a live doc conflicts. */
    CHECK_EQ_INT(put(db, "a", "{\"v\":2}", NULL), MIMEO_ECONFLICT);
    char body[200];
    snprintf(body, sizeof body, "{\"_rev\":\"%s\",\"v\":2}", rev1);
    CHECK_EQ_INT(put(db, "a", body, rev2), 0);
    CHECK(strncmp(rev2, "2-", 2) == 0);
    /* A stale rev conflicts. */
    CHECK_EQ_INT(put(db, "a", body, NULL), MIMEO_ECONFLICT);
    int rc;
    char *json = get(db, "a", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    char want[300];
    snprintf(want, sizeof want, "{\"_id\":\"a\",\"_rev\":\"%s\",\"v\":2}", rev2);
    CHECK_EQ_STR(json, want);
    mimeo_free(json);
    /* The same edit from the same parent gives the same revision id anywhere. */
    mimeo_db *db2 = fresh_db(env, "crud2");
    char other[MIMEO_REV_MAX];
    CHECK_EQ_INT(put(db2, "a", "{\"v\":1}", other), 0);
    CHECK_EQ_STR(other, rev1);
    mimeo_db_close(db2);

    mimeo_put_result res;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_doc_delete(db, "a", 1, rev2, &res, &err), 0);
    strcpy(rev3, res.rev);
    mimeo_free(res.id);
    CHECK(strncmp(rev3, "3-", 2) == 0);
    json = get(db, "a", NULL, &rc);
    CHECK_EQ_INT(rc, MIMEO_EDELETED);
    mimeo_get_opts o = {0};
    o.rev = rev3;
    json = get(db, "a", &o, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(json && strstr(json, "\"_deleted\":true"));
    mimeo_free(json);
    /* Deleting what is already deleted conflicts. */
    CHECK_EQ_INT(put(db, "a", "{\"_deleted\":true}", NULL), MIMEO_ECONFLICT);
    /* Recreating continues from the tombstone. */
    char rev4[MIMEO_REV_MAX];
    CHECK_EQ_INT(put(db, "a", "{\"v\":4}", rev4), 0);
    CHECK(strncmp(rev4, "4-", 2) == 0);

    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK_EQ_INT(info.doc_count, 1);
    CHECK_EQ_INT(info.doc_del_count, 0);
    CHECK_EQ_INT(info.update_seq, 4);
    mimeo_db_close(db);
    mimeo_env_close(env);

    /* Everything survives a reopen. */
    env = open_env(0);
    CHECK_EQ_INT(mimeo_db_open(env, "crud", &db, &err), 0);
    json = get(db, "a", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(json && strstr(json, rev4));
    mimeo_free(json);
    CHECK_EQ_INT(mimeo_db_info_get(db, &info), 0);
    CHECK_EQ_INT(info.update_seq, 4);
    mimeo_db_close(db);
    mimeo_env_close(env);
}

static int collect(void *ctx, const char *json, size_t len) {
    char *out = ctx;
    strncat(out, json, len);
    strcat(out, "\n");
    return 0;
}

static void test_replicated_writes_and_conflicts(void) {
    mimeo_env *env = open_env(0);
    mimeo_db *db = fresh_db(env, "repl");
    mimeo_err err;
    const char *bulk =
        "{\"new_edits\":false,\"docs\":["
        "{\"_id\":\"d\",\"_rev\":\"3-c3\",\"v\":3,\"_revisions\":{\"start\":3,\"ids\":[\"c3\",\"b2\",\"a1\"]}},"
        "{\"_id\":\"d\",\"_rev\":\"3-b9\",\"v\":9,\"_revisions\":{\"start\":3,\"ids\":[\"b9\",\"b2\",\"a1\"]}},"
        "{\"_id\":\"d\",\"_rev\":\"3-b9\",\"v\":9,\"_revisions\":{\"start\":3,\"ids\":[\"b9\",\"b2\",\"a1\"]}}"
        "]}";
    char *reply;
    size_t len;
    CHECK_EQ_INT(mimeo_bulk_docs(db, bulk, strlen(bulk), &reply, &len, &err), 0);
    CHECK_EQ_STR(reply, "[]");
    mimeo_free(reply);
    mimeo_get_opts o = {0};
    o.conflicts = true;
    o.revs = true;
    int rc;
    char *json = get(db, "d", &o, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_STR(json, "{\"_id\":\"d\",\"_rev\":\"3-c3\",\"v\":3,\"_revisions\":{\"start\":3,\"ids\":[\"c3\",\"b2\",\"a1\"]},\"_conflicts\":[\"3-b9\"]}");
    mimeo_free(json);

    /* Deleting the winner makes the other branch win (live beats deleted). */
    mimeo_put_result res;
    CHECK_EQ_INT(mimeo_doc_delete(db, "d", 1, "3-c3", &res, &err), 0);
    mimeo_free(res.id);
    o.deleted_conflicts = true;
    json = get(db, "d", &o, &rc);
    CHECK(json && strstr(json, "\"_rev\":\"3-b9\""));
    CHECK(json && strstr(json, "\"_deleted_conflicts\":[\"4-"));
    mimeo_free(json);

    /* revs_diff: a known rev is not missing; an unknown one is, with possible ancestors. */
    const char *diff = "{\"d\":[\"3-b9\",\"5-zz\"],\"nope\":[\"1-x\"]}";
    CHECK_EQ_INT(mimeo_revs_diff(db, diff, strlen(diff), &reply, &len, &err), 0);
    CHECK(reply && strstr(reply, "\"d\":{\"missing\":[\"5-zz\"],\"possible_ancestors\":["));
    CHECK(reply && strstr(reply, "\"nope\":{\"missing\":[\"1-x\"]}"));
    mimeo_free(reply);

    /* bulk_get with latest maps an old rev to the leaves under it. */
    const char *bg = "{\"docs\":[{\"id\":\"d\",\"rev\":\"2-b2\"},{\"id\":\"zz\",\"rev\":\"1-a\"}]}";
    mimeo_get_opts lo = {0};
    lo.latest = true;
    CHECK_EQ_INT(mimeo_bulk_get(db, bg, strlen(bg), &lo, &reply, &len, &err), 0);
    CHECK(reply && strstr(reply, "\"_rev\":\"3-b9\""));
    CHECK(reply && strstr(reply, "{\"error\":{\"id\":\"zz\",\"rev\":\"1-a\",\"error\":\"not_found\",\"reason\":\"missing\"}}"));
    mimeo_free(reply);

    /* changes: one row per doc, at its latest seq; all_docs style lists every leaf. */
    char rows[4096] = "";
    mimeo_changes_opts co = {0};
    co.all_docs_style = true;
    uint64_t last;
    CHECK_EQ_INT(mimeo_changes(db, &co, collect, rows, &last, NULL, &err), 0);
    CHECK(strstr(rows, "\"id\":\"d\",\"changes\":[{\"rev\":\"3-b9\"},{\"rev\":\"4-"));
    CHECK(strchr(rows, '\n') == strrchr(rows, '\n')); /* exactly one row */
    mimeo_db_info info;
    mimeo_db_info_get(db, &info);
    CHECK_EQ_INT(last, info.update_seq);
    mimeo_db_close(db);
    mimeo_env_close(env);
}

static void test_all_docs_and_local(void) {
    mimeo_env *env = open_env(0);
    mimeo_db *db = fresh_db(env, "alldocs");
    mimeo_err err;
    const char *ids[] = {"b", "a", "c", "_design/x", "d"};
    for (size_t i = 0; i < 5; i++) CHECK_EQ_INT(put(db, ids[i], "{}", NULL), 0);
    char rows[4096] = "";
    mimeo_all_docs_opts o = {0};
    o.inclusive_end = true;
    CHECK_EQ_INT(mimeo_all_docs(db, &o, collect, rows, &err), 0);
    /* Raw byte order: "_design/x" sorts before lowercase letters. */
    const char *pa = strstr(rows, "\"id\":\"_design/x\""), *pb = strstr(rows, "\"id\":\"a\""),
               *pd = strstr(rows, "\"id\":\"d\"");
    CHECK(pa && pb && pd && pa < pb && pb < pd);
    rows[0] = 0;
    o.startkey = "b"; o.startkey_len = 1;
    o.endkey = "c"; o.endkey_len = 1;
    o.inclusive_end = false;
    CHECK_EQ_INT(mimeo_all_docs(db, &o, collect, rows, &err), 0);
    CHECK(strstr(rows, "\"id\":\"b\"") && !strstr(rows, "\"id\":\"c\""));
    rows[0] = 0;
    mimeo_all_docs_opts od = {0};
    od.descending = true;
    od.inclusive_end = true;
    od.limit = 2;
    CHECK_EQ_INT(mimeo_all_docs(db, &od, collect, rows, &err), 0);
    CHECK(strstr(rows, "\"id\":\"d\"") && strstr(rows, "\"id\":\"c\"") && !strstr(rows, "\"id\":\"b\""));

    mimeo_put_result res;
    const char *cp = "{\"last_seq\":5,\"history\":[1,2.50,\"x\"]}";
    CHECK_EQ_INT(mimeo_local_put(db, "cp", 2, cp, strlen(cp), NULL, &res, &err), 0);
    CHECK_EQ_STR(res.rev, "0-1");
    CHECK_EQ_STR(res.id, "_local/cp");
    mimeo_free(res.id);
    char *json;
    size_t len;
    CHECK_EQ_INT(mimeo_local_get(db, "cp", 2, &json, &len, &err), 0);
    CHECK_EQ_STR(json, "{\"_id\":\"_local/cp\",\"_rev\":\"0-1\",\"last_seq\":5,\"history\":[1,2.50,\"x\"]}");
    mimeo_free(json);
    /* A stale rev conflicts; the right one wins. */
    CHECK_EQ_INT(mimeo_local_put(db, "cp", 2, cp, strlen(cp), "0-7", &res, &err), MIMEO_ECONFLICT);
    CHECK_EQ_INT(mimeo_local_put(db, "cp", 2, cp, strlen(cp), "0-1", &res, &err), 0);
    CHECK_EQ_STR(res.rev, "0-2");
    mimeo_free(res.id);
    /* Local docs stay out of the feeds. */
    rows[0] = 0;
    uint64_t last;
    mimeo_changes_opts co = {0};
    CHECK_EQ_INT(mimeo_changes(db, &co, collect, rows, &last, NULL, &err), 0);
    CHECK(!strstr(rows, "_local"));
    mimeo_db_close(db);
    mimeo_env_close(env);
}

static int count_rows(void *ctx, const char *json, size_t len) {
    (void)json;
    (void)len;
    (*(int *)ctx)++;
    return 0;
}

/* A database followed by another in the shared tables: its feed, read in either direction
 * and counted for `pending`, must never stray into the next database's keys. */
static void test_changes_pending_and_descending(void) {
    mimeo_env *env = open_env(0);
    mimeo_db *a = fresh_db(env, "feed-a");
    mimeo_db *b = fresh_db(env, "feed-b");
    mimeo_err err;
    enum { N = 5000 };
    char *bulk = malloc(N * 32 + 32);
    char *p = bulk + sprintf(bulk, "{\"docs\":[");
    for (int i = 0; i < N; i++) p += sprintf(p, "%s{\"_id\":\"%05d\"}", i ? "," : "", i);
    sprintf(p, "]}");
    char *reply;
    size_t len;
    CHECK_EQ_INT(mimeo_bulk_docs(a, bulk, strlen(bulk), &reply, &len, &err), 0);
    mimeo_free(reply);
    CHECK_EQ_INT(put(b, "other", "{}", NULL), 0);
    free(bulk);

    int rows = 0;
    uint64_t last, pending;
    mimeo_changes_opts o = {0};
    o.limit = 10;
    CHECK_EQ_INT(mimeo_changes(a, &o, count_rows, &rows, &last, &pending, &err), 0);
    CHECK_EQ_INT(rows, 10);
    CHECK_EQ_INT(last, 10);
    CHECK_EQ_INT(pending, N - 10);

    mimeo_changes_opts z = {0};
    z.limit_zero = true;
    z.since = 4990;
    rows = 0;
    CHECK_EQ_INT(mimeo_changes(a, &z, count_rows, &rows, &last, &pending, &err), 0);
    CHECK_EQ_INT(rows, 0);
    CHECK_EQ_INT(pending, 10);

    char text[4096] = "";
    mimeo_changes_opts d = {0};
    d.descending = true;
    d.limit = 2;
    CHECK_EQ_INT(mimeo_changes(a, &d, collect, text, &last, NULL, &err), 0);
    CHECK(strstr(text, "\"id\":\"04999\"") && strstr(text, "\"id\":\"04998\"") && !strstr(text, "other"));
    /* Descending past a page boundary reads every row once. */
    mimeo_changes_opts all = {0};
    all.descending = true;
    rows = 0;
    CHECK_EQ_INT(mimeo_changes(a, &all, count_rows, &rows, &last, NULL, &err), 0);
    CHECK_EQ_INT(rows, N);

    /* Written twice, a document leaves a gap in the seqs (N + 1 is gone, N + 2 holds it):
     * the count past the gap is exact, not update_seq minus the position. */
    char rev[MIMEO_REV_MAX], upd[128];
    CHECK_EQ_INT(put(a, "zz", "{}", rev), 0);
    snprintf(upd, sizeof upd, "{\"_rev\":\"%s\",\"v\":2}", rev);
    CHECK_EQ_INT(put(a, "zz", upd, NULL), 0);
    z.since = N - 5;
    CHECK_EQ_INT(mimeo_changes(a, &z, count_rows, &rows, &last, &pending, &err), 0);
    CHECK_EQ_INT(pending, 6);
    mimeo_changes_opts g = {0};
    g.since = N - 5;
    g.limit = 2;
    rows = 0;
    CHECK_EQ_INT(mimeo_changes(a, &g, count_rows, &rows, &last, &pending, &err), 0);
    CHECK_EQ_INT(rows, 2);
    CHECK_EQ_INT(last, N - 3);
    CHECK_EQ_INT(pending, 4);
    /* Without gaps (b: one document) the count needs no scan and agrees. */
    z.since = 0;
    CHECK_EQ_INT(mimeo_changes(b, &z, count_rows, &rows, &last, &pending, &err), 0);
    CHECK_EQ_INT(pending, 1);
    mimeo_db_close(a);
    mimeo_db_close(b);
    mimeo_env_close(env);
}

/* Drop marks ("drop" · dbid) left in the meta table: unfinished database deletions. */
static int count_drop_marks(mimeo_env *env) {
    MDB_txn *txn;
    if (store_read_begin(env->store, &txn)) return -1;
    MDB_cursor *cur;
    int n = 0;
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

/* A database bigger than one drop chunk is deleted in several jobs; a new database of the
 * same name starts empty, its neighbour keeps every document, and after a reopen both read
 * back as they were, with no drop left unfinished. */
static void test_delete_big_database(void) {
    mimeo_env *env = open_env(0);
    mimeo_db *keep = fresh_db(env, "keep");
    mimeo_db *db = fresh_db(env, "big");
    mimeo_err err;
    enum { N = 12000 };
    char *bulk = malloc(N * 40 + 32);
    char *p = bulk + sprintf(bulk, "{\"docs\":[");
    for (int i = 0; i < N; i++) p += sprintf(p, "%s{\"_id\":\"%06d\",\"v\":%d}", i ? "," : "", i, i);
    sprintf(p, "]}");
    char *reply;
    size_t len;
    CHECK_EQ_INT(mimeo_bulk_docs(db, bulk, strlen(bulk), &reply, &len, &err), 0);
    mimeo_free(reply);
    CHECK_EQ_INT(mimeo_bulk_docs(keep, bulk, strlen(bulk), &reply, &len, &err), 0);
    mimeo_free(reply);
    free(bulk);
    mimeo_db_close(db);
    CHECK_EQ_INT(mimeo_db_delete(env, "big", &err), 0);
    CHECK_EQ_INT(count_drop_marks(env), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "big", &db, &err), MIMEO_ENOTFOUND);
    CHECK_EQ_INT(mimeo_db_create(env, "big", &err), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "big", &db, &err), 0);
    int rows = 0;
    mimeo_all_docs_opts o = {0};
    o.inclusive_end = true;
    CHECK_EQ_INT(mimeo_all_docs(db, &o, count_rows, &rows, &err), 0);
    CHECK_EQ_INT(rows, 0);
    uint64_t last;
    mimeo_changes_opts co = {0};
    CHECK_EQ_INT(mimeo_changes(db, &co, count_rows, &rows, &last, NULL, &err), 0);
    CHECK_EQ_INT(rows, 0);
    CHECK_EQ_INT(put(db, "000001", "{\"new\":true}", NULL), 0);
    mimeo_db_close(db);
    mimeo_db_close(keep);
    mimeo_env_close(env);

    /* Reopening finds no unfinished drop, and reads back what each database holds. */
    env = open_env(0);
    CHECK(env != NULL);
    if (!env) return;
    CHECK_EQ_INT(count_drop_marks(env), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "big", &db, &err), 0);
    int rc;
    char *json = get(db, "000001", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(json && strstr(json, "\"new\":true") && !strstr(json, "\"v\""));
    mimeo_free(json);
    rows = 0;
    CHECK_EQ_INT(mimeo_all_docs(db, &o, count_rows, &rows, &err), 0);
    CHECK_EQ_INT(rows, 1);
    mimeo_db_close(db);
    CHECK_EQ_INT(mimeo_db_open(env, "keep", &keep, &err), 0);
    mimeo_db_info info;
    CHECK_EQ_INT(mimeo_db_info_get(keep, &info), 0);
    CHECK_EQ_INT(info.doc_count, N);
    rows = 0;
    CHECK_EQ_INT(mimeo_all_docs(keep, &o, count_rows, &rows, &err), 0);
    CHECK_EQ_INT(rows, N);
    const int probe[] = {0, 1, N / 2, N - 1};
    for (size_t i = 0; i < sizeof probe / sizeof *probe; i++) {
        char id[16], want[32];
        snprintf(id, sizeof id, "%06d", probe[i]);
        snprintf(want, sizeof want, "\"v\":%d}", probe[i]);
        json = get(keep, id, NULL, &rc);
        CHECK_EQ_INT(rc, 0);
        CHECK(json && strstr(json, want));
        mimeo_free(json);
    }
    mimeo_db_close(keep);
    mimeo_env_close(env);
}

/* The map starts at 1 MiB; writing ~20 MB must grow it without a single error. */
static void test_map_grows(void) {
    mimeo_env *env = open_env(1 << 20);
    mimeo_db *db = fresh_db(env, "grow");
    size_t body_len = 100 * 1024;
    char *bulk = malloc(body_len * 2 + 256);
    mimeo_err err;
    int failures = 0;
    for (int batch = 0; batch < 20; batch++) {
        char *p = bulk;
        p += sprintf(p, "{\"docs\":[");
        for (int i = 0; i < 10; i++) {
            p += sprintf(p, "%s{\"blob\":\"", i ? "," : "");
            memset(p, 'x', body_len / 10);
            p += body_len / 10;
            p += sprintf(p, "\"}");
        }
        p += sprintf(p, "]}");
        char *reply;
        size_t len;
        /* 10 docs of 10 KB per batch is small; make each doc bigger by repeating batches. */
        for (int r = 0; r < 10; r++) {
            int rc = mimeo_bulk_docs(db, bulk, (size_t)(p - bulk), &reply, &len, &err);
            if (rc) failures++;
            else mimeo_free(reply);
        }
    }
    CHECK_EQ_INT(failures, 0);
    mimeo_db_info info;
    mimeo_db_info_get(db, &info);
    CHECK_EQ_INT(info.doc_count, 2000);
    free(bulk);
    mimeo_db_close(db);
    mimeo_env_close(env);
}

typedef struct many_arg {
    mimeo_env *env;
    int        from, to;
    int        failures;
} many_arg;

static void *many_dbs_worker(void *p) {
    many_arg *a = p;
    mimeo_err err;
    for (int i = a->from; i < a->to; i++) {
        char name[32];
        snprintf(name, sizeof name, "db%05d", i);
        mimeo_db *db;
        if (mimeo_db_create(a->env, name, &err) || mimeo_db_open(a->env, name, &db, &err)) {
            a->failures++;
            continue;
        }
        if (put(db, "doc", "{\"n\":1}", NULL)) a->failures++;
        mimeo_db_close(db);
    }
    return NULL;
}

static int fcntl_ok(int fd) { return fcntl(fd, F_GETFD) != -1; }

static int count_names(void *ctx, const char *name, size_t len) {
    (void)name;
    (void)len;
    (*(int *)ctx)++;
    return 0;
}

/* 10,000 databases: one environment, so open files stay bounded; 16 writer threads show
 * that group commit shares fsyncs between requests: the store counts its durable commits
 * (one fdatasync each) and the jobs they carried. */
static void test_many_databases(void) {
    mimeo_env *env = open_env(0);
    enum { N = 10000, T = 16 };
    store_commit_stats before = store_stats(env->store);
    pthread_t th[T];
    many_arg args[T];
    for (int t = 0; t < T; t++) {
        args[t] = (many_arg){env, t * N / T, (t + 1) * N / T, 0};
        pthread_create(&th[t], NULL, many_dbs_worker, &args[t]);
    }
    int failures = 0;
    for (int t = 0; t < T; t++) {
        pthread_join(th[t], NULL);
        failures += args[t].failures;
    }
    CHECK_EQ_INT(failures, 0);
    store_commit_stats after = store_stats(env->store);
    uint64_t jobs = after.jobs - before.jobs, commits = after.commits - before.commits;
    if (getenv("CHECK_VERBOSE"))
        fprintf(stderr, "many databases: %llu writes in %llu commits\n",
                (unsigned long long)jobs, (unsigned long long)commits);
    /* Each database costs a create and a put; with 16 writers waiting at once, a commit
     * must carry several of them (one alone would mean no fsync was shared). */
    CHECK(jobs >= 2 * (uint64_t)N);
    CHECK(commits > 0 && jobs >= 3 * commits);
    int count = 0;
    mimeo_db_list(env, "db", count_names, &count);
    CHECK(count >= N);
    /* The process holds a handful of descriptors, not one per database. */
    int fds = 0;
    for (int fd = 0; fd < 4096; fd++)
        if (fcntl_ok(fd)) fds++;
    CHECK(fds < 64);
    mimeo_env_close(env);
}

/* ---- writes that do not wait (mimeo_doc_put_async) ------------------------------------------ */

typedef struct async_seen {
    pthread_mutex_t lock;
    pthread_cond_t  cond;
    int             calls, ok;
    int             last_rc;
    char            last_error[MIMEO_ERR_NAME_MAX];
    char            rev[MIMEO_REV_MAX];
    bool            on_caller;   /* some completion ran on the submitting thread */
    pthread_t       caller;
} async_seen;

static void async_done(void *arg, int rc, const mimeo_put_result *res, const mimeo_err *err) {
    async_seen *a = arg;
    pthread_mutex_lock(&a->lock);
    a->calls++;
    a->last_rc = rc;
    if (rc == 0) {
        a->ok++;
        CHECK(res && res->id && res->rev[0]);
        snprintf(a->rev, sizeof a->rev, "%s", res->rev);
    } else {
        CHECK(err != NULL);
        snprintf(a->last_error, sizeof a->last_error, "%s", err->error);
    }
    if (pthread_equal(pthread_self(), a->caller)) a->on_caller = true;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
}

static void async_wait(async_seen *a, int calls) {
    pthread_mutex_lock(&a->lock);
    while (a->calls < calls) pthread_cond_wait(&a->cond, &a->lock);
    pthread_mutex_unlock(&a->lock);
}

static void async_reset(async_seen *a) {
    a->calls = a->ok = a->last_rc = 0;
    a->last_error[0] = 0;
    a->on_caller = false;
}

/* Many writes handed over from one thread without waiting: each completion comes once, from
 * the writer thread, after a commit that several of them shared; the documents are there
 * after a reopen. Early failures answer on the calling thread; conflicts come from the
 * writer; deletions work the same way. */
static void test_put_async(void) {
    mimeo_env *env = open_env(0);
    mimeo_db *db = fresh_db(env, "async");
    async_seen a = {.caller = pthread_self()};
    pthread_mutex_init(&a.lock, NULL);
    pthread_cond_init(&a.cond, NULL);
    enum { N = 64 };
    char ids[N][16];
    const char *body = "{\"n\":1}";
    store_commit_stats before = store_stats(env->store);
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "doc%02d", i);
        mimeo_doc_put_async(db, ids[i], strlen(ids[i]), body, strlen(body), NULL, async_done, &a);
    }
    async_wait(&a, N);
    store_commit_stats after = store_stats(env->store);
    CHECK_EQ_INT(a.ok, N);
    CHECK(!a.on_caller);
    CHECK(after.commits - before.commits < (uint64_t)N);

    /* a second PUT without the rev: a conflict, found by the writer */
    async_reset(&a);
    mimeo_doc_put_async(db, "doc00", 5, body, strlen(body), NULL, async_done, &a);
    async_wait(&a, 1);
    CHECK_EQ_INT(a.last_rc, MIMEO_ECONFLICT);
    CHECK_EQ_STR(a.last_error, "conflict");
    CHECK(!a.on_caller);

    /* bad JSON: answered before the call returns */
    async_reset(&a);
    mimeo_doc_put_async(db, "bad", 3, "{nope", 5, NULL, async_done, &a);
    CHECK_EQ_INT(a.calls, 1);
    CHECK_EQ_INT(a.last_rc, MIMEO_EBADJSON);
    CHECK(a.on_caller);

    /* inline attachment data: its blob is dropped after the commit by a write of its own,
     * which the writer thread cannot wait for (this hung the writer) */
    async_reset(&a);
    const char *with_att =
        "{\"_attachments\":{\"a.txt\":{\"content_type\":\"text/plain\",\"data\":\"aGVsbG8=\"}}}";
    mimeo_doc_put_async(db, "att", 3, with_att, strlen(with_att), NULL, async_done, &a);
    async_wait(&a, 1);
    CHECK_EQ_INT(a.last_rc, 0);

    /* an update with its rev, then a deletion with the new one */
    int rc;
    char *json = get(db, "doc01", NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    char rev[MIMEO_REV_MAX] = "";
    const char *p = json ? strstr(json, "\"_rev\":\"") : NULL;
    if (p) sscanf(p + 8, "%63[^\"]", rev);
    mimeo_free(json);
    async_reset(&a);
    mimeo_put_opts o = {.rev = rev};
    mimeo_doc_put_async(db, "doc01", 5, "{\"n\":2}", 7, &o, async_done, &a);
    async_wait(&a, 1);
    CHECK_EQ_INT(a.last_rc, 0);
    CHECK(strncmp(a.rev, "2-", 2) == 0);
    snprintf(rev, sizeof rev, "%s", a.rev);
    async_reset(&a);
    mimeo_doc_delete_async(db, "doc01", 5, rev, NULL, async_done, &a);
    async_wait(&a, 1);
    CHECK_EQ_INT(a.last_rc, 0);
    CHECK(strncmp(a.rev, "3-", 2) == 0);
    json = get(db, "doc01", NULL, &rc);
    CHECK_EQ_INT(rc, MIMEO_EDELETED);
    mimeo_free(json);
    /* deleting a stale rev: a conflict */
    async_reset(&a);
    mimeo_doc_delete_async(db, "doc02", 5, "1-00000000000000000000000000000000", NULL, async_done,
                           &a);
    async_wait(&a, 1);
    CHECK_EQ_INT(a.last_rc, MIMEO_ECONFLICT);

    mimeo_db_close(db);
    mimeo_env_close(env);
    env = open_env(0);
    mimeo_err err;
    CHECK_EQ_INT(mimeo_db_open(env, "async", &db, &err), 0);
    for (int i = 2; i < N; i++) {
        json = get(db, ids[i], NULL, &rc);
        CHECK_EQ_INT(rc, 0);
        mimeo_free(json);
    }
    mimeo_db_close(db);
    mimeo_env_close(env);
    pthread_mutex_destroy(&a.lock);
    pthread_cond_destroy(&a.cond);
}

int main(void) {
    check_tmpdir_make(tmpdir, sizeof tmpdir, "store");
    RUN(test_put_get_update_delete);
    RUN(test_replicated_writes_and_conflicts);
    RUN(test_all_docs_and_local);
    RUN(test_changes_pending_and_descending);
    RUN(test_delete_big_database);
    RUN(test_map_grows);
    RUN(test_many_databases);
    RUN(test_put_async);
    check_tmpdir_remove(tmpdir);
    return check_report();
}
