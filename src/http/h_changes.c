/* GET/POST /{db}/_changes, streamed row by row in every feed mode. One library cursor serves
 * the whole feed: it reads in bounded slices and keeps its place, so a feed of any length
 * costs one slice of memory and this file does no paging of its own. Rows are written from
 * the cursor's fields. The content reader never blocks: it reads the next rows itself (short
 * LMDB reads), or, with none, suspends the connection and arms a waiter (loop.c) that costs
 * no thread and resumes it on the database's next commit, at the heartbeat or timeout, or
 * at shutdown. A feed with a filter that may call a query server is stepped on a worker
 * instead. A database delete ends the feed as CouchDB ends it.
 *   normal, longpoll:  {"results":[\n row,\n row \n],\n"last_seq":N,"pending":P}\n
 *   continuous:        row\n row\n … {"last_seq":N,"pending":P}\n   (blank line = heartbeat)
 *   eventsource:       data: row\nid: seq\n\n …     (event: heartbeat\ndata: \n\n) */
#include <errno.h>
#include <inttypes.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_int.h"

#define HTTP_HEARTBEAT_MIN_MS 50

typedef enum { FEED_NORMAL, FEED_LONGPOLL, FEED_CONTINUOUS, FEED_EVENTSOURCE } http_feed_kind;
typedef enum { PH_START, PH_ROWS, PH_WAIT, PH_END, PH_DONE } http_feed_phase;

typedef struct http_feed {
    http_server        *srv;
    struct MHD_Connection *conn;
    http_task           task;        /* the worker's step, or the armed waiter */
    bool                failed;      /* a read failed mid-stream: cut the reply */
    mimeo_db           *db;          /* owned: taken over from the request */
    mimeo_cursor       *cur;         /* owned */
    http_feed_kind      kind;
    http_feed_phase     ph;
    mimeo_changes_opts  opts;
    http_string_list    ids;         /* filter=_doc_ids: the ids asked for */
    http_filter        *filter;      /* any other filter, or NULL */
    bool                want_docs;   /* include_docs as asked (the filter may read them) */
    uint64_t            last_row;    /* seq of the last row delivered */
    uint64_t            limit;       /* with a filter: rows to deliver (the cursor's counts
                                        rows read) */
    uint64_t            since;
    uint64_t            rows_total;
    uint64_t            heartbeat_ms;/* 0: none */
    uint64_t            timeout_ms;
    uint64_t            deadline;    /* clock_ms() when waiting gives up; 0: never */
    uint64_t            next_beat;
    mimeo_err           err;         /* why opening or reading failed */
    bool                streaming;   /* the reader runs: the status line is gone */
    bool                attachments; /* attachments=true: inline their data in docs */
    buf                 att_hold;
    buf                 out;
    size_t              pos;
    /* a JavaScript filter's batch: the rows' text, written out when they pass */
    buf                 held;
    struct http_held { uint64_t seq; size_t off, len; } *heldv;
    size_t              held_cap;
    /* Parked (server.c's http_park): the feed owns the socket and frames its own chunks. */
    uint64_t            park_expect; /* 0: this reply cannot park */
    bool                parked;
    atomic_int          refs;        /* the reply's hold, and the parked feed's own */
    bool                park_ended;  /* the last chunk is framed: end once it is sent */
    struct http_conn   *cx;
    buf                 wire;        /* framed bytes not yet sent */
    size_t              wire_pos;
} http_feed;

static void http_feed_destroy(http_feed *f) {
    mimeo_cursor_close(f->cur);
    if (f->db) mimeo_db_close(f->db);
    http_string_list_destroy(&f->ids);
    http_filter_free(f->filter);
    buf_destroy(&f->out);
    buf_destroy(&f->att_hold);
    buf_destroy(&f->held);
    buf_destroy(&f->wire);
    free(f->heldv);
    free(f);
}

