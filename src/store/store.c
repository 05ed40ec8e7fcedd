/*
 * RocksDB-backed store. DESIGN: every write is a RocksDB merge of an encoded record; the merge
 * operator (full and partial merge) keeps the newest record by the last-write-wins order, so the
 * replica-side compare-and-write is atomic without locks and costs no read. A key written k times
 * since the last memtable flush has k operands that a read folds; the flush and compactions fold
 * them for good (partial merge).
 *
 * Storage errors (disk full): RocksDB 7 (what Debian ships) turns a failed write-ahead-log write
 * into a background error that refuses every later write, leaves the log writer failed for good
 * (another append or flush on it aborts the process in an assertion), and its C API has no
 * DB::Resume. So the first failed write or WAL flush makes the store unwritable here: later writes
 * are refused before they reach RocksDB, reads go on, and dkv_store_resume() reopens the
 * database once the directory has space again (the reopen replays the WAL: everything flushed
 * before the failure is back, the unflushed tail that nobody acknowledged is dropped). Two locks
 * make that safe: `wal_lock` keeps writes out of the WAL while a flush runs (a write slipping in
 * between a failed flush and RocksDB's background error would hit the failed writer), and
 * `db_lock` keeps every use of the database out of a reopen. A store that cannot be opened for
 * writing at start for lack of space is opened read-only instead. RocksDB's own LOG file only
 * gets header and fatal lines: it has the same failed-writer assertion, and the lines a full disk
 * produces are exactly the ones that would hit it; dkv logs RocksDB's errors itself.
 */
#define _GNU_SOURCE /* pthread_rwlockattr_setkind_np() */
#include "store/store.h"

#include "common/conf.h"
#include "common/err.h"
#include "common/log.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

/* Key stripes: a write holds its key's stripe only around the RocksDB write, so that a tombstone
 * purge's read-check-delete never removes a record written between its read and its delete. */
#define KEY_STRIPES 1024u
/* The digest column family's marker: present once every data record has its digest entry. */
#define DIGEST_MARKER ""
#define DIGEST_MARKER_VALUE "digest.v1"
#define DIGEST_VALUE_BYTES 10u /* ts u64 BE | flags u8 | from u8 */

/* RocksDB's InfoLogLevel::FATAL_LEVEL: its LOG file gets header and fatal lines only. */
#define ROCKS_LOG_FATAL 4
/* A reopen is tried only with this much free space in the data directory: the reopen itself
 * writes a MANIFEST, an OPTIONS file and the replayed write-ahead log's memtable. */
#define RESUME_MIN_FREE_BYTES (8u << 20)

/* The store this thread wrote to since its last dkv_store_sync_wal() (NULL: none), and the
 * database generation of its first such write: a reopen in between dropped that write. */
static _Thread_local dkv_store_t *wal_store;
static _Thread_local uint64_t wal_gen;
/* Bytes of the write batches this thread appended to the WAL buffer since its last sync. */
static _Thread_local uint64_t wal_pending_bytes;

/*
 * Write batching (dkv_store_thread_batching): on an I/O thread, dkv_store_put() appends to this
 * thread's pending batch instead of calling rocksdb_write, and the batch is written with one
 * rocksdb_write by dkv_store_sync_wal() (before its WAL flush: every path that acknowledges a
 * write runs it first), by dkv_store_write_batch() (the loop's prepare hook, so that nothing
 * stays pending while the loop sleeps), before any read or other write of this thread (so the
 * thread reads its own writes), or when the batch is full. One rocksdb_write per loop iteration
 * instead of one per PUT: each write joins RocksDB's write group (a leader election between the
 * I/O threads, two memtable inserts, a WAL buffer append) and that fixed cost dominates a small
 * PUT. A pending write is not acknowledged: the acknowledging sync writes it first, and a failed
 * batch write fails that sync (pend_failed_rc), exactly like a failed WAL flush.
 */
#define PENDING_MAX_OPS 256u
#define PENDING_MAX_BYTES (4u << 20) /* of encoded batch: a few large values go out at once */
#define NO_SEGMENT UINT32_MAX
static _Thread_local bool pend_enabled;
static _Thread_local dkv_store_t *pend_store; /* NULL: nothing pending */
static _Thread_local rocksdb_writebatch_t *pend_wb;
static _Thread_local uint64_t pend_gen; /* the database generation at the first append */
static _Thread_local unsigned pend_n;
static _Thread_local uint16_t pend_stripes[PENDING_MAX_OPS];
static _Thread_local uint32_t pend_segments[PENDING_MAX_OPS]; /* NO_SEGMENT: no digest entry */
/* A batch write that failed since this thread's last sync, and its store: that sync fails. */
static _Thread_local int pend_failed_rc;
static _Thread_local dkv_store_t *pend_failed_store;
static int pending_write(void);
static inline void pending_flush(void);

/*
 * Write tokens (dkv_store_write_token): every write this thread makes gets the next number of a
 * per-thread sequence, and the thread keeps what decided each one. A failure is returned by one
 * dkv_store_sync_wal() only (whichever runs first on the thread), so a caller that answers in a
 * later loop iteration than it wrote (a coordinator waiting for its peers) may never see the
 * sync that decided its write; it asks dkv_store_write_outcome() instead. Every token up to
 * `wt_decided` was decided by a sync (or a batch write); the failed ones are in `wt_fails`, a
 * small ring of ranges (a failure leaves the store unwritable until a reopen, so a handful of
 * ranges covers hours). A range pushed out of the ring raises `wt_forgot`: every token up to it
 * then counts as failed, the conservative answer. Cost per write: one thread-local increment.
 */
#define WT_FAILS 8u
typedef struct wt_range {
    uint64_t lo, hi; /* tokens, inclusive */
    int rc;          /* DKV_ENOSPACE or DKV_EIO */
} wt_range_t;
static _Thread_local uint64_t wt_seq;     /* the last token issued (0: none yet) */
static _Thread_local uint64_t wt_decided; /* every token <= this one is decided */
static _Thread_local wt_range_t wt_fails[WT_FAILS];
static _Thread_local unsigned wt_nfails; /* ranges ever recorded; the ring holds the last 8 */
static _Thread_local uint64_t wt_forgot; /* tokens <= this one may have failed unrecorded */
static _Thread_local int wt_forgot_rc;
static _Thread_local uint64_t pend_first_token; /* the pending batch's first write */

/* Records that the writes with tokens lo..hi failed with `rc`. */
static void wt_fail(uint64_t lo, uint64_t hi, int rc)
{
    if (lo == 0 || lo > hi) {
        return;
    }
    if (wt_nfails > 0) {
        wt_range_t *last = &wt_fails[(wt_nfails - 1) % WT_FAILS];
        if (lo <= last->hi + 1 && hi + 1 >= last->lo) {
            last->lo = lo < last->lo ? lo : last->lo;
            last->hi = hi > last->hi ? hi : last->hi;
            return;
        }
    }
    wt_range_t *slot = &wt_fails[wt_nfails % WT_FAILS];
    if (wt_nfails >= WT_FAILS && slot->hi > wt_forgot) {
        wt_forgot = slot->hi;
        wt_forgot_rc = slot->rc;
    }
    *slot = (wt_range_t){lo, hi, rc};
    wt_nfails++;
}

/* A sync decided every write of this thread so far: failed with `rc`, or durable (rc 0). */
static void wt_decide_all(int rc)
{
    if (rc != 0) {
        wt_fail(wt_decided + 1, wt_seq, rc);
    }
    wt_decided = wt_seq;
}

/* Generations of every database opened by this process: a reopen gets a new one. */
static _Atomic uint64_t last_generation;

struct dkv_store {
    bool fsync;
    pthread_rwlock_t db_lock;  /* read: any use of db and its handles; write: a reopen */
    pthread_rwlock_t wal_lock; /* read: a write into the WAL buffer; write: a WAL flush */
    char path[4096];           /* dir/db */
    _Atomic bool writable;     /* false after a failed write or flush, until a reopen */
    _Atomic int write_rc;      /* while unwritable: DKV_ENOSPACE or DKV_EIO */
    _Atomic uint64_t generation;
    _Atomic uint64_t live_iters;   /* iterators pin the database: no reopen while any lives */
    _Atomic uint64_t write_errors; /* writes and flushes refused or failed since the open */
    _Atomic uint64_t resumes;      /* reopens that made the store writable again */
    pthread_mutex_t health_mu;     /* guards the fields below */
    char error[256];               /* RocksDB's reason for the current unwritable state */
    uint64_t since_ms;             /* wall clock when the store became unwritable */
    uint64_t last_log_ms;          /* last "still unwritable" log line */
    rocksdb_t *db;                 /* NULL only if a reopen could not open it at all */
    rocksdb_column_family_handle_t *cf_data;  /* "default": replica records */
    rocksdb_column_family_handle_t *cf_hints; /* "hints": repair/hints.c, raw bytes */
    rocksdb_column_family_handle_t *cf_digest; /* "digest": segment|key -> ts|flags|from */
    rocksdb_options_t *options;
    rocksdb_options_t *digest_options; /* a copy of options with the digest merge operator */
    rocksdb_writeoptions_t *wopts;
    rocksdb_readoptions_t *ropts;
    rocksdb_block_based_table_options_t *table_opts;
    rocksdb_cache_t *cache;
    rocksdb_cache_t *row_cache; /* NULL when --row-cache-bytes 0 */
    uint64_t memtable_limit_bytes;  /* every column family's write buffers, summed */
    rocksdb_filterpolicy_t *filter; /* owned by table_opts once set */
    rocksdb_mergeoperator_t *merge; /* owned by options once set */
    dkv_store_write_cb observer;    /* set before any write; may be NULL */
    void *observer_arg;
    _Atomic uint64_t purged;        /* tombstones purged since open */
    _Atomic uint64_t wal_syncs;     /* WAL buffer flushes (write(2), fsync with opts.fsync) */
    _Atomic uint64_t wal_bytes;     /* write-batch bytes those flushes made durable */
    _Atomic uint64_t pending_batches; /* threads' batches appended to and not yet written */
    pthread_mutex_t stripes[KEY_STRIPES];
};

