//! Host collectors over /proc and /sys (the `procfs` crate): interfaces,
//! TCP state counts, system, disks, host info, process metadata and the
//! socket-inode → pid table. They read; they never decide attribution.
//!
//! Each collector that needs two reads to say something (rates, CPU %,
//! disk I/O) is a tracker that diffs against its own previous call (with
//! [`crate::counter::counter_delta`] for cumulative counters): none of
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
    fn round_to_matches_the_sdk_rounding() {
        assert_eq!(round_to(96.34, 1), 96.3);
        assert_eq!(round_to(96.35000001, 1), 96.4);
        assert_eq!(round_to(f64::from(0.42f32), 2), 0.42);
    }
}
