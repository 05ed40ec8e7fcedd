/* Command-line and config-file parsing for the node: flags, defaults, limits and --help. */
#include "common/conf.h"

#include "cluster/ring.h"
#include "common/err.h"
#include "common/slice.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "Usage: dkv [options]\n"
    "\n"
    "dkv is a Dynamo-style replicated key-value store. This runs one node; see README.md.\n"
    "\n"
    "Cluster:\n"
    "  --listen HOST:PORT          address for clients and peers (default 127.0.0.1:8080)\n"
    "  --self URL                  this node's URL, one of --cluster (default http://LISTEN)\n"
    "  --cluster URL[,URL...]      every node's URL, self included, same set on every node\n"
    "                              (default: just --self)\n"
    "  --data DIR                  data directory, created if missing (default ./data)\n"
    "  --vnodes N                  virtual nodes per node on the ring (default %u)\n"
    "  --replica-timeout-ms MS     give up on a replica request after MS (default 1000)\n"
    "  --breaker-failures N        consecutive failures that open a peer's breaker (default 5)\n"
    "  --breaker-cooldown-ms MS    how long an open breaker fails fast (default 2000)\n"
    "  --max-clock-offset-ms MS    a replica refuses a record stamped more than MS ahead of\n"
    "                              its own clock (default 500)\n"
    "  --cluster-secret-file FILE  shared secret that peers prove in the RPC handshake\n"
    "                              (HMAC-SHA256 challenge-response; docs/security.md);\n"
    "                              required unless --listen is a loopback address\n"
    "\n"
    "Server:\n"
    "  --io-threads N              I/O threads, one event loop each (default: CPU cores)\n"
    "  --max-body-bytes N          largest request body, 413 past it (default 1048576)\n"
    "  --max-header-bytes N        largest request line + headers, 431 past it (default 16384)\n"
    "  --idle-timeout-ms MS        close keep-alive connections idle this long (default 60000)\n"
    "  --first-byte-timeout-ms MS  close new connections that send nothing this long, and\n"
    "                              RPC connections that have not completed their handshake\n"
    "                              (default 10000)\n"
    "  --request-timeout-ms MS     a started request must arrive within MS (default 10000)\n"
    "  --shutdown-timeout-ms MS    drain budget on SIGTERM/SIGINT (default 5000)\n"
    "  --max-connections N         open client connections per node (default 10000)\n"
    "  --max-peer-connections N    inter-node RPC connections served per node, counted apart\n"
    "                              from --max-connections (default 1024)\n"
    "  --peer-idle-timeout-ms MS   close a served RPC connection idle this long; peers close\n"
    "                              their unused ones after half of it (default 600000)\n"
    "  --max-inflight N            requests in progress per I/O thread, 503 past it (default 4096)\n"
    "\n";

/* Split: one string literal may not pass 4095 bytes (ISO C). */
static const char usage_convergence[] =
    "Convergence:\n"
    "  --hinted-handoff on|off     keep a durable hint for a replica write that failed and\n"
    "                              replay it when the replica answers again (default on)\n"
    "  --hint-window-ms MS         no new hints for a peer whose oldest hint is older\n"
    "                              (default 10800000 = 3 h)\n"
    "  --max-hints-bytes N         no new hints once all hints take N bytes (default 1 GiB)\n"
    "  --hint-replay-bytes-per-s N hint replay throttle, all peers together (default 8 MiB)\n"
    "  --read-repair on|off        after a GET, write the newest version to replicas that\n"
    "                              answered an older one or none (default on)\n"
    "  --auto-rebuild on|off       a node whose data was lost streams it back from its peers\n"
    "                              and becomes ready by itself (default on); off: it stays\n"
    "                              rebuilding until POST /v0/admin/rebuild-done\n"
    "  --anti-entropy-interval-ms MS\n"
    "                              compare hash trees with every peer and repair the\n"
    "                              differences this often (default 600000 = 10 min;\n"
    "                              0 = only on POST /v0/admin/repair)\n"
    "  --anti-entropy-max-bytes-per-s N\n"
    "                              throttle of anti-entropy exchanges, and separately of a\n"
    "                              lost node's rebuild from its peers (default 32 MiB)\n"
    "  --tombstone-grace-ms MS     a tombstone is purged only this long after a repair with\n"
    "                              every peer covered it (default 3600000 = 1 h); hints for\n"
    "                              records older than this are dropped, not replayed\n"
    "  --background-low-priority on|off\n"
    "                              run rebuild streaming, anti-entropy, hint replay, bulk\n"
    "                              reads served to peers (SCAN, TREE SEGMENT) and RocksDB's\n"
    "                              flushes and compactions at nice 19, so client requests\n"
    "                              get the CPU first (default on)\n"
    "\n";

