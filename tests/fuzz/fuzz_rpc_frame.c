/*
 * libFuzzer target for the RPC frame codec (rpc/proto.h): reads arbitrary bytes as a stream of
 * pipelined frames (peek + decode in a loop, as a connection does), and re-encodes every frame
 * that decodes, which must give back exactly the same bytes: the protocol has one encoding per
 * message, so a decoder that accepts something the encoders cannot produce is a bug.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/record.h"
#include "rpc/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static bool within(dkv_slice_t inner, dkv_slice_t outer)
{
    if (inner.len == 0) {
        return true;
    }
    return inner.ptr >= outer.ptr && inner.len <= outer.len &&
           (size_t)(inner.ptr - outer.ptr) <= outer.len - inner.len;
}

/* Rebuilds a SCAN_REPLY with the incremental writer. @return 0, or 1 when the writer refused. */
static int encode_scan_reply(dkv_buf_t *out, const dkv_rpc_msg_t *m, dkv_slice_t frame)
{
    dkv_rpc_scan_writer_t w;
    dkv_rpc_scan_reply_begin(&w, out, m->req_id, DKV_RPC_MAX_FRAME_BYTES);
    if (m->scan_reply.status == DKV_RPC_ERROR) {
        dkv_rpc_scan_reply_fail(&w);
        return 0;
    }
    dkv_rpc_scan_iter_t it;
    dkv_rpc_scan_iter_init(&it, m);
    dkv_slice_t key;
    dkv_record_t rec;
    uint32_t seen = 0;
    int rc;
    while ((rc = dkv_rpc_scan_iter_next(&it, &key, &rec)) == 0) {
        CHECK(within(key, frame) && within(rec.value, frame));
        int add = dkv_rpc_scan_reply_add(&w, key, &rec);
        if (add == DKV_ETOOBIG) {
            /* The writer reserves room for a full trailer, so it may stop just short of the max. */
            CHECK(frame.len + DKV_RPC_MAX_KEY_BYTES + 3 > DKV_RPC_MAX_FRAME_BYTES);
            return 1;
        }
        CHECK(add == 0);
        seen++;
    }
    CHECK(rc == DKV_ENOTFOUND);
    CHECK(seen == m->scan_reply.count);
    if (seen > 0) {
        CHECK(dkv_slice_cmp(key, m->scan_reply.last_key) == 0);
    }
    dkv_rpc_scan_reply_finish(&w, m->scan_reply.more);
    return 0;
}

/* Encodes `m` again. @return 0, or 1 when re-encoding legitimately cannot reproduce it. */
/* A TREE_REPLY, re-encoded from its decoded fields (entries re-appended one by one). */
static int encode_tree_reply(dkv_buf_t *out, const dkv_rpc_msg_t *m, dkv_slice_t frame)
{
    if (m->tree_reply.status != DKV_RPC_OK) {
        CHECK(dkv_rpc_encode_tree_status(out, m->req_id, (dkv_rpc_status_t)m->tree_reply.status) == 0);
        return 0;
    }
    switch (m->tree_reply.kind) {
    case DKV_RPC_TREE_BRANCHES:
    case DKV_RPC_TREE_LEAVES: {
        CHECK(within(m->tree_reply.hashes, frame) && m->tree_reply.hashes.len == DKV_RPC_TREE_HASHES * 8u);
        uint64_t hashes[DKV_RPC_TREE_HASHES];
        for (uint32_t i = 0; i < DKV_RPC_TREE_HASHES; i++) {
            hashes[i] = dkv_rpc_tree_hash(m, i);
        }
        dkv_rpc_encode_tree_hashes(out, m->req_id, m->tree_reply.kind, hashes);
        return 0;
    }
    case DKV_RPC_TREE_STATS:
        dkv_rpc_encode_tree_stats(out, m->req_id, m->tree_reply.records, m->tree_reply.bytes);
        return 0;
    case DKV_RPC_TREE_SEGMENT: {
        CHECK(within(m->tree_reply.entries, frame));
        dkv_buf_t entries;
        dkv_buf_init(&entries);
        dkv_slice_t rest = m->tree_reply.entries;
        dkv_rpc_tree_entry_t e;
        uint32_t n = 0;
        while (dkv_rpc_tree_iter_next(&rest, &e) == 0) {
            CHECK(dkv_rpc_tree_entry_append(&entries, &e) > 0);
            n++;
        }
        CHECK(n == m->tree_reply.count && rest.len == 0);
        CHECK(dkv_rpc_encode_tree_segment(out, m->req_id, dkv_buf_slice(&entries), n, m->tree_reply.more) ==
              0);
        dkv_buf_cleanup(&entries);
        return 0;
    }
    default:
        abort();
    }
}

