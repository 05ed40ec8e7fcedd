/*
 * Unit tests of dkvctl's pure logic (ctl/ctl.h): key percent-encoding (checked against the
 * node's own decoder), scan-output escaping, endpoint lists, the retry and failover policy, the
 * llhttp-based splitter of a range response into records (fed in every split), and the reader of
 * a /metrics page (checked against the node's own Prometheus writer).
 */
#include <math.h>
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
#include "metrics/metrics.h"
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

/* Feeds `wire` in pieces of `step` bytes, then ends it; returns the first error or 0. */
static int feed_in_steps(dkv_ctl_records_t *d, const char *wire, size_t len, size_t step)
{
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        int rc = dkv_ctl_records_feed(d, dkv_slice(wire + off, n));
        if (rc != 0) {
            return rc;
        }
    }
    return dkv_ctl_records_finish(d);
}

/* Runs a whole response through a fresh splitter; returns the result, fills `c` and `status`. */
static int split(const char *wire, size_t len, size_t step, size_t max_record, collected_t *c,
                 int *status)
{
    dkv_buf_init(&c->all);
    c->count = 0;
    dkv_ctl_records_t d;
    dkv_ctl_records_init(&d, max_record, collect_cb, c);
    int rc = feed_in_steps(&d, wire, len, step);
    *status = dkv_ctl_records_status(&d);
    dkv_ctl_records_cleanup(&d);
    return rc;
}

#define OK_HEAD "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

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

/* ---- records of a range response ---- */

/* API.md §10's example, records a->x, bb->"", c->yz, behind real headers, split at every step
 * (libcurl hands header lines one by one and the body in pieces of any size). */
static void test_records_split_whatever_the_read_sizes(void **state)
{
    (void)state;
    static const char wire[] = "HTTP/1.1 200 OK\r\n"
                               "Content-Type: application/octet-stream\r\n"
                               "Transfer-Encoding: chunked\r\n"
                               "\r\n"
                               "3\r\na\nx\r\n"
                               "3\r\nbb\n\r\n"
                               "4\r\nc\nyz\r\n"
                               "0\r\n\r\n";
    for (size_t step = 1; step <= sizeof(wire) - 1; step++) {
        collected_t c = {0};
        int status = 0;
        assert_int_equal(split(wire, sizeof(wire) - 1, step, 1 << 20, &c, &status), 0);
        assert_int_equal(status, 200);
        assert_int_equal(c.count, 3);
        assert_buf_eq(&c.all, "a\nx|bb\n|c\nyz|");
        dkv_buf_cleanup(&c.all);
    }
}

/* Payload bytes that look like framing (CRLF, "0\r\n\r\n") stay payload; extensions and
 * trailers are llhttp's business. */
static void test_records_payload_may_hold_framing_bytes(void **state)
{
    (void)state;
    static const char wire[] = OK_HEAD "A;ext=1\r\nk\n0\r\n\r\n\r\nx\r\n"
                                       "0\r\nTrailer: t\r\n\r\n";
    collected_t c = {0};
    int status = 0;
    assert_int_equal(split(wire, sizeof(wire) - 1, 1, 64, &c, &status), 0);
    assert_int_equal(c.count, 1);
    assert_int_equal(c.all.len, 11);
    assert_memory_equal(c.all.data, "k\n0\r\n\r\n\r\nx|", 11);
    dkv_buf_cleanup(&c.all);
}

