//! Interop with the real peer: netwatch-sdk 0.3.2 from crates.io, the
//! reference for the NetWatch Cloud wire format. The same fully populated
//! data (every optional field set, every enum variant, histories with gaps,
//! extreme numbers) is built once per side by one macro, serialized by each
//! side and parsed by the other, both ways, and compared field for field.
//! This file must never read anything outside the repository, and never
//! needs the network: the SDK is an ordinary (dev-)dependency.
//!
//! Known, intended differences (ours is a superset, never a rename):
//! - `ConnectionDetail.rx_bytes` / `tx_bytes`: the SDK has the fields but marks
//!   them `#[serde(skip)]` (internal input to its ProcessBandwidthTracker).
//!   We send them as optional additive keys; the SDK ignores them on input and
//!   never writes them, so from the SDK they arrive as `None` on our side.
//! - `Snapshot.collector`: a netwatch addition the SDK ignores.
//! - `IngestEnvelope` (`schema_version`, `agent_health`): the SDK has no
//!   envelope; it reads ours as an `IngestRequest`, and we read its bare
//!   request as schema version 1.
//!
//! Every literal below carries its type (`42u32`, `1.5f64`), so a field whose
//! name, optionality or number type differs between the two sides fails to
//! compile on the side that disagrees; the JSON comparisons then check
//! spellings, `null`-versus-absent and values.
#![cfg(feature = "wire")]

use std::path::Path;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

/// Our types.
mod ours {
    pub use netwatch_common::wire::*;
}

/// The SDK's types, gathered under the same names as ours.
mod sdk {
    pub use netwatch_sdk::collectors::connections::ConnectionDetail;
    pub use netwatch_sdk::collectors::disk::{DiskIo, DiskUsage};
    pub use netwatch_sdk::collectors::network_intel::{
        Alert, AlertCategory, AlertSeverity, DnsAnalytics,
    };
    pub use netwatch_sdk::collectors::process_bandwidth::ProcessBandwidth;
    pub use netwatch_sdk::types::*;
}

fn ts(s: &str) -> DateTime<Utc> {
    s.parse()
        .unwrap_or_else(|e| panic!("test timestamp {s}: {e}"))
}

fn host_id() -> Uuid {
    Uuid::parse_str("5f0c6a34-9d1e-4c7b-a0f2-3b8e91d4c217").unwrap()
}

// ---------------------------------------------------------------------------
// The data, once, for both sides.
// ---------------------------------------------------------------------------

/// Every alert: each severity with each category, in variant order.
macro_rules! every_alert {
    ($m:ident) => {{
        let severities = [$m::AlertSeverity::Warning, $m::AlertSeverity::Critical];
        let categories = [
            $m::AlertCategory::PortScan,
            $m::AlertCategory::Beaconing,
            $m::AlertCategory::DnsTunnel,
            $m::AlertCategory::Bandwidth,
        ];
        let mut alerts = Vec::new();
        for (i, severity) in severities.iter().enumerate() {
            for (j, category) in categories.iter().enumerate() {
                alerts.push($m::Alert {
                    severity: *severity,
                    category: *category,
                    message: format!("alert {i}/{j} from 198.51.100.7"),
                    detail: format!("détail ünïcode \"quoted\" {i}{j}\n"),
                    timestamp: ts(&format!("2026-11-24T18:59:5{j}.00{i}Z")),
                });
            }
        }
        alerts
    }};
}

