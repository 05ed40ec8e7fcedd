/*
 * Unit tests of the coordinator (coord/coord.h): quorum arithmetic, last-write-wins across
 * replicas, late replies, read repair, hinted handoff and the record a PUT sends. Each test builds
 * one node of a 3- or 5-node ring (support/node_fixture.h: a real store and replica in a temporary
 * directory) whose peers are a fake transport (support/fake_transport.h) that the test answers
 * request by request; keys are picked by their preference list so that this node is, or is not,
 * one of the replicas a test needs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "cluster/identity.h"
#include "common/err.h"
#include "coord/coord.h"
#include "repair/hints.h"
#include "store/store.h"
#include "support/fake_transport.h"
#include "support/node_fixture.h"

#define MAX_OUTCOMES 8192
#define KEY_BYTES 64
#define NO_LOCAL (-1) /* pick_key(): this node is not among the key's first `from` replicas */

typedef struct fx fx_t;

/* What the client's callback saw for one operation. */
typedef struct outcome {
    fx_t *fx;
    unsigned calls; /* callback runs: the contract is exactly one */
    bool keep_buf;  /* take res->buf, as a client writing the value out later does */
    int rc;
    dkv_record_t rec;         /* value points into `buf` (keep_buf) or into `value` */
    dkv_owned_t buf;          /* keep_buf: the result's buffer, moved out in the callback */
    dkv_buf_t value;          /* a copy of the value made in the callback */
    size_t pending_at_answer; /* fake requests still unanswered when the callback ran */
    size_t inflight_at_answer;
    uint64_t local_token; /* res->local_token */
} outcome_t;

typedef struct fx_opts {
    unsigned nodes;           /* ring size: 3 or 5 */
    uint32_t self_idx;        /* this node's ring index */
    bool read_repair;         /* env.read_repair */
    bool hints;               /* open a dkv_hints_t on the node's store and pass it in env */
    bool hints_not_in_env;    /* with `hints`: open it, but leave env.hints NULL */
    uint64_t hints_max_bytes; /* 0 = 1 MiB */
    bool local_not_ready;     /* the local replica answers reads DKV_ENOTREADY (a joining node) */
    bool speculative;         /* env.read_fanout = DKV_COORD_READ_SPECULATIVE */
    uint64_t retry_ms;        /* env.speculative_retry_ms (0: observed p99) */
    uint64_t replica_timeout_ms; /* env.replica_timeout_ms */
    bool fake_clock;             /* env.clock_ns reads fx->clock_ns, which the test moves */
} fx_opts_t;

/* A coordinator of one node of the ring, its peers played by the fake transport. Heap-allocated
 * (outcomes included), so a callback run while the teardown drains never writes to a dead stack. */
struct fx {
    fx_opts_t opts;
    dkv_test_node_t *node;      /* loop, ring, store, replica (always ready), HLC */
    dkv_fake_transport_t *ft;   /* the peers */
    dkv_identity_t *identity;   /* local_not_ready: a JOINING identity */
    dkv_replica_t *own_replica; /* local_not_ready: a replica over node->store with it */
    dkv_replica_t *replica;     /* the coordinator's replica: node->replica or own_replica */
    dkv_hints_t *hints;
    dkv_coord_t *coord;
    dkv_rpc_shared_t shared;
    dkv_coord_stats_t stats;
    outcome_t *outs[MAX_OUTCOMES];
    size_t n_outs;
    uint64_t clock_ns; /* opts.fake_clock: the coordinator's clock */
};

static uint64_t fake_clock_ns(void *ctx)
{
    return ((const fx_t *)ctx)->clock_ns;
}

/* ---- fixture ---- */

static int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    if (fx == NULL) {
        return -1;
    }
    *state = fx;
    return 0;
}

/* Builds the node and its coordinator; a test calls it first, with the options it needs. */
static void fx_start(fx_t *fx, const fx_opts_t *opts)
{
    fx->opts = *opts;
    dkv_test_node_opts_t nopts = {
        .name = "test-coord", .nodes = opts->nodes, .self_idx = opts->self_idx};
    assert_int_equal(dkv_test_node_new(&nopts, &fx->node), 0);
    assert_int_equal(dkv_ring_size(fx->node->ring), opts->nodes);
    fx->ft = dkv_fake_transport_new();
    fx->replica = fx->node->replica;
    if (opts->local_not_ready) {
        /* A new identity without a database, in a ring of N > 1, starts JOINING: its replica
         * accepts writes but answers reads "not ready". Kept inside the node's directory, which
         * the node fixture removes. */
        char dir[sizeof(fx->node->dir) + 16];
        snprintf(dir, sizeof(dir), "%s/identity", fx->node->dir);
        assert_int_equal(mkdir(dir, 0700), 0);
        char why[256] = "";
        assert_int_equal(dkv_identity_open(dir, fx->node->ring, opts->self_idx, false, why,
                                           sizeof(why), &fx->identity),
                         0);
        assert_int_equal(dkv_identity_state(fx->identity), DKV_NODE_JOINING);
        assert_int_equal(
            dkv_replica_new(fx->node->store, &fx->node->hlc, fx->identity, &fx->own_replica), 0);
        fx->replica = fx->own_replica;
    }
    if (opts->hints) {
        dkv_hints_opts_t hopts = {
            .window_ms = 3600u * 1000u,
            .max_bytes = opts->hints_max_bytes != 0 ? opts->hints_max_bytes : 1u << 20,
            .replay_bytes_per_s = 1u << 20,
            .replay_interval_ms = 1000,
            .rpc = {.request_timeout_ms = 1000, .breaker_failures = 5, .breaker_cooldown_ms = 1000},
            .rpc_loop_idx = DKV_RPC_MAX_LOOPS - 1};
        /* Never dkv_hints_start(): no replay thread, the hints only pile up to be counted. */
        assert_int_equal(dkv_hints_open(fx->node->store, fx->node->ring, opts->self_idx,
                                        &fx->node->hlc, &fx->shared, &hopts, &fx->hints),
                         0);
    }
    dkv_coord_env_t env = {.loop = &fx->node->loop,
                           .replica = fx->replica,
                           .ring = fx->node->ring,
                           .self_idx = opts->self_idx,
                           .hlc = &fx->node->hlc,
                           .send = dkv_fake_transport_send,
                           .send_ctx = fx->ft,
                           .read_repair = opts->read_repair,
                           .hints = opts->hints_not_in_env ? NULL : fx->hints,
                           .stats = &fx->stats,
                           .read_fanout =
                               opts->speculative ? DKV_COORD_READ_SPECULATIVE : DKV_COORD_READ_ALL,
                           .speculative_retry_ms = opts->retry_ms,
                           .replica_timeout_ms = opts->replica_timeout_ms,
                           .clock_ns = opts->fake_clock ? fake_clock_ns : NULL,
                           .clock_ctx = fx};
    fx->clock_ns = (uint64_t)1000 * 1000000u; /* any start; fake_clock only */
    assert_int_equal(dkv_coord_new(&env, &fx->coord), 0);
}

/*
 * Ends the test: the fake's contract (nothing pending, no callback run twice), every operation
 * finished and every client callback run at most once. Whatever a failed test left in flight is
 * drained first so that everything is freed before the checks fail.
 */
static int fx_teardown(void **state)
{
    fx_t *fx = *state;
    char why[256] = "";
    int fake_rc = 0;
    size_t inflight = 0;
    unsigned max_calls = 0;
    if (fx->ft != NULL) {
        fake_rc = dkv_fake_transport_check(fx->ft, why, sizeof(why));
        dkv_fake_transport_drain(fx->ft, DKV_EUNAVAIL);
    }
    if (fx->coord != NULL) {
        inflight = dkv_coord_inflight(fx->coord);
        dkv_coord_free(fx->coord);
        uv_run(&fx->node->loop, UV_RUN_NOWAIT); /* a speculative coordinator's timer closes */
    }
    for (size_t i = 0; i < fx->n_outs; i++) {
        outcome_t *o = fx->outs[i];
        max_calls = o->calls > max_calls ? o->calls : max_calls;
        dkv_owned_release(&o->buf);
        dkv_buf_cleanup(&o->value);
        free(o);
    }
    dkv_hints_free(fx->hints);
    dkv_replica_free(fx->own_replica);
    dkv_identity_free(fx->identity);
    dkv_test_node_free(fx->node);
    dkv_fake_transport_free(fx->ft);
    free(fx);
    if (fake_rc != 0) {
        fail_msg("fake transport: %s", why);
    }
    if (inflight != 0) {
        fail_msg("%zu coordinator operation(s) still in flight at the end of the test", inflight);
    }
    if (max_calls > 1) {
        fail_msg("a client callback ran %u times", max_calls);
    }
    return 0;
}

/* ---- operations and their outcomes ---- */

static void on_result(void *arg, dkv_coord_result_t *res)
{
    outcome_t *o = arg;
    o->calls++;
    if (o->calls > 1) {
        return; /* the teardown reports it */
    }
    o->rc = res->rc;
    o->local_token = res->local_token;
    o->rec = res->record;
    o->pending_at_answer = dkv_fake_transport_pending(o->fx->ft);
    o->inflight_at_answer = dkv_coord_inflight(o->fx->coord);
    if (res->rc == 0 && res->record.value.len > 0) {
        dkv_buf_append(&o->value, res->record.value.ptr, res->record.value.len);
    }
    if (o->keep_buf) {
        o->buf = res->buf;
        memset(&res->buf, 0, sizeof(res->buf));
    } else {
        o->rec.value = dkv_buf_slice(&o->value);
    }
}

static outcome_t *new_outcome(fx_t *fx, bool keep_buf)
{
    assert_true(fx->n_outs < MAX_OUTCOMES);
    outcome_t *o = calloc(1, sizeof(*o));
    assert_non_null(o);
    o->fx = fx;
    o->keep_buf = keep_buf;
    dkv_buf_init(&o->value);
    fx->outs[fx->n_outs++] = o;
    return o;
}

/* A heap copy of `s` that the caller frees (poisoned first) right after the call it is lent to:
 * a coordinator that keeps a borrowed key or value past the call is caught by ASan. */
static uint8_t *lend(const char *s)
{
    size_t n = strlen(s);
    uint8_t *p = malloc(n > 0 ? n : 1);
    assert_non_null(p);
    memcpy(p, s, n);
    return p;
}

static void unlend(uint8_t *p, const char *s)
{
    memset(p, 0xA5, strlen(s));
    free(p);
}

static outcome_t *get_op(fx_t *fx, const char *key, unsigned ack, unsigned from, bool keep_buf)
{
    outcome_t *o = new_outcome(fx, keep_buf);
    uint8_t *k = lend(key);
    int rc = dkv_coord_get(fx->coord, dkv_slice(k, strlen(key)), ack, from, on_result, o);
    unlend(k, key);
    assert_int_equal(rc, 0);
    return o;
}

static outcome_t *get(fx_t *fx, const char *key, unsigned ack, unsigned from)
{
    return get_op(fx, key, ack, from, false);
}

static outcome_t *put_op(fx_t *fx, const char *key, bool tombstone, const char *value, unsigned ack,
                         unsigned from)
{
    outcome_t *o = new_outcome(fx, false);
    uint8_t *k = lend(key);
    uint8_t *v = lend(value);
    int rc = dkv_coord_put(fx->coord, dkv_slice(k, strlen(key)), tombstone,
                           dkv_slice(v, strlen(value)), ack, from, on_result, o);
    unlend(k, key);
    unlend(v, value);
    assert_int_equal(rc, 0);
    return o;
}

static outcome_t *put(fx_t *fx, const char *key, const char *value, unsigned ack, unsigned from)
{
    return put_op(fx, key, false, value, ack, from);
}

static outcome_t *del(fx_t *fx, const char *key, unsigned ack, unsigned from)
{
    return put_op(fx, key, true, "", ack, from);
}

static void assert_value(dkv_slice_t got, const char *want)
{
    if (got.len != strlen(want) || (got.len > 0 && memcmp(got.ptr, want, got.len) != 0)) {
        fail_msg("value \"%.*s\" (%zu bytes), want \"%s\"", (int)got.len, (const char *)got.ptr,
                 got.len, want);
    }
}

/* ---- placement ---- */

/*
 * Picks the first key "<tag>-<i>" whose first `from` replicas hold this node at position
 * `local_pos` (NO_LOCAL: not among them). Writes the key into `key` and the replicas, in
 * preference-list order, into `replicas` (room for `from`).
 */
static void pick_key(fx_t *fx, const char *tag, unsigned from, int local_pos, char key[KEY_BYTES],
                     uint32_t *replicas)
{
    for (unsigned i = 0; i < 100000; i++) {
        snprintf(key, KEY_BYTES, "%s-%u", tag, i);
        size_t got = dkv_ring_preference_list(fx->node->ring, dkv_slice_str(key), from, replicas);
        assert_int_equal(got, from);
        int pos = NO_LOCAL;
        for (unsigned j = 0; j < from; j++) {
            if (replicas[j] == fx->opts.self_idx) {
                pos = (int)j;
            }
        }
        if (pos == local_pos) {
            return;
        }
    }
    fail_msg("no key puts node %u at position %d of %u replicas", fx->opts.self_idx, local_pos,
             from);
}

/* The peers among `replicas` (every replica but this node), in order; returns how many. */
static unsigned peers_of(const fx_t *fx, const uint32_t *replicas, unsigned from, uint32_t *peers)
{
    unsigned n = 0;
    for (unsigned i = 0; i < from; i++) {
        if (replicas[i] != fx->opts.self_idx) {
            peers[n++] = replicas[i];
        }
    }
    return n;
}

