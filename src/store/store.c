/* The LMDB environment, its growth, and the writer thread that commits groups of jobs.
 *
 * Layout (all integers big-endian so that keys sort numerically):
 *
 *   table   key                              value
 *   ------  -------------------------------  ---------------------------------------------
 *   meta    "uuid"                           32 hex chars, the server's identity
 *           "next_dbid"                      u64: id for the next created database
 *   dbs     database name                    database record (src/db/env.c)
 *   docs    dbid(8) · doc id                 varint seq · encoded revision tree (revtree.c)
 *   seqs    dbid(8) · seq(8)                 doc id
 *   bodies  dbid(8) · body id(8)             JSON object text of one revision's body
 *   locals  dbid(8) · local id               varint counter · JSON object text
 *
 * Bodies sit under increasing body ids, so big values are appended at the end of the
 * B-tree instead of rewriting pages in the middle; the by-id record stays small.
 * A deleted database's record goes in one job and its keys in later bounded jobs (env.c);
 * database ids are never reused, so keys not yet removed are invisible.
 */
#include "store.h"

#include <errno.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "mimeo.h"

#define STORE_EMAPFULL (-1000) /* internal: the group must be retried on a bigger map */
#define STORE_ETXNFULL (-1001) /* internal: the transaction ran out of dirty pages */

typedef struct store_job {
    store_job_fn      fn;
    void             *arg;
    int               rc;
    bool              skip;  /* failed on its own: left out when its group is re-run */
    bool              barrier; /* runs alone, outside any transaction (fn gets txn NULL) */
    sem_t             done;  /* posted once rc is final: the submitter alone is woken */
    store_done_fn     on_done; /* set: an asynchronous job, finished by calling it (then freed) */
    struct store_job *next;
} store_job;

struct store {
    MDB_env         *env;
    int              lock_fd;     /* holds the data directory's lock (store_lock) */
    char            *dir;         /* the data directory */
    char            *path;        /* the data file, for telling a full disk from an I/O error */
    store_tables     t;
    size_t           map_size;
    pthread_rwlock_t resize_lock; /* readers share it; growing the map takes it alone */

    pthread_mutex_t  lock;        /* guards the queue */
    pthread_cond_t   work;        /* the writer waits here for jobs */
    store_job       *head, *tail;
    size_t           queued;      /* jobs in the queue */
    bool             idle;        /* the writer waits for any job */
    size_t           want;        /* the writer holds a group open until this many are queued */
    bool             stopping;
    pthread_t        writer;
    store_group_hooks hooks;
    store_commit_stats stats;     /* test hook: guarded by lock */
#ifdef MIMEO_TEST_HOOKS
    unsigned         test_commit_delay_ms; /* MIMEO_TEST_COMMIT_DELAY_MS: a slow disk */
#endif
};

int store_err(int rc) {
    switch (rc) {
    case 0: return 0;
    case MDB_NOTFOUND: return MIMEO_ENOTFOUND;
    case MDB_MAP_FULL: return STORE_EMAPFULL;
    case MDB_TXN_FULL: return STORE_ETXNFULL;
    case ENOSPC: case EDQUOT: case EFBIG: return MIMEO_ENOSPC;
    case ENOMEM: return MIMEO_ENOMEM;
    case MDB_CORRUPTED: case MDB_PAGE_NOTFOUND: case MDB_INVALID: return MIMEO_ECORRUPT;
    default:
        if (rc < 0 && rc > -100) return rc; /* already one of ours */
        return MIMEO_EIO;
    }
}

const store_tables *store_tables_get(const store *s) { return &s->t; }

void store_set_group_hooks(store *s, const store_group_hooks *hooks) { s->hooks = *hooks; }

static size_t next_map_size(size_t cur) {
    const size_t gib = (size_t)1 << 30;
    return cur < gib ? cur * 2 : cur + gib;
}

