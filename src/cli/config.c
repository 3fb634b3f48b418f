/* The one table of server options: every setting mimeo serve reads, its INI section and
 * key (CouchDB's names where CouchDB has one), its default, and its command-line flag.
 * Precedence: defaults, then the --config file, then flags. */
#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ini.h>

#include "config.h"

typedef enum { CFG_STR, CFG_UINT, CFG_SIZE, CFG_BOOL } cfg_type;

typedef struct cfg_option {
    const char *section;
    const char *name;
    cfg_type    type;
    size_t      offset;
    size_t      size;     /* CFG_STR: capacity of the char array */
    const char *def;
    const char *flag;     /* command-line flag, or NULL (then only --set section.name=v) */
    const char *help;
    uint64_t    min, max; /* CFG_UINT, CFG_SIZE: the accepted range; max 0: the type's */
} cfg_option;

#define OPT(sec, key, type, field, def, flag, help) \
    OPTR(sec, key, type, field, def, flag, help, 0, 0)
#define OPTR(sec, key, type, field, def, flag, help, lo, hi) \
    { sec, key, type, offsetof(cli_config, field), sizeof(((cli_config *)0)->field), def, \
      flag, help, lo, hi }

static const cfg_option cfg_options[] = {
    OPT("couchdb", "database_dir", CFG_STR, data_dir, "./data", "--data",
        "data directory (created if missing)"),
    OPTR("couchdb", "max_document_size", CFG_SIZE, max_document_size, "8M", NULL,
         "largest JSON body of one document", 1, 0),
    OPTR("couchdb", "max_document_id_length", CFG_SIZE, max_document_id_length, "64K", NULL,
         "longest document id accepted, in bytes", 1, 0),
    OPTR("couchdb", "max_json_depth", CFG_UINT, max_json_depth, "256", NULL,
         "deepest nesting of arrays and objects accepted in any JSON input", 1, 1u << 20),
    OPTR("couchdb", "max_bulk_docs_count", CFG_UINT, max_bulk_docs_count, "10000", NULL,
         "most documents in one _bulk_docs request (413 over it)", 1, 0),
    OPTR("couchdb", "max_bulk_get_count", CFG_UINT, max_bulk_get_count, "10000", NULL,
         "most entries in one _bulk_get request (413 over it)", 1, 0),
    OPTR("couchdb", "max_revs_diff_count", CFG_UINT, max_revs_diff_count, "100000", NULL,
         "most ids, and most revisions, in one _revs_diff request (413 over it)", 1, 0),
    OPTR("couchdb", "max_keys_count", CFG_UINT, max_keys_count, "100000", NULL,
         "most entries of _all_docs keys or _changes doc_ids (413 over it)", 1, 0),
    OPTR("couchdb", "revs_limit", CFG_UINT, revs_limit, "1000", NULL,
         "_revs_limit of new databases", 1, 0),
    OPT("query_servers", "javascript", CFG_STR, query_server, "", NULL,
        "command of the JavaScript query server (default: mimeo-js beside mimeo)"),
    OPTR("couchdb", "os_process_timeout", CFG_UINT, os_process_timeout, "5000", NULL,
         "milliseconds one query-server call may take (then it is killed)", 1, 0),
    OPT("attachments", "compressible_types", CFG_STR, att_compressible_types,
        "text/*, application/javascript, application/json, application/xml", NULL,
        "attachment types stored gzip-encoded (comma-separated; type/* for a family)"),
    OPTR("attachments", "compression_level", CFG_UINT, att_compression_level, "8", NULL,
         "zlib level of stored attachments (0: store them as they are)", 0, 9),
    OPT("couchdb", "initial_map_size", CFG_SIZE, initial_map_size, "64M", NULL,
        "LMDB map size to start with (it grows by itself)"),
    OPT("httpd", "bind_address", CFG_STR, bind_address, "127.0.0.1", "--bind",
        "address to listen on (IPv4 or IPv6)"),
    OPTR("httpd", "port", CFG_UINT, port, "5984", "--port", "port to listen on; 0 picks one",
         0, 65535),
    OPTR("httpd", "max_request_size", CFG_SIZE, max_request_size, "256M", NULL,
         "largest buffered request body (JSON); larger ones get 413 (streamed attachment "
         "bodies are not held to it)", 1, 0),
    OPTR("httpd", "max_buffered_bytes", CFG_SIZE, max_buffered, "256M", NULL,
         "request body bytes held by all connections together; more get 503", 1, 0),
    OPTR("httpd", "max_connections", CFG_UINT, max_connections, "10000", NULL,
         "concurrent connections; past it new ones get a quick 503", 1, 0),
    OPT("chttpd", "max_connections_per_address", CFG_UINT, max_connections_per_address, "0",
        NULL, "concurrent connections from one client address; past it 503 (0: no cap)"),
    OPT("chttpd", "header_timeout", CFG_UINT, header_timeout, "60", NULL,
        "seconds a client may take to send a request head (then 408; 0: no limit)"),
    OPT("chttpd", "body_timeout", CFG_UINT, body_timeout, "60", NULL,
        "seconds a request body may pause (then 408; 0: no limit)"),
    OPT("chttpd", "worker_threads", CFG_UINT, worker_threads, "0", NULL,
        "threads that run requests (0: 8 per core, at least 16)"),
    OPT("chttpd", "event_threads", CFG_UINT, event_threads, "0", NULL,
        "threads that move bytes for all connections (0: one per core, at most 8)"),
    OPTR("chttpd", "connection_memory", CFG_SIZE, connection_memory, "16K", NULL,
         "buffer of each connection, zeroed after every request: a request head must fit in "
         "it (16K: URLs up to ~15 KB, longer get 414; 160K for 64 KiB ids in URLs)",
         8192, 1u << 30),
    OPT("httpd", "idle_timeout", CFG_UINT, idle_timeout, "300", NULL,
        "seconds before an idle keep-alive connection is closed"),
    OPT("httpd", "changes_timeout", CFG_UINT, changes_timeout, "60000", NULL,
        "default and largest _changes timeout, in milliseconds"),
    OPT("query_server_config", "os_process_limit", CFG_UINT, js_procs, "0", NULL,
        "query server processes at most (0: one per core)"),
    OPT("cors", "enable", CFG_BOOL, cors_enable, "false", NULL,
        "answer CORS requests (browsers running PouchDB on another origin)"),
    OPT("cors", "origins", CFG_STR, cors_origins, "", NULL,
        "allowed origins: a comma-separated list, or * (then never with credentials)"),
    OPT("cors", "credentials", CFG_BOOL, cors_credentials, "false", NULL,
        "allow credentials (cookies, Authorization) for the listed origins"),
    OPT("cors", "methods", CFG_STR, cors_methods, "GET, PUT, POST, HEAD, DELETE", NULL,
        "methods allowed in preflight replies"),
    OPT("cors", "headers", CFG_STR, cors_headers,
        "accept, authorization, content-type, origin, referer, cache-control, "
        "x-requested-with, if-match, if-none-match, x-couch-full-commit", NULL,
        "request headers allowed in preflight replies"),
    OPT("cors", "max_age", CFG_UINT, cors_max_age, "600", NULL,
        "seconds a browser may cache a preflight reply"),
    OPTR("replicator", "max_response_size", CFG_SIZE, repl_max_response_size, "64M", NULL,
         "largest reply read from a peer (a batch over it is fetched doc by doc)", 1024, 0),
    OPT("replicator", "cafile", CFG_STR, repl_cafile, "", NULL,
        "PEM file of CAs trusted for peers' TLS certificates (empty: the system store)"),
    OPTR("replicator", "max_jobs", CFG_UINT, repl_max_jobs, "500", NULL,
         "replication jobs running at once; more wait as pending", 1, 100000),
    OPTR("replicator", "interval", CFG_UINT, repl_interval, "60000", NULL,
         "ms between turns of pending jobs with running ones (at most max_churn = 20)",
         100, 0),
    /* accounts and sessions; server admins go in [admins] as name = password (hashed on
     * start) */
    OPT("chttpd", "require_valid_user", CFG_BOOL, require_valid_user, "false", NULL,
        "answer 401 to every anonymous request (but /_session and /_up)"),
    OPT("chttpd", "admin_only_all_dbs", CFG_BOOL, admin_only_all_dbs, "true", NULL,
        "only server admins may list databases"),
    OPT("couchdb", "default_security", CFG_STR, default_security, "admin_only", NULL,
        "databases without a _security object: admin_only or everyone"),
    OPT("chttpd_auth", "timeout", CFG_UINT, auth_timeout, "600", NULL,
        "seconds a session cookie lives (renewed past half of it)"),
    OPT("chttpd_auth", "iterations", CFG_UINT, auth_iterations, "600000", NULL,
        "PBKDF2-SHA256 iterations of new password hashes"),
    OPT("chttpd_auth", "max_concurrent_hashes", CFG_UINT, auth_max_hashes, "0", NULL,
        "password hashes (PBKDF2) computed at once; more wait, then get 503 (0: one per core)"),
    OPT("chttpd_auth", "hash_wait_ms", CFG_UINT, auth_hash_wait_ms, "1000", NULL,
        "how long a password check waits for a free hash slot before 503"),
    OPT("chttpd_auth", "secret", CFG_STR, auth_secret, "", NULL,
        "hex key of session cookies (default: DATA/.auth_secret, made once)"),
    OPT("chttpd_auth", "same_site", CFG_STR, auth_same_site, "", NULL,
        "SameSite attribute of the session cookie (Strict, Lax, None; empty: none)"),
    OPT("httpd", "WWW-Authenticate", CFG_STR, www_authenticate, "", NULL,
        "challenge sent with 401 replies, e.g. Basic realm=\"mimeo\" (default: none)"),
    OPT("replicator", "allowed_hosts", CFG_STR, allowed_hosts, "", NULL,
        "hosts replication URLs may name (host or host:port, comma-separated; empty: any)"),
    OPT("httpd", "enable", CFG_BOOL, http_enable, "true", NULL,
        "serve plain HTTP on [httpd] port (false with TLS: HTTPS only)"),
    OPT("ssl", "cert_file", CFG_STR, tls_cert, "", "--tls-cert",
        "PEM certificate (chain): serve HTTPS on [ssl] port"),
    OPT("ssl", "key_file", CFG_STR, tls_key, "", "--tls-key", "PEM private key of the certificate"),
    OPT("ssl", "port", CFG_UINT, tls_port, "6984", "--tls-port", "HTTPS port; 0 picks one"),
    OPT("chttpd_auth", "admin_password_file", CFG_STR, admin_file, "", "--admin-file",
        "with no admin configured: the admin's name:password (read, or made with a random "
        "password, mode 0600)"),
    /* ---- [mesh] (docs/mesh.md) ---- */
    OPT("mesh", "join", CFG_STR, mesh.join, "", "--join",
        "comma-separated URLs of mesh members to join through"),
    OPT("mesh", "name", CFG_STR, mesh.name, "", "--node-name",
        "this node's unique name in the mesh (default: advertised host:port)"),
    OPT("mesh", "advertise", CFG_STR, mesh.advertise, "", "--advertise",
        "URL other nodes reach this one at (default: http://bind:port)"),
    OPT("mesh", "secret_file", CFG_STR, mesh.secret_file, "", "--mesh-secret-file",
        "file holding the shared mesh secret (required: no default)"),
    OPT("mesh", "databases", CFG_STR, mesh.databases, "*", NULL,
        "meshed databases: * (all but _system ones) or a comma-separated list"),
    OPT("mesh", "fanout", CFG_UINT, mesh.fanout, "3", NULL, "members each gossip round goes to"),
    OPT("mesh", "probe_interval_ms", CFG_UINT, mesh.probe_interval_ms, "1000", NULL,
        "one failure-detection probe per this period"),
    OPT("mesh", "probe_timeout_ms", CFG_UINT, mesh.probe_timeout_ms, "500", NULL,
        "direct probe deadline before indirect probes"),
    OPT("mesh", "indirect_checks", CFG_UINT, mesh.indirect_checks, "3", NULL,
        "members asked to probe indirectly"),
    OPT("mesh", "gossip_interval_ms", CFG_UINT, mesh.gossip_interval_ms, "200", NULL,
        "period of gossip rounds"),
    OPT("mesh", "pushpull_interval_ms", CFG_UINT, mesh.pushpull_interval_ms, "30000", NULL,
        "period of full-state exchanges with a random member"),
    OPT("mesh", "suspicion_mult", CFG_UINT, mesh.suspicion_mult, "4", NULL,
        "suspicion timeout = this x log10(N) x probe interval (at least)"),
    OPT("mesh", "retransmit_mult", CFG_UINT, mesh.retransmit_mult, "4", NULL,
        "each update is gossiped this x log10(N+1) times"),
    OPT("mesh", "reap_dead_ms", CFG_UINT, mesh.reap_dead_ms, "86400000", NULL,
        "a member dead this long is forgotten (0: never)"),
    OPT("mesh", "reap_left_ms", CFG_UINT, mesh.reap_left_ms, "86400000", NULL,
        "a member that left this long ago is forgotten (0: never)"),
    OPTR("mesh", "anti_entropy_interval_ms", CFG_UINT, mesh.anti_entropy_interval_ms, "10000",
         NULL, "period of the push-pull data round with one random peer", 100, 86400000),
    OPT("mesh", "eager_push", CFG_BOOL, mesh.eager_push, "true", NULL,
        "push every write at once to fanout peers (false: anti-entropy only)"),
    OPTR("mesh", "replication_workers", CFG_UINT, mesh.replication_workers, "4", NULL,
         "replications running at once, node-wide", 1, 64),
    OPTR("mesh", "replication_batch", CFG_UINT, mesh.replication_batch, "500", NULL,
         "changes per replication request to a peer", 1, 100000),
    OPTR("mesh", "replication_timeout_ms", CFG_UINT, mesh.replication_timeout_ms, "10000", NULL,
         "deadline of one request to a peer", 100, 600000),
};
#define CFG_N (sizeof cfg_options / sizeof cfg_options[0])

