/* mimeo — a replicating JSON document store.
 *
 * This header is the whole public API of libmimeo and its manual. The server (`mimeo serve`)
 * is built on exactly these calls.
 *
 * Model. An environment (mimeo_env) is a data directory holding any number of databases.
 * A database holds documents; each document is a revision tree (CouchDB's model: every edit
 * adds a revision "N-hash", concurrent edits make branches, one deterministic winner).
 * The API speaks JSON text in and out, in CouchDB's shapes, so what a C program sees is what
 * an HTTP client of the server sees; reads also come as structured rows from cursors (see
 * "rows and cursors"), which is what the server itself uses.
 *
 * Conventions.
 * - Every function returning int returns 0 on success or a negative MIMEO_E* code.
 * - Functions that can fail for a reason a user must read take a `mimeo_err *err` (may be
 *   NULL); on failure it holds CouchDB's error name and reason.
 * - `char **json_out` results are new: the caller frees them with mimeo_free().
 * - Row callbacks get borrowed JSON text, valid only during the call; a non-zero return
 *   from a callback stops the iteration and is returned by the call.
 * - A successful write has been durably committed to disk before the call returns.
 * - All calls are thread-safe: handles may be shared between threads.
 */
#ifndef MIMEO_H
#define MIMEO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MIMEO_VERSION "0.1.0"
/* The CouchDB version mimeo answers as in GET /: the API level it implements. */
#define MIMEO_COUCHDB_VERSION "3.5.0"

#if defined(__GNUC__)
#define MIMEO_API __attribute__((visibility("default")))
#else
#define MIMEO_API
#endif

/* ---- errors ----------------------------------------------------------------------------- */
enum {
    MIMEO_OK            = 0,
    MIMEO_ENOTFOUND     = -1,  /* database, document, revision or local doc does not exist */
    MIMEO_EDELETED      = -2,  /* the document exists but its winner is a tombstone */
    MIMEO_EEXIST        = -3,  /* database already exists */
    MIMEO_ECONFLICT     = -4,  /* stale or missing _rev */
    MIMEO_EINVAL        = -5,  /* malformed request (bad_request) */
    MIMEO_EBADJSON      = -6,  /* unparsable JSON, bad UTF-8, duplicate keys, too deep */
    MIMEO_EBADID        = -7,  /* illegal document id */
    MIMEO_EBADREV       = -8,  /* malformed revision id */
    MIMEO_EDOCVALIDATION = -9, /* unknown special member, malformed _revisions */
    MIMEO_EBADNAME      = -10, /* illegal database name */
    MIMEO_ETOOLARGE     = -11, /* document or request over its size limit */
    MIMEO_ENOSPC        = -12, /* the disk is full; nothing was written */
    MIMEO_ENOMEM        = -13,
    MIMEO_EIO           = -14, /* storage failure */
    MIMEO_ECORRUPT      = -15, /* a stored record failed validation */
    MIMEO_ECLOSED       = -16, /* the environment is shutting down */
    MIMEO_EEXPECTATION  = -17, /* all_or_nothing: some document failed, none written */
    MIMEO_EBUSY         = -18, /* the data directory is open in another environment */
    MIMEO_EFORBIDDEN    = -19, /* validate_doc_update threw {forbidden} (403) */
    MIMEO_EUNAUTHORIZED = -20, /* validate_doc_update threw {unauthorized} (401) */
    MIMEO_EPRECONDITION = -21, /* an attachment stub names nothing the parent has (412) */
};

#define MIMEO_ERR_NAME_MAX   32
#define MIMEO_ERR_REASON_MAX 200

/* CouchDB-shaped error detail: code is a MIMEO_E* value; error is CouchDB's error name
 * ("not_found", "conflict", "bad_request", "doc_validation", …) and reason its text. */
typedef struct mimeo_err {
    int  code;
    char error[MIMEO_ERR_NAME_MAX];
    char reason[MIMEO_ERR_REASON_MAX];
} mimeo_err;

/* A static English text for a code. */
MIMEO_API const char *mimeo_strerror(int code);
/* Frees memory that mimeo returned through a `char **` parameter. */
MIMEO_API void mimeo_free(void *p);

/* ---- environments ----------------------------------------------------------------------- */
typedef struct mimeo_env mimeo_env;

typedef struct mimeo_options {
    unsigned revs_limit;        /* default _revs_limit of new databases; 0 → 1000 */
    size_t   max_document_size; /* bytes of one document body; 0 → 8 MiB */
    unsigned max_json_depth;    /* nesting cap of any JSON input; 0 → 256 */
    size_t   initial_map_size;  /* bytes of LMDB map to start with; 0 → 64 MiB; it grows */
    size_t   max_document_id_length; /* bytes of one document id; 0 → MIMEO_ID_MAX */
    /* validate_doc_update runs in query-server processes (CouchDB's protocol): the command
     * to start one ([query_servers] javascript; borrowed until mimeo_env_close; NULL → the
     * mimeo-js binary beside the running program) and the time one call may take
     * ([couchdb] os_process_timeout; 0 → 5000 ms). */
    const char *query_server;
    unsigned    os_process_timeout;
    /* Attachments stored gzip-encoded, as CouchDB does ([attachments] compressible_types and
     * compression_level): a comma-separated list of media types, where a type ending in
     * "/" and an asterisk matches a whole family (borrowed until mimeo_env_close; NULL →
     * CouchDB's default: every text type, application/javascript, application/json and
     * application/xml; "" → none), and the zlib level (0 → 8; -1 → never compress). */
    const char *att_compressible_types;
    int         att_compression_level;
} mimeo_options;

/* Opens (creating if needed) the data directory `dir`. opts may be NULL. New *env; close it
 * with mimeo_env_close. MIMEO_EIO with err->reason on failure (e.g. permissions).
 * A data directory is open in one environment at a time: while one (in any process) has
 * it, opening it again fails with MIMEO_EBUSY, err->reason naming the holder's pid. */
MIMEO_API int  mimeo_env_open(const char *dir, const mimeo_options *opts, mimeo_env **env,
                              mimeo_err *err);
/* Shrinks the data file of the data directory `dir`, which no environment may have open
 * (MIMEO_EBUSY otherwise). Deleting documents or databases frees pages for reuse but never
 * makes the file smaller; this writes a copy holding only the pages in use and swaps it in
 * atomically. Needs free disk space for the copy. before/after (may be NULL) receive the
 * file's size in bytes. MIMEO_ENOTFOUND when dir holds no data. */
MIMEO_API int  mimeo_dir_compact(const char *dir, uint64_t *before, uint64_t *after,
                                 mimeo_err *err);
/* The same on an open environment, while it serves (POST /_node/_local/_compact): writes
 * wait while the copy is made (reads go on), then reads wait for the swap. If the new file
 * cannot be opened the old one is put back (and if even that fails the process aborts, with
 * the data on disk whole). */
MIMEO_API int  mimeo_env_compact(mimeo_env *env, uint64_t *before, uint64_t *after,
                                 mimeo_err *err);
/* Waits for writes in flight, commits them, and closes the store. Open db handles must be
 * closed first. */
MIMEO_API void mimeo_env_close(mimeo_env *env);
/* The server's stable uuid (32 hex chars), kept in the data directory. Borrowed, valid
 * until mimeo_env_close. */
MIMEO_API const char *mimeo_env_uuid(const mimeo_env *env);
/* Database handles env holds open (cached after first use until the database is deleted). */
MIMEO_API size_t mimeo_env_open_dbs(mimeo_env *env);
/* Next id of CouchDB's "sequential" kind: 32 hex chars whose 26-char random prefix is kept
 * for a while and whose suffix grows, so that generated ids increase and B-tree inserts stay
 * local. out receives 32 chars + NUL. */
MIMEO_API void mimeo_uuid_next(mimeo_env *env, char out[33]);
/* State that a layer built on this API keeps per environment (the replicator keeps its jobs
 * here; an application may keep its own). Returns the pointer stored under key (compared as
 * a pointer: use the address of a static object), made by make(env) on the first call for
 * that key; NULL when make returns NULL (then a later call tries again). At
 * mimeo_env_close, before the store closes, each state is handed to its destroy (may be
 * NULL), newest first. Thread-safe; make runs under the environment's lock and must not
 * call back into mimeo_env_state. */
