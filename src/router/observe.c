/*
 * Observability endpoints: GET /metrics (Prometheus text format 0.0.4, metrics/metrics.h writes
 * it), GET /v0/health (liveness), GET /v0/ready (readiness for default-quorum requests) and the
 * status page GET / (a static page that polls every node's /v0/status and /metrics itself).
 * A scrape reads every I/O loop's counters with relaxed loads and the other modules' figures
 * through their getters; it runs on the loop that received it and costs tens of microseconds.
 */
#include "router/router_int.h"

#include "cluster/hlc.h"
#include "common/conf.h"
#include "router/status_page_gen.h" /* generated: the page's bytes and CSP hashes */

#include <inttypes.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEXT "text/plain; charset=utf-8"

static void reply_static(dkv_router_reply_cb cb, void *arg, int status, const char *text)
{
    dkv_response_t resp = {.status = status, .content_type = TEXT, .body = dkv_slice_str(text)};
    cb(arg, &resp);
}

/* Answers with `b` (taken over); `cors`: a read-only observability answer (ROUTER_CORS_HEADER). */
static void reply_buf(dkv_router_reply_cb cb, void *arg, int status, dkv_buf_t *b,
                      const char *content_type, bool cors)
{
    dkv_response_t resp = {.status = status,
                           .content_type = content_type,
                           .extra_headers = cors ? ROUTER_CORS_HEADER : NULL};
    resp.body = dkv_buf_slice(b);
    resp.body_owner.len = b->len;
    resp.body_owner.ptr = dkv_buf_steal(b);
    resp.body_owner.free_fn = (void (*)(uint8_t *))free;
    cb(arg, &resp);
}

/* ---- /metrics ---- */

/* A family whose samples all carry one label `peer` (the peer's URL). */
static void per_peer(dkv_buf_t *b, const dkv_router_t *r, const char *name, const char *type,
                     const char *help, const uint64_t *values)
{
    dkv_prom_family(b, name, type, help);
    for (size_t i = 0; i < dkv_ring_size(r->env.ring); i++) {
        if (i == r->env.self_idx) {
            continue;
        }
        dkv_prom_label_t l = {"peer", dkv_ring_url(r->env.ring, i)};
        dkv_prom_sample(b, name, &l, 1, values[i]);
    }
}

static void one(dkv_buf_t *b, const char *name, const char *type, const char *help, uint64_t v)
{
    dkv_prom_family(b, name, type, help);
    dkv_prom_sample(b, name, NULL, 0, v);
}

