/*
 * Unit tests of the versioned record (common/record.h): codec round trips and exact header bytes,
 * every way a stored or received record can be malformed, the last-write-wins order of API.md §6,
 * and the store's merge-operator core (dkv_store_newest) that applies that order on a replica.
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
#include "store/store.h"

/* ---- helpers ---- */

static dkv_record_t val(uint64_t ts, const void *v, size_t len)
{
    dkv_record_t r = {ts, false, dkv_slice(v, len), 0};
    return r;
}

static dkv_record_t tomb(uint64_t ts)
{
    dkv_record_t r = {ts, true, dkv_slice(NULL, 0), 0};
    return r;
}

static void assert_roundtrip(const dkv_record_t *r)
{
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_record_encode(r, &b);
    assert_int_equal(b.len, DKV_RECORD_HEADER_BYTES + r->value.len);
    dkv_record_t got;
    assert_int_equal(dkv_record_decode(dkv_buf_slice(&b), &got), 0);
    assert_true(got.ts == r->ts);
    assert_int_equal(got.tombstone, r->tombstone);
    assert_int_equal(got.from, r->from);
    assert_int_equal(got.value.len, r->value.len);
    if (r->value.len > 0) {
        assert_memory_equal(got.value.ptr, r->value.ptr, r->value.len);
        /* The decoded value borrows from the input, it is not a copy. */
        assert_ptr_equal(got.value.ptr, b.data + DKV_RECORD_HEADER_BYTES);
    }
    assert_int_equal(dkv_record_cmp(&got, r), 0);
    dkv_buf_cleanup(&b);
}

/* Writes the header of a record with timestamp `ts` (from = 0). */
static void encode_hdr(uint64_t ts, bool tombstone, uint8_t out[DKV_RECORD_HEADER_BYTES])
{
    dkv_record_t r = {ts, tombstone, dkv_slice(NULL, 0), 0};
    dkv_record_encode_header(&r, out);
}

/* Decodes `len` bytes and expects DKV_EPROTO, with `out` left untouched. */
static void assert_rejected(const uint8_t *bytes, size_t len)
{
    dkv_record_t out = {0xdeadbeefu, true, dkv_slice("sentinel", 8), 0};
    assert_int_equal(dkv_record_decode(dkv_slice(bytes, len), &out), DKV_EPROTO);
    assert_true(out.ts == 0xdeadbeefu);
    assert_true(out.tombstone);
    assert_int_equal(out.value.len, 8);
}

static int sign(int x)
{
    return (x > 0) - (x < 0);
}

/* ---- codec ---- */

static void test_roundtrip_value(void **state)
{
    (void)state;
    const uint8_t v[] = {'h', 'i', 0, '\r', '\n', 0xff};
    dkv_record_t r = val(123456789, v, sizeof(v));
    assert_roundtrip(&r);
}

static void test_roundtrip_empty_value(void **state)
{
    (void)state;
    dkv_record_t r = val(42, NULL, 0);
    assert_roundtrip(&r);
    /* An empty value is not a tombstone. */
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_record_encode(&r, &b);
    dkv_record_t got;
    assert_int_equal(dkv_record_decode(dkv_buf_slice(&b), &got), 0);
    assert_false(got.tombstone);
    dkv_buf_cleanup(&b);
}

static void test_roundtrip_tombstone(void **state)
{
    (void)state;
    dkv_record_t r = tomb(7);
    assert_roundtrip(&r);
}

static void test_roundtrip_max_and_zero_ts(void **state)
{
    (void)state;
    dkv_record_t a = val(UINT64_MAX, "x", 1);
    dkv_record_t b = tomb(UINT64_MAX);
    dkv_record_t c = val(0, "y", 1);
    assert_roundtrip(&a);
    assert_roundtrip(&b);
    assert_roundtrip(&c);
}

static void test_roundtrip_large_value(void **state)
{
    (void)state;
    size_t n = 1u << 20;
    uint8_t *v = malloc(n);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        v[i] = (uint8_t)(i * 31 + 7);
    }
    dkv_record_t r = val(1, v, n);
    assert_roundtrip(&r);
    free(v);
}