/* Split: one string literal may not pass 4095 bytes (ISO C). */
static const char usage_more[] =
    "Replication:\n"
    "  --replication-factor RF     copies of a key when a request gives no `from`: `from`\n"
    "                              defaults to RF and `ack` to RF/2+1; 1..N (default N, the\n"
    "                              cluster size); a request may still ask for up to N\n"
    "  --read-fanout all|speculative\n"
    "                              GET asks all `from` replicas at once (all), or `ack` of\n"
    "                              them, one for the data and the rest for a digest, and the\n"
    "                              next one only when one is slow or fails (default %s)\n"
    "  --speculative-retry-ms MS   speculative: ask the next replica after MS without an\n"
    "                              answer (default 0: each peer's observed p99 latency)\n"
    "\n"
    "Storage:\n"
    "  --block-cache-bytes N       RocksDB block cache; index and filter blocks count in it\n"
    "                              (default: a quarter of RAM or of the cgroup's memory\n"
    "                              limit, 64 MiB to 16 GiB; docs/deploy.md, Sizing memory)\n"
    "  --row-cache-bytes N         RocksDB row cache: whole records of recently read keys, a\n"
    "                              GET that hits it skips the SST index and block lookups\n"
    "                              (default 134217728; 0 = off)\n"
    "  --fsync                     fsync the write-ahead log on every write (default: write(2)\n"
    "                              only, which survives kill -9 but not power loss)\n"
    "  --backup-dir DIR            POST /v0/admin/checkpoint?dir=NAME writes a RocksDB\n"
    "                              checkpoint to DIR/NAME (default: none, the endpoint is off)\n"
    "\n"
    "Other:\n"
    "  --config FILE               read settings from FILE first: `name = value` lines, the\n"
    "                              names of these flags without the leading --, `on`/`off` for\n"
    "                              --fsync; `#` comment lines; flags given here win\n"
    "  --log-level LEVEL           debug, info, warn or error (default info)\n"
    "  --help                      print this help and exit\n"
    "  --version                   print the version and exit\n";

static int fail(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t err_len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
    return DKV_EINVAL;
}

static int parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (s == NULL || *s == '\0' || *s == '-' || *s == '+') {
        return DKV_EINVAL;
    }
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max) {
        return DKV_EINVAL;
    }
    *out = v;
    return 0;
}

static int copy_str(char *dst, size_t dst_len, const char *src)
{
    size_t n = strlen(src);
    if (n >= dst_len) {
        return DKV_EINVAL;
    }
    memcpy(dst, src, n + 1);
    return 0;
}

int dkv_conf_parse_url(const char *url, char *host, size_t host_len, uint16_t *port)
{
    const char *p = url;
    if (strncmp(p, "http://", 7) == 0) {
        p += 7;
    }
    const char *colon = strrchr(p, ':');
    if (colon == NULL || colon == p) {
        return DKV_EINVAL;
    }
    size_t hlen = (size_t)(colon - p);
    const char *ps = colon + 1;
    size_t plen = strlen(ps);
    if (plen > 0 && ps[plen - 1] == '/') {
        plen--; /* tolerate one trailing slash */
    }
    char portbuf[8];
    if (plen == 0 || plen >= sizeof(portbuf) || hlen >= host_len) {
        return DKV_EINVAL;
    }
    memcpy(portbuf, ps, plen);
    portbuf[plen] = '\0';
    uint64_t v = 0;
    if (parse_u64(portbuf, 1, 65535, &v) != 0) {
        return DKV_EINVAL;
    }
    if (memchr(p, '/', hlen) != NULL) {
        return DKV_EINVAL;
    }
    memcpy(host, p, hlen);
    host[hlen] = '\0';
    *port = (uint16_t)v;
    return 0;
}

