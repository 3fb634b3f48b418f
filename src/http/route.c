/* Routing: which handler serves a (method, decoded path). The tables below list every
 * endpoint and the methods it allows, so a wrong method gets CouchDB's 405 with the list.
 *   /                      root           /_up /_all_dbs /_uuids   server
 *   /{db}                  database       /{db}/_xxx               database endpoints
 *   /{db}/{id}             document       /{db}/_design/{name}     design document
 *   /{db}/_local/{id}      local document /{db}/{id}/{att…}        attachment */
#include <string.h>

#include "http_int.h"

typedef void (*http_handler)(http_req *r);

/* h_find.c: Mango (_find, _explain, _index and its sub-paths) */
void http_h_find(http_req *r);
void http_h_explain(http_req *r);
void http_h_index(http_req *r);
/* h_crdt.c: CRDT documents (declared here to keep http_int.h untouched by that feature). */
void http_h_crdt(http_req *r, const char *id, size_t id_len);
void http_h_crdt_merge(http_req *r);
void http_h_crdt_stats(http_req *r);

/* Allowed methods as a bit set, and their text for 405 replies. */
#define M_GET    (1u << HTTP_GET)
#define M_HEAD   (1u << HTTP_HEAD)
#define M_POST   (1u << HTTP_POST)
#define M_PUT    (1u << HTTP_PUT)
#define M_DELETE (1u << HTTP_DELETE)

typedef struct http_route_row {
    const char  *name;
    unsigned     methods;
    const char  *allowed;   /* CouchDB's wording of the same set */
    http_handler fn;
} http_route_row;

static const http_route_row http_server_routes[] = {
    { "_up",      M_GET | M_HEAD, "GET,HEAD", http_h_up },
    { "_all_dbs", M_GET | M_HEAD, "GET,HEAD", http_h_all_dbs },
    { "_uuids",   M_GET | M_HEAD, "GET,HEAD", http_h_uuids },
    { "_session", M_GET | M_HEAD | M_POST | M_DELETE, "DELETE,GET,HEAD,POST", http_h_session },
};

/* Served with any method and any depth (the handlers check both). */
static const http_route_row http_server_any[] = {
    { "_replicate",    0, NULL, http_h_replicate },
    { "_active_tasks", 0, NULL, http_h_active_tasks },
    { "_scheduler",    0, NULL, http_h_scheduler },
    { "_node",         0, NULL, http_h_node },
    { "_mesh",         0, NULL, http_h_mesh },
};

static const http_route_row http_db_routes[] = {
    { "_all_docs",           M_GET | M_HEAD | M_POST, "GET,HEAD,POST", http_h_all_docs },
    { "_design_docs",        M_GET | M_HEAD | M_POST, "GET,HEAD,POST", http_h_design_docs },
    { "_changes",            M_GET | M_HEAD | M_POST, "GET,HEAD,POST", http_h_changes },
    { "_bulk_docs",          M_POST,                  "POST",          http_h_bulk_docs },
    { "_bulk_get",           M_POST,                  "POST",          http_h_bulk_get },
    { "_revs_diff",          M_POST,                  "POST",          http_h_revs_diff },
    { "_revs_limit",         M_GET | M_HEAD | M_PUT,  "GET,PUT",       http_h_revs_limit },
    { "_compact",            M_POST,                  "POST",          http_h_compact },
    { "_ensure_full_commit", M_POST,                  "POST",          http_h_ensure_full_commit },
    { "_security",           M_GET | M_HEAD | M_PUT,  "GET,PUT",       http_h_security },
    { "_find",               M_POST,                  "POST",          http_h_find },
    { "_explain",            M_POST,                  "POST",          http_h_explain },
    { "_crdt_merge",         M_POST,                  "POST",          http_h_crdt_merge },
    { "_view_cleanup",       M_POST,                  "POST",          http_h_view_cleanup },
};

/* CouchDB endpoints mimeo does not serve (yet): a clean 404 instead of "illegal database
 * name", so clients that probe them (the replicator's /_session) fall back properly. */
