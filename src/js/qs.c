/* Query-server processes: spawning, one request/reply at a time over a socket pair, timeouts
 * that kill, and a bounded pool. See qs.h for the contract. */
#include "qs.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/err.h"
#include "../json/json.h"

extern char **environ;

struct qs_proc {
    pid_t    pid;
    int      fd;          /* our end of the socket pair: the child's stdin and stdout */
    bool     broken;      /* a call failed: discard at release */
    bool     retire;      /* works, but its engine ran out of memory: discard at release */
    buf      pending;     /* bytes read past the last reply line */
    char   **known;       /* remembered design-document keys */
    size_t  *known_lens;
    size_t   known_count;
    qs_pool *pool;
    qs_proc *next_idle;
};

struct qs_pool {
    char          **argv;     /* split command, NULL-terminated */
    char           *argv_mem;
    unsigned        size;
    unsigned        timeout_ms;
    size_t          max_reply;
    qs_log_fn       log;
    void           *log_ctx;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    unsigned        live;     /* processes started and not yet discarded */
    qs_proc        *idle;
};

int qs_pool_new(const qs_config *cfg, qs_pool **out) {
    *out = NULL;
    if (!cfg->command || !cfg->command[0]) return MIMEO_EINVAL;
    qs_pool *p = calloc(1, sizeof *p);
    if (!p) return MIMEO_ENOMEM;
    size_t n = strlen(cfg->command);
    p->argv_mem = malloc(n + 1);
    p->argv = calloc(n / 2 + 2, sizeof *p->argv);
    if (!p->argv_mem || !p->argv) {
        free(p->argv_mem); free(p->argv); free(p);
        return MIMEO_ENOMEM;
    }
    memcpy(p->argv_mem, cfg->command, n + 1);
    size_t argc = 0;
    for (char *s = strtok(p->argv_mem, " \t"); s; s = strtok(NULL, " \t")) p->argv[argc++] = s;
    if (argc == 0) {
        free(p->argv_mem); free(p->argv); free(p);
        return MIMEO_EINVAL;
    }
    p->size = cfg->size ? cfg->size : 2;
    p->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : 5000;
    p->max_reply = cfg->max_reply ? cfg->max_reply : (size_t)64 << 20;
    p->log = cfg->log;
    p->log_ctx = cfg->log_ctx;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    *out = p;
    return 0;
}

static void proc_kill(qs_proc *q) {
    if (q->fd >= 0) close(q->fd);
    q->fd = -1;
    if (q->pid > 0) {
        kill(q->pid, SIGKILL);
        while (waitpid(q->pid, NULL, 0) < 0 && errno == EINTR) {}
    }
    q->pid = -1;
}

static void proc_free(qs_proc *q) {
    proc_kill(q);
    buf_destroy(&q->pending);
    for (size_t i = 0; i < q->known_count; i++) free(q->known[i]);
    free(q->known);
    free(q->known_lens);
    free(q);
}

void qs_pool_free(qs_pool *pool) {
    if (!pool) return;
    while (pool->idle) {
        qs_proc *q = pool->idle;
        pool->idle = q->next_idle;
        proc_free(q);
    }
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    free(pool->argv);
    free(pool->argv_mem);
    free(pool);
}

static int proc_spawn(qs_pool *pool, qs_proc **out, mimeo_err *err) {
    int sv[2];
    /* One socket pair instead of two pipes: send() with MSG_NOSIGNAL never raises SIGPIPE
     * in the server when a child dies mid-write. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        err_set(err, MIMEO_EIO, "os_process_error", "socketpair: %s", strerror(errno));
        return MIMEO_EIO;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 1);
    /* The child gets stdin, stdout and stderr only: no listening socket, no database file. */
    posix_spawn_file_actions_addclosefrom_np(&fa, 3);
    pid_t pid;
    int rc = posix_spawnp(&pid, pool->argv[0], &fa, NULL, pool->argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(sv[1]);
    if (rc != 0) {
        close(sv[0]);
        err_set(err, MIMEO_EIO, "os_process_error", "cannot start query server %s: %s",
                pool->argv[0], strerror(rc));
        return MIMEO_EIO;
    }
    qs_proc *q = calloc(1, sizeof *q);
    if (!q) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(sv[0]);
        return MIMEO_ENOMEM;
    }
    q->pid = pid;
    q->fd = sv[0];
    q->pool = pool;
    buf_init(&q->pending, pool->max_reply + 1);
    *out = q;
    return 0;
}

