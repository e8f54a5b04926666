//! Host metrics without privileges: interfaces with rates, TCP states,
//! CPU, memory, disks. Runs as any user.
//!
//! ```text
//! cargo run --example host_metrics
//! ```

use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut host = netwatch::host::Host::new();
    std::thread::sleep(Duration::from_secs(1));
    let snap = host.snapshot();
    for i in &snap.interfaces {
        println!(
            "{:<12} rx {:>12.0} B/s tx {:>12.0} B/s",
            i.name,
            i.rx_rate.unwrap_or(0.0),
            i.tx_rate.unwrap_or(0.0)
        );
    }
    if let Some(s) = &snap.system {
        println!(
            "cpu {:.1} %, memory used {} of {} bytes",
            s.cpu_usage_pct.unwrap_or(0.0),
            s.memory_used_bytes.unwrap_or(0),
            s.memory_total_bytes.unwrap_or(0)
        );
    }
    println!(
        "established TCP connections: {}",
        snap.connection_count.unwrap_or(0)
    );
    Ok(())
}
