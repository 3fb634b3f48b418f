/* Internals shared by the files of src/http/: the server, the per-request context that owns
 * everything a request allocates, URL and query-string parsing, replies (one status table),
 * and the handlers' prototypes. A handler ends every path with exactly one http_reply_*
 * call; the core queues that reply. */
#ifndef MIMEO_HTTP_INT_H
#define MIMEO_HTTP_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <microhttpd.h>

#include "mimeo.h"
#include "http.h"
#include "../common/buf.h"
#include "../json/json.h"
#include "../auth/auth.h"

#define HTTP_SERVER_HEADER "mimeo/" MIMEO_VERSION " (CouchDB/" MIMEO_COUCHDB_VERSION ")"
#define HTTP_MAX_SEGS   8    /* path segments kept; more are counted (attachment names) */
#define HTTP_MAX_ARGS   64   /* query arguments kept; CouchDB has fewer than 40 */

struct http_server {
    mimeo_env          *env;
    http_config         cfg;
    struct http_evd    *evds;     /* one libmicrohttpd daemon per event thread (server.c) */
    unsigned            nevds;
    unsigned            accept_limit; /* open connections past which nothing is accepted */
    int                 listen_fd; /* the accept thread's; closed at http_server_free */
    int                 wake_fd[2];/* a byte here stops the accept thread */
    pthread_t           acceptor;
    bool                acceptor_started;
    unsigned            port;
    json_limits         limits;   /* for query values and small request bodies */
    atomic_bool         stopping; /* set first on shutdown: waiting feeds end */
    atomic_int          busy;     /* requests between their first call and completion */
    struct http_auth   *auth;     /* accounts, secret, caches (authz.c) */
    atomic_size_t       buffered; /* request body bytes held by all connections */
    struct qs_pool     *qs;       /* JavaScript query servers, started lazily (h_filter.c) */
    struct http_loop   *loop;     /* workers, waiters and the timer thread (loop.c) */
    atomic_int          suspended;/* connections suspended by us, waiting for a worker */
    struct http_conns  *conns;    /* every open connection, for caps and timeouts */
    struct http_park_waits *park; /* parked sockets waiting to take more bytes (park.c) */
    atomic_int          parked;   /* replies parked outside libmicrohttpd now */
    int                 parked_at_trim; /* the timer thread's: parked at the last trim, */
    int                 parked_last_sweep; /* and at its last sweep */
};

/* ---- loop.c: the worker pool, waiters and the timer thread ------------------------------- */
/* A unit of work for a worker thread, embedded in what it works on (a request, a feed). A
 * task may also be armed as a waiter, which costs no thread while it waits. */
typedef struct http_task http_task;
struct http_task {
    void       (*run)(http_task *t);
    http_task   *next;            /* in the work queue */
    uint64_t     queued;          /* clock_ms() when queued */
    mimeo_db    *db;              /* armed: fires on this database's next commit */
    uint64_t     due;             /* armed: fires at this clock_ms() (0: no time limit) */
    http_task   *wprev, *wnext;   /* armed: in its database's bucket */
    size_t       heap_i;          /* armed with a due time: index in the timer heap + 1 */
    bool         armed;
    int          fd;              /* the suspended connection's socket, watched for the
                                     client hanging up while armed (0: none) */
    bool         hangup;          /* fired because the client hung up */
};
int  http_loop_start(http_server *s, unsigned workers, char *errbuf, size_t errlen);
/* Joins the threads; no task may be queued or armed any more. */
void http_loop_stop(http_server *s);
void http_loop_submit(http_server *s, http_task *t);
/* Arms t to be queued for a worker on db's next commit, at due (clock_ms; 0: never), or at
 * shutdown, whichever comes first. False, without arming, when db has already moved past
 * seq, is gone, or the server is stopping: the caller goes on at once. db may be NULL (a
 * timer only). Once armed, t belongs to the loop until it runs. */
