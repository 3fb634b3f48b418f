/* Unit tests of the view index (src/view/vstore.c, vquery.c, vupdate.c): rows stored in
 * collation order then id order, scans in both directions from every kind of position,
 * a document's rows replaced and removed, row counts and the seq check, cut keys and long
 * ids, the directory and drops, rows dropped with their database; then, through the query
 * server, a seeded property test: random documents edited and deleted in random batches, the
 * view read after each batch (map rows, ranges, group=true _count/_sum) must equal a model
 * computed here with collate_cmp. Needs build/mimeo-js (or $MIMEO_JS). */
#include "check.h"
#include "view/vstore.h"
#include "view/view_int.h"
#include "db/db_int.h"
#include "query/collate.h"

#include <lmdb.h>
#include <stdlib.h>
#include <unistd.h>

static mimeo_env *env;
static mimeo_db *db;
static char dir[64];

/* ---- storage ---------------------------------------------------------------------------- */

typedef struct got {
    char   text[4096];
    size_t n;
} got;

static int collect(void *ctx, const vstore_row *r) {
    got *g = ctx;
    size_t len = strlen(g->text);
    snprintf(g->text + len, sizeof g->text - len, "%s%.*s/%.*s=%.*s", g->n ? " " : "",
             (int)r->key_len, r->key, (int)(r->id_len > 20 ? 20 : r->id_len), r->id,
             (int)r->value_len, r->value);
    g->n++;
    return VSTORE_NEXT;
}

static const char *scan(uint64_t idx, unsigned view, vstore_pos how, const buf *pos, bool desc,
                        size_t max, buf *last) {
    static got g;
    memset(&g, 0, sizeof g);
    bool more;
    int rc = vstore_scan(db, idx, view, how, pos ? (const unsigned char *)pos->data : NULL,
                         pos ? pos->len : 0, desc, max, collect, &g, &more, last);
    if (rc) snprintf(g.text, sizeof g.text, "error %d", rc);
    return g.text;
}

/* One emit of a JSON key text and value text. */
typedef struct em {
    buf ck;
    const char *key, *val;
    unsigned view;
} em;

static void em_set(em *e, unsigned view, const char *key, const char *val) {
    buf_init(&e->ck, 0);
    jval *k = NULL;
    CHECK_EQ_INT(json_tree_parse(key, strlen(key), NULL, &k, NULL), 0);
    CHECK_EQ_INT(collate_key_put(&e->ck, k), 0);
    jval_free(k);
    e->key = key;
    e->val = val;
    e->view = view;
}

static int apply(uint64_t idx, uint64_t from, uint64_t to, const char *id, em *ems, size_t n) {
    vstore_emit out[16];
    for (size_t i = 0; i < n; i++)
        out[i] = (vstore_emit){ems[i].view, (const unsigned char *)ems[i].ck.data, ems[i].ck.len,
                               ems[i].key, strlen(ems[i].key), ems[i].val, strlen(ems[i].val)};
    vstore_doc d = {id, strlen(id), out, n};
    return vstore_apply(db, idx, 2, "_design/t", 9, from, to, &d, 1);
}

static void test_store_order_and_updates(void) {
    em e[4];
    em_set(&e[0], 0, "\"b\"", "1");
    em_set(&e[1], 0, "\"a\"", "2");
    em_set(&e[2], 1, "[1,2]", "null");
    CHECK_EQ_INT(apply(7, 0, 1, "x", e, 3), 0);
    em_set(&e[3], 0, "\"B\"", "3");
    CHECK_EQ_INT(apply(7, 1, 2, "y", &e[3], 1), 0);
    CHECK_EQ_INT(apply(7, 1, 3, "z", e, 1), MIMEO_ECONFLICT); /* stale from */
    CHECK_EQ_INT(apply(7, 2, 3, "w", e, 1), 0);               /* "b" again, from w */
    buf last;
    buf_init(&last, 0);
    /* collation order (a < b < B), ids in byte order within a key */
    CHECK_EQ_STR(scan(7, 0, VSTORE_FIRST, NULL, false, 100, &last),
                 "\"a\"/x=2 \"b\"/w=1 \"b\"/x=1 \"B\"/y=3");
    CHECK_EQ_STR(scan(7, 0, VSTORE_FIRST, NULL, true, 100, &last),
                 "\"B\"/y=3 \"b\"/x=1 \"b\"/w=1 \"a\"/x=2");
    CHECK_EQ_STR(scan(7, 1, VSTORE_FIRST, NULL, false, 100, &last), "[1,2]/x=null");
    /* paging: two rows, then after the last one taken */
    CHECK_EQ_STR(scan(7, 0, VSTORE_FIRST, NULL, false, 2, &last), "\"a\"/x=2 \"b\"/w=1");
    buf pos = last;
    buf_init(&last, 0);
    CHECK_EQ_STR(scan(7, 0, VSTORE_AFTER, &pos, false, 2, &last), "\"b\"/x=1 \"B\"/y=3");
    CHECK_EQ_STR(scan(7, 0, VSTORE_AFTER, &pos, true, 5, &last), "\"a\"/x=2");
    /* seek by key: ascending from the first row ≥, descending from the last row ≤ */
    buf_reset(&pos);
    buf_put(&pos, e[0].ck.data, e[0].ck.len);
    CHECK_EQ_STR(scan(7, 0, VSTORE_SEEK, &pos, false, 100, &last), "\"b\"/w=1 \"b\"/x=1 \"B\"/y=3");
    CHECK_EQ_STR(scan(7, 0, VSTORE_SEEK, &pos, true, 100, &last), "\"b\"/x=1 \"b\"/w=1 \"a\"/x=2");
    vstore_meta m;
    CHECK_EQ_INT(vstore_meta_get(db, 7, &m), 0);
    CHECK_EQ_INT(m.seq, 3);
    CHECK_EQ_INT(m.rows[0], 4);
    CHECK_EQ_INT(m.rows[1], 1);
    CHECK(m.bytes > 0);
    /* x now emits one row only: its three old rows go */
    CHECK_EQ_INT(apply(7, 3, 4, "x", &e[3], 1), 0);
    CHECK_EQ_STR(scan(7, 0, VSTORE_FIRST, NULL, false, 100, &last), "\"b\"/w=1 \"B\"/x=3 \"B\"/y=3");
    CHECK_EQ_STR(scan(7, 1, VSTORE_FIRST, NULL, false, 100, &last), "");
    /* a document with no rows (deleted): its rows go */
    CHECK_EQ_INT(apply(7, 4, 5, "w", NULL, 0), 0);
    CHECK_EQ_STR(scan(7, 0, VSTORE_FIRST, NULL, false, 100, &last), "\"B\"/x=3 \"B\"/y=3");
    CHECK_EQ_INT(vstore_meta_get(db, 7, &m), 0);
    CHECK_EQ_INT(m.rows[0], 2);
    CHECK_EQ_INT(m.rows[1], 0);
    /* a document emitting the same key twice keeps both rows */
    em twice[2];
    em_set(&twice[0], 0, "\"a\"", "1");
    em_set(&twice[1], 0, "\"a\"", "2");
    CHECK_EQ_INT(apply(7, 5, 6, "d", twice, 2), 0);
    CHECK_EQ_STR(scan(7, 0, VSTORE_FIRST, NULL, false, 100, &last),
                 "\"a\"/d=1 \"a\"/d=2 \"B\"/x=3 \"B\"/y=3");
    for (int i = 0; i < 4; i++) buf_destroy(&e[i].ck);
    for (int i = 0; i < 2; i++) buf_destroy(&twice[i].ck);
    buf_destroy(&pos);
    buf_destroy(&last);
}

