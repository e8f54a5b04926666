//! Prometheus `/metrics`: each snapshot updates a [`MetricsState`] (per-process
//! byte counters accumulated from the snapshots' per-interval bytes,
//! interface counters, TCP state gauges, agent self-metrics), and a small
//! HTTP/1 server on a thread of its own renders it in the OpenMetrics text
//! format with `prometheus-client` on every `GET /metrics`. The same server
//! answers `GET /healthz` from [`crate::supervise::liveness`] (200 while
//! the tick advances, 503 with the reason otherwise), and the page carries
//! every supervised part's `netwatch_agent_component_up` and
//! `netwatch_agent_component_restarts_total`.
//!
//! It must never block the tick on a scrape (the tick and a scrape share the
//! state behind one mutex; both hold it only to copy numbers, the scrape
//! encodes outside it), never let a process counter go down while its
//! series lives, never hold more than `top_processes` process series (bytes
//! of processes without a series are counted in the `comm="other"` series),
//! and never expose configuration: no API key, no endpoint.
//!
//! The series cap under a flood (a user forking 100,000 processes with
//! distinct names): a newcomer gets a series while there is room, else
//! takes the place of the series idle the longest if that one moved
//! nothing (no bytes, no TCP or DNS event) in this snapshot and the
//! newcomer moved bytes, else its bytes (and quality figures) go to
//! `other`. Each eviction and each newcomer refused (per snapshot) counts
//! in `netwatch_agent_table_dropped_total{table="prometheus_series"}`; the
//! cost per snapshot is one sort of the idle series, never a scan per
//! newcomer.
//!
//! Each process series also carries its TCP quality and DNS counters
//! ([`quality`]): same labels, same cap, same expiry, same persistence.
//!
//! The server must never let clients starve a scrape: connections are
//! tasks, capped (the one idle the longest is closed for a new one), with a
//! header deadline and a header size limit (see `serve`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use netwatch_common::wire::{CollectorInfo, InterfaceMetric, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder,
    LabelValueEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{Emitted, Sink};
use crate::config::PrometheusConfig;

pub mod quality;
use quality::QualityTotals;

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `comm` label of the series that counts processes without a series.
pub const OTHER_COMM: &str = "other";

/// Limits on the per-process series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesLimits {
    /// A process series absent from the snapshots' process rows this long
    /// (its process exited or holds no socket) is removed.
    pub expiry: Duration,
    /// At most this many process series (the `other` series not counted).
    pub top_processes: usize,
}

/// What identifies a process series: its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub pid: u32,
    pub comm: String,
    /// The cgroup path (`/proc/<pid>/cgroup`), empty if unknown.
    pub cgroup: String,
}

/// One process series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSeries {
    pub rx_bytes_total: u64,
    pub tx_bytes_total: u64,
    /// Last snapshot whose process rows held this process.
    last_seen: Instant,
    /// Last snapshot in which it moved bytes.
    last_active: Instant,
    /// Bytes it moved in the latest snapshot.
    tick_bytes: u64,
    /// Its rows in the latest snapshot counted a TCP or DNS event: it is
    /// not idle (evicting it would drop those counts unseen).
    tick_events: bool,
    /// TCP quality and DNS counters, accumulated as the bytes are.
    pub quality: QualityTotals,
    /// Mean kernel RTT (µs) of its TCP connections in the latest snapshot.
    pub rtt_us: Option<u64>,
}

/// What one snapshot's rows of one series carried.
#[derive(Debug, Default)]
struct Tick {
    rx: u64,
    tx: u64,
    quality: QualityTotals,
    /// (sum, rows) of the rows' mean RTTs.
    rtt_us: Option<(f64, u32)>,
}

impl Tick {
    fn rtt_us(&self) -> Option<u64> {
        // `as` saturates; the sum of finite non-negative means is one.
        self.rtt_us
            .map(|(sum, n)| (sum / f64::from(n)).round() as u64)
    }
}

/// Delivery counters as `/metrics` shows them (from the ingest sink).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryView {
    pub requests: u64,
    pub delivered: u64,
    pub rejected: u64,
    /// 0: never.
    pub last_success_unix_secs: u64,
    /// Failed requests by cause: an HTTP status or `transport`.
    pub errors: Vec<(String, u64)>,
    pub spool_depth: u64,
    pub spool_bytes: u64,
    pub spool_evicted: u64,
    pub spool_corrupt: u64,
    pub spool_torn: u64,
    /// Snapshots the spool could not write (full, read-only, I/O error).
    pub spool_write_failed: u64,
    /// Record reads that failed for an I/O reason (records kept).
    pub spool_read_errors: u64,
    /// Records in the spool another user could have written (owned by
    /// someone else, group/world-writable, a symlink): removed, never sent.
    pub spool_foreign: u64,
}

/// Something that reports delivery counters (the ingest sink's stats).
pub trait DeliveryReport: Send + Sync + std::fmt::Debug {
    fn view(&self) -> DeliveryView;
}

#[cfg(target_os = "linux")]
impl DeliveryReport for super::ingest::DeliveryStats {
    fn view(&self) -> DeliveryView {
        use std::sync::atomic::Ordering::Relaxed;
        let errors = crate::supervise::lock(&self.errors, "ingest error counters")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        DeliveryView {
            requests: self.requests.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            last_success_unix_secs: self.last_success_unix_secs.load(Relaxed),
            errors,
            spool_depth: self.spool.depth.load(Relaxed),
            spool_bytes: self.spool.bytes.load(Relaxed),
            spool_evicted: self.spool.evicted.load(Relaxed),
            spool_corrupt: self.spool.corrupt.load(Relaxed),
            spool_torn: self.spool.torn.load(Relaxed),
            spool_write_failed: self.spool.write_failed.load(Relaxed),
            spool_read_errors: self.spool.read_errors.load(Relaxed),
            spool_foreign: self.spool.foreign.load(Relaxed),
        }
    }
}

/// Everything `/metrics` shows, updated once per snapshot. Pure: the
/// cgroup of a pid comes from the caller.
#[derive(Debug, Clone)]
pub struct MetricsState {
    limits: SeriesLimits,
    processes: HashMap<ProcessKey, ProcessSeries>,
    other_rx_bytes_total: u64,
    other_tx_bytes_total: u64,
    /// Quality counters of processes that had no series.
    other_quality: QualityTotals,
    /// Series removed because their process was gone past the expiry.
    series_expired_total: u64,
    /// Series removed to make room for a busier process.
    series_evicted_total: u64,
    interfaces: Vec<InterfaceMetric>,
    /// (established, time_wait, close_wait), host-wide.
    tcp: Option<(u32, u32, u32)>,
    collector: Option<CollectorInfo>,
    snapshots_total: u64,
    connections: u64,
    process_rows: u64,
    lost_records_total: u64,
    /// Alerts raised, each counted once however many snapshots carry it.
    alerts: crate::alerts::counter::AlertCounter,
}

impl MetricsState {
    pub fn new(limits: SeriesLimits) -> Self {
        Self {
            limits,
            processes: HashMap::new(),
            other_rx_bytes_total: 0,
            other_tx_bytes_total: 0,
            other_quality: QualityTotals::default(),
            series_expired_total: 0,
            series_evicted_total: 0,
            interfaces: Vec::new(),
            tcp: None,
            collector: None,
            snapshots_total: 0,
            connections: 0,
            process_rows: 0,
            lost_records_total: 0,
            alerts: crate::alerts::counter::AlertCounter::new(),
        }
    }

    /// The live process series.
    pub fn processes(&self) -> &HashMap<ProcessKey, ProcessSeries> {
        &self.processes
    }

    /// Bytes of processes that had no series: (rx, tx).
    pub fn other_bytes_total(&self) -> (u64, u64) {
        (self.other_rx_bytes_total, self.other_tx_bytes_total)
    }

    /// Quality counters of processes that had no series.
    pub fn other_quality(&self) -> &QualityTotals {
        &self.other_quality
    }

