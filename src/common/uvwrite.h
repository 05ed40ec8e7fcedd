/*
 * Writing a buffer to a libuv stream the way every dkv connection does: one uv_try_write()
 * (usually everything goes out at once, with no allocation and no callback), and the rest queued
 * with uv_write() in a request that owns the bytes.
 */
#ifndef DKV_COMMON_UVWRITE_H
#define DKV_COMMON_UVWRITE_H

#include <stdbool.h>

#include <uv.h>

#include "common/buf.h"

/** Runs when a queued write finished (status 0 or a negative libuv error). */
typedef void (*dkv_uvwrite_cb)(void *arg, int status);

/**
 * Writes all of `out` to `stream` and leaves `out` empty (its storage is kept when everything
 * went out at once, and handed to the queued request otherwise).
 *
 * @param cb      Runs once per queued write (may be NULL); never when nothing was queued.
 * @param queued  Set to whether a write was queued (so `cb` will run).
 * @return 0; a negative libuv error (the connection is broken; nothing was queued).
 * Thread: the stream's loop thread.
 */
int dkv_uvwrite(uv_stream_t *stream, dkv_buf_t *out, dkv_uvwrite_cb cb, void *arg, bool *queued);

#endif
