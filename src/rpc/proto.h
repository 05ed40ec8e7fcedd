/*
 * Binary codec of the inter-node RPC protocol: frames in, frames out, no sockets. The transport
 * (rpc/rpc.h) feeds received bytes to dkv_rpc_frame_peek() and dkv_rpc_decode(), and builds its
 * writes with the dkv_rpc_encode_*() functions, which append to a buffer so that many pipelined
 * frames go out in one write. docs/protocol.md is the full description with every frame drawn.
 *
 * Frame (all integers big-endian; every frame, not only the first, starts with the magic byte):
 *
 *    0        1                                   5        6        7                        15
 *   +--------+-----------------------------------+--------+--------+------------------------+
 *   | 0xD7   | length: u32 BE, bytes after this  | ver=1  | type   | request id: u64 BE     |
 *   | magic  | field (10 + payload bytes)        |        |        |                        |
 *   +--------+-----------------------------------+--------+--------+------------------------+
 *   | payload: type-specific, exactly length - 10 bytes                                      ...
 *   +---------------------------------------------------------------------------------------
 *
 * The magic byte (>= 0x80, never an ASCII letter) lets the node's HTTP port tell an RPC
 * connection from an HTTP one by its first byte, and lets a receiver notice a desynchronised
 * stream at every frame. Magic and length never change between versions, so any receiver can
 * always find the end of a frame; everything after them is governed by `ver`.
 */
#ifndef DKV_RPC_PROTO_H
#define DKV_RPC_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster/identity.h"
#include "common/buf.h"
#include "common/conf.h"
#include "common/record.h"
#include "common/slice.h"

#define DKV_RPC_MAGIC 0xD7u
#define DKV_RPC_VERSION 1u
/* magic u8 + length u32 + version u8 + type u8 + request id u64 */
#define DKV_RPC_HEADER_BYTES 15u
/* Bytes counted by the length field that belong to the header (version, type, request id). */
#define DKV_RPC_LENGTH_MIN 10u
/*
 * Frame sizes. A node's frame limit (whole frame, header included) follows its largest value,
 * --max-body-bytes: dkv_rpc_frame_limit() is the one place that turns one into the other, and
 * both the client and the server pass it to dkv_rpc_frame_peek(), which rejects a longer declared
 * length before any payload is buffered.
 * - DKV_RPC_FRAME_OVERHEAD_BYTES: room around one value for the header, a key, the record's
 *   framing and a SCAN_REPLY's fields and trailer (about 2.1 KiB), with ample margin.
 * - DKV_RPC_FRAME_LIMIT_MIN_BYTES: the smallest limit, the fixed limit of dkv 0.2 (a 1 MiB value
 *   twice over), so a node with default flags accepts everything an older node sends.
 * - DKV_RPC_MAX_FRAME_BYTES: the ceiling of every configuration (the largest --max-body-bytes);
 *   dkv_rpc_decode() and the encoders check it whatever the configured limit.
 */
#define DKV_RPC_FRAME_OVERHEAD_BYTES (64u << 10)
#define DKV_RPC_FRAME_LIMIT_MIN_BYTES ((2u << 20) + DKV_RPC_FRAME_OVERHEAD_BYTES)
#define DKV_RPC_MAX_FRAME_BYTES (DKV_MAX_VALUE_BYTES + DKV_RPC_FRAME_OVERHEAD_BYTES)
/* Keys on the wire: 1..DKV_RPC_MAX_KEY_BYTES (the API's key limit, common/conf.h). */
#define DKV_RPC_MAX_KEY_BYTES DKV_MAX_KEY_BYTES
/* The optional identity block at the end of HELLO and HELLO_OK: node id, flags, known id. */
#define DKV_RPC_IDENTITY_BYTES (2u * DKV_NODE_ID_BYTES + 1u)
/* Cluster authentication (rpc/auth.h): nonces and HMAC-SHA256 tags. */
#define DKV_RPC_NONCE_BYTES 32u
#define DKV_RPC_TAG_BYTES 32u
/* HELLO's node URL (1..) and HELLO_REJECT's reason (0..); longer reasons are truncated. */
#define DKV_RPC_MAX_URL_BYTES 1024u
#define DKV_RPC_MAX_REASON_BYTES 1024u
/* dkv_rpc_frame_peek(): the buffer holds no complete header yet; read more and call again. */
#define DKV_RPC_NEED_MORE 1

