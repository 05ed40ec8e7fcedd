/*
 * RPC frame codec; the frame diagram is in proto.h and every payload is drawn in
 * docs/protocol.md.
 *
 * DESIGN: encoders write integers byte by byte in big-endian order and never copy a struct.
 * The decoder reads through a cursor whose every read checks the remaining length first, so a
 * frame from the network can make it fail (DKV_EPROTO) but never read out of bounds or assert.
 * Records are encoded and validated by common/record.h, the one record codec.
 */
#include "rpc/proto.h"

#include <string.h>
#include <xxhash.h>

#include "common/err.h"

_Static_assert(DKV_RPC_HEADER_BYTES == 1 + 4 + 1 + 1 + 8,
               "header is magic + length + version + type + request id");
_Static_assert(DKV_RPC_LENGTH_MIN == DKV_RPC_HEADER_BYTES - 5, "length counts ver, type, id");
_Static_assert(DKV_RPC_MAGIC >= 0x80 && DKV_RPC_MAGIC <= 0xFF, "magic is never ASCII");
_Static_assert(DKV_RPC_MAX_KEY_BYTES >= 1 && DKV_RPC_MAX_KEY_BYTES <= 0xFFFF, "key len is u16");
_Static_assert(DKV_RPC_MAX_URL_BYTES <= 0xFFFF && DKV_RPC_MAX_REASON_BYTES <= 0xFFFF,
               "string lengths are u16");
/* A SCAN_REPLY holding one entry with a maximal key around a value must fit the overhead. */
_Static_assert(DKV_RPC_FRAME_OVERHEAD_BYTES >=
                   DKV_RPC_HEADER_BYTES + 1 + 4 +
                       (2 + DKV_RPC_MAX_KEY_BYTES + 4 + DKV_RECORD_HEADER_BYTES) + 1 + 2 +
                       DKV_RPC_MAX_KEY_BYTES,
               "the frame overhead holds every field around one value");
_Static_assert(DKV_RPC_MAX_FRAME_BYTES <= 0xFFFFFFFFu - 5u, "the length field is a u32");

/* Fixed parts of the payloads. */
#define KEY_LEN_BYTES 2u      /* u16 before a key or string */
#define REC_LEN_BYTES 4u      /* u32 before an encoded record */
#define SCAN_TRAILER_FIXED 3u /* more flags u8 + last key length u16 */
#define SCAN_FLAG_START_EXCLUSIVE 0x01u
#define SCAN_REPLY_FLAG_MORE 0x01u
/* Smallest SCAN_REPLY entry: 1-byte key and a record with an empty value. */
#define SCAN_ENTRY_MIN_BYTES (KEY_LEN_BYTES + 1 + REC_LEN_BYTES + DKV_RECORD_MIN_BYTES)

/* ---- big-endian writers ---- */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (24 - 8 * i));
    }
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(v >> (56 - 8 * i));
    }
}

static uint32_t get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void append_u8(dkv_buf_t *b, uint8_t v)
{
    dkv_buf_append(b, &v, 1);
}

static void append_u16(dkv_buf_t *b, uint16_t v)
{
    uint8_t p[2];
    put_u16(p, v);
    dkv_buf_append(b, p, sizeof(p));
}

static void append_u32(dkv_buf_t *b, uint32_t v)
{
    uint8_t p[4];
    put_u32(p, v);
    dkv_buf_append(b, p, sizeof(p));
}

static void append_u64(dkv_buf_t *b, uint64_t v)
{
    uint8_t p[8];
    put_u64(p, v);
    dkv_buf_append(b, p, sizeof(p));
}

/* u16 length + bytes; the caller has checked len <= 0xFFFF. */
static void append_str16(dkv_buf_t *b, dkv_slice_t s)
{
    append_u16(b, (uint16_t)s.len);
    dkv_buf_append(b, s.ptr, s.len);
}

/* u32 length + encoded record; the caller has checked the size against the frame limit. */
static void append_record(dkv_buf_t *b, const dkv_record_t *rec)
{
    append_u32(b, (uint32_t)(DKV_RECORD_HEADER_BYTES + rec->value.len));
    dkv_record_encode(rec, b);
}

/*
 * Starts a frame: writes the header with a zero length and returns the frame's offset, for
 * end_frame() to patch the length once the payload is written. `payload_hint` only sizes the
 * reservation.
 */
static size_t begin_frame(dkv_buf_t *b, uint8_t type, uint64_t req_id, size_t payload_hint)
{
    size_t off = b->len;
    dkv_buf_reserve(b, DKV_RPC_HEADER_BYTES + payload_hint);
    append_u8(b, (uint8_t)DKV_RPC_MAGIC);
    append_u32(b, 0);
    append_u8(b, (uint8_t)DKV_RPC_VERSION);
    append_u8(b, type);
    append_u64(b, req_id);
    return off;
}

static void end_frame(dkv_buf_t *b, size_t off)
{
    /* Encoders check sizes first, so the length always fits the limit and a u32. */
    put_u32(b->data + off + 1, (uint32_t)(b->len - off - 5));
}

static bool key_ok(dkv_slice_t key)
{
    return key.len >= 1 && key.len <= DKV_RPC_MAX_KEY_BYTES;
}

static bool record_ok(const dkv_record_t *rec)
{
    return rec != NULL && !(rec->tombstone && rec->value.len != 0);
}

/* Whole frame size for `fixed` payload bytes plus a record whose value is `value_len` bytes. */
static int check_record_frame(size_t fixed, size_t value_len, size_t max_frame_bytes)
{
    size_t overhead = DKV_RPC_HEADER_BYTES + fixed + REC_LEN_BYTES + DKV_RECORD_HEADER_BYTES;
    if (value_len > max_frame_bytes || overhead + value_len > max_frame_bytes) {
        return DKV_ETOOBIG;
    }
    return 0;
}

