/*
 * Inter-node RPC over persistent, pipelined TCP connections (frames: rpc/proto.h,
 * docs/protocol.md). The client side keeps one connection per (I/O thread, peer) with lazy
 * connect, reconnect with backoff, per-request timeouts and a circuit breaker per peer; the
 * server side executes replica requests against the local store and never coordinates them again.
 */
#ifndef DKV_RPC_RPC_H
#define DKV_RPC_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cluster/hlc.h"
#include "cluster/ring.h"
#include "common/buf.h"
#include "common/record.h"
#include "common/slice.h"
#include "store/store.h"

typedef struct dkv_rpc_client dkv_rpc_client_t;

typedef struct dkv_rpc_client_opts {
    uint64_t request_timeout_ms;  /* per request, from send to reply */
    unsigned breaker_failures;    /* consecutive failures that open a peer's breaker */
    uint64_t breaker_cooldown_ms; /* open -> half-open after this */
} dkv_rpc_client_opts_t;

/**
 * Reply to one replica request. rc: 0 (PUT stored; GET found `rec`, borrowed for the callback);
 * DKV_ENOTFOUND (GET: the replica has no version, a success); DKV_ETIMEDOUT; DKV_EUNAVAIL
 * (refused, reset, breaker open, shutting down); DKV_EPROTO (malformed reply); DKV_EIO (the
 * replica's store failed). `rec` is NULL unless rc == 0 on a GET.
 */
typedef void (*dkv_rpc_reply_cb)(void *arg, int rc, const dkv_record_t *rec);

/**
 * Creates the client of one I/O thread for every peer of `ring` except `self_idx`. Connects
 * lazily. All pointers are borrowed for the client's life.
 * @return 0. Thread: the loop's thread.
 */
int dkv_rpc_client_new(uv_loop_t *loop, const dkv_ring_t *ring, uint32_t self_idx,
                       dkv_hlc_t *hlc, const dkv_rpc_client_opts_t *opts, dkv_rpc_client_t **out);

/**
 * Fails every pending request with DKV_EUNAVAIL (their callbacks run now), closes connections and
 * frees the client once its handles are closed; `cb` (may be NULL) runs after that.
 * Thread: the loop's thread.
 */
void dkv_rpc_client_close(dkv_rpc_client_t *c, void (*cb)(void *arg), void *arg);

/**
 * Asks peer `peer` (ring index, not self) for its stored version of `key`.
 * @param key  Copied into the request before this returns.
 * @return 0 and `cb` runs exactly once, never before this returns; DKV_EINVAL (bad peer) and `cb`
 *         never runs.
 * Thread: the client's loop thread.
 */
int dkv_rpc_client_get(dkv_rpc_client_t *c, uint32_t peer, dkv_slice_t key, dkv_rpc_reply_cb cb,
                       void *arg);

/**
 * Sends `rec` for `key` to peer `peer`, which stores it unless it holds a newer version.
 * Same contract as dkv_rpc_client_get(); on success the callback's `rec` is NULL.
 */
int dkv_rpc_client_put(dkv_rpc_client_t *c, uint32_t peer, dkv_slice_t key,
                       const dkv_record_t *rec, dkv_rpc_reply_cb cb, void *arg);

/**
 * Appends this loop's view of every peer as JSON array elements (without brackets) to `out`:
 * {"url":..,"breaker":"closed|open|half-open","connected":bool,"pending":n,"failures":n}.
 * Thread: the client's loop thread.
 */
void dkv_rpc_client_status_json(dkv_rpc_client_t *c, dkv_buf_t *out);

#endif