bool http_loop_wait(http_server *s, http_task *t, mimeo_db *db, uint64_t seq, uint64_t due);
/* Queues every armed task (shutdown: waiting feeds end). */
void http_loop_fire_all(http_server *s);
/* Tasks armed now (tests and the connection report). */
size_t http_loop_armed(http_server *s);
/* server.c: true when the client has closed its sending side (end of stream) or the socket
 * failed; pipelined bytes waiting to be read are not an end. */
bool http_fd_peer_gone(int fd);
/* server.c: header and body timeouts; called by the timer thread once a second. */
void http_conns_sweep(http_server *s, uint64_t now);
/* authz.c: a commit touched _users (loop.c's commit watcher, on the writer thread, before
 * the writers are answered): memoized accounts are looked up again. */
void http_auth_users_touched(http_server *s);
/* server.c: connections handed to event thread i so far and open on it now (metrics). */
bool http_event_thread_stats(http_server *s, unsigned i, uint64_t *handed, uint64_t *open);
/* Resumes a connection a worker has finished with; the worker must not touch its request
 * or feed afterwards (MHD may free them at once). */
void http_resume(http_server *s, struct MHD_Connection *conn);
/* Suspends conn (from MHD's callbacks only) and queues t for a worker. */
void http_suspend_submit(http_server *s, struct MHD_Connection *conn, http_task *t);


typedef enum {
    HTTP_GET, HTTP_HEAD, HTTP_POST, HTTP_PUT, HTTP_DELETE, HTTP_OPTIONS, HTTP_OTHER
} http_method;

/* One query argument, '+' turned into space and %XX decoded (NUL-terminated too). */
typedef struct http_arg {
    const char *key;
    size_t      key_len;
    const char *val;
    size_t      val_len;
} http_arg;

/* The request context: allocated when MHD reports the request line (so it also holds the
 * raw request target, before MHD decodes it), freed in http_completed. It owns the body,
 * the database handle and the reply until the core queues it. */
typedef struct http_req {
    http_server          *srv;
    struct MHD_Connection *conn;
    struct http_conn     *cx;          /* the connection's guard entry (server.c) */
    http_task             task;        /* the route, run by a worker */
    unsigned              calls;       /* access-handler calls so far */
    bool                  counted;     /* included in srv->busy */
    bool                  routed;      /* the worker has made the reply */
    atomic_int            async_hold;  /* http_async_begin: 2, one for the task, one for the
                                          completion; resumed when both have let go */
    bool                  refused;     /* an oversized body was refused: close */
    http_method           method;
    const char           *method_name;

    char                 *raw;         /* the request target, decoded in place (in the same
                                          allocation as the context: http_req_new) */
    size_t                head_bytes;  /* the request head's share of the connection's
                                          pool (server.c), for the reply head's room */
    size_t                nseg;        /* number of path segments (may exceed HTTP_MAX_SEGS) */
    char                 *seg[HTTP_MAX_SEGS];
    size_t                seg_len[HTTP_MAX_SEGS];
    const char           *seg_rest;    /* with more segments than kept: the rest, raw */
    size_t                nargs;
    http_arg             *args;        /* room for args_cap, after the context */
    size_t                args_cap;
    bool                  url_bad;     /* malformed %-escape */

    buf                   body;
    bool                  too_large;
    bool                  over_budget; /* the server's body budget ran out: 503 */
    size_t                accounted;   /* body bytes counted in srv->buffered */
    /* Streaming uploads (attachments): chosen when the headers arrive; when set, body
     * bytes go to body_sink (which keeps its own error) instead of `body`, and sink_free
     * releases sink_state with the request. */
    int                 (*body_sink)(void *state, const char *data, size_t len);
    void                 *sink_state;
    void                (*sink_free)(void *state);
    buf                   staged;      /* body bytes gathered for the sink, which a worker
                                          feeds them to (server.c) */
    size_t                staged_accounted;
    bool                  authorized;  /* http_authorize passed already (streamed uploads) */
    bool                  sink_auth_pending; /* a worker is checking a streamed upload's
                                                credentials; the body waits */

    mimeo_db             *db;          /* opened once per request by http_db */
    buf                   scratch;     /* e.g. "_design/" + name */

    struct MHD_Response  *resp;        /* the reply the core queues */
    unsigned              status;

    auth_user             user;        /* who is asking (authz.c); anonymous when !known */
    const char           *authn;       /* "cookie", "default" (Basic) or NULL */
    bool                  authn_done;  /* Basic credentials already taken on the event
                                          thread (http_authenticate_quick) */
    char                 *set_cookie;  /* Set-Cookie for the reply, or NULL */
    bool                  memo_user;   /* user is the connection's memo's, found current for
                                          this request: its db standing may be memoized too */
    bool                  bulk_no_design; /* a member's _bulk_docs: design docs refused per
                                              entry (authz.c), the others written */
    uint64_t              started_ns;  /* when the request line arrived (metrics.c) */
    bool                  http11;      /* HTTP/1.1: an unsized reply goes out chunked */
} http_req;