static size_t clamp_limit(size_t max_frame_bytes)
{
    return max_frame_bytes < DKV_RPC_MAX_FRAME_BYTES ? max_frame_bytes : DKV_RPC_MAX_FRAME_BYTES;
}

/* ---- decoding cursor ---- */

typedef struct cursor {
    const uint8_t *p;
    size_t left;
} cursor_t;

static int take(cursor_t *c, size_t n, const uint8_t **out)
{
    if (c->left < n) {
        return DKV_EPROTO;
    }
    *out = c->p;
    c->p += n;
    c->left -= n;
    return 0;
}

static int read_u8(cursor_t *c, uint8_t *v)
{
    const uint8_t *p;
    if (take(c, 1, &p) != 0) {
        return DKV_EPROTO;
    }
    *v = p[0];
    return 0;
}

static int read_u16(cursor_t *c, uint16_t *v)
{
    const uint8_t *p;
    if (take(c, 2, &p) != 0) {
        return DKV_EPROTO;
    }
    *v = (uint16_t)(((unsigned)p[0] << 8) | p[1]);
    return 0;
}

static int read_u32(cursor_t *c, uint32_t *v)
{
    const uint8_t *p;
    if (take(c, 4, &p) != 0) {
        return DKV_EPROTO;
    }
    *v = get_u32(p);
    return 0;
}

static int read_u64(cursor_t *c, uint64_t *v)
{
    const uint8_t *p;
    if (take(c, 8, &p) != 0) {
        return DKV_EPROTO;
    }
    uint64_t x = 0;
    for (int i = 0; i < 8; i++) {
        x = (x << 8) | p[i];
    }
    *v = x;
    return 0;
}

/* u16 length + bytes, with min_len <= length <= max_len. */
static int read_str16(cursor_t *c, size_t min_len, size_t max_len, dkv_slice_t *out)
{
    uint16_t n;
    const uint8_t *p;
    if (read_u16(c, &n) != 0 || n < min_len || n > max_len || take(c, n, &p) != 0) {
        return DKV_EPROTO;
    }
    *out = dkv_slice(p, n);
    return 0;
}

/* u32 length + an encoded record that dkv_record_decode() accepts. */
static int read_record(cursor_t *c, dkv_record_t *rec, dkv_slice_t *bytes)
{
    uint32_t n;
    const uint8_t *p;
    if (read_u32(c, &n) != 0 || take(c, n, &p) != 0) {
        return DKV_EPROTO;
    }
    dkv_slice_t s = dkv_slice(p, n);
    if (dkv_record_decode(s, rec) != 0) {
        return DKV_EPROTO;
    }
    *bytes = s;
    return 0;
}

/* One SCAN_REPLY entry. */
static int read_entry(cursor_t *c, dkv_slice_t *key, dkv_record_t *rec)
{
    dkv_slice_t bytes;
    if (read_str16(c, 1, DKV_RPC_MAX_KEY_BYTES, key) != 0 || read_record(c, rec, &bytes) != 0) {
        return DKV_EPROTO;
    }
    return 0;
}

/* ---- framing ---- */

size_t dkv_rpc_frame_limit(size_t max_value_bytes)
{
    size_t floor = DKV_RPC_FRAME_LIMIT_MIN_BYTES - DKV_RPC_FRAME_OVERHEAD_BYTES;
    size_t v = max_value_bytes > floor ? max_value_bytes : floor;
    return v > DKV_MAX_VALUE_BYTES ? DKV_RPC_MAX_FRAME_BYTES : v + DKV_RPC_FRAME_OVERHEAD_BYTES;
}

int dkv_rpc_frame_peek(dkv_slice_t in, size_t max_frame_bytes, size_t *frame_bytes)
{
    if (in.len >= 1 && in.ptr[0] != DKV_RPC_MAGIC) {
        return DKV_EPROTO;
    }
    if (in.len < 5) {
        return DKV_RPC_NEED_MORE;
    }
    /* Magic and length alone decide; reject before the caller buffers a bad frame. */
    uint32_t len = get_u32(in.ptr + 1);
    if (len < DKV_RPC_LENGTH_MIN) {
        return DKV_EPROTO;
    }
    if (len > clamp_limit(max_frame_bytes) - 5) {
        return DKV_ETOOBIG;
    }
    if (in.len < DKV_RPC_HEADER_BYTES) {
        return DKV_RPC_NEED_MORE;
    }
    *frame_bytes = 5 + (size_t)len;
    return 0;
}

int dkv_rpc_frame_header(dkv_slice_t frame, dkv_rpc_header_t *out)
{
    size_t n;
    int rc = dkv_rpc_frame_peek(frame, DKV_RPC_MAX_FRAME_BYTES, &n);
    if (rc == DKV_RPC_NEED_MORE) {
        return DKV_EPROTO;
    }
    if (rc != 0) {
        return rc;
    }
    if (n != frame.len) {
        return DKV_EPROTO;
    }
    cursor_t c = {frame.ptr + 5, frame.len - 5};
    dkv_rpc_header_t h;
    if (read_u8(&c, &h.version) != 0 || read_u8(&c, &h.type) != 0 || read_u64(&c, &h.req_id) != 0) {
        return DKV_EPROTO;
    }
    h.payload_bytes = c.left;
    *out = h;
    return 0;
}

/* ---- payload decoders: each fills `m` from the whole payload `c` ---- */

