/*
 * Rebuild of a node whose data was lost (cluster/identity.h: state REBUILDING): stream every
 * record from every peer with the SCAN RPC, keep those whose replica set contains this node,
 * store them through the normal replica write (last-write-wins, so records written meanwhile
 * and hints arriving at the same time are never overwritten by older ones), and declare the node
 * ready once every peer's whole range was streamed. Like Cassandra's bootstrap/replace streaming
 * and Riak's handoff, but simpler: dkv has no ownership changes, so a rebuild is one ordered scan
 * per peer, resumable from its last key.
 *
 * Which records belong here: the first `from` nodes of the key's preference list, `from` being
 * the record's own (common/record.h); a version-1 record (from unknown) is taken as from = N, the
 * default. Tombstones are streamed too, so nothing deleted comes back.
 *
 * Only ready peers are streamed from: a peer that is itself joining or rebuilding answers SCAN
 * with an error, so two wiped nodes never declare each other complete; the rebuild then waits
 * for it like for a peer that is down.
 *
 * Bounded: one stream per peer at a time, batches of at most 256 KiB / 1024 records (a batch costs
 * the peer one short iterator pass on an I/O loop), all streams together paced by a token bucket
 * (`max_bytes_per_s`). A failed batch is retried from the same key after `retry_ms`; the node stays
 * rebuilding while a peer cannot be reached (an operator may end it with
 * POST /v0/admin/rebuild-done). Runs on its own thread with its own libuv loop and RPC client.
 */
#ifndef DKV_REPAIR_REBUILD_H
#define DKV_REPAIR_REBUILD_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster/identity.h"
#include "cluster/ring.h"
#include "common/buf.h"
#include "replica/replica.h"
#include "rpc/rpc.h"

typedef struct dkv_rebuild dkv_rebuild_t;

typedef struct dkv_rebuild_opts {
    uint64_t max_bytes_per_s;  /* all streams together; >= 1 */
    uint64_t retry_ms;         /* after a failed batch; >= 1 */
    uint64_t check_ms;         /* how often the thread looks at the node's state; >= 1 */
    dkv_rpc_client_opts_t rpc; /* the rebuild thread's own connections */
    unsigned rpc_loop_idx;     /* its slot in dkv_rpc_shared_t (not shown in status) */
} dkv_rebuild_opts_t;

/**
 * Creates the rebuilder (no thread yet).
 * @param replica, identity, ring, hlc, shared  Borrowed for its life.
 * @param opts  Copied.
 * @return 0 with `*out` (release with dkv_rebuild_free()). Thread: main.
 */
int dkv_rebuild_new(dkv_replica_t *replica, dkv_identity_t *identity, const dkv_ring_t *ring,
                    uint32_t self_idx, dkv_hlc_t *hlc, dkv_rpc_shared_t *shared,
                    const dkv_rebuild_opts_t *opts, dkv_rebuild_t **out);

/**
 * Starts the rebuild thread; it streams whenever the node is REBUILDING.
 * @return 0; DKV_EIO or DKV_EINVAL (thread or RPC client could not start). Thread: main.
 */
int dkv_rebuild_start(dkv_rebuild_t *r);

/** Stops the thread (streams in flight are dropped; they resume at the next start) and frees
 * the rebuilder. NULL is a no-op. Thread: main, after the I/O threads stopped. */
void dkv_rebuild_free(dkv_rebuild_t *r);

/**
 * Appends the rebuild's progress as one JSON object: {"running":bool, "peers_done":n,
 * "peers_total":n, "records_streamed":n, "records_kept":n (streamed records of this node's
 * replica sets), "records_already_held":n (of those, held here at that version or newer already,
 * e.g. another peer's copy: not written again), "bytes":n, "elapsed_ms":n,
 * "bytes_per_s":n, "completed":n (rebuilds finished since start), "peers_counted":n (peers
 * whose record count is known: TREE STATS answered, or their stream finished),
 * "records_total_estimate":n (the sum of those counts), "progress_pct":x|null and
 * "eta_ms":n|null (elapsed × (1 − progress) / progress; null until every peer is counted),
 * "waiting_for":[urls]}. Progress is also logged every 10 s.
 * Thread: any.
 */
void dkv_rebuild_status_json(dkv_rebuild_t *r, dkv_buf_t *out);

/**
 * The rebuild's progress as numbers (for /metrics): `*running` while a rebuild streams, and
 * `*fraction` 0..1, the records received over the peers' record counts (the same estimate as
 * "progress_pct"); 0 until every peer's record count is known, 1 when no rebuild runs and one
 * completed since start, else 0.
 * Thread: any.
 */
void dkv_rebuild_progress(dkv_rebuild_t *r, bool *running, double *fraction);

#endif
