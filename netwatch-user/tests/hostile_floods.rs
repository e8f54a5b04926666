//! The agent binary under a hostile flood (issue 16): `--mode pcap -i lo`
//! in a network namespace of the test's own, while 200,000 forged DNS
//! queries under 100,000 parent domains and 100,000 SYNs to closed ports
//! from 50,000 forged sources hit loopback and a real TCP transfer of
//! exactly N bytes runs. Every snapshot stays under 256 KiB of JSON with at
//! most 100 alerts, the transfer's process row carries exactly N bytes
//! each way, and the bounded tables say on `/metrics` that they were full.
//!
//! NEEDS ROOT (a network namespace, a raw socket, libpcap) and fails,
//! loudly, without it. Memory is measured by the bench
//! (`examples/flood_rss.rs`), never asserted here.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::agent::{self, AGENT};

use common::flood;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use netwatch_common::wire::Snapshot;

/// Bytes the real transfer moves.
const N: usize = 3_000_000;
/// The JSON size every snapshot stays under.
const MAX_SNAPSHOT_BYTES: usize = 256 << 10;
/// The SDK's alert history.
const MAX_ALERTS: usize = 100;
/// The DNS-tunnel detector's parent domains
/// (`netwatch::alerts::dns_tunnel::MAX_DOMAINS`, the SDK's).
const DNS_PARENTS_CAP: u64 = 500;
/// The port-scan detector's sources
/// (`netwatch::alerts::port_scan::MAX_SOURCES`, the SDK's).
const SCAN_SOURCES_CAP: u64 = 1_000;

/// What the test keeps of one `--output json` line.
#[derive(Debug)]
struct Seen {
    json_bytes: usize,
    alerts: usize,
    /// (rx, tx) of this process's rows.
    mine: (u64, u64),
    lost_records: u64,
}

/// DNS queries the agent's snapshots counted so far (their
/// `dns_analytics.total_queries`): how far the flood may run ahead.
static DNS_SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The agent, stopped (SIGTERM) when dropped.
struct Agent {
    child: std::process::Child,
    metrics_url: String,
    log: mpsc::Receiver<String>,
    lines: Option<thread::JoinHandle<Vec<Seen>>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        agent::terminate(&mut self.child);
    }
}

fn start_agent() -> Agent {
    let (mut child, log_rx, metrics_url) = agent::start_attached(
        Command::new(AGENT)
            .args([
                "--no-pin",
                "--mode",
                "pcap",
                "-i",
                "lo",
                "--interval",
                "0.25",
                "--output",
                "json",
                "--output",
                "prometheus",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped()),
        Duration::from_secs(60),
    )
    .serving();
    let stdout = child.stdout.take().expect("piped stdout");
    let me = std::process::id();
    let lines = thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let s: Snapshot = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a Snapshot ({e}): {:.300}", line));
            let mine = s
                .processes
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter(|p| p.pid == Some(me))
                .fold((0, 0), |a, p| (a.0 + p.rx_bytes, a.1 + p.tx_bytes));
            let dns = s.dns_analytics.as_ref().map_or(0, |d| d.total_queries);
            DNS_SEEN.fetch_add(dns, std::sync::atomic::Ordering::SeqCst);
            seen.push(Seen {
                json_bytes: line.len(),
                alerts: s.alerts.as_ref().map_or(0, Vec::len),
                mine,
                lost_records: s
                    .collector
                    .as_ref()
                    .and_then(|c| c.lost_records)
                    .unwrap_or(0),
            });
        }
        seen
    });
    Agent {
        child,
        metrics_url,
        log: log_rx,
        lines: Some(lines),
    }
}

/// Each of `pid`'s threads' name and CPU seconds, for the failure log.
fn thread_cpu(pid: u32) -> String {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let Some((name, rest)) = stat.split_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11..13).map_or(0.0, |v| {
            v.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
        });
        let name = name.split_once(" (").map_or(name, |(_, n)| n);
        out.push(format!("{name} {:.1}s", ticks / hz));
    }
    out.join(", ")
}

/// `netwatch_agent_table_dropped_total{table="…"}` on the page (0 if absent).
fn dropped(page: &str, table: &str) -> u64 {
    let series = format!("netwatch_agent_table_dropped_total{{table=\"{table}\"}}");
    page.lines()
        .find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
        .unwrap_or(0)
}

/// Entries a table of `cap` that evicts half of itself when a new key
/// comes and it is full drops, given `keys` distinct keys one after the
/// other (the rule of the DNS-tunnel parents and port-scan sources).
fn evicted_by_halving(keys: u64, cap: u64) -> u64 {
    let (mut len, mut dropped) = (0, 0);
    for _ in 0..keys {
        if len >= cap {
            len -= cap / 2;
            dropped += cap / 2;
        }
        len += 1;
    }
    dropped
}

/// The real transfer: connected before the flood (so scans know its
/// sockets), then N bytes written in paced chunks while the flood runs.
fn transfer(chunks: usize, gap: Duration) -> thread::JoinHandle<()> {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding the transfer's listener");
    let addr = l.local_addr().expect("listener address");
    let mut c = TcpStream::connect(addr).expect("connecting the transfer");
    let (mut s, _) = l.accept().expect("accepting the transfer");
    // Several reads see both ends (and their owner) before bytes move.
    thread::sleep(Duration::from_millis(1_500));
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("reading the transfer");
        buf.len()
    });
    thread::spawn(move || {
        assert_eq!(N % chunks, 0);
        let chunk = vec![7u8; N / chunks];
        for _ in 0..chunks {
            c.write_all(&chunk).expect("writing the transfer");
            thread::sleep(gap);
        }
        drop(c);
        assert_eq!(reader.join().expect("reader"), N);
    })
}