/* Message types. A reply has bit 7 set; the low bits name the request it answers. */
typedef enum dkv_rpc_type {
    DKV_RPC_HELLO = 0x01,           /* client -> server, first frame of a connection */
    DKV_RPC_GET = 0x02,             /* request the stored version of a key */
    DKV_RPC_PUT = 0x03,             /* store a record unless a newer one is stored */
    DKV_RPC_SCAN = 0x04,            /* ordered batch of a key range */
    DKV_RPC_AUTH = 0x05,            /* client's proof of the cluster secret; answered by HELLO_OK */
    DKV_RPC_TREE = 0x06,            /* anti-entropy: a level of the hash tree shared with the
                                       sender, or one segment's digests (repair/merkle.h) */
    DKV_RPC_PING = 0x07,            /* clock-offset probe: asks for the server's wall clock */
    DKV_RPC_DIGEST = 0x08,          /* the stored version of a key without its value: timestamp,
                                       flags, replica set and a hash of the value (speculative
                                       reads, coord/coord.h) */
    DKV_RPC_HELLO_OK = 0x81,        /* handshake accepted */
    DKV_RPC_GET_REPLY = 0x82,       /* status + record when found */
    DKV_RPC_PUT_REPLY = 0x83,       /* status */
    DKV_RPC_SCAN_REPLY = 0x84,      /* status + entries + more + last key */
    DKV_RPC_TREE_REPLY = 0x86,      /* status + hashes or digest entries */
    DKV_RPC_PONG = 0x87,            /* the server's wall clock in ms when it answered */
    DKV_RPC_DIGEST_REPLY = 0x88,    /* status + digest when found */
    DKV_RPC_HELLO_REJECT = 0xC1,    /* handshake refused (reason); the server then closes */
    DKV_RPC_HELLO_CHALLENGE = 0xC2, /* server's nonce and proof of the cluster secret, in answer
                                       to a HELLO that carries a nonce (rpc/auth.h) */
} dkv_rpc_type_t;

/* Reply status byte. GET_REPLY and DIGEST_REPLY use all four; PUT_REPLY and SCAN_REPLY use OK
 * and ERROR. */
typedef enum dkv_rpc_status {
    DKV_RPC_OK = 0,     /* done; for GET: found (a tombstone is found too, it is a version) */
    DKV_RPC_ABSENT = 1, /* GET only: the replica holds no version at all */
    DKV_RPC_ERROR = 2,  /* the replica could not serve the request (store error, overload) */
    DKV_RPC_NOT_READY = 3, /* GET only: the replica's data is being rebuilt (cluster/identity.h):
                              a failure, never "absent" */
} dkv_rpc_status_t;

/* TREE request kinds. */
typedef enum dkv_rpc_tree_kind {
    DKV_RPC_TREE_BRANCHES = 0, /* the 256 branch hashes (index ignored, must be 0) */
    DKV_RPC_TREE_LEAVES = 1,   /* the 256 leaf hashes under branch `index` (0..255) */
    DKV_RPC_TREE_SEGMENT = 2,  /* the digest entries of segment `index` (0..65535) shared with
                                  the sender, in key order, strictly after `after` */
    DKV_RPC_TREE_STATS = 3,    /* the receiver's record count and data size estimate (index 0):
                                  a rebuild's progress and ETA */
} dkv_rpc_tree_kind_t;
#define DKV_RPC_TREE_HASHES 256u
#define DKV_RPC_TREE_SEGMENTS 65536u

