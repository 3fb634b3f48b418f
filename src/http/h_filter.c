/* Filters of the changes feed other than _doc_ids: _selector (Mango, in C), _design (by id),
 * and the ones that run JavaScript in the server's query-server pool: "ddoc/name" filter
 * functions and _view (a view's map function: a document passes when it emits). The pool
 * is one per server, started lazily on the first JavaScript filter. The feed hands documents
 * over in batches, one call per batch (CouchDB's ddoc filter command takes a list); a function
 * that throws skips only the documents it threw on (qs_filter_docs). */
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http_int.h"
#include "../js/qs.h"

typedef enum { FLT_SELECTOR, FLT_DESIGN, FLT_FILTER, FLT_VIEW } http_filter_kind;

struct http_filter {
    http_filter_kind kind;
    mimeo_selector  *sel;
    qs_pool         *pool;     /* the server's; borrowed */
    buf              ddoc_id;
    buf              key;      /* db \0 id \0 rev: what a process has been taught */
    buf              ddoc;     /* the design document as GET serves it */
    buf              name;     /* the filter or view name */
    buf              req;      /* the req object, JSON */
    buf              line;     /* scratch: one request line */
    buf              reply;    /* scratch: one reply line */
    buf              doc;      /* scratch: one document */
    /* a batch (JavaScript kinds): documents run through the function in one call */
    buf              bdocs, bids;
    size_t          *boffs, *bid_offs;  /* n + 1 offsets each */
    bool            *bkeep;
    size_t           bn, bcap;
};

static pthread_mutex_t http_qs_lock = PTHREAD_MUTEX_INITIALIZER;

static void http_qs_log(void *ctx, const char *text, size_t len) {
    (void)ctx;
    fprintf(stderr, "mimeo: js: %.*s\n", (int)(len > 2000 ? 2000 : len), text);
}

qs_pool *http_qs_pool(http_server *srv, mimeo_err *err) {
    pthread_mutex_lock(&http_qs_lock);
    if (!srv->qs) {
        char cmd[PATH_MAX + 16];
        const char *c = srv->cfg.js_command;
        int rc = 0;
        if (!c || !c[0]) {
            rc = qs_default_command(cmd, sizeof cmd);
            c = cmd;
        }
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        qs_config qc = {
            .command = c,
            .size = srv->cfg.js_procs ? srv->cfg.js_procs : (unsigned)(cores > 0 ? cores : 2),
            .timeout_ms = srv->cfg.js_timeout_ms ? srv->cfg.js_timeout_ms : 5000,
            .log = http_qs_log,
        };
        if (rc == 0) rc = qs_pool_new(&qc, &srv->qs);
        if (rc != 0 && err) {
            err->code = MIMEO_EIO;
            snprintf(err->error, sizeof err->error, "os_process_error");
            snprintf(err->reason, sizeof err->reason,
                     "no JavaScript query server ([query_servers] javascript)");
        }
    }
    qs_pool *p = srv->qs;
    pthread_mutex_unlock(&http_qs_lock);
    return p;
}

void http_filter_free(http_filter *f) {
    if (!f) return;
    mimeo_selector_free(f->sel);
    buf_destroy(&f->ddoc_id);
    buf_destroy(&f->key);
    buf_destroy(&f->ddoc);
    buf_destroy(&f->name);
    buf_destroy(&f->req);
    buf_destroy(&f->line);
    buf_destroy(&f->reply);
    buf_destroy(&f->doc);
    buf_destroy(&f->bdocs);
    buf_destroy(&f->bids);
    free(f->boffs);
    free(f->bid_offs);
    free(f->bkeep);
    free(f);
}

bool http_filter_needs_body(const http_filter *f) {
    return f->kind != FLT_DESIGN;
}