MIMEO_API void *mimeo_env_state(mimeo_env *env, const void *key, void *(*make)(mimeo_env *env),
                                void (*destroy)(void *state));

/* An observer of committed writes: called once per database whose update_seq a commit
 * advanced (_local documents do not), with its new update_seq, on the writer's thread after
 * the commit. It must be quick and must not call into env (it would deadlock). One observer
 * per environment; NULL removes it. The mesh uses it to push fresh writes at once. */
typedef void (*mimeo_commit_fn)(void *ctx, const char *db, size_t len, uint64_t update_seq);
MIMEO_API void mimeo_env_on_commit(mimeo_env *env, mimeo_commit_fn fn, void *ctx);

/* ---- databases -------------------------------------------------------------------------- */
typedef struct mimeo_db mimeo_db;

/* Database names follow CouchDB: ^[a-z][a-z0-9_$()+/-]*$, or one of the system names
 * _users, _replicator, _global_changes; at most 238 bytes. */
MIMEO_API bool mimeo_db_name_valid(const char *name, size_t len);
/* MIMEO_EEXIST (412 file_exists), MIMEO_EBADNAME. */
MIMEO_API int  mimeo_db_create(mimeo_env *env, const char *name, mimeo_err *err);
/* Deletes the database and all it holds. MIMEO_ENOTFOUND. Open handles on it start
 * answering MIMEO_ENOTFOUND. */
MIMEO_API int  mimeo_db_delete(mimeo_env *env, const char *name, mimeo_err *err);
/* New handle on an existing database (MIMEO_ENOTFOUND otherwise); close with
 * mimeo_db_close. Cheap: handles are cached and reference-counted. */
MIMEO_API int  mimeo_db_open(mimeo_env *env, const char *name, mimeo_db **db, mimeo_err *err);
MIMEO_API void mimeo_db_close(mimeo_db *db);
/* Calls fn with each database name in byte order, from `start` (inclusive, NULL for the
 * first). */
MIMEO_API int  mimeo_db_list(mimeo_env *env, const char *start,
                             int (*fn)(void *ctx, const char *name, size_t len), void *ctx);

typedef struct mimeo_db_info {
    uint64_t doc_count;           /* documents whose winner is live */
    uint64_t doc_del_count;       /* documents whose winner is a tombstone */
    uint64_t update_seq;          /* sequence of the latest change */
    uint64_t instance_start_time; /* microseconds since the epoch when the database was
                                     created; stable for its life */
    uint64_t size_active;         /* bytes of live data (bodies + trees) */
    uint64_t size_external;       /* bytes of the winners' JSON bodies */
    uint64_t size_file;           /* bytes of the environment's file (shared) */
    unsigned revs_limit;
} mimeo_db_info;

MIMEO_API int mimeo_db_info_get(mimeo_db *db, mimeo_db_info *info);
/* Borrowed name of the database, valid until mimeo_db_close. */
MIMEO_API const char *mimeo_db_name(const mimeo_db *db);
MIMEO_API int mimeo_db_revs_limit_set(mimeo_db *db, unsigned limit, mimeo_err *err);
/* Drops the stored bodies of non-leaf revisions. */
MIMEO_API int mimeo_db_compact(mimeo_db *db, mimeo_err *err);

/* ---- documents: writes ------------------------------------------------------------------ */
/* Default longest document id (mimeo_options.max_document_id_length); CouchDB's default is
 * no limit, and ids are compared, stored and listed whole at any length. */
#define MIMEO_ID_MAX  (64 * 1024)
#define MIMEO_REV_MAX 96           /* room for "N-hash" + NUL */
/* Replicated revisions (new_edits false), as CouchDB accepts them: generations 0 to
 * 2^64-1 ("0-x" is a revision); a _revisions.start smaller than its ids count keeps only
 * the ids of generation ≥ 0. Bounds mimeo keeps: _revisions.ids of more than
 * MIMEO_REVISIONS_MAX items is refused (doc_validation), and only the newest _revs_limit
 * ids are read — older ones would be stemmed at once (a leaf older than that which the
 * full path would have extended stays a conflict, as after a stemmed CouchDB replication);
 * a negative start is refused; _rev "N-" (no hash) with new_edits false is accepted and
 * ignored, as CouchDB answers it. */
#define MIMEO_REVISIONS_MAX 100000

/* Who writes, for validate_doc_update(newDoc, oldDoc, userCtx, secObj): userCtx is
 * {"db","name","roles"}, secObj the database's _security object (JSON text, NULL → {}).
 * A NULL user context is the system: name null, roles ["_admin"]. Borrowed for the call. */
typedef struct mimeo_user_ctx {
    const char        *name;       /* NULL: anonymous */
    const char *const *roles;
    size_t             role_count;
    const char        *security;
    size_t             security_len;
} mimeo_user_ctx;

typedef struct mimeo_put_opts {
    const char *rev;      /* ?rev= or If-Match (NULL: use the body's _rev); must agree with
                             the body's _rev when both are given (else bad_request) */
    bool        new_edits_false; /* store a replicated revision as given (_rev/_revisions) */
    const mimeo_user_ctx *user;  /* the writer, for validate_doc_update (NULL: system) */
    /* The data of the body's _attachments entries that say "follows": true (multipart
     * bodies), by name; every such entry needs one. See "attachments" below. */
    const struct mimeo_att_blob *atts;
    size_t      att_count;
} mimeo_put_opts;

typedef struct mimeo_put_result {
    char *id;                /* new, NUL-terminated: the document's id; mimeo_free() it */
    size_t id_len;           /* its length: ids may contain NUL, so never strlen(id) */
    char  rev[MIMEO_REV_MAX]; /* the new (or, with new_edits_false, the given) revision */
} mimeo_put_result;

/* Writes one document (JSON object text). id/id_len name it (the URL's id wins over the
 * body's _id); id NULL takes the body's _id, or generates one. _local/ ids go to the local
 * store (see mimeo_local_put). With new_edits_false the body must carry _rev (and normally
 * _revisions) and is merged into the tree; the result's rev is that _rev.
 * Errors: MIMEO_ECONFLICT, MIMEO_EINVAL, MIMEO_EBADJSON, MIMEO_EBADID, MIMEO_EBADREV,
 * MIMEO_EDOCVALIDATION, MIMEO_ETOOLARGE, MIMEO_ENOTFOUND (database gone), MIMEO_ENOSPC. */
MIMEO_API int mimeo_doc_put(mimeo_db *db, const char *id, size_t id_len,
                            const char *json, size_t len, const mimeo_put_opts *opts,
                            mimeo_put_result *res, mimeo_err *err);

/* Deletes (adds a tombstone child to leaf `rev`). MIMEO_ECONFLICT when rev is not a leaf;
 * MIMEO_ENOTFOUND / MIMEO_EDELETED when there is nothing to delete. */
MIMEO_API int mimeo_doc_delete(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                               mimeo_put_result *res, mimeo_err *err);
/* The same on behalf of user (NULL: system). */
MIMEO_API int mimeo_doc_delete_as(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                                  const mimeo_user_ctx *user, mimeo_put_result *res,
                                  mimeo_err *err);

/* mimeo_doc_put and mimeo_doc_delete_as without waiting for the commit: done(arg, rc, res,
 * err) is called exactly once, with what the waiting call would have returned (res filled
 * when rc is 0, err otherwise; both valid during the call only). Parsing, validation
 * (opts->user is used only before the call returns) and the new revision are worked out on
 * the calling thread; done then runs on the store's writer thread once the commit is durable,
 * or on the calling thread before the call returns when the write fails early, when the
 * database declares CRDT documents, or when the store is closing. done must be short (the
 * next commit waits for it) and must not write. id, json and opts->atts must stay valid until
 * done is called; db must stay open. */
typedef void (*mimeo_put_done_fn)(void *arg, int rc, const mimeo_put_result *res,
                                  const mimeo_err *err);
MIMEO_API void mimeo_doc_put_async(mimeo_db *db, const char *id, size_t id_len,
                                   const char *json, size_t len, const mimeo_put_opts *opts,
                                   mimeo_put_done_fn done, void *arg);