/* HTTP and replica-request counters, summed over the I/O loops. */
static void loop_metrics(const dkv_router_t *r, dkv_buf_t *b)
{
    dkv_metrics_t *m = r->env.metrics;
    unsigned n = dkv_metrics_loops(m);
    size_t n_nodes = dkv_ring_size(r->env.ring);

    dkv_prom_family(b, "dkv_http_requests_total", "counter",
                    "HTTP responses sent, by request method and status (combinations never seen "
                    "are left out)");
    for (unsigned me = 0; me < DKV_METRICS_N_METHODS; me++) {
        for (unsigned st = 0; st < DKV_METRICS_N_STATUSES; st++) {
            uint64_t v = 0;
            for (unsigned l = 0; l < n; l++) {
                v += dkv_metrics_read(&dkv_metrics_loop(m, l)->http_requests[me][st]);
            }
            if (v == 0) {
                continue;
            }
            dkv_prom_label_t ls[2] = {{"method", dkv_metrics_method_name(me)},
                                      {"status", dkv_metrics_status_name(st)}};
            dkv_prom_sample(b, "dkv_http_requests_total", ls, 2, v);
        }
    }
    uint64_t inflight = 0;
    uint64_t overloaded = 0;
    uint64_t unacked = 0;
    for (unsigned l = 0; l < n; l++) {
        dkv_metrics_loop_t *lm = dkv_metrics_loop(m, l);
        inflight += dkv_metrics_read(&lm->http_inflight);
        overloaded += dkv_metrics_read(&lm->http_overloaded);
        unacked += dkv_metrics_read(&lm->wal_flush_failures);
    }
    one(b, "dkv_http_requests_in_flight", "gauge",
        "HTTP requests dispatched and not answered yet (--max-inflight per I/O thread)", inflight);
    one(b, "dkv_http_overload_rejections_total", "counter",
        "503 Service Unavailable answers for --max-inflight", overloaded);
    one(b, "dkv_http_unflushed_write_rejections_total", "counter",
        "write acknowledgements replaced by 507 because the write-ahead-log flush failed",
        unacked);

    static const char *const op_names[DKV_METRICS_N_OPS] = {"", "get", "put", "delete", "range"};
    dkv_prom_family(b, "dkv_http_request_duration_seconds", "histogram",
                    "entity operations from the complete request to the response (range: to its "
                    "last chunk)");
    for (unsigned op = DKV_METRICS_OP_GET; op < DKV_METRICS_N_OPS; op++) {
        dkv_metrics_hist_sum_t h = {0};
        for (unsigned l = 0; l < n; l++) {
            dkv_metrics_hist_accumulate(&h, &dkv_metrics_loop(m, l)->op_latency[op]);
        }
        dkv_prom_label_t lab = {"op", op_names[op]};
        dkv_prom_histogram(b, "dkv_http_request_duration_seconds", &lab, 1, &h);
    }
    if (n_nodes <= 1) {
        return;
    }

    static const char *const outcomes[DKV_METRICS_N_RPC_OUTCOMES] = {
        "ok", "not_ready", "timeout", "unavailable", "error", "rejected"};
    dkv_prom_family(b, "dkv_replica_requests_total", "counter",
                    "replica requests of the I/O threads to peers (coordinated operations and "
                    "read repair) by outcome: ok (stored, found or absent), not_ready, timeout, "
                    "unavailable (refused, reset), error, rejected (never sent: breaker open)");
    for (size_t p = 0; p < n_nodes; p++) {
        if (p == r->env.self_idx) {
            continue;
        }
        for (unsigned o = 0; o < DKV_METRICS_N_RPC_OUTCOMES; o++) {
            uint64_t v = 0;
            for (unsigned l = 0; l < n; l++) {
                v += dkv_metrics_read(&dkv_metrics_loop(m, l)->rpc_requests[p][o]);
            }
            dkv_prom_label_t ls[2] = {{"peer", dkv_ring_url(r->env.ring, p)},
                                      {"outcome", outcomes[o]}};
            dkv_prom_sample(b, "dkv_replica_requests_total", ls, 2, v);
        }
    }
    dkv_prom_family(b, "dkv_replica_request_duration_seconds", "histogram",
                    "replica requests from queueing to their reply or failure");
    for (size_t p = 0; p < n_nodes; p++) {
        if (p == r->env.self_idx) {
            continue;
        }
        dkv_metrics_hist_sum_t h = {0};
        for (unsigned l = 0; l < n; l++) {
            dkv_metrics_hist_accumulate(&h, &dkv_metrics_loop(m, l)->rpc_latency[p]);
        }
        dkv_prom_label_t lab = {"peer", dkv_ring_url(r->env.ring, p)};
        dkv_prom_histogram(b, "dkv_replica_request_duration_seconds", &lab, 1, &h);
    }
    static const char *const states[3] = {"closed", "open", "half_open"};
    dkv_prom_family(b, "dkv_peer_breaker_transitions_total", "counter",
                    "circuit breaker transitions of the I/O threads' clients, by new state");
    for (size_t p = 0; p < n_nodes; p++) {
        if (p == r->env.self_idx) {
            continue;
        }
        for (unsigned s = 0; s < 3; s++) {
            uint64_t v = 0;
            for (unsigned l = 0; l < n; l++) {
                v += dkv_metrics_read(&dkv_metrics_loop(m, l)->breaker_transitions[p][s]);
            }
            dkv_prom_label_t ls[2] = {{"peer", dkv_ring_url(r->env.ring, p)}, {"to", states[s]}};
            dkv_prom_sample(b, "dkv_peer_breaker_transitions_total", ls, 2, v);
        }
    }
}