/* The optional identity block that ends HELLO and HELLO_OK: nothing left, or exactly it. */
static int read_ident(cursor_t *c, bool *has, dkv_ident_info_t *ident)
{
    const uint8_t *p;
    if (c->left == 0) {
        *has = false;
        return 0;
    }
    if (c->left != DKV_RPC_IDENTITY_BYTES || take(c, DKV_RPC_IDENTITY_BYTES, &p) != 0) {
        return DKV_EPROTO;
    }
    memcpy(ident->node_id, p, DKV_NODE_ID_BYTES);
    ident->flags = p[DKV_NODE_ID_BYTES];
    memcpy(ident->known_you, p + DKV_NODE_ID_BYTES + 1, DKV_NODE_ID_BYTES);
    if ((ident->flags & ~DKV_IDENT_FLAGS_KNOWN) != 0) {
        return DKV_EPROTO;
    }
    *has = true;
    return 0;
}

static void append_ident(dkv_buf_t *b, const dkv_ident_info_t *ident)
{
    dkv_buf_append(b, ident->node_id, DKV_NODE_ID_BYTES);
    append_u8(b, (uint8_t)(ident->flags & DKV_IDENT_FLAGS_KNOWN));
    dkv_buf_append(b, ident->known_you, DKV_NODE_ID_BYTES);
}

static int read_fixed(cursor_t *c, uint8_t *out, size_t n)
{
    const uint8_t *p;
    if (take(c, n, &p) != 0) {
        return DKV_EPROTO;
    }
    memcpy(out, p, n);
    return 0;
}

static int decode_hello(cursor_t *c, dkv_rpc_msg_t *m)
{
    if (read_u64(c, &m->hello.fingerprint) != 0 ||
        read_str16(c, 1, DKV_RPC_MAX_URL_BYTES, &m->hello.url) != 0) {
        return DKV_EPROTO;
    }
    /* Optional tail: nothing, the identity block, or the identity block and a nonce. */
    cursor_t ident = *c;
    if (c->left == DKV_RPC_IDENTITY_BYTES + DKV_RPC_NONCE_BYTES) {
        ident.left = DKV_RPC_IDENTITY_BYTES;
        c->p += DKV_RPC_IDENTITY_BYTES;
        c->left -= DKV_RPC_IDENTITY_BYTES;
        if (read_fixed(c, m->hello.nonce, DKV_RPC_NONCE_BYTES) != 0) {
            return DKV_EPROTO;
        }
        m->hello.has_nonce = true;
    } else {
        c->left = 0;
    }
    if (read_ident(&ident, &m->hello.has_ident, &m->hello.ident) != 0 || ident.left != 0) {
        return DKV_EPROTO;
    }
    return 0;
}

static int decode_get_reply(cursor_t *c, dkv_rpc_msg_t *m)
{
    if (read_u8(c, &m->get_reply.status) != 0) {
        return DKV_EPROTO;
    }
    switch (m->get_reply.status) {
    case DKV_RPC_OK:
        return read_record(c, &m->get_reply.rec, &m->get_reply.rec_bytes);
    case DKV_RPC_ABSENT:
    case DKV_RPC_ERROR:
    case DKV_RPC_NOT_READY:
        memset(&m->get_reply.rec, 0, sizeof(m->get_reply.rec));
        m->get_reply.rec_bytes = dkv_slice(NULL, 0);
        return 0;
    default:
        return DKV_EPROTO;
    }
}

static int decode_digest_reply(cursor_t *c, dkv_rpc_msg_t *m)
{
    dkv_rpc_digest_t *d = &m->digest_reply.digest;
    memset(d, 0, sizeof(*d));
    if (read_u8(c, &m->digest_reply.status) != 0) {
        return DKV_EPROTO;
    }
    switch (m->digest_reply.status) {
    case DKV_RPC_OK: {
        uint8_t flags;
        if (read_u64(c, &d->ts) != 0 || read_u8(c, &flags) != 0 ||
            (flags & ~DKV_RECORD_FLAG_TOMBSTONE) != 0 || read_u8(c, &d->from) != 0 ||
            read_u64(c, &d->value_hash) != 0) {
            return DKV_EPROTO;
        }
        d->tombstone = (flags & DKV_RECORD_FLAG_TOMBSTONE) != 0;
        /* Canonical: a tombstone has no value to hash. */
        return d->tombstone && d->value_hash != 0 ? DKV_EPROTO : 0;
    }
    case DKV_RPC_ABSENT:
    case DKV_RPC_ERROR:
    case DKV_RPC_NOT_READY:
        return 0;
    default:
        return DKV_EPROTO;
    }
}

static int decode_put(cursor_t *c, dkv_rpc_msg_t *m)
{
    if (read_str16(c, 1, DKV_RPC_MAX_KEY_BYTES, &m->put.key) != 0 ||
        read_record(c, &m->put.rec, &m->put.rec_bytes) != 0) {
        return DKV_EPROTO;
    }
    return 0;
}

static int decode_status(cursor_t *c, uint8_t *status)
{
    if (read_u8(c, status) != 0 || (*status != DKV_RPC_OK && *status != DKV_RPC_ERROR)) {
        return DKV_EPROTO;
    }
    return 0;
}

static int decode_scan(cursor_t *c, dkv_rpc_msg_t *m)
{
    dkv_rpc_scan_t *s = &m->scan;
    uint8_t flags;
    if (read_u8(c, &flags) != 0 || (flags & ~SCAN_FLAG_START_EXCLUSIVE) != 0 ||
        read_str16(c, 0, DKV_RPC_MAX_KEY_BYTES, &s->start) != 0 ||
        read_str16(c, 0, DKV_RPC_MAX_KEY_BYTES, &s->end) != 0 ||
        read_u32(c, &s->max_records) != 0 || read_u32(c, &s->max_bytes) != 0) {
        return DKV_EPROTO;
    }
    s->start_exclusive = (flags & SCAN_FLAG_START_EXCLUSIVE) != 0;
    if ((s->start_exclusive && s->start.len == 0) || s->max_records == 0 || s->max_bytes == 0) {
        return DKV_EPROTO;
    }
    return 0;
}