static void test_store_long_keys_and_ids(void) {
    /* keys beyond the cut and ids beyond the key: distinct rows, each removable */
    char key[1200], id1[900], id2[900];
    memset(key, 'k', sizeof key);
    key[0] = '"';
    key[sizeof key - 2] = '"';
    key[sizeof key - 1] = 0;
    memset(id1, 'i', sizeof id1);
    id1[sizeof id1 - 1] = 0;
    memcpy(id2, id1, sizeof id2);
    id2[sizeof id2 - 2] = 'j';
    em e;
    em_set(&e, 0, key, "1");
    CHECK(e.ck.len > VSTORE_CKEY_MAX);
    CHECK_EQ_INT(apply(8, 0, 1, id1, &e, 1), 0);
    CHECK_EQ_INT(apply(8, 1, 2, id2, &e, 1), 0);
    vstore_meta m;
    CHECK_EQ_INT(vstore_meta_get(db, 8, &m), 0);
    CHECK_EQ_INT(m.rows[0], 2);
    buf last;
    buf_init(&last, 0);
    got *g = calloc(1, sizeof *g);
    bool more;
    CHECK_EQ_INT(vstore_scan(db, 8, 0, VSTORE_FIRST, NULL, 0, false, 10, collect, g, &more, &last), 0);
    CHECK_EQ_INT(g->n, 2);
    CHECK_EQ_INT(apply(8, 2, 3, id1, NULL, 0), 0);
    CHECK_EQ_INT(vstore_meta_get(db, 8, &m), 0);
    CHECK_EQ_INT(m.rows[0], 1);
    memset(g, 0, sizeof *g);
    CHECK_EQ_INT(vstore_scan(db, 8, 0, VSTORE_FIRST, NULL, 0, false, 10, collect, g, &more, &last), 0);
    CHECK_EQ_INT(g->n, 1);
    CHECK(strstr(g->text, "=1") != NULL);
    free(g);
    buf_destroy(&last);
    buf_destroy(&e.ck);
}

/* Ids of a view's rows in stored order, space separated. */
static int collect_ids(void *ctx, const vstore_row *r) {
    buf *b = ctx;
    if (b->len) buf_putc(b, ' ');
    return buf_put(b, r->id, r->id_len) ? -1 : VSTORE_NEXT;
}

static void stored_ids(uint64_t idx, unsigned view, buf *out) {
    buf last;
    buf_init(&last, 0);
    bool more = true;
    bool first = true;
    buf_reset(out);
    while (more) {
        buf pos = last;
        buf_init(&last, 0);
        CHECK_EQ_INT(vstore_scan(db, idx, view, first ? VSTORE_FIRST : VSTORE_AFTER,
                                 (const unsigned char *)pos.data, pos.len, false, 1000,
                                 collect_ids, out, &more, &last), 0);
        buf_destroy(&pos);
        first = false;
    }
    buf_destroy(&last);
}

typedef struct rk_key { jval *k; char id[16]; } rk_key;
static int rk_key_cmp(const void *a, const void *b) {
    const rk_key *x = a, *y = b;
    int c = collate_cmp(x->k, y->k);
    return c ? c : strcmp(x->id, y->id);
}

/* Long keys (one cut) each written between the same two neighbours, far more often than a
 * gap of ranks can be halved: the ranks are spread again, the rows moved, and the stored
 * order stays the keys' order; then a document emitting such a run itself, removed whole. */