#[test]
fn pcap_agent_under_a_dns_and_syn_flood_stays_bounded_and_exact() {
    require_root!(
        "makes a network namespace, sends raw packets and runs the agent's libpcap capture"
    );
    flood::in_new_netns(|| {
        let plan = flood::Plan::ISSUE;
        let mut agent = start_agent();
        let pid = agent.child.id();
        let before = flood::rss_kib(pid);
        let writer = transfer(30, Duration::from_millis(300));
        let t0 = Instant::now();
        // Each batch goes once the agent's snapshots counted the previous
        // one's DNS queries: the flood runs as fast as the agent reads it,
        // never faster (its kernel buffer and per-read tables then hold
        // one batch), so every packet reaches the tables under test.
        let mut stalled = Vec::new();
        let mut wait = |s: &flood::Sent| {
            let until = Instant::now() + Duration::from_secs(20);
            while DNS_SEEN.load(std::sync::atomic::Ordering::SeqCst) < u64::from(s.dns) {
                if Instant::now() > until {
                    stalled.push(s.dns);
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        };
        let sent = flood::run(&plan, &mut wait).expect("sending the flood (raw socket)");
        assert!(
            stalled.is_empty(),
            "the agent's snapshots stopped counting the flood's DNS queries at {stalled:?}"
        );
        writer.join().expect("the transfer");
        eprintln!(
            "flood: {} DNS queries, {} SYNs in {:.1}s; transfer done at {:.1}s",
            sent.dns,
            sent.syns,
            sent.took.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        assert_eq!((sent.dns, sent.syns), (200_000, 100_000));
        // Let the capture and the detectors catch up.
        thread::sleep(Duration::from_secs(2));
        let after = flood::rss_kib(pid);
        eprintln!(
            "agent RSS (not asserted): before VmHWM {} KiB VmRSS {} KiB; after VmHWM {} KiB VmRSS {} KiB",
            before.0, before.1, after.0, after.1
        );
        eprintln!("agent threads' CPU (not asserted): {}", thread_cpu(pid));
        let page = agent::scrape(&agent.metrics_url);
        // SAFETY: plain kill(2) on our child's pid; it delivers the
        // partial interval and exits.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        let status = agent.child.wait().expect("waiting for the agent");
        assert!(status.success(), "agent stops cleanly on SIGINT: {status}");
        let seen = agent
            .lines
            .take()
            .expect("stdout reader")
            .join()
            .expect("stdout reader");
        let log: Vec<String> = agent.log.try_iter().collect();
        let lost: u64 = seen.iter().map(|s| s.lost_records).max().unwrap_or(0);
        let drops: Vec<&String> = log.iter().filter(|l| l.contains("full at")).collect();
        eprintln!(
            "{} snapshots, largest {} bytes, most alerts {}, lost records {lost}; drops logged: {drops:#?}",
            seen.len(),
            seen.iter().map(|s| s.json_bytes).max().unwrap_or(0),
            seen.iter().map(|s| s.alerts).max().unwrap_or(0),
        );
        for (i, s) in seen.iter().enumerate() {
            assert!(
                s.json_bytes < MAX_SNAPSHOT_BYTES,
                "snapshot {i} is {} bytes of JSON (bound {MAX_SNAPSHOT_BYTES})",
                s.json_bytes
            );
            assert!(
                s.alerts <= MAX_ALERTS,
                "snapshot {i} carries {} alerts (bound {MAX_ALERTS})",
                s.alerts
            );
        }
        assert!(
            seen.len() >= 20,
            "a snapshot every 0.25 s over the flood's seconds: {}",
            seen.len()
        );
        let mine = seen
            .iter()
            .fold((0, 0), |a, s| (a.0 + s.mine.0, a.1 + s.mine.1));
        assert_eq!(
            mine,
            (N as u64, N as u64),
            "the transfer's process row carries its bytes exactly (lost records {lost})"
        );
        assert_eq!(lost, 0, "the capture kept up: nothing lost");
        // The bounded tables were full, and said so. Exact where the rule
        // and the order of the packets decide.
        let parents = u64::from(plan.parents());
        assert_eq!(
            dropped(&page, "dns_tunnel_parents"),
            evicted_by_halving(parents, DNS_PARENTS_CAP),
            "DNS-tunnel parent domains evicted"
        );
        // The forged sources and this process's own (127.0.0.1: the transfer).
        let sources = u64::from(plan.syn_sources) + 1;
        assert_eq!(
            dropped(&page, "port_scan_sources"),
            evicted_by_halving(sources, SCAN_SOURCES_CAP),
            "port-scan sources evicted"
        );
        // 2,500 port scans and one DNS-tunnel alert (one client) for 96
        // individual slots.
        assert_eq!(
            dropped(&page, "alert_keys"),
            u64::from(plan.scanners) + 1 - 96,
            "alerts folded into a summary"
        );
        assert!(
            dropped(&page, "pcap_unowned_flows") > 0,
            "socket-less flows folded: {page}"
        );
        // Half-open TCP directions: at most 7,168 (`stream::MAX_HALF_OPEN`),
        // the transfer's two among them.
        assert!(
            dropped(&page, "pcap_half_open") >= u64::from(plan.syns()) - 7_168,
            "half-open TCP directions refused: {page}"
        );
    });
}
