//! Median and min–max of repeated measurements. Pure arithmetic; NaN-free
//! inputs are the caller's job (missing values are left out, not zeroed).

/// (median, min, max) of `v`, or None when empty.
pub fn summary(v: &[f64]) -> Option<(f64, f64, f64)> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Some((med, s[0], s[n - 1]))
}

/// "median (min–max)" with `f` formatting each number, or "n/a".
pub fn fmt(v: &[f64], f: impl Fn(f64) -> String) -> String {
    match summary(v) {
        Some((m, lo, hi)) => format!("{} ({}–{})", f(m), f(lo), f(hi)),
        None => "n/a".to_string(),
    }
}

pub fn ratio(x: f64) -> String {
    format!("{x:.3}")
}

pub fn pct(x: f64) -> String {
    format!("{:+.1}%", (x - 1.0) * 100.0)
}
