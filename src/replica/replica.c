/* Replica-side get and put shared by the local path of the coordinator and the RPC server. */
#include "replica/replica.h"

#include "common/err.h"
#include "common/log.h"

#include <inttypes.h>
#include <stdlib.h>

struct dkv_replica {
    dkv_store_t *store;
    dkv_hlc_t *hlc;
    dkv_identity_t *identity;
    _Atomic uint64_t future_refused;
    _Atomic uint64_t last_refusal_log_ms;
    _Atomic uint64_t purge_max_ts;   /* tombstones at or below it were purged (0: none) */
    _Atomic uint64_t late_tombstones; /* such tombstones dropped on arrival */
};

int dkv_replica_new(dkv_store_t *store, dkv_hlc_t *hlc, dkv_identity_t *identity,
                    dkv_replica_t **out)
{
    dkv_replica_t *r = dkv_xcalloc(1, sizeof(*r));
    r->store = store;
    r->hlc = hlc;
    r->identity = identity;
    *out = r;
    return 0;
}

void dkv_replica_free(dkv_replica_t *r)
{
    free(r);
}

dkv_store_t *dkv_replica_store(const dkv_replica_t *r)
{
    return r->store;
}

static void free_store_bytes(uint8_t *p)
{
    dkv_store_free(p);
}

int dkv_replica_get(dkv_replica_t *r, dkv_slice_t key, dkv_record_t *rec, dkv_owned_t *buf)
{
    if (r->identity != NULL && dkv_identity_state(r->identity) != DKV_NODE_READY) {
        return DKV_ENOTREADY;
    }
    return dkv_replica_get_stored(r, key, rec, buf);
}

int dkv_replica_get_stored(dkv_replica_t *r, dkv_slice_t key, dkv_record_t *rec, dkv_owned_t *buf)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = dkv_store_get(r->store, key, &data, &len);
    if (rc != 0) {
        return rc;
    }
    dkv_record_t got;
    if (dkv_record_decode(dkv_slice(data, len), &got) != 0) {
        DKV_LOG_ERROR("replica: stored record of a %zu-byte key does not decode", key.len);
        dkv_store_free(data);
        return DKV_EIO;
    }
    *rec = got;
    buf->ptr = data;
    buf->len = len;
    buf->free_fn = free_store_bytes;
    return 0;
}

int dkv_replica_put(dkv_replica_t *r, dkv_slice_t key, const dkv_record_t *rec)
{
    if (!dkv_hlc_observe(r->hlc, rec->ts)) {
        /* A record stamped beyond --max-clock-offset-ms would win every later write and drag
         * every clock it reaches: refused, counted, logged at most every 10 s. */
        atomic_fetch_add(&r->future_refused, 1);
        uint64_t now = dkv_hlc_system_clock_ms(NULL);
        uint64_t last = atomic_load(&r->last_refusal_log_ms);
        if (now - last >= 10000 && atomic_compare_exchange_strong(&r->last_refusal_log_ms, &last,
                                                                  now)) {
            DKV_LOG_WARN("replica: refused a record stamped %" PRIu64 " ms ahead of this node's "
                         "clock (--max-clock-offset-ms %" PRIu64 "; %" PRIu64 " refused so far)",
                         dkv_hlc_ms(rec->ts) - now, r->hlc->max_offset_ms,
                         atomic_load(&r->future_refused));
        }
        return DKV_ECLOCK;
    }
    uint64_t horizon = atomic_load(&r->purge_max_ts);
    if (rec->tombstone && rec->ts <= horizon) {
        /* A tombstone GC already purged here (repair/antientropy.h) arrives again, e.g. pushed
         * by a peer that has not purged it yet. For a key we hold no version of, storing it
         * would only make us purge it again: drop it (a success: the key is deleted here). */
        uint8_t *data = NULL;
        size_t len = 0;
        int grc = dkv_store_get(r->store, key, &data, &len);
        dkv_store_free(data);
        if (grc == DKV_ENOTFOUND) {
            atomic_fetch_add(&r->late_tombstones, 1);
            return 0;
        }
    }
    int rc = dkv_store_put(r->store, key, rec);
    if (rc == 0 && r->identity != NULL) {
        dkv_identity_note_data(r->identity);
    }
    return rc;
}

void dkv_replica_set_purge_horizon(dkv_replica_t *r, uint64_t max_ts)
{
    atomic_store(&r->purge_max_ts, max_ts);
}

uint64_t dkv_replica_late_tombstones(const dkv_replica_t *r)
{
    return atomic_load(&r->late_tombstones);
}

uint64_t dkv_replica_future_refused(const dkv_replica_t *r)
{
    return atomic_load(&r->future_refused);
}
