/*
 * Node-local storage: versioned records (common/record.h) in RocksDB, the only module that
 * includes rocksdb/c.h. Writes go through RocksDB's write-ahead log before they return, so an
 * acknowledged write survives kill -9. A replica keeps the newest version by the last-write-wins
 * order: writes are RocksDB merges whose merge operator keeps the newer record, so a delayed older
 * write can never overwrite a newer one and concurrent writers need no lock.
 *
 * Storage errors: the first write or write-ahead-log flush that fails (disk full) makes the store
 * unwritable. Writes are then refused (DKV_ENOSPACE, or DKV_EIO for other write errors) without
 * reaching RocksDB, reads go on, and dkv_store_resume() reopens the database for writing once the
 * data directory has space again. Nothing flushed before the failure is lost; what was buffered
 * and not flushed was never acknowledged and is dropped.
 */
#ifndef DKV_STORE_STORE_H
#define DKV_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/record.h"
#include "common/slice.h"

typedef struct dkv_store dkv_store_t;
typedef struct dkv_store_iter dkv_store_iter_t;
typedef struct dkv_store_raw_iter dkv_store_raw_iter_t;

/* Anti-entropy segments (repair/merkle.h): the top 16 bits of the key's ring token, xxh3_64. */
#define DKV_STORE_SEGMENTS 65536u

/* A record's digest entry: what anti-entropy compares (common/record.h fields). */
typedef struct dkv_store_digest {
    uint64_t ts;
    bool tombstone;
    uint8_t from; /* 0 = unknown (a version-1 record) */
} dkv_store_digest_t;

/* Called after every replica write or purge with the key's segment, on the writing thread. */
typedef void (*dkv_store_write_cb)(void *arg, uint32_t segment);

typedef struct dkv_store_opts {
    size_t block_cache_bytes; /* LRU block cache; 0 = sized from memory (dkv_store_sizing) */
    size_t row_cache_bytes;   /* LRU row cache (whole records by key); 0 = none */
    bool fsync;               /* fsync the WAL on every write (power-loss safety); default off */
    /* RocksDB's flush and compaction threads at nice 19 (common/thread.h), so that the I/O
     * threads preempt them. Process-wide and one-way: those pools belong to RocksDB's default
     * Env, shared by every store of the process. Default off (for tests); main.c turns it on
     * with --background-low-priority. */
    bool background_low_priority;
} dkv_store_opts_t;

/**
 * The memory this process may use, in bytes: physical RAM, or the limit of its own cgroup when
 * that is lower (v2 `memory.max`, v1 `memory.limit_in_bytes`, found through /proc/self/cgroup,
 * as a systemd `MemoryMax=` or a container's memory limit sets it). 0 when RAM cannot be read.
 * Reads /proc and /sys: call it at start, not per request. Thread: any.
 */
uint64_t dkv_store_memory_limit_bytes(void);

/**
 * The memory limit of the cgroup that `proc_cgroup` (a /proc/PID/cgroup file) names, read under
 * `sysfs_root` (where the cgroup file systems are mounted, /sys/fs/cgroup): v2's
 * `<root><path>/memory.max`, v1's `<root>/memory<path>/memory.limit_in_bytes`; the lower when
 * both are there. UINT64_MAX when there is no limit ("max", v1's ~2^63) or nothing can be read.
 * Both paths borrowed. Thread: any.
 */
uint64_t dkv_store_cgroup_limit_bytes(const char *proc_cgroup, const char *sysfs_root);

/** The store's memory when the operator does not size it (docs/architecture.md, Memory). */
typedef struct dkv_store_sizing {
    size_t block_cache_bytes; /* limit / 4, in [DKV_STORE_MIN_CACHE_BYTES, ..._MAX_...] */
} dkv_store_sizing_t;

#define DKV_STORE_MIN_CACHE_BYTES ((size_t)64 << 20)
#define DKV_STORE_MAX_CACHE_BYTES ((size_t)16 << 30)

