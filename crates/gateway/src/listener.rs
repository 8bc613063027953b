//! Serving HTTP on a listener without letting clients hold the node's resources: every
//! connection must send its first request within the header timeout and is closed after
//! the idle timeout with nothing in flight; connections are capped node-wide and per
//! client address, and a connection over a cap is refused at once with a 503. The public
//! gateway and the admin listener both serve through [`serve_connections`], each with its
//! own caps, so a flood on one never starves the other.
//!
//! Why a wrapper around the socket: the HTTP/1-or-2 detection waits for bytes with no timer
//! at all, hyper's HTTP/1 header timer would also close every keep-alive connection after
//! the header timeout (it runs while a connection waits for its next request), and HTTP/2
//! has no idle timer of its own (a client's PINGs would keep it open). So the wrapper keeps
//! all three clocks: the header timeout from a connection's opening to its first request,
//! the idle timeout from the end of a request to the next one (only requests count, not
//! bytes), and the header timeout again from the first byte of a next request, never
//! shorter than the idle timeout.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// How one listener treats its connections.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Names the listener in logs (`gateway`, `admin`).
    pub name: &'static str,
    /// How long a new connection may take to send its first request's headers, and a
    /// started request its headers.
    pub header_timeout: Duration,
    /// How long a connection may stay open with no request in flight after its last one.
    pub idle_timeout: Duration,
    /// Most connections open at once on this listener.
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_connections_per_client: usize,
    /// How long in-flight requests may run after shutdown starts before connections are
    /// dropped.
    pub drain_timeout: Duration,
}

impl ListenerConfig {
    /// Defaults for a listener named `name`, with `max_connections` as its cap.
    pub fn new(name: &'static str, max_connections: usize) -> ListenerConfig {
        let max_connections = max_connections.max(1);
        ListenerConfig {
            name,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections,
            max_connections_per_client: default_per_client(max_connections),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The per-client cap that goes with a node-wide cap: half of it, at most 1,000, so one
/// address never takes the whole listener but a load balancer in front still gets room.
pub fn default_per_client(max_connections: usize) -> usize {
    (max_connections / 2).clamp(1, 1000)
}

/// How the node's file descriptors are shared out: the gateway may hold half of them
/// and the admin listener an eighth, so data files, the journal, compiled code and the
/// admin listener keep the rest however many clients connect to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    pub gateway: usize,
    pub admin: usize,
}

impl FdBudget {
    /// The caps for a process allowed `open_files` descriptors.
    pub fn for_limit(open_files: u64) -> FdBudget {
        let limit = usize::try_from(open_files).unwrap_or(usize::MAX);
        FdBudget {
            gateway: (limit / 2).max(1),
            admin: (limit / 8).clamp(1, 256),
        }
    }
}

/// Open connections, in all and per client address.
#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
enum Refusal {
    Listener(usize),
    Client(usize),
}

struct Admission {
    counts: Mutex<Counts>,
    max: usize,
    max_per_client: usize,
}

impl Admission {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionGuard, Refusal> {
        let ip = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max {
            return Err(Refusal::Listener(self.max));
        }
        let mine = counts.per_client.entry(ip).or_default();
        if *mine >= self.max_per_client {
            return Err(Refusal::Client(self.max_per_client));
        }
        *mine += 1;
        counts.total += 1;
        Ok(ConnectionGuard {
            admission: self.clone(),
            ip,
        })
    }
}

/// The address a client is counted under: IPv4 addresses as they are, IPv6 ones by their
/// /64 (one host usually holds a whole /64, so counting single addresses would let it open
/// unlimited connections).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Holds one connection's place in the counts until the connection ends.
struct ConnectionGuard {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(mine) = counts.per_client.get_mut(&self.ip) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_client.remove(&self.ip);
            }
        }
    }
}

