//! Host-wide sections of a snapshot: interfaces, TCP state counts, system,
//! disks, and process metadata for the process rows. One `HostCollectors`
//! keeps every collector's previous sample, so each tick diffs against the
//! last (no sleeping inside a snapshot). A failing collector leaves its
//! section empty and is logged; it never stops the tick. DNS analytics are
//! built here ([`dns`]) from the DNS events the source yields, and the
//! per-process quality figures ([`quality`]) from the source's per-socket
//! counters and events.

pub mod dns;
pub mod quality;

use log::warn;
use netwatch_common::wire::{CollectorInfo, ProcessBandwidth, Snapshot};

use crate::source::{DnsEvent, SocketSource};

#[cfg(target_os = "linux")]
use crate::procinfo::{
    disk::DiskTracker, interfaces::InterfaceTracker, process::ProcessMetaTracker,
    system::SystemTracker, tcp_states::TcpStates,
};

/// How a snapshot describes its source (`Snapshot::collector`): its name,
/// its eBPF tier, and why the sources tried before it were passed over.
/// The per-tick figures (lost records, truncation) start empty.
pub fn collector_info(source: &dyn SocketSource, fallback_reason: Option<String>) -> CollectorInfo {
    CollectorInfo {
        source: source.name().to_string(),
        ebpf_tier: source.detail(),
        estimated: false,
        fallback_reason,
        lost_records: None,
        connections_truncated: None,
        processes_folded: None,
    }
}

/// Every host collector with its previous sample.
pub struct HostCollectors {
    #[cfg(target_os = "linux")]
    interfaces: InterfaceTracker,
    #[cfg(target_os = "linux")]
    system: SystemTracker,
    #[cfg(target_os = "linux")]
    disk: DiskTracker,
    #[cfg(target_os = "linux")]
    meta: ProcessMetaTracker,
    #[cfg(target_os = "macos")]
    tools: crate::source::macos::MacTools,
    dns: dns::DnsTracker,
    /// What failed in the latest [`HostCollectors::fill`] (each logged).
    failures: Vec<crate::Problem>,
}

impl Default for HostCollectors {
    fn default() -> Self {
        Self::new()
    }
}

impl HostCollectors {
    pub fn new() -> Self {
        Self {
            #[cfg(target_os = "linux")]
            interfaces: InterfaceTracker::new(),
            #[cfg(target_os = "linux")]
            system: SystemTracker::new(),
            #[cfg(target_os = "linux")]
            disk: DiskTracker::new(),
            #[cfg(target_os = "linux")]
            meta: ProcessMetaTracker::new(),
            #[cfg(target_os = "macos")]
            tools: crate::source::macos::MacTools::default(),
            dns: dns::DnsTracker::default(),
            failures: Vec::new(),
        }
    }

    /// Fill the host-wide sections of `snap`; the TCP state counts only if
    /// the source has not (`SocketSource::tcp_states`).
    #[cfg(target_os = "linux")]
    pub fn fill(&mut self, snap: &mut Snapshot) {
        self.failures.clear();
        match self.interfaces.sample() {
            Ok(i) => snap.interfaces = i,
            Err(e) => self.failed("interfaces", &e),
        }
        if snap.connection_count.is_none() {
            self.fill_tcp_states(snap);
        }
        snap.system = Some(self.system.sample());
        let (usage, io) = self.disk.sample();
        snap.disk_usage = Some(usage);
        snap.disk_io = io;
    }

    /// TCP state counts from the `sock_diag` dump (or `/proc`).
    #[cfg(target_os = "linux")]
    fn fill_tcp_states(&mut self, snap: &mut Snapshot) {
        match TcpStates::read() {
            Ok(t) => {
                snap.connection_count = Some(t.connection_count);
                snap.tcp_time_wait = Some(t.time_wait);
                snap.tcp_close_wait = Some(t.close_wait);
            }
            Err(e) => self.failed("TCP states", &e),
        }
    }

    /// macOS: cumulative interface counters from `netstat -ibn` and TCP
    /// state counts from `netstat -an -p tcp`.
    #[cfg(target_os = "macos")]
    pub fn fill(&mut self, snap: &mut Snapshot) {
        self.failures.clear();
        match self.tools.interfaces() {
            Ok(n) => snap.interfaces = n.interfaces.into_iter().map(netstat_row).collect(),
            Err(e) => self.failed("interfaces", &e.into()),
        }
        match self.tools.tcp_states() {
            Ok(t) => {
                snap.connection_count = Some(t.established);
                snap.tcp_time_wait = Some(t.time_wait);
                snap.tcp_close_wait = Some(t.close_wait);
            }
            Err(e) => self.failed("TCP states", &e.into()),
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    pub fn fill(&mut self, _snap: &mut Snapshot) {}

    /// Fill `snap.dns_analytics` from the source's DNS events of the
    /// interval, as of the tick's monotonic time `now`
    /// ([`crate::clock::Clock::mono`]); `None` (a source that sees no
    /// packets) leaves it empty.
    /// Returns each client endpoint's lookups of the interval (for the
    /// per-process figures), empty when there are no events.
    pub fn fill_dns(
        &mut self,
        snap: &mut Snapshot,
        events: Option<&[DnsEvent]>,
        now: std::time::Duration,
    ) -> std::collections::HashMap<dns::ClientKey, dns::ClientDns> {
        let Some(events) = events else {
            return Default::default();
        };
        for e in events {
            self.dns.observe(e);
        }
        snap.dns_analytics = Some(self.dns.take(now));
        self.dns.take_clients()
    }

    /// Fill process metadata (ppid, user, cpu, memory, state, start, exe).
    pub fn fill_processes(&mut self, rows: &mut [ProcessBandwidth]) {
        #[cfg(target_os = "linux")]
        self.meta.fill(rows);
        #[cfg(not(target_os = "linux"))]
        let _ = rows;
    }

    fn failed(&mut self, what: &'static str, e: &anyhow::Error) {
        warn!("{what} collector: {e:#}");
        self.failures.push(crate::Problem {
            part: what,
            error: format!("{e:#}"),
        });
    }

    /// What failed in the latest [`HostCollectors::fill`] (each was
    /// logged too); empty when everything was read.
    pub fn failures(&self) -> &[crate::Problem] {
        &self.failures
    }
}

/// A `netstat -ibn` row as the wire's interface: cumulative counters only
/// (deltas 0, rates `None`: netstat gives one reading, not two).
#[cfg(target_os = "macos")]
fn netstat_row(i: crate::net::InterfaceCounters) -> netwatch_common::wire::InterfaceMetric {
    netwatch_common::wire::InterfaceMetric {
        name: i.name,
        is_up: i.is_up,
        rx_bytes: i.rx_bytes,
        tx_bytes: i.tx_bytes,
        rx_bytes_delta: 0,
        tx_bytes_delta: 0,
        rx_packets: i.rx_packets,
        tx_packets: i.tx_packets,
        rx_errors: i.rx_errors,
        tx_errors: i.tx_errors,
        rx_drops: i.rx_drops,
        tx_drops: i.tx_drops,
        rx_rate: None,
        tx_rate: None,
        rx_history: None,
        tx_history: None,
    }
}
