//! Runs commands inside a QEMU guest booted on a real (Debian stock) kernel,
//! so eBPF programs are tested against a kernel other than the host's. One
//! call builds an initramfs with the given binaries (and, when asked, the
//! kernel modules named in [`VmOptions::modules`] with their dependencies),
//! boots it under software emulation, and reports each command's exit
//! status and output as parsed from the serial console. It never uses KVM and never trusts QEMU's exit
//! status.
//!
//! ```no_run
//! use xtask::vm::{run_in_vm, GuestCommand, VmOptions};
//! let bin = std::path::PathBuf::from("target/debug/deps/integration-0123abcd");
//! let cmd = GuestCommand::cargo_test(&bin, "tcp_bytes_are_counted")?.env("NETWATCH_TIER", "fentry");
//! let report = run_in_vm(&VmOptions::default(), &[bin], &[cmd])?;
//! report.ensure_success()?;
//! # anyhow::Ok(())
//! ```

pub mod cli;
mod console;
mod init_script;
mod initramfs;
mod kernel;
mod modules;
mod qemu;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

pub use console::{CommandReport, VmFailure};
pub use kernel::{Kernel, KernelSource, DEBIAN_612_CLOUD_META, DEBIAN_CLOUD_META};

use console::{ConsoleParser, Markers};
use init_script::{GuestModule, InitScript};
use initramfs::Initramfs;

/// How many run directories (initramfs + console log) to keep under `runs/`.
const RUNS_KEPT: usize = 10;

/// The kernel modules the network-fault tests need in the guest (Debian's
/// cloud kernels build them as modules; the host's kernel has them built in
/// or loadable): veth pairs; nftables with `numgen`, `reject` (TCP reset and
/// ICMP), `ct` (conntrack), named counters and other objects (`objref`: a
/// module in 6.1, part of `nf_tables` in 6.12, hence optional) and `limit`;
/// netem; and kernel TLS (`tls`, for kTLS sockets). Their dependencies come
/// along. An nft rule using an
/// expression whose module is missing fails with "Could not process rule:
/// No such file or directory".
pub const NET_FAULT_MODULES: &[&str] = &[
    "veth",
    "nf_tables",
    "nft_numgen",
    "nft_reject_inet",
    "nft_ct",
    "nft_objref?",
    "nft_limit",
    "sch_netem",
    "tls",
];

/// The host tools (program, Debian package) the network-fault tests run in
/// the guest exactly as on the host: iproute2's `ip` (`ip netns`, veth
/// pairs; it replaces BusyBox's `ip` applet) and `tc` (netem), and `nft`.
pub const NET_FAULT_TOOLS: &[(&str, &str)] =
    &[("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")];

/// The host paths of [`NET_FAULT_TOOLS`], installing a missing package
/// first; pass them to [`run_in_vm`] with the other binaries.
pub fn net_fault_tools() -> Result<Vec<PathBuf>> {
    NET_FAULT_TOOLS
        .iter()
        .map(|(tool, package)| crate::host::ensure_tool(tool, package))
        .collect()
}

/// How to boot the guest.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Cache and run files: kernels in `kernels/`, one directory per run in
    /// `runs/` (its initramfs, `/init` and console log). Default: `<workspace>/target/vm`.
    pub work_dir: PathBuf,
    pub kernel: KernelSource,
    /// Guest memory; 1 GiB is plenty for the tests.
    pub memory_mib: u32,
    /// Guest CPUs (TCG runs one host thread per CPU).
    pub cpus: u32,
    /// Whole-run limit, boot to power-off; QEMU is killed when it passes.
    pub timeout: Duration,
    /// Set `kernel.bpf_stats_enabled=1` before the commands run.
    pub bpf_stats: bool,
    /// Stream the console to stdout (prefixed `guest| `) as it arrives.
    pub echo_console: bool,
    /// Kernel modules (by name, e.g. `nf_tables`, `veth`) `/init` loads
    /// with `insmod` before the commands run, each after the modules it
    /// needs (from the kernel package's `modules.dep`); one the kernel has
    /// built in is skipped; `name?` is optional (skipped when the kernel
    /// has no such module), any other unknown name is an error. A module that does not load fails the run
    /// ("guest setup failed: insmod ..."). Needs a Debian kernel package
    /// (not [`KernelSource::Image`]). See [`NET_FAULT_MODULES`].
    pub modules: Vec<String>,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            work_dir: workspace_root().join("target").join("vm"),
            kernel: KernelSource::default(),
            memory_mib: 1024,
            cpus: 1,
            timeout: Duration::from_secs(300),
            bpf_stats: false,
            echo_console: true,
            modules: Vec::new(),
        }
    }
}