/* The reply's free callback, and the end of a parked feed: libmicrohttpd frees the reply
 * of a parked feed on its thread while the feed may already run (or end) on a worker. */
static void http_feed_free(void *cls) {
    http_feed *f = cls;
    if (atomic_fetch_sub(&f->refs, 1) == 1) http_feed_destroy(f);
}

static int http_feed_before_row(http_feed *f) {
    switch (f->kind) {
    case FEED_NORMAL: case FEED_LONGPOLL:
        return f->rows_total > 0 ? buf_puts(&f->out, ",\n") : 0;
    case FEED_CONTINUOUS:
        return 0;
    case FEED_EVENTSOURCE:
        return buf_puts(&f->out, "data: ");
    }
    return 0;
}

static int http_feed_after_row(http_feed *f, uint64_t seq) {
    int rc = 0;
    if (f->kind == FEED_CONTINUOUS) rc = buf_putc(&f->out, '\n');
    else if (f->kind == FEED_EVENTSOURCE) rc = buf_printf(&f->out, "\nid: %" PRIu64 "\n\n", seq);
    f->rows_total++;
    f->last_row = seq;
    return rc;
}

/* The row's JSON as the feed shows it, into b. */
static int http_feed_put_row(http_feed *f, const mimeo_row *row, buf *b) {
    int rc = 0;
    mimeo_row shown = *row;
    if (!f->want_docs) shown.body = NULL;
    else if (f->attachments) rc = http_att_inline_row(f->db, row, &shown, &f->att_hold);
    if (rc == 0) rc = http_put_change_row(b, &shown, f->opts.all_docs_style, f->opts.conflicts);
    return rc;
}

static int http_feed_row(http_feed *f, const mimeo_row *row) {
    int rc = http_feed_before_row(f);
    if (rc == 0) rc = http_feed_put_row(f, row, &f->out);
    int arc = http_feed_after_row(f, row->seq);
    return rc ? rc : arc;
}

/* http_feed_rows with a JavaScript filter: rows are read a batch at a time, their documents
 * run through the function in one query-server call, and the rows that pass written out. */
static int http_feed_rows_batched(http_feed *f, bool *at_end) {
    *at_end = false;
    http_filter *flt = f->filter;
    while (f->out.len - f->pos < HTTP_STREAM_CHUNK) {
        if (f->limit && f->rows_total >= f->limit) {
            *at_end = true;
            return 0;
        }
        http_filter_clear(flt);
        buf_reset(&f->held);
        int rc = 0;
        bool end = false;
        while (!http_filter_full(flt)) {
            const mimeo_row *row;
            if ((rc = mimeo_cursor_next(f->cur, &row, &f->err)) < 0) break;
            if (!row) {
                end = true;
                break;
            }
            if (!row->body) continue;   /* never passes (http_filter_test) */
            size_t i = http_filter_count(flt);
            if (i == f->held_cap) {
                size_t nc = f->held_cap ? f->held_cap * 2 : HTTP_FILTER_BATCH;
                struct http_held *g = realloc(f->heldv, nc * sizeof *g);
                if (!g) return MIMEO_ENOMEM;
                f->heldv = g;
                f->held_cap = nc;
            }
            f->heldv[i] = (struct http_held){row->seq, f->held.len, 0};
            if ((rc = http_feed_put_row(f, row, &f->held)) != 0 ||
                (rc = http_filter_add(flt, row)) != 0)
                return rc;
            f->heldv[i].len = f->held.len - f->heldv[i].off;
        }
        /* the rows read before a failed read still go out (a deleted database ends the feed
         * after them) */
        int frc = http_filter_run(flt, &f->err);
        if (frc < 0) return frc;
        for (size_t i = 0; i < http_filter_count(flt); i++) {
            if (!http_filter_kept(flt, i) || (f->limit && f->rows_total >= f->limit)) continue;
            struct http_held *h = &f->heldv[i];
            int wrc = http_feed_before_row(f);
            if (wrc == 0) wrc = buf_put(&f->out, f->held.data + h->off, h->len);
            int arc = http_feed_after_row(f, h->seq);
            if (wrc || arc) return wrc ? wrc : arc;
        }
        if (rc < 0) return rc;
        if (end) {
            *at_end = true;
            return 0;
        }
    }
    return 0;
}

