//! DNS-tunnel detector: query names that are unusually long or
//! high-entropy, or a high query rate to one parent domain with many
//! distinct subdomains. Defaults as netwatch-sdk 0.3.2: a name longer than
//! 80 bytes (warning), or more than 50 queries in a minute to one parent
//! domain (the SDK's base domain, last two labels) with more than 30
//! distinct first labels (critical). The entropy test is a netwatch
//! addition. One alert per (cause, parent domain) per window. Pure: it only
//! looks at the [`Event::DnsQuery`]s it is given.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use netwatch_common::wire::{AlertCategory, AlertSeverity};

use super::{Event, Raised};
use crate::snapshot::dns::base_domain;

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
const MAX_DOMAINS: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cause {
    LongName,
    Entropy,
    Rate,
}

#[derive(Debug, Default)]
struct Domain {
    queries: VecDeque<(Duration, String)>,
}

/// Per-domain windows and per-cause quiet periods.
#[derive(Debug)]
pub struct DnsTunnel {
    cfg: DnsTunnelConfig,
    domains: HashMap<String, Domain>,
    quiet_until: HashMap<(Cause, String), Duration>,
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

impl DnsTunnel {
    pub fn new(cfg: DnsTunnelConfig) -> Self {
        Self {
            cfg,
            domains: HashMap::new(),
            quiet_until: HashMap::new(),
        }
    }

    fn once(&mut self, cause: Cause, domain: &str, at: Duration) -> bool {
        let key = (cause, domain.to_string());
        if self.quiet_until.get(&key).is_some_and(|&u| at < u) {
            return false;
        }
        self.quiet_until.insert(key, at + self.cfg.window);
        true
    }

    pub fn observe(&mut self, e: &Event) -> Option<Raised> {
        let Event::DnsQuery { at, client, name } = e else {
            return None;
        };
        let name = name.trim_end_matches('.');
        let parent = base_domain(name);
        let shown: String = name.chars().take(120).collect();
        if name.len() > self.cfg.max_name_bytes {
            return self.once(Cause::LongName, &parent, *at).then(|| Raised {
                severity: AlertSeverity::Warning,
                category: AlertCategory::DnsTunnel,
                message: format!("Suspicious DNS: long query name ({}b)", name.len()),
                detail: format!("Query: {shown} from {client} (parent domain {parent})"),
            });
        }
        let sub: String = name
            .strip_suffix(parent.as_str())
            .unwrap_or(name)
            .chars()
            .filter(|&c| c != '.')
            .collect();
        if self.cfg.entropy_bits > 0.0 && sub.len() >= self.cfg.entropy_min_len {
            let h = entropy(&sub);
            if h >= self.cfg.entropy_bits {
                return self.once(Cause::Entropy, &parent, *at).then(|| Raised {
                    severity: AlertSeverity::Warning,
                    category: AlertCategory::DnsTunnel,
                    message: format!("Suspicious DNS: high-entropy query name ({h:.2} bits/char)"),
                    detail: format!("Query: {shown} from {client} (parent domain {parent})"),
                });
            }
        }
        if self.domains.len() >= MAX_DOMAINS && !self.domains.contains_key(&parent) {
            return None;
        }
        let window = self.cfg.window;
        let d = self.domains.entry(parent.clone()).or_default();
        let first = name.split('.').next().unwrap_or("").to_string();
        d.queries.push_back((*at, first));
        while d
            .queries
            .front()
            .is_some_and(|(t, _)| at.saturating_sub(*t) >= window)
        {
            d.queries.pop_front();
        }
        // Bounded: beyond the threshold the exact count adds nothing.
        while d.queries.len() > 4 * (self.cfg.max_queries + 1) {
            d.queries.pop_front();
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
        self.once(Cause::Rate, &parent, *at).then(|| Raised {
            severity: AlertSeverity::Critical,
            category: AlertCategory::DnsTunnel,
            message: format!("DNS tunnel suspect: {parent}"),
            detail: format!(
                "{queries} queries in {}s, {distinct} unique subdomains (last from {client})",
                window.as_secs()
            ),
        })
    }

    /// Forget windows and quiet periods that ended.
    pub fn expire(&mut self, now: Duration) {
        let window = self.cfg.window;
        self.domains.retain(|_, d| {
            d.queries
                .back()
                .is_some_and(|(t, _)| now.saturating_sub(*t) < window)
        });
        self.quiet_until.retain(|_, u| now < *u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Duration {
        Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
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
        assert!(d.observe(&q(t(0), &at_limit)).is_none());
        let long = format!("{}.ex.com", "b".repeat(90));
        let r = d.observe(&q(t(1), &long)).unwrap();
        assert_eq!(r.category, AlertCategory::DnsTunnel);
        assert_eq!(r.severity, AlertSeverity::Warning);
        assert_eq!(r.message, "Suspicious DNS: long query name (97b)");
        assert!(
            d.observe(&q(t(2), &long)).is_none(),
            "same parent, same window"
        );
        assert!(d
            .observe(&q(t(3), &format!("{}.other.org", "c".repeat(90))))
            .is_some());
        assert!(d.observe(&q(t(60_001), &long)).is_some(), "next window");
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
            assert!(d.observe(&q(t(0), n)).is_none(), "{n}");
        }
        let random = "q7xk2m9vzp4rt8wn3ybc6hj1fd5gs0la.e2ku.t.example";
        let r = d.observe(&q(t(1), random)).unwrap();
        assert!(r.message.contains("high-entropy"), "{}", r.message);
        assert!((entropy("aaaa") - 0.0).abs() < 1e-9);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn many_distinct_subdomains_in_a_minute_fire_critical_once() {
        let mut d = DnsTunnel::new(DnsTunnelConfig::default());
        let mut fired = Vec::new();
        for i in 0..60u64 {
            fired.extend(d.observe(&q(t(i * 500), &format!("x{i:04}.tunnel.test"))));
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
            assert!(d
                .observe(&q(t(i * 300), &format!("h{}.cdn.test", i % 30)))
                .is_none());
        }
        // 100 distinct names, one every 1.5 s: at most 40 per minute.
        for i in 0..100u64 {
            assert!(d
                .observe(&q(t(i * 1_500), &format!("n{i}.slow.test")))
                .is_none());
        }
    }
}
