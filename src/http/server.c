/* The libmicrohttpd daemons and the request life cycle. An accept thread of ours owns the
 * listening socket and hands each new connection to one of a few libmicrohttpd daemons, one
 * epoll thread each, that only move bytes: the one with the fewest open connections. (MHD's
 * own thread pool let whichever thread woke first accept, and with 16 keep-alive clients one
 * thread often took all 16 while another sat idle.) A route runs on a bounded pool of workers
 * (loop.c): the connection is suspended, the request handed over, and resumed once the reply
 * is made, so a connection that waits (a feed, a slow client) costs no thread. A context is
 * made when the request line arrives (holding the raw target), the body is gathered under
 * its cap, the route runs after the body is in (answering on the first access-handler call
 * makes MHD close the connection and costs 7x in throughput, see DESIGN.md), and the context
 * is freed in one place, http_completed. Every connection also has a guard entry (caps,
 * timeouts). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <limits.h>
#include <malloc.h>
#include <time.h>
#include <unistd.h>

#include "http_int.h"
#include "../js/qs.h"

/* ---- the connection guard -------------------------------------------------------------- */
/* Every open connection has an entry, made and dropped by MHD's connection notifications:
 * the total and per-address counts behind the caps (over them, a connection's request gets a
 * quick 503 instead of waiting in the kernel's backlog), and the phase the timer thread's
 * sweep checks against the header and body timeouts. */
enum { CONN_HEAD, CONN_BODY, CONN_BUSY };

#define HTTP_ADDR_BUCKETS 4096
#define HTTP_OVER_CAP_MS  2000   /* a connection over a cap that sends nothing is cut then */
#define HTTP_BODY_GONE_MS 1000   /* a body whose client has ended its stream: cut after this */
/* The kernel's last-receive time counts in jiffies (up to 10 ms each): a request answered
 * within a jiffy of its last byte could look received after its reply, and its idle
 * keep-alive connection be cut as a slow head. */
#define HTTP_RECV_SLACK_MS 50
#define HTTP_TRIM_PARKED   256   /* parked since the last malloc_trim: trim again */
#define HTTP_TRIM_SETTLED  16    /* ... or this many, once no more come */

typedef struct http_addr_count {
    struct http_addr_count *next;
    unsigned                n;
    uint8_t                 len;
    unsigned char           addr[16];
} http_addr_count;

/* One libmicrohttpd daemon and its event thread. `open` counts the connections handed to it
 * and not yet closed: the accept thread counts up before handing one over (a burst of
 * accepts must not all see the same idle daemon), the close notification counts down. */
typedef struct http_evd {
    http_server        *srv;
    struct MHD_Daemon  *d;
    unsigned            index;
    atomic_uint         open;
    atomic_uint_fast64_t handed;
    atomic_bool         named;     /* its thread renamed "mimeo-event<i>" */
} http_evd;

typedef struct http_conn {
    http_server          *srv;
    struct http_conn     *prev, *next;   /* in conns->list, under conns->lock */
    int                   fd;
    _Atomic uint64_t      since;         /* clock_ms() when the current phase began */
    atomic_int            phase;         /* CONN_HEAD, CONN_BODY or CONN_BUSY */
    bool                  over;          /* beyond a cap: its request gets 503, then close */
    bool                  cut;           /* the sweep has closed it */
    bool                  released;      /* no longer counted (it is closing) */
    http_addr_count      *addr;          /* its address's count, or NULL */
    struct http_auth_memo *auth_memo;    /* credentials proven on it (authz.c) */
    uint64_t              consumed;      /* bytes of the requests finished on it */
    bool                  untracked;     /* a request of unknown size on the wire (a chunked
                                            body): its replies never park */
    /* Parked (http_park): the entry stays, still counted, with fd the parked reply's own
     * descriptor, until both http_park_end and libmicrohttpd's close notification (which
     * may come later, or earlier) have let go of it. Under conns->lock. */
    bool                  parked;
    bool                  park_done;     /* http_park_end has run */
    bool                  mhd_gone;      /* libmicrohttpd's close notification has run */
} http_conn;

struct http_conns {
    pthread_mutex_t  lock;
    http_conn       *list;
    unsigned         count;
    http_addr_count *addrs[HTTP_ADDR_BUCKETS];
};

static http_addr_count *http_addr_get(struct http_conns *cs, const struct sockaddr *sa) {
    const unsigned char *a;
    uint8_t len;
    if (sa->sa_family == AF_INET) {
        a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
        len = 4;
    } else if (sa->sa_family == AF_INET6) {
        a = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
        len = 16;
    } else {
        return NULL;
    }
    uint32_t h = 2166136261u;
    for (uint8_t i = 0; i < len; i++) h = (h ^ a[i]) * 16777619u;
    http_addr_count **b = &cs->addrs[h % HTTP_ADDR_BUCKETS], *e;
    for (e = *b; e; e = e->next)
        if (e->len == len && memcmp(e->addr, a, len) == 0) return e;
    e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->len = len;
    memcpy(e->addr, a, len);
    e->next = *b;
    *b = e;
    return e;
}

static void http_addr_put(struct http_conns *cs, http_addr_count *e) {
    if (!e || --e->n > 0) return;
    uint32_t h = 2166136261u;
    for (uint8_t i = 0; i < e->len; i++) h = (h ^ e->addr[i]) * 16777619u;
    for (http_addr_count **p = &cs->addrs[h % HTTP_ADDR_BUCKETS]; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            free(e);
            return;
        }
}

/* Drops c from the counts; under cs->lock. */
static void http_conn_uncount(struct http_conns *cs, http_conn *c) {
    if (c->released) return;
    c->released = true;
    cs->count--;
    http_addr_put(cs, c->addr);
    c->addr = NULL;
}

/* A connection that is closing stops counting at once: libmicrohttpd reports the close
 * (NOTIFY_CLOSED) only when its thread next wakes, which for an idle thread may be much
 * later, and the slot would stay taken meanwhile. */
static void http_conn_release(http_server *s, http_conn *c) {
    if (!c) return;
    pthread_mutex_lock(&s->conns->lock);
    http_conn_uncount(s->conns, c);
    pthread_mutex_unlock(&s->conns->lock);
}

static void http_conn_phase(http_conn *c, int phase);

