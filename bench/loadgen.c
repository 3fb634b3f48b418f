/* loadgen — the benchmark's load generator: CouchDB-API workloads over keep-alive connections.
 *
 * One process drives many connections through libcurl's multi interface, so the client spends
 * its time in the kernel and in curl, not in threads or a scripting runtime, and its own limit
 * (the `ceiling` subcommand, against a trivial libmicrohttpd server inside this process) sits
 * well above what the servers under test reach. Every run prints one JSON line on stdout;
 * bench/run.sh collects them and bench/table.mjs turns them into the table.
 *
 *   loadgen bulk URL/db --docs N --batch B --ids seq|random --size BYTES [--clients C]
 *   loadgen put URL/db --docs N --clients C --size BYTES
 *   loadgen get URL/db --docs N --ids seq|random --clients C --seconds S [--client curl|raw]
 *   loadgen read URL                      (a _changes or _all_docs reply, rows counted as streamed)
 *   loadgen replicate URL/_replicate --source URL --target URL --docs N
 *   loadgen ceiling --clients C --seconds S
 *   loadgen wait URL --timeout S          (polls until the URL answers 2xx)
 *   loadgen port                          (prints a free loopback TCP port)
 */
#include <curl/curl.h>
#include <microhttpd.h>
#include <nettle/base64.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- small helpers */

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU seconds the calling thread used so far: printed beside every figure so a reader can see
 * how much of the machine the client itself took. All client work runs on the main thread (curl
 * resolves numeric addresses without its resolver thread), and counting only that thread keeps
 * the in-process trivial server of `ceiling` out of the client's figure. */
static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_THREAD, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t more) {
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        die("out of memory");
    b->p = p;
    b->cap = cap;
}

static void buf_add(buf_t *b, const void *data, size_t n) {
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_printf(buf_t *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

typedef struct {
    double *v;
    size_t n, cap;
} dvec_t;

static void dvec_push(dvec_t *d, double x) {
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 4096;
        d->v = realloc(d->v, d->cap * sizeof *d->v);
        if (!d->v)
            die("out of memory");
    }
    d->v[d->n++] = x;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the sorted latencies, in milliseconds. */
static double pct_ms(const dvec_t *d, double p) {
    if (d->n == 0)
        return 0;
    size_t i = (size_t)(p * (double)d->n);
    if (i >= d->n)
        i = d->n - 1;
    return d->v[i] * 1e3;
}

/* splitmix64: a stateless mix, so any doc's id and body can be recomputed from (seed, index)
 * alone — `get` asks for exactly the ids that `bulk` wrote without sharing a file. */
static uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* ---------------------------------------------------------------- documents */

enum { ID_SEQ, ID_RANDOM };

/* 32 lowercase hex characters. Sequential ids share a prefix and end in a zero-padded counter,
 * so they sort in insertion order like the ids mimeo generates; random ids are uniformly
 * spread, like the UUIDs most clients make. */
static void make_id(char out[33], int kind, uint64_t seed, uint64_t i) {
    if (kind == ID_SEQ)
        snprintf(out, 33, "%012" PRIx64 "%020" PRIx64, mix64(seed) >> 16, i);
    else
        snprintf(out, 33, "%016" PRIx64 "%016" PRIx64, mix64(seed ^ mix64(i)),
                 mix64(~seed ^ mix64(i + 0x5151)));
}

/* Appends one document of about `size` bytes. The payload is pseudo-random base64-like text,
 * so neither server gets to shrink it much by compressing (leveldb compresses its blocks). */
static void add_doc(buf_t *b, const char *id, uint64_t n, long size, int with_id) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t start = b->len;
    if (with_id)
        buf_printf(b, "{\"_id\":\"%s\",\"type\":\"bench\",\"n\":%" PRIu64 ",\"payload\":\"", id, n);
    else
        buf_printf(b, "{\"type\":\"bench\",\"n\":%" PRIu64 ",\"payload\":\"", n);
    long used = (long)(b->len - start) + 2;
    long pad = size > used ? size - used : 1;
    buf_reserve(b, (size_t)pad + 2);
    char *p = b->p + b->len;
    uint64_t r = 0;
    for (long k = 0; k < pad; k++) {
        if ((k & 7) == 0)
            r = mix64(n * 1315423911u + (uint64_t)k);
        p[k] = alphabet[r & 63];
        r >>= 8;
    }
    b->len += (size_t)pad;
    buf_add(b, "\"}", 2);
}

/* ---------------------------------------------------------------- row counting */

/* Counts the rows of a `_changes` or `_all_docs` reply while it streams in, without building
 * anything: rows are the objects that open at depth 2 ({"results":[ {row}, ... ]}). Only
 * strings need care, since their contents may hold brackets. */
typedef struct {
    int depth, in_str, esc;
    uint64_t rows;
} rowscan_t;

static void rowscan_feed(rowscan_t *s, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (s->in_str) {
            if (s->esc)
                s->esc = 0;
            else if (c == '\\')
                s->esc = 1;
            else if (c == '"')
                s->in_str = 0;
            continue;
        }
        switch (c) {
        case '"': s->in_str = 1; break;
        case '{':
            if (s->depth == 2)
                s->rows++;
            s->depth++;
            break;
        case '[': s->depth++; break;
        case '}':
        case ']': s->depth--; break;
        default: break;
        }
    }
}

/* ---------------------------------------------------------------- the request engine */

