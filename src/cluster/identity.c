/* Node identity, peers' identities and the node's readiness state; the design is in identity.h. */
#include "cluster/identity.h"

#include "cluster/hlc.h"
#include "common/err.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINE_MAX_BYTES 1200u

struct dkv_identity {
    char dir[1024];
    const dkv_ring_t *ring;
    uint32_t self_idx;
    uint8_t node_id[DKV_NODE_ID_BYTES];
    _Atomic int state;      /* dkv_node_state_t */
    _Atomic bool has_data;
    pthread_mutex_t mu;     /* peers and the files */
    uint8_t (*peer_ids)[DKV_NODE_ID_BYTES]; /* by ring index; zero = never seen */
    bool *fresh;        /* JOINING: this peer neither knew us nor held data (by ring index) */
    size_t fresh_count; /* peers in `fresh` */
    bool probation;     /* READY by a majority's word only: a peer not heard yet may still
                           remember this node under another id (state file "probation") */
    _Atomic int *peer_seen; /* by ring index: 0 never, 1 last seen ready, 2 last seen not ready */
};

static const uint8_t zero_id[DKV_NODE_ID_BYTES];

const char *dkv_node_state_name(dkv_node_state_t s)
{
    switch (s) {
    case DKV_NODE_READY:
        return "ready";
    case DKV_NODE_JOINING:
        return "joining";
    case DKV_NODE_REBUILDING:
        return "rebuilding";
    }
    return "unknown";
}

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static int unhex(const char *s, uint8_t *out, size_t n)
{
    if (strlen(s) != 2 * n) {
        return DKV_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            return DKV_EINVAL;
        }
        out[i] = (uint8_t)v;
    }
    return 0;
}

static int path_of(const dkv_identity_t *id, const char *name, char *out, size_t len)
{
    int n = snprintf(out, len, "%s/%s", id->dir, name);
    return n < 0 || (size_t)n >= len ? DKV_EINVAL : 0;
}

/* Writes `text` to dir/name atomically: temporary file, fsync, rename, fsync of the directory. */
static int write_file(const dkv_identity_t *id, const char *name, const char *text)
{
    char path[1100];
    char tmp[1100];
    if (path_of(id, name, path, sizeof(path)) != 0 ||
        snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        return DKV_EINVAL;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        return -errno;
    }
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    int rc = (w == (ssize_t)len && fsync(fd) == 0) ? 0 : (errno != 0 ? -errno : DKV_EIO);
    close(fd);
    if (rc == 0 && rename(tmp, path) != 0) {
        rc = -errno;
    }
    if (rc == 0) {
        int dfd = open(id->dir, O_RDONLY | O_CLOEXEC);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    } else {
        unlink(tmp);
    }
    return rc;
}

