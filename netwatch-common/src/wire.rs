//! The NetWatch Cloud JSON wire format, field for field as netwatch-sdk 0.3.2
//! defines it, plus netwatch's own additive fields.
//!
//! Compatibility rules (the SDK's): fields added after 0.1 are optional with
//! `#[serde(default, skip_serializing_if = "Option::is_none")]`, unknown
//! fields are ignored on input, and nothing is ever renamed or removed. Our
//! own additions follow the same rule. This module holds data types only:
//! no I/O, no collection logic.

use std::string::String;
use std::vec::Vec;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version of the ingest envelope this crate writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The version a payload without `schema_version` is read as: a bare
/// [`IngestRequest`], which is exactly what netwatch-sdk 0.3.2 agents POST.
/// This stays 1 even when [`SCHEMA_VERSION`] moves on.
pub const BARE_REQUEST_SCHEMA_VERSION: u32 = 1;

fn bare_request_schema_version() -> u32 {
    BARE_REQUEST_SCHEMA_VERSION
}

/// The payload an agent POSTs: host metadata and snapshots in chronological order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestRequest {
    /// The agent binary's version (not the SDK's).
    pub agent_version: String,
    /// Static metadata of this host, sent with every request.
    pub host: HostInfo,
    /// One or more snapshots, oldest first.
    pub snapshots: Vec<Snapshot>,
}

/// The versioned ingest envelope: `schema_version`, the [`IngestRequest`]
/// fields flattened beside it, and the agent's own health.
///
/// A server reads any [`IngestRequest`] as an envelope: a bare request (no
/// `schema_version`, no `agent_health`, as netwatch-sdk 0.3.2 sends it) is
/// version [`BARE_REQUEST_SCHEMA_VERSION`] with a default [`AgentHealth`].
/// Conversely a 0.3.2 peer reads an envelope as an `IngestRequest`, ignoring
/// the two extra keys.
///
/// ```
/// use netwatch_common::wire::IngestEnvelope;
/// let json = r#"{"schema_version":1,"agent_version":"0.1.0",
///   "host":{"host_id":"5f0c6a34-9d1e-4c7b-a0f2-3b8e91d4c217","hostname":"h",
///   "os":null,"kernel":null,"uptime_secs":null,"cpu_model":null,"cpu_cores":null,
///   "memory_total_bytes":null},"snapshots":[],
///   "agent_health":{"collectors_ok":true,"dropped_count":0,"queue_depth":0}}"#;
/// let env: IngestEnvelope = serde_json::from_str(json).unwrap();
/// assert_eq!(env.request.host.hostname, "h");
///
/// // The same request without the envelope keys: version 1.
/// let bare = r#"{"agent_version":"0.3.2",
///   "host":{"host_id":"5f0c6a34-9d1e-4c7b-a0f2-3b8e91d4c217","hostname":"h",
///   "os":null,"kernel":null,"uptime_secs":null,"cpu_model":null,"cpu_cores":null,
///   "memory_total_bytes":null},"snapshots":[]}"#;
/// let env: IngestEnvelope = serde_json::from_str(bare).unwrap();
/// assert_eq!(env.schema_version, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestEnvelope {
    /// Always [`SCHEMA_VERSION`] when written by this crate; read as
    /// [`BARE_REQUEST_SCHEMA_VERSION`] when absent.
    #[serde(default = "bare_request_schema_version")]
    pub schema_version: u32,
    /// The request proper.
    #[serde(flatten)]
    pub request: IngestRequest,
    /// How the agent itself is doing.
    #[serde(default)]
    pub agent_health: AgentHealth,
}

/// The agent's view of its own health, sent with every envelope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// Every enabled collector produced data on its last tick.
    pub collectors_ok: bool,
    /// Snapshots or records dropped since start (spool full, ring buffer full, map eviction).
    pub dropped_count: u64,
    /// Snapshots waiting to be delivered.
    pub queue_depth: u64,
}

/// Identifies and describes the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Persisted once per host; the cloud's primary key.
    pub host_id: Uuid,
    pub hostname: String,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub uptime_secs: Option<u64>,
    pub cpu_model: Option<String>,
    pub cpu_cores: Option<u32>,
    pub memory_total_bytes: Option<u64>,
}

/// A point-in-time slice of host state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// UTC, taken at the start of the tick.
    pub timestamp: DateTime<Utc>,
    pub interfaces: Vec<InterfaceMetric>,
    pub health: Option<HealthMetric>,
    pub connection_count: Option<u32>,
    pub system: Option<SystemMetric>,
    pub disk_usage: Option<Vec<DiskUsage>>,
    pub disk_io: Option<DiskIo>,
    pub tcp_time_wait: Option<u32>,
    pub tcp_close_wait: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<ProcessBandwidth>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<Vec<ConnectionDetail>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Vec<Alert>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_analytics: Option<DnsAnalytics>,
    /// netwatch addition: which source filled `processes`/`connections`, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorInfo>,
}

