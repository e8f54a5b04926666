//! DNS in every mode (issue 18, item 1): the real agent in eBPF mode (the
//! host runs the tracepoint tier) runs the DNS-only capture beside the
//! kernel collector, so its snapshots carry `dns_analytics` and the
//! DNS-tunnel detector runs. Against DNS servers of the test's own (UDP and
//! TCP, in Rust, below): one at the server end of a `netns::VethPair` (port 53) across a veth pair,
//! one at 127.0.0.53:53 on the loopback of the client's namespace (like
//! systemd-resolved; a namespace of the test's own, so the host's resolver
//! is never in the way). The agent runs in the client's namespace (only its
//! network namespace: `setns` before exec, so tracefs and bpffs stay as
//! they are), where nothing else speaks DNS, so every count is exact.
//!
//! Also: `--no-dns-capture` gives `dns_analytics: null`; an agent that
//! cannot open the capture (no `CAP_NET_RAW`) says so once and runs on
//! without it; malformed and truncated DNS (UDP and TCP) is counted by the
//! capture, never a panic. Needs root (BPF programs, namespaces, capture).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::serial;

use common::netns;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use netns::{Side, VethPair};
use netwatch::source::pcap::dns;
use netwatch_common::wire::{AlertCategory, Snapshot};

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
/// The local resolver's address, as systemd-resolved's.
const RESOLVED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);

/// A DNS server on UDP and TCP port 53 of one address: NXDOMAIN for names
/// starting `nx.`, NOERROR otherwise; over TCP it answers every whole
/// message a read brought in one write. Stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

fn answer(query: &[u8]) -> Option<Vec<u8>> {
    let m = dns::parse(query).ok()?;
    let q = m.question?;
    let rcode = if q.name.starts_with("nx.") { 3 } else { 0 };
    Some(dns::build_message(
        m.header.id,
        true,
        rcode,
        &q.name,
        q.qtype,
    ))
}

impl Server {
    /// Bind in the current thread's namespace (call inside `pair.enter`).
    fn bind(ip: Ipv4Addr) -> (UdpSocket, TcpListener) {
        let addr = SocketAddr::from((ip, 53));
        let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding UDP {addr}: {e}"));
        let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("binding TCP {addr}: {e}"));
        (udp, tcp)
    }

    fn start((udp, tcp): (UdpSocket, TcpListener)) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let s = Arc::clone(&stop);
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(r) = answer(&buf[..n]) {
                    let _ = udp.send_to(&r, from);
                }
            }
        }));
        tcp.set_nonblocking(true).unwrap();
        let s = Arc::clone(&stop);
        threads.push(thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((conn, _)) => {
                        let s = Arc::clone(&s);
                        thread::spawn(move || serve_tcp(conn, &s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
        Self { stop, threads }
    }
}

fn serve_tcp(mut conn: TcpStream, stop: &AtomicBool) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        }
        let mut out = Vec::new();
        while pending.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([pending[0], pending[1]]));
            if pending.len() < 2 + len {
                break;
            }
            if let Some(r) = answer(&pending[2..2 + len]) {
                out.extend_from_slice(&(r.len() as u16).to_be_bytes());
                out.extend_from_slice(&r);
            }
            pending.drain(..2 + len);
        }
        if !out.is_empty() && conn.write_all(&out).is_err() {
            return;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A query over UDP to `server`; returns the answer's RCODE.
fn ask_udp(client: &UdpSocket, server: SocketAddr, id: u16, name: &str) -> u8 {
    client
        .send_to(&dns::build_message(id, false, 0, name, 1), server)
        .unwrap();
    let mut buf = [0u8; 1500];
    let n = client
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no answer from {server} to {name}: {e}"));
    let m = dns::parse(&buf[..n]).unwrap();
    assert_eq!(m.header.id, id);
    m.header.rcode
}

fn framed(id: u16, name: &str) -> Vec<u8> {
    let m = dns::build_message(id, false, 0, name, 1);
    let mut v = (m.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(&m);
    v
}

/// Read `n` framed answers from `conn`; their (id, rcode).
fn read_answers(conn: &mut TcpStream, n: usize) -> Vec<(u16, u8)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).expect("an answer's length");
        let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut m).expect("an answer");
        let h = dns::parse_header(&m).unwrap();
        got.push((h.id, h.rcode));
    }
    got
}