/* Breaker state and connection per peer, merged over the I/O loops as the status page does. */
static void peer_metrics(const dkv_router_t *r, dkv_buf_t *b)
{
    size_t n_nodes = dkv_ring_size(r->env.ring);
    uint64_t state[DKV_RING_MAX_NODES] = {0};
    uint64_t connected[DKV_RING_MAX_NODES] = {0};
    static const unsigned severity[3] = {0, 2, 1}; /* closed < half-open < open */
    for (size_t p = 0; p < n_nodes; p++) {
        for (unsigned l = 0; l < r->env.n_loops; l++) {
            dkv_rpc_peer_view_t v;
            dkv_rpc_peer_view(r->env.rpc_shared, l, (uint32_t)p, &v);
            if (severity[v.breaker] > severity[state[p]]) {
                state[p] = v.breaker;
            }
            connected[p] = connected[p] || v.connected;
        }
    }
    per_peer(b, r, "dkv_peer_breaker_state", "gauge",
             "circuit breaker of the peer, the worst over the I/O threads: 0 closed, 1 open, "
             "2 half-open",
             state);
    per_peer(b, r, "dkv_peer_connected", "gauge",
             "1 when some I/O thread holds a connection with a completed handshake to the peer",
             connected);
}

static void hints_metrics(const dkv_router_t *r, dkv_buf_t *b)
{
    size_t n_nodes = dkv_ring_size(r->env.ring);
    dkv_hints_target_stats_t st[DKV_RING_MAX_NODES] = {{0}};
    uint64_t v[5][DKV_RING_MAX_NODES] = {{0}};
    for (size_t p = 0; p < n_nodes; p++) {
        st[p] = dkv_hints_target_stats(r->env.hints, (uint32_t)p);
        v[0][p] = st[p].count;
        v[1][p] = st[p].bytes;
        v[2][p] = st[p].written;
        v[3][p] = st[p].replayed;
        v[4][p] = st[p].replay_failures;
    }
    per_peer(b, r, "dkv_hints_pending", "gauge", "hints waiting for delivery to the peer", v[0]);
    per_peer(b, r, "dkv_hints_pending_bytes", "gauge", "bytes of the hints waiting for the peer",
             v[1]);
    per_peer(b, r, "dkv_hints_written_total", "counter", "hints stored for the peer", v[2]);
    per_peer(b, r, "dkv_hints_replayed_total", "counter", "hints delivered to the peer", v[3]);
    per_peer(b, r, "dkv_hints_replay_failures_total", "counter",
             "hint replay batches to the peer that stopped at a failure", v[4]);
    dkv_prom_family(b, "dkv_hints_dropped_total", "counter",
                    "hints for the peer not stored (window: its oldest hint is past "
                    "--hint-window-ms; quota: --max-hints-bytes) or not replayed (expired: older "
                    "than the tombstone grace)");
    for (size_t p = 0; p < n_nodes; p++) {
        if (p == r->env.self_idx) {
            continue;
        }
        const char *url = dkv_ring_url(r->env.ring, p);
        dkv_prom_label_t ls[2] = {{"peer", url}, {"reason", "window"}};
        dkv_prom_sample(b, "dkv_hints_dropped_total", ls, 2, st[p].dropped_window);
        ls[1].value = "quota";
        dkv_prom_sample(b, "dkv_hints_dropped_total", ls, 2, st[p].dropped_quota);
        ls[1].value = "expired";
        dkv_prom_sample(b, "dkv_hints_dropped_total", ls, 2, st[p].dropped_expired);
    }
}

