/* CRDT document endpoints: POST /{db}/_crdt/{docid} applies ops and answers the plain value;
 * POST /{db}/_crdt_merge merges documents with several live leaves (those named in
 * "doc_ids", or every document the rules of _design/crdt may match). The work is done by
 * mimeo_crdt_apply and mimeo_crdt_merge_all; these handlers only move JSON and statuses. */
#include <string.h>

#include "http_int.h"

void http_h_crdt(http_req *r, const char *id, size_t id_len) {
    if (r->method != HTTP_POST) {
        http_reply_method(r, "POST");
        return;
    }
    if (!http_db(r)) return;
    if (id_len == 0) {
        http_reply_error(r, 400, "bad_request", "Missing document id");
        return;
    }
    mimeo_crdt_result res;
    mimeo_err e = {0};
    int rc = mimeo_crdt_apply(r->db, id, id_len, r->body.data ? r->body.data : "", r->body.len,
                              &res, &e);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    buf b;
    buf_init(&b, 0);
    rc = buf_puts(&b, "{\"ok\":true,\"id\":");
    if (!rc) rc = json_put_str(&b, res.id, strlen(res.id));
    if (!rc) rc = buf_puts(&b, ",\"rev\":");
    if (!rc) rc = json_put_cstr(&b, res.rev);
    if (!rc) rc = buf_puts(&b, ",\"value\":");
    if (!rc) rc = buf_put(&b, res.value, res.value_len);
    if (!rc) rc = buf_puts(&b, "}\n");
    if (rc) {
        buf_destroy(&b);
        mimeo_crdt_result_destroy(&res);
        http_reply_err(r, rc, NULL);
        return;
    }
    http_reply_buf(r, 201, &b);
    http_header_etag(r, res.rev, strlen(res.rev));
    mimeo_crdt_result_destroy(&res);
}

void http_h_crdt_merge(http_req *r) {
    if (!http_db(r)) return;
    http_string_list ids;
    int have = http_arg_string_list(r, "doc_ids", "bad_request",
                                    "`doc_ids` must be an array of strings", &ids);
    if (have < 0) return;
    char *out = NULL;
    size_t len = 0;
    mimeo_err e = {0};
    int rc = mimeo_crdt_merge_all(r->db, have ? ids.strs : NULL, have ? ids.lens : NULL,
                                  have ? ids.count : 0, &out, &len, &e);
    if (have) http_string_list_destroy(&ids);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    http_reply_mimeo(r, 200, out, len);
}

/* GET /_node/_local/_stats: the CRDT counters in CouchDB's stats shape ({value, type, desc}
 * per counter), under "mimeo" → "crdt". CouchDB's own couchdb/… tree is not kept. */
void http_h_crdt_stats(http_req *r) {
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_reply_method(r, "GET");
        return;
    }
    mimeo_crdt_stats st;
    mimeo_crdt_stats_get(&st);
    buf b;
    buf_init(&b, 0);
    if (buf_printf(&b, "{\"mimeo\":{\"crdt\":{"
                   "\"ops_applied\":{\"value\":%llu,\"type\":\"counter\","
                   "\"desc\":\"ops applied through _crdt\"},"
                   "\"merges_written\":{\"value\":%llu,\"type\":\"counter\","
                   "\"desc\":\"merge revisions written\"},"
                   "\"conflicts_kept\":{\"value\":%llu,\"type\":\"counter\","
                   "\"desc\":\"conflicts left unmerged: a leaf was not a CRDT state\"}}}}\n",
                   (unsigned long long)st.ops_applied, (unsigned long long)st.merges_written,
                   (unsigned long long)st.conflicts_kept) != 0) {
        buf_destroy(&b);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    http_reply_buf(r, 200, &b);
}
