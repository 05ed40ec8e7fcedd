/*
 * libFuzzer target for the record codec (common/record.h): decodes arbitrary bytes as a record;
 * whatever decodes must re-encode to exactly the same bytes (one encoding per record), borrow its
 * value from the input, and be equal to itself in the last-write-wins order. The store's merge
 * core (dkv_store_newest) is fed the same bytes split in two, and must pick a decodable record.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/record.h"
#include "store/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void check_one(dkv_slice_t in)
{
    dkv_record_t r;
    memset(&r, 0xa5, sizeof(r));
    int rc = dkv_record_decode(in, &r);
    if (rc != 0) {
        CHECK(rc == DKV_EPROTO);
        return;
    }
    /* Version 1 has no `from` byte; every encoder writes version 2. */
    bool v1 = in.ptr[0] == 1;
    size_t hdr_bytes = v1 ? DKV_RECORD_V1_HEADER_BYTES : DKV_RECORD_HEADER_BYTES;
    CHECK(in.len >= hdr_bytes);
    CHECK(r.value.len == in.len - hdr_bytes);
    CHECK(r.value.ptr == in.ptr + hdr_bytes);
    CHECK(!r.tombstone || r.value.len == 0);
    CHECK(!v1 || r.from == 0);
    CHECK(dkv_record_cmp(&r, &r) == 0);

    dkv_buf_t out;
    dkv_buf_init(&out);
    dkv_record_encode(&r, &out);
    CHECK(out.len == DKV_RECORD_HEADER_BYTES + r.value.len);
    CHECK(out.data[0] == DKV_RECORD_VERSION);
    CHECK(memcmp(out.data + 1, in.ptr + 1, DKV_RECORD_V1_HEADER_BYTES - 1) == 0);
    CHECK(memcmp(out.data + DKV_RECORD_HEADER_BYTES, r.value.ptr, r.value.len) == 0);
    if (!v1) {
        CHECK(memcmp(out.data, in.ptr, in.len) == 0);
    }

    uint8_t hdr[DKV_RECORD_HEADER_BYTES];
    dkv_record_encode_header(&r, hdr);
    CHECK(memcmp(hdr, out.data, sizeof(hdr)) == 0);

    /* A copy at another address is the same version. */
    dkv_record_t again;
    CHECK(dkv_record_decode(dkv_buf_slice(&out), &again) == 0);
    CHECK(dkv_record_cmp(&r, &again) == 0 && dkv_record_cmp(&again, &r) == 0);
    dkv_buf_cleanup(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dkv_slice_t in = dkv_slice(data, size);
    check_one(in);

    /* The first byte splits the rest into two candidate records for the merge operator. */
    if (size < 1) {
        return 0;
    }
    size_t cut = 1 + data[0] % size; /* 1..size */
    dkv_slice_t recs[2] = {dkv_slice(data + 1, cut - 1), dkv_slice(data + cut, size - cut)};
    check_one(recs[0]);
    check_one(recs[1]);
    dkv_record_t a;
    dkv_record_t b;
    bool ok_a = dkv_record_decode(recs[0], &a) == 0;
    bool ok_b = dkv_record_decode(recs[1], &b) == 0;
    int best = dkv_store_newest(recs, 2);
    if (!ok_a && !ok_b) {
        CHECK(best == -1);
    } else if (ok_a && ok_b) {
        int c = dkv_record_cmp(&a, &b);
        int d = dkv_record_cmp(&b, &a);
        CHECK((c > 0) == (d < 0) && (c == 0) == (d == 0)); /* antisymmetric */
        CHECK(best == (c >= 0 ? 0 : 1));
    } else {
        CHECK(best == (ok_a ? 0 : 1));
    }
    return 0;
}