void dkv_conf_cleanup(dkv_conf_t *conf)
{
    for (size_t i = 0; i < conf->cluster_n; i++) {
        free(conf->cluster[i]);
    }
    free(conf->cluster);
    conf->cluster = NULL;
    conf->cluster_n = 0;
}

static int parse_cluster(dkv_conf_t *conf, const char *list, char *err, size_t err_len)
{
    dkv_conf_cleanup(conf);
    conf->cluster = dkv_xcalloc(DKV_MAX_CLUSTER_NODES, sizeof(char *));
    const char *p = list;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t n = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if (n == 0) {
            return fail(err, err_len, "--cluster: empty URL in '%s'", list);
        }
        if (conf->cluster_n == DKV_MAX_CLUSTER_NODES) {
            return fail(err, err_len, "--cluster: more than %u nodes", DKV_MAX_CLUSTER_NODES);
        }
        char *url = dkv_xmalloc(n + 1);
        memcpy(url, p, n);
        url[n] = '\0';
        conf->cluster[conf->cluster_n++] = url;
        char host[256];
        uint16_t port = 0;
        if (dkv_conf_parse_url(url, host, sizeof(host), &port) != 0) {
            return fail(err, err_len, "--cluster: '%s' is not a URL like http://HOST:PORT", url);
        }
        for (size_t i = 0; i + 1 < conf->cluster_n; i++) {
            if (strcmp(conf->cluster[i], url) == 0) {
                return fail(err, err_len, "--cluster: '%s' is listed twice", url);
            }
        }
        if (comma == NULL) {
            return 0;
        }
        p = comma + 1;
    }
}

/* Only this host can connect: 127.0.0.0/8, ::1 or localhost. */
static bool is_loopback(const char *host)
{
    return strncmp(host, "127.", 4) == 0 || strcmp(host, "::1") == 0 ||
           strcmp(host, "[::1]") == 0 || strcmp(host, "localhost") == 0;
}

/* Flags that take a value. In a config file a setting's name is the flag without its "--". */
static const char *const valued[] = {
    "--listen", "--self", "--cluster", "--data", "--log-level", "--io-threads",
    "--max-body-bytes", "--max-header-bytes", "--idle-timeout-ms", "--request-timeout-ms",
    "--replica-timeout-ms", "--shutdown-timeout-ms", "--max-connections", "--max-inflight",
    "--vnodes", "--breaker-failures", "--breaker-cooldown-ms", "--block-cache-bytes",
    "--row-cache-bytes",
    "--hinted-handoff", "--hint-window-ms", "--max-hints-bytes",
    "--hint-replay-bytes-per-s", "--read-repair", "--anti-entropy-max-bytes-per-s",
    "--anti-entropy-interval-ms", "--tombstone-grace-ms",
    "--auto-rebuild", "--cluster-secret-file", "--max-clock-offset-ms",
    "--first-byte-timeout-ms", "--max-peer-connections", "--peer-idle-timeout-ms",
    "--replication-factor", "--backup-dir", "--read-fanout", "--speculative-retry-ms",
    "--background-low-priority", "--config"};
/* Flags without a value on the command line; in a config file they take on or off. */
static const char *const switches[] = {"--fsync"};

#define N_VALUED (sizeof(valued) / sizeof(valued[0]))
#define N_SWITCHES (sizeof(switches) / sizeof(switches[0]))
/* The longest line a config file may have, newline excluded. */
#define CONFIG_LINE_MAX 4096u