struct dkv_store_raw_iter {
    dkv_store_t *store;
    rocksdb_iterator_t *it; /* NULL: the database could not be opened */
    rocksdb_readoptions_t *ropts;
    char *lower; /* bounds, owned; must outlive ropts */
    char *upper;
    bool started;
};

struct dkv_store_iter {
    dkv_store_t *store;
    rocksdb_iterator_t *it;
    rocksdb_readoptions_t *ropts;
    char *end;      /* upper bound, owned; must outlive ropts */
    size_t end_len; /* 0 = unbounded */
    bool started;
};

int dkv_store_newest(const dkv_slice_t *records, int n)
{
    int best = -1;
    dkv_record_t best_rec = {0};
    for (int i = 0; i < n; i++) {
        dkv_record_t r;
        if (dkv_record_decode(records[i], &r) != 0) {
            continue;
        }
        if (best < 0 || dkv_record_cmp(&r, &best_rec) > 0) {
            best = i;
            best_rec = r;
        }
    }
    return best;
}

static char *copy_out(dkv_slice_t s, size_t *len)
{
    char *p = dkv_xmalloc(s.len);
    if (s.len > 0) {
        memcpy(p, s.ptr, s.len);
    }
    *len = s.len;
    return p;
}

/* Picks the newest of (existing?, operands...). Never fails: a record that does not decode loses
 * to any that does; when none decodes the last operand is kept as it is. */
static char *merge_pick(const char *existing, size_t existing_len, const char *const *ops,
                        const size_t *op_lens, int n_ops, unsigned char *success, size_t *out_len)
{
    dkv_slice_t stack_recs[16];
    int n = n_ops + (existing != NULL ? 1 : 0);
    dkv_slice_t *recs = n <= 16 ? stack_recs : dkv_xmalloc(sizeof(*recs) * (size_t)n);
    int k = 0;
    if (existing != NULL) {
        recs[k++] = dkv_slice(existing, existing_len);
    }
    for (int i = 0; i < n_ops; i++) {
        recs[k++] = dkv_slice(ops[i], op_lens[i]);
    }
    int best = dkv_store_newest(recs, n);
    if (best < 0) {
        DKV_LOG_ERROR("store: merge found no valid record among %d; keeping the newest operand", n);
        best = n - 1;
    }
    char *out = copy_out(recs[best], out_len);
    if (recs != stack_recs) {
        free(recs);
    }
    *success = 1;
    return out;
}

static char *full_merge_cb(void *state, const char *key, size_t key_len, const char *existing,
                           size_t existing_len, const char *const *ops, const size_t *op_lens,
                           int n_ops, unsigned char *success, size_t *out_len)
{
    (void)state;
    (void)key;
    (void)key_len;
    return merge_pick(existing, existing_len, ops, op_lens, n_ops, success, out_len);
}

static char *partial_merge_cb(void *state, const char *key, size_t key_len, const char *const *ops,
                              const size_t *op_lens, int n_ops, unsigned char *success,
                              size_t *out_len)
{
    (void)state;
    (void)key;
    (void)key_len;
    return merge_pick(NULL, 0, ops, op_lens, n_ops, success, out_len);
}

static void merge_delete_cb(void *state, const char *value, size_t len)
{
    (void)state;
    (void)len;
    free((void *)value);
}

static const char *merge_name_cb(void *state)
{
    (void)state;
    return "dkv.lww.v1";
}

static void merge_destroy_cb(void *state)
{
    (void)state;
}

/* ---- the digest column family's merge operator: the same last-write-wins order on the part
 * of a record the digest keeps (timestamp, then tombstone). Two versions with equal timestamps
 * and flags but different values have equal digests; see merkle.h. ---- */

static bool digest_decode(dkv_slice_t v, dkv_store_digest_t *d)
{
    if (v.len != DIGEST_VALUE_BYTES || (v.ptr[8] & ~1u) != 0) {
        return false;
    }
    uint64_t ts = 0;
    for (int i = 0; i < 8; i++) {
        ts = (ts << 8) | v.ptr[i];
    }
    d->ts = ts;
    d->tombstone = (v.ptr[8] & 1u) != 0;
    d->from = v.ptr[9];
    return true;
}

static void digest_encode(const dkv_record_t *rec, uint8_t out[DIGEST_VALUE_BYTES])
{
    for (int i = 0; i < 8; i++) {
        out[i] = (uint8_t)(rec->ts >> (56 - 8 * i));
    }
    out[8] = rec->tombstone ? 1u : 0u;
    out[9] = rec->from;
}

static char *digest_pick(const char *existing, size_t existing_len, const char *const *ops,
                         const size_t *op_lens, int n_ops, unsigned char *success, size_t *out_len)
{
    dkv_slice_t best = {0};
    dkv_store_digest_t best_d = {0};
    bool have = false;
    for (int i = -1; i < n_ops; i++) {
        dkv_slice_t v = i < 0 ? dkv_slice(existing, existing_len) : dkv_slice(ops[i], op_lens[i]);
        dkv_store_digest_t d;
        if ((i < 0 && existing == NULL) || !digest_decode(v, &d)) {
            continue;
        }
        if (!have || d.ts > best_d.ts || (d.ts == best_d.ts && d.tombstone && !best_d.tombstone)) {
            best = v;
            best_d = d;
            have = true;
        }
    }
    if (!have) {
        best = n_ops > 0 ? dkv_slice(ops[n_ops - 1], op_lens[n_ops - 1]) : dkv_slice("", 0);
    }
    *success = 1;
    return copy_out(best, out_len);
}

static char *digest_full_merge_cb(void *state, const char *key, size_t key_len,
                                  const char *existing, size_t existing_len,
                                  const char *const *ops, const size_t *op_lens, int n_ops,
                                  unsigned char *success, size_t *out_len)
{
    (void)state;
    (void)key;
    (void)key_len;
    return digest_pick(existing, existing_len, ops, op_lens, n_ops, success, out_len);
}

static char *digest_partial_merge_cb(void *state, const char *key, size_t key_len,
                                     const char *const *ops, const size_t *op_lens, int n_ops,
                                     unsigned char *success, size_t *out_len)
{
    (void)state;
    (void)key;
    (void)key_len;
    return digest_pick(NULL, 0, ops, op_lens, n_ops, success, out_len);
}

static const char *digest_merge_name_cb(void *state)
{
    (void)state;
    return "dkv.digest.lww.v1";
}

static int rocks_err(const char *what, char *err)
{
    DKV_LOG_ERROR("store: %s: %s", what, err);
    rocksdb_free(err);
    return DKV_EIO;
}

static uint64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* RocksDB's C API gives errors as text only: its Status::NoSpace and SpaceLimit subcodes, and
 * ENOSPC or EDQUOT from the file system, say the directory is out of space. */
static int classify_write_error(const char *err)
{
    static const char *const space[] = {"No space left on device", "Disk quota exceeded",
                                        "No space", "Space limit", "NoSpace"};
    for (size_t i = 0; i < sizeof(space) / sizeof(space[0]); i++) {
        if (strstr(err, space[i]) != NULL) {
            return DKV_ENOSPACE;
        }
    }
    return DKV_EIO;
}

/* Enters the unwritable state with RocksDB's reason (logged once, at the transition). */
static int set_unwritable(dkv_store_t *s, const char *what, const char *err)
{
    int rc = classify_write_error(err);
    atomic_fetch_add(&s->write_errors, 1);
    pthread_mutex_lock(&s->health_mu);
    bool first = atomic_load(&s->writable);
    if (first) {
        atomic_store(&s->write_rc, rc);
        atomic_store(&s->writable, false);
        snprintf(s->error, sizeof(s->error), "%s: %s", what, err);
        s->since_ms = wall_ms();
        s->last_log_ms = s->since_ms;
    }
    pthread_mutex_unlock(&s->health_mu);
    if (first) {
        DKV_LOG_ERROR("store: %s failed: %s; writes are refused (%s), reads go on, and the "
                      "store is reopened for writes once the data directory has room",
                      what, err, rc == DKV_ENOSPACE ? "no space: 507" : "storage error");
    }
    return rc;
}

/* A write or flush that failed in RocksDB: the store becomes unwritable. Frees `err`. */
static int write_failed(dkv_store_t *s, const char *what, char *err)
{
    int rc = set_unwritable(s, what, err);
    rocksdb_free(err);
    return rc;
}

