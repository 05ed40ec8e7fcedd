/*
 * Inter-node RPC over persistent, pipelined TCP connections (frames: rpc/proto.h,
 * docs/protocol.md). The client side keeps one connection per (I/O thread, peer) with lazy
 * connect, reconnect with backoff, per-request timeouts and a circuit breaker per peer; the
 * server side executes replica requests against the local store and never coordinates them again.
 */
#ifndef DKV_RPC_RPC_H
#define DKV_RPC_RPC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cluster/hlc.h"
#include "cluster/identity.h"
#include "cluster/ring.h"
#include "cluster/skew.h"
#include "common/buf.h"
#include "common/record.h"
#include "common/slice.h"
#include "metrics/metrics.h"
#include "replica/replica.h"
#include "rpc/auth.h"
#include "rpc/proto.h"

typedef struct dkv_rpc_client dkv_rpc_client_t;
typedef struct dkv_rpc_server dkv_rpc_server_t;

/**
 * State shared by every loop's client and server of one node: per peer, a counter that a server
 * bumps whenever that peer completes a handshake with us. A client whose breaker is open for the
 * peer sees the change and closes the breaker, so a restarted peer is reached on the very next
 * request (API.md §8) instead of after the cooldown. Zero-initialise it.
 */
/* Up to 64 I/O loops (--io-threads) plus the hint replay, rebuild and anti-entropy loops. */
#define DKV_RPC_MAX_LOOPS 67

typedef struct dkv_rpc_shared {
    /* The node's identity, exchanged in every handshake (cluster/identity.h); NULL: none is
     * sent and peers' are ignored. Set before any client or server is created. */
    dkv_identity_t *identity;
    /* The cluster secret (rpc/auth.h); NULL: handshakes are not authenticated. Set before any
     * client or server is created. */
    dkv_auth_t *auth;
    /* Answers TREE requests (repair/antientropy.h: dkv_ae_serve_tree) into `out`, for the
     * authenticated peer `peer`; NULL: TREE is answered with an error. Set before any server. */
    void (*tree_handler)(void *ctx, uint32_t peer, const dkv_rpc_msg_t *m, dkv_buf_t *out);
    void *tree_ctx;
    /* Per-peer clock offsets and the "off the majority" verdict (cluster/skew.h), fed by the
     * client whose opts.ping_interval_ms is set; NULL: clocks are not measured. Set before any
     * client or server is created. */
    dkv_skew_t *skew;
    _Atomic uint32_t peer_epoch[DKV_RING_MAX_NODES];
    /* RPC connections every loop's server holds open, for dkv_rpc_server_opts_t.max_connections
     * (--max-peer-connections). */
    _Atomic unsigned server_conns;
    /* Each loop's view of each peer, published by that loop's client for the status page and
     * readiness: breaker (8 bits) | handshake (2 bits, dkv_rpc_handshake_t) << 1 | connected
     * (1 bit) (8) | consecutive failures (16) | pending requests (32). Read it with
     * dkv_rpc_peer_view(). */
    _Atomic uint64_t view[DKV_RPC_MAX_LOOPS][DKV_RING_MAX_NODES];
} dkv_rpc_shared_t;

/* What a loop's client last learnt of a peer's handshake. */
typedef enum dkv_rpc_handshake {
    DKV_RPC_HS_UNKNOWN = 0,  /* this loop never completed a handshake with the peer */
    DKV_RPC_HS_OK = 1,       /* the last handshake succeeded (the connection may be idle-closed) */
    DKV_RPC_HS_REJECTED = 2, /* the peer refused our handshake, or failed authentication:
                                another cluster (fingerprint, secret); not reachable for us */
    DKV_RPC_HS_FAILED = 3,   /* the last connection failed (refused, reset, timed out) */
} dkv_rpc_handshake_t;

/** One loop's published view of one peer. */
typedef struct dkv_rpc_peer_view {
    unsigned breaker;  /* enum dkv_metrics_breaker: closed, open, half-open */
    bool connected;    /* a connection with a completed handshake is open */
    dkv_rpc_handshake_t handshake;
    unsigned failures; /* consecutive */
    uint64_t pending;  /* requests waiting for a reply */
} dkv_rpc_peer_view_t;

/**
 * Reads loop `loop`'s view of peer `peer` (relaxed: a snapshot for display and readiness). A loop
 * slot no client uses reads as closed, not connected, handshake unknown.
 * @param loop 0..DKV_RPC_MAX_LOOPS-1; @param peer ring index. Thread: any.
 */
void dkv_rpc_peer_view(const dkv_rpc_shared_t *shared, unsigned loop, uint32_t peer,
                       dkv_rpc_peer_view_t *out);

