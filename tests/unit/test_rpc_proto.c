/*
 * Unit tests of the RPC frame codec (rpc/proto.h): round trips of every message, pipelined
 * streams, and the ways a frame from the network can be wrong (truncated, oversized, unknown
 * version or type, garbage records, leftover bytes).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/record.h"
#include "rpc/proto.h"

/* ---- helpers ---- */

/* Decodes `b`, which must hold exactly one frame, checking that peek agrees on its size. */
static dkv_rpc_msg_t decode_one(const dkv_buf_t *b)
{
    size_t n = 0;
    assert_int_equal(dkv_rpc_frame_peek(dkv_buf_slice(b), DKV_RPC_MAX_FRAME_BYTES, &n), 0);
    assert_int_equal(n, b->len);
    dkv_rpc_msg_t m;
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(b), &m), 0);
    return m;
}

static void assert_slice_eq(dkv_slice_t a, dkv_slice_t b)
{
    assert_int_equal(a.len, b.len);
    if (a.len > 0) {
        assert_memory_equal(a.ptr, b.ptr, a.len);
    }
}

static void assert_record_eq(const dkv_record_t *a, const dkv_record_t *b)
{
    assert_true(a->ts == b->ts);
    assert_int_equal(a->tombstone, b->tombstone);
    assert_slice_eq(a->value, b->value);
}

/* Appends a frame with any header fields and payload, as a broken or future peer might. */
static void raw_frame(dkv_buf_t *b, uint8_t version, uint8_t type, uint64_t req_id,
                      const void *payload, size_t payload_len)
{
    uint8_t h[DKV_RPC_HEADER_BYTES];
    uint32_t len = (uint32_t)(DKV_RPC_LENGTH_MIN + payload_len);
    h[0] = DKV_RPC_MAGIC;
    for (int i = 0; i < 4; i++) {
        h[1 + i] = (uint8_t)(len >> (24 - 8 * i));
    }
    h[5] = version;
    h[6] = type;
    for (int i = 0; i < 8; i++) {
        h[7 + i] = (uint8_t)(req_id >> (56 - 8 * i));
    }
    dkv_buf_append(b, h, sizeof(h));
    dkv_buf_append(b, payload, payload_len);
}

static int decode_raw(uint8_t version, uint8_t type, const void *payload, size_t payload_len)
{
    dkv_buf_t b;
    dkv_buf_init(&b);
    raw_frame(&b, version, type, 7, payload, payload_len);
    dkv_rpc_msg_t m;
    int rc = dkv_rpc_decode(dkv_buf_slice(&b), &m);
    dkv_buf_cleanup(&b);
    return rc;
}

static dkv_record_t value_record(uint64_t ts, const char *v)
{
    dkv_record_t r = {ts, false, dkv_slice_str(v), 0};
    return r;
}

static dkv_record_t tombstone_record(uint64_t ts)
{
    dkv_record_t r = {ts, true, dkv_slice(NULL, 0), 0};
    return r;
}

/*
 * Checks every proper prefix of `frame`, each in its own exact-size heap copy so that ASan
 * catches a read past it: peek asks for more (or reports a size beyond the prefix), and decode
 * refuses it.
 */
static void check_all_prefixes(dkv_slice_t frame)
{
    for (size_t len = 0; len < frame.len; len++) {
        uint8_t *copy = malloc(len ? len : 1);
        assert_non_null(copy);
        if (len > 0) {
            memcpy(copy, frame.ptr, len);
        }
        dkv_slice_t s = dkv_slice(copy, len);
        size_t n = 0;
        int rc = dkv_rpc_frame_peek(s, DKV_RPC_MAX_FRAME_BYTES, &n);
        if (len < DKV_RPC_HEADER_BYTES) {
            assert_int_equal(rc, DKV_RPC_NEED_MORE);
        } else {
            assert_int_equal(rc, 0);
            assert_int_equal(n, frame.len);
        }
        dkv_rpc_msg_t m;
        assert_int_equal(dkv_rpc_decode(s, &m), DKV_EPROTO);
        free(copy);
    }
}

/* One of each message, for the stream tests. */
static void encode_all(dkv_buf_t *b)
{
    dkv_record_t v = value_record(42, "value");
    dkv_record_t t = tombstone_record(43);
    dkv_rpc_scan_t scan = {dkv_slice_str("a"), dkv_slice_str("z"), false, 10, 4096};
    assert_int_equal(
        dkv_rpc_encode_hello(b, 1, 0x1122334455667788ull, dkv_slice_str("http://127.0.0.1:8080"),
                             NULL, NULL),
        0);
    dkv_rpc_encode_hello_ok(b, 1, NULL);
    dkv_rpc_encode_hello_reject(b, 2, dkv_slice_str("cluster mismatch"));
    assert_int_equal(dkv_rpc_encode_get(b, 3, dkv_slice_str("k")), 0);
    assert_int_equal(dkv_rpc_encode_get_reply(b, 3, DKV_RPC_OK, &v), 0);
    assert_int_equal(dkv_rpc_encode_get_reply(b, 4, DKV_RPC_ABSENT, NULL), 0);
    assert_int_equal(dkv_rpc_encode_get_reply(b, 5, DKV_RPC_ERROR, NULL), 0);
    assert_int_equal(dkv_rpc_encode_put(b, 6, dkv_slice_str("k"), &v), 0);
    assert_int_equal(dkv_rpc_encode_put(b, 7, dkv_slice_str("k"), &t), 0);
    assert_int_equal(dkv_rpc_encode_put_reply(b, 6, DKV_RPC_OK), 0);
    assert_int_equal(dkv_rpc_encode_put_reply(b, 7, DKV_RPC_ERROR), 0);
    assert_int_equal(dkv_rpc_encode_scan(b, 8, &scan), 0);
    dkv_rpc_scan_writer_t w;
    dkv_rpc_scan_reply_begin(&w, b, 8, DKV_RPC_MAX_FRAME_BYTES);
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice_str("a"), &v), 0);
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice_str("b"), &t), 0);
    dkv_rpc_scan_reply_finish(&w, true);
}

#define ENCODE_ALL_FRAMES 13

/* ---- round trips ---- */

static void test_hello_round_trip(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_slice_t url = dkv_slice_str("http://10.0.0.1:8080");
    assert_int_equal(dkv_rpc_encode_hello(&b, 99, 0xDEADBEEFCAFEF00Dull, url, NULL, NULL), 0);
    assert_int_equal(b.data[0], DKV_RPC_MAGIC);
    dkv_rpc_msg_t m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_HELLO);
    assert_true(m.req_id == 99);
    assert_true(m.hello.fingerprint == 0xDEADBEEFCAFEF00Dull);
    assert_slice_eq(m.hello.url, url);
    dkv_buf_cleanup(&b);

    dkv_rpc_encode_hello_ok(&b, UINT64_MAX, NULL);
    m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_HELLO_OK);
    assert_true(m.req_id == UINT64_MAX);
    assert_int_equal(b.len, DKV_RPC_HEADER_BYTES);
    dkv_buf_cleanup(&b);

    dkv_slice_t why = dkv_slice_str("cluster fingerprint 1 != 2");
    dkv_rpc_encode_hello_reject(&b, 5, why);
    m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_HELLO_REJECT);
    assert_slice_eq(m.hello_reject.reason, why);
    dkv_buf_cleanup(&b);

    /* Empty reasons are fine; long ones are cut to the limit. */
    dkv_rpc_encode_hello_reject(&b, 5, dkv_slice(NULL, 0));
    m = decode_one(&b);
    assert_int_equal(m.hello_reject.reason.len, 0);
    dkv_buf_cleanup(&b);
    char long_reason[DKV_RPC_MAX_REASON_BYTES + 50];
    memset(long_reason, 'r', sizeof(long_reason));
    dkv_rpc_encode_hello_reject(&b, 5, dkv_slice(long_reason, sizeof(long_reason)));
    m = decode_one(&b);
    assert_int_equal(m.hello_reject.reason.len, DKV_RPC_MAX_REASON_BYTES);
    dkv_buf_cleanup(&b);
}

/* PING has no payload; PONG carries the server's wall clock as a u64. Anything else is
 * malformed. */
