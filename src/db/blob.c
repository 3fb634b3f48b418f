/* The blob store: attachment bytes kept once per distinct content, keyed by the SHA-256 of
 * the stored bytes, written and read in chunks, reference-counted by the revisions that name
 * them. Uploads commit their chunks as they arrive under a storage id marked pending; the
 * write that first names the blob publishes it in the same transaction as the revision, so
 * a cut upload or a failed write leaves only pending chunks, which the uploader (or, after a
 * crash, the next open) deletes. Layout of the `blobs` table:
 *
 *   key                               value
 *   --------------------------------  ------------------------------------------------------
 *   'b' · sha256(32)                  version(1)=1 · refs(8) · sid(8) · stored(8) ·
 *                                     length(8) · md5(16) · gzip(1)          = 50 bytes
 *   'c' · sid(8) · index(4)           stored bytes [index·BLOB_CHUNK, +BLOB_CHUNK)
 *   'p' · sid(8)                      "" : an upload whose chunks no blob owns yet
 *   'n'                               next storage id (8)
 *   'r' · dbid(8) · body(8)           the references of one revision body (att_int.h)
 *
 * Integers are big-endian. Storage ids are never reused. */
#include <stdlib.h>
#include <string.h>

#include <nettle/base64.h>

#include "att_int.h"

#define META_BYTES 50

/* ---- keys ------------------------------------------------------------------------------ */

static size_t key_meta(unsigned char *k, const unsigned char sha[32]) {
    k[0] = 'b';
    memcpy(k + 1, sha, 32);
    return 33;
}

static size_t key_chunk(unsigned char *k, uint64_t sid, uint32_t idx) {
    k[0] = 'c';
    be64_put(k + 1, sid);
    k[9] = (unsigned char)(idx >> 24);
    k[10] = (unsigned char)(idx >> 16);
    k[11] = (unsigned char)(idx >> 8);
    k[12] = (unsigned char)idx;
    return 13;
}

static size_t key_pending(unsigned char *k, uint64_t sid) {
    k[0] = 'p';
    be64_put(k + 1, sid);
    return 9;
}

static void meta_encode(const blob_meta *m, unsigned char *p) {
    p[0] = 1;
    be64_put(p + 1, m->refs);
    be64_put(p + 9, m->sid);
    be64_put(p + 17, m->stored);
    be64_put(p + 25, m->length);
    memcpy(p + 33, m->md5, 16);
    p[49] = m->gzip;
}

int blob_meta_get(MDB_txn *txn, const store_tables *t, const unsigned char sha[32],
                  blob_meta *m) {
    unsigned char key[33];
    MDB_val k = {key_meta(key, sha), key}, v;
    int rc = mdb_get(txn, t->blobs, &k, &v);
    if (rc) return store_err(rc);
    const unsigned char *p = v.mv_data;
    if (v.mv_size != META_BYTES || p[0] != 1) return MIMEO_ECORRUPT;
    m->refs = be64_get(p + 1);
    m->sid = be64_get(p + 9);
    m->stored = be64_get(p + 17);
    m->length = be64_get(p + 25);
    memcpy(m->md5, p + 33, 16);
    m->gzip = p[49] != 0;
    return 0;
}

static int meta_put(MDB_txn *txn, const store_tables *t, const unsigned char sha[32],
                    const blob_meta *m) {
    unsigned char key[33], val[META_BYTES];
    meta_encode(m, val);
    MDB_val k = {key_meta(key, sha), key}, v = {sizeof val, val};
    return store_err(mdb_put(txn, t->blobs, &k, &v, 0));
}

static int next_sid(MDB_txn *txn, const store_tables *t, uint64_t *sid) {
    MDB_val k = {1, "n"}, v;
    uint64_t n = 1;
    int rc = mdb_get(txn, t->blobs, &k, &v);
    if (rc == 0 && v.mv_size == 8) n = be64_get(v.mv_data);
    else if (rc && rc != MDB_NOTFOUND) return store_err(rc);
    unsigned char nb[8];
    be64_put(nb, n + 1);
    MDB_val nv = {8, nb};
    *sid = n;
    return store_err(mdb_put(txn, t->blobs, &k, &nv, 0));
}