/* The position of the first request at or after `start` to `peer` of `type`; fails if none. */
static size_t req(const fx_t *fx, size_t start, uint32_t peer, dkv_rpc_type_t type)
{
    long seq = dkv_fake_transport_find(fx->ft, start, peer, type);
    if (seq < 0) {
        fail_msg("no %s request to peer %u from #%zu on", type == DKV_RPC_GET ? "GET" : "PUT", peer,
                 start);
    }
    return (size_t)seq;
}

static size_t sent(const fx_t *fx)
{
    return dkv_fake_transport_count(fx->ft);
}

static void found(fx_t *fx, size_t seq, uint64_t ts, const char *value, uint8_t from)
{
    dkv_record_t rec = {.ts = ts, .value = dkv_slice_str(value), .from = from};
    assert_int_equal(dkv_fake_transport_reply_found(fx->ft, seq, &rec), 0);
}

static void found_tombstone(fx_t *fx, size_t seq, uint64_t ts, uint8_t from)
{
    dkv_record_t rec = {.ts = ts, .tombstone = true, .from = from};
    assert_int_equal(dkv_fake_transport_reply_found(fx->ft, seq, &rec), 0);
}

static void absent(fx_t *fx, size_t seq)
{
    assert_int_equal(dkv_fake_transport_reply_absent(fx->ft, seq), 0);
}

static void stored(fx_t *fx, size_t seq)
{
    assert_int_equal(dkv_fake_transport_reply_stored(fx->ft, seq), 0);
}

static void failed(fx_t *fx, size_t seq, int rc)
{
    assert_int_equal(dkv_fake_transport_reply_error(fx->ft, seq, rc), 0);
}

/* Answers every pending request from `start` on as stored (a PUT) or absent (a GET or DIGEST). */
static void answer_rest(fx_t *fx, size_t start)
{
    for (size_t i = start; i < sent(fx); i++) {
        const dkv_fake_call_t *c = dkv_fake_transport_call(fx->ft, i);
        if (c->state == DKV_FAKE_PENDING) {
            assert_int_equal(dkv_fake_transport_reply(
                                 fx->ft, i, c->type == DKV_RPC_PUT ? 0 : DKV_ENOTFOUND, NULL),
                             0);
        }
    }
}

static void put_local(fx_t *fx, const char *key, uint64_t ts, const char *value, uint8_t from)
{
    dkv_record_t rec = {.ts = ts, .value = dkv_slice_str(value), .from = from};
    assert_int_equal(dkv_replica_put(fx->node->replica, dkv_slice_str(key), &rec), 0);
}

/* A version read from the local store, copied onto the test's stack (nothing to free when an
 * assertion ends the test early). */
typedef struct local_version {
    dkv_record_t rec; /* value points into `bytes` */
    uint8_t bytes[256];
} local_version_t;

/* Reads the local store's version of `key` through the (always ready) fixture replica. */
static int get_local(fx_t *fx, const char *key, local_version_t *out)
{
    dkv_owned_t buf = {0};
    dkv_record_t rec;
    int rc = dkv_replica_get(fx->node->replica, dkv_slice_str(key), &rec, &buf);
    if (rc == 0 && rec.value.len > sizeof(out->bytes)) {
        rc = DKV_ETOOBIG; /* the tests' values are short */
    } else if (rc == 0) {
        if (rec.value.len > 0) {
            memcpy(out->bytes, rec.value.ptr, rec.value.len);
        }
        out->rec = rec;
        out->rec.value = dkv_slice(out->bytes, rec.value.len);
    }
    dkv_owned_release(&buf);
    return rc;
}

static uint64_t stat_of(_Atomic uint64_t *counter)
{
    return atomic_load(counter);
}

/* ---- the fake transport itself ---- */

static void count_reply_cb(void *arg, int rc, const dkv_record_t *rec)
{
    (void)rc;
    (void)rec;
    (*(unsigned *)arg)++;
}

/* The checks the other tests rely on: a refused request's callback never runs, an accepted one's
 * runs once, and the teardown check reports requests left pending or answered twice. */
static void test_fake_transport_enforces_exactly_once(void **state)
{
    (void)state;
    dkv_fake_transport_t *ft = dkv_fake_transport_new();
    unsigned runs[3] = {0};
    char why[256] = "";
    dkv_record_t rec = {.ts = 7, .value = dkv_slice_str("v"), .from = 2};
    dkv_rpc_call_t put_call = {.type = DKV_RPC_PUT, .key = dkv_slice_str("k"), .rec = &rec};
    dkv_rpc_call_t get_call = {.type = DKV_RPC_GET, .key = dkv_slice_str("k")};

    assert_int_equal(dkv_fake_transport_send(ft, 1, &put_call, count_reply_cb, &runs[0]), 0);
    dkv_fake_transport_refuse(ft, 2, DKV_EUNAVAIL);
    assert_int_equal(dkv_fake_transport_send(ft, 2, &get_call, count_reply_cb, &runs[1]),
                     DKV_EUNAVAIL);
    assert_int_equal(dkv_fake_transport_send(ft, 3, &get_call, count_reply_cb, &runs[2]), 0);
    assert_int_equal(dkv_fake_transport_count(ft), 3);
    assert_int_equal(dkv_fake_transport_pending(ft), 2);
    const dkv_fake_call_t *c = dkv_fake_transport_call(ft, 0);
    assert_true(c->has_rec);
    assert_int_equal(c->rec.ts, 7);
    assert_int_equal(c->rec.from, 2);
    assert_value(c->rec.value, "v");
    assert_int_equal(dkv_fake_transport_call(ft, 1)->state, DKV_FAKE_REFUSED);
    assert_int_equal(dkv_fake_transport_find(ft, 0, 3, DKV_RPC_GET), 2);
    assert_int_equal(dkv_fake_transport_find(ft, 0, 3, DKV_RPC_PUT), -1);
    assert_int_equal(runs[0] + runs[1] + runs[2], 0); /* never before the test says */

    assert_int_equal(dkv_fake_transport_check(ft, why, sizeof(why)), DKV_EINVAL); /* pending */
    assert_int_equal(dkv_fake_transport_reply_stored(ft, 0), 0);
    assert_int_equal(runs[0], 1);
    assert_int_equal(dkv_fake_transport_reply_found(ft, 2, &rec), 0);
    assert_int_equal(runs[2], 1);
    assert_int_equal(dkv_fake_transport_check(ft, why, sizeof(why)), 0);

    assert_int_equal(dkv_fake_transport_reply_stored(ft, 0), DKV_EINVAL); /* a second time */
    assert_int_equal(dkv_fake_transport_reply_error(ft, 1, DKV_EIO), DKV_EINVAL); /* refused */
    assert_int_equal(runs[0], 1);
    assert_int_equal(runs[1], 0);
    assert_int_equal(dkv_fake_transport_check(ft, why, sizeof(why)), DKV_EINVAL);
    assert_non_null(strstr(why, "request #0"));
    dkv_fake_transport_free(ft);
}

/* ---- quorum arithmetic ---- */

typedef struct quorum {
    unsigned ack;
    unsigned from;
} quorum_t;

/* Every (ack, from) with from <= 4, so that all replicas can be peers in a ring of 5. */
static const quorum_t QUORUMS[] = {{1, 1}, {1, 2}, {2, 2}, {1, 3}, {2, 3},
                                   {3, 3}, {1, 4}, {2, 4}, {3, 4}, {4, 4}};
#define N_QUORUMS (sizeof(QUORUMS) / sizeof(QUORUMS[0]))

static const fx_opts_t FIVE_REMOTE = {.nodes = 5, .self_idx = 0};

/*
 * One operation on `from` peers: the first `failures` fail, then the others succeed one at a
 * time; the client must be answered at exactly the ack-th success, the slower replicas still
 * pending, and the operation must stay in flight until the last replica answered.
 */
static void run_answer_at_ack(fx_t *fx, bool is_get, quorum_t q, unsigned failures)
{
    static const int put_errs[] = {DKV_ETIMEDOUT, DKV_EUNAVAIL, DKV_EIO};
    static const int get_errs[] = {DKV_ETIMEDOUT, DKV_EUNAVAIL, DKV_EIO, DKV_ENOTREADY};
    dkv_rpc_type_t type = is_get ? DKV_RPC_GET : DKV_RPC_PUT;
    char key[KEY_BYTES];
    uint32_t reps[DKV_RING_MAX_NODES];
    pick_key(fx, "quorum", q.from, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = is_get ? get(fx, key, q.ack, q.from) : put(fx, key, "v", q.ack, q.from);
    assert_int_equal(sent(fx) - base, q.from);
    assert_int_equal(dkv_fake_transport_count_of(fx->ft, base, UINT32_MAX, type), q.from);
    unsigned ok = 0;
    for (unsigned i = 0; i < q.from; i++) {
        if (o->calls != (ok >= q.ack ? 1u : 0u)) {
            fail_msg("%s ack=%u from=%u failures=%u: after %u replies (%u ok) the client was "
                     "answered %u time(s)",
                     is_get ? "GET" : "PUT", q.ack, q.from, failures, i, ok, o->calls);
        }
        size_t seq = req(fx, base, reps[i], type);
        if (i < failures) {
            failed(fx, seq, is_get ? get_errs[i % 4] : put_errs[i % 3]);
        } else {
            if (is_get) {
                absent(fx, seq);
            } else {
                stored(fx, seq);
            }
            ok++;
        }
        assert_int_equal(dkv_coord_inflight(fx->coord), i + 1 < q.from ? 1 : 0);
    }
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, is_get ? DKV_ENOTFOUND : 0);
    assert_int_equal(o->pending_at_answer, q.from - failures - q.ack);
}

/*
 * One operation on `from` peers: the first `successes` (< ack) succeed, then the others fail;
 * the client must get DKV_EQUORUM at exactly failure number from - ack + 1, before the
 * remaining replicas answered.
 */
static void run_equorum_at_failure(fx_t *fx, bool is_get, quorum_t q, unsigned successes)
{
    dkv_rpc_type_t type = is_get ? DKV_RPC_GET : DKV_RPC_PUT;
    char key[KEY_BYTES];
    uint32_t reps[DKV_RING_MAX_NODES];
    pick_key(fx, "quorum", q.from, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = is_get ? get(fx, key, q.ack, q.from) : put(fx, key, "v", q.ack, q.from);
    unsigned bad = 0;
    for (unsigned i = 0; i < q.from; i++) {
        if (o->calls != (bad > q.from - q.ack ? 1u : 0u)) {
            fail_msg("%s ack=%u from=%u successes=%u: after %u replies (%u failed) the client "
                     "was answered %u time(s)",
                     is_get ? "GET" : "PUT", q.ack, q.from, successes, i, bad, o->calls);
        }
        size_t seq = req(fx, base, reps[i], type);
        if (i < successes) {
            if (is_get) {
                absent(fx, seq);
            } else {
                stored(fx, seq);
            }
        } else {
            failed(fx, seq, is_get && (i % 2) ? DKV_ENOTREADY : DKV_ETIMEDOUT);
            bad++;
        }
        assert_int_equal(dkv_coord_inflight(fx->coord), i + 1 < q.from ? 1 : 0);
    }
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_EQUORUM);
    assert_int_equal(o->pending_at_answer, q.ack - 1 - successes);
}

static void test_put_answers_at_exactly_ack_successes_not_before(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    for (size_t i = 0; i < N_QUORUMS; i++) {
        for (unsigned f = 0; f <= QUORUMS[i].from - QUORUMS[i].ack; f++) {
            run_answer_at_ack(fx, false, QUORUMS[i], f);
        }
    }
}

static void test_get_answers_at_exactly_ack_successes_not_before(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    for (size_t i = 0; i < N_QUORUMS; i++) {
        for (unsigned f = 0; f <= QUORUMS[i].from - QUORUMS[i].ack; f++) {
            run_answer_at_ack(fx, true, QUORUMS[i], f);
        }
    }
}

static void test_put_fails_with_equorum_once_failures_exceed_from_minus_ack(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    for (size_t i = 0; i < N_QUORUMS; i++) {
        for (unsigned s = 0; s < QUORUMS[i].ack; s++) {
            run_equorum_at_failure(fx, false, QUORUMS[i], s);
        }
    }
}

static void test_get_fails_with_equorum_once_failures_exceed_from_minus_ack(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    for (size_t i = 0; i < N_QUORUMS; i++) {
        for (unsigned s = 0; s < QUORUMS[i].ack; s++) {
            run_equorum_at_failure(fx, true, QUORUMS[i], s);
        }
    }
}

