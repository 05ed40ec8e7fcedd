/*
 * What bench/putfloor.c and bench/getfloor.c share: the process's CPU time and the choice of a
 * hot key, as the benchmark's Lua scripts choose them (key1..key<hot>, uniform).
 */
#ifndef DKV_BENCH_FLOOR_H
#define DKV_BENCH_FLOOR_H

#include <stdint.h>
#include <stdio.h>
#include <sys/resource.h>

/** CPU microseconds (utime + stime) of the whole process so far, all its threads. */
static inline double floor_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/**
 * Advances `*x` (xorshift64, Marsaglia 2003: key choice only, never 0) and writes the key it
 * picks, "key<N>" with N uniform in 1..hot, into `key` (32 bytes). Returns the key's length.
 */
static inline int floor_next_key(uint64_t *x, unsigned long hot, char key[32])
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return snprintf(key, 32, "key%lu", (unsigned long)(*x % hot + 1));
}

#endif
