/* Unit tests of src/db/index.c: rows kept per (database, index) in key then id order, scans
 * in both directions from every kind of position (none, a key, a row that exists, a row that
 * does not), updates that move and remove a document's row, the sequence check, cut keys,
 * the directory, and dropping. Runs on a real environment in a temporary folder. */
#include "check.h"
#include "db/index.h"
#include "db/db_int.h"

#include <lmdb.h>
#include <stdlib.h>
#include <unistd.h>

static mimeo_env *env;
static mimeo_db *db;
static char dir[64];

typedef struct got {
    char rows[64][64];
    size_t n;
} got;

static int collect(void *ctx, const unsigned char *key, size_t key_len, const char *id,
                   size_t id_len) {
    got *g = ctx;
    if (g->n < 64)
        snprintf(g->rows[g->n++], 64, "%.*s/%.*s", (int)key_len, (const char *)key,
                 (int)id_len, id);
    return 0;
}

/* Scans and joins the rows as "key/id key/id …". */
static char joined[4096];
static const char *scan(uint64_t idx, const char *key, const char *id, bool desc, size_t max) {
    got g = {0};
    int rc = dbidx_scan(db, idx, (const unsigned char *)key, key ? strlen(key) : 0, id,
                        id ? strlen(id) : 0, desc, max, collect, &g);
    joined[0] = 0;
    if (rc) {
        snprintf(joined, sizeof joined, "error %d", rc);
        return joined;
    }
    for (size_t i = 0; i < g.n; i++) {
        if (i) strcat(joined, " ");
        strcat(joined, g.rows[i]);
    }
    return joined;
}

static size_t slen(const char *s) { return s ? strlen(s) : 0; }
#define CH(i, k) { i, strlen(i), (const unsigned char *)(k), slen(k) }

static void setup(void) {
    snprintf(dir, sizeof dir, "/tmp/mimeo-test-index-XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    mimeo_err err;
    CHECK_EQ_INT(mimeo_env_open(dir, NULL, &env, &err), 0);
    CHECK_EQ_INT(mimeo_db_create(env, "idx", &err), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "idx", &db, &err), 0);
}

static void teardown(void) {
    mimeo_db_close(db);
    mimeo_env_close(env);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK_EQ_INT(system(cmd), 0);
}

static void test_order_and_positions(void) {
    dbidx_change ch[] = {
        CH("c", "k2"), CH("a", "k2"), CH("b", "k2"), CH("x", "k1"), CH("y", "k3"),
        CH("z", "k3"), CH("n", NULL),
    };
    CHECK_EQ_INT(dbidx_apply(db, 7, 0, 10, ch, sizeof ch / sizeof *ch), 0);
    uint64_t seq = 0;
    CHECK_EQ_INT(dbidx_seq(db, 7, &seq), 0);
    CHECK_EQ_INT(seq, 10);
    const char *all = "k1/x k2/a k2/b k2/c k3/y k3/z";
    CHECK_EQ_STR(scan(7, NULL, NULL, false, 100), all);
    CHECK_EQ_STR(scan(7, NULL, NULL, false, 2), "k1/x k2/a");
    CHECK_EQ_STR(scan(7, "k2", NULL, false, 100), "k2/a k2/b k2/c k3/y k3/z");
    CHECK_EQ_STR(scan(7, "k15", NULL, false, 100), "k2/a k2/b k2/c k3/y k3/z");
    CHECK_EQ_STR(scan(7, "k2", "a", false, 100), "k2/b k2/c k3/y k3/z");
    CHECK_EQ_STR(scan(7, "k2", "bb", false, 100), "k2/c k3/y k3/z");
    CHECK_EQ_STR(scan(7, "k2", "zz", false, 100), "k3/y k3/z");
    CHECK_EQ_STR(scan(7, "k25", "a", false, 100), "k3/y k3/z");
    CHECK_EQ_STR(scan(7, "k3", "z", false, 100), "");
    CHECK_EQ_STR(scan(7, "k9", NULL, false, 100), "");
    CHECK_EQ_STR(scan(7, NULL, NULL, true, 100), "k3/z k3/y k2/c k2/b k2/a k1/x");
    CHECK_EQ_STR(scan(7, "k2", NULL, true, 100), "k2/c k2/b k2/a k1/x");
    CHECK_EQ_STR(scan(7, "k25", NULL, true, 100), "k2/c k2/b k2/a k1/x");
    CHECK_EQ_STR(scan(7, "k9", NULL, true, 100), "k3/z k3/y k2/c k2/b k2/a k1/x");
    CHECK_EQ_STR(scan(7, "k0", NULL, true, 100), "");
    CHECK_EQ_STR(scan(7, "k2", "b", true, 100), "k2/a k1/x");
    CHECK_EQ_STR(scan(7, "k2", "bb", true, 100), "k2/b k2/a k1/x");
    CHECK_EQ_STR(scan(7, "k2", "0", true, 100), "k1/x");
    CHECK_EQ_STR(scan(7, "k2", "zz", true, 100), "k2/c k2/b k2/a k1/x");
    CHECK_EQ_STR(scan(7, "k15", "a", true, 100), "k1/x");
    CHECK_EQ_STR(scan(7, "k3", "z", true, 1), "k3/y");
    CHECK_EQ_STR(scan(7, "k9", "a", true, 100), "k3/z k3/y k2/c k2/b k2/a k1/x");
    /* another index of the same database is separate */
    CHECK_EQ_STR(scan(8, NULL, NULL, false, 100), "");
    CHECK_EQ_STR(scan(6, NULL, NULL, true, 100), "");
}