/* Peers refused at submit (an open breaker) count as failures at once: no callback of theirs. */
static void run_refused(fx_t *fx, bool is_get, quorum_t q, unsigned refused, int want_rc,
                        bool want_answered_at_submit)
{
    dkv_rpc_type_t type = is_get ? DKV_RPC_GET : DKV_RPC_PUT;
    char key[KEY_BYTES];
    uint32_t reps[DKV_RING_MAX_NODES];
    pick_key(fx, "refused", q.from, NO_LOCAL, key, reps);
    for (unsigned i = 0; i < refused; i++) {
        dkv_fake_transport_refuse(fx->ft, reps[i], DKV_EUNAVAIL);
    }
    size_t base = sent(fx);
    outcome_t *o = is_get ? get(fx, key, q.ack, q.from) : put(fx, key, "v", q.ack, q.from);
    for (unsigned i = 0; i < refused; i++) {
        dkv_fake_transport_refuse(fx->ft, reps[i], 0);
        const dkv_fake_call_t *c = dkv_fake_transport_call(fx->ft, req(fx, base, reps[i], type));
        assert_int_equal(c->state, DKV_FAKE_REFUSED);
    }
    assert_int_equal(dkv_fake_transport_pending(fx->ft), q.from - refused);
    if (o->calls != (want_answered_at_submit ? 1u : 0u)) {
        fail_msg("%s ack=%u from=%u refused=%u: answered %u time(s) at submit",
                 is_get ? "GET" : "PUT", q.ack, q.from, refused, o->calls);
    }
    if (want_answered_at_submit) {
        assert_int_equal(o->rc, want_rc);
    }
    answer_rest(fx, base);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, want_rc);
    assert_int_equal(dkv_coord_inflight(fx->coord), 0);
}

static void test_refused_at_submit_counts_as_failure_at_once(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    for (int g = 0; g < 2; g++) {
        bool is_get = g == 1;
        int ok_rc = is_get ? DKV_ENOTFOUND : 0;
        run_refused(fx, is_get, (quorum_t){1, 1}, 1, DKV_EQUORUM, true);
        run_refused(fx, is_get, (quorum_t){3, 3}, 1, DKV_EQUORUM, true);
        run_refused(fx, is_get, (quorum_t){2, 3}, 2, DKV_EQUORUM, true);
        run_refused(fx, is_get, (quorum_t){1, 3}, 3, DKV_EQUORUM, true);
        run_refused(fx, is_get, (quorum_t){2, 3}, 1, ok_rc, false);
        run_refused(fx, is_get, (quorum_t){1, 3}, 2, ok_rc, false);
    }
}

static void test_local_replica_counts_toward_ack(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 1});
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "local-ack", 3, 1, key, reps);
    assert_int_equal(peers_of(fx, reps, 3, peers), 2);

    /* ack=1: the local write alone is the quorum, answered before the peers reply. */
    size_t base = sent(fx);
    outcome_t *w = put(fx, key, "v", 1, 3);
    assert_int_equal(w->calls, 1);
    assert_int_equal(w->rc, 0);
    assert_int_equal(w->pending_at_answer, 2);
    answer_rest(fx, base);

    /* ack=2: the local version plus one peer's "absent". */
    base = sent(fx);
    outcome_t *r = get(fx, key, 2, 3);
    assert_int_equal(r->calls, 0);
    absent(fx, req(fx, base, peers[0], DKV_RPC_GET));
    assert_int_equal(r->calls, 1);
    assert_int_equal(r->rc, 0);
    assert_value(r->rec.value, "v");
    absent(fx, req(fx, base, peers[1], DKV_RPC_GET));
}

/* ---- a local write that a WAL sync failed for someone else ---- */

static struct rlimit saved_fsize;
static bool fsize_limited;

/* Files of this process may not grow past 256 KiB from now on (write(2) fails with EFBIG, a
 * storage error: DKV_EIO), as a full disk would have it; the WAL is filled past that first, so
 * the store's next WAL write fails. */
static void limit_file_size(fx_t *fx)
{
    static uint8_t v[1024];
    memset(v, 'f', sizeof(v));
    char key[32];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "fill%03d", i);
        dkv_record_t r = {.ts = 1, .value = dkv_slice(v, sizeof(v)), .from = 1};
        assert_int_equal(dkv_store_put(fx->node->store, dkv_slice_str(key), &r), 0);
    }
    assert_int_equal(dkv_store_sync_wal(fx->node->store), 0);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved_fsize), 0);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = {.rlim_cur = 256u << 10, .rlim_max = saved_fsize.rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    fsize_limited = true;
}

static int fx_teardown_batched(void **state)
{
    dkv_store_thread_batching(false);
    if (fsize_limited) {
        setrlimit(RLIMIT_FSIZE, &saved_fsize);
        signal(SIGXFSZ, SIG_DFL);
        fsize_limited = false;
    }
    return fx_teardown(state);
}

/*
 * With write batching (an I/O thread), a PUT's local write is accepted into the thread's batch
 * and counted at once; the PUT then waits for its peers. Meanwhile another response of the
 * thread is flushed: its WAL sync writes the batch, which fails, and that other response gets
 * the failure. When the peers answer later, the local write must not count: with ack=2 one
 * peer is not enough (without the check, local + one peer = 201 with a single stored copy); two
 * peers are, and a peer failure makes it 504 (EIO here; 507 when the disk is full).
 */
static void test_local_write_failed_by_another_sync_does_not_count(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 1});
    dkv_store_thread_batching(true);
    char key1[KEY_BYTES];
    char key2[KEY_BYTES];
    uint32_t reps1[3];
    uint32_t reps2[3];
    uint32_t peers1[2];
    uint32_t peers2[2];
    pick_key(fx, "lost-local-1", 3, 1, key1, reps1);
    pick_key(fx, "lost-local-2", 3, 1, key2, reps2);
    assert_int_equal(peers_of(fx, reps1, 3, peers1), 2);
    assert_int_equal(peers_of(fx, reps2, 3, peers2), 2);
    limit_file_size(fx);

    size_t base1 = sent(fx);
    outcome_t *w1 = put(fx, key1, "v1", 2, 3);
    size_t base2 = sent(fx);
    outcome_t *w2 = put(fx, key2, "v2", 2, 3);
    assert_int_equal(w1->calls, 0); /* the local write counts once, ack=2 needs a peer */
    assert_int_equal(w2->calls, 0);

    /* Another connection's flush on this thread: its sync writes the batch and fails. */
    assert_int_equal(dkv_store_sync_wal(fx->node->store), DKV_EIO);
    assert_int_equal(dkv_store_sync_wal(fx->node->store), 0); /* told once, to that flush */

    stored(fx, req(fx, base1, peers1[0], DKV_RPC_PUT));
    assert_int_equal(w1->calls, 0); /* one real copy: not yet a quorum */
    stored(fx, req(fx, base1, peers1[1], DKV_RPC_PUT));
    assert_int_equal(w1->calls, 1);
    assert_int_equal(w1->rc, 0);       /* the two peers make the quorum */
    assert_true(w1->local_token == 0); /* the answer does not rest on the local write */

    stored(fx, req(fx, base2, peers2[0], DKV_RPC_PUT));
    assert_int_equal(w2->calls, 0);
    failed(fx, req(fx, base2, peers2[1], DKV_RPC_PUT), DKV_EUNAVAIL);
    assert_int_equal(w2->calls, 1);
    assert_int_equal(w2->rc, DKV_EQUORUM);
}

/* The same PUT when the batch is stored: the local write still counts; and an ack=1 PUT answered
 * at once names its local write, still pending, for the flush that sends the answer. */
static void test_local_write_still_counts_once_synced(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 1});
    dkv_store_thread_batching(true);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "synced-local", 3, 1, key, reps);
    assert_int_equal(peers_of(fx, reps, 3, peers), 2);
    size_t base = sent(fx);
    outcome_t *w = put(fx, key, "v", 2, 3);
    assert_int_equal(dkv_store_sync_wal(fx->node->store), 0); /* another flush stores it */
    stored(fx, req(fx, base, peers[0], DKV_RPC_PUT));
    assert_int_equal(w->calls, 1);
    assert_int_equal(w->rc, 0);
    assert_true(w->local_token != 0);
    assert_int_equal(dkv_store_write_outcome(w->local_token), 0);
    stored(fx, req(fx, base, peers[1], DKV_RPC_PUT));

    base = sent(fx);
    outcome_t *w1 = put(fx, key, "v1", 1, 3);
    assert_int_equal(w1->calls, 1);
    assert_int_equal(w1->rc, 0);
    assert_true(w1->local_token == dkv_store_write_token());
    assert_int_equal(dkv_store_write_outcome(w1->local_token), DKV_STORE_WRITE_PENDING);
    assert_int_equal(dkv_store_sync_wal(fx->node->store), 0);
    assert_int_equal(dkv_store_write_outcome(w1->local_token), 0);
    answer_rest(fx, base);
}

static void test_invalid_arguments_fail_at_once_and_never_call_back(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 0});
    outcome_t *o = new_outcome(fx, false);
    dkv_slice_t k = dkv_slice_str("k");
    dkv_slice_t v = dkv_slice_str("v");
    assert_int_equal(dkv_coord_get(fx->coord, k, 0, 3, on_result, o), DKV_EINVAL);
    assert_int_equal(dkv_coord_get(fx->coord, k, 3, 2, on_result, o), DKV_EINVAL);
    assert_int_equal(dkv_coord_get(fx->coord, k, 1, 4, on_result, o), DKV_EINVAL);
    assert_int_equal(dkv_coord_get(fx->coord, k, 1, 0, on_result, o), DKV_EINVAL);
    assert_int_equal(dkv_coord_get(fx->coord, dkv_slice(NULL, 0), 1, 1, on_result, o), DKV_EINVAL);
    assert_int_equal(dkv_coord_put(fx->coord, k, false, v, 2, 1, on_result, o), DKV_EINVAL);
    assert_int_equal(dkv_coord_put(fx->coord, k, false, v, 1, 4, on_result, o), DKV_EINVAL);
    assert_int_equal(dkv_coord_put(fx->coord, k, true, v, 1, 1, on_result, o), DKV_EINVAL);
    assert_int_equal(dkv_coord_put(fx->coord, dkv_slice(NULL, 0), false, v, 1, 1, on_result, o),
                     DKV_EINVAL);
    assert_int_equal(o->calls, 0);
    assert_int_equal(sent(fx), 0);
    assert_int_equal(dkv_coord_inflight(fx->coord), 0);
}

/* ---- last-write-wins across replicas ---- */

enum reply_kind { R_FOUND, R_ABSENT, R_ERROR };

typedef struct reply {
    enum reply_kind kind;
    uint64_t ts;
    bool tombstone;
    const char *value;
    int rc;
} reply_t;

/* One line per reply kind (and per case below) reads better than the formatter's blocks. */
/* clang-format off */
#define VAL(ts_, v_) {.kind = R_FOUND, .ts = (ts_), .value = (v_)}
#define TOMB(ts_) {.kind = R_FOUND, .ts = (ts_), .tombstone = true, .value = ""}
#define ABSENT {.kind = R_ABSENT, .value = ""}
#define ERR(rc_) {.kind = R_ERROR, .rc = (rc_), .value = ""}
/* clang-format on */

typedef struct lww_case {
    const char *name;
    reply_t replies[3];
    int want_rc;
    uint64_t want_ts;
    const char *want_value;
} lww_case_t;

/* GETs with ack = from = 3 on three peers, so that the answer weighs every reply. */
static void run_lww(fx_t *fx, const lww_case_t *tc, bool reverse)
{
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "lww", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 3, 3);
    for (unsigned n = 0; n < 3; n++) {
        unsigned i = reverse ? 2 - n : n;
        const reply_t *r = &tc->replies[i];
        size_t seq = req(fx, base, reps[i], DKV_RPC_GET);
        if (r->kind == R_ABSENT) {
            absent(fx, seq);
        } else if (r->kind == R_ERROR) {
            failed(fx, seq, r->rc);
        } else if (r->tombstone) {
            found_tombstone(fx, seq, r->ts, 3);
        } else {
            found(fx, seq, r->ts, r->value, 3);
        }
    }
    if (o->calls != 1 || o->rc != tc->want_rc) {
        fail_msg("%s (%s order): answered %u time(s), rc %s, want %s", tc->name,
                 reverse ? "reverse" : "forward", o->calls, dkv_strerror(o->rc),
                 dkv_strerror(tc->want_rc));
    }
    if (tc->want_rc == 0) {
        assert_int_equal(o->rec.ts, tc->want_ts);
        assert_false(o->rec.tombstone);
        assert_int_equal(o->rec.from, 3);
        assert_value(o->rec.value, tc->want_value);
    }
}

static void test_get_returns_last_write_by_lww_order(void **state)
{
    /* clang-format off */
    static const lww_case_t cases[] = {
        {"newest timestamp wins",
         {VAL(100, "old"), VAL(300, "new"), VAL(200, "mid")}, 0, 300, "new"},
        {"newest wins over absent",
         {ABSENT, VAL(200, "only"), ABSENT}, 0, 200, "only"},
        {"value newer than a tombstone wins",
         {TOMB(100), VAL(200, "back"), ABSENT}, 0, 200, "back"},
        {"equal timestamps: smaller value wins",
         {VAL(500, "b"), VAL(500, "a"), VAL(500, "c")}, 0, 500, "a"},
        {"equal timestamps: proper prefix wins",
         {VAL(500, "ab"), VAL(500, "abc"), VAL(500, "b")}, 0, 500, "ab"},
        {"equal timestamps: tombstone beats a value",
         {VAL(500, "a"), TOMB(500), VAL(400, "z")}, DKV_ENOTFOUND, 0, NULL},
        {"newest tombstone is not found",
         {VAL(200, "v"), TOMB(300), VAL(100, "w")}, DKV_ENOTFOUND, 0, NULL},
        {"all absent is not found",
         {ABSENT, ABSENT, ABSENT}, DKV_ENOTFOUND, 0, NULL},
        {"a not-ready replica is a failure, not absent",
         {ABSENT, ERR(DKV_ENOTREADY), ABSENT}, DKV_EQUORUM, 0, NULL},
        {"a not-ready replica is never absent even next to a value",
         {VAL(100, "v"), ERR(DKV_ENOTREADY), ABSENT}, DKV_EQUORUM, 0, NULL},
    };
    /* clang-format on */
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        run_lww(fx, &cases[i], false);
        run_lww(fx, &cases[i], true);
    }
}

