/*
 * Coordinator. DESIGN: an operation is reference-counted by its outstanding replica requests plus
 * the starter; only the first outcome (ack successes, or failures > from - ack) answers, and the
 * operation lives on until every replica answered or timed out, keeping each replica's outcome
 * and version (a slot per replica, in preference-list order). That is what read repair needs
 * (the late answers tell which replicas are stale) and what hinted handoff needs (a failure after
 * the answer still leaves a hint). Requests to peers go out first, then the local replica is used
 * inline, so the network round trips overlap the local operation.
 */
#include "coord/coord.h"

#include "common/err.h"
#include "common/log.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

struct dkv_coord {
    dkv_coord_env_t env;
    size_t inflight;
};

/* SLOT_NOT_READY: the replica is rebuilding (cluster/identity.h): a failure for the quorum, but
 * a replica that read repair may refill. */
enum slot_state { SLOT_PENDING, SLOT_VERSION, SLOT_ABSENT, SLOT_FAILED, SLOT_NOT_READY };

/* One replica of an operation: its outcome, and for a GET the version it returned. */
typedef struct slot {
    struct op *op;
    uint32_t node;
    uint8_t state; /* enum slot_state */
    bool tombstone;
    uint64_t ts;
    uint64_t value_hash; /* xxh3 of the value: tells equal versions apart on equal timestamps */
} slot_t;

typedef struct op {
    dkv_coord_t *c;
    unsigned refs;
    unsigned ack;
    unsigned from;
    unsigned ok;
    unsigned failed;
    bool answered;
    bool is_get;
    bool local_full; /* PUT: the local replica refused the write for lack of space */
    dkv_coord_cb cb;
    void *arg;
    bool have_best;      /* GET: a replica returned a version */
    dkv_record_t best;   /* GET: newest version so far; borrows from best_buf. PUT: the record,
                            borrowing from the op's own copy of the value (for hints) */
    dkv_owned_t best_buf;
    uint64_t best_hash;  /* GET: xxh3 of best.value */
    dkv_slice_t key;     /* the op's own copy, after the slots */
    slot_t slots[];      /* `from` of them, then the key bytes, then (PUT with hints) the value */
} op_t;

static void free_plain(uint8_t *p)
{
    free(p);
}

int dkv_coord_new(const dkv_coord_env_t *env, dkv_coord_t **out)
{
    dkv_coord_t *c = dkv_xcalloc(1, sizeof(*c));
    c->env = *env;
    *out = c;
    return 0;
}

void dkv_coord_free(dkv_coord_t *c)
{
    free(c);
}

size_t dkv_coord_inflight(const dkv_coord_t *c)
{
    return c->inflight;
}