#define RUN_KEYS 100
static void test_store_rank_respread(void) {
    static char keys[RUN_KEYS][600];
    char head[420];
    memset(head, 'x', 400);
    head[400] = 0;
    /* lo, hi, then keys descending towards lo: each lands between lo and the last one */
    snprintf(keys[0], sizeof keys[0], "\"%sa\"", head);
    snprintf(keys[1], sizeof keys[1], "\"%sb\"", head);
    for (int i = 2; i < RUN_KEYS; i++) {
        char tail[RUN_KEYS + 1];
        memset(tail, '~', (size_t)(RUN_KEYS - i));
        tail[RUN_KEYS - i] = 0;
        snprintf(keys[i], sizeof keys[i], "\"%sa%s\"", head, tail);
    }
    static em e[RUN_KEYS];
    static rk_key want[RUN_KEYS];
    for (int i = 0; i < RUN_KEYS; i++) {
        em_set(&e[i], 0, keys[i], "1");
        CHECK(e[i].ck.len > VSTORE_CKEY_MAX);
        CHECK_EQ_INT(json_tree_parse(keys[i], strlen(keys[i]), NULL, &want[i].k, NULL), 0);
        snprintf(want[i].id, sizeof want[i].id, "r%03d", i);
        CHECK_EQ_INT(apply(9, (uint64_t)i, (uint64_t)i + 1, want[i].id, &e[i], 1), 0);
    }
    qsort(want, RUN_KEYS, sizeof *want, rk_key_cmp);
    buf exp, seen;
    buf_init(&exp, 0);
    buf_init(&seen, 0);
    for (int i = 0; i < RUN_KEYS; i++) buf_printf(&exp, "%s%s", i ? " " : "", want[i].id);
    stored_ids(9, 0, &seen);
    CHECK_EQ_STR(buf_cstr(&seen), buf_cstr(&exp));
    /* every other document removed: their rows go, the others stay in order */
    uint64_t seq = RUN_KEYS;
    buf_reset(&exp);
    for (int i = 0; i < RUN_KEYS; i++) {
        int n = atoi(want[i].id + 1);
        if (n % 2) {
            CHECK_EQ_INT(apply(9, seq, seq + 1, want[i].id, NULL, 0), 0);
            seq++;
        } else {
            buf_printf(&exp, "%s%s", exp.len ? " " : "", want[i].id);
        }
    }
    stored_ids(9, 0, &seen);
    CHECK_EQ_STR(buf_cstr(&seen), buf_cstr(&exp));
    vstore_meta m;
    CHECK_EQ_INT(vstore_meta_get(db, 9, &m), 0);
    CHECK_EQ_INT(m.rows[0], RUN_KEYS / 2);
    /* one document emitting the whole run in view 1: ranks spread while it is written */
    static vstore_emit out[RUN_KEYS];
    for (int i = 0; i < RUN_KEYS; i++)
        out[i] = (vstore_emit){1, (const unsigned char *)e[i].ck.data, e[i].ck.len, keys[i],
                               strlen(keys[i]), "2", 1};
    vstore_doc d = {"many", 4, out, RUN_KEYS};
    CHECK_EQ_INT(vstore_apply(db, 9, 2, "_design/t", 9, seq, seq + 1, &d, 1), 0);
    seq++;
    CHECK_EQ_INT(vstore_meta_get(db, 9, &m), 0);
    CHECK_EQ_INT(m.rows[1], RUN_KEYS);
    {
        buf ids;
        buf_init(&ids, 0);
        stored_ids(9, 1, &ids);
        CHECK_EQ_INT(strlen(buf_cstr(&ids)), (size_t)(RUN_KEYS * 5 - 1));
        buf_destroy(&ids);
    }
    CHECK_EQ_INT(apply(9, seq, seq + 1, "many", NULL, 0), 0);
    stored_ids(9, 1, &seen);
    CHECK_EQ_STR(buf_cstr(&seen), "");
    CHECK_EQ_INT(vstore_meta_get(db, 9, &m), 0);
    CHECK_EQ_INT(m.rows[1], 0);
    CHECK_EQ_INT(m.rows[0], RUN_KEYS / 2);
    for (int i = 0; i < RUN_KEYS; i++) {
        buf_destroy(&e[i].ck);
        jval_free(want[i].k);
    }
    buf_destroy(&exp);
    buf_destroy(&seen);
}

typedef struct listed { uint64_t idx[8]; size_t n; } listed;
static int list_fn(void *ctx, uint64_t idx, const char *info, size_t len) {
    listed *l = ctx;
    CHECK_EQ_INT(len, 9);
    CHECK(memcmp(info, "_design/t", 9) == 0);
    if (l->n < 8) l->idx[l->n++] = idx;
    return 0;
}

