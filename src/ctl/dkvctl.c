/*
 * dkvctl: the command-line client of a dkv cluster. Reads, writes and deletes keys through any
 * node (failing over to the next endpoint when one does not answer, retrying 503 with backoff),
 * prints a node's local range, and shows the cluster: status of every node, ring ownership, hints
 * and anti-entropy repair. libcurl does HTTP; the pure logic is in ctl.[ch].
 *
 * DESIGN
 * One libcurl easy handle serves every request, so consecutive requests to a node reuse its
 * keep-alive connection. A request goes through request_on(): the retry policy of ctl.h picks
 * the endpoint, attempt() makes one HTTP exchange and classifies it. Cluster-wide commands read
 * the cluster list from the first endpoint that answers `/v0/status?verbose=1`, then ask every
 * node directly (no failover: a node that does not answer is reported as down).
 * Exit codes: 0 success, 1 `get` of an absent key, 2 usage error, 3 any other failure.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "cluster/ring.h"
#include "common/buf.h"
#include "common/conf.h"
#include "common/err.h"
#include "ctl/ctl.h"

#define EXIT_NOTFOUND 1
#define EXIT_USAGE 2
#define EXIT_FAIL 3

#define DEFAULT_ENDPOINT "http://127.0.0.1:8080"
#define DEFAULT_CONNECT_TIMEOUT_MS 1000
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_RETRIES 5
#define DEFAULT_BACKOFF_MS 100
#define MAX_BACKOFF_MS 5000
#define DEFAULT_WAIT_MS 60000
/* Largest value `put` reads from stdin and `get` accepts; nodes refuse far less (1 MiB default). */
#define MAX_VALUE_BYTES ((size_t)1 << 30)
/* How much of an error body is kept, for the one-line reason. */
#define MAX_ERROR_BODY_BYTES 4096
/* Largest JSON document (status, hints, repair) accepted from a node. */
#define MAX_JSON_BYTES ((size_t)16 << 20)

typedef struct ctl {
    dkv_ctl_endpoints_t eps;
    long connect_timeout_ms;
    long timeout_ms;
    unsigned retries;
    unsigned backoff_ms;
    bool verbose;
    CURL *curl;
    /* command options */
    long ack;   /* 0: the node's default */
    long from;  /* 0: the node's default */
    bool raw;   /* scan: length-prefixed records */
    char *node; /* hints/repair: only this node (owned, normalised) */
    long wait_ms;
    long vnodes;
} ctl_t;

/* One HTTP request as dkvctl makes it. */
typedef struct req {
    const char *method;       /* GET, PUT, DELETE, POST */
    const char *target;       /* path and query, already encoded */
    dkv_slice_t body;         /* PUT only */
    long timeout_ms;          /* whole exchange; 0: none, only a stall limit (scan) */
    dkv_ctl_chunks_t *chunks; /* non-NULL: a 200 body is raw chunked framing for this decoder */
    size_t max_body_bytes;    /* of a collected 200 body */
} req_t;

/* What came back. */
typedef struct resp {
    CURL *curl;
    const req_t *req;
    long status; /* 0 until a response arrived */
    dkv_buf_t body;
    bool too_big;  /* a 200 body over req->max_body_bytes */
    bool streamed; /* body bytes went to the decoder: the request cannot be retried */
    bool checked;  /* the framing of a streamed body was checked */
    int stream_rc; /* the decoder's error, or DKV_EPROTO for an unchunked body */
    char errbuf[CURL_ERROR_SIZE];
} resp_t;

/* ---- small helpers ---- */

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("dkvctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return EXIT_FAIL;
}

__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("dkvctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs(" (see dkvctl --help)\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
}

static bool parse_long(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        return false;
    }
    *out = v;
    return true;
}

/* The first line of a response body, trimmed to printable ASCII, for a one-line reason. */
static void first_line(const dkv_buf_t *body, char *out, size_t out_len)
{
    size_t n = 0;
    for (size_t i = 0; i < body->len && n + 1 < out_len; i++) {
        uint8_t c = body->data[i];
        if (c == '\n' || c == '\r' || c == '\0') {
            break;
        }
        out[n++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[n] = '\0';
}

/* `reason` without a leading "<url>: " (a down node's reason names it; tables name it already). */
static const char *without_url(const char *reason, const char *url)
{
    size_t n = strlen(url);
    if (strncmp(reason, url, n) == 0 && reason[n] == ':' && reason[n + 1] == ' ') {
        return reason + n + 2;
    }
    return reason;
}

/* "504: Not Enough Replicas" or "504" when the body says nothing. */
static void status_reason(const resp_t *r, char *out, size_t out_len)
{
    char line[200];
    first_line(&r->body, line, sizeof(line));
    if (line[0] != '\0') {
        snprintf(out, out_len, "HTTP %ld: %s", r->status, line);
    } else {
        snprintf(out, out_len, "HTTP %ld", r->status);
    }
}

static void format_duration(uint64_t ms, char *out, size_t out_len)
{
    uint64_t s = ms / 1000;
    if (s < 60) {
        snprintf(out, out_len, "%" PRIu64 "s", s);
    } else if (s < 3600) {
        snprintf(out, out_len, "%" PRIu64 "m%02" PRIu64 "s", s / 60, s % 60);
    } else if (s < 86400) {
        snprintf(out, out_len, "%" PRIu64 "h%02" PRIu64 "m", s / 3600, (s / 60) % 60);
    } else {
        snprintf(out, out_len, "%" PRIu64 "d%02" PRIu64 "h", s / 86400, (s / 3600) % 24);
    }
}

/* ---- one HTTP exchange ---- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
    resp_t *r = arg;
    size_t n = size * nmemb;
    if (r->status == 0) {
        curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &r->status);
    }
    if (r->status == 200 && r->req->chunks != NULL) {
        if (!r->checked) {
            /* The records are the chunks: a body that is not chunked cannot be split. */
            struct curl_header *h = NULL;
            r->checked = true;
            if (curl_easy_header(r->curl, "Transfer-Encoding", 0, CURLH_HEADER, -1, &h) !=
                    CURLHE_OK ||
                strstr(h->value, "chunked") == NULL) {
                r->stream_rc = DKV_EPROTO;
                return 0;
            }
        }
        r->streamed = true;
        r->stream_rc = dkv_ctl_chunks_feed(r->req->chunks, dkv_slice(ptr, n));
        return r->stream_rc == 0 ? n : 0;
    }
    size_t cap = r->status == 200 ? r->req->max_body_bytes : MAX_ERROR_BODY_BYTES;
    if (r->body.len + n > cap) {
        if (r->status == 200) {
            r->too_big = true;
            return 0;
        }
        n = cap - r->body.len; /* an error body is only shown in part */
    }
    dkv_buf_append(&r->body, ptr, n);
    return size * nmemb;
}

