/* View index rows in LMDB. One table, "views", opened with the store's tables.
 *
 *   key                                              value
 *   -----------------------------------------------  ---------------------------------------
 *   dbid(8) · 0(8) · idx(8)                          info: the design document id (directory)
 *   dbid(8) · idx(8) · 00                            seq(8) · bytes(8) · nviews(2) · rows(8)×n
 *   dbid(8) · idx(8) · 01 · view(2) · rk             varint · key JSON · varint · id · value JSON
 *   dbid(8) · idx(8) · 02 · docref                   the document's rows: (view(2) · varint ·
 *                                                    rk)… so an update can remove them
 *   dbid(8) · idx(8) · 03 · view(2) · rk of first    a block: count(8) · varint · rk of its last
 *                                                    row · partial reduction JSON
 *   dbid(8) · idx(8) · 04 · view(2) · rk             a row changed since blocks were computed
 *   dbid(8) · idx(8) · 05 · view(2) · cut · rank(8)  a long key's whole collation key
 *
 *   rk     = ckey · idpart · idlen(2) · n(4)
 *   ckey   = collate_key_put of the emitted key; one longer than VSTORE_CKEY_MAX bytes is
 *            cut to them (cut) and followed by its rank
 *   rank   = a number whose order among the long keys of the view sharing cut is the order
 *            of their whole collation keys (equal keys share it)
 *   idpart = the document id, or when it does not fit the key, its head and 8 bytes of its MD5
 *   n      = the emit's number within the document (a document may emit one key twice)
 *   docref = the document id, or its MD5 when longer than DOCREF_MAX
 *
 * Collation keys are prefix-free, so rows sort by key, then by id bytes, long keys included:
 * a rank is given when a key is first written (between its neighbours' ranks, or a step past
 * the last) and kept in a rank entry, so byte order stays the exact order without comparing
 * whole keys on reads. Rank entries stay until the index is dropped. When no number is left
 * between a new key's neighbours (after 32 keys in a row written into the same gap), the
 * ranks of its cut's run are spread evenly again and the run's rows move to their new keys
 * (rank_respread), so the order stays exact. The query side compares bounds on the cut bytes and, inside a run of one cut, on the whole
 * keys (vquery.c). A database's rows go with the database:
 * src/db/env.c drops every key under its id, this table included. */
#include "vstore.h"

#include <lmdb.h>
#include <nettle/md5.h>
#include <stdlib.h>
#include <string.h>

#include "../db/db_int.h"
#include "reduce.h"

#define KIND_META 0x00
#define KIND_ROW  0x01
#define KIND_DOC  0x02
#define KIND_BLOCK 0x03
#define KIND_MARK  0x04
#define KIND_RANK  0x05
#define RANK_LEN   8
#define RANK_STEP  ((uint64_t)1 << 32)
#define PREFIX    17           /* dbid · idx · kind */
#define VPREFIX   (PREFIX + 2) /* … · view */
#define DOCREF_MAX 400
#define DROP_CHUNK 20000
#define RK_MAX    (STORE_KEY_MAX - VPREFIX)

/* ---- the table --------------------------------------------------------------------------- */

/* The table is opened with the store's others (store.h), so a store reopened by a live
 * compaction has it too. */
static int table(mimeo_db *db, MDB_dbi *dbi) {
    *dbi = store_tables_get(db->env->store)->views;
    return 0;
}

/* The database's id, which leads every key of its indexes, and the table they are in. */
static int locate(mimeo_db *db, uint64_t *dbid, MDB_dbi *dbi) {
    db_meta m;
    int rc = db_meta_snapshot(db, &m);
    if (!rc) {
        *dbid = m.dbid;
        rc = table(db, dbi);
    }
    return rc;
}

static size_t prefix(unsigned char *k, uint64_t dbid, uint64_t idx, unsigned char kind) {
    be64_put(k, dbid);
    be64_put(k + 8, idx);
    k[16] = kind;
    return PREFIX;
}

/* The prefix of a view's entries of one kind (rows, blocks, marks, ranks). */
static size_t kvprefix(unsigned char *k, uint64_t dbid, uint64_t idx, unsigned char kind,
                       unsigned view) {
    prefix(k, dbid, idx, kind);
    k[17] = (unsigned char)(view >> 8);
    k[18] = (unsigned char)view;
    return VPREFIX;
}

static size_t vprefix(unsigned char *k, uint64_t dbid, uint64_t idx, unsigned view) {
    return kvprefix(k, dbid, idx, KIND_ROW, view);
}

/* The key of a view's entry of one kind at rk (its kind's prefix · rk); returns its length. */
static size_t kvkey(unsigned char *k, uint64_t dbid, uint64_t idx, unsigned char kind,
                    unsigned view, const unsigned char *rk, size_t rk_len) {
    kvprefix(k, dbid, idx, kind, view);
    if (rk_len) memcpy(k + VPREFIX, rk, rk_len);
    return VPREFIX + rk_len;
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

/* Whether key k starts with p[0..n): it is one of the entries p prefixes. */
static inline bool key_under(const MDB_val *k, const unsigned char *p, size_t n) {
    return k->mv_size >= n && memcmp(k->mv_data, p, n) == 0;
}

static inline bool key_is(const MDB_val *k, const unsigned char *p, size_t n) {
    return k->mv_size == n && memcmp(k->mv_data, p, n) == 0;
}

/* Whether any key starts with p[0..n) (moves cur; a failed read counts as none). */
static bool any_under(MDB_cursor *cur, const unsigned char *p, size_t n) {
    MDB_val k = {n, (void *)p}, v;
    return mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE) == 0 && key_under(&k, p, n);
}

/* One short read of the table: a snapshot and a cursor on it (read_close ends both). */
typedef struct vread {
    uint64_t    dbid;
    MDB_dbi     dbi;
    store      *s;
    MDB_txn    *txn;
    MDB_cursor *cur;
} vread;