static void test_updates(void) {
    /* move b to k0, delete c, add n */
    dbidx_change ch[] = { CH("b", "k0"), CH("c", NULL), CH("n", "k2") };
    CHECK_EQ_INT(dbidx_apply(db, 7, 10, 12, ch, 3), 0);
    CHECK_EQ_STR(scan(7, NULL, NULL, false, 100), "k0/b k1/x k2/a k2/n k3/y k3/z");
    /* a stale `from` writes nothing */
    dbidx_change ch2[] = { CH("a", NULL) };
    CHECK_EQ_INT(dbidx_apply(db, 7, 10, 13, ch2, 1), MIMEO_ECONFLICT);
    CHECK_EQ_STR(scan(7, NULL, NULL, false, 100), "k0/b k1/x k2/a k2/n k3/y k3/z");
    uint64_t seq = 0;
    CHECK_EQ_INT(dbidx_seq(db, 7, &seq), 0);
    CHECK_EQ_INT(seq, 12);
    /* the same document twice in one batch: the last state wins */
    dbidx_change ch3[] = { CH("a", "k5"), CH("a", "k4") };
    CHECK_EQ_INT(dbidx_apply(db, 7, 12, 14, ch3, 2), 0);
    CHECK_EQ_STR(scan(7, NULL, NULL, false, 100), "k0/b k1/x k2/n k3/y k3/z k4/a");
}

static void test_long_keys(void) {
    char key[700];
    memset(key, 'q', sizeof key - 1);
    key[sizeof key - 1] = 0;
    dbidx_change ch[] = { CH("long", key) };
    CHECK_EQ_INT(dbidx_apply(db, 9, 0, 1, ch, 1), 0);
    got g = {0};
    CHECK_EQ_INT(dbidx_scan(db, 9, NULL, 0, NULL, 0, false, 10, collect, &g), 0);
    CHECK_EQ_INT(g.n, 1);
    /* found from the full key too (the start is cut the same way) */
    g.n = 0;
    CHECK_EQ_INT(dbidx_scan(db, 9, (const unsigned char *)key, strlen(key), NULL, 0, false, 10,
                            collect, &g), 0);
    CHECK_EQ_INT(g.n, 1);
    /* and removed by a later update */
    dbidx_change del[] = { CH("long", NULL) };
    CHECK_EQ_INT(dbidx_apply(db, 9, 1, 2, del, 1), 0);
    CHECK_EQ_STR(scan(9, NULL, NULL, false, 10), "");
}