/* Errors that mean "this endpoint gave no answer": another node may well answer. */
static bool is_down_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
        return true;
    default:
        return false;
    }
}

/*
 * One exchange with `base` + q->target. Returns its outcome; `*fatal` is set (with the reason in
 * `why`) when the request must not be retried anywhere: a local or protocol error, or a stream
 * that already printed records.
 */
static dkv_ctl_outcome_t attempt(ctl_t *c, const char *base, const req_t *q, resp_t *r, bool *fatal,
                                 char *why, size_t why_len)
{
    CURL *h = c->curl;
    dkv_buf_t url;
    dkv_buf_init(&url);
    dkv_buf_printf(&url, "%s%s", base, q->target);
    dkv_buf_append(&url, "", 1);

    r->curl = h;
    r->req = q;
    r->status = 0;
    r->body.len = 0;
    r->too_big = false;
    r->streamed = false;
    r->checked = false;
    r->stream_rc = 0;
    r->errbuf[0] = '\0';
    *fatal = false;

    curl_easy_reset(h); /* keeps the connection cache */
    curl_easy_setopt(h, CURLOPT_URL, (const char *)url.data);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "dkvctl/" DKV_VERSION);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    if (q->timeout_ms > 0) {
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, q->timeout_ms);
    } else {
        /* A long scan may take any time, but not stall: less than 1 byte/s for the timeout. */
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (c->timeout_ms + 999) / 1000);
    }
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, r->errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    if (q->chunks != NULL) {
        curl_easy_setopt(h, CURLOPT_HTTP_TRANSFER_DECODING, 0L);
    }
    struct curl_slist *headers = curl_slist_append(NULL, "Expect:");
    if (strcmp(q->method, "PUT") == 0) {
        headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body.len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body.len > 0 ? (const char *)q->body.ptr : "");
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
    } else if (strcmp(q->method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    } else if (strcmp(q->method, "DELETE") == 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);

    CURLcode rc = curl_easy_perform(h);
    curl_slist_free_all(headers);
    dkv_ctl_outcome_t out = DKV_CTL_ANSWERED;
    const char *detail = r->errbuf[0] != '\0' ? r->errbuf : curl_easy_strerror(rc);

    if (rc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
        if (r->status == 503) {
            out = DKV_CTL_BUSY;
        } else if (r->status == 200 && q->chunks != NULL) {
            curl_off_t cl = -1;
            curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
            /* API.md §10: an empty result may come as Content-Length: 0 instead of chunks. */
            if (!(cl == 0 && !r->streamed) && !dkv_ctl_chunks_done(q->chunks)) {
                *fatal = true;
                snprintf(why, why_len, "%s: the record stream ended early", base);
            }
        }
    } else if (rc == CURLE_WRITE_ERROR && r->too_big) {
        *fatal = true;
        snprintf(why, why_len, "%s: response body over %zu bytes", base, q->max_body_bytes);
    } else if (rc == CURLE_WRITE_ERROR && r->stream_rc != 0) {
        *fatal = true;
        snprintf(why, why_len, "%s: bad record stream: %s", base,
                 r->stream_rc == DKV_EPROTO ? "malformed chunked framing"
                                            : dkv_strerror(r->stream_rc));
    } else if (is_down_error(rc) && !r->streamed) {
        out = DKV_CTL_DOWN;
        snprintf(why, why_len, "%s: %s", base, detail);
    } else {
        *fatal = true;
        snprintf(why, why_len, "%s: %s", base, detail);
    }
    dkv_buf_cleanup(&url);
    return out;
}

/*
 * Runs `q` on the endpoints `urls[0..n-1]` under the retry policy. On 0, `r` holds the final
 * answer (possibly a 503 once the retries are used up) and `*used` the endpoint that gave it.
 * On EXIT_FAIL the reason was printed: no endpoint answered, or a fatal error.
 */
static int request_on(ctl_t *c, char *const *urls, size_t n, const req_t *q, resp_t *r,
                      size_t *used, bool quiet)
{
    dkv_ctl_retry_t rt;
    dkv_ctl_retry_init(&rt, n, c->retries, c->backoff_ms, MAX_BACKOFF_MS);
    dkv_buf_t downs;
    dkv_buf_init(&downs);
    int ret = 0;
    for (;;) {
        char why[CURL_ERROR_SIZE + 512];
        bool fatal = false;
        size_t at = rt.endpoint;
        dkv_ctl_outcome_t out = attempt(c, urls[at], q, r, &fatal, why, sizeof(why));
        if (fatal) {
            if (!quiet) {
                fail("%s %s: %s", q->method, q->target, why);
            }
            ret = EXIT_FAIL;
            goto out;
        }
        if (out == DKV_CTL_DOWN) {
            dkv_buf_printf(&downs, "%s%s", downs.len > 0 ? "; " : "", why);
        }
        unsigned wait = 0;
        if (!dkv_ctl_retry_next(&rt, out, &wait)) {
            if (out == DKV_CTL_DOWN) {
                dkv_buf_append(&downs, "", 1);
                if (!quiet) {
                    fail("no endpoint answered: %s", (const char *)downs.data);
                }
                /* Keep the reason for callers that report it in a table. */
                dkv_buf_cleanup(&r->body);
                r->body = downs;
                dkv_buf_init(&downs);
                r->status = 0;
                ret = EXIT_FAIL;
                goto out;
            }
            *used = at;
            goto out;
        }
        if (c->verbose) {
            if (out == DKV_CTL_DOWN) {
                fprintf(stderr, "dkvctl: %s; trying %s\n", why, urls[rt.endpoint]);
            } else {
                fprintf(stderr, "dkvctl: %s answered 503; retry %u in %u ms\n", urls[at], rt.busy,
                        wait);
            }
        }
        sleep_ms(wait);
    }
out:
    dkv_buf_cleanup(&downs);
    return ret;
}

static int request_any(ctl_t *c, const req_t *q, resp_t *r, size_t *used)
{
    return request_on(c, c->eps.urls, c->eps.n, q, r, used, false);
}

static void resp_init(resp_t *r)
{
    memset(r, 0, sizeof(*r));
    dkv_buf_init(&r->body);
}

static void resp_cleanup(resp_t *r)
{
    dkv_buf_cleanup(&r->body);
}

/* ---- key commands ---- */

