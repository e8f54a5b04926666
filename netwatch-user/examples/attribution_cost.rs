//! Cost of one tick's attribution and serialization with `sockets`
//! synthetic samples (a tenth of them moving bytes each tick), with and
//! without the top-N bound on connection rows. A measurement, not a test.
//!
//! Usage: attribution_cost [sockets] [ticks] [max_connections]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netwatch::attribution::{truncate_connections, Attribution};
use netwatch::source::{CountOrigin, Protocol, SampleBatch, SocketId, SocketSample};

fn batch(at: Instant, sockets: u64, tick: u64) -> SampleBatch {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let samples = (0..sockets)
        .map(|i| {
            // Socket i moved bytes on the ticks where i % 10 == tick % 10.
            let moved = (tick + 10 - i % 10) / 10;
            SocketSample {
                id: SocketId {
                    primary: i,
                    secondary: 0,
                },
                protocol: Protocol::Tcp,
                local: Some(SocketAddr::new(ip, 10_000 + (i % 50_000) as u16)),
                remote: Some(SocketAddr::new(ip, 80)),
                state: "ESTABLISHED".into(),
                pid: Some(1000 + (i % 200) as u32),
                comm: Some(format!("proc{}", i % 200)),
                cgroup_id: None,
                rx_bytes: moved * 4096,
                tx_bytes: moved * 1024,
                rtt_us: None,
                closed: false,
                origin: CountOrigin::SinceAttach,
            }
        })
        .collect();
    SampleBatch {
        taken_at: at,
        samples,
        lost_records: 0,
        estimated: false,
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let sockets: u64 = args
        .next()
        .map_or(Ok(10_000), |a| a.parse())
        .context("sockets")?;
    let ticks: u64 = args.next().map_or(Ok(20), |a| a.parse()).context("ticks")?;
    let max: usize = args.next().map_or(Ok(1000), |a| a.parse()).context("max")?;
    for bound in [usize::MAX, max] {
        let t0 = Instant::now();
        let mut attr = Attribution::new(t0);
        let batches: Vec<_> = (0..ticks)
            .map(|k| batch(t0 + Duration::from_secs(k + 1), sockets, k))
            .collect();
        let (mut json_bytes, mut rows) = (0usize, 0usize);
        let start = Instant::now();
        for b in &batches {
            let mut a = attr.apply(b);
            truncate_connections(&mut a.connections, &a.connection_bytes, bound);
            rows = a.connections.len();
            json_bytes =
                serde_json::to_vec(&a.connections)?.len() + serde_json::to_vec(&a.processes)?.len();
        }
        let per = start.elapsed().as_secs_f64() * 1e3 / ticks as f64;
        let label = if bound == usize::MAX {
            "unbounded".to_string()
        } else {
            format!("top {bound}")
        };
        println!("{sockets} sockets, {label}: {per:.3} ms/tick (apply + truncate + JSON), {rows} rows, {json_bytes} JSON bytes");
    }
    Ok(())
}
