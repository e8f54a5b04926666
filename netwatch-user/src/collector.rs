//! The library's front door: a [`Collector`] is one socket source (eBPF,
//! `ss`, libpcap, `/proc`, or the macOS tools), the host collectors, and
//! the optional alert detectors, DNS capture and health probes, built by a
//! [`CollectorBuilder`] and read one interval at a time. It is what
//! `netwatch-agent` runs on every tick, without the agent's sinks,
//! configuration file, privilege drop or live view. It never writes
//! anything but the source's own state (with [`CollectorBuilder::pin`],
//! the pinned maps and the baseline file), never prints, and never exits
//! the process.

#[cfg(feature = "ebpf")]
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netwatch_common::wire::{CollectorInfo, Snapshot};

use crate::continuity::Continuity;
use crate::engine::Engine;
use crate::error::{Cause, Error};
use crate::snapshot::HostCollectors;
use crate::source::select::{self, Failed, SourceOptions};

pub use crate::alerts::AlertConfig;
pub use crate::health::HealthConfig;
#[cfg(all(target_os = "linux", feature = "ebpf"))]
pub use crate::source::ebpf::pin::{UnpinError, Unpinned};
pub use crate::source::select::Mode;

/// Connection rows per snapshot by default. netwatch-sdk 0.3.2 leaves the
/// bound to its caller (`top_connections(conns, max)`); 1000 rows keep a
/// snapshot near 200 KB of JSON.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Process rows per snapshot by default (the busiest this interval; the
/// others are summed into one row). A row with every metadata field is
/// about 360 bytes of JSON (measured by `tests/process_rows.rs`, an exe
/// path of 70 characters), so 1000 rows are 0.36 MB, with 1000 connection
/// rows (about 190 bytes each) 0.55 MB: a fork flood of any size leaves a
/// snapshot well under the ingest's 5 MB batch limit. Rows of hostile
/// names stay under 2 KB each (`cmd` is cut at
/// 256 characters): 2 MB for 1000.
pub const DEFAULT_MAX_PROCESSES: usize = 1000;

/// Settings of a [`Collector`]; every one has a default, so
/// `Collector::builder().build()` starts the best source this host allows.
#[derive(Debug, Clone)]
pub struct CollectorBuilder {
    mode: Mode,
    max_connections: usize,
    max_processes: usize,
    max_sockets: Option<u32>,
    #[cfg(feature = "ebpf")]
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pin: Option<(PathBuf, PathBuf)>,
    alerts: Option<AlertConfig>,
    health: Option<HealthConfig>,
    #[cfg(feature = "pcap")]
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    dns_capture: bool,
    #[cfg(feature = "pcap")]
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    interface: Option<String>,
    #[cfg(all(target_os = "linux", feature = "ebpf"))]
    ebpf_tier: crate::source::ebpf::TierChoice,
    #[cfg(feature = "ebpf")]
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    ringbuf_bytes: Option<u32>,
}

impl Default for CollectorBuilder {
    fn default() -> Self {
        Self {
            mode: Mode::Auto,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_processes: DEFAULT_MAX_PROCESSES,
            max_sockets: None,
            #[cfg(feature = "ebpf")]
            pin: None,
            alerts: None,
            health: None,
            #[cfg(feature = "pcap")]
            dns_capture: true,
            #[cfg(feature = "pcap")]
            interface: None,
            #[cfg(all(target_os = "linux", feature = "ebpf"))]
            ebpf_tier: Default::default(),
            #[cfg(feature = "ebpf")]
            ringbuf_bytes: None,
        }
    }
}

