//! `data`: drives the service's key-value store, configuration and SQL database over HTTP,
//! and benchmarks them from inside the guest. Tests load it as several services to show
//! that each one sees only its own data.
//!
//! Routes (bodies are JSON unless said otherwise; `{bucket}` and `{key}` are percent-decoded):
//!
//! - `GET|PUT|DELETE /kv/{bucket}/{key}`: the raw value; `GET ...?exists` asks whether it is set
//! - `GET /kv/{bucket}?cursor=C`: one page of keys
//! - `POST /kv/{bucket}/{key}/incr?by=N`, `.../cas-incr`, `.../cas` (header `x-expect`)
//! - `POST /kv/{bucket}/_batch` with `{"set":{..},"get":[..],"delete":[..]}`
//! - `GET /config`, `GET /config/{key}` (text)
//! - `POST /sql/query`, `/sql/execute` with `{"sql":..,"params":[..]}`, `/sql/batch` with a list
//! - `GET /bench/{kv-get,kv-set,sql-query,sql-insert}?n=N`
//! - `POST /on/{name}`: an event handler. It counts deliveries in the `default` bucket
//!   (`count:{name}`, and `seen:{name}:{ce-id}` per message), keeps the last delivery's
//!   CloudEvents headers and body as JSON in `last:{name}`, answers 500 while the key
//!   `fail:{name}` is set (counting `failed:{name}`), and waits `?sleep_ms=N` first
//! - `POST /publish/{topic}?status=N`: publishes the body to `topic`, then answers `N`
//!   (default 200) with `{"id":..}`
//!
//! Failures are `{"error":KIND,"message":..}`, KIND being the WIT case name: 404 for
//! `no-such-store` and `not-found`, 409 for `cas-failed`, 400 otherwise.

use serde_json::{Map, Value as Json, json};
use tessera_guest::kv::{self, Cas, CasError};
use tessera_guest::sql::{self, Changes, Statement, Value};
use tessera_guest::{config, messaging, params};
use test_programs::{percent_decode, query_param, read_body, respond};
use wasip2::clocks::monotonic_clock;
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

/// How often `cas-incr` tries again after losing a race before it gives up.
const MAX_CAS_RETRIES: u64 = 1000;
/// Benchmarks run this many operations when the request gives no `n`.
const DEFAULT_BENCH_OPS: usize = 1000;
/// The most operations one benchmark request may ask for, to bound the guest's memory.
const MAX_BENCH_OPS: usize = 1_000_000;
/// Rows in the `bench` table that `sql-query` reads from.
const BENCH_ROWS: i64 = 1000;

struct Data;

wasip2::http::proxy::export!(Data);

impl wasip2::exports::http::incoming_handler::Guest for Data {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let reply = route(&request).unwrap_or_else(|failure| failure);
        respond(response_out, reply.status, reply.content_type, &reply.body);
    }
}

/// A complete response. Failures are replies too, so handlers can use `?` on every call.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

type Result<T, E = Reply> = std::result::Result<T, E>;

impl Reply {
    fn json(status: u16, value: &Json) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    fn ok(value: &Json) -> Reply {
        Reply::json(200, value)
    }

    fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: "text/plain",
            body: Vec::new(),
        }
    }

    fn error(status: u16, kind: &str, message: &str) -> Reply {
        Reply::json(status, &json!({ "error": kind, "message": message }))
    }

    /// A failure that needs no explanation, such as `{"error":"not-found"}`.
    fn bare_error(status: u16, kind: &str) -> Reply {
        Reply::json(status, &json!({ "error": kind }))
    }

    fn bad_request(message: impl AsRef<str>) -> Reply {
        Reply::error(400, "bad-request", message.as_ref())
    }
}

impl From<kv::Error> for Reply {
    fn from(error: kv::Error) -> Reply {
        let status = match error {
            kv::Error::NoSuchStore => 404,
            _ => 400,
        };
        Reply::error(status, error.kind(), error.message())
    }
}

