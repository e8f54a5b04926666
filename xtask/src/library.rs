//! The `netwatch` crate as a library, checked the way a user meets it (a
//! step of `cargo xtask test`): the shipped BPF object matches its sources,
//! the API docs build without a warning, the examples run (the quick start as root, the host metrics and the
//! hand-fed detectors as nobody),
//! `cargo package` builds the crates from their tarballs, and a crate
//! outside the workspace builds against netwatch with and without its
//! default features.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn root() -> PathBuf {
    crate::vm::workspace_root()
}

/// Every check, with how long each took.
pub fn checks() -> Result<Vec<(String, Duration)>> {
    let mut timings = Vec::new();
    let mut timed = |name: &str, f: &dyn Fn() -> Result<()>| -> Result<()> {
        eprintln!("\nxtask test: {name}");
        let t = Instant::now();
        f().with_context(|| name.to_string())?;
        timings.push((name.to_string(), t.elapsed()));
        Ok(())
    };
    timed("shipped BPF object", &crate::bpf_object::check)?;
    timed("API docs", &api_docs)?;
    timed("examples", &examples)?;
    timed("cargo package", &package)?;
    timed("crate outside the workspace", &crate::scratch::check)?;
    Ok(timings)
}

/// `cargo doc` of the public API (the library's doc tests run with the
/// host tests): every public item documented (`#![warn(missing_docs)]`),
/// no broken or private link; any warning fails the step.
fn api_docs() -> Result<()> {
    let status = Command::new("cargo")
        .current_dir(root())
        .args([
            "doc",
            "-p",
            "netwatch-user",
            "-p",
            "netwatch-common",
            "--no-deps",
        ])
        .env("RUSTDOCFLAGS", "-D warnings")
        .status()
        .context("cargo doc")?;
    if !status.success() {
        bail!("cargo doc of the public API has warnings (missing docs, broken links): see above");
    }
    Ok(())
}

/// Build the examples, then run the library ones: each must exit 0, and
/// the quick start must print a Snapshot with process rows.
fn examples() -> Result<()> {
    let root = root();
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args(["build", "-p", "netwatch-user", "--examples"])
        .status()
        .context("cargo build --examples")?;
    if !status.success() {
        bail!("the examples did not build");
    }
    let bin = |name: &str| root.join("target/debug/examples").join(name);
    // The quick start, as root: one Snapshot as JSON with process rows.
    let out = Command::new(bin("snapshot_json"))
        .output()
        .context("running examples/snapshot_json")?;
    if !out.status.success() {
        bail!(
            "examples/snapshot_json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let snap: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("snapshot_json printed no JSON")?;
    if !snap["processes"].is_array() || snap["collector"]["source"] != "ebpf" {
        bail!("snapshot_json's snapshot has no eBPF process rows: {snap}");
    }
    // Host metrics, as nobody.
    let out = crate::test::as_nobody(&bin("host_metrics"))
        .output()
        .context("running examples/host_metrics as nobody")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.contains("established TCP connections:") {
        bail!(
            "examples/host_metrics failed as nobody: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The detectors fed by hand, as nobody: the alerts it makes up.
    let out = crate::test::as_nobody(&bin("intel_events"))
        .output()
        .context("running examples/intel_events as nobody")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success()
        || !text.contains("raised: Port scan from 198.51.100.7")
        || !text.contains("2 alerts raised, 1 still active")
    {
        bail!(
            "examples/intel_events failed as nobody: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The others, a few ticks each, as root.
    for (name, ticks) in [
        ("snapshot_stream", "2"),
        ("alert_thresholds", "2"),
        ("tokio_ebpf", "1"),
    ] {
        let out = Command::new(bin(name))
            .env("NETWATCH_EXAMPLE_TICKS", ticks)
            .output()
            .with_context(|| format!("running examples/{name}"))?;
        if !out.status.success() {
            bail!(
                "examples/{name} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    eprintln!(
        "xtask test: examples ran: snapshot_json (eBPF, as root), host_metrics and \
         intel_events (as nobody), snapshot_stream, alert_thresholds, tokio_ebpf"
    );
    Ok(())
}

/// `cargo package` of the crates meant for crates.io: each is built from
/// its own tarball, which must hold everything it needs (the BPF object).
fn package() -> Result<()> {
    let status = Command::new(env!("CARGO"))
        .current_dir(root())
        .args([
            "package",
            "-p",
            "netwatch-common",
            "-p",
            "netwatch-user",
            "--allow-dirty",
        ])
        .status()
        .context("cargo package")?;
    if !status.success() {
        bail!("cargo package failed");
    }
    Ok(())
}
