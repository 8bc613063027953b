//! Plain-TCP HTTP/1.1 probes: readiness polling, first-request (cold start) timing, and the
//! single requests `bench-data` sends to the guest's benchmark endpoints.
//!
//! Deliberately not an HTTP client library: every server is measured with the same minimal
//! request, one fresh connection each (`Connection: close`), so the numbers are comparable.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::servers::Server;

/// How many sequential requests follow the first one when measuring start-up.
const SEQUENTIAL_REQUESTS: usize = 50;

/// A parsed response: only what the harness needs.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    /// The `x-tessera-revision` header: which revision answered.
    pub revision: Option<String>,
}

/// What one server start looked like from a client's point of view.
#[derive(Debug, Clone)]
pub struct Startup {
    /// From spawning the process to the port accepting connections.
    pub listening: Duration,
    /// The first successful request: connect + request + complete response.
    pub first_request: Duration,
    /// From spawning the process to that first 200 being complete.
    pub ready: Duration,
    /// Median of the [`SEQUENTIAL_REQUESTS`] requests after the first.
    pub median_after: Duration,
    /// The body served, to check that every server serves the same thing.
    pub body: String,
}

/// One `GET PATH` on a fresh connection, read until the server closes it.
pub fn get(port: u16, path: &str, timeout: Duration) -> io::Result<Reply> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: xtask-bench\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw).map_err(|msg| io::Error::new(io::ErrorKind::InvalidData, msg))
}

/// Waits (up to `timeout` after the spawn) until `server` answers `GET PATH` with 200, timing
/// the steps on the way, then times [`SEQUENTIAL_REQUESTS`] more requests.
pub fn startup(server: &mut Server, path: &str, timeout: Duration) -> Result<Startup> {
    let deadline = server.spawned_at() + timeout;
    let port = server.port();

    // Phase 1: connect-only polling, so the first real request is the one we time.
    let listening = loop {
        server.ensure_running()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break server.spawned_at().elapsed();
        }
        if Instant::now() >= deadline {
            bail!(
                "{} did not listen on port {port} within {timeout:?}\n{}",
                server.name(),
                server.log_tail()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };

    // Phase 2: GET PATH until it is a 200. Normally the first attempt succeeds; a server that
    // listens before it can serve gets retried, and the attempt that succeeds is timed.
    let (first_request, body) = loop {
        server.ensure_running()?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!(
                "{} did not answer GET {path} with 200 within {timeout:?}\n{}",
                server.name(),
                server.log_tail()
            );
        }
        let started = Instant::now();
        match get(port, path, remaining) {
            Ok(reply) if reply.status == 200 => {
                break (
                    started.elapsed(),
                    String::from_utf8_lossy(&reply.body).into_owned(),
                );
            }
            Ok(_) | Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    };
    let ready = server.spawned_at().elapsed();

    let mut times = Vec::with_capacity(SEQUENTIAL_REQUESTS);
    for i in 0..SEQUENTIAL_REQUESTS {
        let started = Instant::now();
        let reply = get(port, path, Duration::from_secs(10));
        let elapsed = started.elapsed();
        match reply {
            Ok(reply) if reply.status == 200 => times.push(elapsed),
            Ok(reply) => bail!(
                "{}: sequential request {} returned status {}",
                server.name(),
                i + 1,
                reply.status
            ),
            Err(err) => bail!(
                "{}: sequential request {} failed: {err}",
                server.name(),
                i + 1
            ),
        }
    }

    Ok(Startup {
        listening,
        first_request,
        ready,
        median_after: median(&mut times),
        body,
    })
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort_unstable();
    match times.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => times[n / 2],
        n => (times[n / 2 - 1] + times[n / 2]) / 2,
    }
}

/// Parses a complete HTTP/1.1 response (the server closed the connection after it).
fn parse_response(raw: &[u8]) -> Result<Reply, String> {
    let header_end = find(raw, b"\r\n\r\n").ok_or("response has no end of headers")?;
    let head = std::str::from_utf8(&raw[..header_end]).map_err(|_| "non-UTF-8 headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut chunked, mut revision) = (false, None);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("x-tessera-revision") {
                revision = Some(value.to_owned());
            }
        }
    }
    let body = &raw[header_end + 4..];
    let body = if chunked {
        decode_chunked(body)?
    } else {
        body.to_vec()
    };
    Ok(Reply {
        status,
        body,
        revision,
    })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("truncated chunk size")?;
        let size_field = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        // Chunk extensions (`;name=value`) are allowed and ignored.
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_response() {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\nhello\n";
        let reply = parse_response(raw).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b"hello\n");
    }

    #[test]
    fn parses_chunked_response() {
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n3;x=y\r\nlo\n\r\n0\r\n\r\n";
        let reply = parse_response(raw).unwrap();
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, b"hello\n");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"nonsense").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }

    #[test]
    fn median_of_even_and_odd_counts() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&mut [ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
    }
}