/* One digest entry of a TREE_REPLY for a segment. */
typedef struct dkv_rpc_tree_entry {
    dkv_slice_t key; /* 1..DKV_RPC_MAX_KEY_BYTES */
    uint64_t ts;
    bool tombstone;
    uint8_t from; /* 1.. (a record in a tree always has a known replica set) */
} dkv_rpc_tree_entry_t;

/* A DIGEST_REPLY's payload after the status: ts u64, flags u8, from u8, value hash u64. */
#define DKV_RPC_DIGEST_BYTES 18u

/*
 * A replica's version of a key without the value (DIGEST_REPLY): enough for a coordinator to tell
 * whether two replicas agree. Two versions are the same iff ts, tombstone and (for values)
 * value_hash are equal; `from` takes no part in the version order.
 */
typedef struct dkv_rpc_digest {
    uint64_t ts; /* hybrid logical clock timestamp */
    bool tombstone;
    uint8_t from;        /* the record's replica-set size; 0 = unknown (a version-1 record) */
    uint64_t value_hash; /* dkv_rpc_value_hash() of the value; 0 for a tombstone */
} dkv_rpc_digest_t;

/* SCAN request: keys k with start <= k < end (or start < k when start_exclusive). */
typedef struct dkv_rpc_scan {
    dkv_slice_t start;    /* 0..DKV_RPC_MAX_KEY_BYTES; empty = from the first key */
    dkv_slice_t end;      /* 0..DKV_RPC_MAX_KEY_BYTES; empty = to the last key */
    bool start_exclusive; /* resume strictly after `start` (a previous reply's last_key) */
    uint32_t max_records; /* >= 1; the server may return fewer */
    uint32_t max_bytes;   /* >= 1; soft cap on keys + values in the reply, the server may cap it */
} dkv_rpc_scan_t;

/*
 * A decoded frame. Every slice borrows from the frame passed to dkv_rpc_decode() and is valid as
 * long as those bytes are; `type` selects the member of the union.
 */
typedef struct dkv_rpc_msg {
    uint8_t type;    /* dkv_rpc_type_t */
    uint64_t req_id; /* echoed by the reply; chosen by the client */
    union {
        struct {
            uint64_t fingerprint; /* dkv_ring_fingerprint() of the sender's cluster */
            dkv_slice_t url;      /* sender's own node URL, 1..DKV_RPC_MAX_URL_BYTES */
            bool has_ident;       /* the identity block is present */
            dkv_ident_info_t ident;
            bool has_nonce;       /* the client's nonce follows the identity block: it asks for
                                     an authenticated handshake */
            uint8_t nonce[DKV_RPC_NONCE_BYTES];
        } hello;
        struct {
            uint8_t nonce[DKV_RPC_NONCE_BYTES]; /* the server's */
            uint8_t tag[DKV_RPC_TAG_BYTES];     /* the server's proof */
        } challenge;
        struct {
            uint8_t tag[DKV_RPC_TAG_BYTES]; /* the client's proof */
        } auth;
        struct {
            bool has_ident;
            dkv_ident_info_t ident; /* the server's identity, told to the client */
        } hello_ok;
        struct {
            dkv_slice_t reason; /* 0..DKV_RPC_MAX_REASON_BYTES, for logs */
        } hello_reject;
        struct {
            dkv_slice_t key;
        } get;
        struct {
            uint8_t status;        /* DKV_RPC_OK (found), DKV_RPC_ABSENT, DKV_RPC_ERROR,
                                      DKV_RPC_NOT_READY */
            dkv_record_t rec;      /* valid when status == DKV_RPC_OK */
            dkv_slice_t rec_bytes; /* the encoded record (common/record.h); empty unless OK */
        } get_reply;
        struct {
            dkv_slice_t key;
        } digest;
        struct {
            uint8_t status;          /* as get_reply.status */
            dkv_rpc_digest_t digest; /* valid when status == DKV_RPC_OK */
        } digest_reply;
        struct {
            dkv_slice_t key;
            dkv_record_t rec;      /* a delete is a tombstone record */
            dkv_slice_t rec_bytes; /* the encoded record, e.g. to hand to a store as is */
        } put;
        struct {
            uint8_t status; /* DKV_RPC_OK or DKV_RPC_ERROR */
        } put_reply;
        dkv_rpc_scan_t scan;
        struct {
            uint8_t status;       /* DKV_RPC_OK or DKV_RPC_ERROR (then no entries) */
            bool more;            /* the range goes on past last_key; then count >= 1 */
            uint32_t count;       /* entries; walk them with dkv_rpc_scan_iter_*() */
            dkv_slice_t entries;  /* raw entry bytes, already validated by dkv_rpc_decode() */
            dkv_slice_t last_key; /* the last entry's key (empty iff count == 0): resume
                                     strictly after it with start_exclusive */
        } scan_reply;
        struct {
            uint8_t kind;      /* dkv_rpc_tree_kind_t */
            uint32_t index;    /* branch or segment */
            dkv_slice_t after; /* SEGMENT: resume strictly after this key; empty = from the first */
        } tree;
        struct {
            uint8_t status;      /* DKV_RPC_OK, DKV_RPC_ERROR, or DKV_RPC_NOT_READY (the tree is
                                    not built yet or the node is not ready: ask again later) */
            uint8_t kind;        /* as requested; only with OK */
            dkv_slice_t hashes;  /* BRANCHES, LEAVES: 256 u64 BE (2048 bytes) */
            bool more;           /* SEGMENT: entries continue after the last one */
            uint32_t count;      /* SEGMENT: entries; walk with dkv_rpc_tree_iter_next() */
            dkv_slice_t entries; /* SEGMENT: raw entry bytes, validated by dkv_rpc_decode() */
            uint64_t records;    /* STATS: records held (tombstones included), as of the
                                    receiver's last tree refresh */
            uint64_t bytes;      /* STATS: RocksDB's estimate of the live data size */
        } tree_reply;
        struct {
            uint64_t wall_ms; /* the server's wall clock (ms since the Unix epoch) */
        } pong;
    };
} dkv_rpc_msg_t;