static void count(dkv_coord_t *c, _Atomic uint64_t *counter)
{
    (void)c;
    atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

/* Is the slot's version the same as the best one? */
static bool slot_is_best(const op_t *op, const slot_t *s)
{
    return s->state == SLOT_VERSION && s->ts == op->best.ts && s->tombstone == op->best.tombstone &&
           (s->tombstone || s->value_hash == op->best_hash);
}

/* Could read repair still have work once every replica answered? */
static bool may_repair(const op_t *op)
{
    if (!op->c->env.read_repair || op->c->env.send == NULL) {
        return false;
    }
    if (op->refs > 1) {
        return true; /* late answers are still to come */
    }
    for (unsigned i = 0; i < op->from; i++) {
        const slot_t *s = &op->slots[i];
        if ((s->state == SLOT_VERSION || s->state == SLOT_ABSENT || s->state == SLOT_NOT_READY) &&
            !slot_is_best(op, s)) {
            return true;
        }
    }
    return false;
}

static void op_answer(op_t *op, int rc)
{
    op->answered = true;
    dkv_coord_result_t res = {.rc = rc};
    if (rc == 0 && op->is_get) {
        res.record = op->best;
        if (may_repair(op)) {
            /* The client writes the value out while read repair may still need it. */
            dkv_owned_share(&op->best_buf, &res.buf);
        } else {
            res.buf = op->best_buf;
            memset(&op->best_buf, 0, sizeof(op->best_buf));
            op->have_best = false; /* op->best pointed into the buffer the callback now owns */
        }
    }
    op->cb(op->arg, &res);
    dkv_owned_release(&res.buf);
}

static void op_decide(op_t *op)
{
    if (op->answered) {
        return;
    }
    if (op->ok >= op->ack) {
        int rc = 0;
        if (op->is_get && (!op->have_best || op->best.tombstone)) {
            rc = DKV_ENOTFOUND;
        }
        op_answer(op, rc);
    } else if (op->failed > op->from - op->ack) {
        /* Storage full here is this node's own state, worth telling apart from replicas that
         * did not answer: the client gets 507 rather than 504. */
        op_answer(op, op->local_full ? DKV_ENOSPACE : DKV_EQUORUM);
    }
}

static void repair_cb(void *arg, int rc, const dkv_record_t *rec)
{
    (void)rec;
    dkv_coord_t *c = arg;
    c->inflight--;
    if (rc != 0 && c->env.stats != NULL) {
        count(c, &c->env.stats->read_repair_failures);
    }
}

/*
 * Read repair, once every replica answered or timed out: the newest version goes to each replica
 * that answered with something else, within the record's replica set (see coord.h).
 */
static void read_repair(op_t *op)
{
    dkv_coord_t *c = op->c;
    if (!op->have_best || !may_repair(op)) {
        return;
    }
    bool diverged = false;
    for (unsigned i = 0; i < op->from; i++) {
        slot_t *s = &op->slots[i];
        if (s->state == SLOT_PENDING || s->state == SLOT_FAILED || slot_is_best(op, s)) {
            continue;
        }
        diverged = diverged || s->state != SLOT_NOT_READY;
        bool in_set = op->best.from != 0 ? i < op->best.from : s->state == SLOT_VERSION;
        if (!in_set) {
            continue;
        }
        if (c->env.stats != NULL) {
            count(c, &c->env.stats->read_repair_writes);
        }
        int rc;
        if (s->node == c->env.self_idx) {
            rc = dkv_replica_put(c->env.replica, op->key, &op->best);
        } else {
            dkv_rpc_call_t call = {.type = DKV_RPC_PUT, .key = op->key, .rec = &op->best};
            rc = c->env.send(c->env.send_ctx, s->node, &call, repair_cb, c);
            if (rc == 0) {
                c->inflight++; /* a repair write in flight holds the coordinator too */
                continue;
            }
        }
        if (rc != 0 && c->env.stats != NULL) {
            count(c, &c->env.stats->read_repair_failures);
        }
    }
    if (diverged && c->env.stats != NULL) {
        count(c, &c->env.stats->read_repair_reads);
    }
}

static void op_unref(op_t *op)
{
    if (--op->refs > 0) {
        return;
    }
    if (op->is_get) {
        read_repair(op);
    }
    dkv_owned_release(&op->best_buf);
    op->c->inflight--;
    free(op);
}

/* Offers a replica's version to a GET: keeps it if it is newer than the best so far. Takes
 * ownership of `buf` when it is kept; otherwise releases it. */
static void op_offer(op_t *op, const dkv_record_t *rec, dkv_owned_t *buf, uint64_t hash)
{
    if (op->have_best && dkv_record_cmp(rec, &op->best) <= 0) {
        dkv_owned_release(buf);
        return;
    }
    dkv_owned_release(&op->best_buf);
    op->best_buf = *buf;
    op->best = *rec;
    op->best_hash = hash;
    op->have_best = true;
    memset(buf, 0, sizeof(*buf));
}

/* Records a GET replica's version in its slot. The value's hash only serves read repair (to
 * tell equal versions apart): without it, no hashing on the read path. */
static void slot_version(slot_t *s, const dkv_record_t *rec)
{
    s->state = SLOT_VERSION;
    s->ts = rec->ts;
    s->tombstone = rec->tombstone;
    s->value_hash = rec->tombstone || !s->op->c->env.read_repair
                        ? 0
                        : XXH3_64bits(rec->value.ptr, rec->value.len);
}

/* A failed replica write leaves a hint for that replica (hinted handoff). */
static void hint(op_t *op, const slot_t *s, int rc)
{
    dkv_coord_t *c = op->c;
    if (op->is_get || c->env.hints == NULL || s->node == c->env.self_idx || rc == DKV_EINVAL) {
        return;
    }
    if (dkv_hints_add(c->env.hints, s->node, op->key, &op->best) != 0 && c->env.stats != NULL) {
        count(c, &c->env.stats->hints_not_stored);
    }
}

/* One replica's outcome. rc 0 or DKV_ENOTFOUND (GET: absent) is a success. */
static void op_reply(op_t *op, slot_t *s, int rc)
{
    if (rc == 0 || (op->is_get && rc == DKV_ENOTFOUND)) {
        op->ok++;
        if (rc == DKV_ENOTFOUND) {
            s->state = SLOT_ABSENT;
        } else if (s->state == SLOT_PENDING) {
            s->state = SLOT_VERSION; /* a stored write (a GET's version is already recorded) */
        }
    } else {
        op->failed++;
        s->state = rc == DKV_ENOTREADY ? SLOT_NOT_READY : SLOT_FAILED;
        hint(op, s, rc);
    }
    op_decide(op);
}

static void remote_cb(void *arg, int rc, const dkv_record_t *rec)
{
    slot_t *s = arg;
    op_t *op = s->op;
    if (rc == 0 && rec != NULL && op->is_get) {
        dkv_hlc_observe(op->c->env.hlc, rec->ts);
        slot_version(s, rec);
        if (!op->have_best || dkv_record_cmp(rec, &op->best) > 0) {
            dkv_owned_t copy = {dkv_xmalloc(rec->value.len), rec->value.len, free_plain};
            if (rec->value.len > 0) {
                memcpy(copy.ptr, rec->value.ptr, rec->value.len);
            }
            dkv_record_t kept = *rec;
            kept.value = dkv_slice(copy.ptr, copy.len);
            op_offer(op, &kept, &copy, s->value_hash);
        }
    }
    op_reply(op, s, rc);
    op_unref(op);
}

static void local_get(op_t *op, slot_t *s)
{
    dkv_record_t rec;
    dkv_owned_t buf = {0};
    int rc = dkv_replica_get(op->c->env.replica, op->key, &rec, &buf);
    if (rc == 0) {
        slot_version(s, &rec);
        op_offer(op, &rec, &buf, s->value_hash);
    }
    op_reply(op, s, rc);
}

static int op_start(dkv_coord_t *c, dkv_slice_t key, bool is_get, const dkv_record_t *rec,
                    unsigned ack, unsigned from, dkv_coord_cb cb, void *arg)
{
    size_t n = dkv_ring_size(c->env.ring);
    if (key.len == 0 || from < 1 || from > n || ack < 1 || ack > from) {
        return DKV_EINVAL;
    }
    uint32_t replicas[DKV_RING_MAX_NODES];
    size_t got = dkv_ring_preference_list(c->env.ring, key, from, replicas);
    /* A PUT keeps its value only if a failure may need it for a hint after the answer. */
    bool keep_value = !is_get && c->env.hints != NULL && c->env.send != NULL;
    size_t value_len = keep_value ? rec->value.len : 0;
    op_t *op = dkv_xcalloc(1, sizeof(*op) + got * sizeof(slot_t) + key.len + value_len);
    uint8_t *tail = (uint8_t *)&op->slots[got];
    memcpy(tail, key.ptr, key.len);
    op->key = dkv_slice(tail, key.len);
    if (!is_get) {
        op->best = *rec;
        if (value_len > 0) {
            memcpy(tail + key.len, rec->value.ptr, value_len);
            op->best.value = dkv_slice(tail + key.len, value_len);
        } else if (!keep_value) {
            op->best.value = dkv_slice(NULL, 0); /* borrowed from the caller: never used later */
        }
    }
    op->c = c;
    op->refs = 1;
    op->ack = ack;
    op->from = (unsigned)got;
    op->is_get = is_get;
    op->cb = cb;
    op->arg = arg;
    c->inflight++;

    slot_t *local = NULL;
    for (size_t i = 0; i < got; i++) {
        slot_t *s = &op->slots[i];
        s->op = op;
        s->node = replicas[i];
        if (replicas[i] == c->env.self_idx) {
            local = s;
            continue;
        }
        int rc = DKV_EUNAVAIL;
        if (c->env.send != NULL) {
            dkv_rpc_call_t call = {.type = is_get ? DKV_RPC_GET : DKV_RPC_PUT, .key = key,
                                   .rec = rec};
            op->refs++;
            rc = c->env.send(c->env.send_ctx, replicas[i], &call, remote_cb, s);
            if (rc != 0) {
                op->refs--;
            }
        }
        if (rc != 0) {
            op_reply(op, s, rc);
        }
    }
    if (local != NULL) {
        if (is_get) {
            local_get(op, local);
        } else {
            int rc = dkv_replica_put(c->env.replica, key, rec);
            op->local_full = rc == DKV_ENOSPACE;
            op_reply(op, local, rc);
        }
    }
    op_unref(op);
    return 0;
}

int dkv_coord_get(dkv_coord_t *c, dkv_slice_t key, unsigned ack, unsigned from, dkv_coord_cb cb,
                  void *arg)
{
    return op_start(c, key, true, NULL, ack, from, cb, arg);
}

int dkv_coord_put(dkv_coord_t *c, dkv_slice_t key, bool tombstone, dkv_slice_t value, unsigned ack,
                  unsigned from, dkv_coord_cb cb, void *arg)
{
    if (tombstone && value.len > 0) {
        return DKV_EINVAL;
    }
    uint64_t ts = 0;
    int rc = dkv_hlc_next(c->env.hlc, &ts);
    if (rc != 0) {
        return rc; /* the clock's bound could not be persisted: no timestamp may be used */
    }
    dkv_record_t rec = {.ts = ts, .tombstone = tombstone, .value = value, .from = (uint8_t)from};
    return op_start(c, key, false, &rec, ack, from, cb, arg);
}
