//! One module per subcommand, plus what they share.

pub mod cluster;
pub mod control;
pub mod serve;
pub mod source;
pub mod up;

use anyhow::{Context, bail};
use tessera_data::Migration;
use tessera_manifest::{Manifest, ServiceSpec};
use tessera_node::ServiceRelease;
use tessera_store::ServiceDeploy;
use tracing_subscriber::EnvFilter;

/// What a deploy of a manifest's service carries: its revision configuration (with the
/// chosen environment's configuration) and its migrations read from disk. `up` deploys
/// it to its embedded node; `deploy` sends it to a node.
pub fn release(
    manifest: &Manifest,
    spec: &ServiceSpec,
    environment: Option<&str>,
    sha256: String,
) -> anyhow::Result<ServiceRelease> {
    let config = manifest
        .config_for(spec, environment)
        .map_err(|m| anyhow::anyhow!(m))?;
    let mut migrations = Vec::with_capacity(spec.migrations.len());
    for path in &spec.migrations {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| {
                format!(
                    "service `{}`: migration {} has no file name",
                    spec.name,
                    path.display()
                )
            })?;
        // The file name is what the database records as applied.
        if migrations.iter().any(|m: &Migration| m.name == name) {
            bail!(
                "service `{}`: two migrations are named `{name}`; migration file names must be unique",
                spec.name
            );
        }
        let sql = std::fs::read_to_string(path).with_context(|| {
            format!(
                "service `{}`: cannot read migration {}",
                spec.name,
                path.display()
            )
        })?;
        migrations.push(Migration { name, sql });
    }
    Ok(ServiceRelease {
        service: ServiceDeploy {
            name: spec.name.clone(),
            sha256,
            config: spec.revision(config),
        },
        migrations,
    })
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

/// Shortest control-API token accepted, and the length below which the node warns.
const MIN_TOKEN: usize = 16;
const GOOD_TOKEN: usize = 32;

/// What the control API does when `TESSERA_TOKEN` is not set.
pub enum WithoutToken {
    /// Open on a loopback admin address (`up`, and `serve --dev`), refused elsewhere.
    OpenOnLoopback,
    /// Refused: the node must have a token (`serve`).
    Refuse,
}

/// The control API's authentication, from `TESSERA_TOKEN` and where the admin listener is;
/// checked before anything binds.
pub fn control_auth(
    admin: std::net::SocketAddr,
    without: WithoutToken,
) -> anyhow::Result<tessera_api::Auth> {
    use tessera_api::Auth;
    match (control_token()?, without) {
        (Some(token), _) => Ok(Auth::Token(token.into())),
        (None, WithoutToken::OpenOnLoopback) if admin.ip().is_loopback() => Ok(Auth::Open),
        (None, WithoutToken::OpenOnLoopback) => anyhow::bail!(
            "without TESSERA_TOKEN the control API is open only on a loopback admin address, not {admin}: set TESSERA_TOKEN"
        ),
        (None, WithoutToken::Refuse) => anyhow::bail!(
            "set TESSERA_TOKEN to protect the control API (or pass --dev on a loopback admin address)"
        ),
    }
}

/// `TESSERA_TOKEN`, if set: refused when shorter than 16 bytes (guessable), warned about
/// when shorter than 32.
fn control_token() -> anyhow::Result<Option<String>> {
    let Some(token) = std::env::var("TESSERA_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    else {
        return Ok(None);
    };
    if token.len() < MIN_TOKEN {
        anyhow::bail!(
            "TESSERA_TOKEN is {} bytes long; use at least {MIN_TOKEN} (better {GOOD_TOKEN} or more random bytes, e.g. `openssl rand -hex 32`)",
            token.len()
        );
    }
    if token.len() < GOOD_TOKEN || token.bytes().all(|b| b == token.as_bytes()[0]) {
        tracing::warn!(
            length = token.len(),
            "TESSERA_TOKEN is weak: use at least {GOOD_TOKEN} random bytes (e.g. `openssl rand -hex 32`)"
        );
    }
    Ok(Some(token))
}

/// Connection limits and timeouts of a node's two listeners (`up` and `serve`).
#[derive(clap::Args, Debug, Clone)]
pub struct ListenArgs {
    /// Most connections the gateway holds open at once; past it a connection is refused
    /// with a 503. Default and ceiling: half the process's open-file limit, so data files
    /// and the admin listener always have descriptors left.
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Most gateway connections from one client address (default: half of
    /// --max-connections, at most 1000).
    #[arg(long, env = "TESSERA_MAX_CONNECTIONS_PER_CLIENT", value_name = "N")]
    max_connections_per_client: Option<usize>,
    /// How long a connection may take to send a request's headers, the first request's
    /// counted from when it opens.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    header_timeout: std::time::Duration,
    /// How long a connection stays open with no request in flight.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    idle_timeout: std::time::Duration,
    /// Let async-invocation callbacks reach loopback, private and link-local addresses
    /// (development; the node's own listeners stay refused).
    #[arg(long, env = "TESSERA_ALLOW_PRIVATE_CALLBACKS", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_private_callbacks: bool,
}

pub fn parse_size_arg(text: &str) -> Result<u64, String> {
    let bytes = tessera_manifest::parse_size(text)?;
    if bytes < 1 << 20 {
        return Err("must be at least 1MiB".into());
    }
    Ok(bytes)
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

impl ListenArgs {
    /// The gateway's and the admin listener's settings, within the open-file budget.
    pub fn configs(
        &self,
        drain_timeout: std::time::Duration,
    ) -> anyhow::Result<(
        tessera_gateway::ListenerConfig,
        tessera_gateway::ListenerConfig,
    )> {
        use tessera_gateway::{FdBudget, ListenerConfig};
        let budget = FdBudget::for_limit(open_file_limit());
        let gateway_cap = match self.max_connections {
            Some(0) => anyhow::bail!("--max-connections must be at least 1"),
            Some(n) if n > budget.gateway => {
                tracing::warn!(
                    requested = n,
                    allowed = budget.gateway,
                    "--max-connections is lowered to half the open-file limit"
                );
                budget.gateway
            }
            Some(n) => n,
            None => budget.gateway,
        };
        let mut gateway = ListenerConfig::new("gateway", gateway_cap);
        if let Some(n) = self.max_connections_per_client {
            if n == 0 {
                anyhow::bail!("--max-connections-per-client must be at least 1");
            }
            gateway.max_connections_per_client = n.min(gateway_cap);
        }
        gateway.header_timeout = self.header_timeout;
        gateway.idle_timeout = self.idle_timeout;
        gateway.drain_timeout = drain_timeout;
        let mut admin = ListenerConfig::new("admin", budget.admin);
        admin.header_timeout = self.header_timeout;
        admin.idle_timeout = self.idle_timeout;
        admin.drain_timeout = drain_timeout;
        Ok((gateway, admin))
    }
}

/// The process's soft limit on open files (after [`raise_open_file_limit`]).
pub fn open_file_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct passed to it.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return limit.rlim_cur;
        }
    }
    1024
}

/// Raises the soft limit on open files to the hard one: every loaded service holds its
/// database (and WAL) files open, and a node serves thousands of services. The default
/// soft limit (often 1,024) would otherwise cap a node at a few hundred loaded services.
pub fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        let raised = unsafe {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < limit.rlim_max
                && {
                    limit.rlim_cur = limit.rlim_max;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
                }
        };
        if raised {
            tracing::debug!(open_files = limit.rlim_cur, "raised the open-file limit");
        }
    }
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
