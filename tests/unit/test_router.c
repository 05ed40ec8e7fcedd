/*
 * Unit tests of the router (router/router.h): percent-decoding, query parsing by whole names,
 * ack/from resolution with its defaults and the legacy replicas=A/F form, the outcome-to-status
 * table, and whole requests through a one-node router over a real store in a temporary directory
 * (status codes, exact bodies, and the chunk-per-record framing of /v0/entities).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "common/buf.h"
#include "common/conf.h"
#include "common/err.h"
#include "coord/coord.h"
#include "router/router.h"
#include "support/node_fixture.h"

/* ---- helpers: pure functions ---- */

/* Decodes `in`; on success checks the output equals `want` (`want_len` bytes). */
static int decode(const char *in, const void *want, size_t want_len)
{
    dkv_buf_t out;
    dkv_buf_init(&out);
    int rc = dkv_percent_decode(dkv_slice_str(in), &out);
    if (rc == 0) {
        assert_int_equal(out.len, want_len);
        if (want_len > 0) {
            assert_memory_equal(out.data, want, want_len);
        }
    }
    dkv_buf_cleanup(&out);
    return rc;
}

static void assert_buf_str(const dkv_buf_t *b, const char *s)
{
    assert_int_equal(b->len, strlen(s));
    if (b->len > 0) {
        assert_memory_equal(b->data, s, b->len);
    }
}

/* Parses `query` and resolves ack/from for `n` nodes. */
static int repl(unsigned n, const char *query, unsigned *ack, unsigned *from)
{
    dkv_query_t q;
    assert_int_equal(dkv_query_parse(dkv_slice_str(query), &q), 0);
    *ack = 12345;
    *from = 12345;
    const char *why = NULL;
    int rc = dkv_query_replication(&q, n, n, ack, from, &why);
    if (rc != 0) {
        assert_non_null(why);          /* a 400 says why */
        assert_int_equal(*ack, 12345); /* out-parameters only on success */
        assert_int_equal(*from, 12345);
    }
    dkv_query_cleanup(&q);
    return rc;
}

static void expect_repl(unsigned n, const char *query, unsigned want_ack, unsigned want_from)
{
    unsigned ack = 0;
    unsigned from = 0;
    int rc = repl(n, query, &ack, &from);
    if (rc != 0) {
        print_error("query \"%s\" with N=%u was rejected\n", query, n);
    }
    assert_int_equal(rc, 0);
    assert_int_equal(ack, want_ack);
    assert_int_equal(from, want_from);
}

static void expect_repl_invalid(unsigned n, const char *query)
{
    unsigned ack = 0;
    unsigned from = 0;
    int rc = repl(n, query, &ack, &from);
    if (rc != DKV_EINVAL) {
        print_error("query \"%s\" with N=%u was accepted as %u/%u\n", query, n, ack, from);
    }
    assert_int_equal(rc, DKV_EINVAL);
}

/* ---- dkv_percent_decode ---- */

static void test_percent_decode_valid(void **state)
{
    (void)state;
    assert_int_equal(decode("", "", 0), 0);
    assert_int_equal(decode("abc", "abc", 3), 0);
    assert_int_equal(decode("%41", "A", 1), 0);
    assert_int_equal(decode("%41bc", "Abc", 3), 0);
    assert_int_equal(decode("%4a%4A", "JJ", 2), 0);
    assert_int_equal(decode("a%26b%3Dc", "a&b=c", 5), 0);
    assert_int_equal(decode("%00", "\0", 1), 0);
    assert_int_equal(decode("x%00y", "x\0y", 3), 0);
    assert_int_equal(decode("%ff%FF%80", "\xff\xff\x80", 3), 0);
    assert_int_equal(decode("a+b", "a+b", 3), 0); /* '+' is not a space here */
    assert_int_equal(decode("%2B%20", "+ ", 2), 0);
    assert_int_equal(decode("%25", "%", 1), 0);
    assert_int_equal(decode("%2541", "%41", 3), 0); /* decoded once, not twice */
    assert_int_equal(decode("end%41", "endA", 4), 0);
}

static void test_percent_decode_appends(void **state)
{
    (void)state;
    dkv_buf_t out;
    dkv_buf_init(&out);
    dkv_buf_append_str(&out, "pre-");
    assert_int_equal(dkv_percent_decode(dkv_slice_str("%41"), &out), 0);
    assert_buf_str(&out, "pre-A");
    dkv_buf_cleanup(&out);
}

static void test_percent_decode_bad_escapes(void **state)
{
    (void)state;
    const char *bad[] = {"%",  "%4",   "a%",    "a%4",  "%zz", "%4g", "%g4",
                         "%%", "%%41", "ok%4 ", "% 41", "%-1", "%+1", "abc%x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (decode(bad[i], NULL, 0) != DKV_EINVAL) {
            print_error("\"%s\" was accepted\n", bad[i]);
            fail();
        }
    }
    /* A truncated escape at the very end of a heap buffer: no read past it (ASan). */
    for (size_t n = 1; n <= 2; n++) {
        char *p = malloc(n);
        assert_non_null(p);
        memcpy(p, "%4", n);
        dkv_buf_t out;
        dkv_buf_init(&out);
        assert_int_equal(dkv_percent_decode(dkv_slice(p, n), &out), DKV_EINVAL);
        dkv_buf_cleanup(&out);
        free(p);
    }
}

/* ---- dkv_query_parse ---- */

