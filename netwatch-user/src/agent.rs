//! The tick loop: one clock drives everything. Each tick reads the socket
//! source and the host collectors, builds one `Snapshot` value and hands it
//! to every sink. The loop owns no collection logic of its own; delivery
//! policy (spool, retries) belongs to the sinks. It must never move the
//! source's persisted baseline past a snapshot that no sink kept. Windows
//! (alerts, DNS) run on the monotonic clock; the wall clock only stamps the
//! snapshot and its alerts ([`crate::clock`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use netwatch_common::wire::{CollectorInfo, Snapshot};

use crate::alerts::feed::{Conn, Tick};
use crate::alerts::Detectors;
use crate::attribution::Attribution;
use crate::clock::{Clock, SystemClock};
use crate::health::Prober;
use crate::sink::{Flow, Sink};
use crate::snapshot::HostCollectors;
use crate::source::{DnsEvent, DnsFeed, SocketSource};

/// The agent: one source, the host collectors, the sinks.
pub struct Agent {
    source: Box<dyn SocketSource>,
    info: CollectorInfo,
    attribution: Attribution,
    quality: crate::snapshot::quality::QualityTracker,
    host: HostCollectors,
    sinks: Vec<Box<dyn Sink>>,
    alerts: Option<Detectors>,
    health: Option<Prober>,
    /// DNS from beside the source: the DNS-only capture, for a source that
    /// sees no packets.
    dns_feed: Option<Box<dyn DnsFeed>>,
    max_connections: usize,
    /// Process rows per snapshot at most (the rest folded into one).
    max_processes: usize,
    /// Snapshots no sink kept (see [`Agent::unkept_snapshots`]).
    unkept: u64,
    /// The latest snapshot was kept by no sink: said once until one is.
    unkept_said: bool,
    clock: Arc<dyn Clock>,
}

impl Agent {
    /// `started_at` is when the source began counting.
    pub fn new(
        source: Box<dyn SocketSource>,
        info: CollectorInfo,
        host: HostCollectors,
        sinks: Vec<Box<dyn Sink>>,
        started_at: Instant,
    ) -> Self {
        let mut sinks = sinks;
        let continuity = source.continuity();
        for sink in &mut sinks {
            sink.resume(continuity.as_ref());
        }
        let mut source = source;
        source.set_row_budget(crate::config::DEFAULT_MAX_CONNECTIONS);
        Self {
            source,
            info,
            attribution: Attribution::new(started_at),
            quality: Default::default(),
            host,
            sinks,
            alerts: None,
            health: None,
            dns_feed: None,
            max_connections: crate::config::DEFAULT_MAX_CONNECTIONS,
            max_processes: crate::config::DEFAULT_MAX_PROCESSES,
            unkept: 0,
            unkept_said: false,
            clock: Arc::new(SystemClock),
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
    }

    /// Collect one snapshot. Collector failures are logged and leave their
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
            Err(e) => warn!("reading the {} source: {e:#}", self.source.name()),
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
    /// sockets' last counts) land in the next [`Agent::snapshot`].
    pub(crate) fn settle(&mut self) {
        self.source.settle();
    }

    /// The caller took the latest snapshot over (the library's
    /// [`crate::Collector`], which has no sinks): the source's persisted
    /// baseline moves past it, as after a snapshot a sink kept.
    pub(crate) fn handed_over(&mut self) {
        self.source.delivered();
    }

    /// Snapshots that no sink kept since start (each sink counts its own
    /// losses too: the spool's write failures are in the ingest sink's
    /// `dropped_count` and in `/metrics`). The source's baseline did not
    /// move past them, so a restarted agent counts their bytes again.
    pub fn unkept_snapshots(&self) -> u64 {
        self.unkept
    }

    /// Give `snapshot` to every sink. `Stop` if a sink's consumer is gone.
    /// The source stores its baseline, and the sinks their own state, only
    /// when at least one sink kept the snapshot.
    pub fn deliver(&mut self, snapshot: &Snapshot) -> Flow {
        let mut flow = Flow::Continue;
        let mut kept = false;
        for sink in &mut self.sinks {
            match sink.emit(snapshot) {
                Ok(e) => {
                    kept |= e.kept;
                    if e.flow == Flow::Stop {
                        flow = Flow::Stop;
                    }
                }
                Err(e) => error!("{} sink: {e:#}", sink.name()),
            }
        }
        if !kept {
            // Nothing holds this snapshot: what a restarted agent continues
            // from stays before it, so its bytes are counted again then.
            self.unkept += 1;
            if !self.unkept_said {
                warn!(
                    "no output kept the snapshot taken at {} (see the lines above for why); \
                     the saved baseline stays before it; {} such snapshots so far, said \
                     once until one is kept",
                    snapshot.timestamp.to_rfc3339(),
                    self.unkept
                );
                self.unkept_said = true;
            }
            return flow;
        }
        if self.unkept_said {
            info!(
                "an output kept a snapshot again ({} were kept by none)",
                self.unkept
            );
            self.unkept_said = false;
        }
        // After the sinks: what a restarted agent continues from is
        // exactly what was kept.
        self.source.delivered();
        // Then the sinks' own state (counters accumulated from the bytes):
        // a kill between the two loses at most that one interval from
        // them, and never counts it twice.
        for sink in &mut self.sinks {
            sink.delivered();
        }
        flow
    }
}

/// SIGINT and SIGTERM, taken over from the process's default (which kills
/// it) as early as possible: a stop that arrives while the source is still
/// loading is kept and seen by [`run`]'s first select, so the agent still
/// ends cleanly (a final snapshot delivered, the live view's terminal
/// restored) instead of dying mid-start.
pub struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Must be called inside a Tokio runtime context (`Runtime::enter`).
    pub fn take_over() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }
}

