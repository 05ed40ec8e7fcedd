/*
 * Durable hinted handoff; the design is in hints.h.
 *
 * Hint entry in the `hints` column family (all integers big-endian):
 *
 *   key:   | url length u16 | target URL (1..DKV_RPC_MAX_URL_BYTES) | sequence u64 |
 *   value: | ver=1 u8 | created_ms u64 | key length u16 | key | record (common/record.h) |
 *
 * Threads: dkv_hints_add() runs on any I/O thread; the counters are behind one mutex (taken once
 * per hint, i.e. only while a replica is failing). The replay thread owns its libuv loop, its RPC
 * client and each target's batch in flight.
 */
#include "repair/hints.h"

#include "common/err.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/throttle.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define HINT_VERSION 1u
#define HINT_VALUE_FIXED (1u + 8u + 2u)
#define SEQ_BYTES 8u
/* One replay batch per target: requests in flight at once, and their bytes. */
#define BATCH_MAX_HINTS 256u
#define BATCH_MAX_BYTES (1u << 20)
#define DROP_LOG_INTERVAL_MS 10000u

typedef struct entry {
    struct batch *batch;
    uint64_t seq;
    uint64_t bytes; /* hint key + value */
    uint64_t created_ms;
    int rc;         /* 1 while in flight, then the reply's rc */
    bool expired;   /* dropped unsent: its record is older than max_record_age_ms */
    dkv_slice_t hint_key; /* into the batch's storage */
} entry_t;

typedef struct batch {
    struct target *t;
    unsigned n;
    unsigned inflight;
    entry_t entries[BATCH_MAX_HINTS];
    dkv_buf_t keys; /* the hint keys of the entries, back to back */
} batch_t;

typedef struct target {
    dkv_hints_t *h;
    uint32_t idx;
    dkv_buf_t prefix; /* u16 url length + URL */
    /* Guarded by h->mu. */
    uint64_t count;
    uint64_t bytes;
    uint64_t oldest_created_ms; /* 0 = none pending */
    uint64_t max_seq;           /* newest hint written (0 = none ever) */
    uint64_t delivered_seq;     /* every hint up to this sequence was delivered */
    uint64_t last_drop_log_ms;
    dkv_hints_target_stats_t totals; /* the counters of dkv_hints_target_stats_t */
    /* Replay thread only. */
    batch_t *batch; /* in flight, or NULL */
    bool probing;   /* the last batch failed: send one hint at a time until one is delivered,
                       rather than read and fail a full batch every tick while the peer is down */
} target_t;

struct dkv_hints {
    dkv_store_t *store;
    const dkv_ring_t *ring;
    uint32_t self_idx;
    dkv_hlc_t *hlc;
    dkv_rpc_shared_t *shared;
    dkv_hints_opts_t opts;
    size_t n;
    target_t *targets;
    pthread_mutex_t mu;
    uint64_t total_bytes; /* guarded by mu, and so are the counters below */
    uint64_t written;
    uint64_t replayed;
    uint64_t replay_failures;
    uint64_t dropped_window;
    uint64_t dropped_quota;
    uint64_t dropped_expired;
    /* Replay thread. */
    bool started;
    bool stopping;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    uv_async_t stop;
    uv_timer_t tick;
    dkv_rpc_client_t *rpc;
    dkv_throttle_t throttle; /* replay_bytes_per_s */
};

/* ---- encoding ---- */

static void put_be(uint8_t *p, uint64_t v, unsigned bytes)
{
    for (unsigned i = 0; i < bytes; i++) {
        p[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    }
}

static uint64_t get_be(const uint8_t *p, unsigned bytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < bytes; i++) {
        v = v << 8 | p[i];
    }
    return v;
}

static void hint_key(const target_t *t, uint64_t seq, dkv_buf_t *out)
{
    uint8_t s[SEQ_BYTES];
    put_be(s, seq, SEQ_BYTES);
    dkv_buf_append(out, t->prefix.data, t->prefix.len);
    dkv_buf_append(out, s, sizeof(s));
}

