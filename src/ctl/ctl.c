/*
 * dkvctl's pure logic: percent-encoding, scan-output escaping, endpoint lists, the retry policy,
 * the llhttp-based splitter of a `/v0/entities` response into records, and the reader of a
 * /metrics page. See ctl.h for the contracts.
 */
#include "ctl/ctl.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static const char HEX_UPPER[] = "0123456789ABCDEF";
static const char HEX_LOWER[] = "0123456789abcdef";

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

/* ---- records of a /v0/entities response (llhttp) ---- */

static int on_message_begin(llhttp_t *p)
{
    dkv_ctl_records_t *s = p->data;
    if (s->complete) {
        s->error = DKV_EPROTO; /* a second response after the final one */
        return -1;
    }
    s->status = 0;
    s->last_chunk = false;
    s->record.len = 0;
    s->error_body.len = 0;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    dkv_ctl_records_t *s = p->data;
    s->status = p->status_code;
    if (s->status == 200) {
        /* The records are the chunks (API.md §10); an empty range may also come as
         * Content-Length: 0. Any other 200 body cannot be split into records. */
        bool chunked = (p->flags & F_CHUNKED) != 0;
        bool empty = (p->flags & F_CONTENT_LENGTH) != 0 && p->content_length == 0;
        if (!chunked && !empty) {
            s->error = DKV_EPROTO;
            return -1;
        }
    }
    return 0;
}

