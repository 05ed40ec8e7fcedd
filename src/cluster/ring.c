/*
 * Consistent-hash ring: builds the sorted token array from the canonical node list and answers
 * preference-list queries by binary search plus a clockwise walk. See ring.h for the contract.
 *
 * DESIGN
 * Node i (canonical order) owns tokens XXH3_64bits_withSeed(url, strlen(url), v) for
 * v = 0..V-1: the vnode index is the xxh3 seed, so tokens depend only on the URL bytes and V,
 * never on the other nodes or on the host's byte order. All N*V tokens live in one array sorted by
 * (token, node index); equal tokens (vanishingly rare) are thus ordered by node index on every
 * host. A key with hash h belongs to the first token >= h, wrapping past the largest token to the
 * first one, and its preference list is the distinct nodes met walking on from there (Dynamo §4.3).
 *
 * A plain binary search over N*V tokens misses the cache at nearly every step, so lookups first
 * consult a bucket index over the top `bucket_bits` bits of the hash (about one bucket per token):
 * it narrows the search to the few tokens of one bucket. Worst case stays O(log(N*V)).
 *
 * Choice of DKV_RING_DEFAULT_VNODES: worst node's exact ring share vs 1/N, max over N = 3..10,
 * over 200 ten-node URL sets: V=2048 mean 4.6% (33% of sets beyond 5%), V=4096 mean 3.3% (1.5%
 * beyond 5%, and ~5% of random 3-node clusters beyond API.md's +-1 point), V=8192 mean 2.3%
 * (none beyond 5%, worst 4.4%). Cost at 8192: 16 bytes per token, 8 MiB at 64 nodes.
 */
#include "cluster/ring.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/err.h"

#define MAX_VNODES 65536u
#define MAX_BUCKET_BITS 20 /* caps the index at 4 MiB for the largest rings */

_Static_assert(DKV_RING_MAX_NODES <= 64, "preference_list tracks seen nodes in one uint64_t");

/* Bumped whenever token derivation or the fingerprint encoding changes, so that nodes running
 * different placement code refuse each other in the handshake instead of misplacing keys. */
#define FINGERPRINT_TAG "dkv-ring-v1"

typedef struct token {
    uint64_t token;
    uint32_t node;
} token_t;

struct dkv_ring {
    size_t n;
    unsigned vnodes;
    char **urls; /* canonical (strcmp) order; each owned */
    token_t *tokens;
    size_t token_count; /* n * vnodes */
    /* bucket[j] is the index of the first token >= j << (64 - bucket_bits); bucket[1 << bits] is
     * token_count. */
    uint32_t *bucket;
    unsigned bucket_bits;
    uint64_t fingerprint;
    double *shares; /* each node's share as first replica, computed once (the ring is immutable) */
};

static int cmp_url(const void *a, const void *b)
{
    const char *const *x = a;
    const char *const *y = b;
    return strcmp(*x, *y);
}

static int cmp_token(const void *a, const void *b)
{
    const token_t *x = a;
    const token_t *y = b;
    if (x->token != y->token) {
        return x->token < y->token ? -1 : 1;
    }
    return (x->node > y->node) - (x->node < y->node);
}

/* Appends `v` as 8 little-endian bytes, so the fingerprint is the same on every host. */
static uint8_t *put_u64le(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        *p++ = (uint8_t)(v >> (8 * i));
    }
    return p;
}

/*
 * xxh3 over: tag, N, then for each URL in canonical order its length and bytes, then V. The length
 * prefixes make the encoding injective, so ("ab","c") and ("a","bc") differ.
 */
static uint64_t compute_fingerprint(const dkv_ring_t *r)
{
    size_t tag_len = sizeof(FINGERPRINT_TAG) - 1;
    size_t total = tag_len + 8 + 8;
    for (size_t i = 0; i < r->n; i++) {
        total += 8 + strlen(r->urls[i]);
    }
    uint8_t *buf = dkv_xmalloc(total);
    uint8_t *p = buf;
    memcpy(p, FINGERPRINT_TAG, tag_len);
    p += tag_len;
    p = put_u64le(p, r->n);
    for (size_t i = 0; i < r->n; i++) {
        size_t len = strlen(r->urls[i]);
        p = put_u64le(p, len);
        memcpy(p, r->urls[i], len);
        p += len;
    }
    p = put_u64le(p, r->vnodes);
    uint64_t fp = XXH3_64bits(buf, (size_t)(p - buf));
    free(buf);
    return fp;
}

static void build_buckets(dkv_ring_t *r)
{
    unsigned bits = 1;
    while (bits < MAX_BUCKET_BITS && ((size_t)1 << bits) < r->token_count) {
        bits++;
    }
    size_t buckets = (size_t)1 << bits;
    r->bucket_bits = bits;
    r->bucket = dkv_xmalloc((buckets + 1) * sizeof(*r->bucket));
    size_t t = 0;
    for (size_t j = 0; j < buckets; j++) {
        uint64_t start = (uint64_t)j << (64 - bits);
        while (t < r->token_count && r->tokens[t].token < start) {
            t++;
        }
        r->bucket[j] = (uint32_t)t;
    }
    r->bucket[buckets] = (uint32_t)r->token_count;
}

