//! DNS-tunnel detector: query names that are unusually long or
//! high-entropy, or a high query rate to one parent domain with many
//! distinct subdomains. Defaults as netwatch-sdk 0.3.2: a name longer than
//! 80 bytes (warning), or more than 50 queries in a minute to one parent
//! domain (the SDK's base domain, last two labels) with more than 30
//! distinct first labels (critical). The entropy test is a netwatch
//! addition. Pure: it only looks at the [`Event::DnsQuery`]s it is given.
//!
//! One alert per (cause, client address) per window, never one per forged
//! name: the first suspicious query of a client raises it (with the SDK's
//! message), later ones within the window add to its counts (queries,
//! distinct parent domains, a few examples), handed to the engine as
//! updates of the same alert ([`DnsTunnel::updates`]).
//!
//! Bounded, each table with its eviction rule and its drops counted in
//! [`crate::drops`]:
//! - parent domains in the rate window: [`MAX_DOMAINS`]; when a new one
//!   comes and the table is full, the half least recently queried is
//!   evicted (`dns_tunnel_parents`);
//! - first labels per parent domain: the window's last
//!   `4 × (max_queries + 1)`, oldest dropped first (`dns_tunnel_labels`),
//!   kept as 64-bit hashes, not strings;
//! - aggregated alerts: [`MAX_SOURCES`] (cause, client) keys; a client
//!   beyond them is folded into one "other clients" alert per cause
//!   (`dns_tunnel_sources`); each remembers at most [`MAX_PARENTS`]
//!   distinct parent domains (hashes; past that the alert says "more than").
//!
//! Names in alert texts pass through [`crate::text::visible`].

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netwatch_common::wire::{AlertCategory, AlertSeverity};

use super::{Event, Raised};
use crate::snapshot::dns::base_domain;
use crate::text::visible;

/// Thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsTunnelConfig {
    /// A name longer than this many bytes is suspicious (SDK: 80).
    pub max_name_bytes: usize,
    /// Queries to one parent domain within [`Self::window`] above which…
    pub max_queries: usize,
    /// …and distinct first labels above which it is a tunnel (SDK: 50, 30).
    pub max_subdomains: usize,
    /// The rate window and the de-duplication window (SDK: one minute).
    pub window: Duration,
    /// Shannon entropy, bits per character, of the labels left of the
    /// parent domain at or above which a name is suspicious; 0 turns it
    /// off. netwatch addition.
    pub entropy_bits: f64,
    /// The entropy test applies only to names whose subdomain part is at
    /// least this long (short random-looking labels are common).
    pub entropy_min_len: usize,
}

impl Default for DnsTunnelConfig {
    fn default() -> Self {
        Self {
            max_name_bytes: 80,
            max_queries: 50,
            max_subdomains: 30,
            window: Duration::from_secs(60),
            entropy_bits: 4.2,
            entropy_min_len: 32,
        }
    }
}

/// Parent domains tracked at once (SDK `MAX_TRACKED_DOMAINS`).
pub const MAX_DOMAINS: usize = 500;
/// (cause, client) alert aggregates kept at once.
pub const MAX_SOURCES: usize = 128;
/// Distinct parent domains remembered per aggregate.
pub const MAX_PARENTS: usize = 4096;
/// Example parent domains named in an aggregated alert.
const EXAMPLES: usize = 3;
/// Characters of a name shown in an alert.
const SHOWN_CHARS: usize = 120;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Cause {
    LongName,
    Entropy,
    Rate,
}

#[derive(Debug, Default)]
struct Domain {
    /// (arrival, hash of the first label) of the window's queries.
    queries: VecDeque<(Duration, u64)>,
}

/// One alert's counts: a cause, from one client (or, `None`, from the
/// clients past [`MAX_SOURCES`]), within one window.
#[derive(Debug)]
struct Aggregate {
    start: Duration,
    last: Duration,
    queries: u64,
    /// Hashes of the distinct parent domains, at most [`MAX_PARENTS`].
    parents: HashSet<u64>,
    /// A parent not remembered came (there were more than [`MAX_PARENTS`]).
    more_parents: bool,
    examples: Vec<String>,
    /// The latest query, as shown, and who asked it.
    latest: String,
    latest_client: SocketAddr,
    /// Counts moved since the engine last took [`DnsTunnel::updates`].
    dirty: bool,
    /// The alert's key and message, fixed when it was raised.
    key: String,
    message: String,
    severity: AlertSeverity,
}

/// Per-domain windows and per-(cause, client) alert aggregates.
#[derive(Debug)]
pub struct DnsTunnel {
    cfg: DnsTunnelConfig,
    domains: HashMap<String, Domain>,
    aggregates: HashMap<(Cause, Option<IpAddr>), Aggregate>,
}