/// Run the agent: prime, then one snapshot per `interval` until Ctrl-C or
/// SIGTERM (which deliver a final snapshot of the partial interval), a
/// sink's `Stop`, or (with `once`) the first snapshot. Each completed tick
/// is reported to [`crate::supervise`] (the `/healthz` heartbeat); a worker
/// thread the supervisor gave up on ends the loop with an error naming it
/// (the agent exits non-zero and its service manager restarts it).
pub async fn run(
    mut agent: Agent,
    interval: Duration,
    once: bool,
    stops: StopSignals,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // completes immediately
    let StopSignals { mut int, mut term } = stops;
    crate::supervise::ticks_start(interval);
    tokio::task::block_in_place(|| agent.prime());
    loop {
        let stopping = tokio::select! {
            biased;
            _ = int.recv() => true,
            _ = term.recv() => true,
            _ = ticker.tick() => false,
        };
        // On a stop signal one last, shorter interval is still delivered:
        // bytes moved since the previous tick are never dropped.
        let flow = tokio::task::block_in_place(|| {
            if stopping {
                agent.source.settle();
            }
            crate::supervise::fault::stall("tick");
            let snap = agent.snapshot();
            let flow = agent.deliver(&snap);
            drop(snap);
            release_free_memory();
            flow
        });
        crate::supervise::tick_completed();
        if let Some(c) = crate::supervise::down_for_good() {
            anyhow::bail!(
                "the agent's {} part failed for good ({}): exiting so that the service \
                 manager (systemd, Kubernetes) restarts the agent",
                c.name,
                c.last_failure.as_deref().unwrap_or("no reason recorded")
            );
        }
        if stopping || once || flow == Flow::Stop {
            break;
        }
    }
    Ok(())
}

/// Hand the pages the tick freed back to the kernel. A tick's buffers
/// (a map walk's batch, the snapshot and its JSON) are freed at its end,
/// but glibc keeps freed memory inside its heaps, so without this the
/// agent's resident memory stays at its busiest tick's: at 10,000 sockets
/// 31 MB against 23 MB with it. It costs a walk of malloc's free lists and
/// one `madvise` per free run, a few microseconds at idle.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it
    // touches no memory the program holds.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Emitted;
    use crate::source::SampleBatch;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Counts `delivered()` calls: the baseline moves once per call.
    struct Baseline(Arc<AtomicU64>);

    impl SocketSource for Baseline {
        fn name(&self) -> &'static str {
            "test"
        }
        fn read(&mut self) -> anyhow::Result<SampleBatch> {
            anyhow::bail!("not read in these tests")
        }
        fn delivered(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers each emit from a script; counts its own `delivered()`.
    struct Scripted {
        answers: Vec<anyhow::Result<Emitted>>,
        saved: Arc<AtomicU64>,
    }

    impl Sink for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn emit(&mut self, _: &Snapshot) -> anyhow::Result<Emitted> {
            self.answers.remove(0)
        }
        fn delivered(&mut self) {
            self.saved.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn agent(sinks: Vec<Vec<anyhow::Result<Emitted>>>) -> (Agent, Arc<AtomicU64>, Arc<AtomicU64>) {
        let moved = Arc::new(AtomicU64::new(0));
        let saved = Arc::new(AtomicU64::new(0));
        let sinks = sinks
            .into_iter()
            .map(|answers| {
                Box::new(Scripted {
                    answers,
                    saved: Arc::clone(&saved),
                }) as Box<dyn Sink>
            })
            .collect();
        let info = CollectorInfo {
            source: "test".into(),
            ebpf_tier: None,
            estimated: false,
            fallback_reason: None,
            lost_records: None,
            connections_truncated: None,
            processes_folded: None,
        };
        let agent = Agent::new(
            Box::new(Baseline(Arc::clone(&moved))),
            info,
            HostCollectors::new(),
            sinks,
            Instant::now(),
        );
        (agent, moved, saved)
    }

    /// Snapshot by snapshot: the baseline (and the sinks' saved state)
    /// moves only past a snapshot at least one sink kept; an error, a
    /// `LOST` and a `STOP` are not kept.
    #[test]
    fn the_baseline_moves_only_past_a_snapshot_some_sink_kept() {
        let snap = Snapshot::empty(chrono::Utc::now());
        let (mut a, moved, saved) = agent(vec![
            // The "ingest" sink: spooled, lost (disk full), lost, error, kept.
            vec![
                Ok(Emitted::KEPT),
                Ok(Emitted::LOST),
                Ok(Emitted::LOST),
                Err(anyhow::anyhow!("broken")),
                Ok(Emitted::KEPT),
            ],
            // The "json" sink: kept, stdout gone on the third, then errors.
            vec![
                Ok(Emitted::KEPT),
                Ok(Emitted::KEPT),
                Ok(Emitted::STOP),
                Err(anyhow::anyhow!("EIO")),
                Err(anyhow::anyhow!("EIO")),
            ],
        ]);
        let mut trail = Vec::new();
        for _ in 0..5 {
            let flow = a.deliver(&snap);
            trail.push((
                flow,
                moved.load(Ordering::Relaxed),
                saved.load(Ordering::Relaxed),
                a.unkept_snapshots(),
            ));
        }
        assert_eq!(
            trail,
            [
                (Flow::Continue, 1, 2, 0), // both kept
                (Flow::Continue, 2, 4, 0), // json kept it
                (Flow::Stop, 2, 4, 1),     // none kept: baseline stays
                (Flow::Continue, 2, 4, 2), // errors: none kept
                (Flow::Continue, 3, 6, 2), // ingest kept it
            ]
        );
    }
}
