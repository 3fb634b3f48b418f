/* Internals shared by the files of src/db/: the environment, database handles, the
 * database record, and helpers that read documents inside a transaction. */
#ifndef MIMEO_DB_INT_H
#define MIMEO_DB_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "mimeo.h"
#include "../common/buf.h"
#include "../doc/revtree.h"
#include "../json/json.h"
#include "../store/store.h"

/* What a database record holds (the `dbs` table value), byte layout:
 *   version(1)=1 · dbid(8) · created_us(8) · revs_limit(4) · update_seq(8) · doc_count(8)
 *   · del_count(8) · next_body(8) · size_active(8) · size_external(8)      = 77 bytes */
typedef struct db_meta {
    uint64_t dbid;
    uint64_t created_us;
    uint32_t revs_limit;
    uint64_t update_seq;
    uint64_t doc_count;
    uint64_t del_count;
    uint64_t next_body;
    uint64_t size_active;
    uint64_t size_external;
} db_meta;

#define DB_META_BYTES 77
void db_meta_encode(const db_meta *m, unsigned char out[DB_META_BYTES]);
int  db_meta_decode(db_meta *m, const void *p, size_t n);

struct mimeo_db {
    mimeo_env      *env;
    char           *name;
    size_t          name_len;
    unsigned        refs;      /* guarded by env->lock */
    mimeo_db       *hash_next; /* chain in env->handles; guarded by env->lock */
    bool            deleted;   /* set after the delete commits; guarded by lock */

    pthread_mutex_t lock;      /* guards `meta` (committed state) and `deleted` */
    pthread_cond_t  changed;   /* broadcast after every commit that touched this db */
    db_meta         meta;      /* committed state, read by readers */

    /* Writer-thread only: the state as staged by the current group. */
    db_meta         staged;
    uint64_t        staged_group; /* group number in which `staged` was loaded */
    bool            staged_gone;  /* deleted by a job of the current group */
    mimeo_db       *staged_next;  /* list of dbs touched by the current group */
};

struct mimeo_env {
    store          *store;
    char            uuid[33];
    mimeo_options   opts;
    json_limits     limits;

    pthread_mutex_t lock;      /* guards the handle table and uuid state */
    mimeo_db      **handles;   /* hash buckets by name, chained through hash_next */
    size_t          handle_slots;
    size_t          handle_count;

    char            uuid_prefix[27];
    uint64_t        uuid_suffix;
    unsigned        uuid_uses;

    struct env_state *states; /* mimeo_env_state's list; guarded by lock */
    _Atomic uint64_t blob_bytes_in; /* bytes written into blobs (src/db/blob.c) */

    /* mimeo_env_on_commit's observer: ctx is stored before fn, read by the writer thread. */
    _Atomic(mimeo_commit_fn) on_commit;
    void *_Atomic   on_commit_ctx;
    pthread_mutex_t watch_lock; /* held while the watcher runs, so removing it is final */
    void          (*watch)(void *ctx, mimeo_db *db);
    void           *watch_ctx;

    /* Writer-thread only: the group in progress. */
    uint64_t        group;
    mimeo_db       *touched;
};

/* ---- helpers used across src/db ---------------------------------------------------- */
void db_err_set(mimeo_err *err, int code, const char *error, const char *reason);
/* Fills err with the default CouchDB error/reason for code, when err is set. Returns code. */
int  db_err(mimeo_err *err, int code);
/* Copies a json_error into err; returns its code. */
int  db_err_json(mimeo_err *err, const json_error *je);

/* Writer thread: the staged meta of db for this group (loaded on first touch). */
db_meta *db_stage(mimeo_db *db);
/* Readers: a copy of the committed meta; MIMEO_ENOTFOUND when the db was deleted. */
int  db_meta_snapshot(mimeo_db *db, db_meta *out);

