/*
 * libFuzzer target for dkvctl's reader of a /metrics page (ctl/ctl.h, the Prometheus text
 * format 0.0.4). Arbitrary bytes must parse or be refused with DKV_EPROTO (with a line number
 * inside the page); a parsed page's samples must have valid names, at most DKV_CTL_MAX_LABELS
 * labels each, and be found again by the lookup functions.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ctl/ctl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    dkv_ctl_metrics_t m;
    size_t bad_line = 0;
    int rc = dkv_ctl_metrics_parse(dkv_slice(data, size), &m, &bad_line);
    if (rc != 0) {
        size_t lines = 1;
        for (size_t i = 0; i < size; i++) {
            lines += data[i] == '\n';
        }
        CHECK(rc == DKV_EPROTO && bad_line >= 1 && bad_line <= lines);
        return 0;
    }
    for (size_t i = 0; i < m.n_samples; i++) {
        const dkv_ctl_sample_t *s = &m.samples[i];
        CHECK(s->name[0] != '\0' && s->n_labels <= DKV_CTL_MAX_LABELS);
        CHECK(strchr(s->name, ' ') == NULL && strchr(s->name, '{') == NULL);
        for (size_t l = 0; l < s->n_labels; l++) {
            CHECK(s->labels[l].name[0] != '\0');
            /* The first label of that name is found, and a sample with it. */
            const char *v = dkv_ctl_sample_label(s, s->labels[l].name);
            CHECK(v != NULL);
            CHECK(dkv_ctl_metrics_find(&m, s->name, s->labels[l].name, v) != NULL);
        }
        CHECK(dkv_ctl_metrics_find(&m, s->name, NULL, NULL) != NULL);
        double sum = 0;
        CHECK(dkv_ctl_metrics_sum(&m, s->name, &sum) >= 1);
    }
    for (size_t i = 0; i < m.n_families; i++) {
        CHECK(dkv_ctl_metrics_has_family(&m, m.families[i]));
    }
    dkv_ctl_metrics_cleanup(&m);
    return 0;
}
