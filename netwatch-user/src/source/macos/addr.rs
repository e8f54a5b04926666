//! Endpoint and TCP-state spellings of lsof, nettop and netstat, normalized
//! so that one socket parses to the same value from each tool (the join of
//! lsof sockets with nettop flows depends on it). Pure: it never runs a tool.
//!
//! The three tools print endpoints four ways:
//! - `127.0.0.1:5000`, `*:5353` (lsof, nettop IPv4: the port after a colon);
//! - `[::1]:53`, `[fe80:4::1]:22` (lsof IPv6: bracketed);
//! - `::1.5000`, `fe80::1%en0.49152`, `*.5353` (nettop IPv6: the port after the last dot);
//! - `192.168.1.23.443`, `*.*` (netstat: the port after the last dot, IPv4 too).
//!
//! Normalization: `*` is the family's unspecified address and a `*` port is 0;
//! IPv4-mapped IPv6 addresses become IPv4 (a dual-stack socket is shown either
//! way); link-local IPv6 loses its scope, both the `%en0` suffix and the
//! interface index the BSD kernel embeds in the second 16-bit word
//! (`fe80:4::1` is `fe80::1` on interface 4), so every tool's spelling of it
//! compares equal. Scope ids are therefore always 0.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Address family of a socket, for resolving `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }
}

/// One endpoint as printed, before `*` is given a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `None` for `*` (or an empty host).
    pub ip: Option<IpAddr>,
    /// 0 for `*`.
    pub port: u16,
}

impl Endpoint {
    /// The socket address, `*` taken as `family`'s unspecified address.
    pub fn resolve(self, family: Family) -> SocketAddr {
        SocketAddr::new(self.ip.unwrap_or_else(|| family.unspecified()), self.port)
    }

    /// `*:*`, `*.*`, `:0`: the "no peer" spelling of a remote endpoint.
    pub fn is_wildcard(self) -> bool {
        self.port == 0 && self.ip.is_none_or(|ip| ip.is_unspecified())
    }

    /// The family this endpoint's literal address implies, if it has one.
    pub fn family(self) -> Option<Family> {
        self.ip.map(|ip| match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        })
    }
}

/// Parse one endpoint in any of the four spellings. `None` when it is none.
pub(crate) fn parse_endpoint(s: &str) -> Option<Endpoint> {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        rest.split_once("]:")?
    } else if s.matches(':').count() == 1 {
        s.split_once(':')?
    } else {
        s.rsplit_once('.')?
    };
    let port = match port {
        "*" => 0,
        p if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        _ => return None,
    };
    let ip = match host {
        "" | "*" => None,
        h => Some(parse_ip(h)?),
    };
    Some(Endpoint { ip, port })
}

/// Parse an address literal, dropping any `%scope`, and normalize it.
fn parse_ip(host: &str) -> Option<IpAddr> {
    let bare = host.split_once('%').map_or(host, |(addr, _scope)| addr);
    let ip: IpAddr = bare.parse().ok()?;
    Some(normalize_ip(ip))
}

/// IPv4-mapped to IPv4; link-local IPv6 without its KAME-embedded scope.
fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            let mut seg = v6.segments();
            seg[1] = 0;
            IpAddr::V6(Ipv6Addr::from(seg))
        }
        other => other,
    }
}

/// TCP state names and the UDP state come from the one table in
/// [`crate::net`].
pub use crate::net::normalize_tcp_state;
pub(crate) use crate::net::udp_state;

/// State used when a TCP socket's state is not printed or not recognized.
pub(crate) const UNKNOWN_STATE: &str = crate::net::state::UNKNOWN;

#[cfg(test)]
mod tests {
    use super::super::fixtures::sa;
    use super::*;

    fn resolved(s: &str, family: Family) -> Option<SocketAddr> {
        parse_endpoint(s).map(|e| e.resolve(family))
    }

