//! Cost of one tick's userspace work per socket with synthetic samples:
//! 10,000 and 50,000 open TCP sockets of which 500 move bytes each tick
//! (and 5 are new each tick). Per tick, side by side:
//! - `agent path`: what `Agent::snapshot` does: `Attribution::read`, the
//!   top-N wire rows (`Interval::top_connections`), the alert feed's typed
//!   rows (new ones and listeners) and `Feed::events`;
//! - `all rows`: `Attribution::apply` (a wire row for every socket, as
//!   before the top N was chosen first) and `truncate_connections`;
//! - `clone`: cloning the batch's samples (the eBPF source clones its
//!   cached samples of every idle socket each read).
//!
//! A measurement, not a test. Usage: attribution_cost [ticks] [max_connections]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use netwatch::alerts::feed::{Conn, Feed, Tick};
use netwatch::attribution::{truncate_connections, Attribution};
use netwatch::source::{CountOrigin, Protocol, SampleBatch, SocketId, SocketSample};

const ACTIVE: u64 = 500;
const NEW_PER_TICK: u64 = 5;

fn batch(at: Instant, sockets: u64, tick: u64, comms: &[Arc<str>]) -> SampleBatch {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The last NEW_PER_TICK * tick sockets of `sockets + NEW_PER_TICK * ticks`
    // ids are new ones: socket i exists from tick i.saturating_sub(sockets) / NEW.
    let samples = (0..sockets + NEW_PER_TICK * tick)
        .map(|i| {
            let moved = if i < ACTIVE { tick + 1 } else { 0 };
            SocketSample {
                id: SocketId {
                    primary: i,
                    secondary: 0,
                },
                protocol: Protocol::Tcp,
                local: Some(SocketAddr::new(ip, 10_000 + (i % 50_000) as u16)),
                remote: Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(127, 0, (i >> 16) as u8 + 1, 1)),
                    80,
                )),
                state: netwatch::net::state::ESTABLISHED.into(),
                pid: Some(1000 + (i % 200) as u32),
                comm: Some(comms[(i % 200) as usize].clone()),
                cgroup_id: None,
                rx_bytes: moved * 64,
                tx_bytes: moved * 64,
                rtt_us: None,
                tcp: None,
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
        omitted: None,
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let ticks: u64 = args.next().map_or(Ok(20), |a| a.parse()).context("ticks")?;
    let max: usize = args.next().map_or(Ok(1000), |a| a.parse()).context("max")?;
    let comms: Vec<Arc<str>> = (0..200).map(|i| format!("proc{i}").into()).collect();
    for sockets in [10_000u64, 50_000] {
        let t0 = Instant::now();
        let batches: Vec<_> = (0..ticks)
            .map(|k| batch(t0 + Duration::from_secs(k + 1), sockets, k, &comms))
            .collect();
        // The first tick (a baseline, every socket inserted) is not timed.
        let timed = (ticks - 1) as f64;
        let per_socket = |d: Duration| d.as_secs_f64() * 1e9 / timed / sockets as f64;

        let mut attr = Attribution::new(t0);
        let mut feed = Feed::new();
        let (mut agent, mut rows, mut events) = (Duration::ZERO, 0, 0);
        let (mut reading, mut choosing) = (Duration::ZERO, Duration::ZERO);
        for (k, b) in batches.iter().enumerate() {
            let start = Instant::now();
            let iv = attr.read(b);
            let read_at = Instant::now();
            let (top, _left_out) = iv.top_connections(b, max);
            let top_at = Instant::now();
            let conns: Vec<Conn<'_>> = iv
                .rows
                .iter()
                .filter_map(|r| {
                    let s = b.samples.get(r.sample)?;
                    Conn::wanted(s, r.new).then(|| Conn::of(s, r.new))
                })
                .collect();
            let ev = feed.events(Tick {
                now: Duration::from_secs(k as u64),
                connections: &conns,
                processes: &iv.processes,
                ..Default::default()
            });
            if k > 0 {
                agent += start.elapsed();
                reading += read_at - start;
                choosing += top_at - read_at;
            }
            rows = top.len();
            events = ev.len();
            std::hint::black_box((top, ev));
            drop(conns);
            attr.recycle(iv);
        }

        let mut attr = Attribution::new(t0);
        let mut all = Duration::ZERO;
        for (k, b) in batches.iter().enumerate() {
            let start = Instant::now();
            let mut a = attr.apply(b);
            truncate_connections(&mut a.connections, &a.connection_bytes, max);
            if k > 0 {
                all += start.elapsed();
            }
            std::hint::black_box(a);
        }

        let mut clone = Duration::ZERO;
        for b in batches.iter().skip(1) {
            let start = Instant::now();
            std::hint::black_box(b.samples.clone());
            clone += start.elapsed();
        }
        println!(
            "{sockets} sockets, {ACTIVE} active, top {max}: agent path {:.1} ns/socket/tick \
             (read {:.1}, top N {:.1}, feed {:.1}; {rows} rows, {events} feed events last tick); \
             all rows {:.1}; clone {:.1}",
            per_socket(agent),
            per_socket(reading),
            per_socket(choosing),
            per_socket(agent - reading - choosing),
            per_socket(all),
            per_socket(clone),
        );
    }
    Ok(())
}
