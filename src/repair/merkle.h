/*
 * Anti-entropy hash trees, one per peer (research/anti-entropy.md design "A1 + B1"; Dynamo paper
 * §4.7, Riak's active anti-entropy and TicTac AAE).
 *
 * The key space is cut into DKV_MERKLE_SEGMENTS segments by the top 16 bits of the key's ring
 * token (store/store.h). For every peer P this node keeps a two-level tree over the records that
 * both this node and P should hold: those whose replica set (the first `from` nodes of the key's
 * preference list, `from` being the record's own) contains both. A record with from = 0 (a
 * version-1 record, replica set unknown) is in no tree: anti-entropy never makes a copy it cannot
 * prove belongs.
 *
 *   leaf(P, s)   = XOR over the records r of segment s shared with P of entry_hash(r)
 *   branch(P, b) = XOR of leaf(P, s) for s in [256 b, 256 b + 256)      (256 branches)
 *   entry_hash   = XXH3_64(key_len u16 BE | key | ts u64 BE | tombstone u8)
 *
 * The entry hash covers exactly what the last-write-wins order compares first (timestamp, then
 * tombstone) and nothing node-local, so equal versions hash equally on every node (the lesson of
 * Riak issue 1189). Two versions with equal timestamps and flags but different values (two
 * coordinators stamping one key in the same HLC tick) hash equally: anti-entropy does not tell
 * them apart; read repair does.
 *
 * Maintenance (Riak AAE style, no read before a write): every write marks its segment dirty
 * (dkv_merkle_mark_dirty(), the store's write observer); dkv_merkle_refresh() re-reads only the
 * dirty segments from the store's digest column family and updates their leaves and branches.
 * At start every segment is dirty, so the first refresh is a full digest scan: the trees are
 * rebuilt from storage and never persisted.
 *
 * Threads: mark_dirty from any thread (atomic); refresh from one thread at a time (the
 * anti-entropy thread); the readers (branches, leaves) from any thread (a mutex guards the
 * published hashes).
 */
#ifndef DKV_REPAIR_MERKLE_H
#define DKV_REPAIR_MERKLE_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster/ring.h"
#include "common/slice.h"
#include "store/store.h"

#define DKV_MERKLE_SEGMENTS DKV_STORE_SEGMENTS
#define DKV_MERKLE_BRANCHES 256u
#define DKV_MERKLE_FANOUT (DKV_MERKLE_SEGMENTS / DKV_MERKLE_BRANCHES) /* leaves per branch */

typedef struct dkv_merkle dkv_merkle_t;

/**
 * Creates the trees of node `self_idx` for every other node of `ring`, all segments dirty.
 * @param store, ring  Borrowed for the trees' life. @return 0 with `*out`. Thread: main.
 */
int dkv_merkle_new(dkv_store_t *store, const dkv_ring_t *ring, uint32_t self_idx,
                   dkv_merkle_t **out);

/** Frees the trees. NULL is a no-op. Thread: main, once no other thread uses them. */
void dkv_merkle_free(dkv_merkle_t *m);

/** Marks `segment` (0..DKV_MERKLE_SEGMENTS-1) dirty. Matches dkv_store_write_cb. Thread: any. */
void dkv_merkle_mark_dirty(void *m, uint32_t segment);

/**
 * Recomputes every dirty segment's leaves from the digest column family (one ordered scan per
 * run of consecutive dirty segments) and publishes them with their branches. A segment dirtied
 * during the refresh stays dirty for the next one.
 * @param rehashed  If not NULL: the number of segments recomputed.
 * @return 0; DKV_EIO (the store failed; the segments not done stay dirty).
 * Thread: one caller at a time; never an I/O loop (reads up to the whole digest column family).
 */
int dkv_merkle_refresh(dkv_merkle_t *m, uint32_t *rehashed);

/** Segments dirty now. Thread: any. */
uint32_t dkv_merkle_dirty_count(dkv_merkle_t *m);

/** Whether every segment was computed at least once (the first refresh finished). Thread: any. */
bool dkv_merkle_built(dkv_merkle_t *m);

/** Whether a refresh is running: its dirty bits are taken but not all its segments rehashed, so
 * the published hashes are a mix of before and after. Thread: any. */
bool dkv_merkle_refreshing(dkv_merkle_t *m);

/** Wall-clock ms when the last completed refresh started; 0 before the first. Thread: any. */
uint64_t dkv_merkle_refreshed_at_ms(dkv_merkle_t *m);

/**
 * Copies the DKV_MERKLE_BRANCHES branch hashes of the tree shared with `peer` into `out`.
 * @return 0; DKV_EINVAL (peer out of range or self). Thread: any.
 */
int dkv_merkle_branches(dkv_merkle_t *m, uint32_t peer, uint64_t out[DKV_MERKLE_BRANCHES]);

/**
 * Copies the DKV_MERKLE_FANOUT leaf hashes under `branch` of the tree shared with `peer`:
 * out[i] is segment branch * DKV_MERKLE_FANOUT + i.
 * @return 0; DKV_EINVAL. Thread: any.
 */
int dkv_merkle_leaves(dkv_merkle_t *m, uint32_t peer, uint32_t branch,
                      uint64_t out[DKV_MERKLE_FANOUT]);

/** Records (tombstones included) and tombstones in every tree's segments as of the last refresh
 * (each record counted once). Thread: any. */
void dkv_merkle_counts(dkv_merkle_t *m, uint64_t *records, uint64_t *tombstones);

/**
 * Whether a record of `key` with replica-set size `from` belongs on both node `a` and node `b`
 * (both among the first `from` nodes of the key's preference list). from = 0: false.
 * Thread: any: pure.
 */
bool dkv_merkle_shared(const dkv_ring_t *ring, dkv_slice_t key, uint8_t from, uint32_t a,
                       uint32_t b);

/** The entry hash of one record's digest (see above). Thread: any: pure. */
uint64_t dkv_merkle_entry_hash(dkv_slice_t key, const dkv_store_digest_t *d);

#endif
