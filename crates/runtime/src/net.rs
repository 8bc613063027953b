//! Facts about addresses that both the guests' outgoing requests and the node's callbacks
//! need: whether an address is one of this node's own listeners.

use std::net::{IpAddr, SocketAddr};

/// IPv4-mapped IPv6 addresses are the IPv4 addresses they map.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `addr` reaches one of `listeners`: the same address, or a listener on the
/// unspecified address and `addr` one of this host's (which binding to it proves).
///
/// Connecting to the unspecified address (`0.0.0.0`, `::`) reaches this host, so it
/// matches every listener on its port.
pub fn is_own_listener(addr: SocketAddr, listeners: &[SocketAddr]) -> bool {
    let ip = canonical(addr.ip());
    listeners.iter().any(|listener| {
        listener.port() == addr.port()
            && (canonical(listener.ip()) == ip
                || ip.is_unspecified()
                || (listener.ip().is_unspecified() && is_local_address(ip)))
    })
}

fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_on_every_address_are_reached_through_any_local_one() {
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:3001".parse().unwrap(),
            "0.0.0.0:3000".parse().unwrap(),
        ];
        for reached in [
            "127.0.0.1:3001",
            "[::ffff:127.0.0.1]:3001",
            "127.0.0.1:3000",
            "127.0.0.2:3000",
            "0.0.0.0:3001",
            "[::]:3001",
        ] {
            assert!(is_own_listener(reached.parse().unwrap(), &own), "{reached}");
        }
        for other in ["127.0.0.1:8080", "127.0.0.2:3001", "93.184.215.14:3000"] {
            assert!(!is_own_listener(other.parse().unwrap(), &own), "{other}");
        }
    }
}
