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
 * the cluster list (dkv_ring_primary_share{node=...}) from the /metrics page of the first
 * endpoint that answers, then ask every node directly (no failover: a node that does not answer
 * is reported as down). Everything they show comes from /v0/health, /v0/ready and /metrics, the
 * nodes' machine-oriented pages, and the status codes of the admin calls.
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
} ctl_t;

/* One HTTP request as dkvctl makes it. */
typedef struct req {
    const char *method; /* GET, PUT, DELETE, POST */
    const char *target; /* path and query, already encoded */
    dkv_slice_t body;   /* PUT only */
    long timeout_ms;    /* whole exchange; 0: none, only a stall limit (scan) */
    /* Non-NULL: the response is split into /v0/entities records by an llhttp parser fed the raw
     * header lines and body (libcurl's transfer decoding off), and a 200's records go here. */
    dkv_ctl_record_cb record_cb;
    void *record_arg;
    size_t max_body_bytes; /* of a collected 200 body */
} req_t;

/* What came back. */
typedef struct resp {
    CURL *curl;
    const req_t *req;
    long status; /* 0 until a response arrived */
    dkv_buf_t body;
    bool too_big;           /* a 200 body over req->max_body_bytes */
    dkv_ctl_records_t recs; /* with req->record_cb: this attempt's splitter */
    bool recs_live;         /* recs was initialised */
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
    if (r->recs_live) {
        /* The raw body, chunk framing included: the splitter finds the records. */
        return dkv_ctl_records_feed(&r->recs, dkv_slice(ptr, n)) == 0 ? n : 0;
    }
    if (r->status == 0) {
        curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &r->status);
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

/* The status line and each header line as received, CRLF included, then the empty line: the
 * start of what the records splitter parses. */
static size_t on_header(char *ptr, size_t size, size_t nmemb, void *arg)
{
    resp_t *r = arg;
    size_t n = size * nmemb;
    return dkv_ctl_records_feed(&r->recs, dkv_slice(ptr, n)) == 0 ? n : 0;
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

static const char *records_error(int rc)
{
    switch (rc) {
    case DKV_EPROTO:
        return "malformed response (not HTTP/1.1 chunks of `key\\nvalue` records)";
    case DKV_ETOOBIG:
        return "a record over the size limit";
    default:
        return dkv_strerror(rc);
    }
}

/* Sets the options of one exchange on `h`. */
static void setup(ctl_t *c, CURL *h, const char *url, const req_t *q, resp_t *r)
{
    curl_easy_reset(h); /* keeps the connection cache */
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1); /* dkv's protocol */
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
    if (q->record_cb != NULL) {
        curl_easy_setopt(h, CURLOPT_HTTP_TRANSFER_DECODING, 0L);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
        /* Through a proxy's tunnel, its own response is not the node's. */
        curl_easy_setopt(h, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    }
    if (strcmp(q->method, "PUT") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)q->body.len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, q->body.len > 0 ? (const char *)q->body.ptr : "");
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
    } else if (strcmp(q->method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    } else if (strcmp(q->method, "DELETE") == 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
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
    r->errbuf[0] = '\0';
    if (r->recs_live) {
        dkv_ctl_records_cleanup(&r->recs);
        r->recs_live = false;
    }
    if (q->record_cb != NULL) {
        dkv_ctl_records_init(&r->recs, DKV_CTL_DEFAULT_MAX_RECORD_BYTES, q->record_cb,
                             q->record_arg);
        r->recs_live = true;
    }
    *fatal = false;

    setup(c, h, (const char *)url.data, q, r);
    struct curl_slist *headers = curl_slist_append(NULL, "Expect:");
    if (strcmp(q->method, "PUT") == 0) {
        headers = curl_slist_append(headers, "Content-Type: application/octet-stream");
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);

    CURLcode rc = curl_easy_perform(h);
    curl_slist_free_all(headers);
    dkv_ctl_outcome_t out = DKV_CTL_ANSWERED;
    const char *detail = r->errbuf[0] != '\0' ? r->errbuf : curl_easy_strerror(rc);
    /* Records already printed cannot be taken back: no retry elsewhere after that. */
    bool printed = r->recs_live && r->recs.records > 0;
    int recs_rc = 0;
    if (r->recs_live && rc == CURLE_OK) {
        recs_rc = dkv_ctl_records_finish(&r->recs);
    } else if (r->recs_live) {
        recs_rc = r->recs.error;
    }

    if (rc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
        if (r->recs_live && r->status != 200) {
            /* For status_reason(): the splitter kept the start of the error body. */
            dkv_slice_t eb = dkv_ctl_records_error_body(&r->recs);
            dkv_buf_append(&r->body, eb.ptr, eb.len);
        }
        if (r->status == 503) {
            out = DKV_CTL_BUSY;
        } else if (r->recs_live && r->status == 200 && recs_rc != 0) {
            *fatal = true;
            snprintf(why, why_len, "%s: bad record stream: %s", base,
                     recs_rc == DKV_EPROTO ? "the response ended early or is malformed"
                                           : records_error(recs_rc));
        }
    } else if (rc == CURLE_WRITE_ERROR && r->too_big) {
        *fatal = true;
        snprintf(why, why_len, "%s: response body over %zu bytes", base, q->max_body_bytes);
    } else if (rc == CURLE_WRITE_ERROR && recs_rc != 0) {
        *fatal = true;
        snprintf(why, why_len, "%s: bad record stream: %s", base, records_error(recs_rc));
    } else if (is_down_error(rc) && !printed) {
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
    if (r->recs_live) {
        dkv_ctl_records_cleanup(&r->recs);
        r->recs_live = false;
    }
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
    req_t q = {.method = "GET",
               .target = (const char *)t.data,
               .timeout_ms = 0,
               .record_cb = on_record,
               .record_arg = &s,
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
    dkv_buf_cleanup(&s.line);
    dkv_buf_cleanup(&t);
    return ret;
}

/* ---- pages of the nodes: /metrics, /v0/health, /v0/ready ---- */

/* What `status` and the admin commands learn about one node. */
typedef struct node_view {
    const char *url;
    bool up;           /* answered /v0/health (any status) */
    long health;       /* its status */
    long ready;        /* the status of /v0/ready: 200 ready, 503 not; 0 not asked */
    bool have_metrics; /* m is a parsed page */
    dkv_ctl_metrics_t m;
    char why[512]; /* down: why; up without metrics: why not */
} node_view_t;

/*
 * GETs /metrics on `urls` (failover when n > 1) and parses it. On failure the reason is in
 * `why` (and printed unless `quiet`).
 */
static int fetch_metrics(ctl_t *c, char *const *urls, size_t n, bool quiet, dkv_ctl_metrics_t *m,
                         size_t *used, char *why, size_t why_len)
{
    req_t q = {.method = "GET",
               .target = "/metrics",
               .timeout_ms = c->timeout_ms,
               .max_body_bytes = DKV_CTL_MAX_METRICS_BYTES};
    resp_t r;
    resp_init(&r);
    int ret = request_on(c, urls, n, &q, &r, used, true);
    if (ret != 0) {
        /* The endpoints' reasons, "URL: reason; ..." */
        size_t pre = (size_t)snprintf(why, why_len, "%s", n > 1 ? "no endpoint answered: " : "");
        if (pre < why_len) {
            first_line(&r.body, why + pre, why_len - pre);
        }
        goto out;
    }
    if (r.status != 200) {
        status_reason(&r, why, why_len);
        ret = EXIT_FAIL;
        goto out;
    }
    size_t bad_line = 0;
    int rc = dkv_ctl_metrics_parse(dkv_buf_slice(&r.body), m, &bad_line);
    if (rc != 0) {
        snprintf(why, why_len, "%s/metrics: not a Prometheus text page (%s at line %zu)",
                 urls[*used], dkv_strerror(rc), bad_line);
        ret = EXIT_FAIL;
    }
out:
    if (ret != 0 && !quiet) {
        fail("%s", why);
    }
    resp_cleanup(&r);
    return ret;
}

/* One request to one node, no failover; the status, or 0 with the reason in `why`. */
static long probe(ctl_t *c, const char *url, const char *method, const char *target,
                  long timeout_ms, char *why, size_t why_len)
{
    req_t q = {.method = method,
               .target = target,
               .timeout_ms = timeout_ms,
               .max_body_bytes = MAX_ERROR_BODY_BYTES};
    resp_t r;
    resp_init(&r);
    size_t used = 0;
    char *one[] = {(char *)url};
    long status = 0;
    if (request_on(c, one, 1, &q, &r, &used, true) != 0) {
        first_line(&r.body, why, why_len);
    } else {
        status = r.status;
        status_reason(&r, why, why_len);
    }
    resp_cleanup(&r);
    return status;
}

/*
 * The cluster: the node URLs of dkv_ring_primary_share on the /metrics page of the first
 * endpoint that answers. `*urls` (each entry and the array) and `page` are the caller's to free.
 */
static int get_cluster(ctl_t *c, dkv_ctl_metrics_t *page, char ***urls, size_t *n)
{
    char why[CURL_ERROR_SIZE + 512];
    size_t used = 0;
    int ret = fetch_metrics(c, c->eps.urls, c->eps.n, false, page, &used, why, sizeof(why));
    if (ret != 0) {
        return ret;
    }
    size_t count = 0;
    char **list = dkv_xcalloc(page->n_samples + 1, sizeof(*list));
    for (size_t i = 0; i < page->n_samples; i++) {
        const char *node = strcmp(page->samples[i].name, "dkv_ring_primary_share") == 0
                               ? dkv_ctl_sample_label(&page->samples[i], "node")
                               : NULL;
        if (node != NULL) {
            list[count++] = strdup(node);
        }
    }
    if (count == 0) {
        free(list);
        dkv_ctl_metrics_cleanup(page);
        return fail("%s/metrics has no dkv_ring_primary_share: not a dkv node, or one older than "
                    "dkvctl",
                    c->eps.urls[used]);
    }
    *urls = list;
    *n = count;
    return 0;
}

static void free_urls(char **urls, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(urls[i]);
    }
    free(urls);
}

/* Host and port of a URL ("http://h:p" -> "h:p") for compact tables. */
static const char *short_url(const char *url)
{
    const char *p = strstr(url, "://");
    return p != NULL ? p + 3 : url;
}

static double metric(const dkv_ctl_metrics_t *m, const char *name, const char *label,
                     const char *value, double dflt)
{
    const dkv_ctl_sample_t *s = dkv_ctl_metrics_find(m, name, label, value);
    return s != NULL ? s->value : dflt;
}

/* A sample value as a count: NaN and negatives (never sent by a node) as 0. */
static uint64_t count_of(double v)
{
    return v > 0 && v < 1.8e19 ? (uint64_t)v : 0;
}

static void format_bytes(double bytes, char *out, size_t out_len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    unsigned u = 0;
    while (bytes >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        bytes /= 1024;
        u++;
    }
    snprintf(out, out_len, u == 0 ? "%.0f%s" : "%.1f%s", bytes, units[u]);
}

/*
 * When every peer was last covered by a complete anti-entropy exchange: the oldest of
 * dkv_antientropy_last_complete_exchange_timestamp_seconds over the peers, as an age ("3m05s
 * ago"), "never" when some peer has had none, "-" on a cluster of one.
 */
static void repaired_text(const dkv_ctl_metrics_t *m, uint64_t now_ms, char *out, size_t out_len)
{
    double oldest = -1;
    for (size_t i = 0; i < m->n_samples; i++) {
        const dkv_ctl_sample_t *s = &m->samples[i];
        if (strcmp(s->name, "dkv_antientropy_last_complete_exchange_timestamp_seconds") != 0) {
            continue;
        }
        if (!(s->value > 0)) {
            snprintf(out, out_len, "never");
            return;
        }
        if (oldest < 0 || s->value < oldest) {
            oldest = s->value;
        }
    }
    if (oldest < 0) {
        snprintf(out, out_len, "-");
        return;
    }
    uint64_t at_ms = count_of(oldest * 1000);
    char d[32];
    format_duration(now_ms > at_ms ? now_ms - at_ms : 0, d, sizeof(d));
    snprintf(out, out_len, "%s ago", d);
}

/* The breakers towards peers: "closed" when all are, else each other one "h:p=open". */
static void breakers_text(const dkv_ctl_metrics_t *m, char *out, size_t out_len)
{
    static const char *const names[] = {"closed", "open", "half-open"};
    size_t peers = 0;
    size_t shown = 0;
    out[0] = '\0';
    for (size_t i = 0; i < m->n_samples; i++) {
        const dkv_ctl_sample_t *s = &m->samples[i];
        const char *peer = dkv_ctl_sample_label(s, "peer");
        if (strcmp(s->name, "dkv_peer_breaker_state") != 0 || peer == NULL) {
            continue;
        }
        peers++;
        if (s->value == 0) {
            continue;
        }
        size_t len = strlen(out);
        snprintf(out + len, out_len - len, "%s%s=%s", shown > 0 ? "," : "", short_url(peer),
                 s->value == 1 || s->value == 2 ? names[(int)s->value] : "?");
        shown++;
    }
    if (shown == 0) {
        snprintf(out, out_len, "%s", peers > 0 ? "closed" : "-");
    }
}

/* The node's state from dkv_node_state, with the rebuild's progress while it rebuilds. */
static void state_text(const dkv_ctl_metrics_t *m, char *out, size_t out_len)
{
    snprintf(out, out_len, "?");
    for (size_t i = 0; i < m->n_samples; i++) {
        const dkv_ctl_sample_t *s = &m->samples[i];
        const char *st = dkv_ctl_sample_label(s, "state");
        if (strcmp(s->name, "dkv_node_state") == 0 && st != NULL && s->value == 1) {
            snprintf(out, out_len, "%s", st);
            break;
        }
    }
    const dkv_ctl_sample_t *p = dkv_ctl_metrics_find(m, "dkv_rebuild_progress_ratio", NULL, NULL);
    if (strcmp(out, "rebuilding") == 0 && p != NULL && p->value > 0 && p->value <= 1) {
        snprintf(out, out_len, "rebuilding %.0f%%", p->value * 100);
    }
}

/* Fills `v` for `url`: health, readiness, and its /metrics page. */
static void view_node(ctl_t *c, const char *url, node_view_t *v)
{
    memset(v, 0, sizeof(*v));
    v->url = url;
    v->health = probe(c, url, "GET", "/v0/health", c->timeout_ms, v->why, sizeof(v->why));
    if (v->health == 0) {
        return; /* down: `why` says how */
    }
    v->up = true;
    char ignored[256];
    v->ready = probe(c, url, "GET", "/v0/ready", c->timeout_ms, ignored, sizeof(ignored));
    char *one[] = {(char *)url};
    size_t used = 0;
    v->why[0] = '\0';
    v->have_metrics = fetch_metrics(c, one, 1, true, &v->m, &used, v->why, sizeof(v->why)) == 0;
}

static void view_cleanup(node_view_t *v)
{
    if (v->have_metrics) {
        dkv_ctl_metrics_cleanup(&v->m);
    }
}

/*
 * Why a node that answered /v0/ready 503 is not ready, from its metrics: the inputs of the
 * readiness check (architecture.md: writable store, state ready, a default quorum reachable).
 */
static void not_ready_text(const node_view_t *v, char *out, size_t out_len)
{
    out[0] = '\0';
    if (v->ready != 503 || !v->have_metrics) {
        snprintf(out, out_len,
                 v->ready == 0 ? "no answer from /v0/ready" : "/v0/ready answered %ld", v->ready);
        return;
    }
    const dkv_ctl_metrics_t *m = &v->m;
    size_t len = 0;
    if (metric(m, "dkv_store_writable", NULL, NULL, 1) == 0) {
        len += (size_t)snprintf(out + len, out_len - len, "storage not writable; ");
    }
    char state[64];
    state_text(m, state, sizeof(state));
    if (len < out_len && strcmp(state, "?") != 0 && strcmp(state, "ready") != 0) {
        len += (size_t)snprintf(out + len, out_len - len, "state %s; ", state);
    }
    if (len == 0) {
        /* Neither: too few replicas reachable for the default quorum. */
        len += (size_t)snprintf(out, out_len, "too few replicas reachable for the default quorum");
        size_t shown = 0;
        for (size_t i = 0; i < m->n_samples && len < out_len; i++) {
            const dkv_ctl_sample_t *s = &m->samples[i];
            const char *peer = dkv_ctl_sample_label(s, "peer");
            if (strcmp(s->name, "dkv_peer_connected") == 0 && peer != NULL && s->value == 0) {
                len += (size_t)snprintf(out + len, out_len - len, "%s%s",
                                        shown++ == 0 ? "; not connected: " : ", ", peer);
            }
        }
    } else if (len >= 2 && len < out_len) {
        out[len - 2] = '\0'; /* the last "; " */
    }
}

/* ---- status ---- */

#define STATUS_COLS 11

/* One table row: columns padded to their widths but the last (BREAKERS), which is free. */
static void print_row(int w, const char *const *cols)
{
    static const int widths[STATUS_COLS] = {0, 6, 5, 15, 7, 7, 9, 6, 12, 10, 0};
    for (size_t i = 0; i + 1 < STATUS_COLS; i++) {
        printf("%-*s  ", i == 0 ? w : widths[i], cols[i]);
    }
    printf("%s\n", cols[STATUS_COLS - 1]);
}

static const char *ready_text(long status)
{
    return status == 200 ? "yes" : status == 503 ? "no" : "?";
}

static void status_row(int w, const node_view_t *v, uint64_t now_ms)
{
    if (!v->up || !v->have_metrics) {
        const char *cols[STATUS_COLS] = {v->url,
                                         v->up ? "up" : "down",
                                         v->up ? ready_text(v->ready) : "-",
                                         "-",
                                         "-",
                                         "-",
                                         "-",
                                         "-",
                                         "-",
                                         "-",
                                         "-"};
        print_row(w, cols);
        return;
    }
    const dkv_ctl_metrics_t *m = &v->m;
    char state[64];
    state_text(m, state, sizeof(state));
    const dkv_ctl_sample_t *bi = dkv_ctl_metrics_find(m, "dkv_build_info", NULL, NULL);
    const char *version = bi != NULL ? dkv_ctl_sample_label(bi, "version") : NULL;
    char uptime[32] = "-";
    double start_s = metric(m, "process_start_time_seconds", NULL, NULL, 0);
    if (start_s > 0) {
        uint64_t start_ms = count_of(start_s * 1000);
        format_duration(now_ms > start_ms ? now_ms - start_ms : 0, uptime, sizeof(uptime));
    }
    /* The data column family on disk (live SST files) and in memory (memtables). */
    char data[32];
    format_bytes(metric(m, "dkv_rocksdb_live_sst_files_bytes", "cf", "data", 0) +
                     metric(m, "dkv_rocksdb_memtable_bytes", "cf", "data", 0),
                 data, sizeof(data));
    char hints[32] = "off";
    if (dkv_ctl_metrics_has_family(m, "dkv_hints_pending")) {
        double sum = 0;
        dkv_ctl_metrics_sum(m, "dkv_hints_pending", &sum);
        snprintf(hints, sizeof(hints), "%" PRIu64, count_of(sum));
    }
    char repaired[48];
    repaired_text(m, now_ms, repaired, sizeof(repaired));
    const char *storage = metric(m, "dkv_store_writable", NULL, NULL, 1) == 0 ? "unwritable" : "ok";
    char breakers[1024];
    breakers_text(m, breakers, sizeof(breakers));
    const char *cols[STATUS_COLS] = {v->url,
                                     "up",
                                     ready_text(v->ready),
                                     state,
                                     version != NULL ? version : "?",
                                     uptime,
                                     data,
                                     hints,
                                     repaired,
                                     storage,
                                     breakers};
    print_row(w, cols);
}

static int cmd_status(ctl_t *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0) {
        return usage_error("status takes no arguments");
    }
    dkv_ctl_metrics_t first;
    char **urls = NULL;
    size_t n = 0;
    int ret = get_cluster(c, &first, &urls, &n);
    if (ret != 0) {
        return ret;
    }
    dkv_ctl_metrics_cleanup(&first);
    node_view_t *views = dkv_xcalloc(n, sizeof(*views));
    int w = 4;
    size_t up = 0;
    for (size_t i = 0; i < n; i++) {
        w = (int)strlen(urls[i]) > w ? (int)strlen(urls[i]) : w;
        view_node(c, urls[i], &views[i]);
        up += views[i].up;
    }
    uint64_t now_ms = wall_ms();
    const char *head[STATUS_COLS] = {"NODE", "STATUS", "READY",    "STATE",   "VERSION", "UPTIME",
                                     "DATA", "HINTS",  "REPAIRED", "STORAGE", "BREAKERS"};
    print_row(w, head);
    for (size_t i = 0; i < n; i++) {
        status_row(w, &views[i], now_ms);
    }
    for (size_t i = 0; i < n; i++) {
        const node_view_t *v = &views[i];
        char why[1024];
        if (!v->up) {
            printf("%s is down: %s\n", v->url, without_url(v->why, v->url));
            continue;
        }
        if (!v->have_metrics) {
            printf("%s: no metrics: %s\n", v->url, without_url(v->why, v->url));
        }
        if (v->ready != 200) {
            not_ready_text(v, why, sizeof(why));
            printf("%s is not ready: %s\n", v->url, why);
        }
    }
    printf("%zu of %zu nodes up\n", up, n);
    for (size_t i = 0; i < n; i++) {
        view_cleanup(&views[i]);
    }
    free(views);
    free_urls(urls, n);
    return 0;
}

/* ---- ring ---- */

static int cmd_ring(ctl_t *c, int argc, char **argv)
{
    (void)argv;
    if (argc != 0) {
        return usage_error("ring takes no arguments");
    }
    dkv_ctl_metrics_t page;
    char **urls = NULL;
    size_t n = 0;
    int ret = get_cluster(c, &page, &urls, &n);
    if (ret != 0) {
        return ret;
    }
    uint64_t vnodes = count_of(metric(&page, "dkv_ring_vnodes", NULL, NULL, 0));
    int w = 5;
    for (size_t i = 0; i < n; i++) {
        w = (int)strlen(urls[i]) > w ? (int)strlen(urls[i]) : w;
    }
    printf("%-*s  %8s  %8s\n", w, "NODE", "TOKENS", "OWNS");
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        double share = metric(&page, "dkv_ring_primary_share", "node", urls[i], 0);
        printf("%-*s  %8" PRIu64 "  %7.2f%%\n", w, urls[i], vnodes, share * 100.0);
        total += share;
    }
    printf("%-*s  %8" PRIu64 "  %7.2f%%\n", w, "TOTAL", vnodes * n, total * 100.0);
    printf("OWNS: share of the hash space whose first replica is the node (the keys it holds at "
           "from=1), from the nodes' own ring (xxh3, %" PRIu64 " tokens per node)\n",
           vnodes);
    dkv_ctl_metrics_cleanup(&page);
    free_urls(urls, n);
    return 0;
}

/* ---- hints and repair ---- */

/* The nodes an admin command addresses: --node, else every node of the cluster. */
static int admin_nodes(ctl_t *c, char ***urls, size_t *n)
{
    if (c->node != NULL) {
        char **one = dkv_xcalloc(1, sizeof(*one));
        one[0] = strdup(c->node);
        *urls = one;
        *n = 1;
        return 0;
    }
    dkv_ctl_metrics_t page;
    int ret = get_cluster(c, &page, urls, n);
    if (ret == 0) {
        dkv_ctl_metrics_cleanup(&page);
    }
    return ret;
}

typedef enum admin_kind { HINTS_STATUS, HINTS_SYNC, REPAIR_RUN, REPAIR_STATUS } admin_kind_t;

/* Sums a per-peer counter of a page, and the same for `before` (NULL: none), giving the
 * difference: what one run moved. */
static uint64_t moved(const dkv_ctl_metrics_t *after, const dkv_ctl_metrics_t *before,
                      const char *name)
{
    double a = 0;
    double b = 0;
    dkv_ctl_metrics_sum(after, name, &a);
    if (before != NULL) {
        dkv_ctl_metrics_sum(before, name, &b);
    }
    return a > b ? count_of(a - b) : 0;
}

/* Appends the peers whose failed exchanges grew from `before` to `after` (all that ever failed
 * when `before` is NULL) to `out`. */
static void failed_peers(const dkv_ctl_metrics_t *after, const dkv_ctl_metrics_t *before,
                         dkv_buf_t *out)
{
    for (size_t i = 0; i < after->n_samples; i++) {
        const dkv_ctl_sample_t *s = &after->samples[i];
        const char *peer = dkv_ctl_sample_label(s, "peer");
        const char *result = dkv_ctl_sample_label(s, "result");
        if (strcmp(s->name, "dkv_antientropy_exchanges_total") != 0 || peer == NULL ||
            result == NULL || strcmp(result, "failed") != 0) {
            continue;
        }
        double was = before != NULL ? metric(before, s->name, "peer", peer, 0) : 0;
        if (before != NULL) {
            /* The same series in `before`: match both labels. */
            was = 0;
            for (size_t j = 0; j < before->n_samples; j++) {
                const dkv_ctl_sample_t *b = &before->samples[j];
                const char *bp = dkv_ctl_sample_label(b, "peer");
                const char *br = dkv_ctl_sample_label(b, "result");
                if (strcmp(b->name, s->name) == 0 && bp != NULL && br != NULL &&
                    strcmp(bp, peer) == 0 && strcmp(br, "failed") == 0) {
                    was = b->value;
                }
            }
        }
        if (s->value > was) {
            dkv_buf_printf(out, "%s%s", out->len > 0 ? ", " : "", short_url(peer));
        }
    }
}

/* One result line of an admin command for `url`; returns whether it succeeded. */
static bool admin_row(ctl_t *c, admin_kind_t kind, int w, const char *url)
{
    char why[CURL_ERROR_SIZE + 512] = "";
    char *one[] = {(char *)url};
    size_t used = 0;
    dkv_ctl_metrics_t before = {0};
    dkv_ctl_metrics_t after = {0};
    bool ok = false;
    long status = 0;
    char target[128];
    if (kind == REPAIR_RUN &&
        fetch_metrics(c, one, 1, true, &before, &used, why, sizeof(why)) != 0) {
        /* The counters before the round, so the row shows what this round did. */
        printf("%-*s  down (%s)\n", w, url, without_url(why, url));
        goto out;
    }
    if (kind == HINTS_SYNC || kind == REPAIR_RUN) {
        snprintf(target, sizeof(target), "%s?timeout_ms=%ld",
                 kind == HINTS_SYNC ? "/v0/admin/hints/sync" : "/v0/admin/repair", c->wait_ms);
        status = probe(c, url, "POST", target, c->timeout_ms + c->wait_ms, why, sizeof(why));
        if (status == 0) {
            printf("%-*s  down (%s)\n", w, url, without_url(why, url));
            goto out;
        }
    }
    if (fetch_metrics(c, one, 1, true, &after, &used, why, sizeof(why)) != 0) {
        printf("%-*s  %s (%s)\n", w, url, status != 0 ? "failed" : "down", without_url(why, url));
        goto out;
    }
    /* 200: done; 502: an exchange of the round failed; 504: the wait timed out. */
    const char *result = status == 200 ? "ok" : status == 504 ? "timeout" : "failed";
    ok = kind == HINTS_STATUS || kind == REPAIR_STATUS || status == 200;
    if (kind == HINTS_STATUS || kind == HINTS_SYNC) {
        char pending[32] = "off";
        char bytes[32] = "-";
        if (dkv_ctl_metrics_has_family(&after, "dkv_hints_pending")) {
            snprintf(pending, sizeof(pending), "%" PRIu64,
                     moved(&after, NULL, "dkv_hints_pending"));
            format_bytes((double)moved(&after, NULL, "dkv_hints_pending_bytes"), bytes,
                         sizeof(bytes));
        }
        if (kind == HINTS_SYNC) {
            printf("%-*s  %-7s  %8s  %10s%s%s\n", w, url, result, pending, bytes, ok ? "" : "  ",
                   ok ? "" : why);
        } else {
            printf("%-*s  %8s  %10s\n", w, url, pending, bytes);
        }
        goto out;
    }
    char last[48];
    repaired_text(&after, wall_ms(), last, sizeof(last));
    const dkv_ctl_metrics_t *base = kind == REPAIR_RUN ? &before : NULL;
    dkv_buf_t failed;
    dkv_buf_init(&failed);
    failed_peers(&after, base, &failed);
    dkv_buf_append(&failed, "", 1);
    char moved_bytes[32];
    format_bytes((double)moved(&after, base, "dkv_antientropy_bytes_total"), moved_bytes,
                 sizeof(moved_bytes));
    printf("%-*s  %-7s  %13" PRIu64 "  %10" PRIu64 "  %10s  %-*s%s%s\n", w, url,
           kind == REPAIR_RUN ? result : "-",
           moved(&after, base, "dkv_antientropy_keys_repaired_total"),
           moved(&after, base, "dkv_antientropy_records_total"), moved_bytes,
           failed.len > 1 ? 13 : 0, last, failed.len > 1 ? "  failed with: " : "",
           (const char *)failed.data);
    dkv_buf_cleanup(&failed);
out:
    dkv_ctl_metrics_cleanup(&before);
    dkv_ctl_metrics_cleanup(&after);
    return ok;
}

static int run_admin(ctl_t *c, admin_kind_t kind)
{
    char **urls = NULL;
    size_t n = 0;
    int ret = admin_nodes(c, &urls, &n);
    if (ret != 0) {
        return ret;
    }
    int w = 4;
    for (size_t i = 0; i < n; i++) {
        w = (int)strlen(urls[i]) > w ? (int)strlen(urls[i]) : w;
    }
    switch (kind) {
    case HINTS_STATUS:
        printf("%-*s  %8s  %10s\n", w, "NODE", "PENDING", "BYTES");
        break;
    case HINTS_SYNC:
        printf("%-*s  %-7s  %8s  %10s\n", w, "NODE", "RESULT", "PENDING", "BYTES");
        break;
    case REPAIR_RUN:
    case REPAIR_STATUS:
    default:
        printf("%-*s  %-7s  %13s  %10s  %10s  %s\n", w, "NODE", "RESULT", "KEYS_REPAIRED",
               "RECORDS", "BYTES", "LAST_COMPLETE");
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
    if (kind == REPAIR_RUN || kind == REPAIR_STATUS) {
        printf("KEYS_REPAIRED: keys found different and reconciled; RECORDS, BYTES: moved both "
               "ways (%s); LAST_COMPLETE: since every peer was last covered by a complete "
               "exchange\n",
               kind == REPAIR_RUN ? "by this round" : "since the node started");
    }
    if (failed > 0) {
        ret = fail("%zu of %zu nodes failed", failed, n);
    }
    free_urls(urls, n);
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
    {"status", cmd_status, 0, "show every node: up/down, ready, state, data, hints, repair",
     "usage: dkvctl [options] status\n"
     "Reads the cluster list from the /metrics page of the first endpoint that answers, then\n"
     "asks every node for GET /v0/health, /v0/ready and /metrics and prints one row per node:\n"
     "  STATUS    up (answered /v0/health), or down (no answer; the reason follows the table)\n"
     "  READY     yes or no: /v0/ready's 200 or 503 (why not follows the table)\n"
     "  STATE     ready, joining, rebuilding (with the rebuild's progress)\n"
     "  VERSION, UPTIME (from the node's start time and this host's clock)\n"
     "  DATA      the data column family: live SST files plus memtables\n"
     "  HINTS     hints that node keeps for its peers (off: hinted handoff is off)\n"
     "  REPAIRED  since every peer was last covered by a complete anti-entropy exchange\n"
     "  STORAGE   ok, or unwritable (disk full or another storage error: writes refused)\n"
     "  BREAKERS  circuit breakers towards peers: closed, or each peer's that is not\n"
     "Exit 0 when the table was printed (down nodes included); 3 when no endpoint answered.\n"},
    {"ring", cmd_ring, 0, "show each node's share of the ring",
     "usage: dkvctl [options] ring\n"
     "Prints each node's tokens and its exact share of the hash space as first replica (the\n"
     "keys it holds at from=1), as the first endpoint that answers computes them from its\n"
     "own ring (dkv_ring_primary_share on /metrics).\n"},
    {"hints", cmd_hints, BIT(OPT_NODE) | BIT(OPT_WAIT), "show or deliver hinted-handoff hints",
     "usage: dkvctl [options] hints [status | sync] [--node URL] [--wait-ms MS]\n"
     "status (default): every node's hints pending for its peers (count and bytes, from\n"
     "/metrics). sync: POST /v0/admin/hints/sync on every node: waits until every hint that\n"
     "existed at the call was delivered (or MS passed), then shows what is pending.\n"
     "Exit 3 if a node failed (RESULT timeout or failed) or did not answer.\n"
     "  --node URL    only this node (default: every node of the cluster)\n"
     "  --wait-ms MS  server-side wait of sync (default 60000)\n"},
    {"repair", cmd_repair, BIT(OPT_NODE) | BIT(OPT_WAIT), "run or show anti-entropy repair",
     "usage: dkvctl [options] repair [run | status] [--node URL] [--wait-ms MS]\n"
     "run (default): POST /v0/admin/repair on every node in turn: one anti-entropy round with\n"
     "each of its peers. RESULT ok, failed (an exchange failed: the peers follow), timeout;\n"
     "KEYS_REPAIRED, RECORDS and BYTES are what the round did (/metrics before and after).\n"
     "status: the same columns since each node started, from /metrics.\n"
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
               .wait_ms = DEFAULT_WAIT_MS};
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
