/*
 * Anti-entropy: background exchange of hash trees between replicas (Dynamo paper §4.7, Riak's
 * active anti-entropy, Cassandra's `nodetool repair`), and tombstone GC gated by it (Scylla's
 * `tombstone_gc = repair`). Design notes: /work/shared/research/anti-entropy.md, docs/
 * architecture.md "Convergence".
 *
 * Exchange of this node X with a peer P (X initiates; every node initiates with every peer):
 *   1. X refreshes its trees (repair/merkle.h) and asks P for the 256 branch hashes of the tree P
 *      shares with X (TREE BRANCHES; P answers from a tree whose refresh started after X first
 *      asked, else NOT_READY while it refreshes, and X asks again);
 *   2. for each differing branch, the 256 leaf hashes (TREE LEAVES);
 *   3. for each differing segment, P's digest entries (TREE SEGMENT, paged), compared with X's
 *      own entries of the segment shared with P;
 *   4. for each key whose versions differ or that one side lacks: X reads P's record (GET) and its
 *      own, and writes the newer to the side that is behind (a local replica write, or a PUT to
 *      P): both directions, through the normal last-write-wins replica write, never outside the
 *      record's replica set. Network bytes are the tree levels of differing branches plus the
 *      differing records.
 * An exchange completes when every step and every write succeeded (X's writes synced to its
 * write-ahead log); its start time is then P's "last complete exchange".
 *
 * Tombstone GC: after each round, the horizon is min over peers of the last complete exchange's
 * start, minus the grace period and the clock-offset bound. Tombstones (with a known replica set)
 * stamped before it are purged (store/store.h: a key-locked read-check-Delete), since every peer
 * held them, or something newer, at the start of an exchange after their timestamp. No complete
 * exchange with some peer (down, not ready) means no GC. Hints for records older than the grace
 * period are dropped on replay (repair/hints.h), like Cassandra's hint TTL = gc_grace, so a
 * purged tombstone's older write cannot come back through a late hint.
 *
 * Threads: one anti-entropy thread with its own libuv loop and RPC client (exchanges, tree
 * refresh, GC sweep); dkv_ae_serve_tree() runs on the I/O threads (RPC server); status and
 * admin calls from any thread.
 */
#ifndef DKV_REPAIR_ANTIENTROPY_H
#define DKV_REPAIR_ANTIENTROPY_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster/identity.h"
#include "cluster/ring.h"
#include "common/buf.h"
#include "repair/merkle.h"
#include "replica/replica.h"
#include "rpc/rpc.h"

typedef struct dkv_ae dkv_ae_t;

typedef struct dkv_ae_opts {
    uint64_t interval_ms;        /* between rounds; 0 = only on demand (POST /v0/admin/repair) */
    uint64_t max_bytes_per_s;    /* all exchange traffic of this node; >= 1 */
    uint64_t tombstone_grace_ms; /* GC waits this long past a complete repair */
    uint64_t max_clock_offset_ms; /* added to the grace (HLC skew bound) */
    uint64_t exchange_timeout_ms; /* one exchange with one peer; >= 1 */
    dkv_rpc_client_opts_t rpc;   /* the thread's own connections */
    unsigned rpc_loop_idx;       /* its slot in dkv_rpc_shared_t */
} dkv_ae_opts_t;

/**
 * Creates the anti-entropy service (no thread yet), with trees over `replica`'s store. Installs
 * the store's write observer (every write marks its segment dirty).
 * @param replica, identity, ring, hlc, shared  Borrowed for its life.
 * @param opts  Copied. @return 0 with `*out`. Thread: main, before any thread writes.
 */
int dkv_ae_new(dkv_replica_t *replica, dkv_identity_t *identity, const dkv_ring_t *ring,
               uint32_t self_idx, dkv_hlc_t *hlc, dkv_rpc_shared_t *shared,
               const dkv_ae_opts_t *opts, dkv_ae_t **out);

/** Starts the thread (first tree build, then rounds). @return 0; DKV_EIO. Thread: main. */
int dkv_ae_start(dkv_ae_t *ae);

/** Stops the thread (an exchange in flight is abandoned: nothing half-applied, every write is a
 * whole record) and frees. NULL is a no-op. Thread: main, after the I/O threads stopped. */
void dkv_ae_free(dkv_ae_t *ae);

/**
 * Answers one TREE request from peer `peer` (ring index) into `out` (a TREE_REPLY frame):
 * NOT_READY while this node is not ready or its tree is stale (and asks the thread to refresh
 * it), the hashes, or up to 64 KiB of a segment's digest entries.
 * Matches the RPC server's tree handler. Thread: an I/O thread; bounded work (one segment).
 */
void dkv_ae_serve_tree(void *ae, uint32_t peer, const dkv_rpc_msg_t *m, dkv_buf_t *out);

/**
 * Asks for a round with every peer now. @return the round number to wait for with
 * dkv_ae_round_result(). Thread: any.
 */
uint64_t dkv_ae_request_round(dkv_ae_t *ae);

/**
 * Whether round `round` finished. @param all_ok On true: every peer's exchange completed.
 * Thread: any.
 */
bool dkv_ae_round_result(dkv_ae_t *ae, uint64_t round, bool *all_ok);

/**
 * Appends the service's state as one JSON object: interval, rounds, the tree (built, dirty
 * segments, records, tombstones), GC (grace, horizon, purged, tombstones on disk) and per peer
 * the last complete exchange, attempts, failures, segments and keys compared, records sent and
 * received, bytes. Thread: any.
 */
void dkv_ae_status_json(dkv_ae_t *ae, dkv_buf_t *out);

/** One peer's exchange counters since start-up. */
typedef struct dkv_ae_peer_stats {
    uint64_t exchanges_ok;
    uint64_t exchanges_failed;
    uint64_t segments_compared;
    uint64_t keys_repaired;    /* keys found different and reconciled */
    uint64_t records_sent;     /* records written to the peer */
    uint64_t records_received; /* records written here from the peer */
    uint64_t bytes_sent;
    uint64_t bytes_received;
    uint64_t last_ok_start_ms; /* wall clock; 0 = never */
} dkv_ae_peer_stats_t;

/** The anti-entropy figures for the metrics page. */
typedef struct dkv_ae_stats {
    uint64_t rounds_started;
    uint64_t rounds_done;
    uint32_t dirty_segments;        /* segments written since their leaf was last refreshed */
    uint64_t tree_records;          /* records in the trees (all peers' trees together) */
    uint64_t tree_tombstones;
    uint64_t tombstones_purged;     /* by the GC, since start-up */
    uint64_t late_tombstones_dropped;
    uint64_t gc_horizon_ms;         /* wall clock; 0 = no GC yet */
    dkv_ae_peer_stats_t peers[DKV_RING_MAX_NODES]; /* by ring index; self's slot is zero */
} dkv_ae_stats_t;

/** Fills `out` (caller's storage, ~5 KiB). Thread: any (takes the status mutex briefly). */
void dkv_ae_stats(dkv_ae_t *ae, dkv_ae_stats_t *out);

/**
 * Asks the thread to compact the store fully (POST /v0/admin/compact), so purged tombstones
 * leave the disk now. @return the ticket for dkv_ae_compact_done(). Thread: any.
 */
uint64_t dkv_ae_request_compact(dkv_ae_t *ae);

/** Whether the compaction of `ticket` finished. Thread: any. */
bool dkv_ae_compact_done(dkv_ae_t *ae, uint64_t ticket);

#endif
