/*
 * HTTP/1.1 server on libuv + llhttp.
 *
 * DESIGN
 * - One request in progress per connection. llhttp is paused (HPE_PAUSED from
 *   on_message_complete) after each request; bytes after it wait in `rbuf` until the response is
 *   queued, so pipelined responses leave in request order without a queue of responses.
 * - Responses are appended to `out` and flushed once per batch of input (one write(2) for many
 *   pipelined responses); uv_try_write first, the rest through uv_write.
 * - Backpressure: while the socket's write queue is above HIGH_WATER_BYTES no further request is
 *   parsed and streams stop producing; the write callback resumes them.
 * - Timeouts come from one sweep timer per loop, not a timer per connection.
 * - After an error response that closes the connection, the write side is shut down and input is
 *   drained for a while (lingering close), so the client reads the response instead of a reset.
 */
#include "http/http.h"

#include "common/err.h"
#include "common/log.h"
#include "common/uvwrite.h"

#include <errno.h>
#include <inttypes.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF_BYTES (64u << 10)
#define HIGH_WATER_BYTES (1u << 20)
#define STREAM_BATCH_BYTES (64u << 10)
#define LINGER_MS 2000u

typedef struct conn conn_t;

/* A response in conn.out that acknowledges a write (dkv_response_t.acknowledges_write). */
typedef struct ack_span {
    size_t off;
    size_t len;
    bool close; /* it said Connection: close */
    uint8_t method; /* for the metrics, counted once the flush decided 201/202 or 507 */
    uint8_t status_idx;
    bool failed;    /* conn_settle_acks(): becomes 507 */
    uint64_t token; /* dkv_response_t.write_token */
} ack_span_t;

struct dkv_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t sweep;
    dkv_http_opts_t opts;
    llhttp_settings_t settings;
    dkv_router_t *router;
    conn_t *conns;      /* doubly linked list of open connections */
    conn_t *flush_list; /* connections with output to write at the end of this iteration */
    uv_check_t flush_check;
    size_t n_conns;
    unsigned inflight;
    uint64_t abandoned; /* writes not executed: the client had closed first (499) */
    bool listening;
    bool stopping;
    bool closing;
    int open_handles;
    void (*drained_cb)(void *arg);
    void *drained_arg;
    void (*close_cb)(void *arg);
    void *close_arg;
    dkv_buf_t *capture; /* detached mode: where output goes */
    char readbuf[READ_BUF_BYTES];
};

typedef struct chunk_sink {
    dkv_chunk_sink_t base;
    conn_t *c;
} chunk_sink_t;

struct conn {
    dkv_http_server_t *srv;
    conn_t *prev;
    conn_t *next;
    uv_tcp_t *tcp; /* heap; NULL once closed or in detached mode */
    llhttp_t parser;
    dkv_buf_t rbuf; /* input not parsed yet */
    dkv_buf_t url;
    dkv_buf_t body;
    dkv_buf_t out;    /* output not handed to libuv yet */
    ack_span_t *acks; /* write acknowledgements in `out`, in order */
    size_t n_acks;
    size_t cap_acks;
    size_t header_bytes;
    char hdr_name[8];
    size_t hdr_name_len;
    char hdr_value[16];
    size_t hdr_value_len;
    bool expect_continue;
    const uint8_t *exec_base; /* start of the bytes given to the current llhttp_execute() */
    uint8_t last_nonws;       /* the last byte before exec_base other than SP/HT */
    int err_status; /* set by a parser callback that rejects the request */
    enum dkv_method method;
    uint8_t metric_method; /* enum dkv_metrics_method of the current request */
    uint8_t op;            /* streamed response: its enum dkv_metrics_op, observed at the end */
    uint64_t dispatch_ns;  /* uv_hrtime() at dispatch, when counted */
    bool in_message;
    bool busy;        /* a request was dispatched and its response is not complete */
    bool dispatching; /* inside dkv_router_handle() */
    bool keep_alive;
    bool is_head; /* HEAD: the response carries headers only (RFC 9110 §9.3.2) */
    bool http10;  /* an HTTP/1.0 request: no chunked response (RFC 9112 §6.1), close-delimited */
    bool close_after; /* close once `out` and the write queue are flushed */
    bool lingering;
    bool closing;
    bool reading;
    bool sniffed;
    bool counted;         /* counted in opts.conn_count */
    bool foreign_only;    /* admitted past max_connections: only a foreign first byte stays */
    bool flush_scheduled; /* on the server's flush_list (holds a reference) */
    conn_t *flush_next;
    unsigned refs;
    dkv_stream_t *stream;
    chunk_sink_t sink;
    uint64_t activity_ms;
    uint64_t message_start_ms;
    uint64_t linger_start_ms;
};


static void conn_process(conn_t *c, const uint8_t *data, size_t len);
static void conn_flush(conn_t *c);
static void conn_flush_now(conn_t *c);
static void conn_maybe_finish(conn_t *c);
static void conn_close(conn_t *c);
static void conn_resume(conn_t *c);
static void stream_pump(conn_t *c);
static void server_maybe_done(dkv_http_server_t *s);

static void on_flush_check(uv_check_t *h);

