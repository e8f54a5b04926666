//! Installs and finds the peers the bench compares netwatch with, from the
//! registries only: Debian packages (nethogs, bpftrace, iperf3, bpftool,
//! libbpf-tools for tcptop) and crates.io (bandwhich, pinned, into
//! target/bench-tools). Says what it installs; a peer that cannot be
//! installed is reported, not faked.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::host::{ensure_tool, find_in_path};
use crate::vm::workspace_root;

/// bandwhich release that builds with this toolchain (rustc 1.95).
pub const BANDWHICH: &str = "0.23.1";

pub struct Peers {
    pub bandwhich: Option<PathBuf>,
    pub nethogs: Option<PathBuf>,
    pub bpftrace: Option<PathBuf>,
    pub tcptop: Option<PathBuf>,
    pub bpftool: Option<PathBuf>,
    pub notes: Vec<String>,
}

fn note<T>(notes: &mut Vec<String>, what: &str, r: Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(format!("{what}: not available ({e:#})"));
            None
        }
    }
}

fn bandwhich() -> Result<PathBuf> {
    let root = workspace_root().join("target/bench-tools");
    let bin = root.join("bin/bandwhich");
    let version = Command::new(&bin).arg("--version").output();
    if matches!(&version, Ok(o) if String::from_utf8_lossy(&o.stdout).contains(BANDWHICH)) {
        return Ok(bin);
    }
    eprintln!(
        "xtask bench: cargo install bandwhich@{BANDWHICH} --locked --root {}",
        root.display()
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "install",
            &format!("bandwhich@{BANDWHICH}"),
            "--locked",
            "--root",
        ])
        .arg(&root)
        .status()
        .context("running cargo install bandwhich")?;
    if !st.success() {
        bail!("cargo install bandwhich@{BANDWHICH} failed ({st})");
    }
    Ok(bin)
}

pub fn ensure() -> Peers {
    let mut notes = Vec::new();
    let nethogs = note(&mut notes, "nethogs", ensure_tool("nethogs", "nethogs"));
    let bpftrace = note(&mut notes, "bpftrace", ensure_tool("bpftrace", "bpftrace"));
    let _ = note(&mut notes, "iperf3", ensure_tool("iperf3", "iperf3"));
    let bpftool = note(&mut notes, "bpftool", ensure_tool("bpftool", "bpftool"));
    let tcptop = find_in_path("/usr/sbin/tcptop")
        .map(Ok)
        .unwrap_or_else(|| ensure_tool("/usr/sbin/tcptop", "libbpf-tools"));
    let tcptop = note(&mut notes, "tcptop (libbpf-tools)", tcptop);
    let bandwhich = note(&mut notes, "bandwhich", bandwhich());
    Peers {
        bandwhich,
        nethogs,
        bpftrace,
        tcptop,
        bpftool,
        notes,
    }
}
