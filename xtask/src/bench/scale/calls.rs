//! Internal call overhead: `hello` asked directly, through one in-process call from the
//! `fetch` guest to `http://hello.internal`, and through a socket to a second node's
//! gateway (a node refuses guests' requests to its own listeners).

use std::fmt::Write as _;

use anyhow::Result;

use super::super::Running;
use super::super::client::Connection;
use super::super::report::{format_duration, render_table};
use super::{
    HELLO_BODY, Latencies, Options, REQUEST_TIMEOUT, WARMUP_REQUESTS, difference, expect_body,
};

pub struct Calls {
    /// The second node's gateway port, which the socket variant's URL names.
    port: u16,
    direct: Latencies,
    internal: Latencies,
    socket: Latencies,
}

/// The three requests, in the order each round sends them.
fn paths(port: u16) -> [String; 3] {
    [
        "/hello".to_owned(),
        "/front?url=http://hello.internal/hello".to_owned(),
        format!("/front?url=http://127.0.0.1:{port}/hello"),
    ]
}

/// Times the three requests on `node`, whose `front` may call `peer`'s gateway.
pub fn measure(node: &mut Running, peer: &mut Running, options: &Options) -> Result<Calls> {
    let port = peer.server.port();
    let paths = paths(port);
    // The fetch guest answers with the callee's status and body.
    let relayed = format!("status=200\n{HELLO_BODY}");
    let expected = [HELLO_BODY, relayed.as_str(), relayed.as_str()];
    println!(
        "==> internal calls: {WARMUP_REQUESTS} + {} rounds of GET {}",
        options.requests,
        paths.join(", GET ")
    );
    let mut conn = Connection::open(node.server.port(), REQUEST_TIMEOUT)?;
    let mut times: [Vec<_>; 3] = Default::default();
    // Interleaved, so a change in the machine's load during the run affects all three
    // alike.
    for round in 0..WARMUP_REQUESTS + options.requests {
        for ((path, expected), times) in paths.iter().zip(expected).zip(&mut times) {
            let (elapsed, reply) = conn.timed_get(path)?;
            expect_body(path, &reply.body, expected)?;
            if round >= WARMUP_REQUESTS {
                times.push(elapsed);
            }
        }
    }
    node.server.ensure_running()?;
    peer.server.ensure_running()?;
    let [direct, internal, socket] = times.map(Latencies::of);
    Ok(Calls {
        port,
        direct,
        internal,
        socket,
    })
}

impl Calls {
    pub fn table(&self) -> String {
        let [direct, internal, socket] = paths(self.port);
        let rows = [
            (format!("direct: `GET {direct}`"), &self.direct),
            (
                format!("one internal hop: `GET {internal}`"),
                &self.internal,
            ),
            (
                format!(
                    "through another node's gateway: `GET {}`",
                    socket.replace(&self.port.to_string(), "PORT")
                ),
                &self.socket,
            ),
        ];
        let mut cells = vec![["request", "n", "p50", "p99"].map(str::to_owned)];
        for (label, l) in rows {
            cells.push([
                label,
                l.n.to_string(),
                format_duration(l.p50),
                format_duration(l.p99),
            ]);
        }
        render_table(&cells, &[0])
    }

    pub fn lines(&self) -> Vec<String> {
        vec![
            format!(
                "internal call overhead at p50 (one internal hop − direct): {}",
                difference(self.internal.p50, self.direct.p50)
            ),
            format!(
                "the same call to another node's gateway − direct: {}; what in-process \
                 dispatch saves over the socket (through the socket − one internal hop): {}",
                difference(self.socket.p50, self.direct.p50),
                difference(self.socket.p50, self.internal.p50)
            ),
        ]
    }

    pub fn markdown(&self, md: &mut String) {
        let _ = writeln!(md, "### Internal calls\n");
        let _ = writeln!(
            md,
            "On the same node: `front` is the `fetch` guest of crates/test-programs (it makes \
             the outgoing request named by `?url=`, reads the whole answer and replies \
             `status=200` plus that body) with `outbound = [\"http://hello.internal\", \
             \"http://127.0.0.1:PORT\"]`, and `hello` is the hello component on `/hello`; \
             PORT is a second `tessera up` on this machine serving the same `hello` (a node \
             refuses guests' requests to its own listeners). \
             Each round sends the three requests in turn on one connection \
             ({WARMUP_REQUESTS} unreported rounds first). The internal hop adds a second \
             instance (`front`) and its guest's work to a direct request, and the call itself \
             goes from `front`'s outgoing handler through `hello`'s admission, slot and \
             instance in-process. Through the socket, the same call leaves the node: \
             Wasmtime's default outgoing handler opens a new TCP connection to the other \
             node's gateway for every request, which routes it like any client's.\n"
        );
        let _ = writeln!(md, "{}", self.table());
        for line in self.lines() {
            let _ = writeln!(md, "- {line}");
        }
        md.push('\n');
    }
}