/* Header fields of a framed message, whatever its version (dkv_rpc_frame_header()). */
typedef struct dkv_rpc_header {
    uint8_t version;
    uint8_t type;
    uint64_t req_id;
    size_t payload_bytes;
} dkv_rpc_header_t;

/*
 * Incremental SCAN_REPLY encoder state, on the caller's stack: begin, add entries, then finish or
 * fail. Fields are private except `count` (entries added so far) and `frame_bytes` (the frame's
 * size so far, to compare against a byte budget).
 */
typedef struct dkv_rpc_scan_writer {
    dkv_buf_t *out;
    size_t max_frame_bytes; /* the frame never grows past it */
    size_t frame_off;    /* where this frame starts in out */
    size_t last_key_off; /* offset in out of the last added key's bytes */
    size_t last_key_len;
    uint32_t count;
    size_t frame_bytes;
} dkv_rpc_scan_writer_t;

/* Cursor over a SCAN_REPLY's entries. */
typedef struct dkv_rpc_scan_iter {
    dkv_slice_t rest;
    uint32_t left;
} dkv_rpc_scan_iter_t;

/**
 * The frame limit of a node whose values are at most `max_value_bytes` (its --max-body-bytes):
 * max(max_value_bytes, 2 MiB) + DKV_RPC_FRAME_OVERHEAD_BYTES, at most DKV_RPC_MAX_FRAME_BYTES.
 * A GET_REPLY, a PUT and a SCAN_REPLY carrying one such value with a maximal key always fit.
 * @return DKV_RPC_FRAME_LIMIT_MIN_BYTES..DKV_RPC_MAX_FRAME_BYTES.
 * Thread: any: pure function.
 */
size_t dkv_rpc_frame_limit(size_t max_value_bytes);