/// One command `/init` runs in the guest, as root, with its stdout and
/// stderr on the console and stdin from `/dev/null`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCommand {
    /// Names the command in the console markers and the report. Letters,
    /// digits and `_ - . : / + =` only; unique within a run.
    pub name: String,
    /// Program and arguments. A binary passed to [`run_in_vm`] is at
    /// `/bin/<file name>` (see [`guest_path`]); busybox applets are on `PATH`.
    pub argv: Vec<String>,
    /// Added to the guest's environment (`PATH`, `HOME=/root`).
    pub env: Vec<(String, String)>,
}

impl GuestCommand {
    pub fn new<I, S>(name: impl Into<String>, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            name: name.into(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
        }
    }

    /// One test of a cargo test executable, the way the kernel wants it:
    /// `/bin/<binary> --exact <test> --test-threads=1 --nocapture`, named
    /// after the test.
    pub fn cargo_test(binary: &Path, test: &str) -> Result<Self> {
        Ok(Self::new(
            test,
            [
                guest_path(binary)?,
                "--exact".into(),
                test.into(),
                "--test-threads=1".into(),
                "--nocapture".into(),
            ],
        ))
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn validate(&self) -> Result<()> {
        let name_ok = |c: char| c.is_ascii_alphanumeric() || "_-.:/+=".contains(c);
        if self.name.is_empty() || !self.name.chars().all(name_ok) {
            bail!(
                "guest command name {:?} must be non-empty and use only letters, digits and _ - . : / + =",
                self.name
            );
        }
        if self.argv.is_empty() {
            bail!("guest command {} has an empty argv", self.name);
        }
        for (key, _) in &self.env {
            let mut chars = key.chars();
            let valid = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                bail!(
                    "guest command {}: {key:?} is not a valid environment variable name",
                    self.name
                );
            }
        }
        Ok(())
    }
}

/// Where `binary` will be in the guest: `/bin/<file name>`.
pub fn guest_path(binary: &Path) -> Result<String> {
    let name = binary
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: no usable file name", binary.display()))?;
    Ok(format!("/bin/{name}"))
}

/// Time spent in each phase of a run.
#[derive(Debug, Clone, Copy)]
pub struct VmTimings {
    /// Resolving (and, the first time, downloading) the kernel.
    pub kernel: Duration,
    pub initramfs: Duration,
    /// QEMU start to `/init`'s first line.
    pub boot_to_init: Option<Duration>,
    /// `/init`'s first line to the line saying every kernel module of the
    /// run loaded (the `insmod`s), and how many loaded; `None` without
    /// modules.
    pub modules: Option<(Duration, usize)>,
    /// QEMU start to QEMU exit.
    pub qemu: Duration,
}

/// The outcome of [`run_in_vm`]. A run that booted is reported here even
/// when it failed; check [`VmReport::ensure_success`].
#[derive(Debug, Clone)]
#[must_use = "a VmReport may hold failures; call ensure_success()"]
pub struct VmReport {
    /// One entry per command that started, in order.
    pub commands: Vec<CommandReport>,
    /// Why the run failed; empty when every command ran and exited 0.
    pub failures: Vec<VmFailure>,
    pub kernel: Kernel,
    /// `uname -r` in the guest.
    pub kernel_release: Option<String>,
    /// The raw serial console (plus QEMU's stderr, if any).
    pub console_log: PathBuf,
    pub timings: VmTimings,
}

impl VmReport {
    pub fn is_success(&self) -> bool {
        self.failures.is_empty()
    }

    /// The report of the command called `name`, if it started.
    pub fn command(&self, name: &str) -> Option<&CommandReport> {
        self.commands.iter().find(|c| c.name == name)
    }

    /// `Ok` when every command ran and exited 0; otherwise an error listing
    /// each failure and the console log's path.
    pub fn ensure_success(&self) -> Result<()> {
        if self.is_success() {
            return Ok(());
        }
        let mut msg = format!("guest run failed ({} problem(s)):", self.failures.len());
        for failure in &self.failures {
            let _ = write!(msg, "\n  - {failure}");
        }
        let _ = write!(msg, "\nconsole log: {}", self.console_log.display());
        bail!(msg)
    }