static void ae_metrics(const dkv_router_t *r, dkv_buf_t *b)
{
    size_t n_nodes = dkv_ring_size(r->env.ring);
    dkv_ae_stats_t *st = dkv_xmalloc(sizeof(*st));
    dkv_ae_stats(r->env.ae, st);
    one(b, "dkv_antientropy_rounds_started_total", "counter", "anti-entropy rounds started",
        st->rounds_started);
    one(b, "dkv_antientropy_rounds_total", "counter", "anti-entropy rounds finished",
        st->rounds_done);
    one(b, "dkv_antientropy_dirty_segments", "gauge",
        "hash-tree segments written since their last refresh", st->dirty_segments);
    one(b, "dkv_antientropy_tree_records", "gauge",
        "records (tombstones included) in the hash trees as of the last refresh",
        st->tree_records);
    one(b, "dkv_antientropy_tree_tombstones", "gauge",
        "tombstones in the hash trees as of the last refresh", st->tree_tombstones);
    one(b, "dkv_tombstones_purged_total", "counter",
        "tombstones purged by the repair-gated GC since start-up", st->tombstones_purged);
    one(b, "dkv_late_tombstones_dropped_total", "counter",
        "already purged tombstones pushed back by a peer and dropped", st->late_tombstones_dropped);
    uint64_t v[DKV_RING_MAX_NODES] = {0};
    for (size_t p = 0; p < n_nodes; p++) {
        v[p] = st->peers[p].segments_compared;
    }
    per_peer(b, r, "dkv_antientropy_segments_compared_total", "counter",
             "hash-tree segments whose entries were compared with the peer", v);
    for (size_t p = 0; p < n_nodes; p++) {
        v[p] = st->peers[p].keys_repaired;
    }
    per_peer(b, r, "dkv_antientropy_keys_repaired_total", "counter",
             "keys found different with the peer and reconciled", v);
    for (size_t p = 0; p < n_nodes; p++) {
        v[p] = st->peers[p].last_ok_start_ms / 1000;
    }
    per_peer(b, r, "dkv_antientropy_last_complete_exchange_timestamp_seconds", "gauge",
             "start (Unix time) of the last complete exchange with the peer; 0 = none", v);
    static const char *const fams[3][2] = {
        {"dkv_antientropy_exchanges_total", "exchanges with the peer, by result"},
        {"dkv_antientropy_records_total", "records written to (sent) or from (received) the peer"},
        {"dkv_antientropy_bytes_total", "exchange bytes sent to and received from the peer"}};
    for (unsigned f = 0; f < 3; f++) {
        dkv_prom_family(b, fams[f][0], "counter", fams[f][1]);
        for (size_t p = 0; p < n_nodes; p++) {
            if (p == r->env.self_idx) {
                continue;
            }
            const dkv_ae_peer_stats_t *ps = &st->peers[p];
            const char *url = dkv_ring_url(r->env.ring, p);
            uint64_t a = f == 0 ? ps->exchanges_ok : f == 1 ? ps->records_sent : ps->bytes_sent;
            uint64_t c = f == 0   ? ps->exchanges_failed
                         : f == 1 ? ps->records_received
                                  : ps->bytes_received;
            dkv_prom_label_t ls[2] = {{"peer", url}, {f == 0 ? "result" : "direction", ""}};
            ls[1].value = f == 0 ? "ok" : "sent";
            dkv_prom_sample(b, fams[f][0], ls, 2, a);
            ls[1].value = f == 0 ? "failed" : "received";
            dkv_prom_sample(b, fams[f][0], ls, 2, c);
        }
    }
    free(st);
}

