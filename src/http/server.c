/* The libmicrohttpd daemon and the request life cycle: a context is made when the request
 * line arrives (holding the raw target), the body is gathered under its cap, the route
 * runs on the second or a later access-handler call (answering on the first makes MHD close
 * the connection and costs 7x in throughput, see DESIGN.md), and the context is freed in
 * one place, http_completed. One thread per connection, so a changes feed may block. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "http_int.h"
#include "../js/qs.h"

/* ---- request contexts ------------------------------------------------------------------- */
/* MHD calls this with the raw request target before it decodes anything: our context is
 * born here, so the router sees exactly the bytes the client sent. */
static void *http_uri_log(void *cls, const char *uri, struct MHD_Connection *conn)
{
    http_server *s = cls;
    http_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    size_t n = uri ? strlen(uri) : 0;
    r->srv = s;
    r->conn = conn;
    r->started_ns = http_metrics_now_ns();
    r->raw = n < sizeof r->inline_raw ? r->inline_raw : malloc(n + 1);
    if (!r->raw) {
        free(r);
        return NULL;
    }
    buf_init(&r->body, s->cfg.max_request_size);
    buf_init(&r->scratch, 2 * MIMEO_ID_MAX);
    http_url_parse(r, uri ? uri : "/");
    return r;
}

/* Counts the growth of r's body in the server-wide budget: each connection may hold up to
 * max_request_size, but all of them together only max_buffered, so that many clients sending
 * big bodies at once cannot take the node's memory (measured in security_limits.test.mjs).
 * False when the budget is exhausted: the body is then dropped and the request gets 503. */
static bool http_body_account(http_req *r)
{
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

static void http_req_free(http_req *r)
{
    if (r->accounted) atomic_fetch_sub(&r->srv->buffered, r->accounted);
    if (r->resp) MHD_destroy_response(r->resp);
    if (r->sink_free) r->sink_free(r->sink_state);
    if (r->db) mimeo_db_close(r->db);
    auth_user_destroy(&r->user);
    free(r->set_cookie);
    buf_destroy(&r->body);
    buf_destroy(&r->scratch);
    if (r->raw && r->raw != r->inline_raw) free(r->raw);
    free(r);
}

static void http_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                           enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    http_req *r = *con_cls;
    (void)conn; (void)toe;
    if (!r) return;
    if (r->counted) atomic_fetch_sub(&s->busy, 1);
    http_metrics_done(r);
    http_req_free(r);
    *con_cls = NULL;
}

static http_method http_method_of(const char *m)
{
    if (strcmp(m, "GET") == 0) return HTTP_GET;
    if (strcmp(m, "HEAD") == 0) return HTTP_HEAD;
    if (strcmp(m, "POST") == 0) return HTTP_POST;
    if (strcmp(m, "PUT") == 0) return HTTP_PUT;
    if (strcmp(m, "DELETE") == 0) return HTTP_DELETE;
    if (strcmp(m, "OPTIONS") == 0) return HTTP_OPTIONS;
    return HTTP_OTHER;
}

