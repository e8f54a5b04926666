//! Arithmetic on cumulative counters (kernel byte and I/O counters, a
//! socket's bytes): the one delta rule every layer uses. Pure; it must
//! never read the system or depend on any other module of the crate.

/// Delta of a cumulative counter between two reads. A counter that went
/// backwards was reset (a device re-created, a driver reloaded, a socket id
/// reused by a new socket), so what it holds now was all counted since the
/// reset: that is the delta. Never underflows.
///
/// ```
/// use netwatch::counter::counter_delta;
/// assert_eq!(counter_delta(100, 250), 150);
/// assert_eq!(counter_delta(1_000, 40), 40);
/// ```
pub fn counter_delta(prev: u64, cur: u64) -> u64 {
    if cur >= prev {
        cur - prev
    } else {
        cur
    }
}

#[cfg(test)]
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
}