    /// Take in one snapshot taken at `now`. Process bytes are added to
    /// their series (or to `other`); series not seen for the expiry are
    /// removed; new processes get a series while there is room, or take
    /// the place of the series idle the longest if it moved nothing in this
    /// snapshot and the newcomer did.
    pub fn apply(
        &mut self,
        snap: &Snapshot,
        now: Instant,
        cgroup_of: &mut dyn FnMut(u32) -> String,
    ) {
        self.snapshots_total += 1;
        self.interfaces = snap.interfaces.clone();
        self.tcp = snap.connection_count.map(|e| {
            (
                e,
                snap.tcp_time_wait.unwrap_or(0),
                snap.tcp_close_wait.unwrap_or(0),
            )
        });
        if let Some(c) = &snap.collector {
            // The source's count is since its start: it only grows.
            if let Some(l) = c.lost_records {
                self.lost_records_total = self.lost_records_total.max(l);
            }
            self.collector = Some(c.clone());
        }
        self.connections = snap.connections.as_ref().map_or(0, |c| c.len() as u64);
        self.alerts
            .observe(snap.alerts.as_deref().unwrap_or_default());
        let rows = snap.processes.as_deref().unwrap_or_default();
        self.process_rows = rows.len() as u64;

        // One entry per key (rows are per (pid, name) already; sum anyway).
        let mut tick: HashMap<ProcessKey, Tick> = HashMap::new();
        for row in rows {
            let Some(pid) = row.pid else {
                self.add_other(row.rx_bytes, row.tx_bytes);
                self.other_quality
                    .add_interval(row.tcp_quality.as_ref(), row.dns.as_ref());
                continue;
            };
            let key = ProcessKey {
                pid,
                comm: row.process_name.clone(),
                cgroup: cgroup_of(pid),
            };
            let e = tick.entry(key).or_default();
            e.rx = e.rx.saturating_add(row.rx_bytes);
            e.tx = e.tx.saturating_add(row.tx_bytes);
            e.quality
                .add_interval(row.tcp_quality.as_ref(), row.dns.as_ref());
            let rtt = row.tcp_quality.as_ref().and_then(|q| q.rtt_us_avg);
            if let Some(us) = rtt.filter(|us| us.is_finite() && *us >= 0.0) {
                let (sum, n) = e.rtt_us.get_or_insert((0.0, 0));
                *sum += us;
                *n = n.saturating_add(1);
            }
        }

        for s in self.processes.values_mut() {
            s.tick_bytes = 0;
            s.tick_events = false;
            s.rtt_us = None;
        }
        let mut newcomers = Vec::new();
        for (key, t) in tick {
            match self.processes.get_mut(&key) {
                Some(s) => {
                    s.rx_bytes_total = s.rx_bytes_total.saturating_add(t.rx);
                    s.tx_bytes_total = s.tx_bytes_total.saturating_add(t.tx);
                    s.quality.merge(&t.quality);
                    s.rtt_us = t.rtt_us();
                    s.last_seen = now;
                    s.tick_bytes = t.rx.saturating_add(t.tx);
                    s.tick_events = t.quality.any_events();
                    if s.tick_bytes > 0 || s.tick_events {
                        s.last_active = now;
                    }
                }
                None => newcomers.push((key, t)),
            }
        }

        let expiry = self.limits.expiry;
        let before = self.processes.len();
        self.processes
            .retain(|_, s| now.saturating_duration_since(s.last_seen) < expiry);
        self.series_expired_total += (before - self.processes.len()) as u64;

        // Busiest first; ties by key so the outcome does not depend on hashing.
        newcomers.sort_by(|a, b| {
            (b.1.rx.saturating_add(b.1.tx))
                .cmp(&a.1.rx.saturating_add(a.1.tx))
                .then_with(|| a.0.cmp(&b.0))
        });
        // The series a busy newcomer may replace: idle in this snapshot,
        // idle the longest first (ties by key), listed once per snapshot so
        // a flood of newcomers costs a sort, not a scan per newcomer. A
        // series inserted below is never among them (a newcomer that takes
        // a place moved bytes; one that did not comes after every one that
        // did, and evicts nobody).
        let mut idle: Vec<(Instant, ProcessKey)> = Vec::new();
        if self.processes.len() + newcomers.len() > self.limits.top_processes {
            idle = self
                .processes
                .iter()
                .filter(|(_, s)| s.tick_bytes == 0 && !s.tick_events)
                .map(|(k, s)| (s.last_active, k.clone()))
                .collect();
            // Idlest last, so each eviction pops it.
            idle.sort_by(|a, b| b.cmp(a));
        }
        let (mut evicted, mut refused) = (0u64, 0u64);
        for (key, t) in newcomers {
            let bytes = t.rx.saturating_add(t.tx);
            if self.processes.len() >= self.limits.top_processes {
                match idle.pop() {
                    Some((_, k)) if bytes > 0 => {
                        self.processes.remove(&k);
                        evicted += 1;
                    }
                    last => {
                        // Put it back for the next one (nobody can use it:
                        // every newcomer after this one moved no more).
                        idle.extend(last);
                        self.add_other(t.rx, t.tx);
                        self.other_quality.merge(&t.quality);
                        refused += 1;
                        continue;
                    }
                }
            }
            let rtt_us = t.rtt_us();
            let tick_events = t.quality.any_events();
            self.processes.insert(
                key,
                ProcessSeries {
                    rx_bytes_total: t.rx,
                    tx_bytes_total: t.tx,
                    last_seen: now,
                    last_active: now,
                    tick_bytes: bytes,
                    tick_events,
                    quality: t.quality,
                    rtt_us,
                },
            );
        }
        self.series_evicted_total += evicted;
        // Both are entries the bounded series table refused or evicted.
        crate::drops::dropped(
            "prometheus_series",
            self.limits.top_processes,
            evicted + refused,
        );
    }

    fn add_other(&mut self, rx: u64, tx: u64) {
        self.other_rx_bytes_total = self.other_rx_bytes_total.saturating_add(rx);
        self.other_tx_bytes_total = self.other_tx_bytes_total.saturating_add(tx);
    }

    /// The counters accumulated from the snapshots' bytes, as kept on disk
    /// for a restarted agent: the process series (with how long ago, at
    /// `now`, each was seen and active), `other`, and the removed series.
    pub fn saved(&self, instance: &str, now: Instant, unix_ms: u64) -> SavedCounters {
        let ago = |t: Instant| {
            u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
        };
        let mut processes: Vec<SavedProcess> = self
            .processes
            .iter()
            .map(|(k, s)| SavedProcess {
                pid: k.pid,
                comm: k.comm.clone(),
                cgroup: k.cgroup.clone(),
                rx_bytes_total: s.rx_bytes_total,
                tx_bytes_total: s.tx_bytes_total,
                quality: s.quality.clone(),
                seen_ms_ago: ago(s.last_seen),
                active_ms_ago: ago(s.last_active),
            })
            .collect();
        processes.sort_by(|a, b| (a.pid, &a.comm, &a.cgroup).cmp(&(b.pid, &b.comm, &b.cgroup)));
        SavedCounters {
            instance: instance.to_string(),
            saved_unix_ms: unix_ms,
            processes,
            other_rx_bytes_total: self.other_rx_bytes_total,
            other_tx_bytes_total: self.other_tx_bytes_total,
            other_quality: self.other_quality.clone(),
            series_expired_total: self.series_expired_total,
            series_evicted_total: self.series_evicted_total,
        }
    }

    /// Take back counters a previous agent saved, at `now` (`unix_ms`):
    /// the time the agent was down counts toward expiry (series past it
    /// are expired now), and at most `top_processes` series come back (the
    /// most recently active; the others are evicted). Replaces the process
    /// series and the accumulated totals.
    pub fn restore(&mut self, saved: &SavedCounters, now: Instant, unix_ms: u64) {
        let down = Duration::from_millis(unix_ms.saturating_sub(saved.saved_unix_ms));
        self.other_rx_bytes_total = saved.other_rx_bytes_total;
        self.other_tx_bytes_total = saved.other_tx_bytes_total;
        self.other_quality = saved.other_quality.clone();
        self.series_expired_total = saved.series_expired_total;
        self.series_evicted_total = saved.series_evicted_total;
        self.processes.clear();
        let mut live = Vec::new();
        for p in &saved.processes {
            let seen_ago = Duration::from_millis(p.seen_ms_ago).saturating_add(down);
            let active_ago = Duration::from_millis(p.active_ms_ago).saturating_add(down);
            if seen_ago >= self.limits.expiry {
                self.series_expired_total += 1;
                continue;
            }
            // An instant before the clock's origin: the oldest there is.
            let last_seen = now.checked_sub(seen_ago).unwrap_or(now);
            let last_active = now.checked_sub(active_ago).unwrap_or(last_seen);
            live.push((active_ago, p, last_seen, last_active));
        }
        // Most recently active first; ties by key, so the outcome is stable.
        live.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| (a.1.pid, &a.1.comm).cmp(&(b.1.pid, &b.1.comm)))
        });
        let over = live.len().saturating_sub(self.limits.top_processes) as u64;
        crate::drops::dropped("prometheus_series", self.limits.top_processes, over);
        for (i, (_, p, last_seen, last_active)) in live.into_iter().enumerate() {
            if i >= self.limits.top_processes {
                self.series_evicted_total += 1;
                continue;
            }
            let key = ProcessKey {
                pid: p.pid,
                comm: p.comm.clone(),
                cgroup: p.cgroup.clone(),
            };
            let s = self.processes.entry(key).or_insert(ProcessSeries {
                rx_bytes_total: 0,
                tx_bytes_total: 0,
                last_seen,
                last_active,
                tick_bytes: 0,
                tick_events: false,
                quality: QualityTotals::default(),
                rtt_us: None,
            });
            // A key twice in a (hand-edited) file: its counts add up.
            s.rx_bytes_total = s.rx_bytes_total.saturating_add(p.rx_bytes_total);
            s.tx_bytes_total = s.tx_bytes_total.saturating_add(p.tx_bytes_total);
            s.quality.merge(&p.quality);
        }
    }
}

/// One process series as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedProcess {
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub rx_bytes_total: u64,
    pub tx_bytes_total: u64,
    /// Its TCP quality and DNS counters (absent in files of older agents:
    /// read as none).
    #[serde(default, skip_serializing_if = "QualityTotals::is_empty")]
    pub quality: QualityTotals,
    /// Milliseconds between its last snapshot row and the save.
    pub seen_ms_ago: u64,
    /// Milliseconds between its last bytes and the save.
    pub active_ms_ago: u64,
}

