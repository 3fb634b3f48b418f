/* Environments and databases: opening the data directory, the server uuid, sequential ids,
 * database records, cached handles, create/delete/list/info, and the group-commit staging
 * of each database's counters (update_seq, doc counts, sizes). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

#include "db_int.h"

/* ---- errors ---------------------------------------------------------------------------- */

const char *mimeo_strerror(int code) {
    switch (code) {
    case MIMEO_OK: return "success";
    case MIMEO_ENOTFOUND: return "not found";
    case MIMEO_EDELETED: return "deleted";
    case MIMEO_EEXIST: return "already exists";
    case MIMEO_ECONFLICT: return "document update conflict";
    case MIMEO_EINVAL: return "bad request";
    case MIMEO_EBADJSON: return "invalid JSON";
    case MIMEO_EBADID: return "illegal document id";
    case MIMEO_EBADREV: return "invalid revision";
    case MIMEO_EDOCVALIDATION: return "document validation failed";
    case MIMEO_EBADNAME: return "illegal database name";
    case MIMEO_ETOOLARGE: return "too large";
    case MIMEO_ENOSPC: return "no space left on the device";
    case MIMEO_ENOMEM: return "out of memory";
    case MIMEO_EIO: return "storage failure";
    case MIMEO_ECORRUPT: return "corrupt record";
    case MIMEO_ECLOSED: return "shutting down";
    case MIMEO_EEXPECTATION: return "some documents failed; nothing was written";
    case MIMEO_EBUSY: return "the data directory is in use";
    default: return "unknown error";
    }
}

void mimeo_free(void *p) { free(p); }

void db_err_set(mimeo_err *err, int code, const char *error, const char *reason) {
    err_set(err, code, error, "%s", reason);
}

int db_err(mimeo_err *err, int code) {
    if (!err || code == 0) return code;
    switch (code) {
    case MIMEO_ENOTFOUND: db_err_set(err, code, "not_found", "missing"); break;
    case MIMEO_EDELETED: db_err_set(err, code, "not_found", "deleted"); break;
    case MIMEO_EEXIST:
        db_err_set(err, code, "file_exists",
                   "The database could not be created, the file already exists.");
        break;
    case MIMEO_ECONFLICT: db_err_set(err, code, "conflict", "Document update conflict."); break;
    case MIMEO_EBADJSON: db_err_set(err, code, "bad_request", "invalid UTF-8 JSON"); break;
    case MIMEO_EBADREV: db_err_set(err, code, "bad_request", "Invalid rev format"); break;
    case MIMEO_EBADID: db_err_set(err, code, "illegal_docid", "Illegal document id"); break;
    case MIMEO_ETOOLARGE: db_err_set(err, code, "too_large", "the request entity is too large"); break;
    case MIMEO_ENOSPC:
        db_err_set(err, code, "insufficient_storage", "No space left on the device; nothing was written.");
        break;
    case MIMEO_ECLOSED: db_err_set(err, code, "service_unavailable", "The server is shutting down."); break;
    case MIMEO_ECORRUPT: db_err_set(err, code, "internal_server_error", "A stored record is corrupt."); break;
    case MIMEO_EIO: db_err_set(err, code, "internal_server_error", "Storage failure."); break;
    case MIMEO_ENOMEM: db_err_set(err, code, "internal_server_error", "Out of memory."); break;
    default: db_err_set(err, code, "bad_request", mimeo_strerror(code)); break;
    }
    return code;
}

int db_err_json(mimeo_err *err, const json_error *je) {
    if (err) *err = *je;
    return je->code;
}

/* ---- database records -------------------------------------------------------------------- */

