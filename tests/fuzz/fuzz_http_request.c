/*
 * libFuzzer target for the HTTP request path: arbitrary bytes go through
 * dkv_http_feed_detached() (llhttp parsing, limits, router, coordinator, a real RocksDB store) as
 * one client connection would send them, and the output must be a clean sequence of HTTP/1.1
 * responses that a keep-alive client can frame: each starts with "HTTP/1.1 ", is framed by
 * Content-Length or chunked encoding (interim 100 responses excepted), nothing trails the last
 * one, and nothing follows a "Connection: close" response.
 * The one-node store is opened once, lazily, in a temporary directory removed at exit.
 */
#define _XOPEN_SOURCE 700 /* nftw() */

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <ftw.h>
#include <uv.h>

#include "cluster/hlc.h"
#include "cluster/ring.h"
#include "common/buf.h"
#include "common/log.h"
#include "coord/coord.h"
#include "http/http.h"
#include "router/router.h"
#include "store/store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define SELF_URL "http://127.0.0.1:8080"

static struct {
    bool ready;
    char dir[64];
    uv_loop_t loop;
    dkv_ring_t *ring;
    dkv_store_t *store;
    dkv_hlc_t hlc;
    dkv_coord_t *coord;
    dkv_router_t *router;
    _Atomic unsigned conn_count;
    dkv_http_opts_t opts;
} node;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void node_cleanup(void)
{
    dkv_router_free(node.router);
    dkv_coord_free(node.coord);
    dkv_store_close(node.store);
    dkv_ring_free(node.ring);
    uv_loop_close(&node.loop);
    nftw(node.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void node_init(void)
{
    dkv_log_set_level(DKV_LOG_ERROR);
    snprintf(node.dir, sizeof(node.dir), "/tmp/dkv-fuzz-http-XXXXXX");
    CHECK(mkdtemp(node.dir) != NULL);
    const char *urls[] = {SELF_URL};
    CHECK(uv_loop_init(&node.loop) == 0);
    CHECK(dkv_ring_new(urls, 1, 16, &node.ring) == 0);
    dkv_store_opts_t sopts = {.block_cache_bytes = 8u << 20};
    CHECK(dkv_store_open(node.dir, &sopts, &node.store) == 0);
    dkv_hlc_init(&node.hlc, NULL, NULL);
    dkv_coord_env_t cenv = {.loop = &node.loop,
                            .store = node.store,
                            .ring = node.ring,
                            .self_idx = 0,
                            .hlc = &node.hlc};
    CHECK(dkv_coord_new(&cenv, &node.coord) == 0);
    dkv_router_env_t renv = {.coord = node.coord,
                             .store = node.store,
                             .ring = node.ring,
                             .self_url = SELF_URL,
                             .start_ms = dkv_hlc_system_clock_ms(NULL)};
    CHECK(dkv_router_new(&renv, &node.router) == 0);
    atomic_init(&node.conn_count, 0);
    node.opts = (dkv_http_opts_t){.max_body_bytes = 64u << 10,
                                  .max_header_bytes = 2048,
                                  .idle_timeout_ms = 30000,
                                  .request_timeout_ms = 10000,
                                  .max_inflight = 64,
                                  .max_connections = 64,
                                  .conn_count = &node.conn_count,
                                  .foreign_first_byte = -1};
    atexit(node_cleanup);
    node.ready = true;
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
    if (!node.ready) {
        node_init();
    }
    dkv_buf_t out;
    dkv_buf_init(&out);
    dkv_http_feed_detached(&node.loop, &node.opts, node.router, dkv_slice(data, size), &out);
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
    CHECK(dkv_coord_inflight(node.coord) == 0);
    CHECK(atomic_load(&node.conn_count) == 0);
    dkv_buf_cleanup(&out);
    return 0;
}