static uint64_t now_ms(const dkv_http_server_t *s)
{
    return uv_now(s->loop);
}

/* ---- llhttp callbacks ---- */

static int too_big_headers(conn_t *c, size_t add)
{
    c->header_bytes += add;
    if (c->header_bytes > c->srv->opts.max_header_bytes) {
        c->err_status = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    c->in_message = true;
    c->message_start_ms = now_ms(c->srv);
    c->url.len = 0;
    c->body.len = 0;
    c->header_bytes = 0;
    c->hdr_name_len = 0;
    c->hdr_value_len = 0;
    c->expect_continue = false;
    c->err_status = 0;
    c->is_head = false;
    c->metric_method = DKV_METRICS_OTHER_METHOD;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (too_big_headers(c, len) != 0) {
        return -1;
    }
    dkv_buf_append(&c->url, at, len);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (too_big_headers(c, len + 4) != 0) {
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        if (c->hdr_name_len < sizeof(c->hdr_name)) {
            char ch = at[i];
            c->hdr_name[c->hdr_name_len] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
        c->hdr_name_len++;
    }
    return 0;
}

static bool hdr_name_is(const conn_t *c, const char *name)
{
    size_t n = strlen(name);
    return c->hdr_name_len == n && memcmp(c->hdr_name, name, n) == 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (too_big_headers(c, len) != 0) {
        return -1;
    }
    /* obs-fold (a line that starts with SP or HT continues the previous header's value): llhttp
     * hands the continuation over as more value bytes, so a folded Content-Length or
     * Transfer-Encoding would be read as one value. RFC 9112 §5.2 allows rejecting it with 400:
     * a value whose bytes follow a line feed and only whitespace is a fold. */
    const uint8_t *q = (const uint8_t *)at;
    while (q > c->exec_base && (q[-1] == ' ' || q[-1] == '\t')) {
        q--;
    }
    uint8_t before = q > c->exec_base ? q[-1] : c->last_nonws;
    if (before == '\n') {
        return -1;
    }
    if (hdr_name_is(c, "expect")) {
        for (size_t i = 0; i < len; i++) {
            if (c->hdr_value_len < sizeof(c->hdr_value)) {
                char ch = at[i];
                c->hdr_value[c->hdr_value_len] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
            }
            c->hdr_value_len++;
        }
    }
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    if (hdr_name_is(c, "expect") && c->hdr_value_len == 12 &&
        memcmp(c->hdr_value, "100-continue", 12) == 0) {
        c->expect_continue = true;
    }
    c->hdr_name_len = 0;
    c->hdr_value_len = 0;
    return 0;
}

static enum dkv_method map_method(uint8_t m)
{
    switch (m) {
    case HTTP_GET:
        return DKV_METHOD_GET;
    case HTTP_PUT:
        return DKV_METHOD_PUT;
    case HTTP_DELETE:
        return DKV_METHOD_DELETE;
    case HTTP_HEAD:
        return DKV_METHOD_GET; /* HEAD is allowed wherever GET is; the body is left out */
    case HTTP_POST:
        return DKV_METHOD_POST;
    default:
        return DKV_METHOD_OTHER;
    }
}

static uint8_t metric_method_of(uint8_t m)
{
    switch (m) {
    case HTTP_GET:
        return DKV_METRICS_GET;
    case HTTP_HEAD:
        return DKV_METRICS_HEAD;
    case HTTP_PUT:
        return DKV_METRICS_PUT;
    case HTTP_DELETE:
        return DKV_METRICS_DELETE;
    case HTTP_POST:
        return DKV_METRICS_POST;
    default:
        return DKV_METRICS_OTHER_METHOD;
    }
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    c->method = map_method(p->method);
    c->metric_method = metric_method_of(p->method);
    c->is_head = p->method == HTTP_HEAD;
    if (p->http_major != 1 || p->http_minor > 1) {
        c->err_status = 505; /* only HTTP/1.0 and HTTP/1.1 are spoken here */
        return -1;
    }
    c->http10 = p->http_minor == 0;
    p->upgrade = 0; /* dkv never switches protocols (RFC 9110 §7.8): keep parsing HTTP/1.1 */
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->srv->opts.max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    if (c->expect_continue) {
        dkv_buf_append_str(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
        conn_flush(c);
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (c->body.len + len > c->srv->opts.max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    dkv_buf_append(&c->body, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    c->in_message = false;
    c->keep_alive = llhttp_should_keep_alive(p) != 0;
    return HPE_PAUSED;
}

/* ---- response framing ---- */

static const char *reason_of(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 505:
        return "HTTP Version Not Supported";
    case 507:
        return "Insufficient Storage";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Not Enough Replicas";
    default:
        return "Unknown";
    }
}

static void append_uint(dkv_buf_t *b, size_t v)
{
    char digits[24];
    size_t n = 0;
    do {
        digits[sizeof(digits) - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    dkv_buf_append(b, digits + sizeof(digits) - n, n);
}

static void write_head(dkv_buf_t *o, const conn_t *c, const dkv_response_t *resp, bool close)
{
    dkv_buf_reserve(o, 256 + resp->body.len);
    dkv_buf_append_str(o, "HTTP/1.1 ");
    append_uint(o, (size_t)resp->status);
    dkv_buf_append(o, " ", 1);
    dkv_buf_append_str(o, reason_of(resp->status));
    dkv_buf_append(o, "\r\n", 2);
    if (resp->content_type != NULL) {
        dkv_buf_append_str(o, "Content-Type: ");
        dkv_buf_append_str(o, resp->content_type);
        dkv_buf_append(o, "\r\n", 2);
    }
    if (resp->extra_headers != NULL) {
        dkv_buf_append_str(o, resp->extra_headers);
    }
    if (resp->stream != NULL && c->http10) {
        close = true; /* HTTP/1.0 has no chunked coding: the body ends when the connection does */
    } else if (resp->stream != NULL) {
        dkv_buf_append_str(o, "Transfer-Encoding: chunked\r\n");
    } else {
        dkv_buf_append_str(o, "Content-Length: ");
        append_uint(o, resp->body.len);
        dkv_buf_append(o, "\r\n", 2);
    }
    if (close) {
        dkv_buf_append_str(o, "Connection: close\r\n");
    }
    dkv_buf_append(o, "\r\n", 2);
}

static void count_response(const conn_t *c, unsigned method, unsigned status_idx)
{
    dkv_metrics_inc(&c->srv->opts.metrics->http_requests[method][status_idx]);
}

/* Appends a complete response; closes the connection after it when asked or required. */
static void conn_respond(conn_t *c, const dkv_response_t *resp, bool force_close)
{
    bool close = force_close || !c->keep_alive || c->srv->stopping ||
                 (resp->stream != NULL && c->http10);
    size_t start = c->out.len;
    write_head(&c->out, c, resp, close);
    if (resp->stream == NULL && !c->is_head) {
        dkv_buf_append(&c->out, resp->body.ptr, resp->body.len);
    }
    if (close) {
        c->close_after = true;
    }
    if (resp->acknowledges_write) {
        if (c->n_acks == c->cap_acks) {
            c->cap_acks = c->cap_acks ? 2 * c->cap_acks : 4;
            c->acks = dkv_xrealloc(c->acks, c->cap_acks * sizeof(*c->acks));
        }
        c->acks[c->n_acks++] =
            (ack_span_t){.off = start,
                         .len = c->out.len - start,
                         .close = close,
                         .method = c->metric_method,
                         .status_idx = (uint8_t)dkv_metrics_status_index(resp->status),
                         .token = resp->write_token};
    } else if (c->srv->opts.metrics != NULL) {
        count_response(c, c->metric_method, dkv_metrics_status_index(resp->status));
    }
}

/*
 * After the write-ahead-log flush (`durable`: before_flush succeeded): every write
 * acknowledgement waiting in `out` whose write is not stored becomes 507 Insufficient Storage
 * (same framing, same Connection: close); the other responses stay. One that names its local
 * write (write_token) is judged by that write's outcome, which a failed sync of this thread
 * decided even if it was another flush's (opts.write_outcome); the others by the flush.
 */
static void conn_settle_acks(conn_t *c, bool durable)
{
    int (*outcome)(uint64_t) = c->srv->opts.write_outcome;
    size_t n_failed = 0;
    for (size_t i = 0; i < c->n_acks; i++) {
        ack_span_t *a = &c->acks[i];
        a->failed = a->token != 0 && outcome != NULL ? outcome(a->token) != 0 : !durable;
        n_failed += a->failed ? 1u : 0u;
    }
    if (n_failed == 0) {
        return;
    }
    static const char text[] = "Insufficient Storage: the write could not be made durable\n";
    dkv_response_t resp = {.status = 507,
                           .content_type = "text/plain; charset=utf-8",
                           .body = dkv_slice(text, sizeof(text) - 1)};
    dkv_buf_t out;
    dkv_buf_init(&out);
    size_t pos = 0;
    size_t kept = 0;
    for (size_t i = 0; i < c->n_acks; i++) {
        ack_span_t a = c->acks[i];
        dkv_buf_append(&out, c->out.data + pos, a.off - pos);
        pos = a.off + a.len;
        if (!a.failed) {
            a.off = out.len; /* still counted as itself by conn_flush_now() */
            dkv_buf_append(&out, c->out.data + (pos - a.len), a.len);
            c->acks[kept++] = a;
            continue;
        }
        write_head(&out, c, &resp, a.close);
        dkv_buf_append(&out, resp.body.ptr, resp.body.len);
        if (c->srv->opts.metrics != NULL) {
            count_response(c, a.method, dkv_metrics_status_index(507));
            dkv_metrics_inc(&c->srv->opts.metrics->wal_flush_failures);
        }
    }
    dkv_buf_append(&out, c->out.data + pos, c->out.len - pos);
    dkv_buf_cleanup(&c->out);
    c->out = out;
    c->n_acks = kept;
}

static void respond_error(conn_t *c, int status, const char *text, const char *extra)
{
    dkv_response_t resp = {.status = status,
                           .content_type = "text/plain; charset=utf-8",
                           .extra_headers = extra,
                           .body = dkv_slice_str(text)};
    conn_respond(c, &resp, true);
}

static void sink_write(dkv_chunk_sink_t *base, const dkv_slice_t *parts, size_t n)
{
    chunk_sink_t *sink = (chunk_sink_t *)base;
    conn_t *c = sink->c;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += parts[i].len;
    }
    size_t before = c->out.len;
    dkv_buf_reserve(&c->out, total + 24);
    if (!c->http10) {
        dkv_buf_printf(&c->out, "%zx\r\n", total);
    }
    for (size_t i = 0; i < n; i++) {
        dkv_buf_append(&c->out, parts[i].ptr, parts[i].len);
    }
    if (!c->http10) {
        dkv_buf_append(&c->out, "\r\n", 2);
    }
    base->buffered_bytes += c->out.len - before;
}

/* ---- connection lifecycle ---- */

static void conn_unref(conn_t *c)
{
    if (--c->refs > 0) {
        return;
    }
    dkv_http_server_t *s = c->srv;
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else if (s->conns == c) {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    s->n_conns--;
    if (c->counted) {
        atomic_fetch_sub(s->opts.conn_count, 1);
    }
    dkv_buf_cleanup(&c->rbuf);
    dkv_buf_cleanup(&c->url);
    dkv_buf_cleanup(&c->body);
    dkv_buf_cleanup(&c->out);
    free(c->acks);
    free(c);
    server_maybe_done(s);
}

static void on_tcp_closed(uv_handle_t *h)
{
    conn_t *c = h->data;
    free(h);
    if (c != NULL) {
        conn_unref(c);
    }
}

static void conn_close(conn_t *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    if (c->stream != NULL) {
        c->stream->free(c->stream);
        c->stream = NULL;
    }
    if (c->tcp != NULL) {
        uv_tcp_t *tcp = c->tcp;
        c->tcp = NULL;
        uv_close((uv_handle_t *)tcp, on_tcp_closed);
    } else {
        conn_unref(c);
    }
}

static conn_t *conn_new(dkv_http_server_t *s, uv_tcp_t *tcp)
{
    conn_t *c = dkv_xcalloc(1, sizeof(*c));
    c->srv = s;
    c->tcp = tcp;
    c->refs = 1;
    llhttp_init(&c->parser, HTTP_REQUEST, &s->settings);
    c->parser.data = c;
    c->sink.base.write = sink_write;
    c->sink.c = c;
    c->metric_method = DKV_METRICS_OTHER_METHOD;
    c->activity_ms = now_ms(s);
    c->next = s->conns;
    if (s->conns != NULL) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->n_conns++;
    if (tcp != NULL) {
        tcp->data = c;
    }
    return c;
}

/* ---- writing ---- */

static size_t queued_bytes(const conn_t *c)
{
    return (c->tcp != NULL ? c->tcp->write_queue_size : 0) + c->out.len;
}

static bool conn_congested(const conn_t *c)
{
    if (c->tcp == NULL) {
        return false; /* detached mode: output goes straight to the capture buffer */
    }
    return queued_bytes(c) > HIGH_WATER_BYTES;
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    free(req);
}

/* Once everything is written: start the lingering close (or close at once). */
static void conn_maybe_finish(conn_t *c)
{
    if (!c->close_after || c->closing || c->lingering || c->stream != NULL || c->busy ||
        c->flush_scheduled) {
        return;
    }
    if (c->tcp == NULL || c->out.len > 0 || c->tcp->write_queue_size > 0) {
        if (c->tcp == NULL) {
            conn_close(c);
        }
        return;
    }
    uv_shutdown_t *req = dkv_xmalloc(sizeof(*req));
    if (uv_shutdown(req, (uv_stream_t *)c->tcp, on_shutdown) != 0) {
        free(req);
        conn_close(c);
        return;
    }
    c->lingering = true;
    c->linger_start_ms = now_ms(c->srv);
    dkv_buf_cleanup(&c->rbuf);
    if (!c->reading) {
        conn_resume(c); /* reading restarts and discards input */
    }
}

static void on_write(void *arg, int status)
{
    conn_t *c = arg;
    if (status < 0) {
        conn_close(c);
    } else if (!c->closing) {
        c->activity_ms = now_ms(c->srv);
        if (c->tcp->write_queue_size <= HIGH_WATER_BYTES / 2) {
            if (c->stream != NULL) {
                stream_pump(c);
            } else if (!c->busy && c->rbuf.len > 0) {
                conn_resume(c);
            }
            conn_flush(c);
        }
        conn_maybe_finish(c);
    }
    conn_unref(c);
}

/* Queues the connection's output for the end of this loop iteration (on_flush_check), so that one
 * write-ahead-log flush covers every response of the iteration. */
static void conn_flush(conn_t *c)
{
    if (c->out.len == 0 || c->closing || c->flush_scheduled) {
        return;
    }
    if (c->tcp == NULL) {
        conn_flush_now(c);
        return;
    }
    dkv_http_server_t *s = c->srv;
    c->flush_scheduled = true;
    c->refs++;
    c->flush_next = s->flush_list;
    s->flush_list = c;
    if (!uv_is_active((uv_handle_t *)&s->flush_check)) {
        uv_check_start(&s->flush_check, on_flush_check);
    }
}

static void on_flush_check(uv_check_t *h)
{
    dkv_http_server_t *s = h->data;
    uv_check_stop(h);
    if (s->flush_list == NULL) {
        return;
    }
    bool durable =
        s->opts.before_flush == NULL || s->opts.before_flush(s->opts.before_flush_arg) == 0;
    while (s->flush_list != NULL) {
        conn_t *c = s->flush_list;
        s->flush_list = c->flush_next;
        c->flush_next = NULL;
        c->flush_scheduled = false;
        if (!c->closing && c->n_acks > 0 && (!durable || s->opts.write_outcome != NULL)) {
            conn_settle_acks(c, durable); /* never acknowledge a write that is not in the WAL */
        }
        if (!c->closing) {
            conn_flush_now(c);
            if (c->stream != NULL && !conn_congested(c)) {
                stream_pump(c); /* everything went out at once: no write callback will */
            }
            conn_maybe_finish(c);
        }
        conn_unref(c);
    }
}

static void conn_flush_now(conn_t *c)
{
    if (c->out.len == 0 || c->closing) {
        return;
    }
    if (c->srv->opts.metrics != NULL) {
        for (size_t i = 0; i < c->n_acks; i++) {
            count_response(c, c->acks[i].method, c->acks[i].status_idx);
        }
    }
    c->n_acks = 0; /* past the flush: they are acknowledged now */
    if (c->tcp == NULL) {
        if (c->srv->capture != NULL) {
            dkv_buf_append(c->srv->capture, c->out.data, c->out.len);
        }
        c->out.len = 0;
        return;
    }
    bool queued = false;
    if (dkv_uvwrite((uv_stream_t *)c->tcp, &c->out, on_write, c, &queued) != 0) {
        conn_close(c);
        return;
    }
    if (queued) {
        c->refs++; /* until on_write */
    } else if (c->out.cap > (256u << 10)) {
        dkv_buf_cleanup(&c->out); /* do not keep a large buffer per idle connection */
    }
}

/* ---- streaming ---- */

static void observe_latency(conn_t *c, unsigned op)
{
    dkv_metrics_loop_t *m = c->srv->opts.metrics;
    if (m != NULL && op != DKV_METRICS_OP_NONE && op < DKV_METRICS_N_OPS) {
        dkv_metrics_observe(&m->op_latency[op], uv_hrtime() - c->dispatch_ns);
    }
}

static void stream_pump(conn_t *c)
{
    while (c->stream != NULL && !c->closing && !conn_congested(c)) {
        c->sink.base.buffered_bytes = 0;
        int rc = c->stream->fill(c->stream, &c->sink.base, STREAM_BATCH_BYTES);
        if (rc < 0) {
            DKV_LOG_ERROR("http: aborting a streamed response: %s", dkv_strerror(rc));
            conn_flush(c);
            conn_close(c);
            return;
        }
        if (rc == 1) {
            if (!c->http10) {
                dkv_buf_append_str(&c->out, "0\r\n\r\n");
            }
            c->stream->free(c->stream);
            c->stream = NULL;
            c->busy = false;
            if (c->op != DKV_METRICS_OP_NONE) {
                observe_latency(c, c->op);
                c->op = DKV_METRICS_OP_NONE;
            }
        }
        conn_flush(c);
    }
    if (c->stream == NULL && !c->busy && !c->closing) {
        conn_resume(c);
    }
}

/* ---- requests ---- */

static void reply_cb(void *arg, dkv_response_t *resp)
{
    conn_t *c = arg;
    c->srv->inflight--;
    if (c->srv->opts.metrics != NULL) {
        dkv_metrics_set(&c->srv->opts.metrics->http_inflight, c->srv->inflight);
    }
    if (c->closing) {
        dkv_owned_release(&resp->body_owner);
        if (resp->stream != NULL) {
            resp->stream->free(resp->stream);
        }
        conn_unref(c);
        return;
    }
    conn_respond(c, resp, false);
    dkv_owned_release(&resp->body_owner);
    if (resp->stream != NULL && c->is_head) {
        resp->stream->free(resp->stream); /* HEAD: the headers say what GET would send */
        c->busy = false;
        observe_latency(c, resp->op);
    } else if (resp->stream != NULL) {
        c->stream = resp->stream;
        c->op = resp->op; /* observed when the last chunk is out */
    } else {
        c->busy = false;
        observe_latency(c, resp->op);
    }
    if (!c->dispatching) {
        if (c->stream != NULL) {
            stream_pump(c);
        } else {
            conn_resume(c);
        }
        conn_flush(c);
        conn_maybe_finish(c);
    }
    conn_unref(c);
}

/*
 * Whether the client already closed its side (FIN or reset) before this request is executed: a
 * client that gave up on a write (its timeout, while this node was paused or overloaded) must not
 * have it applied later, after a newer write it then made elsewhere was acknowledged (nginx logs
 * such a request as 499). One recv(MSG_PEEK) per write; a client that half-closes after sending
 * a write (shutdown(SHUT_WR)) is taken for gone too, and gets no answer.
 */
static bool client_gone(conn_t *c)
{
    uv_os_fd_t fd;
    if (c->tcp == NULL || uv_fileno((uv_handle_t *)c->tcp, &fd) != 0) {
        return false;
    }
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN));
}

static void conn_dispatch(conn_t *c)
{
    dkv_http_server_t *s = c->srv;
    if ((c->method == DKV_METHOD_PUT || c->method == DKV_METHOD_DELETE ||
         c->method == DKV_METHOD_POST) &&
        client_gone(c)) {
        s->abandoned++;
        DKV_LOG_INFO("http: 499: the client closed the connection before its %s was executed; "
                     "not applied (%" PRIu64 " so far on this thread)",
                     c->method == DKV_METHOD_PUT      ? "PUT"
                     : c->method == DKV_METHOD_DELETE ? "DELETE"
                                                      : "POST",
                     s->abandoned);
        conn_close(c);
        return;
    }
    if (s->inflight >= s->opts.max_inflight) {
        if (s->opts.metrics != NULL) {
            dkv_metrics_inc(&s->opts.metrics->http_overloaded);
        }
        dkv_response_t resp = {.status = 503,
                               .content_type = "text/plain; charset=utf-8",
                               .extra_headers = "Retry-After: 1\r\n",
                               .body = dkv_slice_str("Service Unavailable: overloaded\n")};
        conn_respond(c, &resp, false);
        return;
    }
    dkv_request_t req = {
        .method = c->method, .url = dkv_buf_slice(&c->url), .body = dkv_buf_slice(&c->body)};
    c->busy = true;
    c->refs++;
    s->inflight++;
    if (s->opts.metrics != NULL) {
        c->dispatch_ns = uv_hrtime();
        dkv_metrics_set(&s->opts.metrics->http_inflight, s->inflight);
    }
    c->dispatching = true;
    dkv_router_handle(s->router, &req, reply_cb, c);
    c->dispatching = false;
    if (c->stream != NULL && !c->closing) {
        stream_pump(c);
    }
}

static void parse_error(conn_t *c, llhttp_errno_t e)
{
    int status = c->err_status != 0 ? c->err_status : 400;
    if (e == HPE_INVALID_VERSION) {
        status = 505; /* llhttp knows no HTTP/1.2: a version we do not speak, not a bad request */
    }
    if (status == 400) {
        DKV_LOG_DEBUG("http: malformed request: %s (%s)", llhttp_errno_name(e),
                      llhttp_get_error_reason(&c->parser));
    }
    switch (status) {
    case 413:
        respond_error(c, 413, "Content Too Large: body over --max-body-bytes\n", NULL);
        break;
    case 431:
        respond_error(c, 431, "Request Header Fields Too Large\n", NULL);
        break;
    case 505:
        respond_error(c, 505, "HTTP Version Not Supported: use HTTP/1.1 or HTTP/1.0\n", NULL);
        break;
    default:
        respond_error(c, 400, "Bad Request: malformed HTTP\n", NULL);
        break;
    }
}

/* Remembers the last byte other than SP/HT of what the parser consumed, for the obs-fold check
 * of a header value that starts a later buffer (on_header_value). */
static void note_consumed(conn_t *c, const uint8_t *data, size_t n)
{
    while (n > 0 && (data[n - 1] == ' ' || data[n - 1] == '\t')) {
        n--;
    }
    if (n > 0) {
        c->last_nonws = data[n - 1];
    }
}

static void conn_process(conn_t *c, const uint8_t *data, size_t len)
{
    while (len > 0 && !c->busy && !c->closing && !c->close_after && !conn_congested(c)) {
        c->exec_base = data;
        llhttp_errno_t e = llhttp_execute(&c->parser, (const char *)data, len);
        if (e == HPE_OK) {
            note_consumed(c, data, len);
            len = 0;
            break;
        }
        if (e == HPE_PAUSED) {
            const uint8_t *pos = (const uint8_t *)llhttp_get_error_pos(&c->parser);
            note_consumed(c, data, (size_t)(pos - data));
            len -= (size_t)(pos - data);
            data = pos;
            llhttp_resume(&c->parser);
            conn_dispatch(c);
            continue;
        }
        parse_error(c, e);
        len = 0;
    }
    if (len > 0 && !c->closing && !c->close_after) {
        dkv_buf_append(&c->rbuf, data, len);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    conn_t *c = h->data;
    *buf = uv_buf_init(c->srv->readbuf, sizeof(c->srv->readbuf));
}

static void handoff(conn_t *c, dkv_slice_t first)
{
    dkv_http_server_t *s = c->srv;
    uv_tcp_t *tcp = c->tcp;
    uv_read_stop((uv_stream_t *)tcp);
    tcp->data = NULL;
    c->tcp = NULL;
    c->closing = true;
    conn_unref(c);
    s->opts.foreign_cb(s->opts.foreign_arg, tcp, first);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = stream->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0) {
        return;
    }
    const uint8_t *data = (const uint8_t *)buf->base;
    size_t len = (size_t)nread;
    c->activity_ms = now_ms(c->srv);
    if (c->lingering) {
        return; /* discard */
    }
    if (!c->sniffed) {
        c->sniffed = true;
        if (c->srv->opts.foreign_cb != NULL && data[0] == c->srv->opts.foreign_first_byte) {
            handoff(c, dkv_slice(data, len));
            return;
        }
        if (c->foreign_only) {
            conn_close(c); /* a client past --max-connections */
            return;
        }
    }
    if (c->busy || c->rbuf.len > 0 || c->stream != NULL) {
        dkv_buf_append(&c->rbuf, data, len);
        if (c->rbuf.len > c->srv->opts.max_body_bytes + c->srv->opts.max_header_bytes) {
            uv_read_stop(stream);
            c->reading = false;
        }
        if (!c->busy && c->stream == NULL) {
            conn_resume(c);
            conn_flush(c);
        }
        return;
    }
    conn_process(c, data, len);
    conn_flush(c);
    conn_maybe_finish(c);
}

/* Parses what waited in rbuf, then makes sure the socket is read again. */
static void conn_resume(conn_t *c)
{
    if (c->closing) {
        return;
    }
    if (!c->lingering && !c->busy && c->rbuf.len > 0 && !conn_congested(c)) {
        dkv_buf_t pending = c->rbuf;
        dkv_buf_init(&c->rbuf);
        conn_process(c, pending.data, pending.len);
        dkv_buf_cleanup(&pending);
    }
    if (!c->reading && c->tcp != NULL && !c->closing &&
        (c->lingering || c->rbuf.len <= c->srv->opts.max_body_bytes)) {
        if (uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read) == 0) {
            c->reading = true;
        }
    }
}

/* ---- server ---- */

static void on_connection(uv_stream_t *listener, int status)
{
    dkv_http_server_t *s = listener->data;
    if (status < 0) {
        DKV_LOG_WARN("http: accept failed: %s", uv_strerror(status));
        return;
    }
    uv_tcp_t *tcp = dkv_xmalloc(sizeof(*tcp));
    uv_tcp_init(s->loop, tcp);
    if (uv_accept(listener, (uv_stream_t *)tcp) != 0) {
        tcp->data = NULL;
        uv_close((uv_handle_t *)tcp, on_tcp_closed);
        return;
    }
    unsigned open = atomic_fetch_add(s->opts.conn_count, 1) + 1;
    unsigned reserve = s->opts.foreign_cb != NULL ? s->opts.foreign_reserve : 0;
    bool over = open > s->opts.max_connections;
    if ((over && open - s->opts.max_connections > reserve) || s->stopping) {
        atomic_fetch_sub(s->opts.conn_count, 1);
        tcp->data = NULL;
        uv_close((uv_handle_t *)tcp, on_tcp_closed);
        return;
    }
    uv_tcp_nodelay(tcp, 1);
    conn_t *c = conn_new(s, tcp);
    c->counted = true;
    c->foreign_only = over;
    if (uv_read_start((uv_stream_t *)tcp, on_alloc, on_read) == 0) {
        c->reading = true;
    } else {
        conn_close(c);
    }
}

static void on_sweep(uv_timer_t *t)
{
    dkv_http_server_t *s = t->data;
    uint64_t now = now_ms(s);
    conn_t *next = NULL;
    for (conn_t *c = s->conns; c != NULL; c = next) {
        next = c->next;
        if (c->closing) {
            continue;
        }
        if (c->lingering) {
            if (now - c->linger_start_ms >= LINGER_MS) {
                conn_close(c);
            }
            continue;
        }
        if (c->busy || c->stream != NULL || (c->tcp != NULL && c->tcp->write_queue_size > 0)) {
            /* A client that stops reading our response is idle too. */
            if (c->tcp != NULL && c->tcp->write_queue_size > 0 &&
                now - c->activity_ms >= s->opts.idle_timeout_ms) {
                conn_close(c);
            }
            continue;
        }
        if (c->in_message) {
            if (now - c->message_start_ms >= s->opts.request_timeout_ms) {
                respond_error(c, 408, "Request Timeout\n", NULL);
                conn_flush(c);
                conn_maybe_finish(c);
            }
        } else if (now - c->activity_ms >= s->opts.idle_timeout_ms ||
                   (!c->sniffed && s->opts.first_byte_timeout_ms != 0 &&
                    now - c->activity_ms >= s->opts.first_byte_timeout_ms)) {
            /* A connection that never sent a byte gets the shorter first-byte timeout: parked
             * sockets must not hold every slot of --max-connections for a whole idle timeout. */
            conn_close(c);
        }
    }
}

static void on_server_handle_closed(uv_handle_t *h)
{
    dkv_http_server_t *s = h->data;
    s->open_handles--;
    server_maybe_done(s);
}

static void server_maybe_done(dkv_http_server_t *s)
{
    if (s->stopping && s->n_conns == 0 && s->drained_cb != NULL) {
        void (*cb)(void *) = s->drained_cb;
        s->drained_cb = NULL;
        cb(s->drained_arg);
    }
    if (s->closing && s->n_conns == 0 && s->open_handles == 0) {
        void (*cb)(void *) = s->close_cb;
        void *arg = s->close_arg;
        free(s);
        if (cb != NULL) {
            cb(arg);
        }
    }
}

static void server_init(dkv_http_server_t *s, uv_loop_t *loop, const dkv_http_opts_t *opts,
                        dkv_router_t *router)
{
    s->loop = loop;
    s->opts = *opts;
    s->router = router;
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_url = on_url;
    s->settings.on_header_field = on_header_field;
    s->settings.on_header_value = on_header_value;
    s->settings.on_header_value_complete = on_header_value_complete;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_body = on_body;
    s->settings.on_message_complete = on_message_complete;
}

static int make_listen_socket(const char *host, uint16_t port, bool reuseport, int *fd_out,
                              struct sockaddr_storage *addr)
{
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    const char *h = strcmp(host, "localhost") == 0 ? "127.0.0.1" : host;
    if (uv_ip4_addr(h, port, a4) != 0 && uv_ip6_addr(h, port, a6) != 0) {
        return DKV_EINVAL;
    }
    int fd = socket(addr->ss_family, SOCK_STREAM, 0);
    if (fd < 0) {
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
#ifdef SO_REUSEPORT
    if (reuseport) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    }
#else
    (void)reuseport;
#endif
    socklen_t alen = addr->ss_family == AF_INET ? sizeof(*a4) : sizeof(*a6);
    if (bind(fd, (struct sockaddr *)addr, alen) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    *fd_out = fd;
    return 0;
}

int dkv_http_probe_port(const char *host, uint16_t port)
{
    int fd = -1;
    struct sockaddr_storage addr;
    int rc = make_listen_socket(host, port, false, &fd, &addr);
    if (rc == 0) {
        close(fd);
    }
    return rc;
}

static void free_on_close(uv_handle_t *h)
{
    free(h->data);
}

int dkv_http_server_start(uv_loop_t *loop, const char *host, uint16_t port, bool reuseport,
                          const dkv_http_opts_t *opts, dkv_router_t *router,
                          dkv_http_server_t **out)
{
    int fd = -1;
    struct sockaddr_storage addr;
    int rc = make_listen_socket(host, port, reuseport, &fd, &addr);
    if (rc != 0) {
        return rc;
    }
    dkv_http_server_t *s = dkv_xcalloc(1, sizeof(*s));
    server_init(s, loop, opts, router);
    uv_tcp_init(loop, &s->listener);
    s->listener.data = s;
    s->open_handles++;
    rc = uv_tcp_open(&s->listener, fd);
    if (rc == 0) {
        rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
    }
    if (rc != 0) {
        /* `s` is freed by the close callback on a later turn of the loop. */
        s->listener.data = s;
        uv_close((uv_handle_t *)&s->listener, free_on_close);
        return rc;
    }
    s->listening = true;
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    s->open_handles++;
    uv_check_init(loop, &s->flush_check);
    s->flush_check.data = s;
    s->open_handles++;
    uint64_t tick = opts->idle_timeout_ms < opts->request_timeout_ms ? opts->idle_timeout_ms
                                                                     : opts->request_timeout_ms;
    if (opts->first_byte_timeout_ms != 0 && opts->first_byte_timeout_ms < tick) {
        tick = opts->first_byte_timeout_ms;
    }
    tick /= 4;
    tick = tick < 10 ? 10 : (tick > 500 ? 500 : tick);
    uv_timer_start(&s->sweep, on_sweep, tick, tick);
    *out = s;
    return 0;
}

size_t dkv_http_server_connections(const dkv_http_server_t *s)
{
    return s->n_conns;
}

void dkv_http_server_stop(dkv_http_server_t *s, void (*drained_cb)(void *arg), void *arg)
{
    s->stopping = true;
    s->drained_cb = drained_cb;
    s->drained_arg = arg;
    if (s->listening) {
        s->listening = false;
        uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    }
    conn_t *next = NULL;
    for (conn_t *c = s->conns; c != NULL; c = next) {
        next = c->next;
        if (!c->busy && !c->in_message && c->stream == NULL && queued_bytes(c) == 0) {
            conn_close(c);
        } else if (!c->busy && !c->in_message && c->stream == NULL) {
            c->close_after = true; /* only output left: close once it is written */
        } else {
            c->keep_alive = false; /* the response in progress says Connection: close */
        }
    }
    server_maybe_done(s);
}

void dkv_http_server_close(dkv_http_server_t *s, void (*cb)(void *arg), void *arg)
{
    s->stopping = true;
    s->drained_cb = NULL;
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    if (s->listening) {
        s->listening = false;
        uv_close((uv_handle_t *)&s->listener, on_server_handle_closed);
    }
    uv_close((uv_handle_t *)&s->sweep, on_server_handle_closed);
    uv_close((uv_handle_t *)&s->flush_check, on_server_handle_closed);
    conn_t *next = NULL;
    for (conn_t *c = s->conns; c != NULL; c = next) {
        next = c->next;
        conn_close(c);
    }
}

void dkv_http_feed_detached(uv_loop_t *loop, const dkv_http_opts_t *opts, dkv_router_t *router,
                            dkv_slice_t in, dkv_buf_t *out)
{
    dkv_http_server_t *s = dkv_xcalloc(1, sizeof(*s));
    server_init(s, loop, opts, router);
    s->capture = out;
    conn_t *c = conn_new(s, NULL);
    c->refs++; /* ours, so that an error that closes the connection cannot free it under us */
    conn_process(c, in.ptr, in.len);
    while (c->stream != NULL && !c->closing) {
        stream_pump(c);
    }
    conn_flush(c);
    conn_close(c);
    conn_unref(c);
    free(s);
}