/* Starts a write into the WAL: takes both locks shared, or refuses when unwritable. */
static int write_begin(dkv_store_t *s)
{
    pthread_rwlock_rdlock(&s->db_lock);
    pthread_rwlock_rdlock(&s->wal_lock);
    if (!atomic_load(&s->writable)) {
        pthread_rwlock_unlock(&s->wal_lock);
        pthread_rwlock_unlock(&s->db_lock);
        atomic_fetch_add(&s->write_errors, 1);
        return atomic_load(&s->write_rc);
    }
    return 0;
}

/* Ends a write begun by write_begin(): records a failure (freeing `err`) or marks this thread's
 * WAL buffer dirty with `wal_bytes` more bytes (and, unless it writes a `batch` whose writes have
 * their tokens, issues the write's token), then releases the locks. */
static int write_end_at(dkv_store_t *s, const char *what, char *err, size_t wal_bytes, bool batch)
{
    int rc = 0;
    if (err != NULL) {
        rc = write_failed(s, what, err);
    } else {
        if (wal_store != s) {
            wal_store = s;
            wal_gen = atomic_load(&s->generation);
            wal_pending_bytes = 0;
        }
        wal_pending_bytes += wal_bytes;
        if (!batch) {
            wt_seq++; /* a direct write's token (a batch's writes got theirs when appended) */
        }
    }
    pthread_rwlock_unlock(&s->wal_lock);
    pthread_rwlock_unlock(&s->db_lock);
    return rc;
}

static int write_end_bytes(dkv_store_t *s, const char *what, char *err, size_t wal_bytes)
{
    return write_end_at(s, what, err, wal_bytes, false);
}

/* Ends a write_begin() that wrote nothing (a purge that found nothing to purge, a refused
 * batch): releases the locks. */
static void write_abort(dkv_store_t *s)
{
    pthread_rwlock_unlock(&s->wal_lock);
    pthread_rwlock_unlock(&s->db_lock);
}

/* The size of a write batch as the WAL gets it (its serialized form). */
static size_t batch_bytes(rocksdb_writebatch_t *wb)
{
    size_t n = 0;
    rocksdb_writebatch_data(wb, &n);
    return n;
}

void dkv_store_thread_init(void)
{
    rocksdb_set_perf_level(rocksdb_disable);
}

/* Closes the database (not the options). A failed WAL writer is never flushed again: that
 * aborts in RocksDB 7, and what it holds was never acknowledged. */
static void close_db(dkv_store_t *s)
{
    if (s->db == NULL) {
        return;
    }
    if (atomic_load(&s->writable)) {
        char *err = NULL;
        rocksdb_flush_wal(s->db, 1, &err);
        if (err != NULL) {
            rocks_err("flush WAL on close", err);
        }
    }
    if (s->cf_data != NULL) {
        rocksdb_column_family_handle_destroy(s->cf_data);
    }
    if (s->cf_hints != NULL) {
        rocksdb_column_family_handle_destroy(s->cf_hints);
    }
    if (s->cf_digest != NULL) {
        rocksdb_column_family_handle_destroy(s->cf_digest);
    }
    rocksdb_close(s->db);
    s->db = NULL;
    s->cf_data = NULL;
    s->cf_hints = NULL;
    s->cf_digest = NULL;
}

/* Opens s->path for writing, or read-only. @return 0, or RocksDB's error (the caller frees). */
static char *open_db(dkv_store_t *s, bool read_only)
{
    char *err = NULL;
    /* The hints column family shares the options (its merge operator is never used there) and,
     * above all, the write-ahead log: a hint is as durable as a replica write. */
    /* The digest column family (anti-entropy, repair/merkle.h) has its own merge operator. */
    const char *cf_names[3] = {"default", "hints", "digest"};
    const rocksdb_options_t *cf_opts[3] = {s->options, s->options, s->digest_options};
    rocksdb_column_family_handle_t *handles[3] = {NULL, NULL, NULL};
    rocksdb_t *db = read_only ? rocksdb_open_for_read_only_column_families(
                                    s->options, s->path, 3, cf_names, cf_opts, handles, 0, &err)
                              : rocksdb_open_column_families(s->options, s->path, 3, cf_names,
                                                             cf_opts, handles, &err);
    if (err != NULL) {
        return err;
    }
    s->db = db;
    s->cf_data = handles[0];
    s->cf_hints = handles[1];
    s->cf_digest = handles[2];
    atomic_store(&s->generation, atomic_fetch_add(&last_generation, 1) + 1);
    return NULL;
}

void dkv_store_close(dkv_store_t *s)
{
    if (s == NULL) {
        return;
    }
    if (pend_store == s) {
        pending_write(); /* then close_db() flushes the WAL */
    }
    if (pend_failed_store == s || wal_store == s) {
        /* Decides this thread's writes (their tokens) now, and leaves nothing of this store in
         * the thread-locals: a later store at the same address starts clean. */
        (void)dkv_store_sync_wal(s);
    }
    /* Every batching thread writes its batch before it stops (main.c): one still pending here
     * would be lost. None was acknowledged (a sync writes the batch before any ack), but it is
     * a bug all the same. */
    uint64_t left = atomic_load(&s->pending_batches);
    if (left != 0) {
        DKV_LOG_ERROR("store: closing with %" PRIu64 " unwritten write batch(es) of other threads",
                      left);
        assert(left == 0);
    }
    close_db(s);
    if (s->ropts != NULL) {
        rocksdb_readoptions_destroy(s->ropts);
    }
    if (s->wopts != NULL) {
        rocksdb_writeoptions_destroy(s->wopts);
    }
    if (s->options != NULL) {
        rocksdb_options_destroy(s->options);
    }
    if (s->digest_options != NULL) {
        rocksdb_options_destroy(s->digest_options);
    }
    for (unsigned i = 0; i < KEY_STRIPES; i++) {
        pthread_mutex_destroy(&s->stripes[i]);
    }
    if (s->table_opts != NULL) {
        rocksdb_block_based_options_destroy(s->table_opts);
    }
    if (s->cache != NULL) {
        rocksdb_cache_destroy(s->cache);
    }
    if (s->row_cache != NULL) {
        rocksdb_cache_destroy(s->row_cache);
    }
    pthread_rwlock_destroy(&s->db_lock);
    pthread_rwlock_destroy(&s->wal_lock);
    pthread_mutex_destroy(&s->health_mu);
    free(s);
}

uint32_t dkv_store_segment(dkv_slice_t key)
{
    /* The ring's token of the key (cluster/ring.c): a segment is a range of the token space. */
    return (uint32_t)(XXH3_64bits(key.ptr, key.len) >> 48);
}

/* Digest column family key: segment u16 BE | key. `out` holds 2 + DKV_MAX_KEY_BYTES. */
static size_t digest_key(dkv_slice_t key, uint8_t *out)
{
    uint32_t seg = dkv_store_segment(key);
    out[0] = (uint8_t)(seg >> 8);
    out[1] = (uint8_t)seg;
    memcpy(out + 2, key.ptr, key.len);
    return key.len + 2;
}

static unsigned stripe_index(dkv_slice_t key)
{
    return (unsigned)(XXH3_64bits(key.ptr, key.len) % KEY_STRIPES);
}

static pthread_mutex_t *stripe_of(dkv_store_t *s, dkv_slice_t key)
{
    return &s->stripes[stripe_index(key)];
}