/* Decodes a hint value; `key` and `rec` borrow from `v`. */
static int decode_value(dkv_slice_t v, uint64_t *created_ms, dkv_slice_t *key, dkv_record_t *rec)
{
    if (v.len < HINT_VALUE_FIXED || v.ptr[0] != HINT_VERSION) {
        return DKV_EPROTO;
    }
    uint64_t klen = get_be(v.ptr + 9, 2);
    if (klen == 0 || klen > DKV_RPC_MAX_KEY_BYTES || v.len < HINT_VALUE_FIXED + klen) {
        return DKV_EPROTO;
    }
    dkv_slice_t r = dkv_slice(v.ptr + HINT_VALUE_FIXED + klen, v.len - HINT_VALUE_FIXED - klen);
    if (dkv_record_decode(r, rec) != 0) {
        return DKV_EPROTO;
    }
    *created_ms = get_be(v.ptr + 1, 8);
    *key = dkv_slice(v.ptr + HINT_VALUE_FIXED, klen);
    return 0;
}

/* Splits a hint key into target URL (borrowed) and sequence. */
static int decode_key(dkv_slice_t k, dkv_slice_t *url, uint64_t *seq)
{
    if (k.len < 2 + SEQ_BYTES) {
        return DKV_EPROTO;
    }
    uint64_t ulen = get_be(k.ptr, 2);
    if (ulen == 0 || k.len != 2 + ulen + SEQ_BYTES) {
        return DKV_EPROTO;
    }
    *url = dkv_slice(k.ptr + 2, ulen);
    *seq = get_be(k.ptr + 2 + ulen, SEQ_BYTES);
    return 0;
}

static int target_of(const dkv_hints_t *h, dkv_slice_t url)
{
    for (size_t i = 0; i < h->n; i++) {
        const target_t *t = &h->targets[i];
        if (i != h->self_idx && t->prefix.len == url.len + 2 &&
            memcmp(t->prefix.data + 2, url.ptr, url.len) == 0) {
            return (int)i;
        }
    }
    return -1;
}

/* ---- open / load ---- */

static int load(dkv_hints_t *h)
{
    dkv_store_raw_iter_t *it = NULL;
    dkv_store_hint_iter_new(h->store, dkv_slice(NULL, 0), dkv_slice(NULL, 0), &it);
    uint64_t max_seq = 0;
    uint64_t foreign = 0;
    int rc;
    for (;;) {
        dkv_slice_t k;
        dkv_slice_t v;
        rc = dkv_store_raw_iter_next(it, &k, &v);
        if (rc != 0) {
            break;
        }
        dkv_slice_t url;
        uint64_t seq = 0;
        uint64_t created = 0;
        dkv_slice_t key;
        dkv_record_t rec;
        int idx = -1;
        if (decode_key(k, &url, &seq) == 0 && decode_value(v, &created, &key, &rec) == 0) {
            idx = target_of(h, url);
        }
        if (idx < 0) {
            /* A peer no longer in --cluster, or a damaged entry: it can never be delivered. */
            foreign++;
            dkv_store_hint_delete(h->store, k);
            continue;
        }
        target_t *t = &h->targets[idx];
        t->count++;
        t->bytes += k.len + v.len;
        h->total_bytes += k.len + v.len;
        if (t->oldest_created_ms == 0 || created < t->oldest_created_ms) {
            t->oldest_created_ms = created;
        }
        t->max_seq = seq > t->max_seq ? seq : t->max_seq;
        max_seq = seq > max_seq ? seq : max_seq;
    }
    dkv_store_raw_iter_free(it);
    if (rc != DKV_ENOTFOUND) {
        return DKV_EIO;
    }
    if (foreign > 0) {
        DKV_LOG_WARN("hints: dropped %" PRIu64 " hint(s) for nodes not in --cluster (or damaged)",
                     foreign);
        dkv_store_sync_wal(h->store);
    }
    dkv_hlc_observe(h->hlc, max_seq);
    for (size_t i = 0; i < h->n; i++) {
        const target_t *t = &h->targets[i];
        if (t->count > 0) {
            DKV_LOG_INFO("hints: %" PRIu64 " hint(s), %" PRIu64 " bytes pending for %s",
                         t->count, t->bytes, dkv_ring_url(h->ring, i));
        }
    }
    return 0;
}