static void test_query_whole_name_matching(void **state)
{
    (void)state;
    const char *no_id[] = {"xid=k", "idx=k", "ID=k", "i%64x=k", "id%00=k", "=k", "id_=k"};
    for (size_t i = 0; i < sizeof(no_id) / sizeof(no_id[0]); i++) {
        dkv_query_t q;
        assert_int_equal(dkv_query_parse(dkv_slice_str(no_id[i]), &q), 0);
        if (q.has_id) {
            print_error("\"%s\" carries an id\n", no_id[i]);
            fail();
        }
        dkv_query_cleanup(&q);
    }
    /* A percent-encoded name is decoded before matching. */
    dkv_query_t q;
    assert_int_equal(dkv_query_parse(dkv_slice_str("%69d=k"), &q), 0);
    assert_true(q.has_id);
    assert_buf_str(&q.id, "k");
    dkv_query_cleanup(&q);
}

static void test_query_all_known_params(void **state)
{
    (void)state;
    dkv_query_t q;
    assert_int_equal(dkv_query_parse(dkv_slice_str("from=3&start=s%20t&end=e&ack=2&replicas=1/2&"
                                                   "id=a%26b%3Dc&unknown=%41&verbose"),
                                     &q),
                     0);
    assert_true(q.has_id && q.has_start && q.has_end && q.has_ack && q.has_from && q.has_replicas &&
                q.verbose);
    assert_buf_str(&q.id, "a&b=c");
    assert_buf_str(&q.start, "s t");
    assert_buf_str(&q.end, "e");
    assert_buf_str(&q.ack, "2");
    assert_buf_str(&q.from, "3");
    assert_buf_str(&q.replicas, "1/2");
    dkv_query_cleanup(&q);
}

static void test_query_empty_and_present(void **state)
{
    (void)state;
    dkv_query_t q;
    assert_int_equal(dkv_query_parse(dkv_slice_str("id="), &q), 0);
    assert_true(q.has_id);
    assert_int_equal(q.id.len, 0);
    dkv_query_cleanup(&q);

    /* Split at the first '=' only. */
    assert_int_equal(dkv_query_parse(dkv_slice_str("id==a=b"), &q), 0);
    assert_true(q.has_id);
    assert_buf_str(&q.id, "=a=b");
    dkv_query_cleanup(&q);

    /* A parameter without '=' never yields a usable id. */
    assert_int_equal(dkv_query_parse(dkv_slice_str("id&x=1"), &q), 0);
    assert_true(!q.has_id || q.id.len == 0);
    dkv_query_cleanup(&q);

    /* Empty queries carry nothing. */
    const char *empty[] = {"", "&", "&&&", "=", "x"};
    for (size_t i = 0; i < sizeof(empty) / sizeof(empty[0]); i++) {
        assert_int_equal(dkv_query_parse(dkv_slice_str(empty[i]), &q), 0);
        assert_false(q.has_id || q.has_start || q.has_end || q.has_ack || q.has_from ||
                     q.has_replicas || q.verbose);
        dkv_query_cleanup(&q);
    }
    assert_int_equal(dkv_query_parse(dkv_slice(NULL, 0), &q), 0);
    assert_false(q.has_id);
    dkv_query_cleanup(&q);

    /* Empty parameters between real ones are skipped. */
    assert_int_equal(dkv_query_parse(dkv_slice_str("&&id=k&&"), &q), 0);
    assert_true(q.has_id);
    assert_buf_str(&q.id, "k");
    dkv_query_cleanup(&q);
}

static void test_query_first_occurrence_wins(void **state)
{
    (void)state;
    dkv_query_t q;
    assert_int_equal(dkv_query_parse(dkv_slice_str("id=first&id=second&ack=1&ack=9"), &q), 0);
    assert_buf_str(&q.id, "first");
    assert_buf_str(&q.ack, "1");
    dkv_query_cleanup(&q);
    /* An empty first occurrence still wins. */
    assert_int_equal(dkv_query_parse(dkv_slice_str("id=&id=k"), &q), 0);
    assert_true(q.has_id);
    assert_int_equal(q.id.len, 0);
    dkv_query_cleanup(&q);
}

static void test_query_unknown_params_ignored(void **state)
{
    (void)state;
    dkv_query_t q;
    assert_int_equal(dkv_query_parse(dkv_slice_str("foo=bar&id=k&baz&q=%41&x=y=z"), &q), 0);
    assert_true(q.has_id);
    assert_buf_str(&q.id, "k");
    assert_false(q.has_ack || q.has_from || q.has_start || q.verbose);
    dkv_query_cleanup(&q);
}

static void test_query_bad_escape_anywhere(void **state)
{
    (void)state;
    const char *bad[] = {"id=%zz",  "id=k&foo=%zz",     "%zz=1",
                         "id=k&%4", "id=a&id=%zz",      "start=%",
                         "end=%4",  "unknown=%g0&id=k", "ack=1&from=2%"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        dkv_query_t q;
        int rc = dkv_query_parse(dkv_slice_str(bad[i]), &q);
        dkv_query_cleanup(&q); /* whatever the result */
        if (rc != DKV_EINVAL) {
            print_error("\"%s\" was accepted\n", bad[i]);
            fail();
        }
    }
}

