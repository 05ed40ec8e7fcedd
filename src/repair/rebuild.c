/* Rebuild of a node whose data was lost, by streaming SCAN batches from every peer; see
 * rebuild.h. Everything but the status counters belongs to the rebuild thread. */
#include "repair/rebuild.h"

#include "common/err.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/throttle.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define BATCH_MAX_RECORDS 1024u
#define BATCH_MAX_BYTES (256u << 10)
#define PROGRESS_LOG_MS 10000u

typedef struct stream {
    dkv_rebuild_t *r;
    uint32_t peer;
    bool done;
    bool inflight;
    bool stats_inflight;
    uint64_t stats_at_ms;   /* loop clock of the last STATS request (one per retry_ms) */
    dkv_buf_t cursor; /* last key applied; empty = from the first key */
    uint64_t retry_at_ms;
} stream_t;

struct dkv_rebuild {
    dkv_replica_t *replica;
    dkv_identity_t *identity;
    const dkv_ring_t *ring;
    uint32_t self_idx;
    dkv_hlc_t *hlc;
    dkv_rpc_shared_t *shared;
    dkv_rebuild_opts_t opts;
    size_t n;
    stream_t *streams; /* by ring index; self's unused */
    bool running;
    bool stopping;
    uint64_t started_ms;
    dkv_throttle_t throttle; /* max_bytes_per_s, all streams */
    bool started;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_timer_t tick;
    uv_async_t stop;
    dkv_rpc_client_t *rpc;
    pthread_mutex_t mu; /* the status below */
    bool st_running;
    uint64_t st_peers_done;
    uint64_t st_streamed;
    uint64_t st_kept;
    uint64_t st_held; /* of st_kept: already held at that version or newer, not written again */
    uint64_t st_bytes;
    uint64_t st_started_ms;
    uint64_t st_elapsed_ms;
    uint64_t st_completed;
    bool *st_waiting; /* by ring index */
    uint64_t *st_total;    /* by ring index: the peer's record count (TREE STATS) */
    bool *st_known;        /* by ring index: st_total is known (TREE STATS answered, or done) */
    uint64_t *st_from;     /* by ring index: records streamed from the peer */
    uint64_t last_progress_log_ms;
};

/* Progress: streamed / total over every peer, each peer's streamed count capped at its total
 * (it may have grown meanwhile). `*total` sums the counts known so far and `*counted` says how
 * many peers that is. Caller holds r->mu.
 * @return false until every peer's count is known (a fraction over some of them would run ahead:
 * the others' records would count as streamed but not as expected), or when there is nothing to
 * stream. */
static bool progress_locked(const dkv_rebuild_t *r, double *frac, uint64_t *total, size_t *counted)
{
    uint64_t done = 0;
    uint64_t all = 0;
    size_t known = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (i == r->self_idx || !r->st_known[i]) {
            continue;
        }
        known++;
        all += r->st_total[i];
        done += r->st_from[i] < r->st_total[i] ? r->st_from[i] : r->st_total[i];
    }
    *total = all;
    *counted = known;
    *frac = all > 0 ? (double)done / (double)all : 0.0;
    return known == r->n - 1 && all > 0;
}

static void request(stream_t *s);

static uint64_t wall_ms(void)
{
    return dkv_hlc_system_clock_ms(NULL);
}

/* Does this node hold `rec` of `key`: is it among the first `from` nodes of the preference list?
 * A version-1 record (no `from`) was written before --replication-factor existed, when a
 * request's default `from` was N: it counts as from = N (not today's replication factor, which
 * would drop copies the node held before its data was lost). */
static bool belongs_here(const dkv_rebuild_t *r, dkv_slice_t key, const dkv_record_t *rec)
{
    uint32_t pl[DKV_RING_MAX_NODES];
    size_t from = rec->from != 0 ? rec->from : r->n;
    size_t got = dkv_ring_preference_list(r->ring, key, from, pl);
    for (size_t i = 0; i < got; i++) {
        if (pl[i] == r->self_idx) {
            return true;
        }
    }
    return false;
}

/* Does this node already hold `rec`'s version of `key`, or a newer one? Every peer streams every
 * record it holds, so with N-1 peers most records arrive N-1 times; writing the later copies
 * again would only add merge operands that the LWW merge discards, at the cost of a WAL record,
 * a memtable insert, and their flush and compaction. A point read (the earlier copy is usually
 * still in the memtable) is cheaper. A write racing this read is harmless: if it is newer, the
 * merge keeps it whatever we write. */
