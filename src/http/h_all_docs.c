/* GET/POST /{db}/_all_docs and /{db}/_design_docs, streamed. One library cursor serves the
 * whole reply in range and keys mode alike (skip, limit, descending included): it reads in
 * bounded slices and keeps its place, so a 100k-row reply costs one slice of memory and
 * this file does no paging of its own. Rows are written from the cursor's fields.
 *   {"total_rows":N,"offset":O,["update_seq":S,]"rows":[\n row,\n row \n]}\n */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

/* The request's options, and what owns the strings they point into (the reply's rows are
 * written after the request context is gone). */
typedef struct http_rows {
    mimeo_all_docs_opts opts;
    jval               *trees[2];     /* startkey, endkey */
    http_string_list    keys;         /* keys mode: the keys asked for */
    bool                keys_mode;
    mimeo_db           *db;           /* borrowed from the reply, for attachments */
    bool                attachments;  /* attachments=true: inline their data */
    buf                 att_hold;
} http_rows;

static void http_rows_free(void *cls) {
    http_rows *s = cls;
    for (int i = 0; i < 2; i++) if (s->trees[i]) jval_free(s->trees[i]);
    http_string_list_destroy(&s->keys);
    buf_destroy(&s->att_hold);
    free(s);
}

static int http_rows_put(void *ctx, buf *b, const mimeo_row *row) {
    http_rows *s = ctx;
    mimeo_row shown = *row;
    int rc;
    if (s->attachments && s->opts.include_docs &&
        (rc = http_att_inline_row(s->db, row, &shown, &s->att_hold)) != 0)
        return rc;
    return http_put_all_docs_row(b, &shown, s->opts.include_docs, s->opts.conflicts);
}

/* ---- parameters ------------------------------------------------------------------------- */
/* offset: rows before the first one the range would return (then skip). */
static uint64_t http_rows_offset(mimeo_db *db, http_rows *s) {
    if (!s->opts.startkey) return s->opts.skip;
    mimeo_all_docs_opts o = {0};
    o.descending = s->opts.descending;
    o.endkey = s->opts.startkey;
    o.endkey_len = s->opts.startkey_len;
    o.inclusive_end = false;
    uint64_t n = 0;
    mimeo_cursor *cur;
    if (mimeo_all_docs_open(db, &o, &cur, NULL) == 0) {
        const mimeo_row *row;
        while (mimeo_cursor_next(cur, &row, NULL) == 0 && row) n++;
        mimeo_cursor_close(cur);
    }
    return n + s->opts.skip;
}

/* A key parameter: a JSON string in the query (or for *_docid forms a raw string). */
static int http_key_param(http_req *r, http_rows *s, int slot, const char *name,
                          const char *alt, const char *docid_name, const char **out,
                          size_t *out_len) {
    jval *t = NULL;
    int rc = http_arg_json_str(r, name, &t);
    if (rc == 0 && alt) rc = http_arg_json_str(r, alt, &t);
    if (rc < 0) return -1;
    if (rc > 0) {
        s->trees[slot] = t;
        *out = t->str;
        *out_len = t->len;
        return 1;
    }
    size_t n;
    const char *v = docid_name ? http_arg_get(r, docid_name, &n) : NULL;
    if (v) {
        *out = v;           /* lives in the request... copied below */
        *out_len = n;
        return 2;
    }
    return 0;
}

static bool http_rows_keys(http_req *r, http_rows *s) {
    int rc = http_arg_string_list(r, "keys", "query_parse_error",
                                  "`keys` must be an array of strings", &s->keys);
    if (rc < 0) return false;
    s->keys_mode = rc == 1;
    return true;
}

/* Request-owned strings the stream needs after the request context is gone. */
static jval *http_own_string(const char *p, size_t n) {
    jval *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->type = JV_STRING;
    t->str = malloc(n + 1);
    if (!t->str) { free(t); return NULL; }
    memcpy(t->str, p, n);
    t->str[n] = '\0';
    t->len = n;
    return t;
}