static void test_query_verbose(void **state)
{
    (void)state;
    dkv_query_t q;
    assert_int_equal(dkv_query_parse(dkv_slice_str("verbose"), &q), 0);
    assert_true(q.verbose);
    dkv_query_cleanup(&q);
    assert_int_equal(dkv_query_parse(dkv_slice_str("verbose=1"), &q), 0);
    assert_true(q.verbose);
    dkv_query_cleanup(&q);
    assert_int_equal(dkv_query_parse(dkv_slice_str("verbosity=1&xverbose"), &q), 0);
    assert_false(q.verbose);
    dkv_query_cleanup(&q);
}

/* ---- dkv_query_replication ---- */

static void test_replication_defaults(void **state)
{
    (void)state;
    const unsigned want_ack[] = {0, 1, 2, 2, 3, 3};
    for (unsigned n = 1; n <= 5; n++) {
        expect_repl(n, "id=k", want_ack[n], n);
        expect_repl(n, "", want_ack[n], n);
    }
    expect_repl(64, "", 33, 64);
}

static void test_replication_only_from(void **state)
{
    (void)state;
    expect_repl(5, "from=1", 1, 1);
    expect_repl(5, "from=2", 2, 2);
    expect_repl(5, "from=3", 2, 3);
    expect_repl(5, "from=4", 3, 4);
    expect_repl(5, "from=5", 3, 5);
    expect_repl(1, "from=1", 1, 1);
    expect_repl(3, "from=%31", 1, 1); /* values are percent-decoded */
}

static void test_replication_only_ack(void **state)
{
    (void)state;
    expect_repl(3, "ack=1", 1, 3);
    expect_repl(3, "ack=3", 3, 3);
    for (unsigned n = 1; n <= 5; n++) {
        char q[32];
        snprintf(q, sizeof(q), "ack=%u", n + 1);
        expect_repl_invalid(n, q);
    }
}

static void test_replication_both(void **state)
{
    (void)state;
    expect_repl(3, "ack=1&from=1", 1, 1);
    expect_repl(3, "from=2&ack=1", 1, 2);
    expect_repl(3, "ack=2&from=2", 2, 2);
    expect_repl(3, "ack=3&from=3", 3, 3);
    expect_repl(1, "ack=1&from=1", 1, 1);
}

static void test_replication_invalid(void **state)
{
    (void)state;
    const char *bad3[] = {
        "from=0",
        "from=4",
        "ack=0",
        "ack=0&from=1",
        "ack=3&from=2",
        "ack=2&from=1",
        "ack=abc",
        "from=xyz",
        "from=-1",
        "from=+1",
        "from=1.0",
        "from=1e0",
        "from=0x1",
        "from= 1",
        "from=1%20",
        "from=",
        "ack=",
        "ack=-1",
        "ack=1.5",
        "from=99999999999999999999",
        "from=4294967297",
        "ack=4294967297",
        "ack=4294967296&from=3",
        "from=18446744073709551617",
        "ack=1&from=4",
        "from=%00",
        "ack=1%00",
    };
    for (size_t i = 0; i < sizeof(bad3) / sizeof(bad3[0]); i++) {
        expect_repl_invalid(3, bad3[i]);
    }
    expect_repl_invalid(1, "from=2");
    expect_repl_invalid(1, "ack=2");
}

/* --replication-factor RF < N: from defaults to RF and ack to RF/2+1; a given from may still
 * go up to N, and not past it. */
static void test_replication_factor_below_cluster_size(void **state)
{
    (void)state;
    struct {
        unsigned n, rf;
        const char *query;
        int want_rc;
        unsigned want_ack, want_from;
    } cases[] = {
        {5, 3, "", 0, 2, 3},          {5, 3, "id=k", 0, 2, 3},    {10, 3, "", 0, 2, 3},
        {5, 1, "", 0, 1, 1},          {5, 2, "", 0, 2, 2},        {5, 4, "", 0, 3, 4},
        {5, 3, "from=4", 0, 3, 4},    {5, 3, "from=5", 0, 3, 5},  {5, 3, "ack=1", 0, 1, 3},
        {5, 3, "ack=3", 0, 3, 3},     {5, 3, "replicas=1/2", 0, 1, 2},
        {5, 3, "from=6", DKV_EINVAL, 0, 0}, {5, 3, "ack=4", DKV_EINVAL, 0, 0},
        {5, 3, "ack=4&from=5", 0, 4, 5},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        dkv_query_t q;
        assert_int_equal(dkv_query_parse(dkv_slice_str(cases[i].query), &q), 0);
        unsigned ack = 0;
        unsigned from = 0;
        const char *why = NULL;
        int rc = dkv_query_replication(&q, cases[i].n, cases[i].rf, &ack, &from, &why);
        dkv_query_cleanup(&q);
        if (rc != cases[i].want_rc || (rc == 0 && (ack != cases[i].want_ack ||
                                                   from != cases[i].want_from))) {
            print_error("N=%u RF=%u \"%s\": rc %d %u/%u, want rc %d %u/%u\n", cases[i].n,
                        cases[i].rf, cases[i].query, rc, ack, from, cases[i].want_rc,
                        cases[i].want_ack, cases[i].want_from);
        }
        assert_int_equal(rc, cases[i].want_rc);
        if (rc == 0) {
            assert_int_equal(ack, cases[i].want_ack);
            assert_int_equal(from, cases[i].want_from);
        }
    }
}

