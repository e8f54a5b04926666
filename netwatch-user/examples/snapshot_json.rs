//! The quick start: one snapshot of exact per-process bandwidth, printed
//! as the NetWatch Cloud JSON. Needs root (or CAP_BPF + CAP_PERFMON + ...,
//! see the crate docs' table); falls back to `ss`, then libpcap.
//!
//! ```text
//! sudo cargo run --example snapshot_json
//! ```

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = netwatch::Collector::builder().build()?;
    eprintln!("source: {}", collector.info().source);
    // Move some bytes, then read the interval.
    std::thread::sleep(Duration::from_secs(1));
    let snapshot = collector.finish();
    for p in snapshot.processes.iter().flatten() {
        // Process names are anyone's to choose: escape them for a terminal.
        let name = netwatch::text::visible(&p.process_name, 32);
        eprintln!(
            "{:>8} {name:<16} sent {:>10} received {:>10}",
            p.pid.unwrap_or(0),
            p.tx_bytes,
            p.rx_bytes
        );
    }
    println!("{}", serde_json::to_string_pretty(&snapshot)?);
    Ok(())
}