/// A snapshot with every optional field set. `$extra` is the tail of the
/// struct literal: our additive fields, nothing for the SDK; `$p` and `$c`
/// the same for the full process row and the connection rows.
macro_rules! full_snapshot {
    ($m:ident, [$($p:tt)*], [$($c:tt)*], $($extra:tt)*) => {
        $m::Snapshot {
            timestamp: ts("2026-11-24T19:00:00.123456789Z"),
            interfaces: vec![
                $m::InterfaceMetric {
                    name: "eth0".to_string(),
                    is_up: true,
                    rx_bytes: u64::MAX,
                    tx_bytes: 123_456_789_012u64,
                    rx_bytes_delta: 150_000u64,
                    tx_bytes_delta: 42_000u64,
                    rx_packets: 9_000_000_000u64,
                    tx_packets: 998_877u64,
                    rx_errors: 1u64,
                    tx_errors: 2u64,
                    rx_drops: 3u64,
                    tx_drops: 4u64,
                    rx_rate: Some(10_000.5f64),
                    tx_rate: Some(2_800.25f64),
                    rx_history: Some(vec![9_000u64, 0u64, 11_000u64, u64::MAX]),
                    tx_history: Some(vec![2_500u64, 3_100u64, 0u64]),
                },
                // First-sample shape: zero rates, empty (not absent) history.
                $m::InterfaceMetric {
                    name: "lo".to_string(),
                    is_up: false,
                    rx_bytes: 0u64,
                    tx_bytes: 0u64,
                    rx_bytes_delta: 0u64,
                    tx_bytes_delta: 0u64,
                    rx_packets: 0u64,
                    tx_packets: 0u64,
                    rx_errors: 0u64,
                    tx_errors: 0u64,
                    rx_drops: 0u64,
                    tx_drops: 0u64,
                    rx_rate: Some(0.0f64),
                    tx_rate: Some(0.0f64),
                    rx_history: Some(Vec::<u64>::new()),
                    tx_history: Some(Vec::<u64>::new()),
                },
            ],
            health: Some($m::HealthMetric {
                gateway_ip: Some("10.0.0.1".to_string()),
                gateway_rtt_ms: Some(0.42f64),
                gateway_loss_pct: Some(33.3f64),
                dns_ip: Some("2001:db8::53".to_string()),
                dns_rtt_ms: Some(1.9f64),
                dns_loss_pct: Some(100.0f64),
                // Failed probes keep their slot: gaps at the start, middle and end.
                gateway_rtt_history: Some(vec![None, Some(0.4f64), None, None, Some(0.42f64), None]),
                dns_rtt_history: Some(vec![Some(2.0f64), None, Some(1.9f64)]),
            }),
            connection_count: Some(u32::MAX),
            system: Some($m::SystemMetric {
                cpu_usage_pct: Some(12.5f64),
                memory_total_bytes: Some(25_769_803_776u64),
                memory_used_bytes: Some(4_294_967_296u64),
                memory_available_bytes: Some(21_474_836_480u64),
                load_avg_1m: Some(0.31f64),
                load_avg_5m: Some(0.25f64),
                load_avg_15m: Some(0.2f64),
                swap_total_bytes: Some(8_589_934_592u64),
                swap_used_bytes: Some(0u64),
                cpu_per_core: Some(vec![10.0f64, 15.5f64, 0.0f64, 100.0f64]),
            }),
            disk_usage: Some(vec![
                $m::DiskUsage {
                    mount_point: "/".to_string(),
                    device: "/dev/vda1".to_string(),
                    total_bytes: 270_582_939_648u64,
                    used_bytes: 11_811_160_064u64,
                    available_bytes: 85_899_345_920u64,
                    usage_pct: 4.4f64,
                },
                $m::DiskUsage {
                    mount_point: "/var/lib/with space".to_string(),
                    device: "/dev/mapper/vg-data".to_string(),
                    total_bytes: u64::MAX,
                    used_bytes: 0u64,
                    available_bytes: u64::MAX,
                    usage_pct: 0.0f64,
                },
            ]),
            disk_io: Some($m::DiskIo {
                read_bytes: 1_048_576u64,
                write_bytes: 5_000_000_000u64,
            }),
            tcp_time_wait: Some(70_000u32),
            tcp_close_wait: Some(1u32),
            processes: Some(vec![
                $m::ProcessBandwidth {
                    process_name: "nginx".to_string(),
                    pid: Some(812u32),
                    rx_bytes: 5_000_000_000u64,
                    tx_bytes: 38_000u64,
                    rx_rate: 8_000.0f64,
                    tx_rate: 2_533.3f64,
                    connection_count: 70_000u32,
                    ppid: Some(1u32),
                    user: Some("www-data".to_string()),
                    cpu_pct: Some(3.2f64),
                    mem_rss_bytes: Some(12_582_912u64),
                    mem_virt_bytes: Some(5_662_310_400u64),
                    state: Some("S".to_string()),
                    started_at: Some(ts("2026-11-14T07:12:03.5Z")),
                    cmd: Some("/usr/sbin/nginx".to_string()),
                    $($p)*
                },
                // The constructor both sides share: network fields only.
                $m::ProcessBandwidth::network_only(
                    "pid:0".to_string(),
                    None,
                    0u64,
                    0u64,
                    0.0f64,
                    0.0f64,
                    0u32,
                ),
            ]),
            connections: Some(vec![
                $m::ConnectionDetail {
                    protocol: "TCP".to_string(),
                    local_addr: "10.0.0.5:443".to_string(),
                    remote_addr: "203.0.113.9:51514".to_string(),
                    state: "ESTABLISHED".to_string(),
                    pid: Some(812u32),
                    process_name: Some("nginx".to_string()),
                    kernel_rtt_us: Some(1_250.5f64),
                    rx_bytes: Some(52_000u64),
                    tx_bytes: Some(u64::MAX),
                    $($c)*
                },
                $m::ConnectionDetail {
                    protocol: "UDP".to_string(),
                    local_addr: "[::1]:5353".to_string(),
                    remote_addr: "*:*".to_string(),
                    state: "UNCONN".to_string(),
                    pid: None,
                    process_name: None,
                    kernel_rtt_us: None,
                    rx_bytes: None,
                    tx_bytes: None,
                    $($c)*
                },
                $m::ConnectionDetail {
                    protocol: "TCP".to_string(),
                    local_addr: "[2001:db8::5]:22".to_string(),
                    remote_addr: "[::]:*".to_string(),
                    state: "LISTEN".to_string(),
                    pid: Some(1u32),
                    process_name: Some("sshd".to_string()),
                    kernel_rtt_us: None,
                    rx_bytes: Some(0u64),
                    tx_bytes: None,
                    $($c)*
                },
            ]),
            alerts: Some(every_alert!($m)),
            dns_analytics: Some($m::DnsAnalytics {
                total_queries: 120u64,
                total_responses: 118u64,
                nxdomain_count: 5_000_000_000u64,
                latency_buckets: [80u64, 20u64, 10u64, 5u64, 2u64, 1u64, 0u64, u64::MAX],
                top_domains: vec![
                    ("example.com".to_string(), 40u32),
                    ("xn--bcher-kva.example".to_string(), u32::MAX),
                    (String::new(), 0u32),
                ],
            }),
            $($extra)*
        }
    };
}