static int decode_scan_reply(cursor_t *c, dkv_rpc_msg_t *m)
{
    uint8_t status;
    if (decode_status(c, &status) != 0) {
        return DKV_EPROTO;
    }
    m->scan_reply.status = status;
    m->scan_reply.more = false;
    m->scan_reply.count = 0;
    m->scan_reply.entries = dkv_slice(NULL, 0);
    m->scan_reply.last_key = dkv_slice(NULL, 0);
    if (status == DKV_RPC_ERROR) {
        return 0;
    }
    uint32_t count;
    if (read_u32(c, &count) != 0) {
        return DKV_EPROTO;
    }
    /* Fail fast on a count the remaining bytes cannot possibly hold. */
    if (count > c->left / SCAN_ENTRY_MIN_BYTES) {
        return DKV_EPROTO;
    }
    const uint8_t *entries = c->p;
    dkv_slice_t key = dkv_slice(NULL, 0);
    for (uint32_t i = 0; i < count; i++) {
        dkv_record_t rec;
        if (read_entry(c, &key, &rec) != 0) {
            return DKV_EPROTO;
        }
    }
    size_t entries_len = (size_t)(c->p - entries);
    uint8_t flags;
    dkv_slice_t last_key;
    if (read_u8(c, &flags) != 0 || (flags & ~SCAN_REPLY_FLAG_MORE) != 0 ||
        read_str16(c, 0, DKV_RPC_MAX_KEY_BYTES, &last_key) != 0) {
        return DKV_EPROTO;
    }
    bool more = (flags & SCAN_REPLY_FLAG_MORE) != 0;
    /*
     * last_key repeats the last entry's key (empty without entries), so every reply has exactly
     * one encoding; "more" needs an entry, so a caller resuming after last_key always progresses.
     */
    if (dkv_slice_cmp(last_key, key) != 0 || (more && count == 0)) {
        return DKV_EPROTO;
    }
    m->scan_reply.more = more;
    m->scan_reply.count = count;
    m->scan_reply.entries = dkv_slice(entries, entries_len);
    m->scan_reply.last_key = last_key;
    return 0;
}

#define TREE_ENTRY_MIN_BYTES (KEY_LEN_BYTES + 1 + 8 + 1 + 1)
#define TREE_REPLY_FLAG_MORE 0x01u

static int read_tree_entry(cursor_t *c, dkv_rpc_tree_entry_t *e)
{
    uint8_t flags;
    if (read_str16(c, 1, DKV_RPC_MAX_KEY_BYTES, &e->key) != 0 || read_u64(c, &e->ts) != 0 ||
        read_u8(c, &flags) != 0 || (flags & ~1u) != 0 || read_u8(c, &e->from) != 0 ||
        e->from == 0) {
        return DKV_EPROTO;
    }
    e->tombstone = (flags & 1u) != 0;
    return 0;
}

static int decode_tree(cursor_t *c, dkv_rpc_msg_t *m)
{
    if (read_u8(c, &m->tree.kind) != 0 || read_u32(c, &m->tree.index) != 0 ||
        read_str16(c, 0, DKV_RPC_MAX_KEY_BYTES, &m->tree.after) != 0) {
        return DKV_EPROTO;
    }
    switch (m->tree.kind) {
    case DKV_RPC_TREE_BRANCHES:
    case DKV_RPC_TREE_STATS:
        return m->tree.index == 0 && m->tree.after.len == 0 ? 0 : DKV_EPROTO;
    case DKV_RPC_TREE_LEAVES:
        return m->tree.index < DKV_RPC_TREE_HASHES && m->tree.after.len == 0 ? 0 : DKV_EPROTO;
    case DKV_RPC_TREE_SEGMENT:
        return m->tree.index < DKV_RPC_TREE_SEGMENTS ? 0 : DKV_EPROTO;
    default:
        return DKV_EPROTO;
    }
}

static int decode_tree_reply(cursor_t *c, dkv_rpc_msg_t *m)
{
    uint8_t status;
    if (read_u8(c, &status) != 0) {
        return DKV_EPROTO;
    }
    m->tree_reply.status = status;
    if (status == DKV_RPC_ERROR || status == DKV_RPC_NOT_READY) {
        return 0;
    }
    if (status != DKV_RPC_OK || read_u8(c, &m->tree_reply.kind) != 0) {
        return DKV_EPROTO;
    }
    const uint8_t *p;
    switch (m->tree_reply.kind) {
    case DKV_RPC_TREE_BRANCHES:
    case DKV_RPC_TREE_LEAVES:
        if (take(c, DKV_RPC_TREE_HASHES * 8u, &p) != 0) {
            return DKV_EPROTO;
        }
        m->tree_reply.hashes = dkv_slice(p, DKV_RPC_TREE_HASHES * 8u);
        return 0;
    case DKV_RPC_TREE_STATS:
        return read_u64(c, &m->tree_reply.records) != 0 ? DKV_EPROTO
                                                        : read_u64(c, &m->tree_reply.bytes);
    case DKV_RPC_TREE_SEGMENT: {
        uint8_t flags;
        uint32_t count;
        if (read_u8(c, &flags) != 0 || (flags & ~TREE_REPLY_FLAG_MORE) != 0 ||
            read_u32(c, &count) != 0 || count > c->left / TREE_ENTRY_MIN_BYTES) {
            return DKV_EPROTO;
        }
        const uint8_t *entries = c->p;
        for (uint32_t i = 0; i < count; i++) {
            dkv_rpc_tree_entry_t e;
            if (read_tree_entry(c, &e) != 0) {
                return DKV_EPROTO;
            }
        }
        m->tree_reply.more = (flags & TREE_REPLY_FLAG_MORE) != 0;
        if (m->tree_reply.more && count == 0) {
            return DKV_EPROTO;
        }
        m->tree_reply.count = count;
        m->tree_reply.entries = dkv_slice(entries, (size_t)(c->p - entries));
        return 0;
    }
    default:
        return DKV_EPROTO;
    }
}