static void http_notify_conn(void *cls, struct MHD_Connection *conn, void **socket_context,
                             enum MHD_ConnectionNotificationCode code) {
    http_evd *ev = cls;
    http_server *s = ev->srv;
    struct http_conns *cs = s->conns;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        /* This runs on the daemon's own thread: named here so that per-thread CPU (top -H,
         * /proc/<pid>/task, bench/auth.sh) tells the event threads apart. */
        if (!atomic_exchange(&ev->named, true)) {
            char name[16];
            snprintf(name, sizeof name, "mimeo-event%u", ev->index);
            pthread_setname_np(pthread_self(), name);
        }
        http_conn *c = calloc(1, sizeof *c);
        *socket_context = c;
        if (!c) return;
        c->srv = s;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        c->fd = ci ? ci->connect_fd : -1;
        atomic_init(&c->since, clock_ms());
        atomic_init(&c->phase, CONN_HEAD);
        ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        pthread_mutex_lock(&cs->lock);
        c->addr = ci && ci->client_addr ? http_addr_get(cs, ci->client_addr) : NULL;
        if (c->addr) c->addr->n++;
        cs->count++;
        c->over = cs->count > s->cfg.max_connections ||
                  (s->cfg.max_connections_per_address && c->addr &&
                   c->addr->n > s->cfg.max_connections_per_address);
        c->next = cs->list;
        if (cs->list) cs->list->prev = c;
        cs->list = c;
        pthread_mutex_unlock(&cs->lock);
        return;
    }
    atomic_fetch_sub(&ev->open, 1);
    http_conn *c = *socket_context;
    if (!c) return;
    *socket_context = NULL;
    pthread_mutex_lock(&cs->lock);
    if (c->parked) {
        /* MHD closes its own descriptor after this; the entry lives on with ours. */
        c->mhd_gone = true;
        bool done = c->park_done;
        pthread_mutex_unlock(&cs->lock);
        if (done) free(c);
        return;
    }
    pthread_mutex_unlock(&cs->lock);
    /* MHD closes the socket after this returns: the sweep, which takes the same lock, never
     * touches a descriptor that may have been reused. */
    pthread_mutex_lock(&cs->lock);
    if (c->prev) c->prev->next = c->next;
    else cs->list = c->next;
    if (c->next) c->next->prev = c->prev;
    http_conn_uncount(cs, c);
    pthread_mutex_unlock(&cs->lock);
    http_auth_memo_free(c->auth_memo);
    free(c);
}

/* A connection serves one request at a time, so its memo needs no lock. */
struct http_auth_memo **http_req_auth_memo(http_req *r) {
    return r->cx ? &r->cx->auth_memo : NULL;
}

static void http_conn_phase(http_conn *c, int phase) {
    if (!c) return;
    atomic_store_explicit(&c->since, clock_ms(), memory_order_relaxed);
    atomic_store_explicit(&c->phase, phase, memory_order_relaxed);
}

/* Milliseconds since the kernel last received data on fd (UINT64_MAX when unknown). */
static uint64_t http_fd_quiet_ms(int fd) {
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return UINT64_MAX;
    return ti.tcpi_last_data_recv;
}

/* True when bytes the client sent are still in the kernel, not yet read by libmicrohttpd:
 * then it is the server that is behind (a starved event thread), not the client slow. */