/* "/v0/entity?id=<key>[&ack=A][&from=F]" as a NUL-terminated string in `t`. */
static void entity_target(const ctl_t *c, const char *key, dkv_buf_t *t)
{
    dkv_buf_append_str(t, "/v0/entity?id=");
    dkv_ctl_pct_encode(dkv_slice_str(key), t);
    if (c->ack > 0) {
        dkv_buf_printf(t, "&ack=%ld", c->ack);
    }
    if (c->from > 0) {
        dkv_buf_printf(t, "&from=%ld", c->from);
    }
    dkv_buf_append(t, "", 1);
}

static int cmd_get(ctl_t *c, int argc, char **argv)
{
    if (argc != 1) {
        return usage_error("get takes exactly one KEY");
    }
    dkv_buf_t t;
    dkv_buf_init(&t);
    entity_target(c, argv[0], &t);
    req_t q = {.method = "GET",
               .target = (const char *)t.data,
               .timeout_ms = c->timeout_ms,
               .max_body_bytes = MAX_VALUE_BYTES};
    resp_t r;
    resp_init(&r);
    size_t used = 0;
    int ret = request_any(c, &q, &r, &used);
    if (ret != 0) {
        goto out;
    }
    if (r.status == 200) {
        if ((r.body.len > 0 && fwrite(r.body.data, 1, r.body.len, stdout) != r.body.len) ||
            fflush(stdout) != 0) {
            ret = fail("writing the value to stdout: %s", strerror(errno));
        }
    } else if (r.status == 404) {
        fprintf(stderr, "dkvctl: %s: not found\n", argv[0]);
        ret = EXIT_NOTFOUND;
    } else {
        char why[256];
        status_reason(&r, why, sizeof(why));
        ret = fail("get %s: %s", argv[0], why);
    }
out:
    resp_cleanup(&r);
    dkv_buf_cleanup(&t);
    return ret;
}

static int read_all(FILE *f, dkv_buf_t *out)
{
    for (;;) {
        dkv_buf_reserve(out, 65536);
        size_t n = fread(out->data + out->len, 1, 65536, f);
        out->len += n;
        if (out->len > MAX_VALUE_BYTES) {
            return DKV_ETOOBIG;
        }
        if (n < 65536) {
            return ferror(f) ? -EIO : 0;
        }
    }
}

/* PUT (value given) and DELETE (value NULL): both answer with no body on success. */
static int write_key(ctl_t *c, const char *method, const char *key, dkv_slice_t value, long want)
{
    dkv_buf_t t;
    dkv_buf_init(&t);
    entity_target(c, key, &t);
    req_t q = {.method = method,
               .target = (const char *)t.data,
               .body = value,
               .timeout_ms = c->timeout_ms,
               .max_body_bytes = MAX_ERROR_BODY_BYTES};
    resp_t r;
    resp_init(&r);
    size_t used = 0;
    int ret = request_any(c, &q, &r, &used);
    if (ret == 0 && r.status != want) {
        char why[256];
        status_reason(&r, why, sizeof(why));
        ret = fail("%s %s: %s", strcmp(method, "PUT") == 0 ? "put" : "delete", key, why);
    }
    resp_cleanup(&r);
    dkv_buf_cleanup(&t);
    return ret;
}

static int cmd_put(ctl_t *c, int argc, char **argv)
{
    if (argc < 1 || argc > 2) {
        return usage_error("put takes KEY and an optional VALUE (- or none: stdin)");
    }
    dkv_buf_t stdin_value;
    dkv_buf_init(&stdin_value);
    dkv_slice_t value;
    if (argc == 2 && strcmp(argv[1], "-") != 0) {
        value = dkv_slice_str(argv[1]);
    } else {
        int rc = read_all(stdin, &stdin_value);
        if (rc != 0) {
            dkv_buf_cleanup(&stdin_value);
            return fail("reading the value from stdin: %s", dkv_strerror(rc));
        }
        value = dkv_buf_slice(&stdin_value);
    }
    int ret = write_key(c, "PUT", argv[0], value, 201);
    dkv_buf_cleanup(&stdin_value);
    return ret;
}

static int cmd_delete(ctl_t *c, int argc, char **argv)
{
    if (argc != 1) {
        return usage_error("delete takes exactly one KEY");
    }
    return write_key(c, "DELETE", argv[0], dkv_slice(NULL, 0), 202);
}

/* ---- scan ---- */

typedef struct scan_out {
    bool raw;
    dkv_buf_t line;
    size_t records;
} scan_out_t;

static int on_record(void *arg, dkv_slice_t rec)
{
    scan_out_t *s = arg;
    dkv_slice_t key;
    dkv_slice_t value;
    int rc = dkv_ctl_split_record(rec, &key, &value);
    if (rc != 0) {
        return rc;
    }
    s->line.len = 0;
    if (s->raw) {
        dkv_buf_printf(&s->line, "%zu %zu\n", key.len, value.len);
        dkv_buf_append(&s->line, key.ptr, key.len);
        dkv_buf_append(&s->line, value.ptr, value.len);
    } else {
        dkv_ctl_escape(key, &s->line);
        dkv_buf_append(&s->line, "\t", 1);
        dkv_ctl_escape(value, &s->line);
    }
    dkv_buf_append(&s->line, "\n", 1);
    if (fwrite(s->line.data, 1, s->line.len, stdout) != s->line.len) {
        return -errno;
    }
    s->records++;
    return 0;
}

static int cmd_scan(ctl_t *c, int argc, char **argv)
{
    if (argc < 1 || argc > 2) {
        return usage_error("scan takes START and an optional END");
    }
    if (argv[0][0] == '\0') {
        return usage_error("scan: START must not be empty");
    }
    dkv_buf_t t;
    dkv_buf_init(&t);
    dkv_buf_append_str(&t, "/v0/entities?start=");
    dkv_ctl_pct_encode(dkv_slice_str(argv[0]), &t);
    if (argc == 2) {
        dkv_buf_append_str(&t, "&end=");
        dkv_ctl_pct_encode(dkv_slice_str(argv[1]), &t);
    }
    dkv_buf_append(&t, "", 1);

    scan_out_t s = {.raw = c->raw};
    dkv_buf_init(&s.line);
    dkv_ctl_chunks_t chunks;
    dkv_ctl_chunks_init(&chunks, DKV_CTL_DEFAULT_MAX_CHUNK_BYTES, on_record, &s);
    req_t q = {.method = "GET",
               .target = (const char *)t.data,
               .timeout_ms = 0,
               .chunks = &chunks,
               .max_body_bytes = MAX_ERROR_BODY_BYTES};
    resp_t r;
    resp_init(&r);
    size_t used = 0;
    int ret = request_any(c, &q, &r, &used);
    if (ret == 0 && r.status != 200) {
        char why[256];
        status_reason(&r, why, sizeof(why));
        ret = fail("scan: %s", why);
    }
    if (ret == 0 && used != 0) {
        /* The range is node-local: say whose data this is when it is not the first endpoint's. */
        fprintf(stderr, "dkvctl: %s did not answer; these are %s's local records\n", c->eps.urls[0],
                c->eps.urls[used]);
    }
    if (fflush(stdout) != 0 && ret == 0) {
        ret = fail("writing to stdout: %s", strerror(errno));
    }
    if (ret == 0 && c->verbose) {
        fprintf(stderr, "dkvctl: %zu records from %s\n", s.records, c->eps.urls[used]);
    }
    resp_cleanup(&r);
    dkv_ctl_chunks_cleanup(&chunks);
    dkv_buf_cleanup(&s.line);
    dkv_buf_cleanup(&t);
    return ret;
}

