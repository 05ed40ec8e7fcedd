/*
 * The fake transport of fake_transport.h. Requests are kept as individually allocated records
 * behind a growing array of pointers, so a request the test holds stays put while callbacks submit
 * more (a read repair's writes are sent from inside the last GET reply).
 */
#include "support/fake_transport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "rpc/proto.h"

struct dkv_fake_transport {
    dkv_fake_call_t **calls;
    size_t n;
    size_t cap;
    size_t pending;
    int refuse_rc[DKV_RING_MAX_NODES]; /* per peer; 0 = accept */
    size_t violations;                 /* replies attempted where none was allowed */
    char first_violation[160];
};

dkv_fake_transport_t *dkv_fake_transport_new(void)
{
    return dkv_xcalloc(1, sizeof(dkv_fake_transport_t));
}

void dkv_fake_transport_free(dkv_fake_transport_t *ft)
{
    if (ft == NULL) {
        return;
    }
    for (size_t i = 0; i < ft->n; i++) {
        dkv_buf_cleanup(&ft->calls[i]->key_buf);
        dkv_buf_cleanup(&ft->calls[i]->value_buf);
        free(ft->calls[i]);
    }
    free(ft->calls);
    free(ft);
}

int dkv_fake_transport_check(const dkv_fake_transport_t *ft, char *why, size_t why_len)
{
    if (ft->violations > 0) {
        snprintf(why, why_len, "%zu invalid or repeated repl%s; first: %s", ft->violations,
                 ft->violations == 1 ? "y" : "ies", ft->first_violation);
        return DKV_EINVAL;
    }
    if (ft->pending > 0) {
        for (size_t i = 0; i < ft->n; i++) {
            const dkv_fake_call_t *c = ft->calls[i];
            if (c->state == DKV_FAKE_PENDING) {
                snprintf(why, why_len, "%zu request(s) never answered; first: #%zu, %s to peer %u",
                         ft->pending, c->seq, dkv_rpc_type_name(c->type), c->peer);
                break;
            }
        }
        return DKV_EINVAL;
    }
    return 0;
}

int dkv_fake_transport_send(void *ctx, uint32_t peer, const dkv_rpc_call_t *call,
                            dkv_rpc_reply_cb cb, void *arg)
{
    dkv_fake_transport_t *ft = ctx;
    dkv_fake_call_t *c = dkv_xcalloc(1, sizeof(*c));
    c->seq = ft->n;
    c->peer = peer;
    c->type = call->type;
    c->timeout_ms = call->timeout_ms;
    dkv_buf_init(&c->key_buf);
    dkv_buf_init(&c->value_buf);
    dkv_buf_append(&c->key_buf, call->key.ptr, call->key.len);
    c->key = dkv_buf_slice(&c->key_buf);
    if (call->type == DKV_RPC_PUT && call->rec != NULL) {
        c->has_rec = true;
        c->rec = *call->rec;
        dkv_buf_append(&c->value_buf, call->rec->value.ptr, call->rec->value.len);
        c->rec.value = dkv_buf_slice(&c->value_buf);
    }
    if (ft->n == ft->cap) {
        ft->cap = ft->cap == 0 ? 16 : ft->cap * 2;
        ft->calls = dkv_xrealloc(ft->calls, ft->cap * sizeof(*ft->calls));
    }
    ft->calls[ft->n++] = c;

    int refuse = peer < DKV_RING_MAX_NODES ? ft->refuse_rc[peer] : DKV_EINVAL;
    if (refuse != 0) {
        c->state = DKV_FAKE_REFUSED;
        c->refused_rc = refuse;
        return refuse;
    }
    c->state = DKV_FAKE_PENDING;
    c->cb = cb;
    c->digest_cb = call->type == DKV_RPC_DIGEST ? call->digest_cb : NULL;
    c->arg = arg;
    ft->pending++;
    return 0;
}

void dkv_fake_transport_refuse(dkv_fake_transport_t *ft, uint32_t peer, int rc)
{
    if (peer < DKV_RING_MAX_NODES) {
        ft->refuse_rc[peer] = rc;
    }
}

size_t dkv_fake_transport_count(const dkv_fake_transport_t *ft)
{
    return ft->n;
}

size_t dkv_fake_transport_pending(const dkv_fake_transport_t *ft)
{
    return ft->pending;
}

const dkv_fake_call_t *dkv_fake_transport_call(const dkv_fake_transport_t *ft, size_t seq)
{
    return seq < ft->n ? ft->calls[seq] : NULL;
}