int dkv_hints_open(dkv_store_t *store, const dkv_ring_t *ring, uint32_t self_idx, dkv_hlc_t *hlc,
                   dkv_rpc_shared_t *shared, const dkv_hints_opts_t *opts, dkv_hints_t **out)
{
    dkv_hints_t *h = dkv_xcalloc(1, sizeof(*h));
    h->store = store;
    h->ring = ring;
    h->self_idx = self_idx;
    h->hlc = hlc;
    h->shared = shared;
    h->opts = *opts;
    h->n = dkv_ring_size(ring);
    h->targets = dkv_xcalloc(h->n, sizeof(target_t));
    pthread_mutex_init(&h->mu, NULL);
    for (size_t i = 0; i < h->n; i++) {
        target_t *t = &h->targets[i];
        const char *url = dkv_ring_url(ring, i);
        uint8_t len[2];
        put_be(len, strlen(url), 2);
        t->h = h;
        t->idx = (uint32_t)i;
        dkv_buf_init(&t->prefix);
        dkv_buf_append(&t->prefix, len, 2);
        dkv_buf_append_str(&t->prefix, url);
    }
    int rc = load(h);
    if (rc != 0) {
        dkv_hints_free(h);
        return rc;
    }
    *out = h;
    return 0;
}

/* ---- adding ---- */

static uint64_t wall_ms(void)
{
    return dkv_hlc_system_clock_ms(NULL);
}

/* Logs a dropped hint at most once per interval per target. Called with h->mu held. */
static void log_drop(target_t *t, uint64_t now, const char *why)
{
    if (now - t->last_drop_log_ms < DROP_LOG_INTERVAL_MS) {
        return;
    }
    t->last_drop_log_ms = now;
    DKV_LOG_WARN("hints: not keeping hints for %s: %s (dropped: %" PRIu64 " past the window, "
                 "%" PRIu64 " past the quota so far; anti-entropy or read repair must cover them)",
                 dkv_ring_url(t->h->ring, t->idx), why, t->h->dropped_window,
                 t->h->dropped_quota);
}

