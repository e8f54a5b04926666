//! The eBPF collector inside a tokio program: a stream of snapshots next
//! to the program's other tasks, stopped by Ctrl-C with a last, partial
//! interval. Refuses to start without eBPF (no fallback to `ss`). Needs
//! root or CAP_BPF + CAP_PERFMON + CAP_DAC_READ_SEARCH + CAP_SYS_PTRACE.
//!
//! ```text
//! sudo cargo run --example tokio_ebpf
//! ```

use std::time::Duration;

use futures_core::Stream;
use netwatch::{Collector, Mode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ticks: usize = std::env::var("NETWATCH_EXAMPLE_TICKS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(usize::MAX);
    // Loading attaches programs: blocking work, off the async threads.
    let collector =
        tokio::task::spawn_blocking(|| Collector::builder().mode(Mode::Ebpf).build()).await??;
    println!(
        "eBPF tier: {}",
        collector.info().ebpf_tier.as_deref().unwrap_or("?")
    );
    let mut stream = Box::pin(collector.into_stream(Duration::from_secs(1)));
    for _ in 0..ticks {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            snap = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)) => {
                let Some(snap) = snap else { break };
                let bytes: u64 = snap.processes.iter().flatten().map(|p| p.rx_bytes + p.tx_bytes).sum();
                println!("{}: {bytes} bytes by {} processes", snap.timestamp.format("%H:%M:%S"), snap.processes.as_ref().map_or(0, Vec::len));
            }
        }
    }
    Ok(())
}