static void test_ping_pong_round_trip_and_exact_lengths(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_rpc_encode_ping(&b, 41);
    assert_int_equal(b.len, DKV_RPC_HEADER_BYTES);
    dkv_rpc_msg_t m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_PING);
    assert_true(m.req_id == 41);
    dkv_buf_cleanup(&b);
    const uint64_t walls[] = {0, 1764330000123ull, UINT64_MAX};
    for (size_t i = 0; i < sizeof(walls) / sizeof(walls[0]); i++) {
        dkv_rpc_encode_pong(&b, 42, walls[i]);
        assert_int_equal(b.len, DKV_RPC_HEADER_BYTES + 8);
        m = decode_one(&b);
        assert_int_equal(m.type, DKV_RPC_PONG);
        assert_true(m.req_id == 42 && m.pong.wall_ms == walls[i]);
        dkv_buf_cleanup(&b);
    }
    const uint8_t nine[9] = {0};
    assert_int_equal(decode_raw(1, DKV_RPC_PING, nine, 1), DKV_EPROTO);
    assert_int_equal(decode_raw(1, DKV_RPC_PONG, nine, 7), DKV_EPROTO);
    assert_int_equal(decode_raw(1, DKV_RPC_PONG, nine, 9), DKV_EPROTO);
    assert_int_equal(decode_raw(1, DKV_RPC_PONG, nine, 0), DKV_EPROTO);
    assert_int_equal(decode_raw(2, DKV_RPC_PING, NULL, 0), DKV_EPROTO);
    assert_string_equal(dkv_rpc_type_name(DKV_RPC_PING), "PING");
    assert_string_equal(dkv_rpc_type_name(DKV_RPC_PONG), "PONG");
}

static void test_get_round_trip(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    char key[DKV_RPC_MAX_KEY_BYTES];
    for (size_t i = 0; i < sizeof(key); i++) {
        key[i] = (char)i; /* any bytes, NUL included */
    }
    size_t lens[] = {1, 2, 255, 256, DKV_RPC_MAX_KEY_BYTES};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        dkv_slice_t k = dkv_slice(key, lens[i]);
        assert_int_equal(dkv_rpc_encode_get(&b, i, k), 0);
        dkv_rpc_msg_t m = decode_one(&b);
        assert_int_equal(m.type, DKV_RPC_GET);
        assert_true(m.req_id == i);
        assert_slice_eq(m.get.key, k);
        dkv_buf_cleanup(&b);
    }
}

static void test_get_reply_round_trip(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_record_t recs[] = {value_record(1, "hello"), value_record(UINT64_MAX, ""),
                           tombstone_record(12345)};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(dkv_rpc_encode_get_reply(&b, 10, DKV_RPC_OK, &recs[i]), 0);
        dkv_rpc_msg_t m = decode_one(&b);
        assert_int_equal(m.type, DKV_RPC_GET_REPLY);
        assert_int_equal(m.get_reply.status, DKV_RPC_OK);
        assert_record_eq(&m.get_reply.rec, &recs[i]);
        assert_int_equal(m.get_reply.rec_bytes.len, DKV_RECORD_HEADER_BYTES + recs[i].value.len);
        dkv_buf_cleanup(&b);
    }
    dkv_rpc_status_t sts[] = {DKV_RPC_ABSENT, DKV_RPC_ERROR};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(dkv_rpc_encode_get_reply(&b, 11, sts[i], NULL), 0);
        dkv_rpc_msg_t m = decode_one(&b);
        assert_int_equal(m.get_reply.status, sts[i]);
        assert_int_equal(m.get_reply.rec_bytes.len, 0);
        dkv_buf_cleanup(&b);
    }
}

static void test_put_round_trip_with_1mib_value(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    size_t vlen = 1u << 20;
    uint8_t *v = malloc(vlen);
    assert_non_null(v);
    for (size_t i = 0; i < vlen; i++) {
        v[i] = (uint8_t)(i * 31);
    }
    char key[DKV_RPC_MAX_KEY_BYTES];
    memset(key, 'k', sizeof(key));
    dkv_record_t r = {7, false, dkv_slice(v, vlen), 0};
    assert_int_equal(dkv_rpc_encode_put(&b, 1, dkv_slice(key, sizeof(key)), &r), 0);
    assert_true(b.len <= DKV_RPC_MAX_FRAME_BYTES);
    dkv_rpc_msg_t m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_PUT);
    assert_slice_eq(m.put.key, dkv_slice(key, sizeof(key)));
    assert_record_eq(&m.put.rec, &r);
    dkv_buf_cleanup(&b);

    dkv_record_t t = tombstone_record(8);
    assert_int_equal(dkv_rpc_encode_put(&b, 2, dkv_slice_str("gone"), &t), 0);
    m = decode_one(&b);
    assert_true(m.put.rec.tombstone);
    assert_true(m.put.rec.ts == 8);
    dkv_buf_cleanup(&b);

    assert_int_equal(dkv_rpc_encode_put_reply(&b, 3, DKV_RPC_OK), 0);
    m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_PUT_REPLY);
    assert_int_equal(m.put_reply.status, DKV_RPC_OK);
    dkv_buf_cleanup(&b);
    assert_int_equal(dkv_rpc_encode_put_reply(&b, 3, DKV_RPC_ERROR), 0);
    m = decode_one(&b);
    assert_int_equal(m.put_reply.status, DKV_RPC_ERROR);
    dkv_buf_cleanup(&b);
    free(v);
}

/* A replica whose WAL flush failed turns the OKs it already encoded into ERRORs, in place, and
 * touches nothing else: the frames around stay intact and in order. */
static void test_put_reply_fail_in_place(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    assert_int_equal(dkv_rpc_encode_put_reply(&b, 1, DKV_RPC_OK), 0);
    size_t second = b.len;
    assert_int_equal(dkv_rpc_encode_put_reply(&b, 2, DKV_RPC_OK), 0);
    size_t len = b.len;
    assert_int_equal(dkv_rpc_put_reply_fail(&b, second), 0);
    assert_int_equal(b.len, len);
    assert_int_equal(dkv_rpc_put_reply_fail(&b, 1), DKV_EINVAL); /* not a frame start */
    assert_int_equal(dkv_rpc_put_reply_fail(&b, len), DKV_EINVAL);
    dkv_rpc_msg_t m;
    size_t frame_len = 0;
    assert_int_equal(dkv_rpc_frame_peek(dkv_buf_slice(&b), DKV_RPC_MAX_FRAME_BYTES, &frame_len), 0);
    assert_int_equal(dkv_rpc_decode(dkv_slice(b.data, frame_len), &m), 0);
    assert_true(m.req_id == 1);
    assert_int_equal(m.put_reply.status, DKV_RPC_OK);
    assert_int_equal(dkv_rpc_decode(dkv_slice(b.data + second, len - second), &m), 0);
    assert_true(m.req_id == 2);
    assert_int_equal(m.put_reply.status, DKV_RPC_ERROR);
    dkv_buf_cleanup(&b);
    /* Any other frame is left alone. */
    assert_int_equal(dkv_rpc_encode_get_reply(&b, 3, DKV_RPC_ABSENT, NULL), 0);
    assert_int_equal(dkv_rpc_put_reply_fail(&b, 0), DKV_EINVAL);
    dkv_buf_cleanup(&b);
}

static void test_scan_round_trip(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_rpc_scan_t in[] = {
        {dkv_slice_str("a"), dkv_slice_str("m"), false, 100, 65536},
        {dkv_slice(NULL, 0), dkv_slice(NULL, 0), false, 1, 1},
        {dkv_slice_str("resume-here"), dkv_slice(NULL, 0), true, UINT32_MAX, UINT32_MAX},
    };
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        assert_int_equal(dkv_rpc_encode_scan(&b, 20 + i, &in[i]), 0);
        dkv_rpc_msg_t m = decode_one(&b);
        assert_int_equal(m.type, DKV_RPC_SCAN);
        assert_slice_eq(m.scan.start, in[i].start);
        assert_slice_eq(m.scan.end, in[i].end);
        assert_int_equal(m.scan.start_exclusive, in[i].start_exclusive);
        assert_int_equal(m.scan.max_records, in[i].max_records);
        assert_int_equal(m.scan.max_bytes, in[i].max_bytes);
        dkv_buf_cleanup(&b);
    }
}

