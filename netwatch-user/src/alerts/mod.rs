//! Network-intelligence alerts: port scans, beaconing, DNS tunnelling and
//! bandwidth, each a small pure state machine ([`port_scan`], [`beacon`],
//! [`dns_tunnel`], [`bandwidth`]) fed [`Event`]s, with netwatch-sdk 0.3.2's
//! thresholds as defaults ([`AlertConfig`]). The [`AlertEngine`] owns the
//! detectors, keeps each raised alert active for 60 s and the last 100 in a
//! history, and is what the snapshot's `alerts` field is filled from.
//!
//! Bounded under floods: an alert is one per kind and source ([`Raised::key`]);
//! raising a key that is active again updates that alert in place. At most
//! [`AlertConfig::history`] (100, the SDK's history) alerts are active: when
//! the individual slots (history − 4) are full, a new key folds into one
//! summary alert of its category ("Port Scan: more alerts than are listed",
//! its detail counting them and naming the latest), and the refusal is counted in
//! `netwatch_agent_table_dropped_total{table="alert_keys"}`
//! ([`crate::drops`]). So a snapshot never carries more than 100 alerts,
//! whatever the packets say.
//! [`feed`] turns what the agent sees each tick into events; [`counter`]
//! counts alerts per category and severity for a metrics sink.
//!
//! It must never read the system or the network, and never take the clock
//! itself: every event carries its time, so the same events always raise
//! the same alerts. Event times are monotonic ([`crate::clock::Clock::mono`]),
//! so every window and the active period are immune to wall-clock steps;
//! an alert's wall-clock `timestamp` is derived from the tick's reading of
//! both clocks ([`AlertEngine::set_clock`]).

pub mod bandwidth;
pub mod beacon;
pub mod counter;
pub mod dns_tunnel;
pub mod feed;
pub mod port_scan;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chrono::{DateTime, Utc};
use netwatch_common::wire::{Alert, AlertCategory, AlertSeverity};

/// One thing a detector may care about. Sources produce the facts; the
/// agent turns them into events ([`feed`]); each detector takes the kinds
/// it understands and ignores the rest.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A remote endpoint tried to reach a local TCP port: a SYN seen
    /// arriving (pcap), an accepted connection (a new socket row whose local
    /// port listens), or, with `failed`, an attempt this host refused or
    /// reset. The eBPF collector's `inet_sock_set_state` (SYN_RECV, resets)
    /// maps here too.
    InboundAttempt {
        at: Duration,
        remote: IpAddr,
        local: SocketAddr,
        failed: bool,
    },
    /// This host opened a connection to `remote` (a SYN sent, or a new
    /// outbound socket row, closed-socket samples included).
    Connect {
        at: Duration,
        pid: Option<u32>,
        process: Option<String>,
        local: Option<SocketAddr>,
        remote: SocketAddr,
    },
    /// The owner of a connection fed earlier (from its SYN) became known.
    Owner {
        at: Duration,
        pid: u32,
        process: Option<String>,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// A DNS query seen on the wire; `name` lower-cased.
    DnsQuery {
        at: Duration,
        client: SocketAddr,
        name: String,
    },
    /// The rate of a process or interface over the last sample.
    Rate {
        at: Duration,
        subject: Subject,
        rx_bps: f64,
        tx_bps: f64,
    },
}

/// Whose rate a [`Event::Rate`] is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Interface(String),
    Process { pid: Option<u32>, name: String },
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Interface(n) => write!(f, "interface {n}"),
            Subject::Process { pid: Some(p), name } => write!(f, "process {name} (pid {p})"),
            Subject::Process { pid: None, name } => write!(f, "process {name}"),
        }
    }
}

/// What a detector hands back when it fires.
#[derive(Debug, Clone, PartialEq)]
pub struct Raised {
    pub severity: AlertSeverity,
    pub category: AlertCategory,
    pub message: String,
    pub detail: String,
    /// What makes two alerts the same one (kind and source): raised again
    /// while active, the engine updates the active alert instead of adding
    /// another.
    pub key: String,
}

impl Raised {
    /// An alert keyed by its category and message (each detector's message
    /// names its kind and source).
    pub fn new(
        severity: AlertSeverity,
        category: AlertCategory,
        message: String,
        detail: String,
    ) -> Self {
        let key = format!("{category:?}|{message}");
        Self {
            severity,
            category,
            message,
            detail,
            key,
        }
    }
}