/**
 * Tells whether `in` (the unread bytes of a connection, starting at a frame boundary) begins
 * with a complete frame header, and how long that frame is. Checks only the version-independent
 * part (magic, length), so a caller can reject a bad or oversized stream before buffering more.
 *
 * @param in               Borrowed for the call; may be empty.
 * @param max_frame_bytes  The connection's limit on a whole frame, e.g. dkv_rpc_frame_limit();
 *                         values past DKV_RPC_MAX_FRAME_BYTES count as that.
 * @param frame_bytes      On 0: the size of the whole frame (header + payload), 15..
 *                         max_frame_bytes; decode once `in` holds that many bytes.
 * @return 0; DKV_RPC_NEED_MORE (1: fewer than DKV_RPC_HEADER_BYTES bytes and no error yet);
 *         DKV_EPROTO (first byte is not DKV_RPC_MAGIC, or length < 10); DKV_ETOOBIG (the declared
 *         frame exceeds max_frame_bytes, known from the first 5 bytes). On an error the
 *         connection cannot be resynced: close it.
 * Thread: any: pure function.
 */
int dkv_rpc_frame_peek(dkv_slice_t in, size_t max_frame_bytes, size_t *frame_bytes);

/**
 * Reads the header of one complete frame without checking its version or type, e.g. to answer a
 * HELLO of an unsupported version with a HELLO_REJECT, or to log a frame that fails to decode.
 *
 * @param frame  Exactly one frame (the `frame_bytes` from dkv_rpc_frame_peek()); borrowed.
 * @param out    Written on success.
 * @return 0; DKV_EPROTO (bad magic, length disagrees with frame.len); DKV_ETOOBIG.
 * Thread: any: pure function.
 */
int dkv_rpc_frame_header(dkv_slice_t frame, dkv_rpc_header_t *out);

/**
 * Decodes one complete frame. Validates everything: magic, length, version, type, every field
 * length, key and string limits, status values, reserved bits, each record (dkv_record_decode()),
 * each SCAN_REPLY entry, and that no byte is left over.
 *
 * @param frame  Exactly one frame (the `frame_bytes` from dkv_rpc_frame_peek()); borrowed.
 * @param out    Written on success only; its slices borrow from `frame`.
 * @return 0; DKV_EPROTO (anything malformed, an unknown version or type); DKV_ETOOBIG (frame
 *         larger than DKV_RPC_MAX_FRAME_BYTES).
 * Thread: any: pure function.
 */
int dkv_rpc_decode(dkv_slice_t frame, dkv_rpc_msg_t *out);

/*
 * Encoders. Each appends exactly one frame to `out` (growing it; allocation failure aborts) and
 * leaves `out`'s earlier bytes alone. A fallible encoder appends nothing when it fails. All
 * inputs are borrowed for the call and copied. Thread: any (the buffer is the caller's).
 */

/**
 * HELLO: the first frame a client sends on a new connection (it may pipeline requests right
 * behind it).
 * @param fingerprint  dkv_ring_fingerprint() of the sender's cluster set.
 * @param url          Sender's own node URL, 1..DKV_RPC_MAX_URL_BYTES bytes.
 * @param ident        The sender's identity block (cluster/identity.h), or NULL for none.
 * @param nonce        DKV_RPC_NONCE_BYTES fresh random bytes asking for an authenticated
 *                     handshake, or NULL; needs `ident`.
 * @return 0; DKV_EINVAL (url length out of range, unknown identity flag bits, nonce without
 *         identity).
 */
int dkv_rpc_encode_hello(dkv_buf_t *out, uint64_t req_id, uint64_t fingerprint, dkv_slice_t url,
                         const dkv_ident_info_t *ident, const uint8_t *nonce);

/**
 * HELLO_CHALLENGE: the server's nonce and its proof of the cluster secret (rpc/auth.h); the
 * client must answer with AUTH before anything else. `req_id` echoes the HELLO's. Cannot fail.
 */
void dkv_rpc_encode_hello_challenge(dkv_buf_t *out, uint64_t req_id,
                                    const uint8_t nonce[DKV_RPC_NONCE_BYTES],
                                    const uint8_t tag[DKV_RPC_TAG_BYTES]);