/* ---- parked replies (server.c, park.c) --------------------------------------------------
 * A reply that waits long (a changes feed) may leave libmicrohttpd: the feed keeps the
 * socket and writes its chunks itself, and the socket goes back to libmicrohttpd for the
 * next request when the reply ends. Only plain HTTP/1.1 (chunked) replies, and only when
 * libmicrohttpd has read nothing past the request: what the kernel counts as received must
 * equal the bytes of this connection's requests so far (a pipelined request stays put). */
typedef struct http_conn http_conn;
/* At routing: the byte count http_park checks later, or 0 when r's reply cannot park. */
uint64_t http_park_expect(http_req *r);
/* From the reply's content reader, on the event thread: takes the connection's socket (*fd,
 * a descriptor of its own, non-blocking). On true the reader returns
 * MHD_CONTENT_READER_END_WITH_ERROR at once; libmicrohttpd then lets go of the connection
 * without touching the socket (MHD_USE_TURBO: no shutdown on close) and frees the reply,
 * whose free callback must leave the owner alone. The owner may write from now on: the
 * reader is only called once all that libmicrohttpd had to send has gone. */
bool http_park(http_server *s, struct MHD_Connection *conn, uint64_t expect, http_conn **cx,
               int *fd);
/* Ends a parked reply, on any thread: reuse hands the socket back to libmicrohttpd for the
 * client's next request (the reply ended whole and the client did not ask to close),
 * otherwise it is closed. */
void http_park_end(http_server *s, http_conn *cx, bool reuse);
/* park.c */
int  http_park_start(http_server *s);
void http_park_stop(http_server *s);
/* Queues t for a worker once t->fd takes more bytes, or with t->hangup set when the client
 * is gone or the server stops. */
void http_park_wait_writable(http_server *s, http_task *t);
void http_park_fire_all(http_server *s);
/* The kernel's count of bytes received on a TCP socket. */
bool http_park_received(int fd, uint64_t *bytes);

/* A route that finishes later (a write whose commit calls back, h_doc.c): http_async_begin
 * on the worker before handing the request on; whoever finishes it, having made the reply,
 * calls http_async_end once. The connection resumes when both that and the route's task are
 * done, in either order; neither may touch the request afterwards. */
void http_async_begin(http_req *r);
void http_async_end(http_req *r);
/* The state of such a route (size bytes, uninitialized), with http_async_begin done; NULL,
 * with 500 answered, when out of memory. */
void *http_async_alloc(http_req *r, size_t size);

/* ---- caps.c ----------------------------------------------------------------------------- */
/* Counts the entries of a bulk request (body and query) without building a tree; over the
 * configured cap, replies 413 and returns true (the caller stops). */
bool http_caps_refuse(http_req *r);
/* The _bulk_docs document cap ([couchdb] max_bulk_docs_count). */
size_t http_caps_bulk_docs(const http_req *r);

