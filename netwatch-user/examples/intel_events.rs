//! The alert detectors and DNS analytics fed by hand, with no collector
//! and no privilege: a program that sees connections and DNS messages of
//! its own (a proxy, a capture, a firewall log) hands them to
//! `netwatch::intel::NetworkIntel` and gets netwatch's alerts back. Here
//! the events are made up: a port scan, a beacon, and a few lookups.
//!
//! ```text
//! cargo run --example intel_events
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use netwatch::intel::{
    AlertConfig, DnsQuery, DnsResponse, InboundAttempt, NetworkIntel, OutboundConnect,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Custom thresholds: a scan from 10 ports (the SDK's is 20).
    let mut config = AlertConfig::default();
    config.port_scan.distinct_ports = 10;
    let mut intel = NetworkIntel::with_config(config);
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);

    // A scanner touching 12 ports in 1.2 s.
    let scanner = "198.51.100.7".parse()?;
    for i in 0..12u16 {
        let local = SocketAddr::new("10.0.0.1".parse()?, 8000 + i);
        for a in intel.on_conn_attempt(InboundAttempt {
            at: at(100 * u64::from(i)),
            remote: scanner,
            local,
            refused: true,
        }) {
            println!("raised: {}", netwatch::text::visible(&a.message, 200));
        }
    }

    // A process calling home every 30 s.
    for i in 0..6u64 {
        for a in intel.on_connect(OutboundConnect {
            at: at(30_000 * i),
            local: Some("10.0.0.1:0".parse()?),
            remote: "203.0.113.50:443".parse()?,
            pid: Some(4242),
            process: Some("updater".into()),
        }) {
            println!("raised: {}", netwatch::text::visible(&a.message, 200));
        }
    }

    // Two lookups, one answered in 12 ms, one NXDOMAIN in 40 ms.
    let client: SocketAddr = "10.0.0.1:53001".parse()?;
    for (id, name, rcode, took) in [
        (1, "www.example.com", 0, 12),
        (2, "nope.example.org", 3, 40),
    ] {
        intel.on_dns_query(DnsQuery {
            at: at(200_000),
            id,
            client,
            name: name.into(),
        });
        intel.on_dns_response(DnsResponse {
            at: at(200_000 + took),
            id,
            client,
            rcode,
        });
    }

    // The scan was raised 200 s ago: past its 60 s it is in the history only.
    let active = intel.tick(at(200_100));
    println!(
        "{} alerts raised, {} still active",
        intel.alert_history().len(),
        active.len()
    );
    for a in &active {
        println!(
            "{:?} {:?}: {} ({})",
            a.severity,
            a.category,
            netwatch::text::visible(&a.message, 200),
            netwatch::text::visible(&a.detail, 400)
        );
    }
    let dns = intel.take_dns_analytics(at(200_100));
    println!("dns: {}", serde_json::to_string(&dns)?);
    Ok(())
}