static void http_all_docs_common(http_req *r, bool design_only) {
    if (!http_db(r)) return;
    http_rows *s = calloc(1, sizeof *s);
    if (!s) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    buf open;
    buf_init(&open, 0);
    mimeo_all_docs_opts *o = &s->opts;
    o->inclusive_end = true;
    bool update_seq = false;
    uint64_t limit = 0;
    int has_limit = 0, rc;

    if (http_arg_bool(r, "descending", &o->descending) < 0 ||
        http_arg_bool(r, "inclusive_end", &o->inclusive_end) < 0 ||
        http_arg_bool(r, "include_docs", &o->include_docs) < 0 ||
        http_arg_bool(r, "conflicts", &o->conflicts) < 0 ||
        http_arg_bool(r, "update_seq", &update_seq) < 0 ||
        http_arg_bool(r, "attachments", &s->attachments) < 0 ||
        (has_limit = http_arg_u64(r, "limit", &limit)) < 0 ||
        http_arg_u64(r, "skip", &o->skip) < 0 || !http_rows_keys(r, s))
        goto fail;
    o->limit = limit;
    o->limit_zero = has_limit > 0 && limit == 0;

    if (s->keys_mode && s->keys.count > 0) {
        static const char *const ranged[] = {"key", "startkey", "start_key", "endkey", "end_key"};
        for (size_t i = 0; i < sizeof ranged / sizeof ranged[0]; i++) {
            size_t n;
            if (http_arg_get(r, ranged[i], &n)) {
                http_reply_error(r, 400, "query_parse_error",
                                 "`keys` is incompatible with `key`, `start_key` and `end_key`");
                goto fail;
            }
        }
    }
    if (s->keys_mode) {
        o->keys = s->keys.strs;
        o->key_lens = s->keys.lens;
        o->key_count = s->keys.count;
        /* An empty list is still keys mode: no rows. */
        static const char *const none[1] = {""};
        if (!o->keys) o->keys = none;
    } else {
        jval *key = NULL;
        if ((rc = http_arg_json_str(r, "key", &key)) < 0) goto fail;
        if (rc > 0) {
            s->trees[0] = key;
            o->startkey = o->endkey = key->str;
            o->startkey_len = o->endkey_len = key->len;
            o->inclusive_end = true;
        } else {
            const char *k;
            size_t kl;
            rc = http_key_param(r, s, 0, "startkey", "start_key", "startkey_docid", &k, &kl);
            if (rc == 0) rc = http_key_param(r, s, 0, "startkey", NULL, "start_key_doc_id",
                                             &k, &kl);
            if (rc < 0) goto fail;
            if (rc == 2 && !(s->trees[0] = http_own_string(k, kl))) goto oom;
            if (rc > 0) { o->startkey = s->trees[0]->str; o->startkey_len = kl; }
            rc = http_key_param(r, s, 1, "endkey", "end_key", "endkey_docid", &k, &kl);
            if (rc == 0) rc = http_key_param(r, s, 1, "endkey", NULL, "end_key_doc_id",
                                             &k, &kl);
            if (rc < 0) goto fail;
            if (rc == 2 && !(s->trees[1] = http_own_string(k, kl))) goto oom;
            if (rc > 0) { o->endkey = s->trees[1]->str; o->endkey_len = kl; }
        }
        if (design_only) {
            /* _design_docs: the range clamped to ids "_design/" … "_design0" ('0' follows
             * '/' in byte order). */
            static const char lo[] = "_design/", hi[] = "_design0";
            const char **first = o->descending ? &o->endkey : &o->startkey;
            size_t *first_len = o->descending ? &o->endkey_len : &o->startkey_len;
            const char **last = o->descending ? &o->startkey : &o->endkey;
            size_t *last_len = o->descending ? &o->startkey_len : &o->endkey_len;
            if (!*first || strcmp(*first, lo) < 0) { *first = lo; *first_len = 8; }
            if (!*last || strcmp(*last, hi) > 0) {
                *last = hi; *last_len = 8;
                if (!o->descending) o->inclusive_end = false;
            }
        }
    }

    mimeo_db_info info;
    if ((rc = mimeo_db_info_get(r->db, &info)) != 0) {
        http_reply_err(r, rc, NULL);
        goto fail;
    }
    rc = buf_printf(&open, "{\"total_rows\":%" PRIu64 ",\"offset\":", info.doc_count);
    if (s->keys_mode) rc |= buf_puts(&open, "null");
    else rc |= buf_printf(&open, "%" PRIu64, http_rows_offset(r->db, s));
    if (update_seq) rc |= buf_printf(&open, ",\"update_seq\":%" PRIu64, info.update_seq);
    rc |= buf_puts(&open, ",\"rows\":[\n");
    if (rc) goto oom;

    mimeo_err e = {0};
    mimeo_cursor *cur = NULL;
    if ((rc = mimeo_all_docs_open(r->db, o, &cur, &e)) != 0) {
        http_reply_err(r, rc, &e);
        goto fail;
    }
    /* The reply takes the cursor, the db handle and s: they outlive the request context. */
    s->db = r->db;
    http_reply_rows(r, 200, cur, buf_cstr(&open), ",\n", "\n]}\n", http_rows_put, s,
                    http_rows_free);
    buf_destroy(&open);
    return;
oom:
    http_reply_err(r, MIMEO_ENOMEM, NULL);
fail:
    buf_destroy(&open);
    http_rows_free(s);
}

void http_h_all_docs(http_req *r) {
    http_all_docs_common(r, false);
}

void http_h_design_docs(http_req *r) {
    http_all_docs_common(r, true);
}