impl From<CasError> for Reply {
    fn from(error: CasError) -> Reply {
        match error {
            CasError::StoreError(error) => error.into(),
            CasError::CasFailed(_) => Reply::bare_error(409, "cas-failed"),
        }
    }
}

impl From<sql::Error> for Reply {
    fn from(error: sql::Error) -> Reply {
        Reply::error(400, error.kind(), error.message())
    }
}

impl From<config::Error> for Reply {
    fn from(error: config::Error) -> Reply {
        Reply::error(400, error.kind(), error.message())
    }
}

fn route(request: &IncomingRequest) -> Result<Reply> {
    let method = request.method();
    let path = test_programs::path(request);
    let segments: Vec<String> = path
        .strip_prefix('/')
        .unwrap_or(&path)
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    // The service may be routed under any prefix (`/a/kv/...`): skip to the protocol.
    let start = segments
        .iter()
        .position(|s| matches!(*s, "kv" | "config" | "sql" | "bench" | "on" | "publish"))
        .unwrap_or(segments.len());
    match (&method, &segments[start..]) {
        (Method::Get, ["kv", bucket]) => kv_list(request, bucket),
        (Method::Post, ["kv", bucket, "_batch"]) => kv_batch(request, bucket),
        (Method::Get, ["kv", bucket, key]) if query_param(request, "exists").is_some() => {
            let exists = kv::open(bucket)?.exists(key)?;
            Ok(Reply::ok(&json!({ "exists": exists })))
        }
        (Method::Get, ["kv", bucket, key]) => match kv::open(bucket)?.get(key)? {
            Some(value) => Ok(Reply {
                status: 200,
                content_type: "application/octet-stream",
                body: value,
            }),
            None => Err(Reply::bare_error(404, "not-found")),
        },
        (Method::Put, ["kv", bucket, key]) => {
            kv::open(bucket)?.set(key, &read_body(request))?;
            Ok(Reply::no_content())
        }
        (Method::Delete, ["kv", bucket, key]) => {
            kv::open(bucket)?.delete(key)?;
            Ok(Reply::no_content())
        }
        (Method::Post, ["kv", bucket, key, "incr"]) => {
            let by = match query_param(request, "by") {
                Some(by) => by
                    .parse()
                    .map_err(|_| Reply::bad_request(format!("`by` is not an integer: {by}")))?,
                None => 1,
            };
            let value = kv::increment(&kv::open(bucket)?, key, by)?;
            Ok(Reply::ok(&json!({ "value": value })))
        }
        (Method::Post, ["kv", bucket, key, "cas-incr"]) => kv_cas_incr(bucket, key),
        (Method::Post, ["kv", bucket, key, "cas"]) => kv_cas(request, bucket, key),
        (Method::Get, ["config"]) => {
            let all: Map<String, Json> = config::get_all()?
                .into_iter()
                .map(|(key, value)| (key, Json::String(value)))
                .collect();
            Ok(Reply::ok(&Json::Object(all)))
        }
        (Method::Get, ["config", key]) => match config::get(key)? {
            Some(value) => Ok(Reply {
                status: 200,
                content_type: "text/plain; charset=utf-8",
                body: value.into_bytes(),
            }),
            None => Err(Reply::bare_error(404, "not-found")),
        },
        (Method::Post, ["sql", "query"]) => {
            let statement = statement_from_json(&read_json(request)?)?;
            let rows = sql::query(&statement.sql, &statement.params)?;
            let table: Vec<Json> = rows
                .rows
                .iter()
                .map(|row| row.iter().map(value_to_json).collect())
                .collect();
            Ok(Reply::ok(
                &json!({ "columns": rows.columns, "rows": table }),
            ))
        }
        (Method::Post, ["sql", "execute"]) => {
            let statement = statement_from_json(&read_json(request)?)?;
            let changes = sql::execute(&statement.sql, &statement.params)?;
            Ok(Reply::ok(&changes_to_json(&changes)))
        }
        (Method::Post, ["sql", "batch"]) => {
            let body = read_json(request)?;
            let statements = body
                .as_array()
                .ok_or_else(|| Reply::bad_request("the body must be a list of statements"))?
                .iter()
                .map(statement_from_json)
                .collect::<Result<Vec<_>>>()?;
            let changes = sql::batch(&statements)?;
            Ok(Reply::ok(&changes.iter().map(changes_to_json).collect()))
        }
        (Method::Get, ["bench", op]) => bench(request, op),
        (Method::Post, ["on", name]) => on_event(request, name),
        (Method::Post, ["publish", topic]) => {
            let status = match query_param(request, "status") {
                Some(s) => s
                    .parse()
                    .map_err(|_| Reply::bad_request(format!("`status` is not a number: {s}")))?,
                None => 200,
            };
            let content_type = header(request, "content-type");
            let id = messaging::publish(topic, &read_body(request), content_type.as_deref())
                .map_err(|e| Reply::error(400, e.kind(), e.message()))?;
            Ok(Reply::json(status, &json!({ "id": id })))
        }
        _ => Err(Reply::error(
            404,
            "not-found",
            &format!("no route for {path}"),
        )),
    }
}

