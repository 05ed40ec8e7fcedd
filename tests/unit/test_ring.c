/*
 * Unit tests of the consistent-hash ring (cluster/ring.h): the prefix property of preference
 * lists, independence from input order, even spread of first replicas, minimal movement when a
 * node joins, agreement with a brute-force walk, and rejection of bad inputs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <xxhash.h>

#include "cluster/ring.h"
#include "common/err.h"

#define BASE_PORT 8080
#define URL_BYTES 64
#define SPREAD_KEYS 1000000
#define SPREAD_TOLERANCE 0.05 /* relative to 1/N */

/* ---- helpers ---- */

/* A fixed set of node URLs "http://127.0.0.1:<BASE_PORT + i>". */
typedef struct urls {
    char buf[DKV_RING_MAX_NODES + 1][URL_BYTES];
    const char *ptr[DKV_RING_MAX_NODES + 1];
    size_t n;
} urls_t;

static void make_urls(urls_t *u, size_t n)
{
    assert_true(n <= DKV_RING_MAX_NODES + 1);
    for (size_t i = 0; i < n; i++) {
        snprintf(u->buf[i], URL_BYTES, "http://127.0.0.1:%d", BASE_PORT + (int)i);
        u->ptr[i] = u->buf[i];
    }
    u->n = n;
}

static dkv_ring_t *ring_of(const char *const *urls, size_t n, unsigned vnodes)
{
    dkv_ring_t *r = NULL;
    assert_int_equal(dkv_ring_new(urls, n, vnodes, &r), 0);
    assert_non_null(r);
    return r;
}

/* splitmix64 (Steele, Lea, Flood 2014): a fixed-seed key generator, identical on every host. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Writes the next pseudo-random 8-byte key into `key` (little-endian, host-independent). */
static dkv_slice_t next_key(uint64_t *state, uint8_t key[8])
{
    uint64_t x = splitmix64(state);
    for (int i = 0; i < 8; i++) {
        key[i] = (uint8_t)(x >> (8 * i));
    }
    return dkv_slice(key, 8);
}

static uint32_t first_replica(const dkv_ring_t *r, dkv_slice_t key)
{
    uint32_t node = UINT32_MAX;
    assert_int_equal(dkv_ring_preference_list(r, key, 1, &node), 1);
    return node;
}

/* Fisher-Yates with splitmix64, so every run shuffles the same way. */
static void shuffle(const char **a, size_t n, uint64_t *state)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)(splitmix64(state) % i);
        const char *t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

/* ---- preference lists ---- */

static void test_smaller_from_gives_prefix_of_full_list(void **state)
{
    (void)state;
    for (size_t n = 1; n <= 10; n++) {
        urls_t u;
        make_urls(&u, n);
        dkv_ring_t *r = ring_of(u.ptr, n, DKV_RING_DEFAULT_VNODES);
        assert_int_equal(dkv_ring_size(r), n);
        uint64_t seed = 1;
        for (int k = 0; k < 2000; k++) {
            uint8_t kb[8];
            dkv_slice_t key = next_key(&seed, kb);
            uint32_t full[DKV_RING_MAX_NODES];
            assert_int_equal(dkv_ring_preference_list(r, key, n, full), n);
            int seen[DKV_RING_MAX_NODES] = {0};
            for (size_t i = 0; i < n; i++) {
                assert_true(full[i] < n);
                assert_int_equal(seen[full[i]], 0);
                seen[full[i]] = 1;
            }
            for (size_t f = 1; f < n; f++) {
                uint32_t part[DKV_RING_MAX_NODES];
                assert_int_equal(dkv_ring_preference_list(r, key, f, part), f);
                assert_memory_equal(part, full, f * sizeof(part[0]));
            }
        }
        dkv_ring_free(r);
    }
}