static const cfg_option *cfg_find(const char *section, const char *name) {
    for (size_t i = 0; i < CFG_N; i++)
        if (strcasecmp(cfg_options[i].section, section) == 0 &&
            strcasecmp(cfg_options[i].name, name) == 0)
            return &cfg_options[i];
    return NULL;
}

/* Parses "123", "64K", "8M", "1G" (powers of 1024): digits first (strtoull alone would take
 * " 5", "+5" and "-5"), nothing after the unit. */
static bool cfg_parse_size(const char *v, uint64_t *out) {
    errno = 0;
    char *end;
    if (*v < '0' || *v > '9') return false;
    unsigned long long x = strtoull(v, &end, 10);
    if (errno || end == v) return false;
    unsigned shift = 0;
    if (*end == 'k' || *end == 'K') shift = 10;
    else if (*end == 'm' || *end == 'M') shift = 20;
    else if (*end == 'g' || *end == 'G') shift = 30;
    if (shift) end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end != '\0') return false;
    if (shift && x > (UINT64_MAX >> shift)) return false;
    *out = (uint64_t)x << shift;
    return true;
}

static bool cfg_in_range(const cfg_option *o, uint64_t v, uint64_t type_max, char *err,
                         size_t errlen) {
    uint64_t hi = o->max && o->max < type_max ? o->max : type_max;
    if (v >= o->min && v <= hi) return true;
    snprintf(err, errlen, "[%s] %s: %llu is out of range (%llu to %llu)", o->section, o->name,
             (unsigned long long)v, (unsigned long long)o->min, (unsigned long long)hi);
    return false;
}