static bool already_held(const dkv_rebuild_t *r, dkv_slice_t key, const dkv_record_t *rec)
{
    dkv_record_t local;
    dkv_owned_t buf = {0};
    if (dkv_replica_get_stored(r->replica, key, &local, &buf) != 0) {
        return false;
    }
    bool held = dkv_record_cmp(rec, &local) <= 0;
    dkv_owned_release(&buf);
    return held;
}

static void finish(dkv_rebuild_t *r)
{
    dkv_store_sync_wal(dkv_replica_store(r->replica));
    r->running = false;
    uint64_t elapsed = wall_ms() - r->started_ms;
    pthread_mutex_lock(&r->mu);
    r->st_running = false;
    r->st_elapsed_ms = elapsed;
    r->st_completed++;
    uint64_t kept = r->st_kept;
    uint64_t bytes = r->st_bytes;
    pthread_mutex_unlock(&r->mu);
    if (dkv_identity_state(r->identity) == DKV_NODE_REBUILDING &&
        dkv_identity_rebuild_done(r->identity) == 0) {
        DKV_LOG_INFO("rebuild: done in %" PRIu64 " ms: %" PRIu64 " records (%" PRIu64
                     " bytes) streamed from every peer; ready",
                     elapsed, kept, bytes);
    }
}

static void scan_cb(void *arg, int rc, const dkv_rpc_msg_t *reply)
{
    stream_t *s = arg;
    dkv_rebuild_t *r = s->r;
    s->inflight = false;
    if (r->stopping) {
        return;
    }
    if (rc != 0) {
        if (dkv_identity_peer_not_ready(r->identity, s->peer)) {
            /* The peer is itself joining or rebuilding (two disks lost at once): it holds only
             * writes made since, which reached the other replicas too. Waiting for it would
             * deadlock the two rebuilds; what it lacks, neither node ever had. */
            DKV_LOG_WARN("rebuild: %s is not ready itself (its data was lost too): not waiting "
                         "for it",
                         dkv_ring_url(r->ring, s->peer));
            s->done = true;
            pthread_mutex_lock(&r->mu);
            r->st_waiting[s->peer] = false;
            r->st_total[s->peer] = r->st_from[s->peer]; /* all we will get from it */
            r->st_known[s->peer] = true;
            r->st_peers_done++;
            pthread_mutex_unlock(&r->mu);
            for (size_t i = 0; i < r->n; i++) {
                if (i != r->self_idx && !r->streams[i].done) {
                    return;
                }
            }
            finish(r);
            return;
        }
        s->retry_at_ms = uv_now(&r->loop) + r->opts.retry_ms;
        pthread_mutex_lock(&r->mu);
        r->st_waiting[s->peer] = true;
        pthread_mutex_unlock(&r->mu);
        DKV_LOG_DEBUG("rebuild: batch from %s failed (%s); retrying",
                      dkv_ring_url(r->ring, s->peer), dkv_strerror(rc));
        return;
    }
    dkv_rpc_scan_iter_t it;
    dkv_rpc_scan_iter_init(&it, reply);
    dkv_slice_t key;
    dkv_record_t rec;
    uint64_t streamed = 0;
    uint64_t kept = 0;
    uint64_t held = 0;
    uint64_t bytes = 0;
    int store_rc = 0;
    uint64_t write_mark = dkv_store_write_token();
    while (dkv_rpc_scan_iter_next(&it, &key, &rec) == 0) {
        streamed++;
        bytes += key.len + rec.value.len;
        if (!belongs_here(r, key, &rec)) {
            continue;
        }
        if (already_held(r, key, &rec)) {
            kept++;
            held++;
            continue;
        }
        int put_rc = dkv_replica_put(r->replica, key, &rec);
        if (put_rc == 0) {
            kept++;
        } else if (put_rc == DKV_ENOSPACE || put_rc == DKV_EIO) {
            store_rc = put_rc;
        }
    }
    if (dkv_store_sync_wal_since(dkv_replica_store(r->replica), &write_mark) != 0 &&
        store_rc == 0) {
        store_rc = DKV_EIO;
    }
    dkv_throttle_spend(&r->throttle, bytes);
    if (store_rc != 0) {
        /* Not stored (disk full): the same batch again later, never a cursor past a record
         * this node does not hold, or the rebuild would end with it missing. */
        s->retry_at_ms = uv_now(&r->loop) + r->opts.retry_ms;
        pthread_mutex_lock(&r->mu);
        r->st_waiting[s->peer] = true;
        pthread_mutex_unlock(&r->mu);
        DKV_LOG_DEBUG("rebuild: batch from %s not stored (%s); retrying",
                      dkv_ring_url(r->ring, s->peer), dkv_strerror(store_rc));
        return;
    }
    if (!r->running) {
        return; /* ended by the operator meanwhile */
    }
    bool more = reply->scan_reply.more;
    if (more) {
        s->cursor.len = 0;
        dkv_buf_append(&s->cursor, reply->scan_reply.last_key.ptr,
                       reply->scan_reply.last_key.len);
    } else {
        s->done = true;
    }
    pthread_mutex_lock(&r->mu);
    r->st_streamed += streamed;
    r->st_from[s->peer] += streamed;
    if (s->done && (!r->st_known[s->peer] || r->st_from[s->peer] > r->st_total[s->peer])) {
        r->st_total[s->peer] = r->st_from[s->peer];
        r->st_known[s->peer] = true;
    }
    r->st_kept += kept;
    r->st_held += held;
    r->st_bytes += bytes;
    r->st_waiting[s->peer] = false;
    if (s->done) {
        r->st_peers_done++;
    }
    double frac = 0;
    uint64_t total = 0;
    size_t counted = 0;
    bool known = progress_locked(r, &frac, &total, &counted);
    uint64_t now = wall_ms();
    bool log_now = known && now - r->last_progress_log_ms >= PROGRESS_LOG_MS && frac > 0;
    uint64_t elapsed = now - r->started_ms;
    uint64_t all_streamed = r->st_streamed;
    uint64_t all_bytes = r->st_bytes;
    if (log_now) {
        r->last_progress_log_ms = now;
    }
    pthread_mutex_unlock(&r->mu);
    if (log_now) {
        DKV_LOG_INFO("rebuild: %.0f%% (%" PRIu64 " of about %" PRIu64 " records, %" PRIu64
                     " bytes, %" PRIu64 " bytes/s), about %" PRIu64 " s left",
                     frac * 100, all_streamed, total, all_bytes,
                     elapsed > 0 ? all_bytes * 1000 / elapsed : 0,
                     (uint64_t)((double)elapsed * (1 - frac) / frac / 1000));
    }
    if (s->done) {
        DKV_LOG_INFO("rebuild: every record of %s streamed", dkv_ring_url(r->ring, s->peer));
        for (size_t i = 0; i < r->n; i++) {
            if (i != r->self_idx && !r->streams[i].done) {
                return;
            }
        }
        finish(r);
        return;
    }
    request(s);
}

