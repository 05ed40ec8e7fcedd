/*
 * Unit tests of the RocksDB store (store/store.h) in a temporary directory: round trips, the
 * replica-side last-write-wins merge (an older write never replaces a newer one, in any arrival
 * order and across a reopen), ordered range scans over binary keys, input validation, the
 * database lock that keeps two stores off one directory, and a write-ahead-log write that fails
 * (a file-size limit stands in for a full disk): refused writes, reads on, and the resume.
 */
#define _XOPEN_SOURCE 700 /* nftw() */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/record.h"
#include "store/store.h"

/* ---- helpers ---- */

typedef struct fixture {
    char dir[64];
    dkv_store_t *store;
} fixture_t;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        return -1;
    }
    snprintf(f->dir, sizeof(f->dir), "/tmp/dkv-test-store-XXXXXX");
    if (mkdtemp(f->dir) == NULL || dkv_store_open(f->dir, NULL, &f->store) != 0) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    dkv_store_close(f->store);
    rm_rf(f->dir);
    free(f);
    return 0;
}

static void reopen(fixture_t *f)
{
    dkv_store_close(f->store);
    f->store = NULL;
    assert_int_equal(dkv_store_open(f->dir, NULL, &f->store), 0);
}

static void put_val(dkv_store_t *s, const char *key, uint64_t ts, const void *v, size_t len)
{
    dkv_record_t r = {ts, false, dkv_slice(v, len), 0};
    assert_int_equal(dkv_store_put(s, dkv_slice_str(key), &r), 0);
}

static void put_tomb(dkv_store_t *s, const char *key, uint64_t ts)
{
    dkv_record_t r = {ts, true, dkv_slice(NULL, 0), 0};
    assert_int_equal(dkv_store_put(s, dkv_slice_str(key), &r), 0);
}

/* Reads `key` and checks its record. `v` NULL means a tombstone. */
static void expect_record(dkv_store_t *s, dkv_slice_t key, uint64_t ts, const void *v, size_t len)
{
    uint8_t *data = NULL;
    size_t n = 0;
    assert_int_equal(dkv_store_get(s, key, &data, &n), 0);
    dkv_record_t r;
    assert_int_equal(dkv_record_decode(dkv_slice(data, n), &r), 0);
    assert_true(r.ts == ts);
    assert_int_equal(r.tombstone, v == NULL);
    assert_int_equal(r.value.len, v == NULL ? 0 : len);
    if (v != NULL && len > 0) {
        assert_memory_equal(r.value.ptr, v, len);
    }
    dkv_store_free(data);
}

static void expect_missing(dkv_store_t *s, const char *key)
{
    uint8_t *data = (uint8_t *)"untouched";
    size_t n = 77;
    assert_int_equal(dkv_store_get(s, dkv_slice_str(key), &data, &n), DKV_ENOTFOUND);
    assert_int_equal(n, 77); /* out-parameters are written only on success */
}

/* ---- tests ---- */

static void test_put_get_roundtrip(void **state)
{
    fixture_t *f = *state;
    const uint8_t v[] = {0, 1, '\r', '\n', '\r', '\n', 0xff};
    put_val(f->store, "k", 100, v, sizeof(v));
    expect_record(f->store, dkv_slice_str("k"), 100, v, sizeof(v));
    put_val(f->store, "empty", 101, "", 0);
    expect_record(f->store, dkv_slice_str("empty"), 101, "", 0);
    put_tomb(f->store, "gone", 102);
    expect_record(f->store, dkv_slice_str("gone"), 102, NULL, 0);
    expect_missing(f->store, "other");
    expect_missing(f->store, "k\x01");
}

static void test_large_value(void **state)
{
    fixture_t *f = *state;
    size_t n = (1u << 20) + 1;
    uint8_t *v = malloc(n);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) {
        v[i] = (uint8_t)(i * 13);
    }
    put_val(f->store, "big", 1, v, n);
    expect_record(f->store, dkv_slice_str("big"), 1, v, n);
    free(v);
}

static void test_older_write_never_overwrites_newer(void **state)
{
    fixture_t *f = *state;
    put_val(f->store, "k", 10, "new", 3);
    put_val(f->store, "k", 5, "old", 3);
    expect_record(f->store, dkv_slice_str("k"), 10, "new", 3);
    /* An older tombstone does not delete a newer value, nor does an older value revive a key. */
    put_tomb(f->store, "k", 9);
    expect_record(f->store, dkv_slice_str("k"), 10, "new", 3);
    put_tomb(f->store, "d", 20);
    put_val(f->store, "d", 19, "zombie", 6);
    expect_record(f->store, dkv_slice_str("d"), 20, NULL, 0);
    /* A newer write does replace. */
    put_val(f->store, "k", 11, "newer", 5);
    expect_record(f->store, dkv_slice_str("k"), 11, "newer", 5);
    put_val(f->store, "d", 21, "back", 4);
    expect_record(f->store, dkv_slice_str("d"), 21, "back", 4);
}

