//! Bandwidth detector: a process or interface above a configured rate for
//! consecutive samples, or a sudden multiple of its own recent baseline.
//! Defaults as netwatch-sdk 0.3.2: 100 MB/s on receive or transmit for 2
//! consecutive samples, cleared when both fall below 90 % of the threshold;
//! severity warning. The baseline test and the per-process threshold are
//! netwatch additions. One alert per subject per episode (from the first
//! sample over to the clearing one). Pure: it only looks at the
//! [`Event::Rate`]s it is given.

use std::collections::HashMap;
use std::time::Duration;

use netwatch_common::wire::{AlertCategory, AlertSeverity};

use super::{Event, Raised, Subject};

/// Thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct BandwidthConfig {
    /// Interface threshold, bytes per second each way (SDK: 100 MB/s).
    pub interface_bps: f64,
    /// Process threshold, bytes per second each way.
    pub process_bps: f64,
    /// Consecutive samples over before an alert (SDK: 2).
    pub consecutive: u32,
    /// Below this share of the threshold on both ways the episode ends (SDK: 0.9).
    pub clear_ratio: f64,
    /// A rate this many times the subject's baseline is a spike; 0 turns
    /// the baseline test off.
    pub baseline_multiple: f64,
    /// …when it is also at least this many bytes per second.
    pub baseline_min_bps: f64,
    /// Samples needed before the baseline is trusted.
    pub baseline_samples: u32,
    /// A subject not sampled for this long is forgotten.
    pub idle: Duration,
}

impl Default for BandwidthConfig {
    fn default() -> Self {
        Self {
            interface_bps: 100_000_000.0,
            process_bps: 100_000_000.0,
            consecutive: 2,
            clear_ratio: 0.9,
            baseline_multiple: 10.0,
            baseline_min_bps: 10_000_000.0,
            baseline_samples: 5,
            idle: Duration::from_secs(300),
        }
    }
}

/// Subjects tracked at once; when full, new subjects are refused until idle
/// ones are forgotten (counted in [`crate::drops`] as `bandwidth_subjects`).
const MAX_SUBJECTS: usize = 4096;
/// Weight of a new sample in the baseline (exponential moving average).
const BASELINE_ALPHA: f64 = 0.2;

#[derive(Debug, Default)]
struct State {
    over: u32,
    active: bool,
    baseline: f64,
    samples: u32,
    last: Duration,
}

/// Per-subject episodes.
#[derive(Debug)]
pub struct Bandwidth {
    cfg: BandwidthConfig,
    subjects: HashMap<Subject, State>,
}

