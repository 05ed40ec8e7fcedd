/* Versioned record codec and last-write-wins order; the layout diagram is in record.h. */
#include "common/record.h"

#include "common/err.h"

_Static_assert(DKV_RECORD_HEADER_BYTES == 1 + 1 + 8 + 1, "record header is ver + flags + ts + from");
_Static_assert(DKV_RECORD_V1_HEADER_BYTES == 1 + 1 + 8, "version 1 header is ver + flags + ts");

void dkv_record_encode_header(const dkv_record_t *r, uint8_t out[DKV_RECORD_HEADER_BYTES])
{
    out[0] = (uint8_t)DKV_RECORD_VERSION;
    out[1] = r->tombstone ? (uint8_t)DKV_RECORD_FLAG_TOMBSTONE : 0;
    for (int i = 0; i < 8; i++) {
        out[2 + i] = (uint8_t)(r->ts >> (56 - 8 * i));
    }
    out[10] = r->from;
}

void dkv_record_encode(const dkv_record_t *r, dkv_buf_t *out)
{
    uint8_t hdr[DKV_RECORD_HEADER_BYTES];
    dkv_record_encode_header(r, hdr);
    dkv_buf_reserve(out, sizeof(hdr) + r->value.len);
    dkv_buf_append(out, hdr, sizeof(hdr));
    dkv_buf_append(out, r->value.ptr, r->value.len);
}

int dkv_record_decode(dkv_slice_t in, dkv_record_t *out)
{
    size_t hdr_bytes;
    if (in.len >= 1 && in.ptr[0] == DKV_RECORD_VERSION) {
        hdr_bytes = DKV_RECORD_HEADER_BYTES;
    } else if (in.len >= 1 && in.ptr[0] == 1) {
        hdr_bytes = DKV_RECORD_V1_HEADER_BYTES;
    } else {
        return DKV_EPROTO;
    }
    if (in.len < hdr_bytes) {
        return DKV_EPROTO;
    }
    uint8_t flags = in.ptr[1];
    if ((flags & ~DKV_RECORD_FLAG_TOMBSTONE) != 0) {
        return DKV_EPROTO;
    }
    bool tombstone = (flags & DKV_RECORD_FLAG_TOMBSTONE) != 0;
    if (tombstone && in.len != hdr_bytes) {
        return DKV_EPROTO;
    }
    uint64_t ts = 0;
    for (int i = 0; i < 8; i++) {
        ts = (ts << 8) | in.ptr[2 + i];
    }
    out->ts = ts;
    out->tombstone = tombstone;
    out->from = hdr_bytes == DKV_RECORD_HEADER_BYTES ? in.ptr[10] : 0;
    out->value = dkv_slice(in.ptr + hdr_bytes, in.len - hdr_bytes);
    return 0;
}

int dkv_record_cmp(const dkv_record_t *a, const dkv_record_t *b)
{
    if (a->ts != b->ts) {
        return a->ts > b->ts ? 1 : -1;
    }
    if (a->tombstone != b->tombstone) {
        return a->tombstone ? 1 : -1;
    }
    if (a->tombstone) {
        return 0;
    }
    /* Smaller value is newer, so the comparison is reversed. */
    return -dkv_slice_cmp(a->value, b->value);
}