/* Sends the stream's next batch request, if the throttle allows; the tick retries otherwise. */
static void request(stream_t *s)
{
    dkv_rebuild_t *r = s->r;
    if (s->done || s->inflight || r->stopping ||
        !dkv_throttle_ready(&r->throttle, uv_now(&r->loop)) ||
        uv_now(&r->loop) < s->retry_at_ms) {
        return;
    }
    dkv_rpc_scan_t scan = {.start = dkv_buf_slice(&s->cursor),
                           .end = dkv_slice(NULL, 0),
                           .start_exclusive = s->cursor.len > 0,
                           .max_records = BATCH_MAX_RECORDS,
                           .max_bytes = BATCH_MAX_BYTES};
    dkv_rpc_call_t call = {.type = DKV_RPC_SCAN, .scan = &scan, .scan_cb = scan_cb};
    s->inflight = true;
    int rc = dkv_rpc_client_call(r->rpc, s->peer, &call, NULL, s);
    if (rc != 0) {
        s->inflight = false;
        s->retry_at_ms = uv_now(&r->loop) + r->opts.retry_ms;
        pthread_mutex_lock(&r->mu);
        r->st_waiting[s->peer] = true;
        pthread_mutex_unlock(&r->mu);
    }
}

static void stats_cb(void *arg, int rc, const dkv_rpc_msg_t *reply)
{
    stream_t *s = arg;
    dkv_rebuild_t *r = s->r;
    s->stats_inflight = false;
    if (r->stopping || rc != 0 || reply->tree_reply.kind != DKV_RPC_TREE_STATS) {
        return;
    }
    pthread_mutex_lock(&r->mu);
    if (!r->st_known[s->peer]) { /* a finished stream's own count is exact: keep it */
        r->st_total[s->peer] = reply->tree_reply.records;
        r->st_known[s->peer] = true;
    }
    pthread_mutex_unlock(&r->mu);
}

/* Asks a peer how many records it holds (TREE STATS), for the progress and ETA; again after
 * retry_ms until it answers. */