/* The index of `flag` in valued[] followed by switches[], or -1. */
static int flag_index(const char *flag)
{
    for (size_t k = 0; k < N_VALUED; k++) {
        if (strcmp(flag, valued[k]) == 0) {
            return (int)k;
        }
    }
    for (size_t k = 0; k < N_SWITCHES; k++) {
        if (strcmp(flag, switches[k]) == 0) {
            return (int)(N_VALUED + k);
        }
    }
    return -1;
}

static void set_defaults(dkv_conf_t *conf)
{
    memset(conf, 0, sizeof(*conf));
    strcpy(conf->listen_host, "127.0.0.1");
    conf->listen_port = 8080;
    strcpy(conf->data_dir, "./data");
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    conf->io_threads = cores > 0 ? (unsigned)(cores > 64 ? 64 : cores) : 1;
    conf->max_body_bytes = 1u << 20;
    conf->max_header_bytes = 16u << 10;
    conf->idle_timeout_ms = 60000;
    conf->first_byte_timeout_ms = 10000;
    conf->request_timeout_ms = 10000;
    conf->replica_timeout_ms = 1000;
    conf->shutdown_timeout_ms = 5000;
    conf->max_connections = 10000;
    conf->max_peer_connections = 1024;
    conf->peer_idle_timeout_ms = 600000;
    conf->max_inflight = 4096;
    conf->vnodes = DKV_RING_DEFAULT_VNODES;
    conf->breaker_failures = 5;
    conf->breaker_cooldown_ms = 2000;
    conf->max_clock_offset_ms = 500;
    conf->block_cache_bytes = 0; /* sized from memory by the store (dkv_store_sizing) */
    conf->row_cache_bytes = 128u << 20;
    conf->hinted_handoff = true;
    conf->hint_window_ms = 3u * 3600u * 1000u;
    conf->max_hints_bytes = (uint64_t)1 << 30;
    conf->hint_replay_bytes_per_s = 8u << 20;
    conf->read_repair = true;
    conf->read_speculative = DKV_CONF_DEFAULT_READ_SPECULATIVE;
    conf->ae_max_bytes_per_s = 32u << 20;
    conf->ae_interval_ms = 600000;
    conf->tombstone_grace_ms = 3600000;
    conf->auto_rebuild = true;
    conf->background_low_priority = true;
    conf->log_level = DKV_LOG_INFO;
}

/*
 * Checks and applies one setting: `flag` (with its "--", one of valued[] or switches[]) and its
 * value (a switch's is "on" or "off"). The one place each flag's value is checked, for the
 * command line and the config file alike. --cluster's value is kept in `*cluster_arg` (owned,
 * replacing an earlier one): the list is parsed once --self is known. --config is not a setting.
 * @return 0; DKV_EINVAL with a message naming the flag in `err`.
 */
