/*
 * RPC server of one I/O thread: serves connections that the HTTP listener handed over (their first
 * byte is DKV_RPC_MAGIC). It checks the HELLO's cluster fingerprint, then executes each request
 * against the local store in order (a replica request is never coordinated again) and writes the
 * replies of one read batch with one write(2). A PING is answered with this node's wall clock.
 *
 * DESIGN: every resource a connection holds is bounded (docs/protocol.md §7).
 * - Connections: at most opts.max_connections per node (--max-peer-connections), counted apart
 *   from the HTTP clients' cap, so neither side can starve the other.
 * - Time: one sweep timer per loop closes connections that have not completed the handshake
 *   within opts.handshake_timeout_ms, and those idle for opts.idle_timeout_ms.
 * - Memory: a request is small and its reply may be a whole value, so a peer that pipelines
 *   GETs and never reads could make us queue replies without end. Frames are served only while
 *   the connection's unsent reply bytes stay under OUT_HIGH_WATER_BYTES; past it the rest of the
 *   input waits in `in` and the socket is not read (uv_read_stop) until the replies drain to
 *   OUT_LOW_WATER_BYTES. A connection then holds at most the high water mark plus one reply
 *   (<= max_frame_bytes) plus one read batch of requests.
 * - The loop's time: a bulk read (SCAN, TREE SEGMENT: up to a MiB of records or digest entries
 *   from a RocksDB iterator, a millisecond or more) would hold every client request of this loop
 *   behind it. It runs on libuv's thread pool instead, at background priority
 *   (common/thread.h); the connection serves nothing else and reads nothing until its reply is
 *   queued, so replies keep the request order (the client matches them in order) and its
 *   input stays within one read batch. A connection closed meanwhile is freed when the job ends.
 */
#include "rpc/proto.h"
#include "rpc/rpc.h"

#include "common/err.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/uvwrite.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define READ_BUF_BYTES (64u << 10)
/* Largest frame accepted before the handshake completed (a HELLO is ~1.1 KiB at most): an
 * unauthenticated peer cannot make us buffer more. */
#define PRE_HELLO_MAX_FRAME_BYTES 4096u
#define SCAN_MAX_RECORDS 1024u
/* Keys + values per SCAN_REPLY; a single larger record still goes, alone, within the frame
 * limit (the scan writer checks it). */
#define SCAN_MAX_BYTES (1u << 20)
/* Reply backpressure (see DESIGN above). */
#define OUT_HIGH_WATER_BYTES (4u << 20)
#define OUT_LOW_WATER_BYTES (1u << 20)
/* At most one log line per second for refused connections and expired handshakes. */
#define LOG_INTERVAL_MS 1000u

/* A PUT_REPLY OK waiting in a connection's `out` for the WAL sync. */
typedef struct put_ack {
    size_t off;     /* of the frame in `out` */
    uint64_t token; /* the store write token of the write it acknowledges (store/store.h) */
} put_ack_t;

typedef struct sconn sconn_t;

/* A bulk read running on libuv's thread pool for one connection (see DESIGN above). */
typedef struct bulk_job {
    uv_work_t work;
    sconn_t *c;
    uint32_t peer;   /* the connection's authenticated peer */
    dkv_buf_t frame; /* a copy of the request frame; decoded again on the pool thread */
    dkv_buf_t out;   /* the reply frame */
} bulk_job_t;

/* A log line that may repeat fast (a flood of connections): printed at most every
 * LOG_INTERVAL_MS, with the number of occurrences it stands for. */
typedef struct ratelog {
    uint64_t next_ms;
    unsigned count;
} ratelog_t;

struct dkv_rpc_server {
    uv_loop_t *loop;
    const dkv_ring_t *ring;
    uint32_t self_idx;
    dkv_replica_t *replica;
    dkv_store_t *store;
    dkv_rpc_shared_t *shared;
    dkv_rpc_server_opts_t opts; /* max_frame_bytes filled in */
    uint64_t fingerprint;
    sconn_t *conns;
    size_t n_conns;
    size_t bulk_jobs; /* bulk reads on the thread pool; the server outlives them */
    uv_timer_t sweep;
    bool sweep_open;
    ratelog_t log_refused;
    ratelog_t log_handshake;
    bool closing;
    void (*close_cb)(void *arg);
    void *close_arg;
    char readbuf[READ_BUF_BYTES];
};