/// Every threshold, with netwatch-sdk 0.3.2's values as defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertConfig {
    /// Port scans: distinct ports or refused attempts from one source.
    pub port_scan: port_scan::PortScanConfig,
    /// Beaconing: connections to one endpoint at regular intervals.
    pub beacon: beacon::BeaconConfig,
    /// DNS tunnels: long or high-entropy names, many subdomains.
    pub dns_tunnel: dns_tunnel::DnsTunnelConfig,
    /// Bandwidth: interfaces and processes over a rate.
    pub bandwidth: bandwidth::BandwidthConfig,
    /// How long a raised alert stays in the snapshot's `alerts` (SDK: 60 s).
    pub active: Duration,
    /// How many raised alerts the history keeps (SDK: 100).
    pub history: usize,
}

/// SDK `ACTIVE_ALERT_TTL_SECS`.
pub const DEFAULT_ACTIVE: Duration = Duration::from_secs(60);
/// SDK alert history length.
pub const DEFAULT_HISTORY: usize = 100;

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            port_scan: Default::default(),
            beacon: Default::default(),
            dns_tunnel: Default::default(),
            bandwidth: Default::default(),
            active: DEFAULT_ACTIVE,
            history: DEFAULT_HISTORY,
        }
    }
}

/// An event time read as time since the Unix epoch: the wall time of an
/// event when monotonic and wall clocks are taken to agree (an engine
/// whose clock was never set, as in tests).
pub fn wall(at: Duration) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(
        i64::try_from(at.as_secs()).unwrap_or(i64::MAX),
        at.subsec_nanos(),
    )
    .unwrap_or_default()
}

/// Slots of [`AlertConfig::history`] kept for the per-category summary
/// alerts (one per [`AlertCategory`]).
const SUMMARY_SLOTS: usize = 4;

/// One active alert.
#[derive(Debug, Clone)]
struct Active {
    key: String,
    /// When it was last raised or updated (monotonic): it stays active
    /// [`AlertConfig::active`] after that.
    at: Duration,
    alert: Alert,
    /// For a category summary: the keys folded into it.
    folded: u64,
}

/// The detectors, the active alerts and the history.
#[derive(Debug)]
pub struct AlertEngine {
    cfg: AlertConfig,
    port_scan: port_scan::PortScan,
    beacon: beacon::Beacon,
    dns_tunnel: dns_tunnel::DnsTunnel,
    bandwidth: bandwidth::Bandwidth,
    /// Active alerts, one per key, oldest raised first; at most
    /// [`AlertConfig::history`], the category summaries included. A new key
    /// when the individual slots are full is refused and folded into its
    /// category's summary (counted as a drop of `alert_keys`).
    active: Vec<Active>,
    history: VecDeque<Alert>,
    latest: Duration,
    /// The latest reading of both clocks (monotonic, wall), for alert
    /// timestamps.
    clock: (Duration, DateTime<Utc>),
}

impl AlertEngine {
    pub fn new(cfg: AlertConfig) -> Self {
        Self {
            port_scan: port_scan::PortScan::new(cfg.port_scan.clone()),
            beacon: beacon::Beacon::new(cfg.beacon.clone()),
            dns_tunnel: dns_tunnel::DnsTunnel::new(cfg.dns_tunnel.clone()),
            bandwidth: bandwidth::Bandwidth::new(cfg.bandwidth.clone()),
            cfg,
            active: Vec::new(),
            history: VecDeque::new(),
            latest: Duration::ZERO,
            clock: (Duration::ZERO, DateTime::<Utc>::UNIX_EPOCH),
        }
    }

    /// One reading of both clocks (monotonic `mono`, wall `wall`), taken
    /// each tick: raised alerts get the wall time that is as far from
    /// `wall` as their event is from `mono`. Until set, an event time is
    /// read as time since the Unix epoch ([`wall`]).
    pub fn set_clock(&mut self, mono: Duration, wall: DateTime<Utc>) {
        self.clock = (mono, wall);
    }

    /// Feed one event to every detector; returns the alerts it raised that
    /// were not active yet (an update of an active one is not returned).
    pub fn observe(&mut self, e: &Event) -> Vec<Alert> {
        let at = match e {
            Event::InboundAttempt { at, .. }
            | Event::Connect { at, .. }
            | Event::Owner { at, .. }
            | Event::DnsQuery { at, .. }
            | Event::Rate { at, .. } => *at,
        };
        self.latest = self.latest.max(at);
        let mut raised: Vec<Raised> = Vec::new();
        raised.extend(self.port_scan.observe(e));
        raised.extend(self.beacon.observe(e));
        raised.extend(self.dns_tunnel.observe(e));
        raised.extend(self.bandwidth.observe(e));
        raised
            .into_iter()
            .filter_map(|r| self.push(at, r))
            .collect()
    }

