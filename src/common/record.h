/*
 * The versioned record: what a replica stores per key and what the RPC protocol carries. One codec,
 * one comparison (the last-write-wins version order of API.md §6), used by store/, rpc/ and coord/.
 *
 * Layout (all integers big-endian; docs/formats.md has the same picture):
 *
 *    0        1        2                                          10       11
 *   +--------+--------+------------------------------------------+--------+-----------------+
 *   | ver=2  | flags  | timestamp: hybrid logical clock, u64 BE  | from   | value (0..N B)  |
 *   +--------+--------+------------------------------------------+--------+-----------------+
 *   flags: bit 0 = tombstone (value must then be empty); bits 1..7 must be zero.
 *   from:  the write's replica-set size: the record belongs on the first `from` nodes of its
 *          key's preference list (API.md §5.1); 1..255. Hints and repair never write it anywhere
 *          else (API.md §5.3).
 *
 * Version 1 (written before 0.2) has no `from` byte: a 10-byte header, then the value. It still
 * decodes, with from = 0 ("unknown"); every encoder writes version 2.
 */
#ifndef DKV_COMMON_RECORD_H
#define DKV_COMMON_RECORD_H

#include <stdbool.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/slice.h"

#define DKV_RECORD_VERSION 2u
#define DKV_RECORD_HEADER_BYTES 11u    /* version 2, what every encoder writes */
#define DKV_RECORD_V1_HEADER_BYTES 10u /* version 1: no `from` byte */
#define DKV_RECORD_MIN_BYTES DKV_RECORD_V1_HEADER_BYTES
#define DKV_RECORD_FLAG_TOMBSTONE 0x01u

typedef struct dkv_record {
    uint64_t ts;       /* hybrid logical clock timestamp (cluster/hlc.h) */
    bool tombstone;    /* a delete; value is then empty */
    dkv_slice_t value; /* borrowed: points into the buffer it was decoded from */
    uint8_t from;      /* replica-set size of the write; 0 = unknown (a version-1 record) */
} dkv_record_t;

/**
 * Writes the DKV_RECORD_HEADER_BYTES-byte (version 2) header of `r` into `out`; `r->value` is
 * not read. Thread: any.
 */
void dkv_record_encode_header(const dkv_record_t *r, uint8_t out[DKV_RECORD_HEADER_BYTES]);

/** Appends the whole encoded record (header + value) to `out`. Thread: any. */
void dkv_record_encode(const dkv_record_t *r, dkv_buf_t *out);

/**
 * Decodes `in` into `out`; `out->value` borrows from `in`.
 *
 * @return 0; DKV_EPROTO when `in` is shorter than the header, has an unknown version, unknown
 *         flag bits, or a tombstone with a value. `out` is written only on success.
 * Thread: any.
 */
int dkv_record_decode(dkv_slice_t in, dkv_record_t *out);

/**
 * Last-write-wins version order (API.md §6): the greater timestamp is newer; on equal timestamps a
 * tombstone beats a value; on equal timestamps between values the lexicographically smaller value
 * (unsigned bytes, proper prefix first) is newer. Identical on every node.
 *
 * @return >0 if `a` is newer than `b`, <0 if older, 0 if they are the same version.
 * Thread: any.
 */
int dkv_record_cmp(const dkv_record_t *a, const dkv_record_t *b);

#endif
