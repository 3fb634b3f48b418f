/* The query-server client: a pool of external processes that speak CouchDB's query server
 * protocol (one JSON array per line in, one reply line out, ["log", …] lines in between).
 * Any query server written for CouchDB can be plugged in; mimeo ships build/mimeo-js.
 *
 * A call that does not answer within the pool's timeout kills its process (CouchDB's
 * os_process_timeout); the pool starts a fresh one on the next acquire, so a runaway
 * function costs its caller an error and nothing else. */
#ifndef MIMEO_QS_H
#define MIMEO_QS_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/buf.h"
#include "mimeo.h"

typedef struct qs_pool qs_pool;
typedef struct qs_proc qs_proc;

/* Receives the text of each ["log", text] line (borrowed for the call). */
typedef void (*qs_log_fn)(void *ctx, const char *text, size_t len);

typedef struct qs_config {
    const char *command;     /* the process to run: a path and space-separated arguments */
    unsigned    size;        /* processes at most; 0 → 2 */
    unsigned    timeout_ms;  /* per call; 0 → 5000 (CouchDB's os_process_timeout) */
    size_t      max_reply;   /* bytes of one reply line; 0 → 64 MiB */
    qs_log_fn   log;         /* may be NULL: log lines are dropped */
    void       *log_ctx;
} qs_config;

/* New pool in *out (qs_pool_free it). No process starts until the first acquire. The
 * command string is copied. MIMEO_EINVAL for an empty command, MIMEO_ENOMEM. */
int  qs_pool_new(const qs_config *cfg, qs_pool **out);
/* Kills every process; processes still acquired must have been released. */
void qs_pool_free(qs_pool *pool);

/* Takes a process for the caller's exclusive use, starting one if none is idle and the pool
 * is below its size, else waiting. MIMEO_EIO (os_process_error) when it cannot start. */
int  qs_acquire(qs_pool *pool, qs_proc **out, mimeo_err *err);
/* Gives the process back. A process that failed a call is discarded here. */
void qs_release(qs_pool *pool, qs_proc *proc);

/* Sends one request line (a JSON array, no newline) and reads the reply line into *reply
 * (reset first). Log lines on the way go to the pool's log function. Errors: MIMEO_EIO with
 * error "os_process_error" on timeout, exit or a broken pipe (the process is killed and
 * discarded at release); MIMEO_ETOOLARGE for a reply over max_reply (same). A protocol-level
 * ["error", name, reason] reply is NOT an error here: see qs_reply_error. */
int  qs_call(qs_proc *proc, const char *line, size_t len, buf *reply, mimeo_err *err);

/* qs_call in two halves, so a caller can have several requests in flight (pipelining): each
 * qs_send is answered by one qs_recv, in order, each half with its own timeout. Keep the bytes
 * of the requests in flight well under the socket's buffer (64 KiB), or both ends may block
 * writing. Same errors as qs_call. */
int  qs_send(qs_proc *proc, const char *line, size_t len, mimeo_err *err);
int  qs_recv(qs_proc *proc, buf *reply, mimeo_err *err);

/* When reply is ["error", name, reason], fills err (code MIMEO_EINVAL, CouchDB's name and
 * reason) and returns true. */
bool qs_reply_error(const char *reply, size_t len, mimeo_err *err);

/* Design documents taught to a process ("ddoc new") are remembered per process, keyed by
 * the caller (e.g. "db\0id\0rev"), so each is sent once per process. */
bool qs_proc_knows(const qs_proc *proc, const char *key, size_t len);
int  qs_proc_remember(qs_proc *proc, const char *key, size_t len);

/* The default query server command: the mimeo-js program beside the running binary (or one
 * folder up) into out. MIMEO_ENOTFOUND when there is none. */
int  qs_default_command(char *out, size_t cap);

/* Teaches proc the design document ddoc_json under the protocol name id ("ddoc new") unless
 * it already knows key; line and reply are the caller's scratch buffers. A protocol error in
 * the reply is MIMEO_EINVAL with err filled. */
int  qs_proc_teach(qs_proc *proc, const char *key, size_t key_len, const char *id,
                   size_t id_len, const char *ddoc_json, size_t ddoc_len, buf *line,
                   buf *reply, mimeo_err *err);

/* CouchDB's req object for a filter function (chttpd_external:json_req_obj) on a _changes
 * feed of db: what the caller knows of the request; NULL members take defaults (GET, path
 * /db/_changes, {} query, headers and secObj, body "undefined", peer 127.0.0.1, no user). */
typedef struct qs_req_info {
    const char        *db;
    const char        *method;
    const char        *raw_path;     /* with its query string */
    size_t             raw_path_len;
    const char        *query_json;   /* JSON object texts */
    const char        *headers_json;
    const char        *sec_json;
    const char        *body;
    size_t             body_len;
    const char        *peer;
    const char        *user_name;
    const char *const *roles;
    size_t             nroles;
} qs_req_info;
int  qs_filter_req(buf *b, const qs_req_info *in);

/* A filter function (filters.name) or a view's map used as a filter (views.name.map) of a
 * design document already taught to the process (qs_proc_teach) as ddoc_id; req is the
 * req object's JSON (filters only). */
typedef struct qs_filter_fn {
    const char *ddoc_id;
    size_t      ddoc_id_len;
    bool        view;
    const char *name;
    size_t      name_len;
    const char *req;
    size_t      req_len;
} qs_filter_fn;
/* Runs doc (JSON object text) through fn: *keep when it passes. A function that throws
 * keeps nothing and is no error: *thrown (may be NULL) gets what it threw. line and reply
 * are the caller's scratch buffers. */
int  qs_filter_doc(qs_proc *q, const qs_filter_fn *fn, const char *doc, size_t doc_len,
                   buf *line, buf *reply, bool *keep, mimeo_err *thrown, mimeo_err *err);

/* The same for n documents in one call (doc i is text[offs[i]..offs[i+1]), objects):
 * keep[i] for each. thrown (may be NULL) is called with the index of each document the
 * function threw on (skipped, as CouchDB skips it). A query server that answers the whole
 * batch with an error (CouchDB's stops at the first throw) is asked again one document per
 * call. */
typedef void (*qs_thrown_fn)(void *ctx, size_t i, const mimeo_err *e);
int  qs_filter_docs(qs_proc *q, const qs_filter_fn *fn, const char *text, const size_t *offs,
                    size_t n, buf *line, buf *reply, bool *keep, qs_thrown_fn thrown,
                    void *ctx, mimeo_err *err);

/* Process id, for tests that check a process was replaced. */
int  qs_proc_pid(const qs_proc *proc);

#endif
