//! The native baseline for `cargo xtask bench`: a plain hyper 1 hello world with no WebAssembly.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// The body every bench server returns, so all three do the same work.
pub const BODY: &str = "hello from tessera\n";

/// Serves on 127.0.0.1:PORT until killed. Uses a multi-thread runtime with one worker per core
/// and HTTP/1.1 keep-alive (hyper's default), like a typical production hyper service.
pub fn serve(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(accept_loop(SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
}

async fn accept_loop(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Transient (e.g. too many open files under load): keep serving.
            Err(err) => {
                eprintln!("bench-native-server: accept failed: {err}");
                continue;
            }
        };
        // Small responses: don't let Nagle delay them.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            // Connection errors (clients resetting at the end of a wrk run) are expected.
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}
