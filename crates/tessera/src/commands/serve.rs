//! `tessera serve`: a long-running node. Apps are deployed to it through the control API
//! on the admin listener; the public gateway serves their traffic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tessera_api::Auth;
use tessera_gateway::{GatewayConfig, ListenerConfig};
use tessera_node::{CallbackPolicy, Node, NodeBuilder};
use tessera_runtime::{RuntimeConfig, TerminalLog};
use tessera_telemetry::{Telemetry, TelemetryConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// Where the node keeps its state: control database, artifacts, compiled code.
    #[arg(long, env = "TESSERA_DATA", default_value = ".tessera-node")]
    data: PathBuf,
    /// Address of the public gateway.
    #[arg(long, default_value = "127.0.0.1:3000", env = "TESSERA_LISTEN")]
    listen: SocketAddr,
    /// Address of the admin listener (control API under /v1).
    #[arg(long, default_value = "127.0.0.1:3001", env = "TESSERA_ADMIN")]
    admin: SocketAddr,
    /// Allow the control API without a token. Refused unless the admin address is
    /// loopback.
    #[arg(long)]
    dev: bool,
    /// Most instances that may run at once across all services.
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
    /// Most linear memory all running instances may hold together (`512MiB`, `8GiB`);
    /// a request that would need more is answered 503 `capacity`. Default: half the
    /// machine's memory.
    #[arg(long, env = "TESSERA_INSTANCE_MEMORY", value_name = "SIZE", value_parser = super::parse_size_arg)]
    instance_memory: Option<u64>,
    /// Join a cluster: the NATS JetStream servers that hold the shared state
    /// (`nats://host:4222`, comma-separated). Without it the node keeps everything in
    /// its data directory.
    #[arg(long, env = "TESSERA_CLUSTER", value_name = "URL[,URL...]")]
    cluster: Option<String>,
    /// This node's name in the cluster, unique among live nodes (default: the host
    /// name).
    #[arg(long, env = "TESSERA_NODE", requires = "cluster")]
    node: Option<String>,
    #[command(flatten)]
    connections: super::ListenArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (gateway, admin) = args.connections.configs(Duration::from_secs(30))?;
    let allow_private_callbacks = args.connections.allow_private_callbacks;
    let auth = super::control_auth(
        args.admin,
        if args.dev {
            super::WithoutToken::OpenOnLoopback
        } else {
            super::WithoutToken::Refuse
        },
    )?;
    let telemetry = Telemetry::new(TelemetryConfig::default());
    let (builder, joined) = match &args.cluster {
        Some(urls) => {
            let name = args
                .node
                .clone()
                .unwrap_or_else(super::cluster::default_node_name);
            let (builder, joined) = super::cluster::join(&args.data, urls, &name)?;
            (Ok(builder), Some(joined))
        }
        None => (NodeBuilder::embedded(&args.data), None),
    };
    let node = builder
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
        .with_context(|| format!("cannot open node state in {}", args.data.display()))?;

    run_node(
        node,
        telemetry,
        args.listen,
        args.admin,
        auth,
        Listeners {
            gateway,
            admin,
            allow_private_callbacks,
            joined,
        },
    )
}

/// Settings of a node's two listeners.
pub struct Listeners {
    pub gateway: ListenerConfig,
    pub admin: ListenerConfig,
    /// Whether callbacks may go to private addresses (never to these listeners).
    pub allow_private_callbacks: bool,
    /// The node's cluster membership, when it joined one.
    pub joined: Option<super::cluster::Joined>,
}

/// Serves a node's gateway and control API until SIGINT/SIGTERM, then drains both.
pub fn run_node(
    node: Node,
    telemetry: Telemetry,
    listen: SocketAddr,
    admin: SocketAddr,
    auth: Auth,
    listeners: Listeners,
) -> anyhow::Result<()> {
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    tokio.block_on(async move {
        let gateway = tessera_gateway::bind(listen).await?;
        let admin = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin}"))?;
        tracing::info!("control API listening on http://{}/v1", admin.local_addr()?);
        for (route, target) in node.routes().current().entries() {
            tracing::info!(route = %route, service = %target.service, "route");
        }
        node.set_callback_policy(CallbackPolicy {
            allow_private: listeners.allow_private_callbacks,
            own: vec![gateway.local_addr()?, admin.local_addr()?],
        });
        match &listeners.joined {
            Some(joined) => joined.serving(&node, gateway.local_addr()?, admin.local_addr()?),
            None => node.set_membership(Arc::new(super::cluster::LocalMembership {
                node: node.clone(),
                name: tessera_events::DEFAULT_OWNER.to_owned(),
                gateway: gateway.local_addr()?,
                admin: admin.local_addr()?,
            })),
        }
        node.start_events();
        tracing::info!("gateway listening on http://{}", gateway.local_addr()?);

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let closing = telemetry.clone();
        tokio::spawn(async move {
            super::shutdown_signal().await;
            // Open `logs -f` streams would hold the admin listener's drain forever.
            closing.close_followers();
            let _ = stop.send(true);
        });
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let router = tessera_api::router(node.clone(), telemetry, auth);
        let api = tessera_gateway::serve_connections(
            admin,
            listeners.admin,
            move |_peer| {
                let router = router.clone();
                move |request| {
                    let mut router = router.clone();
                    Box::pin(async move {
                        match tower_service::Service::call(&mut router, request).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        }
                    }) as Pin<Box<dyn Future<Output = _> + Send>>
                }
            },
            wait(stopped.clone()),
        );
        let public = tessera_gateway::serve(
            gateway,
            node.routes(),
            GatewayConfig {
                listener: listeners.gateway,
            },
            wait(stopped),
        );
        let (api, public) = tokio::join!(api, public);
        // Deliveries still in flight finish (bounded); unfinished ones are retried after
        // the next start, since they were never acknowledged.
        node.stop_events().await;
        if let Some(joined) = &listeners.joined {
            joined.leave();
        }
        api.context("control API failed")?;
        public.context("gateway failed")?;
        anyhow::Ok(())
    })
}
