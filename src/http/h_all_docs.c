/* GET/POST /{db}/_all_docs and /{db}/_design_docs, streamed. Range mode pages through the
 * library HTTP_PAGE_ROWS rows at a time, restarting each page at the last id seen (that row
 * is recognised and dropped when it comes again, so a concurrent delete cannot make a page
 * skip a row); keys mode feeds the keys in slices. Either way a 100k-row reply costs one
 * page of memory.
 *   {"total_rows":N,"offset":O,["update_seq":S,]"rows":[\n row,\n row \n]}\n */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

typedef struct http_rows {
    mimeo_db           *db;           /* owned: taken over from the request */
    mimeo_all_docs_opts opts;         /* the request's options */
    jval               *trees[2];     /* own the strings opts point into */
    http_string_list    keys;         /* keys mode: the keys asked for */
    size_t              key_next;
    bool                keys_mode;
    bool                limited;
    uint64_t            remaining;
    uint64_t            skip_left;    /* keys mode applies skip itself */
    bool                first_page;
    bool                at_end;
    bool                skip_dup;     /* drop the first row if it repeats last_prefix */
    uint64_t            rows_total;
    uint64_t            page_raw;     /* rows the library delivered this page */
    buf                 last_prefix;  /* `{"id":"<escaped id>"` of the last row sent */
    buf                 start;        /* decoded last id: the next page's startkey */
    bool                done;
    buf                 out;
    size_t              pos;
} http_rows;

static void http_rows_free(void *cls)
{
    http_rows *s = cls;
    if (s->db) mimeo_db_close(s->db);
    for (int i = 0; i < 2; i++) if (s->trees[i]) jval_free(s->trees[i]);
    http_string_list_destroy(&s->keys);
    buf_destroy(&s->last_prefix);
    buf_destroy(&s->start);
    buf_destroy(&s->out);
    free(s);
}

/* Length of the `{"id":"…"` prefix of a row, 0 if the row does not start that way. */
static size_t http_row_id_prefix(const char *json, size_t len)
{
    static const char pat[] = "{\"id\":\"";
    const size_t pl = sizeof pat - 1;
    if (len < pl || memcmp(json, pat, pl) != 0) return 0;
    for (size_t i = pl; i < len; i++) {
        if (json[i] == '\\') { i++; continue; }
        if (json[i] == '"') return i + 1;
    }
    return 0;
}

static int http_rows_put(http_rows *s, const char *json, size_t len)
{
    if (s->rows_total++ > 0 && buf_puts(&s->out, ",\n") != 0) return MIMEO_ENOMEM;
    return buf_put(&s->out, json, len);
}

static int http_rows_row(void *ctx, const char *json, size_t len)
{
    http_rows *s = ctx;
    s->page_raw++;
    if (s->keys_mode) {
        if (s->skip_left > 0) { s->skip_left--; return 0; }
        if (s->limited && s->remaining == 0) return 1;
        if (s->limited) s->remaining--;
        return http_rows_put(s, json, len);
    }
    size_t pl = http_row_id_prefix(json, len);
    if (s->skip_dup && s->page_raw == 1 && pl && pl == s->last_prefix.len &&
        memcmp(json, s->last_prefix.data, pl) == 0)
        return 0;
    if (s->limited && s->remaining == 0) return 1;
    if (s->limited) s->remaining--;
    buf_reset(&s->last_prefix);
    if (pl && buf_put(&s->last_prefix, json, pl) != 0) return MIMEO_ENOMEM;
    return http_rows_put(s, json, len);
}

/* Decodes the id in last_prefix into start (the next page's startkey). */
static int http_rows_next_start(http_rows *s)
{
    if (s->last_prefix.len < 8) return MIMEO_EINVAL;
    const char *str = s->last_prefix.data + 6;            /* the opening quote */
    size_t n = s->last_prefix.len - 6;
    jval *t = NULL;
    json_error e = {0};
    json_limits lim = { 4, 2 * MIMEO_ID_MAX };
    int rc = json_tree_parse(str, n, &lim, &t, &e);
    if (rc != 0 || !t || t->type != JV_STRING) {
        if (t) jval_free(t);
        return rc ? rc : MIMEO_EINVAL;
    }
    buf_reset(&s->start);
    rc = buf_put(&s->start, t->str, t->len);
    jval_free(t);
    return rc;
}

/* Fetches the next page into s->out. */
static int http_rows_page(http_rows *s, mimeo_err *e)
{
    mimeo_all_docs_opts o = s->opts;
    s->page_raw = 0;
    if (s->keys_mode) {
        size_t n = s->keys.count - s->key_next;
        if (n > HTTP_PAGE_ROWS) n = HTTP_PAGE_ROWS;
        o.keys = s->keys.strs + s->key_next;
        o.key_lens = s->keys.lens + s->key_next;
        o.key_count = n;
        o.skip = 0;
        o.limit = 0;
        o.limit_zero = false;
        s->key_next += n;
        int rc = n ? mimeo_all_docs(s->db, &o, http_rows_row, s, e) : 0;
        if (rc < 0) return rc;
        s->at_end = s->key_next >= s->keys.count || (s->limited && s->remaining == 0);
        s->first_page = false;
        return 0;
    }
    uint64_t page = HTTP_PAGE_ROWS;
    if (s->limited && s->remaining < page) page = s->remaining;
    if (!s->first_page) {
        o.startkey = s->start.data;
        o.startkey_len = s->start.len;
        o.skip = 0;
        s->skip_dup = true;
        page += 1;   /* room for the repeated row */
    }
    o.limit = page;
    o.limit_zero = page == 0;
    int rc = mimeo_all_docs(s->db, &o, http_rows_row, s, e);
    if (rc < 0) return rc;
    s->first_page = false;
    s->at_end = o.limit_zero || s->page_raw < page || (s->limited && s->remaining == 0);
    if (!s->at_end && (rc = http_rows_next_start(s)) != 0) {
        fprintf(stderr, "mimeo: _all_docs: cannot continue after a row; reply truncated\n");
        return rc;
    }
    return 0;
}

