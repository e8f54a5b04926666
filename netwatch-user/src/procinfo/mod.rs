//! Host collectors over /proc and /sys (the `procfs` crate): interfaces,
//! TCP state counts, system, disks, host info, process metadata and the
//! socket-inode → pid table. They read; they never decide attribution.
//!
//! Each collector that needs two reads to say something (rates, CPU %,
//! disk I/O) is a tracker that diffs against its own previous call: none of
//! them sleeps, so the agent's tick is the measuring interval.

#[cfg(target_os = "linux")]
pub mod disk;
#[cfg(target_os = "linux")]
pub mod host;
#[cfg(target_os = "linux")]
pub mod interfaces;
#[cfg(target_os = "linux")]
pub mod process;
#[cfg(target_os = "linux")]
pub mod sockets;
#[cfg(target_os = "linux")]
pub mod system;
#[cfg(target_os = "linux")]
pub mod tcp_states;

/// Delta of a cumulative kernel counter between two reads. A counter that
/// went backwards was reset (device re-created, driver reloaded), so what it
/// holds now was all counted since the reset: that is the delta. Never
/// underflows.
#[cfg(target_os = "linux")]
pub(crate) fn counter_delta(prev: u64, cur: u64) -> u64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

/// `x` rounded to `decimals` places (the SDK rounds percentages to 0.1).
#[cfg(target_os = "linux")]
pub(crate) fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn counter_delta_forward_backward_and_equal() {
        assert_eq!(counter_delta(100, 250), 150);
        assert_eq!(counter_delta(250, 250), 0);
        // Reset: the counter restarted from zero and has counted 40 since.
        assert_eq!(counter_delta(1_000_000, 40), 40);
        assert_eq!(counter_delta(u64::MAX, 0), 0);
        assert_eq!(counter_delta(0, u64::MAX), u64::MAX);
    }

    #[test]
    fn round_to_matches_the_sdk_rounding() {
        assert_eq!(round_to(96.34, 1), 96.3);
        assert_eq!(round_to(96.35000001, 1), 96.4);
        assert_eq!(round_to(f64::from(0.42f32), 2), 0.42);
    }
}