void db_meta_encode(const db_meta *m, unsigned char out[DB_META_BYTES]) {
    out[0] = 1;
    be64_put(out + 1, m->dbid);
    be64_put(out + 9, m->created_us);
    out[17] = (unsigned char)(m->revs_limit >> 24);
    out[18] = (unsigned char)(m->revs_limit >> 16);
    out[19] = (unsigned char)(m->revs_limit >> 8);
    out[20] = (unsigned char)m->revs_limit;
    be64_put(out + 21, m->update_seq);
    be64_put(out + 29, m->doc_count);
    be64_put(out + 37, m->del_count);
    be64_put(out + 45, m->next_body);
    be64_put(out + 53, m->size_active);
    be64_put(out + 61, m->size_external);
    memset(out + 69, 0, 8); /* reserved */
}

int db_meta_decode(db_meta *m, const void *p, size_t n) {
    const unsigned char *b = p;
    if (n != DB_META_BYTES || b[0] != 1) return MIMEO_ECORRUPT;
    m->dbid = be64_get(b + 1);
    m->created_us = be64_get(b + 9);
    m->revs_limit = (uint32_t)b[17] << 24 | (uint32_t)b[18] << 16 | (uint32_t)b[19] << 8 | b[20];
    m->update_seq = be64_get(b + 21);
    m->doc_count = be64_get(b + 29);
    m->del_count = be64_get(b + 37);
    m->next_body = be64_get(b + 45);
    m->size_active = be64_get(b + 53);
    m->size_external = be64_get(b + 61);
    return 0;
}

/* ---- group staging (writer thread) ------------------------------------------------------- */

static void group_begin(void *ctx) {
    mimeo_env *env = ctx;
    env->group++;
    env->touched = NULL;
}

db_meta *db_stage(mimeo_db *db) {
    mimeo_env *env = db->env;
    if (db->staged_group != env->group) {
        pthread_mutex_lock(&db->lock);
        db->staged = db->meta;
        db->staged_gone = db->deleted;
        pthread_mutex_unlock(&db->lock);
        db->staged_group = env->group;
        db->staged_next = env->touched;
        env->touched = db;
    }
    return &db->staged;
}

static int group_before_commit(MDB_txn *txn, void *ctx) {
    mimeo_env *env = ctx;
    const store_tables *t = store_tables_get(env->store);
    for (mimeo_db *db = env->touched; db; db = db->staged_next) {
        if (db->staged_gone) continue;
        unsigned char rec[DB_META_BYTES];
        db_meta_encode(&db->staged, rec);
        MDB_val k = {db->name_len, db->name}, v = {sizeof rec, rec};
        int rc = store_err(mdb_put(txn, t->dbs, &k, &v, 0));
        if (rc) return rc;
    }
    return 0;
}

static void group_commit(void *ctx) {
    mimeo_env *env = ctx;
    mimeo_commit_fn fn = atomic_load(&env->on_commit);
    void *fctx = atomic_load(&env->on_commit_ctx);
    for (mimeo_db *db = env->touched; db; db = db->staged_next) {
        pthread_mutex_lock(&db->lock);
        bool advanced = !db->staged_gone && db->staged.update_seq > db->meta.update_seq;
        db->meta = db->staged;
        if (db->staged_gone) db->deleted = true;
        pthread_cond_broadcast(&db->changed);
        pthread_mutex_unlock(&db->lock);
        if (fn && advanced) fn(fctx, db->name, db->name_len, db->staged.update_seq);
    }
    env->touched = NULL;
}

static void group_abort(void *ctx) {
    mimeo_env *env = ctx;
    env->touched = NULL;
    env->group++; /* so that the next touch reloads the committed state */
}

int db_meta_snapshot(mimeo_db *db, db_meta *out) {
    pthread_mutex_lock(&db->lock);
    bool gone = db->deleted;
    *out = db->meta;
    pthread_mutex_unlock(&db->lock);
    return gone ? MIMEO_ENOTFOUND : 0;
}

/* ---- environment ------------------------------------------------------------------------- */

static uint64_t now_us(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
}

typedef struct uuid_job {
    char uuid[33];
} uuid_job;

/* Reads the server uuid, creating it on first start: it must survive restarts, or every
 * PouchDB client would restart its replications from zero. */