static int cfg_apply(cli_config *c, const cfg_option *o, const char *value, char *err,
                     size_t errlen) {
    char *field = (char *)c + o->offset;
    uint64_t v;
    switch (o->type) {
    case CFG_STR:
        if (strlen(value) >= o->size) {
            snprintf(err, errlen, "[%s] %s: value too long", o->section, o->name);
            return -1;
        }
        memcpy(field, value, strlen(value) + 1);
        return 0;
    case CFG_UINT:
        if (!cfg_parse_size(value, &v) || strpbrk(value, "kKmMgGbB")) {
            snprintf(err, errlen, "[%s] %s: '%s' is not a non-negative integer", o->section,
                     o->name, value);
            return -1;
        }
        if (!cfg_in_range(o, v, UINT_MAX, err, errlen)) return -1;
        *(unsigned *)field = (unsigned)v;
        return 0;
    case CFG_SIZE:
        if (!cfg_parse_size(value, &v)) {
            snprintf(err, errlen, "[%s] %s: '%s' is not a size (like 4096, 64K, 8M, 1G)",
                     o->section, o->name, value);
            return -1;
        }
        if (!cfg_in_range(o, v, SIZE_MAX, err, errlen)) return -1;
        *(size_t *)field = (size_t)v;
        return 0;
    case CFG_BOOL:
        if (strcasecmp(value, "true") == 0 || strcmp(value, "1") == 0 ||
            strcasecmp(value, "yes") == 0 || strcasecmp(value, "on") == 0) {
            *(bool *)field = true;
        } else if (strcasecmp(value, "false") == 0 || strcmp(value, "0") == 0 ||
                   strcasecmp(value, "no") == 0 || strcasecmp(value, "off") == 0) {
            *(bool *)field = false;
        } else {
            snprintf(err, errlen, "[%s] %s: '%s' is not true or false", o->section, o->name,
                     value);
            return -1;
        }
        return 0;
    }
    return -1;
}

