//! The `[health]` section and `--health`: the gateway and DNS probes,
//! off unless asked for. Defaults are `crate::health::HealthConfig`'s (their
//! one home); this module only overrides them with what was configured and
//! must never start a probe or resolve a name.

use std::time::Duration;

use super::check::{int_in, secs};
use super::file::HealthFile;
use super::{invalid, limits, ConfigError};

/// `[health]` and `--health` into the probe settings; `None` unless enabled.
pub fn resolve_health(
    flag: bool,
    h: &HealthFile,
) -> Result<Option<crate::health::HealthConfig>, ConfigError> {
    if !(flag || h.enabled.unwrap_or(false)) {
        return Ok(None);
    }
    let d = crate::health::HealthConfig::default();
    let gateway = match &h.gateway {
        Some(g) => Some(
            g.parse()
                .map_err(|_| invalid(format!("[health] gateway {g:?} is not an IP address")))?,
        ),
        None => None,
    };
    let dns_server = match &h.dns_server {
        Some(s) => Some(
            s.parse::<std::net::SocketAddr>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                .map_err(|_| {
                    invalid(format!(
                        "[health] dns_server {s:?} is not an IP address or address:port"
                    ))
                })?,
        ),
        None => None,
    };
    let dns_query_name = h.dns_query_name.clone().unwrap_or(d.dns_query_name);
    if crate::health::dns_probe::query(0, &dns_query_name, 2).is_none() {
        return Err(invalid(format!(
            "[health] dns_query_name {dns_query_name:?} is not a DNS name"
        )));
    }
    // The default's one home is `HealthConfig::default()` (1 s).
    let default_ms = u64::try_from(d.timeout.as_millis()).unwrap_or(u64::MAX);
    let timeout_ms = h.timeout_ms.unwrap_or(default_ms);
    let (lo, hi) = limits::HEALTH_TIMEOUT_MS;
    if !(lo..=hi).contains(&timeout_ms) {
        return Err(invalid(format!(
            "[health] timeout_ms {timeout_ms}: must be {lo} to {hi}"
        )));
    }
    let (lo, hi) = limits::HEALTH_INTERVAL_SECS;
    Ok(Some(crate::health::HealthConfig {
        interval: secs(
            "[health] interval_secs",
            h.interval_secs.unwrap_or(d.interval.as_secs_f64()),
            lo,
            hi,
        )?,
        probes: int_in(
            "[health] probes",
            h.probes.unwrap_or(d.probes),
            limits::HEALTH_PROBES,
        )?,
        timeout: Duration::from_millis(timeout_ms),
        gateway,
        dns_server,
        dns_query_name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::HealthConfig;

    fn section(text: &str) -> HealthFile {
        super::super::parse_file(text).unwrap().health
    }

    #[test]
    fn off_unless_the_flag_or_the_file_turns_it_on() {
        assert_eq!(resolve_health(false, &HealthFile::default()).unwrap(), None);
        assert_eq!(
            resolve_health(false, &section("[health]\nenabled = false\n")).unwrap(),
            None
        );
        // The flag wins over `enabled = false`.
        assert_eq!(
            resolve_health(true, &section("[health]\nenabled = false\n")).unwrap(),
            Some(HealthConfig::default())
        );
    }

    #[test]
    fn defaults_are_the_probes_own() {
        let h = resolve_health(true, &HealthFile::default())
            .unwrap()
            .unwrap();
        assert_eq!(h, HealthConfig::default());
        assert_eq!(h.timeout, Duration::from_millis(1000));
        assert_eq!(h.interval, Duration::from_secs(30));
        assert_eq!(h.probes, 3);
    }

    #[test]
    fn the_file_overrides_each_default() {
        let h = resolve_health(
            false,
            &section(
                "[health]\nenabled = true\ninterval_secs = 2.5\nprobes = 10\ntimeout_ms = 10\n\
                 gateway = \"fe80::1\"\ndns_server = \"10.0.0.53\"\ndns_query_name = \"example.com\"\n",
            ),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            h,
            HealthConfig {
                interval: Duration::from_millis(2500),
                probes: 10,
                timeout: Duration::from_millis(10),
                gateway: Some("fe80::1".parse().unwrap()),
                dns_server: Some("10.0.0.53:53".parse().unwrap()),
                dns_query_name: "example.com".into(),
            }
        );
    }

    #[test]
    fn refusals() {
        let e = |text: &str| {
            resolve_health(true, &section(text))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e("[health]\ntimeout_ms = 9\n"),
            "[health] timeout_ms 9: must be 10 to 10000"
        );
        assert_eq!(
            e("[health]\ntimeout_ms = 10001\n"),
            "[health] timeout_ms 10001: must be 10 to 10000"
        );
        assert_eq!(
            e("[health]\ninterval_secs = 3601\n"),
            "[health] interval_secs 3601: must be between 0.1 and 3600 seconds"
        );
        assert_eq!(
            e("[health]\nprobes = 0\n"),
            "[health] probes 0: must be between 1 and 10"
        );
        assert_eq!(
            e("[health]\ndns_server = \"ns1\"\n"),
            "[health] dns_server \"ns1\" is not an IP address or address:port"
        );
        assert_eq!(
            e("[health]\ngateway = \"gw\"\n"),
            "[health] gateway \"gw\" is not an IP address"
        );
    }
}