static void test_header_exact_bytes(void **state)
{
    (void)state;
    const uint8_t want_value[] = {2, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 3, 'a', 'b'};
    dkv_record_t r = val(0x0102030405060708ull, "ab", 2);
    r.from = 3;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_record_encode(&r, &b);
    assert_int_equal(b.len, sizeof(want_value));
    assert_memory_equal(b.data, want_value, sizeof(want_value));
    dkv_buf_cleanup(&b);

    const uint8_t want_tomb[] = {2, 1, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10, 0xff};
    dkv_record_t t = tomb(0xfedcba9876543210ull);
    t.from = 0xff;
    uint8_t hdr[DKV_RECORD_HEADER_BYTES];
    dkv_record_encode_header(&t, hdr);
    assert_memory_equal(hdr, want_tomb, sizeof(want_tomb));

    /* encode_header and encode agree. */
    dkv_buf_init(&b);
    dkv_record_encode(&t, &b);
    assert_int_equal(b.len, DKV_RECORD_HEADER_BYTES);
    assert_memory_equal(b.data, want_tomb, sizeof(want_tomb));
    dkv_buf_cleanup(&b);
}

static void test_encode_appends(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_buf_append_str(&b, "prefix");
    dkv_record_t r = val(5, "v", 1);
    dkv_record_encode(&r, &b);
    assert_int_equal(b.len, 6 + DKV_RECORD_HEADER_BYTES + 1);
    assert_memory_equal(b.data, "prefix", 6);
    dkv_record_t got;
    assert_int_equal(dkv_record_decode(dkv_slice(b.data + 6, b.len - 6), &got), 0);
    assert_true(got.ts == 5);
    dkv_buf_cleanup(&b);
}

static void test_truncated_header_rejected(void **state)
{
    (void)state;
    uint8_t hdr[DKV_RECORD_HEADER_BYTES];
    dkv_record_t v = val(99, "", 0);
    dkv_record_encode_header(&v, hdr);
    for (size_t len = 0; len < DKV_RECORD_HEADER_BYTES; len++) {
        /* A heap copy of exactly `len` bytes, so ASan catches a read past the end. */
        uint8_t *p = malloc(len > 0 ? len : 1);
        assert_non_null(p);
        memcpy(p, hdr, len);
        assert_rejected(p, len);
        free(p);
    }
    uint8_t tomb_hdr[DKV_RECORD_HEADER_BYTES];
    dkv_record_t t = tomb(99);
    dkv_record_encode_header(&t, tomb_hdr);
    for (size_t len = 0; len < DKV_RECORD_HEADER_BYTES; len++) {
        assert_rejected(tomb_hdr, len);
    }
    assert_rejected(NULL, 0);
}

/* Records written before version 2 (no `from` byte) still decode, with from = 0 (unknown). */
static void test_version1_still_decodes(void **state)
{
    (void)state;
    const uint8_t v1_value[] = {1, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00, 'x', 'y'};
    dkv_record_t got = {0};
    assert_int_equal(dkv_record_decode(dkv_slice(v1_value, sizeof(v1_value)), &got), 0);
    assert_true(got.ts == 0x100);
    assert_false(got.tombstone);
    assert_int_equal(got.from, 0);
    assert_int_equal(got.value.len, 2);
    assert_memory_equal(got.value.ptr, "xy", 2);

    const uint8_t v1_tomb[] = {1, 1, 0, 0, 0, 0, 0, 0, 0, 7};
    assert_int_equal(dkv_record_decode(dkv_slice(v1_tomb, sizeof(v1_tomb)), &got), 0);
    assert_true(got.tombstone);
    assert_true(got.ts == 7);
    assert_int_equal(got.from, 0);
    /* A version-1 tombstone with a trailing byte is a tombstone with a value: rejected. */
    const uint8_t v1_bad[] = {1, 1, 0, 0, 0, 0, 0, 0, 0, 7, 3};
    assert_rejected(v1_bad, sizeof(v1_bad));
    /* A version-1 header cut short is rejected. */
    assert_rejected(v1_value, DKV_RECORD_V1_HEADER_BYTES - 1);
    /* The LWW order ignores `from`: the same version written with different replica sets. */
    dkv_record_t a = val(5, "v", 1);
    dkv_record_t b = a;
    a.from = 1;
    b.from = 3;
    assert_int_equal(dkv_record_cmp(&a, &b), 0);
}

