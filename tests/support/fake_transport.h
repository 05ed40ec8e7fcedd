/*
 * Test fake of the coordinator's transport (dkv_coord_send_fn, coord/coord.h): it records every
 * replica request in order and lets the test decide, one request at a time and whenever it likes,
 * how the peer answers (a version, "absent", stored, or an error), or makes a peer refuse requests
 * at submit time as an open circuit breaker does. It holds the RPC contract on behalf of the test:
 * a refused request's callback never runs, and an accepted one's runs exactly once, never before
 * the send returns; dkv_fake_transport_free() reports requests left unanswered.
 */
#ifndef DKV_TESTS_SUPPORT_FAKE_TRANSPORT_H
#define DKV_TESTS_SUPPORT_FAKE_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/record.h"
#include "common/slice.h"
#include "rpc/rpc.h"

typedef struct dkv_fake_transport dkv_fake_transport_t;

/** Where a recorded request stands. */
typedef enum dkv_fake_call_state {
    DKV_FAKE_PENDING = 0, /* accepted; the callback has not run yet */
    DKV_FAKE_REPLIED = 1, /* accepted; the callback ran once */
    DKV_FAKE_REFUSED = 2, /* refused at submit (the send returned `refused_rc`); no callback */
} dkv_fake_call_state_t;

/**
 * One recorded request. Everything is a copy made at submit time, owned by the fake and valid
 * until dkv_fake_transport_free(), whatever the caller did with its own buffers since.
 */
typedef struct dkv_fake_call {
    size_t seq;          /* 0-based position among all requests, in submit order */
    uint32_t peer;       /* ring index the request went to */
    dkv_rpc_type_t type; /* DKV_RPC_GET, DKV_RPC_DIGEST or DKV_RPC_PUT */
    dkv_slice_t key;     /* points into `key_buf` */
    bool has_rec;        /* PUT: `rec` holds the record sent */
    dkv_record_t rec;    /* PUT only; value points into `value_buf` */
    uint64_t timeout_ms; /* as the caller gave it */
    dkv_fake_call_state_t state;
    int refused_rc;      /* DKV_FAKE_REFUSED: what the send returned */
    int reply_rc;        /* DKV_FAKE_REPLIED: the rc passed to the callback */
    dkv_rpc_reply_cb cb; /* accepted requests: the caller's callback and argument */
    dkv_rpc_digest_cb digest_cb; /* instead of cb for a DIGEST */
    void *arg;
    dkv_buf_t key_buf;
    dkv_buf_t value_buf;
} dkv_fake_call_t;

/**
 * Creates a fake transport that accepts every request until told otherwise.
 * @return The fake; release with dkv_fake_transport_free(). Aborts on allocation failure.
 * Thread: any; the fake then belongs to that thread.
 */
dkv_fake_transport_t *dkv_fake_transport_new(void);

/**
 * Frees the fake and every recorded request. Requests still pending are never answered (their
 * callbacks never run, so whatever the caller keeps for them leaks): check, answer or drain them
 * first. NULL is a no-op.
 */
void dkv_fake_transport_free(dkv_fake_transport_t *ft);

/**
 * Checks the contract once a test is over: every accepted request was answered, and no reply was
 * attempted on a request that was already answered or refused (a callback run twice).
 * @param why  On DKV_EINVAL: a NUL-terminated description of the first problem (`why_len` bytes).
 * @return 0; DKV_EINVAL.
 */
int dkv_fake_transport_check(const dkv_fake_transport_t *ft, char *why, size_t why_len);

/**
 * The send function: pass it as dkv_coord_env_t.send with `ft` as send_ctx. Records the request
 * (copies key and record); refuses it if its peer is set to refuse (dkv_fake_transport_refuse()).
 * @return 0 and the request is pending until the test answers it; or the peer's refusal code and
 *         the callback never runs.
 */
int dkv_fake_transport_send(void *ft, uint32_t peer, const dkv_rpc_call_t *call,
                            dkv_rpc_reply_cb cb, void *arg);