static int decode_payload(cursor_t *c, dkv_rpc_msg_t *m)
{
    switch (m->type) {
    case DKV_RPC_HELLO:
        return decode_hello(c, m);
    case DKV_RPC_HELLO_OK:
        return read_ident(c, &m->hello_ok.has_ident, &m->hello_ok.ident);
    case DKV_RPC_HELLO_REJECT:
        return read_str16(c, 0, DKV_RPC_MAX_REASON_BYTES, &m->hello_reject.reason);
    case DKV_RPC_HELLO_CHALLENGE:
        return read_fixed(c, m->challenge.nonce, DKV_RPC_NONCE_BYTES) != 0
                   ? DKV_EPROTO
                   : read_fixed(c, m->challenge.tag, DKV_RPC_TAG_BYTES);
    case DKV_RPC_AUTH:
        return read_fixed(c, m->auth.tag, DKV_RPC_TAG_BYTES);
    case DKV_RPC_GET:
        return read_str16(c, 1, DKV_RPC_MAX_KEY_BYTES, &m->get.key);
    case DKV_RPC_GET_REPLY:
        return decode_get_reply(c, m);
    case DKV_RPC_PUT:
        return decode_put(c, m);
    case DKV_RPC_PUT_REPLY:
        return decode_status(c, &m->put_reply.status);
    case DKV_RPC_SCAN:
        return decode_scan(c, m);
    case DKV_RPC_SCAN_REPLY:
        return decode_scan_reply(c, m);
    case DKV_RPC_TREE:
        return decode_tree(c, m);
    case DKV_RPC_TREE_REPLY:
        return decode_tree_reply(c, m);
    case DKV_RPC_PING:
        return 0; /* no payload: decode checks that nothing is left */
    case DKV_RPC_PONG:
        return read_u64(c, &m->pong.wall_ms);
    case DKV_RPC_DIGEST:
        return read_str16(c, 1, DKV_RPC_MAX_KEY_BYTES, &m->digest.key);
    case DKV_RPC_DIGEST_REPLY:
        return decode_digest_reply(c, m);
    default:
        return DKV_EPROTO;
    }
}

int dkv_rpc_decode(dkv_slice_t frame, dkv_rpc_msg_t *out)
{
    dkv_rpc_header_t h;
    int rc = dkv_rpc_frame_header(frame, &h);
    if (rc != 0) {
        return rc;
    }
    if (h.version != DKV_RPC_VERSION) {
        return DKV_EPROTO;
    }
    dkv_rpc_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = h.type;
    m.req_id = h.req_id;
    cursor_t c = {frame.ptr + DKV_RPC_HEADER_BYTES, h.payload_bytes};
    if (decode_payload(&c, &m) != 0 || c.left != 0) {
        return DKV_EPROTO;
    }
    *out = m;
    return 0;
}

/* ---- encoders ---- */

int dkv_rpc_encode_hello(dkv_buf_t *out, uint64_t req_id, uint64_t fingerprint, dkv_slice_t url,
                         const dkv_ident_info_t *ident, const uint8_t *nonce)
{
    if (url.len < 1 || url.len > DKV_RPC_MAX_URL_BYTES ||
        (ident != NULL && (ident->flags & ~DKV_IDENT_FLAGS_KNOWN) != 0) ||
        (nonce != NULL && ident == NULL)) {
        return DKV_EINVAL;
    }
    size_t off = begin_frame(out, DKV_RPC_HELLO, req_id,
                             8 + KEY_LEN_BYTES + url.len + DKV_RPC_IDENTITY_BYTES +
                                 DKV_RPC_NONCE_BYTES);
    append_u64(out, fingerprint);
    append_str16(out, url);
    if (ident != NULL) {
        append_ident(out, ident);
    }
    if (nonce != NULL) {
        dkv_buf_append(out, nonce, DKV_RPC_NONCE_BYTES);
    }
    end_frame(out, off);
    return 0;
}

void dkv_rpc_encode_hello_challenge(dkv_buf_t *out, uint64_t req_id,
                                    const uint8_t nonce[DKV_RPC_NONCE_BYTES],
                                    const uint8_t tag[DKV_RPC_TAG_BYTES])
{
    size_t off = begin_frame(out, DKV_RPC_HELLO_CHALLENGE, req_id,
                             DKV_RPC_NONCE_BYTES + DKV_RPC_TAG_BYTES);
    dkv_buf_append(out, nonce, DKV_RPC_NONCE_BYTES);
    dkv_buf_append(out, tag, DKV_RPC_TAG_BYTES);
    end_frame(out, off);
}

void dkv_rpc_encode_auth(dkv_buf_t *out, uint64_t req_id, const uint8_t tag[DKV_RPC_TAG_BYTES])
{
    size_t off = begin_frame(out, DKV_RPC_AUTH, req_id, DKV_RPC_TAG_BYTES);
    dkv_buf_append(out, tag, DKV_RPC_TAG_BYTES);
    end_frame(out, off);
}

void dkv_rpc_encode_ping(dkv_buf_t *out, uint64_t req_id)
{
    size_t off = begin_frame(out, DKV_RPC_PING, req_id, 0);
    end_frame(out, off);
}

void dkv_rpc_encode_pong(dkv_buf_t *out, uint64_t req_id, uint64_t wall_ms)
{
    size_t off = begin_frame(out, DKV_RPC_PONG, req_id, 8);
    append_u64(out, wall_ms);
    end_frame(out, off);
}

void dkv_rpc_encode_hello_ok(dkv_buf_t *out, uint64_t req_id, const dkv_ident_info_t *ident)
{
    size_t off = begin_frame(out, DKV_RPC_HELLO_OK, req_id, DKV_RPC_IDENTITY_BYTES);
    if (ident != NULL) {
        append_ident(out, ident);
    }
    end_frame(out, off);
}

