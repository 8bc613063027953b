//! The `users` service: a small read-only JSON API over users built into the
//! program. `GET /users` lists them, `GET /users/<id>` shows one.

use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct User {
    id: u64,
    name: &'static str,
    email: &'static str,
}

const USERS: &[User] = &[
    User {
        id: 1,
        name: "Ada Lovelace",
        email: "ada@example.com",
    },
    User {
        id: 2,
        name: "Grace Hopper",
        email: "grace@example.com",
    },
    User {
        id: 42,
        name: "Alan Turing",
        email: "alan@example.com",
    },
];

struct Users;

wasip2::http::proxy::export!(Users);

impl wasip2::exports::http::incoming_handler::Guest for Users {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        if !matches!(request.method(), Method::Get) {
            let error = error_json("method not allowed");
            return respond(response_out, 405, &[("allow", "GET")], &error);
        }
        let path_with_query = request.path_with_query().unwrap_or_default();
        let path = path_with_query.split('?').next().unwrap_or_default();
        let (status, body) = match path.strip_prefix("/users") {
            Some("" | "/") => {
                let all: Vec<String> = USERS.iter().map(user_json).collect();
                (200, format!("[{}]\n", all.join(",")))
            }
            Some(rest) if rest.starts_with('/') && !rest[1..].contains('/') => {
                match rest[1..].parse::<u64>() {
                    Ok(id) => match USERS.iter().find(|user| user.id == id) {
                        Some(user) => (200, format!("{}\n", user_json(user))),
                        None => (404, error_json(&format!("no user with id {id}"))),
                    },
                    Err(_) => (400, error_json("user id must be a whole number")),
                }
            }
            _ => (404, error_json("not found")),
        };
        respond(response_out, status, &[], &body);
    }
}

fn user_json(user: &User) -> String {
    format!(
        "{{\"id\":{},\"name\":{},\"email\":{}}}",
        user.id,
        json_string(user.name),
        json_string(user.email)
    )
}

fn error_json(message: &str) -> String {
    format!("{{\"error\":{}}}\n", json_string(message))
}

/// `s` as a JSON string literal. Escaping keeps the output valid whatever
/// text the data holds.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Sends a complete JSON response with extra `headers`.
fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &str) {
    let mut entries = vec![("content-type".to_string(), b"application/json".to_vec())];
    entries.extend(
        headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())),
    );
    let response = OutgoingResponse::new(Fields::from_list(&entries).expect("valid headers"));
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("stream taken once");
    // Bodies here are small, under the 4096-byte limit of this call.
    stream
        .blocking_write_and_flush(body.as_bytes())
        .expect("writing the body");
    // The stream belongs to the body and must be dropped before `finish`.
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

// A bin target needs `main`; the platform only calls the exported handler.
fn main() {}