/** AUTH: the client's proof of the cluster secret, answered by HELLO_OK. Cannot fail. */
void dkv_rpc_encode_auth(dkv_buf_t *out, uint64_t req_id, const uint8_t tag[DKV_RPC_TAG_BYTES]);

/**
 * HELLO_OK: the server accepts the handshake; `req_id` echoes the HELLO's.
 * @param ident  The server's identity block, or NULL for none; unknown flag bits are dropped.
 */
void dkv_rpc_encode_hello_ok(dkv_buf_t *out, uint64_t req_id, const dkv_ident_info_t *ident);

/**
 * HELLO_REJECT: the server refuses the handshake and closes the connection after it.
 * @param reason  Human-readable, for the client's log; cut to DKV_RPC_MAX_REASON_BYTES.
 * Cannot fail.
 */
void dkv_rpc_encode_hello_reject(dkv_buf_t *out, uint64_t req_id, dkv_slice_t reason);

/**
 * GET: asks for the stored version of `key`.
 * @param key  1..DKV_RPC_MAX_KEY_BYTES bytes.
 * @return 0; DKV_EINVAL (key length out of range).
 */
int dkv_rpc_encode_get(dkv_buf_t *out, uint64_t req_id, dkv_slice_t key);

/**
 * GET_REPLY.
 * @param status  DKV_RPC_OK (found: `rec` is the stored version, tombstones included),
 *                DKV_RPC_ABSENT, DKV_RPC_ERROR or DKV_RPC_NOT_READY (`rec` ignored, may be NULL).
 * @return 0; DKV_EINVAL (unknown status, OK without rec, tombstone with a value); DKV_ETOOBIG
 *         (the frame would exceed DKV_RPC_MAX_FRAME_BYTES).
 */
int dkv_rpc_encode_get_reply(dkv_buf_t *out, uint64_t req_id, dkv_rpc_status_t status,
                             const dkv_record_t *rec);

/**
 * The value hash a digest carries: XXH3-64 (xxHash, unseeded) of the value bytes. 64 bits are
 * enough because the hash is only ever compared between two versions whose timestamps and flags
 * are already equal (two writes stamped with one timestamp by two coordinators), and a wrong
 * "equal" there costs the lexicographic tie-break of API.md §6, not a lost write; Scylla's read
 * digests use xxHash64 for the same job. Thread: any: pure.
 */
uint64_t dkv_rpc_value_hash(dkv_slice_t value);

/** The digest of `rec` (value hash of its value, 0 for a tombstone). Thread: any: pure. */
void dkv_rpc_digest_of(const dkv_record_t *rec, dkv_rpc_digest_t *out);

/**
 * DIGEST: asks for the digest of the stored version of `key` (its timestamp, flags, replica set
 * and value hash), not the value.
 * @param key  1..DKV_RPC_MAX_KEY_BYTES bytes.
 * @return 0; DKV_EINVAL (key length out of range).
 */
int dkv_rpc_encode_digest(dkv_buf_t *out, uint64_t req_id, dkv_slice_t key);

/**
 * DIGEST_REPLY.
 * @param status  DKV_RPC_OK (`d` is the stored version's digest), DKV_RPC_ABSENT, DKV_RPC_ERROR
 *                or DKV_RPC_NOT_READY (`d` ignored, may be NULL).
 * @return 0; DKV_EINVAL (unknown status, OK without `d`, a tombstone with a nonzero value hash).
 */
int dkv_rpc_encode_digest_reply(dkv_buf_t *out, uint64_t req_id, dkv_rpc_status_t status,
                                const dkv_rpc_digest_t *d);

/**
 * PUT: stores `rec` under `key` unless the replica holds a newer version. A delete is a tombstone.
 * @param key  1..DKV_RPC_MAX_KEY_BYTES bytes.
 * @return 0; DKV_EINVAL (key length, tombstone with a value); DKV_ETOOBIG (value too large for
 *         one frame).
 */