static int remove_file(const dkv_identity_t *id, const char *name)
{
    char path[1100];
    if (path_of(id, name, path, sizeof(path)) != 0) {
        return DKV_EINVAL;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        return -errno;
    }
    int dfd = open(id->dir, O_RDONLY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* Opens dir/name for reading; NULL with errno ENOENT when it does not exist. */
static FILE *open_file(const dkv_identity_t *id, const char *name)
{
    char path[1100];
    if (path_of(id, name, path, sizeof(path)) != 0) {
        errno = EINVAL;
        return NULL;
    }
    return fopen(path, "re");
}

/* Persists the state (before it is used), then publishes it. Called with mu held or at open. */
static int set_state_ex(dkv_identity_t *id, dkv_node_state_t s, bool probation)
{
    int rc;
    if (s == DKV_NODE_READY) {
        rc = probation ? write_file(id, "state", "probation\n") : remove_file(id, "state");
    } else {
        rc = write_file(id, "state", s == DKV_NODE_JOINING ? "joining\n" : "rebuilding\n");
    }
    if (rc != 0) {
        DKV_LOG_ERROR("identity: cannot record the state '%s' in %s: %s", dkv_node_state_name(s),
                      id->dir, dkv_strerror(rc));
        return DKV_EIO;
    }
    id->probation = s == DKV_NODE_READY && probation;
    atomic_store(&id->state, (int)s);
    return 0;
}

static int set_state(dkv_identity_t *id, dkv_node_state_t s)
{
    return set_state_ex(id, s, false);
}

static int save_peers(dkv_identity_t *id)
{
    dkv_buf_t b;
    dkv_buf_init(&b);
    for (size_t i = 0; i < dkv_ring_size(id->ring); i++) {
        if (memcmp(id->peer_ids[i], zero_id, DKV_NODE_ID_BYTES) == 0) {
            continue;
        }
        char h[2 * DKV_NODE_ID_BYTES + 1];
        hex(id->peer_ids[i], DKV_NODE_ID_BYTES, h);
        dkv_buf_printf(&b, "%s %s\n", dkv_ring_url(id->ring, i), h);
    }
    dkv_buf_append(&b, "", 1);
    int rc = write_file(id, "peers", (const char *)b.data);
    dkv_buf_cleanup(&b);
    return rc;
}

static void load_peers(dkv_identity_t *id)
{
    FILE *f = open_file(id, "peers");
    if (f == NULL) {
        return;
    }
    char line[LINE_MAX_BYTES];
    while (fgets(line, sizeof(line), f) != NULL) {
        char *sp = strchr(line, ' ');
        if (sp == NULL) {
            continue;
        }
        *sp = '\0';
        char *h = sp + 1;
        h[strcspn(h, "\r\n")] = '\0';
        int idx = dkv_ring_index_of(id->ring, line);
        uint8_t pid[DKV_NODE_ID_BYTES];
        if (idx >= 0 && unhex(h, pid, sizeof(pid)) == 0) {
            memcpy(id->peer_ids[idx], pid, sizeof(pid));
        }
    }
    fclose(f);
}

static int new_id(uint8_t out[DKV_NODE_ID_BYTES])
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    ssize_t n = read(fd, out, DKV_NODE_ID_BYTES);
    close(fd);
    return n == (ssize_t)DKV_NODE_ID_BYTES ? 0 : DKV_EIO;
}

/* Reads dir/identity. @return 0; DKV_ENOTFOUND (no file); DKV_EPROTO (damaged). */
static int load_identity(dkv_identity_t *id, char *url, size_t url_len)
{
    FILE *f = open_file(id, "identity");
    if (f == NULL) {
        return errno == ENOENT ? DKV_ENOTFOUND : -errno;
    }
    char line[LINE_MAX_BYTES];
    bool have_id = false;
    url[0] = '\0';
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strncmp(line, "node_id ", 8) == 0) {
            have_id = unhex(line + 8, id->node_id, DKV_NODE_ID_BYTES) == 0;
        } else if (strncmp(line, "url ", 4) == 0) {
            snprintf(url, url_len, "%s", line + 4);
        }
    }
    fclose(f);
    return have_id ? 0 : DKV_EPROTO;
}

static int load_state(dkv_identity_t *id, dkv_node_state_t *out)
{
    id->probation = false;
    FILE *f = open_file(id, "state");
    if (f == NULL) {
        if (errno != ENOENT) {
            return -errno;
        }
        *out = DKV_NODE_READY;
        return 0;
    }
    char line[64] = "";
    if (fgets(line, sizeof(line), f) == NULL) {
        line[0] = '\0';
    }
    fclose(f);
    /* Anything unknown is treated as the safer "rebuilding". */
    if (strncmp(line, "probation", 9) == 0) {
        id->probation = true;
        *out = DKV_NODE_READY;
    } else {
        *out = strncmp(line, "joining", 7) == 0 ? DKV_NODE_JOINING : DKV_NODE_REBUILDING;
    }
    return 0;
}

