/*
 * Coordinator: runs one client operation (GET, PUT, DELETE) against the key's first `from`
 * replicas of its preference list, in parallel, and reports the outcome once `ack` replicas
 * succeeded or success became impossible (Dynamo paper §4.5, sloppy-quorum-free variant).
 * One coordinator per I/O thread; it uses the local store for itself and RPC for peers.
 */
#ifndef DKV_COORD_COORD_H
#define DKV_COORD_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "cluster/hlc.h"
#include "cluster/ring.h"
#include "common/record.h"
#include "common/slice.h"
#include "rpc/rpc.h"
#include "store/store.h"

typedef struct dkv_coord dkv_coord_t;

/** What a coordinator needs; every pointer is borrowed and must outlive the coordinator. */
typedef struct dkv_coord_env {
    uv_loop_t *loop;           /* the I/O thread's loop */
    dkv_store_t *store;        /* this node's replica data */
    const dkv_ring_t *ring;    /* placement */
    uint32_t self_idx;         /* this node's index in the ring */
    dkv_hlc_t *hlc;            /* shared by all threads of the node */
    dkv_rpc_client_t *rpc;     /* this loop's connections to peers; NULL when N == 1 */
} dkv_coord_env_t;

/** An owned encoded record: `free_fn(ptr)` releases it. */
typedef struct dkv_owned {
    uint8_t *ptr;
    size_t len;
    void (*free_fn)(uint8_t *ptr);
} dkv_owned_t;

/** Releases an owned buffer (no-op on an empty one) and empties it. Thread: any. */
void dkv_owned_release(dkv_owned_t *o);

/**
 * The outcome of an operation, passed to the callback.
 * rc: 0 (GET found a value; PUT/DELETE stored on >= ack replicas); DKV_ENOTFOUND (GET: newest
 * version is a tombstone or no replica has one); DKV_EQUORUM (fewer than ack replicas succeeded).
 * For a found GET, `record` is the newest version and borrows from `buf`, which the callback may
 * take (move it out and empty it); whatever is left in `buf` is released after the callback.
 */
typedef struct dkv_coord_result {
    int rc;
    dkv_record_t record;
    dkv_owned_t buf;
} dkv_coord_result_t;

typedef void (*dkv_coord_cb)(void *arg, dkv_coord_result_t *res);

/**
 * Creates the coordinator of one I/O thread.
 * @param env  Copied; its pointers are borrowed. @param out written on success.
 * @return 0. Thread: the loop's thread.
 */
int dkv_coord_new(const dkv_coord_env_t *env, dkv_coord_t **out);

/** Frees the coordinator; no operation may be in flight (see dkv_coord_inflight). */
void dkv_coord_free(dkv_coord_t *c);

/** Operations started and not yet finished with every replica (answered or not). */
size_t dkv_coord_inflight(const dkv_coord_t *c);

/**
 * Starts a quorum read of `key` on its first `from` replicas.
 *
 * @param key   Borrowed for the call; 1..DKV_MAX_KEY_BYTES bytes.
 * @param ack   Replies needed before `cb` runs; 1..from.
 * @param from  Replicas asked; 1..N.
 * @return 0 and `cb` runs exactly once (possibly before this returns); DKV_EINVAL and `cb` never
 *         runs. Callback: see dkv_coord_result_t. Later replies are consumed quietly.
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
 * @return 0 and `cb` runs exactly once (possibly before this returns); DKV_EINVAL and `cb` never
 *         runs. Callback rc: 0 or DKV_EQUORUM.
 * Thread: the coordinator's loop thread.
 */
int dkv_coord_put(dkv_coord_t *c, dkv_slice_t key, bool tombstone, dkv_slice_t value, unsigned ack,
                  unsigned from, dkv_coord_cb cb, void *arg);

#endif