static int read_open(mimeo_db *db, vread *r) {
    int rc = locate(db, &r->dbid, &r->dbi);
    if (rc) return rc;
    r->s = db->env->store;
    if ((rc = store_read_begin(r->s, &r->txn))) return rc;
    if ((rc = store_err(mdb_cursor_open(r->txn, r->dbi, &r->cur)))) store_read_end(r->s, r->txn);
    return rc;
}

static void read_close(vread *r) {
    mdb_cursor_close(r->cur);
    store_read_end(r->s, r->txn);
}

/* ---- meta -------------------------------------------------------------------------------- */

static int meta_decode(vstore_meta *m, const MDB_val *v) {
    const unsigned char *p = v->mv_data;
    if (v->mv_size < 18) return MIMEO_ECORRUPT;
    m->seq = be64_get(p);
    m->bytes = be64_get(p + 8);
    m->nviews = (unsigned)p[16] << 8 | p[17];
    size_t base = 18 + 8 * (size_t)m->nviews;
    if (m->nviews > VSTORE_VIEWS_MAX || (v->mv_size != base && v->mv_size != base + 1))
        return MIMEO_ECORRUPT;
    for (unsigned i = 0; i < m->nviews; i++) m->rows[i] = be64_get(p + 18 + 8 * i);
    m->blocks_ok = v->mv_size == base + 1 && p[base] == 1;
    return 0;
}

static size_t meta_encode(const vstore_meta *m, unsigned char *p) {
    be64_put(p, m->seq);
    be64_put(p + 8, m->bytes);
    p[16] = (unsigned char)(m->nviews >> 8);
    p[17] = (unsigned char)m->nviews;
    for (unsigned i = 0; i < m->nviews; i++) be64_put(p + 18 + 8 * i, m->rows[i]);
    p[18 + 8 * (size_t)m->nviews] = m->blocks_ok ? 1 : 0;
    return 19 + 8 * (size_t)m->nviews;
}

/* The index's meta entry in txn, decoded into m (zeroed first, as a new index's): 0,
 * MIMEO_ENOTFOUND when the index has none yet, MIMEO_ECORRUPT or a store error. */
static int meta_read(MDB_txn *txn, MDB_dbi dbi, uint64_t dbid, uint64_t idx, vstore_meta *m) {
    memset(m, 0, sizeof *m);
    unsigned char kb[PREFIX];
    MDB_val k = {prefix(kb, dbid, idx, KIND_META), kb}, v;
    int mrc = mdb_get(txn, dbi, &k, &v);
    if (mrc == MDB_NOTFOUND) return MIMEO_ENOTFOUND;
    return mrc ? store_err(mrc) : meta_decode(m, &v);
}

static int meta_write(MDB_txn *txn, MDB_dbi dbi, uint64_t dbid, uint64_t idx,
                      const vstore_meta *m) {
    unsigned char kb[PREFIX], vb[19 + 8 * VSTORE_VIEWS_MAX];
    MDB_val k = {prefix(kb, dbid, idx, KIND_META), kb}, v = {meta_encode(m, vb), vb};
    return store_err(mdb_put(txn, dbi, &k, &v, 0));
}

int vstore_meta_get(mimeo_db *db, uint64_t idx, vstore_meta *m) {
    memset(m, 0, sizeof *m);
    vread rd;
    int rc = read_open(db, &rd);
    if (rc) return rc;
    rc = meta_read(rd.txn, rd.dbi, rd.dbid, idx, m);
    read_close(&rd);
    return rc == MIMEO_ENOTFOUND ? 0 : rc;
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
    buf               list;     /* the rows of the document being written, for its entry */
    vstore_meta      *m;
} apply_job;

