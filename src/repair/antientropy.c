/* Anti-entropy exchanges and repair-gated tombstone GC; see antientropy.h. Everything but the
 * status counters (under `mu`) and the atomics belongs to the anti-entropy thread. */
#include "repair/antientropy.h"

#include "cluster/hlc.h"
#include "common/err.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/throttle.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

/* Margin taken off an exchange's start time (its GC proof): the peer's tree covers every write
 * before our first BRANCHES request, which is after the start; kept as a safety margin. */
#define TREE_MAX_STALENESS_MS 1000u
/* One SEGMENT reply: at most this many entry bytes (the peer pages the rest). */
#define SEGMENT_REPLY_MAX_BYTES (64u << 10)
#define LEAVES_INFLIGHT 8u
/* Segments whose entries are fetched at once: one SEGMENT request (a page) each in flight, so
 * an exchange over many differing segments is not bound by one round trip per segment. */
#define SEGS_INFLIGHT 8u
/* No new segment is fetched while more differing keys than this wait for their GET. */
#define TODO_MAX_KEYS 4096u
#define KEYS_INFLIGHT 32u
#define RETRY_MS 100u
#define THROTTLE_WAIT_MS 20u
#define RESULTS 64u
/* Approximate frame overhead counted for every request and reply (header, ids, lengths). */
#define FRAME_OVERHEAD_BYTES 24u

typedef enum phase {
    PH_IDLE,
    PH_BRANCHES,
    PH_LEAVES,
    PH_SEGMENTS, /* fetch differing segments' entries, compare, reconcile their keys */
} phase_t;

typedef struct entry {
    size_t key_off; /* in the owning buffer */
    uint16_t key_len;
    uint64_t ts;
    bool tombstone;
} entry_t;

typedef struct entries {
    dkv_buf_t keys;
    entry_t *v;
    size_t n;
    size_t cap;
} entries_t;

typedef struct peer_stat {
    uint64_t last_ok_start_ms; /* start of the last complete exchange; 0 = none */
    uint64_t last_ok_end_ms;
    uint64_t last_attempt_ms;
    uint64_t last_duration_ms;
    uint64_t ok;
    uint64_t failed;
    uint64_t segments;  /* segments whose entries were compared */
    uint64_t keys;      /* keys found different and reconciled */
    uint64_t sent;      /* records written to the peer */
    uint64_t received;  /* records written here from the peer */
    uint64_t bytes_sent;
    uint64_t bytes_received;
    char last_error[96];
} peer_stat_t;

/* One segment whose entries are being fetched from the peer. */
typedef struct segfetch {
    bool busy;
    uint32_t seg;
    entries_t remote; /* the peer's entries of `seg` so far */
} segfetch_t;

/* The exchange in progress (one at a time). */
typedef struct xchg {
    phase_t phase;
    uint32_t peer;
    uint64_t start_ms;    /* wall clock, minus the tree staleness bound */
    uint64_t deadline_ms; /* loop clock */
    bool failed;
    bool incomplete;      /* the peer is rebuilding: its versions could not be read */
    uint64_t write_mark;  /* the store write token at the start (dkv_store_sync_wal_since) */
    char error[96];
    unsigned inflight;      /* RPCs of every kind */
    unsigned keys_inflight; /* GETs and repair PUTs */
    bool waiting;         /* the wake timer will resume it */
    uint32_t branches[DKV_MERKLE_BRANCHES];
    uint32_t n_branches;
    uint32_t next_branch;
    uint32_t *segs;
    uint32_t n_segs;
    uint32_t cap_segs;
    uint32_t next_seg;
    segfetch_t fetch[SEGS_INFLIGHT];
    unsigned fetching; /* busy entries of `fetch` */
    entries_t todo;    /* keys of compared segments to reconcile; those before next_todo
                          have been sent */
    size_t next_todo;
    uint64_t segments, keys, sent, received, bytes_sent, bytes_received;
} xchg_t;

struct dkv_ae {
    dkv_replica_t *replica;
    dkv_store_t *store;
    dkv_identity_t *identity;
    const dkv_ring_t *ring;
    uint32_t self_idx;
    size_t n;
    dkv_hlc_t *hlc;
    dkv_rpc_shared_t *shared;
    dkv_ae_opts_t opts;
    dkv_merkle_t *merkle;
    /* thread */
    bool started;
    bool stopping;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_timer_t tick;
    uv_timer_t wake;
    uv_async_t kick;
    uv_async_t stop;
    dkv_rpc_client_t *rpc;
    dkv_throttle_t throttle;
    bool round_running;
    uint32_t round_peer;
    bool round_all_ok;
    uint64_t gc_swept_horizon_ms;
    xchg_t x;
    /* requests from other threads */
    _Atomic uint64_t want_round;
    _Atomic uint64_t want_compact;
    _Atomic bool want_refresh;
    /* status, under mu */
    pthread_mutex_t mu;
    uint64_t rounds_started;
    uint64_t rounds_done;
    bool results[RESULTS];
    uint64_t compacts_done;
    uint64_t gc_horizon_ms;
    uint64_t gc_last_sweep_ms;
    uint64_t gc_last_purged;
    uint64_t refreshes;
    uint64_t last_refresh_ms;
    uint32_t last_refresh_segments;
    peer_stat_t *stats; /* by ring index */
    _Atomic uint64_t *asked_at; /* by ring index: when that peer first asked for our branches
                                   or stats while our tree was dirty (wall ms); 0 = not asking */
};

static uint64_t wall_ms(void)
{
    return dkv_hlc_system_clock_ms(NULL);
}

static bool node_ready(const dkv_ae_t *ae)
{
    return ae->identity == NULL || dkv_identity_state(ae->identity) == DKV_NODE_READY;
}

/* A rebuilding node exchanges too: what it holds is real (written since it lost its data), and
 * an exchange only ever writes the newer version to the side behind. Only its "absent" is not
 * authoritative, and an exchange never acts on a peer's absence but by pushing to it. */
static bool may_exchange(const dkv_ae_t *ae)
{
    return node_ready(ae) || dkv_identity_state(ae->identity) == DKV_NODE_REBUILDING;
}