static size_t view_entries(uint64_t dbid) {
    MDB_txn *txn;
    if (store_read_begin(db->env->store, &txn)) return 0;
    MDB_dbi dbi;
    size_t n = 0;
    if (mdb_dbi_open(txn, "views", 0, &dbi) == 0) {
        MDB_cursor *cur;
        mdb_cursor_open(txn, dbi, &cur);
        unsigned char kb[8];
        be64_put(kb, dbid);
        MDB_val k = {8, kb}, v;
        int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (mrc == 0 && k.mv_size >= 8 && memcmp(k.mv_data, kb, 8) == 0) {
            n++;
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
    }
    store_read_end(db->env->store, txn);
    return n;
}

static void test_store_list_and_drop(void) {
    listed l = {0};
    CHECK_EQ_INT(vstore_list(db, list_fn, &l), 0);
    CHECK_EQ_INT(l.n, 3);
    CHECK_EQ_INT(vstore_drop(db, 9), 0);
    memset(&l, 0, sizeof l);
    CHECK_EQ_INT(vstore_list(db, list_fn, &l), 0);
    CHECK_EQ_INT(l.n, 2);
    CHECK_EQ_INT(vstore_drop(db, 7), 0);
    vstore_meta m;
    CHECK_EQ_INT(vstore_meta_get(db, 7, &m), 0);
    CHECK_EQ_INT(m.seq, 0);
    buf last;
    buf_init(&last, 0);
    CHECK_EQ_STR(scan(7, 0, VSTORE_FIRST, NULL, false, 100, &last), "");
    memset(&l, 0, sizeof l);
    CHECK_EQ_INT(vstore_list(db, list_fn, &l), 0);
    CHECK_EQ_INT(l.n, 1);
    CHECK_EQ_INT(l.idx[0], 8);
    /* a deleted database takes its rows with it */
    db_meta dm;
    CHECK_EQ_INT(db_meta_snapshot(db, &dm), 0);
    CHECK(view_entries(dm.dbid) > 0);
    mimeo_err err;
    mimeo_db *keep = db;
    CHECK_EQ_INT(mimeo_db_delete(env, "v", &err), 0);
    CHECK_EQ_INT(view_entries(dm.dbid), 0);
    mimeo_db_close(keep);
    db = NULL;
    buf_destroy(&last);
}

/* ---- through the query server: a model ------------------------------------------------- */

static uint64_t rng_state;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

#define NDOCS 60
typedef struct mdoc { bool live; char key[32]; int val; char rev[MIMEO_REV_MAX]; } mdoc;
static mdoc model[NDOCS];

static void random_key(char *out, size_t cap) {
    static const char *const words[] = {"\"a\"", "\"A\"", "\"b\"", "\"ab\"", "null", "true",
                                        "false", "\"\\u00e9\""};
    switch (rnd() % 4) {
    case 0: snprintf(out, cap, "%d", (int)(rnd() % 7) - 3); break;
    case 1: snprintf(out, cap, "%s", words[rnd() % 8]); break;
    case 2: snprintf(out, cap, "[%d,%s]", (int)(rnd() % 3), words[rnd() % 8]); break;
    default: snprintf(out, cap, "[%d]", (int)(rnd() % 3)); break;
    }
}

typedef struct mrow { const char *key; jval *k; char id[16]; int val; } mrow;

static int mrow_cmp(const void *a, const void *b) {
    const mrow *x = a, *y = b;
    int c = collate_cmp(x->k, y->k);
    return c ? c : strcmp(x->id, y->id);
}

/* The expected reply text of the map view, and of group=true _sum and _count. */
static void expected(buf *map, buf *sum, buf *count) {
    mrow rows[NDOCS];
    size_t n = 0;
    for (int i = 0; i < NDOCS; i++) {
        if (!model[i].live) continue;
        rows[n].key = model[i].key;
        CHECK_EQ_INT(json_tree_parse(model[i].key, strlen(model[i].key), NULL, &rows[n].k, NULL), 0);
        snprintf(rows[n].id, sizeof rows[n].id, "d%02d", i);
        rows[n].val = model[i].val;
        n++;
    }
    qsort(rows, n, sizeof *rows, mrow_cmp);
    buf_printf(map, "{\"total_rows\":%zu,\"offset\":0,\"rows\":[\n", n);
    buf_puts(sum, "{\"rows\":[\n");
    buf_puts(count, "{\"rows\":[\n");
    size_t groups = 0;
    for (size_t i = 0; i < n; i++) {
        buf_printf(map, "%s{\"id\":\"%s\",\"key\":", i ? ",\n" : "", rows[i].id);
        json_put_jval(map, rows[i].k);
        buf_printf(map, ",\"value\":%d}", rows[i].val);
        if (i && collate_cmp(rows[i].k, rows[i - 1].k) == 0) continue;
        long s = 0, c = 0;
        for (size_t j = i; j < n && collate_cmp(rows[j].k, rows[i].k) == 0; j++) {
            s += rows[j].val;
            c++;
        }
        const char *sep = groups++ ? ",\n" : "";
        buf_printf(sum, "%s{\"key\":", sep);
        json_put_jval(sum, rows[i].k);
        buf_printf(sum, ",\"value\":%ld}", s);
        buf_printf(count, "%s{\"key\":", sep);
        json_put_jval(count, rows[i].k);
        buf_printf(count, ",\"value\":%ld}", c);
    }
    buf_puts(map, "\n]}\n");
    buf_puts(sum, "\n]}\n");
    buf_puts(count, "\n]}\n");
    for (size_t i = 0; i < n; i++) jval_free(rows[i].k);
}

static void read_all(mimeo_db *d, const char *view, const char *params, buf *out) {
    mimeo_view_reader *rd = NULL;
    mimeo_err err = {0};
    int rc = mimeo_view_open(d, "m", 1, view, strlen(view), params, params ? strlen(params) : 0,
                             &rd, &err);
    if (rc) {
        fprintf(stderr, "view %s: %d %s %s\n", view, rc, err.error, err.reason);
        CHECK_EQ_INT(rc, 0);
        return;
    }
    for (;;) {
        const char *t;
        size_t n;
        CHECK_EQ_INT(mimeo_view_read(rd, &t, &n, &err), 0);
        if (!n) break;
        buf_put(out, t, n);
    }
    mimeo_view_close(rd);
}

static void test_model(void) {
    uint64_t seed = getenv("SEED") ? strtoull(getenv("SEED"), NULL, 10) : (uint64_t)time(NULL);
    if (!seed) seed = 1;
    fprintf(stderr, "test_model: SEED=%llu\n", (unsigned long long)seed);
    rng_state = seed;
    mimeo_err err;
    mimeo_db *d;
    CHECK_EQ_INT(mimeo_db_create(env, "m", &err), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "m", &d, &err), 0);
    const char *ddoc = "{\"views\":{"
        "\"map\":{\"map\":\"function(doc) { if (doc.k !== undefined) emit(doc.k, doc.v); }\"},"
        "\"sum\":{\"map\":\"function(doc) { if (doc.k !== undefined) emit(doc.k, doc.v); }\",\"reduce\":\"_sum\"},"
        "\"count\":{\"map\":\"function(doc) { if (doc.k !== undefined) emit(doc.k, doc.v); }\",\"reduce\":\"_count\"}}}";
    mimeo_put_result pr;
    CHECK_EQ_INT(mimeo_doc_put(d, "_design/m", 9, ddoc, strlen(ddoc), NULL, &pr, &err), 0);
    mimeo_free(pr.id);
    memset(model, 0, sizeof model);
    for (int round = 0; round < 12; round++) {
        int edits = 1 + (int)(rnd() % 25);
        for (int e = 0; e < edits; e++) {
            int i = (int)(rnd() % NDOCS);
            char id[16];
            snprintf(id, sizeof id, "d%02d", i);
            mdoc *m = &model[i];
            if (m->live && rnd() % 4 == 0) {
                CHECK_EQ_INT(mimeo_doc_delete(d, id, 3, m->rev, &pr, &err), 0);
                mimeo_free(pr.id);
                snprintf(m->rev, sizeof m->rev, "%s", pr.rev);
                m->live = false;
                continue;
            }
            random_key(m->key, sizeof m->key);
            m->val = (int)(rnd() % 100);
            char body[256];
            snprintf(body, sizeof body, "{%s%s%s\"k\":%s,\"v\":%d}", m->rev[0] ? "\"_rev\":\"" : "",
                     m->rev, m->rev[0] ? "\"," : "", m->key, m->val);
            CHECK_EQ_INT(mimeo_doc_put(d, id, 3, body, strlen(body), NULL, &pr, &err), 0);
            mimeo_free(pr.id);
            snprintf(m->rev, sizeof m->rev, "%s", pr.rev);
            m->live = true;
        }
        buf xm, es, ec, gm, gs, gc;
        buf_init(&xm, 0); buf_init(&es, 0); buf_init(&ec, 0);
        buf_init(&gm, 0); buf_init(&gs, 0); buf_init(&gc, 0);
        expected(&xm, &es, &ec);
        read_all(d, "map", NULL, &gm);
        read_all(d, "sum", "{\"group\":true}", &gs);
        read_all(d, "count", "{\"group\":true}", &gc);
        if (strcmp(buf_cstr(&xm), buf_cstr(&gm)) || strcmp(buf_cstr(&es), buf_cstr(&gs)) ||
            strcmp(buf_cstr(&ec), buf_cstr(&gc))) {
            fprintf(stderr, "SEED=%llu round %d\nexpected %s%s%s\ngot %s%s%s\n",
                    (unsigned long long)seed, round, buf_cstr(&xm), buf_cstr(&es),
                    buf_cstr(&ec), buf_cstr(&gm), buf_cstr(&gs), buf_cstr(&gc));
            CHECK(!"the view equals the model");
            round = 1000;
        }
        buf_destroy(&xm); buf_destroy(&es); buf_destroy(&ec);
        buf_destroy(&gm); buf_destroy(&gs); buf_destroy(&gc);
    }
    mimeo_db_close(d);
}

