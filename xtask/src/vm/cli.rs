//! `cargo xtask vm`: ad-hoc runs of binaries in the guest. Only turns
//! command-line arguments into a [`run_in_vm`] call and prints the report.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::{run_in_vm, GuestCommand, KernelSource, VmOptions};

/// Boot Debian's stock cloud kernel under QEMU (TCG) and run a command in it.
///
/// Examples:
///   cargo xtask vm                                  # boot, print `uname -a`, power off
///   cargo xtask vm --bin target/debug/deps/it-123   # run the test binary with no arguments
///   cargo xtask vm --bin target/debug/deps/it-123 --env NETWATCH_TIER=fentry -- it-123 --exact tcp --nocapture
///   cargo xtask vm --net-faults --bin target/debug/deps/net_faults-123 -- net_faults-123 --exact some_test --nocapture
///   cargo xtask vm --module veth --bin /usr/sbin/ip -- ip link add a type veth peer name b
///   (argv[0] may be the binary's file name, its guest path /bin/it-123, or the host path given to --bin)
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct VmArgs {
    /// A binary to put in the guest as /bin/<file name>, with its shared libraries (repeatable).
    #[arg(long = "bin", value_name = "PATH")]
    pub bins: Vec<PathBuf>,
    /// An environment variable for the guest command (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Name of the guest command in the report (default: argv[0]'s file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Kill QEMU after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Set kernel.bpf_stats_enabled=1 in the guest.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Guest CPUs.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory_mib: u32,
    /// Boot this bzImage instead of Debian's cloud kernel.
    #[arg(long, value_name = "PATH", conflicts_with = "kernel_package")]
    pub kernel: Option<PathBuf>,
    /// Download this Debian kernel package instead of the current 6.1 cloud
    /// kernel; the meta-package `linux-image-6.12-cloud-amd64` stands for the
    /// newest 6.12 cloud kernel apt offers.
    #[arg(long, value_name = "PACKAGE")]
    pub kernel_package: Option<String>,
    /// A kernel module to load in the guest before the command, with the
    /// modules it needs (repeatable; a Debian kernel's module name, e.g.
    /// nf_tables).
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// What the network-fault tests need: the modules for veth, nftables
    /// (numgen, reject, ct) and netem, and the host's ip, tc and nft.
    #[arg(long)]
    pub net_faults: bool,
    /// Do not stream the guest console to stdout (it is still logged).
    #[arg(long)]
    pub quiet: bool,
    /// The command to run in the guest. Without one, each --bin runs with no
    /// arguments; with neither, `uname -a` runs.
    #[arg(last = true, value_name = "ARGV")]
    pub argv: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn base_name(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).to_string()
}

/// Runs `cargo xtask vm`.
pub fn run(args: VmArgs) -> Result<()> {
    let kernel = match (args.kernel, args.kernel_package) {
        (Some(image), _) => KernelSource::Image(image),
        (None, Some(package)) if package == super::DEBIAN_612_CLOUD_META => {
            KernelSource::DebianMeta(package)
        }
        (None, Some(package)) => KernelSource::DebianPackage(package),
        (None, None) => KernelSource::DebianCloud,
    };
    let mut modules = args.modules.clone();
    let mut bins = args.bins.clone();
    if args.net_faults {
        modules.extend(super::NET_FAULT_MODULES.iter().map(|m| m.to_string()));
        bins.extend(super::net_fault_tools()?);
    }
    let opts = VmOptions {
        kernel,
        modules,
        memory_mib: args.memory_mib,
        cpus: args.cpus,
        timeout: Duration::from_secs(args.timeout_secs),
        bpf_stats: args.bpf_stats,
        echo_console: !args.quiet,
        ..VmOptions::default()
    };
    let mut commands = if let Some(argv0) = args.argv.first() {
        let name = args.name.clone().unwrap_or_else(|| base_name(argv0));
        let mut argv = args.argv.clone();
        // A --bin named by its host path runs from its guest path.
        if let Some(bin) = args.bins.iter().find(|b| b.as_os_str() == argv0.as_str()) {
            argv[0] = super::guest_path(bin)?;
        }
        vec![GuestCommand::new(name, argv)]
    } else if !args.bins.is_empty() {
        args.bins
            .iter()
            .map(|bin| {
                let guest = super::guest_path(bin)?;
                Ok(GuestCommand::new(base_name(&guest), [guest]))
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        vec![GuestCommand::new("uname", ["uname", "-a"])]
    };
    for cmd in &mut commands {
        cmd.env.extend(args.env.iter().cloned());
    }
    let report = run_in_vm(&opts, &bins, &commands).context("running the guest")?;
    if args.quiet {
        // The console was not streamed: show what the failed commands printed.
        for cmd in report.commands.iter().filter(|c| !c.passed()) {
            println!("xtask vm: output of {}:\n{}", cmd.name, cmd.output);
        }
    }
    println!("{}", report.summary());
    if !report.is_success() {
        bail!(
            "{} problem(s) in the guest run (listed above); console log {}",
            report.failures.len(),
            report.console_log.display()
        );
    }
    Ok(())
}