struct sconn {
    dkv_rpc_server_t *srv;
    sconn_t *prev;
    sconn_t *next;
    uv_tcp_t *tcp;
    dkv_buf_t in;  /* received bytes not served yet */
    dkv_buf_t out; /* replies not handed to libuv yet */
    put_ack_t *acks; /* PUT_REPLY OK frames in `out` not yet flushed */
    size_t n_acks;
    size_t cap_acks;
    bool hello_done;
    bool closing;
    bool counted; /* counted in shared->server_conns */
    bool reading;
    bulk_job_t *bulk; /* the bulk read in progress, or NULL; nothing else is served meanwhile */
    bool dead;        /* closed while `bulk` ran: the job's end frees it */
    uint64_t adopted_ms;
    uint64_t activity_ms; /* last byte read or reply write completed */
    char peer_url[DKV_RPC_MAX_URL_BYTES + 1]; /* as the peer claims it; control bytes as '?' */
    /* Authenticated handshake (rpc/auth.h): after our HELLO_CHALLENGE, only AUTH may come. */
    bool auth_wait;
    int peer_idx;
    bool has_ident;
    dkv_ident_info_t ident;
    uint8_t transcript[32];
    uint8_t nonce_s[DKV_RPC_NONCE_BYTES];
    uint8_t tag_s[DKV_RPC_TAG_BYTES];
};

static void sconn_free(sconn_t *c);

static uint64_t now_ms(const dkv_rpc_server_t *s)
{
    return uv_now(s->loop);
}

/* Counts one event; true when a line should be printed now (then `*count` is how many events it
 * stands for, this one included). */
static bool ratelog_due(ratelog_t *r, uint64_t now, unsigned *count)
{
    r->count++;
    if (now < r->next_ms) {
        return false;
    }
    *count = r->count;
    r->count = 0;
    r->next_ms = now + LOG_INTERVAL_MS;
    return true;
}

static void server_maybe_freed(dkv_rpc_server_t *s)
{
    if (!s->closing || s->n_conns > 0 || s->sweep_open || s->bulk_jobs > 0) {
        return;
    }
    void (*cb)(void *) = s->close_cb;
    void *arg = s->close_arg;
    free(s);
    if (cb != NULL) {
        cb(arg);
    }
}

static void sconn_free(sconn_t *c)
{
    dkv_buf_cleanup(&c->in);
    dkv_buf_cleanup(&c->out);
    free(c->acks);
    free(c);
}

static void on_closed(uv_handle_t *h)
{
    sconn_t *c = h->data;
    dkv_rpc_server_t *s = c->srv;
    free(h);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    } else {
        s->conns = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    s->n_conns--;
    if (c->counted) {
        atomic_fetch_sub(&s->shared->server_conns, 1);
    }
    if (c->bulk != NULL) {
        c->dead = true; /* bulk_done() frees it */
        return;
    }
    sconn_free(c);
    server_maybe_freed(s);
}

static void sconn_close(sconn_t *c)
{
    if (c->closing) {
        return;
    }
    c->closing = true;
    uv_close((uv_handle_t *)c->tcp, on_closed);
}


/* Reply bytes produced and not yet written to the socket. */
static size_t unsent_bytes(const sconn_t *c)
{
    return c->out.len + c->tcp->write_queue_size;
}

static void sconn_pump(sconn_t *c);

static void on_write_done(void *arg, int status)
{
    sconn_t *c = arg; /* alive: libuv cancels writes before a handle's close callback */
    if (status != 0) {
        sconn_close(c); /* the read side may be stopped and never report it */
        return;
    }
    if (c->closing) {
        return;
    }
    c->activity_ms = now_ms(c->srv);
    if (!c->reading && unsent_bytes(c) <= OUT_LOW_WATER_BYTES) {
        sconn_pump(c);
    }
}

