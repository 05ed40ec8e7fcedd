/* Hybrid logical clock and its persisted upper bound; see hlc.h for the algorithm's sources. */
#include "cluster/hlc.h"

#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Failed persists are logged at most this often (a full disk fails every write). */
#define PERSIST_LOG_INTERVAL_MS 1000u

uint64_t dkv_hlc_system_clock_ms(void *ctx)
{
    (void)ctx;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void dkv_hlc_init(dkv_hlc_t *hlc, dkv_hlc_clock_ms_cb clock_ms, void *clock_ctx)
{
    atomic_init(&hlc->last, 0);
    hlc->clock_ms = clock_ms != NULL ? clock_ms : dkv_hlc_system_clock_ms;
    hlc->clock_ctx = clock_ctx;
    hlc->max_offset_ms = 0;
    atomic_init(&hlc->bound_ms, 0);
    hlc->window_ms = 0;
    hlc->persist = NULL;
    hlc->persist_ctx = NULL;
    atomic_init(&hlc->persist_failures, 0);
    atomic_init(&hlc->persist_sync, 0);
}

void dkv_hlc_cleanup(dkv_hlc_t *hlc)
{
    if (hlc->persist != NULL) {
        pthread_mutex_destroy(&hlc->persist_mu);
        hlc->persist = NULL;
    }
}

void dkv_hlc_set_max_offset(dkv_hlc_t *hlc, uint64_t max_offset_ms)
{
    hlc->max_offset_ms = max_offset_ms;
}

/* Persists a bound of at least `target_ms` unless one is already in place. The lock keeps
 * bounds on disk in increasing order: a slow writer can never overwrite a higher bound with its
 * lower one. @return 0 or the persist callback's error (logged, rate-limited). */
static int extend(dkv_hlc_t *hlc, uint64_t target_ms)
{
    static _Atomic uint64_t next_log_ms;
    int rc = 0;
    pthread_mutex_lock(&hlc->persist_mu);
    if (atomic_load(&hlc->bound_ms) < target_ms) {
        rc = hlc->persist(hlc->persist_ctx, target_ms);
        if (rc == 0) {
            atomic_store(&hlc->bound_ms, target_ms);
        }
    }
    pthread_mutex_unlock(&hlc->persist_mu);
    if (rc != 0) {
        uint64_t failures = atomic_fetch_add(&hlc->persist_failures, 1) + 1;
        uint64_t now = dkv_hlc_system_clock_ms(NULL);
        uint64_t due = atomic_load(&next_log_ms);
        if (now >= due &&
            atomic_compare_exchange_strong(&next_log_ms, &due, now + PERSIST_LOG_INTERVAL_MS)) {
            DKV_LOG_ERROR("hlc: cannot persist the clock's upper bound (DATA/hlc): %s; the clock "
                          "stays below %" PRIu64 " and writes that need a later timestamp fail "
                          "(%" PRIu64 " failure(s) so far)",
                          dkv_strerror(rc), atomic_load(&hlc->bound_ms), failures);
        }
    }
    return rc;
}

int dkv_hlc_next(dkv_hlc_t *hlc, uint64_t *ts)
{
    uint64_t wall = hlc->clock_ms(hlc->clock_ctx) << DKV_HLC_LOGICAL_BITS;
    uint64_t last = atomic_load(&hlc->last);
    for (;;) {
        uint64_t next = wall > last ? wall : last + 1;
        if (hlc->persist != NULL && dkv_hlc_ms(next) >= atomic_load(&hlc->bound_ms)) {
            /* Bounds only grow, so a timestamp below the bound now stays below it: only this
             * side of the check needs the lock. */
            atomic_fetch_add(&hlc->persist_sync, 1);
            if (extend(hlc, dkv_hlc_ms(next) + hlc->window_ms) != 0) {
                return DKV_EHLCBOUND;
            }
            last = atomic_load(&hlc->last);
            continue;
        }
        if (atomic_compare_exchange_weak(&hlc->last, &last, next)) {
            *ts = next;
            return 0;
        }
    }
}

uint64_t dkv_hlc_now(dkv_hlc_t *hlc)
{
    uint64_t ts = 0;
    if (dkv_hlc_next(hlc, &ts) != 0) {
        fprintf(stderr, "%s:%d: dkv_hlc_now on a bounded clock whose bound cannot be persisted\n",
                __FILE__, __LINE__);
        abort();
    }
    return ts;
}

bool dkv_hlc_observe(dkv_hlc_t *hlc, uint64_t seen_ts)
{
    /* A timestamp the clock has already passed moves nothing, so it is fine however far ahead
     * of the wall clock it is: after a restart that continued above a wall clock that stepped
     * back (dkv_hlc_bound_start), this node's own records are ahead of its wall clock. The clock
     * itself got there only through timestamps it issued or adopted within the offset. */
    uint64_t last = atomic_load(&hlc->last);
    if (seen_ts <= last) {
        return true;
    }
    /* Anything newer is checked against the wall clock, not against `last`: a clock that is
     * ahead must not vouch for timestamps further ahead still. */
    if (hlc->max_offset_ms != 0 &&
        dkv_hlc_ms(seen_ts) > hlc->clock_ms(hlc->clock_ctx) + hlc->max_offset_ms) {
        return false;
    }
    if (hlc->persist != NULL && dkv_hlc_ms(seen_ts) >= atomic_load(&hlc->bound_ms)) {
        atomic_fetch_add(&hlc->persist_sync, 1);
        if (extend(hlc, dkv_hlc_ms(seen_ts) + hlc->window_ms) != 0) {
            return false;
        }
    }
    while (seen_ts > last) {
        if (atomic_compare_exchange_weak(&hlc->last, &last, seen_ts)) {
            break;
        }
    }
    return true;
}

/* ---- persisted upper bound ---- */

int dkv_hlc_bound_start(dkv_hlc_t *hlc, uint64_t prev_bound_ms, uint64_t window_ms,
                        dkv_hlc_persist_cb persist, void *persist_ctx)
{
    if (window_ms < 4 || persist == NULL || hlc->persist != NULL) {
        return DKV_EINVAL;
    }
    /* Every timestamp of the previous run has its ms part below prev_bound_ms: starting at
     * prev_bound_ms << 16 puts every new one above them all. */
    uint64_t floor_ts = prev_bound_ms << DKV_HLC_LOGICAL_BITS;
    uint64_t last = atomic_load(&hlc->last);
    if (floor_ts > last) {
        atomic_store(&hlc->last, floor_ts);
        last = floor_ts;
    }
    pthread_mutex_init(&hlc->persist_mu, NULL);
    hlc->window_ms = window_ms;
    hlc->persist = persist;
    hlc->persist_ctx = persist_ctx;
    atomic_store(&hlc->bound_ms, 0);
    int rc = extend(hlc, dkv_hlc_ms(last) + window_ms);
    if (rc == -ENOSPC) {
        /* A full disk: start bounded by the bound already on disk (every timestamp is above
         * it, so each needs a new one first): writes fail until the bound can be persisted,
         * which every write and every tick tries again. */
        atomic_store(&hlc->bound_ms, prev_bound_ms);
    } else if (rc != 0) {
        dkv_hlc_cleanup(hlc);
    }
    return rc;
}

int dkv_hlc_bound_tick(dkv_hlc_t *hlc)
{
    if (hlc->persist == NULL) {
        return 0;
    }
    uint64_t last_ms = dkv_hlc_ms(atomic_load(&hlc->last));
    if (atomic_load(&hlc->bound_ms) >= last_ms + hlc->window_ms * 3 / 4) {
        return 0; /* idle, or extended recently: nothing to write */
    }
    return extend(hlc, last_ms + hlc->window_ms);
}

uint64_t dkv_hlc_bound_ms(dkv_hlc_t *hlc)
{
    return hlc->persist != NULL ? atomic_load(&hlc->bound_ms) : 0;
}

uint64_t dkv_hlc_bound_wait_ms(uint64_t prev_bound_ms, uint64_t wall_ms, uint64_t window_ms,
                               uint64_t tolerance_ms)
{
    if (prev_bound_ms <= wall_ms + tolerance_ms) {
        return 0;
    }
    uint64_t ahead = prev_bound_ms - wall_ms;
    if (ahead > window_ms + 2 * tolerance_ms) {
        return 0;
    }
    return ahead - tolerance_ms;
}

/* ---- the bound's file ---- */

int dkv_hlc_file_init(dkv_hlc_file_t *f, const char *data_dir)
{
    int n = snprintf(f->dir, sizeof(f->dir), "%s", data_dir);
    if (n < 0 || (size_t)n >= sizeof(f->dir)) {
        return DKV_EINVAL;
    }
    snprintf(f->path, sizeof(f->path), "%s/hlc", data_dir);
    snprintf(f->tmp, sizeof(f->tmp), "%s/hlc.tmp", data_dir);
    return 0;
}

int dkv_hlc_file_load(const dkv_hlc_file_t *f, uint64_t *bound_ms)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) {
            *bound_ms = 0;
            return 0;
        }
        return -errno;
    }
    char buf[64];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    int err = errno;
    close(fd);
    if (n < 0) {
        return -err;
    }
    buf[n] = '\0';
    /* Exactly "hlc.v1 <digits>\n": anything else is not guessed at. */
    static const char prefix[] = "hlc.v1 ";
    size_t plen = sizeof(prefix) - 1;
    if ((size_t)n < plen + 2 || memcmp(buf, prefix, plen) != 0 || buf[n - 1] != '\n') {
        return DKV_EPROTO;
    }
    uint64_t v = 0;
    size_t digits = 0;
    for (size_t i = plen; i < (size_t)n - 1; i++) {
        if (buf[i] < '0' || buf[i] > '9' || digits >= 15) { /* 2^48 ms has 15 digits */
            return DKV_EPROTO;
        }
        v = v * 10 + (uint64_t)(buf[i] - '0');
        digits++;
    }
    if (v >= (1ull << (64 - DKV_HLC_LOGICAL_BITS))) {
        return DKV_EPROTO;
    }
    *bound_ms = v;
    return 0;
}

int dkv_hlc_file_save(void *ctx, uint64_t bound_ms)
{
    const dkv_hlc_file_t *f = ctx;
    char line[64];
    int len = snprintf(line, sizeof(line), "hlc.v1 %" PRIu64 "\n", bound_ms);
    int fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return -errno;
    }
    int rc = 0;
    ssize_t w = write(fd, line, (size_t)len);
    if (w != len) {
        rc = w < 0 ? -errno : DKV_EIO;
    } else if (fsync(fd) != 0) {
        rc = -errno;
    }
    close(fd);
    if (rc == 0 && rename(f->tmp, f->path) != 0) {
        rc = -errno;
    }
    if (rc != 0) {
        unlink(f->tmp);
        return rc;
    }
    /* The rename is durable only once the directory is. */
    int dfd = open(f->dir, O_RDONLY | O_CLOEXEC);
    if (dfd < 0) {
        return -errno;
    }
    if (fsync(dfd) != 0) {
        rc = -errno;
    }
    close(dfd);
    return rc;
}
