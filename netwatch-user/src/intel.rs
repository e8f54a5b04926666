//! The alert detectors and the DNS tracker as one pure type,
//! [`NetworkIntel`], fed with events by the embedding program: netwatch-sdk
//! 0.3.2's `NetworkIntelCollector` (`on_conn_attempt`, `on_dns_query`,
//! `on_dns_response`, `on_interface_rate`, `tick`, `active_alerts`,
//! `alert_history`, `dns_analytics`), for a program that sees packets or
//! connections of its own (a capture, a proxy, a firewall log) and wants
//! netwatch's port-scan, beacon, DNS-tunnel and bandwidth detectors and its
//! DNS analytics on them.
//!
//! A [`crate::Collector`] built with [`crate::CollectorBuilder::alerts`]
//! runs the same detectors on what its source sees; this is the second way
//! in, with no source at all. The thresholds are the same [`AlertConfig`].
//!
//! It must never read the system or the network, start a thread, or read
//! the clock past [`NetworkIntel::new`]: every event carries its time, so
//! the same events always raise the same alerts. Everything it keeps is
//! bounded (the detectors' tables and the DNS tracker's, each refusal
//! counted as the agent's are).

#![warn(missing_docs)]

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use netwatch_common::wire::{Alert, DnsAnalytics};

use crate::alerts::{AlertEngine, Event, Subject};
use crate::snapshot::dns::DnsTracker;
use crate::source::{DnsEvent, DnsEventKind};

pub use crate::alerts::bandwidth::BandwidthConfig;
pub use crate::alerts::beacon::BeaconConfig;
pub use crate::alerts::dns_tunnel::DnsTunnelConfig;
pub use crate::alerts::port_scan::PortScanConfig;
pub use crate::alerts::AlertConfig;

/// A remote endpoint tried to reach a local TCP port (a SYN arriving, an
/// accepted connection, a refused one): what the port-scan detector
/// counts. netwatch-sdk: `ConnAttemptEvent { src_ip, dst_ip, dst_port }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundAttempt {
    /// When it was seen.
    pub at: Instant,
    /// Who tried (the SDK's `src_ip`).
    pub remote: IpAddr,
    /// The local address and port tried (the SDK's `dst_ip`, `dst_port`).
    pub local: SocketAddr,
    /// The attempt was refused or reset by this host (counted towards
    /// [`PortScanConfig::failed_attempts`]).
    pub refused: bool,
}

/// This host opened a connection to `remote`: what the beacon detector
/// looks at (one local address connecting to one remote endpoint at
/// regular intervals). netwatch-sdk feeds its beacon detector from the
/// same `ConnAttemptEvent` as its port-scan one; netwatch tells the two
/// directions apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConnect {
    /// When it was seen.
    pub at: Instant,
    /// The local end, when known (part of the beacon's key with `remote`).
    pub local: Option<SocketAddr>,
    /// Where it connected to.
    pub remote: SocketAddr,
    /// The process that connected, when known (named in the alert).
    pub pid: Option<u32>,
    /// That process's name, when known.
    pub process: Option<String>,
}

/// A DNS query seen on the wire. netwatch-sdk: `DnsQueryEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    /// When it was seen.
    pub at: Instant,
    /// Transaction id.
    pub id: u16,
    /// The client's endpoint (the query's source address and port): a
    /// response is matched to its query by `id` and this endpoint.
    pub client: SocketAddr,
    /// The first question's name (compared lower-cased; a trailing dot is
    /// allowed).
    pub name: String,
}

/// A DNS response seen on the wire. netwatch-sdk: `DnsResponseEvent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResponse {
    /// When it was seen: its latency is `at` minus its query's.
    pub at: Instant,
    /// Transaction id.
    pub id: u16,
    /// The client's endpoint (the response's destination address and port).
    pub client: SocketAddr,
    /// RCODE (0 no error, 3 NXDOMAIN, ...).
    pub rcode: u8,
}

/// An interface's rate over the last sample (e.g. the `rx_rate` and
/// `tx_rate` of a [`crate::wire::InterfaceMetric`]). netwatch-sdk:
/// `InterfaceRateEvent`.
#[derive(Debug, Clone, PartialEq)]
pub struct InterfaceRate {
    /// When the sample ended.
    pub at: Instant,
    /// Interface name.
    pub interface: String,
    /// Bytes per second received.
    pub rx_bps: f64,
    /// Bytes per second sent.
    pub tx_bps: f64,
}