static void sconn_flush(sconn_t *c)
{
    if (c->out.len == 0 || c->closing) {
        return;
    }
    /* PUT_REPLY acknowledges a write: it must be in the write-ahead log first. If the flush
     * fails (disk full), each OK waiting in `out` becomes ERROR: the coordinator counts this
     * replica as failed, and the other replies still go out. Each OK is judged by its own
     * write's outcome (store/store.h write tokens), decided by this sync or by an earlier one
     * of the thread that was told of the failure instead. */
    int rc = dkv_store_sync_wal(c->srv->store);
    for (size_t i = 0; i < c->n_acks; i++) {
        if (rc != 0 || dkv_store_write_outcome(c->acks[i].token) != 0) {
            dkv_rpc_put_reply_fail(&c->out, c->acks[i].off);
        }
    }
    c->n_acks = 0;
    bool queued = false;
    if (dkv_uvwrite((uv_stream_t *)c->tcp, &c->out, on_write_done, c, &queued) != 0) {
        sconn_close(c); /* a failed queued write fails the read side too, which closes */
    }
}

/* The peer is who it says (or no secret is configured): serve it. */
static void accept_peer(sconn_t *c, uint64_t req_id, int idx, bool has_ident,
                        const dkv_ident_info_t *peer_ident)
{
    dkv_rpc_server_t *s = c->srv;
    atomic_fetch_add(&s->shared->peer_epoch[idx], 1);
    c->hello_done = true;
    c->peer_idx = idx;
    dkv_identity_t *identity = s->shared->identity;
    if (identity == NULL) {
        dkv_rpc_encode_hello_ok(&c->out, req_id, NULL);
        return;
    }
    /* What we tell the peer is taken before we take in what it told us: "the id I knew you
     * under" must be the one from before this handshake, or a node whose data was lost would
     * hear its own new id back and never learn it. */
    dkv_ident_info_t ident;
    dkv_identity_info_for(identity, (uint32_t)idx, &ident);
    if (has_ident) {
        dkv_identity_observe(identity, (uint32_t)idx, peer_ident);
    }
    dkv_rpc_encode_hello_ok(&c->out, req_id, &ident);
}

/* AUTH: the client's proof. A wrong one closes the connection with a log line that names the
 * peer's claimed URL and nothing about the secret. */
static int handle_auth(sconn_t *c, const dkv_rpc_msg_t *m)
{
    dkv_rpc_server_t *s = c->srv;
    c->auth_wait = false;
    if (m->type != DKV_RPC_AUTH ||
        !dkv_auth_check_client(s->shared->auth, c->transcript, c->nonce_s, c->tag_s,
                               m->auth.tag)) {
        DKV_LOG_WARN("rpc: a peer claiming to be %s failed authentication; closing",
                     c->peer_url);
        return DKV_ECLUSTER;
    }
    accept_peer(c, m->req_id, c->peer_idx, c->has_ident, &c->ident);
    return 0;
}

