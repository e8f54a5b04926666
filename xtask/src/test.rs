//! `cargo xtask test`: the whole suite, from a bare machine of this kind:
//! setup, format and lint checks (the BPF crate separately), every host test
//! as root (the tracepoint tier on kernels ≥ 6.3), the same test binaries
//! again as `nobody` (they must pass, each root test skipping with one
//! line), every fuzz target over its committed corpus and crash inputs
//! (`fuzz.rs`), the macOS type-check, and
//! the eBPF tier tests inside QEMU guests on two Debian 12 stock kernels: 6.1
//! (fentry and kprobe tiers must attach) and 6.12 (all three must). Each step
//! says what it runs; the first failing step stops the run (both guests run
//! before the guest step is judged).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::setup::{self, BpfToolchain};
use crate::vm::{self, GuestCommand, KernelSource, VmOptions};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Skip the QEMU guest tests (the Debian 6.1 and 6.12 kernels).
    #[arg(long, conflicts_with = "vm_only")]
    pub skip_vm: bool,
    /// Run only the QEMU guest tests (no lint, host tests or macOS check).
    #[arg(long)]
    pub vm_only: bool,
    /// Boot the guests one after the other instead of side by side.
    #[arg(long)]
    pub vm_sequential: bool,
    /// Skip fmt and clippy.
    #[arg(long)]
    pub skip_lint: bool,
    /// Run only the host test binaries as nobody (built first if needed):
    /// every test must pass, each root test skipping with one line.
    #[arg(long, conflicts_with = "vm_only")]
    pub nobody_only: bool,
    /// Extra arguments for the host `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

/// The guest tests: the eBPF tier tests, run on every guest kernel with
/// the tiers that kernel must support made mandatory.
const GUEST_TESTS: &[&str] = &[
    "verifier_accepts_every_program",
    "lifecycle_tracepoint_formats_match",
    "exact_bytes_fentry_tier",
    "exact_bytes_kprobe_tier",
    "exact_bytes_tracepoint_tier",
    "cases_fentry_tier",
    "cases_kprobe_tier",
    "cases_tracepoint_tier",
    "mptcp_fentry_tier",
    "mptcp_kprobe_tier",
    "mptcp_tracepoint_tier",
    "udp_gso_fentry_tier",
    "udp_gso_kprobe_tier",
    "udp_gso_tracepoint_tier",
    "tcp_events_fentry_tier",
    "tcp_events_kprobe_tier",
    "tcp_events_tracepoint_tier",
    "an_alert_keeps_its_window_when_the_guest_wall_clock_steps",
    "nested_programs_keep_their_entries_fentry_tier",
    "nested_programs_keep_their_entries_kprobe_tier",
    "nested_programs_keep_their_entries_tracepoint_tier",
    "skipped_runs_are_counted_fentry_tier",
    "skipped_runs_are_counted_kprobe_tier",
    "skipped_runs_are_counted_tracepoint_tier",
];

/// A stock kernel the guest tests run on.
struct GuestKernel {
    /// Short name in messages.
    label: &'static str,
    /// The Debian meta-package whose current kernel is booted.
    meta: &'static str,
    /// `NETWATCH_REQUIRE_TIERS` in the guest.
    required_tiers: &'static str,
}