static bool http_fd_unread(int fd) {
    int n = 0;
    return fd >= 0 && ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

/* True when the client has closed its sending side (end of stream) or the socket failed;
 * pipelined bytes waiting to be read are not an end. */
bool http_fd_peer_gone(int fd) {
    char c;
    if (fd < 0) return false;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* 408 for a client too slow with its request, then both directions shut: MHD sees the end
 * of the stream and closes the connection on its own thread. Under TLS the socket is not
 * ours to write, so it is only shut. */
static void http_conn_cut(http_server *s, http_conn *c, bool answer) {
    static const char reply[] =
        "HTTP/1.1 408 Request Timeout\r\n"
        "Content-Type: application/json\r\n"
        "Server: " HTTP_SERVER_HEADER "\r\n"
        "Connection: close\r\n"
        "Content-Length: 83\r\n\r\n"
        "{\"error\":\"request_timeout\",\"reason\":\"The request was not received in time.\"}\n";
    if (answer && !s->cfg.tls_cert_pem)
        (void)!send(c->fd, reply, sizeof reply - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(c->fd, SHUT_RDWR);
    c->cut = true;
}

/* Parking hands each feed's connection pool back to malloc, which keeps the freed memory in
 * its arenas: once many feeds have parked since the last look, the free pages go back to the
 * kernel, so that idle feeds cost what they hold (docs/connections.md). */
static void http_trim_after_parking(http_server *s) {
    int parked = atomic_load(&s->parked);
    bool settled = parked == s->parked_last_sweep;   /* no change over the last second */
    s->parked_last_sweep = parked;
    if (parked < s->parked_at_trim) s->parked_at_trim = parked;
    int grown = parked - s->parked_at_trim;
    if (grown >= HTTP_TRIM_PARKED || (grown >= HTTP_TRIM_SETTLED && settled)) {
        malloc_trim(0);
        s->parked_at_trim = parked;
    }
}

void http_conns_sweep(http_server *s, uint64_t now) {
    http_trim_after_parking(s);
    struct http_conns *cs = s->conns;
    uint64_t head_ms = (uint64_t)s->cfg.header_timeout_s * 1000;
    uint64_t body_ms = (uint64_t)s->cfg.body_timeout_s * 1000;
    pthread_mutex_lock(&cs->lock);
    for (http_conn *c = cs->list; c; c = c->next) {
        if (c->cut || c->fd < 0) continue;
        int phase = atomic_load_explicit(&c->phase, memory_order_relaxed);
        uint64_t since = atomic_load_explicit(&c->since, memory_order_relaxed);
        uint64_t age = now > since ? now - since : 0;
        if (phase == CONN_HEAD && c->over && age > HTTP_OVER_CAP_MS) {
            http_conn_cut(s, c, false);
        } else if (phase == CONN_HEAD && http_fd_peer_gone(c->fd)) {
            /* Between requests the client closed its side. libmicrohttpd's epoll loop is
             * edge-triggered and may have taken that end of stream in with the last request,
             * so it would wait for an event that never comes (until idle_timeout). */
            http_conn_cut(s, c, false);
        } else if (phase == CONN_HEAD && head_ms && age > head_ms) {
            /* Only a request under way: a keep-alive connection with nothing sent since its
             * last reply is idle, and the idle timeout is for that. */
            uint64_t quiet = http_fd_quiet_ms(c->fd);
            if (quiet < age && age - quiet > HTTP_RECV_SLACK_MS && !http_fd_unread(c->fd))
                http_conn_cut(s, c, true);
        } else if (phase == CONN_BODY && age > HTTP_BODY_GONE_MS &&
                   http_fd_quiet_ms(c->fd) > HTTP_BODY_GONE_MS && http_fd_peer_gone(c->fd)) {
            /* A body cut short by the end of the stream. When the FIN came in the same
             * segment as the body's last bytes, MHD's edge-triggered loop took both in one
             * wake-up and waits for another that never comes (until body_timeout). */
            http_conn_cut(s, c, false);
        } else if (phase == CONN_BODY && body_ms && age > body_ms) {
            uint64_t quiet = http_fd_quiet_ms(c->fd);
            if (quiet != UINT64_MAX && quiet > body_ms && !http_fd_unread(c->fd))
                http_conn_cut(s, c, true);
        }
    }
    pthread_mutex_unlock(&cs->lock);
}

static struct http_conns *http_conns_new(void) {
    struct http_conns *cs = calloc(1, sizeof *cs);
    if (cs) pthread_mutex_init(&cs->lock, NULL);
    return cs;
}

static void http_conns_free(struct http_conns *cs) {
    if (!cs) return;
    for (size_t i = 0; i < HTTP_ADDR_BUCKETS; i++)
        while (cs->addrs[i]) {
            http_addr_count *e = cs->addrs[i];
            cs->addrs[i] = e->next;
            free(e);
        }
    pthread_mutex_destroy(&cs->lock);
    free(cs);
}

/* ---- handing work to the workers -------------------------------------------------------- */
void http_suspend_submit(http_server *s, struct MHD_Connection *conn, http_task *t) {
    atomic_fetch_add(&s->suspended, 1);
    MHD_suspend_connection(conn);
    http_loop_submit(s, t);
}

void http_resume(http_server *s, struct MHD_Connection *conn) {
    MHD_resume_connection(conn);
    atomic_fetch_sub(&s->suspended, 1);
}

void http_async_begin(http_req *r) { atomic_store(&r->async_hold, 2); }

void *http_async_alloc(http_req *r, size_t size) {
    void *op = malloc(size);
    if (!op) {
        http_reply_error(r, 500, "internal_server_error", "out of memory");
        return NULL;
    }
    http_async_begin(r);
    return op;
}

void http_async_end(http_req *r) {
    if (atomic_fetch_sub(&r->async_hold, 1) != 1) return;
    r->routed = true;
    http_resume(r->srv, r->conn);
}

/* ---- request contexts ------------------------------------------------------------------- */
/* MHD calls this with the raw request target before it decodes anything: our context is
 * born here, so the router sees exactly the bytes the client sent. */
static void *http_uri_log(void *cls, const char *uri, struct MHD_Connection *conn) {
    http_server *s = cls;
    http_req *r = http_req_new(uri ? uri : "/");
    if (!r) return NULL;
    size_t n = uri ? strlen(uri) : 0;
    r->srv = s;
    r->conn = conn;
    r->started_ns = http_metrics_now_ns();
    r->head_bytes = n;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    r->cx = ci ? ci->socket_context : NULL;
    buf_init(&r->body, s->cfg.max_request_size);
    buf_init(&r->scratch, 2 * MIMEO_ID_MAX);
    return r;
}

/* Counts the growth of r's body in the server-wide budget: each connection may hold up to
 * max_request_size, but all of them together only max_buffered, so that many clients sending
 * big bodies at once cannot take the node's memory (measured in security_limits.test.mjs).
 * False when the budget is exhausted: the body is then dropped and the request gets 503. */
static bool http_body_account(http_req *r) {
    http_server *s = r->srv;
    size_t now = r->body.alloc;
    if (now > r->accounted) {
        size_t total = atomic_fetch_add(&s->buffered, now - r->accounted) + (now - r->accounted);
        r->accounted = now;
        if (total > s->cfg.max_buffered) {
            atomic_fetch_sub(&s->buffered, r->accounted);
            r->accounted = 0;
            buf_destroy(&r->body);
            r->over_budget = true;
            return false;
        }
    }
    return true;
}

static void http_req_free(http_req *r) {
    if (r->accounted) atomic_fetch_sub(&r->srv->buffered, r->accounted);
    if (r->staged_accounted) atomic_fetch_sub(&r->srv->buffered, r->staged_accounted);
    buf_destroy(&r->staged);
    if (r->resp) MHD_destroy_response(r->resp);
    if (r->sink_free) r->sink_free(r->sink_state);
    if (r->db) mimeo_db_close(r->db);
    auth_user_destroy(&r->user);
    free(r->set_cookie);
    buf_destroy(&r->body);
    buf_destroy(&r->scratch);
    free(r);
}

static bool http_content_length(http_req *r, uint64_t *out);

/* The bytes r took on the wire (its head and its body), when known. */
static bool http_req_wire_bytes(http_req *r, uint64_t *out) {
    if (!r->conn || http_req_header(r, MHD_HTTP_HEADER_TRANSFER_ENCODING)) return false;
    uint64_t body = 0;
    if (!http_content_length(r, &body) && http_req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH))
        return false;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (!ci || ci->header_size == 0) return false;
    *out = (uint64_t)ci->header_size + body;
    return true;
}

static void http_req_count_bytes(http_req *r) {
    uint64_t n;
    if (http_req_wire_bytes(r, &n)) r->cx->consumed += n;
    else r->cx->untracked = true;
}

static void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                           enum MHD_RequestTerminationCode toe) {
    http_server *s = cls;
    http_req *r = *con_cls;
    (void)conn;
    if (!r) return;
    if (r->counted) atomic_fetch_sub(&s->busy, 1);
    http_metrics_done(r);
    if (r->cx && r->cx->parked) {
        /* The reply goes on outside libmicrohttpd: the connection stays counted. */
        http_req_free(r);
        *con_cls = NULL;
        return;
    }
    if (r->cx && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) http_req_count_bytes(r);
    /* Ended by an error, a client gone, or our 503 past a cap: the connection closes. */
    if (r->cx && (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK || r->cx->over))
        http_conn_release(s, r->cx);
    http_conn_phase(r->cx, CONN_HEAD);   /* the next request's head may start */
    http_req_free(r);
    *con_cls = NULL;
}

static http_method http_method_of(const char *m) {
    if (strcmp(m, "GET") == 0) return HTTP_GET;
    if (strcmp(m, "HEAD") == 0) return HTTP_HEAD;
    if (strcmp(m, "POST") == 0) return HTTP_POST;
    if (strcmp(m, "PUT") == 0) return HTTP_PUT;
    if (strcmp(m, "DELETE") == 0) return HTTP_DELETE;
    if (strcmp(m, "OPTIONS") == 0) return HTTP_OPTIONS;
    return HTTP_OTHER;
}

#define HTTP_REPLY_HEAD_ROOM 1024   /* a reply head without a Location */

static enum MHD_Result http_head_bytes(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value) {
    (void)kind;
    /* the line as received, and MHD's record of it in the same pool */
    *(size_t *)cls += strlen(key) + (value ? strlen(value) : 0) + 4 + 64;
    return MHD_YES;
}

/* A reply's head is built in the connection's pool beside what is left of the request's
 * head. A Location header echoes the id of a long request line: together they may not fit,
 * and MHD would then close the connection without a reply, after the write was made. The
 * header is optional, so it is dropped rather than the reply. */
static void http_location_fit(http_req *r) {
    const char *loc = MHD_get_response_header(r->resp, MHD_HTTP_HEADER_LOCATION);
    if (loc && r->head_bytes + strlen(loc) + HTTP_REPLY_HEAD_ROOM > r->srv->cfg.connection_memory)
        MHD_del_response_header(r->resp, MHD_HTTP_HEADER_LOCATION, loc);
}

static enum MHD_Result http_queue(http_req *r) {
    if (!r->resp) http_reply_error(r, 500, "unknown_error", "no reply was produced");
    if (!r->resp) return MHD_NO;   /* out of memory: drop the connection */
    http_location_fit(r);
    http_auth_reply_headers(r);
    enum MHD_Result ret = MHD_queue_response(r->conn, r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
    return ret;
}

static void http_linger_413(http_req *r, int fd);

/* Parses Content-Length; false when absent or not a number. */
static bool http_content_length(http_req *r, uint64_t *out) {
    const char *cl = http_req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (!cl) return false;
    uint64_t v = 0;
    int digits = 0;
    for (; *cl; cl++) {
        if (*cl < '0' || *cl > '9') return false;
        if (++digits > 19) return false;
        v = v * 10 + (uint64_t)(*cl - '0');
    }
    *out = v;
    return digits > 0;
}

/* 413 for a declared body over the cap, with a lingering close. Answering through MHD would
 * close the socket with the client's body still arriving, and the kernel then resets the
 * connection: a client busy writing sees EPIPE and never reads the reply. So the reply is
 * written here, the sending side shut, and what the client keeps sending is read and dropped
 * for a bounded time before MHD closes the connection (MHD_NO on the next call). That takes
 * seconds, so it runs on a worker while the connection is suspended. */
static void http_refuse_task(http_task *t) {
    http_req *r = (http_req *)((char *)t - offsetof(http_req, task));
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) http_linger_413(r, ci->connect_fd);
    r->refused = true;
    http_resume(r->srv, r->conn);
}

static enum MHD_Result http_refuse_oversize(http_req *r) {
    if (r->srv->cfg.tls_cert_pem) {   /* under TLS the socket is not ours to write */
        http_reply_error(r, 413, "too_large", "the request entity is too large");
        return http_queue(r);
    }
    r->task.run = http_refuse_task;
    http_suspend_submit(r->srv, r->conn, &r->task);
    return MHD_YES;
}

static void http_linger_413(http_req *r, int fd) {
    static const char body[] =
        "{\"error\":\"too_large\",\"reason\":\"the request entity is too large\"}\n";
    char head[512];
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 413 Request Entity Too Large\r\n"
                      "Content-Type: application/json\r\n"
                      "Cache-Control: must-revalidate\r\n"
                      "Server: " HTTP_SERVER_HEADER "\r\n"
                      "Connection: close\r\n"
                      "Content-Length: %zu\r\n\r\n%s",
                      sizeof body - 1, body);
    uint64_t deadline = clock_ms() + 5000;
    size_t off = 0;
    while (off < (size_t)hl && clock_ms() < deadline) {
        ssize_t n = send(fd, head + off, (size_t)hl - off, MSG_NOSIGNAL);
        if (n > 0) { off += (size_t)n; continue; }
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) break;
        struct pollfd pf = { fd, POLLOUT, 0 };
        poll(&pf, 1, 100);
    }
    shutdown(fd, SHUT_WR);
    char sink[16384];
    size_t drained = 0;
    deadline = clock_ms() + 2000;
    while (drained < ((size_t)256 << 20) && clock_ms() < deadline &&
           !atomic_load(&r->srv->stopping)) {
        struct pollfd pf = { fd, POLLIN, 0 };
        if (poll(&pf, 1, 100) <= 0) continue;
        ssize_t n = recv(fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            break;
        if (n > 0) drained += (size_t)n;
    }
}