static void test_not_ready_replica_does_not_satisfy_ack(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "not-ready", 3, NO_LOCAL, key, reps);

    /* ack=1: two "not ready" answers leave the GET waiting; were they "absent", it would have
     * answered 404 at the first. */
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 1, 3);
    failed(fx, req(fx, base, reps[0], DKV_RPC_GET), DKV_ENOTREADY);
    failed(fx, req(fx, base, reps[1], DKV_RPC_GET), DKV_ENOTREADY);
    assert_int_equal(o->calls, 0);
    found(fx, req(fx, base, reps[2], DKV_RPC_GET), 100, "v", 3);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, 0);
    assert_value(o->rec.value, "v");

    /* ack=from=1 on a not-ready replica: 504, never 404. */
    base = sent(fx);
    o = get(fx, key, 1, 1);
    failed(fx, req(fx, base, reps[0], DKV_RPC_GET), DKV_ENOTREADY);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_EQUORUM);
}

static void test_local_version_takes_part_in_lww(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 2});
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "local-lww", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);

    put_local(fx, key, 300, "local-new", 3);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 3, 3);
    found(fx, req(fx, base, peers[0], DKV_RPC_GET), 200, "peer-old", 3);
    found(fx, req(fx, base, peers[1], DKV_RPC_GET), 100, "peer-older", 3);
    assert_int_equal(o->rc, 0);
    assert_int_equal(o->rec.ts, 300);
    assert_value(o->rec.value, "local-new");

    base = sent(fx);
    o = get(fx, key, 3, 3);
    found(fx, req(fx, base, peers[0], DKV_RPC_GET), 400, "peer-newer", 3);
    absent(fx, req(fx, base, peers[1], DKV_RPC_GET));
    assert_int_equal(o->rc, 0);
    assert_int_equal(o->rec.ts, 400);
    assert_value(o->rec.value, "peer-newer");
}

/* ---- late replies ---- */

/*
 * GET ack=1 on three peers: the first reply answers; the two late ones (a newer version, then a
 * timeout) are consumed without a second answer, the operation stays in flight until the last,
 * and the value the client took stays readable throughout (ASan: no use after free).
 */
static void run_late_replies_on_peers(fx_t *fx)
{
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "late", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = get_op(fx, key, 1, 3, true);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 200, "first-answer", 3);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, 0);
    assert_int_equal(o->inflight_at_answer, 1);
    assert_value(o->rec.value, "first-answer");
    assert_int_equal(dkv_coord_inflight(fx->coord), 1);

    found(fx, req(fx, base, reps[1], DKV_RPC_GET), 900, "a-newer-late-version", 3);
    assert_int_equal(o->calls, 1);
    assert_int_equal(dkv_coord_inflight(fx->coord), 1);
    assert_value(o->rec.value, "first-answer");

    size_t before_last = sent(fx);
    failed(fx, req(fx, base, reps[2], DKV_RPC_GET), DKV_ETIMEDOUT);
    assert_int_equal(o->calls, 1);
    /* Read repair's writes, if on, are in flight and counted until they are answered. */
    assert_int_equal(dkv_coord_inflight(fx->coord), sent(fx) - before_last);
    assert_value(o->rec.value, "first-answer");
    answer_rest(fx, before_last);
    assert_int_equal(dkv_coord_inflight(fx->coord), 0);
    assert_value(o->rec.value, "first-answer");
}

static void test_late_replies_are_consumed_and_client_value_stays_valid(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    run_late_replies_on_peers(fx);
}

static void test_late_replies_with_read_repair_keep_client_value_valid(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 5, .self_idx = 0, .read_repair = true});
    run_late_replies_on_peers(fx);
}

/* The answer comes from the local store's buffer, before dkv_coord_get() returns; a newer late
 * reply replaces the operation's best version while the client still holds that buffer. */
static void run_late_reply_after_local_answer(fx_t *fx)
{
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "late-local", 3, 1, key, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key, 200, "from-the-local-store", 3);
    size_t base = sent(fx);
    outcome_t *o = get_op(fx, key, 1, 3, true);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, 0);
    assert_value(o->rec.value, "from-the-local-store");
    found(fx, req(fx, base, peers[0], DKV_RPC_GET), 900, "newer-from-a-peer", 3);
    assert_value(o->rec.value, "from-the-local-store");
    size_t before_last = sent(fx);
    absent(fx, req(fx, base, peers[1], DKV_RPC_GET));
    assert_int_equal(dkv_coord_inflight(fx->coord), sent(fx) - before_last);
    answer_rest(fx, before_last);
    assert_int_equal(dkv_coord_inflight(fx->coord), 0);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "from-the-local-store");
}

static void test_late_reply_after_local_answer_keeps_client_value_valid(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 0});
    run_late_reply_after_local_answer(fx);
}

static void
test_late_reply_after_local_answer_with_read_repair_keeps_client_value_valid(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 0, .read_repair = true});
    run_late_reply_after_local_answer(fx);
}

static void test_late_put_replies_keep_the_operation_in_flight(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "late-put", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = put(fx, key, "v", 1, 3);
    stored(fx, req(fx, base, reps[1], DKV_RPC_PUT));
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, 0);
    failed(fx, req(fx, base, reps[0], DKV_RPC_PUT), DKV_ETIMEDOUT);
    assert_int_equal(dkv_coord_inflight(fx->coord), 1);
    stored(fx, req(fx, base, reps[2], DKV_RPC_PUT));
    assert_int_equal(dkv_coord_inflight(fx->coord), 0);
    assert_int_equal(o->calls, 1);
}

/* ---- read repair ---- */

static const fx_opts_t FIVE_REMOTE_RR = {.nodes = 5, .self_idx = 0, .read_repair = true};

/*
 * Asserts that the requests from `start` on are exactly one PUT to each of the `n` peers in
 * `peers`, each carrying `want` for `key`, and nothing else.
 */
static void expect_repairs(const fx_t *fx, size_t start, const char *key, const dkv_record_t *want,
                           const uint32_t *peers, size_t n)
{
    if (sent(fx) - start != n) {
        fail_msg("%zu request(s) after the GET's, want %zu repair write(s)", sent(fx) - start, n);
    }
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(dkv_fake_transport_count_of(fx->ft, start, peers[i], DKV_RPC_PUT), 1);
        const dkv_fake_call_t *c =
            dkv_fake_transport_call(fx->ft, req(fx, start, peers[i], DKV_RPC_PUT));
        assert_true(c->has_rec);
        assert_value(c->key, key);
        assert_int_equal(c->rec.ts, want->ts);
        assert_int_equal(c->rec.tombstone, want->tombstone);
        assert_int_equal(c->rec.from, want->from);
        assert_int_equal(c->rec.value.len, want->value.len);
        if (want->value.len > 0) {
            assert_memory_equal(c->rec.value.ptr, want->value.ptr, want->value.len);
        }
    }
}

static void expect_rr_stats(fx_t *fx, uint64_t reads, uint64_t writes, uint64_t failures)
{
    assert_int_equal(stat_of(&fx->stats.read_repair_reads), reads);
    assert_int_equal(stat_of(&fx->stats.read_repair_writes), writes);
    assert_int_equal(stat_of(&fx->stats.read_repair_failures), failures);
}

static void test_read_repair_writes_newest_to_stale_replicas_after_the_last_reply(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 1, 3);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 300, "newest", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "newest");
    found(fx, req(fx, base, reps[1], DKV_RPC_GET), 200, "older", 3);
    assert_int_equal(sent(fx), base + 3); /* nothing yet: one replica has not answered */
    size_t after_get = sent(fx);
    absent(fx, req(fx, base, reps[2], DKV_RPC_GET));

    dkv_record_t want = {.ts = 300, .value = dkv_slice_str("newest"), .from = 3};
    uint32_t stale[] = {reps[1], reps[2]};
    expect_repairs(fx, after_get, key, &want, stale, 2);
    expect_rr_stats(fx, 1, 2, 0);
    stored(fx, req(fx, after_get, reps[1], DKV_RPC_PUT));
    failed(fx, req(fx, after_get, reps[2], DKV_RPC_PUT), DKV_EIO);
    expect_rr_stats(fx, 1, 2, 1);
}

static void test_read_repair_waits_for_a_timed_out_replica_and_skips_it(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr-timeout", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 2, 3);
    found(fx, req(fx, base, reps[2], DKV_RPC_GET), 300, "newest", 3);
    absent(fx, req(fx, base, reps[1], DKV_RPC_GET));
    assert_int_equal(o->calls, 1);
    assert_int_equal(sent(fx), base + 3); /* the slow replica may still answer */
    size_t after_get = sent(fx);
    failed(fx, req(fx, base, reps[0], DKV_RPC_GET), DKV_ETIMEDOUT);

    /* The timed-out replica's state is unknown: only the one that said "absent" is repaired. */
    dkv_record_t want = {.ts = 300, .value = dkv_slice_str("newest"), .from = 3};
    expect_repairs(fx, after_get, key, &want, &reps[1], 1);
    expect_rr_stats(fx, 1, 1, 0);
    answer_rest(fx, after_get);
}

static void test_read_repair_uses_a_newer_version_that_arrived_after_the_answer(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr-late-newest", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 1, 3);
    found(fx, req(fx, base, reps[1], DKV_RPC_GET), 200, "stale", 3);
    assert_value(o->rec.value, "stale");
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 700, "fresh", 3);
    size_t after_get = sent(fx);
    found(fx, req(fx, base, reps[2], DKV_RPC_GET), 200, "stale", 3);
    dkv_record_t want = {.ts = 700, .value = dkv_slice_str("fresh"), .from = 3};
    uint32_t stale[] = {reps[1], reps[2]};
    expect_repairs(fx, after_get, key, &want, stale, 2);
    expect_rr_stats(fx, 1, 2, 0);
    answer_rest(fx, after_get);
}

static void test_read_repair_sends_nothing_when_replicas_agree(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr-agree", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    get(fx, key, 1, 3);
    for (unsigned i = 0; i < 3; i++) {
        found(fx, req(fx, base, reps[i], DKV_RPC_GET), 300, "same", 3);
    }
    assert_int_equal(sent(fx), base + 3);

    base = sent(fx);
    get(fx, key, 1, 3);
    for (unsigned i = 0; i < 3; i++) {
        absent(fx, req(fx, base, reps[i], DKV_RPC_GET));
    }
    assert_int_equal(sent(fx), base + 3);

    base = sent(fx);
    get(fx, key, 1, 3);
    for (unsigned i = 0; i < 3; i++) {
        found_tombstone(fx, req(fx, base, reps[i], DKV_RPC_GET), 300, 3);
    }
    assert_int_equal(sent(fx), base + 3);
    expect_rr_stats(fx, 0, 0, 0);
}

static void test_read_repair_tells_equal_timestamps_apart_by_value(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr-equal-ts", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 3, 3);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 500, "b", 3);
    found(fx, req(fx, base, reps[1], DKV_RPC_GET), 500, "a", 3);
    size_t after_get = sent(fx);
    found(fx, req(fx, base, reps[2], DKV_RPC_GET), 500, "a", 3);
    assert_value(o->rec.value, "a");
    dkv_record_t want = {.ts = 500, .value = dkv_slice_str("a"), .from = 3};
    expect_repairs(fx, after_get, key, &want, &reps[0], 1);
    answer_rest(fx, after_get);
}

/* Versions compared by value only where timestamps tie (coord.c, slot_version()): whatever order
 * the replicas answer in, exactly the replicas whose version differs from the newest (by timestamp,
 * tombstone, or value on a tie) get the newest written back, and the client gets the newest. */
static void test_read_repair_finds_stale_replicas_in_every_answer_order(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    typedef struct {
        uint64_t ts;
        const char *value; /* NULL: a tombstone */
    } version_t;
    static const version_t cases[][3] = {
        {{500, "b"}, {500, "a"}, {500, "a"}},          /* a tie decided by value */
        {{500, "b"}, {500, "b"}, {500, "a"}},          /* two equal, then a tie they lose */
        {{400, "c"}, {500, "b"}, {500, "a"}},          /* older, then a tie */
        {{500, "a"}, {500, NULL}, {500, "a"}},         /* a tie of value and tombstone */
        {{600, "z"}, {500, "a"}, {500, "a"}},          /* one newer, two equal older */
        {{500, "same"}, {500, "same"}, {500, "same"}}, /* agreement: no repair */
    };
    static const unsigned perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2},
                                         {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const version_t *v = cases[k];
        dkv_record_t recs[3];
        unsigned newest = 0;
        for (unsigned i = 0; i < 3; i++) {
            recs[i] = (dkv_record_t){.ts = v[i].ts,
                                     .tombstone = v[i].value == NULL,
                                     .value = dkv_slice_str(v[i].value != NULL ? v[i].value : ""),
                                     .from = 3};
            if (dkv_record_cmp(&recs[i], &recs[newest]) > 0) {
                newest = i;
            }
        }
        for (size_t p = 0; p < 6; p++) {
            char name[32];
            snprintf(name, sizeof(name), "rr-order-%zu-%zu", k, p);
            char key[KEY_BYTES];
            uint32_t reps[3];
            pick_key(fx, name, 3, NO_LOCAL, key, reps);
            size_t base = sent(fx);
            outcome_t *o = get(fx, key, 3, 3);
            size_t after_get = sent(fx);
            for (unsigned i = 0; i < 3; i++) {
                unsigned r = perms[p][i];
                size_t seq = req(fx, base, reps[r], DKV_RPC_GET);
                if (recs[r].tombstone) {
                    found_tombstone(fx, seq, recs[r].ts, 3);
                } else {
                    found(fx, seq, recs[r].ts, v[r].value, 3);
                }
            }
            uint32_t stale[3];
            size_t n = 0;
            for (unsigned i = 0; i < 3; i++) {
                if (dkv_record_cmp(&recs[i], &recs[newest]) != 0) {
                    stale[n++] = reps[i];
                }
            }
            if (recs[newest].tombstone) {
                assert_int_equal(o->rc, DKV_ENOTFOUND);
            } else {
                assert_int_equal(o->rc, 0);
                assert_value(o->rec.value, v[newest].value);
            }
            expect_repairs(fx, after_get, key, &recs[newest], stale, n);
            answer_rest(fx, after_get);
        }
    }
}