/// An intermediate snapshot: every optional section absent.
macro_rules! sparse_snapshot {
    ($m:ident, $($extra:tt)*) => {
        $m::Snapshot {
            timestamp: ts("2026-11-24T19:00:15Z"),
            interfaces: Vec::new(),
            health: None,
            connection_count: None,
            system: None,
            disk_usage: None,
            disk_io: None,
            tcp_time_wait: None,
            tcp_close_wait: None,
            processes: None,
            connections: None,
            alerts: None,
            dns_analytics: None,
            $($extra)*
        }
    };
}

/// Every section present but empty (`[]`, `{}` with nulls), which must stay
/// distinct from absent.
macro_rules! empty_sections_snapshot {
    ($m:ident, $($extra:tt)*) => {
        $m::Snapshot {
            timestamp: ts("2026-11-24T19:00:30.000000001Z"),
            interfaces: Vec::new(),
            health: Some($m::HealthMetric {
                gateway_ip: None,
                gateway_rtt_ms: None,
                gateway_loss_pct: None,
                dns_ip: None,
                dns_rtt_ms: None,
                dns_loss_pct: None,
                gateway_rtt_history: Some(vec![None::<f64>, None]),
                dns_rtt_history: None,
            }),
            connection_count: Some(0u32),
            system: Some($m::SystemMetric {
                cpu_usage_pct: None,
                memory_total_bytes: None,
                memory_used_bytes: None,
                memory_available_bytes: None,
                load_avg_1m: None,
                load_avg_5m: None,
                load_avg_15m: None,
                swap_total_bytes: None,
                swap_used_bytes: None,
                cpu_per_core: Some(Vec::<f64>::new()),
            }),
            disk_usage: Some(Vec::new()),
            disk_io: Some($m::DiskIo { read_bytes: 0u64, write_bytes: 0u64 }),
            tcp_time_wait: Some(0u32),
            tcp_close_wait: Some(0u32),
            processes: Some(Vec::new()),
            connections: Some(Vec::new()),
            alerts: Some(Vec::new()),
            dns_analytics: Some($m::DnsAnalytics::default()),
            $($extra)*
        }
    };
}

