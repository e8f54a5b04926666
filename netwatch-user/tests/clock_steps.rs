//! Alert windows across wall-clock steps, through the real agent loop
//! (`Engine::snapshot` with the real host collectors and the real alert
//! detectors) and a test clock whose wall part is stepped an hour back or
//! forward while its monotonic part advances one second per tick. The
//! source is scripted: it yields the TCP SYNs a capture or the kernel
//! would, stamped on the monotonic clock as the real sources stamp them.
//!
//! What must hold: an alert stays active for exactly its 60 s window
//! (60 ticks), whatever the wall clock did; its timestamp is the wall
//! clock's reading when it was raised; a port scan whose probes straddle a
//! step is still one scan within its 30 s window. With the wall clock as
//! the windows' clock, an alert raised after a step back expired on the
//! tick that raised it, one raised before a step forward on the next tick,
//! and a scan straddling a step was two halves that never reached 20 ports.
//!
//! No root needed: nothing here touches the kernel beyond reading /proc.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use netwatch::alerts::{AlertConfig, Detectors};
use netwatch::clock::{Clock, TestClock};
use netwatch::engine::Engine;
use netwatch::snapshot::HostCollectors;
use netwatch::source::{SampleBatch, SocketSource, TcpEvent, TcpEventKind, TcpStateCounts};
use netwatch_common::wire::{Alert, AlertCategory, CollectorInfo};

/// A source with no sockets that hands out the TCP events queued for it.
struct Scripted {
    events: Arc<Mutex<Vec<TcpEvent>>>,
}

impl SocketSource for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }

    fn read(&mut self) -> anyhow::Result<SampleBatch> {
        Ok(SampleBatch::exact(Instant::now(), Vec::new()))
    }

    fn tcp_states(&mut self) -> Option<TcpStateCounts> {
        Some(TcpStateCounts::default())
    }

    fn take_tcp_events(&mut self) -> Option<Vec<TcpEvent>> {
        Some(std::mem::take(&mut *self.events.lock().unwrap()))
    }
}

struct Rig {
    clock: Arc<TestClock>,
    events: Arc<Mutex<Vec<TcpEvent>>>,
    agent: Engine,
}

impl Rig {
    fn new() -> Self {
        let wall = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let clock = Arc::new(TestClock::new(Duration::from_secs(10_000), wall));
        let events = Arc::new(Mutex::new(Vec::new()));
        let src = Box::new(Scripted {
            events: Arc::clone(&events),
        });
        let info = CollectorInfo {
            source: "scripted".into(),
            ebpf_tier: None,
            estimated: false,
            fallback_reason: None,
            lost_records: None,
            connections_truncated: None,
            processes_folded: None,
        };
        let mut agent = Engine::new(src, info, HostCollectors::new(), Instant::now())
            .with_alerts(Detectors::new(AlertConfig::default()))
            .with_clock(clock.clone());
        agent.prime();
        Self {
            clock,
            events,
            agent,
        }
    }

    /// SYNs from `remote` to `ports` on 10.0.0.1, seen now (monotonic).
    fn probe(&self, remote: &str, ports: std::ops::Range<u16>) {
        let remote: IpAddr = remote.parse().unwrap();
        let at = self.clock.mono();
        let mut q = self.events.lock().unwrap();
        for (i, port) in ports.enumerate() {
            q.push(TcpEvent {
                at,
                src: SocketAddr::new(remote, 40_000 + i as u16),
                dst: SocketAddr::from(([10, 0, 0, 1], port)),
                kind: TcpEventKind::Syn,
                src_local: false,
                dst_local: true,
                pid: None,
                connect: None,
            });
        }
    }

    /// A second passes, then a tick: its port-scan alerts about `remote`.
    fn tick(&mut self) -> Vec<Alert> {
        self.clock.advance(Duration::from_secs(1));
        self.snapshot()
    }

    /// A tick without time passing.
    fn snapshot(&mut self) -> Vec<Alert> {
        self.agent
            .snapshot()
            .alerts
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a.category == AlertCategory::PortScan)
            .collect()
    }
}

