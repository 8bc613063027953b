//! `echo`: streams the request body back as the response body, chunk by
//! chunk, so that large uploads go through in constant memory.

use test_programs::{method_name, start_response, write_all};
use wasip2::http::types::{IncomingRequest, OutgoingBody, ResponseOutparam};
use wasip2::io::streams::StreamError;

struct Echo;

wasip2::http::proxy::export!(Echo);

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = request.method();
        let (response, outgoing) = start_response(
            200,
            &[
                ("content-type", "application/octet-stream"),
                ("x-echo-method", method_name(&method)),
            ],
        );
        // Answer first: the client starts receiving while it is still sending.
        ResponseOutparam::set(response_out, Ok(response));

        let incoming = request.consume().expect("request body consumed twice");
        let input = incoming.stream().expect("request body stream taken twice");
        let output = outgoing.write().expect("response body stream taken twice");
        let complete = loop {
            match input.blocking_read(64 * 1024) {
                Ok(chunk) => {
                    // Failing to write means the client went away: stop quietly.
                    if write_all(&output, &chunk).is_err() {
                        break false;
                    }
                }
                Err(StreamError::Closed) => break true,
                Err(StreamError::LastOperationFailed(e)) => {
                    eprintln!("echo: reading request body failed: {}", e.to_debug_string());
                    break false;
                }
            }
        };
        // Streams are children of their bodies and must be dropped first.
        drop(input);
        drop(incoming);
        drop(output);
        // An unfinished body tells the host the response is incomplete.
        if complete {
            OutgoingBody::finish(outgoing, None).expect("finishing the response body");
        }
    }
}

// A bin target needs `main`; the host only ever calls the exported handler.
fn main() {}