static int cmp_u16(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

/*
 * Writes this thread's pending batch (write batching, above) with one rocksdb_write, holding the
 * key stripes of all its records, taken in ascending index order without duplicates: two
 * threads writing batches (and a purge, which holds one stripe at a time) can never wait on
 * each other in a cycle. A failure is also kept for this thread's next dkv_store_sync_wal().
 * @return 0; DKV_ENOSPACE or DKV_EIO (none of the batch is stored).
 */
static int pending_write(void)
{
    dkv_store_t *s = pend_store;
    if (s == NULL) {
        return 0;
    }
    rocksdb_writebatch_t *wb = pend_wb;
    unsigned n = pend_n;
    pend_store = NULL;
    pend_wb = NULL;
    pend_n = 0;
    size_t wal_bytes = batch_bytes(wb);
    int rc = write_begin(s);
    bool ok = false;
    if (rc != 0) {
        /* Unwritable since the appends: each of them counts as a refused write. */
        atomic_fetch_add(&s->write_errors, n - 1);
    } else if (atomic_load(&s->generation) != pend_gen) {
        /* A reopen since the first append (only after a failure): refuse the whole batch. */
        atomic_fetch_add(&s->write_errors, n);
        rc = DKV_ENOSPACE;
        write_abort(s);
    } else {
        uint16_t idx[PENDING_MAX_OPS];
        memcpy(idx, pend_stripes, n * sizeof(idx[0]));
        qsort(idx, n, sizeof(idx[0]), cmp_u16);
        unsigned m = 0;
        for (unsigned i = 0; i < n; i++) {
            if (m == 0 || idx[m - 1] != idx[i]) {
                idx[m++] = idx[i];
            }
        }
        for (unsigned i = 0; i < m; i++) {
            pthread_mutex_lock(&s->stripes[idx[i]]);
        }
        char *err = NULL;
        rocksdb_write(s->db, s->wopts, wb, &err);
        for (unsigned i = m; i-- > 0;) {
            pthread_mutex_unlock(&s->stripes[idx[i]]);
        }
        ok = err == NULL;
        rc = write_end_at(s, "write", err, wal_bytes, true);
        if (!ok) {
            atomic_fetch_add(&s->write_errors, n - 1); /* every write of the batch failed */
        }
    }
    rocksdb_writebatch_destroy(wb);
    atomic_fetch_sub(&s->pending_batches, 1);
    if (ok && s->observer != NULL) {
        for (unsigned i = 0; i < n; i++) {
            if (pend_segments[i] != NO_SEGMENT) {
                s->observer(s->observer_arg, pend_segments[i]);
            }
        }
    }
    if (rc != 0) {
        wt_fail(pend_first_token, wt_seq, rc); /* the batch's writes: the last tokens issued */
        if (pend_failed_rc == 0) {
            pend_failed_rc = rc;
            pend_failed_store = s;
        }
    }
    return rc;
}

/* Before a read or an unbatched write: this thread's own pending writes go first. */
static inline void pending_flush(void)
{
    (void)pending_write(); /* a failure reaches this thread's next sync */
}

/* Gives every data record its digest entry when the digest column family is new (a data
 * directory from before 0.3); then writes the marker. Synchronous, at open. */
static int digest_backfill(dkv_store_t *s)
{
    char *err = NULL;
    size_t vlen = 0;
    char *v = rocksdb_get_cf(s->db, s->ropts, s->cf_digest, DIGEST_MARKER, 0, &vlen, &err);
    if (err != NULL) {
        return rocks_err("digest marker get", err);
    }
    if (v != NULL) {
        rocksdb_free(v);
        return 0;
    }
    rocksdb_readoptions_t *ro = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(ro, 0);
    rocksdb_iterator_t *it = rocksdb_create_iterator_cf(s->db, ro, s->cf_data);
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    uint64_t n = 0;
    int rc = 0;
    for (rocksdb_iter_seek_to_first(it); rocksdb_iter_valid(it); rocksdb_iter_next(it)) {
        size_t klen = 0;
        size_t rlen = 0;
        const char *k = rocksdb_iter_key(it, &klen);
        const char *r = rocksdb_iter_value(it, &rlen);
        dkv_record_t rec;
        if (klen == 0 || klen > DKV_MAX_KEY_BYTES ||
            dkv_record_decode(dkv_slice(r, rlen), &rec) != 0) {
            continue;
        }
        uint8_t dk[2 + DKV_MAX_KEY_BYTES];
        uint8_t dv[DIGEST_VALUE_BYTES];
        size_t dklen = digest_key(dkv_slice(k, klen), dk);
        digest_encode(&rec, dv);
        rocksdb_writebatch_merge_cf(wb, s->cf_digest, (const char *)dk, dklen, (const char *)dv,
                                    sizeof(dv));
        if (++n % 1024 == 0) {
            rocksdb_write(s->db, s->wopts, wb, &err);
            rocksdb_writebatch_clear(wb);
            if (err != NULL) {
                rc = rocks_err("digest backfill", err);
                break;
            }
        }
    }
    if (rc == 0) {
        rocksdb_iter_get_error(it, &err);
        if (err != NULL) {
            rc = rocks_err("digest backfill scan", err);
        }
    }
    if (rc == 0) {
        rocksdb_writebatch_put_cf(wb, s->cf_digest, DIGEST_MARKER, 0, DIGEST_MARKER_VALUE,
                                  strlen(DIGEST_MARKER_VALUE));
        rocksdb_write(s->db, s->wopts, wb, &err);
        if (err != NULL) {
            rc = rocks_err("digest backfill", err);
        }
    }
    rocksdb_writebatch_destroy(wb);
    rocksdb_iter_destroy(it);
    rocksdb_readoptions_destroy(ro);
    if (rc == 0) {
        rocksdb_flush_wal(s->db, 1, &err);
        if (err != NULL) {
            return rocks_err("digest backfill WAL flush", err);
        }
        if (n > 0) {
            DKV_LOG_INFO("store: built the anti-entropy digests of %" PRIu64 " records", n);
        }
    }
    return rc;
}

/* The number in a cgroup memory file; v2's "max" (no limit) reads as UINT64_MAX (v1 writes a
 * value near 2^63 instead, larger than any RAM). 0 when the file is missing or unreadable. */
static uint64_t read_limit_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }
    char line[64];
    uint64_t v = 0;
    if (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "max", 3) == 0) {
            v = UINT64_MAX;
        } else {
            char *end = NULL;
            errno = 0;
            unsigned long long x = strtoull(line, &end, 10);
            v = (errno == 0 && end != line) ? (uint64_t)x : 0;
        }
    }
    fclose(f);
    return v;
}

uint64_t dkv_store_cgroup_limit_bytes(const char *proc_cgroup, const char *sysfs_root)
{
    FILE *f = fopen(proc_cgroup, "r");
    if (f == NULL) {
        return UINT64_MAX;
    }
    uint64_t limit = UINT64_MAX;
    char line[4096];
    while (fgets(line, sizeof(line), f) != NULL) {
        /* "ID:CONTROLLERS:PATH": v2 is "0::/path", v1 lists "memory" among the controllers. */
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 != NULL ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL) {
            continue;
        }
        *c1 = '\0';
        *c2 = '\0';
        const char *controllers = c1 + 1;
        const char *path = strcmp(c2 + 1, "/") == 0 ? "" : c2 + 1;
        char file[4200];
        int n = -1;
        if (strcmp(line, "0") == 0 && *controllers == '\0') {
            n = snprintf(file, sizeof(file), "%s%s/memory.max", sysfs_root, path);
        } else if (strstr(controllers, "memory") != NULL) {
            n = snprintf(file, sizeof(file), "%s/memory%s/memory.limit_in_bytes", sysfs_root, path);
        }
        if (n > 0 && (size_t)n < sizeof(file)) {
            uint64_t v = read_limit_file(file);
            if (v != 0 && v < limit) {
                limit = v;
            }
        }
    }
    fclose(f);
    return limit;
}

uint64_t dkv_store_memory_limit_bytes(void)
{
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || page <= 0) {
        return 0;
    }
    uint64_t ram = (uint64_t)pages * (uint64_t)page;
    uint64_t cg = dkv_store_cgroup_limit_bytes("/proc/self/cgroup", "/sys/fs/cgroup");
    return cg < ram ? cg : ram;
}

void dkv_store_sizing(uint64_t limit_bytes, dkv_store_sizing_t *out)
{
    uint64_t cache = limit_bytes / 4;
    if (cache < DKV_STORE_MIN_CACHE_BYTES) {
        cache = DKV_STORE_MIN_CACHE_BYTES;
    }
    if (cache > DKV_STORE_MAX_CACHE_BYTES) {
        cache = DKV_STORE_MAX_CACHE_BYTES;
    }
    out->block_cache_bytes = (size_t)cache;
}

