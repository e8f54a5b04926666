//! Beaconing detector: one local address connecting to one remote address
//! and port at regular intervals (the connecting process, when known, is
//! named in the alert; it is not part of the key, because a capture learns
//! the owner of a short-lived connection only sometimes). Defaults as netwatch-sdk 0.3.2: at least 5 inter-arrival
//! intervals (the SDK's code counts intervals, so 6 connections) between
//! 5 s and 1 h, the last 8 kept, jitter (standard deviation / mean) below
//! 15 %; severity warning; one alert per (process, remote, port) until it
//! goes quiet. Pure: it only looks at the [`Event::Connect`]s it is given.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netwatch_common::wire::{AlertCategory, AlertSeverity};

use super::{Event, Raised};

/// Thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct BeaconConfig {
    /// Intervals needed before judging (SDK `BEACON_MIN_SAMPLES`: 5).
    pub min_intervals: usize,
    /// Intervals kept (SDK `BEACON_MAX_SAMPLES`: 8).
    pub max_intervals: usize,
    /// Jitter below which the connections are a beacon (SDK: 0.15).
    pub max_jitter: f64,
    /// Shortest interval that counts (SDK: 5 s).
    pub min_interval: Duration,
    /// Longest interval that counts (SDK: 3600 s).
    pub max_interval: Duration,
    /// A key with no connection for this long is forgotten (SDK: 300 s).
    pub idle: Duration,
}

impl Default for BeaconConfig {
    fn default() -> Self {
        Self {
            min_intervals: 5,
            max_intervals: 8,
            max_jitter: 0.15,
            min_interval: Duration::from_secs(5),
            max_interval: Duration::from_secs(3600),
            idle: Duration::from_secs(300),
        }
    }
}

/// Keys tracked at once (SDK `MAX_TRACKED_BEACONS`); when full, new keys
/// are refused until idle ones are forgotten (counted in [`crate::drops`]
/// as `beacon_keys`): a series needs minutes to judge, so the ones being
/// judged are kept.
const MAX_KEYS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    local: Option<IpAddr>,
    remote: SocketAddr,
}

#[derive(Debug)]
struct Series {
    last: Duration,
    intervals: VecDeque<Duration>,
    connections: u64,
    process: Option<(Option<u32>, String)>,
    alerted: bool,
}

/// Per-(origin, remote) connection series.
#[derive(Debug)]
pub struct Beacon {
    cfg: BeaconConfig,
    series: HashMap<Key, Series>,
}

