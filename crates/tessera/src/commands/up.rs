//! `tessera up`: the one-command dev loop. An embedded node whose data lives in the app
//! directory deploys the app to itself at start, then serves it behind one gateway, with
//! the same control API as `tessera serve` on the admin listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tessera_node::NodeBuilder;
use tessera_runtime::{RuntimeConfig, TerminalLog};
use tessera_store::DeployOptions;
use tessera_telemetry::{Telemetry, TelemetryConfig};

#[derive(Args)]
pub struct UpArgs {
    /// The app directory (holding tessera.toml) or the manifest file itself.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Address of the public gateway.
    #[arg(long, default_value = "127.0.0.1:3000", env = "TESSERA_LISTEN")]
    listen: SocketAddr,
    /// Address of the admin listener (control API under /v1). On loopback no token is
    /// needed; elsewhere TESSERA_TOKEN must be set.
    #[arg(long, default_value = "127.0.0.1:3001", env = "TESSERA_ADMIN")]
    admin: SocketAddr,
    /// Where the embedded node keeps its state; default: `.tessera` in the app directory.
    #[arg(long, env = "TESSERA_DATA")]
    data: Option<PathBuf>,
    /// Configuration environment: applies `[environments.NAME]` of the manifest.
    #[arg(long = "env", value_name = "NAME")]
    environment: Option<String>,
    /// Run `tessera build` first (only services whose sources changed are rebuilt).
    #[arg(long)]
    build: bool,
    /// Most instances that may run at once across all services.
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
    /// Most linear memory all running instances may hold together (`512MiB`, `8GiB`);
    /// a request that would need more is answered 503 `capacity`. Default: half the
    /// machine's memory.
    #[arg(long, env = "TESSERA_INSTANCE_MEMORY", value_name = "SIZE", value_parser = super::parse_size_arg)]
    instance_memory: Option<u64>,
    #[command(flatten)]
    connections: super::ListenArgs,
}

// Long because start-up is a sequence that must keep its order: validate the manifest
// and every component, open the node, deploy, bind, serve.
pub fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.build {
        super::source::build(&super::source::BuildArgs {
            dir: args.dir.clone(),
            services: Vec::new(),
            force: false,
            no_cache: false,
            verbose: false,
        })?;
    }
    // Everything that can be wrong with the app is checked before a socket is bound.
    let manifest = tessera_manifest::load(&args.dir)?;
    let auth = super::control_auth(args.admin, super::WithoutToken::OpenOnLoopback)?;
    let app_dir = manifest
        .path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let data = args.data.unwrap_or_else(|| app_dir.join(".tessera"));
    let telemetry = Telemetry::new(TelemetryConfig::default());
    let node = NodeBuilder::embedded(&data)
        .and_then(|builder| {
            builder
                .runtime(RuntimeConfig {
                    max_instances: args.max_instances,
                    instance_memory: args
                        .instance_memory
                        .unwrap_or_else(tessera_runtime::default_instance_memory),
                    // Guest output is kept for `tessera logs` and still printed as it comes.
                    log_sink: telemetry.guest_sink(Some(Arc::new(TerminalLog))),
                    ..RuntimeConfig::default()
                })
                // Before the first deploy, so its loads are counted and logged too.
                .telemetry(telemetry.clone())
                .build()
        })
        .with_context(|| format!("cannot open node state in {}", data.display()))?;

    let mut services = Vec::with_capacity(manifest.services.len());
    for spec in &manifest.services {
        let bytes = std::fs::read(&spec.component).with_context(|| {
            format!(
                "service `{}`: cannot read component {}",
                spec.name,
                spec.component.display()
            )
        })?;
        let sha256 = node.upload_for(&spec.name, &spec.component, &bytes)?;
        services.push(super::release(
            &manifest,
            spec,
            args.environment.as_deref(),
            sha256,
        )?);
    }
    let outcome = node
        .deploy(&manifest.app, &services, &DeployOptions::default())
        .with_context(|| format!("cannot deploy {}", manifest.path.display()))?;
    for (service, revision) in &outcome.created {
        tracing::info!(app = %manifest.app, service, "deployed r{revision}");
    }

    let drain_timeout = manifest
        .services
        .iter()
        .map(|s| s.revision.limits.timeout)
        .max()
        .unwrap_or(Duration::from_secs(30));
    let (gateway, admin) = args.connections.configs(drain_timeout)?;
    tracing::info!(app = %manifest.app, "serving");
    super::serve::run_node(
        node,
        telemetry,
        args.listen,
        args.admin,
        auth,
        super::serve::Listeners {
            gateway,
            admin,
            allow_private_callbacks: args.connections.allow_private_callbacks,
            joined: None,
        },
    )
}