int dkv_identity_open(const char *data_dir, const dkv_ring_t *ring, uint32_t self_idx,
                      bool db_exists, char *why, size_t why_len, dkv_identity_t **out)
{
    dkv_identity_t *id = dkv_xcalloc(1, sizeof(*id));
    snprintf(id->dir, sizeof(id->dir), "%s", data_dir);
    id->ring = ring;
    id->self_idx = self_idx;
    id->peer_ids = dkv_xcalloc(dkv_ring_size(ring), DKV_NODE_ID_BYTES);
    id->fresh = dkv_xcalloc(dkv_ring_size(ring), sizeof(bool));
    id->peer_seen = dkv_xcalloc(dkv_ring_size(ring), sizeof(*id->peer_seen));
    pthread_mutex_init(&id->mu, NULL);
    const char *self_url = dkv_ring_url(ring, self_idx);
    char url[LINE_MAX_BYTES];
    int rc = load_identity(id, url, sizeof(url));
    if (rc == 0) {
        if (url[0] != '\0' && strcmp(url, self_url) != 0) {
            snprintf(why, why_len,
                     "%s/identity belongs to %s, not to --self %s (another node's data "
                     "directory?)",
                     data_dir, url, self_url);
            rc = DKV_ECLUSTER;
            goto out;
        }
        dkv_node_state_t s = DKV_NODE_READY;
        rc = load_state(id, &s);
        if (rc != 0) {
            snprintf(why, why_len, "cannot read %s/state: %s", data_dir, dkv_strerror(rc));
            rc = DKV_EIO;
            goto out;
        }
        if (!db_exists && s == DKV_NODE_READY) {
            snprintf(why, why_len,
                     "%s has an identity but no database: this node's data was lost. To let it "
                     "rejoin and be refilled, delete %s/identity (it then starts as a new, "
                     "rebuilding node)",
                     data_dir, data_dir);
            rc = DKV_ECLUSTER;
            goto out;
        }
        atomic_store(&id->state, (int)s);
        load_peers(id);
    } else if (rc == DKV_ENOTFOUND) {
        rc = new_id(id->node_id);
        char h[2 * DKV_NODE_ID_BYTES + 1];
        hex(id->node_id, DKV_NODE_ID_BYTES, h);
        char text[1400];
        snprintf(text, sizeof(text),
                 "node_id %s\ncluster %016" PRIx64 "\nurl %s\ncreated_ms %" PRIu64 "\n", h,
                 dkv_ring_fingerprint(ring), self_url, dkv_hlc_system_clock_ms(NULL));
        /* The state goes first: a crash between the two files leaves no identity, which is
         * read as new again, never as ready. */
        dkv_node_state_t s = db_exists || dkv_ring_size(ring) == 1 ? DKV_NODE_READY
                                                                   : DKV_NODE_JOINING;
        if (rc == 0) {
            rc = set_state(id, s);
        }
        if (rc == 0) {
            rc = write_file(id, "identity", text);
        }
        if (rc != 0) {
            snprintf(why, why_len, "cannot write the node identity in %s: %s", data_dir,
                     dkv_strerror(rc));
            rc = DKV_EIO;
            goto out;
        }
        DKV_LOG_INFO("identity: new node id %s (%s)", h,
                     s == DKV_NODE_READY ? "existing data kept"
                                         : "empty data directory: joining until a peer says "
                                           "whether data was lost");
    } else {
        snprintf(why, why_len, "cannot read %s/identity: %s", data_dir,
                 rc == DKV_EPROTO ? "damaged file" : dkv_strerror(rc));
        rc = rc == DKV_EPROTO ? DKV_ECLUSTER : DKV_EIO;
        goto out;
    }
out:
    if (rc != 0) {
        dkv_identity_free(id);
        return rc;
    }
    *out = id;
    return 0;
}

void dkv_identity_free(dkv_identity_t *id)
{
    if (id == NULL) {
        return;
    }
    pthread_mutex_destroy(&id->mu);
    free(id->fresh);
    free((void *)id->peer_seen);
    free(id->peer_ids);
    free(id);
}

dkv_node_state_t dkv_identity_state(const dkv_identity_t *id)
{
    return (dkv_node_state_t)atomic_load_explicit(&id->state, memory_order_acquire);
}

bool dkv_identity_wants_peers(dkv_identity_t *id)
{
    dkv_node_state_t s = dkv_identity_state(id);
    if (s != DKV_NODE_READY) {
        return s == DKV_NODE_JOINING;
    }
    pthread_mutex_lock(&id->mu);
    bool probation = id->probation;
    pthread_mutex_unlock(&id->mu);
    return probation;
}

void dkv_identity_note_data(dkv_identity_t *id)
{
    if (!atomic_load_explicit(&id->has_data, memory_order_relaxed)) {
        atomic_store(&id->has_data, true);
    }
}

void dkv_identity_info_for(dkv_identity_t *id, uint32_t peer, dkv_ident_info_t *out)
{
    memcpy(out->node_id, id->node_id, DKV_NODE_ID_BYTES);
    out->flags = (uint8_t)((atomic_load(&id->has_data) ? DKV_IDENT_FLAG_HAS_DATA : 0) |
                           (dkv_identity_state(id) == DKV_NODE_READY ? DKV_IDENT_FLAG_READY : 0));
    pthread_mutex_lock(&id->mu);
    if (peer < dkv_ring_size(id->ring)) {
        memcpy(out->known_you, id->peer_ids[peer], DKV_NODE_ID_BYTES);
    } else {
        memset(out->known_you, 0, DKV_NODE_ID_BYTES);
    }
    pthread_mutex_unlock(&id->mu);
}

bool dkv_identity_peer_not_ready(dkv_identity_t *id, uint32_t peer)
{
    return peer < dkv_ring_size(id->ring) && atomic_load(&id->peer_seen[peer]) == 2;
}

