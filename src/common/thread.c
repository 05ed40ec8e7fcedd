/* Per-thread identity and scheduling; see thread.h. */
#define _GNU_SOURCE /* pthread_setname_np(), gettid() */
#include "common/thread.h"

#include "common/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static bool background_enabled = true;
static _Thread_local bool marked;
static atomic_bool warned;

void dkv_thread_set_name(const char *name)
{
    char buf[16];
    size_t n = strlen(name);
    if (n > sizeof(buf) - 1) {
        n = sizeof(buf) - 1;
    }
    memcpy(buf, name, n);
    buf[n] = '\0';
    (void)pthread_setname_np(pthread_self(), buf);
}

void dkv_thread_set_background_enabled(bool on)
{
    background_enabled = on;
}

bool dkv_thread_background_enabled(void)
{
    return background_enabled;
}

int dkv_thread_set_background(void)
{
    if (!background_enabled || marked) {
        return 0;
    }
    marked = true;
    id_t tid = (id_t)syscall(SYS_gettid);
    if (setpriority(PRIO_PROCESS, tid, DKV_THREAD_BACKGROUND_NICE) != 0) {
        int e = errno;
        if (!atomic_exchange(&warned, true)) {
            DKV_LOG_WARN("cannot lower a background thread's CPU priority: %s", strerror(e));
        }
        return -1;
    }
    return 0;
}
