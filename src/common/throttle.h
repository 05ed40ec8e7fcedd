/*
 * A token bucket (bytes per second, at most one second of burst) for background streams that
 * must not crowd out client traffic: hint replay, rebuild. The caller supplies the clock (a
 * loop's uv_now()) so the bucket stays a pure value.
 */
#ifndef DKV_COMMON_THROTTLE_H
#define DKV_COMMON_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>

typedef struct dkv_throttle {
    double rate;       /* bytes per second, > 0 */
    double tokens;     /* may go negative: a batch may overdraw, the next waits it off */
    uint64_t refill_ms;
} dkv_throttle_t;

/** Starts full (one second of bytes). Thread: the owner's. */
static inline void dkv_throttle_init(dkv_throttle_t *t, uint64_t bytes_per_s, uint64_t now_ms)
{
    t->rate = (double)bytes_per_s;
    t->tokens = t->rate;
    t->refill_ms = now_ms;
}

/** Refills for the time elapsed and tells whether a batch may start now. */
static inline bool dkv_throttle_ready(dkv_throttle_t *t, uint64_t now_ms)
{
    t->tokens += (double)(now_ms - t->refill_ms) * t->rate / 1000.0;
    t->refill_ms = now_ms;
    if (t->tokens > t->rate) {
        t->tokens = t->rate;
    }
    return t->tokens > 0;
}

/** Charges the bytes a batch moved. */
static inline void dkv_throttle_spend(dkv_throttle_t *t, uint64_t bytes)
{
    t->tokens -= (double)bytes;
}

#endif