/* Deletes chunks [0, count) of sid (count UINT32_MAX: every chunk there is). */
static int chunks_delete(MDB_txn *txn, const store_tables *t, uint64_t sid, uint32_t count,
                         size_t *budget) {
    unsigned char key[13];
    for (uint32_t i = 0; i < count; i++) {
        MDB_val k = {key_chunk(key, sid, i), key};
        int rc = mdb_del(txn, t->blobs, &k, NULL);
        if (rc == MDB_NOTFOUND) {
            if (count == UINT32_MAX) break;
            continue;
        }
        if (rc) return store_err(rc);
        if (budget && *budget) (*budget)--;
    }
    return 0;
}

static uint32_t chunk_count(uint64_t stored) {
    return (uint32_t)((stored + BLOB_CHUNK - 1) / BLOB_CHUNK);
}

int blob_chunk_get(MDB_txn *txn, const store_tables *t, uint64_t sid, uint32_t idx,
                   MDB_val *out) {
    unsigned char key[13];
    MDB_val k = {key_chunk(key, sid, idx), key};
    return store_err(mdb_get(txn, t->blobs, &k, out));
}

void blob_digest_text(const unsigned char md5[16], char *out) {
    struct base64_encode_ctx ctx;
    memcpy(out, "md5-", 4);
    base64_encode_init(&ctx);
    size_t n = base64_encode_update(&ctx, out + 4, 16, md5);
    n += base64_encode_final(&ctx, out + 4 + n);
    out[4 + n] = 0;
}

/* ---- references ---------------------------------------------------------------------- */

int blob_link(MDB_txn *txn, const store_tables *t, const mimeo_blob *b) {
    blob_meta m;
    int rc = blob_meta_get(txn, t, b->info.sha256, &m);
    if (rc == 0) {
        m.refs++;
        rc = meta_put(txn, t, b->info.sha256, &m);
        /* The same bytes are stored already: this upload's own chunks are not needed. */
        if (!rc && b->sid && b->sid != m.sid) {
            rc = chunks_delete(txn, t, b->sid, b->nchunks, NULL);
            unsigned char key[9];
            MDB_val k = {key_pending(key, b->sid), key};
            int drc = mdb_del(txn, t->blobs, &k, NULL);
            if (!rc && drc && drc != MDB_NOTFOUND) rc = store_err(drc);
        }
        return rc;
    }
    if (rc != MIMEO_ENOTFOUND) return rc;
    if (b->by_ref) return MIMEO_ENOTFOUND; /* the bytes it named were dropped since */
    memset(&m, 0, sizeof m);
    m.refs = 1;
    m.stored = b->stored;
    m.length = b->length;
    m.gzip = b->info.gzip;
    memcpy(m.md5, b->md5_raw, 16);
    if (b->sid) {
        m.sid = b->sid;
        unsigned char key[9];
        MDB_val k = {key_pending(key, b->sid), key};
        rc = mdb_del(txn, t->blobs, &k, NULL);
        if (rc && rc != MDB_NOTFOUND) return store_err(rc);
    } else {
        /* Never committed: its bytes are still in memory and go in with the write. */
        if ((rc = next_sid(txn, t, &m.sid))) return rc;
        for (size_t off = 0, i = 0; off < b->chunk_len; off += BLOB_CHUNK, i++) {
            size_t n = b->chunk_len - off < BLOB_CHUNK ? b->chunk_len - off : BLOB_CHUNK;
            unsigned char key[13];
            MDB_val k = {key_chunk(key, m.sid, (uint32_t)i), key}, v = {n, b->chunk + off};
            if ((rc = store_err(mdb_put(txn, t->blobs, &k, &v, 0)))) return rc;
        }
    }
    return meta_put(txn, t, b->info.sha256, &m);
}