void config_defaults(cli_config *c) {
    char err[128];
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < CFG_N; i++) cfg_apply(c, &cfg_options[i], cfg_options[i].def, err,
                                                 sizeof err);
}

/* [admins] name = value: names are free, so the section is not in the table. */
static int cfg_admin_set(cli_config *c, const char *name, const char *value, char *err,
                         size_t errlen) {
    size_t i;
    for (i = 0; i < c->nadmins; i++)
        if (strcmp(c->admin_names[i], name) == 0) break;
    if (i == c->nadmins && c->nadmins == CFG_MAX_ADMINS) {
        snprintf(err, errlen, "[admins]: more than %d admins", CFG_MAX_ADMINS);
        return -1;
    }
    if (strlen(name) == 0 || strlen(name) >= sizeof c->admin_names[0] || strchr(name, ':') ||
        name[0] == '_') {
        snprintf(err, errlen, "[admins] '%s': not a valid name", name);
        return -1;
    }
    if (strlen(value) == 0 || strlen(value) >= sizeof c->admin_values[0]) {
        snprintf(err, errlen, "[admins] %s: empty or too long", name);
        return -1;
    }
    snprintf(c->admin_names[i], sizeof c->admin_names[i], "%s", name);
    snprintf(c->admin_values[i], sizeof c->admin_values[i], "%s", value);
    c->admin_name_ptrs[i] = c->admin_names[i];   /* views for config_to_http */
    c->admin_value_ptrs[i] = c->admin_values[i];
    if (i == c->nadmins) c->nadmins++;
    return 0;
}