static void test_replication_legacy_replicas(void **state)
{
    (void)state;
    expect_repl(3, "replicas=2/3", 2, 3);
    expect_repl(3, "replicas=1/1", 1, 1);
    expect_repl(3, "id=k&replicas=2%2F2", 2, 2);
    expect_repl(5, "replicas=5/5", 5, 5);
    const char *bad[] = {
        "replicas=2",     "replicas=2/",   "replicas=a/b", "replicas=0/3", "replicas=4/3",
        "replicas=/3",    "replicas=/",    "replicas=",    "replicas=2/4", "replicas=1/0",
        "replicas=1/2/3", "replicas=-1/3", "replicas=2/x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        expect_repl_invalid(3, bad[i]);
    }
}

static void test_replication_primary_form_overrides_legacy(void **state)
{
    (void)state;
    /* With ack or from present, replicas plays no part (API.md §12: implementation-defined;
     * dkv ignores the legacy form), even a malformed one. */
    expect_repl(3, "ack=1&replicas=3/3", 1, 3);
    expect_repl(3, "from=1&replicas=garbage", 1, 1);
}

/* ---- dkv_router_status_of ---- */

static void test_status_of(void **state)
{
    (void)state;
    assert_int_equal(dkv_router_status_of(0, true, false), 200);
    assert_int_equal(dkv_router_status_of(0, false, false), 201);
    assert_int_equal(dkv_router_status_of(0, false, true), 202);
    assert_int_equal(dkv_router_status_of(DKV_ENOTFOUND, true, false), 404);
    assert_int_equal(dkv_router_status_of(DKV_EQUORUM, true, false), 504);
    assert_int_equal(dkv_router_status_of(DKV_EQUORUM, false, false), 504);
    assert_int_equal(dkv_router_status_of(DKV_EQUORUM, false, true), 504);
    assert_int_equal(dkv_router_status_of(DKV_EINVAL, false, false), 400);
    assert_int_equal(dkv_router_status_of(DKV_EOVERLOAD, true, false), 503);
    assert_int_equal(dkv_router_status_of(DKV_ENOSPACE, false, false), 507);
    assert_int_equal(dkv_router_status_of(DKV_ENOSPACE, false, true), 507);
    assert_int_equal(dkv_router_status_of(DKV_EIO, true, false), 500);
    assert_int_equal(dkv_router_status_of(DKV_EIO, false, false), 500);
    assert_int_equal(dkv_router_status_of(-12345, false, false), 500); /* unknown: internal */
}

/* ---- end to end through a one-node router ---- */

typedef dkv_test_node_t node_t; /* tests/support: a one-node store, coordinator and router */

/* What the reply callback saw. */
typedef struct reply {
    int calls;
    int status;
    const char *content_type;
    const char *extra_headers;
    dkv_buf_t body; /* the body, or the decoded stream */
    bool streamed;
    size_t n_chunks;
    dkv_buf_t chunks[16]; /* one per sink write */
    int fills;
} reply_t;

typedef struct test_sink {
    dkv_chunk_sink_t base;
    reply_t *r;
} test_sink_t;

static void sink_write(dkv_chunk_sink_t *base, const dkv_slice_t *parts, size_t n)
{
    test_sink_t *s = (test_sink_t *)base;
    reply_t *r = s->r;
    /* The framing of API.md §10: parts are key, "\n", value. */
    assert_int_equal(n, 3);
    assert_int_equal(parts[1].len, 1);
    assert_int_equal(parts[1].ptr[0], '\n');
    assert_true(r->n_chunks < sizeof(r->chunks) / sizeof(r->chunks[0]));
    dkv_buf_t *c = &r->chunks[r->n_chunks++];
    dkv_buf_init(c);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        dkv_buf_append(c, parts[i].ptr, parts[i].len);
        dkv_buf_append(&r->body, parts[i].ptr, parts[i].len);
        total += parts[i].len;
    }
    assert_true(total > 0);
    base->buffered_bytes += total;
}

static void reply_cb(void *arg, dkv_response_t *resp)
{
    reply_t *r = arg;
    r->calls++;
    r->status = resp->status;
    r->content_type = resp->content_type;
    r->extra_headers = resp->extra_headers;
    if (resp->stream != NULL) {
        r->streamed = true;
        test_sink_t sink = {{sink_write, 0}, r};
        int rc = 0;
        do {
            sink.base.buffered_bytes = 0;
            rc = resp->stream->fill(resp->stream, &sink.base, 1); /* one record per fill */
            r->fills++;
            assert_true(r->fills < 1000);
        } while (rc == 0);
        assert_int_equal(rc, 1);
        resp->stream->free(resp->stream);
        resp->stream = NULL;
    } else {
        dkv_buf_append(&r->body, resp->body.ptr, resp->body.len);
    }
    dkv_owned_release(&resp->body_owner);
}

static void reply_cleanup(reply_t *r)
{
    dkv_buf_cleanup(&r->body);
    for (size_t i = 0; i < r->n_chunks; i++) {
        dkv_buf_cleanup(&r->chunks[i]);
    }
    memset(r, 0, sizeof(*r));
}

static int node_setup(void **state)
{
    dkv_test_node_opts_t opts = {.name = "test-router"};
    node_t *n = NULL;
    if (dkv_test_node_new(&opts, &n) != 0) {
        return -1;
    }
    *state = n;
    return 0;
}

static int node_teardown(void **state)
{
    node_t *n = *state;
    assert_int_equal(dkv_coord_inflight(n->coord), 0);
    dkv_test_node_free(n);
    return 0;
}