int dkv_hints_add(dkv_hints_t *h, uint32_t target, dkv_slice_t key, const dkv_record_t *rec)
{
    if (target >= h->n || target == h->self_idx || key.len == 0 ||
        key.len > DKV_RPC_MAX_KEY_BYTES) {
        return DKV_EINVAL;
    }
    target_t *t = &h->targets[target];
    uint64_t now = wall_ms();
    dkv_buf_t k;
    dkv_buf_t v;
    dkv_buf_init(&k);
    dkv_buf_init(&v);
    uint8_t fixed[HINT_VALUE_FIXED];
    fixed[0] = HINT_VERSION;
    put_be(fixed + 1, now, 8);
    put_be(fixed + 9, key.len, 2);
    dkv_buf_reserve(&v, sizeof(fixed) + key.len + DKV_RECORD_HEADER_BYTES + rec->value.len);
    dkv_buf_append(&v, fixed, sizeof(fixed));
    dkv_buf_append(&v, key.ptr, key.len);
    dkv_record_encode(rec, &v);
    uint64_t bytes = t->prefix.len + SEQ_BYTES + v.len; /* the hint key and value */

    int rc = 0;
    /*
     * The sequence is taken and the hint stored under the lock, so hints become visible in
     * sequence order: the replay thread reads after the last delivered sequence and must never
     * find a smaller one appearing behind it (another I/O thread's hint, stored a moment later).
     */
    pthread_mutex_lock(&h->mu);
    if (t->count > 0 && t->oldest_created_ms != 0 && now > t->oldest_created_ms &&
        now - t->oldest_created_ms > h->opts.window_ms) {
        h->dropped_window++;
        t->totals.dropped_window++;
        log_drop(t, now, "its oldest hint is older than --hint-window-ms");
        rc = DKV_ETIMEDOUT;
    } else if (h->total_bytes + bytes > h->opts.max_bytes) {
        h->dropped_quota++;
        t->totals.dropped_quota++;
        log_drop(t, now, "the hints take --max-hints-bytes");
        rc = DKV_ETOOBIG;
    } else {
        uint64_t seq = 0;
        rc = dkv_hlc_next(h->hlc, &seq); /* fails only if the clock's bound cannot be persisted */
        if (rc == 0) {
            hint_key(t, seq, &k);
            rc = dkv_store_hint_put(h->store, dkv_buf_slice(&k), dkv_buf_slice(&v));
        }
        if (rc == 0) {
            h->total_bytes += bytes;
            t->bytes += bytes;
            t->count++;
            if (t->count == 1) {
                t->oldest_created_ms = now;
            }
            t->max_seq = seq > t->max_seq ? seq : t->max_seq;
            h->written++;
            t->totals.written++;
        }
    }
    pthread_mutex_unlock(&h->mu);
    if (rc == 0) {
        /* Synced at once: a hint is written when a replica fails, possibly after the client's
         * answer went out, and no later flush on this thread may come soon. A hint lost to a
         * failed sync is only a missed repair: the replica write it stands for was not
         * acknowledged by that replica anyway. */
        rc = dkv_store_sync_wal(h->store);
    }
    dkv_buf_cleanup(&k);
    dkv_buf_cleanup(&v);
    return rc;
}

/* ---- replay (the replay thread) ---- */

static void replay_target(target_t *t);

/* An iterator over `t`'s hints with a sequence above `after_seq`, in order; the bounds keep it
 * off the deleted (delivered) hints before them. */
static dkv_store_raw_iter_t *pending_iter(dkv_hints_t *h, target_t *t, uint64_t after_seq)
{
    dkv_buf_t lo;
    dkv_buf_t hi;
    dkv_buf_init(&lo);
    dkv_buf_init(&hi);
    hint_key(t, after_seq + 1, &lo);
    hint_key(t, UINT64_MAX, &hi);
    dkv_buf_append(&hi, "\xff", 1);
    dkv_store_raw_iter_t *it = NULL;
    dkv_store_hint_iter_new(h->store, dkv_buf_slice(&lo), dkv_buf_slice(&hi), &it);
    dkv_buf_cleanup(&lo);
    dkv_buf_cleanup(&hi);
    return it;
}

/* The created_ms of the first pending hint of `t`, or 0. */
static uint64_t first_created_ms(dkv_hints_t *h, target_t *t, uint64_t after_seq)
{
    dkv_store_raw_iter_t *it = pending_iter(h, t, after_seq);
    dkv_slice_t k;
    dkv_slice_t v;
    uint64_t created = 0;
    dkv_slice_t key;
    dkv_record_t rec;
    if (dkv_store_raw_iter_next(it, &k, &v) == 0 && decode_value(v, &created, &key, &rec) != 0) {
        created = 0;
    }
    dkv_store_raw_iter_free(it);
    return created;
}

