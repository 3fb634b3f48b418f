/* Secondary-index rows in LMDB. One table, "mango" (MDB_DUPSORT), opened on first use by a
 * write job; its handle is kept in the LMDB environment's user context (dbi + 1), so every
 * environment carries its own and nothing needs freeing at close.
 *
 *   key                                       dup values
 *   ----------------------------------------  -----------------------------------------
 *   dbid(8) · 0(8) · idx(8)                   "1": the index exists (directory)
 *   dbid(8) · idx(8) · 00                     seq(8): rows are up to date to this seq
 *   dbid(8) · idx(8) · 01 · key               document ids (sorted: ties in id order)
 *   dbid(8) · idx(8) · 02 · md5(doc id)(16)   the document's row key (for removal)
 *
 * Index ids are non-zero, so the directory never mixes with rows. Keys longer than
 * DBIDX_KEY_MAX are cut: such a row sorts at or before its true place, and among rows
 * sharing the cut prefix in id order. Readers widen their ranges accordingly and re-check
 * every document, so a cut key costs order only among those long-keyed rows.
 * A database's rows go with the database: src/db/env.c drops every key under its id, in
 * chunks, this table included. */
#include "index.h"

#include <lmdb.h>
#include <nettle/md5.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "db_int.h"

#define KIND_SEQ 0x00
#define KIND_ROW 0x01
#define KIND_REV 0x02
#define PREFIX   17  /* dbid · idx · kind */
#define DROP_CHUNK 20000

/* ---- the table -------------------------------------------------------------------------- */

static bool dbi_get(MDB_env *env, MDB_dbi *dbi) {
    uintptr_t v = (uintptr_t)mdb_env_get_userctx(env);
    if (!v) return false;
    *dbi = (MDB_dbi)(v - 1);
    return true;
}

typedef struct open_job { MDB_dbi dbi; } open_job;

static int job_open(MDB_txn *txn, void *arg) {
    open_job *j = arg;
    return store_err(mdb_dbi_open(txn, "mango", MDB_CREATE | MDB_DUPSORT, &j->dbi));
}

/* The table's handle, opening (creating) it once. A handle opened in a transaction is
 * published only after that transaction committed: LMDB closes it if the group aborts. */
static int table(mimeo_db *db, MDB_dbi *dbi) {
    store *s = db->env->store;
    MDB_txn *txn;
    int rc = store_read_begin(s, &txn);
    if (rc) return rc;
    MDB_env *env = mdb_txn_env(txn);
    bool have = dbi_get(env, dbi);
    store_read_end(s, txn);
    if (have) return 0;
    open_job j = {0};
    rc = store_write(s, job_open, &j);
    if (rc) return rc;
    mdb_env_set_userctx(env, (void *)(uintptr_t)(j.dbi + 1));
    *dbi = j.dbi;
    return 0;
}

static int dbid_of(mimeo_db *db, uint64_t *dbid) {
    db_meta m;
    int rc = db_meta_snapshot(db, &m);
    if (!rc) *dbid = m.dbid;
    return rc;
}

static size_t prefix(unsigned char *k, uint64_t dbid, uint64_t idx, unsigned char kind) {
    be64_put(k, dbid);
    be64_put(k + 8, idx);
    k[16] = kind;
    return PREFIX;
}

/* ---- reads ------------------------------------------------------------------------------- */

int dbidx_identity(mimeo_db *db, uintptr_t *env, uint64_t *dbid, uint64_t *created,
                   uint64_t *update_seq) {
    db_meta m;
    int rc = db_meta_snapshot(db, &m);
    if (rc) return rc;
    *env = (uintptr_t)db->env;
    *dbid = m.dbid;
    *created = m.created_us;
    *update_seq = m.update_seq;
    return 0;
}

