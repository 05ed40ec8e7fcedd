/*
 * Unit tests of the hybrid logical clock (cluster/hlc.h) over a fake wall clock: timestamps stay
 * strictly increasing within one millisecond, across a clock step back and past the 16-bit
 * counter, observe() pushes the clock past a peer's timestamp, and concurrent callers never get
 * the same timestamp. The persisted upper bound: through a fake persist function that records
 * (or fails) every bound, no timestamp is handed out or adopted at or past a bound before it was
 * persisted, a restarted clock starts above everything its previous run handed out, and a
 * failure to persist stops the clock rather than letting it pass; the DATA/hlc file round-trips.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

#include "cluster/hlc.h"
#include "common/err.h"

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


/* ---- persisted upper bound ---- */

/* Records every bound it is asked to persist; fails while `fail` is set. */
typedef struct fake_disk {
    _Atomic uint64_t persisted; /* the last durable bound */
    _Atomic unsigned writes;
    _Atomic int fail;           /* the error to return, 0 = succeed */
    _Atomic int regressions;    /* a bound not above the previous one was written */
} fake_disk_t;

static int fake_persist(void *ctx, uint64_t bound_ms)
{
    fake_disk_t *d = ctx;
    int err = atomic_load(&d->fail);
    if (err != 0) {
        return err;
    }
    if (bound_ms <= atomic_load(&d->persisted)) {
        atomic_fetch_add(&d->regressions, 1);
    }
    atomic_store(&d->persisted, bound_ms);
    atomic_fetch_add(&d->writes, 1);
    return 0;
}

static void disk_init(fake_disk_t *d)
{
    atomic_init(&d->persisted, 0);
    atomic_init(&d->writes, 0);
    atomic_init(&d->fail, 0);
    atomic_init(&d->regressions, 0);
}

#define WINDOW_MS 1000u

/* The bound covers the last timestamp at all times, and was durable before it was handed out. */
static void assert_covered(const fake_disk_t *d, uint64_t ts)
{
    assert_true(dkv_hlc_ms(ts) < atomic_load(&d->persisted));
}

/* The finding: a restarted node whose wall clock stepped back stamped writes below the ones it
 * had stored (PUT 201, GET old). Started at the previous run's bound, it stamps above them. */
static void test_restart_after_a_step_back_stamps_above_the_previous_run(void **state)
{
    (void)state;
    fake_clock_t clk;
    fake_disk_t disk;
    disk_init(&disk);
    dkv_hlc_t a;
    fake_init(&clk, &a, T0_MS);
    dkv_hlc_set_max_offset(&a, 500);
    assert_int_equal(dkv_hlc_bound_start(&a, 0, WINDOW_MS, fake_persist, &disk), 0);
    uint64_t newest = 0;
    assert_int_equal(dkv_hlc_next(&a, &newest), 0);
    assert_covered(&disk, newest);
    /* It adopts a peer's timestamp 500 ms ahead, then stamps one more write after it. */
    assert_true(dkv_hlc_observe(&a, (T0_MS + 500) << 16));
    assert_int_equal(dkv_hlc_next(&a, &newest), 0);
    assert_true(newest > (T0_MS + 500) << 16);
    assert_covered(&disk, newest);
    dkv_hlc_cleanup(&a);

    /* Restart with the wall clock one hour back. */
    uint64_t prev = atomic_load(&disk.persisted);
    dkv_hlc_t b;
    fake_init(&clk, &b, T0_MS - 3600000);
    assert_int_equal(dkv_hlc_bound_start(&b, prev, WINDOW_MS, fake_persist, &disk), 0);
    assert_true(atomic_load(&disk.persisted) == prev + WINDOW_MS); /* persisted at start */
    uint64_t ts = 0;
    assert_int_equal(dkv_hlc_next(&b, &ts), 0);
    assert_true(ts > newest);
    assert_true(ts > prev << 16);
    assert_covered(&disk, ts);
    assert_int_equal(atomic_load(&disk.regressions), 0);
    /* Its own records are now an hour ahead of its wall clock: storing them again (the local
     * replica write of its own coordinator) must not be refused as "from the future". */
    dkv_hlc_set_max_offset(&b, 500);
    assert_true(dkv_hlc_observe(&b, ts));
    assert_true(dkv_hlc_observe(&b, newest));
    assert_false(dkv_hlc_observe(&b, ts + ((uint64_t)1000 << 16))); /* past the clock: checked */
    dkv_hlc_cleanup(&b);

    /* Without the bound (the old behaviour) the same restart stamps below: the test can fail. */
    dkv_hlc_t c;
    fake_init(&clk, &c, T0_MS - 3600000);
    assert_true(dkv_hlc_now(&c) < newest);
}

