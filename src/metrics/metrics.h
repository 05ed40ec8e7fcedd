/*
 * Metrics: per-loop counters and latency histograms, summed over the loops when scraped, and a
 * small writer of the Prometheus text exposition format 0.0.4. No client library, no locks on
 * the hot path.
 *
 * DESIGN: each I/O loop owns one dkv_metrics_loop_t (its own cache lines). Only that loop's
 * thread writes it, so an increment is a relaxed load and a relaxed store (a plain `add` on
 * x86-64 and arm64, no lock prefix, no contention); a scrape, on any thread, reads every loop's
 * fields with relaxed loads and adds them up. A scrape may see one loop's counters a few
 * increments apart from each other (never torn, never going back), which Prometheus tolerates.
 * Histograms keep per-bucket (not cumulative) counts; the scrape accumulates them and derives
 * `_count` from the buckets, so `+Inf` always equals `_count`.
 * Depends only on common/: the modules that count (http/, rpc/) include it; the page that
 * gathers everything (router/) lives above them.
 */
#ifndef DKV_METRICS_METRICS_H
#define DKV_METRICS_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

/* Histogram bounds (seconds): 100 µs .. 10 s, then +Inf. */
#define DKV_METRICS_BUCKETS 16u
/* Peers a loop counts per-peer figures for: as many as a ring may have (cluster/ring.h
 * DKV_RING_MAX_NODES; rpc/client.c asserts they agree). */
#define DKV_METRICS_MAX_PEERS 64u

/** Upper bounds of the finite buckets in nanoseconds, ascending. */
extern const uint64_t dkv_metrics_bucket_ns[DKV_METRICS_BUCKETS];

/* Label values of dkv_http_requests_total{method}. HEAD is told apart from GET. */
enum dkv_metrics_method {
    DKV_METRICS_GET,
    DKV_METRICS_HEAD,
    DKV_METRICS_PUT,
    DKV_METRICS_DELETE,
    DKV_METRICS_POST,
    DKV_METRICS_OTHER_METHOD,
    DKV_METRICS_N_METHODS
};

/* The statuses dkv sends, each its own counter; anything else counts as "other". */
#define DKV_METRICS_STATUSES(X)                                                                    \
    X(200) X(201) X(202) X(400) X(404) X(405) X(408) X(413) X(431) X(500) X(501) X(502) X(503)     \
        X(504) X(505) X(507)
#define DKV_METRICS_N_STATUSES 17u /* the 16 above + other */

/* Operations with a latency histogram (dkv_http_request_duration_seconds{op}). */
enum dkv_metrics_op {
    DKV_METRICS_OP_NONE = 0, /* not an entity operation: no histogram */
    DKV_METRICS_OP_GET,
    DKV_METRICS_OP_PUT,
    DKV_METRICS_OP_DELETE,
    DKV_METRICS_OP_RANGE,
    DKV_METRICS_N_OPS
};

/* Outcomes of a replica request (dkv_replica_requests_total{outcome}). */
enum dkv_metrics_rpc_outcome {
    DKV_METRICS_RPC_OK,          /* answered: stored, found, or absent */
    DKV_METRICS_RPC_NOT_READY,   /* answered "not ready" (the replica is rebuilding) */
    DKV_METRICS_RPC_TIMEOUT,     /* no answer within the replica timeout */
    DKV_METRICS_RPC_UNAVAILABLE, /* connection refused, reset or closed before the answer */
    DKV_METRICS_RPC_ERROR,       /* the replica's store failed, or a malformed answer */
    DKV_METRICS_RPC_REJECTED,    /* failed at once, never sent: breaker open, queue full */
    DKV_METRICS_N_RPC_OUTCOMES
};

/* Circuit breaker states, as the gauge dkv_peer_breaker_state shows them. */
enum dkv_metrics_breaker { DKV_METRICS_CLOSED, DKV_METRICS_OPEN, DKV_METRICS_HALF_OPEN };

/** A latency histogram, written by one thread. */
typedef struct dkv_metrics_hist {
    _Atomic uint64_t buckets[DKV_METRICS_BUCKETS + 1]; /* per bucket; the last is +Inf */
    _Atomic uint64_t sum_ns;
} dkv_metrics_hist_t;

/** The counters of one I/O loop; zero-initialised; written only by that loop's thread. */
typedef struct dkv_metrics_loop {
    _Atomic uint64_t http_requests[DKV_METRICS_N_METHODS][DKV_METRICS_N_STATUSES];
    _Atomic uint64_t http_inflight;     /* gauge: dispatched and not answered */
    _Atomic uint64_t http_overloaded;   /* 503s for --max-inflight */
    _Atomic uint64_t wal_flush_failures; /* write acknowledgements turned into 507 */
    dkv_metrics_hist_t op_latency[DKV_METRICS_N_OPS];
    _Atomic uint64_t rpc_requests[DKV_METRICS_MAX_PEERS][DKV_METRICS_N_RPC_OUTCOMES];
    dkv_metrics_hist_t rpc_latency[DKV_METRICS_MAX_PEERS];
    /* Transitions into each state (enum dkv_metrics_breaker). */
    _Atomic uint64_t breaker_transitions[DKV_METRICS_MAX_PEERS][3];
} dkv_metrics_loop_t;

