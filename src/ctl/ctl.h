/*
 * dkvctl's pure logic, apart from the program so unit tests reach it: key percent-encoding, the
 * endpoint list, the retry and failover policy, the decoder that splits a raw chunked
 * `/v0/entities` body into records, and the escaping of scan output. No I/O happens here.
 *
 * DESIGN
 * libcurl does HTTP, but it hides chunk boundaries, and API.md §10 makes them the only record
 * separator (`key\nvalue` per chunk, values may hold any byte). So `scan` turns libcurl's
 * transfer decoding off (CURLOPT_HTTP_TRANSFER_DECODING = 0): libcurl still parses the status
 * line and headers and finds the end of the body, and hands over the chunked framing as it
 * arrived; dkv_ctl_chunks_feed() splits that framing (RFC 9112 §7.1) and nothing else.
 */
#ifndef DKV_CTL_CTL_H
#define DKV_CTL_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/slice.h"

#define DKV_CTL_MAX_ENDPOINTS 64
/* A chunk is one record: key (<= 1 KiB) + '\n' + value (<= a node's --max-body-bytes). */
#define DKV_CTL_DEFAULT_MAX_CHUNK_BYTES (256u << 20)

/**
 * Appends `in` percent-encoded for a query value: every byte outside RFC 3986's unreserved set
 * (ALPHA DIGIT - . _ ~) becomes %XX with upper-case hex, so ' ', '+', '/', '%', '&', '=', NUL and
 * non-ASCII bytes all survive the node's percent-decoding unchanged.
 *
 * @param in   Borrowed; any bytes, any length.
 * @param out  Appended to; grows (aborts on allocation failure).
 * Thread: any.
 */
void dkv_ctl_pct_encode(dkv_slice_t in, dkv_buf_t *out);

/**
 * Appends `in` escaped for one field of a `scan` output line: '\\' -> "\\\\", TAB -> "\\t",
 * LF -> "\\n", CR -> "\\r", other bytes below 0x20 and 0x7F -> "\\xHH" (lower-case hex); every
 * other byte, UTF-8 included, is copied. The result holds no TAB or LF, and the escaping is
 * reversible.
 *
 * @param in   Borrowed; any bytes.
 * @param out  Appended to.
 * Thread: any.
 */
void dkv_ctl_escape(dkv_slice_t in, dkv_buf_t *out);

/** A parsed endpoint list: `urls[0..n-1]`, each owned (free with dkv_ctl_endpoints_cleanup). */
typedef struct dkv_ctl_endpoints {
    char **urls;
    size_t n;
} dkv_ctl_endpoints_t;

/**
 * Parses a comma-separated endpoint list such as "http://a:8080, b:8081/". Surrounding spaces
 * and trailing '/' are dropped; an entry without "://" gets "http://" in front.
 *
 * @param csv  Borrowed, NUL-terminated.
 * @param out  Written only on success; release with dkv_ctl_endpoints_cleanup().
 * @return 0; DKV_EINVAL when the list has no entry, an empty entry (",,"), or more than
 *         DKV_CTL_MAX_ENDPOINTS entries.
 * Thread: any.
 */
int dkv_ctl_endpoints_parse(const char *csv, dkv_ctl_endpoints_t *out);

/** Frees the URLs and empties `e`. Safe on an emptied or zeroed list. */
void dkv_ctl_endpoints_cleanup(dkv_ctl_endpoints_t *e);

/** What one attempt on one endpoint came to. */
typedef enum dkv_ctl_outcome {
    DKV_CTL_ANSWERED, /* a final answer (any status but 503): stop */
    DKV_CTL_DOWN,     /* no answer: refused, unresolvable, timed out, connection lost */
    DKV_CTL_BUSY,     /* 503: the node is up but overloaded or starting */
} dkv_ctl_outcome_t;