static void test_from_above_n_is_clamped_to_n(void **state)
{
    (void)state;
    urls_t u;
    make_urls(&u, 3);
    dkv_ring_t *r = ring_of(u.ptr, 3, 16);
    uint32_t out[8];
    memset(out, 0xff, sizeof(out));
    assert_int_equal(dkv_ring_preference_list(r, dkv_slice_str("k"), 8, out), 3);
    assert_true(out[3] == UINT32_MAX);
    /* An empty key is a valid key. */
    assert_int_equal(dkv_ring_preference_list(r, dkv_slice(NULL, 0), 3, out), 3);
    dkv_ring_free(r);
}

/*
 * Recomputes placement from the derivation documented in ring.c (token v of a node is
 * XXH3_64bits_withSeed(url, len, v); a key belongs to the first token >= its xxh3 hash, ties by
 * node index, wrapping) by scanning all tokens. Nodes built from different code must agree on
 * this, so the test pins it rather than only checking self-consistency.
 */
static void test_lookup_matches_brute_force_walk(void **state)
{
    (void)state;
    enum { N = 5, V = 8 };
    const char *urls[N] = {"http://b:1", "http://a:2", "http://e:3", "http://c:4", "http://d:5"};
    dkv_ring_t *r = ring_of(urls, N, V);
    uint64_t tok[N][V];
    for (size_t i = 0; i < N; i++) {
        const char *url = dkv_ring_url(r, i);
        for (unsigned v = 0; v < V; v++) {
            tok[i][v] = XXH3_64bits_withSeed(url, strlen(url), v);
        }
    }
    uint64_t seed = 7;
    for (int k = 0; k < 5000; k++) {
        uint8_t kb[8];
        dkv_slice_t key = next_key(&seed, kb);
        uint64_t h = XXH3_64bits(key.ptr, key.len);
        /* Successive owners: repeatedly take the smallest (token, node) strictly after the
         * previous one in clockwise order, skipping nodes already listed. */
        uint32_t want[N];
        size_t got = 0;
        int taken[N] = {0};
        uint64_t cur_tok = h;
        uint32_t cur_node = 0;
        int inclusive = 1;
        while (got < N) {
            int found = 0;
            uint64_t best_tok = 0;
            uint32_t best_node = 0;
            for (int pass = 0; pass < 2 && !found; pass++) {
                for (uint32_t i = 0; i < N; i++) {
                    for (unsigned v = 0; v < V; v++) {
                        uint64_t t = tok[i][v];
                        int after;
                        if (pass == 0) {
                            after = inclusive ? t >= cur_tok
                                              : (t > cur_tok || (t == cur_tok && i > cur_node));
                        } else {
                            after = 1; /* wrapped: anything from the start of the ring */
                        }
                        int better = !found || t < best_tok || (t == best_tok && i < best_node);
                        if (after && better) {
                            found = 1;
                            best_tok = t;
                            best_node = i;
                        }
                    }
                }
            }
            assert_true(found);
            if (!taken[best_node]) {
                taken[best_node] = 1;
                want[got++] = best_node;
            }
            cur_tok = best_tok;
            cur_node = best_node;
            inclusive = 0;
        }
        uint32_t have[N];
        assert_int_equal(dkv_ring_preference_list(r, key, N, have), N);
        assert_memory_equal(have, want, sizeof(want));
    }
    dkv_ring_free(r);
}

/* ---- canonical form and fingerprint ---- */

