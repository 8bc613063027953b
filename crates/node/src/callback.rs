//! Async-invocation callbacks: the node `POST`s an invocation's result to the URL its
//! caller named, so the callback is a request the node makes on an outside client's
//! behalf. Three walls keep it from being a way into the node's network:
//!
//! 1. the service's manifest lists the origins callbacks may go to (`callbacks`); any
//!    other URL is refused when the invocation is queued;
//! 2. the host is resolved here and every address is checked before a connection is
//!    made: loopback, link-local, private, shared, multicast and unspecified addresses are
//!    refused (unless the node's operator allows private ones), and the node's own
//!    listeners always; the connection goes to the checked addresses only, so a second
//!    lookup cannot swap them;
//! 3. no redirects are followed, connecting and the whole exchange are time-bounded, and
//!    the body is bounded by what an invocation's result may hold.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use tessera_events::Outcome;
use tessera_manifest::Origin;
use tessera_runtime::net::{canonical, is_own_listener};

/// How long connecting to a callback may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one callback attempt may take in all.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per callback.
const ATTEMPTS: u32 = 3;

/// Where this node lets callbacks go, beyond each service's own list of origins.
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    /// Allow loopback, private and link-local addresses (a development machine, a test).
    /// The node's own listeners stay refused.
    pub allow_private: bool,
    /// The node's listeners: never a callback's destination.
    pub own: Vec<SocketAddr>,
}

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallbackRefused {
    #[error("callback `{0}` is not an http:// or https:// URL with a host")]
    Malformed(String),
    #[error(
        "callback origin `{origin}` is not allowed for service `{service}` (the manifest's `callbacks` lists the origins that are)"
    )]
    NotAllowed { service: String, origin: String },
    #[error("callback host `{host}` cannot be resolved: {error}")]
    Unresolvable { host: String, error: String },
    #[error("callback host `{host}` resolves to refused addresses ({addresses})")]
    Refused { host: String, addresses: String },
}

/// The origin of a callback URL (`scheme://host[:port]`), checked against a service's
/// allowed origins. Host names compare case-insensitively and without a trailing dot.
pub fn check_allowed(url: &str, service: &str, allowed: &[Origin]) -> Result<(), CallbackRefused> {
    let origin = url_origin(url).ok_or_else(|| CallbackRefused::Malformed(url.to_string()))?;
    if allowed.contains(&origin) {
        Ok(())
    } else {
        Err(CallbackRefused::NotAllowed {
            service: service.to_string(),
            origin: origin.to_string(),
        })
    }
}

fn url_origin(url: &str) -> Option<Origin> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") || !parsed.username().is_empty() {
        return None;
    }
    let host = match parsed.host()? {
        url::Host::Domain(name) => name.trim_end_matches('.').to_ascii_lowercase(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => format!("[{ip}]"),
    };
    let port = parsed.port_or_known_default()?;
    Origin::parse(&format!("{}://{host}:{port}", parsed.scheme())).ok()
}

/// Whether a callback may connect to `addr`.
pub fn check_address(addr: SocketAddr, policy: &CallbackPolicy) -> Result<(), String> {
    let ip = canonical(addr.ip());
    if is_own_listener(addr, &policy.own) {
        return Err(format!("{addr} is one of this node's listeners"));
    }
    if ip.is_unspecified() || ip.is_multicast() || is_broadcast(ip) {
        return Err(format!("{ip} is not a unicast address"));
    }
    if !policy.allow_private && is_private(ip) {
        return Err(format!("{ip} is a loopback, private or link-local address"));
    }
    Ok(())
}

fn is_broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4 == Ipv4Addr::BROADCAST)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                // 0.0.0.0/8 reaches this host on Linux.
                || a == 0
                // Shared address space (carrier-grade NAT), 100.64.0.0/10.
                || (a == 100 && (64..128).contains(&b))
                // IETF protocol assignments and benchmarking networks.
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
                // Reserved 240.0.0.0/4.
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                // Unique local fc00::/7, link-local fe80::/10, old site-local fec0::/10.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // NAT64 (64:ff9b::/96, 64:ff9b:1::/48) and IPv4-compatible ::a.b.c.d
                // forms can reach IPv4 private space.
                || (s[0] == 0x0064 && s[1] == 0xff9b)
                || s[..6] == [0; 6]
                || v6 == Ipv6Addr::UNSPECIFIED
        }
    }
}

/// Resolves a callback's host and keeps the addresses the policy allows.
async fn resolve(
    url: &reqwest::Url,
    policy: &CallbackPolicy,
) -> Result<Vec<SocketAddr>, CallbackRefused> {
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let candidates: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| CallbackRefused::Unresolvable {
                host: host.clone(),
                error: e.to_string(),
            })?
            .collect(),
    };
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for addr in candidates {
        match check_address(addr, policy) {
            Ok(()) => allowed.push(addr),
            Err(reason) => refused.push(reason),
        }
    }
    // One refused address refuses the callback: a name that also points into the node's
    // network is not one to call.
    if allowed.is_empty() || !refused.is_empty() {
        return Err(CallbackRefused::Refused {
            host,
            addresses: refused.join("; "),
        });
    }
    Ok(allowed)
}