MIMEO_API void mimeo_doc_delete_async(mimeo_db *db, const char *id, size_t id_len,
                                      const char *rev, const mimeo_user_ctx *user,
                                      mimeo_put_done_fn done, void *arg);

/* Every write (mimeo_doc_put, mimeo_doc_delete, mimeo_bulk_docs, replicated or not) first
 * runs the validate_doc_update function of each design document of the database, design
 * documents included: a rejection fails that document with MIMEO_EFORBIDDEN ("forbidden",
 * 403) or MIMEO_EUNAUTHORIZED ("unauthorized", 401) and the function's message as reason;
 * a query server that times out or dies fails it with MIMEO_EIO ("os_process_error"). */

/* _bulk_docs: body is {"docs":[…],"new_edits":bool,"all_or_nothing":bool}. *json_out is the
 * reply array: with new_edits true one entry per doc in order ({"ok":true,"id","rev"} or
 * {"id","error","reason"}); with new_edits false only failures (usually []). All the batch
 * is committed in one durable transaction. A document that fails to parse fails the whole
 * call (nothing written). all_or_nothing with any failing doc: MIMEO_EEXPECTATION, the
 * reply lists the failures, nothing written. A batch too big for one LMDB transaction
 * (hundreds of megabytes of changed pages) is MIMEO_ETOOLARGE, nothing written: split it. */
MIMEO_API int mimeo_bulk_docs(mimeo_db *db, const char *json, size_t len, char **json_out,
                              size_t *out_len, mimeo_err *err);
/* One entry of a _bulk_docs reply, as a struct (mimeo_bulk_docs_opts.entry_fn); every
 * pointer is borrowed for the call only. */
typedef struct mimeo_bulk_entry {
    const char *id;       /* the document's id (with "_local/" for local documents) */
    size_t      id_len;   /* ids may contain NUL: always use it */
    int         code;     /* 0: written; else the MIMEO_E* code of its failure */
    const char *rev;      /* the new revision, or a failed replicated revision; or NULL */
    const char *error;    /* CouchDB's error name and reason on failure, else NULL */
    const char *reason;
} mimeo_bulk_entry;
typedef struct mimeo_bulk_docs_opts {
    const mimeo_user_ctx *user;  /* the writer, for validate_doc_update (NULL: system) */
    /* Instead of the reply text: called with each entry the reply would list, in order
     * (with new_edits false, only the failures), and *json_out stays NULL. A non-zero
     * return stops the listing (what was written stays written) and is returned. */
    int  (*entry_fn)(void *ctx, const mimeo_bulk_entry *entry);
    void *entry_ctx;
    /* More documents than this fail the request with MIMEO_ETOOLARGE
     * "max_bulk_docs_count_exceeded" before any is written (0: no cap). */
    size_t max_docs;
} mimeo_bulk_docs_opts;
/* mimeo_bulk_docs with options (opts may be NULL). Documents that validate_doc_update
 * rejects are per-entry errors of the reply, new_edits false included. */
MIMEO_API int mimeo_bulk_docs_as(mimeo_db *db, const char *json, size_t len,
                                 const mimeo_bulk_docs_opts *opts, char **json_out,
                                 size_t *out_len, mimeo_err *err);

/* _bulk_docs without waiting for the commit. The body is parsed, its documents prepared and
 * validated (validate_doc_update, with opts->user) on the calling thread, and the write is
 * queued; done(arg, res) is then called exactly once with the outcome, on the store's writer
 * thread once the batch's group commit is durable (or failed). It is called on the calling
 * thread, before mimeo_bulk_docs_async returns, when the request ends early (a request-wide
 * error such as bad JSON, a missing database, no documents, a store that is closing) and
 * when the batch is written waiting after all: a database that declares CRDT documents (the
 * merge after the write writes again) and documents with attachments (unused blobs are
 * discarded by a write of their own). A large body while the writer idles is written as it
 * is parsed, as mimeo_bulk_docs_as does, and its completion too comes from the writer.
 * res is NULL only when memory ran out; the mimeo_bulk_result_* calls take it so.
 * opts->user and opts->max_docs are used before the call returns; opts->entry_fn is ignored
 * (see mimeo_bulk_result_entries). json is read before the call returns. done runs on the
 * writer thread the next group waits for: it must be short and must not write; it may take
 * a small reply there or hand res to another thread. db must stay open until done is called
 * and the result is taken. */
typedef struct mimeo_bulk_result mimeo_bulk_result;
typedef void (*mimeo_bulk_done_fn)(void *arg, mimeo_bulk_result *res);
MIMEO_API void mimeo_bulk_docs_async(mimeo_db *db, const char *json, size_t len,
                                     const mimeo_bulk_docs_opts *opts,
                                     mimeo_bulk_done_fn done, void *arg);
/* The number of documents the request held (0 when it failed before they were read): what
 * the reply's size goes with, to choose the thread that builds it. res may be NULL. */
MIMEO_API size_t mimeo_bulk_result_count(const mimeo_bulk_result *res);
/* Builds the reply of an asynchronous _bulk_docs and frees res: returns, and fills *json_out
 * (free with mimeo_free), *out_len and err, exactly as mimeo_bulk_docs_as with the same
 * body and no entry_fn would have. */
MIMEO_API int mimeo_bulk_result_take(mimeo_bulk_result *res, char **json_out, size_t *out_len,
                                     mimeo_err *err);
/* The same, entry by entry (mimeo_bulk_docs_opts.entry_fn semantics: each entry the reply
 * would list, in order; a non-zero return of entry_fn stops the listing and is returned),
 * and frees res. */
MIMEO_API int mimeo_bulk_result_entries(mimeo_bulk_result *res,
                                        int (*entry_fn)(void *ctx,
                                                        const mimeo_bulk_entry *entry),
                                        void *entry_ctx, mimeo_err *err);
/* Frees res without a reply (NULL is fine). */
MIMEO_API void mimeo_bulk_result_free(mimeo_bulk_result *res);

/* ---- documents: reads ------------------------------------------------------------------- */
typedef struct mimeo_get_opts {
    const char *rev;        /* a specific revision (tombstones readable); NULL: winner */
    bool revs;              /* add _revisions */
    bool revs_info;         /* add _revs_info */
    bool conflicts;         /* add _conflicts (non-deleted losing leaves) */
    bool deleted_conflicts; /* add _deleted_conflicts */
    bool local_seq;         /* add _local_seq */
    bool latest;            /* with rev: serve the best leaf descending from it; with
                               open_revs: map a non-leaf rev to its descendant leaves */
    /* Attachments (see "attachments" below). Without any of these, _attachments holds
     * stubs {"content_type","revpos","digest","length","stub":true}, as stored. */
    bool attachments;       /* every attachment with its data: "data" (base64) */
    const char *const *atts_since; /* revisions the reader has ("N-h"): data only for
                               attachments set after the newest of them that is an ancestor
                               of the revision read, stubs for the others; implies
                               attachments (for the ones it selects) */
    size_t atts_since_count;
    bool att_encoding_info; /* stubs (and follows entries) of gzip-stored attachments add
                               "encoding":"gzip","encoded_length":N */
    bool att_follows;       /* instead of "data", entries with data say "follows":true
                               (content_type, revpos, digest, length, and encoding/
                               encoded_length when stored gzip): for multipart writers,
                               which then send each one's stored bytes, in the order of the
                               entries, read with mimeo_att_open(rev read, name, raw) */
} mimeo_get_opts;

/* One revision of a document as JSON {"_id","_rev",…body…,"_deleted"?,meta…}.
 * MIMEO_ENOTFOUND (error not_found, reason missing) / MIMEO_EDELETED (reason deleted). */
MIMEO_API int mimeo_doc_get(mimeo_db *db, const char *id, size_t id_len,
                            const mimeo_get_opts *opts, char **json_out, size_t *out_len,
                            mimeo_err *err);

/* open_revs: revs_json is the JSON text "all" (or the bare word all) or a JSON array of
 * revision strings. Reply is a JSON array of {"ok":doc} / {"missing":"rev"} in request
 * order (leaves best-first for all). Unknown doc with all: MIMEO_ENOTFOUND. */