/// Debian 12's 6.1 has no `sock:sock_send_length` (Linux ≥ 6.3), so its
/// tracepoint tier is skipped; on 6.12 every tier must attach.
const GUEST_KERNELS: &[GuestKernel] = &[
    GuestKernel {
        label: "6.1",
        meta: vm::DEBIAN_CLOUD_META,
        required_tiers: "fentry,kprobe",
    },
    GuestKernel {
        label: "6.12",
        meta: vm::DEBIAN_612_CLOUD_META,
        required_tiers: "fentry,kprobe,tracepoint",
    },
];
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
/// The network-fault tests (`net_faults`, and the helpers in
/// `tests/common/netns.rs` other test files use): namespaces, veth pairs
/// and nftables rules made in the guest as on the host, so every guest run
/// gets [`vm::NET_FAULT_MODULES`] and the host's `ip`, `tc` and `nft`.
const GUEST_FAULT_TESTS: &[&str] = &["faults_made_by_nft_rules_behave_exactly"];
/// The connect and reset tests (`tcp_connects`): network namespaces, a
/// veth pair and nftables rules of their own, so the guest needs `ip`,
/// `nft` and the veth / nf_tables modules.
const GUEST_CONNECT_TESTS: &[&str] = &[
    "connects_and_resets_fentry_tier",
    "connects_and_resets_kprobe_tier",
    "connects_and_resets_tracepoint_tier",
];
/// The retransmit tests (`tcp_retransmits`): need `ip`, `nft` and the
/// veth / nf_tables / nft_numgen modules in the guest.
const GUEST_RETRANS_TESTS: &[&str] = &[
    "tcp_retransmits_fentry_tier",
    "tcp_retransmits_kprobe_tier",
    "tcp_retransmits_tracepoint_tier",
    "tcp_retransmits_before_attach_are_not_counted",
];
/// The end-to-end quality tests (`quality_rows`): the library agent on
/// each tier with the DNS capture, a veth pair, nftables and a DNS server
/// of their own.
const GUEST_QUALITY_TESTS: &[&str] = &[
    "quality_rows_fentry_tier",
    "quality_rows_kprobe_tier",
    "quality_rows_tracepoint_tier",
];
/// Where iproute2 puts `ss` on the host.
const HOST_SS: &str = "/usr/bin/ss";
/// The host's `bpftool`, which the nesting tests compare the agent's
/// figures with.
const HOST_BPFTOOL: &str = "/usr/sbin/bpftool";

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

/// Path of the netwatch-user integration test binary `name` (e.g.
/// `ebpf_tiers`), built if needed.
fn test_binary(name: &str) -> Result<PathBuf> {
    crate::host::cargo_executable(
        &["test", "-p", "netwatch-user", "--test", name, "--no-run"],
        name,
    )
}

/// One guest kernel's run: the report, or why it could not be attempted.
struct GuestRun {
    kernel: &'static GuestKernel,
    package: String,
    outcome: Result<vm::VmReport>,
    elapsed: Duration,
}