static int job_load_uuid(MDB_txn *txn, void *arg) {
    uuid_job *j = arg;
    MDB_dbi meta;
    int rc = store_err(mdb_dbi_open(txn, "meta", 0, &meta));
    if (rc) return rc;
    MDB_val k = {4, "uuid"}, v;
    rc = mdb_get(txn, meta, &k, &v);
    if (rc == 0 && v.mv_size == 32) {
        memcpy(j->uuid, v.mv_data, 32);
        j->uuid[32] = 0;
        return 0;
    }
    unsigned char raw[16];
    random_bytes(raw, sizeof raw);
    hex_encode(raw, sizeof raw, j->uuid);
    v.mv_size = 32;
    v.mv_data = j->uuid;
    return store_err(mdb_put(txn, meta, &k, &v, 0));
}

static int drop_pending(mimeo_env *env);

int mimeo_env_open(const char *dir, const mimeo_options *opts, mimeo_env **out,
                   mimeo_err *err) {
    *out = NULL;
    mimeo_env *env = calloc(1, sizeof *env);
    if (!env) return db_err(err, MIMEO_ENOMEM);
    if (opts) env->opts = *opts;
    if (!env->opts.revs_limit) env->opts.revs_limit = 1000;
    if (!env->opts.max_document_size) env->opts.max_document_size = JSON_DEFAULT_MAX_DOC;
    if (!env->opts.max_json_depth) env->opts.max_json_depth = JSON_DEFAULT_MAX_DEPTH;
    if (!env->opts.max_document_id_length) env->opts.max_document_id_length = MIMEO_ID_MAX;
    env->limits.max_depth = env->opts.max_json_depth;
    env->limits.max_doc_bytes = env->opts.max_document_size;
    pthread_mutex_init(&env->lock, NULL);
    env->handle_slots = 64;
    env->handles = calloc(env->handle_slots, sizeof *env->handles);
    if (!env->handles) {
        free(env);
        return db_err(err, MIMEO_ENOMEM);
    }

    char reason[MIMEO_ERR_REASON_MAX];
    int rc = store_open(dir, env->opts.initial_map_size, &env->store, reason, sizeof reason);
    if (rc) {
        db_err_set(err, rc, rc == MIMEO_EBUSY ? "service_unavailable" : "internal_server_error",
                   reason);
        free(env->handles);
        free(env);
        return rc;
    }
    store_group_hooks hooks = {group_begin, group_before_commit, group_commit, group_abort, env};
    store_set_group_hooks(env->store, &hooks);

    uuid_job uj;
    rc = store_write(env->store, job_load_uuid, &uj);
    if (rc) {
        db_err(err, rc);
        store_close(env->store);
        free(env->handles);
        free(env);
        return rc;
    }
    memcpy(env->uuid, uj.uuid, 33);
    rc = drop_pending(env);
    if (rc) {
        db_err(err, rc);
        store_close(env->store);
        free(env->handles);
        free(env);
        return rc;
    }
    *out = env;
    return 0;
}

static int compact_err(mimeo_err *err, int rc, const char *reason) {
    if (rc && reason[0]) {
        const char *name = rc == MIMEO_EBUSY ? "service_unavailable"
                         : rc == MIMEO_ENOTFOUND ? "not_found"
                         : rc == MIMEO_ENOSPC ? "insufficient_storage" : "internal_server_error";
        db_err_set(err, rc, name, reason);
    } else if (rc) {
        db_err(err, rc);
    }
    return rc;
}

int mimeo_dir_compact(const char *dir, uint64_t *before, uint64_t *after, mimeo_err *err) {
    uint64_t b, a;
    char reason[MIMEO_ERR_REASON_MAX];
    reason[0] = 0;
    int rc = store_compact(dir, &b, &a, reason, sizeof reason);
    if (before) *before = b;
    if (after) *after = a;
    return compact_err(err, rc, reason);
}

