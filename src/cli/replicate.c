/* mimeo replicate SOURCE TARGET: runs one replication from the command line through
 * mimeo_replicate (the same engine as POST /_replicate). SOURCE and TARGET are URLs, or
 * database names of the data directory given with --data. On a terminal a progress line
 * shows documents written, changes pending, docs/s and elapsed time; the one-shot result
 * (CouchDB's JSON) goes to stdout; a failure prints one line to stderr and exits 1. */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mimeo.h"
#include "cli.h"
#include "config.h"
#include "../common/buf.h"
#include "../json/json.h"

static void replicate_usage(FILE *out) {
    fprintf(out,
            "usage: mimeo replicate SOURCE TARGET [--continuous] [--create-target]\n"
            "                       [--doc-ids ID,ID…] [--data DIR]\n"
            "                       [--selector JSON | --filter DDOC/NAME [--query-params JSON]]\n"
            "                       [--checkpoint-interval MS] [--retries N]\n"
            "                       [--max-response-size SIZE] [--quiet]\n\n"
            "SOURCE and TARGET are database URLs (http://user:pass@host:port/db) or, with\n"
            "--data, names of databases in that data directory. SIZE takes K, M, G.\n");
}

/* The command line, parsed. */
typedef struct replicate_args {
    const char *source, *target;
    const char *data;
    const char *doc_ids;          /* "a,b,c" */
    const char *selector;         /* JSON object text */
    const char *filter;           /* "ddoc/name", "_view", "_design" */
    const char *query_params;     /* JSON object text */
    bool        continuous, create_target, quiet;
    long long   ckpt_ms;          /* -1: not given */
    long long   retries;          /* -1: not given */
    long long   max_response;     /* -1: not given */
} replicate_args;

enum { REPLICATE_OPT_CKPT = 0x100, REPLICATE_OPT_RETRIES, REPLICATE_OPT_DOC_IDS,
       REPLICATE_OPT_MAX_RESPONSE, REPLICATE_OPT_DATA, REPLICATE_OPT_CONTINUOUS,
       REPLICATE_OPT_CREATE, REPLICATE_OPT_SELECTOR, REPLICATE_OPT_FILTER,
       REPLICATE_OPT_QUERY_PARAMS };
static const struct option replicate_options[] = {
    { "help",                no_argument,       NULL, 'h' },
    { "quiet",               no_argument,       NULL, 'q' },
    { "continuous",          no_argument,       NULL, REPLICATE_OPT_CONTINUOUS },
    { "create-target",       no_argument,       NULL, REPLICATE_OPT_CREATE },
    { "data",                required_argument, NULL, REPLICATE_OPT_DATA },
    { "doc-ids",             required_argument, NULL, REPLICATE_OPT_DOC_IDS },
    { "selector",            required_argument, NULL, REPLICATE_OPT_SELECTOR },
    { "filter",              required_argument, NULL, REPLICATE_OPT_FILTER },
    { "query-params",        required_argument, NULL, REPLICATE_OPT_QUERY_PARAMS },
    { "checkpoint-interval", required_argument, NULL, REPLICATE_OPT_CKPT },
    { "retries",             required_argument, NULL, REPLICATE_OPT_RETRIES },
    { "max-response-size",   required_argument, NULL, REPLICATE_OPT_MAX_RESPONSE },
    { NULL, 0, NULL, 0 },
};

/* A number flag's value into *out, or one line on stderr and false. */
static bool replicate_number(const char *flag, const char *text, uint64_t min, uint64_t max,
                             bool units, long long *out) {
    uint64_t v;
    if (!config_parse_number(text, min, max, units, &v)) {
        fprintf(stderr, "mimeo replicate: %s: '%s' is not %s from %llu to %llu\n", flag, text,
                units ? "a size" : "a whole number", (unsigned long long)min,
                (unsigned long long)max);
        return false;
    }
    *out = (long long)v;
    return true;
}

/* Whether text is a JSON object; else one line on stderr. */
static bool replicate_json_object(const char *flag, const char *text) {
    jval *v = NULL;
    bool ok = json_tree_parse(text, strlen(text), NULL, &v, NULL) == 0 && v->type == JV_OBJECT;
    jval_free(v);
    if (!ok) fprintf(stderr, "mimeo replicate: %s: '%s' is not a JSON object\n", flag, text);
    return ok;
}