/* Each slot is one client: one easy handle that, within the multi handle's connection cache,
 * keeps one keep-alive connection busy with one request at a time. */
typedef struct slot {
    CURL *h;
    buf_t body;         /* request body, owned */
    buf_t resp;         /* response body when the workload keeps it */
    char url[2048];
    double t0;
    long idx;           /* which unit of work (batch, doc) this request carries */
    int keep_resp;
    rowscan_t scan;
    int scanning;
    uint64_t resp_bytes;
} slot_t;

typedef struct engine engine_t;
struct engine {
    CURLM *m;
    slot_t *slots;
    int nslots;
    /* Prepares the slot's next request; returns 0 when this slot has no more work. */
    int (*next)(engine_t *e, slot_t *s);
    /* Called once per finished request with its HTTP status (0 on a transport error). */
    void (*done)(engine_t *e, slot_t *s, long status, double latency);
    void *ctx;
    double deadline;    /* no new requests after this (monotonic seconds), 0 = none */
    dvec_t lat;
    long ok, errors, transport_errors;
    uint64_t bytes_in;
    char first_error[256];
};

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud) {
    slot_t *s = ud;
    size_t n = size * nmemb;
    s->resp_bytes += n;
    if (s->scanning)
        rowscan_feed(&s->scan, p, n);
    if (s->keep_resp)
        buf_add(&s->resp, p, n);
    return n;
}

static struct curl_slist *json_headers(void) {
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    /* curl would otherwise wait for "100 Continue" before sending large bodies. */
    h = curl_slist_append(h, "Expect:");
    return h;
}

static struct curl_slist *g_headers;
static double g_req_timeout = 300;

