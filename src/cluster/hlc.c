/* Hybrid logical clock; see hlc.h for the algorithm's source. */
#include "cluster/hlc.h"

#include <stddef.h>
#include <time.h>

uint64_t dkv_hlc_system_clock_ms(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void dkv_hlc_init(dkv_hlc_t *hlc, dkv_hlc_clock_ms_cb clock_ms, void *clock_ctx)
{
    atomic_init(&hlc->last, 0);
    hlc->clock_ms = clock_ms != NULL ? clock_ms : dkv_hlc_system_clock_ms;
    hlc->clock_ctx = clock_ctx;
    hlc->max_offset_ms = 0;
}

void dkv_hlc_set_max_offset(dkv_hlc_t *hlc, uint64_t max_offset_ms)
{
    hlc->max_offset_ms = max_offset_ms;
}

uint64_t dkv_hlc_now(dkv_hlc_t *hlc)
{
    uint64_t wall = hlc->clock_ms(hlc->clock_ctx) << DKV_HLC_LOGICAL_BITS;
    uint64_t last = atomic_load(&hlc->last);
    for (;;) {
        uint64_t next = wall > last ? wall : last + 1;
        if (atomic_compare_exchange_weak(&hlc->last, &last, next)) {
            return next;
        }
    }
}

bool dkv_hlc_observe(dkv_hlc_t *hlc, uint64_t seen_ts)
{
    /* The bound is checked against the wall clock, not against `last`: a clock that was already
     * dragged ahead (before the bound existed) must not vouch for more of the same. */
    if (hlc->max_offset_ms != 0 &&
        dkv_hlc_ms(seen_ts) > hlc->clock_ms(hlc->clock_ctx) + hlc->max_offset_ms) {
        return false;
    }
    uint64_t last = atomic_load(&hlc->last);
    while (seen_ts > last) {
        if (atomic_compare_exchange_weak(&hlc->last, &last, seen_ts)) {
            break;
        }
    }
    return true;
}
