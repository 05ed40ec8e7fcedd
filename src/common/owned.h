/*
 * An owned byte buffer that knows how to free itself: what a reply carries from wherever its bytes
 * were made (a RocksDB read, a copied RPC reply, a built response) to whoever writes it out.
 */
#ifndef DKV_COMMON_OWNED_H
#define DKV_COMMON_OWNED_H

#include <stddef.h>
#include <stdint.h>

/** An owned buffer: `free_fn(ptr)` releases it. All fields zero = empty. */
typedef struct dkv_owned {
    uint8_t *ptr;
    size_t len;
    void (*free_fn)(uint8_t *ptr);
} dkv_owned_t;

/** Releases an owned buffer (no-op on an empty one) and empties it. Thread: any. */
void dkv_owned_release(dkv_owned_t *o);

/**
 * Gives the bytes of `o` a second owner: on return `o` and `*second` are two references to the
 * same bytes, each released once with dkv_owned_release(); the bytes are freed with the last.
 * Pointers into the bytes stay valid (the bytes do not move); `ptr` of both becomes a small
 * reference-counted holder, so only pointers taken before the call point at the bytes.
 * `o` must not be empty. One heap allocation the first time a buffer is shared.
 * Thread: the reference count is not atomic: every owner must release on one thread.
 */
void dkv_owned_share(dkv_owned_t *o, dkv_owned_t *second);

#endif
