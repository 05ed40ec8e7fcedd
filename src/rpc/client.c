/*
 * RPC client of one I/O thread: one persistent, pipelined connection per peer.
 *
 * DESIGN
 * - Frames are appended to the peer's output buffer and flushed once per loop iteration (a
 *   uv_check handle), so the replica requests of many client requests share one write(2).
 * - The server answers in request order, so pending requests form a FIFO per connection and a
 *   reply must match the head's request id; anything else is a protocol error that resets the
 *   connection. A request that times out keeps its FIFO slot (with no callback) until its reply
 *   or the connection's end.
 * - Circuit breaker per peer (Nygard, "Release It!", ch. 5): closed -> open after K consecutive
 *   failures; while open requests fail at once and the connection is closed; after the cooldown
 *   one request goes through as a probe (half-open). The breaker exists for slow failures
 *   (timeouts): when the peer's port refused the last connection, a request may try a fresh
 *   connection at once (one at a time), since a refusal costs microseconds; so a restarted peer
 *   is reached on the very next request (API.md §8). While open, a background connection attempt
 *   (with exponential backoff) closes the breaker as soon as a handshake succeeds, and so does a
 *   handshake the peer makes with our server (dkv_rpc_shared_t).
 * - Idle connections: the peer's server closes a connection idle for its idle timeout; we close
 *   ours after a shorter one (opts.idle_timeout_ms) when nothing is pending. So the side that
 *   knows no request is in flight closes first, and a request never races the server's close.
 * - Clock offsets (opts.ping_interval_ms, one client per node): the sweep sends each peer a PING
 *   every interval on the ordinary connection (connecting in the background when there is none)
 *   and feeds the round trip and the PONG's wall clock to shared->skew (cluster/skew.h). A PING
 *   has no callback: it never counts for the breaker, and an unanswered one only lets the
 *   peer's estimate go stale. One PING per peer is in flight at a time.
 */
#include "rpc/proto.h"
#include "rpc/rpc.h"

#include "common/err.h"
#include "common/log.h"
#include "common/uvwrite.h"

#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define READ_BUF_BYTES (64u << 10)
#define PROBE_BACKOFF_MIN_MS 50u
#define PROBE_BACKOFF_MAX_MS 1000u
/* Bytes waiting to be written to one peer past which new requests to it fail at once: a peer that
 * stops reading (hung, or far slower than us) must not grow our memory without bound. */
#define MAX_QUEUED_BYTES (64u << 20)

enum conn_state { DISCONNECTED, CONNECTING, CONNECTED };
enum breaker_state { BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN };
_Static_assert((int)BREAKER_OPEN == (int)DKV_METRICS_OPEN &&
                   (int)BREAKER_HALF_OPEN == (int)DKV_METRICS_HALF_OPEN,
               "the metrics name breaker states by these values");
_Static_assert(DKV_METRICS_MAX_PEERS >= DKV_RING_MAX_NODES, "metrics count every peer");

typedef struct pending {
    struct pending *next;
    uint64_t req_id;
    uint64_t deadline_ms;
    dkv_rpc_reply_cb cb; /* NULL once answered (timed out) or for the HELLO */
    dkv_rpc_scan_cb scan_cb;     /* instead of cb for a SCAN or TREE */
    dkv_rpc_digest_cb digest_cb; /* instead of cb for a DIGEST */
    void *arg;
    uint8_t expect; /* the reply type that answers it (DKV_RPC_GET_REPLY, ...) */
    bool is_probe;
    uint64_t sent_ns; /* uv_hrtime() when queued: a PING, or any request when the client counts
                         metrics */
} pending_t;

typedef struct peer peer_t;

typedef struct link {
    peer_t *peer; /* NULL once the peer let go of this connection */
    uv_tcp_t tcp;
    uv_connect_t connect_req;
} link_t;

struct peer {
    dkv_rpc_client_t *client;
    uint32_t idx;
    const char *url;
    struct sockaddr_storage addr;
    enum conn_state state;
    link_t *link;
    uint64_t connect_deadline_ms;
    bool hello_ok;
    dkv_buf_t out; /* frames not yet written */
    dkv_buf_t in;  /* bytes of an incomplete reply frame */
    pending_t *head;
    pending_t *tail;
    size_t n_pending;
    enum breaker_state breaker;
    unsigned failures; /* consecutive */
    uint64_t open_until_ms;
    bool probe_inflight;
    uint32_t seen_epoch;
    uint64_t next_probe_ms;
    uint64_t probe_backoff_ms;
    bool background; /* the current connection is a background probe */
    bool dirty;      /* `out` has bytes to flush */
    bool rejected;   /* the peer refused our handshake (different cluster) and no handshake has
                        succeeded since */
    uint8_t hs;      /* dkv_rpc_handshake_t, but for REJECTED, which `rejected` says */
    bool refused;    /* the last failed connection attempt was refused (the port was closed)
                        and no handshake has succeeded since */
    bool auth_wait;  /* authenticated handshake: HELLO sent, nothing else until its challenge */
    uint64_t last_used_ms; /* last request sent or reply received on the current connection */
    size_t hello_bytes; /* the HELLO frame at the head of `out`, not yet written */
    uint8_t transcript[32]; /* SHA-256 of our HELLO frame (rpc/auth.h) */
    bool ping_inflight;     /* a PING waits for its PONG on the current connection */
    uint64_t next_ping_ms;
};

struct dkv_rpc_client {
    uv_loop_t *loop;
    const dkv_ring_t *ring;
    uint32_t self_idx;
    dkv_hlc_t *hlc;
    dkv_rpc_shared_t *shared;
    unsigned loop_idx;
    dkv_rpc_client_opts_t opts; /* max_frame_bytes filled in */
    uint64_t fingerprint;
    size_t n_peers;
    peer_t *peers; /* indexed by ring index; self's slot unused */
    uv_check_t flush_check;
    uv_timer_t sweep;
    uint64_t next_eval_ms; /* next evaluation of shared->skew's verdict */
    uint64_t dial_for_clock_ms; /* from then on, PINGs may open connections (see ping()) */
    uint64_t next_req_id;
    int open_handles;
    int open_links;
    bool closing;
    void (*close_cb)(void *arg);
    void *close_arg;
    char readbuf[READ_BUF_BYTES];
};

