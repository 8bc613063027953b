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
pub fn document() -> Value {
    let app = param("app", "app name");
    let service = param("service", "service name");
    let sha = param("sha256", "lowercase hex sha256 of the component");
    let unauthorized = error_response("missing or wrong bearer token");
    let not_found = error_response("no such app, service or revision");
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Tessera control API",
            "version": "1",
            "description": "Deploy, version, split traffic between and roll back the services of apps on a Tessera node. Every request needs `Authorization: Bearer <token>` unless the node runs with `--dev` on a loopback admin address. Errors are JSON: `{\"error\": {\"code\", \"message\"}}`."
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
                    "env": { "type": "array", "items": { "type": "array", "items": { "type": "string" }, "minItems": 2, "maxItems": 2 } },
                    "config": { "type": "array", "description": "configuration served through wasi:config/store, as [key, value] pairs", "items": { "type": "array", "items": { "type": "string" }, "minItems": 2, "maxItems": 2 } },
                    "buckets": { "type": "array", "description": "key-value buckets besides `default`", "items": { "type": "string" } },
                    "migrations": { "type": "array", "description": "SQL migrations applied once each, in order, before the revision takes traffic", "items": { "$ref": "#/components/schemas/Migration" } } } },
                "Migration": { "type": "object", "required": ["name", "sql"], "properties": { "name": { "type": "string" }, "sql": { "type": "string" } } },
                "SecretList": { "type": "object", "properties": { "secrets": { "type": "array", "items": { "type": "object", "properties": { "name": { "type": "string" }, "updated_at": { "type": "integer" } } } } } },
                "SecretValue": { "type": "object", "required": ["value"], "properties": { "value": { "type": "string" } } },
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
                "Uploaded": { "type": "object", "properties": { "sha256": { "type": "string" } } }
            }
        },
        "security": [ { "bearer": [] } ],
        "paths": {
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