int config_set(cli_config *c, const char *section, const char *name, const char *value,
               char *err, size_t errlen) {
    if (strcasecmp(section, "admins") == 0) return cfg_admin_set(c, name, value, err, errlen);
    const cfg_option *o = cfg_find(section, name);
    if (!o) {
        snprintf(err, errlen, "unknown option [%s] %s", section, name);
        return -1;
    }
    return cfg_apply(c, o, value, err, errlen);
}

typedef struct cfg_load {
    cli_config *c;
    const char *path;
    char       *err;
    size_t      errlen;
    bool        failed;
} cfg_load;

static int cfg_ini_handler(void *user, const char *section, const char *name,
                           const char *value) {
    cfg_load *l = user;
    if (!cfg_find(section, name) && strcasecmp(section, "admins") != 0) {
        fprintf(stderr, "mimeo: %s: ignoring unknown option [%s] %s\n", l->path, section, name);
        return 1;
    }
    if (config_set(l->c, section, name, value, l->err, l->errlen) != 0) {
        l->failed = true;
        return 0;
    }
    return 1;
}

/* The outcome of ini_parse or ini_parse_string into 0 or -1 with err. */
static int cfg_load_result(const cfg_load *l, int rc) {
    const char *path = l->path;
    char *err = l->err;
    size_t errlen = l->errlen;
    if (rc == -1) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (rc == -2) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    if (l->failed) {
        char tmp[256];
        snprintf(tmp, sizeof tmp, "%s", err);
        snprintf(err, errlen, "%s: %s", path, tmp);
        return -1;
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: syntax error on line %d", path, rc);
        return -1;
    }
    return 0;
}