/* rk of one emit into out (RK_MAX bytes); returns its length. */
static size_t rk_make(unsigned char *out, const unsigned char *ckey, size_t ckey_len,
                      uint64_t rank, const char *id, size_t id_len, uint32_t n) {
    size_t cl = ckey_len > VSTORE_CKEY_MAX ? VSTORE_CKEY_MAX : ckey_len;
    memcpy(out, ckey, cl);
    if (ckey_len > VSTORE_CKEY_MAX) {
        be64_put(out + cl, rank);
        cl += RANK_LEN;
    }
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

static int ckey_cmp(const unsigned char *a, size_t an, const unsigned char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c < 0 ? -1 : 1;
    return an < bn ? -1 : an > bn;
}

static int mark(MDB_txn *txn, apply_job *j, const vstore_meta *m, unsigned view,
                const unsigned char *rk, size_t len);

/* Rewrites, in a document's row list (view(2) · varint · rk)…, the rank of each of its rows
 * in view whose rk is `from`. */
static void list_rerank(buf *list, unsigned view, const unsigned char *from, size_t len,
                        uint64_t rank) {
    unsigned char *p = (unsigned char *)list->data, *end = p + list->len;
    while (end - p > 2) {
        unsigned v = (unsigned)p[0] << 8 | p[1];
        const unsigned char *q = p + 2;
        uint64_t l;
        if (varint_get(&q, end, &l) || (uint64_t)(end - q) < l) return;
        p = (unsigned char *)q;
        if (v == view && l == len && memcmp(p, from, len) == 0)
            be64_put(p + VSTORE_CKEY_MAX, rank);
        p += l;
    }
}

/* No number is left between a new long key's neighbours: the ranks of its cut's run (the
 * rank entries in kb[0..pn) · rank) are spread evenly over the whole range again, the new key
 * taking its place among them, and every row carrying an old rank moves to its new key —
 * marked for the blocks, its document's row list rewritten — so the stored order stays the
 * order of the whole keys however many keys arrive between the same two neighbours. */
static int rank_respread(MDB_txn *txn, apply_job *j, unsigned view, unsigned char *kb,
                         size_t pn, const unsigned char *ck, size_t ck_len, uint64_t *rank) {
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(txn, j->dbi, &cur));
    if (rc) return rc;
    /* the run's entries in rank order (their keys' order), the new key among them */
    buf keys;
    buf_init(&keys, 0);
    uint64_t *old = NULL, *neu = NULL;
    size_t n = 0, cap = 0, at = (size_t)-1;
    MDB_val k = {pn, kb}, v;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; mrc == 0 && !rc; mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != pn + RANK_LEN || memcmp(k.mv_data, kb, pn) != 0) break;
        if (ARRAY_GROW(old, cap, n + 2)) { rc = MIMEO_ENOMEM; break; }
        if (at == (size_t)-1 && ckey_cmp(v.mv_data, v.mv_size, ck, ck_len) > 0) at = n;
        old[n++] = be64_get((const unsigned char *)k.mv_data + pn);
        buf_put_varint(&keys, v.mv_size);
        if (buf_put(&keys, v.mv_data, v.mv_size)) rc = MIMEO_ENOMEM;
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    if (at == (size_t)-1) at = n;
    if (!rc && !(neu = malloc((n + 1) * sizeof *neu))) rc = MIMEO_ENOMEM;
    uint64_t step = UINT64_MAX / ((uint64_t)n + 2);
    for (size_t i = 0; !rc && i < n; i++) neu[i] = step * (i + (i >= at) + 1);
    /* the rank entries again */
    const unsigned char *kp = (const unsigned char *)keys.data, *kend = kp + keys.len;
    for (size_t i = 0; !rc && i < n; i++) {
        be64_put(kb + pn, old[i]);
        k = (MDB_val){pn + RANK_LEN, kb};
        if ((mrc = mdb_del(txn, j->dbi, &k, NULL))) rc = store_err(mrc);
    }
    for (size_t i = 0; !rc && i <= n; i++) {
        const unsigned char *key = ck;
        uint64_t kl = ck_len;
        if (i != at) {
            if (varint_get(&kp, kend, &kl) || (uint64_t)(kend - kp) < kl) { rc = MIMEO_ECORRUPT; break; }
            key = kp;
            kp += kl;
        }
        be64_put(kb + pn, i == at ? step * (at + 1) : neu[i - (i > at)]);
        k = (MDB_val){pn + RANK_LEN, kb};
        v = (MDB_val){kl, (void *)key};
        rc = store_err(mdb_put(txn, j->dbi, &k, &v, 0));
    }
    *rank = step * (at + 1);
    /* the rows of the run: read and deleted, then written under their new ranks */
    buf rows;
    buf_init(&rows, 0);
    unsigned char rp[VPREFIX + VSTORE_CKEY_MAX];
    size_t rpn = vprefix(rp, j->dbid, j->idx, view);
    memcpy(rp + rpn, kb + pn - VSTORE_CKEY_MAX, VSTORE_CKEY_MAX);
    rpn += VSTORE_CKEY_MAX;
    k = (MDB_val){rpn, rp};
    mrc = rc ? MDB_NOTFOUND : mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (!rc && mrc == 0 && k.mv_size >= rpn + RANK_LEN && memcmp(k.mv_data, rp, rpn) == 0) {
        buf_put_varint(&rows, k.mv_size);
        buf_put(&rows, k.mv_data, k.mv_size);
        buf_put_varint(&rows, v.mv_size);
        if (buf_put(&rows, v.mv_data, v.mv_size)) { rc = MIMEO_ENOMEM; break; }
        if ((mrc = mdb_cursor_del(cur, 0))) break;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    mdb_cursor_close(cur);
    const unsigned char *p = (const unsigned char *)rows.data, *end = p + rows.len;
    unsigned char nk[STORE_KEY_MAX], dk[STORE_KEY_MAX];
    while (!rc && p < end) {
        uint64_t kl, vl;
        if (varint_get(&p, end, &kl) || (uint64_t)(end - p) < kl || kl > STORE_KEY_MAX) { rc = MIMEO_ECORRUPT; break; }
        const unsigned char *okey = p;
        p += kl;
        if (varint_get(&p, end, &vl) || (uint64_t)(end - p) < vl) { rc = MIMEO_ECORRUPT; break; }
        const unsigned char *val = p;
        p += vl;
        uint64_t orank = be64_get(okey + rpn);
        size_t lo_i = 0, hi_i = n;   /* old ranks ascend: find orank */
        while (lo_i < hi_i) {
            size_t mid = (lo_i + hi_i) / 2;
            if (old[mid] < orank) lo_i = mid + 1;
            else hi_i = mid;
        }
        uint64_t nr = lo_i < n && old[lo_i] == orank ? neu[lo_i] : orank;
        memcpy(nk, okey, kl);
        be64_put(nk + rpn, nr);
        k = (MDB_val){kl, nk};
        v = (MDB_val){vl, (void *)val};
        if ((rc = store_err(mdb_put(txn, j->dbi, &k, &v, 0)))) break;
        if ((rc = mark(txn, j, j->m, view, okey + VPREFIX, kl - VPREFIX))) break;
        if ((rc = mark(txn, j, j->m, view, nk + VPREFIX, kl - VPREFIX))) break;
        /* the document's row list: stored, or being built (the document written now) */
        const unsigned char *q = val, *vend = val + vl;
        uint64_t l1, l2;
        if (varint_get(&q, vend, &l1) || (uint64_t)(vend - q) < l1) { rc = MIMEO_ECORRUPT; break; }
        q += l1;
        if (varint_get(&q, vend, &l2) || (uint64_t)(vend - q) < l2) { rc = MIMEO_ECORRUPT; break; }
        list_rerank(&j->list, view, okey + VPREFIX, kl - VPREFIX, nr);
        MDB_val dkey = {docref(dk, j->dbid, j->idx, (const char *)q, l2), dk}, dv;
        mrc = mdb_get(txn, j->dbi, &dkey, &dv);
        if (mrc == MDB_NOTFOUND) continue;
        if (mrc) { rc = store_err(mrc); break; }
        buf_reset(&j->scratch);
        if (buf_put(&j->scratch, dv.mv_data, dv.mv_size)) { rc = MIMEO_ENOMEM; break; }
        list_rerank(&j->scratch, view, okey + VPREFIX, kl - VPREFIX, nr);
        dv = (MDB_val){j->scratch.len, j->scratch.data};
        rc = store_err(mdb_put(txn, j->dbi, &dkey, &dv, 0));
    }
    buf_destroy(&rows);
    buf_destroy(&keys);
    free(old);
    free(neu);
    return rc;
}

