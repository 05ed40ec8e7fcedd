/*
 * Clock-skew monitor: per peer, the latest estimate of how far its wall clock is from ours, and
 * the verdict "this node's clock is off the majority of the cluster", under which the node stops
 * coordinating writes (its timestamps would order them wrongly against everyone else's).
 *
 * Estimates come from PING/PONG round trips on the RPC connections (rpc/rpc.h): Cristian's
 * algorithm (F. Cristian, "Probabilistic clock synchronization", 1989), as CockroachDB's
 * RemoteClockMonitor does it (pkg/rpc/clock_offset.go): the peer's clock read when it answered
 * lies somewhere in the round trip, so
 *     offset      = peer_ms + rtt/2 - local_ms_at_receive
 *     uncertainty = rtt/2 (+ 1 ms for the millisecond resolution of both clocks).
 * A peer is *surely off* when |offset| - uncertainty > max offset; an in-between reading counts
 * as agreeing (only a sure disagreement is evidence). The node refuses to coordinate writes when
 * the peers it is surely off from are more than half of the nodes it has fresh estimates for,
 * itself included (itself always agrees with itself). So a cluster of one, a node that reaches no
 * peer, or two nodes that disagree (which one is wrong?) never refuse: there is no majority to be
 * off from. CockroachDB's rule (healthy peers <= known/2) does not count the node itself.
 *
 * Threads: one thread feeds samples and evaluates (the first I/O loop's RPC client); any thread
 * reads the verdict and the estimates (atomics; an estimate read while it is replaced may mix two
 * consecutive samples of one peer, which only the status page sees).
 */
#ifndef DKV_CLUSTER_SKEW_H
#define DKV_CLUSTER_SKEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

typedef struct dkv_skew dkv_skew_t;

/**
 * Creates the monitor of node `self_idx` in a cluster of `n_nodes`.
 * @param max_offset_ms  --max-clock-offset-ms; 0 = never refuse (estimates are still kept).
 * @param ttl_ms         An estimate older than this is not evidence any more (the peer may be
 *                       gone, or its clock changed): a few ping intervals.
 * @return 0 and `*out` (free with dkv_skew_free); DKV_EINVAL (n_nodes 0, self_idx out of range).
 * Thread: any.
 */
int dkv_skew_new(size_t n_nodes, uint32_t self_idx, uint64_t max_offset_ms, uint64_t ttl_ms,
                 dkv_skew_t **out);

/** Frees the monitor (NULL is fine). Thread: any, once no thread uses it. */
void dkv_skew_free(dkv_skew_t *s);

/**
 * Records one round trip to `peer` (its latest estimate replaces the previous one).
 * @param rtt_us         Send to receive, on a monotonic clock, in microseconds.
 * @param local_wall_ms  This node's wall clock when the reply arrived.
 * @param peer_wall_ms   The peer's wall clock in its reply.
 * @param now_mono_ms    A monotonic clock in ms (the same one later passed to evaluate).
 * A peer index out of range or equal to self is ignored. Thread: the monitor's feeding thread.
 */
void dkv_skew_sample(dkv_skew_t *s, uint32_t peer, uint64_t rtt_us, uint64_t local_wall_ms,
                     uint64_t peer_wall_ms, uint64_t now_mono_ms);

/**
 * Recomputes the verdict from the fresh estimates and publishes it for dkv_skew_refusing().
 * Logs when the node starts refusing writes (then every 10 s while it does) and when it stops.
 * @return the new verdict: true = refusing writes. Thread: the monitor's feeding thread.
 */
bool dkv_skew_evaluate(dkv_skew_t *s, uint64_t now_mono_ms);

/**
 * The published verdict. When refusing, `*off_ms` (if not NULL) is how far this node's clock is
 * off the majority: the smallest |offset| among the peers it is surely off from, positive when
 * this node is ahead of them, negative when behind.
 * Thread: any (one atomic load; cheap enough for every write).
 */
bool dkv_skew_refusing(const dkv_skew_t *s, int64_t *off_ms);

/**
 * Writes the message of a refused write ("this node's clock is N ms off the majority ...") to
 * `out` (NUL-terminated, cut to `len`), and counts the refusal. Thread: any.
 */
void dkv_skew_refusal_text(dkv_skew_t *s, int64_t off_ms, char *out, size_t len);

/**
 * Appends `,"clock_offset_ms":O,"clock_uncertainty_ms":U,"rtt_ms":R,"clock_sample_age_ms":A`
 * for `peer` to `out` (O: the peer's clock minus ours; each null while never measured).
 * Thread: any.
 */
void dkv_skew_peer_json(const dkv_skew_t *s, uint32_t peer, uint64_t now_mono_ms, dkv_buf_t *out);

/**
 * Appends the verdict as JSON members (no braces): "writes_refused":bool,"reason":str|null,
 * "peers_measured":n,"peers_off":n,"refused_writes":n. Thread: any.
 */
void dkv_skew_status_json(const dkv_skew_t *s, dkv_buf_t *out);

#endif