/**
 * Sizes the store for a process that may use `limit_bytes` of memory (0 = unknown: the
 * minimum): a block cache of a quarter of it, at least 64 MiB and at most 16 GiB. A quarter
 * leaves room for the memtables, the rest of the process and the page cache, which also holds
 * the SST files (RocksDB's tuning guide suggests about a third of memory for a dedicated
 * machine; dkv also leaves room for several nodes per host in tests and small clusters).
 * Pure: no I/O. Thread: any.
 */
void dkv_store_sizing(uint64_t limit_bytes, dkv_store_sizing_t *out);

/**
 * Opens (creating if missing) the database in `dir`/db. Replays the write-ahead log; a torn
 * final WAL record is discarded by RocksDB's checksums.
 *
 * @param dir   Borrowed; must exist.
 * @param opts  Borrowed; NULL for defaults.
 * @param out   Written on success; release with dkv_store_close().
 * @return 0; DKV_EIO (logged with RocksDB's reason, e.g. another process holds the lock).
 *         An existing database that cannot be opened for writing for lack of space is opened
 *         read-only: 0, and the store starts unwritable (see dkv_store_resume()).
 * Thread: any.
 */
int dkv_store_open(const char *dir, const dkv_store_opts_t *opts, dkv_store_t **out);

/**
 * Prepares the calling thread for store calls: turns off RocksDB's per-thread perf counters,
 * which cost a few percent of a point operation and are never read. Call once per I/O thread.
 * Thread: the thread being prepared.
 */
void dkv_store_thread_init(void);

/**
 * Writes the calling thread's pending batch, flushes the WAL and closes the database. All
 * iterators must be freed and every other batching thread must have written its batch
 * (dkv_store_sync_wal() or dkv_store_thread_batching(false)) first. NULL is a no-op.
 * Thread: any, once no other thread uses `s`.
 */
void dkv_store_close(dkv_store_t *s);

/**
 * Reads the stored record of `key`.
 *
 * @param key   Borrowed; 1..DKV_MAX_KEY_BYTES bytes.
 * @param data  On success: a malloc'd encoded record (decode with dkv_record_decode) that the
 *              caller releases with dkv_store_free(); `len` is its size in bytes.
 * @return 0; DKV_ENOTFOUND (no version at all, not even a tombstone); DKV_EIO.
 * Thread: any (RocksDB is thread-safe); blocks for a memtable/cache hit's microseconds or a disk
 * read.
 */
int dkv_store_get(dkv_store_t *s, dkv_slice_t key, uint8_t **data, size_t *len);

/** Frees a buffer returned by dkv_store_get(). NULL is a no-op. Thread: any. */
void dkv_store_free(uint8_t *data);

/**
 * Stores `rec` for `key` unless the stored version is newer (last-write-wins, common/record.h).
 * The record goes to the write-ahead log's buffer; it is durable (write(2) done, and fsync'd too
 * if opts.fsync) once this thread calls dkv_store_sync_wal(), which every path that acknowledges
 * a write must do first. One sync covers all writes before it (group commit).
 *
 * On a thread with write batching on (dkv_store_thread_batching()), the record is appended to
 * the thread's pending batch and reaches RocksDB (memtable and WAL buffer) at this thread's next
 * dkv_store_sync_wal(), dkv_store_write_batch(), read, or when the batch is full; the 0 returned
 * then means "accepted", and that sync reports a failure to store it.
 *
 * A failure is reported to one sync only, whichever of the thread's syncs runs first, which need
 * not be the caller's: a caller that acknowledges the write later, after other code of the
 * thread may have synced (a coordinator waiting for its peers), takes the write's token with
 * dkv_store_write_token() right after a 0 and asks dkv_store_write_outcome() before counting it.
 *
 * @param key  Borrowed; 1..DKV_MAX_KEY_BYTES bytes.
 * @param rec  Borrowed; a tombstone must have an empty value.
 * @return 0; DKV_EINVAL (empty key, tombstone with value); DKV_ENOSPACE (no space: this write
 *         failed, or the store is unwritable since an earlier one did); DKV_EIO (another write
 *         error, same rule). A failed write is logged once, when the store becomes unwritable.
 * Thread: any.
 */
int dkv_store_put(dkv_store_t *s, dkv_slice_t key, const dkv_record_t *rec);

