/* Growable byte buffer and checked allocation. */
#include "common/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void alloc_fail(size_t n, const char *file, int line)
{
    fprintf(stderr, "dkv: out of memory allocating %zu bytes at %s:%d\n", n, file, line);
    abort();
}

void *dkv_xmalloc_at(size_t n, const char *file, int line)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        alloc_fail(n, file, line);
    }
    return p;
}

void *dkv_xcalloc_at(size_t count, size_t n, const char *file, int line)
{
    void *p = calloc(count ? count : 1, n ? n : 1);
    if (p == NULL) {
        alloc_fail(count * n, file, line);
    }
    return p;
}

void *dkv_xrealloc_at(void *p, size_t n, const char *file, int line)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL) {
        alloc_fail(n, file, line);
    }
    return q;
}

void dkv_buf_init(dkv_buf_t *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void dkv_buf_cleanup(dkv_buf_t *b)
{
    free(b->data);
    dkv_buf_init(b);
}

void dkv_buf_reserve(dkv_buf_t *b, size_t extra_bytes)
{
    if (b->cap - b->len >= extra_bytes) {
        return;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra_bytes) {
        cap *= 2;
    }
    b->data = dkv_xrealloc(b->data, cap);
    b->cap = cap;
}

void dkv_buf_append(dkv_buf_t *b, const void *p, size_t n)
{
    if (n == 0) {
        return;
    }
    dkv_buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void dkv_buf_append_str(dkv_buf_t *b, const char *s)
{
    dkv_buf_append(b, s, strlen(s));
}

void dkv_buf_append_json_str(dkv_buf_t *b, const char *s)
{
    dkv_buf_append(b, "\"", 1);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            dkv_buf_printf(b, "\\%c", c);
        } else if (c < 0x20) {
            dkv_buf_printf(b, "\\u%04x", c);
        } else {
            dkv_buf_append(b, s, 1);
        }
    }
    dkv_buf_append(b, "\"", 1);
}

void dkv_buf_printf(dkv_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        return;
    }
    if ((size_t)n < sizeof(small)) {
        dkv_buf_append(b, small, (size_t)n);
        return;
    }
    dkv_buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void dkv_buf_consume(dkv_buf_t *b, size_t n_bytes)
{
    if (n_bytes >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n_bytes, b->len - n_bytes);
    b->len -= n_bytes;
}

uint8_t *dkv_buf_steal(dkv_buf_t *b)
{
    uint8_t *p = b->data;
    dkv_buf_init(b);
    return p;
}