MIMEO_API int mimeo_doc_open_revs(mimeo_db *db, const char *id, size_t id_len,
                                  const char *revs_json, size_t revs_len,
                                  const mimeo_get_opts *opts, char **json_out,
                                  size_t *out_len, mimeo_err *err);

/* _bulk_get: body {"docs":[{"id","rev"?},…]}; reply {"results":[{"id","docs":[{"ok":doc}
 * | {"error":{"id","rev","error","reason"}}]},…]} in request order. opts: revs, latest. */
MIMEO_API int mimeo_bulk_get(mimeo_db *db, const char *json, size_t len,
                             const mimeo_get_opts *opts, char **json_out, size_t *out_len,
                             mimeo_err *err);

/* _revs_diff: body {"id":["rev",…],…}; reply {"id":{"missing":[…],"possible_ancestors":[…]}}
 * listing only ids with something missing. */
MIMEO_API int mimeo_revs_diff(mimeo_db *db, const char *json, size_t len, char **json_out,
                              size_t *out_len, mimeo_err *err);

/* ---- iteration -------------------------------------------------------------------------- */
typedef int (*mimeo_row_fn)(void *ctx, const char *json, size_t len);

typedef struct mimeo_changes_opts {
    uint64_t since;          /* exclusive; rows with seq > since (ascending order) */
    uint64_t limit;          /* max rows; 0 means no limit (use limit_zero for none) */
    bool     limit_zero;     /* deliver no rows (limit=0), only last_seq */
    bool     descending;     /* newest first; since is ignored */
    uint64_t before;         /* descending: only rows with seq < before (0: from the newest),
                                to page backwards from the last row delivered */
    bool     include_docs;   /* add "doc" (the winner) */
    bool     conflicts;      /* with include_docs: add _conflicts */
    bool     all_docs_style; /* list every leaf (winner first), else the winner only */
    const char *const *doc_ids; /* filter=_doc_ids: only these ids (NULL: all) */
    const size_t *doc_id_lens;
    size_t   doc_id_count;
    const char *resume;      /* a mimeo_cursor_token to continue from (NULL: none) */
} mimeo_changes_opts;

/* Calls fn with each row as JSON {"seq":N,"id":…,"changes":[{"rev":…},…],"deleted":true?,
 * "doc":…?}. *last_seq receives the seq of the last row delivered, or — when the end of the
 * feed was reached — the database's update_seq at the time of the read (so an idle poll
 * returns the same value every time). *pending (may be NULL) receives the number of changes
 * left after the last row delivered. */
MIMEO_API int mimeo_changes(mimeo_db *db, const mimeo_changes_opts *opts, mimeo_row_fn fn,
                            void *ctx, uint64_t *last_seq, uint64_t *pending, mimeo_err *err);

/* Blocks until the database's update_seq exceeds `since`, the database is deleted, or
 * timeout_ms passes. Returns the current update_seq. Keep timeouts short if the
 * environment may be closed meanwhile: close waits for no one. A deleted database returns at
 * once, every time: a loop around this call must check for it (mimeo_cursor_wait says so). */
MIMEO_API uint64_t mimeo_changes_wait(mimeo_db *db, uint64_t since, uint64_t timeout_ms);
/* Calls fn(ctx, db) on the writer thread after every commit that changed db (a write or its
 * deletion), right after mimeo_changes_wait's waiters are woken: a server can keep thousands
 * of feeds waiting without a thread each. fn must be quick and must not write or wait. One
 * watcher per environment; NULL removes it, and once this returns the old fn runs no more. */
MIMEO_API void mimeo_env_watch(mimeo_env *env, void (*fn)(void *ctx, mimeo_db *db), void *ctx);

typedef struct mimeo_all_docs_opts {
    const char *startkey; size_t startkey_len; /* NULL: from the first id */
    const char *endkey;   size_t endkey_len;   /* NULL: to the last id */
    bool     inclusive_end;  /* default should be true */
    bool     descending;
    uint64_t limit;          /* 0: no limit (use limit_zero for none) */
    bool     limit_zero;
    uint64_t skip;
    bool     include_docs;
    bool     conflicts;
    const char *const *keys; /* keys mode: one row per key in order (NULL: range mode) */
    const size_t *key_lens;
    size_t   key_count;
    const char *resume;      /* a mimeo_cursor_token to continue from (NULL: none) */
} mimeo_all_docs_opts;

/* Calls fn with each row as JSON {"id","key","value":{"rev"},"doc"?}; in keys mode deleted
 * docs give {"id","key","value":{"rev","deleted":true},"doc":null} and unknown keys
 * {"key","error":"not_found"}. Ids are in byte order; _local docs are never listed. */
MIMEO_API int mimeo_all_docs(mimeo_db *db, const mimeo_all_docs_opts *opts, mimeo_row_fn fn,
                             void *ctx, mimeo_err *err);

/* ---- rows and cursors -------------------------------------------------------------------
 * The structured form of every read: a cursor hands out rows, one at a time, with the
 * metadata a caller needs (id, seq, winning revision, deleted flag, leaves) as fields, and
 * the stored body bytes, so no caller parses mimeo's JSON to find them again.
 *
 * A cursor reads a slice of rows inside one short read transaction, ends it, and serves the
 * slice from its own memory; slices are bounded in rows, bytes and entries examined (skipped,
 * deleted or filtered-out rows count too), so a slow consumer or a long skip never holds a
 * snapshot open (an open snapshot keeps the map from growing, which stalls every writer).
 * Rows of different slices may therefore come from different snapshots.
 *
 * Ownership. A cursor is new: close it with mimeo_cursor_close, before closing its db. A
 * row and every pointer in it are borrowed from the cursor: valid until the next call of
 * mimeo_cursor_next or mimeo_cursor_close on it. The arrays an options struct points to
 * (doc_ids, keys) are borrowed by the cursor until it is closed. One cursor is used by one
 * thread at a time. */

/* One leaf of a document's revision tree. */
typedef struct mimeo_leaf {
    const char *rev;      /* "N-hash", NUL-terminated */
    size_t      rev_len;
    bool        deleted;
} mimeo_leaf;

/* An attachment a row's JSON marks "follows":true (reads with att_follows): what a
 * multipart/related body needs to send it, so callers need not parse the JSON back. */
typedef struct mimeo_att_follow {
    const char *name;           /* NUL-terminated; names may contain NUL: use name_len */
    size_t      name_len;
    const char *content_type;   /* NUL-terminated */
    size_t      content_type_len;
    uint64_t    length;         /* decoded bytes */
    uint64_t    encoded_length; /* stored bytes: what follows when gzip */
    bool        gzip;           /* stored gzip-encoded (the JSON says "encoding":"gzip") */
} mimeo_att_follow;

typedef struct mimeo_row {
    int         status;   /* 0; MIMEO_ENOTFOUND for an _all_docs key or an open_revs
                             revision that does not exist (id, or rev, says which) */
    const char *id;       /* the document id, NUL-terminated, but ids may contain NUL:
                             always use id_len */
    size_t      id_len;
    uint64_t    seq;      /* the document's latest change (0 in bulk_get/revs_diff rows) */
    const char *rev;      /* "N-hash", NUL-terminated: the winning revision; for doc reads and
                             open_revs the revision read (a missing one: the revision asked
                             for); NULL for a missing _all_docs key, bulk_get, revs_diff */
    size_t      rev_len;
    bool        deleted;  /* that revision is a tombstone */
    /* The leaves, best first (the winner first): with all_docs_style or conflicts (changes),
     * conflicts (_all_docs); else NULL and 0. _conflicts are the live ones after the first.
     * revs_diff rows list the missing revisions here instead, in the order asked. */
    const mimeo_leaf *leaves;
    size_t      leaf_count;
    /* With include_docs: the stored body of the winner, a compact JSON object "{…}" without
     * _id, _rev or _deleted (so "{}" for a tombstone); else NULL. Deleted _all_docs keys
     * rows have none (CouchDB answers "doc":null). */
    const char *body;
    size_t      body_len;
    /* The row as the JSON convenience calls print it, for reads whose rows are documents
     * or reply entries: mimeo_doc_open (the document as GET serves it), open_revs (the
     * document, none for a missing revision), bulk_get (one {"id","docs":[…]} result) and
     * revs_diff (one "id":{"missing":[…],…} member). NULL for changes and _all_docs. */
    const char *json;
    size_t      json_len;
    /* With att_follows, for mimeo_doc_open and open_revs rows: the attachments json marks
     * "follows":true, in its _attachments order; else NULL and 0. */
    const mimeo_att_follow *follows;
    size_t      follow_count;
} mimeo_row;