/* ---- setup -------------------------------------------------------------------------------- */
static bool http_filter_selector(http_req *r, http_filter *f) {
    static const char missing[] = "Selector must be specified in POST payload";
    jval *body = NULL;
    json_error je = {0};
    if (r->method != HTTP_POST || r->body.len == 0 ||
        json_tree_parse(r->body.data, r->body.len, &r->srv->limits, &body, &je) != 0) {
        if (body) jval_free(body);
        if (r->method == HTTP_POST && r->body.len)
            http_reply_error(r, 400, "bad_request", "invalid UTF-8 JSON");
        else
            http_reply_error(r, 400, "bad_request", missing);
        return false;
    }
    const jval *sel = jval_get(body, "selector");
    if (!sel) {
        jval_free(body);
        http_reply_error(r, 400, "bad_request", missing);
        return false;
    }
    if (sel->type != JV_OBJECT) {
        jval_free(body);
        http_reply_error(r, 400, "bad_request", "Selector error: expected a JSON object");
        return false;
    }
    buf text;
    buf_init(&text, 0);
    mimeo_err e = {0};
    int rc = json_put_jval(&text, sel);
    jval_free(body);
    if (rc == 0) rc = mimeo_selector_parse(text.data, text.len, &f->sel, &e);
    buf_destroy(&text);
    if (rc != 0) {
        if (rc == MIMEO_EINVAL || rc == MIMEO_EBADJSON)
            http_reply_error(r, 400, "bad_request", e.reason[0] ? e.reason : "invalid selector");
        else
            http_reply_err(r, rc, &e);
        return false;
    }
    return true;
}

static enum MHD_Result http_put_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value) {
    buf *b = cls;
    (void)kind;
    if (b->data[b->len - 1] != '{') buf_putc(b, ',');
    /* CouchDB passes header names as the client sent them; MHD keeps them as sent too. */
    json_put_cstr(b, key);
    buf_putc(b, ':');
    json_put_cstr(b, value ? value : "");
    return MHD_YES;
}

/* CouchDB's req object for filter functions, from this request: its query, method,
 * headers, body, user, peer and the database's _security. */
static int http_filter_req(http_req *r, buf *b) {
    const char *db = mimeo_db_name(r->db);
    buf raw, query, headers;
    buf_init(&raw, 0);
    buf_init(&query, 0);
    buf_init(&headers, 0);
    int rc = buf_putc(&raw, '/');
    rc |= buf_puts(&raw, db);
    rc |= buf_puts(&raw, "/_changes");
    rc |= buf_putc(&query, '{');
    for (size_t i = 0; i < r->nargs; i++) {
        rc |= buf_putc(&raw, i ? '&' : '?');
        rc |= buf_put(&raw, r->args[i].key, r->args[i].key_len);
        rc |= buf_putc(&raw, '=');
        rc |= buf_put(&raw, r->args[i].val, r->args[i].val_len);
        if (i) rc |= buf_putc(&query, ',');
        rc |= json_put_str(&query, r->args[i].key, r->args[i].key_len);
        rc |= buf_putc(&query, ':');
        rc |= json_put_str(&query, r->args[i].val, r->args[i].val_len);
    }
    rc |= buf_putc(&query, '}');
    rc |= buf_putc(&headers, '{');
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, http_put_header, &headers);
    rc |= buf_putc(&headers, '}');
    char peer[64] = "127.0.0.1";
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr, peer,
                  sizeof peer);
    else if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ci->client_addr)->sin6_addr, peer,
                  sizeof peer);
    char *sec = http_security_text(r);
    qs_req_info in = {
        .db = db, .method = r->method_name, .raw_path = raw.data, .raw_path_len = raw.len,
        .query_json = buf_cstr(&query), .headers_json = buf_cstr(&headers), .sec_json = sec,
        .body = r->body.data, .body_len = r->body.len, .peer = peer,
        .user_name = r->user.known ? r->user.name : NULL,
        .roles = (const char *const *)r->user.roles, .nroles = r->user.nroles,
    };
    if (!rc) rc = qs_filter_req(b, &in);
    free(sec);
    buf_destroy(&raw);
    buf_destroy(&query);
    buf_destroy(&headers);
    return rc ? MIMEO_ENOMEM : 0;
}

/* Reads the design document named by "ddoc/name" (filters) or view=ddoc/name (_view) and
 * checks that member[name] exists, replying 404 with CouchDB's reasons when not. */
