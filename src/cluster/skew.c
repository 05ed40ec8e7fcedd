/* Clock-skew monitor; see skew.h for the algorithm and its sources. */
#include "cluster/skew.h"

#include "common/err.h"
#include "common/log.h"
#include "common/slice.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/* While refusing, the log line is repeated this often. */
#define REFUSING_LOG_INTERVAL_MS 10000u
/* Both clocks are read in whole milliseconds: each reading may be up to 1 ms low. */
#define RESOLUTION_US 1000u

typedef struct peer_est {
    _Atomic int64_t offset_us; /* peer's clock minus ours */
    _Atomic uint64_t uncertainty_us;
    _Atomic uint64_t rtt_us;
    _Atomic uint64_t at_ms; /* monotonic time of the sample; 0 = never measured */
} peer_est_t;

struct dkv_skew {
    size_t n;
    uint32_t self_idx;
    uint64_t max_offset_us;
    uint64_t ttl_ms;
    peer_est_t *peers;
    /* The published verdict. */
    _Atomic bool refusing;
    _Atomic int64_t off_ms;
    _Atomic unsigned measured;
    _Atomic unsigned off;
    _Atomic uint64_t refused_writes;
    /* The feeding thread's own: when the refusing line was last logged. */
    uint64_t logged_ms;
};

int dkv_skew_new(size_t n_nodes, uint32_t self_idx, uint64_t max_offset_ms, uint64_t ttl_ms,
                 dkv_skew_t **out)
{
    if (n_nodes == 0 || self_idx >= n_nodes) {
        return DKV_EINVAL;
    }
    dkv_skew_t *s = dkv_xcalloc(1, sizeof(*s));
    s->n = n_nodes;
    s->self_idx = self_idx;
    s->max_offset_us = max_offset_ms * 1000u;
    s->ttl_ms = ttl_ms;
    s->peers = dkv_xcalloc(n_nodes, sizeof(peer_est_t));
    *out = s;
    return 0;
}

void dkv_skew_free(dkv_skew_t *s)
{
    if (s == NULL) {
        return;
    }
    free(s->peers);
    free(s);
}

void dkv_skew_sample(dkv_skew_t *s, uint32_t peer, uint64_t rtt_us, uint64_t local_wall_ms,
                     uint64_t peer_wall_ms, uint64_t now_mono_ms)
{
    if (peer >= s->n || peer == s->self_idx) {
        return;
    }
    /* Cristian: the peer read its clock somewhere within the round trip, best guessed at its
     * middle. In microseconds; the wall clocks are in ms, and a peer's wild value (it is the
     * network's word) saturates instead of overflowing. */
    int64_t peer_us =
        peer_wall_ms > INT64_MAX / 2000 ? INT64_MAX / 2 : (int64_t)peer_wall_ms * 1000;
    int64_t local_us =
        local_wall_ms > INT64_MAX / 2000 ? INT64_MAX / 2 : (int64_t)local_wall_ms * 1000;
    uint64_t half_rtt_us = rtt_us > INT64_MAX / 4 ? INT64_MAX / 4 : rtt_us / 2;
    int64_t offset_us = peer_us + (int64_t)half_rtt_us - local_us;
    peer_est_t *e = &s->peers[peer];
    atomic_store(&e->offset_us, offset_us);
    atomic_store(&e->uncertainty_us, half_rtt_us + RESOLUTION_US);
    atomic_store(&e->rtt_us, rtt_us);
    atomic_store(&e->at_ms, now_mono_ms == 0 ? 1 : now_mono_ms);
}

static bool fresh(const dkv_skew_t *s, const peer_est_t *e, uint64_t now_mono_ms)
{
    uint64_t at = atomic_load(&e->at_ms);
    return at != 0 && (now_mono_ms < at || now_mono_ms - at <= s->ttl_ms);
}

static uint64_t abs_us(int64_t v)
{
    return v < 0 ? (uint64_t)(-(v + 1)) + 1 : (uint64_t)v;
}

