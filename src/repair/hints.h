/*
 * Durable hinted handoff (Dynamo paper §4.6; Cassandra's hints, Scylla's hints and sync points).
 * When a replica write fails (refused, timed out, breaker open, replica error), the coordinator
 * stores a hint: the record and its target node, in the `hints` column family of the node's
 * RocksDB, apart from replica data and through the same write-ahead log. A replay thread sends
 * each target its hints, oldest first, throttled, through the normal replica write (the LWW merge
 * makes a replay idempotent), and deletes them once the target acknowledged them. Hints survive
 * restarts of the node that holds them.
 *
 * Hints never count toward `ack`, never show in /v0/entities and never answer a read: they live
 * in their own column family. A hint only ever targets one of the first `from` nodes of its key's
 * preference list (the coordinator writes one only for a replica it wrote to).
 *
 * Bounds: a target whose oldest pending hint is older than `window_ms` gets no new hints (it has
 * been down too long; anti-entropy must cover it), nor does any target once the hints take
 * `max_bytes`; dropped hints are logged (at most once per 10 s) and counted.
 *
 * DESIGN: hints are keyed `u16 url length | target URL | u64 BE sequence`, the sequence being the
 * node's hybrid-logical-clock "now" when the hint is written (unique and increasing), so one
 * target's hints are one contiguous, ordered key range. A target is named by URL, not by a node
 * identity: a node rebuilt on an empty disk under the same URL needs exactly those writes. The
 * replay thread delivers each target's hints in key order and stops at the first failure, so
 * "every hint up to sequence s was delivered" is one number per target, which is what a sync
 * point waits for.
 */
#ifndef DKV_REPAIR_HINTS_H
#define DKV_REPAIR_HINTS_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster/hlc.h"
#include "cluster/ring.h"
#include "common/buf.h"
#include "common/record.h"
#include "common/slice.h"
#include "rpc/rpc.h"
#include "store/store.h"

typedef struct dkv_hints dkv_hints_t;

typedef struct dkv_hints_opts {
    uint64_t window_ms;          /* no new hints for a target whose oldest hint is older */
    uint64_t max_bytes;          /* no new hints once all hints take this many bytes */
    uint64_t replay_bytes_per_s; /* replay throttle, summed over all targets; >= 1 */
    uint64_t replay_interval_ms; /* how often the replay thread looks for work; >= 1 */
    uint64_t max_record_age_ms;  /* a hint whose record's timestamp is older is dropped, not
                                    replayed (the tombstone GC grace); 0 = never */
    dkv_rpc_client_opts_t rpc;   /* the replay thread's own connections to peers */
    unsigned rpc_loop_idx;       /* its slot in dkv_rpc_shared_t (not shown in status) */
} dkv_hints_opts_t;

/** Pending hints for one target, as the status shows them, and its counters since start-up. */
typedef struct dkv_hints_target_stats {
    uint64_t count;
    uint64_t bytes;
    uint64_t oldest_created_ms; /* wall clock; 0 when count == 0 */
    uint64_t written;           /* hints stored for it */
    uint64_t replayed;          /* delivered and deleted */
    uint64_t replay_failures;   /* replay batches that stopped at a failure */
    uint64_t dropped_window;    /* not stored: its oldest hint was past the window */
    uint64_t dropped_quota;     /* not stored: the hints took max_bytes */
    uint64_t dropped_expired;   /* not replayed: the record was older than max_record_age_ms */
} dkv_hints_target_stats_t;

/** What a sync point waits for: per target, the last hint sequence that existed. */
typedef struct dkv_hints_sync_point {
    uint64_t seq[DKV_RING_MAX_NODES]; /* 0: nothing to wait for */
} dkv_hints_sync_point_t;

/**
 * Loads the hints kept in `store` (one scan of the hints column family, which also drops hints
 * for URLs no longer in `ring`), without starting the replay thread.
 *
 * @param store, ring, hlc, shared  Borrowed for the life of the hints. The clock is advanced past
 *                                  every stored sequence, so new hints sort after old ones.
 * @param opts  Copied.
 * @param out   Written on success; release with dkv_hints_free().
 * @return 0; DKV_EIO (the scan failed). Thread: main, before the I/O threads start.
 */
int dkv_hints_open(dkv_store_t *store, const dkv_ring_t *ring, uint32_t self_idx, dkv_hlc_t *hlc,
                   dkv_rpc_shared_t *shared, const dkv_hints_opts_t *opts, dkv_hints_t **out);

/**
 * Starts the replay thread (its own libuv loop and RPC client).
 * @return 0; DKV_EIO (the thread could not start). Thread: main.
 */
int dkv_hints_start(dkv_hints_t *h);

/**
 * Stops the replay thread and waits for it: requests in flight are failed (their hints stay).
 * A no-op if it was not started. Thread: main, after the I/O threads stopped.
 */
void dkv_hints_stop(dkv_hints_t *h);

/** Frees the hints (stopping the replay thread first). NULL is a no-op. Thread: main. */
void dkv_hints_free(dkv_hints_t *h);

/**
 * Stores a hint: `rec` for `key`, to be delivered to node `target`. Durable, like a replica
 * write, once the calling thread runs dkv_store_sync_wal().
 *
 * @param target    Ring index of a peer (not this node).
 * @param key, rec  Borrowed for the call (copied).
 * @return 0; DKV_ETIMEDOUT (the target's hint window is exceeded: dropped, counted);
 *         DKV_ETOOBIG (the hints quota is full: dropped, counted); DKV_EINVAL (bad target or
 *         key); DKV_EIO (the store failed: logged); DKV_EHLCBOUND (the clock that numbers
 *         hints could not persist its bound, cluster/hlc.h: logged).
 * Thread: any (a mutex guards the counters; the store is thread-safe).
 */
int dkv_hints_add(dkv_hints_t *h, uint32_t target, dkv_slice_t key, const dkv_record_t *rec);

/**
 * Appends the hints' state as one JSON object to `out`: {"enabled":true, "pending_count",
 * "pending_bytes", "written", "replayed", "replay_failures", "dropped_window", "dropped_quota",
 * "dropped_expired" (older than max_record_age_ms),
 * "peers":[{"url","count","bytes","oldest_age_ms"}...]} (every peer, pending or not).
 * Thread: any.
 */
void dkv_hints_status_json(dkv_hints_t *h, dkv_buf_t *out);

/** Pending hints for `target` now, and its counters. Thread: any. */
dkv_hints_target_stats_t dkv_hints_target_stats(dkv_hints_t *h, uint32_t target);

/**
 * Takes a sync point: the hints that exist now, for every target; and wakes the replay thread so
 * delivery starts at once rather than at its next tick. Thread: any.
 */
void dkv_hints_sync_point(dkv_hints_t *h, dkv_hints_sync_point_t *sp);

/** Whether every hint of the sync point was delivered. Thread: any. */
bool dkv_hints_sync_reached(dkv_hints_t *h, const dkv_hints_sync_point_t *sp);

#endif