static void test_read_repair_spreads_a_tombstone(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr-tombstone", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 1, 3);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 200, "deleted-later", 3);
    found_tombstone(fx, req(fx, base, reps[1], DKV_RPC_GET), 300, 3);
    size_t after_get = sent(fx);
    absent(fx, req(fx, base, reps[2], DKV_RPC_GET));
    assert_int_equal(o->rc, 0); /* ack=1: the first reply answered */
    dkv_record_t want = {.ts = 300, .tombstone = true, .from = 3};
    uint32_t stale[] = {reps[0], reps[2]};
    expect_repairs(fx, after_get, key, &want, stale, 2);
    expect_rr_stats(fx, 1, 2, 0);
    answer_rest(fx, after_get);
}

static void test_read_repair_refills_a_not_ready_replica(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr-not-ready", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 2, 3);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 300, "v", 3);
    failed(fx, req(fx, base, reps[1], DKV_RPC_GET), DKV_ENOTREADY);
    size_t after_get = sent(fx);
    found(fx, req(fx, base, reps[2], DKV_RPC_GET), 300, "v", 3);
    assert_int_equal(o->rc, 0);
    dkv_record_t want = {.ts = 300, .value = dkv_slice_str("v"), .from = 3};
    expect_repairs(fx, after_get, key, &want, &reps[1], 1);
    /* One repair write; the replicas that answered did not disagree (coord.c counts a GET in
     * read_repair_reads only when an answering replica was stale). */
    expect_rr_stats(fx, 0, 1, 0);
    answer_rest(fx, after_get);
}

static void test_read_repair_stays_inside_the_records_replica_set(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr-set", 3, NO_LOCAL, key, reps);

    /* Written with from=2: it belongs on positions 0 and 1 only; position 2 stays absent. */
    size_t base = sent(fx);
    get(fx, key, 1, 3);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 300, "two-replicas", 2);
    absent(fx, req(fx, base, reps[1], DKV_RPC_GET));
    size_t after_get = sent(fx);
    absent(fx, req(fx, base, reps[2], DKV_RPC_GET));
    dkv_record_t want = {.ts = 300, .value = dkv_slice_str("two-replicas"), .from = 2};
    expect_repairs(fx, after_get, key, &want, &reps[1], 1);
    answer_rest(fx, after_get);

    /* The newest version found outside its set (position 2, from=2) still repairs positions 0
     * and 1, and not position 2 itself. */
    base = sent(fx);
    get(fx, key, 1, 3);
    found(fx, req(fx, base, reps[2], DKV_RPC_GET), 400, "found-outside", 2);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 100, "old", 2);
    after_get = sent(fx);
    absent(fx, req(fx, base, reps[1], DKV_RPC_GET));
    want = (dkv_record_t){.ts = 400, .value = dkv_slice_str("found-outside"), .from = 2};
    uint32_t in_set[] = {reps[0], reps[1]};
    expect_repairs(fx, after_get, key, &want, in_set, 2);
    answer_rest(fx, after_get);

    /* from=1: only position 0, which holds it: no repair at all. */
    base = sent(fx);
    get(fx, key, 1, 3);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 500, "one-replica", 1);
    found(fx, req(fx, base, reps[1], DKV_RPC_GET), 100, "old", 3);
    absent(fx, req(fx, base, reps[2], DKV_RPC_GET));
    assert_int_equal(sent(fx), base + 3);
    expect_rr_stats(fx, 3, 3, 0);
}

static void test_read_repair_of_unknown_set_record_only_refreshes_older_versions(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[4];
    pick_key(fx, "rr-v1", 4, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    get(fx, key, 1, 4);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 300, "v1-record", 0);
    failed(fx, req(fx, base, reps[1], DKV_RPC_GET), DKV_ENOTREADY);
    absent(fx, req(fx, base, reps[2], DKV_RPC_GET));
    size_t after_get = sent(fx);
    found(fx, req(fx, base, reps[3], DKV_RPC_GET), 200, "older", 0);
    /* from = 0: the set is unknown; an "absent" (or not-ready) replica may not be in it. */
    dkv_record_t want = {.ts = 300, .value = dkv_slice_str("v1-record"), .from = 0};
    expect_repairs(fx, after_get, key, &want, &reps[3], 1);
    expect_rr_stats(fx, 1, 1, 0);
    answer_rest(fx, after_get);
}

static void test_read_repair_of_local_replica_goes_through_the_store(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 1, .read_repair = true});
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    local_version_t local;
    pick_key(fx, "rr-local", 3, 2, key, reps);
    peers_of(fx, reps, 3, peers);

    /* Local absent, the peers agree: the local store gets the record, no request goes out. */
    size_t base = sent(fx);
    get(fx, key, 1, 3);
    found(fx, req(fx, base, peers[0], DKV_RPC_GET), 300, "newest", 3);
    assert_int_equal(get_local(fx, key, &local), DKV_ENOTFOUND);
    found(fx, req(fx, base, peers[1], DKV_RPC_GET), 300, "newest", 3);
    assert_int_equal(sent(fx), base + 2);
    assert_int_equal(get_local(fx, key, &local), 0);
    assert_int_equal(local.rec.ts, 300);
    assert_int_equal(local.rec.from, 3);
    assert_false(local.rec.tombstone);
    assert_value(local.rec.value, "newest");
    expect_rr_stats(fx, 1, 1, 0);

    /* Local older: overwritten with the newest version and its original timestamp. */
    base = sent(fx);
    get(fx, key, 1, 3);
    found(fx, req(fx, base, peers[0], DKV_RPC_GET), 500, "newer-still", 3);
    found(fx, req(fx, base, peers[1], DKV_RPC_GET), 500, "newer-still", 3);
    assert_int_equal(sent(fx), base + 2);
    assert_int_equal(get_local(fx, key, &local), 0);
    assert_int_equal(local.rec.ts, 500);
    assert_value(local.rec.value, "newer-still");
    expect_rr_stats(fx, 2, 2, 0);

    /* Local newest: the peers that lag get it from the local store's version. */
    put_local(fx, key, 900, "local-newest", 3);
    base = sent(fx);
    get(fx, key, 1, 3);
    found(fx, req(fx, base, peers[0], DKV_RPC_GET), 500, "newer-still", 3);
    size_t after_get = sent(fx);
    absent(fx, req(fx, base, peers[1], DKV_RPC_GET));
    dkv_record_t want = {.ts = 900, .value = dkv_slice_str("local-newest"), .from = 3};
    expect_repairs(fx, after_get, key, &want, peers, 2);
    expect_rr_stats(fx, 3, 4, 0);
    answer_rest(fx, after_get);
}

static void test_read_repair_refills_a_not_ready_local_replica_through_the_store(void **state)
{
    fx_t *fx = *state;
    fx_start(fx,
             &(fx_opts_t){.nodes = 3, .self_idx = 0, .read_repair = true, .local_not_ready = true});
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "rr-local-not-ready", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);

    /* ack=3: the not-ready local replica is a failure (504 at once), never "absent". */
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 3, 3);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_EQUORUM);
    found(fx, req(fx, base, peers[0], DKV_RPC_GET), 300, "v", 3);
    found(fx, req(fx, base, peers[1], DKV_RPC_GET), 300, "v", 3);
    assert_int_equal(sent(fx), base + 2);

    local_version_t local;
    assert_int_equal(get_local(fx, key, &local), 0);
    assert_int_equal(local.rec.ts, 300);
    assert_int_equal(local.rec.from, 3);
    assert_value(local.rec.value, "v");
    assert_int_equal(stat_of(&fx->stats.read_repair_writes), 1);
}

static void test_read_repair_off_sends_nothing(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 0, .read_repair = false});
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "rr-off", 3, 1, key, reps);
    peers_of(fx, reps, 3, peers);
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 1, 3);
    found(fx, req(fx, base, peers[0], DKV_RPC_GET), 300, "newest", 3);
    found(fx, req(fx, base, peers[1], DKV_RPC_GET), 100, "older", 3);
    assert_int_equal(o->calls, 1);
    assert_int_equal(sent(fx), base + 2);
    local_version_t local;
    assert_int_equal(get_local(fx, key, &local), DKV_ENOTFOUND);
    expect_rr_stats(fx, 0, 0, 0);
}

static void test_read_repair_refused_at_submit_counts_a_failure(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE_RR);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "rr-refused", 3, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    get(fx, key, 1, 3);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), 300, "newest", 3);
    absent(fx, req(fx, base, reps[1], DKV_RPC_GET));
    dkv_fake_transport_refuse(fx->ft, reps[1], DKV_EUNAVAIL);
    size_t after_get = sent(fx);
    found(fx, req(fx, base, reps[2], DKV_RPC_GET), 300, "newest", 3);
    assert_int_equal(dkv_fake_transport_call(fx->ft, after_get)->state, DKV_FAKE_REFUSED);
    assert_int_equal(dkv_fake_transport_pending(fx->ft), 0);
    expect_rr_stats(fx, 1, 1, 1);
}

/* ---- hinted handoff ---- */

/*
 * The bytes one hint takes in dkv_hints_target_stats(), from the layout in repair/hints.c:
 * key = u16 URL length | URL | u64 sequence; value = u8 version | u64 created_ms | u16 key
 * length | key | the record (a version-2 header and the value).
 */
static uint64_t hint_bytes(const fx_t *fx, uint32_t target, size_t key_len, size_t value_len)
{
    size_t url_len = strlen(dkv_ring_url(fx->node->ring, target));
    return (2 + url_len + 8) + (1 + 8 + 2 + key_len + DKV_RECORD_HEADER_BYTES + value_len);
}

/* Asserts the pending hints of every node: `counts[i]` for node i, each of `bytes_each` bytes. */
static void expect_hints(fx_t *fx, const uint64_t *counts, uint64_t bytes_each)
{
    for (uint32_t i = 0; i < fx->opts.nodes; i++) {
        dkv_hints_target_stats_t st = dkv_hints_target_stats(fx->hints, i);
        if (st.count != counts[i]) {
            fail_msg("node %u has %llu hint(s), want %llu", i, (unsigned long long)st.count,
                     (unsigned long long)counts[i]);
        }
        assert_int_equal(st.bytes, counts[i] * bytes_each);
    }
}

/* Reads the one stored hint back (layout: see hint_bytes) and checks it carries `want`. The
 * iterator is released before any assertion: a store closed under a live iterator aborts. */
static void expect_stored_hint(fx_t *fx, uint32_t target, const char *key, const dkv_record_t *want)
{
    dkv_store_raw_iter_t *it = NULL;
    assert_int_equal(
        dkv_store_hint_iter_new(fx->node->store, dkv_slice(NULL, 0), dkv_slice(NULL, 0), &it), 0);
    dkv_slice_t k;
    dkv_slice_t v;
    dkv_buf_t hk;
    dkv_buf_t hv;
    dkv_buf_init(&hk);
    dkv_buf_init(&hv);
    int first_rc = dkv_store_raw_iter_next(it, &k, &v);
    if (first_rc == 0) {
        dkv_buf_append(&hk, k.ptr, k.len);
        dkv_buf_append(&hv, v.ptr, v.len);
    }
    int second_rc = dkv_store_raw_iter_next(it, &k, &v);
    dkv_store_raw_iter_free(it);
    k = dkv_buf_slice(&hk);
    v = dkv_buf_slice(&hv);

    const char *url = dkv_ring_url(fx->node->ring, target);
    size_t url_len = strlen(url);
    size_t key_len = strlen(key);
    dkv_record_t rec = {0};
    bool key_ok = first_rc == 0 && k.len == 2 + url_len + 8 &&
                  ((size_t)k.ptr[0] << 8 | k.ptr[1]) == url_len &&
                  memcmp(k.ptr + 2, url, url_len) == 0;
    bool value_ok =
        first_rc == 0 && v.len >= 11 + key_len && ((size_t)v.ptr[9] << 8 | v.ptr[10]) == key_len &&
        memcmp(v.ptr + 11, key, key_len) == 0 &&
        dkv_record_decode(dkv_slice(v.ptr + 11 + key_len, v.len - 11 - key_len), &rec) == 0;
    bool rec_ok = value_ok && rec.ts == want->ts && rec.tombstone == want->tombstone &&
                  rec.from == want->from && dkv_slice_cmp(rec.value, want->value) == 0;
    dkv_buf_cleanup(&hk);
    dkv_buf_cleanup(&hv);
    assert_int_equal(first_rc, 0);
    assert_int_equal(second_rc, DKV_ENOTFOUND); /* exactly one hint */
    assert_true(key_ok);                        /* for that target */
    assert_true(value_ok);                      /* for that key, with a record */
    assert_true(rec_ok);                        /* the record the replica was sent */
}