/// The agent, killed on drop (pass or fail), and its output lines.
struct Agent {
    child: Child,
    snapshots: mpsc::Receiver<String>,
    log: mpsc::Receiver<String>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// The agent in eBPF mode in `ns`'s network namespace (only that: the
    /// mount namespace stays the host's), JSON every half second.
    fn start(ns: &str, extra: &[&str]) -> Self {
        Self::start_with(Command::new(AGENT), ns, "ebpf", extra)
    }

    fn start_with(mut cmd: Command, ns: &str, mode: &str, extra: &[&str]) -> Self {
        let path = format!("/run/netns/{ns}");
        let netns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let fd = netns.as_raw_fd();
        cmd.args(["--mode", mode, "--no-pin", "--output", "json"])
            .args(["--interval", "0.5"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: setns(2) only, between fork and exec, on a descriptor
        // this process holds open until after the spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("starting netwatch-agent");
        drop(netns);
        let (stdout, stderr) = (
            child.stdout.take().expect("stdout"),
            child.stderr.take().expect("stderr"),
        );
        let (snap_tx, snapshots) = mpsc::channel();
        let (log_tx, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = snap_tx.send(line);
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = log_tx.send(line);
            }
        });
        Self {
            child,
            snapshots,
            log,
        }
    }

    /// The next snapshot, within `within`.
    fn next(&self, within: Duration) -> Snapshot {
        let line = self.snapshots.recv_timeout(within).unwrap_or_else(|_| {
            panic!(
                "no snapshot within {within:?}; agent log: {:#?}",
                self.log.try_iter().collect::<Vec<_>>()
            )
        });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("snapshot JSON: {e}: {line}"))
    }

    /// Wait for the first snapshot (the agent has attached, opened the
    /// capture and primed).
    fn ready(&self) -> Snapshot {
        self.next(Duration::from_secs(60))
    }

    fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

/// DNS analytics summed over snapshots.
#[derive(Debug, Default)]
struct Sum {
    queries: u64,
    responses: u64,
    nxdomain: u64,
    latencies: u64,
    domains: BTreeMap<String, u64>,
    /// Every snapshot added (left out of comparisons).
    snaps: Vec<Snapshot>,
}

/// This process's own `processes[].dns` figures, summed over snapshots:
/// (queries, responses, failures, nxdomain, unanswered, latencies).
fn own_dns(snaps: &[Snapshot]) -> (u64, u64, u64, u64, u64, usize) {
    let me = std::process::id();
    let mut t = (0, 0, 0, 0, 0, 0);
    for d in snaps
        .iter()
        .flat_map(|s| s.processes.iter().flatten())
        .filter(|p| p.pid == Some(me))
        .filter_map(|p| p.dns.as_ref())
    {
        t.0 += d.queries;
        t.1 += d.responses;
        t.2 += d.failures;
        t.3 += d.nxdomain;
        t.4 += d.unanswered;
        t.5 += usize::from(d.latency_ms_avg.is_some());
    }
    t
}

impl Sum {
    fn add(&mut self, s: &Snapshot) {
        self.snaps.push(s.clone());
        let a = s
            .dns_analytics
            .as_ref()
            .expect("with the DNS capture every snapshot has dns_analytics");
        self.queries += a.total_queries;
        self.responses += a.total_responses;
        self.nxdomain += a.nxdomain_count;
        self.latencies += a.latency_buckets.iter().sum::<u64>();
        for (d, n) in &a.top_domains {
            *self.domains.entry(d.clone()).or_default() += u64::from(*n);
        }
    }
}

/// Take snapshots into `sum` until `done` holds (within 15 s), then two
/// more: nothing is counted late or twice.
fn settle(agent: &Agent, sum: &mut Sum, done: impl Fn(&Sum) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(sum) && Instant::now() < deadline {
        sum.add(&agent.next(Duration::from_secs(5)));
    }
    for _ in 0..2 {
        sum.add(&agent.next(Duration::from_secs(5)));
    }
}

