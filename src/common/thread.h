/*
 * Per-thread identity and scheduling. Linux schedules threads, not processes, so a name and a
 * CPU priority are set per thread; both calls act on the calling thread only.
 */
#ifndef DKV_COMMON_THREAD_H
#define DKV_COMMON_THREAD_H

/**
 * Names the calling thread (what `top -H`, `perf` and /proc/PID/task/TID/comm show).
 * @param name  Borrowed; at most 15 bytes are kept (the kernel's limit).
 * Thread: the thread being named. Failure is ignored (a name is only a diagnostic).
 */
void dkv_thread_set_name(const char *name);

#endif