/* Reads that wait on nothing (no password to check, no query server to ask, no commit) run
 * right on the event thread: handing them to a worker and back costs two thread switches,
 * more than the read itself (GET at 16 connections on the busy machine: 3,400 req/s handed
 * over, against 11,000 with a thread per connection). Basic credentials count as waiting on
 * nothing once the checked-password cache knows them. Everything else goes to a worker. */
static bool http_route_inline(http_req *r) {
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) return false;
    if (r->nseg >= 2 && http_seg_is(r, 1, "_changes")) return false;      /* filters run JS */
    if (r->nseg > 3 && http_seg_is(r, 1, "_design")) return false;        /* views, shows */
    return http_authenticate_quick(r);   /* a cache miss may need PBKDF2 or the slowdown */
}

/* Streamed uploads are authorized when their headers arrive; the route must not run the
 * check again (a second refreshed session cookie, a second password check). */
static bool http_authorize_once(http_req *r) {
    if (!r->authorized) r->authorized = http_authorize(r);
    return r->authorized;
}

/* ---- streamed bodies ------------------------------------------------------------------- */
/* A streamed body's sink (an attachment or multipart upload, h_att.c and h_multipart.c)
 * compresses, hashes and commits to the store every few MB: run on the event thread, each
 * commit would hold every other connection of that thread. The event thread only gathers
 * the bytes; at HTTP_SINK_STAGE the connection is suspended (the client's further bytes wait
 * in the kernel: back-pressure) and a worker feeds them to the sink, in order, then resumes
 * it. The rest is fed by the route's own task before the route runs. */
#define HTTP_SINK_STAGE ((size_t)256 << 10)

