//! Loading the kernel collector on one hook tier in a test, shared by the
//! tier test files (`use common::tiers::*;`): a tier the
//! kernel genuinely lacks is skipped (said on stdout), unless the run
//! requires it (`NETWATCH_REQUIRE_TIERS`, set by `cargo xtask test` per
//! kernel), where failing to load fails the test. Test code only.

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use netwatch::source::ebpf::tier::Tier;
use netwatch::source::ebpf::{EbpfSource, LoadError, LoadOptions, TierChoice};

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

#[allow(unused_imports)] // the tier test files take it with the rest (`use tiers::*`)
pub use super::serial;

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
/// genuinely lacks it and the tier is not required here, or this process
/// is not root (one skip line, see [`super::root_or_skip`]).
pub fn load_or_skip(tier: Tier) -> Option<EbpfSource> {
    load_or_skip_with(tier, LoadOptions::default())
}

/// [`load_or_skip`] with `opts` (its tier replaced by `tier`).
pub fn load_or_skip_with(tier: Tier, opts: LoadOptions) -> Option<EbpfSource> {
    if !super::root_or_skip("loads BPF programs") {
        return None;
    }
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