/* Takes the resize lock alone (no read is open), grows the map, lets readers in again. */
static int store_grow(store *s) {
    size_t want = next_map_size(s->map_size);
    pthread_rwlock_wrlock(&s->resize_lock);
    int rc = mdb_env_set_mapsize(s->env, want);
    pthread_rwlock_unlock(&s->resize_lock);
    if (rc) return store_err(rc);
    s->map_size = want;
    return 0;
}

/* LMDB reports a write cut short as EIO. When the disk (or the process's file-size limit)
 * has no room left, that EIO is a full disk, and the user must hear so (507), not a
 * generic storage failure. */
static int store_write_error(store *s, int rc) {
    if (rc != MIMEO_EIO || !s->path) return rc;
    struct statvfs vfs;
    if (statvfs(s->path, &vfs) == 0 && (uint64_t)vfs.f_bavail * vfs.f_frsize < ((uint64_t)64 << 20))
        return MIMEO_ENOSPC;
    struct rlimit lim;
    struct stat st;
    if (getrlimit(RLIMIT_FSIZE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY &&
        stat(s->path, &st) == 0 && (uint64_t)st.st_size + ((uint64_t)1 << 20) >= lim.rlim_cur)
        return MIMEO_ENOSPC;
    return rc;
}

/* Runs one group: every job in one write transaction, then one durable commit.
 *
 * Jobs do not get nested transactions: LMDB allocates megabytes of bookkeeping for each
 * child transaction, which costs more than the job itself. Instead a job that fails is
 * marked and the whole group is run again without it; that is rare, and jobs are written
 * to be re-runnable. Whatever a job's error — a refused request, a corrupt record, a failed
 * allocation, or an LMDB error no other job caused — it fails that job alone.
 * Two errors are the group's, not one job's: a full map (grow it and run everyone again)
 * and a transaction out of dirty pages. For the latter the job that hit the limit and
 * those after it are handed back in *rest to run in the next group, unless it was the
 * first job: then it cannot fit in any transaction and fails alone with MIMEO_ETOOLARGE.
 * Returns 0 when committed, or the commit's error, which fails every job left. */
static int store_run_group(store *s, store_job *jobs, store_job **rest) {
    *rest = NULL;
    for (;;) {
        MDB_txn *txn = NULL;
        int rc = store_err(mdb_txn_begin(s->env, NULL, 0, &txn));
        if (rc) return rc;
        if (s->hooks.begin) s->hooks.begin(s->hooks.ctx);
        bool rerun = false;
        bool ran = false;          /* a job before j was written in this transaction */
        store_job *before = NULL;  /* the job before j in the group, skipped ones included */
        for (store_job *j = jobs; j && !rc; before = j, j = j->next) {
            if (j->skip) continue;
            j->rc = j->fn(txn, j->arg);
            if (j->rc == 0) {
                ran = true;
                continue;
            }
            if (j->rc == STORE_EMAPFULL) {
                rc = j->rc;
            } else if (j->rc == STORE_ETXNFULL && ran) {
                /* j and what follows wait for the next group. The cut is right before j:
                 * a failed job just before it stays in the group, which answers it. */
                before->next = NULL;
                store_job *tail = j;
                while (tail->next) tail = tail->next;
                tail->next = *rest; /* handed back by an earlier run of this group */
                *rest = j;
                j->rc = 0;
                rerun = true;
                rc = 1;
            } else {
                if (j->rc == STORE_ETXNFULL) j->rc = MIMEO_ETOOLARGE;
                j->skip = true;
                rerun = true;
                rc = 1;
            }
        }
        if (!rc && s->hooks.before_commit) rc = s->hooks.before_commit(txn, s->hooks.ctx);
#ifdef MIMEO_TEST_HOOKS
        /* Test builds only: commits as slow as a slow disk's, so that tests can hold
         * writes waiting for their group (tests/interop/bulk_async.test.mjs). */
        if (!rc && s->test_commit_delay_ms) {
            struct timespec ts = {s->test_commit_delay_ms / 1000,
                                  (long)(s->test_commit_delay_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
#endif
        if (!rc) {
            rc = store_write_error(s, store_err(mdb_txn_commit(txn)));
        } else {
            mdb_txn_abort(txn);
        }
        if (rc == 0) {
            if (s->hooks.commit) s->hooks.commit(s->hooks.ctx);
            return 0;
        }
        if (s->hooks.abort) s->hooks.abort(s->hooks.ctx);
        if (rerun) continue;
        if (rc == STORE_EMAPFULL) {
            if (store_grow(s)) return MIMEO_ENOSPC;
            continue;
        }
        if (rc == STORE_ETXNFULL) rc = MIMEO_ETOOLARGE; /* the group's own last writes */
        return rc;
    }
}

/* How long the writer may hold a group open for writers it expects (see below): as long as
 * the last commits took, within these bounds. A writer left out of a group waits a whole
 * commit for the next one, so holding that long for it costs no one more than leaving it
 * out would; and a busy machine, which slows the writers' way back, slows commits too. */
#define GROUP_WAIT_MIN_US 200
#define GROUP_WAIT_MAX_US 2000

static int64_t mono_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static size_t job_count(const store_job *j) {
    size_t n = 0;
    for (; j; j = j->next) n++;
    return n;
}

static void *store_writer_main(void *arg) {
    store *s = arg;
    pthread_setname_np(pthread_self(), "mimeo-writer");   /* for top -H, perf, gdb */
    /* Writers seen at once recently: the last group plus what queued during its commit.
     * With N clients each waiting for its reply before writing again, taking the queue the
     * moment a commit ends splits them into two halves that alternate, each commit serving
     * N/2. Waiting a moment for the other half (they are on their way: their replies just
     * went out) lets one commit serve all N. */
    size_t expected = 0;
    int64_t commit_us = 0;   /* recent commits' duration, smoothed */
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->head && !s->stopping) {
            s->idle = true;
            pthread_cond_wait(&s->work, &s->lock);
            s->idle = false;
        }
        if (!s->head && s->stopping) break;
        if (expected > 1 && !s->stopping && s->queued < expected) {
            int64_t hold = commit_us < GROUP_WAIT_MIN_US ? GROUP_WAIT_MIN_US
                         : commit_us > GROUP_WAIT_MAX_US ? GROUP_WAIT_MAX_US : commit_us;
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += (long)hold * 1000L;
            while (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            /* Submitters wake the writer once, when the count is reached, not each. */
            s->want = expected;
            while (s->queued < expected && !s->stopping &&
                   pthread_cond_timedwait(&s->work, &s->lock, &until) == 0) {
            }
            s->want = 0;
        }
        /* Everything queued so far forms one group: one durable commit for all of it —
         * up to a barrier, which runs alone once the jobs queued before it are done. */
        store_job *group = s->head, *cut = group;
        size_t taken = 1;
        while (!group->barrier && cut->next && !cut->next->barrier) {
            cut = cut->next;
            taken++;
        }
        s->head = cut->next;
        if (!s->head) s->tail = NULL;
        cut->next = NULL;
        s->queued -= taken;
        pthread_mutex_unlock(&s->lock);

        store_job *rest = NULL;
        int rc = 0;
        int64_t t0 = mono_us();
        if (group->barrier) group->rc = group->fn(NULL, group->arg);
        else rc = store_run_group(s, group, &rest);
        if (!group->barrier) commit_us += (mono_us() - t0 - commit_us) / 4;
        size_t group_size = job_count(group), jobs_ok = 0;
        for (store_job *j = group; j; j = j->next) {
            if (rc && !j->skip) j->rc = rc == STORE_EMAPFULL ? MIMEO_ENOSPC : rc;
            if (!rc && !j->skip) jobs_ok++;
        }

        pthread_mutex_lock(&s->lock);
        if (!rc) s->stats.commits++;
        s->stats.jobs += jobs_ok;
        if (rest) {
            /* Jobs that did not fit go first in the next group, in their order. */
            size_t n = 1;
            store_job *last = rest;
            while (last->next) {
                last = last->next;
                n++;
            }
            last->next = s->head;
            if (!s->head) s->tail = last;
            s->head = rest;
            s->queued += n;
        }
        expected = group_size + s->queued;
        pthread_mutex_unlock(&s->lock);
        /* Each submitter is woken alone, outside the lock, so that they do not all contend
         * for it; a job is gone (its submitter's stack) once posted. The waiting threads go
         * first: they run on the other core while this one finishes the asynchronous jobs. */
        store_job *async = NULL, **async_tail = &async;
        for (store_job *j = group, *next; j; j = next) {
            next = j->next;
            if (j->on_done) {
                *async_tail = j;
                async_tail = &j->next;
            } else {
                sem_post(&j->done);
            }
        }
        *async_tail = NULL;
        for (store_job *j = async, *next; j; j = next) {
            next = j->next;
            j->on_done(j->arg, j->rc == STORE_EMAPFULL ? MIMEO_ENOSPC : j->rc);
            free(j);
        }
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Queues j (the queue lock is not held); MIMEO_ECLOSED when the store is stopping. */
static int store_enqueue(store *s, store_job *j) {
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return MIMEO_ECLOSED;
    }
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->queued++;
    if (s->idle || (s->want && s->queued >= s->want)) pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int store_write_async(store *s, store_job_fn fn, store_done_fn done, void *arg) {
    store_job *j = calloc(1, sizeof *j);
    if (!j) return MIMEO_ENOMEM;
    j->fn = fn;
    j->arg = arg;
    j->on_done = done;
    int rc = store_enqueue(s, j);
    if (rc) free(j);
    return rc;
}

static int store_submit(store *s, store_job_fn fn, void *arg, bool barrier) {
    store_job job = {fn, arg, 0, false, barrier, {{0}}, NULL, NULL};
    if (sem_init(&job.done, 0, 0) != 0) return MIMEO_ENOMEM;
    int rc = store_enqueue(s, &job);
    if (rc) {
        sem_destroy(&job.done);
        return rc;
    }
    while (sem_wait(&job.done) != 0) {
    }
    sem_destroy(&job.done);
    return job.rc == STORE_EMAPFULL ? MIMEO_ENOSPC : job.rc;
}

int store_write(store *s, store_job_fn fn, void *arg) { return store_submit(s, fn, arg, false); }

bool store_write_idle(store *s) {
    pthread_mutex_lock(&s->lock);
    bool idle = s->idle && s->queued == 0;
    pthread_mutex_unlock(&s->lock);
    return idle;
}

/* Test hook (tests/unit): what group commit shared so far. */
store_commit_stats store_stats(store *s) {
    pthread_mutex_lock(&s->lock);
    store_commit_stats st = s->stats;
    pthread_mutex_unlock(&s->lock);
    return st;
}

int store_read_begin(store *s, MDB_txn **txn) {
    pthread_rwlock_rdlock(&s->resize_lock);
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, txn);
    if (rc) {
        pthread_rwlock_unlock(&s->resize_lock);
        *txn = NULL;
        return store_err(rc);
    }
    return 0;
}

void store_read_end(store *s, MDB_txn *txn) {
    if (!txn) return;
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&s->resize_lock);
}

uint64_t store_file_size(store *s) {
    MDB_envinfo ei;
    MDB_stat st;
    uint64_t n = 0;
    /* Both calls read the map, which a resize may be replacing. */
    pthread_rwlock_rdlock(&s->resize_lock);
    if (mdb_env_info(s->env, &ei) == 0 && mdb_env_stat(s->env, &st) == 0)
        n = (uint64_t)(ei.me_last_pgno + 1) * st.ms_psize;
    pthread_rwlock_unlock(&s->resize_lock);
    return n;
}

int store_delete_key_prefix(MDB_txn *txn, MDB_dbi dbi, const void *prefix, size_t n,
                            size_t *budget) {
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc) return store_err(rc);
    MDB_val k = {n, (void *)prefix}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= n && memcmp(k.mv_data, prefix, n) == 0) {
        if (*budget == 0) {
            mdb_cursor_close(cur);
            return 1;
        }
        rc = mdb_cursor_del(cur, 0);
        if (rc) break;
        (*budget)--;
        /* After a delete the cursor already rests on the following item, and MDB_NEXT
         * returns it; MDB_GET_CURRENT fails when the delete emptied a page. */
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : store_err(rc);
}

int store_delete_prefix(MDB_txn *txn, MDB_dbi dbi, uint64_t dbid, size_t *budget) {
    unsigned char prefix[8];
    be64_put(prefix, dbid);
    return store_delete_key_prefix(txn, dbi, prefix, sizeof prefix, budget);
}

/* Opens s->env on s->dir with s->map_size (or the file's, when bigger) and its tables. */
static int store_env_open(store *s, char *reason, size_t reason_len) {
    int rc = mdb_env_create(&s->env);
    if (!rc) rc = mdb_env_set_maxdbs(s->env, 32);
    if (!rc) rc = mdb_env_set_mapsize(s->env, s->map_size);
    /* Many connection threads read at once; LMDB's default of 126 reader slots is low. */
    if (!rc) rc = mdb_env_set_maxreaders(s->env, 1024);
    /* MDB_NOTLS: read transactions are not tied to threads, so a connection thread pool
     * cannot run out of reader slots. Durability: default sync on every commit. */
    if (!rc) rc = mdb_env_open(s->env, s->dir, MDB_NOTLS, 0644);
    if (rc) {
        snprintf(reason, reason_len, "cannot open the store in %s: %s", s->dir, mdb_strerror(rc));
        if (s->env) mdb_env_close(s->env);
        s->env = NULL;
        return rc == ENOSPC ? MIMEO_ENOSPC : MIMEO_EIO;
    }
    MDB_envinfo info;
    if (mdb_env_info(s->env, &info) == 0 && info.me_mapsize > s->map_size)
        s->map_size = info.me_mapsize;
    /* Opened in the same order every time, so the handles keep their numbers. */
    MDB_txn *txn;
    rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (!rc) rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->t.meta);
    if (!rc) rc = mdb_dbi_open(txn, "dbs", MDB_CREATE, &s->t.dbs);
    if (!rc) rc = mdb_dbi_open(txn, "docs", MDB_CREATE, &s->t.docs);
    if (!rc) rc = mdb_dbi_open(txn, "seqs", MDB_CREATE, &s->t.seqs);
    if (!rc) rc = mdb_dbi_open(txn, "bodies", MDB_CREATE, &s->t.bodies);
    if (!rc) rc = mdb_dbi_open(txn, "locals", MDB_CREATE, &s->t.locals);
    if (!rc) rc = mdb_dbi_open(txn, "blobs", MDB_CREATE, &s->t.blobs);
    if (!rc) rc = mdb_dbi_open(txn, "views", MDB_CREATE, &s->t.views);
    if (!rc) rc = mdb_txn_commit(txn);
    else mdb_txn_abort(txn);
    if (rc) {
        snprintf(reason, reason_len, "cannot open tables in %s: %s", s->dir, mdb_strerror(rc));
        mdb_env_close(s->env);
        s->env = NULL;
        return MIMEO_EIO;
    }
    return 0;
}

/* One process, one environment per data directory. LMDB itself would let several
 * processes share the file, but each environment keeps the databases' counters (update_seq,
 * next body id, document counts) in memory between commits, so a second one would reuse
 * sequence numbers and body ids and overwrite the first one's documents. An flock on
 * DIR/mimeo.lock (released by the kernel when the process dies, so a crash leaves no stale
 * lock) keeps a second environment out, in this process or another. Returns the locked fd,
 * or -1 with reason set. */
static int store_lock(const char *dir, char *reason, size_t reason_len) {
    size_t plen = strlen(dir) + sizeof "/mimeo.lock";
    char *path = malloc(plen);
    if (!path) {
        snprintf(reason, reason_len, "out of memory");
        return -1;
    }
    snprintf(path, plen, "%s/mimeo.lock", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    free(path);
    if (fd < 0) {
        snprintf(reason, reason_len, "cannot open %s/mimeo.lock: %s", dir, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        char pid[24] = "";
        ssize_t n = pread(fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        if (e == EWOULDBLOCK)
            snprintf(reason, reason_len,
                     "the data directory %s is in use by another mimeo%s%s%s", dir,
                     pid[0] ? " (pid " : "", pid, pid[0] ? ")" : "");
        else
            snprintf(reason, reason_len, "cannot lock %s/mimeo.lock: %s", dir, strerror(e));
        close(fd);
        return -1;
    }
    /* The holder's pid, for the message a second process prints. */
    char pid[24];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)n, 0) != n) {
        /* only informative */
    }
    return fd;
}

int store_open(const char *dir, size_t initial_map_size, store **out, char *reason,
               size_t reason_len) {
    *out = NULL;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(reason, reason_len, "cannot create %s: %s", dir, strerror(errno));
        return MIMEO_EIO;
    }
    int lock_fd = store_lock(dir, reason, reason_len);
    if (lock_fd < 0) return MIMEO_EBUSY;
    store *s = calloc(1, sizeof *s);
    if (!s) {
        close(lock_fd);
        return MIMEO_ENOMEM;
    }
    s->lock_fd = lock_fd;
#ifdef MIMEO_TEST_HOOKS
    const char *delay = getenv("MIMEO_TEST_COMMIT_DELAY_MS");
    if (delay) s->test_commit_delay_ms = (unsigned)strtoul(delay, NULL, 10);
#endif
    s->map_size = initial_map_size ? initial_map_size : (size_t)64 << 20;

    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* Writer preference: a steady stream of readers must not starve a map resize. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&s->resize_lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->work, &ca);
    pthread_condattr_destroy(&ca);

    size_t plen = strlen(dir) + sizeof "/data.mdb";
    s->path = malloc(plen);
    s->dir = strdup(dir);
    if (!s->path || !s->dir) {
        snprintf(reason, reason_len, "out of memory");
        close(s->lock_fd);
        free(s->path);
        free(s->dir);
        free(s);
        return MIMEO_ENOMEM;
    }
    snprintf(s->path, plen, "%s/data.mdb", dir);
    int rc = store_env_open(s, reason, reason_len);
    if (rc) {
        close(s->lock_fd);
        free(s->path);
        free(s->dir);
        free(s);
        return rc;
    }
    if (pthread_create(&s->writer, NULL, store_writer_main, s) != 0) {
        snprintf(reason, reason_len, "cannot start the writer thread");
        mdb_env_close(s->env);
        close(s->lock_fd);
        free(s->path);
        free(s->dir);
        free(s);
        return MIMEO_EIO;
    }
    *out = s;
    return 0;
}

