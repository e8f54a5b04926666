//! The `[prometheus]` section and its flags: where `/metrics` listens and
//! how many process series it keeps for how long. Resolved only when output
//! prometheus is selected; a listen address is never a host name (no DNS
//! at start).

use std::time::Duration;

use super::check::secs;
use super::file::PrometheusFile;
use super::{invalid, limits, Args, ConfigError};

/// Where `/metrics` listens when none is configured.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// A process series not seen this long is removed from `/metrics`.
pub const DEFAULT_PROCESS_EXPIRY_SECS: f64 = 300.0;
/// At most this many process series on `/metrics` by default.
pub const DEFAULT_TOP_PROCESSES: usize = 100;

/// The `/metrics` server and its process series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusConfig {
    pub listen: std::net::SocketAddr,
    /// A process series absent from the snapshots this long is removed.
    pub process_expiry: Duration,
    /// At most this many process series.
    pub top_processes: usize,
}

/// The `/metrics` settings: command line, then `[prometheus]`, then
/// defaults.
pub fn resolve_prometheus(
    args: &Args,
    f: &PrometheusFile,
) -> Result<PrometheusConfig, ConfigError> {
    let listen_text = args
        .metrics_listen
        .clone()
        .or(f.listen.clone())
        .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.into());
    let listen = listen_text.parse().map_err(|_| {
        invalid(format!(
            "metrics listen address {listen_text:?} is not an IP address and port \
             (e.g. 127.0.0.1:9464 or [::1]:9464)"
        ))
    })?;
    let (lo, hi) = limits::PROCESS_EXPIRY_SECS;
    let process_expiry = secs(
        "process_expiry_secs",
        args.metrics_process_expiry
            .or(f.process_expiry_secs)
            .unwrap_or(DEFAULT_PROCESS_EXPIRY_SECS),
        lo,
        hi,
    )?;
    let top_processes = args
        .metrics_top_processes
        .or(f.top_processes)
        .unwrap_or(DEFAULT_TOP_PROCESSES);
    let (lo, hi) = limits::TOP_PROCESSES;
    if !(lo..=hi).contains(&top_processes) {
        return Err(invalid(format!(
            "top_processes {top_processes}: must be {lo} to {hi}"
        )));
    }
    Ok(PrometheusConfig {
        listen,
        process_expiry,
        top_processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_input::args;

    fn section(text: &str) -> PrometheusFile {
        super::super::parse_file(text).unwrap().prometheus
    }

    #[test]
    fn defaults() {
        assert_eq!(
            resolve_prometheus(&args(&[]), &PrometheusFile::default()).unwrap(),
            PrometheusConfig {
                listen: "127.0.0.1:9464".parse().unwrap(),
                process_expiry: Duration::from_secs(300),
                top_processes: 100,
            }
        );
    }

    #[test]
    fn command_line_beats_file() {
        let f = section(
            "[prometheus]\nlisten = \"[::1]:9000\"\nprocess_expiry_secs = 60\ntop_processes = 5\n",
        );
        assert_eq!(
            resolve_prometheus(&args(&[]), &f).unwrap(),
            PrometheusConfig {
                listen: "[::1]:9000".parse().unwrap(),
                process_expiry: Duration::from_secs(60),
                top_processes: 5,
            }
        );
        let a = args(&[
            "--metrics-listen",
            "127.0.0.2:0",
            "--metrics-process-expiry",
            "1.5",
            "--metrics-top-processes",
            "100000",
        ]);
        assert_eq!(
            resolve_prometheus(&a, &f).unwrap(),
            PrometheusConfig {
                listen: "127.0.0.2:0".parse().unwrap(),
                process_expiry: Duration::from_millis(1500),
                top_processes: 100_000,
            }
        );
    }

    #[test]
    fn refusals() {
        let e = |argv: &[&str], text: &str| {
            resolve_prometheus(&args(argv), &section(text))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(&[], "[prometheus]\nlisten = \"localhost:9464\"\n"),
            "metrics listen address \"localhost:9464\" is not an IP address and port \
             (e.g. 127.0.0.1:9464 or [::1]:9464)"
        );
        assert_eq!(
            e(&["--metrics-top-processes", "100001"], ""),
            "top_processes 100001: must be 1 to 100000"
        );
        assert_eq!(
            e(&[], "[prometheus]\nprocess_expiry_secs = 604801\n"),
            "process_expiry_secs 604801: must be between 1 and 604800 seconds"
        );
    }
}
