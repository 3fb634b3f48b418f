/* GET/POST /{db}/_changes, streamed row by row in every feed mode. Rows are fetched from
 * the library HTTP_PAGE_ROWS at a time (continuing from the last page's seq), so a feed
 * of any length costs one page of memory. Waiting (longpoll, continuous, eventsource)
 * happens inside the content reader, in slices of at most HTTP_WAIT_SLICE_MS so that a
 * server shutdown is noticed quickly; mimeo_changes_wait wakes on the commit itself, so a
 * new write reaches a waiting client at once.
 *   normal, longpoll:  {"results":[\n row,\n row \n],\n"last_seq":N,"pending":P}\n
 *   continuous:        row\n row\n … {"last_seq":N,"pending":P}\n   (blank line = heartbeat)
 *   eventsource:       data: row\nid: seq\n\n …     (event: heartbeat\ndata: \n\n) */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

#define HTTP_WAIT_SLICE_MS 500
#define HTTP_HEARTBEAT_MIN_MS 50

typedef enum { FEED_NORMAL, FEED_LONGPOLL, FEED_CONTINUOUS, FEED_EVENTSOURCE } http_feed_kind;
typedef enum { PH_START, PH_ROWS, PH_WAIT, PH_END, PH_DONE } http_feed_phase;

typedef struct http_feed {
    http_server        *srv;
    mimeo_db           *db;          /* owned: taken over from the request */
    http_feed_kind      kind;
    http_feed_phase     ph;
    mimeo_changes_opts  opts;        /* per-request options; since/limit set per page */
    http_string_list    ids;         /* filter=_doc_ids: the ids asked for */
    uint64_t            cursor;      /* since of the next page */
    bool                limited;
    uint64_t            remaining;   /* rows still allowed when limited */
    uint64_t            pending;
    uint64_t            rows_total;
    uint64_t            page_rows;
    uint64_t            heartbeat_ms;/* 0: none */
    uint64_t            timeout_ms;
    uint64_t            deadline;    /* clock_ms() when waiting gives up; 0: never */
    uint64_t            next_beat;
    mimeo_err           err;         /* why the last page failed */
    bool                streaming;   /* the reader runs: the status line is gone */
    buf                 out;
    size_t              pos;
} http_feed;

static void http_feed_free(void *cls)
{
    http_feed *f = cls;
    if (f->db) mimeo_db_close(f->db);
    http_string_list_destroy(&f->ids);
    buf_destroy(&f->out);
    free(f);
}

/* The seq of a row: the library writes {"seq":N,… first. */
static uint64_t http_row_seq(const char *json, size_t len)
{
    static const char pat[] = "{\"seq\":";
    uint64_t v = 0;
    if (len < sizeof pat || memcmp(json, pat, sizeof pat - 1) != 0) return 0;
    for (size_t i = sizeof pat - 1; i < len && json[i] >= '0' && json[i] <= '9'; i++)
        v = v * 10 + (uint64_t)(json[i] - '0');
    return v;
}

static int http_feed_row(void *ctx, const char *json, size_t len)
{
    http_feed *f = ctx;
    int rc = 0;
    switch (f->kind) {
    case FEED_NORMAL: case FEED_LONGPOLL:
        if (f->rows_total > 0) rc = buf_puts(&f->out, ",\n");
        if (rc == 0) rc = buf_put(&f->out, json, len);
        break;
    case FEED_CONTINUOUS:
        rc = buf_put(&f->out, json, len);
        if (rc == 0) rc = buf_putc(&f->out, '\n');
        break;
    case FEED_EVENTSOURCE:
        rc = buf_puts(&f->out, "data: ");
        if (rc == 0) rc = buf_put(&f->out, json, len);
        if (rc == 0) rc = buf_printf(&f->out, "\nid: %" PRIu64 "\n\n", http_row_seq(json, len));
        break;
    }
    f->rows_total++;
    f->page_rows++;
    return rc;
}

