//! `secret set|ls|rm`: a service's secrets, by name.

use anyhow::{Context, bail};
use clap::Args;
use reqwest::Method;
use tessera_api::client::Payload;
use tessera_api::{SecretList, SecretValue};

use super::{Client, Remote, format_time, resolve_app};

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
            client.expect_ok(
                Method::PUT,
                &format!("/v1/apps/{app}/services/{service}/secrets/{name}"),
                Payload::Json(&body),
            )?;
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
            client.expect_ok(
                Method::DELETE,
                &format!("/v1/apps/{app}/services/{service}/secrets/{name}"),
                Payload::None,
            )?;
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