static void test_older_write_after_reopen(void **state)
{
    fixture_t *f = *state;
    put_val(f->store, "k", 10, "new", 3);
    reopen(f);
    put_val(f->store, "k", 5, "old", 3);
    expect_record(f->store, dkv_slice_str("k"), 10, "new", 3);
    reopen(f);
    expect_record(f->store, dkv_slice_str("k"), 10, "new", 3);
}

static void test_equal_ts_tombstone_beats_value(void **state)
{
    fixture_t *f = *state;
    put_val(f->store, "a", 7, "v", 1);
    put_tomb(f->store, "a", 7);
    expect_record(f->store, dkv_slice_str("a"), 7, NULL, 0);
    put_tomb(f->store, "b", 7);
    put_val(f->store, "b", 7, "v", 1);
    expect_record(f->store, dkv_slice_str("b"), 7, NULL, 0);
    /* Equal ts between values: the smaller value, whatever the arrival order. */
    put_val(f->store, "c", 7, "b", 1);
    put_val(f->store, "c", 7, "a", 1);
    put_val(f->store, "c", 7, "ab", 2);
    expect_record(f->store, dkv_slice_str("c"), 7, "a", 1);
}

static void test_many_overwrites_keep_newest(void **state)
{
    fixture_t *f = *state;
    char v[32];
    /* Increasing timestamps: the last write wins. */
    for (uint64_t ts = 1; ts <= 1000; ts++) {
        int n = snprintf(v, sizeof(v), "value-%llu", (unsigned long long)ts);
        put_val(f->store, "hot", ts, v, (size_t)n);
    }
    expect_record(f->store, dkv_slice_str("hot"), 1000, "value-1000", 10);
    /* A scrambled order (ts = i * 7919 mod 1009, a permutation of 1..1008): the maximum wins
     * although it arrives in the middle of the chain of merge operands. */
    for (uint64_t i = 1; i < 1009; i++) {
        uint64_t ts = 2000 + (i * 7919) % 1009;
        int n = snprintf(v, sizeof(v), "s-%llu", (unsigned long long)ts);
        put_val(f->store, "scrambled", ts, v, (size_t)n);
    }
    expect_record(f->store, dkv_slice_str("scrambled"), 2000 + 1008, "s-3008", 6);
    reopen(f);
    expect_record(f->store, dkv_slice_str("hot"), 1000, "value-1000", 10);
    expect_record(f->store, dkv_slice_str("scrambled"), 2000 + 1008, "s-3008", 6);
}

static void test_reopen_keeps_data(void **state)
{
    fixture_t *f = *state;
    put_val(f->store, "v", 1, "one", 3);
    put_val(f->store, "v", 2, "two", 3);
    put_val(f->store, "e", 3, "", 0);
    put_val(f->store, "t", 4, "x", 1);
    put_tomb(f->store, "t", 5);
    reopen(f);
    expect_record(f->store, dkv_slice_str("v"), 2, "two", 3);
    expect_record(f->store, dkv_slice_str("e"), 3, "", 0);
    expect_record(f->store, dkv_slice_str("t"), 5, NULL, 0);
    expect_missing(f->store, "never");
}

/* Binary keys, stored in a scrambled order; `sorted` is their unsigned-byte order. */
static const struct {
    const char *bytes;
    size_t len;
    bool tombstone;
} KEYS[] = {
    {"\x00", 1, false},     {"\x00\x00", 2, false}, {"\x00\x01", 2, true}, {"\x01", 1, false},
    {"a", 1, false},        {"a\x00", 2, false},    {"ab", 2, false},      {"a\xff", 2, true},
    {"b", 1, false},        {"\x7f", 1, false},     {"\x80", 1, false},    {"\xff", 1, false},
    {"\xff\x00", 2, false}, {"\xff\xff", 2, false},
};
#define N_KEYS (sizeof(KEYS) / sizeof(KEYS[0]))

static void put_keys(dkv_store_t *s)
{
    for (size_t j = 0; j < N_KEYS; j++) {
        size_t i = (j * 5) % N_KEYS; /* 5 is coprime with N_KEYS = 14 */
        dkv_record_t r = {100 + i, KEYS[i].tombstone,
                          KEYS[i].tombstone ? dkv_slice(NULL, 0) : dkv_slice("v", 1), 0};
        assert_int_equal(dkv_store_put(s, dkv_slice(KEYS[i].bytes, KEYS[i].len), &r), 0);
    }
}

