//! Host metrics without privileges: interfaces (with rates), TCP state
//! counts, sockets, CPU, memory, swap, load, disk usage and disk I/O, read
//! from `/proc` and `/sys` (macOS: `netstat`). The same collectors fill the
//! host sections of every [`crate::Collector`] snapshot; use [`Host`]
//! when you want only those, with no socket source and no capability.
//!
//! Beside [`Host`], each of netwatch-sdk 0.3.2's one-shot collectors has
//! its equivalent here (Linux): the free functions read once
//! ([`tcp_states`], [`established_connections`], [`connections`],
//! [`system`], [`disk_usage`], [`disk_io_since_boot`], [`interfaces`]);
//! what needs two readings (rates, CPU percentages, disk I/O per interval)
//! is a small tracker ([`InterfaceTracker`], [`SystemTracker`],
//! [`DiskTracker`]) that diffs each call against its previous one, as
//! `sysinfo`'s `System::refresh_*` do: no call sleeps.
//!
//! Nothing here writes, nothing needs root, and nothing panics on what the
//! kernel's files say: a table that cannot be read is a [`HostError`] (or,
//! in the trackers that fill several fields, those fields left `None`).

#![warn(missing_docs)]

use netwatch_common::wire::Snapshot;

use crate::snapshot::HostCollectors;

#[cfg(target_os = "linux")]
pub use linux::*;

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

#[cfg(target_os = "linux")]
mod linux {
    use netwatch_common::wire::{
        ConnectionDetail, DiskIo, DiskUsage, InterfaceMetric, SystemMetric,
    };

    use crate::error::Cause;
    use crate::procinfo;