static void test_scan_reply_round_trip(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    const char *keys[] = {"apple", "banana", "cherry"};
    dkv_record_t recs[] = {value_record(1, "red"), tombstone_record(2), value_record(3, "")};
    dkv_rpc_scan_writer_t w;
    dkv_rpc_scan_reply_begin(&w, &b, 77, DKV_RPC_MAX_FRAME_BYTES);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice_str(keys[i]), &recs[i]), 0);
    }
    assert_int_equal(w.count, 3);
    dkv_rpc_scan_reply_finish(&w, true);
    assert_int_equal(w.frame_bytes, b.len);
    dkv_rpc_msg_t m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_SCAN_REPLY);
    assert_true(m.req_id == 77);
    assert_int_equal(m.scan_reply.status, DKV_RPC_OK);
    assert_true(m.scan_reply.more);
    assert_int_equal(m.scan_reply.count, 3);
    assert_slice_eq(m.scan_reply.last_key, dkv_slice_str("cherry"));
    dkv_rpc_scan_iter_t it;
    dkv_rpc_scan_iter_init(&it, &m);
    for (size_t i = 0; i < 3; i++) {
        dkv_slice_t k;
        dkv_record_t r;
        assert_int_equal(dkv_rpc_scan_iter_next(&it, &k, &r), 0);
        assert_slice_eq(k, dkv_slice_str(keys[i]));
        assert_record_eq(&r, &recs[i]);
    }
    dkv_slice_t k;
    dkv_record_t r;
    assert_int_equal(dkv_rpc_scan_iter_next(&it, &k, &r), DKV_ENOTFOUND);
    dkv_buf_cleanup(&b);

    /* Empty reply: "more" is dropped so a caller cannot loop without progress. */
    dkv_rpc_scan_reply_begin(&w, &b, 78, DKV_RPC_MAX_FRAME_BYTES);
    dkv_rpc_scan_reply_finish(&w, true);
    m = decode_one(&b);
    assert_int_equal(m.scan_reply.count, 0);
    assert_false(m.scan_reply.more);
    assert_int_equal(m.scan_reply.last_key.len, 0);
    dkv_rpc_scan_iter_init(&it, &m);
    assert_int_equal(dkv_rpc_scan_iter_next(&it, &k, &r), DKV_ENOTFOUND);
    dkv_buf_cleanup(&b);

    /* Failing mid-scan leaves one well-formed error reply and nothing else. */
    dkv_rpc_encode_hello_ok(&b, 1, NULL);
    size_t before = b.len;
    dkv_rpc_scan_reply_begin(&w, &b, 79, DKV_RPC_MAX_FRAME_BYTES);
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice_str("x"), &recs[0]), 0);
    dkv_rpc_scan_reply_fail(&w);
    dkv_slice_t second = dkv_slice(b.data + before, b.len - before);
    dkv_rpc_msg_t m2;
    assert_int_equal(dkv_rpc_decode(second, &m2), 0);
    assert_int_equal(m2.type, DKV_RPC_SCAN_REPLY);
    assert_true(m2.req_id == 79);
    assert_int_equal(m2.scan_reply.status, DKV_RPC_ERROR);
    assert_int_equal(m2.scan_reply.count, 0);
    dkv_buf_cleanup(&b);
}

static void test_scan_reply_stops_at_frame_limit(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_buf_append(&b, "prefix", 6); /* the frame need not start at offset 0 */
    size_t vlen = 1u << 20;
    uint8_t *v = calloc(1, vlen);
    assert_non_null(v);
    dkv_record_t big = {1, false, dkv_slice(v, vlen), 0};
    char key[DKV_RPC_MAX_KEY_BYTES];
    memset(key, 'k', sizeof(key));
    dkv_rpc_scan_writer_t w;
    dkv_rpc_scan_reply_begin(&w, &b, 5, DKV_RPC_FRAME_LIMIT_MIN_BYTES);
    int rc = 0;
    uint32_t added = 0;
    while (rc == 0 && added < 100) {
        key[sizeof(key) - 1] = (char)('a' + added);
        rc = dkv_rpc_scan_reply_add(&w, dkv_slice(key, sizeof(key)), &big);
        if (rc == 0) {
            added++;
        }
    }
    assert_int_equal(rc, DKV_ETOOBIG);
    assert_int_equal(added, 2);
    size_t len_before = b.len;
    /* A refused add appended nothing; a small entry may still fit. */
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice(key, sizeof(key)), &big), DKV_ETOOBIG);
    assert_int_equal(b.len, len_before);
    dkv_record_t small = value_record(2, "small");
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice_str("zz"), &small), 0);
    dkv_rpc_scan_reply_finish(&w, true);
    dkv_slice_t frame = dkv_slice(b.data + 6, b.len - 6);
    assert_true(frame.len <= DKV_RPC_FRAME_LIMIT_MIN_BYTES);
    dkv_rpc_msg_t m;
    assert_int_equal(dkv_rpc_decode(frame, &m), 0);
    assert_int_equal(m.scan_reply.count, 3);
    assert_true(m.scan_reply.more);
    assert_slice_eq(m.scan_reply.last_key, dkv_slice_str("zz"));
    assert_memory_equal(b.data, "prefix", 6);
    dkv_buf_cleanup(&b);
    free(v);
}

static void test_pipelined_stream_decodes_in_order(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    encode_all(&b);
    /* clang-format off */
    static const uint8_t want[ENCODE_ALL_FRAMES] = {
        DKV_RPC_HELLO,     DKV_RPC_HELLO_OK,  DKV_RPC_HELLO_REJECT, DKV_RPC_GET,
        DKV_RPC_GET_REPLY, DKV_RPC_GET_REPLY, DKV_RPC_GET_REPLY,    DKV_RPC_PUT,
        DKV_RPC_PUT,       DKV_RPC_PUT_REPLY, DKV_RPC_PUT_REPLY,    DKV_RPC_SCAN,
        DKV_RPC_SCAN_REPLY};
    /* clang-format on */
    dkv_slice_t in = dkv_buf_slice(&b);
    size_t frames = 0;
    while (in.len > 0) {
        size_t n = 0;
        assert_int_equal(dkv_rpc_frame_peek(in, DKV_RPC_MAX_FRAME_BYTES, &n), 0);
        assert_true(n <= in.len);
        dkv_rpc_msg_t m;
        assert_int_equal(dkv_rpc_decode(dkv_slice(in.ptr, n), &m), 0);
        assert_true(frames < ENCODE_ALL_FRAMES);
        assert_int_equal(m.type, want[frames]);
        assert_string_not_equal(dkv_rpc_type_name(m.type), "UNKNOWN");
        in = dkv_slice(in.ptr + n, in.len - n);
        frames++;
    }
    assert_int_equal(frames, ENCODE_ALL_FRAMES);
    dkv_buf_cleanup(&b);
}

/* ---- malformed input ---- */

static void test_truncated_frames_need_more_or_eproto(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    encode_all(&b);
    dkv_slice_t in = dkv_buf_slice(&b);
    while (in.len > 0) {
        size_t n = 0;
        assert_int_equal(dkv_rpc_frame_peek(in, DKV_RPC_MAX_FRAME_BYTES, &n), 0);
        check_all_prefixes(dkv_slice(in.ptr, n));
        in = dkv_slice(in.ptr + n, in.len - n);
    }
    dkv_buf_cleanup(&b);
}

static void test_declared_length_limits(void **state)
{
    (void)state;
    size_t n = 0;
    /* Oversize: rejected from the 5 bytes of magic + length, before any payload arrives. */
    uint32_t too_big = DKV_RPC_MAX_FRAME_BYTES - 5 + 1;
    uint8_t h[5] = {DKV_RPC_MAGIC, (uint8_t)(too_big >> 24), (uint8_t)(too_big >> 16),
                    (uint8_t)(too_big >> 8), (uint8_t)too_big};
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(h, 5), DKV_RPC_MAX_FRAME_BYTES, &n), DKV_ETOOBIG);
    uint8_t huge[5] = {DKV_RPC_MAGIC, 0xFF, 0xFF, 0xFF, 0xFF};
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(huge, 5), DKV_RPC_MAX_FRAME_BYTES, &n),
                     DKV_ETOOBIG);

    /* Exactly the maximum is a frame size peek accepts. */
    uint32_t max = DKV_RPC_MAX_FRAME_BYTES - 5;
    uint8_t ok[DKV_RPC_HEADER_BYTES] = {DKV_RPC_MAGIC,        (uint8_t)(max >> 24),
                                        (uint8_t)(max >> 16), (uint8_t)(max >> 8),
                                        (uint8_t)max,         1,
                                        DKV_RPC_GET};
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(ok, 4), DKV_RPC_MAX_FRAME_BYTES, &n),
                     DKV_RPC_NEED_MORE);
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(ok, sizeof(ok)), DKV_RPC_MAX_FRAME_BYTES, &n), 0);
    assert_int_equal(n, DKV_RPC_MAX_FRAME_BYTES);

    /* A length too small to hold version, type and request id. */
    uint8_t small[DKV_RPC_HEADER_BYTES] = {DKV_RPC_MAGIC, 0, 0, 0, DKV_RPC_LENGTH_MIN - 1};
    assert_int_equal(
        dkv_rpc_frame_peek(dkv_slice(small, sizeof(small)), DKV_RPC_MAX_FRAME_BYTES, &n),
        DKV_EPROTO);
    dkv_rpc_msg_t m;
    assert_int_equal(dkv_rpc_decode(dkv_slice(small, sizeof(small)), &m), DKV_EPROTO);

    /* Encoders refuse values that cannot fit one frame, appending nothing. */
    dkv_buf_t b;
    dkv_buf_init(&b);
    size_t vlen = DKV_RPC_MAX_FRAME_BYTES;
    uint8_t *v = calloc(1, vlen);
    assert_non_null(v);
    dkv_record_t r = {1, false, dkv_slice(v, vlen), 0};
    assert_int_equal(dkv_rpc_encode_put(&b, 1, dkv_slice_str("k"), &r), DKV_ETOOBIG);
    assert_int_equal(dkv_rpc_encode_get_reply(&b, 1, DKV_RPC_OK, &r), DKV_ETOOBIG);
    r.value.len = SIZE_MAX; /* never read: the size check comes first */
    assert_int_equal(dkv_rpc_encode_put(&b, 1, dkv_slice_str("k"), &r), DKV_ETOOBIG);
    assert_int_equal(b.len, 0);
    dkv_buf_cleanup(&b);
    free(v);
}

