/*
 * CPU cost of reading the anti-entropy digest column family (docs/benchmarks.md, "The digest
 * memtable, hashed by segment"): a scan of the whole segment range (the tombstone-GC sweep, a full
 * hash-tree build), then 65,536 single-segment scans (an exchange's segment reads), 3 times.
 *
 *   cmake -S . -B /tmp/rel -DCMAKE_BUILD_TYPE=Release && cmake --build /tmp/rel --target dkv
 *   gcc -O2 -Isrc -o /tmp/digest_scan bench/digest_scan.c /tmp/rel/libdkvcore.a \
 *       /tmp/rel/libdkvcommon.a /tmp/rel/libllhttp.a -lrocksdb -luv -lxxhash -lsodium -lcurl \
 *       -lpthread -lm
 *   cp -a DATA_DIR /tmp/copy && /tmp/digest_scan /tmp/copy   # opens it for writing: use a copy
 *
 * Prints entries and process CPU seconds of each. DATA_DIR is a node's --data directory.
 */
#include <stdio.h>
#include <time.h>

#include "store/store.h"

static double cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    dkv_store_t *s = NULL;
    if (argc != 2 || dkv_store_open(argv[1], NULL, &s) != 0) {
        fprintf(stderr, "usage: digest_scan DATA_DIR (a copy: it is opened for writing)\n");
        return 1;
    }
    for (int r = 0; r < 3; r++) {
        uint32_t seg;
        dkv_slice_t key;
        dkv_store_digest_t d;
        dkv_store_raw_iter_t *it = NULL;
        double t0 = cpu_s();
        unsigned long full = 0;
        dkv_store_digest_iter_new(s, 0, DKV_STORE_SEGMENTS, &it);
        while (dkv_store_digest_next(it, &seg, &key, &d) == 0) {
            full++;
        }
        dkv_store_raw_iter_free(it);
        double t1 = cpu_s();
        unsigned long single = 0;
        for (uint32_t g = 0; g < DKV_STORE_SEGMENTS; g++) {
            dkv_store_digest_iter_new(s, g, g + 1, &it);
            while (dkv_store_digest_next(it, &seg, &key, &d) == 0) {
                single++;
            }
            dkv_store_raw_iter_free(it);
        }
        double t2 = cpu_s();
        printf("whole range: %lu entries, %.3f s CPU; 65536 single-segment scans: %lu entries, "
               "%.3f s CPU\n",
               full, t1 - t0, single, t2 - t1);
    }
    dkv_store_close(s);
    return 0;
}
