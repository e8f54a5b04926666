//! The BPF object the library embeds (`OUT_DIR/netwatch`), from one of:
//!
//! 1. **Source**, inside this workspace (`.cargo/config.toml` sets
//!    `NETWATCH_BPF_FROM_SOURCE=1`): the programs of `../netwatch-ebpf`
//!    (target bpfel-unknown-none) are built with aya-build, so every test
//!    loads what the sources say. It picks the toolchain that can build
//!    `core` for BPF: `$NETWATCH_BPF_TOOLCHAIN` if set, else the
//!    `netwatch-bpf` toolchain that `cargo xtask setup` links (Debian's
//!    rustc-web + rust-web-src), else rustup's `nightly`.
//! 2. **The shipped object**, `bpf/netwatch.bpf.o`, everywhere else: a
//!    crate that depends on netwatch (from crates.io, git or a path) builds
//!    with a stable compiler and no `bpf-linker`. `cargo xtask bpf-object`
//!    writes it; `cargo xtask test` checks it matches the sources.
//! 3. **Nothing** (an empty object, reported at load time as "built without
//!    its BPF object") on docs.rs (`DOCS_RS`), off Linux, or with
//!    `AYA_BUILD_SKIP=1`.
//!
//! Only with the `ebpf` feature (`CARGO_FEATURE_EBPF`): without it the
//! library holds no BPF source, so nothing is embedded and nothing of the
//! above is looked at (no toolchain, no shipped object needed).

use std::{env, path::PathBuf};

#[cfg(feature = "ebpf")]
use std::process::Command;

#[cfg(feature = "ebpf")]
use aya_build::{Package, Toolchain};

/// The rustup name `cargo xtask setup` gives Debian's toolchain.
#[cfg(feature = "ebpf")]
const LINKED_TOOLCHAIN: &str = "netwatch-bpf";

#[cfg(feature = "ebpf")]
fn rustup_has(toolchain: &str) -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some(toolchain))
        })
        .unwrap_or(false)
}

/// The object shipped with the crate (see the module docs).
const SHIPPED: &str = "bpf/netwatch.bpf.o";

fn main() -> anyhow::Result<()> {
    if env::var_os("CARGO_FEATURE_EBPF").is_none() {
        // No eBPF source in this build: no object to embed.
        return Ok(());
    }
    embed()
}

/// Put the BPF object at `OUT_DIR/netwatch` (see the module docs).
fn embed() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=NETWATCH_BPF_TOOLCHAIN");
    println!("cargo:rerun-if-env-changed=NETWATCH_BPF_FROM_SOURCE");
    println!("cargo:rerun-if-env-changed=DOCS_RS");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("netwatch");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") || env::var_os("DOCS_RS").is_some()
    {
        // Only Linux loads BPF; docs.rs builds documentation only.
        std::fs::write(&object, [])?;
        return Ok(());
    }
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // The loader reports "built without a BPF object" at run time.
        std::fs::write(&object, [])?;
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../netwatch-ebpf");
    let from_source = env::var("NETWATCH_BPF_FROM_SOURCE").is_ok_and(|v| v == "1")
        && ebpf_dir.join("Cargo.toml").exists();
    if !from_source {
        if !skip {
            let shipped = manifest_dir.join(SHIPPED);
            println!("cargo:rerun-if-changed={}", shipped.display());
            std::fs::copy(&shipped, &object).map_err(|e| {
                anyhow::anyhow!(
                    "copying the shipped BPF object {}: {e} (a netwatch checkout: run \
                     `cargo xtask bpf-object`, or build from source with \
                     NETWATCH_BPF_FROM_SOURCE=1)",
                    shipped.display()
                )
            })?;
        }
        return Ok(());
    }
    build_from_source(&ebpf_dir, &object, skip)
}

/// The programs of `../netwatch-ebpf` built with aya-build into `object`.
#[cfg(feature = "ebpf")]
fn build_from_source(
    ebpf_dir: &std::path::Path,
    object: &std::path::Path,
    skip: bool,
) -> anyhow::Result<()> {
    let chosen = env::var("NETWATCH_BPF_TOOLCHAIN").ok();
    let toolchain = match chosen.as_deref() {
        Some(name) => Toolchain::Custom(name),
        None if rustup_has(LINKED_TOOLCHAIN) => Toolchain::Custom(LINKED_TOOLCHAIN),
        None => Toolchain::Nightly,
    };
    if matches!(toolchain, Toolchain::Custom(LINKED_TOOLCHAIN)) {
        // Debian's rustc is a stable compiler: let it take -Z build-std.
        env::set_var("RUSTC_BOOTSTRAP", "1");
    }
    // bpf-linker is installed into cargo's bin dir by `cargo xtask setup`.
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo").into_os_string()))
    {
        let bin = PathBuf::from(home).join("bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        if !paths.contains(&bin) {
            paths.push(bin);
            env::set_var("PATH", env::join_paths(paths)?);
        }
    }

    // aya-build relays the inner cargo's stderr as `cargo:warning` lines;
    // keep its progress lines out so only real diagnostics surface.
    env::set_var("CARGO_TERM_QUIET", "true");

    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "netwatch-ebpf",
            root_dir,
            ..Default::default()
        }],
        toolchain,
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the BPF programs failed: {e:#}\n\
             The BPF toolchain may be missing: run `cargo xtask setup` \
             (or set AYA_BUILD_SKIP=1 to build the agent without BPF)."
        )
    })?;
    if !skip {
        strip_debug(object);
    }
    Ok(())
}

/// Without the `ebpf` feature `main` returns before `embed` is called;
/// this keeps the build script free of aya-build (an optional
/// build-dependency of that feature).
#[cfg(not(feature = "ebpf"))]
fn build_from_source(_: &std::path::Path, _: &std::path::Path, _: bool) -> anyhow::Result<()> {
    anyhow::bail!("the BPF programs are built from source only with the `ebpf` feature")
}

/// Drop the object's DWARF sections (`.debug_*`, four fifths of its size)
/// before it is embedded: the loader needs only the programs, maps and
/// BTF (`.BTF`, `.BTF.ext`, which stay), and every embedded byte is paged
/// into the agent when it parses the object, so it shows in its resident
/// memory for as long as it runs. Uses the `llvm-objcopy` of the LLVM that
/// `cargo xtask setup` installs for bpf-linker; where there is none the
/// object is embedded as built, which loads the same.
#[cfg(feature = "ebpf")]
fn strip_debug(object: &std::path::Path) {
    let stripped = object.with_extension("stripped");
    for tool in ["/usr/lib/llvm-22/bin/llvm-objcopy", "llvm-objcopy"] {
        let ok = Command::new(tool)
            .arg("--strip-debug")
            .arg(object)
            .arg(&stripped)
            .status()
            .is_ok_and(|s| s.success());
        if ok && std::fs::rename(&stripped, object).is_ok() {
            return;
        }
    }
    let _ = std::fs::remove_file(&stripped);
}