void dkv_rpc_encode_hello_reject(dkv_buf_t *out, uint64_t req_id, dkv_slice_t reason)
{
    if (reason.len > DKV_RPC_MAX_REASON_BYTES) {
        reason.len = DKV_RPC_MAX_REASON_BYTES;
    }
    size_t off = begin_frame(out, DKV_RPC_HELLO_REJECT, req_id, KEY_LEN_BYTES + reason.len);
    append_str16(out, reason);
    end_frame(out, off);
}

/* A reply that is its status byte alone. */
static void encode_status_only(dkv_buf_t *out, uint8_t type, uint64_t req_id,
                               dkv_rpc_status_t status)
{
    size_t off = begin_frame(out, type, req_id, 1);
    append_u8(out, (uint8_t)status);
    end_frame(out, off);
}

/* A request that is its key alone (GET, DIGEST). */
static int encode_key_request(dkv_buf_t *out, uint8_t type, uint64_t req_id, dkv_slice_t key)
{
    if (!key_ok(key)) {
        return DKV_EINVAL;
    }
    size_t off = begin_frame(out, type, req_id, KEY_LEN_BYTES + key.len);
    append_str16(out, key);
    end_frame(out, off);
    return 0;
}

int dkv_rpc_encode_get(dkv_buf_t *out, uint64_t req_id, dkv_slice_t key)
{
    return encode_key_request(out, DKV_RPC_GET, req_id, key);
}

int dkv_rpc_encode_get_reply(dkv_buf_t *out, uint64_t req_id, dkv_rpc_status_t status,
                             const dkv_record_t *rec)
{
    if (status == DKV_RPC_ABSENT || status == DKV_RPC_ERROR || status == DKV_RPC_NOT_READY) {
        encode_status_only(out, DKV_RPC_GET_REPLY, req_id, status);
        return 0;
    }
    if (status != DKV_RPC_OK || !record_ok(rec)) {
        return DKV_EINVAL;
    }
    int rc = check_record_frame(1, rec->value.len, DKV_RPC_MAX_FRAME_BYTES);
    if (rc != 0) {
        return rc;
    }
    size_t off = begin_frame(out, DKV_RPC_GET_REPLY, req_id,
                             1 + REC_LEN_BYTES + DKV_RECORD_HEADER_BYTES + rec->value.len);
    append_u8(out, (uint8_t)status);
    append_record(out, rec);
    end_frame(out, off);
    return 0;
}

uint64_t dkv_rpc_value_hash(dkv_slice_t value)
{
    return XXH3_64bits(value.ptr, value.len);
}

void dkv_rpc_digest_of(const dkv_record_t *rec, dkv_rpc_digest_t *out)
{
    out->ts = rec->ts;
    out->tombstone = rec->tombstone;
    out->from = rec->from;
    out->value_hash = rec->tombstone ? 0 : dkv_rpc_value_hash(rec->value);
}

int dkv_rpc_encode_digest(dkv_buf_t *out, uint64_t req_id, dkv_slice_t key)
{
    return encode_key_request(out, DKV_RPC_DIGEST, req_id, key);
}

int dkv_rpc_encode_digest_reply(dkv_buf_t *out, uint64_t req_id, dkv_rpc_status_t status,
                                const dkv_rpc_digest_t *d)
{
    if (status == DKV_RPC_ABSENT || status == DKV_RPC_ERROR || status == DKV_RPC_NOT_READY) {
        encode_status_only(out, DKV_RPC_DIGEST_REPLY, req_id, status);
        return 0;
    }
    if (status != DKV_RPC_OK || d == NULL || (d->tombstone && d->value_hash != 0)) {
        return DKV_EINVAL;
    }
    size_t off = begin_frame(out, DKV_RPC_DIGEST_REPLY, req_id, 1 + DKV_RPC_DIGEST_BYTES);
    append_u8(out, (uint8_t)status);
    append_u64(out, d->ts);
    append_u8(out, d->tombstone ? (uint8_t)DKV_RECORD_FLAG_TOMBSTONE : 0);
    append_u8(out, d->from);
    append_u64(out, d->value_hash);
    end_frame(out, off);
    return 0;
}

int dkv_rpc_encode_put(dkv_buf_t *out, uint64_t req_id, dkv_slice_t key, const dkv_record_t *rec)
{
    if (!key_ok(key) || !record_ok(rec)) {
        return DKV_EINVAL;
    }
    int rc =
        check_record_frame(KEY_LEN_BYTES + key.len, rec->value.len, DKV_RPC_MAX_FRAME_BYTES);
    if (rc != 0) {
        return rc;
    }
    size_t off = begin_frame(out, DKV_RPC_PUT, req_id,
                             KEY_LEN_BYTES + key.len + REC_LEN_BYTES + DKV_RECORD_HEADER_BYTES +
                                 rec->value.len);
    append_str16(out, key);
    append_record(out, rec);
    end_frame(out, off);
    return 0;
}

int dkv_rpc_encode_put_reply(dkv_buf_t *out, uint64_t req_id, dkv_rpc_status_t status)
{
    if (status != DKV_RPC_OK && status != DKV_RPC_ERROR) {
        return DKV_EINVAL;
    }
    encode_status_only(out, DKV_RPC_PUT_REPLY, req_id, status);
    return 0;
}

int dkv_rpc_put_reply_fail(dkv_buf_t *out, size_t frame_off)
{
    /* magic, length, version, type, request id, then the status byte (the header diagram). */
    if (frame_off > out->len || out->len - frame_off < DKV_RPC_HEADER_BYTES + 1 ||
        out->data[frame_off] != DKV_RPC_MAGIC || out->data[frame_off + 6] != DKV_RPC_PUT_REPLY) {
        return DKV_EINVAL;
    }
    out->data[frame_off + DKV_RPC_HEADER_BYTES] = (uint8_t)DKV_RPC_ERROR;
    return 0;
}

