//! `netwatch-agent`: the command line only. Parses options, sets up
//! logging, picks the source, and hands everything to the tick loop.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use netwatch::agent::{self, Agent};
use netwatch::sink::{json::JsonLines, table::Table, Sink};
use netwatch::snapshot::HostCollectors;
use netwatch::source::select::{self, Mode, SourceOptions};

/// Per-process network bandwidth, counted in the kernel.
#[derive(Debug, Parser)]
#[command(name = "netwatch-agent", version, about)]
struct Cli {
    /// Where per-process bytes come from.
    #[arg(long, value_enum, default_value = "auto")]
    mode: Mode,
    /// eBPF hook tier: auto, fentry, kprobe or tracepoint.
    #[cfg(target_os = "linux")]
    #[arg(long, default_value = "auto")]
    ebpf_tier: netwatch::source::ebpf::TierChoice,
    /// Capacity of the kernel's per-socket map.
    #[cfg(target_os = "linux")]
    #[arg(long, default_value_t = 65536)]
    max_sockets: u32,
    /// Size of the kernel's closed-socket ring buffer in bytes (a power of two, at least a page).
    #[cfg(target_os = "linux")]
    #[arg(long, default_value_t = 1 << 20)]
    ringbuf_bytes: u32,
    /// Seconds between snapshots (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one snapshot after one interval, then exit.
    #[arg(long)]
    once: bool,
    /// Output: a live table, or one JSON `Snapshot` per line.
    #[arg(long, value_enum, default_value = "json")]
    output: Output,
    /// Capture interface for `--mode pcap` (default: all).
    #[arg(short = 'i', long)]
    interface: Option<String>,
    /// Rows in the live table.
    #[arg(long, default_value_t = 20)]
    rows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    if !(cli.interval.is_finite() && cli.interval >= 0.05) {
        bail!(
            "--interval must be at least 0.05 seconds (got {})",
            cli.interval
        );
    }
    let interval = Duration::from_secs_f64(cli.interval);

    let opts = SourceOptions {
        #[cfg(target_os = "linux")]
        ebpf: netwatch::source::ebpf::LoadOptions {
            tier: cli.ebpf_tier,
            max_sockets: cli.max_sockets,
            ringbuf_bytes: cli.ringbuf_bytes,
            ..Default::default()
        },
        interface: cli.interface.clone(),
    };
    let selected = select::select(cli.mode, &opts)?;
    let host = HostCollectors::new();
    let sinks: Vec<Box<dyn Sink>> = match cli.output {
        Output::Json => vec![Box::new(JsonLines::stdout())],
        Output::Table => vec![Box::new(Table::stdout(cli.rows))],
    };
    let agent = Agent::new(
        selected.source,
        selected.info,
        host,
        sinks,
        selected.started_at,
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(agent::run(agent, interval, cli.once))
}
