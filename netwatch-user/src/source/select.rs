//! Mode selection: which source fills the process rows. `auto` tries the
//! exact sources compiled in (Cargo features `ebpf`, `ss`, `pcap`) first
//! (eBPF), then `ss`, then libpcap, and logs why each was passed over; a
//! source whose feature is off is refused at run time, never a compile
//! error for the caller; the reason also goes into the snapshot. Selection only
//! constructs sources; it never reads them.

use std::time::Instant;

use anyhow::{anyhow, Result};
use log::{info, warn};

use super::SocketSource;

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "agent", derive(clap::ValueEnum))]
pub enum Mode {
    /// Every exact source compiled in, in order: eBPF if it loads, else
    /// ss, else pcap (`/proc` estimates when none of them is compiled in).
    Auto,
    /// Kernel counters (exact). Linux only; feature `ebpf`.
    Ebpf,
    /// `ss -tunapie` socket counters (TCP exact, sockets closed between reads lost).
    /// Linux; feature `ss`.
    Ss,
    /// libpcap capture joined to the socket table. Linux; feature `pcap`.
    Pcap,
    /// /proc socket table with bytes estimated from interface counters.
    Proc,
}

/// Settings the sources need.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    #[cfg(all(target_os = "linux", feature = "ebpf"))]
    pub ebpf: super::ebpf::LoadOptions,
    /// The per-socket bound of the `ss` source (the eBPF map's is
    /// `ebpf.max_sockets`).
    pub max_sockets: u32,
    /// Capture interface for pcap (`None`: all).
    pub interface: Option<String>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            #[cfg(all(target_os = "linux", feature = "ebpf"))]
            ebpf: Default::default(),
            max_sockets: super::DEFAULT_MAX_SOCKETS,
            interface: None,
        }
    }
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

/// The Cargo feature that compiles the source of `mode` in, if it has one.
fn feature(mode: Mode) -> Option<&'static str> {
    match mode {
        Mode::Ebpf => Some("ebpf"),
        Mode::Ss => Some("ss"),
        Mode::Pcap => Some("pcap"),
        Mode::Auto | Mode::Proc => None,
    }
}

/// Whether this build holds the source of `mode` (its feature is on).
pub fn compiled_in(mode: Mode) -> bool {
    match mode {
        Mode::Ebpf => cfg!(feature = "ebpf"),
        Mode::Ss => cfg!(feature = "ss"),
        Mode::Pcap => cfg!(feature = "pcap"),
        Mode::Auto | Mode::Proc => true,
    }
}

/// The sources `Auto` tries, in order: the exact ones compiled in (eBPF,
/// `ss`, libpcap), or `/proc` estimates in a build that holds none of them.
pub fn auto_order() -> Vec<Mode> {
    auto_order_of(compiled_in)
}

/// [`auto_order`] for a build that holds what `compiled` says.
fn auto_order_of(compiled: impl Fn(Mode) -> bool) -> Vec<Mode> {
    let exact: Vec<Mode> = [Mode::Ebpf, Mode::Ss, Mode::Pcap]
        .into_iter()
        .filter(|&m| compiled(m))
        .collect();
    if exact.is_empty() {
        vec![Mode::Proc]
    } else {
        exact
    }
}

/// Why `mode` cannot open in a build that holds what `compiled` says:
/// `Some` when its Cargo feature is off. A run-time refusal, so a caller's
/// `Mode::Ebpf` compiles against every build.
fn missing_feature(mode: Mode, compiled: impl Fn(Mode) -> bool) -> Option<String> {
    let feature = feature(mode).filter(|_| !compiled(mode))?;
    Some(format!(
        "this build of netwatch has no {} source: it was compiled without the \
         `{feature}` Cargo feature of netwatch-user (enable it: \
         `features = [\"{feature}\"]`)",
        source_name(mode)
    ))
}