void dkv_identity_observe(dkv_identity_t *id, uint32_t peer, const dkv_ident_info_t *info)
{
    if (peer >= dkv_ring_size(id->ring) || peer == id->self_idx) {
        return;
    }
    atomic_store(&id->peer_seen[peer], (info->flags & DKV_IDENT_FLAG_READY) != 0 ? 1 : 2);
    const char *url = dkv_ring_url(id->ring, peer);
    pthread_mutex_lock(&id->mu);
    if (memcmp(id->peer_ids[peer], info->node_id, DKV_NODE_ID_BYTES) != 0) {
        bool known = memcmp(id->peer_ids[peer], zero_id, DKV_NODE_ID_BYTES) != 0;
        memcpy(id->peer_ids[peer], info->node_id, DKV_NODE_ID_BYTES);
        if (known) {
            DKV_LOG_WARN("identity: peer %s has a new node id (its data directory was replaced)",
                         url);
        }
        int rc = save_peers(id);
        if (rc != 0) {
            DKV_LOG_ERROR("identity: cannot save peers in %s: %s", id->dir, dkv_strerror(rc));
        }
    }
    bool knew_other = memcmp(info->known_you, zero_id, DKV_NODE_ID_BYTES) != 0 &&
                      memcmp(info->known_you, id->node_id, DKV_NODE_ID_BYTES) != 0;
    if (dkv_identity_state(id) == DKV_NODE_READY && id->probation) {
        /* Ready on a majority's word: the first peer that remembers this node under another id
         * proves its data was lost after all (e.g. two of three disks wiped while the third node
         * was down). Every other peer heard from without that ends the probation. */
        if (knew_other) {
            if (set_state(id, DKV_NODE_REBUILDING) == 0) {
                DKV_LOG_WARN("identity: %s knew this node under another id: its data was lost; "
                             "REBUILDING",
                             url);
            }
        } else if (!id->fresh[peer]) {
            id->fresh[peer] = true;
            id->fresh_count++;
            if (id->fresh_count + 1 == dkv_ring_size(id->ring) &&
                set_state(id, DKV_NODE_READY) == 0) {
                DKV_LOG_INFO("identity: every peer has now confirmed it never knew this node");
            }
        }
    } else if (dkv_identity_state(id) == DKV_NODE_JOINING) {
        bool peer_has_data = (info->flags & DKV_IDENT_FLAG_HAS_DATA) != 0 &&
                             (info->flags & DKV_IDENT_FLAG_READY) != 0;
        if (knew_other || peer_has_data) {
            if (set_state(id, DKV_NODE_REBUILDING) == 0) {
                DKV_LOG_WARN("identity: %s %s: this node's data was lost; REBUILDING: replica "
                             "reads answer 'not ready' until it is refilled (hints, read repair) "
                             "and POST /v0/admin/rebuild-done",
                             url, knew_other ? "knew this node under another id"
                                             : "holds data while this node started empty");
            }
        } else {
            if (!id->fresh[peer]) {
                id->fresh[peer] = true;
                id->fresh_count++;
            }
            /* A majority of the cluster, this node included, must say so: one other wiped node
             * alone must not make a new cluster of the two while the nodes holding the data are
             * down; a majority of lost disks loses quorum-acknowledged writes anyway. */
            bool all = id->fresh_count + 1 == dkv_ring_size(id->ring);
            if (id->fresh_count + 1 >= dkv_ring_size(id->ring) / 2 + 1 &&
                set_state_ex(id, DKV_NODE_READY, !all) == 0) {
                DKV_LOG_INFO("identity: no peer knows this node or holds data: a new cluster; "
                             "ready%s",
                             all ? "" : " (until a peer not heard from yet says otherwise)");
            }
        }
    }
    pthread_mutex_unlock(&id->mu);
}

int dkv_identity_rebuild_done(dkv_identity_t *id)
{
    pthread_mutex_lock(&id->mu);
    dkv_node_state_t before = dkv_identity_state(id);
    int rc = before == DKV_NODE_READY ? 0 : set_state(id, DKV_NODE_READY);
    pthread_mutex_unlock(&id->mu);
    if (rc == 0 && before != DKV_NODE_READY) {
        DKV_LOG_WARN("identity: the operator ended the %s state: replica reads are answered "
                     "from this node's data again",
                     dkv_node_state_name(before));
    }
    return rc;
}

void dkv_identity_status_json(dkv_identity_t *id, dkv_buf_t *out)
{
    char h[2 * DKV_NODE_ID_BYTES + 1];
    hex(id->node_id, DKV_NODE_ID_BYTES, h);
    dkv_buf_printf(out, "\"node_id\":\"%s\",\"state\":\"%s\"", h,
                   dkv_node_state_name(dkv_identity_state(id)));
}
