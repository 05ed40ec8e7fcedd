/* Owned buffers and their single-thread reference-counted sharing; see owned.h. */
#include "common/owned.h"

#include "common/slice.h"

#include <stdlib.h>

typedef struct shared {
    unsigned refs;
    uint8_t *ptr;
    void (*free_fn)(uint8_t *ptr);
} shared_t;

void dkv_owned_release(dkv_owned_t *o)
{
    if (o->ptr != NULL && o->free_fn != NULL) {
        o->free_fn(o->ptr);
    }
    o->ptr = NULL;
    o->len = 0;
    o->free_fn = NULL;
}

static void shared_release(uint8_t *p)
{
    shared_t *s = (shared_t *)(void *)p;
    if (--s->refs > 0) {
        return;
    }
    if (s->ptr != NULL && s->free_fn != NULL) {
        s->free_fn(s->ptr);
    }
    free(s);
}

void dkv_owned_share(dkv_owned_t *o, dkv_owned_t *second)
{
    if (o->free_fn != shared_release) {
        shared_t *s = dkv_xmalloc(sizeof(*s));
        s->refs = 1;
        s->ptr = o->ptr;
        s->free_fn = o->free_fn;
        o->ptr = (uint8_t *)(void *)s;
        o->free_fn = shared_release;
    }
    ((shared_t *)(void *)o->ptr)->refs++;
    *second = *o;
}
