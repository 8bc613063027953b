//! The CLI side of the control API: `deploy`, `ls`, `revisions`, `traffic`, `rollback`,
//! `rm`, `secret`, the event commands and `logs`. They talk to a node only through its
//! REST API.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tessera_api::{
    AppList, AppView, DeadLetterList, DeadLetterView, DeployRequest, DeployResult, EventStats,
    InvocationView, LogList, LogView, PublishResult, RedriveRequest, Redriven, RollbackRequest,
    SecretList, SecretValue, ServiceSpecJson, ServiceView, TrafficRequest, TrafficShare,
};

/// How to reach the node.
#[derive(Args, Clone)]
pub struct Remote {
    /// The node's admin address.
    #[arg(
        long,
        env = "TESSERA_SERVER",
        default_value = "http://127.0.0.1:3001",
        global = true
    )]
    server: String,
}

#[derive(Args)]
pub struct DeployArgs {
    /// The app directory (holding tessera.toml) or the manifest file.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Deploy only this service; the app's other services stay as they are.
    #[arg(long)]
    service: Option<String>,
    /// Canary: give each new revision this share of its service's traffic (1-99).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=99))]
    traffic: Option<u8>,
    /// Revisions of history to keep per service.
    #[arg(long)]
    keep: Option<usize>,
    /// Configuration environment: applies `[environments.NAME]` of the manifest.
    #[arg(long = "env", value_name = "NAME")]
    environment: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct LsArgs {
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct ServiceArgs {
    /// The service.
    service: String,
    /// The app holding the service; needed only when several apps have one so named.
    #[arg(long)]
    app: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct TrafficArgs {
    /// The service.
    service: String,
    /// Shares such as `r7=90 r8=10`, summing to 100.
    #[arg(required = true)]
    shares: Vec<String>,
    #[arg(long)]
    app: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct RollbackArgs {
    /// The service.
    service: String,
    /// The revision to go back to (default: the one before the current primary).
    #[arg(long)]
    to: Option<String>,
    #[arg(long)]
    app: Option<String>,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub struct RmArgs {
    /// The app to remove.
    app: String,
    /// Also delete the app's data: key-value stores, SQL databases and secrets.
    #[arg(long)]
    purge: bool,
    #[command(flatten)]
    remote: Remote,
}

/// A blocking-style client over the async reqwest client.
struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
    tokio: tokio::runtime::Runtime,
}

impl Client {
    fn new(remote: &Remote) -> anyhow::Result<Client> {
        Ok(Client {
            base: remote.server.trim_end_matches('/').to_string(),
            token: std::env::var("TESSERA_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
            tokio: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Sends a request and returns the status and body; API errors become messages.
    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
        json: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/wasm")
                .body(body);
        }
        if let Some(json) = json {
            request = request.json(json);
        }
        self.tokio.block_on(async {
            let response = request
                .send()
                .await
                .with_context(|| format!("cannot reach the node at {}", self.base))?;
            let status = response.status();
            let bytes = response.bytes().await?.to_vec();
            Ok((status, bytes))
        })
    }

    /// Sends raw bytes with the given headers.
    fn send_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url).body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        self.tokio.block_on(async {
            let response = request
                .send()
                .await
                .with_context(|| format!("cannot reach the node at {}", self.base))?;
            let status = response.status();
            let bytes = response.bytes().await?.to_vec();
            Ok((status, bytes))
        })
    }

    /// Sends a GET whose answer is a stream of newline-delimited lines and hands each
    /// non-empty line to `each` as it arrives, until the node ends the stream.
    fn stream_lines(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.get(&url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        self.tokio.block_on(async {
            let mut response = request
                .send()
                .await
                .with_context(|| format!("cannot reach the node at {}", self.base))?;
            let status = response.status();
            if !status.is_success() {
                let body = response.bytes().await?;
                bail!("{}", api_error(status, &body));
            }
            let mut pending = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .context("the node closed the stream")?
            {
                pending.extend_from_slice(&chunk);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    let line = line.trim_ascii();
                    // Blank lines are the node's keep-alives.
                    if !line.is_empty() {
                        each(line)?;
                    }
                }
            }
            Ok(())
        })
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        json: Option<&Value>,
    ) -> anyhow::Result<T> {
        let (status, body) = self.send(method, path, None, json)?;
        if !status.is_success() {
            bail!("{}", api_error(status, &body));
        }
        serde_json::from_slice(&body).context("the node answered with unexpected JSON")
    }
}

fn api_error(status: StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v["error"]["message"].is_string() => format!(
            "{} ({})",
            v["error"]["message"].as_str().unwrap_or_default(),
            v["error"]["code"].as_str().unwrap_or_default()
        ),
        _ => format!("the node answered {status}"),
    }
}

pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let manifest = tessera_manifest::load(&args.dir)?;
    if let Some(only) = &args.service
        && !manifest.services.iter().any(|s| &s.name == only)
    {
        bail!("{} has no service `{only}`", manifest.path.display());
    }
    let client = Client::new(&args.remote)?;
    let mut services = Vec::new();
    for spec in &manifest.services {
        if args.service.as_ref().is_some_and(|only| *only != spec.name) {
            continue;
        }
        let bytes = std::fs::read(&spec.component).with_context(|| {
            format!(
                "service `{}`: cannot read component {}",
                spec.name,
                spec.component.display()
            )
        })?;
        let sha256 = tessera_runtime::content_hash(&bytes);
        // Upload only what the node does not have: a deploy that changes one service
        // sends one component.
        let path = format!("/v1/artifacts/{sha256}");
        let (status, body) = client.send(Method::HEAD, &path, None, None)?;
        if status == StatusCode::NOT_FOUND {
            let size = bytes.len();
            let (status, body) = client.send(Method::PUT, &path, Some(bytes.into()), None)?;
            if !status.is_success() {
                bail!(
                    "service `{}`: upload refused: {}",
                    spec.name,
                    api_error(status, &body)
                );
            }
            eprintln!(
                "uploaded {} ({size} bytes, sha256 {})",
                spec.name,
                &sha256[..12]
            );
        } else if !status.is_success() {
            bail!("{}", api_error(status, &body));
        }
        services.push(ServiceSpecJson::from(super::release(
            &manifest,
            spec,
            args.environment.as_deref(),
            sha256,
        )?));
    }
    let request = DeployRequest {
        services,
        only: args.service.into_iter().collect(),
        traffic: args.traffic,
        keep: args.keep,
    };
    let result: DeployResult = client.call(
        Method::POST,
        &format!("/v1/apps/{}/deploy", manifest.app),
        Some(&serde_json::to_value(&request)?),
    )?;
    for created in &result.created {
        println!("{} r{}", created.service, created.revision);
    }
    for service in &result.unchanged {
        println!("{service} unchanged");
    }
    for service in &result.removed {
        println!("{service} removed");
    }
    Ok(())
}

fn traffic_text(service: &ServiceView) -> String {
    service
        .traffic
        .iter()
        .map(|t| format!("r{}={}%", t.revision, t.percent))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn ls(args: LsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let list: AppList = client.call(Method::GET, "/v1/apps", None)?;
    if list.apps.is_empty() {
        println!("no apps deployed");
        return Ok(());
    }
    println!("{:<16} {:<16} {:<24} TRAFFIC", "APP", "SERVICE", "ROUTES");
    for app in &list.apps {
        for service in &app.services {
            println!(
                "{:<16} {:<16} {:<24} {}",
                app.name,
                service.name,
                service.routes.join(","),
                traffic_text(service)
            );
        }
    }
    Ok(())
}

/// Finds the app holding `service`, asking the node when `--app` was not given.
fn resolve_app(client: &Client, service: &str, app: Option<String>) -> anyhow::Result<String> {
    if let Some(app) = app {
        return Ok(app);
    }
    let list: AppList = client.call(Method::GET, "/v1/apps", None)?;
    let holders: Vec<&AppView> = list
        .apps
        .iter()
        .filter(|a| a.services.iter().any(|s| s.name == service))
        .collect();
    match holders.as_slice() {
        [] => bail!("no deployed app has a service `{service}`"),
        [one] => Ok(one.name.clone()),
        many => bail!(
            "several apps have a service `{service}` ({}): choose one with --app",
            many.iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub fn revisions(args: ServiceArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let app = resolve_app(&client, &args.service, args.app)?;
    let service: ServiceView = client.call(
        Method::GET,
        &format!("/v1/apps/{app}/services/{}", args.service),
        None,
    )?;
    println!(
        "{:<9} {:<14} {:<22} TRAFFIC",
        "REVISION", "SHA256", "CREATED"
    );
    for revision in service.revisions.iter().rev() {
        let share = service
            .traffic
            .iter()
            .find(|t| t.revision == revision.id)
            .map_or(0, |t| t.percent);
        println!(
            "{:<9} {:<14} {:<22} {share}%",
            format!("r{}", revision.id),
            &revision.sha256[..12],
            format_time(revision.created_at),
        );
    }
    Ok(())
}

fn parse_revision(text: &str) -> anyhow::Result<u32> {
    text.strip_prefix('r')
        .unwrap_or(text)
        .parse()
        .with_context(|| format!("`{text}` is not a revision (e.g. r7)"))
}

pub fn traffic(args: TrafficArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let mut shares = Vec::new();
    for share in &args.shares {
        let (revision, percent) = share
            .split_once('=')
            .with_context(|| format!("`{share}` is not a share such as r7=90"))?;
        let percent = percent.trim_end_matches('%');
        shares.push(TrafficShare {
            revision: parse_revision(revision)?,
            percent: percent
                .parse()
                .with_context(|| format!("`{percent}` is not a percentage"))?,
        });
    }
    let app = resolve_app(&client, &args.service, args.app)?;
    let request = TrafficRequest { traffic: shares };
    let service: ServiceView = client.call(
        Method::PUT,
        &format!("/v1/apps/{app}/services/{}/traffic", args.service),
        Some(&serde_json::to_value(&request)?),
    )?;
    println!("{} {}", service.name, traffic_text(&service));
    Ok(())
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let to = args.to.as_deref().map(parse_revision).transpose()?;
    let app = resolve_app(&client, &args.service, args.app)?;
    let service: ServiceView = client.call(
        Method::POST,
        &format!("/v1/apps/{app}/services/{}/rollback", args.service),
        Some(&serde_json::to_value(RollbackRequest { to })?),
    )?;
    println!("{} {}", service.name, traffic_text(&service));
    Ok(())
}

pub fn rm(args: RmArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.remote)?;
    let path = if args.purge {
        format!("/v1/apps/{}?purge=true", args.app)
    } else {
        format!("/v1/apps/{}", args.app)
    };
    let _: Value = client.call(Method::DELETE, &path, None)?;
    if args.purge {
        println!("removed {} and deleted its data", args.app);
    } else {
        println!(
            "removed {} (its data is kept; `rm --purge` deletes it)",
            args.app
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(clap::Subcommand)]
enum SecretCommand {
    /// Set a secret; the value is read from standard input unless --value is given.
    Set {
        service: String,
        name: String,
        /// The value (visible to other local users in the process list; prefer stdin).
        #[arg(long)]
        value: Option<String>,
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List a service's secret names (never values).
    Ls {
        service: String,
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a secret.
    Rm {
        service: String,
        name: String,
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

pub fn secret(args: SecretArgs) -> anyhow::Result<()> {
    match args.command {
        SecretCommand::Set {
            service,
            name,
            value,
            app,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let app = resolve_app(&client, &service, app)?;
            let value = match value {
                Some(value) => value,
                None => read_secret(&name)?,
            };
            let body = serde_json::to_value(SecretValue { value })?;
            let (status, response) = client.send(
                Method::PUT,
                &format!("/v1/apps/{app}/services/{service}/secrets/{name}"),
                None,
                Some(&body),
            )?;
            if !status.is_success() {
                bail!("{}", api_error(status, &response));
            }
            println!("set {name} for {service}");
        }
        SecretCommand::Ls {
            service,
            app,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let app = resolve_app(&client, &service, app)?;
            let list: SecretList = client.call(
                Method::GET,
                &format!("/v1/apps/{app}/services/{service}/secrets"),
                None,
            )?;
            if list.secrets.is_empty() {
                println!("{service} has no secrets");
            }
            for secret in &list.secrets {
                println!("{:<32} set {}", secret.name, format_time(secret.updated_at));
            }
        }
        SecretCommand::Rm {
            service,
            name,
            app,
            remote,
        } => {
            let client = Client::new(&remote)?;
            let app = resolve_app(&client, &service, app)?;
            let (status, response) = client.send(
                Method::DELETE,
                &format!("/v1/apps/{app}/services/{service}/secrets/{name}"),
                None,
                None,
            )?;
            if !status.is_success() {
                bail!("{}", api_error(status, &response));
            }
            println!("removed {name} from {service}");
        }
    }
    Ok(())
}

/// Reads a secret's value from standard input: one line when typed at a terminal,
/// everything (minus one trailing newline) when piped.
fn read_secret(name: &str) -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    let mut value = String::new();
    if stdin.is_terminal() {
        eprint!("value for {name}: ");
        stdin.read_line(&mut value).context("reading the secret")?;
    } else {
        stdin
            .lock()
            .read_to_string(&mut value)
            .context("reading the secret from standard input")?;
    }
    let value = value
        .strip_suffix('\n')
        .map(|v| v.strip_suffix('\r').unwrap_or(v))
        .unwrap_or(&value)
        .to_string();
    if value.is_empty() {
        bail!("empty secret value for {name}");
    }
    Ok(value)
}

fn format_time(unix: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(time).to_string()
}

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
    let mut headers = vec![("content-type", content_type)];
    if let Some(id) = args.id {
        headers.push(("ce-id", id));
    }
    let path = format!("/v1/apps/{app}/topics/{}", args.topic);
    let (status, body) = client.send_with_headers(Method::POST, &path, data, &headers)?;
    if !status.is_success() {
        bail!("{}", api_error(status, &body));
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

/// Percent-encodes a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

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