typedef struct dkv_rpc_client_opts {
    uint64_t request_timeout_ms;  /* per request, from send to reply */
    unsigned breaker_failures;    /* consecutive failures that open a peer's breaker */
    uint64_t breaker_cooldown_ms; /* open -> half-open after this */
    size_t max_frame_bytes;       /* largest frame sent or accepted, dkv_rpc_frame_limit() of
                                     --max-body-bytes; 0 = DKV_RPC_FRAME_LIMIT_MIN_BYTES */
    uint64_t idle_timeout_ms;     /* a connection with nothing pending, sent or received for
                                     this long is closed (and reopened by the next request);
                                     shorter than the peers' server idle timeout, so that the
                                     side that knows nothing is in flight closes; 0 = never */
    uint64_t ping_interval_ms;    /* measure every peer's clock offset this often with a PING
                                     (connecting to it if needed, from 3 intervals after the
                                     client's creation on) into shared->skew; one client
                                     of the node does it (the first I/O loop's); 0 = never. Its
                                     connections then never go idle. */
    dkv_metrics_loop_t *metrics;  /* the loop's counters (replica requests by peer and outcome,
                                     their latency, breaker transitions); borrowed; NULL = not
                                     counted */
} dkv_rpc_client_opts_t;

/**
 * Reply to one replica request. rc: 0 (PUT stored; GET found `rec`, borrowed for the callback);
 * DKV_ENOTFOUND (GET: the replica has no version, a success); DKV_ENOTREADY (GET: the replica's
 * data is being rebuilt: a failure, but a healthy peer for the breaker); DKV_ETIMEDOUT; DKV_EUNAVAIL
 * (refused, reset, breaker open, shutting down); DKV_EPROTO (malformed reply); DKV_EIO (the
 * replica's store failed). `rec` is NULL unless rc == 0 on a GET.
 */
typedef void (*dkv_rpc_reply_cb)(void *arg, int rc, const dkv_record_t *rec);

/**
 * Reply to a DIGEST. rc: 0 with `d`, the replica's version without its value (borrowed for the
 * callback); DKV_ENOTFOUND, DKV_ENOTREADY or a transport error as for dkv_rpc_reply_cb, with `d`
 * NULL.
 */
typedef void (*dkv_rpc_digest_cb)(void *arg, int rc, const dkv_rpc_digest_t *d);

/**
 * Creates the client of one I/O thread for every peer of `ring` except `self_idx`. Connections
 * are made when a request needs them (never at start-up).
 * `loop_idx` (0..DKV_RPC_MAX_LOOPS-1) names the loop in the status page.
 * All pointers are borrowed for the client's life.
 * @return 0; DKV_EINVAL when a peer URL does not resolve to an IPv4/IPv6 address.
 * Thread: the loop's thread.
 */
int dkv_rpc_client_new(uv_loop_t *loop, unsigned loop_idx, const dkv_ring_t *ring,
                       uint32_t self_idx, dkv_hlc_t *hlc, dkv_rpc_shared_t *shared,
                       const dkv_rpc_client_opts_t *opts, dkv_rpc_client_t **out);

/**
 * Fails every pending request with DKV_EUNAVAIL (their callbacks run now), closes connections and
 * frees the client once its handles are closed; `cb` (may be NULL) runs after that.
 * Thread: the loop's thread.
 */
void dkv_rpc_client_close(dkv_rpc_client_t *c, void (*cb)(void *arg), void *arg);

/**
 * Reply to a SCAN. rc: 0 with `reply` a decoded SCAN_REPLY of status OK (walk its entries with
 * dkv_rpc_scan_iter_*(); everything borrowed for the callback); DKV_EIO (the replica's scan
 * failed); or a transport error as for dkv_rpc_reply_cb, with `reply` NULL.
 */
typedef void (*dkv_rpc_scan_cb)(void *arg, int rc, const dkv_rpc_msg_t *reply);

/** A TREE request (anti-entropy, repair/antientropy.h): see dkv_rpc_encode_tree(). */
typedef struct dkv_rpc_tree_req {
    uint8_t kind;      /* dkv_rpc_tree_kind_t */
    uint32_t index;    /* branch or segment */
    dkv_slice_t after; /* SEGMENT: resume strictly after this key */
} dkv_rpc_tree_req_t;

/** One replica request: what dkv_rpc_client_call() sends. */
typedef struct dkv_rpc_call {
    dkv_rpc_type_t type;         /* DKV_RPC_GET (stored version of key), DKV_RPC_DIGEST (its
                                    digest, without the value), DKV_RPC_PUT (store rec),
                                    DKV_RPC_SCAN (one ordered batch of a key range) or
                                    DKV_RPC_TREE (anti-entropy hash tree level or segment) */
    dkv_slice_t key;             /* GET, DIGEST, PUT: 1..DKV_RPC_MAX_KEY_BYTES bytes */
    const dkv_record_t *rec;     /* PUT: the record */
    const dkv_rpc_scan_t *scan;  /* SCAN: the range and batch limits */
    const dkv_rpc_tree_req_t *tree; /* TREE: the level or segment asked for */
    dkv_rpc_scan_cb scan_cb;     /* SCAN, TREE: receives the decoded reply (the `cb` argument
                                    must be NULL); rc 0 = status OK, DKV_ENOTREADY = NOT_READY
                                    (ask again later), DKV_EIO = ERROR */
    dkv_rpc_digest_cb digest_cb; /* DIGEST: receives the reply (the `cb` argument must be NULL) */
    uint64_t timeout_ms;         /* from send to reply; 0 = the client's request_timeout_ms */
} dkv_rpc_call_t;