/// The counters `/metrics` accumulates from the snapshots' bytes, as kept
/// on disk beside the pinned source's baseline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedCounters {
    /// The pins' instance tag: restored only by an agent on the same pins.
    pub instance: String,
    /// Wall-clock time of the save (Unix milliseconds).
    pub saved_unix_ms: u64,
    pub processes: Vec<SavedProcess>,
    pub other_rx_bytes_total: u64,
    pub other_tx_bytes_total: u64,
    /// Quality counters of `other` (absent in files of older agents).
    #[serde(default, skip_serializing_if = "QualityTotals::is_empty")]
    pub other_quality: QualityTotals,
    pub series_expired_total: u64,
    pub series_evicted_total: u64,
}

/// The first line of a counters file: this, the CRC-32 of the rest (8 hex
/// digits), a newline, then the JSON body.
const COUNTERS_HEADER: &str = "netwatch-prometheus-counters 1";

impl SavedCounters {
    /// The file's text: header line with the body's checksum, JSON body.
    pub fn encode(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail.
        let body = serde_json::to_string(self).unwrap_or_default();
        format!(
            "{COUNTERS_HEADER} {:08x}\n{body}",
            crc32fast::hash(body.as_bytes())
        )
    }

    /// Parse a counters file saved for `instance`; `Err` says why it is
    /// not used (not such a file, torn or altered, other pins).
    pub fn decode(text: &str, instance: &str) -> Result<Self, String> {
        let (header, body) = text.split_once('\n').ok_or("no header line")?;
        let crc = header
            .strip_prefix(COUNTERS_HEADER)
            .map(str::trim)
            .ok_or("not a counters file")?;
        let crc = u32::from_str_radix(crc, 16).map_err(|e| format!("bad checksum field: {e}"))?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return Err("checksum mismatch (torn or altered)".into());
        }
        let saved: Self = serde_json::from_str(body).map_err(|e| format!("bad body: {e}"))?;
        if saved.instance != instance {
            return Err(format!("saved for other pins ({})", saved.instance));
        }
        Ok(saved)
    }
}

/// Where the counters are kept beside the source's baseline file.
pub fn counters_file(baseline: &std::path::Path) -> std::path::PathBuf {
    let mut name = baseline
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".prometheus");
    baseline.with_file_name(name)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A label value, escaped as the text format requires (`\`, `"`, newline).
/// prometheus-client writes label values as given.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Text<'a>(&'a str);

impl EncodeLabelValue for Text<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A set of `(name, value)` labels with escaped values.
#[derive(Debug)]
struct Labels<'a, const N: usize>([(&'static str, Text<'a>); N]);

impl<const N: usize> EncodeLabelSet for Labels<'_, N> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.as_slice().encode(encoder)
    }
}

/// The registered collector: copies the state under the lock, encodes
/// outside it.
#[derive(Debug)]
struct StateCollector {
    state: Arc<Mutex<MetricsState>>,
    delivery: Option<Arc<dyn DeliveryReport>>,
}

fn lock(m: &Mutex<MetricsState>) -> MutexGuard<'_, MetricsState> {
    // Held only to copy numbers in or out: consistent after any panic.
    crate::supervise::lock(m, "/metrics state")
}

fn counter<S: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(S, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<S: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(S, i64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
fn counter1(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: u64,
) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// A gauge without labels.
fn gauge1(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: i64,
) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let st = lock(&self.state).clone();
        let delivery = self.delivery.as_ref().map(|d| d.view());
        encode_state(&mut enc, &st, delivery.as_ref())
    }
}

fn encode_state(
    enc: &mut DescriptorEncoder,
    st: &MetricsState,
    delivery: Option<&DeliveryView>,
) -> std::fmt::Result {
    let bytes = Some(&Unit::Bytes);

    // Processes, sorted for a stable page.
    let mut procs: Vec<(&ProcessKey, &ProcessSeries)> = st.processes.iter().collect();
    procs.sort_by(|a, b| a.0.cmp(b.0));
    let pids: Vec<String> = procs.iter().map(|(k, _)| k.pid.to_string()).collect();
    let mut rx = Vec::with_capacity(procs.len() + 1);
    let mut tx = Vec::with_capacity(procs.len() + 1);
    for ((k, s), pid) in procs.iter().zip(&pids) {
        let labels = || {
            Labels([
                ("pid", Text(pid)),
                ("comm", Text(&k.comm)),
                ("cgroup", Text(&k.cgroup)),
            ])
        };
        rx.push((labels(), s.rx_bytes_total));
        tx.push((labels(), s.tx_bytes_total));
    }
    let other = || {
        Labels([
            ("pid", Text("")),
            ("comm", Text(OTHER_COMM)),
            ("cgroup", Text("")),
        ])
    };
    rx.push((other(), st.other_rx_bytes_total));
    tx.push((other(), st.other_tx_bytes_total));
    counter(
        enc,
        "netwatch_process_receive",
        "Bytes received by a process's sockets (comm=\"other\": processes without a series of their own)",
        bytes,
        &rx,
    )?;
    counter(
        enc,
        "netwatch_process_transmit",
        "Bytes sent by a process's sockets (comm=\"other\": processes without a series of their own)",
        bytes,
        &tx,
    )?;
    let mut shown: Vec<quality::Shown<'_>> = procs
        .iter()
        .zip(&pids)
        .map(|((k, s), pid)| quality::Shown {
            pid,
            comm: &k.comm,
            cgroup: &k.cgroup,
            totals: &s.quality,
            rtt_us: s.rtt_us,
        })
        .collect();
    shown.push(quality::Shown {
        pid: "",
        comm: OTHER_COMM,
        cgroup: "",
        totals: &st.other_quality,
        rtt_us: None,
    });
    quality::encode(enc, &shown)?;
    gauge1(
        enc,
        "netwatch_process_series",
        "Process series now shown (bounded by top_processes)",
        None,
        signed(st.processes.len() as u64),
    )?;
    counter(
        enc,
        "netwatch_process_series_removed",
        "Process series removed: expired (process gone) or evicted (room for a busier one)",
        None,
        &[
            (
                Labels([("reason", Text("expired"))]),
                st.series_expired_total,
            ),
            (
                Labels([("reason", Text("evicted"))]),
                st.series_evicted_total,
            ),
        ],
    )?;

    // Interfaces.
    type Field = fn(&InterfaceMetric) -> u64;
    let iface: [(&str, &str, Option<&Unit>, Field); 8] = [
        (
            "netwatch_interface_receive",
            "Bytes received by the interface",
            bytes,
            |i| i.rx_bytes,
        ),
        (
            "netwatch_interface_transmit",
            "Bytes sent by the interface",
            bytes,
            |i| i.tx_bytes,
        ),
        (
            "netwatch_interface_receive_packets",
            "Packets received by the interface",
            None,
            |i| i.rx_packets,
        ),
        (
            "netwatch_interface_transmit_packets",
            "Packets sent by the interface",
            None,
            |i| i.tx_packets,
        ),
        (
            "netwatch_interface_receive_errors",
            "Receive errors of the interface",
            None,
            |i| i.rx_errors,
        ),
        (
            "netwatch_interface_transmit_errors",
            "Transmit errors of the interface",
            None,
            |i| i.tx_errors,
        ),
        (
            "netwatch_interface_receive_drops",
            "Received packets the interface dropped",
            None,
            |i| i.rx_drops,
        ),
        (
            "netwatch_interface_transmit_drops",
            "Packets to send the interface dropped",
            None,
            |i| i.tx_drops,
        ),
    ];
    for (name, help, unit, field) in iface {
        let series: Vec<_> = st
            .interfaces
            .iter()
            .map(|i| (Labels([("interface", Text(&i.name))]), field(i)))
            .collect();
        counter(enc, name, help, unit, &series)?;
    }
    let up: Vec<_> = st
        .interfaces
        .iter()
        .map(|i| (Labels([("interface", Text(&i.name))]), i64::from(i.is_up)))
        .collect();
    gauge(
        enc,
        "netwatch_interface_up",
        "1 if the interface is up",
        None,
        &up,
    )?;

    // TCP states, host-wide.
    if let Some((est, tw, cw)) = st.tcp {
        gauge(
            enc,
            "netwatch_tcp_connections",
            "TCP sockets of the host by state",
            None,
            &[
                (Labels([("state", Text("established"))]), i64::from(est)),
                (Labels([("state", Text("time_wait"))]), i64::from(tw)),
                (Labels([("state", Text("close_wait"))]), i64::from(cw)),
            ],
        )?;
    }

    // The agent itself.
    {
        let mut m = enc.encode_descriptor(
            "netwatch_agent_build",
            "The agent's version",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&Labels([("version", Text(env!("CARGO_PKG_VERSION")))]))?;
    }
    if let Some(c) = &st.collector {
        let mut m = enc.encode_descriptor(
            "netwatch_agent_collector",
            "Where per-process bytes come from: source, eBPF tier, estimated",
            None,
            MetricType::Info,
        )?;
        let estimated = if c.estimated { "true" } else { "false" };
        m.encode_info(&Labels([
            ("source", Text(&c.source)),
            ("tier", Text(c.ebpf_tier.as_deref().unwrap_or(""))),
            ("estimated", Text(estimated)),
        ]))?;
    }
    counter1(
        enc,
        "netwatch_agent_snapshots",
        "Snapshots taken",
        None,
        st.snapshots_total,
    )?;
    gauge1(
        enc,
        "netwatch_agent_connections",
        "Connections (socket samples) in the latest snapshot",
        None,
        signed(st.connections),
    )?;
    gauge1(
        enc,
        "netwatch_agent_processes",
        "Process rows in the latest snapshot",
        None,
        signed(st.process_rows),
    )?;
    counter1(
        enc,
        "netwatch_agent_lost_records",
        "Records the source lost since the agent started (map eviction, full ring buffer, dropped packets)",
        None,
        st.lost_records_total,
    )?;
    let alerts: Vec<_> = st
        .alerts
        .totals()
        .into_iter()
        .map(|(c, s, n)| {
            (
                Labels([
                    ("category", Text(crate::alerts::counter::category_label(c))),
                    ("severity", Text(crate::alerts::counter::severity_label(s))),
                ]),
                n,
            )
        })
        .collect();
    counter(
        enc,
        "netwatch_alerts",
        "Alerts raised (port scan, beaconing, DNS tunnel, bandwidth), each counted once",
        None,
        &alerts,
    )?;

    if let Some(d) = delivery {
        counter1(
            enc,
            "netwatch_agent_delivery_requests",
            "Ingest requests sent",
            None,
            d.requests,
        )?;
        counter1(
            enc,
            "netwatch_agent_delivered_snapshots",
            "Snapshots NetWatch Cloud accepted",
            None,
            d.delivered,
        )?;
        counter1(
            enc,
            "netwatch_agent_rejected_snapshots",
            "Snapshots NetWatch Cloud rejected (not resent)",
            None,
            d.rejected,
        )?;
        let errors: Vec<_> = d
            .errors
            .iter()
            .map(|(k, v)| (Labels([("status", Text(k))]), *v))
            .collect();
        counter(
            enc,
            "netwatch_agent_delivery_errors",
            "Failed ingest requests by HTTP status (a 3xx included: redirects are not followed), status=\"transport\" (no or half an answer), or a 207 not usable (207_unreadable, 207_incomplete)",
            None,
            &errors,
        )?;
        gauge1(
            enc,
            "netwatch_agent_last_delivery_timestamp_seconds",
            "Unix time of the last request NetWatch Cloud answered with 200 or 207 (0: never)",
            None,
            signed(d.last_success_unix_secs),
        )?;
        gauge1(
            enc,
            "netwatch_agent_spool_snapshots",
            "Snapshots waiting in the spool",
            None,
            signed(d.spool_depth),
        )?;
        gauge1(
            enc,
            "netwatch_agent_spool",
            "Bytes the spool holds on disk",
            bytes,
            signed(d.spool_bytes),
        )?;
        counter(
            enc,
            "netwatch_agent_spool_dropped_snapshots",
            "Snapshots the spool lost: evicted past the bound, corrupt, torn writes, writes that failed (full, read-only, I/O error), or records another user could have written (foreign: removed, never sent)",
            None,
            &[
                (Labels([("reason", Text("evicted"))]), d.spool_evicted),
                (Labels([("reason", Text("corrupt"))]), d.spool_corrupt),
                (Labels([("reason", Text("torn"))]), d.spool_torn),
                (Labels([("reason", Text("write_failed"))]), d.spool_write_failed),
                (Labels([("reason", Text("foreign"))]), d.spool_foreign),
            ],
        )?;
        counter1(
            enc,
            "netwatch_agent_spool_read_errors",
            "Spool record reads that failed for an I/O reason (EMFILE, EIO, ...); the records are kept and read again",
            None,
            d.spool_read_errors,
        )?;
    }
    Ok(())
}

