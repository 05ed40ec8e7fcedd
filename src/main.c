/*
 * dkv node: parses flags, opens the store, builds the ring, starts one libuv loop per I/O thread
 * (each with its HTTP server, coordinator and RPC client), and drains them on SIGTERM/SIGINT.
 * Wiring only: the behaviour lives in the modules.
 */
#include "cluster/hlc.h"
#include "cluster/identity.h"
#include "cluster/ring.h"
#include "cluster/skew.h"
#include "common/conf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/thread.h"
#include "coord/coord.h"
#include "http/http.h"
#include "metrics/metrics.h"
#include "repair/hints.h"
#include "repair/antientropy.h"
#include "repair/rebuild.h"
#include "replica/replica.h"
#include "router/router.h"
#include "rpc/proto.h"
#include "rpc/rpc.h"
#include "store/store.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

typedef struct node node_t;

typedef struct io_thread {
    node_t *node;
    unsigned idx;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t stop_async;
    uv_timer_t drain_timer;
    uv_prepare_t batch_prepare; /* writes the store's pending batch before the loop polls */
    dkv_coord_t *coord;
    dkv_router_t *router;
    dkv_rpc_client_t *rpc_client;
    dkv_rpc_server_t *rpc_server;
    dkv_http_server_t *http;
    int start_rc;
    bool finishing;
    int pending_closes;
} io_thread_t;

struct node {
    dkv_conf_t conf;
    dkv_store_t *store;
    dkv_identity_t *identity;
    dkv_auth_t *auth; /* NULL: no --cluster-secret-file */
    dkv_replica_t *replica;
    dkv_hints_t *hints; /* NULL: hinted handoff off, or a cluster of one */
    dkv_rebuild_t *rebuild; /* NULL for a cluster of one */
    dkv_ae_t *ae;           /* NULL for a cluster of one */
    dkv_ring_t *ring;
    uint32_t self_idx;
    dkv_hlc_t hlc;
    dkv_hlc_file_t hlc_file; /* DATA/hlc, the clock's persisted upper bound */
    dkv_rpc_shared_t rpc_shared;
    dkv_skew_t *skew; /* NULL for a cluster of one */
    dkv_coord_stats_t coord_stats;
    dkv_metrics_t *metrics; /* one counter block per I/O thread */
    uint64_t start_ms;
    _Atomic unsigned conn_count;
    unsigned n_threads;
    io_thread_t *threads;
    uv_sem_t started;
    uv_loop_t main_loop;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    uv_timer_t resume_timer; /* reopens the store for writes after a storage error */
    uv_timer_t hlc_timer; /* extends the clock's persisted bound, off the I/O loops */
    int signals_seen;
};

/* How often an unwritable store (disk full) is checked for space, and how often it says so. */
#define STORE_RESUME_INTERVAL_MS 1000u
#define STORE_LOG_INTERVAL_MS 10000u

static int mkdirs(const char *path)
{
    char buf[1024];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof(buf)) {
        return DKV_EINVAL;
    }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char saved = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                return -errno;
            }
            buf[i] = saved;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0) {
        return -errno;
    }
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* ---- per-thread shutdown ---- */

static void on_thread_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_part_closed(void *arg)
{
    io_thread_t *t = arg;
    if (--t->pending_closes == 0) {
        uv_close((uv_handle_t *)&t->stop_async, on_thread_handle_closed);
        uv_close((uv_handle_t *)&t->drain_timer, on_thread_handle_closed);
        uv_close((uv_handle_t *)&t->batch_prepare, on_thread_handle_closed);
    }
}

static void thread_finish(io_thread_t *t)
{
    if (t->finishing) {
        return;
    }
    t->finishing = true;
    uv_timer_stop(&t->drain_timer);
    t->pending_closes = 1;
    if (t->rpc_client != NULL) {
        t->pending_closes++;
    }
    if (t->rpc_server != NULL) {
        t->pending_closes++;
    }
    if (t->http != NULL) {
        dkv_http_server_close(t->http, on_part_closed, t);
        t->http = NULL;
    } else {
        on_part_closed(t);
    }
    if (t->rpc_client != NULL) {
        dkv_rpc_client_close(t->rpc_client, on_part_closed, t);
        t->rpc_client = NULL;
    }
    if (t->rpc_server != NULL) {
        dkv_rpc_server_close(t->rpc_server, on_part_closed, t);
        t->rpc_server = NULL;
    }
}

