//! Alerts counted by category and severity, for a metrics sink (the
//! Prometheus `/metrics` counter `netwatch_alerts_total{category,severity}`).
//! Fed the snapshots' `alerts` field, which repeats an alert for as long as
//! it is active: each alert is counted once, the first time it is seen (an
//! alert is its time, category and message: the engine updates an
//! aggregated alert's detail and severity in place). It never looks
//! anywhere but at the alerts it is given.

use std::collections::HashSet;

use netwatch_common::wire::{Alert, AlertCategory, AlertSeverity};

/// Every category, in the order counters are listed.
pub const CATEGORIES: [AlertCategory; 4] = [
    AlertCategory::PortScan,
    AlertCategory::Beaconing,
    AlertCategory::DnsTunnel,
    AlertCategory::Bandwidth,
];
/// Every severity, in the order counters are listed.
pub const SEVERITIES: [AlertSeverity; 2] = [AlertSeverity::Warning, AlertSeverity::Critical];

/// The wire spelling of a category (`port_scan`, …): the metric label.
pub fn category_label(c: AlertCategory) -> &'static str {
    match c {
        AlertCategory::PortScan => "port_scan",
        AlertCategory::Beaconing => "beaconing",
        AlertCategory::DnsTunnel => "dns_tunnel",
        AlertCategory::Bandwidth => "bandwidth",
    }
}

/// The wire spelling of a severity (`warning`, `critical`).
pub fn severity_label(s: AlertSeverity) -> &'static str {
    match s {
        AlertSeverity::Warning => "warning",
        AlertSeverity::Critical => "critical",
    }
}

fn index(c: AlertCategory, s: AlertSeverity) -> usize {
    let ci = CATEGORIES.iter().position(|&x| x == c).unwrap_or(0);
    let si = SEVERITIES.iter().position(|&x| x == s).unwrap_or(0);
    ci * SEVERITIES.len() + si
}

type Identity = (i64, u32, &'static str, String);

fn identity(a: &Alert) -> Identity {
    (
        a.timestamp.timestamp(),
        a.timestamp.timestamp_subsec_nanos(),
        category_label(a.category),
        a.message.clone(),
    )
}

/// Monotonic counts of alerts raised, per (category, severity).
#[derive(Debug, Default, Clone)]
pub struct AlertCounter {
    counts: [u64; 8],
    /// Alerts of the previous snapshot: an alert stays in consecutive
    /// snapshots while active and never comes back once gone.
    seen: HashSet<Identity>,
}

impl AlertCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count the alerts of one snapshot that earlier snapshots did not hold.
    pub fn observe(&mut self, alerts: &[Alert]) {
        let mut now = HashSet::with_capacity(alerts.len());
        for a in alerts {
            let id = identity(a);
            if !self.seen.contains(&id) && !now.contains(&id) {
                self.counts[index(a.category, a.severity)] += 1;
            }
            now.insert(id);
        }
        self.seen = now;
    }

    /// The count for one category and severity.
    pub fn get(&self, c: AlertCategory, s: AlertSeverity) -> u64 {
        self.counts[index(c, s)]
    }

    /// Every (category, severity, count), zeros included, in a fixed order.
    pub fn totals(&self) -> Vec<(AlertCategory, AlertSeverity, u64)> {
        CATEGORIES
            .iter()
            .flat_map(|&c| SEVERITIES.iter().map(move |&s| (c, s)))
            .map(|(c, s)| (c, s, self.get(c, s)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn alert(sec: i64, c: AlertCategory, s: AlertSeverity, m: &str) -> Alert {
        Alert {
            severity: s,
            category: c,
            message: m.into(),
            detail: String::new(),
            timestamp: Utc.timestamp_opt(1_700_000_000 + sec, 0).unwrap(),
        }
    }

    #[test]
    fn each_alert_counts_once_across_snapshots() {
        let scan = alert(0, AlertCategory::PortScan, AlertSeverity::Critical, "scan");
        let bw = alert(1, AlertCategory::Bandwidth, AlertSeverity::Warning, "bw");
        let mut c = AlertCounter::new();
        c.observe(std::slice::from_ref(&scan));
        c.observe(&[scan.clone(), bw.clone()]);
        c.observe(&[scan.clone(), bw.clone()]);
        c.observe(std::slice::from_ref(&bw));
        c.observe(&[]);
        let bw2 = alert(70, AlertCategory::Bandwidth, AlertSeverity::Warning, "bw");
        c.observe(&[bw2]);
        assert_eq!(c.get(AlertCategory::PortScan, AlertSeverity::Critical), 1);
        assert_eq!(c.get(AlertCategory::Bandwidth, AlertSeverity::Warning), 2);
        let t = c.totals();
        assert_eq!(t.len(), 8);
        assert_eq!(t.iter().map(|x| x.2).sum::<u64>(), 3);
        assert_eq!(category_label(t[0].0), "port_scan");
        assert_eq!(severity_label(t[1].1), "critical");
    }

    #[test]
    fn labels_are_the_wire_spelling() {
        for c in CATEGORIES {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", category_label(c)));
        }
        for s in SEVERITIES {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", severity_label(s)));
        }
    }
}