static void test_records_empty_range_may_be_content_length_zero(void **state)
{
    (void)state;
    static const char wire[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    collected_t c = {0};
    int status = 0;
    assert_int_equal(split(wire, sizeof(wire) - 1, 1, 64, &c, &status), 0);
    assert_int_equal(status, 200);
    assert_int_equal(c.count, 0);
    dkv_buf_cleanup(&c.all);
    static const char chunked[] = OK_HEAD "0\r\n\r\n";
    assert_int_equal(split(chunked, sizeof(chunked) - 1, 3, 64, &c, &status), 0);
    assert_int_equal(c.count, 0);
    dkv_buf_cleanup(&c.all);
}

/* Another status's body is kept (bounded) for the error message, never split into records; a
 * 1xx response before the final one is skipped. */
static void test_records_error_body_is_kept_not_split(void **state)
{
    (void)state;
    static const char wire[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 22\r\n\r\n"
                               "Bad Request: no start\n";
    dkv_ctl_records_t d;
    collected_t c = {0};
    dkv_buf_init(&c.all);
    dkv_ctl_records_init(&d, 64, collect_cb, &c);
    assert_int_equal(feed_in_steps(&d, wire, sizeof(wire) - 1, 5), 0);
    assert_int_equal(dkv_ctl_records_status(&d), 400);
    dkv_slice_t body = dkv_ctl_records_error_body(&d);
    assert_int_equal(body.len, 22);
    assert_memory_equal(body.ptr, "Bad Request: no start\n", 22);
    assert_int_equal(c.count, 0);
    dkv_ctl_records_cleanup(&d);

    /* A chunked 503 whose body is larger than the kept part. */
    dkv_buf_t big;
    dkv_buf_init(&big);
    dkv_buf_printf(&big,
                   "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "%x\r\n",
                   DKV_CTL_MAX_ERROR_BODY_BYTES + 100);
    for (int i = 0; i < DKV_CTL_MAX_ERROR_BODY_BYTES + 100; i++) {
        dkv_buf_append(&big, "e", 1);
    }
    dkv_buf_append_str(&big, "\r\n0\r\n\r\n");
    dkv_ctl_records_init(&d, 64, collect_cb, &c);
    assert_int_equal(feed_in_steps(&d, (const char *)big.data, big.len, 1000), 0);
    assert_int_equal(dkv_ctl_records_status(&d), 503);
    assert_int_equal(dkv_ctl_records_error_body(&d).len, DKV_CTL_MAX_ERROR_BODY_BYTES);
    assert_int_equal(c.count, 0);
    dkv_ctl_records_cleanup(&d);
    dkv_buf_cleanup(&big);

    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n" OK_HEAD "3\r\nk\nv\r\n0\r\n\r\n";
    int status = 0;
    assert_int_equal(split(cont, sizeof(cont) - 1, 7, 64, &c, &status), 0);
    assert_int_equal(status, 200);
    assert_buf_eq(&c.all, "k\nv|");
    dkv_buf_cleanup(&c.all);
}

static void test_records_reject_bad_responses(void **state)
{
    (void)state;
    static const struct {
        const char *wire;
        int rc;
    } cases[] = {
        /* A 200 whose body is not chunks cannot be split into records. */
        {"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\na\nbc", DKV_EPROTO},
        {"HTTP/1.1 200 OK\r\n\r\na\nbc", DKV_EPROTO},
        {OK_HEAD "z\r\nabc", DKV_EPROTO},                     /* not hex */
        {OK_HEAD "3\r\nabcX\n", DKV_EPROTO},                  /* no CRLF after the data */
        {OK_HEAD "0\r\n\r\nHTTP/1.1 200 OK\r\n", DKV_EPROTO}, /* a second response */
        {OK_HEAD "41\r\n", DKV_ETOOBIG},                 /* 65 > max of 64, refused unbuffered */
        {OK_HEAD "ffffffffffffffffff\r\n", DKV_EPROTO},  /* over 64 bits */
        {OK_HEAD "3\r\na\nx\r\n", DKV_EPROTO},           /* cut short: no last chunk */
        {"HTTP/1.1 200 OK\r\nTransfer-Enc", DKV_EPROTO}, /* cut in the headers */
        {"", DKV_EPROTO},                                /* nothing at all */
        {"SSH-2.0-OpenSSH_9.2\r\n", DKV_EPROTO},         /* not HTTP */
        {"HTTP/1.1 2000 OK\r\n\r\n", DKV_EPROTO},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        collected_t c = {0};
        int status = 0;
        int rc = split(cases[i].wire, strlen(cases[i].wire), 1, 64, &c, &status);
        if (rc != cases[i].rc) {
            fail_msg("case %zu \"%s\": rc %d, want %d", i, cases[i].wire, rc, cases[i].rc);
        }
        dkv_buf_cleanup(&c.all);
    }
    /* The cut-short stream still delivered its complete records. */
    collected_t c = {0};
    int status = 0;
    static const char cut[] = OK_HEAD "3\r\na\nx\r\n2\r\nb";
    assert_int_equal(split(cut, sizeof(cut) - 1, 4, 64, &c, &status), DKV_EPROTO);
    assert_buf_eq(&c.all, "a\nx|");
    dkv_buf_cleanup(&c.all);
}

static void test_records_callback_error_stops_and_sticks(void **state)
{
    (void)state;
    static const char wire[] = OK_HEAD "1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n";
    collected_t c = {.fail_at = 2};
    dkv_buf_init(&c.all);
    dkv_ctl_records_t d;
    dkv_ctl_records_init(&d, 64, collect_cb, &c);
    assert_int_equal(dkv_ctl_records_feed(&d, dkv_slice(wire, sizeof(wire) - 1)), DKV_ECANCELED);
    assert_int_equal(c.count, 2);
    assert_int_equal(dkv_ctl_records_feed(&d, dkv_slice("0\r\n\r\n", 5)), DKV_ECANCELED);
    assert_int_equal(dkv_ctl_records_finish(&d), DKV_ECANCELED);
    assert_buf_eq(&c.all, "a|");
    dkv_ctl_records_cleanup(&d);
    dkv_buf_cleanup(&c.all);
}

/* ---- /metrics reader ---- */

static dkv_ctl_metrics_t parse_ok(const char *text)
{
    dkv_ctl_metrics_t m;
    size_t bad = 0;
    int rc = dkv_ctl_metrics_parse(dkv_slice_str(text), &m, &bad);
    if (rc != 0) {
        fail_msg("parse: %s at line %zu", dkv_strerror(rc), bad);
    }
    return m;
}

/* What the node's own writer (metrics/metrics.h) produces reads back exactly, label escapes
 * included. */
static void test_metrics_reads_the_nodes_own_writer(void **state)
{
    (void)state;
    dkv_buf_t page;
    dkv_buf_init(&page);
    dkv_prom_family(&page, "dkv_peer_breaker_state", "gauge", "help with \\ and\nnewline");
    dkv_prom_label_t l1 = {"peer", "http://a:1"};
    dkv_prom_sample(&page, "dkv_peer_breaker_state", &l1, 1, 2);
    dkv_prom_label_t odd[2] = {{"peer", "q\"uo\\te\nnl"}, {"to", "half_open"}};
    dkv_prom_sample(&page, "dkv_peer_breaker_state", odd, 2, 18446744073709551615ull);
    dkv_prom_family(&page, "dkv_ring_primary_share", "gauge", "share");
    dkv_prom_label_t l2 = {"node", "http://b:2"};
    dkv_prom_sample_double(&page, "dkv_ring_primary_share", &l2, 1, 0.3366211382451999);
    dkv_prom_family(&page, "dkv_hints_pending", "gauge", "none on a cluster of one");
    dkv_buf_append(&page, "", 1);

    dkv_ctl_metrics_t m = parse_ok((const char *)page.data);
    assert_int_equal(m.n_samples, 3);
    assert_string_equal(m.samples[0].name, "dkv_peer_breaker_state");
    assert_int_equal(m.samples[0].n_labels, 1);
    assert_string_equal(dkv_ctl_sample_label(&m.samples[0], "peer"), "http://a:1");
    assert_true(m.samples[0].value == 2);
    assert_string_equal(dkv_ctl_sample_label(&m.samples[1], "peer"), "q\"uo\\te\nnl");
    assert_string_equal(dkv_ctl_sample_label(&m.samples[1], "to"), "half_open");
    assert_null(dkv_ctl_sample_label(&m.samples[1], "nope"));
    assert_true(m.samples[1].value == 18446744073709551615.0);
    const dkv_ctl_sample_t *s =
        dkv_ctl_metrics_find(&m, "dkv_ring_primary_share", "node", "http://b:2");
    assert_non_null(s);
    assert_true(s->value == 0.3366211382451999);
    assert_null(dkv_ctl_metrics_find(&m, "dkv_ring_primary_share", "node", "http://c:3"));
    assert_ptr_equal(dkv_ctl_metrics_find(&m, "dkv_peer_breaker_state", NULL, NULL), &m.samples[0]);
    double sum = 0;
    assert_int_equal(dkv_ctl_metrics_sum(&m, "dkv_peer_breaker_state", &sum), 2);
    assert_true(sum == 2 + 18446744073709551615.0);
    assert_int_equal(dkv_ctl_metrics_sum(&m, "dkv_hints_pending", &sum), 0);
    assert_true(sum == 0);
    /* A family without samples is still known (hinted handoff on, no peers). */
    assert_true(dkv_ctl_metrics_has_family(&m, "dkv_hints_pending"));
    assert_false(dkv_ctl_metrics_has_family(&m, "dkv_hints_pending_bytes"));
    dkv_ctl_metrics_cleanup(&m);
    dkv_ctl_metrics_cleanup(&m); /* twice is harmless */
    dkv_buf_cleanup(&page);
}

/* The rest of the format: special values, timestamps, blanks, comments, trailing commas. */
static void test_metrics_reads_the_format_beyond_our_writer(void **state)
{
    (void)state;
    dkv_ctl_metrics_t m = parse_ok("# a comment\n"
                                   "\n"
                                   "# HELP x_total anything \\n at all\n"
                                   "# TYPEX not_a_type_line\n"
                                   "#\tTYPE y gauge\n"
                                   "x_total 1e3 1700000000000\n"
                                   "  y{a=\"1\",b=\"\",} +Inf\n"
                                   "y { a = \"2\" }\t-Inf\n"
                                   "z NaN -5\n"
                                   "w:sub{le=\"0.5\"} 0.25"); /* no final LF */
    assert_int_equal(m.n_samples, 5);
    assert_true(m.samples[0].value == 1000);
    assert_true(isinf(m.samples[1].value) && m.samples[1].value > 0);
    assert_int_equal(m.samples[1].n_labels, 2);
    assert_string_equal(dkv_ctl_sample_label(&m.samples[1], "b"), "");
    assert_string_equal(dkv_ctl_sample_label(&m.samples[2], "a"), "2");
    assert_true(isinf(m.samples[2].value) && m.samples[2].value < 0);
    assert_true(isnan(m.samples[3].value));
    assert_string_equal(m.samples[4].name, "w:sub");
    assert_true(m.samples[4].value == 0.25);
    assert_int_equal(m.n_families, 1);
    assert_true(dkv_ctl_metrics_has_family(&m, "y"));
    dkv_ctl_metrics_cleanup(&m);

    m = parse_ok("");
    assert_int_equal(m.n_samples, 0);
    dkv_ctl_metrics_cleanup(&m);
}

static void test_metrics_rejects_malformed_lines_with_their_number(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        size_t line;
    } cases[] = {
        {"ok 1\nbad{a=\"\\t\"} 1\n", 2}, /* no such escape */
        {"a{b=\"unterminated} 1\n", 1},
        {"a{b=\"x\"\n", 1}, /* no closing brace, no value */
        {"a\n", 1},         /* no value */
        {"a 1 2 3\n", 1},   /* junk after the timestamp */
        {"a 1 x\n", 1},     /* a timestamp that is not an integer */
        {"a one\n", 1},
        {"1a 1\n", 1}, /* a name starting with a digit */
        {"a{1b=\"x\"} 1\n", 1},
        {"a{b:c=\"x\"} 1\n", 1},      /* a colon is not allowed in a label name */
        {"a{b=x} 1\n", 1},            /* unquoted */
        {"a{b=\"x\"c=\"y\"} 1\n", 1}, /* no comma */
        {"# TYPE 9x gauge\n", 1},
        {"a{b=\"x\\", 1}, /* an escape at the end */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        dkv_ctl_metrics_t m = {.n_samples = 99};
        size_t bad = 0;
        int rc = dkv_ctl_metrics_parse(dkv_slice_str(cases[i].text), &m, &bad);
        if (rc != DKV_EPROTO || bad != cases[i].line) {
            fail_msg("case %zu \"%s\": rc %d line %zu", i, cases[i].text, rc, bad);
        }
        assert_int_equal(m.n_samples, 99); /* untouched */
    }
    /* Too many labels on one sample. */
    dkv_buf_t many;
    dkv_buf_init(&many);
    dkv_buf_append_str(&many, "a{");
    for (int i = 0; i <= DKV_CTL_MAX_LABELS; i++) {
        dkv_buf_printf(&many, "l%d=\"v\",", i);
    }
    dkv_buf_append_str(&many, "} 1\n");
    dkv_ctl_metrics_t m;
    size_t bad = 0;
    assert_int_equal(dkv_ctl_metrics_parse(dkv_buf_slice(&many), &m, &bad), DKV_EPROTO);
    /* A page over the limit is refused before it is read. */
    assert_int_equal(
        dkv_ctl_metrics_parse(dkv_slice(many.data, DKV_CTL_MAX_METRICS_BYTES + 1), &m, &bad),
        DKV_ETOOBIG);
    dkv_buf_cleanup(&many);
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
        cmocka_unit_test(test_records_split_whatever_the_read_sizes),
        cmocka_unit_test(test_records_payload_may_hold_framing_bytes),
        cmocka_unit_test(test_records_empty_range_may_be_content_length_zero),
        cmocka_unit_test(test_records_error_body_is_kept_not_split),
        cmocka_unit_test(test_records_reject_bad_responses),
        cmocka_unit_test(test_records_callback_error_stops_and_sticks),
        cmocka_unit_test(test_metrics_reads_the_nodes_own_writer),
        cmocka_unit_test(test_metrics_reads_the_format_beyond_our_writer),
        cmocka_unit_test(test_metrics_rejects_malformed_lines_with_their_number),
        cmocka_unit_test(test_split_record_at_first_newline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