static void peer_disconnect(peer_t *p, int rc);
static void peer_connect(peer_t *p, bool background);
static void client_maybe_freed(dkv_rpc_client_t *c);
static void on_flush_check(uv_check_t *h);
static void publish(peer_t *p);

static uint64_t now_ms(const dkv_rpc_client_t *c)
{
    return uv_now(c->loop);
}

/* ---- metrics ---- */

static void count_transition(peer_t *p, enum breaker_state to)
{
    dkv_metrics_loop_t *m = p->client->opts.metrics;
    if (m != NULL) {
        dkv_metrics_inc(&m->breaker_transitions[p->idx][to]);
    }
}

/* A request failed at once, never sent (breaker open, no connection, queue full). */
static void count_rejected(peer_t *p)
{
    dkv_metrics_loop_t *m = p->client->opts.metrics;
    if (m != NULL) {
        dkv_metrics_inc(&m->rpc_requests[p->idx][DKV_METRICS_RPC_REJECTED]);
    }
}

/* One replica request ended with `rc` (dkv_rpc_reply_cb's codes). */
static void count_outcome(peer_t *p, const pending_t *req, int rc)
{
    dkv_metrics_loop_t *m = p->client->opts.metrics;
    if (m == NULL) {
        return;
    }
    unsigned o = DKV_METRICS_RPC_ERROR;
    if (rc == 0 || rc == DKV_ENOTFOUND) {
        o = DKV_METRICS_RPC_OK;
    } else if (rc == DKV_ENOTREADY) {
        o = DKV_METRICS_RPC_NOT_READY;
    } else if (rc == DKV_ETIMEDOUT) {
        o = DKV_METRICS_RPC_TIMEOUT;
    } else if (rc == DKV_EUNAVAIL) {
        o = DKV_METRICS_RPC_UNAVAILABLE;
    }
    dkv_metrics_inc(&m->rpc_requests[p->idx][o]);
    dkv_metrics_observe(&m->rpc_latency[p->idx], uv_hrtime() - req->sent_ns);
}


/* ---- circuit breaker ---- */

static void breaker_close(peer_t *p, const char *why)
{
    if (p->breaker != BREAKER_CLOSED) {
        DKV_LOG_INFO("rpc: peer %s: circuit breaker closed (%s)", p->url, why);
        count_transition(p, BREAKER_CLOSED);
    }
    p->breaker = BREAKER_CLOSED;
    p->failures = 0;
    p->probe_inflight = false;
    p->probe_backoff_ms = PROBE_BACKOFF_MIN_MS;
    publish(p);
}

static void breaker_open(peer_t *p)
{
    dkv_rpc_client_t *c = p->client;
    if (p->breaker != BREAKER_OPEN) {
        DKV_LOG_WARN("rpc: peer %s: circuit breaker open after %u consecutive failure(s); "
                     "failing its requests at once for %llu ms",
                     p->url, p->failures, (unsigned long long)c->opts.breaker_cooldown_ms);
        count_transition(p, BREAKER_OPEN);
    }
    p->breaker = BREAKER_OPEN;
    p->probe_inflight = false;
    p->open_until_ms = now_ms(c) + c->opts.breaker_cooldown_ms;
    p->next_probe_ms = now_ms(c) + p->probe_backoff_ms;
    if (p->state != DISCONNECTED) {
        peer_disconnect(p, DKV_EUNAVAIL);
    }
    publish(p);
}

static void breaker_success(peer_t *p)
{
    if (p->breaker != BREAKER_CLOSED) {
        breaker_close(p, "request succeeded");
    }
    p->failures = 0;
    publish(p);
}

static void breaker_failure(peer_t *p, bool probe)
{
    p->failures++;
    if (probe || p->breaker == BREAKER_HALF_OPEN ||
        (p->breaker == BREAKER_CLOSED && p->failures >= p->client->opts.breaker_failures)) {
        breaker_open(p);
    }
    publish(p);
}

/* May a request go to this peer now? Moves open -> half-open after the cooldown. */
static int breaker_admit(peer_t *p, bool *probe)
{
    dkv_rpc_client_t *c = p->client;
    uint32_t epoch = atomic_load(&c->shared->peer_epoch[p->idx]);
    if (epoch != p->seen_epoch) {
        p->seen_epoch = epoch;
        if (p->breaker != BREAKER_CLOSED) {
            breaker_close(p, "the peer connected to us");
        }
    }
    *probe = false;
    switch (p->breaker) {
    case BREAKER_CLOSED:
        return 0;
    case BREAKER_OPEN:
        if (p->refused && !p->probe_inflight && (p->state == DISCONNECTED || p->background)) {
            /* A refused connection fails in microseconds, so trying again costs the request
             * nothing and reaches a restarted peer on the very next request (API.md §8). A
             * background reconnection already under way carries the request instead. */
            p->probe_inflight = true;
            *probe = true;
            return 0;
        }
        if (now_ms(c) < p->open_until_ms) {
            return DKV_EUNAVAIL;
        }
        p->breaker = BREAKER_HALF_OPEN;
        count_transition(p, BREAKER_HALF_OPEN);
        publish(p);
        DKV_LOG_INFO("rpc: peer %s: circuit breaker half-open, sending one probe", p->url);
        /* fall through */
    case BREAKER_HALF_OPEN:
        if (p->probe_inflight) {
            return DKV_EUNAVAIL;
        }
        p->probe_inflight = true;
        *probe = true;
        return 0;
    }
    return DKV_EUNAVAIL;
}

/* ---- pending requests ---- */

/* Is someone still waiting for this request's reply? */
static bool live(const pending_t *req)
{
    return req->cb != NULL || req->scan_cb != NULL || req->digest_cb != NULL;
}

/* `msg` is the SCAN_REPLY, TREE_REPLY or DIGEST_REPLY for a request answered with rc 0, else
 * NULL. */
