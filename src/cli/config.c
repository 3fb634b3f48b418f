/* The one table of server options: every setting mimeo serve reads, its INI section and
 * key (CouchDB's names where CouchDB has one), its default, and its command-line flag.
 * Precedence: defaults, then the --config file, then flags. */
#include <errno.h>
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
} cfg_option;

#define OPT(sec, key, type, field, def, flag, help) \
    { sec, key, type, offsetof(cli_config, field), sizeof(((cli_config *)0)->field), def, \
      flag, help }

static const cfg_option cfg_options[] = {
    OPT("couchdb", "database_dir", CFG_STR, data_dir, "./data", "--data",
        "data directory (created if missing)"),
    OPT("couchdb", "max_document_size", CFG_SIZE, max_document_size, "8M", NULL,
        "largest JSON body of one document"),
    OPT("couchdb", "max_json_depth", CFG_UINT, max_json_depth, "256", NULL,
        "deepest nesting of arrays and objects accepted in any JSON input"),
    OPT("couchdb", "revs_limit", CFG_UINT, revs_limit, "1000", NULL,
        "_revs_limit of new databases"),
    OPT("couchdb", "initial_map_size", CFG_SIZE, initial_map_size, "64M", NULL,
        "LMDB map size to start with (it grows by itself)"),
    OPT("httpd", "bind_address", CFG_STR, bind_address, "127.0.0.1", "--bind",
        "address to listen on (IPv4 or IPv6)"),
    OPT("httpd", "port", CFG_UINT, port, "5984", "--port", "port to listen on; 0 picks one"),
    OPT("httpd", "max_request_size", CFG_SIZE, max_request_size, "64M", NULL,
        "largest request body; larger ones get 413"),
    OPT("httpd", "max_connections", CFG_UINT, max_connections, "512", NULL,
        "concurrent connections (one thread each)"),
    OPT("httpd", "idle_timeout", CFG_UINT, idle_timeout, "300", NULL,
        "seconds before an idle keep-alive connection is closed"),
    OPT("httpd", "changes_timeout", CFG_UINT, changes_timeout, "60000", NULL,
        "default and largest _changes timeout, in milliseconds"),
    OPT("cors", "enable", CFG_BOOL, cors_enable, "true", NULL,
        "answer CORS requests (browsers running PouchDB)"),
    OPT("cors", "origins", CFG_STR, cors_origins, "*", NULL,
        "allowed origins: * or a comma-separated list"),
    OPT("cors", "credentials", CFG_BOOL, cors_credentials, "true", NULL,
        "allow credentials (cookies, Authorization)"),
    OPT("cors", "methods", CFG_STR, cors_methods, "GET, PUT, POST, HEAD, DELETE", NULL,
        "methods allowed in preflight replies"),
    OPT("cors", "headers", CFG_STR, cors_headers,
        "accept, authorization, content-type, origin, referer, cache-control, "
        "x-requested-with, if-match, if-none-match, x-couch-full-commit", NULL,
        "request headers allowed in preflight replies"),
    OPT("cors", "max_age", CFG_UINT, cors_max_age, "600", NULL,
        "seconds a browser may cache a preflight reply"),
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
};
#define CFG_N (sizeof cfg_options / sizeof cfg_options[0])

static const cfg_option *cfg_find(const char *section, const char *name)
{
    for (size_t i = 0; i < CFG_N; i++)
        if (strcasecmp(cfg_options[i].section, section) == 0 &&
            strcasecmp(cfg_options[i].name, name) == 0)
            return &cfg_options[i];
    return NULL;
}

/* Parses "123", "64K", "8M", "1G" (powers of 1024). */
static bool cfg_parse_size(const char *v, uint64_t *out)
{
    errno = 0;
    char *end;
    if (*v == '-' || *v == '\0') return false;
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

static int cfg_apply(cli_config *c, const cfg_option *o, const char *value, char *err,
                     size_t errlen)
{
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
        if (!cfg_parse_size(value, &v) || v > UINT32_MAX || strpbrk(value, "kKmMgGbB")) {
            snprintf(err, errlen, "[%s] %s: '%s' is not a non-negative integer", o->section,
                     o->name, value);
            return -1;
        }
        *(unsigned *)field = (unsigned)v;
        return 0;
    case CFG_SIZE:
        if (!cfg_parse_size(value, &v) || v > SIZE_MAX) {
            snprintf(err, errlen, "[%s] %s: '%s' is not a size (like 4096, 64K, 8M, 1G)",
                     o->section, o->name, value);
            return -1;
        }
        *(size_t *)field = (size_t)v;
        return 0;
    case CFG_BOOL:
        if (strcasecmp(value, "true") == 0 || strcmp(value, "1") == 0 ||
            strcasecmp(value, "yes") == 0 || strcasecmp(value, "on") == 0)
            *(bool *)field = true;
        else if (strcasecmp(value, "false") == 0 || strcmp(value, "0") == 0 ||
                 strcasecmp(value, "no") == 0 || strcasecmp(value, "off") == 0)
            *(bool *)field = false;
        else {
            snprintf(err, errlen, "[%s] %s: '%s' is not true or false", o->section, o->name,
                     value);
            return -1;
        }
        return 0;
    }
    return -1;
}

void config_defaults(cli_config *c)
{
    char err[128];
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < CFG_N; i++) cfg_apply(c, &cfg_options[i], cfg_options[i].def, err,
                                                 sizeof err);
}

int config_set(cli_config *c, const char *section, const char *name, const char *value,
               char *err, size_t errlen)
{
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
                           const char *value)
{
    cfg_load *l = user;
    if (!cfg_find(section, name)) {
        fprintf(stderr, "mimeo: %s: ignoring unknown option [%s] %s\n", l->path, section, name);
        return 1;
    }
    if (config_set(l->c, section, name, value, l->err, l->errlen) != 0) {
        l->failed = true;
        return 0;
    }
    return 1;
}

int config_load_file(cli_config *c, const char *path, char *err, size_t errlen)
{
    cfg_load l = { c, path, err, errlen, false };
    int rc = ini_parse(path, cfg_ini_handler, &l);
    if (rc == -1) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (l.failed) {
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

bool config_flag(const char *flag, const char **section, const char **name)
{
    for (size_t i = 0; i < CFG_N; i++) {
        if (cfg_options[i].flag && strcmp(cfg_options[i].flag, flag) == 0) {
            *section = cfg_options[i].section;
            *name = cfg_options[i].name;
            return true;
        }
    }
    return false;
}

void config_print(FILE *out)
{
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

void config_to_options(const cli_config *c, mimeo_options *o)
{
    memset(o, 0, sizeof *o);
    o->revs_limit = c->revs_limit;
    o->max_document_size = c->max_document_size;
    o->max_json_depth = c->max_json_depth;
    o->initial_map_size = c->initial_map_size;
}

void config_to_http(const cli_config *c, http_config *h)
{
    memset(h, 0, sizeof *h);
    h->bind_address = c->bind_address;
    h->port = c->port;
    h->max_request_size = c->max_request_size;
    h->max_connections = c->max_connections;
    h->idle_timeout_s = c->idle_timeout;
    h->changes_timeout_ms = c->changes_timeout;
    h->max_json_depth = c->max_json_depth;
    h->cors.enabled = c->cors_enable;
    h->cors.origins = c->cors_origins;
    h->cors.credentials = c->cors_credentials;
    h->cors.methods = c->cors_methods;
    h->cors.headers = c->cors_headers;
    h->cors.max_age = c->cors_max_age;
}