/* Sends one request and checks the callback ran exactly once before handle() returned. */
static void send_req(node_t *n, enum dkv_method m, dkv_slice_t url, dkv_slice_t body, reply_t *r)
{
    memset(r, 0, sizeof(*r));
    dkv_request_t req = {.method = m, .url = url, .body = body};
    dkv_router_handle(n->router, &req, reply_cb, r);
    assert_int_equal(r->calls, 1);
}

/* Sends a request and returns its status; the reply is discarded. */
static int status_of(node_t *n, enum dkv_method m, const char *url, const char *body)
{
    reply_t r;
    send_req(n, m, dkv_slice_str(url), dkv_slice(body, body != NULL ? strlen(body) : 0), &r);
    int status = r.status;
    reply_cleanup(&r);
    return status;
}

static void expect_status(node_t *n, enum dkv_method m, const char *url, int want)
{
    int got = status_of(n, m, url, NULL);
    if (got != want) {
        print_error("%d %s: got %d, want %d\n", (int)m, url, got, want);
    }
    assert_int_equal(got, want);
}

static void expect_get(node_t *n, const char *url, const void *want, size_t want_len)
{
    reply_t r;
    send_req(n, DKV_METHOD_GET, dkv_slice_str(url), dkv_slice(NULL, 0), &r);
    assert_int_equal(r.status, 200);
    assert_false(r.streamed);
    assert_int_equal(r.body.len, want_len);
    if (want_len > 0) {
        assert_memory_equal(r.body.data, want, want_len);
    }
    reply_cleanup(&r);
}

static void test_e2e_method_checked_before_params(void **state)
{
    node_t *n = *state;
    expect_status(n, DKV_METHOD_OTHER, "/v0/entity", 405);
    expect_status(n, DKV_METHOD_OTHER, "/v0/entity?", 405);
    expect_status(n, DKV_METHOD_OTHER, "/v0/entity?id=", 405);
    expect_status(n, DKV_METHOD_OTHER, "/v0/entity?id=k", 405);
    expect_status(n, DKV_METHOD_OTHER, "/v0/entity?id=%zz", 405);
    expect_status(n, DKV_METHOD_OTHER, "/v0/entity?id=k&ack=9", 405);
    expect_status(n, DKV_METHOD_OTHER, "/v0/entities?start=a", 405);
    expect_status(n, DKV_METHOD_PUT, "/v0/entities?start=a", 405);
    expect_status(n, DKV_METHOD_DELETE, "/v0/status", 405);
    /* A rejected POST stores nothing. */
    assert_int_equal(status_of(n, DKV_METHOD_OTHER, "/v0/entity?id=k", "body"), 405);
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=k", 404);
}

static void test_e2e_unknown_path_is_400(void **state)
{
    node_t *n = *state;
    const char *paths[] = {"/abracadabra",     "//",          "",
                           "/v0/entity/",      "/v0/entityx", "/V0/entity",
                           "/v0/Entity",       "/v0/status/", "/v0/entit",
                           "v0/entity",        "/v0//entity", "/v0/entity%3Fid=k",
                           "/abracadabra?id=k"};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        expect_status(n, DKV_METHOD_GET, paths[i], 400);
        expect_status(n, DKV_METHOD_OTHER, paths[i], 400);
    }
}

static void test_e2e_put_get_delete(void **state)
{
    node_t *n = *state;
    const uint8_t value[] = {'v', 0, '\r', '\n', '\r', '\n', 0xff, 'x'};
    reply_t r;
    send_req(n, DKV_METHOD_PUT, dkv_slice_str("/v0/entity?id=key1"),
             dkv_slice(value, sizeof(value)), &r);
    assert_int_equal(r.status, 201);
    reply_cleanup(&r);
    expect_get(n, "/v0/entity?id=key1", value, sizeof(value));
    expect_get(n, "/v0/entity?ack=1&id=key1&from=1", value, sizeof(value));
    /* Another key is unaffected. */
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=key2", 404);
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=key", 404);
    /* Overwrite: the later PUT wins. */
    assert_int_equal(status_of(n, DKV_METHOD_PUT, "/v0/entity?id=key1", "second"), 201);
    expect_get(n, "/v0/entity?id=key1", "second", 6);
    expect_status(n, DKV_METHOD_DELETE, "/v0/entity?id=key1", 202);
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=key1", 404);
    /* Re-create after delete. */
    assert_int_equal(status_of(n, DKV_METHOD_PUT, "/v0/entity?id=key1", "third"), 201);
    expect_get(n, "/v0/entity?id=key1", "third", 5);
    /* Deleting an absent key is 202 too. */
    expect_status(n, DKV_METHOD_DELETE, "/v0/entity?id=never", 202);
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=never", 404);
}

static void test_e2e_empty_value_is_not_absent(void **state)
{
    node_t *n = *state;
    assert_int_equal(status_of(n, DKV_METHOD_PUT, "/v0/entity?id=e", ""), 201);
    expect_get(n, "/v0/entity?id=e", "", 0);
}