static void test_frame_limit_follows_the_value_limit(void **state)
{
    (void)state;
    /* Never below the 0.2 limit, so default nodes accept what older nodes send. */
    assert_int_equal(dkv_rpc_frame_limit(0), DKV_RPC_FRAME_LIMIT_MIN_BYTES);
    assert_int_equal(dkv_rpc_frame_limit(1u << 20), DKV_RPC_FRAME_LIMIT_MIN_BYTES);
    assert_int_equal(dkv_rpc_frame_limit(2u << 20), DKV_RPC_FRAME_LIMIT_MIN_BYTES);
    assert_int_equal(dkv_rpc_frame_limit(16u << 20), (16u << 20) + DKV_RPC_FRAME_OVERHEAD_BYTES);
    assert_int_equal(dkv_rpc_frame_limit(DKV_MAX_VALUE_BYTES), DKV_RPC_MAX_FRAME_BYTES);
    assert_int_equal(dkv_rpc_frame_limit(SIZE_MAX), DKV_RPC_MAX_FRAME_BYTES);
}

/* A header declaring a whole frame of `frame_bytes`. */
static void frame_header_of(uint8_t h[DKV_RPC_HEADER_BYTES], size_t frame_bytes)
{
    uint32_t len = (uint32_t)(frame_bytes - 5);
    uint8_t hdr[DKV_RPC_HEADER_BYTES] = {
        DKV_RPC_MAGIC, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
        (uint8_t)len,  DKV_RPC_VERSION,      DKV_RPC_PUT};
    memcpy(h, hdr, sizeof(hdr));
}

static void test_peek_enforces_the_callers_limit_from_five_bytes(void **state)
{
    (void)state;
    size_t limit = dkv_rpc_frame_limit(8u << 20);
    uint8_t h[DKV_RPC_HEADER_BYTES];
    size_t n = 0;
    frame_header_of(h, limit);
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(h, sizeof(h)), limit, &n), 0);
    assert_int_equal(n, limit);
    frame_header_of(h, limit + 1);
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(h, 5), limit, &n), DKV_ETOOBIG);
    /* The same frame is fine for a node with a larger limit, and the pre-handshake 4 KiB cap
     * is just another limit. */
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(h, sizeof(h)), limit + 1, &n), 0);
    assert_int_equal(n, limit + 1);
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(h, 5), 4096, &n), DKV_ETOOBIG);
    /* A limit past the ceiling counts as the ceiling. */
    frame_header_of(h, DKV_RPC_MAX_FRAME_BYTES + 1);
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(h, 5), SIZE_MAX, &n), DKV_ETOOBIG);
}

static void test_8mib_value_fits_the_8mib_limit_in_put_get_reply_and_scan_reply(void **state)
{
    (void)state;
    size_t vlen = 8u << 20;
    size_t limit = dkv_rpc_frame_limit(vlen);
    uint8_t *v = malloc(vlen);
    assert_non_null(v);
    for (size_t i = 0; i < vlen; i++) {
        v[i] = (uint8_t)(i * 7 + 3);
    }
    char key[DKV_RPC_MAX_KEY_BYTES];
    memset(key, 'q', sizeof(key));
    dkv_record_t r = {9, false, dkv_slice(v, vlen), 3};
    dkv_buf_t b;
    dkv_buf_init(&b);

    assert_int_equal(dkv_rpc_encode_put(&b, 1, dkv_slice(key, sizeof(key)), &r), 0);
    size_t n = 0;
    assert_int_equal(dkv_rpc_frame_peek(dkv_buf_slice(&b), limit, &n), 0);
    assert_int_equal(n, b.len);
    /* The default node's limit refuses it from its first bytes. */
    assert_int_equal(dkv_rpc_frame_peek(dkv_buf_slice(&b), dkv_rpc_frame_limit(1u << 20), &n),
                     DKV_ETOOBIG);
    dkv_rpc_msg_t m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_PUT);
    assert_record_eq(&m.put.rec, &r);
    b.len = 0;

    assert_int_equal(dkv_rpc_encode_get_reply(&b, 2, DKV_RPC_OK, &r), 0);
    assert_int_equal(dkv_rpc_frame_peek(dkv_buf_slice(&b), limit, &n), 0);
    m = decode_one(&b);
    assert_record_eq(&m.get_reply.rec, &r);
    b.len = 0;

    /* A SCAN_REPLY always carries one full-size record with a maximal key, and no more. */
    dkv_rpc_scan_writer_t w;
    dkv_rpc_scan_reply_begin(&w, &b, 3, limit);
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice(key, sizeof(key)), &r), 0);
    key[0] = 'r';
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice(key, sizeof(key)), &r), DKV_ETOOBIG);
    dkv_rpc_scan_reply_finish(&w, true);
    assert_true(b.len <= limit);
    assert_int_equal(dkv_rpc_frame_peek(dkv_buf_slice(&b), limit, &n), 0);
    m = decode_one(&b);
    assert_int_equal(m.scan_reply.count, 1);
    assert_true(m.scan_reply.more);
    b.len = 0;

    /* A writer held to a smaller limit refuses even the first such entry. */
    dkv_rpc_scan_reply_begin(&w, &b, 4, dkv_rpc_frame_limit(1u << 20));
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice(key, sizeof(key)), &r), DKV_ETOOBIG);
    dkv_rpc_scan_reply_finish(&w, false);
    m = decode_one(&b);
    assert_int_equal(m.scan_reply.count, 0);
    dkv_buf_cleanup(&b);
    free(v);
}

static void test_not_magic_is_eproto_at_first_byte(void **state)
{
    (void)state;
    size_t n = 0;
    const char *http = "GET /v0/entity?id=1 HTTP/1.1\r\n";
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(http, 1), DKV_RPC_MAX_FRAME_BYTES, &n),
                     DKV_EPROTO);
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice_str(http), DKV_RPC_MAX_FRAME_BYTES, &n),
                     DKV_EPROTO);
    assert_int_equal(dkv_rpc_frame_peek(dkv_slice(NULL, 0), DKV_RPC_MAX_FRAME_BYTES, &n),
                     DKV_RPC_NEED_MORE);
    /* The magic is no ASCII letter, so the HTTP port can sniff it. */
    assert_true(DKV_RPC_MAGIC >= 0x80);
}

/* TREE and TREE_REPLY (anti-entropy): every form round-trips; every out-of-range field is
 * refused by the encoder and by the decoder. */