static void ask_stats(stream_t *s)
{
    dkv_rebuild_t *r = s->r;
    pthread_mutex_lock(&r->mu);
    bool known = r->st_known[s->peer];
    pthread_mutex_unlock(&r->mu);
    uint64_t now = uv_now(&r->loop);
    if (known || s->done || s->stats_inflight || r->stopping ||
        (s->stats_at_ms != 0 && now < s->stats_at_ms + r->opts.retry_ms)) {
        return;
    }
    s->stats_at_ms = now;
    dkv_rpc_tree_req_t req = {.kind = DKV_RPC_TREE_STATS};
    dkv_rpc_call_t call = {.type = DKV_RPC_TREE, .tree = &req, .scan_cb = stats_cb};
    if (dkv_rpc_client_call(r->rpc, s->peer, &call, NULL, s) == 0) {
        s->stats_inflight = true;
    }
}

static void begin(dkv_rebuild_t *r)
{
    r->running = true;
    r->started_ms = wall_ms();
    pthread_mutex_lock(&r->mu);
    r->st_running = true;
    r->st_peers_done = 0;
    r->st_streamed = 0;
    r->st_kept = 0;
    r->st_held = 0;
    r->st_bytes = 0;
    r->st_started_ms = r->started_ms;
    memset(r->st_total, 0, r->n * sizeof(uint64_t));
    memset(r->st_known, 0, r->n * sizeof(bool));
    memset(r->st_from, 0, r->n * sizeof(uint64_t));
    r->last_progress_log_ms = r->started_ms;
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        stream_t *s = &r->streams[i];
        s->done = i == r->self_idx;
        s->cursor.len = 0;
        s->retry_at_ms = 0;
        s->stats_at_ms = 0;
    }
    DKV_LOG_INFO("rebuild: this node's data was lost: streaming its records from %zu peer(s)",
                 r->n - 1);
    if (r->n == 1) {
        finish(r);
    }
}