/* ---- JSON from nodes ---- */

/* GETs or POSTs `target` on `urls`, and parses a 200 (or `also_ok`) JSON answer. */
static int fetch_json(ctl_t *c, char *const *urls, size_t n, const char *method, const char *target,
                      long timeout_ms, bool quiet, json_t **out, resp_t *r, size_t *used)
{
    req_t q = {.method = method,
               .target = target,
               .timeout_ms = timeout_ms,
               .max_body_bytes = MAX_JSON_BYTES};
    int ret = request_on(c, urls, n, &q, r, used, quiet);
    if (ret != 0) {
        return ret;
    }
    json_error_t err;
    json_t *j = json_loadb((const char *)r->body.data, r->body.len, 0, &err);
    if (j == NULL) {
        if (!quiet) {
            char why[256];
            status_reason(r, why, sizeof(why));
            fail("%s%s: %s", urls[*used], target, why);
        }
        return EXIT_FAIL;
    }
    *out = j;
    return 0;
}

static const char *jstr(json_t *o, const char *name, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, name));
    return s != NULL ? s : dflt;
}

static json_int_t jint(json_t *o, const char *name)
{
    return json_integer_value(json_object_get(o, name));
}

/* Host and port of a URL ("http://h:p" -> "h:p") for compact tables. */
static const char *short_url(const char *url)
{
    const char *p = strstr(url, "://");
    return p != NULL ? p + 3 : url;
}

/*
 * The cluster list from the first endpoint that answers a verbose status: `*status` is that
 * node's status (caller frees it with json_decref) and `urls` its "cluster" entries (borrowed
 * from `*status`).
 */
static int get_cluster(ctl_t *c, json_t **status, const char ***urls, size_t *n)
{
    resp_t r;
    resp_init(&r);
    size_t used = 0;
    json_t *j = NULL;
    int ret = fetch_json(c, c->eps.urls, c->eps.n, "GET", "/v0/status?verbose=1", c->timeout_ms,
                         false, &j, &r, &used);
    if (ret != 0) {
        goto out;
    }
    json_t *cl = json_object_get(j, "cluster");
    size_t count = json_array_size(cl);
    if (count == 0) {
        ret = fail("%s: the status has no cluster list", c->eps.urls[used]);
        json_decref(j);
        goto out;
    }
    const char **list = dkv_xcalloc(count, sizeof(*list));
    for (size_t i = 0; i < count; i++) {
        list[i] = json_string_value(json_array_get(cl, i));
        if (list[i] == NULL) {
            free(list);
            json_decref(j);
            ret = fail("%s: malformed cluster list", c->eps.urls[used]);
            goto out;
        }
    }
    *status = j;
    *urls = list;
    *n = count;
out:
    resp_cleanup(&r);
    return ret;
}

/* ---- status ---- */

static void print_row(int w, const char *const *cols, size_t n)
{
    static const int widths[] = {0, 6, 16, 7, 8, 7, 12, 7, 0};
    for (size_t i = 0; i < n; i++) {
        int wi = i == 0 ? w : widths[i];
        if (i + 1 == n || wi == 0) {
            fputs(cols[i], stdout);
            if (i + 1 < n) {
                fputs("  ", stdout);
            }
        } else {
            printf("%-*s  ", wi, cols[i]);
        }
    }
    fputc('\n', stdout);
}

/* The breakers of a node's peers: "closed" when all are, else the others with their state. */
static void breakers_text(json_t *st, char *out, size_t out_len)
{
    json_t *peers = json_object_get(st, "peers");
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < json_array_size(peers); i++) {
        json_t *p = json_array_get(peers, i);
        const char *b = jstr(p, "breaker", "?");
        if (strcmp(b, "closed") != 0) {
            size_t len = strlen(out);
            snprintf(out + len, out_len - len, "%s%s=%s", n > 0 ? "," : "",
                     short_url(jstr(p, "url", "?")), b);
            n++;
        }
    }
    if (n == 0) {
        snprintf(out, out_len, "%s", json_array_size(peers) > 0 ? "closed" : "-");
    }
}

/* From an anti-entropy status: the oldest "last complete exchange" over the node's peers: when
 * every peer was last covered. */
static void repaired_text(json_t *ae, uint64_t now_ms, char *out, size_t out_len)
{
    json_t *peers = json_object_get(ae, "peers");
    if (json_array_size(peers) == 0) {
        snprintf(out, out_len, "-");
        return;
    }
    uint64_t oldest = UINT64_MAX;
    for (size_t i = 0; i < json_array_size(peers); i++) {
        json_int_t end = jint(json_array_get(peers, i), "last_ok_end_ms");
        if (end <= 0) {
            snprintf(out, out_len, "never");
            return;
        }
        if ((uint64_t)end < oldest) {
            oldest = (uint64_t)end;
        }
    }
    char d[32];
    format_duration(now_ms > oldest ? now_ms - oldest : 0, d, sizeof(d));
    snprintf(out, out_len, "%s ago", d);
}

