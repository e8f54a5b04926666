//! Where the health probes go: the default gateway (`/proc/net/route`,
//! `/proc/net/ipv6_route`; `netstat -rn` on macOS) and the DNS server
//! (`/etc/resolv.conf`, and systemd-resolved's upstream when only its stub
//! 127.0.0.53 is listed). Parsers are pure; the readers only read files.
//! Nothing here sends a packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// systemd-resolved's stub listener.
pub const RESOLVED_STUB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
/// systemd-resolved's list of upstream servers, in resolv.conf syntax.
pub const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";

/// The IPv4 default gateway from `/proc/net/route` text: the first up
/// (flag 0x1) gateway (0x2) route with destination and mask 0, lowest metric.
pub fn parse_proc_route(text: &str) -> Option<IpAddr> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            if f[1] != "00000000" || f[7] != "00000000" || flags & 0x3 != 0x3 {
                return None;
            }
            let gw = u32::from_str_radix(f[2], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            // The kernel prints the address in host (little-endian) order.
            Some((metric, IpAddr::V4(Ipv4Addr::from(gw.swap_bytes()))))
        })
        .min_by_key(|(m, _)| *m)
        .map(|(_, ip)| ip)
}

/// The IPv6 default gateway from `/proc/net/ipv6_route` text: destination
/// `::/0` with a non-zero next hop, lowest metric.
pub fn parse_proc_ipv6_route(text: &str) -> Option<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[0] != "0".repeat(32) || f[1] != "00" {
                return None;
            }
            let hop = u128::from_str_radix(f[4], 16).ok()?;
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            (hop != 0).then_some((metric, IpAddr::V6(Ipv6Addr::from(hop))))
        })
        .min_by_key(|(m, _)| *m)
        .map(|(_, ip)| ip)
}

/// The default gateway from `netstat -rn` output (macOS `default` rows).
pub fn parse_netstat_rn(text: &str) -> Option<IpAddr> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        match (f.next(), f.next()) {
            (Some("default" | "0.0.0.0"), Some(gw)) => gw.split('%').next()?.parse().ok(),
            _ => None,
        }
    })
}

/// Every `nameserver` of resolv.conf text, in order.
pub fn parse_nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "nameserver")
                .then(|| f.next())
                .flatten()
                .and_then(|a| a.split('%').next()?.parse().ok())
        })
        .collect()
}

/// The DNS server to probe: the first nameserver of `resolv_conf`; when
/// that is systemd-resolved's stub, the first of `upstream` (its real
/// servers), falling back to the stub.
pub fn pick_dns(resolv_conf: &str, upstream: Option<&str>) -> Option<IpAddr> {
    let first = *parse_nameservers(resolv_conf).first()?;
    if first == RESOLVED_STUB {
        if let Some(up) = upstream.and_then(|u| parse_nameservers(u).into_iter().next()) {
            return Some(up);
        }
    }
    Some(first)
}

/// The default gateway of this host, IPv4 first.
pub fn detect_gateway() -> Option<IpAddr> {
    #[cfg(target_os = "macos")]
    {
        let out = std::process::Command::new("netstat")
            .arg("-rn")
            .output()
            .ok()?;
        parse_netstat_rn(&String::from_utf8_lossy(&out.stdout))
    }
    #[cfg(not(target_os = "macos"))]
    {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        read("/proc/net/route")
            .and_then(|t| parse_proc_route(&t))
            .or_else(|| read("/proc/net/ipv6_route").and_then(|t| parse_proc_ipv6_route(&t)))
    }
}

/// The DNS server of this host.
pub fn detect_dns() -> Option<IpAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    let upstream = std::fs::read_to_string(RESOLVED_UPSTREAM).ok();
    pick_dns(&conf, upstream.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_route_default_gateway_lowest_metric() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
wg0\t00000000\t0100000A\t0003\t0\t0\t50\t00000000\t0\t0\t0\n\
eth0\t0002A8C0\t00000000\t0001\t0\t0\t600\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_proc_route(t), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_proc_route("Iface\n"), None);
        assert_eq!(parse_proc_route("Iface\nbad line\n"), None);
    }

    #[test]
    fn proc_ipv6_route_default_gateway() {
        let t = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth0\n\
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0\n";
        assert_eq!(parse_proc_ipv6_route(t), Some("fe80::1".parse().unwrap()));
        // Unreachable default (no next hop) is not a gateway.
        let t = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(parse_proc_ipv6_route(t), None);
    }

    #[test]
    fn netstat_default_row() {
        let t = "Routing tables\n\nInternet:\nDestination        Gateway            Flags        Netif Expire\ndefault            10.0.0.1           UGScg          en0\n";
        assert_eq!(parse_netstat_rn(t), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            parse_netstat_rn("default fe80::1%en0 UGc en0"),
            Some("fe80::1".parse().unwrap())
        );
    }

    #[test]
    fn resolved_stub_is_replaced_by_its_upstream() {
        let stub = "# managed\nnameserver 127.0.0.53\noptions edns0\n";
        let up = "nameserver 192.168.1.1\nnameserver 1.1.1.1\n";
        assert_eq!(
            pick_dns(stub, Some(up)),
            Some("192.168.1.1".parse().unwrap())
        );
        assert_eq!(pick_dns(stub, None), Some(RESOLVED_STUB));
        assert_eq!(
            pick_dns("nameserver 9.9.9.9\nnameserver 127.0.0.53\n", Some(up)),
            Some("9.9.9.9".parse().unwrap())
        );
        assert_eq!(pick_dns("; nothing\nnameserverX 1.2.3.4\n", None), None);
        assert_eq!(
            parse_nameservers("nameserver fe80::1%eth0\n"),
            vec!["fe80::1".parse::<IpAddr>().unwrap()]
        );
    }
}
