/*
 * The one-node fixture of node_fixture.h: builds the same wiring as src/main.c does for N = 1 and
 * one I/O thread, minus sockets and RPC, and tears it down in reverse order.
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
    const char *urls[] = {DKV_TEST_NODE_URL};
    bool dir_made = false;
    bool loop_ready = false;
    int rc = 0;

    dkv_test_node_t *n = dkv_xcalloc(1, sizeof(*n));
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
    rc = dkv_ring_new(urls, 1, vnodes, &n->ring);
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
        .loop = &n->loop, .replica = n->replica, .ring = n->ring, .self_idx = 0, .hlc = &n->hlc};
    rc = dkv_coord_new(&cenv, &n->coord);
    if (rc != 0) {
        goto out;
    }
    dkv_router_env_t renv = {.coord = n->coord,
                             .store = n->store,
                             .ring = n->ring,
                             .loop = &n->loop,
                             .self_url = DKV_TEST_NODE_URL,
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
