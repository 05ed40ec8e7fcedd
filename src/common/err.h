/*
 * dkv error codes: one X-macro table gives the enum, dkv_strerror() and (in router/) the HTTP
 * status map. Fallible functions return 0 or a negative code; system errors travel as -errno.
 */
#ifndef DKV_COMMON_ERR_H
#define DKV_COMMON_ERR_H

/* X(name, value, message). Values are negative and far below -errno's range (errno < 4096). */
#define DKV_ERR_MAP(X)                                                                             \
    X(DKV_EINVAL, -10001, "invalid argument")                                                      \
    X(DKV_ENOTFOUND, -10002, "not found")                                                          \
    X(DKV_EPROTO, -10003, "malformed data")                                                        \
    X(DKV_ETOOBIG, -10004, "size limit exceeded")                                                  \
    X(DKV_EIO, -10005, "storage error")                                                            \
    X(DKV_EQUORUM, -10006, "not enough replicas")                                                  \
    X(DKV_ETIMEDOUT, -10007, "timed out")                                                          \
    X(DKV_ECANCELED, -10008, "canceled")                                                           \
    X(DKV_EOVERLOAD, -10009, "overloaded")                                                         \
    X(DKV_EUNAVAIL, -10010, "peer unavailable")                                                    \
    X(DKV_ECLUSTER, -10011, "cluster mismatch")                                                    \
    X(DKV_ENOTREADY, -10012, "replica not ready (its data is being rebuilt)")                      \
    X(DKV_ECLOCK, -10013, "timestamp too far ahead of this node's clock")                          \
    X(DKV_ENOSPACE, -10014, "no space left in the data directory (writes refused until there is)") \
    X(DKV_EHLCBOUND, -10015, "cannot persist the clock's upper bound (DATA/hlc)")

enum dkv_err {
#define DKV_ERR_ENUM(name, value, msg) name = (value),
    DKV_ERR_MAP(DKV_ERR_ENUM)
#undef DKV_ERR_ENUM
};

/**
 * Describes an error code.
 *
 * @param err  0, a DKV_E* code, or -errno.
 * @return A static NUL-terminated string; never NULL.
 * Thread: any.
 */
const char *dkv_strerror(int err);

#endif