int blob_ref(MDB_txn *txn, const store_tables *t, const unsigned char sha[32]) {
    blob_meta m;
    int rc = blob_meta_get(txn, t, sha, &m);
    if (rc == MIMEO_ENOTFOUND) return MIMEO_ECORRUPT; /* a record names a blob that is gone */
    if (rc) return rc;
    m.refs++;
    return meta_put(txn, t, sha, &m);
}

int blob_unref(MDB_txn *txn, const store_tables *t, const unsigned char sha[32],
               size_t *budget) {
    blob_meta m;
    int rc = blob_meta_get(txn, t, sha, &m);
    if (rc == MIMEO_ENOTFOUND) return 0;
    if (rc) return rc;
    if (m.refs > 1) {
        m.refs--;
        return meta_put(txn, t, sha, &m);
    }
    if ((rc = chunks_delete(txn, t, m.sid, chunk_count(m.stored), budget))) return rc;
    unsigned char key[33];
    MDB_val k = {key_meta(key, sha), key};
    return store_err(mdb_del(txn, t->blobs, &k, NULL));
}

/* ---- writing -------------------------------------------------------------------------- */

/* One commit of an upload's buffered bytes: chunks idx, idx+1, … (all full but the last
 * one of the blob) under storage id sid, made and marked pending when sid is 0. */
typedef struct chunk_job {
    mimeo_env           *env;
    const unsigned char *data;
    size_t               len;
    uint32_t             idx;
    uint64_t             sid;   /* the blob's storage id, or 0: make one */
    uint64_t             made;  /* out: the id used (a rerun makes it again) */
} chunk_job;

static int job_chunk(MDB_txn *txn, void *arg) {
    chunk_job *j = arg;
    const store_tables *t = store_tables_get(j->env->store);
    uint64_t sid = j->sid;
    int rc = 0;
    if (!sid) {
        if ((rc = next_sid(txn, t, &sid))) return rc;
        unsigned char pk[9];
        MDB_val k = {key_pending(pk, sid), pk}, v = {0, ""};
        if ((rc = store_err(mdb_put(txn, t->blobs, &k, &v, 0)))) return rc;
    }
    uint32_t idx = j->idx;
    for (size_t off = 0; off < j->len && !rc; off += BLOB_CHUNK, idx++) {
        size_t n = j->len - off < BLOB_CHUNK ? j->len - off : BLOB_CHUNK;
        unsigned char key[13];
        MDB_val k = {key_chunk(key, sid, idx), key}, v = {n, (void *)(j->data + off)};
        rc = store_err(mdb_put(txn, t->blobs, &k, &v, 0));
    }
    j->made = sid;
    return rc;
}

/* ---- the flusher ------------------------------------------------------------------------
 * An upload arrives on the thread that reads the socket, and a durable commit of a few MiB
 * takes as long as receiving and hashing them. Committing in line would leave the socket
 * unread for every commit; instead a big upload gets a thread that commits one buffer
 * while the next fills, so receiving waits only when the disk is slower than the network.
 * Only one commit is ever in flight per blob, which keeps the chunks in order and the
 * storage id known before the next commit needs it. */
typedef struct blob_flusher {
    pthread_t       th;
    pthread_mutex_t lock;
    pthread_cond_t  cv;
    chunk_job       job;
    bool            busy;     /* job handed over, not done yet */
    bool            stop;
    int             rc;       /* the first failed commit */
} blob_flusher;

static void *blob_flusher_main(void *arg) {
    blob_flusher *f = arg;
    pthread_mutex_lock(&f->lock);
    for (;;) {
        while (!f->busy && !f->stop) pthread_cond_wait(&f->cv, &f->lock);
        if (!f->busy) break;
        chunk_job j = f->job;
        pthread_mutex_unlock(&f->lock);
        int rc = store_write(j.env->store, job_chunk, &j);
        pthread_mutex_lock(&f->lock);
        if (rc && !f->rc) f->rc = rc;
        f->job.made = rc ? 0 : j.made;
        f->busy = false;
        pthread_cond_broadcast(&f->cv);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

/* Waits for the commit in flight; takes its storage id. Its error, or 0. */
static int blob_flusher_wait(mimeo_blob *b) {
    blob_flusher *f = b->fl;
    if (!f) return 0;
    pthread_mutex_lock(&f->lock);
    while (f->busy) pthread_cond_wait(&f->cv, &f->lock);
    if (f->job.made) b->sid = f->job.made;
    int rc = f->rc;
    pthread_mutex_unlock(&f->lock);
    return rc;
}

static void blob_flusher_stop(mimeo_blob *b) {
    blob_flusher *f = b->fl;
    if (!f) return;
    (void)blob_flusher_wait(b);
    pthread_mutex_lock(&f->lock);
    f->stop = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->lock);
    pthread_join(f->th, NULL);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->lock);
    free(f);
    b->fl = NULL;
}