static int set_flag(dkv_conf_t *conf, const char *flag, const char *val, char **cluster_arg,
                    char *err, size_t err_len)
{
    uint64_t v = 0;
#define NUM(name, lo, hi, field)                                                                   \
    if (strcmp(flag, name) == 0) {                                                                 \
        if (parse_u64(val, (lo), (hi), &v) != 0) {                                                 \
            return fail(err, err_len, "%s: '%s' is not a whole number in %" PRIu64 "..%" PRIu64,  \
                        name, val, (uint64_t)(lo), (uint64_t)(hi));                                \
        }                                                                                          \
        conf->field = v;                                                                           \
        return 0;                                                                                  \
    }
    NUM("--io-threads", 1, 64, io_threads)
    NUM("--max-body-bytes", 1, DKV_MAX_VALUE_BYTES, max_body_bytes)
    NUM("--max-header-bytes", 8u << 10, 1u << 20, max_header_bytes)
    NUM("--idle-timeout-ms", 1, 86400000, idle_timeout_ms)
    NUM("--first-byte-timeout-ms", 1, 86400000, first_byte_timeout_ms)
    NUM("--request-timeout-ms", 1, 3600000, request_timeout_ms)
    NUM("--replica-timeout-ms", 1, 600000, replica_timeout_ms)
    NUM("--shutdown-timeout-ms", 0, 600000, shutdown_timeout_ms)
    NUM("--max-connections", 1, 1000000, max_connections)
    NUM("--max-inflight", 1, 1000000, max_inflight)
    NUM("--max-peer-connections", 1, 1000000, max_peer_connections)
    NUM("--peer-idle-timeout-ms", 1000, 86400000, peer_idle_timeout_ms)
    NUM("--vnodes", 1, 65536, vnodes)
    NUM("--breaker-failures", 1, 1000000, breaker_failures)
    NUM("--breaker-cooldown-ms", 1, 3600000, breaker_cooldown_ms)
    NUM("--max-clock-offset-ms", 1, 3600000, max_clock_offset_ms)
    NUM("--block-cache-bytes", 1u << 20, (uint64_t)1 << 40, block_cache_bytes)
    NUM("--row-cache-bytes", 0, (uint64_t)1 << 40, row_cache_bytes)
    NUM("--hint-window-ms", 1, (uint64_t)30 * 86400000, hint_window_ms)
    NUM("--max-hints-bytes", 1, (uint64_t)1 << 50, max_hints_bytes)
    NUM("--hint-replay-bytes-per-s", 1024, (uint64_t)1 << 40, hint_replay_bytes_per_s)
    NUM("--anti-entropy-max-bytes-per-s", 1024, (uint64_t)1 << 40, ae_max_bytes_per_s)
    NUM("--anti-entropy-interval-ms", 0, (uint64_t)30 * 86400000, ae_interval_ms)
    NUM("--tombstone-grace-ms", 0, (uint64_t)365 * 86400000, tombstone_grace_ms)
    NUM("--replication-factor", 1, DKV_MAX_CLUSTER_NODES, replication_factor)
    NUM("--speculative-retry-ms", 0, 600000, speculative_retry_ms)
#undef NUM
#define ONOFF(name, field)                                                                         \
    if (strcmp(flag, name) == 0) {                                                                 \
        if (strcmp(val, "on") != 0 && strcmp(val, "off") != 0) {                                   \
            return fail(err, err_len, "%s: '%s' is not on or off", name, val);                    \
        }                                                                                          \
        conf->field = strcmp(val, "on") == 0;                                                      \
        return 0;                                                                                  \
    }
    ONOFF("--hinted-handoff", hinted_handoff)
    ONOFF("--read-repair", read_repair)
    ONOFF("--auto-rebuild", auto_rebuild)
    ONOFF("--background-low-priority", background_low_priority)
    ONOFF("--fsync", fsync)
#undef ONOFF
    if (strcmp(flag, "--read-fanout") == 0) {
        if (strcmp(val, "all") != 0 && strcmp(val, "speculative") != 0) {
            return fail(err, err_len, "--read-fanout: '%s' is not all or speculative", val);
        }
        conf->read_speculative = strcmp(val, "speculative") == 0;
    } else if (strcmp(flag, "--listen") == 0) {
        if (dkv_conf_parse_url(val, conf->listen_host, sizeof(conf->listen_host),
                               &conf->listen_port) != 0) {
            return fail(err, err_len, "--listen: '%s' is not HOST:PORT", val);
        }
    } else if (strcmp(flag, "--self") == 0) {
        char host[256];
        uint16_t port = 0;
        if (copy_str(conf->self, sizeof(conf->self), val) != 0 ||
            dkv_conf_parse_url(val, host, sizeof(host), &port) != 0) {
            return fail(err, err_len, "--self: '%s' is not a URL like http://HOST:PORT", val);
        }
    } else if (strcmp(flag, "--cluster") == 0) {
        free(*cluster_arg);
        size_t n = strlen(val);
        *cluster_arg = dkv_xmalloc(n + 1);
        memcpy(*cluster_arg, val, n + 1);
    } else if (strcmp(flag, "--data") == 0) {
        if (val[0] == '\0' || copy_str(conf->data_dir, sizeof(conf->data_dir), val) != 0) {
            return fail(err, err_len, "--data: empty or too long");
        }
    } else if (strcmp(flag, "--backup-dir") == 0) {
        if (val[0] == '\0' || copy_str(conf->backup_dir, sizeof(conf->backup_dir), val) != 0) {
            return fail(err, err_len, "--backup-dir: empty or too long");
        }
    } else if (strcmp(flag, "--cluster-secret-file") == 0) {
        if (val[0] == '\0' ||
            copy_str(conf->cluster_secret_file, sizeof(conf->cluster_secret_file), val) != 0) {
            return fail(err, err_len, "--cluster-secret-file: empty or too long");
        }
    } else if (strcmp(flag, "--log-level") == 0) {
        if (dkv_log_parse_level(val, &conf->log_level) != 0) {
            return fail(err, err_len, "--log-level: '%s' is not debug, info, warn or error", val);
        }
    } else {
        return fail(err, err_len, "unknown flag '%s' (see --help)", flag);
    }
    return 0;
}