static void test_tree_request_round_trips_and_limits(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_rpc_msg_t m;
    assert_int_equal(dkv_rpc_encode_tree(&b, 9, DKV_RPC_TREE_SEGMENT, 65535, dkv_slice_str("k")), 0);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.type, DKV_RPC_TREE);
    assert_int_equal(m.req_id, 9);
    assert_int_equal(m.tree.kind, DKV_RPC_TREE_SEGMENT);
    assert_int_equal(m.tree.index, 65535);
    assert_true(dkv_slice_eq_str(m.tree.after, "k"));
    b.len = 0;
    assert_int_equal(dkv_rpc_encode_tree(&b, 1, DKV_RPC_TREE_LEAVES, 255, dkv_slice(NULL, 0)), 0);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.tree.index, 255);
    /* Encoder limits: branch 256, segment 65536, `after` on a non-segment, an unknown kind. */
    assert_int_equal(dkv_rpc_encode_tree(&b, 1, DKV_RPC_TREE_LEAVES, 256, dkv_slice(NULL, 0)),
                     DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_tree(&b, 1, DKV_RPC_TREE_SEGMENT, 65536, dkv_slice(NULL, 0)),
                     DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_tree(&b, 1, DKV_RPC_TREE_BRANCHES, 0, dkv_slice_str("k")),
                     DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_tree(&b, 1, 4, 0, dkv_slice(NULL, 0)), DKV_EINVAL);
    /* Decoder limits, from raw payloads: kind u8 | index u32 | after str16. */
    uint8_t bad_branch[] = {1, 0, 0, 1, 0, 0, 0};     /* LEAVES 256 */
    uint8_t bad_seg[] = {2, 0, 1, 0, 0, 0, 0};        /* SEGMENT 65536 */
    uint8_t bad_kind[] = {4, 0, 0, 0, 0, 0, 0};
    uint8_t branches_index[] = {0, 0, 0, 0, 1, 0, 0}; /* BRANCHES needs index 0 */
    uint8_t ok[] = {0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE, ok, sizeof(ok)), 0);
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE, bad_branch, sizeof(bad_branch)),
                     DKV_EPROTO);
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE, bad_seg, sizeof(bad_seg)),
                     DKV_EPROTO);
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE, bad_kind, sizeof(bad_kind)),
                     DKV_EPROTO);
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE, branches_index,
                                sizeof(branches_index)),
                     DKV_EPROTO);
    dkv_buf_cleanup(&b);
}

static void test_tree_replies_round_trip_and_entries_are_validated(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_rpc_msg_t m;
    uint64_t hashes[DKV_RPC_TREE_HASHES];
    for (uint32_t i = 0; i < DKV_RPC_TREE_HASHES; i++) {
        hashes[i] = 0x0102030405060708ull * (i + 1);
    }
    dkv_rpc_encode_tree_hashes(&b, 5, DKV_RPC_TREE_BRANCHES, hashes);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.type, DKV_RPC_TREE_REPLY);
    assert_int_equal(m.tree_reply.status, DKV_RPC_OK);
    assert_int_equal(m.tree_reply.kind, DKV_RPC_TREE_BRANCHES);
    for (uint32_t i = 0; i < DKV_RPC_TREE_HASHES; i++) {
        assert_true(dkv_rpc_tree_hash(&m, i) == hashes[i]);
    }
    /* A SEGMENT reply: two entries, a tombstone among them, and `more`. */
    dkv_buf_t entries;
    dkv_buf_init(&entries);
    dkv_rpc_tree_entry_t e1 = {.key = dkv_slice_str("a"), .ts = 7, .tombstone = false, .from = 3};
    dkv_rpc_tree_entry_t e2 = {.key = dkv_slice_str("b"), .ts = 1ull << 60, .tombstone = true,
                               .from = 2};
    dkv_rpc_tree_entry_t e0 = {.key = dkv_slice_str("z"), .ts = 1, .from = 0};
    assert_true(dkv_rpc_tree_entry_append(&entries, &e1) > 0);
    assert_true(dkv_rpc_tree_entry_append(&entries, &e2) > 0);
    assert_int_equal(dkv_rpc_tree_entry_append(&entries, &e0), 0); /* from 0: in no tree */
    b.len = 0;
    assert_int_equal(dkv_rpc_encode_tree_segment(&b, 6, dkv_buf_slice(&entries), 2, true), 0);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.tree_reply.kind, DKV_RPC_TREE_SEGMENT);
    assert_true(m.tree_reply.more);
    assert_int_equal(m.tree_reply.count, 2);
    dkv_slice_t rest = m.tree_reply.entries;
    dkv_rpc_tree_entry_t got;
    assert_int_equal(dkv_rpc_tree_iter_next(&rest, &got), 0);
    assert_true(dkv_slice_eq_str(got.key, "a") && got.ts == 7 && !got.tombstone && got.from == 3);
    assert_int_equal(dkv_rpc_tree_iter_next(&rest, &got), 0);
    assert_true(dkv_slice_eq_str(got.key, "b") && got.ts == (1ull << 60) && got.tombstone &&
                got.from == 2);
    assert_int_equal(dkv_rpc_tree_iter_next(&rest, &got), DKV_ENOTFOUND);
    /* `more` without entries would loop forever: refused. */
    assert_int_equal(dkv_rpc_encode_tree_segment(&b, 6, dkv_slice(NULL, 0), 0, true), DKV_EINVAL);
    /* Decoder: a count the bytes cannot hold; an entry with from 0; a bad flag bit. */
    uint8_t over[] = {0, 2, 0, 0, 0, 0, 9};
    uint8_t from0[] = {0, 2, 0, 0, 0, 0, 1, 0, 1, 'k', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0};
    uint8_t flag2[] = {0, 2, 0, 0, 0, 0, 1, 0, 1, 'k', 0, 0, 0, 0, 0, 0, 0, 1, 2, 1};
    uint8_t fine[] = {0, 2, 0, 0, 0, 0, 1, 0, 1, 'k', 0, 0, 0, 0, 0, 0, 0, 1, 1, 1};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE_REPLY, fine, sizeof(fine)), 0);
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE_REPLY, over, sizeof(over)),
                     DKV_EPROTO);
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE_REPLY, from0, sizeof(from0)),
                     DKV_EPROTO);
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE_REPLY, flag2, sizeof(flag2)),
                     DKV_EPROTO);
    /* Error and not-ready replies carry only the status. */
    b.len = 0;
    assert_int_equal(dkv_rpc_encode_tree_status(&b, 8, DKV_RPC_NOT_READY), 0);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.tree_reply.status, DKV_RPC_NOT_READY);
    assert_int_equal(dkv_rpc_encode_tree_status(&b, 8, DKV_RPC_OK), DKV_EINVAL);
    /* STATS: records and bytes, both u64. */
    b.len = 0;
    assert_int_equal(dkv_rpc_encode_tree(&b, 9, DKV_RPC_TREE_STATS, 0, dkv_slice(NULL, 0)), 0);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.tree.kind, DKV_RPC_TREE_STATS);
    assert_int_equal(dkv_rpc_encode_tree(&b, 9, DKV_RPC_TREE_STATS, 1, dkv_slice(NULL, 0)),
                     DKV_EINVAL);
    b.len = 0;
    dkv_rpc_encode_tree_stats(&b, 10, 1000000, 5ull << 32);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.tree_reply.kind, DKV_RPC_TREE_STATS);
    assert_true(m.tree_reply.records == 1000000 && m.tree_reply.bytes == (5ull << 32));
    uint8_t short_stats[] = {0, 3, 0, 0, 0, 0, 0, 0, 0, 1};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_TREE_REPLY, short_stats,
                                sizeof(short_stats)),
                     DKV_EPROTO);
    assert_string_equal(dkv_rpc_type_name(DKV_RPC_TREE), "TREE");
    assert_string_equal(dkv_rpc_type_name(DKV_RPC_TREE_REPLY), "TREE_REPLY");
    dkv_buf_cleanup(&entries);
    dkv_buf_cleanup(&b);
}

static void test_unknown_version_or_type_is_eproto(void **state)
{
    (void)state;
    uint8_t key[] = {0, 1, 'k'};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET, key, sizeof(key)), 0);
    assert_int_equal(decode_raw(0, DKV_RPC_GET, key, sizeof(key)), DKV_EPROTO);
    assert_int_equal(decode_raw(2, DKV_RPC_GET, key, sizeof(key)), DKV_EPROTO);
    uint8_t types[] = {0x00, 0x09, 0x7F, 0x80, 0x85, 0x89, 0xC0, 0xC3, 0xFF};
    for (size_t i = 0; i < sizeof(types); i++) {
        assert_int_equal(decode_raw(DKV_RPC_VERSION, types[i], key, sizeof(key)), DKV_EPROTO);
        assert_string_equal(dkv_rpc_type_name(types[i]), "UNKNOWN");
    }

    /* The header of a future version is still readable, to answer it with a HELLO_REJECT. */
    dkv_buf_t b;
    dkv_buf_init(&b);
    raw_frame(&b, 9, DKV_RPC_HELLO, 1234, "future", 6);
    dkv_rpc_header_t h;
    assert_int_equal(dkv_rpc_frame_header(dkv_buf_slice(&b), &h), 0);
    assert_int_equal(h.version, 9);
    assert_int_equal(h.type, DKV_RPC_HELLO);
    assert_true(h.req_id == 1234);
    assert_int_equal(h.payload_bytes, 6);
    /* A frame header over a slice that is not exactly one frame is refused. */
    assert_int_equal(dkv_rpc_frame_header(dkv_slice(b.data, b.len - 1), &h), DKV_EPROTO);
    dkv_buf_append(&b, "x", 1);
    assert_int_equal(dkv_rpc_frame_header(dkv_buf_slice(&b), &h), DKV_EPROTO);
    dkv_rpc_msg_t m;
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), DKV_EPROTO);
    dkv_buf_cleanup(&b);
}

