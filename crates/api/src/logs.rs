//! `GET /v1/apps/{app}/services/{service}/logs`: a service's recent log lines as JSON, or
//! followed live as newline-delimited JSON until the client goes away.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use tessera_telemetry::LogEntry;
use tokio::sync::broadcast;

use crate::{Api, ApiError, LogList, LogQuery, LogView, bad_query, blocking};

/// Lines returned when the query sets no `limit`.
const DEFAULT_LIMIT: usize = 100;

/// A followed stream sends a blank line this often when no line came, so that a client
/// gone away is noticed (the write fails) and proxies do not time the stream out.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub(crate) async fn logs(
    State(api): State<Api>,
    Path((app, service)): Path<(String, String)>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(bad_query)?;
    let since = query.since.as_deref().map(parse_since).transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);

    let (node, a, s) = (api.node.clone(), app.clone(), service.clone());
    let deployed = blocking(move || {
        Ok(node
            .app(&a)?
            .is_some_and(|state| state.services.iter().any(|x| x.name == s)))
    })
    .await?;
    // A removed service's lines stay readable until the node restarts: they may say why
    // it was removed.
    if !deployed && api.telemetry.logs(&app, &service, None, 1).is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app `{app}` has no service `{service}`"),
        ));
    }

    if query.follow == Some(true) {
        // Subscribe before reading the backlog, so no line falls between the two.
        let follower = api.telemetry.follow(&app, &service);
        let backlog = api.telemetry.logs(&app, &service, since, limit);
        return Ok(follow(backlog, follower));
    }
    let logs = api.telemetry.logs(&app, &service, since, limit);
    Ok(Json(LogList {
        logs: logs.into_iter().map(LogView::from).collect(),
    })
    .into_response())
}

/// `since` as an RFC 3339 time (UTC) or as a duration back from now.
fn parse_since(text: &str) -> Result<SystemTime, ApiError> {
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Ok(time);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => Ok(SystemTime::now()
            .checked_sub(ago)
            .unwrap_or(SystemTime::UNIX_EPOCH)),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "`since` must be an RFC 3339 time such as 2025-01-31T12:00:00Z or a duration such as 5m, not `{text}`"
            ),
        )),
    }
}

fn push_line(buffer: &mut Vec<u8>, entry: LogEntry) {
    // Serializing plain strings and numbers into a Vec cannot fail.
    serde_json::to_writer(&mut *buffer, &LogView::from(entry)).expect("log line as JSON");
    buffer.push(b'\n');
}

struct Following {
    backlog: Option<Vec<u8>>,
    follower: broadcast::Receiver<LogEntry>,
    /// Lines up to this one were in the backlog (or older than what it showed).
    last_seq: u64,
    keepalive: tokio::time::Interval,
}

/// The backlog in one chunk, then every new line as it comes. Dropping the body (the
/// client went away) drops the subscription with it.
fn follow(backlog: Vec<LogEntry>, follower: broadcast::Receiver<LogEntry>) -> Response {
    let last_seq = backlog.last().map_or(0, |e| e.seq);
    let mut first = Vec::new();
    for entry in backlog {
        push_line(&mut first, entry);
    }
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Following {
        backlog: (!first.is_empty()).then_some(first),
        follower,
        last_seq,
        keepalive,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if let Some(backlog) = state.backlog.take() {
            return Some((Ok::<_, Infallible>(Bytes::from(backlog)), state));
        }
        loop {
            tokio::select! {
                received = state.follower.recv() => match received {
                    Ok(entry) if entry.seq <= state.last_seq => continue,
                    Ok(entry) => {
                        state.last_seq = entry.seq;
                        let mut line = Vec::new();
                        push_line(&mut line, entry);
                        return Some((Ok(Bytes::from(line)), state));
                    }
                    // A slow client misses lines rather than slowing the service down.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = state.keepalive.tick() => {
                    return Some((Ok(Bytes::from_static(b"\n")), state));
                }
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