int mimeo_env_compact(mimeo_env *env, uint64_t *before, uint64_t *after, mimeo_err *err) {
    uint64_t b = 0, a = 0;
    char reason[MIMEO_ERR_REASON_MAX];
    reason[0] = 0;
    int rc = store_compact_live(env->store, &b, &a, reason, sizeof reason);
    if (before) *before = b;
    if (after) *after = a;
    return compact_err(err, rc, reason);
}

static void db_free(mimeo_db *db) {
    pthread_mutex_destroy(&db->lock);
    pthread_cond_destroy(&db->changed);
    free(db->name);
    free(db);
}

struct env_state {
    struct env_state *next;
    const void       *key;
    void             *state;
    void            (*destroy)(void *state);
};

void mimeo_env_close(mimeo_env *env) {
    if (!env) return;
    /* Layers above (the replicator's jobs) may still use the store: they go first. */
    while (env->states) {
        struct env_state *s = env->states;
        env->states = s->next;
        if (s->destroy) s->destroy(s->state);
        free(s);
    }
    store_close(env->store);
    for (size_t i = 0; i < env->handle_slots; i++) {
        mimeo_db *db = env->handles[i];
        while (db) {
            mimeo_db *next = db->hash_next;
            /* Handles still open by the caller are a caller bug; free them anyway. */
            db_free(db);
            db = next;
        }
    }
    free(env->handles);
    pthread_mutex_destroy(&env->lock);
    free(env);
}

const char *mimeo_env_uuid(const mimeo_env *env) { return env->uuid; }

size_t mimeo_env_open_dbs(mimeo_env *env) {
    pthread_mutex_lock(&env->lock);
    size_t n = env->handle_count;
    pthread_mutex_unlock(&env->lock);
    return n;
}

void mimeo_env_on_commit(mimeo_env *env, mimeo_commit_fn fn, void *ctx) {
    atomic_store(&env->on_commit, NULL);
    atomic_store(&env->on_commit_ctx, ctx);
    atomic_store(&env->on_commit, fn);
}

void *mimeo_env_state(mimeo_env *env, const void *key, void *(*make)(mimeo_env *env),
                      void (*destroy)(void *state)) {
    pthread_mutex_lock(&env->lock);
    struct env_state *s = env->states;
    while (s && s->key != key) s = s->next;
    void *p = s ? s->state : NULL;
    if (!s && (s = calloc(1, sizeof *s)) != NULL) {
        p = make(env);
        if (p) {
            *s = (struct env_state){env->states, key, p, destroy};
            env->states = s;
        } else {
            free(s);
        }
    }
    pthread_mutex_unlock(&env->lock);
    return p;
}

/* CouchDB's "sequential" uuids: a random 26-hex prefix reused for many ids and a 6-hex
 * suffix that grows by a random step, so ids increase (B-tree inserts stay at the end) yet
 * are unguessable across prefixes. */
void mimeo_uuid_next(mimeo_env *env, char out[33]) {
    pthread_mutex_lock(&env->lock);
    uint16_t step;
    random_bytes(&step, sizeof step);
    step = (uint16_t)(1 + step % 0xffe);
    if (!env->uuid_prefix[0] || env->uuid_suffix + step > 0xfff000) {
        unsigned char raw[13];
        random_bytes(raw, sizeof raw);
        hex_encode(raw, sizeof raw, env->uuid_prefix);
        uint16_t start;
        random_bytes(&start, sizeof start);
        env->uuid_suffix = start % 0xfff;
    }
    env->uuid_suffix += step;
    memcpy(out, env->uuid_prefix, 26);
    snprintf(out + 26, 7, "%06llx", (unsigned long long)env->uuid_suffix);
    pthread_mutex_unlock(&env->lock);
}

/* ---- names and handles --------------------------------------------------------------------- */

