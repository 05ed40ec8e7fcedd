/*
 * Growable byte buffer for building responses and frames. Owns its bytes; grows geometrically.
 */
#ifndef DKV_COMMON_BUF_H
#define DKV_COMMON_BUF_H

#include <stddef.h>
#include <stdint.h>

#include "common/slice.h"

typedef struct dkv_buf {
    uint8_t *data; /* owned; NULL until the first append */
    size_t len;
    size_t cap;
} dkv_buf_t;

/** Makes `b` empty with no storage. Thread: any (the buffer is not shared). */
void dkv_buf_init(dkv_buf_t *b);
/** Frees `b`'s storage and makes it empty. */
void dkv_buf_cleanup(dkv_buf_t *b);
/** Ensures room for `extra_bytes` more without reallocating; aborts on allocation failure. */
void dkv_buf_reserve(dkv_buf_t *b, size_t extra_bytes);
/** Appends `n` bytes copied from `p` (may be NULL when n == 0). */
void dkv_buf_append(dkv_buf_t *b, const void *p, size_t n);
/** Appends a NUL-terminated string without its NUL. */
void dkv_buf_append_str(dkv_buf_t *b, const char *s);
/** Appends `s` (NUL-terminated) as a JSON string literal: quoted, `"` and `\` escaped, control
 * bytes as \u00XX (RFC 8259 §7). Thread: the buffer's owner. */
void dkv_buf_append_json_str(dkv_buf_t *b, const char *s);
/** Appends printf-formatted text without the trailing NUL. */
void dkv_buf_printf(dkv_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** Removes the first `n_bytes` (n_bytes <= len), keeping the rest in order. */
void dkv_buf_consume(dkv_buf_t *b, size_t n_bytes);
/**
 * Hands the storage to the caller: returns the data pointer (free with free(); NULL if never
 * allocated) and leaves `b` empty with no storage.
 */
uint8_t *dkv_buf_steal(dkv_buf_t *b);

static inline dkv_slice_t dkv_buf_slice(const dkv_buf_t *b)
{
    return dkv_slice(b->data, b->len);
}

#endif
