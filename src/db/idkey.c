/* Document keys: how a document id of any length becomes a `docs` key that fits LMDB's 511
 * bytes, and how iteration still hands out whole ids in exact byte order. Everything that
 * reads or writes the `docs` table by id or in order goes through here.
 *
 *   id length      key (after the 8-byte dbid)           value
 *   -------------  ------------------------------------  ------------------------------------
 *   ≤ 400 bytes    the id                                varint seq · tree
 *   > 400 bytes    first 400 bytes · slot (8, big-end.)  varint id length · id · varint seq
 *                                                        · tree
 *
 * slot is the first 8 bytes of MD5(id), plus k when the k slots before it hold other ids
 * with the same first 400 bytes (linear probing; documents are never removed one by one,
 * so a probe chain never has holes). Key order equals id order except inside a run of long
 * ids sharing their first 400 bytes: a short id sorts before every longer id it prefixes,
 * and ids that differ in their first 400 bytes compare there. Runs are contiguous, so the
 * cursor below reads a whole run, sorts it by full id and delivers it in order. */
#include <nettle/md5.h>
#include <stdlib.h>
#include <string.h>

#include "db_int.h"

#define IDKEY_PREFIX 400
#define IDKEY_SLOT   8
#define IDKEY_LONG   (8 + IDKEY_PREFIX + IDKEY_SLOT)
/* Far more than MD5 collisions on 64 bits will ever chain; past it a write is refused
 * rather than probing without end. */
#define IDKEY_PROBES 64

static bool key_is_long(const MDB_val *k) { return k->mv_size == IDKEY_LONG; }

static uint64_t idkey_hash(const char *id, size_t len) {
    struct md5_ctx ctx;
    unsigned char d[MD5_DIGEST_SIZE];
    md5_init(&ctx);
    md5_update(&ctx, len, (const uint8_t *)id);
    md5_digest(&ctx, sizeof d, d);
    return be64_get(d);
}

static size_t idkey_long(unsigned char *key, uint64_t dbid, const char *id, uint64_t slot) {
    be64_put(key, dbid);
    memcpy(key + 8, id, IDKEY_PREFIX);
    be64_put(key + 8 + IDKEY_PREFIX, slot);
    return IDKEY_LONG;
}

static int id_cmp(const char *a, size_t alen, const char *b, size_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return alen < blen ? -1 : alen > blen;
}

int db_doc_record(const MDB_val *k, const MDB_val *v, const char **id, size_t *id_len,
                  const unsigned char **rec, size_t *rec_len) {
    if (k->mv_size < 8) return MIMEO_ECORRUPT;
    if (!key_is_long(k)) {
        *id = (const char *)k->mv_data + 8;
        *id_len = k->mv_size - 8;
        *rec = v->mv_data;
        *rec_len = v->mv_size;
        return 0;
    }
    const unsigned char *p = v->mv_data, *end = p + v->mv_size;
    uint64_t n;
    if (varint_get(&p, end, &n) || n <= IDKEY_PREFIX || n > (uint64_t)(end - p) ||
        memcmp(p, (const char *)k->mv_data + 8, IDKEY_PREFIX) != 0)
        return MIMEO_ECORRUPT;
    *id = (const char *)p;
    *id_len = (size_t)n;
    *rec = p + n;
    *rec_len = (size_t)(end - (p + n));
    return 0;
}

int db_doc_decode(const unsigned char *rec, size_t rec_len, db_doc *out) {
    const unsigned char *p = rec, *end = rec + rec_len;
    int rc = varint_get(&p, end, &out->seq);
    if (rc) return rc;
    return revtree_decode(&out->tree, p, (size_t)(end - p));
}

/* The key of id: for a long id, the slot holding it (*found) or the first free slot of its
 * chain. key must have STORE_KEY_MAX bytes. */