static void test_input_order_does_not_change_placement_or_fingerprint(void **state)
{
    (void)state;
    enum { N = 9 };
    urls_t u;
    make_urls(&u, N);
    dkv_ring_t *ref = ring_of(u.ptr, N, DKV_RING_DEFAULT_VNODES);
    for (size_t i = 1; i < N; i++) {
        assert_true(strcmp(dkv_ring_url(ref, i - 1), dkv_ring_url(ref, i)) < 0);
    }
    uint64_t shuffle_seed = 99;
    for (int round = 0; round < 10; round++) {
        const char *order[N];
        memcpy(order, u.ptr, sizeof(order));
        shuffle(order, N, &shuffle_seed);
        dkv_ring_t *r = ring_of(order, N, DKV_RING_DEFAULT_VNODES);
        assert_true(dkv_ring_fingerprint(r) == dkv_ring_fingerprint(ref));
        for (size_t i = 0; i < N; i++) {
            assert_string_equal(dkv_ring_url(r, i), dkv_ring_url(ref, i));
            assert_int_equal(dkv_ring_index_of(r, u.ptr[i]), dkv_ring_index_of(ref, u.ptr[i]));
        }
        uint64_t seed = 5;
        for (int k = 0; k < 2000; k++) {
            uint8_t kb[8];
            dkv_slice_t key = next_key(&seed, kb);
            uint32_t a[N];
            uint32_t b[N];
            assert_int_equal(dkv_ring_preference_list(r, key, N, a), N);
            assert_int_equal(dkv_ring_preference_list(ref, key, N, b), N);
            assert_memory_equal(a, b, sizeof(a));
        }
        dkv_ring_free(r);
    }
    dkv_ring_free(ref);
}

static void test_different_sets_or_vnodes_give_different_fingerprints(void **state)
{
    (void)state;
    urls_t u;
    make_urls(&u, 5);
    dkv_ring_t *five = ring_of(u.ptr, 5, 64);
    dkv_ring_t *four = ring_of(u.ptr, 4, 64);
    dkv_ring_t *five_v = ring_of(u.ptr, 5, 65);
    const char *other[5] = {u.ptr[0], u.ptr[1], u.ptr[2], u.ptr[3], "http://127.0.0.1:9999"};
    dkv_ring_t *swapped = ring_of(other, 5, 64);
    uint64_t fp = dkv_ring_fingerprint(five);
    assert_true(fp != dkv_ring_fingerprint(four));
    assert_true(fp != dkv_ring_fingerprint(five_v));
    assert_true(fp != dkv_ring_fingerprint(swapped));
    dkv_ring_free(five);
    dkv_ring_free(four);
    dkv_ring_free(five_v);
    dkv_ring_free(swapped);

    /* The URL list is length-prefixed, so moving a byte across a boundary is a different set. */
    const char *ab_c[2] = {"ab", "c"};
    const char *a_bc[2] = {"a", "bc"};
    dkv_ring_t *x = ring_of(ab_c, 2, 4);
    dkv_ring_t *y = ring_of(a_bc, 2, 4);
    assert_true(dkv_ring_fingerprint(x) != dkv_ring_fingerprint(y));
    dkv_ring_free(x);
    dkv_ring_free(y);
}

/* ---- spread and movement ---- */

/*
 * With V random tokens per node a node's share has a relative spread of about 1/sqrt(V), which is
 * why DKV_RING_DEFAULT_VNODES is large; this checks the default, not a value tuned per N.
 */
static void test_first_replicas_spread_within_5_percent(void **state)
{
    (void)state;
    for (size_t n = 3; n <= 10; n++) {
        urls_t u;
        make_urls(&u, n);
        dkv_ring_t *r = ring_of(u.ptr, n, DKV_RING_DEFAULT_VNODES);
        size_t count[DKV_RING_MAX_NODES] = {0};
        uint64_t seed = 12345;
        for (int k = 0; k < SPREAD_KEYS; k++) {
            uint8_t kb[8];
            count[first_replica(r, next_key(&seed, kb))]++;
        }
        double expect = (double)SPREAD_KEYS / (double)n;
        for (size_t i = 0; i < n; i++) {
            double rel = ((double)count[i] - expect) / expect;
            if (rel > SPREAD_TOLERANCE || rel < -SPREAD_TOLERANCE) {
                fail_msg("N=%zu node %zu has %zu of %d first replicas (%+.2f%% of 1/N)", n, i,
                         count[i], SPREAD_KEYS, rel * 100.0);
            }
        }
        dkv_ring_free(r);
    }
}

/*
 * The exact shares (arc lengths) agree with where sampled keys land, sum to 1, and a one-node
 * ring owns everything. Few vnodes make the shares uneven, so agreement is not a coincidence.
 */