/// Tells an async invocation's caller how it ended: a JSON `POST` to its callback URL.
/// Best effort, a few tries; the result also stays queryable by id.
pub(crate) async fn call_back(
    policy: CallbackPolicy,
    url: String,
    id: String,
    outcome: Outcome,
    succeeded: bool,
) {
    let body = serde_json::json!({
        "id": id,
        "state": if succeeded { "succeeded" } else { "failed" },
        "status": outcome.status,
        "body": String::from_utf8_lossy(&outcome.body[..outcome.body.len().min(tessera_events::invocation::MAX_RESULT)]),
        "error": outcome.error,
        "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
    });
    let Ok(parsed) = reqwest::Url::parse(&url) else {
        tracing::warn!(%url, invocation = %id, "callback is not a URL");
        return;
    };
    for attempt in 1..=ATTEMPTS {
        match post(&parsed, &body, &policy).await {
            Ok(status) if status.is_success() => return,
            Ok(status) => tracing::warn!(%url, invocation = %id, %status, "callback refused"),
            Err(Attempt::Refused(refused)) => {
                // The address will not change its kind by trying again.
                tracing::warn!(%url, invocation = %id, "callback not sent: {refused}");
                return;
            }
            Err(Attempt::Failed(error)) => {
                tracing::warn!(%url, invocation = %id, %error, "callback failed")
            }
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
    }
}

enum Attempt {
    Refused(CallbackRefused),
    Failed(String),
}

async fn post(
    url: &reqwest::Url,
    body: &serde_json::Value,
    policy: &CallbackPolicy,
) -> Result<reqwest::StatusCode, Attempt> {
    let addrs = resolve(url, policy).await.map_err(Attempt::Refused)?;
    let mut client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ATTEMPT_TIMEOUT)
        .no_proxy();
    if let Some(host) = url.host_str() {
        // Connect to the checked addresses only: no second lookup can change them.
        client = client.resolve_to_addrs(host, &addrs);
    }
    let client = client.build().map_err(|e| Attempt::Failed(e.to_string()))?;
    let response = client
        .post(url.clone())
        .json(body)
        .send()
        .await
        .map_err(|e| Attempt::Failed(e.to_string()))?;
    Ok(response.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn private_loopback_and_link_local_addresses_are_refused() {
        let policy = CallbackPolicy::default();
        for refused in [
            "127.0.0.1:80",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "[::1]:80",
            "[fe80::1]:80",
            "[fd00::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:10.0.0.1]:80",
            "[64:ff9b::a00:1]:80",
            "[64:ff9b:1::1]:80",
            "[::10.0.0.1]:80",
            "[fec0::1]:80",
            "240.0.0.1:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
        ] {
            assert!(check_address(addr(refused), &policy).is_err(), "{refused}");
        }
        for allowed in [
            "93.184.215.14:443",
            "[2606:2800:21f:cb07:6820:80da:af6b:8b2c]:443",
        ] {
            assert!(check_address(addr(allowed), &policy).is_ok(), "{allowed}");
        }
    }

    #[test]
    fn the_nodes_own_listeners_are_refused_even_when_private_ones_are_allowed() {
        let policy = CallbackPolicy {
            allow_private: true,
            own: vec![addr("127.0.0.1:3001"), addr("0.0.0.0:3000")],
        };
        assert!(check_address(addr("127.0.0.1:3001"), &policy).is_err());
        assert!(check_address(addr("[::ffff:127.0.0.1]:3001"), &policy).is_err());
        // A listener on every address is reached through any of the host's addresses.
        assert!(check_address(addr("127.0.0.1:3000"), &policy).is_err());
        assert!(check_address(addr("127.0.0.1:8080"), &policy).is_ok());
    }

    #[test]
    fn callback_origins_are_compared_case_insensitively_with_default_ports() {
        let allowed = vec![Origin::parse("https://hooks.example.com").unwrap()];
        assert!(check_allowed("https://Hooks.Example.COM./done?x=1", "svc", &allowed).is_ok());
        assert!(check_allowed("https://hooks.example.com:443/done", "svc", &allowed).is_ok());
        assert!(matches!(
            check_allowed("http://hooks.example.com/done", "svc", &allowed),
            Err(CallbackRefused::NotAllowed { .. })
        ));
        assert!(matches!(
            check_allowed("https://user@hooks.example.com/", "svc", &allowed),
            Err(CallbackRefused::Malformed(_))
        ));
        assert!(matches!(
            check_allowed("ftp://hooks.example.com/", "svc", &allowed),
            Err(CallbackRefused::Malformed(_))
        ));
    }
}