/* Scans [start, end) and checks that it yields exactly KEYS[first..last), in order. */
static void expect_scan(dkv_store_t *s, dkv_slice_t start, dkv_slice_t end, size_t first,
                        size_t last)
{
    dkv_store_iter_t *it = NULL;
    assert_int_equal(dkv_store_iter_new(s, start, end, &it), 0);
    size_t i = first;
    dkv_slice_t key;
    dkv_record_t rec;
    int rc;
    while ((rc = dkv_store_iter_next(it, &key, &rec)) == 0) {
        assert_true(i < last);
        assert_int_equal(key.len, KEYS[i].len);
        assert_memory_equal(key.ptr, KEYS[i].bytes, key.len);
        assert_true(rec.ts == 100 + i);
        assert_int_equal(rec.tombstone, KEYS[i].tombstone);
        i++;
    }
    assert_int_equal(rc, DKV_ENOTFOUND);
    assert_int_equal(i, last);
    dkv_store_iter_free(it);
}

static void test_iter_range_binary_keys(void **state)
{
    fixture_t *f = *state;
    /* The table must be sorted for the expectations below to hold. */
    for (size_t i = 1; i < N_KEYS; i++) {
        assert_true(dkv_slice_cmp(dkv_slice(KEYS[i - 1].bytes, KEYS[i - 1].len),
                                  dkv_slice(KEYS[i].bytes, KEYS[i].len)) < 0);
    }
    put_keys(f->store);
    dkv_slice_t none = dkv_slice(NULL, 0);
    /* Everything, tombstones included. */
    expect_scan(f->store, dkv_slice("\x00", 1), none, 0, N_KEYS);
    /* start inclusive, end exclusive. */
    expect_scan(f->store, dkv_slice("a", 1), dkv_slice("b", 1), 4, 8);
    expect_scan(f->store, dkv_slice("a\x00", 2), dkv_slice("a\xff", 2), 5, 7);
    /* A start between keys; a prefix sorts first. */
    expect_scan(f->store, dkv_slice("\x00\x00\x00", 3), dkv_slice("\x01", 1), 2, 3);
    /* High bytes compare unsigned: 0x80 and 0xff come after 0x7f. */
    expect_scan(f->store, dkv_slice("\x7f", 1), none, 9, N_KEYS);
    expect_scan(f->store, dkv_slice("\xff", 1), dkv_slice("\xff\xff", 2), 11, 13);
    /* Empty ranges. */
    expect_scan(f->store, dkv_slice("c", 1), dkv_slice("c\x00", 2), 0, 0);
    expect_scan(f->store, dkv_slice("\xff\xff\x00", 3), none, 0, 0);
    expect_scan(f->store, dkv_slice("b", 1), dkv_slice("a", 1), 0, 0); /* end < start */
    expect_scan(f->store, dkv_slice("a", 1), dkv_slice("a", 1), 0, 0);
    /* The same after the data went through a reopen. */
    reopen(f);
    expect_scan(f->store, dkv_slice("\x00", 1), none, 0, N_KEYS);
    expect_scan(f->store, dkv_slice("a", 1), dkv_slice("b", 1), 4, 8);
}

static void test_iter_sees_newest_version_once(void **state)
{
    fixture_t *f = *state;
    put_val(f->store, "k", 3, "three", 5);
    put_val(f->store, "k", 9, "nine", 4);
    put_val(f->store, "k", 5, "five", 4);
    dkv_store_iter_t *it = NULL;
    assert_int_equal(dkv_store_iter_new(f->store, dkv_slice_str("k"), dkv_slice(NULL, 0), &it), 0);
    dkv_slice_t key;
    dkv_record_t rec;
    assert_int_equal(dkv_store_iter_next(it, &key, &rec), 0);
    assert_true(dkv_slice_eq_str(key, "k"));
    assert_true(rec.ts == 9);
    assert_true(dkv_slice_eq_str(rec.value, "nine"));
    assert_int_equal(dkv_store_iter_next(it, &key, &rec), DKV_ENOTFOUND);
    dkv_store_iter_free(it);
}

static void test_put_rejects_bad_input(void **state)
{
    fixture_t *f = *state;
    dkv_record_t r = {1, false, dkv_slice("v", 1), 0};
    assert_int_equal(dkv_store_put(f->store, dkv_slice(NULL, 0), &r), DKV_EINVAL);
    assert_int_equal(dkv_store_put(f->store, dkv_slice("", 0), &r), DKV_EINVAL);
    dkv_record_t bad = {1, true, dkv_slice("v", 1), 0};
    assert_int_equal(dkv_store_put(f->store, dkv_slice_str("k"), &bad), DKV_EINVAL);
    expect_missing(f->store, "k");
}