/// The workload: Q=9 queries, R=9 responses, X=3 NXDOMAIN, over UDP and
/// TCP, across the veth and on loopback; in the client's namespace.
fn workload(pair: &VethPair) {
    pair.enter(Side::Client, || {
        let remote = SocketAddr::from((pair.server_ip, 53));
        let local = SocketAddr::from((RESOLVED, 53));
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // UDP across the veth: 3 queries, 1 NXDOMAIN.
        assert_eq!(ask_udp(&udp, remote, 1, "www.example.com"), 0);
        assert_eq!(ask_udp(&udp, remote, 2, "nx.example.org"), 3);
        assert_eq!(ask_udp(&udp, remote, 3, "api.example.com"), 0);
        // UDP on loopback to the local resolver: 2 queries, 1 NXDOMAIN.
        let lo = UdpSocket::bind("127.0.0.1:0").unwrap();
        lo.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ask_udp(&lo, local, 4, "local.example.com"), 0);
        assert_eq!(ask_udp(&lo, local, 5, "nx.local.test"), 3);
        // TCP across the veth: two queries in one segment, then one split
        // over two segments; 1 NXDOMAIN.
        let mut c = TcpStream::connect_timeout(&remote, Duration::from_secs(5)).unwrap();
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut two = framed(6, "tcp1.example.net");
        two.extend(framed(7, "nx.tcp.example.net"));
        c.write_all(&two).unwrap();
        let mut got = read_answers(&mut c, 2);
        let split = framed(8, "split.example.net");
        c.write_all(&split[..7]).unwrap();
        thread::sleep(Duration::from_millis(50));
        c.write_all(&split[7..]).unwrap();
        got.extend(read_answers(&mut c, 1));
        assert_eq!(got, [(6, 0), (7, 3), (8, 0)]);
        drop(c);
        // TCP on loopback to the local resolver: 1 query.
        let mut c = TcpStream::connect_timeout(&local, Duration::from_secs(5)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(&framed(9, "tcplocal.example.com")).unwrap();
        assert_eq!(read_answers(&mut c, 1), [(9, 0)]);
    });
}

fn servers(pair: &VethPair) -> (Server, Server) {
    (
        Server::start(pair.enter(Side::Server, || Server::bind(pair.server_ip))),
        Server::start(pair.enter(Side::Client, || Server::bind(RESOLVED))),
    )
}

#[test]
fn ebpf_mode_counts_dns_exactly_over_udp_and_tcp_across_veth_and_loopback() {
    counts_exactly_in("ebpf");
}

/// The same beside the `ss` source.
#[test]
fn ss_mode_counts_dns_exactly_too() {
    counts_exactly_in("ss");
}

fn counts_exactly_in(mode: &str) {
    require_root!("loads BPF programs, makes network namespaces and captures packets");
    let _serial = serial();
    let pair = VethPair::new("dq");
    let _servers = servers(&pair);
    let agent = Agent::start_with(Command::new(AGENT), pair.ns(Side::Client), mode, &[]);
    let first = agent.ready();
    assert_eq!(
        first.collector.as_ref().map(|c| c.source.as_str()),
        Some(mode)
    );
    let mut sum = Sum::default();
    sum.add(&first);
    workload(&pair);
    settle(&agent, &mut sum, |s| s.queries >= 9 && s.responses >= 9);
    let domains: BTreeMap<String, u64> = [
        ("example.com", 4),
        ("example.net", 3),
        ("example.org", 1),
        ("local.test", 1),
    ]
    .into_iter()
    .map(|(d, n)| (d.to_string(), n))
    .collect();
    assert_eq!(
        (
            sum.queries,
            sum.responses,
            sum.nxdomain,
            sum.latencies,
            &sum.domains
        ),
        (9, 9, 3, 9, &domains),
        "agent log: {:#?}",
        agent.log_lines()
    );
    if mode == "ebpf" {
        // Every lookup was this process's: the kernel collector lists each
        // client socket (the short-lived TCP ones too), so its row carries
        // exactly the lookups; the servers' sockets (also this process's)
        // are no client's.
        let (q, r, failed, nx, unanswered, timed) = own_dns(&sum.snaps);
        assert_eq!((q, r, failed, nx, unanswered), (9, 9, 3, 3, 0));
        assert!(timed >= 1, "the rows carry the lookups' latency");
    }
    let log = agent.log_lines();
    assert!(
        log.iter().any(|l| l.contains("DNS capture on `any`")),
        "the agent says it captures DNS: {log:#?}"
    );
}

