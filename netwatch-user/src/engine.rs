//! One interval's collection: each call reads the socket source and the
//! host collectors and builds one `Snapshot` value (attribution, quality,
//! DNS, alerts, health). It is the inside of a [`crate::Collector`]; it
//! owns no delivery (the agent's sinks) and must never move the source's
//! persisted baseline by itself: [`Engine::kept`] does, when the caller
//! says the latest snapshot is stored. Windows (alerts, DNS) run on the
//! monotonic clock; the wall clock only stamps the snapshot and its alerts
//! ([`crate::clock`]).

use std::sync::Arc;
use std::time::Instant;

use log::warn;
use netwatch_common::wire::{CollectorInfo, Snapshot};

use crate::alerts::feed::{Conn, Tick};
use crate::alerts::Detectors;
use crate::attribution::Attribution;
use crate::clock::{Clock, SystemClock};
use crate::health::Prober;
use crate::snapshot::HostCollectors;
use crate::source::{DnsEvent, DnsFeed, SocketSource};

/// One source, the host collectors, and what runs beside them.
pub struct Engine {
    source: Box<dyn SocketSource>,
    info: CollectorInfo,
    attribution: Attribution,
    quality: crate::snapshot::quality::QualityTracker,
    host: HostCollectors,
    alerts: Option<Detectors>,
    health: Option<Prober>,
    /// DNS from beside the source: the DNS-only capture, for a source that
    /// sees no packets.
    dns_feed: Option<Box<dyn DnsFeed>>,
    max_connections: usize,
    /// Process rows per snapshot at most (the rest folded into one).
    max_processes: usize,
    clock: Arc<dyn Clock>,
    /// What failed in the latest snapshot (each also logged).
    problems: Vec<crate::Problem>,
}

impl Engine {
    /// `started_at` is when the source began counting.
    pub fn new(
        source: Box<dyn SocketSource>,
        info: CollectorInfo,
        host: HostCollectors,
        started_at: Instant,
    ) -> Self {
        let mut source = source;
        source.set_row_budget(crate::DEFAULT_MAX_CONNECTIONS);
        Self {
            source,
            info,
            attribution: Attribution::new(started_at),
            quality: Default::default(),
            host,
            alerts: None,
            health: None,
            dns_feed: None,
            max_connections: crate::DEFAULT_MAX_CONNECTIONS,
            max_processes: crate::DEFAULT_MAX_PROCESSES,
            clock: Arc::new(SystemClock),
            problems: Vec::new(),
        }
    }

    /// Read time from `clock` instead of the system's (tests step it). Its
    /// monotonic part must be on the scale of the source's event times.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Run the alert detectors on every tick (fills `alerts`).
    pub fn with_alerts(mut self, alerts: Detectors) -> Self {
        self.alerts = Some(alerts);
        self
    }

    /// Emit at most `max` connection rows per snapshot (the busiest this
    /// interval); per-process totals count every socket, and the alert
    /// detectors see every new one.
    pub fn with_max_connections(mut self, max: usize) -> Self {
        self.max_connections = max;
        self.source.set_row_budget(max);
        self
    }

    /// Emit at most `max` process rows per snapshot (the busiest this
    /// interval), the others summed into one row without a pid
    /// ([`crate::attribution::fold_processes`]) and counted as
    /// `snapshot_processes` drops; the alert detectors see every process.
    pub fn with_max_processes(mut self, max: usize) -> Self {
        self.max_processes = max;
        self
    }

    /// Copy the probe thread's latest result into every snapshot (`health`).
    pub fn with_health(mut self, prober: Prober) -> Self {
        self.health = Some(prober);
        self
    }

    /// Take DNS events from `feed` as well as from the source (the DNS-only
    /// capture beside a source that sees no packets): `dns_analytics` and
    /// the DNS detectors then work as with a source that sees them.
    pub fn with_dns_feed(mut self, feed: Box<dyn DnsFeed>) -> Self {
        self.dns_feed = Some(feed);
        self
    }

    /// The DNS events of the interval: the source's and the feed's; `None`
    /// when neither sees DNS.
    fn take_dns_events(&mut self) -> Option<Vec<DnsEvent>> {
        let from_source = self.source.take_dns_events();
        let Some(feed) = &mut self.dns_feed else {
            return from_source;
        };
        let mut events = from_source.unwrap_or_default();
        events.extend(feed.take_dns_events());
        Some(events)
    }

    /// The first read: sets every baseline (interface counters, CPU times,
    /// socket counters) so the first emitted snapshot covers one interval.
    pub fn prime(&mut self) {
        let _ = self.collect(false);
        // Pins created just now: nothing was delivered from them yet, so
        // what a restart continues from is this first read. Without it a
        // restart before the first kept snapshot found no baseline, took
        // its own first read as the start, and lost every byte between.
        // Pins continued from an earlier run keep that run's baseline:
        // the bytes moved while no one counted go in the first snapshot.
        if self.source.continuity().is_some_and(|c| !c.continued) {
            self.source.delivered();
        }
    }