static void test_second_open_fails_while_locked(void **state)
{
    fixture_t *f = *state;
    dkv_store_t *other = NULL;
    assert_int_equal(dkv_store_open(f->dir, NULL, &other), DKV_EIO);
    assert_null(other);
    /* The first store is unaffected, and the directory opens again once it is closed. */
    put_val(f->store, "k", 1, "v", 1);
    dkv_store_close(f->store);
    f->store = NULL;
    assert_int_equal(dkv_store_open(f->dir, NULL, &other), 0);
    expect_record(other, dkv_slice_str("k"), 1, "v", 1);
    f->store = other;
}

static void test_open_missing_dir_fails(void **state)
{
    (void)state;
    dkv_store_t *s = NULL;
    assert_int_equal(dkv_store_open("/nonexistent/dkv-test-dir", NULL, &s), DKV_EIO);
    assert_null(s);
    dkv_store_close(NULL); /* a no-op */
    dkv_store_iter_free(NULL);
    dkv_store_free(NULL);
}

/* The default memory sizing: a quarter of the memory limit for the block cache, within its floor
 * and cap; an unknown limit gets the floor. */
static void test_sizing_from_memory_limit(void **state)
{
    (void)state;
    const uint64_t mib = 1u << 20, gib = (uint64_t)1 << 30;
    dkv_store_sizing_t z;
    dkv_store_sizing(0, &z);
    assert_int_equal(z.block_cache_bytes, DKV_STORE_MIN_CACHE_BYTES);
    dkv_store_sizing(128 * mib, &z);
    assert_int_equal(z.block_cache_bytes, 64 * mib);
    dkv_store_sizing(1 * gib, &z);
    assert_int_equal(z.block_cache_bytes, 256 * mib);
    dkv_store_sizing(24 * gib, &z);
    assert_int_equal(z.block_cache_bytes, 6 * gib);
    dkv_store_sizing(256 * gib, &z);
    assert_int_equal(z.block_cache_bytes, DKV_STORE_MAX_CACHE_BYTES);
    assert_int_equal(DKV_STORE_MAX_CACHE_BYTES, 16 * gib);
}