static void complete_msg(peer_t *p, pending_t *req, int rc, const dkv_record_t *rec,
                         const dkv_rpc_msg_t *msg)
{
    if (!live(req)) {
        return;
    }
    /* Copy what we need first: a breaker that opens below closes the connection and frees every
     * pending request, `req` included. */
    dkv_rpc_reply_cb cb = req->cb;
    dkv_rpc_scan_cb scan_cb = req->scan_cb;
    dkv_rpc_digest_cb digest_cb = req->digest_cb;
    void *arg = req->arg;
    bool probe = req->is_probe;
    req->cb = NULL;
    req->scan_cb = NULL;
    req->digest_cb = NULL;
    count_outcome(p, req, rc);
    if (probe) {
        p->probe_inflight = false;
    }
    if (rc == 0 || rc == DKV_ENOTFOUND || rc == DKV_ENOTREADY) {
        breaker_success(p);
    } else if (!p->client->closing) {
        breaker_failure(p, probe);
    }
    if (scan_cb != NULL) {
        scan_cb(arg, rc, rc == 0 ? msg : NULL);
    } else if (digest_cb != NULL) {
        digest_cb(arg, rc, rc == 0 && msg != NULL ? &msg->digest_reply.digest : NULL);
    } else {
        cb(arg, rc, rec);
    }
}

static void complete(peer_t *p, pending_t *req, int rc, const dkv_record_t *rec)
{
    complete_msg(p, req, rc, rec, NULL);
}

static void fail_all(peer_t *p, int rc)
{
    pending_t *req = p->head;
    p->head = p->tail = NULL;
    p->n_pending = 0;
    while (req != NULL) {
        pending_t *next = req->next;
        /* Only the first failure counts for the breaker: the rest are the same event. */
        if (live(req)) {
            dkv_rpc_reply_cb cb = req->cb;
            dkv_rpc_scan_cb scan_cb = req->scan_cb;
            dkv_rpc_digest_cb digest_cb = req->digest_cb;
            req->cb = NULL;
            req->scan_cb = NULL;
            req->digest_cb = NULL;
            if (req->is_probe) {
                p->probe_inflight = false;
            }
            count_outcome(p, req, rc);
            if (scan_cb != NULL) {
                scan_cb(req->arg, rc, NULL);
            } else if (digest_cb != NULL) {
                digest_cb(req->arg, rc, NULL);
            } else {
                cb(req->arg, rc, NULL);
            }
        }
        free(req);
        req = next;
    }
    publish(p);
}

static pending_t *enqueue(peer_t *p, uint64_t req_id, dkv_rpc_reply_cb cb, void *arg,
                          uint8_t expect, uint64_t timeout_ms)
{
    pending_t *req = dkv_xcalloc(1, sizeof(*req));
    req->req_id = req_id;
    req->deadline_ms = now_ms(p->client) + timeout_ms;
    req->cb = cb;
    req->arg = arg;
    req->expect = expect;
    if (p->tail != NULL) {
        p->tail->next = req;
    } else {
        p->head = req;
    }
    p->tail = req;
    p->n_pending++;
    publish(p);
    return req;
}

/* ---- connection ---- */

static void on_link_closed(uv_handle_t *h)
{
    link_t *l = h->data;
    dkv_rpc_client_t *c = l->peer != NULL ? l->peer->client : NULL;
    free(l);
    if (c != NULL) {
        c->open_links--;
        client_maybe_freed(c);
    }
}

static void peer_disconnect(peer_t *p, int rc)
{
    if (p->state == DISCONNECTED) {
        return;
    }
    link_t *l = p->link;
    p->link = NULL;
    p->state = DISCONNECTED;
    p->hello_ok = false;
    p->background = false;
    p->auth_wait = false;
    p->hello_bytes = 0;
    p->ping_inflight = false;
    p->out.len = 0;
    p->in.len = 0;
    p->dirty = false;
    /* `l->peer` stays set so on_link_closed can find the client; callbacks check p->link. */
    uv_close((uv_handle_t *)&l->tcp, on_link_closed);
    fail_all(p, rc);
}

/* A failure of the connection itself: counts once for the breaker, fails everything pending. */
static void peer_conn_failed(peer_t *p, int rc, const char *what)
{
    bool had_requests = false;
    bool probe = false;
    for (pending_t *r = p->head; r != NULL; r = r->next) {
        had_requests = had_requests || live(r);
        probe = probe || (live(r) && r->is_probe);
    }
    DKV_LOG_DEBUG("rpc: peer %s: %s", p->url, what);
    if (!p->rejected) {
        p->hs = DKV_RPC_HS_FAILED;
    }
    bool background = p->background;
    peer_disconnect(p, rc);
    if (background) {
        p->probe_backoff_ms = p->probe_backoff_ms * 2 > PROBE_BACKOFF_MAX_MS
                                  ? PROBE_BACKOFF_MAX_MS
                                  : p->probe_backoff_ms * 2;
        p->next_probe_ms = now_ms(p->client) + p->probe_backoff_ms;
    } else if (had_requests && !p->client->closing) {
        breaker_failure(p, probe);
    }
}

static void mark_dirty(peer_t *p)
{
    dkv_rpc_client_t *c = p->client;
    if (!p->dirty) {
        p->dirty = true;
        if (!uv_is_active((uv_handle_t *)&c->flush_check)) {
            uv_check_start(&c->flush_check, on_flush_check);
        }
    }
}



static void peer_flush(peer_t *p)
{
    p->dirty = false;
    if (p->state != CONNECTED || p->out.len == 0) {
        return;
    }
    if (p->auth_wait) {
        /* Only the HELLO goes out before the server proved it knows the secret; requests wait
         * behind it and follow the AUTH (the server would refuse them before it). */
        if (p->hello_bytes == 0) {
            return;
        }
        dkv_buf_t hello;
        dkv_buf_init(&hello);
        dkv_buf_append(&hello, p->out.data, p->hello_bytes);
        dkv_buf_consume(&p->out, p->hello_bytes);
        p->hello_bytes = 0;
        bool queued = false;
        int rc = dkv_uvwrite((uv_stream_t *)&p->link->tcp, &hello, NULL, NULL, &queued);
        dkv_buf_cleanup(&hello);
        if (rc != 0) {
            peer_conn_failed(p, DKV_EUNAVAIL, "write failed");
        }
        return;
    }
    /* A failed queued write also fails the read side, which handles it. */
    bool queued = false;
    if (dkv_uvwrite((uv_stream_t *)&p->link->tcp, &p->out, NULL, NULL, &queued) != 0) {
        peer_conn_failed(p, DKV_EUNAVAIL, "write failed");
    }
}

