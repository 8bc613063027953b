/*
 * stats: the shop's sales figures, in C.
 *
 *   POST /stats/events/orders  one `orders` event (delivered by the platform as a
 *                              CloudEvents HTTP POST: the message's JSON is the body,
 *                              its id the `ce-id` header); counts it once
 *   GET  /stats                {"orders":N,"revenue_cents":M}
 *
 * The figures live in the service's key-value store (bucket `default`): counters
 * `orders` and `revenue_cents`, and a `seen:{ce-id}` key per event counted, because
 * delivery is at least once and the same event may arrive again.
 */
#include "tessera.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A counter's value (counters are stored as decimal text); absent = 0. */
static int read_counter(ts_kv *kv, const char *key, int64_t *out) {
    ts_bytes v;
    int rc = ts_kv_get(kv, key, &v);
    *out = rc == TS_OK ? strtoll(v.data, NULL, 10) : 0;
    return rc < 0 ? rc : TS_OK;
}

static void get_stats(ts_kv *kv, ts_response *res) {
    int64_t orders, revenue;
    if (read_counter(kv, "orders", &orders) != TS_OK || read_counter(kv, "revenue_cents", &revenue) != TS_OK) {
        ts_reply_error(res, 500, "reading the figures: %s", ts_errmsg());
        return;
    }
    ts_reply_json(res, 200, "{\"orders\":%lld,\"revenue_cents\":%lld}", (long long)orders, (long long)revenue);
}

static void count_order(const ts_request *req, ts_kv *kv, ts_response *res) {
    const char *id = ts_req_header(req, "ce-id");
    if (!id || !*id) {
        ts_reply_error(res, 400, "missing ce-id header");
        return;
    }
    int64_t total;
    int rc = ts_json_get_int(req->body, req->body_len, "total_cents", &total);
    if (rc != TS_OK) {
        ts_reply_error(res, 400, "event %s has no integer total_cents", id);
        return;
    }

    /* Claim the event atomically: only the delivery that takes `seen:ID` from 0 to 1
     * counts it, even if two deliveries of it run at once. */
    const char *seen = ts_sprintf("seen:%s", id);
    int64_t claims;
    if (ts_kv_increment(kv, seen, 1, &claims) != TS_OK) {
        ts_reply_error(res, 500, "%s", ts_errmsg());
        return;
    }
    if (claims > 1) {
        printf("event %s: duplicate, ignored\n", id);
        ts_reply_json(res, 200, "{\"counted\":false}");
        return;
    }

    int64_t orders, revenue;
    if (ts_kv_increment(kv, "orders", 1, &orders) != TS_OK ||
        ts_kv_increment(kv, "revenue_cents", total, &revenue) != TS_OK) {
        fprintf(stderr, "event %s: %s\n", id, ts_errmsg());
        ts_kv_delete(kv, seen); /* so the redelivery a 5xx causes counts it */
        ts_reply_error(res, 500, "counting event %s failed", id);
        return;
    }
    printf("event %s: order of %lld cents; %lld orders, %lld cents in all\n", id, (long long)total,
           (long long)orders, (long long)revenue);
    ts_reply_json(res, 200, "{\"counted\":true}");
}

void handle_request(const ts_request *req, ts_response *res) {
    const char *rest;
    if (!ts_path_match(req, "/stats", &rest)) {
        ts_reply_error(res, 404, "no such path: %s", req->path);
        return;
    }
    bool stats = *rest == 0, events = strcmp(rest, "events/orders") == 0;
    if (!stats && !events) {
        ts_reply_error(res, 404, "no such path: %s", req->path);
        return;
    }
    const char *allowed = stats ? "GET" : "POST";
    if (strcmp(req->method, allowed) != 0) {
        ts_add_header(res, "allow", allowed);
        ts_reply_error(res, 405, "method %s not allowed on %s", req->method, req->path);
        return;
    }

    ts_kv *kv;
    if (ts_kv_open("default", &kv) != TS_OK) {
        ts_reply_error(res, 500, "%s", ts_errmsg());
        return;
    }
    if (stats)
        get_stats(kv, res);
    else
        count_order(req, kv, res);
}
