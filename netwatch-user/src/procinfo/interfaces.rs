//! Per-interface traffic: cumulative counters from `/proc/net/dev`, link
//! state from `/sys/class/net`, and the deltas, rates and rate history
//! between consecutive calls. It must never sleep to measure a rate, and a
//! counter that goes backwards must never underflow.
//!
//! Unlike netwatch-sdk 0.3.2 (which reads `/sys/class/net` and skips `lo`),
//! every interface of the agent's network namespace is reported, loopback
//! included, and `is_up` also accepts links whose driver reports no
//! operational state (`unknown`, as `lo` and many tunnels do) when the
//! administrative `IFF_UP` flag is set.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use netwatch_common::wire::InterfaceMetric;

use crate::counter::counter_delta;

/// Rate samples kept per interface and direction, as in the SDK.
pub const RATE_HISTORY_LEN: usize = 60;

/// `IFF_UP` in `/sys/class/net/<if>/flags` (linux/if.h).
const IFF_UP: u64 = 0x1;

pub use crate::net::InterfaceCounters;

/// A ring of the most recent [`RATE_HISTORY_LEN`] rate samples.
#[derive(Debug, Clone, Default)]
struct RateHistory(VecDeque<u64>);

impl RateHistory {
    fn push(&mut self, rate: f64) {
        if self.0.len() == RATE_HISTORY_LEN {
            self.0.pop_front();
        }
        // Saturating float→int: NaN → 0, negative → 0, huge → u64::MAX.
        self.0.push_back(rate as u64);
    }

    /// Oldest first; `None` until the first sample.
    fn to_wire(&self) -> Option<Vec<u64>> {
        (!self.0.is_empty()).then(|| self.0.iter().copied().collect())
    }
}

#[derive(Debug)]
struct Previous {
    counters: InterfaceCounters,
    rx_history: RateHistory,
    tx_history: RateHistory,
}

/// Turns cumulative interface counters into [`InterfaceMetric`]s.
///
/// The first time an interface is seen its deltas are 0, its rates
/// `Some(0.0)` and its history `None`; from the next call on, deltas and
/// rates cover the time since the previous call, and each call appends one
/// rate sample to the history. Interfaces that disappear are forgotten.
#[derive(Debug, Default)]
pub struct InterfaceTracker {
    prev: HashMap<String, Previous>,
    prev_at: Option<Instant>,
}

impl InterfaceTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Read `/proc/net/dev` and the link states, and return one metric per
    /// interface, sorted by name.
    pub fn sample(&mut self) -> anyhow::Result<Vec<InterfaceMetric>> {
        let counters = read_counters()?;
        Ok(self.update(Instant::now(), counters))
    }

    /// The pure step behind [`Self::sample`]: `counters` read at `now`.
    pub fn update(
        &mut self,
        now: Instant,
        counters: Vec<InterfaceCounters>,
    ) -> Vec<InterfaceMetric> {
        let elapsed_secs = self
            .prev_at
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        let rate = |bytes: u64| {
            if elapsed_secs > 0.0 {
                bytes as f64 / elapsed_secs
            } else {
                0.0
            }
        };

        let mut next = HashMap::with_capacity(counters.len());
        let mut metrics = Vec::with_capacity(counters.len());
        for cur in counters {
            let (rx_delta, tx_delta, mut rx_history, mut tx_history, seen_before) =
                match self.prev.remove(&cur.name) {
                    Some(p) => (
                        counter_delta(p.counters.rx_bytes, cur.rx_bytes),
                        counter_delta(p.counters.tx_bytes, cur.tx_bytes),
                        p.rx_history,
                        p.tx_history,
                        true,
                    ),
                    None => (0, 0, RateHistory::default(), RateHistory::default(), false),
                };
            let (rx_rate, tx_rate) = (rate(rx_delta), rate(tx_delta));
            if seen_before {
                rx_history.push(rx_rate);
                tx_history.push(tx_rate);
            }
            metrics.push(InterfaceMetric {
                name: cur.name.clone(),
                is_up: cur.is_up,
                rx_bytes: cur.rx_bytes,
                tx_bytes: cur.tx_bytes,
                rx_bytes_delta: rx_delta,
                tx_bytes_delta: tx_delta,
                rx_packets: cur.rx_packets,
                tx_packets: cur.tx_packets,
                rx_errors: cur.rx_errors,
                tx_errors: cur.tx_errors,
                rx_drops: cur.rx_drops,
                tx_drops: cur.tx_drops,
                rx_rate: Some(rx_rate),
                tx_rate: Some(tx_rate),
                rx_history: rx_history.to_wire(),
                tx_history: tx_history.to_wire(),
            });
            next.insert(
                cur.name.clone(),
                Previous {
                    counters: cur,
                    rx_history,
                    tx_history,
                },
            );
        }
        // Whatever is left in `self.prev` disappeared: dropped here.
        self.prev = next;
        self.prev_at = Some(now);
        metrics.sort_by(|a, b| a.name.cmp(&b.name));
        metrics
    }
}

