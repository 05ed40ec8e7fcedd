/*
 * Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks and Consistent Snapshots in
 * Globally Distributed Databases", 2014), in the compact 64-bit form: the high 48 bits are
 * wall-clock milliseconds since the Unix epoch, the low 16 bits a logical counter.
 * Timestamps from one clock are strictly increasing even when the wall clock steps back, and a
 * timestamp seen from a peer (dkv_hlc_observe) pushes the clock past it.
 *
 * Persisted upper bound (CockroachDB's persisted wall-time upper bound, pkg/util/hlc; Spanner
 * keeps a similar bound): the clock alone lives in memory, so a restarted node would stamp writes
 * below timestamps it handed out or adopted before the restart (after its wall clock stepped
 * back, or after adopting a peer's timestamp up to --max-clock-offset-ms ahead), and its newer
 * write would lose to its own older one. A bounded clock (dkv_hlc_bound_start) never hands out
 * nor adopts a timestamp at or past a bound that was made durable first (DATA/hlc), and a
 * restarted clock starts at the previous run's bound. The bound follows what the clock actually
 * handed out or adopted, not the wall clock alone, so a node that ran with a wrong wall clock but
 * stamped nothing with it does not carry that clock into its next run.
 */
#ifndef DKV_CLUSTER_HLC_H
#define DKV_CLUSTER_HLC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define DKV_HLC_LOGICAL_BITS 16

/*
 * The persisted bound runs this far ahead of the clock's last timestamp. A restart within this
 * time of the last write waits (at most about this long, dkv_hlc_bound_wait_ms) so that its first
 * timestamps are not too far ahead of its peers' clocks; a node idle for longer pays one
 * synchronous write of DATA/hlc (two fsyncs) on its next write. dkv_hlc_bound_tick, every
 * quarter of it, keeps a busy clock from reaching the bound.
 */
#define DKV_HLC_BOUND_WINDOW_MS 1000u
#define DKV_HLC_BOUND_TICK_MS (DKV_HLC_BOUND_WINDOW_MS / 4)

/** Returns wall-clock milliseconds since the Unix epoch; `ctx` is the clock's own state. */
typedef uint64_t (*dkv_hlc_clock_ms_cb)(void *ctx);

/**
 * Makes `bound_ms` durable (e.g. dkv_hlc_file_save); returns 0 only once it is, else a negative
 * DKV_E* code or -errno. Called with the clock's persist lock held, from whichever thread needs
 * the bound to move (a timer, or an I/O thread when a timestamp would reach the bound).
 */
typedef int (*dkv_hlc_persist_cb)(void *ctx, uint64_t bound_ms);

typedef struct dkv_hlc {
    _Atomic uint64_t last; /* the last timestamp handed out or observed */
    dkv_hlc_clock_ms_cb clock_ms;
    void *clock_ctx;
    uint64_t max_offset_ms; /* observe() refuses timestamps further ahead; 0 = no bound */
    /* Persisted upper bound, in ms: every timestamp handed out or adopted has its ms part below
     * it (dkv_hlc_bound_start; 0 and persist == NULL: an unbounded clock). Only grows. */
    _Atomic uint64_t bound_ms;
    uint64_t window_ms;
    dkv_hlc_persist_cb persist;
    void *persist_ctx;
    pthread_mutex_t persist_mu;        /* serialises persist calls (bounds only grow on disk) */
    _Atomic uint64_t persist_failures; /* failed persist calls, for the status page */
    _Atomic uint64_t persist_sync;     /* persists done inline by a timestamp at the bound */
} dkv_hlc_t;

/** Wall clock in ms (CLOCK_REALTIME); the default clock. Thread: any. */
uint64_t dkv_hlc_system_clock_ms(void *ctx);

/**
 * Initialises `hlc` with a clock (NULL means dkv_hlc_system_clock_ms), unbounded. `clock_ctx` is
 * borrowed for the life of `hlc`. Thread: any, before the clock is shared.
 */
void dkv_hlc_init(dkv_hlc_t *hlc, dkv_hlc_clock_ms_cb clock_ms, void *clock_ctx);

/** Releases what dkv_hlc_bound_start set up (nothing for an unbounded clock). Thread: any, once
 * no other thread uses the clock. */
void dkv_hlc_cleanup(dkv_hlc_t *hlc);

/**
 * Returns a new timestamp: max(wall_ms << 16, last + 1), strictly greater than every timestamp
 * this clock returned or observed before (and, for a bounded clock, than every timestamp of the
 * previous run). When the timestamp would reach the persisted bound, the bound is extended first,
 * synchronously (rare: dkv_hlc_bound_tick keeps it ahead of a busy clock).
 * @param ts  Written on success only.
 * @return 0; or, for a bounded clock whose bound could not be persisted, the persist callback's
 *         error (DKV_EHLCBOUND): the clock has not moved and no timestamp may be used.
 * Thread: any (lock-free compare-and-swap; the persist lock only to extend the bound).
 */
int dkv_hlc_next(dkv_hlc_t *hlc, uint64_t *ts);

/**
 * dkv_hlc_next() for a clock that cannot fail: an unbounded one (unit tests and tools). On a
 * bounded clock whose bound cannot be persisted it aborts with a message: production code stamps
 * with dkv_hlc_next(). Thread: any.
 */
uint64_t dkv_hlc_now(dkv_hlc_t *hlc);

/**
 * Bounds how far ahead of this node's wall clock an observed timestamp may be
 * (CockroachDB's --max-offset: a clock far ahead, or a forged timestamp, must not drag every
 * node's clock with it). Thread: any, before the clock is shared.
 */
