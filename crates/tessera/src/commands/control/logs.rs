//! `logs`: a service's recent lines, and `-f` to follow them.

use anyhow::Context;
use clap::Args;
use reqwest::Method;
use tessera_api::client::encode;
use tessera_api::{LogList, LogView};

use super::{Client, Remote, resolve_app};

#[derive(Args)]
pub struct LogsArgs {
    /// The service.
    service: String,
    #[arg(long)]
    app: Option<String>,
    /// Keep printing new lines as they are logged, until interrupted.
    #[arg(short, long)]
    follow: bool,
    /// Only lines from this long ago (`5m`, `1h 30m`) or from this RFC 3339 time (UTC).
    #[arg(long)]
    since: Option<String>,
    /// At most this many of the newest lines.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    remote: Remote,
}

pub fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let app = resolve_app(&client, &args.service, args.app)?;
    let mut path = format!(
        "/v1/apps/{app}/services/{}/logs?limit={}",
        args.service, args.limit
    );
    if let Some(since) = &args.since {
        path.push_str(&format!("&since={}", encode(since)));
    }
    if !args.follow {
        let list: LogList = client.call(Method::GET, &path, None)?;
        for line in &list.logs {
            print_log(line)?;
        }
        return Ok(());
    }
    path.push_str("&follow=true");
    client.stream_lines(&path, |line| {
        let line: LogView =
            serde_json::from_slice(line).context("the node sent an unexpected log line")?;
        print_log(&line)
    })
}

/// `TIME STREAM [request-id] line`; a closed pipe (`| head`) ends the command quietly.
fn print_log(line: &LogView) -> anyhow::Result<()> {
    use std::io::Write;
    let request = line
        .request_id
        .as_deref()
        .map(|id| format!("[{id}] "))
        .unwrap_or_default();
    let written = writeln!(
        std::io::stdout().lock(),
        "{} {:<8} {request}{}",
        line.time,
        line.stream,
        line.line
    );
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}