/* Every reply of a batch is in: delete the delivered prefix, account, and go on. */
static void batch_done(batch_t *b)
{
    target_t *t = b->t;
    dkv_hints_t *h = t->h;
    unsigned delivered = 0;
    uint64_t bytes = 0;
    uint64_t last_seq = 0;
    uint64_t expired = 0;
    while (delivered < b->n && b->entries[delivered].rc == 0) {
        entry_t *e = &b->entries[delivered];
        expired += e->expired ? 1u : 0u;
        dkv_store_hint_delete(h->store, e->hint_key);
        bytes += e->bytes;
        last_seq = e->seq;
        delivered++;
    }
    dkv_store_sync_wal(h->store);
    bool failed = delivered < b->n;
    uint64_t next_created = 0;
    if (delivered > 0) {
        next_created = failed ? b->entries[delivered].created_ms
                              : first_created_ms(h, t, last_seq);
    }
    pthread_mutex_lock(&h->mu);
    t->count -= delivered;
    t->bytes -= bytes;
    h->total_bytes -= bytes;
    h->replayed += delivered - expired;
    h->dropped_expired += expired;
    t->totals.replayed += delivered - expired;
    t->totals.dropped_expired += expired;
    if (delivered > 0) {
        t->delivered_seq = last_seq;
        if (t->count == 0) {
            t->oldest_created_ms = 0;
        } else if (next_created != 0) {
            t->oldest_created_ms = next_created;
        } else if (t->oldest_created_ms == 0) {
            t->oldest_created_ms = wall_ms(); /* added while we looked: it is brand new */
        }
    }
    if (failed) {
        h->replay_failures++;
        t->totals.replay_failures++;
    }
    pthread_mutex_unlock(&h->mu);
    if (failed) {
        DKV_LOG_DEBUG("hints: replay to %s stopped after %u of %u: %s", dkv_ring_url(h->ring, t->idx),
                      delivered, b->n, dkv_strerror(b->entries[delivered].rc));
    }
    t->batch = NULL;
    t->probing = failed;
    dkv_buf_cleanup(&b->keys);
    free(b);
    if (!failed && !h->stopping) {
        replay_target(t); /* more may wait; the throttle decides */
    }
}

static void replay_cb(void *arg, int rc, const dkv_record_t *rec)
{
    (void)rec;
    entry_t *e = arg;
    batch_t *b = e->batch;
    e->rc = rc;
    if (--b->inflight == 0) {
        batch_done(b);
    }
}

/* Sends the next batch of `t`'s hints, oldest first. */
static void replay_target(target_t *t)
{
    dkv_hints_t *h = t->h;
    if (t->batch != NULL || h->stopping) {
        return;
    }
    pthread_mutex_lock(&h->mu);
    uint64_t pending = t->count;
    uint64_t cursor = t->delivered_seq;
    pthread_mutex_unlock(&h->mu);
    if (pending == 0 || !dkv_throttle_ready(&h->throttle, uv_now(&h->loop))) {
        return;
    }
    batch_t *b = dkv_xcalloc(1, sizeof(*b));
    b->t = t;
    dkv_buf_init(&b->keys);
    dkv_store_raw_iter_t *it = pending_iter(h, t, cursor);
    size_t batch_bytes = 0;
    /* First pass: collect the keys (the iterator's slices die with it). */
    dkv_buf_t values;
    dkv_buf_init(&values);
    size_t value_offs[BATCH_MAX_HINTS];
    size_t value_lens[BATCH_MAX_HINTS];
    size_t key_offs[BATCH_MAX_HINTS];
    unsigned max_hints = t->probing ? 1 : BATCH_MAX_HINTS;
    while (b->n < max_hints && batch_bytes < BATCH_MAX_BYTES) {
        dkv_slice_t k;
        dkv_slice_t v;
        if (dkv_store_raw_iter_next(it, &k, &v) != 0) {
            break;
        }
        dkv_slice_t url;
        entry_t *e = &b->entries[b->n];
        if (decode_key(k, &url, &e->seq) != 0) {
            continue;
        }
        e->batch = b;
        e->bytes = k.len + v.len;
        e->rc = 1;
        key_offs[b->n] = b->keys.len;
        dkv_buf_append(&b->keys, k.ptr, k.len);
        e->hint_key = dkv_slice(NULL, k.len);
        value_offs[b->n] = values.len;
        value_lens[b->n] = v.len;
        dkv_buf_append(&values, v.ptr, v.len);
        batch_bytes += e->bytes;
        b->n++;
    }
    dkv_store_raw_iter_free(it);
    dkv_throttle_spend(&h->throttle, batch_bytes);
    if (b->n == 0) {
        dkv_buf_cleanup(&values);
        dkv_buf_cleanup(&b->keys);
        free(b);
        return;
    }
    t->batch = b;
    b->inflight = b->n + 1; /* + the loop below, so the batch cannot end while it runs */
    for (unsigned i = 0; i < b->n; i++) {
        entry_t *e = &b->entries[i];
        e->hint_key.ptr = b->keys.data + key_offs[i];
        dkv_slice_t key;
        dkv_record_t rec;
        int rc = decode_value(dkv_slice(values.data + value_offs[i], value_lens[i]),
                              &e->created_ms, &key, &rec);
        if (rc != 0) {
            /* A damaged hint can never be delivered: count it as delivered so it goes. */
            DKV_LOG_ERROR("hints: dropping a damaged hint for %s", dkv_ring_url(h->ring, t->idx));
            e->rc = 0;
            b->inflight--;
            continue;
        }
        if (h->opts.max_record_age_ms > 0 &&
            dkv_hlc_ms(rec.ts) + h->opts.max_record_age_ms < wall_ms()) {
            /* Older than the tombstone GC grace: a tombstone that shadowed it may be purged
             * already, and the write would come back (Cassandra drops hints past gc_grace).
             * Anti-entropy repairs the replica instead. */
            e->rc = 0;
            e->expired = true;
            b->inflight--;
            continue;
        }
        dkv_rpc_call_t call = {.type = DKV_RPC_PUT, .key = key, .rec = &rec};
        rc = dkv_rpc_client_call(h->rpc, t->idx, &call, replay_cb, e);
        if (rc != 0) {
            e->rc = rc;
            b->inflight--;
        }
    }
    dkv_buf_cleanup(&values);
    if (--b->inflight == 0) {
        batch_done(b);
    }
}

