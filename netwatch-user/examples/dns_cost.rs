//! The DNS capture's cost, for `cargo xtask bench --only dns`: the given
//! agent binary in eBPF mode (`--interval 1`, JSON out), with its DNS-only
//! capture and with `--no-dns-capture`, interleaved, in a network namespace
//! of its own (so nothing but this workload is on the wire), during
//! 1. a bulk TCP transfer over loopback (4 KiB writes): the capture's
//!    kernel filter (`port 53`) must reject every packet in the kernel, so
//!    the agent's CPU stays as it is without the capture;
//! 2. a DNS query flood: UDP queries to a responder of this program on
//!    127.0.0.1:53, as fast as request and answer go, for a fixed time.
//!
//! Prints one JSON line: per variant, the agent's CPU seconds (utime +
//! stime, every thread) during each workload, the workload's wall time and
//! the queries the flood sent and the agent's snapshots counted. A
//! measurement, never a test: nothing is asserted.
//!
//! Usage (root): `dns_cost PATH/TO/netwatch-agent [BULK_BYTES] [FLOOD_SECS] [REPS]`

#[allow(dead_code)]
#[path = "../tests/common/flood.rs"]
mod flood;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use netwatch::source::pcap::dns;
use netwatch_common::wire::Snapshot;

fn main() {
    let mut args = std::env::args().skip(1);
    let agent = args
        .next()
        .unwrap_or_else(|| "target/release/netwatch-agent".into());
    let bulk: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2 << 30);
    let flood_secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let reps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dns_cost needs root (a network namespace, BPF programs, libpcap)");
        std::process::exit(2);
    }
    let line = flood::in_new_netns(move || measure(&agent, bulk, flood_secs, reps));
    println!("{line}");
}

/// utime + stime of `pid`, every thread, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

struct Agent {
    child: Child,
    queries: Arc<AtomicU64>,
    snapshots: mpsc::Receiver<()>,
}

impl Agent {
    fn start(path: &str, capture: bool) -> Self {
        let mut cmd = Command::new(path);
        cmd.args([
            "--no-pin",
            "--mode",
            "ebpf",
            "--interval",
            "1",
            "--output",
            "json",
        ]);
        if !capture {
            cmd.arg("--no-dns-capture");
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {path}: {e}"));
        let out = child.stdout.take().expect("stdout");
        let queries = Arc::new(AtomicU64::new(0));
        let (tx, snapshots) = mpsc::channel();
        let q = Arc::clone(&queries);
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(s) = serde_json::from_str::<Snapshot>(&line) {
                    let n = s.dns_analytics.map_or(0, |a| a.total_queries);
                    q.fetch_add(n, Ordering::Relaxed);
                }
                let _ = tx.send(());
            }
        });
        let a = Self {
            child,
            queries,
            snapshots,
        };
        // Attached and primed: the first snapshot is out.
        a.snapshots
            .recv_timeout(Duration::from_secs(60))
            .expect("a first snapshot from the agent");
        a
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Two more snapshots: whatever the workload sent is counted.
    fn settle(&self) {
        for _ in 0..2 {
            let _ = self.snapshots.recv_timeout(Duration::from_secs(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bulk transfer of `bytes` over loopback TCP in 4 KiB writes; its wall time.
fn bulk_transfer(bytes: u64) -> f64 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let reader = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).expect("connect");
    let chunk = [0x5au8; 4096];
    let mut left = bytes;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        c.write_all(&chunk[..k]).expect("write");
        left -= k as u64;
    }
    drop(c);
    let got = reader.join().expect("reader");
    assert_eq!(got, bytes);
    t.elapsed().as_secs_f64()
}

/// A responder on 127.0.0.1:53 answering every query (NOERROR).
fn responder(stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    let sock = UdpSocket::bind("127.0.0.1:53").expect("binding 127.0.0.1:53");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Ok(m) = dns::parse(&buf[..n]) {
                if let Some(q) = m.question {
                    let r = dns::build_message(m.header.id, true, 0, &q.name, q.qtype);
                    let _ = sock.send_to(&r, from);
                }
            }
        }
    })
}

/// Queries for `secs`, each waiting for its answer (a window of 16 in
/// flight); how many were sent.
fn dns_flood(secs: u64) -> u64 {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect("127.0.0.1:53").expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let end = Instant::now() + Duration::from_secs(secs);
    let (mut sent, mut buf) = (0u64, [0u8; 1500]);
    while Instant::now() < end {
        for _ in 0..16 {
            let name = format!("q{sent}.bench.example.com");
            let m = dns::build_message(sent as u16, false, 0, &name, 1);
            if sock.send(&m).is_ok() {
                sent += 1;
            }
        }
        for _ in 0..16 {
            if sock.recv(&mut buf).is_err() {
                break;
            }
        }
    }
    sent
}

fn measure(agent: &str, bulk: u64, flood_secs: u64, reps: usize) -> String {
    let stop = Arc::new(AtomicBool::new(false));
    let server = responder(Arc::clone(&stop));
    let mut rows = Vec::new();
    for rep in 0..reps {
        for capture in [true, false] {
            let a = Agent::start(agent, capture);
            thread::sleep(Duration::from_millis(500));
            let c0 = cpu_seconds(a.pid());
            let wall = bulk_transfer(bulk);
            let c1 = cpu_seconds(a.pid());
            a.settle();
            let q0 = a.queries.load(Ordering::Relaxed);
            let c2 = cpu_seconds(a.pid());
            let sent = dns_flood(flood_secs);
            let c3 = cpu_seconds(a.pid());
            a.settle();
            let counted = a.queries.load(Ordering::Relaxed) - q0;
            let row = format!(
                "{{\"rep\":{rep},\"dns_capture\":{capture},\"bulk_bytes\":{bulk},\
                 \"bulk_wall_s\":{wall:.3},\"bulk_agent_cpu_s\":{:.3},\
                 \"flood_s\":{flood_secs},\"flood_queries\":{sent},\
                 \"flood_counted\":{counted},\"flood_agent_cpu_s\":{:.3}}}",
                c1 - c0,
                c3 - c2
            );
            eprintln!("{row}");
            rows.push(row);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    format!("{{\"runs\":[{}]}}", rows.join(","))
}