static void test_garbage_record_is_eproto(void **state)
{
    (void)state;
    /* GET_REPLY found: status, u32 record length, record. */
    uint8_t good[] = {DKV_RPC_OK, 0, 0, 0, 11, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5, 'v'};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET_REPLY, good, sizeof(good)), 0);

    uint8_t p[sizeof(good)];
    memcpy(p, good, sizeof(p));
    p[5] = 3; /* record version (1 and 2 exist) */
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET_REPLY, p, sizeof(p)), DKV_EPROTO);
    memcpy(p, good, sizeof(p));
    p[6] = 0x02; /* unknown flag bit */
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET_REPLY, p, sizeof(p)), DKV_EPROTO);
    memcpy(p, good, sizeof(p));
    p[6] = DKV_RECORD_FLAG_TOMBSTONE; /* tombstone with a value */
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET_REPLY, p, sizeof(p)), DKV_EPROTO);
    /* Record shorter than its header: length 9 with 9 bytes following and nothing else. */
    uint8_t shortrec[] = {DKV_RPC_OK, 0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET_REPLY, shortrec, sizeof(shortrec)),
                     DKV_EPROTO);
    /* Record length past the end of the frame, and leaving bytes over. */
    memcpy(p, good, sizeof(p));
    p[4] = 12;
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET_REPLY, p, sizeof(p)), DKV_EPROTO);
    p[4] = 10;
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET_REPLY, p, sizeof(p)), DKV_EPROTO);
    p[4] = 0xFF;
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_GET_REPLY, p, sizeof(p)), DKV_EPROTO);

    /* Garbage record inside a PUT and inside a SCAN_REPLY entry. */
    uint8_t put[] = {0, 1, 'k', 0, 0, 0, 10, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 1};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_PUT, put, sizeof(put)), DKV_EPROTO);
    put[8] = 0;
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_PUT, put, sizeof(put)), 0);
    /* clang-format off */
    uint8_t scan[] = {DKV_RPC_OK, 0, 0, 0, 1,                             /* status, count */
                      0, 1, 'k', 0, 0, 0, 10, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1, /* bad record ver */
                      0, 0, 1, 'k'};                                    /* more, last key */
    /* clang-format on */
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_SCAN_REPLY, scan, sizeof(scan)),
                     DKV_EPROTO);
    scan[12] = 1;
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_SCAN_REPLY, scan, sizeof(scan)), 0);
    /* last_key must repeat the last entry's key. */
    scan[sizeof(scan) - 1] = 'j';
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_SCAN_REPLY, scan, sizeof(scan)),
                     DKV_EPROTO);
}

/* The identity block (cluster/identity.h) that may end HELLO and HELLO_OK. */
static void test_hello_identity_block_roundtrip_and_limits(void **state)
{
    (void)state;
    dkv_ident_info_t id;
    for (unsigned i = 0; i < DKV_NODE_ID_BYTES; i++) {
        id.node_id[i] = (uint8_t)(0xA0 + i);
        id.known_you[i] = (uint8_t)(0x10 + i);
    }
    id.flags = DKV_IDENT_FLAG_HAS_DATA | DKV_IDENT_FLAG_READY;
    dkv_buf_t b;
    dkv_buf_init(&b);
    assert_int_equal(dkv_rpc_encode_hello(&b, 7, 42, dkv_slice_str("http://a:1"), &id, NULL), 0);
    dkv_rpc_msg_t m;
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_true(m.hello.has_ident);
    assert_memory_equal(m.hello.ident.node_id, id.node_id, DKV_NODE_ID_BYTES);
    assert_memory_equal(m.hello.ident.known_you, id.known_you, DKV_NODE_ID_BYTES);
    assert_int_equal(m.hello.ident.flags, id.flags);
    assert_true(m.hello.fingerprint == 42);
    /* The block is exactly DKV_RPC_IDENTITY_BYTES: one byte less or more is malformed. */
    size_t hello_len = b.len;
    b.data[hello_len - 1 - DKV_RPC_IDENTITY_BYTES + 1 + DKV_NODE_ID_BYTES] = 0x80; /* flags */
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), DKV_EPROTO);
    b.len = 0;

    dkv_rpc_encode_hello_ok(&b, 9, &id);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_true(m.hello_ok.has_ident);
    assert_memory_equal(m.hello_ok.ident.node_id, id.node_id, DKV_NODE_ID_BYTES);
    b.len = 0;
    dkv_rpc_encode_hello_ok(&b, 9, NULL);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_false(m.hello_ok.has_ident);

    uint8_t short_block[DKV_RPC_IDENTITY_BYTES - 1] = {0};
    assert_int_equal(decode_raw(1, DKV_RPC_HELLO_OK, short_block, sizeof(short_block)),
                     DKV_EPROTO);
    uint8_t long_block[DKV_RPC_IDENTITY_BYTES + 1] = {0};
    assert_int_equal(decode_raw(1, DKV_RPC_HELLO_OK, long_block, sizeof(long_block)), DKV_EPROTO);
    uint8_t block[DKV_RPC_IDENTITY_BYTES] = {0};
    assert_int_equal(decode_raw(1, DKV_RPC_HELLO_OK, block, sizeof(block)), 0);

    /* Unknown flag bits are refused by the encoder. */
    id.flags = 0x04;
    assert_int_equal(dkv_rpc_encode_hello(&b, 7, 42, dkv_slice_str("http://a:1"), &id, NULL),
                     DKV_EINVAL);
    /* The authenticated handshake: HELLO with a nonce (needs the identity block), then
     * HELLO_CHALLENGE and AUTH with fixed-size fields. */
    id.flags = DKV_IDENT_FLAG_READY;
    uint8_t nonce[DKV_RPC_NONCE_BYTES];
    uint8_t tag[DKV_RPC_TAG_BYTES];
    for (unsigned i = 0; i < DKV_RPC_NONCE_BYTES; i++) {
        nonce[i] = (uint8_t)(0x40 + i);
        tag[i] = (uint8_t)(0x80 + i);
    }
    b.len = 0;
    assert_int_equal(dkv_rpc_encode_hello(&b, 7, 42, dkv_slice_str("http://a:1"), NULL, nonce),
                     DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_hello(&b, 7, 42, dkv_slice_str("http://a:1"), &id, nonce), 0);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_true(m.hello.has_ident && m.hello.has_nonce);
    assert_memory_equal(m.hello.nonce, nonce, sizeof(nonce));
    b.data[b.len - 1] ^= 1; /* any nonce is fine... */
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    b.len--; /* ...but a nonce one byte short is not */
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), DKV_EPROTO);
    b.len = 0;
    dkv_rpc_encode_hello_challenge(&b, 7, nonce, tag);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.type, DKV_RPC_HELLO_CHALLENGE);
    assert_memory_equal(m.challenge.nonce, nonce, sizeof(nonce));
    assert_memory_equal(m.challenge.tag, tag, sizeof(tag));
    assert_int_equal(decode_raw(1, DKV_RPC_HELLO_CHALLENGE, nonce, sizeof(nonce)), DKV_EPROTO);
    b.len = 0;
    dkv_rpc_encode_auth(&b, 8, tag);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.type, DKV_RPC_AUTH);
    assert_memory_equal(m.auth.tag, tag, sizeof(tag));
    assert_int_equal(decode_raw(1, DKV_RPC_AUTH, tag, sizeof(tag) - 1), DKV_EPROTO);
    assert_string_equal(dkv_rpc_type_name(DKV_RPC_AUTH), "AUTH");

    /* NOT_READY is a GET_REPLY status without a record. */
    b.len = 0;
    assert_int_equal(dkv_rpc_encode_get_reply(&b, 3, DKV_RPC_NOT_READY, NULL), 0);
    assert_int_equal(dkv_rpc_decode(dkv_buf_slice(&b), &m), 0);
    assert_int_equal(m.get_reply.status, DKV_RPC_NOT_READY);
    dkv_buf_cleanup(&b);
}