/** The counters of a node: one dkv_metrics_loop_t per I/O loop. */
typedef struct dkv_metrics dkv_metrics_t;

/**
 * Allocates zeroed counters for `n_loops` loops (each on its own cache lines).
 * @return the metrics; release with dkv_metrics_free(). Aborts on allocation failure.
 * Thread: any, before the loops use it.
 */
dkv_metrics_t *dkv_metrics_new(unsigned n_loops);

/** Frees the metrics. NULL is a no-op. Thread: any, once no loop uses them. */
void dkv_metrics_free(dkv_metrics_t *m);

/** Loops counted. Thread: any. */
unsigned dkv_metrics_loops(const dkv_metrics_t *m);

/** Loop `idx`'s counters (0..loops-1), valid as long as `m`. Thread: any. */
dkv_metrics_loop_t *dkv_metrics_loop(dkv_metrics_t *m, unsigned idx);

/* ---- counting (the owning loop's thread only) ---- */

/** Adds `n` to a counter of the calling thread's own loop. */
static inline void dkv_metrics_add(_Atomic uint64_t *c, uint64_t n)
{
    /* One writer: load + store, not an atomic read-modify-write. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void dkv_metrics_inc(_Atomic uint64_t *c)
{
    dkv_metrics_add(c, 1);
}

/** Sets a gauge of the calling thread's own loop. */
static inline void dkv_metrics_set(_Atomic uint64_t *g, uint64_t v)
{
    atomic_store_explicit(g, v, memory_order_relaxed);
}

/** Records one observation of `ns` nanoseconds in `h`. */
static inline void dkv_metrics_observe(dkv_metrics_hist_t *h, uint64_t ns)
{
    unsigned i = 0;
    while (i < DKV_METRICS_BUCKETS && ns > dkv_metrics_bucket_ns[i]) {
        i++;
    }
    dkv_metrics_inc(&h->buckets[i]);
    dkv_metrics_add(&h->sum_ns, ns);
}

/** Index of an HTTP status in dkv_metrics_loop_t.http_requests (the last one: "other"). Pure. */
unsigned dkv_metrics_status_index(int status);

/** The label value of a status index ("200", ..., "other"). Pure. */
const char *dkv_metrics_status_name(unsigned idx);

/** The label value of a method ("GET", ...). Pure. */
const char *dkv_metrics_method_name(unsigned method);

/* ---- scraping (any thread) ---- */

/** A histogram summed over loops: per-bucket counts, the last one +Inf. */
typedef struct dkv_metrics_hist_sum {
    uint64_t buckets[DKV_METRICS_BUCKETS + 1];
    uint64_t sum_ns;
} dkv_metrics_hist_sum_t;

/** Adds `h` (read with relaxed loads) into `acc`. Thread: any. */
void dkv_metrics_hist_accumulate(dkv_metrics_hist_sum_t *acc, const dkv_metrics_hist_t *h);

/** A counter read from another thread. */
static inline uint64_t dkv_metrics_read(const _Atomic uint64_t *c)
{
    return atomic_load_explicit((_Atomic uint64_t *)c, memory_order_relaxed);
}

/* ---- Prometheus text format 0.0.4 writer (pure; appends to a dkv_buf_t) ---- */

#define DKV_PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/** One label: both strings borrowed for the call; `value` is escaped on output. */
typedef struct dkv_prom_label {
    const char *name; /* [a-zA-Z_][a-zA-Z0-9_]*, not checked */
    const char *value;
} dkv_prom_label_t;

/**
 * Appends the `# HELP` and `# TYPE` lines of a metric family. `help` is escaped (backslash and
 * line feed); `type` is "counter", "gauge" or "histogram". Call once per family, before its
 * samples. Thread: any.
 */
void dkv_prom_family(dkv_buf_t *out, const char *name, const char *type, const char *help);

/** Appends `name{labels} value` with an unsigned integer value. `n_labels` may be 0. */
void dkv_prom_sample(dkv_buf_t *out, const char *name, const dkv_prom_label_t *labels,
                     size_t n_labels, uint64_t value);

/** Appends `name{labels} value` with a floating-point value (shortest round-trip form). */
void dkv_prom_sample_double(dkv_buf_t *out, const char *name, const dkv_prom_label_t *labels,
                            size_t n_labels, double value);

/**
 * Appends the samples of one histogram: `name_bucket{labels,le="..."}` cumulative counts for each
 * bound of dkv_metrics_bucket_ns (in seconds) and "+Inf", then `name_sum` (seconds) and
 * `name_count` (= the +Inf bucket). `labels` may hold at most 7 labels. Thread: any.
 */
void dkv_prom_histogram(dkv_buf_t *out, const char *name, const dkv_prom_label_t *labels,
                        size_t n_labels, const dkv_metrics_hist_sum_t *h);

/** Appends `value` escaped for a label value: `\` -> `\\`, `"` -> `\"`, line feed -> `\n`. */
void dkv_prom_escape_label(dkv_buf_t *out, const char *value);

#endif