static int idkey_find(MDB_txn *txn, const store_tables *t, uint64_t dbid, const char *id,
                      size_t len, unsigned char *key, MDB_val *k, MDB_val *v, bool *found) {
    *found = false;
    k->mv_data = key;
    if (len <= IDKEY_PREFIX) {
        k->mv_size = store_key(key, dbid, id, len);
        int rc = mdb_get(txn, t->docs, k, v);
        if (rc == MDB_NOTFOUND) return 0;
        if (rc) return store_err(rc);
        *found = true;
        return 0;
    }
    uint64_t slot = idkey_hash(id, len);
    for (unsigned i = 0; i < IDKEY_PROBES; i++) {
        k->mv_size = idkey_long(key, dbid, id, slot + i);
        int rc = mdb_get(txn, t->docs, k, v);
        if (rc == MDB_NOTFOUND) return 0;
        if (rc) return store_err(rc);
        const char *sid;
        size_t slen;
        const unsigned char *rec;
        size_t rec_len;
        if ((rc = db_doc_record(k, v, &sid, &slen, &rec, &rec_len))) return rc;
        if (slen == len && memcmp(sid, id, len) == 0) {
            *found = true;
            return 0;
        }
    }
    return MIMEO_EINVAL;
}

int db_doc_load(MDB_txn *txn, const store_tables *t, uint64_t dbid, const char *id,
                size_t id_len, db_doc *out) {
    unsigned char key[STORE_KEY_MAX];
    MDB_val k, v;
    bool found;
    int rc = idkey_find(txn, t, dbid, id, id_len, key, &k, &v, &found);
    if (rc == MIMEO_EINVAL) return MIMEO_ENOTFOUND; /* a full chain does not hold it */
    if (rc) return rc;
    if (!found) return MIMEO_ENOTFOUND;
    const char *sid;
    size_t slen;
    const unsigned char *rec;
    size_t rec_len;
    if ((rc = db_doc_record(&k, &v, &sid, &slen, &rec, &rec_len))) return rc;
    return db_doc_decode(rec, rec_len, out);
}

/* The value stored under key for id: [varint id length · id, for a long key] varint seq ·
 * tree. */
static int doc_encode(const MDB_val *key, const char *id, size_t id_len, const db_doc *d,
                      buf *scratch) {
    buf_reset(scratch);
    int rc = 0;
    if (key_is_long(key)) {
        rc = buf_put_varint(scratch, id_len);
        if (!rc) rc = buf_put(scratch, id, id_len);
    }
    if (!rc) rc = buf_put_varint(scratch, d->seq);
    if (!rc) rc = revtree_encode(&d->tree, scratch);
    return rc;
}

int db_doc_put_at(MDB_txn *txn, const store_tables *t, const MDB_val *key, const char *id,
                  size_t id_len, const db_doc *d, buf *scratch) {
    int rc = doc_encode(key, id, id_len, d, scratch);
    if (rc) return rc;
    MDB_val k = *key, v = {scratch->len, scratch->data};
    return store_err(mdb_put(txn, t->docs, &k, &v, 0));
}

size_t db_doc_key_short(unsigned char *key, uint64_t dbid, const char *id, size_t id_len) {
    return id_len <= IDKEY_PREFIX ? store_key(key, dbid, id, id_len) : 0;
}

int db_doc_append(MDB_cursor *cur, const MDB_val *key, const db_doc *d, buf *scratch) {
    int rc = doc_encode(key, NULL, 0, d, scratch);
    if (rc) return rc;
    MDB_val k = *key, v = {scratch->len, scratch->data};
    rc = mdb_cursor_put(cur, &k, &v, MDB_APPEND);
    return rc == MDB_KEYEXIST ? MIMEO_EEXIST : store_err(rc);
}

