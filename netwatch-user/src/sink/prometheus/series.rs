//! The per-process series of `/metrics` and everything else a snapshot
//! updates ([`MetricsState`]): byte counters accumulated from the
//! snapshots' per-interval bytes, interface counters, TCP state gauges,
//! agent self-metrics, and how the series are saved for a restarted agent
//! and taken back. Pure: no clock read, no file, no socket (the cgroup of
//! a pid and the time come from the caller).
//!
//! It must never let a process counter go down while its series lives,
//! never hold more than `top_processes` process series (bytes of processes
//! without a series are counted in the `comm="other"` series), and never
//! lose a byte: each one is in a live series, in `other`, or in a series
//! that ended (expired or evicted).
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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use netwatch_common::wire::{CollectorInfo, InterfaceMetric, ProcessBandwidth, Snapshot};

use super::quality::QualityTotals;
use super::state_file::{SavedCounters, SavedProcess};

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

/// Everything `/metrics` shows, updated once per snapshot. Pure: the
/// cgroup of a pid comes from the caller.
#[derive(Debug, Clone)]
pub struct MetricsState {
    limits: SeriesLimits,
    pub(super) processes: HashMap<ProcessKey, ProcessSeries>,
    pub(super) other_rx_bytes_total: u64,
    pub(super) other_tx_bytes_total: u64,
    /// Quality counters of processes that had no series.
    pub(super) other_quality: QualityTotals,
    /// Series removed because their process was gone past the expiry.
    pub(super) series_expired_total: u64,
    /// Series removed to make room for a busier process.
    pub(super) series_evicted_total: u64,
    pub(super) interfaces: Vec<InterfaceMetric>,
    /// (established, time_wait, close_wait), host-wide.
    pub(super) tcp: Option<(u32, u32, u32)>,
    pub(super) collector: Option<CollectorInfo>,
    pub(super) snapshots_total: u64,
    pub(super) connections: u64,
    pub(super) process_rows: u64,
    pub(super) lost_records_total: u64,
    /// Alerts raised, each counted once however many snapshots carry it.
    pub(super) alerts: crate::alerts::counter::AlertCounter,
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
        self.take_host_figures(snap);
        let rows = snap.processes.as_deref().unwrap_or_default();
        self.process_rows = rows.len() as u64;
        let tick = self.gather(rows, cgroup_of);
        let newcomers = self.add_to_live_series(tick, now);
        self.expire(now);
        self.admit(newcomers, now);
    }

    /// What the snapshot says besides the process rows: interfaces, TCP
    /// states, the collector, the connection count and the alerts.
    fn take_host_figures(&mut self, snap: &Snapshot) {
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
    }

    /// The rows summed per series key; rows without a pid (the folded
    /// row) go to `other` at once.
    fn gather(
        &mut self,
        rows: &[ProcessBandwidth],
        cgroup_of: &mut dyn FnMut(u32) -> String,
    ) -> HashMap<ProcessKey, Tick> {
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
        tick
    }

    /// Add this snapshot's figures to the series that exist; the keys
    /// without one are returned (the newcomers).
    fn add_to_live_series(
        &mut self,
        tick: HashMap<ProcessKey, Tick>,
        now: Instant,
    ) -> Vec<(ProcessKey, Tick)> {
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
        newcomers
    }

    /// Remove the series not seen for the expiry.
    fn expire(&mut self, now: Instant) {
        let expiry = self.limits.expiry;
        let before = self.processes.len();
        self.processes
            .retain(|_, s| now.saturating_duration_since(s.last_seen) < expiry);
        self.series_expired_total += (before - self.processes.len()) as u64;
    }

    /// Give the newcomers a series: while there is room, else in the place
    /// of the series idle the longest if the newcomer moved bytes, else
    /// their figures go to `other`.
    fn admit(&mut self, mut newcomers: Vec<(ProcessKey, Tick)>, now: Instant) {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{cg, page, snap, state, totals};
    use super::*;

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
