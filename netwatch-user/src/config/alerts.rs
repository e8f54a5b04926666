//! The `[alerts]` section: the detectors' thresholds. Defaults are
//! `crate::alerts::AlertConfig`'s (netwatch-sdk 0.3.2's, their one home);
//! this module only overrides them with what was configured, each value
//! range-checked, and never turns a bad value into a default.

use super::check::{int_in, real_in, secs};
use super::file::AlertsFile;
use super::{limits, ConfigError};

/// `[alerts]` into the detector thresholds; `None` when `enabled = false`.
pub fn resolve_alerts(a: &AlertsFile) -> Result<Option<crate::alerts::AlertConfig>, ConfigError> {
    use crate::alerts::AlertConfig;
    if !a.enabled.unwrap_or(true) {
        return Ok(None);
    }
    let mut c = AlertConfig::default();
    if let Some(v) = a.active_secs {
        let (lo, hi) = limits::ALERT_ACTIVE_SECS;
        c.active = secs("[alerts] active_secs", v, lo, hi)?;
    }
    if let Some(v) = a.history {
        c.history = int_in("[alerts] history", v, limits::ALERT_HISTORY)?;
    }
    if let Some(v) = a.port_scan_ports {
        c.port_scan.distinct_ports =
            int_in("[alerts] port_scan_ports", v, limits::PORT_SCAN_PORTS)?;
    }
    if let Some(v) = a.port_scan_failed {
        c.port_scan.failed_attempts =
            int_in("[alerts] port_scan_failed", v, limits::PORT_SCAN_FAILED)?;
    }
    if let Some(v) = a.port_scan_window_secs {
        let (lo, hi) = limits::PORT_SCAN_WINDOW_SECS;
        c.port_scan.window = secs("[alerts] port_scan_window_secs", v, lo, hi)?;
    }
    if let Some(v) = a.beacon_min_intervals {
        c.beacon.min_intervals = int_in(
            "[alerts] beacon_min_intervals",
            v,
            limits::BEACON_MIN_INTERVALS,
        )?;
        c.beacon.max_intervals = c.beacon.max_intervals.max(v);
    }
    if let Some(v) = a.beacon_max_jitter {
        c.beacon.max_jitter = real_in(
            "[alerts] beacon_max_jitter",
            v,
            limits::BEACON_MAX_JITTER,
            true,
        )?;
    }
    if let Some(v) = a.beacon_min_interval_secs {
        let (lo, hi) = limits::BEACON_INTERVAL_SECS;
        c.beacon.min_interval = secs("[alerts] beacon_min_interval_secs", v, lo, hi)?;
    }
    if let Some(v) = a.beacon_max_interval_secs {
        c.beacon.max_interval = secs(
            "[alerts] beacon_max_interval_secs",
            v,
            c.beacon.min_interval.as_secs_f64(),
            limits::BEACON_INTERVAL_SECS.1,
        )?;
    }
    if let Some(v) = a.dns_max_name_bytes {
        c.dns_tunnel.max_name_bytes =
            int_in("[alerts] dns_max_name_bytes", v, limits::DNS_MAX_NAME_BYTES)?;
    }
    if let Some(v) = a.dns_max_queries_per_min {
        c.dns_tunnel.max_queries = int_in(
            "[alerts] dns_max_queries_per_min",
            v,
            limits::DNS_MAX_QUERIES_PER_MIN,
        )?;
    }
    if let Some(v) = a.dns_max_subdomains {
        c.dns_tunnel.max_subdomains =
            int_in("[alerts] dns_max_subdomains", v, limits::DNS_MAX_SUBDOMAINS)?;
    }
    if let Some(v) = a.dns_entropy_bits {
        c.dns_tunnel.entropy_bits = real_in(
            "[alerts] dns_entropy_bits",
            v,
            limits::DNS_ENTROPY_BITS,
            false,
        )?;
    }
    if let Some(v) = a.bandwidth_interface_bps {
        c.bandwidth.interface_bps = real_in(
            "[alerts] bandwidth_interface_bps",
            v,
            limits::BANDWIDTH_BPS,
            true,
        )?;
    }
    if let Some(v) = a.bandwidth_process_bps {
        c.bandwidth.process_bps = real_in(
            "[alerts] bandwidth_process_bps",
            v,
            limits::BANDWIDTH_BPS,
            true,
        )?;
    }
    if let Some(v) = a.bandwidth_consecutive {
        c.bandwidth.consecutive = int_in(
            "[alerts] bandwidth_consecutive",
            v,
            limits::BANDWIDTH_CONSECUTIVE,
        )?;
    }
    if let Some(v) = a.bandwidth_baseline_multiple {
        c.bandwidth.baseline_multiple = real_in(
            "[alerts] bandwidth_baseline_multiple",
            v,
            limits::BANDWIDTH_BASELINE_MULTIPLE,
            false,
        )?;
    }
    if let Some(v) = a.bandwidth_baseline_min_bps {
        c.bandwidth.baseline_min_bps = real_in(
            "[alerts] bandwidth_baseline_min_bps",
            v,
            limits::BANDWIDTH_BPS,
            false,
        )?;
    }
    Ok(Some(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::AlertConfig;
    use std::time::Duration;

    fn section(text: &str) -> AlertsFile {
        super::super::parse_file(text).unwrap().alerts
    }

    #[test]
    fn on_with_the_sdk_defaults_unless_disabled() {
        assert_eq!(
            resolve_alerts(&AlertsFile::default()).unwrap(),
            Some(AlertConfig::default())
        );
        assert_eq!(
            resolve_alerts(&section("[alerts]\nenabled = false\nhistory = 0\n")).unwrap(),
            None,
            "a disabled section is not checked"
        );
    }

    #[test]
    fn the_file_overrides_each_value_it_names() {
        let c = resolve_alerts(&section(
            "[alerts]\nactive_secs = 5\nhistory = 7\nport_scan_window_secs = 0.5\n\
             beacon_min_intervals = 900\nbeacon_min_interval_secs = 2\n\
             beacon_max_interval_secs = 2\ndns_entropy_bits = 0\nbandwidth_consecutive = 4\n",
        ))
        .unwrap()
        .unwrap();
        let d = AlertConfig::default();
        assert_eq!(c.active, Duration::from_secs(5));
        assert_eq!(c.history, 7);
        assert_eq!(c.port_scan.window, Duration::from_millis(500));
        assert_eq!(c.port_scan.distinct_ports, d.port_scan.distinct_ports);
        assert_eq!(c.beacon.min_intervals, 900);
        // Each destination keeps at least as many intervals as are judged.
        assert_eq!(c.beacon.max_intervals, d.beacon.max_intervals.max(900));
        assert_eq!(c.beacon.min_interval, Duration::from_secs(2));
        assert_eq!(c.beacon.max_interval, Duration::from_secs(2));
        assert_eq!(c.dns_tunnel.entropy_bits, 0.0);
        assert_eq!(c.bandwidth.consecutive, 4);
        assert_eq!(c.bandwidth.interface_bps, d.bandwidth.interface_bps);
    }

    #[test]
    fn refusals() {
        let e = |text: &str| resolve_alerts(&section(text)).unwrap_err().to_string();
        assert_eq!(
            e("[alerts]\nbeacon_min_interval_secs = 10\nbeacon_max_interval_secs = 9\n"),
            "[alerts] beacon_max_interval_secs 9: must be between 10 and 86400 seconds"
        );
        assert_eq!(
            e("[alerts]\nport_scan_window_secs = 0.05\n"),
            "[alerts] port_scan_window_secs 0.05: must be between 0.1 and 86400 seconds"
        );
        assert_eq!(
            e("[alerts]\nactive_secs = 0.5\n"),
            "[alerts] active_secs 0.5: must be between 1 and 86400 seconds"
        );
        assert_eq!(
            e("[alerts]\nbandwidth_interface_bps = 0\n"),
            "[alerts] bandwidth_interface_bps 0: must be above 0 and at most 1e15"
        );
    }
}
