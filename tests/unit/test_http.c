/*
 * Unit tests of the HTTP/1.1 layer (http/http.h) without sockets: raw request bytes go through
 * dkv_http_feed_detached() into a one-node router over a real store in a temporary directory,
 * and the response bytes are parsed back: pipelining, chunked request bodies, the limits (413,
 * 431), malformed input, 100-continue, Connection handling, and response framing (every response
 * carries Content-Length or Transfer-Encoding: chunked, so a keep-alive client never hangs).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "common/buf.h"
#include "common/err.h"
#include "http/http.h"
#include "support/node_fixture.h"

#define MAX_BODY_BYTES (64u << 10)
#define MAX_HEADER_BYTES 8192u
#define MAX_RESPONSES 16

/* ---- a one-node router ---- */

typedef struct node {
    dkv_test_node_t *node; /* loop, store, router */
    _Atomic unsigned conn_count;
    dkv_http_opts_t opts;
} node_t;

static int node_setup(void **state)
{
    node_t *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        return -1;
    }
    dkv_test_node_opts_t nopts = {.name = "test-http"};
    if (dkv_test_node_new(&nopts, &n->node) != 0) {
        free(n);
        return -1;
    }
    atomic_init(&n->conn_count, 0);
    n->opts = (dkv_http_opts_t){.max_body_bytes = MAX_BODY_BYTES,
                                .max_header_bytes = MAX_HEADER_BYTES,
                                .idle_timeout_ms = 30000,
                                .request_timeout_ms = 10000,
                                .max_inflight = 64,
                                .max_connections = 64,
                                .conn_count = &n->conn_count,
                                .foreign_first_byte = -1};
    *state = n;
    return 0;
}

static int node_teardown(void **state)
{
    node_t *n = *state;
    assert_int_equal(atomic_load(&n->conn_count), 0);
    dkv_test_node_free(n->node);
    free(n);
    return 0;
}

/* ---- parsing responses back ---- */

typedef struct resp {
    int status;
    bool has_length;
    bool chunked;
    bool close;
    size_t n_chunks;
    dkv_buf_t body; /* decoded */
} resp_t;

typedef struct resps {
    size_t n;
    resp_t r[MAX_RESPONSES];
    dkv_buf_t raw;
} resps_t;

static void resps_cleanup(resps_t *rs)
{
    for (size_t i = 0; i < rs->n; i++) {
        dkv_buf_cleanup(&rs->r[i].body);
    }
    dkv_buf_cleanup(&rs->raw);
    memset(rs, 0, sizeof(*rs));
}

static const char *find(const char *p, const char *end, const char *needle)
{
    size_t n = strlen(needle);
    for (; p + n <= end; p++) {
        if (memcmp(p, needle, n) == 0) {
            return p;
        }
    }
    return NULL;
}

static bool header_is(const char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && line[n] == ':' && strncasecmp(line, name, n) == 0;
}

/* Value of a header line, without leading spaces. */
static const char *header_value(const char *line, size_t len, const char *name, size_t *vlen)
{
    size_t i = strlen(name) + 1;
    while (i < len && line[i] == ' ') {
        i++;
    }
    *vlen = len - i;
    return line + i;
}

