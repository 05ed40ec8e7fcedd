/*
 * Unit tests of dkvctl's pure logic (ctl/ctl.h): key percent-encoding (checked against the
 * node's own decoder), scan-output escaping, endpoint lists, the retry and failover policy, and
 * the chunk-framing decoder fed byte by byte and in every split.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/buf.h"
#include "common/err.h"
#include "ctl/ctl.h"
#include "router/router.h"

/* ---- helpers ---- */

static void assert_buf_eq(const dkv_buf_t *b, const char *want)
{
    size_t n = strlen(want);
    if (b->len != n || (n > 0 && memcmp(b->data, want, n) != 0)) {
        fail_msg("got \"%.*s\" (%zu bytes), want \"%s\" (%zu bytes)", (int)b->len,
                 b->data != NULL ? (const char *)b->data : "", b->len, want, n);
    }
}

/* Collected chunks, each followed by '|' so boundaries show. */
typedef struct collected {
    dkv_buf_t all;
    size_t count;
    int fail_at; /* the callback returns an error on this chunk (1-based), 0: never */
} collected_t;

static int collect_cb(void *arg, dkv_slice_t chunk)
{
    collected_t *c = arg;
    c->count++;
    if (c->fail_at > 0 && (size_t)c->fail_at == c->count) {
        return DKV_ECANCELED;
    }
    dkv_buf_append(&c->all, chunk.ptr, chunk.len);
    dkv_buf_append(&c->all, "|", 1);
    return 0;
}