static void store_metrics(const dkv_router_t *r, dkv_buf_t *b)
{
    dkv_store_stats_t st;
    dkv_store_stats(r->env.store, &st);
    dkv_store_health_t h;
    dkv_store_health(r->env.store, &h);
    one(b, "dkv_store_writable", "gauge",
        "1 while the store takes writes; 0 after a storage error (disk full) until it reopens",
        h.writable ? 1 : 0);
    one(b, "dkv_store_write_errors_total", "counter",
        "writes and write-ahead-log flushes refused or failed", h.write_errors);
    one(b, "dkv_wal_syncs_total", "counter",
        "write-ahead-log buffer flushes (one write(2), or fsync with --fsync, per loop iteration "
        "that wrote)",
        st.wal_syncs);
    one(b, "dkv_wal_synced_bytes_total", "counter",
        "write-batch bytes those flushes made durable", st.wal_bytes);
    one(b, "dkv_rocksdb_block_cache_usage_bytes", "gauge", "block cache memory in use",
        st.block_cache_usage_bytes);
    one(b, "dkv_rocksdb_block_cache_pinned_bytes", "gauge", "block cache memory pinned by readers",
        st.block_cache_pinned_bytes);
    one(b, "dkv_rocksdb_block_cache_capacity_bytes", "gauge", "block cache capacity",
        st.block_cache_capacity_bytes);
    one(b, "dkv_rocksdb_row_cache_usage_bytes", "gauge", "row cache memory in use",
        st.row_cache_usage_bytes);
    one(b, "dkv_rocksdb_row_cache_capacity_bytes", "gauge",
        "row cache capacity (0: --row-cache-bytes 0)", st.row_cache_capacity_bytes);
    one(b, "dkv_filesystem_size_bytes", "gauge",
        "size of the filesystem holding the data directory (statvfs)", st.fs_size_bytes);
    one(b, "dkv_filesystem_avail_bytes", "gauge",
        "bytes of that filesystem free for an unprivileged writer (statvfs f_bavail)",
        st.fs_avail_bytes);
    one(b, "dkv_rocksdb_memtable_limit_bytes", "gauge",
        "the most all memtables may hold (write buffer size x count, all column families)",
        st.memtable_limit_bytes);
    static const struct {
        const char *name;
        const char *help;
        size_t off;
    } props[] = {
        {"dkv_rocksdb_memtable_bytes", "rocksdb.cur-size-all-mem-tables",
         offsetof(dkv_store_cf_stats_t, memtable_bytes)},
        {"dkv_rocksdb_sst_files_bytes", "rocksdb.total-sst-files-size (every version)",
         offsetof(dkv_store_cf_stats_t, sst_total_bytes)},
        {"dkv_rocksdb_live_sst_files_bytes", "rocksdb.live-sst-files-size (current version)",
         offsetof(dkv_store_cf_stats_t, sst_live_bytes)},
        {"dkv_rocksdb_pending_compaction_bytes", "rocksdb.estimate-pending-compaction-bytes",
         offsetof(dkv_store_cf_stats_t, pending_compaction_bytes)},
        {"dkv_rocksdb_estimated_keys", "rocksdb.estimate-num-keys",
         offsetof(dkv_store_cf_stats_t, keys_estimate)},
        {"dkv_rocksdb_live_versions", "rocksdb.num-live-versions",
         offsetof(dkv_store_cf_stats_t, live_versions)},
        {"dkv_rocksdb_table_readers_bytes",
         "rocksdb.estimate-table-readers-mem (index and filter blocks outside the block cache)",
         offsetof(dkv_store_cf_stats_t, table_readers_bytes)},
    };
    for (size_t i = 0; i < sizeof(props) / sizeof(props[0]); i++) {
        dkv_prom_family(b, props[i].name, "gauge", props[i].help);
        for (unsigned cf = 0; cf < DKV_STORE_N_CFS; cf++) {
            uint64_t v;
            memcpy(&v, (const char *)&st.cf[cf] + props[i].off, sizeof(v));
            dkv_prom_label_t l = {"cf", dkv_store_cf_name(cf)};
            dkv_prom_sample(b, props[i].name, &l, 1, v);
        }
    }
}

