//! Agent configuration: the command line (clap), an optional TOML file and
//! the `NETWATCH_*` environment, merged into one validated [`Config`]
//! (command line over environment over file over defaults).
//!
//! It must never take the API key from argv, never print it (the key lives
//! in [`ApiKey`], whose `Debug`/`Display` redact it), never echo a line of
//! the config file in an error (a parse error names the line and the
//! problem only), and never turn a bad value into a silent fallback: a bad
//! value stops the agent at start with a message that names it. Every
//! numeric setting has a range ([`limits`]); a value outside it (NaN and
//! infinities included) is refused with the setting, the value and the
//! range, so no value reaches a panic (`Duration::from_secs_f64`) or an
//! absurd allocation later.
//!
//! One file per part: `args` (the command line), `file` (the config file's
//! shape, reading and parsing), `check` and [`limits`] (ranges), and one
//! resolver per section, each with its defaults and its tests: `outputs`
//! (outputs, interval, rows), `sources` (mode, `[ebpf]`, pinning),
//! `ingest` (`[ingest]`, `[spool]`, the API key), `prometheus`, `health`,
//! `alerts`. [`resolve`] only calls them in order.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;
use serde::Deserialize;
use thiserror::Error;

use crate::source::select::Mode;

mod alerts;
mod args;
mod check;
mod file;
mod health;
mod ingest;
pub mod limits;
mod outputs;
mod prometheus;
mod sources;
#[cfg(test)]
mod tests;

/// Inputs the resolvers' tests share: a command line and a file's text.
#[cfg(test)]
pub(crate) mod test_input {
    use super::{parse_file, Args, FileConfig};
    use clap::Parser;

    /// `netwatch-agent` run with `argv`.
    pub fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("netwatch-agent").chain(argv.iter().copied())).unwrap()
    }

    /// A configuration file's text, parsed.
    pub fn file(text: &str) -> FileConfig {
        parse_file(text).unwrap()
    }
}

pub use alerts::resolve_alerts;
pub use args::Args;
pub use file::{
    load_file, parse_file, AlertsFile, EbpfFile, FileConfig, HealthFile, IngestFile,
    PrometheusFile, SpoolFile,
};
pub use health::resolve_health;
pub use ingest::{
    ingest_url, read_api_key_file, redact_url, resolve_ingest, ApiKey, IngestConfig,
    DEFAULT_FLUSH_TIMEOUT_SECS, DEFAULT_HOST_ID_FILE, DEFAULT_PAYMENT_RECHECK_SECS,
    DEFAULT_REQUEST_TIMEOUT_SECS, DEFAULT_RETRY_INITIAL_SECS, DEFAULT_RETRY_MAX_SECS,
    DEFAULT_SPOOL_DIR, DEFAULT_SPOOL_MAX_BYTES, MAX_BATCH_BYTES, MAX_BATCH_SNAPSHOTS,
};
pub use outputs::{
    check_stdout, resolve_outputs, resolve_snapshot, SnapshotSettings,
    DEFAULT_DELIVERY_INTERVAL_SECS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PROCESSES, DEFAULT_ROWS,
    DEFAULT_VIEW_INTERVAL_SECS, MAX_INTERVAL_SECS, MIN_INTERVAL_SECS,
};
pub use prometheus::{
    resolve_prometheus, PrometheusConfig, DEFAULT_METRICS_LISTEN, DEFAULT_PROCESS_EXPIRY_SECS,
    DEFAULT_TOP_PROCESSES,
};
pub use sources::{
    pin_paths, resolve_dns_capture, resolve_ebpf, resolve_interface, resolve_mode, EbpfSettings,
    TierChoice, DEFAULT_PIN_DIR, DEFAULT_PIN_STATE_FILE,
};

/// Where the agent looks for its config file when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/netwatch-agent/config.toml";
/// The environment variable that carries the API key.
pub const API_KEY_ENV: &str = "NETWATCH_API_KEY";

/// Where snapshots go (`--output`, may be given several times).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// A live table on the terminal.
    Table,
    /// One JSON `Snapshot` per line on stdout.
    Json,
    /// Prometheus `/metrics` over HTTP (see `[prometheus]`).
    Prometheus,
    /// NetWatch Cloud ingest, through the on-disk spool.
    Ingest,
}

/// Why the configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path}: {what}")]
    File { path: PathBuf, what: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the API key is not usable: {0}")]
    ApiKey(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub ebpf: EbpfSettings,
    pub interval: Duration,
    pub once: bool,
    pub outputs: Vec<Output>,
    pub interface: Option<String>,
    /// Run the DNS-only capture beside a source that sees no packets
    /// (`crate::source::dns_capture`).
    pub dns_capture: bool,
    pub rows: usize,
    /// Connection rows per snapshot at most (top-N by interval bytes).
    pub max_connections: usize,
    /// Process rows per snapshot at most (top-N by interval bytes, the rest
    /// folded into one row).
    pub max_processes: usize,
    /// Set when `outputs` holds `Ingest`.
    pub ingest: Option<IngestConfig>,
    /// Set when `outputs` holds `Prometheus`.
    pub prometheus: Option<PrometheusConfig>,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Health probes; `None`: off (the default).
    pub health: Option<crate::health::HealthConfig>,
    /// Alert detectors; `None`: off.
    pub alerts: Option<crate::alerts::AlertConfig>,
}

/// Merge `args`, the environment's API key (`env_api_key`, already taken
/// out of the environment) and the config file into a validated [`Config`]:
/// each section by its own resolver, in this order (the first refusal is
/// the one reported).
pub fn resolve(
    args: &Args,
    env_api_key: Option<&str>,
    file: Option<(PathBuf, FileConfig)>,
) -> Result<Config, ConfigError> {
    let (config_file, f) = match file {
        Some((p, f)) => (Some(p), f),
        None => (None, FileConfig::default()),
    };
    let mode = resolve_mode(args, &f)?;
    let ebpf = resolve_ebpf(args, &f.ebpf)?;
    let outputs = resolve_outputs(args, &f)?;
    let prometheus = if outputs.contains(&Output::Prometheus) {
        Some(resolve_prometheus(args, &f.prometheus)?)
    } else {
        None
    };
    check_stdout(&outputs)?;
    let delivering = outputs.contains(&Output::Ingest);
    let snapshot = resolve_snapshot(args, &f, delivering)?;
    let ingest = resolve_ingest(args, env_api_key, &f.ingest, &f.spool, delivering)?;
    let health = resolve_health(args.health, &f.health)?;
    let alerts = resolve_alerts(&f.alerts)?;
    Ok(Config {
        mode,
        ebpf,
        interval: snapshot.interval,
        once: args.once,
        outputs,
        interface: resolve_interface(args, &f),
        dns_capture: resolve_dns_capture(args, &f),
        rows: snapshot.rows,
        max_connections: snapshot.max_connections,
        max_processes: snapshot.max_processes,
        ingest,
        prometheus,
        config_file,
        health,
        alerts,
    })
}