/* Parses one response at *p; fails the test on anything a client could not frame. */
static void parse_one(const char **p, const char *end, resp_t *r)
{
    const char *s = *p;
    assert_true(end - s >= 12);
    assert_memory_equal(s, "HTTP/1.1 ", 9);
    r->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    const char *eoh = find(s, end, "\r\n\r\n");
    assert_non_null(eoh);
    const char *line = find(s, eoh + 2, "\r\n") + 2;
    size_t content_length = 0;
    while (line < eoh + 2) {
        const char *eol = find(line, eoh + 2, "\r\n");
        size_t len = (size_t)(eol - line);
        size_t vlen = 0;
        if (header_is(line, len, "content-length")) {
            assert_false(r->has_length); /* exactly once */
            const char *v = header_value(line, len, "content-length", &vlen);
            char num[32];
            assert_true(vlen > 0 && vlen < sizeof(num));
            memcpy(num, v, vlen);
            num[vlen] = '\0';
            content_length = strtoul(num, NULL, 10);
            r->has_length = true;
        } else if (header_is(line, len, "transfer-encoding")) {
            const char *v = header_value(line, len, "transfer-encoding", &vlen);
            assert_true(vlen == 7 && strncasecmp(v, "chunked", 7) == 0);
            r->chunked = true;
        } else if (header_is(line, len, "connection")) {
            const char *v = header_value(line, len, "connection", &vlen);
            r->close = vlen == 5 && strncasecmp(v, "close", 5) == 0;
        }
        line = eol + 2;
    }
    const char *b = eoh + 4;
    if (r->status == 100) {
        assert_false(r->has_length || r->chunked);
        *p = b;
        return;
    }
    /* Every final response is framed, and by one method only. */
    assert_true(r->has_length != r->chunked);
    if (r->has_length) {
        assert_true((size_t)(end - b) >= content_length);
        dkv_buf_append(&r->body, b, content_length);
        *p = b + content_length;
        return;
    }
    for (;;) {
        const char *eol = find(b, end, "\r\n");
        assert_non_null(eol);
        char *num_end = NULL;
        size_t size = strtoul(b, &num_end, 16);
        assert_ptr_equal(num_end, eol);
        b = eol + 2;
        if (size == 0) {
            assert_true(end - b >= 2);
            assert_memory_equal(b, "\r\n", 2);
            *p = b + 2;
            return;
        }
        assert_true((size_t)(end - b) >= size + 2);
        dkv_buf_append(&r->body, b, size);
        assert_memory_equal(b + size, "\r\n", 2);
        b += size + 2;
        r->n_chunks++;
    }
}

/* Feeds `in` through a fresh detached connection and parses every response it produced. */
static void feed(node_t *n, const void *in, size_t len, resps_t *rs)
{
    memset(rs, 0, sizeof(*rs));
    dkv_http_feed_detached(&n->node->loop, &n->opts, n->node->router, dkv_slice(in, len), &rs->raw);
    const char *p = (const char *)rs->raw.data;
    const char *end = p + rs->raw.len;
    while (p < end) {
        assert_true(rs->n < MAX_RESPONSES);
        parse_one(&p, end, &rs->r[rs->n++]);
    }
    assert_ptr_equal(p, end); /* nothing after the last response */
}

static void feed_str(node_t *n, const char *in, resps_t *rs)
{
    feed(n, in, strlen(in), rs);
}

static void assert_body(const resp_t *r, const void *want, size_t len)
{
    assert_int_equal(r->body.len, len);
    if (len > 0) {
        assert_memory_equal(r->body.data, want, len);
    }
}

/* GET /v0/entity?id=<key> through HTTP; returns the status, body in *rs. */
static int http_get(node_t *n, const char *key, resps_t *rs)
{
    char req[256];
    snprintf(req, sizeof(req), "GET /v0/entity?id=%s HTTP/1.1\r\nHost: t\r\n\r\n", key);
    feed_str(n, req, rs);
    assert_int_equal(rs->n, 1);
    return rs->r[0].status;
}

/* ---- tests ---- */

static void test_simple_status(void **state)
{
    node_t *n = *state;
    resps_t rs;
    feed_str(n, "GET /v0/status HTTP/1.1\r\nHost: localhost\r\n\r\n", &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 200);
    assert_true(rs.r[0].has_length);
    assert_false(rs.r[0].close); /* HTTP/1.1 keeps the connection */
    assert_body(&rs.r[0], "OK\n", 3);
    resps_cleanup(&rs);
}

static void test_no_input_no_output(void **state)
{
    node_t *n = *state;
    resps_t rs;
    feed(n, "", 0, &rs);
    assert_int_equal(rs.n, 0);
    /* A request cut short is not answered (a socket connection would wait for the rest). */
    resps_cleanup(&rs);
    feed_str(n, "GET /v0/status HTTP/1.1\r\nHost: loc", &rs);
    assert_int_equal(rs.n, 0);
    resps_cleanup(&rs);
}