/* `s` without leading and trailing blanks (spaces, tabs, CR), in place. */
static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r')) {
        s[--n] = '\0';
    }
    return s;
}

/*
 * Applies the settings of config file `path`: one `name = value` per line (a flag's name without
 * its "--"; a switch takes on or off), `#` comment lines and blank lines. A name may appear once.
 * Everything after the first '=' is the value, blanks around it removed: a '#' there is part of
 * the value (a path may hold one). @return 0; DKV_EINVAL with "path:line: reason" in `err`.
 */
static int load_config(dkv_conf_t *conf, const char *path, char **cluster_arg, char *err,
                       size_t err_len)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        return fail(err, err_len, "--config %s: %s", path, strerror(errno));
    }
    unsigned set_on_line[N_VALUED + N_SWITCHES] = {0};
    char *line = NULL; /* owned, grown by getline() */
    size_t cap = 0;
    char msg[384];
    unsigned lineno = 0;
    int rc = 0;
    while (rc == 0) {
        ssize_t got = getline(&line, &cap, f);
        if (got < 0) {
            break;
        }
        lineno++;
        size_t n = (size_t)got;
        if (n > 0 && line[n - 1] == '\n') {
            line[--n] = '\0';
        }
        if (n > CONFIG_LINE_MAX) {
            rc = fail(err, err_len, "%s:%u: line longer than %u bytes", path, lineno,
                      CONFIG_LINE_MAX);
            break;
        }
        if (strlen(line) != n) {
            rc = fail(err, err_len, "%s:%u: NUL byte in the line", path, lineno);
            break;
        }
        char *p = trim(line);
        if (*p == '\0' || *p == '#') {
            continue;
        }
        char *eq = strchr(p, '=');
        if (eq == NULL) {
            rc = fail(err, err_len, "%s:%u: expected 'name = value', got '%s'", path, lineno, p);
            break;
        }
        *eq = '\0';
        char *name = trim(p);
        char *val = trim(eq + 1);
        char flag[64];
        int idx = -1;
        if (strncmp(name, "--", 2) != 0 && strlen(name) + 3 <= sizeof(flag)) {
            snprintf(flag, sizeof(flag), "--%s", name);
            idx = flag_index(flag);
        }
        if (idx < 0) {
            rc = fail(err, err_len,
                      "%s:%u: unknown setting '%s' (a setting is a flag of dkv --help without "
                      "its leading --)",
                      path, lineno, name);
        } else if (strcmp(flag, "--config") == 0) {
            rc = fail(err, err_len, "%s:%u: a config file cannot name another one", path, lineno);
        } else if (set_on_line[idx] != 0) {
            rc = fail(err, err_len, "%s:%u: '%s' is already set on line %u", path, lineno, name,
                      set_on_line[idx]);
        } else {
            set_on_line[idx] = lineno;
            rc = set_flag(conf, flag, val, cluster_arg, msg, sizeof(msg));
            if (rc != 0) {
                fail(err, err_len, "%s:%u: %s", path, lineno, msg);
            }
        }
    }
    if (rc == 0 && ferror(f)) {
        rc = fail(err, err_len, "--config %s: read error", path);
    }
    free(line);
    fclose(f);
    return rc;
}