static void test_malformed_fields_are_eproto(void **state)
{
    (void)state;
    /* GET: empty key, key over the limit, length past the end, trailing byte. */
    uint8_t empty[] = {0, 0};
    assert_int_equal(decode_raw(1, DKV_RPC_GET, empty, sizeof(empty)), DKV_EPROTO);
    uint8_t *big = calloc(1, 2 + DKV_RPC_MAX_KEY_BYTES + 1);
    assert_non_null(big);
    big[0] = (uint8_t)((DKV_RPC_MAX_KEY_BYTES + 1) >> 8);
    big[1] = (uint8_t)(DKV_RPC_MAX_KEY_BYTES + 1);
    assert_int_equal(decode_raw(1, DKV_RPC_GET, big, 2 + DKV_RPC_MAX_KEY_BYTES + 1), DKV_EPROTO);
    free(big);
    uint8_t past[] = {0, 5, 'k'};
    assert_int_equal(decode_raw(1, DKV_RPC_GET, past, sizeof(past)), DKV_EPROTO);
    uint8_t trailing[] = {0, 1, 'k', 0};
    assert_int_equal(decode_raw(1, DKV_RPC_GET, trailing, sizeof(trailing)), DKV_EPROTO);
    /* HELLO_OK's payload is nothing or exactly an identity block. */
    assert_int_equal(decode_raw(1, DKV_RPC_HELLO_OK, "x", 1), DKV_EPROTO);
    /* HELLO: empty URL, missing fingerprint. */
    uint8_t hello[] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0};
    assert_int_equal(decode_raw(1, DKV_RPC_HELLO, hello, sizeof(hello)), DKV_EPROTO);
    assert_int_equal(decode_raw(1, DKV_RPC_HELLO, hello, 4), DKV_EPROTO);
    /* Status bytes out of range. */
    uint8_t st = 4;
    assert_int_equal(decode_raw(1, DKV_RPC_GET_REPLY, &st, 1), DKV_EPROTO);
    st = DKV_RPC_ABSENT; /* not a PUT_REPLY status */
    assert_int_equal(decode_raw(1, DKV_RPC_PUT_REPLY, &st, 1), DKV_EPROTO);
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN_REPLY, &st, 1), DKV_EPROTO);
    assert_int_equal(decode_raw(1, DKV_RPC_PUT_REPLY, NULL, 0), DKV_EPROTO);
    /* GET_REPLY absent with a record behind it. */
    uint8_t absent_rec[] = {DKV_RPC_ABSENT, 0, 0, 0, 10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(decode_raw(1, DKV_RPC_GET_REPLY, absent_rec, sizeof(absent_rec)), DKV_EPROTO);

    /* SCAN: flags, zero limits, exclusive start without a start. */
    uint8_t scan[] = {0, 0, 1, 'a', 0, 0, 0, 0, 0, 1, 0, 0, 0, 1};
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN, scan, sizeof(scan)), 0);
    scan[0] = 0x02;
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN, scan, sizeof(scan)), DKV_EPROTO);
    scan[0] = 0;
    scan[9] = 0;
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN, scan, sizeof(scan)), DKV_EPROTO);
    scan[9] = 1;
    scan[13] = 0;
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN, scan, sizeof(scan)), DKV_EPROTO);
    uint8_t excl[] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1};
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN, excl, sizeof(excl)), DKV_EPROTO);

    /* SCAN_REPLY invariants: more needs entries, last key iff entries, count the bytes hold. */
    uint8_t more_empty[] = {DKV_RPC_OK, 0, 0, 0, 0, 1, 0, 0};
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN_REPLY, more_empty, sizeof(more_empty)), DKV_EPROTO);
    uint8_t done_empty[] = {DKV_RPC_OK, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN_REPLY, done_empty, sizeof(done_empty)), 0);
    uint8_t lastkey_empty[] = {DKV_RPC_OK, 0, 0, 0, 0, 0, 0, 1, 'k'};
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN_REPLY, lastkey_empty, sizeof(lastkey_empty)),
                     DKV_EPROTO);
    uint8_t count_lies[] = {DKV_RPC_OK, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0};
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN_REPLY, count_lies, sizeof(count_lies)), DKV_EPROTO);
    uint8_t bad_flags[] = {DKV_RPC_OK, 0, 0, 0, 0, 0x80, 0, 0};
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN_REPLY, bad_flags, sizeof(bad_flags)), DKV_EPROTO);
    uint8_t err_body[] = {DKV_RPC_ERROR, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN_REPLY, err_body, 1), 0);
    assert_int_equal(decode_raw(1, DKV_RPC_SCAN_REPLY, err_body, sizeof(err_body)), DKV_EPROTO);
}

static void test_every_single_byte_change_is_safe(void **state)
{
    (void)state;
    /* Any one-byte corruption of a valid stream decodes or fails cleanly (ASan watches). */
    dkv_buf_t b;
    dkv_buf_init(&b);
    encode_all(&b);
    static const uint8_t vals[] = {0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF};
    for (size_t i = 0; i < b.len; i++) {
        uint8_t orig = b.data[i];
        for (size_t j = 0; j < sizeof(vals); j++) {
            b.data[i] = vals[j];
            dkv_slice_t in = dkv_buf_slice(&b);
            size_t n = 0;
            while (dkv_rpc_frame_peek(in, DKV_RPC_MAX_FRAME_BYTES, &n) == 0 && n <= in.len) {
                dkv_rpc_msg_t m;
                (void)dkv_rpc_decode(dkv_slice(in.ptr, n), &m);
                in = dkv_slice(in.ptr + n, in.len - n);
            }
        }
        b.data[i] = orig;
    }
    dkv_buf_cleanup(&b);
}

static void test_encoders_refuse_bad_arguments(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    char key[DKV_RPC_MAX_KEY_BYTES + 1];
    memset(key, 'k', sizeof(key));
    dkv_slice_t empty = dkv_slice(NULL, 0);
    dkv_slice_t too_long = dkv_slice(key, sizeof(key));
    dkv_record_t v = value_record(1, "v");
    dkv_record_t bad = {1, true, dkv_slice_str("not empty"), 0};

    assert_int_equal(dkv_rpc_encode_get(&b, 1, empty), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_get(&b, 1, too_long), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_put(&b, 1, empty, &v), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_put(&b, 1, too_long, &v), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_put(&b, 1, dkv_slice_str("k"), &bad), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_put(&b, 1, dkv_slice_str("k"), NULL), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_get_reply(&b, 1, DKV_RPC_OK, NULL), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_get_reply(&b, 1, DKV_RPC_OK, &bad), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_get_reply(&b, 1, (dkv_rpc_status_t)7, &v), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_put_reply(&b, 1, DKV_RPC_ABSENT), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_hello(&b, 1, 0, empty, NULL, NULL), DKV_EINVAL);
    char url[DKV_RPC_MAX_URL_BYTES + 1];
    memset(url, 'u', sizeof(url));
    assert_int_equal(dkv_rpc_encode_hello(&b, 1, 0, dkv_slice(url, sizeof(url)), NULL, NULL),
                     DKV_EINVAL);
    dkv_rpc_scan_t s = {too_long, empty, false, 1, 1};
    assert_int_equal(dkv_rpc_encode_scan(&b, 1, &s), DKV_EINVAL);
    s = (dkv_rpc_scan_t){empty, too_long, false, 1, 1};
    assert_int_equal(dkv_rpc_encode_scan(&b, 1, &s), DKV_EINVAL);
    s = (dkv_rpc_scan_t){empty, empty, true, 1, 1};
    assert_int_equal(dkv_rpc_encode_scan(&b, 1, &s), DKV_EINVAL);
    s = (dkv_rpc_scan_t){empty, empty, false, 0, 1};
    assert_int_equal(dkv_rpc_encode_scan(&b, 1, &s), DKV_EINVAL);
    s = (dkv_rpc_scan_t){empty, empty, false, 1, 0};
    assert_int_equal(dkv_rpc_encode_scan(&b, 1, &s), DKV_EINVAL);
    assert_int_equal(b.len, 0);

    dkv_rpc_scan_writer_t w;
    dkv_rpc_scan_reply_begin(&w, &b, 1, DKV_RPC_MAX_FRAME_BYTES);
    size_t len = b.len;
    assert_int_equal(dkv_rpc_scan_reply_add(&w, empty, &v), DKV_EINVAL);
    assert_int_equal(dkv_rpc_scan_reply_add(&w, too_long, &v), DKV_EINVAL);
    assert_int_equal(dkv_rpc_scan_reply_add(&w, dkv_slice_str("k"), &bad), DKV_EINVAL);
    assert_int_equal(b.len, len);
    dkv_rpc_scan_reply_finish(&w, false);
    dkv_rpc_msg_t m = decode_one(&b);
    assert_int_equal(m.scan_reply.count, 0);
    dkv_buf_cleanup(&b);
}

