//! A crate of a user's, outside the workspace, that depends on netwatch by
//! path: it must build with default features and without them, on the
//! shipped BPF object (no `NETWATCH_BPF_FROM_SOURCE`, so no BPF toolchain
//! is asked for), print host metrics as an unprivileged user, and, as
//! root, load the shipped eBPF programs. Without default features it must
//! depend on no BPF or libpcap crate, link no libpcap, refuse
//! `Mode::Ebpf` at run time naming the missing feature, and count with
//! `/proc` in `Mode::Auto`. A step of `cargo xtask test`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn root() -> PathBuf {
    crate::vm::workspace_root()
}

/// The user's program, part one: host metrics as JSON (every build).
const HOST: &str = r#"fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(arg) = std::env::args().nth(1) {
        return run(&arg);
    }
    let mut host = netwatch::host::Host::new();
    let snap: netwatch::wire::Snapshot = host.snapshot();
    println!("{}", serde_json::to_string(&snap)?);
    Ok(())
}
"#;

/// Part two with default features: `ebpf` prints the eBPF collector's
/// source, tier and whether its snapshot has process rows.
const RUN_DEFAULT: &str = r#"
fn run(_: &str) -> Result<(), Box<dyn std::error::Error>> {
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
    Ok(())
}
"#;

/// Part two without default features: `ebpf` prints how `Mode::Ebpf` is
/// refused (the error and its cause), `auto` the source `Mode::Auto`
/// opened and whether its snapshot has process rows.
const RUN_BARE: &str = r#"
fn run(arg: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mode = if arg == "ebpf" { netwatch::Mode::Ebpf } else { netwatch::Mode::Auto };
    match netwatch::Collector::builder().mode(mode).build() {
        Err(e @ netwatch::Error::Unsupported { .. }) => {
            let cause = std::error::Error::source(&e).map(|c| c.to_string());
            println!("unsupported: {e}: {}", cause.unwrap_or_default());
        }
        Err(e) => return Err(e.into()),
        Ok(c) => {
            let source = c.info().source.clone();
            let snap = c.finish();
            println!("{source} {}", snap.processes.is_some());
        }
    }
    Ok(())
}
"#;

/// What the featureless build must refuse `Mode::Ebpf` with.
const EBPF_REFUSED: &str = "unsupported: the ebpf source is not available here: this build of \
    netwatch has no ebpf source: it was compiled without the `ebpf` Cargo feature of \
    netwatch-user (enable it: `features = [\"ebpf\"]`)";

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
    // One target directory for every run: the dependencies build once.
    let target = root.join("target/scratch");
    let lock = root.join("Cargo.lock");
    for default_features in [true, false] {
        let run = if default_features {
            RUN_DEFAULT
        } else {
            RUN_BARE
        };
        std::fs::write(dir.join("src/main.rs"), format!("{HOST}{run}"))?;
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
        if default_features {
            ebpf_loads(&bin, interfaces)?;
        } else {
            bare(&dir, &target, &bin, interfaces)?;
        }
    }
    Ok(())
}

/// With default features: the shipped eBPF programs load (as root).
fn ebpf_loads(bin: &Path, interfaces: usize) -> Result<()> {
    let out = Command::new(bin)
        .arg("ebpf")
        .output()
        .context("running the scratch crate's eBPF collector")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.starts_with("ebpf ") || !text.trim_end().ends_with(" true") {
        bail!(
            "the scratch crate's eBPF collector (default features) did not run on the \
             shipped object: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!(
        "xtask test: a crate outside the workspace (default features) built on the shipped \
         BPF object; host metrics as nobody ({interfaces} interfaces), eBPF as root ({})",
        text.trim()
    );
    Ok(())
}

/// Without default features: no BPF or libpcap crate in the scratch
/// crate's dependencies, no libpcap linked, `Mode::Ebpf` refused naming
/// the feature, `Mode::Auto` counting with `/proc` (as root).
fn bare(dir: &Path, target: &Path, bin: &Path, interfaces: usize) -> Result<()> {
    let out = Command::new(env!("CARGO"))
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .args([
            "tree", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .context("running cargo tree in the scratch crate")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let found = crate::library::forbidden_in_tree(
        &String::from_utf8_lossy(&out.stdout),
        crate::library::NOT_WITHOUT_FEATURES,
    );
    if !found.is_empty() {
        bail!(
            "the scratch crate without netwatch's default features depends on {}",
            found.join(", ")
        );
    }
    // What the dynamic linker loads for it: no libpcap.
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd on the scratch crate")?;
    let libs = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !libs.contains("libc.so") {
        bail!("ldd could not list the scratch crate's libraries: {libs}");
    }
    if libs.contains("libpcap") {
        bail!("the scratch crate without default features links libpcap: {libs}");
    }
    let run = |arg: &str| -> Result<String> {
        let out = Command::new(bin)
            .arg(arg)
            .output()
            .with_context(|| format!("running the scratch crate's {arg} collector"))?;
        if !out.status.success() {
            bail!(
                "the scratch crate's {arg} collector failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let ebpf = run("ebpf")?;
    if ebpf != EBPF_REFUSED {
        bail!("the featureless scratch crate's Mode::Ebpf: {ebpf:?}, expected {EBPF_REFUSED:?}");
    }
    let auto = run("auto")?;
    if auto != "proc true" {
        bail!("the featureless scratch crate's Mode::Auto: {auto:?}, expected \"proc true\"");
    }
    eprintln!(
        "xtask test: a crate outside the workspace (default-features = false) built without \
         BPF, libpcap or agent crates and links no libpcap; host metrics as nobody \
         ({interfaces} interfaces); Mode::Ebpf refused naming the feature; Mode::Auto counts \
         with /proc"
    );
    Ok(())
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