/* A document as stored. */
typedef struct db_doc {
    uint64_t seq;
    revtree  tree;
} db_doc;
void db_doc_init(db_doc *d);
void db_doc_destroy(db_doc *d);
/* ---- the docs table, by id and in order (idkey.c: ids of any length) ---------------- */
/* Reads and decodes the document record; MIMEO_ENOTFOUND when absent. */
int  db_doc_load(MDB_txn *txn, const store_tables *t, uint64_t dbid, const char *id,
                 size_t id_len, db_doc *out);
int  db_doc_store(MDB_txn *txn, const store_tables *t, uint64_t dbid, const char *id,
                  size_t id_len, const db_doc *d, buf *scratch);
/* Splits a raw docs entry into its document id and record (varint seq · tree), both
 * borrowed from k/v. MIMEO_ECORRUPT. */
int  db_doc_record(const MDB_val *k, const MDB_val *v, const char **id, size_t *id_len,
                   const unsigned char **rec, size_t *rec_len);
/* Decodes a record as db_doc_record returns it into out (initialised). */
int  db_doc_decode(const unsigned char *rec, size_t rec_len, db_doc *out);
/* Rewrites the entry under an existing raw key (as a cursor found it) for id. */
int  db_doc_put_at(MDB_txn *txn, const store_tables *t, const MDB_val *key, const char *id,
                   size_t id_len, const db_doc *d, buf *scratch);
/* The docs key of an id short enough to be its own key (into key, STORE_KEY_MAX bytes), or
 * 0 for a longer one (its key takes a probe). */
size_t db_doc_key_short(unsigned char *key, uint64_t dbid, const char *id, size_t id_len);
/* Stores d under such a key through a write cursor on docs, with MDB_APPEND: only for a key
 * after every key of the table (else MIMEO_EEXIST, nothing written). No lookup. */
int  db_doc_append(MDB_cursor *cur, const MDB_val *key, const db_doc *d, buf *scratch);

/* Documents of one database in exact byte order of their ids, in either direction, inside
 * one read transaction. Use: open, seek, next until MIMEO_ENOTFOUND, close. */
typedef struct db_doc_cursor {
    MDB_cursor *cur;
    uint64_t    dbid;
    bool        descending;
    int         mrc;        /* the raw cursor: LMDB code and entry of the next key to read */
    MDB_val     k, v;
    void       *run;        /* a run of long ids with one key prefix, sorted */
    size_t      run_len, run_alloc, run_pos;
    buf         bound;      /* the seek bound, until the first id inside it */
    bool        bounded, exclusive;
} db_doc_cursor;
int  db_doc_cursor_open(db_doc_cursor *c, MDB_txn *txn, const store_tables *t, uint64_t dbid,
                        bool descending);
/* Positions before the first id ≥ id (descending: ≤ id); exclusive: > (<). id NULL: from
 * the first (last) id. */
int  db_doc_cursor_seek(db_doc_cursor *c, const char *id, size_t len, bool exclusive);
/* The next document: id and record borrowed from the transaction (valid until it ends).
 * 0, MIMEO_ENOTFOUND past the last, or an error. */
int  db_doc_cursor_next(db_doc_cursor *c, const char **id, size_t *id_len,
                        const unsigned char **rec, size_t *rec_len);
void db_doc_cursor_close(db_doc_cursor *c);
/* The stored body of node i, "{...}" (borrowed from txn); "{}" when it has none. */
int  db_body_get(MDB_txn *txn, const store_tables *t, uint64_t dbid, const revtree_node *n,
                 MDB_val *out);

/* The "follows":true attachments of the documents a read wrote, collected as it writes
 * them: offsets into text, where names and types sit NUL-terminated. */
typedef struct db_follow {
    size_t   name_off, name_len, type_off, type_len;
    uint64_t length, stored;
    bool     gzip;
} db_follow;
typedef struct db_follows {
    db_follow *v;
    size_t     n, cap;
    buf        text;
} db_follows;
void db_follows_reset(db_follows *f);
void db_follows_destroy(db_follows *f);
int  db_follows_add(db_follows *f, const char *name, size_t name_len, const char *type,
                    size_t type_len, uint64_t length, uint64_t stored, bool gzip);