static void on_drained(void *arg)
{
    thread_finish(arg);
}

static void on_drain_timeout(uv_timer_t *timer)
{
    io_thread_t *t = timer->data;
    DKV_LOG_WARN("io thread %u: %zu connection(s) still busy after the shutdown timeout; closing",
                 t->idx, t->http != NULL ? dkv_http_server_connections(t->http) : (size_t)0);
    thread_finish(t);
}

static void on_stop_async(uv_async_t *a)
{
    io_thread_t *t = a->data;
    if (t->router != NULL) {
        dkv_router_stop(t->router); /* waiting admin calls answer now, not at their timeout */
    }
    if (t->http == NULL || t->node->signals_seen > 1) {
        thread_finish(t);
        return;
    }
    uv_timer_start(&t->drain_timer, on_drain_timeout, t->node->conf.shutdown_timeout_ms, 0);
    dkv_http_server_stop(t->http, on_drained, t);
}

/* ---- per-thread start ---- */

static int sync_wal_cb(void *arg)
{
    return dkv_store_sync_wal(arg);
}

static int rpc_send(void *ctx, uint32_t peer, const dkv_rpc_call_t *call, dkv_rpc_reply_cb cb,
                    void *arg)
{
    return dkv_rpc_client_call(ctx, peer, call, cb, arg);
}

/* Peers' clock offsets (cluster/skew.h) are measured this often, and an estimate older than
 * CLOCK_SAMPLE_TTL_MS no longer counts as evidence. */
#define CLOCK_PING_INTERVAL_MS 1000u
#define CLOCK_SAMPLE_TTL_MS (5u * CLOCK_PING_INTERVAL_MS)
/* Per-request timeout of the rebuild's and anti-entropy's RPC clients, at least: a peer serves
 * their bulk reads at background priority (rpc/server.c), one at a time per connection, so under
 * client load a request may wait behind the ones sent before it; nobody waits for the answer. */
#define BACKGROUND_RPC_TIMEOUT_MS 10000u

/* Options of every RPC client of the node: I/O loops, hint replay and rebuild. */
static dkv_rpc_client_opts_t rpc_client_opts(const dkv_conf_t *conf)
{
    /* Half the peers' server idle timeout: the client, which knows when nothing is in flight,
     * closes an unused connection before the server would (docs/protocol.md §7). */
    dkv_rpc_client_opts_t o = {.request_timeout_ms = conf->replica_timeout_ms,
                               .breaker_failures = conf->breaker_failures,
                               .breaker_cooldown_ms = conf->breaker_cooldown_ms,
                               .max_frame_bytes = dkv_rpc_frame_limit(conf->max_body_bytes),
                               .idle_timeout_ms = conf->peer_idle_timeout_ms / 2};
    return o;
}

/* rpc_client_opts() for a background client (rebuild, anti-entropy). */
static dkv_rpc_client_opts_t background_rpc_client_opts(const dkv_conf_t *conf)
{
    dkv_rpc_client_opts_t o = rpc_client_opts(conf);
    if (o.request_timeout_ms < BACKGROUND_RPC_TIMEOUT_MS) {
        o.request_timeout_ms = BACKGROUND_RPC_TIMEOUT_MS;
    }
    return o;
}

