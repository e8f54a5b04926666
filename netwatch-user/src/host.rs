//! Host metrics without privileges: interfaces (with rates), TCP state
//! counts, CPU, memory, swap, load, disk usage and disk I/O, read from
//! `/proc` and `/sys` (macOS: `netstat`). The same collectors fill the
//! host sections of every [`crate::Collector`] snapshot; use [`Host`]
//! when you want only those, with no socket source and no capability.
//! Nothing here writes, and nothing needs root.

use netwatch_common::wire::Snapshot;

use crate::snapshot::HostCollectors;

/// The host collectors with their previous samples: rates and CPU
/// percentages are differences between two calls of [`Host::snapshot`],
/// as `sysinfo`'s `System::refresh_*` (no sleeping inside a call).
pub struct Host {
    collectors: HostCollectors,
}

impl Default for Host {
    fn default() -> Self {
        Self::new()
    }
}

impl Host {
    /// Take the first sample (the baseline of the first rates).
    pub fn new() -> Self {
        let mut collectors = HostCollectors::new();
        collectors.fill(&mut Snapshot::empty(chrono::Utc::now()));
        Self { collectors }
    }

    /// A snapshot with the host sections only: `interfaces`, `system`,
    /// `disk_usage`, `disk_io`, `connection_count`, `tcp_time_wait`,
    /// `tcp_close_wait`. The rates and CPU percentages cover the time
    /// since the previous call (or [`Host::new`]); `processes` and
    /// `connections` stay `None` (they need a [`crate::Collector`]).
    /// A collector that fails leaves its section empty and logs why.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut snap = Snapshot::empty(chrono::Utc::now());
        self.collectors.fill(&mut snap);
        snap
    }
}
