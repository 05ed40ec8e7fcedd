/*
 * Router internals shared by its files: router.c (the API and admin endpoints) and observe.c
 * (GET /metrics, /v0/health, /v0/ready).
 */
#ifndef DKV_ROUTER_ROUTER_INT_H
#define DKV_ROUTER_ROUTER_INT_H

#include "router/router.h"

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

/* GET|HEAD /v0/ready: 200 when the node can serve default-quorum requests, else 503 + reasons. */
void router_handle_ready(dkv_router_t *r, const dkv_request_t *req, dkv_query_t *q,
                         dkv_router_reply_cb cb, void *arg);

#endif