/* 0, 1 after --help, or 2 after a usage error (said on stderr). */
static int replicate_parse(int argc, char **argv, replicate_args *a) {
    memset(a, 0, sizeof *a);
    a->ckpt_ms = a->retries = a->max_response = -1;
    optind = 0;
    int ch;
    /* GNU order: options may come before, between or after the two operands. */
    while ((ch = getopt_long(argc, argv, "hq", replicate_options, NULL)) != -1) {
        switch (ch) {
        case 'h':
            replicate_usage(stdout);
            return 1;
        case 'q': a->quiet = true; break;
        case REPLICATE_OPT_CONTINUOUS: a->continuous = true; break;
        case REPLICATE_OPT_CREATE: a->create_target = true; break;
        case REPLICATE_OPT_DATA: a->data = optarg; break;
        case REPLICATE_OPT_DOC_IDS: a->doc_ids = optarg; break;
        case REPLICATE_OPT_SELECTOR:
            if (!replicate_json_object("--selector", optarg)) return 2;
            a->selector = optarg;
            break;
        case REPLICATE_OPT_FILTER: a->filter = optarg; break;
        case REPLICATE_OPT_QUERY_PARAMS:
            if (!replicate_json_object("--query-params", optarg)) return 2;
            a->query_params = optarg;
            break;
        case REPLICATE_OPT_CKPT:
            if (!replicate_number("--checkpoint-interval", optarg, 1, 86400000, false,
                                  &a->ckpt_ms))
                return 2;
            break;
        case REPLICATE_OPT_RETRIES:
            if (!replicate_number("--retries", optarg, 0, 1000, false, &a->retries)) return 2;
            break;
        case REPLICATE_OPT_MAX_RESPONSE:
            if (!replicate_number("--max-response-size", optarg, 1024, (uint64_t)1 << 40, true,
                                  &a->max_response))
                return 2;
            break;
        default:   /* getopt_long said what was wrong */
            fprintf(stderr, "Run `mimeo replicate --help` for the options.\n");
            return 2;
        }
    }
    while (optind < argc && (!a->source || !a->target)) {
        if (!a->source) a->source = argv[optind++];
        else a->target = argv[optind++];
    }
    if (optind < argc || !a->source || !a->target) {
        fprintf(stderr, "mimeo replicate: %s\n\n", optind < argc ? "too many arguments"
                                                           : "SOURCE and TARGET are needed");
        replicate_usage(stderr);
        return 2;
    }
    return 0;
}

/* The /_replicate body the arguments describe, new (buf_destroy it). */
static int replicate_body(const replicate_args *a, buf *body) {
    buf_init(body, 0);
    int rc = buf_puts(body, "{\"source\":");
    rc |= json_put_cstr(body, a->source);
    rc |= buf_puts(body, ",\"target\":");
    rc |= json_put_cstr(body, a->target);
    if (a->continuous) rc |= buf_puts(body, ",\"continuous\":true");
    if (a->create_target) rc |= buf_puts(body, ",\"create_target\":true");
    if (a->ckpt_ms >= 0) rc |= buf_printf(body, ",\"checkpoint_interval\":%lld", a->ckpt_ms);
    if (a->retries >= 0) rc |= buf_printf(body, ",\"retries_per_request\":%lld", a->retries);
    if (a->max_response >= 0)
        rc |= buf_printf(body, ",\"max_response_size\":%lld", a->max_response);
    if (a->selector) {
        rc |= buf_puts(body, ",\"selector\":");
        rc |= buf_puts(body, a->selector);
    }
    if (a->filter) {
        rc |= buf_puts(body, ",\"filter\":");
        rc |= json_put_cstr(body, a->filter);
    }
    if (a->query_params) {
        rc |= buf_puts(body, ",\"query_params\":");
        rc |= buf_puts(body, a->query_params);
    }
    if (a->doc_ids) {
        rc |= buf_puts(body, ",\"doc_ids\":[");
        const char *p = a->doc_ids;
        int n = 0;
        while (*p) {
            const char *c = strchr(p, ',');
            size_t l = c ? (size_t)(c - p) : strlen(p);
            if (l > 0) {
                if (n++ > 0) rc |= buf_putc(body, ',');
                rc |= json_put_str(body, p, l);
            }
            p += l + (c ? 1 : 0);
        }
        rc |= buf_putc(body, ']');
    }
    rc |= buf_putc(body, '}');
    return rc ? MIMEO_ENOMEM : 0;
}

typedef struct replicate_run {
    mimeo_env  *env;
    const char *body;
    size_t      len;
    char       *out;
    size_t      out_len;
    unsigned    status;
    mimeo_err   err;
    int         rc;
    volatile int done;
    pthread_mutex_t lock;
} replicate_run;