int config_load_file(cli_config *c, const char *path, char *err, size_t errlen) {
    cfg_load l = { c, path, err, errlen, false };
    snprintf(c->config_path, sizeof c->config_path, "%s", path);
    return cfg_load_result(&l, ini_parse(path, cfg_ini_handler, &l));
}

int config_load_string(cli_config *c, const char *text, const char *name, char *err,
                       size_t errlen) {
    cfg_load l = { c, name, err, errlen, false };
    return cfg_load_result(&l, ini_parse_string(text, cfg_ini_handler, &l));
}

bool config_parse_number(const char *text, uint64_t min, uint64_t max, bool units,
                         uint64_t *out) {
    uint64_t v;
    if (!cfg_parse_size(text, &v)) return false;
    if (!units && strpbrk(text, "kKmMgGbB")) return false;
    if (v < min || v > max) return false;
    *out = v;
    return true;
}

bool config_flag(const char *flag, const char **section, const char **name) {
    for (size_t i = 0; i < CFG_N; i++) {
        if (cfg_options[i].flag && strcmp(cfg_options[i].flag, flag) == 0) {
            *section = cfg_options[i].section;
            *name = cfg_options[i].name;
            return true;
        }
    }
    return false;
}

void config_print(FILE *out) {
    const char *sec = "";
    for (size_t i = 0; i < CFG_N; i++) {
        const cfg_option *o = &cfg_options[i];
        if (strcmp(sec, o->section) != 0) {
            fprintf(out, "  [%s]\n", o->section);
            sec = o->section;
        }
        fprintf(out, "    %-18s %s (default: %s)%s%s\n", o->name, o->help, o->def,
                o->flag ? "; flag " : "", o->flag ? o->flag : "");
    }
}

void config_to_options(const cli_config *c, mimeo_options *o) {
    memset(o, 0, sizeof *o);
    o->revs_limit = c->revs_limit;
    o->max_document_size = c->max_document_size;
    o->max_json_depth = c->max_json_depth;
    o->initial_map_size = c->initial_map_size;
    o->max_document_id_length = c->max_document_id_length;
    o->query_server = c->query_server[0] ? c->query_server : NULL;
    o->os_process_timeout = c->os_process_timeout;
    o->att_compressible_types = c->att_compressible_types;
    o->att_compression_level = c->att_compression_level ? (int)c->att_compression_level : -1;
}

void config_to_replicator(const cli_config *c, mimeo_replicator_options *r) {
    memset(r, 0, sizeof *r);
    r->max_response_size = c->repl_max_response_size;
    r->cafile = c->repl_cafile[0] ? c->repl_cafile : NULL;
    r->max_jobs = c->repl_max_jobs;
    r->interval_ms = c->repl_interval;
    r->allowed_hosts = c->allowed_hosts;
}