/**
 * Makes every later request to `peer` fail at submit time with `rc` (as an open circuit breaker
 * does with DKV_EUNAVAIL); rc 0 accepts them again. Requests already recorded are not affected.
 */
void dkv_fake_transport_refuse(dkv_fake_transport_t *ft, uint32_t peer, int rc);

/** Number of requests recorded so far, refused ones included. */
size_t dkv_fake_transport_count(const dkv_fake_transport_t *ft);

/** Number of accepted requests whose callback has not run yet. */
size_t dkv_fake_transport_pending(const dkv_fake_transport_t *ft);

/** Recorded request number `seq` (0..count-1), owned by the fake; NULL when out of range. */
const dkv_fake_call_t *dkv_fake_transport_call(const dkv_fake_transport_t *ft, size_t seq);

/**
 * Finds the first request at or after position `start_seq` that went to `peer` with `type`.
 * @return Its position, or -1 when there is none.
 */
long dkv_fake_transport_find(const dkv_fake_transport_t *ft, size_t start_seq, uint32_t peer,
                             dkv_rpc_type_t type);

/**
 * Counts the requests at or after position `start_seq` of `type` (refused ones included) that
 * went to `peer`; UINT32_MAX as `peer` counts every peer.
 */
size_t dkv_fake_transport_count_of(const dkv_fake_transport_t *ft, size_t start_seq, uint32_t peer,
                                   dkv_rpc_type_t type);

/**
 * Answers pending request `seq`: its callback runs now, once, with `rc` and `rec`.
 * A record is passed in a buffer of the fake's that is freed as soon as the callback returns, so a
 * caller that keeps a pointer into it instead of copying is caught by AddressSanitizer. A DIGEST
 * answered with a record gets that record's digest (dkv_rpc_digest_of(), as a real replica
 * computes it), so a test answers GETs and DIGESTs alike with the version the peer holds.
 * @param rc   0 (GET or DIGEST found `rec`; PUT stored), DKV_ENOTFOUND (GET, DIGEST: absent),
 *             or an error code.
 * @param rec  Borrowed for the call; required for a GET or DIGEST answered with 0, else NULL.
 * @return 0; DKV_EINVAL (no such request, already answered, refused, or a GET answered 0 without
 *         a record): nothing runs and the violation is kept for dkv_fake_transport_check().
 */
int dkv_fake_transport_reply(dkv_fake_transport_t *ft, size_t seq, int rc, const dkv_record_t *rec);

/** A GET's or DIGEST's peer has this version: dkv_fake_transport_reply(ft, seq, 0, rec). */
int dkv_fake_transport_reply_found(dkv_fake_transport_t *ft, size_t seq, const dkv_record_t *rec);

/** A GET's peer has no version: dkv_fake_transport_reply(ft, seq, DKV_ENOTFOUND, NULL). */
int dkv_fake_transport_reply_absent(dkv_fake_transport_t *ft, size_t seq);

/** A PUT's peer stored the record: dkv_fake_transport_reply(ft, seq, 0, NULL). */
int dkv_fake_transport_reply_stored(dkv_fake_transport_t *ft, size_t seq);

/**
 * The request failed with `rc` (DKV_ETIMEDOUT, DKV_EUNAVAIL, DKV_EIO, DKV_ENOTREADY, ...):
 * dkv_fake_transport_reply(ft, seq, rc, NULL).
 */
int dkv_fake_transport_reply_error(dkv_fake_transport_t *ft, size_t seq, int rc);

/**
 * Answers every pending request with `rc` and no record (a GET or DIGEST with rc 0 is answered
 * "absent"),
 * oldest first, including requests the callbacks submit meanwhile (e.g. repair writes); a test's
 * teardown uses it to end the operations a failed test left in flight.
 * @return How many requests it answered.
 */
size_t dkv_fake_transport_drain(dkv_fake_transport_t *ft, int rc);

#endif
