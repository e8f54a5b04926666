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
//! One module per concern; this one is the sink that ties them together:
//! - `series`: the series state machine ([`MetricsState`]: accumulate,
//!   cap, expire, save and restore), pure;
//! - [`quality`]: the TCP quality and DNS counters each series carries;
//! - `state_file`: the counters file kept for a restarted agent
//!   ([`SavedCounters`]: its version line, checksum and checks);
//! - `encode`: the page ([`render`]), one function per group of families;
//! - `cgroup`: the `cgroup` label ([`parse_cgroup`]);
//! - `delivery`: the ingest sink's counters as shown ([`DeliveryView`]);
//! - `server`: the HTTP server thread and its connection table.
//!
//! It must never block the tick on a scrape (the tick and a scrape share the
//! state behind one mutex; both hold it only to copy numbers, the scrape
//! encodes outside it), never let a process counter go down while its
//! series lives, never hold more than `top_processes` process series (bytes
//! of processes without a series are counted in the `comm="other"` series),
//! and never expose configuration: no API key, no endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use netwatch_common::wire::Snapshot;

use super::{Emitted, Sink};
use crate::config::PrometheusConfig;

mod cgroup;
mod delivery;
mod encode;
#[cfg(test)]
mod fixtures;
pub mod quality;
mod series;
mod server;
mod state_file;

pub use cgroup::parse_cgroup;
pub use delivery::{DeliveryReport, DeliveryView};
pub use encode::{render, OTHER_COMM};
pub use series::{MetricsState, ProcessKey, ProcessSeries, SeriesLimits};
pub use server::{
    connection_cap, CONNECTIONS_TABLE, CONTENT_TYPE, HEADER_READ_TIMEOUT, MAX_HEADER_BYTES,
};
pub use state_file::{counters_file, SavedCounters, SavedProcess};

use cgroup::read_cgroup;
use encode::registry;
// The label types the quality families are written with.
use encode::{Labels, Text};
use server::Server;

fn lock(m: &Mutex<MetricsState>) -> MutexGuard<'_, MetricsState> {
    // Held only to copy numbers in or out: consistent after any panic.
    crate::supervise::lock(m, "/metrics state")
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `/metrics` sink: updates the shared state on each snapshot; the
/// server thread renders it on each scrape.
pub struct PrometheusSink {
    state: Arc<Mutex<MetricsState>>,
    /// pid → cgroup path, for the pids of the latest snapshot.
    cgroups: HashMap<u32, String>,
    /// Pinned source: the pins' instance tag and the counters file, written
    /// each time a snapshot was delivered.
    persist: Option<(String, std::path::PathBuf)>,
    /// The server thread (stopped and joined when the sink is dropped).
    server: Server,
}

impl PrometheusSink {
    /// Bind the listener (an address in use stops the agent at start) and
    /// start the server thread.
    pub fn start(
        cfg: &PrometheusConfig,
        delivery: Option<Arc<dyn DeliveryReport>>,
    ) -> anyhow::Result<Self> {
        let (listener, local_addr) = Server::bind(cfg.listen)?;
        let state = Arc::new(Mutex::new(MetricsState::new(SeriesLimits {
            expiry: cfg.process_expiry,
            top_processes: cfg.top_processes,
        })));
        let server = Server::start(listener, local_addr, registry(&state, delivery))?;
        Ok(Self {
            state,
            cgroups: HashMap::new(),
            persist: None,
            server,
        })
    }

    /// Let the server thread answer scrapes (once).
    fn serve_now(&mut self) {
        self.server.serve_now();
    }

    /// Where the server listens (the port chosen when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
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

    fn resume(&mut self, continuity: Option<&crate::continuity::Continuity>) {
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
        if let Err(e) = crate::files::write_atomically(
            path,
            text.as_bytes(),
            crate::files::Durability::Volatile,
        ) {
            log::warn!("storing the process counters at {}: {e}", path.display());
        }
    }
}
