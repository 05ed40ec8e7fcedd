/*
 * Node configuration: every command-line flag, its default, its limits, and the parser that
 * turns argv (and the config file that --config names) into a dkv_conf_t with a clear message
 * for anything wrong.
 */
#ifndef DKV_COMMON_CONF_H
#define DKV_COMMON_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/log.h"

#define DKV_VERSION "0.4.2"
#define DKV_MAX_KEY_BYTES 1024u
#define DKV_MAX_CLUSTER_NODES 64u
/* The largest --max-body-bytes, hence the largest value: the RPC frame ceiling follows it. */
#define DKV_MAX_VALUE_BYTES (64u << 20)
/* --read-fanout's default: speculative (docs/architecture.md "Speculative reads" has the
 * measurement behind it). */
#define DKV_CONF_DEFAULT_READ_SPECULATIVE false

typedef struct dkv_conf {
    char listen_host[256];
    uint16_t listen_port;
    char self[512];            /* own URL, one of `cluster` */
    char **cluster;            /* owned: node URLs as given (the ring canonicalises them) */
    size_t cluster_n;
    char data_dir[1024];
    char cluster_secret_file[1024]; /* empty: RPC handshakes are not authenticated */
    char backup_dir[1024];     /* where checkpoints go; empty: POST /v0/admin/checkpoint is off */
    unsigned replication_factor; /* default `from` of a request: 1..cluster_n (default N) */
    unsigned io_threads;       /* >= 1 */
    size_t max_body_bytes;     /* request body cap: 413 past it */
    size_t max_header_bytes;   /* request line + headers cap: 431 past it */
    uint64_t idle_timeout_ms;  /* keep-alive connection with no request in progress */
    uint64_t first_byte_timeout_ms; /* a new connection that has sent nothing */
    uint64_t request_timeout_ms; /* a started request must be fully received within this */
    uint64_t replica_timeout_ms; /* per replica request */
    uint64_t shutdown_timeout_ms; /* graceful drain budget on SIGTERM */
    unsigned max_connections;  /* per node; past it new connections are closed at once */
    unsigned max_peer_connections; /* inter-node RPC connections we serve, per node; counted
                                      apart from max_connections; past it closed at once */
    uint64_t peer_idle_timeout_ms; /* an RPC connection we serve with no traffic is closed */
    unsigned max_inflight;     /* requests being served per I/O thread; 503 past it */
    unsigned vnodes;           /* virtual nodes per node on the ring */
    unsigned breaker_failures; /* consecutive failures that open a peer's circuit breaker */
    uint64_t breaker_cooldown_ms;
    uint64_t max_clock_offset_ms; /* replicas refuse records stamped further ahead */
    size_t block_cache_bytes;
    size_t row_cache_bytes;
    bool hinted_handoff;              /* durable hints for failed replica writes */
    uint64_t hint_window_ms;          /* no new hints for a peer whose oldest hint is older */
    uint64_t max_hints_bytes;         /* no new hints past this total */
    uint64_t hint_replay_bytes_per_s; /* replay throttle */
    bool read_repair;                 /* repair stale replicas after a GET */
    bool read_speculative;            /* --read-fanout speculative (else all) */
    uint64_t speculative_retry_ms;    /* 0 = each peer's observed p99 */
    uint64_t ae_max_bytes_per_s;      /* rebuild streaming and exchange throttle, each */
    uint64_t ae_interval_ms;          /* between anti-entropy rounds; 0 = on demand only */
    uint64_t tombstone_grace_ms;      /* tombstone GC waits this long past a complete repair */
    bool auto_rebuild;                /* a node whose data was lost streams it back by itself */
    bool background_low_priority;     /* background threads at nice 19 (common/thread.h) */
    bool fsync;
    enum dkv_log_level log_level;
} dkv_conf_t;

/**
 * Parses argv into `conf` (defaults for everything not given). `--config FILE` is read first,
 * wherever it appears, so every flag on the command line overrides the file: one `name = value`
 * per line (a flag's name without its leading "--"; `fsync = on|off`), `#` comment lines, blank
 * lines; each name once. A value is checked by the same code as the flag's. Prints --help /
 * --version text to stdout itself.
 *
 * @param conf    Caller's storage; on return 0 it owns heap memory: release with dkv_conf_cleanup().
 *                conf->replication_factor is resolved (N when not given).
 * @param err     Receives a one-line message when DKV_EINVAL is returned; for a bad config file
 *                line it starts with "FILE:LINE: ".
 * @return 0 (run the node); 1 (help or version was printed: exit 0); DKV_EINVAL (bad flags or
 *         config file: print `err`, exit 2).
 * Thread: main, before anything else runs.
 */
int dkv_conf_parse(int argc, char **argv, dkv_conf_t *conf, char *err, size_t err_len);

/** Frees what dkv_conf_parse() allocated. Safe on a zeroed or partly parsed conf. */
void dkv_conf_cleanup(dkv_conf_t *conf);

/**
 * Splits a node URL "http://host:port" (scheme optional, no path) into host and port.
 * @return 0; DKV_EINVAL. `host` is written only on success (NUL-terminated, truncation is an error).
 * Thread: any.
 */
int dkv_conf_parse_url(const char *url, char *host, size_t host_len, uint16_t *port);

#endif