#[test]
fn ebpf_mode_raises_the_dns_tunnel_alert() {
    require_root!("loads BPF programs, makes network namespaces and captures packets");
    let _serial = serial();
    let pair = VethPair::new("dt");
    let _servers = servers(&pair);
    let agent = Agent::start(pair.ns(Side::Client), &[]);
    let first = agent.ready();
    assert!(first.dns_analytics.is_some());
    // 60 queries within the minute to one parent domain, each under its
    // own long random-looking first label: more than 50 queries with more
    // than 30 distinct subdomains (critical), names over 80 bytes (warning).
    pair.enter(Side::Client, || {
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..60u16 {
            let label: String = (0..60)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize])
                })
                .collect();
            let name = format!("{label}.{i}.exfil.tunnel-test.net");
            ask_udp(&udp, SocketAddr::from((pair.server_ip, 53)), 100 + i, &name);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut queries = 0;
    let alert = loop {
        assert!(
            Instant::now() < deadline,
            "no DNS-tunnel alert in eBPF mode ({queries} queries seen); log: {:#?}",
            agent.log_lines()
        );
        let s = agent.next(Duration::from_secs(5));
        queries += s.dns_analytics.as_ref().map_or(0, |a| a.total_queries);
        if let Some(a) = s
            .alerts
            .iter()
            .flatten()
            .find(|a| a.category == AlertCategory::DnsTunnel)
        {
            break a.clone();
        }
    };
    assert!(
        alert.detail.contains("tunnel-test.net") || alert.message.contains("tunnel-test.net"),
        "{alert:?}"
    );
}

#[test]
fn no_dns_capture_gives_null_dns_analytics() {
    require_root!("loads BPF programs, makes network namespaces and captures packets");
    let _serial = serial();
    let pair = VethPair::new("dn");
    let _servers = servers(&pair);
    let agent = Agent::start(pair.ns(Side::Client), &["--no-dns-capture"]);
    let first = agent.ready();
    workload(&pair);
    let mut snaps = vec![first];
    for _ in 0..4 {
        snaps.push(agent.next(Duration::from_secs(5)));
    }
    for s in &snaps {
        assert_eq!(s.dns_analytics, None, "--no-dns-capture: no DNS analytics");
        assert_eq!(
            s.collector.as_ref().map(|c| c.source.as_str()),
            Some("ebpf")
        );
    }
    let log = agent.log_lines();
    assert!(
        log.iter().any(|l| l.contains("the DNS capture is off")),
        "{log:#?}"
    );
}

/// Without `CAP_NET_RAW` (taken out of the bounding set before exec) the
/// capture cannot open: the agent says so once, clearly, and runs on in
/// eBPF mode without DNS analytics.
#[test]
fn a_dns_capture_that_cannot_open_is_said_once_and_the_agent_runs_on() {
    require_root!("loads BPF programs, makes network namespaces and captures packets");
    let _serial = serial();
    let pair = VethPair::new("dp");
    let _servers = servers(&pair);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set", "-net_raw", "--", AGENT]);
    let agent = Agent::start_with(cmd, pair.ns(Side::Client), "ebpf", &[]);
    let first = agent.ready();
    workload(&pair);
    let mut snaps = vec![first];
    for _ in 0..3 {
        snaps.push(agent.next(Duration::from_secs(5)));
    }
    assert!(snaps.iter().all(|s| s.dns_analytics.is_none()));
    assert!(snaps
        .iter()
        .all(|s| s.collector.as_ref().is_some_and(|c| c.source == "ebpf")));
    let log = agent.log_lines();
    let said: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("DNS analytics off"))
        .collect();
    assert_eq!(said.len(), 1, "said once: {log:#?}");
    assert!(said[0].contains("CAP_NET_RAW"), "{}", said[0]);
    assert!(said[0].contains("--no-dns-capture"), "{}", said[0]);
}