static void status_row(int w, const char *url, json_t *st, uint64_t now_ms)
{
    if (st == NULL) {
        const char *cols[] = {url, "down", "-", "-", "-", "-", "-", "-", "-"};
        print_row(w, cols, 9);
        return;
    }
    char state[64];
    json_t *rb = json_object_get(st, "rebuild");
    json_t *pct = json_object_get(rb, "progress_pct");
    if (json_is_true(json_object_get(rb, "running")) && json_is_number(pct)) {
        snprintf(state, sizeof(state), "%s %.0f%%", jstr(st, "state", "?"), json_number_value(pct));
    } else {
        snprintf(state, sizeof(state), "%s", jstr(st, "state", "-"));
    }
    char uptime[32];
    format_duration((uint64_t)jint(st, "uptime_ms"), uptime, sizeof(uptime));
    char breakers[512];
    breakers_text(st, breakers, sizeof(breakers));
    char hints[32];
    json_t *hj = json_object_get(st, "hints");
    if (json_is_false(json_object_get(hj, "enabled"))) {
        snprintf(hints, sizeof(hints), "off");
    } else {
        snprintf(hints, sizeof(hints), "%" JSON_INTEGER_FORMAT, jint(hj, "pending_count"));
    }
    char repaired[48];
    repaired_text(json_object_get(st, "anti_entropy"), now_ms, repaired, sizeof(repaired));
    json_t *sj = json_object_get(st, "storage");
    const char *storage = "ok";
    if (json_is_false(json_object_get(sj, "writable"))) {
        storage = json_is_true(json_object_get(sj, "no_space")) ? "full" : "error";
    }
    const char *cols[] = {url,      "up",    state,   jstr(st, "version", "?"), uptime, hints,
                          repaired, storage, breakers};
    print_row(w, cols, 9);
}

static int cmd_status(ctl_t *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0) {
        return usage_error("status takes no arguments");
    }
    json_t *first = NULL;
    const char **urls = NULL;
    size_t n = 0;
    int ret = get_cluster(c, &first, &urls, &n);
    if (ret != 0) {
        return ret;
    }
    const char *self = jstr(first, "self", "");
    json_t **st = dkv_xcalloc(n, sizeof(*st));
    char **why = dkv_xcalloc(n, sizeof(*why));
    int w = 4;
    size_t down = 0;
    for (size_t i = 0; i < n; i++) {
        if ((int)strlen(urls[i]) > w) {
            w = (int)strlen(urls[i]);
        }
        if (strcmp(urls[i], self) == 0) {
            st[i] = json_incref(first);
            continue;
        }
        resp_t r;
        resp_init(&r);
        size_t used = 0;
        char *one[] = {(char *)urls[i]};
        if (fetch_json(c, one, 1, "GET", "/v0/status?verbose=1", c->timeout_ms, true, &st[i], &r,
                       &used) != 0) {
            char reason[512];
            if (r.status != 0) {
                status_reason(&r, reason, sizeof(reason));
            } else {
                first_line(&r.body, reason, sizeof(reason));
            }
            why[i] = strdup(reason);
            down++;
        }
        resp_cleanup(&r);
    }
    uint64_t now_ms = wall_ms();
    const char *head[] = {"NODE",  "STATUS",   "STATE",   "VERSION", "UPTIME",
                          "HINTS", "REPAIRED", "STORAGE", "BREAKERS"};
    print_row(w, head, 9);
    for (size_t i = 0; i < n; i++) {
        status_row(w, urls[i], st[i], now_ms);
    }
    for (size_t i = 0; i < n; i++) {
        if (why[i] != NULL) {
            printf("%s is down: %s\n", urls[i], without_url(why[i], urls[i]));
        }
    }
    printf("%zu of %zu nodes up\n", n - down, n);
    for (size_t i = 0; i < n; i++) {
        json_decref(st[i]);
        free(why[i]);
    }
    free(st);
    free(why);
    free(urls);
    json_decref(first);
    return 0;
}

/* ---- ring ---- */

static int cmd_ring(ctl_t *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0) {
        return usage_error("ring takes no arguments");
    }
    json_t *first = NULL;
    const char **urls = NULL;
    size_t n = 0;
    int ret = get_cluster(c, &first, &urls, &n);
    if (ret != 0) {
        return ret;
    }
    dkv_ring_t *ring = NULL;
    int rc = dkv_ring_new(urls, n, (unsigned)c->vnodes, &ring);
    if (rc != 0) {
        ret = fail("cannot build the ring of %zu nodes with %ld vnodes: %s", n, c->vnodes,
                   dkv_strerror(rc));
        goto out;
    }
    double *shares = dkv_xcalloc(n, sizeof(*shares));
    dkv_ring_primary_shares(ring, shares);
    int w = 4;
    for (size_t i = 0; i < n; i++) {
        if ((int)strlen(dkv_ring_url(ring, i)) > w) {
            w = (int)strlen(dkv_ring_url(ring, i));
        }
    }
    printf("%-*s  %8s  %8s\n", w, "NODE", "TOKENS", "OWNS");
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        printf("%-*s  %8ld  %7.2f%%\n", w, dkv_ring_url(ring, i), c->vnodes, shares[i] * 100.0);
        total += shares[i];
    }
    printf("%-*s  %8ld  %7.2f%%\n", w, "TOTAL", c->vnodes * (long)n, total * 100.0);
    printf("OWNS: share of keys whose first replica is the node, exact from the ring's tokens "
           "(xxh3, %ld vnodes per node; must match the nodes' --vnodes)\n",
           c->vnodes);
    free(shares);
    dkv_ring_free(ring);
out:
    free(urls);
    json_decref(first);
    return ret;
}

/* ---- hints and repair ---- */

/* The nodes an admin command addresses: --node, else every node of the cluster. */
static int admin_nodes(ctl_t *c, json_t **first, const char ***urls, size_t *n)
{
    if (c->node != NULL) {
        const char **one = dkv_xcalloc(1, sizeof(*one));
        one[0] = c->node;
        *first = NULL;
        *urls = one;
        *n = 1;
        return 0;
    }
    return get_cluster(c, first, urls, n);
}

typedef enum admin_kind { HINTS_STATUS, HINTS_SYNC, REPAIR_RUN, REPAIR_STATUS } admin_kind_t;

static json_int_t sum_peers(json_t *doc, const char *field)
{
    json_t *peers = json_object_get(doc, "peers");
    json_int_t sum = 0;
    for (size_t i = 0; i < json_array_size(peers); i++) {
        sum += jint(json_array_get(peers, i), field);
    }
    return sum;
}