/* A fresh data directory: nothing to start from but the clock, and a bound is written at once. */
static void test_fresh_clock_persists_a_bound_at_start(void **state)
{
    (void)state;
    fake_clock_t clk;
    fake_disk_t disk;
    disk_init(&disk);
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    assert_int_equal(dkv_hlc_bound_start(&hlc, 0, WINDOW_MS, fake_persist, &disk), 0);
    assert_int_equal(atomic_load(&disk.writes), 1);
    assert_true(dkv_hlc_bound_ms(&hlc) == atomic_load(&disk.persisted));
    /* Nothing was issued yet, so the bound does not follow the wall clock: a node that ran with a
     * wrong clock but stamped nothing does not carry it into its next run. */
    assert_true(dkv_hlc_bound_ms(&hlc) < T0_MS);
    uint64_t ts = 0;
    assert_int_equal(dkv_hlc_next(&hlc, &ts), 0); /* extends synchronously */
    assert_true(ts == T0_MS << 16);
    assert_true(atomic_load(&disk.persisted) == T0_MS + WINDOW_MS);
    assert_int_equal(atomic_load(&hlc.persist_sync), 1);
    /* Bad arguments and a second start are refused. */
    assert_int_equal(dkv_hlc_bound_start(&hlc, 0, WINDOW_MS, fake_persist, &disk), DKV_EINVAL);
    dkv_hlc_t other;
    fake_init(&clk, &other, T0_MS);
    assert_int_equal(dkv_hlc_bound_start(&other, 0, 3, fake_persist, &disk), DKV_EINVAL);
    assert_int_equal(dkv_hlc_bound_start(&other, 0, WINDOW_MS, NULL, &disk), DKV_EINVAL);
    dkv_hlc_cleanup(&hlc);
    dkv_hlc_cleanup(&other);
}

/* A node that cannot write the bound at start must not start. */
static void test_start_fails_when_the_bound_cannot_be_written(void **state)
{
    (void)state;
    fake_clock_t clk;
    fake_disk_t disk;
    disk_init(&disk);
    atomic_store(&disk.fail, -28); /* ENOSPC */
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    assert_int_equal(dkv_hlc_bound_start(&hlc, T0_MS, WINDOW_MS, fake_persist, &disk), -28);
    /* A full disk: still bounded, by the bound on disk; no timestamp until a new one persists. */
    assert_true(dkv_hlc_bound_ms(&hlc) == T0_MS);
    uint64_t ts = 0;
    assert_int_equal(dkv_hlc_next(&hlc, &ts), DKV_EHLCBOUND);
    atomic_store(&disk.fail, 0);
    assert_int_equal(dkv_hlc_next(&hlc, &ts), 0);
    assert_true(dkv_hlc_ms(ts) >= T0_MS);
    dkv_hlc_cleanup(&hlc);
}

/* The wall clock runs past the bound (an idle node, or a stalled timer): the next timestamp
 * waits for a new bound on disk; every timestamp is below a bound that was durable first. */
