/* /_mesh: GET lists this node's view of the mesh (members with state, incarnation and how
 * long ago each was last heard; the database registry; sync state per database and peer;
 * counters); POST takes one mesh stream message (a push-pull) from a peer, authenticated by
 * its own MAC, not by HTTP; GET /_mesh/summary serves peers' anti-entropy rounds (admins). */
#include <stdlib.h>
#include <string.h>

#include "http_int.h"
#include "../mesh/mesh_node.h"

/* 200 with json (new text from the mesh; taken and freed here). */
static void reply_json(http_req *r, char *json) {
    buf b;
    buf_init(&b, 0);
    int rc = buf_puts(&b, json);
    free(json);
    if (rc != 0) {
        buf_destroy(&b);
        http_reply_error(r, 500, "internal_server_error", "out of memory");
        return;
    }
    http_reply_buf(r, 200, &b);
}

/* GET /_mesh/summary: update_seq of every database meshed here (a peer's anti-entropy round
 * compares it with what it last pulled and pushed). */
static void http_h_mesh_summary(http_req *r, struct mesh_node *n) {
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_reply_method(r, "GET,HEAD");
        return;
    }
    /* ?epoch=E&since=G: a peer's cursor from its last round (both or neither). */
    size_t el = 0, sl = 0;
    const char *e = http_arg_get(r, "epoch", &el);
    const char *s = http_arg_get(r, "since", &sl);
    char epoch[33];
    unsigned long long since = 0;
    if (e || s) {
        bool ok = e && s && el > 0 && el < sizeof epoch && sl > 0 && sl <= 19 &&
                  strspn(s, "0123456789") >= sl;
        if (!ok) {
            http_reply_error(r, 400, "bad_request", "epoch and since go together: hex and a number");
            return;
        }
        memcpy(epoch, e, el);
        epoch[el] = '\0';
        since = strtoull(s, NULL, 10);
    }
    char *json = n ? mesh_node_summary_json(n, e ? epoch : NULL, since) : NULL;
    if (!json) {
        if (n) http_reply_error(r, 500, "internal_server_error", "out of memory");
        else http_reply_error(r, 404, "not_found", "this node is not part of a mesh");
        return;
    }
    reply_json(r, json);
}

void http_h_mesh(http_req *r) {
    struct mesh_node *n = mesh_node_current();
    if (r->nseg == 2 && http_seg_is(r, 1, "summary")) {
        http_h_mesh_summary(r, n);
        return;
    }
    if (r->nseg != 1) {
        http_reply_error(r, 404, "not_found", "missing");
        return;
    }
    if (r->method != HTTP_GET && r->method != HTTP_HEAD && r->method != HTTP_POST) {
        http_reply_method(r, "GET,HEAD,POST");
        return;
    }
    if (!n) {
        http_reply_error(r, 404, "not_found", "this node is not part of a mesh");
        return;
    }
    if (r->method == HTTP_POST) {
        if (mesh_node_deliver(n, r->body.data ? r->body.data : "", r->body.len) != 0) {
            http_reply_error(r, 400, "bad_request", "mesh message rejected");
            return;
        }
        http_reply_static(r, 202, "{\"ok\":true}\n");
        return;
    }
    char *json = mesh_node_status_json(n);
    if (!json) {
        http_reply_error(r, 500, "internal_server_error", "out of memory");
        return;
    }
    reply_json(r, json);
}
