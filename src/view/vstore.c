/* View index rows in LMDB. One table, "views", opened on first use by a write job; its
 * handle is remembered per LMDB environment (so a reopened environment opens it again).
 *
 *   key                                              value
 *   -----------------------------------------------  ---------------------------------------
 *   dbid(8) · 0(8) · idx(8)                          info: the design document id (directory)
 *   dbid(8) · idx(8) · 00                            seq(8) · bytes(8) · nviews(2) · rows(8)×n
 *   dbid(8) · idx(8) · 01 · view(2) · rk             varint · key JSON · varint · id · value JSON
 *   dbid(8) · idx(8) · 02 · docref                   the document's rows: (view(2) · varint ·
 *                                                    rk)… so an update can remove them
 *
 *   rk     = ckey · idpart · idlen(2) · n(4)
 *   ckey   = collate_key_put of the emitted key, cut to VSTORE_CKEY_MAX bytes
 *   idpart = the document id, or when it does not fit the key, its head and 8 bytes of its MD5
 *   n      = the emit's number within the document (a document may emit one key twice)
 *   docref = the document id, or its MD5 when longer than DOCREF_MAX
 *
 * Collation keys are prefix-free, so rows sort by key, then by id bytes. A key cut at
 * VSTORE_CKEY_MAX sorts with the keys that share those bytes, those rows in id order; the
 * query side compares bounds on the same cut bytes. A database's rows go with the database:
 * src/db/env.c drops every key under its id, this table included. */
#include "vstore.h"

#include <lmdb.h>
#include <nettle/md5.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../db/db_int.h"

#define KIND_META 0x00
#define KIND_ROW  0x01
#define KIND_DOC  0x02
#define PREFIX    17           /* dbid · idx · kind */
#define VPREFIX   (PREFIX + 2) /* … · view */
#define DOCREF_MAX 400
#define DROP_CHUNK 20000
#define RK_MAX    (STORE_KEY_MAX - VPREFIX)

/* ---- the table --------------------------------------------------------------------------- */

typedef struct dbi_slot {
    MDB_env         *env;
    MDB_dbi          dbi;
    struct dbi_slot *next;
} dbi_slot;

static pthread_mutex_t dbi_lock = PTHREAD_MUTEX_INITIALIZER;
static dbi_slot *dbi_slots;

static bool dbi_find(MDB_env *env, MDB_dbi *dbi) {
    bool found = false;
    pthread_mutex_lock(&dbi_lock);
    for (dbi_slot *s = dbi_slots; s; s = s->next)
        if (s->env == env) {
            *dbi = s->dbi;
            found = true;
            break;
        }
    pthread_mutex_unlock(&dbi_lock);
    return found;
}

static int dbi_remember(MDB_env *env, MDB_dbi dbi) {
    pthread_mutex_lock(&dbi_lock);
    for (dbi_slot *s = dbi_slots; s; s = s->next)
        if (s->env == env) {
            s->dbi = dbi;
            pthread_mutex_unlock(&dbi_lock);
            return 0;
        }
    dbi_slot *s = malloc(sizeof *s);
    if (s) {
        s->env = env;
        s->dbi = dbi;
        s->next = dbi_slots;
        dbi_slots = s;
    }
    pthread_mutex_unlock(&dbi_lock);
    return s ? 0 : MIMEO_ENOMEM;
}

typedef struct open_job { MDB_dbi dbi; } open_job;

static int job_open(MDB_txn *txn, void *arg) {
    open_job *j = arg;
    return store_err(mdb_dbi_open(txn, "views", MDB_CREATE, &j->dbi));
}