/**
 * Turns write batching on or off for the calling thread. On: dkv_store_put() appends to a
 * per-thread batch that one rocksdb_write stores (see dkv_store_put()), so a loop iteration's
 * writes cost one RocksDB write group instead of one each. Any read or other write of the
 * thread writes its batch first (the thread reads its own writes). Only for a thread that runs
 * dkv_store_sync_wal() before acknowledging anything and dkv_store_write_batch() before it
 * sleeps (main.c's I/O loops); others write directly (the default). Off writes what is pending.
 * Thread: the thread concerned.
 */
void dkv_store_thread_batching(bool on);

/**
 * Writes the calling thread's pending batch (a no-op without one) to RocksDB's memtable and WAL
 * buffer, not flushing the WAL. A failure is also returned by this thread's next
 * dkv_store_sync_wal() of the store, so the writes it held are never acknowledged.
 * @return 0; DKV_ENOSPACE or DKV_EIO (nothing of the batch is stored; the store is unwritable).
 * Thread: the batching thread (main.c: each loop iteration, before the loop polls).
 */
int dkv_store_write_batch(void);

/**
 * Makes every write this thread did since its last sync durable: writes its pending batch (write
 * batching), then write(2) of the WAL buffer (and fsync with opts.fsync). A no-op when this
 * thread wrote nothing since.
 * Decides the tokens of those writes (dkv_store_write_outcome()).
 * @return 0; DKV_ENOSPACE or DKV_EIO: those writes are not durable and must not be acknowledged
 *         (the flush failed, the store is unwritable, or it was reopened since they were made).
 *         A failure is returned once: a later sync of the thread with nothing new returns 0
 *         (see dkv_store_sync_wal_since() and dkv_store_write_outcome() for the writes it
 *         covered).
 * Thread: any; the "since" is per thread (one store per thread: closing a store decides its
 * writes and forgets it).
 */
int dkv_store_sync_wal(dkv_store_t *s);

/**
 * The token of the calling thread's last accepted write (dkv_store_put(), hint put or delete,
 * purge): call it right after one returned 0 to name that write. Tokens count the thread's
 * writes from 1 (0: none yet, which dkv_store_write_outcome() calls durable). A thread-local
 * read. Thread: the writing thread; tokens mean nothing on another one.
 */
uint64_t dkv_store_write_token(void);

/* dkv_store_write_outcome(): no sync or batch write has decided the write yet. */
#define DKV_STORE_WRITE_PENDING 1

/**
 * What became of the calling thread's write `token` (dkv_store_write_token()):
 * @return 0: durable (a sync of the thread flushed it); DKV_STORE_WRITE_PENDING: not decided
 *         yet: the thread's next dkv_store_sync_wal(), whoever calls it, decides it (ask again
 *         after it, as http/ does for the 201/202 that names the token); DKV_ENOSPACE or
 *         DKV_EIO: failed (its batch write, the WAL flush, or the store's reopen lost it), even
 *         if the sync that decided it returned the failure to someone else. The thread keeps
 *         the last 8 failed ranges of tokens; a token at or below one it forgot reads as failed
 *         (conservative). Costs a few compares. Thread: the writing thread.
 */
int dkv_store_write_outcome(uint64_t token);

/**
 * dkv_store_sync_wal(), for a caller that acknowledges every write the thread made after its
 * `*mark` (a token: the thread's dkv_store_write_token() when the site starts, 0 on a new
 * thread): fails also when a sync of the thread that this caller did not see (or a batch
 * write) failed any write after `*mark`. Sets `*mark` to the thread's last token: the next
 * call covers the writes made from now on. For a site that acknowledges all it
 * wrote since a point (an anti-entropy exchange, a rebuild batch); a site that acknowledges
 * writes one by one checks each one's token instead (http/, rpc/server.c).
 * @return 0; DKV_ENOSPACE or DKV_EIO: some write after the mark is not durable.
 * Thread: the writing thread.
 */
int dkv_store_sync_wal_since(dkv_store_t *s, uint64_t *mark);

/** Whether writes are accepted now (false after a storage error, until a resume). Thread: any. */
bool dkv_store_writable(dkv_store_t *s);

