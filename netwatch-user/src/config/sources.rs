//! The source settings: `mode`, `interface`, `dns_capture` and the `[ebpf]`
//! section (tier, map sizes, pinning). Defaults that a source also uses
//! live with the sources ([`crate::source::DEFAULT_MAX_SOCKETS`],
//! [`crate::source::DEFAULT_RINGBUF_BYTES`]); this module reads them and
//! must never keep a copy.

use std::path::PathBuf;

use clap::ValueEnum;

use super::check::int_in;
use super::file::{EbpfFile, FileConfig};
use super::{invalid, limits, Args, ConfigError};
use crate::source::select::Mode;
use crate::source::{DEFAULT_MAX_SOCKETS, DEFAULT_RINGBUF_BYTES};
pub use crate::source::{DEFAULT_PIN_DIR, DEFAULT_PIN_STATE_FILE};

/// The eBPF tier setting: the loader's own choice type, parsed by its
/// `FromStr` (whose error is the one users see).
#[cfg(all(target_os = "linux", feature = "ebpf"))]
pub use crate::source::ebpf::TierChoice;

/// The eBPF tier setting where there is no eBPF loader (not Linux, or a
/// build without the `ebpf` feature): only `auto`.
#[cfg(not(all(target_os = "linux", feature = "ebpf")))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TierChoice {
    /// Whatever the system offers (here: none).
    #[default]
    Auto,
}

#[cfg(not(all(target_os = "linux", feature = "ebpf")))]
impl std::str::FromStr for TierChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TierChoice::Auto),
            other => Err(format!(
                "eBPF tier {other:?}: this build has no eBPF source (not Linux, or \
                 built without the `ebpf` feature); only auto is accepted"
            )),
        }
    }
}

/// eBPF loader settings.
#[derive(Debug, Clone)]
pub struct EbpfSettings {
    pub tier: TierChoice,
    pub max_sockets: u32,
    pub ringbuf_bytes: u32,
    /// Pin maps and links here (`None`: not pinning, the default; `--pin`
    /// or `[ebpf] pin = true` turn it on).
    pub pin_dir: Option<PathBuf>,
    /// The baseline file for restarts.
    pub pin_state_file: PathBuf,
}

/// The source mode: `--mode`, then the file's `mode`, then auto.
pub fn resolve_mode(args: &Args, f: &FileConfig) -> Result<Mode, ConfigError> {
    Ok(match (&args.mode, &f.mode) {
        (Some(m), _) => *m,
        (None, Some(s)) => Mode::from_str(s, true).map_err(|_| {
            invalid(format!(
                "mode {s:?} is not a mode: expected auto, ebpf, ss, pcap or proc"
            ))
        })?,
        (None, None) => Mode::Auto,
    })
}

/// The capture interface (`-i`, then the file; `None`: all).
pub fn resolve_interface(args: &Args, f: &FileConfig) -> Option<String> {
    args.interface.clone().or(f.interface.clone())
}

/// The DNS-only capture: on unless `--no-dns-capture` or
/// `dns_capture = false`.
pub fn resolve_dns_capture(args: &Args, f: &FileConfig) -> bool {
    !args.no_dns_capture && f.dns_capture != Some(false)
}

/// The `[ebpf]` settings: command line, then the file, then defaults.
pub fn resolve_ebpf(args: &Args, f: &EbpfFile) -> Result<EbpfSettings, ConfigError> {
    let tier = match args.ebpf_tier.as_deref().or(f.tier.as_deref()) {
        Some(s) => s.parse::<TierChoice>().map_err(invalid)?,
        None => TierChoice::default(),
    };
    let max_sockets = int_in(
        "max_sockets",
        args.max_sockets
            .or(f.max_sockets)
            .unwrap_or(DEFAULT_MAX_SOCKETS),
        limits::MAX_SOCKETS,
    )?;
    let ringbuf_bytes = args
        .ringbuf_bytes
        .or(f.ringbuf_bytes)
        .unwrap_or(DEFAULT_RINGBUF_BYTES);
    if !ringbuf_bytes.is_power_of_two() || ringbuf_bytes < limits::RINGBUF_BYTES.0 {
        return Err(invalid(format!(
            "ringbuf_bytes {ringbuf_bytes} is not a power of two of at least {} (a page)",
            limits::RINGBUF_BYTES.0
        )));
    }
    int_in("ringbuf_bytes", ringbuf_bytes, limits::RINGBUF_BYTES)?;
    let (pin_dir, pin_state_file) = paths(args, f);
    Ok(EbpfSettings {
        tier,
        max_sockets,
        ringbuf_bytes,
        pin_dir: pinning(args, f).then_some(pin_dir),
        pin_state_file,
    })
}

