/*
 * Coordinator. DESIGN: an operation is reference-counted by its outstanding replica requests plus
 * the starter; only the first outcome (ack successes, or failures > from - ack) answers, and the
 * operation lives on until every replica answered or timed out, keeping each replica's outcome
 * and version (a slot per replica, in preference-list order). That is what read repair needs
 * (the late answers tell which replicas are stale) and what hinted handoff needs (a failure after
 * the answer still leaves a hint). Requests to peers go out first, then the local replica is used
 * inline, so the network round trips overlap the local operation.
 *
 * Speculative GETs (DKV_COORD_READ_SPECULATIVE) keep the same slots but ask replicas one decision
 * at a time: spec_pump() looks at the slots after every event (a reply, a failure, the retry
 * timer) and either answers, reads the data of a replica whose digest is newer, or asks the next
 * replica so that `ack` successes stay possible without waiting on a slow one. A slot's request
 * has a retry deadline (its peer's delay, dkv_coord_retry_delay_us); one timer per coordinator
 * fires at the earliest deadline of the operations on its list. The delay is the p99 of a small
 * log-linear histogram of the peer's reply latencies (8 sub-buckets per power of two of µs, so
 * within 12.5%), halved every 4096 samples to follow change, as Cassandra's speculative_retry =
 * 99p reads its table's latency percentile. A peer is *silent* while requests to it are
 * outstanding and it has sent nothing at all for twice its delay (at least
 * DKV_COORD_SILENCE_MIN_MS): a stopped or frozen process rather than a slow one, whose replies
 * would otherwise keep flowing. The latencies of the requests that a silence held up are left
 * out, or every stall would raise the delay to the stall's length; and a silent peer is asked
 * last by new GETs (a small form of Cassandra's dynamic snitch), so they do not each wait a delay
 * for it, until it answers again or its requests time out.
 */
#include "coord/coord.h"

#include "common/err.h"
#include "common/log.h"
#include "store/store.h"

#include <stdlib.h>
#include <string.h>

/* Per-peer latency histogram: values below 8 µs exactly, then 8 sub-buckets per power of two up
 * to 2^(HIST_MAX_EXP+1) µs (~8 s); anything longer counts in the last bucket. */
#define HIST_SUB_BITS 3u
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_MAX_EXP 22u
#define HIST_BUCKETS (HIST_SUB + (HIST_MAX_EXP - HIST_SUB_BITS + 1u) * HIST_SUB)
/* Halve every bucket once this many samples are held: recent latency weighs most. */
#define HIST_DECAY_TOTAL 4096u
/* Recompute the cached p99 every this many samples (a scan of HIST_BUCKETS counters). */
#define HIST_UPDATE_EVERY 32u
/* Retry delays never pass this, whatever a peer's p99 (and never the replica timeout). */
#define RETRY_MAX_MS 60000u
/* Operations taken from the timer's list per scan. */
#define TIMER_BATCH 32u

/* What a speculative GET knows of one peer, on this loop. */
typedef struct peer_est {
    uint32_t hist[HIST_BUCKETS];
    uint32_t total;
    uint32_t since_update;
    uint32_t p99_us;           /* cached: the upper bound of the p99's bucket */
    uint32_t epoch;            /* bumped whenever a silence of the peer ends */
    uint32_t inflight;         /* this coordinator's speculative-GET requests to it, unanswered */
    uint64_t last_reply_ns;    /* the last reply it sent (any status) */
    uint64_t busy_since_ns;    /* when `inflight` last went from 0 to 1 */
} peer_est_t;

struct dkv_coord {
    dkv_coord_env_t env;
    size_t inflight;
    /* Speculative reads (spec != false) only. */
    bool spec;
    peer_est_t *est;  /* per ring index */
    uv_timer_t timer; /* retry deadlines; closed by dkv_coord_free() */
    bool timer_armed;
    uint64_t timer_due_ns; /* clock ns the timer fires at, when armed */
    struct op *spec_head;  /* operations with a pending retry deadline */
};

