/*
 * What a PUT costs RocksDB alone, without HTTP, replication or dkv: the floor under dkv's server
 * CPU per PUT (docs/benchmarks.md, "Efficiency table"). One thread writes N random keys of the
 * hot set (key1..key100000, 16 B values, as bench/lua/put.lua) into a database opened with dkv's
 * write options (manual WAL flush, one WAL write(2) per BATCH writes, as dkv flushes once per
 * loop iteration), after a warm-up; prints CPU microseconds (utime + stime of the process) per
 * write. MODE `put`: one Put per write. `dkv`: what dkv_store_put does, a WriteBatch with a merge
 * into the default column family and a second 10-byte merge into a "digest" column family (the
 * merge operators are stand-ins that keep the last operand: only the write path is measured).
 * `dkvbatch`: the same two merges per write, BATCH writes per WriteBatch and rocksdb_write (dkv's
 * write batching: one RocksDB write per loop iteration on an I/O thread).
 *
 *   gcc -O2 -Wall -Wextra -o /tmp/putfloor bench/putfloor.c -lrocksdb
 *   /tmp/putfloor DIR put|dkv|dkvbatch [N] [BATCH]          (N 1000000, BATCH 28)
 *
 * DIR is created (or reused: fill it first with a run, then measure the next). The GET side is
 * bench/getfloor.c.
 */
#include "floor.h"

#include <rocksdb/c.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *keep_last(void *state, const char *key, size_t key_len, const char *existing,
                       size_t existing_len, const char *const *ops, const size_t *op_lens,
                       int n_ops, unsigned char *success, size_t *new_len)
{
    (void)state;
    (void)key;
    (void)key_len;
    const char *v = n_ops > 0 ? ops[n_ops - 1] : existing;
    size_t len = n_ops > 0 ? op_lens[n_ops - 1] : existing_len;
    char *out = malloc(len > 0 ? len : 1);
    if (len > 0) {
        memcpy(out, v, len);
    }
    *new_len = len;
    *success = 1;
    return out;
}

static char *keep_last_partial(void *state, const char *key, size_t key_len, const char *const *ops,
                               const size_t *op_lens, int n_ops, unsigned char *success,
                               size_t *new_len)
{
    return keep_last(state, key, key_len, NULL, 0, ops, op_lens, n_ops, success, new_len);
}

static void no_destroy(void *state)
{
    (void)state;
}

static void free_value(void *state, const char *v, size_t len)
{
    (void)state;
    (void)len;
    free((void *)v);
}

static const char *merge_name(void *state)
{
    (void)state;
    return "putfloor.keep_last";
}

static void check(char *err, const char *what)
{
    if (err != NULL) {
        fprintf(stderr, "%s: %s\n", what, err);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[2], "put") != 0 && strcmp(argv[2], "dkv") != 0 &&
                     strcmp(argv[2], "dkvbatch") != 0)) {
        fprintf(stderr, "usage: %s DIR put|dkv|dkvbatch [N] [BATCH]\n", argv[0]);
        return 2;
    }
    int batched = strcmp(argv[2], "dkvbatch") == 0;
    int dkv = batched || strcmp(argv[2], "dkv") == 0;
    long n = argc > 3 ? atol(argv[3]) : 1000000;
    long batch = argc > 4 ? atol(argv[4]) : 28;
    if (n <= 0 || batch <= 0) {
        return 2;
    }
    rocksdb_options_t *o = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(o, 1);
    rocksdb_options_set_create_missing_column_families(o, 1);
    rocksdb_options_set_manual_wal_flush(o, 1);
    rocksdb_options_increase_parallelism(o, 2);
    rocksdb_options_set_max_total_wal_size(o, 256u << 20);
    rocksdb_options_set_memtable_prefix_bloom_size_ratio(o, 0.02);
    rocksdb_options_set_memtable_whole_key_filtering(o, 1);
    rocksdb_mergeoperator_t *mo = rocksdb_mergeoperator_create(
        NULL, no_destroy, keep_last, keep_last_partial, free_value, merge_name);
    rocksdb_options_set_merge_operator(o, mo);
    const char *names[2] = {"default", "digest"};
    const rocksdb_options_t *cfo[2] = {o, o};
    rocksdb_column_family_handle_t *cf[2];
    char *err = NULL;
    rocksdb_t *db = rocksdb_open_column_families(o, argv[1], 2, names, cfo, cf, &err);
    check(err, "open");
    rocksdb_writeoptions_t *wo = rocksdb_writeoptions_create();
    rocksdb_writebatch_t *pending = rocksdb_writebatch_create();
    uint64_t x = 88172645463325252ull;
    char value[16 + 9];
    memset(value, 'v', sizeof(value));
    double t0 = 0;
    long warm = n / 5;
    for (long i = 0; i < warm + n; i++) {
        if (i == warm) {
            t0 = floor_cpu_us();
        }
        char key[32];
        int klen = floor_next_key(&x, 100000, key);
        if (dkv) {
            char dk[34];
            dk[0] = (char)(x >> 56);
            dk[1] = (char)(x >> 48);
            memcpy(dk + 2, key, (size_t)klen);
            rocksdb_writebatch_t *wb = batched ? pending : rocksdb_writebatch_create();
            rocksdb_writebatch_merge_cf(wb, cf[0], key, (size_t)klen, value, sizeof(value));
            rocksdb_writebatch_merge_cf(wb, cf[1], dk, (size_t)klen + 2, value, 10);
            if (!batched) {
                rocksdb_write(db, wo, wb, &err);
                rocksdb_writebatch_destroy(wb);
            }
        } else {
            rocksdb_put(db, wo, key, (size_t)klen, value, 16, &err);
        }
        check(err, "write");
        if (i % batch == batch - 1) {
            if (batched) {
                rocksdb_write(db, wo, pending, &err);
                check(err, "write");
                rocksdb_writebatch_clear(pending);
            }
            rocksdb_flush_wal(db, 0, &err);
            check(err, "flush_wal");
        }
    }
    double us = floor_cpu_us() - t0;
    printf("%s: %ld writes, %.2f us CPU per write (WAL write every %ld)\n", argv[2], n, us / n,
           batch);
    fflush(stdout);
    rocksdb_writebatch_destroy(pending);
    rocksdb_column_family_handle_destroy(cf[0]);
    rocksdb_column_family_handle_destroy(cf[1]);
    rocksdb_close(db);
    rocksdb_writeoptions_destroy(wo);
    rocksdb_options_destroy(o); /* it owns the merge operator */
    return 0;
}
