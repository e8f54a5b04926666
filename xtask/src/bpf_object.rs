//! The BPF object that ships inside the `netwatch` crate
//! (`netwatch-user/bpf/netwatch.bpf.o`), so that a program depending on
//! the crate builds with a stable compiler and no `bpf-linker`
//! (`netwatch-user/build.rs` embeds it unless the workspace's
//! `.cargo/config.toml` asks for a build from source).
//!
//! - `cargo xtask bpf-object` builds the programs from `netwatch-ebpf`
//!   (through the build script, exactly as the tests load them), copies the
//!   object there and records, beside it, the SHA-256 of the sources it was
//!   built from and of the object itself.
//! - [`check`] (a step of `cargo xtask test`) fails when the sources
//!   changed since the object was recorded, when the object is not the one
//!   recorded, or when its programs and maps differ, byte for byte, from
//!   the ones the sources build now. Only the sections that carry file
//!   paths (BTF line info, DWARF, the string tables) are left out of that
//!   comparison: they name the checkout's directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The shipped object, relative to the workspace root.
pub const OBJECT: &str = "netwatch-user/bpf/netwatch.bpf.o";
/// What it was built from (see [`record`]).
pub const RECORD: &str = "netwatch-user/bpf/netwatch.bpf.o.sources";

fn root() -> PathBuf {
    crate::vm::workspace_root()
}

/// The files the BPF object is compiled from: the BPF crate and the kernel
/// half of `netwatch-common` (its `wire` module is user space only).
fn inputs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![
        root.join("netwatch-ebpf/Cargo.toml"),
        root.join("netwatch-common/Cargo.toml"),
        root.join("netwatch-common/src/lib.rs"),
    ];
    let mut dirs = vec![root.join("netwatch-ebpf/src")];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// SHA-256 over each input's path (relative to the root) and contents.
