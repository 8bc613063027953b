//! The CLI side of the control API: `deploy`, `ls`, `revisions`, `traffic`, `rollback`,
//! `rm`, `secret`, the event commands and `logs`. They talk to a node only through its
//! REST API, with the API crate's client.

mod apps;
mod events;
mod logs;
mod secrets;

use anyhow::bail;
use clap::Args;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tessera_api::client::{ClientError, Payload};
use tessera_api::{AppList, AppView};

pub use apps::{
    DeployArgs, LsArgs, RmArgs, RollbackArgs, ServiceArgs, TrafficArgs, deploy, ls, revisions, rm,
    rollback, traffic,
};
pub use events::{
    DlqArgs, EventsArgs, InvocationArgs, NodesArgs, PublishArgs, dlq, events, invocation, nodes,
    publish,
};
pub use logs::{LogsArgs, logs};
pub use secrets::{SecretArgs, secret};

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

/// The API client, run to completion on a runtime of its own: commands are sequential.
struct Client {
    api: tessera_api::client::Client,
    tokio: tokio::runtime::Runtime,
}

impl Client {
    fn new(remote: &Remote) -> anyhow::Result<Client> {
        Ok(Client {
            api: tessera_api::client::Client::new(
                &remote.server,
                std::env::var("TESSERA_TOKEN").ok(),
            ),
            tokio: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    /// Sends a request and returns the status and body, whatever the status.
    fn send(
        &self,
        method: Method,
        path: &str,
        payload: Payload<'_>,
        headers: &[(&str, String)],
    ) -> anyhow::Result<(StatusCode, Vec<u8>)> {
        Ok(self
            .tokio
            .block_on(self.api.send(method, path, payload, headers))?)
    }

    /// Sends a request whose answer must be a success, and drops the body.
    fn expect_ok(&self, method: Method, path: &str, payload: Payload<'_>) -> anyhow::Result<()> {
        let (status, body) = self.send(method, path, payload, &[])?;
        if !status.is_success() {
            bail!("{}", ClientError::from_answer(status, &body));
        }
        Ok(())
    }

    fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        json: Option<&Value>,
    ) -> anyhow::Result<T> {
        Ok(self.tokio.block_on(self.api.call(method, path, json))?)
    }

    /// Hands each line of a newline-delimited stream to `each` as it arrives.
    fn stream_lines(
        &self,
        path: &str,
        each: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.tokio.block_on(self.api.stream_lines(path, each))
    }
}

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

fn format_time(unix: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(time).to_string()
}