/// A process's rate over the last sample (e.g. a
/// [`crate::wire::ProcessBandwidth`] row's rates), judged against
/// [`BandwidthConfig::process_bps`]. A netwatch addition.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessRate {
    /// When the sample ended.
    pub at: Instant,
    /// The process, when known.
    pub pid: Option<u32>,
    /// Its name.
    pub name: String,
    /// Bytes per second received.
    pub rx_bps: f64,
    /// Bytes per second sent.
    pub tx_bps: f64,
}

/// netwatch's alert detectors (port scans, beacons, DNS tunnels,
/// bandwidth) and DNS analytics, fed with events by hand.
///
/// Each `on_*` call returns the alerts it raised that were not active yet;
/// [`Self::tick`] ends the alerts' active period (call it every second or
/// so, as the agent does each snapshot); [`Self::take_dns_analytics`]
/// closes a DNS interval. Events are judged by their own `at`, never by
/// when they are fed, and an event older than [`NetworkIntel::new`] counts
/// as if seen then. An alert is one per kind and source: raised again
/// while active, it is updated in place, not repeated.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use std::time::{Duration, Instant};
///
/// use netwatch::intel::{InboundAttempt, NetworkIntel};
/// use netwatch::wire::AlertCategory;
///
/// let mut intel = NetworkIntel::new(); // netwatch-sdk's thresholds
/// let t0 = Instant::now();
/// let scanner: IpAddr = "198.51.100.7".parse().unwrap();
/// // 20 distinct ports within 30 s make a port scan.
/// for i in 0..20u16 {
///     let raised = intel.on_conn_attempt(InboundAttempt {
///         at: t0 + Duration::from_millis(100 * u64::from(i)),
///         remote: scanner,
///         local: SocketAddr::new("10.0.0.1".parse().unwrap(), 1000 + i),
///         refused: true,
///     });
///     assert_eq!(raised.len(), usize::from(i == 19));
/// }
/// let active = intel.tick(t0 + Duration::from_secs(2));
/// assert_eq!(active[0].category, AlertCategory::PortScan);
/// assert_eq!(active[0].message, "Port scan from 198.51.100.7");
/// // Active for 60 s after its last update, then only in the history.
/// assert!(intel.tick(t0 + Duration::from_secs(62)).is_empty());
/// assert_eq!(intel.alert_history().len(), 1);
/// ```
#[derive(Debug)]
pub struct NetworkIntel {
    engine: AlertEngine,
    dns: DnsTracker,
    /// Event times are kept as the time since this instant.
    origin: Instant,
}

impl Default for NetworkIntel {
    fn default() -> Self {
        Self::new()
    }
}

impl NetworkIntel {
    /// With netwatch-sdk 0.3.2's thresholds ([`AlertConfig::default`]).
    pub fn new() -> Self {
        Self::with_config(AlertConfig::default())
    }

    /// With these thresholds. Reads both clocks once: alert timestamps are
    /// the wall time as far from this reading as their event is from this
    /// instant (see [`Self::set_clock`]).
    pub fn with_config(config: AlertConfig) -> Self {
        let mut intel = Self {
            engine: AlertEngine::new(config),
            dns: DnsTracker::default(),
            origin: Instant::now(),
        };
        intel.engine.set_clock(Duration::ZERO, Utc::now());
        intel
    }

    /// Tie the monotonic instant `mono` to the wall time `wall`: alerts
    /// raised from then on are stamped `wall` moved by how far their event
    /// is from `mono`. Call it when the wall clock was stepped, or to make
    /// timestamps reproducible.
    pub fn set_clock(&mut self, mono: Instant, wall: DateTime<Utc>) {
        let mono = self.since_origin(mono);
        self.engine.set_clock(mono, wall);
    }

