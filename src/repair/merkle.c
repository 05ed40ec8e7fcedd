/* Anti-entropy hash trees over the digest column family; see merkle.h. */
#include "repair/merkle.h"

#include "cluster/hlc.h"
#include "common/conf.h"
#include "common/err.h"
#include "common/log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define DIRTY_WORDS (DKV_MERKLE_SEGMENTS / 64u)

struct dkv_merkle {
    dkv_store_t *store;
    const dkv_ring_t *ring;
    uint32_t self;
    size_t n;
    _Atomic uint64_t dirty[DIRTY_WORDS];
    _Atomic uint64_t refreshed_at_ms;
    _Atomic bool refreshing; /* a refresh runs: some taken segments are not rehashed yet */
    _Atomic bool built;
    pthread_mutex_t mu;  /* the published hashes and counts below */
    uint64_t *leaves;    /* [n][DKV_MERKLE_SEGMENTS]; self's row unused */
    uint64_t *branches;  /* [n][DKV_MERKLE_BRANCHES] */
    uint32_t *seg_records; /* per segment, as of its last refresh */
    uint32_t *seg_tombs;
    uint64_t records;
    uint64_t tombs;
    uint64_t *acc;       /* refresh scratch: [n] leaf accumulators of one segment */
};

uint64_t dkv_merkle_entry_hash(dkv_slice_t key, const dkv_store_digest_t *d)
{
    uint8_t buf[2 + DKV_MAX_KEY_BYTES + 9];
    size_t klen = key.len <= DKV_MAX_KEY_BYTES ? key.len : DKV_MAX_KEY_BYTES;
    buf[0] = (uint8_t)(klen >> 8);
    buf[1] = (uint8_t)klen;
    memcpy(buf + 2, key.ptr, klen);
    uint8_t *p = buf + 2 + klen;
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(d->ts >> (56 - 8 * i));
    }
    p[8] = d->tombstone ? 1u : 0u;
    return XXH3_64bits(buf, 2 + klen + 9);
}

bool dkv_merkle_shared(const dkv_ring_t *ring, dkv_slice_t key, uint8_t from, uint32_t a,
                       uint32_t b)
{
    if (from == 0) {
        return false;
    }
    uint32_t pl[DKV_RING_MAX_NODES];
    size_t got = dkv_ring_preference_list(ring, key, from, pl);
    bool has_a = false;
    bool has_b = false;
    for (size_t i = 0; i < got; i++) {
        has_a |= pl[i] == a;
        has_b |= pl[i] == b;
    }
    return has_a && has_b;
}

int dkv_merkle_new(dkv_store_t *store, const dkv_ring_t *ring, uint32_t self_idx,
                   dkv_merkle_t **out)
{
    dkv_merkle_t *m = dkv_xcalloc(1, sizeof(*m));
    m->store = store;
    m->ring = ring;
    m->self = self_idx;
    m->n = dkv_ring_size(ring);
    pthread_mutex_init(&m->mu, NULL);
    m->leaves = dkv_xcalloc(m->n * DKV_MERKLE_SEGMENTS, sizeof(uint64_t));
    m->branches = dkv_xcalloc(m->n * DKV_MERKLE_BRANCHES, sizeof(uint64_t));
    m->seg_records = dkv_xcalloc(DKV_MERKLE_SEGMENTS, sizeof(uint32_t));
    m->seg_tombs = dkv_xcalloc(DKV_MERKLE_SEGMENTS, sizeof(uint32_t));
    m->acc = dkv_xcalloc(m->n, sizeof(uint64_t));
    for (size_t i = 0; i < DIRTY_WORDS; i++) {
        atomic_init(&m->dirty[i], ~(uint64_t)0);
    }
    *out = m;
    return 0;
}

void dkv_merkle_free(dkv_merkle_t *m)
{
    if (m == NULL) {
        return;
    }
    pthread_mutex_destroy(&m->mu);
    free(m->leaves);
    free(m->branches);
    free(m->seg_records);
    free(m->seg_tombs);
    free(m->acc);
    free(m);
}

void dkv_merkle_mark_dirty(void *arg, uint32_t segment)
{
    dkv_merkle_t *m = arg;
    segment %= DKV_MERKLE_SEGMENTS;
    uint64_t bit = (uint64_t)1 << (segment % 64);
    /* A relaxed load first: under a write-heavy load most segments are already dirty. */
    if ((atomic_load_explicit(&m->dirty[segment / 64], memory_order_relaxed) & bit) != 0) {
        return;
    }
    atomic_fetch_or(&m->dirty[segment / 64], bit);
}

uint32_t dkv_merkle_dirty_count(dkv_merkle_t *m)
{
    /* Counted on demand (1,024 words): a separate counter would race with the bits. */
    uint32_t n = 0;
    for (size_t w = 0; w < DIRTY_WORDS; w++) {
        n += (uint32_t)__builtin_popcountll(atomic_load_explicit(&m->dirty[w],
                                                                 memory_order_relaxed));
    }
    return n;
}

bool dkv_merkle_built(dkv_merkle_t *m)
{
    return atomic_load(&m->built);
}

bool dkv_merkle_refreshing(dkv_merkle_t *m)
{
    return atomic_load(&m->refreshing);
}

uint64_t dkv_merkle_refreshed_at_ms(dkv_merkle_t *m)
{
    return atomic_load(&m->refreshed_at_ms);
}

