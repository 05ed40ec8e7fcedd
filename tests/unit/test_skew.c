/*
 * Unit tests of the clock-skew monitor (cluster/skew.h) with made-up round trips: Cristian's
 * offset and uncertainty, the "surely off" test, the majority rule counting the node itself, stale
 * estimates, and a cluster with no evidence never refusing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "cluster/skew.h"
#include "common/buf.h"
#include "common/err.h"

#define T0_MS 1700000000000ull
#define NOW 100000u /* a monotonic clock, ms */
#define TTL 5000u
#define HOUR 3600000u

/* Peer `peer` answered a PING sent rtt_ms ago: its clock read `offset_ms` off ours at the
 * middle of the round trip. */
static void sample(dkv_skew_t *s, uint32_t peer, int64_t offset_ms, uint64_t rtt_ms, uint64_t now)
{
    uint64_t local = T0_MS;
    uint64_t peer_wall = (uint64_t)((int64_t)local + offset_ms - (int64_t)(rtt_ms / 2));
    dkv_skew_sample(s, peer, rtt_ms * 1000, local, peer_wall, now);
}

static dkv_skew_t *make(size_t n, uint32_t self, uint64_t max_offset_ms)
{
    dkv_skew_t *s = NULL;
    assert_int_equal(dkv_skew_new(n, self, max_offset_ms, TTL, &s), 0);
    return s;
}

static void test_cristian_offset_and_uncertainty(void **state)
{
    (void)state;
    dkv_skew_t *s = make(3, 0, 500);
    /* The peer read T0 + 1000 when we read T0 + 0 at the reply, 40 ms after sending: its clock
     * is 1000 + 20 ms ahead, give or take 20 ms (+1 ms of resolution). */
    dkv_skew_sample(s, 1, 40000, T0_MS, T0_MS + 1000, NOW);
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_skew_peer_json(s, 1, NOW + 7, &b);
    dkv_buf_append(&b, "", 1);
    assert_string_equal((const char *)b.data,
                        ",\"clock_offset_ms\":1020.000,\"clock_uncertainty_ms\":21.000,"
                        "\"rtt_ms\":40.000,\"clock_sample_age_ms\":7");
    b.len = 0;
    dkv_skew_peer_json(s, 2, NOW, &b); /* never measured */
    dkv_buf_append(&b, "", 1);
    assert_string_equal((const char *)b.data,
                        ",\"clock_offset_ms\":null,\"clock_uncertainty_ms\":null,\"rtt_ms\":null,"
                        "\"clock_sample_age_ms\":null");
    b.len = 0;
    dkv_skew_sample(s, 2, 250, T0_MS, T0_MS - 3600000, NOW); /* behind: negative */
    dkv_skew_peer_json(s, 2, NOW, &b);
    dkv_buf_append(&b, "", 1);
    assert_non_null(strstr((const char *)b.data, "\"clock_offset_ms\":-3599999.875"));
    assert_non_null(strstr((const char *)b.data, "\"rtt_ms\":0.250"));
    /* Samples about self or out of range are ignored. */
    dkv_skew_sample(s, 0, 1, T0_MS, T0_MS + HOUR, NOW);
    dkv_skew_sample(s, 3, 1, T0_MS, T0_MS + HOUR, NOW);
    b.len = 0;
    dkv_skew_peer_json(s, 0, NOW, &b);
    dkv_buf_append(&b, "", 1);
    assert_non_null(strstr((const char *)b.data, "\"clock_offset_ms\":null"));
    dkv_buf_cleanup(&b);
    dkv_skew_free(s);
}

/* Three nodes, ours an hour ahead of both others: off the majority. */
static void test_off_both_peers_of_three_refuses_and_says_how_far(void **state)
{
    (void)state;
    dkv_skew_t *s = make(3, 2, 500);
    assert_false(dkv_skew_evaluate(s, NOW)); /* no evidence yet */
    sample(s, 0, -(int64_t)HOUR, 2, NOW);
    assert_false(dkv_skew_evaluate(s, NOW)); /* one of two (us and it): no majority */
    sample(s, 1, -(int64_t)HOUR - 50, 2, NOW);
    assert_true(dkv_skew_evaluate(s, NOW));
    int64_t off = 0;
    assert_true(dkv_skew_refusing(s, &off));
    assert_true(off == (int64_t)HOUR); /* the nearer of the two, ahead: positive */
    char text[256];
    dkv_skew_refusal_text(s, off, text, sizeof(text));
    assert_string_equal(text, "this node's clock is 3600000 ms off the majority of the cluster "
                              "(ahead of it); writes refused until it is back within "
                              "--max-clock-offset-ms (500)");
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_skew_status_json(s, &b);
    dkv_buf_append(&b, "", 1);
    assert_non_null(strstr((const char *)b.data, "\"writes_refused\":true"));
    assert_non_null(strstr((const char *)b.data, "\"peers_measured\":2,\"peers_off\":2,"
                                                 "\"refused_writes\":1"));
    dkv_buf_cleanup(&b);
    /* The clock is fixed: the next samples agree, and it resumes by itself. */
    sample(s, 0, 3, 2, NOW + 1000);
    sample(s, 1, -2, 2, NOW + 1000);
    assert_false(dkv_skew_evaluate(s, NOW + 1000));
    assert_false(dkv_skew_refusing(s, NULL));
    dkv_skew_free(s);
}

