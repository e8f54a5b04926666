//! Custom alert thresholds: a port scan is reported from 5 ports (instead
//! of the SDK's 20) and alerts stay listed for 5 minutes. Needs root
//! (see snapshot_json).
//!
//! ```text
//! sudo cargo run --example alert_thresholds
//! ```

use std::time::Duration;

use netwatch::AlertConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut alerts = AlertConfig::default();
    alerts.port_scan.distinct_ports = 5;
    alerts.active = Duration::from_secs(300);
    let ticks: usize = std::env::var("NETWATCH_EXAMPLE_TICKS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3);
    let mut collector = netwatch::Collector::builder().alerts(alerts).build()?;
    for snap in collector.snapshots(Duration::from_secs(1)).take(ticks) {
        for a in snap.alerts.iter().flatten() {
            println!(
                "{:?} {:?}: {}",
                a.severity,
                a.category,
                netwatch::text::visible(&a.message, 200)
            );
        }
    }
    Ok(())
}