static const fx_opts_t THREE_HINTS = {.nodes = 3, .self_idx = 0, .hints = true};

static void test_failed_replica_write_after_the_answer_leaves_one_hint_for_that_peer(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &THREE_HINTS);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "hint-late", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    const char *value = "a value the hint must carry";

    size_t base = sent(fx);
    outcome_t *o = put(fx, key, value, 1, 3);
    assert_int_equal(o->calls, 1); /* 201 from the local write, before any peer replied */
    assert_int_equal(o->rc, 0);
    const dkv_fake_call_t *c =
        dkv_fake_transport_call(fx->ft, req(fx, base, peers[0], DKV_RPC_PUT));
    dkv_record_t sent_rec = c->rec;
    failed(fx, c->seq, DKV_ETIMEDOUT);
    uint64_t counts[3] = {0};
    counts[peers[0]] = 1;
    expect_hints(fx, counts, hint_bytes(fx, peers[0], strlen(key), strlen(value)));
    expect_stored_hint(fx, peers[0], key, &sent_rec);
    stored(fx, req(fx, base, peers[1], DKV_RPC_PUT));
    expect_hints(fx, counts, hint_bytes(fx, peers[0], strlen(key), strlen(value)));
    assert_int_equal(stat_of(&fx->stats.hints_not_stored), 0);
}

static void test_each_failure_kind_leaves_exactly_one_hint(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &THREE_HINTS);
    static const int errs[] = {DKV_ETIMEDOUT, DKV_EUNAVAIL, DKV_EIO, DKV_EPROTO};
    uint64_t counts[3] = {0};
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "hint-kinds", 3, 2, key, reps); /* one key: every hint has the same size */
    peers_of(fx, reps, 3, peers);
    for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
        uint32_t bad = peers[i % 2];
        size_t base = sent(fx);
        put(fx, key, "v", 2, 3);
        failed(fx, req(fx, base, bad, DKV_RPC_PUT), errs[i]);
        answer_rest(fx, base);
        counts[bad]++;
        expect_hints(fx, counts, hint_bytes(fx, bad, strlen(key), 1));
    }
}

static void test_refused_replica_write_leaves_a_hint_at_submit(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &THREE_HINTS);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "hint-refused", 3, 1, key, reps);
    peers_of(fx, reps, 3, peers);
    dkv_fake_transport_refuse(fx->ft, peers[1], DKV_EUNAVAIL);
    size_t base = sent(fx);
    outcome_t *o = put(fx, key, "refused", 2, 3);
    dkv_fake_transport_refuse(fx->ft, peers[1], 0);
    uint64_t counts[3] = {0};
    counts[peers[1]] = 1;
    expect_hints(fx, counts, hint_bytes(fx, peers[1], strlen(key), strlen("refused")));
    assert_int_equal(o->calls, 0); /* the local write is 1 of ack=2; one peer still pending */
    answer_rest(fx, base);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, 0);
    expect_hints(fx, counts, hint_bytes(fx, peers[1], strlen(key), strlen("refused")));
}

static void test_failed_write_before_equorum_leaves_a_hint(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 0, .hints = true});
    char key[KEY_BYTES];
    uint32_t reps[2];
    pick_key(fx, "hint-remote", 2, NO_LOCAL, key, reps);
    size_t base = sent(fx);
    outcome_t *o = put(fx, key, "vv", 2, 2);
    failed(fx, req(fx, base, reps[1], DKV_RPC_PUT), DKV_EIO);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_EQUORUM);
    uint64_t counts[3] = {0};
    counts[reps[1]] = 1;
    expect_hints(fx, counts, hint_bytes(fx, reps[1], strlen(key), 2));
    stored(fx, req(fx, base, reps[0], DKV_RPC_PUT));
    expect_hints(fx, counts, hint_bytes(fx, reps[1], strlen(key), 2));
}

static void test_failed_delete_leaves_a_tombstone_hint(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &THREE_HINTS);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "hint-delete", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    size_t base = sent(fx);
    del(fx, key, 1, 3);
    const dkv_fake_call_t *c =
        dkv_fake_transport_call(fx->ft, req(fx, base, peers[1], DKV_RPC_PUT));
    dkv_record_t sent_rec = c->rec;
    failed(fx, c->seq, DKV_ETIMEDOUT);
    stored(fx, req(fx, base, peers[0], DKV_RPC_PUT));
    uint64_t counts[3] = {0};
    counts[peers[1]] = 1;
    expect_hints(fx, counts, hint_bytes(fx, peers[1], strlen(key), 0));
    assert_true(sent_rec.tombstone);
    expect_stored_hint(fx, peers[1], key, &sent_rec);
}

static void test_successful_writes_leave_no_hints(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &THREE_HINTS);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "hint-none", 3, 1, key, reps);
    size_t base = sent(fx);
    put(fx, key, "v", 3, 3);
    answer_rest(fx, base);
    uint64_t zero[3] = {0};
    expect_hints(fx, zero, 0);
}

static void test_einval_from_a_replica_leaves_no_hint(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &THREE_HINTS);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "hint-einval", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    size_t base = sent(fx);
    put(fx, key, "v", 1, 3);
    failed(fx, req(fx, base, peers[0], DKV_RPC_PUT), DKV_EINVAL);
    answer_rest(fx, base);

    /* Refused with DKV_EINVAL at submit (a bad request): no hint either. */
    dkv_fake_transport_refuse(fx->ft, peers[1], DKV_EINVAL);
    base = sent(fx);
    put(fx, key, "v", 1, 3);
    dkv_fake_transport_refuse(fx->ft, peers[1], 0);
    answer_rest(fx, base);
    uint64_t zero[3] = {0};
    expect_hints(fx, zero, 0);
    assert_int_equal(stat_of(&fx->stats.hints_not_stored), 0);
}

static void test_failed_get_leaves_no_hint(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &THREE_HINTS);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "hint-get", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    static const int errs[] = {DKV_ETIMEDOUT, DKV_EIO, DKV_ENOTREADY, DKV_EUNAVAIL};
    for (size_t i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
        size_t base = sent(fx);
        get(fx, key, 1, 3);
        failed(fx, req(fx, base, peers[0], DKV_RPC_GET), errs[i]);
        failed(fx, req(fx, base, peers[1], DKV_RPC_GET), errs[i]);
    }
    dkv_fake_transport_refuse(fx->ft, peers[0], DKV_EUNAVAIL);
    size_t base = sent(fx);
    get(fx, key, 1, 3);
    dkv_fake_transport_refuse(fx->ft, peers[0], 0);
    answer_rest(fx, base);
    uint64_t zero[3] = {0};
    expect_hints(fx, zero, 0);
}

static void test_without_hints_failed_writes_leave_nothing(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 0, .hints = true, .hints_not_in_env = true});
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "hint-off", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    dkv_fake_transport_refuse(fx->ft, peers[1], DKV_EUNAVAIL);
    size_t base = sent(fx);
    outcome_t *o = put(fx, key, "v", 1, 3);
    dkv_fake_transport_refuse(fx->ft, peers[1], 0);
    failed(fx, req(fx, base, peers[0], DKV_RPC_PUT), DKV_ETIMEDOUT);
    assert_int_equal(o->rc, 0);
    uint64_t zero[3] = {0};
    expect_hints(fx, zero, 0);
    assert_int_equal(stat_of(&fx->stats.hints_not_stored), 0);
}

static void test_hint_over_quota_is_counted_as_not_stored(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &(fx_opts_t){.nodes = 3, .self_idx = 0, .hints = true, .hints_max_bytes = 16});
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "hint-quota", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    size_t base = sent(fx);
    put(fx, key, "v", 1, 3);
    failed(fx, req(fx, base, peers[0], DKV_RPC_PUT), DKV_ETIMEDOUT);
    answer_rest(fx, base);
    uint64_t zero[3] = {0};
    expect_hints(fx, zero, 0);
    assert_int_equal(stat_of(&fx->stats.hints_not_stored), 1);
}

/* ---- the record a PUT sends ---- */

static void test_put_sends_one_timestamp_and_the_requests_from_to_every_replica(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    char key[KEY_BYTES];
    uint32_t reps[4];
    uint32_t peers[3];
    local_version_t local;

    for (unsigned from = 2; from <= 4; from++) {
        char tag[16];
        snprintf(tag, sizeof(tag), "stamp%u", from);
        pick_key(fx, tag, from, 1, key, reps);
        unsigned n_peers = peers_of(fx, reps, from, peers);
        uint64_t before = dkv_hlc_now(&fx->node->hlc);
        size_t base = sent(fx);
        put(fx, key, "stamped", from, from);
        assert_int_equal(sent(fx) - base, n_peers);
        const dkv_fake_call_t *first =
            dkv_fake_transport_call(fx->ft, req(fx, base, peers[0], DKV_RPC_PUT));
        assert_true(first->rec.ts > before);
        for (unsigned i = 0; i < n_peers; i++) {
            const dkv_fake_call_t *c =
                dkv_fake_transport_call(fx->ft, req(fx, base, peers[i], DKV_RPC_PUT));
            assert_true(c->has_rec);
            assert_value(c->key, key);
            assert_int_equal(c->rec.ts, first->rec.ts);
            assert_int_equal(c->rec.from, from);
            assert_false(c->rec.tombstone);
            assert_value(c->rec.value, "stamped");
        }
        assert_int_equal(get_local(fx, key, &local), 0);
        assert_int_equal(local.rec.ts, first->rec.ts);
        assert_int_equal(local.rec.from, from);
        assert_value(local.rec.value, "stamped");
        answer_rest(fx, base);
    }

    /* A delete: a tombstone with no value, the same timestamp everywhere. */
    pick_key(fx, "stamp-del", 3, 1, key, reps);
    peers_of(fx, reps, 3, peers);
    size_t base = sent(fx);
    del(fx, key, 1, 3);
    const dkv_fake_call_t *a =
        dkv_fake_transport_call(fx->ft, req(fx, base, peers[0], DKV_RPC_PUT));
    const dkv_fake_call_t *b =
        dkv_fake_transport_call(fx->ft, req(fx, base, peers[1], DKV_RPC_PUT));
    assert_true(a->rec.tombstone && b->rec.tombstone);
    assert_int_equal(a->rec.value.len + b->rec.value.len, 0);
    assert_int_equal(a->rec.ts, b->rec.ts);
    assert_int_equal(a->rec.from, 3);
    assert_int_equal(b->rec.from, 3);
    assert_int_equal(get_local(fx, key, &local), 0);
    assert_true(local.rec.tombstone);
    assert_int_equal(local.rec.ts, a->rec.ts);
    answer_rest(fx, base);
}

static void test_put_after_a_get_is_stamped_after_the_versions_it_saw(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &FIVE_REMOTE);
    char key[KEY_BYTES];
    uint32_t reps[1];
    pick_key(fx, "hlc", 1, NO_LOCAL, key, reps);
    /* A peer's clock runs an hour ahead. */
    uint64_t ahead = dkv_hlc_now(&fx->node->hlc) + ((uint64_t)3600 * 1000 << DKV_HLC_LOGICAL_BITS);
    size_t base = sent(fx);
    get(fx, key, 1, 1);
    found(fx, req(fx, base, reps[0], DKV_RPC_GET), ahead, "from-the-future", 1);
    base = sent(fx);
    put(fx, key, "overwrite", 1, 1);
    const dkv_fake_call_t *c = dkv_fake_transport_call(fx->ft, req(fx, base, reps[0], DKV_RPC_PUT));
    assert_true(c->rec.ts > ahead);
    answer_rest(fx, base);
}

/* ---- speculative reads (DKV_COORD_READ_SPECULATIVE) ---- */

static const fx_opts_t SPEC3 = {
    .nodes = 3, .self_idx = 0, .read_repair = true, .speculative = true};
static const fx_opts_t SPEC3_RETRY40 = {
    .nodes = 3, .self_idx = 0, .read_repair = true, .speculative = true, .retry_ms = 40};
static const fx_opts_t SPEC5_RETRY20 = {
    .nodes = 5, .self_idx = 0, .read_repair = true, .speculative = true, .retry_ms = 20};