    /// Human-readable lines: one per command, then timings and the verdict.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for c in &self.commands {
            let verdict = if c.passed() { "PASS" } else { "FAIL" };
            let rc = c.rc.map_or("none".to_string(), |rc| rc.to_string());
            let secs = c
                .duration
                .map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
            let _ = writeln!(s, "xtask vm: {verdict} {} (rc={rc}, {secs})", c.name);
        }
        let t = &self.timings;
        let _ = writeln!(
            s,
            "xtask vm: kernel {} ({}); kernel {:.2} s, initramfs {:.2} s, boot to /init {}{}, QEMU start to exit {:.2} s",
            self.kernel_release.as_deref().unwrap_or("?"),
            self.kernel.image.display(),
            t.kernel.as_secs_f64(),
            t.initramfs.as_secs_f64(),
            t.boot_to_init.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            t.modules.map_or(String::new(), |(d, n)| format!(
                ", {n} kernel module(s) loaded in {:.2} s",
                d.as_secs_f64()
            )),
            t.qemu.as_secs_f64(),
        );
        if self.is_success() {
            let _ = write!(
                s,
                "xtask vm: all {} guest command(s) succeeded",
                self.commands.len()
            );
        } else {
            for failure in &self.failures {
                let _ = writeln!(s, "xtask vm: problem: {failure}");
            }
            let _ = write!(
                s,
                "xtask vm: guest run FAILED; console log {}",
                self.console_log.display()
            );
        }
        s
    }
}

/// Resolves `source` to a bootable kernel as [`run_in_vm`] would, downloading
/// it into `<work_dir>/kernels` the first time.
pub fn resolve_kernel(source: &KernelSource, work_dir: &Path) -> Result<Kernel> {
    kernel::resolve(source, &work_dir.join("kernels"))
}

/// Boots a guest whose `/bin` holds `binaries` (with their shared
/// libraries), runs `commands` in order, and reports each one.
///
/// Errors are for runs that could not be attempted (kernel download, a
/// missing binary, QEMU not starting). A run that booted returns `Ok` even if
/// it failed — timeout, kernel panic, missing summary, non-zero exit — with
/// the reasons in [`VmReport::failures`].
pub fn run_in_vm(
    opts: &VmOptions,
    binaries: &[PathBuf],
    commands: &[GuestCommand],
) -> Result<VmReport> {
    let mut names = HashSet::new();
    for cmd in commands {
        cmd.validate()?;
        if !names.insert(cmd.name.as_str()) {
            bail!(
                "two guest commands are named {}; names must be unique",
                cmd.name
            );
        }
    }
    let qemu = qemu::qemu_binary()?;
    let busybox = crate::host::ensure_tool("busybox", "busybox-static")?;

    let started = Instant::now();
    let kernel = kernel::resolve(&opts.kernel, &opts.work_dir.join("kernels"))?;
    let kernel_time = started.elapsed();

    let run_dir = new_run_dir(&opts.work_dir)?;
    let markers = Markers::fresh();
    let started = Instant::now();
    let mut fs = Initramfs::with_busybox(&busybox)?;
    for binary in binaries {
        fs.add_binary(binary)?;
    }
    let modules = add_modules(&mut fs, &kernel, &opts.work_dir, &opts.modules)?;
    let script = InitScript {
        markers: &markers,
        commands,
        bpf_stats: opts.bpf_stats,
        modules: &modules,
    }
    .render();
    fs.add_init(&script);
    std::fs::write(run_dir.join("init"), &script)
        .with_context(|| format!("writing {}", run_dir.join("init").display()))?;
    let initrd = run_dir.join("initramfs.cpio.gz");
    let written = fs.write_gzipped(&initrd)?;
    let initramfs_time = started.elapsed();
    eprintln!(
        "xtask vm: initramfs {} ({} entries, {:.1} MiB, {:.1} MiB gzip'd) built in {:.2} s",
        initrd.display(),
        written.entries,
        written.uncompressed_bytes as f64 / (1024.0 * 1024.0),
        written.compressed_bytes as f64 / (1024.0 * 1024.0),
        initramfs_time.as_secs_f64()
    );

    let console_log = run_dir.join("console.log");
    eprintln!(
        "xtask vm: booting {} under TCG ({} MiB, {} CPU(s), timeout {} s); console log {}",
        kernel.image.display(),
        opts.memory_mib,
        opts.cpus,
        opts.timeout.as_secs(),
        console_log.display()
    );
    let parser = ConsoleParser::new(markers, commands.iter().map(|c| c.name.clone()).collect());
    let booted = qemu::Boot {
        qemu: &qemu,
        kernel: &kernel.image,
        initrd: &initrd,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        timeout: opts.timeout,
        echo: opts.echo_console,
        log: &console_log,
    }
    .run(parser)?;

    Ok(VmReport {
        commands: booted.parsed.commands,
        failures: booted.parsed.failures,
        kernel,
        kernel_release: booted.parsed.kernel_release,
        console_log,
        timings: VmTimings {
            kernel: kernel_time,
            initramfs: initramfs_time,
            boot_to_init: booted.parsed.booted_at,
            modules: match (booted.parsed.booted_at, booted.parsed.modules_loaded) {
                (Some(boot), Some((loaded, n))) => Some((loaded.saturating_sub(boot), n)),
                _ => None,
            },
            qemu: booted.elapsed,
        },
    })
}

