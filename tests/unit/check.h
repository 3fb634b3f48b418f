/* A minimal test harness for the C unit tests: each test file is one program; CHECK records
 * a failure and goes on; the program prints "N passed, N failed" and exits non-zero on any
 * failure (tests/run.sh adds the counts up). Property tests print their seed on failure.
 * A case that cannot run (SKIP: a missing prerequisite) counts as failed, so a broken setup
 * never reads as a pass. */
#ifndef MIMEO_CHECK_H
#define MIMEO_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t check_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A fresh folder under /tmp for one test program ("mimeo-test-<tag>-XXXXXX", into buf), and
 * its removal with everything in it. */
static inline void check_tmpdir_make(char *buf, size_t n, const char *tag) {
    snprintf(buf, n, "/tmp/mimeo-test-%s-XXXXXX", tag);
    if (!mkdtemp(buf)) {
        perror("mkdtemp");
        exit(1);
    }
}

static inline void check_tmpdir_remove(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

static int check_passed, check_failed, check_skipped, check_case_failed, check_case_skipped;
static const char *check_case_name;

#define CHECK(cond) do { \
    if (!(cond)) { \
        check_case_failed = 1; \
        fprintf(stderr, "%s:%d: %s: CHECK failed: %s\n", __FILE__, __LINE__, \
                check_case_name ? check_case_name : "?", #cond); \
    } } while (0)

#define CHECK_EQ_INT(a, b) do { \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b); \
    if (check_a_ != check_b_) { \
        check_case_failed = 1; \
        fprintf(stderr, "%s:%d: %s: %s == %s failed: %lld != %lld\n", __FILE__, __LINE__, \
                check_case_name ? check_case_name : "?", #a, #b, check_a_, check_b_); \
    } } while (0)

#define CHECK_EQ_STR(a, b) do { \
    const char *check_a_ = (a), *check_b_ = (b); \
    if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) { \
        check_case_failed = 1; \
        fprintf(stderr, "%s:%d: %s: %s == %s failed: \"%s\" != \"%s\"\n", __FILE__, __LINE__, \
                check_case_name ? check_case_name : "?", #a, #b, \
                check_a_ ? check_a_ : "(null)", check_b_ ? check_b_ : "(null)"); \
    } } while (0)

/* Ends the current case as not run, saying why; it counts as failed. */
#define SKIP(why) do { \
    check_case_skipped = 1; \
    fprintf(stderr, "%s:%d: %s: SKIPPED (counted as failed): %s\n", __FILE__, __LINE__, \
            check_case_name ? check_case_name : "?", (why)); \
    return; } while (0)

/* Runs one test case function and counts it. */
#define RUN(fn) do { \
    check_case_name = #fn; check_case_failed = 0; check_case_skipped = 0; \
    uint64_t check_t0_ = check_now_ms(); \
    fn(); \
    if (getenv("CHECK_VERBOSE")) fprintf(stderr, "%s: %llu ms\n", #fn, \
        (unsigned long long)(check_now_ms() - check_t0_)); \
    if (check_case_skipped) { check_skipped++; fprintf(stderr, "SKIP %s\n", #fn); } \
    else if (check_case_failed) { check_failed++; fprintf(stderr, "FAIL %s\n", #fn); } \
    else { check_passed++; } \
    check_case_name = NULL; } while (0)

static inline int check_report(void) {
    if (check_skipped) printf("%d skipped (counted as failed)\n", check_skipped);
    printf("%d passed, %d failed\n", check_passed, check_failed + check_skipped);
    return check_failed + check_skipped ? 1 : 0;
}

#endif