static void test_e2e_percent_decoded_keys(void **state)
{
    node_t *n = *state;
    assert_int_equal(status_of(n, DKV_METHOD_PUT, "/v0/entity?id=%41bc", "v1"), 201);
    expect_get(n, "/v0/entity?id=Abc", "v1", 2);
    assert_int_equal(status_of(n, DKV_METHOD_PUT, "/v0/entity?id=a%26b%3Dc", "v2"), 201);
    expect_get(n, "/v0/entity?id=a%26b%3dc", "v2", 2);
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=a", 404); /* not the key "a" */
    /* Keys with NUL and high bytes. */
    assert_int_equal(status_of(n, DKV_METHOD_PUT, "/v0/entity?id=%00%ff", "v3"), 201);
    expect_get(n, "/v0/entity?id=%00%FF", "v3", 2);
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=%00", 404);
    /* Bad escapes are 400 on every method. */
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=%zz", 400);
    expect_status(n, DKV_METHOD_PUT, "/v0/entity?id=k%4", 400);
    expect_status(n, DKV_METHOD_DELETE, "/v0/entity?id=k&x=%", 400);
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=k", 404);
}

static void test_e2e_bad_params_are_400(void **state)
{
    node_t *n = *state;
    const char *urls[] = {"/v0/entity",
                          "/v0/entity?",
                          "/v0/entity?id=",
                          "/v0/entity?xid=k",
                          "/v0/entity?ID=k",
                          "/v0/entity?id=k&ack=2",
                          "/v0/entity?id=k&from=2",
                          "/v0/entity?id=k&ack=0",
                          "/v0/entity?id=k&from=0",
                          "/v0/entity?id=k&ack=abc",
                          "/v0/entity?id=k&replicas=2",
                          "/v0/entity?id=k&replicas=1/2"};
    const enum dkv_method methods[] = {DKV_METHOD_GET, DKV_METHOD_PUT, DKV_METHOD_DELETE};
    for (size_t m = 0; m < 3; m++) {
        for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
            expect_status(n, methods[m], urls[i], 400);
        }
    }
    /* None of them stored anything. */
    expect_status(n, DKV_METHOD_GET, "/v0/entity?id=k", 404);
    /* The legacy form works where valid. */
    assert_int_equal(status_of(n, DKV_METHOD_PUT, "/v0/entity?id=k&replicas=1/1", "v"), 201);
    expect_get(n, "/v0/entity?id=k&replicas=1/1", "v", 1);
}

static void test_e2e_key_length_limit(void **state)
{
    node_t *n = *state;
    /* 1024 bytes: fine; 1025: 400, also when the bytes come percent-encoded. */
    char url[16 + 3 * 1025 + 1];
    int off = snprintf(url, sizeof(url), "/v0/entity?id=");
    memset(url + off, 'k', 1024);
    url[off + 1024] = '\0';
    assert_int_equal(status_of(n, DKV_METHOD_PUT, url, "long"), 201);
    expect_get(n, url, "long", 4);
    url[off + 1024] = 'k';
    url[off + 1025] = '\0';
    expect_status(n, DKV_METHOD_PUT, url, 400);
    expect_status(n, DKV_METHOD_GET, url, 400);
    expect_status(n, DKV_METHOD_DELETE, url, 400);
    for (int i = 0; i < 1025; i++) {
        memcpy(url + off + 3 * i, "%6b", 3);
    }
    url[off + 3 * 1025] = '\0';
    expect_status(n, DKV_METHOD_PUT, url, 400);
    url[off + 3 * 1024] = '\0'; /* 1024 encoded bytes: the same key as above */
    expect_get(n, url, "long", 4);
}

static void test_e2e_status(void **state)
{
    node_t *n = *state;
    reply_t r;
    send_req(n, DKV_METHOD_GET, dkv_slice_str("/v0/status"), dkv_slice(NULL, 0), &r);
    assert_int_equal(r.status, 200);
    assert_false(r.streamed);
    assert_true(r.body.len > 0);
    reply_cleanup(&r);
    /* Unknown parameters and junk are ignored on the status probe. */
    expect_status(n, DKV_METHOD_GET, "/v0/status?x=1&id=", 200);

    send_req(n, DKV_METHOD_GET, dkv_slice_str("/v0/status?verbose"), dkv_slice(NULL, 0), &r);
    assert_int_equal(r.status, 200);
    assert_non_null(r.content_type);
    assert_string_equal(r.content_type, "application/json");
    dkv_buf_append(&r.body, "", 1); /* NUL-terminate for strstr */
    assert_non_null(strstr((const char *)r.body.data, "\"self\":\"" DKV_TEST_NODE_URL "\""));
    assert_non_null(strstr((const char *)r.body.data, "\"inflight\":0"));
    reply_cleanup(&r);
}

/* PUTs `key` (raw bytes, percent-encoded here) with `value`. */
static void put_raw(node_t *n, const void *key, size_t key_len, const char *value)
{
    char url[256];
    int off = snprintf(url, sizeof(url), "/v0/entity?id=");
    for (size_t i = 0; i < key_len; i++) {
        off += snprintf(url + off, sizeof(url) - (size_t)off, "%%%02x", ((const uint8_t *)key)[i]);
    }
    assert_int_equal(status_of(n, DKV_METHOD_PUT, url, value), 201);
}

/* Checks that the chunks are exactly the "key\nvalue" strings in `want` (n entries). */
static void expect_chunks(const reply_t *r, const char *const *want, const size_t *want_len,
                          size_t n)
{
    assert_int_equal(r->status, 200);
    assert_true(r->streamed);
    assert_int_equal(r->n_chunks, n);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(r->chunks[i].len, want_len[i]);
        assert_memory_equal(r->chunks[i].data, want[i], want_len[i]);
        total += want_len[i];
    }
    assert_int_equal(r->body.len, total);
}

