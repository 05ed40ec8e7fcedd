/*
 * Node identity and readiness: "absent" must be authoritative (DESIGN.md §7). A node keeps a
 * random 128-bit node id in its data directory and tells it to every peer in the RPC handshake,
 * with whether it holds replica data and is ready, and with the id it last saw for that peer. A
 * node that starts on an empty data directory cannot know whether it is new to a new cluster or
 * the survivor of a lost disk; until a peer tells it, it is JOINING, and when a peer remembers it
 * under another id (its disk was lost) or a ready peer holds data, it is REBUILDING. In both states
 * it accepts replica writes (it misses nothing new) but answers replica reads "not ready", which a
 * coordinator counts as a failure, never as "absent". When enough peers that, with this node,
 * they are a majority of the cluster have said that they neither know it nor hold data, it is
 * READY: a fresh cluster (every node empty) starts ready as soon as a majority of its nodes have
 * talked. (Not one peer: in a 5-node cluster two wiped nodes must not call themselves a new
 * cluster while the nodes holding the data are down.) An operator who knows better ends the wait
 * with POST /v0/admin/rebuild-done.
 * A REBUILDING node becomes READY when an operator says so (POST /v0/admin/rebuild-done, after
 * hints and read repair refilled it, or accepting the loss); anti-entropy will end it by itself.
 *
 * Files in the data directory (text, one `name value` per line; written to a temporary file,
 * fsync'd and renamed, then the directory fsync'd):
 *   identity    node_id (32 hex), cluster fingerprint (16 hex), url, created_ms
 *   state       absent = ready; "joining" or "rebuilding" otherwise. Written before the store is
 *               created, so a crash at any point restarts in the same or a safer state.
 *   peers       url node_id, for every peer seen in a handshake
 *
 * The same idea is Cassandra's host ID (a node that lost its disk must be *replaced*, it cannot
 * silently rejoin) and CockroachDB's store ident; the "is any peer holding data" check follows
 * the rule for a node with no history.
 */
#ifndef DKV_CLUSTER_IDENTITY_H
#define DKV_CLUSTER_IDENTITY_H

#include <stdbool.h>
#include <stdint.h>

#include "cluster/ring.h"
#include "common/buf.h"

#define DKV_NODE_ID_BYTES 16u

typedef enum dkv_node_state {
    DKV_NODE_READY = 0,      /* answers replica reads from its data */
    DKV_NODE_JOINING = 1,    /* empty data directory; no peer has told it whether data was lost */
    DKV_NODE_REBUILDING = 2, /* its data was lost: replica reads answer "not ready" */
} dkv_node_state_t;

/* What a node tells a peer about itself in a handshake (rpc/proto.h carries it). */
#define DKV_IDENT_FLAG_HAS_DATA 0x01u /* holds at least one replica record */
#define DKV_IDENT_FLAG_READY 0x02u    /* state READY */
#define DKV_IDENT_FLAGS_KNOWN (DKV_IDENT_FLAG_HAS_DATA | DKV_IDENT_FLAG_READY)

typedef struct dkv_ident_info {
    uint8_t node_id[DKV_NODE_ID_BYTES];   /* the sender's id */
    uint8_t flags;                        /* DKV_IDENT_FLAG_* */
    uint8_t known_you[DKV_NODE_ID_BYTES]; /* the id the sender last saw for the receiver; zero
                                             when it never saw one */
} dkv_ident_info_t;

typedef struct dkv_identity dkv_identity_t;

/**
 * Loads or creates the node's identity in `data_dir` (which must exist), before the store opens.
 *
 * @param db_exists  Whether `data_dir`/db already holds a database.
 * @param why        On DKV_ECLUSTER/DKV_EIO: a one-line reason for the operator.
 * @return 0 with `*out` (release with dkv_identity_free()); DKV_ECLUSTER: the directory has an
 *         identity but no database (the data was lost: the message says how to rejoin), or the
 *         identity names another URL; DKV_EIO: a file cannot be read or written.
 *         A new identity with no database starts JOINING (N > 1) or READY (N == 1); a database
 *         without an identity (dkv 0.1) gets one and keeps its state READY.
 * Thread: main, once.
 */
int dkv_identity_open(const char *data_dir, const dkv_ring_t *ring, uint32_t self_idx,
                      bool db_exists, char *why, size_t why_len, dkv_identity_t **out);

/** Frees the identity. NULL is a no-op. Thread: main, after every other user stopped. */
void dkv_identity_free(dkv_identity_t *id);

/** The node's state now. Thread: any (an atomic load). */
dkv_node_state_t dkv_identity_state(const dkv_identity_t *id);

/**
 * Whether the node still needs to hear from its peers: it is joining, or ready on a majority's
 * word only (on probation until every peer has answered). Its RPC client then reaches out to
 * every peer instead of waiting for traffic. Thread: any.
 */
bool dkv_identity_wants_peers(dkv_identity_t *id);

/** "ready", "joining" or "rebuilding". Thread: any. */
const char *dkv_node_state_name(dkv_node_state_t s);

/**
 * Notes that the node holds replica data (after a write, or found at start-up); a flag peers
 * read in the handshake. Thread: any (cheap when already set).
 */
void dkv_identity_note_data(dkv_identity_t *id);

/** Fills `out` with what to tell peer `peer` (ring index) in a handshake. Thread: any. */
void dkv_identity_info_for(dkv_identity_t *id, uint32_t peer, dkv_ident_info_t *out);

/**
 * Takes in what peer `peer` told us in a handshake: remembers its id (persisted when new or
 * changed) and moves a JOINING node to READY or REBUILDING (logged; persisted first).
 * Thread: any (a mutex guards the peers and the files).
 */
void dkv_identity_observe(dkv_identity_t *id, uint32_t peer, const dkv_ident_info_t *info);

/**
 * The operator's word that a REBUILDING (or JOINING) node may answer reads again.
 * @return 0 (now READY, persisted); DKV_EIO (the state file cannot be written).
 * Thread: any.
 */
int dkv_identity_rebuild_done(dkv_identity_t *id);

/**
 * Whether `peer` (ring index) said in its last handshake with this node that it was not ready
 * (joining or rebuilding). False when it was ready or was never heard from. A rebuild does not
 * wait for such a peer: it holds nothing this node lost (repair/rebuild.h). Thread: any.
 */
bool dkv_identity_peer_not_ready(dkv_identity_t *id, uint32_t peer);

/**
 * Appends `"node_id":"<hex>","state":"<name>"` (no braces) for a JSON status object.
 * Thread: any.
 */
void dkv_identity_status_json(dkv_identity_t *id, dkv_buf_t *out);

#endif