/// Render `state` (and `delivery`) as one OpenMetrics page.
pub fn render(
    state: &Arc<Mutex<MetricsState>>,
    delivery: Option<Arc<dyn DeliveryReport>>,
) -> String {
    let registry = registry(state, delivery);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The registry `/metrics` encodes: one collector over the shared state.
fn registry(
    state: &Arc<Mutex<MetricsState>>,
    delivery: Option<Arc<dyn DeliveryReport>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector {
        state: Arc::clone(state),
        delivery,
    }));
    registry.register_collector(Box::new(ComponentCollector));
    registry.register_collector(Box::new(DropsCollector));
    registry
}

/// What the bounded tables dropped ([`crate::drops`]). Nothing is written
/// while no table dropped anything.
#[derive(Debug)]
struct DropsCollector;

impl Collector for DropsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let tables = crate::drops::totals();
        if tables.is_empty() {
            return Ok(());
        }
        let dropped: Vec<_> = tables
            .iter()
            .map(|&(name, total)| (Labels([("table", Text(name))]), total))
            .collect();
        counter(
            &mut enc,
            "netwatch_agent_table_dropped",
            "Entries a bounded table (keyed by data from outside: DNS names, alert keys, \
             scan sources, flows, events, series) refused or evicted because it was full",
            None,
            &dropped,
        )
    }
}

/// The supervised parts ([`crate::supervise::components`]): up or not, and
/// their restarts. Nothing is written while no part runs.
#[derive(Debug)]
struct ComponentCollector;

impl Collector for ComponentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let parts = crate::supervise::components();
        if parts.is_empty() {
            return Ok(());
        }
        let up: Vec<_> = parts
            .iter()
            .map(|c| (Labels([("component", Text(c.name))]), i64::from(c.up)))
            .collect();
        gauge(
            &mut enc,
            "netwatch_agent_component_up",
            "Whether the agent's part (a worker thread) runs: 0 while it waits for its \
             restart, and once given up on (the agent then exits)",
            None,
            &up,
        )?;
        let restarts: Vec<_> = parts
            .iter()
            .map(|c| (Labels([("component", Text(c.name))]), c.restarts))
            .collect();
        counter(
            &mut enc,
            "netwatch_agent_component_restarts",
            "Times the agent's part was restarted after a panic or a failure",
            None,
            &restarts,
        )
    }
}

/// At most this many connections at once (fewer when the open-files limit
/// is low: half of it); a new one past the cap closes the connection idle
/// the longest, so a new scrape always gets in.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send a request's headers within this time of the
/// connection's start, or of its previous answer (a deadline, not an idle
/// timer: a byte now and then does not extend it). hyper answers 408 and
/// closes.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Request line and headers larger than this are answered 431 and closed.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// No connection lives longer than this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections the kernel queues for the server to accept (capped by
/// `net.core.somaxconn`, 4096 by default).
const LISTEN_BACKLOG: i32 = 1024;
/// The name of the connection table in `netwatch_agent_table_dropped_total`.
pub const CONNECTIONS_TABLE: &str = "metrics_connections";

/// The `/metrics` sink: updates the shared state on each snapshot; the
/// server thread renders it on each scrape.
pub struct PrometheusSink {
    state: Arc<Mutex<MetricsState>>,
    /// pid → cgroup path, for the pids of the latest snapshot.
    cgroups: HashMap<u32, String>,
    local_addr: SocketAddr,
    /// Pinned source: the pins' instance tag and the counters file, written
    /// each time a snapshot was delivered.
    persist: Option<(String, std::path::PathBuf)>,
    /// Sent once the counters are restored: the server starts answering.
    go: Option<std::sync::mpsc::Sender<()>>,
    /// Set (or dropped) to stop the server.
    stop: tokio::sync::watch::Sender<bool>,
    /// The server thread, supervised as `metrics` (restarted: the listener
    /// belongs to its body, each run serves a clone of it).
    server: Option<crate::supervise::Worker>,
}

impl Drop for PrometheusSink {
    fn drop(&mut self) {
        self.go = None;
        self.stop.send_replace(true);
        // Stops restarts and joins.
        drop(self.server.take());
    }
}