/** The store's write health, for the status endpoint. */
typedef struct dkv_store_health {
    bool writable;
    int rc;                /* while unwritable: DKV_ENOSPACE or DKV_EIO; else 0 */
    char error[256];       /* while unwritable: RocksDB's reason, NUL-terminated; else "" */
    uint64_t since_ms;     /* while unwritable: wall-clock ms when it became so; else 0 */
    uint64_t write_errors; /* writes and WAL flushes refused or failed since the open */
    uint64_t resumes;      /* times the store became writable again */
} dkv_store_health_t;

/** Copies the write health into `out` (caller's storage). Thread: any. */
void dkv_store_health(dkv_store_t *s, dkv_store_health_t *out);

/**
 * Makes an unwritable store writable again once its directory has space: closes the database
 * and reopens it for writing (RocksDB 7's C API has no DB::Resume, and its own recovery cannot
 * clear a failed write-ahead-log writer). The reopen replays the log. If it fails, the database
 * is reopened read-only and the store stays unwritable. Not tried while an iterator is alive or
 * with less than 8 MiB free. Logs the outcome: success once, "still unwritable" at most once per
 * `log_interval_ms`.
 * @return 0 (writable, or was already); DKV_ENOSPACE or DKV_EIO (still unwritable).
 * Thread: any but an I/O thread: it blocks every store call for the reopen (tens of ms). Call it
 * periodically (main.c: every second).
 */
int dkv_store_resume(dkv_store_t *s, uint64_t log_interval_ms);

/** Whether the store holds at least one replica record (tombstones count). Thread: any. */
bool dkv_store_has_records(dkv_store_t *s);

/**
 * Starts an ordered scan of keys k with start <= k < end (unsigned bytes, lexicographic); an empty
 * `end` means "to the last key". The scan sees a consistent snapshot and includes tombstones.
 *
 * @param start, end  Copied; the caller may free them after the call.
 * @param out         Written on success; release with dkv_store_iter_free().
 * @return 0; DKV_EIO (the database could not be reopened after a storage error). A live
 *         iterator holds off dkv_store_resume().
 * Thread: any; the iterator is then used by one thread at a time.
 */
int dkv_store_iter_new(dkv_store_t *s, dkv_slice_t start, dkv_slice_t end,
                       dkv_store_iter_t **out);

/**
 * Moves to the next record of the scan.
 *
 * @param key, rec  On success: the key and decoded record, both borrowed from the iterator and
 *                  valid until the next call or dkv_store_iter_free().
 * @return 0 with a record; DKV_ENOTFOUND at the end; DKV_EIO. A record that fails to decode is
 *         logged and skipped.
 * Thread: the iterator's user.
 */
int dkv_store_iter_next(dkv_store_iter_t *it, dkv_slice_t *key, dkv_record_t *rec);

/** Releases an iterator. NULL is a no-op. */
void dkv_store_iter_free(dkv_store_iter_t *it);

/*
 * The hints column family (repair/hints.h): raw keys and values, apart from replica data (never
 * read by a GET or a scan above), written through the same write-ahead log: durable once the
 * calling thread runs dkv_store_sync_wal().
 */

/**
 * Stores `value` under `key` in the hints column family (overwrites).
 * @param key, value  Borrowed for the call. @return 0; DKV_ENOSPACE or DKV_EIO as
 *                    dkv_store_put(). Thread: any.
 */
int dkv_store_hint_put(dkv_store_t *s, dkv_slice_t key, dkv_slice_t value);

/** Deletes `key` from the hints column family. @return 0; DKV_ENOSPACE or DKV_EIO as
 * dkv_store_put(). Thread: any. */
int dkv_store_hint_delete(dkv_store_t *s, dkv_slice_t key);

/**
 * Starts an ordered scan of the hints column family over lower <= k < upper (an empty bound is
 * no bound), from a consistent snapshot.
 * @param lower, upper  Copied. @param out written; release with dkv_store_raw_iter_free().
 * @return 0 (if the database could not be reopened after a storage error, the first
 *         dkv_store_raw_iter_next() says DKV_EIO). Thread: any; the iterator is then used by one
 *         thread at a time.
 */