void store_close(store *s) {
    if (!s) return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->lock);
    pthread_join(s->writer, NULL);
    mdb_env_close(s->env);
    pthread_rwlock_destroy(&s->resize_lock);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->work);
    free(s->path);
    free(s->dir);
    close(s->lock_fd); /* last: the directory is free once the file is closed */
    free(s);
}

/* Offline compaction. LMDB never gives pages back to the file system: freed pages are
 * reused, but the file keeps its high-water size. A compacting copy writes only the pages
 * in use, renumbered, into a new file, which then replaces the old one by rename — atomic,
 * so a crash leaves either file whole. The directory lock keeps every environment out
 * meanwhile. */
int store_compact(const char *dir, uint64_t *before, uint64_t *after, char *reason,
                  size_t reason_len) {
    *before = *after = 0;
    int lock_fd = store_lock(dir, reason, reason_len);
    if (lock_fd < 0) return MIMEO_EBUSY;
    size_t plen = strlen(dir) + sizeof "/data.mdb.compact";
    char *data = malloc(plen), *tmp = malloc(plen);
    MDB_env *env = NULL;
    int fd = -1, rc = MIMEO_ENOMEM;
    if (!data || !tmp) goto out;
    snprintf(data, plen, "%s/data.mdb", dir);
    snprintf(tmp, plen, "%s/data.mdb.compact", dir);
    struct stat st;
    if (stat(data, &st) != 0) {
        snprintf(reason, reason_len, "no data file in %s: %s", dir, strerror(errno));
        rc = errno == ENOENT ? MIMEO_ENOTFOUND : MIMEO_EIO;
        goto out;
    }
    *before = (uint64_t)st.st_size;
    int mrc = mdb_env_create(&env);
    if (!mrc) mrc = mdb_env_set_maxdbs(env, 32);
    if (!mrc) mrc = mdb_env_open(env, dir, MDB_NOTLS | MDB_RDONLY, 0644);
    if (mrc) {
        snprintf(reason, reason_len, "cannot open the store in %s: %s", dir, mdb_strerror(mrc));
        rc = MIMEO_EIO;
        goto out;
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(reason, reason_len, "cannot create %s: %s", tmp, strerror(errno));
        rc = errno == ENOSPC ? MIMEO_ENOSPC : MIMEO_EIO;
        goto out;
    }
    mrc = mdb_env_copyfd2(env, fd, MDB_CP_COMPACT);
    if (!mrc && fsync(fd) != 0) mrc = errno;
    if (mrc) {
        snprintf(reason, reason_len, "compacting copy failed: %s", mdb_strerror(mrc));
        rc = mrc == ENOSPC ? MIMEO_ENOSPC : MIMEO_EIO;
        goto out;
    }
    mdb_env_close(env);
    env = NULL;
    if (fstat(fd, &st) == 0) *after = (uint64_t)st.st_size;
    close(fd);
    fd = -1;
    if (rename(tmp, data) != 0) {
        snprintf(reason, reason_len, "cannot replace %s: %s", data, strerror(errno));
        rc = MIMEO_EIO;
        goto out;
    }
    /* The rename is durable once the directory entry is. */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    rc = 0;
out:
    if (env) mdb_env_close(env);
    if (fd >= 0) close(fd);
    if (rc && tmp) unlink(tmp);
    free(data);
    free(tmp);
    close(lock_fd);
    return rc;
}