int dkv_rpc_encode_scan(dkv_buf_t *out, uint64_t req_id, const dkv_rpc_scan_t *scan)
{
    if (scan->start.len > DKV_RPC_MAX_KEY_BYTES || scan->end.len > DKV_RPC_MAX_KEY_BYTES ||
        (scan->start_exclusive && scan->start.len == 0) || scan->max_records == 0 ||
        scan->max_bytes == 0) {
        return DKV_EINVAL;
    }
    size_t off = begin_frame(out, DKV_RPC_SCAN, req_id,
                             1 + 2 * KEY_LEN_BYTES + scan->start.len + scan->end.len + 8);
    append_u8(out, scan->start_exclusive ? (uint8_t)SCAN_FLAG_START_EXCLUSIVE : 0);
    append_str16(out, scan->start);
    append_str16(out, scan->end);
    append_u32(out, scan->max_records);
    append_u32(out, scan->max_bytes);
    end_frame(out, off);
    return 0;
}

void dkv_rpc_scan_reply_begin(dkv_rpc_scan_writer_t *w, dkv_buf_t *out, uint64_t req_id,
                              size_t max_frame_bytes)
{
    w->out = out;
    w->max_frame_bytes = clamp_limit(max_frame_bytes);
    w->frame_off = begin_frame(out, DKV_RPC_SCAN_REPLY, req_id, 64);
    append_u8(out, DKV_RPC_OK);
    append_u32(out, 0); /* count, patched by finish */
    w->last_key_off = 0;
    w->last_key_len = 0;
    w->count = 0;
    w->frame_bytes = out->len - w->frame_off;
}

int dkv_rpc_scan_reply_add(dkv_rpc_scan_writer_t *w, dkv_slice_t key, const dkv_record_t *rec)
{
    if (!key_ok(key) || !record_ok(rec)) {
        return DKV_EINVAL;
    }
    /*
     * Room for the frame so far, this entry, and the trailer that will repeat this key as
     * last_key. check_record_frame() adds the header and the record's own framing.
     */
    size_t payload_so_far = w->frame_bytes - DKV_RPC_HEADER_BYTES;
    size_t fixed = payload_so_far + KEY_LEN_BYTES + key.len + SCAN_TRAILER_FIXED + key.len;
    if (check_record_frame(fixed, rec->value.len, w->max_frame_bytes) != 0 ||
        w->count == UINT32_MAX) {
        return DKV_ETOOBIG;
    }
    dkv_buf_t *out = w->out;
    dkv_buf_reserve(out, KEY_LEN_BYTES + key.len + REC_LEN_BYTES + DKV_RECORD_HEADER_BYTES +
                             rec->value.len);
    append_u16(out, (uint16_t)key.len);
    w->last_key_off = out->len;
    w->last_key_len = key.len;
    dkv_buf_append(out, key.ptr, key.len);
    append_record(out, rec);
    w->count++;
    w->frame_bytes = out->len - w->frame_off;
    return 0;
}

void dkv_rpc_scan_reply_finish(dkv_rpc_scan_writer_t *w, bool more)
{
    dkv_buf_t *out = w->out;
    bool any = w->count > 0;
    /* Reserve first: the last key is copied from this same buffer, which must not move under it. */
    dkv_buf_reserve(out, SCAN_TRAILER_FIXED + w->last_key_len);
    append_u8(out, (more && any) ? (uint8_t)SCAN_REPLY_FLAG_MORE : 0);
    append_u16(out, (uint16_t)w->last_key_len);
    if (any) {
        memmove(out->data + out->len, out->data + w->last_key_off, w->last_key_len);
        out->len += w->last_key_len;
    }
    put_u32(out->data + w->frame_off + DKV_RPC_HEADER_BYTES + 1, w->count);
    end_frame(out, w->frame_off);
    w->frame_bytes = out->len - w->frame_off;
}

void dkv_rpc_scan_reply_fail(dkv_rpc_scan_writer_t *w)
{
    dkv_buf_t *out = w->out;
    /* Truncate back to the status byte and make it an error reply with no body. */
    out->len = w->frame_off + DKV_RPC_HEADER_BYTES;
    append_u8(out, DKV_RPC_ERROR);
    end_frame(out, w->frame_off);
    w->count = 0;
    w->last_key_len = 0;
    w->frame_bytes = out->len - w->frame_off;
}

/* ---- TREE ---- */

int dkv_rpc_encode_tree(dkv_buf_t *out, uint64_t req_id, uint8_t kind, uint32_t index,
                        dkv_slice_t after)
{
    bool ok = ((kind == DKV_RPC_TREE_BRANCHES || kind == DKV_RPC_TREE_STATS) && index == 0 &&
               after.len == 0) ||
              (kind == DKV_RPC_TREE_LEAVES && index < DKV_RPC_TREE_HASHES && after.len == 0) ||
              (kind == DKV_RPC_TREE_SEGMENT && index < DKV_RPC_TREE_SEGMENTS &&
               after.len <= DKV_RPC_MAX_KEY_BYTES);
    if (!ok) {
        return DKV_EINVAL;
    }
    size_t off = begin_frame(out, DKV_RPC_TREE, req_id, 1 + 4 + KEY_LEN_BYTES + after.len);
    append_u8(out, kind);
    append_u32(out, index);
    append_str16(out, after);
    end_frame(out, off);
    return 0;
}