pub fn sources_sha256(root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for f in inputs(root)? {
        let rel = f.strip_prefix(root).unwrap_or(&f);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

/// Build the library (and so the BPF programs, from source) and return the
/// object its build script embedded.
pub fn fresh_object(root: &Path) -> Result<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .env("NETWATCH_BPF_FROM_SOURCE", "1")
        .args([
            "build",
            "-p",
            "netwatch-user",
            "--lib",
            "--message-format=json",
        ])
        .output()
        .context("running cargo build -p netwatch-user --lib")?;
    if !out.status.success() {
        bail!(
            "cargo build -p netwatch-user --lib failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let ours = v["package_id"]
            .as_str()
            .is_some_and(|p| p.contains("netwatch-user"));
        if v["reason"] == "build-script-executed" && ours {
            if let Some(dir) = v["out_dir"].as_str() {
                let object = Path::new(dir).join("netwatch");
                if std::fs::metadata(&object).is_ok_and(|m| m.len() > 0) {
                    return Ok(object);
                }
                bail!(
                    "{} is empty: the build script did not build the BPF programs \
                     (is AYA_BUILD_SKIP set, or the BPF toolchain missing? cargo xtask setup)",
                    object.display()
                );
            }
        }
    }
    bail!("cargo build did not report netwatch-user's build script output directory")
}

/// `cargo xtask bpf-object`: rebuild and record the shipped object.
pub fn update() -> Result<()> {
    let root = root();
    let fresh = fresh_object(&root)?;
    let object = root.join(OBJECT);
    std::fs::create_dir_all(object.parent().expect("has a parent"))?;
    std::fs::copy(&fresh, &object)
        .with_context(|| format!("copying {} to {}", fresh.display(), object.display()))?;
    let record = format!(
        "# {OBJECT}: written by `cargo xtask bpf-object`; checked by `cargo xtask test`.\n\
         sources-sha256 {}\n\
         object-sha256 {}\n",
        sources_sha256(&root)?,
        file_sha256(&object)?
    );
    std::fs::write(root.join(RECORD), record)?;
    eprintln!(
        "xtask bpf-object: {} ({} bytes) and {} written",
        OBJECT,
        std::fs::metadata(&object)?.len(),
        RECORD
    );
    Ok(())
}

fn recorded(record: &str, key: &str) -> Option<String> {
    record.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// The check `cargo xtask test` runs: the shipped object is the one
/// recorded, recorded from today's sources, and its programs and maps are
/// what those sources build here.
pub fn check() -> Result<()> {
    let root = root();
    let fix = "run `cargo xtask bpf-object` and commit netwatch-user/bpf/";
    let record = std::fs::read_to_string(root.join(RECORD))
        .with_context(|| format!("reading {RECORD} ({fix})"))?;
    let want_sources = recorded(&record, "sources-sha256")
        .with_context(|| format!("{RECORD} has no sources-sha256 line ({fix})"))?;
    let want_object = recorded(&record, "object-sha256")
        .with_context(|| format!("{RECORD} has no object-sha256 line ({fix})"))?;
    let sources = sources_sha256(&root)?;
    if sources != want_sources {
        bail!(
            "the BPF sources changed since the shipped object was built \
             (sources {sources}, recorded {want_sources}): {fix}"
        );
    }
    let object = root.join(OBJECT);
    let have_object = file_sha256(&object)?;
    if have_object != want_object {
        bail!("{OBJECT} is not the object recorded in {RECORD} ({have_object} != {want_object}): {fix}");
    }
    let fresh = fresh_object(&root)?;
    let shipped = std::fs::read(&object)?;
    let built = std::fs::read(&fresh)?;
    let a = sections(&shipped).with_context(|| format!("reading {OBJECT} as ELF"))?;
    let b = sections(&built).with_context(|| format!("reading {} as ELF", fresh.display()))?;
    let names = |s: &[(String, &[u8])]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    if names(&a) != names(&b) {
        bail!(
            "{OBJECT} and a build from source have different sections: {:?} vs {:?} ({fix})",
            names(&a),
            names(&b)
        );
    }
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        if x != y {
            bail!("section {name} of {OBJECT} differs from a build from source ({fix})");
        }
    }
    eprintln!(
        "xtask test: {OBJECT} matches its sources ({} sections compared byte for byte)",
        a.len()
    );
    Ok(())
}

/// The sections that hold programs, maps and data, by name, in file order
/// (an ELF64 little-endian object, as bpfel objects are). Left out: BTF
/// and its relocations, DWARF, symbol and string tables, which name the
/// build's directory.
fn sections(elf: &[u8]) -> Result<Vec<(String, &[u8])>> {
    let u16_at = |o: usize| -> Result<u16> {
        Ok(u16::from_le_bytes(
            elf.get(o..o + 2).context("truncated")?.try_into()?,
        ))
    };
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            elf.get(o..o + 4).context("truncated")?.try_into()?,
        ))
    };
    let u64_at = |o: usize| -> Result<u64> {
        Ok(u64::from_le_bytes(
            elf.get(o..o + 8).context("truncated")?.try_into()?,
        ))
    };
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        bail!("not an ELF64 little-endian object");
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let header = |i: usize| shoff + i * shentsize;
    let str_off = u64_at(header(shstrndx) + 0x18)? as usize;
    let mut out = Vec::new();
    for i in 0..shnum {
        let h = header(i);
        let name_off = u32_at(h)? as usize;
        let kind = u32_at(h + 4)?;
        let off = u64_at(h + 0x18)? as usize;
        let size = u64_at(h + 0x20)? as usize;
        let name_bytes = elf.get(str_off + name_off..).context("name out of range")?;
        let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(0);
        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
        let paths = [
            "",
            ".BTF",
            ".rel.BTF",
            ".debug",
            ".rel.debug",
            ".strtab",
            ".symtab",
            ".llvm_addrsig",
        ];
        if paths.iter().any(|p| {
            if p.is_empty() {
                name.is_empty()
            } else {
                name.starts_with(p)
            }
        }) {
            continue;
        }
        // SHT_NOBITS (.bss) has a size but no bytes in the file.
        let bytes: &[u8] = if kind == 8 {
            &[]
        } else {
            elf.get(off..off + size).context("section out of range")?
        };
        out.push((name, bytes));
    }
    Ok(out)
}