/* Reserves the stage in the server-wide body budget; false (the sink is then fed on the
 * event thread, as small bodies are) when the budget is spent. */
static bool http_stage_open(http_req *r) {
    http_server *s = r->srv;
    size_t want = HTTP_SINK_STAGE + s->cfg.connection_memory;
    if (atomic_fetch_add(&s->buffered, want) + want > s->cfg.max_buffered) {
        atomic_fetch_sub(&s->buffered, want);
        return false;
    }
    buf_init(&r->staged, want);   /* grows as bytes come: a small upload costs little */
    r->staged_accounted = want;
    return true;
}

static void http_stage_flush(http_req *r) {
    if (!r->staged.len) return;
    (void)r->body_sink(r->sink_state, r->staged.data, r->staged.len);
    r->staged.len = 0;
}

static void http_stage_task(http_task *t) {
    http_req *r = (http_req *)((char *)t - offsetof(http_req, task));
    http_stage_flush(r);
    http_conn_phase(r->cx, CONN_BODY);   /* the client was held by us, not slow */
    http_resume(r->srv, r->conn);
}

/* True when the connection was suspended for a worker to feed the sink. */
static bool http_stage_put(http_req *r, const char *data, size_t len) {
    if (!r->staged_accounted || buf_put(&r->staged, data, len) != 0) {
        http_stage_flush(r);   /* no stage: fed here, in order */
        (void)r->body_sink(r->sink_state, data, len);
        return false;
    }
    if (r->staged.len < HTTP_SINK_STAGE) return false;
    r->task.run = http_stage_task;
    http_conn_phase(r->cx, CONN_BUSY);
    http_suspend_submit(r->srv, r->conn, &r->task);
    return true;
}

/* After the head: a streamed body goes on only if its sender is authorized (sender_ok; it
 * reaches the disk as it arrives), then room is made for a buffered body. Refused, a streamed body is buffered
 * under the caps like any other and the refusal is made again when it is complete (MHD
 * sends no answer while the client is still writing). */
static enum MHD_Result http_body_begin(http_req *r, bool sender_ok) {
    http_server *s = r->srv;
    if (r->body_sink && !sender_ok) {
        r->sink_free(r->sink_state);
        r->body_sink = NULL;
        r->sink_state = NULL;
        r->sink_free = NULL;
        if (r->resp) MHD_destroy_response(r->resp);
        r->resp = NULL;
        r->status = 0;
    }
    if (r->body_sink) http_stage_open(r);
    uint64_t cl;
    if (!r->body_sink && http_content_length(r, &cl)) {
        if (cl > s->cfg.max_request_size) return http_refuse_oversize(r);
        /* Room for what is declared, up to a few MB: the rest grows as it arrives, so
         * clients that announce big bodies and send nothing cost no memory. */
        size_t room = cl < ((uint64_t)4 << 20) ? (size_t)cl : (size_t)4 << 20;
        if (room > 0 && buf_reserve(&r->body, room) != 0) {
            http_reply_error(r, 413, "too_large", "the request entity is too large");
            return http_queue(r);
        }
        http_body_account(r);
    }
    return MHD_YES;
}

/* A streamed upload's credentials, checked on a worker (the head has arrived, no body byte
 * has been taken); http_access goes on with http_body_begin when the connection resumes. */
static void http_sink_auth_task(http_task *t) {
    http_req *r = (http_req *)((char *)t - offsetof(http_req, task));
    http_authorize_once(r);
    http_resume(r->srv, r->conn);
}

/* The route, on a worker: the connection is suspended until the reply is made. */
static void http_route_task(http_task *t) {
    http_req *r = (http_req *)((char *)t - offsetof(http_req, task));
    if (r->body_sink) http_stage_flush(r);
    if (!http_cors_preflight(r) && http_authorize_once(r))
        http_route(r);
    /* A route that went asynchronous resumes the connection when it finishes (h_doc.c). */
    if (atomic_load(&r->async_hold)) {
        http_async_end(r);
        return;
    }
    r->routed = true;
    http_resume(r->srv, r->conn);
}

static enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version,
                                   const char *upload, size_t *upload_size, void **con_cls) {
    http_server *s = cls;
    http_req *r = *con_cls;
    (void)url;
    if (!r) return MHD_NO;   /* the context could not be allocated */

    if (r->calls++ == 0) {
        r->conn = conn;
        r->http11 = version && strcmp(version, MHD_HTTP_VERSION_1_1) == 0;
        r->method_name = method;
        r->method = http_method_of(method);
        r->counted = true;
        atomic_fetch_add(&s->busy, 1);
        http_conn_phase(r->cx, CONN_BODY);
        if (r->cx && r->cx->over) {
            /* Over the total or per-address cap: a quick answer, then the connection
             * closes (and frees its slot). */
            http_reply_error(r, 503, "service_unavailable",
                             "Too many connections; retry later.");
            http_header(r, "Retry-After", "1");
            http_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
            return http_queue(r);
        }
        MHD_get_connection_values(conn, MHD_HEADER_KIND, http_head_bytes, &r->head_bytes);
        if (r->head_bytes + HTTP_REPLY_HEAD_ROOM > s->cfg.connection_memory) {
            /* MHD took the head but could not build a reply beside it: refused before
             * anything is done, while a short reply still fits. */
            http_reply_error(r, 414, "too_long", "The request line and headers are longer "
                             "than [chttpd] connection_memory allows.");
            http_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
            return http_queue(r);
        }
        http_att_sink_choose(r);   /* attachment uploads stream to the store (h_att.c) */
        http_mp_sink_choose(r);    /* so do multipart documents (h_multipart.c) */
        if (r->body_sink && !http_authenticate_quick(r)) {
            /* Checking these credentials may take a PBKDF2 or the failed-login slowdown:
             * a worker does it with the connection suspended, and the next call takes
             * the body on from there. */
            r->sink_auth_pending = true;
            r->task.run = http_sink_auth_task;
            http_suspend_submit(s, conn, &r->task);
            return MHD_YES;
        }
        return http_body_begin(r, !r->body_sink || http_authorize_once(r));
    }
    if (r->refused) return MHD_NO;
    if (r->sink_auth_pending) {
        /* The worker's verdict stands: a refusal is not checked again here. */
        r->sink_auth_pending = false;
        enum MHD_Result rc = http_body_begin(r, r->authorized);
        if (r->resp || rc != MHD_YES) {   /* refused before any body byte was taken */
            *upload_size = 0;
            return rc;
        }
    }

    if (*upload_size > 0) {
        if (r->body_sink) {
            http_stage_put(r, upload, *upload_size);
            *upload_size = 0;
            return MHD_YES;
        }
        if (!r->too_large && !r->over_budget) {
            if (buf_put(&r->body, upload, *upload_size) != 0) {
                r->too_large = true;   /* keep reading (and dropping) so we can answer */
                buf_destroy(&r->body);
            } else {
                http_body_account(r);
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }

    if (r->routed) return http_queue(r);
    http_conn_phase(r->cx, CONN_BUSY);
    if (r->too_large)
        http_reply_error(r, 413, "too_large", "the request entity is too large");
    else if (r->over_budget) {
        http_reply_error(r, 503, "service_unavailable",
                         "Too many large requests in flight; retry later.");
        http_header(r, "Retry-After", "1");
    }
    else if (atomic_load(&s->stopping))
        http_reply_error(r, 503, "service_unavailable", "The server is shutting down.");
    else if (http_route_inline(r)) {
        if (!http_cors_preflight(r) && http_authorize_once(r))
            http_route(r);
    } else {
        r->task.run = http_route_task;
        http_suspend_submit(s, conn, &r->task);
        return MHD_YES;
    }
    return http_queue(r);
}

/* ---- the daemon ------------------------------------------------------------------------- */
static void http_mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    /* A client that hangs up on a changes feed is routine, not worth a log line; the
     * "internal error" close follows our own lingering 413 (http_refuse_oversize); and the
     * "application error" close is how a reply leaves libmicrohttpd to be parked. */
    if (strstr(line, "no longer available for sending") || strstr(line, "Request too big") ||
        strstr(line, "Application reported internal error") ||
        strstr(line, "application error generating response")) return;
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    fprintf(stderr, "mimeo: http: %s\n", line);
}

/* Each connection is a descriptor: the soft limit (often 1024) is raised toward the hard
 * one so that max_connections can be reached; when even the hard limit is lower, the cap is
 * lowered to fit and a line says so. */
static void http_raise_fd_limit(http_server *s) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    rlim_t want = (rlim_t)s->cfg.max_connections + s->cfg.max_connections / 8 + 512;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        unsigned fit = rl.rlim_cur > 1024 ? (unsigned)((rl.rlim_cur - 512) * 8 / 9) : 448;
        fprintf(stderr, "mimeo: http: open-file limit %llu: max_connections lowered from %u "
                "to %u\n", (unsigned long long)rl.rlim_cur, s->cfg.max_connections, fit);
        s->cfg.max_connections = fit;
    }
}

/* ---- the accept thread ------------------------------------------------------------------ */
/* The listening socket, bound as libmicrohttpd bound its own: SO_REUSEADDR only (not
 * SO_REUSEPORT, with which a second live server could bind the same port and the kernel
 * split connections between them; without SO_REUSEADDR a restarted server could not bind
 * while old connections linger in TIME_WAIT), an IPv6 address for IPv6 only. */
static int http_listen(http_server *s, const struct sockaddr *sa, socklen_t salen) {
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (sa->sa_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_storage bound;
    socklen_t blen = sizeof bound;
    if (bind(fd, sa, salen) != 0 || listen(fd, 4096) != 0 ||
        getsockname(fd, (struct sockaddr *)&bound, &blen) != 0) {
        close(fd);
        return -1;
    }
    s->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    s->listen_fd = fd;
    return 0;
}

/* The daemon with the fewest open connections; ties go round, so that an idle server
 * spreads its first connections too. */
static http_evd *http_evd_pick(http_server *s, unsigned *turn) {
    http_evd *best = NULL;
    unsigned least = UINT_MAX;
    for (unsigned k = 0; k < s->nevds; k++) {
        http_evd *ev = &s->evds[(*turn + k) % s->nevds];
        unsigned n = atomic_load_explicit(&ev->open, memory_order_relaxed);
        if (n < least) {
            least = n;
            best = ev;
        }
    }
    *turn = (*turn + 1) % s->nevds;
    return best;
}

/* ---- parked replies --------------------------------------------------------------------- */
uint64_t http_park_expect(http_req *r) {
    http_conn *c = r->cx;
    uint64_t n;
    if (!c || c->untracked || r->srv->cfg.tls_cert_pem || !r->http11 || r->method == HTTP_HEAD ||
        !http_req_wire_bytes(r, &n))
        return 0;
    /* A client that asked to close gets its reply from libmicrohttpd, which closes after. */
    const char *conn_hdr = http_req_header(r, MHD_HTTP_HEADER_CONNECTION);
    if (conn_hdr && strcasestr(conn_hdr, "close")) return 0;
    return c->consumed + n;
}

bool http_park(http_server *s, struct MHD_Connection *conn, uint64_t expect, http_conn **cx,
               int *fd) {
    if (!expect || atomic_load(&s->stopping)) return false;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    http_conn *c = ci ? ci->socket_context : NULL;
    uint64_t received;
    if (!c || c->fd < 0 || c->over || !http_park_received(c->fd, &received) || received != expect)
        return false;
    int dup_fd = fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
    if (dup_fd < 0) return false;
    /* libmicrohttpd may have left the socket corked or with Nagle on: each chunk goes now. */
    int one = 1, zero = 0;
    setsockopt(dup_fd, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero);
    setsockopt(dup_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    http_conn_phase(c, CONN_BUSY);
    pthread_mutex_lock(&s->conns->lock);
    c->parked = true;
    c->fd = dup_fd;
    pthread_mutex_unlock(&s->conns->lock);
    atomic_fetch_add(&s->parked, 1);
    /* Closed from the content reader, MHD 0.9.75 leaves the connection for its next event
     * to clean up (its descriptor, its close notification), and a parked socket may see
     * none for long. A connection with a timeout of its own is looked at on every turn of
     * its event loop, and a turn comes within that timeout. */
    MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned int)1);
    *cx = c;
    *fd = dup_fd;
    return true;
}

static http_evd *http_evd_pick(http_server *s, unsigned *turn);