static void test_unknown_version_rejected(void **state)
{
    (void)state;
    const unsigned versions[] = {0, 3, 0x7f, 0x80, 0xff};
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        uint8_t rec[DKV_RECORD_HEADER_BYTES + 1];
        dkv_record_t v = val(1, "", 0);
        dkv_record_encode_header(&v, rec);
        rec[0] = (uint8_t)versions[i];
        rec[DKV_RECORD_HEADER_BYTES] = 'v';
        assert_rejected(rec, sizeof(rec));
        assert_rejected(rec, DKV_RECORD_HEADER_BYTES);
    }
}

static void test_unknown_flag_bits_rejected(void **state)
{
    (void)state;
    for (unsigned bit = 1; bit < 8; bit++) {
        uint8_t rec[DKV_RECORD_HEADER_BYTES];
        encode_hdr(1, false, rec);
        rec[1] = (uint8_t)(1u << bit);
        assert_rejected(rec, sizeof(rec));
        rec[1] = (uint8_t)((1u << bit) | DKV_RECORD_FLAG_TOMBSTONE);
        assert_rejected(rec, sizeof(rec));
    }
    uint8_t rec[DKV_RECORD_HEADER_BYTES];
    encode_hdr(1, false, rec);
    rec[1] = 0xff;
    assert_rejected(rec, sizeof(rec));
}

static void test_tombstone_with_value_rejected(void **state)
{
    (void)state;
    uint8_t rec[DKV_RECORD_HEADER_BYTES + 3];
    encode_hdr(1, true, rec);
    memcpy(rec + DKV_RECORD_HEADER_BYTES, "abc", 3);
    for (size_t len = DKV_RECORD_HEADER_BYTES + 1; len <= sizeof(rec); len++) {
        assert_rejected(rec, len);
    }
    dkv_record_t out;
    assert_int_equal(dkv_record_decode(dkv_slice(rec, DKV_RECORD_HEADER_BYTES), &out), 0);
    assert_true(out.tombstone);
}

/* ---- version order (API.md §6) ---- */

static void test_cmp_greater_ts_wins(void **state)
{
    (void)state;
    dkv_record_t old_val = val(10, "a", 1);
    dkv_record_t new_val = val(11, "z", 1);
    dkv_record_t old_tomb = tomb(10);
    dkv_record_t new_tomb = tomb(11);
    assert_true(dkv_record_cmp(&new_val, &old_val) > 0);
    assert_true(dkv_record_cmp(&old_val, &new_val) < 0);
    /* A newer value beats an older tombstone (re-create), and the other way round. */
    assert_true(dkv_record_cmp(&new_val, &old_tomb) > 0);
    assert_true(dkv_record_cmp(&new_tomb, &old_val) > 0);
    assert_true(dkv_record_cmp(&old_tomb, &new_val) < 0);
    /* Unsigned 64-bit comparison: the top bit is not a sign. */
    dkv_record_t top = val(UINT64_MAX, "a", 1);
    dkv_record_t low = val(1, "a", 1);
    assert_true(dkv_record_cmp(&top, &low) > 0);
    dkv_record_t hi_bit = val(1ull << 63, "a", 1);
    dkv_record_t below = val((1ull << 63) - 1, "a", 1);
    assert_true(dkv_record_cmp(&hi_bit, &below) > 0);
}

