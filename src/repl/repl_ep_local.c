/* The local endpoint: a database of this process's environment, reached by direct calls to
 * the public API (no HTTP, no sockets). Results are mapped onto the statuses and bodies a
 * CouchDB server would answer, so that repl.c has one code path for both kinds of side. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "repl_int.h"

typedef struct local_ep {
    repl_ep    base;
    mimeo_env *env;
    mimeo_db  *db;
} local_ep;

/* The reply for a failed call: the CouchDB status for the code and {"error","reason"}. */
static void local_fail(repl_resp *out, int rc, const mimeo_err *e)
{
    long st;
    switch (rc) {
    case MIMEO_ENOTFOUND: case MIMEO_EDELETED: st = 404; break;
    case MIMEO_ECONFLICT:  st = 409; break;
    case MIMEO_EEXIST:     st = 412; break;
    case MIMEO_ETOOLARGE:  st = 413; break;
    case MIMEO_EEXPECTATION: st = 417; break;
    case MIMEO_EINVAL: case MIMEO_EBADJSON: case MIMEO_EBADID: case MIMEO_EBADREV:
    case MIMEO_EDOCVALIDATION: case MIMEO_EBADNAME:
        st = 400; break;
    default: st = 500; break;
    }
    out->status = st;
    buf_reset(&out->body);
    buf_puts(&out->body, "{\"error\":");
    json_put_cstr(&out->body, e && e->error[0] ? e->error : "error");
    buf_puts(&out->body, ",\"reason\":");
    json_put_cstr(&out->body, e && e->reason[0] ? e->reason : mimeo_strerror(rc));
    buf_putc(&out->body, '}');
}

/* A fixed JSON reply with status st. */
static void local_static(repl_resp *out, long st, const char *json)
{
    buf_reset(&out->body);
    buf_puts(&out->body, json);
    out->status = st;
}

/* Takes mimeo-allocated JSON into out->body with status st. */
static int local_take(repl_resp *out, long st, char *json, size_t len)
{
    buf_reset(&out->body);
    int rc = buf_put(&out->body, json, len);
    mimeo_free(json);
    out->status = st;
    return rc;
}

static int local_info(repl_ep *ep, repl_resp *out, mimeo_err *err)
{
    (void)err;
    local_ep *l = (local_ep *)ep;
    mimeo_db_info info;
    int rc = mimeo_db_info_get(l->db, &info);
    if (rc) {
        local_fail(out, rc, NULL);
        return 0;
    }
    buf_reset(&out->body);
    buf_puts(&out->body, "{\"db_name\":");
    json_put_cstr(&out->body, mimeo_db_name(l->db));
    buf_printf(&out->body, ",\"update_seq\":%llu,\"doc_count\":%llu,"
               "\"doc_del_count\":%llu,\"instance_start_time\":\"%llu\"}",
               (unsigned long long)info.update_seq, (unsigned long long)info.doc_count,
               (unsigned long long)info.doc_del_count,
               (unsigned long long)info.instance_start_time);
    out->status = 200;
    return 0;
}

static int local_create(repl_ep *ep, repl_resp *out, mimeo_err *err)
{
    (void)err;
    (void)ep;
    /* The database was opened (created if asked) when the endpoint was made. */
    local_static(out, 412, "{\"error\":\"file_exists\",\"reason\":\"exists\"}");
    return 0;
}

typedef struct local_rows {
    buf     *out;
    uint64_t n;
} local_rows;

static int local_row(void *ctx, const char *json, size_t len)
{
    local_rows *r = ctx;
    if (r->n++ > 0 && buf_putc(r->out, ',') != 0) return MIMEO_ENOMEM;
    return buf_put(r->out, json, len) != 0 ? MIMEO_ENOMEM : 0;
}

/* A seq as this database's number: the integer, or the leading digits of a string seq
 * ("12-g1AA…"), or 0. */
static uint64_t local_seq(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '"') i++;
    uint64_t v = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') v = v * 10 + (uint64_t)(s[i++] - '0');
    return v;
}