static void node_metrics(const dkv_router_t *r, dkv_buf_t *b)
{
    dkv_prom_family(b, "dkv_build_info", "gauge", "the running dkv version");
    dkv_prom_label_t vl = {"version", DKV_VERSION};
    dkv_prom_sample(b, "dkv_build_info", &vl, 1, 1);
    dkv_prom_family(b, "process_start_time_seconds", "gauge",
                    "start time of the process (Unix time)");
    dkv_prom_sample(b, "process_start_time_seconds", NULL, 0, r->env.start_ms / 1000);
    if (r->env.identity != NULL) {
        dkv_node_state_t cur = dkv_identity_state(r->env.identity);
        dkv_prom_family(b, "dkv_node_state", "gauge",
                        "1 for the node's readiness state (cluster/identity.h): ready, joining "
                        "(empty, waiting for peers) or rebuilding (its data was lost)");
        for (int s = DKV_NODE_READY; s <= DKV_NODE_REBUILDING; s++) {
            dkv_prom_label_t l = {"state", dkv_node_state_name((dkv_node_state_t)s)};
            dkv_prom_sample(b, "dkv_node_state", &l, 1, cur == (dkv_node_state_t)s ? 1 : 0);
        }
    }
    if (r->env.rebuild != NULL) {
        bool running = false;
        double fraction = 0;
        dkv_rebuild_progress(r->env.rebuild, &running, &fraction);
        dkv_prom_family(b, "dkv_rebuild_progress_ratio", "gauge",
                        "rebuild of lost data: records received over the peers' record counts "
                        "while dkv_node_state{state=\"rebuilding\"} is 1 (0 until estimated); 1 "
                        "after a completed rebuild; 0 when none ran");
        dkv_prom_sample_double(b, "dkv_rebuild_progress_ratio", NULL, 0, fraction);
    }
    if (r->env.coord_stats != NULL) {
        dkv_coord_stats_t *cs = r->env.coord_stats;
        one(b, "dkv_read_repair_reads_total", "counter", "GETs whose replicas disagreed",
            atomic_load_explicit(&cs->read_repair_reads, memory_order_relaxed));
        one(b, "dkv_read_repair_writes_total", "counter",
            "read repair writes sent (one per stale replica)",
            atomic_load_explicit(&cs->read_repair_writes, memory_order_relaxed));
        one(b, "dkv_read_repair_failures_total", "counter", "read repair writes that failed",
            atomic_load_explicit(&cs->read_repair_failures, memory_order_relaxed));
        one(b, "dkv_hints_not_stored_total", "counter",
            "failed replica writes left without a hint",
            atomic_load_explicit(&cs->hints_not_stored, memory_order_relaxed));
        one(b, "dkv_speculative_retries_total", "counter",
            "speculative GETs: replicas asked beyond the first ack because one was slow or "
            "failed",
            atomic_load_explicit(&cs->spec_retries, memory_order_relaxed));
        one(b, "dkv_digest_fetches_total", "counter",
            "speculative GETs: data read again from a replica whose digest was newer",
            atomic_load_explicit(&cs->digest_fetches, memory_order_relaxed));
    }
    if (r->env.replica != NULL) {
        one(b, "dkv_clock_future_refused_total", "counter",
            "replica writes refused for a timestamp past --max-clock-offset-ms",
            dkv_replica_future_refused(r->env.replica));
    }
}

/* The ring, the same on every node: its node list (every URL, this node's included) with each
 * node's ownership, so a client learns the cluster and its placement from any one node. */
static void ring_metrics(const dkv_router_t *r, dkv_buf_t *b)
{
    size_t n = dkv_ring_size(r->env.ring);
    double shares[DKV_RING_MAX_NODES];
    dkv_ring_primary_shares(r->env.ring, shares);
    one(b, "dkv_ring_vnodes", "gauge", "tokens per node on the consistent-hash ring (--vnodes)",
        dkv_ring_vnodes(r->env.ring));
    dkv_prom_family(b, "dkv_ring_primary_share", "gauge",
                    "fraction of the key hash space whose first replica is the node (its share "
                    "of keys written with from=1), for every node of the cluster by URL");
    for (size_t i = 0; i < n; i++) {
        dkv_prom_label_t l = {"node", dkv_ring_url(r->env.ring, i)};
        dkv_prom_sample_double(b, "dkv_ring_primary_share", &l, 1, shares[i]);
    }
}