impl Snapshot {
    /// A snapshot with only a timestamp: every optional section absent.
    pub fn empty(timestamp: DateTime<Utc>) -> Self {
        Self {
            timestamp,
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
            collector: None,
        }
    }
}

/// netwatch addition to [`Snapshot`]: where the per-process rows came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectorInfo {
    /// `ebpf`, `ss`, `pcap`, `proc`, `macos`.
    pub source: String,
    /// For `ebpf`: the hook tier in use (`fentry`, `kprobe`, `tracepoint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebpf_tier: Option<String>,
    /// True when the byte counts are estimates (proportional split) rather than per-socket counts.
    #[serde(default)]
    pub estimated: bool,
    /// Why a lower-ranked source is in use, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    /// Records the source lost since start (map eviction, full ring buffer, dropped packets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_records: Option<u64>,
    /// Connection rows left out of this snapshot's `connections` by the
    /// top-N bound (`max_connections`); the per-process totals still count
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_truncated: Option<u64>,
    /// Process rows folded into the snapshot's one row without a pid (named
    /// `(others)`) by the top-N bound (`max_processes`). That row carries
    /// their bytes, rates and connection counts summed, so the rows still
    /// add up to every process's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes_folded: Option<u64>,
}

/// Per-interface counters and derived rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceMetric {
    pub name: String,
    pub is_up: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_bytes_delta: u64,
    pub tx_bytes_delta: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub rx_drops: u64,
    pub tx_drops: u64,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate: Option<f64>,
    /// Bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate: Option<f64>,
    /// Up to 60 recent rate samples, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_history: Option<Vec<u64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_history: Option<Vec<u64>>,
}

/// Gateway and DNS reachability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthMetric {
    pub gateway_ip: Option<String>,
    pub gateway_rtt_ms: Option<f64>,
    pub gateway_loss_pct: Option<f64>,
    pub dns_ip: Option<String>,
    pub dns_rtt_ms: Option<f64>,
    pub dns_loss_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_rtt_history: Option<Vec<Option<f64>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_rtt_history: Option<Vec<Option<f64>>>,
}

/// Host CPU, memory, load and swap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemMetric {
    pub cpu_usage_pct: Option<f64>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    pub load_avg_1m: Option<f64>,
    pub load_avg_5m: Option<f64>,
    pub load_avg_15m: Option<f64>,
    pub swap_total_bytes: Option<u64>,
    pub swap_used_bytes: Option<u64>,
    pub cpu_per_core: Option<Vec<f64>>,
}

/// Usage of one device-backed mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub mount_point: String,
    pub device: String,
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub available_bytes: u64,
    pub usage_pct: f64,
}

/// Bytes read and written by block devices since the previous snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskIo {
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// How bad an [`Alert`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertSeverity {
    Warning,
    Critical,
}

/// What an [`Alert`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertCategory {
    PortScan,
    Beaconing,
    DnsTunnel,
    Bandwidth,
}

/// A network alert raised by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub severity: AlertSeverity,
    pub category: AlertCategory,
    pub message: String,
    pub detail: String,
    pub timestamp: DateTime<Utc>,
}

/// DNS traffic seen on port 53 during the interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DnsAnalytics {
    pub total_queries: u64,
    pub total_responses: u64,
    pub nxdomain_count: u64,
    /// Response latency counts: <5ms, <10ms, <25ms, <50ms, <100ms, <250ms, <500ms, ≥500ms.
    pub latency_buckets: [u64; 8],
    /// Most queried names with their query counts, most first.
    pub top_domains: Vec<(String, u32)>,
}

/// One socket: its 5-tuple, state and owner.
///
/// `rx_bytes`/`tx_bytes` are cumulative bytes moved on the socket since its
/// collector first saw it. netwatch-sdk 0.3.2 keeps them internal
/// (`#[serde(skip)]`); netwatch sends them as additive optional fields, which
/// 0.3.2 peers ignore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectionDetail {
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// `ip:port`, IPv6 in brackets.
    pub local_addr: String,
    pub remote_addr: String,
    /// Normalized state: `ESTABLISHED`, `LISTEN`, `TIME_WAIT`, `UNCONN`, …
    ///
    /// Free text on the wire. netwatch-sdk 0.3.2 only gives `ESTABLISHED` a
    /// meaning (its per-process attribution counts sockets in that state);
    /// its own `ss` parser passes other states through in `ss` spelling
    /// (`TIME-WAIT`, `UNCONN`), its macOS parser in lsof spelling.
    pub state: String,
    pub pid: Option<u32>,
    pub process_name: Option<String>,
    /// Kernel-measured smoothed RTT in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_rtt_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    /// TCP quality figures from the kernel (eBPF mode), cumulative like
    /// `rx_bytes`; absent where the source has none. netwatch's own additive
    /// field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_quality: Option<ConnectionQuality>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// TCP quality of one connection, counted by the kernel collector since it
