//! Port-scan detector: one remote address touching many distinct local
//! ports, or failing to connect many times, within a window. Defaults as
//! netwatch-sdk 0.3.2: ≥ 20 distinct ports from one source within 30 s,
//! severity critical. One alert per source per window. Pure: it only
//! counts the [`Event::InboundAttempt`]s it is given.
//!
//! Bounded: at most [`MAX_SOURCES`] sources are tracked; when a new one
//! comes and the table is full, the half with the fewest distinct ports
//! (the least recently active first among equals) is evicted, so forged
//! one-probe sources cannot hide a real scan. Each source remembers at most
//! [`MAX_PORTS`] distinct ports (its lowest and highest port, and the count
//! past the cap, stay exact). Both are counted in [`crate::drops`]
//! (`port_scan_sources`, `port_scan_ports`).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Duration;

use netwatch_common::wire::{AlertCategory, AlertSeverity};

use super::{Event, Raised};

/// Thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct PortScanConfig {
    /// Distinct local ports from one source that make a scan (SDK: 20).
    pub distinct_ports: usize,
    /// Failed (refused or reset) attempts from one source that make a scan;
    /// 0 turns this criterion off. netwatch addition (the SDK has none).
    pub failed_attempts: u32,
    /// The window both are counted in (SDK: 30 s).
    pub window: Duration,
}

impl Default for PortScanConfig {
    fn default() -> Self {
        Self {
            distinct_ports: 20,
            failed_attempts: 100,
            window: Duration::from_secs(30),
        }
    }
}

/// Sources tracked at once (SDK `MAX_TRACKED_IPS`).
pub const MAX_SOURCES: usize = 1000;
/// Distinct ports remembered per source (a scan is judged at 20 by
/// default; more only make the alert's count).
pub const MAX_PORTS: usize = 256;

#[derive(Debug)]
struct Window {
    start: Duration,
    last: Duration,
    ports: BTreeSet<u16>,
    /// Distinct ports seen past [`MAX_PORTS`] (not remembered, so a port
    /// seen again there counts again).
    more_ports: u64,
    lowest: u16,
    highest: u16,
    local_ips: BTreeSet<IpAddr>,
    failed: u32,
    alerted: bool,
}

impl Window {
    fn new(at: Duration, port: u16) -> Self {
        Self {
            start: at,
            last: at,
            ports: BTreeSet::new(),
            more_ports: 0,
            lowest: port,
            highest: port,
            local_ips: BTreeSet::new(),
            failed: 0,
            alerted: false,
        }
    }

    fn distinct(&self) -> u64 {
        self.ports.len() as u64 + self.more_ports
    }
}

/// Per-source windows.
#[derive(Debug)]
pub struct PortScan {
    cfg: PortScanConfig,
    sources: HashMap<IpAddr, Window>,
}

impl PortScan {
    pub fn new(cfg: PortScanConfig) -> Self {
        Self {
            cfg,
            sources: HashMap::new(),
        }
    }

    pub fn observe(&mut self, e: &Event) -> Option<Raised> {
        let Event::InboundAttempt {
            at,
            remote,
            local,
            failed,
        } = e
        else {
            return None;
        };
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(remote) {
            self.evict();
        }
        let port = local.port();
        let w = self
            .sources
            .entry(*remote)
            .or_insert_with(|| Window::new(*at, port));
        if at.saturating_sub(w.start) > self.cfg.window {
            *w = Window::new(*at, port);
        }
        w.last = w.last.max(*at);
        w.lowest = w.lowest.min(port);
        w.highest = w.highest.max(port);
        if w.ports.len() < MAX_PORTS || w.ports.contains(&port) {
            w.ports.insert(port);
        } else {
            w.more_ports += 1;
            crate::drops::dropped("port_scan_ports", MAX_PORTS, 1);
        }
        if w.local_ips.len() < 8 {
            w.local_ips.insert(local.ip());
        }
        if *failed {
            w.failed = w.failed.saturating_add(1);
        }
        let by_ports = w.distinct() >= self.cfg.distinct_ports as u64;
        let by_failed = self.cfg.failed_attempts > 0 && w.failed >= self.cfg.failed_attempts;
        if w.alerted || !(by_ports || by_failed) {
            return None;
        }
        w.alerted = true;
        let (lo, hi) = (w.lowest, w.highest);
        let targets: Vec<String> = w.local_ips.iter().map(|i| i.to_string()).collect();
        Some(Raised::new(
            AlertSeverity::Critical,
            AlertCategory::PortScan,
            format!("Port scan from {remote}"),
            format!(
                "{remote} → {} unique ports ({lo}-{hi}) on {}, {} refused or reset, in {:.1}s (window {}s)",
                w.distinct(),
                targets.join(", "),
                w.failed,
                w.last.saturating_sub(w.start).as_secs_f64(),
                self.cfg.window.as_secs()
            ),
        ))
    }

