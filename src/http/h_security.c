/* GET/PUT /{db}/_security: the database's admins and members. Who may call it is decided in
 * authz.c (members read it, db admins write it); the object is kept by authz.c too. */
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

void http_h_security(http_req *r) {
    if (!http_db(r)) return;
    if (r->method != HTTP_PUT) {
        char *text = http_security_text(r);
        if (!text) {
            http_reply_error(r, 500, "internal", "cannot read the security object");
            return;
        }
        buf b;
        buf_init(&b, 0);
        buf_puts(&b, text);
        buf_putc(&b, '\n');
        free(text);
        http_reply_buf(r, 200, &b);
        return;
    }
    jval *sec = NULL;
    mimeo_err e = {0};
    if (json_tree_parse(r->body.data ? r->body.data : "", r->body.len, &r->srv->limits, &sec,
                        &e) != 0) {
        http_reply_err(r, e.code ? e.code : MIMEO_EBADJSON, &e);
        return;
    }
    int rc = auth_security_validate(sec, &e);
    if (rc == 0) rc = http_security_store(r, sec, &e);
    jval_free(sec);
    if (rc != 0) http_reply_err(r, rc, &e);
    else http_reply_static(r, 200, "{\"ok\":true}\n");
}