macro_rules! full_host {
    ($m:ident) => {
        $m::HostInfo {
            host_id: host_id(),
            hostname: "web-01.example".to_string(),
            os: Some("Debian GNU/Linux 12 (bookworm)".to_string()),
            kernel: Some("6.1.0-56-cloud-amd64".to_string()),
            uptime_secs: Some(8_640_000_000u64),
            cpu_model: Some("AMD EPYC 7B13".to_string()),
            cpu_cores: Some(70_000u32),
            memory_total_bytes: Some(25_769_803_776u64),
        }
    };
}

macro_rules! bare_host {
    ($m:ident) => {
        $m::HostInfo {
            host_id: Uuid::nil(),
            hostname: String::new(),
            os: None,
            kernel: None,
            uptime_secs: None,
            cpu_model: None,
            cpu_cores: None,
            memory_total_bytes: None,
        }
    };
}

/// Our additive per-process TCP quality, every field set.
fn process_quality() -> ours::ProcessTcpQuality {
    ours::ProcessTcpQuality {
        retransmits: 17,
        retransmitted_bytes: 24_616,
        connects: 9,
        connects_refused: 1,
        connects_timed_out: 2,
        connects_unreachable: 3,
        connects_failed_other: u64::MAX,
        connect_ms_avg: Some(1.25),
        connect_ms_max: Some(1_003.5),
        resets_sent: 4,
        resets_received: 5,
        rtt_us_avg: Some(88.0),
    }
}

/// Our additive per-process DNS figures, every field set.
fn process_dns() -> ours::ProcessDns {
    ours::ProcessDns {
        queries: 12,
        responses: 11,
        failures: 3,
        nxdomain: 2,
        unanswered: 1,
        latency_ms_avg: Some(0.75),
        latency_ms_max: Some(4.5),
    }
}

/// Our additive per-connection TCP quality, every field set.
fn connection_quality() -> ours::ConnectionQuality {
    ours::ConnectionQuality {
        retransmits: 3,
        retransmitted_bytes: 4_344,
        connect_ms: Some(1_000.25),
        resets_sent: 0,
        resets_received: 1,
    }
}

fn collector() -> ours::CollectorInfo {
    ours::CollectorInfo {
        source: "ebpf".to_string(),
        ebpf_tier: Some("tracepoint".to_string()),
        estimated: false,
        fallback_reason: Some("fentry: EPERM".to_string()),
        lost_records: Some(7),
        connections_truncated: None,
        processes_folded: None,
    }
}

fn sdk_request() -> sdk::IngestRequest {
    sdk::IngestRequest {
        agent_version: "0.5.0".to_string(),
        host: full_host!(sdk),
        snapshots: vec![
            full_snapshot!(sdk, [], [],),
            sparse_snapshot!(sdk,),
            empty_sections_snapshot!(sdk,),
        ],
    }
}

/// The same request on our side, with our additive fields set.
fn our_request() -> ours::IngestRequest {
    ours::IngestRequest {
        agent_version: "0.5.0".to_string(),
        host: full_host!(ours),
        snapshots: vec![
            full_snapshot!(
                ours,
                [tcp_quality: Some(process_quality()), dns: Some(process_dns()),],
                [tcp_quality: Some(connection_quality()),],
                collector: Some(collector())
            ),
            sparse_snapshot!(ours, collector: None),
            empty_sections_snapshot!(ours, collector: Some(ours::CollectorInfo {
                source: "ss".to_string(),
                ebpf_tier: None,
                estimated: true,
                fallback_reason: None,
                lost_records: None,
                connections_truncated: None,
                processes_folded: None,
            })),
        ],
    }
}

fn our_envelope() -> ours::IngestEnvelope {
    ours::IngestEnvelope {
        schema_version: ours::SCHEMA_VERSION,
        request: our_request(),
        agent_health: ours::AgentHealth {
            collectors_ok: true,
            dropped_count: u64::MAX,
            queue_depth: 3,
        },
    }
}