static int on_chunk_header(llhttp_t *p)
{
    dkv_ctl_records_t *s = p->data;
    if (p->content_length == 0) {
        s->last_chunk = true;
    } else if (s->status == 200 && p->content_length > s->max_record_bytes) {
        s->error = DKV_ETOOBIG;
        return -1;
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    dkv_ctl_records_t *s = p->data;
    if (s->status != 200) {
        size_t room = DKV_CTL_MAX_ERROR_BODY_BYTES - s->error_body.len;
        dkv_buf_append(&s->error_body, at, len < room ? len : room);
        return 0;
    }
    if (len > s->max_record_bytes - s->record.len) {
        s->error = DKV_ETOOBIG; /* not reached: the chunk's size was checked */
        return -1;
    }
    dkv_buf_append(&s->record, at, len);
    return 0;
}

static int on_chunk_complete(llhttp_t *p)
{
    dkv_ctl_records_t *s = p->data;
    if (s->status != 200 || s->last_chunk) {
        return 0;
    }
    int rc = s->cb(s->arg, dkv_buf_slice(&s->record));
    s->record.len = 0;
    if (rc != 0) {
        s->error = rc;
        return -1;
    }
    s->records++;
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    dkv_ctl_records_t *s = p->data;
    /* A 1xx response is followed by the real one. */
    if (s->status >= 200) {
        s->complete = true;
    }
    return 0;
}

void dkv_ctl_records_init(dkv_ctl_records_t *s, size_t max_record_bytes, dkv_ctl_record_cb cb,
                          void *arg)
{
    memset(s, 0, sizeof(*s));
    llhttp_settings_init(&s->settings);
    s->settings.on_message_begin = on_message_begin;
    s->settings.on_headers_complete = on_headers_complete;
    s->settings.on_chunk_header = on_chunk_header;
    s->settings.on_body = on_body;
    s->settings.on_chunk_complete = on_chunk_complete;
    s->settings.on_message_complete = on_message_complete;
    llhttp_init(&s->parser, HTTP_RESPONSE, &s->settings);
    s->parser.data = s;
    s->max_record_bytes = max_record_bytes;
    dkv_buf_init(&s->record);
    dkv_buf_init(&s->error_body);
    s->cb = cb;
    s->arg = arg;
}

void dkv_ctl_records_cleanup(dkv_ctl_records_t *s)
{
    dkv_buf_cleanup(&s->record);
    dkv_buf_cleanup(&s->error_body);
}

int dkv_ctl_records_feed(dkv_ctl_records_t *s, dkv_slice_t in)
{
    if (s->error != 0 || in.len == 0) {
        return s->error;
    }
    llhttp_errno_t e = llhttp_execute(&s->parser, (const char *)in.ptr, in.len);
    if (e != HPE_OK && s->error == 0) {
        s->error = DKV_EPROTO; /* llhttp's own error, or bytes after a closing response */
    }
    return s->error;
}

int dkv_ctl_records_finish(dkv_ctl_records_t *s)
{
    if (s->error != 0) {
        return s->error;
    }
    /* A body delimited by the connection's end (no length, not chunked) ends here. */
    if (!s->complete && llhttp_finish(&s->parser) != HPE_OK && s->error == 0) {
        s->error = DKV_EPROTO;
    }
    if (s->error == 0 && !s->complete) {
        s->error = DKV_EPROTO;
    }
    return s->error;
}

int dkv_ctl_records_status(const dkv_ctl_records_t *s)
{
    return s->status;
}

dkv_slice_t dkv_ctl_records_error_body(const dkv_ctl_records_t *s)
{
    return dkv_buf_slice(&s->error_body);
}

/* ---- /metrics (text exposition format 0.0.4) ---- */

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_name_start(char c, bool colon)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool is_name_char(char c, bool colon)
{
    return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

static char *skip_blanks(char *p, const char *eol)
{
    while (p < eol && is_blank(*p)) {
        p++;
    }
    return p;
}

/* A name token at p; returns its end (== p when there is none). */
static char *name_end(char *p, const char *eol, bool colon)
{
    if (p >= eol || !is_name_start(*p, colon)) {
        return p;
    }
    while (p < eol && is_name_char(*p, colon)) {
        p++;
    }
    return p;
}

/* "# TYPE name type": keeps `name` (NUL-terminated in place). Other comments are ignored. */
static int comment_line(dkv_ctl_metrics_t *m, char *p, char *eol)
{
    p = skip_blanks(p + 1, eol);
    if (eol - p < 5 || memcmp(p, "TYPE", 4) != 0 || !is_blank(p[4])) {
        return 0;
    }
    char *name = skip_blanks(p + 5, eol);
    char *end = name_end(name, eol, true);
    if (end == name || (end < eol && !is_blank(*end))) {
        return DKV_EPROTO;
    }
    *end = '\0';
    m->families[m->n_families++] = name;
    return 0;
}

/*
 * A label value from the opening quote at *pp: unescapes it in place (the result is never
 * longer), NUL-terminates it, and leaves *pp after the closing quote.
 */
static int label_value(char **pp, const char *eol, char **value)
{
    char *r = *pp + 1;
    char *w = r;
    *value = r;
    for (;;) {
        if (r >= eol) {
            return DKV_EPROTO; /* no closing quote */
        }
        char c = *r++;
        if (c == '"') {
            break;
        }
        if (c == '\\') {
            if (r >= eol) {
                return DKV_EPROTO;
            }
            char e = *r++;
            if (e == 'n') {
                c = '\n';
            } else if (e == '\\' || e == '"') {
                c = e;
            } else {
                return DKV_EPROTO; /* the format has no other escape */
            }
        }
        *w++ = c;
    }
    *w = '\0';
    *pp = r;
    return 0;
}

static int sample_line(dkv_ctl_metrics_t *m, char *p, char *eol, size_t *labels_used)
{
    dkv_ctl_sample_t *s = &m->samples[m->n_samples];
    s->name = p;
    p = name_end(p, eol, true);
    if (p == s->name) {
        return DKV_EPROTO;
    }
    char *name_stop = p;
    p = skip_blanks(p, eol);
    s->labels = &m->label_mem[*labels_used];
    s->n_labels = 0;
    if (p < eol && *p == '{') {
        p++;
        for (;;) {
            p = skip_blanks(p, eol);
            if (p < eol && *p == '}') {
                p++;
                break;
            }
            if (s->n_labels == DKV_CTL_MAX_LABELS) {
                return DKV_EPROTO;
            }
            dkv_ctl_label_t *l = &m->label_mem[*labels_used + s->n_labels];
            char *lname = p;
            p = name_end(p, eol, false);
            if (p == lname) {
                return DKV_EPROTO;
            }
            char *lname_stop = p;
            p = skip_blanks(p, eol);
            if (p >= eol || *p != '=') {
                return DKV_EPROTO;
            }
            p = skip_blanks(p + 1, eol);
            if (p >= eol || *p != '"') {
                return DKV_EPROTO;
            }
            char *value = NULL;
            int rc = label_value(&p, eol, &value);
            if (rc != 0) {
                return rc;
            }
            *lname_stop = '\0'; /* a blank or the '=', both already read */
            l->name = lname;
            l->value = value;
            s->n_labels++;
            p = skip_blanks(p, eol);
            if (p < eol && *p == ',') {
                p++;
            } else if (p >= eol || *p != '}') {
                return DKV_EPROTO;
            }
        }
        p = skip_blanks(p, eol);
    }
    *name_stop = '\0'; /* a blank or the '{', both already read */
    char *value = p;
    while (p < eol && !is_blank(*p)) {
        p++;
    }
    if (p == value) {
        return DKV_EPROTO;
    }
    char *value_stop = p;
    p = skip_blanks(p, eol);
    if (p < eol) { /* a timestamp: an integer (milliseconds), read and dropped */
        if (*p == '-') {
            p++;
        }
        char *digits = p;
        while (p < eol && *p >= '0' && *p <= '9') {
            p++;
        }
        if (p == digits || skip_blanks(p, eol) != eol) {
            return DKV_EPROTO;
        }
    }
    *value_stop = '\0';
    char *end = NULL;
    s->value = strtod(value, &end);
    if (end != value_stop) {
        return DKV_EPROTO;
    }
    *labels_used += s->n_labels;
    m->n_samples++;
    return 0;
}

void dkv_ctl_metrics_cleanup(dkv_ctl_metrics_t *m)
{
    free(m->samples);
    free(m->families);
    free(m->text);
    free(m->label_mem);
    memset(m, 0, sizeof(*m));
}

int dkv_ctl_metrics_parse(dkv_slice_t text, dkv_ctl_metrics_t *out, size_t *bad_line)
{
    if (text.len > DKV_CTL_MAX_METRICS_BYTES) {
        return DKV_ETOOBIG;
    }
    /* Upper bounds: a sample or TYPE line per line, a label per '='. */
    size_t lines = 1;
    size_t equals = 0;
    for (size_t i = 0; i < text.len; i++) {
        lines += text.ptr[i] == '\n';
        equals += text.ptr[i] == '=';
    }
    dkv_ctl_metrics_t m = {0};
    m.text = dkv_xmalloc(text.len + 1);
    if (text.len > 0) {
        memcpy(m.text, text.ptr, text.len);
    }
    m.text[text.len] = '\0';
    m.samples = dkv_xcalloc(lines, sizeof(*m.samples));
    m.families = dkv_xcalloc(lines, sizeof(*m.families));
    m.label_mem = dkv_xcalloc(equals > 0 ? equals : 1, sizeof(*m.label_mem));
    size_t labels_used = 0;
    size_t line_no = 0;
    int rc = 0;
    char *p = m.text;
    char *const end = m.text + text.len;
    while (p < end) {
        line_no++;
        char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL) {
            eol = end;
        }
        char *first = skip_blanks(p, eol);
        if (first < eol) {
            rc = *first == '#' ? comment_line(&m, first, eol)
                               : sample_line(&m, first, eol, &labels_used);
            if (rc != 0) {
                break;
            }
        }
        p = eol + 1;
    }
    if (rc != 0) {
        if (bad_line != NULL) {
            *bad_line = line_no;
        }
        dkv_ctl_metrics_cleanup(&m);
        return rc;
    }
    *out = m;
    return 0;
}

const char *dkv_ctl_sample_label(const dkv_ctl_sample_t *s, const char *name)
{
    for (size_t i = 0; i < s->n_labels; i++) {
        if (strcmp(s->labels[i].name, name) == 0) {
            return s->labels[i].value;
        }
    }
    return NULL;
}

const dkv_ctl_sample_t *dkv_ctl_metrics_find(const dkv_ctl_metrics_t *m, const char *name,
                                             const char *label, const char *value)
{
    for (size_t i = 0; i < m->n_samples; i++) {
        const dkv_ctl_sample_t *s = &m->samples[i];
        if (strcmp(s->name, name) != 0) {
            continue;
        }
        if (label == NULL) {
            return s;
        }
        const char *v = dkv_ctl_sample_label(s, label);
        if (v != NULL && strcmp(v, value) == 0) {
            return s;
        }
    }
    return NULL;
}

size_t dkv_ctl_metrics_sum(const dkv_ctl_metrics_t *m, const char *name, double *sum)
{
    size_t n = 0;
    *sum = 0;
    for (size_t i = 0; i < m->n_samples; i++) {
        if (strcmp(m->samples[i].name, name) == 0) {
            *sum += m->samples[i].value;
            n++;
        }
    }
    return n;
}

bool dkv_ctl_metrics_has_family(const dkv_ctl_metrics_t *m, const char *name)
{
    for (size_t i = 0; i < m->n_families; i++) {
        if (strcmp(m->families[i], name) == 0) {
            return true;
        }
    }
    return false;
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
