//! What the agent produces, how often and how big: `outputs`, `interval`,
//! `rows`, `max_connections` and `max_processes`. The outputs are put in
//! delivery order (ingest first: a snapshot is on disk before any other
//! sink shows it); two outputs that both write to stdout are refused.

use std::time::Duration;

use super::check::{int_in, secs};
use super::file::FileConfig;
use super::{invalid, limits, Args, ConfigError, Output};

/// The interval when delivering to NetWatch Cloud.
pub const DEFAULT_DELIVERY_INTERVAL_SECS: f64 = 15.0;
/// The interval of the live view and the NDJSON stream.
pub const DEFAULT_VIEW_INTERVAL_SECS: f64 = 1.0;
/// Shortest interval accepted.
pub const MIN_INTERVAL_SECS: f64 = 0.05;
/// Longest interval accepted (a day).
pub const MAX_INTERVAL_SECS: f64 = 86_400.0;
/// Rows in the live table by default.
pub const DEFAULT_ROWS: usize = 20;
pub use crate::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PROCESSES};

/// The outputs: `--output` (all of them), else the file's `outputs`, else
/// json; ingest first, each once. An empty list is refused.
pub fn resolve_outputs(args: &Args, f: &FileConfig) -> Result<Vec<Output>, ConfigError> {
    let mut outputs: Vec<Output> = if !args.output.is_empty() {
        args.output.clone()
    } else {
        f.outputs.clone().unwrap_or_else(|| vec![Output::Json])
    };
    if outputs.is_empty() {
        return Err(invalid("outputs = []: give at least one output"));
    }
    // Ingest first: a snapshot is on disk before any other sink shows it.
    outputs.sort_by_key(|o| *o != Output::Ingest);
    outputs.dedup();
    Ok(outputs)
}

/// Refuse outputs that would share stdout (table and json).
pub fn check_stdout(outputs: &[Output]) -> Result<(), ConfigError> {
    if outputs.contains(&Output::Table) && outputs.contains(&Output::Json) {
        return Err(invalid(
            "outputs table and json both write to stdout: choose one",
        ));
    }
    Ok(())
}

/// The snapshot cadence and bounds, as resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSettings {
    pub interval: Duration,
    pub rows: usize,
    pub max_connections: usize,
    pub max_processes: usize,
}

/// The interval (`--interval` or `NETWATCH_INTERVAL`, then the file, then
/// 15 s when `delivering`, else 1 s) and the row bounds (command line, then
/// file, then defaults).
pub fn resolve_snapshot(
    args: &Args,
    f: &FileConfig,
    delivering: bool,
) -> Result<SnapshotSettings, ConfigError> {
    let interval_secs = args.interval.or(f.interval_secs).unwrap_or(if delivering {
        DEFAULT_DELIVERY_INTERVAL_SECS
    } else {
        DEFAULT_VIEW_INTERVAL_SECS
    });
    let interval = secs(
        "interval",
        interval_secs,
        MIN_INTERVAL_SECS,
        MAX_INTERVAL_SECS,
    )?;
    let rows = int_in(
        "rows",
        args.rows.or(f.rows).unwrap_or(DEFAULT_ROWS),
        limits::ROWS,
    )?;
    let max_connections = int_in(
        "max_connections",
        args.max_connections
            .or(f.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS),
        limits::MAX_CONNECTIONS,
    )?;
    let max_processes = int_in(
        "max_processes",
        args.max_processes
            .or(f.max_processes)
            .unwrap_or(DEFAULT_MAX_PROCESSES),
        limits::MAX_PROCESSES,
    )?;
    Ok(SnapshotSettings {
        interval,
        rows,
        max_connections,
        max_processes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_input::{args, file};

    #[test]
    fn outputs_command_line_beats_file_beats_json() {
        let f = file("outputs = [\"table\", \"prometheus\"]\n");
        assert_eq!(
            resolve_outputs(&args(&[]), &FileConfig::default()).unwrap(),
            [Output::Json]
        );
        assert_eq!(
            resolve_outputs(&args(&[]), &f).unwrap(),
            [Output::Table, Output::Prometheus]
        );
        assert_eq!(
            resolve_outputs(&args(&["--output", "json", "--output", "ingest"]), &f).unwrap(),
            [Output::Ingest, Output::Json]
        );
    }

    #[test]
    fn outputs_refusals() {
        assert_eq!(
            resolve_outputs(&args(&[]), &file("outputs = []\n"))
                .unwrap_err()
                .to_string(),
            "outputs = []: give at least one output"
        );
        assert_eq!(
            check_stdout(&[Output::Table, Output::Json])
                .unwrap_err()
                .to_string(),
            "outputs table and json both write to stdout: choose one"
        );
        assert!(check_stdout(&[Output::Ingest, Output::Table, Output::Prometheus]).is_ok());
    }

    #[test]
    fn snapshot_defaults_depend_on_delivering() {
        let none = FileConfig::default();
        let s = resolve_snapshot(&args(&[]), &none, false).unwrap();
        assert_eq!(
            s,
            SnapshotSettings {
                interval: Duration::from_secs(1),
                rows: 20,
                max_connections: 1000,
                max_processes: 1000,
            }
        );
        let s = resolve_snapshot(&args(&[]), &none, true).unwrap();
        assert_eq!(s.interval, Duration::from_secs(15));
    }

    #[test]
    fn snapshot_command_line_beats_file() {
        let f = file("interval_secs = 5\nrows = 7\nmax_connections = 8\nmax_processes = 9\n");
        let s = resolve_snapshot(&args(&[]), &f, true).unwrap();
        assert_eq!(
            s,
            SnapshotSettings {
                interval: Duration::from_secs(5),
                rows: 7,
                max_connections: 8,
                max_processes: 9,
            }
        );
        let a = args(&[
            "--interval",
            "0.25",
            "--rows",
            "3",
            "--max-connections",
            "0",
            "--max-processes",
            "4",
        ]);
        let s = resolve_snapshot(&a, &f, true).unwrap();
        assert_eq!(
            s,
            SnapshotSettings {
                interval: Duration::from_millis(250),
                rows: 3,
                max_connections: 0,
                max_processes: 4,
            }
        );
    }

    #[test]
    fn snapshot_refusals_name_the_setting_value_and_range() {
        let none = FileConfig::default();
        let e = |argv: &[&str]| {
            resolve_snapshot(&args(argv), &none, false)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(&["--interval", "0.04"]),
            "interval 0.04: must be between 0.05 and 86400 seconds"
        );
        assert_eq!(
            e(&["--rows", "10001"]),
            "rows 10001: must be between 1 and 10000"
        );
        assert_eq!(
            e(&["--max-connections", "1000001"]),
            "max_connections 1000001: must be between 0 and 1000000"
        );
    }
}