typedef struct mimeo_cursor mimeo_cursor;

/* A changes cursor: the rows mimeo_changes would deliver, in the same order, with the same
 * since/before/limit/descending/doc_ids/style options. Rows carry id, seq, rev, deleted,
 * leaves (all_docs_style or conflicts) and body (include_docs). An ascending cursor that
 * reached the end may wait for more (mimeo_cursor_wait) and then continues after the last
 * seq it reported. MIMEO_ENOTFOUND (database gone). */
MIMEO_API int mimeo_changes_open(mimeo_db *db, const mimeo_changes_opts *opts,
                                 mimeo_cursor **cur, mimeo_err *err);

/* An _all_docs cursor: the rows mimeo_all_docs would deliver (range or keys mode, skip and
 * limit applied). Keys mode gives one row per key in the order asked (reversed as a whole
 * with descending); unknown keys have status MIMEO_ENOTFOUND. */
MIMEO_API int mimeo_all_docs_open(mimeo_db *db, const mimeo_all_docs_opts *opts,
                                  mimeo_cursor **cur, mimeo_err *err);

/* One document read as mimeo_doc_get does (same options and errors): a cursor with one row
 * whose rev/deleted are the revision read and whose json is the reply text. */
MIMEO_API int mimeo_doc_open(mimeo_db *db, const char *id, size_t id_len,
                             const mimeo_get_opts *opts, mimeo_cursor **cur, mimeo_err *err);

/* open_revs as rows, in mimeo_doc_open_revs's order: a found revision has status 0 and
 * json; a missing one MIMEO_ENOTFOUND and rev = the revision asked for. With latest, a leaf
 * reached from several named revisions is listed once. Same errors as mimeo_doc_open_revs. */
MIMEO_API int mimeo_open_revs_open(mimeo_db *db, const char *id, size_t id_len,
                                   const char *revs_json, size_t revs_len,
                                   const mimeo_get_opts *opts, mimeo_cursor **cur,
                                   mimeo_err *err);

/* The same for the n revisions revs[i] (rev_lens[i] bytes each; borrowed for the call):
 * what open_revs=[…] names, without JSON text to write and parse. */
MIMEO_API int mimeo_open_revs_list_open(mimeo_db *db, const char *id, size_t id_len,
                                        const char *const *revs, const size_t *rev_lens,
                                        size_t n, const mimeo_get_opts *opts,
                                        mimeo_cursor **cur, mimeo_err *err);

/* _bulk_get as rows: one per request entry, json = that entry's {"id","docs":[…]}. The
 * request is read when the cursor opens (errors as mimeo_bulk_get), the documents in
 * bounded slices as the rows are taken, so a reply of any size costs one slice of memory. */
MIMEO_API int mimeo_bulk_get_open(mimeo_db *db, const char *json, size_t len,
                                  const mimeo_get_opts *opts, mimeo_cursor **cur,
                                  mimeo_err *err);

/* _revs_diff as rows: one per id with something missing, json = its "id":{…} member. */
MIMEO_API int mimeo_revs_diff_open(mimeo_db *db, const char *json, size_t len,
                                   mimeo_cursor **cur, mimeo_err *err);

/* The next row into *row (borrowed, see above), or *row = NULL at the end. Errors:
 * MIMEO_ENOTFOUND when the database was deleted meanwhile, MIMEO_ENOMEM, MIMEO_EIO. */
MIMEO_API int mimeo_cursor_next(mimeo_cursor *cur, const mimeo_row **row, mimeo_err *err);

/* Changes cursors: last_seq and pending as mimeo_changes reports them for the rows taken
 * so far (meaningful once next has returned the end, or the limit was reached). */
MIMEO_API uint64_t mimeo_cursor_last_seq(const mimeo_cursor *cur);
MIMEO_API uint64_t mimeo_cursor_pending(const mimeo_cursor *cur);

/* Ascending changes cursors at their end: blocks until the database has changes after the
 * last seq reported (returns 1; next then continues), timeout_ms passes (returns 0), or the
 * database is deleted (MIMEO_ENOTFOUND: the feed is over). MIMEO_EINVAL for other cursors.
 * A cursor whose rows were all taken frees their storage here (the last row is then gone). */
MIMEO_API int mimeo_cursor_wait(mimeo_cursor *cur, uint64_t timeout_ms);

/* The continuation token of a changes or _all_docs cursor: where the next row would start,
 * as a NUL-terminated string safe in a URL (new: mimeo_free it). Passing it as the options'
 * `resume` to a new cursor with the same options continues after the last row taken
 * (skip is not applied again; limit counts afresh). */
MIMEO_API int mimeo_cursor_token(const mimeo_cursor *cur, char **token, size_t *len);

MIMEO_API void mimeo_cursor_close(mimeo_cursor *cur);

/* ---- local documents (never replicated, no revision tree) ------------------------------- */
/* id is the part after "_local/". Revisions are "0-N". put checks rev like PouchDB's local
 * adapters (MIMEO_ECONFLICT on a stale rev) except when the body carries _revisions (a
 * CouchDB replicator checkpoint), which is accepted as CouchDB does. */
MIMEO_API int mimeo_local_get(mimeo_db *db, const char *id, size_t id_len, char **json_out,
                              size_t *out_len, mimeo_err *err);
/* mimeo_local_get as fields: the revision into rev ("0-N") and the stored body into *body
 * (new, mimeo_free it): a JSON object without _id and _rev. */
MIMEO_API int mimeo_local_read(mimeo_db *db, const char *id, size_t id_len,
                               char rev[MIMEO_REV_MAX], char **body, size_t *body_len,
                               mimeo_err *err);
MIMEO_API int mimeo_local_put(mimeo_db *db, const char *id, size_t id_len, const char *json,
                              size_t len, const char *rev, mimeo_put_result *res,
                              mimeo_err *err);
MIMEO_API int mimeo_local_delete(mimeo_db *db, const char *id, size_t id_len,
                                 const char *rev, mimeo_put_result *res, mimeo_err *err);

/* ==== attachments ===========================================================================
 * An attachment's bytes live in a blob: stored once per distinct content, keyed by the
 * SHA-256 of the stored bytes, whatever the number of revisions, documents and databases that
 * carry it, and reference-counted (a blob goes when compaction, stemming or a database's
 * deletion drops the last revision that names it). Blobs are written and read in chunks,
 * so no size has to fit in memory.
 *
 * In documents (CouchDB's three forms of an _attachments entry):
 * - inline: {"content_type","data":base64} on mimeo_doc_put / mimeo_bulk_docs, interactive
 *   or replicated; "digest" and "length" given with it are ignored (recomputed);
 * - stub: {"stub":true,…}: keep the attachment of that name from the parent revision (for a
 *   replicated write, the nearest stored ancestor on its path); MIMEO_EPRECONDITION
 *   ("missing_stub", 412) when there is none;
 * - follows: {"follows":true,"content_type","length"?,"digest"?,"encoding"?,…}: the data is
 *   a blob passed in mimeo_put_opts.atts (multipart bodies). A given digest must be the MD5
 *   of the bytes as sent ("content_md5_mismatch", 400, otherwise).
 * Entries stored are stubs with revpos = the generation of the revision that set the data.
 * Names starting with "_" are refused (bad_request), and so is _attachments on _local docs.
 * Types listed in mimeo_options.att_compressible_types are stored gzip-encoded; their
 * "digest" is then the MD5 of the gzip bytes and "length" the decoded length (CouchDB's
 * rules). Revision ids cover the attachments' names and digests. */

