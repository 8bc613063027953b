//! `p3-data`: a WASI 0.3 HTTP service that reaches the platform's data interfaces (the
//! same `tessera-guest` modules 0.2 guests use), to check a 0.3 component gets them too.
//! Below any route prefix:
//! - `.../visit`: increments `visits` in the `default` bucket, answers `visits N`;
//! - `.../note?text=T`: inserts T into its SQL table `notes`, answers `notes N`;
//! - `.../config/KEY`: the configuration value, or 404;
//! - `.../publish?topic=T`: publishes `hello` to T, answers `published ID`.
//!
//! Failures answer 500 with the platform's message.

use tessera_guest::{config, kv, messaging, params, sql};
use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(P3Data);

struct P3Data;

/// A response with `status` whose body is `body`.
fn answer(status: u16, body: String) -> Result<Response, ErrorCode> {
    let (mut contents, contents_rx) = wit_stream::new();
    let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(Fields::new(), Some(contents_rx), trailers_rx);
    drop(trailers);
    let _ = response.set_status_code(status);
    wit_bindgen::spawn_local(async move {
        contents.write_all(body.into_bytes()).await;
    });
    Ok(response)
}

/// The value after `name=` in the query.
fn query<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn serve(path: &str) -> Result<String, String> {
    let route = path.split('?').next().unwrap_or_default();
    if route.ends_with("/visit") {
        let bucket = kv::open("default").map_err(|e| e.message().to_string())?;
        let visits = kv::increment(&bucket, "visits", 1).map_err(|e| e.message().to_string())?;
        return Ok(format!("visits {visits}\n"));
    }
    if route.ends_with("/note") {
        let text = query(path, "text").unwrap_or("-");
        let sql_error = |e: sql::Error| e.message().to_string();
        sql::execute(
            "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)",
            &params![],
        )
        .map_err(sql_error)?;
        sql::execute("INSERT INTO notes (text) VALUES (?)", &params![text]).map_err(sql_error)?;
        let rows = sql::query("SELECT count(*) AS n FROM notes", &params![]).map_err(sql_error)?;
        let n = rows
            .iter()
            .next()
            .and_then(|row| row.get("n").and_then(sql::Value::as_integer))
            .unwrap_or(-1);
        return Ok(format!("notes {n}\n"));
    }
    if let Some((_, key)) = route.rsplit_once("/config/") {
        return match config::get(key).map_err(|e| e.message().to_string())? {
            Some(value) => Ok(value),
            None => Err(format!("404 no configuration value `{key}`")),
        };
    }
    if route.ends_with("/publish") {
        let topic = query(path, "topic").unwrap_or("p3");
        let id = messaging::publish(topic, b"hello", Some("text/plain"))
            .map_err(|e| e.message().to_string())?;
        return Ok(format!("published {id}\n"));
    }
    Err("404 no such route".to_string())
}

impl wasip3::exports::http::handler::Guest for P3Data {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_default();
        match serve(&path) {
            Ok(body) => answer(200, body),
            Err(message) => match message.strip_prefix("404 ") {
                Some(message) => answer(404, format!("{message}\n")),
                None => answer(500, format!("{message}\n")),
            },
        }
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
