/* mesh data: the part of a mesh node that moves documents (mesh_data.c). Internal to
 * src/mesh and the /_mesh handlers; the node (transport_udp.c) starts and stops it and
 * lends it the membership view and the database registry through the accessors below. */
#ifndef MIMEO_MESH_DATA_H
#define MIMEO_MESH_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mimeo.h"
#include "mesh_node.h"

/* The user name of node-to-node HTTP: reserved (CouchDB refuses user names that start with
 * an underscore), so it can never be an account. */
#define MESH_HTTP_USER "_mesh"
/* HMAC-SHA256(secret, MESH_HTTP_LABEL) in hex is its password. */
#define MESH_HTTP_LABEL "mimeo-mesh-http-v1"

struct mesh_peer {
    char name[MESH_NAME_MAX + 1];
    char url[MESH_URL_MAX + 1];
};

/* ---- what the node lends the data mover (transport_udp.c) ---- */
/* The members this node can replicate with now (alive, not self): a new array (free()),
 * its length in *n; NULL with *n 0 when there are none (or out of memory). */
struct mesh_peer *mesh_node_peers(struct mesh_node *n, size_t *count);
/* Whether db is meshed here, live in the registry, and this copy was made for the
 * registry's current version of it (not for an incarnation deleted since). */
bool mesh_node_db_wanted(struct mesh_node *n, const char *db, size_t len);
/* Whether db, which a peer holds at registry version `version`, is meshed here but not
 * taken in yet: unknown to this node's registry, live there without a copy made for it, or
 * deleted there at an older version. Such a database is wanted soon, not skipped. */
bool mesh_node_db_coming(struct mesh_node *n, const char *db, size_t len, uint64_t version);
/* The registry version this node's copy of db was made for; 0 unknown. */
uint64_t mesh_node_db_version(struct mesh_node *n, const char *db);

struct mesh_data_opts {
    mimeo_env *env;
    struct mesh_node *node;
    const char *password;        /* the _mesh principal's password (hex) */
    const char *self;            /* this node's member name (copied) */
    unsigned fanout;             /* eager-push peers per database */
    unsigned anti_entropy_ms;    /* period of push-pull rounds with one random peer */
    unsigned workers;            /* replications running at once, node-wide */
    unsigned batch;              /* changes per request (worker_batch_size) */
    unsigned timeout_ms;         /* per request to a peer */
    bool eager;                  /* push fresh writes at once */
};

struct mesh_data;

int  mesh_data_start(const struct mesh_data_opts *o, struct mesh_data **out, char *err,
                     size_t errlen);
void mesh_data_free(struct mesh_data *d);

/* GET /_mesh/summary?epoch=E&since=G's body: {"epoch","gen","full","dbs":{"name":
 * update_seq,…}} of the databases meshed here and live in the registry — only those changed
 * after generation G when E is this process's epoch, else all of them ("full":true). epoch
 * NULL: all. New text (free()), NULL when out of memory. */
char *mesh_data_summary_json(struct mesh_data *d, const char *epoch, uint64_t since);

/* Per database and peer rows for GET /_mesh (mesh_node_sync_stats does the copying). */
size_t mesh_data_sync_stats(struct mesh_data *d, struct mesh_sync_stat **out);
/* Counters for GET /_mesh and metrics. */
void mesh_data_counters(struct mesh_data *d, struct mesh_data_counters *out);

#endif
