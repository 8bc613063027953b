//! `inspect`: answers with JSON describing what the guest can see (request,
//! environment, arguments, filesystem), to check the host's isolation.

use std::collections::BTreeMap;

use test_programs::{json_opt, json_string, method_name, respond, scheme_name};
use wasip2::http::types::{IncomingRequest, ResponseOutparam};

struct Inspect;

wasip2::http::proxy::export!(Inspect);

impl wasip2::exports::http::incoming_handler::Guest for Inspect {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        // These lines let tests check how the host captures guest output.
        println!("inspect: handling {}", test_programs::path(&request));
        eprintln!("inspect: stderr line");

        // A map keeps the output sorted, and a repeated name keeps its last value.
        let headers: BTreeMap<String, String> = request
            .headers()
            .entries()
            .into_iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(&value).into_owned();
                (name.to_ascii_lowercase(), value)
            })
            .collect();
        let headers: Vec<String> = headers
            .iter()
            .map(|(name, value)| format!("{}: {}", json_string(name), json_string(value)))
            .collect();
        let env: Vec<String> = std::env::vars()
            .map(|(key, value)| json_string(&format!("{key}={value}")))
            .collect();
        let args: Vec<String> = std::env::args().map(|arg| json_string(&arg)).collect();
        let fs_root = match std::fs::read_dir("/") {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };
        let file_read = match std::fs::read_to_string("/etc/hostname") {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        };

        let method = request.method();
        let path_with_query = request.path_with_query();
        let authority = request.authority();
        let scheme = request.scheme();
        let json = format!(
            "{{\"method\": {}, \"path_with_query\": {}, \"authority\": {}, \"scheme\": {}, \
             \"headers\": {{{}}}, \"env\": [{}], \"args\": [{}], \"fs_root\": {}, \
             \"file_read\": {}}}\n",
            json_string(method_name(&method)),
            json_opt(path_with_query.as_deref()),
            json_opt(authority.as_deref()),
            json_opt(scheme.as_ref().map(scheme_name)),
            headers.join(", "),
            env.join(", "),
            args.join(", "),
            json_string(&fs_root),
            json_string(&file_read),
        );
        respond(response_out, 200, "application/json", json.as_bytes());
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
