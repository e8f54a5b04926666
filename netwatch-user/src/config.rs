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

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;
use thiserror::Error;

use crate::source::select::Mode;

/// Where the agent looks for its config file when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/netwatch-agent/config.toml";
/// The on-disk spool of snapshots not yet accepted by the cloud.
/// Where the BPF maps and links are pinned.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netwatch";
/// The per-socket baseline a restarted agent continues from.
pub const DEFAULT_PIN_STATE_FILE: &str = "/var/lib/netwatch-agent/ebpf-baseline";
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/netwatch-agent/spool";
/// The persisted host id (the cloud's primary key for this host).
pub const DEFAULT_HOST_ID_FILE: &str = "/var/lib/netwatch-agent/host-id";
/// Spool bound when none is configured.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// At most this many snapshots per ingest request (the cloud's limit).
pub const MAX_BATCH_SNAPSHOTS: usize = 100;
/// At most this many bytes of JSON per ingest request (the cloud's 5 MB).
pub const MAX_BATCH_BYTES: usize = 5_000_000;
/// The interval when delivering to NetWatch Cloud.
pub const DEFAULT_DELIVERY_INTERVAL_SECS: f64 = 15.0;
/// The interval of the live view and the NDJSON stream.
pub const DEFAULT_VIEW_INTERVAL_SECS: f64 = 1.0;
/// Connection rows per snapshot by default. netwatch-sdk 0.3.2 leaves the
/// bound to its caller (`top_connections(conns, max)`); 1000 rows keep a
/// snapshot near 200 KB of JSON.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Process rows per snapshot by default (the busiest this interval; the
/// others are summed into one row). A row with every metadata field is
/// about 360 bytes of JSON (measured by `tests/process_rows.rs`, an exe
/// path of 70 characters), so 1000 rows are 0.36 MB, with 1000 connection
/// rows (about 190 bytes each) 0.55 MB: a fork flood of any size leaves a
/// snapshot well under the ingest's 5 MB batch limit. Rows of hostile
/// names stay under 2 KB each (`cmd` is cut at
/// [`crate::procinfo::process::MAX_CMD_CHARS`]): 2 MB for 1000.
pub const DEFAULT_MAX_PROCESSES: usize = 1000;
/// Shortest interval accepted.
pub const MIN_INTERVAL_SECS: f64 = 0.05;
/// Longest interval accepted (a day).
pub const MAX_INTERVAL_SECS: f64 = 86_400.0;
/// The environment variable that carries the API key.
pub const API_KEY_ENV: &str = "NETWATCH_API_KEY";
/// Where `/metrics` listens when none is configured.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// A process series not seen this long is removed from `/metrics`.
pub const DEFAULT_PROCESS_EXPIRY_SECS: f64 = 300.0;
/// At most this many process series on `/metrics` by default.
pub const DEFAULT_TOP_PROCESSES: usize = 100;

/// The NetWatch Cloud API key. Its `Debug` and `Display` print
/// `<redacted>`; only [`ApiKey::expose`] gives the text, for the one header
/// that needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// A key from its text (surrounding whitespace removed). Refuses an
    /// empty key and one that cannot be sent in an HTTP header, without
    /// repeating the key in the error.
    pub fn new(text: &str) -> Result<Self, ConfigError> {
        let t = text.trim();
        if t.is_empty() {
            return Err(ConfigError::ApiKey("it is empty".into()));
        }
        if !t.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ConfigError::ApiKey(
                "it holds spaces, control or non-ASCII characters, which an HTTP header cannot carry"
                    .into(),
            ));
        }
        Ok(Self(t.to_string()))
    }

    /// The key's text. Use it for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

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

/// Per-process network bandwidth, counted in the kernel.
///
/// Settings come from the command line, then the environment
/// (`NETWATCH_CONFIG`, `NETWATCH_ENDPOINT`, `NETWATCH_INTERVAL`,
/// `NETWATCH_API_KEY`), then the config file, then defaults. The API key is
/// never an argument: use `--api-key-file`, `NETWATCH_API_KEY` or
/// `api_key_file` in the config file.
#[derive(Debug, Parser)]
#[command(name = "netwatch-agent", version, about)]
pub struct Args {
    /// Config file (TOML). The default path may be absent; a named one must
    /// exist. Refused if group/world-writable or not owned by root.
    #[arg(long, env = "NETWATCH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where per-process bytes come from [default: auto].
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// eBPF hook tier: auto, fentry, kprobe or tracepoint [default: auto].
    #[arg(long)]
    pub ebpf_tier: Option<String>,
    /// Capacity of the kernel's per-socket map [default: 65536].
    #[arg(long)]
    pub max_sockets: Option<u32>,
    /// Size of the kernel's closed-socket ring buffer in bytes (a power of
    /// two, at least 4096) [default: 1048576].
    #[arg(long)]
    pub ringbuf_bytes: Option<u32>,
    /// Pin the BPF maps and links under --pin-dir, so the programs keep
    /// counting while the agent is stopped and a restart continues from
    /// them (the packaged service does; `--unpin` removes what it left).
    /// Without it, everything is detached when the agent exits.
    #[arg(long, conflicts_with = "no_pin")]
    pub pin: bool,
    /// Do not pin, even if the config file says `pin = true` (the default
    /// without either).
    #[arg(long)]
    pub no_pin: bool,
    /// Remove the BPF pins a pinned agent left under --pin-dir (only
    /// netwatch's own, named `v1-<16 hex>`), say what was removed, and exit.
    /// Refused while an agent runs on them.
    #[arg(long, conflicts_with_all = ["pin", "once"])]
    pub unpin: bool,
    /// Where the BPF maps and links are pinned [default: /sys/fs/bpf/netwatch].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Where the last delivered per-socket baseline is kept, for restarts
    /// [default: /var/lib/netwatch-agent/ebpf-baseline].
    #[arg(long, value_name = "PATH")]
    pub pin_state_file: Option<PathBuf>,
    /// Seconds between snapshots (fractions allowed) [default: 15 with
    /// `--output ingest`, else 1].
    #[arg(long, env = "NETWATCH_INTERVAL", value_name = "SECONDS")]
    pub interval: Option<f64>,
    /// Print one snapshot after one interval, then exit.
    #[arg(long)]
    pub once: bool,
    /// Output; give several times for several [default: json].
    #[arg(long, value_enum)]
    pub output: Vec<Output>,
    /// Capture interface for `--mode pcap` (default: all).
    #[arg(short = 'i', long)]
    pub interface: Option<String>,
    /// Do not run the DNS-only capture (libpcap, `port 53`) beside a
    /// source that sees no packets (ebpf, ss, proc): no `dns_analytics`
    /// then. Overrides `dns_capture = true` in the config file.
    #[arg(long)]
    pub no_dns_capture: bool,
    /// Rows in the live table [default: 20].
    #[arg(long)]
    pub rows: Option<usize>,
    /// Connection rows per snapshot at most, the busiest this interval
    /// first; per-process totals still count every socket [default: 1000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Process rows per snapshot at most, the busiest this interval first;
    /// the others are summed into one `(others)` row [default: 1000].
    #[arg(long)]
    pub max_processes: Option<usize>,
    /// NetWatch Cloud base URL (`/api/v1/ingest` is appended).
    #[arg(long, env = "NETWATCH_ENDPOINT", value_name = "URL")]
    pub endpoint: Option<String>,
    /// File holding the API key (one line). Overrides `NETWATCH_API_KEY`.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Allow plain http to a non-loopback endpoint (the key travels in clear).
    #[arg(long)]
    pub allow_insecure_http: bool,
    /// PEM file of a private CA to trust for the endpoint, besides the
    /// Mozilla roots.
    #[arg(long, value_name = "PATH")]
    pub ingest_ca_file: Option<PathBuf>,
    /// Spool directory for snapshots not yet accepted
    /// [default: /var/lib/netwatch-agent/spool].
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Spool bound in bytes; past it the oldest snapshots are dropped and counted.
    #[arg(long, value_name = "BYTES")]
    pub spool_max_bytes: Option<u64>,
    /// Host id file [default: /var/lib/netwatch-agent/host-id].
    #[arg(long, value_name = "PATH")]
    pub host_id_file: Option<PathBuf>,
    /// Probe the gateway (ICMP echo) and the DNS server (a query) every
    /// `[health] interval_secs` (default 30) for the snapshot's `health`.
    /// Off unless given here or `[health] enabled = true`.
    #[arg(long)]
    pub health: bool,
    /// Address `/metrics` listens on (port 0: any free port)
    /// [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Seconds a process series stays on `/metrics` after its process is
    /// last seen [default: 300].
    #[arg(long, value_name = "SECONDS")]
    pub metrics_process_expiry: Option<f64>,
    /// At most this many process series on `/metrics`; the bytes of other
    /// processes are counted under comm="other" [default: 100].
    #[arg(long, value_name = "N")]
    pub metrics_top_processes: Option<usize>,
}

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