static enum MHD_Result http_queue(http_req *r)
{
    if (!r->resp) http_reply_error(r, 500, "unknown_error", "no reply was produced");
    if (!r->resp) return MHD_NO;   /* out of memory: drop the connection */
    http_auth_reply_headers(r);
    enum MHD_Result ret = MHD_queue_response(r->conn, r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
    return ret;
}

/* Parses Content-Length; false when absent or not a number. */
static bool http_content_length(http_req *r, uint64_t *out)
{
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
 * for a bounded time before MHD closes the connection (MHD_NO). */
static enum MHD_Result http_refuse_oversize(http_req *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci || r->srv->cfg.tls_cert_pem) {   /* under TLS the socket is not ours to write */
        http_reply_error(r, 413, "too_large", "the request entity is too large");
        return http_queue(r);
    }
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
    int fd = ci->connect_fd;
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
    return MHD_NO;
}

static enum MHD_Result http_access(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version,
                                   const char *upload, size_t *upload_size, void **con_cls)
{
    http_server *s = cls;
    http_req *r = *con_cls;
    (void)url; (void)version;
    if (!r) return MHD_NO;   /* the context could not be allocated */

    if (r->calls++ == 0) {
        r->conn = conn;
        r->method_name = method;
        r->method = http_method_of(method);
        r->counted = true;
        atomic_fetch_add(&s->busy, 1);
        http_att_sink_choose(r);   /* attachment uploads stream to the store (h_att.c) */
        http_mp_sink_choose(r);    /* so do multipart documents (h_multipart.c) */
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

    if (*upload_size > 0) {
        if (r->body_sink) {
            (void)r->body_sink(r->sink_state, upload, *upload_size);
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

    if (r->too_large)
        http_reply_error(r, 413, "too_large", "the request entity is too large");
    else if (r->over_budget) {
        http_reply_error(r, 503, "service_unavailable",
                         "Too many large requests in flight; retry later.");
        http_header(r, "Retry-After", "1");
    }
    else if (atomic_load(&s->stopping))
        http_reply_error(r, 503, "service_unavailable", "The server is shutting down.");
    else if (!http_cors_preflight(r) && http_authorize(r))
        http_route(r);
    return http_queue(r);
}

/* ---- the daemon ------------------------------------------------------------------------- */
static void http_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    /* A client that hangs up on a changes feed is routine, not worth a log line; and the
     * "internal error" close follows our own lingering 413 (http_refuse_oversize). */
    if (strstr(line, "no longer available for sending") ||
        strstr(line, "Application reported internal error")) return;
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    fprintf(stderr, "mimeo: http: %s\n", line);
}

http_server *http_server_start(mimeo_env *env, const http_config *cfg, char *errbuf,
                               size_t errlen)
{
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(errbuf, errlen, "out of memory");
        return NULL;
    }
    s->env = env;
    s->cfg = *cfg;
    if (s->cfg.max_request_size == 0) s->cfg.max_request_size = (size_t)64 << 20;
    if (s->cfg.max_connections == 0) s->cfg.max_connections = 512;
    if (s->cfg.max_buffered == 0) s->cfg.max_buffered = (size_t)256 << 20;
    if (s->cfg.max_buffered < s->cfg.max_request_size) s->cfg.max_buffered = s->cfg.max_request_size;
    if (s->cfg.changes_timeout_ms == 0) s->cfg.changes_timeout_ms = 60000;
    s->limits.max_depth = cfg->max_json_depth ? cfg->max_json_depth : JSON_DEFAULT_MAX_DEPTH;
    s->limits.max_doc_bytes = s->cfg.max_request_size;
    atomic_init(&s->stopping, false);
    atomic_init(&s->busy, 0);
    atomic_init(&s->buffered, 0);
    s->listen_sock = MHD_INVALID_SOCKET;

    struct sockaddr_in6 a6;
    struct sockaddr_in a4;
    struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC;
    const char *bind = cfg->bind_address && cfg->bind_address[0] ? cfg->bind_address
                                                                  : "127.0.0.1";
    memset(&a4, 0, sizeof a4);
    memset(&a6, 0, sizeof a6);
    if (inet_pton(AF_INET, bind, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&a4;
    } else if (inet_pton(AF_INET6, bind, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)cfg->port);
        sa = (struct sockaddr *)&a6;
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

    if (http_auth_start(s, errbuf, errlen) != 0) {
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
            free(s);
            return NULL;
        }
        flags |= MHD_USE_TLS;
        s->cfg.auth.secure_cookie = true;
    }
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, http_access, s,
        MHD_OPTION_EXTERNAL_LOGGER, http_mhd_log, NULL,   /* must come first */
        MHD_OPTION_SOCK_ADDR, sa,
        MHD_OPTION_URI_LOG_CALLBACK, http_uri_log, s,
        MHD_OPTION_NOTIFY_COMPLETED, http_completed, s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)s->cfg.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)s->cfg.idle_timeout_s,
        /* Room for long request lines. MHD zeroes the whole pool after every request, so its
         * size is paid per request: 160 KiB admits URLs of ~70 KB, enough for a 64 KiB id
         * (longer: MHD answers 414). */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)160 * 1024,
        /* MHD_OPTION_LISTENING_ADDRESS_REUSE is left out on purpose. Without it MHD sets
         * SO_REUSEADDR only, so a restart binds while old connections linger in TIME_WAIT.
         * Set to 1 it adds SO_REUSEPORT, and a second live server could bind the same port
         * (the kernel would split connections between them); set to 0 it drops
         * SO_REUSEADDR too, and a restarted server could not bind for a minute. */
        MHD_OPTION_ARRAY, cfg->tls_cert_pem ? tls_opts : &tls_opts[2],
        MHD_OPTION_END);
    if (!s->daemon) {
        snprintf(errbuf, errlen, "cannot listen on %s port %u (in use, not allowed, or%s)",
                 bind, cfg->port, cfg->tls_cert_pem ? " a certificate and key that do not load"
                                                    : " not permitted");
        http_auth_stop(s);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon,
                                                           MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : cfg->port;
    return s;
}

unsigned http_server_port(const http_server *s)
{
    return s->port;
}

void http_server_quiesce(http_server *s)
{
    if (!s || atomic_exchange(&s->stopping, true)) return;
    s->listen_sock = MHD_quiesce_daemon(s->daemon);
}

void http_server_free(http_server *s)
{
    if (!s) return;
    /* Stop accepting first; then give requests in flight (and feeds, which notice the
     * flag within their wait slice) up to 5 s to finish before connections are cut. */
    http_server_quiesce(s);
    MHD_socket ls = s->listen_sock;
    uint64_t deadline = clock_ms() + 5000;
    while (atomic_load(&s->busy) > 0 && clock_ms() < deadline) {
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->daemon);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    http_auth_stop(s);
    qs_pool_free(s->qs);
    free(s);
}