bool mimeo_db_name_valid(const char *name, size_t len) {
    if (len == 0 || len > 238) return false;
    static const char *const system[] = {"_users", "_replicator", "_global_changes"};
    for (size_t i = 0; i < sizeof system / sizeof *system; i++)
        if (len == strlen(system[i]) && memcmp(name, system[i], len) == 0) return true;
    if (name[0] < 'a' || name[0] > 'z') return false;
    for (size_t i = 1; i < len; i++) {
        char c = name[i];
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) continue;
        if (strchr("_$()+-/", c) && c) continue;
        return false;
    }
    return true;
}

static int name_error(mimeo_err *err, const char *name, size_t len) {
    char reason[MIMEO_ERR_REASON_MAX];
    snprintf(reason, sizeof reason,
             "Name: '%.*s'. Only lowercase characters (a-z), digits (0-9), and any of the "
             "characters _, $, (, ), +, -, and / are allowed. Must begin with a letter.",
             (int)(len > 100 ? 100 : len), name);
    db_err_set(err, MIMEO_EBADNAME, "illegal_database_name", reason);
    return MIMEO_EBADNAME;
}

static uint64_t name_hash(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a: names are short and trusted */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* env->lock held. */
static mimeo_db **handle_slot(mimeo_env *env, const char *name, size_t len) {
    mimeo_db **slot = &env->handles[name_hash(name, len) % env->handle_slots];
    while (*slot && !((*slot)->name_len == len && memcmp((*slot)->name, name, len) == 0))
        slot = &(*slot)->hash_next;
    return slot;
}

/* env->lock held. Grows the bucket array when chains get long. */
static void handles_grow(mimeo_env *env) {
    if (env->handle_count < env->handle_slots * 2) return;
    size_t slots = env->handle_slots * 4;
    mimeo_db **fresh = calloc(slots, sizeof *fresh);
    if (!fresh) return; /* longer chains, still correct */
    for (size_t i = 0; i < env->handle_slots; i++) {
        mimeo_db *db = env->handles[i];
        while (db) {
            mimeo_db *next = db->hash_next;
            size_t at = name_hash(db->name, db->name_len) % slots;
            db->hash_next = fresh[at];
            fresh[at] = db;
            db = next;
        }
    }
    free(env->handles);
    env->handles = fresh;
    env->handle_slots = slots;
}

/* env->lock held: unlinks db from the table and drops the table's reference. */
static void handle_forget(mimeo_env *env, mimeo_db *db) {
    mimeo_db **slot = handle_slot(env, db->name, db->name_len);
    if (*slot != db) return;
    *slot = db->hash_next;
    db->hash_next = NULL;
    env->handle_count--;
    if (--db->refs == 0) db_free(db);
}

int mimeo_db_open(mimeo_env *env, const char *name, mimeo_db **out, mimeo_err *err) {
    *out = NULL;
    size_t len = strlen(name);
    if (!mimeo_db_name_valid(name, len)) return name_error(err, name, len);
    pthread_mutex_lock(&env->lock);
    mimeo_db **slot = handle_slot(env, name, len);
    if (*slot) {
        mimeo_db *db = *slot;
        pthread_mutex_lock(&db->lock);
        bool gone = db->deleted;
        pthread_mutex_unlock(&db->lock);
        if (!gone) {
            db->refs++;
            pthread_mutex_unlock(&env->lock);
            *out = db;
            return 0;
        }
        handle_forget(env, db);
    }
    /* Not cached: read its record. */
    MDB_txn *txn;
    int rc = store_read_begin(env->store, &txn);
    db_meta meta;
    if (!rc) {
        MDB_val k = {len, (void *)name}, v;
        rc = mdb_get(txn, store_tables_get(env->store)->dbs, &k, &v);
        rc = rc ? store_err(rc) : db_meta_decode(&meta, v.mv_data, v.mv_size);
        store_read_end(env->store, txn);
    }
    if (rc) {
        pthread_mutex_unlock(&env->lock);
        if (rc == MIMEO_ENOTFOUND) {
            db_err_set(err, rc, "not_found", "Database does not exist.");
            return rc;
        }
        return db_err(err, rc);
    }
    mimeo_db *db = calloc(1, sizeof *db);
    if (!db || !(db->name = malloc(len + 1))) {
        free(db);
        pthread_mutex_unlock(&env->lock);
        return db_err(err, MIMEO_ENOMEM);
    }
    memcpy(db->name, name, len + 1);
    db->name_len = len;
    db->env = env;
    db->meta = meta;
    db->refs = 2; /* the table's and the caller's */
    pthread_mutex_init(&db->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&db->changed, &ca);
    pthread_condattr_destroy(&ca);
    slot = handle_slot(env, name, len);
    *slot = db;
    env->handle_count++;
    handles_grow(env);
    pthread_mutex_unlock(&env->lock);
    *out = db;
    return 0;
}

void mimeo_db_close(mimeo_db *db) {
    if (!db) return;
    mimeo_env *env = db->env;
    pthread_mutex_lock(&env->lock);
    if (--db->refs == 0) db_free(db);
    pthread_mutex_unlock(&env->lock);
}

const char *mimeo_db_name(const mimeo_db *db) { return db->name; }

typedef struct create_job {
    mimeo_env  *env;
    const char *name;
    size_t      len;
    unsigned    revs_limit;
} create_job;

static int job_create(MDB_txn *txn, void *arg) {
    create_job *j = arg;
    const store_tables *t = store_tables_get(j->env->store);
    MDB_val k = {j->len, (void *)j->name}, v;
    if (mdb_get(txn, t->dbs, &k, &v) == 0) return MIMEO_EEXIST;
    /* Database ids are never reused, so a stale handle of a deleted database can never
     * see the keys of a new one with the same name. */
    MDB_val nk = {9, "next_dbid"}, nv;
    uint64_t dbid = 1;
    if (mdb_get(txn, t->meta, &nk, &nv) == 0 && nv.mv_size == 8) dbid = be64_get(nv.mv_data);
    unsigned char next[8];
    be64_put(next, dbid + 1);
    nv.mv_size = 8;
    nv.mv_data = next;
    int rc = store_err(mdb_put(txn, t->meta, &nk, &nv, 0));
    if (rc) return rc;
    db_meta m = {0};
    m.dbid = dbid;
    m.created_us = now_us();
    m.revs_limit = j->revs_limit;
    m.next_body = 1;
    unsigned char rec[DB_META_BYTES];
    db_meta_encode(&m, rec);
    v.mv_size = sizeof rec;
    v.mv_data = rec;
    return store_err(mdb_put(txn, t->dbs, &k, &v, MDB_NOOVERWRITE));
}

int mimeo_db_create(mimeo_env *env, const char *name, mimeo_err *err) {
    size_t len = strlen(name);
    if (!mimeo_db_name_valid(name, len)) return name_error(err, name, len);
    create_job j = {env, name, len, env->opts.revs_limit};
    int rc = store_write(env->store, job_create, &j);
    return db_err(err, rc);
}

typedef struct delete_job {
    mimeo_db *db;
    uint64_t  dbid;   /* out: the id whose keys must go */
} delete_job;

/* Deleting a database takes its record away in one job (the reply can say "gone") and
 * leaves a "drop" mark naming its id; its keys then go in jobs of DROP_CHUNK, so a huge
 * database neither overflows one transaction nor holds the writer. Ids are never reused,
 * so keys not yet dropped are invisible; a mark left by a crash is finished at open. */
#define DROP_CHUNK 20000
#define DROP_MARK "drop"
#define DROP_MARK_LEN 4

static size_t drop_key(unsigned char *key, uint64_t dbid) {
    memcpy(key, DROP_MARK, DROP_MARK_LEN);
    be64_put(key + DROP_MARK_LEN, dbid);
    return DROP_MARK_LEN + 8;
}

static int job_delete(MDB_txn *txn, void *arg) {
    delete_job *j = arg;
    mimeo_db *db = j->db;
    const store_tables *t = store_tables_get(db->env->store);
    db_meta *m = db_stage(db);
    if (db->staged_gone) return MIMEO_ENOTFOUND;
    MDB_val k = {db->name_len, db->name};
    int rc = store_err(mdb_del(txn, t->dbs, &k, NULL));
    unsigned char key[DROP_MARK_LEN + 8];
    MDB_val dk = {drop_key(key, m->dbid), key}, dv = {0, ""};
    if (!rc) rc = store_err(mdb_put(txn, t->meta, &dk, &dv, 0));
    if (!rc) db->staged_gone = true;
    j->dbid = m->dbid;
    return rc;
}

typedef struct drop_job {
    mimeo_env *env;
    uint64_t   dbid;
    bool       done;
} drop_job;

static int job_drop_chunk(MDB_txn *txn, void *arg) {
    drop_job *j = arg;
    const store_tables *t = store_tables_get(j->env->store);
    const MDB_dbi tables[] = {t->docs, t->seqs, t->bodies, t->locals};
    size_t budget = DROP_CHUNK;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof tables / sizeof *tables; i++)
        rc = store_delete_prefix(txn, tables[i], j->dbid, &budget);
    /* Mango index rows (src/db/index.c) are keyed by the database id too. Their table
     * exists only once an index was built; opening it here without MDB_CREATE is harmless
     * when some other job already holds its handle (LMDB hands back the same one). */
    if (rc == 0) {
        MDB_dbi mango;
        int mrc = mdb_dbi_open(txn, "mango", MDB_DUPSORT, &mango);
        if (mrc == 0) rc = store_delete_prefix(txn, mango, j->dbid, &budget);
        else if (mrc != MDB_NOTFOUND) rc = store_err(mrc);
    }
    if (rc < 0) return rc;
    j->done = rc == 0;
    if (j->done) {
        unsigned char key[DROP_MARK_LEN + 8];
        MDB_val dk = {drop_key(key, j->dbid), key};
        int drc = mdb_del(txn, t->meta, &dk, NULL);
        if (drc && drc != MDB_NOTFOUND) return store_err(drc);
    }
    return 0;
}