/// Puts the files of `wanted` (module names) and of every module they need
/// into `fs` under `/lib/modules/<release>/`, decompressed; returns them in
/// load order for `/init`.
fn add_modules(
    fs: &mut Initramfs,
    kernel: &Kernel,
    work_dir: &Path,
    wanted: &[String],
) -> Result<Vec<GuestModule>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let tree = kernel::module_tree(kernel, &work_dir.join("kernels"))?;
    let resolution = tree
        .index()?
        .resolve(wanted)
        .with_context(|| format!("resolving the guest's kernel modules ({})", tree.release))?;
    let mut out = Vec::with_capacity(resolution.load.len());
    let mut bytes = 0;
    for module in &resolution.load {
        let path = format!(
            "/lib/modules/{}/{}",
            tree.release,
            module.uncompressed_path()
        );
        // The path is written into /init inside double quotes as well.
        if !path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-".contains(c))
        {
            bail!("kernel module path {path:?} has characters /init cannot carry");
        }
        let data = tree.read(module)?;
        bytes += data.len();
        fs.add_bytes(&path, data, 0o644);
        out.push(GuestModule {
            name: module.name.clone(),
            path,
        });
    }
    eprintln!(
        "xtask vm: {} kernel module(s) for the guest ({:.1} MiB): {}{}{}",
        out.len(),
        bytes as f64 / (1024.0 * 1024.0),
        out.iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        if resolution.builtin.is_empty() {
            String::new()
        } else {
            format!("; built in: {}", resolution.builtin.join(" "))
        },
        if resolution.absent.is_empty() {
            String::new()
        } else {
            format!(
                "; optional, not in this kernel: {}",
                resolution.absent.join(" ")
            )
        }
    );
    Ok(out)
}

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Creates `runs/<unix ms>-<pid>-<n>` (`n` counts this process's runs, so
/// guests booted side by side never share a directory) and prunes all but
/// the newest runs.
fn new_run_dir(work_dir: &Path) -> Result<PathBuf> {
    static RUNS_STARTED: AtomicUsize = AtomicUsize::new(0);
    let runs = work_dir.join("runs");
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = RUNS_STARTED.fetch_add(1, Ordering::Relaxed);
    let dir = runs.join(format!("{ms}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&runs).with_context(|| format!("creating {}", runs.display()))?;
    // `create_dir`, not `create_dir_all`: fails rather than share a directory.
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Ok(entries) = std::fs::read_dir(&runs) {
        let mut old: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        // Names start with the creation time in ms, so sorting by name sorts by age.
        old.sort();
        let excess = old.len().saturating_sub(RUNS_KEPT);
        for path in old.into_iter().take(excess) {
            let _ = std::fs::remove_dir_all(path);
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cargo_test_command_runs_one_test_single_threaded() {
        let cmd = GuestCommand::cargo_test(Path::new("target/debug/deps/it-abc"), "tcp")
            .expect("valid path")
            .env("NETWATCH_TIER", "fentry");
        assert_eq!(cmd.name, "tcp");
        assert_eq!(
            cmd.argv,
            [
                "/bin/it-abc",
                "--exact",
                "tcp",
                "--test-threads=1",
                "--nocapture"
            ]
        );
        assert_eq!(
            cmd.env,
            [("NETWATCH_TIER".to_string(), "fentry".to_string())]
        );
        cmd.validate().expect("valid command");
    }

    #[test]
    fn validate_rejects_names_and_env_keys_the_script_cannot_carry() {
        assert!(GuestCommand::new("has space", ["x"]).validate().is_err());
        assert!(GuestCommand::new("quote\"", ["x"]).validate().is_err());
        assert!(GuestCommand::new("ok", Vec::<String>::new())
            .validate()
            .is_err());
        assert!(GuestCommand::new("ok", ["x"])
            .env("1BAD", "v")
            .validate()
            .is_err());
        assert!(GuestCommand::new("tests::tcp_v6", ["x"])
            .env("A_1", "it's")
            .validate()
            .is_ok());
    }
}
