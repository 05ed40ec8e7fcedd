/*
 * dkvctl's pure logic, apart from the program so unit tests and fuzz targets reach it: key
 * percent-encoding, the endpoint list, the retry and failover policy, the splitter of a
 * `/v0/entities` response into records, the reader of a node's /metrics page, and the escaping
 * of scan output. No I/O happens here.
 *
 * DESIGN
 * libcurl does HTTP, but it hides chunk boundaries, and API.md §10 makes them the only record
 * separator (`key\nvalue` per chunk, values may hold any byte). So `scan` turns libcurl's
 * transfer decoding off (CURLOPT_HTTP_TRANSFER_DECODING = 0) and hands the raw response, header
 * lines then body, to an llhttp response parser (the server's HTTP parser), which calls back at
 * each chunk's end. Cluster views (status, ring, hints, repair) read the nodes' /metrics pages,
 * their machine-oriented output, rather than JSON: dkvctl has no JSON parser.
 */
#ifndef DKV_CTL_CTL_H
#define DKV_CTL_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include "common/buf.h"
#include "common/slice.h"

#define DKV_CTL_MAX_ENDPOINTS 64
/* A chunk is one record: key (<= 1 KiB) + '\n' + value (<= a node's --max-body-bytes, at most
 * 64 MiB). */
#define DKV_CTL_DEFAULT_MAX_RECORD_BYTES ((size_t)65 << 20)

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
 * Called once per record of a `/v0/entities` response, i.e. per HTTP chunk with data.
 * @param record  Borrowed until the callback returns; 1..max_record_bytes bytes.
 * @return 0 to go on; a negative code stops the splitter, and feed returns that code.
 */
typedef int (*dkv_ctl_record_cb)(void *arg, dkv_slice_t record);

/** Splits a raw `/v0/entities` response into records with llhttp. Fields are private. */
typedef struct dkv_ctl_records {
    llhttp_t parser;
    llhttp_settings_t settings;
    size_t max_record_bytes;
    dkv_buf_t record;     /* the current chunk's bytes */
    dkv_buf_t error_body; /* a non-200 body, its first DKV_CTL_MAX_ERROR_BODY_BYTES */
    int status;           /* the final response's status; 0 until its headers are complete */
    bool last_chunk;      /* the zero-size chunk was seen */
    bool complete;        /* the final response ended */
    int error;            /* sticky: the first error */
    size_t records;       /* records passed to cb */
    dkv_ctl_record_cb cb;
    void *arg;
} dkv_ctl_records_t;

#define DKV_CTL_MAX_ERROR_BODY_BYTES 4096

/**
 * Prepares a splitter for one response. dkvctl feeds it what libcurl hands over with transfer
 * decoding off: the status line and header lines from CURLOPT_HEADERFUNCTION (each with its CRLF,
 * the empty line last), then the body as it came, chunk framing included.
 *
 * @param max_record_bytes  A chunk declaring more is refused with DKV_ETOOBIG before any of its
 *                          bytes are buffered.
 * @param cb, arg           Run for each chunk with data of a 200 response, at the chunk's end;
 *                          never for the zero-size last chunk nor for another status's body.
 * `s` must stay where it is until dkv_ctl_records_cleanup(): the parser points into it.
 * Thread: any (the splitter is not shared).
 */
void dkv_ctl_records_init(dkv_ctl_records_t *s, size_t max_record_bytes, dkv_ctl_record_cb cb,
                          void *arg);

/**
 * Feeds the next bytes of the response, split anywhere.
 *
 * @param in  Borrowed for the call.
 * @return 0; DKV_EPROTO (malformed HTTP, a 200 that is neither chunked nor empty, bytes after the
 *         response's end); DKV_ETOOBIG (a chunk over max_record_bytes); or the callback's error.
 *         Errors are sticky: later calls return the same code.
 */
int dkv_ctl_records_feed(dkv_ctl_records_t *s, dkv_slice_t in);

/**
 * Ends the input (the connection's end of this response).
 * @return 0 when a whole response was read; DKV_EPROTO when it was cut short; or the sticky error.
 */
int dkv_ctl_records_finish(dkv_ctl_records_t *s);