/* Moves rows from the cursor into f->out, up to a chunk. *at_end: the cursor has no more
 * rows now. */
static int http_feed_rows(http_feed *f, bool *at_end) {
    if (f->filter && http_filter_batches(f->filter)) return http_feed_rows_batched(f, at_end);
    *at_end = false;
    while (f->out.len - f->pos < HTTP_STREAM_CHUNK) {
        if (f->filter && f->limit && f->rows_total >= f->limit) {
            *at_end = true;
            return 0;
        }
        const mimeo_row *row;
        int rc = mimeo_cursor_next(f->cur, &row, &f->err);
        if (rc < 0) return rc;
        if (!row) {
            *at_end = true;
            return 0;
        }
        if (f->filter) {
            rc = http_filter_test(f->filter, row, &f->err);
            if (rc < 0) return rc;
            if (rc == 0) continue;
        }
        if ((rc = http_feed_row(f, row)) != 0) return rc;
    }
    return 0;
}

static void http_feed_heartbeat(http_feed *f) {
    if (f->kind == FEED_EVENTSOURCE) buf_puts(&f->out, "event: heartbeat\ndata: \n\n");
    else buf_putc(&f->out, '\n');
}

static void http_feed_end(http_feed *f) {
    uint64_t last = f->cur ? mimeo_cursor_last_seq(f->cur) : f->since;
    uint64_t pending = f->cur ? mimeo_cursor_pending(f->cur) : 0;
    /* A filtered feed cut by its limit ends at the last row it gave, not where the cursor
     * stopped reading ahead. */
    if (f->filter && f->limit && f->rows_total >= f->limit) last = f->last_row;
    switch (f->kind) {
    case FEED_NORMAL: case FEED_LONGPOLL:
        buf_printf(&f->out, "\n],\n\"last_seq\":%" PRIu64 ",\"pending\":%" PRIu64 "}\n",
                   last, pending);
        break;
    case FEED_CONTINUOUS:
        buf_printf(&f->out, "{\"last_seq\":%" PRIu64 ",\"pending\":%" PRIu64 "}\n", last,
                   pending);
        break;
    case FEED_EVENTSOURCE:
        break;
    }
    f->ph = PH_DONE;
}

static void http_feed_start_wait(http_feed *f) {
    uint64_t now = clock_ms();
    f->ph = PH_WAIT;
    /* With a heartbeat the feed never times out (CouchDB). */
    f->deadline = f->heartbeat_ms ? 0 : now + f->timeout_ms;
    if (f->heartbeat_ms) f->next_beat = now + f->heartbeat_ms;
}

#define HTTP_FEED_IDLE 1

/* A feed about to wait has sent everything (http_feed_fill steps only with nothing left to
 * send): its buffers go until the next write or heartbeat, so that thousands of idle feeds
 * hold none. */
static void http_feed_shed(http_feed *f) {
    if (f->out.len != f->pos) return;
    buf_destroy(&f->out);
    f->pos = 0;
    buf_destroy(&f->att_hold);
    buf_destroy(&f->held);
    free(f->heldv);
    f->heldv = NULL;
    f->held_cap = 0;
    if (f->wire.len == f->wire_pos) {
        buf_destroy(&f->wire);
        f->wire_pos = 0;
    }
}

/* One step of the feed; may append nothing. <0 on a library error, HTTP_FEED_IDLE when it
 * has to wait for a commit or its next heartbeat or timeout. */