int db_doc_store(MDB_txn *txn, const store_tables *t, uint64_t dbid, const char *id,
                 size_t id_len, const db_doc *d, buf *scratch) {
    unsigned char key[STORE_KEY_MAX];
    MDB_val k, v;
    if (id_len <= IDKEY_PREFIX) { /* the key is the id: no probe (a lookup per written doc) */
        k.mv_data = key;
        k.mv_size = store_key(key, dbid, id, id_len);
        return db_doc_put_at(txn, t, &k, id, id_len, d, scratch);
    }
    bool found;
    int rc = idkey_find(txn, t, dbid, id, id_len, key, &k, &v, &found);
    if (rc) return rc;
    return db_doc_put_at(txn, t, &k, id, id_len, d, scratch);
}

/* ---- ordered iteration ------------------------------------------------------------------ */

typedef struct run_item {
    const char          *id;
    size_t               id_len;
    const unsigned char *rec;
    size_t               rec_len;
} run_item;

static int run_item_cmp(const void *a, const void *b) {
    const run_item *x = a, *y = b;
    return id_cmp(x->id, x->id_len, y->id, y->id_len);
}

int db_doc_cursor_open(db_doc_cursor *c, MDB_txn *txn, const store_tables *t, uint64_t dbid,
                       bool descending) {
    memset(c, 0, sizeof *c);
    c->dbid = dbid;
    c->descending = descending;
    buf_init(&c->bound, 0);
    c->mrc = MDB_NOTFOUND;
    return store_err(mdb_cursor_open(txn, t->docs, &c->cur));
}

void db_doc_cursor_close(db_doc_cursor *c) {
    if (c->cur) mdb_cursor_close(c->cur);
    c->cur = NULL;
    free(c->run);
    c->run = NULL;
    buf_destroy(&c->bound);
}

static bool cursor_in_db(const db_doc_cursor *c) {
    return c->mrc == 0 && c->k.mv_size >= 8 && be64_get(c->k.mv_data) == c->dbid;
}

int db_doc_cursor_seek(db_doc_cursor *c, const char *id, size_t len, bool exclusive) {
    unsigned char key[STORE_KEY_MAX];
    c->run_len = c->run_pos = 0;
    buf_reset(&c->bound);
    c->bounded = id != NULL;
    c->exclusive = exclusive;
    if (id) {
        int rc = buf_put(&c->bound, id, len);
        if (rc) return rc;
    }
    if (!c->descending) {
        c->k.mv_size = store_key(key, c->dbid, id ? id : "", id ? (len < IDKEY_PREFIX ? len : IDKEY_PREFIX) : 0);
        c->k.mv_data = key;
        c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_SET_RANGE);
    } else if (!id) {
        /* From the last id of this database: the first key of the next dbid, back one. */
        c->k.mv_size = store_key(key, c->dbid + 1, "", 0);
        c->k.mv_data = key;
        c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_SET_RANGE);
        c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, c->mrc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV);
    } else {
        /* The first key at or after the bound, then back one unless it may hold the bound
         * itself (its own short key, or a key of its run: the run is read whole anyway). */
        size_t klen;
        if (len <= IDKEY_PREFIX) {
            klen = store_key(key, c->dbid, id, len);
        } else {
            klen = idkey_long(key, c->dbid, id, UINT64_MAX);
        }
        c->k.mv_size = klen;
        c->k.mv_data = key;
        c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_SET_RANGE);
        if (c->mrc == MDB_NOTFOUND) {
            c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_LAST);
        } else if (c->mrc == 0) {
            bool keep = len <= IDKEY_PREFIX
                ? (c->k.mv_size == klen && memcmp(c->k.mv_data, key, klen) == 0)
                : (key_is_long(&c->k) && memcmp(c->k.mv_data, key, 8 + IDKEY_PREFIX) == 0);
            if (!keep) c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_PREV);
        }
    }
    if (c->mrc && c->mrc != MDB_NOTFOUND) return store_err(c->mrc);
    return 0;
}

/* Reads the whole run of long keys sharing the first 400 bytes of the key under the cursor,
 * sorted by full id, and leaves the cursor on the key just past the run in the direction of
 * travel. */
