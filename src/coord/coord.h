/*
 * Coordinator: runs one client operation (GET, PUT, DELETE) against the key's first `from`
 * replicas of its preference list, in parallel, and reports the outcome once `ack` replicas
 * succeeded or success became impossible (Dynamo paper §4.5, sloppy-quorum-free variant).
 * One coordinator per I/O thread; it uses the local replica for itself and RPC for peers, and
 * starts the convergence mechanisms a client operation can see the need for: read repair and hints.
 */
#ifndef DKV_COORD_COORD_H
#define DKV_COORD_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cluster/hlc.h"
#include "cluster/ring.h"
#include "common/owned.h"
#include "common/record.h"
#include "common/slice.h"
#include "repair/hints.h"
#include "replica/replica.h"
#include "rpc/rpc.h"

typedef struct dkv_coord dkv_coord_t;

/**
 * Sends one replica request to a peer: dkv_rpc_client_call()'s contract (0 and `cb` runs exactly
 * once, later; an error and `cb` never runs). The unit tests give a fake.
 */
typedef int (*dkv_coord_send_fn)(void *ctx, uint32_t peer, const dkv_rpc_call_t *call,
                                 dkv_rpc_reply_cb cb, void *arg);

/** Convergence and speculative-read counters shared by every coordinator of a node (relaxed
 * atomics; each counts a rare event, never every request). */
typedef struct dkv_coord_stats {
    _Atomic uint64_t read_repair_reads;    /* GETs whose replicas disagreed */
    _Atomic uint64_t read_repair_writes;   /* repair writes sent (one per stale replica) */
    _Atomic uint64_t read_repair_failures; /* repair writes that failed */
    _Atomic uint64_t hints_not_stored;     /* failed replica writes left without a hint */
    _Atomic uint64_t spec_retries;   /* speculative GETs: replicas asked beyond the first `ack`
                                        because one was slow or failed */
    _Atomic uint64_t digest_fetches; /* speculative GETs: data read again from a replica whose
                                        digest was newer than the data in hand (or not
                                        comparable with it) */
} dkv_coord_stats_t;

/** Which replicas a GET asks (--read-fanout). */
typedef enum dkv_coord_read_fanout {
    /* All `from` replicas at once, each for its whole version (API.md §5.4; dkv <= 0.3). */
    DKV_COORD_READ_ALL = 0,
    /* `ack` replicas first, one for the data and the others for a digest; the next one in the
     * preference list only when one is slower than its retry delay, fails, or (for data) has
     * a digest newer than the data in hand (API.md §13, speculative reads). */
    DKV_COORD_READ_SPECULATIVE = 1,
} dkv_coord_read_fanout_t;

/** What a coordinator needs; every pointer is borrowed and must outlive the coordinator. */
typedef struct dkv_coord_env {
    uv_loop_t *loop;           /* the I/O thread's loop */
    dkv_replica_t *replica;    /* this node's replica side (its store) */
    const dkv_ring_t *ring;    /* placement */
    uint32_t self_idx;         /* this node's index in the ring */
    dkv_hlc_t *hlc;            /* shared by all threads of the node */
    dkv_coord_send_fn send;    /* replica requests to peers; NULL when N == 1 */
    void *send_ctx;            /* first argument of `send` (the loop's RPC client) */
    bool read_repair;          /* repair stale replicas after a GET (Dynamo §4.7) */
    dkv_hints_t *hints;        /* hinted handoff (Dynamo §4.6); NULL = off */
    dkv_coord_stats_t *stats;  /* NULL = not counted */
    /* Which replicas a GET asks; the default (0) is DKV_COORD_READ_ALL. */
    dkv_coord_read_fanout_t read_fanout;
    /* Speculative: ask the next replica once one has not answered for this long; 0 = the
     * peer's observed p99 (dkv_coord_retry_delay_us). */
    uint64_t speculative_retry_ms;
    /* The transport's per-request timeout (--replica-timeout-ms): a replica asked later in a
     * speculative GET gets what is left of it, so the GET still ends within it; 0 = every
     * request gets the transport's own timeout. */
    uint64_t replica_timeout_ms;
    /* Monotonic ns for retry deadlines and latency samples; NULL = uv_hrtime() (tests pass a
     * fake). */
    uint64_t (*clock_ns)(void *ctx);
    void *clock_ctx;
} dkv_coord_env_t;

/**
 * The outcome of an operation, passed to the callback.
 * rc: 0 (GET found a value; PUT/DELETE stored on >= ack replicas); DKV_ENOTFOUND (GET: newest
 * version is a tombstone or no replica has one); DKV_EQUORUM (fewer than ack replicas succeeded);
 * DKV_ENOSPACE (PUT/DELETE: fewer than ack succeeded and this node, one of the replicas, refused
 * the write for lack of space). A PUT's local write counts from the moment the store accepts it;
 * if a WAL sync of this thread fails it before the answer (store/store.h, write tokens), it
 * counts as a failed replica instead; a success that still rests on it names it in local_token.
 * For a found GET, `record` is the newest version and borrows from `buf`, which the callback may
 * take (move it out and empty it); whatever is left in `buf` is released after the callback.
 */
typedef struct dkv_coord_result {
    int rc;
    /* PUT/DELETE answered 0: the store write token (store/store.h) of this node's local write
     * when it is one of the successes the answer counts, else 0 (the answer rests on peers
     * only). The caller sends the answer through a flush that syncs this thread's WAL and
     * checks that token (http/ write_outcome). */
    uint64_t local_token;
    dkv_record_t record;
    dkv_owned_t buf;
} dkv_coord_result_t;

typedef void (*dkv_coord_cb)(void *arg, dkv_coord_result_t *res);

