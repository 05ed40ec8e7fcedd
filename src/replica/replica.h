/*
 * Replica side of every operation: what a node does with its own copy of a key, whether the
 * request came from this node's coordinator (the local replica) or from a peer's (rpc/server.c).
 * One place for the rules a replica keeps, so both paths keep them alike: a write goes through the
 * last-write-wins merge and advances the hybrid logical clock; a read returns the stored version
 * (tombstones included) or "absent".
 */
#ifndef DKV_REPLICA_REPLICA_H
#define DKV_REPLICA_REPLICA_H

#include "cluster/hlc.h"
#include "cluster/identity.h"
#include "common/owned.h"
#include "common/record.h"
#include "common/slice.h"
#include "store/store.h"

typedef struct dkv_replica dkv_replica_t;

/**
 * Creates the replica side of a node over its store and clock.
 * @param store, hlc  Borrowed for the replica's life.
 * @param identity    Borrowed; decides whether reads may be answered (cluster/identity.h). NULL:
 *                    always ready (a cluster of one, tests).
 * @param out         Written on success; release with dkv_replica_free().
 * @return 0. Thread: any, once, before the I/O threads start; the replica is then shared by all
 *         threads (it holds no per-thread state).
 */
int dkv_replica_new(dkv_store_t *store, dkv_hlc_t *hlc, dkv_identity_t *identity,
                    dkv_replica_t **out);

/** Frees the replica (not the store or the clock). NULL is a no-op. */
void dkv_replica_free(dkv_replica_t *r);

/** The store behind the replica, borrowed. Thread: any. */
dkv_store_t *dkv_replica_store(const dkv_replica_t *r);

/**
 * Reads the stored version of `key`.
 * @param key  Borrowed; 1..DKV_MAX_KEY_BYTES bytes.
 * @param rec  On 0: the version (a tombstone is a version); its value borrows from `buf`.
 * @param buf  On 0: owns the bytes `rec` points into; the caller releases it.
 * @return 0; DKV_ENOTFOUND (no version at all); DKV_ENOTREADY (the node is joining or rebuilding:
 *         its "absent" would not be authoritative); DKV_EIO (the store failed or the stored record
 *         does not decode: logged). Outputs are written only on 0.
 * Thread: any; blocks for a memtable/cache hit's microseconds or a disk read.
 */
int dkv_replica_get(dkv_replica_t *r, dkv_slice_t key, dkv_record_t *rec, dkv_owned_t *buf);

/**
 * dkv_replica_get() whatever the node's state: what this node's store holds now, e.g. for a
 * rebuilding node comparing what it already has (rebuild, anti-entropy), whose records are real
 * though its "absent" is not authoritative. Same shapes, ownership and errors, without
 * DKV_ENOTREADY.
 * Thread: any.
 */
int dkv_replica_get_stored(dkv_replica_t *r, dkv_slice_t key, dkv_record_t *rec, dkv_owned_t *buf);

/**
 * Stores `rec` unless the replica holds a newer version (last-write-wins merge, no read), and
 * advances the node's hybrid logical clock past `rec->ts` so later local writes order after it.
 * Durable once the calling thread runs dkv_store_sync_wal() (see dkv_store_put()).
 * @param key, rec  Borrowed for the call.
 * @return 0; DKV_EINVAL (empty key, tombstone with a value); DKV_ECLOCK (the record is stamped
 *         more than the clock's max offset ahead of this node's wall clock: not stored, not
 *         adopted by the clock, counted); DKV_EIO.
 * Thread: any.
 */
int dkv_replica_put(dkv_replica_t *r, dkv_slice_t key, const dkv_record_t *rec);

/**
 * Tells the replica that tombstones stamped at or before `max_ts` were purged by GC (repair/
 * antientropy.h); from then on dkv_replica_put() of such a tombstone for a key with no stored
 * version succeeds without storing it (Scylla: "exchange treats an eligible tombstone as
 * absent"), so a peer that has not purged yet cannot make it churn. Thread: any.
 */
void dkv_replica_set_purge_horizon(dkv_replica_t *r, uint64_t max_ts);

/** Tombstones dropped on arrival under the purge horizon. Thread: any. */
uint64_t dkv_replica_late_tombstones(const dkv_replica_t *r);

/** Records refused by dkv_replica_put() as stamped too far in the future. Thread: any. */
uint64_t dkv_replica_future_refused(const dkv_replica_t *r);

#endif
