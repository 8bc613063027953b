/* {{name}}: a Tessera service in C. See tessera.h for the whole API. */
#include "tessera.h"

#include <stdio.h>

void handle_request(const ts_request *req, ts_response *res) {
    /* Configuration: [services.{{name}}.config] in tessera.toml. */
    const char *greeting = ts_config_or("greeting", "Hello");

    /* Key-value: count the visits in the service's own store. */
    ts_kv *kv;
    int64_t visits = 0;
    if (ts_kv_open("default", &kv) != TS_OK || ts_kv_increment(kv, "visits", 1, &visits) != TS_OK) {
        ts_reply_error(res, 500, "kv: %s", ts_errmsg());
        return;
    }

    printf("%s %s: visit %lld\n", req->method, req->path, (long long)visits); /* -> tessera logs */
    ts_reply(res, 200, "text/plain; charset=utf-8", "%s from C! This is {{name}}, visit %lld.\n", greeting,
             (long long)visits);
}
