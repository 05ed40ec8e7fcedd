/*
 * Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks and Consistent Snapshots in
 * Globally Distributed Databases", 2014), in the compact 64-bit form: the high 48 bits are
 * wall-clock milliseconds since the Unix epoch, the low 16 bits a logical counter.
 * Timestamps from one clock are strictly increasing even when the wall clock steps back, and a
 * timestamp seen from a peer (dkv_hlc_observe) pushes the clock past it.
 */
#ifndef DKV_CLUSTER_HLC_H
#define DKV_CLUSTER_HLC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define DKV_HLC_LOGICAL_BITS 16

/** Returns wall-clock milliseconds since the Unix epoch; `ctx` is the clock's own state. */
typedef uint64_t (*dkv_hlc_clock_ms_cb)(void *ctx);

typedef struct dkv_hlc {
    _Atomic uint64_t last; /* the last timestamp handed out or observed */
    dkv_hlc_clock_ms_cb clock_ms;
    void *clock_ctx;
    uint64_t max_offset_ms; /* observe() refuses timestamps further ahead; 0 = no bound */
} dkv_hlc_t;

/** Wall clock in ms (CLOCK_REALTIME); the default clock. Thread: any. */
uint64_t dkv_hlc_system_clock_ms(void *ctx);

/**
 * Initialises `hlc` with a clock (NULL means dkv_hlc_system_clock_ms). `clock_ctx` is borrowed
 * for the life of `hlc`. Thread: any, before the clock is shared.
 */
void dkv_hlc_init(dkv_hlc_t *hlc, dkv_hlc_clock_ms_cb clock_ms, void *clock_ctx);

/**
 * Returns a new timestamp: max(wall_ms << 16, last + 1). Strictly greater than every timestamp
 * this clock returned or observed before.
 * Thread: any (lock-free compare-and-swap).
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
 * timestamps order after it; unless `seen_ts` is more than max_offset_ms ahead of the wall
 * clock, which is never adopted.
 * @return true: within the bound (adopted, or already behind the clock); false: too far ahead.
 * Thread: any.
 */
bool dkv_hlc_observe(dkv_hlc_t *hlc, uint64_t seen_ts);

/** The wall-clock milliseconds part of a timestamp. */
static inline uint64_t dkv_hlc_ms(uint64_t ts)
{
    return ts >> DKV_HLC_LOGICAL_BITS;
}

#endif