/* ---- entry lists ---- */

static void entries_init(entries_t *e)
{
    memset(e, 0, sizeof(*e));
    dkv_buf_init(&e->keys);
}

static void entries_clear(entries_t *e)
{
    e->keys.len = 0;
    e->n = 0;
}

static void entries_free(entries_t *e)
{
    dkv_buf_cleanup(&e->keys);
    free(e->v);
    memset(e, 0, sizeof(*e));
}

static void entries_add(entries_t *e, dkv_slice_t key, uint64_t ts, bool tombstone)
{
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 64;
        e->v = dkv_xrealloc(e->v, e->cap * sizeof(entry_t));
    }
    e->v[e->n++] = (entry_t){.key_off = e->keys.len, .key_len = (uint16_t)key.len, .ts = ts,
                             .tombstone = tombstone};
    dkv_buf_append(&e->keys, key.ptr, key.len);
}

static dkv_slice_t entry_key(const entries_t *e, size_t i)
{
    return dkv_slice(e->keys.data + e->v[i].key_off, e->v[i].key_len);
}

/* ---- the TREE server side (I/O threads) ---- */

void dkv_ae_serve_tree(void *arg, uint32_t peer, const dkv_rpc_msg_t *m, dkv_buf_t *out)
{
    dkv_ae_t *ae = arg;
    uint64_t id = m->req_id;
    if (peer >= ae->n || peer == ae->self_idx) {
        dkv_rpc_encode_tree_status(out, id, DKV_RPC_ERROR);
        return;
    }
    if (!may_exchange(ae) || !dkv_merkle_built(ae->merkle)) {
        dkv_rpc_encode_tree_status(out, id, DKV_RPC_NOT_READY);
        return;
    }
    uint64_t hashes[DKV_RPC_TREE_HASHES];
    switch (m->tree.kind) {
    case DKV_RPC_TREE_BRANCHES:
    case DKV_RPC_TREE_STATS: {
        /* Both answer for the whole tree: only from one whose refresh started after the
         * requester first asked (so it covers every write before the request), whatever the
         * load; meanwhile NOT_READY, and the requester asks again. */
        uint64_t now = wall_ms();
        uint64_t at = dkv_merkle_refreshed_at_ms(ae->merkle);
        uint64_t asked = atomic_load(&ae->asked_at[peer]);
        /* Not from a tree whose refresh is under way either: its dirty bits are taken, but
         * part of it still has the hashes from before. */
        bool stale = dkv_merkle_dirty_count(ae->merkle) > 0 && (asked == 0 || at <= asked);
        if (stale || dkv_merkle_refreshing(ae->merkle)) {
            if (asked == 0) {
                atomic_store(&ae->asked_at[peer], now);
            }
            atomic_store(&ae->want_refresh, true);
            uv_async_send(&ae->kick);
            dkv_rpc_encode_tree_status(out, id, DKV_RPC_NOT_READY);
            return;
        }
        atomic_store(&ae->asked_at[peer], 0);
        if (m->tree.kind == DKV_RPC_TREE_STATS) {
            uint64_t records = 0;
            uint64_t tombs = 0;
            dkv_merkle_counts(ae->merkle, &records, &tombs);
            dkv_rpc_encode_tree_stats(out, id, records,
                                      dkv_store_live_bytes_estimate(ae->store));
            return;
        }
        if (dkv_merkle_branches(ae->merkle, peer, hashes) != 0) {
            dkv_rpc_encode_tree_status(out, id, DKV_RPC_ERROR);
            return;
        }
        dkv_rpc_encode_tree_hashes(out, id, DKV_RPC_TREE_BRANCHES, hashes);
        return;
    }
    case DKV_RPC_TREE_LEAVES:
        if (dkv_merkle_leaves(ae->merkle, peer, m->tree.index, hashes) != 0) {
            dkv_rpc_encode_tree_status(out, id, DKV_RPC_ERROR);
            return;
        }
        dkv_rpc_encode_tree_hashes(out, id, DKV_RPC_TREE_LEAVES, hashes);
        return;
    case DKV_RPC_TREE_SEGMENT:
        break;
    default:
        dkv_rpc_encode_tree_status(out, id, DKV_RPC_ERROR);
        return;
    }
    uint32_t seg = m->tree.index;
    dkv_store_raw_iter_t *it = NULL;
    if (peer >= ae->n || peer == ae->self_idx ||
        dkv_store_digest_iter_new(ae->store, seg, seg + 1, &it) != 0) {
        dkv_rpc_encode_tree_status(out, id, DKV_RPC_ERROR);
        return;
    }
    dkv_buf_t entries;
    dkv_buf_init(&entries);
    uint32_t count = 0;
    bool more = false;
    int rc;
    for (;;) {
        uint32_t s;
        dkv_slice_t key;
        dkv_store_digest_t d;
        rc = dkv_store_digest_next(it, &s, &key, &d);
        if (rc != 0) {
            break;
        }
        if ((m->tree.after.len > 0 && dkv_slice_cmp(key, m->tree.after) <= 0) ||
            !dkv_merkle_shared(ae->ring, key, d.from, ae->self_idx, peer)) {
            continue;
        }
        if (entries.len >= SEGMENT_REPLY_MAX_BYTES) {
            more = true;
            rc = DKV_ENOTFOUND;
            break;
        }
        dkv_rpc_tree_entry_t e = {.key = key, .ts = d.ts, .tombstone = d.tombstone,
                                  .from = d.from};
        if (dkv_rpc_tree_entry_append(&entries, &e) > 0) {
            count++;
        }
    }
    dkv_store_raw_iter_free(it);
    if (rc != DKV_ENOTFOUND ||
        dkv_rpc_encode_tree_segment(out, id, dkv_buf_slice(&entries), count, more) != 0) {
        dkv_rpc_encode_tree_status(out, id, DKV_RPC_ERROR);
    }
    dkv_buf_cleanup(&entries);
}

/* ---- the exchange (anti-entropy thread) ---- */

static void advance(dkv_ae_t *ae);
static void next_peer(dkv_ae_t *ae);

