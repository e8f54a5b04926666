//! The snapshot's DNS analytics, built from the DNS events a source yields
//! (today the pcap source's port-53 messages): queries, responses,
//! NXDOMAINs, response latency and the most queried domains per interval,
//! with the semantics of netwatch-sdk 0.3.2's `NetworkIntelCollector` (same
//! latency buckets, same base-domain rule, top 20). It never reads the
//! system or the network; it only counts the events it is given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use netwatch_common::wire::DnsAnalytics;

use crate::source::{DnsEvent, DnsEventKind, Protocol};

/// netwatch-sdk's base domain: the last two labels (`a.b.example.com` →
/// `example.com`); a single label as is.
pub fn base_domain(name: &str) -> String {
    let parts: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    match parts.as_slice() {
        [.., a, b] => format!("{a}.{b}"),
        _ => name.to_string(),
    }
}

/// Latency bucket for a response `latency` after its query:
/// <5, <10, <25, <50, <100, <250, <500, ≥500 ms.
pub fn latency_bucket(latency: Duration) -> usize {
    const UPPER_MS: [f64; 7] = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0];
    let ms = latency.as_secs_f64() * 1000.0;
    UPPER_MS.iter().position(|&u| ms < u).unwrap_or(7)
}

/// Domains listed in [`DnsAnalytics::top_domains`].
pub const TOP_DOMAINS: usize = 20;
/// Queries waiting for a response longer than this (monotonic time) are
/// forgotten.
pub const OUTSTANDING_TIMEOUT: Duration = Duration::from_secs(5);
/// How far the capture timestamps' latency may exceed the monotonic
/// arrival times' before it is taken for a wall-clock step: packets wait
/// up to the capture's read timeout (100 ms) before the capture thread
/// reads them, so arrival times can be that much closer together.
pub const CAPTURE_SLACK: Duration = Duration::from_secs(1);
/// Queries waiting for their response, at most (7/8 of a power of two: a
/// full map does not grow its buckets). When full, a new query is not
/// waited for (its response then counts without a latency), counted in
/// [`crate::drops`] as `dns_outstanding`; they leave after
/// [`OUTSTANDING_TIMEOUT`].
pub const MAX_OUTSTANDING: usize = 7_168;
/// Distinct base domains counted per interval, at most. When full, a new
/// one is not counted (the interval's top list is of the ones counted),
/// counted in [`crate::drops`] as `dns_domains`; the table empties every
/// interval.
pub const MAX_DOMAINS: usize = 7_168;

/// Per-interval DNS counters fed one event at a time.
///
/// A query (QR = 0) is matched to its response (QR = 1) by transaction id
/// and the client's endpoint (the query's source, the response's
/// destination). Latency is the difference of the two packets' capture
/// timestamps (precise, but wall clock), unless it is negative or exceeds
/// the difference of their monotonic arrival times by more than
/// [`CAPTURE_SLACK`] (the wall clock was stepped in between): then the
/// arrival times' difference. Counts cover the interval since the last
/// [`Self::take`]; queries still waiting are carried over, and forgotten
/// after [`OUTSTANDING_TIMEOUT`] of monotonic time.
///
/// Besides the host-wide analytics it counts each client endpoint's
/// lookups ([`ClientDns`], taken with [`Self::take_clients`]): the
/// per-process figures are those endpoints joined to the sockets' owners
/// (`crate::snapshot::quality`).
#[derive(Debug, Default)]
pub struct DnsTracker {
    /// (txid, client) → the query's (arrival, capture timestamp, protocol).
    outstanding: HashMap<(u16, SocketAddr), (Duration, Duration, Protocol)>,
    domains: HashMap<String, u32>,
    analytics: DnsAnalytics,
    clients: HashMap<ClientKey, ClientDns>,
}

/// A DNS client endpoint: the socket that sent the queries.
pub type ClientKey = (Protocol, SocketAddr);

