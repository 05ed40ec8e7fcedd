/* TEMPORARY: the RPC client lands in the next commit; until then clusters of N > 1 refuse to start. */
#include "rpc/rpc.h"

#include "common/err.h"

int dkv_rpc_client_new(uv_loop_t *loop, const dkv_ring_t *ring, uint32_t self_idx,
                       dkv_hlc_t *hlc, const dkv_rpc_client_opts_t *opts, dkv_rpc_client_t **out)
{
    (void)loop, (void)ring, (void)self_idx, (void)hlc, (void)opts, (void)out;
    return DKV_EUNAVAIL;
}

void dkv_rpc_client_close(dkv_rpc_client_t *c, void (*cb)(void *arg), void *arg)
{
    (void)c;
    if (cb != NULL) {
        cb(arg);
    }
}

int dkv_rpc_client_get(dkv_rpc_client_t *c, uint32_t peer, dkv_slice_t key, dkv_rpc_reply_cb cb,
                       void *arg)
{
    (void)c, (void)peer, (void)key, (void)cb, (void)arg;
    return DKV_EINVAL;
}

int dkv_rpc_client_put(dkv_rpc_client_t *c, uint32_t peer, dkv_slice_t key,
                       const dkv_record_t *rec, dkv_rpc_reply_cb cb, void *arg)
{
    (void)c, (void)peer, (void)key, (void)rec, (void)cb, (void)arg;
    return DKV_EINVAL;
}

void dkv_rpc_client_status_json(dkv_rpc_client_t *c, dkv_buf_t *out)
{
    (void)c, (void)out;
}