static void fail(dkv_ae_t *ae, const char *why)
{
    xchg_t *x = &ae->x;
    if (!x->failed) {
        x->failed = true;
        snprintf(x->error, sizeof(x->error), "%s", why);
    }
}

static void on_wake(uv_timer_t *t);

/* Resumes the exchange after `ms` (a retry or the throttle). */
static void wait_then_advance(dkv_ae_t *ae, uint64_t ms)
{
    ae->x.waiting = true;
    uv_timer_start(&ae->wake, on_wake, ms, 0);
}

/* Records the end of the exchange with x->peer and goes on to the next peer. */
static void exchange_end(dkv_ae_t *ae)
{
    xchg_t *x = &ae->x;
    bool ok = !x->failed;
    if (ok && x->incomplete) {
        ok = false;
        snprintf(x->error, sizeof(x->error),
                 "the peer is rebuilding: records were pushed to it, none read from it");
    }
    /* Every repair write of the exchange must be durable, including one whose failure another
     * sync of this thread (the tombstone GC's) was told about: the exchange then did not
     * happen, and the tombstone GC must not count it. */
    if (ok && dkv_store_sync_wal_since(ae->store, &x->write_mark) != 0) {
        ok = false;
        snprintf(x->error, sizeof(x->error), "write-ahead log sync failed");
    }
    uint64_t now = wall_ms();
    pthread_mutex_lock(&ae->mu);
    peer_stat_t *st = &ae->stats[x->peer];
    st->last_duration_ms = now > st->last_attempt_ms ? now - st->last_attempt_ms : 0;
    st->segments += x->segments;
    st->keys += x->keys;
    st->sent += x->sent;
    st->received += x->received;
    st->bytes_sent += x->bytes_sent;
    st->bytes_received += x->bytes_received;
    if (ok) {
        st->ok++;
        st->last_ok_start_ms = x->start_ms;
        st->last_ok_end_ms = now;
        st->last_error[0] = '\0';
    } else {
        st->failed++;
        snprintf(st->last_error, sizeof(st->last_error), "%s", x->error);
    }
    pthread_mutex_unlock(&ae->mu);
    if (ok) {
        if (x->keys > 0) {
            DKV_LOG_INFO("anti-entropy: exchange with %s: %" PRIu64 " segments differed, %" PRIu64
                         " keys repaired (%" PRIu64 " records sent, %" PRIu64 " received)",
                         dkv_ring_url(ae->ring, x->peer), x->segments, x->keys, x->sent,
                         x->received);
        } else {
            DKV_LOG_DEBUG("anti-entropy: exchange with %s: in sync (%" PRIu64 " segments compared)",
                          dkv_ring_url(ae->ring, x->peer), x->segments);
        }
    } else {
        ae->round_all_ok = false;
        DKV_LOG_DEBUG("anti-entropy: exchange with %s failed: %s", dkv_ring_url(ae->ring, x->peer),
                      x->error);
    }
    x->phase = PH_IDLE;
    ae->round_peer++;
    next_peer(ae);
}

typedef struct treq {
    dkv_ae_t *ae;
    uint8_t kind;
    uint32_t index;
    unsigned slot; /* SEGMENT: the x->fetch entry */
} treq_t;

static void tree_cb(void *arg, int rc, const dkv_rpc_msg_t *reply);

static bool send_tree(dkv_ae_t *ae, uint8_t kind, uint32_t index, dkv_slice_t after, unsigned slot)
{
    xchg_t *x = &ae->x;
    treq_t *t = dkv_xmalloc(sizeof(*t));
    *t = (treq_t){.ae = ae, .kind = kind, .index = index, .slot = slot};
    dkv_rpc_tree_req_t req = {.kind = kind, .index = index, .after = after};
    dkv_rpc_call_t call = {.type = DKV_RPC_TREE, .tree = &req, .scan_cb = tree_cb};
    int rc = dkv_rpc_client_call(ae->rpc, x->peer, &call, NULL, t);
    if (rc != 0) {
        free(t);
        fail(ae, dkv_strerror(rc));
        return false;
    }
    x->inflight++;
    x->bytes_sent += FRAME_OVERHEAD_BYTES + after.len;
    dkv_throttle_spend(&ae->throttle, FRAME_OVERHEAD_BYTES + after.len);
    return true;
}

/* Collects the peer's SEGMENT reply for x->fetch[slot]; asks for the next page or compares
 * the segment. */
static void on_segment_page(dkv_ae_t *ae, unsigned slot, const dkv_rpc_msg_t *reply);

static void tree_cb(void *arg, int rc, const dkv_rpc_msg_t *reply)
{
    treq_t *t = arg;
    dkv_ae_t *ae = t->ae;
    uint8_t kind = t->kind;
    uint32_t index = t->index;
    unsigned slot = t->slot;
    free(t);
    if (ae->stopping) {
        return;
    }
    xchg_t *x = &ae->x;
    x->inflight--;
    if (rc == DKV_ENOTREADY && kind == DKV_RPC_TREE_BRANCHES && !x->failed) {
        /* The peer is refreshing its tree (or not ready): ask again shortly. */
        if (uv_now(&ae->loop) >= x->deadline_ms) {
            fail(ae, "the peer's tree was not ready in time");
        } else {
            wait_then_advance(ae, RETRY_MS);
            return;
        }
    } else if (rc != 0) {
        fail(ae, rc == DKV_ENOTREADY ? "the peer is not ready" : dkv_strerror(rc));
    }
    if (x->failed) {
        advance(ae);
        return;
    }
    if (kind == DKV_RPC_TREE_SEGMENT) {
        on_segment_page(ae, slot, reply);
        return;
    }
    size_t got = FRAME_OVERHEAD_BYTES + DKV_RPC_TREE_HASHES * 8u;
    x->bytes_received += got;
    dkv_throttle_spend(&ae->throttle, got);
    uint64_t mine[DKV_MERKLE_FANOUT];
    if (kind == DKV_RPC_TREE_BRANCHES) {
        if (dkv_merkle_branches(ae->merkle, x->peer, mine) != 0) {
            fail(ae, "no tree for the peer");
            advance(ae);
            return;
        }
        x->n_branches = 0;
        for (uint32_t b = 0; b < DKV_MERKLE_BRANCHES; b++) {
            if (mine[b] != dkv_rpc_tree_hash(reply, b)) {
                x->branches[x->n_branches++] = b;
            }
        }
        x->next_branch = 0;
        x->phase = PH_LEAVES;
    } else {
        dkv_merkle_leaves(ae->merkle, x->peer, index, mine);
        for (uint32_t i = 0; i < DKV_MERKLE_FANOUT; i++) {
            if (mine[i] != dkv_rpc_tree_hash(reply, i)) {
                if (x->n_segs == x->cap_segs) {
                    x->cap_segs = x->cap_segs ? x->cap_segs * 2 : 256;
                    x->segs = dkv_xrealloc(x->segs, x->cap_segs * sizeof(uint32_t));
                }
                x->segs[x->n_segs++] = index * DKV_MERKLE_FANOUT + i;
            }
        }
    }
    advance(ae);
}