static void test_timestamps_never_reach_an_unpersisted_bound(void **state)
{
    (void)state;
    fake_clock_t clk;
    fake_disk_t disk;
    disk_init(&disk);
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    assert_int_equal(dkv_hlc_bound_start(&hlc, T0_MS, WINDOW_MS, fake_persist, &disk), 0);
    for (uint64_t step = 0; step < 50; step++) {
        atomic_store(&clk.ms, T0_MS + step * 337); /* jumps of a third of the window */
        for (int i = 0; i < 100; i++) {
            uint64_t ts = 0;
            assert_int_equal(dkv_hlc_next(&hlc, &ts), 0);
            assert_covered(&disk, ts);
        }
    }
    /* Observed timestamps too: one past the bound is adopted only with a bound beyond it. */
    dkv_hlc_set_max_offset(&hlc, 5000);
    uint64_t seen = (T0_MS + 49 * 337 + 4000) << 16;
    assert_true(seen >> 16 >= atomic_load(&disk.persisted));
    assert_true(dkv_hlc_observe(&hlc, seen));
    assert_true(atomic_load(&hlc.last) == seen);
    assert_covered(&disk, seen);
    assert_int_equal(atomic_load(&disk.regressions), 0);
    dkv_hlc_cleanup(&hlc);
}

/* A failure to persist never lets the clock pass the bound: timestamps fail instead, adoption is
 * refused, and once the disk recovers the clock goes on, still increasing. */
static void test_persist_failure_stops_the_clock_at_the_bound(void **state)
{
    (void)state;
    fake_clock_t clk;
    fake_disk_t disk;
    disk_init(&disk);
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    assert_int_equal(dkv_hlc_bound_start(&hlc, T0_MS, WINDOW_MS, fake_persist, &disk), 0);
    uint64_t bound = atomic_load(&disk.persisted);
    uint64_t before = 0;
    assert_int_equal(dkv_hlc_next(&hlc, &before), 0);
    atomic_store(&disk.fail, DKV_EIO);
    /* Below the bound nothing needs the disk. */
    uint64_t ts = 0;
    assert_int_equal(dkv_hlc_next(&hlc, &ts), 0);
    assert_true(ts == before + 1);
    /* At the bound: refused, and nothing moves. */
    atomic_store(&clk.ms, bound);
    ts = 12345;
    assert_int_equal(dkv_hlc_next(&hlc, &ts), DKV_EHLCBOUND);
    assert_true(ts == 12345); /* out-parameter untouched */
    assert_int_equal(dkv_hlc_next(&hlc, &ts), DKV_EHLCBOUND);
    atomic_store(&clk.ms, bound + 100000); /* and far past it */
    assert_int_equal(dkv_hlc_next(&hlc, &ts), DKV_EHLCBOUND);
    assert_true(dkv_hlc_ms(atomic_load(&hlc.last)) < bound);
    dkv_hlc_set_max_offset(&hlc, 500);
    assert_false(dkv_hlc_observe(&hlc, (bound + 100) << 16));
    assert_true(dkv_hlc_ms(atomic_load(&hlc.last)) < bound);
    assert_true(dkv_hlc_observe(&hlc, (bound - 1) << 16)); /* below the bound: fine */
    assert_int_not_equal(dkv_hlc_bound_tick(&hlc), 0);
    assert_true(dkv_hlc_bound_ms(&hlc) == bound);
    assert_true(atomic_load(&hlc.persist_failures) >= 4);
    /* The disk recovers. */
    atomic_store(&disk.fail, 0);
    uint64_t after = 0;
    assert_int_equal(dkv_hlc_next(&hlc, &after), 0);
    assert_true(after > before && after == (bound + 100000) << 16);
    assert_covered(&disk, after);
    dkv_hlc_cleanup(&hlc);
}

/* The timer writes only for a busy clock, keeps it off the synchronous path, and stays quiet
 * while the clock is idle. */