static void test_primary_shares_match_sampled_first_replicas(void **state)
{
    (void)state;
    urls_t u;
    make_urls(&u, 4);
    dkv_ring_t *r = ring_of(u.ptr, 4, 16);
    double shares[4];
    dkv_ring_primary_shares(r, shares);
    size_t count[4] = {0};
    uint64_t seed = 777;
    for (int k = 0; k < SPREAD_KEYS; k++) {
        uint8_t kb[8];
        count[first_replica(r, next_key(&seed, kb))]++;
    }
    double sum = 0;
    for (size_t i = 0; i < 4; i++) {
        double sampled = (double)count[i] / SPREAD_KEYS;
        if (sampled - shares[i] > 0.005 || shares[i] - sampled > 0.005) {
            fail_msg("node %zu: exact share %.4f, sampled %.4f", i, shares[i], sampled);
        }
        sum += shares[i];
    }
    assert_true(sum > 0.999999 && sum < 1.000001);
    dkv_ring_free(r);

    dkv_ring_t *one = ring_of(u.ptr, 1, 8);
    dkv_ring_primary_shares(one, shares);
    assert_true(shares[0] == 1.0);
    dkv_ring_free(one);
}

/*
 * Consistent hashing's point (Karger et al. §4): when a node joins, only about 1/(N+1) of the keys
 * change owner, and all of them move to the new node; every other node's list keeps its order.
 */
static void test_added_node_takes_about_1_over_n_plus_1_and_nothing_else_moves(void **state)
{
    (void)state;
    for (size_t n = 3; n <= 9; n += 3) {
        urls_t u;
        make_urls(&u, n + 1);
        dkv_ring_t *before = ring_of(u.ptr, n, DKV_RING_DEFAULT_VNODES);
        dkv_ring_t *after = ring_of(u.ptr, n + 1, DKV_RING_DEFAULT_VNODES);
        int added = dkv_ring_index_of(after, u.ptr[n]);
        assert_true(added >= 0);
        /* Maps indexes of `before` to those of `after` by URL, not by assuming the sort order. */
        uint32_t remap[DKV_RING_MAX_NODES];
        for (size_t i = 0; i < n; i++) {
            int j = dkv_ring_index_of(after, dkv_ring_url(before, i));
            assert_true(j >= 0);
            remap[i] = (uint32_t)j;
        }
        size_t moved = 0;
        uint64_t seed = 777;
        for (int k = 0; k < SPREAD_KEYS; k++) {
            uint8_t kb[8];
            dkv_slice_t key = next_key(&seed, kb);
            uint32_t old_owner = remap[first_replica(before, key)];
            uint32_t new_owner = first_replica(after, key);
            if (new_owner != old_owner) {
                assert_int_equal(new_owner, added);
                moved++;
            }
            if (k % 100 == 0) {
                /* Full lists: dropping the new node from the new list gives the old list. */
                uint32_t a[DKV_RING_MAX_NODES];
                uint32_t b[DKV_RING_MAX_NODES];
                assert_int_equal(dkv_ring_preference_list(before, key, n, a), n);
                assert_int_equal(dkv_ring_preference_list(after, key, n + 1, b), n + 1);
                size_t j = 0;
                for (size_t i = 0; i < n + 1; i++) {
                    if (b[i] != (uint32_t)added) {
                        assert_int_equal(b[i], remap[a[j]]);
                        j++;
                    }
                }
                assert_int_equal(j, n);
            }
        }
        double frac = (double)moved / SPREAD_KEYS;
        double ideal = 1.0 / (double)(n + 1);
        if (frac < 0.5 * ideal || frac > 1.5 * ideal) {
            fail_msg("N=%zu -> %zu moved %.4f of keys, ideal %.4f", n, n + 1, frac, ideal);
        }
        dkv_ring_free(before);
        dkv_ring_free(after);
    }
}

/* ---- bad inputs ---- */