/* SLOT_NOT_READY: the replica is rebuilding (cluster/identity.h): a failure for the quorum, but
 * a replica that read repair may refill. */
enum slot_state { SLOT_PENDING, SLOT_VERSION, SLOT_ABSENT, SLOT_FAILED, SLOT_NOT_READY };

/* What a speculative GET asked a replica for. */
enum ask { ASK_NONE, ASK_DATA, ASK_DIGEST };

/* One replica of an operation: its outcome, and for a GET the version it returned. */
typedef struct slot {
    struct op *op;
    uint32_t node;
    uint8_t state; /* enum slot_state */
    bool tombstone;
    uint64_t ts;
    uint64_t value_hash; /* speculative GETs: dkv_rpc_value_hash() of the value (digests carry
                            only the hash): tells equal versions apart on equal timestamps */
    uint32_t same_as;    /* other GETs: op->best_gen when its version was found byte-equal to
                            the best (0: never) */
    /* Speculative GETs only. */
    uint8_t ask;    /* enum ask of its last request; ASK_NONE: not asked (yet) */
    bool inflight;  /* that request is unanswered */
    bool fetch;     /* it reads the data after the replica's digest: no new success */
    bool overdue;   /* it passed its retry deadline (another replica may stand in) */
    bool counted;   /* the replica's success is in op->ok */
    bool by_digest; /* its version is known from a digest only */
    bool sample;    /* its latency may feed the peer's estimate */
    uint32_t epoch; /* the peer's silence epoch when it was sent */
    uint64_t sent_ns;
    uint64_t deadline_ns; /* clock ns; 0 = none (a fetch) */
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
    uint64_t local_token; /* PUT: the local write's store token while it counts in `ok`; 0: none */
    slot_t *local;        /* PUT: the local replica's slot (with local_token) */
    bool spec;       /* a speculative GET */
    bool have_data;  /* spec: a replica answered with its data (a version or "absent") */
    unsigned asked;  /* spec: replicas asked, fetches aside */
    uint64_t start_ms;                /* spec: clock ms at the start (the timeout budget) */
    struct op *spec_prev, *spec_next; /* spec: on c->spec_head while a deadline is pending */
    bool spec_linked;
    uint64_t spec_due_ns; /* spec: the earliest pending deadline */
    dkv_coord_cb cb;
    void *arg;
    bool have_best;      /* GET: a replica returned a version */
    dkv_record_t best;   /* GET: newest version so far; borrows from best_buf. PUT: the record,
                            borrowing from the op's own copy of the value (for hints) */
    dkv_owned_t best_buf;
    uint64_t best_hash;  /* speculative GET: xxh3 of best.value */
    uint32_t best_gen;   /* GET: bumped each time `best` is replaced */
    slot_t *best_slot;   /* GET: the slot whose version is `best` (NULL: none yet) */
    dkv_slice_t key;     /* the op's own copy, after the slots */
    slot_t slots[];      /* `from` of them, then the key bytes, then (PUT with hints) the value */
} op_t;

static void free_plain(uint8_t *p)
{
    free(p);
}

static void on_spec_timer(uv_timer_t *t);

int dkv_coord_new(const dkv_coord_env_t *env, dkv_coord_t **out)
{
    dkv_coord_t *c = dkv_xcalloc(1, sizeof(*c));
    c->env = *env;
    c->spec = env->read_fanout == DKV_COORD_READ_SPECULATIVE && env->send != NULL;
    if (c->spec) {
        c->est = dkv_xcalloc(dkv_ring_size(env->ring), sizeof(*c->est));
        uv_timer_init(env->loop, &c->timer);
        c->timer.data = c;
        uv_unref((uv_handle_t *)&c->timer);
    }
    *out = c;
    return 0;
}

static void free_closed(uv_handle_t *h)
{
    dkv_coord_t *c = h->data;
    free(c->est);
    free(c);
}