fn human(bps: f64) -> String {
    match bps {
        b if b >= 1e9 => format!("{:.1} GB/s", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB/s", b / 1e6),
        b if b >= 1e3 => format!("{:.1} KB/s", b / 1e3),
        b => format!("{b:.0} B/s"),
    }
}

impl Bandwidth {
    pub fn new(cfg: BandwidthConfig) -> Self {
        Self {
            cfg,
            subjects: HashMap::new(),
        }
    }

    pub fn observe(&mut self, e: &Event) -> Option<Raised> {
        let Event::Rate {
            at,
            subject,
            rx_bps,
            tx_bps,
        } = e
        else {
            return None;
        };
        let (rx, tx) = (rx_bps.max(0.0), tx_bps.max(0.0));
        if !(rx.is_finite() && tx.is_finite()) {
            return None;
        }
        if self.subjects.len() >= MAX_SUBJECTS && !self.subjects.contains_key(subject) {
            crate::drops::dropped("bandwidth_subjects", MAX_SUBJECTS, 1);
            return None;
        }
        let threshold = match subject {
            Subject::Interface(_) => self.cfg.interface_bps,
            Subject::Process { .. } => self.cfg.process_bps,
        };
        let s = self.subjects.entry(subject.clone()).or_default();
        s.last = s.last.max(*at);
        let peak = rx.max(tx);
        let over_threshold = rx > threshold || tx > threshold;
        let spike = self.cfg.baseline_multiple > 0.0
            && s.samples >= self.cfg.baseline_samples
            && peak >= self.cfg.baseline_min_bps
            && peak > self.cfg.baseline_multiple * s.baseline;
        if over_threshold || spike {
            s.over += 1;
        } else {
            let clear = threshold * self.cfg.clear_ratio;
            if rx < clear && tx < clear {
                s.over = 0;
                s.active = false;
            }
            s.baseline = if s.samples == 0 {
                peak
            } else {
                s.baseline + BASELINE_ALPHA * (peak - s.baseline)
            };
            s.samples = s.samples.saturating_add(1);
        }
        if s.active || s.over < self.cfg.consecutive {
            return None;
        }
        s.active = true;
        let why = if over_threshold {
            format!("threshold: {}", human(threshold))
        } else {
            format!(
                "{:.0}x its baseline of {}",
                peak / s.baseline.max(1.0),
                human(s.baseline)
            )
        };
        let name = match subject {
            Subject::Interface(n) => n.clone(),
            other => other.to_string(),
        };
        Some(Raised::new(
            AlertSeverity::Warning,
            AlertCategory::Bandwidth,
            format!("{name}: bandwidth threshold exceeded"),
            format!(
                "RX: {}, TX: {} ({why}; {} consecutive samples)",
                human(rx),
                human(tx),
                s.over
            ),
        ))
    }

    /// Forget subjects not sampled for [`BandwidthConfig::idle`].
    pub fn expire(&mut self, now: Duration) {
        let idle = self.cfg.idle;
        self.subjects
            .retain(|_, s| now.saturating_sub(s.last) < idle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Duration {
        Duration::from_secs(1_700_000_000 + s)
    }

    fn iface(at: u64, name: &str, rx: f64) -> Event {
        Event::Rate {
            at: t(at),
            subject: Subject::Interface(name.into()),
            rx_bps: rx,
            tx_bps: 0.0,
        }
    }

    fn proc_rate(at: u64, pid: u32, tx: f64) -> Event {
        Event::Rate {
            at: t(at),
            subject: Subject::Process {
                pid: Some(pid),
                name: "scp".into(),
            },
            rx_bps: 0.0,
            tx_bps: tx,
        }
    }

    fn fired(d: &mut Bandwidth, events: &[Event]) -> Vec<Raised> {
        events.iter().filter_map(|e| d.observe(e)).collect()
    }

    #[test]
    fn two_consecutive_samples_over_fire_once_until_cleared() {
        let mut d = Bandwidth::new(BandwidthConfig {
            baseline_multiple: 0.0,
            ..Default::default()
        });
        let over = 200e6;
        assert!(
            fired(&mut d, &[iface(0, "eth0", over)]).is_empty(),
            "one sample is not enough"
        );
        let r = fired(&mut d, &[iface(1, "eth0", over), iface(2, "eth0", over)]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].message, "eth0: bandwidth threshold exceeded");
        assert_eq!(
            r[0].detail,
            "RX: 200.0 MB/s, TX: 0 B/s (threshold: 100.0 MB/s; 2 consecutive samples)"
        );
        // 95 MB/s is not over, but not below 90 %: the episode goes on.
        assert!(fired(&mut d, &[iface(3, "eth0", 95e6), iface(4, "eth0", over)]).is_empty());
        // 80 MB/s ends it; the next two samples over fire again.
        let r = fired(
            &mut d,
            &[
                iface(5, "eth0", 80e6),
                iface(6, "eth0", over),
                iface(7, "eth0", over),
            ],
        );
        assert_eq!(r.len(), 1);
        // Over, under, over: never two consecutive.
        let r = fired(
            &mut d,
            &[
                iface(8, "wlan0", over),
                iface(9, "wlan0", 1e6),
                iface(10, "wlan0", over),
            ],
        );
        assert!(r.is_empty());
    }

    #[test]
    fn a_sudden_multiple_of_the_baseline_fires() {
        let mut d = Bandwidth::new(BandwidthConfig::default());
        let mut ev: Vec<Event> = (0..10).map(|i| proc_rate(i, 42, 1e6)).collect();
        // 20 MB/s: far under 100 MB/s, but 20x the 1 MB/s baseline.
        ev.push(proc_rate(10, 42, 20e6));
        ev.push(proc_rate(11, 42, 20e6));
        ev.push(proc_rate(12, 42, 20e6));
        let r = fired(&mut d, &ev);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].message,
            "process scp (pid 42): bandwidth threshold exceeded"
        );
        assert!(
            r[0].detail.contains("20x its baseline of 1.0 MB/s"),
            "{}",
            r[0].detail
        );
    }

    #[test]
    fn spikes_need_a_baseline_and_a_floor() {
        let mut d = Bandwidth::new(BandwidthConfig::default());
        // Only 3 samples of baseline: not trusted yet.
        let ev: Vec<Event> = [1e3, 1e3, 1e3, 50e6, 50e6]
            .iter()
            .enumerate()
            .map(|(i, &r)| proc_rate(i as u64, 1, r))
            .collect();
        assert!(fired(&mut d, &ev).is_empty());
        // Baseline 1 KB/s, 100x spike to 100 KB/s: under the 10 MB/s floor.
        let ev: Vec<Event> = (0..10)
            .map(|i| proc_rate(i, 2, 1e3))
            .chain((10..13).map(|i| proc_rate(i, 2, 1e5)))
            .collect();
        assert!(fired(&mut d, &ev).is_empty());
    }

    #[test]
    fn process_and_interface_thresholds_are_separate() {
        let mut d = Bandwidth::new(BandwidthConfig {
            process_bps: 1e6,
            baseline_multiple: 0.0,
            ..Default::default()
        });
        let r = fired(
            &mut d,
            &[
                proc_rate(0, 9, 2e6),
                proc_rate(1, 9, 2e6),
                iface(0, "eth0", 2e6),
                iface(1, "eth0", 2e6),
            ],
        );
        assert_eq!(r.len(), 1);
        assert!(r[0].message.starts_with("process scp (pid 9)"));
    }
}