static bool http_filter_js(http_req *r, http_filter *f, const char *v, size_t n,
                           const char *member) {
    const char *slash = memchr(v, '/', n);
    if (!slash || slash == v || slash + 1 == v + n ||
        memchr(slash + 1, '/', (size_t)(v + n - slash - 1))) {
        if (f->kind == FLT_VIEW)
            http_reply_error(r, 400, "bad_request", "`view` must be of the form `designname/viewname`");
        else
            http_reply_error(r, 400, "bad_request",
                             "`filter` must be of the form `designname/filtername`");
        return false;
    }
    buf_puts(&f->ddoc_id, "_design/");
    buf_put(&f->ddoc_id, v, (size_t)(slash - v));
    const char *fname = slash + 1;
    size_t fname_len = (size_t)(v + n - fname);
    buf_put(&f->name, fname, fname_len);
    mimeo_cursor *cur = NULL;
    mimeo_err e = {0};
    int rc = mimeo_doc_open(r->db, f->ddoc_id.data, f->ddoc_id.len, NULL, &cur, &e);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return false;
    }
    const mimeo_row *row = NULL;
    rc = mimeo_cursor_next(cur, &row, &e);
    jval *doc = NULL;
    json_error je = {0};
    json_limits lim = r->srv->limits;
    if (rc == 0 && row) {
        lim.max_doc_bytes = row->json_len + 1;
        rc = json_tree_parse(row->json, row->json_len, &lim, &doc, &je);
        if (rc == 0) {
            buf_put(&f->ddoc, row->json, row->json_len);
            const char *db = mimeo_db_name(r->db);
            buf_puts(&f->key, db);
            buf_putc(&f->key, 0);
            buf_put(&f->key, f->ddoc_id.data, f->ddoc_id.len);
            buf_putc(&f->key, 0);
            buf_put(&f->key, row->rev, row->rev_len);
        }
    }
    mimeo_cursor_close(cur);
    if (rc != 0 || !doc) {
        if (doc) jval_free(doc);
        http_reply_err(r, rc ? rc : MIMEO_EIO, NULL);
        return false;
    }
    const jval *funs = jval_get(doc, member);
    const jval *fn = NULL;
    if (funs && funs->type == JV_OBJECT) {
        for (size_t i = 0; i < funs->count && !fn; i++)
            if (funs->key_lens[i] == fname_len && memcmp(funs->keys[i], fname, fname_len) == 0)
                fn = funs->items[i];
    }
    if (f->kind == FLT_VIEW && fn && !jval_get(fn, "map")) fn = NULL;
    bool ok = fn != NULL;
    if (!ok) {
        buf reason;
        buf_init(&reason, 0);
        buf_puts(&reason, "missing json key: ");
        if (!funs) buf_puts(&reason, member);
        else buf_put(&reason, fname, fname_len);
        http_reply_error(r, 404, "not_found", buf_cstr(&reason));
        buf_destroy(&reason);
    }
    jval_free(doc);
    if (!ok) return false;
    mimeo_err pe = {0};
    f->pool = http_qs_pool(r->srv, &pe);
    if (!f->pool) {
        http_reply_error(r, 500, pe.error, pe.reason);
        return false;
    }
    if (f->kind == FLT_FILTER && http_filter_req(r, &f->req) != 0) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return false;
    }
    return true;
}

bool http_filter_open(http_req *r, const char *v, size_t n, http_filter **out) {
    *out = NULL;
    http_filter *f = calloc(1, sizeof *f);
    if (!f) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return false;
    }
    buf_init(&f->ddoc_id, 0);
    buf_init(&f->key, 0);
    buf_init(&f->ddoc, 0);
    buf_init(&f->name, 0);
    buf_init(&f->req, 0);
    buf_init(&f->line, 0);
    buf_init(&f->reply, 0);
    buf_init(&f->doc, 0);
    buf_init(&f->bdocs, 0);
    buf_init(&f->bids, 0);
    bool ok;
    if (strcmp(v, "_selector") == 0) {
        f->kind = FLT_SELECTOR;
        ok = http_filter_selector(r, f);
    } else if (strcmp(v, "_design") == 0) {
        f->kind = FLT_DESIGN;
        ok = true;
    } else if (strcmp(v, "_view") == 0) {
        f->kind = FLT_VIEW;
        size_t vn = 0;
        const char *view = http_arg_get(r, "view", &vn);
        if (!view || vn == 0) {
            http_reply_error(r, 400, "bad_request", "`view` filter parameter is not provided.");
            ok = false;
        } else {
            ok = http_filter_js(r, f, view, vn, "views");
        }
    } else if (v[0] == '_') {
        http_reply_error(r, 400, "bad_request", "unknown builtin filter name");
        ok = false;
    } else {
        f->kind = FLT_FILTER;
        ok = http_filter_js(r, f, v, n, "filters");
    }
    if (!ok) {
        http_filter_free(f);
        return false;
    }
    *out = f;
    return true;
}