void dkv_rpc_encode_tree_hashes(dkv_buf_t *out, uint64_t req_id, uint8_t kind,
                                const uint64_t hashes[DKV_RPC_TREE_HASHES])
{
    size_t off = begin_frame(out, DKV_RPC_TREE_REPLY, req_id, 2 + DKV_RPC_TREE_HASHES * 8u);
    append_u8(out, DKV_RPC_OK);
    append_u8(out, kind);
    for (uint32_t i = 0; i < DKV_RPC_TREE_HASHES; i++) {
        append_u64(out, hashes[i]);
    }
    end_frame(out, off);
}

int dkv_rpc_encode_tree_segment(dkv_buf_t *out, uint64_t req_id, dkv_slice_t entries,
                                uint32_t count, bool more)
{
    if (more && count == 0) {
        return DKV_EINVAL;
    }
    if (DKV_RPC_HEADER_BYTES + 7 + entries.len > DKV_RPC_MAX_FRAME_BYTES) {
        return DKV_ETOOBIG;
    }
    size_t off = begin_frame(out, DKV_RPC_TREE_REPLY, req_id, 7 + entries.len);
    append_u8(out, DKV_RPC_OK);
    append_u8(out, DKV_RPC_TREE_SEGMENT);
    append_u8(out, more ? (uint8_t)TREE_REPLY_FLAG_MORE : 0);
    append_u32(out, count);
    dkv_buf_append(out, entries.ptr, entries.len);
    end_frame(out, off);
    return 0;
}

void dkv_rpc_encode_tree_stats(dkv_buf_t *out, uint64_t req_id, uint64_t records,
                               uint64_t bytes)
{
    size_t off = begin_frame(out, DKV_RPC_TREE_REPLY, req_id, 18);
    append_u8(out, DKV_RPC_OK);
    append_u8(out, DKV_RPC_TREE_STATS);
    append_u64(out, records);
    append_u64(out, bytes);
    end_frame(out, off);
}

int dkv_rpc_encode_tree_status(dkv_buf_t *out, uint64_t req_id, dkv_rpc_status_t status)
{
    if (status != DKV_RPC_ERROR && status != DKV_RPC_NOT_READY) {
        return DKV_EINVAL;
    }
    encode_status_only(out, DKV_RPC_TREE_REPLY, req_id, status);
    return 0;
}

size_t dkv_rpc_tree_entry_append(dkv_buf_t *entries, const dkv_rpc_tree_entry_t *e)
{
    if (!key_ok(e->key) || e->from == 0) {
        return 0;
    }
    size_t before = entries->len;
    append_str16(entries, e->key);
    append_u64(entries, e->ts);
    append_u8(entries, e->tombstone ? 1u : 0u);
    append_u8(entries, e->from);
    return entries->len - before;
}

int dkv_rpc_tree_iter_next(dkv_slice_t *rest, dkv_rpc_tree_entry_t *e)
{
    if (rest->len == 0) {
        return DKV_ENOTFOUND;
    }
    cursor_t c = {rest->ptr, rest->len};
    if (read_tree_entry(&c, e) != 0) {
        return DKV_EPROTO;
    }
    *rest = dkv_slice(c.p, c.left);
    return 0;
}

uint64_t dkv_rpc_tree_hash(const dkv_rpc_msg_t *m, uint32_t i)
{
    const uint8_t *p = m->tree_reply.hashes.ptr + (size_t)(i % DKV_RPC_TREE_HASHES) * 8u;
    uint64_t x = 0;
    for (int k = 0; k < 8; k++) {
        x = (x << 8) | p[k];
    }
    return x;
}

/* ---- SCAN_REPLY entries ---- */

void dkv_rpc_scan_iter_init(dkv_rpc_scan_iter_t *it, const dkv_rpc_msg_t *msg)
{
    if (msg->type != DKV_RPC_SCAN_REPLY) {
        it->rest = dkv_slice(NULL, 0);
        it->left = 0;
        return;
    }
    it->rest = msg->scan_reply.entries;
    it->left = msg->scan_reply.count;
}

int dkv_rpc_scan_iter_next(dkv_rpc_scan_iter_t *it, dkv_slice_t *key, dkv_record_t *rec)
{
    if (it->left == 0) {
        return DKV_ENOTFOUND;
    }
    cursor_t c = {it->rest.ptr, it->rest.len};
    dkv_slice_t k;
    dkv_record_t r;
    if (read_entry(&c, &k, &r) != 0) {
        return DKV_EPROTO;
    }
    it->rest = dkv_slice(c.p, c.left);
    it->left--;
    *key = k;
    *rec = r;
    return 0;
}

const char *dkv_rpc_type_name(uint8_t type)
{
    switch (type) {
    case DKV_RPC_HELLO:
        return "HELLO";
    case DKV_RPC_HELLO_OK:
        return "HELLO_OK";
    case DKV_RPC_HELLO_REJECT:
        return "HELLO_REJECT";
    case DKV_RPC_HELLO_CHALLENGE:
        return "HELLO_CHALLENGE";
    case DKV_RPC_AUTH:
        return "AUTH";
    case DKV_RPC_GET:
        return "GET";
    case DKV_RPC_GET_REPLY:
        return "GET_REPLY";
    case DKV_RPC_PUT:
        return "PUT";
    case DKV_RPC_PUT_REPLY:
        return "PUT_REPLY";
    case DKV_RPC_SCAN:
        return "SCAN";
    case DKV_RPC_SCAN_REPLY:
        return "SCAN_REPLY";
    case DKV_RPC_TREE:
        return "TREE";
    case DKV_RPC_TREE_REPLY:
        return "TREE_REPLY";
    case DKV_RPC_PING:
        return "PING";
    case DKV_RPC_DIGEST:
        return "DIGEST";
    case DKV_RPC_DIGEST_REPLY:
        return "DIGEST_REPLY";
    case DKV_RPC_PONG:
        return "PONG";
    default:
        return "UNKNOWN";
    }
}