/* ---- url.c ------------------------------------------------------------------------------ */
/* Splits target (raw request target) into decoded path segments and query arguments, into
 * r. Never fails: a bad escape sets r->url_bad. */
/* A zeroed request context for target, parsed, with its arguments and the target's bytes in
 * the same allocation (sized to them: a feed that lives for hours keeps no unused room);
 * free() releases it. NULL when out of memory. */
http_req   *http_req_new(const char *target);
/* Decodes %XX in place over [p, p+n) (plus_space: '+' → ' '); returns the new length, or
 * (size_t)-1 on a malformed escape. */
size_t      http_pct_decode(char *p, size_t n, bool plus_space);
/* The value of query argument name, or NULL (then *len untouched). */
const char *http_arg_get(const http_req *r, const char *name, size_t *len);
/* Whether the comma-separated list (a config value) holds s[0..n), ignoring case and the
 * spaces around items. */
bool        http_list_has(const char *list, const char *s, size_t n);

/* Typed query arguments. Each returns 0 when absent (out untouched), 1 when present and
 * valid, or -1 after replying 400 (the handler must then return at once). */
int http_arg_bool(http_req *r, const char *name, bool *out);
int http_arg_u64(http_req *r, const char *name, uint64_t *out);
/* A JSON value: *out is a new tree (jval_free). */
int http_arg_json(http_req *r, const char *name, jval **out);
/* A JSON string value: *out is a new tree of type JV_STRING. */
int http_arg_json_str(http_req *r, const char *name, jval **out);

/* A list of strings (keys, doc_ids): the POST body's member `name`, else the query argument.
 * The strings are borrowed from `tree`, which the list owns. */
typedef struct http_string_list {
    const char **strs;
    size_t      *lens;
    size_t       count;
    jval        *tree;
} http_string_list;
/* 0 when absent, 1 when *out is filled (destroy it), -1 after replying with an error
 * (bad JSON, or not a list of strings: 400 error/reason). */
int  http_arg_string_list(http_req *r, const char *name, const char *error, const char *reason,
                          http_string_list *out);
void http_string_list_destroy(http_string_list *l);

/* ---- reply.c ---------------------------------------------------------------------------- */
/* HTTP status for a mimeo error: by CouchDB error name when known, else by MIMEO_E* code. */
unsigned http_status_for(int code, const char *error);

/* Replies with b's bytes as JSON (takes b's memory; b is left empty). */
void http_reply_buf(http_req *r, unsigned status, buf *b);

/* Whether path segment i of the request is exactly s (decoded, so lengths decide). */
static inline bool http_seg_is(const http_req *r, size_t i, const char *s) {
    return i < r->nseg && i < HTTP_MAX_SEGS && mem_eq_str(r->seg[i], r->seg_len[i], s);
}
/* The same with another Content-Type (NULL: application/json). */
void http_reply_buf_ct(http_req *r, unsigned status, buf *b, const char *content_type);
/* A reply the handler built (e.g. a stream of known length), with the common headers. */
void http_reply_resp(http_req *r, unsigned status, struct MHD_Response *resp,
                     const char *content_type);
/* Replies with memory returned by mimeo (takes it; freed with mimeo_free). */
void http_reply_mimeo(http_req *r, unsigned status, char *json, size_t len);
/* A reply from a library call that produced json_out (taken): ok_status with it, or the
 * error. */
void http_reply_result(http_req *r, int rc, unsigned ok_status, char *out, size_t len,
                       const mimeo_err *e);
/* False, with 415 answered, unless the body is declared JSON. */
bool http_require_json(http_req *r);
/* Replies with row->json (the row is cur's; takes cur, closed once the reply is sent). */
void http_reply_row_json(http_req *r, unsigned status, mimeo_cursor *cur, const mimeo_row *row);
/* Replies with a static JSON text. */
void http_reply_static(http_req *r, unsigned status, const char *json);
/* {"error":error,"reason":reason}; status 0 means "from the status table". */
void http_reply_error(http_req *r, unsigned status, const char *error, const char *reason);
/* From a MIMEO_E* code and its detail (e may be NULL or empty). */
void http_reply_err(http_req *r, int rc, const mimeo_err *e);
/* 405 with Allow and CouchDB's "Only X,Y allowed" reason; allowed like "GET,HEAD". */
void http_reply_method(http_req *r, const char *allowed);
/* A streamed (chunked) reply from a content reader; free_fn frees cls. content_type NULL
 * means application/json. */