/* One result line of an admin command for `url`; returns whether it succeeded. */
static bool admin_row(ctl_t *c, admin_kind_t kind, int w, const char *url)
{
    char target[128];
    const char *method = "GET";
    long timeout_ms = c->timeout_ms;
    switch (kind) {
    case HINTS_STATUS:
        snprintf(target, sizeof(target), "/v0/admin/hints");
        break;
    case HINTS_SYNC:
        method = "POST";
        snprintf(target, sizeof(target), "/v0/admin/hints/sync?timeout_ms=%ld", c->wait_ms);
        timeout_ms += c->wait_ms;
        break;
    case REPAIR_RUN:
        method = "POST";
        snprintf(target, sizeof(target), "/v0/admin/repair?timeout_ms=%ld", c->wait_ms);
        timeout_ms += c->wait_ms;
        break;
    case REPAIR_STATUS:
    default:
        snprintf(target, sizeof(target), "/v0/admin/repair");
        break;
    }
    req_t q = {.method = method,
               .target = target,
               .timeout_ms = timeout_ms,
               .max_body_bytes = MAX_JSON_BYTES};
    resp_t r;
    resp_init(&r);
    size_t used = 0;
    char *one[] = {(char *)url};
    bool ok = false;
    char line[512];
    if (request_on(c, one, 1, &q, &r, &used, true) != 0) {
        first_line(&r.body, line, sizeof(line));
        printf("%-*s  down (%s)\n", w, url, line[0] != '\0' ? without_url(line, url) : "no answer");
        goto out;
    }
    json_t *j = json_loadb((const char *)r.body.data, r.body.len, 0, NULL);
    if (kind == HINTS_STATUS && r.status == 200 && j != NULL) {
        json_int_t oldest = 0;
        json_t *peers = json_object_get(j, "peers");
        for (size_t i = 0; i < json_array_size(peers); i++) {
            json_int_t age = jint(json_array_get(peers, i), "oldest_age_ms");
            oldest = age > oldest ? age : oldest;
        }
        char age[32];
        format_duration((uint64_t)oldest, age, sizeof(age));
        printf("%-*s  %8" JSON_INTEGER_FORMAT "  %12" JSON_INTEGER_FORMAT "  %8s%s\n", w, url,
               jint(j, "pending_count"), jint(j, "pending_bytes"),
               jint(j, "pending_count") > 0 ? age : "-",
               json_is_false(json_object_get(j, "enabled")) ? "  (hinted handoff is off)" : "");
        ok = true;
    } else if ((kind == REPAIR_RUN || kind == REPAIR_STATUS) && j != NULL &&
               (r.status == 200 || r.status == 502)) {
        dkv_buf_t errs;
        dkv_buf_init(&errs);
        json_t *peers = json_object_get(j, "peers");
        for (size_t i = 0; i < json_array_size(peers); i++) {
            json_t *p = json_array_get(peers, i);
            const char *e = jstr(p, "last_error", "");
            if (e[0] != '\0') {
                dkv_buf_printf(&errs, "%s%s: %s", errs.len > 0 ? "; " : "",
                               short_url(jstr(p, "url", "?")), e);
            }
        }
        dkv_buf_append(&errs, "", 1);
        char repaired[48];
        repaired_text(j, wall_ms(), repaired, sizeof(repaired));
        printf("%-*s  %-6s  %10" JSON_INTEGER_FORMAT "  %10" JSON_INTEGER_FORMAT
               "  %10" JSON_INTEGER_FORMAT "  %s%s%s\n",
               w, url, r.status == 200 ? "ok" : "failed", sum_peers(j, "keys_repaired"),
               sum_peers(j, "records_sent"), sum_peers(j, "records_received"), repaired,
               errs.len > 1 ? "  " : "", (const char *)errs.data);
        ok = r.status == 200;
        dkv_buf_cleanup(&errs);
    } else if (kind == HINTS_SYNC && r.status == 200) {
        printf("%-*s  ok\n", w, url);
        ok = true;
    } else {
        status_reason(&r, line, sizeof(line));
        printf("%-*s  failed (%s)\n", w, url, line);
    }
    json_decref(j);
out:
    resp_cleanup(&r);
    return ok;
}

static int run_admin(ctl_t *c, admin_kind_t kind)
{
    json_t *first = NULL;
    const char **urls = NULL;
    size_t n = 0;
    int ret = admin_nodes(c, &first, &urls, &n);
    if (ret != 0) {
        return ret;
    }
    int w = 4;
    for (size_t i = 0; i < n; i++) {
        w = (int)strlen(urls[i]) > w ? (int)strlen(urls[i]) : w;
    }
    switch (kind) {
    case HINTS_STATUS:
        printf("%-*s  %8s  %12s  %8s\n", w, "NODE", "PENDING", "BYTES", "OLDEST");
        break;
    case HINTS_SYNC:
        printf("%-*s  RESULT\n", w, "NODE");
        break;
    case REPAIR_RUN:
    case REPAIR_STATUS:
    default:
        printf("%-*s  %-6s  %10s  %10s  %10s  %s\n", w, "NODE", "RESULT", "REPAIRED", "SENT",
               "RECEIVED", "LAST (ERRORS)");
        break;
    }
    fflush(stdout);
    size_t failed = 0;
    for (size_t i = 0; i < n; i++) {
        if (!admin_row(c, kind, w, urls[i])) {
            failed++;
        }
        fflush(stdout);
    }
    if (failed > 0) {
        ret = fail("%zu of %zu nodes failed", failed, n);
    }
    free(urls);
    json_decref(first);
    return ret;
}

static int cmd_hints(ctl_t *c, int argc, char **argv)
{
    if (argc == 0 || (argc == 1 && strcmp(argv[0], "status") == 0)) {
        return run_admin(c, HINTS_STATUS);
    }
    if (argc == 1 && strcmp(argv[0], "sync") == 0) {
        return run_admin(c, HINTS_SYNC);
    }
    return usage_error("hints takes `status` (the default) or `sync`");
}

static int cmd_repair(ctl_t *c, int argc, char **argv)
{
    if (argc == 0 || (argc == 1 && strcmp(argv[0], "run") == 0)) {
        return run_admin(c, REPAIR_RUN);
    }
    if (argc == 1 && strcmp(argv[0], "status") == 0) {
        return run_admin(c, REPAIR_STATUS);
    }
    return usage_error("repair takes `run` (the default) or `status`");
}

/* ---- options and help ---- */

enum {
    OPT_ENDPOINTS = 'e',
    OPT_HELP = 'h',
    OPT_VERBOSE = 'v',
    OPT_CONNECT_TIMEOUT = 256,
    OPT_TIMEOUT,
    OPT_RETRIES,
    OPT_BACKOFF,
    OPT_VERSION,
    OPT_ACK,
    OPT_FROM,
    OPT_RAW,
    OPT_NODE,
    OPT_WAIT,
    OPT_VNODES,
};

/* Which command options each command accepts, as bits (1 << (opt - OPT_ACK)). */
#define BIT(o) (1u << ((o)-OPT_ACK))

typedef struct command {
    const char *name;
    int (*run)(ctl_t *c, int argc, char **argv);
    unsigned opts;
    const char *summary;
    const char *help;
} command_t;

