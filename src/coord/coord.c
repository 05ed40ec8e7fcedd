/*
 * Coordinator. DESIGN: an operation is reference-counted by its outstanding replica requests plus
 * the starter; only the first outcome (ack successes, or failures > from - ack) answers, and
 * replies after that are consumed quietly. Requests to peers go out first, then the local store
 * is used inline, so the network round trips overlap the local write.
 */
#include "coord/coord.h"

#include "common/err.h"
#include "common/log.h"

#include <stdlib.h>
#include <string.h>

struct dkv_coord {
    dkv_coord_env_t env;
    size_t inflight;
};

typedef struct op {
    dkv_coord_t *c;
    unsigned refs;
    unsigned ack;
    unsigned from;
    unsigned ok;
    unsigned failed;
    bool answered;
    bool is_get;
    dkv_coord_cb cb;
    void *arg;
    bool have_best;        /* GET: a replica returned a version */
    dkv_record_t best;     /* GET: newest version so far; borrows from best_buf */
    dkv_owned_t best_buf;
} op_t;

static void free_plain(uint8_t *p)
{
    free(p);
}

void dkv_owned_release(dkv_owned_t *o)
{
    if (o->ptr != NULL && o->free_fn != NULL) {
        o->free_fn(o->ptr);
    }
    o->ptr = NULL;
    o->len = 0;
    o->free_fn = NULL;
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

static void op_answer(op_t *op, int rc)
{
    op->answered = true;
    dkv_coord_result_t res = {.rc = rc};
    if (rc == 0 && op->is_get) {
        res.record = op->best;
        res.buf = op->best_buf;
        memset(&op->best_buf, 0, sizeof(op->best_buf));
        op->have_best = false; /* op->best pointed into the buffer the callback now owns */
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
        op_answer(op, DKV_EQUORUM);
    }
}

static void op_unref(op_t *op)
{
    if (--op->refs > 0) {
        return;
    }
    dkv_owned_release(&op->best_buf);
    op->c->inflight--;
    free(op);
}

/* Offers a replica's version to a GET: keeps it if it is newer than the best so far. Takes
 * ownership of `buf` when it is kept; otherwise releases it. */
static void op_offer(op_t *op, const dkv_record_t *rec, dkv_owned_t *buf)
{
    if (op->have_best && dkv_record_cmp(rec, &op->best) <= 0) {
        dkv_owned_release(buf);
        return;
    }
    dkv_owned_release(&op->best_buf);
    op->best_buf = *buf;
    op->best = *rec;
    op->have_best = true;
    memset(buf, 0, sizeof(*buf));
}

/* One replica's outcome. rc 0 or DKV_ENOTFOUND (GET: absent) is a success. */
static void op_reply(op_t *op, int rc)
{
    if (rc == 0 || (op->is_get && rc == DKV_ENOTFOUND)) {
        op->ok++;
    } else {
        op->failed++;
    }
    op_decide(op);
}

static void remote_cb(void *arg, int rc, const dkv_record_t *rec)
{
    op_t *op = arg;
    if (rc == 0 && rec != NULL && op->is_get) {
        dkv_hlc_observe(op->c->env.hlc, rec->ts);
        if (!op->answered && (!op->have_best || dkv_record_cmp(rec, &op->best) > 0)) {
            dkv_owned_t copy = {dkv_xmalloc(rec->value.len), rec->value.len, free_plain};
            if (rec->value.len > 0) {
                memcpy(copy.ptr, rec->value.ptr, rec->value.len);
            }
            dkv_record_t kept = *rec;
            kept.value = dkv_slice(copy.ptr, copy.len);
            op_offer(op, &kept, &copy);
        }
    }
    op_reply(op, rc);
    op_unref(op);
}

static void local_get(op_t *op, dkv_slice_t key)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = dkv_store_get(op->c->env.store, key, &data, &len);
    if (rc == 0) {
        dkv_record_t rec;
        dkv_owned_t buf = {data, len, dkv_store_free};
        if (dkv_record_decode(dkv_slice(data, len), &rec) != 0) {
            DKV_LOG_ERROR("coord: local record of a %zu-byte key does not decode", key.len);
            dkv_owned_release(&buf);
            rc = DKV_EIO;
        } else {
            op_offer(op, &rec, &buf);
        }
    }
    op_reply(op, rc);
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
    op_t *op = dkv_xcalloc(1, sizeof(*op));
    op->c = c;
    op->refs = 1;
    op->ack = ack;
    op->from = (unsigned)got;
    op->is_get = is_get;
    op->cb = cb;
    op->arg = arg;
    c->inflight++;

    bool local = false;
    for (size_t i = 0; i < got; i++) {
        if (replicas[i] == c->env.self_idx) {
            local = true;
            continue;
        }
        int rc = DKV_EUNAVAIL;
        if (c->env.rpc != NULL) {
            op->refs++;
            rc = is_get ? dkv_rpc_client_get(c->env.rpc, replicas[i], key, remote_cb, op)
                        : dkv_rpc_client_put(c->env.rpc, replicas[i], key, rec, remote_cb, op);
            if (rc != 0) {
                op->refs--;
            }
        }
        if (rc != 0) {
            op_reply(op, rc);
        }
    }
    if (local) {
        if (is_get) {
            local_get(op, key);
        } else {
            op_reply(op, dkv_store_put(c->env.store, key, rec));
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
    dkv_record_t rec = {
        .ts = dkv_hlc_now(c->env.hlc), .tombstone = tombstone, .value = value, .from = (uint8_t)from};
    return op_start(c, key, false, &rec, ack, from, cb, arg);
}
