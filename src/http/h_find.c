/* Mango over HTTP: POST /{db}/_find, POST /{db}/_explain, GET/POST /{db}/_index and
 * DELETE /{db}/_index/{ddoc}/json/{name} (also /_index/_design/{ddoc}/json/{name}). The
 * work is libmimeo's (mimeo_find, mimeo_index_*); this file checks methods and media types
 * and turns results into replies. */
#include <string.h>

#include "http_int.h"

static void find_or_explain(http_req *r, bool explain) {
    if (!http_require_json(r) || !http_db(r)) return;
    char *out = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    const char *body = r->body.data ? r->body.data : "";
    int rc = explain ? mimeo_explain(r->db, body, r->body.len, &out, &len, &e)
                     : mimeo_find(r->db, body, r->body.len, &out, &len, &e);
    http_reply_result(r, rc, 200, out, len, &e);
}

void http_h_find(http_req *r) { find_or_explain(r, false); }
void http_h_explain(http_req *r) { find_or_explain(r, true); }

void http_h_index(http_req *r) {
    char *out = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    if (r->nseg == 2) {
        if (r->method == HTTP_GET || r->method == HTTP_HEAD) {
            if (!http_db(r)) return;
            int rc = mimeo_index_list(r->db, &out, &len, &e);
            http_reply_result(r, rc, 200, out, len, &e);
        } else if (r->method == HTTP_POST) {
            if (!http_require_json(r) || !http_db(r)) return;
            int rc = mimeo_index_create(r->db, r->body.data ? r->body.data : "", r->body.len,
                                        &out, &len, &e);
            http_reply_result(r, rc, 200, out, len, &e);
        } else {
            http_reply_method(r, "GET,POST");
        }
        return;
    }
    /* /{db}/_index/{ddoc}/json/{name} or /{db}/_index/_design/{ddoc}/json/{name} */
    size_t d = http_seg_is(r, 2, "_design") ? 3 : 2;
    if (r->nseg != d + 3 || r->nseg > HTTP_MAX_SEGS || !http_seg_is(r, d + 1, "json")) {
        http_reply_error(r, 404, "not_found", "missing");
        return;
    }
    if (r->method != HTTP_DELETE) {
        http_reply_method(r, "DELETE");
        return;
    }
    if (!http_db(r)) return;
    int rc = mimeo_index_delete(r->db, r->seg[d], r->seg_len[d], r->seg[d + 2],
                                r->seg_len[d + 2], &e);
    if (rc == 0) http_reply_static(r, 200, "{\"ok\":true}");
    else http_reply_err(r, rc, &e);
}