impl CollectorBuilder {
    /// Which source fills the process rows; [`Mode::Auto`] (the default)
    /// tries eBPF, then `ss`, then libpcap, those this build holds (their
    /// Cargo features; `/proc` estimates in a build with none of them),
    /// and [`Collector::info`] says why each was passed over. A mode whose
    /// feature is off is refused by [`CollectorBuilder::build`] as
    /// [`Error::Unsupported`] naming the feature.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// At most `max` connection rows per snapshot (the busiest of the
    /// interval); per-process totals still count every socket.
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self
    }

    /// At most `max` process rows per snapshot; the rest are summed into
    /// one row without a pid, so the totals stay exact.
    pub fn max_processes(mut self, max: usize) -> Self {
        self.max_processes = max;
        self
    }

    /// Capacity of the per-socket table (the eBPF LRU map, the `ss`
    /// source's bound); default 65536.
    pub fn max_sockets(mut self, max: u32) -> Self {
        self.max_sockets = Some(max);
        self
    }

    /// eBPF only: pin the programs and maps under `dir` (on a bpffs, e.g.
    /// `/sys/fs/bpf/myapp`) and keep the delivered baseline in
    /// `state_file`, so a restarted program continues counting where the
    /// last one stopped. Without it everything is removed from the kernel
    /// when the collector is dropped. Feature `ebpf` (ignored off Linux).
    #[cfg(feature = "ebpf")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ebpf")))]
    pub fn pin(mut self, dir: impl Into<PathBuf>, state_file: impl Into<PathBuf>) -> Self {
        self.pin = Some((dir.into(), state_file.into()));
        self
    }

    /// Run the alert detectors (port scans, beacons, DNS tunnels,
    /// bandwidth) with these thresholds; fills `Snapshot::alerts`.
    pub fn alerts(mut self, config: AlertConfig) -> Self {
        self.alerts = Some(config);
        self
    }

    /// Probe the gateway and the DNS server on a thread of their own;
    /// fills `Snapshot::health`. Needs `CAP_NET_RAW` for ICMP.
    pub fn health(mut self, config: HealthConfig) -> Self {
        self.health = Some(config);
        self
    }

    /// Beside a source that sees no packets (eBPF, `ss`), capture DNS
    /// (libpcap, `port 53`) for `dns_analytics` and the per-process DNS
    /// figures (default on; needs `CAP_NET_RAW`, else it is left off with
    /// a logged warning). Feature `pcap` (without it there is no DNS
    /// capture; ignored off Linux).
    #[cfg(feature = "pcap")]
    #[cfg_attr(docsrs, doc(cfg(feature = "pcap")))]
    pub fn dns_capture(mut self, on: bool) -> Self {
        self.dns_capture = on;
        self
    }

    /// libpcap only: the interface to capture on (default: all). Feature
    /// `pcap` (ignored off Linux).
    #[cfg(feature = "pcap")]
    #[cfg_attr(docsrs, doc(cfg(feature = "pcap")))]
    pub fn interface(mut self, name: impl Into<String>) -> Self {
        self.interface = Some(name.into());
        self
    }

    /// eBPF only: which hook tier to load (default: the best the kernel
    /// allows: fentry, else kprobe, else tracepoint). Linux, feature `ebpf`.
    #[cfg(all(target_os = "linux", feature = "ebpf"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "ebpf")))]
    pub fn ebpf_tier(mut self, tier: crate::source::ebpf::TierChoice) -> Self {
        self.ebpf_tier = tier;
        self
    }

    /// eBPF only: the size in bytes of the ring that carries closed
    /// sockets' final counts (a power of two, a multiple of the page size;
    /// default 1 MiB). Feature `ebpf` (ignored off Linux).
    #[cfg(feature = "ebpf")]
    #[cfg_attr(docsrs, doc(cfg(feature = "ebpf")))]
    pub fn ringbuf_bytes(mut self, bytes: u32) -> Self {
        self.ringbuf_bytes = Some(bytes);
        self
    }

    /// Open the source, attach what it needs, and take the first reading,
    /// so the first [`Collector::snapshot`] covers the time since now.
    pub fn build(self) -> Result<Collector, Error> {
        // The same refusals as the agent's, before anything is loaded or
        // removed: pins go only where netwatch's own pins may be.
        #[cfg(all(target_os = "linux", feature = "ebpf"))]
        if let Some((dir, state_file)) = &self.pin {
            use crate::source::ebpf::pin;
            pin::check_dir(dir).map_err(|e| Error::Refused {
                what: "pin directory",
                cause: Cause::new(e),
            })?;
            pin::ensure_state_dir(state_file).map_err(|e| Error::Refused {
                what: "pin baseline directory",
                cause: Cause::new(e),
            })?;
        }
        let opts = self.source_options();
        let selected = select::select_each(self.mode, &opts).map_err(|f| self.error(f))?;
        // Beside a source that sees no packets: the DNS-only capture.
        #[cfg(all(target_os = "linux", feature = "pcap"))]
        let dns = {
            use crate::source::dns_capture::{self, NotStarted};
            match dns_capture::beside(selected.source.as_ref(), self.dns_capture) {
                Ok(c) => {
                    log::info!(
                        "DNS capture on `{}` (filter `{}`) beside the {} source",
                        c.device(),
                        dns_capture::FILTER,
                        selected.source.name()
                    );
                    Some(c)
                }
                Err(NotStarted::SourceSeesPackets(_)) => None,
                Err(e @ NotStarted::Disabled) => {
                    log::info!("{e}");
                    None
                }
                Err(e) => {
                    log::warn!("{}", crate::text::visible(&e.to_string(), 1024));
                    None
                }
            }
        };
        let info = crate::snapshot::collector_info(
            selected.source.as_ref(),
            selected.fallback_reason.clone(),
        );
        let mut engine = Engine::new(
            selected.source,
            info.clone(),
            HostCollectors::new(),
            selected.started_at,
        )
        .with_max_connections(self.max_connections)
        .with_max_processes(self.max_processes);
        #[cfg(all(target_os = "linux", feature = "pcap"))]
        if let Some(c) = dns {
            engine = engine.with_dns_feed(Box::new(c));
        }
        if let Some(a) = self.alerts {
            engine = engine.with_alerts(crate::alerts::Detectors::new(a));
        }
        if let Some(h) = self.health {
            let prober = crate::health::Prober::start(h).map_err(|e| Error::Start {
                what: "starting the health probe thread",
                cause: Cause::new(e),
            })?;
            engine = engine.with_health(prober);
        }
        engine.prime();
        Ok(Collector {
            engine,
            info,
            last: Instant::now(),
        })
    }

    fn source_options(&self) -> SourceOptions {
        #[cfg_attr(
            not(all(target_os = "linux", any(feature = "ebpf", feature = "pcap"))),
            allow(unused_mut)
        )]
        let mut opts = SourceOptions {
            max_sockets: self
                .max_sockets
                .unwrap_or(crate::source::DEFAULT_MAX_SOCKETS),
            ..Default::default()
        };
        #[cfg(all(target_os = "linux", feature = "pcap"))]
        {
            opts.interface = self.interface.clone();
        }
        #[cfg(all(target_os = "linux", feature = "ebpf"))]
        {
            if let Some(max) = self.max_sockets {
                opts.ebpf.max_sockets = max;
            }
            if let Some(bytes) = self.ringbuf_bytes {
                opts.ebpf.ringbuf_bytes = bytes;
            }
            opts.ebpf.tier = self.ebpf_tier;
            opts.ebpf.pin = self
                .pin
                .clone()
                .map(|(dir, state_file)| crate::source::ebpf::pin::PinOptions { dir, state_file });
        }
        opts
    }

    /// The typed error for the sources that did not open.
    fn error(&self, mut failed: Vec<Failed>) -> Error {
        if self.mode == Mode::Auto || failed.len() != 1 {
            return Error::NoSource {
                tried: failed
                    .into_iter()
                    .map(|f| (select::mode_name(f.mode), format!("{:#}", f.error)))
                    .collect(),
            };
        }
        let Failed { mode, error } = failed.remove(0);
        let mode = select::mode_name(mode);
        #[cfg(target_os = "linux")]
        {
            use crate::privilege::PrivilegeError;
            let denied = match error.downcast_ref::<PrivilegeError>() {
                Some(PrivilegeError::Missing {
                    needed, missing, ..
                }) => Some((needed.clone(), missing.clone())),
                Some(PrivilegeError::PerfParanoid { level }) => Some((
                    format!(
                        "CAP_SYS_ADMIN at kernel.perf_event_paranoid={level} \
                         (CAP_PERFMON suffices at 2)"
                    ),
                    "CAP_SYS_ADMIN".into(),
                )),
                _ => None,
            };
            if let Some((needs, missing)) = denied {
                return Error::PermissionDenied {
                    mode,
                    needs,
                    missing,
                    cause: Cause::from_anyhow(error),
                };
            }
        }
        Error::Unsupported {
            mode,
            cause: Cause::from_anyhow(error),
        }
    }
}