/* Keys whose collation keys run past the stored cut (VSTORE_CKEY_MAX): strings of 1,000+
 * characters differing at their end and arrays with a long first element, written in an
 * order unlike their key order, edited and deleted; rows and range bounds inside runs of
 * such keys, both directions, must follow collate_cmp, not the document ids. */
#define LDOCS 40
static char lkey[LDOCS][1200];
static char lrev[LDOCS][MIMEO_REV_MAX];
static bool llive[LDOCS];

static void long_key(int i, int variant) {
    char head[1100];
    memset(head, 'x', 1050);
    head[1050] = 0;
    int t = (i * 7 + variant) % LDOCS;   /* key order unlike id order */
    if (t % 3 == 0) snprintf(lkey[i], sizeof lkey[i], "\"%s%c%02d\"", head, 'a' + t % 26, t);
    else if (t % 3 == 1) snprintf(lkey[i], sizeof lkey[i], "[\"%s\",%d]", head, 50 - t);
    else snprintf(lkey[i], sizeof lkey[i], "[\"%sy\",\"%c\",%d]", head, 'A' + t % 26, t);
}

typedef struct lrow { jval *k; char id[16]; } lrow;
static int lrow_cmp(const void *a, const void *b) {
    const lrow *x = a, *y = b;
    int c = collate_cmp(x->k, y->k);
    return c ? c : strcmp(x->id, y->id);
}

/* The ids of the view's rows as "id,id,…". */
static void got_ids(mimeo_db *d, const char *params, buf *out) {
    buf raw;
    buf_init(&raw, 0);
    read_all(d, "map", params, &raw);
    jval *v = NULL;
    CHECK_EQ_INT(json_tree_parse(raw.data, raw.len, NULL, &v, NULL), 0);
    const jval *rows = v ? jval_get(v, "rows") : NULL;
    for (size_t i = 0; rows && i < rows->count; i++) {
        const jval *id = jval_get(rows->items[i], "id");
        buf_printf(out, "%s%s", i ? "," : "", id ? id->str : "?");
    }
    jval_free(v);
    buf_destroy(&raw);
}