    /// Make room: evict the half of the sources with the fewest distinct
    /// ports, the least recently active first among equals.
    fn evict(&mut self) {
        let mut order: Vec<(u64, Duration, IpAddr)> = self
            .sources
            .iter()
            .map(|(ip, w)| (w.distinct(), w.last, *ip))
            .collect();
        order.sort_unstable();
        let n = (self.sources.len() / 2).max(1);
        for (_, _, ip) in order.into_iter().take(n) {
            self.sources.remove(&ip);
        }
        crate::drops::dropped("port_scan_sources", MAX_SOURCES, n as u64);
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// Forget sources whose window ended.
    pub fn expire(&mut self, now: Duration) {
        let window = self.cfg.window;
        self.sources
            .retain(|_, w| now.saturating_sub(w.start) <= window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Duration {
        Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    fn attempt(at: Duration, remote: &str, port: u16, failed: bool) -> Event {
        Event::InboundAttempt {
            at,
            remote: remote.parse().unwrap(),
            local: ([10, 0, 0, 1], port).into(),
            failed,
        }
    }

    #[test]
    fn twenty_distinct_ports_fire_once_nineteen_do_not() {
        let mut d = PortScan::new(PortScanConfig::default());
        for p in 1..=19 {
            assert!(d
                .observe(&attempt(t(p.into()), "192.0.2.7", p, false))
                .is_none());
        }
        // A repeated port is not a new one.
        assert!(d.observe(&attempt(t(20), "192.0.2.7", 19, false)).is_none());
        let r = d.observe(&attempt(t(21), "192.0.2.7", 20, false)).unwrap();
        assert_eq!(r.category, AlertCategory::PortScan);
        assert_eq!(r.severity, AlertSeverity::Critical);
        assert_eq!(r.message, "Port scan from 192.0.2.7");
        assert!(
            r.detail.contains("20 unique ports (1-20) on 10.0.0.1"),
            "{}",
            r.detail
        );
        for p in 21..=50 {
            assert!(d.observe(&attempt(t(30), "192.0.2.7", p, false)).is_none());
        }
    }

    #[test]
    fn ports_spread_over_more_than_the_window_do_not_fire() {
        let mut d = PortScan::new(PortScanConfig::default());
        for p in 0..40u16 {
            // One port every 2 s: 15 per 30 s window at most... then reset.
            let r = d.observe(&attempt(t(u64::from(p) * 2_000), "192.0.2.7", p, false));
            assert!(r.is_none(), "port {p}");
        }
    }

    #[test]
    fn a_new_window_can_fire_again_and_sources_are_separate() {
        let mut d = PortScan::new(PortScanConfig::default());
        let mut fired = 0;
        for (base, src) in [(0, "192.0.2.7"), (0, "192.0.2.8"), (31_000, "192.0.2.7")] {
            for p in 1..=25 {
                fired += d
                    .observe(&attempt(t(base + u64::from(p)), src, p, false))
                    .is_some() as u32;
            }
        }
        assert_eq!(fired, 3);
    }

    #[test]
    fn many_failed_attempts_to_one_port_fire_when_configured() {
        let mut d = PortScan::new(PortScanConfig {
            failed_attempts: 10,
            ..Default::default()
        });
        let fired: Vec<_> = (0..30)
            .filter_map(|i| d.observe(&attempt(t(i * 10), "192.0.2.9", 22, true)))
            .collect();
        assert_eq!(fired.len(), 1);
        assert!(
            fired[0].detail.contains("10 refused or reset"),
            "{}",
            fired[0].detail
        );
        let mut off = PortScan::new(PortScanConfig {
            failed_attempts: 0,
            ..Default::default()
        });
        assert!((0..300).all(|i| off.observe(&attempt(t(i), "192.0.2.9", 22, true)).is_none()));
    }

    #[test]
    fn forged_one_probe_sources_are_evicted_before_a_real_scanner() {
        let mut d = PortScan::new(PortScanConfig::default());
        let before = crate::drops::total("port_scan_sources");
        // A real scanner starts: 10 ports so far.
        for p in 1..=10 {
            assert!(d.observe(&attempt(t(0), "192.0.2.7", p, false)).is_none());
        }
        // 5,000 forged sources, one probe each.
        for i in 0..5_000u32 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            assert!(d.observe(&attempt(t(1), &ip, 80, false)).is_none());
            assert!(d.sources() <= MAX_SOURCES);
        }
        // The scanner's window survived: 10 more ports make the alert.
        let fired: Vec<_> = (11..=20)
            .filter_map(|p| d.observe(&attempt(t(2), "192.0.2.7", p, false)))
            .collect();
        assert_eq!(fired.len(), 1);
        // 1 + 5,000 sources through a table of 1,000 that evicts 500 at a
        // time: 4,001 - 1,000 (full) → 9 evictions of 500.
        assert_eq!(crate::drops::total("port_scan_sources") - before, 4_500);
    }

    #[test]
    fn ports_past_the_cap_are_counted_not_kept() {
        let mut d = PortScan::new(PortScanConfig::default());
        let mut fired = Vec::new();
        for p in 1..=1_000u16 {
            fired.extend(d.observe(&attempt(t(u64::from(p)), "192.0.2.7", p, false)));
        }
        assert_eq!(fired.len(), 1);
        let w = &d.sources[&"192.0.2.7".parse::<IpAddr>().unwrap()];
        assert_eq!(w.ports.len(), MAX_PORTS);
        assert_eq!(w.distinct(), 1_000);
        assert_eq!((w.lowest, w.highest), (1, 1_000));
    }

    #[test]
    fn expire_forgets_ended_windows() {
        let mut d = PortScan::new(PortScanConfig::default());
        d.observe(&attempt(t(0), "192.0.2.7", 1, false));
        d.expire(t(30_000));
        assert_eq!(d.sources.len(), 1);
        d.expire(t(30_001));
        assert!(d.sources.is_empty());
    }
}
