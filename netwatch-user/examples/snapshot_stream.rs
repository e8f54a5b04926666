//! A stream of snapshots, one a second, as an iterator: the busiest
//! process of each interval. Needs root (see snapshot_json). Stops after
//! `NETWATCH_EXAMPLE_TICKS` snapshots (default 5).
//!
//! ```text
//! sudo cargo run --example snapshot_stream
//! ```

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ticks: usize = std::env::var("NETWATCH_EXAMPLE_TICKS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(5);
    let mut collector = netwatch::Collector::builder().build()?;
    for snap in collector.snapshots(Duration::from_secs(1)).take(ticks) {
        let busiest = snap
            .processes
            .iter()
            .flatten()
            .max_by_key(|p| p.rx_bytes + p.tx_bytes);
        match busiest {
            Some(p) => println!(
                "{} {} (pid {:?}): {} bytes in, {} out",
                snap.timestamp.format("%H:%M:%S"),
                netwatch::text::visible(&p.process_name, 32),
                p.pid,
                p.rx_bytes,
                p.tx_bytes
            ),
            None => println!("{} no traffic", snap.timestamp.format("%H:%M:%S")),
        }
    }
    Ok(())
}