void http_park_end(http_server *s, http_conn *c, bool reuse) {
    struct http_conns *cs = s->conns;
    pthread_mutex_lock(&cs->lock);
    int fd = c->fd;
    c->fd = -1;
    if (c->prev) c->prev->next = c->next;
    else cs->list = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    http_conn_uncount(cs, c);
    http_auth_memo_free(c->auth_memo);
    c->auth_memo = NULL;
    c->park_done = true;
    bool gone = c->mhd_gone;
    pthread_mutex_unlock(&cs->lock);
    if (gone) free(c);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (reuse && !atomic_load(&s->stopping) && s->nevds > 0 &&
        getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        unsigned turn = (unsigned)fd;
        http_evd *ev = http_evd_pick(s, &turn);
        atomic_fetch_add(&ev->open, 1);
        /* As for a new connection: on failure MHD has closed the socket. */
        if (MHD_add_connection(ev->d, fd, (struct sockaddr *)&ss, sl) != MHD_YES)
            atomic_fetch_sub(&ev->open, 1);
    } else {
        close(fd);
    }
    atomic_fetch_sub(&s->parked, 1);
}

static unsigned http_open_total(http_server *s) {
    unsigned n = 0;
    for (unsigned k = 0; k < s->nevds; k++)
        n += atomic_load_explicit(&s->evds[k].open, memory_order_relaxed);
    return n;
}

static void *http_accept_main(void *arg) {
    http_server *s = arg;
    pthread_setname_np(pthread_self(), "mimeo-accept");
    unsigned turn = 0;
    struct pollfd p[2] = { { s->listen_fd, POLLIN, 0 }, { s->wake_fd[0], POLLIN, 0 } };
    for (;;) {
        /* Full (or out of descriptors): the listening socket is left alone for a moment,
         * and new clients wait in the backlog as they would for a busy server. */
        bool full = http_open_total(s) >= s->accept_limit;
        p[0].revents = p[1].revents = 0;
        int rc = full ? poll(&p[1], 1, 10) : poll(p, 2, -1);
        if (rc < 0 && errno == ENOMEM) {
            struct timespec ts = { 0, 10 * 1000 * 1000 };
            nanosleep(&ts, NULL);
            continue;
        }
        if (rc < 0 && errno != EINTR) {
            fprintf(stderr, "mimeo: http: the accept thread stopped: %s\n", strerror(errno));
            break;
        }
        if (p[1].revents) break;
        if (full || !(p[0].revents & POLLIN)) continue;
        /* Takes what the backlog holds, up to the limit. */
        while (http_open_total(s) < s->accept_limit) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            int fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &sl,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                    poll(&p[1], 1, 10);
                break;
            }
            http_evd *ev = http_evd_pick(s, &turn);
            atomic_fetch_add(&ev->open, 1);
            atomic_fetch_add_explicit(&ev->handed, 1, memory_order_relaxed);
            /* On failure MHD has closed the socket. A connection MHD takes but fails to set
             * up on its own thread (TLS session, memory) is not reported closed and stays
             * counted: it only tilts the choice, and that only after an allocation failed. */
            if (MHD_add_connection(ev->d, fd, (struct sockaddr *)&ss, sl) != MHD_YES)
                atomic_fetch_sub(&ev->open, 1);
        }
    }
    return NULL;
}

/* Stops the accept thread; the listening socket stays open (new clients wait in the
 * backlog rather than be refused) until http_server_free. */
static void http_accept_stop(http_server *s) {
    if (!s->acceptor_started) return;
    char b = 1;
    (void)!write(s->wake_fd[1], &b, 1);
    pthread_join(s->acceptor, NULL);
    s->acceptor_started = false;
}

/* Undoes what http_server_start did so far (any daemon left is stopped here) and frees s. */
static void http_server_unwind(http_server *s) {
    http_accept_stop(s);
    for (unsigned i = 0; i < s->nevds; i++) MHD_stop_daemon(s->evds[i].d);
    free(s->evds);
    if (s->listen_fd >= 0) close(s->listen_fd);
    for (int i = 0; i < 2; i++)
        if (s->wake_fd[i] >= 0) close(s->wake_fd[i]);
    if (s->loop) http_loop_stop(s);
    http_park_stop(s);
    if (s->auth) http_auth_stop(s);
    qs_pool_free(s->qs);
    http_conns_free(s->conns);
    free(s);
}

bool http_event_thread_stats(http_server *s, unsigned i, uint64_t *handed, uint64_t *open) {
    if (i >= s->nevds) return false;
    *handed = atomic_load_explicit(&s->evds[i].handed, memory_order_relaxed);
    *open = atomic_load_explicit(&s->evds[i].open, memory_order_relaxed);
    return true;
}

