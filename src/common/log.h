/*
 * Logging to stderr: one line per event, "LEVEL time message". Safe from any thread (each line is
 * written with a single write(2)).
 */
#ifndef DKV_COMMON_LOG_H
#define DKV_COMMON_LOG_H

enum dkv_log_level { DKV_LOG_DEBUG = 0, DKV_LOG_INFO = 1, DKV_LOG_WARN = 2, DKV_LOG_ERROR = 3 };

/** Sets the lowest level that is printed (default INFO). Call before starting threads. */
void dkv_log_set_level(enum dkv_log_level level);

/** Parses "debug", "info", "warn" or "error". @return 0, or DKV_EINVAL. */
int dkv_log_parse_level(const char *name, enum dkv_log_level *out);

/** Prints one line "LEVEL 2026-01-02T03:04:05.678Z message" to stderr. Thread: any. */
void dkv_log(enum dkv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define DKV_LOG_DEBUG(...) dkv_log(DKV_LOG_DEBUG, __VA_ARGS__)
#define DKV_LOG_INFO(...) dkv_log(DKV_LOG_INFO, __VA_ARGS__)
#define DKV_LOG_WARN(...) dkv_log(DKV_LOG_WARN, __VA_ARGS__)
#define DKV_LOG_ERROR(...) dkv_log(DKV_LOG_ERROR, __VA_ARGS__)

#endif
