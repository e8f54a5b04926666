//! Mode selection: which source fills the process rows. `auto` tries the
//! exact sources first (eBPF), then `ss`, then libpcap, and logs why each
//! was passed over; the reason also goes into the snapshot. Selection only
//! constructs sources; it never reads them.

use std::time::Instant;

use anyhow::{anyhow, Result};
use log::{info, warn};

use super::SocketSource;

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// eBPF if it loads, else ss, else pcap.
    Auto,
    /// Kernel counters (exact). Linux only.
    Ebpf,
    /// `ss -tunapie` socket counters (TCP exact, sockets closed between reads lost).
    Ss,
    /// libpcap capture joined to the socket table.
    Pcap,
    /// /proc socket table with bytes estimated from interface counters.
    Proc,
}

/// Settings the sources need.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    #[cfg(target_os = "linux")]
    pub ebpf: super::ebpf::LoadOptions,
    /// Capture interface for pcap (`None`: all).
    pub interface: Option<String>,
}

/// The chosen source, and why the ones tried before it were passed over
/// (the snapshot layer describes it: `snapshot::collector_info`).
pub struct Selected {
    pub source: Box<dyn SocketSource>,
    /// `Auto` only: each source tried before this one, and why it did not open.
    pub fallback_reason: Option<String>,
    /// When the source began counting.
    pub started_at: Instant,
}

/// The name the source of `mode` reports (`SocketSource::name`).
fn source_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Auto => "auto",
        Mode::Ebpf => "ebpf",
        Mode::Ss => "ss",
        Mode::Pcap => "pcap",
        Mode::Proc => "proc",
    }
}

fn open(mode: Mode, opts: &SourceOptions) -> Result<Box<dyn SocketSource>> {
    // Refuse before touching the kernel when a needed capability is missing.
    #[cfg(target_os = "linux")]
    crate::privilege::check_start(source_name(mode))?;
    #[cfg(not(target_os = "linux"))]
    let _ = source_name(mode);
    match mode {
        #[cfg(target_os = "linux")]
        Mode::Ebpf => Ok(Box::new(super::ebpf::EbpfSource::load(&opts.ebpf)?)),
        #[cfg(target_os = "linux")]
        Mode::Ss => Ok(Box::new(
            super::ss::SsSource::new().with_max_sockets(opts.ebpf.max_sockets),
        )),
        #[cfg(not(target_os = "linux"))]
        Mode::Ss => Ok(Box::new(super::ss::SsSource::new())),
        #[cfg(target_os = "linux")]
        Mode::Pcap => Ok(Box::new(super::pcap::PcapSource::open(
            opts.interface.as_deref(),
        )?)),
        #[cfg(target_os = "linux")]
        Mode::Proc => Ok(Box::new(super::procnet::ProcNetSource::new())),
        #[cfg(not(target_os = "linux"))]
        Mode::Ebpf | Mode::Pcap | Mode::Proc => {
            let _ = opts;
            Err(anyhow!("--mode {mode:?} is only available on Linux"))
        }
        Mode::Auto => Err(anyhow!("auto is resolved by select()")),
    }
}

/// Open the source `mode` asks for; `auto` falls back in order.
pub fn select(mode: Mode, opts: &SourceOptions) -> Result<Selected> {
    select_each(mode, opts).map_err(|mut failed| {
        if mode == Mode::Auto || failed.len() != 1 {
            return anyhow!(
                "no source available: {}",
                failed_reasons(&failed).unwrap_or_default()
            );
        }
        let Failed { mode: m, error } = failed.remove(0);
        error.context(format!("opening the {m:?} source"))
    })
}

/// One source that did not open, and why.
pub struct Failed {
    /// The source tried.
    pub mode: Mode,
    /// Why it did not open.
    pub error: anyhow::Error,
}

fn failed_reasons(failed: &[Failed]) -> Option<String> {
    (!failed.is_empty()).then(|| {
        failed
            .iter()
            .map(|f| format!("{}: {:#}", source_name(f.mode), f.error))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// As [`select`], but a failure returns each source tried with its own
/// error (typed, for the library's [`crate::Error`]), in the order tried.
pub fn select_each(mode: Mode, opts: &SourceOptions) -> std::result::Result<Selected, Vec<Failed>> {
    #[cfg(target_os = "macos")]
    if mode == Mode::Auto {
        return match super::macos::MacSource::new(super::macos::MacTools::default()) {
            Ok(s) => Ok(Selected {
                source: Box::new(s),
                fallback_reason: None,
                started_at: Instant::now(),
            }),
            Err(e) => Err(vec![Failed {
                mode,
                error: e.into(),
            }]),
        };
    }
    let order: &[Mode] = match mode {
        Mode::Auto => &[Mode::Ebpf, Mode::Ss, Mode::Pcap],
        _ => std::slice::from_ref(&mode),
    };
    let mut failed: Vec<Failed> = Vec::new();
    for &m in order {
        let started_at = Instant::now();
        match open(m, opts) {
            Ok(source) => {
                info!(
                    "process rows from the {} source{}",
                    source.name(),
                    source
                        .detail()
                        .map(|t| format!(" ({t} tier)"))
                        .unwrap_or_default()
                );
                return Ok(Selected {
                    source,
                    fallback_reason: failed_reasons(&failed),
                    started_at,
                });
            }
            Err(error) => {
                if mode == Mode::Auto {
                    warn!("{m:?} source unavailable: {error:#}");
                }
                failed.push(Failed { mode: m, error });
            }
        }
    }
    Err(failed)
}

/// The name the library and the snapshots give `mode`.
pub fn mode_name(mode: Mode) -> &'static str {
    source_name(mode)
}