/// Shannon entropy of `s` in bits per character (0 for an empty string).
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn hash(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// What one suspicious query contributes to its aggregate.
struct Finding<'a> {
    cause: Cause,
    at: Duration,
    client: SocketAddr,
    parent: &'a str,
    shown: &'a str,
    severity: AlertSeverity,
    /// The SDK's message for the first query of an aggregate.
    message: String,
    /// The first query's detail.
    detail: String,
}

impl DnsTunnel {
    pub fn new(cfg: DnsTunnelConfig) -> Self {
        Self {
            cfg,
            domains: HashMap::new(),
            aggregates: HashMap::new(),
        }
    }

    /// Add a finding to its aggregate; the alert when the aggregate is new
    /// (or its window ended).
    fn found(&mut self, f: Finding<'_>) -> Option<Raised> {
        let mut key = (f.cause, Some(f.client.ip()));
        if !self.aggregates.contains_key(&key) && self.aggregates.len() >= MAX_SOURCES {
            crate::drops::dropped("dns_tunnel_sources", MAX_SOURCES, 1);
            key.1 = None;
        }
        let window = self.cfg.window;
        if let Some(a) = self.aggregates.get_mut(&key) {
            if f.at.saturating_sub(a.start) < window {
                a.last = a.last.max(f.at);
                a.queries += 1;
                let h = hash(f.parent);
                if !a.parents.contains(&h) {
                    if a.parents.len() < MAX_PARENTS {
                        a.parents.insert(h);
                    } else {
                        a.more_parents = true;
                    }
                    if a.examples.len() < EXAMPLES {
                        a.examples.push(visible(f.parent, 64).into_owned());
                    }
                }
                a.latest = visible(f.shown, SHOWN_CHARS).into_owned();
                a.latest_client = f.client;
                a.dirty = true;
                return None;
            }
        }
        let who = match key.1 {
            Some(ip) => ip.to_string(),
            None => "other clients".to_string(),
        };
        let message = match key.1 {
            Some(_) => f.message,
            None => format!("{} (from {who})", f.message),
        };
        let a = Aggregate {
            start: f.at,
            last: f.at,
            queries: 1,
            parents: HashSet::from([hash(f.parent)]),
            more_parents: false,
            examples: vec![visible(f.parent, 64).into_owned()],
            latest: visible(f.shown, SHOWN_CHARS).into_owned(),
            latest_client: f.client,
            dirty: false,
            key: format!("dns|{:?}|{who}", f.cause),
            message: message.clone(),
            severity: f.severity,
        };
        let key_text = a.key.clone();
        self.aggregates.insert(key, a);
        Some(Raised {
            severity: f.severity,
            category: AlertCategory::DnsTunnel,
            message,
            detail: f.detail,
            key: key_text,
        })
    }

    pub fn observe(&mut self, e: &Event) -> Vec<Raised> {
        let Event::DnsQuery { at, client, name } = e else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let name = name.trim_end_matches('.');
        let parent = base_domain(name);
        let shown: String = name.chars().take(SHOWN_CHARS).collect();
        let (shown_v, parent_v) = (visible(&shown, SHOWN_CHARS), visible(&parent, 64));
        let sub: String = name
            .strip_suffix(parent.as_str())
            .unwrap_or(name)
            .chars()
            .filter(|&c| c != '.')
            .collect();
        if name.len() > self.cfg.max_name_bytes {
            out.extend(self.found(Finding {
                cause: Cause::LongName,
                at: *at,
                client: *client,
                parent: &parent,
                shown: &shown,
                severity: AlertSeverity::Warning,
                message: format!("Suspicious DNS: long query name ({}b)", name.len()),
                detail: format!("Query: {shown_v} from {client} (parent domain {parent_v})"),
            }));
        } else if self.cfg.entropy_bits > 0.0 && sub.len() >= self.cfg.entropy_min_len {
            let h = entropy(&sub);
            if h >= self.cfg.entropy_bits {
                out.extend(self.found(Finding {
                    cause: Cause::Entropy,
                    at: *at,
                    client: *client,
                    parent: &parent,
                    shown: &shown,
                    severity: AlertSeverity::Warning,
                    message: format!("Suspicious DNS: high-entropy query name ({h:.2} bits/char)"),
                    detail: format!("Query: {shown_v} from {client} (parent domain {parent_v})"),
                }));
            }
        }
        out.extend(self.rate(*at, *client, name, &parent));
        out
    }

