/*
 * Router: turns a parsed HTTP request (method, URL, body) into a dkv operation and its response,
 * following ../shared/API.md: path match, method check (405) before parameter validation (400),
 * percent-decoding, ack/from defaults and limits, and the error-to-status table.
 * It knows nothing of sockets: responses go back through a callback, and range scans are streamed
 * through a pull interface that the HTTP layer drives under socket backpressure.
 */
#ifndef DKV_ROUTER_ROUTER_H
#define DKV_ROUTER_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/slice.h"
#include "coord/coord.h"
#include "metrics/metrics.h"
#include "repair/antientropy.h"
#include "repair/rebuild.h"
#include "store/store.h"

enum dkv_method {
    DKV_METHOD_GET,
    DKV_METHOD_PUT,
    DKV_METHOD_DELETE,
    DKV_METHOD_POST, /* only the admin endpoints take it */
    DKV_METHOD_OTHER
};

typedef struct dkv_request {
    enum dkv_method method;
    dkv_slice_t url;  /* origin-form target: path [ "?" query ], as received */
    dkv_slice_t body; /* borrowed until the reply callback has run */
} dkv_request_t;

/** Receives the chunks of a streamed body; implemented by the HTTP layer. */
typedef struct dkv_chunk_sink {
    /** Appends one chunk whose payload is the concatenation of `n` parts (total > 0 bytes). */
    void (*write)(struct dkv_chunk_sink *sink, const dkv_slice_t *parts, size_t n);
    size_t buffered_bytes; /* bytes appended since the sink was handed to fill() */
} dkv_chunk_sink_t;

/** A chunked response body produced on demand. */
typedef struct dkv_stream {
    /**
     * Writes chunks to `sink` until sink->buffered_bytes >= budget_bytes or the body ends.
     * @return 0 more to come; 1 the body is complete; <0 a DKV_E* error (abort the connection).
     */
    int (*fill)(struct dkv_stream *s, dkv_chunk_sink_t *sink, size_t budget_bytes);
    /** Releases the stream (called once, after the end, an error, or a closed connection). */
    void (*free)(struct dkv_stream *s);
} dkv_stream_t;

typedef struct dkv_response {
    int status;
    const char *content_type;  /* static string, or NULL for none */
    const char *extra_headers; /* static "Name: value\r\n" lines, or NULL */
    dkv_slice_t body;          /* ignored when stream != NULL */
    dkv_owned_t body_owner;    /* released by the HTTP layer after `body` is written */
    dkv_stream_t *stream;      /* chunked body; ownership passes to the HTTP layer */
    /* A 201/202 that acknowledges a write: sent only if the write-ahead-log flush before the
     * write(2) succeeds (http.h before_flush); otherwise it becomes 507 Insufficient Storage. */
    bool acknowledges_write;
    /* With acknowledges_write: the store write token (store/store.h) of this thread's local
     * write it rests on; then that write's own outcome decides (http.h write_outcome), not the
     * flush's, which may have been told about another write's failure or missed this one's. 0:
     * the flush's result decides. */
    uint64_t write_token;
    /* The operation's latency histogram (metrics/metrics.h enum dkv_metrics_op); 0 = none. */
    unsigned char op;
} dkv_response_t;

/** Receives the response; the callee takes ownership of resp->body_owner and resp->stream. */
typedef void (*dkv_router_reply_cb)(void *arg, dkv_response_t *resp);

typedef struct dkv_router dkv_router_t;

