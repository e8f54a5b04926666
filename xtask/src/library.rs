//! The `netwatch` crate as a library, checked the way a user meets it (a
//! step of `cargo xtask test`): the shipped BPF object matches its sources,
//! the feature combinations an embedder picks build warning-free (wire
//! types only, host metrics only, default, every feature) and the
//! featureless one pulls in no BPF, libpcap or agent crate, the API docs
//! build without a warning, the examples run (the quick start as root, the
//! host metrics and the hand-fed detectors as nobody), `cargo
//! package` builds the crates from their tarballs, and a crate outside the
//! workspace builds against netwatch with and without its default
//! features.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

fn root() -> PathBuf {
    crate::vm::workspace_root()
}

/// The checks, by the name `cargo xtask library NAME...` selects them.
type Check = (&'static str, &'static str, fn() -> Result<()>);

const CHECKS: &[Check] = &[
    ("bpf-object", "shipped BPF object", crate::bpf_object::check),
    ("features", "feature combinations", features),
    ("docs", "API docs", api_docs),
    ("examples", "examples", examples),
    ("package", "cargo package", package),
    (
        "scratch",
        "crate outside the workspace",
        crate::scratch::check,
    ),
];

/// Every check, with how long each took.
pub fn checks() -> Result<Vec<(String, Duration)>> {
    checks_named(&[])
}

/// The checks named in `only` (`bpf-object`, `features`, `docs`, `examples`,
/// `package`, `scratch`), or every one when it is empty, with how long
/// each took.
pub fn checks_named(only: &[String]) -> Result<Vec<(String, Duration)>> {
    if let Some(unknown) = only.iter().find(|n| !CHECKS.iter().any(|c| c.0 == *n)) {
        let names: Vec<&str> = CHECKS.iter().map(|c| c.0).collect();
        bail!(
            "no library check named {unknown:?}; the checks are {}",
            names.join(", ")
        );
    }
    let mut timings = Vec::new();
    for (key, name, f) in CHECKS {
        if !only.is_empty() && !only.iter().any(|n| n == key) {
            continue;
        }
        eprintln!("\nxtask test: {name}");
        let t = Instant::now();
        f().with_context(|| name.to_string())?;
        timings.push((name.to_string(), t.elapsed()));
    }
    Ok(timings)
}

/// A feature combination of the library crates that CI builds.
struct Combination {
    /// What an embedder gets with it.
    name: &'static str,
    /// The cargo arguments selecting the package and its features.
    args: &'static [&'static str],
    /// Also `cargo build` it (the featureless builds an embedder links);
    /// the others are built by the rest of the suite.
    build: bool,
}

/// The combinations that matter: (a) the wire types alone, (b) the host
/// collectors alone (no feature: no BPF toolchain, no libpcap, no agent
/// crates), (c) the default (the agent's), (d) every feature (`fuzzing`
/// included: it builds on stable, it only makes the parsers public).
const COMBINATIONS: &[Combination] = &[
    Combination {
        name: "wire types only (netwatch-common, feature wire)",
        args: &[
            "-p",
            "netwatch-common",
            "--no-default-features",
            "--features",
            "wire",
        ],
        build: true,
    },
    Combination {
        name: "host collectors only (netwatch-user, no features)",
        args: &["-p", "netwatch-user", "--no-default-features"],
        build: true,
    },
    Combination {
        name: "default (netwatch-user)",
        args: &["-p", "netwatch-user"],
        build: false,
    },
    Combination {
        name: "every feature (netwatch-user --all-features)",
        args: &["-p", "netwatch-user", "--all-features"],
        build: false,
    },
];

/// The crates a build of netwatch-user without features must not depend
/// on: the BPF loader, libpcap's binding, the agent's own.
pub const NOT_WITHOUT_FEATURES: &[&str] = &[
    "aya",
    "aya-log",
    "aya-build",
    "btf-rs",
    "pcap",
    "clap",
    "tokio",
    "hyper",
    "ratatui",
    "crossterm",
    "prometheus-client",
    "ureq",
    "toml",
    "env_logger",
];

/// Each of [`COMBINATIONS`] passes clippy with `-D warnings` (and builds,
/// where an embedder links it), and the featureless build's dependency
/// tree holds none of [`NOT_WITHOUT_FEATURES`].
fn features() -> Result<()> {
    let root = root();
    let cargo = |args: &[&str]| -> Result<()> {
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args(args)
            .status()
            .with_context(|| format!("running cargo {}", args.join(" ")))?;
        if !status.success() {
            bail!("cargo {} failed", args.join(" "));
        }
        Ok(())
    };
    for c in COMBINATIONS {
        eprintln!("xtask test: features: {}", c.name);
        if c.build {
            cargo(&[&["build"], c.args].concat())?;
        }
        cargo(&[&["clippy"], c.args, &["--", "-D", "warnings"]].concat())?;
    }
    // What the featureless build links: its normal dependencies, every
    // platform's (a macOS or Linux embedder alike).
    let out = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "tree",
            "-p",
            "netwatch-user",
            "--no-default-features",
            "-e",
            "normal",
            "--target",
            "all",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let found = forbidden_in_tree(&tree, NOT_WITHOUT_FEATURES);
    if !found.is_empty() {
        bail!(
            "netwatch-user without features depends on {}: a crate only a feature may pull in",
            found.join(", ")
        );
    }
    eprintln!(
        "xtask test: features: the featureless netwatch-user depends on none of {}",
        NOT_WITHOUT_FEATURES.join(", ")
    );
    Ok(())
}

/// The crates of `forbidden` that `tree` (`cargo tree --prefix none
/// --format {p}`: one `name vX.Y.Z [...]` a line) holds, each once, in the
/// order of `forbidden`.
pub fn forbidden_in_tree(tree: &str, forbidden: &[&str]) -> Vec<String> {
    forbidden
        .iter()
        .filter(|name| {
            tree.lines()
                .any(|l| l.split_whitespace().next() == Some(**name))
        })
        .map(|name| name.to_string())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whole crate names only: `aya-obj` is not `aya`, `pcap-sys` is not
    /// `pcap`; each name is reported once however often it appears.
    #[test]
    fn forbidden_crates_are_found_by_their_whole_name() {
        let tree = "netwatch-user v0.1.0 (/w/netwatch-user)\n\
                    aya-obj v0.3.0\n\
                    pcap-sys v1.0.0\n\
                    tokio v1.54.1\n\
                    tokio v1.54.1 (*)\n\
                    procfs v0.17.0\n";
        assert_eq!(
            forbidden_in_tree(tree, &["aya", "pcap", "tokio", "procfs"]),
            vec!["tokio".to_string(), "procfs".to_string()]
        );
        assert_eq!(
            forbidden_in_tree(tree, &["aya", "clap"]),
            Vec::<String>::new()
        );
    }
}