static void test_cmp_equal_ts_tombstone_beats_value(void **state)
{
    (void)state;
    dkv_record_t t = tomb(5);
    dkv_record_t v = val(5, "", 0);
    dkv_record_t w = val(5, "\x00", 1);
    assert_true(dkv_record_cmp(&t, &v) > 0);
    assert_true(dkv_record_cmp(&v, &t) < 0);
    assert_true(dkv_record_cmp(&t, &w) > 0);
    dkv_record_t t2 = tomb(5);
    assert_int_equal(dkv_record_cmp(&t, &t2), 0);
}

static void test_cmp_equal_ts_smaller_value_wins(void **state)
{
    (void)state;
    dkv_record_t a = val(5, "a", 1);
    dkv_record_t b = val(5, "b", 1);
    assert_true(dkv_record_cmp(&a, &b) > 0);
    assert_true(dkv_record_cmp(&b, &a) < 0);
    /* Unsigned bytes: 0x7f < 0x80 < 0xff. */
    dkv_record_t x7f = val(5, "\x7f", 1);
    dkv_record_t x80 = val(5, "\x80", 1);
    dkv_record_t xff = val(5, "\xff", 1);
    assert_true(dkv_record_cmp(&x7f, &x80) > 0);
    assert_true(dkv_record_cmp(&x80, &xff) > 0);
    /* Bytes after a NUL still count (not a C-string compare). */
    dkv_record_t n1 = val(5, "a\0b", 3);
    dkv_record_t n2 = val(5, "a\0c", 3);
    assert_true(dkv_record_cmp(&n1, &n2) > 0);
}

static void test_cmp_proper_prefix_is_newer(void **state)
{
    (void)state;
    dkv_record_t empty = val(5, "", 0);
    dkv_record_t ab = val(5, "ab", 2);
    dkv_record_t abc = val(5, "abc", 3);
    dkv_record_t ab0 = val(5, "ab\0", 3);
    assert_true(dkv_record_cmp(&ab, &abc) > 0);
    assert_true(dkv_record_cmp(&abc, &ab) < 0);
    assert_true(dkv_record_cmp(&empty, &ab) > 0);
    assert_true(dkv_record_cmp(&ab, &ab0) > 0);
}

static void test_cmp_identical_is_zero(void **state)
{
    (void)state;
    char b1[] = "same";
    char b2[] = "same";
    dkv_record_t a = val(9, b1, 4);
    dkv_record_t b = val(9, b2, 4); /* equal bytes at a different address */
    assert_int_equal(dkv_record_cmp(&a, &b), 0);
    assert_int_equal(dkv_record_cmp(&a, &a), 0);
    dkv_record_t e1 = val(9, NULL, 0);
    dkv_record_t e2 = val(9, "", 0);
    assert_int_equal(dkv_record_cmp(&e1, &e2), 0);
}

static void test_cmp_is_a_total_order(void **state)
{
    (void)state;
    dkv_record_t set[] = {
        val(1, "", 0),     val(1, "a", 1),   val(1, "ab", 2),   val(1, "b", 1),
        val(1, "\xff", 1), tomb(1),          val(2, "", 0),     val(2, "a", 1),
        tomb(2),           val(0, "z", 1),   tomb(0),           val(UINT64_MAX, "a", 1),
        tomb(UINT64_MAX),  val(2, "a\0", 2), val(1, "\x00", 1),
    };
    size_t n = sizeof(set) / sizeof(set[0]);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(dkv_record_cmp(&set[i], &set[i]), 0);
        for (size_t j = 0; j < n; j++) {
            int ij = dkv_record_cmp(&set[i], &set[j]);
            int ji = dkv_record_cmp(&set[j], &set[i]);
            assert_int_equal(sign(ij), -sign(ji));
            if (i != j) {
                assert_int_not_equal(ij, 0); /* the set holds distinct versions */
            }
            for (size_t k = 0; k < n; k++) {
                int jk = dkv_record_cmp(&set[j], &set[k]);
                if (ij > 0 && jk > 0) {
                    assert_true(dkv_record_cmp(&set[i], &set[k]) > 0);
                }
            }
        }
    }
}

/* ---- the replica's merge: dkv_store_newest ---- */

