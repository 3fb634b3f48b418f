/* /_node/…: node-level endpoints. POST /_node/_local/_compact shrinks the data file while
 * the node serves (mimeo_env_compact: writes pause for the copy, reads for the swap);
 * GET /_node/_local/_stats holds mimeo's own counters (CRDT merges), GET /_node/_local/_blobs
 * counts the attachment blob store, GET /_node/_local/_prometheus is the metrics text
 * (metrics.c); the other /_node paths CouchDB has (_config, …) are not served and answer 404. */
#include <string.h>

#include "http_int.h"

void http_h_crdt_stats(http_req *r);   /* h_crdt.c: GET /_node/_local/_stats */

static bool http_node_seg(const http_req *r, size_t i, const char *s) {
    return i < r->nseg && i < HTTP_MAX_SEGS && strlen(s) == r->seg_len[i] &&
           memcmp(r->seg[i], s, r->seg_len[i]) == 0;
}

void http_h_node(http_req *r) {
    /* "_local" names this node, as CouchDB's /_node/_local/… does. */
    if (r->nseg == 3 && http_node_seg(r, 1, "_local") && http_node_seg(r, 2, "_stats")) {
        http_h_crdt_stats(r);
        return;
    }
    if (r->nseg == 3 && http_node_seg(r, 1, "_local") && http_node_seg(r, 2, "_blobs")) {
        /* The attachment blob store: distinct blobs, their stored bytes, uploads pending. */
        if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
            http_reply_method(r, "GET,HEAD");
            return;
        }
        mimeo_blob_stats st;
        int rc = mimeo_blob_stats_get(r->srv->env, &st);
        if (rc != 0) {
            http_reply_err(r, rc, NULL);
            return;
        }
        buf b;
        buf_init(&b, 0);
        buf_printf(&b, "{\"blobs\":%llu,\"bytes\":%llu,\"pending\":%llu,\"bytes_in\":%llu}\n",
                   (unsigned long long)st.blobs, (unsigned long long)st.bytes,
                   (unsigned long long)st.pending, (unsigned long long)st.bytes_in);
        http_reply_buf(r, 200, &b);
        return;
    }
    if (r->nseg == 3 && http_node_seg(r, 1, "_local") && http_node_seg(r, 2, "_prometheus")) {
        http_h_prometheus(r);
        return;
    }
    if (r->nseg != 3 || !http_node_seg(r, 1, "_local") || !http_node_seg(r, 2, "_compact")) {
        http_reply_error(r, 404, "not_found", "missing");
        return;
    }
    if (r->method != HTTP_POST) {
        http_reply_method(r, "POST");
        return;
    }
    uint64_t before = 0, after = 0;
    mimeo_err e = {0};
    int rc = mimeo_env_compact(r->srv->env, &before, &after, &e);
    if (rc != 0) {
        http_reply_err(r, rc, &e);
        return;
    }
    buf b;
    buf_init(&b, 0);
    if (buf_printf(&b, "{\"ok\":true,\"size_before\":%llu,\"size_after\":%llu}\n",
                   (unsigned long long)before, (unsigned long long)after) != 0) {
        buf_destroy(&b);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    http_reply_buf(r, 200, &b);
}