    fn since_origin(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.origin)
    }

    fn observe(&mut self, e: Event) -> Vec<Alert> {
        self.engine.observe(&e)
    }

    /// An inbound connection attempt: the port-scan detector (a source
    /// reaching [`PortScanConfig::distinct_ports`] distinct local ports,
    /// or [`PortScanConfig::failed_attempts`] refused ones, within
    /// [`PortScanConfig::window`]).
    pub fn on_conn_attempt(&mut self, e: InboundAttempt) -> Vec<Alert> {
        let at = self.since_origin(e.at);
        self.observe(Event::InboundAttempt {
            at,
            remote: e.remote,
            local: e.local,
            failed: e.refused,
        })
    }

    /// A connection this host opened: the beacon detector (regular
    /// intervals to one remote endpoint, [`BeaconConfig`]).
    pub fn on_connect(&mut self, e: OutboundConnect) -> Vec<Alert> {
        let at = self.since_origin(e.at);
        self.observe(Event::Connect {
            at,
            pid: e.pid,
            process: e.process,
            local: e.local,
            remote: e.remote,
        })
    }

    /// A DNS query: counted in the DNS analytics (queries, top domains by
    /// base domain) and judged by the DNS-tunnel detector (long or
    /// high-entropy names, many subdomains of one parent domain).
    pub fn on_dns_query(&mut self, e: DnsQuery) -> Vec<Alert> {
        let at = self.since_origin(e.at);
        let name = e.name.to_ascii_lowercase();
        self.dns.observe(&DnsEvent::udp(
            at,
            e.client,
            e.id,
            DnsEventKind::Query {
                name: Some(name.clone()),
            },
        ));
        self.observe(Event::DnsQuery {
            at,
            client: e.client,
            name,
        })
    }

    /// A DNS response: counted in the DNS analytics (responses, NXDOMAINs,
    /// and, when its query was fed within the last 5 s, its latency
    /// bucket: <5, <10, <25, <50, <100, <250, <500, ≥500 ms).
    pub fn on_dns_response(&mut self, e: DnsResponse) {
        let at = self.since_origin(e.at);
        self.dns.observe(&DnsEvent::udp(
            at,
            e.client,
            e.id,
            DnsEventKind::Response { rcode: e.rcode },
        ));
    }

    /// An interface's rate: the bandwidth detector
    /// ([`BandwidthConfig::interface_bps`] for
    /// [`BandwidthConfig::consecutive`] samples, or a sudden multiple of
    /// the interface's own baseline).
    pub fn on_interface_rate(&mut self, e: InterfaceRate) -> Vec<Alert> {
        let at = self.since_origin(e.at);
        self.observe(Event::Rate {
            at,
            subject: Subject::Interface(e.interface),
            rx_bps: e.rx_bps,
            tx_bps: e.tx_bps,
        })
    }

    /// A process's rate: the bandwidth detector, with
    /// [`BandwidthConfig::process_bps`].
    pub fn on_process_rate(&mut self, e: ProcessRate) -> Vec<Alert> {
        let at = self.since_origin(e.at);
        self.observe(Event::Rate {
            at,
            subject: Subject::Process {
                pid: e.pid,
                name: e.name,
            },
            rx_bps: e.rx_bps,
            tx_bps: e.tx_bps,
        })
    }

    /// As of `now`: alerts not raised or updated for
    /// [`AlertConfig::active`] leave the active list, detector state nobody
    /// refreshed is forgotten, and aggregated DNS-tunnel alerts take their
    /// latest counts. Returns the active alerts ([`Self::active_alerts`]).
    /// netwatch-sdk: `tick()`, which reads the clock itself.
    pub fn tick(&mut self, now: Instant) -> Vec<Alert> {
        let now = self.since_origin(now);
        self.engine.expire(now);
        self.engine.active()
    }

    /// The alerts raised within the active period, oldest first, at most
    /// [`AlertConfig::history`] (past that, new ones fold into one summary
    /// alert per category).
    pub fn active_alerts(&self) -> Vec<Alert> {
        self.engine.active()
    }

    /// The last [`AlertConfig::history`] alerts raised, oldest first.
    pub fn alert_history(&self) -> &VecDeque<Alert> {
        self.engine.history()
    }

    /// The DNS analytics counted since the last
    /// [`Self::take_dns_analytics`] (or [`NetworkIntel::new`]), the 20 most
    /// queried base domains first. netwatch-sdk's `dns_analytics()` counts
    /// from its start, never restarting.
    pub fn dns_analytics(&self) -> DnsAnalytics {
        self.dns.peek()
    }

    /// The DNS analytics of the interval that ends now, as a snapshot's
    /// `dns_analytics`: the counts restart, and queries still unanswered
    /// 5 s before `now` are given up (a late response then counts without
    /// a latency).
    pub fn take_dns_analytics(&mut self, now: Instant) -> DnsAnalytics {
        let out = self.dns.take(self.since_origin(now));
        // Per-client figures are for the agent's process rows: not kept.
        self.dns.take_clients();
        out
    }
}