static int drop_keys(mimeo_env *env, uint64_t dbid) {
    drop_job j = {env, dbid, false};
    int rc = 0;
    while (!rc && !j.done) rc = store_write(env->store, job_drop_chunk, &j);
    return rc;
}

/* Finishes drops that a crash interrupted. */
static int drop_pending(mimeo_env *env) {
    for (;;) {
        MDB_txn *txn;
        int rc = store_read_begin(env->store, &txn);
        if (rc) return rc;
        MDB_cursor *cur;
        uint64_t dbid = 0;
        rc = store_err(mdb_cursor_open(txn, store_tables_get(env->store)->meta, &cur));
        if (!rc) {
            MDB_val k = {DROP_MARK_LEN, DROP_MARK}, v;
            int mrc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            if (mrc == 0 && k.mv_size == DROP_MARK_LEN + 8 &&
                memcmp(k.mv_data, DROP_MARK, DROP_MARK_LEN) == 0)
                dbid = be64_get((unsigned char *)k.mv_data + DROP_MARK_LEN);
            mdb_cursor_close(cur);
        }
        store_read_end(env->store, txn);
        if (rc || !dbid) return rc;
        if ((rc = drop_keys(env, dbid))) return rc;
    }
}

int mimeo_db_delete(mimeo_env *env, const char *name, mimeo_err *err) {
    mimeo_db *db;
    int rc = mimeo_db_open(env, name, &db, err);
    if (rc) return rc;
    delete_job j = {db, 0};
    rc = store_write(env->store, job_delete, &j);
    if (rc == 0) {
        pthread_mutex_lock(&env->lock);
        handle_forget(env, db);
        pthread_mutex_unlock(&env->lock);
        /* The database is gone for everyone already; this only frees its space. */
        rc = drop_keys(env, j.dbid);
    }
    mimeo_db_close(db);
    if (rc == MIMEO_ENOTFOUND) {
        db_err_set(err, rc, "not_found", "Database does not exist.");
        return rc;
    }
    return db_err(err, rc);
}