/// eBPF loader settings.
#[derive(Debug, Clone)]
pub struct EbpfSettings {
    pub tier: String,
    pub max_sockets: u32,
    pub ringbuf_bytes: u32,
    /// Pin maps and links here (`None`: not pinning, the default; `--pin`
    /// or `[ebpf] pin = true` turn it on).
    pub pin_dir: Option<PathBuf>,
    /// The baseline file for restarts.
    pub pin_state_file: PathBuf,
}

/// Everything the ingest sink and its spool need.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The full ingest URL (`…/api/v1/ingest`).
    pub url: String,
    pub api_key: ApiKey,
    /// A private CA (PEM) trusted besides the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    pub host_id_file: PathBuf,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub batch_max_snapshots: usize,
    pub batch_max_bytes: usize,
    /// First retry delay after a failure; doubles per failure.
    pub retry_initial: Duration,
    /// Retry delay cap (5 minutes at most).
    pub retry_max: Duration,
    pub request_timeout: Duration,
    /// How long SIGTERM waits for the spool to drain before exiting.
    pub flush_timeout: Duration,
    /// After a 402, one batch is sent again this long after (default 1 h).
    pub payment_recheck: Duration,
}

/// The `/metrics` server and its process series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusConfig {
    pub listen: std::net::SocketAddr,
    /// A process series absent from the snapshots this long is removed.
    pub process_expiry: Duration,
    /// At most this many process series.
    pub top_processes: usize,
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
fn refused(path: &Path, e: crate::files::FileError) -> ConfigError {
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

/// Read the API key from `path` (one line; surrounding whitespace ignored).
/// Opened once and checked on the open descriptor
/// ([`crate::files::open_trusted`]): no symlink swap between the check and
/// the read.
pub fn read_api_key_file(path: &Path) -> Result<ApiKey, ConfigError> {
    let (file, meta) = crate::files::open_trusted(path, "API key file").map_err(|e| match e {
        crate::files::FileError::Io { error: source, .. } => ConfigError::File {
            path: path.to_path_buf(),
            what: format!("API key file cannot be read: {source}"),
        },
        other => refused(path, other),
    })?;
    if meta.mode() & 0o044 != 0 {
        log::warn!(
            "API key file {} is readable by other users (mode {:04o}); chmod 600 it",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    let mut bytes = Vec::new();
    // A key is a line; 64 KiB is not one.
    std::io::Read::read_to_end(&mut std::io::Read::take(file, 64 << 10), &mut bytes).map_err(
        |e| ConfigError::File {
            path: path.to_path_buf(),
            what: format!("API key file cannot be read: {e}"),
        },
    )?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ConfigError::ApiKey(format!("{} is not UTF-8 text", path.display())))?;
    ApiKey::new(text).map_err(|e| match e {
        ConfigError::ApiKey(why) => ConfigError::ApiKey(format!("{} ({why})", path.display())),
        other => other,
    })
}

/// The bounds of the numeric settings that have no constant of their own.
pub mod limits {
    /// `max_sockets`: the kernel socket map's entries (the claims map
    /// holds 4 per socket).
    pub const MAX_SOCKETS: (u32, u32) = (1, 1 << 24);
    /// `ringbuf_bytes`: a power of two from a page to 1 GiB.
    pub const RINGBUF_BYTES: (u32, u32) = (4096, 1 << 30);
    /// `rows` of the live table.
    pub const ROWS: (usize, usize) = (1, 10_000);
    /// `max_connections` per snapshot (0: none listed).
    pub const MAX_CONNECTIONS: (usize, usize) = (0, 1_000_000);
    /// `max_processes` per snapshot (0: every process in the one folded row).
    pub const MAX_PROCESSES: (usize, usize) = (0, 1_000_000);
    /// The spool's bound, bytes (64 KiB to 1 TiB).
    pub const SPOOL_MAX_BYTES: (u64, u64) = (64 * 1024, 1 << 40);
    /// `[health] probes` per round.
    pub const HEALTH_PROBES: (u32, u32) = (1, 10);
    /// `[alerts] history`.
    pub const ALERT_HISTORY: (usize, usize) = (1, 100_000);
    /// `[alerts] port_scan_ports` (a source cannot touch more ports).
    pub const PORT_SCAN_PORTS: (usize, usize) = (1, 65_535);
    /// `[alerts] port_scan_failed` (0: off).
    pub const PORT_SCAN_FAILED: (u32, u32) = (0, 1_000_000);
    /// `[alerts] beacon_min_intervals` (each destination keeps this many).
    pub const BEACON_MIN_INTERVALS: (usize, usize) = (1, 1_000);
    /// `[alerts] beacon_max_jitter` (stddev / mean).
    pub const BEACON_MAX_JITTER: (f64, f64) = (0.0, 10.0);
    /// `[alerts] dns_max_name_bytes` (a DNS name has at most 255).
    pub const DNS_MAX_NAME_BYTES: (usize, usize) = (1, 255);
    /// `[alerts] dns_max_queries_per_min`.
    pub const DNS_MAX_QUERIES_PER_MIN: (usize, usize) = (1, 1_000_000);
    /// `[alerts] dns_max_subdomains`.
    pub const DNS_MAX_SUBDOMAINS: (usize, usize) = (0, 1_000_000);
    /// `[alerts] dns_entropy_bits`, bits per character (0: off).
    pub const DNS_ENTROPY_BITS: (f64, f64) = (0.0, 8.0);
    /// `[alerts] bandwidth_*_bps` thresholds, bytes per second (1 PB/s).
    pub const BANDWIDTH_BPS: (f64, f64) = (0.0, 1e15);
    /// `[alerts] bandwidth_consecutive` samples.
    pub const BANDWIDTH_CONSECUTIVE: (u32, u32) = (1, 10_000);
    /// `[alerts] bandwidth_baseline_multiple` (0: off).
    pub const BANDWIDTH_BASELINE_MULTIPLE: (f64, f64) = (0.0, 1e6);
}

/// A number as a message shows it: plainly, or in exponent form when it is
/// huge, tiny, NaN or infinite (`1e300`, not three hundred digits).
fn shown(v: f64) -> String {
    let a = v.abs();
    if v.is_finite() && (a == 0.0 || (1e-6..1e15).contains(&a)) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// A duration setting: `v` seconds, finite and within `min..=max`.
fn secs(name: &str, v: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
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
fn int_in<T: PartialOrd + fmt::Display + Copy>(
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
fn real_in(
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

/// `url` with any user information (`user:password@`) of its authority
/// replaced by `<redacted>`: the form in which a URL from the
/// configuration may appear in an error or a log line. Works on text that
/// is not a valid URL too (an error about a malformed URL must not echo a
/// password either).
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => {
            std::borrow::Cow::Owned(format!("{}<redacted>{}", &url[..after_scheme], &rest[at..]))
        }
        None => std::borrow::Cow::Borrowed(url),
    }
}

/// The ingest URL for an endpoint: `<endpoint>/api/v1/ingest` (an endpoint
/// that already ends so is kept). Plain http only to a loopback host unless
/// `allow_insecure_http`. An endpoint with user information
/// (`https://user:password@host`) is refused: the key belongs in the key
/// file, and a URL is logged. Errors show the endpoint through
/// [`redact_url`].
pub fn ingest_url(endpoint: &str, allow_insecure_http: bool) -> Result<String, ConfigError> {
    let shown = redact_url(endpoint);
    if shown != endpoint {
        return Err(invalid(format!(
            "endpoint {shown:?} holds a user name or password: credentials in the URL are \
             refused (they would be logged); give the base URL and put the API key in \
             --api-key-file or [ingest] api_key_file"
        )));
    }
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|e| invalid(format!("endpoint {endpoint:?} is not a URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| invalid(format!("endpoint {endpoint:?} has no host")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = h.eq_ignore_ascii_case("localhost")
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback && !allow_insecure_http {
                return Err(invalid(format!(
                    "endpoint {endpoint:?} is plain http to a non-loopback host: the API key \
                     would travel in clear; use https, or pass --allow-insecure-http"
                )));
            }
        }
        other => {
            return Err(invalid(format!(
                "endpoint {endpoint:?}: scheme {:?} is not http or https",
                other.unwrap_or("")
            )))
        }
    }
    if uri.query().is_some() {
        return Err(invalid(format!(
            "endpoint {endpoint:?} has a query string; give the base URL"
        )));
    }
    let base = endpoint.trim_end_matches('/');
    Ok(if base.ends_with("/api/v1/ingest") {
        base.to_string()
    } else {
        format!("{base}/api/v1/ingest")
    })
}

/// Merge `args`, the environment's API key (`env_api_key`, already taken
/// out of the environment) and the config file into a validated [`Config`].
pub fn resolve(
    args: &Args,
    env_api_key: Option<&str>,
    file: Option<(PathBuf, FileConfig)>,
) -> Result<Config, ConfigError> {
    let (config_file, f) = match file {
        Some((p, f)) => (Some(p), f),
        None => (None, FileConfig::default()),
    };

    let mode = match (&args.mode, &f.mode) {
        (Some(m), _) => *m,
        (None, Some(s)) => Mode::from_str(s, true).map_err(|_| {
            invalid(format!(
                "mode {s:?} is not a mode: expected auto, ebpf, ss, pcap or proc"
            ))
        })?,
        (None, None) => Mode::Auto,
    };

    let tier = args
        .ebpf_tier
        .clone()
        .or(f.ebpf.tier.clone())
        .unwrap_or_else(|| "auto".into());
    if !matches!(tier.as_str(), "auto" | "fentry" | "kprobe" | "tracepoint") {
        return Err(invalid(format!(
            "eBPF tier {tier:?} is not a tier: expected auto, fentry, kprobe or tracepoint"
        )));
    }
    let max_sockets = int_in(
        "max_sockets",
        args.max_sockets.or(f.ebpf.max_sockets).unwrap_or(65536),
        limits::MAX_SOCKETS,
    )?;
    let ringbuf_bytes = args
        .ringbuf_bytes
        .or(f.ebpf.ringbuf_bytes)
        .unwrap_or(1 << 20);
    if !ringbuf_bytes.is_power_of_two() || ringbuf_bytes < limits::RINGBUF_BYTES.0 {
        return Err(invalid(format!(
            "ringbuf_bytes {ringbuf_bytes} is not a power of two of at least 4096 (a page)"
        )));
    }
    int_in("ringbuf_bytes", ringbuf_bytes, limits::RINGBUF_BYTES)?;

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
    let prometheus = if outputs.contains(&Output::Prometheus) {
        Some(prometheus_config(args, &f.prometheus)?)
    } else {
        None
    };
    if outputs.contains(&Output::Table) && outputs.contains(&Output::Json) {
        return Err(invalid(
            "outputs table and json both write to stdout: choose one",
        ));
    }
    let delivering = outputs.contains(&Output::Ingest);

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

    let rows = int_in("rows", args.rows.or(f.rows).unwrap_or(20), limits::ROWS)?;
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

    let endpoint = args.endpoint.clone().or(f.ingest.endpoint.clone());
    let ingest = if delivering {
        let endpoint = endpoint.ok_or_else(|| {
            invalid("output ingest needs an endpoint: --endpoint, NETWATCH_ENDPOINT or [ingest] endpoint")
        })?;
        let allow_insecure =
            args.allow_insecure_http || f.ingest.allow_insecure_http.unwrap_or(false);
        let url = ingest_url(&endpoint, allow_insecure)?;
        let api_key = match (&args.api_key_file, env_api_key, &f.ingest.api_key_file) {
            (Some(p), _, _) => read_api_key_file(p)?,
            (None, Some(k), _) => ApiKey::new(k).map_err(|e| match e {
                ConfigError::ApiKey(why) => ConfigError::ApiKey(format!("{API_KEY_ENV} ({why})")),
                other => other,
            })?,
            (None, None, Some(p)) => read_api_key_file(p)?,
            (None, None, None) => {
                return Err(invalid(format!(
                    "output ingest needs an API key: --api-key-file, {API_KEY_ENV} or [ingest] api_key_file"
                )))
            }
        };
        let batch_max_snapshots = f.ingest.batch_max_snapshots.unwrap_or(MAX_BATCH_SNAPSHOTS);
        if !(1..=MAX_BATCH_SNAPSHOTS).contains(&batch_max_snapshots) {
            return Err(invalid(format!(
                "batch_max_snapshots {batch_max_snapshots}: must be 1 to {MAX_BATCH_SNAPSHOTS}"
            )));
        }
        let batch_max_bytes = f.ingest.batch_max_bytes.unwrap_or(MAX_BATCH_BYTES);
        if !(64 * 1024..=MAX_BATCH_BYTES).contains(&batch_max_bytes) {
            return Err(invalid(format!(
                "batch_max_bytes {batch_max_bytes}: must be 65536 to {MAX_BATCH_BYTES}"
            )));
        }
        let retry_initial = secs(
            "retry_initial_secs",
            f.ingest.retry_initial_secs.unwrap_or(1.0),
            0.01,
            300.0,
        )?;
        let retry_max = secs(
            "retry_max_secs",
            f.ingest.retry_max_secs.unwrap_or(300.0),
            retry_initial.as_secs_f64(),
            300.0,
        )?;
        let request_timeout = secs(
            "request_timeout_secs",
            f.ingest.request_timeout_secs.unwrap_or(30.0),
            0.1,
            600.0,
        )?;
        let flush_timeout = secs(
            "flush_timeout_secs",
            f.ingest.flush_timeout_secs.unwrap_or(10.0),
            0.0,
            600.0,
        )?;
        let payment_recheck = secs(
            "payment_recheck_secs",
            f.ingest.payment_recheck_secs.unwrap_or(3600.0),
            0.1,
            7.0 * 86400.0,
        )?;
        let spool_max_bytes = int_in(
            "spool max_bytes",
            args.spool_max_bytes
                .or(f.spool.max_bytes)
                .unwrap_or(DEFAULT_SPOOL_MAX_BYTES),
            limits::SPOOL_MAX_BYTES,
        )?;
        Some(IngestConfig {
            url,
            api_key,
            ca_file: args.ingest_ca_file.clone().or(f.ingest.ca_file.clone()),
            host_id_file: args
                .host_id_file
                .clone()
                .or(f.ingest.host_id_file.clone())
                .unwrap_or_else(|| DEFAULT_HOST_ID_FILE.into()),
            spool_dir: args
                .spool_dir
                .clone()
                .or(f.spool.dir.clone())
                .unwrap_or_else(|| DEFAULT_SPOOL_DIR.into()),
            spool_max_bytes,
            batch_max_snapshots,
            batch_max_bytes,
            retry_initial,
            retry_max,
            request_timeout,
            flush_timeout,
            payment_recheck,
        })
    } else {
        if endpoint.is_some() {
            log::info!(
                "an endpoint is configured but output ingest is not selected: not delivering"
            );
        }
        None
    };

    let health = resolve_health(args.health, &f.health)?;
    let alerts = resolve_alerts(&f.alerts)?;

    Ok(Config {
        mode,
        ebpf: EbpfSettings {
            tier,
            max_sockets,
            ringbuf_bytes,
            pin_dir: (!args.no_pin && (args.pin || f.ebpf.pin == Some(true)))
                .then(|| pin_paths(args, &f).0),
            pin_state_file: pin_paths(args, &f).1,
        },
        interval,
        once: args.once,
        outputs,
        interface: args.interface.clone().or(f.interface.clone()),
        dns_capture: !args.no_dns_capture && f.dns_capture != Some(false),
        rows,
        max_connections,
        max_processes,
        ingest,
        prometheus,
        config_file,
        health,
        alerts,
    })
}

/// The pin directory and the baseline file, pinning or not (`--unpin`
/// needs them too): command line, then file, then defaults.
pub fn pin_paths(args: &Args, file: &FileConfig) -> (PathBuf, PathBuf) {
    (
        args.pin_dir
            .clone()
            .or(file.ebpf.pin_dir.clone())
            .unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
        args.pin_state_file
            .clone()
            .or(file.ebpf.pin_state_file.clone())
            .unwrap_or_else(|| DEFAULT_PIN_STATE_FILE.into()),
    )
}

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
    let timeout_ms = h.timeout_ms.unwrap_or(1000);
    if !(10..=10_000).contains(&timeout_ms) {
        return Err(invalid(format!(
            "[health] timeout_ms {timeout_ms}: must be 10 to 10000"
        )));
    }
    Ok(Some(crate::health::HealthConfig {
        interval: secs(
            "[health] interval_secs",
            h.interval_secs.unwrap_or(d.interval.as_secs_f64()),
            0.1,
            3600.0,
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

/// `[alerts]` into the detector thresholds; `None` when `enabled = false`.
pub fn resolve_alerts(a: &AlertsFile) -> Result<Option<crate::alerts::AlertConfig>, ConfigError> {
    use crate::alerts::AlertConfig;
    if !a.enabled.unwrap_or(true) {
        return Ok(None);
    }
    let mut c = AlertConfig::default();
    if let Some(v) = a.active_secs {
        c.active = secs("[alerts] active_secs", v, 1.0, 86_400.0)?;
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
        c.port_scan.window = secs("[alerts] port_scan_window_secs", v, 0.1, 86_400.0)?;
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
        c.beacon.min_interval = secs("[alerts] beacon_min_interval_secs", v, 0.0, 86_400.0)?;
    }
    if let Some(v) = a.beacon_max_interval_secs {
        c.beacon.max_interval = secs(
            "[alerts] beacon_max_interval_secs",
            v,
            c.beacon.min_interval.as_secs_f64(),
            86_400.0,
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

fn prometheus_config(args: &Args, f: &PrometheusFile) -> Result<PrometheusConfig, ConfigError> {
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
    let process_expiry = secs(
        "process_expiry_secs",
        args.metrics_process_expiry
            .or(f.process_expiry_secs)
            .unwrap_or(DEFAULT_PROCESS_EXPIRY_SECS),
        1.0,
        7.0 * 86400.0,
    )?;
    let top_processes = args
        .metrics_top_processes
        .or(f.top_processes)
        .unwrap_or(DEFAULT_TOP_PROCESSES);
    if !(1..=100_000).contains(&top_processes) {
        return Err(invalid(format!(
            "top_processes {top_processes}: must be 1 to 100000"
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

    fn args(argv: &[&str]) -> Args {
        let mut v = vec!["netwatch-agent"];
        v.extend_from_slice(argv);
        Args::try_parse_from(v).unwrap()
    }

    fn file(text: &str) -> Option<(PathBuf, FileConfig)> {
        Some((PathBuf::from("/test.toml"), parse_file(text).unwrap()))
    }

    fn err(r: Result<Config, ConfigError>) -> String {
        r.map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_json_every_second() {
        let c = resolve(&args(&[]), None, None).unwrap();
        assert_eq!(c.outputs, vec![Output::Json]);
        assert_eq!(c.interval, Duration::from_secs(1));
        assert_eq!(c.mode, Mode::Auto);
        assert!(c.ingest.is_none());
    }

    #[test]
    fn the_dns_capture_is_on_unless_the_flag_or_the_file_turns_it_off() {
        let on = |a: &[&str], f: Option<&str>| {
            resolve(&args(a), None, f.and_then(file))
                .unwrap()
                .dns_capture
        };
        assert!(on(&[], None));
        assert!(on(&[], Some("dns_capture = true\n")));
        assert!(!on(&[], Some("dns_capture = false\n")));
        assert!(!on(&["--no-dns-capture"], None));
        assert!(!on(&["--no-dns-capture"], Some("dns_capture = true\n")));
        assert!(parse_file("dns_capture = \"no\"\n").is_err());
    }

    #[test]
    fn delivering_defaults_to_fifteen_seconds_and_full_limits() {
        let c = resolve(
            &args(&["--output", "ingest", "--endpoint", "https://cloud.example"]),
            Some("k3y"),
            None,
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(15));
        let i = c.ingest.unwrap();
        assert_eq!(i.url, "https://cloud.example/api/v1/ingest");
        assert_eq!(i.batch_max_snapshots, 100);
        assert_eq!(i.batch_max_bytes, 5_000_000);
        assert_eq!(i.retry_max, Duration::from_secs(300));
        assert_eq!(i.spool_dir, PathBuf::from(DEFAULT_SPOOL_DIR));
        assert_eq!(i.payment_recheck, Duration::from_secs(3600));
        assert_eq!(i.ca_file, None);
    }

    #[test]
    fn ca_file_and_payment_recheck_from_flags_and_file() {
        let base = ["--output", "ingest", "--endpoint", "https://cloud.example"];
        let c = resolve(
            &args(&base),
            Some("k3y"),
            file("[ingest]\nca_file = \"/etc/ca.pem\"\npayment_recheck_secs = 60\n"),
        )
        .unwrap();
        let i = c.ingest.unwrap();
        assert_eq!(i.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(i.payment_recheck, Duration::from_secs(60));
        let mut flags = base.to_vec();
        flags.extend(["--ingest-ca-file", "/other.pem"]);
        let c = resolve(
            &args(&flags),
            Some("k3y"),
            file("[ingest]\nca_file = \"/etc/ca.pem\"\n"),
        )
        .unwrap();
        assert_eq!(c.ingest.unwrap().ca_file, Some(PathBuf::from("/other.pem")));
        let e = resolve(
            &args(&base),
            Some("k3y"),
            file("[ingest]\npayment_recheck_secs = 0\n"),
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
        assert!(e.contains("payment_recheck_secs 0"), "{e}");
    }

    #[test]
    fn pinning_is_off_by_default_and_pin_or_the_file_turns_it_on() {
        let c = resolve(&args(&[]), None, None).unwrap();
        assert_eq!(c.ebpf.pin_dir, None);
        assert_eq!(c.ebpf.pin_state_file, PathBuf::from(DEFAULT_PIN_STATE_FILE));
        let c = resolve(&args(&["--pin"]), None, None).unwrap();
        assert_eq!(c.ebpf.pin_dir, Some(PathBuf::from(DEFAULT_PIN_DIR)));
        let c = resolve(&args(&["--pin", "--pin-dir", "/sys/fs/bpf/x"]), None, None).unwrap();
        assert_eq!(c.ebpf.pin_dir, Some(PathBuf::from("/sys/fs/bpf/x")));
        // A directory alone does not pin.
        let c = resolve(&args(&["--pin-dir", "/sys/fs/bpf/x"]), None, None).unwrap();
        assert_eq!(c.ebpf.pin_dir, None);
        let f = "[ebpf]\npin = true\npin_dir = \"/sys/fs/bpf/f\"\npin_state_file = \"/s/b\"\n";
        let c = resolve(&args(&[]), None, file(f)).unwrap();
        assert_eq!(c.ebpf.pin_dir, Some(PathBuf::from("/sys/fs/bpf/f")));
        assert_eq!(c.ebpf.pin_state_file, PathBuf::from("/s/b"));
        let c = resolve(&args(&["--pin-dir", "/sys/fs/bpf/a"]), None, file(f)).unwrap();
        assert_eq!(c.ebpf.pin_dir, Some(PathBuf::from("/sys/fs/bpf/a")));
        // --no-pin beats the file (a run by hand with the packaged config).
        let c = resolve(&args(&["--no-pin"]), None, file(f)).unwrap();
        assert_eq!(c.ebpf.pin_dir, None);
        let c = resolve(&args(&[]), None, file("[ebpf]\npin = false\n")).unwrap();
        assert_eq!(c.ebpf.pin_dir, None);
        assert!(Args::try_parse_from(["netwatch-agent", "--pin", "--no-pin"]).is_err());
        assert!(Args::try_parse_from(["netwatch-agent", "--unpin", "--pin"]).is_err());
    }

    #[test]
    fn command_line_beats_file() {
        let c = resolve(
            &args(&["--interval", "2", "--mode", "ss"]),
            None,
            file("interval_secs = 5\nmode = \"proc\"\noutputs = [\"json\"]\n"),
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.mode, Mode::Ss);
        let c = resolve(
            &args(&[]),
            None,
            file("interval_secs = 5\nmode = \"proc\"\n"),
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.mode, Mode::Proc);
    }

    #[test]
    fn output_may_repeat_and_ingest_comes_first() {
        let c = resolve(
            &args(&[
                "--output",
                "json",
                "--output",
                "ingest",
                "--output",
                "json",
                "--endpoint",
                "http://127.0.0.1:9",
            ]),
            Some("k"),
            None,
        )
        .unwrap();
        assert_eq!(c.outputs, vec![Output::Ingest, Output::Json]);
    }

    #[test]
    fn bad_values_are_refused_naming_the_value() {
        let e = err(resolve(&args(&["--interval", "0"]), None, None));
        assert!(e.contains("interval 0"), "{e}");
        let e = err(resolve(&args(&["--ringbuf-bytes", "1000000"]), None, None));
        assert!(
            e.contains("ringbuf_bytes 1000000 is not a power of two"),
            "{e}"
        );
        let e = err(resolve(&args(&[]), None, file("mode = \"turbo\"\n")));
        assert!(e.contains("\"turbo\""), "{e}");
        let e = err(resolve(
            &args(&[]),
            None,
            file("[ebpf]\ntier = \"fexit\"\n"),
        ));
        assert!(e.contains("\"fexit\""), "{e}");
        let e = err(resolve(
            &args(&[
                "--output",
                "prometheus",
                "--metrics-listen",
                "localhost:9464",
            ]),
            None,
            None,
        ));
        assert!(e.contains("\"localhost:9464\" is not an IP address"), "{e}");
        let e = err(resolve(
            &args(&["--output", "prometheus"]),
            None,
            file("[prometheus]\ntop_processes = 0\n"),
        ));
        assert!(e.contains("top_processes 0"), "{e}");
        let e = err(resolve(
            &args(&["--output", "prometheus", "--metrics-process-expiry", "0"]),
            None,
            None,
        ));
        assert!(e.contains("process_expiry_secs 0"), "{e}");
        let e = err(resolve(&args(&["--interval", "NaN"]), None, None));
        assert!(e.contains("interval NaN"), "{e}");
        assert!(Args::try_parse_from(["a", "--mode", "turbo"])
            .unwrap_err()
            .to_string()
            .contains("turbo"));
        assert!(Args::try_parse_from(["a", "--output", "csv"])
            .unwrap_err()
            .to_string()
            .contains("csv"));
    }

    #[test]
    fn prometheus_defaults_and_overrides() {
        let c = resolve(&args(&["--output", "prometheus"]), None, None).unwrap();
        assert_eq!(
            c.prometheus,
            Some(PrometheusConfig {
                listen: "127.0.0.1:9464".parse().unwrap(),
                process_expiry: Duration::from_secs(300),
                top_processes: 100,
            })
        );
        let c = resolve(
            &args(&["--output", "prometheus", "--metrics-top-processes", "7"]),
            None,
            file(
                "[prometheus]\nlisten = \"[::1]:0\"\nprocess_expiry_secs = 30\ntop_processes = 9\n",
            ),
        )
        .unwrap();
        let p = c.prometheus.unwrap();
        assert_eq!(p.listen, "[::1]:0".parse().unwrap());
        assert_eq!(p.process_expiry, Duration::from_secs(30));
        assert_eq!(p.top_processes, 7);
        assert!(resolve(&args(&[]), None, None)
            .unwrap()
            .prometheus
            .is_none());
    }

    #[test]
    fn unknown_output_in_file_is_named() {
        let e = parse_file("outputs = [\"csv\"]\n").unwrap_err();
        assert!(e.contains("csv"), "{e}");
        assert!(e.starts_with("line 1:"), "{e}");
    }

    #[test]
    fn unknown_keys_and_an_inline_api_key_are_refused_without_echoing_values() {
        let e = parse_file("[ingest]\napi_key = \"s3cr3t-value\"\n").unwrap_err();
        assert!(e.contains("api_key"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = parse_file("interval_secs = \"s3cr3t-value\"\n").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = parse_file("[ingest]\nendpoint = \"s3cr3t-value\n").unwrap_err();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(ingest_url("http://127.0.0.1:8080", false).is_ok());
        assert!(ingest_url("http://[::1]:8080/", false).is_ok());
        assert!(ingest_url("http://localhost", false).is_ok());
        let e = ingest_url("http://10.0.0.1", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--allow-insecure-http"), "{e}");
        assert_eq!(
            ingest_url("http://10.0.0.1/", true).unwrap(),
            "http://10.0.0.1/api/v1/ingest"
        );
        assert_eq!(
            ingest_url("https://c.example/api/v1/ingest", false).unwrap(),
            "https://c.example/api/v1/ingest"
        );
        assert!(ingest_url("ftp://c.example", false).is_err());
        assert!(ingest_url("not a url", false).is_err());
    }

    #[test]
    fn an_endpoint_with_credentials_is_refused_and_never_echoed() {
        for (url, shown) in [
            (
                "https://operator:pw-9f1@cloud.example/x",
                "https://<redacted>@cloud.example/x",
            ),
            ("http://pw-9f1@127.0.0.1:9", "http://<redacted>@127.0.0.1:9"),
            // Not a URL at all: still not echoed.
            ("https://u:p w-9f1@h", "https://<redacted>@h"),
            ("u:pw-9f1@h/p", "<redacted>@h/p"),
            // '@' in the path or query is not user information.
            ("https://h/a@pw-9f1", "https://h/a@pw-9f1"),
            ("https://h?x=a@b", "https://h?x=a@b"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            if shown.contains("<redacted>") {
                let e = ingest_url(url, true).unwrap_err().to_string();
                assert!(!e.contains("pw-9f1") && !e.contains("operator"), "{e}");
                assert!(e.contains("credentials in the URL are refused"), "{e}");
            }
        }
        let e = err(resolve(
            &args(&[
                "--output",
                "ingest",
                "--endpoint",
                "https://user:pw-9f1@c.example",
            ]),
            Some("k"),
            None,
        ));
        assert_eq!(
            e,
            "endpoint \"https://<redacted>@c.example\" holds a user name or password: \
             credentials in the URL are refused (they would be logged); give the base URL \
             and put the API key in --api-key-file or [ingest] api_key_file"
        );
    }

    #[test]
    fn ingest_without_key_or_endpoint_is_refused() {
        let e = err(resolve(&args(&["--output", "ingest"]), Some("k"), None));
        assert!(e.contains("needs an endpoint"), "{e}");
        let e = err(resolve(
            &args(&["--output", "ingest", "--endpoint", "https://c.example"]),
            None,
            None,
        ));
        assert!(e.contains("needs an API key"), "{e}");
    }

    #[test]
    fn the_key_never_prints() {
        let k = ApiKey::new(" nw_live_abc123\n").unwrap();
        assert_eq!(k.expose(), "nw_live_abc123");
        assert_eq!(format!("{k}"), "<redacted>");
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
        let c = resolve(
            &args(&["--output", "ingest", "--endpoint", "https://c.example"]),
            Some("nw_live_abc123"),
            None,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("abc123"));
        let e = ApiKey::new("nw live").unwrap_err().to_string();
        assert!(!e.contains("nw live"), "{e}");
        assert!(ApiKey::new("  \n").is_err());
    }

    #[test]
    fn health_is_opt_in_and_alerts_default_to_the_sdk() {
        let c = resolve(&args(&[]), None, None).unwrap();
        assert!(c.health.is_none(), "the bare command line probes nothing");
        assert_eq!(c.alerts, Some(crate::alerts::AlertConfig::default()));
        let c = resolve(&args(&["--health"]), None, None).unwrap();
        assert_eq!(c.health, Some(crate::health::HealthConfig::default()));
        let c = resolve(
            &args(&[]),
            None,
            file(
                "[health]\nenabled = true\ninterval_secs = 5\ngateway = \"10.1.2.3\"\n\
                 dns_server = \"10.1.2.4:5353\"\n[alerts]\nport_scan_ports = 10\n\
                 beacon_min_interval_secs = 0.1\nbandwidth_interface_bps = 1e6\n",
            ),
        )
        .unwrap();
        let h = c.health.unwrap();
        assert_eq!(h.interval, Duration::from_secs(5));
        assert_eq!(h.gateway, Some("10.1.2.3".parse().unwrap()));
        assert_eq!(h.dns_server, Some("10.1.2.4:5353".parse().unwrap()));
        let a = c.alerts.unwrap();
        assert_eq!(a.port_scan.distinct_ports, 10);
        assert_eq!(a.beacon.min_interval, Duration::from_millis(100));
        assert_eq!(a.bandwidth.interface_bps, 1e6);
        let c = resolve(&args(&[]), None, file("[alerts]\nenabled = false\n")).unwrap();
        assert!(c.alerts.is_none());
        let e = err(resolve(
            &args(&["--health"]),
            None,
            file("[health]\ngateway = \"gw\"\n"),
        ));
        assert!(e.contains("gateway \"gw\""), "{e}");
        let e = err(resolve(
            &args(&[]),
            None,
            file("[alerts]\nbeacon_max_jitter = -1\n"),
        ));
        assert!(e.contains("beacon_max_jitter -1"), "{e}");
        assert!(parse_file("[alerts]\nport_scan = 3\n").is_err());
    }

    #[test]
    fn the_readme_config_example_parses_with_health_and_alerts() {
        let readme = include_str!("../../README.md");
        let block = readme
            .split("```toml\n")
            .find(|b| b.starts_with("# /etc/netwatch-agent/config.toml"))
            .and_then(|b| b.split("```").next())
            .unwrap();
        let f = parse_file(block).unwrap();
        assert_eq!(
            resolve_health(false, &f.health).unwrap(),
            Some(crate::health::HealthConfig::default())
        );
        assert_eq!(
            resolve_alerts(&f.alerts).unwrap(),
            Some(crate::alerts::AlertConfig::default())
        );
    }

    #[test]
    fn api_key_is_not_an_argument() {
        assert!(Args::try_parse_from(["a", "--api-key", "x"]).is_err());
    }

    #[test]
    fn files_others_can_change_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, "interval_secs = 3\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
        let a = args(&["--config", p.to_str().unwrap()]);
        let e = load_file(&a).unwrap_err().to_string();
        assert!(e.contains("group- or world-writable (mode 0664)"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (_, f) = load_file(&a).unwrap().unwrap();
        assert_eq!(f.interval_secs, Some(3.0));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
            let e = load_file(&a).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534, not by root"), "{e}");
        }
    }

    #[test]
    fn a_named_config_must_exist_the_default_may_not() {
        let a = args(&["--config", "/nonexistent/netwatch.toml"]);
        let e = load_file(&a).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/netwatch.toml"), "{e}");
        if !Path::new(DEFAULT_CONFIG_PATH).exists() {
            assert!(load_file(&args(&[])).unwrap().is_none());
        }
    }

    /// Every numeric setting has a range, and its message names the
    /// setting, the value and the range.
    #[test]
    fn every_numeric_setting_is_range_checked_with_a_clear_message() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--interval", "1e300"],
                "",
                "interval 1e300: must be between 0.05 and 86400 seconds",
            ),
            (
                &["--interval", "inf"],
                "",
                "interval inf: must be between 0.05 and 86400 seconds",
            ),
            (
                &[],
                "interval_secs = 86400.5\n",
                "interval 86400.5: must be between 0.05 and 86400 seconds",
            ),
            (
                &["--max-sockets", "0"],
                "",
                "max_sockets 0: must be between 1 and 16777216",
            ),
            (
                &[],
                "[ebpf]\nmax_sockets = 4294967295\n",
                "max_sockets 4294967295: must be between 1 and 16777216",
            ),
            (
                &["--ringbuf-bytes", "2147483648"],
                "",
                "ringbuf_bytes 2147483648: must be between 4096 and 1073741824",
            ),
            (&["--rows", "0"], "", "rows 0: must be between 1 and 10000"),
            (
                &["--max-connections", "18446744073709551615"],
                "",
                "max_connections 18446744073709551615: must be between 0 and 1000000",
            ),
            (
                &["--max-processes", "1000001"],
                "",
                "max_processes 1000001: must be between 0 and 1000000",
            ),
            (
                &[],
                "max_processes = 18446744073709551615\n",
                "max_processes 18446744073709551615: must be between 0 and 1000000",
            ),
            (
                &[
                    "--output",
                    "prometheus",
                    "--metrics-process-expiry",
                    "1e300",
                ],
                "",
                "process_expiry_secs 1e300: must be between 1 and 604800 seconds",
            ),
            (
                &["--health"],
                "[health]\nprobes = 11\n",
                "[health] probes 11: must be between 1 and 10",
            ),
            (
                &["--health"],
                "[health]\ninterval_secs = nan\n",
                "[health] interval_secs NaN: must be between 0.1 and 3600 seconds",
            ),
            (
                &[],
                "[alerts]\nactive_secs = -inf\n",
                "[alerts] active_secs -inf: must be between 1 and 86400 seconds",
            ),
            (
                &[],
                "[alerts]\nhistory = 100001\n",
                "[alerts] history 100001: must be between 1 and 100000",
            ),
            (
                &[],
                "[alerts]\nport_scan_ports = 70000\n",
                "[alerts] port_scan_ports 70000: must be between 1 and 65535",
            ),
            (
                &[],
                "[alerts]\nport_scan_failed = 2000000\n",
                "[alerts] port_scan_failed 2000000: must be between 0 and 1000000",
            ),
            (
                &[],
                "[alerts]\nbeacon_min_intervals = 5000\n",
                "[alerts] beacon_min_intervals 5000: must be between 1 and 1000",
            ),
            (
                &[],
                "[alerts]\nbeacon_max_jitter = 0\n",
                "[alerts] beacon_max_jitter 0: must be above 0 and at most 10",
            ),
            (
                &[],
                "[alerts]\ndns_max_name_bytes = 256\n",
                "[alerts] dns_max_name_bytes 256: must be between 1 and 255",
            ),
            (
                &[],
                "[alerts]\ndns_max_subdomains = 1000001\n",
                "[alerts] dns_max_subdomains 1000001: must be between 0 and 1000000",
            ),
            (
                &[],
                "[alerts]\ndns_entropy_bits = 9\n",
                "[alerts] dns_entropy_bits 9: must be between 0 and 8",
            ),
            (
                &[],
                "[alerts]\nbandwidth_process_bps = 1e300\n",
                "[alerts] bandwidth_process_bps 1e300: must be above 0 and at most 1e15",
            ),
            (
                &[],
                "[alerts]\nbandwidth_consecutive = 0\n",
                "[alerts] bandwidth_consecutive 0: must be between 1 and 10000",
            ),
            (
                &[],
                "[alerts]\nbandwidth_baseline_multiple = nan\n",
                "[alerts] bandwidth_baseline_multiple NaN: must be between 0 and 1000000",
            ),
        ];
        for (argv, text, want) in cases {
            let f = (!text.is_empty()).then(|| file(text)).flatten();
            let e = err(resolve(&args(argv), None, f));
            assert_eq!(&e, want, "{argv:?} {text:?}");
        }
        let ingest = ["--output", "ingest", "--endpoint", "https://cloud.example"];
        let e = err(resolve(
            &args(&[&ingest[..], &["--spool-max-bytes", "18446744073709551615"]].concat()),
            Some("k3y"),
            None,
        ));
        assert_eq!(
            e,
            "spool max_bytes 18446744073709551615: must be between 65536 and 1099511627776"
        );
        let e = err(resolve(
            &args(&ingest),
            Some("k3y"),
            file("[ingest]\nrequest_timeout_secs = 1e300\n"),
        ));
        assert_eq!(
            e,
            "request_timeout_secs 1e300: must be between 0.1 and 600 seconds"
        );
    }

    /// Numeric settings of the config file, by section ("" for top level).
    const FLOAT_KEYS: &[(&str, &str)] = &[
        ("", "interval_secs"),
        ("ingest", "retry_initial_secs"),
        ("ingest", "retry_max_secs"),
        ("ingest", "request_timeout_secs"),
        ("ingest", "flush_timeout_secs"),
        ("ingest", "payment_recheck_secs"),
        ("prometheus", "process_expiry_secs"),
        ("health", "interval_secs"),
        ("alerts", "active_secs"),
        ("alerts", "port_scan_window_secs"),
        ("alerts", "beacon_max_jitter"),
        ("alerts", "beacon_min_interval_secs"),
        ("alerts", "beacon_max_interval_secs"),
        ("alerts", "dns_entropy_bits"),
        ("alerts", "bandwidth_interface_bps"),
        ("alerts", "bandwidth_process_bps"),
        ("alerts", "bandwidth_baseline_multiple"),
        ("alerts", "bandwidth_baseline_min_bps"),
    ];
    const INT_KEYS: &[(&str, &str)] = &[
        ("", "rows"),
        ("", "max_connections"),
        ("", "max_processes"),
        ("ebpf", "max_sockets"),
        ("ebpf", "ringbuf_bytes"),
        ("ingest", "batch_max_snapshots"),
        ("ingest", "batch_max_bytes"),
        ("spool", "max_bytes"),
        ("prometheus", "top_processes"),
        ("health", "probes"),
        ("health", "timeout_ms"),
        ("alerts", "history"),
        ("alerts", "port_scan_ports"),
        ("alerts", "port_scan_failed"),
        ("alerts", "beacon_min_intervals"),
        ("alerts", "dns_max_name_bytes"),
        ("alerts", "dns_max_queries_per_min"),
        ("alerts", "dns_max_subdomains"),
        ("alerts", "bandwidth_consecutive"),
    ];
    /// Command-line flags that take a number.
    const NUMERIC_FLAGS: &[&str] = &[
        "--interval",
        "--max-sockets",
        "--ringbuf-bytes",
        "--rows",
        "--max-connections",
        "--max-processes",
        "--spool-max-bytes",
        "--metrics-process-expiry",
        "--metrics-top-processes",
    ];

    /// How TOML writes `v` (`nan`, `inf`, `1e300`).
    fn toml_float(v: f64) -> String {
        if v.is_nan() {
            "nan".into()
        } else if v.is_infinite() {
            if v > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            format!("{v:?}")
        }
    }

    /// Resolve with every section in use (ingest, prometheus, health,
    /// alerts), so every key is validated.
    fn resolve_all(extra: &[&str], text: &str) -> Result<Config, ConfigError> {
        let mut argv = vec![
            "netwatch-agent",
            "--output",
            "ingest",
            "--output",
            "prometheus",
            "--endpoint",
            "https://cloud.example",
            "--health",
        ];
        argv.extend_from_slice(extra);
        let Ok(a) = Args::try_parse_from(argv) else {
            return Err(invalid("refused by the command-line parser"));
        };
        let f = match parse_file(text) {
            Ok(f) => Some((PathBuf::from("/test.toml"), f)),
            Err(e) => return Err(invalid(e)),
        };
        resolve(&a, Some("k3y"), f)
    }

    /// A resolved config holds only what its users can take: durations
    /// that `Duration` arithmetic and timers accept.
    fn usable(c: &Config) {
        assert!(c.interval >= Duration::from_millis(50));
        assert!(c.interval <= Duration::from_secs(86_400));
        if let Some(i) = &c.ingest {
            assert!(i.retry_initial <= i.retry_max);
            assert!(i.request_timeout <= Duration::from_secs(600));
        }
    }

    proptest::proptest! {
        /// Any value of any numeric setting, in the file or on the command
        /// line, either resolves to a usable config or is refused with a
        /// message naming the setting; nothing panics.
        #[test]
        fn prop_numeric_settings_resolve_or_refuse_never_panic(
            fk in 0..FLOAT_KEYS.len(),
            fv in proptest::num::f64::ANY,
            ik in 0..INT_KEYS.len(),
            iv in proptest::prelude::any::<u64>(),
            flag in 0..NUMERIC_FLAGS.len(),
            small in proptest::prelude::any::<bool>(),
        ) {
            // Small values reach the interesting edges more often.
            let iv = if small { iv % 300_000 } else { iv };
            let (section, key) = FLOAT_KEYS[fk];
            let text = if section.is_empty() {
                format!("{key} = {}\n", toml_float(fv))
            } else {
                format!("[{section}]\n{key} = {}\n", toml_float(fv))
            };
            match resolve_all(&[], &text) {
                Ok(c) => usable(&c),
                Err(e) => {
                    let e = e.to_string();
                    let named = e.contains(key) || e.contains("interval") || e.contains("max_bytes");
                    proptest::prop_assert!(named, "{text:?}: {e}");
                }
            }
            let (section, key) = INT_KEYS[ik];
            let text = if section.is_empty() {
                format!("{key} = {iv}\n")
            } else {
                format!("[{section}]\n{key} = {iv}\n")
            };
            if let Ok(c) = resolve_all(&[], &text) {
                usable(&c);
            }
            for v in [fv.to_string(), iv.to_string()] {
                if let Ok(c) = resolve_all(&[NUMERIC_FLAGS[flag], &v], "") {
                    usable(&c);
                }
            }
        }
    }
}