long dkv_fake_transport_find(const dkv_fake_transport_t *ft, size_t start_seq, uint32_t peer,
                             dkv_rpc_type_t type)
{
    for (size_t i = start_seq; i < ft->n; i++) {
        if (ft->calls[i]->peer == peer && ft->calls[i]->type == type) {
            return (long)i;
        }
    }
    return -1;
}

size_t dkv_fake_transport_count_of(const dkv_fake_transport_t *ft, size_t start_seq, uint32_t peer,
                                   dkv_rpc_type_t type)
{
    size_t count = 0;
    for (size_t i = start_seq; i < ft->n; i++) {
        if ((peer == UINT32_MAX || ft->calls[i]->peer == peer) && ft->calls[i]->type == type) {
            count++;
        }
    }
    return count;
}

static int violation(dkv_fake_transport_t *ft, size_t seq, const char *what)
{
    if (ft->violations == 0) {
        snprintf(ft->first_violation, sizeof(ft->first_violation), "request #%zu: %s", seq, what);
    }
    ft->violations++;
    return DKV_EINVAL;
}

int dkv_fake_transport_reply(dkv_fake_transport_t *ft, size_t seq, int rc, const dkv_record_t *rec)
{
    if (seq >= ft->n) {
        return violation(ft, seq, "no such request");
    }
    dkv_fake_call_t *c = ft->calls[seq];
    if (c->state == DKV_FAKE_REFUSED) {
        return violation(ft, seq, "refused at submit: its callback must never run");
    }
    if (c->state == DKV_FAKE_REPLIED) {
        return violation(ft, seq, "already answered: its callback would run twice");
    }
    bool want_rec = rc == 0 && (c->type == DKV_RPC_GET || c->type == DKV_RPC_DIGEST);
    if (want_rec != (rec != NULL)) {
        return violation(ft, seq,
                         want_rec ? "a GET or DIGEST answered 0 needs a record"
                                  : "only a GET or DIGEST answered 0 carries a record");
    }
    /* Marked before the callback: a callback that submits more requests sees a consistent fake. */
    c->state = DKV_FAKE_REPLIED;
    c->reply_rc = rc;
    ft->pending--;
    if (c->type == DKV_RPC_DIGEST) {
        dkv_rpc_digest_t d;
        if (rec != NULL) {
            dkv_rpc_digest_of(rec, &d);
        }
        c->digest_cb(c->arg, rc, rec != NULL ? &d : NULL);
        return 0;
    }
    if (rec == NULL) {
        c->cb(c->arg, rc, NULL);
        return 0;
    }
    /* The record lives exactly as long as the callback, like a real reply's read buffer. */
    uint8_t *bytes = dkv_xmalloc(rec->value.len);
    if (rec->value.len > 0) {
        memcpy(bytes, rec->value.ptr, rec->value.len);
    }
    dkv_record_t copy = *rec;
    copy.value = dkv_slice(bytes, rec->value.len);
    c->cb(c->arg, rc, &copy);
    free(bytes);
    return 0;
}

int dkv_fake_transport_reply_found(dkv_fake_transport_t *ft, size_t seq, const dkv_record_t *rec)
{
    return dkv_fake_transport_reply(ft, seq, 0, rec);
}

int dkv_fake_transport_reply_absent(dkv_fake_transport_t *ft, size_t seq)
{
    return dkv_fake_transport_reply(ft, seq, DKV_ENOTFOUND, NULL);
}

int dkv_fake_transport_reply_stored(dkv_fake_transport_t *ft, size_t seq)
{
    return dkv_fake_transport_reply(ft, seq, 0, NULL);
}

int dkv_fake_transport_reply_error(dkv_fake_transport_t *ft, size_t seq, int rc)
{
    return dkv_fake_transport_reply(ft, seq, rc, NULL);
}

size_t dkv_fake_transport_drain(dkv_fake_transport_t *ft, int rc)
{
    size_t answered = 0;
    size_t i = 0;
    while (ft->pending > 0 && i < ft->n) {
        if (ft->calls[i]->state == DKV_FAKE_PENDING) {
            /* A GET answered 0 would need a record: drain with an error or "absent" only. */
            dkv_rpc_type_t t = ft->calls[i]->type;
            int r = rc == 0 && (t == DKV_RPC_GET || t == DKV_RPC_DIGEST) ? DKV_ENOTFOUND : rc;
            dkv_fake_transport_reply(ft, i, r, NULL);
            answered++;
        }
        i++;
    }
    return answered;
}
