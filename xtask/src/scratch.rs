//! A crate of a user's, outside the workspace, that depends on netwatch by
//! path: it must build with default features and without them, on the
//! shipped BPF object (no `NETWATCH_BPF_FROM_SOURCE`, so no BPF toolchain
//! is asked for), print host metrics as an unprivileged user, and, as
//! root, load the shipped eBPF programs. A step of `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn root() -> PathBuf {
    crate::vm::workspace_root()
}

/// The user's program: host metrics as JSON, or with `ebpf` the eBPF
/// collector's first snapshot's source and tier.
const MAIN: &str = r#"fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("ebpf") {
        let c = netwatch::Collector::builder()
            .mode(netwatch::Mode::Ebpf)
            .dns_capture(false)
            .build()?;
        let info = c.info().clone();
        let snap = c.finish();
        println!(
            "{} {} {}",
            info.source,
            info.ebpf_tier.unwrap_or_default(),
            snap.processes.is_some()
        );
        return Ok(());
    }
    let mut host = netwatch::host::Host::new();
    let snap: netwatch::wire::Snapshot = host.snapshot();
    println!("{}", serde_json::to_string(&snap)?);
    Ok(())
}
"#;

fn manifest(netwatch: &Path, default_features: bool) -> String {
    format!(
        "[package]\nname = \"netwatch-scratch\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\n\
         netwatch = {{ package = \"netwatch-user\", path = \"{}\", default-features = {default_features} }}\n\
         serde_json = \"1\"\n\n[workspace]\n",
        netwatch.display()
    )
}

/// Build and run the scratch crate both ways.
pub fn check() -> Result<()> {
    let root = root();
    let dir = std::env::temp_dir().join(format!("netwatch-scratch-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("src/main.rs"), MAIN)?;
    // One target directory for every run: the dependencies build once.
    let target = root.join("target/scratch");
    let lock = root.join("Cargo.lock");
    for default_features in [true, false] {
        std::fs::write(
            dir.join("Cargo.toml"),
            manifest(&root.join("netwatch-user"), default_features),
        )?;
        // The workspace's lock file: the same versions the tests use, and
        // no registry lookups beyond them.
        std::fs::copy(&lock, dir.join("Cargo.lock"))?;
        let status = Command::new(env!("CARGO"))
            .current_dir(&dir)
            .env_remove("NETWATCH_BPF_FROM_SOURCE")
            .env_remove("NETWATCH_BPF_TOOLCHAIN")
            .env("CARGO_TARGET_DIR", &target)
            .args(["build", "--quiet"])
            .status()
            .context("running cargo build in the scratch crate")?;
        if !status.success() {
            bail!("the scratch crate (default-features = {default_features}) did not build");
        }
        let bin = target.join("debug/netwatch-scratch");
        // Host metrics as nobody.
        let out = crate::test::as_nobody(&bin)
            .output()
            .context("running the scratch crate as nobody")?;
        if !out.status.success() {
            bail!(
                "the scratch crate failed as nobody: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .context("the scratch crate's output is not JSON")?;
        let interfaces = v["interfaces"].as_array().map_or(0, Vec::len);
        if interfaces == 0 || !v["system"].is_object() || v["processes"] != serde_json::Value::Null
        {
            bail!("the scratch crate's host snapshot lacks interfaces or system: {v}");
        }
        // The shipped eBPF programs load (as root).
        let out = Command::new(&bin)
            .arg("ebpf")
            .output()
            .context("running the scratch crate's eBPF collector")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success()
            || !text.starts_with("ebpf ")
            || !text.trim_end().ends_with(" true")
        {
            bail!(
                "the scratch crate's eBPF collector (default-features = {default_features}) \
                 did not run on the shipped object: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        eprintln!(
            "xtask test: a crate outside the workspace (default-features = {default_features}) \
             built on the shipped BPF object; host metrics as nobody ({interfaces} interfaces), \
             eBPF as root ({})",
            text.trim()
        );
    }
    Ok(())
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
