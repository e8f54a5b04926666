//! The checks every section's resolver uses to turn a number from the
//! command line or the file into a setting: within its range, finite, and
//! (durations) acceptable to `Duration`. Each refusal names the setting,
//! the value and the range; a check never clamps a value into range.

use std::fmt;
use std::time::Duration;

use super::{invalid, ConfigError};

/// A number as a message shows it: plainly, or in exponent form when it is
/// huge, tiny, NaN or infinite (`1e300`, not three hundred digits).
pub(super) fn shown(v: f64) -> String {
    let a = v.abs();
    if v.is_finite() && (a == 0.0 || (1e-6..1e15).contains(&a)) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// A duration setting: `v` seconds, finite and within `min..=max`.
pub(super) fn secs(name: &str, v: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v >= min && v <= max) {
        return Err(invalid(format!(
            "{name} {}: must be between {} and {} seconds",
            shown(v),
            shown(min),
            shown(max)
        )));
    }
    Duration::try_from_secs_f64(v).map_err(|e| invalid(format!("{name} {}: {e}", shown(v))))
}

/// An integer setting within `(lo, hi)`, both included.
pub(super) fn int_in<T: PartialOrd + fmt::Display + Copy>(
    name: &str,
    v: T,
    (lo, hi): (T, T),
) -> Result<T, ConfigError> {
    if v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(invalid(format!(
            "{name} {v}: must be between {lo} and {hi}"
        )))
    }
}

/// A real-number setting, finite and within `(lo, hi)`; with
/// `exclusive_lo` it must be above `lo`.
pub(super) fn real_in(
    name: &str,
    v: f64,
    (lo, hi): (f64, f64),
    exclusive_lo: bool,
) -> Result<f64, ConfigError> {
    let above = if exclusive_lo { v > lo } else { v >= lo };
    if v.is_finite() && above && v <= hi {
        Ok(v)
    } else {
        let (from, to) = if exclusive_lo {
            ("above", "and at most")
        } else {
            ("between", "and")
        };
        Err(invalid(format!(
            "{name} {}: must be {from} {} {to} {}",
            shown(v),
            shown(lo),
            shown(hi)
        )))
    }
}