/* ---- compaction while serving ----------------------------------------------------------- */

typedef struct live_compact {
    store   *s;
    uint64_t before, after;
    char    *reason;
    size_t   reason_len;
} live_compact;

static void fsync_dir(const char *dir) {
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
}

/* A barrier: no write transaction is open and none can start, so the compacting copy holds
 * every committed write. Readers go on during the copy; the swap waits for them on the
 * resize lock (held alone, as for a map resize), closes the environment and opens it on the
 * new file. The old file stays linked as data.mdb.precompact until the new one is open, so
 * a failure to open puts it back. */
static int job_compact_live(MDB_txn *unused, void *arg) {
    (void)unused;
    live_compact *lc = arg;
    store *s = lc->s;
    size_t plen = strlen(s->dir) + sizeof "/data.mdb.precompact";
    char *tmp = malloc(plen), *keep = malloc(plen);
    int fd = -1, rc = MIMEO_ENOMEM;
    if (!tmp || !keep) goto out;
    snprintf(tmp, plen, "%s/data.mdb.compact", s->dir);
    snprintf(keep, plen, "%s/data.mdb.precompact", s->dir);
    struct stat st;
    if (stat(s->path, &st) == 0) lc->before = (uint64_t)st.st_size;
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(lc->reason, lc->reason_len, "cannot create %s: %s", tmp, strerror(errno));
        rc = errno == ENOSPC ? MIMEO_ENOSPC : MIMEO_EIO;
        goto out;
    }
    int mrc = mdb_env_copyfd2(s->env, fd, MDB_CP_COMPACT);
    if (!mrc && fsync(fd) != 0) mrc = errno;
    if (!mrc && fstat(fd, &st) == 0) lc->after = (uint64_t)st.st_size;
    close(fd);
    fd = -1;
    if (mrc) {
        snprintf(lc->reason, lc->reason_len, "compacting copy failed: %s", mdb_strerror(mrc));
        rc = mrc == ENOSPC ? MIMEO_ENOSPC : MIMEO_EIO;
        goto out;
    }
    /* The copy must open before it replaces anything. */
    MDB_env *check = NULL;
    mrc = mdb_env_create(&check);
    if (!mrc) mrc = mdb_env_set_maxdbs(check, 32);
    if (!mrc) mrc = mdb_env_open(check, tmp, MDB_NOSUBDIR | MDB_RDONLY | MDB_NOLOCK, 0644);
    if (check) mdb_env_close(check);
    (void)unlink(keep);
    if (mrc || link(s->path, keep) != 0) {
        snprintf(lc->reason, lc->reason_len, "cannot prepare the swap: %s",
                 mrc ? mdb_strerror(mrc) : strerror(errno));
        rc = MIMEO_EIO;
        goto out;
    }
    pthread_rwlock_wrlock(&s->resize_lock);
    if (rename(tmp, s->path) != 0) {
        snprintf(lc->reason, lc->reason_len, "cannot replace %s: %s", s->path, strerror(errno));
        pthread_rwlock_unlock(&s->resize_lock);
        (void)unlink(keep);
        rc = MIMEO_EIO;
        goto out;
    }
    mdb_env_close(s->env);
    s->env = NULL;
    rc = store_env_open(s, lc->reason, lc->reason_len);
    if (rc) {
        char again[200];
        if (rename(keep, s->path) != 0 || store_env_open(s, again, sizeof again) != 0) {
            /* Nothing can be served without a store; the data on disk is whole. */
            fprintf(stderr, "mimeo: compaction could not reopen the store (%s); stopping\n",
                    lc->reason);
            abort();
        }
    } else {
        (void)unlink(keep);
    }
    pthread_rwlock_unlock(&s->resize_lock);
    fsync_dir(s->dir);