    /// The rate test: every query, suspicious names included, counts in
    /// its parent domain's window.
    fn rate(
        &mut self,
        at: Duration,
        client: SocketAddr,
        name: &str,
        parent: &str,
    ) -> Option<Raised> {
        if !self.domains.contains_key(parent) && self.domains.len() >= MAX_DOMAINS {
            self.evict_domains();
        }
        let window = self.cfg.window;
        let cap = 4 * (self.cfg.max_queries + 1);
        let d = self.domains.entry(parent.to_string()).or_default();
        let first = hash(name.split('.').next().unwrap_or(""));
        d.queries.push_back((at, first));
        while d
            .queries
            .front()
            .is_some_and(|(t, _)| at.saturating_sub(*t) >= window)
        {
            d.queries.pop_front();
        }
        // Bounded: beyond the threshold the exact count adds nothing.
        if d.queries.len() > cap {
            let n = d.queries.len() - cap;
            d.queries.drain(..n);
            crate::drops::dropped("dns_tunnel_labels", cap, n as u64);
        }
        let queries = d.queries.len();
        if queries <= self.cfg.max_queries {
            return None;
        }
        let distinct = d
            .queries
            .iter()
            .map(|(_, l)| l)
            .collect::<HashSet<_>>()
            .len();
        if distinct <= self.cfg.max_subdomains {
            return None;
        }
        let parent_v = visible(parent, 64);
        self.found(Finding {
            cause: Cause::Rate,
            at,
            client,
            parent,
            shown: name,
            severity: AlertSeverity::Critical,
            message: format!("DNS tunnel suspect: {parent_v}"),
            detail: format!(
                "{queries} queries in {}s, {distinct} unique subdomains (last from {client})",
                window.as_secs()
            ),
        })
    }

    /// Make room for a parent domain: evict the half least recently queried.
    fn evict_domains(&mut self) {
        let mut order: Vec<(Duration, String)> = self
            .domains
            .iter()
            .map(|(p, d)| (d.queries.back().map_or(Duration::ZERO, |q| q.0), p.clone()))
            .collect();
        order.sort_unstable();
        let n = (self.domains.len() / 2).max(1);
        for (_, p) in order.into_iter().take(n) {
            self.domains.remove(&p);
        }
        crate::drops::dropped("dns_tunnel_parents", MAX_DOMAINS, n as u64);
    }