void dkv_coord_free(dkv_coord_t *c)
{
    if (c == NULL) {
        return;
    }
    if (c->spec) {
        uv_close((uv_handle_t *)&c->timer, free_closed);
        return;
    }
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

/* Is the slot's version the same as the best one? (The value compared by slot_version().) */
static bool slot_is_best(const op_t *op, const slot_t *s)
{
    if (s->state != SLOT_VERSION || s->ts != op->best.ts || s->tombstone != op->best.tombstone) {
        return false;
    }
    if (s->tombstone || s == op->best_slot) {
        return true;
    }
    return op->spec ? s->value_hash == op->best_hash : s->same_as == op->best_gen;
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
    dkv_coord_result_t res = {.rc = rc, .local_token = op->is_get ? 0 : op->local_token};
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

/*
 * A PUT's local write counts as a success from the moment the store accepted it, but it is only
 * decided by a WAL sync of this thread, which may have run, and failed, for another connection
 * since (the failure is returned to that sync only: store/store.h). Before the success answers,
 * a local write that failed meanwhile becomes a failed replica: the peers may still make the
 * quorum, or the answer is 507 (no space) or 504. A write still pending is decided by the sync
 * of the flush that carries this answer, which checks it by its token (res.local_token).
 */
static void local_recheck(op_t *op)
{
    int rc = dkv_store_write_outcome(op->local_token);
    if (rc >= 0) {
        return; /* durable, or pending: the answer's own flush decides it */
    }
    op->local_token = 0;
    op->ok--;
    op->failed++;
    op->local->state = SLOT_FAILED;
    op->local_full = rc == DKV_ENOSPACE;
}

static void op_decide(op_t *op)
{
    if (op->answered) {
        return;
    }
    if (op->local_token != 0) {
        local_recheck(op);
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

static void spec_unlink(op_t *op);

static void op_unref(op_t *op)
{
    if (--op->refs > 0) {
        return;
    }
    if (op->spec) {
        spec_unlink(op);
    }
    if (op->is_get) {
        read_repair(op);
    }
    dkv_owned_release(&op->best_buf);
    op->c->inflight--;
    free(op);
}

/* Offers slot `s`'s version to a GET: keeps it if it is newer than the best so far. Takes
 * ownership of `buf` when it is kept; otherwise releases it. */
static void op_offer(op_t *op, slot_t *s, const dkv_record_t *rec, dkv_owned_t *buf)
{
    if (op->have_best && dkv_record_cmp(rec, &op->best) <= 0) {
        dkv_owned_release(buf);
        return;
    }
    dkv_owned_release(&op->best_buf);
    op->best_buf = *buf;
    op->best = *rec;
    op->best_hash = s->value_hash;
    op->best_gen++;
    op->best_slot = s;
    op->have_best = true;
    memset(buf, 0, sizeof(*buf));
}

/* Records a GET replica's version in its slot, before op_offer() offers it. Read repair must
 * tell a replica's version from the best one on equal timestamps by value (LWW ties,
 * common/record.h). A speculative GET hashes each version it reads, as its digests carry only
 * a hash. Any other GET holds both values at this point: a version with the best's timestamp is
 * compared with it byte by byte (a memcmp of 1 KiB: ~0.1k instructions against ~1.2k for its
 * XXH3, three of them per 3-node GET) and marked with the best's generation. A version that
 * replaces the best later bumps the generation, and a version that was equal to the replaced
 * one is older than the new best, so the mark is all slot_is_best() needs. Nothing is compared
 * for a tombstone, with one replica (from=1), or when read repair is off. */
static void slot_version(slot_t *s, const dkv_record_t *rec)
{
    op_t *op = s->op;
    s->state = SLOT_VERSION;
    s->ts = rec->ts;
    s->tombstone = rec->tombstone;
    s->same_as = 0;
    if (rec->tombstone || op->from == 1 || (!op->c->env.read_repair && !op->spec)) {
        return;
    }
    if (op->spec) {
        s->value_hash = dkv_rpc_value_hash(rec->value);
    } else if (op->have_best && rec->ts == op->best.ts && !op->best.tombstone &&
               dkv_slice_cmp(rec->value, op->best.value) == 0) {
        s->same_as = op->best_gen;
    }
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

/* A peer's GET answer: observes its timestamp, records its version in the slot, and offers a
 * copy of it (the reply's buffer is the RPC client's) when it is newer than the best so far. */
static void remote_version(op_t *op, slot_t *s, const dkv_record_t *rec)
{
    dkv_hlc_observe(op->c->env.hlc, rec->ts);
    slot_version(s, rec);
    if (!op->have_best || dkv_record_cmp(rec, &op->best) > 0) {
        dkv_owned_t copy = {dkv_xmalloc(rec->value.len), rec->value.len, free_plain};
        if (rec->value.len > 0) {
            memcpy(copy.ptr, rec->value.ptr, rec->value.len);
        }
        dkv_record_t kept = *rec;
        kept.value = dkv_slice(copy.ptr, copy.len);
        op_offer(op, s, &kept, &copy);
    }
}

static void remote_cb(void *arg, int rc, const dkv_record_t *rec)
{
    slot_t *s = arg;
    op_t *op = s->op;
    if (rc == 0 && rec != NULL && op->is_get) {
        remote_version(op, s, rec);
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
        op_offer(op, s, &rec, &buf);
    }
    op_reply(op, s, rc);
}

/* ---- speculative GETs ---- */

static uint64_t clock_ns(const dkv_coord_t *c)
{
    return c->env.clock_ns != NULL ? c->env.clock_ns(c->env.clock_ctx) : uv_hrtime();
}

static uint64_t clock_ms(const dkv_coord_t *c)
{
    return clock_ns(c) / 1000000u;
}

static unsigned hist_index(uint64_t us)
{
    if (us < HIST_SUB) {
        return (unsigned)us;
    }
    unsigned e = 63u - (unsigned)__builtin_clzll(us); /* >= HIST_SUB_BITS */
    if (e > HIST_MAX_EXP) {
        return HIST_BUCKETS - 1;
    }
    unsigned m = (unsigned)(us >> (e - HIST_SUB_BITS)) & (HIST_SUB - 1);
    return HIST_SUB + (e - HIST_SUB_BITS) * HIST_SUB + m;
}

/* The largest latency (µs) that falls in bucket `i`. */
static uint64_t hist_upper_us(unsigned i)
{
    if (i < HIST_SUB) {
        return i;
    }
    unsigned e = (i - HIST_SUB) / HIST_SUB + HIST_SUB_BITS;
    unsigned m = (i - HIST_SUB) % HIST_SUB;
    uint64_t width = (uint64_t)1 << (e - HIST_SUB_BITS);
    return (HIST_SUB + m) * width + width - 1;
}

static void est_update(peer_est_t *e)
{
    uint64_t need = e->total - e->total / 100u; /* ceil(0.99 total), give or take one */
    uint64_t seen = 0;
    unsigned i = 0;
    for (; i < HIST_BUCKETS - 1; i++) {
        seen += e->hist[i];
        if (seen >= need) {
            break;
        }
    }
    uint64_t us = hist_upper_us(i);
    e->p99_us = (uint32_t)(us > RETRY_MAX_MS * 1000u ? RETRY_MAX_MS * 1000u : us);
    e->since_update = 0;
}

static void est_add(peer_est_t *e, uint64_t us)
{
    e->hist[hist_index(us)]++;
    e->total++;
    if (e->total >= HIST_DECAY_TOTAL) {
        e->total = 0;
        for (unsigned i = 0; i < HIST_BUCKETS; i++) {
            e->hist[i] /= 2;
            e->total += e->hist[i];
        }
    }
    /* Only a sample above the p99 can raise it: recompute at once then, so a peer that turns slow
     * is seen at its first slow replies; a falling p99 may lag by HIST_UPDATE_EVERY samples. */
    if (++e->since_update >= HIST_UPDATE_EVERY || e->total < DKV_COORD_RETRY_MIN_SAMPLES * 2 ||
        us >= e->p99_us) {
        est_update(e);
    }
}

uint64_t dkv_coord_retry_delay_us(const dkv_coord_t *c, uint32_t peer)
{
    uint64_t d = c->env.speculative_retry_ms * 1000u;
    if (d == 0) {
        const peer_est_t *e =
            c->est != NULL && peer < dkv_ring_size(c->env.ring) ? &c->est[peer] : NULL;
        d = e != NULL && e->total >= DKV_COORD_RETRY_MIN_SAMPLES
                ? e->p99_us
                : (uint64_t)DKV_COORD_RETRY_WARMUP_MS * 1000u;
    }
    uint64_t cap = c->env.replica_timeout_ms > 0 && c->env.replica_timeout_ms < RETRY_MAX_MS
                       ? c->env.replica_timeout_ms
                       : RETRY_MAX_MS;
    cap *= 1000u;
    return d < 1 ? 1 : (d > cap ? cap : d);
}

/* Has the peer sent nothing at all for twice its retry delay (at least
 * DKV_COORD_SILENCE_MIN_MS) while requests to it were outstanding? */
static bool silent(const dkv_coord_t *c, uint32_t node, uint64_t now_ns)
{
    const peer_est_t *e = &c->est[node];
    if (e->inflight == 0) {
        return false;
    }
    uint64_t quiet_since =
        e->last_reply_ns > e->busy_since_ns ? e->last_reply_ns : e->busy_since_ns;
    uint64_t silence_us = 2 * dkv_coord_retry_delay_us(c, node);
    if (silence_us < DKV_COORD_SILENCE_MIN_MS * 1000u) {
        silence_us = DKV_COORD_SILENCE_MIN_MS * 1000u;
    }
    return now_ns > quiet_since && now_ns - quiet_since >= silence_us * 1000u;
}

/* A request to `s`'s peer ended (a reply, or a failure): what it tells about the peer. */
static void peer_observed(dkv_coord_t *c, const slot_t *s, int rc)
{
    peer_est_t *e = &c->est[s->node];
    uint64_t now = clock_ns(c);
    if (rc == 0 || rc == DKV_ENOTFOUND || rc == DKV_ENOTREADY || rc == DKV_EIO) {
        if (silent(c, s->node, now)) {
            e->epoch++; /* this reply ends a silence: what it held up is not a latency */
        }
        e->last_reply_ns = now;
        if ((rc == 0 || rc == DKV_ENOTFOUND) && s->sample && s->epoch == e->epoch &&
            now >= s->sent_ns) {
            est_add(e, (now - s->sent_ns) / 1000u);
        }
    } /* else nothing came from the peer: refused, timed out, malformed */
    e->inflight--;
}

static void spec_success(op_t *op, slot_t *s)
{
    if (!s->counted) {
        s->counted = true;
        op->ok++;
    }
}

/* The replica failed, or its data could not be read after its digest: it no longer counts. */
static void spec_fail(op_t *op, slot_t *s, int rc)
{
    s->state = rc == DKV_ENOTREADY ? SLOT_NOT_READY : SLOT_FAILED;
    s->by_digest = false;
    if (s->counted) {
        s->counted = false;
        op->ok--;
    }
    op->failed++;
}

/* Is the data in hand at least as new as this slot's version? A digest of a value with the same
 * timestamp but another hash cannot be ordered (API.md §6 compares the values): not covered. */
static bool spec_covered(const op_t *op, const slot_t *s)
{
    if (s->state != SLOT_VERSION || !s->by_digest) {
        return true;
    }
    if (!op->have_best) {
        return false;
    }
    if (s->ts != op->best.ts) {
        return s->ts < op->best.ts;
    }
    if (s->tombstone != op->best.tombstone) {
        return op->best.tombstone;
    }
    return s->tombstone || s->value_hash == op->best_hash;
}

/* The uncovered slot with the newest digest (then the first in preference order), or NULL. */
static slot_t *spec_uncovered(op_t *op)
{
    slot_t *pick = NULL;
    for (unsigned i = 0; i < op->from; i++) {
        slot_t *s = &op->slots[i];
        if (spec_covered(op, s)) {
            continue;
        }
        if (pick == NULL || s->ts > pick->ts ||
            (s->ts == pick->ts && s->tombstone && !pick->tombstone)) {
            pick = s;
        }
    }
    return pick;
}

/* The next replica to ask: this node, then peers in preference order, peers found silent last. */
static slot_t *spec_next(op_t *op)
{
    dkv_coord_t *c = op->c;
    uint64_t now = clock_ns(c);
    slot_t *pick = NULL;
    int pick_rank = 3;
    for (unsigned i = 0; i < op->from && pick_rank > 0; i++) {
        slot_t *s = &op->slots[i];
        if (s->ask != ASK_NONE) {
            continue;
        }
        int rank = s->node == c->env.self_idx ? 0 : (silent(c, s->node, now) ? 2 : 1);
        if (rank < pick_rank) {
            pick = s;
            pick_rank = rank;
        }
    }
    return pick;
}

static void spec_data_cb(void *arg, int rc, const dkv_record_t *rec);
static void spec_digest_cb(void *arg, int rc, const dkv_rpc_digest_t *d);

/* The local replica: read inline, always for the data (as cheap as its digest). */
static void spec_local(op_t *op, slot_t *s)
{
    s->ask = ASK_DATA;
    op->asked++;
    dkv_record_t rec;
    dkv_owned_t buf = {0};
    int rc = dkv_replica_get(op->c->env.replica, op->key, &rec, &buf);
    if (rc == 0) {
        slot_version(s, &rec);
        op_offer(op, s, &rec, &buf);
    } else if (rc == DKV_ENOTFOUND) {
        s->state = SLOT_ABSENT;
    } else {
        spec_fail(op, s, rc);
        return;
    }
    op->have_data = true;
    spec_success(op, s);
}

/*
 * Sends `s`'s peer a DATA or DIGEST request (`fetch`: the data after its digest). Failing at
 * once (breaker open, no budget left) fails the slot, as a failed reply would.
 */
static void spec_remote(op_t *op, slot_t *s, uint8_t kind, bool fetch)
{
    dkv_coord_t *c = op->c;
    uint64_t now = clock_ms(c);
    if (fetch) {
        if (c->env.stats != NULL) {
            count(c, &c->env.stats->digest_fetches);
        }
    } else {
        if (op->asked >= op->ack && c->env.stats != NULL) {
            count(c, &c->env.stats->spec_retries);
        }
        op->asked++;
    }
    s->ask = kind;
    s->fetch = fetch;
    s->overdue = false;
    uint64_t timeout_ms = 0; /* the transport's own */
    if (c->env.replica_timeout_ms > 0) {
        uint64_t used = now > op->start_ms ? now - op->start_ms : 0;
        if (used >= c->env.replica_timeout_ms) {
            spec_fail(op, s, DKV_ETIMEDOUT);
            return;
        }
        timeout_ms = c->env.replica_timeout_ms - used;
    }
    peer_est_t *e = &c->est[s->node];
    s->sent_ns = clock_ns(c);
    s->epoch = e->epoch;
    s->sample = !silent(c, s->node, s->sent_ns);
    s->deadline_ns = fetch ? 0 : s->sent_ns + dkv_coord_retry_delay_us(c, s->node) * 1000u;
    dkv_rpc_call_t call = {.type = kind == ASK_DIGEST ? DKV_RPC_DIGEST : DKV_RPC_GET,
                           .key = op->key,
                           .timeout_ms = timeout_ms};
    dkv_rpc_reply_cb cb = NULL;
    if (kind == ASK_DIGEST) {
        call.digest_cb = spec_digest_cb;
    } else {
        cb = spec_data_cb;
    }
    op->refs++;
    s->inflight = true;
    int rc = c->env.send(c->env.send_ctx, s->node, &call, cb, s);
    if (rc != 0) {
        op->refs--;
        s->inflight = false;
        spec_fail(op, s, rc);
        return;
    }
    if (e->inflight++ == 0) {
        e->busy_since_ns = s->sent_ns;
    }
}

/* libuv timers count whole ms of loop time: round up, so the timer never fires before `due_ns`
 * (if it does, on_spec_timer() finds nothing due and arms it again). */
static void spec_arm(dkv_coord_t *c, uint64_t due_ns)
{
    uint64_t now = clock_ns(c);
    c->timer_armed = true;
    c->timer_due_ns = due_ns;
    uv_timer_start(&c->timer, on_spec_timer, due_ns > now ? (due_ns - now + 999999u) / 1000000u : 0,
                   0);
}

static void spec_unlink(op_t *op)
{
    if (!op->spec_linked) {
        return;
    }
    dkv_coord_t *c = op->c;
    if (op->spec_prev != NULL) {
        op->spec_prev->spec_next = op->spec_next;
    } else {
        c->spec_head = op->spec_next;
    }
    if (op->spec_next != NULL) {
        op->spec_next->spec_prev = op->spec_prev;
    }
    op->spec_prev = op->spec_next = NULL;
    op->spec_linked = false;
    if (c->spec_head == NULL && c->timer_armed) {
        /* Most operations finish before their deadline: no wake-up for nothing. */
        uv_timer_stop(&c->timer);
        c->timer_armed = false;
    }
}

/* Puts the operation on the timer's list at its earliest pending deadline, or takes it off. */
static void spec_schedule(op_t *op)
{
    dkv_coord_t *c = op->c;
    uint64_t due = 0;
    for (unsigned i = 0; i < op->from && !op->answered; i++) {
        const slot_t *s = &op->slots[i];
        if (s->inflight && !s->overdue && s->deadline_ns != 0 &&
            (due == 0 || s->deadline_ns < due)) {
            due = s->deadline_ns;
        }
    }
    if (due == 0) {
        spec_unlink(op);
        return;
    }
    op->spec_due_ns = due;
    if (!op->spec_linked) {
        op->spec_next = c->spec_head;
        op->spec_prev = NULL;
        if (c->spec_head != NULL) {
            c->spec_head->spec_prev = op;
        }
        c->spec_head = op;
        op->spec_linked = true;
    }
    if (!c->timer_armed || due < c->timer_due_ns) {
        spec_arm(c, due);
    }
}

/*
 * Moves the operation on: reads the data of the newest uncovered digest (also after the answer,
 * for read repair), answers once `ack` replicas succeeded and every digest is covered (or 504
 * once too many failed), and otherwise asks the next replica whenever the successes plus the
 * requests still within their deadline fall short of `ack`. Never called from inside itself:
 * everything it starts that finishes at once (the local read, a refused send) only updates slots.
 */
static void spec_pump(op_t *op)
{
    dkv_coord_t *c = op->c;
    for (;;) {
        bool fetching = false;
        unsigned live = 0;
        bool live_data = false;
        for (unsigned i = 0; i < op->from; i++) {
            const slot_t *s = &op->slots[i];
            fetching = fetching || (s->inflight && s->fetch);
            if (s->inflight && !s->fetch && !s->overdue) {
                live++;
                live_data = live_data || s->ask == ASK_DATA;
            }
        }
        /* Wait for a data request still within its deadline: it may cover the digest. */
        slot_t *stale = spec_uncovered(op);
        if (stale != NULL && !fetching && !live_data && (!op->answered || c->env.read_repair)) {
            spec_remote(op, stale, ASK_DATA, true);
            continue;
        }
        if (op->answered) {
            break;
        }
        if (op->failed > op->from - op->ack) {
            op_answer(op, DKV_EQUORUM);
            break;
        }
        if (op->ok >= op->ack && stale == NULL) {
            op_answer(op, !op->have_best || op->best.tombstone ? DKV_ENOTFOUND : 0);
            break;
        }
        if (op->ok + live >= op->ack) {
            break;
        }
        slot_t *next = spec_next(op);
        if (next == NULL) {
            break; /* every replica was asked: the overdue ones may still answer */
        }
        if (next->node == c->env.self_idx) {
            spec_local(op, next);
        } else {
            bool data = !op->have_data && !live_data && !fetching;
            spec_remote(op, next, data ? ASK_DATA : ASK_DIGEST, false);
        }
    }
    spec_schedule(op);
}

static void spec_data_cb(void *arg, int rc, const dkv_record_t *rec)
{
    slot_t *s = arg;
    op_t *op = s->op;
    s->inflight = false;
    peer_observed(op->c, s, rc);
    if (rc == 0 && rec != NULL) {
        remote_version(op, s, rec);
    } else if (rc == DKV_ENOTFOUND) {
        s->state = SLOT_ABSENT;
    }
    if (rc == 0 || rc == DKV_ENOTFOUND) {
        s->by_digest = false;
        op->have_data = true;
        spec_success(op, s);
    } else {
        spec_fail(op, s, rc);
    }
    spec_pump(op);
    op_unref(op);
}

static void spec_digest_cb(void *arg, int rc, const dkv_rpc_digest_t *d)
{
    slot_t *s = arg;
    op_t *op = s->op;
    s->inflight = false;
    peer_observed(op->c, s, rc);
    if (rc == 0 && d != NULL) {
        dkv_hlc_observe(op->c->env.hlc, d->ts);
        s->state = SLOT_VERSION;
        s->ts = d->ts;
        s->tombstone = d->tombstone;
        s->value_hash = d->value_hash;
        s->by_digest = true;
        spec_success(op, s);
    } else if (rc == DKV_ENOTFOUND) {
        s->state = SLOT_ABSENT;
        s->by_digest = true;
        spec_success(op, s);
    } else {
        spec_fail(op, s, rc);
    }
    spec_pump(op);
    op_unref(op);
}

/* Marks the requests past their deadline overdue: another replica may stand in for them. */
static void spec_expire(op_t *op, uint64_t now_ns)
{
    for (unsigned i = 0; i < op->from; i++) {
        slot_t *s = &op->slots[i];
        if (s->inflight && !s->overdue && s->deadline_ns != 0 && s->deadline_ns <= now_ns) {
            s->overdue = true;
        }
    }
}

static void on_spec_timer(uv_timer_t *t)
{
    dkv_coord_t *c = t->data;
    c->timer_armed = false;
    uint64_t now = clock_ns(c);
    for (;;) {
        op_t *batch[TIMER_BATCH];
        size_t n = 0;
        for (op_t *op = c->spec_head; op != NULL && n < TIMER_BATCH; op = op->spec_next) {
            if (op->spec_due_ns <= now) {
                batch[n++] = op;
            }
        }
        if (n == 0) {
            break;
        }
        /* Off the list and held, so that whatever one of them runs cannot free another. */
        for (size_t i = 0; i < n; i++) {
            spec_unlink(batch[i]);
            batch[i]->refs++;
        }
        for (size_t i = 0; i < n; i++) {
            spec_expire(batch[i], now);
            spec_pump(batch[i]);
            op_unref(batch[i]);
        }
    }
    uint64_t due = 0;
    for (op_t *op = c->spec_head; op != NULL; op = op->spec_next) {
        if (due == 0 || op->spec_due_ns < due) {
            due = op->spec_due_ns;
        }
    }
    if (due != 0 && (!c->timer_armed || due < c->timer_due_ns)) {
        spec_arm(c, due);
    }
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

    if (is_get && c->spec) {
        op->spec = true;
        op->start_ms = clock_ms(c);
        for (size_t i = 0; i < got; i++) {
            op->slots[i].op = op;
            op->slots[i].node = replicas[i];
        }
        spec_pump(op);
        op_unref(op);
        return 0;
    }

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
            if (rc == 0) {
                op->local_token = dkv_store_write_token();
                op->local = local;
            }
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