static void slot_init(slot_t *s) {
    memset(s, 0, sizeof *s);
    s->h = curl_easy_init();
    if (!s->h)
        die("curl_easy_init failed");
    curl_easy_setopt(s->h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(s->h, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(s->h, CURLOPT_HTTPHEADER, g_headers);
    curl_easy_setopt(s->h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(s->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(s->h, CURLOPT_TIMEOUT_MS, (long)(g_req_timeout * 1000));
    curl_easy_setopt(s->h, CURLOPT_PRIVATE, s);
}

/* Sets the slot up for one request. `method` is "GET", "PUT" or "POST"; a body is sent from
 * s->body for PUT and POST. */
static void slot_request(slot_t *s, const char *method) {
    curl_easy_setopt(s->h, CURLOPT_URL, s->url);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(s->h, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(s->h, CURLOPT_CUSTOMREQUEST, NULL);
    } else {
        curl_easy_setopt(s->h, CURLOPT_POSTFIELDS, s->body.p);
        curl_easy_setopt(s->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body.len);
        curl_easy_setopt(s->h, CURLOPT_CUSTOMREQUEST, strcmp(method, "POST") ? method : NULL);
    }
    s->resp.len = 0;
    s->resp_bytes = 0;
}

static void engine_init(engine_t *e, int nslots) {
    memset(e, 0, sizeof *e);
    e->m = curl_multi_init();
    /* Enough cached connections that no client's connection is ever closed between requests. */
    curl_multi_setopt(e->m, CURLMOPT_MAXCONNECTS, (long)nslots + 4);
    e->nslots = nslots;
    e->slots = calloc((size_t)nslots, sizeof *e->slots);
    if (!e->slots)
        die("out of memory");
    for (int i = 0; i < nslots; i++)
        slot_init(&e->slots[i]);
}

static int engine_start(engine_t *e, slot_t *s) {
    if (e->deadline > 0 && now_s() >= e->deadline)
        return 0;
    if (!e->next(e, s))
        return 0;
    s->t0 = now_s();
    curl_multi_add_handle(e->m, s->h);
    return 1;
}

static void engine_run(engine_t *e) {
    int active = 0;
    for (int i = 0; i < e->nslots; i++)
        active += engine_start(e, &e->slots[i]);
    while (active > 0) {
        int running = 0;
        curl_multi_perform(e->m, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(e->m, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *h = msg->easy_handle;
            CURLcode res = msg->data.result;
            slot_t *s;
            curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&s);
            double lat = now_s() - s->t0;
            long status = 0;
            if (res == CURLE_OK)
                curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
            else {
                e->transport_errors++;
                if (!e->first_error[0])
                    snprintf(e->first_error, sizeof e->first_error, "%s", curl_easy_strerror(res));
            }
            curl_multi_remove_handle(e->m, h);
            e->bytes_in += s->resp_bytes;
            e->done(e, s, status, lat);
            active--;
            active += engine_start(e, s);
        }
        if (active > 0)
            curl_multi_poll(e->m, NULL, 0, 100, NULL);
    }
}

static void engine_free(engine_t *e) {
    for (int i = 0; i < e->nslots; i++) {
        curl_easy_cleanup(e->slots[i].h);
        free(e->slots[i].body.p);
        free(e->slots[i].resp.p);
    }
    free(e->slots);
    free(e->lat.v);
    curl_multi_cleanup(e->m);
}

/* Records a failed request's status and the start of its reply, once, for the JSON line. */
static void note_error_text(engine_t *e, long status, const char *p, size_t len) {
    e->errors++;
    if (e->first_error[0])
        return;
    int n = snprintf(e->first_error, sizeof e->first_error, "HTTP %ld ", status);
    for (size_t i = 0; i < len && n < (int)sizeof e->first_error - 1; i++) {
        char c = p[i];
        /* keep the note printable inside a JSON string */
        e->first_error[n++] = (c == '"' || c == '\\') ? '\'' : (unsigned char)c < 0x20 ? ' ' : c;
    }
    e->first_error[n] = '\0';
}

static void note_error(engine_t *e, slot_t *s, long status) {
    note_error_text(e, status, s->resp.p, s->resp.len);
}

/* ---------------------------------------------------------------- options */

typedef struct {
    const char *url;
    long docs, batch, clients, size;
    double seconds, timeout;
    int ids;
    int raw;            /* get: --client raw, plain sockets instead of curl */
    uint64_t seed;
    const char *source, *target;
} opts_t;

static void parse_opts(opts_t *o, int argc, char **argv, int first) {
    o->docs = 100000;
    o->batch = 1000;
    o->clients = 1;
    o->size = 1024;
    o->seconds = 10;
    o->timeout = 600;
    o->ids = ID_SEQ;
    o->seed = 1;
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (a[0] != '-') {
            if (o->url)
                die("unexpected argument %s", a);
            o->url = a;
            continue;
        }
        if (!v)
            die("%s needs a value", a);
        i++;
        if (!strcmp(a, "--docs")) o->docs = atol(v);
        else if (!strcmp(a, "--batch")) o->batch = atol(v);
        else if (!strcmp(a, "--clients")) o->clients = atol(v);
        else if (!strcmp(a, "--size")) o->size = atol(v);
        else if (!strcmp(a, "--seconds")) o->seconds = atof(v);
        else if (!strcmp(a, "--timeout")) o->timeout = atof(v);
        else if (!strcmp(a, "--seed")) o->seed = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--source")) o->source = v;
        else if (!strcmp(a, "--target")) o->target = v;
        else if (!strcmp(a, "--client")) {
            if (!strcmp(v, "curl")) o->raw = 0;
            else if (!strcmp(v, "raw")) o->raw = 1;
            else die("--client is curl or raw");
        }
        else if (!strcmp(a, "--ids")) {
            if (!strcmp(v, "seq")) o->ids = ID_SEQ;
            else if (!strcmp(v, "random")) o->ids = ID_RANDOM;
            else die("--ids is seq or random");
        } else
            die("unknown option %s", a);
    }
    if (o->docs < 1 || o->batch < 1 || o->clients < 1 || o->clients > 1024 || o->size < 64)
        die("bad option value");
}

static const char *ids_name(int ids) { return ids == ID_SEQ ? "seq" : "random"; }

/* One request outside any workload: used to create databases and to read counts. Returns the
 * HTTP status (0 if the server could not be reached); the reply goes to `resp` if given. */
static long simple_request(const char *method, const char *url, const char *body, buf_t *resp,
                           double timeout) {
    slot_t s;
    slot_init(&s);
    snprintf(s.url, sizeof s.url, "%s", url);
    if (body)
        buf_add(&s.body, body, strlen(body));
    else
        buf_add(&s.body, "", 0);
    s.keep_resp = 1;
    slot_request(&s, method);
    curl_easy_setopt(s.h, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    long status = 0;
    if (curl_easy_perform(s.h) == CURLE_OK)
        curl_easy_getinfo(s.h, CURLINFO_RESPONSE_CODE, &status);
    if (resp) {
        resp->len = 0;
        buf_add(resp, s.resp.p ? s.resp.p : "", s.resp.len);
    }
    curl_easy_cleanup(s.h);
    free(s.body.p);
    free(s.resp.p);
    return status;
}

/* PUT URL/db; an existing database (412) is fine. */
static void create_db(const char *url) {
    long st = simple_request("PUT", url, "", NULL, 30);
    if (st != 201 && st != 202 && st != 412)
        die("creating %s answered HTTP %ld", url, st);
}

/* Reads a top-level integer field such as "doc_count" from a small JSON reply. */
static long json_int_field(const char *json, const char *field) {
    char key[64];
    snprintf(key, sizeof key, "\"%s\"", field);
    const char *p = json ? strstr(json, key) : NULL;
    if (!p)
        return -1;
    p += strlen(key);
    while (*p == ' ' || *p == ':')
        p++;
    return strtol(p, NULL, 10);
}

static void print_common(const engine_t *e, double secs, double cpu) {
    printf(",\"seconds\":%.3f,\"ok\":%ld,\"errors\":%ld,\"transport_errors\":%ld,"
           "\"client_cpu_s\":%.3f",
           secs, e->ok, e->errors, e->transport_errors, cpu);
    if (e->first_error[0])
        printf(",\"first_error\":\"%s\"", e->first_error);
}

/* ---------------------------------------------------------------- bulk */

typedef struct {
    const opts_t *o;
    long next_batch, nbatches;
    long docs_ok, doc_errors;
    buf_t *bodies;      /* every batch's body, built before the clock starts, or NULL */
} bulk_ctx_t;

static void bulk_body(const bulk_ctx_t *c, long b, buf_t *out) {
    long first = b * c->o->batch;
    long last = first + c->o->batch;
    if (last > c->o->docs)
        last = c->o->docs;
    out->len = 0;
    buf_add(out, "{\"docs\":[", 9);
    char id[33];
    for (long i = first; i < last; i++) {
        if (i > first)
            buf_add(out, ",", 1);
        make_id(id, c->o->ids, c->o->seed, (uint64_t)i);
        add_doc(out, id, (uint64_t)i, c->o->size, 1);
    }
    buf_add(out, "]}", 2);
}

static int bulk_next(engine_t *e, slot_t *s) {
    bulk_ctx_t *c = e->ctx;
    if (c->next_batch >= c->nbatches)
        return 0;
    long b = c->next_batch++;
    long first = b * c->o->batch;
    s->idx = (first + c->o->batch > c->o->docs ? c->o->docs : first + c->o->batch) - first;
    if (c->bodies) {
        /* Lent, not copied: curl sends straight from it, and the context frees it. */
        s->body = c->bodies[b];
    } else {
        bulk_body(c, b, &s->body);
    }
    slot_request(s, "POST");
    return 1;
}

static void bulk_done(engine_t *e, slot_t *s, long status, double lat) {
    bulk_ctx_t *c = e->ctx;
    dvec_push(&e->lat, lat);
    if (status < 200 || status >= 300) {
        note_error(e, s, status);
        c->doc_errors += s->idx;
        return;
    }
    /* A 201 can still carry per-document errors (conflicts); count them. */
    long bad = 0;
    for (const char *p = s->resp.p; p && (p = strstr(p, "\"error\"")); p += 7)
        bad++;
    if (bad)
        note_error(e, s, status);
    e->ok++;
    c->docs_ok += s->idx - bad;
    c->doc_errors += bad;
}

static int cmd_bulk(opts_t *o) {
    engine_t e;
    engine_init(&e, (int)o->clients);
    bulk_ctx_t c = {.o = o, .nbatches = (o->docs + o->batch - 1) / o->batch};
    char url[2048];
    create_db(o->url);
    snprintf(url, sizeof url, "%s/_bulk_docs", o->url);
    for (int i = 0; i < e.nslots; i++) {
        snprintf(e.slots[i].url, sizeof e.slots[i].url, "%s", url);
        e.slots[i].keep_resp = 1;
    }
    /* The bodies are made before the clock starts, as bench/store_ceiling has its records
     * ready: making a batch (1,000 pseudo-random 1 KB payloads) cost ~2 ms of this process's
     * CPU, a quarter of a one-client batch's round trip, and on two shared cores CPU the
     * server lacked. Past 2 GiB of bodies they are made as the batches go. */
    if ((double)o->docs * (double)(o->size + 64) <= 2147483648.0) {
        c.bodies = calloc((size_t)c.nbatches, sizeof *c.bodies);
        for (long b = 0; c.bodies && b < c.nbatches; b++)
            bulk_body(&c, b, &c.bodies[b]);
    }
    e.next = bulk_next;
    e.done = bulk_done;
    e.ctx = &c;
    double cpu0 = cpu_s(), t0 = now_s();
    engine_run(&e);
    double secs = now_s() - t0, cpu = cpu_s() - cpu0;
    if (c.bodies) {
        for (int i = 0; i < e.nslots; i++)
            memset(&e.slots[i].body, 0, sizeof e.slots[i].body);
        for (long b = 0; b < c.nbatches; b++)
            free(c.bodies[b].p);
        free(c.bodies);
    }
    qsort(e.lat.v, e.lat.n, sizeof *e.lat.v, cmp_double);
    printf("{\"op\":\"bulk\",\"ids\":\"%s\",\"docs\":%ld,\"batch\":%ld,\"size\":%ld,\"clients\":%ld,"
           "\"docs_ok\":%ld,\"doc_errors\":%ld,\"docs_per_s\":%.1f,\"batch_p50_ms\":%.2f,"
           "\"batch_p99_ms\":%.2f",
           ids_name(o->ids), o->docs, o->batch, o->size, o->clients, c.docs_ok, c.doc_errors,
           (double)c.docs_ok / secs, pct_ms(&e.lat, 0.5), pct_ms(&e.lat, 0.99));
    print_common(&e, secs, cpu);
    printf("}\n");
    int rc = c.doc_errors || e.transport_errors;
    engine_free(&e);
    return rc;
}

/* ---------------------------------------------------------------- put */

typedef struct {
    const opts_t *o;
    long next_doc;
    const char *db;
} put_ctx_t;

static int put_next(engine_t *e, slot_t *s) {
    put_ctx_t *c = e->ctx;
    if (c->next_doc >= c->o->docs)
        return 0;
    long i = c->next_doc++;
    char id[33];
    make_id(id, c->o->ids, c->o->seed, (uint64_t)i);
    snprintf(s->url, sizeof s->url, "%s/%s", c->db, id);
    s->body.len = 0;
    add_doc(&s->body, id, (uint64_t)i, c->o->size, 0);
    slot_request(s, "PUT");
    return 1;
}

static void plain_done(engine_t *e, slot_t *s, long status, double lat) {
    if (status >= 200 && status < 300) {
        e->ok++;
        dvec_push(&e->lat, lat);
    } else if (status) {
        note_error(e, s, status);
    }
}

static void print_latency_run(const char *op, const opts_t *o, engine_t *e, double secs,
                              double cpu) {
    qsort(e->lat.v, e->lat.n, sizeof *e->lat.v, cmp_double);
    printf("{\"op\":\"%s\",\"clients\":%ld,\"size\":%ld,\"req_per_s\":%.1f,\"p50_ms\":%.3f,"
           "\"p99_ms\":%.3f,\"max_ms\":%.3f",
           op, o->clients, o->size, (double)e->ok / secs, pct_ms(&e->lat, 0.5),
           pct_ms(&e->lat, 0.99), e->lat.n ? e->lat.v[e->lat.n - 1] * 1e3 : 0.0);
    print_common(e, secs, cpu);
    printf("}\n");
}

static int cmd_put(opts_t *o) {
    engine_t e;
    engine_init(&e, (int)o->clients);
    for (int i = 0; i < e.nslots; i++)
        e.slots[i].keep_resp = 1;
    put_ctx_t c = {.o = o, .db = o->url};
    create_db(o->url);
    e.next = put_next;
    e.done = plain_done;
    e.ctx = &c;
    double cpu0 = cpu_s(), t0 = now_s();
    engine_run(&e);
    double secs = now_s() - t0;
    print_latency_run("put", o, &e, secs, cpu_s() - cpu0);
    int rc = e.errors || e.transport_errors;
    engine_free(&e);
    return rc;
}

/* ---------------------------------------------------------------- get */

typedef struct {
    const opts_t *o;
    uint64_t rng;
} get_ctx_t;

static int get_next(engine_t *e, slot_t *s) {
    get_ctx_t *c = e->ctx;
    c->rng = mix64(c->rng);
    uint64_t i = c->rng % (uint64_t)c->o->docs;
    char id[33];
    make_id(id, c->o->ids, c->o->seed, i);
    snprintf(s->url, sizeof s->url, "%s/%s", c->o->url, id);
    slot_request(s, "GET");
    return 1;
}

/* ---------------------------------------------------------------- get --client raw */

/* The same GETs as above, written to plain keep-alive sockets from a request built once but
 * for the id. curl formats every header of every request a byte at a time (its own printf),
 * about 50 instructions a byte, and a Basic URL's credentials are split, base64-encoded and
 * formatted again each time: an Authorization or Cookie header cost the client 10-20% more per
 * GET, and on two shared cores that CPU is taken from the server. Here an extra header is part
 * of one memcpy, so the server under test is what differs between variants, and the server
 * still receives (and must authenticate) the full header on every request. */

typedef struct {
    int fd;
    char req[4096];
    size_t req_len, sent;
    buf_t in;           /* the reply read so far */
    double t0;
    int busy;
} rslot_t;

typedef struct {
    char host[256], port[16];
    char head[2048];    /* "GET /path/" */
    char tail[2048];    /* " HTTP/1.1\r\nHost: …\r\n…\r\n\r\n" */
    size_t head_len, tail_len;
} rtarget_t;

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* URL "http://[user:pw@]host[:port]/path" into the parts every request repeats. The headers
 * are the ones curl sends for this tool's GETs (json_headers), plus Authorization for
 * credentials in the URL and Cookie for BENCH_COOKIE. */
static void rtarget_init(rtarget_t *t, const char *url) {
    if (strncmp(url, "http://", 7) != 0)
        die("--client raw needs an http:// URL");
    const char *a = url + 7, *slash = strchr(a, '/');
    if (!slash)
        slash = a + strlen(a);
    const char *at = memchr(a, '@', (size_t)(slash - a));
    char auth[1024] = "";
    if (at) {
        char cred[512];
        size_t n = 0;
        for (const char *p = a; p < at && n < sizeof cred - 1; p++) {
            if (*p == '%' && p + 2 < at && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
                cred[n++] = (char)(hexval(p[1]) * 16 + hexval(p[2]));
                p += 2;
            } else {
                cred[n++] = *p;
            }
        }
        char b64[BASE64_ENCODE_RAW_LENGTH(sizeof cred) + 1];
        base64_encode_raw((char *)b64, n, (const uint8_t *)cred);
        b64[BASE64_ENCODE_RAW_LENGTH(n)] = '\0';
        snprintf(auth, sizeof auth, "Authorization: Basic %s\r\n", b64);
        a = at + 1;
    }
    size_t alen = (size_t)(slash - a);
    if (alen == 0 || alen >= sizeof t->host)
        die("bad URL %s", url);
    const char *colon = memchr(a, ':', alen);
    size_t hlen = colon ? (size_t)(colon - a) : alen;
    memcpy(t->host, a, hlen);
    t->host[hlen] = '\0';
    snprintf(t->port, sizeof t->port, "%.*s", colon ? (int)(slash - colon - 1) : 2,
             colon ? colon + 1 : "80");
    int n = snprintf(t->head, sizeof t->head, "GET %s/", *slash ? slash : "");
    t->head_len = (size_t)n;
    char cookie[1100] = "";
    if (getenv("BENCH_COOKIE"))
        snprintf(cookie, sizeof cookie, "Cookie: %s\r\n", getenv("BENCH_COOKIE"));
    n = snprintf(t->tail, sizeof t->tail,
                 " HTTP/1.1\r\nHost: %.*s\r\n%sContent-Type: application/json\r\n"
                 "Accept: application/json\r\n%s\r\n",
                 (int)alen, a, auth, cookie);
    if (n <= 0 || (size_t)n >= sizeof t->tail)
        die("request head too long");
    t->tail_len = (size_t)n;
    memset(auth, 0, sizeof auth);
}

static int rslot_connect(const rtarget_t *t, rslot_t *s) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(t->host, t->port, &hints, &ai) != 0 || !ai)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    s->fd = fd;
    return 0;
}

/* 1 when in->p holds one whole reply (its status and length set), 0 when more is needed, -1
 * when it is not HTTP. A body is delimited by Content-Length or chunked encoding; a reply with
 * neither ends when the server closes (`at_eof`). */
static int reply_complete(const buf_t *in, int at_eof, long *status, size_t *len, int *closing) {
    const char *p = in->p;
    size_t n = in->len;
    if (n < 12)
        return at_eof ? -1 : 0;
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (!end)
        return at_eof ? -1 : 0;
    if (strncmp(p, "HTTP/1.", 7) != 0)
        return -1;
    *status = strtol(p + 9, NULL, 10);
    size_t hdr = (size_t)(end - p) + 4;
    long clen = -1;
    int chunked = 0;
    *closing = 0;
    const char *hend = end + 2;   /* past the last header line's "\r\n" */
    for (const char *l = memchr(p, '\n', (size_t)(hend - p)); l && ++l < hend;) {
        const char *nl = memchr(l, '\n', (size_t)(hend - l));
        size_t ll = (size_t)((nl ? nl : hend) - l);
        if (ll > 15 && !strncasecmp(l, "Content-Length:", 15))
            clen = strtol(l + 15, NULL, 10);
        else if (ll > 18 && !strncasecmp(l, "Transfer-Encoding:", 18))
            chunked = memmem(l, ll, "chunked", 7) != NULL;
        else if (ll > 11 && !strncasecmp(l, "Connection:", 11))
            *closing = memmem(l, ll, "close", 5) != NULL;
        l = nl;
    }
    if (*status == 204 || *status == 304 || (*status >= 100 && *status < 200))
        clen = 0;
    if (chunked) {
        size_t at = hdr;
        for (;;) {
            const char *nl = memmem(p + at, n - at, "\r\n", 2);
            if (!nl)
                return at_eof ? -1 : 0;
            size_t sz = strtoul(p + at, NULL, 16);
            at = (size_t)(nl - p) + 2;
            if (sz == 0) {  /* trailers, then an empty line */
                for (;;) {
                    const char *t = memmem(p + at, n - at, "\r\n", 2);
                    if (!t)
                        return at_eof ? -1 : 0;
                    size_t ll = (size_t)(t - p) - at;
                    at = (size_t)(t - p) + 2;
                    if (ll == 0) {
                        *len = at;
                        return 1;
                    }
                }
            }
            if (n - at < sz + 2)
                return at_eof ? -1 : 0;
            at += sz + 2;
        }
    }
    if (clen < 0) {
        *closing = 1;
        if (!at_eof)
            return 0;
        *len = n;
        return 1;
    }
    if (n - hdr < (size_t)clen)
        return at_eof ? -1 : 0;
    *len = hdr + (size_t)clen;
    return 1;
}

static void rslot_next(get_ctx_t *c, const rtarget_t *t, rslot_t *s) {
    c->rng = mix64(c->rng);
    uint64_t i = c->rng % (uint64_t)c->o->docs;
    char id[33];
    make_id(id, c->o->ids, c->o->seed, i);
    size_t idl = strlen(id);
    if (t->head_len + idl + t->tail_len > sizeof s->req)
        die("request too long");
    memcpy(s->req, t->head, t->head_len);
    memcpy(s->req + t->head_len, id, idl);
    memcpy(s->req + t->head_len + idl, t->tail, t->tail_len);
    s->req_len = t->head_len + idl + t->tail_len;
    s->sent = 0;
    s->in.len = 0;
    s->busy = 1;
    s->t0 = now_s();
}

static void rslot_fail(engine_t *e, rslot_t *s, const char *why) {
    e->transport_errors++;
    if (!e->first_error[0])
        snprintf(e->first_error, sizeof e->first_error, "%s", why);
    close(s->fd);
    s->fd = -1;
    s->busy = 0;
}

static int cmd_get_raw(opts_t *o, engine_t *e) {
    rtarget_t t;
    rtarget_init(&t, o->url);
    int n = (int)o->clients;
    rslot_t *slots = calloc((size_t)n, sizeof *slots);
    struct pollfd *pf = calloc((size_t)n, sizeof *pf);
    if (!slots || !pf)
        die("out of memory");
    get_ctx_t c = {.o = o, .rng = 12345};
    for (int i = 0; i < n; i++) {
        /* A server just started, or still closing the last run's connections, may refuse. */
        int tries = 0;
        while (rslot_connect(&t, &slots[i]) != 0) {
            if (++tries == 50)
                die("cannot connect to %s:%s: %s", t.host, t.port, strerror(errno));
            usleep(100 * 1000);
        }
    }
    double cpu0 = cpu_s(), t0 = now_s();
    e->deadline = t0 + o->seconds;
    int active = 0;
    for (int i = 0; i < n; i++) {
        rslot_next(&c, &t, &slots[i]);
        active++;
    }
    while (active > 0) {
        /* Unsent requests go out before the wait: a new one usually fits the socket buffer. */
        for (int i = 0; i < n; i++) {
            rslot_t *s = &slots[i];
            while (s->busy && s->sent < s->req_len) {
                ssize_t w = send(s->fd, s->req + s->sent, s->req_len - s->sent, MSG_NOSIGNAL);
                if (w > 0) {
                    s->sent += (size_t)w;
                    continue;
                }
                if (w < 0 && (errno == EAGAIN || errno == EINTR))
                    break;
                rslot_fail(e, s, "send failed");
                active--;
            }
            pf[i].fd = s->busy ? s->fd : -1;
            pf[i].events = s->sent < s->req_len ? POLLOUT : POLLIN;
            pf[i].revents = 0;
        }
        if (active == 0)
            break;
        if (poll(pf, (nfds_t)n, 100) < 0 && errno != EINTR)
            die("poll: %s", strerror(errno));
        double now = now_s();
        for (int i = 0; i < n; i++) {
            rslot_t *s = &slots[i];
            if (!s->busy)
                continue;
            if (now - s->t0 > g_req_timeout) {
                rslot_fail(e, s, "request timed out");
                active--;
                continue;
            }
            if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR)) || s->sent < s->req_len)
                continue;
            buf_reserve(&s->in, 65536);
            ssize_t r = recv(s->fd, s->in.p + s->in.len, s->in.cap - s->in.len, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r > 0)
                s->in.len += (size_t)r;
            long status = 0;
            size_t len = 0;
            int closing = 0, done = reply_complete(&s->in, r <= 0, &status, &len, &closing);
            if (done == 0)
                continue;
            if (done < 0) {
                rslot_fail(e, s, r <= 0 ? "connection closed mid-reply" : "not an HTTP reply");
            } else {
                double lat = now_s() - s->t0;
                e->bytes_in += len;
                if (status >= 200 && status < 300) {
                    e->ok++;
                    dvec_push(&e->lat, lat);
                } else {
                    const char *b = memmem(s->in.p, len, "\r\n\r\n", 4);
                    note_error_text(e, status, b + 4, len - (size_t)(b + 4 - s->in.p));
                }
                s->busy = 0;
                if (closing || r <= 0) {
                    close(s->fd);
                    s->fd = -1;
                }
            }
            active--;
            if (e->deadline > 0 && now_s() >= e->deadline)
                continue;
            if (s->fd < 0 && rslot_connect(&t, s) != 0) {
                rslot_fail(e, s, "reconnect failed");
                continue;
            }
            rslot_next(&c, &t, s);
            active++;
        }
    }
    double secs = now_s() - t0;
    print_latency_run("get", o, e, secs, cpu_s() - cpu0);
    for (int i = 0; i < n; i++) {
        if (slots[i].fd >= 0)
            close(slots[i].fd);
        free(slots[i].in.p);
    }
    free(slots);
    free(pf);
    int rc = e->errors || e->transport_errors;
    free(e->lat.v);
    return rc;
}

