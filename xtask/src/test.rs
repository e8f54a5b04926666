//! `cargo xtask test`: the whole suite, from a bare machine of this kind:
//! setup, format and lint checks (the BPF crate separately), every host test
//! as root (the tracepoint tier on kernels ≥ 6.3), the macOS type-check, and
//! the fentry/kprobe tiers inside a QEMU guest on Debian's stock 6.1 kernel.
//! Each step says what it runs; the first failure stops the run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::setup::{self, BpfToolchain};
use crate::vm::{self, GuestCommand, VmOptions};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip the QEMU guest tests (fentry and kprobe tiers).
    #[arg(long)]
    pub skip_vm: bool,
    /// Skip fmt and clippy.
    #[arg(long)]
    pub skip_lint: bool,
    /// Extra arguments for the host `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

/// The guest tests: the eBPF tier tests, with the tiers the stock 6.1
/// kernel must support made mandatory.
const GUEST_TESTS: &[&str] = &[
    "verifier_accepts_every_program",
    "lifecycle_tracepoint_formats_match",
    "exact_bytes_fentry_tier",
    "exact_bytes_kprobe_tier",
    "exact_bytes_tracepoint_tier",
    "cases_fentry_tier",
    "cases_kprobe_tier",
    "cases_tracepoint_tier",
];
const GUEST_REQUIRED_TIERS: &str = "fentry,kprobe";
/// The seeding tests (`ebpf_seed`): sockets opened before load are listed
/// as `ss` lists them, so the guest also gets the host's `ss`.
const GUEST_SEED_TESTS: &[&str] = &[
    "seeded_sockets_listed_fentry_tier",
    "seeded_sockets_listed_kprobe_tier",
    "seeded_sockets_listed_tracepoint_tier",
    "seeding_fills_at_most_half_the_map",
    "shared_sockets_seeded_fentry_tier",
    "shared_sockets_seeded_kprobe_tier",
    "shared_sockets_seeded_tracepoint_tier",
    "thread_bytes_named_by_process_fentry_tier",
    "thread_bytes_named_by_process_kprobe_tier",
    "thread_bytes_named_by_process_tracepoint_tier",
];
/// Where iproute2 puts `ss` on the host.
const HOST_SS: &str = "/usr/bin/ss";

fn root() -> PathBuf {
    vm::workspace_root()
}

/// Run a command from the workspace root, streaming its output.
fn step(what: &str, cmd: &mut Command) -> Result<Duration> {
    cmd.current_dir(root());
    eprintln!("\nxtask test: {what}: {}", crate::host::command_line(cmd));
    let t = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(t.elapsed())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Kernel release as (major, minor).
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// Tiers the host kernel must support: the tracepoint tier from 6.3 on,
/// the kprobe tier where the kernel has kprobes.
fn host_required_tiers() -> String {
    let mut tiers = Vec::new();
    if kernel_version().is_some_and(|v| v >= (6, 3)) {
        tiers.push("tracepoint");
    }
    if Path::new("/sys/bus/event_source/devices/kprobe").exists() {
        tiers.push("kprobe");
    }
    tiers.join(",")
}

/// Path of the `ebpf_tiers` integration test binary (built if needed).
fn tier_test_binary() -> Result<PathBuf> {
    crate::host::cargo_executable(
        &[
            "test",
            "-p",
            "netwatch-user",
            "--test",
            "ebpf_tiers",
            "--no-run",
        ],
        "ebpf_tiers",
    )
}

/// Path of the `ebpf_seed` integration test binary (built if needed).
fn seed_test_binary() -> Result<PathBuf> {
    crate::host::cargo_executable(
        &[
            "test",
            "-p",
            "netwatch-user",
            "--test",
            "ebpf_seed",
            "--no-run",
        ],
        "ebpf_seed",
    )
}

fn guest_tests() -> Result<Duration> {
    let t = Instant::now();
    let bin = tier_test_binary()?;
    let seed_bin = seed_test_binary()?;
    if !Path::new(HOST_SS).exists() {
        bail!("the guest seeding tests need {HOST_SS} on the host (apt-get install iproute2)");
    }
    eprintln!(
        "\nxtask test: eBPF tiers in a QEMU guest (Debian stock kernel, TCG): {}",
        bin.display()
    );
    let commands = GUEST_TESTS
        .iter()
        .map(|name| (&bin, name))
        .chain(GUEST_SEED_TESTS.iter().map(|name| (&seed_bin, name)))
        .map(|(bin, name)| {
            Ok(GuestCommand::cargo_test(bin, name)?
                .env("NETWATCH_REQUIRE_TIERS", GUEST_REQUIRED_TIERS)
                // Workloads sized for software emulation.
                .env("NETWATCH_GUEST", "1"))
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = VmOptions {
        bpf_stats: true,
        // Software emulation is slow and its speed varies with the host's load.
        timeout: Duration::from_secs(900),
        ..VmOptions::default()
    };
    let report = vm::run_in_vm(&opts, &[bin, seed_bin, PathBuf::from(HOST_SS)], &commands)?;
    eprintln!("{}", report.summary());
    report.ensure_success()?;
    Ok(t.elapsed())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the tests load BPF programs, capture packets and boot a VM: run them as root \
             (sudo -E env PATH=\"$PATH\" cargo xtask test)"
        );
    }
    Ok(())
}

pub fn run(args: TestArgs) -> Result<()> {
    let started = Instant::now();
    require_root()?;
    let toolchain = setup::ensure()?;
    let mut timings: Vec<(&str, Duration)> = Vec::new();

    if !args.skip_lint {
        timings.push((
            "fmt",
            step(
                "format check",
                cargo().args(["fmt", "--all", "--", "--check"]),
            )?,
        ));
        timings.push((
            "clippy",
            step(
                "clippy (host crates)",
                cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
            )?,
        ));
        timings.push((
            "clippy-ebpf",
            step(
                "clippy (BPF crate, bpfel-unknown-none)",
                &mut ebpf_clippy(toolchain),
            )?,
        ));
    }

    let mut test = cargo();
    test.args(["test", "--workspace", "--exclude", "netwatch-ebpf"])
        .args(&args.cargo_args)
        .env("NETWATCH_REQUIRE_TIERS", host_required_tiers());
    timings.push((
        "host tests",
        step("host tests (as root, real kernel)", &mut test)?,
    ));

    timings.push((
        "macos check",
        step(
            "macOS type-check (aarch64-apple-darwin)",
            &mut macos_check(toolchain),
        )?,
    ));

    if !args.skip_vm {
        timings.push(("guest tests", guest_tests()?));
    }

    eprintln!(
        "\nxtask test: all steps passed in {:.0?}",
        started.elapsed()
    );
    for (name, d) in timings {
        eprintln!("  {name:<12} {d:.1?}");
    }
    Ok(())
}

/// clippy for the BPF crate with the toolchain that can build `core` for BPF.
pub fn ebpf_clippy(toolchain: BpfToolchain) -> Command {
    let mut cmd = toolchain.cargo();
    cmd.args([
        "clippy",
        "-p",
        "netwatch-ebpf",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "target/ebpf-clippy",
        "--",
        "-D",
        "warnings",
    ]);
    cmd
}

/// `cargo check` of the agent for macOS, with std built from source.
pub fn macos_check(toolchain: BpfToolchain) -> Command {
    let mut cmd = toolchain.cargo();
    cmd.args([
        "check",
        "-p",
        "netwatch-user",
        "--target",
        "aarch64-apple-darwin",
        "-Z",
        "build-std=std,panic_abort",
        "--target-dir",
        "target/macos",
    ]);
    cmd
}
