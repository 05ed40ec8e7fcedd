/*
 * Unit tests of metrics/metrics.h: the Prometheus text writer (HELP/TYPE lines, label escaping,
 * cumulative histogram buckets with +Inf == _count, seconds in `le` and `_sum`), bucket choice
 * at the bounds (`le` is inclusive), the status and method labels, and summing loops.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "metrics/metrics.h"

/* Checks that `b` holds exactly `want`, printing both on a mismatch. */
static void assert_text(const dkv_buf_t *b, const char *want)
{
    size_t n = strlen(want);
    if (b->len != n || (n > 0 && memcmp(b->data, want, n) != 0)) {
        fprintf(stderr, "got:\n%.*s\nwant:\n%s\n", (int)b->len, (const char *)b->data, want);
        fail();
    }
}

static void test_label_values_are_escaped(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_prom_escape_label(&b, "a\\b\"c\nd e{}=,");
    assert_text(&b, "a\\\\b\\\"c\\nd e{}=,");
    b.len = 0;
    dkv_prom_label_t ls[2] = {{"peer", "http://h:1/\"x\""}, {"outcome", "ok"}};
    dkv_prom_sample(&b, "dkv_x_total", ls, 2, 18446744073709551615ull);
    assert_text(&b, "dkv_x_total{peer=\"http://h:1/\\\"x\\\"\",outcome=\"ok\"} "
                    "18446744073709551615\n");
    b.len = 0;
    dkv_prom_sample(&b, "dkv_up", NULL, 0, 0);
    assert_text(&b, "dkv_up 0\n");
    dkv_buf_cleanup(&b);
}

static void test_family_lines_escape_help_but_not_quotes(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_prom_family(&b, "dkv_a_total", "counter", "line one\nback\\slash \"quoted\"");
    assert_text(&b, "# HELP dkv_a_total line one\\nback\\\\slash \"quoted\"\n"
                    "# TYPE dkv_a_total counter\n");
    dkv_buf_cleanup(&b);
}

static void test_double_samples_use_the_shortest_exact_form(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_prom_sample_double(&b, "g", NULL, 0, 0.5);
    dkv_prom_sample_double(&b, "g", NULL, 0, 0.1);
    dkv_prom_sample_double(&b, "g", NULL, 0, 1e-9);
    dkv_prom_sample_double(&b, "g", NULL, 0, 3.0);
    assert_text(&b, "g 0.5\ng 0.1\ng 1e-09\ng 3\n");
    dkv_buf_cleanup(&b);
}

static void test_observations_land_in_inclusive_buckets(void **state)
{
    (void)state;
    dkv_metrics_hist_t *h = calloc(1, sizeof(*h));
    dkv_metrics_observe(h, 0);              /* le 0.0001 */
    dkv_metrics_observe(h, 100000);         /* exactly 100 µs: still le 0.0001 */
    dkv_metrics_observe(h, 100001);         /* le 0.00025 */
    dkv_metrics_observe(h, 10000000000ull); /* exactly 10 s: le 10 */
    dkv_metrics_observe(h, 10000000001ull); /* +Inf only */
    assert_int_equal(dkv_metrics_read(&h->buckets[0]), 2);
    assert_int_equal(dkv_metrics_read(&h->buckets[1]), 1);
    assert_int_equal(dkv_metrics_read(&h->buckets[DKV_METRICS_BUCKETS - 1]), 1);
    assert_int_equal(dkv_metrics_read(&h->buckets[DKV_METRICS_BUCKETS]), 1);
    assert_int_equal(dkv_metrics_read(&h->sum_ns), 0 + 100000 + 100001 + 10000000000ull +
                                                       10000000001ull);
    free(h);
}

