/* Request targets: path segments and query arguments, and typed access to arguments.
 * The path is split on raw '/' first and each segment decoded afterwards, so "a%2Fb" stays
 * one segment (a database or document name with a slash); '+' in a path is a plus. In the
 * query string '+' means space, as in CouchDB's own parser (clients send %2B for a plus).
 * Everything here takes bytes from the network: nothing may crash or overrun. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

/* The name h_session.c knows; the decoder itself is shared (src/common/buf.h). */
size_t http_pct_decode(char *p, size_t n, bool plus_space) {
    return pct_decode(p, n, plus_space);
}

/* Path: "/a/b%2Fc/" → ["a", "b/c"]. A trailing slash adds no segment ("/db/" is "/db"). */
static void http_split_path(http_req *r, char *p, size_t n) {
    size_t i = 0;
    if (n > 0 && p[0] == '/') i = 1;
    while (i < n) {
        size_t start = i;
        while (i < n && p[i] != '/') i++;
        size_t len = i - start;
        if (len == 0 && i >= n) break;           /* nothing after the final slash */
        if (r->nseg < HTTP_MAX_SEGS) {
            size_t dl = pct_decode(p + start, len, false);
            if (dl == (size_t)-1) { r->url_bad = true; dl = 0; }
            p[start + dl] = '\0';
            r->seg[r->nseg] = p + start;
            r->seg_len[r->nseg] = dl;
        } else if (r->nseg == HTTP_MAX_SEGS) {
            r->seg_rest = p + start;   /* the raw rest of the path (attachment names) */
        }
        r->nseg++;
        if (i < n) i++;   /* skip the '/' */
    }
}

static void http_split_query(http_req *r, char *p, size_t n) {
    size_t i = 0;
    while (i < n) {
        size_t start = i;
        while (i < n && p[i] != '&' && p[i] != ';') i++;
        size_t end = i;
        if (i < n) i++;
        if (end == start) continue;
        size_t eq = start;
        while (eq < end && p[eq] != '=') eq++;
        if (r->nargs >= r->args_cap) continue;   /* ignored, like unknown arguments */
        http_arg *a = &r->args[r->nargs];
        size_t kl = pct_decode(p + start, eq - start, true);
        size_t vl = 0;
        char *v = p + end;                          /* empty value: point at a NUL */
        if (eq < end) {
            v = p + eq + 1;
            vl = pct_decode(v, end - eq - 1, true);
        }
        if (kl == (size_t)-1 || vl == (size_t)-1) { r->url_bad = true; continue; }
        p[start + kl] = '\0';
        v[vl] = '\0';
        a->key = p + start;
        a->key_len = kl;
        a->val = v;
        a->val_len = vl;
        r->nargs++;
    }
}

static void http_url_parse(http_req *r, const char *target, size_t n) {
    /* Clients never send a fragment, so '#' is an ordinary (if unusual) byte here. */
    memcpy(r->raw, target, n + 1);
    char *q = memchr(r->raw, '?', n);
    size_t path_len = q ? (size_t)(q - r->raw) : n;
    if (q) {
        *q = '\0';
        http_split_query(r, q + 1, n - path_len - 1);
    }
    http_split_path(r, r->raw, path_len);
}

http_req *http_req_new(const char *target) {
    size_t n = strlen(target);
    /* Every argument ends at a separator or the end: this bounds the count. */
    size_t nargs = 0;
    const char *q = memchr(target, '?', n);
    if (q) {
        nargs = 1;
        for (const char *p = q + 1; *p && nargs < HTTP_MAX_ARGS; p++)
            if (*p == '&' || *p == ';') nargs++;
    }
    http_req *r = calloc(1, sizeof *r + nargs * sizeof(http_arg) + n + 1);
    if (!r) return NULL;
    r->args = (http_arg *)(r + 1);
    r->args_cap = nargs;
    r->raw = (char *)(r->args + nargs);
    http_url_parse(r, target, n);
    return r;
}

const char *http_arg_get(const http_req *r, const char *name, size_t *len) {
    for (size_t i = 0; i < r->nargs; i++) {
        if (strcmp(r->args[i].key, name) == 0) {
            if (len) *len = r->args[i].val_len;
            return r->args[i].val;
        }
    }
    return NULL;
}

static void http_arg_error(http_req *r, const char *error, const char *fmt, const char *name,
                           const char *val) {
    char reason[MIMEO_ERR_REASON_MAX];
    char shown[64];
    snprintf(shown, sizeof shown, "%s", val ? val : "");
    snprintf(reason, sizeof reason, fmt, name, shown);
    http_reply_error(r, 400, error, reason);
}