int dkv_store_open(const char *dir, const dkv_store_opts_t *opts, dkv_store_t **out)
{
    dkv_store_opts_t defaults = {0};
    if (opts == NULL) {
        opts = &defaults;
    }
    dkv_store_t *s = dkv_xcalloc(1, sizeof(*s));
    /* Writers first: a flush must not wait behind a stream of writes, nor a reopen behind a
     * stream of reads. Safe because no thread ever takes either lock twice. */
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
#ifdef __GLIBC__
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    pthread_rwlock_init(&s->db_lock, &attr);
    pthread_rwlock_init(&s->wal_lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    pthread_mutex_init(&s->health_mu, NULL);
    for (unsigned i = 0; i < KEY_STRIPES; i++) {
        pthread_mutex_init(&s->stripes[i], NULL);
    }
    atomic_store(&s->writable, true);
    s->options = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->options, 1);
    rocksdb_options_set_create_missing_column_families(s->options, 1);
    /* WAL records are buffered until dkv_store_sync_wal(): one write(2) (or fsync) per loop
     * iteration instead of one per write, and nothing is acknowledged before it. */
    rocksdb_options_set_manual_wal_flush(s->options, 1);
    rocksdb_options_increase_parallelism(s->options, 2);
    if (opts->background_low_priority) {
        /* Background work yields to the client path (common/thread.h). RocksDB applies it in
         * each pool thread (Env::LowerThreadPoolCPUPriority: setpriority(19) on that thread). */
        rocksdb_env_t *env = rocksdb_create_default_env();
        rocksdb_env_lower_thread_pool_cpu_priority(env);
        rocksdb_env_lower_high_priority_thread_pool_cpu_priority(env);
        rocksdb_env_destroy(env); /* the wrapper only: the default Env and its pools stay */
    }
    /* No max_successive_merges: it costs a memtable search on every write (25% of PUT
     * throughput, measured); a hot key's operand chain is bounded by the memtable instead, and
     * the flush folds it with the partial merge. */
    /* A torn tail of the WAL (kill -9 mid-write) is dropped; everything before it is replayed. */
    rocksdb_options_set_wal_recovery_mode(s->options, rocksdb_tolerate_corrupted_tail_records_recovery);
    /* The hints and digest column families fill their memtables far more slowly than the data:
     * without a bound RocksDB keeps every WAL file until they flush (1.1 GiB after a 1M x 1 KiB
     * fill, measured, and a restart replays it all). 256 MiB makes it flush them sooner. */
    rocksdb_options_set_max_total_wal_size(s->options, 256u << 20);
    /* See the file comment: a LOG line after a failed LOG write aborts the process. */
    rocksdb_options_set_info_log_level(s->options, ROCKS_LOG_FATAL);
    s->merge = rocksdb_mergeoperator_create(NULL, merge_destroy_cb, full_merge_cb,
                                            partial_merge_cb, merge_delete_cb, merge_name_cb);
    rocksdb_options_set_merge_operator(s->options, s->merge);

    s->table_opts = rocksdb_block_based_options_create();
    uint64_t limit_bytes = dkv_store_memory_limit_bytes();
    dkv_store_sizing_t sizing;
    dkv_store_sizing(limit_bytes, &sizing);
    size_t cache_bytes =
        opts->block_cache_bytes ? opts->block_cache_bytes : sizing.block_cache_bytes;
    s->cache = rocksdb_cache_create_lru(cache_bytes);
    rocksdb_block_based_options_set_block_cache(s->table_opts, s->cache);
    s->filter = rocksdb_filterpolicy_create_bloom_full(10);
    rocksdb_block_based_options_set_filter_policy(s->table_opts, s->filter);
    rocksdb_options_set_block_based_table_factory(s->options, s->table_opts);
    /* The row cache holds whole records by key (per SST file): a GET that hits it costs one
     * hash lookup instead of the filter, index and data-block lookups of every level (21.8k ->
     * 16.5k instructions per single-node GET, callgrind, 20k hot keys). The memtables are still
     * searched first, so a newer write is never hidden by a cached older version. */
    if (opts->row_cache_bytes > 0) {
        s->row_cache = rocksdb_cache_create_lru(opts->row_cache_bytes);
        rocksdb_options_set_row_cache(s->options, s->row_cache);
    }

    s->wopts = rocksdb_writeoptions_create();
    s->fsync = opts->fsync;
    s->ropts = rocksdb_readoptions_create();

    /* All three column families share these memtable options. */
    s->memtable_limit_bytes = (uint64_t)DKV_STORE_N_CFS *
                              rocksdb_options_get_write_buffer_size(s->options) *
                              (uint64_t)rocksdb_options_get_max_write_buffer_number(s->options);

    DKV_LOG_INFO("store: block cache %zu MiB (%s), memtables up to %" PRIu64
                 " MiB; memory limit %" PRIu64 " MiB (RAM or cgroup)",
                 cache_bytes >> 20,
                 opts->block_cache_bytes ? "--block-cache-bytes" : "a quarter of the memory limit",
                 s->memtable_limit_bytes >> 20, limit_bytes >> 20);

    s->digest_options = rocksdb_options_create_copy(s->options);
    rocksdb_options_set_merge_operator(
        s->digest_options,
        rocksdb_mergeoperator_create(NULL, merge_destroy_cb, digest_full_merge_cb,
                                     digest_partial_merge_cb, merge_delete_cb,
                                     digest_merge_name_cb));

    /* A bloom filter over whole keys in each data memtable (2% of the write buffer): a GET of a
     * key the memtables do not hold, the common case once data outgrows them, skips the skip-list
     * search, a pointer chase through up to 64 MiB per memtable (21.9k -> 18.6k instructions
     * per GET, callgrind, 60k of 100k read keys in the memtables). Not on the digest column
     * family, which is read by iterators. */
    rocksdb_options_set_memtable_prefix_bloom_size_ratio(s->options, 0.02);
    rocksdb_options_set_memtable_whole_key_filtering(s->options, 1);

    int n = snprintf(s->path, sizeof(s->path), "%s/db", dir);
    if (n < 0 || (size_t)n >= sizeof(s->path)) {
        dkv_store_close(s);
        return DKV_EINVAL;
    }
    char *err = open_db(s, false);
    if (err != NULL && classify_write_error(err) == DKV_ENOSPACE) {
        /* Out of space: serve what is there, refuse writes, and reopen for writing once
         * dkv_store_resume() finds space. A missing database cannot be opened read-only. */
        set_unwritable(s, "open for writing", err);
        rocksdb_free(err);
        err = open_db(s, true);
        if (err == NULL) {
            DKV_LOG_WARN("store: opened %s read-only for lack of space", s->path);
        }
    }
    if (err != NULL) {
        int rc = rocks_err("open", err);
        dkv_store_close(s);
        return rc;
    }
    if (atomic_load(&s->writable)) {
        int rc = digest_backfill(s);
        if (rc != 0) {
            dkv_store_close(s);
            return rc;
        }
    }
    *out = s;
    return 0;
}

int dkv_store_get(dkv_store_t *s, dkv_slice_t key, uint8_t **data, size_t *len)
{
    pending_flush();
    char *err = NULL;
    uint8_t *copy = NULL;
    size_t vlen = 0;
    pthread_rwlock_rdlock(&s->db_lock);
    bool closed = s->db == NULL;
    /* A pinned read: on a row or block cache hit RocksDB hands out the cached bytes instead of
     * copying them into a std::string that rocksdb_get() then copies again into a malloc'd
     * buffer. One copy (ours) instead of two, and one allocation less: a 1 KiB GET's store read
     * 6.06k -> 5.28k instructions in the server, 11.83k -> 11.05k for the whole request
     * (callgrind, medians of 3, docs/benchmarks.md "GET floor"). The pin is released here, under
     * the read lock: nothing pinned outlives this call or a reopen or close of the database. */
    rocksdb_pinnableslice_t *p =
        closed ? NULL : rocksdb_get_pinned(s->db, s->ropts, (const char *)key.ptr, key.len, &err);
    if (p != NULL) {
        const char *v = rocksdb_pinnableslice_value(p, &vlen);
        copy = dkv_xmalloc(vlen > 0 ? vlen : 1);
        if (vlen > 0) {
            memcpy(copy, v, vlen);
        }
        rocksdb_pinnableslice_destroy(p);
    }
    pthread_rwlock_unlock(&s->db_lock);
    if (closed) {
        return DKV_EIO;
    }
    if (err != NULL) {
        return rocks_err("get", err);
    }
    if (copy == NULL) {
        return DKV_ENOTFOUND;
    }
    *data = copy;
    *len = vlen;
    return 0;
}

void dkv_store_free(uint8_t *data)
{
    free(data);
}

/* Appends the merges of `rec` (data column family) and of its digest entry to `wb`.
 * @return the digest key's length; 0 when the key is too long to have one. */
static size_t batch_append(dkv_store_t *s, rocksdb_writebatch_t *wb, dkv_slice_t key,
                           const dkv_record_t *rec)
{
    uint8_t stack[4096];
    size_t total = DKV_RECORD_HEADER_BYTES + rec->value.len;
    uint8_t *buf = total <= sizeof(stack) ? stack : dkv_xmalloc(total);
    dkv_record_encode_header(rec, buf);
    if (rec->value.len > 0) {
        memcpy(buf + DKV_RECORD_HEADER_BYTES, rec->value.ptr, rec->value.len);
    }
    uint8_t dk[2 + DKV_MAX_KEY_BYTES];
    uint8_t dv[DIGEST_VALUE_BYTES];
    size_t dklen = key.len <= DKV_MAX_KEY_BYTES ? digest_key(key, dk) : 0;
    digest_encode(rec, dv);
    /* One batch: the record and its digest share the WAL record, so a crash never separates
     * them. Both are blind merges; each column family's operator keeps the newest. */
    rocksdb_writebatch_merge_cf(wb, s->cf_data, (const char *)key.ptr, key.len,
                                (const char *)buf, total);
    if (dklen > 0) {
        rocksdb_writebatch_merge_cf(wb, s->cf_digest, (const char *)dk, dklen, (const char *)dv,
                                    sizeof(dv));
    }
    if (buf != stack) {
        free(buf);
    }
    return dklen;
}

/* dkv_store_put() on a batching thread: appends to the pending batch (write batching, above). */
static int put_batched(dkv_store_t *s, dkv_slice_t key, const dkv_record_t *rec)
{
    if (pend_store != s) {
        pending_flush(); /* another store's batch (tests open several per thread) */
    }
    /* db_lock (shared) keeps a reopen from replacing the column family handles under the
     * append; a batch that a reopen overtakes is refused by pending_write() (generation). */
    pthread_rwlock_rdlock(&s->db_lock);
    if (!atomic_load(&s->writable)) {
        pthread_rwlock_unlock(&s->db_lock);
        atomic_fetch_add(&s->write_errors, 1);
        return atomic_load(&s->write_rc);
    }
    if (pend_store == NULL) {
        pend_wb = rocksdb_writebatch_create();
        pend_store = s;
        pend_gen = atomic_load(&s->generation);
        pend_first_token = wt_seq + 1;
        atomic_fetch_add(&s->pending_batches, 1);
    }
    size_t dklen = batch_append(s, pend_wb, key, rec);
    pthread_rwlock_unlock(&s->db_lock);
    pend_stripes[pend_n] = (uint16_t)stripe_index(key);
    pend_segments[pend_n] = dklen > 0 ? dkv_store_segment(key) : NO_SEGMENT;
    pend_n++;
    wt_seq++; /* its token; decided by the sync that writes and flushes the batch */
    if (pend_n == PENDING_MAX_OPS || batch_bytes(pend_wb) >= PENDING_MAX_BYTES) {
        return pending_write();
    }
    return 0;
}

