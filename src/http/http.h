/*
 * HTTP/1.1 server of one I/O thread: libuv TCP + llhttp parsing, keep-alive and pipelining (one
 * request in progress per connection, responses in order), request limits (431, 413, 408),
 * idle and slowloris timeouts, Content-Length and chunked response framing, streaming bodies
 * under socket backpressure, and graceful drain on shutdown. Requests go to router/.
 * A connection whose first byte is `foreign_first_byte` is handed over to another protocol
 * (the inter-node RPC shares the public port).
 */
#ifndef DKV_HTTP_HTTP_H
#define DKV_HTTP_HTTP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/buf.h"
#include "common/slice.h"
#include "metrics/metrics.h"
#include "router/router.h"

typedef struct dkv_http_server dkv_http_server_t;

/**
 * Takes over a connection whose first byte marked it as another protocol. `tcp` is heap-allocated
 * (malloc) and reading has been stopped; the callee owns it (uv_close it, then free() it) and gets
 * the bytes read so far in `first` (borrowed for the call).
 */
typedef void (*dkv_http_foreign_cb)(void *arg, uv_tcp_t *tcp, dkv_slice_t first);

typedef struct dkv_http_opts {
    size_t max_body_bytes;       /* 413 past it */
    size_t max_header_bytes;     /* request line + headers; 431 past it */
    uint64_t idle_timeout_ms;    /* keep-alive connection with nothing in progress */
    uint64_t first_byte_timeout_ms; /* a new connection that has sent nothing yet; 0 = idle's */
    uint64_t request_timeout_ms; /* a started request must be complete within this; else 408 */
    unsigned max_inflight;       /* requests dispatched and not answered; 503 past it */
    unsigned max_connections;    /* across all threads, counted in `conn_count` */
    _Atomic unsigned *conn_count; /* shared by every thread's server */
    /* Runs once per loop iteration before responses are written: makes acknowledged writes
     * durable (the write-ahead log flush). Non-zero means they are not: every waiting response
     * marked acknowledges_write is replaced by 507 Insufficient Storage (the others are sent as
     * they are). May be NULL. */
    int (*before_flush)(void *arg);
    void *before_flush_arg;
    /* After before_flush: the outcome of the local write a response names in write_token
     * (store/store.h dkv_store_write_outcome(): 0 stored, else not); its acknowledgement becomes
     * 507 unless it is 0, whatever before_flush returned. May be NULL (before_flush decides). */
    int (*write_outcome)(uint64_t token);
    int foreign_first_byte;      /* -1 for none */
    /* Connections admitted past max_connections on the condition that their first byte is
     * `foreign_first_byte` (any other is closed), so that clients at their cap never lock out
     * the other protocol (inter-node RPC), which has its own cap; 0 = none. */
    unsigned foreign_reserve;
    dkv_http_foreign_cb foreign_cb;
    void *foreign_arg;
    /* This loop's counters (metrics/metrics.h): requests by method and status, counted when the
     * response is final (a write acknowledgement after its WAL flush), latency by operation
     * (dkv_response_t.op) from the complete request to the response (a stream: to its last
     * chunk), in-flight requests, overload 503s. Borrowed; NULL = not counted. */
    dkv_metrics_loop_t *metrics;
} dkv_http_opts_t;

/**
 * Starts listening on host:port on `loop`. With `reuseport` (Linux), several servers on different
 * loops may listen on the same address and the kernel spreads connections among them.
 *
 * @param opts    Copied.
 * @param router  Borrowed; must outlive the server.
 * @return 0; -errno from bind/listen (e.g. -EADDRINUSE), DKV_EINVAL for a bad host.
 * Thread: the loop's thread.
 */
int dkv_http_server_start(uv_loop_t *loop, const char *host, uint16_t port, bool reuseport,
                          const dkv_http_opts_t *opts, dkv_router_t *router,
                          dkv_http_server_t **out);

/**
 * Begins a graceful drain: stops accepting, closes idle connections at once, and closes every
 * other connection after its current response (which says Connection: close). `drained_cb` runs
 * once no connection is left (possibly before this returns).
 * Thread: the server's loop thread.
 */
void dkv_http_server_stop(dkv_http_server_t *s, void (*drained_cb)(void *arg), void *arg);

/** Open client connections of this server. Thread: the server's loop thread. */
size_t dkv_http_server_connections(const dkv_http_server_t *s);

/**
 * Closes every connection now (requests in flight are answered into the void) and the listener,
 * and frees the server once all its handles are closed; then `cb` runs (may be NULL).
 * Thread: the server's loop thread.
 */
void dkv_http_server_close(dkv_http_server_t *s, void (*cb)(void *arg), void *arg);

/**
 * Checks that nobody else listens on host:port, so that SO_REUSEPORT listeners cannot silently
 * share a port with another process. @return 0; -EADDRINUSE; -errno. Thread: any.
 */
int dkv_http_probe_port(const char *host, uint16_t port);

/**
 * Runs raw request bytes through a detached connection (no socket) and appends everything the
 * server would send to `out`: the request path of the fuzz target and the unit tests. Requests
 * must complete synchronously (N = 1 router).
 * Thread: any thread that owns `loop`.
 */
void dkv_http_feed_detached(uv_loop_t *loop, const dkv_http_opts_t *opts, dkv_router_t *router,
                            dkv_slice_t in, dkv_buf_t *out);

#endif