static int handle_hello(sconn_t *c, const dkv_rpc_msg_t *m, dkv_slice_t frame)
{
    dkv_rpc_server_t *s = c->srv;
    /* The URL is the peer's word and goes into log lines: no control bytes (forged lines). */
    size_t n = m->hello.url.len < sizeof(c->peer_url) - 1 ? m->hello.url.len
                                                           : sizeof(c->peer_url) - 1;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = m->hello.url.ptr[i];
        c->peer_url[i] = b < 0x20 || b >= 0x7f ? '?' : (char)b;
    }
    c->peer_url[n] = '\0';
    if (m->hello.fingerprint != s->fingerprint) {
        char reason[256];
        snprintf(reason, sizeof(reason),
                 "cluster mismatch: your fingerprint %016" PRIx64 ", mine %016" PRIx64
                 " (different --cluster lists or --vnodes)",
                 m->hello.fingerprint, s->fingerprint);
        DKV_LOG_WARN("rpc: refusing peer %s: %s", c->peer_url, reason);
        dkv_rpc_encode_hello_reject(&c->out, m->req_id, dkv_slice_str(reason));
        return DKV_ECLUSTER;
    }
    int idx = dkv_ring_index_of(s->ring, c->peer_url);
    if (idx >= 0 && (uint32_t)idx == s->self_idx) {
        DKV_LOG_ERROR("rpc: refusing a peer that claims this node's own URL %s (two nodes "
                      "started with the same --self?)",
                      c->peer_url);
        dkv_rpc_encode_hello_reject(&c->out, m->req_id,
                                    dkv_slice_str("that URL is mine: two nodes with one --self?"));
        return DKV_ECLUSTER;
    }
    if (idx < 0) {
        DKV_LOG_WARN("rpc: refusing %s: not a member of this cluster", c->peer_url);
        dkv_rpc_encode_hello_reject(&c->out, m->req_id,
                                    dkv_slice_str("your URL is not in my --cluster"));
        return DKV_ECLUSTER;
    }
    if (s->shared->auth == NULL) {
        accept_peer(c, m->req_id, idx, m->hello.has_ident, &m->hello.ident);
        return 0;
    }
    if (!m->hello.has_nonce) {
        DKV_LOG_WARN("rpc: refusing %s: it did not ask for an authenticated handshake (is its "
                     "--cluster-secret-file set?)",
                     c->peer_url);
        dkv_rpc_encode_hello_reject(&c->out, m->req_id,
                                    dkv_slice_str("this cluster requires authentication "
                                                  "(--cluster-secret-file)"));
        return DKV_ECLUSTER;
    }
    /* Nothing about the peer is trusted or recorded until its AUTH proves the secret. */
    c->auth_wait = true;
    c->peer_idx = idx;
    c->has_ident = m->hello.has_ident;
    c->ident = m->hello.ident;
    dkv_auth_transcript(frame, c->transcript);
    dkv_auth_nonce(c->nonce_s);
    dkv_auth_server_tag(s->shared->auth, c->transcript, c->nonce_s, c->tag_s);
    dkv_rpc_encode_hello_challenge(&c->out, m->req_id, c->nonce_s, c->tag_s);
    return 0;
}

/* Answers a SCAN into `out`. Thread: any (a pool thread, see DESIGN above); reads only what
 * does not change after start-up, the store and the identity (both thread-safe). */
static void serve_scan(const dkv_rpc_server_t *s, const dkv_rpc_msg_t *m, dkv_buf_t *out)
{
    dkv_rpc_scan_writer_t w;
    dkv_rpc_scan_reply_begin(&w, out, m->req_id, s->opts.max_frame_bytes);
    dkv_identity_t *identity = s->shared->identity;
    if (identity != NULL && dkv_identity_state(identity) != DKV_NODE_READY) {
        /* A node that is itself joining or rebuilding holds no authoritative copy: a rebuild
         * must not finish from it (two wiped nodes would call each other complete). */
        dkv_rpc_scan_reply_fail(&w);
        return;
    }
    dkv_store_iter_t *it = NULL;
    if (dkv_store_iter_new(s->store, m->scan.start, m->scan.end, &it) != 0) {
        dkv_rpc_scan_reply_fail(&w);
        return;
    }
    uint32_t max_records = m->scan.max_records < SCAN_MAX_RECORDS ? m->scan.max_records
                                                                   : SCAN_MAX_RECORDS;
    size_t max_bytes = m->scan.max_bytes < SCAN_MAX_BYTES ? m->scan.max_bytes : SCAN_MAX_BYTES;
    size_t bytes = 0;
    uint32_t count = 0;
    bool more = false;
    for (;;) {
        dkv_slice_t key;
        dkv_record_t rec;
        int rc = dkv_store_iter_next(it, &key, &rec);
        if (rc == DKV_ENOTFOUND) {
            break;
        }
        if (rc != 0) {
            dkv_rpc_scan_reply_fail(&w);
            dkv_store_iter_free(it);
            return;
        }
        if (m->scan.start_exclusive && dkv_slice_cmp(key, m->scan.start) == 0) {
            continue;
        }
        if (count >= max_records || (count > 0 && bytes + key.len + rec.value.len > max_bytes)) {
            more = true;
            break;
        }
        if (dkv_rpc_scan_reply_add(&w, key, &rec) != 0) {
            more = true;
            break;
        }
        count++;
        bytes += key.len + rec.value.len;
    }
    dkv_store_iter_free(it);
    dkv_rpc_scan_reply_finish(&w, more);
}

