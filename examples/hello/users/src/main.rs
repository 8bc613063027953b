//! The `users` service: a small JSON API over the `users` table of the
//! service's own SQL database, which `migrations/0001_users.sql` creates and
//! fills. `GET /users` lists the users, `GET /users/<id>` shows one, and
//! `POST /users` with `{"name": ..., "email": ...}` adds one.

use serde_json::Value as Json;
use tessera_guest::{params, sql};
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// A new user is a few dozen bytes; much larger bodies are refused unread.
const MAX_BODY_BYTES: usize = 16 * 1024;

struct User {
    id: i64,
    name: String,
    email: String,
}

impl User {
    /// A row of `SELECT id, name, email FROM users`.
    fn from_row(row: sql::Row<'_>) -> Option<User> {
        Some(User {
            id: row.get("id")?.as_integer()?,
            name: row.get("name")?.as_text()?.to_string(),
            email: row.get("email")?.as_text()?.to_string(),
        })
    }

    /// The user as a JSON object, fields in the order people read them.
    fn to_json(&self) -> String {
        format!(
            "{{\"id\":{},\"name\":{},\"email\":{}}}",
            self.id,
            Json::from(self.name.as_str()),
            Json::from(self.email.as_str())
        )
    }
}

/// A complete JSON response.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

struct Users;

wasip2::http::proxy::export!(Users);

impl wasip2::exports::http::incoming_handler::Guest for Users {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        respond(response_out, answer(&request));
    }
}

fn answer(request: &IncomingRequest) -> Reply {
    let path_with_query = request.path_with_query().unwrap_or_default();
    let path = path_with_query.split('?').next().unwrap_or_default();
    let method = request.method();
    match path.strip_prefix("/users") {
        Some("" | "/") => match method {
            Method::Get => list(),
            Method::Post => create(request),
            _ => method_not_allowed("GET, POST"),
        },
        Some(rest) if rest.starts_with('/') && !rest[1..].contains('/') => match method {
            Method::Get => match rest[1..].parse::<i64>() {
                Ok(id) => show(id),
                Err(_) => error(400, "user id must be a whole number"),
            },
            _ => method_not_allowed("GET"),
        },
        _ => error(404, "not found"),
    }
}

fn list() -> Reply {
    let rows = match sql::query("SELECT id, name, email FROM users ORDER BY id", &[]) {
        Ok(rows) => rows,
        Err(e) => return database_error(&e),
    };
    let users: Vec<String> = rows
        .iter()
        .filter_map(User::from_row)
        .map(|user| user.to_json())
        .collect();
    json(200, format!("[{}]", users.join(",")))
}

fn show(id: i64) -> Reply {
    let sql = "SELECT id, name, email FROM users WHERE id = ?";
    match sql::query(sql, &params![id]) {
        Ok(rows) => match rows.iter().find_map(User::from_row) {
            Some(user) => json(200, user.to_json()),
            None => error(404, &format!("no user with id {id}")),
        },
        Err(e) => database_error(&e),
    }
}

fn create(request: &IncomingRequest) -> Reply {
    let body = match read_body(request) {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let Ok(input) = serde_json::from_slice::<Json>(&body) else {
        return error(
            400,
            "the body must be JSON: {\"name\": ..., \"email\": ...}",
        );
    };
    let field = |name: &str| {
        input
            .get(name)
            .and_then(Json::as_str)
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .map(str::to_string)
    };
    let (Some(name), Some(email)) = (field("name"), field("email")) else {
        return error(400, "`name` and `email` must be non-empty strings");
    };
    let insert = "INSERT INTO users (name, email) VALUES (?, ?)";
    let id = match sql::execute(insert, &params![&name, &email]) {
        Ok(changes) => changes.last_insert_id,
        // The only constraint a well-formed new user can break is the unique email.
        Err(sql::Error::ConstraintViolation(_)) => {
            return error(409, &format!("a user with email {email} already exists"));
        }
        Err(e) => return database_error(&e),
    };
    let Some(id) = id else {
        return error(500, "the database reported no id for the new user");
    };
    let user = User { id, name, email };
    let mut reply = json(201, user.to_json());
    reply.headers.push(("location", format!("/users/{id}")));
    reply
}

/// Reads the whole request body, refusing bodies over [`MAX_BODY_BYTES`].
fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, Reply> {
    let body = request
        .consume()
        .map_err(|()| error(500, "request body already read"))?;
    let stream = body
        .stream()
        .map_err(|()| error(500, "request body stream already taken"))?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(4096) {
            Ok(chunk) if data.len() + chunk.len() > MAX_BODY_BYTES => {
                return Err(error(413, "the body is too large"));
            }
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(data),
            Err(StreamError::LastOperationFailed(e)) => {
                let message = format!("reading the body: {}", e.to_debug_string());
                return Err(error(400, &message));
            }
        }
    }
}

fn json(status: u16, body: String) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body + "\n",
    }
}

fn error(status: u16, message: &str) -> Reply {
    json(status, format!("{{\"error\":{}}}", Json::from(message)))
}

fn method_not_allowed(allow: &str) -> Reply {
    let mut reply = error(405, "method not allowed");
    reply.headers.push(("allow", allow.to_string()));
    reply
}

/// A failure of the database itself: logged, and reported without details.
fn database_error(e: &sql::Error) -> Reply {
    eprintln!("database error ({}): {}", e.kind(), e.message());
    error(500, "database error")
}

/// Sends a complete JSON response.
fn respond(out: ResponseOutparam, reply: Reply) {
    let mut entries = vec![("content-type".to_string(), b"application/json".to_vec())];
    entries.extend(
        reply
            .headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())),
    );
    let response = OutgoingResponse::new(Fields::from_list(&entries).expect("valid headers"));
    response
        .set_status_code(reply.status)
        .expect("valid status");
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("stream taken once");
    // This call takes at most 4096 bytes at a time, and the list grows with every user.
    for chunk in reply.body.as_bytes().chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .expect("writing the body");
    }
    // The stream belongs to the body and must be dropped before `finish`.
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

// A bin target needs `main`; the platform only calls the exported handler.
fn main() {}