static void test_long_keys(void) {
    mimeo_err err;
    mimeo_db *d;
    CHECK_EQ_INT(mimeo_db_create(env, "lk", &err), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "lk", &d, &err), 0);
    const char *ddoc = "{\"views\":{\"map\":{\"map\":"
        "\"function(doc) { if (doc.k !== undefined) emit(doc.k, null); }\"}}}";
    mimeo_put_result pr;
    CHECK_EQ_INT(mimeo_doc_put(d, "_design/m", 9, ddoc, strlen(ddoc), NULL, &pr, &err), 0);
    mimeo_free(pr.id);
    static char body[1400];
    for (int round = 0; round < 3; round++) {
        for (int j = 0; j < LDOCS; j++) {
            int i = (j * 13 + round * 5) % LDOCS;
            char id[16];
            snprintf(id, sizeof id, "L%02d", i);
            if (round == 2 && i % 5 == 0) {
                if (!llive[i]) continue;
                CHECK_EQ_INT(mimeo_doc_delete(d, id, 3, lrev[i], &pr, &err), 0);
                llive[i] = false;
            } else {
                if (round && i % 2) continue;
                long_key(i, round);
                snprintf(body, sizeof body, "{%s%s%s\"k\":%s}", lrev[i][0] ? "\"_rev\":\"" : "",
                         lrev[i], lrev[i][0] ? "\"," : "", lkey[i]);
                CHECK_EQ_INT(mimeo_doc_put(d, id, 3, body, strlen(body), NULL, &pr, &err), 0);
                llive[i] = true;
            }
            snprintf(lrev[i], sizeof lrev[i], "%s", pr.rev);
            mimeo_free(pr.id);
            /* a few reads between writes, so the index grows in several steps */
            if (j % 9 == 0) {
                buf g;
                buf_init(&g, 0);
                got_ids(d, NULL, &g);
                buf_destroy(&g);
            }
        }
        lrow rows[LDOCS];
        size_t n = 0;
        for (int i = 0; i < LDOCS; i++) {
            if (!llive[i]) continue;
            CHECK_EQ_INT(json_tree_parse(lkey[i], strlen(lkey[i]), NULL, &rows[n].k, NULL), 0);
            snprintf(rows[n].id, sizeof rows[n].id, "L%02d", i);
            n++;
        }
        qsort(rows, n, sizeof *rows, lrow_cmp);
        buf want, ids, params, kb;
        buf_init(&want, 0);
        buf_init(&ids, 0);
        buf_init(&params, 0);
        buf_init(&kb, 0);
        for (size_t i = 0; i < n; i++) buf_printf(&want, "%s%s", i ? "," : "", rows[i].id);
        got_ids(d, NULL, &ids);
        CHECK_EQ_STR(buf_cstr(&ids), buf_cstr(&want));
        /* ranges with both bounds inside the run, each way, inclusive_end both ways */
        size_t pairs[][2] = {{3, 17}, {0, 5}, {9, 10}, {12, 12}, {5, 30}};
        for (size_t p = 0; p < sizeof pairs / sizeof pairs[0]; p++) {
            size_t a = pairs[p][0], b = pairs[p][1] < n ? pairs[p][1] : n - 1;
            for (int mode = 0; mode < 4; mode++) {
                bool desc = mode & 1, incl = !(mode & 2);
                buf_reset(&params);
                buf_reset(&kb);
                json_put_jval(&kb, rows[desc ? b : a].k);
                buf_printf(&params, "{\"startkey\":%s,", buf_cstr(&kb));
                buf_reset(&kb);
                json_put_jval(&kb, rows[desc ? a : b].k);
                buf_printf(&params, "\"endkey\":%s,\"descending\":%s,\"inclusive_end\":%s}",
                           buf_cstr(&kb), desc ? "true" : "false", incl ? "true" : "false");
                buf_reset(&want);
                bool first = true;
                for (size_t k = 0; k < n; k++) {
                    size_t i = desc ? n - 1 - k : k;
                    int lo = collate_cmp(rows[i].k, rows[a].k), hi = collate_cmp(rows[i].k, rows[b].k);
                    bool in = lo >= 0 && hi <= 0;
                    if (!incl) in = desc ? lo > 0 && hi <= 0 : lo >= 0 && hi < 0;
                    if (!in) continue;
                    buf_printf(&want, "%s%s", first ? "" : ",", rows[i].id);
                    first = false;
                }
                buf_reset(&ids);
                got_ids(d, buf_cstr(&params), &ids);
                if (strcmp(buf_cstr(&ids), buf_cstr(&want)) != 0)
                    fprintf(stderr, "round %d pair %zu mode %d\n", round, p, mode);
                CHECK_EQ_STR(buf_cstr(&ids), buf_cstr(&want));
            }
        }
        /* startkey with startkey_docid inside the run, both directions */
        for (size_t a = 2; a + 2 < n; a += 7) {
            for (int desc = 0; desc < 2; desc++) {
                buf_reset(&kb);
                json_put_jval(&kb, rows[a].k);
                buf_reset(&params);
                buf_printf(&params, "{\"startkey\":%s,\"startkey_docid\":\"%s\",\"descending\":%s}",
                           buf_cstr(&kb), rows[a].id, desc ? "true" : "false");
                buf_reset(&want);
                for (size_t k = 0; k < n; k++) {
                    size_t i = desc ? n - 1 - k : k;
                    if (desc ? i > a : i < a) continue;
                    buf_printf(&want, "%s%s", want.len ? "," : "", rows[i].id);
                }
                buf_reset(&ids);
                got_ids(d, buf_cstr(&params), &ids);
                CHECK_EQ_STR(buf_cstr(&ids), buf_cstr(&want));
            }
        }
        /* key=: exactly the rows of that long key */
        if (n > 6) {
            buf_reset(&kb);
            json_put_jval(&kb, rows[5].k);
            buf_reset(&params);
            buf_printf(&params, "{\"key\":%s}", buf_cstr(&kb));
            buf_reset(&want);
            for (size_t i = 0; i < n; i++)
                if (collate_cmp(rows[i].k, rows[5].k) == 0)
                    buf_printf(&want, "%s%s", want.len ? "," : "", rows[i].id);
            buf_reset(&ids);
            got_ids(d, buf_cstr(&params), &ids);
            CHECK_EQ_STR(buf_cstr(&ids), buf_cstr(&want));
        }
        for (size_t i = 0; i < n; i++) jval_free(rows[i].k);
        buf_destroy(&want);
        buf_destroy(&ids);
        buf_destroy(&params);
        buf_destroy(&kb);
    }
    mimeo_db_close(d);
}

/* Blocks (counts and partial reductions of runs of rows): thousands of rows in many blocks,
 * then small edits that leave marks; whole and ranged reduces and offsets must equal the
 * model after each round, through the blocks as through the rows. */
#define BDOCS 3000
static int bkey[BDOCS], bval[BDOCS];
static bool blive[BDOCS];
static char brev[BDOCS][MIMEO_REV_MAX];

