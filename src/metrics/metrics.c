/*
 * Per-loop counters and the Prometheus text writer (format 0.0.4:
 * https://prometheus.io/docs/instrumenting/exposition_formats/).
 */
#include "metrics/metrics.h"

#include "common/slice.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const uint64_t dkv_metrics_bucket_ns[DKV_METRICS_BUCKETS] = {
    100000ull,     250000ull,     500000ull,     1000000ull,    2500000ull,   5000000ull,
    10000000ull,   25000000ull,   50000000ull,   100000000ull,  250000000ull, 500000000ull,
    1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull};

/* The same bounds as `le` label values: exact decimal strings, not printf's rounding. */
static const char *const bucket_le[DKV_METRICS_BUCKETS] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5",   "5",    "10"};

#define CACHE_LINE 64u

struct dkv_metrics {
    unsigned n_loops;
    dkv_metrics_loop_t *loops[];
};

dkv_metrics_t *dkv_metrics_new(unsigned n_loops)
{
    dkv_metrics_t *m = dkv_xcalloc(1, sizeof(*m) + n_loops * sizeof(m->loops[0]));
    m->n_loops = n_loops;
    size_t bytes = (sizeof(dkv_metrics_loop_t) + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
    for (unsigned i = 0; i < n_loops; i++) {
        /* Own cache lines per loop: no false sharing between loops that count. */
        m->loops[i] = aligned_alloc(CACHE_LINE, bytes);
        if (m->loops[i] == NULL) {
            fprintf(stderr, "dkv: out of memory (%zu bytes) at %s:%d\n", bytes, __FILE__,
                    __LINE__);
            abort();
        }
        memset(m->loops[i], 0, bytes);
    }
    return m;
}

void dkv_metrics_free(dkv_metrics_t *m)
{
    if (m == NULL) {
        return;
    }
    for (unsigned i = 0; i < m->n_loops; i++) {
        free(m->loops[i]);
    }
    free(m);
}

unsigned dkv_metrics_loops(const dkv_metrics_t *m)
{
    return m->n_loops;
}

dkv_metrics_loop_t *dkv_metrics_loop(dkv_metrics_t *m, unsigned idx)
{
    return idx < m->n_loops ? m->loops[idx] : NULL;
}

unsigned dkv_metrics_status_index(int status)
{
    unsigned i = 0;
#define X(code)                                                                                    \
    if (status == (code)) {                                                                        \
        return i;                                                                                  \
    }                                                                                              \
    i++;
    DKV_METRICS_STATUSES(X)
#undef X
    return i; /* other */
}

const char *dkv_metrics_status_name(unsigned idx)
{
    static const char *const names[] = {
#define X(code) #code,
        DKV_METRICS_STATUSES(X)
#undef X
            "other"};
    _Static_assert(sizeof(names) / sizeof(names[0]) == DKV_METRICS_N_STATUSES,
                   "DKV_METRICS_N_STATUSES must count the statuses and other");
    return idx < DKV_METRICS_N_STATUSES ? names[idx] : "other";
}

const char *dkv_metrics_method_name(unsigned method)
{
    static const char *const names[DKV_METRICS_N_METHODS] = {"GET",    "HEAD", "PUT",
                                                             "DELETE", "POST", "other"};
    return method < DKV_METRICS_N_METHODS ? names[method] : "other";
}

void dkv_metrics_hist_accumulate(dkv_metrics_hist_sum_t *acc, const dkv_metrics_hist_t *h)
{
    for (unsigned i = 0; i <= DKV_METRICS_BUCKETS; i++) {
        acc->buckets[i] += dkv_metrics_read(&h->buckets[i]);
    }
    acc->sum_ns += dkv_metrics_read(&h->sum_ns);
}

/* ---- text format ---- */

void dkv_prom_escape_label(dkv_buf_t *out, const char *value)
{
    for (const char *p = value; *p != '\0'; p++) {
        if (*p == '\\') {
            dkv_buf_append(out, "\\\\", 2);
        } else if (*p == '"') {
            dkv_buf_append(out, "\\\"", 2);
        } else if (*p == '\n') {
            dkv_buf_append(out, "\\n", 2);
        } else {
            dkv_buf_append(out, p, 1);
        }
    }
}

void dkv_prom_family(dkv_buf_t *out, const char *name, const char *type, const char *help)
{
    dkv_buf_append_str(out, "# HELP ");
    dkv_buf_append_str(out, name);
    dkv_buf_append(out, " ", 1);
    for (const char *p = help; *p != '\0'; p++) {
        if (*p == '\\') {
            dkv_buf_append(out, "\\\\", 2);
        } else if (*p == '\n') {
            dkv_buf_append(out, "\\n", 2);
        } else {
            dkv_buf_append(out, p, 1);
        }
    }
    dkv_buf_append_str(out, "\n# TYPE ");
    dkv_buf_append_str(out, name);
    dkv_buf_append(out, " ", 1);
    dkv_buf_append_str(out, type);
    dkv_buf_append(out, "\n", 1);
}

/* `name{a="x",b="y"}` or `name` (with `suffix` after the name), then a space. */
static void sample_head(dkv_buf_t *out, const char *name, const char *suffix,
                        const dkv_prom_label_t *labels, size_t n_labels)
{
    dkv_buf_append_str(out, name);
    dkv_buf_append_str(out, suffix);
    if (n_labels > 0) {
        dkv_buf_append(out, "{", 1);
        for (size_t i = 0; i < n_labels; i++) {
            if (i > 0) {
                dkv_buf_append(out, ",", 1);
            }
            dkv_buf_append_str(out, labels[i].name);
            dkv_buf_append(out, "=\"", 2);
            dkv_prom_escape_label(out, labels[i].value);
            dkv_buf_append(out, "\"", 1);
        }
        dkv_buf_append(out, "}", 1);
    }
    dkv_buf_append(out, " ", 1);
}

void dkv_prom_sample(dkv_buf_t *out, const char *name, const dkv_prom_label_t *labels,
                     size_t n_labels, uint64_t value)
{
    sample_head(out, name, "", labels, n_labels);
    dkv_buf_printf(out, "%" PRIu64 "\n", value);
}

static void append_double(dkv_buf_t *out, double v)
{
    char tmp[32];
    /* %.17g round-trips every double; try shorter forms first so 0.5 prints as 0.5. */
    for (int prec = 6; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
        if (strtod(tmp, NULL) == v) {
            break;
        }
    }
    dkv_buf_append_str(out, tmp);
}

void dkv_prom_sample_double(dkv_buf_t *out, const char *name, const dkv_prom_label_t *labels,
                            size_t n_labels, double value)
{
    sample_head(out, name, "", labels, n_labels);
    append_double(out, value);
    dkv_buf_append(out, "\n", 1);
}

void dkv_prom_histogram(dkv_buf_t *out, const char *name, const dkv_prom_label_t *labels,
                        size_t n_labels, const dkv_metrics_hist_sum_t *h)
{
    dkv_prom_label_t with_le[8];
    if (n_labels > 7) {
        n_labels = 7;
    }
    if (n_labels > 0) {
        memcpy(with_le, labels, n_labels * sizeof(*labels));
    }
    with_le[n_labels].name = "le";
    uint64_t cum = 0;
    for (unsigned i = 0; i <= DKV_METRICS_BUCKETS; i++) {
        cum += h->buckets[i];
        with_le[n_labels].value = i < DKV_METRICS_BUCKETS ? bucket_le[i] : "+Inf";
        sample_head(out, name, "_bucket", with_le, n_labels + 1);
        dkv_buf_printf(out, "%" PRIu64 "\n", cum);
    }
    sample_head(out, name, "_sum", labels, n_labels);
    append_double(out, (double)h->sum_ns / 1e9);
    dkv_buf_append(out, "\n", 1);
    sample_head(out, name, "_count", labels, n_labels);
    dkv_buf_printf(out, "%" PRIu64 "\n", cum);
}