/// One client endpoint's lookups over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientDns {
    pub queries: u64,
    pub responses: u64,
    /// Responses with a non-zero RCODE.
    pub failures: u64,
    pub nxdomain: u64,
    /// Queries given up on ([`OUTSTANDING_TIMEOUT`]).
    pub unanswered: u64,
    /// Responses matched to their query, and their latencies' sum and
    /// maximum (ms).
    pub timed: u64,
    pub latency_ms_sum: f64,
    pub latency_ms_max: f64,
}

/// Client endpoints counted per interval, at most (7/8 of a power of two).
/// When full, a new endpoint's messages still count in the analytics but
/// not per process, counted in [`crate::drops`] as `dns_clients`; the
/// table empties every interval.
pub const MAX_CLIENTS: usize = 7_168;

/// The latency of response `r` to a query that arrived at `sent` (monotonic)
/// and was stamped `captured` (wall): see [`DnsTracker`].
fn latency((sent, captured, _): (Duration, Duration, Protocol), r: &DnsEvent) -> Duration {
    let arrival = r.at.saturating_sub(sent);
    match r.captured.checked_sub(captured) {
        Some(wall) if wall <= arrival + CAPTURE_SLACK => wall,
        _ => arrival,
    }
}

impl DnsTracker {
    /// Count one DNS message a source saw.
    pub fn observe(&mut self, e: &DnsEvent) {
        let a = &mut self.analytics;
        let client = client_entry(&mut self.clients, (e.protocol, e.client));
        match &e.kind {
            DnsEventKind::Response { rcode } => {
                a.total_responses += 1;
                if *rcode == 3 {
                    a.nxdomain_count += 1;
                }
                let took = self
                    .outstanding
                    .remove(&(e.id, e.client))
                    .map(|sent| latency(sent, e));
                if let Some(took) = took {
                    a.latency_buckets[latency_bucket(took)] += 1;
                }
                if let Some(c) = client {
                    c.responses += 1;
                    if *rcode != 0 {
                        c.failures += 1;
                    }
                    if *rcode == 3 {
                        c.nxdomain += 1;
                    }
                    if let Some(took) = took {
                        let ms = took.as_secs_f64() * 1000.0;
                        c.timed += 1;
                        c.latency_ms_sum += ms;
                        c.latency_ms_max = c.latency_ms_max.max(ms);
                    }
                }
            }
            DnsEventKind::Query { name } => {
                a.total_queries += 1;
                if let Some(c) = client {
                    c.queries += 1;
                }
                let key = (e.id, e.client);
                if self.outstanding.len() < MAX_OUTSTANDING || self.outstanding.contains_key(&key) {
                    self.outstanding.insert(key, (e.at, e.captured, e.protocol));
                } else {
                    crate::drops::dropped("dns_outstanding", MAX_OUTSTANDING, 1);
                }
                if let Some(name) = name {
                    let d = base_domain(name);
                    if let Some(n) = self.domains.get_mut(&d) {
                        *n = n.saturating_add(1);
                    } else if self.domains.len() < MAX_DOMAINS {
                        self.domains.insert(d, 1);
                    } else {
                        crate::drops::dropped("dns_domains", MAX_DOMAINS, 1);
                    }
                }
            }
        }
    }