/// Exact per-process network bandwidth, one interval at a time.
///
/// Build one with [`Collector::builder`]; each [`Collector::snapshot`]
/// returns a [`Snapshot`] (the NetWatch Cloud wire format) covering the
/// time since the previous call. Dropping it detaches everything it
/// attached, unless it was built with `CollectorBuilder::pin` (feature `ebpf`).
pub struct Collector {
    engine: Engine,
    info: CollectorInfo,
    last: Instant,
}

impl Collector {
    /// A collector around an engine built by hand (the tests' fake
    /// sources).
    #[cfg(test)]
    pub(crate) fn from_engine(engine: Engine, info: CollectorInfo) -> Self {
        Self {
            engine,
            info,
            last: Instant::now(),
        }
    }

    /// Settings, each with a default.
    pub fn builder() -> CollectorBuilder {
        CollectorBuilder::default()
    }

    /// Which source runs (and its eBPF tier), and why the ones before it
    /// in [`Mode::Auto`]'s order were passed over.
    pub fn info(&self) -> &CollectorInfo {
        &self.info
    }

    /// One interval: everything since the previous call (or since
    /// [`CollectorBuilder::build`]). A host collector that fails leaves
    /// its section empty (`None` or empty), logged through the `log`
    /// crate; it never fails the snapshot. With `CollectorBuilder::pin` (feature `ebpf`)
    /// the saved baseline moves past this snapshot: a restarted program
    /// continues after it (see [`Collector::collect`] to move it only
    /// once the snapshot is stored).
    pub fn snapshot(&mut self) -> Snapshot {
        let snap = self.collect();
        self.kept();
        snap
    }