int dkv_conf_parse(int argc, char **argv, dkv_conf_t *conf, char *err, size_t err_len)
{
    set_defaults(conf);
    char *cluster_arg = NULL; /* owned */
    const char *config_path = NULL;
    int rc = 0;

    /* First pass: --help and --version win over everything, and the config file goes first so
     * that the command line overrides it. */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf(usage, (unsigned)DKV_RING_DEFAULT_VNODES);
            fputs(usage_convergence, stdout);
            printf(usage_more, DKV_CONF_DEFAULT_READ_SPECULATIVE ? "speculative" : "all");
            return 1;
        }
        if (strcmp(argv[i], "--version") == 0) {
            printf("dkv %s\n", DKV_VERSION);
            return 1;
        }
        int idx = flag_index(argv[i]);
        if (idx >= 0 && (size_t)idx < N_VALUED && i + 1 < argc) {
            if (strcmp(argv[i], "--config") == 0) {
                config_path = argv[i + 1];
            }
            i++;
        }
    }
    if (config_path != NULL) {
        rc = load_config(conf, config_path, &cluster_arg, err, err_len);
        if (rc != 0) {
            goto out;
        }
    }

    for (int i = 1; i < argc && rc == 0; i++) {
        const char *flag = argv[i];
        int idx = flag_index(flag);
        if (strncmp(flag, "--", 2) != 0) {
            rc = fail(err, err_len, "unexpected argument '%s' (see --help)", flag);
        } else if (idx < 0) {
            rc = fail(err, err_len, "unknown flag '%s' (see --help)", flag);
        } else if ((size_t)idx >= N_VALUED) {
            rc = set_flag(conf, flag, "on", &cluster_arg, err, err_len);
        } else if (i + 1 >= argc) {
            rc = fail(err, err_len, "%s needs a value (see --help)", flag);
        } else if (strcmp(flag, "--config") == 0) {
            i++; /* read before the other flags */
        } else {
            rc = set_flag(conf, flag, argv[++i], &cluster_arg, err, err_len);
        }
    }
    if (rc != 0) {
        goto out;
    }
    if (conf->self[0] == '\0') {
        snprintf(conf->self, sizeof(conf->self), "http://%s:%u", conf->listen_host,
                 (unsigned)conf->listen_port);
    }
    rc = parse_cluster(conf, cluster_arg != NULL ? cluster_arg : conf->self, err, err_len);
    if (rc != 0) {
        goto out;
    }
    if (conf->replication_factor == 0) {
        conf->replication_factor = (unsigned)conf->cluster_n;
    } else if (conf->replication_factor > conf->cluster_n) {
        rc = fail(err, err_len,
                  "--replication-factor %u is larger than the cluster: --cluster lists %zu "
                  "node(s)",
                  conf->replication_factor, conf->cluster_n);
        goto out;
    }
    if (conf->cluster_n > 1 && conf->cluster_secret_file[0] == '\0' &&
        !is_loopback(conf->listen_host)) {
        rc = fail(err, err_len,
                  "--listen %s is reachable from other hosts: give every node the same "
                  "--cluster-secret-file (e.g. openssl rand -hex 32 > FILE; chmod 600 FILE), "
                  "or anyone who reaches the port can act as a cluster member",
                  conf->listen_host);
        goto out;
    }
    bool self_listed = false;
    for (size_t i = 0; i < conf->cluster_n; i++) {
        self_listed = self_listed || strcmp(conf->cluster[i], conf->self) == 0;
    }
    if (!self_listed) {
        rc = fail(err, err_len, "--self '%s' is not one of the --cluster URLs", conf->self);
    }
out:
    free(cluster_arg);
    return rc;
}