/** The final response's status code: 0 until its headers were read. */
int dkv_ctl_records_status(const dkv_ctl_records_t *s);

/** A non-200 response's body (its first DKV_CTL_MAX_ERROR_BODY_BYTES), borrowed from `s`. */
dkv_slice_t dkv_ctl_records_error_body(const dkv_ctl_records_t *s);

/** Frees the splitter's buffers. */
void dkv_ctl_records_cleanup(dkv_ctl_records_t *s);

/* ---- /metrics ---- */

/** One label of a sample: both NUL-terminated, the value unescaped. */
typedef struct dkv_ctl_label {
    const char *name;
    const char *value;
} dkv_ctl_label_t;

/** One sample line: `name{labels} value`. Strings point into the page's storage. */
typedef struct dkv_ctl_sample {
    const char *name;
    const dkv_ctl_label_t *labels;
    size_t n_labels;
    double value;
} dkv_ctl_sample_t;

/** A parsed exposition page: its samples in page order, and the families of its TYPE lines. */
typedef struct dkv_ctl_metrics {
    dkv_ctl_sample_t *samples;
    size_t n_samples;
    char **families; /* names from "# TYPE name type" lines */
    size_t n_families;
    char *text;                 /* owned copy of the page, cut into the strings above */
    dkv_ctl_label_t *label_mem; /* owned: every sample's labels */
} dkv_ctl_metrics_t;

/* Limits of a page dkvctl reads: a 64-node cluster's page is a few hundred KiB. */
#define DKV_CTL_MAX_METRICS_BYTES ((size_t)32 << 20)
#define DKV_CTL_MAX_LABELS 16

/**
 * Reads a page of the Prometheus text exposition format 0.0.4 (what a node's GET /metrics
 * serves; https://prometheus.io/docs/instrumenting/exposition_formats/): lines of
 * `name[{label="value",...}] value [timestamp]`, label values with the escapes \\, \" and \n;
 * `#` lines are comments, of which only `# TYPE name type` is kept; blank lines are skipped.
 * Values are floats as Go's ParseFloat reads them (NaN, +Inf, -Inf included); a timestamp is
 * read and dropped. This is a reader of that format only, nothing else.
 *
 * @param text  Borrowed for the call; up to DKV_CTL_MAX_METRICS_BYTES.
 * @param out   Written only on success; release with dkv_ctl_metrics_cleanup().
 * @param bad_line  Written on DKV_EPROTO (may be NULL): the 1-based number of the first bad line.
 * @return 0; DKV_ETOOBIG (page too big); DKV_EPROTO (a malformed line, an unknown escape, more
 *         than DKV_CTL_MAX_LABELS labels on a sample).
 * Thread: any.
 */
int dkv_ctl_metrics_parse(dkv_slice_t text, dkv_ctl_metrics_t *out, size_t *bad_line);

/** Frees the page. Safe on a zeroed struct. */
void dkv_ctl_metrics_cleanup(dkv_ctl_metrics_t *m);

/** The value of label `name` of `s`, or NULL when it has none. Thread: any. */
const char *dkv_ctl_sample_label(const dkv_ctl_sample_t *s, const char *name);

/**
 * The first sample named `name` whose label `label` is `value` (`label` NULL: the first sample
 * of that name), or NULL. Thread: any.
 */
const dkv_ctl_sample_t *dkv_ctl_metrics_find(const dkv_ctl_metrics_t *m, const char *name,
                                             const char *label, const char *value);

/**
 * Sums every sample named `name`.
 * @return how many there were (0: `*sum` is 0). Thread: any.
 */
size_t dkv_ctl_metrics_sum(const dkv_ctl_metrics_t *m, const char *name, double *sum);

/** Whether the page declared the family `name` (a TYPE line), even without samples. */
bool dkv_ctl_metrics_has_family(const dkv_ctl_metrics_t *m, const char *name);

/**
 * Splits a `/v0/entities` record `key\nvalue` at its first LF.
 * @return 0 and both slices (pointing into `rec`); DKV_EPROTO when there is no LF or the key is
 *         empty. Thread: any.
 */
int dkv_ctl_split_record(dkv_slice_t rec, dkv_slice_t *key, dkv_slice_t *value);

#endif
