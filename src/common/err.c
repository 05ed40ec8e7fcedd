/* dkv_strerror(): messages from the one error table in err.h. */
#include "common/err.h"

#include <string.h>

const char *dkv_strerror(int err)
{
    switch (err) {
    case 0:
        return "ok";
#define DKV_ERR_CASE(name, value, msg)                                                             \
    case name:                                                                                     \
        return msg;
        DKV_ERR_MAP(DKV_ERR_CASE)
#undef DKV_ERR_CASE
    default:
        break;
    }
    if (err < 0 && err > -4096) {
        return strerror(-err);
    }
    return "unknown error";
}