static void test_e2e_entities_framing(void **state)
{
    node_t *n = *state;
    put_raw(n, "a", 1, "x");
    put_raw(n, "bb", 2, "");
    put_raw(n, "c", 1, "yz");
    put_raw(n, "d", 1, "deleted");
    expect_status(n, DKV_METHOD_DELETE, "/v0/entity?id=d", 202);
    put_raw(n, "e", 1, "end");
    put_raw(n, "e\0", 2, "after");
    put_raw(n, "\xff", 1, "high");

    reply_t r;
    send_req(n, DKV_METHOD_GET, dkv_slice_str("/v0/entities?start=a&end=e"), dkv_slice(NULL, 0),
             &r);
    const char *w1[] = {"a\nx", "bb\n", "c\nyz"};
    const size_t l1[] = {3, 3, 4};
    expect_chunks(&r, w1, l1, 3);
    reply_cleanup(&r);

    /* No end: up to the last key; a start between keys; unsigned byte order. */
    send_req(n, DKV_METHOD_GET, dkv_slice_str("/v0/entities?start=bc"), dkv_slice(NULL, 0), &r);
    const char *w2[] = {"c\nyz", "e\nend", "e\0\nafter", "\xff\nhigh"};
    const size_t l2[] = {4, 5, 8, 6};
    expect_chunks(&r, w2, l2, 4);
    reply_cleanup(&r);

    /* start and end are percent-decoded; end is exclusive even for a proper prefix. */
    send_req(n, DKV_METHOD_GET, dkv_slice_str("/v0/entities?end=e%00&start=%65"),
             dkv_slice(NULL, 0), &r);
    const char *w3[] = {"e\nend"};
    const size_t l3[] = {5};
    expect_chunks(&r, w3, l3, 1);
    reply_cleanup(&r);

    /* Only a tombstone in range, or nothing: 200 with no records. */
    send_req(n, DKV_METHOD_GET, dkv_slice_str("/v0/entities?start=d&end=e"), dkv_slice(NULL, 0),
             &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.n_chunks, 0);
    reply_cleanup(&r);
    send_req(n, DKV_METHOD_GET, dkv_slice_str("/v0/entities?start=%ff%ff"), dkv_slice(NULL, 0), &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.n_chunks, 0);
    reply_cleanup(&r);

    /* Missing or empty start. */
    expect_status(n, DKV_METHOD_GET, "/v0/entities", 400);
    expect_status(n, DKV_METHOD_GET, "/v0/entities?", 400);
    expect_status(n, DKV_METHOD_GET, "/v0/entities?end=x", 400);
    expect_status(n, DKV_METHOD_GET, "/v0/entities?start=&end=", 400);
    expect_status(n, DKV_METHOD_GET, "/v0/entities?start=%zz", 400);
    expect_status(n, DKV_METHOD_GET, "/v0/entities?xstart=a", 400);
}

/* The base64 SHA-256 of the text between `open` and the next `close` in `page`. */
static void inline_sha256_b64(const dkv_buf_t *page, const char *open, const char *close, char *out,
                              size_t out_len)
{
    dkv_buf_t z;
    dkv_buf_init(&z);
    dkv_buf_append(&z, page->data, page->len);
    dkv_buf_append(&z, "", 1);
    const char *text = (const char *)z.data;
    const char *a = strstr(text, open);
    assert_non_null(a);
    assert_null(strstr(a + 1, open)); /* exactly one such element */
    a += strlen(open);
    const char *b = strstr(a, close);
    assert_non_null(b);
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, (const unsigned char *)a, (unsigned long long)(b - a));
    sodium_bin2base64(out, out_len, digest, sizeof(digest), sodium_base64_VARIANT_ORIGINAL);
    dkv_buf_cleanup(&z);
}

/* GET / is the status page: HTML, no-cache, and a CSP that allows its inline script and style
 * by their hashes and nothing inline else; HEAD is GET for the router; other methods 405. */
static void test_e2e_status_page(void **state)
{
    node_t *n = *state;
    reply_t r;
    send_req(n, DKV_METHOD_GET, dkv_slice_str("/"), dkv_slice(NULL, 0), &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.content_type, "text/html; charset=utf-8");
    assert_non_null(r.extra_headers);
    assert_non_null(strstr(r.extra_headers, "Cache-Control: no-cache\r\n"));
    assert_non_null(strstr(r.extra_headers, "X-Content-Type-Options: nosniff\r\n"));
    assert_null(strstr(r.extra_headers, "Access-Control-Allow-Origin"));
    const char *csp = strstr(r.extra_headers, "Content-Security-Policy: ");
    assert_non_null(csp);
    const char *csp_end = strstr(csp, "\r\n");
    assert_non_null(csp_end);
    char policy[1024];
    assert_true((size_t)(csp_end - csp) < sizeof(policy));
    memcpy(policy, csp, (size_t)(csp_end - csp));
    policy[csp_end - csp] = '\0';
    assert_non_null(strstr(policy, "default-src 'none'"));
    assert_non_null(strstr(policy, "connect-src *"));
    assert_null(strstr(policy, "unsafe-inline"));
    assert_null(strstr(policy, "unsafe-eval"));

    assert_true(r.body.len > 1000);
    assert_memory_equal(r.body.data, "<!DOCTYPE html>", 15);
    char want[crypto_hash_sha256_BYTES * 2];
    char src[256];
    assert_int_equal(sodium_init() >= 0, 1);
    inline_sha256_b64(&r.body, "<script>", "</script>", want, sizeof(want));
    snprintf(src, sizeof(src), "script-src 'sha256-%s'", want);
    assert_non_null(strstr(policy, src));
    inline_sha256_b64(&r.body, "<style>", "</style>", want, sizeof(want));
    snprintf(src, sizeof(src), "style-src 'sha256-%s'", want);
    assert_non_null(strstr(policy, src));
    /* Everything is escaped through textContent: the page never parses data as HTML. */
    dkv_buf_append(&r.body, "", 1);
    assert_null(strstr((const char *)r.body.data, "innerHTML"));
    assert_null(strstr((const char *)r.body.data, "eval("));
    reply_cleanup(&r);

    /* A query string does not change the path (the page reads ?interval_ms= itself). */
    expect_status(n, DKV_METHOD_GET, "/?interval_ms=500", 200);
    const enum dkv_method others[] = {DKV_METHOD_PUT, DKV_METHOD_DELETE, DKV_METHOD_POST,
                                      DKV_METHOD_OTHER};
    for (size_t i = 0; i < sizeof(others) / sizeof(others[0]); i++) {
        send_req(n, others[i], dkv_slice_str("/"), dkv_slice_str("x"), &r);
        assert_int_equal(r.status, 405);
        assert_null(r.extra_headers);
        reply_cleanup(&r);
    }
}