int mimeo_db_list(mimeo_env *env, const char *start,
                  int (*fn)(void *ctx, const char *name, size_t len), void *ctx) {
    /* Names are copied out page by page so that the callback never runs inside a read
     * transaction (it may write a network reply for as long as it likes). */
    buf names;
    buf_init(&names, 0);
    buf from;
    buf_init(&from, 0);
    bool first = true;
    int rc = start ? buf_puts(&from, start) : 0;
    while (!rc) {
        MDB_txn *txn;
        rc = store_read_begin(env->store, &txn);
        if (rc) break;
        MDB_cursor *cur;
        rc = store_err(mdb_cursor_open(txn, store_tables_get(env->store)->dbs, &cur));
        size_t count = 0;
        buf_reset(&names);
        if (!rc) {
            MDB_val k = {from.len, from.data}, v;
            int mrc = from.len ? mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)
                               : mdb_cursor_get(cur, &k, &v, MDB_FIRST);
            /* After the first page, `from` is the last name delivered: skip it. */
            if (mrc == 0 && !first && k.mv_size == from.len &&
                memcmp(k.mv_data, from.data, from.len) == 0)
                mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            while (mrc == 0 && count < 512 && !rc) {
                uint32_t n = (uint32_t)k.mv_size;
                rc = buf_put(&names, &n, sizeof n);
                if (!rc) rc = buf_put(&names, k.mv_data, k.mv_size);
                count++;
                mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            }
            if (!rc && mrc && mrc != MDB_NOTFOUND) rc = store_err(mrc);
            mdb_cursor_close(cur);
        }
        store_read_end(env->store, txn);
        if (rc || count == 0) break;
        const char *p = names.data;
        for (size_t i = 0; i < count && !rc; i++) {
            uint32_t n;
            memcpy(&n, p, sizeof n);
            rc = fn(ctx, p + sizeof n, n);
            buf_reset(&from);
            if (!rc) rc = buf_put(&from, p + sizeof n, n);
            p += sizeof n + n;
        }
        first = false;
        if (rc || count < 512) break;
    }
    buf_destroy(&names);
    buf_destroy(&from);
    return rc;
}

