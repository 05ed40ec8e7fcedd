/*
 * libFuzzer target for dkvctl's range-response splitter (ctl/ctl.h: llhttp fed the raw header
 * lines and body of a `/v0/entities` response, one record per chunk). Arbitrary bytes are fed
 * whole and again split at a point taken from the input, then ended: both runs must agree on
 * the result, the status and the records (a splitter must not depend on how reads were cut),
 * errors must be DKV_EPROTO or DKV_ETOOBIG, and no record may be empty or exceed the limit.
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

#define MAX_RECORD 4096

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Records as length-prefixed bytes, so two runs compare with one memcmp. */
static int collect_cb(void *arg, dkv_slice_t rec)
{
    dkv_buf_t *b = arg;
    CHECK(rec.len >= 1 && rec.len <= MAX_RECORD);
    dkv_slice_t k;
    dkv_slice_t v;
    if (dkv_ctl_split_record(rec, &k, &v) == 0) {
        CHECK(k.len >= 1 && k.len + 1 + v.len == rec.len && memchr(k.ptr, '\n', k.len) == NULL);
    }
    dkv_buf_append(b, &rec.len, sizeof(rec.len));
    dkv_buf_append(b, rec.ptr, rec.len);
    return 0;
}

static int run(dkv_slice_t in, size_t split, dkv_buf_t *out, int *status)
{
    dkv_ctl_records_t d;
    dkv_ctl_records_init(&d, MAX_RECORD, collect_cb, out);
    int rc = dkv_ctl_records_feed(&d, dkv_slice(in.ptr, split));
    if (rc == 0) {
        rc = dkv_ctl_records_feed(&d, dkv_slice(in.ptr + split, in.len - split));
    }
    if (rc == 0) {
        rc = dkv_ctl_records_finish(&d);
    }
    *status = dkv_ctl_records_status(&d);
    CHECK(dkv_ctl_records_error_body(&d).len <= DKV_CTL_MAX_ERROR_BODY_BYTES);
    dkv_ctl_records_cleanup(&d);
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
    int status_a = 0;
    int status_b = 0;
    int rc_a = run(in, size, &a, &status_a);
    int rc_b = run(in, split, &b, &status_b);
    CHECK(rc_a == 0 || rc_a == DKV_EPROTO || rc_a == DKV_ETOOBIG);
    CHECK(rc_a == rc_b && status_a == status_b);
    CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
    CHECK(a.len == 0 || status_a == 200);
    dkv_buf_cleanup(&a);
    dkv_buf_cleanup(&b);
    return 0;
}