/* A blob being written, then written (finished) but not yet part of a document. New from
 * mimeo_blob_new; freed with mimeo_blob_free, which discards it unless a write that
 * names it has committed (a cut upload or a failed write leaves nothing behind; a crash
 * leaves chunks that the next mimeo_env_open removes). One thread at a time. */
typedef struct mimeo_blob mimeo_blob;

typedef struct mimeo_blob_opts {
    /* What the bytes given are: content to store as it is (the default); content to store
     * gzip-encoded at level gzip_level (1-9); or gzip_input: a gzip stream (a multipart
     * part with Content-Encoding: gzip), stored as sent, its decoded length counted. */
    int  gzip_level;
    bool gzip_input;
} mimeo_blob_opts;

/* The gzip level to store content of this media type with, by env's settings
 * (att_compressible_types, att_compression_level): 0 when it is stored as it is. A
 * writer of content (not already gzip) passes it as mimeo_blob_opts.gzip_level. */
MIMEO_API int  mimeo_att_gzip_level(mimeo_env *env, const char *content_type);
/* opts may be NULL. MIMEO_ENOMEM. */
MIMEO_API int  mimeo_blob_new(mimeo_env *env, const mimeo_blob_opts *opts, mimeo_blob **out);
/* Appends bytes; chunks are committed as they fill, invisible until a document names the
 * blob. MIMEO_ENOSPC, MIMEO_EIO; MIMEO_EINVAL after finish, or for a gzip_input stream
 * that is not gzip (then the blob is dead: free it). */
MIMEO_API int  mimeo_blob_write(mimeo_blob *b, const void *data, size_t len);
/* Writes the last chunk and computes the digests. Needed before the blob is given to a
 * write. MIMEO_EINVAL for a truncated gzip_input stream. */
MIMEO_API int  mimeo_blob_finish(mimeo_blob *b);

typedef struct mimeo_blob_info {
    uint64_t length;          /* decoded (content) bytes */
    uint64_t encoded_length;  /* stored bytes (= length unless gzip) */
    bool     gzip;            /* stored gzip-encoded */
    char     digest[32];      /* "md5-" + base64 of the MD5 of the stored bytes, NUL-ended */
    unsigned char sha256[32]; /* of the stored bytes: the blob's key */
} mimeo_blob_info;
/* A finished blob naming the stored bytes of attachment name of revision rev (NULL: the
 * winner) of document id in db: no byte is read or copied, and the write that names it
 * (in a database of the same env) only counts one more reference. That write fails with
 * MIMEO_ENOTFOUND if the bytes were dropped meanwhile (compaction): copy them then. Free
 * with mimeo_blob_free. MIMEO_ENOTFOUND, MIMEO_EDELETED, MIMEO_ENOMEM. */
MIMEO_API int  mimeo_blob_ref_new(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                                  const char *name, size_t name_len, mimeo_blob **out,
                                  mimeo_err *err);
/* Of a finished blob (MIMEO_EINVAL before). */
MIMEO_API int  mimeo_blob_info_get(const mimeo_blob *b, mimeo_blob_info *info);
MIMEO_API void mimeo_blob_free(mimeo_blob *b);

/* One follows entry's data for mimeo_doc_put (mimeo_put_opts.atts). */
typedef struct mimeo_att_blob {
    const char *name;         /* the _attachments key, name_len bytes */
    size_t      name_len;
    mimeo_blob *blob;         /* finished; borrowed: the caller frees it after the put */
} mimeo_att_blob;

/* PUT /{db}/{id}/{name}: a new revision of id, child of rev (NULL: id must be missing or
 * deleted; it is created), holding the parent's attachments and body with attachment name
 * set to blob (finished; borrowed), of type content_type (NULL → application/octet-stream).
 * Same errors as mimeo_doc_put (MIMEO_ECONFLICT for a stale rev). */
MIMEO_API int mimeo_att_put(mimeo_db *db, const char *id, size_t id_len, const char *name,
                            size_t name_len, const char *rev, const char *content_type,
                            mimeo_blob *blob, const mimeo_user_ctx *user,
                            mimeo_put_result *res, mimeo_err *err);
/* DELETE /{db}/{id}/{name}?rev=: a new revision without that attachment. MIMEO_ENOTFOUND
 * when the revision has no such attachment; MIMEO_ECONFLICT for a stale rev. */
MIMEO_API int mimeo_att_delete(mimeo_db *db, const char *id, size_t id_len, const char *name,
                               size_t name_len, const char *rev, const mimeo_user_ctx *user,
                               mimeo_put_result *res, mimeo_err *err);

/* An attachment opened for reading (new; mimeo_att_close). It reads its chunks in short
 * read transactions as it goes, so it may be read slowly; if compaction drops the revision
 * meanwhile, read fails with MIMEO_ENOTFOUND. One thread at a time. */
typedef struct mimeo_att_reader mimeo_att_reader;

typedef struct mimeo_att_info {
    const char *content_type; /* borrowed from the reader */
    uint64_t length;          /* decoded bytes */
    uint64_t encoded_length;  /* stored bytes */
    bool     gzip;            /* stored gzip-encoded */
    uint64_t revpos;
    char     digest[32];      /* "md5-…" of the stored bytes */
    char     rev[MIMEO_REV_MAX]; /* the revision read */
} mimeo_att_info;

/* Opens attachment name of revision rev of id (rev NULL: the winner; a deleted winner is
 * MIMEO_EDELETED). decode: a gzip-stored attachment reads as its content (length bytes);
 * otherwise reads give the stored bytes (encoded_length). MIMEO_ENOTFOUND with reason
 * "Document is missing attachment" when the revision has no such attachment. info may be
 * NULL. */
MIMEO_API int  mimeo_att_open(mimeo_db *db, const char *id, size_t id_len, const char *rev,
                              const char *name, size_t name_len, bool decode,
                              mimeo_att_reader **out, mimeo_att_info *info, mimeo_err *err);
/* Moves to byte offset of what read yields (stored bytes only: MIMEO_EINVAL when
 * decoding a gzip attachment; offsets past the end read nothing). */
MIMEO_API int  mimeo_att_seek(mimeo_att_reader *r, uint64_t offset);
/* Up to cap bytes into out; *got = 0 at the end. MIMEO_ENOTFOUND (blob dropped
 * meanwhile), MIMEO_ECORRUPT, MIMEO_EIO. */
MIMEO_API int  mimeo_att_read(mimeo_att_reader *r, void *out, size_t cap, size_t *got);
MIMEO_API void mimeo_att_close(mimeo_att_reader *r);

/* Storage counters of env's blob store (for tests and GET /_node/_local/_stats-like use):
 * distinct blobs, their stored bytes, pending uploads not yet committed or swept, and the
 * bytes written into blobs since env opened (uploads, inline data, copies; bytes that then
 * turned out to be stored already count too: only mimeo_blob_ref_new moves none). */
typedef struct mimeo_blob_stats {
    uint64_t blobs;
    uint64_t bytes;
    uint64_t pending;
    uint64_t bytes_in;
} mimeo_blob_stats;
MIMEO_API int  mimeo_blob_stats_get(mimeo_env *env, mimeo_blob_stats *out);
/* ==== end of attachments ================================================================= */

/* ==== replication ===========================================================================
 * The replicator copies every revision a source database has and a target lacks, over
 * CouchDB's replication protocol, with checkpoints on both ends (_local/<replication id>).
 * A source or target is a URL ("http://user:pw@host:5984/db") or a bare name (a database of
 * env). These calls are thread-safe. */

/* POST /_replicate. json is CouchDB's body: source, target (strings or {url, headers,
 * auth:{basic:{username,password}}}), continuous, create_target, doc_ids,
 * filter:"_doc_ids", since_seq, cancel (with the same body or a replication_id), and the
 * tuning members checkpoint_interval (ms), retries_per_request, connection_timeout (ms),
 * worker_batch_size, worker_processes, max_response_size (bytes; see
 * mimeo_replicator_options) — non-negative integers or their decimal text, anything else is
 * a bad_request. env may be NULL when both ends are URLs. The jobs of env are env's own:
 * another environment of the process neither lists nor cancels them.
 * - one-shot: returns when done; *json_out is {"ok":true,"session_id",…,"history":[…]}
 *   or {"ok":true,"no_changes":true}; *status 200.
 * - continuous: starts a job and returns at once with {"ok":true,"_local_id":"<id>+continuous"};
 *   *status 202. The job runs until cancelled or mimeo_replicator_stop.
 * - cancel: {"ok":true,"_local_id":…}, *status 200; MIMEO_ENOTFOUND when no such job.
 * On failure a negative code, err filled with CouchDB's error name and reason
 * ("db_not_found", "unauthorized", "bad_request", …) and *status the HTTP status to answer
 * (400, 404 or 500). status may be NULL. */