static int http_feed_step(http_feed *f) {
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
        rc = http_feed_rows(f, &at_end);
        if (rc == MIMEO_ENOTFOUND && f->streaming) {
            /* The database was deleted under a running feed: end it properly, as the
             * status line has gone already. */
            f->ph = PH_END;
            return 0;
        }
        if (rc != 0) return rc;
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
            if (f->opts.descending || f->opts.limit_zero ||
                (f->limit && f->rows_total >= f->limit))
                f->ph = PH_END;
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
        rc = mimeo_cursor_wait(f->cur, 0);
        /* Deleted while we waited: CouchDB ends the feed. */
        if (rc < 0) f->ph = PH_END;
        else if (rc > 0) f->ph = PH_ROWS;
        else {
            http_feed_shed(f);
            return HTTP_FEED_IDLE;
        }
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

/* When the feed's waiter is due: the heartbeat or the timeout, whichever comes first. */
static uint64_t http_feed_due(const http_feed *f) {
    uint64_t due = f->deadline;
    if (f->heartbeat_ms && (!due || f->next_beat < due)) due = f->next_beat;
    return due;
}

/* Arms the feed's waiter for its next commit, heartbeat or timeout (http_loop_wait). */
static bool http_feed_arm(http_feed *f) {
    return http_loop_wait(f->srv, &f->task, f->db, mimeo_cursor_last_seq(f->cur),
                          http_feed_due(f));
}

/* Steps until there is something to send or the feed is done (0), it has to wait
 * (HTTP_FEED_IDLE), or a read failed (<0). */
static int http_feed_fill(http_feed *f) {
    while (f->out.len == f->pos && f->ph != PH_DONE) {
        int rc = http_feed_step(f);
        if (rc != 0) return rc;
    }
    return 0;
}

/* A feed whose rows need a query server (a JavaScript filter) is stepped on a worker, the
 * connection suspended: it resumes the connection once there is something to send, or arms
 * the waiter (which queues this task again) and leaves it suspended. */
static void http_feed_task(http_task *t) {
    http_feed *f = (http_feed *)((char *)t - offsetof(http_feed, task));
    while (!f->task.hangup) {
        int rc = http_feed_fill(f);
        if (rc < 0) f->failed = true;
        if (rc != HTTP_FEED_IDLE) break;
        if (http_feed_arm(f))
            return;
    }
    http_resume(f->srv, f->conn);
}

/* Any other feed reads its rows right here, on the event thread (short LMDB reads that
 * never block); its waiter only resumes the connection. */
static void http_feed_resume_task(http_task *t) {
    http_feed *f = (http_feed *)((char *)t - offsetof(http_feed, task));
    http_resume(f->srv, f->conn);
}

/* ---- parked feeds ---------------------------------------------------------------------- */
/* Sends what is framed: 0 all sent, 1 the socket takes no more now, -1 the client is gone. */
static int http_feed_park_flush(http_feed *f) {
    while (f->wire_pos < f->wire.len) {
        ssize_t n = send(f->task.fd, f->wire.data + f->wire_pos, f->wire.len - f->wire_pos,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            f->wire_pos += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? 1 : -1;
    }
    buf_reset(&f->wire);
    f->wire_pos = 0;
    return 0;
}

static void http_feed_park_finish(http_feed *f, bool whole) {
    http_park_end(f->srv, f->cx, whole);
    http_feed_free(f);
}

/* A parked feed's step, on a worker: when its waiter fires (a commit, its heartbeat or
 * timeout, shutdown, the client gone) or its socket takes more bytes. The rows go out as
 * HTTP/1.1 chunks, as libmicrohttpd would have sent them; a feed that ends whole hands the
 * socket back for the next request, one that fails is cut as libmicrohttpd cuts it. */
static void http_feed_park_task(http_task *t) {
    http_feed *f = (http_feed *)((char *)t - offsetof(http_feed, task));
    if (t->hangup) {
        http_feed_park_finish(f, false);
        return;
    }
    for (;;) {
        int w = http_feed_park_flush(f);
        if (w < 0) break;
        if (w > 0) {
            http_park_wait_writable(f->srv, &f->task);
            return;
        }
        if (f->park_ended) {
            http_feed_park_finish(f, true);
            return;
        }
        if (f->failed) break;
        int rc = http_feed_fill(f);
        if (rc == HTTP_FEED_IDLE) {
            if (http_feed_arm(f))
                return;
            continue;
        }
        if (rc < 0) f->failed = true;   /* what was read before goes out first */
        size_t n = f->out.len - f->pos;
        int brc = 0;
        if (n > 0) {
            brc = buf_printf(&f->wire, "%zx\r\n", n);
            if (brc == 0) brc = buf_put(&f->wire, f->out.data + f->pos, n);
            if (brc == 0) brc = buf_puts(&f->wire, "\r\n");
            buf_reset(&f->out);
            f->pos = 0;
        }
        if (brc == 0 && f->ph == PH_DONE && !f->failed) {
            brc = buf_puts(&f->wire, "0\r\n\r\n");
            f->park_ended = true;
        }
        if (brc != 0) break;
    }
    http_feed_park_finish(f, false);
}

/* Just parked (on the event thread): waits as any feed waits. */
static void http_feed_park_start(http_feed *f) {
    f->task.run = http_feed_park_task;
    f->task.hangup = false;
    if (!http_feed_arm(f))
        http_loop_submit(f->srv, &f->task);
}

/* From the content reader, with the feed waiting and all sent: parks it if it may. */
static bool http_feed_park(http_feed *f) {
    if (!http_park(f->srv, f->conn, f->park_expect, &f->cx, &f->task.fd)) return false;
    f->parked = true;
    f->conn = NULL;
    atomic_store(&f->refs, 2);
    http_feed_park_start(f);
    return true;
}

static ssize_t http_feed_read(void *cls, uint64_t pos, char *dst, size_t max) {
    http_feed *f = cls;
    (void)pos;
    f->streaming = true;
    if (f->task.hangup) return MHD_CONTENT_READER_END_WITH_ERROR;   /* the client left */
    if (f->out.len == f->pos && f->ph != PH_DONE && !f->failed && !f->filter) {
        int rc = http_feed_fill(f);
        if (rc < 0) f->failed = true;
        if (rc == HTTP_FEED_IDLE && http_feed_park(f)) {
            /* Waiting from here on costs the feed's own state only. */
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (rc == HTTP_FEED_IDLE) {
            /* 0 is only allowed while suspended (MHD would spin otherwise); suspended
             * before arming, so that a waiter firing at once finds it so. */
            atomic_fetch_add(&f->srv->suspended, 1);
            MHD_suspend_connection(f->conn);
            f->task.run = http_feed_resume_task;
            if (!http_feed_arm(f))
                http_resume(f->srv, f->conn);   /* something new already: come back */
            return 0;
        }
    }
    size_t n = http_drain(&f->out, &f->pos, dst, max);
    if (n > 0) return (ssize_t)n;
    if (f->failed) return MHD_CONTENT_READER_END_WITH_ERROR;
    if (f->ph == PH_DONE) return MHD_CONTENT_READER_END_OF_STREAM;
    /* A filtered feed with nothing to send: to a worker; or, when it is only waiting and
     * nothing is due yet, armed from here, which spares the worker a turn. */
    uint64_t now = clock_ms(), due = http_feed_due(f);
    if (f->ph == PH_WAIT && (!due || now < due)) {
        /* Parked, the filter runs on the workers that step the feed, as it did. */
        if (http_feed_park(f)) return MHD_CONTENT_READER_END_WITH_ERROR;
        atomic_fetch_add(&f->srv->suspended, 1);
        MHD_suspend_connection(f->conn);
        if (!http_feed_arm(f))
            http_loop_submit(f->srv, &f->task);
        return 0;
    }
    http_suspend_submit(f->srv, f->conn, &f->task);
    return 0;
}

/* ---- parameters ------------------------------------------------------------------------- */
/* since: an integer, "now", or CouchDB's "N-opaque" form (the number is what counts). */
static bool http_parse_since(const char *v, size_t n, uint64_t *out, bool *now) {
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
static bool http_feed_doc_ids(http_req *r, http_feed *f) {
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

static bool http_feed_params(http_req *r, http_feed *f) {
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
    if (v && !http_parse_since(v, n, &f->since, &now)) {
        http_reply_error(r, 400, "bad_request",
                         "Malformed sequence supplied in 'since' parameter.");
        return false;
    }

    uint64_t limit = 0;
    int has_limit = http_arg_u64(r, "limit", &limit);
    if (has_limit < 0) return false;
    f->opts.limit = limit;
    f->opts.limit_zero = has_limit > 0 && limit == 0;

    if (http_arg_bool(r, "descending", &f->opts.descending) < 0 ||
        http_arg_bool(r, "include_docs", &f->opts.include_docs) < 0 ||
        http_arg_bool(r, "conflicts", &f->opts.conflicts) < 0)
        return false;
    bool ignored;
    if (http_arg_bool(r, "attachments", &f->attachments) < 0 ||
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
    if (v && n > 0) {
        if (strcmp(v, "_doc_ids") == 0) {
            if (!http_feed_doc_ids(r, f)) return false;
        } else if (!http_filter_open(r, v, n, &f->filter)) {
            return false;
        }
    }
    f->want_docs = f->opts.include_docs;
    f->limit = f->opts.limit;
    if (f->filter) {
        /* The cursor reads every row; the limit counts the rows that pass. */
        f->opts.limit = 0;
        if (http_filter_needs_body(f->filter)) f->opts.include_docs = true;
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
        f->since = info.update_seq;
    }
    f->opts.since = f->since;
    return true;
}

void http_h_changes(http_req *r) {
    if (!http_db(r)) return;
    http_feed *f = calloc(1, sizeof *f);
    if (!f) {
        http_reply_err(r, MIMEO_ENOMEM, NULL);
        return;
    }
    f->srv = r->srv;
    f->conn = r->conn;
    f->task.run = http_feed_task;
    atomic_init(&f->refs, 1);
    /* The socket, for noticing a client that leaves while the feed waits (none when the
     * request was made without a connection, as the unit tests and fuzzers do). */
    const union MHD_ConnectionInfo *ci =
        r->conn ? MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD) : NULL;
    f->task.fd = ci ? ci->connect_fd : 0;
    buf_init(&f->out, 0);
    buf_init(&f->held, 0);
    if (!http_feed_params(r, f)) {
        http_feed_destroy(f);
        return;
    }
    f->park_expect = http_park_expect(r);
    /* The feed outlives the request context's view of it: it takes the db handle. */
    f->db = r->db;
    r->db = NULL;
    /* The cursor, the opening and the first rows now, so a failure can still be an error
     * reply; any waiting happens later, in the content reader. */
    int rc = mimeo_changes_open(f->db, &f->opts, &f->cur, &f->err);
    if (rc == 0) rc = http_feed_step(f);
    if (rc == 0) rc = http_feed_step(f);
    if (rc != 0) {
        if (rc == MIMEO_ENOTFOUND)
            http_reply_error(r, 404, "not_found", "Database does not exist.");
        else if (f->err.error[0] && strcmp(f->err.error, "os_process_error") == 0)
            http_reply_error(r, 500, f->err.error, f->err.reason);
        else
            http_reply_err(r, rc, &f->err);
        http_feed_destroy(f);
        return;
    }
    http_reply_stream_small(r, 200, f->kind == FEED_EVENTSOURCE ? "text/event-stream" : NULL,
                            http_feed_read, f, http_feed_free);
}