static void test_pipelined_in_order(void **state)
{
    node_t *n = *state;
    resps_t rs;
    feed_str(n,
             "PUT /v0/entity?id=k HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
             "GET /v0/entity?id=k HTTP/1.1\r\nHost: t\r\n\r\n"
             "GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"
             "DELETE /v0/entity?id=k HTTP/1.1\r\nHost: t\r\n\r\n"
             "GET /v0/entity?id=k HTTP/1.1\r\nHost: t\r\n\r\n"
             "GET /v0/status HTTP/1.1\r\nHost: t\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 6);
    const int want[] = {201, 200, 400, 202, 404, 200};
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(rs.r[i].status, want[i]);
        assert_false(rs.r[i].close); /* a 400 from the router keeps the connection */
    }
    assert_body(&rs.r[1], "hello", 5);
    assert_body(&rs.r[5], "OK\n", 3);
    resps_cleanup(&rs);
}

static void test_binary_body_roundtrip(void **state)
{
    node_t *n = *state;
    /* A value holding CR LF CR LF and NUL must not confuse the parser or the framing. */
    const char req[] = "PUT /v0/entity?id=bin HTTP/1.1\r\nContent-Length: 14\r\n\r\n"
                       "a\r\n\r\nGET /\0x\r\n";
    resps_t rs;
    feed(n, req, sizeof(req) - 1, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 201);
    resps_cleanup(&rs);
    assert_int_equal(http_get(n, "bin", &rs), 200);
    assert_body(&rs.r[0], "a\r\n\r\nGET /\0x\r\n", 14);
    resps_cleanup(&rs);
}