static void test_tick_extends_ahead_of_a_busy_clock_only(void **state)
{
    (void)state;
    fake_clock_t clk;
    fake_disk_t disk;
    disk_init(&disk);
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    assert_int_equal(dkv_hlc_bound_start(&hlc, T0_MS, WINDOW_MS, fake_persist, &disk), 0);
    unsigned writes = atomic_load(&disk.writes);
    assert_int_equal(dkv_hlc_bound_tick(&hlc), 0);
    assert_int_equal(atomic_load(&disk.writes), writes); /* a full window ahead: nothing */
    /* A busy clock, ticked every quarter window, never needs a synchronous write. */
    for (uint64_t t = 0; t < 40 * WINDOW_MS; t += WINDOW_MS / 8) {
        atomic_store(&clk.ms, T0_MS + t);
        uint64_t ts = 0;
        assert_int_equal(dkv_hlc_next(&hlc, &ts), 0);
        assert_covered(&disk, ts);
        if (t % (WINDOW_MS / 4) == 0) {
            assert_int_equal(dkv_hlc_bound_tick(&hlc), 0);
        }
    }
    assert_int_equal(atomic_load(&hlc.persist_sync), 0);
    /* Idle: the wall clock moves on, the clock does not, and neither does the bound (after at
     * most one more extension for the last timestamps). */
    assert_int_equal(dkv_hlc_bound_tick(&hlc), 0);
    writes = atomic_load(&disk.writes);
    for (int i = 0; i < 100; i++) {
        atomic_store(&clk.ms, T0_MS + 40 * WINDOW_MS + (uint64_t)i * 250);
        assert_int_equal(dkv_hlc_bound_tick(&hlc), 0);
    }
    assert_int_equal(atomic_load(&disk.writes), writes);
    /* An unbounded clock's tick does nothing. */
    dkv_hlc_t plain;
    fake_init(&clk, &plain, T0_MS);
    assert_int_equal(dkv_hlc_bound_tick(&plain), 0);
    assert_true(dkv_hlc_bound_ms(&plain) == 0);
    dkv_hlc_cleanup(&hlc);
}

static void test_start_wait_covers_a_quick_restart_only(void **state)
{
    (void)state;
    /* bound, wall, window, tolerance */
    assert_true(dkv_hlc_bound_wait_ms(0, T0_MS, 1000, 250) == 0);           /* fresh */
    assert_true(dkv_hlc_bound_wait_ms(T0_MS - 5000, T0_MS, 1000, 250) == 0); /* long stopped */
    assert_true(dkv_hlc_bound_wait_ms(T0_MS + 250, T0_MS, 1000, 250) == 0);  /* within tolerance */
    assert_true(dkv_hlc_bound_wait_ms(T0_MS + 900, T0_MS, 1000, 250) == 650);
    assert_true(dkv_hlc_bound_wait_ms(T0_MS + 1500, T0_MS, 1000, 250) == 1250); /* adopted */
    /* Further ahead than a quick restart explains: the clock stepped back; do not wait an hour. */
    assert_true(dkv_hlc_bound_wait_ms(T0_MS + 1501, T0_MS, 1000, 250) == 0);
    assert_true(dkv_hlc_bound_wait_ms(T0_MS + 3600000, T0_MS, 1000, 250) == 0);
    assert_true(dkv_hlc_bound_wait_ms(T0_MS + 999, T0_MS, 1000, 0) == 999);
}

/* Many threads stamping while one moves the wall clock and another ticks: no timestamp is ever
 * at or past the bound durable when it was handed out, and bounds on disk only grow. */
typedef struct bworker {
    dkv_hlc_t *hlc;
    fake_clock_t *clk;
    fake_disk_t *disk;
    int id;
    int bad;
} bworker_t;

static void *bworker_main(void *arg)
{
    bworker_t *w = arg;
    for (int i = 0; i < 20000; i++) {
        if (w->id == 0 && i % 50 == 0) {
            atomic_fetch_add(&w->clk->ms, 37);
        }
        if (w->id == 1 && i % 20 == 0) {
            dkv_hlc_bound_tick(w->hlc);
        }
        uint64_t ts = 0;
        if (dkv_hlc_next(w->hlc, &ts) != 0 ||
            dkv_hlc_ms(ts) >= atomic_load(&w->disk->persisted)) {
            w->bad++;
        }
    }
    return NULL;
}