static int thread_setup(io_thread_t *t)
{
    node_t *n = t->node;
    const dkv_conf_t *conf = &n->conf;
    dkv_metrics_loop_t *metrics = dkv_metrics_loop(n->metrics, t->idx);
    if (dkv_ring_size(n->ring) > 1) {
        dkv_rpc_client_opts_t ropts = rpc_client_opts(conf);
        if (t->idx == 0) {
            ropts.ping_interval_ms = CLOCK_PING_INTERVAL_MS; /* one loop measures the clocks */
        }
        ropts.metrics = metrics;
        int rc = dkv_rpc_client_new(&t->loop, t->idx, n->ring, n->self_idx, &n->hlc,
                                    &n->rpc_shared, &ropts, &t->rpc_client);
        if (rc != 0) {
            return rc;
        }
    }
    dkv_rpc_server_opts_t sopts = {.max_frame_bytes = dkv_rpc_frame_limit(conf->max_body_bytes),
                                   .max_connections = conf->max_peer_connections,
                                   .handshake_timeout_ms = conf->first_byte_timeout_ms,
                                   .idle_timeout_ms = conf->peer_idle_timeout_ms};
    dkv_rpc_server_new(&t->loop, n->ring, n->self_idx, n->replica, &n->rpc_shared, &sopts,
                       &t->rpc_server);
    dkv_coord_env_t cenv = {.loop = &t->loop,
                            .replica = n->replica,
                            .ring = n->ring,
                            .self_idx = n->self_idx,
                            .hlc = &n->hlc,
                            .send = t->rpc_client != NULL ? rpc_send : NULL,
                            .send_ctx = t->rpc_client,
                            .read_repair = conf->read_repair,
                            .hints = n->hints,
                            .stats = &n->coord_stats,
                            .read_fanout = conf->read_speculative ? DKV_COORD_READ_SPECULATIVE
                                                                  : DKV_COORD_READ_ALL,
                            .speculative_retry_ms = conf->speculative_retry_ms,
                            .replica_timeout_ms = conf->replica_timeout_ms};
    dkv_coord_new(&cenv, &t->coord);
    dkv_router_env_t renv = {.coord = t->coord,
                             .store = n->store,
                             .ring = n->ring,
                             .replication_factor = conf->replication_factor,
                             .self_url = conf->self,
                             .start_ms = n->start_ms,
                             .rpc_shared = &n->rpc_shared,
                             .n_loops = n->n_threads,
                             .self_idx = n->self_idx,
                             .loop = &t->loop,
                             .hints = n->hints,
                             .rebuild = n->rebuild,
                             .ae = n->ae,
                             .identity = n->identity,
                             .replica = n->replica,
                             .hlc = &n->hlc,
                             .max_clock_offset_ms = conf->max_clock_offset_ms,
                             .coord_stats = &n->coord_stats,
                             .backup_dir = conf->backup_dir[0] != '\0' ? conf->backup_dir : NULL,
                             .read_repair = conf->read_repair && dkv_ring_size(n->ring) > 1,
                             .metrics = n->metrics,
                             .rpc_client = t->rpc_client,
                             .loop_idx = t->idx};
    dkv_router_new(&renv, &t->router);
    dkv_http_opts_t hopts = {.max_body_bytes = conf->max_body_bytes,
                             .max_header_bytes = conf->max_header_bytes,
                             .idle_timeout_ms = conf->idle_timeout_ms,
                             .first_byte_timeout_ms = conf->first_byte_timeout_ms,
                             .request_timeout_ms = conf->request_timeout_ms,
                             .max_inflight = conf->max_inflight,
                             .max_connections = conf->max_connections,
                             .conn_count = &n->conn_count,
                             .before_flush = sync_wal_cb,
                             .before_flush_arg = n->store,
                             /* an acknowledgement of a coordinator PUT is judged by its own
                              * local write, which an earlier sync may have failed */
                             .write_outcome = dkv_store_write_outcome,
                             .foreign_first_byte = DKV_RPC_MAGIC,
                             .foreign_reserve = conf->max_peer_connections,
                             .foreign_cb = dkv_rpc_server_adopt,
                             .foreign_arg = t->rpc_server,
                             .metrics = metrics};
    return dkv_http_server_start(&t->loop, conf->listen_host, conf->listen_port,
                                 n->n_threads > 1, &hopts, t->router, &t->http);
}

/* Write batching (store/store.h): the writes of a loop iteration are one RocksDB write, made by
 * the responses' WAL sync (http/ before_flush, rpc/server.c) or, when nothing was answered in
 * the iteration (e.g. a PUT waiting for its replicas), here, before the loop sleeps: nothing
 * stays pending, invisible to the other threads, while the loop waits. An error here reaches
 * the next sync of this thread, which then acknowledges nothing. */
static void on_batch_prepare(uv_prepare_t *h)
{
    (void)h;
    dkv_store_write_batch();
}

