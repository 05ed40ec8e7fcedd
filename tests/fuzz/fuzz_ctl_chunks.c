/*
 * libFuzzer target for dkvctl's chunk-framing decoder (ctl/ctl.h), which splits a raw chunked
 * `/v0/entities` body into records. Arbitrary bytes are fed whole and again split at a point
 * taken from the input: both runs must agree on the result, the records and "done" (a decoder
 * must not depend on how reads were cut), errors must be DKV_EPROTO or DKV_ETOOBIG, and no chunk
 * may exceed the limit.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "ctl/ctl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_CHUNK 4096

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Records as length-prefixed bytes, so two runs compare with one memcmp. */
static int collect_cb(void *arg, dkv_slice_t chunk)
{
    dkv_buf_t *b = arg;
    CHECK(chunk.len >= 1 && chunk.len <= MAX_CHUNK);
    dkv_slice_t k;
    dkv_slice_t v;
    if (dkv_ctl_split_record(chunk, &k, &v) == 0) {
        CHECK(k.len >= 1 && k.len + 1 + v.len == chunk.len && memchr(k.ptr, '\n', k.len) == NULL);
    }
    dkv_buf_append(b, &chunk.len, sizeof(chunk.len));
    dkv_buf_append(b, chunk.ptr, chunk.len);
    return 0;
}

static int run(dkv_slice_t in, size_t split, dkv_buf_t *out, bool *done)
{
    dkv_ctl_chunks_t d;
    dkv_ctl_chunks_init(&d, MAX_CHUNK, collect_cb, out);
    int rc = dkv_ctl_chunks_feed(&d, dkv_slice(in.ptr, split));
    if (rc == 0) {
        rc = dkv_ctl_chunks_feed(&d, dkv_slice(in.ptr + split, in.len - split));
    }
    *done = dkv_ctl_chunks_done(&d);
    dkv_ctl_chunks_cleanup(&d);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dkv_slice_t in = dkv_slice(data, size);
    size_t split = size > 0 ? data[0] % (size + 1) : 0;
    dkv_buf_t a;
    dkv_buf_t b;
    dkv_buf_init(&a);
    dkv_buf_init(&b);
    bool done_a = false;
    bool done_b = false;
    int rc_a = run(in, size, &a, &done_a);
    int rc_b = run(in, split, &b, &done_b);
    CHECK(rc_a == 0 || rc_a == DKV_EPROTO || rc_a == DKV_ETOOBIG);
    CHECK(rc_a == rc_b && done_a == done_b);
    CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
    CHECK(!done_a || rc_a == 0);
    dkv_buf_cleanup(&a);
    dkv_buf_cleanup(&b);
    return 0;
}