impl PrometheusSink {
    /// Bind the listener (an address in use stops the agent at start) and
    /// start the server thread.
    pub fn start(
        cfg: &PrometheusConfig,
        delivery: Option<Arc<dyn DeliveryReport>>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let listener = std::net::TcpListener::bind(cfg.listen).with_context(|| {
            format!(
                "listening for /metrics on {} (is another exporter on that port? \
                 set --metrics-listen or [prometheus] listen)",
                cfg.listen
            )
        })?;
        listener
            .set_nonblocking(true)
            .context("making the /metrics listener non-blocking")?;
        // std listens with a backlog of 128: a burst of connections fills
        // it and the kernel drops new SYNs (a scrape's among them) for a
        // second or more. Listening again only raises the queue's length.
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: listen(2) on a socket we own; no memory is passed.
            if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
                log::warn!(
                    "/metrics: raising the listen backlog to {LISTEN_BACKLOG}: {} (kept 128)",
                    std::io::Error::last_os_error()
                );
            }
        }
        let local_addr = listener
            .local_addr()
            .context("reading the /metrics listener's address")?;
        let state = Arc::new(Mutex::new(MetricsState::new(SeriesLimits {
            expiry: cfg.process_expiry,
            top_processes: cfg.top_processes,
        })));
        let registry = Arc::new(registry(&state, delivery));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // The server starts once the counters are restored (`resume`):
        // until then scrapes wait in the listen backlog, so none ever sees
        // a restored counter at 0.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let mut waiting = Some(go_rx);
        let server = crate::supervise::Worker::spawn(
            "metrics",
            "metrics",
            crate::supervise::Policy::Restart,
            move || {
                if let Some(go) = waiting.take() {
                    if go.recv().is_err() {
                        return Ok(());
                    }
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("starting the /metrics runtime: {e}"))?;
                let listener = listener
                    .try_clone()
                    .map_err(|e| format!("duplicating the /metrics listener: {e}"))?;
                rt.block_on(serve(listener, Arc::clone(&registry), stop_rx.clone()))
            },
        )
        .context("starting the /metrics thread")?;
        log::info!("serving Prometheus metrics on http://{local_addr}/metrics");
        log::info!(
            "/metrics: at most {} connections (the one idle the longest is closed for a new \
             one), request headers within {} s and {MAX_HEADER_BYTES} bytes",
            connection_cap(),
            HEADER_READ_TIMEOUT.as_secs()
        );
        Ok(Self {
            state,
            cgroups: HashMap::new(),
            local_addr,
            persist: None,
            go: Some(go_tx),
            stop: stop_tx,
            server: Some(server),
        })
    }

    /// Let the server thread answer scrapes (once).
    fn serve_now(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }

    /// Where the server listens (the port chosen when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Sink for PrometheusSink {
    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn emit(&mut self, snapshot: &Snapshot) -> anyhow::Result<Emitted> {
        self.serve_now();
        let now = Instant::now();
        // Cgroups are read outside the lock, once per pid while it shows.
        let pids: std::collections::HashSet<u32> = snapshot
            .processes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.pid)
            .collect();
        self.cgroups.retain(|p, _| pids.contains(p));
        for pid in pids {
            self.cgroups.entry(pid).or_insert_with(|| read_cgroup(pid));
        }
        let cgroups = &self.cgroups;
        let mut lookup = |pid: u32| cgroups.get(&pid).cloned().unwrap_or_default();
        lock(&self.state).apply(snapshot, now, &mut lookup);
        Ok(Emitted::KEPT)
    }

    fn resume(&mut self, continuity: Option<&crate::source::Continuity>) {
        let Some(c) = continuity else {
            self.serve_now();
            return;
        };
        let path = counters_file(&c.state_file);
        if c.continued {
            let read = crate::files::read_own(&path, "process counters file").and_then(|b| {
                b.map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| crate::files::FileError::Io {
                        what: "process counters file".into(),
                        path: path.clone(),
                        action: "opening it",
                        error: std::io::ErrorKind::NotFound.into(),
                    })
            });
            let text = match read {
                Ok(t) => Some(t),
                Err(e) => {
                    log::warn!(
                        "no process counters at {} ({e}): /metrics process counters start at 0",
                        path.display()
                    );
                    None
                }
            };
            if let Some(text) = text {
                match SavedCounters::decode(&text, &c.instance) {
                    Ok(saved) => {
                        lock(&self.state).restore(&saved, Instant::now(), unix_ms());
                        log::info!(
                            "/metrics process counters continue from {} ({} series)",
                            path.display(),
                            saved.processes.len()
                        );
                    }
                    Err(e) => log::warn!(
                        "process counters {} not used: {e}; /metrics process counters start at 0",
                        path.display()
                    ),
                }
            }
        } else {
            log::info!(
                "new pins: /metrics process counters start at 0 (kept in {})",
                path.display()
            );
        }
        crate::files::remove_leftovers(&path);
        self.persist = Some((c.instance.clone(), path));
        self.serve_now();
    }

    fn delivered(&mut self) {
        let Some((instance, path)) = &self.persist else {
            return;
        };
        let text = lock(&self.state)
            .saved(instance, Instant::now(), unix_ms())
            .encode();
        // Volatile: the counters are only restored with the pins they were
        // written for, which a power loss (a reboot) takes away anyway.
        if let Err(e) =
            crate::files::replace(path, text.as_bytes(), crate::files::Durability::Volatile)
        {
            log::warn!("storing the process counters at {}: {e}", path.display());
        }
    }
}

/// The cgroup path of `pid`: the cgroup v2 entry of `/proc/<pid>/cgroup`,
/// else the first v1 entry's path; empty if the process is gone.
#[cfg(target_os = "linux")]
fn read_cgroup(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|t| parse_cgroup(&t))
        .unwrap_or_default()
}

#[cfg(not(target_os = "linux"))]
fn read_cgroup(_pid: u32) -> String {
    String::new()
}

/// The path of a `/proc/<pid>/cgroup` text: the `0::` (v2) line's, else
/// the first line's third field.
pub fn parse_cgroup(text: &str) -> String {
    let v2 = text.lines().find_map(|l| l.strip_prefix("0::"));
    let path = v2.or_else(|| text.lines().next().and_then(|l| l.splitn(3, ':').nth(2)));
    path.unwrap_or_default().trim().to_string()
}

type Body = http_body_util::Full<bytes::Bytes>;

fn reply(status: http::StatusCode, content_type: &str, body: String) -> http::Response<Body> {
    let mut r = http::Response::new(Body::new(bytes::Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// One request: `GET /metrics` renders the page, `GET /healthz` the
/// liveness; `/` points to both.
fn answer<B>(req: &http::Request<B>, registry: &Registry) -> http::Response<Body> {
    use http::{Method, StatusCode};
    let text = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, registry) {
                Ok(()) => reply(StatusCode::OK, CONTENT_TYPE, out),
                Err(_) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    text,
                    "encoding the metrics failed\n".into(),
                ),
            }
        }
        (&Method::GET | &Method::HEAD, "/healthz") => {
            let live = crate::supervise::liveness();
            let status = if live.is_live() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, text, format!("{}\n", live.describe()))
        }
        (&Method::GET | &Method::HEAD, "/") => reply(
            StatusCode::OK,
            text,
            "netwatch-agent: metrics at /metrics, liveness at /healthz\n".into(),
        ),
        (_, "/metrics") | (_, "/") | (_, "/healthz") => {
            let mut r = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                text,
                "only GET and HEAD\n".into(),
            );
            r.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            r
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "not found: try /metrics or /healthz\n".into(),
        ),
    }
}

/// How many connections the server holds at most: [`MAX_CONNECTIONS`],
/// or half the soft open-files limit when that is lower (the rest is for
/// the agent's own files: /proc, maps, the spool), at least 16.
pub fn connection_cap() -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the struct we pass and nothing else.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            let half = usize::try_from(lim.rlim_cur / 2).unwrap_or(usize::MAX);
            return half.clamp(16, MAX_CONNECTIONS);
        }
    }
    MAX_CONNECTIONS
}

/// The open connections: at most `cap`. Each remembers when it last
/// started a request (or was accepted); past the cap, the one whose last
/// start is the oldest is closed: the connection idle the longest (one
/// waiting for its request's headers, or between requests; a request is
/// answered synchronously on this thread, so none is mid-answer when a new
/// connection is accepted).
struct Connections {
    cap: usize,
    /// A counter, not a clock: ordering only.
    tick: u64,
    next_id: u64,
    /// id → (last start, the task serving it).
    open: HashMap<u64, (u64, tokio::task::AbortHandle)>,
    /// last start → id: the idle-longest first (O(log n) per connection,
    /// so a connection flood at the cap costs no scan).
    by_age: std::collections::BTreeMap<u64, u64>,
}

impl Connections {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            tick: 0,
            next_id: 0,
            open: HashMap::new(),
            by_age: std::collections::BTreeMap::new(),
        }
    }

    /// Make room for one more: take out the connections idle the longest
    /// while the table is full; the caller aborts their tasks (outside the
    /// lock: a task's end takes the lock too).
    fn make_room(&mut self) -> Vec<tokio::task::AbortHandle> {
        let mut out = Vec::new();
        while self.open.len() >= self.cap {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some((_, task)) = self.open.remove(&oldest) {
                out.push(task);
            }
        }
        out
    }

    fn insert(&mut self, task: tokio::task::AbortHandle) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.tick += 1;
        self.open.insert(id, (self.tick, task));
        self.by_age.insert(self.tick, id);
        id
    }

    /// Connection `id` started a request.
    fn touch(&mut self, id: u64) {
        self.tick += 1;
        if let Some((last, _)) = self.open.get_mut(&id) {
            self.by_age.remove(last);
            *last = self.tick;
            self.by_age.insert(self.tick, id);
        }
    }

    /// Connection `id` ended.
    fn remove(&mut self, id: u64) {
        if let Some((last, _)) = self.open.remove(&id) {
            self.by_age.remove(&last);
        }
    }
}

fn lock_conns(c: &Mutex<Connections>) -> MutexGuard<'_, Connections> {
    crate::supervise::lock(c, "/metrics connection table")
}

/// Removes a connection from the table when its task ends (answered,
/// timed out, closed by the client, or aborted).
struct Registered {
    conns: Arc<Mutex<Connections>>,
    id: Option<u64>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            lock_conns(&self.conns).remove(id);
        }
    }
}