void http_reply_stream(http_req *r, unsigned status, const char *content_type,
                       MHD_ContentReaderCallback reader, void *cls,
                       MHD_ContentReaderFreeCallback free_fn);
/* The same for a reply that lives long and sends little at a time (a changes feed): a
 * smaller block for HTTP/1.0 clients, which every open feed would otherwise keep. */
void http_reply_stream_small(http_req *r, unsigned status, const char *content_type,
                             MHD_ContentReaderCallback reader, void *cls,
                             MHD_ContentReaderFreeCallback free_fn);
/* Streams the json of every row of cur (takes it; and the request's db handle, which the
 * cursor reads) joined by commas between open and close (static texts), a slice at a time:
 * a reply of any size costs one slice of memory. */
void http_reply_cursor(http_req *r, unsigned status, mimeo_cursor *cur, const char *open,
                       const char *close);
/* Writes one row into b: 0, 1 when the row is left out (nothing written), or an error. */
typedef int (*http_row_put_fn)(void *ctx, buf *b, const mimeo_row *row);
/* The same with rows written by put and joined by sep; open is copied, sep and close are
 * static. ctx is taken (ctx_free, may be NULL, runs when the reply is done). The first
 * rows are read at once, so a failure there is an error reply instead of a cut stream. */
void http_reply_rows(http_req *r, unsigned status, mimeo_cursor *cur, const char *open,
                     const char *sep, const char *close, http_row_put_fn put, void *ctx,
                     void (*ctx_free)(void *ctx));
/* For content readers: copies what is left of b (from *pos) into dst, at most max bytes;
 * returns the count, 0 when b is drained (then b is reset and *pos is 0). */
size_t http_drain(buf *b, size_t *pos, char *dst, size_t max);
/* Adds a header to the reply already made. */
void http_header(http_req *r, const char *name, const char *value);
/* Quoted ETag "rev" header. */
void http_header_etag(http_req *r, const char *rev, size_t len);
/* Location: http://host/db/id for a created document. */
void http_header_location(http_req *r, const char *db, const char *id, size_t id_len);

/* CORS: headers for a simple request's reply; preflight answer (true when handled). */
void http_cors_headers(http_req *r, struct MHD_Response *resp);
bool http_cors_preflight(http_req *r);

/* ---- small helpers (reply.c) ------------------------------------------------------------ */
/* A request header, or NULL. */
const char *http_req_header(const http_req *r, const char *name);
/* True when the request's Content-Type is application/json (parameters allowed). */
bool http_is_json_ctype(const http_req *r);
/* Opens r->db for database segment 0 (cached for the request). On failure replies 404 /
 * 400 and returns false. */
bool http_db(http_req *r);
/* Appends {"ok":true,"id":…,"rev":…} to b. */
int  http_put_ok_id_rev(buf *b, const char *id, size_t id_len, const char *rev);
/* Rows of streamed replies, written from the library's rows (never from its JSON): a
 * document {"_id","_rev",…body…,"_deleted"?,"_conflicts"?} (row with a body), a _changes
 * row and an _all_docs row, as CouchDB shapes them. 0 or MIMEO_ENOMEM/MIMEO_ETOOLARGE. */
int  http_put_row_doc(buf *b, const mimeo_row *row, bool conflicts);
int  http_put_change_row(buf *b, const mimeo_row *row, bool all_docs_style, bool conflicts);
int  http_put_all_docs_row(buf *b, const mimeo_row *row, bool include_docs, bool conflicts);
/* Bytes a streamed reply gathers before handing them to the connection. */
#define HTTP_STREAM_CHUNK (64 * 1024)