    /// Individual (not summary) slots: all of the history when it is too
    /// short to spare the summaries theirs.
    fn slots(&self) -> usize {
        if self.cfg.history > 2 * SUMMARY_SLOTS {
            self.cfg.history - SUMMARY_SLOTS
        } else {
            self.cfg.history
        }
    }

    /// Add the alert of `r.key`, or update its detail and severity (its
    /// time and message stay: they are what makes it the same alert);
    /// returns it when it is new.
    fn push(&mut self, at: Duration, r: Raised) -> Option<Alert> {
        if let Some(a) = self.active.iter_mut().find(|a| a.key == r.key) {
            a.at = a.at.max(at);
            a.alert.detail = r.detail;
            if r.severity == AlertSeverity::Critical {
                a.alert.severity = AlertSeverity::Critical;
            }
            return None;
        }
        let alert = Alert {
            severity: r.severity,
            category: r.category,
            message: r.message,
            detail: r.detail,
            timestamp: crate::clock::wall_at(at, self.clock.0, self.clock.1),
        };
        self.history.push_back(alert.clone());
        while self.history.len() > self.cfg.history {
            self.history.pop_front();
        }
        let individual = self.active.iter().filter(|a| a.folded == 0).count();
        if individual >= self.slots() {
            crate::drops::dropped("alert_keys", self.slots(), 1);
            if self.slots() < self.cfg.history {
                self.fold(at, &alert);
            }
            return None;
        }
        self.active.push(Active {
            key: r.key,
            at,
            alert: alert.clone(),
            folded: 0,
        });
        Some(alert)
    }

    /// Update the active alert of `r.key` in place, if there is one.
    fn update(&mut self, at: Duration, r: Raised) {
        if self.active.iter().any(|a| a.key == r.key) {
            let _ = self.push(at, r);
        }
    }

    /// Fold `alert` (refused: no individual slot left) into its category's
    /// summary alert.
    fn fold(&mut self, at: Duration, alert: &Alert) {
        let key = format!("summary|{:?}", alert.category);
        let slot = match self.active.iter().position(|a| a.key == key) {
            Some(i) => i,
            None => {
                self.active.push(Active {
                    key,
                    at,
                    alert: Alert {
                        severity: alert.severity,
                        category: alert.category,
                        message: String::new(),
                        detail: String::new(),
                        timestamp: alert.timestamp,
                    },
                    folded: 0,
                });
                self.active.len() - 1
            }
        };
        let s = &mut self.active[slot];
        s.folded += 1;
        s.at = s.at.max(at);
        if alert.severity == AlertSeverity::Critical {
            s.alert.severity = AlertSeverity::Critical;
        }
        let label = match alert.category {
            AlertCategory::PortScan => "Port Scan",
            AlertCategory::Beaconing => "Beaconing",
            AlertCategory::DnsTunnel => "DNS Tunnel",
            AlertCategory::Bandwidth => "Bandwidth",
        };
        s.alert.message = format!("{label}: more alerts than are listed");
        s.alert.detail = format!(
            "{} more {} alerts not listed (at most {} alerts are); latest: {} ({})",
            s.folded, label, self.cfg.history, alert.message, alert.detail
        );
    }

    /// Drop alerts older than the active period and detector state nobody
    /// refreshed, as of `now` (call once per tick). Aggregated alerts whose
    /// counts moved since the last call are updated first.
    pub fn expire(&mut self, now: Duration) {
        let now = now.max(self.latest);
        for r in self.dns_tunnel.updates() {
            self.update(now, r);
        }
        let active = self.cfg.active;
        self.active.retain(|a| now.saturating_sub(a.at) < active);
        self.port_scan.expire(now);
        self.beacon.expire(now);
        self.dns_tunnel.expire(now);
        self.bandwidth.expire(now);
    }

    /// Alerts raised within the active period, oldest first: the
    /// snapshot's `alerts`; at most [`AlertConfig::history`].
    pub fn active(&self) -> Vec<Alert> {
        self.active.iter().map(|a| a.alert.clone()).collect()
    }

    /// The last [`AlertConfig::history`] alerts raised, oldest first.
    pub fn history(&self) -> &VecDeque<Alert> {
        &self.history
    }
}

/// The engine and its feed: what the agent holds.
#[derive(Debug)]
pub struct Detectors {
    pub engine: AlertEngine,
    feed: feed::Feed,
}

impl Detectors {
    pub fn new(cfg: AlertConfig) -> Self {
        Self {
            engine: AlertEngine::new(cfg),
            feed: feed::Feed::new(),
        }
    }