/// Mean and jitter (population standard deviation over mean) in seconds.
pub fn jitter(intervals: &VecDeque<Duration>) -> (f64, f64) {
    let n = intervals.len().max(1) as f64;
    let mean = intervals.iter().map(Duration::as_secs_f64).sum::<f64>() / n;
    let var = intervals
        .iter()
        .map(|d| (d.as_secs_f64() - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, if mean > 0.0 { var.sqrt() / mean } else { 1.0 })
}

impl Beacon {
    pub fn new(cfg: BeaconConfig) -> Self {
        Self {
            cfg,
            series: HashMap::new(),
        }
    }

    pub fn observe(&mut self, e: &Event) -> Option<Raised> {
        if let Event::Owner {
            pid,
            process,
            local,
            remote,
            ..
        } = e
        {
            let key = Key {
                local: Some(local.ip()),
                remote: *remote,
            };
            if let Some(s) = self.series.get_mut(&key) {
                s.process = Some((Some(*pid), process.clone().unwrap_or_default()));
            }
            return None;
        }
        let Event::Connect {
            at,
            pid,
            process,
            local,
            remote,
        } = e
        else {
            return None;
        };
        let key = Key {
            local: local.map(|l| l.ip()),
            remote: *remote,
        };
        if self.series.len() >= MAX_KEYS && !self.series.contains_key(&key) {
            crate::drops::dropped("beacon_keys", MAX_KEYS, 1);
            return None;
        }
        let s = self.series.entry(key.clone()).or_insert_with(|| Series {
            last: *at,
            intervals: VecDeque::new(),
            connections: 0,
            process: None,
            alerted: false,
        });
        s.connections += 1;
        if let Some(name) = process {
            s.process = Some((*pid, name.clone()));
        } else if let (Some(p), None) = (pid, &s.process) {
            s.process = Some((Some(*p), String::new()));
        }
        let gap = at.saturating_sub(s.last);
        s.last = s.last.max(*at);
        if s.connections > 1 && gap >= self.cfg.min_interval && gap <= self.cfg.max_interval {
            s.intervals.push_back(gap);
            while s.intervals.len() > self.cfg.max_intervals {
                s.intervals.pop_front();
            }
        }
        if s.alerted || s.intervals.len() < self.cfg.min_intervals {
            return None;
        }
        let (mean, j) = jitter(&s.intervals);
        if j >= self.cfg.max_jitter {
            return None;
        }
        s.alerted = true;
        let from = key
            .local
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "this host".into());
        let who = match &s.process {
            Some((Some(p), name)) if !name.is_empty() => format!("{name} (pid {p}) on {from}"),
            Some((Some(p), _)) => format!("pid {p} on {from}"),
            Some((None, name)) => format!("{name} on {from}"),
            None => from,
        };
        Some(Raised::new(
            AlertSeverity::Warning,
            AlertCategory::Beaconing,
            format!("Beaconing: {who} → {remote}"),
            format!(
                "Regular interval {mean:.3}s (jitter {:.1}%), {} intervals over {} connections",
                j * 100.0,
                s.intervals.len(),
                s.connections
            ),
        ))
    }

    /// Forget series idle for longer than [`BeaconConfig::idle`].
    pub fn expire(&mut self, now: Duration) {
        let idle = self.cfg.idle;
        self.series.retain(|_, s| now.saturating_sub(s.last) < idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Duration {
        Duration::from_secs(1_700_000_000) + Duration::from_millis(ms)
    }

    fn conn(at: Duration, pid: Option<u32>, remote: &str) -> Event {
        Event::Connect {
            at,
            pid,
            process: pid.map(|_| "curl".to_string()),
            local: Some("10.0.0.1:40000".parse().unwrap()),
            remote: remote.parse().unwrap(),
        }
    }

    fn run(d: &mut Beacon, pid: Option<u32>, remote: &str, times_ms: &[u64]) -> Vec<Raised> {
        times_ms
            .iter()
            .filter_map(|&ms| d.observe(&conn(t(ms), pid, remote)))
            .collect()
    }

    #[test]
    fn six_regular_connections_fire_once_five_do_not() {
        let mut d = Beacon::new(BeaconConfig::default());
        let every_10s: Vec<u64> = (0..5).map(|i| i * 10_000).collect();
        assert!(run(&mut d, Some(7), "198.51.100.1:443", &every_10s).is_empty());
        let r = run(&mut d, Some(7), "198.51.100.1:443", &[50_000]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].category, AlertCategory::Beaconing);
        assert_eq!(r[0].severity, AlertSeverity::Warning);
        assert_eq!(
            r[0].message,
            "Beaconing: curl (pid 7) on 10.0.0.1 → 198.51.100.1:443"
        );
        assert!(r[0]
            .detail
            .starts_with("Regular interval 10.000s (jitter 0.0%), 5 intervals over 6"));
        // Still beaconing: no second alert.
        assert!(run(&mut d, Some(7), "198.51.100.1:443", &[60_000, 70_000]).is_empty());
    }

    #[test]
    fn jitter_at_or_above_fifteen_percent_does_not_fire() {
        let mut d = Beacon::new(BeaconConfig::default());
        // Intervals alternating 7 s and 13 s: jitter 30 %.
        let mut at = 0;
        let mut times = vec![0];
        for i in 0..10 {
            at += if i % 2 == 0 { 7_000 } else { 13_000 };
            times.push(at);
        }
        assert!(run(&mut d, Some(7), "198.51.100.1:443", &times).is_empty());
        // Intervals 9.2 s and 10.8 s: jitter 8 %: fires.
        let mut at = 0;
        let mut times = vec![0];
        for i in 0..6 {
            at += if i % 2 == 0 { 9_200 } else { 10_800 };
            times.push(at);
        }
        assert_eq!(run(&mut d, Some(8), "198.51.100.2:443", &times).len(), 1);
    }

    #[test]
    fn intervals_outside_the_bounds_do_not_count() {
        let mut d = Beacon::new(BeaconConfig::default());
        // Every 200 ms: below the SDK's 5 s floor.
        let fast: Vec<u64> = (0..20).map(|i| i * 200).collect();
        assert!(run(&mut d, Some(7), "198.51.100.1:443", &fast).is_empty());
        let mut d = Beacon::new(BeaconConfig {
            min_interval: Duration::from_millis(100),
            ..Default::default()
        });
        assert_eq!(run(&mut d, Some(7), "198.51.100.1:443", &fast).len(), 1);
    }

    #[test]
    fn keys_are_per_local_address_and_remote() {
        let mut d = Beacon::new(BeaconConfig::default());
        let times: Vec<u64> = (0..6).map(|i| i * 10_000).collect();
        // Interleaved: each key sees its own regular series; the owner,
        // known for some connections only, does not split a series.
        let mut fired = Vec::new();
        for (i, &ms) in times.iter().enumerate() {
            let pid = (i % 2 == 0).then_some(9);
            for remote in ["198.51.100.1:443", "198.51.100.1:80", "198.51.100.2:443"] {
                fired.extend(d.observe(&conn(t(ms), pid, remote)));
            }
        }
        assert_eq!(fired.len(), 3);
        assert!(
            fired[0]
                .message
                .starts_with("Beaconing: curl (pid 9) on 10.0.0.1"),
            "{}",
            fired[0].message
        );
    }

    #[test]
    fn an_owner_learned_later_names_the_process() {
        let mut d = Beacon::new(BeaconConfig::default());
        let times: Vec<u64> = (0..5).map(|i| i * 10_000).collect();
        assert!(run(&mut d, None, "198.51.100.1:443", &times).is_empty());
        d.observe(&Event::Owner {
            at: t(40_500),
            pid: 31,
            process: Some("implant".into()),
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "198.51.100.1:443".parse().unwrap(),
        });
        let r = run(&mut d, None, "198.51.100.1:443", &[50_000]);
        assert_eq!(
            r[0].message,
            "Beaconing: implant (pid 31) on 10.0.0.1 → 198.51.100.1:443"
        );
    }

    #[test]
    fn idle_series_are_forgotten_and_may_fire_again() {
        let mut d = Beacon::new(BeaconConfig::default());
        let times: Vec<u64> = (0..6).map(|i| i * 10_000).collect();
        assert_eq!(run(&mut d, Some(7), "198.51.100.1:443", &times).len(), 1);
        d.expire(t(50_000 + 300_000));
        assert!(d.series.is_empty());
        let later: Vec<u64> = (0..6).map(|i| 400_000 + i * 10_000).collect();
        assert_eq!(run(&mut d, Some(7), "198.51.100.1:443", &later).len(), 1);
    }
}