static void on_guard(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/*
 * Runs the node's loop (the coordinator's retry timer) until the fake holds more than `count`
 * requests or `timeout_ms` passed. @return whether it does. A guard timer keeps the loop alive:
 * the coordinator's own timer is unreferenced.
 */
static bool run_until_sent(fx_t *fx, size_t count, uint64_t timeout_ms)
{
    uv_loop_t *loop = &fx->node->loop;
    bool expired = false;
    uv_timer_t guard;
    uv_timer_init(loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, timeout_ms, 0);
    while (sent(fx) <= count && !expired) {
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return sent(fx) > count;
}

/* Runs the node's loop for `ms` milliseconds of real time. */
static void run_for(fx_t *fx, uint64_t ms)
{
    uv_loop_t *loop = &fx->node->loop;
    bool expired = false;
    uv_timer_t guard;
    uv_timer_init(loop, &guard);
    guard.data = &expired;
    uv_timer_start(&guard, on_guard, ms, 0);
    while (!expired) {
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static uint64_t ms_since(uint64_t t0_ns)
{
    return (uv_hrtime() - t0_ns) / 1000000u;
}

static void expect_call(const fx_t *fx, size_t seq, uint32_t peer, dkv_rpc_type_t type)
{
    const dkv_fake_call_t *c = dkv_fake_transport_call(fx->ft, seq);
    assert_non_null(c);
    if (c->peer != peer || c->type != type) {
        fail_msg("request #%zu is %s to peer %u, want %s to peer %u", seq,
                 dkv_rpc_type_name(c->type), c->peer, dkv_rpc_type_name(type), peer);
    }
}

static void test_spec_get_reads_this_node_and_asks_one_peer_for_a_digest(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3);
    /* This node is the last of the three replicas: still the one read for the data. */
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-local", 3, 2, key, reps);
    assert_int_equal(peers_of(fx, reps, 3, peers), 2);
    put_local(fx, key, 10, "v", 3);
    outcome_t *o = get(fx, key, 2, 3);
    assert_int_equal(sent(fx), 1);
    expect_call(fx, 0, peers[0], DKV_RPC_DIGEST);
    assert_int_equal(o->calls, 0);
    found(fx, 0, 10, "v", 3); /* the digest agrees */
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, 0);
    assert_value(o->rec.value, "v");
    assert_int_equal(sent(fx), 1); /* no third replica, no repair */
    assert_int_equal(dkv_coord_inflight(fx->coord), 0);
    assert_int_equal(stat_of(&fx->stats.spec_retries), 0);
    assert_int_equal(stat_of(&fx->stats.digest_fetches), 0);
}

static void
test_spec_get_without_this_node_reads_the_first_replica_and_digests_the_next(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3);
    char key[KEY_BYTES];
    uint32_t reps[2];
    pick_key(fx, "sp-remote", 2, NO_LOCAL, key, reps);
    outcome_t *o = get(fx, key, 2, 2);
    assert_int_equal(sent(fx), 2);
    expect_call(fx, 0, reps[0], DKV_RPC_GET);
    expect_call(fx, 1, reps[1], DKV_RPC_DIGEST);
    found(fx, 1, 7, "x", 2);
    assert_int_equal(o->calls, 0);
    found(fx, 0, 7, "x", 2);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "x");
    /* ack=1: the data replica alone. */
    size_t base = sent(fx);
    o = get(fx, key, 1, 2);
    assert_int_equal(sent(fx), base + 1);
    expect_call(fx, base, reps[0], DKV_RPC_GET);
    absent(fx, base);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_ENOTFOUND);
    assert_int_equal(sent(fx), base + 1);
}

static void test_spec_newer_digest_reads_that_replicas_data_before_answering(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-newer", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key, 10, "old", 3);
    outcome_t *o = get(fx, key, 2, 3);
    expect_call(fx, 0, peers[0], DKV_RPC_DIGEST);
    found(fx, 0, 20, "new", 3);
    /* Two successes, but the data in hand is older than the digest: never answer "old". */
    assert_int_equal(o->calls, 0);
    assert_int_equal(sent(fx), 2);
    expect_call(fx, 1, peers[0], DKV_RPC_GET);
    found(fx, 1, 20, "new", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "new");
    assert_int_equal(o->rec.ts, 20);
    /* Read repair: this node held the older version; the third replica was never asked. */
    local_version_t lv;
    assert_int_equal(get_local(fx, key, &lv), 0);
    assert_int_equal(lv.rec.ts, 20);
    assert_value(lv.rec.value, "new");
    assert_int_equal(dkv_fake_transport_count_of(fx->ft, 0, peers[1], DKV_RPC_DIGEST) +
                         dkv_fake_transport_count_of(fx->ft, 0, peers[1], DKV_RPC_GET) +
                         dkv_fake_transport_count_of(fx->ft, 0, peers[1], DKV_RPC_PUT),
                     0);
    assert_int_equal(stat_of(&fx->stats.digest_fetches), 1);
    expect_rr_stats(fx, 1, 1, 0);
}

static void test_spec_older_or_absent_digest_answers_at_once_and_is_repaired(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-older", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key, 20, "new", 3);
    outcome_t *o = get(fx, key, 2, 3);
    found(fx, 0, 10, "old", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "new");
    dkv_record_t want = {.ts = 20, .value = dkv_slice_str("new"), .from = 3};
    expect_repairs(fx, 1, key, &want, &peers[0], 1);
    stored(fx, 1);

    /* A replica that has nothing is repaired too. */
    char key2[KEY_BYTES];
    pick_key(fx, "sp-absent", 3, 0, key2, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key2, 30, "only-here", 3);
    size_t base = sent(fx);
    o = get(fx, key2, 2, 3);
    expect_call(fx, base, peers[0], DKV_RPC_DIGEST);
    absent(fx, base);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "only-here");
    dkv_record_t want2 = {.ts = 30, .value = dkv_slice_str("only-here"), .from = 3};
    expect_repairs(fx, base + 1, key2, &want2, &peers[0], 1);
    stored(fx, base + 1);
    expect_rr_stats(fx, 2, 2, 0);
    assert_int_equal(stat_of(&fx->stats.digest_fetches), 0);
}

static void test_spec_equal_timestamps_with_different_values_are_read_and_ordered(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    /* This node holds "b", the peer "a", both at ts 10: "a" is newer (API.md §6), which only the
     * values can tell. */
    pick_key(fx, "sp-tie", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key, 10, "b", 3);
    outcome_t *o = get(fx, key, 2, 3);
    found(fx, 0, 10, "a", 3);
    assert_int_equal(o->calls, 0);
    expect_call(fx, 1, peers[0], DKV_RPC_GET);
    found(fx, 1, 10, "a", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "a");
    local_version_t lv;
    assert_int_equal(get_local(fx, key, &lv), 0);
    assert_value(lv.rec.value, "a");

    /* The other way round: the data in hand ("a") wins, the peer holding "b" is repaired. */
    char key2[KEY_BYTES];
    pick_key(fx, "sp-tie2", 3, 0, key2, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key2, 10, "a", 3);
    size_t base = sent(fx);
    o = get(fx, key2, 2, 3);
    found(fx, base, 10, "b", 3);
    expect_call(fx, base + 1, peers[0], DKV_RPC_GET);
    found(fx, base + 1, 10, "b", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "a");
    dkv_record_t want = {.ts = 10, .value = dkv_slice_str("a"), .from = 3};
    expect_repairs(fx, base + 2, key2, &want, &peers[0], 1);
    stored(fx, base + 2);
}

static void test_spec_stale_data_replica_waits_for_the_newer_digests_data(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3);
    char key[KEY_BYTES];
    uint32_t reps[2];
    pick_key(fx, "sp-stale", 2, NO_LOCAL, key, reps);
    outcome_t *o = get(fx, key, 2, 2);
    expect_call(fx, 0, reps[0], DKV_RPC_GET);
    expect_call(fx, 1, reps[1], DKV_RPC_DIGEST);
    found(fx, 1, 20, "new", 2); /* the digest first, newer than anything in hand */
    found(fx, 0, 10, "old", 2); /* then the data replica's older version */
    assert_int_equal(o->calls, 0);
    assert_int_equal(sent(fx), 3);
    expect_call(fx, 2, reps[1], DKV_RPC_GET);
    found(fx, 2, 20, "new", 2);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "new");
    dkv_record_t want = {.ts = 20, .value = dkv_slice_str("new"), .from = 2};
    expect_repairs(fx, 3, key, &want, &reps[0], 1);
    stored(fx, 3);

    /* If that data cannot be read, the replica no longer counts: with no third one, 504. */
    char key2[KEY_BYTES];
    pick_key(fx, "sp-stale2", 2, NO_LOCAL, key2, reps);
    size_t base = sent(fx);
    o = get(fx, key2, 2, 2);
    found(fx, base, 10, "old", 2);
    found(fx, base + 1, 20, "new", 2);
    expect_call(fx, base + 2, reps[1], DKV_RPC_GET);
    failed(fx, base + 2, DKV_ETIMEDOUT);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_EQUORUM);
}

static void test_spec_slow_replica_gets_the_next_one_asked_after_the_retry_delay(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3_RETRY40);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-slow", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key, 10, "v", 3);
    uint64_t t0 = uv_hrtime();
    outcome_t *o = get(fx, key, 2, 3);
    assert_int_equal(sent(fx), 1);
    assert_false(run_until_sent(fx, 1, 15)); /* not before the delay */
    assert_true(run_until_sent(fx, 1, 2000));
    uint64_t waited = ms_since(t0);
    assert_true(waited >= 39); /* libuv timers have ms resolution */
    assert_true(waited < 1000);
    assert_int_equal(sent(fx), 2);
    expect_call(fx, 1, peers[1], DKV_RPC_DIGEST);
    assert_int_equal(o->calls, 0);
    found(fx, 1, 10, "v", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "v");
    found(fx, 0, 10, "v", 3); /* the slow one, late, agrees: nothing to repair */
    assert_int_equal(sent(fx), 2);
    assert_int_equal(stat_of(&fx->stats.spec_retries), 1);
    assert_int_equal(dkv_coord_inflight(fx->coord), 0);
}

static void test_spec_failure_asks_the_next_replica_at_once(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3_RETRY40);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-fail", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key, 10, "v", 3);
    outcome_t *o = get(fx, key, 2, 3);
    failed(fx, 0, DKV_ETIMEDOUT);
    assert_int_equal(sent(fx), 2); /* no waiting for a delay */
    expect_call(fx, 1, peers[1], DKV_RPC_DIGEST);
    found(fx, 1, 10, "v", 3);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, 0);

    /* Refused at submit (an open breaker): the same, within the call. */
    dkv_fake_transport_refuse(fx->ft, peers[0], DKV_EUNAVAIL);
    size_t base = sent(fx);
    o = get(fx, key, 2, 3);
    assert_int_equal(sent(fx), base + 2);
    assert_int_equal(dkv_fake_transport_call(fx->ft, base)->state, DKV_FAKE_REFUSED);
    expect_call(fx, base + 1, peers[1], DKV_RPC_DIGEST);
    found(fx, base + 1, 10, "v", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "v");
    assert_int_equal(stat_of(&fx->stats.spec_retries), 2);
}

static void test_spec_never_asks_a_node_outside_the_replica_set(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC5_RETRY20);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "sp-set", 3, NO_LOCAL, key, reps);
    outcome_t *o = get(fx, key, 2, 3);
    expect_call(fx, 0, reps[0], DKV_RPC_GET);
    expect_call(fx, 1, reps[1], DKV_RPC_DIGEST);
    /* Nobody answers: after the delay the third replica, and then nothing more however long. */
    assert_true(run_until_sent(fx, 2, 2000));
    assert_false(run_until_sent(fx, 3, 150));
    assert_int_equal(sent(fx), 3);
    /* Both are overdue, the data request too: the third replica is asked for the data. */
    expect_call(fx, 2, reps[2], DKV_RPC_GET);
    failed(fx, 0, DKV_EUNAVAIL);
    failed(fx, 1, DKV_EUNAVAIL);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_EQUORUM);
    absent(fx, 2);
    for (uint32_t n = 0; n < 5; n++) {
        bool in_set = n == reps[0] || n == reps[1] || n == reps[2];
        size_t to_n = dkv_fake_transport_count_of(fx->ft, 0, n, DKV_RPC_GET) +
                      dkv_fake_transport_count_of(fx->ft, 0, n, DKV_RPC_DIGEST) +
                      dkv_fake_transport_count_of(fx->ft, 0, n, DKV_RPC_PUT);
        assert_int_equal(to_n, in_set ? 1 : 0);
    }

    /* The data replica fails: the next replica is asked for the data, not a digest. */
    size_t base = sent(fx);
    o = get(fx, key, 2, 3);
    failed(fx, base, DKV_EIO);
    expect_call(fx, base + 2, reps[2], DKV_RPC_GET);
    found(fx, base + 1, 5, "v", 3);
    found(fx, base + 2, 5, "v", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "v");
}

static void test_spec_ack_equal_to_from_asks_every_replica_at_once(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3_RETRY40);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-all", 3, 1, key, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key, 10, "v", 3);
    outcome_t *o = get(fx, key, 3, 3);
    assert_int_equal(sent(fx), 2);
    expect_call(fx, 0, peers[0], DKV_RPC_DIGEST);
    expect_call(fx, 1, peers[1], DKV_RPC_DIGEST);
    assert_false(run_until_sent(fx, 2, 100)); /* nobody left to ask */
    found(fx, 0, 10, "v", 3);
    assert_int_equal(o->calls, 0);
    failed(fx, 1, DKV_ETIMEDOUT); /* as with every replica asked: one failure is a 504 */
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_EQUORUM);
    assert_int_equal(stat_of(&fx->stats.spec_retries), 0);
}

static void test_spec_late_newer_digest_is_read_and_repaired_after_the_answer(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3_RETRY40);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-late", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    put_local(fx, key, 10, "old", 3);
    outcome_t *o = get(fx, key, 2, 3);
    assert_true(run_until_sent(fx, 1, 2000));
    found(fx, 1, 10, "old", 3); /* this node and the second peer agree: the answer */
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "old");
    found(fx, 0, 20, "new", 3); /* the slow peer had a newer write */
    assert_int_equal(sent(fx), 3);
    expect_call(fx, 2, peers[0], DKV_RPC_GET);
    found(fx, 2, 20, "new", 3);
    dkv_record_t want = {.ts = 20, .value = dkv_slice_str("new"), .from = 3};
    expect_repairs(fx, 3, key, &want, &peers[1], 1);
    stored(fx, 3);
    local_version_t lv;
    assert_int_equal(get_local(fx, key, &lv), 0);
    assert_int_equal(lv.rec.ts, 20);
    expect_rr_stats(fx, 1, 2, 0);
}