static int reencode(dkv_buf_t *out, const dkv_rpc_msg_t *m, dkv_slice_t frame)
{
    switch (m->type) {
    case DKV_RPC_HELLO:
        CHECK(within(m->hello.url, frame));
        CHECK(dkv_rpc_encode_hello(out, m->req_id, m->hello.fingerprint, m->hello.url,
                                   m->hello.has_ident ? &m->hello.ident : NULL,
                                   m->hello.has_nonce ? m->hello.nonce : NULL) == 0);
        return 0;
    case DKV_RPC_HELLO_OK:
        dkv_rpc_encode_hello_ok(out, m->req_id, m->hello_ok.has_ident ? &m->hello_ok.ident : NULL);
        return 0;
    case DKV_RPC_HELLO_REJECT:
        CHECK(within(m->hello_reject.reason, frame));
        dkv_rpc_encode_hello_reject(out, m->req_id, m->hello_reject.reason);
        return 0;
    case DKV_RPC_GET:
        CHECK(within(m->get.key, frame));
        CHECK(dkv_rpc_encode_get(out, m->req_id, m->get.key) == 0);
        return 0;
    case DKV_RPC_GET_REPLY:
        CHECK(within(m->get_reply.rec_bytes, frame) && within(m->get_reply.rec.value, frame));
        CHECK(dkv_rpc_encode_get_reply(out, m->req_id, (dkv_rpc_status_t)m->get_reply.status,
                                       m->get_reply.status == DKV_RPC_OK ? &m->get_reply.rec
                                                                         : NULL) == 0);
        return 0;
    case DKV_RPC_PUT:
        CHECK(within(m->put.key, frame) && within(m->put.rec_bytes, frame));
        CHECK(dkv_rpc_encode_put(out, m->req_id, m->put.key, &m->put.rec) == 0);
        return 0;
    case DKV_RPC_PUT_REPLY:
        CHECK(dkv_rpc_encode_put_reply(out, m->req_id, (dkv_rpc_status_t)m->put_reply.status) == 0);
        return 0;
    case DKV_RPC_SCAN:
        CHECK(within(m->scan.start, frame) && within(m->scan.end, frame));
        CHECK(dkv_rpc_encode_scan(out, m->req_id, &m->scan) == 0);
        return 0;
    case DKV_RPC_SCAN_REPLY:
        return encode_scan_reply(out, m, frame);
    case DKV_RPC_HELLO_CHALLENGE:
        dkv_rpc_encode_hello_challenge(out, m->req_id, m->challenge.nonce, m->challenge.tag);
        return 0;
    case DKV_RPC_AUTH:
        dkv_rpc_encode_auth(out, m->req_id, m->auth.tag);
        return 0;
    case DKV_RPC_PING:
        dkv_rpc_encode_ping(out, m->req_id);
        return 0;
    case DKV_RPC_PONG:
        dkv_rpc_encode_pong(out, m->req_id, m->pong.wall_ms);
        return 0;
    case DKV_RPC_TREE:
        CHECK(within(m->tree.after, frame));
        CHECK(dkv_rpc_encode_tree(out, m->req_id, m->tree.kind, m->tree.index, m->tree.after) ==
              0);
        return 0;
    case DKV_RPC_TREE_REPLY:
        return encode_tree_reply(out, m, frame);
    case DKV_RPC_DIGEST:
        CHECK(within(m->digest.key, frame));
        CHECK(dkv_rpc_encode_digest(out, m->req_id, m->digest.key) == 0);
        return 0;
    case DKV_RPC_DIGEST_REPLY:
        CHECK(dkv_rpc_encode_digest_reply(
                  out, m->req_id, (dkv_rpc_status_t)m->digest_reply.status,
                  m->digest_reply.status == DKV_RPC_OK ? &m->digest_reply.digest : NULL) == 0);
        return 0;
    default:
        /* dkv_rpc_decode() returned 0 for a type it does not know. */
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dkv_slice_t in = dkv_slice(data, size);
    dkv_buf_t out;
    dkv_buf_init(&out);
    for (;;) {
        size_t n = 0;
        int rc = dkv_rpc_frame_peek(in, DKV_RPC_MAX_FRAME_BYTES, &n);
        if (rc != 0) {
            CHECK(rc == DKV_RPC_NEED_MORE || rc == DKV_EPROTO || rc == DKV_ETOOBIG);
            if (rc == DKV_RPC_NEED_MORE) {
                CHECK(in.len < DKV_RPC_HEADER_BYTES);
            }
            break;
        }
        CHECK(n >= DKV_RPC_HEADER_BYTES && n <= DKV_RPC_MAX_FRAME_BYTES);
        if (n > in.len) {
            /* A connection would wait for more; the partial frame must not decode. */
            dkv_rpc_msg_t m;
            CHECK(dkv_rpc_decode(in, &m) == DKV_EPROTO);
            break;
        }
        dkv_slice_t frame = dkv_slice(in.ptr, n);
        dkv_rpc_header_t h;
        CHECK(dkv_rpc_frame_header(frame, &h) == 0);
        CHECK(h.payload_bytes == n - DKV_RPC_HEADER_BYTES);

        dkv_rpc_msg_t m;
        rc = dkv_rpc_decode(frame, &m);
        if (rc == 0) {
            CHECK(h.version == DKV_RPC_VERSION && h.type == m.type && h.req_id == m.req_id);
            CHECK(strcmp(dkv_rpc_type_name(m.type), "UNKNOWN") != 0);
            out.len = 0;
            if (reencode(&out, &m, frame) == 0) {
                /* Every record is re-encoded as version 2, one byte longer than a version-1
                 * record; a frame of version-2 records comes back byte for byte. */
                CHECK(out.len >= frame.len);
                if (out.len == frame.len) {
                    CHECK(memcmp(out.data, frame.ptr, frame.len) == 0);
                } else {
                    /* The canonical form is a fixpoint: decoding and re-encoding it again
                     * gives the same bytes. */
                    dkv_buf_t again;
                    dkv_buf_init(&again);
                    dkv_rpc_msg_t m2;
                    dkv_slice_t canon = dkv_buf_slice(&out);
                    CHECK(dkv_rpc_decode(canon, &m2) == 0);
                    CHECK(reencode(&again, &m2, canon) == 0);
                    CHECK(again.len == out.len && memcmp(again.data, out.data, out.len) == 0);
                    dkv_buf_cleanup(&again);
                }
            }
        } else {
            CHECK(rc == DKV_EPROTO);
        }
        in = dkv_slice(in.ptr + n, in.len - n);
    }
    dkv_buf_cleanup(&out);
    return 0;
}
