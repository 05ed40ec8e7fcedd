/*
 * How late a nice-0 thread wakes from a 1 ms sleep while a busy loop shares its CPU: the floor of
 * what CPU priority alone does for a client path (docs/benchmarks.md, "Rebuild").
 *
 *   gcc -O2 -Wall -Wextra -pthread -o /tmp/wakeup bench/wakeup.c
 *   /tmp/wakeup none|nice19|idle SECONDS
 *
 * Both threads are pinned to CPU 0. `nice19` runs the busy loop at nice 19 (setpriority on its
 * thread), `idle` under SCHED_IDLE, `none` runs none. To see what a busy loop in another session
 * (another autogroup or cgroup) costs, run `none` beside
 *   setsid taskset -c 0 nice -n 19 sh -c 'while :; do :; done'
 * Prints the percentiles of (wake-up time - 1 ms) over SECONDS x 900 sleeps.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;
static const char *mode;

static void pin(void)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(0, &s);
    sched_setaffinity(0, sizeof(s), &s);
}

static void *busy(void *arg)
{
    (void)arg;
    pin();
    if (strcmp(mode, "nice19") == 0) {
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
    } else if (strcmp(mode, "idle") == 0) {
        struct sched_param p = {0};
        sched_setscheduler(0, SCHED_IDLE, &p);
    }
    while (!stop) {
    }
    return NULL;
}

static long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    long x = *(const long *)a;
    long y = *(const long *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s none|nice19|idle SECONDS\n", argv[0]);
        return 2;
    }
    mode = argv[1];
    int n = atoi(argv[2]) * 900;
    if (n <= 0) {
        return 2;
    }
    pin();
    pthread_t t;
    int hog = strcmp(mode, "none") != 0;
    if (hog) {
        pthread_create(&t, NULL, busy, NULL);
    }
    usleep(100000);
    long *lat = malloc(sizeof(long) * (size_t)n);
    for (int i = 0; i < n; i++) {
        long t0 = now_ns();
        struct timespec d = {0, 1000000};
        nanosleep(&d, NULL);
        lat[i] = now_ns() - t0 - 1000000;
    }
    stop = 1;
    if (hog) {
        pthread_join(t, NULL);
    }
    qsort(lat, (size_t)n, sizeof(long), cmp);
    printf("%-6s wake-up lateness us: p50 %.0f p90 %.0f p99 %.0f p99.9 %.0f max %.0f\n", mode,
           lat[n / 2] / 1e3, lat[n * 9 / 10] / 1e3, lat[n * 99 / 100] / 1e3,
           lat[n * 999 / 1000] / 1e3, lat[n - 1] / 1e3);
    free(lat);
    return 0;
}