/// Runs the guest tests on every [`GUEST_KERNELS`] entry (side by side
/// unless `sequential`), prints each kernel's results, and fails when any
/// kernel's run failed. Returns the time of each kernel's run.
fn guest_tests(sequential: bool) -> Result<Vec<(String, Duration)>> {
    let bin = test_binary("ebpf_tiers")?;
    let seed_bin = test_binary("ebpf_seed")?;
    let fault_bin = test_binary("net_faults")?;
    let fault_tools = vm::net_fault_tools()?;
    let connect_bin = test_binary("tcp_connects")?;
    let retrans_bin = test_binary("tcp_retransmits")?;
    let quality_bin = test_binary("quality_rows")?;
    if !Path::new(HOST_SS).exists() {
        bail!("the guest seeding tests need {HOST_SS} on the host (apt-get install iproute2)");
    }
    if !Path::new(HOST_BPFTOOL).exists() {
        bail!("the guest nesting tests need {HOST_BPFTOOL} on the host (cargo xtask setup)");
    }
    let work_dir = VmOptions::default().work_dir;
    // Resolve (and on the first run download) the kernels one at a time, so
    // apt is never run twice at once.
    let mut kernels = Vec::new();
    for kernel in GUEST_KERNELS {
        let t = Instant::now();
        let resolved = vm::resolve_kernel(&KernelSource::DebianMeta(kernel.meta.into()), &work_dir)
            .with_context(|| format!("guest kernel {} ({})", kernel.label, kernel.meta))?;
        let package = resolved
            .package
            .with_context(|| format!("{} resolved to no package", kernel.meta))?;
        eprintln!(
            "xtask test: guest kernel {}: {package} ({:.1} s to resolve)",
            kernel.label,
            t.elapsed().as_secs_f64()
        );
        kernels.push((kernel, package));
    }
    eprintln!(
        "\nxtask test: eBPF tiers in QEMU guests (Debian 12 stock kernels {}, TCG, {}): {}",
        GUEST_KERNELS
            .iter()
            .map(|k| k.label)
            .collect::<Vec<_>>()
            .join(" and "),
        if sequential {
            "one after the other"
        } else {
            "side by side"
        },
        bin.display()
    );
    let run_one = |kernel: &'static GuestKernel, package: String| -> GuestRun {
        let t = Instant::now();
        let outcome = (|| {
            let commands = GUEST_TESTS
                .iter()
                .map(|name| (&bin, name))
                .chain(GUEST_SEED_TESTS.iter().map(|name| (&seed_bin, name)))
                .chain(GUEST_FAULT_TESTS.iter().map(|name| (&fault_bin, name)))
                .chain(GUEST_CONNECT_TESTS.iter().map(|name| (&connect_bin, name)))
                .chain(GUEST_RETRANS_TESTS.iter().map(|name| (&retrans_bin, name)))
                .chain(GUEST_QUALITY_TESTS.iter().map(|name| (&quality_bin, name)))
                .map(|(bin, name)| {
                    Ok(GuestCommand::cargo_test(bin, name)?
                        .env("NETWATCH_REQUIRE_TIERS", kernel.required_tiers)
                        // Workloads sized for software emulation.
                        .env("NETWATCH_GUEST", "1"))
                })
                .collect::<Result<Vec<_>>>()?;
            let opts = VmOptions {
                kernel: KernelSource::DebianPackage(package.clone()),
                bpf_stats: true,
                // Software emulation is slow and its speed varies with the host's load.
                timeout: Duration::from_secs(900),
                modules: vm::NET_FAULT_MODULES
                    .iter()
                    .map(|m| m.to_string())
                    .collect(),
                // Two consoles interleaved are unreadable: side by side, each is
                // only logged, and the output of failed tests is printed after.
                echo_console: sequential,
                ..VmOptions::default()
            };
            let mut binaries = vec![
                bin.clone(),
                seed_bin.clone(),
                fault_bin.clone(),
                connect_bin.clone(),
                retrans_bin.clone(),
                quality_bin.clone(),
                PathBuf::from(HOST_SS),
                PathBuf::from(HOST_BPFTOOL),
            ];
            binaries.extend(fault_tools.iter().cloned());
            vm::run_in_vm(&opts, &binaries, &commands)
        })();
        GuestRun {
            kernel,
            package,
            outcome,
            elapsed: t.elapsed(),
        }
    };
    let runs: Vec<GuestRun> = if sequential {
        kernels
            .into_iter()
            .map(|(kernel, package)| run_one(kernel, package))
            .collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = kernels
                .into_iter()
                .map(|(kernel, package)| scope.spawn(|| run_one(kernel, package)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        })
    };

    let mut failed = Vec::new();
    let mut timings = Vec::new();
    for run in &runs {
        let GuestKernel {
            label,
            required_tiers,
            ..
        } = run.kernel;
        eprintln!(
            "\nxtask test: guest kernel {label} ({}), required tiers {required_tiers}:",
            run.package
        );
        match &run.outcome {
            Ok(report) => {
                if !sequential {
                    for cmd in report.commands.iter().filter(|c| !c.passed()) {
                        eprintln!("xtask vm: output of {}:\n{}", cmd.name, cmd.output);
                    }
                }
                eprintln!("{}", report.summary());
                let release = report.kernel_release.as_deref().unwrap_or("?");
                for cmd in &report.commands {
                    let notes = tier_notes(&cmd.output);
                    eprintln!(
                        "xtask test: {release}: {} {}{}",
                        if cmd.passed() { "PASS" } else { "FAIL" },
                        cmd.name,
                        if notes.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", notes.join(", "))
                        }
                    );
                }
                if let Err(e) = report.ensure_success() {
                    failed.push(format!("{label} ({release}): {e:#}"));
                }
                timings.push((format!("guest {release}"), run.elapsed));
            }
            Err(e) => {
                eprintln!("xtask test: guest kernel {label} could not run: {e:#}");
                failed.push(format!("{label} ({}): {e:#}", run.package));
                timings.push((format!("guest {label}"), run.elapsed));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "guest tests failed on {} of {} kernel(s):\n{}",
            failed.len(),
            runs.len(),
            failed.join("\n")
        );
    }
    Ok(timings)
}

