//! `cargo xtask bench`: measurements, not tests. Today: the BPF programs'
//! per-event cost from kernel statistics (`run_time_ns / run_cnt`), for the
//! host's tier and, in the QEMU guest, for the fentry and kprobe tiers, all
//! under the same fixed loopback workload. Guest figures run under software
//! emulation: compare tiers with each other there, not with the host.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::vm::{self, GuestCommand, VmOptions};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Send/receive calls per protocol in the workload.
    #[arg(long, default_value_t = 50_000)]
    pub calls: u32,
    /// Skip the guest tiers.
    #[arg(long)]
    pub skip_vm: bool,
}

/// Build the `bpf_cost` example (release) and return its path.
fn bpf_cost_binary() -> Result<PathBuf> {
    crate::host::cargo_executable(
        &[
            "build",
            "--release",
            "-p",
            "netwatch-user",
            "--example",
            "bpf_cost",
        ],
        "bpf_cost",
    )
}

pub fn run(args: BenchArgs) -> Result<()> {
    crate::setup::ensure()?;
    let bin = bpf_cost_binary()?;
    let calls = args.calls.to_string();
    eprintln!("xtask bench: host kernel, best tier");
    let status = Command::new(&bin)
        .args(["auto", &calls])
        .status()
        .context("running bpf_cost")?;
    if !status.success() {
        bail!("bpf_cost failed on the host ({status})");
    }
    if args.skip_vm {
        return Ok(());
    }
    let guest_bin = vm::guest_path(&bin)?;
    let commands: Vec<GuestCommand> = ["fentry", "kprobe"]
        .iter()
        .map(|t| {
            GuestCommand::new(
                format!("bpf_cost_{t}"),
                [guest_bin.clone(), t.to_string(), calls.clone()],
            )
        })
        .collect();
    let opts = VmOptions {
        timeout: Duration::from_secs(900),
        ..VmOptions::default()
    };
    let report = vm::run_in_vm(&opts, &[bin], &commands)?;
    report.ensure_success()
}