static const command_t COMMANDS[] = {
    {"get", cmd_get, BIT(OPT_ACK) | BIT(OPT_FROM), "print a key's value",
     "usage: dkvctl [options] get KEY [--ack A] [--from F]\n"
     "Writes the value of KEY to stdout, byte for byte (no newline added).\n"
     "Exit 0 with the value; 1 when the key is absent or deleted (nothing on stdout); 3 on any\n"
     "other failure (e.g. 504: fewer than ACK replicas answered).\n"
     "  --ack A    replicas that must answer (default: the node's, FROM/2+1)\n"
     "  --from F   replicas asked (default: the node's, the cluster size)\n"},
    {"put", cmd_put, BIT(OPT_ACK) | BIT(OPT_FROM), "store a value",
     "usage: dkvctl [options] put KEY [VALUE | -] [--ack A] [--from F]\n"
     "Stores VALUE under KEY; with `-` or no VALUE the value is read from stdin (binary safe).\n"
     "Exit 0 once ACK replicas stored it (HTTP 201); 3 otherwise.\n"
     "  --ack A, --from F   as for get\n"},
    {"delete", cmd_delete, BIT(OPT_ACK) | BIT(OPT_FROM), "delete a key (write a tombstone)",
     "usage: dkvctl [options] delete KEY [--ack A] [--from F]\n"
     "Deletes KEY (HTTP 202; deleting an absent key succeeds too). Exit 0, or 3 on failure.\n"},
    {"scan", cmd_scan, BIT(OPT_RAW), "print one node's local records in [START, END)",
     "usage: dkvctl [options] scan START [END] [--raw]\n"
     "Prints the records with START <= key < END (bytewise; no END: to the last key) held by\n"
     "ONE node: the first endpoint that answers (a note on stderr says when that is not the\n"
     "first one). It is GET /v0/entities: node-local, no merging of replicas.\n"
     "Output, one line per record:  KEY<TAB>VALUE<LF>  where both fields escape \\ as \\\\,\n"
     "TAB as \\t, LF as \\n, CR as \\r, other control bytes as \\xHH; other bytes are copied.\n"
     "  --raw   instead: \"<key bytes> <value bytes>\\n\" then the key, the value and \"\\n\",\n"
     "          exact bytes, for programs\n"},
    {"status", cmd_status, 0, "show every node: up/down, state, hints, repair, breakers",
     "usage: dkvctl [options] status\n"
     "Reads the cluster list from the first endpoint that answers, then asks every node for\n"
     "GET /v0/status?verbose=1 and prints one row per node:\n"
     "  STATUS    up, or down (no answer; the reason follows the table)\n"
     "  STATE     ready, joining, rebuilding (with progress)\n"
     "  UPTIME, VERSION\n"
     "  HINTS     hints pending on that node for its peers\n"
     "  REPAIRED  age of the oldest last complete anti-entropy exchange over its peers\n"
     "  STORAGE   ok, full (disk full: writes refused), error\n"
     "  BREAKERS  circuit breakers towards peers: closed, or each peer's that is not\n"
     "Exit 0 when the table was printed (down nodes included); 3 when no endpoint answered.\n"},
    {"ring", cmd_ring, BIT(OPT_VNODES), "show each node's share of the ring",
     "usage: dkvctl [options] ring [--vnodes N]\n"
     "Computes the consistent-hash ring locally from the cluster list of the first endpoint\n"
     "that answers, with the nodes' own code (xxh3 of each URL seeded by the vnode index), and\n"
     "prints each node's exact share of the keys for which it is the first replica.\n"
     "  --vnodes N   tokens per node (default 8192); must be the nodes' --vnodes\n"},
    {"hints", cmd_hints, BIT(OPT_NODE) | BIT(OPT_WAIT), "show or deliver hinted-handoff hints",
     "usage: dkvctl [options] hints [status | sync] [--node URL] [--wait-ms MS]\n"
     "status (default): GET /v0/admin/hints on every node: hints pending for its peers.\n"
     "sync: POST /v0/admin/hints/sync on every node: waits until every hint that existed at\n"
     "the call was delivered (or MS passed). Exit 3 if a node failed or did not answer.\n"
     "  --node URL    only this node (default: every node of the cluster)\n"
     "  --wait-ms MS  server-side wait of sync (default 60000)\n"},
    {"repair", cmd_repair, BIT(OPT_NODE) | BIT(OPT_WAIT), "run or show anti-entropy repair",
     "usage: dkvctl [options] repair [run | status] [--node URL] [--wait-ms MS]\n"
     "run (default): POST /v0/admin/repair on every node in turn: one anti-entropy round with\n"
     "each of its peers; shows keys repaired and records sent/received, summed over peers, and\n"
     "each failed exchange's error. status: GET /v0/admin/repair, the same columns.\n"
     "Exit 3 if a node failed or did not answer.\n"
     "  --node URL    only this node (default: every node of the cluster)\n"
     "  --wait-ms MS  server-side limit of a run (default 60000)\n"},
};
#define N_COMMANDS (sizeof(COMMANDS) / sizeof(COMMANDS[0]))

static void print_help(void)
{
    printf("usage: dkvctl [options] COMMAND [ARGS]   (dkvctl COMMAND --help for its help)\n"
           "A client for a dkv cluster.\n\nCommands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        printf("  %-8s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    }
    printf("\nOptions (before or after the command):\n"
           "  -e, --endpoints URL,...    nodes to talk to, tried in order when one does not\n"
           "                             answer (default: $DKV_ENDPOINTS, else " DEFAULT_ENDPOINT
           ")\n"
           "  --connect-timeout-ms MS    per connection attempt (default %d)\n"
           "  --timeout-ms MS            per request (default %d; scan: longest stall)\n"
           "  --retries N                retries of a 503 answer, with exponential backoff\n"
           "                             (default %d)\n"
           "  --backoff-ms MS            first backoff, doubled per retry up to %d ms "
           "(default %d)\n"
           "  -v, --verbose              say on stderr when failing over or retrying\n"
           "  -h, --help, --version\n"
           "\nKeys and values are bytes: keys are percent-encoded on the wire, so any key given\n"
           "as an argument round-trips. Use -- before a key that starts with '-'.\n"
           "Exit codes: 0 success, 1 key not found (get), 2 usage error, 3 other failure.\n",
           DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_TIMEOUT_MS, DEFAULT_RETRIES, MAX_BACKOFF_MS,
           DEFAULT_BACKOFF_MS);
}