/// What the tier tests said about each tier they tried (`NETWATCH-TIER
/// <tier>: ...` lines): "fentry attached", "tracepoint skipped".
fn tier_notes(output: &str) -> Vec<String> {
    let mut notes = Vec::new();
    for line in output.lines() {
        let Some(rest) = line.split_once("NETWATCH-TIER ").map(|(_, r)| r) else {
            continue;
        };
        let Some((tier, what)) = rest.split_once(": ") else {
            continue;
        };
        let note = if what.starts_with("loaded and attached") {
            format!("{tier} attached")
        } else if what.starts_with("SKIPPED") {
            format!("{tier} skipped")
        } else {
            continue;
        };
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    notes
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

/// The unprivileged user the logic tests are run as (`nobody`).
const NOBODY: u32 = 65534;

/// The start of the line a test skipped for want of root prints
/// (`netwatch-user/src/root_check.rs`, which `tests/common` includes).
const SKIPPED: &str = "skipped: ";

/// One test binary cargo built for the host tests.
struct TestBinary {
    /// The binary.
    executable: PathBuf,
    /// Its package's directory (where `cargo test` runs it).
    package_dir: PathBuf,
    /// The sources whose `#[test]` functions it runs: the test file, or
    /// every file under a library's `src/`.
    sources: Vec<PathBuf>,
    /// The target's name (`netwatch`, `pin_restart`, …).
    name: String,
}

/// What one binary's run as [`NOBODY`] showed.
#[derive(Debug, Default, PartialEq)]
struct UnprivilegedRun {
    passed: u32,
    failed: u32,
    ignored: u32,
    /// The tests that printed the skip line, in order (one entry a line).
    skipped: Vec<String>,
}

/// libtest's summary (`test result: ok. 3 passed; 0 failed; 1 ignored; …`)
/// summed over every summary line in `stdout`: (passed, failed, ignored);
/// None when there is none (the binary did not finish).
fn test_results(stdout: &str) -> Option<(u32, u32, u32)> {
    let mut total = None;
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        let count = |what: &str| -> u32 {
            rest.split(';')
                .filter_map(|part| part.trim().strip_suffix(what))
                .filter_map(|n| n.rsplit(' ').find(|w| !w.is_empty()))
                .filter_map(|n| n.parse().ok())
                .next()
                .unwrap_or(0)
        };
        let (p, f, i) = total.unwrap_or((0, 0, 0));
        total = Some((
            p + count(" passed"),
            f + count(" failed"),
            i + count(" ignored"),
        ));
    }
    total
}

/// The tests named by skip lines (`skipped: <test>: needs root (…)`) in
/// `stderr`, in order.
fn skipped_tests(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(SKIPPED))
        .filter_map(|l| l.split_once(": needs root ("))
        .map(|(test, _)| test.to_string())
        .collect()
}

