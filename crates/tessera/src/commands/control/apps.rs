//! `deploy`, `ls`, `revisions`, `traffic`, `rollback` and `rm`: apps, their revisions
//! and traffic.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tessera_api::client::{ClientError, Payload};
use tessera_api::{
    AppList, DeployRequest, DeployResult, RollbackRequest, ServiceSpecJson, ServiceView,
    TrafficRequest, TrafficShare,
};

use super::{Client, Remote, format_time, resolve_app};

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
        let (status, body) = client.send(Method::HEAD, &path, Payload::None, &[])?;
        if status == StatusCode::NOT_FOUND {
            let size = bytes.len();
            let upload = Payload::Bytes(bytes.into(), "application/wasm");
            let (status, body) = client.send(Method::PUT, &path, upload, &[])?;
            if !status.is_success() {
                bail!(
                    "service `{}`: upload refused: {}",
                    spec.name,
                    ClientError::from_answer(status, &body)
                );
            }
            eprintln!(
                "uploaded {} ({size} bytes, sha256 {})",
                spec.name,
                &sha256[..12]
            );
        } else if !status.is_success() {
            bail!("{}", ClientError::from_answer(status, &body));
        }
        services.push(ServiceSpecJson::from(crate::commands::release(
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