static void test_histogram_is_cumulative_with_inf_equal_to_count(void **state)
{
    (void)state;
    dkv_metrics_hist_t *a = calloc(1, sizeof(*a));
    dkv_metrics_hist_t *b2 = calloc(1, sizeof(*b2));
    dkv_metrics_observe(a, 200000);       /* 0.0002 s: le 0.00025 */
    dkv_metrics_observe(b2, 3000000);     /* 0.003 s: le 0.005 */
    dkv_metrics_observe(b2, 20000000000); /* 20 s: +Inf */
    dkv_metrics_hist_sum_t sum = {0};
    dkv_metrics_hist_accumulate(&sum, a); /* two loops summed */
    dkv_metrics_hist_accumulate(&sum, b2);
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_prom_label_t l = {"op", "get"};
    dkv_prom_histogram(&b, "lat_seconds", &l, 1, &sum);
    assert_text(&b, "lat_seconds_bucket{op=\"get\",le=\"0.0001\"} 0\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.00025\"} 1\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.0005\"} 1\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.001\"} 1\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.0025\"} 1\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.005\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.01\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.025\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.05\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.1\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.25\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"0.5\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"1\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"2.5\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"5\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"10\"} 2\n"
                    "lat_seconds_bucket{op=\"get\",le=\"+Inf\"} 3\n"
                    "lat_seconds_sum{op=\"get\"} 20.0032\n"
                    "lat_seconds_count{op=\"get\"} 3\n");
    /* Without labels the le label stands alone. */
    b.len = 0;
    dkv_metrics_hist_sum_t empty = {0};
    dkv_prom_histogram(&b, "h", NULL, 0, &empty);
    assert_true(strstr((const char *)b.data, "h_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n") !=
                NULL);
    dkv_buf_cleanup(&b);
    free(a);
    free(b2);
}

static void test_status_and_method_labels(void **state)
{
    (void)state;
    assert_string_equal(dkv_metrics_status_name(dkv_metrics_status_index(200)), "200");
    assert_string_equal(dkv_metrics_status_name(dkv_metrics_status_index(507)), "507");
    assert_string_equal(dkv_metrics_status_name(dkv_metrics_status_index(503)), "503");
    assert_string_equal(dkv_metrics_status_name(dkv_metrics_status_index(418)), "other");
    assert_int_equal(dkv_metrics_status_index(418), DKV_METRICS_N_STATUSES - 1);
    /* Every known status has its own index. */
    unsigned seen = 0;
    for (int s = 100; s < 600; s++) {
        if (dkv_metrics_status_index(s) != DKV_METRICS_N_STATUSES - 1) {
            char want[16];
            snprintf(want, sizeof(want), "%d", s);
            assert_string_equal(dkv_metrics_status_name(dkv_metrics_status_index(s)), want);
            seen++;
        }
    }
    assert_int_equal(seen, DKV_METRICS_N_STATUSES - 1);
    assert_string_equal(dkv_metrics_method_name(DKV_METRICS_HEAD), "HEAD");
    assert_string_equal(dkv_metrics_method_name(99), "other");
}

static void test_loops_are_separate_and_zeroed(void **state)
{
    (void)state;
    dkv_metrics_t *m = dkv_metrics_new(3);
    assert_int_equal(dkv_metrics_loops(m), 3);
    assert_null(dkv_metrics_loop(m, 3));
    for (unsigned i = 0; i < 3; i++) {
        dkv_metrics_loop_t *l = dkv_metrics_loop(m, i);
        assert_int_equal((uintptr_t)l % 64, 0);
        assert_int_equal(dkv_metrics_read(&l->http_requests[0][0]), 0);
        dkv_metrics_add(&l->http_requests[0][0], i + 1);
    }
    uint64_t total = 0;
    for (unsigned i = 0; i < 3; i++) {
        total += dkv_metrics_read(&dkv_metrics_loop(m, i)->http_requests[0][0]);
    }
    assert_int_equal(total, 6);
    dkv_metrics_free(m);
    dkv_metrics_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_label_values_are_escaped),
        cmocka_unit_test(test_family_lines_escape_help_but_not_quotes),
        cmocka_unit_test(test_double_samples_use_the_shortest_exact_form),
        cmocka_unit_test(test_observations_land_in_inclusive_buckets),
        cmocka_unit_test(test_histogram_is_cumulative_with_inf_equal_to_count),
        cmocka_unit_test(test_status_and_method_labels),
        cmocka_unit_test(test_loops_are_separate_and_zeroed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