fn kv_list(request: &IncomingRequest, bucket: &str) -> Result<Reply> {
    let cursor = query_param(request, "cursor");
    let page = kv::open(bucket)?.list_keys(cursor.as_deref())?;
    Ok(Reply::ok(
        &json!({ "keys": page.keys, "cursor": page.cursor }),
    ))
}

/// Reads the counter through a `cas` handle and swaps in one more, starting over whenever
/// another request changed it in between.
fn kv_cas_incr(bucket: &str, key: &str) -> Result<Reply> {
    let bucket = kv::open(bucket)?;
    for retries in 0..=MAX_CAS_RETRIES {
        let cas = Cas::new(&bucket, key)?;
        let current = match cas.current()? {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
                .ok_or_else(|| Reply::bad_request(format!("the value of {key} is no integer")))?,
        };
        let value = current
            .checked_add(1)
            .ok_or_else(|| Reply::bad_request("the counter overflows"))?;
        match kv::swap(cas, value.to_string().as_bytes()) {
            Ok(()) => return Ok(Reply::ok(&json!({ "value": value, "retries": retries }))),
            Err(CasError::CasFailed(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(Reply::bare_error(409, "cas-failed"))
}

/// Swaps in the body if the key still holds `x-expect` (or is absent, without that header).
fn kv_cas(request: &IncomingRequest, bucket: &str, key: &str) -> Result<Reply> {
    let expected = request.headers().get("x-expect").into_iter().next();
    let value = read_body(request);
    let bucket = kv::open(bucket)?;
    let cas = Cas::new(&bucket, key)?;
    if cas.current()? != expected {
        return Err(Reply::bare_error(409, "cas-failed"));
    }
    kv::swap(cas, &value)?;
    Ok(Reply::no_content())
}

/// Runs set-many, get-many and delete-many in that order, each only when asked for.
fn kv_batch(request: &IncomingRequest, bucket: &str) -> Result<Reply> {
    let body = read_json(request)?;
    let bucket = kv::open(bucket)?;
    if let Some(set) = body.get("set") {
        let pairs = set
            .as_object()
            .ok_or_else(|| Reply::bad_request("`set` must be an object"))?
            .iter()
            .map(|(key, value)| match value.as_str() {
                Some(value) => Ok((key.clone(), value.as_bytes().to_vec())),
                None => Err(Reply::bad_request(format!("`set.{key}` must be a string"))),
            })
            .collect::<Result<Vec<_>>>()?;
        kv::set_many(&bucket, &pairs)?;
    }
    let mut got = Map::new();
    if let Some(get) = body.get("get") {
        let keys = string_list(get, "get")?;
        let values = kv::get_many(&bucket, &keys)?;
        for (key, value) in keys.into_iter().zip(values) {
            let value = value.map_or(Json::Null, |(_, bytes)| {
                Json::String(String::from_utf8_lossy(&bytes).into_owned())
            });
            got.insert(key, value);
        }
    }
    if let Some(delete) = body.get("delete") {
        kv::delete_many(&bucket, &string_list(delete, "delete")?)?;
    }
    Ok(Reply::ok(&json!({ "got": got })))
}

fn string_list(json: &Json, field: &str) -> Result<Vec<String>> {
    json.as_array()
        .and_then(|items| {
            items
                .iter()
                .map(|item| item.as_str().map(str::to_string))
                .collect()
        })
        .ok_or_else(|| Reply::bad_request(format!("`{field}` must be a list of strings")))
}

fn read_json(request: &IncomingRequest) -> Result<Json> {
    serde_json::from_slice(&read_body(request))
        .map_err(|e| Reply::bad_request(format!("the body is not JSON: {e}")))
}

/// `{"sql": "...", "params": [...]}`, where `params` may be left out.
fn statement_from_json(json: &Json) -> Result<Statement> {
    let sql = json
        .get("sql")
        .and_then(Json::as_str)
        .ok_or_else(|| Reply::bad_request("a statement needs `sql`, a string"))?;
    let params = match json.get("params") {
        None => Vec::new(),
        Some(Json::Array(params)) => params.iter().map(value_from_json).collect::<Result<_>>()?,
        Some(_) => return Err(Reply::bad_request("`params` must be a list")),
    };
    Ok(Statement::new(sql, params))
}

/// JSON to SQL: a number with a fraction or an exponent is `real`, other numbers `integer`,
/// `{"blob": "<hex>"}` a blob, and `true`/`false` 1/0 as SQLite stores booleans.
fn value_from_json(json: &Json) -> Result<Value> {
    match json {
        Json::Null => Ok(Value::Null),
        Json::Bool(flag) => Ok(Value::from(*flag)),
        Json::Number(number) => {
            if let Some(integer) = number.as_i64() {
                Ok(Value::Integer(integer))
            } else if number.is_f64() {
                Ok(Value::Real(number.as_f64().unwrap_or(f64::NAN)))
            } else {
                Err(Reply::bad_request(format!(
                    "{number} does not fit in 64 bits"
                )))
            }
        }
        Json::String(text) => Ok(Value::Text(text.clone())),
        Json::Object(object) => match (object.len(), object.get("blob")) {
            (1, Some(Json::String(hex))) => hex::decode(hex)
                .map(Value::Blob)
                .map_err(|e| Reply::bad_request(format!("`blob` is not hex: {e}"))),
            _ => Err(Reply::bad_request(format!("not a SQL value: {json}"))),
        },
        Json::Array(_) => Err(Reply::bad_request(format!("not a SQL value: {json}"))),
    }
}

/// SQL to JSON, the inverse of [`value_from_json`]. Reals that JSON cannot write (infinities)
/// become `null`.
fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Integer(integer) => Json::from(*integer),
        Value::Real(real) => serde_json::Number::from_f64(*real).map_or(Json::Null, Json::Number),
        Value::Text(text) => Json::String(text.clone()),
        Value::Blob(bytes) => json!({ "blob": hex::encode(bytes) }),
    }
}

fn changes_to_json(changes: &Changes) -> Json {
    json!({
        "rows_affected": changes.rows_affected,
        "last_insert_id": changes.last_insert_id,
    })
}

/// Times `n` operations one by one with the monotonic clock, after a set-up that is not timed.
fn bench(request: &IncomingRequest, op: &str) -> Result<Reply> {
    let n = match query_param(request, "n") {
        None => DEFAULT_BENCH_OPS,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_BENCH_OPS).contains(n))
            .ok_or_else(|| {
                Reply::bad_request(format!(
                    "`n` must be a whole number from 1 to {MAX_BENCH_OPS}"
                ))
            })?,
    };
    let value = [b'x'; 100];
    let durations = match op {
        "kv-get" => {
            let bucket = kv::open("default")?;
            bucket.set("bench-key", &value)?;
            time(n, |_| bucket.get("bench-key").map(drop))?
        }
        "kv-set" => {
            let bucket = kv::open("default")?;
            time(n, |i| bucket.set(&format!("bench-{i}"), &value))?
        }
        "sql-query" => {
            prepare_bench_table()?;
            time(n, |i| {
                let id = i64::try_from(i).unwrap_or(0) % BENCH_ROWS + 1;
                sql::query(
                    "SELECT id, name, score FROM bench WHERE id = ?",
                    &params![id],
                )
                .map(drop)
            })?
        }
        "sql-insert" => {
            // New rows get ids after the ones `sql-query` reads, so the two can share a table.
            prepare_bench_table()?;
            time(n, |i| {
                sql::execute(
                    "INSERT INTO bench (name, score) VALUES (?, ?)",
                    &params![format!("inserted-{i}"), 0.5],
                )
                .map(drop)
            })?
        }
        _ => {
            let message = format!("no benchmark called {op}");
            return Err(Reply::error(404, "not-found", &message));
        }
    };
    Ok(Reply::ok(&summary(op, durations)))
}