static void thread_main(void *arg)
{
    io_thread_t *t = arg;
    char name[16];
    snprintf(name, sizeof(name), "dkv-io%u", t->idx);
    dkv_thread_set_name(name);
    dkv_store_thread_init();
    uv_loop_init(&t->loop);
    uv_async_init(&t->loop, &t->stop_async, on_stop_async);
    t->stop_async.data = t;
    uv_timer_init(&t->loop, &t->drain_timer);
    t->drain_timer.data = t;
    uv_prepare_init(&t->loop, &t->batch_prepare);
    uv_prepare_start(&t->batch_prepare, on_batch_prepare);
    uv_unref((uv_handle_t *)&t->batch_prepare); /* never keeps the loop alive by itself */
    dkv_store_thread_batching(true);
    t->start_rc = thread_setup(t);
    uv_sem_post(&t->node->started);
    if (t->start_rc != 0) {
        thread_finish(t);
    }
    uv_run(&t->loop, UV_RUN_DEFAULT);
    dkv_router_free(t->router);
    if (t->coord != NULL && dkv_coord_inflight(t->coord) != 0) {
        DKV_LOG_WARN("io thread %u: %zu operation(s) abandoned at shutdown", t->idx,
                     dkv_coord_inflight(t->coord));
    }
    dkv_coord_free(t->coord);
    uv_run(&t->loop, UV_RUN_DEFAULT); /* the coordinator's timer closes (speculative reads) */
    /* Writes made after the last response (read repair, a PUT whose client left) are stored
     * before the thread ends: dkv_store_close() must find no batch pending. */
    if (dkv_store_sync_wal(t->node->store) != 0) {
        DKV_LOG_WARN("io thread %u: the last writes could not be stored at shutdown", t->idx);
    }
    dkv_store_thread_batching(false);
    int rc = uv_loop_close(&t->loop);
    if (rc != 0) {
        DKV_LOG_WARN("io thread %u: loop closed with open handles: %s", t->idx, uv_strerror(rc));
    }
}

/* ---- storage errors ---- */

static void on_resume_timer(uv_timer_t *timer)
{
    node_t *n = timer->data;
    dkv_store_resume(n->store, STORE_LOG_INTERVAL_MS);
}

/* ---- clock ---- */

/*
 * Starts the clock at the bound the previous run persisted in DATA/hlc (cluster/hlc.h), after
 * waiting out the part of it that would put the first timestamps too far ahead of the peers'
 * clocks, and persists the next bound. @return 0; an error (logged): the node must not start.
 */
static int start_clock(node_t *n)
{
    uint64_t prev = 0;
    int rc = dkv_hlc_file_init(&n->hlc_file, n->conf.data_dir);
    if (rc == 0) {
        rc = dkv_hlc_file_load(&n->hlc_file, &prev);
    }
    if (rc != 0) {
        DKV_LOG_ERROR("refusing to start: cannot read the clock's upper bound %s/hlc: %s (if it "
                      "is damaged, remove it: new timestamps then start at the wall clock and "
                      "may order below ones this node issued before)",
                      n->conf.data_dir, dkv_strerror(rc));
        return rc;
    }
    uint64_t wall = dkv_hlc_system_clock_ms(NULL);
    /* Wait until the wall clock passes the previous bound (at most the window, 1 s): starting
     * above it while it is ahead would stamp new writes ahead of the other coordinators' clocks,
     * and their later writes would lose. A bound far ahead (the wall clock stepped back) is not
     * waited for. */
    uint64_t tolerance = 0;
    uint64_t wait = dkv_hlc_bound_wait_ms(prev, wall, DKV_HLC_BOUND_WINDOW_MS, tolerance);
    if (wait > 0) {
        DKV_LOG_INFO("waiting %llu ms: the previous run may have issued timestamps up to %llu ms "
                     "ahead of the wall clock",
                     (unsigned long long)wait, (unsigned long long)(prev - wall));
        uv_sleep((unsigned int)wait);
    } else if (prev > wall + tolerance) {
        DKV_LOG_WARN("the clock's persisted upper bound is %llu ms ahead of the wall clock (did "
                     "the wall clock step back?): timestamps continue above it, so they still "
                     "order after every timestamp this node issued before",
                     (unsigned long long)(prev - wall));
    }
    rc = dkv_hlc_bound_start(&n->hlc, prev, DKV_HLC_BOUND_WINDOW_MS, dkv_hlc_file_save,
                             &n->hlc_file);
    if (rc == -ENOSPC) {
        /* A full disk: serve reads; writes fail (507) until the bound can be written. */
        DKV_LOG_WARN("cannot write the clock's upper bound %s/hlc: no space left: writes are "
                     "refused until there is room",
                     n->conf.data_dir);
        rc = 0;
    } else if (rc != 0) {
        DKV_LOG_ERROR("refusing to start: cannot write the clock's upper bound %s/hlc: %s",
                      n->conf.data_dir, dkv_strerror(rc));
    }
    return rc;
}

