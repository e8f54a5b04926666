//! The command line (clap): every flag, with the environment variables
//! clap reads for a few of them. It holds what was given, nothing more:
//! defaults and checks are the section resolvers'. It must never take the
//! API key as an argument (the key would show in `ps`).

use std::path::PathBuf;

use clap::Parser;

use super::Output;
use crate::source::select::Mode;

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The help text of the flag whose id is `id`.
    fn help(id: &str) -> String {
        let cmd = Args::command();
        let arg = cmd.get_arguments().find(|a| a.get_id() == id).unwrap();
        arg.get_help().unwrap().to_string()
    }

    /// The defaults `--help` names are the constants' values (the help is
    /// a doc comment and cannot quote a constant).
    #[test]
    fn the_defaults_in_help_are_the_constants() {
        let cases: &[(&str, String)] = &[
            (
                "max_sockets",
                crate::source::DEFAULT_MAX_SOCKETS.to_string(),
            ),
            (
                "ringbuf_bytes",
                crate::source::DEFAULT_RINGBUF_BYTES.to_string(),
            ),
            ("pin_dir", super::super::DEFAULT_PIN_DIR.to_string()),
            (
                "pin_state_file",
                super::super::DEFAULT_PIN_STATE_FILE.to_string(),
            ),
            ("rows", super::super::DEFAULT_ROWS.to_string()),
            (
                "max_connections",
                super::super::DEFAULT_MAX_CONNECTIONS.to_string(),
            ),
            (
                "max_processes",
                super::super::DEFAULT_MAX_PROCESSES.to_string(),
            ),
            ("spool_dir", super::super::DEFAULT_SPOOL_DIR.to_string()),
            (
                "host_id_file",
                super::super::DEFAULT_HOST_ID_FILE.to_string(),
            ),
            (
                "metrics_listen",
                super::super::DEFAULT_METRICS_LISTEN.to_string(),
            ),
            (
                "metrics_process_expiry",
                super::super::DEFAULT_PROCESS_EXPIRY_SECS.to_string(),
            ),
            (
                "metrics_top_processes",
                super::super::DEFAULT_TOP_PROCESSES.to_string(),
            ),
        ];
        for (id, value) in cases {
            let h = help(id).split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(h.ends_with(&format!("[default: {value}]")), "{id}: {h}");
        }
        assert!(help("interval").contains("[default: 15 with `--output ingest`, else 1]"));
    }

    /// The environment variables clap reads, each for its flag.
    #[test]
    fn the_environment_is_read_for_these_flags_only() {
        let cmd = Args::command();
        let mut env: Vec<(String, String)> = cmd
            .get_arguments()
            .filter_map(|a| {
                let e = a.get_env()?.to_string_lossy().into_owned();
                Some((a.get_id().to_string(), e))
            })
            .collect();
        env.sort();
        assert_eq!(
            env,
            [
                ("config".into(), "NETWATCH_CONFIG".into()),
                ("endpoint".into(), "NETWATCH_ENDPOINT".into()),
                ("interval".into(), "NETWATCH_INTERVAL".into()),
            ]
        );
    }
}