static uint64_t listed[8];
static size_t nlisted;
static int list_fn(void *ctx, uint64_t idx) {
    (void)ctx;
    if (nlisted < 8) listed[nlisted++] = idx;
    return 0;
}

static void test_list_and_drop(void) {
    nlisted = 0;
    CHECK_EQ_INT(dbidx_list(db, list_fn, NULL), 0);
    CHECK_EQ_INT(nlisted, 2);
    CHECK_EQ_INT(listed[0], 7);
    CHECK_EQ_INT(listed[1], 9);
    CHECK_EQ_INT(dbidx_drop(db, 7), 0);
    CHECK_EQ_STR(scan(7, NULL, NULL, false, 100), "");
    uint64_t seq = 1;
    CHECK_EQ_INT(dbidx_seq(db, 7, &seq), 0);
    CHECK_EQ_INT(seq, 0);
    nlisted = 0;
    CHECK_EQ_INT(dbidx_list(db, list_fn, NULL), 0);
    CHECK_EQ_INT(nlisted, 1);
    CHECK_EQ_INT(listed[0], 9);
    /* a rebuilt index starts from 0 again */
    dbidx_change ch[] = { CH("a", "k1") };
    CHECK_EQ_INT(dbidx_apply(db, 7, 0, 3, ch, 1), 0);
    CHECK_EQ_STR(scan(7, NULL, NULL, false, 100), "k1/a");
}

/* Entries of the "mango" table whose key starts with dbid (directory, seqs, rows, revs). */
static size_t mango_entries(uint64_t dbid) {
    MDB_txn *txn;
    CHECK_EQ_INT(store_read_begin(env->store, &txn), 0);
    MDB_dbi dbi;
    size_t n = 0;
    if (mdb_dbi_open(txn, "mango", MDB_DUPSORT, &dbi) == 0) {
        MDB_cursor *cur;
        CHECK_EQ_INT(mdb_cursor_open(txn, dbi, &cur), 0);
        unsigned char p[8];
        be64_put(p, dbid);
        MDB_val k = {8, p}, v;
        int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (rc == 0 && k.mv_size >= 8 && memcmp(k.mv_data, p, 8) == 0) {
            n++;
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
    }
    store_read_end(env->store, txn);
    return n;
}

/* Deleting a database takes its index rows with it; another database's stay. */
static void test_rows_go_with_the_database(void) {
    mimeo_err err;
    mimeo_db *g;
    CHECK_EQ_INT(mimeo_db_create(env, "gone", &err), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "gone", &g, &err), 0);
    db_meta m;
    CHECK_EQ_INT(db_meta_snapshot(g, &m), 0);
    char ids[300][16], keys[300][16];
    dbidx_change ch[300];
    for (int i = 0; i < 300; i++) {
        snprintf(ids[i], sizeof ids[i], "d%03d", i);
        snprintf(keys[i], sizeof keys[i], "k%03d", i % 17);
        ch[i] = (dbidx_change)CH(ids[i], keys[i]);
    }
    CHECK_EQ_INT(dbidx_apply(g, 3, 0, 300, ch, 300), 0);
    CHECK_EQ_INT(dbidx_apply(g, 4, 0, 300, ch, 100), 0);
    mimeo_db_close(g);
    CHECK(mango_entries(m.dbid) > 600);
    db_meta mine;
    CHECK_EQ_INT(db_meta_snapshot(db, &mine), 0);
    size_t others = mango_entries(mine.dbid);
    CHECK(others > 0);

    CHECK_EQ_INT(mimeo_db_delete(env, "gone", &err), 0);
    CHECK_EQ_INT(mango_entries(m.dbid), 0);
    CHECK_EQ_INT(mango_entries(mine.dbid), others);
}

int main(void) {
    setup();
    RUN(test_order_and_positions);
    RUN(test_updates);
    RUN(test_long_keys);
    RUN(test_list_and_drop);
    RUN(test_rows_go_with_the_database);
    teardown();
    return check_report();
}