static void replay_all(dkv_hints_t *h)
{
    for (size_t i = 0; i < h->n; i++) {
        if (i != h->self_idx) {
            replay_target(&h->targets[i]);
        }
    }
}

static void on_tick(uv_timer_t *timer)
{
    replay_all(timer->data);
}

static void on_wake(uv_async_t *a)
{
    replay_all(a->data);
}

static void on_handle_closed(uv_handle_t *handle)
{
    (void)handle;
}

static void on_stop(uv_async_t *a)
{
    dkv_hints_t *h = a->data;
    h->stopping = true;
    uv_timer_stop(&h->tick);
    if (h->rpc != NULL) {
        dkv_rpc_client_close(h->rpc, NULL, NULL); /* fails what is in flight: hints stay */
        h->rpc = NULL;
    }
    uv_close((uv_handle_t *)&h->tick, on_handle_closed);
    uv_close((uv_handle_t *)&h->wake, on_handle_closed);
    uv_close((uv_handle_t *)&h->stop, on_handle_closed);
}

static void replay_main(void *arg)
{
    dkv_hints_t *h = arg;
    dkv_thread_set_name("dkv-hints");
    dkv_thread_set_background();
    dkv_store_thread_init();
    uv_run(&h->loop, UV_RUN_DEFAULT);
    uv_loop_close(&h->loop);
}

int dkv_hints_start(dkv_hints_t *h)
{
    uv_loop_init(&h->loop);
    int rc = dkv_rpc_client_new(&h->loop, h->opts.rpc_loop_idx, h->ring, h->self_idx, h->hlc,
                                h->shared, &h->opts.rpc, &h->rpc);
    if (rc != 0) {
        uv_loop_close(&h->loop);
        return rc;
    }
    uv_async_init(&h->loop, &h->wake, on_wake);
    h->wake.data = h;
    uv_async_init(&h->loop, &h->stop, on_stop);
    h->stop.data = h;
    uv_timer_init(&h->loop, &h->tick);
    h->tick.data = h;
    dkv_throttle_init(&h->throttle, h->opts.replay_bytes_per_s, uv_now(&h->loop));
    uv_timer_start(&h->tick, on_tick, h->opts.replay_interval_ms, h->opts.replay_interval_ms);
    if (uv_thread_create(&h->thread, replay_main, h) != 0) {
        return DKV_EIO; /* the process exits: nothing to unwind */
    }
    h->started = true;
    return 0;
}