    /// One interval, as [`Collector::snapshot`], but with
    /// `CollectorBuilder::pin` (feature `ebpf`) the saved baseline stays before it until
    /// [`Collector::kept`] is called: a program that stores or sends
    /// snapshots calls `kept` once this one is safe, so a restart after a
    /// lost snapshot counts its bytes again instead of losing them.
    pub fn collect(&mut self) -> Snapshot {
        let snap = self.engine.snapshot();
        self.last = Instant::now();
        snap
    }

    /// The latest [`Collector::collect`]ed snapshot is stored: the saved
    /// baseline (with `CollectorBuilder::pin`, feature `ebpf`) moves past it. Without
    /// pins there is nothing to move and this does nothing.
    pub fn kept(&mut self) {
        self.engine.kept();
    }

    /// Before a last snapshot: the source reads what it reads only when
    /// stopping (the final counts of sockets that closed since the last
    /// read), so the next snapshot holds everything moved until now.
    /// [`Collector::finish`] does this and takes that snapshot.
    pub fn settle(&mut self) {
        self.engine.settle();
    }

    /// The last snapshot: the source settles first (the final counts of
    /// sockets that closed are read), so nothing moved since the previous
    /// snapshot is lost; then the collector is dropped.
    pub fn finish(mut self) -> Snapshot {
        self.settle();
        self.snapshot()
    }

    /// What failed while taking the latest snapshot: the source's read
    /// (its rows are then missing) or a host collector (its section is
    /// empty). Each is also logged through the `log` crate. Empty when
    /// everything was read.
    pub fn problems(&self) -> &[Problem] {
        self.engine.problems()
    }

    /// With `CollectorBuilder::pin` (feature `ebpf`): what the counts continue from
    /// across restarts (the pinned maps' tag and the baseline file), for a
    /// program that keeps state of its own beside the baseline. `None`
    /// for a source whose counts start at zero with each process.
    pub fn continuity(&self) -> Option<Continuity> {
        self.engine.continuity()
    }

    /// Snapshots every `interval`, for ever: each `next()` sleeps until
    /// `interval` after the previous snapshot, then takes one.
    pub fn snapshots(&mut self, interval: Duration) -> Snapshots<'_> {
        Snapshots {
            collector: self,
            interval,
        }
    }

    /// With the `tokio` feature: a [`futures_core::Stream`] of snapshots
    /// every `interval` (the first one `interval` from now). Each snapshot
    /// is taken on the polling task (a few milliseconds of `/proc` and map
    /// reads): poll it from a multi-threaded runtime, or wrap it in
    /// `tokio::task::spawn_blocking` for a current-thread one.
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn into_stream(self, interval: Duration) -> SnapshotStream {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        SnapshotStream {
            collector: self,
            ticker,
        }
    }
}

