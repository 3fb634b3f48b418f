/* The write and storage edges: randomness when getrandom is refused, bounded _revisions,
 * one failing job inside a write group, checked appends, CouchDB's revision rules for
 * replicated writes, long document ids (storage and _all_docs order), the data-directory
 * lock, and compacting the data file. */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/buf.h"
#include "mimeo.h"

static char tmpdir[256];

static void make_tmpdir(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mimeo-test-write-XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
}

static void remove_tmpdir(void) {
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}

/* ---- randomness ---------------------------------------------------------------------------- */

/* Makes getrandom(2) fail with EPERM in this process, as a seccomp sandbox may. */
static int refuse_getrandom(void) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getrandom, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {sizeof code / sizeof *code, code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
}

static void test_random_without_getrandom(void) {
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(10); /* the old code spun here forever */
        if (refuse_getrandom()) _exit(2);
        unsigned char a[32] = {0}, b[32] = {0};
        random_bytes(a, sizeof a);
        random_bytes(b, sizeof b);
        _exit(memcmp(a, b, sizeof a) != 0 ? 0 : 3);
    }
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status));
    CHECK_EQ_INT(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
}

/* ---- helpers ------------------------------------------------------------------------------ */

static mimeo_env *open_env(const mimeo_options *o) {
    mimeo_env *env = NULL;
    mimeo_err err;
    int rc = mimeo_env_open(tmpdir, o, &env, &err);
    if (rc) fprintf(stderr, "env open: %s\n", err.reason);
    return env;
}

static mimeo_db *fresh_db(mimeo_env *env, const char *name) {
    mimeo_err err;
    mimeo_db_delete(env, name, &err);
    CHECK_EQ_INT(mimeo_db_create(env, name, &err), 0);
    mimeo_db *db = NULL;
    CHECK_EQ_INT(mimeo_db_open(env, name, &db, &err), 0);
    return db;
}

/* ---- checked appends ------------------------------------------------------------------------ */

typedef struct name_seen {
    size_t count;
    bool   bad;
} name_seen;

static int on_name(void *ctx, const char *name, size_t len) {
    name_seen *s = ctx;
    s->count++;
    if (!mimeo_db_name_valid(name, len)) s->bad = true;
    return 0;
}

/* A failed append while listing must fail the call, not leave a count that disagrees with
 * the bytes (the listing then read past its buffer). */
static void test_list_append_failure(void) {
    mimeo_env *env = open_env(NULL);
    CHECK(env);
    if (!env) return;
    mimeo_err err;
    char name[64];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "db-with-a-rather-long-name-%04d", i);
        CHECK_EQ_INT(mimeo_db_create(env, name, &err), 0);
    }
    name_seen all = {0};
    CHECK_EQ_INT(mimeo_db_list(env, NULL, on_name, &all), 0);
    CHECK_EQ_INT(all.count, 300);
    for (unsigned n = 1; n <= 8; n++) {
        name_seen s = {0};
        atomic_store(&buf_fault_countdown, n);
        int rc = mimeo_db_list(env, NULL, on_name, &s);
        atomic_store(&buf_fault_countdown, 0);
        CHECK(rc == 0 || rc == MIMEO_ENOMEM);
        CHECK(!s.bad);
        CHECK(rc != 0 || s.count == 300);
    }
    mimeo_env_close(env);
}

int main(void) {
    make_tmpdir();
    RUN(test_random_without_getrandom);
    RUN(test_list_append_failure);
    remove_tmpdir();
    return check_report();
}