static void test_chunked_request_body(void **state)
{
    node_t *n = *state;
    resps_t rs;
    feed_str(n,
             "PUT /v0/entity?id=ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
             "3\r\nabc\r\n"
             "A;ext=1\r\n0123456789\r\n"
             "1\r\n\n\r\n"
             "0\r\n\r\n"
             "GET /v0/entity?id=ch HTTP/1.1\r\nHost: t\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.r[0].status, 201);
    assert_int_equal(rs.r[1].status, 200);
    assert_body(&rs.r[1], "abc0123456789\n", 14);
    resps_cleanup(&rs);
}

static void test_body_over_limit_is_413(void **state)
{
    node_t *n = *state;
    resps_t rs;
    char req[256];
    snprintf(req, sizeof(req),
             "PUT /v0/entity?id=big HTTP/1.1\r\nContent-Length: %u\r\n\r\nxxxx"
             "GET /v0/status HTTP/1.1\r\n\r\n",
             MAX_BODY_BYTES + 1);
    feed_str(n, req, &rs);
    assert_int_equal(rs.n, 1); /* nothing after the 413 is read */
    assert_int_equal(rs.r[0].status, 413);
    assert_true(rs.r[0].close);
    resps_cleanup(&rs);
    assert_int_equal(http_get(n, "big", &rs), 404); /* nothing stored */
    resps_cleanup(&rs);

    /* A chunked body that grows past the limit. */
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_buf_append_str(&b, "PUT /v0/entity?id=big HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    char chunk[4097];
    memset(chunk, 'c', sizeof(chunk) - 1);
    chunk[sizeof(chunk) - 1] = '\0';
    for (unsigned i = 0; i <= MAX_BODY_BYTES / 4096; i++) {
        dkv_buf_printf(&b, "1000\r\n%s\r\n", chunk);
    }
    dkv_buf_append_str(&b, "0\r\n\r\n");
    feed(n, b.data, b.len, &rs);
    dkv_buf_cleanup(&b);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 413);
    assert_true(rs.r[0].close);
    resps_cleanup(&rs);
    assert_int_equal(http_get(n, "big", &rs), 404);
    resps_cleanup(&rs);
}

static void test_body_at_limit_is_accepted(void **state)
{
    node_t *n = *state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_buf_printf(&b, "PUT /v0/entity?id=max HTTP/1.1\r\nContent-Length: %u\r\n\r\n",
                   MAX_BODY_BYTES);
    for (unsigned i = 0; i < MAX_BODY_BYTES; i++) {
        uint8_t c = (uint8_t)(i * 7);
        dkv_buf_append(&b, &c, 1);
    }
    resps_t rs;
    feed(n, b.data, b.len, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 201);
    resps_cleanup(&rs);
    assert_int_equal(http_get(n, "max", &rs), 200);
    assert_body(&rs.r[0], b.data + b.len - MAX_BODY_BYTES, MAX_BODY_BYTES);
    resps_cleanup(&rs);
    dkv_buf_cleanup(&b);
}

static void test_headers_over_limit_are_431(void **state)
{
    node_t *n = *state;
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_buf_append_str(&b, "GET /v0/status HTTP/1.1\r\nX-Big: ");
    for (unsigned i = 0; i < MAX_HEADER_BYTES; i++) {
        dkv_buf_append(&b, "h", 1);
    }
    dkv_buf_append_str(&b, "\r\n\r\n");
    resps_t rs;
    feed(n, b.data, b.len, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 431);
    assert_true(rs.r[0].close);
    resps_cleanup(&rs);

    /* Many small headers add up too. */
    b.len = 0;
    dkv_buf_append_str(&b, "GET /v0/status HTTP/1.1\r\n");
    for (unsigned i = 0; i < MAX_HEADER_BYTES / 16; i++) {
        dkv_buf_printf(&b, "X-H%u: 0123456789\r\n", i);
    }
    dkv_buf_append_str(&b, "\r\n");
    feed(n, b.data, b.len, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 431);
    resps_cleanup(&rs);

    /* A URL over the limit. */
    b.len = 0;
    dkv_buf_append_str(&b, "GET /v0/entity?id=");
    for (unsigned i = 0; i < MAX_HEADER_BYTES; i++) {
        dkv_buf_append(&b, "u", 1);
    }
    dkv_buf_append_str(&b, " HTTP/1.1\r\n\r\n");
    feed(n, b.data, b.len, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 431);
    resps_cleanup(&rs);
    dkv_buf_cleanup(&b);
}

static void test_percent_encoded_max_key_fits_headers(void **state)
{
    node_t *n = *state;
    /* API.md §2: a 1 KiB key, 3 KiB once percent-encoded, must fit in the request head. */
    dkv_buf_t b;
    dkv_buf_init(&b);
    dkv_buf_append_str(&b, "PUT /v0/entity?id=");
    for (unsigned i = 0; i < 1024; i++) {
        dkv_buf_printf(&b, "%%%02X", 0x80 + (i % 128));
    }
    dkv_buf_append_str(&b, " HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: test\r\n"
                           "Content-Length: 1\r\n\r\nv");
    resps_t rs;
    feed(n, b.data, b.len, &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 201);
    resps_cleanup(&rs);
    dkv_buf_cleanup(&b);
}

static void test_garbage_is_400_and_close(void **state)
{
    node_t *n = *state;
    const char *garbage[] = {
        "\x01\x02\x03 nonsense\r\n\r\n",
        "GET /v0/status HTTP/1.1\r\nBad Header\r\n\r\n",
        "GET /v0/status HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ("PUT /v0/entity?id=k HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
         "0\r\n\r\n"),
        "PUT /v0/entity?id=k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        "GET /v0/sta tus HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
        resps_t rs;
        feed_str(n, garbage[i], &rs);
        if (rs.n != 1 || rs.r[0].status != 400 || !rs.r[0].close) {
            print_error("input %zu: %zu responses, first %d\n", i, rs.n,
                        rs.n > 0 ? rs.r[0].status : 0);
            fail();
        }
        resps_cleanup(&rs);
    }
    /* A well-formed request of a version we do not speak is 505, not 400 (and closes too). */
    const char *versions[] = {"GET /v0/status HTTP/9.9\r\n\r\n", "GET /v0/status HTTP/2.0\r\n\r\n"};
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        resps_t rs;
        feed_str(n, versions[i], &rs);
        assert_int_equal(rs.n, 1);
        assert_int_equal(rs.r[0].status, 505);
        assert_true(rs.r[0].close);
        resps_cleanup(&rs);
    }
    /* Nothing from the smuggling attempt was stored. */
    resps_t rs;
    assert_int_equal(http_get(n, "k", &rs), 404);
    resps_cleanup(&rs);
}