    /// Feed one tick's observations; returns the active alerts (the
    /// snapshot's `alerts`).
    pub fn tick(&mut self, t: feed::Tick<'_>) -> Vec<Alert> {
        self.engine.set_clock(t.now, t.wall);
        for e in self.feed.events(t) {
            for a in self.engine.observe(&e) {
                log::warn!(
                    "alert: {} ({})",
                    crate::text::Visible(&a.message),
                    crate::text::Visible(&a.detail)
                );
            }
        }
        self.engine.expire(t.now);
        self.engine.active()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests that make `alert_keys` drops, one at a time: the counter
    /// is process-wide.
    static ALERT_KEYS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn alert_keys() -> std::sync::MutexGuard<'static, ()> {
        ALERT_KEYS.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn s(x: u64) -> Duration {
        Duration::from_secs(1_700_000_000 + x)
    }

    fn rate(at: Duration, iface: &str, bps: f64) -> Event {
        Event::Rate {
            at,
            subject: Subject::Interface(iface.into()),
            rx_bps: bps,
            tx_bps: 0.0,
        }
    }

    #[test]
    fn alerts_stay_active_sixty_seconds() {
        let mut e = AlertEngine::new(AlertConfig::default());
        e.observe(&rate(s(0), "eth0", 2e8));
        assert_eq!(e.observe(&rate(s(1), "eth0", 2e8)).len(), 1);
        e.expire(s(60));
        assert_eq!(e.active().len(), 1, "59 s old: still active");
        e.expire(s(61));
        assert!(e.active().is_empty(), "60 s old: expired");
        assert_eq!(e.history().len(), 1, "history keeps it");
        assert_eq!(e.history()[0].timestamp, wall(s(1)));
    }

    #[test]
    fn history_keeps_the_last_hundred() {
        let _serial = alert_keys();
        let mut e = AlertEngine::new(AlertConfig::default());
        for i in 0..120u64 {
            let name = format!("if{i}");
            e.observe(&rate(s(i), &name, 2e8));
            e.observe(&rate(s(i), &name, 2e8));
        }
        assert_eq!(e.history().len(), 100);
        assert_eq!(e.history()[0].message, "if20: bandwidth threshold exceeded");
        // 96 listed one by one, the other 24 in one summary.
        let active = e.active();
        assert_eq!(active.len(), 97);
        assert_eq!(active[95].message, "if95: bandwidth threshold exceeded");
        assert_eq!(active[96].message, "Bandwidth: more alerts than are listed");
        assert!(
            active[96].detail.starts_with(
                "24 more Bandwidth alerts not listed (at most 100 alerts are); latest: if119"
            ),
            "{}",
            active[96].detail
        );
    }

    #[test]
    fn a_short_history_is_the_bound_too() {
        let _serial = alert_keys();
        let mut e = AlertEngine::new(AlertConfig {
            history: 3,
            ..AlertConfig::default()
        });
        for i in 0..10u64 {
            let name = format!("if{i}");
            e.observe(&rate(s(i), &name, 2e8));
            e.observe(&rate(s(i), &name, 2e8));
        }
        let active = e.active();
        assert_eq!(active.len(), 3, "no room for summaries: the rest dropped");
        assert_eq!(active[2].message, "if2: bandwidth threshold exceeded");
    }

    #[test]
    fn a_flood_of_keys_is_at_most_a_hundred_alerts_and_counted() {
        let _serial = alert_keys();
        let mut e = AlertEngine::new(AlertConfig::default());
        let before = crate::drops::total("alert_keys");
        // 1,000 sources scanning 20 ports each (the port-scan detector's
        // table holds them all: no eviction there).
        for src in 0..1_000u32 {
            let remote = IpAddr::from(std::net::Ipv4Addr::from(0xc633_0000 + src));
            for port in 1..=20u16 {
                e.observe(&Event::InboundAttempt {
                    at: s(1),
                    remote,
                    local: SocketAddr::from(([127, 0, 0, 1], port)),
                    failed: false,
                });
            }
        }
        e.expire(s(2));
        let active = e.active();
        assert_eq!(active.len(), 97);
        assert_eq!(active[96].message, "Port Scan: more alerts than are listed");
        assert!(
            active[96].detail.starts_with("904 more Port Scan alerts"),
            "{}",
            active[96].detail
        );
        assert_eq!(crate::drops::total("alert_keys") - before, 904);
        e.expire(s(60));
        assert_eq!(e.active().len(), 97);
        e.expire(s(61));
        assert!(e.active().is_empty(), "60 s after the last raise");
    }
}
