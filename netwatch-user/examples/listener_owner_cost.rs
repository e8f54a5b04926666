//! Cost of finding the owner of never-seen closed sockets in the `ss`
//! source: N TCP listeners (parsed from `ss -tunapie`-shaped text by the
//! source's own parser, in this read and the last) and M destroy events
//! on their ports, answered by the index (`listeners::owner_of`, what the
//! source uses) and by a scan of every listener per event (`owner_of_by_scan`,
//! what it did before). Checks that both give the same answer for every
//! event, then prints the time of each and the ratio.
//!
//! A measurement, not a test. Usage: listener_owner_cost [listeners] [events]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use netwatch::source::ss::destroy::DestroyEvent;
use netwatch::source::ss::listeners::{owner_of, owner_of_by_scan, Listeners};
use netwatch::source::ss::parse_ss;
use netwatch::source::Protocol;

fn main() {
    let mut args = std::env::args().skip(1);
    let listeners: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let events: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);

    // Listeners on ports 10000.., one process per 10 ports; every 7th on
    // the wildcard, every 13th on IPv6, every 50th shared by two processes.
    let mut text =
        String::from("Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n");
    for i in 0..listeners {
        let port = 10_000 + (i % 55_000);
        let pid = 1_000 + i / 10;
        let local = match (i % 7, i % 13) {
            (0, _) => format!("0.0.0.0:{port}"),
            (_, 0) => format!("[::1]:{port}"),
            _ => format!("127.0.0.1:{port}"),
        };
        let users = if i % 50 == 0 {
            format!(
                "((\"srv{pid}\",pid={pid},fd=3),(\"srv{pid}\",pid={},fd=3))",
                pid + 1
            )
        } else {
            format!("((\"srv{pid}\",pid={pid},fd=3))")
        };
        let _ = writeln!(
            text,
            "tcp LISTEN 0 128 {local} 0.0.0.0:* users:{users} ino:{} sk:{:x} <->\n\t cubic cwnd:10",
            100_000 + i,
            0x1000 + i
        );
    }
    let parsed = parse_ss(&text);
    assert_eq!(parsed.skipped, 0, "{:?}", parsed.first_skips);
    let this = Listeners::from_parsed(&parsed, &mut |_| None);
    let last = this.clone();
    assert_eq!(this.len(), listeners as usize);
    let reads = [&this, &last];

    let evs: Vec<DestroyEvent> = (0..events)
        .map(|i| {
            let port = 10_000 + (i.wrapping_mul(7_919) % listeners.max(1)) % 55_000;
            let ip = if i % 3 == 0 {
                "[::ffff:127.0.0.1]"
            } else {
                "127.0.0.1"
            };
            DestroyEvent {
                protocol: Protocol::Tcp,
                cookie: 0x10_0000 + u64::from(i),
                local: format!("{ip}:{port}")
                    .parse::<SocketAddr>()
                    .expect("address"),
                remote: Some(SocketAddr::from(([127, 0, 0, 1], 40_000))),
                rqueue: 0,
                tcp: None,
                successor_in_fin_wait2: false,
            }
        })
        .collect();

    let started = Instant::now();
    let indexed: Vec<_> = evs.iter().map(|e| owner_of(e, &reads)).collect();
    let index_time = started.elapsed();
    let started = Instant::now();
    let scanned: Vec<_> = evs.iter().map(|e| owner_of_by_scan(e, &reads)).collect();
    let scan_time = started.elapsed();
    assert_eq!(indexed, scanned, "the index and the scan disagree");
    let owned = indexed.iter().filter(|o| o.is_some()).count();
    println!(
        "{listeners} listeners (this read and the last), {events} close events, {owned} given an owner"
    );
    println!("scan of every listener per event: {scan_time:?}");
    println!("index by port and address:        {index_time:?}");
    println!(
        "ratio: {:.0}x",
        scan_time.as_secs_f64() / index_time.as_secs_f64().max(1e-9)
    );
}