/* Thread pool: the bulk read itself, at background priority. */
static void bulk_work(uv_work_t *w)
{
    static _Thread_local bool named;
    bulk_job_t *j = w->data;
    const dkv_rpc_server_t *s = j->c->srv; /* the connection and server outlive the job */
    if (!named) {
        dkv_thread_set_name("dkv-pool"); /* else it bears the name of the loop that started it */
        named = true;
    }
    dkv_thread_set_background();
    dkv_rpc_msg_t m;
    if (dkv_rpc_decode(dkv_buf_slice(&j->frame), &m) != 0) {
        return; /* cannot happen: the loop decoded the same bytes; no reply closes the peer */
    }
    if (m.type == DKV_RPC_SCAN) {
        serve_scan(s, &m, &j->out);
    } else {
        s->shared->tree_handler(s->shared->tree_ctx, j->peer, &m, &j->out);
    }
}

/* Loop: queues the reply and serves what waited behind it. */
static void bulk_done(uv_work_t *w, int status)
{
    bulk_job_t *j = w->data;
    sconn_t *c = j->c;
    dkv_rpc_server_t *s = c->srv;
    s->bulk_jobs--;
    c->bulk = NULL;
    if (c->dead) {
        sconn_free(c);
    } else if (!c->closing) {
        if (status != 0 || j->out.len == 0) {
            sconn_close(c); /* never ran: the peer would wait for this reply forever */
        } else {
            dkv_buf_append(&c->out, j->out.data, j->out.len);
            c->activity_ms = now_ms(s);
            sconn_pump(c);
        }
    }
    dkv_buf_cleanup(&j->frame);
    dkv_buf_cleanup(&j->out);
    free(j);
    server_maybe_freed(s);
}

/* Is `m` a bulk read, served off the loop? */
static bool is_bulk(const sconn_t *c, const dkv_rpc_msg_t *m)
{
    return m->type == DKV_RPC_SCAN ||
           (m->type == DKV_RPC_TREE && m->tree.kind == DKV_RPC_TREE_SEGMENT &&
            c->srv->shared->tree_handler != NULL && c->peer_idx >= 0);
}

/* Hands the bulk read in `frame` to the thread pool. @return 0; -1: serve it here. */
static int bulk_submit(sconn_t *c, dkv_slice_t frame)
{
    bulk_job_t *j = dkv_xcalloc(1, sizeof(*j));
    j->c = c;
    j->peer = c->peer_idx >= 0 ? (uint32_t)c->peer_idx : 0;
    dkv_buf_init(&j->frame);
    dkv_buf_init(&j->out);
    dkv_buf_append(&j->frame, frame.ptr, frame.len);
    j->work.data = j;
    if (uv_queue_work(c->srv->loop, &j->work, bulk_work, bulk_done) != 0) {
        dkv_buf_cleanup(&j->frame);
        free(j);
        return -1;
    }
    c->bulk = j;
    c->srv->bulk_jobs++;
    return 0;
}