/* ---- testing rows ------------------------------------------------------------------------- */
static void http_filter_thrown(void *ctx, size_t i, const mimeo_err *e) {
    const http_filter *f = ctx;
    const char *id = f->bids.data + f->bid_offs[i];
    fprintf(stderr, "mimeo: filter %.*s/%.*s on %.*s: %s: %s\n", (int)f->ddoc_id.len,
            f->ddoc_id.data, (int)f->name.len, f->name.data,
            (int)(f->bid_offs[i + 1] - f->bid_offs[i]), id, e->error, e->reason);
}

bool http_filter_batches(const http_filter *f) {
    return f->kind == FLT_FILTER || f->kind == FLT_VIEW;
}

void http_filter_clear(http_filter *f) {
    f->bn = 0;
    buf_reset(&f->bdocs);
    buf_reset(&f->bids);
}

size_t http_filter_count(const http_filter *f) { return f->bn; }

bool http_filter_full(const http_filter *f) {
    return f->bn >= HTTP_FILTER_BATCH || f->bdocs.len >= HTTP_FILTER_BATCH_BYTES;
}

int http_filter_add(http_filter *f, const mimeo_row *row) {
    if (f->bn + 2 > f->bcap) {
        size_t nc = f->bcap ? f->bcap * 2 : 64;
        size_t *o = realloc(f->boffs, nc * sizeof *o);
        if (!o) return MIMEO_ENOMEM;
        f->boffs = o;
        if (!(o = realloc(f->bid_offs, nc * sizeof *o))) return MIMEO_ENOMEM;
        f->bid_offs = o;
        bool *k = realloc(f->bkeep, nc * sizeof *k);
        if (!k) return MIMEO_ENOMEM;
        f->bkeep = k;
        f->bcap = nc;
    }
    f->boffs[f->bn] = f->bdocs.len;
    f->bid_offs[f->bn] = f->bids.len;
    int rc = http_put_row_doc(&f->bdocs, row, false);
    if (rc == 0) rc = buf_put(&f->bids, row->id, row->id_len);
    if (rc != 0) return rc;
    f->bn++;
    f->boffs[f->bn] = f->bdocs.len;
    f->bid_offs[f->bn] = f->bids.len;
    return 0;
}

int http_filter_run(http_filter *f, mimeo_err *err) {
    if (!f->bn) return 0;
    qs_proc *q = NULL;
    int rc = qs_acquire(f->pool, &q, err);
    if (rc != 0) return rc;
    rc = qs_proc_teach(q, f->key.data, f->key.len, f->ddoc_id.data, f->ddoc_id.len, f->ddoc.data,
                       f->ddoc.len, &f->line, &f->reply, err);
    if (rc == 0) {
        qs_filter_fn fn = {
            .ddoc_id = f->ddoc_id.data, .ddoc_id_len = f->ddoc_id.len,
            .view = f->kind == FLT_VIEW, .name = f->name.data, .name_len = f->name.len,
            .req = f->req.data, .req_len = f->req.len,
        };
        rc = qs_filter_docs(q, &fn, f->bdocs.data, f->boffs, f->bn, &f->line, &f->reply,
                            f->bkeep, http_filter_thrown, f, err);
    }
    qs_release(f->pool, q);
    return rc;
}

bool http_filter_kept(const http_filter *f, size_t i) {
    return i < f->bn && f->bkeep[i];
}

/* 1: the row passes, 0: it does not, <0: an error (err filled), which ends the feed. */
int http_filter_test(http_filter *f, const mimeo_row *row, mimeo_err *err) {
    if (f->kind == FLT_DESIGN)
        return row->id_len >= 8 && memcmp(row->id, "_design/", 8) == 0;
    if (!row->body) return 0;
    int rc;
    if (f->kind == FLT_SELECTOR) {
        buf_reset(&f->doc);
        if ((rc = http_put_row_doc(&f->doc, row, false)) != 0) return rc;
        bool match = false;
        rc = mimeo_selector_match(f->sel, f->doc.data, f->doc.len, &match);
        return rc != 0 ? rc : match;
    }
    http_filter_clear(f);
    if ((rc = http_filter_add(f, row)) != 0 || (rc = http_filter_run(f, err)) != 0) return rc;
    return http_filter_kept(f, 0);
}
