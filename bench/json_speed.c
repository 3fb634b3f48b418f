/* The JSON parser's throughput on a 10 MB _bulk_docs body of ~1 KB documents: splitting it
 * into documents (json_bulk_parse, best of 3) and validating it only (json_parse). Run by
 * `make bench` on the release build; the unit tests check the same body's correctness. */
#include <stdio.h>
#include <time.h>

#include "json/json.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(void) {
    buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"new_edits\":false,\"docs\":[");
    size_t ndocs = 0;
    while (b.len < 10u << 20) {
        if (ndocs) buf_putc(&b, ',');
        buf_printf(&b, "{\"_id\":\"doc%08zu\",\"_rev\":\"1-%032zx\",\"_revisions\":{\"start\":1,"
                       "\"ids\":[\"%032zx\"]},\"type\":\"reading\",\"sensor\":\"s-%zu\","
                       "\"value\":%zu.%02zu,\"ok\":true,\"tags\":[\"a\",\"b\",\"c\"],"
                       "\"loc\":{\"lat\":52.5200066,\"lon\":13.404954,\"alt\":null},\"note\":\"",
                   ndocs, ndocs, ndocs, ndocs % 97, ndocs, ndocs % 100);
        size_t start = b.len;
        while (b.len - start < 640) buf_puts(&b, "lorem ipsum dolor sit amet \\\"q\\\" ");
        buf_puts(&b, "\",\"n\":[1,2,3,4,5,6,7,8,9,10]}");
        ndocs++;
    }
    buf_puts(&b, "]}");
    json_bulk bk;
    json_error err;
    double best = 1e9;
    for (int round = 0; round < 3; round++) {
        double t0 = now_s();
        int rc = json_bulk_parse(b.data, b.len, NULL, &bk, &err);
        double dt = now_s() - t0;
        if (rc || bk.count != ndocs) {
            fprintf(stderr, "json_speed: the body did not split into %zu documents\n", ndocs);
            return 1;
        }
        if (dt < best) best = dt;
        json_bulk_destroy(&bk);
    }
    double t0 = now_s();
    if (json_parse(b.data, b.len, NULL, NULL, NULL, &err) != 0) return 1;
    double dv = now_s() - t0;
    printf("json: %.1f MB _bulk_docs (%zu docs of ~1 KB): split %.0f MB/s, validate only "
           "%.0f MB/s\n", (double)b.len / 1e6, ndocs, (double)b.len / 1e6 / best,
           (double)b.len / 1e6 / dv);
    buf_destroy(&b);
    return 0;
}