static int cmp_entry_keys(const entries_t *a, size_t i, const entries_t *b, size_t j)
{
    return dkv_slice_cmp(entry_key(a, i), entry_key(b, j));
}

/* Compares the peer's entries of f->seg with ours (shared with the peer); appends the keys that
 * differ to x->todo. */
static int compare_segment(dkv_ae_t *ae, const segfetch_t *f)
{
    xchg_t *x = &ae->x;
    entries_t local;
    entries_init(&local);
    dkv_store_raw_iter_t *it = NULL;
    int rc = dkv_store_digest_iter_new(ae->store, f->seg, f->seg + 1, &it);
    if (rc != 0) {
        entries_free(&local);
        return rc;
    }
    for (;;) {
        uint32_t s;
        dkv_slice_t key;
        dkv_store_digest_t d;
        rc = dkv_store_digest_next(it, &s, &key, &d);
        if (rc != 0) {
            break;
        }
        if (dkv_merkle_shared(ae->ring, key, d.from, ae->self_idx, x->peer)) {
            entries_add(&local, key, d.ts, d.tombstone);
        }
    }
    dkv_store_raw_iter_free(it);
    if (rc != DKV_ENOTFOUND) {
        entries_free(&local);
        return rc;
    }
    /* Both lists are in key order (the digest column family's order within a segment). */
    size_t i = 0;
    size_t j = 0;
    const entries_t *r = &f->remote;
    while (i < local.n || j < r->n) {
        int c = i >= local.n ? 1 : j >= r->n ? -1 : cmp_entry_keys(&local, i, r, j);
        if (c < 0) {
            entries_add(&x->todo, entry_key(&local, i), 0, false);
            i++;
        } else if (c > 0) {
            entries_add(&x->todo, entry_key(r, j), 0, false);
            j++;
        } else {
            if (local.v[i].ts != r->v[j].ts || local.v[i].tombstone != r->v[j].tombstone) {
                entries_add(&x->todo, entry_key(&local, i), 0, false);
            }
            i++;
            j++;
        }
    }
    entries_free(&local);
    x->segments++;
    return 0;
}

static void on_segment_page(dkv_ae_t *ae, unsigned slot, const dkv_rpc_msg_t *reply)
{
    xchg_t *x = &ae->x;
    segfetch_t *f = &x->fetch[slot];
    size_t got = FRAME_OVERHEAD_BYTES + reply->tree_reply.entries.len;
    x->bytes_received += got;
    dkv_throttle_spend(&ae->throttle, got);
    dkv_slice_t rest = reply->tree_reply.entries;
    dkv_rpc_tree_entry_t e;
    while (dkv_rpc_tree_iter_next(&rest, &e) == 0) {
        entries_add(&f->remote, e.key, e.ts, e.tombstone);
    }
    if (reply->tree_reply.more && f->remote.n > 0) {
        dkv_slice_t last = entry_key(&f->remote, f->remote.n - 1);
        /* Copy: the cursor must not point into the buffer it is appended to. */
        uint8_t after[DKV_RPC_MAX_KEY_BYTES];
        memcpy(after, last.ptr, last.len);
        send_tree(ae, DKV_RPC_TREE_SEGMENT, f->seg, dkv_slice(after, last.len), slot);
        advance(ae);
        return;
    }
    if (compare_segment(ae, f) != 0) {
        fail(ae, "local digest scan failed");
    }
    f->busy = false;
    x->fetching--;
    advance(ae);
}

/* Starts fetching segment `seg`'s entries into a free x->fetch entry (one must be free). */
static void start_fetch(dkv_ae_t *ae, uint32_t seg)
{
    xchg_t *x = &ae->x;
    for (unsigned i = 0; i < SEGS_INFLIGHT; i++) {
        segfetch_t *f = &x->fetch[i];
        if (!f->busy) {
            f->busy = true;
            f->seg = seg;
            entries_clear(&f->remote);
            x->fetching++;
            send_tree(ae, DKV_RPC_TREE_SEGMENT, seg, dkv_slice(NULL, 0), i);
            return;
        }
    }
}

/* Does a record with replica-set size `from` of `key` belong on node `idx`? */
static bool belongs_on(const dkv_ae_t *ae, dkv_slice_t key, uint8_t from, uint32_t idx)
{
    return dkv_merkle_shared(ae->ring, key, from, idx, idx);
}

typedef struct kreq {
    dkv_ae_t *ae;
    uint16_t key_len;
    uint8_t key[];
} kreq_t;

static void put_cb(void *arg, int rc, const dkv_record_t *rec)
{
    (void)rec;
    kreq_t *k = arg;
    dkv_ae_t *ae = k->ae;
    free(k);
    if (ae->stopping) {
        return;
    }
    ae->x.inflight--;
    ae->x.keys_inflight--;
    if (rc != 0) {
        fail(ae, "a repair write to the peer failed");
    }
    advance(ae);
}

