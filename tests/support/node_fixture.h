/*
 * Test fixture: a whole dkv node without sockets, shared by the unit tests and the fuzz targets
 * that drive the router or the HTTP layer: a ring (one node by default, or N nodes of which this
 * is one), a RocksDB store in a fresh temporary directory, an HLC on the system clock, a
 * coordinator and a router, all on one loop. With N > 1 the fixture's own coordinator has no
 * transport (its peers always fail); tests of the coordinator build their own over the fixture's
 * pieces with a fake transport (support/fake_transport.h).
 */
#ifndef DKV_TESTS_SUPPORT_NODE_FIXTURE_H
#define DKV_TESTS_SUPPORT_NODE_FIXTURE_H

#include <uv.h>

#include "cluster/hlc.h"
#include "cluster/ring.h"
#include "coord/coord.h"
#include "replica/replica.h"
#include "router/router.h"
#include "store/store.h"

/** The node's own URL when the ring has one node (what the router reports as "self"). */
#define DKV_TEST_NODE_URL "http://127.0.0.1:8080"

/**
 * URLs of an N-node ring (N > 1; a one-node ring uses DKV_TEST_NODE_URL): printf format of node
 * i's URL, with port i + 1. Ring indexes follow the canonical (byte-wise sorted) order, so for
 * N <= 9 ring index i is port i + 1; use dkv_ring_url() rather than this for larger rings.
 */
#define DKV_TEST_NODE_PEER_URL_FMT "http://127.0.0.1:%u"

/** Virtual nodes of the one-node ring when dkv_test_node_opts_t.vnodes is 0. */
#define DKV_TEST_NODE_DEFAULT_VNODES 64u

/** How to build a node; zero fields take the defaults. */
typedef struct dkv_test_node_opts {
    const char *name;                   /* temp dir is /tmp/dkv-<name>-XXXXXX; NULL = "test" */
    unsigned vnodes;                    /* ring tokens; 0 = DKV_TEST_NODE_DEFAULT_VNODES */
    const dkv_store_opts_t *store_opts; /* NULL = the store's defaults */
    unsigned nodes;                     /* ring size N, 1..DKV_RING_MAX_NODES; 0 = 1 */
    uint32_t self_idx;                  /* this node's ring index, 0..N-1 */
} dkv_test_node_opts_t;

/**
 * A dkv node. Every field is owned by the fixture and valid until dkv_test_node_free(); tests
 * use them (run the loop, read the store, send requests to the router) but never free them.
 */
typedef struct dkv_test_node {
    uv_loop_t loop;       /* the coordinator's loop; nothing runs it but the test */
    dkv_ring_t *ring;     /* opts.nodes nodes; one node: DKV_TEST_NODE_URL, index 0 */
    dkv_store_t *store;   /* opened in `dir` */
    dkv_replica_t *replica; /* over `store`; no identity: always ready */
    dkv_hlc_t hlc;        /* on the system clock */
    dkv_coord_t *coord;   /* local store only: no RPC client (peers, if any, always fail) */
    dkv_router_t *router; /* self_url: this node's ring URL; no RPC peer views */
    uint32_t self_idx;    /* this node's ring index (opts.self_idx) */
    char dir[64];         /* the temporary directory, NUL-terminated */
} dkv_test_node_t;

/**
 * Creates a node: makes a temporary directory with mkdtemp(), opens the store there, and wires a
 * loop, ring, HLC, coordinator and router together.
 *
 * @param opts  Borrowed for the call; NULL means all defaults.
 * @param out   Written on success; release with dkv_test_node_free().
 * @return 0; DKV_EINVAL (name too long for the directory template, vnodes, nodes or self_idx
 *         out of range); -errno from mkdtemp() or uv_loop_init(); DKV_EIO from the store; or
 *         what dkv_coord_new() or dkv_router_new() return. On failure nothing is left behind,
 *         the directory included.
 * Thread: any; the node then belongs to that thread, which alone runs its loop.
 */
int dkv_test_node_new(const dkv_test_node_opts_t *opts, dkv_test_node_t **out);

/**
 * Frees the node: router, coordinator, store, ring, then closes the loop and removes the
 * temporary directory with everything in it. No coordinator operation may be in flight (callers
 * assert what their test requires first); handles still open on the loop make uv_loop_close()
 * fail, which is not reported. NULL is a no-op.
 * Thread: the node's thread.
 */
void dkv_test_node_free(dkv_test_node_t *n);

#endif