/// The `#[test]` functions in `source` whose own body starts the root check
/// (`require_root!`, or `root_or_skip(` for a test that returns a value):
/// each must print a skip line as another user. A test that reaches the
/// check through a helper prints one too, but is not listed here.
fn root_tests(source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "#[test]" {
            i += 1;
            continue;
        }
        // The fn line after the attributes, and its body up to the closing
        // brace at the fn's own indentation (rustfmt's layout).
        let Some(f) = (i + 1..lines.len()).find(|&j| lines[j].trim_start().starts_with("fn "))
        else {
            break;
        };
        let indent = lines[f].len() - lines[f].trim_start().len();
        let close = format!("{}}}", " ".repeat(indent));
        let end = (f + 1..lines.len())
            .find(|&j| lines[j] == close)
            .unwrap_or(lines.len());
        let name = lines[f].trim_start()["fn ".len()..]
            .split(['(', '<'])
            .next()
            .unwrap_or_default();
        if lines[f..end].iter().map(|l| l.trim()).any(|l| {
            l.starts_with("require_root!(")
                || (l.starts_with("if !") && l.contains("root_or_skip(") && l.ends_with('{'))
        }) {
            found.push(name.to_string());
        }
        i = end;
    }
    found
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The test binaries of the host tests, as cargo lists them (already
/// built by the host test step: nothing is compiled again).
fn host_test_binaries() -> Result<Vec<TestBinary>> {
    let out = cargo()
        .current_dir(root())
        .args([
            "test",
            "--workspace",
            "--exclude",
            "netwatch-ebpf",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("listing the host test binaries (cargo test --no-run)")?;
    if !out.status.success() {
        bail!(
            "listing the host test binaries failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut binaries = Vec::new();
    for m in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
    {
        let (Some(exe), Some(manifest), Some(src)) = (
            m["executable"].as_str(),
            m["manifest_path"].as_str(),
            m["target"]["src_path"].as_str(),
        ) else {
            continue;
        };
        let src = PathBuf::from(src);
        let is_lib = m["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "lib"));
        let mut sources = Vec::new();
        match src.parent() {
            Some(dir) if is_lib => rust_files(dir, &mut sources),
            _ => sources.push(src),
        }
        binaries.push(TestBinary {
            executable: exe.into(),
            package_dir: Path::new(manifest)
                .parent()
                .context("a manifest path with no directory")?
                .to_path_buf(),
            sources,
            name: m["target"]["name"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(binaries)
}

/// `program` to be run as [`NOBODY`] with no capabilities (util-linux's
/// `setpriv`): how the tests show what works without privileges.
pub fn as_nobody(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(program);
    cmd
}

/// Run `bin` as [`NOBODY`] with no capabilities (`setpriv`), as `cargo
/// test` would (from its package directory), with `scratch` as HOME and
/// TMPDIR, `CI` and `NETWATCH_REQUIRE_ROOT` unset (so root tests skip):
/// (status, stdout, stderr).
fn run_unprivileged(
    bin: &TestBinary,
    scratch: &Path,
    extra: &[&str],
) -> Result<(std::process::ExitStatus, String, String)> {
    let out = as_nobody(&bin.executable)
        .args(extra)
        .current_dir(&bin.package_dir)
        .env_remove("CI")
        .env_remove("NETWATCH_REQUIRE_ROOT")
        .env_remove("NETWATCH_REQUIRE_TIERS")
        .env("CARGO_MANIFEST_DIR", &bin.package_dir)
        .env("HOME", scratch)
        .env("TMPDIR", scratch)
        .output()
        .with_context(|| {
            format!(
                "running {} as uid {NOBODY} with setpriv (util-linux)",
                bin.executable.display()
            )
        })?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The host tests again as an ordinary user, from the binaries the root
/// run built: every test must pass, and every test that needs root must
/// skip with exactly one line (each `#[test]` whose body starts the root
/// check must have printed it). Prints the counts.
fn unprivileged_tests() -> Result<Duration> {
    eprintln!(
        "\nxtask test: the host test binaries as uid {NOBODY} (setpriv, no capabilities, CI unset)"
    );
    let t = Instant::now();
    let binaries = host_test_binaries()?;
    let scratch =
        std::env::temp_dir().join(format!("netwatch-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    std::os::unix::fs::chown(&scratch, Some(NOBODY), Some(NOBODY))
        .with_context(|| format!("giving {} to uid {NOBODY}", scratch.display()))?;
    let result = run_all_unprivileged(&binaries, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    Ok(t.elapsed())
}

fn run_all_unprivileged(binaries: &[TestBinary], scratch: &Path) -> Result<()> {
    let mut total = UnprivilegedRun::default();
    let mut problems = Vec::new();
    for bin in binaries {
        let (status, stdout, stderr) = run_unprivileged(bin, scratch, &["--nocapture"])?;
        let Some((passed, failed, ignored)) = test_results(&stdout) else {
            problems.push(format!(
                "{}: no test summary ({status}); stderr:\n{stderr}",
                bin.name
            ));
            continue;
        };
        let skipped = skipped_tests(&stderr);
        if !status.success() || failed > 0 {
            problems.push(format!(
                "{}: {failed} failed ({status}):\n{stdout}\n{stderr}",
                bin.name
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for test in &skipped {
            if !seen.insert(test) {
                problems.push(format!("{}: {test} printed its skip line twice", bin.name));
            }
        }
        let (_, listed, _) = run_unprivileged(bin, scratch, &["--list"])?;
        for test in &skipped {
            if !listed
                .lines()
                .any(|l| l.strip_suffix(": test") == Some(test))
            {
                problems.push(format!(
                    "{}: a skip line names {test:?}, which is no test of it (a root check \
                     off the test's own thread?)",
                    bin.name
                ));
            }
        }
        for source in &bin.sources {
            let text = std::fs::read_to_string(source)
                .with_context(|| format!("reading {}", source.display()))?;
            for test in root_tests(&text) {
                let said = skipped
                    .iter()
                    .any(|s| s == &test || s.ends_with(&format!("::{test}")));
                if !said {
                    problems.push(format!(
                        "{}: {test} ({}) needs root but printed no skip line as uid {NOBODY}",
                        bin.name,
                        source.display()
                    ));
                }
            }
        }
        if !skipped.is_empty() || failed > 0 {
            eprintln!(
                "  {:<24} {passed:>4} passed ({} skipped: needs root), {failed} failed",
                bin.name,
                skipped.len()
            );
        }
        total.passed += passed;
        total.failed += failed;
        total.ignored += ignored;
        total.skipped.extend(skipped);
    }
    eprintln!(
        "xtask test: as uid {NOBODY}: {} tests in {} binaries: {} passed ({} ran, {} skipped \
         for want of root, one line each), {} failed, {} ignored",
        total.passed + total.failed + total.ignored,
        binaries.len(),
        total.passed,
        total.passed as usize - total.skipped.len(),
        total.skipped.len(),
        total.failed,
        total.ignored
    );
    if !problems.is_empty() {
        bail!("the unprivileged test run failed:\n{}", problems.join("\n"));
    }
    Ok(())
}

pub fn run(args: TestArgs) -> Result<()> {
    let started = Instant::now();
    require_root()?;
    let toolchain = setup::ensure()?;
    let mut timings: Vec<(String, Duration)> = Vec::new();

    if args.nobody_only {
        timings.push(("host tests as nobody".into(), unprivileged_tests()?));
        print_timings(started, &timings);
        return Ok(());
    }

    if args.vm_only {
        timings.extend(guest_tests(args.vm_sequential)?);
        print_timings(started, &timings);
        return Ok(());
    }

    if !args.skip_lint {
        timings.push((
            "fmt".into(),
            step(
                "format check",
                cargo().args(["fmt", "--all", "--", "--check"]),
            )?,
        ));
        timings.push((
            "clippy".into(),
            step(
                "clippy (host crates)",
                cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]),
            )?,
        ));
        timings.push((
            "clippy-ebpf".into(),
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
        "host tests".into(),
        step("host tests (as root, real kernel)", &mut test)?,
    ));
    // A contributor without root runs `cargo test` too: the same binaries
    // as nobody must pass, the root tests skipping with one line each.
    timings.push(("host tests as nobody".into(), unprivileged_tests()?));
    // The crate as a user meets it: the shipped BPF object, the examples,
    // cargo package and a dependent crate outside the workspace.
    timings.extend(crate::library::checks()?);

    // A parser change that crashes on a known input fails here: each fuzz
    // target runs its seed corpus and the crash inputs kept as regressions
    // once (no fuzzing; `cargo xtask fuzz --time SECS` fuzzes).
    eprintln!(
        "\nxtask test: fuzz targets over their committed inputs (cargo xtask fuzz --corpus-only)"
    );
    timings.push((
        "fuzz corpora".into(),
        crate::fuzz::timed(crate::fuzz::FuzzArgs {
            time: 0,
            corpus_only: true,
            jobs: 2,
            nice: 0,
            targets: Vec::new(),
        })?,
    ));

    timings.push((
        "macos check".into(),
        step(
            "macOS type-check (aarch64-apple-darwin)",
            &mut macos_check(toolchain),
        )?,
    ));

    if !args.skip_vm {
        timings.extend(guest_tests(args.vm_sequential)?);
    }

    print_timings(started, &timings);
    Ok(())
}

fn print_timings(started: Instant, timings: &[(String, Duration)]) {
    eprintln!(
        "\nxtask test: all steps passed in {:.0?}",
        started.elapsed()
    );
    for (name, d) in timings {
        eprintln!("  {name:<34} {d:.1?}");
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_notes_say_which_tiers_attached_and_which_were_skipped() {
        let out = "running 1 test\n\
                   test exact_bytes_fentry_tier ... NETWATCH-TIER fentry: loaded and attached\n\
                   NETWATCH-TIER fentry: exact per-process and per-connection bytes OK (11 sockets)\n\
                   NETWATCH-TIER tracepoint: SKIPPED, unavailable on this kernel: Linux < 6.3\n";
        assert_eq!(tier_notes(out), ["fentry attached", "tracepoint skipped"]);
        assert!(tier_notes("test lifecycle_tracepoint_formats_match ... ok\n").is_empty());
    }

    #[test]
    fn test_results_sum_every_summary_line() {
        let out = "running 2 tests\ntest a ... ok\n\
                   test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
                   test result: FAILED. 10 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(test_results(out), Some((12, 3, 1)));
        assert_eq!(test_results("running 1 test\n"), None);
    }

    #[test]
    fn skipped_tests_are_named_by_their_lines_only() {
        let err = "skipped: pin_restart_a: needs root (loads BPF programs); run as root or with cargo xtask test\n\
                   thread 'x' panicked\n\
                   skipped: procinfo::disk::io: needs root (mounts); run as root or with cargo xtask test\n\
                   skipped: not a root line\n";
        assert_eq!(skipped_tests(err), ["pin_restart_a", "procinfo::disk::io"]);
    }

    #[test]
    fn root_tests_are_the_tests_whose_own_body_checks() {
        let src = "#[test]\nfn plain() {\n    assert_eq!(1, 1);\n}\n\n\
                   fn helper() {\n    require_root!(\"x\");\n}\n\n\
                   #[test]\nfn direct() {\n    require_root!(\"loads BPF programs\");\n}\n\n\
                   mod m {\n    #[test]\n    #[cfg(target_os = \"linux\")]\n    fn nested() -> Result<()> {\n        \
                   if !crate::common::root_or_skip(\"why\") {\n            return Ok(());\n        }\n        Ok(())\n    }\n}\n";
        assert_eq!(root_tests(src), ["direct", "nested"]);
    }

    #[test]
    fn every_guest_kernel_requires_fentry_and_kprobe_and_612_the_tracepoint_tier() {
        for kernel in GUEST_KERNELS {
            let tiers: Vec<&str> = kernel.required_tiers.split(',').collect();
            assert!(tiers.contains(&"fentry") && tiers.contains(&"kprobe"));
        }
        let k612 = GUEST_KERNELS
            .iter()
            .find(|k| k.meta == vm::DEBIAN_612_CLOUD_META)
            .expect("a 6.12 guest kernel");
        assert!(k612.required_tiers.split(',').any(|t| t == "tracepoint"));
    }
}