void config_to_http(const cli_config *c, http_config *h) {
    memset(h, 0, sizeof *h);
    h->bind_address = c->bind_address;
    h->port = c->port;
    h->max_request_size = c->max_request_size;
    h->max_buffered = c->max_buffered;
    h->max_connections = c->max_connections;
    h->idle_timeout_s = c->idle_timeout;
    h->max_connections_per_address = c->max_connections_per_address;
    h->header_timeout_s = c->header_timeout;
    h->body_timeout_s = c->body_timeout;
    h->worker_threads = c->worker_threads;
    h->event_threads = c->event_threads;
    h->connection_memory = c->connection_memory;
    h->changes_timeout_ms = c->changes_timeout;
    h->js_command = c->query_server;
    h->js_procs = c->js_procs;
    h->js_timeout_ms = c->os_process_timeout;
    h->max_json_depth = c->max_json_depth;
    h->caps.bulk_docs = c->max_bulk_docs_count;
    h->caps.bulk_get = c->max_bulk_get_count;
    h->caps.revs_diff = c->max_revs_diff_count;
    h->caps.keys = c->max_keys_count;
    h->cors.enabled = c->cors_enable;
    h->cors.origins = c->cors_origins;
    h->cors.credentials = c->cors_credentials;
    h->cors.methods = c->cors_methods;
    h->cors.headers = c->cors_headers;
    h->cors.max_age = c->cors_max_age;
    h->auth.open = c->nadmins == 0;
    h->auth.admin_names = c->admin_name_ptrs;
    h->auth.admin_hashes = c->admin_value_ptrs;
    h->auth.nadmins = c->nadmins;
    h->auth.secret = c->auth_secret;
    h->auth.timeout_s = c->auth_timeout ? c->auth_timeout : 600;
    h->auth.iterations = c->auth_iterations;
    h->auth.max_hashes = c->auth_max_hashes;
    h->auth.hash_wait_ms = c->auth_hash_wait_ms;
    h->auth.require_valid_user = c->require_valid_user;
    h->auth.www_authenticate = c->www_authenticate;
    h->auth.same_site = c->auth_same_site;
    h->auth.admin_only_all_dbs = c->admin_only_all_dbs;
    h->auth.default_admin_only = strcmp(c->default_security, "everyone") != 0;
    h->auth.allowed_hosts = c->allowed_hosts;
}

/* ---- server admins, the cookie secret, protected mode ------------------------------------- */
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../auth/auth.h"

/* Rewrites path with the [admins] lines of hashed names carrying their hashes. */
static int cfg_rewrite_admins(const cli_config *c, const bool *hashed, const char *path,
                              char *err, size_t errlen) {
    FILE *in = fopen(path, "r");
    if (!in) {
        snprintf(err, errlen, "%s: cannot reopen to hash [admins]: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    fstat(fileno(in), &st);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    FILE *out = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!out) {
        if (fd >= 0) close(fd);
        fclose(in);
        snprintf(err, errlen, "%s: cannot write beside it to hash [admins]: %s", path,
                 strerror(errno));
        return -1;
    }
    fchmod(fd, st.st_mode & 07777);
    char line[8192];
    bool in_admins = false;
    while (fgets(line, sizeof line, in)) {
        const char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == '[') {
            const char *e = strchr(p, ']');
            in_admins = e && (size_t)(e - p - 1) == 6 && strncasecmp(p + 1, "admins", 6) == 0;
        } else if (in_admins && *p != ';' && *p != '#') {
            const char *eq = strpbrk(p, "=:");
            if (eq) {
                const char *ne = eq;
                while (ne > p && (ne[-1] == ' ' || ne[-1] == '\t')) ne--;
                for (size_t i = 0; i < c->nadmins; i++) {
                    if (!hashed[i] || strlen(c->admin_names[i]) != (size_t)(ne - p) ||
                        strncmp(c->admin_names[i], p, (size_t)(ne - p)) != 0)
                        continue;
                    snprintf(line, sizeof line, "%s = %s\n", c->admin_names[i],
                             c->admin_values[i]);
                    break;
                }
            }
        }
        fputs(line, out);
    }
    fclose(in);
    bool ok = fflush(out) == 0 && fsync(fd) == 0;
    ok = fclose(out) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        snprintf(err, errlen, "%s: cannot replace it to hash [admins]: %s", path,
                 strerror(errno));
        return -1;
    }
    return 0;
}