int qs_acquire(qs_pool *pool, qs_proc **out, mimeo_err *err) {
    pthread_mutex_lock(&pool->mu);
    for (;;) {
        if (pool->idle) {
            *out = pool->idle;
            pool->idle = (*out)->next_idle;
            pthread_mutex_unlock(&pool->mu);
            return 0;
        }
        if (pool->live < pool->size) break;
        pthread_cond_wait(&pool->cv, &pool->mu);
    }
    pool->live++;   /* reserve the slot, spawn outside the lock */
    pthread_mutex_unlock(&pool->mu);
    int rc = proc_spawn(pool, out, err);
    if (rc != 0) {
        pthread_mutex_lock(&pool->mu);
        pool->live--;
        pthread_cond_signal(&pool->cv);
        pthread_mutex_unlock(&pool->mu);
    }
    return rc;
}

void qs_release(qs_pool *pool, qs_proc *proc) {
    if (proc->broken || proc->retire) {
        proc_free(proc);
        pthread_mutex_lock(&pool->mu);
        pool->live--;
    } else {
        pthread_mutex_lock(&pool->mu);
        proc->next_idle = pool->idle;
        pool->idle = proc;
    }
    pthread_cond_signal(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
}

static int proc_fail(qs_proc *q, int code, mimeo_err *err, const char *reason) {
    q->broken = true;
    proc_kill(q);
    err_set(err, code, "os_process_error", "%s", reason);
    return code;
}

static int wait_fd(int fd, short events, uint64_t deadline) {
    for (;;) {
        uint64_t now = clock_ms();
        if (now >= deadline) return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)(deadline - now));
        if (n > 0) return 1;
        if (n == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

static const char LOG_PREFIX[] = "[\"log\",";

/* Hands a ["log", text] line to the pool's log function; false if the line is not one. */
static bool deliver_log(qs_pool *pool, const char *line, size_t len) {
    if (len < sizeof LOG_PREFIX - 1 || memcmp(line, LOG_PREFIX, sizeof LOG_PREFIX - 1) != 0)
        return false;
    if (!pool->log) return true;
    jval *v = NULL;
    if (json_tree_parse(line, len, NULL, &v, NULL) == 0 && v->type == JV_ARRAY &&
        v->count == 2 && v->items[1]->type == JV_STRING) {
        pool->log(pool->log_ctx, v->items[1]->str, v->items[1]->len);
    } else {
        pool->log(pool->log_ctx, line, len);
    }
    jval_free(v);
    return true;
}

int qs_send(qs_proc *q, const char *line, size_t len, mimeo_err *err) {
    qs_pool *pool = q->pool;
    if (q->broken || q->fd < 0) return proc_fail(q, MIMEO_EIO, err, "query server is gone");
    uint64_t deadline = clock_ms() + pool->timeout_ms;

    /* The request and its newline. */
    for (size_t off = 0; off <= len;) {
        const char *p = off < len ? line + off : "\n";
        size_t n = off < len ? len - off : 1;
        ssize_t w = send(q->fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            off += (size_t)w;
            if (off == len + 1) break;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int ready = wait_fd(q->fd, POLLOUT, deadline);
            if (ready == 0) return proc_fail(q, MIMEO_EIO, err, "OS process timed out.");
            if (ready < 0) return proc_fail(q, MIMEO_EIO, err, "query server write failed");
            continue;
        }
        return proc_fail(q, MIMEO_EIO, err, "query server exited");
    }
    return 0;
}

int qs_recv(qs_proc *q, buf *reply, mimeo_err *err) {
    qs_pool *pool = q->pool;
    buf_reset(reply);
    if (q->broken || q->fd < 0) return proc_fail(q, MIMEO_EIO, err, "query server is gone");
    uint64_t deadline = clock_ms() + pool->timeout_ms;
    /* Reply lines until one that is not a log line. */
    for (;;) {
        char *nl = q->pending.len ? memchr(q->pending.data, '\n', q->pending.len) : NULL;
        if (nl) {
            size_t n = (size_t)(nl - q->pending.data);
            bool was_log = deliver_log(pool, q->pending.data, n);
            /* An engine that once hit its memory cap may keep memory it cannot give back
             * (the next caller's functions then fail for no fault of theirs): it finishes
             * this caller's work and is replaced. */
            if (memmem(q->pending.data, n, "out of memory", 13)) q->retire = true;
            int rc = was_log ? 0 : buf_put(reply, q->pending.data, n);
            memmove(q->pending.data, nl + 1, q->pending.len - n - 1);
            q->pending.len -= n + 1;
            if (rc != 0) return proc_fail(q, rc, err, "query server reply too large");
            if (!was_log) return 0;
            continue;
        }
        if (q->pending.len > pool->max_reply)
            return proc_fail(q, MIMEO_ETOOLARGE, err, "query server reply too large");
        int ready = wait_fd(q->fd, POLLIN, deadline);
        if (ready == 0) return proc_fail(q, MIMEO_EIO, err, "OS process timed out.");
        if (ready < 0) return proc_fail(q, MIMEO_EIO, err, "query server read failed");
        if (buf_reserve(&q->pending, 65536) != 0 &&
            buf_reserve(&q->pending, q->pending.cap - q->pending.len) != 0) {
            return proc_fail(q, MIMEO_ETOOLARGE, err, "query server reply too large");
        }
        ssize_t r = recv(q->fd, q->pending.data + q->pending.len,
                         q->pending.alloc - q->pending.len - 1, MSG_DONTWAIT);
        if (r > 0) {
            q->pending.len += (size_t)r;
            q->pending.data[q->pending.len] = 0;
        } else if (r == 0) {
            return proc_fail(q, MIMEO_EIO, err, "query server exited");
        } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            return proc_fail(q, MIMEO_EIO, err, "query server read failed");
        }
    }
}

int qs_call(qs_proc *q, const char *line, size_t len, buf *reply, mimeo_err *err) {
    buf_reset(reply);
    int rc = qs_send(q, line, len, err);
    return rc ? rc : qs_recv(q, reply, err);
}

bool qs_reply_error(const char *reply, size_t len, mimeo_err *err) {
    static const char prefix[] = "[\"error\",";
    if (len < sizeof prefix - 1 || memcmp(reply, prefix, sizeof prefix - 1) != 0) return false;
    jval *v = NULL;
    const char *name = "unknown_error", *reason = "query server error";
    if (json_tree_parse(reply, len, NULL, &v, NULL) == 0 && v->type == JV_ARRAY) {
        if (v->count > 1 && v->items[1]->type == JV_STRING) name = v->items[1]->str;
        if (v->count > 2 && v->items[2]->type == JV_STRING) reason = v->items[2]->str;
    }
    err_set(err, MIMEO_EINVAL, name, "%s", reason);
    jval_free(v);
    return true;
}

bool qs_proc_knows(const qs_proc *q, const char *key, size_t len) {
    for (size_t i = 0; i < q->known_count; i++)
        if (q->known_lens[i] == len && memcmp(q->known[i], key, len) == 0) return true;
    return false;
}

int qs_proc_remember(qs_proc *q, const char *key, size_t len) {
    char **k = realloc(q->known, (q->known_count + 1) * sizeof *k);
    if (!k) return MIMEO_ENOMEM;
    q->known = k;
    size_t *l = realloc(q->known_lens, (q->known_count + 1) * sizeof *l);
    if (!l) return MIMEO_ENOMEM;
    q->known_lens = l;
    char *copy = malloc(len ? len : 1);
    if (!copy) return MIMEO_ENOMEM;
    memcpy(copy, key, len);
    q->known[q->known_count] = copy;
    q->known_lens[q->known_count] = len;
    q->known_count++;
    return 0;
}

int qs_proc_pid(const qs_proc *q) { return (int)q->pid; }

int qs_proc_teach(qs_proc *q, const char *key, size_t key_len, const char *id, size_t id_len,
                  const char *ddoc_json, size_t ddoc_len, buf *line, buf *reply,
                  mimeo_err *err) {
    if (qs_proc_knows(q, key, key_len)) return 0;
    buf_reset(line);
    int rc = buf_puts(line, "[\"ddoc\",\"new\",");
    if (!rc) rc = json_put_str(line, id, id_len);
    if (!rc) rc = buf_putc(line, ',');
    if (!rc) rc = buf_put(line, ddoc_json, ddoc_len);
    if (!rc) rc = buf_putc(line, ']');
    if (!rc) rc = qs_call(q, line->data, line->len, reply, err);
    if (!rc && qs_reply_error(reply->data, reply->len, err)) rc = MIMEO_EINVAL;
    if (!rc) rc = qs_proc_remember(q, key, key_len);
    return rc;
}