void dkv_hints_stop(dkv_hints_t *h)
{
    if (h == NULL || !h->started) {
        return;
    }
    uv_async_send(&h->stop);
    uv_thread_join(&h->thread);
    h->started = false;
}

void dkv_hints_free(dkv_hints_t *h)
{
    if (h == NULL) {
        return;
    }
    dkv_hints_stop(h);
    for (size_t i = 0; i < h->n; i++) {
        dkv_buf_cleanup(&h->targets[i].prefix);
    }
    pthread_mutex_destroy(&h->mu);
    free(h->targets);
    free(h);
}

/* ---- status and sync points ---- */

dkv_hints_target_stats_t dkv_hints_target_stats(dkv_hints_t *h, uint32_t target)
{
    dkv_hints_target_stats_t s = {0};
    if (target >= h->n) {
        return s;
    }
    pthread_mutex_lock(&h->mu);
    s = h->targets[target].totals;
    s.count = h->targets[target].count;
    s.bytes = h->targets[target].bytes;
    s.oldest_created_ms = s.count > 0 ? h->targets[target].oldest_created_ms : 0;
    pthread_mutex_unlock(&h->mu);
    return s;
}

void dkv_hints_status_json(dkv_hints_t *h, dkv_buf_t *out)
{
    uint64_t now = wall_ms();
    pthread_mutex_lock(&h->mu);
    uint64_t count = 0;
    for (size_t i = 0; i < h->n; i++) {
        count += h->targets[i].count;
    }
    dkv_buf_printf(out,
                   "{\"enabled\":true,\"pending_count\":%" PRIu64 ",\"pending_bytes\":%" PRIu64
                   ",\"written\":%" PRIu64 ",\"replayed\":%" PRIu64 ",\"replay_failures\":%" PRIu64
                   ",\"dropped_window\":%" PRIu64 ",\"dropped_quota\":%" PRIu64
                   ",\"dropped_expired\":%" PRIu64 ",\"peers\":[",
                   count, h->total_bytes, h->written, h->replayed, h->replay_failures,
                   h->dropped_window, h->dropped_quota, h->dropped_expired);
    bool first = true;
    for (size_t i = 0; i < h->n; i++) {
        if (i == h->self_idx) {
            continue;
        }
        const target_t *t = &h->targets[i];
        uint64_t age = t->count > 0 && now > t->oldest_created_ms ? now - t->oldest_created_ms : 0;
        /* URLs come from --cluster, which the parser limits to URL characters. */
        dkv_buf_printf(out,
                       "%s{\"url\":\"%s\",\"count\":%" PRIu64 ",\"bytes\":%" PRIu64
                       ",\"oldest_age_ms\":%" PRIu64 "}",
                       first ? "" : ",", dkv_ring_url(h->ring, i), t->count, t->bytes, age);
        first = false;
    }
    pthread_mutex_unlock(&h->mu);
    dkv_buf_append_str(out, "]}");
}

void dkv_hints_sync_point(dkv_hints_t *h, dkv_hints_sync_point_t *sp)
{
    memset(sp, 0, sizeof(*sp));
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n && i < DKV_RING_MAX_NODES; i++) {
        sp->seq[i] = h->targets[i].count > 0 ? h->targets[i].max_seq : 0;
    }
    pthread_mutex_unlock(&h->mu);
    if (h->started) {
        uv_async_send(&h->wake);
    }
}

bool dkv_hints_sync_reached(dkv_hints_t *h, const dkv_hints_sync_point_t *sp)
{
    bool reached = true;
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < h->n && i < DKV_RING_MAX_NODES; i++) {
        const target_t *t = &h->targets[i];
        if (sp->seq[i] != 0 && t->count > 0 && t->delivered_seq < sp->seq[i]) {
            reached = false;
        }
    }
    pthread_mutex_unlock(&h->mu);
    return reached;
}