/* Token i owns the hashes (token[i-1], token[i]]; token 0 also owns the wrap past the last
 * token. Unsigned subtraction gives both arc lengths, the wrap included; 2^64 is exact in a double
 * and each arc is rounded once. */
static void compute_shares(dkv_ring_t *r)
{
    r->shares = dkv_xcalloc(r->n, sizeof(*r->shares));
    if (r->n == 1) {
        r->shares[0] = 1;
        return;
    }
    const double space = 18446744073709551616.0;
    uint64_t prev = r->tokens[r->token_count - 1].token;
    for (size_t t = 0; t < r->token_count; t++) {
        r->shares[r->tokens[t].node] += (double)(r->tokens[t].token - prev) / space;
        prev = r->tokens[t].token;
    }
}

int dkv_ring_new(const char *const *urls, size_t n, unsigned vnodes, dkv_ring_t **out)
{
    if (urls == NULL || out == NULL || n == 0 || n > DKV_RING_MAX_NODES || vnodes == 0 ||
        vnodes > MAX_VNODES) {
        return DKV_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if (urls[i] == NULL || urls[i][0] == '\0') {
            return DKV_EINVAL;
        }
    }

    /* Canonical order first; duplicates are then adjacent. */
    const char **sorted = dkv_xmalloc(n * sizeof(*sorted));
    memcpy(sorted, urls, n * sizeof(*sorted));
    qsort(sorted, n, sizeof(*sorted), cmp_url);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(sorted[i - 1], sorted[i]) == 0) {
            free(sorted);
            return DKV_EINVAL;
        }
    }

    dkv_ring_t *r = dkv_xcalloc(1, sizeof(*r));
    r->n = n;
    r->vnodes = vnodes;
    r->urls = dkv_xcalloc(n, sizeof(*r->urls));
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(sorted[i]);
        r->urls[i] = dkv_xmalloc(len + 1);
        memcpy(r->urls[i], sorted[i], len + 1);
    }
    free(sorted);

    r->token_count = n * vnodes;
    r->tokens = dkv_xmalloc(r->token_count * sizeof(*r->tokens));
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(r->urls[i]);
        for (unsigned v = 0; v < vnodes; v++) {
            token_t *t = &r->tokens[i * vnodes + v];
            t->token = XXH3_64bits_withSeed(r->urls[i], len, (XXH64_hash_t)v);
            t->node = (uint32_t)i;
        }
    }
    qsort(r->tokens, r->token_count, sizeof(*r->tokens), cmp_token);
    build_buckets(r);
    compute_shares(r);
    r->fingerprint = compute_fingerprint(r);

    *out = r;
    return 0;
}

void dkv_ring_free(dkv_ring_t *r)
{
    if (r == NULL) {
        return;
    }
    for (size_t i = 0; i < r->n; i++) {
        free(r->urls[i]);
    }
    free(r->urls);
    free(r->tokens);
    free(r->bucket);
    free(r->shares);
    free(r);
}

size_t dkv_ring_size(const dkv_ring_t *r)
{
    return r->n;
}

const char *dkv_ring_url(const dkv_ring_t *r, size_t idx)
{
    return idx < r->n ? r->urls[idx] : NULL;
}

int dkv_ring_index_of(const dkv_ring_t *r, const char *url)
{
    size_t lo = 0;
    size_t hi = r->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(r->urls[mid], url);
        if (c == 0) {
            return (int)mid;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return DKV_ENOTFOUND;
}

/* Index of the first token >= h, or token_count when h is past the last token (wraps to 0). */
static size_t lower_bound(const dkv_ring_t *r, uint64_t h)
{
    /* Tokens from bucket[j + 1] on are >= (j + 1) << shift > h, so the answer is in [lo, hi]. */
    size_t j = (size_t)(h >> (64 - r->bucket_bits));
    size_t lo = r->bucket[j];
    size_t hi = r->bucket[j + 1];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (r->tokens[mid].token < h) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

size_t dkv_ring_preference_list(const dkv_ring_t *r, dkv_slice_t key, size_t from, uint32_t *out)
{
    if (from > r->n) {
        from = r->n;
    }
    if (from == 0) {
        return 0;
    }
    if (r->n == 1) {
        out[0] = 0; /* a cluster of one: no hashing needed */
        return 1;
    }
    uint64_t h = XXH3_64bits(key.ptr, key.len);
    size_t pos = lower_bound(r, h);
    /* DKV_RING_MAX_NODES <= 64, so one word records the nodes already taken. Every node owns at
     * least one token, so one lap of the ring always collects `from` distinct nodes. */
    uint64_t seen = 0;
    size_t got = 0;
    for (size_t step = 0; step < r->token_count && got < from; step++) {
        if (pos == r->token_count) {
            pos = 0;
        }
        uint32_t node = r->tokens[pos++].node;
        uint64_t bit = (uint64_t)1 << node;
        if ((seen & bit) == 0) {
            seen |= bit;
            out[got++] = node;
        }
    }
    return got;
}

void dkv_ring_primary_shares(const dkv_ring_t *r, double *shares)
{
    memcpy(shares, r->shares, r->n * sizeof(*shares));
}

unsigned dkv_ring_vnodes(const dkv_ring_t *r)
{
    return r->vnodes;
}

uint64_t dkv_ring_fingerprint(const dkv_ring_t *r)
{
    return r->fingerprint;
}