/* The peer's version of one differing key: write the newer version to the side behind. */
static void get_cb(void *arg, int rc, const dkv_record_t *remote)
{
    kreq_t *k = arg;
    dkv_ae_t *ae = k->ae;
    if (ae->stopping) {
        free(k);
        return;
    }
    xchg_t *x = &ae->x;
    x->inflight--;
    x->keys_inflight--;
    dkv_slice_t key = dkv_slice(k->key, k->key_len);
    bool peer_unknown = rc == DKV_ENOTREADY; /* rebuilding: push ours, read nothing */
    if (peer_unknown) {
        x->incomplete = true;
    }
    if (rc != 0 && rc != DKV_ENOTFOUND && !peer_unknown) {
        fail(ae, dkv_strerror(rc));
        free(k);
        advance(ae);
        return;
    }
    dkv_record_t local;
    dkv_owned_t buf = {0};
    /* Our store as it is (not the replica read, which a rebuilding node refuses): the records a
     * rebuilding node holds are real. */
    int lrc = dkv_replica_get_stored(ae->replica, key, &local, &buf);
    if (lrc != 0 && lrc != DKV_ENOTFOUND) {
        fail(ae, "local read failed");
        free(k);
        advance(ae);
        return;
    }
    bool have_remote = rc == 0;
    bool have_local = lrc == 0;
    int c = have_remote && have_local ? dkv_record_cmp(remote, &local) : have_remote ? 1 : -1;
    if (!have_remote && !have_local) {
        c = 0;
    }
    x->keys++;
    if (c > 0 && (have_local || belongs_on(ae, key, remote->from, ae->self_idx))) {
        int prc = dkv_replica_put(ae->replica, key, remote);
        if (prc != 0) {
            fail(ae, "local repair write failed");
        } else {
            x->received++;
            size_t b = FRAME_OVERHEAD_BYTES + key.len + remote->value.len;
            x->bytes_received += b;
            dkv_throttle_spend(&ae->throttle, b);
        }
        free(k);
    } else if (c < 0 && (have_remote || belongs_on(ae, key, local.from, x->peer))) {
        dkv_rpc_call_t call = {.type = DKV_RPC_PUT, .key = key, .rec = &local};
        int prc = dkv_rpc_client_call(ae->rpc, x->peer, &call, put_cb, k);
        if (prc != 0) {
            fail(ae, "a repair write to the peer could not be sent");
            free(k);
        } else {
            x->inflight++;
            x->keys_inflight++;
            x->sent++;
            size_t b = FRAME_OVERHEAD_BYTES + key.len + local.value.len;
            x->bytes_sent += b;
            dkv_throttle_spend(&ae->throttle, b);
        }
    } else {
        free(k);
    }
    dkv_owned_release(&buf);
    advance(ae);
}

static void send_get(dkv_ae_t *ae, dkv_slice_t key)
{
    xchg_t *x = &ae->x;
    kreq_t *k = dkv_xmalloc(sizeof(*k) + key.len);
    k->ae = ae;
    k->key_len = (uint16_t)key.len;
    memcpy(k->key, key.ptr, key.len);
    dkv_rpc_call_t call = {.type = DKV_RPC_GET, .key = key};
    int rc = dkv_rpc_client_call(ae->rpc, x->peer, &call, get_cb, k);
    if (rc != 0) {
        free(k);
        fail(ae, dkv_strerror(rc));
        return;
    }
    x->inflight++;
    x->keys_inflight++;
    x->bytes_sent += FRAME_OVERHEAD_BYTES + key.len;
    dkv_throttle_spend(&ae->throttle, FRAME_OVERHEAD_BYTES + key.len);
}

/* Drives the exchange as far as it can go now; every callback ends here. */
static void advance(dkv_ae_t *ae)
{
    xchg_t *x = &ae->x;
    if (ae->stopping || x->phase == PH_IDLE || x->waiting) {
        return;
    }
    if (!x->failed && uv_now(&ae->loop) >= x->deadline_ms) {
        fail(ae, "timed out");
    }
    if (x->failed) {
        if (x->inflight == 0) {
            exchange_end(ae);
        }
        return;
    }
    if (!dkv_throttle_ready(&ae->throttle, uv_now(&ae->loop))) {
        if (x->inflight == 0) {
            wait_then_advance(ae, THROTTLE_WAIT_MS);
        }
        return;
    }
    switch (x->phase) {
    case PH_BRANCHES:
        if (x->inflight == 0) {
            send_tree(ae, DKV_RPC_TREE_BRANCHES, 0, dkv_slice(NULL, 0), 0);
            if (x->failed) {
                advance(ae);
            }
        }
        return;
    case PH_LEAVES:
        while (!x->failed && x->inflight < LEAVES_INFLIGHT && x->next_branch < x->n_branches) {
            send_tree(ae, DKV_RPC_TREE_LEAVES, x->branches[x->next_branch++], dkv_slice(NULL, 0),
                      0);
        }
        if (x->failed) {
            advance(ae);
            return;
        }
        if (x->next_branch < x->n_branches || x->inflight > 0) {
            return;
        }
        x->phase = PH_SEGMENTS;
        /* fall through */
    case PH_SEGMENTS:
        /* Keys first (they free the todo list), then more segments, both within the throttle
         * and their in-flight bounds. */
        while (!x->failed && x->keys_inflight < KEYS_INFLIGHT && x->next_todo < x->todo.n &&
               dkv_throttle_ready(&ae->throttle, uv_now(&ae->loop))) {
            send_get(ae, entry_key(&x->todo, x->next_todo++));
        }
        if (x->next_todo >= x->todo.n) {
            entries_clear(&x->todo); /* every GET holds its own copy of its key */
            x->next_todo = 0;
        }
        while (!x->failed && x->fetching < SEGS_INFLIGHT && x->next_seg < x->n_segs &&
               x->todo.n - x->next_todo < TODO_MAX_KEYS &&
               dkv_throttle_ready(&ae->throttle, uv_now(&ae->loop))) {
            start_fetch(ae, x->segs[x->next_seg++]);
        }
        if (x->failed) {
            advance(ae);
            return;
        }
        if (x->inflight > 0) {
            return; /* a reply will call again */
        }
        if (x->next_seg >= x->n_segs && x->todo.n == 0) {
            exchange_end(ae);
        } else {
            wait_then_advance(ae, THROTTLE_WAIT_MS); /* nothing in flight: the throttle */
        }
        return;
    case PH_IDLE:
        return;
    }
}

