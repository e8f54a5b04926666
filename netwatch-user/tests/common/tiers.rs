//! Loading the kernel collector on one hook tier in a test, shared by the
//! tier test files (`#[path = "common/tiers.rs"] mod tiers;`): a tier the
//! kernel genuinely lacks is skipped (said on stdout), unless the run
//! requires it (`NETWATCH_REQUIRE_TIERS`, set by `cargo xtask test` per
//! kernel), where failing to load fails the test. Test code only.

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use netwatch::source::ebpf::tier::Tier;
use netwatch::source::ebpf::{EbpfSource, LoadError, LoadOptions, TierChoice};

/// Panics unless root: the tier tests load BPF programs.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the eBPF tests load BPF programs and must run as root (run `cargo xtask test`)"
    );
}

/// Running in a QEMU guest (`NETWATCH_GUEST`): software emulation, so
/// workloads are sized down.
pub fn guest() -> bool {
    std::env::var_os("NETWATCH_GUEST").is_some()
}

/// The tiers this run requires (`NETWATCH_REQUIRE_TIERS`, comma-separated).
pub fn required_tiers() -> Vec<String> {
    std::env::var("NETWATCH_REQUIRE_TIERS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The kernel (and this process's pid, whose bytes the tests count) is
/// shared state: tests that load programs or move bytes run one at a time
/// even when the harness runs tests in parallel.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    KERNEL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why `tier` cannot exist on this kernel, if it cannot.
pub fn genuinely_unavailable(tier: Tier, err: &LoadError) -> Option<String> {
    unavailable_because(tier, &err.to_string())
}

/// [`genuinely_unavailable`] from the load error's text `msg`.
pub fn unavailable_because(tier: Tier, msg: &str) -> Option<String> {
    match tier {
        Tier::Tracepoint => {
            let btf = btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").ok()?;
            btf.resolve_ids_by_name("btf_trace_sock_send_length")
                .map_or(true, |ids| ids.is_empty())
                .then(|| format!("sock:sock_send_length does not exist (Linux < 6.3): {msg}"))
        }
        Tier::Kprobe => (!std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists())
            .then(|| "the kernel has no kprobe PMU (CONFIG_KPROBES is not set)".to_string()),
        Tier::Fentry => msg
            .contains("EPERM")
            .then(|| format!("the kernel refuses BPF trampolines: {msg}")),
    }
}

/// Load `tier` with default options, or return None (skip) if the kernel
/// genuinely lacks it and the tier is not required here.
pub fn load_or_skip(tier: Tier) -> Option<EbpfSource> {
    load_or_skip_with(tier, LoadOptions::default())
}

/// [`load_or_skip`] with `opts` (its tier replaced by `tier`).
pub fn load_or_skip_with(tier: Tier, opts: LoadOptions) -> Option<EbpfSource> {
    require_root();
    let opts = LoadOptions {
        tier: TierChoice::Only(tier),
        ..opts
    };
    match EbpfSource::load(&opts) {
        Ok(src) => {
            println!("NETWATCH-TIER {tier}: loaded and attached");
            Some(src)
        }
        Err(e) => {
            let required = required_tiers().iter().any(|t| t == tier.name());
            match genuinely_unavailable(tier, &e) {
                Some(why) if !required => {
                    println!("NETWATCH-TIER {tier}: SKIPPED, unavailable on this kernel: {why}");
                    None
                }
                _ => panic!("{tier} tier failed to load on a kernel that should allow it: {e}"),
            }
        }
    }
}