static void bput(mimeo_db *d, int i) {
    char id[16], body[200];
    snprintf(id, sizeof id, "b%04d", i);
    snprintf(body, sizeof body, "{%s%s%s\"k\":%d,\"v\":%d}", brev[i][0] ? "\"_rev\":\"" : "",
             brev[i], brev[i][0] ? "\"," : "", bkey[i], bval[i]);
    mimeo_put_result pr;
    mimeo_err err;
    CHECK_EQ_INT(mimeo_doc_put(d, id, strlen(id), body, strlen(body), NULL, &pr, &err), 0);
    snprintf(brev[i], sizeof brev[i], "%s", pr.rev);
    mimeo_free(pr.id);
    blive[i] = true;
}

static int count_partial(void *ctx, const vstore_block *b) {
    size_t *n = ctx;
    if (b->partial_len && b->partial[0] != '!') (*n)++;
    return VSTORE_NEXT;
}

/* Blocks of view "j" (the JavaScript reduce) that hold a stored partial. */
static size_t js_partials(mimeo_db *d) {
    vdef *def = NULL;
    mimeo_err err;
    CHECK_EQ_INT(vdef_load(d, "m", 1, &def, &err), 0);
    size_t n = 0;
    buf last;
    buf_init(&last, 0);
    bool more;
    if (def) {
        int v = vdef_find(def, "j", 1);
        CHECK(v >= 0);
        CHECK_EQ_INT(vstore_blocks_scan(d, def->idx, (unsigned)v, NULL, 0, false, 100000,
                                        count_partial, &n, &more, &last), 0);
        vdef_free(def);
    }
    buf_destroy(&last);
    return n;
}