static void on_flush_check(uv_check_t *h)
{
    dkv_rpc_client_t *c = h->data;
    uv_check_stop(h);
    for (size_t i = 0; i < c->n_peers; i++) {
        if (c->peers[i].dirty) {
            peer_flush(&c->peers[i]);
        }
    }
}

/* The server proved it knows the secret: prove it back with AUTH, then let the held requests
 * go. The AUTH's pending entry goes first in the FIFO, where the HELLO's was. */
static void handle_challenge(peer_t *p, pending_t *hello, const dkv_rpc_msg_t *m)
{
    dkv_rpc_client_t *c = p->client;
    int key = -1;
    if (hello->expect == DKV_RPC_HELLO_CHALLENGE && c->shared->auth != NULL) {
        key = dkv_auth_check_server(c->shared->auth, p->transcript, m->challenge.nonce,
                                    m->challenge.tag);
    }
    free(hello);
    if (key < 0) {
        DKV_LOG_ERROR("rpc: peer %s failed authentication (a different --cluster-secret-file?); "
                      "not using it",
                      p->url);
        p->rejected = true;
        peer_conn_failed(p, DKV_EUNAVAIL, "peer failed authentication");
        return;
    }
    uint8_t tag[DKV_RPC_TAG_BYTES];
    dkv_auth_client_tag(c->shared->auth, key, p->transcript, m->challenge.nonce, m->challenge.tag,
                        tag);
    dkv_buf_t out;
    dkv_buf_init(&out);
    uint64_t id = c->next_req_id++;
    dkv_rpc_encode_auth(&out, id, tag);
    dkv_buf_append(&out, p->out.data, p->out.len);
    dkv_buf_cleanup(&p->out);
    p->out = out;
    pending_t *req = dkv_xcalloc(1, sizeof(*req));
    req->req_id = id;
    req->deadline_ms = now_ms(c) + c->opts.request_timeout_ms;
    req->expect = DKV_RPC_HELLO_OK;
    req->next = p->head;
    p->head = req;
    if (p->tail == NULL) {
        p->tail = req;
    }
    p->n_pending++;
    p->auth_wait = false;
    mark_dirty(p);
}

