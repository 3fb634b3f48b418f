/* Metrics: process-wide counters of finished requests (by method, by status, a latency
 * histogram), fed once per request from the server's completion callback, and
 * GET /_node/_local/_prometheus, which prints them in Prometheus's text format beside the
 * open databases, the replicator's totals and the mesh's counters. CouchDB's metric names
 * where a metric corresponds (couchdb_httpd_request_methods, couchdb_httpd_status_codes,
 * couchdb_request_time_seconds, couchdb_open_databases…); mimeo_* for the rest. */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "http_int.h"
#include "../mesh/mesh_node.h"

/* Upper bounds of the latency buckets, in microseconds (the text prints seconds). */
static const uint64_t metrics_le_us[] = {
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
    5000000, 10000000,
};
#define METRICS_NLE (sizeof metrics_le_us / sizeof metrics_le_us[0])
#define METRICS_NSTATUS 600
#define METRICS_COUNT(a) (sizeof(a) / sizeof((a)[0]))

static struct {
    atomic_uint_fast64_t requests;
    atomic_uint_fast64_t methods[HTTP_OTHER + 1];
    atomic_uint_fast64_t status[METRICS_NSTATUS];
    atomic_uint_fast64_t le[METRICS_NLE + 1];     /* per bucket, not cumulative; last: +Inf */
    atomic_uint_fast64_t sum_us;
} metrics;

static const char *const metrics_method_names[HTTP_OTHER + 1] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "OTHER",
};

uint64_t http_metrics_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void http_metrics_done(const http_req *r) {
    /* No reply was made (the client went away before its request was whole): not a request
     * the server answered. */
    if (r->calls == 0 || r->status == 0) return;
    atomic_fetch_add(&metrics.requests, 1);
    atomic_fetch_add(&metrics.methods[r->method <= HTTP_OTHER ? r->method : HTTP_OTHER], 1);
    if (r->status < METRICS_NSTATUS) atomic_fetch_add(&metrics.status[r->status], 1);
    uint64_t us = (http_metrics_now_ns() - r->started_ns) / 1000;
    size_t i = 0;
    while (i < METRICS_NLE && us > metrics_le_us[i]) i++;
    atomic_fetch_add(&metrics.le[i], 1);
    atomic_fetch_add(&metrics.sum_us, us);
}

/* Seconds since this process started, from /proc (0 when unreadable). */
static double metrics_uptime(void) {
    double up = 0;
    unsigned long long start = 0;
    FILE *f = fopen("/proc/uptime", "r");
    if (f) {
        if (fscanf(f, "%lf", &up) != 1) up = 0;
        fclose(f);
    }
    f = fopen("/proc/self/stat", "r");
    if (f) {
        char line[1024];
        if (fgets(line, sizeof line, f)) {
            /* Field 22 (starttime); the command name (2) may hold spaces: count after ')'. */
            char *p = strrchr(line, ')');
            int field = 2;
            for (; p && *p && field < 22; p++)
                if (*p == ' ') field++;
            if (p && field == 22) start = strtoull(p, NULL, 10);
        }
        fclose(f);
    }
    long hz = sysconf(_SC_CLK_TCK);
    double t = hz > 0 && start ? up - (double)start / (double)hz : 0;
    return t > 0 ? t : 0;
}

static int metrics_head(buf *b, const char *name, const char *type, const char *help) {
    return buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int metrics_one(buf *b, const char *name, const char *type, const char *help,
                       uint64_t v) {
    return metrics_head(b, name, type, help) | buf_printf(b, "%s %" PRIu64 "\n", name, v);
}

/* One family with one label: a sample per label value, values[i] beside names[i]. */
static int metrics_labelled(buf *b, const char *name, const char *type, const char *help,
                            const char *label, const char *const *names, const uint64_t *values,
                            size_t n) {
    int rc = metrics_head(b, name, type, help);
    for (size_t i = 0; i < n; i++)
        rc |= buf_printf(b, "%s{%s=\"%s\"} %" PRIu64 "\n", name, label, names[i], values[i]);
    return rc;
}

static int metrics_http(buf *b) {
    int rc = metrics_one(b, "couchdb_httpd_requests_total", "counter",
                         "number of HTTP requests", atomic_load(&metrics.requests));
    uint64_t methods[HTTP_OTHER + 1];
    for (int m = 0; m <= HTTP_OTHER; m++) methods[m] = atomic_load(&metrics.methods[m]);
    rc |= metrics_labelled(b, "couchdb_httpd_request_methods", "counter",
                           "number of HTTP requests by method", "method", metrics_method_names,
                           methods, HTTP_OTHER + 1);
    rc |= metrics_head(b, "couchdb_httpd_status_codes", "counter",
                       "number of HTTP responses by status code");
    for (unsigned s = 100; s < METRICS_NSTATUS; s++) {
        uint64_t v = atomic_load(&metrics.status[s]);
        if (v) rc |= buf_printf(b, "couchdb_httpd_status_codes{code=\"%u\"} %" PRIu64 "\n", s, v);
    }
    /* CouchDB exports a summary under this name; a histogram keeps the same _sum and _count
     * and can be aggregated across nodes. */
    rc |= metrics_head(b, "couchdb_request_time_seconds", "histogram",
                       "length of a request inside mimeo, from its request line to its last byte");
    uint64_t cum = 0;
    for (size_t i = 0; i < METRICS_NLE; i++) {
        cum += atomic_load(&metrics.le[i]);
        rc |= buf_printf(b, "couchdb_request_time_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
                         (double)metrics_le_us[i] / 1e6, cum);
    }
    cum += atomic_load(&metrics.le[METRICS_NLE]);
    rc |= buf_printf(b, "couchdb_request_time_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n", cum);
    rc |= buf_printf(b, "couchdb_request_time_seconds_sum %.6f\n",
                     (double)atomic_load(&metrics.sum_us) / 1e6);
    rc |= buf_printf(b, "couchdb_request_time_seconds_count %" PRIu64 "\n", cum);
    return rc;
}

/* A label value with Prometheus's three escapes (backslash, quote, newline). */
static int metrics_label(buf *b, const char *s) {
    int rc = 0;
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') rc |= buf_putc(b, '\\') | buf_putc(b, *s);
        else if (*s == '\n') rc |= buf_puts(b, "\\n");
        else rc |= buf_putc(b, *s);
    }
    return rc;
}