/* The limit is there and never above the machine's RAM (a cgroup only lowers it). */
static void test_memory_limit_at_most_ram(void **state)
{
    (void)state;
    uint64_t ram = (uint64_t)sysconf(_SC_PHYS_PAGES) * (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t limit = dkv_store_memory_limit_bytes();
    assert_true(limit > 0);
    assert_true(limit <= ram);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* The cgroup limit is read from the cgroup that /proc/self/cgroup names, v2 and v1 layouts. */
static void test_cgroup_limit_v1_and_v2(void **state)
{
    (void)state;
    char root[] = "/tmp/dkv-cgroup-XXXXXX";
    assert_non_null(mkdtemp(root));
    char p[512], cg[512];
    snprintf(cg, sizeof(cg), "%s/self-cgroup", root);
    /* Nothing readable: no limit. */
    assert_true(dkv_store_cgroup_limit_bytes("/nonexistent/cgroup", root) == UINT64_MAX);
    write_file(cg, "0::/system.slice/dkv.service\n");
    assert_true(dkv_store_cgroup_limit_bytes(cg, root) == UINT64_MAX);
    /* v2: <root><path>/memory.max, "max" or a number. */
    snprintf(p, sizeof(p), "%s/system.slice", root);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(p, sizeof(p), "%s/system.slice/dkv.service", root);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(p, sizeof(p), "%s/system.slice/dkv.service/memory.max", root);
    write_file(p, "max\n");
    assert_true(dkv_store_cgroup_limit_bytes(cg, root) == UINT64_MAX);
    write_file(p, "536870912\n");
    assert_true(dkv_store_cgroup_limit_bytes(cg, root) == 536870912u);
    /* v1: <root>/memory<path>/memory.limit_in_bytes; a container's own cgroup is "/". */
    write_file(cg, "4:memory:/\n1:cpu,cpuacct:/\n");
    snprintf(p, sizeof(p), "%s/memory", root);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(p, sizeof(p), "%s/memory/memory.limit_in_bytes", root);
    write_file(p, "9223372036854771712\n"); /* v1's "no limit" */
    assert_true(dkv_store_cgroup_limit_bytes(cg, root) > ((uint64_t)1 << 62));
    write_file(p, "1073741824\n");
    assert_true(dkv_store_cgroup_limit_bytes(cg, root) == ((uint64_t)1 << 30));
    /* Garbage is no limit, not 0. */
    write_file(p, "lots\n");
    assert_true(dkv_store_cgroup_limit_bytes(cg, root) == UINT64_MAX);
    rm_rf(root);
}

/* Makes every file write past 256 KiB fail (EFBIG, SIGXFSZ ignored): a disk that fills up.
 * `old` receives the limit to restore with setrlimit(RLIMIT_FSIZE, old). */
static void limit_file_size(struct rlimit *old)
{
    assert_int_equal(getrlimit(RLIMIT_FSIZE, old), 0);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = {.rlim_cur = 256u << 10, .rlim_max = old->rlim_max};
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
}

/* A failed WAL write makes the store unwritable: every later write and sync is refused without
 * reaching RocksDB (which would abort on its failed writer), synced writes stay readable, and a
 * resume once files may grow again makes it writable with all of them kept. RLIMIT_FSIZE makes
 * write(2) fail with EFBIG, a storage error that is not "no space": DKV_EIO. */
static void test_failed_wal_write_refuses_writes_until_resume(void **state)
{
    fixture_t *f = *state;
    static uint8_t v[1024];
    memset(v, 'v', sizeof(v));
    put_val(f->store, "acked", 1, v, sizeof(v));
    assert_int_equal(dkv_store_sync_wal(f->store), 0);

    struct rlimit old;
    limit_file_size(&old);
    int rc = 0;
    int acked = 0;
    char key[32];
    for (int i = 0; i < 4096 && rc == 0; i++) {
        snprintf(key, sizeof(key), "k%04d", i);
        dkv_record_t r = {(uint64_t)i + 10, false, dkv_slice(v, sizeof(v)), 0};
        rc = dkv_store_put(f->store, dkv_slice_str(key), &r);
        if (rc == 0) {
            rc = dkv_store_sync_wal(f->store);
        }
        acked += rc == 0;
    }
    assert_int_equal(rc, DKV_EIO);
    assert_true(acked > 0);

    dkv_store_health_t h;
    dkv_store_health(f->store, &h);
    assert_false(h.writable);
    assert_false(dkv_store_writable(f->store));
    assert_int_equal(h.rc, DKV_EIO);
    assert_non_null(strstr(h.error, "File too large"));
    assert_true(h.since_ms > 0);
    uint64_t errors = h.write_errors;
    assert_true(errors >= 1);

    dkv_record_t r = {99999, false, dkv_slice_str("refused"), 0};
    assert_int_equal(dkv_store_put(f->store, dkv_slice_str("refused"), &r), DKV_EIO);
    assert_int_equal(dkv_store_hint_put(f->store, dkv_slice_str("h"), dkv_slice_str("x")),
                     DKV_EIO);
    assert_int_equal(dkv_store_sync_wal(f->store), 0); /* nothing written since: no-op */
    dkv_store_health(f->store, &h);
    assert_true(h.write_errors == errors + 2);
    expect_record(f->store, dkv_slice_str("acked"), 1, v, sizeof(v));
    expect_record(f->store, dkv_slice_str("k0000"), 10, v, sizeof(v));
    expect_missing(f->store, "refused");

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(dkv_store_resume(f->store, 1000), 0);
    dkv_store_health(f->store, &h);
    assert_true(h.writable);
    assert_int_equal(h.rc, 0);
    assert_string_equal(h.error, "");
    assert_true(h.resumes == 1);
    assert_int_equal(dkv_store_resume(f->store, 1000), 0); /* already writable: nothing */

    put_val(f->store, "after", 5, "a", 1);
    assert_int_equal(dkv_store_sync_wal(f->store), 0);
    reopen(f);
    expect_record(f->store, dkv_slice_str("acked"), 1, v, sizeof(v));
    for (int i = 0; i < acked; i++) {
        snprintf(key, sizeof(key), "k%04d", i);
        expect_record(f->store, dkv_slice_str(key), (uint64_t)i + 10, v, sizeof(v));
    }
    expect_record(f->store, dkv_slice_str("after"), 5, "a", 1);
    expect_missing(f->store, "refused");
}

/* ---- write batching (dkv_store_thread_batching) ---- */

static int setup_batched(void **state)
{
    int rc = setup(state);
    dkv_store_thread_batching(true);
    return rc;
}

static int teardown_batched(void **state)
{
    dkv_store_thread_batching(false);
    return teardown(state);
}

typedef struct reader {
    dkv_store_t *store;
    const char *key;
    int rc;
} reader_t;

static void *read_on_other_thread(void *arg)
{
    reader_t *r = arg;
    uint8_t *data = NULL;
    size_t n = 0;
    r->rc = dkv_store_get(r->store, dkv_slice_str(r->key), &data, &n);
    dkv_store_free(data);
    return NULL;
}

static int get_on_other_thread(dkv_store_t *s, const char *key)
{
    reader_t r = {s, key, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, read_on_other_thread, &r), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    return r.rc;
}

/* A batching thread's writes wait in its batch (another thread does not see them yet), but the
 * thread itself reads them at once, by point read and by scan; a sync or a full batch stores
 * them, and they survive a reopen. */
static void test_batched_writes_are_read_by_their_thread(void **state)
{
    fixture_t *f = *state;
    put_val(f->store, "a", 10, "v1", 2);
    assert_int_equal(get_on_other_thread(f->store, "a"), DKV_ENOTFOUND); /* still pending */
    expect_record(f->store, dkv_slice_str("a"), 10, "v1", 2); /* writes the batch first */
    assert_int_equal(get_on_other_thread(f->store, "a"), 0);

    put_val(f->store, "a", 11, "v2", 2);
    put_tomb(f->store, "b", 12);
    dkv_store_iter_t *it = NULL;
    assert_int_equal(dkv_store_iter_new(f->store, dkv_slice_str("a"), dkv_slice_str("c"), &it),
                     0);
    dkv_slice_t k;
    dkv_record_t r;
    assert_int_equal(dkv_store_iter_next(it, &k, &r), 0);
    assert_true(r.ts == 11);
    assert_int_equal(dkv_store_iter_next(it, &k, &r), 0);
    assert_true(r.ts == 12 && r.tombstone);
    assert_int_equal(dkv_store_iter_next(it, &k, &r), DKV_ENOTFOUND);
    dkv_store_iter_free(it);

    put_val(f->store, "c", 13, "v3", 2);
    assert_int_equal(dkv_store_sync_wal(f->store), 0);
    assert_int_equal(get_on_other_thread(f->store, "c"), 0);

    /* A full batch is written without waiting for a sync: at most 256 writes wait. */
    char key[32];
    for (int i = 0; i < 300; i++) {
        snprintf(key, sizeof(key), "many%03d", i);
        put_val(f->store, key, 100 + (uint64_t)i, "x", 1);
    }
    assert_int_equal(get_on_other_thread(f->store, "many000"), 0);
    assert_int_equal(get_on_other_thread(f->store, "many299"), DKV_ENOTFOUND);
    assert_int_equal(dkv_store_write_batch(), 0);
    assert_int_equal(get_on_other_thread(f->store, "many299"), 0);

    put_val(f->store, "d", 14, "v4", 2);
    reopen(f); /* closing writes this thread's batch */
    expect_record(f->store, dkv_slice_str("a"), 11, "v2", 2);
    expect_record(f->store, dkv_slice_str("d"), 14, "v4", 2);
    expect_record(f->store, dkv_slice_str("many299"), 399, "x", 1);
}

/* A tombstone purge on another thread while a newer write of the key waits in a batch: the purge
 * sees only the tombstone and deletes it, and the pending write lands after the delete. */
typedef struct purger {
    dkv_store_t *store;
    int rc;
} purger_t;

static void *purge_on_other_thread(void *arg)
{
    purger_t *p = arg;
    p->rc = dkv_store_purge_tombstone(p->store, dkv_slice_str("p"), 1000);
    return NULL;
}

static void test_batched_write_survives_a_concurrent_purge(void **state)
{
    fixture_t *f = *state;
    put_tomb(f->store, "p", 5);
    assert_int_equal(dkv_store_sync_wal(f->store), 0);
    put_val(f->store, "p", 20, "new", 3); /* pending */
    purger_t p = {f->store, -1};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, purge_on_other_thread, &p), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(p.rc, 0);
    assert_int_equal(dkv_store_sync_wal(f->store), 0);
    expect_record(f->store, dkv_slice_str("p"), 20, "new", 3);
    /* Purge on the batching thread itself: its pending write goes first and is not purged. */
    put_tomb(f->store, "p", 30);
    put_val(f->store, "p", 31, "newer", 5);
    assert_int_equal(dkv_store_purge_tombstone(f->store, dkv_slice_str("p"), 1000),
                     DKV_ENOTFOUND);
    expect_record(f->store, dkv_slice_str("p"), 31, "newer", 5);
}

/* A batch whose write fails fails the sync that would acknowledge it, and each of its writes
 * counts as a write error; the writes synced before it stay. */
static void test_batched_write_failure_fails_the_sync(void **state)
{
    fixture_t *f = *state;
    static uint8_t v[1024];
    memset(v, 'v', sizeof(v));
    struct rlimit old;
    limit_file_size(&old);
    char key[32];
    int synced = 0;
    int rc = 0;
    dkv_store_health_t h;
    for (int i = 0; i < 4096 && rc == 0; i += 4) {
        for (int j = i; j < i + 4; j++) {
            snprintf(key, sizeof(key), "k%04d", j);
            dkv_record_t r = {(uint64_t)j + 10, false, dkv_slice(v, sizeof(v)), 0};
            assert_int_equal(dkv_store_put(f->store, dkv_slice_str(key), &r), 0);
        }
        dkv_store_health(f->store, &h);
        rc = dkv_store_sync_wal(f->store);
        synced += rc == 0 ? 4 : 0;
    }
    assert_int_equal(rc, DKV_EIO);
    assert_true(synced > 0);
    uint64_t before = h.write_errors;
    dkv_store_health(f->store, &h);
    assert_false(h.writable);
    /* Either the batch write failed (4 writes) or, if it landed, the WAL flush did (1). */
    assert_true(h.write_errors == before + 4 || h.write_errors == before + 1);
    assert_int_equal(dkv_store_sync_wal(f->store), 0); /* reported once */
    snprintf(key, sizeof(key), "k%04d", synced);
    dkv_record_t r = {1, false, dkv_slice(v, sizeof(v)), 0};
    assert_int_equal(dkv_store_put(f->store, dkv_slice_str(key), &r), DKV_EIO); /* refused */

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(dkv_store_resume(f->store, 1000), 0);
    reopen(f);
    for (int i = 0; i < synced; i++) {
        snprintf(key, sizeof(key), "k%04d", i);
        expect_record(f->store, dkv_slice_str(key), (uint64_t)i + 10, v, sizeof(v));
    }
    snprintf(key, sizeof(key), "k%04d", synced);
    expect_missing(f->store, key);
}

/*
 * Write tokens: a thread's failed write is reported to one sync only, whichever of the thread's
 * syncs runs first (an I/O thread: another connection's flush). The write's own caller, which
 * acknowledges it later, still learns its outcome from its token, and a sync with a mark taken
 * before the write fails too. Run with and without write batching: the batch write or the WAL
 * flush fails (RLIMIT_FSIZE, EFBIG: DKV_EIO).
 */
static void test_write_outcome_outlives_the_sync_that_reported_it(void **state)
{
    fixture_t *f = *state;
    static uint8_t v[1024];
    memset(v, 'v', sizeof(v));
    assert_int_equal(dkv_store_write_outcome(0), 0); /* no write: nothing to fail */
    uint64_t mark = dkv_store_write_token(); /* tokens go on across the tests of this thread */
    put_val(f->store, "early", 1, "e", 1);
    uint64_t early = dkv_store_write_token();
    assert_true(early == mark + 1);
    assert_int_equal(dkv_store_write_outcome(early), DKV_STORE_WRITE_PENDING);
    assert_int_equal(dkv_store_sync_wal_since(f->store, &mark), 0);
    assert_true(mark == early);
    assert_int_equal(dkv_store_write_outcome(early), 0); /* durable */

    struct rlimit old;
    limit_file_size(&old);
    char key[32];
    int rc = 0;
    uint64_t mine = 0;
    uint64_t last_durable = early;
    for (int i = 0; i < 4096 && rc == 0; i++) {
        /* "Mine": a write whose caller answers later; then another caller's write and sync. */
        snprintf(key, sizeof(key), "mine%04d", i);
        put_val(f->store, key, (uint64_t)i + 10, v, sizeof(v));
        mine = dkv_store_write_token();
        snprintf(key, sizeof(key), "other%04d", i);
        put_val(f->store, key, (uint64_t)i + 10, "o", 1);
        uint64_t other = dkv_store_write_token();
        assert_true(other == mine + 1);
        assert_int_equal(dkv_store_write_outcome(mine), DKV_STORE_WRITE_PENDING);
        rc = dkv_store_sync_wal(f->store); /* the other caller's sync */
        if (rc == 0) {
            assert_int_equal(dkv_store_write_outcome(mine), 0);
            assert_int_equal(dkv_store_write_outcome(other), 0);
            last_durable = other;
        }
    }
    assert_int_equal(rc, DKV_EIO);
    /* The failure went to that sync; the next one has nothing to say ... */
    assert_int_equal(dkv_store_sync_wal(f->store), 0);
    /* ... but my write's token knows, and so does a sync with a mark from before my write. */
    assert_int_equal(dkv_store_write_outcome(mine), DKV_EIO);
    assert_int_equal(dkv_store_write_outcome(mine + 1), DKV_EIO);
    assert_int_equal(dkv_store_write_outcome(last_durable), 0);
    assert_int_equal(dkv_store_write_outcome(early), 0);
    mark = last_durable;
    assert_int_equal(dkv_store_sync_wal_since(f->store, &mark), DKV_EIO);
    assert_true(mark == mine + 1);
    assert_int_equal(dkv_store_sync_wal_since(f->store, &mark), 0); /* nothing failed since */
    /* Refused writes get no token. */
    dkv_record_t r = {1, false, dkv_slice_str("x"), 0};
    assert_int_equal(dkv_store_put(f->store, dkv_slice_str("refused"), &r), DKV_EIO);
    assert_true(dkv_store_write_token() == mine + 1);

    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(dkv_store_resume(f->store, 1000), 0);
    put_val(f->store, "after", 5, "a", 1);
    uint64_t after = dkv_store_write_token();
    assert_true(after == mine + 2);
    assert_int_equal(dkv_store_write_outcome(after), DKV_STORE_WRITE_PENDING);
    assert_int_equal(dkv_store_sync_wal_since(f->store, &mark), 0);
    assert_int_equal(dkv_store_write_outcome(after), 0);
    assert_int_equal(dkv_store_write_outcome(mine), DKV_EIO); /* still known */
    reopen(f); /* what was durable is there (a failed write may or may not be: never acked) */
    expect_record(f->store, dkv_slice_str("early"), 1, "e", 1);
    int last = (int)(last_durable - early - 2) / 2;
    snprintf(key, sizeof(key), "other%04d", last);
    expect_record(f->store, dkv_slice_str(key), (uint64_t)last + 10, "o", 1);
    expect_record(f->store, dkv_slice_str("after"), 5, "a", 1);
}

/* Writes 1 KiB records and syncs each until a sync fails under a 256 KiB file-size limit, then
 * lifts the limit and resumes. @return the failed write's token; *durable the last good one. */
static uint64_t fail_once(fixture_t *f, int episode, uint64_t *durable)
{
    static uint8_t v[1024];
    memset(v, 'v', sizeof(v));
    struct rlimit old;
    limit_file_size(&old);
    char key[32];
    int rc = 0;
    uint64_t token = 0;
    for (int i = 0; i < 4096 && rc == 0; i++) {
        snprintf(key, sizeof(key), "e%d-%04d", episode, i);
        put_val(f->store, key, (uint64_t)i + 10, v, sizeof(v));
        token = dkv_store_write_token();
        rc = dkv_store_sync_wal(f->store);
        if (rc == 0) {
            *durable = token;
        }
    }
    assert_int_equal(rc, DKV_EIO);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, SIG_DFL);
    assert_int_equal(dkv_store_resume(f->store, 1000), 0);
    return token;
}