/// The counters of every interface in the agent's network namespace.
fn read_counters() -> anyhow::Result<Vec<InterfaceCounters>> {
    let devs = procfs::net::dev_status().context("reading /proc/net/dev")?;
    Ok(devs
        .into_values()
        .map(|d| InterfaceCounters {
            is_up: read_is_up(&d.name),
            name: d.name,
            rx_bytes: d.recv_bytes,
            tx_bytes: d.sent_bytes,
            rx_packets: d.recv_packets,
            tx_packets: d.sent_packets,
            rx_errors: d.recv_errs,
            tx_errors: d.sent_errs,
            rx_drops: d.recv_drop,
            tx_drops: d.sent_drop,
        })
        .collect())
}

/// Link state from sysfs; an interface sysfs does not show is reported down.
fn read_is_up(name: &str) -> bool {
    // Interface names never hold '/', but they come from a file: never let
    // one walk out of /sys/class/net.
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return false;
    }
    let dir = Path::new("/sys/class/net").join(name);
    let operstate = fs::read_to_string(dir.join("operstate")).ok();
    let flags = fs::read_to_string(dir.join("flags")).ok();
    is_up(operstate.as_deref(), flags.as_deref())
}

/// Whether a link is up, from its sysfs `operstate` and `flags` contents.
///
/// `up` is up; `unknown` (the driver does not report an operational state:
/// loopback, many tunnels) or an unreadable operstate defer to the
/// administrative `IFF_UP` flag; every other state (`down`, `dormant`,
/// `lowerlayerdown`, `notpresent`, `testing`) is down.
pub fn is_up(operstate: Option<&str>, flags: Option<&str>) -> bool {
    match operstate.map(str::trim) {
        Some("up") => true,
        Some("unknown") | None => flags.and_then(parse_flags).is_some_and(|f| f & IFF_UP != 0),
        Some(_) => false,
    }
}

