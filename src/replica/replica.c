/* Replica-side get and put shared by the local path of the coordinator and the RPC server. */
#include "replica/replica.h"

#include "common/err.h"
#include "common/log.h"

#include <stdlib.h>

struct dkv_replica {
    dkv_store_t *store;
    dkv_hlc_t *hlc;
    dkv_identity_t *identity;
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
    dkv_hlc_observe(r->hlc, rec->ts);
    int rc = dkv_store_put(r->store, key, rec);
    if (rc == 0 && r->identity != NULL) {
        dkv_identity_note_data(r->identity);
    }
    return rc;
}
