/* Server-level endpoints: GET / (the welcome object whose uuid PouchDB uses to name its
 * replications), /_up (health checks), /_all_dbs and /_uuids. */
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

void http_h_root(http_req *r) {
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"couchdb\":\"Welcome\",\"version\":\"" MIMEO_COUCHDB_VERSION "\",\"uuid\":");
    json_put_cstr(&b, mimeo_env_uuid(r->srv->env));
    buf_puts(&b, ",\"features\":[],\"vendor\":{\"name\":\"mimeo\",\"version\":\""
                 MIMEO_VERSION "\"}}\n");
    http_reply_buf(r, 200, &b);
}

void http_h_up(http_req *r) {
    http_reply_static(r, 200, "{\"status\":\"ok\"}\n");
}

/* ---- /_all_dbs -------------------------------------------------------------------------- */
typedef struct http_dbs {
    buf        *out;
    const jval *lo, *hi;     /* bounds in byte order (already swapped for descending) */
    bool        hi_inclusive, lo_inclusive;
    bool        descending;
    uint64_t    skip, limit;
    bool        limited;
    uint64_t    emitted;
    /* descending: names are gathered first, then emitted backwards */
    char      **names;
    size_t     *lens;
    size_t      count, alloc;
} http_dbs;

static int http_cmp(const char *a, size_t al, const char *b, size_t bl) {
    int c = memcmp(a, b, al < bl ? al : bl);
    if (c) return c;
    return al < bl ? -1 : al > bl;
}

static int http_dbs_emit(http_dbs *d, const char *name, size_t len) {
    if (d->skip > 0) { d->skip--; return 0; }
    if (d->limited && d->emitted >= d->limit) return 1;
    if (d->emitted++ > 0) buf_putc(d->out, ',');
    return json_put_str(d->out, name, len) != 0 ? 1 : 0;
}

static int http_dbs_row(void *ctx, const char *name, size_t len) {
    http_dbs *d = ctx;
    if (d->lo) {
        int c = http_cmp(name, len, d->lo->str, d->lo->len);
        if (c < 0 || (c == 0 && !d->lo_inclusive)) return 0;
    }
    if (d->hi) {
        int c = http_cmp(name, len, d->hi->str, d->hi->len);
        if (c > 0 || (c == 0 && !d->hi_inclusive)) return 1;
    }
    if (!d->descending) return http_dbs_emit(d, name, len);
    if (d->count == d->alloc) {
        size_t na = d->alloc ? d->alloc * 2 : 64;
        char **nn = realloc(d->names, na * sizeof *nn);
        if (!nn) return MIMEO_ENOMEM;
        d->names = nn;
        size_t *nl = realloc(d->lens, na * sizeof *nl);
        if (!nl) return MIMEO_ENOMEM;
        d->lens = nl;
        d->alloc = na;
    }
    char *copy = malloc(len + 1);
    if (!copy) return MIMEO_ENOMEM;
    memcpy(copy, name, len);
    copy[len] = '\0';
    d->names[d->count] = copy;
    d->lens[d->count++] = len;
    return 0;
}

void http_h_all_dbs(http_req *r) {
    jval *start = NULL, *end = NULL;
    bool descending = false, inclusive_end = true;
    uint64_t limit = 0, skip = 0;
    int has_limit;
    if (http_arg_json_str(r, "startkey", &start) < 0 ||
        (!start && http_arg_json_str(r, "start_key", &start) < 0) ||
        http_arg_json_str(r, "endkey", &end) < 0 ||
        (!end && http_arg_json_str(r, "end_key", &end) < 0) ||
        http_arg_bool(r, "descending", &descending) < 0 ||
        http_arg_bool(r, "inclusive_end", &inclusive_end) < 0 ||
        (has_limit = http_arg_u64(r, "limit", &limit)) < 0 ||
        http_arg_u64(r, "skip", &skip) < 0)
        goto out;

    buf b;
    buf_init(&b, 0);
    http_dbs d = { .out = &b, .descending = descending, .skip = skip, .limit = limit,
                   .limited = has_limit > 0 };
    if (!descending) {
        d.lo = start; d.lo_inclusive = true;
        d.hi = end;   d.hi_inclusive = inclusive_end;
    } else {
        d.hi = start; d.hi_inclusive = true;
        d.lo = end;   d.lo_inclusive = inclusive_end;
    }
    buf_putc(&b, '[');
    int rc = mimeo_db_list(r->srv->env, d.lo ? d.lo->str : NULL, http_dbs_row, &d);
    if (rc < 0) {
        buf_destroy(&b);
        http_reply_err(r, rc, NULL);
    } else {
        for (size_t i = d.count; i-- > 0;)
            if (http_dbs_emit(&d, d.names[i], d.lens[i])) break;
        buf_puts(&b, "]\n");
        http_reply_buf(r, 200, &b);
    }
    for (size_t i = 0; i < d.count; i++) free(d.names[i]);
    free(d.names);
    free(d.lens);
out:
    if (start) jval_free(start);
    if (end) jval_free(end);
}

/* ---- /_uuids ---------------------------------------------------------------------------- */
void http_h_uuids(http_req *r) {
    uint64_t count = 1;
    if (http_arg_u64(r, "count", &count) < 0) return;
    if (count > 1000) {
        http_reply_error(r, 400, "bad_request", "count parameter too large");
        return;
    }
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"uuids\":[");
    for (uint64_t i = 0; i < count; i++) {
        char id[33];
        mimeo_uuid_next(r->srv->env, id);
        if (i) buf_putc(&b, ',');
        buf_putc(&b, '"');
        buf_put(&b, id, 32);
        buf_putc(&b, '"');
    }
    buf_puts(&b, "]}\n");
    http_reply_buf(r, 200, &b);
    http_header(r, "Pragma", "no-cache");
}
