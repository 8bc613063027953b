//! Guest stdout and stderr: captured line by line and handed to a sink together with the
//! service name and request id, so every line can be traced to the request that wrote it.
//!
//! Each service may write [`OUTPUT_RATE`] bytes a second (bursts up to [`OUTPUT_BURST`])
//! across all its requests; past that its lines are dropped, and the next line that fits
//! is preceded by one saying how much was dropped. A guest printing in a loop costs its
//! own request's time, never the node's disk or memory.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream as WasiOutputStream, Pollable, StreamResult};

/// A line longer than this is cut into pieces, so one guest cannot grow host memory
/// without bound by never writing a newline.
const MAX_LINE: usize = 16 * 1024;
/// Bytes of output a service may write a second, on average.
pub const OUTPUT_RATE: u64 = 1 << 20;
/// Bytes of output a service may write at once before the rate applies.
pub const OUTPUT_BURST: u64 = 4 << 20;

/// One service's allowance of output, shared by all its requests.
pub(crate) struct OutputLimiter {
    state: Mutex<Allowance>,
    rate: f64,
    burst: f64,
}

struct Allowance {
    tokens: f64,
    refilled: Instant,
    dropped_lines: u64,
    dropped_bytes: u64,
}

/// What to do with a line.
enum Verdict {
    /// Emit it, after saying how much was dropped before it (lines, bytes), if anything.
    Emit(Option<(u64, u64)>),
    Drop,
}

impl OutputLimiter {
    pub(crate) fn new(rate: u64, burst: u64) -> Self {
        OutputLimiter {
            state: Mutex::new(Allowance {
                tokens: burst as f64,
                refilled: Instant::now(),
                dropped_lines: 0,
                dropped_bytes: 0,
            }),
            rate: rate as f64,
            burst: burst as f64,
        }
    }

    fn admit(&self, bytes: usize) -> Verdict {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(state.refilled).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        state.refilled = now;
        // The newline counts too, so empty lines are not free.
        let cost = (bytes + 1) as f64;
        if state.tokens < cost {
            state.dropped_lines += 1;
            state.dropped_bytes += bytes as u64 + 1;
            return Verdict::Drop;
        }
        state.tokens -= cost;
        let dropped =
            (state.dropped_lines > 0).then_some((state.dropped_lines, state.dropped_bytes));
        state.dropped_lines = 0;
        state.dropped_bytes = 0;
        Verdict::Emit(dropped)
    }
}

/// Which guest stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Receives complete lines written by guests.
pub trait GuestLogSink: Send + Sync + 'static {
    /// One complete line (without its newline) a guest of `app`'s `service` wrote while
    /// serving `request_id`.
    fn line(&self, app: &str, service: &str, request_id: &str, stream: OutputStream, line: &str);
}

/// Prints guest lines to the terminal prefixed with service and request id: stdout lines
/// to stdout, stderr lines to stderr.
pub struct TerminalLog;

impl GuestLogSink for TerminalLog {
    fn line(&self, _app: &str, service: &str, request_id: &str, stream: OutputStream, line: &str) {
        use std::io::Write;
        // Errors writing our own terminal cannot be reported anywhere useful.
        let _ = match stream {
            OutputStream::Stdout => {
                writeln!(io::stdout().lock(), "[{service} {request_id}] {line}")
            }
            OutputStream::Stderr => {
                writeln!(io::stderr().lock(), "[{service} {request_id}] {line}")
            }
        };
    }
}

/// One guest output stream of one request. Clones share the pending partial line.
#[derive(Clone)]
pub(crate) struct GuestOutput {
    shared: Arc<Mutex<LineBuffer>>,
}

struct LineBuffer {
    sink: Arc<dyn GuestLogSink>,
    limiter: Arc<OutputLimiter>,
    app: Arc<str>,
    service: Arc<str>,
    request_id: Arc<str>,
    stream: OutputStream,
    pending: Vec<u8>,
}