static int cursor_load_run(db_doc_cursor *c) {
    unsigned char key[IDKEY_LONG], first[IDKEY_LONG];
    memcpy(key, c->k.mv_data, 8 + IDKEY_PREFIX);
    memset(key + 8 + IDKEY_PREFIX, 0, IDKEY_SLOT);
    memcpy(first, key, sizeof first);
    c->run_len = c->run_pos = 0;
    c->k.mv_size = IDKEY_LONG;
    c->k.mv_data = key;
    c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_SET_RANGE);
    while (c->mrc == 0 && key_is_long(&c->k) && memcmp(c->k.mv_data, first, 8 + IDKEY_PREFIX) == 0) {
        if (c->run_len == c->run_alloc) {
            size_t alloc = c->run_alloc ? c->run_alloc * 2 : 16;
            run_item *grown = realloc(c->run, alloc * sizeof *grown);
            if (!grown) return MIMEO_ENOMEM;
            c->run = grown;
            c->run_alloc = alloc;
        }
        run_item *it = &((run_item *)c->run)[c->run_len];
        int rc = db_doc_record(&c->k, &c->v, &it->id, &it->id_len, &it->rec, &it->rec_len);
        if (rc) return rc;
        c->run_len++;
        c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_NEXT);
    }
    if (c->mrc && c->mrc != MDB_NOTFOUND) return store_err(c->mrc);
    if (c->descending) {
        /* Back to the key before the run. */
        c->k.mv_size = IDKEY_LONG;
        c->k.mv_data = first;
        c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_SET_RANGE);
        if (c->mrc == 0) c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, MDB_PREV);
        if (c->mrc && c->mrc != MDB_NOTFOUND) return store_err(c->mrc);
    }
    qsort(c->run, c->run_len, sizeof(run_item), run_item_cmp);
    return 0;
}

/* Whether id is inside the seek bound; the first id that is ends the check, since ids come
 * in order from then on. */
static bool cursor_passes(db_doc_cursor *c, const char *id, size_t len) {
    if (!c->bounded) return true;
    int cmp = id_cmp(id, len, c->bound.data ? c->bound.data : "", c->bound.len);
    if (c->descending) cmp = -cmp;
    if (cmp > 0 || (cmp == 0 && !c->exclusive)) {
        c->bounded = false;
        return true;
    }
    return false;
}

int db_doc_cursor_next(db_doc_cursor *c, const char **id, size_t *id_len,
                       const unsigned char **rec, size_t *rec_len) {
    for (;;) {
        if (c->run_pos < c->run_len) {
            size_t i = c->descending ? c->run_len - 1 - c->run_pos : c->run_pos;
            const run_item *it = &((const run_item *)c->run)[i];
            c->run_pos++;
            if (!cursor_passes(c, it->id, it->id_len)) continue;
            *id = it->id;
            *id_len = it->id_len;
            *rec = it->rec;
            *rec_len = it->rec_len;
            return 0;
        }
        c->run_len = c->run_pos = 0;
        if (c->mrc == MDB_NOTFOUND || !cursor_in_db(c)) return MIMEO_ENOTFOUND;
        if (c->mrc) return store_err(c->mrc);
        if (key_is_long(&c->k)) {
            int rc = cursor_load_run(c);
            if (rc) return rc;
            continue;
        }
        const char *sid;
        size_t slen;
        const unsigned char *srec;
        size_t srec_len;
        int rc = db_doc_record(&c->k, &c->v, &sid, &slen, &srec, &srec_len);
        if (rc) return rc;
        c->mrc = mdb_cursor_get(c->cur, &c->k, &c->v, c->descending ? MDB_PREV : MDB_NEXT);
        if (!cursor_passes(c, sid, slen)) continue;
        *id = sid;
        *id_len = slen;
        *rec = srec;
        *rec_len = srec_len;
        return 0;
    }
}