static void encode_into(dkv_buf_t *b, dkv_record_t r)
{
    dkv_buf_init(b);
    dkv_record_encode(&r, b);
}

static void test_newest_picks_newest(void **state)
{
    (void)state;
    dkv_buf_t b[5];
    encode_into(&b[0], val(3, "old", 3));
    encode_into(&b[1], val(7, "b", 1));
    encode_into(&b[2], tomb(7));
    encode_into(&b[3], val(7, "a", 1));
    encode_into(&b[4], val(6, "x", 1));
    dkv_slice_t s[5];
    for (int i = 0; i < 5; i++) {
        s[i] = dkv_buf_slice(&b[i]);
    }
    assert_int_equal(dkv_store_newest(s, 5), 2); /* ts 7 tombstone */
    assert_int_equal(dkv_store_newest(s, 2), 1);
    assert_int_equal(dkv_store_newest(s, 1), 0);
    dkv_slice_t vals[3] = {s[1], s[3], s[0]};
    assert_int_equal(dkv_store_newest(vals, 3), 1); /* equal ts: smaller value */
    dkv_slice_t rev[5] = {s[4], s[3], s[2], s[1], s[0]};
    assert_int_equal(dkv_store_newest(rev, 5), 2);
    for (int i = 0; i < 5; i++) {
        dkv_buf_cleanup(&b[i]);
    }
}

static void test_newest_skips_undecodable(void **state)
{
    (void)state;
    dkv_buf_t good;
    encode_into(&good, val(1, "ok", 2));
    uint8_t bad_version[DKV_RECORD_HEADER_BYTES];
    encode_hdr(UINT64_MAX, false, bad_version);
    bad_version[0] = 9;
    uint8_t bad_tomb[DKV_RECORD_HEADER_BYTES + 1];
    encode_hdr(UINT64_MAX, true, bad_tomb);
    bad_tomb[DKV_RECORD_HEADER_BYTES] = 'x';
    dkv_slice_t s[4] = {dkv_slice(bad_version, sizeof(bad_version)), dkv_slice("short", 5),
                        dkv_buf_slice(&good), dkv_slice(bad_tomb, sizeof(bad_tomb))};
    assert_int_equal(dkv_store_newest(s, 4), 2);
    dkv_buf_cleanup(&good);
}

static void test_newest_none_decodes(void **state)
{
    (void)state;
    dkv_slice_t s[2] = {dkv_slice("", 0),
                        dkv_slice("\x02\x00\x00\x00\x00\x00\x00\x00\x00\x01", 10)};
    assert_int_equal(dkv_store_newest(s, 2), -1);
    assert_int_equal(dkv_store_newest(s, 0), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_value),
        cmocka_unit_test(test_roundtrip_empty_value),
        cmocka_unit_test(test_roundtrip_tombstone),
        cmocka_unit_test(test_roundtrip_max_and_zero_ts),
        cmocka_unit_test(test_roundtrip_large_value),
        cmocka_unit_test(test_header_exact_bytes),
        cmocka_unit_test(test_encode_appends),
        cmocka_unit_test(test_truncated_header_rejected),
        cmocka_unit_test(test_version1_still_decodes),
        cmocka_unit_test(test_unknown_version_rejected),
        cmocka_unit_test(test_unknown_flag_bits_rejected),
        cmocka_unit_test(test_tombstone_with_value_rejected),
        cmocka_unit_test(test_cmp_greater_ts_wins),
        cmocka_unit_test(test_cmp_equal_ts_tombstone_beats_value),
        cmocka_unit_test(test_cmp_equal_ts_smaller_value_wins),
        cmocka_unit_test(test_cmp_proper_prefix_is_newer),
        cmocka_unit_test(test_cmp_identical_is_zero),
        cmocka_unit_test(test_cmp_is_a_total_order),
        cmocka_unit_test(test_newest_picks_newest),
        cmocka_unit_test(test_newest_skips_undecodable),
        cmocka_unit_test(test_newest_none_decodes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
