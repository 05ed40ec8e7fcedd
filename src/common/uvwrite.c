/* Try-write-then-queue for libuv streams; see uvwrite.h. */
#include "common/uvwrite.h"

#include <stdlib.h>

typedef struct write_req {
    uv_write_t req;
    uint8_t *data;
    dkv_uvwrite_cb cb;
    void *arg;
} write_req_t;

static void on_write(uv_write_t *req, int status)
{
    write_req_t *w = (write_req_t *)req;
    dkv_uvwrite_cb cb = w->cb;
    void *arg = w->arg;
    free(w->data);
    free(w);
    if (cb != NULL) {
        cb(arg, status);
    }
}

int dkv_uvwrite(uv_stream_t *stream, dkv_buf_t *out, dkv_uvwrite_cb cb, void *arg, bool *queued)
{
    *queued = false;
    if (out->len == 0) {
        return 0;
    }
    uv_buf_t b = uv_buf_init((char *)out->data, (unsigned)out->len);
    int n = uv_try_write(stream, &b, 1);
    if (n == (int)out->len) {
        out->len = 0;
        return 0;
    }
    if (n < 0 && n != UV_EAGAIN) {
        out->len = 0;
        return n;
    }
    if (n > 0) {
        dkv_buf_consume(out, (size_t)n);
    }
    write_req_t *w = dkv_xmalloc(sizeof(*w));
    size_t len = out->len;
    w->data = dkv_buf_steal(out);
    w->cb = cb;
    w->arg = arg;
    b = uv_buf_init((char *)w->data, (unsigned)len);
    int rc = uv_write(&w->req, stream, &b, 1, on_write);
    if (rc != 0) {
        free(w->data);
        free(w);
        return rc;
    }
    *queued = true;
    return 0;
}
