/* The HTTP front end: a CouchDB-compatible server over the public API in mimeo.h.
 * This header is what the command line sees: a configuration struct (every field has a
 * default in src/cli/config.c, the one table of options) and start/stop of one server.
 * Everything else in src/http/ is internal (http_int.h). */
#ifndef MIMEO_HTTP_H
#define MIMEO_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mimeo.h"

/* CORS, as CouchDB's [cors] section. Strings are borrowed until http_server_free. */
typedef struct http_cors {
    bool        enabled;
    const char *origins;      /* "*" or a comma-separated list of exact origins */
    bool        credentials;  /* send Access-Control-Allow-Credentials: true */
    const char *methods;      /* Access-Control-Allow-Methods on preflight */
    const char *headers;      /* Access-Control-Allow-Headers on preflight */
    unsigned    max_age;      /* seconds, Access-Control-Max-Age on preflight */
} http_cors;

/* Accounts and sessions ([admins], [chttpd], [chttpd_auth], [couchdb]). Strings borrowed. */
typedef struct http_auth_cfg {
    bool               open;               /* no admin: everyone is a server admin (loopback) */
    const char *const *admin_names;        /* server admins and their config hashes */
    const char *const *admin_hashes;
    size_t             nadmins;
    const char        *secret;             /* hex; empty: random per run */
    unsigned           timeout_s;          /* session cookie lifetime */
    unsigned           iterations;         /* PBKDF2 iterations of new _users hashes */
    unsigned           max_hashes;         /* PBKDF2 runs at once, process-wide (0: cores) */
    unsigned           hash_wait_ms;       /* wait for a free one before 503 */
    bool               require_valid_user; /* anonymous requests get 401 */
    const char        *www_authenticate;   /* WWW-Authenticate on 401 ("" none) */
    const char        *same_site;          /* SameSite of the cookie ("" none) */
    bool               secure_cookie;      /* Secure flag (served over TLS) */
    bool               admin_only_all_dbs;
    bool               default_admin_only; /* databases without _security: admins only */
    const char        *allowed_hosts;      /* replication URLs: "host" or "host:port", comma-
                                              separated; "" any */
} http_auth_cfg;

/* Entry counts a request may carry (caps.c); 0 → the default. Over one → 413. */
typedef struct http_caps {
    unsigned bulk_docs;   /* _bulk_docs docs ([couchdb] max_bulk_docs_count, 10000) */
    unsigned bulk_get;    /* _bulk_get docs (max_bulk_get_count, 10000) */
    unsigned revs_diff;   /* _revs_diff ids, and revisions (max_revs_diff_count, 100000) */
    unsigned keys;        /* _all_docs keys, _changes doc_ids (max_keys_count, 100000) */
} http_caps;

typedef struct http_config {
    const char *bind_address;      /* IPv4 or IPv6 literal */
    unsigned    port;              /* 0: the kernel picks a free port */
    size_t      max_request_size;  /* bytes of one request body; over it → 413 */
    size_t      max_buffered;      /* body bytes held by all requests together; over → 503 */
    unsigned    max_connections;   /* concurrent connections; more get a quick 503 */
    unsigned    max_connections_per_address; /* from one client address; 0: no cap */
    unsigned    idle_timeout_s;    /* an idle keep-alive connection is closed after this */
    unsigned    header_timeout_s;  /* a request head must arrive within this (0: no limit) */
    unsigned    body_timeout_s;    /* a request body may pause this long (0: no limit) */
    unsigned    worker_threads;    /* threads running routes (0: by cores) */
    unsigned    event_threads;     /* libmicrohttpd epoll threads (0: one per core) */
    size_t      connection_memory; /* per-connection pool: the request head and the reply's */
    unsigned    changes_timeout_ms;/* default and cap of _changes?timeout */
    unsigned    max_json_depth;    /* nesting cap for JSON in query values and small bodies */
    http_cors   cors;
    http_auth_cfg auth;
    http_caps   caps;
    const char *tls_cert_pem;      /* PEM text of the certificate chain: serve HTTPS (NULL: HTTP) */
    const char *tls_key_pem;       /* PEM text of its private key */
    const char *js_command;        /* [query_servers] javascript; NULL/"": mimeo-js beside us */
    unsigned    js_procs;          /* [query_server_config] os_process_limit; 0: cores */
    unsigned    js_timeout_ms;     /* [couchdb] os_process_timeout; 0: 5000 */
} http_config;

typedef struct http_server http_server;

/* Starts serving env (borrowed: it must outlive the server) with cfg (copied; its strings
 * are borrowed until http_server_free). On failure returns NULL and writes why into
 * errbuf. */
http_server *http_server_start(mimeo_env *env, const http_config *cfg, char *errbuf,
                               size_t errlen);
/* The port actually bound (useful with port 0). */
unsigned http_server_port(const http_server *s);
/* First half of a clean stop: stop accepting connections and tell waiting changes feeds to
 * end. Requests in flight go on (a caller may now cancel long ones, e.g. stop the
 * replicator). Idempotent. */
void http_server_quiesce(http_server *s);
/* Clean stop (quiescing first if not done): let requests in flight finish (waiting changes feeds end
 * within a second), close every connection, and free the server. Every mimeo_db handle the
 * server opened is closed when this returns, so the caller may then mimeo_env_close. */
void http_server_free(http_server *s);

#endif