/// Creates the `bench` table and fills it with rows 1 to [`BENCH_ROWS`] when it is empty.
fn prepare_bench_table() -> Result<()> {
    sql::execute(
        "CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, name TEXT, score REAL)",
        &[],
    )?;
    let count = sql::query("SELECT COUNT(*) AS n FROM bench", &[])?;
    if count.get(0, "n").and_then(Value::as_integer) == Some(0) {
        // `OR IGNORE`: a concurrent request may be filling the table at the same time.
        sql::execute(
            "WITH RECURSIVE seq(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM seq WHERE x < ?) \
             INSERT OR IGNORE INTO bench (id, name, score) \
             SELECT x, 'name-' || x, x * 0.25 FROM seq",
            &params![BENCH_ROWS],
        )?;
    }
    Ok(())
}

/// Runs `op(0..n)`, returning each call's duration in nanoseconds.
fn time<E: Into<Reply>>(n: usize, mut op: impl FnMut(usize) -> Result<(), E>) -> Result<Vec<u64>> {
    let mut durations = Vec::with_capacity(n);
    for i in 0..n {
        let start = monotonic_clock::now();
        op(i).map_err(Into::into)?;
        durations.push(monotonic_clock::now().saturating_sub(start));
    }
    Ok(durations)
}

fn summary(op: &str, mut durations: Vec<u64>) -> Json {
    durations.sort_unstable();
    let n = durations.len();
    let total_ns: u64 = durations.iter().sum();
    // Nearest rank: the smallest duration that at least `p` percent of operations reach.
    let percentile = |p: usize| durations[(p * n).div_ceil(100).clamp(1, n) - 1];
    let ops_per_sec = n as f64 * 1e9 / total_ns.max(1) as f64;
    json!({
        "op": op,
        "n": n,
        "total_ns": total_ns,
        "p50_ns": percentile(50),
        "p99_ns": percentile(99),
        "ops_per_sec": ops_per_sec,
    })
}

