/*
 * Byte slices and checked allocation: the two things every module passes around. A slice never
 * owns its bytes and is never assumed NUL-terminated.
 */
#ifndef DKV_COMMON_SLICE_H
#define DKV_COMMON_SLICE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct dkv_slice {
    const uint8_t *ptr;
    size_t len;
} dkv_slice_t;

static inline dkv_slice_t dkv_slice(const void *ptr, size_t len)
{
    dkv_slice_t s = {(const uint8_t *)ptr, len};
    return s;
}

static inline dkv_slice_t dkv_slice_str(const char *s)
{
    return dkv_slice(s, strlen(s));
}

/**
 * Compares two slices as unsigned bytes, lexicographically; a proper prefix sorts first.
 * @return <0, 0 or >0 like memcmp. Thread: any.
 */
static inline int dkv_slice_cmp(dkv_slice_t a, dkv_slice_t b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c != 0) {
        return c;
    }
    return (a.len > b.len) - (a.len < b.len);
}

static inline int dkv_slice_eq_str(dkv_slice_t a, const char *s)
{
    size_t n = strlen(s);
    return a.len == n && (n == 0 || memcmp(a.ptr, s, n) == 0);
}

/* Checked allocation: on failure these abort with file:line (a dead node is a failed replica). */
void *dkv_xmalloc_at(size_t n, const char *file, int line);
void *dkv_xcalloc_at(size_t count, size_t n, const char *file, int line);
void *dkv_xrealloc_at(void *p, size_t n, const char *file, int line);
#define dkv_xmalloc(n) dkv_xmalloc_at((n), __FILE__, __LINE__)
#define dkv_xcalloc(c, n) dkv_xcalloc_at((c), (n), __FILE__, __LINE__)
#define dkv_xrealloc(p, n) dkv_xrealloc_at((p), (n), __FILE__, __LINE__)

#endif