MIMEO_API int mimeo_replicate(mimeo_env *env, const char *json, size_t len, char **json_out,
                              size_t *out_len, unsigned *status, mimeo_err *err);

/* Settings of env's replicator, for the jobs started after the call. */
typedef struct mimeo_replicator_options {
    /* Largest reply read from a peer, in bytes; 0 → 64 MiB. A _bulk_get reply over it is
     * fetched again document by document; a single document's reply over it fails the
     * job with "response_too_large". A /_replicate body or a _replicator document may set
     * its own ("max_response_size"). */
    size_t max_response_size;
    /* PEM file of the CAs that sign peers' TLS certificates; NULL or "" → the system CA
     * store. A job may turn checking off with "verify": false (testing only). */
    const char *cafile;
    /* Jobs of their own thread (continuous or _replicator) running at once; 0 → 500. More
     * wait as "pending" and start when a slot frees; every interval_ms (0 → 60000) up to 20
     * of the longest-running continuous jobs make way for pending ones (CouchDB's
     * [replicator] max_jobs, interval and max_churn). */
    unsigned max_jobs;
    unsigned interval_ms;
    /* Hosts a job's URLs may name: "host" or "host:port", comma-separated, IPv6 in brackets;
     * NULL or "" → any. A job naming another host fails with "forbidden" (403), however it
     * was started (mimeo_replicate, a _replicator document written or replicated in). */
    const char *allowed_hosts;
} mimeo_replicator_options;
MIMEO_API int mimeo_replicator_configure(mimeo_env *env, const mimeo_replicator_options *opts);

/* Starts the replication manager of env: it creates the _replicator database if needed and
 * runs a job for each document there (the same members as mimeo_replicate), restarting
 * them after a restart of the node; deleting the document stops its job. One-shot jobs
 * write "_replication_state":"completed" (or "failed", with "_replication_state_reason")
 * and "_replication_stats" back into their document. */
MIMEO_API int  mimeo_replicator_start(mimeo_env *env, mimeo_err *err);
/* Stops the manager and every job of env (continuous /_replicate jobs too) and waits for
 * their threads; one-shot mimeo_replicate calls still running in other threads are
 * cancelled and return soon. From then on env refuses new jobs ("the node is shutting
 * down"). mimeo_env_close does the same for a caller that did not. */
MIMEO_API void mimeo_replicator_stop(mimeo_env *env);

/* JSON producers for the monitoring endpoints (new text, mimeo_free it):
 * GET /_active_tasks (an array of running replications), GET /_scheduler/jobs
 * ({"total_rows","offset","jobs":[…]}), GET /_scheduler/docs ({"total_rows","offset",
 * "docs":[…]}) — CouchDB 3 shapes. env NULL lists the jobs between two URLs. URLs are shown
 * without user and password. A job whose peer has kept failing for a few seconds is shown
 * "crashing" with info {"error":…} (and a "crashed" history entry) while it retries. */
MIMEO_API int mimeo_active_tasks(mimeo_env *env, char **json_out, size_t *out_len);
MIMEO_API int mimeo_scheduler_jobs(mimeo_env *env, char **json_out, size_t *out_len);
/* docid NULL: every document; else GET /_scheduler/docs/_replicator/{docid}: one object,
 * or MIMEO_ENOTFOUND. */
MIMEO_API int mimeo_scheduler_docs(mimeo_env *env, const char *docid, char **json_out,
                                   size_t *out_len, mimeo_err *err);
/* Counters of every replication job of this process since it started (for metrics). */
typedef struct mimeo_replicator_stats {
    uint64_t docs_read;           /* revisions fetched from sources */
    uint64_t docs_written;        /* revisions written to targets */
    uint64_t doc_write_failures;
} mimeo_replicator_stats;
MIMEO_API void mimeo_replicator_stats_get(mimeo_replicator_stats *out);
/* ==== end of replication ================================================================= */

/* ==== queries (Mango) =======================================================================
 * CouchDB's query language over a database: selectors, JSON indexes kept in the same store
 * (defined by design documents with "language":"query", so they replicate), and _find.
 * Bodies and replies are CouchDB's JSON. Errors are MIMEO_EINVAL with CouchDB's error names
 * (bad_arg, invalid_operator, no_usable_index, invalid_bookmark, …: HTTP 400). */

/* POST /{db}/_find. Reply {"docs":[…],"bookmark":…,"warning"?,"execution_stats"?}. */
MIMEO_API int mimeo_find(mimeo_db *db, const char *json, size_t len, char **json_out,
                         size_t *out_len, mimeo_err *err);
/* POST /{db}/_explain: the plan _find would run (same body). */
MIMEO_API int mimeo_explain(mimeo_db *db, const char *json, size_t len, char **json_out,
                            size_t *out_len, mimeo_err *err);
/* POST /{db}/_index: {"index":{"fields":[…],"partial_filter_selector"?},"name"?,"ddoc"?,
 * "type"?:"json"}. Reply {"result":"created"|"exists","id":"_design/…","name":…}. */
MIMEO_API int mimeo_index_create(mimeo_db *db, const char *json, size_t len, char **json_out,
                                 size_t *out_len, mimeo_err *err);
/* GET /{db}/_index: {"total_rows":N,"indexes":[…]} (the special _all_docs index first). */
MIMEO_API int mimeo_index_list(mimeo_db *db, char **json_out, size_t *out_len,
                               mimeo_err *err);
/* DELETE /{db}/_index/{ddoc}/json/{name}; ddoc with or without "_design/". Removes the
 * index from its design document (the document goes when it has no index left) and drops
 * its rows. MIMEO_ENOTFOUND when there is no such index. */
MIMEO_API int mimeo_index_delete(mimeo_db *db, const char *ddoc, size_t ddoc_len,
                                 const char *name, size_t name_len, mimeo_err *err);

/* A parsed selector, for filter=_selector on the changes feed and for replication. */
typedef struct mimeo_selector mimeo_selector;
/* json is the selector object itself. New *out (mimeo_selector_free); MIMEO_EINVAL with
 * CouchDB's error names for a malformed selector. */
MIMEO_API int  mimeo_selector_parse(const char *json, size_t len, mimeo_selector **out,
                                    mimeo_err *err);
/* *match: whether the document (JSON object text, e.g. a change row's "doc") matches.
 * MIMEO_EBADJSON for text that is not JSON. Thread-safe. */
MIMEO_API int  mimeo_selector_match(const mimeo_selector *sel, const char *doc_json,
                                    size_t len, bool *match);
/* The same on a changes-feed row ({"seq","id","changes",…,"doc":{…}}, as mimeo_changes
 * delivers it with include_docs): matches the row's "doc"; a row without one never matches.
 * For filter=_selector: read with include_docs, keep the rows that match, drop "doc" unless
 * the client asked for it. */
MIMEO_API int  mimeo_selector_match_change(const mimeo_selector *sel, const char *row_json,
                                           size_t len, bool *match);
MIMEO_API void mimeo_selector_free(mimeo_selector *sel);
/* ==== end of queries ===================================================================== */
/* ==== views (map/reduce) =====================================================================
 * CouchDB's JavaScript views: the map functions of a design document's "views" run in
 * query-server processes (mimeo_options.query_server) over every document, their rows are
 * kept in the same store, sorted by CouchDB's collation, and brought up to date from the
 * changes feed before a query. Views of one design document share one index, named by a
 * signature of their functions, language and options: a changed design document builds a new
 * index, and mimeo_view_cleanup drops the ones no design document uses any more. Reduce runs
 * the built-ins (_count, _sum, _stats, _approx_count_distinct) in C and other functions in
 * the query server. */