int dkv_store_put(dkv_store_t *s, dkv_slice_t key, const dkv_record_t *rec)
{
    if (key.len == 0 || (rec->tombstone && rec->value.len > 0)) {
        return DKV_EINVAL;
    }
    if (pend_enabled) {
        return put_batched(s, key, rec);
    }
    int rc = write_begin(s);
    if (rc != 0) {
        return rc;
    }
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    size_t dklen = batch_append(s, wb, key, rec);
    char *err = NULL;
    pthread_mutex_t *mu = stripe_of(s, key);
    pthread_mutex_lock(mu);
    rocksdb_write(s->db, s->wopts, wb, &err);
    pthread_mutex_unlock(mu);
    size_t wal_bytes = batch_bytes(wb);
    rocksdb_writebatch_destroy(wb);
    bool ok = err == NULL;
    rc = write_end_bytes(s, "write", err, wal_bytes);
    if (ok && s->observer != NULL && dklen > 0) {
        s->observer(s->observer_arg, dkv_store_segment(key));
    }
    return rc;
}

void dkv_store_thread_batching(bool on)
{
    if (!on) {
        pending_flush();
    }
    pend_enabled = on;
}

int dkv_store_write_batch(void)
{
    return pending_write();
}

static int sync_wal(dkv_store_t *s);

int dkv_store_sync_wal(dkv_store_t *s)
{
    int rc = sync_wal(s);
    wt_decide_all(rc);
    return rc;
}

uint64_t dkv_store_write_token(void)
{
    return wt_seq;
}

int dkv_store_write_outcome(uint64_t token)
{
    unsigned n = wt_nfails < WT_FAILS ? wt_nfails : WT_FAILS;
    for (unsigned i = 0; i < n; i++) {
        if (token >= wt_fails[i].lo && token <= wt_fails[i].hi) {
            return wt_fails[i].rc;
        }
    }
    if (token != 0 && token <= wt_forgot) {
        return wt_forgot_rc; /* older than the failures kept: maybe failed */
    }
    return token <= wt_decided ? 0 : DKV_STORE_WRITE_PENDING;
}

/* A failure among this thread's tokens after `mark`: its code, or 0. */
static int wt_failed_after(uint64_t mark)
{
    if (wt_forgot > mark) {
        return wt_forgot_rc;
    }
    unsigned n = wt_nfails < WT_FAILS ? wt_nfails : WT_FAILS;
    for (unsigned i = 0; i < n; i++) {
        if (wt_fails[i].hi > mark) {
            return wt_fails[i].rc;
        }
    }
    return 0;
}

int dkv_store_sync_wal_since(dkv_store_t *s, uint64_t *mark)
{
    int rc = dkv_store_sync_wal(s);
    if (rc == 0 && wt_nfails > 0) {
        rc = wt_failed_after(*mark);
    }
    *mark = wt_seq;
    return rc;
}

static int sync_wal(dkv_store_t *s)
{
    pending_flush();
    if (pend_failed_rc != 0) {
        /* A batch write failed since the last sync: the writes it held must not be
         * acknowledged. The store is unwritable now; the WAL is not flushed (see the file
         * comment), and what this thread buffered before is dropped at the reopen. */
        int rc = pend_failed_store == s ? pend_failed_rc : 0;
        pend_failed_rc = 0;
        pend_failed_store = NULL;
        if (rc != 0) {
            if (wal_store == s) {
                wal_store = NULL;
                wal_pending_bytes = 0;
            }
            return rc;
        }
    }
    if (wal_store == NULL) {
        return 0;
    }
    bool same_store = wal_store == s;
    uint64_t gen = wal_gen;
    uint64_t pending_bytes = wal_pending_bytes;
    wal_store = NULL;
    wal_pending_bytes = 0;
    int rc = 0;
    pthread_rwlock_rdlock(&s->db_lock);
    pthread_rwlock_wrlock(&s->wal_lock);
    if (!atomic_load(&s->writable)) {
        atomic_fetch_add(&s->write_errors, 1);
        rc = atomic_load(&s->write_rc);
    } else if (same_store && gen != atomic_load(&s->generation)) {
        /* The database was reopened after a failure since this thread wrote: that write was in
         * the failed WAL buffer and is gone. */
        atomic_fetch_add(&s->write_errors, 1);
        rc = DKV_ENOSPACE;
    } else {
        char *err = NULL;
        rocksdb_flush_wal(s->db, s->fsync ? 1 : 0, &err);
        if (err != NULL) {
            rc = write_failed(s, "write-ahead log flush", err);
        } else {
            /* Under the exclusive wal_lock already: these adds never contend. */
            atomic_fetch_add_explicit(&s->wal_syncs, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&s->wal_bytes, pending_bytes, memory_order_relaxed);
        }
    }
    pthread_rwlock_unlock(&s->wal_lock);
    pthread_rwlock_unlock(&s->db_lock);
    return rc;
}

bool dkv_store_has_records(dkv_store_t *s)
{
    pending_flush();
    pthread_rwlock_rdlock(&s->db_lock);
    bool any = false;
    if (s->db != NULL) {
        rocksdb_iterator_t *it = rocksdb_create_iterator(s->db, s->ropts);
        rocksdb_iter_seek_to_first(it);
        any = rocksdb_iter_valid(it) != 0;
        rocksdb_iter_destroy(it);
    }
    pthread_rwlock_unlock(&s->db_lock);
    return any;
}

bool dkv_store_writable(dkv_store_t *s)
{
    return atomic_load(&s->writable);
}

void dkv_store_health(dkv_store_t *s, dkv_store_health_t *out)
{
    memset(out, 0, sizeof(*out));
    out->write_errors = atomic_load(&s->write_errors);
    out->resumes = atomic_load(&s->resumes);
    pthread_mutex_lock(&s->health_mu);
    out->writable = atomic_load(&s->writable);
    if (!out->writable) {
        out->rc = atomic_load(&s->write_rc);
        out->since_ms = s->since_ms;
        memcpy(out->error, s->error, sizeof(out->error));
    }
    pthread_mutex_unlock(&s->health_mu);
}

/* Free bytes for an unprivileged writer in the data directory; UINT64_MAX if unknown. */
static uint64_t free_bytes(const dkv_store_t *s)
{
    struct statvfs st;
    if (statvfs(s->path, &st) != 0) {
        return UINT64_MAX;
    }
    return (uint64_t)st.f_bavail * (uint64_t)st.f_frsize;
}

int dkv_store_resume(dkv_store_t *s, uint64_t log_interval_ms)
{
    if (atomic_load(&s->writable)) {
        return 0;
    }
    uint64_t now = wall_ms();
    uint64_t space = free_bytes(s);
    int rc = atomic_load(&s->write_rc);
    if (space >= RESUME_MIN_FREE_BYTES && atomic_load(&s->live_iters) == 0) {
        pthread_rwlock_wrlock(&s->db_lock);
        if (atomic_load(&s->live_iters) == 0) {
            close_db(s);
            char *err = open_db(s, false);
            if (err == NULL) {
                rc = 0;
            } else {
                DKV_LOG_WARN("store: reopening for writes failed: %s", err);
                rocksdb_free(err);
                err = open_db(s, true);
                if (err != NULL) {
                    DKV_LOG_ERROR("store: reopening read-only failed too: %s; reads fail until "
                                  "a reopen succeeds",
                                  err);
                    rocksdb_free(err);
                }
            }
        }
        pthread_rwlock_unlock(&s->db_lock);
    }
    pthread_mutex_lock(&s->health_mu);
    uint64_t since = s->since_ms;
    bool log_now = rc == 0 || now - s->last_log_ms >= log_interval_ms;
    if (log_now) {
        s->last_log_ms = now;
    }
    if (rc == 0) {
        s->error[0] = '\0';
        s->since_ms = 0;
        atomic_fetch_add(&s->resumes, 1);
        atomic_store(&s->writable, true);
    }
    char error[sizeof(s->error)];
    memcpy(error, s->error, sizeof(error));
    pthread_mutex_unlock(&s->health_mu);
    uint64_t refused = atomic_load(&s->write_errors);
    if (rc == 0) {
        DKV_LOG_INFO("store: writable again after %" PRIu64 " ms (%" PRIu64
                     " write(s) refused or failed since the open)",
                     now - since, refused);
    } else if (log_now) {
        DKV_LOG_WARN("store: writes still refused after %" PRIu64 " ms (%s; %" PRIu64
                     " refused or failed; %" PRIu64 " bytes free, a reopen needs %u)",
                     now - since, error, refused, space == UINT64_MAX ? 0 : space,
                     RESUME_MIN_FREE_BYTES);
    }
    return rc;
}