/// Serves `make_service(peer)` on every connection `listener` accepts until `shutdown`
/// resolves, then stops accepting and waits (up to the drain timeout) for in-flight
/// requests to finish.
// Long because accepting, the connection caps, each connection's timeouts and the drain
// share the loop's state (the budget, the per-client counts, the set of connections).
pub async fn serve_connections<M, S, B>(
    listener: TcpListener,
    config: ListenerConfig,
    make_service: M,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    M: Fn(SocketAddr) -> S,
    S: Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<B>> + Send>>
        + Send
        + Sync
        + 'static,
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // `Watched` keeps the header and idle clocks (see the module comment).
        .header_read_timeout(None)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let admission = Arc::new(Admission {
        counts: Mutex::new(Counts::default()),
        max: config.max_connections,
        max_per_client: config.max_connections_per_client,
    });
    let refusals = Arc::new(RefusalLog::default());

    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Running out of file descriptors is transient: back off instead of
                    // spinning or giving up.
                    tracing::warn!(listener = config.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let guard = match admission.admit(peer.ip()) {
            Ok(guard) => guard,
            Err(refusal) => {
                refuse(stream, &refusal);
                refusals.record(config.name, peer.ip(), &refusal);
                continue;
            }
        };
        // Responses are small and latency-bound; do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = Watched::new(stream, activity.clone(), &config);
        let inner = Arc::new(make_service(peer));
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let active = ActiveRequest::start(activity.clone());
            let response = inner(request);
            async move {
                let response = response.await;
                Ok::<_, Infallible>(response.map(|body| Tracked {
                    body,
                    _active: active,
                }))
            }
        });
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(guard);
        });
    }

    drop(listener);
    tracing::info!(
        listener = config.name,
        "stopped accepting; draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(listener = config.name, "all connections drained"),
        () = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!(listener = config.name, timeout = ?config.drain_timeout, "drain timeout reached; dropping remaining connections");
        }
    }
    Ok(())
}

/// Answers a refused connection with a 503 if the socket takes it at once, then closes
/// it: no task, no buffer, no waiting on the client.
fn refuse(stream: TcpStream, refusal: &Refusal) {
    let message = match refusal {
        Refusal::Listener(max) => format!("the node holds its maximum of {max} connections"),
        Refusal::Client(max) => {
            format!("this client address holds its maximum of {max} connections")
        }
    };
    let body = serde_json::json!({
        "error": { "code": "too_many_connections", "message": message }
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Whatever the client already sent is read and discarded (without waiting), so
    // closing sends a FIN after the answer instead of a reset that could discard it.
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut sink) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
    let _ = stream.try_write(response.as_bytes());
    if let Ok(std) = stream.into_std() {
        let _ = std.shutdown(std::net::Shutdown::Write);
    }
}

/// Refusals are logged at most once a second per listener, with how many there were.
#[derive(Default)]
struct RefusalLog {
    last_ms: AtomicU64,
    suppressed: AtomicU64,
    start: std::sync::OnceLock<std::time::Instant>,
}

impl RefusalLog {
    fn record(&self, listener: &str, ip: IpAddr, refusal: &Refusal) {
        let start = self.start.get_or_init(std::time::Instant::now);
        let now = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX) + 1000;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 1000
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let also = self.suppressed.swap(0, Ordering::Relaxed);
        let cap = match refusal {
            Refusal::Listener(max) => format!("listener cap {max}"),
            Refusal::Client(max) => format!("per-client cap {max}"),
        };
        tracing::warn!(listener, client = %ip, refused_since_last_report = also, "connection refused: {cap} reached");
    }
}

