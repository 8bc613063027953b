//! A blocking HTTP/1.1 client that keeps its connection open, for sequential latency
//! measurements: one request at a time, each timed from writing the request to having read
//! the whole response.
//!
//! Hand-written like `probe.rs` on purpose: a request is one `write` and a response is read
//! straight off the socket, so the client adds next to nothing to what is measured, and no
//! runtime or connection pool sits between the timer and the server.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::probe::Reply;

/// A kept-alive connection to a server on the loopback interface.
pub struct Connection {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Connects to `127.0.0.1:port`; every later read and write gives up after `timeout`.
    pub fn open(port: u16, timeout: Duration) -> io::Result<Connection> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Connection {
            port,
            reader: BufReader::new(stream),
        })
    }

    /// `GET path`, leaving the connection open for the next request.
    pub fn get(&mut self, path: &str) -> io::Result<Reply> {
        self.send("GET", path, b"")
    }

    /// `METHOD path` with `body`, leaving the connection open for the next request.
    pub fn send(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Reply> {
        // One write per request: with TCP_NODELAY a request split over several writes
        // could go out as several packets.
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: xtask-bench\r\nContent-Length: {}\r\n\r\n",
            self.port,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.reader.get_mut().write_all(&request)?;
        read_response(&mut self.reader)
    }

    /// `GET path`, timed; the reply must be a 200 or it is an error naming `path`.
    pub fn timed_get(&mut self, path: &str) -> io::Result<(Duration, Reply)> {
        let started = Instant::now();
        let reply = self.get(path)?;
        let elapsed = started.elapsed();
        if reply.status != 200 {
            return Err(io::Error::other(format!(
                "GET {path} answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body).trim_end()
            )));
        }
        Ok((elapsed, reply))
    }
}

/// Reads one complete response, leaving `reader` at the start of the next one.
fn read_response(reader: &mut impl BufRead) -> io::Result<Reply> {
    let bad = |message: String| io::Error::new(io::ErrorKind::InvalidData, message);
    let status_line = read_line(reader)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut chunked = false;
    let mut revision = None;
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("bad header line {line:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad(format!("bad content-length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("x-tessera-revision") {
            revision = Some(value.to_owned());
        }
    }
    let body = match (chunked, length) {
        // These never carry a body, whatever the headers say.
        _ if status == 204 || status == 304 => Vec::new(),
        (true, _) => read_chunked(reader)?,
        (false, Some(length)) => {
            let mut body = vec![0; length];
            reader.read_exact(&mut body)?;
            body
        }
        // Neither: the body runs until the server closes the connection.
        (false, None) => {
            let mut body = Vec::new();
            reader.read_to_end(&mut body)?;
            body
        }
    };
    Ok(Reply {
        status,
        body,
        revision,
    })
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader)?;
        // Chunk extensions (`;name=value`) are allowed and ignored.
        let size_hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {size_hex:?}"),
            )
        })?;
        if size == 0 {
            // Trailers, if any, end with an empty line like the head does.
            while !read_line(reader)?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        if !read_line(reader)?.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk longer than its size",
            ));
        }
    }
}

/// One CRLF-terminated line without its terminator; end of stream is an error, since the
/// server closing a kept-alive connection mid-response is exactly what must not go unseen.
fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    let trimmed = line.trim_end_matches(['\r', '\n']).len();
    line.truncate(trimmed);
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_responses_back_to_back_from_one_stream() {
        let raw: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n\
            HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n3;x=y\r\nlo\n\r\n0\r\n\r\n\
            HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
        let mut reader = BufReader::new(raw);
        let first = read_response(&mut reader).unwrap();
        assert_eq!(
            (first.status, first.body.as_slice()),
            (200, &b"hello\n"[..])
        );
        let second = read_response(&mut reader).unwrap();
        assert_eq!(
            (second.status, second.body.as_slice()),
            (404, &b"hello\n"[..])
        );
        let third = read_response(&mut reader).unwrap();
        assert_eq!((third.status, third.body.len()), (204, 0));
        assert_eq!(
            read_response(&mut reader).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn chunked_trailers_are_skipped() {
        let raw: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-t: 1\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n!";
        let mut reader = BufReader::new(raw);
        assert_eq!(read_response(&mut reader).unwrap().body, b"ok");
        assert_eq!(read_response(&mut reader).unwrap().body, b"!");
    }

    #[test]
    fn malformed_responses_are_errors() {
        for raw in [
            &b"nonsense\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort",
        ] {
            assert!(read_response(&mut BufReader::new(raw)).is_err(), "{raw:?}");
        }
    }
}