int dkv_store_hint_iter_new(dkv_store_t *s, dkv_slice_t lower, dkv_slice_t upper,
                            dkv_store_raw_iter_t **out);

/**
 * Moves to the next entry. @param key, value On 0: borrowed from the iterator until the next
 * call or its release. @return 0; DKV_ENOTFOUND at the end; DKV_EIO (logged).
 */
int dkv_store_raw_iter_next(dkv_store_raw_iter_t *it, dkv_slice_t *key, dkv_slice_t *value);

/** Releases a raw iterator. NULL is a no-op. */
void dkv_store_raw_iter_free(dkv_store_raw_iter_t *it);

/*
 * The digest column family: for every replica record, key `segment u16 BE | key` and value
 * `ts u64 BE | flags u8 | from u8`, written in the same WriteBatch (same WAL record) as the record
 * with its own last-write-wins merge operator (timestamp, then tombstone), so the digest of a key
 * is always the digest of its stored record without a read before the write (the Riak AAE "A1"
 * design: /work/shared/research/anti-entropy.md). A data directory from before it gets its
 * digests at open (one scan). Anti-entropy (repair/merkle.h) reads a segment range in key order.
 */

/** The anti-entropy segment of `key`: XXH3_64(key) >> 48, the top of its ring token. Pure. */
uint32_t dkv_store_segment(dkv_slice_t key);

/**
 * Sets the function told about every write and purge (with the key's segment), e.g. to mark a
 * hash-tree segment dirty. `cb` runs on the writing thread after the write; it must be cheap and
 * thread-safe. Thread: main, before any thread writes.
 */
void dkv_store_set_write_observer(dkv_store_t *s, dkv_store_write_cb cb, void *arg);

/**
 * Starts an ordered scan of the digest entries of segments seg_lo <= segment < seg_end, from a
 * consistent snapshot; walk it with dkv_store_digest_next(), release with
 * dkv_store_raw_iter_free(). @return 0; DKV_EINVAL (empty or out-of-range segments).
 * Thread: any; the iterator is then used by one thread at a time.
 */
int dkv_store_digest_iter_new(dkv_store_t *s, uint32_t seg_lo, uint32_t seg_end,
                              dkv_store_raw_iter_t **out);

/**
 * Next digest entry, ordered by (segment, key). @param key On 0: borrowed from the iterator until
 * the next call. @return 0; DKV_ENOTFOUND at the end; DKV_EIO (logged). Entries that do not
 * decode are logged and skipped.
 */
int dkv_store_digest_next(dkv_store_raw_iter_t *it, uint32_t *segment, dkv_slice_t *key,
                          dkv_store_digest_t *d);

/**
 * Tombstone GC: removes `key` (record and digest) if its stored record is a tombstone stamped
 * at or before `max_ts`, atomically with respect to dkv_store_put() of the same key (a key
 * stripe lock), so a newer write is never removed. The caller decides `max_ts` (repair/
 * antientropy.h: after a repair covered every replica, plus the grace period).
 * @return 0 purged; DKV_ENOTFOUND (not an eligible tombstone: nothing done); DKV_EINVAL; DKV_EIO.
 * Durable with the thread's next dkv_store_sync_wal() (a purge lost in a crash is redone).
 * Thread: any.
 */
int dkv_store_purge_tombstone(dkv_store_t *s, dkv_slice_t key, uint64_t max_ts);

/** Tombstones purged since open. Thread: any. */
uint64_t dkv_store_purged(dkv_store_t *s);

/**
 * Compacts the whole data and digest column families, bottommost level included, so purged
 * tombstones (RocksDB Deletes) leave the disk now rather than at the next natural compaction.
 * Blocks for as long as that takes (seconds per GiB). Thread: any but an I/O loop.
 */
void dkv_store_compact(dkv_store_t *s);