static int local_changes(repl_ep *ep, const char *since, size_t since_len, size_t limit,
                         const char *doc_ids, unsigned wait_ms, repl_resp *out,
                         mimeo_err *err)
{
    local_ep *l = (local_ep *)ep;
    mimeo_changes_opts o;
    memset(&o, 0, sizeof o);
    o.since = local_seq(since, since_len);
    o.limit = limit;
    o.all_docs_style = true;
    jval *ids = NULL;
    const char **idv = NULL;
    size_t *idl = NULL;
    if (doc_ids) {
        if (json_tree_parse(doc_ids, strlen(doc_ids), NULL, &ids, err) != 0 ||
            ids->type != JV_ARRAY) {
            jval_free(ids);
            err_set(err, MIMEO_EINVAL, "bad_request", "doc_ids must be an array");
            return MIMEO_EINVAL;
        }
        idv = calloc(ids->count + 1, sizeof *idv);
        idl = calloc(ids->count + 1, sizeof *idl);
        if (!idv || !idl) {
            free(idv); free(idl); jval_free(ids);
            err_set(err, MIMEO_ENOMEM, "error", "out of memory");
            return MIMEO_ENOMEM;
        }
        size_t k = 0;
        for (size_t i = 0; i < ids->count; i++) {
            if (ids->items[i]->type != JV_STRING) continue;
            idv[k] = ids->items[i]->str;
            idl[k++] = ids->items[i]->len;
        }
        o.doc_ids = idv;
        o.doc_id_lens = idl;
        o.doc_id_count = k;
    }
    int rc = 0;
    for (int round = 0; round < 2; round++) {
        buf_reset(&out->body);
        buf_puts(&out->body, "{\"results\":[");
        local_rows rows = { &out->body, 0 };
        uint64_t last = 0, pending = 0;
        mimeo_err e = {0};
        rc = mimeo_changes(l->db, &o, local_row, &rows, &last, &pending, &e);
        if (rc) {
            local_fail(out, rc, &e);
            rc = 0;
            break;
        }
        buf_printf(&out->body, "],\"last_seq\":%llu,\"pending\":%llu}",
                   (unsigned long long)last, (unsigned long long)pending);
        out->status = 200;
        /* longpoll: nothing yet, so wait for the next write and read once more. */
        if (rows.n > 0 || wait_ms == 0 || round == 1) break;
        uint64_t deadline = clock_ms() + wait_ms;
        uint64_t now;
        bool woke = false;
        /* Short waits, so a cancelled job notices within a fraction of a second. */
        while ((now = clock_ms()) < deadline) {
            if (ep->cancel && atomic_load(ep->cancel)) break;
            uint64_t step = deadline - now < 250 ? deadline - now : 250;
            if (mimeo_changes_wait(l->db, o.since, step) > o.since) {
                woke = true;
                break;
            }
        }
        if (!woke) break;
    }
    free(idv);
    free(idl);
    jval_free(ids);
    return rc;
}

static int local_revs_diff(repl_ep *ep, const char *body, size_t len, repl_resp *out,
                           mimeo_err *err)
{
    (void)err;
    char *json = NULL;
    size_t n = 0;
    mimeo_err e = {0};
    int rc = mimeo_revs_diff(((local_ep *)ep)->db, body, len, &json, &n, &e);
    if (rc) local_fail(out, rc, &e);
    else if (local_take(out, 200, json, n) != 0) return MIMEO_ENOMEM;
    return 0;
}

static int local_bulk_get(repl_ep *ep, const char *body, size_t len, repl_resp *out,
                          mimeo_err *err)
{
    (void)err;
    char *json = NULL;
    size_t n = 0;
    mimeo_err e = {0};
    mimeo_get_opts o;
    memset(&o, 0, sizeof o);
    o.revs = true;
    o.latest = true;
    int rc = mimeo_bulk_get(((local_ep *)ep)->db, body, len, &o, &json, &n, &e);
    if (rc) local_fail(out, rc, &e);
    else if (local_take(out, 200, json, n) != 0) return MIMEO_ENOMEM;
    return 0;
}

static int local_open_revs(repl_ep *ep, const char *id, size_t id_len, const char *revs,
                           size_t revs_len, repl_resp *out, mimeo_err *err)
{
    (void)err;
    char *json = NULL;
    size_t n = 0;
    mimeo_err e = {0};
    mimeo_get_opts o;
    memset(&o, 0, sizeof o);
    o.revs = true;
    o.latest = true;
    int rc = mimeo_doc_open_revs(((local_ep *)ep)->db, id, id_len, revs, revs_len, &o, &json,
                                 &n, &e);
    if (rc) local_fail(out, rc, &e);
    else if (local_take(out, 200, json, n) != 0) return MIMEO_ENOMEM;
    return 0;
}