/* Access-Control-Allow-Origin: * goes with the read-only observability GETs the page polls
 * across origins, and with nothing else: no data, no admin answer, no error. */
static void test_e2e_cors_only_on_observability_gets(void **state)
{
    node_t *n = *state;
    static const char cors[] = "Access-Control-Allow-Origin: *\r\n";
    const char *with[] = {"/v0/status", "/v0/status?verbose=1", "/metrics", "/v0/health",
                          "/v0/ready"};
    reply_t r;
    for (size_t i = 0; i < sizeof(with) / sizeof(with[0]); i++) {
        send_req(n, DKV_METHOD_GET, dkv_slice_str(with[i]), dkv_slice(NULL, 0), &r);
        if (r.extra_headers == NULL || strstr(r.extra_headers, cors) == NULL) {
            print_error("GET %s: no CORS header\n", with[i]);
            fail();
        }
        reply_cleanup(&r);
    }
    assert_int_equal(status_of(n, DKV_METHOD_PUT, "/v0/entity?id=cors", "v"), 201);
    const struct {
        enum dkv_method m;
        const char *url;
    } without[] = {
        {DKV_METHOD_GET, "/v0/entity?id=cors"},
        {DKV_METHOD_PUT, "/v0/entity?id=cors"},
        {DKV_METHOD_DELETE, "/v0/entity?id=cors"},
        {DKV_METHOD_GET, "/v0/entities?start=a"},
        {DKV_METHOD_GET, "/v0/admin/hints"},
        {DKV_METHOD_GET, "/v0/admin/repair"},
        {DKV_METHOD_POST, "/v0/admin/repair"},
        {DKV_METHOD_POST, "/v0/admin/rebuild-done"},
        {DKV_METHOD_PUT, "/v0/status"},
        {DKV_METHOD_DELETE, "/metrics"},
        {DKV_METHOD_POST, "/v0/health"},
        {DKV_METHOD_GET, "/abracadabra"},
    };
    for (size_t i = 0; i < sizeof(without) / sizeof(without[0]); i++) {
        send_req(n, without[i].m, dkv_slice_str(without[i].url), dkv_slice_str("x"), &r);
        if (r.extra_headers != NULL && strstr(r.extra_headers, "Access-Control") != NULL) {
            print_error("%d %s: CORS header sent\n", (int)without[i].m, without[i].url);
            fail();
        }
        reply_cleanup(&r);
    }
}

#define E2E(fn) cmocka_unit_test_setup_teardown(fn, node_setup, node_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percent_decode_valid),
        cmocka_unit_test(test_percent_decode_appends),
        cmocka_unit_test(test_percent_decode_bad_escapes),
        cmocka_unit_test(test_query_whole_name_matching),
        cmocka_unit_test(test_query_all_known_params),
        cmocka_unit_test(test_query_empty_and_present),
        cmocka_unit_test(test_query_first_occurrence_wins),
        cmocka_unit_test(test_query_unknown_params_ignored),
        cmocka_unit_test(test_query_bad_escape_anywhere),
        cmocka_unit_test(test_query_verbose),
        cmocka_unit_test(test_replication_defaults),
        cmocka_unit_test(test_replication_only_from),
        cmocka_unit_test(test_replication_only_ack),
        cmocka_unit_test(test_replication_both),
        cmocka_unit_test(test_replication_invalid),
        cmocka_unit_test(test_replication_factor_below_cluster_size),
        cmocka_unit_test(test_replication_legacy_replicas),
        cmocka_unit_test(test_replication_primary_form_overrides_legacy),
        cmocka_unit_test(test_status_of),
        E2E(test_e2e_method_checked_before_params),
        E2E(test_e2e_unknown_path_is_400),
        E2E(test_e2e_put_get_delete),
        E2E(test_e2e_empty_value_is_not_absent),
        E2E(test_e2e_percent_decoded_keys),
        E2E(test_e2e_bad_params_are_400),
        E2E(test_e2e_key_length_limit),
        E2E(test_e2e_status),
        E2E(test_e2e_status_page),
        E2E(test_e2e_cors_only_on_observability_gets),
        E2E(test_e2e_entities_framing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