/**
 * Retry and failover policy for one request. Any node serves any key, so an endpoint that does
 * not answer is skipped for the next one (each is tried at most once for being down); a 503 is
 * retried on the same endpoint after an exponential backoff (base, 2 base, 4 base, ... capped at
 * max_backoff_ms), at most max_busy_retries times.
 */
typedef struct dkv_ctl_retry {
    size_t n_endpoints;
    size_t endpoint; /* the endpoint to try now, 0..n_endpoints-1 */
    size_t down;     /* endpoints found down so far */
    unsigned busy;   /* 503s so far */
    unsigned max_busy_retries;
    unsigned base_backoff_ms;
    unsigned max_backoff_ms;
} dkv_ctl_retry_t;

/**
 * Starts a policy at endpoint 0.
 *
 * @param n_endpoints  >= 1.
 * Thread: any (the struct is not shared).
 */
void dkv_ctl_retry_init(dkv_ctl_retry_t *r, size_t n_endpoints, unsigned max_busy_retries,
                        unsigned base_backoff_ms, unsigned max_backoff_ms);

/**
 * Records the outcome of the attempt on `r->endpoint` and says whether to try again.
 *
 * @param sleep_ms  Written when the answer is true: how long to wait first (0 for a failover).
 * @return true: try `r->endpoint` (now possibly another one) after `*sleep_ms`; false: stop, the
 *         outcome is final (an answer, every endpoint down, or the 503 retries used up).
 */
bool dkv_ctl_retry_next(dkv_ctl_retry_t *r, dkv_ctl_outcome_t outcome, unsigned *sleep_ms);

/**
 * Called once per complete chunk, i.e. per `/v0/entities` record.
 * @param chunk  Borrowed until the callback returns; 1..max_chunk_bytes bytes.
 * @return 0 to go on; a negative code stops the decoder, and feed returns that code.
 */
typedef int (*dkv_ctl_chunk_cb)(void *arg, dkv_slice_t chunk);

/** Incremental decoder of a chunked body's framing. Fields are private. */
typedef struct dkv_ctl_chunks {
    int state;
    uint64_t size; /* current chunk's declared size */
    size_t max_chunk_bytes;
    dkv_buf_t line; /* a size or trailer line being collected */
    dkv_buf_t data; /* the current chunk's payload being collected */
    int error;      /* sticky: the first error */
    dkv_ctl_chunk_cb cb;
    void *arg;
} dkv_ctl_chunks_t;

/**
 * Prepares a decoder.
 *
 * @param max_chunk_bytes  Larger declared chunks are refused with DKV_ETOOBIG before any of their
 *                         bytes are buffered.
 * @param cb, arg          Run for each chunk with data; never for the zero-length last chunk.
 */
void dkv_ctl_chunks_init(dkv_ctl_chunks_t *c, size_t max_chunk_bytes, dkv_ctl_chunk_cb cb,
                         void *arg);

/**
 * Feeds the next bytes of the raw body, split anywhere.
 *
 * @param in  Borrowed for the call.
 * @return 0; DKV_EPROTO (bad size line, missing CRLF after the data, an over-long line, bytes
 *         after the end); DKV_ETOOBIG (a chunk over max_chunk_bytes); or the callback's error.
 *         Errors are sticky: later calls return the same code.
 */
int dkv_ctl_chunks_feed(dkv_ctl_chunks_t *c, dkv_slice_t in);

/** True once the last chunk and the trailer section were read, with no error. */
bool dkv_ctl_chunks_done(const dkv_ctl_chunks_t *c);

/** Frees the decoder's buffers. */
void dkv_ctl_chunks_cleanup(dkv_ctl_chunks_t *c);

/**
 * Splits a `/v0/entities` record `key\nvalue` at its first LF.
 * @return 0 and both slices (pointing into `rec`); DKV_EPROTO when there is no LF or the key is
 *         empty. Thread: any.
 */
int dkv_ctl_split_record(dkv_slice_t rec, dkv_slice_t *key, dkv_slice_t *value);

#endif