int dkv_rpc_encode_put(dkv_buf_t *out, uint64_t req_id, dkv_slice_t key, const dkv_record_t *rec);

/**
 * PUT_REPLY.
 * @param status  DKV_RPC_OK or DKV_RPC_ERROR.
 * @return 0; DKV_EINVAL (other status).
 */
int dkv_rpc_encode_put_reply(dkv_buf_t *out, uint64_t req_id, dkv_rpc_status_t status);

/**
 * Turns a PUT_REPLY that is still in `out` into an ERROR reply, in place (same length): for a
 * replica whose write-ahead-log flush failed after the OK was encoded.
 * @param frame_off  Offset in `out` where dkv_rpc_encode_put_reply() began the frame.
 * @return 0; DKV_EINVAL (no PUT_REPLY frame there).
 * Thread: any (the buffer is not shared).
 */
int dkv_rpc_put_reply_fail(dkv_buf_t *out, size_t frame_off);

/**
 * SCAN: asks for an ordered batch of the range described by `scan` (see dkv_rpc_scan_t).
 * @return 0; DKV_EINVAL (a key too long, start_exclusive with an empty start, a zero limit).
 */
int dkv_rpc_encode_scan(dkv_buf_t *out, uint64_t req_id, const dkv_rpc_scan_t *scan);

/**
 * Starts a SCAN_REPLY frame with status OK in `out`; entries follow with
 * dkv_rpc_scan_reply_add(), and dkv_rpc_scan_reply_finish() or _fail() must end it before
 * anything else is appended to `out`.
 * @param w                Caller's storage; `out` is borrowed until finish/fail.
 * @param max_frame_bytes  The finished frame stays within it (the receiver's frame limit,
 *                         dkv_rpc_frame_limit()); values past DKV_RPC_MAX_FRAME_BYTES count as
 *                         that.
 */
void dkv_rpc_scan_reply_begin(dkv_rpc_scan_writer_t *w, dkv_buf_t *out, uint64_t req_id,
                              size_t max_frame_bytes);

/**
 * Appends one entry. Entries should be added in ascending key order (the codec does not check).
 * @param key  1..DKV_RPC_MAX_KEY_BYTES bytes.
 * @return 0; DKV_EINVAL (key length, tombstone with a value); DKV_ETOOBIG (the finished frame
 *         could exceed the writer's max_frame_bytes: finish with more = true and resume later;
 *         never happens for the first entry when max_frame_bytes is dkv_rpc_frame_limit(V) and
 *         the value is at most V bytes). Nothing is appended on an error.
 */
int dkv_rpc_scan_reply_add(dkv_rpc_scan_writer_t *w, dkv_slice_t key, const dkv_record_t *rec);

/**
 * Completes the frame: writes `more`, the last added key as last_key, and patches the entry
 * count and the frame length.
 * @param more  The range continues after the last entry. Ignored (written as false) when no entry
 *              was added, so a reply can never ask the caller to loop without progress.
 */
void dkv_rpc_scan_reply_finish(dkv_rpc_scan_writer_t *w, bool more);

/**
 * Abandons the entries added so far and leaves a complete SCAN_REPLY with status DKV_RPC_ERROR
 * in their place (e.g. the store failed mid-scan).
 */
void dkv_rpc_scan_reply_fail(dkv_rpc_scan_writer_t *w);

/**
 * Starts walking the entries of a decoded SCAN_REPLY.
 * @param msg  A SCAN_REPLY from dkv_rpc_decode(); borrowed, and so are the bytes behind it, for
 *             the iterator's life.
 * Thread: any: pure function.
 */
void dkv_rpc_scan_iter_init(dkv_rpc_scan_iter_t *it, const dkv_rpc_msg_t *msg);

/**
 * Moves to the next entry, in the order the server sent them.
 * @param key, rec  On 0: the entry, borrowing from the frame.
 * @return 0 with an entry; DKV_ENOTFOUND after the last one; DKV_EPROTO (only for a message that
 *         did not come from dkv_rpc_decode(), which validates every entry).
 * Thread: any: pure function.
 */