static void test_threads_never_pass_the_persisted_bound(void **state)
{
    (void)state;
    fake_clock_t clk;
    fake_disk_t disk;
    disk_init(&disk);
    dkv_hlc_t hlc;
    fake_init(&clk, &hlc, T0_MS);
    assert_int_equal(dkv_hlc_bound_start(&hlc, T0_MS, WINDOW_MS, fake_persist, &disk), 0);
    pthread_t tids[THREADS];
    bworker_t w[THREADS];
    for (int t = 0; t < THREADS; t++) {
        w[t] = (bworker_t){&hlc, &clk, &disk, t, 0};
        assert_int_equal(pthread_create(&tids[t], NULL, bworker_main, &w[t]), 0);
    }
    for (int t = 0; t < THREADS; t++) {
        assert_int_equal(pthread_join(tids[t], NULL), 0);
        assert_int_equal(w[t].bad, 0);
    }
    assert_int_equal(atomic_load(&disk.regressions), 0);
    dkv_hlc_cleanup(&hlc);
}

/* DATA/hlc: written atomically, read back exactly; a missing file is a fresh directory, a
 * damaged one an error (never a guess). */
static void test_bound_file_round_trip(void **state)
{
    (void)state;
    char dir[] = "/tmp/dkv_test_hlc_XXXXXX";
    assert_non_null(mkdtemp(dir));
    dkv_hlc_file_t f;
    assert_int_equal(dkv_hlc_file_init(&f, dir), 0);
    uint64_t v = 99;
    assert_int_equal(dkv_hlc_file_load(&f, &v), 0);
    assert_true(v == 0);
    assert_int_equal(dkv_hlc_file_save(&f, T0_MS + 1234), 0);
    assert_int_equal(dkv_hlc_file_load(&f, &v), 0);
    assert_true(v == T0_MS + 1234);
    assert_int_equal(access(f.tmp, F_OK), -1); /* no temporary file left */
    assert_int_equal(dkv_hlc_file_save(&f, T0_MS + 5678), 0);
    assert_int_equal(dkv_hlc_file_load(&f, &v), 0);
    assert_true(v == T0_MS + 5678);
    static const char *const bad[] = {"",       "hlc.v1 \n", "hlc.v1 12",   "hlc.v2 12\n",
                                      "12\n",    "hlc.v1 1x\n", "hlc.v1 -1\n",
                                      "hlc.v1 1234567890123456\n", "hlc.v1 281474976710656\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        FILE *fp = fopen(f.path, "w");
        assert_non_null(fp);
        fputs(bad[i], fp);
        fclose(fp);
        v = 7;
        assert_int_equal(dkv_hlc_file_load(&f, &v), DKV_EPROTO);
        assert_true(v == 7);
    }
    /* A directory that cannot be written fails the save, and the bound does not move. */
    dkv_hlc_file_t missing;
    assert_int_equal(dkv_hlc_file_init(&missing, "/nonexistent/dkv-test"), 0);
    assert_int_not_equal(dkv_hlc_file_save(&missing, T0_MS), 0);
    unlink(f.path);
    rmdir(dir);
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
        cmocka_unit_test(test_restart_after_a_step_back_stamps_above_the_previous_run),
        cmocka_unit_test(test_fresh_clock_persists_a_bound_at_start),
        cmocka_unit_test(test_start_fails_when_the_bound_cannot_be_written),
        cmocka_unit_test(test_timestamps_never_reach_an_unpersisted_bound),
        cmocka_unit_test(test_persist_failure_stops_the_clock_at_the_bound),
        cmocka_unit_test(test_tick_extends_ahead_of_a_busy_clock_only),
        cmocka_unit_test(test_start_wait_covers_a_quick_restart_only),
        cmocka_unit_test(test_threads_never_pass_the_persisted_bound),
        cmocka_unit_test(test_bound_file_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