/* Starts the flusher and its second buffer; false when either cannot be had (the upload
 * then commits in line, as correct and only slower). */
static bool blob_flusher_start(mimeo_blob *b) {
    if (!b->spare && !(b->spare = malloc(BLOB_MEM))) return false;
    blob_flusher *f = calloc(1, sizeof *f);
    if (!f) return false;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->cv, NULL);
    if (pthread_create(&f->th, NULL, blob_flusher_main, f) != 0) {
        pthread_cond_destroy(&f->cv);
        pthread_mutex_destroy(&f->lock);
        free(f);
        return false;
    }
    b->fl = f;
    return true;
}

/* Commits the buffered bytes: handed to the flusher (after the previous commit is done)
 * with the buffers swapped, or in line when there is none (sync, or no flusher). */
static int blob_flush(mimeo_blob *b, bool sync) {
    int rc = blob_flusher_wait(b);
    if (rc) return rc;
    chunk_job j = {b->env, b->chunk, b->chunk_len, b->nchunks, b->sid, 0};
    uint32_t n = (uint32_t)((b->chunk_len + BLOB_CHUNK - 1) / BLOB_CHUNK);
    if (!sync && (b->fl || blob_flusher_start(b))) {
        blob_flusher *f = b->fl;
        pthread_mutex_lock(&f->lock);
        f->job = j;
        f->busy = true;
        pthread_cond_broadcast(&f->cv);
        pthread_mutex_unlock(&f->lock);
        unsigned char *t = b->chunk;
        b->chunk = b->spare;
        b->spare = t;
        b->chunk_cap = BLOB_MEM;
    } else {
        if ((rc = store_write(b->env->store, job_chunk, &j))) return rc;
        b->sid = j.made;
    }
    b->nchunks += n;
    b->chunk_len = 0;
    return 0;
}

/* Appends stored bytes: digests, then the buffer. A blob that stays under BLOB_MEM never
 * touches the disk before the write that names it, which stores it only when the store lacks
 * those bytes; a bigger one is committed BLOB_MEM at a time (one durable commit per few
 * MiB, and memory bounded per stream). Inline data (in_memory) is in memory anyway. */
static int blob_emit(mimeo_blob *b, const unsigned char *p, size_t n) {
    md5_update(&b->md5, n, p);
    sha256_update(&b->sha, n, p);
    b->stored += n;
    atomic_fetch_add_explicit(&b->env->blob_bytes_in, n, memory_order_relaxed);
    while (n > 0) {
        if (!b->in_memory && b->chunk_len == BLOB_MEM) {
            int rc = blob_flush(b, false);
            if (rc) return rc;
        }
        size_t take = n;
        if (!b->in_memory && take > BLOB_MEM - b->chunk_len) take = BLOB_MEM - b->chunk_len;
        size_t need = b->chunk_len + take;
        if (need > b->chunk_cap) {
            size_t cap = b->chunk_cap ? b->chunk_cap : 4096;
            while (cap < need) cap *= 2;
            if (!b->in_memory && cap > BLOB_MEM) cap = BLOB_MEM;
            unsigned char *nb = realloc(b->chunk, cap);
            if (!nb) return MIMEO_ENOMEM;
            b->chunk = nb;
            b->chunk_cap = cap;
        }
        memcpy(b->chunk + b->chunk_len, p, take);
        b->chunk_len += take;
        p += take;
        n -= take;
    }
    return 0;
}

