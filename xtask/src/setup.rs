//! `cargo xtask setup`: installs what building and testing netwatch needs,
//! from Debian's packages and crates.io only, and says what it installs.
//! Idempotent: each step checks first and does nothing when satisfied.
//! A developer machine with the standard aya toolchain (rustup nightly with
//! `rust-src`, bpf-linker on PATH) keeps using it.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::host::{apt_install, find_in_path, run_captured};

/// The rustup name given to Debian's toolchain (see netwatch-user/build.rs).
pub const LINKED_TOOLCHAIN: &str = "netwatch-bpf";
/// bpf-linker release that pairs with Debian's LLVM 22 (see shared TOOLCHAIN.md).
const BPF_LINKER: &str = "bpf-linker@0.13.0";

/// Packages the agent and its tests need whatever the BPF toolchain:
/// libpcap for the pcap source, iproute2 for `ss` and `ip netns`, QEMU +
/// busybox + cpio for the guest kernel tests; and the tools the tests drive:
/// bpftool (incompatible pins), tmux (the live view), curl (/metrics
/// scrapes), openssl (a TLS peer), util-linux's setpriv (least privilege),
/// bindfs (a FUSE filesystem the hung-mount test stops), nftables (the
/// network-fault tests' rules, on the host and, copied, in the guests),
/// kmod's depmod (indexes a guest kernel's modules), xz and zstd
/// (decompress them).
/// (`systemd-analyze verify` of the unit runs where systemd is installed.)
const HOST_PACKAGES: &[&str] = &[
    "libpcap-dev",
    "iproute2",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "gzip",
    "bpftool",
    "tmux",
    "curl",
    "openssl",
    "util-linux",
    "bindfs",
    "nftables",
    "kmod",
    "xz-utils",
    "zstd",
    "binutils",
];
/// Debian's rustc/cargo with their library source and clippy, and the LLVM
/// bpf-linker links against.
const DEBIAN_BPF_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "rust-web-clippy",
    "llvm-22-dev",
];

/// The cargo-fuzz release the fuzz targets (`cargo xtask fuzz`, and the
/// corpus run of `cargo xtask test`) are built with, from crates.io.
pub const CARGO_FUZZ: &str = "cargo-fuzz@0.13.2";

/// Install cargo-fuzz from crates.io unless `cargo fuzz` already runs.
pub fn ensure_cargo_fuzz() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let present = Command::new(&cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing {CARGO_FUZZ} from crates.io (cargo install --locked {CARGO_FUZZ}, about a minute)"
    );
    let status = Command::new(&cargo)
        .args(["install", "--locked", CARGO_FUZZ])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install {CARGO_FUZZ} failed ({status}); see the output above");
    }
    Ok(())
}

/// Which toolchain builds the BPF crate (and the macOS type-check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BpfToolchain {
    /// rustup's nightly with rust-src (the standard aya setup).
    Nightly,
    /// Debian's rustc-web, linked into rustup as [`LINKED_TOOLCHAIN`].
    Debian,
}

impl BpfToolchain {
    /// The name for `rustup run`.
    pub fn rustup_name(self) -> &'static str {
        match self {
            BpfToolchain::Nightly => "nightly",
            BpfToolchain::Debian => LINKED_TOOLCHAIN,
        }
    }

    /// `rustup run <toolchain> cargo`, with `-Z` flags allowed.
    pub fn cargo(self) -> Command {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", self.rustup_name(), "cargo"]);
        if self == BpfToolchain::Debian {
            cmd.env("RUSTC_BOOTSTRAP", "1");
        }
        cmd.env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        cmd
    }
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Install the Debian packages of `wanted` that are missing.
fn ensure_packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask setup: installing Debian packages: {}",
        missing.join(" ")
    );
    apt_install(&missing)
}

fn rustup_toolchains() -> String {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn nightly_has_rust_src() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker() -> Option<PathBuf> {
    find_in_path("bpf-linker").or_else(|| {
        let p = cargo_bin_dir().join("bpf-linker");
        p.exists().then_some(p)
    })
}

/// The toolchain already present, if any, without installing anything.
pub fn detect() -> Option<BpfToolchain> {
    let list = rustup_toolchains();
    let linked = list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(LINKED_TOOLCHAIN));
    if linked && dpkg_installed("rust-web-src") && bpf_linker().is_some() {
        return Some(BpfToolchain::Debian);
    }
    if !linked && nightly_has_rust_src() && bpf_linker().is_some() {
        return Some(BpfToolchain::Nightly);
    }
    None
}

/// Make sure everything is installed; returns the BPF toolchain to use.
pub fn ensure() -> Result<BpfToolchain> {
    if find_in_path("rustup").is_none() {
        bail!("rustup not found: netwatch builds its userspace with rustup's stable toolchain");
    }
    ensure_packages(HOST_PACKAGES)?;
    ensure_cargo_fuzz()?;
    if detect() == Some(BpfToolchain::Nightly) {
        eprintln!("xtask setup: using rustup nightly (rust-src) and bpf-linker from PATH");
        return Ok(BpfToolchain::Nightly);
    }
    ensure_packages(DEBIAN_BPF_PACKAGES)?;
    let list = rustup_toolchains();
    if !list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(LINKED_TOOLCHAIN))
    {
        eprintln!("xtask setup: registering Debian's rustc-web with rustup as `{LINKED_TOOLCHAIN}` (rustup toolchain link {LINKED_TOOLCHAIN} /usr)");
        run_captured(
            Command::new("rustup").args(["toolchain", "link", LINKED_TOOLCHAIN, "/usr"]),
            "linking Debian's toolchain",
        )?;
    }
    if bpf_linker().is_none() {
        eprintln!("xtask setup: building {BPF_LINKER} against Debian's LLVM 22 (about a minute)");
        let status = Command::new("/usr/bin/cargo")
            .args([
                "install",
                "--locked",
                BPF_LINKER,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("RUSTC", "/usr/bin/rustc")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .status()
            .context("running Debian's cargo to install bpf-linker")?;
        if !status.success() {
            bail!("cargo install {BPF_LINKER} failed ({status}); see the output above");
        }
    }
    Ok(BpfToolchain::Debian)
}
