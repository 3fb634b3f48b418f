/* mimeo mesh status [URL]: an operator's view of a running mesh node. GETs URL/_mesh (an
 * admin-only endpoint) and prints its members, its database registry and, when the node
 * reports them, its per-database and per-peer sync figures as aligned tables. The URL
 * defaults to the node the configuration describes; credentials come from the URL's userinfo,
 * else from the admin password file (--admin-file or [chttpd_auth] admin_password_file). */
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "mimeo.h"
#include "cli.h"
#include "config.h"
#include "../common/buf.h"
#include "../json/json.h"

/* Exit codes beyond cli.h's 0/1/2, so scripts can tell why a status failed. */
enum { MESH_EXIT_UNAUTHORIZED = 3, MESH_EXIT_NOT_MESHED = 4 };

static void mesh_usage(FILE *out) {
    fprintf(out,
            "usage: mimeo mesh status [URL] [--config FILE] [--admin-file FILE] [--json]\n\n"
            "Prints the members of the mesh as node URL sees them (default: the node of\n"
            "--config, else http://127.0.0.1:5984), its meshed databases and, when the node\n"
            "reports them, per-database and per-peer sync figures. Credentials: the URL's\n"
            "user:password@, else the admin file's name:password line. --json prints the reply\n"
            "as it came.\n"
            "Exit status: 0 done, 1 unreachable or a bad reply, 2 usage, 3 not authorised,\n"
            "4 the node is not part of a mesh.\n");
}

/* ---- fetching ------------------------------------------------------------------------------ */

static size_t mesh_write_cb(char *p, size_t size, size_t n, void *cls) {
    buf *b = cls;
    return buf_put(b, p, size * n) == 0 ? size * n : 0;
}

/* The URL without its userinfo, for messages (a password never reaches the terminal). */
static void mesh_display_url(const char *url, char *out, size_t outlen) {
    const char *scheme = strstr(url, "://");
    const char *host = scheme ? scheme + 3 : url;
    const char *slash = strchr(host, '/');
    const char *at = strchr(host, '@');
    if (at && (!slash || at < slash)) {
        snprintf(out, outlen, "%.*s%s", (int)(host - url), url, at + 1);
    } else {
        snprintf(out, outlen, "%s", url);
    }
}

/* Reads "name:password" (the first line) of an admin file into user and pass. */
static int mesh_admin_file(const char *path, char *user, size_t ulen, char *pass, size_t plen) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "mimeo mesh: %s: cannot read the admin password file\n", path);
        return -1;
    }
    char line[512] = "";
    if (!fgets(line, sizeof line, f)) line[0] = '\0';
    fclose(f);
    line[strcspn(line, "\r\n")] = '\0';
    char *colon = strchr(line, ':');
    if (!colon || colon == line || !colon[1]) {
        fprintf(stderr, "mimeo mesh: %s: expected one line name:password\n", path);
        return -1;
    }
    *colon = '\0';
    snprintf(user, ulen, "%s", line);
    snprintf(pass, plen, "%s", colon + 1);
    memset(line, 0, sizeof line);
    return 0;
}