bool dkv_skew_evaluate(dkv_skew_t *s, uint64_t now_mono_ms)
{
    unsigned measured = 0;
    unsigned off = 0;
    uint64_t nearest_us = UINT64_MAX;
    int64_t nearest_offset_us = 0;
    for (size_t i = 0; i < s->n; i++) {
        const peer_est_t *e = &s->peers[i];
        if (i == s->self_idx || !fresh(s, e, now_mono_ms)) {
            continue;
        }
        measured++;
        int64_t offset_us = atomic_load(&e->offset_us);
        uint64_t unc_us = atomic_load(&e->uncertainty_us);
        uint64_t a = abs_us(offset_us);
        if (s->max_offset_us != 0 && a > unc_us && a - unc_us > s->max_offset_us) {
            off++;
            if (a < nearest_us) {
                nearest_us = a;
                nearest_offset_us = offset_us;
            }
        }
    }
    /* Off from more than half of the nodes with an estimate, this one included. */
    bool refusing = (uint64_t)off * 2 > (uint64_t)measured + 1;
    /* The peer's clock minus ours is negative when ours is ahead: report ours relative to it. */
    int64_t off_ms = refusing ? -nearest_offset_us / 1000 : 0;
    bool was = atomic_load(&s->refusing);
    atomic_store(&s->off_ms, off_ms);
    atomic_store(&s->measured, measured);
    atomic_store(&s->off, off);
    atomic_store(&s->refusing, refusing);
    if (refusing && (!was || now_mono_ms - s->logged_ms >= REFUSING_LOG_INTERVAL_MS)) {
        s->logged_ms = now_mono_ms;
        DKV_LOG_WARN("clock: this node's clock is %" PRId64 " ms %s %u of the %u other node(s) "
                     "measured (more than --max-clock-offset-ms %" PRIu64 " beyond the "
                     "round-trip uncertainty): refusing to coordinate writes until it is back "
                     "within it (%" PRIu64 " refused so far)",
                     off_ms < 0 ? -off_ms : off_ms, off_ms < 0 ? "behind" : "ahead of", off,
                     measured, s->max_offset_us / 1000, atomic_load(&s->refused_writes));
    } else if (!refusing && was) {
        DKV_LOG_INFO("clock: this node's clock is back within --max-clock-offset-ms of the "
                     "majority (%u of %u measured node(s) off): coordinating writes again",
                     off, measured);
    }
    return refusing;
}

bool dkv_skew_refusing(const dkv_skew_t *s, int64_t *off_ms)
{
    bool refusing = atomic_load(&s->refusing);
    if (refusing && off_ms != NULL) {
        *off_ms = atomic_load(&s->off_ms);
    }
    return refusing;
}

static void reason(const dkv_skew_t *s, int64_t off_ms, char *out, size_t len)
{
    snprintf(out, len,
             "this node's clock is %" PRId64 " ms off the majority of the cluster (%s it); "
             "writes refused until it is back within --max-clock-offset-ms (%" PRIu64 ")",
             off_ms < 0 ? -off_ms : off_ms, off_ms < 0 ? "behind" : "ahead of",
             s->max_offset_us / 1000);
}

void dkv_skew_refusal_text(dkv_skew_t *s, int64_t off_ms, char *out, size_t len)
{
    atomic_fetch_add(&s->refused_writes, 1);
    reason(s, off_ms, out, len);
}

static void append_ms(dkv_buf_t *out, const char *name, int64_t us)
{
    dkv_buf_printf(out, ",\"%s\":%s%" PRId64 ".%03" PRId64, name, us < 0 ? "-" : "",
                   (int64_t)(abs_us(us) / 1000), (int64_t)(abs_us(us) % 1000));
}

void dkv_skew_peer_json(const dkv_skew_t *s, uint32_t peer, uint64_t now_mono_ms, dkv_buf_t *out)
{
    const peer_est_t *e = peer < s->n ? &s->peers[peer] : NULL;
    uint64_t at = e != NULL ? atomic_load(&e->at_ms) : 0;
    if (at == 0) {
        dkv_buf_append_str(out, ",\"clock_offset_ms\":null,\"clock_uncertainty_ms\":null,"
                                "\"rtt_ms\":null,\"clock_sample_age_ms\":null");
        return;
    }
    append_ms(out, "clock_offset_ms", atomic_load(&e->offset_us));
    append_ms(out, "clock_uncertainty_ms", (int64_t)atomic_load(&e->uncertainty_us));
    append_ms(out, "rtt_ms", (int64_t)atomic_load(&e->rtt_us));
    dkv_buf_printf(out, ",\"clock_sample_age_ms\":%" PRIu64,
                   now_mono_ms > at ? now_mono_ms - at : 0);
}

void dkv_skew_status_json(const dkv_skew_t *s, dkv_buf_t *out)
{
    int64_t off_ms = 0;
    bool refusing = dkv_skew_refusing(s, &off_ms);
    dkv_buf_printf(out, "\"writes_refused\":%s,\"reason\":", refusing ? "true" : "false");
    if (refusing) {
        char text[256];
        reason(s, off_ms, text, sizeof(text));
        dkv_buf_printf(out, "\"%s\"", text); /* no quotes or backslashes in it */
    } else {
        dkv_buf_append_str(out, "null");
    }
    dkv_buf_printf(out, ",\"peers_measured\":%u,\"peers_off\":%u,\"refused_writes\":%" PRIu64,
                   atomic_load(&s->measured), atomic_load(&s->off),
                   atomic_load(&s->refused_writes));
}
