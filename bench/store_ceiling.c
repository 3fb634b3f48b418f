/* The storage ceiling: how many documents per second LMDB alone commits durably with mimeo's
 * real layout, so `make bench` can print every write workload as a fraction of it.
 *
 * Per document, in the store's tables (src/store/store.c): a 1 KB body under an increasing
 * body id, a ~150 B by-id record (a varint seq and an encoded one-revision tree) under the
 * document id, and a by-seq entry naming the id; `--batch` documents per transaction, each
 * commit durable (LMDB's default sync, as the server runs). No JSON, no HTTP, no revision
 * logic: what is left is what the disk and the B-trees cost.
 *
 *   store_ceiling --dir DIR [--docs N] [--batch B] [--size BYTES] [--ids seq|random]
 * prints one JSON line: {"docs_per_s":…,"docs":…,"batch":…,"ids":…,"seconds":…,"maxrss_kb":…}. */
#include <errno.h>
#include <lmdb.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void be64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (unsigned char)v; v >>= 8; }
}

static size_t varint(unsigned char *p, uint64_t v) {
    size_t n = 0;
    do {
        unsigned char b = v & 0x7f;
        v >>= 7;
        p[n++] = b | (v ? 0x80 : 0);
    } while (v);
    return n;
}

static int check(int rc, const char *what) {
    if (rc) fprintf(stderr, "store_ceiling: %s: %s\n", what, mdb_strerror(rc));
    return rc;
}

static int usage(void) {
    fprintf(stderr, "usage: store_ceiling --dir DIR [--docs N] [--batch B] [--size BYTES] "
                    "[--ids seq|random]\n");
    return 2;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-' || v < min || v > max) return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *ids = "seq";
    uint64_t docs = 100000, batch = 1000, size = 1024;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return usage();
        if (!strcmp(a, "--dir")) dir = v;
        else if (!strcmp(a, "--ids")) ids = v;
        else if (!strcmp(a, "--docs")) { if (parse_u64(v, 1, 100000000, &docs)) return usage(); }
        else if (!strcmp(a, "--batch")) { if (parse_u64(v, 1, 1000000, &batch)) return usage(); }
        else if (!strcmp(a, "--size")) { if (parse_u64(v, 2, 1 << 24, &size)) return usage(); }
        else return usage();
        i++;
    }
    bool random_ids = !strcmp(ids, "random");
    if (!dir || (!random_ids && strcmp(ids, "seq"))) return usage();
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) { perror(dir); return 1; }

    MDB_env *env;
    MDB_dbi docs_t, seqs_t, bodies_t;
    MDB_txn *txn;
    int rc = check(mdb_env_create(&env), "env");
    if (!rc) rc = check(mdb_env_set_maxdbs(env, 8), "maxdbs");
    /* Sized once for the whole run: the server grows its map while it writes, which is its
     * own cost, not the storage's. */
    if (!rc) rc = check(mdb_env_set_mapsize(env, (size_t)(docs * (size + 600) * 3 + (64u << 20))),
                        "mapsize");
    if (!rc) rc = check(mdb_env_open(env, dir, MDB_NOTLS, 0644), "open");
    if (!rc) rc = check(mdb_txn_begin(env, NULL, 0, &txn), "txn");
    if (!rc) rc = check(mdb_dbi_open(txn, "docs", MDB_CREATE, &docs_t), "docs");
    if (!rc) rc = check(mdb_dbi_open(txn, "seqs", MDB_CREATE, &seqs_t), "seqs");
    if (!rc) rc = check(mdb_dbi_open(txn, "bodies", MDB_CREATE, &bodies_t), "bodies");
    if (!rc) rc = check(mdb_txn_commit(txn), "commit");
    if (rc) return 1;

    char *body = malloc(size);
    if (!body) return 1;
    memset(body, 'x', size);
    body[0] = '{';
    body[size - 1] = '}';

    const unsigned char dbid[8] = {0, 0, 0, 0, 0, 0, 0, 1};
    unsigned char key[8 + 64], val[256], seqkey[16], bodykey[16];
    memcpy(key, dbid, 8);
    memcpy(seqkey, dbid, 8);
    memcpy(bodykey, dbid, 8);
    /* A by-id record of the size the server writes: varint seq, then a one-node revision tree
     * (generation, 16-byte hash, flags, body reference) and the winner's metadata, padded to
     * ~150 bytes like a real record with its revision id text. */
    memset(val, 0, sizeof val);
    const size_t record_len = 150;

    double t0 = now_s();
    uint64_t seq = 0;
    for (uint64_t done = 0; done < docs;) {
        rc = check(mdb_txn_begin(env, NULL, 0, &txn), "txn");
        if (rc) return 1;
        for (uint64_t i = 0; i < batch && done < docs; i++, done++) {
            seq++;
            char id[40];
            int id_len;
            if (random_ids) {
                unsigned char r[16];
                if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) return 1;
                for (int j = 0; j < 16; j++) sprintf(id + 2 * j, "%02x", r[j]);
                id_len = 32;
            } else {
                id_len = snprintf(id, sizeof id, "doc%016llu", (unsigned long long)seq);
            }
            memcpy(key + 8, id, (size_t)id_len);
            size_t n = varint(val, seq);
            val[n] = 1;                                   /* node count */
            be64(val + n + 1, seq);                       /* body reference */
            MDB_val k = {8 + (size_t)id_len, key}, v = {record_len, val};
            be64(bodykey + 8, seq);
            MDB_val bk = {16, bodykey}, bv = {size, body};
            be64(seqkey + 8, seq);
            MDB_val sk = {16, seqkey}, sv = {(size_t)id_len, id};
            rc = mdb_put(txn, bodies_t, &bk, &bv, MDB_APPEND);
            if (!rc) rc = mdb_put(txn, docs_t, &k, &v, 0);
            if (!rc) rc = mdb_put(txn, seqs_t, &sk, &sv, MDB_APPEND);
            if (check(rc, "put")) return 1;
        }
        if (check(mdb_txn_commit(txn), "commit")) return 1;
    }
    double secs = now_s() - t0;
    /* Peak resident memory: LMDB's own, mostly pages of the file mapped while writing (with
     * random ids the leaf pages touched are spread over the whole file), for comparing with
     * the server's figure. */
    struct rusage ru;
    long maxrss_kb = getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_maxrss : 0;
    printf("{\"docs_per_s\":%.0f,\"docs\":%llu,\"batch\":%llu,\"size\":%llu,\"ids\":\"%s\","
           "\"seconds\":%.3f,\"maxrss_kb\":%ld}\n", (double)docs / secs, (unsigned long long)docs,
           (unsigned long long)batch, (unsigned long long)size, ids, secs, maxrss_kb);
    mdb_env_close(env);
    free(body);
    return 0;
}
