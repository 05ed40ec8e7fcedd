/*
 * The node fixture of node_fixture.h: builds the same wiring as src/main.c does for one I/O
 * thread, minus sockets and RPC, and tears it down in reverse order.
 */
#define _XOPEN_SOURCE 700 /* nftw() */

#include "support/node_fixture.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <ftw.h>

#include "common/err.h"
#include "common/slice.h"

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* Removes `dir` and everything below it, children first; symlinks are not followed. */
static void remove_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int dkv_test_node_new(const dkv_test_node_opts_t *opts, dkv_test_node_t **out)
{
    static const dkv_test_node_opts_t defaults = {.name = NULL};
    if (opts == NULL) {
        opts = &defaults;
    }
    const char *name = opts->name != NULL ? opts->name : "test";
    unsigned vnodes = opts->vnodes != 0 ? opts->vnodes : DKV_TEST_NODE_DEFAULT_VNODES;
    unsigned nodes = opts->nodes != 0 ? opts->nodes : 1;
    char url_bufs[DKV_RING_MAX_NODES][32];
    const char *urls[DKV_RING_MAX_NODES];
    bool dir_made = false;
    bool loop_ready = false;
    int rc = 0;

    dkv_test_node_t *n = dkv_xcalloc(1, sizeof(*n));
    if (nodes > DKV_RING_MAX_NODES || opts->self_idx >= nodes) {
        rc = DKV_EINVAL;
        goto out;
    }
    n->self_idx = opts->self_idx;
    if (nodes == 1) {
        urls[0] = DKV_TEST_NODE_URL;
    } else {
        for (unsigned i = 0; i < nodes; i++) {
            snprintf(url_bufs[i], sizeof(url_bufs[i]), DKV_TEST_NODE_PEER_URL_FMT, i + 1);
            urls[i] = url_bufs[i];
        }
    }
    int len = snprintf(n->dir, sizeof(n->dir), "/tmp/dkv-%s-XXXXXX", name);
    if (len < 0 || (size_t)len >= sizeof(n->dir)) {
        rc = DKV_EINVAL;
        goto out;
    }
    if (mkdtemp(n->dir) == NULL) {
        rc = -errno;
        goto out;
    }
    dir_made = true;
    rc = uv_loop_init(&n->loop);
    if (rc != 0) {
        goto out;
    }
    loop_ready = true;
    rc = dkv_ring_new(urls, nodes, vnodes, &n->ring);
    if (rc != 0) {
        goto out;
    }
    rc = dkv_store_open(n->dir, opts->store_opts, &n->store);
    if (rc != 0) {
        goto out;
    }
    dkv_hlc_init(&n->hlc, NULL, NULL);
    dkv_replica_new(n->store, &n->hlc, NULL, &n->replica);
    /* Designated initialisers: fields the coordinator or router gain later start at zero. */
    dkv_coord_env_t cenv = {
        .loop = &n->loop, .replica = n->replica, .ring = n->ring, .self_idx = n->self_idx,
        .hlc = &n->hlc};
    rc = dkv_coord_new(&cenv, &n->coord);
    if (rc != 0) {
        goto out;
    }
    dkv_router_env_t renv = {.coord = n->coord,
                             .store = n->store,
                             .ring = n->ring,
                             .loop = &n->loop,
                             .self_url = dkv_ring_url(n->ring, n->self_idx),
                             .self_idx = n->self_idx,
                             .start_ms = dkv_hlc_system_clock_ms(NULL)};
    rc = dkv_router_new(&renv, &n->router);

out:
    if (rc != 0) {
        if (n->coord != NULL) {
            dkv_coord_free(n->coord);
        }
        dkv_replica_free(n->replica);
        dkv_store_close(n->store);
        dkv_ring_free(n->ring);
        if (loop_ready) {
            uv_loop_close(&n->loop);
        }
        if (dir_made) {
            remove_tree(n->dir);
        }
        free(n);
        return rc;
    }
    *out = n;
    return 0;
}

void dkv_test_node_free(dkv_test_node_t *n)
{
    if (n == NULL) {
        return;
    }
    dkv_router_free(n->router);
    dkv_coord_free(n->coord);
    dkv_replica_free(n->replica);
    dkv_store_close(n->store);
    dkv_ring_free(n->ring);
    uv_loop_close(&n->loop);
    remove_tree(n->dir);
    free(n);
}
