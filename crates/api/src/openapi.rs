//! The OpenAPI 3 document of the control API, served at `/v1/openapi.json`. A test walks
//! every path and method listed here against a real node, so the document cannot drift
//! from the router.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn json_body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string" } })
}

/// The document.
// Long because it is the document itself, one JSON literal per path.
pub fn document() -> Value {
    let app = param("app", "app name");
    let service = param("service", "service name");
    let sha = param("sha256", "lowercase hex sha256 of the component");
    let unauthorized = error_response("missing or wrong bearer token");
    let not_found = error_response("no such app, service or revision");
    // Kept out of the document's literal below, which is at the macro's recursion limit.
    let log_line = json!({ "type": "object", "properties": {
        "seq": { "type": "integer", "description": "increases with every line the node logs" },
        "time": { "type": "string", "description": "RFC 3339" },
        "app": { "type": "string" }, "service": { "type": "string" },
        "stream": { "type": "string", "enum": ["stdout", "stderr", "platform"] },
        "request_id": { "type": "string", "nullable": true, "description": "the request the guest was serving" },
        "line": { "type": "string" } } });
    let logs = json!({
        "parameters": [app, service],
        "get": { "summary": "the service's recent log lines (guest stdout and stderr, platform events), oldest first; kept in memory, a bounded number per service",
            "parameters": [
                { "name": "since", "in": "query", "required": false, "description": "only lines from this RFC 3339 time (UTC), or this long ago, e.g. `5m`", "schema": { "type": "string" } },
                { "name": "limit", "in": "query", "required": false, "description": "at most this many of the newest lines (default 100)", "schema": { "type": "integer" } },
                { "name": "follow", "in": "query", "required": false, "description": "keep the response open: newline-delimited JSON, first the matching lines, then new ones as they are logged (a blank line every 15 s when idle)", "schema": { "type": "boolean" } } ],
            "responses": {
                "200": { "description": "the lines: `{\"logs\": [...]}`, or with `follow=true` a stream of one LogLine per line", "content": {
                    "application/json": { "schema": { "$ref": "#/components/schemas/LogList" } },
                    "application/x-ndjson": { "schema": { "$ref": "#/components/schemas/LogLine" } } } },
                "400": error_response("invalid `since` or query"), "401": unauthorized, "404": not_found } }
    });
    let metrics = json!({
        "get": { "summary": "the node's metrics for Prometheus (OpenMetrics text, same bearer token): requests, latency, rejections, faults, cold starts and memory per service revision; the compiled-code cache; event subscriptions",
            "responses": { "200": { "description": "the metrics", "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } }, "401": unauthorized } }
    });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tessera control API",
            "version": "1",
            "description": "Deploy, version, split traffic between and roll back the services of apps on a Tessera node. Every request needs `Authorization: Bearer <token>` unless the node runs with `--dev` on a loopback admin address. Errors are JSON: `{\"error\": {\"code\", \"message\"}}`. Prometheus metrics are served at `/metrics` with the same bearer token."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": { "type": "object", "required": ["error"], "properties": { "error": { "type": "object", "required": ["code", "message"], "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } },
                "ServiceSpec": { "type": "object", "required": ["name", "sha256", "routes", "memory", "timeout_ms"], "properties": {
                    "name": { "type": "string" }, "sha256": { "type": "string" },
                    "routes": { "type": "array", "items": { "type": "string" } },
                    "memory": { "type": "integer", "description": "bytes" },
                    "timeout_ms": { "type": "integer" },
                    "outbound": { "type": "array", "items": { "type": "string" } },
                    "callbacks": { "type": "array", "description": "origins an async invocation's x-tessera-callback may name", "items": { "type": "string" } },
                    "async_rate": { "type": "integer", "description": "async invocations accepted per second (default 100)" },
                    "async_stored": { "type": "integer", "description": "bytes queued async invocations may hold (default 64 MiB)" },
                    "reuse": { "type": "integer", "minimum": 1, "description": "requests one instance serves before it is dropped (default 1: a fresh instance per request)" },
                    "reuse_concurrency": { "type": "integer", "minimum": 1, "description": "requests one instance serves at once (default 1; above 1 needs a WASI 0.3 component)" },
                    "reuse_idle_ms": { "type": "integer", "description": "how long a used instance waits for its next request (default 1000)" },
                    "env": { "type": "array", "items": { "type": "array", "items": { "type": "string" }, "minItems": 2, "maxItems": 2 } },
                    "config": { "type": "array", "description": "configuration served through wasi:config/store, as [key, value] pairs", "items": { "type": "array", "items": { "type": "string" }, "minItems": 2, "maxItems": 2 } },
                    "buckets": { "type": "array", "description": "key-value buckets besides `default`", "items": { "type": "string" } },
                    "migrations": { "type": "array", "description": "SQL migrations applied once each, in order, before the revision takes traffic", "items": { "$ref": "#/components/schemas/Migration" } } } },
                "Migration": { "type": "object", "required": ["name", "sql"], "properties": { "name": { "type": "string" }, "sql": { "type": "string" } } },
                "SecretList": { "type": "object", "properties": { "secrets": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "updated_at": { "type": "integer" } } } } } },
                "SecretValue": { "type": "object", "required": ["value"], "properties": { "value": { "type": "string" } } },
                "PublishResult": { "type": "object", "properties": { "id": { "type": "string", "description": "message id, the subscribers' ce-id" }, "new": { "type": "boolean", "description": "false when this id had already been published" } } },
                "EventStats": { "type": "object", "properties": { "subscriptions": { "type": "array", "items": { "type": "object", "properties": {
                    "id": { "type": "string" }, "active": { "type": "boolean" }, "ready": { "type": "integer" }, "in_flight": { "type": "integer" },
                    "retrying": { "type": "integer" }, "dead": { "type": "integer" }, "delivered": { "type": "integer" }, "retries": { "type": "integer" } } } } } },
                "NodeList": { "type": "object", "properties": { "nodes": { "type": "array", "items": { "type": "object", "properties": {
                    "name": { "type": "string" }, "state": { "type": "string", "enum": ["up", "down"] }, "last_seen_ms": { "type": "integer", "description": "how long before the freshest heartbeat this node's last one was" },
                    "gateway": { "type": "string" }, "admin": { "type": "string" }, "version": { "type": "string" }, "loaded": { "type": "integer", "description": "revisions with code loaded" } } } } } },
                "Message": { "type": "object", "properties": { "id": { "type": "string" }, "topic": { "type": "string" }, "source": { "type": "string" }, "type": { "type": "string" }, "time": { "type": "string" }, "content_type": { "type": "string", "nullable": true }, "data": { "type": "string" }, "size": { "type": "integer" } } },
                "DeadLetter": { "type": "object", "properties": { "message": { "$ref": "#/components/schemas/Message" }, "attempts": { "type": "integer" }, "last_status": { "type": "integer" }, "last_error": { "type": "string" }, "failed_at": { "type": "string" } } },
                "DeadLetterList": { "type": "object", "properties": { "subscription": { "type": "string" }, "dead_letters": { "type": "array", "items": { "$ref": "#/components/schemas/DeadLetter" } } } },
                "RedriveRequest": { "type": "object", "required": ["subscription"], "properties": { "subscription": { "type": "string" }, "ids": { "type": "array", "items": { "type": "string" } } } },
                "Redriven": { "type": "object", "properties": { "redriven": { "type": "integer" } } },
                "Invocation": { "type": "object", "properties": { "id": { "type": "string" }, "state": { "type": "string", "enum": ["pending", "running", "succeeded", "failed"] }, "attempts": { "type": "integer" }, "status": { "type": "integer", "nullable": true }, "body": { "type": "string", "nullable": true }, "error": { "type": "string", "nullable": true }, "updated": { "type": "string" } } },
                "DeployRequest": { "type": "object", "required": ["services"], "properties": {
                    "services": { "type": "array", "items": { "$ref": "#/components/schemas/ServiceSpec" } },
                    "only": { "type": "array", "items": { "type": "string" }, "description": "deploy only these services" },
                    "traffic": { "type": "integer", "minimum": 1, "maximum": 99, "description": "canary share of each new revision" },
                    "keep": { "type": "integer", "description": "revisions of history kept per service (default 10)" } } },
                "DeployResult": { "type": "object", "properties": {
                    "app": { "type": "string" },
                    "created": { "type": "array", "items": { "type": "object", "properties": { "service": { "type": "string" }, "revision": { "type": "integer" } } } },
                    "unchanged": { "type": "array", "items": { "type": "string" } },
                    "removed": { "type": "array", "items": { "type": "string" } } } },
                "TrafficShare": { "type": "object", "required": ["revision", "percent"], "properties": { "revision": { "type": "integer" }, "percent": { "type": "integer", "minimum": 0, "maximum": 100 } } },
                "TrafficRequest": { "type": "object", "required": ["traffic"], "properties": { "traffic": { "type": "array", "items": { "$ref": "#/components/schemas/TrafficShare" } } } },
                "RollbackRequest": { "type": "object", "properties": { "to": { "type": "integer" } } },
                "Revision": { "type": "object", "properties": {
                    "id": { "type": "integer" }, "sha256": { "type": "string" }, "created_at": { "type": "integer" },
                    "routes": { "type": "array", "items": { "type": "string" } },
                    "memory": { "type": "integer" }, "timeout_ms": { "type": "integer" },
                    "outbound": { "type": "array", "items": { "type": "string" } },
                    "callbacks": { "type": "array", "items": { "type": "string" } },
                    "env": { "type": "array", "items": { "type": "string" }, "description": "names only" } } },
                "Service": { "type": "object", "properties": {
                    "name": { "type": "string" },
                    "routes": { "type": "array", "items": { "type": "string" } },
                    "primary": { "type": "integer", "nullable": true },
                    "traffic": { "type": "array", "items": { "$ref": "#/components/schemas/TrafficShare" } },
                    "revisions": { "type": "array", "items": { "$ref": "#/components/schemas/Revision" } } } },
                "App": { "type": "object", "properties": { "name": { "type": "string" }, "services": { "type": "array", "items": { "$ref": "#/components/schemas/Service" } } } },
                "AppList": { "type": "object", "properties": { "apps": { "type": "array", "items": { "$ref": "#/components/schemas/App" } } } },
                "Removed": { "type": "object", "properties": { "removed": { "type": "string" } } },
                "Uploaded": { "type": "object", "properties": { "sha256": { "type": "string" } } },
                "LogLine": log_line,
                "LogList": { "type": "object", "properties": { "logs": { "type": "array", "items": { "$ref": "#/components/schemas/LogLine" } } } }
            }
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/metrics": metrics,
            "/v1/openapi.json": { "get": { "summary": "this document", "responses": { "200": { "description": "the OpenAPI document" } } } },
            "/v1/apps": { "get": { "summary": "list apps with their services, revisions and traffic", "responses": { "200": json_response("the apps", "AppList"), "401": unauthorized } } },
            "/v1/apps/{app}": {
                "parameters": [app],
                "get": { "summary": "one app", "responses": { "200": json_response("the app", "App"), "401": unauthorized, "404": not_found } },
                "delete": { "summary": "remove an app (its artifacts stay; its data and secrets stay unless `purge=true`)",
                    "parameters": [ { "name": "purge", "in": "query", "required": false, "description": "also delete the app's key-value data, SQL databases and secrets", "schema": { "type": "boolean" } } ],
                    "responses": { "200": json_response("removed", "Removed"), "401": unauthorized, "404": not_found } }
            },
            "/v1/apps/{app}/deploy": {
                "parameters": [app],
                "post": { "summary": "deploy services: a new immutable revision for each changed one, switched atomically",
                    "requestBody": json_body("DeployRequest"),
                    "responses": { "200": json_response("what changed", "DeployResult"), "400": error_response("invalid request"), "401": unauthorized, "409": error_response("a route is claimed by another service"), "422": error_response("a component is missing or cannot be served, or a migration failed") } }
            },
            "/v1/apps/{app}/services/{service}": {
                "parameters": [app, service],
                "get": { "summary": "one service: revisions and traffic", "responses": { "200": json_response("the service", "Service"), "401": unauthorized, "404": not_found } }
            },
            "/v1/apps/{app}/services/{service}/traffic": {
                "parameters": [app, service],
                "put": { "summary": "split the service's traffic across revisions (percentages summing to 100)",
                    "requestBody": json_body("TrafficRequest"),
                    "responses": { "200": json_response("the service", "Service"), "400": error_response("invalid weights"), "401": unauthorized, "404": not_found } }
            },
            "/v1/apps/{app}/services/{service}/rollback": {
                "parameters": [app, service],
                "post": { "summary": "send all traffic to an earlier revision (default: the one before the primary)",
                    "requestBody": { "required": false, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RollbackRequest" } } } },
                    "responses": { "200": json_response("the service", "Service"), "401": unauthorized, "404": not_found, "409": error_response("no earlier revision") } }
            },
            "/v1/apps/{app}/services/{service}/logs": logs,
            "/v1/apps/{app}/services/{service}/secrets": {
                "parameters": [app, service],
                "get": { "summary": "names of the service's secrets (never values)", "responses": { "200": json_response("the secret names", "SecretList"), "401": unauthorized } }
            },
            "/v1/apps/{app}/services/{service}/secrets/{name}": {
                "parameters": [app, service, param("name", "secret name")],
                "put": { "summary": "set a secret, readable only by this service through wasi:config/store; running revisions see it at once",
                    "requestBody": json_body("SecretValue"),
                    "responses": { "204": { "description": "set" }, "400": error_response("invalid name or body"), "401": unauthorized } },
                "delete": { "summary": "remove a secret", "responses": { "204": { "description": "removed" }, "401": unauthorized, "404": error_response("no such secret") } }
            },
            "/v1/apps/{app}/topics/{topic}": {
                "parameters": [app, param("topic", "topic name")],
                "post": { "summary": "publish the request body to a topic of the app; every subscription gets it at least once (`ce-id` header: your own message id, published once)",
                    "requestBody": { "required": true, "content": { "*/*": { "schema": { "type": "string", "format": "binary" } } } },
                    "responses": { "202": json_response("durably stored", "PublishResult"), "400": error_response("invalid topic"), "401": unauthorized, "404": not_found, "413": error_response("too large") } }
            },
            "/v1/apps/{app}/services/{service}/invocations/{id}": {
                "parameters": [app, service, param("id", "invocation id from the 202 answer")],
                "get": { "summary": "an async invocation's state and result", "responses": { "200": json_response("the invocation", "Invocation"), "401": unauthorized, "404": error_response("unknown or expired") } }
            },
            "/v1/nodes": {
                "get": { "summary": "every node that joined the cluster, up or down (outside a cluster: this node)", "responses": { "200": json_response("the nodes", "NodeList"), "401": unauthorized, "503": error_response("the cluster is unavailable") } }
            },
            "/v1/events": {
                "get": { "summary": "delivery counts of every subscription", "responses": { "200": json_response("the counts", "EventStats"), "401": unauthorized } }
            },
            "/v1/dead-letters": {
                "get": { "summary": "a subscription's dead letters",
                    "parameters": [ { "name": "subscription", "in": "query", "required": true, "schema": { "type": "string" } }, { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer" } } ],
                    "responses": { "200": json_response("the dead letters", "DeadLetterList"), "400": error_response("missing subscription"), "401": unauthorized } }
            },
            "/v1/dead-letters/{id}": {
                "parameters": [param("id", "message id")],
                "get": { "summary": "one dead letter",
                    "parameters": [ { "name": "subscription", "in": "query", "required": true, "schema": { "type": "string" } } ],
                    "responses": { "200": json_response("the dead letter", "DeadLetter"), "400": error_response("missing subscription"), "401": unauthorized, "404": error_response("no such dead letter") } }
            },
            "/v1/dead-letters/redrive": {
                "post": { "summary": "deliver dead letters again, attempts reset (all of the subscription's unless ids are given)",
                    "requestBody": json_body("RedriveRequest"),
                    "responses": { "200": json_response("how many", "Redriven"), "401": unauthorized } }
            },
            "/v1/artifacts/{sha256}": {
                "parameters": [sha],
                "get": { "summary": "whether the node stores this component", "responses": { "200": { "description": "stored" }, "404": { "description": "not stored" } } },
                "head": { "summary": "whether the node stores this component", "responses": { "200": { "description": "stored" }, "404": { "description": "not stored" } } },
                "put": { "summary": "upload a component; refused unless it is a WASI 0.2 HTTP component whose sha256 is its address",
                    "requestBody": { "required": true, "content": { "application/wasm": { "schema": { "type": "string", "format": "binary" } } } },
                    "responses": { "201": json_response("stored", "Uploaded"), "400": error_response("sha256 mismatch"), "401": unauthorized, "413": error_response("too large"), "422": error_response("not a servable component") } }
            }
        }
    })
}