/**
 * Creates the coordinator of one I/O thread. With speculative reads (and a transport) it owns a
 * timer on env.loop, unreferenced, so it never keeps the loop alive by itself.
 * @param env  Copied; its pointers are borrowed. @param out written on success.
 * @return 0. Thread: the loop's thread.
 */
int dkv_coord_new(const dkv_coord_env_t *env, dkv_coord_t **out);

/**
 * Frees the coordinator; no operation may be in flight (see dkv_coord_inflight). A coordinator
 * that owns a timer (speculative reads) is released from the timer's close callback: run the
 * loop once more (uv_run) before uv_loop_close(). Thread: the loop's thread.
 */
void dkv_coord_free(dkv_coord_t *c);

/**
 * How long (µs) a speculative GET waits for peer `peer` before it asks the next replica:
 * env.speculative_retry_ms if set, else the p99 of the peer's recent GET and DIGEST latency
 * seen by this coordinator (the upper bound of its histogram bucket, within 12.5%), or
 * DKV_COORD_RETRY_WARMUP_MS until DKV_COORD_RETRY_MIN_SAMPLES replies were timed; at most the
 * replica timeout. The retry timer has libuv's whole-ms resolution: the wait is this, rounded up
 * to the loop's next ms. Thread: the coordinator's loop thread.
 */
uint64_t dkv_coord_retry_delay_us(const dkv_coord_t *c, uint32_t peer);

/* Before a peer's p99 is known: retry after this long, once this many replies were timed. */
#define DKV_COORD_RETRY_WARMUP_MS 10u
#define DKV_COORD_RETRY_MIN_SAMPLES 32u
/* A peer with requests outstanding that sent nothing at all for twice its retry delay, and at
 * least this long, is silent (a stopped process, not a slow one): asked last by new GETs until
 * it answers again, and the latencies its silence held up are not sampled. */
#define DKV_COORD_SILENCE_MIN_MS 20u

/** Operations started and not yet finished with every replica (answered or not), read repair
 * writes still in flight included. */
size_t dkv_coord_inflight(const dkv_coord_t *c);

/**
 * Starts a quorum read of `key` on its first `from` replicas.
 *
 * @param key   Borrowed for the call; 1..DKV_MAX_KEY_BYTES bytes.
 * @param ack   Replies needed before `cb` runs; 1..from.
 * @param from  Replicas asked; 1..N.
 * @return 0 and `cb` runs exactly once (possibly before this returns); DKV_EINVAL and `cb` never
 *         runs. Callback: see dkv_coord_result_t.
 * Fan-out (env.read_fanout): DKV_COORD_READ_ALL asks all `from` replicas for their version.
 * DKV_COORD_READ_SPECULATIVE asks `ack` of them first: this node for the data when it is one of
 * them (no RPC), else the first peer in preference-list order, and the next ones (in that order,
 * silent peers last: DKV_COORD_SILENCE_MIN_MS) for a digest (rpc/proto.h: ts, flags, value hash).
 * It asks the next replica of the `from` set, never another node, when an unanswered one passes its
 * retry delay (dkv_coord_retry_delay_us; Dean & Barroso, "The Tail at Scale", 2013: hedged
 * requests; Cassandra's speculative_retry = 99p) or fails (refused, breaker open, timed out, error,
 * not ready). It answers once `ack` replicas succeeded and the data in hand is at least as new as
 * every digest among them; a newer or incomparable digest first costs a data read from that replica
 * (an extra round trip). Requests asked late get what is left of env.replica_timeout_ms, so 504
 * comes no later than with DKV_COORD_READ_ALL. API.md §5.6 holds: the answer is the newest of
 * `ack` successful replies.
 * Read repair (env.read_repair; Dynamo §4.7): the operation lives on after the answer until every
 * replica it asked answered or timed out; then each replica that answered "absent" or an older
 * version (by data or digest) gets the newest record (its original timestamp) through the normal
 * replica write, if it is one of the first `from` nodes of that record's own replica set
 * (common/record.h), or, for a record of unknown replica set, if it already held an older
 * version. Never delays the answer. A speculative GET repairs only the replicas it asked; a
 * digest newer than the data that arrives after the answer is read in full first.
 * Thread: the coordinator's loop thread.
 */
int dkv_coord_get(dkv_coord_t *c, dkv_slice_t key, unsigned ack, unsigned from, dkv_coord_cb cb,
                  void *arg);

/**
 * Starts a quorum write: stamps one hybrid-logical-clock timestamp and stores the record (a value,
 * or a tombstone when `tombstone`) on the key's first `from` replicas. Replicas still receive the
 * write after `cb` has run.
 *
 * @param key, value  Borrowed for the call (copied into every replica request before it returns).
 * @return 0 and `cb` runs exactly once (possibly before this returns); DKV_EINVAL, or
 *         DKV_EHLCBOUND (the clock's persisted bound could not be extended, cluster/hlc.h), and
 *         `cb` never runs. Callback rc: 0, DKV_EQUORUM or DKV_ENOSPACE (see dkv_coord_result_t).
 *         A 0 may rest on this thread's write-ahead-log buffer: the caller acknowledges it only
 *         after dkv_store_sync_wal() succeeds on this thread (http/ does, before each write(2)).
 * Hinted handoff (env.hints): each peer replica whose write fails (refused, timed out, breaker
 * open, replica error) gets a durable hint, whether or not the client was already answered.
 * Thread: the coordinator's loop thread.
 */
int dkv_coord_put(dkv_coord_t *c, dkv_slice_t key, bool tombstone, dkv_slice_t value, unsigned ack,
                  unsigned from, dkv_coord_cb cb, void *arg);

#endif
