/*
 * Unit tests of the hybrid logical clock (cluster/hlc.h) over a fake wall clock: timestamps stay
 * strictly increasing within one millisecond, across a clock step back and past the 16-bit
 * counter, observe() pushes the clock past a peer's timestamp, and concurrent callers never get
 * the same timestamp.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <pthread.h>

#include "cluster/hlc.h"

#define T0_MS 1700000000000ull /* a plausible wall clock (Nov 2023), in ms */

/* ---- fake clock ---- */

typedef struct fake_clock {
    _Atomic uint64_t ms;
    _Atomic unsigned calls;
} fake_clock_t;

static uint64_t fake_clock_ms(void *ctx)
{
    fake_clock_t *c = ctx;
    atomic_fetch_add(&c->calls, 1);
    return atomic_load(&c->ms);
}

static void fake_init(fake_clock_t *c, dkv_hlc_t *hlc, uint64_t ms)
{
    atomic_init(&c->ms, ms);
    atomic_init(&c->calls, 0);
    dkv_hlc_init(hlc, fake_clock_ms, c);
}

/* ---- tests ---- */

/* A timestamp more than the max offset ahead of the wall clock is never adopted, however far
 * ahead the clock already is; within the bound it is, as without one. */
static void test_observe_refuses_timestamps_beyond_the_max_offset(void **state)
{
    (void)state;
    fake_clock_t clk;
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    dkv_hlc_set_max_offset(&hlc, 500);
    uint64_t before = dkv_hlc_now(&hlc);
    assert_false(dkv_hlc_observe(&hlc, (T0_MS + 501) << 16));
    assert_false(dkv_hlc_observe(&hlc, UINT64_MAX));
    uint64_t after = dkv_hlc_now(&hlc);
    assert_true(after == before + 1); /* nothing was adopted */
    assert_true(dkv_hlc_observe(&hlc, (T0_MS + 500) << 16));
    assert_true(dkv_hlc_now(&hlc) > (T0_MS + 500) << 16);
    assert_true(dkv_hlc_observe(&hlc, 1)); /* the past is always fine */
    /* The wall clock moves on: what was too far ahead is now within the bound. */
    atomic_store(&clk.ms, T0_MS + 2000);
    assert_true(dkv_hlc_observe(&hlc, (T0_MS + 2400) << 16));
    /* Without a bound everything is adopted, as before. */
    dkv_hlc_set_max_offset(&hlc, 0);
    assert_true(dkv_hlc_observe(&hlc, (T0_MS + 100000) << 16));
    assert_true(dkv_hlc_now(&hlc) > (T0_MS + 100000) << 16);
}

static void test_uses_the_given_clock(void **state)
{
    (void)state;
    fake_clock_t clk;
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    uint64_t ts = dkv_hlc_now(&hlc);
    assert_true(atomic_load(&clk.calls) >= 1);
    assert_true(dkv_hlc_ms(ts) == T0_MS);
    assert_true(ts == T0_MS << DKV_HLC_LOGICAL_BITS);
}

static void test_ms_extracts_wall_clock(void **state)
{
    (void)state;
    assert_true(dkv_hlc_ms(0) == 0);
    assert_true(dkv_hlc_ms((T0_MS << 16) | 0xffff) == T0_MS);
    assert_true(dkv_hlc_ms((T0_MS << 16) + 0x10000) == T0_MS + 1);
    assert_true(dkv_hlc_ms(UINT64_MAX) == (UINT64_MAX >> 16));
}

static void test_strictly_increasing_within_one_ms(void **state)
{
    (void)state;
    fake_clock_t clk;
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    uint64_t prev = dkv_hlc_now(&hlc);
    for (int i = 0; i < 1000; i++) {
        uint64_t ts = dkv_hlc_now(&hlc);
        assert_true(ts > prev);
        assert_true(dkv_hlc_ms(ts) == T0_MS); /* the counter absorbs them */
        prev = ts;
    }
    /* The wall clock moving on resets to the new millisecond. */
    atomic_store(&clk.ms, T0_MS + 5);
    uint64_t ts = dkv_hlc_now(&hlc);
    assert_true(ts > prev);
    assert_true(ts == (T0_MS + 5) << 16);
}

static void test_clock_step_back(void **state)
{
    (void)state;
    fake_clock_t clk;
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    uint64_t before = 0;
    for (int i = 0; i < 10; i++) {
        before = dkv_hlc_now(&hlc);
    }
    atomic_store(&clk.ms, T0_MS - 10000); /* NTP steps the clock back 10 s */
    uint64_t prev = before;
    for (int i = 0; i < 1000; i++) {
        uint64_t ts = dkv_hlc_now(&hlc);
        assert_true(ts > prev);
        prev = ts;
    }
    assert_true(dkv_hlc_ms(prev) == T0_MS); /* still in the old millisecond */
    /* Once the wall clock passes the old time again, it takes over. */
    atomic_store(&clk.ms, T0_MS + 1);
    uint64_t ts = dkv_hlc_now(&hlc);
    assert_true(ts > prev);
    assert_true(ts == (T0_MS + 1) << 16);
}