/* Executes one request frame. @return 0, or <0 to close the connection. */
static int handle_frame(sconn_t *c, dkv_slice_t frame)
{
    dkv_rpc_server_t *s = c->srv;
    dkv_rpc_msg_t m;
    int rc = dkv_rpc_decode(frame, &m);
    dkv_rpc_header_t h;
    if (rc != 0 && !c->hello_done && dkv_rpc_frame_header(frame, &h) == 0 &&
        h.version != DKV_RPC_VERSION && h.type == DKV_RPC_HELLO) {
        /* A newer (or older) peer's handshake: tell it which version this node speaks, in this
         * node's version, so that it can fall back (docs/protocol.md, 8. Versioning). */
        char reason[96];
        snprintf(reason, sizeof(reason), "unsupported protocol version %u (this node speaks %u)",
                 (unsigned)h.version, (unsigned)DKV_RPC_VERSION);
        DKV_LOG_WARN("rpc: a HELLO of protocol version %u; answered HELLO_REJECT, closing",
                     (unsigned)h.version);
        dkv_rpc_encode_hello_reject(&c->out, h.req_id, dkv_slice_str(reason));
        return DKV_EPROTO;
    }
    if (rc != 0) {
        DKV_LOG_WARN("rpc: malformed frame from %s: %s", c->peer_url[0] ? c->peer_url : "a peer",
                     dkv_strerror(rc));
        return rc;
    }
    if (!c->hello_done) {
        if (c->auth_wait) {
            return handle_auth(c, &m);
        }
        if (m.type != DKV_RPC_HELLO) {
            DKV_LOG_WARN("rpc: first frame is %s, not HELLO; closing", dkv_rpc_type_name(m.type));
            return DKV_EPROTO;
        }
        return handle_hello(c, &m, frame);
    }
    if (is_bulk(c, &m) && bulk_submit(c, frame) == 0) {
        return 0;
    }
    switch (m.type) {
    case DKV_RPC_GET: {
        dkv_record_t rec;
        dkv_owned_t buf = {0};
        rc = dkv_replica_get(s->replica, m.get.key, &rec, &buf);
        if (rc == 0) {
            size_t before = c->out.len;
            if (dkv_rpc_encode_get_reply(&c->out, m.req_id, DKV_RPC_OK, &rec) != 0 ||
                c->out.len - before > s->opts.max_frame_bytes) {
                /* A value stored before --max-body-bytes was lowered: the peer would refuse
                 * the frame and drop the connection with every request on it. */
                DKV_LOG_WARN("rpc: a %zu-byte value does not fit the %zu-byte frame limit; "
                             "answering ERROR",
                             rec.value.len, s->opts.max_frame_bytes);
                c->out.len = before;
                dkv_rpc_encode_get_reply(&c->out, m.req_id, DKV_RPC_ERROR, NULL);
            }
        } else if (rc == DKV_ENOTFOUND) {
            dkv_rpc_encode_get_reply(&c->out, m.req_id, DKV_RPC_ABSENT, NULL);
        } else if (rc == DKV_ENOTREADY) {
            dkv_rpc_encode_get_reply(&c->out, m.req_id, DKV_RPC_NOT_READY, NULL);
        } else {
            dkv_rpc_encode_get_reply(&c->out, m.req_id, DKV_RPC_ERROR, NULL);
        }
        dkv_owned_release(&buf);
        return 0;
    }
    case DKV_RPC_DIGEST: {
        /* The same read as a GET (the value is needed for its hash); only the reply is small. */
        dkv_record_t rec;
        dkv_owned_t buf = {0};
        rc = dkv_replica_get(s->replica, m.digest.key, &rec, &buf);
        if (rc == 0) {
            dkv_rpc_digest_t d;
            dkv_rpc_digest_of(&rec, &d);
            dkv_rpc_encode_digest_reply(&c->out, m.req_id, DKV_RPC_OK, &d);
        } else {
            dkv_rpc_encode_digest_reply(&c->out, m.req_id,
                                        rc == DKV_ENOTFOUND   ? DKV_RPC_ABSENT
                                        : rc == DKV_ENOTREADY ? DKV_RPC_NOT_READY
                                                              : DKV_RPC_ERROR,
                                        NULL);
        }
        dkv_owned_release(&buf);
        return 0;
    }
    case DKV_RPC_PUT:
        rc = dkv_replica_put(s->replica, m.put.key, &m.put.rec);
        if (rc == 0) {
            if (c->n_acks == c->cap_acks) {
                c->cap_acks = c->cap_acks ? 2 * c->cap_acks : 8;
                c->acks = dkv_xrealloc(c->acks, c->cap_acks * sizeof(*c->acks));
            }
            c->acks[c->n_acks++] = (put_ack_t){c->out.len, dkv_store_write_token()};
        }
        dkv_rpc_encode_put_reply(&c->out, m.req_id, rc == 0 ? DKV_RPC_OK : DKV_RPC_ERROR);
        return 0;
    case DKV_RPC_SCAN:
        serve_scan(s, &m, &c->out);
        return 0;
    case DKV_RPC_PING:
        /* The PONG may wait for this batch's WAL sync: that only lengthens the client's round
         * trip, which still contains this reading, and so widens its uncertainty. */
        dkv_rpc_encode_pong(&c->out, m.req_id, dkv_hlc_system_clock_ms(NULL));
        return 0;
    case DKV_RPC_TREE:
        if (s->shared->tree_handler == NULL || c->peer_idx < 0) {
            dkv_rpc_encode_tree_status(&c->out, m.req_id, DKV_RPC_ERROR);
        } else {
            s->shared->tree_handler(s->shared->tree_ctx, (uint32_t)c->peer_idx, &m, &c->out);
        }
        return 0;
    default:
        DKV_LOG_WARN("rpc: unexpected %s from %s; closing", dkv_rpc_type_name(m.type),
                     c->peer_url);
        return DKV_EPROTO;
    }
}

