/*
 * dkvctl's pure logic: percent-encoding, scan-output escaping, endpoint lists, the retry policy
 * and the chunk-framing decoder. See ctl.h for the contracts and the reason for the decoder.
 */
#include "ctl/ctl.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const char HEX_UPPER[] = "0123456789ABCDEF";
static const char HEX_LOWER[] = "0123456789abcdef";

/* Longest size or trailer line accepted; real ones are a few bytes (dkv sends no extensions). */
#define MAX_LINE_BYTES 4096

/* ---- encoding ---- */

static bool unreserved(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

void dkv_ctl_pct_encode(dkv_slice_t in, dkv_buf_t *out)
{
    dkv_buf_reserve(out, in.len * 3);
    for (size_t i = 0; i < in.len; i++) {
        uint8_t c = in.ptr[i];
        if (unreserved(c)) {
            dkv_buf_append(out, &c, 1);
        } else {
            char esc[3] = {'%', HEX_UPPER[c >> 4], HEX_UPPER[c & 15]};
            dkv_buf_append(out, esc, sizeof(esc));
        }
    }
}

void dkv_ctl_escape(dkv_slice_t in, dkv_buf_t *out)
{
    for (size_t i = 0; i < in.len; i++) {
        uint8_t c = in.ptr[i];
        switch (c) {
        case '\\':
            dkv_buf_append(out, "\\\\", 2);
            break;
        case '\t':
            dkv_buf_append(out, "\\t", 2);
            break;
        case '\n':
            dkv_buf_append(out, "\\n", 2);
            break;
        case '\r':
            dkv_buf_append(out, "\\r", 2);
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                char esc[4] = {'\\', 'x', HEX_LOWER[c >> 4], HEX_LOWER[c & 15]};
                dkv_buf_append(out, esc, sizeof(esc));
            } else {
                dkv_buf_append(out, &c, 1);
            }
        }
    }
}

/* ---- endpoints ---- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

void dkv_ctl_endpoints_cleanup(dkv_ctl_endpoints_t *e)
{
    for (size_t i = 0; i < e->n; i++) {
        free(e->urls[i]);
    }
    free(e->urls);
    e->urls = NULL;
    e->n = 0;
}

int dkv_ctl_endpoints_parse(const char *csv, dkv_ctl_endpoints_t *out)
{
    dkv_ctl_endpoints_t e = {dkv_xcalloc(DKV_CTL_MAX_ENDPOINTS, sizeof(char *)), 0};
    int rc = 0;
    const char *p = csv;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        const char *s = p;
        while (len > 0 && is_space(s[0])) {
            s++;
            len--;
        }
        while (len > 0 && (is_space(s[len - 1]) || s[len - 1] == '/')) {
            len--;
        }
        if (len == 0 || e.n == DKV_CTL_MAX_ENDPOINTS) {
            rc = DKV_EINVAL;
            goto out;
        }
        dkv_buf_t b;
        dkv_buf_init(&b);
        /* "://" within the entry, not further along the list. */
        bool has_scheme = false;
        for (size_t i = 0; i + 3 <= len; i++) {
            if (memcmp(s + i, "://", 3) == 0) {
                has_scheme = true;
                break;
            }
        }
        if (!has_scheme) {
            dkv_buf_append_str(&b, "http://");
        }
        dkv_buf_append(&b, s, len);
        dkv_buf_append(&b, "", 1);
        e.urls[e.n++] = (char *)dkv_buf_steal(&b);
        if (end == NULL) {
            break;
        }
        p = end + 1;
    }
out:
    if (rc != 0) {
        dkv_ctl_endpoints_cleanup(&e);
        return rc;
    }
    *out = e;
    return 0;
}

/* ---- retry policy ---- */

void dkv_ctl_retry_init(dkv_ctl_retry_t *r, size_t n_endpoints, unsigned max_busy_retries,
                        unsigned base_backoff_ms, unsigned max_backoff_ms)
{
    memset(r, 0, sizeof(*r));
    r->n_endpoints = n_endpoints;
    r->max_busy_retries = max_busy_retries;
    r->base_backoff_ms = base_backoff_ms;
    r->max_backoff_ms = max_backoff_ms;
}

bool dkv_ctl_retry_next(dkv_ctl_retry_t *r, dkv_ctl_outcome_t outcome, unsigned *sleep_ms)
{
    switch (outcome) {
    case DKV_CTL_DOWN:
        r->down++;
        if (r->down >= r->n_endpoints) {
            return false;
        }
        r->endpoint = (r->endpoint + 1) % r->n_endpoints;
        *sleep_ms = 0;
        return true;
    case DKV_CTL_BUSY: {
        if (r->busy >= r->max_busy_retries) {
            return false;
        }
        /* base << busy, computed so that it cannot overflow: stop doubling at the cap. */
        uint64_t delay = r->base_backoff_ms;
        for (unsigned i = 0; i < r->busy && delay < r->max_backoff_ms; i++) {
            delay *= 2;
        }
        r->busy++;
        *sleep_ms = (unsigned)(delay < r->max_backoff_ms ? delay : r->max_backoff_ms);
        return true;
    }
    case DKV_CTL_ANSWERED:
    default:
        return false;
    }
}

/* ---- chunk framing ---- */

enum {
    ST_SIZE,      /* collecting "hex[;ext]\r\n" */
    ST_DATA,      /* collecting `size` payload bytes */
    ST_DATA_CRLF, /* expecting "\r\n" after the payload (kept in `line`) */
    ST_TRAILER,   /* lines until an empty one */
    ST_DONE,
};