static int cmd_get(opts_t *o) {
    if (o->raw) {
        engine_t e = {0};
        return cmd_get_raw(o, &e);
    }
    engine_t e;
    engine_init(&e, (int)o->clients);
    for (int i = 0; i < e.nslots; i++)
        e.slots[i].keep_resp = 1; /* only so that an error's reply can be quoted */
    get_ctx_t c = {.o = o, .rng = 12345};
    e.next = get_next;
    e.done = plain_done;
    e.ctx = &c;
    double cpu0 = cpu_s(), t0 = now_s();
    e.deadline = t0 + o->seconds;
    engine_run(&e);
    double secs = now_s() - t0;
    print_latency_run("get", o, &e, secs, cpu_s() - cpu0);
    int rc = e.errors || e.transport_errors;
    engine_free(&e);
    return rc;
}

/* ---------------------------------------------------------------- read */

static int cmd_read(opts_t *o) {
    engine_t e;
    engine_init(&e, 1);
    slot_t *s = &e.slots[0];
    s->scanning = 1;
    snprintf(s->url, sizeof s->url, "%s", o->url);
    double cpu0 = cpu_s(), t0 = now_s();
    long status = 0;
    slot_request(s, "GET");
    CURLcode res = curl_easy_perform(s->h);
    if (res == CURLE_OK)
        curl_easy_getinfo(s->h, CURLINFO_RESPONSE_CODE, &status);
    double secs = now_s() - t0;
    double ttfb = 0;
    curl_easy_getinfo(s->h, CURLINFO_STARTTRANSFER_TIME, &ttfb);
    int ok = res == CURLE_OK && status == 200;
    printf("{\"op\":\"read\",\"status\":%ld,\"rows\":%" PRIu64 ",\"bytes\":%" PRIu64
           ",\"seconds\":%.3f,\"rows_per_s\":%.1f,\"mb_per_s\":%.1f,\"first_byte_ms\":%.1f,"
           "\"client_cpu_s\":%.3f",
           status, s->scan.rows, s->resp_bytes, secs, ok ? (double)s->scan.rows / secs : 0.0,
           (double)s->resp_bytes / secs / 1e6, ttfb * 1e3, cpu_s() - cpu0);
    if (res != CURLE_OK)
        printf(",\"first_error\":\"%s\"", curl_easy_strerror(res));
    printf("}\n");
    engine_free(&e);
    return !ok;
}