typedef struct dkv_router_env {
    dkv_coord_t *coord;       /* this I/O thread's coordinator */
    dkv_store_t *store;       /* for the node-local range */
    const dkv_ring_t *ring;   /* cluster size N and URLs */
    unsigned replication_factor; /* default `from`: 1..N; 0 means N */
    const char *self_url;     /* borrowed */
    uint64_t start_ms;        /* process start, wall clock, for uptime */
    dkv_rpc_shared_t *rpc_shared; /* peer views for the verbose status */
    unsigned n_loops;              /* I/O threads publishing into rpc_shared */
    uint32_t self_idx;
    uv_loop_t *loop;               /* this I/O thread's loop (timers of waiting admin calls) */
    dkv_hints_t *hints;            /* NULL: hinted handoff is off */
    dkv_rebuild_t *rebuild;        /* NULL for a cluster of one */
    dkv_ae_t *ae;                  /* anti-entropy; NULL for a cluster of one */
    dkv_identity_t *identity;      /* node id and readiness; NULL in tests */
    dkv_replica_t *replica;        /* clock refusals for the status; NULL in tests */
    dkv_hlc_t *hlc;                /* the clock's persisted bound for the status; may be NULL */
    uint64_t max_clock_offset_ms;
    dkv_coord_stats_t *coord_stats; /* convergence counters, may be NULL */
    const char *backup_dir;        /* checkpoints go under it; NULL: the endpoint answers 403 */
    bool read_repair;
    dkv_metrics_t *metrics;        /* every I/O loop's counters for GET /metrics; NULL: only
                                      the node-wide figures are shown */
    dkv_rpc_client_t *rpc_client;  /* this loop's RPC client: GET /v0/ready reaches out to
                                      peers through it; NULL for a cluster of one */
    unsigned loop_idx;             /* this loop's slot in rpc_shared->view (its client's
                                      loop_idx) */
} dkv_router_env_t;

/** Creates a router for one I/O thread. @param env copied, pointers borrowed. @return 0. */
int dkv_router_new(const dkv_router_env_t *env, dkv_router_t **out);
/**
 * Stops the router's waiting admin calls (a hints sync answers 503 at once) and refuses new
 * ones; call when the node starts to drain, so no call holds the drain up.
 * Thread: the router's I/O thread.
 */
void dkv_router_stop(dkv_router_t *r);

/** Frees a router; dkv_router_stop() must have run if the loop ran admin calls. */
void dkv_router_free(dkv_router_t *r);

/**
 * Handles one request. `cb` runs exactly once, possibly before this returns.
 * Thread: the router's I/O thread.
 */
void dkv_router_handle(dkv_router_t *r, const dkv_request_t *req, dkv_router_reply_cb cb,
                       void *arg);

/* ---- Pure helpers, exported for the unit tests ---- */

/**
 * Percent-decodes `in` (%XX with hex digits in either case; other bytes, '+' included, are kept).
 * @return 0 with the decoded bytes appended to `out`; DKV_EINVAL on a bad or truncated escape
 *         (then `out` may hold a partial result). Thread: any.
 */
int dkv_percent_decode(dkv_slice_t in, dkv_buf_t *out);

/** The decoded query parameters the API knows; unknown ones are ignored. */
typedef struct dkv_query {
    bool has_id, has_start, has_end, has_ack, has_from, has_replicas, verbose, has_timeout_ms;
    bool has_dir;
    dkv_buf_t id, start, end, ack, from, replicas, timeout_ms; /* decoded values, owned */
    dkv_buf_t dir;                                             /* checkpoint name, owned */
} dkv_query_t;

/**
 * Splits `query` (the part after the first '?') on '&' and each parameter at its first '=',
 * percent-decodes names and values, and matches names exactly. The first occurrence of a name
 * wins. @param q caller's storage; release with dkv_query_cleanup() whatever the result.
 * @return 0; DKV_EINVAL on a bad percent-escape anywhere. Thread: any.
 */
int dkv_query_parse(dkv_slice_t query, dkv_query_t *q);
void dkv_query_cleanup(dkv_query_t *q);

/**
 * Resolves ack/from for a cluster of `n` nodes (API.md §4, legacy replicas=A/F of §12 when neither
 * ack nor from is given): from defaults to `rf` (--replication-factor, 1..n; n unless set), ack
 * to from/2+1 of the effective from; a given from may be anything in 1..n.
 * @return 0 with *ack and *from set; DKV_EINVAL with a static message in *why. Thread: any.
 */
int dkv_query_replication(const dkv_query_t *q, unsigned n, unsigned rf, unsigned *ack,
                          unsigned *from, const char **why);

/** HTTP status for an operation outcome (0, DKV_ENOTFOUND, DKV_EQUORUM, ...). Thread: any. */
int dkv_router_status_of(int err, bool is_get, bool is_delete);

#endif