/// Parse sysfs `flags` (`0x1003\n`).
fn parse_flags(text: &str) -> Option<u64> {
    let t = text.trim();
    let hex = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X"))?;
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn iface(name: &str, rx: u64, tx: u64) -> InterfaceCounters {
        InterfaceCounters {
            name: name.into(),
            is_up: true,
            rx_bytes: rx,
            tx_bytes: tx,
            ..Default::default()
        }
    }

    #[test]
    fn first_sample_has_zero_deltas_zero_rates_and_no_history() {
        let mut t = InterfaceTracker::new();
        let m = t.update(Instant::now(), vec![iface("eth0", 1000, 2000)]);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].rx_bytes, m[0].tx_bytes), (1000, 2000));
        assert_eq!((m[0].rx_bytes_delta, m[0].tx_bytes_delta), (0, 0));
        assert_eq!((m[0].rx_rate, m[0].tx_rate), (Some(0.0), Some(0.0)));
        assert_eq!(
            (m[0].rx_history.clone(), m[0].tx_history.clone()),
            (None, None)
        );
    }

    #[test]
    fn second_sample_rates_are_delta_over_elapsed_exactly() {
        let mut t = InterfaceTracker::new();
        let t0 = Instant::now();
        t.update(t0, vec![iface("eth0", 1000, 2000)]);
        let m = t.update(t0 + Duration::from_secs(2), vec![iface("eth0", 5000, 2600)]);
        assert_eq!((m[0].rx_bytes_delta, m[0].tx_bytes_delta), (4000, 600));
        assert_eq!((m[0].rx_rate, m[0].tx_rate), (Some(2000.0), Some(300.0)));
        assert_eq!(m[0].rx_history, Some(vec![2000]));
        assert_eq!(m[0].tx_history, Some(vec![300]));
    }

    #[test]
    fn fractional_rates_are_truncated_in_history_only() {
        let mut t = InterfaceTracker::new();
        let t0 = Instant::now();
        t.update(t0, vec![iface("eth0", 0, 0)]);
        let m = t.update(t0 + Duration::from_secs(3), vec![iface("eth0", 10, 0)]);
        assert_eq!(m[0].rx_rate, Some(10.0 / 3.0));
        assert_eq!(m[0].rx_history, Some(vec![3]));
    }

    #[test]
    fn counter_going_backwards_counts_from_the_reset_without_underflow() {
        let mut t = InterfaceTracker::new();
        let t0 = Instant::now();
        t.update(t0, vec![iface("eth0", 1_000_000, 50)]);
        let m = t.update(t0 + Duration::from_secs(1), vec![iface("eth0", 300, 10)]);
        assert_eq!((m[0].rx_bytes_delta, m[0].tx_bytes_delta), (300, 10));
        assert_eq!(m[0].rx_rate, Some(300.0));
    }

    #[test]
    fn zero_elapsed_gives_zero_rate_not_nan() {
        let mut t = InterfaceTracker::new();
        let t0 = Instant::now();
        t.update(t0, vec![iface("eth0", 0, 0)]);
        let m = t.update(t0, vec![iface("eth0", 100, 0)]);
        assert_eq!(m[0].rx_bytes_delta, 100);
        assert_eq!(m[0].rx_rate, Some(0.0));
    }

    #[test]
    fn history_is_a_ring_of_the_last_sixty_rates_oldest_first() {
        let mut t = InterfaceTracker::new();
        let t0 = Instant::now();
        t.update(t0, vec![iface("eth0", 0, 0)]);
        let mut m = Vec::new();
        for i in 1..=(RATE_HISTORY_LEN as u64 + 5) {
            // Each second the counter grows by i bytes → rate i.
            let total: u64 = (1..=i).sum();
            m = t.update(t0 + Duration::from_secs(i), vec![iface("eth0", total, 0)]);
        }
        let h = m[0].rx_history.clone().unwrap_or_default();
        assert_eq!(h.len(), RATE_HISTORY_LEN);
        let expected: Vec<u64> = (6..=(RATE_HISTORY_LEN as u64 + 5)).collect();
        assert_eq!(h, expected);
    }

    #[test]
    fn new_interface_on_a_later_call_starts_as_a_first_sample() {
        let mut t = InterfaceTracker::new();
        let t0 = Instant::now();
        t.update(t0, vec![iface("eth0", 0, 0)]);
        let m = t.update(
            t0 + Duration::from_secs(1),
            vec![iface("eth0", 10, 0), iface("veth1", 999, 0)],
        );
        let veth = m.iter().find(|x| x.name == "veth1");
        assert_eq!(
            veth.map(|v| (v.rx_bytes_delta, v.rx_rate, v.rx_history.clone())),
            Some((0, Some(0.0), None))
        );
    }

    #[test]
    fn vanished_interface_is_forgotten_and_restarts_fresh() {
        let mut t = InterfaceTracker::new();
        let t0 = Instant::now();
        t.update(t0, vec![iface("eth0", 100, 0), iface("wg0", 100, 0)]);
        t.update(t0 + Duration::from_secs(1), vec![iface("eth0", 200, 0)]);
        assert!(!t.prev.contains_key("wg0"));
        let m = t.update(
            t0 + Duration::from_secs(2),
            vec![iface("eth0", 300, 0), iface("wg0", 5000, 0)],
        );
        let wg = m.iter().find(|x| x.name == "wg0");
        assert_eq!(
            wg.map(|w| (w.rx_bytes_delta, w.rx_history.clone())),
            Some((0, None))
        );
    }

    #[test]
    fn output_is_sorted_by_name() {
        let mut t = InterfaceTracker::new();
        let m = t.update(
            Instant::now(),
            vec![iface("wlan0", 0, 0), iface("eth0", 0, 0), iface("lo", 0, 0)],
        );
        let names: Vec<&str> = m.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["eth0", "lo", "wlan0"]);
    }

    #[test]
    fn is_up_rules() {
        assert!(is_up(Some("up\n"), None));
        assert!(is_up(Some("up\n"), Some("0x1002\n")));
        // Loopback: operstate unknown, IFF_UP|IFF_LOOPBACK.
        assert!(is_up(Some("unknown\n"), Some("0x9\n")));
        assert!(!is_up(Some("unknown\n"), Some("0x8\n")));
        assert!(!is_up(Some("down\n"), Some("0x1003\n")));
        assert!(!is_up(Some("dormant\n"), Some("0x1003\n")));
        assert!(!is_up(Some("lowerlayerdown"), Some("0x1003")));
        assert!(is_up(None, Some("0x1003")));
        assert!(!is_up(None, None));
        assert!(!is_up(Some("unknown"), Some("garbage")));
    }

    proptest::proptest! {
        #[test]
        fn prop_is_up_never_panics(op in proptest::option::of(".{0,40}"), fl in proptest::option::of(".{0,40}")) {
            let _ = is_up(op.as_deref(), fl.as_deref());
        }

        #[test]
        fn prop_proc_net_dev_parser_never_panics(s in "(.{0,120}\n){0,6}") {
            use procfs::FromBufRead;
            let _ = procfs::net::InterfaceDeviceStatus::from_buf_read(s.as_bytes());
        }

        /// Rows of the kernel's shape with fields gone wrong.
        #[test]
        fn prop_proc_net_dev_parser_never_panics_near_the_kernel_shape(
            rows in proptest::collection::vec(" *[a-zé0-9:]{1,8}( [0-9é-]{1,4}){0,17}", 0..5)
        ) {
            use procfs::FromBufRead;
            let text = format!("Inter-| Receive | Transmit\n face |bytes packets\n{}\n", rows.join("\n"));
            let _ = procfs::net::InterfaceDeviceStatus::from_buf_read(text.as_bytes());
        }

        #[test]
        fn prop_deltas_never_exceed_current_and_rates_are_finite(
            a in proptest::prelude::any::<u64>(),
            b in proptest::prelude::any::<u64>(),
            ms in 0u64..10_000,
        ) {
            let mut t = InterfaceTracker::new();
            let t0 = Instant::now();
            t.update(t0, vec![iface("x", a, b)]);
            let m = t.update(t0 + Duration::from_millis(ms), vec![iface("x", b, a)]);
            proptest::prop_assert!(m[0].rx_bytes_delta <= b);
            proptest::prop_assert!(m[0].tx_bytes_delta <= a);
            proptest::prop_assert!(m[0].rx_rate.is_some_and(|r| r.is_finite() && r >= 0.0));
        }
    }
}