int dbidx_seq(mimeo_db *db, uint64_t idx, uint64_t *seq) {
    *seq = 0;
    MDB_dbi dbi;
    uint64_t dbid;
    int rc = dbid_of(db, &dbid);
    if (!rc) rc = table(db, &dbi);
    if (rc) return rc;
    MDB_txn *txn;
    if ((rc = store_read_begin(db->env->store, &txn))) return rc;
    unsigned char kb[PREFIX];
    MDB_val k = {prefix(kb, dbid, idx, KIND_SEQ), kb}, v;
    int mrc = mdb_get(txn, dbi, &k, &v);
    if (mrc == 0 && v.mv_size == 8) *seq = be64_get(v.mv_data);
    else if (mrc && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    store_read_end(db->env->store, txn);
    return rc;
}

static int key_cmp(const unsigned char *a, size_t an, const unsigned char *b, size_t bn) {
    size_t n = an < bn ? an : bn;
    int r = n ? memcmp(a, b, n) : 0;
    if (r) return r;
    return an < bn ? -1 : an > bn ? 1 : 0;
}

int dbidx_scan(mimeo_db *db, uint64_t idx, const unsigned char *key, size_t key_len,
               const char *id, size_t id_len, bool desc, size_t max, dbidx_row_fn fn,
               void *ctx) {
    MDB_dbi dbi;
    uint64_t dbid;
    int rc = dbid_of(db, &dbid);
    if (!rc) rc = table(db, &dbi);
    if (rc) return rc;
    if (key && key_len > DBIDX_KEY_MAX) key_len = DBIDX_KEY_MAX;
    store *s = db->env->store;
    MDB_txn *txn;
    if ((rc = store_read_begin(s, &txn))) return rc;
    MDB_cursor *cur;
    if ((rc = store_err(mdb_cursor_open(txn, dbi, &cur)))) {
        store_read_end(s, txn);
        return rc;
    }
    unsigned char kb[PREFIX + DBIDX_KEY_MAX + 1];
    size_t pl = prefix(kb, dbid, idx, KIND_ROW);
    MDB_val k, v;
    int mrc;
    /* position */
    if (!desc) {
        size_t n = pl;
        if (key) { memcpy(kb + pl, key, key_len); n += key_len; }
        k = (MDB_val){n, kb};
        if (key && id) {
            v = (MDB_val){id_len, (void *)id};
            mrc = mdb_cursor_get(cur, &k, &v, MDB_GET_BOTH_RANGE);
            if (mrc == 0 && v.mv_size == id_len && memcmp(v.mv_data, id, id_len) == 0)
                mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            else if (mrc == MDB_NOTFOUND) {
                /* no id ≥ the given one under this key (or no such key): next key */
                k = (MDB_val){n, kb};
                mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
                if (mrc == 0 && key_cmp(k.mv_data, k.mv_size, kb, n) == 0)
                    mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_NODUP);
            }
        } else {
            mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        }
    } else {
        /* descending: find the first key above the position, then step back */
        size_t n = pl;
        bool exact_id = key && id;
        if (key) { memcpy(kb + pl, key, key_len); n += key_len; }
        else { kb[pl - 1] = KIND_ROW + 1; }
        k = (MDB_val){key ? n : pl, kb};
        if (exact_id) {
            v = (MDB_val){id_len, (void *)id};
            mrc = mdb_cursor_get(cur, &k, &v, MDB_GET_BOTH_RANGE);
            if (mrc == 0) {
                mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
            } else if (mrc == MDB_NOTFOUND) {
                /* every id under the key is below id (or the key is gone): the last row at
                 * or below the key */
                k = (MDB_val){n, kb};
                mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
                if (mrc == 0 && key_cmp(k.mv_data, k.mv_size, kb, n) == 0)
                    mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST_DUP);
                else if (mrc == 0) mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
                else if (mrc == MDB_NOTFOUND) mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
            }
        } else {
            mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            if (mrc == 0 && key && key_cmp(k.mv_data, k.mv_size, kb, n) == 0)
                mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST_DUP);
            else if (mrc == 0) mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
            else if (mrc == MDB_NOTFOUND) mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
        }
        kb[pl - 1] = KIND_ROW;
    }
    size_t count = 0;
    while (mrc == 0 && count < max) {
        if (k.mv_size < pl || memcmp(k.mv_data, kb, pl) != 0) break; /* left the index */
        count++;
        rc = fn(ctx, (const unsigned char *)k.mv_data + pl, k.mv_size - pl, v.mv_data,
                v.mv_size);
        if (rc) break;
        mrc = mdb_cursor_get(cur, &k, &v, desc ? MDB_PREV : MDB_NEXT);
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    mdb_cursor_close(cur);
    store_read_end(s, txn);
    return rc;
}

int dbidx_list(mimeo_db *db, int (*fn)(void *ctx, uint64_t idx), void *ctx) {
    MDB_dbi dbi;
    uint64_t dbid;
    int rc = dbid_of(db, &dbid);
    if (!rc) rc = table(db, &dbi);
    if (rc) return rc;
    /* collect first: fn may read the store, which must not nest in our snapshot */
    uint64_t *ids = NULL;
    size_t n = 0, cap = 0;
    MDB_txn *txn;
    if ((rc = store_read_begin(db->env->store, &txn))) return rc;
    MDB_cursor *cur;
    rc = store_err(mdb_cursor_open(txn, dbi, &cur));
    if (!rc) {
        unsigned char kb[16];
        be64_put(kb, dbid);
        be64_put(kb + 8, 0);
        MDB_val k = {16, kb}, v;
        int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        while (mrc == 0 && k.mv_size == 24 && memcmp(k.mv_data, kb, 16) == 0) {
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                uint64_t *g = realloc(ids, cap * sizeof *g);
                if (!g) { rc = MIMEO_ENOMEM; break; }
                ids = g;
            }
            ids[n++] = be64_get((unsigned char *)k.mv_data + 16);
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_NODUP);
        }
        mdb_cursor_close(cur);
    }
    store_read_end(db->env->store, txn);
    for (size_t i = 0; !rc && i < n; i++) rc = fn(ctx, ids[i]);
    free(ids);
    return rc;
}