    #[test]
    fn every_spelling_of_the_same_endpoint_is_equal() {
        let v4 = Some(sa("192.168.1.23:443"));
        assert_eq!(resolved("192.168.1.23:443", Family::V4), v4);
        assert_eq!(resolved("192.168.1.23.443", Family::V4), v4);
        assert_eq!(resolved("[::ffff:192.168.1.23]:443", Family::V6), v4);
        assert_eq!(resolved("::ffff:192.168.1.23.443", Family::V6), v4);
        let v6 = Some(sa("[::1]:53"));
        assert_eq!(resolved("[::1]:53", Family::V6), v6);
        assert_eq!(resolved("::1.53", Family::V6), v6);
        let ll = Some(sa("[fe80::1c2b:3c4d:5e6f:7a8b]:49152"));
        assert_eq!(
            resolved("[fe80:4::1c2b:3c4d:5e6f:7a8b]:49152", Family::V6),
            ll
        );
        assert_eq!(
            resolved("fe80::1c2b:3c4d:5e6f:7a8b%en0.49152", Family::V6),
            ll
        );
        assert_eq!(
            resolved("[fe80::1c2b:3c4d:5e6f:7a8b%en0]:49152", Family::V6),
            ll
        );
    }

    #[test]
    fn wildcards_take_the_family_given() {
        assert_eq!(resolved("*:5353", Family::V4), Some(sa("0.0.0.0:5353")));
        assert_eq!(resolved("*:5353", Family::V6), Some(sa("[::]:5353")));
        assert_eq!(resolved("*.5353", Family::V6), Some(sa("[::]:5353")));
        for w in ["*:*", "*.*", ":0", "0.0.0.0:0", "[::]:0"] {
            let e = parse_endpoint(w).unwrap();
            assert!(e.is_wildcard(), "{w}");
        }
        assert!(!parse_endpoint("*:53").unwrap().is_wildcard());
        assert_eq!(parse_endpoint("*.*").unwrap().family(), None);
    }

    #[test]
    fn nonsense_is_none_not_a_panic() {
        for s in [
            "",
            "*",
            "[::1]",
            "[::1]53",
            "1.2.3.4:",
            "1.2.3.4:99999",
            "host:80",
            "::1.x",
            "[:80",
            "é:1",
            "1.2.3.4:+80",
            "a.b",
            "1:2:3",
        ] {
            assert_eq!(parse_endpoint(s), None, "{s:?}");
        }
    }

    #[test]
    fn tcp_states_in_every_spelling() {
        assert_eq!(normalize_tcp_state("ESTABLISHED"), Some("ESTABLISHED"));
        assert_eq!(normalize_tcp_state("Established"), Some("ESTABLISHED"));
        assert_eq!(normalize_tcp_state("CloseWait"), Some("CLOSE_WAIT"));
        assert_eq!(normalize_tcp_state("CLOSE_WAIT"), Some("CLOSE_WAIT"));
        assert_eq!(normalize_tcp_state("SYN_RCVD"), Some("SYN_RECV"));
        assert_eq!(normalize_tcp_state("SynReceived"), Some("SYN_RECV"));
        assert_eq!(normalize_tcp_state("FIN_WAIT_1"), Some("FIN_WAIT1"));
        assert_eq!(normalize_tcp_state("FinWait2"), Some("FIN_WAIT2"));
        assert_eq!(normalize_tcp_state("TimeWait"), Some("TIME_WAIT"));
        assert_eq!(normalize_tcp_state("Closed"), Some("CLOSED"));
        assert_eq!(normalize_tcp_state("Listen"), Some("LISTEN"));
        assert_eq!(normalize_tcp_state("LAST_ACK"), Some("LAST_ACK"));
        assert_eq!(normalize_tcp_state(""), None);
        assert_eq!(normalize_tcp_state("BE"), None);
        assert_eq!(normalize_tcp_state("ESTABLISHED!"), None);
    }
}