/// What our side holds after reading a payload the SDK wrote: the additive
/// fields the SDK never sends are absent.
fn our_request_as_sdk_sends_it() -> ours::IngestRequest {
    let mut r = our_request();
    for s in &mut r.snapshots {
        s.collector = None;
        for c in s.connections.iter_mut().flatten() {
            c.rx_bytes = None;
            c.tx_bytes = None;
            c.tcp_quality = None;
        }
        for p in s.processes.iter_mut().flatten() {
            p.tcp_quality = None;
            p.dns = None;
        }
    }
    r
}

// ---------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------

/// Equality with the first differing path in the panic message.
fn assert_json_eq(ours: &Value, sdk: &Value, path: &str) {
    match (ours, sdk) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys() {
                assert!(b.contains_key(k), "{path}.{k}: only on our side");
            }
            for (k, v) in b {
                let o = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k}: only on the SDK side"));
                assert_json_eq(o, v, &format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: array lengths differ");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_json_eq(x, y, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(ours, sdk, "{path}: ours vs SDK"),
    }
}

fn remove(obj: &mut Value, key: &str, path: &str) -> Option<Value> {
    obj.as_object_mut()
        .unwrap_or_else(|| panic!("{path} is not an object"))
        .remove(key)
}

/// Drops our additive keys from one serialized snapshot; returns how many it
/// dropped.
fn strip_snapshot(snap: &mut Value, path: &str) -> usize {
    let mut dropped = usize::from(remove(snap, "collector", path).is_some());
    if let Some(conns) = snap.get_mut("connections").and_then(Value::as_array_mut) {
        for (i, c) in conns.iter_mut().enumerate() {
            for k in ["rx_bytes", "tx_bytes", "tcp_quality"] {
                dropped += usize::from(remove(c, k, &format!("{path}.connections[{i}]")).is_some());
            }
        }
    }
    if let Some(procs) = snap.get_mut("processes").and_then(Value::as_array_mut) {
        for (i, p) in procs.iter_mut().enumerate() {
            for k in ["tcp_quality", "dns"] {
                dropped += usize::from(remove(p, k, &format!("{path}.processes[{i}]")).is_some());
            }
        }
    }
    dropped
}