    /// The interval's analytics as of monotonic time `now`; counters
    /// restart, outstanding queries that arrived more than
    /// [`OUTSTANDING_TIMEOUT`] before `now` are dropped.
    pub fn take(&mut self, now: Duration) -> DnsAnalytics {
        let cutoff = now.saturating_sub(OUTSTANDING_TIMEOUT);
        let clients = &mut self.clients;
        self.outstanding.retain(|(_, client), (sent, _, protocol)| {
            let keep = *sent >= cutoff;
            if !keep {
                if let Some(c) = client_entry(clients, (*protocol, *client)) {
                    c.unanswered += 1;
                }
            }
            keep
        });
        // A new map each interval: a flood's interval does not leave its
        // buckets behind.
        let mut top: Vec<(String, u32)> = std::mem::take(&mut self.domains).into_iter().collect();
        if self.outstanding.capacity() > 4 * self.outstanding.len() + 1024 {
            self.outstanding.shrink_to_fit();
        }
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_DOMAINS);
        let mut out = std::mem::take(&mut self.analytics);
        out.top_domains = top;
        out
    }

    /// The analytics counted since the last [`Self::take`], without
    /// restarting them or forgetting any waiting query.
    pub fn peek(&self) -> DnsAnalytics {
        let mut top: Vec<(String, u32)> =
            self.domains.iter().map(|(d, n)| (d.clone(), *n)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_DOMAINS);
        let mut out = self.analytics.clone();
        out.top_domains = top;
        out
    }

    /// Each client endpoint's lookups since the last call (call it after
    /// [`Self::take`], which counts the queries given up on).
    pub fn take_clients(&mut self) -> HashMap<ClientKey, ClientDns> {
        std::mem::take(&mut self.clients)
    }

    /// Queries waiting for their response.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