void dkv_ctl_chunks_init(dkv_ctl_chunks_t *c, size_t max_chunk_bytes, dkv_ctl_chunk_cb cb,
                         void *arg)
{
    memset(c, 0, sizeof(*c));
    c->state = ST_SIZE;
    c->max_chunk_bytes = max_chunk_bytes;
    dkv_buf_init(&c->line);
    dkv_buf_init(&c->data);
    c->cb = cb;
    c->arg = arg;
}

void dkv_ctl_chunks_cleanup(dkv_ctl_chunks_t *c)
{
    dkv_buf_cleanup(&c->line);
    dkv_buf_cleanup(&c->data);
}

bool dkv_ctl_chunks_done(const dkv_ctl_chunks_t *c)
{
    return c->state == ST_DONE && c->error == 0;
}

static int hex_digit(uint8_t c)
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

/* Parses a size line without its CRLF: 1..16 hex digits, optional spaces and ";extension". */
static int parse_size_line(dkv_slice_t line, uint64_t *size)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; i < line.len; i++) {
        int d = hex_digit(line.ptr[i]);
        if (d < 0) {
            break;
        }
        if (i == 16) {
            return DKV_EPROTO; /* more than 64 bits */
        }
        v = (v << 4) | (uint64_t)d;
    }
    if (i == 0) {
        return DKV_EPROTO;
    }
    while (i < line.len && (line.ptr[i] == ' ' || line.ptr[i] == '\t')) {
        i++;
    }
    if (i < line.len && line.ptr[i] != ';') {
        return DKV_EPROTO;
    }
    *size = v;
    return 0;
}

/*
 * Moves bytes of `in` (from *pos) into `line` up to and including the next LF. Returns 1 when a
 * whole line (ending "\r\n") is in `line` (without the CRLF), 0 when more input is needed, or
 * DKV_EPROTO (an LF without CR, or a line over MAX_LINE_BYTES).
 */
static int take_line(dkv_buf_t *line, dkv_slice_t in, size_t *pos)
{
    const uint8_t *start = in.ptr + *pos;
    size_t avail = in.len - *pos;
    const uint8_t *lf = memchr(start, '\n', avail);
    size_t n = lf != NULL ? (size_t)(lf - start) + 1 : avail;
    if (line->len + n > MAX_LINE_BYTES) {
        return DKV_EPROTO;
    }
    dkv_buf_append(line, start, n);
    *pos += n;
    if (lf == NULL) {
        return 0;
    }
    if (line->len < 2 || line->data[line->len - 2] != '\r') {
        return DKV_EPROTO;
    }
    line->len -= 2;
    return 1;
}

static int feed(dkv_ctl_chunks_t *c, dkv_slice_t in)
{
    size_t pos = 0;
    while (pos < in.len) {
        switch (c->state) {
        case ST_SIZE: {
            int got = take_line(&c->line, in, &pos);
            if (got <= 0) {
                if (got < 0) {
                    return got;
                }
                break;
            }
            uint64_t size = 0;
            int rc = parse_size_line(dkv_buf_slice(&c->line), &size);
            if (rc != 0) {
                return rc;
            }
            c->line.len = 0;
            if (size == 0) {
                c->state = ST_TRAILER;
            } else if (size > c->max_chunk_bytes) {
                return DKV_ETOOBIG;
            } else {
                c->size = size;
                c->data.len = 0;
                c->state = ST_DATA;
            }
            break;
        }
        case ST_DATA: {
            size_t want = (size_t)c->size - c->data.len;
            size_t n = in.len - pos < want ? in.len - pos : want;
            dkv_buf_append(&c->data, in.ptr + pos, n);
            pos += n;
            if (c->data.len == c->size) {
                c->state = ST_DATA_CRLF;
            }
            break;
        }
        case ST_DATA_CRLF: {
            uint8_t b = in.ptr[pos++];
            if (b != (c->line.len == 0 ? '\r' : '\n')) {
                return DKV_EPROTO;
            }
            dkv_buf_append(&c->line, &b, 1);
            if (c->line.len == 2) {
                c->line.len = 0;
                c->state = ST_SIZE;
                int rc = c->cb(c->arg, dkv_buf_slice(&c->data));
                if (rc != 0) {
                    return rc;
                }
            }
            break;
        }
        case ST_TRAILER: {
            int got = take_line(&c->line, in, &pos);
            if (got < 0) {
                return got;
            }
            if (got == 1) {
                if (c->line.len == 0) {
                    c->state = ST_DONE;
                }
                c->line.len = 0;
            }
            break;
        }
        case ST_DONE:
        default:
            return DKV_EPROTO; /* bytes after the end */
        }
    }
    return 0;
}

int dkv_ctl_chunks_feed(dkv_ctl_chunks_t *c, dkv_slice_t in)
{
    if (c->error != 0) {
        return c->error;
    }
    c->error = feed(c, in);
    return c->error;
}

int dkv_ctl_split_record(dkv_slice_t rec, dkv_slice_t *key, dkv_slice_t *value)
{
    const uint8_t *lf = rec.len > 0 ? memchr(rec.ptr, '\n', rec.len) : NULL;
    if (lf == NULL || lf == rec.ptr) {
        return DKV_EPROTO;
    }
    size_t klen = (size_t)(lf - rec.ptr);
    *key = dkv_slice(rec.ptr, klen);
    *value = dkv_slice(lf + 1, rec.len - klen - 1);
    return 0;
}