static void test_blocks(void) {
    mimeo_err err;
    mimeo_db *d;
    CHECK_EQ_INT(mimeo_db_create(env, "b", &err), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "b", &d, &err), 0);
    const char *ddoc = "{\"views\":{"
        "\"s\":{\"map\":\"function(doc) { if (doc.k !== undefined) emit(doc.k, doc.v); }\",\"reduce\":\"_sum\"},"
        "\"c\":{\"map\":\"function(doc) { if (doc.k !== undefined) emit(doc.k, doc.v); }\",\"reduce\":\"_count\"},"
        "\"j\":{\"map\":\"function(doc) { if (doc.k !== undefined) emit(doc.k, doc.v); }\","
        "\"reduce\":\"function(k, v, re) { return sum(v); }\"},"
        "\"ga\":{\"map\":\"function(doc) { if (doc.k !== undefined) emit([doc.k % 4, doc.k], doc.v); }\",\"reduce\":\"_sum\"},"
        "\"gj\":{\"map\":\"function(doc) { if (doc.k !== undefined) emit([doc.k % 4, doc.k], doc.v); }\","
        "\"reduce\":\"function(k, v, re) { return sum(v); }\"}}}";
    mimeo_put_result pr;
    CHECK_EQ_INT(mimeo_doc_put(d, "_design/m", 9, ddoc, strlen(ddoc), NULL, &pr, &err), 0);
    mimeo_free(pr.id);
    /* the first rows in one bulk write */
    buf bulk;
    buf_init(&bulk, 0);
    buf_puts(&bulk, "{\"docs\":[");
    for (int i = 0; i < BDOCS; i++) {
        bkey[i] = (int)(rnd() % 40);
        bval[i] = (int)(rnd() % 1000);
        buf_printf(&bulk, "%s{\"_id\":\"b%04d\",\"k\":%d,\"v\":%d}", i ? "," : "", i, bkey[i], bval[i]);
    }
    buf_puts(&bulk, "]}");
    char *out = NULL;
    size_t out_len;
    CHECK_EQ_INT(mimeo_bulk_docs(d, bulk.data, bulk.len, &out, &out_len, &err), 0);
    /* the revisions, for later edits */
    jval *res = NULL;
    CHECK_EQ_INT(json_tree_parse(out, out_len, NULL, &res, NULL), 0);
    for (int i = 0; res && i < BDOCS && (size_t)i < res->count; i++) {
        const jval *rev = jval_get(res->items[i], "rev");
        if (rev) snprintf(brev[i], sizeof brev[i], "%s", rev->str);
        blive[i] = true;
    }
    jval_free(res);
    mimeo_free(out);
    buf_destroy(&bulk);
    for (int round = 0; round < 8; round++) {
        if (round) {
            int edits = 1 + (int)(rnd() % 12);
            for (int e = 0; e < edits; e++) {
                int i = (int)(rnd() % BDOCS);
                if (blive[i] && rnd() % 3 == 0) {
                    char id[16];
                    snprintf(id, sizeof id, "b%04d", i);
                    CHECK_EQ_INT(mimeo_doc_delete(d, id, strlen(id), brev[i], &pr, &err), 0);
                    snprintf(brev[i], sizeof brev[i], "%s", pr.rev);
                    mimeo_free(pr.id);
                    blive[i] = false;
                    continue;
                }
                bkey[i] = (int)(rnd() % 40);
                bval[i] = (int)(rnd() % 1000);
                bput(d, i);
            }
        }
        int lo = (int)(rnd() % 20), hi = lo + (int)(rnd() % 20);
        long sum = 0, rsum = 0, rcount = 0, before = 0, live = 0;
        for (int i = 0; i < BDOCS; i++) {
            if (!blive[i]) continue;
            live++;
            sum += bval[i];
            if (bkey[i] >= lo && bkey[i] <= hi) { rsum += bval[i]; rcount++; }
            if (bkey[i] < lo) before++;
        }
        char want[256], params[128];
        buf reply;
        buf_init(&reply, 0);
        read_all(d, "s", NULL, &reply);
        snprintf(want, sizeof want, "{\"rows\":[\n{\"key\":null,\"value\":%ld}\n]}\n", sum);
        CHECK_EQ_STR(buf_cstr(&reply), want);
        buf_reset(&reply);
        snprintf(params, sizeof params, "{\"startkey\":%d,\"endkey\":%d}", lo, hi);
        read_all(d, "s", params, &reply);
        snprintf(want, sizeof want, "{\"rows\":[\n{\"key\":null,\"value\":%ld}\n]}\n", rsum);
        if (rcount) CHECK_EQ_STR(buf_cstr(&reply), want);
        /* the JavaScript reduce: stored partials of whole blocks, rereduced with the rows of
         * the edges, equal the sums of the model */
        buf_reset(&reply);
        read_all(d, "j", params, &reply);
        if (rcount) CHECK_EQ_STR(buf_cstr(&reply), want);
        buf_reset(&reply);
        read_all(d, "j", NULL, &reply);
        snprintf(want, sizeof want, "{\"rows\":[\n{\"key\":null,\"value\":%ld}\n]}\n", sum);
        CHECK_EQ_STR(buf_cstr(&reply), want);
        CHECK(js_partials(d) * VSTORE_BLOCK_ROWS >= (size_t)live / 2);
        snprintf(want, sizeof want, "{\"rows\":[\n{\"key\":null,\"value\":%ld}\n]}\n", rsum);
        buf_reset(&reply);
        read_all(d, "c", params, &reply);
        snprintf(want, sizeof want, "{\"rows\":[\n{\"key\":null,\"value\":%ld}\n]}\n", rcount);
        if (rcount) CHECK_EQ_STR(buf_cstr(&reply), want);
        /* grouped: group_level=1 over [k % 4, k] (groups of hundreds of rows, so whole blocks
         * fold in by their partials), both directions, a range, skip and limit; group=true */
        long gsum[4] = {0};
        for (int i = 0; i < BDOCS; i++)
            if (blive[i]) gsum[bkey[i] % 4] += bval[i];
        static const char *const gq[] = {
            "{\"group_level\":1}", "{\"group_level\":1,\"descending\":true}",
            "{\"group_level\":1,\"startkey\":[1],\"endkey\":[2,{}]}",
            "{\"group_level\":1,\"descending\":true,\"startkey\":[2,{}],\"endkey\":[1]}",
            "{\"group_level\":1,\"skip\":1,\"limit\":2}"};
        static const int gfrom[] = {0, 3, 1, 2, 1}, gto[] = {3, 0, 2, 1, 2};
        for (size_t g = 0; g < sizeof gq / sizeof gq[0]; g++) {
            buf gw;
            buf_init(&gw, 0);
            buf_puts(&gw, "{\"rows\":[\n");
            int step = gfrom[g] <= gto[g] ? 1 : -1;
            for (int k = gfrom[g];; k += step) {
                buf_printf(&gw, "%s{\"key\":[%d],\"value\":%ld}", k == gfrom[g] ? "" : ",\n", k, gsum[k]);
                if (k == gto[g]) break;
            }
            buf_puts(&gw, "\n]}\n");
            for (int v = 0; v < 2; v++) {
                buf_reset(&reply);
                read_all(d, v ? "gj" : "ga", gq[g], &reply);
                if (strcmp(buf_cstr(&reply), buf_cstr(&gw)))
                    fprintf(stderr, "round %d %s %s\n", round, v ? "gj" : "ga", gq[g]);
                CHECK_EQ_STR(buf_cstr(&reply), buf_cstr(&gw));
            }
            buf_destroy(&gw);
        }
        /* group=true: one group per key, every one smaller than a block */
        buf_reset(&reply);
        read_all(d, "gj", "{\"group\":true,\"startkey\":[1,5],\"endkey\":[1,5]}", &reply);
        long g15 = 0;
        for (int i = 0; i < BDOCS; i++)
            if (blive[i] && bkey[i] == 5) g15 += bval[i];
        snprintf(want, sizeof want, "{\"rows\":[\n{\"key\":[1,5],\"value\":%ld}\n]}\n", g15);
        CHECK_EQ_STR(buf_cstr(&reply), want);
        buf_reset(&reply);
        snprintf(params, sizeof params, "{\"startkey\":%d,\"limit\":0,\"reduce\":false}", lo);
        read_all(d, "c", params, &reply);
        snprintf(want, sizeof want, "{\"total_rows\":%ld,\"offset\":%ld,\"rows\":[\n\n]}\n", live, before);
        CHECK_EQ_STR(buf_cstr(&reply), want);
        buf_reset(&reply);
        snprintf(params, sizeof params, "{\"startkey\":%d,\"limit\":0,\"reduce\":false,\"descending\":true}", hi);
        read_all(d, "c", params, &reply);
        long after = 0;
        for (int i = 0; i < BDOCS; i++) if (blive[i] && bkey[i] > hi) after++;
        snprintf(want, sizeof want, "{\"total_rows\":%ld,\"offset\":%ld,\"rows\":[\n\n]}\n", live, after);
        CHECK_EQ_STR(buf_cstr(&reply), want);
        buf_destroy(&reply);
    }
    mimeo_db_close(d);
}

int main(void) {
    const char *js = getenv("MIMEO_JS");
    if (!js || !js[0]) js = "build/mimeo-js";
    snprintf(dir, sizeof dir, "/tmp/mimeo-test-view-XXXXXX");
    if (!mkdtemp(dir)) return 1;
    mimeo_options opts = {.query_server = js, .os_process_timeout = 10000};
    mimeo_err err;
    CHECK_EQ_INT(mimeo_env_open(dir, &opts, &env, &err), 0);
    CHECK_EQ_INT(mimeo_db_create(env, "v", &err), 0);
    CHECK_EQ_INT(mimeo_db_open(env, "v", &db, &err), 0);
    RUN(test_store_order_and_updates);
    RUN(test_store_long_keys_and_ids);
    RUN(test_store_rank_respread);
    RUN(test_store_list_and_drop);
    if (access(js, X_OK) != 0) fprintf(stderr, "test_view: %s missing (make build/mimeo-js)\n", js);
    else {
        RUN(test_model);
        RUN(test_long_keys);
        RUN(test_blocks);
    }
    mimeo_env_close(env);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_report();
}