int dkv_store_iter_new(dkv_store_t *s, dkv_slice_t start, dkv_slice_t end, dkv_store_iter_t **out)
{
    pending_flush();
    dkv_store_iter_t *it = dkv_xcalloc(1, sizeof(*it));
    it->ropts = rocksdb_readoptions_create();
    /* A scan reads each block once; keep it from evicting the point-read working set. */
    rocksdb_readoptions_set_fill_cache(it->ropts, 0);
    if (end.len > 0) {
        it->end = copy_out(end, &it->end_len);
        rocksdb_readoptions_set_iterate_upper_bound(it->ropts, it->end, it->end_len);
    }
    pthread_rwlock_rdlock(&s->db_lock);
    if (s->db == NULL) {
        pthread_rwlock_unlock(&s->db_lock);
        it->store = s;
        dkv_store_iter_free(it);
        return DKV_EIO;
    }
    it->it = rocksdb_create_iterator(s->db, it->ropts);
    atomic_fetch_add(&s->live_iters, 1);
    it->store = s;
    pthread_rwlock_unlock(&s->db_lock);
    rocksdb_iter_seek(it->it, (const char *)start.ptr, start.len);
    *out = it;
    return 0;
}

/* Moves a RocksDB iterator to its next entry (its first on the first call).
 * @return 0 with the entry, borrowed from the iterator; DKV_ENOTFOUND at the end; DKV_EIO. */
static int iter_step(rocksdb_iterator_t *it, bool *started, const char *what, dkv_slice_t *key,
                     dkv_slice_t *value)
{
    if (it == NULL) {
        return DKV_EIO; /* created while the database could not be opened */
    }
    if (*started && rocksdb_iter_valid(it)) {
        rocksdb_iter_next(it);
    }
    *started = true;
    if (!rocksdb_iter_valid(it)) {
        char *err = NULL;
        rocksdb_iter_get_error(it, &err);
        if (err != NULL) {
            return rocks_err(what, err);
        }
        return DKV_ENOTFOUND;
    }
    size_t klen = 0;
    size_t vlen = 0;
    const char *k = rocksdb_iter_key(it, &klen);
    const char *v = rocksdb_iter_value(it, &vlen);
    *key = dkv_slice(k, klen);
    *value = dkv_slice(v, vlen);
    return 0;
}

int dkv_store_iter_next(dkv_store_iter_t *it, dkv_slice_t *key, dkv_record_t *rec)
{
    for (;;) {
        dkv_slice_t k;
        dkv_slice_t v;
        int rc = iter_step(it->it, &it->started, "scan", &k, &v);
        if (rc != 0) {
            return rc;
        }
        dkv_record_t r;
        if (dkv_record_decode(v, &r) != 0) {
            DKV_LOG_ERROR("store: skipping a record that does not decode (key of %zu bytes)",
                          k.len);
            continue;
        }
        *key = k;
        *rec = r;
        return 0;
    }
}

void dkv_store_iter_free(dkv_store_iter_t *it)
{
    if (it == NULL) {
        return;
    }
    if (it->it != NULL) {
        rocksdb_iter_destroy(it->it);
        atomic_fetch_sub(&it->store->live_iters, 1);
    }
    rocksdb_readoptions_destroy(it->ropts);
    free(it->end);
    free(it);
}

/* ---- the hints column family ---- */

int dkv_store_hint_put(dkv_store_t *s, dkv_slice_t key, dkv_slice_t value)
{
    pending_flush();
    int rc = write_begin(s);
    if (rc != 0) {
        return rc;
    }
    char *err = NULL;
    rocksdb_put_cf(s->db, s->wopts, s->cf_hints, (const char *)key.ptr, key.len,
                   (const char *)value.ptr, value.len, &err);
    return write_end_bytes(s, "hint write", err, key.len + value.len);
}

int dkv_store_hint_delete(dkv_store_t *s, dkv_slice_t key)
{
    pending_flush();
    int rc = write_begin(s);
    if (rc != 0) {
        return rc;
    }
    char *err = NULL;
    rocksdb_delete_cf(s->db, s->wopts, s->cf_hints, (const char *)key.ptr, key.len, &err);
    return write_end_bytes(s, "hint delete", err, key.len);
}

int dkv_store_hint_iter_new(dkv_store_t *s, dkv_slice_t lower, dkv_slice_t upper,
                            dkv_store_raw_iter_t **out)
{
    pending_flush();
    dkv_store_raw_iter_t *it = dkv_xcalloc(1, sizeof(*it));
    it->ropts = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(it->ropts, 0);
    size_t n = 0;
    /* Bounds keep a seek from walking over the deleted hints at the head of a queue. */
    if (lower.len > 0) {
        it->lower = copy_out(lower, &n);
        rocksdb_readoptions_set_iterate_lower_bound(it->ropts, it->lower, n);
    }
    if (upper.len > 0) {
        it->upper = copy_out(upper, &n);
        rocksdb_readoptions_set_iterate_upper_bound(it->ropts, it->upper, n);
    }
    it->store = s;
    pthread_rwlock_rdlock(&s->db_lock);
    if (s->db != NULL) {
        it->it = rocksdb_create_iterator_cf(s->db, it->ropts, s->cf_hints);
        atomic_fetch_add(&s->live_iters, 1);
    }
    pthread_rwlock_unlock(&s->db_lock);
    if (it->it != NULL) {
        rocksdb_iter_seek(it->it, (const char *)lower.ptr, lower.len);
    }
    *out = it;
    return 0;
}

int dkv_store_raw_iter_next(dkv_store_raw_iter_t *it, dkv_slice_t *key, dkv_slice_t *value)
{
    return iter_step(it->it, &it->started, "hint scan", key, value);
}

void dkv_store_raw_iter_free(dkv_store_raw_iter_t *it)
{
    if (it == NULL) {
        return;
    }
    if (it->it != NULL) {
        rocksdb_iter_destroy(it->it);
        atomic_fetch_sub(&it->store->live_iters, 1);
    }
    rocksdb_readoptions_destroy(it->ropts);
    free(it->lower);
    free(it->upper);
    free(it);
}

/* ---- anti-entropy support: write observer, the digest column family, tombstone purge ---- */

void dkv_store_set_write_observer(dkv_store_t *s, dkv_store_write_cb cb, void *arg)
{
    s->observer = cb;
    s->observer_arg = arg;
}

int dkv_store_digest_iter_new(dkv_store_t *s, uint32_t seg_lo, uint32_t seg_end,
                              dkv_store_raw_iter_t **out)
{
    pending_flush();
    if (seg_lo >= seg_end || seg_end > DKV_STORE_SEGMENTS) {
        return DKV_EINVAL;
    }
    dkv_store_raw_iter_t *it = dkv_xcalloc(1, sizeof(*it));
    it->ropts = rocksdb_readoptions_create();
    rocksdb_readoptions_set_fill_cache(it->ropts, 0);
    it->lower = dkv_xmalloc(2);
    it->lower[0] = (char)(seg_lo >> 8);
    it->lower[1] = (char)seg_lo;
    rocksdb_readoptions_set_iterate_lower_bound(it->ropts, it->lower, 2);
    if (seg_end < DKV_STORE_SEGMENTS) {
        it->upper = dkv_xmalloc(2);
        it->upper[0] = (char)(seg_end >> 8);
        it->upper[1] = (char)seg_end;
        rocksdb_readoptions_set_iterate_upper_bound(it->ropts, it->upper, 2);
    }
    it->store = s;
    pthread_rwlock_rdlock(&s->db_lock);
    if (s->db != NULL) {
        it->it = rocksdb_create_iterator_cf(s->db, it->ropts, s->cf_digest);
        atomic_fetch_add(&s->live_iters, 1);
    }
    pthread_rwlock_unlock(&s->db_lock);
    if (it->it != NULL) {
        rocksdb_iter_seek(it->it, it->lower, 2);
    }
    *out = it;
    return 0;
}

int dkv_store_digest_next(dkv_store_raw_iter_t *it, uint32_t *segment, dkv_slice_t *key,
                          dkv_store_digest_t *d)
{
    for (;;) {
        dkv_slice_t k;
        dkv_slice_t v;
        int rc = iter_step(it->it, &it->started, "digest scan", &k, &v);
        if (rc != 0) {
            return rc;
        }
        if (k.len < 3 || k.len > 2 + DKV_MAX_KEY_BYTES || !digest_decode(v, d)) {
            DKV_LOG_ERROR("store: skipping a digest entry that does not decode (%zu bytes)", k.len);
            continue;
        }
        *segment = ((uint32_t)k.ptr[0] << 8) | k.ptr[1];
        *key = dkv_slice(k.ptr + 2, k.len - 2);
        return 0;
    }
}

