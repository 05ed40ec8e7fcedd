/*
 * Cluster authentication of the inter-node RPC: a shared secret and a mutual challenge-response
 * in the handshake (docs/security.md has the threat model, docs/protocol.md the frames). Only
 * this file's .c includes libsodium.
 *
 *   client                                               server
 *     HELLO {fp, url, identity, Nc}          ---->
 *                                            <----  HELLO_CHALLENGE {Ns, Ts}
 *     AUTH {Tc}                              ---->   Ts = HMAC(K, "dkv1 server" | H | Ns)
 *                                            <----  HELLO_OK {identity}
 *   H  = SHA-256 of the HELLO frame's bytes (it holds Nc, the client's URL and identity)
 *   Tc = HMAC(K, "dkv1 client" | H | Ns | Ts)
 *   K  = SHA-256 of a secret line of --cluster-secret-file; HMAC is HMAC-SHA256 (RFC 2104,
 *        libsodium's crypto_auth_hmacsha256), tags compared in constant time.
 *
 * Fresh nonces on both sides defeat replay; the direction labels and the transcript defeat
 * reflection (a node cannot be made to answer its own challenge). The client checks the server
 * first, so a node never sends its proof to an impostor. The file holds the current secret on
 * its first line and, during a rotation, the previous one on the second: proofs are made with the
 * key the peer proved it has (the server's: its first line), and accepted with either.
 */
#ifndef DKV_RPC_AUTH_H
#define DKV_RPC_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/slice.h"

#define DKV_AUTH_NONCE_BYTES 32u
#define DKV_AUTH_TAG_BYTES 32u
#define DKV_AUTH_MIN_SECRET_BYTES 32u
#define DKV_AUTH_MAX_KEYS 2u

typedef struct dkv_auth dkv_auth_t;

/**
 * Loads the cluster secret(s) from `path`: one secret per line (current, then optionally the
 * previous one), each at least DKV_AUTH_MIN_SECRET_BYTES bytes (e.g. 64 hex digits from
 * `openssl rand -hex 32`); trailing spaces and CR are ignored, empty lines skipped.
 * @param why  On an error: a one-line reason (never the secret).
 * @return 0 with `*out` (release with dkv_auth_free()); DKV_EINVAL (no secret, too short, more
 *         than two, file larger than 4 KiB); -errno (cannot read it).
 * Thread: main, before the loops start; the loaded keys are then read-only and shared.
 */
int dkv_auth_load(const char *path, char *why, size_t why_len, dkv_auth_t **out);

/** Frees the keys (wiping them). NULL is a no-op. */
void dkv_auth_free(dkv_auth_t *a);

/** Fills `out` with fresh random bytes for a nonce. Thread: any. */
void dkv_auth_nonce(uint8_t out[DKV_AUTH_NONCE_BYTES]);

/** SHA-256 of `bytes` (the HELLO frame): the transcript both sides sign. Thread: any. */
void dkv_auth_transcript(dkv_slice_t bytes, uint8_t out[32]);

/** Server's proof with its current key (the file's first line). Thread: any. */
void dkv_auth_server_tag(const dkv_auth_t *a, const uint8_t transcript[32],
                         const uint8_t nonce_s[DKV_AUTH_NONCE_BYTES],
                         uint8_t out[DKV_AUTH_TAG_BYTES]);

/**
 * Client's check of the server's proof against each of its keys, in constant time per key.
 * @return the index of the key that matched (the client proves itself with the same key), or
 *         -1. Thread: any.
 */
int dkv_auth_check_server(const dkv_auth_t *a, const uint8_t transcript[32],
                          const uint8_t nonce_s[DKV_AUTH_NONCE_BYTES],
                          const uint8_t tag_s[DKV_AUTH_TAG_BYTES]);

/** Client's proof with key `key_idx` (from dkv_auth_check_server()). Thread: any. */
void dkv_auth_client_tag(const dkv_auth_t *a, int key_idx, const uint8_t transcript[32],
                         const uint8_t nonce_s[DKV_AUTH_NONCE_BYTES],
                         const uint8_t tag_s[DKV_AUTH_TAG_BYTES], uint8_t out[DKV_AUTH_TAG_BYTES]);

/** Server's check of the client's proof against each of its keys. Thread: any. */
bool dkv_auth_check_client(const dkv_auth_t *a, const uint8_t transcript[32],
                           const uint8_t nonce_s[DKV_AUTH_NONCE_BYTES],
                           const uint8_t tag_s[DKV_AUTH_TAG_BYTES],
                           const uint8_t tag_c[DKV_AUTH_TAG_BYTES]);

#endif