/* ---------------------------------------------------------------- replicate */

/* POSTs a one-shot replication and waits for its reply, then checks the target's doc_count. */
static int cmd_replicate(opts_t *o) {
    if (!o->source || !o->target)
        die("replicate needs --source and --target");
    /* Created up front: not every server honours create_target the same way. */
    create_db(o->target);
    buf_t body = {0}, resp = {0};
    buf_printf(&body, "{\"source\":\"%s\",\"target\":\"%s\"}", o->source, o->target);
    double cpu0 = cpu_s(), t0 = now_s();
    long status = simple_request("POST", o->url, body.p, &resp, o->timeout);
    double secs = now_s() - t0;
    buf_t info = {0};
    long count = -1;
    if (simple_request("GET", o->target, NULL, &info, 30) == 200)
        count = json_int_field(info.p, "doc_count");
    int ok = status >= 200 && status < 300 && resp.p && !strstr(resp.p, "\"error\"") &&
             count == o->docs;
    printf("{\"op\":\"replicate\",\"status\":%ld,\"docs\":%ld,\"target_docs\":%ld,"
           "\"seconds\":%.3f,\"docs_per_s\":%.1f,\"ok\":%s,\"client_cpu_s\":%.3f",
           status, o->docs, count, secs, ok ? (double)count / secs : 0.0, ok ? "true" : "false",
           cpu_s() - cpu0);
    if (!ok) {
        printf(",\"first_error\":\"");
        for (size_t i = 0; resp.p && i < resp.len && i < 200; i++) {
            char c = resp.p[i];
            putchar(c == '"' || c == '\\' ? '\'' : (unsigned char)c < 0x20 ? ' ' : c);
        }
        printf("\"");
    }
    printf("}\n");
    free(body.p);
    free(resp.p);
    free(info.p);
    return !ok;
}