/* The handle, opened once per environment; published after the opening job committed. */
static int table(mimeo_db *db, MDB_dbi *dbi) {
    store *s = db->env->store;
    MDB_txn *txn;
    int rc = store_read_begin(s, &txn);
    if (rc) return rc;
    MDB_env *env = mdb_txn_env(txn);
    bool have = dbi_find(env, dbi);
    store_read_end(s, txn);
    if (have) return 0;
    open_job j = {0};
    if ((rc = store_write(s, job_open, &j))) return rc;
    if ((rc = dbi_remember(env, j.dbi))) return rc;
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

static size_t vprefix(unsigned char *k, uint64_t dbid, uint64_t idx, unsigned view) {
    prefix(k, dbid, idx, KIND_ROW);
    k[17] = (unsigned char)(view >> 8);
    k[18] = (unsigned char)view;
    return VPREFIX;
}

static size_t docref(unsigned char *k, uint64_t dbid, uint64_t idx, const char *id, size_t n) {
    prefix(k, dbid, idx, KIND_DOC);
    if (n <= DOCREF_MAX) {
        memcpy(k + PREFIX, id, n);
        return PREFIX + n;
    }
    struct md5_ctx c;
    md5_init(&c);
    md5_update(&c, n, (const uint8_t *)id);
    md5_digest(&c, MD5_DIGEST_SIZE, k + PREFIX);
    return PREFIX + MD5_DIGEST_SIZE;
}

/* ---- meta -------------------------------------------------------------------------------- */

static int meta_decode(vstore_meta *m, const MDB_val *v) {
    const unsigned char *p = v->mv_data;
    if (v->mv_size < 18) return MIMEO_ECORRUPT;
    m->seq = be64_get(p);
    m->bytes = be64_get(p + 8);
    m->nviews = (unsigned)p[16] << 8 | p[17];
    if (m->nviews > VSTORE_VIEWS_MAX || v->mv_size != 18 + 8 * (size_t)m->nviews)
        return MIMEO_ECORRUPT;
    for (unsigned i = 0; i < m->nviews; i++) m->rows[i] = be64_get(p + 18 + 8 * i);
    return 0;
}

static size_t meta_encode(const vstore_meta *m, unsigned char *p) {
    be64_put(p, m->seq);
    be64_put(p + 8, m->bytes);
    p[16] = (unsigned char)(m->nviews >> 8);
    p[17] = (unsigned char)m->nviews;
    for (unsigned i = 0; i < m->nviews; i++) be64_put(p + 18 + 8 * i, m->rows[i]);
    return 18 + 8 * (size_t)m->nviews;
}

int vstore_meta_get(mimeo_db *db, uint64_t idx, vstore_meta *m) {
    memset(m, 0, sizeof *m);
    MDB_dbi dbi;
    uint64_t dbid;
    int rc = dbid_of(db, &dbid);
    if (!rc) rc = table(db, &dbi);
    if (rc) return rc;
    MDB_txn *txn;
    if ((rc = store_read_begin(db->env->store, &txn))) return rc;
    unsigned char kb[PREFIX];
    MDB_val k = {prefix(kb, dbid, idx, KIND_META), kb}, v;
    int mrc = mdb_get(txn, dbi, &k, &v);
    if (mrc == 0) rc = meta_decode(m, &v);
    else if (mrc != MDB_NOTFOUND) rc = store_err(mrc);
    store_read_end(db->env->store, txn);
    return rc;
}

/* ---- writes ------------------------------------------------------------------------------ */

typedef struct apply_job {
    MDB_dbi           dbi;
    uint64_t          dbid, idx, from, to;
    unsigned          nviews;
    const char       *info;
    size_t            info_len;
    const vstore_doc *docs;
    size_t            n;
    buf               scratch;
} apply_job;

/* rk of one emit into out (RK_MAX bytes); returns its length. */
static size_t rk_make(unsigned char *out, const unsigned char *ckey, size_t ckey_len,
                      const char *id, size_t id_len, uint32_t n) {
    size_t cl = ckey_len > VSTORE_CKEY_MAX ? VSTORE_CKEY_MAX : ckey_len;
    memcpy(out, ckey, cl);
    size_t room = RK_MAX - 6 - cl, p = cl;
    if (id_len <= room) {
        memcpy(out + p, id, id_len);
        p += id_len;
    } else {
        memcpy(out + p, id, room - 8);
        p += room - 8;
        struct md5_ctx c;
        uint8_t d[MD5_DIGEST_SIZE];
        md5_init(&c);
        md5_update(&c, id_len, (const uint8_t *)id);
        md5_digest(&c, sizeof d, d);
        memcpy(out + p, d, 8);
        p += 8;
    }
    size_t il = id_len > 0xffff ? 0xffff : id_len;
    out[p++] = (unsigned char)(il >> 8);
    out[p++] = (unsigned char)il;
    out[p++] = (unsigned char)(n >> 24);
    out[p++] = (unsigned char)(n >> 16);
    out[p++] = (unsigned char)(n >> 8);
    out[p++] = (unsigned char)n;
    return p;
}

static int remove_old(MDB_txn *txn, apply_job *j, vstore_meta *m, MDB_val *dkey) {
    MDB_val old;
    int mrc = mdb_get(txn, j->dbi, dkey, &old);
    if (mrc == MDB_NOTFOUND) return 0;
    if (mrc) return store_err(mrc);
    /* copy: deleting rows may move the page the list lives on */
    buf_reset(&j->scratch);
    if (buf_put(&j->scratch, old.mv_data, old.mv_size)) return MIMEO_ENOMEM;
    const unsigned char *p = (const unsigned char *)j->scratch.data;
    const unsigned char *end = p + j->scratch.len;
    unsigned char kb[STORE_KEY_MAX];
    while (p < end) {
        if (end - p < 2) return MIMEO_ECORRUPT;
        unsigned view = (unsigned)p[0] << 8 | p[1];
        p += 2;
        uint64_t len;
        if (varint_get(&p, end, &len) || len > RK_MAX || (uint64_t)(end - p) < len)
            return MIMEO_ECORRUPT;
        size_t kn = vprefix(kb, j->dbid, j->idx, view);
        memcpy(kb + kn, p, len);
        p += len;
        MDB_val rk = {kn + len, kb}, rv;
        mrc = mdb_get(txn, j->dbi, &rk, &rv);
        if (mrc == MDB_NOTFOUND) continue;
        if (mrc) return store_err(mrc);
        uint64_t sz = rk.mv_size + rv.mv_size;
        m->bytes = m->bytes > sz ? m->bytes - sz : 0;
        if (view < m->nviews && m->rows[view]) m->rows[view]--;
        if ((mrc = mdb_del(txn, j->dbi, &rk, NULL))) return store_err(mrc);
    }
    mrc = mdb_del(txn, j->dbi, dkey, NULL);
    return mrc && mrc != MDB_NOTFOUND ? store_err(mrc) : 0;
}

static int job_apply(MDB_txn *txn, void *arg) {
    apply_job *j = arg;
    unsigned char mk[PREFIX];
    MDB_val k = {prefix(mk, j->dbid, j->idx, KIND_META), mk}, v;
    vstore_meta *m = calloc(1, sizeof *m);
    if (!m) return MIMEO_ENOMEM;
    int rc = 0;
    int mrc = mdb_get(txn, j->dbi, &k, &v);
    if (mrc == 0) rc = meta_decode(m, &v);
    else if (mrc != MDB_NOTFOUND) rc = store_err(mrc);
    if (!rc && m->seq != j->from) rc = MIMEO_ECONFLICT;
    if (!rc && mrc == MDB_NOTFOUND) {
        unsigned char dk[24];
        be64_put(dk, j->dbid);
        be64_put(dk + 8, 0);
        be64_put(dk + 16, j->idx);
        MDB_val dkey = {24, dk}, dval = {j->info_len, (void *)j->info};
        rc = store_err(mdb_put(txn, j->dbi, &dkey, &dval, 0));
    }
    if (m->nviews < j->nviews) m->nviews = j->nviews;
    unsigned char dk[STORE_KEY_MAX], rkb[STORE_KEY_MAX];
    buf list, val;
    buf_init(&list, 0);
    buf_init(&val, 0);
    for (size_t i = 0; !rc && i < j->n; i++) {
        const vstore_doc *d = &j->docs[i];
        MDB_val dkey = {docref(dk, j->dbid, j->idx, d->id, d->id_len), dk};
        if ((rc = remove_old(txn, j, m, &dkey))) break;
        if (!d->n) continue;
        buf_reset(&list);
        for (size_t e = 0; !rc && e < d->n; e++) {
            const vstore_emit *em = &d->emits[e];
            if (em->view >= VSTORE_VIEWS_MAX) { rc = MIMEO_EINVAL; break; }
            size_t kn = vprefix(rkb, j->dbid, j->idx, em->view);
            size_t rl = rk_make(rkb + kn, em->ckey, em->ckey_len, d->id, d->id_len,
                                (uint32_t)e);
            buf_reset(&val);
            if (buf_put_varint(&val, em->key_len) || buf_put(&val, em->key, em->key_len) ||
                buf_put_varint(&val, d->id_len) || buf_put(&val, d->id, d->id_len) ||
                buf_put(&val, em->value, em->value_len)) {
                rc = MIMEO_ENOMEM;
                break;
            }
            MDB_val rk = {kn + rl, rkb}, rv = {val.len, val.data};
            if ((rc = store_err(mdb_put(txn, j->dbi, &rk, &rv, 0)))) break;
            m->bytes += rk.mv_size + rv.mv_size;
            if (em->view >= m->nviews) m->nviews = em->view + 1;
            m->rows[em->view]++;
            unsigned char vb[2] = {(unsigned char)(em->view >> 8), (unsigned char)em->view};
            if (buf_put(&list, vb, 2) || buf_put_varint(&list, rl) ||
                buf_put(&list, rkb + kn, rl))
                rc = MIMEO_ENOMEM;
        }
        if (!rc) {
            MDB_val lv = {list.len, list.data};
            rc = store_err(mdb_put(txn, j->dbi, &dkey, &lv, 0));
        }
    }
    if (!rc) {
        m->seq = j->to;
        unsigned char mv[18 + 8 * VSTORE_VIEWS_MAX];
        MDB_val nv = {meta_encode(m, mv), mv};
        k = (MDB_val){PREFIX, mk};
        rc = store_err(mdb_put(txn, j->dbi, &k, &nv, 0));
    }
    buf_destroy(&list);
    buf_destroy(&val);
    free(m);
    return rc;
}

int vstore_apply(mimeo_db *db, uint64_t idx, unsigned nviews, const char *info,
                 size_t info_len, uint64_t from, uint64_t to, const vstore_doc *docs,
                 size_t n) {
    if (nviews > VSTORE_VIEWS_MAX) return MIMEO_EINVAL;
    apply_job j = {.idx = idx, .from = from, .to = to, .nviews = nviews, .info = info,
                   .info_len = info_len, .docs = docs, .n = n};
    buf_init(&j.scratch, 0);
    int rc = dbid_of(db, &j.dbid);
    if (!rc) rc = table(db, &j.dbi);
    if (!rc) rc = store_write(db->env->store, job_apply, &j);
    buf_destroy(&j.scratch);
    return rc;
}

/* ---- reads ------------------------------------------------------------------------------- */

static int row_decode(const MDB_val *k, const MDB_val *v, vstore_row *r) {
    const unsigned char *p = v->mv_data, *end = p + v->mv_size;
    uint64_t kl, il;
    if (varint_get(&p, end, &kl) || (uint64_t)(end - p) < kl) return MIMEO_ECORRUPT;
    r->key = (const char *)p;
    r->key_len = kl;
    p += kl;
    if (varint_get(&p, end, &il) || (uint64_t)(end - p) < il) return MIMEO_ECORRUPT;
    r->id = (const char *)p;
    r->id_len = il;
    p += il;
    r->value = (const char *)p;
    r->value_len = (size_t)(end - p);
    r->rk = (const unsigned char *)k->mv_data + VPREFIX;
    r->rk_len = k->mv_size - VPREFIX;
    return 0;
}

/* The smallest byte string above every string that starts with s[0..n): s with its last
 * non-0xFF byte incremented and the rest dropped. Returns the new length (0: none). */
static size_t successor(unsigned char *s, size_t n) {
    while (n > 0 && s[n - 1] == 0xff) n--;
    if (n) s[n - 1]++;
    return n;
}

int vstore_scan(mimeo_db *db, uint64_t idx, unsigned view, vstore_pos how,
                const unsigned char *pos, size_t pos_len, bool desc, size_t max,
                vstore_row_fn fn, void *ctx, bool *more, buf *last) {
    *more = false;
    buf_reset(last);
    MDB_dbi dbi;
    uint64_t dbid;
    int rc = dbid_of(db, &dbid);
    if (!rc) rc = table(db, &dbi);
    if (rc) return rc;
    if (pos_len > RK_MAX) pos_len = RK_MAX;
    store *s = db->env->store;
    MDB_txn *txn;
    if ((rc = store_read_begin(s, &txn))) return rc;
    MDB_cursor *cur;
    if ((rc = store_err(mdb_cursor_open(txn, dbi, &cur)))) {
        store_read_end(s, txn);
        return rc;
    }
    unsigned char vp[VPREFIX], kb[STORE_KEY_MAX + 1];
    vprefix(vp, dbid, idx, view);
    memcpy(kb, vp, VPREFIX);
    size_t n = VPREFIX;
    if (how != VSTORE_FIRST && pos) {
        memcpy(kb + n, pos, pos_len);
        n += pos_len;
    }
    MDB_val k, v;
    int mrc;
    if (!desc) {
        k = (MDB_val){n, kb};
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (how == VSTORE_AFTER && mrc == 0 && k.mv_size == n && memcmp(k.mv_data, kb, n) == 0)
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    } else {
        if (how == VSTORE_AFTER) {
            k = (MDB_val){n, kb};
            mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        } else {
            /* the first key above everything the position (or the view) prefixes */
            size_t sn = successor(kb, n);
            k = (MDB_val){sn, kb};
            mrc = sn ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE) : MDB_NOTFOUND;
        }
        if (mrc == 0) mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
        else if (mrc == MDB_NOTFOUND) mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    }
    size_t count = 0;
    MDB_val taken = {0, NULL};
    while (mrc == 0) {
        if (k.mv_size < VPREFIX || memcmp(k.mv_data, vp, VPREFIX) != 0) break;
        if (count == max) {
            *more = true;
            break;
        }
        count++;
        vstore_row r;
        if ((rc = row_decode(&k, &v, &r))) break;
        rc = fn(ctx, &r);
        if (rc == VSTORE_NEXT || rc == VSTORE_STOP) taken = k;
        if (rc) break;
        mrc = mdb_cursor_get(cur, &k, &v, desc ? MDB_PREV : MDB_NEXT);
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    /* copied before the snapshot ends: LMDB's bytes are only valid inside it */
    if (rc >= 0 && taken.mv_data &&
        buf_put(last, (const unsigned char *)taken.mv_data + VPREFIX, taken.mv_size - VPREFIX))
        rc = MIMEO_ENOMEM;
    mdb_cursor_close(cur);
    store_read_end(s, txn);
    return rc;
}

/* ---- directory and drops ------------------------------------------------------------------ */

typedef struct listed {
    uint64_t idx;
    char    *info;
    size_t   info_len;
} listed;

int vstore_list(mimeo_db *db, int (*fn)(void *ctx, uint64_t idx, const char *info,
                                         size_t info_len), void *ctx) {
    MDB_dbi dbi;
    uint64_t dbid;
    int rc = dbid_of(db, &dbid);
    if (!rc) rc = table(db, &dbi);
    if (rc) return rc;
    /* collect first: fn may read the store, which must not nest in this snapshot */
    listed *ls = NULL;
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
                size_t nc = cap ? cap * 2 : 8;
                listed *g = realloc(ls, nc * sizeof *g);
                if (!g) { rc = MIMEO_ENOMEM; break; }
                ls = g;
                cap = nc;
            }
            ls[n].idx = be64_get((unsigned char *)k.mv_data + 16);
            ls[n].info = malloc(v.mv_size + 1);
            if (!ls[n].info) { rc = MIMEO_ENOMEM; break; }
            memcpy(ls[n].info, v.mv_data, v.mv_size);
            ls[n].info[v.mv_size] = 0;
            ls[n].info_len = v.mv_size;
            n++;
            mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        mdb_cursor_close(cur);
    }
    store_read_end(db->env->store, txn);
    for (size_t i = 0; !rc && i < n; i++) rc = fn(ctx, ls[i].idx, ls[i].info, ls[i].info_len);
    for (size_t i = 0; i < n; i++) free(ls[i].info);
    free(ls);
    return rc;
}