/* Appends a document's JSON as served by GET: {"_id","_rev",…body…,"_deleted"?, meta…}.
 * node is the revision to show; opts chooses the meta members. fol (may be NULL) receives
 * the attachments written as "follows":true. */
int  db_doc_json(buf *out, MDB_txn *txn, const store_tables *t, uint64_t dbid,
                 const char *id, size_t id_len, const db_doc *d, uint32_t node,
                 const mimeo_get_opts *opts, db_follows *fol);
/* Appends "N-hash" of a node. */
int  db_rev_put(buf *out, const revtree_node *n);

/* Checks a doc id for storage: CouchDB's rule, the environment's
 * max_document_id_length, and for _local/ ids the key size of the locals table. */
int  db_docid_check(const mimeo_env *env, const char *id, size_t n, mimeo_err *err);

/* ---- read snapshots (read.c) ---------------------------------------------------------- */
/* A read transaction on db with its record as that transaction sees it. */
typedef struct db_snap {
    MDB_txn            *txn;
    const store_tables *t;
    db_meta             m;
    store              *s;
} db_snap;
/* MIMEO_ENOTFOUND ("Database does not exist.") when db was deleted or recreated. */
int  db_snap_begin(mimeo_db *db, db_snap *sn, mimeo_err *err);
void db_snap_end(db_snap *sn);

/* Looks up revision text rev in t: *node is its index or -1. MIMEO_EBADREV when malformed. */
int  db_find_rev(const revtree *t, const char *rev, size_t len, int64_t *node);

/* A single-document read as mimeo_doc_get does it, appended to out: the reply JSON, then a
 * NUL, then (at *rev_off) the revision read, NUL-terminated. deleted and seq describe it. */
int  db_doc_read(mimeo_db *db, const char *id, size_t id_len, const mimeo_get_opts *opts,
                 buf *out, size_t *json_len, size_t *rev_off, bool *deleted, uint64_t *seq,
                 db_follows *fol, mimeo_err *err);

/* ---- validate_doc_update (validate.c) ---------------------------------------------------- */
typedef struct db_vdu db_vdu;
/* The validators of db for one write by user (NULL: system). *out stays NULL when db has no
 * design document with validate_doc_update: then there is nothing to run. */
int  db_vdu_begin(mimeo_db *db, const mimeo_user_ctx *user, db_vdu **out);
/* Runs every validator on new_doc (the document as written, JSON) against the current winner
 * of id. 0, or the rejection in e: MIMEO_EFORBIDDEN, MIMEO_EUNAUTHORIZED, MIMEO_EIO
 * (os_process_error), or the query server's own error. */
int  db_vdu_check(db_vdu *v, const char *id, size_t id_len, const char *new_doc,
                  size_t new_len, mimeo_err *e);
/* The whole reason of the last rejection (e's is cut to MIMEO_ERR_REASON_MAX); borrowed
 * until the next check. */
const char *db_vdu_reason(db_vdu *v);
void db_vdu_end(db_vdu *v);
/* CouchDB's checks of a design document being written (body: its JSON object): member
 * types, a map for every view, known built-in reduces, and JavaScript functions that compile
 * (add_fun in a query-server process). 0, or MIMEO_EINVAL with invalid_design_doc or
 * compilation_error in e and the whole reason in *reason (free it), or MIMEO_EIO. */
int  db_ddoc_check(mimeo_db *db, const char *body, size_t len, mimeo_err *e, char **reason);

/* ---- test hooks (write.c) ------------------------------------------------------------------ */
/* The smallest _bulk_docs body that may be streamed (SIZE_MAX: never), and how many
 * requests were written streamed so far: the unit tests compare both ways' answers. */
extern size_t db_bulk_stream_min_bytes;
unsigned long db_bulk_streamed_count(void);

#endif
