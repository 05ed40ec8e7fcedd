/*
 * Router: request validation and dispatch for the /v0 API (../shared/API.md §3-4, §10, §12).
 */
#include "router/router.h"
#include "router/router_int.h"

#include "cluster/hlc.h"
#include "common/conf.h"
#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TEXT "text/plain; charset=utf-8"

int dkv_router_new(const dkv_router_env_t *env, dkv_router_t **out)
{
    dkv_router_t *r = dkv_xcalloc(1, sizeof(*r));
    r->env = *env;
    *out = r;
    return 0;
}

void dkv_router_free(dkv_router_t *r)
{
    free(r);
}

/* ---- query parsing ---- */

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

int dkv_percent_decode(dkv_slice_t in, dkv_buf_t *out)
{
    dkv_buf_reserve(out, in.len);
    for (size_t i = 0; i < in.len; i++) {
        uint8_t c = in.ptr[i];
        if (c != '%') {
            out->data[out->len++] = c;
            continue;
        }
        if (i + 2 >= in.len) {
            return DKV_EINVAL;
        }
        int hi = hexval(in.ptr[i + 1]);
        int lo = hexval(in.ptr[i + 2]);
        if (hi < 0 || lo < 0) {
            return DKV_EINVAL;
        }
        out->data[out->len++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return 0;
}

void dkv_query_cleanup(dkv_query_t *q)
{
    dkv_buf_cleanup(&q->id);
    dkv_buf_cleanup(&q->start);
    dkv_buf_cleanup(&q->end);
    dkv_buf_cleanup(&q->ack);
    dkv_buf_cleanup(&q->from);
    dkv_buf_cleanup(&q->replicas);
    dkv_buf_cleanup(&q->timeout_ms);
    dkv_buf_cleanup(&q->dir);
}

int dkv_query_parse(dkv_slice_t query, dkv_query_t *q)
{
    memset(q, 0, sizeof(*q));
    size_t i = 0;
    dkv_buf_t name;
    dkv_buf_init(&name);
    int rc = 0;
    while (i <= query.len && query.len > 0) {
        const uint8_t *p = query.ptr + i;
        const uint8_t *amp = memchr(p, '&', query.len - i);
        size_t plen = amp != NULL ? (size_t)(amp - p) : query.len - i;
        const uint8_t *eq = memchr(p, '=', plen);
        dkv_slice_t raw_name = dkv_slice(p, eq != NULL ? (size_t)(eq - p) : plen);
        dkv_slice_t raw_val =
            eq != NULL ? dkv_slice(eq + 1, plen - raw_name.len - 1) : dkv_slice(p + plen, 0);
        name.len = 0;
        rc = dkv_percent_decode(raw_name, &name);
        if (rc != 0) {
            goto out;
        }
        dkv_slice_t n = dkv_buf_slice(&name);
        bool *has = NULL;
        dkv_buf_t *dst = NULL;
        dkv_buf_t scratch;
        dkv_buf_init(&scratch);
        if (dkv_slice_eq_str(n, "id")) {
            has = &q->has_id, dst = &q->id;
        } else if (dkv_slice_eq_str(n, "start")) {
            has = &q->has_start, dst = &q->start;
        } else if (dkv_slice_eq_str(n, "end")) {
            has = &q->has_end, dst = &q->end;
        } else if (dkv_slice_eq_str(n, "ack")) {
            has = &q->has_ack, dst = &q->ack;
        } else if (dkv_slice_eq_str(n, "from")) {
            has = &q->has_from, dst = &q->from;
        } else if (dkv_slice_eq_str(n, "replicas")) {
            has = &q->has_replicas, dst = &q->replicas;
        } else if (dkv_slice_eq_str(n, "timeout_ms")) {
            has = &q->has_timeout_ms, dst = &q->timeout_ms;
        } else if (dkv_slice_eq_str(n, "dir")) {
            has = &q->has_dir, dst = &q->dir;
        } else if (dkv_slice_eq_str(n, "verbose")) {
            has = &q->verbose;
        }
        if (has != NULL && *has) {
            dst = NULL; /* the first occurrence wins; still validate the escapes */
            has = NULL;
        }
        rc = dkv_percent_decode(raw_val, dst != NULL ? dst : &scratch);
        dkv_buf_cleanup(&scratch);
        if (rc != 0) {
            goto out;
        }
        if (has != NULL) {
            *has = true;
        }
        if (amp == NULL) {
            break;
        }
        i += plen + 1;
    }
out:
    dkv_buf_cleanup(&name);
    return rc;
}

/* A decimal integer of 1..9 digits, nothing else. */
static int parse_count(const dkv_buf_t *b, unsigned *out)
{
    if (b->len == 0 || b->len > 9) {
        return DKV_EINVAL;
    }
    unsigned v = 0;
    for (size_t i = 0; i < b->len; i++) {
        if (b->data[i] < '0' || b->data[i] > '9') {
            return DKV_EINVAL;
        }
        v = v * 10 + (unsigned)(b->data[i] - '0');
    }
    *out = v;
    return 0;
}

int dkv_query_replication(const dkv_query_t *q, unsigned n, unsigned rf, unsigned *ack,
                          unsigned *from, const char **why)
{
    unsigned a = 0;
    unsigned f = rf >= 1 && rf <= n ? rf : n;
    bool has_ack = q->has_ack;
    if (q->has_replicas && !q->has_ack && !q->has_from) {
        /* Legacy form replicas=A/F (API.md §12). */
        const uint8_t *slash = q->replicas.len > 0 ? memchr(q->replicas.data, '/', q->replicas.len)
                                                   : NULL;
        if (slash == NULL) {
            *why = "replicas must be ACK/FROM";
            return DKV_EINVAL;
        }
        size_t alen = (size_t)(slash - q->replicas.data);
        dkv_buf_t ab = {q->replicas.data, alen, alen};
        dkv_buf_t fb = {(uint8_t *)slash + 1, q->replicas.len - alen - 1,
                        q->replicas.len - alen - 1};
        if (parse_count(&ab, &a) != 0 || parse_count(&fb, &f) != 0) {
            *why = "replicas must be ACK/FROM with decimal integers";
            return DKV_EINVAL;
        }
        has_ack = true;
    } else {
        if (q->has_from && parse_count(&q->from, &f) != 0) {
            *why = "from must be a decimal integer";
            return DKV_EINVAL;
        }
        if (q->has_ack && parse_count(&q->ack, &a) != 0) {
            *why = "ack must be a decimal integer";
            return DKV_EINVAL;
        }
    }
    if (f < 1 || f > n) {
        *why = "from must be between 1 and the cluster size";
        return DKV_EINVAL;
    }
    if (!has_ack) {
        a = f / 2 + 1;
    }
    if (a < 1 || a > f) {
        *why = "ack must be between 1 and from";
        return DKV_EINVAL;
    }
    *ack = a;
    *from = f;
    return 0;
}

int dkv_router_status_of(int err, bool is_get, bool is_delete)
{
    switch (err) {
    case 0:
        return is_get ? 200 : (is_delete ? 202 : 201);
    case DKV_ENOTFOUND:
        return 404;
    case DKV_EINVAL:
    case DKV_EPROTO:
        return 400;
    case DKV_ETOOBIG:
        return 413;
    case DKV_EQUORUM:
    case DKV_ETIMEDOUT:
    case DKV_EUNAVAIL:
    case DKV_ENOTREADY:
    case DKV_ECLOCK:
        return 504;
    case DKV_EOVERLOAD:
    case DKV_EHLCBOUND:
        return 503;
    case DKV_ENOSPACE:
        return 507;
    default:
        return 500;
    }
}

/* ---- responses ---- */

static void reply_text(dkv_router_reply_cb cb, void *arg, int status, const char *text)
{
    dkv_response_t resp = {
        .status = status, .content_type = TEXT, .body = dkv_slice_str(text)};
    cb(arg, &resp);
}

static void reply_owned_text(dkv_router_reply_cb cb, void *arg, int status, dkv_buf_t *text,
                             const char *content_type)
{
    dkv_response_t resp = {.status = status, .content_type = content_type};
    resp.body = dkv_buf_slice(text);
    resp.body_owner.len = text->len;
    resp.body_owner.ptr = dkv_buf_steal(text);
    resp.body_owner.free_fn = (void (*)(uint8_t *))free;
    cb(arg, &resp);
}

typedef struct entity_ctx {
    dkv_router_reply_cb cb;
    void *arg;
    bool is_get;
    bool is_delete;
} entity_ctx_t;

static void entity_done_cb(void *arg, dkv_coord_result_t *res)
{
    entity_ctx_t ctx = *(entity_ctx_t *)arg;
    free(arg);
    int status = dkv_router_status_of(res->rc, ctx.is_get, ctx.is_delete);
    unsigned char op = ctx.is_get      ? DKV_METRICS_OP_GET
                       : ctx.is_delete ? DKV_METRICS_OP_DELETE
                                       : DKV_METRICS_OP_PUT;
    if (status == 200) {
        dkv_response_t resp = {
            .status = 200, .content_type = "application/octet-stream", .op = op};
        resp.body = res->record.value;
        resp.body_owner = res->buf;
        memset(&res->buf, 0, sizeof(res->buf));
        ctx.cb(ctx.arg, &resp);
        return;
    }
    const char *text = "";
    switch (status) {
    case 201:
        text = "Created\n";
        break;
    case 202:
        text = "Accepted\n";
        break;
    case 404:
        text = "Not Found\n";
        break;
    case 504:
        text = "Not Enough Replicas\n";
        break;
    case 507:
        text = "Insufficient Storage: no space left in this node's data directory\n";
        break;
    default:
        text = "Internal Error\n";
        break;
    }
    dkv_response_t resp = {
        .status = status, .content_type = TEXT, .body = dkv_slice_str(text), .op = op};
    /* A 201 or 202 may rest on this thread's unflushed write-ahead log: http/ flushes it before
     * sending and turns the acknowledgement into a 507 if the flush fails. */
    resp.acknowledges_write = status == 201 || status == 202;
    resp.write_token = res->local_token;
    ctx.cb(ctx.arg, &resp);
}

static void handle_entity(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                          dkv_router_reply_cb cb, void *arg)
{
    if (req->method == DKV_METHOD_OTHER || req->method == DKV_METHOD_POST) {
        reply_text(cb, arg, 405, "Method Not Allowed: use GET, PUT or DELETE\n");
        return;
    }
    if (!q->has_id || q->id.len == 0) {
        reply_text(cb, arg, 400, "Bad Request: missing or empty id\n");
        return;
    }
    if (q->id.len > DKV_MAX_KEY_BYTES) {
        reply_text(cb, arg, 400, "Bad Request: id longer than 1024 bytes\n");
        return;
    }
    unsigned ack = 0;
    unsigned from = 0;
    const char *why = NULL;
    unsigned n = (unsigned)dkv_ring_size(r->env.ring);
    if (dkv_query_replication(q, n, r->env.replication_factor, &ack, &from, &why) != 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "Bad Request: %s\n", why);
        dkv_buf_t b;
        dkv_buf_init(&b);
        dkv_buf_append_str(&b, msg);
        reply_owned_text(cb, arg, 400, &b, TEXT);
        return;
    }
    dkv_skew_t *skew = r->env.rpc_shared != NULL ? r->env.rpc_shared->skew : NULL;
    int64_t off_ms = 0;
    if (req->method != DKV_METHOD_GET && skew != NULL && dkv_skew_refusing(skew, &off_ms)) {
        /* A write stamped by a clock that is off the majority would be ordered wrongly against
         * everyone else's (cluster/skew.h). Reads need no timestamp of ours: still served. */
        char reason[256];
        dkv_skew_refusal_text(skew, off_ms, reason, sizeof(reason));
        dkv_buf_t b;
        dkv_buf_init(&b);
        dkv_buf_printf(&b, "Service Unavailable: %s\n", reason);
        reply_owned_text(cb, arg, 503, &b, TEXT);
        return;
    }
    entity_ctx_t *ctx = dkv_xmalloc(sizeof(*ctx));
    ctx->cb = cb;
    ctx->arg = arg;
    ctx->is_get = req->method == DKV_METHOD_GET;
    ctx->is_delete = req->method == DKV_METHOD_DELETE;
    dkv_slice_t key = dkv_buf_slice(&q->id);
    int rc;
    if (ctx->is_get) {
        rc = dkv_coord_get(r->env.coord, key, ack, from, entity_done_cb, ctx);
    } else {
        rc = dkv_coord_put(r->env.coord, key, ctx->is_delete,
                           ctx->is_delete ? dkv_slice(NULL, 0) : req->body, ack, from,
                           entity_done_cb, ctx);
    }
    if (rc == DKV_EHLCBOUND && r->env.store != NULL && !dkv_store_writable(r->env.store)) {
        /* The bound could not be written because the disk is full: that is the answer. */
        free(ctx);
        reply_text(cb, arg, 507,
                   "Insufficient Storage: this node's disk is full; writes refused until it has "
                   "room\n");
    } else if (rc == DKV_EHLCBOUND) {
        free(ctx);
        reply_text(cb, arg, 503,
                   "Service Unavailable: this node cannot persist its clock's upper bound "
                   "(DATA/hlc, see its log); writes refused until it can\n");
    } else if (rc != 0) {
        free(ctx);
        reply_text(cb, arg, dkv_router_status_of(rc, false, false), "Bad Request\n");
    }
}

/* ---- node-local range ---- */

typedef struct range_stream {
    dkv_stream_t base;
    dkv_store_iter_t *it;
} range_stream_t;

static int range_fill(dkv_stream_t *s, dkv_chunk_sink_t *sink, size_t budget_bytes)
{
    range_stream_t *rs = (range_stream_t *)s;
    while (sink->buffered_bytes < budget_bytes) {
        dkv_slice_t key;
        dkv_record_t rec;
        int rc = dkv_store_iter_next(rs->it, &key, &rec);
        if (rc == DKV_ENOTFOUND) {
            return 1;
        }
        if (rc != 0) {
            return rc;
        }
        if (rec.tombstone) {
            continue;
        }
        dkv_slice_t parts[3] = {key, dkv_slice("\n", 1), rec.value};
        sink->write(sink, parts, 3);
    }
    return 0;
}

static void range_free(dkv_stream_t *s)
{
    range_stream_t *rs = (range_stream_t *)s;
    dkv_store_iter_free(rs->it);
    free(rs);
}

static void handle_entities(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                            dkv_router_reply_cb cb, void *arg)
{
    if (req->method != DKV_METHOD_GET) {
        reply_text(cb, arg, 405, "Method Not Allowed: use GET\n");
        return;
    }
    if (!q->has_start || q->start.len == 0) {
        reply_text(cb, arg, 400, "Bad Request: missing or empty start\n");
        return;
    }
    if (q->start.len > DKV_MAX_KEY_BYTES || q->end.len > DKV_MAX_KEY_BYTES) {
        reply_text(cb, arg, 400, "Bad Request: start or end longer than 1024 bytes\n");
        return;
    }
    dkv_store_iter_t *it = NULL;
    int rc = dkv_store_iter_new(r->env.store, dkv_buf_slice(&q->start), dkv_buf_slice(&q->end),
                                &it);
    if (rc != 0) {
        reply_text(cb, arg, 500, "Internal Error: storage\n");
        return;
    }
    range_stream_t *rs = dkv_xcalloc(1, sizeof(*rs));
    rs->base.fill = range_fill;
    rs->base.free = range_free;
    rs->it = it;
    dkv_response_t resp = {.status = 200, .content_type = "application/octet-stream",
                           .stream = &rs->base, .op = DKV_METRICS_OP_RANGE};
    cb(arg, &resp);
}

/* ---- status ---- */

/* ---- convergence: hints and read repair ---- */

static void hints_json(dkv_router_t *r, dkv_buf_t *b)
{
    if (r->env.hints == NULL) {
        dkv_buf_append_str(b, "{\"enabled\":false}");
        return;
    }
    dkv_hints_status_json(r->env.hints, b);
}

static void read_repair_json(dkv_router_t *r, dkv_buf_t *b)
{
    dkv_coord_stats_t *st = r->env.coord_stats;
    uint64_t reads = 0;
    uint64_t writes = 0;
    uint64_t failures = 0;
    uint64_t unhinted = 0;
    if (st != NULL) {
        reads = atomic_load_explicit(&st->read_repair_reads, memory_order_relaxed);
        writes = atomic_load_explicit(&st->read_repair_writes, memory_order_relaxed);
        failures = atomic_load_explicit(&st->read_repair_failures, memory_order_relaxed);
        unhinted = atomic_load_explicit(&st->hints_not_stored, memory_order_relaxed);
    }
    dkv_buf_printf(b,
                   "{\"enabled\":%s,\"reads_repaired\":%" PRIu64 ",\"writes\":%" PRIu64
                   ",\"failures\":%" PRIu64 ",\"failed_writes_without_hint\":%" PRIu64 "}",
                   r->env.read_repair ? "true" : "false", reads, writes, failures, unhinted);
}

/* The store's write health: unwritable after a storage error (disk full) until it resumes. */
static void storage_json(dkv_router_t *r, dkv_buf_t *b)
{
    dkv_store_health_t h;
    dkv_store_health(r->env.store, &h);
    dkv_buf_printf(b, "{\"writable\":%s,\"error\":", h.writable ? "true" : "false");
    if (h.writable) {
        dkv_buf_append_str(b, "null");
    } else {
        dkv_buf_append_json_str(b, h.error);
    }
    dkv_buf_printf(b,
                   ",\"no_space\":%s,\"since_ms\":%" PRIu64 ",\"write_errors\":%" PRIu64
                   ",\"resumes\":%" PRIu64 "}",
                   h.rc == DKV_ENOSPACE ? "true" : "false", h.since_ms, h.write_errors, h.resumes);
}

/* GET /v0/admin/hints: pending hints per peer and the counters. */
static void handle_admin_hints(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                               dkv_router_reply_cb cb, void *arg)
{
    (void)q;
    if (req->method != DKV_METHOD_GET) {
        reply_text(cb, arg, 405, "Method Not Allowed: use GET\n");
        return;
    }
    dkv_buf_t b;
    dkv_buf_init(&b);
    hints_json(r, &b);
    dkv_buf_append_str(&b, "\n");
    reply_owned_text(cb, arg, 200, &b, "application/json");
}

#define SYNC_POLL_MS 10u
#define SYNC_DEFAULT_TIMEOUT_MS 60000u
#define SYNC_MAX_TIMEOUT_MS 3600000u

struct sync_wait {
    uv_timer_t timer;
    dkv_router_t *router;
    sync_wait_t *prev;
    sync_wait_t *next;
    /* What is awaited: 0 while pending, else the HTTP status, with the body written. */
    int (*poll)(sync_wait_t *w, dkv_buf_t *body);
    const char *timeout_text;
    dkv_hints_t *hints;
    dkv_hints_sync_point_t sp;
    dkv_ae_t *ae;
    uint64_t ticket; /* an anti-entropy round or compaction */
    uint64_t deadline_ms;
    dkv_router_reply_cb cb;
    void *arg;
};

static void sync_wait_free(uv_handle_t *h)
{
    free(h->data);
}

/* Answers a waiting admin call and lets its timer go. */
static void sync_wait_end(sync_wait_t *w, int status, dkv_buf_t *body)
{
    dkv_router_t *r = w->router;
    if (w->prev != NULL) {
        w->prev->next = w->next;
    } else {
        r->waits = w->next;
    }
    if (w->next != NULL) {
        w->next->prev = w->prev;
    }
    uv_timer_stop(&w->timer);
    bool json = body->len > 0 && body->data[0] == '{';
    reply_owned_text(w->cb, w->arg, status, body, json ? "application/json" : TEXT);
    uv_close((uv_handle_t *)&w->timer, sync_wait_free);
}

static void sync_poll(uv_timer_t *t)
{
    sync_wait_t *w = t->data;
    dkv_buf_t body;
    dkv_buf_init(&body);
    int status = w->poll(w, &body);
    if (status != 0) {
        sync_wait_end(w, status, &body);
    } else if (uv_now(t->loop) >= w->deadline_ms) {
        dkv_buf_append_str(&body, w->timeout_text);
        sync_wait_end(w, 504, &body);
    } else {
        dkv_buf_cleanup(&body);
    }
}

void dkv_router_stop(dkv_router_t *r)
{
    r->stopped = true;
    while (r->waits != NULL) {
        dkv_buf_t body;
        dkv_buf_init(&body);
        dkv_buf_append_str(&body, "Service Unavailable: the node is shutting down\n");
        sync_wait_end(r->waits, 503, &body);
    }
}

/* Parses timeout_ms (default 60 s, at most 1 h). @return false after answering 400. */
static bool admin_timeout(dkv_query_t *q, unsigned *timeout_ms, dkv_router_reply_cb cb,
                          void *arg)
{
    *timeout_ms = SYNC_DEFAULT_TIMEOUT_MS;
    if (q->has_timeout_ms &&
        (parse_count(&q->timeout_ms, timeout_ms) != 0 || *timeout_ms > SYNC_MAX_TIMEOUT_MS)) {
        reply_text(cb, arg, 400, "Bad Request: timeout_ms must be 0..3600000\n");
        return false;
    }
    return true;
}

/* Starts waiting for `w` (filled in but for the list and timer), or answers at once when it is
 * already reached. */
static void sync_wait_start(dkv_router_t *r, sync_wait_t *w, unsigned timeout_ms,
                            dkv_router_reply_cb cb, void *arg)
{
    dkv_buf_t body;
    dkv_buf_init(&body);
    int status = w->poll(w, &body);
    if (status != 0) {
        free(w);
        bool json = body.len > 0 && body.data[0] == '{';
        reply_owned_text(cb, arg, status, &body, json ? "application/json" : TEXT);
        return;
    }
    dkv_buf_cleanup(&body);
    w->cb = cb;
    w->arg = arg;
    w->router = r;
    w->next = r->waits;
    if (r->waits != NULL) {
        r->waits->prev = w;
    }
    r->waits = w;
    uv_timer_init(r->env.loop, &w->timer);
    w->timer.data = w;
    w->deadline_ms = uv_now(r->env.loop) + timeout_ms;
    uv_timer_start(&w->timer, sync_poll, SYNC_POLL_MS, SYNC_POLL_MS);
}

static int poll_hints(sync_wait_t *w, dkv_buf_t *body)
{
    if (!dkv_hints_sync_reached(w->hints, &w->sp)) {
        return 0;
    }
    dkv_buf_append_str(body, "OK: every hint that existed at the call was delivered\n");
    return 200;
}

/*
 * POST /v0/admin/hints/sync?timeout_ms=T: 200 once every hint that existed at the call was
 * delivered (a sync point, as in Scylla), 504 at the timeout. Operators run it before restarting
 * the next node of a rolling restart.
 */
static void handle_admin_hints_sync(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                                    dkv_router_reply_cb cb, void *arg)
{
    if (req->method != DKV_METHOD_POST) {
        reply_text(cb, arg, 405, "Method Not Allowed: use POST\n");
        return;
    }
    unsigned timeout_ms;
    if (!admin_timeout(q, &timeout_ms, cb, arg)) {
        return;
    }
    if (r->env.hints == NULL) {
        reply_text(cb, arg, 200, "OK: hinted handoff is off, no hints to wait for\n");
        return;
    }
    if (r->stopped) {
        reply_text(cb, arg, 503, "Service Unavailable: the node is shutting down\n");
        return;
    }
    sync_wait_t *w = dkv_xcalloc(1, sizeof(*w));
    w->hints = r->env.hints;
    w->poll = poll_hints;
    w->timeout_text = "Timeout: hints are still pending (GET /v0/admin/hints)\n";
    dkv_hints_sync_point(w->hints, &w->sp);
    sync_wait_start(r, w, timeout_ms, cb, arg);
}

static int poll_repair(sync_wait_t *w, dkv_buf_t *body)
{
    bool all_ok = false;
    if (!dkv_ae_round_result(w->ae, w->ticket, &all_ok)) {
        return 0;
    }
    dkv_ae_status_json(w->ae, body);
    dkv_buf_append_str(body, "\n");
    return all_ok ? 200 : 502;
}

/*
 * GET /v0/admin/repair: the anti-entropy state (per peer: last complete exchange, segments
 * compared, records sent and received, bytes). POST /v0/admin/repair?timeout_ms=T: runs one
 * full exchange with every peer now (like `nodetool repair`) and answers when it finished: 200
 * when every exchange completed, 502 when some failed (see last_error), 504 at the timeout.
 */
static void handle_admin_repair(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                                dkv_router_reply_cb cb, void *arg)
{
    if (req->method != DKV_METHOD_POST && req->method != DKV_METHOD_GET) {
        reply_text(cb, arg, 405, "Method Not Allowed: use GET or POST\n");
        return;
    }
    if (r->env.ae == NULL) {
        reply_text(cb, arg, 200, "OK: a cluster of one node has nothing to repair\n");
        return;
    }
    if (req->method == DKV_METHOD_GET) {
        dkv_buf_t b;
        dkv_buf_init(&b);
        dkv_ae_status_json(r->env.ae, &b);
        dkv_buf_append_str(&b, "\n");
        reply_owned_text(cb, arg, 200, &b, "application/json");
        return;
    }
    unsigned timeout_ms;
    if (!admin_timeout(q, &timeout_ms, cb, arg)) {
        return;
    }
    if (r->stopped) {
        reply_text(cb, arg, 503, "Service Unavailable: the node is shutting down\n");
        return;
    }
    sync_wait_t *w = dkv_xcalloc(1, sizeof(*w));
    w->ae = r->env.ae;
    w->poll = poll_repair;
    w->timeout_text = "Timeout: the repair is still running (GET /v0/admin/repair)\n";
    w->ticket = dkv_ae_request_round(w->ae);
    sync_wait_start(r, w, timeout_ms, cb, arg);
}

static int poll_compact(sync_wait_t *w, dkv_buf_t *body)
{
    if (!dkv_ae_compact_done(w->ae, w->ticket)) {
        return 0;
    }
    dkv_buf_append_str(body, "OK: compacted\n");
    return 200;
}

/*
 * POST /v0/admin/compact?timeout_ms=T: a full compaction of the store (purged tombstones and the
 * versions they shadow leave the disk now), run on the anti-entropy thread; 200 when done.
 */
static void handle_admin_compact(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                                 dkv_router_reply_cb cb, void *arg)
{
    if (req->method != DKV_METHOD_POST) {
        reply_text(cb, arg, 405, "Method Not Allowed: use POST\n");
        return;
    }
    unsigned timeout_ms;
    if (!admin_timeout(q, &timeout_ms, cb, arg)) {
        return;
    }
    if (r->env.ae == NULL) {
        reply_text(cb, arg, 501, "Not Implemented: compaction runs on the anti-entropy thread, "
                                 "which a cluster of one does not have\n");
        return;
    }
    if (r->stopped) {
        reply_text(cb, arg, 503, "Service Unavailable: the node is shutting down\n");
        return;
    }
    sync_wait_t *w = dkv_xcalloc(1, sizeof(*w));
    w->ae = r->env.ae;
    w->poll = poll_compact;
    w->timeout_text = "Timeout: the compaction is still running\n";
    w->ticket = dkv_ae_request_compact(w->ae);
    sync_wait_start(r, w, timeout_ms, cb, arg);
}

/* ---- backups ---- */

#define CHECKPOINT_NAME_MAX 128u

typedef struct checkpoint_job {
    uv_work_t work;
    dkv_store_t *store;
    char path[1200]; /* backup_dir/NAME */
    int rc;
    char why[512];
    uint64_t elapsed_ms;
    dkv_router_reply_cb cb;
    void *arg;
} checkpoint_job_t;

/* A checkpoint's name: 1..128 of [A-Za-z0-9._-], not starting with '.' and without "..", so it
 * always names a new entry right under --backup-dir. */
static bool checkpoint_name_ok(const dkv_buf_t *name)
{
    if (name->len == 0 || name->len > CHECKPOINT_NAME_MAX || name->data[0] == '.') {
        return false;
    }
    for (size_t i = 0; i < name->len; i++) {
        uint8_t c = name->data[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok || (c == '.' && i + 1 < name->len && name->data[i + 1] == '.')) {
            return false;
        }
    }
    return true;
}

/* Runs on libuv's thread pool: the memtable flush may take a while. */
static void checkpoint_work(uv_work_t *w)
{
    checkpoint_job_t *job = w->data;
    uint64_t t0 = uv_hrtime();
    struct stat st;
    if (lstat(job->path, &st) == 0) {
        job->rc = -EEXIST;
    } else {
        job->rc = dkv_store_checkpoint(job->store, job->path, job->why, sizeof(job->why));
    }
    job->elapsed_ms = (uv_hrtime() - t0) / 1000000u;
}

static void checkpoint_done(uv_work_t *w, int status)
{
    checkpoint_job_t *job = w->data;
    dkv_buf_t b;
    dkv_buf_init(&b);
    int http = 200;
    if (status != 0) {
        http = 500;
        dkv_buf_printf(&b, "Internal Error: the checkpoint did not run: %s\n", uv_strerror(status));
    } else if (job->rc == 0) {
        DKV_LOG_INFO("checkpoint written to %s in %" PRIu64 " ms", job->path, job->elapsed_ms);
        dkv_buf_append_str(&b, "{\"checkpoint\":");
        dkv_buf_append_json_str(&b, job->path);
        dkv_buf_printf(&b, ",\"elapsed_ms\":%" PRIu64 "}\n", job->elapsed_ms);
    } else if (job->rc == -EEXIST) {
        http = 409;
        dkv_buf_printf(&b, "Conflict: %s already exists; a checkpoint needs a new name\n",
                       job->path);
    } else {
        http = job->rc == DKV_ENOSPACE ? 507 : 500;
        DKV_LOG_WARN("checkpoint to %s failed: %s", job->path, job->why);
        dkv_buf_printf(&b, "%s: %s\n", http == 507 ? "Insufficient Storage" : "Internal Error",
                       job->why);
    }
    bool json = http == 200;
    reply_owned_text(job->cb, job->arg, http, &b, json ? "application/json" : TEXT);
    free(job);
}

/*
 * POST /v0/admin/checkpoint?dir=NAME: a consistent copy of this node's database in
 * --backup-dir/NAME (store.h dkv_store_checkpoint), taken on libuv's thread pool so the loop goes
 * on serving. 200 with JSON; 400 bad name; 403 without --backup-dir; 409 NAME exists; 507 no
 * space. Restoring one is an operator's procedure: docs/deploy.md.
 */
static void handle_admin_checkpoint(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                                    dkv_router_reply_cb cb, void *arg)
{
    if (req->method != DKV_METHOD_POST) {
        reply_text(cb, arg, 405, "Method Not Allowed: use POST\n");
        return;
    }
    if (r->env.backup_dir == NULL || r->env.backup_dir[0] == '\0') {
        reply_text(cb, arg, 403,
                   "Forbidden: checkpoints are off; start the node with --backup-dir DIR\n");
        return;
    }
    if (!q->has_dir || !checkpoint_name_ok(&q->dir)) {
        reply_text(cb, arg, 400,
                   "Bad Request: dir must be a new name under --backup-dir: 1..128 of "
                   "A-Z a-z 0-9 . _ -, not starting with '.', no '..' and no '/'\n");
        return;
    }
    if (r->stopped) {
        reply_text(cb, arg, 503, "Service Unavailable: the node is shutting down\n");
        return;
    }
    if (r->env.store == NULL) {
        reply_text(cb, arg, 500, "Internal Error: no store\n");
        return;
    }
    checkpoint_job_t *job = dkv_xcalloc(1, sizeof(*job));
    int n = snprintf(job->path, sizeof(job->path), "%s/%.*s", r->env.backup_dir,
                     (int)q->dir.len, (const char *)q->dir.data);
    if (n < 0 || (size_t)n >= sizeof(job->path)) {
        free(job);
        reply_text(cb, arg, 400, "Bad Request: --backup-dir/NAME is too long\n");
        return;
    }
    job->store = r->env.store;
    job->cb = cb;
    job->arg = arg;
    job->work.data = job;
    int rc = uv_queue_work(r->env.loop, &job->work, checkpoint_work, checkpoint_done);
    if (rc != 0) {
        free(job);
        reply_text(cb, arg, 500, "Internal Error: cannot queue the checkpoint\n");
    }
}

/*
 * POST /v0/admin/rebuild-done: the operator's word that a rebuilding node may answer replica
 * reads from its data again (after hints and read repair refilled it, or accepting the loss).
 */
static void handle_admin_rebuild_done(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                                      dkv_router_reply_cb cb, void *arg)
{
    (void)q;
    if (req->method != DKV_METHOD_POST) {
        reply_text(cb, arg, 405, "Method Not Allowed: use POST\n");
        return;
    }
    if (r->env.identity == NULL || dkv_identity_rebuild_done(r->env.identity) != 0) {
        reply_text(cb, arg, 500, "Internal Error: the state could not be recorded (see the log)\n");
        return;
    }
    reply_text(cb, arg, 200, "OK: ready\n");
}

static void handle_status(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                          dkv_router_reply_cb cb, void *arg)
{
    if (req->method != DKV_METHOD_GET) {
        reply_text(cb, arg, 405, "Method Not Allowed: use GET\n");
        return;
    }
    if (!q->verbose) {
        dkv_response_t resp = {.status = 200,
                               .content_type = TEXT,
                               .extra_headers = ROUTER_CORS_HEADER,
                               .body = dkv_slice_str("OK\n")};
        cb(arg, &resp);
        return;
    }
    dkv_buf_t b;
    dkv_buf_init(&b);
    uint64_t now_ms = dkv_hlc_system_clock_ms(NULL);
    dkv_buf_append_str(&b, "{\"status\":\"ok\",\"version\":\"" DKV_VERSION "\",\"self\":");
    dkv_buf_append_json_str(&b, r->env.self_url);
    if (r->env.identity != NULL) {
        dkv_buf_append(&b, ",", 1);
        dkv_identity_status_json(r->env.identity, &b);
    }
    dkv_buf_printf(&b, ",\"uptime_ms\":%" PRIu64 ",\"cluster\":[",
                   now_ms > r->env.start_ms ? now_ms - r->env.start_ms : 0);
    for (size_t i = 0; i < dkv_ring_size(r->env.ring); i++) {
        if (i > 0) {
            dkv_buf_append(&b, ",", 1);
        }
        dkv_buf_append_json_str(&b, dkv_ring_url(r->env.ring, i));
    }
    unsigned rf = r->env.replication_factor;
    dkv_buf_printf(&b, "],\"replication_factor\":%u",
                   rf >= 1 && rf <= dkv_ring_size(r->env.ring) ? rf
                                                              : (unsigned)dkv_ring_size(r->env.ring));
    dkv_buf_printf(&b, ",\"inflight\":%zu,\"peers\":[", dkv_coord_inflight(r->env.coord));
    if (r->env.rpc_shared != NULL) {
        dkv_rpc_status_json(r->env.rpc_shared, r->env.ring, r->env.self_idx, r->env.n_loops, &b);
    }
    dkv_buf_append_str(&b, "]");
    if (r->env.store != NULL) {
        dkv_buf_append_str(&b, ",\"storage\":");
        storage_json(r, &b);
    }
    dkv_buf_append_str(&b, ",\"hints\":");
    hints_json(r, &b);
    dkv_buf_append_str(&b, ",\"read_repair\":");
    read_repair_json(r, &b);
    if (r->env.rebuild != NULL) {
        dkv_buf_append_str(&b, ",\"rebuild\":");
        dkv_rebuild_status_json(r->env.rebuild, &b);
    }
    if (r->env.ae != NULL) {
        dkv_buf_append_str(&b, ",\"anti_entropy\":");
        dkv_ae_status_json(r->env.ae, &b);
    }
    if (r->env.replica != NULL) {
        dkv_buf_printf(&b, ",\"clock\":{\"max_offset_ms\":%" PRIu64 ",\"future_refused\":%" PRIu64,
                       r->env.max_clock_offset_ms, dkv_replica_future_refused(r->env.replica));
        if (r->env.hlc != NULL) {
            dkv_buf_printf(&b,
                           ",\"wall_ms\":%" PRIu64 ",\"hlc_bound_ms\":%" PRIu64
                           ",\"bound_persist_failures\":%" PRIu64
                           ",\"bound_sync_extensions\":%" PRIu64,
                           now_ms, dkv_hlc_bound_ms(r->env.hlc),
                           atomic_load(&r->env.hlc->persist_failures),
                           atomic_load(&r->env.hlc->persist_sync));
        }
        dkv_skew_t *skew = r->env.rpc_shared != NULL ? r->env.rpc_shared->skew : NULL;
        if (skew != NULL) {
            dkv_buf_append(&b, ",", 1);
            dkv_skew_status_json(skew, &b);
        } else {
            dkv_buf_append_str(&b, ",\"writes_refused\":false,\"reason\":null,"
                                   "\"peers_measured\":0,\"peers_off\":0,\"refused_writes\":0");
        }
        dkv_buf_append_str(&b, "}");
    }
    dkv_buf_append_str(&b, "}\n");
    dkv_response_t resp = {
        .status = 200, .content_type = "application/json", .extra_headers = ROUTER_CORS_HEADER};
    resp.body = dkv_buf_slice(&b);
    resp.body_owner.len = b.len;
    resp.body_owner.ptr = dkv_buf_steal(&b);
    resp.body_owner.free_fn = (void (*)(uint8_t *))free;
    cb(arg, &resp);
}

void dkv_router_handle(dkv_router_t *r, const dkv_request_t *req, dkv_router_reply_cb cb,
                       void *arg)
{
    const uint8_t *qmark = req->url.len > 0 ? memchr(req->url.ptr, '?', req->url.len) : NULL;
    dkv_slice_t path = dkv_slice(req->url.ptr, qmark != NULL ? (size_t)(qmark - req->url.ptr)
                                                             : req->url.len);
    dkv_slice_t query = qmark != NULL ? dkv_slice(qmark + 1, req->url.len - path.len - 1)
                                      : dkv_slice(NULL, 0);
    void (*handler)(dkv_router_t *, const dkv_request_t *, dkv_query_t *, dkv_router_reply_cb,
                    void *) = NULL;
    if (dkv_slice_eq_str(path, "/v0/entity")) {
        handler = handle_entity;
    } else if (dkv_slice_eq_str(path, "/v0/entities")) {
        handler = handle_entities;
    } else if (dkv_slice_eq_str(path, "/v0/status")) {
        handler = handle_status;
    } else if (dkv_slice_eq_str(path, "/v0/admin/hints")) {
        handler = handle_admin_hints;
    } else if (dkv_slice_eq_str(path, "/v0/admin/hints/sync")) {
        handler = handle_admin_hints_sync;
    } else if (dkv_slice_eq_str(path, "/v0/admin/rebuild-done")) {
        handler = handle_admin_rebuild_done;
    } else if (dkv_slice_eq_str(path, "/v0/admin/repair")) {
        handler = handle_admin_repair;
    } else if (dkv_slice_eq_str(path, "/v0/admin/compact")) {
        handler = handle_admin_compact;
    } else if (dkv_slice_eq_str(path, "/v0/admin/checkpoint")) {
        handler = handle_admin_checkpoint;
    } else if (dkv_slice_eq_str(path, "/metrics")) {
        handler = router_handle_metrics;
    } else if (dkv_slice_eq_str(path, "/v0/health")) {
        handler = router_handle_health;
    } else if (dkv_slice_eq_str(path, "/v0/ready")) {
        handler = router_handle_ready;
    } else if (dkv_slice_eq_str(path, "/")) {
        handler = router_handle_page;
    } else {
        reply_text(cb, arg, 400, "Bad Request: unknown path\n");
        return;
    }
    dkv_query_t q;
    int rc = dkv_query_parse(query, &q);
    if (rc != 0) {
        if (handler == handle_entity &&
            (req->method == DKV_METHOD_OTHER || req->method == DKV_METHOD_POST)) {
            reply_text(cb, arg, 405, "Method Not Allowed: use GET, PUT or DELETE\n");
        } else {
            reply_text(cb, arg, 400, "Bad Request: malformed percent-escape in the query\n");
        }
        dkv_query_cleanup(&q);
        return;
    }
    handler(r, req, &q, cb, arg);
    dkv_query_cleanup(&q);
}