/* ---- route.c and the handlers ----------------------------------------------------------- */
void http_route(http_req *r);

void http_h_root(http_req *r);
void http_h_up(http_req *r);
void http_h_all_dbs(http_req *r);
void http_h_uuids(http_req *r);

void http_h_db(http_req *r);            /* /{db}: GET HEAD PUT DELETE POST */
void http_h_bulk_docs(http_req *r);
void http_h_bulk_get(http_req *r);
void http_h_revs_diff(http_req *r);
void http_h_revs_limit(http_req *r);
void http_h_compact(http_req *r);
void http_h_ensure_full_commit(http_req *r);
void http_h_security(http_req *r);

/* id/id_len: the decoded document id ("_design/x" included). */
void http_h_doc(http_req *r, const char *id, size_t id_len);
/* The revision a write names: ?rev= or If-Match (both: they must agree), into *rev (NULL:
 * none; may point into rev_buf); false after replying 400 (h_doc.c, used by h_att.c). */
bool http_want_rev(http_req *r, const char **rev, char rev_buf[MIMEO_REV_MAX]);
/* /{db}/{id}/{name…} (h_att.c): the name is the path from segment `rest` on. */
void http_h_att(http_req *r, const char *id, size_t id_len, size_t rest);
/* Called when a request's headers arrive: sets the body sink of an attachment upload. */
void http_att_sink_choose(http_req *r);
/* attachments, att_encoding_info and atts_since of a document read, into o; false after
 * replying 400. The atts_since list lives in h until http_att_opts_free. */
typedef struct http_att_opts {
    jval        *tree;
    const char **list;
} http_att_opts;
bool http_att_opts_parse(http_req *r, mimeo_get_opts *o, http_att_opts *h);
void http_att_opts_free(http_att_opts *h);
/* A row whose include_docs body has attachments, with their data inlined (attachments=true
 * on _all_docs and _changes): *shown is row, its body then pointing into hold. */
int  http_att_inline_row(mimeo_db *db, const mimeo_row *row, mimeo_row *shown, buf *hold);
/* h_multipart.c: documents as multipart bodies. Called when a request's headers arrive:
 * a multipart/related document PUT streams into the store. */
void http_mp_sink_choose(http_req *r);
/* A PUT's body: 0 when it is not multipart (json untouched), 1 when it is multipart/related
 * and ready (json, its length and o's follows blobs set, owned by the request), -1 after
 * replying an error. */
int  http_mp_put_body(http_req *r, const char **json, size_t *len, mimeo_put_opts *o);
/* open_revs rows (read with att_follows) as CouchDB's multipart/mixed, streamed. */
void http_reply_open_revs_mp(http_req *r, mimeo_cursor *cur);
bool http_accepts_related(const http_req *r);
/* A revision read with att_follows as multipart/related (false, nothing replied, when it
 * carries no attachment data). */
bool http_reply_doc_mp(http_req *r, const mimeo_row *row);
/* The request's user and r->db's _security for validate_doc_update; returns the security
 * text u borrows (free() it after the write). */
char *http_user_ctx(http_req *r, mimeo_user_ctx *u);
void http_h_local(http_req *r, const char *id, size_t id_len);

/* h_repl.c: /_replicate, /_active_tasks, /_scheduler/{jobs,docs…} (they check methods). */
void http_h_replicate(http_req *r);
void http_h_active_tasks(http_req *r);
void http_h_scheduler(http_req *r);
/* h_node.c: /_node/_local/_compact (POST); other /_node paths 404. */
void http_h_node(http_req *r);
/* h_mesh.c: /_mesh (GET status, POST a peer's mesh message). */
void http_h_mesh(http_req *r);
/* metrics.c: process-wide request counters, fed once per finished request, and their
 * Prometheus text at GET /_node/_local/_prometheus. */