fn open(mode: Mode, opts: &SourceOptions) -> Result<Box<dyn SocketSource>> {
    if let Some(why) = missing_feature(mode, compiled_in) {
        return Err(anyhow!(why));
    }
    // Refuse before touching the kernel when a needed capability is missing.
    #[cfg(target_os = "linux")]
    crate::privilege::check_start(source_name(mode))?;
    match mode {
        #[cfg(all(target_os = "linux", feature = "ebpf"))]
        Mode::Ebpf => Ok(Box::new(super::ebpf::EbpfSource::load(&opts.ebpf)?)),
        #[cfg(all(target_os = "linux", feature = "ss"))]
        Mode::Ss => Ok(Box::new(
            super::ss::SsSource::new().with_max_sockets(opts.max_sockets),
        )),
        #[cfg(all(not(target_os = "linux"), feature = "ss"))]
        Mode::Ss => Ok(Box::new(super::ss::SsSource::new())),
        #[cfg(all(target_os = "linux", feature = "pcap"))]
        Mode::Pcap => Ok(Box::new(super::pcap::PcapSource::open(
            opts.interface.as_deref(),
        )?)),
        #[cfg(target_os = "linux")]
        Mode::Proc => Ok(Box::new(super::procnet::ProcNetSource::new())),
        #[cfg(not(target_os = "linux"))]
        Mode::Ebpf | Mode::Pcap | Mode::Proc => Err(anyhow!(
            "the {} source is only available on Linux",
            source_name(mode)
        )),
        Mode::Auto => Err(anyhow!("auto is resolved by select()")),
        // Modes whose feature is off were refused above.
        #[allow(unreachable_patterns)]
        _ => {
            let _ = opts;
            Err(anyhow!(
                "this build of netwatch has no {} source",
                source_name(mode)
            ))
        }
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
    #[cfg(all(target_os = "macos", feature = "macos"))]
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
    let order: Vec<Mode> = match mode {
        Mode::Auto => auto_order(),
        _ => vec![mode],
    };
    let mut failed: Vec<Failed> = Vec::new();
    for m in order {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `Auto` tries the exact sources compiled in, in order, and `/proc`
    /// only in a build that holds none of them.
    #[test]
    fn auto_tries_what_is_compiled_in() {
        assert_eq!(
            auto_order_of(|_| true),
            vec![Mode::Ebpf, Mode::Ss, Mode::Pcap]
        );
        assert_eq!(auto_order_of(|m| m != Mode::Ebpf), vec![Mode::Ss, Mode::Pcap]);
        assert_eq!(auto_order_of(|m| m == Mode::Pcap), vec![Mode::Pcap]);
        assert_eq!(
            auto_order_of(|m| matches!(m, Mode::Auto | Mode::Proc)),
            vec![Mode::Proc]
        );
        // This build (the tests have the default features): all three.
        assert_eq!(auto_order(), vec![Mode::Ebpf, Mode::Ss, Mode::Pcap]);
    }

    /// A mode whose feature is off is refused with the feature's name; one
    /// that needs none (`proc`) never is.
    #[test]
    fn a_mode_without_its_feature_names_the_feature() {
        let none = |m: Mode| matches!(m, Mode::Auto | Mode::Proc);
        assert_eq!(
            missing_feature(Mode::Ebpf, none).as_deref(),
            Some(
                "this build of netwatch has no ebpf source: it was compiled without the \
                 `ebpf` Cargo feature of netwatch-user (enable it: `features = [\"ebpf\"]`)"
            )
        );
        assert_eq!(
            missing_feature(Mode::Pcap, none).as_deref(),
            Some(
                "this build of netwatch has no pcap source: it was compiled without the \
                 `pcap` Cargo feature of netwatch-user (enable it: `features = [\"pcap\"]`)"
            )
        );
        assert_eq!(
            missing_feature(Mode::Ss, none).as_deref(),
            Some(
                "this build of netwatch has no ss source: it was compiled without the \
                 `ss` Cargo feature of netwatch-user (enable it: `features = [\"ss\"]`)"
            )
        );
        assert_eq!(missing_feature(Mode::Proc, none), None);
        assert_eq!(missing_feature(Mode::Auto, none), None);
        assert_eq!(missing_feature(Mode::Ebpf, |_| true), None);
        // This build holds every source.
        for m in [Mode::Ebpf, Mode::Ss, Mode::Pcap, Mode::Proc] {
            assert_eq!(missing_feature(m, compiled_in), None, "{m:?}");
        }
    }
}
