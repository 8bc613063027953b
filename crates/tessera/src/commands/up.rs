//! `tessera up`: load an app's manifest, prepare every service, and serve them all
//! behind one gateway until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use std::sync::Arc;

use tessera_gateway::{GatewayConfig, RouteTable, Routes, Target};
use tessera_runtime::{CodeSource, Runtime, RuntimeConfig, ServiceConfig};

#[derive(Args)]
pub struct UpArgs {
    /// The app directory (holding tessera.toml) or the manifest file itself.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Address of the public gateway.
    #[arg(long, default_value = "127.0.0.1:3000", env = "TESSERA_LISTEN")]
    listen: SocketAddr,
    /// Where Tessera keeps its state (compiled code); default: `.tessera` in the app
    /// directory.
    #[arg(long, env = "TESSERA_DATA")]
    data: Option<PathBuf>,
    /// Most instances that may run at once across all services.
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    // Everything that can be wrong with the app is checked before a socket is bound.
    let manifest = tessera_manifest::load(&args.dir)?;
    let app_dir = manifest
        .path
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let data = args.data.unwrap_or_else(|| app_dir.join(".tessera"));
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(data.join("compiled")),
        max_instances: args.max_instances,
        ..RuntimeConfig::default()
    })?;

    let mut entries = Vec::new();
    for spec in &manifest.services {
        let config = ServiceConfig {
            name: spec.name.clone(),
            limits: spec.limits,
            outbound: spec.outbound.clone(),
            env: spec.env.clone(),
        };
        let (service, report) = runtime.load_service_file(config, &spec.component)?;
        let how = match report.source {
            CodeSource::Compiled => "compiled",
            CodeSource::Cache => "loaded from cache",
        };
        tracing::info!(
            service = %spec.name,
            sha256 = &service.content_hash()[..12],
            elapsed = ?report.elapsed,
            "{how}"
        );
        let target = Arc::new(Target::single(service));
        for route in &spec.routes {
            entries.push((route.clone(), target.clone()));
        }
    }
    let table = RouteTable::new(entries);
    let drain_timeout = manifest
        .services
        .iter()
        .map(|s| s.limits.timeout)
        .max()
        .unwrap_or(Duration::from_secs(30));

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    tokio.block_on(async move {
        let listener = tessera_gateway::bind(args.listen).await?;
        let local = listener.local_addr()?;
        for (route, target) in table.entries() {
            tracing::info!(route = %route, service = %target.service, "route");
        }
        tracing::info!(app = %manifest.app, "gateway listening on http://{local}");
        let config = GatewayConfig {
            drain_timeout,
            ..GatewayConfig::default()
        };
        tessera_gateway::serve(
            listener,
            Routes::new(table),
            config,
            super::shutdown_signal(),
        )
        .await?;
        anyhow::Ok(())
    })?;
    // Keep the runtime (and its epoch ticker) alive until the gateway has drained.
    drop(runtime);
    Ok(())
}
