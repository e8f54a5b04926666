//! `cargo xtask bench --only dns`: the DNS-only capture's cost
//! (`netwatch-user/examples/dns_cost.rs`): the release agent in eBPF mode
//! with and without `--no-dns-capture`, interleaved, in a network
//! namespace of its own, its CPU during a bulk loopback transfer and during
//! a DNS query flood. Writes `bench/dns_capture.json` and prints a summary.
//! A measurement: nothing is asserted.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub fn run(root: &Path, quick: bool) -> Result<()> {
    let rel = super::build_release(root, &["dns_cost"])?;
    let (bulk, secs, reps) = if quick {
        ("536870912", "3", "2")
    } else {
        ("2147483648", "5", "3")
    };
    let out = Command::new(rel.join("examples/dns_cost"))
        .arg(rel.join("netwatch-agent"))
        .args([bulk, secs, reps])
        .output()
        .context("running examples/dns_cost")?;
    if !out.status.success() {
        bail!(
            "examples/dns_cost failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dir = root.join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("dns_capture.json"), format!("{line}\n"))
        .context("writing bench/dns_capture.json")?;
    let v: serde_json::Value = serde_json::from_str(&line).context("dns_cost's JSON")?;
    for capture in [true, false] {
        let runs: Vec<&serde_json::Value> = v["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["dns_capture"].as_bool() == Some(capture))
            .collect();
        let mean = |k: &str| {
            runs.iter().filter_map(|r| r[k].as_f64()).sum::<f64>() / runs.len().max(1) as f64
        };
        println!(
            "DNS capture {:3}: bulk {:.2} GiB in {:.2} s, agent {:.3} s CPU; \
             flood {:.0} queries ({:.0} counted), agent {:.3} s CPU",
            if capture { "on" } else { "off" },
            mean("bulk_bytes") / f64::from(1u32 << 30),
            mean("bulk_wall_s"),
            mean("bulk_agent_cpu_s"),
            mean("flood_queries"),
            mean("flood_counted"),
            mean("flood_agent_cpu_s"),
        );
    }
    eprintln!("xtask bench: wrote bench/dns_capture.json");
    Ok(())
}
