/*
 * Router internals shared by its files: router.c (the API and admin endpoints) and observe.c
 * (GET /metrics, /v0/health, /v0/ready and the status page GET /).
 */
#ifndef DKV_ROUTER_ROUTER_INT_H
#define DKV_ROUTER_ROUTER_INT_H

#include "router/router.h"

/*
 * Sent with the read-only observability answers to GET and HEAD (/v0/status in both forms,
 * /metrics, /v0/health, /v0/ready), so the status page served by one node can poll every other
 * node from the browser: those are other origins (CORS, WHATWG Fetch standard §3.2). Never sent
 * with entity data, admin answers, errors, or anything that changes state: another web page can
 * read a node's status and metrics, never its data (docs/security.md).
 */
#define ROUTER_CORS_HEADER "Access-Control-Allow-Origin: *\r\n"

typedef struct sync_wait sync_wait_t;

struct dkv_router {
    dkv_router_env_t env;
    sync_wait_t *waits; /* admin calls waiting for a hints sync point */
    bool stopped;
};

/* GET|HEAD /metrics: the Prometheus text exposition (format 0.0.4) of the node. */
void router_handle_metrics(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                           dkv_router_reply_cb cb, void *arg);

/* GET|HEAD /v0/health: liveness, 200 while the process serves. */
void router_handle_health(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                          dkv_router_reply_cb cb, void *arg);

/* GET|HEAD /: the status page (src/router/status_page.html, embedded at build time). */
void router_handle_page(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                        dkv_router_reply_cb cb, void *arg);

/* GET|HEAD /v0/ready: 200 when the node can serve default-quorum requests, else 503 + reasons. */
void router_handle_ready(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                         dkv_router_reply_cb cb, void *arg);

#endif