static int local_bulk_docs(repl_ep *ep, const char *body, size_t len, repl_resp *out,
                           mimeo_err *err)
{
    (void)err;
    char *json = NULL;
    size_t n = 0;
    mimeo_err e = {0};
    int rc = mimeo_bulk_docs(((local_ep *)ep)->db, body, len, &json, &n, &e);
    if (rc && rc != MIMEO_EEXPECTATION) {
        mimeo_free(json);
        local_fail(out, rc, &e);
    } else if (local_take(out, rc ? 417 : 201, json, n) != 0) {
        return MIMEO_ENOMEM;
    }
    return 0;
}

static int local_full_commit(repl_ep *ep, repl_resp *out, mimeo_err *err)
{
    (void)ep;
    (void)err;
    /* Every acknowledged local write is already durable. */
    local_static(out, 201, "{\"ok\":true}");
    return 0;
}

static int local_local_get(repl_ep *ep, const char *id, repl_resp *out, mimeo_err *err)
{
    (void)err;
    char *json = NULL;
    size_t n = 0;
    mimeo_err e = {0};
    int rc = mimeo_local_get(((local_ep *)ep)->db, id, strlen(id), &json, &n, &e);
    if (rc) local_fail(out, rc, &e);
    else if (local_take(out, 200, json, n) != 0) return MIMEO_ENOMEM;
    return 0;
}

static int local_local_put(repl_ep *ep, const char *id, const char *rev, const char *body,
                           size_t len, repl_resp *out, mimeo_err *err)
{
    (void)err;
    mimeo_put_result res;
    memset(&res, 0, sizeof res);
    mimeo_err e = {0};
    int rc = mimeo_local_put(((local_ep *)ep)->db, id, strlen(id), body, len, rev, &res, &e);
    if (rc) {
        local_fail(out, rc, &e);
        return 0;
    }
    buf_reset(&out->body);
    buf_puts(&out->body, "{\"ok\":true,\"id\":");
    json_put_cstr(&out->body, res.id ? res.id : "");
    buf_puts(&out->body, ",\"rev\":");
    json_put_cstr(&out->body, res.rev);
    buf_putc(&out->body, '}');
    mimeo_free(res.id);
    out->status = 201;
    return 0;
}

static void local_free(repl_ep *ep)
{
    local_ep *l = (local_ep *)ep;
    if (l->db) mimeo_db_close(l->db);
    free(l->base.display);
    free(l);
}

static const repl_ep_ops local_ops = {
    .info = local_info,
    .create = local_create,
    .changes = local_changes,
    .revs_diff = local_revs_diff,
    .bulk_get = local_bulk_get,
    .open_revs = local_open_revs,
    .bulk_docs = local_bulk_docs,
    .ensure_full_commit = local_full_commit,
    .local_get = local_local_get,
    .local_put = local_local_put,
    .free = local_free,
};

int repl_ep_local_new(mimeo_env *env, const char *name, bool create, atomic_bool *cancel,
                      repl_ep **out, mimeo_err *err)
{
    if (!env) {
        err_set(err, MIMEO_EINVAL, "bad_request",
                     "'%s' is not a URL and there is no local data directory", name);
        return MIMEO_EINVAL;
    }
    local_ep *l = calloc(1, sizeof *l);
    if (!l) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    l->base.ops = &local_ops;
    l->base.local = true;
    l->base.cancel = cancel;
    l->env = env;
    mimeo_err e = {0};
    int rc = mimeo_db_open(env, name, &l->db, &e);
    if (rc == MIMEO_ENOTFOUND && create) {
        rc = mimeo_db_create(env, name, &e);
        if (rc == 0 || rc == MIMEO_EEXIST) rc = mimeo_db_open(env, name, &l->db, &e);
    }
    if (rc) {
        free(l);
        if (rc == MIMEO_ENOTFOUND)
            err_set(err, rc, "db_not_found", "could not open %s", name);
        else
            err_set(err, rc, e.error[0] ? e.error : "error", "could not open %s: %s",
                         name, e.reason[0] ? e.reason : mimeo_strerror(rc));
        return rc;
    }
    l->base.display = strdup(name);
    if (!l->base.display) {
        local_free(&l->base);
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    *out = &l->base;
    return 0;
}

void repl_ep_free(repl_ep *ep)
{
    if (ep) ep->ops->free(ep);
}