/* GET url with optional credentials; *status and body filled. 0, or -1 after printing why. */
static int mesh_fetch(const char *url, const char *user, const char *pass, long *status,
                      buf *body) {
    CURL *c = curl_easy_init();
    if (!c) {
        fprintf(stderr, "mimeo mesh: cannot start the HTTP client\n");
        return -1;
    }
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, mesh_write_cb);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
    struct curl_slist *h = curl_slist_append(NULL, "Accept: application/json");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (user && user[0]) {
        curl_easy_setopt(c, CURLOPT_USERNAME, user);
        curl_easy_setopt(c, CURLOPT_PASSWORD, pass);
    }
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        char shown[1024];
        mesh_display_url(url, shown, sizeof shown);
        fprintf(stderr, "mimeo mesh: cannot reach %s: %s\n", shown,
                errbuf[0] ? errbuf : curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

/* ---- tables -------------------------------------------------------------------------------- */

#define MESH_MAX_COLS 16

/* A table being built: a header and rows of owned cell strings, printed with each column as
 * wide as its widest cell. */
typedef struct mesh_table {
    size_t ncols;
    char  *head[MESH_MAX_COLS];
    char **cells;          /* nrows × ncols */
    size_t nrows, cap;
} mesh_table;

static void mesh_table_free(mesh_table *t) {
    for (size_t i = 0; i < t->ncols; i++) free(t->head[i]);
    for (size_t i = 0; i < t->nrows * t->ncols; i++) free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

/* Column index of name, added when new (upper-cased for the header); -1 when full. */
static int mesh_table_col(mesh_table *t, const char *name) {
    /* A wall-clock time shown as an age: its header loses the unit. */
    if (strcmp(name, "last_sync_ms") == 0) name = "last_sync";
    char up[64];
    size_t n = 0;
    for (; name[n] && n + 1 < sizeof up; n++)
        up[n] = name[n] == '_' ? ' ' : (char)(name[n] >= 'a' && name[n] <= 'z'
                                                   ? name[n] - 'a' + 'A' : name[n]);
    up[n] = '\0';
    for (size_t i = 0; i < t->ncols; i++)
        if (strcmp(t->head[i], up) == 0) return (int)i;
    if (t->ncols == MESH_MAX_COLS || t->nrows > 0) return -1;
    t->head[t->ncols] = strdup(up);
    return t->head[t->ncols] ? (int)t->ncols++ : -1;
}

/* Adds an empty row; its cells are set with mesh_table_set. */
static int mesh_table_row(mesh_table *t) {
    if (t->nrows == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        char **c = realloc(t->cells, cap * MESH_MAX_COLS * sizeof *c);
        if (!c) return -1;
        t->cells = c;
        t->cap = cap;
    }
    for (size_t i = 0; i < t->ncols; i++) t->cells[t->nrows * t->ncols + i] = NULL;
    t->nrows++;
    return 0;
}

static void mesh_table_set(mesh_table *t, int col, const char *text) {
    if (col < 0 || t->nrows == 0) return;
    char **cell = &t->cells[(t->nrows - 1) * t->ncols + (size_t)col];
    free(*cell);
    *cell = strdup(text);
}

static void mesh_table_print(const mesh_table *t, const char *title) {
    if (title) printf("\n%s\n", title);
    size_t w[MESH_MAX_COLS];
    for (size_t c = 0; c < t->ncols; c++) {
        w[c] = strlen(t->head[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            const char *s = t->cells[r * t->ncols + c];
            if (s && strlen(s) > w[c]) w[c] = strlen(s);
        }
    }
    for (size_t c = 0; c < t->ncols; c++)
        printf("%-*s%s", c + 1 < t->ncols ? (int)w[c] : 0, t->head[c],
               c + 1 < t->ncols ? "  " : "\n");
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = t->cells[r * t->ncols + c];
            printf("%-*s%s", c + 1 < t->ncols ? (int)w[c] : 0, s ? s : "-",
                   c + 1 < t->ncols ? "  " : "\n");
        }
}

/* A scalar as a cell's text; false for arrays and objects. */
static bool mesh_scalar_text(const jval *v, char *out, size_t outlen) {
    switch (v->type) {
    case JV_NULL: snprintf(out, outlen, "-"); return true;
    case JV_BOOL: snprintf(out, outlen, "%s", v->boolean ? "yes" : "no"); return true;
    case JV_NUMBER:
    case JV_STRING: snprintf(out, outlen, "%.*s", (int)v->len, v->str); return true;
    default: return false;
    }
}

/* "1.2s", "3m05s", "2h10m": how long ago, for last_heard_ms. */
static void mesh_ago(const jval *v, bool self, char *out, size_t outlen) {
    int64_t ms;
    if (self) snprintf(out, outlen, "(self)");
    else if (!v || v->type == JV_NULL || !jval_as_i64(v, &ms)) snprintf(out, outlen, "never");
    else if (ms < 60000) snprintf(out, outlen, "%.1fs ago", (double)ms / 1000.0);
    else if (ms < 3600000)
        snprintf(out, outlen, "%lldm%02llds ago", (long long)(ms / 60000),
                 (long long)(ms / 1000 % 60));
    else
        snprintf(out, outlen, "%lldh%02lldm ago", (long long)(ms / 3600000),
                 (long long)(ms / 60000 % 60));
}

static void mesh_print_members(const jval *members) {
    mesh_table t = { 0 };
    static const char *const cols[] = { "name", "url", "state", "incarnation", "last_heard" };
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) mesh_table_col(&t, cols[i]);
    size_t counts[4] = { 0 };
    static const char *const states[4] = { "alive", "suspect", "dead", "left" };
    for (size_t i = 0; members && i < members->count; i++) {
        const jval *m = members->items[i];
        if (m->type != JV_OBJECT || mesh_table_row(&t) != 0) continue;
        char text[256];
        for (int c = 0; c < 4; c++) {
            const jval *f = jval_get(m, cols[c]);
            if (f && mesh_scalar_text(f, text, sizeof text)) mesh_table_set(&t, c, text);
        }
        const jval *self = jval_get(m, "self");
        mesh_ago(jval_get(m, "last_heard_ms"), self && self->type == JV_BOOL && self->boolean,
                 text, sizeof text);
        mesh_table_set(&t, 4, text);
        const jval *st = jval_get(m, "state");
        for (int s = 0; st && st->type == JV_STRING && s < 4; s++)
            if (strcmp(st->str, states[s]) == 0) counts[s]++;
    }
    printf("members: %zu alive, %zu suspect, %zu dead, %zu left\n", counts[0], counts[1],
           counts[2], counts[3]);
    mesh_table_print(&t, NULL);
    mesh_table_free(&t);
}

static bool mesh_is_rows(const jval *v) {
    if (!v || (v->type != JV_ARRAY && v->type != JV_OBJECT) || v->count == 0) return false;
    for (size_t i = 0; i < v->count; i++)
        if (v->items[i]->type != JV_OBJECT) return false;
    return true;
}

/* Adds rows for the objects of v (a list of objects, or an object of objects whose keys go
 * in column key_col) to t, each led by lead in column lead_col when lead_col is set. Scalar
 * members become columns; lists and objects are left to mesh_print_children. */
static void mesh_add_rows(mesh_table *t, const jval *v, const char *key_col,
                          const char *lead_col) {
    if (lead_col) mesh_table_col(t, lead_col);
    if (v->type == JV_OBJECT) mesh_table_col(t, key_col);
    for (size_t i = 0; i < v->count; i++) {
        const jval *o = v->items[i];
        for (size_t k = 0; k < o->count; k++)
            if (o->items[k]->type != JV_ARRAY && o->items[k]->type != JV_OBJECT)
                mesh_table_col(t, o->keys[k]);
    }
}

static void mesh_fill_rows(mesh_table *t, const jval *v, const char *key_col,
                           const char *lead_col, const char *lead) {
    char text[512];
    for (size_t i = 0; i < v->count; i++) {
        const jval *o = v->items[i];
        if (mesh_table_row(t) != 0) return;
        if (lead_col) mesh_table_set(t, mesh_table_col(t, lead_col), lead);
        if (v->type == JV_OBJECT) mesh_table_set(t, mesh_table_col(t, key_col), v->keys[i]);
        for (size_t k = 0; k < o->count; k++) {
            int64_t when;
            if (strcmp(o->keys[k], "last_sync_ms") == 0 && jval_as_i64(o->items[k], &when) &&
                when > 0) {
                /* Milliseconds since the epoch (a peer's figure, not a duration). */
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                int64_t now = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
                jval age = { .type = JV_NUMBER };
                char num[32];
                snprintf(num, sizeof num, "%lld", (long long)(now > when ? now - when : 0));
                age.str = num;
                age.len = strlen(num);
                mesh_ago(&age, false, text, sizeof text);
            } else if (!mesh_scalar_text(o->items[k], text, sizeof text)) {
                continue;
            }
            mesh_table_set(t, mesh_table_col(t, o->keys[k]), text);
        }
    }
}

/* A table from a list of objects (or an object of objects). A member holding a list of
 * objects in its rows (per-peer figures of a database) becomes one more table, its rows led
 * by their parent's first cell, so per-database / per-peer figures read as one table. */
static void mesh_print_generic(const jval *v, const char *title) {
    mesh_table t = { 0 };
    mesh_add_rows(&t, v, "name", NULL);
    mesh_fill_rows(&t, v, "name", NULL, NULL);
    if (t.nrows) mesh_table_print(&t, title);
    /* The nested member names, in order of first appearance. */
    const char *nested[8];
    size_t nn = 0;
    for (size_t i = 0; i < v->count; i++) {
        const jval *o = v->items[i];
        for (size_t k = 0; k < o->count && nn < 8; k++) {
            if (!mesh_is_rows(o->items[k])) continue;
            bool seen = false;
            for (size_t j = 0; j < nn; j++) seen |= strcmp(nested[j], o->keys[k]) == 0;
            if (!seen) nested[nn++] = o->keys[k];
        }
    }
    const char *lead_col = t.ncols ? t.head[0] : "name";
    for (size_t j = 0; j < nn; j++) {
        mesh_table c = { 0 };
        for (int pass = 0; pass < 2; pass++)
            for (size_t i = 0; i < v->count && i < t.nrows; i++) {
                const jval *kid = jval_get(v->items[i], nested[j]);
                if (!mesh_is_rows(kid)) continue;
                const char *lead = t.cells[i * t.ncols];
                if (pass == 0) mesh_add_rows(&c, kid, "name", lead_col);
                else mesh_fill_rows(&c, kid, "name", lead_col, lead ? lead : "-");
            }
        char sub[256];
        snprintf(sub, sizeof sub, "%s: %s", title, nested[j]);
        if (c.nrows) mesh_table_print(&c, sub);
        mesh_table_free(&c);
    }
    mesh_table_free(&t);
}

static void mesh_print_stats(const jval *st) {
    if (!st || st->type != JV_OBJECT) return;
    int64_t v[6] = { 0 };
    static const char *const k[6] = { "msgs_sent", "bytes_sent", "msgs_recv", "bytes_recv",
                                       "probes", "probes_failed" };
    for (int i = 0; i < 6; i++) jval_as_i64(jval_get(st, k[i]), &v[i]);
    printf("\ngossip: sent %lld messages (%lld bytes), received %lld (%lld bytes); "
           "probes %lld, failed %lld\n", (long long)v[0], (long long)v[1], (long long)v[2],
           (long long)v[3], (long long)v[4], (long long)v[5]);
}

static void mesh_print(const jval *doc) {
    const jval *name = jval_get(doc, "name");
    printf("node: %s\n", name && name->type == JV_STRING ? name->str : "?");
    mesh_print_members(jval_get(doc, "members"));
    for (size_t i = 0; i < doc->count; i++) {
        const char *key = doc->keys[i];
        if (strcmp(key, "members") == 0 || strcmp(key, "stats") == 0) continue;
        const jval *v = doc->items[i];
        if (mesh_is_rows(v)) {
            mesh_print_generic(v, key);
        } else if (v->type == JV_OBJECT && v->count > 0) {
            /* An object of figures (the data mover's counters): one line,
             * "replication: completed 3, failed 0, …". */
            char text[256];
            bool first = true;
            for (size_t k = 0; k < v->count; k++) {
                if (!mesh_scalar_text(v->items[k], text, sizeof text)) continue;
                if (first) printf("\n%s: ", key);
                printf("%s%s %s", first ? "" : ", ", v->keys[k], text);
                first = false;
            }
            if (!first) printf("\n");
        }
    }
    mesh_print_stats(jval_get(doc, "stats"));
}

/* ---- the command --------------------------------------------------------------------------- */

static int mesh_status(int argc, char **argv) {
    static const struct option opts[] = {
        { "help",       no_argument,       NULL, 'h' },
        { "json",       no_argument,       NULL, 'j' },
        { "config",     required_argument, NULL, 'c' },
        { "admin-file", required_argument, NULL, 'a' },
        { NULL, 0, NULL, 0 },
    };
    const char *config = NULL, *admin_file = NULL, *url = NULL;
    bool json = false;
    optind = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "hjc:a:", opts, NULL)) != -1) {
        switch (ch) {
        case 'h': mesh_usage(stdout); return 0;
        case 'j': json = true; break;
        case 'c': config = optarg; break;
        case 'a': admin_file = optarg; break;
        default:
            fprintf(stderr, "Run `mimeo mesh --help` for the options.\n");
            return 2;
        }
    }
    if (optind < argc) url = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "mimeo mesh status: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    static cli_config cfg;   /* large: not on the stack */
    config_defaults(&cfg);
    char err[512];
    if (config && config_load_file(&cfg, config, err, sizeof err) != 0) {
        fprintf(stderr, "mimeo mesh: %s\n", err);
        return 1;
    }
    char base[4200];
    if (url) {
        snprintf(base, sizeof base, "%s", url);
    } else {
        /* The configured node; a wildcard bind is reached on loopback. */
        const char *host = cfg.bind_address;
        bool v6 = strchr(host, ':') != NULL;
        if (strcmp(host, "0.0.0.0") == 0) host = "127.0.0.1";
        if (strcmp(host, "::") == 0) host = "::1";
        snprintf(base, sizeof base, "http://%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "",
                 cfg.port);
    }
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/') base[--bl] = '\0';
    if (bl < 6 || strcmp(base + bl - 6, "/_mesh") != 0)
        snprintf(base + bl, sizeof base - bl, "/_mesh");

    /* Credentials: the URL's own win; else the admin file. */
    char user[512] = "", pass[512] = "";
    const char *afile = admin_file ? admin_file : cfg.admin_file[0] ? cfg.admin_file : NULL;
    const char *host = strstr(base, "://");
    const char *at = host ? strchr(host + 3, '@') : NULL;
    const char *slash = host ? strchr(host + 3, '/') : NULL;
    bool userinfo = at && (!slash || at < slash);
    if (!userinfo && afile && mesh_admin_file(afile, user, sizeof user, pass, sizeof pass) != 0)
        return 1;

    long status = 0;
    buf body;
    buf_init(&body, (size_t)64 << 20);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = mesh_fetch(base, user, pass, &status, &body);
    memset(pass, 0, sizeof pass);
    char shown[4200];
    mesh_display_url(base, shown, sizeof shown);
    int exit_code = 0;
    jval *doc = NULL;
    if (rc != 0) {
        exit_code = 1;
    } else if (status == 401 || status == 403) {
        fprintf(stderr, "mimeo mesh: %s: %s: GET /_mesh is for server admins; give "
                "credentials in the URL (http://user:password@host:port) or --admin-file\n",
                shown, status == 401 ? "not authorised" : "forbidden");
        exit_code = MESH_EXIT_UNAUTHORIZED;
    } else if (status == 404) {
        fprintf(stderr, "mimeo mesh: %s: this node is not part of a mesh (or is not mimeo)\n",
                shown);
        exit_code = MESH_EXIT_NOT_MESHED;
    } else if (status != 200 || json_tree_parse(body.data ? body.data : "", body.len, NULL,
                                                 &doc, NULL) != 0 || doc->type != JV_OBJECT) {
        fprintf(stderr, "mimeo mesh: %s: unexpected reply (HTTP %ld): %.200s\n", shown, status,
                body.data ? body.data : "");
        exit_code = 1;
    } else if (json) {
        fwrite(body.data, 1, body.len, stdout);
    } else {
        mesh_print(doc);
    }
    jval_free(doc);
    buf_destroy(&body);
    curl_global_cleanup();
    return exit_code;
}

int cli_mesh(int argc, char **argv) {
    optind = 0;
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        mesh_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "status") == 0) return mesh_status(argc - 1, argv + 1);
    fprintf(stderr, "mimeo mesh: unknown subcommand '%s'\n\n", argv[1]);
    mesh_usage(stderr);
    return 2;
}