int dkv_store_purge_tombstone(dkv_store_t *s, dkv_slice_t key, uint64_t max_ts)
{
    pending_flush();
    if (key.len == 0 || key.len > DKV_MAX_KEY_BYTES) {
        return DKV_EINVAL;
    }
    uint8_t dk[2 + DKV_MAX_KEY_BYTES];
    size_t dklen = digest_key(key, dk);
    int rc = write_begin(s);
    if (rc != 0) {
        return rc;
    }
    pthread_mutex_t *mu = stripe_of(s, key);
    pthread_mutex_lock(mu);
    char *err = NULL;
    size_t vlen = 0;
    char *v = rocksdb_get(s->db, s->ropts, (const char *)key.ptr, key.len, &vlen, &err);
    if (err != NULL) {
        pthread_mutex_unlock(mu);
        write_abort(s);
        return rocks_err("purge get", err);
    }
    dkv_record_t rec;
    bool eligible = v != NULL && dkv_record_decode(dkv_slice(v, vlen), &rec) == 0 &&
                    rec.tombstone && rec.ts <= max_ts;
    if (v != NULL) {
        rocksdb_free(v);
    }
    if (!eligible) {
        pthread_mutex_unlock(mu);
        write_abort(s);
        return DKV_ENOTFOUND;
    }
    /* A RocksDB Delete shadows every older version of the key below it (the tombstone has met
     * them all), and compaction drops the Delete with them at the bottommost level. */
    rocksdb_writebatch_t *wb = rocksdb_writebatch_create();
    rocksdb_writebatch_delete_cf(wb, s->cf_data, (const char *)key.ptr, key.len);
    rocksdb_writebatch_delete_cf(wb, s->cf_digest, (const char *)dk, dklen);
    rocksdb_write(s->db, s->wopts, wb, &err);
    pthread_mutex_unlock(mu);
    size_t wal_bytes = batch_bytes(wb);
    rocksdb_writebatch_destroy(wb);
    rc = write_end_bytes(s, "purge", err, wal_bytes);
    if (rc != 0) {
        return rc;
    }
    atomic_fetch_add(&s->purged, 1);
    if (s->observer != NULL) {
        s->observer(s->observer_arg, dkv_store_segment(key));
    }
    return 0;
}

uint64_t dkv_store_purged(dkv_store_t *s)
{
    return atomic_load(&s->purged);
}

void dkv_store_compact(dkv_store_t *s)
{
    pending_flush();
    rocksdb_compactoptions_t *co = rocksdb_compactoptions_create();
    /* kForce (2): rewrite the bottommost level too, so Deletes and what they shadow go. */
    rocksdb_compactoptions_set_bottommost_level_compaction(co, 2);
    pthread_rwlock_rdlock(&s->db_lock);
    /* Not while unwritable: a compaction writes files, and a full disk is why it is. */
    if (s->db != NULL && atomic_load(&s->writable)) {
        rocksdb_compact_range_cf_opt(s->db, s->cf_data, co, NULL, 0, NULL, 0);
        rocksdb_compact_range_cf_opt(s->db, s->cf_digest, co, NULL, 0, NULL, 0);
    }
    pthread_rwlock_unlock(&s->db_lock);
    rocksdb_compactoptions_destroy(co);
}

int dkv_store_checkpoint(dkv_store_t *s, const char *dir, char *why, size_t why_len)
{
    pending_flush();
    int rc = 0;
    char *err = NULL;
    rocksdb_checkpoint_t *cp = NULL;
    rocksdb_flushoptions_t *fo = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(fo, 1);
    pthread_rwlock_rdlock(&s->db_lock);
    if (s->db == NULL || !atomic_load(&s->writable)) {
        rc = s->db == NULL ? DKV_EIO : atomic_load(&s->write_rc);
        snprintf(why, why_len, "the store is not writable (%s): a checkpoint flushes memtables",
                 dkv_strerror(rc));
        goto out;
    }
    /* Memtables to SST files first, without holding writes: the checkpoint then hard-links the
     * SSTs and copies only the little write-ahead log written since. A failed flush is RocksDB's
     * background error, which the next write turns into the unwritable state. */
    rocksdb_column_family_handle_t *cfs[] = {s->cf_data, s->cf_hints, s->cf_digest};
    for (size_t i = 0; i < sizeof(cfs) / sizeof(cfs[0]); i++) {
        rocksdb_flush_cf(s->db, fo, cfs[i], &err);
        if (err != NULL) {
            rc = classify_write_error(err);
            snprintf(why, why_len, "memtable flush: %s", err);
            goto out;
        }
    }
    /* Writes wait while the log is flushed and the checkpoint taken (hard links and a small
     * copy: milliseconds), as for any WAL flush: none may reach a writer whose flush failed. */
    pthread_rwlock_wrlock(&s->wal_lock);
    if (!atomic_load(&s->writable)) {
        rc = atomic_load(&s->write_rc);
        snprintf(why, why_len, "the store became unwritable (%s)", dkv_strerror(rc));
    } else {
        rocksdb_flush_wal(s->db, s->fsync ? 1 : 0, &err);
        if (err != NULL) {
            snprintf(why, why_len, "write-ahead log flush: %s", err);
            rc = write_failed(s, "write-ahead log flush", err);
            err = NULL;
        }
    }
    if (rc == 0) {
        cp = rocksdb_checkpoint_object_create(s->db, &err);
        if (err == NULL) {
            /* No flush inside: done above, and the log holds everything since. */
            rocksdb_checkpoint_create(cp, dir, UINT64_MAX, &err);
        }
    }
    pthread_rwlock_unlock(&s->wal_lock);
    if (err != NULL) {
        rc = strstr(err, "exists") != NULL ? -EEXIST : classify_write_error(err);
        snprintf(why, why_len, "checkpoint: %s", err);
    }
out:
    pthread_rwlock_unlock(&s->db_lock);
    if (cp != NULL) {
        rocksdb_checkpoint_object_destroy(cp);
    }
    rocksdb_free(err);
    rocksdb_flushoptions_destroy(fo);
    return rc;
}

uint64_t dkv_store_live_bytes_estimate(dkv_store_t *s)
{
    uint64_t v = 0;
    pthread_rwlock_rdlock(&s->db_lock);
    if (s->db == NULL ||
        rocksdb_property_int_cf(s->db, s->cf_data, "rocksdb.estimate-live-data-size", &v) != 0) {
        v = 0;
    }
    pthread_rwlock_unlock(&s->db_lock);
    return v;
}

uint64_t dkv_store_keys_estimate(dkv_store_t *s)
{
    uint64_t v = 0;
    pthread_rwlock_rdlock(&s->db_lock);
    if (s->db == NULL ||
        rocksdb_property_int_cf(s->db, s->cf_data, "rocksdb.estimate-num-keys", &v) != 0) {
        v = 0;
    }
    pthread_rwlock_unlock(&s->db_lock);
    return v;
}

/* One integer property of column family `cf`, 0 when RocksDB does not know it. */
static uint64_t cf_property(dkv_store_t *s, rocksdb_column_family_handle_t *cf, const char *name)
{
    uint64_t v = 0;
    if (rocksdb_property_int_cf(s->db, cf, name, &v) != 0) {
        v = 0;
    }
    return v;
}

void dkv_store_stats(dkv_store_t *s, dkv_store_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->wal_syncs = atomic_load_explicit(&s->wal_syncs, memory_order_relaxed);
    out->wal_bytes = atomic_load_explicit(&s->wal_bytes, memory_order_relaxed);
    out->block_cache_usage_bytes = rocksdb_cache_get_usage(s->cache);
    out->block_cache_pinned_bytes = rocksdb_cache_get_pinned_usage(s->cache);
    out->block_cache_capacity_bytes = rocksdb_cache_get_capacity(s->cache);
    if (s->row_cache != NULL) {
        out->row_cache_usage_bytes = rocksdb_cache_get_usage(s->row_cache);
        out->row_cache_capacity_bytes = rocksdb_cache_get_capacity(s->row_cache);
    }
    struct statvfs fs;
    if (statvfs(s->path, &fs) == 0) {
        out->fs_size_bytes = (uint64_t)fs.f_blocks * (uint64_t)fs.f_frsize;
        out->fs_avail_bytes = (uint64_t)fs.f_bavail * (uint64_t)fs.f_frsize;
    }
    out->memtable_limit_bytes = s->memtable_limit_bytes;
    pthread_rwlock_rdlock(&s->db_lock);
    if (s->db != NULL) {
        rocksdb_column_family_handle_t *cfs[DKV_STORE_N_CFS] = {s->cf_data, s->cf_hints,
                                                                 s->cf_digest};
        for (unsigned i = 0; i < DKV_STORE_N_CFS; i++) {
            dkv_store_cf_stats_t *c = &out->cf[i];
            c->memtable_bytes = cf_property(s, cfs[i], "rocksdb.cur-size-all-mem-tables");
            c->sst_total_bytes = cf_property(s, cfs[i], "rocksdb.total-sst-files-size");
            c->sst_live_bytes = cf_property(s, cfs[i], "rocksdb.live-sst-files-size");
            c->pending_compaction_bytes =
                cf_property(s, cfs[i], "rocksdb.estimate-pending-compaction-bytes");
            c->keys_estimate = cf_property(s, cfs[i], "rocksdb.estimate-num-keys");
            c->live_versions = cf_property(s, cfs[i], "rocksdb.num-live-versions");
            c->table_readers_bytes = cf_property(s, cfs[i], "rocksdb.estimate-table-readers-mem");
        }
    }
    pthread_rwlock_unlock(&s->db_lock);
}

const char *dkv_store_cf_name(unsigned cf)
{
    static const char *const names[DKV_STORE_N_CFS] = {"data", "hints", "digest"};
    return cf < DKV_STORE_N_CFS ? names[cf] : "?";
}