static void handle_reply(peer_t *p, const dkv_rpc_msg_t *m)
{
    pending_t *req = p->head;
    if (req == NULL || req->req_id != m->req_id) {
        peer_conn_failed(p, DKV_EPROTO, "reply out of order");
        return;
    }
    p->head = req->next;
    if (p->head == NULL) {
        p->tail = NULL;
    }
    p->n_pending--;
    p->last_used_ms = now_ms(p->client);
    if (req->expect == DKV_RPC_PONG) {
        p->ping_inflight = false; /* answered, rightly or not */
    }
    switch (m->type) {
    case DKV_RPC_HELLO_CHALLENGE:
        handle_challenge(p, req, m);
        return;
    case DKV_RPC_HELLO_OK:
        if (req->expect != DKV_RPC_HELLO_OK) {
            /* We asked for an authenticated handshake and the server accepted us without one:
             * it does not know the secret, so it is not to be trusted with our requests. */
            DKV_LOG_ERROR("rpc: peer %s did not authenticate itself (is its "
                          "--cluster-secret-file set?); not using it",
                          p->url);
            p->rejected = true;
            free(req);
            peer_conn_failed(p, DKV_EUNAVAIL, "peer not authenticated");
            return;
        }
        p->hello_ok = true;
        p->refused = false;
        p->rejected = false;
        p->hs = DKV_RPC_HS_OK;
        if (m->hello_ok.has_ident && p->client->shared->identity != NULL) {
            dkv_identity_observe(p->client->shared->identity, p->idx, &m->hello_ok.ident);
        }
        if (p->background) {
            p->background = false;
            breaker_close(p, "handshake succeeded");
        }
        break;
    case DKV_RPC_HELLO_REJECT:
        DKV_LOG_ERROR("rpc: peer %s refused our handshake: %.*s (is --cluster the same on every "
                      "node?)",
                      p->url, (int)m->hello_reject.reason.len,
                      (const char *)m->hello_reject.reason.ptr);
        p->rejected = true;
        free(req);
        peer_conn_failed(p, DKV_EUNAVAIL, "handshake refused");
        return;
    case DKV_RPC_GET_REPLY:
        if (req->expect != DKV_RPC_GET_REPLY) {
            complete(p, req, DKV_EPROTO, NULL);
        } else if (m->get_reply.status == DKV_RPC_OK) {
            complete(p, req, 0, &m->get_reply.rec);
        } else if (m->get_reply.status == DKV_RPC_ABSENT) {
            complete(p, req, DKV_ENOTFOUND, NULL);
        } else if (m->get_reply.status == DKV_RPC_NOT_READY) {
            complete(p, req, DKV_ENOTREADY, NULL);
        } else {
            complete(p, req, DKV_EIO, NULL);
        }
        break;
    case DKV_RPC_DIGEST_REPLY:
        if (req->expect != DKV_RPC_DIGEST_REPLY) {
            complete(p, req, DKV_EPROTO, NULL);
        } else if (m->digest_reply.status == DKV_RPC_OK) {
            complete_msg(p, req, 0, NULL, m);
        } else if (m->digest_reply.status == DKV_RPC_ABSENT) {
            complete(p, req, DKV_ENOTFOUND, NULL);
        } else if (m->digest_reply.status == DKV_RPC_NOT_READY) {
            complete(p, req, DKV_ENOTREADY, NULL);
        } else {
            complete(p, req, DKV_EIO, NULL);
        }
        break;
    case DKV_RPC_PUT_REPLY:
        if (req->expect != DKV_RPC_PUT_REPLY) {
            complete(p, req, DKV_EPROTO, NULL);
        } else {
            complete(p, req, m->put_reply.status == DKV_RPC_OK ? 0 : DKV_EIO, NULL);
        }
        break;
    case DKV_RPC_SCAN_REPLY:
        if (req->expect != DKV_RPC_SCAN_REPLY) {
            complete(p, req, DKV_EPROTO, NULL);
        } else {
            complete_msg(p, req, m->scan_reply.status == DKV_RPC_OK ? 0 : DKV_EIO, NULL, m);
        }
        break;
    case DKV_RPC_PONG:
        if (req->expect != DKV_RPC_PONG) {
            complete(p, req, DKV_EPROTO, NULL);
            break;
        }
        if (p->client->shared->skew != NULL) {
            dkv_rpc_client_t *c = p->client;
            uint64_t now_ns = uv_hrtime();
            dkv_skew_sample(c->shared->skew, p->idx, (now_ns - req->sent_ns) / 1000u,
                            c->hlc->clock_ms(c->hlc->clock_ctx), m->pong.wall_ms,
                            now_ns / 1000000u);
            dkv_skew_evaluate(c->shared->skew, now_ns / 1000000u);
        }
        break;
    case DKV_RPC_TREE_REPLY:
        if (req->expect != DKV_RPC_TREE_REPLY) {
            complete(p, req, DKV_EPROTO, NULL);
        } else {
            int trc = m->tree_reply.status == DKV_RPC_OK          ? 0
                      : m->tree_reply.status == DKV_RPC_NOT_READY ? DKV_ENOTREADY
                                                                  : DKV_EIO;
            complete_msg(p, req, trc, NULL, m);
        }
        break;
    default:
        complete(p, req, DKV_EPROTO, NULL);
        break;
    }
    free(req);
    if (p->link != NULL) {
        publish(p);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    link_t *l = h->data;
    dkv_rpc_client_t *c = l->peer->client;
    *buf = uv_buf_init(c->readbuf, sizeof(c->readbuf));
}

/* Parses complete frames from `data`; returns bytes consumed, or -1 after a protocol error. */
static long parse_frames(peer_t *p, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len && p->link != NULL) {
        size_t frame_bytes = 0;
        int rc = dkv_rpc_frame_peek(dkv_slice(data + off, len - off),
                                    p->client->opts.max_frame_bytes, &frame_bytes);
        if (rc == DKV_RPC_NEED_MORE || (rc == 0 && frame_bytes > len - off)) {
            break;
        }
        dkv_rpc_msg_t m;
        if (rc == 0) {
            rc = dkv_rpc_decode(dkv_slice(data + off, frame_bytes), &m);
        }
        if (rc != 0) {
            peer_conn_failed(p, DKV_EPROTO, "malformed reply frame");
            return -1;
        }
        off += frame_bytes;
        handle_reply(p, &m);
    }
    return (long)off;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    link_t *l = s->data;
    peer_t *p = l->peer;
    if (p == NULL || p->link != l) {
        return;
    }
    if (nread < 0) {
        peer_conn_failed(p, DKV_EUNAVAIL,
                         nread == UV_EOF ? "connection closed by peer" : uv_strerror((int)nread));
        return;
    }
    const uint8_t *data = (const uint8_t *)buf->base;
    size_t len = (size_t)nread;
    if (p->in.len == 0) {
        long used = parse_frames(p, data, len);
        if (used >= 0 && p->link == l && (size_t)used < len) {
            dkv_buf_append(&p->in, data + used, len - (size_t)used);
        }
        return;
    }
    dkv_buf_append(&p->in, data, len);
    long used = parse_frames(p, p->in.data, p->in.len);
    if (used > 0 && p->link == l) {
        dkv_buf_consume(&p->in, (size_t)used);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    link_t *l = req->data;
    peer_t *p = l->peer;
    if (p == NULL || p->link != l) {
        return;
    }
    if (status < 0) {
        p->refused = status == UV_ECONNREFUSED;
        peer_conn_failed(p, DKV_EUNAVAIL, uv_strerror(status));
        return;
    }
    p->state = CONNECTED;
    p->last_used_ms = now_ms(p->client);
    uv_tcp_nodelay(&l->tcp, 1);
    if (uv_read_start((uv_stream_t *)&l->tcp, on_alloc, on_read) != 0) {
        peer_conn_failed(p, DKV_EUNAVAIL, "read_start failed");
        return;
    }
    mark_dirty(p);
}

static void peer_connect(peer_t *p, bool background)
{
    dkv_rpc_client_t *c = p->client;
    link_t *l = dkv_xcalloc(1, sizeof(*l));
    l->peer = p;
    uv_tcp_init(c->loop, &l->tcp);
    l->tcp.data = l;
    l->connect_req.data = l;
    c->open_links++;
    p->link = l;
    p->state = CONNECTING;
    p->background = background;
    p->hello_ok = false;
    p->connect_deadline_ms = now_ms(c) + c->opts.request_timeout_ms;
    int rc =
        uv_tcp_connect(&l->connect_req, &l->tcp, (const struct sockaddr *)&p->addr, on_connect);
    /* The HELLO goes first; requests may be pipelined right behind it. */
    uint64_t id = c->next_req_id++;
    dkv_ident_info_t ident;
    if (c->shared->identity != NULL) {
        dkv_identity_info_for(c->shared->identity, p->idx, &ident);
    }
    uint8_t nonce[DKV_RPC_NONCE_BYTES];
    bool auth = c->shared->auth != NULL;
    if (auth) {
        dkv_auth_nonce(nonce);
        if (c->shared->identity == NULL) {
            memset(&ident, 0, sizeof(ident)); /* the nonce rides after an identity block */
        }
    }
    size_t hello_off = p->out.len;
    dkv_rpc_encode_hello(&p->out, id, c->fingerprint,
                         dkv_slice_str(dkv_ring_url(c->ring, c->self_idx)),
                         c->shared->identity != NULL || auth ? &ident : NULL,
                         auth ? nonce : NULL);
    p->auth_wait = auth;
    p->hello_bytes = 0;
    if (auth) {
        /* Nothing can precede the HELLO in `out`: a new connection starts with an empty one. */
        p->hello_bytes = p->out.len - hello_off;
        dkv_auth_transcript(dkv_slice(p->out.data + hello_off, p->hello_bytes), p->transcript);
    }
    enqueue(p, id, NULL, NULL, auth ? DKV_RPC_HELLO_CHALLENGE : DKV_RPC_HELLO_OK,
            c->opts.request_timeout_ms);
    if (rc != 0) {
        peer_conn_failed(p, DKV_EUNAVAIL, uv_strerror(rc));
    }
}

/* ---- timers ---- */

/* Does the node need to hear from its peers (joining, or ready on probation)? One loop, the
 * first, reaches out to every peer. */
static bool joining(const dkv_rpc_client_t *c)
{
    return c->loop_idx == 0 && c->shared->identity != NULL &&
           dkv_identity_wants_peers(c->shared->identity);
}

/* Does this client measure its peers' clocks? */
static bool measuring(const dkv_rpc_client_t *c)
{
    return c->opts.ping_interval_ms != 0 && c->shared->skew != NULL && !c->closing;
}

/* Sends `p` a PING, or connects to it in the background first (the next sweep after the
 * handshake sends it). */
static void ping(peer_t *p, uint64_t now)
{
    dkv_rpc_client_t *c = p->client;
    if (p->state == DISCONNECTED) {
        /* Not in the first seconds after start: a restarted node's handshakes tell wiped peers
         * that their data was lost (cluster/identity.h), and dialling every peer at once then
         * makes two wiped nodes start rebuilding at the same moment, each waiting for the
         * other's stream (a rebuilding node serves none). Their own staggered reach-outs let one
         * finish first, as before PINGs existed. Connections that exist are measured at once. */
        if (now >= c->dial_for_clock_ms && p->breaker == BREAKER_CLOSED && !p->rejected &&
            now >= p->next_probe_ms) {
            /* An open breaker has its own background reconnection. */
            p->next_ping_ms = now + c->opts.ping_interval_ms;
            peer_connect(p, true);
        }
        return;
    }
    if (p->state != CONNECTED || !p->hello_ok || p->ping_inflight || p->auth_wait) {
        return;
    }
    p->next_ping_ms = now + c->opts.ping_interval_ms;
    uint64_t id = c->next_req_id++;
    dkv_rpc_encode_ping(&p->out, id);
    pending_t *req = enqueue(p, id, NULL, NULL, DKV_RPC_PONG, c->opts.request_timeout_ms);
    req->sent_ns = uv_hrtime();
    p->ping_inflight = true;
    mark_dirty(p);
}

static void on_sweep(uv_timer_t *t)
{
    dkv_rpc_client_t *c = t->data;
    uint64_t now = now_ms(c);
    for (size_t i = 0; i < c->n_peers; i++) {
        peer_t *p = &c->peers[i];
        if (i == c->self_idx) {
            continue;
        }
        if (p->state == CONNECTING && now >= p->connect_deadline_ms) {
            peer_conn_failed(p, DKV_ETIMEDOUT, "connect timed out");
            continue;
        }
        bool timed_out = false;
        /* Requests carry their own timeouts, so the FIFO is not ordered by deadline: look at
         * every one (a handful per peer; a failed connection has none). */
        for (pending_t *r = p->head; r != NULL; r = r->next) {
            if (r->deadline_ms > now) {
                continue;
            }
            if (live(r)) {
                complete(p, r, DKV_ETIMEDOUT, NULL);
                timed_out = true;
            } else if (r == p->head && p->background && !p->hello_ok) {
                timed_out = true; /* a probe's handshake that never answered */
            }
            if (p->link == NULL) {
                break; /* the breaker opened and closed the connection */
            }
        }
        if (timed_out && p->background && p->link != NULL) {
            peer_conn_failed(p, DKV_ETIMEDOUT, "handshake timed out");
        }
        if (c->opts.idle_timeout_ms != 0 && p->state == CONNECTED && p->hello_ok &&
            p->n_pending == 0 && p->out.len == 0 &&
            now - p->last_used_ms >= c->opts.idle_timeout_ms) {
            /* Nothing is in flight, so closing cannot fail a request; the next one reconnects. */
            DKV_LOG_DEBUG("rpc: peer %s: closing the connection after %llu ms unused", p->url,
                          (unsigned long long)(now - p->last_used_ms));
            peer_disconnect(p, DKV_EUNAVAIL);
            continue;
        }
        if (p->breaker == BREAKER_OPEN && p->state == DISCONNECTED && !p->rejected &&
            now >= p->next_probe_ms) {
            peer_connect(p, true);
        } else if (joining(c) && p->breaker == BREAKER_CLOSED && p->state == DISCONNECTED &&
                   !p->rejected && now >= p->next_probe_ms) {
            /* A node that started empty learns from a peer's handshake whether it is new or
             * lost its data (cluster/identity.h): reach out rather than wait for traffic. */
            peer_connect(p, true);
        } else if (measuring(c) && now >= p->next_ping_ms) {
            ping(p, now);
        }
    }
    if (measuring(c) && now >= c->next_eval_ms) {
        /* Estimates age out even when no PONG comes (a peer gone): re-evaluate regularly. */
        c->next_eval_ms = now + c->opts.ping_interval_ms / 4;
        dkv_skew_evaluate(c->shared->skew, uv_hrtime() / 1000000u);
    }
}

/* ---- public API ---- */

static int resolve(const char *url, struct sockaddr_storage *addr)
{
    char host[256];
    uint16_t port = 0;
    if (dkv_conf_parse_url(url, host, sizeof(host), &port) != 0) {
        return DKV_EINVAL;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    struct addrinfo *res = NULL;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", (unsigned)port);
    if (getaddrinfo(host, portstr, &hints, &res) != 0 || res == NULL) {
        return DKV_EINVAL;
    }
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

int dkv_rpc_client_new(uv_loop_t *loop, unsigned loop_idx, const dkv_ring_t *ring,
                       uint32_t self_idx, dkv_hlc_t *hlc, dkv_rpc_shared_t *shared,
                       const dkv_rpc_client_opts_t *opts, dkv_rpc_client_t **out)
{
    if (loop_idx >= DKV_RPC_MAX_LOOPS) {
        return DKV_EINVAL;
    }
    dkv_rpc_client_t *c = dkv_xcalloc(1, sizeof(*c));
    c->loop_idx = loop_idx;
    c->loop = loop;
    c->ring = ring;
    c->self_idx = self_idx;
    c->hlc = hlc;
    c->shared = shared;
    c->opts = *opts;
    if (c->opts.max_frame_bytes == 0) {
        c->opts.max_frame_bytes = DKV_RPC_FRAME_LIMIT_MIN_BYTES;
    }
    c->fingerprint = dkv_ring_fingerprint(ring);
    c->n_peers = dkv_ring_size(ring);
    c->peers = dkv_xcalloc(c->n_peers, sizeof(peer_t));
    c->next_req_id = 1;
    for (size_t i = 0; i < c->n_peers; i++) {
        peer_t *p = &c->peers[i];
        p->client = c;
        p->idx = (uint32_t)i;
        p->url = dkv_ring_url(ring, i);
        p->probe_backoff_ms = PROBE_BACKOFF_MIN_MS;
        p->seen_epoch = atomic_load(&shared->peer_epoch[i]);
        if (i != self_idx && resolve(p->url, &p->addr) != 0) {
            DKV_LOG_ERROR("rpc: cannot resolve peer %s", p->url);
            free(c->peers);
            free(c);
            return DKV_EINVAL;
        }
    }
    uv_check_init(loop, &c->flush_check);
    c->flush_check.data = c;
    uv_timer_init(loop, &c->sweep);
    c->sweep.data = c;
    uint64_t tick = opts->request_timeout_ms / 10;
    tick = tick < 5 ? 5 : (tick > 50 ? 50 : tick);
    uv_timer_start(&c->sweep, on_sweep, tick, tick);
    c->dial_for_clock_ms = uv_now(loop) + 3 * opts->ping_interval_ms;
    c->open_handles = 2;
    if (joining(c)) {
        /* Settle "new cluster or lost disk?" before the first request needs this node. */
        for (size_t i = 0; i < c->n_peers; i++) {
            if (i != self_idx) {
                peer_connect(&c->peers[i], true);
            }
        }
    }
    *out = c;
    return 0;
}

int dkv_rpc_client_call(dkv_rpc_client_t *c, uint32_t peer, const dkv_rpc_call_t *call,
                        dkv_rpc_reply_cb cb, void *arg)
{
    if (peer >= c->n_peers || peer == c->self_idx || c->closing) {
        return c->closing ? DKV_EUNAVAIL : DKV_EINVAL;
    }
    bool ok =
        (call->type == DKV_RPC_GET && cb != NULL) ||
        (call->type == DKV_RPC_DIGEST && call->digest_cb != NULL && cb == NULL) ||
        (call->type == DKV_RPC_PUT && call->rec != NULL && cb != NULL) ||
        (call->type == DKV_RPC_SCAN && call->scan != NULL && call->scan_cb != NULL && cb == NULL) ||
        (call->type == DKV_RPC_TREE && call->tree != NULL && call->scan_cb != NULL && cb == NULL);
    if (!ok) {
        return DKV_EINVAL;
    }
    peer_t *p = &c->peers[peer];
    bool probe = false;
    int rc = breaker_admit(p, &probe);
    if (rc != 0) {
        count_rejected(p);
        return rc;
    }
    if (p->state == DISCONNECTED) {
        peer_connect(p, false);
        if (p->state == DISCONNECTED) {
            if (probe) {
                p->probe_inflight = false;
            }
            count_rejected(p);
            return DKV_EUNAVAIL;
        }
    }
    size_t queued = p->out.len + (p->link != NULL ? p->link->tcp.write_queue_size : 0);
    if (queued > MAX_QUEUED_BYTES) {
        if (probe) {
            p->probe_inflight = false;
        }
        count_rejected(p);
        return DKV_EUNAVAIL;
    }
    uint64_t id = c->next_req_id++;
    size_t before = p->out.len;
    if (call->type == DKV_RPC_GET) {
        rc = dkv_rpc_encode_get(&p->out, id, call->key);
    } else if (call->type == DKV_RPC_DIGEST) {
        rc = dkv_rpc_encode_digest(&p->out, id, call->key);
    } else if (call->type == DKV_RPC_PUT) {
        rc = dkv_rpc_encode_put(&p->out, id, call->key, call->rec);
    } else if (call->type == DKV_RPC_SCAN) {
        rc = dkv_rpc_encode_scan(&p->out, id, call->scan);
    } else {
        rc = dkv_rpc_encode_tree(&p->out, id, call->tree->kind, call->tree->index,
                                 call->tree->after);
    }
    if (rc == 0 && p->out.len - before > c->opts.max_frame_bytes) {
        /* A record larger than the frame limit (stored before --max-body-bytes was lowered):
         * the peer would refuse the frame and drop the connection with everything on it. */
        p->out.len = before;
        rc = DKV_EINVAL;
    }
    if (rc != 0) {
        if (probe) {
            p->probe_inflight = false;
        }
        return DKV_EINVAL;
    }
    p->background = false; /* real traffic now rides on this connection */
    p->last_used_ms = now_ms(c);
    pending_t *req = enqueue(p, id, cb, arg, (uint8_t)(call->type | 0x80),
                             call->timeout_ms > 0 ? call->timeout_ms : c->opts.request_timeout_ms);
    req->is_probe = probe;
    req->scan_cb = call->scan_cb;
    req->digest_cb = call->digest_cb;
    if (c->opts.metrics != NULL) {
        req->sent_ns = uv_hrtime();
    }
    if (p->state == CONNECTED) {
        mark_dirty(p);
    }
    return 0;
}

static const char *const breaker_names[] = {"closed", "open", "half-open"};

/* Publishes this loop's view of `p` for the status page (relaxed: it is only for display). */
static void publish(peer_t *p)
{
    dkv_rpc_client_t *c = p->client;
    uint64_t failures = p->failures > 0xffff ? 0xffff : p->failures;
    size_t n = p->n_pending - (p->ping_inflight && p->n_pending > 0 ? 1 : 0); /* PINGs aside */
    uint64_t pending = n > 0xffffffffu ? 0xffffffffu : n;
    uint64_t hs = p->rejected ? DKV_RPC_HS_REJECTED : p->hs;
    uint64_t v = (uint64_t)p->breaker << 56 | hs << 49 |
                 (uint64_t)(p->state == CONNECTED && p->hello_ok) << 48 | failures << 32 | pending;
    atomic_store_explicit(&c->shared->view[c->loop_idx][p->idx], v, memory_order_relaxed);
}

void dkv_rpc_status_json(dkv_rpc_shared_t *shared, const dkv_ring_t *ring, uint32_t self_idx,
                         unsigned n_loops, dkv_buf_t *out)
{
    static const int severity[] = {0, 2, 1}; /* closed < half-open < open */
    bool first = true;
    for (size_t i = 0; i < dkv_ring_size(ring); i++) {
        if (i == self_idx) {
            continue;
        }
        unsigned worst = BREAKER_CLOSED;
        bool connected = false;
        uint64_t pending = 0;
        unsigned failures = 0;
        dkv_buf_t loops;
        dkv_buf_init(&loops);
        for (unsigned l = 0; l < n_loops && l < DKV_RPC_MAX_LOOPS; l++) {
            uint64_t v = atomic_load_explicit(&shared->view[l][i], memory_order_relaxed);
            unsigned b = (unsigned)(v >> 56) & 0xff;
            b = b <= BREAKER_HALF_OPEN ? b : BREAKER_CLOSED;
            bool conn = ((v >> 48) & 1) != 0;
            unsigned f = (unsigned)(v >> 32) & 0xffff;
            uint64_t pend = v & 0xffffffffu;
            worst = severity[b] > severity[worst] ? b : worst;
            connected = connected || conn;
            pending += pend;
            failures = f > failures ? f : failures;
            dkv_buf_printf(&loops,
                           "%s{\"breaker\":\"%s\",\"connected\":%s,\"pending\":%llu,"
                           "\"consecutive_failures\":%u}",
                           l == 0 ? "" : ",", breaker_names[b], conn ? "true" : "false",
                           (unsigned long long)pend, f);
        }
        dkv_buf_printf(out,
                       "%s{\"url\":\"%s\",\"breaker\":\"%s\",\"connected\":%s,\"pending\":%llu,"
                       "\"consecutive_failures\":%u,\"loops\":[",
                       first ? "" : ",", dkv_ring_url(ring, i), breaker_names[worst],
                       connected ? "true" : "false", (unsigned long long)pending, failures);
        dkv_buf_append(out, loops.data, loops.len);
        dkv_buf_append_str(out, "]");
        if (shared->skew != NULL) {
            dkv_skew_peer_json(shared->skew, (uint32_t)i, uv_hrtime() / 1000000u, out);
        }
        dkv_buf_append_str(out, "}");
        dkv_buf_cleanup(&loops);
        first = false;
    }
}

void dkv_rpc_peer_view(const dkv_rpc_shared_t *shared, unsigned loop, uint32_t peer,
                       dkv_rpc_peer_view_t *out)
{
    memset(out, 0, sizeof(*out));
    if (loop >= DKV_RPC_MAX_LOOPS || peer >= DKV_RING_MAX_NODES) {
        return;
    }
    uint64_t v = atomic_load_explicit((_Atomic uint64_t *)&shared->view[loop][peer],
                                      memory_order_relaxed);
    unsigned b = (unsigned)(v >> 56) & 0xff;
    out->breaker = b <= BREAKER_HALF_OPEN ? b : BREAKER_CLOSED;
    out->connected = ((v >> 48) & 1) != 0;
    out->handshake = (dkv_rpc_handshake_t)((v >> 49) & 3);
    out->failures = (unsigned)(v >> 32) & 0xffff;
    out->pending = v & 0xffffffffu;
}

void dkv_rpc_client_reach(dkv_rpc_client_t *c)
{
    if (c->closing) {
        return;
    }
    uint64_t now = now_ms(c);
    for (size_t i = 0; i < c->n_peers; i++) {
        peer_t *p = &c->peers[i];
        if (i == c->self_idx || p->state != DISCONNECTED || now < p->next_probe_ms) {
            continue;
        }
        /* A background attempt: its failure only backs off (peer_conn_failed), so a readiness
         * probe never opens a breaker. A success closes an open one, as the sweep's probe does. */
        p->next_probe_ms = now + p->probe_backoff_ms;
        peer_connect(p, true);
    }
}

static void on_client_handle_closed(uv_handle_t *h)
{
    dkv_rpc_client_t *c = h->data;
    c->open_handles--;
    client_maybe_freed(c);
}

static void client_maybe_freed(dkv_rpc_client_t *c)
{
    if (!c->closing || c->open_handles > 0 || c->open_links > 0) {
        return;
    }
    void (*cb)(void *) = c->close_cb;
    void *arg = c->close_arg;
    for (size_t i = 0; i < c->n_peers; i++) {
        dkv_buf_cleanup(&c->peers[i].out);
        dkv_buf_cleanup(&c->peers[i].in);
    }
    free(c->peers);
    free(c);
    if (cb != NULL) {
        cb(arg);
    }
}

void dkv_rpc_client_close(dkv_rpc_client_t *c, void (*cb)(void *arg), void *arg)
{
    c->closing = true;
    c->close_cb = cb;
    c->close_arg = arg;
    for (size_t i = 0; i < c->n_peers; i++) {
        peer_t *p = &c->peers[i];
        if (i == c->self_idx) {
            continue;
        }
        if (p->state != DISCONNECTED) {
            peer_disconnect(p, DKV_EUNAVAIL);
        }
        fail_all(p, DKV_EUNAVAIL);
    }
    uv_close((uv_handle_t *)&c->flush_check, on_client_handle_closed);
    uv_close((uv_handle_t *)&c->sweep, on_client_handle_closed);
}
