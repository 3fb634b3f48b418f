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
 * A deleted database's keys are removed in the delete's transaction; ids are never reused.
 */
#include "store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>

#include "mimeo.h"

#define STORE_EMAPFULL (-1000) /* internal: the group must be retried on a bigger map */

typedef struct store_job {
    store_job_fn      fn;
    void             *arg;
    int               rc;
    bool              done;
    bool              skip;  /* failed on its own: left out when its group is re-run */
    struct store_job *next;
} store_job;

struct store {
    MDB_env         *env;
    char            *path;        /* the data file, for telling a full disk from an I/O error */
    store_tables     t;
    size_t           map_size;
    pthread_rwlock_t resize_lock; /* readers share it; growing the map takes it alone */

    pthread_mutex_t  lock;        /* guards the queue and job completion */
    pthread_cond_t   work;        /* the writer waits here for jobs */
    pthread_cond_t   done;        /* submitters wait here for their job */
    store_job       *head, *tail;
    bool             stopping;
    pthread_t        writer;
    store_group_hooks hooks;
    store_commit_stats stats;     /* test hook: guarded by lock */
};

int store_err(int rc) {
    switch (rc) {
    case 0: return 0;
    case MDB_NOTFOUND: return MIMEO_ENOTFOUND;
    case MDB_MAP_FULL: return STORE_EMAPFULL;
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
 * child transaction, which costs more than the job itself. Instead a job that fails on
 * its own (a refused request) is marked and the whole group is run again without it; that
 * is rare, and jobs are written to be re-runnable. Returns 0 when committed, or the error
 * that failed the whole group. */
static int store_run_group(store *s, store_job *jobs) {
    for (;;) {
        MDB_txn *txn = NULL;
        int rc = store_err(mdb_txn_begin(s->env, NULL, 0, &txn));
        if (rc) return rc;
        if (s->hooks.begin) s->hooks.begin(s->hooks.ctx);
        bool rerun = false;
        for (store_job *j = jobs; j && !rc; j = j->next) {
            if (j->skip) continue;
            j->rc = j->fn(txn, j->arg);
            if (j->rc == 0) continue;
            /* A full map or a failing disk spoils the whole group; a refused request, a
             * corrupt record or a failed allocation only its own job. */
            if (j->rc == STORE_EMAPFULL || j->rc == MIMEO_EIO || j->rc == MIMEO_ENOSPC) {
                rc = j->rc;
            } else {
                j->skip = true;
                rerun = true;
                rc = 1;
            }
        }
        if (!rc && s->hooks.before_commit) rc = s->hooks.before_commit(txn, s->hooks.ctx);
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
        return rc;
    }
}

/* How long the writer may hold a group open for writers it expects (see below). */
#define GROUP_WAIT_US 500

static size_t job_count(const store_job *j) {
    size_t n = 0;
    for (; j; j = j->next) n++;
    return n;
}

static void *store_writer_main(void *arg) {
    store *s = arg;
    /* Writers seen at once recently: the last group plus what queued during its commit.
     * With N clients each waiting for its reply before writing again, taking the queue the
     * moment a commit ends splits them into two halves that alternate, each commit serving
     * N/2. Waiting a moment for the other half (they are on their way: their replies just
     * went out) lets one commit serve all N. */
    size_t expected = 0;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->head && !s->stopping) pthread_cond_wait(&s->work, &s->lock);
        if (!s->head && s->stopping) break;
        if (expected > 1 && !s->stopping) {
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_nsec += GROUP_WAIT_US * 1000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            while (job_count(s->head) < expected && !s->stopping &&
                   pthread_cond_timedwait(&s->work, &s->lock, &until) == 0) {
            }
        }
        /* Everything queued so far forms one group: one durable commit for all of it. */
        store_job *group = s->head;
        s->head = s->tail = NULL;
        pthread_mutex_unlock(&s->lock);

        int rc = store_run_group(s, group);
        size_t group_size = job_count(group);

        pthread_mutex_lock(&s->lock);
        if (!rc) s->stats.commits++;
        for (store_job *j = group; j; j = j->next) {
            if (rc && !j->skip) j->rc = rc == STORE_EMAPFULL ? MIMEO_ENOSPC : rc;
            if (!rc && !j->skip) s->stats.jobs++;
            j->done = true;
        }
        pthread_cond_broadcast(&s->done);
        expected = group_size + job_count(s->head);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

int store_write(store *s, store_job_fn fn, void *arg) {
    store_job job = {fn, arg, 0, false, false, NULL};
    pthread_mutex_lock(&s->lock);
    if (s->stopping) {
        pthread_mutex_unlock(&s->lock);
        return MIMEO_ECLOSED;
    }
    if (s->tail) s->tail->next = &job;
    else s->head = &job;
    s->tail = &job;
    pthread_cond_signal(&s->work);
    while (!job.done) pthread_cond_wait(&s->done, &s->lock);
    pthread_mutex_unlock(&s->lock);
    return job.rc == STORE_EMAPFULL ? MIMEO_ENOSPC : job.rc;
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

int store_delete_prefix(MDB_txn *txn, MDB_dbi dbi, uint64_t dbid, size_t *budget) {
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc) return store_err(rc);
    unsigned char prefix[8];
    be64_put(prefix, dbid);
    MDB_val k = {8, prefix}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= 8 && memcmp(k.mv_data, prefix, 8) == 0) {
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

int store_open(const char *dir, size_t initial_map_size, store **out, char *reason,
               size_t reason_len) {
    *out = NULL;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        snprintf(reason, reason_len, "cannot create %s: %s", dir, strerror(errno));
        return MIMEO_EIO;
    }
    store *s = calloc(1, sizeof *s);
    if (!s) return MIMEO_ENOMEM;
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
    pthread_cond_init(&s->done, NULL);

    int rc = mdb_env_create(&s->env);
    if (!rc) rc = mdb_env_set_maxdbs(s->env, 8);
    if (!rc) rc = mdb_env_set_mapsize(s->env, s->map_size);
    /* Many connection threads read at once; LMDB's default of 126 reader slots is low. */
    if (!rc) rc = mdb_env_set_maxreaders(s->env, 1024);
    /* MDB_NOTLS: read transactions are not tied to threads, so a connection thread pool
     * cannot run out of reader slots. Durability: default sync on every commit. */
    if (!rc) rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0644);
    if (rc) {
        snprintf(reason, reason_len, "cannot open the store in %s: %s", dir, mdb_strerror(rc));
        if (s->env) mdb_env_close(s->env);
        free(s);
        return rc == ENOSPC ? MIMEO_ENOSPC : MIMEO_EIO;
    }
    size_t plen = strlen(dir) + sizeof "/data.mdb";
    s->path = malloc(plen);
    if (s->path) snprintf(s->path, plen, "%s/data.mdb", dir);
    MDB_envinfo info;
    if (mdb_env_info(s->env, &info) == 0 && info.me_mapsize > s->map_size)
        s->map_size = info.me_mapsize;

    MDB_txn *txn;
    rc = mdb_txn_begin(s->env, NULL, 0, &txn);
    if (!rc) rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->t.meta);
    if (!rc) rc = mdb_dbi_open(txn, "dbs", MDB_CREATE, &s->t.dbs);
    if (!rc) rc = mdb_dbi_open(txn, "docs", MDB_CREATE, &s->t.docs);
    if (!rc) rc = mdb_dbi_open(txn, "seqs", MDB_CREATE, &s->t.seqs);
    if (!rc) rc = mdb_dbi_open(txn, "bodies", MDB_CREATE, &s->t.bodies);
    if (!rc) rc = mdb_dbi_open(txn, "locals", MDB_CREATE, &s->t.locals);
    if (!rc) rc = mdb_txn_commit(txn);
    else mdb_txn_abort(txn);
    if (rc) {
        snprintf(reason, reason_len, "cannot open tables in %s: %s", dir, mdb_strerror(rc));
        mdb_env_close(s->env);
        free(s->path);
        free(s);
        return MIMEO_EIO;
    }
    if (pthread_create(&s->writer, NULL, store_writer_main, s) != 0) {
        snprintf(reason, reason_len, "cannot start the writer thread");
        mdb_env_close(s->env);
        free(s->path);
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
    pthread_cond_destroy(&s->done);
    free(s->path);
    free(s);
}