/* Fetches one page after f->cursor into f->out. *at_end: the feed has no more rows now. */
static int http_feed_page(http_feed *f, bool *at_end)
{
    mimeo_changes_opts o = f->opts;
    uint64_t page = HTTP_PAGE_ROWS;
    if (f->limited && f->remaining < page) page = f->remaining;
    o.since = f->cursor;
    /* Descending pages backwards from the last row sent (before = its seq). */
    if (f->opts.descending) o.before = f->rows_total ? f->cursor : 0;
    o.limit = page;
    o.limit_zero = f->limited && page == 0;
    f->page_rows = 0;
    uint64_t last = f->cursor, pending = 0;
    mimeo_err e = {0};
    int rc = mimeo_changes(f->db, &o, http_feed_row, f, &last, &pending, &e);
    if (rc < 0) {
        f->err = e;
        return rc;
    }
    /* An empty last page of a descending feed must not replace the last row's seq (the
     * library answers update_seq when it delivers nothing). */
    if (!f->opts.descending || f->page_rows > 0 || f->rows_total == 0) f->cursor = last;
    f->pending = pending;
    if (f->limited) f->remaining -= f->page_rows < f->remaining ? f->page_rows : f->remaining;
    *at_end = o.limit_zero || f->page_rows < page || (f->limited && f->remaining == 0);
    return 0;
}

static void http_feed_heartbeat(http_feed *f)
{
    if (f->kind == FEED_EVENTSOURCE) buf_puts(&f->out, "event: heartbeat\ndata: \n\n");
    else buf_putc(&f->out, '\n');
}

static void http_feed_end(http_feed *f)
{
    switch (f->kind) {
    case FEED_NORMAL: case FEED_LONGPOLL:
        buf_printf(&f->out, "\n],\n\"last_seq\":%" PRIu64 ",\"pending\":%" PRIu64 "}\n",
                   f->cursor, f->pending);
        break;
    case FEED_CONTINUOUS:
        buf_printf(&f->out, "{\"last_seq\":%" PRIu64 ",\"pending\":%" PRIu64 "}\n", f->cursor,
                   f->pending);
        break;
    case FEED_EVENTSOURCE:
        break;
    }
    f->ph = PH_DONE;
}

static void http_feed_start_wait(http_feed *f)
{
    uint64_t now = clock_ms();
    f->ph = PH_WAIT;
    /* With a heartbeat the feed never times out (CouchDB). */
    f->deadline = f->heartbeat_ms ? 0 : now + f->timeout_ms;
    if (f->heartbeat_ms) f->next_beat = now + f->heartbeat_ms;
}