static void test_digest_round_trip_and_canonical_form(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    assert_int_equal(dkv_rpc_encode_digest(&b, 9, dkv_slice_str("key")), 0);
    dkv_rpc_msg_t m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_DIGEST);
    assert_true(m.req_id == 9);
    assert_slice_eq(m.digest.key, dkv_slice_str("key"));
    assert_string_equal(dkv_rpc_type_name(DKV_RPC_DIGEST), "DIGEST");
    assert_string_equal(dkv_rpc_type_name(DKV_RPC_DIGEST_REPLY), "DIGEST_REPLY");
    check_all_prefixes(dkv_buf_slice(&b));
    dkv_buf_cleanup(&b);

    /* A value's digest: its hash is XXH3-64 of the value, the same on every node. */
    dkv_record_t v = {UINT64_MAX - 1, false, dkv_slice_str("hello"), 3};
    dkv_rpc_digest_t d;
    dkv_rpc_digest_of(&v, &d);
    assert_true(d.ts == UINT64_MAX - 1);
    assert_false(d.tombstone);
    assert_int_equal(d.from, 3);
    assert_true(d.value_hash == dkv_rpc_value_hash(dkv_slice_str("hello")));
    assert_true(d.value_hash != dkv_rpc_value_hash(dkv_slice_str("hellp")));
    assert_int_equal(dkv_rpc_encode_digest_reply(&b, 10, DKV_RPC_OK, &d), 0);
    /* header + status + ts u64 + flags + from + hash u64 */
    assert_int_equal(b.len, DKV_RPC_HEADER_BYTES + 1 + DKV_RPC_DIGEST_BYTES);
    m = decode_one(&b);
    assert_int_equal(m.type, DKV_RPC_DIGEST_REPLY);
    assert_int_equal(m.digest_reply.status, DKV_RPC_OK);
    assert_true(m.digest_reply.digest.ts == d.ts);
    assert_int_equal(m.digest_reply.digest.tombstone, false);
    assert_int_equal(m.digest_reply.digest.from, 3);
    assert_true(m.digest_reply.digest.value_hash == d.value_hash);
    check_all_prefixes(dkv_buf_slice(&b));
    dkv_buf_cleanup(&b);

    /* A tombstone has no value to hash: 0, and a nonzero hash is malformed. */
    dkv_record_t t = {5, true, dkv_slice(NULL, 0), 0};
    dkv_rpc_digest_of(&t, &d);
    assert_true(d.value_hash == 0 && d.tombstone && d.from == 0);
    assert_int_equal(dkv_rpc_encode_digest_reply(&b, 11, DKV_RPC_OK, &d), 0);
    m = decode_one(&b);
    assert_true(m.digest_reply.digest.tombstone);
    dkv_buf_cleanup(&b);
    d.value_hash = 1;
    assert_int_equal(dkv_rpc_encode_digest_reply(&b, 11, DKV_RPC_OK, &d), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_digest_reply(&b, 11, DKV_RPC_OK, NULL), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_digest_reply(&b, 11, (dkv_rpc_status_t)9, &d), DKV_EINVAL);
    assert_int_equal(b.len, 0);
    uint8_t tomb_hash[1 + DKV_RPC_DIGEST_BYTES] = {
        DKV_RPC_OK, 0, 0, 0, 0, 0, 0, 0, 5, DKV_RECORD_FLAG_TOMBSTONE, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    assert_int_equal(
        decode_raw(DKV_RPC_VERSION, DKV_RPC_DIGEST_REPLY, tomb_hash, sizeof(tomb_hash)),
        DKV_EPROTO);
    tomb_hash[18] = 0;
    assert_int_equal(
        decode_raw(DKV_RPC_VERSION, DKV_RPC_DIGEST_REPLY, tomb_hash, sizeof(tomb_hash)), 0);
    /* Unknown flag bits, a short or long payload, an unknown status. */
    tomb_hash[9] = 0x02;
    assert_int_equal(
        decode_raw(DKV_RPC_VERSION, DKV_RPC_DIGEST_REPLY, tomb_hash, sizeof(tomb_hash)),
        DKV_EPROTO);
    tomb_hash[9] = DKV_RECORD_FLAG_TOMBSTONE;
    assert_int_equal(
        decode_raw(DKV_RPC_VERSION, DKV_RPC_DIGEST_REPLY, tomb_hash, sizeof(tomb_hash) - 1),
        DKV_EPROTO);
    uint8_t longer[2 + DKV_RPC_DIGEST_BYTES] = {0};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_DIGEST_REPLY, longer, sizeof(longer)),
                     DKV_EPROTO);
    uint8_t st[] = {4};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_DIGEST_REPLY, st, 1), DKV_EPROTO);

    /* The other statuses carry nothing. */
    dkv_rpc_status_t sts[] = {DKV_RPC_ABSENT, DKV_RPC_ERROR, DKV_RPC_NOT_READY};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(dkv_rpc_encode_digest_reply(&b, 12, sts[i], NULL), 0);
        assert_int_equal(b.len, DKV_RPC_HEADER_BYTES + 1);
        m = decode_one(&b);
        assert_int_equal(m.digest_reply.status, sts[i]);
        dkv_buf_cleanup(&b);
        uint8_t extra[] = {(uint8_t)sts[i], 0};
        assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_DIGEST_REPLY, extra, 2), DKV_EPROTO);
    }
    /* A DIGEST's key obeys the key limits. */
    char key[DKV_RPC_MAX_KEY_BYTES + 1];
    memset(key, 'k', sizeof(key));
    assert_int_equal(dkv_rpc_encode_digest(&b, 1, dkv_slice(NULL, 0)), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_digest(&b, 1, dkv_slice(key, sizeof(key))), DKV_EINVAL);
    assert_int_equal(dkv_rpc_encode_digest(&b, 1, dkv_slice(key, sizeof(key) - 1)), 0);
    dkv_buf_cleanup(&b);
    uint8_t empty_key[] = {0, 0};
    assert_int_equal(decode_raw(DKV_RPC_VERSION, DKV_RPC_DIGEST, empty_key, 2), DKV_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hello_round_trip),
        cmocka_unit_test(test_get_round_trip),
        cmocka_unit_test(test_ping_pong_round_trip_and_exact_lengths),
        cmocka_unit_test(test_get_reply_round_trip),
        cmocka_unit_test(test_put_round_trip_with_1mib_value),
        cmocka_unit_test(test_put_reply_fail_in_place),
        cmocka_unit_test(test_scan_round_trip),
        cmocka_unit_test(test_scan_reply_round_trip),
        cmocka_unit_test(test_scan_reply_stops_at_frame_limit),
        cmocka_unit_test(test_pipelined_stream_decodes_in_order),
        cmocka_unit_test(test_truncated_frames_need_more_or_eproto),
        cmocka_unit_test(test_declared_length_limits),
        cmocka_unit_test(test_frame_limit_follows_the_value_limit),
        cmocka_unit_test(test_peek_enforces_the_callers_limit_from_five_bytes),
        cmocka_unit_test(test_8mib_value_fits_the_8mib_limit_in_put_get_reply_and_scan_reply),
        cmocka_unit_test(test_not_magic_is_eproto_at_first_byte),
        cmocka_unit_test(test_unknown_version_or_type_is_eproto),
        cmocka_unit_test(test_tree_request_round_trips_and_limits),
        cmocka_unit_test(test_tree_replies_round_trip_and_entries_are_validated),
        cmocka_unit_test(test_garbage_record_is_eproto),
        cmocka_unit_test(test_hello_identity_block_roundtrip_and_limits),
        cmocka_unit_test(test_malformed_fields_are_eproto),
        cmocka_unit_test(test_every_single_byte_change_is_safe),
        cmocka_unit_test(test_encoders_refuse_bad_arguments),
        cmocka_unit_test(test_digest_round_trip_and_canonical_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