// A bin target needs `main`; the host only ever calls the exported handler.
/// The first value of a request header, as text.
fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn on_event(request: &IncomingRequest, name: &str) -> Result<Reply> {
    if let Some(ms) = query_param(request, "sleep_ms").and_then(|v| v.parse::<u64>().ok()) {
        monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    }
    let bucket = kv::open("default")?;
    let id = header(request, "ce-id").unwrap_or_default();
    kv::increment(&bucket, &format!("count:{name}"), 1)?;
    kv::increment(&bucket, &format!("seen:{name}:{id}"), 1)?;
    let body = read_body(request);
    let mut last = Map::new();
    for field in [
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "content-type",
        "x-tessera-attempt",
    ] {
        last.insert(
            field.into(),
            header(request, field).map_or(Json::Null, Json::String),
        );
    }
    last.insert(
        "body".into(),
        Json::String(String::from_utf8_lossy(&body).into_owned()),
    );
    bucket.set(
        &format!("last:{name}"),
        Json::Object(last).to_string().as_bytes(),
    )?;
    if bucket.exists(&format!("fail:{name}"))? {
        kv::increment(&bucket, &format!("failed:{name}"), 1)?;
        return Err(Reply::error(500, "failing", "told to fail"));
    }
    Ok(Reply::json(200, &json!({ "handled": name })))
}

fn main() {}