void dkv_hlc_set_max_offset(dkv_hlc_t *hlc, uint64_t max_offset_ms);

/**
 * Advances the clock to at least `seen_ts`, a timestamp received from a peer, so later local
 * timestamps order after it; unless `seen_ts` is ahead of the clock and more than max_offset_ms
 * ahead of the wall clock, which is never adopted. A bounded clock extends its bound first when
 * `seen_ts` reaches it, and does not adopt `seen_ts` if that fails (logged).
 * @return true: not ahead of the clock, or within the offset (adopted); false: too far ahead,
 *         or the bound could not be extended to cover it.
 * Thread: any.
 */
bool dkv_hlc_observe(dkv_hlc_t *hlc, uint64_t seen_ts);

/** The wall-clock milliseconds part of a timestamp. */
static inline uint64_t dkv_hlc_ms(uint64_t ts)
{
    return ts >> DKV_HLC_LOGICAL_BITS;
}

/* ---- persisted upper bound ---- */

/**
 * Makes `hlc` a bounded clock. It starts at `prev_bound_ms` (the bound the previous run
 * persisted, dkv_hlc_file_load; 0 = none), so every timestamp it hands out is above every
 * timestamp the previous run handed out or adopted, whatever the wall clock says now. Then it
 * persists prev_bound_ms + window_ms (or, for a fresh clock, its last timestamp's ms + window) at
 * once, so a node that cannot write the bound does not start.
 *
 * Why not also start above the newest timestamp in the store: every record this node stamped or
 * adopted through observe() is below the bound by construction, so the bound already covers
 * them; records that arrive without observe() (rebuild, anti-entropy, hints replayed to us) were
 * never ordered against this clock before the restart either, so the restart changes nothing for
 * them, and a scan of the whole store at every start is not needed.
 *
 * @param window_ms  How far ahead of the last timestamp the bound is kept, >= 4
 *                   (DKV_HLC_BOUND_WINDOW_MS).
 * @param persist    Makes a bound durable; `persist_ctx` is borrowed for the life of `hlc`.
 * @return 0; DKV_EINVAL (window_ms < 4, or already bounded); the persist callback's error:
 *         then the clock is left unbounded (clean it up), except for -ENOSPC (a full disk): then
 *         it stays bounded by prev_bound_ms, every timestamp fails with DKV_EHLCBOUND until a
 *         later bound persists (each dkv_hlc_next() and tick tries), and the node may serve.
 * Thread: any, before the clock is shared.
 */
int dkv_hlc_bound_start(dkv_hlc_t *hlc, uint64_t prev_bound_ms, uint64_t window_ms,
                        dkv_hlc_persist_cb persist, void *persist_ctx);

/**
 * Keeps the persisted bound ahead of a busy clock: when less than 3/4 of the window is left
 * between the clock's last timestamp and the bound, persists last + window. Call it every
 * DKV_HLC_BOUND_TICK_MS off the I/O threads (it may fsync). A no-op on an unbounded clock.
 * @return 0; the persist callback's error (the clock keeps its old bound: it cannot pass it).
 * Thread: any.
 */
int dkv_hlc_bound_tick(dkv_hlc_t *hlc);

/** The persisted bound in ms (0: unbounded). Thread: any. */
uint64_t dkv_hlc_bound_ms(dkv_hlc_t *hlc);

/**
 * How long a starting node should wait before handing out timestamps. A clock that starts at the
 * previous run's bound is up to window + max offset ahead of its wall clock after a quick
 * restart, and peers refuse records more than --max-clock-offset-ms ahead of theirs; waiting
 * until the bound is at most `tolerance_ms` ahead (CockroachDB waits out its persisted bound the
 * same way) keeps the first writes acceptable.
 * @return 0 when prev_bound_ms <= wall_ms + tolerance_ms, or when it is more than window_ms +
 *         2 * tolerance_ms ahead: then the wall clock stepped back (or ran ahead before) and
 *         waiting would take too long; the clock continues from the bound instead. Otherwise
 *         prev_bound_ms - wall_ms - tolerance_ms.
 * Thread: any: pure function.
 */
uint64_t dkv_hlc_bound_wait_ms(uint64_t prev_bound_ms, uint64_t wall_ms, uint64_t window_ms,
                               uint64_t tolerance_ms);

/* The bound's file, DATA/hlc (docs/formats.md): one line "hlc.v1 <bound ms>\n". */
typedef struct dkv_hlc_file {
    char dir[1024];
    char path[1040];
    char tmp[1048];
} dkv_hlc_file_t;

/**
 * Names the bound's file in `data_dir`.
 * @return 0; DKV_EINVAL (path too long). Thread: any.
 */
int dkv_hlc_file_init(dkv_hlc_file_t *f, const char *data_dir);

/**
 * Reads the bound persisted by a previous run.
 * @param bound_ms  On 0: the bound, or 0 when the file does not exist (a new data directory).
 * @return 0; DKV_EPROTO (the file is malformed: the caller must not guess); -errno.
 * Thread: any.
 */
int dkv_hlc_file_load(const dkv_hlc_file_t *f, uint64_t *bound_ms);

/**
 * A dkv_hlc_persist_cb (`ctx` is a dkv_hlc_file_t): writes the bound atomically (temporary file,
 * fsync, rename, fsync of the directory), so a crash leaves the old or the new bound.
 * @return 0; -errno; DKV_EIO.
 * Thread: any (the clock serialises calls).
 */
int dkv_hlc_file_save(void *ctx, uint64_t bound_ms);

#endif
