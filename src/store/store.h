/* The storage engine: one LMDB environment per data directory, shared by all databases.
 *
 * Why one environment: 10,000 databases then cost two open files and one mmap in all, not
 * one of each per database, and a single writer thread can commit the writes of many
 * databases in one durable transaction (group commit). Databases are separated by an
 * 8-byte id prefix on every key. The key and value layouts are drawn in store.c.
 *
 * Threads: any thread may read (store_read_begin/end); all writes run on the one writer
 * thread, as jobs submitted with store_write(), which returns once the job's transaction is
 * durably committed (or failed), or with store_write_async(), which calls back then. */
#ifndef MIMEO_STORE_H
#define MIMEO_STORE_H

#include <lmdb.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "../common/buf.h"

typedef struct store store;

/* The tables (LMDB named databases). */
typedef struct store_tables {
    MDB_dbi meta;   /* server-wide settings: uuid, next database id */
    MDB_dbi dbs;    /* database name → database record */
    MDB_dbi docs;   /* dbid · doc id → document record (seq, revision tree) */
    MDB_dbi seqs;   /* dbid · seq → doc id (the changes feed) */
    MDB_dbi bodies; /* dbid · body id → JSON body bytes of one revision */
    MDB_dbi locals; /* dbid · local id → local document record */
    MDB_dbi blobs;  /* attachment blobs, their chunks and references (src/db/blob.c) */
    MDB_dbi views;  /* dbid · index id · … → view index rows (src/view/vstore.c) */
} store_tables;

/* Opens or creates the environment in dir. New *out. MIMEO_EIO with a reason on failure. */
int  store_open(const char *dir, size_t initial_map_size, store **out, char *reason,
                size_t reason_len);
/* Drains queued writes, stops the writer and closes the environment. */
void store_close(store *s);
const store_tables *store_tables_get(const store *s);
/* Bytes of the data file in use (pages up to the last one written). */
uint64_t store_file_size(store *s);

/* Rewrites the data file of dir, not open anywhere, with only the pages in use (LMDB's
 * compacting copy, then an atomic rename over the old file). before and after receive the
 * file sizes. MIMEO_EBUSY when dir is open; MIMEO_ENOTFOUND when it holds no data file;
 * MIMEO_ENOSPC / MIMEO_EIO with a reason (the old file is then untouched). */
int  store_compact(const char *dir, uint64_t *before, uint64_t *after, char *reason,
                   size_t reason_len);

/* The same for the open store s, while it serves: writes wait during the copy (readers do
 * not), then readers wait while the new file is swapped in. */
int  store_compact_live(store *s, uint64_t *before, uint64_t *after, char *reason,
                        size_t reason_len);

/* ---- reads ---------------------------------------------------------------------------- */
/* A read-only snapshot. Values it returns are valid until store_read_end. While any read
 * is open the map cannot be resized, so keep reads short (page long scans). */
int  store_read_begin(store *s, MDB_txn **txn);
void store_read_end(store *s, MDB_txn *txn);

/* ---- writes --------------------------------------------------------------------------- */
/* A write job runs on the writer thread inside the transaction it shares with the other
 * jobs of its group. It returns 0 to keep its changes, or a MIMEO_E* code to discard them
 * (only this job's: the group is then run again without it). It may be run more than once
 * (a re-run, or a retry after the map grew), so it must not have effects outside txn
 * except through the staging hooks, and it must restore what it staged when it fails. */
typedef int (*store_job_fn)(MDB_txn *txn, void *arg);

/* Hooks around a group: `begin` before the first job, `commit` after a durable commit,
 * `abort` when the group is discarded (then retried or failed). Registered once. */
typedef struct store_group_hooks {
    void (*begin)(void *ctx);
    int  (*before_commit)(MDB_txn *txn, void *ctx); /* last writes of the group */
    void (*commit)(void *ctx);
    void (*abort)(void *ctx);
    void *ctx;
} store_group_hooks;
void store_set_group_hooks(store *s, const store_group_hooks *hooks);

/* Runs fn(txn, arg) on the writer thread and waits until its group is committed. Returns
 * fn's code, or a commit failure (MIMEO_ENOSPC, MIMEO_EIO), or MIMEO_ECLOSED. */
int store_write(store *s, store_job_fn fn, void *arg);

/* The same without waiting: done(arg, rc) (arg: fn's) is called on the writer thread once the group is
 * durably committed (or failed), with the code store_write would have returned. It must be
 * short (the next group waits for it) and must not submit writes and wait for them. Returns
 * 0 when queued (done will be called), else MIMEO_ECLOSED or MIMEO_ENOMEM (it will not). */
typedef void (*store_done_fn)(void *arg, int rc);
int store_write_async(store *s, store_job_fn fn, store_done_fn done, void *arg);

/* Whether the writer waits for work with nothing queued: a job queued now starts at once.
 * A hint only (it may change as soon as it is read). */
bool store_write_idle(store *s);

/* Test hook: durable commits (one fdatasync each) and the jobs they carried, since open. */
typedef struct store_commit_stats {
    uint64_t commits;
    uint64_t jobs;
} store_commit_stats;
store_commit_stats store_stats(store *s);

/* Translates an LMDB return code into a MIMEO_E* code. */
int store_err(int mdb_rc);

/* ---- keys ----------------------------------------------------------------------------- */
#define STORE_KEY_MAX 511        /* LMDB's default maximum key size */
#define STORE_ID_MAX  (STORE_KEY_MAX - 8)

/* key = dbid (8 bytes big-endian) · tail. Returns the key length (tail_len ≤ STORE_ID_MAX). */
static inline size_t store_key(unsigned char *key, uint64_t dbid, const void *tail,
                               size_t tail_len) {
    be64_put(key, dbid);
    if (tail_len) memcpy(key + 8, tail, tail_len);
    return 8 + tail_len;
}
static inline size_t store_key_u64(unsigned char *key, uint64_t dbid, uint64_t n) {
    be64_put(key, dbid);
    be64_put(key + 8, n);
    return 16;
}

/* Deletes items of `dbi` whose key starts with the n bytes at prefix, at most *budget of
 * them (decremented). 0 when none is left, 1 when the budget ran out first, or a MIMEO_E*
 * code. */
int store_delete_key_prefix(MDB_txn *txn, MDB_dbi dbi, const void *prefix, size_t n,
                            size_t *budget);
/* The same for the keys of one database: those that start with dbid. */
int store_delete_prefix(MDB_txn *txn, MDB_dbi dbi, uint64_t dbid, size_t *budget);
/* Drops index idx of database dbid from a table laid out as the Mango and view tables are:
 * its rows under the key prefix (dbid, idx), then its definition under (dbid, 0, idx). Runs
 * in write transactions of at most `chunk` deletions each, so that no commit grows without
 * bound and other writers get their turn in between. */
int store_drop_index(store *s, MDB_dbi dbi, uint64_t dbid, uint64_t idx, size_t chunk);

#endif