/* The thread keeps its last 8 failed ranges of tokens: after 9 failures, a token at or below the
 * forgotten one reads as failed (conservative), durable or not; later ones keep their outcome. */
static void test_write_outcome_of_a_forgotten_failure_is_failed(void **state)
{
    fixture_t *f = *state;
    uint64_t failed[9];
    uint64_t durable[9];
    for (int e = 0; e < 9; e++) {
        failed[e] = fail_once(f, e, &durable[e]);
        assert_true(durable[e] < failed[e]);
    }
    assert_int_equal(dkv_store_write_outcome(failed[0]), DKV_EIO);  /* forgotten: still failed */
    assert_int_equal(dkv_store_write_outcome(durable[0]), DKV_EIO); /* below it: conservative */
    for (int e = 1; e < 9; e++) {
        assert_int_equal(dkv_store_write_outcome(failed[e]), DKV_EIO);
        assert_int_equal(dkv_store_write_outcome(durable[e]), 0);
    }
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define TB(fn) cmocka_unit_test_setup_teardown(fn, setup_batched, teardown_batched)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_put_get_roundtrip),
        T(test_large_value),
        T(test_older_write_never_overwrites_newer),
        T(test_older_write_after_reopen),
        T(test_equal_ts_tombstone_beats_value),
        T(test_many_overwrites_keep_newest),
        T(test_reopen_keeps_data),
        T(test_iter_range_binary_keys),
        T(test_iter_sees_newest_version_once),
        T(test_put_rejects_bad_input),
        T(test_second_open_fails_while_locked),
        T(test_failed_wal_write_refuses_writes_until_resume),
        TB(test_batched_writes_are_read_by_their_thread),
        TB(test_batched_write_survives_a_concurrent_purge),
        TB(test_batched_write_failure_fails_the_sync),
        /* The direct-write tests again with batching on: nothing may change for them. */
        TB(test_put_get_roundtrip),
        TB(test_older_write_never_overwrites_newer),
        TB(test_older_write_after_reopen),
        TB(test_many_overwrites_keep_newest),
        TB(test_reopen_keeps_data),
        TB(test_iter_sees_newest_version_once),
        TB(test_failed_wal_write_refuses_writes_until_resume),
        T(test_write_outcome_outlives_the_sync_that_reported_it),
        TB(test_write_outcome_outlives_the_sync_that_reported_it),
        T(test_write_outcome_of_a_forgotten_failure_is_failed),
        cmocka_unit_test(test_open_missing_dir_fails),
        cmocka_unit_test(test_sizing_from_memory_limit),
        cmocka_unit_test(test_memory_limit_at_most_ram),
        cmocka_unit_test(test_cgroup_limit_v1_and_v2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