static void on_wake(uv_timer_t *t)
{
    dkv_ae_t *ae = t->data;
    ae->x.waiting = false;
    advance(ae);
}

static void refresh_trees(dkv_ae_t *ae)
{
    uint32_t rehashed = 0;
    uint64_t t0 = wall_ms();
    atomic_store(&ae->want_refresh, false);
    int rc = dkv_merkle_refresh(ae->merkle, &rehashed);
    uint64_t took = wall_ms() - t0;
    pthread_mutex_lock(&ae->mu);
    ae->refreshes++;
    ae->last_refresh_ms = took;
    ae->last_refresh_segments = rehashed;
    pthread_mutex_unlock(&ae->mu);
    if (rc != 0) {
        DKV_LOG_WARN("anti-entropy: tree refresh failed: %s", dkv_strerror(rc));
    } else if (took >= 1000) {
        DKV_LOG_INFO("anti-entropy: %u segments rehashed in %" PRIu64 " ms", rehashed, took);
    }
}

static void exchange_begin(dkv_ae_t *ae, uint32_t peer)
{
    xchg_t *x = &ae->x;
    /* The start is taken before our refresh, less the staleness the peer's tree may have. */
    uint64_t now = wall_ms();
    x->start_ms = now > TREE_MAX_STALENESS_MS ? now - TREE_MAX_STALENESS_MS : 0;
    refresh_trees(ae);
    x->peer = peer;
    x->failed = false;
    x->incomplete = false;
    x->write_mark = dkv_store_write_token();
    x->error[0] = '\0';
    x->inflight = 0;
    x->keys_inflight = 0;
    x->waiting = false;
    x->n_branches = 0;
    x->next_branch = 0;
    x->n_segs = 0;
    x->next_seg = 0;
    for (unsigned i = 0; i < SEGS_INFLIGHT; i++) {
        x->fetch[i].busy = false; /* a failed exchange may have left some */
    }
    x->fetching = 0;
    entries_clear(&x->todo);
    x->next_todo = 0;
    x->segments = x->keys = x->sent = x->received = x->bytes_sent = x->bytes_received = 0;
    x->deadline_ms = uv_now(&ae->loop) + ae->opts.exchange_timeout_ms;
    x->phase = PH_BRANCHES;
    pthread_mutex_lock(&ae->mu);
    ae->stats[peer].last_attempt_ms = now;
    pthread_mutex_unlock(&ae->mu);
    advance(ae);
}

/* ---- tombstone GC ---- */

static void gc_sweep(dkv_ae_t *ae)
{
    uint64_t oldest = UINT64_MAX;
    pthread_mutex_lock(&ae->mu);
    for (size_t p = 0; p < ae->n; p++) {
        if (p != ae->self_idx && ae->stats[p].last_ok_start_ms < oldest) {
            oldest = ae->stats[p].last_ok_start_ms;
        }
    }
    pthread_mutex_unlock(&ae->mu);
    uint64_t margin = ae->opts.tombstone_grace_ms + ae->opts.max_clock_offset_ms;
    if (oldest == 0 || oldest == UINT64_MAX || oldest <= margin) {
        return; /* some peer has no complete exchange yet */
    }
    uint64_t horizon = oldest - margin;
    pthread_mutex_lock(&ae->mu);
    ae->gc_horizon_ms = horizon;
    pthread_mutex_unlock(&ae->mu);
    if (horizon <= ae->gc_swept_horizon_ms) {
        return;
    }
    uint64_t max_ts = (horizon << DKV_HLC_LOGICAL_BITS) - 1;
    /* Before the sweep: from now on a purged tombstone pushed back to us is dropped. */
    dkv_replica_set_purge_horizon(ae->replica, max_ts);
    dkv_store_raw_iter_t *it = NULL;
    if (dkv_store_digest_iter_new(ae->store, 0, DKV_STORE_SEGMENTS, &it) != 0) {
        return;
    }
    uint64_t purged = 0;
    int rc;
    for (;;) {
        uint32_t seg;
        dkv_slice_t key;
        dkv_store_digest_t d;
        rc = dkv_store_digest_next(it, &seg, &key, &d);
        if (rc != 0) {
            break;
        }
        /* A record with an unknown replica set is in no tree: no exchange ever covered it. */
        if (!d.tombstone || d.from == 0 || d.ts > max_ts) {
            continue;
        }
        if (dkv_store_purge_tombstone(ae->store, key, max_ts) == 0) {
            purged++;
        }
    }
    dkv_store_raw_iter_free(it);
    dkv_store_sync_wal(ae->store);
    if (rc == DKV_ENOTFOUND) {
        ae->gc_swept_horizon_ms = horizon;
    }
    pthread_mutex_lock(&ae->mu);
    ae->gc_last_sweep_ms = wall_ms();
    ae->gc_last_purged = purged;
    pthread_mutex_unlock(&ae->mu);
    if (purged > 0) {
        DKV_LOG_INFO("anti-entropy: purged %" PRIu64 " tombstones older than %" PRIu64
                     " (every peer repaired since, plus %" PRIu64 " ms grace)",
                     purged, horizon, margin);
    }
}

/* ---- rounds ---- */

static void round_finish(dkv_ae_t *ae)
{
    ae->round_running = false;
    if (node_ready(ae)) {
        gc_sweep(ae);
    }
    pthread_mutex_lock(&ae->mu);
    ae->rounds_done = ae->rounds_started;
    ae->results[ae->rounds_done % RESULTS] = ae->round_all_ok;
    pthread_mutex_unlock(&ae->mu);
    uv_async_send(&ae->kick); /* another round may have been asked for meanwhile */
}

static void next_peer(dkv_ae_t *ae)
{
    while (ae->round_peer < ae->n && ae->round_peer == ae->self_idx) {
        ae->round_peer++;
    }
    if (ae->round_peer >= ae->n) {
        round_finish(ae);
        return;
    }
    if (!may_exchange(ae)) {
        xchg_t *x = &ae->x;
        x->peer = ae->round_peer;
        x->failed = true;
        snprintf(x->error, sizeof(x->error), "this node is joining");
        x->segments = x->keys = x->sent = x->received = x->bytes_sent = x->bytes_received = 0;
        exchange_end(ae);
        return;
    }
    exchange_begin(ae, ae->round_peer);
}