/* One step of the feed; may append nothing (a quiet wait slice). <0 on a library error. */
static int http_feed_step(http_feed *f)
{
    bool at_end = false;
    int rc;
    switch (f->ph) {
    case PH_START:
        if (f->kind == FEED_NORMAL || f->kind == FEED_LONGPOLL)
            buf_puts(&f->out, "{\"results\":[\n");
        f->ph = PH_ROWS;
        /* Return the opening bytes at once, so the status line and headers leave before a
         * longpoll or continuous feed starts to wait. */
        if (f->out.len == 0) buf_putc(&f->out, '\n');
        return 0;
    case PH_ROWS:
        rc = http_feed_page(f, &at_end);
        if (rc == MIMEO_ENOTFOUND && f->streaming) {
            /* The database was deleted under a running feed: end it properly, as the
             * status line has gone already. */
            f->ph = PH_END;
            return 0;
        }
        if (rc != 0) return rc;
        if (f->limited && f->remaining == 0) { f->ph = PH_END; return 0; }
        if (!at_end) return 0;
        switch (f->kind) {
        case FEED_NORMAL:
            f->ph = PH_END;
            break;
        case FEED_LONGPOLL:
            if (f->rows_total > 0 || f->opts.descending || f->opts.limit_zero) f->ph = PH_END;
            else http_feed_start_wait(f);
            break;
        default:
            if (f->opts.descending) f->ph = PH_END;
            else http_feed_start_wait(f);
            break;
        }
        return 0;
    case PH_WAIT: {
        if (atomic_load(&f->srv->stopping)) { f->ph = PH_END; return 0; }
        uint64_t now = clock_ms();
        if (f->deadline && now >= f->deadline) { f->ph = PH_END; return 0; }
        if (f->heartbeat_ms && now >= f->next_beat) {
            http_feed_heartbeat(f);
            f->next_beat = now + f->heartbeat_ms;
            return 0;
        }
        uint64_t slice = HTTP_WAIT_SLICE_MS;
        if (f->deadline && f->deadline - now < slice) slice = f->deadline - now;
        if (f->heartbeat_ms && f->next_beat - now < slice) slice = f->next_beat - now;
        if (slice == 0) slice = 1;
        uint64_t seq = mimeo_changes_wait(f->db, f->cursor, slice);
        if (seq > f->cursor) f->ph = PH_ROWS;
        return 0;
    }
    case PH_END:
        http_feed_end(f);
        return 0;
    case PH_DONE:
        return 0;
    }
    return 0;
}