/**
 * Sends one replica request to peer `peer` (ring index, not self). A PUT is stored unless the
 * peer holds a newer version; a GET returns the peer's stored version.
 * @param call  Borrowed; key and record are copied into the request before this returns.
 * @return 0 and `cb` (`call->scan_cb` for a SCAN or TREE, `call->digest_cb` for a DIGEST) runs
 *         exactly once, never before this returns;
 *         DKV_EUNAVAIL (the peer's circuit breaker is open, or too many bytes are queued for it:
 *         a failure at once) or DKV_EINVAL (bad peer, type, key, record or scan, or a frame
 *         past opts.max_frame_bytes), and no callback runs.
 * Callback: see dkv_rpc_reply_cb; `rec` is non-NULL only for a GET that found a version.
 * Thread: the client's loop thread.
 */
int dkv_rpc_client_call(dkv_rpc_client_t *c, uint32_t peer, const dkv_rpc_call_t *call,
                        dkv_rpc_reply_cb cb, void *arg);

/**
 * Starts a background connection (handshake only, no request; its failure never counts for the
 * breaker) to every peer this client has no connection to, at most once per peer per probe
 * backoff (50 ms doubling to 1 s while attempts fail). The readiness check calls it so that what
 * dkv_rpc_peer_view() says is fresh even without traffic.
 * Thread: the client's loop thread.
 */
void dkv_rpc_client_reach(dkv_rpc_client_t *c);

/**
 * Appends the node's view of every peer as JSON array elements (without brackets) to `out`,
 * merged over its `n_loops` loops: {"url":..,"breaker":"closed|half-open|open" (the worst loop's),
 * "connected":bool (any loop),"pending":n (sum),"consecutive_failures":n (max),
 * "clock_offset_ms":..,"clock_uncertainty_ms":..,"rtt_ms":..,"clock_sample_age_ms":.. (with
 * shared->skew: dkv_skew_peer_json),"loops":[...]}.
 * Thread: any (reads what the loops published).
 */
void dkv_rpc_status_json(dkv_rpc_shared_t *shared, const dkv_ring_t *ring, uint32_t self_idx,
                         unsigned n_loops, dkv_buf_t *out);

/* Bounds of the RPC server (docs/protocol.md §7). */
typedef struct dkv_rpc_server_opts {
    size_t max_frame_bytes;        /* largest request frame accepted after the handshake, and
                                      largest reply sent: dkv_rpc_frame_limit() of
                                      --max-body-bytes; 0 = DKV_RPC_FRAME_LIMIT_MIN_BYTES */
    unsigned max_connections;      /* open server connections of the node, all loops together
                                      (dkv_rpc_shared_t.server_conns); past it a handed-over
                                      connection is closed at once; >= 1 */
    uint64_t handshake_timeout_ms; /* from hand-over to an accepted HELLO (and AUTH); 0 = none */
    uint64_t idle_timeout_ms;      /* no byte read and no reply written for this long, the
                                      handshake done: closed; 0 = never */
} dkv_rpc_server_opts_t;

/**
 * Creates the RPC server of one I/O thread: it serves connections handed over by the HTTP
 * listener (first byte DKV_RPC_MAGIC), checks each HELLO's cluster fingerprint against `ring`'s,
 * and executes GET and PUT through `replica` (replica/replica.h) and SCAN against its store, in
 * order. A HELLO that claims `self_idx`'s URL is refused (a second node with this --self).
 * A connection whose unsent replies exceed a few MiB is not read until they drain, so a peer
 * that pipelines requests without reading replies holds a bounded amount of memory.
 * All pointers are borrowed for the server's life; `opts` is copied.
 * @return 0. Thread: the loop's thread.
 */
int dkv_rpc_server_new(uv_loop_t *loop, const dkv_ring_t *ring, uint32_t self_idx,
                       dkv_replica_t *replica, dkv_rpc_shared_t *shared,
                       const dkv_rpc_server_opts_t *opts, dkv_rpc_server_t **out);

/**
 * Takes over an accepted connection (matches dkv_http_foreign_cb): `tcp` is malloc'd, reading is
 * stopped, `first` holds the bytes read so far (copied). Past opts.max_connections the connection
 * is closed at once (with a rate-limited log line). Thread: the server's loop thread.
 */
void dkv_rpc_server_adopt(void *server, uv_tcp_t *tcp, dkv_slice_t first);

/**
 * Closes every connection and frees the server once its handles are closed; then `cb` runs (may
 * be NULL). Thread: the server's loop thread.
 */
void dkv_rpc_server_close(dkv_rpc_server_t *s, void (*cb)(void *arg), void *arg);

#endif