/// Whether to pin: `--pin` or `[ebpf] pin = true`, unless `--no-pin`.
fn pinning(args: &Args, f: &EbpfFile) -> bool {
    !args.no_pin && (args.pin || f.pin == Some(true))
}

/// The pin directory and the baseline file, pinning or not (`--unpin`
/// needs them too): command line, then file, then defaults.
pub fn pin_paths(args: &Args, file: &FileConfig) -> (PathBuf, PathBuf) {
    paths(args, &file.ebpf)
}

fn paths(args: &Args, f: &EbpfFile) -> (PathBuf, PathBuf) {
    (
        args.pin_dir
            .clone()
            .or(f.pin_dir.clone())
            .unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
        args.pin_state_file
            .clone()
            .or(f.pin_state_file.clone())
            .unwrap_or_else(|| DEFAULT_PIN_STATE_FILE.into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_input::{args, file};

    fn ebpf(argv: &[&str], text: &str) -> Result<EbpfSettings, String> {
        resolve_ebpf(&args(argv), &file(text).ebpf).map_err(|e| e.to_string())
    }

    #[test]
    fn ebpf_defaults_are_the_sources_constants() {
        let e = ebpf(&[], "").unwrap();
        assert_eq!(e.tier, TierChoice::Auto);
        assert_eq!(e.max_sockets, 65_536);
        assert_eq!(e.ringbuf_bytes, 1_048_576);
        assert_eq!(e.pin_dir, None);
        assert_eq!(
            e.pin_state_file,
            PathBuf::from("/var/lib/netwatch-agent/ebpf-baseline")
        );
    }

    #[test]
    fn ebpf_command_line_beats_file_beats_default() {
        let text = "[ebpf]\nmax_sockets = 2048\nringbuf_bytes = 8192\n";
        let e = ebpf(&[], text).unwrap();
        assert_eq!((e.max_sockets, e.ringbuf_bytes), (2048, 8192));
        let e = ebpf(&["--max-sockets", "1024", "--ringbuf-bytes", "4096"], text).unwrap();
        assert_eq!((e.max_sockets, e.ringbuf_bytes), (1024, 4096));
        // One set on the command line, the other from the file.
        let e = ebpf(&["--max-sockets", "1024"], text).unwrap();
        assert_eq!((e.max_sockets, e.ringbuf_bytes), (1024, 8192));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_tier_is_parsed_by_the_loaders_own_type() {
        use crate::source::ebpf::tier::Tier;
        let tier = |a: &[&str], t: &str| ebpf(a, t).map(|e| e.tier);
        assert_eq!(
            tier(&[], "[ebpf]\ntier = \"kprobe\"\n"),
            Ok(TierChoice::Only(Tier::Kprobe))
        );
        assert_eq!(
            tier(
                &["--ebpf-tier", "tracepoint"],
                "[ebpf]\ntier = \"kprobe\"\n"
            ),
            Ok(TierChoice::Only(Tier::Tracepoint))
        );
        assert_eq!(tier(&["--ebpf-tier", "auto"], ""), Ok(TierChoice::Auto));
        // The loader's message is the one users see.
        let want = "unknown eBPF tier \"fexit\": expected auto, fentry, kprobe or tracepoint";
        assert_eq!(tier(&[], "[ebpf]\ntier = \"fexit\"\n"), Err(want.into()));
        assert_eq!(
            "fexit".parse::<TierChoice>().unwrap_err(),
            want,
            "the same text as TierChoice::from_str"
        );
        // A bad command-line tier is refused even when the file's is good.
        assert_eq!(
            tier(&["--ebpf-tier", "FENTRY"], "[ebpf]\ntier = \"fentry\"\n"),
            Err("unknown eBPF tier \"FENTRY\": expected auto, fentry, kprobe or tracepoint".into())
        );
    }

    #[test]
    fn ebpf_refusals_name_the_setting_value_and_range() {
        assert_eq!(
            ebpf(&["--max-sockets", "16777217"], "").unwrap_err(),
            "max_sockets 16777217: must be between 1 and 16777216"
        );
        assert_eq!(
            ebpf(&[], "[ebpf]\nringbuf_bytes = 12288\n").unwrap_err(),
            "ringbuf_bytes 12288 is not a power of two of at least 4096 (a page)"
        );
        assert_eq!(
            ebpf(&["--ringbuf-bytes", "2048"], "").unwrap_err(),
            "ringbuf_bytes 2048 is not a power of two of at least 4096 (a page)"
        );
        assert_eq!(
            ebpf(&["--ringbuf-bytes", "2147483648"], "").unwrap_err(),
            "ringbuf_bytes 2147483648: must be between 4096 and 1073741824"
        );
    }

    #[test]
    fn pinning_and_its_paths() {
        let text = "[ebpf]\npin = true\npin_dir = \"/sys/fs/bpf/f\"\npin_state_file = \"/s/f\"\n";
        let e = ebpf(&[], text).unwrap();
        assert_eq!(e.pin_dir, Some(PathBuf::from("/sys/fs/bpf/f")));
        assert_eq!(e.pin_state_file, PathBuf::from("/s/f"));
        let e = ebpf(
            &["--pin-state-file", "/s/a", "--pin-dir", "/sys/fs/bpf/a"],
            text,
        )
        .unwrap();
        assert_eq!(e.pin_dir, Some(PathBuf::from("/sys/fs/bpf/a")));
        assert_eq!(e.pin_state_file, PathBuf::from("/s/a"));
        assert_eq!(ebpf(&["--no-pin"], text).unwrap().pin_dir, None);
        let e = ebpf(&["--pin"], "").unwrap();
        assert_eq!(e.pin_dir, Some(PathBuf::from("/sys/fs/bpf/netwatch")));
        // `--unpin` needs the paths without pinning.
        assert_eq!(
            pin_paths(&args(&[]), &file("[ebpf]\npin_dir = \"/sys/fs/bpf/u\"\n")),
            (
                PathBuf::from("/sys/fs/bpf/u"),
                PathBuf::from(DEFAULT_PIN_STATE_FILE)
            )
        );
    }

    #[test]
    fn mode_interface_and_dns_capture() {
        let f = file("mode = \"proc\"\ninterface = \"eth1\"\ndns_capture = false\n");
        assert_eq!(resolve_mode(&args(&[]), &f).unwrap(), Mode::Proc);
        assert_eq!(
            resolve_mode(&args(&["--mode", "ss"]), &f).unwrap(),
            Mode::Ss
        );
        assert_eq!(
            resolve_mode(&args(&[]), &FileConfig::default()).unwrap(),
            Mode::Auto
        );
        assert_eq!(
            resolve_mode(&args(&[]), &file("mode = \"turbo\"\n"))
                .unwrap_err()
                .to_string(),
            "mode \"turbo\" is not a mode: expected auto, ebpf, ss, pcap or proc"
        );
        assert_eq!(resolve_interface(&args(&[]), &f).as_deref(), Some("eth1"));
        assert_eq!(
            resolve_interface(&args(&["-i", "lo"]), &f).as_deref(),
            Some("lo")
        );
        assert_eq!(resolve_interface(&args(&[]), &FileConfig::default()), None);
        assert!(!resolve_dns_capture(&args(&[]), &f));
        assert!(resolve_dns_capture(&args(&[]), &FileConfig::default()));
        assert!(!resolve_dns_capture(
            &args(&["--no-dns-capture"]),
            &FileConfig::default()
        ));
    }
}
