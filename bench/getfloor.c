/*
 * What a GET costs dkv's store alone, without HTTP, routing or the coordinator: the floor under
 * dkv's server CPU per GET (docs/benchmarks.md, "GET floor"). It opens a copy of a filled dkv
 * data directory with dkv_store_open(), the options the server uses (the block cache sized from
 * memory, the 128 MiB row cache, the bloom filters and the memtable bloom: the flags below are
 * parsed by dkv's own --config/flag parser, so the defaults are dkv's), warms up with one read of
 * every hot key, then THREADS threads (default 2, as --io-threads) each read N / THREADS random
 * keys of key1..key<HOT> (uniform, as bench/lua/get.lua) with dkv_store_get() (rocksdb_get under
 * the store's read lock), decode the record (dkv_record_decode) and free it: what
 * dkv_replica_get_stored() does for a GET. Prints CPU microseconds (utime + stime of the whole
 * process, RocksDB's threads included) and the wall time per GET.
 *
 *   cmake --build BUILD --target getfloor
 *   BUILD/getfloor DIR [N] [THREADS] [HOT] [dkv flags, e.g. --block-cache-bytes 67108864]
 *                                                    (N 1000000, THREADS 2, HOT 100000)
 *
 * DIR is a node's data directory (the one --data names; the database is DIR/db). Use a copy:
 * opening it for writing replays its write-ahead log and may flush. The PUT side is
 * bench/putfloor.c.
 */
#include "floor.h"

#include "common/conf.h"
#include "common/err.h"
#include "common/record.h"
#include "store/store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct reader {
    pthread_t tid;
    dkv_store_t *store;
    pthread_barrier_t *barrier;
    unsigned long hot;
    long warm_from; /* warm-up: keys warm_from..warm_to, in order */
    long warm_to;
    long n; /* timed GETs */
    uint64_t seed;
    long missing; /* GETs that found nothing or did not decode */
    uint64_t value_bytes;
} reader_t;

static int get_one(reader_t *r, const char *key, int klen)
{
    uint8_t *data = NULL;
    size_t len = 0;
    int rc = dkv_store_get(r->store, dkv_slice((const uint8_t *)key, (size_t)klen), &data, &len);
    if (rc != 0) {
        return rc;
    }
    dkv_record_t rec;
    rc = dkv_record_decode(dkv_slice(data, len), &rec);
    r->value_bytes += rec.value.len;
    dkv_store_free(data);
    return rc;
}

/* The timed GETs, in a function of their own: `valgrind --tool=callgrind --collect-atstart=no
 * --toggle-collect=timed_gets` counts their instructions only. */
__attribute__((noinline)) static void timed_gets(reader_t *r)
{
    char key[32];
    uint64_t x = r->seed;
    for (long i = 0; i < r->n; i++) {
        int klen = floor_next_key(&x, r->hot, key);
        r->missing += get_one(r, key, klen) != 0;
    }
}

static void *reader_main(void *arg)
{
    reader_t *r = arg;
    dkv_store_thread_init();
    char key[32];
    for (long i = r->warm_from; i <= r->warm_to; i++) {
        int klen = snprintf(key, sizeof(key), "key%ld", i);
        r->missing += get_one(r, key, klen) != 0;
    }
    pthread_barrier_wait(r->barrier); /* warm-up done */
    pthread_barrier_wait(r->barrier); /* main thread took the start time */
    timed_gets(r);
    return NULL;
}

static double wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [N] [THREADS] [HOT] [dkv flags]\n", argv[0]);
        return 2;
    }
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    long threads = argc > 3 ? atol(argv[3]) : 2;
    long hot = argc > 4 ? atol(argv[4]) : 100000;
    if (n <= 0 || threads <= 0 || threads > 64 || hot <= 0) {
        fprintf(stderr, "N, THREADS (1..64) and HOT must be positive\n");
        return 2;
    }
    /* dkv's own flag parser: its defaults and any flags given after HOT. */
    int fargc = 3 + (argc > 5 ? argc - 5 : 0);
    char **fargv = calloc((size_t)fargc + 1, sizeof(char *));
    fargv[0] = argv[0];
    fargv[1] = "--data";
    fargv[2] = argv[1];
    for (int i = 5; i < argc; i++) {
        fargv[3 + i - 5] = argv[i];
    }
    dkv_conf_t conf;
    char err[256];
    if (dkv_conf_parse(fargc, fargv, &conf, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    dkv_store_opts_t sopts = {.block_cache_bytes = conf.block_cache_bytes,
                              .row_cache_bytes = conf.row_cache_bytes,
                              .fsync = conf.fsync,
                              .background_low_priority = conf.background_low_priority};
    dkv_store_t *store = NULL;
    int rc = dkv_store_open(argv[1], &sopts, &store);
    if (rc != 0) {
        fprintf(stderr, "cannot open the store in %s: %s\n", argv[1], dkv_strerror(rc));
        return 1;
    }
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)threads + 1);
    reader_t *rs = calloc((size_t)threads, sizeof(reader_t));
    for (long t = 0; t < threads; t++) {
        rs[t] = (reader_t){.store = store,
                           .barrier = &barrier,
                           .hot = (unsigned long)hot,
                           .warm_from = 1 + t * hot / threads,
                           .warm_to = (t + 1) * hot / threads,
                           .n = n / threads,
                           .seed = 88172645463325252ull + (uint64_t)t * 0x9E3779B97F4A7C15ull};
        pthread_create(&rs[t].tid, NULL, reader_main, &rs[t]);
    }
    pthread_barrier_wait(&barrier);
    double c0 = floor_cpu_us();
    double w0 = wall_us();
    pthread_barrier_wait(&barrier);
    long missing = 0;
    uint64_t bytes = 0;
    for (long t = 0; t < threads; t++) {
        pthread_join(rs[t].tid, NULL);
        missing += rs[t].missing;
        bytes += rs[t].value_bytes;
    }
    double cpu = floor_cpu_us() - c0;
    double wall = wall_us() - w0;
    long done = n / threads * threads;
    printf("get: %ld GETs of %ld hot keys on %ld threads, %.2f us CPU per GET, %.2f us wall "
           "(%.0f GET/s), %.0f B per value, %ld missing\n",
           done, hot, threads, cpu / (double)done, wall / (double)done, (double)done / wall * 1e6,
           (double)bytes / (double)(done + hot), missing);
    fflush(stdout);
    dkv_store_close(store);
    dkv_conf_cleanup(&conf);
    free(rs);
    free(fargv);
    return missing == 0 ? 0 : 1;
}