static ssize_t http_feed_read(void *cls, uint64_t pos, char *dst, size_t max)
{
    http_feed *f = cls;
    (void)pos;
    f->streaming = true;
    for (;;) {
        size_t n = http_drain(&f->out, &f->pos, dst, max);
        if (n > 0) return (ssize_t)n;
        if (f->ph == PH_DONE) return MHD_CONTENT_READER_END_OF_STREAM;
        if (http_feed_step(f) != 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

/* ---- parameters ------------------------------------------------------------------------- */
/* since: an integer, "now", or CouchDB's "N-opaque" form (the number is what counts). */
static bool http_parse_since(const char *v, size_t n, uint64_t *out, bool *now)
{
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') { v++; n -= 2; }   /* JSON-quoted */
    if (n == 3 && memcmp(v, "now", 3) == 0) { *now = true; return true; }
    uint64_t x = 0;
    size_t i = 0;
    for (; i < n && v[i] >= '0' && v[i] <= '9'; i++) {
        if (x > (UINT64_MAX - 9) / 10) return false;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    if (i == 0 || (i < n && v[i] != '-')) return false;
    *out = x;
    return true;
}

/* doc_ids from the query (JSON) or the POST body {"doc_ids":[…]}; all strings. */
static bool http_feed_doc_ids(http_req *r, http_feed *f)
{
    static const char reason[] = "`doc_ids` filter parameter is not a list of doc ids.";
    int rc = http_arg_string_list(r, "doc_ids", "bad_request", reason, &f->ids);
    if (rc < 0) return false;
    if (rc == 0) {
        http_reply_error(r, 400, "bad_request", reason);
        return false;
    }
    f->opts.doc_ids = f->ids.strs;
    f->opts.doc_id_lens = f->ids.lens;
    f->opts.doc_id_count = f->ids.count;
    return true;
}

static bool http_feed_params(http_req *r, http_feed *f)
{
    size_t n;
    const char *v;

    v = http_arg_get(r, "feed", &n);
    f->kind = FEED_NORMAL;
    if (v) {
        if (strcmp(v, "normal") == 0) f->kind = FEED_NORMAL;
        else if (strcmp(v, "longpoll") == 0) f->kind = FEED_LONGPOLL;
        else if (strcmp(v, "continuous") == 0 || strcmp(v, "live") == 0)
            f->kind = FEED_CONTINUOUS;
        else if (strcmp(v, "eventsource") == 0) f->kind = FEED_EVENTSOURCE;
        else {
            http_reply_error(r, 400, "bad_request",
                             "Supported `feed` types: normal, continuous, live, longpoll, "
                             "eventsource");
            return false;
        }
    }

    bool now = false;
    v = http_arg_get(r, "since", &n);
    if (v && !http_parse_since(v, n, &f->cursor, &now)) {
        http_reply_error(r, 400, "bad_request",
                         "Malformed sequence supplied in 'since' parameter.");
        return false;
    }

    uint64_t limit = 0;
    int has_limit = http_arg_u64(r, "limit", &limit);
    if (has_limit < 0) return false;
    f->limited = has_limit > 0;
    f->remaining = limit;

    if (http_arg_bool(r, "descending", &f->opts.descending) < 0 ||
        http_arg_bool(r, "include_docs", &f->opts.include_docs) < 0 ||
        http_arg_bool(r, "conflicts", &f->opts.conflicts) < 0)
        return false;
    bool ignored;
    if (http_arg_bool(r, "attachments", &ignored) < 0 ||
        http_arg_bool(r, "att_encoding_info", &ignored) < 0)
        return false;

    v = http_arg_get(r, "style", &n);
    if (v) {
        if (strcmp(v, "all_docs") == 0) f->opts.all_docs_style = true;
        else if (strcmp(v, "main_only") != 0) {
            http_reply_error(r, 400, "bad_request",
                             "Supported `style` values: main_only, all_docs");
            return false;
        }
    }

    v = http_arg_get(r, "filter", &n);
    if (v) {
        if (strcmp(v, "_doc_ids") != 0) {
            http_reply_error(r, 400, "bad_request",
                             "Only the _doc_ids filter is supported");
            return false;
        }
        if (!http_feed_doc_ids(r, f)) return false;
    }

    v = http_arg_get(r, "heartbeat", &n);
    if (v) {
        uint64_t hb = 0;
        if (strcmp(v, "true") == 0) hb = 60000;
        else if (strcmp(v, "false") == 0) hb = 0;
        else if (http_arg_u64(r, "heartbeat", &hb) < 0) return false;
        if (hb && hb < HTTP_HEARTBEAT_MIN_MS) hb = HTTP_HEARTBEAT_MIN_MS;
        f->heartbeat_ms = hb;
    }
    uint64_t timeout = r->srv->cfg.changes_timeout_ms;
    if (http_arg_u64(r, "timeout", &timeout) < 0) return false;
    if (timeout > r->srv->cfg.changes_timeout_ms) timeout = r->srv->cfg.changes_timeout_ms;
    f->timeout_ms = timeout;

    if (now) {
        mimeo_db_info info;
        int rc = mimeo_db_info_get(r->db, &info);
        if (rc != 0) {
            http_reply_err(r, rc, NULL);
            return false;
        }
        f->cursor = info.update_seq;
    }
    return true;
}

void http_h_changes(http_req *r)
{
    if (!http_db(r)) return;
    http_feed *f = calloc(1, sizeof *f);
    if (!f) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    f->srv = r->srv;
    buf_init(&f->out, 0);
    if (!http_feed_params(r, f)) {
        http_feed_free(f);
        return;
    }
    f->opts.limit_zero = f->limited && f->remaining == 0;
    /* The feed outlives the request context's view of it: it takes the db handle. */
    f->db = r->db;
    r->db = NULL;
    /* The opening and the first page now, so a failure can still be an error reply; any
     * waiting happens later, in the content reader. */
    int rc = http_feed_step(f);
    if (rc == 0) rc = http_feed_step(f);
    if (rc != 0) {
        if (rc == MIMEO_ENOTFOUND)
            http_reply_error(r, 404, "not_found", "Database does not exist.");
        else
            http_reply_err(r, rc, &f->err);
        http_feed_free(f);
        return;
    }
    http_reply_stream(r, 200, f->kind == FEED_EVENTSOURCE ? "text/event-stream" : NULL,
                      http_feed_read, f, http_feed_free);
}