/* ---------------------------------------------------------------- ceiling */

/* The trivial endpoint: a fixed small JSON reply, as cheap as a server can make it. The reply
 * is queued on the second call of the access handler: queueing it on the first makes
 * libmicrohttpd close the connection after it, and the test would measure connects. */
static enum MHD_Result trivial_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                       const char *method, const char *version,
                                       const char *upload, size_t *upload_size, void **con_cls) {
    static int marker;
    struct MHD_Response *r = cls;
    (void)url, (void)method, (void)version, (void)upload;
    if (*con_cls == NULL) {
        *con_cls = &marker;
        return MHD_YES;
    }
    *upload_size = 0;
    return MHD_queue_response(conn, MHD_HTTP_OK, r);
}

static int cmd_ceiling(opts_t *o) {
    static const char reply[] = "{\"ok\":true}\n";
    struct MHD_Response *r = MHD_create_response_from_buffer(
        sizeof reply - 1, (void *)reply, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", "application/json");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL, trivial_handler, r,
        MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(ncpu > 0 ? ncpu : 1),
        MHD_OPTION_CONNECTION_LIMIT, 4096u, MHD_OPTION_END);
    if (!d)
        die("cannot start the trivial server");
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%u/db", (unsigned)info->port);
    opts_t g = *o;
    g.url = base;
    engine_t e;
    engine_init(&e, (int)o->clients);
    get_ctx_t c = {.o = &g, .rng = 777};
    e.next = get_next;
    e.done = plain_done;
    e.ctx = &c;
    double cpu0 = cpu_s(), t0 = now_s();
    e.deadline = t0 + o->seconds;
    engine_run(&e);
    double secs = now_s() - t0;
    print_latency_run("ceiling", o, &e, secs, cpu_s() - cpu0);
    engine_free(&e);
    MHD_stop_daemon(d);
    MHD_destroy_response(r);
    return 0;
}

