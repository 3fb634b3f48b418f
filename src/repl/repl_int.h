/* Internals of the replicator (src/repl/): the endpoint interface that hides whether a side
 * of a replication is a local database (direct calls to the mimeo.h API) or a remote
 * CouchDB-protocol server (libcurl), the parsed replication request, and the job that runs
 * one replication. The protocol itself is in repl.c; jobs, the _replicator database and the
 * monitoring producers are in repl_jobs.c. */
#ifndef MIMEO_REPL_INT_H
#define MIMEO_REPL_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mimeo.h"
#include "../common/buf.h"
#include "../common/err.h"
#include "../json/json.h"

#define REPL_BATCH_SIZE        500    /* changes per batch (CouchDB's worker_batch_size) */
#define REPL_WORKERS           4      /* batches processed at once */
#define REPL_INFLIGHT          8      /* batches read ahead of the oldest unfinished one */
#define REPL_CKPT_INTERVAL_MS  5000   /* checkpoint at least this often while progressing */
#define REPL_RETRIES           5      /* retries of one request mid-replication
                                         (CouchDB's retries_per_request) */
#define REPL_START_RETRIES     3      /* retries while opening the endpoints */
#define REPL_CONNECT_TIMEOUT_MS 10000
#define REPL_LONGPOLL_MS       10000  /* feed=longpoll timeout in continuous mode */
#define REPL_HISTORY_MAX       50     /* checkpoint history entries kept (CouchDB's cap) */
#define REPL_ID_VERSION        4

/* ---- endpoints ------------------------------------------------------------------------ */
/* A reply from an endpoint: an HTTP status (a local endpoint maps its results onto the same
 * statuses, so repl.c treats both alike) and the body bytes (JSON). */
typedef struct repl_resp {
    long status;
    buf  body;
} repl_resp;

typedef struct repl_ep repl_ep;

/* A replication's changes filter (repl_filter.c): a Mango selector, or a filter function
 * ("ddoc/name", "_view" with query_params.view, "_design") with its query_params. The rest
 * is a local source's state, made on first use. */
typedef struct repl_filter {
    char           *selector;     /* JSON object text, or NULL */
    char           *name;         /* the filter, or NULL */
    char           *query_params; /* JSON object text, or NULL */
    mimeo_selector *sel;
    struct qs_pool *pool;
    buf             ddoc_id, ddoc, fname, req, line, reply, doc;
    struct repl_filter_ahead *ahead;  /* verdicts read ahead, a batch per call */
} repl_filter;

bool repl_filter_on(const repl_filter *f);
/* From a /_replicate body or _replicator doc v: selector, filter, query_params. */
int  repl_filter_parse(const jval *v, repl_filter *f, mimeo_err *err);
void repl_filter_destroy(repl_filter *f);
/* A local source: whether the filter reads documents (read changes with include_docs). */
bool repl_filter_needs_body(const repl_filter *f);
/* A local source: *keep when row (read from db) passes. Errors end the batch. */
int  repl_filter_row(repl_filter *f, mimeo_db *db, const mimeo_row *row, bool *keep,
                     mimeo_err *err);

/* Whether a job's peers answer: a request that keeps failing is retried for a while before
 * the job crashes, and meanwhile the monitoring endpoints must not say all is well. */
typedef struct repl_health {
    pthread_mutex_t lock;
    const repl_ep  *who;       /* the endpoint failing now, or NULL */
    uint64_t        since_ms;  /* when its current run of failures began */
    char            error[MIMEO_ERR_REASON_MAX + 40];
} repl_health;

/* Unhealthy for at least this long: shown as crashing, with the error. */
#define REPL_UNHEALTHY_MS 3000

void repl_health_fail(repl_health *h, const repl_ep *who, const mimeo_err *e);
void repl_health_ok(repl_health *h, const repl_ep *who);
/* Copies the error into out (n bytes) and returns true when unhealthy for min_ms. */
bool repl_health_get(repl_health *h, uint64_t min_ms, char *out, size_t n);

/* A document and revisions of it: one entry of a _revs_diff answer (what the target lacks),
 * and then what is fetched from the source. Borrowed by the ops. */
typedef struct repl_want {
    const char         *id;
    size_t              id_len;
    const char *const  *revs;
    const size_t       *rev_lens;
    size_t              nrevs;
    /* _revs_diff's possible_ancestors: leaves the target has below the missing revisions
     * (the atts_since of their attachments); none from a target that does not say */
    const char *const  *ancs;
    const size_t       *anc_lens;
    size_t              nancs;
} repl_want;

/* One attachment's bytes in a spool file, for a multipart write (attachments). */
typedef struct repl_att {
    const char *name;
    size_t      name_len;
    const char *content_type;
    uint64_t    offset;      /* in the spool file */
    uint64_t    length;      /* content bytes (never gzip) */
} repl_att;

/* Called for each entry of a _revs_diff answer that lacks something; nonzero stops. */
typedef int (*repl_missing_fn)(void *ctx, const repl_want *w);
/* Called for each row of a changes page: the id and its leaf revisions (borrowed for the
 * call only); nonzero stops. */
typedef int (*repl_change_fn)(void *ctx, const repl_want *row);

/* The end of a changes page. */
typedef struct repl_page {
    char    *last_seq; /* new JSON text: every change of the page is at or below it; NULL
                          when the page names none (the next page starts where it did) */
    int64_t  pending;  /* changes left after the page; -1 when the peer does not say */
    size_t   rows;     /* rows handed over */
} repl_page;
/* A document fetched: its JSON object text, with _revisions (borrowed for the call only). */
typedef struct repl_doc {
    const char *json;
    size_t      len;
    /* json[cut_at, cut_end) may be left out of a _bulk_docs body: a _revisions member that
     * says no more than _rev, with its comma; cut_end 0 when there is none */
    size_t      cut_at, cut_end;
    bool        atts;   /* has _attachments (or may have: the writer's side then looks) */
} repl_doc;
/* Called for each document fetched; nonzero stops. */
typedef int (*repl_doc_fn)(void *ctx, const repl_doc *d);

/* What GET /{db} tells the replicator. */
typedef struct repl_db_info {
    char   *update_seq;     /* new JSON text (a number, or a string seq), or NULL; the
                               caller frees it */
    int64_t update_seq_num; /* the same when it is an integer, else -1 */
} repl_db_info;

/* A revision the target refused in a _bulk_docs with new_edits:false: one entry of its
 * answer (borrowed for the call only). */
typedef struct repl_refusal {
    const char *id;
    size_t      id_len;
    const char *error;   /* CouchDB's error name ("forbidden", "missing_stub", …) */
    size_t      error_len;
} repl_refusal;
typedef int (*repl_refusal_fn)(void *ctx, const repl_refusal *r);

/* Every op returns 0 when a reply was obtained (whatever its status) and a negative
 * MIMEO_E* code with err filled when none was: the peer is unreachable after the retry
 * budget, or the job was cancelled (MIMEO_ECLOSED). A remote endpoint retries network
 * failures, 5xx and 429 itself, with exponential backoff and jitter. */
typedef struct repl_ep_ops {
    /* GET /{db}: on status 200 *info is filled (the caller frees info->update_seq); on
     * any other status out->body is the error reply. */
    int  (*info)(repl_ep *ep, repl_db_info *info, repl_resp *out, mimeo_err *err);
    /* PUT /{db}. */
    int  (*create)(repl_ep *ep, repl_resp *out, mimeo_err *err);
    /* _changes?style=all_docs&since=…&limit=… (limit 0: no limit); doc_ids (a JSON array
     * text, or NULL) selects filter=_doc_ids; wait_ms > 0 asks for feed=longpoll. On status
     * 200, fn has seen every row and *page is filled (the caller frees page->last_seq); on
     * any other status out->body is the error reply. */
    int  (*changes)(repl_ep *ep, const char *since, size_t since_len, size_t limit,
                    const char *doc_ids, unsigned wait_ms, repl_change_fn fn, void *ctx,
                    repl_page *page, repl_resp *out, mimeo_err *err);
    /* The ops that carry documents hand them over as entries, not as a reply to parse:
     * on status 200 the callback has seen every entry (out->body is then unspecified);
     * on any other status out->body is the error reply. A callback's nonzero code is
     * returned as the op's, with err set. */
    /* POST _revs_diff with body ({"id":["rev",…],…}): fn per entry with missing revs. */
    int  (*revs_diff)(repl_ep *ep, const char *body, size_t len, repl_missing_fn fn,
                      void *ctx, repl_resp *out, mimeo_err *err);
    /* _bulk_get?revs=true&latest=true for every revision of want[0..n): fn per document
     * served; *unserved counts the revisions answered with an error instead. */
    int  (*bulk_get)(repl_ep *ep, const repl_want *want, size_t n, repl_doc_fn fn, void *ctx,
                     size_t *unserved, repl_resp *out, mimeo_err *err);
    /* GET /{db}/{id}?open_revs=[…]&revs=true&latest=true (the _bulk_get fallback): fn per
     * document served. */
    int  (*open_revs)(repl_ep *ep, const repl_want *want, repl_doc_fn fn, void *ctx,
                      repl_resp *out, mimeo_err *err);
    /* _bulk_docs; the body carries new_edits:false. On status 200, 201, 202 or 417 fn has
     * seen each revision refused. */
    int  (*bulk_docs)(repl_ep *ep, const char *body, size_t len, repl_refusal_fn fn,
                      void *ctx, repl_resp *out, mimeo_err *err);
    int  (*ensure_full_commit)(repl_ep *ep, repl_resp *out, mimeo_err *err);
    /* _local/{id}: id is the part after "_local/". get: on status 200 rev holds the
     * document's revision and out->body the document, a JSON object (whether it also
     * carries _id and _rev depends on the endpoint). put: on a 2xx status new_rev holds
     * the revision written. */
    int  (*local_get)(repl_ep *ep, const char *id, char rev[MIMEO_REV_MAX], repl_resp *out,
                      mimeo_err *err);
    int  (*local_put)(repl_ep *ep, const char *id, const char *rev, const char *body,
                      size_t len, char new_rev[MIMEO_REV_MAX], repl_resp *out,
                      mimeo_err *err);
    /* Attachments (NULL when the endpoint has none). GET /{db}/{id}/{name}?rev=: the
     * content (decoded) appended to sink; on a status other than 200 out->body is the
     * error reply. */
    int  (*att_get)(repl_ep *ep, const char *id, size_t id_len, const char *name,
                    size_t name_len, const char *rev, FILE *sink, repl_resp *out,
                    mimeo_err *err);
    /* POST _bulk_get?revs=true&attachments=true with body (whose entries carry atts_since):
     * fn per document served, with its attachment data inline; *unserved counts the rest.
     * NULL when the endpoint is better served by att_get (local). */
    int  (*bulk_get_inline)(repl_ep *ep, const char *body, size_t len, repl_doc_fn fn,
                            void *ctx, size_t *unserved, repl_resp *out, mimeo_err *err);
    /* PUT /{db}/{id}?new_edits=false as multipart/related: json (whose entries for atts say
     * "follows":true, in the order of atts), then the bytes of each from spool. */
    int  (*put_atts)(repl_ep *ep, const char *id, size_t id_len, const char *json,
                     size_t len, const repl_att *atts, size_t n, FILE *spool,
                     repl_resp *out, mimeo_err *err);
    void (*free)(repl_ep *ep);
} repl_ep_ops;

struct repl_ep {
    const repl_ep_ops *ops;
    char          *display;    /* new: the URL without password, or the local db name */
    bool           local;
    atomic_bool    no_bulk_get; /* the peer answered _bulk_get with 400/404/405/501 */
    atomic_bool    no_atts_since; /* the peer ignores atts_since (PouchDB): asking it for
                                     inline data gets every attachment's */
    atomic_bool   *cancel;     /* borrowed: set when the job must stop */
    repl_health   *health;     /* borrowed: the job's, or NULL */
    unsigned       retries;    /* retry budget per request (changed after start-up) */
    atomic_uint    timeout_ms; /* whole-request limit for requests that set none; 0: the
                                  default (REPL_REQUEST_TIMEOUT_MS) */
    size_t         max_response; /* a longer reply fails with MIMEO_ETOOLARGE; 0: the
                                    default (REPL_MAX_RESPONSE) */
    repl_filter   *filter;     /* borrowed: the source's changes filter, or NULL */
};

/* The default cap of one reply read from a peer: each worker holds one, and a reply wraps
 * a batch of documents. A _bulk_get reply over it is fetched again document by document;
 * one document's reply over it fails the batch. */
#define REPL_MAX_RESPONSE ((size_t)64 << 20)

/* A request to a peer that takes longer than this is a failure (and is retried): like
 * CouchDB's connection_timeout, a black-hole peer must not hold a job, a cancel or a
 * shutdown for ever. */
#define REPL_REQUEST_TIMEOUT_MS 120000
/* The last checkpoint of a stopping job gets only this long. */
#define REPL_STOP_TIMEOUT_MS 5000

/* A parsed endpoint: a URL string, or {url, headers:{…}, auth:{basic:{username,password}}},
 * or a bare database name (local). */
typedef struct repl_ep_spec {
    char  *url;            /* new; a bare name for a local database */
    bool   local;
    char **headers;        /* new "Name: value" lines */
    size_t nheaders;
    char  *user, *password; /* new; from auth.basic (URL userinfo stays in url) */
    bool   no_verify;      /* "verify": false — TLS certificates not checked (testing only) */
    char  *cafile;         /* new; [replicator] cafile, or NULL for the system CA store */
} repl_ep_spec;

/* New remote endpoint for spec (whose url starts with http:// or https://). */
int  repl_ep_http_new(const repl_ep_spec *spec, atomic_bool *cancel, unsigned connect_ms,
                      repl_ep **out, mimeo_err *err);
/* New local endpoint for database spec->url in env; MIMEO_ENOTFOUND unless create. */
int  repl_ep_local_new(mimeo_env *env, const char *name, bool create, atomic_bool *cancel,
                       repl_ep **out, mimeo_err *err);
/* The database of a local endpoint (borrowed, lives as long as ep). */
mimeo_db *repl_ep_local_db(repl_ep *ep);
void repl_ep_free(repl_ep *ep);

/* For endpoints whose peer answers JSON (repl.c): the entries of a _revs_diff reply, the
 * rows of a _changes page, and the "ok" documents of a _bulk_get or open_revs reply
 * (*unserved: its "error" entries). */
int  repl_reply_missing(const repl_resp *r, repl_missing_fn fn, void *ctx, mimeo_err *err);
/* The rows and end of a _changes reply. */
int  repl_reply_changes(const repl_resp *r, repl_change_fn fn, void *ctx, repl_page *page,
                        mimeo_err *err);
int  repl_reply_docs(const repl_resp *r, repl_doc_fn fn, void *ctx, size_t *unserved,
                     mimeo_err *err);
/* GET /{db}'s reply into *info. */
int  repl_reply_info(const repl_resp *r, repl_db_info *info, mimeo_err *err);
/* The string member ("rev", "_rev") of a reply's object into rev ("" when none). */
void repl_reply_rev(const repl_resp *r, const char *member, char rev[MIMEO_REV_MAX]);
/* The entries of a _bulk_docs reply, each to fn. */
int  repl_reply_refusals(const repl_resp *r, repl_refusal_fn fn, void *ctx, mimeo_err *err);

/* Process-wide libcurl set-up, done once. */
void repl_curl_init(void);

/* ---- requests and jobs ---------------------------------------------------------------- */
/* POST /_replicate body, parsed. */
typedef struct repl_req {
    repl_ep_spec source, target;
    bool     continuous;
    bool     create_target;
    bool     cancel;
    char    *doc_ids;        /* new: JSON array text of the ids, sorted, or NULL */
    repl_filter filter;      /* selector or filter + query_params */
    char    *since_seq;      /* new: JSON text, or NULL */
    char    *replication_id; /* new: for {"replication_id":…,"cancel":true} */
    unsigned checkpoint_interval_ms;
    unsigned retries;        /* per request, mid-replication */
    unsigned connect_ms;
    unsigned batch_size;
    unsigned workers;
    size_t   max_response;   /* max_response_size; 0: the registry's or the default */
} repl_req;

int  repl_req_parse(const char *json, size_t len, repl_req *out, mimeo_err *err);
void repl_req_destroy(repl_req *r);
/* The stable 32-hex replication id of (source, target, doc_ids) into out. */
void repl_req_id(mimeo_env *env, const repl_req *r, char out[33]);
/* The URL as logs and the monitoring endpoints show it, new: user and password removed
 * ("http://host:5984/db/", as CouchDB shows it); a bare database name as it is. */
char *repl_url_display(const char *url);

typedef enum {
    REPL_ST_INITIALIZING, REPL_ST_RUNNING, REPL_ST_PENDING, REPL_ST_CRASHING,
    REPL_ST_COMPLETED, REPL_ST_FAILED
} repl_state;

/* Counters a job reports (checkpoint history, _active_tasks, _scheduler). */
typedef struct repl_stats {
    atomic_uint_fast64_t missing_checked, missing_found, docs_read, docs_written,
                         doc_write_failures, bulk_get_docs, bulk_get_attempts,
                         changes_pending;
} repl_stats;

typedef struct repl_batch repl_batch;

/* One replication, from opening the endpoints to the last checkpoint. */
typedef struct repl_job {
    mimeo_env   *env;        /* may be NULL for a replication between two URLs */
    repl_req     req;
    char         rep_id[33];
    char         session_id[33];
    repl_ep     *src, *tgt;
    atomic_bool  cancel;     /* aborts transfers and waits at once */
    atomic_bool  stopping;   /* the job was asked to stop (cancel may be lifted briefly to
                                write a last checkpoint) */
    repl_stats   stats;
    repl_health  health;

    /* progress and the pipeline, under lock */
    pthread_mutex_t lock;
    pthread_cond_t  cond;
    repl_batch  *queue_head, *queue_tail;    /* read, not yet taken by a worker */
    repl_batch  *order_head, *order_tail;    /* every unfinished batch in feed order */
    unsigned     inflight;
    uint64_t     next_batch_no;
    bool         reading_done;
    bool         failed;
    mimeo_err    error;
    char        *start_seq;      /* JSON text */
    char        *through_seq;    /* JSON text: every change up to it is written */
    char        *source_seq;     /* JSON text: the newest seq seen on the source */
    int64_t      src_update_seq; /* the source's update_seq when numeric, else -1 */
    char        *ckpt_seq;       /* JSON text: the seq last checkpointed */

    /* checkpoints */
    pthread_mutex_t ckpt_lock;
    char        *src_ckpt_rev, *tgt_ckpt_rev;
    buf          base_history;   /* the agreed log's history entries, comma-separated */
    size_t       base_history_n;
    char         start_time[40];  /* RFC 1123 */
    uint64_t     last_ckpt_ms;
    bool         src_ckpt_readonly;

    int64_t      started_on;     /* unix seconds */
    atomic_int_fast64_t updated_on;
    atomic_int   state;          /* repl_state */
    atomic_bool  caught_up;      /* continuous: waiting for new changes (read by the
                                    monitoring producers on other threads) */
} repl_job;

/* The registry of running jobs of one environment (repl_jobs.c), kept in the environment
 * through mimeo_env_state; env NULL has a registry of its own (jobs between two URLs).
 * NULL only when out of memory. */
typedef struct repl_reg repl_reg;
repl_reg *repl_reg_of(mimeo_env *env);

/* New job for req (takes it: req is zeroed). */
repl_job *repl_job_new(mimeo_env *env, repl_req *req);
void      repl_job_free(repl_job *j);
/* Runs the replication in the calling thread until it completes (one-shot), is cancelled,
 * or fails. 0 with *result (new JSON, CouchDB's one-shot reply shape) set on success; a
 * negative code with j->error filled otherwise. A continuous job returns only when
 * cancelled (0) or failed. */
int       repl_job_run(repl_job *j, char **result, size_t *result_len);
/* Asks a running job to stop soon; thread-safe. */
void      repl_job_cancel(repl_job *j);
/* Appends the job's info/stats members (no braces) for the monitoring producers. */
int       repl_job_put_stats(repl_job *j, buf *b);

/* Documents as JSON texts, one span of text each. */
typedef struct repl_docset {
    buf     text;
    size_t *starts, *ends;
    size_t  count, alloc;
} repl_docset;

/* repl_att.c: writes docs (revisions with _attachments, fetched from the source with stubs)
 * to the target with the attachment data it lacks; wants are the batch's _revs_diff
 * entries (possible_ancestors). Counts docs_written and doc_write_failures. 0 or the job's
 * error. */
int repl_att_write(repl_job *j, const repl_want *wants, size_t nwants, repl_docset *docs,
                   mimeo_err *err);

/* Helpers shared by the files here. */
char *repl_strndup(const char *s, size_t n);
/* The JSON text of v (new), or NULL. */
char *repl_jval_text(const jval *v);
/* An error from a non-success reply: takes error/reason from the JSON body when there. */
void  repl_err_from_resp(mimeo_err *err, const repl_resp *r, const char *what);
void  repl_resp_init(repl_resp *r);
void  repl_resp_destroy(repl_resp *r);
void  repl_rfc1123(char *out, size_t n);

#endif