    /// Collect one snapshot; the persisted baseline does not move (see
    /// [`Engine::kept`]). Collector failures are logged and leave their
    /// section empty; they never stop the tick.
    pub fn snapshot(&mut self) -> Snapshot {
        self.collect(true)
    }

    /// One snapshot; `emitted`: it goes to the sinks (the priming one does
    /// not, so the rows it folds are not counted as dropped).
    fn collect(&mut self, emitted: bool) -> Snapshot {
        // One reading of each clock per tick: the monotonic one for every
        // window, the wall one for timestamps only.
        let now = self.clock.mono();
        let timestamp = self.clock.wall();
        let mut snap = Snapshot::empty(timestamp);
        if let Some(t) = self.source.tcp_states() {
            snap.connection_count = Some(t.established);
            snap.tcp_time_wait = Some(t.time_wait);
            snap.tcp_close_wait = Some(t.close_wait);
        }
        self.host.fill(&mut snap);
        self.problems.clear();
        self.problems.extend_from_slice(self.host.failures());
        let mut info = self.info.clone();
        // The batch and its compact rows live until the alerts are fed;
        // wire rows are built for the top N only.
        let mut read = None;
        // Every process's row until the alerts have seen them; then the
        // top N go out.
        let mut processes = None;
        match self.source.read() {
            Ok(batch) => {
                let mut rows = self.attribution.read(&batch);
                processes = Some(if batch.estimated {
                    // The estimate splits by every ESTABLISHED connection
                    // (the fallback sources only).
                    crate::estimate::split_by_connections(
                        &rows.all_connections(&batch),
                        &snap.interfaces,
                    )
                } else {
                    std::mem::take(&mut rows.processes)
                });
                let (connections, left_out) = rows.top_connections(&batch, self.max_connections);
                snap.connections = Some(connections);
                if left_out > 0 {
                    info.connections_truncated = Some(left_out);
                }
                info.estimated = batch.estimated;
                info.lost_records = Some(batch.lost_records);
                read = Some((batch, rows));
            }
            Err(e) => {
                warn!("reading the {} source: {e:#}", self.source.name());
                self.problems.push(crate::Problem {
                    part: "source",
                    error: format!("reading the {} source: {e:#}", self.source.name()),
                });
            }
        }
        let dns = self.take_dns_events();
        // Drained every tick, so a source never holds them for nobody.
        let tcp = self.source.take_tcp_events().unwrap_or_default();
        if let Some(d) = &mut self.alerts {
            // The feed sees the new rows and the listeners, typed: never
            // every socket, never strings to parse back.
            let conns: Vec<Conn<'_>> = read
                .as_ref()
                .map(|(batch, rows)| {
                    rows.rows
                        .iter()
                        .filter_map(|r| {
                            let s = batch.samples.get(r.sample)?;
                            Conn::wanted(s, r.new).then(|| Conn::of(s, r.new))
                        })
                        .collect()
                })
                .unwrap_or_default();
            snap.alerts = Some(d.tick(Tick {
                now,
                wall: timestamp,
                tcp: &tcp,
                connections: &conns,
                dns: dns.as_deref().unwrap_or(&[]),
                processes: processes.as_deref().unwrap_or(&[]),
                interfaces: &snap.interfaces,
            }));
        }
        // Per-process quality: each socket's counters and connect results,
        // then the DNS lookups joined to the sockets' owners.
        let mut figures = read
            .as_ref()
            .map(|(batch, _)| self.quality.tcp(batch, &tcp, now))
            .unwrap_or_default();
        let clients = self.host.fill_dns(&mut snap, dns.as_deref(), now);
        self.quality.dns(&mut figures, clients);
        if let Some((_, rows)) = read {
            self.attribution.recycle(rows);
        }
        if let Some(mut processes) = processes {
            figures.fill(&mut processes);
            let folded = crate::attribution::fold_processes(&mut processes, self.max_processes);
            if folded > 0 {
                info.processes_folded = Some(folded);
                if emitted {
                    crate::drops::dropped("snapshot_processes", self.max_processes, folded);
                }
            }
            // Metadata for the rows that go out only: a fork flood costs
            // no /proc reads past the bound.
            self.host.fill_processes(&mut processes);
            snap.processes = Some(processes);
        }
        if let Some(p) = &self.health {
            snap.health = p.latest();
        }
        snap.collector = Some(info);
        snap
    }

    /// Settle the source before a last snapshot: its final reads (closed
    /// sockets' last counts) land in the next [`Engine::snapshot`].
    pub(crate) fn settle(&mut self) {
        self.source.settle();
    }

    /// The latest snapshot is stored (a sink kept it, or the caller took
    /// it over): the source's persisted baseline moves past it.
    pub(crate) fn kept(&mut self) {
        self.source.delivered();
    }

    /// What the source's counts continue from across restarts (a pinned
    /// eBPF source), for state kept beside its baseline.
    pub(crate) fn continuity(&self) -> Option<crate::continuity::Continuity> {
        self.source.continuity()
    }

    /// What failed in the latest snapshot: the source's read, a host
    /// collector (each also logged). Empty when everything was read.
    pub(crate) fn problems(&self) -> &[crate::Problem] {
        &self.problems
    }
}