int http_arg_bool(http_req *r, const char *name, bool *out) {
    size_t n;
    const char *v = http_arg_get(r, name, &n);
    if (!v) return 0;
    if (n == 4 && memcmp(v, "true", 4) == 0) { *out = true; return 1; }
    if (n == 5 && memcmp(v, "false", 5) == 0) { *out = false; return 1; }
    http_arg_error(r, "query_parse_error", "Invalid boolean parameter %s: \"%s\"", name, v);
    return -1;
}

int http_arg_u64(http_req *r, const char *name, uint64_t *out) {
    size_t n;
    const char *v = http_arg_get(r, name, &n);
    if (!v) return 0;
    uint64_t x = 0;
    bool ok = n > 0 && n <= 19;
    for (size_t i = 0; ok && i < n; i++) {
        if (v[i] < '0' || v[i] > '9') ok = false;
        else x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (!ok) {
        http_arg_error(r, "query_parse_error",
                       "Invalid value for %s: \"%s\" (expected a non-negative integer)", name, v);
        return -1;
    }
    *out = x;
    return 1;
}

int http_arg_json(http_req *r, const char *name, jval **out) {
    size_t n;
    const char *v = http_arg_get(r, name, &n);
    if (!v) return 0;
    json_error e = {0};
    jval *t = NULL;
    if (json_tree_parse(v, n, &r->srv->limits, &t, &e) != 0 || !t) {
        if (t) jval_free(t);
        http_arg_error(r, "query_parse_error", "Invalid JSON value for %s: %s", name, v);
        return -1;
    }
    *out = t;
    return 1;
}

int http_arg_json_str(http_req *r, const char *name, jval **out) {
    jval *t = NULL;
    int rc = http_arg_json(r, name, &t);
    if (rc <= 0) return rc;
    if (t->type != JV_STRING) {
        jval_free(t);
        http_arg_error(r, "query_parse_error", "%s must be a JSON string, got: %s", name,
                       http_arg_get(r, name, NULL));
        return -1;
    }
    *out = t;
    return 1;
}

int http_arg_string_list(http_req *r, const char *name, const char *error, const char *reason,
                         http_string_list *out) {
    memset(out, 0, sizeof *out);
    jval *t = NULL;
    const jval *list = NULL;
    /* A POST body's member wins over the query, as CouchDB reads it. */
    if (r->method == HTTP_POST && r->body.len > 0) {
        json_error je = {0};
        if (json_tree_parse(r->body.data, r->body.len, &r->srv->limits, &t, &je) != 0 || !t) {
            if (t) jval_free(t);
            http_reply_err(r, je.code ? je.code : MIMEO_EBADJSON, &je);
            return -1;
        }
        list = jval_get(t, name);
        if (!list) {
            jval_free(t);
            t = NULL;
        }
    }
    if (!list) {
        int rc = http_arg_json(r, name, &t);
        if (rc <= 0) return rc;
        list = t;
    }
    bool good = list->type == JV_ARRAY;
    for (size_t i = 0; good && i < list->count; i++)
        good = list->items[i]->type == JV_STRING;
    if (!good) {
        jval_free(t);
        http_reply_error(r, 400, error, reason);
        return -1;
    }
    size_t n = list->count;
    out->strs = calloc(n ? n : 1, sizeof *out->strs);
    out->lens = calloc(n ? n : 1, sizeof *out->lens);
    if (!out->strs || !out->lens) {
        free(out->strs);
        free(out->lens);
        jval_free(t);
        memset(out, 0, sizeof *out);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        out->strs[i] = list->items[i]->str;
        out->lens[i] = list->items[i]->len;
    }
    out->count = n;
    out->tree = t;
    return 1;
}

void http_string_list_destroy(http_string_list *l) {
    free(l->strs);
    free(l->lens);
    if (l->tree) jval_free(l->tree);
    memset(l, 0, sizeof *l);
}

bool http_list_has(const char *list, const char *s, size_t n) {
    const char *p = list;
    while (p && *p) {
        while (*p == ' ' || *p == ',') p++;
        const char *b = p;
        while (*p && *p != ',') p++;
        const char *e = p;
        while (e > b && e[-1] == ' ') e--;
        if (e > b && (size_t)(e - b) == n && strncasecmp(b, s, n) == 0) return true;
    }
    return false;
}
