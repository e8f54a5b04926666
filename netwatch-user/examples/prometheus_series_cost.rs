//! Cost of the Prometheus series state under a process flood: `top` series
//! filled by one snapshot of N processes with distinct names, then a
//! snapshot of N new ones (the old ones idle), so every series is evicted
//! for a busier newcomer and the rest are refused into `other`. Prints the
//! time of each `MetricsState::apply`.
//!
//! A measurement, not a test. Usage: prometheus_series_cost [top] [processes]

use std::time::{Duration, Instant};

use chrono::Utc;
use netwatch::sink::prometheus::{MetricsState, SeriesLimits};
use netwatch_common::wire::{ProcessBandwidth, Snapshot};

fn snap(base: u32, n: u32) -> Snapshot {
    let mut s = Snapshot::empty(Utc::now());
    s.processes = Some(
        (0..n)
            .map(|i| {
                ProcessBandwidth::network_only(
                    format!("p{base}-{i}"),
                    Some(base + i),
                    u64::from(i % 997 + 1),
                    3,
                    0.0,
                    0.0,
                    1,
                )
            })
            .collect(),
    );
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let top: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut st = MetricsState::new(SeriesLimits {
        expiry: Duration::from_secs(300),
        top_processes: top,
    });
    let mut cgroup = |_pid: u32| String::new();
    let (a, b) = (snap(1_000_000, n), snap(2_000_000, n));
    let t0 = Instant::now();
    let started = Instant::now();
    st.apply(&a, t0, &mut cgroup);
    let first = started.elapsed();
    let started = Instant::now();
    st.apply(&b, t0 + Duration::from_secs(1), &mut cgroup);
    let second = started.elapsed();
    println!("top {top}, {n} processes per snapshot");
    println!("first snapshot (fills the series):             {first:?}");
    println!("second snapshot ({n} newcomers, all evictions): {second:?}");
    println!("series now: {}", st.processes().len());
}