/*
 * Handles the complete frames in data while the unsent replies stay under the high water mark;
 * returns bytes consumed or -1 to close.
 */
static long handle_bytes(sconn_t *c, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (off < len && c->bulk == NULL && unsent_bytes(c) < OUT_HIGH_WATER_BYTES) {
        size_t frame_bytes = 0;
        size_t limit = c->hello_done ? c->srv->opts.max_frame_bytes : PRE_HELLO_MAX_FRAME_BYTES;
        int rc = dkv_rpc_frame_peek(dkv_slice(data + off, len - off), limit, &frame_bytes);
        if (rc == DKV_ETOOBIG) {
            DKV_LOG_WARN("rpc: %s declared a frame over the %zu-byte limit%s; closing",
                         c->peer_url[0] ? c->peer_url : "a peer", limit,
                         c->hello_done ? " (is --max-body-bytes the same on every node?)"
                                       : " before the handshake completed");
            return -1;
        }
        if (rc == DKV_RPC_NEED_MORE || (rc == 0 && frame_bytes > len - off)) {
            break;
        }
        if (rc == 0) {
            rc = handle_frame(c, dkv_slice(data + off, frame_bytes));
        }
        if (rc != 0) {
            return -1;
        }
        off += frame_bytes;
    }
    return (long)off;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    sconn_t *c = h->data;
    *buf = uv_buf_init(c->srv->readbuf, sizeof(c->srv->readbuf));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/*
 * Serves what waits in `in` as far as the high water mark allows, writes the replies, and reads
 * the socket again only while the unsent replies are below the mark (read again at the low one).
 */
static void sconn_pump(sconn_t *c)
{
    for (;;) {
        /* Write first: the socket may take every reply at once, and then more can be served. */
        sconn_flush(c);
        if (c->closing) {
            return;
        }
        long used = handle_bytes(c, c->in.data, c->in.len);
        if (used < 0) {
            sconn_flush(c); /* e.g. a HELLO_REJECT */
            sconn_close(c);
            return;
        }
        if (used == 0) {
            break; /* no complete frame, or the replies wait for the socket */
        }
        dkv_buf_consume(&c->in, (size_t)used);
    }
    size_t unsent = unsent_bytes(c);
    if (c->reading && (unsent >= OUT_HIGH_WATER_BYTES || c->bulk != NULL)) {
        uv_read_stop((uv_stream_t *)c->tcp);
        c->reading = false;
    } else if (!c->reading && c->bulk == NULL && unsent <= OUT_LOW_WATER_BYTES) {
        if (uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read) != 0) {
            sconn_close(c);
            return;
        }
        c->reading = true;
    }
}

static void consume(sconn_t *c, const uint8_t *data, size_t len)
{
    c->activity_ms = now_ms(c->srv);
    if (c->in.len == 0) {
        /* Usual case: serve straight from the read buffer, keep only what is left. */
        long used = handle_bytes(c, data, len);
        if (used < 0) {
            sconn_flush(c);
            sconn_close(c);
            return;
        }
        dkv_buf_append(&c->in, data + (size_t)used, len - (size_t)used);
    } else {
        dkv_buf_append(&c->in, data, len);
    }
    sconn_pump(c);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    sconn_t *c = stream->data;
    if (nread < 0) {
        sconn_close(c);
        return;
    }
    if (nread > 0 && !c->closing) {
        consume(c, (const uint8_t *)buf->base, (size_t)nread);
    }
}