http_server *http_server_start(mimeo_env *env, const http_config *cfg, char *errbuf,
                               size_t errlen) {
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(errbuf, errlen, "out of memory");
        return NULL;
    }
    s->env = env;
    s->cfg = *cfg;
    if (s->cfg.max_request_size == 0) s->cfg.max_request_size = (size_t)64 << 20;
    if (s->cfg.max_connections == 0) s->cfg.max_connections = 10000;
    if (s->cfg.connection_memory < 8192) s->cfg.connection_memory = (size_t)16 * 1024;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    /* Workers mostly wait (on the group commit, a query server): enough of them that 16
     * writers share a commit, few enough to stay a bounded cost. */
    if (s->cfg.worker_threads == 0) s->cfg.worker_threads = cores * 8 < 16 ? 16 : (unsigned)cores * 8;
    if (s->cfg.event_threads == 0) s->cfg.event_threads = cores > 8 ? 8 : (unsigned)cores;
    if (s->cfg.max_buffered == 0) s->cfg.max_buffered = (size_t)256 << 20;
    if (s->cfg.max_buffered < s->cfg.max_request_size) s->cfg.max_buffered = s->cfg.max_request_size;
    if (s->cfg.changes_timeout_ms == 0) s->cfg.changes_timeout_ms = 60000;
    s->limits.max_depth = cfg->max_json_depth ? cfg->max_json_depth : JSON_DEFAULT_MAX_DEPTH;
    s->limits.max_doc_bytes = s->cfg.max_request_size;
    atomic_init(&s->stopping, false);
    atomic_init(&s->busy, 0);
    atomic_init(&s->buffered, 0);
    s->listen_fd = -1;
    s->wake_fd[0] = s->wake_fd[1] = -1;

    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *sa;
    socklen_t salen;
    /* No listening socket of their own: the accept thread hands connections over, and the
     * inter-thread channel (ITC) wakes a daemon for each. */
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC | MHD_USE_NO_LISTEN_SOCKET;
    const char *bind = cfg->bind_address && cfg->bind_address[0] ? cfg->bind_address
                                                                  : "127.0.0.1";
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, bind, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&a4;
        salen = sizeof a4;
    } else if (inet_pton(AF_INET6, bind, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&a6;
        salen = sizeof a6;
        flags |= MHD_USE_IPv6;
    } else {
        snprintf(errbuf, errlen, "bind address '%s' is not an IPv4 or IPv6 address", bind);
        free(s);
        return NULL;
    }
    if (cfg->port > 65535) {
        snprintf(errbuf, errlen, "port %u is out of range", cfg->port);
        free(s);
        return NULL;
    }

    http_raise_fd_limit(s);
    s->conns = http_conns_new();
    if (!s->conns) {
        snprintf(errbuf, errlen, "out of memory");
        free(s);
        return NULL;
    }
    if (http_auth_start(s, errbuf, errlen) != 0) {
        http_conns_free(s->conns);
        free(s);
        return NULL;
    }
    /* HTTPS through libmicrohttpd's GnuTLS support. */
    struct MHD_OptionItem tls_opts[] = {
        { MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)cfg->tls_key_pem },
        { MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)cfg->tls_cert_pem },
        { MHD_OPTION_END, 0, NULL },
    };
    if (cfg->tls_cert_pem) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES || !cfg->tls_key_pem) {
            snprintf(errbuf, errlen, "this libmicrohttpd has no TLS support, or no key given");
            http_auth_stop(s);
            http_conns_free(s->conns);
            free(s);
            return NULL;
        }
        flags |= MHD_USE_TLS;
        s->cfg.auth.secure_cookie = true;
    } else {
        /* TURBO: besides reading before polling, a closing connection's socket is not shut
         * down, only its descriptor closed, which lets a parked reply keep the socket through
         * its own descriptor (http_park). Under TLS the shutdown is the TLS close, kept. */
        flags |= MHD_USE_TURBO;
    }
    if (http_loop_start(s, s->cfg.worker_threads, errbuf, errlen) != 0) {
        http_auth_stop(s);
        http_conns_free(s->conns);
        free(s);
        return NULL;
    }
    if (http_park_start(s) != 0) {
        snprintf(errbuf, errlen, "cannot start the park thread");
        http_server_unwind(s);
        return NULL;
    }
    /* Over max_connections a connection's request gets a quick 503; a reserve above that is
     * still taken in for it, and past the reserve the accept thread stops accepting, which
     * leaves new clients waiting in the kernel's backlog. */
    unsigned reserve = s->cfg.max_connections / 8 < 64 ? 64 : s->cfg.max_connections / 8;
    s->accept_limit = s->cfg.max_connections + reserve;
    if (http_listen(s, sa, salen) != 0) {
        snprintf(errbuf, errlen, "cannot listen on %s port %u (in use, or not permitted)",
                 bind, cfg->port);
        http_server_unwind(s);
        return NULL;
    }
    unsigned n = s->cfg.event_threads ? s->cfg.event_threads : 1;
    s->evds = calloc(n, sizeof *s->evds);
    if (!s->evds) {
        snprintf(errbuf, errlen, "out of memory");
        http_server_unwind(s);
        return NULL;
    }
    for (unsigned i = 0; i < n; i++) {
        http_evd *ev = &s->evds[i];
        ev->srv = s;
        ev->index = i;
        atomic_init(&ev->open, 0);
        atomic_init(&ev->handed, 0);
        atomic_init(&ev->named, false);
        ev->d = MHD_start_daemon(
            flags, 0, NULL, NULL, http_access, s,
            MHD_OPTION_EXTERNAL_LOGGER, http_mhd_log, NULL,   /* must come first */
            MHD_OPTION_URI_LOG_CALLBACK, http_uri_log, s,
            MHD_OPTION_NOTIFY_COMPLETED, http_completed, s,
            MHD_OPTION_NOTIFY_CONNECTION, http_notify_conn, ev,
            /* The accept thread keeps the total under accept_limit; any one daemon may
             * hold all of it. (MHD's default limit is FD_SETSIZE.) */
            MHD_OPTION_CONNECTION_LIMIT, s->accept_limit,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)s->cfg.idle_timeout_s,
            /* The request head is read into this pool. MHD 0.9.75 zeroes the whole pool after
             * every request and the unused half of its read buffer at every reply, so the
             * size is paid on every request (at 160 KiB the memset was 89% of a GET's
             * instructions) and stays resident per connection (an idle feed). 16 KiB takes
             * request lines up to ~15 KB (CouchDB's stock parser stops at 8 KB); longer ones
             * get MHD's 414, long headers its 431. A 64 KiB id in a URL needs 160 KiB. */
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, s->cfg.connection_memory,
            MHD_OPTION_ARRAY, cfg->tls_cert_pem ? tls_opts : &tls_opts[2],
            MHD_OPTION_END);
        if (!ev->d) {
            snprintf(errbuf, errlen, "cannot start the event threads%s",
                     cfg->tls_cert_pem ? " (a certificate and key that do not load?)" : "");
            http_server_unwind(s);
            return NULL;
        }
        s->nevds = i + 1;
    }
    if (pipe2(s->wake_fd, O_CLOEXEC | O_NONBLOCK) != 0 ||
        pthread_create(&s->acceptor, NULL, http_accept_main, s) != 0) {
        snprintf(errbuf, errlen, "cannot start the accept thread");
        http_server_unwind(s);
        return NULL;
    }
    s->acceptor_started = true;
    return s;
}

unsigned http_server_port(const http_server *s) {
    return s->port;
}

void http_server_quiesce(http_server *s) {
    if (!s || atomic_exchange(&s->stopping, true)) return;
    http_accept_stop(s);
    http_loop_fire_all(s);   /* waiting feeds end now */
    http_park_fire_all(s);
}

void http_server_free(http_server *s) {
    if (!s) return;
    /* Stop accepting first; then give requests in flight (and feeds, which end as soon as
     * their waiters fire) up to 5 s to finish before connections are cut. A connection
     * still suspended is a route running on a worker: MHD may not stop under it, so that
     * one is waited for, as the thread-per-connection server waited for its threads. */
    http_server_quiesce(s);
    uint64_t deadline = clock_ms() + 5000;
    while ((atomic_load(&s->busy) > 0 && clock_ms() < deadline) ||
           atomic_load(&s->suspended) > 0 || atomic_load(&s->parked) > 0) {
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    for (unsigned i = 0; i < s->nevds; i++) MHD_stop_daemon(s->evds[i].d);
    s->nevds = 0;
    http_server_unwind(s);
}