typedef struct mimeo_view_reader mimeo_view_reader;

/* GET/POST /{db}/_design/{ddoc}/_view/{view}: ddoc is the name after the "_design" segment.
 * params is a JSON object of CouchDB's query parameters with JSON values (key, keys,
 * startkey/start_key, endkey/end_key, startkey_docid, endkey_docid, inclusive_end,
 * descending, limit, skip, reduce, group, group_level, include_docs, conflicts, update
 * (true|false|"lazy"), stale, stable, update_seq, sorted); with a member "queries" (an array
 * of such objects) the reply is {"results":[…]}, one result per query. NULL/0: no parameters. The index is updated
 * first unless update is false; the reply's first rows are read before this returns, so
 * errors come here: MIMEO_ENOTFOUND (not_found: "missing", "deleted", "missing_named_view"),
 * MIMEO_EINVAL (query_parse_error and other 400s), MIMEO_EIO (the query server failed:
 * os_process_error, a function's error). New *out: read it with mimeo_view_read, close it
 * with mimeo_view_close. */
MIMEO_API int  mimeo_view_open(mimeo_db *db, const char *ddoc, size_t ddoc_len,
                               const char *view, size_t view_len, const char *params,
                               size_t params_len, mimeo_view_reader **out, mimeo_err *err);
/* The next piece of the reply's JSON text into *text and *len (borrowed until the next
 * call), or *len 0 at the end. The rows are read in bounded slices, each in its own short read
 * transaction. An error part-way (e.g. a reduce function failing on a later group) ends the
 * reply: the caller cuts it off. */
MIMEO_API int  mimeo_view_read(mimeo_view_reader *r, const char **text, size_t *len,
                               mimeo_err *err);
MIMEO_API void mimeo_view_close(mimeo_view_reader *r);
/* GET /{db}/_design/{ddoc}/_info: {"name","view_index":{"signature","language","sizes",
 * "update_seq","updater_running",…}}. MIMEO_ENOTFOUND for a missing design document. */
MIMEO_API int  mimeo_view_info(mimeo_db *db, const char *ddoc, size_t ddoc_len,
                               char **json_out, size_t *out_len, mimeo_err *err);
/* POST /{db}/_view_cleanup: drops the indexes of the database that no current design
 * document defines. */
MIMEO_API int  mimeo_view_cleanup(mimeo_db *db, mimeo_err *err);
/* The index builds running now, as /_active_tasks entries ({"type":"indexer",…}), a JSON
 * array (new text). */
MIMEO_API int  mimeo_view_tasks(mimeo_env *env, char **json_out, size_t *out_len);
/* ==== end of views ======================================================================= */
/* ==== CRDT documents ========================================================================
 * Documents whose concurrent edits merge by themselves (docs/crdt.md). A database declares
 * them in the design document _design/crdt, member "rules": [{"prefix":"…"} |
 * {"selector":{…}}] (selector rules match nothing until Mango selectors exist). Such a
 * document is a map of counters, last-writer-wins registers, add-wins sets and nested maps;
 * its body holds the plain values as ordinary members, which any client reads, and the state
 * under the one reserved member MIMEO_CRDT_MEMBER. When it has several live leaves, the merge
 * writes a child of the winning leaf whose body is the join of every leaf's state and deletes
 * the other leaves in the same write; the merge is a pure function of the leaf set, so two
 * nodes merging the same conflict write the same bytes and the same revision ids. */
#define MIMEO_CRDT_MEMBER "$crdt"

typedef struct mimeo_crdt_result {
    char  *id;                /* new, NUL-terminated; freed by mimeo_crdt_result_destroy */
    char   rev[MIMEO_REV_MAX]; /* the revision written */
    char  *value;             /* new: the plain value after the ops, a JSON object */
    size_t value_len;
} mimeo_crdt_result;
MIMEO_API void mimeo_crdt_result_destroy(mimeo_crdt_result *res);

/* Applies ops_json, {"ops":[…]} (or a bare array), atomically to document id as this node
 * (the environment's uuid is the node id), creating the document when it is missing or
 * deleted. Each op is {"op":"increment","path":[…],"value":integer} (negative allowed),
 * {"op":"assign"|"add"|"remove","path":[…],"value":JSON} or {"op":"delete","path":[…]}; a
 * field's kind is fixed by its first op. When the document has several live leaves, they are
 * joined first and the write also deletes the losers. Retries on concurrent writers.
 * Errors: MIMEO_EINVAL (bad op, wrong kind for a field, bad path, counter overflow, or no rule
 * of _design/crdt matches the id, nor by selector the value after the ops: nothing written), MIMEO_EBADJSON, MIMEO_EBADID, MIMEO_ECONFLICT
 * (the winning leaf is not a CRDT state, or writers kept winning), MIMEO_ENOTFOUND (no
 * database), and the write errors of mimeo_bulk_docs. */
MIMEO_API int mimeo_crdt_apply(mimeo_db *db, const char *id, size_t id_len,
                               const char *ops_json, size_t ops_len, mimeo_crdt_result *res,
                               mimeo_err *err);

typedef enum mimeo_crdt_outcome {
    MIMEO_CRDT_UNCHANGED = 0, /* one live leaf already canonical, or none: nothing written */
    MIMEO_CRDT_MERGED    = 1, /* a merge revision was written (rev) */
    MIMEO_CRDT_KEPT      = 2, /* several live leaves, some not a CRDT state: left as an
                                 ordinary conflict, logged and counted */
    MIMEO_CRDT_NOT_CRDT  = 3, /* no rule of _design/crdt matches the document */
} mimeo_crdt_outcome;

/* Merges document id: with several live leaves (or one whose body is not in canonical form,
 * e.g. written by a CRDT-unaware client), writes the deterministic merge. rev receives the
 * winning revision afterwards ("" when the document has no live leaf). */
MIMEO_API int mimeo_crdt_merge(mimeo_db *db, const char *id, size_t id_len,
                               mimeo_crdt_outcome *outcome, char rev[MIMEO_REV_MAX],
                               mimeo_err *err);
/* Merges the count documents ids, or (ids NULL) every document the rules may match. New
 * *json_out: {"ok":true,"checked":N,"merged":[{"id","rev"}],"conflicts_kept":[{"id"}],
 * "not_crdt":[{"id"}]} (not_crdt only lists given ids). */
MIMEO_API int mimeo_crdt_merge_all(mimeo_db *db, const char *const *ids,
                                   const size_t *id_lens, size_t count, char **json_out,
                                   size_t *out_len, mimeo_err *err);
/* Whether a rule of _design/crdt covers id: a prefix rule by the id, a selector rule by any
 * live leaf of the stored document (false for a missing one). */
MIMEO_API int mimeo_crdt_rules_match(mimeo_db *db, const char *id, size_t id_len, bool *match,
                                     mimeo_err *err);
/* The write path's hook: call after a write of these ids has committed (on the caller's
 * thread, never inside the writer's job). It reads the rules once, returns at once when there
 * are none, and merges each matching document with several live leaves, or with a lone leaf
 * whose plain members disagree with its state (a client edited a counter or a set; a plain
 * PUT of registers only is left as written, so that client's next PUT with its rev works).
 * Merge writes come back here and find nothing to do. Conflicts with concurrent writers are
 * left for their own hooks. Errors are those of the reads and writes; the write that called
 * the hook has succeeded regardless. */
MIMEO_API int mimeo_crdt_after_write(mimeo_db *db, const char *const *ids,
                                     const size_t *id_lens, size_t count);

typedef struct mimeo_crdt_stats {
    uint64_t ops_applied;    /* ops applied by mimeo_crdt_apply */
    uint64_t merges_written; /* merge revisions written */
    uint64_t conflicts_kept; /* merges refused because a leaf was not a CRDT state */
    uint64_t hook_docs_read; /* documents mimeo_crdt_after_write read leaf by leaf (the
                                rest it skipped by id or by its pre-check) */
} mimeo_crdt_stats;
/* Counters of this process since it started. */
MIMEO_API void mimeo_crdt_stats_get(mimeo_crdt_stats *out);
/* ==== end of CRDT documents ============================================================== */

#ifdef __cplusplus
}
#endif
#endif
