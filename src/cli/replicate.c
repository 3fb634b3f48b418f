/* mimeo replicate SOURCE TARGET: runs one replication from the command line through
 * mimeo_replicate (the same engine as POST /_replicate). SOURCE and TARGET are URLs, or
 * database names of the data directory given with --data. On a terminal a progress line
 * shows documents written, changes pending, docs/s and elapsed time; the one-shot result
 * (CouchDB's JSON) goes to stdout; a failure prints one line to stderr and exits 1. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mimeo.h"
#include "replicate.h"
#include "../common/buf.h"
#include "../json/json.h"

static void replicate_usage(FILE *out)
{
    fprintf(out,
            "usage: mimeo replicate SOURCE TARGET [--continuous] [--create-target]\n"
            "                       [--doc-ids ID,ID…] [--data DIR]\n"
            "                       [--checkpoint-interval MS] [--retries N] [--quiet]\n\n"
            "SOURCE and TARGET are database URLs (http://user:pass@host:port/db) or, with\n"
            "--data, names of databases in that data directory.\n");
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

static void *replicate_thread(void *arg)
{
    replicate_run *r = arg;
    int rc = mimeo_replicate(r->env, r->body, r->len, &r->out, &r->out_len, &r->status,
                             &r->err);
    pthread_mutex_lock(&r->lock);
    r->rc = rc;
    r->done = 1;
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

static uint64_t replicate_u64(const jval *o, const char *key)
{
    int64_t v;
    return jval_as_i64(jval_get(o, key), &v) && v > 0 ? (uint64_t)v : 0;
}

/* One progress line from the first replication task, over the previous one. */
static void replicate_progress(mimeo_env *env, uint64_t start_ms)
{
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

static int replicate_put_ep(buf *b, const char *s)
{
    return json_put_cstr(b, s);
}

int cli_replicate(int argc, char **argv)
{
    const char *ends[2] = { NULL, NULL };
    int nends = 0;
    const char *data = NULL, *doc_ids = NULL;
    bool continuous = false, create_target = false, quiet = false;
    long ckpt_ms = -1, retries = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            replicate_usage(stdout);
            return 0;
        } else if (strcmp(a, "--continuous") == 0) {
            continuous = true;
        } else if (strcmp(a, "--create-target") == 0) {
            create_target = true;
        } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            quiet = true;
        } else if (strcmp(a, "--data") == 0 && i + 1 < argc) {
            data = argv[++i];
        } else if (strncmp(a, "--data=", 7) == 0) {
            data = a + 7;
        } else if (strcmp(a, "--doc-ids") == 0 && i + 1 < argc) {
            doc_ids = argv[++i];
        } else if (strncmp(a, "--doc-ids=", 10) == 0) {
            doc_ids = a + 10;
        } else if (strcmp(a, "--checkpoint-interval") == 0 && i + 1 < argc) {
            ckpt_ms = strtol(argv[++i], NULL, 10);
        } else if (strcmp(a, "--retries") == 0 && i + 1 < argc) {
            retries = strtol(argv[++i], NULL, 10);
        } else if (a[0] == '-' && a[1] == '-') {
            fprintf(stderr, "mimeo replicate: unknown option '%s'\n\n", a);
            replicate_usage(stderr);
            return 2;
        } else if (nends < 2) {
            ends[nends++] = a;
        } else {
            fprintf(stderr, "mimeo replicate: too many arguments\n\n");
            replicate_usage(stderr);
            return 2;
        }
    }
    if (nends != 2) {
        replicate_usage(stderr);
        return 2;
    }

    buf body;
    buf_init(&body, 0);
    buf_puts(&body, "{\"source\":");
    replicate_put_ep(&body, ends[0]);
    buf_puts(&body, ",\"target\":");
    replicate_put_ep(&body, ends[1]);
    if (continuous) buf_puts(&body, ",\"continuous\":true");
    if (create_target) buf_puts(&body, ",\"create_target\":true");
    if (ckpt_ms > 0) buf_printf(&body, ",\"checkpoint_interval\":%ld", ckpt_ms);
    if (retries >= 0) buf_printf(&body, ",\"retries_per_request\":%ld", retries);
    if (doc_ids) {
        buf_puts(&body, ",\"doc_ids\":[");
        const char *p = doc_ids;
        int n = 0;
        while (*p) {
            const char *c = strchr(p, ',');
            size_t l = c ? (size_t)(c - p) : strlen(p);
            if (l > 0) {
                if (n++ > 0) buf_putc(&body, ',');
                json_put_str(&body, p, l);
            }
            p += l + (c ? 1 : 0);
        }
        buf_putc(&body, ']');
    }
    buf_putc(&body, '}');

    mimeo_env *env = NULL;
    if (data) {
        mimeo_err e = {0};
        if (mimeo_env_open(data, NULL, &env, &e) != 0) {
            fprintf(stderr, "mimeo replicate: cannot open %s: %s\n", data, e.reason);
            buf_destroy(&body);
            return 1;
        }
    }
    /* SIGINT/SIGTERM are taken by sigtimedwait below, in this thread only. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);   /* a peer closing a connection must not kill us */

    bool tty = !quiet && isatty(STDERR_FILENO);
    uint64_t start = clock_ms();
    replicate_run run;
    memset(&run, 0, sizeof run);
    run.env = env;
    run.body = body.data;
    run.len = body.len;
    pthread_mutex_init(&run.lock, NULL);
    pthread_t tid;
    int status = 0;
    if (pthread_create(&tid, NULL, replicate_thread, &run) != 0) {
        fprintf(stderr, "mimeo replicate: cannot start a thread\n");
        status = 1;
        goto out;
    }
    bool interrupted = false;
    for (;;) {
        pthread_mutex_lock(&run.lock);
        int done = run.done;
        pthread_mutex_unlock(&run.lock);
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
    if (run.rc != 0) {
        if (tty) fputc('\n', stderr);
        fprintf(stderr, "mimeo replicate: %s: %s\n", run.err.error, run.err.reason);
        status = 1;
        goto out;
    }
    if (continuous && !interrupted) {
        /* The job runs on its own threads; follow it until told to stop. */
        if (!quiet) {
            fwrite(run.out, 1, run.out_len, stdout);
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
        goto out;
    }
    if (tty) {
        replicate_progress(env, start);
        fputc('\n', stderr);
    }
    if (interrupted) {
        status = 1;
        goto out;
    }
    fwrite(run.out, 1, run.out_len, stdout);
    fputc('\n', stdout);
out:
    mimeo_free(run.out);
    pthread_mutex_destroy(&run.lock);
    buf_destroy(&body);
    if (env) mimeo_env_close(env);
    return status;
}