impl GuestOutput {
    pub(crate) fn new(
        sink: Arc<dyn GuestLogSink>,
        limiter: Arc<OutputLimiter>,
        app: Arc<str>,
        service: Arc<str>,
        request_id: Arc<str>,
        stream: OutputStream,
    ) -> Self {
        GuestOutput {
            shared: Arc::new(Mutex::new(LineBuffer {
                sink,
                limiter,
                app,
                service,
                request_id,
                stream,
                pending: Vec::new(),
            })),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buffer = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        buffer.push(bytes);
    }

    /// A reused instance starts serving another request: a partial line left by the
    /// last one is shown under its id, and later lines carry the new one.
    pub(crate) fn begin_request(&self, request_id: Arc<str>) {
        let mut buffer = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if !buffer.pending.is_empty() {
            buffer.emit();
        }
        buffer.request_id = request_id;
    }
}

impl LineBuffer {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            self.pending.extend_from_slice(&bytes[..newline]);
            self.emit();
            bytes = &bytes[newline + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            self.emit();
            self.pending = rest;
        }
    }

    fn emit(&mut self) {
        let dropped = match self.limiter.admit(self.pending.len()) {
            Verdict::Drop => {
                self.pending.clear();
                return;
            }
            Verdict::Emit(dropped) => dropped,
        };
        if let Some((lines, bytes)) = dropped {
            let notice = format!(
                "[tessera: {lines} lines ({bytes} bytes) of this service's output were dropped: it wrote more than {OUTPUT_RATE} bytes a second]"
            );
            self.sink.line(
                &self.app,
                &self.service,
                &self.request_id,
                self.stream,
                &notice,
            );
        }
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        self.sink.line(
            &self.app,
            &self.service,
            &self.request_id,
            self.stream,
            line,
        );
        self.pending.clear();
    }
}

impl Drop for LineBuffer {
    /// A last line without a newline is still shown when the request ends.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn WasiOutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl WasiOutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);

    impl GuestLogSink for Collect {
        fn line(&self, _: &str, service: &str, request_id: &str, _: OutputStream, line: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{service}/{request_id}: {line}"));
        }
    }

    #[test]
    fn lines_are_split_joined_and_flushed_at_the_end() {
        let sink = Arc::new(Collect::default());
        let out = GuestOutput::new(
            sink.clone(),
            Arc::new(OutputLimiter::new(OUTPUT_RATE, OUTPUT_BURST)),
            "app".into(),
            "svc".into(),
            "r1".into(),
            OutputStream::Stdout,
        );
        out.push(b"hel");
        out.push(b"lo\r\nwor");
        out.clone().push(b"ld\nlast");
        drop(out);
        assert_eq!(
            *sink.0.lock().unwrap(),
            vec!["svc/r1: hello", "svc/r1: world", "svc/r1: last"]
        );
    }

    #[test]
    fn endless_line_is_cut() {
        let sink = Arc::new(Collect::default());
        let out = GuestOutput::new(
            sink.clone(),
            Arc::new(OutputLimiter::new(OUTPUT_RATE, OUTPUT_BURST)),
            "a".into(),
            "s".into(),
            "r".into(),
            OutputStream::Stderr,
        );
        out.push(&vec![b'x'; MAX_LINE * 2 + 10]);
        drop(out);
        let lines = sink.0.lock().unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].len(), "s/r: ".len() + 10);
    }

    #[test]
    fn output_past_the_rate_is_dropped_and_reported_once() {
        let sink = Arc::new(Collect::default());
        // 100 bytes of burst, and a rate too slow to refill during the test.
        let limiter = Arc::new(OutputLimiter::new(1, 100));
        let out = GuestOutput::new(
            sink.clone(),
            limiter.clone(),
            "a".into(),
            "s".into(),
            "r".into(),
            OutputStream::Stdout,
        );
        for _ in 0..10 {
            out.push(&[b'x'; 19]);
            out.push(b"\n");
        }
        drop(out);
        let lines = sink.0.lock().unwrap().clone();
        assert_eq!(
            lines.len(),
            5,
            "20 bytes a line, 100 bytes allowed: {lines:?}"
        );
        // Once the allowance is back, the next line says what was lost.
        limiter.state.lock().unwrap().tokens = 100.0;
        let out = GuestOutput::new(
            sink.clone(),
            limiter,
            "a".into(),
            "s".into(),
            "r".into(),
            OutputStream::Stdout,
        );
        out.push(b"back\n");
        let lines = sink.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 7);
        assert!(lines[5].contains("5 lines (100 bytes)"), "{}", lines[5]);
        assert_eq!(lines[6], "s/r: back");
    }
}
