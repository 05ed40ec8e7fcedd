/*
 * libFuzzer target for the HTTP request path: arbitrary bytes go through
 * dkv_http_feed_detached() (llhttp parsing, limits, router, coordinator, a real RocksDB store) as
 * one client connection would send them, and the output must be a clean sequence of HTTP/1.1
 * responses that a keep-alive client can frame: each starts with "HTTP/1.1 ", is framed by
 * Content-Length or chunked encoding (interim 100 responses excepted), nothing trails the last
 * one, and nothing follows a "Connection: close" response.
 * The one-node store (tests/support/node_fixture.h) is opened once, lazily, in a temporary
 * directory removed at exit.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/log.h"
#include "coord/coord.h"
#include "http/http.h"
#include "support/node_fixture.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static struct {
    dkv_test_node_t *node; /* NULL until the first input */
    _Atomic unsigned conn_count;
    dkv_http_opts_t opts;
} fuzz;

static void node_cleanup(void)
{
    dkv_test_node_free(fuzz.node);
}

static void node_init(void)
{
    dkv_log_set_level(DKV_LOG_ERROR);
    dkv_store_opts_t sopts = {.block_cache_bytes = 8u << 20};
    dkv_test_node_opts_t nopts = {.name = "fuzz-http", .vnodes = 16, .store_opts = &sopts};
    CHECK(dkv_test_node_new(&nopts, &fuzz.node) == 0);
    atomic_init(&fuzz.conn_count, 0);
    fuzz.opts = (dkv_http_opts_t){.max_body_bytes = 64u << 10,
                                  .max_header_bytes = 2048,
                                  .idle_timeout_ms = 30000,
                                  .request_timeout_ms = 10000,
                                  .max_inflight = 64,
                                  .max_connections = 64,
                                  .conn_count = &fuzz.conn_count,
                                  .foreign_first_byte = -1};
    atexit(node_cleanup);
}

/* ---- response framing check ---- */

static const uint8_t *find(const uint8_t *p, const uint8_t *end, const char *needle)
{
    size_t n = strlen(needle);
    for (; (size_t)(end - p) >= n; p++) {
        if (memcmp(p, needle, n) == 0) {
            return p;
        }
    }
    return NULL;
}

static bool header_is(const uint8_t *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && line[n] == ':' && strncasecmp((const char *)line, name, n) == 0;
}

/* Parses a decimal (base 10) or hex (base 16) number that ends exactly at `end`. */
static size_t parse_num(const uint8_t *p, const uint8_t *end, int base)
{
    CHECK(p < end && end - p <= 16);
    size_t v = 0;
    for (; p < end; p++) {
        int d = -1;
        if (*p >= '0' && *p <= '9') {
            d = *p - '0';
        } else if (base == 16 && *p >= 'a' && *p <= 'f') {
            d = *p - 'a' + 10;
        } else if (base == 16 && *p >= 'A' && *p <= 'F') {
            d = *p - 'A' + 10;
        }
        CHECK(d >= 0);
        v = v * (size_t)base + (size_t)d;
    }
    return v;
}

/* Checks one response at `p`; returns where the next one starts. Sets *close. */
static const uint8_t *check_response(const uint8_t *p, const uint8_t *end, bool *close)
{
    CHECK(end - p >= 12 && memcmp(p, "HTTP/1.1 ", 9) == 0);
    int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    CHECK(status >= 100 && status <= 599);
    const uint8_t *eoh = find(p, end, "\r\n\r\n");
    CHECK(eoh != NULL);
    const uint8_t *line = find(p, eoh + 2, "\r\n") + 2;
    bool has_length = false;
    bool chunked = false;
    size_t length = 0;
    *close = false;
    while (line < eoh + 2) {
        const uint8_t *eol = find(line, eoh + 2, "\r\n");
        size_t len = (size_t)(eol - line);
        if (header_is(line, len, "content-length")) {
            CHECK(!has_length);
            CHECK(len > 16 && line[15] == ' ');
            length = parse_num(line + 16, eol, 10);
            has_length = true;
        } else if (header_is(line, len, "transfer-encoding")) {
            CHECK(len == 26 && memcmp(line + 17, ": chunked", 9) == 0);
            chunked = true;
        } else if (header_is(line, len, "connection")) {
            *close = len == 17 && memcmp(line + 10, ": close", 7) == 0;
        }
        line = eol + 2;
    }
    const uint8_t *b = eoh + 4;
    if (status == 100) {
        CHECK(!has_length && !chunked && !*close);
        return b;
    }
    CHECK(has_length != chunked);
    if (has_length) {
        CHECK((size_t)(end - b) >= length);
        return b + length;
    }
    for (;;) {
        const uint8_t *eol = find(b, end, "\r\n");
        CHECK(eol != NULL);
        size_t n = parse_num(b, eol, 16);
        b = eol + 2;
        if (n == 0) {
            CHECK(end - b >= 2 && memcmp(b, "\r\n", 2) == 0);
            return b + 2;
        }
        CHECK((size_t)(end - b) >= n + 2 && memcmp(b + n, "\r\n", 2) == 0);
        b += n + 2;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz.node == NULL) {
        node_init();
    }
    dkv_buf_t out;
    dkv_buf_init(&out);
    dkv_http_feed_detached(&fuzz.node->loop, &fuzz.opts, fuzz.node->router, dkv_slice(data, size),
                           &out);
    if (out.len > 0) {
        const uint8_t *p = out.data;
        const uint8_t *end = out.data + out.len;
        bool close = false;
        while (p < end) {
            CHECK(!close); /* nothing after a response that announced the close */
            p = check_response(p, end, &close);
        }
        CHECK(p == end);
    }
    CHECK(dkv_coord_inflight(fuzz.node->coord) == 0);
    CHECK(atomic_load(&fuzz.conn_count) == 0);
    dkv_buf_cleanup(&out);
    return 0;
}
