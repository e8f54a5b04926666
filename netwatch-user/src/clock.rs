//! The agent's two clocks. Every window, expiry and "how long ago" (alert
//! activity, port-scan and DNS windows, pending DNS queries, pcap stream
//! expiry) is measured on the monotonic clock ([`Clock::mono`]:
//! `CLOCK_MONOTONIC`, the clock of the BPF programs' `bpf_ktime_get_ns`);
//! the wall clock ([`Clock::wall`]) only ever gives timestamps that people
//! read or the wire carries.
//!
//! It must never let a step of the wall clock (NTP, `date -s`, a resumed
//! VM) shorten or lengthen a window: nothing measured here subtracts two
//! wall-clock readings.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Where the agent reads time. The real one is [`SystemClock`]; tests use
/// [`TestClock`], whose two parts can be stepped independently.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Monotonic time: never steps, only advances (since boot, without
    /// suspend; what `bpf_ktime_get_ns` reads). For windows and expiry.
    fn mono(&self) -> Duration;
    /// Wall-clock time, which may jump either way. For timestamps only.
    fn wall(&self) -> DateTime<Utc>;
}

/// The system's clocks: `CLOCK_MONOTONIC` and `CLOCK_REALTIME`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn mono(&self) -> Duration {
        mono_now()
    }

    fn wall(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// `CLOCK_MONOTONIC` now, as time since boot: the same scale as the BPF
/// programs' `bpf_ktime_get_ns` and the capture thread's arrival times.
pub fn mono_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC
    // exists on every Linux and macOS this builds for, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0).min(999_999_999),
    )
}

/// The wall time of monotonic time `at`, from one reading of both clocks
/// (`now_mono`, `now_wall`): `now_wall` moved by how far `at` is from
/// `now_mono`. So an event's timestamp follows the wall clock as it reads
/// now, and its age is never changed by a step.
pub fn wall_at(at: Duration, now_mono: Duration, now_wall: DateTime<Utc>) -> DateTime<Utc> {
    let delta = |d: Duration| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
    let t = if at <= now_mono {
        now_wall.checked_sub_signed(delta(now_mono - at))
    } else {
        now_wall.checked_add_signed(delta(at - now_mono))
    };
    t.unwrap_or(now_wall)
}

/// A clock for tests: monotonic and wall parts that only move when told,
/// together ([`TestClock::advance`]) or the wall part alone
/// ([`TestClock::step_wall`], as NTP or `date -s` would).
#[derive(Debug)]
pub struct TestClock {
    state: Mutex<(Duration, DateTime<Utc>)>,
}

impl TestClock {
    /// A clock reading `mono` and `wall`.
    pub fn new(mono: Duration, wall: DateTime<Utc>) -> Self {
        Self {
            state: Mutex::new((mono, wall)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, (Duration, DateTime<Utc>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time passes: both parts move by `d`.
    pub fn advance(&self, d: Duration) {
        let mut s = self.lock();
        s.0 += d;
        let by = TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
        s.1 = s.1.checked_add_signed(by).unwrap_or(s.1);
    }

    /// The wall clock is set `by` forward (negative: back); monotonic time
    /// does not move.
    pub fn step_wall(&self, by: TimeDelta) {
        let mut s = self.lock();
        s.1 = s.1.checked_add_signed(by).unwrap_or(s.1);
    }
}

impl Clock for TestClock {
    fn mono(&self) -> Duration {
        self.lock().0
    }

    fn wall(&self) -> DateTime<Utc> {
        self.lock().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_is_monotonic_and_on_the_bpf_scale() {
        let a = SystemClock.mono();
        let b = SystemClock.mono();
        assert!(b >= a);
        // Since boot: far below the Unix epoch's scale.
        assert!(a < Duration::from_secs(10 * 365 * 86_400));
    }

    #[test]
    fn wall_at_moves_the_wall_reading_by_the_monotonic_distance() {
        let now_wall = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let now = Duration::from_secs(500);
        assert_eq!(
            wall_at(Duration::from_millis(499_250), now, now_wall),
            now_wall - TimeDelta::milliseconds(750)
        );
        assert_eq!(
            wall_at(Duration::from_secs(502), now, now_wall),
            now_wall + TimeDelta::seconds(2)
        );
        assert_eq!(wall_at(now, now, now_wall), now_wall);
    }

    #[test]
    fn the_test_clock_steps_its_parts_independently() {
        let w = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        let c = TestClock::new(Duration::from_secs(10), w);
        c.advance(Duration::from_secs(1));
        c.step_wall(TimeDelta::hours(-1));
        assert_eq!(c.mono(), Duration::from_secs(11));
        assert_eq!(c.wall(), w + TimeDelta::seconds(1) - TimeDelta::hours(1));
    }
}