/// Malformed and truncated DNS reaches the capture (UDP and TCP, real
/// sockets, the library's capture in the client's namespace): each is
/// counted, the capture goes on, and the good messages around them are
/// read exactly.
#[test]
fn malformed_and_truncated_dns_is_counted_never_a_panic() {
    require_root!("loads BPF programs, makes network namespaces and captures packets");
    let _serial = serial();
    let pair = VethPair::new("dm");
    let (udp_sock, tcp_listener) = pair.enter(Side::Server, || Server::bind(pair.server_ip));
    let mut capture = pair.enter(Side::Client, || {
        netwatch::source::dns_capture::DnsCapture::open(None).expect("opening the DNS capture")
    });
    // A listener that only reads (no answers): the bytes are what counts.
    tcp_listener.set_nonblocking(false).unwrap();
    let sink = thread::spawn(move || {
        for _ in 0..2 {
            if let Ok((mut c, _)) = tcp_listener.accept() {
                let _ = c.read_to_end(&mut Vec::new());
            }
        }
    });
    pair.enter(Side::Client, || {
        let server = SocketAddr::from((pair.server_ip, 53));
        let udp = UdpSocket::bind("0.0.0.0:0").unwrap();
        // 1: not DNS at all (no header).
        udp.send_to(b"not dns", server).unwrap();
        // 2: a query whose name is cut off (a query without a name).
        let q = dns::build_message(1, false, 0, "cut.example.com", 1);
        udp.send_to(&q[..q.len() - 6], server).unwrap();
        // A good one.
        udp.send_to(
            &dns::build_message(2, false, 0, "good.example.com", 1),
            server,
        )
        .unwrap();
        // TCP: 3: a length below the header, then a good query; 4: a
        // length that claims more than the stream carries before it ends.
        let mut c = TcpStream::connect(server).unwrap();
        let mut s = vec![0, 3, 1, 2, 3];
        s.extend(framed(3, "tcpgood.example.com"));
        c.write_all(&s).unwrap();
        drop(c);
        let mut c = TcpStream::connect(server).unwrap();
        let m = dns::build_message(4, false, 0, "liar.example.com", 1);
        let mut s = 400u16.to_be_bytes().to_vec();
        s.extend_from_slice(&m);
        c.write_all(&s).unwrap();
        drop(c);
    });
    drop(udp_sock);
    let _ = sink.join();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events = Vec::new();
    while Instant::now() < deadline {
        events.extend(capture.take_events());
        if capture.stats().malformed >= 4 && events.len() >= 3 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    events.extend(capture.take_events());
    let stats = capture.stats();
    assert_eq!(stats.malformed, 4, "{stats:?}");
    assert_eq!(stats.tcp_desyncs, 0, "{stats:?}");
    let mut got: Vec<(u16, Option<String>)> = events
        .iter()
        .map(|e| match &e.kind {
            netwatch::source::DnsEventKind::Query { name } => (e.id, name.clone()),
            k => panic!("only queries were sent: {k:?}"),
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (1, None),
            (2, Some("good.example.com".into())),
            (3, Some("tcpgood.example.com".into())),
        ]
    );
}

/// `--mode pcap` reads DNS over TCP too (its own capture, 512-byte
/// snapshot length): the workload's 9 queries and 9 answers, 4 of each
/// over TCP, each once.
#[test]
fn pcap_mode_reads_dns_over_udp_and_tcp_exactly() {
    use netwatch::source::{DnsEventKind, Protocol, SocketSource as _};
    require_root!("loads BPF programs, makes network namespaces and captures packets");
    let _serial = serial();
    let pair = VethPair::new("dc");
    let _servers = servers(&pair);
    let mut src = pair.enter(Side::Client, || {
        netwatch::source::pcap::PcapSource::open(None).expect("opening the pcap source")
    });
    workload(&pair);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut events = Vec::new();
    while Instant::now() < deadline && events.len() < 18 {
        events.extend(src.take_dns_events().unwrap_or_default());
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(300));
    events.extend(src.take_dns_events().unwrap_or_default());
    let count = |p: Protocol, query: bool| {
        events
            .iter()
            .filter(|e| e.protocol == p && matches!(e.kind, DnsEventKind::Query { .. }) == query)
            .count()
    };
    assert_eq!(
        (
            count(Protocol::Udp, true),
            count(Protocol::Udp, false),
            count(Protocol::Tcp, true),
            count(Protocol::Tcp, false)
        ),
        (5, 5, 4, 4),
        "{events:#?}"
    );
    let nx = events
        .iter()
        .filter(|e| e.kind == DnsEventKind::Response { rcode: 3 })
        .count();
    assert_eq!(nx, 3);
    assert_eq!(src.stats().dns_malformed, 0);
    assert_eq!(src.stats().dns_tcp_desyncs, 0);
}