/**
 * Writes a consistent copy of the whole database (every column family) to `dir`, a directory
 * that must not exist yet (its parent must): a RocksDB checkpoint, whose SST files are hard links
 * when `dir` is on the data directory's file system (copies otherwise). The memtables are flushed
 * to SST files first, while writes go on; then, with writes held for a moment, the write-ahead
 * log is flushed and the checkpoint taken, so it holds every write that reached the log before
 * it. `dir` opens as a dkv data directory's `db`.
 *
 * @param dir   Borrowed; NUL-terminated path.
 * @param why   Receives a one-line reason on failure (RocksDB's text when it has one).
 * @return 0; -EEXIST (`dir` exists); DKV_ENOSPACE (no space, or the store is unwritable for lack
 *         of it); DKV_EIO (any other failure, or the store is unwritable).
 * Thread: any but an I/O loop: the memtable flush takes as long as writing up to a write buffer
 * (64 MiB) to disk.
 */
int dkv_store_checkpoint(dkv_store_t *s, const char *dir, char *why, size_t why_len);

/** RocksDB's estimate of the live data in SST files of the data column family, in bytes (the
 * memtable not included). Thread: any. */
uint64_t dkv_store_live_bytes_estimate(dkv_store_t *s);

/** RocksDB's estimate of the data column family's keys (exact after dkv_store_compact(): one
 * entry per record, tombstones included). Thread: any. */
uint64_t dkv_store_keys_estimate(dkv_store_t *s);

/* Column families, in dkv_store_stats_t.cf order. */
#define DKV_STORE_N_CFS 3u

/** RocksDB's figures for one column family (its properties; 0 when unknown). */
typedef struct dkv_store_cf_stats {
    uint64_t memtable_bytes;           /* rocksdb.cur-size-all-mem-tables */
    uint64_t sst_total_bytes;          /* rocksdb.total-sst-files-size (all versions) */
    uint64_t sst_live_bytes;           /* rocksdb.live-sst-files-size (current version) */
    uint64_t pending_compaction_bytes; /* rocksdb.estimate-pending-compaction-bytes */
    uint64_t keys_estimate;            /* rocksdb.estimate-num-keys */
    uint64_t live_versions;            /* rocksdb.num-live-versions */
    uint64_t table_readers_bytes;      /* rocksdb.estimate-table-readers-mem: index and filter
                                          blocks held outside the block cache */
} dkv_store_cf_stats_t;

/** The store's figures for the metrics page. */
typedef struct dkv_store_stats {
    uint64_t wal_syncs;  /* successful WAL buffer flushes since open (dkv_store_sync_wal) */
    uint64_t wal_bytes;  /* write-batch bytes those flushes made durable (RocksDB's WAL framing,
                            a few bytes per 32 KiB block, not included) */
    uint64_t block_cache_usage_bytes;
    uint64_t block_cache_pinned_bytes;
    uint64_t block_cache_capacity_bytes;
    uint64_t row_cache_usage_bytes;    /* 0 without a row cache */
    uint64_t row_cache_capacity_bytes; /* 0 without a row cache */
    uint64_t fs_size_bytes;  /* the data directory's filesystem (statvfs); 0 when unknown */
    uint64_t fs_avail_bytes; /* its free bytes for an unprivileged writer; 0 when unknown */
    /* The most all memtables may hold: per column family write_buffer_size x
     * max_write_buffer_number, summed. */
    uint64_t memtable_limit_bytes;
    dkv_store_cf_stats_t cf[DKV_STORE_N_CFS]; /* data, hints, digest */
} dkv_store_stats_t;

/**
 * Fills `out` (caller's storage) with the store's counters and RocksDB's properties. Takes the
 * database lock shared, like a read (never blocks behind a stream of writes for long; waits for
 * a reopen). Costs a few microseconds (21 property reads and one statvfs(2)). Thread: any.
 */
void dkv_store_stats(dkv_store_t *s, dkv_store_stats_t *out);

/** "data", "hints" or "digest": the label of column family `cf` (0..DKV_STORE_N_CFS-1). Pure. */
const char *dkv_store_cf_name(unsigned cf);

/**
 * The merge operator's core, exported for tests and fuzzing: among `n` encoded records, the index
 * of the newest one that decodes, or -1 when none decodes. Thread: any.
 */
int dkv_store_newest(const dkv_slice_t *records, int n);

#endif
