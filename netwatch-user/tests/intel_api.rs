//! `netwatch::intel::NetworkIntel` through the public API only: events fed
//! by hand, the exact alerts and DNS analytics they make (netwatch-sdk
//! 0.3.2's thresholds and latency buckets), with the alert timestamps tied
//! to a fixed wall time. Pure: no privilege, no socket, no clock read
//! beyond `Instant::now()` for the base of the event times.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use netwatch::intel::{
    AlertConfig, DnsQuery, DnsResponse, InboundAttempt, InterfaceRate, NetworkIntel,
    OutboundConnect, ProcessRate,
};
use netwatch::wire::{Alert, AlertCategory, AlertSeverity, DnsAnalytics};

fn sa(s: &str) -> SocketAddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("{s}: {e}"),
    }
}

fn ip(s: &str) -> IpAddr {
    sa(&format!("{s}:0")).ip()
}

/// 2026-01-01T00:00:00Z, the wall time tied to the test's first instant.
fn wall0() -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(1_767_225_600, 0).unwrap_or_default()
}

/// A `NetworkIntel` whose instant `t0` reads as [`wall0`].
fn intel(config: AlertConfig) -> (NetworkIntel, Instant) {
    let mut i = NetworkIntel::with_config(config);
    let t0 = Instant::now();
    i.set_clock(t0, wall0());
    (i, t0)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn attempt(at: Instant, from: &str, port: u16, refused: bool) -> InboundAttempt {
    InboundAttempt {
        at,
        remote: ip(from),
        local: SocketAddr::new(ip("10.0.0.1"), port),
        refused,
    }
}

#[test]
fn twenty_distinct_ports_from_one_source_raise_one_port_scan_nineteen_do_not() {
    let (mut intel, t0) = intel(AlertConfig::default());
    // Another source stops at 19 ports: never a scan.
    for i in 0..19u16 {
        let at = t0 + ms(100 * u64::from(i));
        assert_eq!(
            intel.on_conn_attempt(attempt(at, "203.0.113.5", 2000 + i, false)),
            vec![]
        );
        assert_eq!(
            intel.on_conn_attempt(attempt(at, "198.51.100.7", 1000 + i, false)),
            vec![]
        );
    }
    let raised = intel.on_conn_attempt(attempt(t0 + ms(1900), "198.51.100.7", 1019, false));
    let scan = Alert {
        severity: AlertSeverity::Critical,
        category: AlertCategory::PortScan,
        message: "Port scan from 198.51.100.7".into(),
        detail: "198.51.100.7 → 20 unique ports (1000-1019) on 10.0.0.1, 0 refused or reset, \
                 in 1.9s (window 30s)"
            .into(),
        timestamp: wall0() + TimeDelta::milliseconds(1900),
    };
    assert_eq!(raised, vec![scan.clone()]);
    // More ports from it within the window: the same alert, not another.
    assert_eq!(
        intel.on_conn_attempt(attempt(t0 + ms(2000), "198.51.100.7", 1020, false)),
        vec![]
    );
    assert_eq!(intel.tick(t0 + ms(2000)).len(), 1);
    assert_eq!(intel.active_alerts()[0].message, scan.message);
    assert_eq!(
        intel.alert_history().iter().cloned().collect::<Vec<_>>(),
        vec![scan]
    );
    // Active until 60 s after it was raised (1.9 s; ports past the
    // threshold do not refresh it), then in the history only.
    assert_eq!(intel.tick(t0 + ms(61_899)).len(), 1);
    assert_eq!(intel.tick(t0 + ms(61_900)), vec![]);
    assert_eq!(intel.alert_history().len(), 1);
}

#[test]
fn ports_spread_over_more_than_the_window_are_no_scan() {
    let (mut intel, t0) = intel(AlertConfig::default());
    for i in 0..10u16 {
        assert_eq!(
            intel.on_conn_attempt(attempt(t0, "198.51.100.8", 1000 + i, false)),
            vec![]
        );
    }
    // 30.001 s later the window starts again: 10 + 10 never reach 20 in one.
    for i in 10..20u16 {
        let at = t0 + ms(30_001);
        assert_eq!(
            intel.on_conn_attempt(attempt(at, "198.51.100.8", 1000 + i, false)),
            vec![]
        );
    }
    assert_eq!(intel.tick(t0 + ms(30_001)), vec![]);
}

#[test]
fn refused_attempts_make_a_scan_at_the_configured_count() {
    let mut config = AlertConfig::default();
    config.port_scan.failed_attempts = 3;
    let (mut intel, t0) = intel(config);
    assert_eq!(
        intel.on_conn_attempt(attempt(t0, "192.0.2.9", 22, true)),
        vec![]
    );
    assert_eq!(
        intel.on_conn_attempt(attempt(t0 + ms(100), "192.0.2.9", 22, true)),
        vec![]
    );
    let raised = intel.on_conn_attempt(attempt(t0 + ms(200), "192.0.2.9", 22, true));
    assert_eq!(raised.len(), 1);
    assert_eq!(
        raised[0].detail,
        "192.0.2.9 → 1 unique ports (22-22) on 10.0.0.1, 3 refused or reset, in 0.2s (window 30s)"
    );
}

#[test]
fn six_connections_ten_seconds_apart_are_a_beacon_five_are_not() {
    let (mut intel, t0) = intel(AlertConfig::default());
    let connect = |i: u64| OutboundConnect {
        at: t0 + Duration::from_secs(10 * i),
        local: Some(SocketAddr::new(ip("10.0.0.1"), 40_000 + i as u16)),
        remote: sa("198.51.100.1:443"),
        pid: Some(7),
        process: Some("curl".into()),
    };
    for i in 0..5 {
        assert_eq!(intel.on_connect(connect(i)), vec![]);
    }
    assert_eq!(
        intel.on_connect(connect(5)),
        vec![Alert {
            severity: AlertSeverity::Warning,
            category: AlertCategory::Beaconing,
            message: "Beaconing: curl (pid 7) on 10.0.0.1 → 198.51.100.1:443".into(),
            detail: "Regular interval 10.000s (jitter 0.0%), 5 intervals over 6 connections".into(),
            timestamp: wall0() + TimeDelta::seconds(50),
        }]
    );
}

#[test]
fn an_interface_over_the_threshold_for_two_samples_raises_one_bandwidth_alert() {
    let (mut intel, t0) = intel(AlertConfig::default());
    let rate = |s: u64, rx: f64| InterfaceRate {
        at: t0 + Duration::from_secs(s),
        interface: "eth0".into(),
        rx_bps: rx,
        tx_bps: 0.0,
    };
    assert_eq!(intel.on_interface_rate(rate(1, 150e6)), vec![]);
    let raised = intel.on_interface_rate(rate(2, 150e6));
    assert_eq!(
        raised,
        vec![Alert {
            severity: AlertSeverity::Warning,
            category: AlertCategory::Bandwidth,
            message: "eth0: bandwidth threshold exceeded".into(),
            detail: "RX: 150.0 MB/s, TX: 0 B/s (threshold: 100.0 MB/s; 2 consecutive samples)"
                .into(),
            timestamp: wall0() + TimeDelta::seconds(2),
        }]
    );
    // The same episode goes on: nothing new.
    assert_eq!(intel.on_interface_rate(rate(3, 150e6)), vec![]);
    // A process with its own threshold.
    let mut config = AlertConfig::default();
    config.bandwidth.process_bps = 1e6;
    let (mut intel, t0) = self::intel(config);
    let p = |s: u64| ProcessRate {
        at: t0 + Duration::from_secs(s),
        pid: Some(42),
        name: "scp".into(),
        rx_bps: 0.0,
        tx_bps: 2e6,
    };
    assert_eq!(intel.on_process_rate(p(1)), vec![]);
    let raised = intel.on_process_rate(p(2));
    assert_eq!(raised.len(), 1);
    assert_eq!(
        raised[0].message,
        "process scp (pid 42): bandwidth threshold exceeded"
    );
}

#[test]
fn a_long_query_name_is_a_dns_tunnel_suspect() {
    let (mut intel, t0) = intel(AlertConfig::default());
    let q = |name: String| DnsQuery {
        at: t0,
        id: 1,
        client: sa("10.0.0.5:40001"),
        name,
    };
    // 80 bytes is allowed (the SDK's limit), 97 is not.
    assert_eq!(
        intel.on_dns_query(q(format!("{}.ex.com", "a".repeat(73)))),
        vec![]
    );
    let raised = intel.on_dns_query(q(format!("{}.ex.com", "b".repeat(90))));
    assert_eq!(raised.len(), 1);
    assert_eq!(
        (
            raised[0].severity,
            raised[0].category,
            raised[0].message.as_str()
        ),
        (
            AlertSeverity::Warning,
            AlertCategory::DnsTunnel,
            "Suspicious DNS: long query name (97b)"
        )
    );
}

#[test]
fn dns_queries_and_responses_make_exact_analytics_per_interval() {
    let (mut intel, t0) = intel(AlertConfig::default());
    let c1 = sa("10.0.0.5:40001");
    let c2 = sa("10.0.0.5:40002");
    let query = |ms_at: u64, id: u16, client: SocketAddr, name: &str| DnsQuery {
        at: t0 + ms(ms_at),
        id,
        client,
        name: name.into(),
    };
    let response = |ms_at: u64, id: u16, client: SocketAddr, rcode: u8| DnsResponse {
        at: t0 + ms(ms_at),
        id,
        client,
        rcode,
    };
    assert_eq!(
        intel.on_dns_query(query(0, 1, c1, "www.Example.com")),
        vec![]
    );
    intel.on_dns_query(query(1, 1, c2, "api.example.com"));
    intel.on_dns_query(query(2, 2, c1, "nope.test.org."));
    intel.on_dns_query(query(3, 3, c1, "lost.example.net"));
    intel.on_dns_response(response(4, 1, c1, 0)); // 4 ms: < 5
    intel.on_dns_response(response(31, 1, c2, 0)); // 30 ms: < 50
    intel.on_dns_response(response(702, 2, c1, 3)); // NXDOMAIN, 700 ms: ≥ 500
    intel.on_dns_response(response(800, 9, c1, 0)); // no query: no latency
    let want = DnsAnalytics {
        total_queries: 4,
        total_responses: 4,
        nxdomain_count: 1,
        latency_buckets: [1, 0, 0, 1, 0, 0, 0, 1],
        top_domains: vec![
            ("example.com".into(), 2),
            ("example.net".into(), 1),
            ("test.org".into(), 1),
        ],
    };
    assert_eq!(intel.dns_analytics(), want, "before the interval ends");
    assert_eq!(intel.take_dns_analytics(t0 + ms(1000)), want);
    assert_eq!(intel.dns_analytics(), DnsAnalytics::default());

    // The next interval: the late answer to query 3 still matches (1.2 s).
    intel.on_dns_response(response(1203, 3, c1, 0));
    let a = intel.take_dns_analytics(t0 + ms(2000));
    assert_eq!((a.total_queries, a.total_responses), (0, 1));
    assert_eq!(a.latency_buckets, [0, 0, 0, 0, 0, 0, 0, 1]);
    // A query unanswered for more than 5 s is given up: its response then
    // counts, without a latency.
    intel.on_dns_query(query(2000, 4, c1, "a.example.org"));
    intel.take_dns_analytics(t0 + ms(7001));
    intel.on_dns_response(response(7002, 4, c1, 0));
    let a = intel.take_dns_analytics(t0 + ms(8000));
    assert_eq!(
        (a.total_responses, a.latency_buckets),
        (1, [0, 0, 0, 0, 0, 0, 0, 0])
    );
}