/* Behind works the same way, with a negative distance. */
static void test_behind_the_majority_refuses_too(void **state)
{
    (void)state;
    dkv_skew_t *s = make(3, 0, 500);
    sample(s, 1, 30000, 1, NOW);
    sample(s, 2, 30000, 1, NOW);
    assert_true(dkv_skew_evaluate(s, NOW));
    int64_t off = 0;
    assert_true(dkv_skew_refusing(s, &off));
    assert_true(off == -30000);
    char text[256];
    dkv_skew_refusal_text(s, off, text, sizeof(text));
    assert_non_null(strstr(text, "30000 ms off the majority of the cluster (behind it)"));
    dkv_skew_free(s);
}

/* The node that is off is refused; the others, which agree with each other, are not. */
static void test_only_the_odd_one_out_refuses(void **state)
{
    (void)state;
    dkv_skew_t *good = make(3, 0, 500);
    sample(good, 1, 1, 1, NOW);
    sample(good, 2, HOUR, 1, NOW);
    assert_false(dkv_skew_evaluate(good, NOW));
    dkv_skew_free(good);
    /* Two nodes that disagree: which one is wrong? Neither refuses. */
    dkv_skew_t *pair = make(2, 0, 500);
    sample(pair, 1, HOUR, 1, NOW);
    assert_false(dkv_skew_evaluate(pair, NOW));
    dkv_skew_free(pair);
    /* Five nodes, two reachable, both disagree: off from 2 of 3 measured nodes. */
    dkv_skew_t *five = make(5, 0, 500);
    sample(five, 3, HOUR, 1, NOW);
    sample(five, 4, HOUR, 1, NOW);
    assert_true(dkv_skew_evaluate(five, NOW));
    sample(five, 1, HOUR, 1, NOW);
    sample(five, 2, 0, 1, NOW); /* 3 of 5 */
    assert_true(dkv_skew_evaluate(five, NOW));
    sample(five, 1, 0, 1, NOW); /* 2 of 5: not a majority */
    assert_false(dkv_skew_evaluate(five, NOW));
    dkv_skew_free(five);
    /* A cluster of one never has evidence. */
    dkv_skew_t *one = make(1, 0, 500);
    assert_false(dkv_skew_evaluate(one, NOW));
    dkv_skew_free(one);
}

/* Only a sure disagreement counts: |offset| - rtt/2 beyond the max offset. */
static void test_uncertain_readings_count_as_agreeing(void **state)
{
    (void)state;
    dkv_skew_t *s = make(3, 0, 500);
    sample(s, 1, 900, 1000, NOW); /* 900 +- 501: maybe within */
    sample(s, 2, -900, 1000, NOW);
    assert_false(dkv_skew_evaluate(s, NOW));
    sample(s, 1, 900, 100, NOW); /* 900 +- 51: surely beyond */
    sample(s, 2, -900, 100, NOW);
    assert_true(dkv_skew_evaluate(s, NOW));
    sample(s, 1, 500, 0, NOW); /* exactly the max offset (+1 ms resolution): fine */
    sample(s, 2, 501, 0, NOW);
    assert_false(dkv_skew_evaluate(s, NOW));
    dkv_skew_free(s);
}

/* Estimates expire: a peer that went away is no longer evidence. */
static void test_stale_estimates_are_not_evidence(void **state)
{
    (void)state;
    dkv_skew_t *s = make(3, 0, 500);
    sample(s, 1, HOUR, 1, NOW);
    sample(s, 2, HOUR, 1, NOW);
    assert_true(dkv_skew_evaluate(s, NOW + TTL));
    assert_false(dkv_skew_evaluate(s, NOW + TTL + 1));
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_skew_status_json(s, &b);
    dkv_buf_append(&b, "", 1);
    assert_non_null(strstr((const char *)b.data, "\"writes_refused\":false,\"reason\":null,"
                                                 "\"peers_measured\":0,\"peers_off\":0"));
    dkv_buf_cleanup(&b);
    dkv_skew_free(s);
}

/* --max-clock-offset-ms 0 turns the check off; estimates are still kept. */
static void test_no_max_offset_never_refuses(void **state)
{
    (void)state;
    dkv_skew_t *s = make(3, 0, 0);
    sample(s, 1, HOUR, 1, NOW);
    sample(s, 2, HOUR, 1, NOW);
    assert_false(dkv_skew_evaluate(s, NOW));
    dkv_skew_free(s);
    dkv_skew_t *bad = NULL;
    assert_int_equal(dkv_skew_new(0, 0, 500, TTL, &bad), DKV_EINVAL);
    assert_int_equal(dkv_skew_new(3, 3, 500, TTL, &bad), DKV_EINVAL);
    assert_null(bad);
    dkv_skew_free(NULL);
}

/* A peer's wild clock value (the network's word) does not overflow the arithmetic. */
static void test_extreme_values_saturate(void **state)
{
    (void)state;
    dkv_skew_t *s = make(3, 0, 500);
    dkv_skew_sample(s, 1, UINT64_MAX, T0_MS, UINT64_MAX, NOW);
    dkv_skew_sample(s, 2, 0, T0_MS, 0, NOW);
    assert_true(dkv_skew_evaluate(s, NOW)); /* both surely off, in opposite directions */
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_skew_peer_json(s, 1, NOW, &b);
    dkv_skew_peer_json(s, 2, NOW, &b);
    dkv_buf_cleanup(&b);
    dkv_skew_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cristian_offset_and_uncertainty),
        cmocka_unit_test(test_off_both_peers_of_three_refuses_and_says_how_far),
        cmocka_unit_test(test_behind_the_majority_refuses_too),
        cmocka_unit_test(test_only_the_odd_one_out_refuses),
        cmocka_unit_test(test_uncertain_readings_count_as_agreeing),
        cmocka_unit_test(test_stale_estimates_are_not_evidence),
        cmocka_unit_test(test_no_max_offset_never_refuses),
        cmocka_unit_test(test_extreme_values_saturate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
