/* /_session: cookie login (POST, JSON or form body), who am I (GET), logout (DELETE) — the
 * shapes CouchDB answers and PouchDB, nano and CouchDB's replicator expect. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_int.h"

static void http_session_info(http_req *r) {
    bool basic = false;
    if (http_arg_bool(r, "basic", &basic) < 0) return;
    if (basic && !r->user.known) {
        http_reply_error(r, 401, "unauthorized", "Authentication required.");
        return;
    }
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"ok\":true,\"userCtx\":");
    auth_user_json(&b, &r->user);
    buf_puts(&b, ",\"info\":{\"authentication_handlers\":[\"cookie\",\"default\"]");
    if (r->authn) buf_printf(&b, ",\"authenticated\":\"%s\"", r->authn);
    buf_puts(&b, ",\"authentication_db\":\"_users\"}}\n");
    http_reply_buf(r, 200, &b);
}

/* Value of field `key` in an x-www-form-urlencoded body (new string, free()), or NULL. */
static char *http_form_get(const char *p, size_t n, const char *key) {
    size_t kl = strlen(key);
    const char *end = p + n;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *e = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(e - p));
        if (eq) {
            char *k = strndup(p, (size_t)(eq - p));
            if (!k) return NULL;
            size_t dl = http_pct_decode(k, strlen(k), true);
            bool match = dl != (size_t)-1 && dl == kl && memcmp(k, key, kl) == 0;
            free(k);
            if (match) {
                char *v = strndup(eq + 1, (size_t)(e - eq - 1));
                if (!v) return NULL;
                size_t vl = http_pct_decode(v, strlen(v), true);
                if (vl == (size_t)-1 || memchr(v, '\0', vl)) {
                    free(v);
                    return NULL;
                }
                v[vl] = '\0';
                return v;
            }
        }
        p = e + 1;
    }
    return NULL;
}

static void http_session_login(http_req *r) {
    char *name = NULL, *password = NULL;
    const char *ct = http_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    const char *body = r->body.data ? r->body.data : "";
    if (http_is_json_ctype(r)) {
        jval *v = NULL;
        mimeo_err e = {0};
        if (json_tree_parse(body, r->body.len, &r->srv->limits, &v, &e) != 0) {
            http_reply_err(r, e.code ? e.code : MIMEO_EBADJSON, &e);
            return;
        }
        const jval *n = jval_get(v, "name"), *p = jval_get(v, "password");
        if (n && n->type == JV_STRING && strlen(n->str) == n->len) name = strdup(n->str);
        if (p && p->type == JV_STRING && strlen(p->str) == p->len) password = strdup(p->str);
        jval_free(v);
    } else if (ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) == 0) {
        name = http_form_get(body, r->body.len, "name");
        password = http_form_get(body, r->body.len, "password");
    } else {
        http_reply_error(r, 415, "bad_content_type",
                         "Content-Type must be application/json or "
                         "application/x-www-form-urlencoded");
        return;
    }
    auth_user u;
    auth_pw pw;
    int rc = name && password ? http_auth_login(r, name, password, &u, &pw) : MIMEO_ENOTFOUND;
    if (password) memset(password, 0, strlen(password));
    free(password);
    if (rc != 0) {
        free(name);
        if (rc != MIMEO_EBUSY) http_auth_set_cookie(r, "", NULL, true);
        http_auth_reply_failure(r, rc);
        return;
    }
    http_auth_set_cookie(r, name, &pw, false);
    free(name);
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"ok\":true,\"name\":");
    json_put_cstr(&b, u.name);
    buf_puts(&b, ",\"roles\":[");
    for (size_t i = 0; i < u.nroles; i++) {
        if (i) buf_putc(&b, ',');
        json_put_cstr(&b, u.roles[i]);
    }
    buf_puts(&b, "]}\n");
    auth_user_destroy(&u);
    http_reply_buf(r, 200, &b);
}

void http_h_session(http_req *r) {
    switch (r->method) {
    case HTTP_POST:
        http_session_login(r);
        return;
    case HTTP_DELETE:
        http_auth_set_cookie(r, "", NULL, true);
        http_reply_static(r, 200, "{\"ok\":true}\n");
        return;
    default:
        http_session_info(r);
        return;
    }
}