int dkv_rpc_scan_iter_next(dkv_rpc_scan_iter_t *it, dkv_slice_t *key, dkv_record_t *rec);

/**
 * TREE: asks for one level of the hash tree the receiver shares with the sender, or one
 * segment's digest entries.
 * @param kind   dkv_rpc_tree_kind_t. @param index 0 for BRANCHES, 0..255 for LEAVES, 0..65535
 *               for SEGMENT. @param after SEGMENT only (else empty): 0..DKV_RPC_MAX_KEY_BYTES.
 * @return 0; DKV_EINVAL (kind, index or `after` out of range).
 */
int dkv_rpc_encode_tree(dkv_buf_t *out, uint64_t req_id, uint8_t kind, uint32_t index,
                        dkv_slice_t after);

/**
 * TREE_REPLY with 256 hashes (BRANCHES or LEAVES), status OK.
 * @param hashes  DKV_RPC_TREE_HASHES values, host order (written big-endian). Cannot fail.
 */
void dkv_rpc_encode_tree_hashes(dkv_buf_t *out, uint64_t req_id, uint8_t kind,
                                const uint64_t hashes[DKV_RPC_TREE_HASHES]);

/**
 * TREE_REPLY for a SEGMENT, status OK.
 * @param entries  `count` entries built with dkv_rpc_tree_entry_append(), in key order.
 * @param more     The segment continues after the last entry (needs count >= 1).
 * @return 0; DKV_EINVAL (more without entries); DKV_ETOOBIG (past DKV_RPC_MAX_FRAME_BYTES).
 */
int dkv_rpc_encode_tree_segment(dkv_buf_t *out, uint64_t req_id, dkv_slice_t entries,
                                uint32_t count, bool more);

/** TREE_REPLY for STATS, status OK: records and bytes (see dkv_rpc_msg_t). Cannot fail. */
void dkv_rpc_encode_tree_stats(dkv_buf_t *out, uint64_t req_id, uint64_t records,
                               uint64_t bytes);

/** TREE_REPLY with status DKV_RPC_ERROR or DKV_RPC_NOT_READY. @return 0; DKV_EINVAL. */
int dkv_rpc_encode_tree_status(dkv_buf_t *out, uint64_t req_id, dkv_rpc_status_t status);

/**
 * Appends one SEGMENT entry's bytes to `entries` (key str16 | ts u64 | flags u8 | from u8).
 * @return the bytes appended; 0 (nothing appended) for a bad key or from = 0. Thread: any.
 */
size_t dkv_rpc_tree_entry_append(dkv_buf_t *entries, const dkv_rpc_tree_entry_t *e);

/**
 * Next entry of a decoded SEGMENT reply. Start with `*rest` = msg->tree_reply.entries.
 * @return 0 with `e` (key borrowed from the frame); DKV_ENOTFOUND at the end; DKV_EPROTO.
 * Thread: any: pure.
 */
int dkv_rpc_tree_iter_next(dkv_slice_t *rest, dkv_rpc_tree_entry_t *e);

/** Reads hash `i` (0..255) of a decoded BRANCHES/LEAVES reply. Thread: any: pure. */
uint64_t dkv_rpc_tree_hash(const dkv_rpc_msg_t *m, uint32_t i);

/**
 * PING: asks for the server's wall clock, to estimate the clock offset between the two nodes
 * (Cristian's algorithm; cluster/skew.h). No payload. Cannot fail.
 */
void dkv_rpc_encode_ping(dkv_buf_t *out, uint64_t req_id);

/**
 * PONG: the server's wall clock when it handled the PING, in ms since the Unix epoch (u64).
 * Cannot fail.
 */
void dkv_rpc_encode_pong(dkv_buf_t *out, uint64_t req_id, uint64_t wall_ms);

/** Name of a message type for logs ("GET", ...; "UNKNOWN" otherwise). Thread: any. */
const char *dkv_rpc_type_name(uint8_t type);

#endif
