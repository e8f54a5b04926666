//! The agent's tick loop: one clock drives everything. Each tick takes one
//! snapshot from the [`Collector`] and hands it to every sink. The loop
//! owns no collection logic of its own (the collector has it) and no
//! delivery policy (spool, retries: the sinks have it). It must never move
//! the source's persisted baseline past a snapshot that no sink kept.

use std::time::Duration;

use log::{error, info, warn};
use netwatch_common::wire::Snapshot;

use crate::sink::{Flow, Sink};
use crate::Collector;

/// The agent: a collector and the sinks its snapshots go to.
pub struct Agent {
    collector: Collector,
    sinks: Vec<Box<dyn Sink>>,
    /// Snapshots no sink kept (see [`Agent::unkept_snapshots`]).
    unkept: u64,
    /// The latest snapshot was kept by no sink: said once until one is.
    unkept_said: bool,
}

impl Agent {
    /// Each sink first learns what the collector's counts continue from
    /// (a pinned source's baseline), to restore its own state beside it.
    pub fn new(collector: Collector, sinks: Vec<Box<dyn Sink>>) -> Self {
        let mut sinks = sinks;
        let continuity = collector.continuity();
        for sink in &mut sinks {
            sink.resume(continuity.as_ref());
        }
        Self {
            collector,
            sinks,
            unkept: 0,
            unkept_said: false,
        }
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
        self.collector.kept();
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

/// Run the agent: one snapshot per `interval` until Ctrl-C or
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
                agent.collector.settle();
            }
            crate::supervise::fault::stall("tick");
            let snap = agent.collector.collect();
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
    use crate::source::{SampleBatch, SocketSource};
    use netwatch_common::wire::CollectorInfo;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

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
        let engine = crate::engine::Engine::new(
            Box::new(Baseline(Arc::clone(&moved))),
            info.clone(),
            crate::snapshot::HostCollectors::new(),
            Instant::now(),
        );
        let agent = Agent::new(Collector::from_engine(engine, info), sinks);
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