static void test_bad_inputs_are_rejected_and_out_untouched(void **state)
{
    (void)state;
    urls_t u;
    make_urls(&u, DKV_RING_MAX_NODES + 1);
    dkv_ring_t *sentinel = (dkv_ring_t *)&u;
    dkv_ring_t *r = sentinel;

    assert_int_equal(dkv_ring_new(u.ptr, 0, 16, &r), DKV_EINVAL);
    assert_int_equal(dkv_ring_new(u.ptr, DKV_RING_MAX_NODES + 1, 16, &r), DKV_EINVAL);
    assert_int_equal(dkv_ring_new(u.ptr, 3, 0, &r), DKV_EINVAL);
    assert_int_equal(dkv_ring_new(u.ptr, 3, 65537, &r), DKV_EINVAL);
    assert_int_equal(dkv_ring_new(NULL, 3, 16, &r), DKV_EINVAL);

    const char *dup[3] = {"http://a:1", "http://b:1", "http://a:1"};
    assert_int_equal(dkv_ring_new(dup, 3, 16, &r), DKV_EINVAL);
    const char *empty[2] = {"http://a:1", ""};
    assert_int_equal(dkv_ring_new(empty, 2, 16, &r), DKV_EINVAL);
    const char *null_url[2] = {"http://a:1", NULL};
    assert_int_equal(dkv_ring_new(null_url, 2, 16, &r), DKV_EINVAL);
    assert_ptr_equal(r, sentinel);

    /* The limits themselves are accepted. */
    assert_int_equal(dkv_ring_new(u.ptr, DKV_RING_MAX_NODES, 1, &r), 0);
    assert_int_equal(dkv_ring_size(r), DKV_RING_MAX_NODES);
    uint32_t all[DKV_RING_MAX_NODES];
    assert_int_equal(dkv_ring_preference_list(r, dkv_slice_str("x"), DKV_RING_MAX_NODES, all),
                     DKV_RING_MAX_NODES);
    dkv_ring_free(r);
    assert_int_equal(dkv_ring_new(u.ptr, 1, 65536, &r), 0);
    assert_int_equal(dkv_ring_preference_list(r, dkv_slice_str("x"), 1, all), 1);
    assert_int_equal(all[0], 0);
    dkv_ring_free(r);

    dkv_ring_free(NULL);
}

static void test_index_of_finds_members_and_rejects_strangers(void **state)
{
    (void)state;
    urls_t u;
    make_urls(&u, 6);
    dkv_ring_t *r = ring_of(u.ptr, 6, 8);
    for (size_t i = 0; i < 6; i++) {
        int idx = dkv_ring_index_of(r, u.ptr[i]);
        assert_true(idx >= 0 && idx < 6);
        assert_string_equal(dkv_ring_url(r, (size_t)idx), u.ptr[i]);
    }
    assert_int_equal(dkv_ring_index_of(r, "http://127.0.0.1:9999"), DKV_ENOTFOUND);
    assert_int_equal(dkv_ring_index_of(r, "http://127.0.0.1:808"), DKV_ENOTFOUND);
    assert_int_equal(dkv_ring_index_of(r, ""), DKV_ENOTFOUND);
    dkv_ring_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smaller_from_gives_prefix_of_full_list),
        cmocka_unit_test(test_from_above_n_is_clamped_to_n),
        cmocka_unit_test(test_lookup_matches_brute_force_walk),
        cmocka_unit_test(test_input_order_does_not_change_placement_or_fingerprint),
        cmocka_unit_test(test_different_sets_or_vnodes_give_different_fingerprints),
        cmocka_unit_test(test_first_replicas_spread_within_5_percent),
        cmocka_unit_test(test_primary_shares_match_sampled_first_replicas),
        cmocka_unit_test(test_added_node_takes_about_1_over_n_plus_1_and_nothing_else_moves),
        cmocka_unit_test(test_bad_inputs_are_rejected_and_out_untouched),
        cmocka_unit_test(test_index_of_finds_members_and_rejects_strangers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