static void on_tick(uv_timer_t *t)
{
    dkv_rebuild_t *r = t->data;
    dkv_node_state_t st = dkv_identity_state(r->identity);
    if (!r->running) {
        if (st == DKV_NODE_REBUILDING) {
            begin(r);
        } else {
            return;
        }
    } else if (st != DKV_NODE_REBUILDING) {
        /* Ended by the operator (rebuild-done): stop streaming. */
        DKV_LOG_INFO("rebuild: the node was declared ready; streaming stops");
        r->running = false;
        pthread_mutex_lock(&r->mu);
        r->st_running = false;
        pthread_mutex_unlock(&r->mu);
        return;
    }
    for (size_t i = 0; i < r->n && r->running; i++) {
        if (i != r->self_idx) {
            ask_stats(&r->streams[i]);
            request(&r->streams[i]);
        }
    }
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_stop(uv_async_t *a)
{
    dkv_rebuild_t *r = a->data;
    r->stopping = true;
    uv_timer_stop(&r->tick);
    dkv_rpc_client_close(r->rpc, NULL, NULL);
    r->rpc = NULL;
    uv_close((uv_handle_t *)&r->tick, on_closed);
    uv_close((uv_handle_t *)&r->stop, on_closed);
}

static void thread_main(void *arg)
{
    dkv_rebuild_t *r = arg;
    dkv_thread_set_name("dkv-rebuild");
    dkv_thread_set_background();
    dkv_store_thread_init();
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_loop_close(&r->loop);
}

int dkv_rebuild_new(dkv_replica_t *replica, dkv_identity_t *identity, const dkv_ring_t *ring,
                    uint32_t self_idx, dkv_hlc_t *hlc, dkv_rpc_shared_t *shared,
                    const dkv_rebuild_opts_t *opts, dkv_rebuild_t **out)
{
    dkv_rebuild_t *r = dkv_xcalloc(1, sizeof(*r));
    r->replica = replica;
    r->identity = identity;
    r->ring = ring;
    r->self_idx = self_idx;
    r->hlc = hlc;
    r->shared = shared;
    r->opts = *opts;
    r->n = dkv_ring_size(ring);
    r->streams = dkv_xcalloc(r->n, sizeof(stream_t));
    r->st_waiting = dkv_xcalloc(r->n, sizeof(bool));
    r->st_total = dkv_xcalloc(r->n, sizeof(uint64_t));
    r->st_known = dkv_xcalloc(r->n, sizeof(bool));
    r->st_from = dkv_xcalloc(r->n, sizeof(uint64_t));
    for (size_t i = 0; i < r->n; i++) {
        r->streams[i].r = r;
        r->streams[i].peer = (uint32_t)i;
        dkv_buf_init(&r->streams[i].cursor);
    }
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

int dkv_rebuild_start(dkv_rebuild_t *r)
{
    uv_loop_init(&r->loop);
    int rc = dkv_rpc_client_new(&r->loop, r->opts.rpc_loop_idx, r->ring, r->self_idx, r->hlc,
                                r->shared, &r->opts.rpc, &r->rpc);
    if (rc != 0) {
        uv_loop_close(&r->loop);
        return rc;
    }
    uv_timer_init(&r->loop, &r->tick);
    r->tick.data = r;
    uv_async_init(&r->loop, &r->stop, on_stop);
    r->stop.data = r;
    dkv_throttle_init(&r->throttle, r->opts.max_bytes_per_s, uv_now(&r->loop));
    uv_timer_start(&r->tick, on_tick, 0, r->opts.check_ms);
    if (uv_thread_create(&r->thread, thread_main, r) != 0) {
        return DKV_EIO; /* the process exits: nothing to unwind */
    }
    r->started = true;
    return 0;
}

void dkv_rebuild_free(dkv_rebuild_t *r)
{
    if (r == NULL) {
        return;
    }
    if (r->started) {
        uv_async_send(&r->stop);
        uv_thread_join(&r->thread);
    }
    for (size_t i = 0; i < r->n; i++) {
        dkv_buf_cleanup(&r->streams[i].cursor);
    }
    pthread_mutex_destroy(&r->mu);
    free(r->st_waiting);
    free(r->st_total);
    free(r->st_known);
    free(r->st_from);
    free(r->streams);
    free(r);
}

void dkv_rebuild_progress(dkv_rebuild_t *r, bool *running, double *fraction)
{
    double frac = 0;
    uint64_t total = 0;
    size_t counted = 0;
    pthread_mutex_lock(&r->mu);
    *running = r->st_running;
    if (r->st_running) {
        *fraction = progress_locked(r, &frac, &total, &counted) ? frac : 0.0;
    } else {
        *fraction = r->st_completed > 0 ? 1.0 : 0.0;
    }
    pthread_mutex_unlock(&r->mu);
}

void dkv_rebuild_status_json(dkv_rebuild_t *r, dkv_buf_t *out)
{
    uint64_t now = wall_ms();
    pthread_mutex_lock(&r->mu);
    uint64_t elapsed = r->st_running ? now - r->st_started_ms : r->st_elapsed_ms;
    uint64_t rate = elapsed > 0 ? r->st_bytes * 1000 / elapsed : 0;
    dkv_buf_printf(out,
                   "{\"running\":%s,\"peers_done\":%" PRIu64 ",\"peers_total\":%zu"
                   ",\"records_streamed\":%" PRIu64 ",\"records_kept\":%" PRIu64
                   ",\"records_already_held\":%" PRIu64 ",\"bytes\":%" PRIu64
                   ",\"elapsed_ms\":%" PRIu64 ",\"bytes_per_s\":%" PRIu64 ",\"completed\":%" PRIu64,
                   r->st_running ? "true" : "false", r->st_peers_done, r->n - 1, r->st_streamed,
                   r->st_kept, r->st_held, r->st_bytes, elapsed, rate, r->st_completed);
    double frac = 0;
    uint64_t total = 0;
    size_t counted = 0;
    bool known = progress_locked(r, &frac, &total, &counted);
    dkv_buf_printf(out, ",\"peers_counted\":%zu", counted);
    if (r->st_running && known && frac > 0) {
        dkv_buf_printf(out,
                       ",\"records_total_estimate\":%" PRIu64 ",\"progress_pct\":%.1f"
                       ",\"eta_ms\":%" PRIu64,
                       total, frac * 100, (uint64_t)((double)elapsed * (1 - frac) / frac));
    } else {
        dkv_buf_printf(out, ",\"records_total_estimate\":%" PRIu64
                            ",\"progress_pct\":%s,\"eta_ms\":null",
                       total, !r->st_running && r->st_completed > 0 ? "100" : "null");
    }
    dkv_buf_append_str(out, ",\"waiting_for\":[");
    bool first = true;
    for (size_t i = 0; i < r->n; i++) {
        if (r->st_running && r->st_waiting[i]) {
            dkv_buf_printf(out, "%s\"%s\"", first ? "" : ",", dkv_ring_url(r->ring, i));
            first = false;
        }
    }
    pthread_mutex_unlock(&r->mu);
    dkv_buf_append_str(out, "]}");
}
