/* The local endpoint: a database of this process's environment, reached by direct calls to
 * the public API (no HTTP, no sockets). Results are mapped onto the statuses a CouchDB
 * server would answer, so that repl.c has one code path for both kinds of side; what they
 * carry comes as structs and callbacks filled from the library's rows and fields (no JSON
 * reply is written here for repl.c to parse back), and failures as CouchDB's error bodies. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "repl_int.h"

typedef struct local_ep {
    repl_ep    base;
    mimeo_env *env;
    mimeo_db  *db;
} local_ep;

/* The reply for a failed call: the CouchDB status for the code and {"error","reason"}. */
static void local_fail(repl_resp *out, int rc, const mimeo_err *e) {
    long st;
    switch (rc) {
    case MIMEO_ENOTFOUND: case MIMEO_EDELETED: st = 404; break;
    case MIMEO_ECONFLICT:  st = 409; break;
    case MIMEO_EEXIST:     st = 412; break;
    case MIMEO_ETOOLARGE:  st = 413; break;
    case MIMEO_EPRECONDITION: st = 412; break;
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

/* The detail of a database deleted under a running call. */
static void db_gone(mimeo_err *e) {
    e->code = MIMEO_ENOTFOUND;
    snprintf(e->error, sizeof e->error, "not_found");
    snprintf(e->reason, sizeof e->reason, "Database does not exist.");
}

/* A fixed JSON reply with status st. */
static void local_static(repl_resp *out, long st, const char *json) {
    buf_reset(&out->body);
    buf_puts(&out->body, json);
    out->status = st;
}

/* Takes mimeo-allocated JSON into out->body with status st. */
static int local_take(repl_resp *out, long st, char *json, size_t len) {
    buf_reset(&out->body);
    int rc = buf_put(&out->body, json, len);
    mimeo_free(json);
    out->status = st;
    return rc;
}

static int local_info(repl_ep *ep, repl_db_info *out_info, repl_resp *out, mimeo_err *err) {
    local_ep *l = (local_ep *)ep;
    mimeo_db_info info;
    int rc = mimeo_db_info_get(l->db, &info);
    if (rc) {
        local_fail(out, rc, NULL);
        return 0;
    }
    char num[24];
    snprintf(num, sizeof num, "%llu", (unsigned long long)info.update_seq);
    if (!(out_info->update_seq = strdup(num))) {
        err_set(err, MIMEO_ENOMEM, "error", "out of memory");
        return MIMEO_ENOMEM;
    }
    out_info->update_seq_num = info.update_seq > INT64_MAX ? -1 : (int64_t)info.update_seq;
    buf_reset(&out->body);
    out->status = 200;
    return 0;
}

static int local_create(repl_ep *ep, repl_resp *out, mimeo_err *err) {
    (void)err;
    (void)ep;
    /* The database was opened (created if asked) when the endpoint was made. */
    local_static(out, 412, "{\"error\":\"file_exists\",\"reason\":\"exists\"}");
    return 0;
}

/* Hands one cursor row to the replicator: its id and every leaf revision. revs and lens
 * grow to hold the leaves (*alloc entries). */
static int local_change_row(const mimeo_row *row, repl_change_fn fn, void *ctx,
                            const char ***revs, size_t **lens, size_t *alloc) {
    if (row->leaf_count > *alloc) {
        size_t n = row->leaf_count < 8 ? 8 : row->leaf_count;
        const char **r = realloc(*revs, n * sizeof *r);
        if (!r) return MIMEO_ENOMEM;
        *revs = r;
        size_t *l = realloc(*lens, n * sizeof *l);
        if (!l) return MIMEO_ENOMEM;
        *lens = l;
        *alloc = n;
    }
    for (size_t i = 0; i < row->leaf_count; i++) {
        (*revs)[i] = row->leaves[i].rev;
        (*lens)[i] = row->leaves[i].rev_len;
    }
    repl_want w = { row->id, row->id_len, *revs, *lens, row->leaf_count, NULL, NULL, 0 };
    return fn(ctx, &w);
}

/* A seq as this database's number: the integer, or the leading digits of a string seq
 * ("12-g1AA…"), or 0. */
static uint64_t local_seq(const char *s, size_t n) {
    size_t i = 0;
    if (i < n && s[i] == '"') i++;
    uint64_t v = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') v = v * 10 + (uint64_t)(s[i++] - '0');
    return v;
}

static int local_changes(repl_ep *ep, const char *since, size_t since_len, size_t limit,
                         const char *doc_ids, unsigned wait_ms, repl_change_fn fn, void *ctx,
                         repl_page *page, repl_resp *out, mimeo_err *err) {
    local_ep *l = (local_ep *)ep;
    mimeo_changes_opts o;
    memset(&o, 0, sizeof o);
    o.since = local_seq(since, since_len);
    o.limit = limit;
    o.all_docs_style = true;
    repl_filter *flt = ep->filter;
    if (flt) {
        /* The limit counts the rows that pass; the cursor reads on past the others. */
        o.limit = 0;
        o.include_docs = repl_filter_needs_body(flt);
    }
    uint64_t last_row = 0;
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
    /* One cursor: its rows go straight to fn (no JSON in between), and a longpoll waits on
     * it, which also notices a deleted database instead of polling it in a loop. */
    int rc = 0, fn_rc = 0;
    mimeo_cursor *cur = NULL;
    mimeo_err e = {0};
    uint64_t rows = 0;
    uint64_t deadline = clock_ms() + wait_ms;
    const char **revs = NULL;
    size_t *lens = NULL, alloc = 0;
    buf_reset(&out->body);
    page->last_seq = NULL;
    page->pending = -1;
    page->rows = 0;
    rc = mimeo_changes_open(l->db, &o, &cur, &e);
    while (!rc && !fn_rc) {
        const mimeo_row *row;
        if (flt && limit && rows >= limit) break;
        rc = mimeo_cursor_next(cur, &row, &e);
        if (!rc && row && flt) {
            bool keep = false;
            rc = repl_filter_row(flt, l->db, row, &keep, &e);
            if (rc || !keep) continue;
            last_row = row->seq;
        }
        if (rc || row) {
            if (!rc) {
                rows++;
                fn_rc = local_change_row(row, fn, ctx, &revs, &lens, &alloc);
            }
            continue;
        }
        /* longpoll: nothing yet, so wait for the next write; short waits, so a cancelled
         * job notices within a fraction of a second. */
        uint64_t now = clock_ms();
        if (rows > 0 || wait_ms == 0 || now >= deadline) break;
        if (ep->cancel && atomic_load(ep->cancel)) break;
        uint64_t step = deadline - now < 250 ? deadline - now : 250;
        int w = mimeo_cursor_wait(cur, step);
        if (w < 0) rc = w;
    }
    free(revs);
    free(lens);
    if (fn_rc) {
        mimeo_cursor_close(cur);
        free(idv);
        free(idl);
        jval_free(ids);
        err_set(err, fn_rc, "error", "%s", mimeo_strerror(fn_rc));
        return fn_rc;
    }
    if (!rc) {
        /* A filtered page that stopped at its limit left the cursor mid-way: its pending
         * count means nothing then, and the reader estimates from the seq instead. */
        bool cut = flt && limit && rows >= limit;
        char num[24];
        snprintf(num, sizeof num, "%llu",
                 (unsigned long long)(cut ? last_row : mimeo_cursor_last_seq(cur)));
        page->last_seq = strdup(num);
        page->pending = cut ? -1 : (int64_t)mimeo_cursor_pending(cur);
        page->rows = rows;
        out->status = 200;
        if (!page->last_seq) rc = MIMEO_ENOMEM;
    }
    if (rc == MIMEO_ENOTFOUND) {
        db_gone(&e);
        local_fail(out, rc, &e);
        rc = 0;
    } else if (rc) {
        local_fail(out, rc, &e);
        rc = 0;
    }
    mimeo_cursor_close(cur);
    free(idv);
    free(idl);
    jval_free(ids);
    return rc;
}

/* Maps a cursor's failure onto the reply: a database deleted meanwhile is a 404 like any
 * other; out of memory is the op's own failure. */
static int local_cursor_fail(repl_resp *out, int rc, mimeo_err *e, mimeo_err *err) {
    if (rc == MIMEO_ENOMEM) {
        err_set(err, rc, "error", "out of memory");
        return rc;
    }
    if (rc == MIMEO_ENOTFOUND && !e->error[0]) db_gone(e);
    local_fail(out, rc, e);
    return 0;
}

/* The rows of a revs_diff cursor carry the missing revisions as leaves. */
static int local_revs_diff(repl_ep *ep, const char *body, size_t len, repl_missing_fn fn,
                           void *ctx, repl_resp *out, mimeo_err *err) {
    mimeo_err e = {0};
    mimeo_cursor *cur = NULL;
    int rc = mimeo_revs_diff_open(((local_ep *)ep)->db, body, len, &cur, &e);
    const char **revs = NULL;
    size_t *lens = NULL, alloc = 0;
    int frc = 0;
    while (!rc && !frc) {
        const mimeo_row *row;
        if ((rc = mimeo_cursor_next(cur, &row, &e)) != 0 || !row) break;
        if (row->leaf_count == 0) continue;
        if (row->leaf_count > alloc) {
            alloc = row->leaf_count * 2;
            free(revs);
            free(lens);
            revs = malloc(alloc * sizeof *revs);
            lens = malloc(alloc * sizeof *lens);
            if (!revs || !lens) {
                frc = MIMEO_ENOMEM;
                break;
            }
        }
        for (size_t i = 0; i < row->leaf_count; i++) {
            revs[i] = row->leaves[i].rev;
            lens[i] = row->leaves[i].rev_len;
        }
        repl_want w = { row->id, row->id_len, revs, lens, row->leaf_count, NULL, NULL, 0 };
        frc = fn(ctx, &w);
    }
    mimeo_cursor_close(cur);
    free(revs);
    free(lens);
    if (frc) {
        err_set(err, frc, "error", "%s", mimeo_strerror(frc));
        return frc;
    }
    if (rc) return local_cursor_fail(out, rc, &e, err);
    out->status = 200;
    buf_reset(&out->body);
    return 0;
}

/* One open_revs cursor for want: its found revisions go to fn, the missing ones are
 * counted in *unserved. A document that does not exist at all is a 404. */
static int local_fetch(local_ep *l, const repl_want *want, repl_doc_fn fn, void *ctx,
                       size_t *unserved, repl_resp *out, mimeo_err *err) {
    mimeo_get_opts o;
    memset(&o, 0, sizeof o);
    o.revs = true;
    o.latest = true;
    mimeo_err e = {0};
    mimeo_cursor *cur = NULL;
    int rc = mimeo_open_revs_list_open(l->db, want->id, want->id_len, want->revs,
                                       want->rev_lens, want->nrevs, &o, &cur, &e);
    int frc = 0;
    while (!rc && !frc) {
        const mimeo_row *row;
        if ((rc = mimeo_cursor_next(cur, &row, &e)) != 0 || !row) break;
        if (row->status != 0 || !row->json) {
            if (unserved) (*unserved)++;
            continue;
        }
        repl_doc d = { row->json, row->json_len, 0, 0,
                       memmem(row->json, row->json_len, "\"_attachments\"", 14) != NULL };
        frc = fn(ctx, &d);
    }
    mimeo_cursor_close(cur);
    if (frc) {
        err_set(err, frc, "error", "%s", mimeo_strerror(frc));
        return frc;
    }
    if (rc) return local_cursor_fail(out, rc, &e, err);
    out->status = 200;
    return 0;
}

/* _bulk_get locally: each document's revisions through one open_revs cursor (one short
 * read each), handed over as the stored JSON without a reply to parse. */
static int local_bulk_get(repl_ep *ep, const repl_want *want, size_t n, repl_doc_fn fn,
                          void *ctx, size_t *unserved, repl_resp *out, mimeo_err *err) {
    local_ep *l = (local_ep *)ep;
    buf_reset(&out->body);
    for (size_t i = 0; i < n; i++) {
        int rc = local_fetch(l, &want[i], fn, ctx, unserved, out, err);
        if (rc) return rc;
        if (out->status == 404) {
            /* the document is gone (purged) or the database is: the first is an unserved
             * revision, the second the whole request's failure */
            mimeo_db_info info;
            if (mimeo_db_info_get(l->db, &info) != 0) return 0;
            if (unserved) *unserved += want[i].nrevs;
            continue;
        }
        if (out->status != 200) return 0;
    }
    out->status = 200;
    buf_reset(&out->body);
    return 0;
}

static int local_open_revs(repl_ep *ep, const repl_want *want, repl_doc_fn fn, void *ctx,
                           repl_resp *out, mimeo_err *err) {
    buf_reset(&out->body);
    return local_fetch((local_ep *)ep, want, fn, ctx, NULL, out, err);
}

/* Hands each refused revision of a write to the replicator's callback. */
typedef struct local_refusals {
    repl_refusal_fn fn;
    void           *ctx;
} local_refusals;

static int local_refusal(void *ctx, const mimeo_bulk_entry *entry) {
    local_refusals *lr = ctx;
    const char *error = entry->error ? entry->error : "error";
    repl_refusal r = { entry->id, entry->id_len, error, strlen(error) };
    return lr->fn(lr->ctx, &r);
}

/* The write's entries come as structs (no reply text to parse): a refusal the callback
 * stopped on is the op's failure. */
static int local_bulk_docs(repl_ep *ep, const char *body, size_t len, repl_refusal_fn fn,
                           void *ctx, repl_resp *out, mimeo_err *err) {
    local_refusals lr = { fn, ctx };
    mimeo_bulk_docs_opts o = { .entry_fn = local_refusal, .entry_ctx = &lr };
    char *json = NULL;
    size_t n = 0;
    mimeo_err e = {0};
    int rc = mimeo_bulk_docs_as(((local_ep *)ep)->db, body, len, &o, &json, &n, &e);
    mimeo_free(json);
    buf_reset(&out->body);
    if (rc == 0 || rc == MIMEO_EEXPECTATION) {
        out->status = rc ? 417 : 201;
    } else if (rc == MIMEO_ENOMEM && !e.error[0]) {
        err_set(err, rc, "error", "out of memory");
        return rc;
    } else {
        local_fail(out, rc, &e);
    }
    return 0;
}

static int local_full_commit(repl_ep *ep, repl_resp *out, mimeo_err *err) {
    (void)ep;
    (void)err;
    /* Every acknowledged local write is already durable. */
    local_static(out, 201, "{\"ok\":true}");
    return 0;
}

static int local_local_get(repl_ep *ep, const char *id, char rev[MIMEO_REV_MAX],
                           repl_resp *out, mimeo_err *err) {
    char *body = NULL;
    size_t n = 0;
    mimeo_err e = {0};
    int rc = mimeo_local_read(((local_ep *)ep)->db, id, strlen(id), rev, &body, &n, &e);
    if (rc) local_fail(out, rc, &e);
    else if (local_take(out, 200, body, n) != 0) return MIMEO_ENOMEM;
    (void)err;
    return 0;
}

static int local_local_put(repl_ep *ep, const char *id, const char *rev, const char *body,
                           size_t len, char new_rev[MIMEO_REV_MAX], repl_resp *out,
                           mimeo_err *err) {
    (void)err;
    mimeo_put_result res;
    memset(&res, 0, sizeof res);
    mimeo_err e = {0};
    int rc = mimeo_local_put(((local_ep *)ep)->db, id, strlen(id), body, len, rev, &res, &e);
    mimeo_free(res.id);
    if (rc) {
        local_fail(out, rc, &e);
        return 0;
    }
    snprintf(new_rev, MIMEO_REV_MAX, "%s", res.rev);
    buf_reset(&out->body);
    out->status = 201;
    return 0;
}

/* ---- attachments: straight between the blob store and the spool, no base64 ------------- */
static int local_att_get(repl_ep *ep, const char *id, size_t id_len, const char *name,
                         size_t name_len, const char *rev, FILE *sink, repl_resp *out,
                         mimeo_err *err) {
    local_ep *l = (local_ep *)ep;
    mimeo_att_reader *rd = NULL;
    mimeo_err e = {0};
    int rc = mimeo_att_open(l->db, id, id_len, rev, name, name_len, true, &rd, NULL, &e);
    if (rc) {
        local_fail(out, rc, &e);
        return 0;
    }
    char chunk[65536];
    for (;;) {
        size_t got = 0;
        if ((rc = mimeo_att_read(rd, chunk, sizeof chunk, &got)) != 0) break;
        if (got == 0) break;
        if (fwrite(chunk, 1, got, sink) != got) {
            mimeo_att_close(rd);
            err_set(err, MIMEO_EIO, "error", "could not write the spool file");
            return MIMEO_EIO;
        }
    }
    mimeo_att_close(rd);
    if (rc) {
        local_fail(out, rc, NULL);
        return 0;
    }
    out->status = 200;
    buf_reset(&out->body);
    return 0;
}

static int local_put_atts(repl_ep *ep, const char *id, size_t id_len, const char *json,
                          size_t len, const repl_att *atts, size_t n, FILE *spool,
                          repl_resp *out, mimeo_err *err) {
    local_ep *l = (local_ep *)ep;
    mimeo_att_blob *ab = calloc(n + 1, sizeof *ab);
    char *chunk = malloc(65536);
    int rc = ab && chunk ? 0 : MIMEO_ENOMEM;
    size_t made = 0;
    for (; !rc && made < n; made++) {
        const repl_att *a = &atts[made];
        mimeo_blob_opts o = { .gzip_level = mimeo_att_gzip_level(l->env, a->content_type) };
        ab[made].name = a->name;
        ab[made].name_len = a->name_len;
        if ((rc = mimeo_blob_new(l->env, &o, &ab[made].blob)) != 0) break;
        for (uint64_t off = 0; !rc && off < a->length;) {
            size_t take = a->length - off < 65536 ? (size_t)(a->length - off) : 65536;
            ssize_t r = pread(fileno(spool), chunk, take, (off_t)(a->offset + off));
            if (r != (ssize_t)take) rc = MIMEO_EIO;
            else rc = mimeo_blob_write(ab[made].blob, chunk, take);
            off += take;
        }
        if (!rc) rc = mimeo_blob_finish(ab[made].blob);
    }
    if (rc) {
        err_set(err, rc, "error", "could not store an attachment: %s", mimeo_strerror(rc));
    } else {
        mimeo_put_opts o;
        memset(&o, 0, sizeof o);
        o.new_edits_false = true;
        o.atts = ab;
        o.att_count = n;
        mimeo_put_result res;
        memset(&res, 0, sizeof res);
        mimeo_err e = {0};
        int prc = mimeo_doc_put(l->db, id, id_len, json, len, &o, &res, &e);
        if (prc) {
            local_fail(out, prc, &e);
        } else {
            buf_reset(&out->body);
            buf_puts(&out->body, "{\"ok\":true}");
            out->status = 201;
        }
        mimeo_free(res.id);
    }
    for (size_t i = 0; ab && i < n; i++) mimeo_blob_free(ab[i].blob);
    free(ab);
    free(chunk);
    return rc;
}

/* Attachments between two local databases (repl_att.c) share the env's blob store, so
 * they name the stored blobs by digest instead of copying bytes: that needs the handle. */
mimeo_db *repl_ep_local_db(repl_ep *ep) { return ep->local ? ((local_ep *)ep)->db : NULL; }

static void local_free(repl_ep *ep) {
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
    .att_get = local_att_get,
    .put_atts = local_put_atts,
    .free = local_free,
};

int repl_ep_local_new(mimeo_env *env, const char *name, bool create, atomic_bool *cancel,
                      repl_ep **out, mimeo_err *err) {
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

void repl_ep_free(repl_ep *ep) {
    if (ep) ep->ops->free(ep);
}