int config_admins_hash(cli_config *c, char *err, size_t errlen) {
    bool hashed[CFG_MAX_ADMINS] = { false };
    bool any = false;
    for (size_t i = 0; i < c->nadmins; i++) {
        if (auth_pw_is_hashed(c->admin_values[i])) continue;
        auth_pw h;
        auth_pw_new(c->admin_values[i], strlen(c->admin_values[i]), c->auth_iterations, &h);
        memset(c->admin_values[i], 0, sizeof c->admin_values[i]);
        auth_pw_format_config(&h, c->admin_values[i], sizeof c->admin_values[i]);
        hashed[i] = any = true;
    }
    if (!any || !c->config_path[0]) return 0;
    return cfg_rewrite_admins(c, hashed, c->config_path, err, errlen);
}

int config_admin_file(cli_config *c, bool *created, char *err, size_t errlen) {
    *created = false;
    if (c->nadmins > 0 || !c->admin_file[0]) return 0;
    char line[512] = "";
    FILE *f = fopen(c->admin_file, "r");
    if (!f && errno == ENOENT) {
        unsigned char raw[18];
        char pw[37];
        random_bytes(raw, sizeof raw);
        hex_encode(raw, sizeof raw, pw);
        int fd = open(c->admin_file, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0) {
            snprintf(err, errlen, "%s: cannot create: %s", c->admin_file, strerror(errno));
            return -1;
        }
        snprintf(line, sizeof line, "admin:%s\n", pw);
        bool ok = write(fd, line, strlen(line)) == (ssize_t)strlen(line) && fsync(fd) == 0;
        close(fd);
        if (!ok) {
            snprintf(err, errlen, "%s: cannot write: %s", c->admin_file, strerror(errno));
            return -1;
        }
        *created = true;
    } else if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", c->admin_file, strerror(errno));
        return -1;
    } else {
        if (!fgets(line, sizeof line, f)) line[0] = '\0';
        fclose(f);
    }
    line[strcspn(line, "\r\n")] = '\0';
    char *colon = strchr(line, ':');
    if (!colon || colon == line || !colon[1]) {
        snprintf(err, errlen, "%s: expected one line name:password", c->admin_file);
        return -1;
    }
    *colon = '\0';
    if (cfg_admin_set(c, line, colon + 1, err, errlen) != 0) return -1;
    memset(line, 0, sizeof line);
    return 0;
}

int config_secret(cli_config *c, const char *dir, char *err, size_t errlen) {
    if (c->auth_secret[0]) return 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/.auth_secret", dir);
    FILE *f = fopen(path, "r");
    if (f) {
        char line[200] = "";
        if (!fgets(line, sizeof line, f)) line[0] = '\0';
        fclose(f);
        line[strcspn(line, "\r\n")] = '\0';
        if (strlen(line) == 64) {
            memcpy(c->auth_secret, line, 65);
            return 0;
        }
    }
    unsigned char raw[32];
    random_bytes(raw, sizeof raw);
    hex_encode(raw, sizeof raw, c->auth_secret);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(errno));
        return -1;
    }
    char line[80];
    memcpy(line, c->auth_secret, 64);
    memcpy(line + 64, "\n", 2);
    bool ok = write(fd, line, strlen(line)) == (ssize_t)strlen(line);
    close(fd);
    if (!ok) {
        snprintf(err, errlen, "%s: cannot write", path);
        return -1;
    }
    return 0;
}

bool config_bind_is_loopback(const char *addr) {
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, addr, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, addr, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
    return false;
}
