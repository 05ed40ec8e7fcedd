/*
 * Consistent-hash ring with virtual nodes (Karger et al. 1997; Dynamo paper §4.2): each node owns
 * V tokens on a 64-bit ring, keys hash with xxh3_64, and a key's preference list walks clockwise
 * from the key's hash collecting distinct nodes. The replica set for from=f is the first f nodes of
 * that list. Placement is a pure function of (key, canonical cluster set, V).
 */
#ifndef DKV_CLUSTER_RING_H
#define DKV_CLUSTER_RING_H

#include <stddef.h>
#include <stdint.h>

#include "common/slice.h"

#define DKV_RING_MAX_NODES 64
/* With random tokens a node's share of the ring varies by about 1/sqrt(V); 8192 keeps every node
 * within a few percent of 1/N for N = 3..10 across URL sets (measured; see ring.c). */
#define DKV_RING_DEFAULT_VNODES 8192

typedef struct dkv_ring dkv_ring_t;

/**
 * Builds a ring. The URLs are put into canonical form first (sorted byte-wise), so any input order
 * of the same set gives the same ring; node indexes everywhere below refer to that sorted order.
 *
 * @param urls    Borrowed array of `n` NUL-terminated node URLs; copied.
 * @param n       1..DKV_RING_MAX_NODES.
 * @param vnodes  Tokens per node, 1..65536.
 * @param out     Written on success; release with dkv_ring_free().
 * @return 0; DKV_EINVAL (n or vnodes out of range, an empty or duplicate URL).
 * Thread: any; a built ring is immutable and may be shared by all threads.
 */
int dkv_ring_new(const char *const *urls, size_t n, unsigned vnodes, dkv_ring_t **out);

/** Frees the ring. NULL is a no-op. */
void dkv_ring_free(dkv_ring_t *r);

/** Number of nodes N. Thread: any. */
size_t dkv_ring_size(const dkv_ring_t *r);

/** URL of node `idx` (0..N-1, canonical order); borrowed for the ring's life. Thread: any. */
const char *dkv_ring_url(const dkv_ring_t *r, size_t idx);

/** Index of the node with this URL. @return 0..N-1, or DKV_ENOTFOUND. Thread: any. */
int dkv_ring_index_of(const dkv_ring_t *r, const char *url);

/**
 * Writes the first `from` nodes of `key`'s preference list into `out` (distinct node indexes, in
 * order). The list for a smaller `from` is always a prefix of the list for a larger one.
 *
 * @param key   Borrowed; any length (an empty key is allowed here).
 * @param from  1..N; larger values are clamped to N.
 * @param out   Room for `from` entries.
 * @return The number of entries written (min(from, N)). Thread: any. O(log(N*V) + walk).
 */
size_t dkv_ring_preference_list(const dkv_ring_t *r, dkv_slice_t key, size_t from, uint32_t *out);

/**
 * Each node's exact share of the hash space as first replica: node i owns the arcs that end at its
 * tokens (a key belongs to the first token >= its hash), so `shares[i]` is the fraction of keys
 * whose preference list starts with node i. This is `nodetool ring`'s "owns" for from=1.
 *
 * @param shares  Room for N entries, written in canonical node order; each 0..1, summing to 1
 *                (up to rounding).
 * Thread: any. O(N): computed once when the ring is built (O(N*V)).
 */
void dkv_ring_primary_shares(const dkv_ring_t *r, double *shares);

/** Tokens per node, V (the nodes' --vnodes). Thread: any. */
unsigned dkv_ring_vnodes(const dkv_ring_t *r);

/**
 * A 64-bit fingerprint of the canonical cluster set and V: equal on nodes that agree on placement,
 * different (with overwhelming probability) otherwise. Used in the RPC handshake. Thread: any.
 */
uint64_t dkv_ring_fingerprint(const dkv_ring_t *r);

#endif