int mimeo_blob_new(mimeo_env *env, const mimeo_blob_opts *opts, mimeo_blob **out) {
    *out = NULL;
    mimeo_blob *b = calloc(1, sizeof *b);
    if (!b) return MIMEO_ENOMEM;
    b->env = env;
    md5_init(&b->md5);
    sha256_init(&b->sha);
    if (opts && opts->gzip_input) {
        b->gzip_input = true;
        if (inflateInit2(&b->z, 15 + 16) != Z_OK) {
            free(b);
            return MIMEO_ENOMEM;
        }
        b->z_on = true;
    } else if (opts && opts->gzip_level > 0) {
        b->level = opts->gzip_level > 9 ? 9 : opts->gzip_level;
        /* 15 + 16: a gzip stream (header with mtime 0), so equal content compresses to
         * equal bytes and dedupes. */
        if (deflateInit2(&b->z, b->level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
            free(b);
            return MIMEO_ENOMEM;
        }
        b->z_on = true;
    }
    *out = b;
    return 0;
}

static int blob_deflate(mimeo_blob *b, const void *data, size_t len, int flush) {
    unsigned char out[16384];
    b->z.next_in = (unsigned char *)data;
    b->z.avail_in = (uInt)len;
    int zr;
    do {
        b->z.next_out = out;
        b->z.avail_out = sizeof out;
        zr = deflate(&b->z, flush);
        if (zr == Z_STREAM_ERROR) return MIMEO_EIO;
        size_t have = sizeof out - b->z.avail_out;
        if (have) {
            int rc = blob_emit(b, out, have);
            if (rc) return rc;
        }
    } while (b->z.avail_out == 0 || (flush == Z_FINISH && zr != Z_STREAM_END));
    return 0;
}

/* Counts the content of a gzip stream as it passes (and checks that it is one). */
static int blob_inflate_count(mimeo_blob *b, const void *data, size_t len) {
    unsigned char out[16384];
    b->z.next_in = (unsigned char *)data;
    b->z.avail_in = (uInt)len;
    while (b->z.avail_in > 0) {
        if (b->z_end) return MIMEO_EINVAL; /* bytes after the end of the stream */
        b->z.next_out = out;
        b->z.avail_out = sizeof out;
        int zr = inflate(&b->z, Z_NO_FLUSH);
        b->length += sizeof out - b->z.avail_out;
        if (zr == Z_STREAM_END) {
            if (b->z.avail_in) return MIMEO_EINVAL;
            b->z_end = true;
            break;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) return MIMEO_EINVAL;
    }
    return 0;
}

int mimeo_blob_write(mimeo_blob *b, const void *data, size_t len) {
    if (b->failed || b->info.digest[0]) return MIMEO_EINVAL; /* failed or finished */
    int rc = 0;
    if (len == 0) return 0;
    if (b->gzip_input) {
        rc = blob_inflate_count(b, data, len);
        if (!rc) rc = blob_emit(b, data, len);
    } else if (b->level) {
        rc = blob_deflate(b, data, len, Z_NO_FLUSH);
        b->length += len;
    } else {
        rc = blob_emit(b, data, len);
        b->length += len;
    }
    if (rc) b->failed = true;
    return rc;
}

int mimeo_blob_finish(mimeo_blob *b) {
    if (b->failed || b->info.digest[0]) return MIMEO_EINVAL;
    int rc = 0;
    if (b->level) rc = blob_deflate(b, NULL, 0, Z_FINISH);
    if (!rc && b->gzip_input && !b->z_end) rc = MIMEO_EINVAL; /* truncated stream */
    if (!rc) rc = blob_flusher_wait(b);
    if (!rc && b->sid && b->chunk_len) rc = blob_flush(b, true);
    blob_flusher_stop(b);
    if (rc) {
        b->failed = true;
        return rc;
    }
    unsigned char md5[16];
    md5_digest(&b->md5, 16, md5);
    sha256_digest(&b->sha, 32, b->info.sha256);
    memcpy(b->md5_raw, md5, 16);
    blob_digest_text(md5, b->info.digest);
    b->info.length = b->length;
    b->info.encoded_length = b->stored;
    b->info.gzip = b->level > 0 || b->gzip_input;
    b->finished = true;
    return 0;
}

int mimeo_blob_info_get(const mimeo_blob *b, mimeo_blob_info *info) {
    if (!b->info.digest[0]) return MIMEO_EINVAL;
    *info = b->info;
    return 0;
}

typedef struct discard_job {
    const mimeo_blob *b;
} discard_job;

static int job_discard(MDB_txn *txn, void *arg) {
    discard_job *j = arg;
    const store_tables *t = store_tables_get(j->b->env->store);
    unsigned char key[9];
    MDB_val k = {key_pending(key, j->b->sid), key}, v;
    int rc = mdb_get(txn, t->blobs, &k, &v);
    if (rc == MDB_NOTFOUND) return 0; /* published, or dropped as a duplicate */
    if (rc) return store_err(rc);
    rc = chunks_delete(txn, t, j->b->sid, UINT32_MAX, NULL);
    if (!rc) rc = store_err(mdb_del(txn, t->blobs, &k, NULL));
    return rc;
}

void mimeo_blob_free(mimeo_blob *b) {
    if (!b) return;
    blob_flusher_stop(b);   /* a commit in flight ends first, and gives its storage id */
    if (b->sid) {
        discard_job j = {b};
        /* On failure the chunks stay pending; the next open sweeps them. */
        (void)store_write(b->env->store, job_discard, &j);
    }
    if (b->z_on) {
        if (b->gzip_input) inflateEnd(&b->z);
        else deflateEnd(&b->z);
    }
    free(b->chunk);
    free(b->spare);
    free(b);
}

/* ---- sweeping and counting ------------------------------------------------------------- */

typedef struct sweep_job {
    mimeo_env *env;
    size_t     swept;
} sweep_job;

static int job_sweep_pending(MDB_txn *txn, void *arg) {
    sweep_job *j = arg;
    const store_tables *t = store_tables_get(j->env->store);
    j->swept = 0;
    for (;;) {
        MDB_cursor *cur;
        int rc = store_err(mdb_cursor_open(txn, t->blobs, &cur));
        if (rc) return rc;
        MDB_val k = {1, "p"}, v;
        int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        uint64_t sid = 0;
        bool found = mrc == 0 && k.mv_size == 9 && ((unsigned char *)k.mv_data)[0] == 'p';
        if (found) sid = be64_get((unsigned char *)k.mv_data + 1);
        mdb_cursor_close(cur);
        if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
        if (!found) return 0;
        if ((rc = chunks_delete(txn, t, sid, UINT32_MAX, NULL))) return rc;
        unsigned char key[9];
        MDB_val pk = {key_pending(key, sid), key};
        if ((rc = store_err(mdb_del(txn, t->blobs, &pk, NULL)))) return rc;
        j->swept++;
    }
}

int blob_sweep(mimeo_env *env) {
    sweep_job j = {env, 0};
    return store_write(env->store, job_sweep_pending, &j);
}

int mimeo_blob_stats_get(mimeo_env *env, mimeo_blob_stats *out) {
    memset(out, 0, sizeof *out);
    MDB_txn *txn;
    int rc = store_read_begin(env->store, &txn);
    if (rc) return rc;
    const store_tables *t = store_tables_get(env->store);
    MDB_cursor *cur;
    rc = store_err(mdb_cursor_open(txn, t->blobs, &cur));
    if (!rc) {
        MDB_val k, v;
        int mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
        for (; mrc == 0; mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            const unsigned char *kp = k.mv_data;
            if (kp[0] == 'b' && v.mv_size == META_BYTES) {
                out->blobs++;
                out->bytes += be64_get((const unsigned char *)v.mv_data + 17);
            } else if (kp[0] == 'p') {
                out->pending++;
            }
        }
        mdb_cursor_close(cur);
        if (mrc != MDB_NOTFOUND) rc = store_err(mrc);
    }
    store_read_end(env->store, txn);
    out->bytes_in = atomic_load_explicit(&env->blob_bytes_in, memory_order_relaxed);
    return rc;
}