/* A sample's name and its db and peer labels, up to the space before the value. */
static int metrics_db_peer(buf *b, const char *name, const struct mesh_sync_stat *v) {
    return buf_printf(b, "%s{db=\"", name) | metrics_label(b, v->db) |
           buf_puts(b, "\",peer=\"") | metrics_label(b, v->peer) | buf_puts(b, "\"} ");
}

/* One gauge per meshed database and peer, for the rows whose figure is known (>= 0). */
static int metrics_sync_gauge(buf *b, const struct mesh_sync_stat *v, size_t k, const char *name,
                              const char *help, size_t offset) {
    int rc = metrics_head(b, name, "gauge", help);
    for (size_t i = 0; i < k; i++) {
        int64_t x;
        memcpy(&x, (const char *)&v[i] + offset, sizeof x);
        if (x < 0) continue;
        rc |= metrics_db_peer(b, name, &v[i]) | buf_printf(b, "%" PRId64 "\n", x);
    }
    return rc;
}

/* The data mover: changes behind per database and peer, last sync, and its counters. */
static int metrics_mesh_data(buf *b, struct mesh_node *n) {
    struct mesh_sync_stat *v = NULL;
    size_t k = mesh_node_sync_stats(n, &v);
    int rc = metrics_sync_gauge(b, v, k, "mimeo_mesh_changes_behind",
                                "changes of this node's copy the peer may still lack",
                                offsetof(struct mesh_sync_stat, behind));
    rc |= metrics_sync_gauge(b, v, k, "mimeo_mesh_changes_to_pull",
                             "changes of the peer's copy this node has not pulled yet",
                             offsetof(struct mesh_sync_stat, pull_behind));
    rc |= metrics_head(b, "mimeo_mesh_last_sync_timestamp_seconds", "gauge",
                       "when a replication with the peer last completed (Unix time)");
    for (size_t i = 0; i < k; i++) {
        if (v[i].last_sync_ms <= 0) continue;
        rc |= metrics_db_peer(b, "mimeo_mesh_last_sync_timestamp_seconds", &v[i]) |
              buf_printf(b, "%.3f\n", (double)v[i].last_sync_ms / 1000.0);
    }
    free(v);
    struct mesh_data_counters c;
    mesh_node_data_counters(n, &c);
    static const char *const results[] = {"completed", "failed"};
    rc |= metrics_labelled(b, "mimeo_mesh_replications_total", "counter",
                           "replications the data mover ran, by result", "result", results,
                           (const uint64_t[]){c.replications, c.failures}, METRICS_COUNT(results));
    rc |= metrics_one(b, "mimeo_mesh_docs_written_total", "counter",
                      "revisions the data mover's replications wrote", c.docs_written);
    rc |= metrics_one(b, "mimeo_mesh_summaries_total", "counter",
                      "anti-entropy summaries fetched from peers", c.summaries);
    rc |= metrics_one(b, "mimeo_mesh_replications_dropped_total", "counter",
                      "replications not queued because the queue was full", c.dropped);
    static const char *const states[] = {"queued", "running"};
    rc |= metrics_labelled(b, "mimeo_mesh_replication_queue", "gauge",
                           "replications of the data mover waiting and running", "state", states,
                           (const uint64_t[]){c.queued, c.running}, METRICS_COUNT(states));
    return rc;
}