static void *replicate_thread(void *arg) {
    replicate_run *r = arg;
    int rc = mimeo_replicate(r->env, r->body, r->len, &r->out, &r->out_len, &r->status,
                             &r->err);
    pthread_mutex_lock(&r->lock);
    r->rc = rc;
    r->done = 1;
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static uint64_t replicate_u64(const jval *o, const char *key) {
    int64_t v;
    return jval_as_i64(jval_get(o, key), &v) && v > 0 ? (uint64_t)v : 0;
}

/* One progress line from the first replication task, over the previous one. */
static void replicate_progress(mimeo_env *env, uint64_t start_ms) {
    /* The last figures seen stay on the line once the job is gone. */
    static uint64_t written, pending, failures;
    char *json = NULL;
    size_t len = 0;
    if (mimeo_active_tasks(env, &json, &len) != 0) return;
    jval *v = NULL;
    if (json_tree_parse(json, len, NULL, &v, NULL) == 0 && v->type == JV_ARRAY &&
        v->count > 0) {
        written = pending = failures = 0;
        for (size_t i = 0; i < v->count; i++) {
            written += replicate_u64(v->items[i], "docs_written");
            pending += replicate_u64(v->items[i], "changes_pending");
            failures += replicate_u64(v->items[i], "doc_write_failures");
        }
    }
    jval_free(v);
    mimeo_free(json);
    double secs = (double)(clock_ms() - start_ms) / 1000.0;
    fprintf(stderr, "\r\033[K%llu docs written, %llu pending, %llu failed, %.0f docs/s, %.1fs",
            (unsigned long long)written, (unsigned long long)pending,
            (unsigned long long)failures, secs > 0 ? (double)written / secs : 0.0, secs);
    fflush(stderr);
}

/* Opens the data directory named by --data, if any. 0, or 1 after saying why. */
static int replicate_open(const replicate_args *a, mimeo_env **env) {
    *env = NULL;
    if (!a->data) return 0;
    mimeo_err e = {0};
    if (mimeo_env_open(a->data, NULL, env, &e) != 0) {
        fprintf(stderr, "mimeo replicate: cannot open %s: %s\n", a->data, e.reason);
        return 1;
    }
    return 0;
}

/* Runs the replication on a thread of its own while this one shows progress and takes
 * SIGINT/SIGTERM (blocked for every thread, taken by sigtimedwait here). A continuous job
 * is then followed until a signal. Returns the exit status; run->out holds the reply. */
static int replicate_run_job(const replicate_args *a, mimeo_env *env, replicate_run *run) {
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);   /* a peer closing a connection must not kill us */

    bool tty = !a->quiet && isatty(STDERR_FILENO);
    uint64_t start = clock_ms();
    pthread_t tid;
    if (pthread_create(&tid, NULL, replicate_thread, run) != 0) {
        fprintf(stderr, "mimeo replicate: cannot start a thread\n");
        return 1;
    }
    bool interrupted = false;
    for (;;) {
        pthread_mutex_lock(&run->lock);
        int done = run->done;
        pthread_mutex_unlock(&run->lock);
        if (done) break;
        struct timespec ts = { 0, 250 * 1000000L };
        int sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            interrupted = true;
            mimeo_replicator_stop(env);   /* cancels the one-shot run too */
        }
        if (tty) replicate_progress(env, start);
    }
    pthread_join(tid, NULL);
    if (run->rc != 0) {
        if (tty) fputc('\n', stderr);
        fprintf(stderr, "mimeo replicate: %s: %s\n", run->err.error, run->err.reason);
        return 1;
    }
    if (a->continuous && !interrupted) {
        if (!a->quiet) {
            fwrite(run->out, 1, run->out_len, stdout);
            fputc('\n', stdout);
            fflush(stdout);
        }
        for (;;) {
            struct timespec ts = { 0, 500 * 1000000L };
            int sig = sigtimedwait(&sigs, NULL, &ts);
            if (sig == SIGINT || sig == SIGTERM) break;
            if (sig < 0 && errno != EAGAIN && errno != EINTR) break;
            if (tty) replicate_progress(env, start);
        }
        mimeo_replicator_stop(env);
        if (tty) fputc('\n', stderr);
        return 0;
    }
    if (tty) {
        replicate_progress(env, start);
        fputc('\n', stderr);
    }
    if (interrupted) return 1;
    fwrite(run->out, 1, run->out_len, stdout);
    fputc('\n', stdout);
    return 0;
}

/* The command, in order: arguments, the request body, the data directory, the run. */
int cli_replicate(int argc, char **argv) {
    replicate_args a;
    int status = replicate_parse(argc, argv, &a);
    if (status) return status == 1 ? 0 : status;
    buf body;
    if (replicate_body(&a, &body) != 0) {
        buf_destroy(&body);
        fprintf(stderr, "mimeo replicate: out of memory\n");
        return 1;
    }
    mimeo_env *env = NULL;
    if (replicate_open(&a, &env) != 0) {
        buf_destroy(&body);
        return 1;
    }
    replicate_run run;
    memset(&run, 0, sizeof run);
    run.env = env;
    run.body = body.data;
    run.len = body.len;
    pthread_mutex_init(&run.lock, NULL);
    status = replicate_run_job(&a, env, &run);
    mimeo_free(run.out);
    pthread_mutex_destroy(&run.lock);
    buf_destroy(&body);
    if (env) mimeo_env_close(env);
    return status;
}