/* The rank of a long collation key in view (see the layout): the one it already has, or a
 * new one between the ranks of the keys around it, recorded. The run of rank entries of one
 * cut is read in rank order, which is their keys' order. */
static int rank_get(MDB_txn *txn, apply_job *j, unsigned view, const unsigned char *ck,
                    size_t ck_len, uint64_t *rank) {
    unsigned char kb[PREFIX + 2 + VSTORE_CKEY_MAX + RANK_LEN];
    size_t pn = kvprefix(kb, j->dbid, j->idx, KIND_RANK, view);
    memcpy(kb + pn, ck, VSTORE_CKEY_MAX);
    pn += VSTORE_CKEY_MAX;
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(txn, j->dbi, &cur));
    if (rc) return rc;
    MDB_val k = {pn, kb}, v;
    bool has_lo = false, has_hi = false;
    uint64_t lo = 0, hi = 0;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    for (; mrc == 0; mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != pn + RANK_LEN || memcmp(k.mv_data, kb, pn) != 0) break;
        uint64_t r = be64_get((const unsigned char *)k.mv_data + pn);
        int c = ckey_cmp(v.mv_data, v.mv_size, ck, ck_len);
        if (c == 0) {
            *rank = r;
            mdb_cursor_close(cur);
            return 0;
        }
        if (c > 0) {
            has_hi = true;
            hi = r;
            break;
        }
        has_lo = true;
        lo = r;
    }
    mdb_cursor_close(cur);
    if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
    uint64_t r;
    if (!has_lo && !has_hi) r = (uint64_t)1 << 63;
    else if (!has_hi) r = lo <= UINT64_MAX - RANK_STEP ? lo + RANK_STEP : lo + (UINT64_MAX - lo) / 2;
    else if (!has_lo) r = hi > RANK_STEP ? hi - RANK_STEP : hi / 2;
    else r = lo + (hi - lo) / 2;
    if ((has_lo && r == lo) || (has_hi && r == hi))
        return rank_respread(txn, j, view, kb, pn, ck, ck_len, rank);
    be64_put(kb + pn, r);
    k = (MDB_val){pn + RANK_LEN, kb};
    v = (MDB_val){ck_len, (void *)ck};
    if ((rc = store_err(mdb_put(txn, j->dbi, &k, &v, 0)))) return rc;
    *rank = r;
    return 0;
}

/* Marks a row as changed for vstore_blocks_repair (when the index keeps blocks). */
static int mark(MDB_txn *txn, apply_job *j, const vstore_meta *m, unsigned view,
                const unsigned char *rk, size_t len) {
    if (!m->blocks_ok) return 0;
    unsigned char kb[STORE_KEY_MAX];
    MDB_val k = {kvkey(kb, j->dbid, j->idx, KIND_MARK, view, rk, len), kb}, v = {0, ""};
    return store_err(mdb_put(txn, j->dbi, &k, &v, 0));
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
        MDB_val rk = {kvkey(kb, j->dbid, j->idx, KIND_ROW, view, p, len), kb}, rv;
        p += len;
        mrc = mdb_get(txn, j->dbi, &rk, &rv);
        if (mrc == MDB_NOTFOUND) continue;
        if (mrc) return store_err(mrc);
        uint64_t sz = rk.mv_size + rv.mv_size;
        m->bytes = m->bytes > sz ? m->bytes - sz : 0;
        if (view < m->nviews && m->rows[view]) m->rows[view]--;
        if ((mrc = mdb_del(txn, j->dbi, &rk, NULL))) return store_err(mrc);
        int rc = mark(txn, j, m, view, p - len, len);
        if (rc) return rc;
    }
    mrc = mdb_del(txn, j->dbi, dkey, NULL);
    return mrc && mrc != MDB_NOTFOUND ? store_err(mrc) : 0;
}