fn about<'a>(alerts: &'a [Alert], remote: &str) -> Vec<&'a Alert> {
    let message = format!("Port scan from {remote}");
    alerts.iter().filter(|a| a.message == message).collect()
}

/// Ticks (this one included) in which the alert about `remote` is active,
/// until it is gone; at most `limit`.
fn active_ticks(rig: &mut Rig, first: Vec<Alert>, remote: &str, limit: usize) -> usize {
    let mut alerts = first;
    let mut n = 0;
    while n < limit && about(&alerts, remote).len() == 1 {
        n += 1;
        alerts = rig.tick();
    }
    n
}

#[test]
fn an_alert_raised_after_the_wall_clock_went_back_stays_for_its_window() {
    let mut rig = Rig::new();
    rig.tick();
    rig.clock.step_wall(TimeDelta::hours(-1));
    rig.tick();
    rig.clock.advance(Duration::from_secs(1));
    rig.probe("198.51.100.7", 1000..1020);
    let raised_wall = rig.clock.wall();
    let alerts = rig.snapshot();
    let mine = about(&alerts, "198.51.100.7");
    assert_eq!(mine.len(), 1, "the scan raises one alert: {alerts:#?}");
    assert_eq!(
        mine[0].timestamp, raised_wall,
        "the alert is stamped with the wall clock as it read then"
    );
    assert_eq!(
        active_ticks(&mut rig, alerts, "198.51.100.7", 200),
        60,
        "active in the 60 ticks (60 s) of its window, then gone"
    );
}

#[test]
fn an_alert_stays_for_its_window_when_the_wall_clock_jumps_forward() {
    let mut rig = Rig::new();
    rig.tick();
    rig.clock.advance(Duration::from_secs(1));
    rig.probe("198.51.100.8", 2000..2020);
    let raised_wall = rig.clock.wall();
    let alerts = rig.snapshot();
    assert_eq!(about(&alerts, "198.51.100.8").len(), 1, "{alerts:#?}");
    rig.clock.step_wall(TimeDelta::hours(1));
    let next = rig.tick();
    let mine = about(&next, "198.51.100.8");
    assert_eq!(mine.len(), 1, "still active after the step: {next:#?}");
    assert_eq!(
        mine[0].timestamp, raised_wall,
        "its timestamp does not move"
    );
    assert_eq!(
        1 + active_ticks(&mut rig, next, "198.51.100.8", 200),
        60,
        "active in the 60 ticks (60 s) of its window, then gone"
    );
}

#[test]
fn a_port_scan_straddling_a_wall_clock_step_is_one_scan_in_its_window() {
    let mut rig = Rig::new();
    rig.tick();
    // Back: 10 ports before the step, 10 after, 2 s apart.
    rig.clock.advance(Duration::from_secs(1));
    rig.probe("198.51.100.9", 3000..3010);
    assert!(about(&rig.snapshot(), "198.51.100.9").is_empty());
    rig.clock.step_wall(TimeDelta::hours(-1));
    rig.tick();
    rig.clock.advance(Duration::from_secs(1));
    rig.probe("198.51.100.9", 3010..3020);
    let alerts = rig.snapshot();
    let mine = about(&alerts, "198.51.100.9");
    assert_eq!(mine.len(), 1, "20 ports within 2 s are a scan: {alerts:#?}");
    assert!(
        mine[0].detail.contains("20 unique ports") && mine[0].detail.contains("in 2.0s"),
        "{}",
        mine[0].detail
    );
    // Forward: the same for another source.
    rig.clock.advance(Duration::from_secs(1));
    rig.probe("198.51.100.10", 4000..4010);
    rig.snapshot();
    rig.clock.step_wall(TimeDelta::hours(2));
    rig.clock.advance(Duration::from_secs(1));
    rig.probe("198.51.100.10", 4010..4020);
    let alerts = rig.snapshot();
    let mine = about(&alerts, "198.51.100.10");
    assert_eq!(mine.len(), 1, "20 ports within 1 s are a scan: {alerts:#?}");
    assert!(mine[0].detail.contains("in 1.0s"), "{}", mine[0].detail);
}
