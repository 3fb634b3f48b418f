/* The replication request (POST /_replicate and _replicator document bodies): parsing it,
 * the replication id derived from it, and the small helpers the replicator's files share. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <nettle/md5.h>

#include "repl_int.h"

/* ---- helpers --------------------------------------------------------------------------- */
char *repl_strndup(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *repl_jval_text(const jval *v) {
    if (!v) return NULL;
    buf b;
    buf_init(&b, 0);
    if (json_put_jval(&b, v) != 0) {
        buf_destroy(&b);
        return NULL;
    }
    size_t n;
    return buf_detach(&b, &n);
}

void repl_err_from_resp(mimeo_err *err, const repl_resp *r, const char *what) {
    jval *v = NULL;
    const char *e = NULL, *reason = NULL;
    if (r->body.len > 0 && json_tree_parse(r->body.data, r->body.len, NULL, &v, NULL) == 0) {
        jval *je = jval_get(v, "error"), *jr = jval_get(v, "reason");
        if (je && je->type == JV_STRING) e = je->str;
        if (jr && jr->type == JV_STRING) reason = jr->str;
    }
    err_set(err, MIMEO_EIO, e ? e : "http_error_code", "%s: HTTP %ld%s%s", what,
                 r->status, reason ? ": " : "", reason ? reason : "");
    jval_free(v);
}

void repl_health_fail(repl_health *h, const repl_ep *who, const mimeo_err *e) {
    if (!h) return;
    pthread_mutex_lock(&h->lock);
    if (h->who != who) {
        h->who = who;
        h->since_ms = clock_ms();
    }
    snprintf(h->error, sizeof h->error, "%s: %s", e->error, e->reason);
    pthread_mutex_unlock(&h->lock);
}

void repl_health_ok(repl_health *h, const repl_ep *who) {
    if (!h) return;
    pthread_mutex_lock(&h->lock);
    if (h->who == who) h->who = NULL;
    pthread_mutex_unlock(&h->lock);
}

bool repl_health_get(repl_health *h, uint64_t min_ms, char *out, size_t n) {
    pthread_mutex_lock(&h->lock);
    bool bad = h->who && clock_ms() - h->since_ms >= min_ms;
    if (bad) snprintf(out, n, "%s", h->error);
    pthread_mutex_unlock(&h->lock);
    return bad;
}

void repl_resp_init(repl_resp *r) {
    r->status = 0;
    buf_init(&r->body, 0);
}

void repl_resp_destroy(repl_resp *r) {
    buf_destroy(&r->body);
}

void repl_rfc1123(char *out, size_t n) {
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    static const char *const wd[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *const mo[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    /* Not strftime: its day and month names follow the locale. */
    snprintf(out, n, "%s, %02d %s %04d %02d:%02d:%02d GMT", wd[tm.tm_wday], tm.tm_mday,
             mo[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* The form of a URL the replication id hashes: the password cut out of the userinfo, the
 * user kept (two users may see different documents). Kept byte for byte as ids were first
 * made, so checkpoints written by earlier versions still match. */
static char *repl_url_id_form(const char *url) {
    const char *scheme_end = strstr(url, "://");
    if (!scheme_end) return strdup(url);
    const char *auth = scheme_end + 3;
    const char *slash = strchr(auth, '/');
    const char *at = NULL;
    for (const char *q = auth; *q && (!slash || q < slash); q++)
        if (*q == '@') at = q;
    if (!at) return strdup(url);
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    buf b;
    buf_init(&b, 0);
    buf_put(&b, url, (size_t)(auth - url));
    buf_put(&b, auth, (size_t)((colon ? colon : at) - auth));
    buf_puts(&b, at);
    size_t n;
    return buf_detach(&b, &n);
}

/* A copy of url without anything between "://" and the last '@' of the authority: for text
 * libcurl cannot parse (a bad port, a stray space), which may still carry credentials and
 * is shown in errors and listings all the same. */
static char *repl_url_strip_userinfo(const char *url) {
    const char *sep = strstr(url, "://");
    if (!sep) return strdup(url);   /* a bare database name */
    const char *h = sep + 3;
    const char *end = h + strcspn(h, "/?#");
    const char *at = NULL;
    for (const char *p = h; p < end; p++)
        if (*p == '@') at = p;
    if (!at) return strdup(url);
    size_t head = (size_t)(h - url), tail = strlen(at + 1);
    char *out = malloc(head + tail + 1);
    if (!out) return NULL;
    memcpy(out, url, head);
    memcpy(out + head, at + 1, tail + 1);
    return out;
}

char *repl_url_display(const char *url) {
    /* libcurl's URL parser, not ours: whatever it would send credentials from, it strips
     * them from. A bare database name is not a URL and is shown as it is. */
    CURLU *u = curl_url();
    if (!u) return NULL;
    char *shown = NULL, *out = NULL;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_set(u, CURLUPART_USER, NULL, 0) != CURLUE_OK ||
        curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) != CURLUE_OK ||
        curl_url_set(u, CURLUPART_OPTIONS, NULL, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_URL, &shown, 0) != CURLUE_OK) {
        curl_url_cleanup(u);
        return repl_url_strip_userinfo(url);
    }
    curl_url_cleanup(u);
    /* CouchDB shows a database URL with its trailing slash: http://host:5984/db/ */
    size_t n = strlen(shown);
    bool query = strchr(shown, '?') != NULL;
    out = malloc(n + 2);
    if (out) {
        memcpy(out, shown, n + 1);
        if (!query && n > 0 && shown[n - 1] != '/') memcpy(out + n, "/", 2);
    }
    curl_free(shown);
    return out;
}

/* ---- parsing --------------------------------------------------------------------------- */
static bool repl_is_url(const char *s) {
    return strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
}

static void repl_spec_destroy(repl_ep_spec *s) {
    free(s->url);
    for (size_t i = 0; i < s->nheaders; i++) free(s->headers[i]);
    free(s->headers);
    free(s->user);
    free(s->password);
    free(s->cafile);
    memset(s, 0, sizeof *s);
}

static int repl_spec_parse(const jval *v, const char *which, repl_ep_spec *s, mimeo_err *err) {
    const jval *url = v;
    if (v && v->type == JV_OBJECT) url = jval_get(v, "url");
    if (!url || url->type != JV_STRING || url->len == 0) {
        err_set(err, MIMEO_EINVAL, "bad_request", "%s must be a URL, a database name "
                     "or an object with a url", which);
        return MIMEO_EINVAL;
    }
    s->url = repl_strndup(url->str, url->len);
    if (!s->url) goto nomem;
    s->local = !repl_is_url(s->url);
    if (s->local) {
        /* A bare name may carry a trailing slash from copy-and-paste. */
        size_t n = strlen(s->url);
        while (n > 1 && s->url[n - 1] == '/') s->url[--n] = '\0';
    }
    if (v->type != JV_OBJECT) return 0;
    const jval *vf = jval_get(v, "verify");
    if (vf && vf->type == JV_BOOL && !vf->boolean) s->no_verify = true;
    const jval *h = jval_get(v, "headers");
    if (h && h->type == JV_OBJECT && h->count > 0) {
        s->headers = calloc(h->count, sizeof *s->headers);
        if (!s->headers) goto nomem;
        for (size_t i = 0; i < h->count; i++) {
            if (h->items[i]->type != JV_STRING) continue;
            buf b;
            buf_init(&b, 0);
            if (buf_puts(&b, h->keys[i]) || buf_puts(&b, ": ") ||
                buf_put(&b, h->items[i]->str, h->items[i]->len)) {
                buf_destroy(&b);
                goto nomem;
            }
            size_t n;
            s->headers[s->nheaders++] = buf_detach(&b, &n);
        }
    }
    const jval *basic = jval_get(jval_get(v, "auth"), "basic");
    const jval *u = jval_get(basic, "username"), *p = jval_get(basic, "password");
    if (u && u->type == JV_STRING) {
        s->user = repl_strndup(u->str, u->len);
        s->password = p && p->type == JV_STRING ? repl_strndup(p->str, p->len) : strdup("");
        if (!s->user || !s->password) goto nomem;
    }
    return 0;
nomem:
    err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    return MIMEO_ENOMEM;
}

static bool repl_bool(const jval *o, const char *key) {
    const jval *v = jval_get(o, key);
    return v && v->type == JV_BOOL && v->boolean;
}

/* A tuning member: absent → def; a non-negative integer (or its decimal text, as CouchDB
 * takes it) → its value, capped at INT32_MAX; anything else is a bad request, not a silent
 * default (CouchDB fails "worker_processes": "a few" too). */
static int repl_uint(const jval *o, const char *key, unsigned def, unsigned *out,
                     mimeo_err *err) {
    const jval *v = jval_get(o, key);
    *out = def;
    if (!v || v->type == JV_NULL) return 0;
    int64_t n = -1;
    if (v->type == JV_STRING) {
        bool digits = v->len > 0 && v->len <= 18;
        for (size_t i = 0; digits && i < v->len; i++)
            digits = v->str[i] >= '0' && v->str[i] <= '9';
        if (digits) n = strtoll(v->str, NULL, 10);
    } else if (!jval_as_i64(v, &n)) {
        n = -1;
    }
    if (n < 0) {
        err_set(err, MIMEO_EINVAL, "bad_request", "%s must be a non-negative integer", key);
        return MIMEO_EINVAL;
    }
    *out = n > 0x7fffffff ? 0x7fffffffu : (unsigned)n;
    return 0;
}

static int repl_cmp_str(const void *a, const void *b) {
    const jval *x = *(const jval *const *)a, *y = *(const jval *const *)b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->str, y->str, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

int repl_req_parse(const char *json, size_t len, repl_req *r, mimeo_err *err) {
    memset(r, 0, sizeof *r);
    jval *v = NULL;
    int rc = json_tree_parse(json, len, NULL, &v, err);
    if (rc) return rc;
    if (v->type != JV_OBJECT) {
        err_set(err, MIMEO_EINVAL, "bad_request", "the request must be a JSON object");
        rc = MIMEO_EINVAL;
        goto out;
    }
    r->continuous = repl_bool(v, "continuous");
    r->create_target = repl_bool(v, "create_target");
    r->cancel = repl_bool(v, "cancel");
    if ((rc = repl_uint(v, "checkpoint_interval", REPL_CKPT_INTERVAL_MS,
                        &r->checkpoint_interval_ms, err)) != 0 ||
        (rc = repl_uint(v, "retries_per_request", REPL_RETRIES, &r->retries, err)) != 0 ||
        (rc = repl_uint(v, "connection_timeout", REPL_CONNECT_TIMEOUT_MS, &r->connect_ms,
                        err)) != 0 ||
        (rc = repl_uint(v, "worker_batch_size", REPL_BATCH_SIZE, &r->batch_size, err)) != 0 ||
        (rc = repl_uint(v, "worker_processes", REPL_WORKERS, &r->workers, err)) != 0)
        goto out;
    if (r->batch_size == 0) r->batch_size = REPL_BATCH_SIZE;
    if (r->batch_size > 10000) r->batch_size = 10000;
    if (r->workers == 0) r->workers = 1;
    /* Each worker is a thread: a client must not be able to ask for dozens per job. */
    if (r->workers > 8) r->workers = 8;
    if (r->checkpoint_interval_ms == 0) r->checkpoint_interval_ms = REPL_CKPT_INTERVAL_MS;
    int64_t max_resp;
    const jval *mr = jval_get(v, "max_response_size");
    if (mr && (!jval_as_i64(mr, &max_resp) || max_resp < 1024)) {
        err_set(err, MIMEO_EINVAL, "bad_request",
                "max_response_size must be an integer of at least 1024 (bytes)");
        rc = MIMEO_EINVAL;
        goto out;
    }
    if (mr) r->max_response = (size_t)max_resp;

    const jval *rid = jval_get(v, "replication_id");
    if (rid && rid->type == JV_STRING) {
        r->replication_id = repl_strndup(rid->str, rid->len);
        if (!r->replication_id) goto nomem;
    }
    bool need_ends = !(r->cancel && r->replication_id);
    if (need_ends || jval_get(v, "source")) {
        if ((rc = repl_spec_parse(jval_get(v, "source"), "source", &r->source, err)) != 0)
            goto out;
        if ((rc = repl_spec_parse(jval_get(v, "target"), "target", &r->target, err)) != 0)
            goto out;
        /* A top-level "verify": false covers both ends. */
        const jval *vf = jval_get(v, "verify");
        if (vf && vf->type == JV_BOOL && !vf->boolean)
            r->source.no_verify = r->target.no_verify = true;
    }

    const jval *filter = jval_get(v, "filter");
    const jval *ids = jval_get(v, "doc_ids");
    if ((rc = repl_filter_parse(v, &r->filter, err)) != 0) goto out;
    if (repl_filter_on(&r->filter) && ids && ids->type != JV_NULL) {
        err_set(err, MIMEO_EINVAL, "bad_request",
                "`doc_ids`, `filter`, `selector` are mutually exclusive");
        rc = MIMEO_EINVAL;
        goto out;
    }
    if (ids && ids->type != JV_NULL) {
        if (ids->type != JV_ARRAY) {
            err_set(err, MIMEO_EINVAL, "bad_request", "doc_ids must be an array");
            rc = MIMEO_EINVAL;
            goto out;
        }
        for (size_t i = 0; i < ids->count; i++)
            if (ids->items[i]->type != JV_STRING) {
                err_set(err, MIMEO_EINVAL, "bad_request",
                             "doc_ids must be an array of strings");
                rc = MIMEO_EINVAL;
                goto out;
            }
        /* Sorted, so that the same set in another order is the same replication. */
        qsort(ids->items, ids->count, sizeof ids->items[0], repl_cmp_str);
        if (!(r->doc_ids = repl_jval_text(ids))) goto nomem;
    } else if (filter && filter->type == JV_STRING && strcmp(filter->str, "_doc_ids") == 0) {
        err_set(err, MIMEO_EINVAL, "bad_request", "filter _doc_ids needs doc_ids");
        rc = MIMEO_EINVAL;
        goto out;
    }
    const jval *since = jval_get(v, "since_seq");
    if (since && since->type != JV_NULL && !(r->since_seq = repl_jval_text(since))) goto nomem;
    rc = 0;
    goto out;
nomem:
    err_set(err, MIMEO_ENOMEM, "error", "out of memory");
    rc = MIMEO_ENOMEM;
out:
    jval_free(v);
    if (rc) repl_req_destroy(r);
    return rc;
}

void repl_req_destroy(repl_req *r) {
    repl_spec_destroy(&r->source);
    repl_spec_destroy(&r->target);
    free(r->doc_ids);
    repl_filter_destroy(&r->filter);
    free(r->since_seq);
    free(r->replication_id);
    memset(r, 0, sizeof *r);
}

/* What the id hashes for one side: the URL without its password plus the basic-auth user
 * (two users may see different documents), or the node's uuid and the local name. */
static void repl_id_side(struct md5_ctx *md, mimeo_env *env, const repl_ep_spec *s) {
    if (s->local) {
        const char *uuid = env ? mimeo_env_uuid(env) : "";
        md5_update(md, 6, (const uint8_t *)"local:");
        md5_update(md, strlen(uuid), (const uint8_t *)uuid);
        md5_update(md, 1, (const uint8_t *)"/");
        md5_update(md, strlen(s->url), (const uint8_t *)s->url);
    } else {
        char *d = repl_url_id_form(s->url ? s->url : "");
        size_t n = d ? strlen(d) : 0;
        while (n > 0 && d[n - 1] == '/') n--;
        if (d) md5_update(md, n, (const uint8_t *)d);
        free(d);
        if (s->user) {
            md5_update(md, 6, (const uint8_t *)"|user=");
            md5_update(md, strlen(s->user), (const uint8_t *)s->user);
        }
    }
    md5_update(md, 1, (const uint8_t *)"\n");
}

/* The source text of filter "ddoc/name" in a local source, hashed as CouchDB hashes the
 * filter's code into the replication id (so an edited filter starts over). A remote
 * source's code is not fetched for the id: its name and query_params count. */
static void repl_id_filter_code(struct md5_ctx *md, mimeo_env *env, const repl_req *r) {
    const char *name = r->filter.name;
    const char *slash = name ? strchr(name, '/') : NULL;
    if (!env || !r->source.local || !slash || name[0] == '_') return;
    mimeo_db *db = NULL;
    if (mimeo_db_open(env, r->source.url, &db, NULL) != 0) return;
    char id[512];
    int n = snprintf(id, sizeof id, "_design/%.*s", (int)(slash - name), name);
    mimeo_cursor *cur = NULL;
    const mimeo_row *row = NULL;
    jval *doc = NULL;
    if (n > 0 && (size_t)n < sizeof id && mimeo_doc_open(db, id, (size_t)n, NULL, &cur, NULL) == 0 &&
        mimeo_cursor_next(cur, &row, NULL) == 0 && row &&
        json_tree_parse(row->json, row->json_len, NULL, &doc, NULL) == 0) {
        const jval *code = jval_get(jval_get(doc, "filters"), slash + 1);
        if (code && code->type == JV_STRING) {
            md5_update(md, 5, (const uint8_t *)"code:");
            md5_update(md, code->len, (const uint8_t *)code->str);
        }
    }
    jval_free(doc);
    mimeo_cursor_close(cur);
    mimeo_db_close(db);
}

void repl_req_id(mimeo_env *env, const repl_req *r, char out[33]) {
    struct md5_ctx md;
    md5_init(&md);
    md5_update(&md, 8, (const uint8_t *)"mimeo/1\n");
    repl_id_side(&md, env, &r->source);
    repl_id_side(&md, env, &r->target);
    if (r->doc_ids) {
        md5_update(&md, 8, (const uint8_t *)"doc_ids:");
        md5_update(&md, strlen(r->doc_ids), (const uint8_t *)r->doc_ids);
    }
    /* As CouchDB's: a changed selector, filter or query_params is another replication. */
    if (r->filter.selector) {
        md5_update(&md, 9, (const uint8_t *)"selector:");
        md5_update(&md, strlen(r->filter.selector), (const uint8_t *)r->filter.selector);
    }
    if (r->filter.name) {
        md5_update(&md, 7, (const uint8_t *)"filter:");
        md5_update(&md, strlen(r->filter.name) + 1, (const uint8_t *)r->filter.name);
        if (r->filter.query_params)
            md5_update(&md, strlen(r->filter.query_params),
                       (const uint8_t *)r->filter.query_params);
        repl_id_filter_code(&md, env, r);
    }
    uint8_t digest[MD5_DIGEST_SIZE];
    md5_digest(&md, sizeof digest, digest);
    hex_encode(digest, sizeof digest, out);
}