uint64_t http_metrics_now_ns(void);
void http_metrics_done(const http_req *r);
void http_h_prometheus(http_req *r);

void http_h_all_docs(http_req *r);
void http_h_design_docs(http_req *r);
void http_h_changes(http_req *r);
/* h_view.c: /{db}/_design/{ddoc}/_view/… and …/_info; POST /{db}/_view_cleanup */
void http_h_design(http_req *r);
void http_h_view_cleanup(http_req *r);

/* ---- h_filter.c: changes filters other than _doc_ids ---------------------------------------- */
typedef struct http_filter http_filter;
/* The filter named v (filter=…): _selector, _design, _view (with view=), or "ddoc/name".
 * False after replying with CouchDB's error. */
bool http_filter_open(http_req *r, const char *v, size_t n, http_filter **out);
/* Whether the filter reads the document (the feed must then read with include_docs). */
bool http_filter_needs_body(const http_filter *f);
/* 1: the row passes, 0: it does not, <0: an error in err (os_process_error). */
int  http_filter_test(http_filter *f, const mimeo_row *row, mimeo_err *err);
/* JavaScript filters take rows in batches, one query-server call each: clear, add rows (with
 * bodies) until full, run, then kept(i) for the i-th row added. */
#define HTTP_FILTER_BATCH       100
#define HTTP_FILTER_BATCH_BYTES ((size_t)1 << 20)
bool   http_filter_batches(const http_filter *f);
void   http_filter_clear(http_filter *f);
int    http_filter_add(http_filter *f, const mimeo_row *row);
bool   http_filter_full(const http_filter *f);
size_t http_filter_count(const http_filter *f);
int    http_filter_run(http_filter *f, mimeo_err *err);
bool   http_filter_kept(const http_filter *f, size_t i);
void http_filter_free(http_filter *f);
/* The server's query-server pool, started on first use; NULL with err when it cannot be. */
struct qs_pool *http_qs_pool(http_server *srv, mimeo_err *err);

/* ---- authz.c, h_session.c, h_security.c: authentication and authorization ---------------- */
int  http_auth_start(http_server *s, char *errbuf, size_t errlen);
void http_auth_stop(http_server *s);
/* Authenticates r and checks that it may do what it asks; false after replying (401/403,
 * or 404 for another user's account). May replace r->body (_users passwords hashed). */
bool http_authorize(http_req *r);
bool http_authenticate_quick(http_req *r);
struct http_auth_memo;
struct http_auth_memo **http_req_auth_memo(http_req *r);   /* NULL without a connection */
void http_auth_memo_free(struct http_auth_memo *m);
/* Adds Set-Cookie / WWW-Authenticate to the reply made. */
void http_auth_reply_headers(http_req *r);
/* Looks an account up (config admins, then _users): its hash and its user (destroy it). */
int  http_auth_lookup(http_server *s, const char *name, auth_pw *pw, auth_user *u);
/* Checks a name and password under the failed-login slowdown and the hash gate: 0 with *u
 * filled (and *pw, may be NULL), MIMEO_ENOTFOUND when wrong, MIMEO_ECONFLICT when refused
 * unchecked by the slowdown, MIMEO_EBUSY when no hash slot freed in time. */
int  http_auth_login(http_req *r, const char *name, const char *password, auth_user *u,
                     auth_pw *pw);
/* The reply to a failed http_auth_login: 401, or 503 with Retry-After for MIMEO_EBUSY. */
void http_auth_reply_failure(http_req *r, int rc);
/* Sets r->set_cookie to a new session cookie for name (salt from pw), or a clearing one. */
void http_auth_set_cookie(http_req *r, const char *name, const auth_pw *pw, bool clear);
/* r->db's _security object as JSON text (new, free()); the default when none is stored. */
char *http_security_text(http_req *r);
/* Stores r->db's _security object. */
int  http_security_store(http_req *r, const jval *sec, mimeo_err *err);
void http_h_session(http_req *r);

#endif