static ssize_t http_rows_read(void *cls, uint64_t pos, char *dst, size_t max)
{
    http_rows *s = cls;
    (void)pos;
    for (;;) {
        size_t n = http_drain(&s->out, &s->pos, dst, max);
        if (n > 0) return (ssize_t)n;
        if (s->done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (s->at_end) {
            buf_puts(&s->out, "\n]}\n");
            s->done = true;
            continue;
        }
        mimeo_err e = {0};
        if (http_rows_page(s, &e) != 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

/* ---- parameters ------------------------------------------------------------------------- */
static int http_count_row(void *ctx, const char *json, size_t len)
{
    (void)json; (void)len;
    (*(uint64_t *)ctx)++;
    return 0;
}

/* offset: rows before the first one the range would return (then skip). */
static uint64_t http_rows_offset(http_rows *s)
{
    if (!s->opts.startkey) return s->opts.skip;
    mimeo_all_docs_opts o = {0};
    o.descending = s->opts.descending;
    o.endkey = s->opts.startkey;
    o.endkey_len = s->opts.startkey_len;
    o.inclusive_end = false;
    uint64_t n = 0;
    if (mimeo_all_docs(s->db, &o, http_count_row, &n, NULL) < 0) n = 0;
    return n + s->opts.skip;
}

/* A key parameter: a JSON string in the query (or for *_docid forms a raw string). */
static int http_key_param(http_req *r, http_rows *s, int slot, const char *name,
                          const char *alt, const char *docid_name, const char **out,
                          size_t *out_len)
{
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

static bool http_rows_keys(http_req *r, http_rows *s)
{
    int rc = http_arg_string_list(r, "keys", "query_parse_error",
                                  "`keys` must be an array of strings", &s->keys);
    if (rc < 0) return false;
    s->keys_mode = rc == 1;
    return true;
}

/* Request-owned strings the stream needs after the request context is gone. */
static jval *http_own_string(const char *p, size_t n)
{
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

static void http_all_docs_common(http_req *r, bool design_only)
{
    if (!http_db(r)) return;
    http_rows *s = calloc(1, sizeof *s);
    if (!s) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    buf_init(&s->out, 0);
    buf_init(&s->last_prefix, 0);
    buf_init(&s->start, 0);
    s->first_page = true;
    mimeo_all_docs_opts *o = &s->opts;
    o->inclusive_end = true;
    bool update_seq = false, ignored = false;
    uint64_t limit = 0;
    int has_limit = 0, rc;

    if (http_arg_bool(r, "descending", &o->descending) < 0 ||
        http_arg_bool(r, "inclusive_end", &o->inclusive_end) < 0 ||
        http_arg_bool(r, "include_docs", &o->include_docs) < 0 ||
        http_arg_bool(r, "conflicts", &o->conflicts) < 0 ||
        http_arg_bool(r, "update_seq", &update_seq) < 0 ||
        http_arg_bool(r, "attachments", &ignored) < 0 ||
        (has_limit = http_arg_u64(r, "limit", &limit)) < 0 ||
        http_arg_u64(r, "skip", &o->skip) < 0 || !http_rows_keys(r, s))
        goto fail;
    s->limited = has_limit > 0;
    s->remaining = limit;

    if (!s->keys_mode) {
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
    s->skip_left = s->keys_mode ? o->skip : 0;

    mimeo_db_info info;
    if ((rc = mimeo_db_info_get(r->db, &info)) != 0) {
        http_reply_err(r, rc, NULL);
        goto fail;
    }
    /* The stream takes the db handle: it outlives the request context's use of it. */
    s->db = r->db;
    r->db = NULL;
    buf_printf(&s->out, "{\"total_rows\":%" PRIu64 ",\"offset\":", info.doc_count);
    if (s->keys_mode) buf_puts(&s->out, "null");
    else buf_printf(&s->out, "%" PRIu64, http_rows_offset(s));
    if (update_seq) buf_printf(&s->out, ",\"update_seq\":%" PRIu64, info.update_seq);
    buf_puts(&s->out, ",\"rows\":[\n");

    /* The first page now, so an error can still be a proper error reply. */
    mimeo_err e = {0};
    if ((rc = http_rows_page(s, &e)) != 0) {
        http_reply_err(r, rc, &e);
        goto fail;
    }
    http_reply_stream(r, 200, NULL, http_rows_read, s, http_rows_free);
    return;
oom:
    http_reply_err(r, MIMEO_ENOMEM, NULL);
fail:
    http_rows_free(s);
}

void http_h_all_docs(http_req *r)
{
    http_all_docs_common(r, false);
}

void http_h_design_docs(http_req *r)
{
    http_all_docs_common(r, true);
}
