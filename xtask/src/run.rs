//! `cargo xtask run`: set up, build the release agent (BPF object
//! embedded), and run it as root with the live table. Arguments after `--`
//! go to the agent. The agent replaces this process, so the terminal (keys,
//! Ctrl-C) is its own.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::vm::workspace_root;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Arguments for netwatch-agent (default: `--output table`).
    #[arg(last = true)]
    pub agent_args: Vec<String>,
}

pub fn run(args: RunArgs) -> Result<()> {
    crate::setup::ensure()?;
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("xtask run: cargo build --release -p netwatch-user");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", "netwatch-user"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the agent failed ({status})");
    }
    let agent = root.join("target/release/netwatch-agent");
    let mut agent_args = args.agent_args;
    if !agent_args
        .iter()
        .any(|a| a == "--output" || a.starts_with("--output="))
    {
        agent_args.extend(["--output".to_string(), "table".to_string()]);
    }
    // A developer's run leaves no programs attached behind it (pinning is for
    // the deployed daemon, which continues from the kernel's counts).
    if !agent_args.iter().any(|a| a == "--no-pin") {
        agent_args.push("--no-pin".to_string());
    }
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if is_root {
        Command::new(&agent)
    } else {
        eprintln!("xtask run: the agent loads BPF programs; re-running it with sudo");
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=RUST_LOG").arg(&agent);
        c
    };
    cmd.args(&agent_args);
    eprintln!(
        "xtask run: {} (q quits the live view; Ctrl-C stops any output)",
        crate::host::command_line(&cmd)
    );
    let err = cmd.exec();
    Err(err).with_context(|| format!("starting {}", agent.display()))
}