/* ---------------------------------------------------------------- wait, port */

static int cmd_wait(opts_t *o) {
    double end = now_s() + o->timeout;
    while (now_s() < end) {
        long st = simple_request("GET", o->url, NULL, NULL, 2);
        if (st >= 200 && st < 300)
            return 0;
        usleep(100 * 1000);
    }
    fprintf(stderr, "loadgen: %s did not answer within %.0f s\n", o->url, o->timeout);
    return 1;
}

/* A port the kernel just handed out and that nothing listens on now. Another process could
 * take it before the server binds it; on a benchmark machine that race is harmless. */
static int cmd_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        die("no free port: %s", strerror(errno));
    printf("%u\n", (unsigned)ntohs(sa.sin_port));
    close(fd);
    return 0;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: loadgen bulk|put|get|read|replicate|ceiling|wait|port [URL] "
                        "[options]\n");
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "port"))
        return cmd_port();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    g_headers = json_headers();
    /* BENCH_COOKIE="AuthSession=…": every request carries it (the auth variant, bench/auth.sh). */
    if (getenv("BENCH_COOKIE")) {
        char h[1024];
        snprintf(h, sizeof h, "Cookie: %s", getenv("BENCH_COOKIE"));
        g_headers = curl_slist_append(g_headers, h);
    }
    opts_t o = {0};
    parse_opts(&o, argc, argv, 2);
    g_req_timeout = o.timeout;
    if (strcmp(cmd, "ceiling") && !o.url)
        die("%s needs a URL", cmd);
    int rc;
    if (!strcmp(cmd, "bulk")) rc = cmd_bulk(&o);
    else if (!strcmp(cmd, "put")) rc = cmd_put(&o);
    else if (!strcmp(cmd, "get")) rc = cmd_get(&o);
    else if (!strcmp(cmd, "read")) rc = cmd_read(&o);
    else if (!strcmp(cmd, "replicate")) rc = cmd_replicate(&o);
    else if (!strcmp(cmd, "ceiling")) rc = cmd_ceiling(&o);
    else if (!strcmp(cmd, "wait")) rc = cmd_wait(&o);
    else die("unknown subcommand %s", cmd);
    fflush(stdout);
    curl_slist_free_all(g_headers);
    curl_global_cleanup();
    return rc;
}
