//! Host-wide sections of a snapshot: interfaces, TCP state counts, system,
//! disks, and process metadata for the process rows. One `HostCollectors`
//! keeps every collector's previous sample, so each tick diffs against the
//! last (no sleeping inside a snapshot). A failing collector leaves its
//! section empty and is logged; it never stops the tick.

use std::path::{Path, PathBuf};

use log::warn;
use netwatch_common::wire::{HostInfo, ProcessBandwidth, Snapshot};

#[cfg(target_os = "linux")]
use crate::procinfo::{
    disk::DiskTracker, interfaces::InterfaceTracker, process::ProcessMetaTracker,
    system::SystemTracker, tcp_states::TcpStates,
};

/// Every host collector with its previous sample.
pub struct HostCollectors {
    host_id_file: PathBuf,
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
    /// Collectors that failed on the last tick.
    failures: u32,
}

impl HostCollectors {
    pub fn new(host_id_file: &Path) -> Self {
        Self {
            host_id_file: host_id_file.to_path_buf(),
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
            failures: 0,
        }
    }

    /// Static host metadata for the ingest envelope.
    pub fn host_info(&self) -> anyhow::Result<HostInfo> {
        #[cfg(target_os = "linux")]
        return crate::procinfo::host::host_info(&self.host_id_file);
        #[cfg(not(target_os = "linux"))]
        anyhow::bail!(
            "host info for {} is not implemented on this OS",
            self.host_id_file.display()
        )
    }

    /// Collectors that failed on the last tick (0: all good).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Fill the host-wide sections of `snap`.
    #[cfg(target_os = "linux")]
    pub fn fill(&mut self, snap: &mut Snapshot) {
        self.failures = 0;
        match self.interfaces.sample() {
            Ok(i) => snap.interfaces = i,
            Err(e) => self.failed("interfaces", &e),
        }
        match TcpStates::read() {
            Ok(t) => {
                snap.connection_count = Some(t.connection_count);
                snap.tcp_time_wait = Some(t.time_wait);
                snap.tcp_close_wait = Some(t.close_wait);
            }
            Err(e) => self.failed("TCP states", &e),
        }
        snap.system = Some(self.system.sample());
        let (usage, io) = self.disk.sample();
        snap.disk_usage = Some(usage);
        snap.disk_io = io;
    }

    /// macOS: cumulative interface counters from `netstat -ibn` and TCP
    /// state counts from `netstat -an -p tcp`.
    #[cfg(target_os = "macos")]
    pub fn fill(&mut self, snap: &mut Snapshot) {
        self.failures = 0;
        match self.tools.interfaces() {
            Ok(n) => snap.interfaces = n.interfaces,
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
    pub fn fill(&mut self, _snap: &mut Snapshot) {
        self.failures = 0;
    }

    /// Fill process metadata (ppid, user, cpu, memory, state, start, exe).
    pub fn fill_processes(&mut self, rows: &mut [ProcessBandwidth]) {
        #[cfg(target_os = "linux")]
        self.meta.fill(rows);
        #[cfg(not(target_os = "linux"))]
        let _ = rows;
    }

    fn failed(&mut self, what: &str, e: &anyhow::Error) {
        self.failures += 1;
        warn!("{what} collector: {e:#}");
    }
}