static const char *const http_unserved_server[] = {
    "_config",
    "_membership", "_stats", "_utils", "_cluster_setup", "_dbs_info", "_db_updates",
    "_reshard", "_prometheus", "_search_analyze", "_restart",
};
static const char *const http_unserved_db[] = {
    "_purge", "_purged_infos_limit", "_missing_revs",
    "_shards", "_local_docs", "_partition", "_design_info", "_sync_shards",
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static bool http_run(http_req *r, const http_route_row *rows, size_t n, const char *name,
                     size_t name_len) {
    for (size_t i = 0; i < n; i++) {
        if (strlen(rows[i].name) != name_len || memcmp(rows[i].name, name, name_len) != 0)
            continue;
        if (r->method >= HTTP_OTHER || !(rows[i].methods & (1u << r->method)))
            http_reply_method(r, rows[i].allowed);
        else
            rows[i].fn(r);
        return true;
    }
    return false;
}

static bool http_listed(const char *const *list, size_t n, const char *s, size_t len) {
    for (size_t i = 0; i < n; i++)
        if (strlen(list[i]) == len && memcmp(list[i], s, len) == 0) return true;
    return false;
}

/* Documents: /{db}/{id}, /{db}/_design/{name}, /{db}/_local/{id}, and the id forms that
 * arrive with an encoded slash ("_design%2Fx"), which decode to the same ids. */
static void http_route_doc(http_req *r) {
    const char *id = r->seg[1];
    size_t id_len = r->seg_len[1];
    size_t rest = 2;   /* first segment after the id */

    if (http_seg_is(r, 1, "_local")) {
        if (r->nseg < 3 || r->seg_len[2] == 0) {
            http_reply_error(r, 400, "bad_request", "Missing _local document id");
            return;
        }
        if (r->nseg > 3) {
            http_reply_error(r, 400, "bad_request",
                             "Attachments are not allowed on _local documents");
            return;
        }
        http_h_local(r, r->seg[2], r->seg_len[2]);
        return;
    }
    if (id_len > 7 && memcmp(id, "_local/", 7) == 0) {
        if (r->nseg > 2) {
            http_reply_error(r, 400, "bad_request",
                             "Attachments are not allowed on _local documents");
            return;
        }
        http_h_local(r, id + 7, id_len - 7);
        return;
    }
    if (http_seg_is(r, 1, "_design") && r->nseg >= 3) {
        buf_reset(&r->scratch);
        if (buf_puts(&r->scratch, "_design/") != 0 ||
            buf_put(&r->scratch, r->seg[2], r->seg_len[2]) != 0) {
            http_reply_error(r, 400, "illegal_docid", "Document id is too long");
            return;
        }
        id = r->scratch.data;
        id_len = r->scratch.len;
        rest = 3;
    }
    if (r->nseg > rest) {
        /* /{db}/{id}/{attachment name, which may hold '/'} */
        http_h_att(r, id, id_len, rest);
        return;
    }
    http_h_doc(r, id, id_len);
}

void http_route(http_req *r) {
    if (r->url_bad) {
        http_reply_error(r, 400, "bad_request", "Malformed percent-encoding in the URL");
        return;
    }
    if (r->nseg == 0) {
        if (r->method == HTTP_GET || r->method == HTTP_HEAD) http_h_root(r);
        else http_reply_method(r, "GET,HEAD");
        return;
    }
    const char *s0 = r->seg[0];
    size_t l0 = r->seg_len[0];

    if (l0 > 0 && s0[0] == '_') {
        if (r->nseg == 1 && http_run(r, http_server_routes, NELEM(http_server_routes), s0, l0))
            return;
        for (size_t i = 0; i < NELEM(http_server_any); i++) {
            if (http_seg_is(r, 0, http_server_any[i].name)) {
                http_server_any[i].fn(r);
                return;
            }
        }
        if (http_listed(http_unserved_server, NELEM(http_unserved_server), s0, l0)) {
            http_reply_error(r, 404, "not_found", "missing");
            return;
        }
        /* Anything else is a database name: _users, _replicator, _global_changes are
         * valid; other names get illegal_database_name from http_db, as in CouchDB. */
    }

    if (r->nseg == 1) {
        if (r->method == HTTP_GET || r->method == HTTP_HEAD || r->method == HTTP_PUT ||
            r->method == HTTP_DELETE || r->method == HTTP_POST)
            http_h_db(r);
        else
            http_reply_method(r, "DELETE,GET,HEAD,POST,PUT");
        return;
    }

    const char *s1 = r->seg[1];
    size_t l1 = r->seg_len[1];
    if (l1 > 0 && s1[0] == '_') {
        if (r->nseg == 2 &&
            (http_caps_refuse(r) || http_run(r, http_db_routes, NELEM(http_db_routes), s1, l1)))
            return;
        if (http_seg_is(r, 1, "_index")) {
            http_h_index(r); /* /_index and /_index/{ddoc}/json/{name}: it checks methods */
            return;
        }
        if (http_seg_is(r, 1, "_compact") && r->nseg == 3) {
            /* /{db}/_compact/{ddoc}: views are not built, so there is nothing to do */
            if (r->method != HTTP_POST) http_reply_method(r, "POST");
            else http_h_compact(r);
            return;
        }
        if (http_seg_is(r, 1, "_crdt") && r->nseg == 3) {
            http_h_crdt(r, r->seg[2], r->seg_len[2]);
            return;
        }
        if (http_listed(http_unserved_db, NELEM(http_unserved_db), s1, l1)) {
            http_reply_error(r, 404, "not_found", "missing");
            return;
        }
    }
    if (http_seg_is(r, 1, "_design") && r->nseg >= 4 &&
        (http_seg_is(r, 3, "_view") || http_seg_is(r, 3, "_info"))) {
        http_h_design(r);
        return;
    }
    switch (r->method) {
    case HTTP_GET: case HTTP_HEAD: case HTTP_PUT: case HTTP_DELETE:
        http_route_doc(r);
        return;
    default:
        http_reply_method(r, "DELETE,GET,HEAD,PUT");
        return;
    }
}