/// The iterator of [`Collector::snapshots`]; it never ends.
pub struct Snapshots<'a> {
    collector: &'a mut Collector,
    interval: Duration,
}

impl Iterator for Snapshots<'_> {
    type Item = Snapshot;

    fn next(&mut self) -> Option<Snapshot> {
        let due = self.collector.last + self.interval;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        Some(self.collector.snapshot())
    }
}

/// The stream of [`Collector::into_stream`]; it never ends.
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub struct SnapshotStream {
    collector: Collector,
    ticker: tokio::time::Interval,
}

#[cfg(feature = "tokio")]
impl SnapshotStream {
    /// Stop: the last, partial interval's snapshot (see
    /// [`Collector::finish`]).
    pub fn finish(self) -> Snapshot {
        self.collector.finish()
    }
}

#[cfg(feature = "tokio")]
impl futures_core::Stream for SnapshotStream {
    type Item = Snapshot;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Snapshot>> {
        let this = self.get_mut();
        match this.ticker.poll_tick(cx) {
            std::task::Poll::Ready(_) => std::task::Poll::Ready(Some(this.collector.snapshot())),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// Remove the pins a collector built with [`CollectorBuilder::pin`] (or a
/// pinned `netwatch-agent`) left under `dir`, whose baseline is
/// `state_file`: their programs detach from the kernel. Entries not of
/// netwatch's naming scheme are left and listed. Refused while a
/// collector or agent holds the pins. Linux, feature `ebpf`.
#[cfg(all(target_os = "linux", feature = "ebpf"))]
#[cfg_attr(docsrs, doc(cfg(feature = "ebpf")))]
pub fn unpin(
    dir: impl Into<PathBuf>,
    state_file: impl Into<PathBuf>,
) -> Result<Unpinned, UnpinError> {
    crate::source::ebpf::pin::unpin(&crate::source::ebpf::pin::PinOptions {
        dir: dir.into(),
        state_file: state_file.into(),
    })
}

/// A part of a snapshot that could not be read ([`Collector::problems`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which part: `source`, `interfaces`, `TCP states`.
    pub part: &'static str,
    /// What went wrong, with its causes.
    pub error: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.part, self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{SampleBatch, SocketSource};

    /// Fails its read when told to, else reads no sockets.
    struct Flaky(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl SocketSource for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn read(&mut self) -> anyhow::Result<SampleBatch> {
            if self.0.load(std::sync::atomic::Ordering::Relaxed) {
                anyhow::bail!("the map is gone");
            }
            Ok(SampleBatch::exact(Instant::now(), Vec::new()))
        }
    }

    /// A failed read is the latest snapshot's problem (named, with its
    /// cause) and leaves its process rows out; the next good read clears it.
    #[test]
    fn a_failed_source_read_is_a_problem_of_that_snapshot_only() {
        let failing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let info = crate::snapshot::collector_info(&Flaky(failing.clone()), None);
        let mut engine = Engine::new(
            Box::new(Flaky(failing.clone())),
            info.clone(),
            HostCollectors::new(),
            Instant::now(),
        );
        engine.prime();
        let mut c = Collector::from_engine(engine, info);
        let ok = c.snapshot();
        assert_eq!(ok.processes.as_deref(), Some(&[][..]));
        let source_problems = |c: &Collector| -> Vec<String> {
            c.problems()
                .iter()
                .filter(|p| p.part == "source")
                .map(Problem::to_string)
                .collect()
        };
        assert!(source_problems(&c).is_empty());
        failing.store(true, std::sync::atomic::Ordering::Relaxed);
        let bad = c.snapshot();
        assert_eq!(bad.processes, None);
        assert_eq!(
            source_problems(&c),
            ["source: reading the flaky source: the map is gone"]
        );
        failing.store(false, std::sync::atomic::Ordering::Relaxed);
        c.snapshot();
        assert!(source_problems(&c).is_empty());
    }
}
