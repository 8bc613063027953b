//! One module per subcommand, plus what they share.

pub mod control;
pub mod serve;
pub mod up;

use tessera_manifest::ServiceSpec;
use tessera_store::RevisionConfig;
use tracing_subscriber::EnvFilter;

/// The revision configuration a manifest's service declares, as `up` deploys it and as
/// `deploy` sends it to a node.
pub fn revision_config(spec: &ServiceSpec) -> RevisionConfig {
    RevisionConfig {
        routes: spec.routes.iter().map(|r| r.to_string()).collect(),
        memory: spec.limits.memory,
        timeout_ms: u64::try_from(spec.limits.timeout.as_millis()).unwrap_or(u64::MAX),
        outbound: spec.outbound.iter().map(|o| o.to_string()).collect(),
        env: spec.env.clone(),
    }
}

/// Platform logs go to stderr through `tracing`; `RUST_LOG` sets the level (default:
/// info for Tessera, warnings for everything else).
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("warn,tessera=info,tessera_runtime=info,tessera_gateway=info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .compact()
        .try_init();
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT; shutting down"),
        () = term => tracing::info!("received SIGTERM; shutting down"),
    }
}