    /// A kernel table could not be read: which one, from where, and the
    /// operating system's answer as the [`std::error::Error::source`].
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum HostError {
        /// Reading or parsing a `/proc` or `/sys` table (or the
        /// `sock_diag` netlink dump) failed.
        #[error(
            "reading {what} from {from} failed; is /proc (and /sys) of this network namespace \
             mounted and readable?"
        )]
        Read {
            /// What was being collected, e.g. `TCP states`.
            what: &'static str,
            /// Where it is read from, e.g. `/proc/net/dev`.
            from: &'static str,
            /// Why.
            #[source]
            cause: Cause,
        },
    }

    fn read_error(
        what: &'static str,
        from: &'static str,
    ) -> impl FnOnce(anyhow::Error) -> HostError {
        move |e| HostError::Read {
            what,
            from,
            cause: Cause::from_anyhow(e),
        }
    }

    /// TCP sockets of this network namespace counted by state (netwatch-sdk's
    /// `TcpStates`; the snapshot's `connection_count`, `tcp_time_wait` and
    /// `tcp_close_wait`).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct TcpStates {
        /// Sockets in `ESTABLISHED`.
        pub established: u32,
        /// Sockets in `TIME_WAIT`.
        pub time_wait: u32,
        /// Sockets in `CLOSE_WAIT`.
        pub close_wait: u32,
    }

    impl From<procinfo::tcp_states::TcpStates> for TcpStates {
        fn from(t: procinfo::tcp_states::TcpStates) -> Self {
            Self {
                established: t.connection_count,
                time_wait: t.time_wait,
                close_wait: t.close_wait,
            }
        }
    }

    /// Count every TCP socket of this network namespace by state, IPv4 and
    /// IPv6: one `sock_diag` netlink dump per family filtered by the kernel
    /// to the three states (nothing is built per socket), or, when netlink
    /// is refused, `/proc/net/tcp` and `/proc/net/tcp6`. No privilege
    /// needed. netwatch-sdk: `collect_tcp_states()`.
    pub fn tcp_states() -> Result<TcpStates, HostError> {
        procinfo::tcp_states::TcpStates::read()
            .map(TcpStates::from)
            .map_err(read_error("TCP states", "sock_diag and /proc/net/tcp{,6}"))
    }

    /// As [`tcp_states`], counting only the sockets for which
    /// `keep(local port, remote port)` is true: the states of one
    /// service's port, say (`|local, remote| local == 443`).
    pub fn tcp_states_where(keep: impl Fn(u16, u16) -> bool) -> Result<TcpStates, HostError> {
        use procinfo::tcp_states::TcpStates as Counts;
        match Counts::read_netlink(&keep) {
            Ok(t) => Ok(t.into()),
            Err(e) => {
                log::debug!("sock_diag TCP state dump failed ({e}); parsing /proc/net/tcp");
                tcp_states_from_proc(keep)
            }
        }
    }

    /// [`tcp_states_where`] from `/proc/net/tcp` and `/proc/net/tcp6`.
    fn tcp_states_from_proc(keep: impl Fn(u16, u16) -> bool) -> Result<TcpStates, HostError> {
        let entries = procinfo::tcp_states::read_entries()
            .map_err(read_error("TCP states", "/proc/net/tcp{,6}"))?;
        let kept = entries
            .iter()
            .filter(|e| keep(e.local_address.port(), e.remote_address.port()));
        Ok(procinfo::tcp_states::TcpStates::count(kept).into())
    }

    /// TCP sockets in `ESTABLISHED` (IPv4 and IPv6), as [`tcp_states`]
    /// counts them. netwatch-sdk: `count_established_connections()`, which
    /// returns 0 where this returns the error.
    pub fn established_connections() -> Result<u32, HostError> {
        tcp_states().map(|t| t.established)
    }

    /// Every TCP and UDP socket of this network namespace (`/proc/net/tcp`,
    /// `tcp6`, `udp`, `udp6`) with its state and, where this process may
    /// read the holder's `/proc/<pid>/fd`, its owner (the lowest pid holding
    /// it, and that process's `comm`). Unprivileged, a process sees the
    /// owners of its own user's sockets only; the others have `pid: None`.
    ///
    /// Rows are the wire format's [`ConnectionDetail`]: `protocol` `TCP` or
    /// `UDP`, addresses as `ip:port` (IPv6 in brackets; an IPv4-mapped IPv6
    /// address shown as IPv4), `remote_addr` `*:*` for an unconnected
    /// socket, `state` normalized (`ESTABLISHED`, `LISTEN`, `TIME_WAIT`,
    /// `UNCONN`, ...). No byte counts (`rx_bytes`/`tx_bytes` are `None`):
    /// those need a [`crate::Collector`]. The process name is the kernel's
    /// `comm`, which anyone may set: escape it ([`crate::text::visible`])
    /// before showing it. netwatch-sdk: `collect_connections()` (which runs
    /// `ss` or `lsof`).
    pub fn connections() -> Result<Vec<ConnectionDetail>, HostError> {
        let table = procinfo::sockets::SocketTable::scan().map_err(|e| HostError::Read {
            what: "sockets",
            from: "/proc/net/{tcp,tcp6,udp,udp6} and /proc/<pid>/fd",
            cause: Cause::new(e),
        })?;
        Ok(table
            .entries()
            .iter()
            .map(|e| ConnectionDetail {
                protocol: e.protocol.as_wire().to_string(),
                local_addr: e.local.to_string(),
                remote_addr: e
                    .remote
                    .map_or_else(|| "*:*".to_string(), |a| a.to_string()),
                state: e.state.to_string(),
                pid: e.owner.as_ref().map(|o| o.pid),
                process_name: e.owner.as_ref().map(|o| o.comm.clone()),
                kernel_rtt_us: None,
                rx_bytes: None,
                tx_bytes: None,
                tcp_quality: None,
            })
            .collect())
    }

    /// Interface counters and rates between calls (netwatch-sdk's
    /// `InterfaceRateTracker` with `traffic::sample`).
    ///
    /// Every interface of this network namespace is reported, loopback
    /// included. An interface's first sample has deltas 0, rates
    /// `Some(0.0)` and no history; from the next call on, deltas and rates
    /// cover the time since the previous call and each call adds one rate
    /// sample to the history (60 kept). Counters that go backwards (a
    /// driver reset) never underflow.
    #[derive(Debug, Default)]
    pub struct InterfaceTracker(procinfo::interfaces::InterfaceTracker);

    impl InterfaceTracker {
        /// A tracker with no previous sample.
        pub fn new() -> Self {
            Self::default()
        }

        /// Read `/proc/net/dev` and the link states in `/sys/class/net`:
        /// one metric per interface, sorted by name.
        pub fn sample(&mut self) -> Result<Vec<InterfaceMetric>, HostError> {
            self.0
                .sample()
                .map_err(read_error("interfaces", "/proc/net/dev"))
        }
    }

    /// Each interface's cumulative counters, read once (`rx_bytes`,
    /// `tx_bytes`, packets, errors, drops, `is_up`); deltas are 0 and rates
    /// `Some(0.0)`: for rates keep an [`InterfaceTracker`].
    pub fn interfaces() -> Result<Vec<InterfaceMetric>, HostError> {
        InterfaceTracker::new().sample()
    }

    /// CPU, memory, swap and load (netwatch-sdk's `measure_cpu_usage`,
    /// `measure_cpu_per_core`, `read_memory`, `read_swap`, `read_load_avg`).
    ///
    /// The CPU figures are the difference between two calls' `/proc/stat`:
    /// the first [`SystemTracker::sample`] has `cpu_usage_pct` and
    /// `cpu_per_core` `None`, each later one covers the time since the
    /// previous (the SDK sleeps 200 ms inside its call instead). A file
    /// that cannot be read leaves its fields `None`.
    #[derive(Debug, Default)]
    pub struct SystemTracker(procinfo::system::SystemTracker);

    impl SystemTracker {
        /// A tracker with no previous CPU reading.
        pub fn new() -> Self {
            Self::default()
        }

        /// One reading: memory (`MemAvailable` based), swap and load as of
        /// now, CPU since the previous call (percent, rounded to 0.1).
        pub fn sample(&mut self) -> SystemMetric {
            self.0.sample()
        }
    }

    /// Memory, swap and load read once; the CPU fields are `None` (they
    /// need two readings: [`SystemTracker`]).
    pub fn system() -> SystemMetric {
        SystemTracker::new().sample()
    }

    /// Disk usage of device-backed mounts and disk I/O between calls.
    ///
    /// I/O is **per interval**: the bytes read and written by whole disks
    /// since the previous call (`None` on the first call), where
    /// netwatch-sdk's `collect_disk_io` reports totals since boot (that is
    /// [`disk_io_since_boot`]). Each `statvfs` runs on a worker thread and a
    /// call waits at most 200 ms for them in all: a hung NFS or FUSE mount
    /// loses its row, it never blocks the call.
    #[derive(Debug, Default)]
    pub struct DiskTracker(procinfo::disk::DiskTracker);

    impl DiskTracker {
        /// A tracker with no previous I/O reading.
        pub fn new() -> Self {
            Self::default()
        }

        /// Usage of every device-backed mount (each device once, virtual
        /// filesystems left out) and the I/O since the previous call.
        pub fn sample(&mut self) -> (Vec<DiskUsage>, Option<DiskIo>) {
            self.0.sample()
        }
    }

    /// Usage of every device-backed mount, read once (netwatch-sdk:
    /// `collect_disk_usage()`); see [`DiskTracker`] for the time budget.
    pub fn disk_usage() -> Vec<DiskUsage> {
        DiskTracker::new().sample().0
    }

    /// Bytes read and written by the whole physical disks since boot
    /// (`/proc/diskstats`, 512-byte sectors), partitions and virtual
    /// devices (`loop`, `dm-`, `md`, `zram`) not counted on top of their
    /// disk. netwatch-sdk: `collect_disk_io()`, which sums partitions too.
    pub fn disk_io_since_boot() -> Result<DiskIo, HostError> {
        procinfo::disk::io_since_boot().map_err(|e| HostError::Read {
            what: "disk I/O",
            from: "/proc/diskstats and /sys/block",
            cause: Cause::new(e),
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::net::{TcpListener, TcpStream};

        /// The `/proc` fallback counts what the netlink dump counts: the
        /// test's own two connections (both ends) and listener.
        #[test]
        fn the_proc_fallback_counts_as_the_netlink_dump() -> std::io::Result<()> {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            let mut held = Vec::new();
            for _ in 0..2 {
                held.push(TcpStream::connect(("127.0.0.1", port))?);
                held.push(listener.accept()?.0);
            }
            let mine = |l: u16, r: u16| l == port || r == port;
            let want = TcpStates {
                established: 4,
                time_wait: 0,
                close_wait: 0,
            };
            assert_eq!(tcp_states_from_proc(mine).ok(), Some(want));
            assert_eq!(tcp_states_where(mine).ok(), Some(want));
            Ok(())
        }
    }
}