typedef struct drop_job {
    MDB_dbi  dbi;
    uint64_t dbid, idx;
    bool     done;
} drop_job;

static int job_drop(MDB_txn *txn, void *arg) {
    drop_job *j = arg;
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(txn, j->dbi, &cur));
    if (rc) return rc;
    unsigned char kb[16];
    be64_put(kb, j->dbid);
    be64_put(kb + 8, j->idx);
    MDB_val k = {16, kb}, v;
    size_t budget = DROP_CHUNK;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (mrc == 0 && k.mv_size >= 16 && memcmp(k.mv_data, kb, 16) == 0 && budget) {
        if ((mrc = mdb_cursor_del(cur, 0))) break;
        budget--;
        /* as in store_delete_prefix: after a delete MDB_NEXT yields the following key */
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
    j->done = budget > 0;
    if (j->done) {
        unsigned char dk[24];
        be64_put(dk, j->dbid);
        be64_put(dk + 8, 0);
        be64_put(dk + 16, j->idx);
        MDB_val dkey = {24, dk};
        mrc = mdb_del(txn, j->dbi, &dkey, NULL);
        if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
    }
    return 0;
}

int vstore_drop(mimeo_db *db, uint64_t idx) {
    drop_job j = {0, 0, idx, false};
    int rc = dbid_of(db, &j.dbid);
    if (!rc) rc = table(db, &j.dbi);
    while (!rc && !j.done) rc = store_write(db->env->store, job_drop, &j);
    return rc;
}
