/*
 * Per-thread identity and scheduling. Linux schedules threads, not processes, so a name and a
 * CPU priority are set per thread; both calls act on the calling thread only.
 */
#ifndef DKV_COMMON_THREAD_H
#define DKV_COMMON_THREAD_H

#include <stdbool.h>

/* The nice value of background threads: the lowest CPU weight CFS/EEVDF gives (15 against 1024
 * for nice 0), so a runnable client-path thread preempts them on wakeup and they get what the
 * client path leaves. */
#define DKV_THREAD_BACKGROUND_NICE 19

/**
 * Names the calling thread (what `top -H`, `perf` and /proc/PID/task/TID/comm show).
 * @param name  Borrowed; at most 15 bytes are kept (the kernel's limit).
 * Thread: the thread being named. Failure is ignored (a name is only a diagnostic).
 */
void dkv_thread_set_name(const char *name);

/**
 * Sets whether background work (rebuild streaming, anti-entropy, hint replay, bulk reads served
 * to peers, RocksDB's flushes and compactions) runs at low CPU priority. Process-wide; call once
 * at start-up, before any background thread starts. Default: true.
 * Thread: the main thread, before the others exist.
 */
void dkv_thread_set_background_enabled(bool on);

/** Whether background work runs at low CPU priority (dkv_thread_set_background_enabled()). */
bool dkv_thread_background_enabled(void);

/**
 * Marks the calling thread as background work: nice DKV_THREAD_BACKGROUND_NICE (Linux keeps a
 * nice value per thread: setpriority(PRIO_PROCESS, gettid())), so that the I/O threads (the
 * client path) get the CPU first, as Scylla gives its streaming/repair scheduling group 200
 * shares against 1,000 for statements (scylladb/scylladb docs/isolation.md). Lowering a
 * priority needs no privilege. A no-op when background priority is disabled, and after the
 * first call on a thread. The cost: a low-priority thread that holds a lock an I/O thread
 * waits for runs only when the CPU is free of normal-priority work (priority inversion), so
 * background threads hold the store's locks only for single operations.
 * Thread: the thread being marked.
 * @return 0; -1 if the kernel refused (the thread stays at its priority; logged once).
 */
int dkv_thread_set_background(void);

#endif