static int metrics_mesh(buf *b) {
    struct mesh_node *n = mesh_node_current();
    if (!n) return 0;
    struct mesh_stats st;
    uint64_t by_state[4];
    mesh_node_stats(n, &st, by_state);
    const char *state_names[4];
    for (int s = 0; s < 4; s++) state_names[s] = mesh_state_name(s);
    int rc = metrics_labelled(
        b, "mimeo_mesh_members", "gauge",
        "members of the mesh by state, as this node sees them (self included)", "state",
        state_names, by_state, 4);
    rc |= metrics_one(b, "mimeo_mesh_messages_sent_total", "counter",
                      "gossip and probe messages sent (datagrams and push-pulls)", st.msgs_sent);
    rc |= metrics_one(b, "mimeo_mesh_bytes_sent_total", "counter",
                      "bytes of mesh messages sent", st.bytes_sent);
    rc |= metrics_one(b, "mimeo_mesh_messages_received_total", "counter",
                      "authenticated mesh messages received", st.msgs_recv);
    rc |= metrics_one(b, "mimeo_mesh_bytes_received_total", "counter",
                      "bytes of authenticated mesh messages received", st.bytes_recv);
    static const char *const reasons[] = {"bad_mac", "replayed", "malformed"};
    rc |= metrics_labelled(b, "mimeo_mesh_messages_rejected_total", "counter",
                           "mesh messages dropped, by reason", "reason", reasons,
                           (const uint64_t[]){st.bad_mac, st.replayed, st.malformed},
                           METRICS_COUNT(reasons));
    rc |= metrics_one(b, "mimeo_mesh_probes_total", "counter", "failure-detection probes sent",
                      st.probes);
    rc |= metrics_one(b, "mimeo_mesh_probes_failed_total", "counter",
                      "probes answered neither directly nor indirectly", st.probes_failed);
    rc |= metrics_one(b, "mimeo_mesh_suspicions_total", "counter",
                      "members this node began to suspect", st.suspicions);
    rc |= metrics_one(b, "mimeo_mesh_refutations_total", "counter",
                      "times this node refuted a suspicion of itself", st.refutes);
    rc |= metrics_one(b, "mimeo_mesh_health_score", "gauge",
                      "Lifeguard local health score (0 healthy; probes slow down as it rises)",
                      st.awareness);
    return rc | metrics_mesh_data(b, n);
}

/* How connections spread over this server's event threads: a lopsided split shows as one
 * thread with most of them (bench/auth.sh prints it beside each run). */
static int metrics_events(buf *b, http_server *s) {
    uint64_t handed, open;
    int rc = metrics_head(b, "mimeo_http_event_thread_connections_total", "counter",
                          "connections handed to each event thread");
    for (unsigned i = 0; http_event_thread_stats(s, i, &handed, &open); i++)
        rc |= buf_printf(b, "mimeo_http_event_thread_connections_total{thread=\"%u\"} %" PRIu64
                         "\n", i, handed);
    rc |= metrics_head(b, "mimeo_http_event_thread_open_connections", "gauge",
                       "connections open on each event thread");
    for (unsigned i = 0; http_event_thread_stats(s, i, &handed, &open); i++)
        rc |= buf_printf(b, "mimeo_http_event_thread_open_connections{thread=\"%u\"} %" PRIu64
                         "\n", i, open);
    int parked = atomic_load(&s->parked);
    rc |= metrics_one(b, "mimeo_http_parked_replies", "gauge",
                      "waiting replies (changes feeds) held outside the event threads",
                      parked > 0 ? (uint64_t)parked : 0);
    return rc;
}

void http_h_prometheus(http_req *r) {
    if (r->method != HTTP_GET && r->method != HTTP_HEAD) {
        http_reply_method(r, "GET");
        return;
    }
    buf b;
    buf_init(&b, 0);
    mimeo_replicator_stats rs;
    mimeo_replicator_stats_get(&rs);
    int rc = metrics_http(&b);
    rc |= metrics_one(&b, "couchdb_open_databases", "gauge", "number of open databases",
                      mimeo_env_open_dbs(r->srv->env));
    rc |= metrics_head(&b, "couchdb_uptime_seconds", "counter", "seconds since the node started");
    rc |= buf_printf(&b, "couchdb_uptime_seconds %.0f\n", metrics_uptime());
    rc |= metrics_one(&b, "mimeo_replicator_docs_read_total", "counter",
                      "revisions read from sources by every replication", rs.docs_read);
    rc |= metrics_one(&b, "mimeo_replicator_docs_written_total", "counter",
                      "revisions written to targets by every replication", rs.docs_written);
    rc |= metrics_one(&b, "mimeo_replicator_doc_write_failures_total", "counter",
                      "revisions a target refused", rs.doc_write_failures);
    rc |= metrics_events(&b, r->srv);
    rc |= metrics_mesh(&b);
    if (rc != 0) {
        buf_destroy(&b);
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    http_reply_buf_ct(r, 200, &b, "text/plain; version=0.0.4");
}