static void test_counter_overflow_still_increases(void **state)
{
    (void)state;
    fake_clock_t clk;
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    uint64_t prev = dkv_hlc_now(&hlc);
    for (int i = 0; i < 70000; i++) { /* past 65535 in one ms */
        uint64_t ts = dkv_hlc_now(&hlc);
        assert_true(ts > prev);
        prev = ts;
    }
    assert_true(dkv_hlc_ms(prev) == T0_MS + 1); /* borrowed from the next ms */
    /* When the wall clock reaches the borrowed ms, the clock still does not go back. */
    atomic_store(&clk.ms, T0_MS + 1);
    uint64_t ts = dkv_hlc_now(&hlc);
    assert_true(ts > prev);
}

static void test_observe_future_pushes_clock(void **state)
{
    (void)state;
    fake_clock_t clk;
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    uint64_t local = dkv_hlc_now(&hlc);
    uint64_t peer = ((T0_MS + 60000) << 16) | 123; /* a peer one minute ahead */
    dkv_hlc_observe(&hlc, peer);
    uint64_t ts = dkv_hlc_now(&hlc);
    assert_true(ts > peer);
    assert_true(ts > local);
    assert_true(ts == peer + 1);
    /* Observing the same or an older peer timestamp again changes nothing. */
    dkv_hlc_observe(&hlc, peer);
    assert_true(dkv_hlc_now(&hlc) == ts + 1);
}

static void test_observe_past_changes_nothing(void **state)
{
    (void)state;
    fake_clock_t clk;
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    uint64_t a = dkv_hlc_now(&hlc);
    uint64_t b = dkv_hlc_now(&hlc);
    assert_true(b == a + 1);
    dkv_hlc_observe(&hlc, (T0_MS - 1000) << 16);
    dkv_hlc_observe(&hlc, a);
    dkv_hlc_observe(&hlc, 0);
    uint64_t c = dkv_hlc_now(&hlc);
    assert_true(c == b + 1); /* exactly as if nothing had been observed */
}

static void test_system_clock_is_sane(void **state)
{
    (void)state;
    dkv_hlc_t hlc;
    dkv_hlc_init(&hlc, NULL, NULL);
    uint64_t ms = dkv_hlc_system_clock_ms(NULL);
    assert_true(ms > T0_MS); /* after Nov 2023 */
    uint64_t a = dkv_hlc_now(&hlc);
    uint64_t b = dkv_hlc_now(&hlc);
    assert_true(b > a);
    assert_true(dkv_hlc_ms(a) >= ms);
    assert_true(dkv_hlc_ms(a) - ms < 10000);
}

/* ---- concurrency ---- */

#define THREADS 4
#define PER_THREAD 100000

typedef struct worker {
    dkv_hlc_t *hlc;
    fake_clock_t *clk;
    uint64_t *out;
    int id;
} worker_t;

static void *worker_main(void *arg)
{
    worker_t *w = arg;
    uint64_t prev = 0;
    for (int i = 0; i < PER_THREAD; i++) {
        if (w->id == 0 && i % 1000 == 0) {
            /* One thread moves the wall clock, sometimes backwards. */
            atomic_store(&w->clk->ms, T0_MS + (uint64_t)((i / 1000) % 7));
        }
        uint64_t ts = dkv_hlc_now(w->hlc);
        if (ts <= prev) {
            w->out[i] = 0; /* flagged below: not monotonic within one thread */
            return NULL;
        }
        w->out[i] = ts;
        prev = ts;
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a;
    uint64_t y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static void test_threads_get_distinct_timestamps(void **state)
{
    (void)state;
    fake_clock_t clk;
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    size_t total = (size_t)THREADS * PER_THREAD;
    uint64_t *all = calloc(total, sizeof(*all));
    assert_non_null(all);
    pthread_t tids[THREADS];
    worker_t w[THREADS];
    for (int t = 0; t < THREADS; t++) {
        w[t] = (worker_t){&hlc, &clk, all + (size_t)t * PER_THREAD, t};
        assert_int_equal(pthread_create(&tids[t], NULL, worker_main, &w[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_join(tids[t], NULL), 0);
    }
    qsort(all, total, sizeof(*all), cmp_u64);
    assert_true(all[0] != 0); /* every thread saw its own timestamps increase */
    size_t dups = 0;
    for (size_t i = 1; i < total; i++) {
        dups += all[i] == all[i - 1];
    }
    assert_int_equal(dups, 0);
    free(all);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uses_the_given_clock),
        cmocka_unit_test(test_ms_extracts_wall_clock),
        cmocka_unit_test(test_strictly_increasing_within_one_ms),
        cmocka_unit_test(test_clock_step_back),
        cmocka_unit_test(test_counter_overflow_still_increases),
        cmocka_unit_test(test_observe_future_pushes_clock),
        cmocka_unit_test(test_observe_past_changes_nothing),
        cmocka_unit_test(test_observe_refuses_timestamps_beyond_the_max_offset),
        cmocka_unit_test(test_system_clock_is_sane),
        cmocka_unit_test(test_threads_get_distinct_timestamps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