/* ---- writes ------------------------------------------------------------------------------ */

typedef struct apply_job {
    MDB_dbi             dbi;
    uint64_t            dbid, idx, from, to;
    const dbidx_change *ch;
    size_t              n;
} apply_job;

static void rev_key(unsigned char *kb, uint64_t dbid, uint64_t idx, const char *id, size_t n) {
    prefix(kb, dbid, idx, KIND_REV);
    struct md5_ctx c;
    md5_init(&c);
    md5_update(&c, n, (const uint8_t *)id);
    md5_digest(&c, MD5_DIGEST_SIZE, kb + PREFIX);
}

static int job_apply(MDB_txn *txn, void *arg) {
    apply_job *j = arg;
    unsigned char sk[PREFIX];
    MDB_val k = {prefix(sk, j->dbid, j->idx, KIND_SEQ), sk}, v;
    uint64_t cur = 0;
    int mrc = mdb_get(txn, j->dbi, &k, &v);
    if (mrc == 0 && v.mv_size == 8) cur = be64_get(v.mv_data);
    else if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
    if (cur != j->from) return MIMEO_ECONFLICT;
    if (mrc == MDB_NOTFOUND) {
        /* first write: enter the index in the directory */
        unsigned char dk[24];
        be64_put(dk, j->dbid);
        be64_put(dk + 8, 0);
        be64_put(dk + 16, j->idx);
        MDB_val dkey = {24, dk}, dval = {1, "1"};
        int rc = store_err(mdb_put(txn, j->dbi, &dkey, &dval, 0));
        if (rc) return rc;
    }
    unsigned char rk[PREFIX + MD5_DIGEST_SIZE];
    unsigned char fk[PREFIX + DBIDX_KEY_MAX];
    prefix(fk, j->dbid, j->idx, KIND_ROW);
    for (size_t i = 0; i < j->n; i++) {
        const dbidx_change *c = &j->ch[i];
        rev_key(rk, j->dbid, j->idx, c->id, c->id_len);
        MDB_val rkey = {sizeof rk, rk}, old;
        /* an index at sequence 0 has no rows yet (the first build): nothing to look up; a
         * batch names each document once, as the changes feed does */
        mrc = j->from == 0 ? MDB_NOTFOUND : mdb_get(txn, j->dbi, &rkey, &old);
        if (mrc == 0) {
            /* remove the document's old row, then its reverse entry */
            size_t on = old.mv_size > DBIDX_KEY_MAX ? DBIDX_KEY_MAX : old.mv_size;
            memcpy(fk + PREFIX, old.mv_data, on);
            MDB_val okey = {PREFIX + on, fk}, oid = {c->id_len, (void *)c->id};
            mrc = mdb_del(txn, j->dbi, &okey, &oid);
            if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
            mrc = mdb_del(txn, j->dbi, &rkey, NULL);
            if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
        } else if (mrc != MDB_NOTFOUND) {
            return store_err(mrc);
        }
        if (!c->key) continue;
        size_t kn = c->key_len > DBIDX_KEY_MAX ? DBIDX_KEY_MAX : c->key_len;
        if (kn == 0) continue; /* keys are never empty (the caller encodes an array) */
        memcpy(fk + PREFIX, c->key, kn);
        MDB_val nkey = {PREFIX + kn, fk}, nid = {c->id_len, (void *)c->id};
        int rc = store_err(mdb_put(txn, j->dbi, &nkey, &nid, 0));
        MDB_val rval = {kn, (void *)c->key};
        if (!rc) rc = store_err(mdb_put(txn, j->dbi, &rkey, &rval, 0));
        if (rc) return rc;
    }
    unsigned char sv[8];
    be64_put(sv, j->to);
    /* DUPSORT: replace the one value */
    mrc = mdb_del(txn, j->dbi, &k, NULL);
    if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
    MDB_val nv = {8, sv};
    k = (MDB_val){PREFIX, sk};
    return store_err(mdb_put(txn, j->dbi, &k, &nv, 0));
}

int dbidx_apply(mimeo_db *db, uint64_t idx, uint64_t from, uint64_t to,
                const dbidx_change *changes, size_t n) {
    apply_job j = {0, 0, idx, from, to, changes, n};
    int rc = dbid_of(db, &j.dbid);
    if (!rc) rc = table(db, &j.dbi);
    if (!rc) rc = store_write(db->env->store, job_apply, &j);
    return rc;
}

int dbidx_drop(mimeo_db *db, uint64_t idx) {
    uint64_t dbid;
    MDB_dbi dbi;
    int rc = dbid_of(db, &dbid);
    if (!rc) rc = table(db, &dbi);
    if (!rc) rc = store_drop_index(db->env->store, dbi, dbid, idx, DROP_CHUNK);
    return rc;
}