static void round_start(dkv_ae_t *ae)
{
    ae->round_running = true;
    ae->round_peer = 0;
    ae->round_all_ok = true;
    pthread_mutex_lock(&ae->mu);
    ae->rounds_started++;
    pthread_mutex_unlock(&ae->mu);
    next_peer(ae);
}

static void on_kick(uv_async_t *a)
{
    dkv_ae_t *ae = a->data;
    if (ae->stopping) {
        return;
    }
    if (atomic_load(&ae->want_refresh)) {
        refresh_trees(ae); /* a peer waits for our branches */
    }
    uint64_t want_c = atomic_load(&ae->want_compact);
    pthread_mutex_lock(&ae->mu);
    uint64_t done_c = ae->compacts_done;
    uint64_t started = ae->rounds_started;
    pthread_mutex_unlock(&ae->mu);
    if (want_c > done_c && !ae->round_running) {
        uint64_t t0 = wall_ms();
        dkv_store_compact(ae->store);
        DKV_LOG_INFO("anti-entropy: full compaction took %" PRIu64 " ms", wall_ms() - t0);
        pthread_mutex_lock(&ae->mu);
        ae->compacts_done = want_c;
        pthread_mutex_unlock(&ae->mu);
    }
    if (!ae->round_running && atomic_load(&ae->want_round) > started) {
        round_start(ae);
    }
}

static void on_tick(uv_timer_t *t)
{
    dkv_ae_t *ae = t->data;
    if (ae->stopping) {
        return;
    }
    if (!dkv_merkle_built(ae->merkle)) {
        refresh_trees(ae); /* the first tick, at start: build the trees; rounds come later */
        return;
    }
    if (!ae->round_running && ae->opts.interval_ms > 0) {
        round_start(ae);
    }
}

uint64_t dkv_ae_request_round(dkv_ae_t *ae)
{
    pthread_mutex_lock(&ae->mu);
    uint64_t r = ae->rounds_started + 1;
    pthread_mutex_unlock(&ae->mu);
    uint64_t cur = atomic_load(&ae->want_round);
    while (cur < r && !atomic_compare_exchange_weak(&ae->want_round, &cur, r)) {
    }
    uv_async_send(&ae->kick);
    return r;
}

bool dkv_ae_round_result(dkv_ae_t *ae, uint64_t round, bool *all_ok)
{
    pthread_mutex_lock(&ae->mu);
    bool done = ae->rounds_done >= round;
    *all_ok = done && ae->rounds_done - round < RESULTS && ae->results[round % RESULTS];
    pthread_mutex_unlock(&ae->mu);
    return done;
}

uint64_t dkv_ae_request_compact(dkv_ae_t *ae)
{
    uint64_t t = atomic_fetch_add(&ae->want_compact, 1) + 1;
    uv_async_send(&ae->kick);
    return t;
}

bool dkv_ae_compact_done(dkv_ae_t *ae, uint64_t ticket)
{
    pthread_mutex_lock(&ae->mu);
    bool done = ae->compacts_done >= ticket;
    pthread_mutex_unlock(&ae->mu);
    return done;
}

/* ---- thread ---- */

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_stop(uv_async_t *a)
{
    dkv_ae_t *ae = a->data;
    ae->stopping = true;
    uv_timer_stop(&ae->tick);
    uv_timer_stop(&ae->wake);
    dkv_rpc_client_close(ae->rpc, NULL, NULL);
    ae->rpc = NULL;
    uv_close((uv_handle_t *)&ae->tick, on_closed);
    uv_close((uv_handle_t *)&ae->wake, on_closed);
    uv_close((uv_handle_t *)&ae->kick, on_closed);
    uv_close((uv_handle_t *)&ae->stop, on_closed);
}

static void thread_main(void *arg)
{
    dkv_ae_t *ae = arg;
    dkv_thread_set_name("dkv-ae");
    dkv_thread_set_background();
    dkv_store_thread_init();
    uv_run(&ae->loop, UV_RUN_DEFAULT);
    uv_loop_close(&ae->loop);
}

int dkv_ae_new(dkv_replica_t *replica, dkv_identity_t *identity, const dkv_ring_t *ring,
               uint32_t self_idx, dkv_hlc_t *hlc, dkv_rpc_shared_t *shared,
               const dkv_ae_opts_t *opts, dkv_ae_t **out)
{
    dkv_ae_t *ae = dkv_xcalloc(1, sizeof(*ae));
    ae->replica = replica;
    ae->store = dkv_replica_store(replica);
    ae->identity = identity;
    ae->ring = ring;
    ae->self_idx = self_idx;
    ae->n = dkv_ring_size(ring);
    ae->hlc = hlc;
    ae->shared = shared;
    ae->opts = *opts;
    ae->stats = dkv_xcalloc(ae->n, sizeof(peer_stat_t));
    ae->asked_at = dkv_xcalloc(ae->n, sizeof(*ae->asked_at));
    pthread_mutex_init(&ae->mu, NULL);
    for (unsigned i = 0; i < SEGS_INFLIGHT; i++) {
        entries_init(&ae->x.fetch[i].remote);
    }
    entries_init(&ae->x.todo);
    dkv_merkle_new(ae->store, ring, self_idx, &ae->merkle);
    dkv_store_set_write_observer(ae->store, dkv_merkle_mark_dirty, ae->merkle);
    *out = ae;
    return 0;
}