/// Serve until `stop` is set or dropped (`Ok`); `Err` when the listener
/// cannot be used (the supervisor tries again). Connections cost a task
/// each (no thread): thousands of idle ones are held without starving a
/// scrape; see [`Connections`] for the cap.
async fn serve(
    listener: std::net::TcpListener,
    registry: Arc<Registry>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| format!("cannot use the /metrics listener: {e}"))?;
    let cap = connection_cap();
    let conns = Arc::new(Mutex::new(Connections::new(cap)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES);
    let http = Arc::new(http);
    loop {
        let stream = tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(()),
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    crate::supervise::fault::point("metrics");
                    s
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    log::warn!("/metrics: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let evicted = lock_conns(&conns).make_room();
        for task in &evicted {
            // Dropping the task's future closes its socket.
            task.abort();
        }
        crate::drops::dropped(CONNECTIONS_TABLE, cap, evicted.len() as u64);
        let registry = Arc::clone(&registry);
        let http = Arc::clone(&http);
        // The task's id is known once it is in the table; it cannot run
        // before this loop next awaits (one thread).
        let (id_tx, id_rx) = tokio::sync::oneshot::channel::<u64>();
        let table = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            let Ok(id) = id_rx.await else { return };
            let _registered = Registered {
                conns: Arc::clone(&table),
                id: Some(id),
            };
            let svc = hyper::service::service_fn(move |req| {
                lock_conns(&table).touch(id);
                let r = answer(&req, &registry);
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            // A connection past its time is dropped (closed).
            if let Ok(Err(e)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                log::debug!("/metrics connection: {e}");
            }
        });
        let id = lock_conns(&conns).insert(task.abort_handle());
        let _ = id_tx.send(id);
    }
}

#[cfg(test)]
mod server_tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn past_the_cap_the_connection_idle_longest_makes_room() {
        let mut c = Connections::new(3);
        let mut tasks = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let t = tokio::spawn(std::future::pending::<()>());
            ids.push(c.insert(t.abort_handle()));
            tasks.push(t);
        }
        assert_eq!(c.make_room().len(), 1);
        // The first one went; a request on the second makes the third the
        // idle one.
        assert_eq!(c.open.len(), 2);
        assert!(!c.open.contains_key(&ids[0]));
        c.touch(ids[1]);
        let t = tokio::spawn(std::future::pending::<()>());
        let id3 = c.insert(t.abort_handle());
        let gone = c.make_room();
        assert_eq!(gone.len(), 1);
        assert!(!c.open.contains_key(&ids[2]));
        assert!(c.open.contains_key(&ids[1]) && c.open.contains_key(&id3));
        // Room already: nothing closed.
        assert!(c.make_room().is_empty());
        c.remove(id3);
        assert_eq!(c.open.len(), 1);
        assert_eq!(c.by_age.len(), 1);
        for t in tasks {
            t.abort();
        }
        t.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use netwatch_common::wire::ProcessBandwidth;

    fn snap(rows: &[(u32, &str, u64, u64)]) -> Snapshot {
        let mut s = Snapshot::empty(Utc::now());
        s.processes = Some(
            rows.iter()
                .map(|&(pid, comm, rx, tx)| {
                    ProcessBandwidth::network_only(comm.into(), Some(pid), rx, tx, 0.0, 0.0, 1)
                })
                .collect(),
        );
        s
    }

    fn state(top: usize, expiry_secs: u64) -> MetricsState {
        MetricsState::new(SeriesLimits {
            expiry: Duration::from_secs(expiry_secs),
            top_processes: top,
        })
    }

    fn cg(pid: u32) -> String {
        format!("/test/{pid}")
    }

    fn key(pid: u32, comm: &str) -> ProcessKey {
        ProcessKey {
            pid,
            comm: comm.into(),
            cgroup: cg(pid),
        }
    }

    fn totals(st: &MetricsState, pid: u32, comm: &str) -> Option<(u64, u64)> {
        st.processes()
            .get(&key(pid, comm))
            .map(|s| (s.rx_bytes_total, s.tx_bytes_total))
    }

    fn page(st: &MetricsState, delivery: Option<DeliveryView>) -> String {
        #[derive(Debug)]
        struct Fixed(DeliveryView);
        impl DeliveryReport for Fixed {
            fn view(&self) -> DeliveryView {
                self.0.clone()
            }
        }
        let d = delivery.map(|d| Arc::new(Fixed(d)) as Arc<dyn DeliveryReport>);
        render(&Arc::new(Mutex::new(st.clone())), d)
    }

    #[test]
    fn counters_accumulate_interval_bytes_across_snapshots() {
        let mut st = state(10, 300);
        let t0 = Instant::now();
        let mut now = t0;
        for (rx, tx) in [(100, 1), (0, 0), (250, 2), (1, 7)] {
            st.apply(&snap(&[(42, "curl", rx, tx)]), now, &mut cg);
            now += Duration::from_secs(1);
        }
        assert_eq!(totals(&st, 42, "curl"), Some((351, 10)));
        let p = page(&st, None);
        assert!(
            p.contains(
                "netwatch_process_receive_bytes_total{pid=\"42\",comm=\"curl\",cgroup=\"/test/42\"} 351\n"
            ),
            "{p}"
        );
        assert!(
            p.contains(
                "netwatch_process_transmit_bytes_total{pid=\"42\",comm=\"curl\",cgroup=\"/test/42\"} 10\n"
            ),
            "{p}"
        );
        assert!(
            p.contains("# TYPE netwatch_process_receive_bytes counter\n"),
            "{p}"
        );
        assert!(
            p.contains("# UNIT netwatch_process_receive_bytes bytes\n"),
            "{p}"
        );
        assert!(p.contains("netwatch_agent_snapshots_total 4\n"), "{p}");
        assert!(p.ends_with("# EOF\n"), "{p}");
    }

    #[test]
    fn the_folded_row_of_a_snapshot_counts_under_other_exactly() {
        let mut st = state(10, 300);
        let mut s = snap(&[
            (1, "a", 10, 1),
            (2, "b", 20, 2),
            (3, "c", 30, 3),
            (4, "d", 40, 4),
        ]);
        let rows = s.processes.as_mut().unwrap();
        assert_eq!(crate::attribution::fold_processes(rows, 2), 2);
        st.apply(&s, Instant::now(), &mut cg);
        // The two kept rows have series; the folded row (no pid) is not a
        // process: its bytes are in `other`, none lost.
        assert_eq!(st.processes().len(), 2);
        assert_eq!(totals(&st, 4, "d"), Some((40, 4)));
        assert_eq!(totals(&st, 3, "c"), Some((30, 3)));
        assert_eq!(st.other_bytes_total(), (30, 3));
        let p = page(&st, None);
        assert!(!p.contains("(others)"), "{p}");
        assert!(p.contains("netwatch_agent_processes 3\n"), "{p}");
    }

    #[test]
    fn series_of_gone_processes_expire_after_the_configured_time() {
        let mut st = state(10, 60);
        let t0 = Instant::now();
        st.apply(&snap(&[(7, "a", 5, 5), (8, "b", 1, 1)]), t0, &mut cg);
        // pid 7 exits; pid 8 keeps showing.
        st.apply(
            &snap(&[(8, "b", 1, 1)]),
            t0 + Duration::from_secs(59),
            &mut cg,
        );
        assert_eq!(totals(&st, 7, "a"), Some((5, 5)), "kept until the expiry");
        st.apply(
            &snap(&[(8, "b", 0, 0)]),
            t0 + Duration::from_secs(60),
            &mut cg,
        );
        assert_eq!(totals(&st, 7, "a"), None, "expired");
        assert_eq!(totals(&st, 8, "b"), Some((2, 2)));
        assert_eq!(st.series_expired_total, 1);
        let p = page(&st, None);
        assert!(!p.contains("pid=\"7\""), "{p}");
        assert!(
            p.contains("netwatch_process_series_removed_total{reason=\"expired\"} 1\n"),
            "{p}"
        );
    }

    #[test]
    fn at_most_top_n_series_and_the_rest_is_counted_as_other() {
        let mut st = state(2, 300);
        let t0 = Instant::now();
        st.apply(
            &snap(&[(1, "small", 10, 0), (2, "big", 1000, 0), (3, "mid", 100, 0)]),
            t0,
            &mut cg,
        );
        assert_eq!(st.processes().len(), 2);
        assert_eq!(totals(&st, 2, "big"), Some((1000, 0)));
        assert_eq!(totals(&st, 3, "mid"), Some((100, 0)));
        assert_eq!(st.other_bytes_total(), (10, 0));

        // Every series busy: the newcomer stays in other.
        let t1 = t0 + Duration::from_secs(1);
        st.apply(
            &snap(&[(1, "small", 5, 1), (2, "big", 1, 0), (3, "mid", 1, 0)]),
            t1,
            &mut cg,
        );
        assert_eq!(st.processes().len(), 2);
        assert_eq!(st.other_bytes_total(), (15, 1));

        // "mid" goes idle: the busy newcomer takes its place; what "mid"
        // counted stays counted (its series ends), nothing moves to other.
        let t2 = t1 + Duration::from_secs(1);
        st.apply(
            &snap(&[(1, "small", 3, 3), (2, "big", 1, 0), (3, "mid", 0, 0)]),
            t2,
            &mut cg,
        );
        assert_eq!(st.processes().len(), 2);
        assert_eq!(totals(&st, 1, "small"), Some((3, 3)));
        assert_eq!(totals(&st, 3, "mid"), None);
        assert_eq!(st.other_bytes_total(), (15, 1));
        assert_eq!(st.series_evicted_total, 1);
        let p = page(&st, None);
        assert!(
            p.contains(
                "netwatch_process_receive_bytes_total{pid=\"\",comm=\"other\",cgroup=\"\"} 15\n"
            ),
            "{p}"
        );
        assert!(p.contains("netwatch_process_series 2\n"), "{p}");

        // An idle newcomer never evicts anyone.
        st.apply(
            &snap(&[(1, "small", 0, 0), (2, "big", 0, 0), (4, "idle", 0, 0)]),
            t2 + Duration::from_secs(1),
            &mut cg,
        );
        assert_eq!(totals(&st, 4, "idle"), None);
        assert_eq!(st.series_evicted_total, 1);
    }

    #[test]
    fn saved_counters_round_trip_and_continue_exactly() {
        let t0 = Instant::now();
        let mut st = state(10, 300);
        st.apply(&snap(&[(1, "a b", 100, 7), (2, "c", 5, 0)]), t0, &mut cg);
        st.add_other(3, 4);
        let saved = st.saved("pins-1", t0 + Duration::from_secs(2), 1_000_000);
        let text = saved.encode();
        let back = SavedCounters::decode(&text, "pins-1").expect("decodes");
        assert_eq!(back, saved);

        // A new agent 10 s later on the same pins goes on from there.
        let t1 = Instant::now() + Duration::from_secs(1);
        let mut next = state(10, 300);
        next.restore(&back, t1, 1_010_000);
        assert_eq!(totals(&next, 1, "a b"), Some((100, 7)));
        assert_eq!(totals(&next, 2, "c"), Some((5, 0)));
        assert_eq!(next.other_bytes_total(), (3, 4));
        next.apply(&snap(&[(1, "a b", 1, 1)]), t1, &mut cg);
        assert_eq!(totals(&next, 1, "a b"), Some((101, 8)));
        // Seen 12 s ago at restore: 288 s later it expires, as it would have.
        next.apply(&snap(&[]), t1 + Duration::from_secs(287), &mut cg);
        assert_eq!(totals(&next, 2, "c"), Some((5, 0)));
        next.apply(&snap(&[]), t1 + Duration::from_secs(289), &mut cg);
        assert_eq!(totals(&next, 2, "c"), None);
    }

    #[test]
    fn saved_counters_refuse_other_pins_torn_and_altered_files() {
        let mut st = state(10, 300);
        st.apply(&snap(&[(1, "a", 100, 7)]), Instant::now(), &mut cg);
        let text = st.saved("pins-1", Instant::now(), 5).encode();
        let err = |t: &str, i: &str| SavedCounters::decode(t, i).unwrap_err();
        assert!(err(&text, "pins-2").contains("other pins"));
        assert!(err(&text[..text.len() - 3], "pins-1").contains("checksum"));
        assert!(err(&text.replace("100", "900"), "pins-1").contains("checksum"));
        assert!(err("", "pins-1").contains("no header"));
        assert!(err("netwatch-ebpf-baseline 1 x\n", "pins-1").contains("not a counters file"));
        assert!(err("netwatch-prometheus-counters 1 zz\n{}", "pins-1").contains("checksum field"));
    }

    #[test]
    fn restore_keeps_top_n_and_expires_series_gone_past_the_expiry() {
        let t0 = Instant::now();
        let mut st = state(10, 60);
        st.apply(&snap(&[(1, "old", 1, 1)]), t0, &mut cg);
        let later = t0 + Duration::from_secs(50);
        st.apply(&snap(&[(2, "mid", 2, 2), (3, "new", 3, 3)]), later, &mut cg);
        st.apply(
            &snap(&[(3, "new", 1, 0)]),
            later + Duration::from_secs(1),
            &mut cg,
        );
        let saved = st.saved("p", later + Duration::from_secs(1), 0);
        // Down 10 s: "old" (seen 51 s before the save) is past 60 s; of the
        // other two only the most recently active fits a top-1.
        let mut next = state(1, 60);
        next.restore(&saved, Instant::now(), 10_000);
        assert_eq!(totals(&next, 3, "new"), Some((4, 3)));
        assert_eq!(next.processes().len(), 1);
        assert_eq!(next.series_expired_total, 1);
        assert_eq!(next.series_evicted_total, 1);
    }

    #[test]
    fn rows_without_a_pid_count_as_other() {
        let mut st = state(10, 300);
        let mut s = snap(&[(5, "x", 1, 2)]);
        if let Some(p) = s.processes.as_mut() {
            p.push(ProcessBandwidth::network_only(
                "?".into(),
                None,
                30,
                40,
                0.0,
                0.0,
                0,
            ));
        }
        st.apply(&s, Instant::now(), &mut cg);
        assert_eq!(st.other_bytes_total(), (30, 40));
        assert_eq!(totals(&st, 5, "x"), Some((1, 2)));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut st = state(10, 300);
        st.apply(
            &snap(&[(9, "we\"ird\\na\nme", 1, 1)]),
            Instant::now(),
            &mut |_| "/a\"b".to_string(),
        );
        let p = page(&st, None);
        assert!(
            p.contains(
                "netwatch_process_receive_bytes_total{pid=\"9\",comm=\"we\\\"ird\\\\na\\nme\",cgroup=\"/a\\\"b\"} 1\n"
            ),
            "{p}"
        );
    }

    /// Hostile names (a process named with `"`, `\`, a newline and an
    /// escape, a cgroup with the same) give a page that a strict OpenMetrics
    /// parser reads whole, with the exact names as the label values, and
    /// the other series intact.
    #[test]
    fn hostile_label_values_parse_back_exactly_with_a_real_parser() {
        const COMM: &str = "a\"b\\c\nd\x1b[2J";
        const CGROUP: &str = "/user.slice/x\"}\\\n\x1b]0;y\x07 z=\"1\",";
        let mut st = state(10, 300);
        // With TCP quality and DNS figures: their families parse too.
        let mut s = snap(&[(9, COMM, 111, 222), (10, "curl", 333, 444)]);
        for row in s.processes.iter_mut().flatten() {
            row.tcp_quality = Some(netwatch_common::wire::ProcessTcpQuality {
                retransmits: 3,
                connects: 2,
                connects_refused: 1,
                connect_ms_avg: Some(1.5),
                rtt_us_avg: Some(250.0),
                ..Default::default()
            });
            row.dns = Some(netwatch_common::wire::ProcessDns {
                queries: 2,
                responses: 1,
                latency_ms_avg: Some(3.0),
                ..Default::default()
            });
        }
        st.apply(&s, Instant::now(), &mut |pid| {
            if pid == 9 {
                CGROUP.to_string()
            } else {
                cg(pid)
            }
        });
        let page = page(&st, None);
        // openmetrics-parser 0.5.1 refuses a family with descriptors and no
        // sample (the spec allows it; this page has such families when
        // nothing was seen yet, e.g. no interfaces): parse every family
        // that has a sample, which is every label value on the page.
        let mut families: Vec<String> = Vec::new();
        for line in page.lines().filter(|l| *l != "# EOF") {
            if line.starts_with("# HELP ") || families.is_empty() {
                families.push(String::new());
            }
            let f = families.last_mut().expect("one family");
            f.push_str(line);
            f.push('\n');
        }
        let sampled: String = families
            .iter()
            .filter(|f| f.lines().any(|l| !l.starts_with('#')))
            .map(String::as_str)
            .collect();
        assert!(page.ends_with("# EOF\n"), "{page}");
        assert_eq!(
            sampled.lines().filter(|l| !l.starts_with('#')).count(),
            page.lines().filter(|l| !l.starts_with('#')).count()
        );
        let sampled = format!("{sampled}# EOF\n");
        let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&sampled)
            .unwrap_or_else(|e| panic!("the page does not parse: {e:?}\n{sampled}"));
        let family = &exposition.families["netwatch_process_receive_bytes"];
        let mut got: Vec<(String, String, String, f64)> = family
            .iter_samples()
            .map(|s| {
                let l = s.get_labelset().expect("labels");
                let v = match &s.value {
                    openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
                    other => panic!("not a counter: {other:?}"),
                };
                let get = |n: &str| l.get_label_value(n).unwrap_or("?").to_string();
                (get("pid"), get("comm"), get("cgroup"), v)
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("".into(), "other".into(), "".into(), 0.0),
                ("10".into(), "curl".into(), "/test/10".into(), 333.0),
                ("9".into(), COMM.into(), CGROUP.into(), 111.0),
            ]
        );
        let family = &exposition.families["netwatch_process_tcp_retransmits"];
        let mut comms: Vec<String> = family
            .iter_samples()
            .map(|s| {
                let l = s.get_labelset().expect("labels");
                l.get_label_value("comm").unwrap_or("?").to_string()
            })
            .collect();
        comms.sort();
        assert_eq!(comms, [COMM, "curl"]);
        assert_eq!(
            exposition.families["netwatch_process_tcp_connects"]
                .iter_samples()
                .count(),
            10
        );
    }

    #[test]
    fn interfaces_tcp_states_collector_and_delivery_are_rendered() {
        let mut st = state(10, 300);
        let mut s = snap(&[]);
        s.interfaces = vec![InterfaceMetric {
            name: "lo".into(),
            is_up: true,
            rx_bytes: 11,
            tx_bytes: 12,
            rx_bytes_delta: 0,
            tx_bytes_delta: 0,
            rx_packets: 13,
            tx_packets: 14,
            rx_errors: 15,
            tx_errors: 16,
            rx_drops: 17,
            tx_drops: 18,
            rx_rate: None,
            tx_rate: None,
            rx_history: None,
            tx_history: None,
        }];
        s.connection_count = Some(3);
        s.tcp_time_wait = Some(4);
        s.tcp_close_wait = Some(5);
        s.collector = Some(CollectorInfo {
            source: "ebpf".into(),
            ebpf_tier: Some("tracepoint".into()),
            estimated: false,
            fallback_reason: None,
            lost_records: Some(6),
            connections_truncated: None,
            processes_folded: None,
        });
        st.apply(&s, Instant::now(), &mut cg);
        let p = page(
            &st,
            Some(DeliveryView {
                requests: 9,
                delivered: 7,
                rejected: 1,
                last_success_unix_secs: 1_700_000_000,
                errors: vec![("503".into(), 2), ("transport".into(), 3)],
                spool_depth: 4,
                spool_bytes: 4096,
                spool_evicted: 1,
                spool_corrupt: 2,
                spool_torn: 0,
                spool_write_failed: 5,
                spool_read_errors: 6,
                spool_foreign: 7,
            }),
        );
        for line in [
            "netwatch_interface_receive_bytes_total{interface=\"lo\"} 11\n",
            "netwatch_interface_transmit_bytes_total{interface=\"lo\"} 12\n",
            "netwatch_interface_receive_packets_total{interface=\"lo\"} 13\n",
            "netwatch_interface_transmit_packets_total{interface=\"lo\"} 14\n",
            "netwatch_interface_receive_errors_total{interface=\"lo\"} 15\n",
            "netwatch_interface_transmit_errors_total{interface=\"lo\"} 16\n",
            "netwatch_interface_receive_drops_total{interface=\"lo\"} 17\n",
            "netwatch_interface_transmit_drops_total{interface=\"lo\"} 18\n",
            "netwatch_interface_up{interface=\"lo\"} 1\n",
            "netwatch_tcp_connections{state=\"established\"} 3\n",
            "netwatch_tcp_connections{state=\"time_wait\"} 4\n",
            "netwatch_tcp_connections{state=\"close_wait\"} 5\n",
            "netwatch_agent_collector_info{source=\"ebpf\",tier=\"tracepoint\",estimated=\"false\"} 1\n",
            "netwatch_agent_lost_records_total 6\n",
            "netwatch_agent_delivery_requests_total 9\n",
            "netwatch_agent_delivered_snapshots_total 7\n",
            "netwatch_agent_rejected_snapshots_total 1\n",
            "netwatch_agent_delivery_errors_total{status=\"503\"} 2\n",
            "netwatch_agent_delivery_errors_total{status=\"transport\"} 3\n",
            "netwatch_agent_last_delivery_timestamp_seconds 1700000000\n",
            "netwatch_agent_spool_snapshots 4\n",
            "netwatch_agent_spool_bytes 4096\n",
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"evicted\"} 1\n",
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"corrupt\"} 2\n",
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"write_failed\"} 5\n",
            "netwatch_agent_spool_read_errors_total 6\n",
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"foreign\"} 7\n",
        ] {
            assert!(p.contains(line), "missing {line:?} in\n{p}");
        }
    }

    #[test]
    fn alerts_are_counted_once_by_category_and_severity() {
        use netwatch_common::wire::{Alert, AlertCategory, AlertSeverity};
        let mut st = state(10, 300);
        let scan = Alert {
            severity: AlertSeverity::Critical,
            category: AlertCategory::PortScan,
            message: "port scan from 10.0.0.9".into(),
            detail: "25 ports in 30 s".into(),
            timestamp: Utc::now(),
        };
        let mut s = snap(&[]);
        s.alerts = Some(vec![scan.clone()]);
        // An active alert rides along in consecutive snapshots: one count.
        for _ in 0..3 {
            st.apply(&s, Instant::now(), &mut cg);
        }
        let p = page(&st, None);
        for line in [
            "netwatch_alerts_total{category=\"port_scan\",severity=\"critical\"} 1\n",
            "netwatch_alerts_total{category=\"port_scan\",severity=\"warning\"} 0\n",
            "netwatch_alerts_total{category=\"bandwidth\",severity=\"warning\"} 0\n",
        ] {
            assert!(p.contains(line), "missing {line:?} in\n{p}");
        }
    }

    #[test]
    fn only_get_and_head_of_metrics_and_root_are_served() {
        let st = Arc::new(Mutex::new(state(10, 300)));
        let reg = registry(&st, None);
        let req = |m: &str, path: &str| {
            http::Request::builder()
                .method(m)
                .uri(path)
                .body(())
                .unwrap()
        };
        let r = answer(&req("GET", "/metrics"), &reg);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[http::header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(answer(&req("HEAD", "/metrics"), &reg).status(), 200);
        assert_eq!(answer(&req("GET", "/"), &reg).status(), 200);
        let r = answer(&req("POST", "/metrics"), &reg);
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[http::header::ALLOW], "GET, HEAD");
        assert_eq!(answer(&req("GET", "/metrics/x"), &reg).status(), 404);
        assert_eq!(answer(&req("GET", "/api/v1/ingest"), &reg).status(), 404);
        // No tick loop in this test process: not live.
        let r = answer(&req("GET", "/healthz"), &reg);
        assert_eq!(r.status(), 503);
        assert_eq!(
            crate::supervise::liveness().describe(),
            "not ticking: the tick loop has not started"
        );
        assert_eq!(answer(&req("POST", "/healthz"), &reg).status(), 405);
    }

    #[test]
    fn cgroup_paths_are_read_from_v2_then_v1() {
        assert_eq!(
            parse_cgroup("0::/system.slice/sshd.service\n"),
            "/system.slice/sshd.service"
        );
        assert_eq!(
            parse_cgroup("12:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/x\n"),
            "/x"
        );
        assert_eq!(parse_cgroup("12:cpu,cpuacct:/docker/abc\n"), "/docker/abc");
        assert_eq!(parse_cgroup(""), "");
    }

    proptest::proptest! {
        /// Whatever the rows, the limits and the clock: a series that lives
        /// on never goes down, `other` never goes down, there are at most
        /// top_n series, and every byte fed in is in a series, in `other`,
        /// or in a series that ended (expired or evicted).
        #[test]
        fn counters_are_monotonic_bounded_and_conserve_bytes(
            top in 1usize..5,
            ticks in proptest::collection::vec(
                (0u64..40, proptest::collection::vec((0u32..8, 0u64..1000, 0u64..1000), 0..8)),
                1..30,
            ),
        ) {
            let mut st = state(top, 60);
            let mut now = Instant::now();
            let (mut fed_rx, mut fed_tx) = (0u64, 0u64);
            let (mut gone_rx, mut gone_tx) = (0u64, 0u64);
            for (step, rows) in ticks {
                now += Duration::from_secs(step);
                let mut seen = std::collections::HashSet::new();
                let rows: Vec<(u32, &str, u64, u64)> = rows
                    .into_iter()
                    .filter(|r| seen.insert(r.0))
                    .map(|(pid, rx, tx)| (pid, "p", rx, tx))
                    .collect();
                for r in &rows {
                    fed_rx += r.2;
                    fed_tx += r.3;
                }
                let before = st.clone();
                st.apply(&snap(&rows), now, &mut cg);
                proptest::prop_assert!(st.processes().len() <= top);
                proptest::prop_assert!(st.other_rx_bytes_total >= before.other_rx_bytes_total);
                proptest::prop_assert!(st.other_tx_bytes_total >= before.other_tx_bytes_total);
                for (k, old) in before.processes() {
                    match st.processes().get(k) {
                        Some(new) => {
                            proptest::prop_assert!(new.rx_bytes_total >= old.rx_bytes_total);
                            proptest::prop_assert!(new.tx_bytes_total >= old.tx_bytes_total);
                        }
                        None => {
                            // Ended this tick: whatever it moved this tick
                            // (nothing, or it would not have ended) is in.
                            gone_rx += old.rx_bytes_total;
                            gone_tx += old.tx_bytes_total;
                        }
                    }
                }
                let live_rx: u64 = st.processes().values().map(|s| s.rx_bytes_total).sum();
                let live_tx: u64 = st.processes().values().map(|s| s.tx_bytes_total).sum();
                proptest::prop_assert_eq!(live_rx + gone_rx + st.other_rx_bytes_total, fed_rx);
                proptest::prop_assert_eq!(live_tx + gone_tx + st.other_tx_bytes_total, fed_tx);
            }
        }
    }
}