static const struct option OPTIONS[] = {
    {"endpoints", required_argument, NULL, OPT_ENDPOINTS},
    {"connect-timeout-ms", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
    {"retries", required_argument, NULL, OPT_RETRIES},
    {"backoff-ms", required_argument, NULL, OPT_BACKOFF},
    {"verbose", no_argument, NULL, OPT_VERBOSE},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {"ack", required_argument, NULL, OPT_ACK},
    {"from", required_argument, NULL, OPT_FROM},
    {"raw", no_argument, NULL, OPT_RAW},
    {"node", required_argument, NULL, OPT_NODE},
    {"wait-ms", required_argument, NULL, OPT_WAIT},
    {"vnodes", required_argument, NULL, OPT_VNODES},
    {NULL, 0, NULL, 0},
};

typedef struct parsed {
    const char *endpoints;
    bool help;
    bool version;
    unsigned cmd_opts; /* BIT()s of the command options given */
} parsed_t;

/* One getopt_long pass; `stop_at_command` stops at the first non-option (the command). */
static int parse_opts(ctl_t *c, parsed_t *p, int argc, char **argv, bool stop_at_command)
{
    optind = 0; /* full re-initialisation (glibc) */
    opterr = 0;
    for (;;) {
        int longidx = -1;
        int o = getopt_long(argc, argv, stop_at_command ? "+:e:hv" : ":e:hv", OPTIONS, &longidx);
        if (o == -1) {
            return 0;
        }
        const char *a = optarg;
        bool ok = true;
        switch (o) {
        case OPT_ENDPOINTS:
            p->endpoints = a;
            break;
        case OPT_CONNECT_TIMEOUT:
            ok = parse_long(a, 1, 3600000, &c->connect_timeout_ms);
            break;
        case OPT_TIMEOUT:
            ok = parse_long(a, 1, 86400000, &c->timeout_ms);
            break;
        case OPT_RETRIES: {
            long v = 0;
            ok = parse_long(a, 0, 100, &v);
            c->retries = (unsigned)v;
            break;
        }
        case OPT_BACKOFF: {
            long v = 0;
            ok = parse_long(a, 0, MAX_BACKOFF_MS, &v);
            c->backoff_ms = (unsigned)v;
            break;
        }
        case OPT_VERBOSE:
            c->verbose = true;
            break;
        case OPT_HELP:
            p->help = true;
            break;
        case OPT_VERSION:
            p->version = true;
            break;
        case OPT_ACK:
            ok = parse_long(a, 1, INT_MAX, &c->ack);
            break;
        case OPT_FROM:
            ok = parse_long(a, 1, INT_MAX, &c->from);
            break;
        case OPT_RAW:
            c->raw = true;
            break;
        case OPT_NODE: {
            dkv_ctl_endpoints_t one = {NULL, 0};
            ok = dkv_ctl_endpoints_parse(a, &one) == 0 && one.n == 1;
            if (ok) {
                free(c->node);
                c->node = one.urls[0];
                free(one.urls);
            } else if (one.n > 1) {
                dkv_ctl_endpoints_cleanup(&one);
            }
            break;
        }
        case OPT_WAIT:
            ok = parse_long(a, 1, 3600000, &c->wait_ms);
            break;
        case OPT_VNODES:
            ok = parse_long(a, 1, 65536, &c->vnodes);
            break;
        case ':':
            return usage_error("option %s needs a value", argv[optind - 1]);
        case '?':
        default:
            return usage_error("unknown option %s", argv[optind - 1]);
        }
        if (!ok) {
            if (longidx >= 0) {
                return usage_error("bad value for --%s: %s", OPTIONS[longidx].name, a);
            }
            return usage_error("bad value for -%c: %s", o, a);
        }
        if (o >= OPT_ACK) {
            p->cmd_opts |= BIT(o);
        }
    }
}

int main(int argc, char **argv)
{
    ctl_t c = {.connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS,
               .timeout_ms = DEFAULT_TIMEOUT_MS,
               .retries = DEFAULT_RETRIES,
               .backoff_ms = DEFAULT_BACKOFF_MS,
               .wait_ms = DEFAULT_WAIT_MS,
               .vnodes = DKV_RING_DEFAULT_VNODES};
    parsed_t p = {0};
    int ret = parse_opts(&c, &p, argc, argv, true);
    if (ret != 0) {
        goto out;
    }
    if (p.version) {
        printf("dkvctl %s\n", DKV_VERSION);
        goto out;
    }
    if (optind >= argc) {
        print_help();
        ret = p.help ? 0 : EXIT_USAGE;
        goto out;
    }
    const char *name = argv[optind];
    const command_t *cmd = NULL;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(COMMANDS[i].name, name) == 0) {
            cmd = &COMMANDS[i];
        }
    }
    if (strcmp(name, "help") == 0) {
        cmd = optind + 1 < argc ? NULL : cmd;
        for (size_t i = 0; optind + 1 < argc && i < N_COMMANDS; i++) {
            if (strcmp(COMMANDS[i].name, argv[optind + 1]) == 0) {
                cmd = &COMMANDS[i];
            }
        }
        if (cmd != NULL) {
            fputs(cmd->help, stdout);
        } else {
            print_help();
        }
        goto out;
    }
    if (cmd == NULL) {
        ret = usage_error("unknown command `%s`", name);
        goto out;
    }
    /* The command's own arguments: options may follow it (GNU permutation; `--` ends them). */
    int sub_argc = argc - optind;
    char **sub_argv = argv + optind;
    ret = parse_opts(&c, &p, sub_argc, sub_argv, false);
    if (ret != 0) {
        goto out;
    }
    if (p.help) {
        fputs(cmd->help, stdout);
        goto out;
    }
    if ((p.cmd_opts & ~cmd->opts) != 0) {
        for (const struct option *o = OPTIONS; o->name != NULL; o++) {
            if (o->val >= OPT_ACK && (p.cmd_opts & ~cmd->opts & BIT(o->val)) != 0) {
                ret = usage_error("option --%s does not apply to %s", o->name, cmd->name);
                goto out;
            }
        }
    }
    const char *eps = p.endpoints;
    if (eps == NULL) {
        eps = getenv("DKV_ENDPOINTS");
    }
    if (eps == NULL || eps[0] == '\0') {
        eps = DEFAULT_ENDPOINT;
    }
    if (dkv_ctl_endpoints_parse(eps, &c.eps) != 0) {
        ret = usage_error("bad endpoint list `%s`", eps);
        goto out;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ret = fail("libcurl initialisation failed");
        goto out;
    }
    c.curl = curl_easy_init();
    if (c.curl == NULL) {
        ret = fail("libcurl initialisation failed");
    } else {
        /* optind now indexes sub_argv; positional arguments follow the command's name. */
        ret = cmd->run(&c, sub_argc - optind, sub_argv + optind);
        curl_easy_cleanup(c.curl);
    }
    curl_global_cleanup();
out:
    dkv_ctl_endpoints_cleanup(&c.eps);
    free(c.node);
    return ret;
}