/// Drops the envelope keys and every snapshot's additive keys; returns how
/// many keys it dropped.
fn strip_request(req: &mut Value) -> usize {
    let mut dropped = 0;
    for k in ["schema_version", "agent_health"] {
        dropped += usize::from(remove(req, k, "$").is_some());
    }
    let snaps = req["snapshots"]
        .as_array_mut()
        .expect("a request has a snapshots array");
    for (i, s) in snaps.iter_mut().enumerate() {
        dropped += strip_snapshot(s, &format!("$.snapshots[{i}]"));
    }
    dropped
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("wire types always serialize")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// The same data written by each side is the same JSON, apart from our
/// additive keys (which must be there, with their values).
#[test]
fn same_data_serializes_to_the_same_json() {
    let sdk_json = to_value(&sdk_request());
    let mut ours_json = to_value(&our_envelope());

    // Our additions, present and spelled as documented.
    assert_eq!(ours_json["schema_version"], json!(1));
    assert_eq!(
        ours_json["agent_health"],
        json!({"collectors_ok": true, "dropped_count": u64::MAX, "queue_depth": 3})
    );
    let s0 = &ours_json["snapshots"][0];
    assert_eq!(s0["collector"]["source"], "ebpf");
    assert_eq!(s0["connections"][0]["rx_bytes"], json!(52_000u64));
    assert_eq!(s0["connections"][0]["tx_bytes"], json!(u64::MAX));
    assert!(s0["connections"][1].get("rx_bytes").is_none());
    // The SDK never writes them.
    assert!(sdk_json["snapshots"][0].get("collector").is_none());
    assert!(sdk_json["snapshots"][0]["connections"][0]
        .get("rx_bytes")
        .is_none());

    // The quality fields, spelled as documented; zero counters left out.
    assert_eq!(
        s0["connections"][0]["tcp_quality"],
        json!({"retransmits": 3, "retransmitted_bytes": 4_344, "connect_ms": 1_000.25,
               "resets_received": 1})
    );
    assert_eq!(
        s0["processes"][0]["tcp_quality"]["connects_failed_other"],
        json!(u64::MAX)
    );
    assert_eq!(s0["processes"][0]["dns"]["nxdomain"], json!(2));
    assert!(s0["processes"][1].get("tcp_quality").is_none());
    assert!(s0["processes"][1].get("dns").is_none());

    // schema_version, agent_health, 2 collectors, 3 connection byte fields,
    // 3 connection quality fields, the nginx row's two.
    assert_eq!(strip_request(&mut ours_json), 2 + 2 + 3 + 3 + 2);
    assert_json_eq(&ours_json, &sdk_json, "$");

    // The bare request without the envelope: the same.
    let mut ours_bare = to_value(&our_request());
    assert_eq!(strip_request(&mut ours_bare), 2 + 3 + 3 + 2);
    assert_json_eq(&ours_bare, &sdk_json, "$");
}

/// Ours → SDK: the SDK parses our envelope (ignoring what it does not know)
/// and writes back exactly what we sent minus our additions.
#[test]
fn sdk_reads_what_we_write() {
    let text = serde_json::to_string(&our_envelope()).unwrap();
    let parsed: sdk::IngestRequest =
        serde_json::from_str(&text).expect("netwatch-sdk 0.3.2 reads our envelope");

    // `#[serde(skip)]` in the SDK: our per-socket bytes are dropped on input.
    let conns = parsed.snapshots[0].connections.as_ref().unwrap();
    assert_eq!(conns.len(), 3);
    assert!(conns
        .iter()
        .all(|c| c.rx_bytes.is_none() && c.tx_bytes.is_none()));
    assert_eq!(conns[0].kernel_rtt_us, Some(1_250.5));
    assert_eq!(parsed.snapshots[0].interfaces[0].rx_bytes, u64::MAX);
    assert_eq!(
        parsed.snapshots[0]
            .health
            .as_ref()
            .unwrap()
            .gateway_rtt_history,
        Some(vec![None, Some(0.4), None, None, Some(0.42), None])
    );

    let mut expected = serde_json::from_str::<Value>(&text).unwrap();
    strip_request(&mut expected);
    assert_json_eq(&expected, &to_value(&parsed), "$");
    // …and that is what the SDK itself writes for the same data.
    assert_json_eq(&to_value(&parsed), &to_value(&sdk_request()), "$");
}

/// SDK → ours: a payload the SDK wrote parses into exactly our value, both
/// as a request and as an envelope (schema version 1, default health).
#[test]
fn we_read_what_the_sdk_writes() {
    let text = serde_json::to_string(&sdk_request()).unwrap();

    let req: ours::IngestRequest = serde_json::from_str(&text).expect("we read the SDK's request");
    assert_eq!(req, our_request_as_sdk_sends_it());

    let env: ours::IngestEnvelope =
        serde_json::from_str(&text).expect("we read the SDK's request as an envelope");
    assert_eq!(env.schema_version, 1);
    assert_eq!(env.agent_health, ours::AgentHealth::default());
    assert_eq!(env.request, our_request_as_sdk_sends_it());

    // Written back by us: the SDK's JSON plus the envelope keys, nothing else.
    let mut back = to_value(&env);
    assert_eq!(strip_request(&mut back), 2);
    assert_json_eq(&back, &serde_json::from_str(&text).unwrap(), "$");
}

/// Item 1 of issue 8: a bare IngestRequest (no `schema_version`) is version
/// 1, not an error. An explicit version is kept as sent.
#[test]
fn bare_sdk_request_reads_as_schema_version_1() {
    let minimal = sdk::IngestRequest {
        agent_version: "0.3.2".to_string(),
        host: bare_host!(sdk),
        snapshots: Vec::new(),
    };
    let text = serde_json::to_string(&minimal).unwrap();
    let raw: Value = serde_json::from_str(&text).unwrap();
    assert!(raw.get("schema_version").is_none());
    assert!(raw.get("agent_health").is_none());

    let env: ours::IngestEnvelope = serde_json::from_str(&text).expect("bare request accepted");
    assert_eq!(env.schema_version, ours::BARE_REQUEST_SCHEMA_VERSION);
    assert_eq!(env.schema_version, 1);
    assert_eq!(env.request.host, bare_host!(ours));
    assert!(env.request.snapshots.is_empty());

    let mut v2 = raw.clone();
    v2["schema_version"] = json!(2);
    let env: ours::IngestEnvelope = serde_json::from_value(v2).unwrap();
    assert_eq!(
        env.schema_version, 2,
        "an explicit version is never overwritten"
    );

    let mut bad = raw;
    bad["schema_version"] = json!("1");
    let err = serde_json::from_value::<ours::IngestEnvelope>(bad)
        .expect_err("a string schema_version is refused");
    assert!(err.to_string().contains("invalid type"), "{err}");
}

/// The smallest values: `null` versus absent agrees on both sides.
#[test]
fn minimal_values_agree_both_ways() {
    let sdk_req = sdk::IngestRequest {
        agent_version: String::new(),
        host: bare_host!(sdk),
        snapshots: vec![sparse_snapshot!(sdk,)],
    };
    let our_req = ours::IngestRequest {
        agent_version: String::new(),
        host: bare_host!(ours),
        snapshots: vec![ours::Snapshot::empty(ts("2026-11-24T19:00:15Z"))],
    };
    let sdk_json = to_value(&sdk_req);
    assert_eq!(to_value(&our_req), sdk_json);
    assert_eq!(
        sdk_json["snapshots"][0],
        json!({
            "timestamp": "2026-11-24T19:00:15Z", "interfaces": [], "health": null,
            "connection_count": null, "system": null, "disk_usage": null, "disk_io": null,
            "tcp_time_wait": null, "tcp_close_wait": null
        })
    );
    let back: ours::IngestRequest = serde_json::from_value(sdk_json.clone()).unwrap();
    assert_eq!(back, our_req);
    let theirs: sdk::IngestRequest = serde_json::from_value(to_value(&our_req)).unwrap();
    assert_eq!(to_value(&theirs), sdk_json);
}

/// HostInfo alone, fully populated, both ways.
#[test]
fn host_info_both_ways() {
    let sdk_json = to_value(&full_host!(sdk));
    assert_eq!(to_value(&full_host!(ours)), sdk_json);
    let ours_back: ours::HostInfo = serde_json::from_value(sdk_json.clone()).unwrap();
    assert_eq!(ours_back, full_host!(ours));
    let sdk_back: sdk::HostInfo = serde_json::from_value(to_value(&full_host!(ours))).unwrap();
    assert_eq!(to_value(&sdk_back), sdk_json);
}

/// IngestResponse / SnapshotResult, both ways, including the widest numbers.
#[test]
fn ingest_response_both_ways() {
    macro_rules! response {
        ($m:ident) => {
            $m::IngestResponse {
                accepted: u32::MAX,
                rejected: 2u32,
                host_id: host_id(),
                results: vec![
                    $m::SnapshotResult {
                        index: 0usize,
                        status: 200u16,
                        message: "ok".to_string(),
                    },
                    $m::SnapshotResult {
                        index: usize::MAX,
                        status: u16::MAX,
                        message: String::new(),
                    },
                    $m::SnapshotResult {
                        index: 1usize,
                        status: 422u16,
                        message: "timestamp outside the accepted window".to_string(),
                    },
                ],
            }
        };
    }
    let sdk_json = to_value(&response!(sdk));
    assert_json_eq(&to_value(&response!(ours)), &sdk_json, "$");

    let ours_back: ours::IngestResponse =
        serde_json::from_str(&serde_json::to_string(&response!(sdk)).unwrap()).unwrap();
    assert_eq!(ours_back, response!(ours));

    let sdk_back: sdk::IngestResponse =
        serde_json::from_str(&serde_json::to_string(&response!(ours)).unwrap()).unwrap();
    assert_json_eq(&to_value(&sdk_back), &sdk_json, "$");

    // The 207 reply with no results at all.
    let empty = json!({"accepted": 0, "rejected": 0, "host_id": host_id(), "results": []});
    let e: ours::IngestResponse = serde_json::from_value(empty.clone()).unwrap();
    let s: sdk::IngestResponse = serde_json::from_value(empty.clone()).unwrap();
    assert_eq!(to_value(&e), empty);
    assert_eq!(to_value(&s), empty);
}

/// Every enum variant, spelled the same by both, parsed into the same
/// variant by both. The matches are exhaustive: a new variant on our side
/// does not compile until it is mapped here.
#[test]
fn every_enum_variant_agrees() {
    fn severity(s: ours::AlertSeverity) -> (sdk::AlertSeverity, &'static str) {
        match s {
            ours::AlertSeverity::Warning => (sdk::AlertSeverity::Warning, "warning"),
            ours::AlertSeverity::Critical => (sdk::AlertSeverity::Critical, "critical"),
        }
    }
    fn category(c: ours::AlertCategory) -> (sdk::AlertCategory, &'static str) {
        match c {
            ours::AlertCategory::PortScan => (sdk::AlertCategory::PortScan, "port_scan"),
            ours::AlertCategory::Beaconing => (sdk::AlertCategory::Beaconing, "beaconing"),
            ours::AlertCategory::DnsTunnel => (sdk::AlertCategory::DnsTunnel, "dns_tunnel"),
            ours::AlertCategory::Bandwidth => (sdk::AlertCategory::Bandwidth, "bandwidth"),
        }
    }
    for o in [ours::AlertSeverity::Warning, ours::AlertSeverity::Critical] {
        let (s, name) = severity(o);
        assert_eq!(to_value(&o), json!(name));
        assert_eq!(to_value(&s), json!(name));
        assert_eq!(
            serde_json::from_value::<ours::AlertSeverity>(to_value(&s)).unwrap(),
            o
        );
        assert_eq!(
            serde_json::from_value::<sdk::AlertSeverity>(to_value(&o)).unwrap(),
            s
        );
    }
    for o in [
        ours::AlertCategory::PortScan,
        ours::AlertCategory::Beaconing,
        ours::AlertCategory::DnsTunnel,
        ours::AlertCategory::Bandwidth,
    ] {
        let (s, name) = category(o);
        assert_eq!(to_value(&o), json!(name));
        assert_eq!(to_value(&s), json!(name));
        assert_eq!(
            serde_json::from_value::<ours::AlertCategory>(to_value(&s)).unwrap(),
            o
        );
        assert_eq!(
            serde_json::from_value::<sdk::AlertCategory>(to_value(&o)).unwrap(),
            s
        );
    }
    // Neither side invents a spelling: an unknown one is refused by both.
    assert!(serde_json::from_value::<ours::AlertSeverity>(json!("Warning")).is_err());
    assert!(serde_json::from_value::<sdk::AlertSeverity>(json!("Warning")).is_err());
    assert!(serde_json::from_value::<ours::AlertCategory>(json!("info")).is_err());
    assert!(serde_json::from_value::<sdk::AlertCategory>(json!("info")).is_err());

    // The populated snapshots carry all 2 × 4 combinations.
    let alerts = our_request().snapshots[0].alerts.clone().unwrap();
    assert_eq!(alerts.len(), 8);
}

/// Every fixture in tests/fixtures/wire reads the same through the SDK as
/// through our types: the fixtures are real SDK payloads.
#[test]
fn fixtures_read_the_same_through_the_sdk() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire");
    let read = |name: &str| -> String {
        let p = dir.join(name);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };

    let text = read("ingest-envelope-v1.json");
    let mut ours_json = to_value(&serde_json::from_str::<ours::IngestEnvelope>(&text).unwrap());
    let sdk_json = to_value(&serde_json::from_str::<sdk::IngestRequest>(&text).unwrap());
    // schema_version, agent_health, and the one connection's rx/tx bytes.
    assert_eq!(strip_request(&mut ours_json), 4);
    assert_json_eq(&ours_json, &sdk_json, "ingest-envelope-v1.json");

    let text = read("ingest-response-207.json");
    assert_json_eq(
        &to_value(&serde_json::from_str::<ours::IngestResponse>(&text).unwrap()),
        &to_value(&serde_json::from_str::<sdk::IngestResponse>(&text).unwrap()),
        "ingest-response-207.json",
    );

    for name in [
        "snapshot-minimal.json",
        "snapshot-newer-peer.json",
        "snapshot-older-agent.json",
    ] {
        let text = read(name);
        let mut ours_json = to_value(&serde_json::from_str::<ours::Snapshot>(&text).unwrap());
        let sdk_json = to_value(&serde_json::from_str::<sdk::Snapshot>(&text).unwrap());
        assert_eq!(strip_snapshot(&mut ours_json, name), 0, "{name}");
        assert_json_eq(&ours_json, &sdk_json, name);
    }
}
