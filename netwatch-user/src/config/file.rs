//! The config file: its shape (one struct per `[section]`, every key
//! optional, unknown keys refused) and how it is read (once, from a
//! descriptor checked for owner and mode) and parsed. It must never echo a
//! line of the file in an error: a parse error names the line and the
//! problem only (a secret may have been put there by mistake).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Args, ConfigError, Output, DEFAULT_CONFIG_PATH};

/// The config file, as written. Every key is optional; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub mode: Option<String>,
    pub interval_secs: Option<f64>,
    pub outputs: Option<Vec<Output>>,
    pub interface: Option<String>,
    /// The DNS-only capture beside a source that sees no packets [default: true].
    pub dns_capture: Option<bool>,
    pub rows: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_processes: Option<usize>,
    #[serde(default)]
    pub ebpf: EbpfFile,
    #[serde(default)]
    pub ingest: IngestFile,
    #[serde(default)]
    pub spool: SpoolFile,
    #[serde(default)]
    pub health: HealthFile,
    #[serde(default)]
    pub alerts: AlertsFile,
    #[serde(default)]
    pub prometheus: PrometheusFile,
}

/// `[health]` in the config file: gateway and DNS probes (opt-in).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    pub enabled: Option<bool>,
    pub interval_secs: Option<f64>,
    /// Echo requests / DNS queries per round [default: 3].
    pub probes: Option<u32>,
    pub timeout_ms: Option<u64>,
    /// Probe this gateway instead of the host's default gateway.
    pub gateway: Option<String>,
    /// Query this DNS server (`ip` or `ip:port`) instead of the host's.
    pub dns_server: Option<String>,
    /// The name the DNS probe asks for [default: "." (root NS)].
    pub dns_query_name: Option<String>,
}

/// `[alerts]` in the config file. Defaults are netwatch-sdk 0.3.2's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsFile {
    /// [default: true]
    pub enabled: Option<bool>,
    /// How long an alert stays in snapshots [default: 60].
    pub active_secs: Option<f64>,
    /// Alerts kept in the history [default: 100].
    pub history: Option<usize>,
    /// Distinct local ports from one source [default: 20]…
    pub port_scan_ports: Option<usize>,
    /// …or refused/reset attempts from it (0: off) [default: 100]…
    pub port_scan_failed: Option<u32>,
    /// …within this window [default: 30].
    pub port_scan_window_secs: Option<f64>,
    /// Regular intervals before beaconing is judged [default: 5].
    pub beacon_min_intervals: Option<usize>,
    /// Jitter (stddev / mean) below which it is a beacon [default: 0.15].
    pub beacon_max_jitter: Option<f64>,
    /// Intervals outside [min, max] do not count [default: 5, 3600].
    pub beacon_min_interval_secs: Option<f64>,
    pub beacon_max_interval_secs: Option<f64>,
    /// Query names longer than this are suspicious [default: 80].
    pub dns_max_name_bytes: Option<usize>,
    /// More than this many queries a minute to one parent domain… [default: 50]
    pub dns_max_queries_per_min: Option<usize>,
    /// …with more than this many distinct subdomains [default: 30].
    pub dns_max_subdomains: Option<usize>,
    /// Entropy (bits/char) of long subdomains that is suspicious (0: off) [default: 4.2].
    pub dns_entropy_bits: Option<f64>,
    /// Bytes per second, each way, per interface [default: 100000000]…
    pub bandwidth_interface_bps: Option<f64>,
    /// …and per process [default: 100000000]…
    pub bandwidth_process_bps: Option<f64>,
    /// …for this many consecutive samples [default: 2].
    pub bandwidth_consecutive: Option<u32>,
    /// A rate this many times the subject's baseline is a spike (0: off) [default: 10]…
    pub bandwidth_baseline_multiple: Option<f64>,
    /// …when at least this many bytes per second [default: 10000000].
    pub bandwidth_baseline_min_bps: Option<f64>,
}

/// `[ebpf]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EbpfFile {
    pub tier: Option<String>,
    pub max_sockets: Option<u32>,
    pub ringbuf_bytes: Option<u32>,
    /// `true`: pin (as `--pin`); off by default.
    pub pin: Option<bool>,
    pub pin_dir: Option<PathBuf>,
    pub pin_state_file: Option<PathBuf>,
}

/// `[ingest]` in the config file. There is deliberately no `api_key` key:
/// the key lives in its own file (`api_key_file`, mode 0600).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestFile {
    pub endpoint: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub allow_insecure_http: Option<bool>,
    pub ca_file: Option<PathBuf>,
    pub host_id_file: Option<PathBuf>,
    pub batch_max_snapshots: Option<usize>,
    pub batch_max_bytes: Option<usize>,
    pub retry_initial_secs: Option<f64>,
    pub retry_max_secs: Option<f64>,
    pub request_timeout_secs: Option<f64>,
    pub flush_timeout_secs: Option<f64>,
    pub payment_recheck_secs: Option<f64>,
}

/// `[spool]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolFile {
    pub dir: Option<PathBuf>,
    pub max_bytes: Option<u64>,
}

/// `[prometheus]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusFile {
    pub listen: Option<String>,
    pub process_expiry_secs: Option<f64>,
    pub top_processes: Option<usize>,
}

/// Read the config file that `args` names (or the default one), check its
/// ownership and mode, and parse it. `None`: the default file is absent.
pub fn load_file(args: &Args) -> Result<Option<(PathBuf, FileConfig)>, ConfigError> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    // Opened once and checked on the open descriptor: what is read is what
    // was checked.
    let mut file = match crate::files::open_trusted(&path, "config file") {
        Ok((f, _)) => f,
        Err(crate::files::FileError::Io { error: source, .. })
            if source.kind() == std::io::ErrorKind::NotFound && !explicit =>
        {
            return Ok(None)
        }
        Err(crate::files::FileError::Io { error: source, .. }) => {
            return Err(ConfigError::File {
                path,
                what: format!(
                    "cannot be read ({source}); it was named by --config or NETWATCH_CONFIG"
                ),
            })
        }
        Err(e) => return Err(refused(&path, e)),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| ConfigError::File {
        path: path.clone(),
        what: format!("cannot be read: {e}"),
    })?;
    let file = parse_file(&text).map_err(|what| ConfigError::File {
        path: path.clone(),
        what,
    })?;
    Ok(Some((path, file)))
}

/// Parse config text. The error names the line and the problem, never the
/// line's text (it might hold a secret someone put there by mistake).
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        // toml's message names keys and expected types. A serde type error
        // can quote the offending value: keep only the part before it.
        let msg = e.message().trim();
        let msg = match msg.find("invalid type:") {
            Some(_) => msg
                .split_once(", expected")
                .map(|(_, exp)| format!("wrong type, expected{exp}"))
                .unwrap_or_else(|| "wrong type".to_string()),
            None => msg.to_string(),
        };
        match line {
            Some(l) => format!("line {l}: {msg}"),
            None => msg,
        }
    })
}

/// A file [`crate::files::open_trusted`] refused, as a config error.
pub(super) fn refused(path: &Path, e: crate::files::FileError) -> ConfigError {
    ConfigError::File {
        path: path.to_path_buf(),
        what: match e {
            crate::files::FileError::Io {
                action,
                error: source,
                ..
            } => {
                format!("{action}: {source}")
            }
            other => other.to_string(),
        },
    }
}