static void test_garbage_after_valid_request(void **state)
{
    node_t *n = *state;
    resps_t rs;
    feed_str(n, "GET /v0/status HTTP/1.1\r\n\r\n\x01garbage\r\n\r\nGET /v0/status HTTP/1.1\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.r[0].status, 200);
    assert_false(rs.r[0].close);
    assert_int_equal(rs.r[1].status, 400);
    assert_true(rs.r[1].close);
    resps_cleanup(&rs);
}

static void test_expect_100_continue(void **state)
{
    node_t *n = *state;
    resps_t rs;
    feed_str(n,
             "PUT /v0/entity?id=c HTTP/1.1\r\nHost: t\r\nExpect: 100-Continue\r\n"
             "Content-Length: 2\r\n\r\nok",
             &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.r[0].status, 100);
    assert_memory_equal(rs.raw.data, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    assert_int_equal(rs.r[1].status, 201);
    resps_cleanup(&rs);
    assert_int_equal(http_get(n, "c", &rs), 200);
    assert_body(&rs.r[0], "ok", 2);
    resps_cleanup(&rs);

    /* A body over the limit gets the 413 instead of an invitation to send it. */
    feed_str(n,
             "PUT /v0/entity?id=c HTTP/1.1\r\nExpect: 100-continue\r\n"
             "Content-Length: 99999999\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 413);
    resps_cleanup(&rs);
}

static void test_connection_close_handling(void **state)
{
    node_t *n = *state;
    resps_t rs;
    /* HTTP/1.0 without keep-alive: close after the response, ignore what follows. */
    feed_str(n, "GET /v0/status HTTP/1.0\r\n\r\nGET /v0/status HTTP/1.1\r\n\r\n", &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 200);
    assert_true(rs.r[0].close);
    resps_cleanup(&rs);

    /* HTTP/1.1 with Connection: close. */
    feed_str(n,
             "GET /v0/status HTTP/1.1\r\nConnection: close\r\n\r\n"
             "GET /v0/status HTTP/1.1\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 1);
    assert_true(rs.r[0].close);
    resps_cleanup(&rs);

    /* HTTP/1.0 with keep-alive keeps going. */
    feed_str(n,
             "GET /v0/status HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
             "GET /v0/status HTTP/1.1\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 2);
    assert_false(rs.r[0].close);
    resps_cleanup(&rs);
}

static void test_upgrade_request_is_served_as_http11(void **state)
{
    node_t *n = *state;
    resps_t rs;
    /* curl --http2 on http:// asks to upgrade to h2c; dkv declines by answering in HTTP/1.1,
     * so the connection stays HTTP/1.1 and the next request must be parsed as such. */
    feed_str(n,
             "GET /v0/status HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
             "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
             "GET /v0/status HTTP/1.1\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.r[0].status, 200);
    assert_int_equal(rs.r[1].status, 200);
    resps_cleanup(&rs);
    /* The same with a body: the body is the value, not the start of another protocol. */
    feed_str(n,
             "PUT /v0/entity?id=u HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
             "Content-Length: 3\r\n\r\nabc"
             "GET /v0/entity?id=u HTTP/1.1\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.r[0].status, 201);
    assert_int_equal(rs.r[1].status, 200);
    assert_body(&rs.r[1], "abc", 3);
    resps_cleanup(&rs);
    /* CONNECT is not a tunnel here: an error, and the connection goes on. */
    feed_str(n, "CONNECT example.com:443 HTTP/1.1\r\n\r\nGET /v0/status HTTP/1.1\r\n\r\n", &rs);
    assert_int_equal(rs.n, 2);
    assert_int_equal(rs.r[0].status, 400);
    assert_int_equal(rs.r[1].status, 200);
    resps_cleanup(&rs);
}

static void test_entities_chunk_per_record(void **state)
{
    node_t *n = *state;
    resps_t rs;
    feed_str(n,
             "PUT /v0/entity?id=a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"
             "PUT /v0/entity?id=bb HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
             "PUT /v0/entity?id=c HTTP/1.1\r\nContent-Length: 2\r\n\r\nyz"
             "PUT /v0/entity?id=cc HTTP/1.1\r\nContent-Length: 1\r\n\r\nq"
             "DELETE /v0/entity?id=cc HTTP/1.1\r\n\r\n"
             "GET /v0/entities?start=a HTTP/1.1\r\n\r\n"
             "GET /v0/status HTTP/1.1\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 7);
    assert_int_equal(rs.r[5].status, 200);
    assert_true(rs.r[5].chunked);
    assert_int_equal(rs.r[5].n_chunks, 3);
    assert_body(&rs.r[5], "a\nxbb\nc\nyz", 10);
    /* The exact bytes of API.md §10's example. */
    const char want[] = "3\r\na\nx\r\n3\r\nbb\n\r\n4\r\nc\nyz\r\n0\r\n\r\n";
    assert_non_null(find((const char *)rs.raw.data, (const char *)rs.raw.data + rs.raw.len, want));
    assert_int_equal(rs.r[6].status, 200); /* the request after a stream is served */
    resps_cleanup(&rs);

    /* An empty range is a valid, framed, empty 200. */
    feed_str(n, "GET /v0/entities?start=zzz HTTP/1.1\r\n\r\n", &rs);
    assert_int_equal(rs.n, 1);
    assert_int_equal(rs.r[0].status, 200);
    assert_int_equal(rs.r[0].body.len, 0);
    resps_cleanup(&rs);
}

static void test_method_and_path_errors_keep_alive(void **state)
{
    node_t *n = *state;
    resps_t rs;
    feed_str(n,
             "POST /v0/entity HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
             "PATCH /v0/entity?id=k HTTP/1.1\r\n\r\n"
             "GET /abracadabra HTTP/1.1\r\n\r\n"
             "OPTIONS /v0/status HTTP/1.1\r\n\r\n"
             "GET /v0/entity?id=k HTTP/1.1\r\n\r\n",
             &rs);
    assert_int_equal(rs.n, 5);
    assert_int_equal(rs.r[0].status, 405);
    assert_int_equal(rs.r[1].status, 405);
    assert_int_equal(rs.r[2].status, 400);
    assert_int_equal(rs.r[3].status, 405);
    assert_int_equal(rs.r[4].status, 404); /* the POST stored nothing */
    resps_cleanup(&rs);
}

static void test_every_response_is_framed(void **state)
{
    node_t *n = *state;
    /* feed() already fails on any unframed response; this runs every status we can reach. */
    const char *reqs[] = {
        "GET /v0/status HTTP/1.1\r\n\r\n",
        "GET /v0/status?verbose HTTP/1.1\r\n\r\n",
        "PUT /v0/entity?id=f HTTP/1.1\r\nContent-Length: 1\r\n\r\nf",
        "GET /v0/entity?id=f HTTP/1.1\r\n\r\n",
        "GET /v0/entity?id=nothing HTTP/1.1\r\n\r\n",
        "DELETE /v0/entity?id=f HTTP/1.1\r\n\r\n",
        "GET /v0/entity HTTP/1.1\r\n\r\n",
        "GET /v0/entity?id=k&ack=9 HTTP/1.1\r\n\r\n",
        "POST /v0/entity HTTP/1.1\r\n\r\n",
        "GET /v0/entities?start=a HTTP/1.1\r\n\r\n",
        "GET /v0/entities HTTP/1.1\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\n\r\n",
        "GET http://example.com/v0/status HTTP/1.1\r\n\r\n",
        "\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        resps_t rs;
        feed_str(n, reqs[i], &rs);
        assert_true(rs.n <= 1);
        resps_cleanup(&rs);
    }
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, node_setup, node_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_simple_status),
        T(test_no_input_no_output),
        T(test_pipelined_in_order),
        T(test_binary_body_roundtrip),
        T(test_chunked_request_body),
        T(test_body_over_limit_is_413),
        T(test_body_at_limit_is_accepted),
        T(test_headers_over_limit_are_431),
        T(test_percent_encoded_max_key_fits_headers),
        T(test_garbage_is_400_and_close),
        T(test_garbage_after_valid_request),
        T(test_expect_100_continue),
        T(test_connection_close_handling),
        T(test_upgrade_request_is_served_as_http11),
        T(test_entities_chunk_per_record),
        T(test_method_and_path_errors_keep_alive),
        T(test_every_response_is_framed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