/* Appends the whole exposition of this node to `b`. */
static void metrics_page(const dkv_router_t *r, dkv_buf_t *b)
{
    dkv_buf_reserve(b, 32u << 10);
    node_metrics(r, b);
    ring_metrics(r, b);
    if (r->env.metrics != NULL) {
        loop_metrics(r, b);
    }
    if (r->env.rpc_shared != NULL && dkv_ring_size(r->env.ring) > 1) {
        peer_metrics(r, b);
    }
    if (r->env.hints != NULL) {
        hints_metrics(r, b);
    }
    if (r->env.ae != NULL) {
        ae_metrics(r, b);
    }
    if (r->env.store != NULL) {
        store_metrics(r, b);
    }
}

void router_handle_metrics(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                           dkv_router_reply_cb cb, void *arg)
{
    (void)q;
    if (req->method != DKV_METHOD_GET) {
        reply_static(cb, arg, 405, "Method Not Allowed: use GET\n");
        return;
    }
    dkv_buf_t b;
    dkv_buf_init(&b);
    metrics_page(r, &b);
    reply_buf(cb, arg, 200, &b, DKV_PROM_CONTENT_TYPE, true);
}

/* ---- health and readiness ---- */

void router_handle_health(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                          dkv_router_reply_cb cb, void *arg)
{
    (void)r;
    (void)q;
    if (req->method != DKV_METHOD_GET) {
        reply_static(cb, arg, 405, "Method Not Allowed: use GET\n");
        return;
    }
    dkv_response_t resp = {.status = 200,
                           .content_type = TEXT,
                           .extra_headers = ROUTER_CORS_HEADER,
                           .body = dkv_slice_str("OK\n")};
    cb(arg, &resp);
}

/* ---- the status page ---- */

/*
 * The page's script and style are inline, so the policy allows exactly those two by hash (CSP
 * Level 2 hash sources) and nothing else from anywhere: no other script, style, frame, form or
 * base URL. connect-src * lets its fetch() reach the other nodes, whose URLs only the cluster
 * list knows; img-src data: is its empty favicon. no-cache: a browser revalidates, so an upgraded
 * node's page is seen at once.
 */
/* clang-format off: one directive per line reads better than the reflowed literal */
#define PAGE_CSP                                                                                   \
    "default-src 'none'; "                                                                         \
    "script-src 'sha256-" DKV_STATUS_PAGE_SCRIPT_SHA256 "'; "                                      \
    "style-src 'sha256-" DKV_STATUS_PAGE_STYLE_SHA256 "'; "                                        \
    "connect-src *; "                                                                              \
    "img-src data:; "                                                                              \
    "base-uri 'none'; "                                                                            \
    "form-action 'none'; "                                                                         \
    "frame-ancestors 'none'"
#define PAGE_HEADERS                                                                               \
    "Cache-Control: no-cache\r\n"                                                                  \
    "Content-Security-Policy: " PAGE_CSP "\r\n"                                                    \
    "X-Content-Type-Options: nosniff\r\n"                                                          \
    "Referrer-Policy: no-referrer\r\n"
/* clang-format on */

void router_handle_page(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                        dkv_router_reply_cb cb, void *arg)
{
    (void)r;
    (void)q;
    if (req->method != DKV_METHOD_GET) {
        reply_static(cb, arg, 405, "Method Not Allowed: use GET\n");
        return;
    }
    dkv_response_t resp = {.status = 200,
                           .content_type = "text/html; charset=utf-8",
                           .extra_headers = PAGE_HEADERS,
                           .body = dkv_slice(status_page_html, sizeof(status_page_html))};
    cb(arg, &resp);
}