/// `key`'s counters, made if there is room ([`MAX_CLIENTS`]).
fn client_entry(
    clients: &mut HashMap<ClientKey, ClientDns>,
    key: ClientKey,
) -> Option<&mut ClientDns> {
    if clients.len() >= MAX_CLIENTS && !clients.contains_key(&key) {
        crate::drops::dropped("dns_clients", MAX_CLIENTS, 1);
        return None;
    }
    Some(clients.entry(key).or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn query(id: u16, client: SocketAddr, name: &str, at: Duration) -> DnsEvent {
        let name = Some(name.to_string());
        DnsEvent::udp(at, client, id, DnsEventKind::Query { name })
    }

    fn response(id: u16, client: SocketAddr, rcode: u8, at: Duration) -> DnsEvent {
        DnsEvent::udp(at, client, id, DnsEventKind::Response { rcode })
    }

    #[test]
    fn base_domain_matches_the_sdk() {
        assert_eq!(base_domain("a.b.c.d."), "c.d");
        assert_eq!(base_domain("host"), "host");
        assert_eq!(base_domain("example.com"), "example.com");
        assert_eq!(base_domain("."), ".");
    }

    #[test]
    fn latency_buckets_match_the_sdk() {
        let ms = Duration::from_micros;
        let cases = [
            (0, 0),
            (4_999, 0),
            (5_000, 1),
            (9_999, 1),
            (10_000, 2),
            (24_999, 2),
            (25_000, 3),
            (50_000, 4),
            (100_000, 5),
            (250_000, 6),
            (499_999, 6),
            (500_000, 7),
            (60_000_000, 7),
        ];
        for (us, b) in cases {
            assert_eq!(latency_bucket(ms(us)), b, "{us}us");
        }
    }

    #[test]
    fn tracker_counts_matches_and_resets_per_interval() {
        let c1 = sa("10.0.0.5:40001");
        let c2 = sa("10.0.0.5:40002");
        let t = |ms: u64| Duration::from_secs(1_700_000_000) + Duration::from_millis(ms);
        let mut d = DnsTracker::default();
        d.observe(&query(1, c1, "www.example.com", t(0)));
        d.observe(&query(1, c2, "api.example.com", t(1)));
        d.observe(&query(2, c1, "nope.test.org", t(2)));
        d.observe(&query(3, c1, "lost.example.net", t(3)));
        // Same txid, other client: matched to c2's query, not c1's.
        d.observe(&response(1, c2, 0, t(31)));
        d.observe(&response(1, c1, 0, t(3)));
        d.observe(&response(2, c1, 3, t(702)));
        // A response nobody asked for: counted, no latency.
        d.observe(&response(9, c1, 0, t(800)));
        // A query whose name was unreadable counts as a query.
        d.observe(&DnsEvent {
            at: t(900),
            captured: t(900),
            client: c2,
            id: 77,
            protocol: Protocol::Udp,
            kind: DnsEventKind::Query { name: None },
        });
        let a = d.take(t(900));
        assert_eq!(a.total_queries, 5);
        assert_eq!(a.total_responses, 4);
        assert_eq!(a.nxdomain_count, 1);
        assert_eq!(a.latency_buckets, [1, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(
            a.top_domains,
            vec![
                ("example.com".to_string(), 2),
                ("example.net".to_string(), 1),
                ("test.org".to_string(), 1)
            ]
        );
        assert_eq!(d.outstanding(), 2);
        // Next interval starts from zero; the late answer still matches.
        d.observe(&response(3, c1, 0, t(1003)));
        let a = d.take(t(1003));
        assert_eq!((a.total_queries, a.total_responses), (0, 1));
        assert_eq!(a.latency_buckets, [0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(a.top_domains.is_empty());
        // Queries never answered are forgotten after 5 s.
        d.observe(&query(4, c1, "a.b", t(2000)));
        d.observe(&query(5, c1, "a.b", t(8000)));
        d.take(t(8000));
        assert_eq!(d.outstanding(), 1);
    }

    #[test]
    fn a_flood_of_unanswered_queries_is_bounded_and_counted() {
        let c = sa("127.0.0.1:40000");
        let t = |ms: u64| Duration::from_secs(1_700_000_000) + Duration::from_millis(ms);
        let mut d = DnsTracker::default();
        let (o, n) = (
            crate::drops::total("dns_outstanding"),
            crate::drops::total("dns_domains"),
        );
        for i in 0..20_000u32 {
            let client = SocketAddr::new(c.ip(), 10_000 + (i % 50_000) as u16);
            d.observe(&query(i as u16, client, &format!("x.p{i:05}.com"), t(0)));
        }
        assert_eq!(d.outstanding(), MAX_OUTSTANDING);
        assert_eq!(crate::drops::total("dns_outstanding") - o, 20_000 - 7_168);
        assert_eq!(crate::drops::total("dns_domains") - n, 20_000 - 7_168);
        let a = d.take(t(1));
        assert_eq!(a.total_queries, 20_000, "every query counted");
        assert_eq!(a.top_domains.len(), TOP_DOMAINS);
        d.take(t(6_000));
        assert_eq!(d.outstanding(), 0);
    }

    #[test]
    fn each_client_endpoint_counts_its_own_lookups_and_the_ones_given_up_on() {
        let t = Duration::from_millis;
        let (c1, c2) = (sa("10.0.0.5:40001"), sa("10.0.0.6:40002"));
        let mut d = DnsTracker::default();
        d.observe(&query(1, c1, "a.example.com", t(0)));
        d.observe(&response(1, c1, 0, t(4)));
        d.observe(&query(2, c1, "b.example.com", t(10)));
        d.observe(&response(2, c1, 3, t(30)));
        d.observe(&query(3, c2, "c.example.com", t(10)));
        d.take(t(1_000));
        let cl = d.take_clients();
        let one = cl[&(Protocol::Udp, c1)];
        assert_eq!(
            (
                one.queries,
                one.responses,
                one.failures,
                one.nxdomain,
                one.unanswered
            ),
            (2, 2, 1, 1, 0)
        );
        assert_eq!(
            (one.timed, one.latency_ms_sum, one.latency_ms_max),
            (2, 24.0, 20.0)
        );
        assert_eq!(cl[&(Protocol::Udp, c2)].queries, 1);
        // c2's query is given up on once OUTSTANDING_TIMEOUT has passed.
        d.take(t(6_000));
        let cl = d.take_clients();
        assert_eq!(cl[&(Protocol::Udp, c2)].unanswered, 1);
        assert_eq!(cl.len(), 1);
    }
}