/* ---- signals ---- */

static void stop_threads(node_t *n)
{
    for (unsigned i = 0; i < n->n_threads; i++) {
        uv_async_send(&n->threads[i].stop_async);
    }
}

static void on_hlc_timer(uv_timer_t *t)
{
    node_t *n = t->data;
    dkv_hlc_bound_tick(&n->hlc); /* a failure is logged by the clock, which stays bounded */
}

/* The main loop returns once these are closed. While the I/O threads drain, a write that needs
 * a later bound extends it itself (dkv_hlc_next). */
static void close_main_handles(node_t *n)
{
    uv_close((uv_handle_t *)&n->sigint, NULL);
    uv_close((uv_handle_t *)&n->sigterm, NULL);
    uv_close((uv_handle_t *)&n->hlc_timer, NULL);
    uv_close((uv_handle_t *)&n->resume_timer, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    node_t *n = h->data;
    n->signals_seen++;
    if (n->signals_seen == 1) {
        DKV_LOG_INFO("received %s: draining connections (up to %llu ms), then stopping",
                     signum == SIGINT ? "SIGINT" : "SIGTERM",
                     (unsigned long long)n->conf.shutdown_timeout_ms);
        close_main_handles(n);
    }
    stop_threads(n);
}

int main(int argc, char **argv)
{
    static node_t node;
    node_t *n = &node;
    char err[512];
    int rc = dkv_conf_parse(argc, argv, &n->conf, err, sizeof(err));
    if (rc == 1) {
        return 0;
    }
    if (rc != 0) {
        fprintf(stderr, "dkv: %s\n", err);
        dkv_conf_cleanup(&n->conf);
        return 2;
    }
    dkv_log_set_level(n->conf.log_level);
    dkv_thread_set_background_enabled(n->conf.background_low_priority);
    signal(SIGPIPE, SIG_IGN);
    int exit_code = 1;
    n->start_ms = dkv_hlc_system_clock_ms(NULL);
    dkv_hlc_init(&n->hlc, NULL, NULL);
    dkv_hlc_set_max_offset(&n->hlc, n->conf.max_clock_offset_ms);

    rc = dkv_ring_new((const char *const *)n->conf.cluster, n->conf.cluster_n, n->conf.vnodes,
                      &n->ring);
    if (rc != 0) {
        fprintf(stderr, "dkv: invalid --cluster: %s\n", dkv_strerror(rc));
        exit_code = 2;
        goto out;
    }
    rc = dkv_ring_index_of(n->ring, n->conf.self);
    if (rc < 0) {
        fprintf(stderr, "dkv: --self %s is not in --cluster\n", n->conf.self);
        exit_code = 2;
        goto out;
    }
    n->self_idx = (uint32_t)rc;
    if (dkv_ring_size(n->ring) > 1) {
        dkv_skew_new(dkv_ring_size(n->ring), n->self_idx, n->conf.max_clock_offset_ms,
                     CLOCK_SAMPLE_TTL_MS, &n->skew);
        n->rpc_shared.skew = n->skew;
    }

    rc = mkdirs(n->conf.data_dir);
    if (rc != 0) {
        DKV_LOG_ERROR("cannot create data directory %s: %s", n->conf.data_dir, dkv_strerror(rc));
        goto out;
    }
    if (n->conf.backup_dir[0] != '\0') {
        rc = mkdirs(n->conf.backup_dir);
        if (rc != 0) {
            DKV_LOG_ERROR("cannot create the backup directory %s: %s", n->conf.backup_dir,
                          dkv_strerror(rc));
            goto out;
        }
    }
    rc = dkv_http_probe_port(n->conf.listen_host, n->conf.listen_port);
    if (rc != 0) {
        DKV_LOG_ERROR("cannot listen on %s:%u: %s", n->conf.listen_host,
                      (unsigned)n->conf.listen_port, dkv_strerror(rc));
        goto out;
    }
    char path[sizeof(n->conf.data_dir) + 16];
    memcpy(path, n->conf.data_dir, strlen(n->conf.data_dir) + 1);
    strcat(path, "/db/CURRENT");
    struct stat st;
    bool db_exists = stat(path, &st) == 0;
    char why[1024] = "";
    rc = dkv_identity_open(n->conf.data_dir, n->ring, n->self_idx, db_exists, why, sizeof(why),
                           &n->identity);
    if (rc != 0) {
        DKV_LOG_ERROR("refusing to start: %s", why);
        exit_code = 2;
        goto out;
    }
    n->rpc_shared.identity = n->identity;
    if (n->conf.cluster_secret_file[0] != '\0') {
        rc = dkv_auth_load(n->conf.cluster_secret_file, why, sizeof(why), &n->auth);
        if (rc != 0) {
            DKV_LOG_ERROR("refusing to start: %s", why);
            exit_code = 2;
            goto out;
        }
        n->rpc_shared.auth = n->auth;
    }
    rc = start_clock(n);
    if (rc != 0) {
        exit_code = 2;
        goto out;
    }
    dkv_store_opts_t sopts = {.block_cache_bytes = n->conf.block_cache_bytes,
                              .row_cache_bytes = n->conf.row_cache_bytes,
                              .fsync = n->conf.fsync,
                              .background_low_priority = n->conf.background_low_priority};
    rc = dkv_store_open(n->conf.data_dir, &sopts, &n->store);
    if (rc != 0) {
        DKV_LOG_ERROR("cannot open the store in %s (see above)", n->conf.data_dir);
        goto out;
    }
    if (dkv_store_has_records(n->store)) {
        dkv_identity_note_data(n->identity);
    }
    dkv_replica_new(n->store, &n->hlc, n->identity, &n->replica);

#ifdef __linux__
    n->n_threads = n->conf.io_threads;
#else
    if (n->conf.io_threads > 1) {
        DKV_LOG_INFO("SO_REUSEPORT load balancing is Linux-only: using one I/O thread");
    }
    n->n_threads = 1;
#endif
    if (n->conf.hinted_handoff && dkv_ring_size(n->ring) > 1) {
        dkv_hints_opts_t hopts = {.window_ms = n->conf.hint_window_ms,
                                  .max_bytes = n->conf.max_hints_bytes,
                                  .replay_bytes_per_s = n->conf.hint_replay_bytes_per_s,
                                  .replay_interval_ms = 200,
                                  /* Past the GC horizon's lag (antientropy.h): see hints.h. */
                                  .max_record_age_ms = n->conf.tombstone_grace_ms +
                                                       n->conf.max_clock_offset_ms,
                                  .rpc = rpc_client_opts(&n->conf),
                                  .rpc_loop_idx = n->n_threads};
        rc = dkv_hints_open(n->store, n->ring, n->self_idx, &n->hlc, &n->rpc_shared, &hopts,
                            &n->hints);
        if (rc == 0) {
            rc = dkv_hints_start(n->hints);
        }
        if (rc != 0) {
            DKV_LOG_ERROR("cannot start hinted handoff: %s", dkv_strerror(rc));
            goto out;
        }
    }
    if (dkv_ring_size(n->ring) > 1 && n->conf.auto_rebuild) {
        dkv_rebuild_opts_t bopts = {.max_bytes_per_s = n->conf.ae_max_bytes_per_s,
                                    .retry_ms = 1000,
                                    .check_ms = 100,
                                    .rpc = background_rpc_client_opts(&n->conf),
                                    .rpc_loop_idx = n->n_threads + 1};
        dkv_rebuild_new(n->replica, n->identity, n->ring, n->self_idx, &n->hlc, &n->rpc_shared,
                        &bopts, &n->rebuild);
        rc = dkv_rebuild_start(n->rebuild);
        if (rc != 0) {
            DKV_LOG_ERROR("cannot start the rebuild thread: %s", dkv_strerror(rc));
            goto out;
        }
    }
    if (dkv_ring_size(n->ring) > 1) {
        dkv_ae_opts_t aopts = {.interval_ms = n->conf.ae_interval_ms,
                               .max_bytes_per_s = n->conf.ae_max_bytes_per_s,
                               .tombstone_grace_ms = n->conf.tombstone_grace_ms,
                               .max_clock_offset_ms = n->conf.max_clock_offset_ms,
                               .exchange_timeout_ms = 600000,
                               .rpc = background_rpc_client_opts(&n->conf),
                               .rpc_loop_idx = n->n_threads + 2};
        dkv_ae_new(n->replica, n->identity, n->ring, n->self_idx, &n->hlc, &n->rpc_shared,
                   &aopts, &n->ae);
        n->rpc_shared.tree_handler = dkv_ae_serve_tree;
        n->rpc_shared.tree_ctx = n->ae;
        rc = dkv_ae_start(n->ae);
        if (rc != 0) {
            DKV_LOG_ERROR("cannot start the anti-entropy thread: %s", dkv_strerror(rc));
            goto out;
        }
    }
    n->threads = dkv_xcalloc(n->n_threads, sizeof(io_thread_t));
    n->metrics = dkv_metrics_new(n->n_threads);
    uv_sem_init(&n->started, 0);
    uv_loop_init(&n->main_loop);
    uv_signal_init(&n->main_loop, &n->sigint);
    uv_signal_init(&n->main_loop, &n->sigterm);
    n->sigint.data = n;
    n->sigterm.data = n;
    uv_signal_start(&n->sigint, on_signal, SIGINT);
    uv_signal_start(&n->sigterm, on_signal, SIGTERM);
    uv_timer_init(&n->main_loop, &n->resume_timer);
    n->resume_timer.data = n;
    uv_timer_start(&n->resume_timer, on_resume_timer, STORE_RESUME_INTERVAL_MS,
                   STORE_RESUME_INTERVAL_MS);
    uv_timer_init(&n->main_loop, &n->hlc_timer);
    n->hlc_timer.data = n;
    uv_timer_start(&n->hlc_timer, on_hlc_timer, DKV_HLC_BOUND_TICK_MS, DKV_HLC_BOUND_TICK_MS);

    unsigned started = 0;
    int start_rc = 0;
    for (unsigned i = 0; i < n->n_threads; i++) {
        io_thread_t *t = &n->threads[i];
        t->node = n;
        t->idx = i;
        if (uv_thread_create(&t->thread, thread_main, t) != 0) {
            start_rc = DKV_EIO;
            break;
        }
        started++;
        uv_sem_wait(&n->started);
        if (t->start_rc != 0) {
            start_rc = t->start_rc;
            break;
        }
    }
    if (start_rc != 0) {
        DKV_LOG_ERROR("cannot start: listening on %s:%u: %s", n->conf.listen_host,
                      (unsigned)n->conf.listen_port, dkv_strerror(start_rc));
        n->signals_seen = 2;
        for (unsigned i = 0; i < started; i++) {
            uv_async_send(&n->threads[i].stop_async);
        }
        close_main_handles(n);
    } else {
        DKV_LOG_INFO("dkv %s node %s (%u of %zu) listening on %s:%u, data in %s, %u I/O "
                     "thread(s), %u vnodes, WAL %s, peers %s",
                     DKV_VERSION, n->conf.self, n->self_idx + 1, dkv_ring_size(n->ring),
                     n->conf.listen_host, (unsigned)n->conf.listen_port, n->conf.data_dir,
                     n->n_threads, n->conf.vnodes,
                     n->conf.fsync ? "fsync per write" : "write(2) per write",
                     n->auth != NULL ? "authenticated (--cluster-secret-file)"
                                     : "not authenticated (loopback only)");
    }
    uv_run(&n->main_loop, UV_RUN_DEFAULT);
    for (unsigned i = 0; i < started; i++) {
        uv_thread_join(&n->threads[i].thread);
    }
    uv_loop_close(&n->main_loop);
    uv_sem_destroy(&n->started);
    free(n->threads);
    exit_code = start_rc == 0 ? 0 : 1;
out:
    dkv_hints_free(n->hints); /* stops the replay thread before the store closes */
    dkv_rebuild_free(n->rebuild);
    dkv_ae_free(n->ae);
    dkv_replica_free(n->replica);
    dkv_store_close(n->store);
    dkv_hlc_cleanup(&n->hlc);
    dkv_skew_free(n->skew);
    dkv_identity_free(n->identity);
    dkv_auth_free(n->auth);
    if (exit_code == 0) {
        DKV_LOG_INFO("stopped cleanly: store closed, write-ahead log flushed");
    }
    dkv_ring_free(n->ring);
    dkv_metrics_free(n->metrics);
    dkv_conf_cleanup(&n->conf);
    return exit_code;
}