static void on_sweep(uv_timer_t *t)
{
    dkv_rpc_server_t *s = t->data;
    uint64_t now = now_ms(s);
    sconn_t *next = NULL;
    for (sconn_t *c = s->conns; c != NULL; c = next) {
        next = c->next;
        if (c->closing) {
            continue;
        }
        if (!c->hello_done) {
            if (s->opts.handshake_timeout_ms != 0 &&
                now - c->adopted_ms >= s->opts.handshake_timeout_ms) {
                unsigned n = 0;
                if (ratelog_due(&s->log_handshake, now, &n)) {
                    DKV_LOG_WARN("rpc: closed %u connection(s) that did not complete the "
                                 "handshake within %llu ms (the last claimed to be %s)",
                                 n, (unsigned long long)s->opts.handshake_timeout_ms,
                                 c->peer_url[0] ? c->peer_url : "nobody");
                }
                sconn_close(c);
            }
            continue;
        }
        /* A peer that stops reading its replies is idle too: nothing moves either way. */
        if (s->opts.idle_timeout_ms != 0 && now - c->activity_ms >= s->opts.idle_timeout_ms) {
            DKV_LOG_DEBUG("rpc: closing the idle connection of %s", c->peer_url);
            sconn_close(c);
        }
    }
}

int dkv_rpc_server_new(uv_loop_t *loop, const dkv_ring_t *ring, uint32_t self_idx,
                       dkv_replica_t *replica, dkv_rpc_shared_t *shared,
                       const dkv_rpc_server_opts_t *opts, dkv_rpc_server_t **out)
{
    dkv_rpc_server_t *s = dkv_xcalloc(1, sizeof(*s));
    s->loop = loop;
    s->ring = ring;
    s->self_idx = self_idx;
    s->replica = replica;
    s->store = dkv_replica_store(replica);
    s->shared = shared;
    s->fingerprint = dkv_ring_fingerprint(ring);
    s->opts = *opts;
    if (s->opts.max_frame_bytes == 0) {
        s->opts.max_frame_bytes = DKV_RPC_FRAME_LIMIT_MIN_BYTES;
    }
    uint64_t tick = 0;
    if (opts->handshake_timeout_ms != 0) {
        tick = opts->handshake_timeout_ms;
    }
    if (opts->idle_timeout_ms != 0 && (tick == 0 || opts->idle_timeout_ms < tick)) {
        tick = opts->idle_timeout_ms;
    }
    uv_timer_init(loop, &s->sweep);
    s->sweep.data = s;
    s->sweep_open = true;
    if (tick != 0) {
        /* A connection outlives its timeout by at most a quarter of it (and a second). */
        tick = tick / 4 < 10 ? 10 : (tick / 4 > 1000 ? 1000 : tick / 4);
        uv_timer_start(&s->sweep, on_sweep, tick, tick);
    }
    *out = s;
    return 0;
}

static void on_sweep_closed(uv_handle_t *h)
{
    dkv_rpc_server_t *s = h->data;
    s->sweep_open = false;
    server_maybe_freed(s);
}

void dkv_rpc_server_adopt(void *server, uv_tcp_t *tcp, dkv_slice_t first)
{
    dkv_rpc_server_t *s = server;
    sconn_t *c = dkv_xcalloc(1, sizeof(*c));
    c->srv = s;
    c->tcp = tcp;
    c->peer_idx = -1; /* known once the handshake is accepted */
    tcp->data = c;
    c->next = s->conns;
    if (s->conns != NULL) {
        s->conns->prev = c;
    }
    s->conns = c;
    s->n_conns++;
    c->adopted_ms = now_ms(s);
    c->activity_ms = c->adopted_ms;
    if (s->closing) {
        sconn_close(c);
        return;
    }
    unsigned open = atomic_fetch_add(&s->shared->server_conns, 1) + 1;
    c->counted = true;
    if (open > s->opts.max_connections) {
        unsigned n = 0;
        if (ratelog_due(&s->log_refused, c->adopted_ms, &n)) {
            DKV_LOG_WARN("rpc: refused %u connection(s): %u peer connections are open "
                         "(--max-peer-connections)",
                         n, s->opts.max_connections);
        }
        sconn_close(c);
        return;
    }
    uv_tcp_nodelay(tcp, 1);
    consume(c, first.ptr, first.len);
}

void dkv_rpc_server_close(dkv_rpc_server_t *s, void (*cb)(void *arg), void *arg)
{
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    for (sconn_t *c = s->conns; c != NULL; c = c->next) {
        sconn_close(c);
    }
    uv_close((uv_handle_t *)&s->sweep, on_sweep_closed);
    server_maybe_freed(s);
}