static int job_apply(MDB_txn *txn, void *arg) {
    apply_job *j = arg;
    vstore_meta *m = malloc(sizeof *m);
    if (!m) return MIMEO_ENOMEM;
    int rc = meta_read(txn, j->dbi, j->dbid, j->idx, m);
    bool fresh = rc == MIMEO_ENOTFOUND;
    if (fresh) rc = 0;
    if (!rc && m->seq != j->from) rc = MIMEO_ECONFLICT;
    if (!rc && fresh) {
        unsigned char dk[24];
        be64_put(dk, j->dbid);
        be64_put(dk + 8, 0);
        be64_put(dk + 16, j->idx);
        MDB_val dkey = {24, dk}, dval = {j->info_len, (void *)j->info};
        rc = store_err(mdb_put(txn, j->dbi, &dkey, &dval, 0));
    }
    if (m->nviews < j->nviews) m->nviews = j->nviews;
    unsigned char dk[STORE_KEY_MAX], rkb[STORE_KEY_MAX];
    buf val;
    buf_init(&val, 0);
    j->m = m;
    for (size_t i = 0; !rc && i < j->n; i++) {
        const vstore_doc *d = &j->docs[i];
        MDB_val dkey = {docref(dk, j->dbid, j->idx, d->id, d->id_len), dk};
        if ((rc = remove_old(txn, j, m, &dkey))) break;
        if (!d->n) continue;
        buf_reset(&j->list);
        for (size_t e = 0; !rc && e < d->n; e++) {
            const vstore_emit *em = &d->emits[e];
            if (em->view >= VSTORE_VIEWS_MAX) { rc = MIMEO_EINVAL; break; }
            uint64_t rank = 0;
            if (em->ckey_len > VSTORE_CKEY_MAX &&
                (rc = rank_get(txn, j, em->view, em->ckey, em->ckey_len, &rank)))
                break;
            size_t kn = vprefix(rkb, j->dbid, j->idx, em->view);
            size_t rl = rk_make(rkb + kn, em->ckey, em->ckey_len, rank, d->id, d->id_len,
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
            if ((rc = mark(txn, j, m, em->view, rkb + kn, rl))) break;
            unsigned char vb[2] = {(unsigned char)(em->view >> 8), (unsigned char)em->view};
            if (buf_put(&j->list, vb, 2) || buf_put_varint(&j->list, rl) ||
                buf_put(&j->list, rkb + kn, rl))
                rc = MIMEO_ENOMEM;
        }
        if (!rc) {
            MDB_val lv = {j->list.len, j->list.data};
            rc = store_err(mdb_put(txn, j->dbi, &dkey, &lv, 0));
        }
    }
    if (!rc) {
        m->seq = j->to;
        rc = meta_write(txn, j->dbi, j->dbid, j->idx, m);
    }
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
    buf_init(&j.list, 0);
    int rc = locate(db, &j.dbid, &j.dbi);
    if (!rc) rc = store_write(db->env->store, job_apply, &j);
    buf_destroy(&j.scratch);
    buf_destroy(&j.list);
    return rc;
}

/* ---- reads ------------------------------------------------------------------------------- */

/* Ends a scan: the cursor's error if any, the position of the last entry taken copied into
 * last before the snapshot ends (LMDB's bytes are only valid inside it). */
static int read_end(vread *r, int rc, int mrc, const MDB_val *taken, buf *last) {
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    if (rc >= 0 && taken->mv_data &&
        buf_put(last, (const unsigned char *)taken->mv_data + VPREFIX, taken->mv_size - VPREFIX))
        rc = MIMEO_ENOMEM;
    read_close(r);
    return rc;
}

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
    if (pos_len > RK_MAX) pos_len = RK_MAX;
    vread rd;
    int rc = read_open(db, &rd);
    if (rc) return rc;
    uint64_t dbid = rd.dbid;
    MDB_cursor *cur = rd.cur;
    unsigned char vp[VPREFIX], kb[STORE_KEY_MAX + 1];
    size_t n = kvkey(kb, dbid, idx, KIND_ROW, view, pos, how != VSTORE_FIRST && pos ? pos_len : 0);
    memcpy(vp, kb, VPREFIX);
    MDB_val k, v;
    int mrc;
    if (!desc) {
        k = (MDB_val){n, kb};
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (how == VSTORE_AFTER && mrc == 0 && key_is(&k, kb, n))
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
        if (!key_under(&k, vp, VPREFIX)) break;
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
    return read_end(&rd, rc, mrc, &taken, last);
}

/* ---- blocks -------------------------------------------------------------------------------- */

typedef struct repair_job {
    MDB_dbi     dbi;
    uint64_t    dbid, idx;
    unsigned    nviews;
    const int  *kinds;
    buf         val, part, marks;
} repair_job;

static size_t kprefix(unsigned char *k, const repair_job *j, unsigned char kind, unsigned view) {
    return kvprefix(k, j->dbid, j->idx, kind, view);
}

/* Deletes every key that starts with k[0..n). */
static int del_prefix(MDB_txn *txn, MDB_dbi dbi, const unsigned char *k, size_t n) {
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(txn, dbi, &cur));
    if (rc) return rc;
    MDB_val key = {n, (void *)k}, v;
    int mrc = mdb_cursor_get(cur, &key, &v, MDB_SET_RANGE);
    while (mrc == 0 && key_under(&key, k, n)) {
        if ((mrc = mdb_cursor_del(cur, 0))) break;
        mrc = mdb_cursor_get(cur, &key, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return mrc && mrc != MDB_NOTFOUND ? store_err(mrc) : 0;
}

/* A block being filled from rows. */
typedef struct bfill {
    view_reducer *red;
    bool          refused;  /* a value the reducer refused: no partial, queries read rows */
    uint64_t      count;
    unsigned char first[RK_MAX], last[RK_MAX];
    size_t        first_len, last_len;
} bfill;

static int bfill_flush(MDB_txn *txn, repair_job *j, unsigned view, bfill *b) {
    if (!b->count) return 0;
    int kind = j->kinds[view];
    buf_reset(&j->val);
    unsigned char cnt[8];
    be64_put(cnt, b->count);
    buf_put(&j->val, cnt, 8);
    buf_put_varint(&j->val, b->last_len);
    buf_put(&j->val, b->last, b->last_len);
    int rc = 0;
    if (kind >= 0 && b->red && !b->refused) rc = view_reducer_put_partial(b->red, &j->val);
    if (b->red) view_reducer_free(b->red);
    b->red = NULL;
    b->refused = false;
    if (rc) return rc;
    unsigned char kb[STORE_KEY_MAX];
    MDB_val k = {kvkey(kb, j->dbid, j->idx, KIND_BLOCK, view, b->first, b->first_len), kb},
            v = {j->val.len, j->val.data};
    b->count = 0;
    return store_err(mdb_put(txn, j->dbi, &k, &v, 0));
}

/* Adds one row (rk, stored value) to the block; a full block is written. */
static int bfill_add(MDB_txn *txn, repair_job *j, unsigned view, bfill *b, const MDB_val *k,
                     const MDB_val *v) {
    vstore_row r;
    int rc = row_decode(k, v, &r);
    if (rc) return rc;
    if (!b->count) {
        b->first_len = r.rk_len;
        memcpy(b->first, r.rk, r.rk_len);
    }
    b->last_len = r.rk_len;
    memcpy(b->last, r.rk, r.rk_len);
    b->count++;
    int kind = j->kinds[view];
    if (kind >= 0) {
        if (!b->red && !(b->red = view_reducer_new((view_reduce_kind)kind))) return MIMEO_ENOMEM;
        if (!view_reducer_add_fast(b->red, r.value, r.value_len)) {
            jval *kj = NULL, *vj = NULL;
            json_limits lim = {0, r.key_len + r.value_len + 2};
            rc = json_tree_parse(r.key, r.key_len, &lim, &kj, NULL);
            if (!rc) rc = json_tree_parse(r.value, r.value_len, &lim, &vj, NULL);
            /* a value the reducer refuses (_stats of a string) leaves the block without a
             * partial, so a query reads its rows and reports the error as CouchDB does */
            if (!rc && view_reducer_add(b->red, kj, vj, NULL) != 0) b->refused = true;
            if (kj) jval_free(kj);
            if (vj) jval_free(vj);
            if (rc) return MIMEO_ECORRUPT;
        }
    }
    return b->count >= VSTORE_BLOCK_ROWS ? bfill_flush(txn, j, view, b) : 0;
}

/* Recomputes the blocks of rows from `from` (NULL: the view's first row) up to `to`
 * (exclusive; NULL: the view's end). */
static int blocks_fill(MDB_txn *txn, repair_job *j, unsigned view, const unsigned char *from,
                       size_t from_len, const unsigned char *to, size_t to_len) {
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(txn, j->dbi, &cur));
    if (rc) return rc;
    unsigned char vp[VPREFIX], kb[STORE_KEY_MAX];
    MDB_val k = {kvkey(kb, j->dbid, j->idx, KIND_ROW, view, from, from ? from_len : 0), kb}, v;
    memcpy(vp, kb, VPREFIX);
    bfill *b = calloc(1, sizeof *b);
    if (!b) { mdb_cursor_close(cur); return MIMEO_ENOMEM; }
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (!rc && mrc == 0 && key_under(&k, vp, VPREFIX)) {
        if (to) {
            const unsigned char *rk = (const unsigned char *)k.mv_data + VPREFIX;
            size_t rl = k.mv_size - VPREFIX, m = rl < to_len ? rl : to_len;
            int c = memcmp(rk, to, m);
            if (c > 0 || (c == 0 && rl >= to_len)) break;
        }
        rc = bfill_add(txn, j, view, b, &k, &v);
        if (!rc) mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_err(mrc);
    if (!rc) rc = bfill_flush(txn, j, view, b);
    if (b->red) view_reducer_free(b->red);
    free(b);
    return rc;
}

static int view_rebuild(MDB_txn *txn, repair_job *j, unsigned view) {
    unsigned char kb[VPREFIX];
    int rc = del_prefix(txn, j->dbi, kb, kprefix(kb, j, KIND_BLOCK, view));
    if (!rc) rc = del_prefix(txn, j->dbi, kb, kprefix(kb, j, KIND_MARK, view));
    if (!rc) rc = blocks_fill(txn, j, view, NULL, 0, NULL, 0);
    return rc;
}

/* Recomputes the blocks that hold marked rows; many marks: the whole view. */
static int view_fix(MDB_txn *txn, repair_job *j, unsigned view, uint64_t rows) {
    unsigned char mp[VPREFIX], bp[VPREFIX];
    kprefix(mp, j, KIND_MARK, view);
    kprefix(bp, j, KIND_BLOCK, view);
    MDB_cursor *cur;
    int rc = store_err(mdb_cursor_open(txn, j->dbi, &cur));
    if (rc) return rc;
    /* the marks, as (varint len, rk)… in ascending order */
    buf_reset(&j->marks);
    size_t nmarks = 0;
    MDB_val k = {VPREFIX, mp}, v;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (mrc == 0 && key_under(&k, mp, VPREFIX)) {
        buf_put_varint(&j->marks, k.mv_size - VPREFIX);
        if (buf_put(&j->marks, (const unsigned char *)k.mv_data + VPREFIX, k.mv_size - VPREFIX)) {
            rc = MIMEO_ENOMEM;
            break;
        }
        nmarks++;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (!nmarks || rc) {
        mdb_cursor_close(cur);
        return rc;
    }
    if (nmarks * 4 > rows + 64) {
        mdb_cursor_close(cur);
        return view_rebuild(txn, j, view);
    }
    /* the distinct blocks holding the marks (a mark before every block: the first block),
     * as the rk of their first rows, ascending */
    buf firsts;
    buf_init(&firsts, 0);
    size_t nf = 0;
    unsigned char lastf[RK_MAX];
    size_t lastf_len = (size_t)-1;
    const unsigned char *p = (const unsigned char *)j->marks.data, *end = p + j->marks.len;
    unsigned char kb[STORE_KEY_MAX];   /* bp · a block's rk: the prefix stays, rk changes */
    memcpy(kb, bp, VPREFIX);
    while (!rc && p < end) {
        uint64_t len;
        varint_get(&p, end, &len);
        memcpy(kb + VPREFIX, p, len);
        p += len;
        k = (MDB_val){VPREFIX + len, kb};
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        bool exact = mrc == 0 && key_is(&k, kb, VPREFIX + len);
        if (!exact) {
            if (mrc == 0) mrc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
            else if (mrc == MDB_NOTFOUND) mrc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
            if (mrc == 0 && !key_under(&k, bp, VPREFIX)) {
                /* before every block: the first one */
                k = (MDB_val){VPREFIX, bp};
                mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            }
        }
        if (mrc == MDB_NOTFOUND || (mrc == 0 && !key_under(&k, bp, VPREFIX))) {
            /* no block at all: build them */
            mdb_cursor_close(cur);
            buf_destroy(&firsts);
            return view_rebuild(txn, j, view);
        }
        if (mrc) { rc = store_err(mrc); break; }
        size_t fl = k.mv_size - VPREFIX;
        if (fl == lastf_len && memcmp(lastf, (const unsigned char *)k.mv_data + VPREFIX, fl) == 0)
            continue;
        lastf_len = fl;
        memcpy(lastf, (const unsigned char *)k.mv_data + VPREFIX, fl);
        buf_put_varint(&firsts, fl);
        rc = buf_put(&firsts, lastf, fl);
        nf++;
    }
    /* each block: from its first row (the view's first for the first block) to the next
     * block's first row, recomputed */
    p = (const unsigned char *)firsts.data;
    end = p + firsts.len;
    while (!rc && p < end) {
        uint64_t len;
        varint_get(&p, end, &len);
        const unsigned char *first = p;
        p += len;
        memcpy(kb + VPREFIX, first, len);
        k = (MDB_val){VPREFIX + len, kb};
        /* is there a block before it? */
        mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY);
        if (mrc) { rc = store_err(mrc); break; }
        MDB_val pk = k, pv;
        bool has_prev = mdb_cursor_get(cur, &pk, &pv, MDB_PREV) == 0 &&
                        key_under(&pk, bp, VPREFIX);
        k = (MDB_val){VPREFIX + len, kb};
        mdb_cursor_get(cur, &k, &v, MDB_SET_KEY);
        MDB_val nk = k, nv;
        unsigned char next[RK_MAX];
        size_t next_len = 0;
        bool has_next = mdb_cursor_get(cur, &nk, &nv, MDB_NEXT) == 0 &&
                        key_under(&nk, bp, VPREFIX);
        if (has_next) {
            next_len = nk.mv_size - VPREFIX;
            memcpy(next, (const unsigned char *)nk.mv_data + VPREFIX, next_len);
        }
        k = (MDB_val){VPREFIX + len, kb};
        if ((mrc = mdb_del(txn, j->dbi, &k, NULL))) { rc = store_err(mrc); break; }
        unsigned char from[RK_MAX];
        memcpy(from, first, len);
        rc = blocks_fill(txn, j, view, has_prev ? from : NULL, len, has_next ? next : NULL,
                         next_len);
    }
    mdb_cursor_close(cur);
    buf_destroy(&firsts);
    if (!rc) rc = del_prefix(txn, j->dbi, mp, VPREFIX);
    return rc;
}

static int job_repair(MDB_txn *txn, void *arg) {
    repair_job *j = arg;
    vstore_meta *m = malloc(sizeof *m);
    if (!m) return MIMEO_ENOMEM;
    int rc = meta_read(txn, j->dbi, j->dbid, j->idx, m);
    if (rc) {
        free(m);
        return rc == MIMEO_ENOTFOUND ? 0 : rc;
    }
    for (unsigned view = 0; !rc && view < j->nviews; view++)
        rc = m->blocks_ok ? view_fix(txn, j, view, view < m->nviews ? m->rows[view] : 0)
                          : view_rebuild(txn, j, view);
    if (!rc && !m->blocks_ok) {
        m->blocks_ok = true;
        rc = meta_write(txn, j->dbi, j->dbid, j->idx, m);
    }
    free(m);
    return rc;
}

/* Whether the index has blocks and no marks: nothing to repair (read-only, no commit). */
static bool repair_needless(mimeo_db *db, MDB_dbi dbi, uint64_t dbid, uint64_t idx) {
    MDB_txn *txn;
    if (store_read_begin(db->env->store, &txn)) return false;
    bool needless = false;
    vstore_meta *m = malloc(sizeof *m);
    int rc = m ? meta_read(txn, dbi, dbid, idx, m) : MIMEO_ENOTFOUND;
    if (rc == MIMEO_ENOTFOUND) {
        needless = true; /* no index yet */
    } else if (rc == 0 && m->blocks_ok) {
        MDB_cursor *cur;
        if (mdb_cursor_open(txn, dbi, &cur) == 0) {
            unsigned char kb[PREFIX];
            needless = !any_under(cur, kb, prefix(kb, dbid, idx, KIND_MARK));
            mdb_cursor_close(cur);
        }
    }
    free(m);
    store_read_end(db->env->store, txn);
    return needless;
}

int vstore_blocks_repair(mimeo_db *db, uint64_t idx, unsigned nviews, const int *kinds) {
    repair_job j = {.idx = idx, .nviews = nviews, .kinds = kinds};
    buf_init(&j.val, 0);
    buf_init(&j.part, 0);
    buf_init(&j.marks, 0);
    int rc = locate(db, &j.dbid, &j.dbi);
    if (!rc && !repair_needless(db, j.dbi, j.dbid, idx))
        rc = store_write(db->env->store, job_repair, &j);
    buf_destroy(&j.val);
    buf_destroy(&j.part);
    buf_destroy(&j.marks);
    return rc;
}

int vstore_blocks_clean(mimeo_db *db, uint64_t idx, unsigned view, bool *clean) {
    *clean = false;
    vread rd;
    int rc = read_open(db, &rd);
    if (rc) return rc;
    vstore_meta *m = malloc(sizeof *m);
    if (m && meta_read(rd.txn, rd.dbi, rd.dbid, idx, m) == 0 && m->blocks_ok) {
        unsigned char kb[VPREFIX];
        *clean = !any_under(rd.cur, kb, kvprefix(kb, rd.dbid, idx, KIND_MARK, view));
    }
    free(m);
    read_close(&rd);
    return rc;
}

static int block_decode(const MDB_val *k, const MDB_val *v, vstore_block *b) {
    const unsigned char *p = v->mv_data, *end = p + v->mv_size;
    if (v->mv_size < 9) return MIMEO_ECORRUPT;
    b->count = be64_get(p);
    p += 8;
    uint64_t ll;
    if (varint_get(&p, end, &ll) || (uint64_t)(end - p) < ll) return MIMEO_ECORRUPT;
    b->last = p;
    b->last_len = ll;
    p += ll;
    b->partial = (const char *)p;
    b->partial_len = (size_t)(end - p);
    b->first = (const unsigned char *)k->mv_data + VPREFIX;
    b->first_len = k->mv_size - VPREFIX;
    return 0;
}

int vstore_blocks_scan(mimeo_db *db, uint64_t idx, unsigned view, const unsigned char *pos,
                       size_t pos_len, bool after, size_t max, vstore_block_fn fn, void *ctx,
                       bool *more, buf *last) {
    *more = false;
    buf_reset(last);
    if (pos_len > RK_MAX) pos_len = RK_MAX;
    vread rd;
    int rc = read_open(db, &rd);
    if (rc) return rc;
    uint64_t dbid = rd.dbid;
    MDB_cursor *cur = rd.cur;
    unsigned char bp[VPREFIX], kb[STORE_KEY_MAX];
    size_t n = kvkey(kb, dbid, idx, KIND_BLOCK, view, pos, pos ? pos_len : 0);
    memcpy(bp, kb, VPREFIX);
    MDB_val k = {n, kb}, v;
    int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    bool exact = mrc == 0 && key_is(&k, kb, n);
    if (after) {
        if (exact) mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    } else if (pos && !exact) {
        /* the block holding pos starts before it */
        MDB_val pk, pv;
        int prc = mrc == 0 ? mdb_cursor_get(cur, &pk, &pv, MDB_PREV)
                           : mdb_cursor_get(cur, &pk, &pv, MDB_LAST);
        if (prc == 0 && key_under(&pk, bp, VPREFIX)) {
            k = pk;
            v = pv;
            mrc = 0;
        } else {
            k = (MDB_val){VPREFIX, bp};
            mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        }
    }
    size_t count = 0;
    MDB_val taken = {0, NULL};
    while (mrc == 0 && key_under(&k, bp, VPREFIX)) {
        if (count == max) {
            *more = true;
            break;
        }
        count++;
        vstore_block b;
        if ((rc = block_decode(&k, &v, &b))) break;
        rc = fn(ctx, &b);
        taken = k;
        if (rc) break;
        mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    return read_end(&rd, rc, mrc, &taken, last);
}

typedef struct partial_job {
    MDB_dbi               dbi;
    uint64_t              dbid, idx, seq;
    unsigned              view;
    const vstore_partial *p;
    size_t                n;
    buf                   val;
} partial_job;

static int job_partials(MDB_txn *txn, void *arg) {
    partial_job *j = arg;
    vstore_meta *m = malloc(sizeof *m);
    if (!m) return MIMEO_ENOMEM;
    int rc = meta_read(txn, j->dbi, j->dbid, j->idx, m);
    if (rc == MIMEO_ENOTFOUND) rc = MIMEO_ECONFLICT;
    if (!rc && (m->seq != j->seq || !m->blocks_ok)) rc = MIMEO_ECONFLICT;
    free(m);
    if (rc) return rc;
    /* marks: the blocks are stale and the next repair rewrites them */
    MDB_cursor *cur;
    if ((rc = store_err(mdb_cursor_open(txn, j->dbi, &cur)))) return rc;
    unsigned char kb[STORE_KEY_MAX];
    bool marked = any_under(cur, kb, kvprefix(kb, j->dbid, j->idx, KIND_MARK, j->view));
    mdb_cursor_close(cur);
    if (marked) return 0;
    MDB_val k, v;
    int mrc;
    for (size_t i = 0; !rc && i < j->n; i++) {
        const vstore_partial *p = &j->p[i];
        if (p->first_len > RK_MAX) continue;
        k = (MDB_val){kvkey(kb, j->dbid, j->idx, KIND_BLOCK, j->view, p->first, p->first_len), kb};
        if ((mrc = mdb_get(txn, j->dbi, &k, &v)) == MDB_NOTFOUND) continue;
        if (mrc) return store_err(mrc);
        vstore_block b;
        if ((rc = block_decode(&k, &v, &b))) break;
        if (b.count != p->count || b.partial_len || b.last_len != p->last_len ||
            memcmp(b.last, p->last, p->last_len) != 0)
            continue;
        buf_reset(&j->val);
        if (buf_put(&j->val, v.mv_data, v.mv_size) || buf_put(&j->val, p->text, p->len))
            return MIMEO_ENOMEM;
        v = (MDB_val){j->val.len, j->val.data};
        rc = store_err(mdb_put(txn, j->dbi, &k, &v, 0));
    }
    return rc;
}

int vstore_blocks_put_partials(mimeo_db *db, uint64_t idx, unsigned view, uint64_t seq,
                               const vstore_partial *p, size_t n) {
    partial_job j = {.idx = idx, .seq = seq, .view = view, .p = p, .n = n};
    if (!n) return 0;
    buf_init(&j.val, 0);
    int rc = locate(db, &j.dbid, &j.dbi);
    if (!rc) rc = store_write(db->env->store, job_partials, &j);
    buf_destroy(&j.val);
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
    int rc = locate(db, &dbid, &dbi);
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
            if (ARRAY_GROW(ls, cap, n + 1)) { rc = MIMEO_ENOMEM; break; }
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

int vstore_drop(mimeo_db *db, uint64_t idx) {
    uint64_t dbid;
    MDB_dbi dbi;
    int rc = locate(db, &dbid, &dbi);
    if (!rc) rc = store_drop_index(db->env->store, dbi, dbid, idx, DROP_CHUNK);
    return rc;
}