static void test_spec_silent_peer_is_asked_last_until_it_answers(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3_RETRY40);
    char k1[KEY_BYTES];
    char k2[KEY_BYTES];
    char k3[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-silent", 3, 0, k1, reps);
    peers_of(fx, reps, 3, peers);
    uint32_t first = peers[0];
    /* Keys whose first peer is the same one. */
    uint32_t r2[3];
    uint32_t p2[2];
    unsigned found_keys = 0;
    for (unsigned i = 0; i < 10000 && found_keys < 2; i++) {
        char *k = found_keys == 0 ? k2 : k3;
        snprintf(k, KEY_BYTES, "sp-silent-other-%u", i);
        dkv_ring_preference_list(fx->node->ring, dkv_slice_str(k), 3, r2);
        peers_of(fx, r2, 3, p2);
        if (p2[0] == first) {
            found_keys++;
        }
    }
    assert_int_equal(found_keys, 2);
    uint32_t second = p2[1];

    outcome_t *o = get(fx, k1, 2, 3);
    uint64_t t0 = uv_hrtime();
    assert_true(run_until_sent(fx, 1, 2000)); /* after the 40 ms retry delay */
    absent(fx, 1);
    assert_int_equal(o->calls, 1);
    /* Not silent yet: sent nothing for less than twice its delay. */
    size_t base = sent(fx);
    if (ms_since(t0) < 70) {
        o = get(fx, k2, 2, 3);
        expect_call(fx, base, first, DKV_RPC_DIGEST);
        absent(fx, base);
        assert_int_equal(o->calls, 1);
    }
    run_for(fx, 90); /* `first` has sent nothing at all for over 80 ms: silent */
    base = sent(fx);
    o = get(fx, k2, 2, 3);
    expect_call(fx, base, second, DKV_RPC_DIGEST); /* not `first`, though it comes first */
    absent(fx, base);
    assert_int_equal(o->calls, 1);
    absent(fx, 0); /* `first` answers after all */
    base = sent(fx);
    o = get(fx, k3, 2, 3);
    expect_call(fx, base, first, DKV_RPC_DIGEST);
    absent(fx, base);
    assert_int_equal(o->calls, 1);
}

static void test_spec_requests_asked_late_get_what_is_left_of_the_timeout(void **state)
{
    fx_t *fx = *state;
    fx_opts_t opts = SPEC3_RETRY40;
    opts.replica_timeout_ms = 300;
    fx_start(fx, &opts);
    char key[KEY_BYTES];
    uint32_t reps[3];
    pick_key(fx, "sp-budget", 3, 0, key, reps);
    outcome_t *o = get(fx, key, 2, 3);
    uint64_t t = dkv_fake_transport_call(fx->ft, 0)->timeout_ms;
    assert_true(t >= 299 && t <= 300); /* all of it (less a ms boundary crossed meanwhile) */
    assert_true(run_until_sent(fx, 1, 2000));
    t = dkv_fake_transport_call(fx->ft, 1)->timeout_ms;
    assert_true(t > 0 && t <= 300 - 39);
    answer_rest(fx, 0);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, DKV_ENOTFOUND);
}

/* One speculative GET of `key` through `peer` (its first peer), answered after `latency_us` on
 * the fake clock. */
static void timed_get(fx_t *fx, const char *key, uint32_t peer, uint64_t latency_us)
{
    size_t base = sent(fx);
    outcome_t *o = get(fx, key, 2, 3);
    expect_call(fx, base, peer, DKV_RPC_DIGEST);
    fx->clock_ns += latency_us * 1000u;
    absent(fx, base);
    assert_int_equal(o->calls, 1);
}

static void test_spec_retry_delay_is_the_peers_observed_p99(void **state)
{
    fx_t *fx = *state;
    fx_opts_t opts = SPEC3;
    opts.fake_clock = true;
    opts.replica_timeout_ms = 1000;
    fx_start(fx, &opts);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-p99", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]),
                     DKV_COORD_RETRY_WARMUP_MS * 1000u);
    for (unsigned i = 0; i < DKV_COORD_RETRY_MIN_SAMPLES - 1; i++) {
        timed_get(fx, key, peers[0], 1500);
    }
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]),
                     DKV_COORD_RETRY_WARMUP_MS * 1000u);
    for (unsigned i = DKV_COORD_RETRY_MIN_SAMPLES - 1; i < 200; i++) {
        timed_get(fx, key, peers[0], 1500);
    }
    /* 1500 us falls in the bucket [1408, 1535] us. */
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]), 1535);
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[1]),
                     DKV_COORD_RETRY_WARMUP_MS * 1000u);
    /* One reply in 300 slower does not move the p99; one in ten does. (15 ms: slower, but not
     * silent, which takes 20 ms here.) */
    timed_get(fx, key, peers[0], 15000);
    for (unsigned i = 0; i < 99; i++) {
        timed_get(fx, key, peers[0], 1500);
    }
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]), 1535);
    for (unsigned i = 0; i < 100; i++) {
        timed_get(fx, key, peers[0], i % 10 == 0 ? 15000 : 1500);
    }
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]), 15359); /* [14336, 15359] */
    /* Halved every 4096 samples: fast replies take over again. */
    for (unsigned i = 0; i < 5000; i++) {
        timed_get(fx, key, peers[0], 1500);
    }
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]), 1535);
}

static void test_spec_fixed_retry_delay_and_caps(void **state)
{
    fx_t *fx = *state;
    fx_opts_t opts = SPEC3;
    opts.retry_ms = 7;
    opts.fake_clock = true;
    fx_start(fx, &opts);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-fixed", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    for (unsigned i = 0; i < 100; i++) {
        timed_get(fx, key, peers[0], 1500);
    }
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]), 7000);
}

static void test_spec_latency_of_a_silent_peer_does_not_raise_its_delay(void **state)
{
    fx_t *fx = *state;
    fx_opts_t opts = SPEC3;
    opts.fake_clock = true;
    fx_start(fx, &opts);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-stall", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    for (unsigned i = 0; i < 100; i++) {
        timed_get(fx, key, peers[0], 1500);
    }
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]), 1535);
    /* Five stalls: a request passes its 1.5 ms delay with nothing at all from the peer, the next
     * replica answers, and the stalled one answers half a second later. */
    for (unsigned round = 0; round < 5; round++) {
        size_t base = sent(fx);
        outcome_t *o = get(fx, key, 2, 3);
        expect_call(fx, base, peers[0], DKV_RPC_DIGEST);
        fx->clock_ns += 5u * 1000000u; /* past the deadline when the timer looks */
        assert_true(run_until_sent(fx, base + 1, 2000));
        expect_call(fx, base + 1, peers[1], DKV_RPC_DIGEST);
        absent(fx, base + 1);
        assert_int_equal(o->calls, 1);
        fx->clock_ns += 500u * 1000000u;
        absent(fx, base);
    }
    /* Counted, five late replies of 105 would make the p99 half a second. */
    assert_int_equal(dkv_coord_retry_delay_us(fx->coord, peers[0]), 1535);
}

static void test_spec_not_ready_local_replica_reads_a_peer_and_is_refilled(void **state)
{
    fx_t *fx = *state;
    fx_opts_t opts = SPEC3;
    opts.local_not_ready = true;
    fx_start(fx, &opts);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-nr", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    outcome_t *o = get(fx, key, 2, 3);
    assert_int_equal(sent(fx), 2);
    expect_call(fx, 0, peers[0], DKV_RPC_GET);
    expect_call(fx, 1, peers[1], DKV_RPC_DIGEST);
    found(fx, 0, 10, "v", 3);
    found(fx, 1, 10, "v", 3);
    assert_int_equal(o->calls, 1);
    assert_value(o->rec.value, "v");
    local_version_t lv;
    assert_int_equal(get_local(fx, key, &lv), 0); /* read repair refilled it */
    assert_int_equal(lv.rec.ts, 10);
}

static void test_spec_writes_still_go_to_every_replica(void **state)
{
    fx_t *fx = *state;
    fx_start(fx, &SPEC3);
    char key[KEY_BYTES];
    uint32_t reps[3];
    uint32_t peers[2];
    pick_key(fx, "sp-put", 3, 0, key, reps);
    peers_of(fx, reps, 3, peers);
    outcome_t *o = put(fx, key, "v", 2, 3);
    assert_int_equal(dkv_fake_transport_count_of(fx->ft, 0, peers[0], DKV_RPC_PUT), 1);
    assert_int_equal(dkv_fake_transport_count_of(fx->ft, 0, peers[1], DKV_RPC_PUT), 1);
    assert_int_equal(o->calls, 0); /* this node stored it; ack=2 needs a peer too */
    answer_rest(fx, 0);
    assert_int_equal(o->calls, 1);
    assert_int_equal(o->rc, 0);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fake_transport_enforces_exactly_once),
        T(test_put_answers_at_exactly_ack_successes_not_before),
        T(test_get_answers_at_exactly_ack_successes_not_before),
        T(test_put_fails_with_equorum_once_failures_exceed_from_minus_ack),
        T(test_get_fails_with_equorum_once_failures_exceed_from_minus_ack),
        T(test_refused_at_submit_counts_as_failure_at_once),
        T(test_local_replica_counts_toward_ack),
        T(test_invalid_arguments_fail_at_once_and_never_call_back),
        T(test_get_returns_last_write_by_lww_order),
        T(test_not_ready_replica_does_not_satisfy_ack),
        T(test_local_version_takes_part_in_lww),
        T(test_late_replies_are_consumed_and_client_value_stays_valid),
        T(test_late_replies_with_read_repair_keep_client_value_valid),
        T(test_late_reply_after_local_answer_keeps_client_value_valid),
        T(test_late_reply_after_local_answer_with_read_repair_keeps_client_value_valid),
        T(test_late_put_replies_keep_the_operation_in_flight),
        T(test_read_repair_writes_newest_to_stale_replicas_after_the_last_reply),
        T(test_read_repair_waits_for_a_timed_out_replica_and_skips_it),
        T(test_read_repair_uses_a_newer_version_that_arrived_after_the_answer),
        T(test_read_repair_sends_nothing_when_replicas_agree),
        T(test_read_repair_tells_equal_timestamps_apart_by_value),
        T(test_read_repair_finds_stale_replicas_in_every_answer_order),
        T(test_read_repair_spreads_a_tombstone),
        T(test_read_repair_refills_a_not_ready_replica),
        T(test_read_repair_stays_inside_the_records_replica_set),
        T(test_read_repair_of_unknown_set_record_only_refreshes_older_versions),
        T(test_read_repair_of_local_replica_goes_through_the_store),
        T(test_read_repair_refills_a_not_ready_local_replica_through_the_store),
        T(test_read_repair_off_sends_nothing),
        T(test_read_repair_refused_at_submit_counts_a_failure),
        T(test_failed_replica_write_after_the_answer_leaves_one_hint_for_that_peer),
        T(test_each_failure_kind_leaves_exactly_one_hint),
        T(test_refused_replica_write_leaves_a_hint_at_submit),
        T(test_failed_write_before_equorum_leaves_a_hint),
        T(test_failed_delete_leaves_a_tombstone_hint),
        T(test_successful_writes_leave_no_hints),
        T(test_einval_from_a_replica_leaves_no_hint),
        T(test_failed_get_leaves_no_hint),
        T(test_without_hints_failed_writes_leave_nothing),
        T(test_hint_over_quota_is_counted_as_not_stored),
        T(test_put_sends_one_timestamp_and_the_requests_from_to_every_replica),
        T(test_put_after_a_get_is_stamped_after_the_versions_it_saw),
        T(test_spec_get_reads_this_node_and_asks_one_peer_for_a_digest),
        T(test_spec_get_without_this_node_reads_the_first_replica_and_digests_the_next),
        T(test_spec_newer_digest_reads_that_replicas_data_before_answering),
        T(test_spec_older_or_absent_digest_answers_at_once_and_is_repaired),
        T(test_spec_equal_timestamps_with_different_values_are_read_and_ordered),
        T(test_spec_stale_data_replica_waits_for_the_newer_digests_data),
        T(test_spec_slow_replica_gets_the_next_one_asked_after_the_retry_delay),
        T(test_spec_failure_asks_the_next_replica_at_once),
        T(test_spec_never_asks_a_node_outside_the_replica_set),
        T(test_spec_ack_equal_to_from_asks_every_replica_at_once),
        T(test_spec_late_newer_digest_is_read_and_repaired_after_the_answer),
        T(test_spec_silent_peer_is_asked_last_until_it_answers),
        T(test_spec_requests_asked_late_get_what_is_left_of_the_timeout),
        T(test_spec_retry_delay_is_the_peers_observed_p99),
        T(test_spec_fixed_retry_delay_and_caps),
        T(test_spec_latency_of_a_silent_peer_does_not_raise_its_delay),
        T(test_spec_not_ready_local_replica_reads_a_peer_and_is_refilled),
        T(test_spec_writes_still_go_to_every_replica),
        cmocka_unit_test_setup_teardown(test_local_write_failed_by_another_sync_does_not_count,
                                        fx_setup, fx_teardown_batched),
        cmocka_unit_test_setup_teardown(test_local_write_still_counts_once_synced, fx_setup,
                                        fx_teardown_batched),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
