/* Cluster secret and the handshake's HMAC-SHA256 proofs (libsodium); the protocol is in auth.h. */
#include "rpc/auth.h"

#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_FILE_BYTES 4096

_Static_assert(DKV_AUTH_TAG_BYTES == crypto_auth_hmacsha256_BYTES, "tag is an HMAC-SHA256");
_Static_assert(crypto_hash_sha256_BYTES == 32, "transcript is a SHA-256");

static const char LABEL_SERVER[] = "dkv1 server";
static const char LABEL_CLIENT[] = "dkv1 client";

struct dkv_auth {
    size_t n;
    uint8_t keys[DKV_AUTH_MAX_KEYS][crypto_auth_hmacsha256_KEYBYTES];
};

int dkv_auth_load(const char *path, char *why, size_t why_len, dkv_auth_t **out)
{
    if (sodium_init() < 0) {
        snprintf(why, why_len, "libsodium failed to initialise");
        return DKV_EIO;
    }
    FILE *f = fopen(path, "rbe");
    if (f == NULL) {
        int e = errno;
        snprintf(why, why_len, "cannot read --cluster-secret-file %s: %s", path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077) != 0) {
        DKV_LOG_WARN("--cluster-secret-file %s is readable by other users (chmod 600 it)", path);
    }
    char *buf = dkv_xmalloc(MAX_FILE_BYTES + 1);
    size_t len = fread(buf, 1, MAX_FILE_BYTES + 1, f);
    fclose(f);
    int rc = 0;
    dkv_auth_t *a = dkv_xcalloc(1, sizeof(*a));
    if (len > MAX_FILE_BYTES) {
        snprintf(why, why_len, "--cluster-secret-file %s is larger than %d bytes", path,
                 MAX_FILE_BYTES);
        rc = DKV_EINVAL;
        goto out;
    }
    size_t pos = 0;
    while (pos < len) {
        size_t end = pos;
        while (end < len && buf[end] != '\n') {
            end++;
        }
        size_t n = end - pos;
        while (n > 0 && (buf[pos + n - 1] == '\r' || buf[pos + n - 1] == ' ' ||
                         buf[pos + n - 1] == '\t')) {
            n--;
        }
        if (n > 0) {
            if (a->n == DKV_AUTH_MAX_KEYS) {
                snprintf(why, why_len,
                         "--cluster-secret-file %s holds more than 2 secrets (current, previous)",
                         path);
                rc = DKV_EINVAL;
                goto out;
            }
            if (n < DKV_AUTH_MIN_SECRET_BYTES) {
                snprintf(why, why_len,
                         "--cluster-secret-file %s: secret %zu is shorter than %u bytes (use "
                         "e.g. openssl rand -hex 32)",
                         path, a->n + 1, DKV_AUTH_MIN_SECRET_BYTES);
                rc = DKV_EINVAL;
                goto out;
            }
            crypto_hash_sha256(a->keys[a->n], (const unsigned char *)buf + pos, n);
            a->n++;
        }
        pos = end + 1;
    }
    if (a->n == 0) {
        snprintf(why, why_len, "--cluster-secret-file %s holds no secret", path);
        rc = DKV_EINVAL;
    }
out:
    sodium_memzero(buf, MAX_FILE_BYTES + 1);
    free(buf);
    if (rc != 0) {
        dkv_auth_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void dkv_auth_free(dkv_auth_t *a)
{
    if (a == NULL) {
        return;
    }
    sodium_memzero(a, sizeof(*a));
    free(a);
}

void dkv_auth_nonce(uint8_t out[DKV_AUTH_NONCE_BYTES])
{
    randombytes_buf(out, DKV_AUTH_NONCE_BYTES);
}

void dkv_auth_transcript(dkv_slice_t bytes, uint8_t out[32])
{
    crypto_hash_sha256(out, bytes.ptr, bytes.len);
}

static void server_tag(const uint8_t key[32], const uint8_t transcript[32], const uint8_t *nonce_s,
                       uint8_t *out)
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, crypto_auth_hmacsha256_KEYBYTES);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)LABEL_SERVER, sizeof(LABEL_SERVER));
    crypto_auth_hmacsha256_update(&st, transcript, 32);
    crypto_auth_hmacsha256_update(&st, nonce_s, DKV_AUTH_NONCE_BYTES);
    crypto_auth_hmacsha256_final(&st, out);
}

static void client_tag(const uint8_t key[32], const uint8_t transcript[32], const uint8_t *nonce_s,
                       const uint8_t *tag_s, uint8_t *out)
{
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, key, crypto_auth_hmacsha256_KEYBYTES);
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)LABEL_CLIENT, sizeof(LABEL_CLIENT));
    crypto_auth_hmacsha256_update(&st, transcript, 32);
    crypto_auth_hmacsha256_update(&st, nonce_s, DKV_AUTH_NONCE_BYTES);
    crypto_auth_hmacsha256_update(&st, tag_s, DKV_AUTH_TAG_BYTES);
    crypto_auth_hmacsha256_final(&st, out);
}

void dkv_auth_server_tag(const dkv_auth_t *a, const uint8_t transcript[32],
                         const uint8_t nonce_s[DKV_AUTH_NONCE_BYTES],
                         uint8_t out[DKV_AUTH_TAG_BYTES])
{
    server_tag(a->keys[0], transcript, nonce_s, out);
}

int dkv_auth_check_server(const dkv_auth_t *a, const uint8_t transcript[32],
                          const uint8_t nonce_s[DKV_AUTH_NONCE_BYTES],
                          const uint8_t tag_s[DKV_AUTH_TAG_BYTES])
{
    int found = -1;
    for (size_t i = 0; i < a->n; i++) {
        uint8_t want[DKV_AUTH_TAG_BYTES];
        server_tag(a->keys[i], transcript, nonce_s, want);
        if (sodium_memcmp(want, tag_s, DKV_AUTH_TAG_BYTES) == 0 && found < 0) {
            found = (int)i;
        }
    }
    return found;
}

void dkv_auth_client_tag(const dkv_auth_t *a, int key_idx, const uint8_t transcript[32],
                         const uint8_t nonce_s[DKV_AUTH_NONCE_BYTES],
                         const uint8_t tag_s[DKV_AUTH_TAG_BYTES], uint8_t out[DKV_AUTH_TAG_BYTES])
{
    size_t i = key_idx >= 0 && (size_t)key_idx < a->n ? (size_t)key_idx : 0;
    client_tag(a->keys[i], transcript, nonce_s, tag_s, out);
}

bool dkv_auth_check_client(const dkv_auth_t *a, const uint8_t transcript[32],
                           const uint8_t nonce_s[DKV_AUTH_NONCE_BYTES],
                           const uint8_t tag_s[DKV_AUTH_TAG_BYTES],
                           const uint8_t tag_c[DKV_AUTH_TAG_BYTES])
{
    bool ok = false;
    for (size_t i = 0; i < a->n; i++) {
        uint8_t want[DKV_AUTH_TAG_BYTES];
        client_tag(a->keys[i], transcript, nonce_s, tag_s, want);
        ok = (sodium_memcmp(want, tag_c, DKV_AUTH_TAG_BYTES) == 0) || ok;
    }
    return ok;
}