out:
    if (fd >= 0) close(fd);
    if (rc && tmp) (void)unlink(tmp);
    free(tmp);
    free(keep);
    return rc;
}

int store_compact_live(store *s, uint64_t *before, uint64_t *after, char *reason,
                       size_t reason_len) {
    live_compact lc = {s, 0, 0, reason, reason_len};
    int rc = store_submit(s, job_compact_live, &lc, true);
    *before = lc.before;
    *after = lc.after;
    return rc;
}

typedef struct drop_index_job {
    MDB_dbi  dbi;
    uint64_t dbid, idx;
    size_t   chunk;
    bool     done;
} drop_index_job;

static int store_drop_index_step(MDB_txn *txn, void *arg) {
    drop_index_job *j = arg;
    unsigned char kb[16];
    be64_put(kb, j->dbid);
    be64_put(kb + 8, j->idx);
    size_t budget = j->chunk;
    int rc = store_delete_key_prefix(txn, j->dbi, kb, sizeof kb, &budget);
    if (rc < 0) return rc;
    j->done = rc == 0;
    if (j->done) {
        unsigned char dk[24];
        be64_put(dk, j->dbid);
        be64_put(dk + 8, 0);
        be64_put(dk + 16, j->idx);
        MDB_val dkey = {24, dk};
        int mrc = mdb_del(txn, j->dbi, &dkey, NULL);
        if (mrc && mrc != MDB_NOTFOUND) return store_err(mrc);
    }
    return 0;
}

int store_drop_index(store *s, MDB_dbi dbi, uint64_t dbid, uint64_t idx, size_t chunk) {
    drop_index_job j = {dbi, dbid, idx, chunk, false};
    int rc = 0;
    while (!rc && !j.done) rc = store_write(s, store_drop_index_step, &j);
    return rc;
}