/// What a connection's watchdog needs to know of its requests.
struct Activity {
    opened: Instant,
    /// Requests whose response has not been sent (or dropped) yet.
    active: AtomicUsize,
    /// Requests seen on the connection.
    requests: AtomicU64,
    /// When the last request finished, in milliseconds since the connection's start.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

/// Counts a request as in flight until its response body is done.
struct ActiveRequest {
    activity: Arc<Activity>,
}

impl ActiveRequest {
    fn start(activity: Arc<Activity>) -> ActiveRequest {
        activity.active.fetch_add(1, Ordering::AcqRel);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        ActiveRequest { activity }
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        // The idle clock restarts when the last response ends.
        let elapsed = self.activity.opened.elapsed().as_millis();
        self.activity.idle_since_ms.fetch_max(
            u64::try_from(elapsed).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Tracked<B> {
    body: B,
    _active: ActiveRequest,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket whose reads fail with `TimedOut` when the connection has been quiet too long:
/// before its first request, longer than the header timeout since it opened; after, longer
/// than the idle timeout with nothing in flight since its last request ended.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// When the first byte after the connection last went idle arrived, with the idle
    /// mark it belongs to.
    first_read: Option<(u64, Instant)>,
    header_timeout: Duration,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
}

impl Watched {
    fn new(stream: TcpStream, activity: Arc<Activity>, config: &ListenerConfig) -> Watched {
        let now = activity.opened;
        Watched {
            stream,
            activity,
            first_read: None,
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            timer: Box::pin(tokio::time::sleep_until(now + config.header_timeout)),
        }
    }

    /// When the connection times out if nothing changes, or `None` while a request is in
    /// flight (its own deadline bounds it).
    fn deadline(&self) -> Option<Instant> {
        if self.activity.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.activity.requests.load(Ordering::Relaxed) == 0 {
            return Some(self.activity.opened + self.header_timeout);
        }
        let mark = self.activity.idle_since_ms.load(Ordering::Relaxed);
        let idle_since = self.activity.opened + Duration::from_millis(mark);
        let idle_deadline = idle_since + self.idle_timeout;
        Some(match self.first_read {
            // A next request has started arriving: it gets the header timeout, and never
            // less than the idle timeout would have left it.
            Some((read_mark, at)) if read_mark == mark => {
                idle_deadline.max(at + self.header_timeout)
            }
            _ => idle_deadline,
        })
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let mark = this.activity.idle_since_ms.load(Ordering::Relaxed);
                    if this
                        .first_read
                        .is_none_or(|(read_mark, _)| read_mark != mark)
                    {
                        this.first_read = Some((mark, Instant::now()));
                    }
                }
                return Poll::Ready(result);
            }
            Poll::Pending => {}
        }
        // Nothing to read: arm the watchdog. While a request runs it only re-checks every
        // idle period; hyper polls again once the response is done.
        loop {
            let now = Instant::now();
            let deadline = match this.deadline() {
                Some(deadline) if deadline <= now => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle past its timeout",
                    )));
                }
                Some(deadline) => deadline,
                None => now + this.idle_timeout,
            };
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            ready!(this.timer.as_mut().poll(cx));
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fd_budget_leaves_room_for_data_files_and_the_admin_listener() {
        let small = FdBudget::for_limit(256);
        assert_eq!(
            small,
            FdBudget {
                gateway: 128,
                admin: 32
            }
        );
        assert!(small.gateway + small.admin <= 256 * 5 / 8);
        let big = FdBudget::for_limit(1 << 20);
        assert_eq!(big.admin, 256);
        assert_eq!(default_per_client(big.gateway), 1000);
        assert_eq!(default_per_client(128), 64);
        assert_eq!(default_per_client(1), 1);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn admission_caps_per_listener_and_per_client() {
        let admission = Arc::new(Admission {
            counts: Mutex::new(Counts::default()),
            max: 3,
            max_per_client: 2,
        });
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = admission.admit(a).ok().unwrap();
        let _second = admission.admit(a).ok().unwrap();
        assert!(matches!(admission.admit(a), Err(Refusal::Client(2))));
        let _third = admission.admit(b).ok().unwrap();
        assert!(matches!(admission.admit(b), Err(Refusal::Listener(3))));
        drop(first);
        let again = admission.admit(a);
        assert!(again.is_ok());
        let counts = admission.counts.lock().unwrap();
        assert_eq!(
            counts.total, 3,
            "a refused or dropped connection is not counted"
        );
        assert_eq!(counts.per_client[&a], 2);
    }
}