int mimeo_db_info_get(mimeo_db *db, mimeo_db_info *info) {
    db_meta m;
    int rc = db_meta_snapshot(db, &m);
    if (rc) return rc;
    memset(info, 0, sizeof *info);
    info->doc_count = m.doc_count;
    info->doc_del_count = m.del_count;
    info->update_seq = m.update_seq;
    info->instance_start_time = m.created_us;
    info->size_active = m.size_active;
    info->size_external = m.size_external;
    info->revs_limit = m.revs_limit;
    info->size_file = store_file_size(db->env->store);
    return 0;
}

typedef struct revs_limit_job {
    mimeo_db *db;
    unsigned  limit;
} revs_limit_job;

static int job_revs_limit(MDB_txn *txn, void *arg) {
    (void)txn;
    revs_limit_job *j = arg;
    db_meta *m = db_stage(j->db);
    if (j->db->staged_gone) return MIMEO_ENOTFOUND;
    m->revs_limit = j->limit;
    return 0;
}

int mimeo_db_revs_limit_set(mimeo_db *db, unsigned limit, mimeo_err *err) {
    if (limit == 0) {
        db_err_set(err, MIMEO_EINVAL, "bad_request", "revs_limit must be a positive integer");
        return MIMEO_EINVAL;
    }
    revs_limit_job j = {db, limit};
    return db_err(err, store_write(db->env->store, job_revs_limit, &j));
}
