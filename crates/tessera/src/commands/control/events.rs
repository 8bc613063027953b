//! `publish`, `events`, `dlq` and `invocation`: messages, subscriptions, dead letters and
//! async invocations.

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;
use serde_json::Value;
use tessera_api::client::{ClientError, Payload, encode};
use tessera_api::{
    AppList, DeadLetterList, DeadLetterView, EventStats, InvocationView, NodeList, PublishResult,
    RedriveRequest, Redriven,
};

use super::{Client, Remote, resolve_app};

#[derive(Args)]
pub struct PublishArgs {
    /// The topic, e.g. `orders.created`.
    topic: String,
    /// The message; `-` reads it from standard input.
    data: String,
    /// The app whose topic it is; needed only when several apps are deployed.
    #[arg(long)]
    app: Option<String>,
    /// The payload's content type (default: application/json when the data parses as
    /// JSON, else text/plain).
    #[arg(long)]
    content_type: Option<String>,
    /// A message id of your own (`ce-id`): publishing the same id again does nothing.
    #[arg(long)]
    id: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

pub fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let app = match args.app {
        Some(app) => app,
        None => {
            let list: AppList = client.call(Method::GET, "/v1/apps", None)?;
            match list.apps.as_slice() {
                [one] => one.name.clone(),
                [] => bail!("no app is deployed"),
                many => bail!(
                    "several apps are deployed ({}): choose one with --app",
                    many.iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let data = if args.data == "-" {
        use std::io::Read;
        let mut buffer = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buffer)
            .context("reading the message from standard input")?;
        buffer
    } else {
        args.data.into_bytes()
    };
    let content_type = args.content_type.unwrap_or_else(|| {
        if serde_json::from_slice::<Value>(&data).is_ok() {
            "application/json".into()
        } else {
            "text/plain".into()
        }
    });
    let mut headers = Vec::new();
    if let Some(id) = args.id {
        headers.push(("ce-id", id));
    }
    let path = format!("/v1/apps/{app}/topics/{}", args.topic);
    let payload = Payload::Bytes(data.into(), &content_type);
    let (status, body) = client.send(Method::POST, &path, payload, &headers)?;
    if !status.is_success() {
        bail!("{}", ClientError::from_answer(status, &body));
    }
    let result: PublishResult = serde_json::from_slice(&body).context("unexpected answer")?;
    if result.new {
        println!("published {}", result.id);
    } else {
        println!("already published {}", result.id);
    }
    Ok(())
}

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    remote: Remote,
}

pub fn events(args: EventsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let stats: EventStats = client.call(Method::GET, "/v1/events", None)?;
    if stats.subscriptions.is_empty() {
        println!("no subscriptions");
        return Ok(());
    }
    println!(
        "{:<48} {:>7} {:>9} {:>8} {:>6} {:>10} {:>8}",
        "SUBSCRIPTION", "READY", "IN-FLIGHT", "RETRYING", "DEAD", "DELIVERED", "RETRIES"
    );
    for s in &stats.subscriptions {
        let name = if s.active {
            s.id.clone()
        } else {
            format!("{} (removed)", s.id)
        };
        println!(
            "{:<48} {:>7} {:>9} {:>8} {:>6} {:>10} {:>8}",
            name, s.ready, s.in_flight, s.retrying, s.dead, s.delivered, s.retries
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct NodesArgs {
    #[command(flatten)]
    remote: Remote,
}

pub fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let list: NodeList = client.call(Method::GET, "/v1/nodes", None)?;
    println!(
        "{:<24} {:<18} {:<22} {:<22} {:<10} {:>6}",
        "NODE", "STATE", "GATEWAY", "ADMIN", "VERSION", "LOADED"
    );
    for n in &list.nodes {
        let state = if n.state == "up" {
            "up".to_owned()
        } else {
            format!("down ({}s ago)", n.last_seen_ms.div_ceil(1000))
        };
        println!(
            "{:<24} {:<18} {:<22} {:<22} {:<10} {:>6}",
            n.name, state, n.gateway, n.admin, n.version, n.loaded
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(clap::Subcommand)]
enum DlqCommand {
    /// List a subscription's dead letters (see `tessera events` for subscription ids).
    Ls {
        subscription: String,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one dead letter with its payload and last error.
    Show {
        subscription: String,
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deliver dead letters again (all of the subscription's unless ids are given).
    Redrive {
        subscription: String,
        ids: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

pub fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    let query = |subscription: &str| format!("subscription={}", encode(subscription));
    match args.command {
        DlqCommand::Ls {
            subscription,
            limit,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let list: DeadLetterList = client.call(
                Method::GET,
                &format!("/v1/dead-letters?{}&limit={limit}", query(&subscription)),
                None,
            )?;
            if list.dead_letters.is_empty() {
                println!("no dead letters on {subscription}");
            }
            for letter in &list.dead_letters {
                println!(
                    "{}  {}  attempts {}  {}",
                    letter.message.id, letter.failed_at, letter.attempts, letter.last_error
                );
            }
        }
        DlqCommand::Show {
            subscription,
            id,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let letter: DeadLetterView = client.call(
                Method::GET,
                &format!("/v1/dead-letters/{}?{}", encode(&id), query(&subscription)),
                None,
            )?;
            let m = &letter.message;
            println!("id: {}", m.id);
            println!("topic: {}", m.topic);
            println!("source: {}", m.source);
            println!("type: {}", m.kind);
            println!("time: {}", m.time);
            println!("content-type: {}", m.content_type.as_deref().unwrap_or("-"));
            println!("attempts: {}", letter.attempts);
            println!("failed at: {}", letter.failed_at);
            println!("last status: {}", letter.last_status);
            println!("last error: {}", letter.last_error);
            println!("data ({} bytes):", m.size);
            println!("{}", m.data);
        }
        DlqCommand::Redrive {
            subscription,
            ids,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let request = RedriveRequest {
                subscription: subscription.clone(),
                ids: (!ids.is_empty()).then_some(ids),
            };
            let done: Redriven = client.call(
                Method::POST,
                "/v1/dead-letters/redrive",
                Some(&serde_json::to_value(&request)?),
            )?;
            println!(
                "re-drove {} dead letter(s) of {subscription}",
                done.redriven
            );
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct InvocationArgs {
    /// The service that was invoked.
    service: String,
    /// The invocation id from the 202 answer.
    id: String,
    #[arg(long)]
    app: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

pub fn invocation(args: InvocationArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let app = resolve_app(&client, &args.service, args.app)?;
    let view: InvocationView = client.call(
        Method::GET,
        &tessera_events::invocation::status_path(&app, &args.service, &encode(&args.id)),
        None,
    )?;
    println!("{}", serde_json::to_string_pretty(&view)?);
    Ok(())
}