/// first saw the socket (as `rx_bytes`/`tx_bytes` are). Zero counters are
/// left out of the JSON and read back as zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionQuality {
    /// Segments the kernel retransmitted (`tcp:tcp_retransmit_skb`), counted
    /// as `tcpi_total_retrans` counts them (a TSO burst is its segments).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retransmits: u64,
    /// Bytes in those segments, as `tcpi_bytes_retrans` counts them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retransmitted_bytes: u64,
    /// For a connection this host opened: milliseconds from its first SYN
    /// to ESTABLISHED (SYN retries included), when the collector saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<f64>,
    /// Resets this host sent on the connection (`tcp:tcp_send_reset`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resets_sent: u64,
    /// Resets the connection received (`tcp:tcp_receive_reset`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resets_received: u64,
}

/// TCP quality of one process over the interval, from the kernel (eBPF
/// mode). Zero counters are left out of the JSON and read back as zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessTcpQuality {
    /// Segments retransmitted on the process's connections.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retransmits: u64,
    /// Bytes in those segments.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retransmitted_bytes: u64,
    /// Outbound connects (`connect` on a TCP socket) that ended during the
    /// interval, established or failed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connects: u64,
    /// Connects refused: a reset answered the SYN (`ECONNREFUSED`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connects_refused: u64,
    /// Connects that timed out: every SYN retry went unanswered (`ETIMEDOUT`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connects_timed_out: u64,
    /// Connects an ICMP error ended (`EHOSTUNREACH`, `ENETUNREACH`, …).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connects_unreachable: u64,
    /// Connects that ended otherwise: closed by the process while
    /// connecting, or another error.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub connects_failed_other: u64,
    /// Mean milliseconds from first SYN to ESTABLISHED over the connects
    /// that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms_avg: Option<f64>,
    /// The slowest of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ms_max: Option<f64>,
    /// Resets sent on the process's connections.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resets_sent: u64,
    /// Resets received on the process's connections.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resets_received: u64,
    /// Mean kernel smoothed RTT (µs) over the process's TCP connections
    /// that have one (the connections' `kernel_rtt_us`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us_avg: Option<f64>,
}

impl ProcessTcpQuality {
    /// Connects that failed, whatever the cause.
    pub fn connect_failures(&self) -> u64 {
        self.connects_refused
            + self.connects_timed_out
            + self.connects_unreachable
            + self.connects_failed_other
    }
}

/// DNS lookups one process made over the interval (matched by the client
/// socket that sent the query). Zero counters are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessDns {
    /// Queries sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub queries: u64,
    /// Responses received.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub responses: u64,
    /// Responses with a non-zero RCODE (NXDOMAIN, SERVFAIL, REFUSED, …).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u64,
    /// Of those, NXDOMAIN.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nxdomain: u64,
    /// Queries given up on: no response within 5 seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unanswered: u64,
    /// Mean milliseconds from query to response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms_avg: Option<f64>,
    /// The slowest response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms_max: Option<f64>,
}

/// Network use of one process over the interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessBandwidth {
    pub process_name: String,
    pub pid: Option<u32>,
    /// Bytes received during the interval.
    pub rx_bytes: u64,
    /// Bytes sent during the interval.
    pub tx_bytes: u64,
    /// Bytes per second over the interval.
    pub rx_rate: f64,
    pub tx_rate: f64,
    pub connection_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_virt_bytes: Option<u64>,
    /// Single-character scheduler state: R, S, D, Z, T, I…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// Executable path (`/proc/<pid>/exe`); never argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// TCP quality over the interval (eBPF mode); netwatch's own additive field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_quality: Option<ProcessTcpQuality>,
    /// DNS lookups over the interval, where DNS is captured; netwatch's own
    /// additive field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<ProcessDns>,
}

impl ProcessBandwidth {
    /// A row with the network fields only; process details unset.
    pub fn network_only(
        process_name: String,
        pid: Option<u32>,
        rx_bytes: u64,
        tx_bytes: u64,
        rx_rate: f64,
        tx_rate: f64,
        connection_count: u32,
    ) -> Self {
        Self {
            process_name,
            pid,
            rx_bytes,
            tx_bytes,
            rx_rate,
            tx_rate,
            connection_count,
            ppid: None,
            user: None,
            cpu_pct: None,
            mem_rss_bytes: None,
            mem_virt_bytes: None,
            state: None,
            started_at: None,
            cmd: None,
            tcp_quality: None,
            dns: None,
        }
    }
}

/// The cloud's answer to an ingest request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub accepted: u32,
    pub rejected: u32,
    pub host_id: Uuid,
    pub results: Vec<SnapshotResult>,
}

/// The verdict on one snapshot of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotResult {
    /// Index into the request's `snapshots`.
    pub index: usize,
    /// HTTP-like status for this snapshot.
    pub status: u16,
    pub message: String,
}