int dkv_ae_start(dkv_ae_t *ae)
{
    uv_loop_init(&ae->loop);
    int rc = dkv_rpc_client_new(&ae->loop, ae->opts.rpc_loop_idx, ae->ring, ae->self_idx,
                                ae->hlc, ae->shared, &ae->opts.rpc, &ae->rpc);
    if (rc != 0) {
        uv_loop_close(&ae->loop);
        return rc;
    }
    uv_timer_init(&ae->loop, &ae->tick);
    ae->tick.data = ae;
    uv_timer_init(&ae->loop, &ae->wake);
    ae->wake.data = ae;
    uv_async_init(&ae->loop, &ae->kick, on_kick);
    ae->kick.data = ae;
    uv_async_init(&ae->loop, &ae->stop, on_stop);
    ae->stop.data = ae;
    dkv_throttle_init(&ae->throttle, ae->opts.max_bytes_per_s, uv_now(&ae->loop));
    /* The first tick builds the trees at once; the first round comes one interval later. */
    uint64_t every = ae->opts.interval_ms > 0 ? ae->opts.interval_ms : 1000;
    uv_timer_start(&ae->tick, on_tick, 0, every);
    if (uv_thread_create(&ae->thread, thread_main, ae) != 0) {
        return DKV_EIO;
    }
    ae->started = true;
    return 0;
}

void dkv_ae_free(dkv_ae_t *ae)
{
    if (ae == NULL) {
        return;
    }
    if (ae->started) {
        uv_async_send(&ae->stop);
        uv_thread_join(&ae->thread);
    }
    dkv_store_set_write_observer(ae->store, NULL, NULL);
    dkv_merkle_free(ae->merkle);
    for (unsigned i = 0; i < SEGS_INFLIGHT; i++) {
        entries_free(&ae->x.fetch[i].remote);
    }
    entries_free(&ae->x.todo);
    free(ae->x.segs);
    pthread_mutex_destroy(&ae->mu);
    free(ae->stats);
    free((void *)ae->asked_at);
    free(ae);
}

void dkv_ae_status_json(dkv_ae_t *ae, dkv_buf_t *out)
{
    uint64_t records = 0;
    uint64_t tombs = 0;
    dkv_merkle_counts(ae->merkle, &records, &tombs);
    pthread_mutex_lock(&ae->mu);
    dkv_buf_printf(out,
                   "{\"interval_ms\":%" PRIu64 ",\"max_bytes_per_s\":%" PRIu64
                   ",\"rounds_started\":%" PRIu64 ",\"rounds_done\":%" PRIu64
                   ",\"tree\":{\"built\":%s,\"dirty_segments\":%u,\"records\":%" PRIu64
                   ",\"tombstones\":%" PRIu64 ",\"refreshes\":%" PRIu64
                   ",\"last_refresh_ms\":%" PRIu64 ",\"last_refresh_segments\":%u}"
                   ",\"gc\":{\"tombstone_grace_ms\":%" PRIu64 ",\"horizon_ms\":%" PRIu64
                   ",\"last_sweep_ms\":%" PRIu64 ",\"last_purged\":%" PRIu64
                   ",\"purged\":%" PRIu64 ",\"late_tombstones_dropped\":%" PRIu64
                   ",\"keys_on_disk_estimate\":%" PRIu64 "},\"peers\":[",
                   ae->opts.interval_ms, ae->opts.max_bytes_per_s, ae->rounds_started,
                   ae->rounds_done, dkv_merkle_built(ae->merkle) ? "true" : "false",
                   dkv_merkle_dirty_count(ae->merkle), records, tombs, ae->refreshes,
                   ae->last_refresh_ms, ae->last_refresh_segments, ae->opts.tombstone_grace_ms,
                   ae->gc_horizon_ms, ae->gc_last_sweep_ms, ae->gc_last_purged,
                   dkv_store_purged(ae->store), dkv_replica_late_tombstones(ae->replica),
                   dkv_store_keys_estimate(ae->store));
    bool first = true;
    for (size_t p = 0; p < ae->n; p++) {
        if (p == ae->self_idx) {
            continue;
        }
        const peer_stat_t *st = &ae->stats[p];
        dkv_buf_printf(out,
                       "%s{\"url\":\"%s\",\"last_ok_start_ms\":%" PRIu64
                       ",\"last_ok_end_ms\":%" PRIu64 ",\"last_attempt_ms\":%" PRIu64
                       ",\"last_duration_ms\":%" PRIu64 ",\"exchanges_ok\":%" PRIu64
                       ",\"exchanges_failed\":%" PRIu64 ",\"segments_compared\":%" PRIu64
                       ",\"keys_repaired\":%" PRIu64 ",\"records_sent\":%" PRIu64
                       ",\"records_received\":%" PRIu64 ",\"bytes_sent\":%" PRIu64
                       ",\"bytes_received\":%" PRIu64 ",\"last_error\":\"%s\"}",
                       first ? "" : ",", dkv_ring_url(ae->ring, p), st->last_ok_start_ms,
                       st->last_ok_end_ms, st->last_attempt_ms, st->last_duration_ms, st->ok,
                       st->failed, st->segments, st->keys, st->sent, st->received, st->bytes_sent,
                       st->bytes_received, st->last_error);
        first = false;
    }
    pthread_mutex_unlock(&ae->mu);
    dkv_buf_append_str(out, "]}");
}

void dkv_ae_stats(dkv_ae_t *ae, dkv_ae_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    dkv_merkle_counts(ae->merkle, &out->tree_records, &out->tree_tombstones);
    out->dirty_segments = dkv_merkle_dirty_count(ae->merkle);
    out->tombstones_purged = dkv_store_purged(ae->store);
    out->late_tombstones_dropped = dkv_replica_late_tombstones(ae->replica);
    pthread_mutex_lock(&ae->mu);
    out->rounds_started = ae->rounds_started;
    out->rounds_done = ae->rounds_done;
    out->gc_horizon_ms = ae->gc_horizon_ms;
    for (size_t p = 0; p < ae->n && p < DKV_RING_MAX_NODES; p++) {
        const peer_stat_t *st = &ae->stats[p];
        dkv_ae_peer_stats_t *o = &out->peers[p];
        o->exchanges_ok = st->ok;
        o->exchanges_failed = st->failed;
        o->segments_compared = st->segments;
        o->keys_repaired = st->keys;
        o->records_sent = st->sent;
        o->records_received = st->received;
        o->bytes_sent = st->bytes_sent;
        o->bytes_received = st->bytes_received;
        o->last_ok_start_ms = st->last_ok_start_ms;
    }
    pthread_mutex_unlock(&ae->mu);
}
