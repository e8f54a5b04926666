//! `cargo xtask bench --only flood`: the release agent's memory under the
//! issue-16 flood (`netwatch-user/examples/flood_rss.rs`: 200,000 forged
//! DNS queries under 100,000 parent domains and 100,000 SYNs from 50,000
//! sources, in a network namespace of its own). Writes `bench/flood.json`
//! and prints it. A measurement: the target (RSS growth ≤ 16 MiB) is
//! reported, never asserted.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn run(root: &Path) -> Result<()> {
    let rel = super::build_release(root, &["flood_rss"])?;
    let out = Command::new(rel.join("examples/flood_rss"))
        .arg(rel.join("netwatch-agent"))
        .output()
        .context("running examples/flood_rss")?;
    if !out.status.success() {
        bail!(
            "examples/flood_rss failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = root.join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("flood.json"), format!("{line}\n"))
        .context("writing bench/flood.json")?;
    println!("{line}");
    eprintln!("xtask bench: wrote bench/flood.json (target: RSS growth at most 16 MiB)");
    Ok(())
}