/* Appends one reason (a JSON string) to the array being built in `b`. */
static void reason(dkv_buf_t *b, unsigned *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void reason(dkv_buf_t *b, unsigned *n, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    if (*n > 0) {
        dkv_buf_append(b, ",", 1);
    }
    dkv_buf_append_json_str(b, text);
    (*n)++;
}

/*
 * Whether peer `p` can take this node's replica requests now, by the loops' published views.
 * Connected on any loop (a handshake completed and the connection is open) is enough. Otherwise
 * this loop's view decides, since dkv_rpc_client_reach() just refreshed it: its last handshake
 * succeeded and its breaker is not open. `why` gets a reason when not.
 */
static bool peer_reachable(const dkv_router_t *r, uint32_t p, const char **why)
{
    bool rejected = false;
    for (unsigned l = 0; l < DKV_RPC_MAX_LOOPS; l++) {
        dkv_rpc_peer_view_t v;
        dkv_rpc_peer_view(r->env.rpc_shared, l, p, &v);
        if (v.connected) {
            return true;
        }
        rejected = rejected || v.handshake == DKV_RPC_HS_REJECTED;
    }
    dkv_rpc_peer_view_t mine;
    dkv_rpc_peer_view(r->env.rpc_shared, r->env.loop_idx, p, &mine);
    if (mine.handshake == DKV_RPC_HS_OK && mine.breaker != DKV_METRICS_OPEN && !rejected) {
        return true;
    }
    if (rejected) {
        *why = "refuses our handshake, or failed authentication (--cluster, --vnodes or "
               "--cluster-secret-file differ)";
    } else if (mine.breaker == DKV_METRICS_OPEN) {
        *why = "circuit breaker open";
    } else if (mine.handshake == DKV_RPC_HS_FAILED) {
        *why = "unreachable (connection failed)";
    } else {
        *why = "not contacted yet (a connection is being made; ask again)";
    }
    return false;
}

void router_handle_ready(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                         dkv_router_reply_cb cb, void *arg)
{
    (void)q;
    if (req->method != DKV_METHOD_GET) {
        reply_static(cb, arg, 405, "Method Not Allowed: use GET\n");
        return;
    }
    dkv_buf_t reasons;
    dkv_buf_init(&reasons);
    unsigned n_reasons = 0;
    if (r->env.store != NULL && !dkv_store_writable(r->env.store)) {
        dkv_store_health_t h;
        dkv_store_health(r->env.store, &h);
        reason(&reasons, &n_reasons, "storage: not writable (%s)", h.error);
    }
    if (r->env.identity != NULL) {
        dkv_node_state_t st = dkv_identity_state(r->env.identity);
        if (st != DKV_NODE_READY) {
            reason(&reasons, &n_reasons,
                   "node state is %s: its replica reads answer not-ready (GET /v0/status?"
                   "verbose=1)",
                   dkv_node_state_name(st));
        }
    }
    size_t n = dkv_ring_size(r->env.ring);
    if (n > 1 && r->env.rpc_shared != NULL) {
        if (r->env.rpc_client != NULL) {
            dkv_rpc_client_reach(r->env.rpc_client);
        }
        /* The default quorum (API.md §4): from = N, ack = N/2 + 1; this node is one replica. */
        size_t need = n / 2 + 1;
        size_t reachable = 1;
        dkv_buf_t peers;
        dkv_buf_init(&peers);
        unsigned n_peers = 0;
        for (uint32_t p = 0; p < n; p++) {
            const char *why = NULL;
            if (p == r->env.self_idx) {
                continue;
            }
            if (peer_reachable(r, p, &why)) {
                reachable++;
            } else {
                reason(&peers, &n_peers, "peer %s: %s", dkv_ring_url(r->env.ring, p), why);
            }
        }
        if (reachable < need) {
            reason(&reasons, &n_reasons,
                   "%zu of %zu replicas reachable; the default quorum needs %zu", reachable, n,
                   need);
            if (n_peers > 0) {
                dkv_buf_append(&reasons, ",", 1); /* after the quorum line: never first */
                dkv_buf_append(&reasons, peers.data, peers.len);
                n_reasons += n_peers;
            }
        }
        dkv_buf_cleanup(&peers);
    }
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_buf_printf(&b, "{\"ready\":%s,\"reasons\":[", n_reasons == 0 ? "true" : "false");
    if (reasons.len > 0) {
        dkv_buf_append(&b, reasons.data, reasons.len);
    }
    dkv_buf_append_str(&b, "]}\n");
    dkv_buf_cleanup(&reasons);
    reply_buf(cb, arg, n_reasons == 0 ? 200 : 503, &b, "application/json", true);
}