    /// The aggregated alerts whose counts moved since the last call, as
    /// updates of the alerts first raised for them (same key and message;
    /// the detail carries the counts).
    pub fn updates(&mut self) -> Vec<Raised> {
        let mut out = Vec::new();
        for a in self.aggregates.values_mut().filter(|a| a.dirty) {
            a.dirty = false;
            let parents = a.parents.len();
            let at_least = if a.more_parents { "more than " } else { "" };
            out.push(Raised {
                severity: a.severity,
                category: AlertCategory::DnsTunnel,
                message: a.message.clone(),
                detail: format!(
                    "{} suspicious queries under {at_least}{parents} parent domains in {:.0}s \
                     (e.g. {}); latest: {} from {}",
                    a.queries,
                    a.last.saturating_sub(a.start).as_secs_f64(),
                    a.examples.join(", "),
                    a.latest,
                    a.latest_client
                ),
                key: a.key.clone(),
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Forget windows and aggregates that ended.
    pub fn expire(&mut self, now: Duration) {
        let window = self.cfg.window;
        self.domains.retain(|_, d| {
            d.queries
                .back()
                .is_some_and(|(t, _)| now.saturating_sub(*t) < window)
        });
        self.aggregates
            .retain(|_, a| a.dirty || now.saturating_sub(a.start) < window);
    }

    /// Parent domains in the rate window now.
    pub fn domains(&self) -> usize {
        self.domains.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Duration {
        Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    /// What one query raised (at most one alert here).
    fn obs(d: &mut DnsTunnel, e: &Event) -> Option<Raised> {
        let mut v = d.observe(e);
        assert!(v.len() <= 1, "{v:?}");
        v.pop()
    }

    fn q(at: Duration, name: &str) -> Event {
        Event::DnsQuery {
            at,
            client: "10.0.0.5:40000".parse().unwrap(),
            name: name.to_string(),
        }
    }

    #[test]
    fn names_over_eighty_bytes_fire_once_per_parent_per_window() {
        let mut d = DnsTunnel::new(DnsTunnelConfig::default());
        let at_limit = format!("{}.ex.com", "a".repeat(80 - 7));
        assert_eq!(at_limit.len(), 80);
        assert!(obs(&mut d, &q(t(0), &at_limit)).is_none());
        let long = format!("{}.ex.com", "b".repeat(90));
        let r = obs(&mut d, &q(t(1), &long)).unwrap();
        assert_eq!(r.category, AlertCategory::DnsTunnel);
        assert_eq!(r.severity, AlertSeverity::Warning);
        assert_eq!(r.message, "Suspicious DNS: long query name (97b)");
        assert!(
            obs(&mut d, &q(t(2), &long)).is_none(),
            "same parent, same window"
        );
        // Another parent from the same client: the same alert, counted.
        assert!(obs(&mut d, &q(t(3), &format!("{}.other.org", "c".repeat(90)))).is_none());
        let u = d.updates();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].key, r.key);
        assert_eq!(u[0].message, "Suspicious DNS: long query name (97b)");
        assert!(
            u[0].detail
                .starts_with("3 suspicious queries under 2 parent domains in 0s (e.g. ex.com, other.org); latest: ccc"),
            "{}",
            u[0].detail
        );
        assert!(d.updates().is_empty(), "nothing moved since");
        // Another client: its own alert.
        let other = Event::DnsQuery {
            at: t(4),
            client: "10.0.0.6:40000".parse().unwrap(),
            name: long.clone(),
        };
        assert!(obs(&mut d, &other).is_some());
        assert!(obs(&mut d, &q(t(60_001), &long)).is_some(), "next window");
    }

    #[test]
    fn high_entropy_names_fire_ordinary_ones_do_not() {
        let mut d = DnsTunnel::new(DnsTunnelConfig::default());
        for n in [
            "www.example.com",
            "mail.google.com",
            "a-very-ordinary-hostname-of-the-office.corp.example.com",
            "d3ad2b4eef.cloudfront.net",
        ] {
            assert!(obs(&mut d, &q(t(0), n)).is_none(), "{n}");
        }
        let random = "q7xk2m9vzp4rt8wn3ybc6hj1fd5gs0la.e2ku.t.example";
        let r = obs(&mut d, &q(t(1), random)).unwrap();
        assert!(r.message.contains("high-entropy"), "{}", r.message);
        assert!((entropy("aaaa") - 0.0).abs() < 1e-9);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn many_distinct_subdomains_in_a_minute_fire_critical_once() {
        let mut d = DnsTunnel::new(DnsTunnelConfig::default());
        let mut fired = Vec::new();
        for i in 0..60u64 {
            fired.extend(obs(&mut d, &q(t(i * 500), &format!("x{i:04}.tunnel.test"))));
        }
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].severity, AlertSeverity::Critical);
        assert_eq!(fired[0].message, "DNS tunnel suspect: tunnel.test");
        assert!(
            fired[0].detail.starts_with("51 queries in 60s, 51 unique"),
            "{}",
            fired[0].detail
        );
    }

    #[test]
    fn a_busy_domain_with_few_names_or_a_slow_one_does_not_fire() {
        let mut d = DnsTunnel::new(DnsTunnelConfig::default());
        // 200 queries a minute over 30 names: not more than 30 distinct.
        for i in 0..200u64 {
            assert!(obs(&mut d, &q(t(i * 300), &format!("h{}.cdn.test", i % 30))).is_none());
        }
        // 100 distinct names, one every 1.5 s: at most 40 per minute.
        for i in 0..100u64 {
            assert!(obs(&mut d, &q(t(i * 1_500), &format!("n{i}.slow.test"))).is_none());
        }
    }

    /// Random-looking 60-character label number `i`.
    fn label(i: u64) -> String {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..60)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize] as char
            })
            .collect()
    }

    #[test]
    fn a_flood_of_forged_names_under_many_parents_is_one_alert_and_bounded_tables() {
        let mut d = DnsTunnel::new(DnsTunnelConfig::default());
        let before = crate::drops::total("dns_tunnel_parents");
        let mut raised = Vec::new();
        let mut suspicious = 0;
        for i in 0..100_000u64 {
            for k in 0..2 {
                let l = label(2 * i + k);
                suspicious += u32::from(entropy(&l) >= 4.2);
                let name = format!("{l}.p{i:06}.com");
                raised.extend(d.observe(&q(t(i / 10), &name)));
                assert!(d.domains() <= MAX_DOMAINS);
            }
        }
        assert_eq!(
            raised.len(),
            1,
            "one alert for one client, not one per parent"
        );
        assert!(
            raised[0].message.contains("high-entropy"),
            "{}",
            raised[0].message
        );
        let u = d.updates();
        assert_eq!(u.len(), 1);
        assert!(
            u[0].detail.starts_with(&format!(
                "{suspicious} suspicious queries under more than 4096 parent domains"
            )),
            "{}",
            u[0].detail
        );
        // 100,000 parents through a table of 500 that evicts 250 at a time.
        assert_eq!(crate::drops::total("dns_tunnel_parents") - before, 99_500);
    }
}