/* Feeds `wire` in pieces of `step` bytes; returns the first error or 0. */
static int feed_in_steps(dkv_ctl_chunks_t *d, const char *wire, size_t len, size_t step)
{
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        int rc = dkv_ctl_chunks_feed(d, dkv_slice(wire + off, n));
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* Runs a whole body through a fresh decoder; returns the result and fills `c`. */
static int decode(const char *wire, size_t len, size_t step, size_t max_chunk, collected_t *c,
                  bool *done)
{
    dkv_buf_init(&c->all);
    c->count = 0;
    dkv_ctl_chunks_t d;
    dkv_ctl_chunks_init(&d, max_chunk, collect_cb, c);
    int rc = feed_in_steps(&d, wire, len, step);
    *done = dkv_ctl_chunks_done(&d);
    dkv_ctl_chunks_cleanup(&d);
    return rc;
}

/* ---- percent-encoding ---- */

static void test_pct_encode_escapes_all_but_unreserved(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_ctl_pct_encode(dkv_slice_str("a b+c/d%e&f=g~h_i.j-k"), &b);
    assert_buf_eq(&b, "a%20b%2Bc%2Fd%25e%26f%3Dg~h_i.j-k");
    b.len = 0;
    const uint8_t odd[] = {0x00, 0xff, 0xc3, 0xa9, '\n', '?', '#'};
    dkv_ctl_pct_encode(dkv_slice(odd, sizeof(odd)), &b);
    assert_buf_eq(&b, "%00%FF%C3%A9%0A%3F%23");
    b.len = 0;
    dkv_ctl_pct_encode(dkv_slice(NULL, 0), &b);
    assert_int_equal(b.len, 0);
    dkv_buf_cleanup(&b);
}

/* Every byte value, alone and in one key, survives the node's decoder unchanged. */
static void test_pct_encode_round_trips_through_node_decoder(void **state)
{
    (void)state;
    uint8_t all[256];
    for (int i = 0; i < 256; i++) {
        all[i] = (uint8_t)i;
    }
    for (int i = 0; i <= 256; i++) {
        dkv_slice_t in = i < 256 ? dkv_slice(&all[i], 1) : dkv_slice(all, sizeof(all));
        dkv_buf_t enc;
        dkv_buf_t dec;
        dkv_buf_init(&enc);
        dkv_buf_init(&dec);
        dkv_ctl_pct_encode(in, &enc);
        for (size_t k = 0; k < enc.len; k++) {
            /* Nothing the query splitter or a form decoder could misread. */
            assert_true(strchr("&=+ #?", enc.data[k]) == NULL);
        }
        assert_int_equal(dkv_percent_decode(dkv_buf_slice(&enc), &dec), 0);
        assert_int_equal(dec.len, in.len);
        assert_memory_equal(dec.data, in.ptr, in.len);
        dkv_buf_cleanup(&enc);
        dkv_buf_cleanup(&dec);
    }
}

/* ---- scan escaping ---- */

static void test_escape_makes_fields_tab_and_newline_free(void **state)
{
    (void)state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    const uint8_t in[] = {'a', '\t', 'b', '\n', '\r', '\\', 0x00, 0x1f, 0x7f, 0xc3, 0xa9, ' '};
    dkv_ctl_escape(dkv_slice(in, sizeof(in)), &b);
    assert_buf_eq(&b, "a\\tb\\n\\r\\\\\\x00\\x1f\\x7f\xc3\xa9 ");
    b.len = 0;
    for (int i = 0; i < 256; i++) {
        uint8_t c = (uint8_t)i;
        dkv_ctl_escape(dkv_slice(&c, 1), &b);
    }
    assert_null(memchr(b.data, '\t', b.len));
    assert_null(memchr(b.data, '\n', b.len));
    assert_null(memchr(b.data, '\r', b.len));
    dkv_buf_cleanup(&b);
}

/* ---- endpoints ---- */

static void test_endpoints_parse_normalises_entries(void **state)
{
    (void)state;
    dkv_ctl_endpoints_t e;
    assert_int_equal(dkv_ctl_endpoints_parse(" http://a:1/ ,b:2,https://c:3//,  d  ", &e), 0);
    assert_int_equal(e.n, 4);
    assert_string_equal(e.urls[0], "http://a:1");
    assert_string_equal(e.urls[1], "http://b:2");
    assert_string_equal(e.urls[2], "https://c:3");
    assert_string_equal(e.urls[3], "http://d");
    dkv_ctl_endpoints_cleanup(&e);
    assert_int_equal(e.n, 0);
    dkv_ctl_endpoints_cleanup(&e); /* twice is harmless */
}

static void test_endpoints_parse_rejects_empty_entries_and_too_many(void **state)
{
    (void)state;
    dkv_ctl_endpoints_t e = {(char **)0x1, 77}; /* must stay untouched on errors */
    assert_int_equal(dkv_ctl_endpoints_parse("", &e), DKV_EINVAL);
    assert_int_equal(dkv_ctl_endpoints_parse("a:1,,b:2", &e), DKV_EINVAL);
    assert_int_equal(dkv_ctl_endpoints_parse("a:1,", &e), DKV_EINVAL);
    assert_int_equal(dkv_ctl_endpoints_parse(" / ", &e), DKV_EINVAL);
    dkv_buf_t many;
    dkv_buf_init(&many);
    for (int i = 0; i <= DKV_CTL_MAX_ENDPOINTS; i++) {
        dkv_buf_printf(&many, "%sh:%d", i > 0 ? "," : "", i);
    }
    dkv_buf_append(&many, "", 1);
    assert_int_equal(dkv_ctl_endpoints_parse((const char *)many.data, &e), DKV_EINVAL);
    assert_int_equal(e.n, 77);
    dkv_buf_cleanup(&many);
}

/* ---- retry policy ---- */

static void test_retry_fails_over_once_per_endpoint(void **state)
{
    (void)state;
    dkv_ctl_retry_t r;
    unsigned wait = 99;
    dkv_ctl_retry_init(&r, 3, 5, 100, 5000);
    assert_int_equal(r.endpoint, 0);
    assert_true(dkv_ctl_retry_next(&r, DKV_CTL_DOWN, &wait));
    assert_int_equal(r.endpoint, 1);
    assert_int_equal(wait, 0);
    assert_true(dkv_ctl_retry_next(&r, DKV_CTL_DOWN, &wait));
    assert_int_equal(r.endpoint, 2);
    assert_false(dkv_ctl_retry_next(&r, DKV_CTL_DOWN, &wait)); /* all three down */

    dkv_ctl_retry_init(&r, 1, 5, 100, 5000);
    assert_false(dkv_ctl_retry_next(&r, DKV_CTL_DOWN, &wait));

    dkv_ctl_retry_init(&r, 3, 5, 100, 5000);
    assert_true(dkv_ctl_retry_next(&r, DKV_CTL_DOWN, &wait));
    assert_false(dkv_ctl_retry_next(&r, DKV_CTL_ANSWERED, &wait));
    assert_int_equal(r.endpoint, 1); /* the endpoint that answered */
}

static void test_retry_backs_off_exponentially_on_503_with_a_cap_and_a_bound(void **state)
{
    (void)state;
    dkv_ctl_retry_t r;
    unsigned wait = 0;
    dkv_ctl_retry_init(&r, 2, 6, 100, 1000);
    const unsigned want[] = {100, 200, 400, 800, 1000, 1000};
    for (size_t i = 0; i < 6; i++) {
        assert_true(dkv_ctl_retry_next(&r, DKV_CTL_BUSY, &wait));
        assert_int_equal(wait, want[i]);
        assert_int_equal(r.endpoint, 0); /* a busy node is up: retried where it is */
    }
    assert_false(dkv_ctl_retry_next(&r, DKV_CTL_BUSY, &wait));

    /* No retries allowed: the first 503 is final. */
    dkv_ctl_retry_init(&r, 2, 0, 100, 1000);
    assert_false(dkv_ctl_retry_next(&r, DKV_CTL_BUSY, &wait));

    /* A large retry count never overflows the delay. */
    dkv_ctl_retry_init(&r, 1, 100, 4000000000u, 4000000000u);
    for (int i = 0; i < 100; i++) {
        assert_true(dkv_ctl_retry_next(&r, DKV_CTL_BUSY, &wait));
        assert_int_equal(wait, 4000000000u);
    }
}

/* ---- chunk framing ---- */

/* API.md §10's example, records a->x, bb->"", c->yz, split at every possible step. */
static void test_chunks_split_records_whatever_the_read_sizes(void **state)
{
    (void)state;
    static const char wire[] = "3\r\na\nx\r\n"
                               "3\r\nbb\n\r\n"
                               "4\r\nc\nyz\r\n"
                               "0\r\n\r\n";
    for (size_t step = 1; step <= sizeof(wire) - 1; step++) {
        collected_t c = {0};
        bool done = false;
        assert_int_equal(decode(wire, sizeof(wire) - 1, step, 1 << 20, &c, &done), 0);
        assert_true(done);
        assert_int_equal(c.count, 3);
        assert_buf_eq(&c.all, "a\nx|bb\n|c\nyz|");
        dkv_buf_cleanup(&c.all);
    }
}

/* Payload bytes that look like framing (CRLF, "0\r\n\r\n") stay payload. */
static void test_chunks_payload_may_hold_framing_bytes(void **state)
{
    (void)state;
    static const char wire[] = "A;ext=1\r\nk\n0\r\n\r\n\r\nx\r\n"
                               "0\r\nTrailer: t\r\n\r\n";
    collected_t c = {0};
    bool done = false;
    assert_int_equal(decode(wire, sizeof(wire) - 1, 1, 64, &c, &done), 0);
    assert_true(done);
    assert_int_equal(c.count, 1);
    assert_int_equal(c.all.len, 11);
    assert_memory_equal(c.all.data, "k\n0\r\n\r\n\r\nx|", 11);
    dkv_buf_cleanup(&c.all);
}

static void test_chunks_reject_bad_framing(void **state)
{
    (void)state;
    static const struct {
        const char *wire;
        int rc;
    } cases[] = {
        {"z\r\nabc", DKV_EPROTO},              /* not hex */
        {"\r\n", DKV_EPROTO},                  /* empty size */
        {"3 x\r\nabc\r\n", DKV_EPROTO},        /* junk after the size */
        {"3\nabc\r\n", DKV_EPROTO},            /* LF without CR */
        {"3\r\nabcX\n", DKV_EPROTO},           /* no CRLF after the data */
        {"3\r\nabc\rX", DKV_EPROTO},           /* CR then not LF */
        {"11111111111111111\r\n", DKV_EPROTO}, /* more than 64 bits */
        {"0\r\n\r\nX", DKV_EPROTO},            /* bytes after the end */
        {"41\r\n", DKV_ETOOBIG},               /* 65 > max of 64 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        collected_t c = {0};
        bool done = true;
        int rc = decode(cases[i].wire, strlen(cases[i].wire), 1, 64, &c, &done);
        if (rc != cases[i].rc) {
            fail_msg("case %zu \"%s\": rc %d, want %d", i, cases[i].wire, rc, cases[i].rc);
        }
        assert_false(done);
        dkv_buf_cleanup(&c.all);
    }
    /* An over-long size line is refused before it grows without bound. */
    dkv_buf_t junk;
    dkv_buf_init(&junk);
    for (int i = 0; i < 10000; i++) {
        dkv_buf_append(&junk, "0", 1);
    }
    collected_t c = {0};
    bool done = true;
    assert_int_equal(decode((const char *)junk.data, junk.len, 100, 64, &c, &done), DKV_EPROTO);
    dkv_buf_cleanup(&c.all);
    dkv_buf_cleanup(&junk);
}

static void test_chunks_callback_error_stops_and_sticks(void **state)
{
    (void)state;
    static const char wire[] = "1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n";
    collected_t c = {.fail_at = 2};
    dkv_buf_init(&c.all);
    dkv_ctl_chunks_t d;
    dkv_ctl_chunks_init(&d, 64, collect_cb, &c);
    assert_int_equal(dkv_ctl_chunks_feed(&d, dkv_slice(wire, sizeof(wire) - 1)), DKV_ECANCELED);
    assert_int_equal(c.count, 2);
    assert_int_equal(dkv_ctl_chunks_feed(&d, dkv_slice("0\r\n\r\n", 5)), DKV_ECANCELED);
    assert_false(dkv_ctl_chunks_done(&d));
    assert_buf_eq(&c.all, "a|");
    dkv_ctl_chunks_cleanup(&d);
    dkv_buf_cleanup(&c.all);
}

static void test_chunks_unfinished_body_is_not_done(void **state)
{
    (void)state;
    collected_t c = {0};
    bool done = true;
    assert_int_equal(decode("3\r\na\nx\r\n", 8, 8, 64, &c, &done), 0);
    assert_false(done);
    assert_int_equal(c.count, 1);
    dkv_buf_cleanup(&c.all);
}

static void test_split_record_at_first_newline(void **state)
{
    (void)state;
    dkv_slice_t k;
    dkv_slice_t v;
    assert_int_equal(dkv_ctl_split_record(dkv_slice("key\nva\nlue", 10), &k, &v), 0);
    assert_int_equal(k.len, 3);
    assert_memory_equal(k.ptr, "key", 3);
    assert_int_equal(v.len, 6);
    assert_memory_equal(v.ptr, "va\nlue", 6);
    assert_int_equal(dkv_ctl_split_record(dkv_slice("k\n", 2), &k, &v), 0);
    assert_int_equal(v.len, 0);
    assert_int_equal(dkv_ctl_split_record(dkv_slice("novalue", 7), &k, &v), DKV_EPROTO);
    assert_int_equal(dkv_ctl_split_record(dkv_slice("\nv", 2), &k, &v), DKV_EPROTO);
    assert_int_equal(dkv_ctl_split_record(dkv_slice(NULL, 0), &k, &v), DKV_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pct_encode_escapes_all_but_unreserved),
        cmocka_unit_test(test_pct_encode_round_trips_through_node_decoder),
        cmocka_unit_test(test_escape_makes_fields_tab_and_newline_free),
        cmocka_unit_test(test_endpoints_parse_normalises_entries),
        cmocka_unit_test(test_endpoints_parse_rejects_empty_entries_and_too_many),
        cmocka_unit_test(test_retry_fails_over_once_per_endpoint),
        cmocka_unit_test(test_retry_backs_off_exponentially_on_503_with_a_cap_and_a_bound),
        cmocka_unit_test(test_chunks_split_records_whatever_the_read_sizes),
        cmocka_unit_test(test_chunks_payload_may_hold_framing_bytes),
        cmocka_unit_test(test_chunks_reject_bad_framing),
        cmocka_unit_test(test_chunks_callback_error_stops_and_sticks),
        cmocka_unit_test(test_chunks_unfinished_body_is_not_done),
        cmocka_unit_test(test_split_record_at_first_newline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