/* Publishes segment `seg`'s new leaves (m->acc) and counts; updates the branches by XOR. */
static void publish(dkv_merkle_t *m, uint32_t seg, uint32_t records, uint32_t tombs)
{
    pthread_mutex_lock(&m->mu);
    for (size_t p = 0; p < m->n; p++) {
        if (p == m->self) {
            continue;
        }
        uint64_t *leaf = &m->leaves[p * DKV_MERKLE_SEGMENTS + seg];
        m->branches[p * DKV_MERKLE_BRANCHES + seg / DKV_MERKLE_FANOUT] ^= *leaf ^ m->acc[p];
        *leaf = m->acc[p];
    }
    m->records += (uint64_t)records - m->seg_records[seg];
    m->tombs += (uint64_t)tombs - m->seg_tombs[seg];
    m->seg_records[seg] = records;
    m->seg_tombs[seg] = tombs;
    pthread_mutex_unlock(&m->mu);
}

/* Recomputes segments lo <= s < hi (their dirty bits already cleared) with one scan. */
static int refresh_run(dkv_merkle_t *m, uint32_t lo, uint32_t hi)
{
    dkv_store_raw_iter_t *it = NULL;
    int rc = dkv_store_digest_iter_new(m->store, lo, hi, &it);
    if (rc != 0) {
        return rc;
    }
    uint32_t cur = lo;
    uint32_t records = 0;
    uint32_t tombs = 0;
    memset(m->acc, 0, m->n * sizeof(uint64_t));
    for (;;) {
        uint32_t seg;
        dkv_slice_t key;
        dkv_store_digest_t d;
        rc = dkv_store_digest_next(it, &seg, &key, &d);
        if (rc != 0) {
            break;
        }
        while (cur < seg) {
            publish(m, cur++, records, tombs);
            records = 0;
            tombs = 0;
            memset(m->acc, 0, m->n * sizeof(uint64_t));
        }
        records++;
        tombs += d.tombstone ? 1u : 0u;
        if (d.from == 0) {
            continue;
        }
        uint32_t pl[DKV_RING_MAX_NODES];
        size_t got = dkv_ring_preference_list(m->ring, key, d.from, pl);
        bool mine = false;
        for (size_t i = 0; i < got; i++) {
            mine |= pl[i] == m->self;
        }
        if (!mine) {
            continue;
        }
        uint64_t h = dkv_merkle_entry_hash(key, &d);
        for (size_t i = 0; i < got; i++) {
            m->acc[pl[i]] ^= h;
        }
    }
    dkv_store_raw_iter_free(it);
    if (rc != DKV_ENOTFOUND) {
        /* The store failed: the segments from `cur` on are redone next time. */
        for (uint32_t s = cur; s < hi; s++) {
            dkv_merkle_mark_dirty(m, s);
        }
        return rc;
    }
    while (cur < hi) {
        publish(m, cur++, records, tombs);
        records = 0;
        tombs = 0;
        memset(m->acc, 0, m->n * sizeof(uint64_t));
    }
    return 0;
}

int dkv_merkle_refresh(dkv_merkle_t *m, uint32_t *rehashed)
{
    uint64_t started = dkv_hlc_system_clock_ms(NULL);
    atomic_store(&m->refreshing, true);
    /* Take the dirty set first: a write after this re-marks its segment, and the scans below
     * start after it, so no write is missed (at worst a segment is recomputed twice). */
    uint64_t *taken = dkv_xmalloc(DIRTY_WORDS * sizeof(uint64_t));
    uint32_t n_taken = 0;
    for (size_t w = 0; w < DIRTY_WORDS; w++) {
        taken[w] = atomic_exchange(&m->dirty[w], 0);
        n_taken += (uint32_t)__builtin_popcountll(taken[w]);
    }
    int rc = 0;
    uint32_t s = 0;
    while (s < DKV_MERKLE_SEGMENTS) {
        if ((taken[s / 64] & ((uint64_t)1 << (s % 64))) == 0) {
            s++;
            continue;
        }
        uint32_t e = s + 1;
        while (e < DKV_MERKLE_SEGMENTS && (taken[e / 64] & ((uint64_t)1 << (e % 64))) != 0) {
            e++;
        }
        if (rc == 0) {
            rc = refresh_run(m, s, e);
        } else {
            for (uint32_t k = s; k < e; k++) {
                dkv_merkle_mark_dirty(m, k);
            }
        }
        s = e;
    }
    free(taken);
    if (rc == 0) {
        atomic_store(&m->built, true);
        atomic_store(&m->refreshed_at_ms, started);
    }
    atomic_store(&m->refreshing, false);
    if (rehashed != NULL) {
        *rehashed = n_taken;
    }
    return rc;
}

int dkv_merkle_branches(dkv_merkle_t *m, uint32_t peer, uint64_t out[DKV_MERKLE_BRANCHES])
{
    if (peer >= m->n || peer == m->self) {
        return DKV_EINVAL;
    }
    pthread_mutex_lock(&m->mu);
    memcpy(out, &m->branches[peer * DKV_MERKLE_BRANCHES], DKV_MERKLE_BRANCHES * sizeof(uint64_t));
    pthread_mutex_unlock(&m->mu);
    return 0;
}

int dkv_merkle_leaves(dkv_merkle_t *m, uint32_t peer, uint32_t branch,
                      uint64_t out[DKV_MERKLE_FANOUT])
{
    if (peer >= m->n || peer == m->self || branch >= DKV_MERKLE_BRANCHES) {
        return DKV_EINVAL;
    }
    pthread_mutex_lock(&m->mu);
    memcpy(out, &m->leaves[(size_t)peer * DKV_MERKLE_SEGMENTS + branch * DKV_MERKLE_FANOUT],
           DKV_MERKLE_FANOUT * sizeof(uint64_t));
    pthread_mutex_unlock(&m->mu);
    return 0;
}

void dkv_merkle_counts(dkv_merkle_t *m, uint64_t *records, uint64_t *tombstones)
{
    pthread_mutex_lock(&m->mu);
    *records = m->records;
    *tombstones = m->tombs;
    pthread_mutex_unlock(&m->mu);
}
