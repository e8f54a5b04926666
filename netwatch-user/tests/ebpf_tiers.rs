//! The kernel collector on a real kernel: loads each hook tier, runs a
//! workload in separate processes (this test binary re-executed), and
//! checks that every byte written and read shows up exactly, per process and
//! per connection, with the right 5-tuple, for IPv4 and IPv6, TCP and UDP.
//!
//! Needs root. Run single-threaded (`--test-threads=1`): the kernel is
//! shared state. Which tiers must work is decided per kernel: a tier that the
//! kernel genuinely lacks is skipped with the reason printed; listing it in
//! `NETWATCH_REQUIRE_TIERS` (comma separated) turns that skip into a failure.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use common::tiers;
use tiers::*;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use netwatch::attribution::{Attributed, Attribution};
use netwatch::source::ebpf::tier::{self, Tier};
use netwatch::source::ebpf::{btf::SockOffsets, EbpfSource, LoadOptions, TierChoice};
use netwatch::source::SocketSource;
use netwatch_common::wire::ConnectionDetail;

// ---------- environment ----------

// ---------- the workload ----------

const TCP_SIZES: [usize; 3] = [1, 64 * 1024, 10_000_000];
const REPLY: usize = 4096;
const SHORT_SEND: usize = 1000;
const SHORT_REPLY: usize = 500;
const SHORT_CONNS: usize = 3;
const UDP_SIZES: [usize; 4] = [1, 512, 1400, 8000];

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Client side of one exchange: send `send` bytes, half-close, read the reply to EOF.
fn exchange(server: SocketAddr, send: usize) -> (SocketAddr, usize) {
    let mut s = TcpStream::connect(server).expect("connect to the test server");
    let local = s.local_addr().unwrap();
    s.write_all(&pattern(send)).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    (local, got.len())
}

/// Entry point of the child processes; a no-op unless re-executed as one.
#[test]
fn workload_child() {
    let Ok(role) = std::env::var("NETWATCH_WORKLOAD_ROLE") else {
        return;
    };
    let addr = |k: &str| -> SocketAddr { std::env::var(k).unwrap().parse().unwrap() };
    let mut out = std::io::stdout();
    match role.as_str() {
        // Long transfers over IPv4 and IPv6, plus UDP datagrams.
        "bulk" => {
            for server in [addr("TCP4"), addr("TCP6")] {
                for n in TCP_SIZES {
                    let (local, reply) = exchange(server, n);
                    assert_eq!(reply, REPLY);
                    writeln!(out, "TCP {local} {server} {n} {reply}").unwrap();
                }
            }
            for server in [addr("UDP4"), addr("UDP6")] {
                let bind = if server.is_ipv4() {
                    "127.0.0.1:0"
                } else {
                    "[::1]:0"
                };
                let u = UdpSocket::bind(bind).unwrap();
                for n in UDP_SIZES {
                    assert_eq!(u.send_to(&pattern(n), server).unwrap(), n);
                }
                writeln!(out, "UDP {} {server}", u.local_addr().unwrap()).unwrap();
            }
        }
        // Short-lived connections (closed before the collector reads) and one idle one.
        "short" => {
            let idle = TcpStream::connect(addr("IDLE")).unwrap();
            writeln!(out, "IDLE {}", idle.local_addr().unwrap()).unwrap();
            for _ in 0..SHORT_CONNS {
                let (local, reply) = exchange(addr("TCP6"), SHORT_SEND);
                writeln!(out, "TCP {local} {} {SHORT_SEND} {reply}", addr("TCP6")).unwrap();
            }
            writeln!(out, "DONE").unwrap();
            out.flush().unwrap();
            // Keep the idle connection open until the parent has read.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            drop(idle);
            return;
        }
        // One MPTCP connection to `$MPTCP`: send MPTCP_SEND, half-close,
        // read the reply to EOF.
        "mptcp-client" => {
            let server = addr("MPTCP");
            let mut s = mptcp::connect(server).expect("an MPTCP connect to the test server");
            let local = s.local_addr().unwrap();
            s.write_all(&pattern(mptcp::SEND)).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            drop(s);
            writeln!(out, "MPTCP {local} {server} {} {}", mptcp::SEND, got.len()).unwrap();
        }
        // One connected sender socket per receiver in `$UDPGSO` (comma
        // separated), each sending both GSO payloads.
        "udp-gso-sender" => {
            let list = std::env::var("UDPGSO").unwrap();
            for to in list.split(',') {
                let to: SocketAddr = to.parse().unwrap();
                let (local, sent) = udp_gso::send(to);
                writeln!(out, "GSO {local} {to} {sent}").unwrap();
            }
        }
        other => {
            if let Some(case) = cases::Case::from_role(other) {
                cases::child(case, &mut out);
            } else {
                panic!("unknown workload role {other}");
            }
        }
    }
    writeln!(out, "DONE").unwrap();
}

type Seen = Vec<(SocketAddr, SocketAddr, usize, usize)>;

struct Servers {
    tcp4: SocketAddr,
    tcp6: SocketAddr,
    udp4: SocketAddr,
    udp6: SocketAddr,
    idle: SocketAddr,
    threads: Vec<thread::JoinHandle<Seen>>,
    idle_thread: thread::JoinHandle<()>,
}

/// The parent's servers: each TCP connection is read to EOF, answered and
/// closed; UDP sockets receive the expected datagrams. The idle connection
/// has a listener of its own, which holds it without reading until the
/// client closes it, so no server needs a timing guess to tell them apart.
fn start_servers(tcp_conns: [usize; 2], udp_datagrams: usize) -> Servers {
    let mut threads = Vec::new();
    let mut addrs = Vec::new();
    for (bind, conns) in [("127.0.0.1:0", tcp_conns[0]), ("[::1]:0", tcp_conns[1])] {
        let l = TcpListener::bind(bind).unwrap();
        addrs.push(l.local_addr().unwrap());
        threads.push(thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..conns {
                let (mut s, peer) = l.accept().unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                let reply = if got.len() == SHORT_SEND {
                    SHORT_REPLY
                } else {
                    REPLY
                };
                s.write_all(&pattern(reply)).unwrap();
                seen.push((s.local_addr().unwrap(), peer, got.len(), reply));
            }
            seen
        }));
    }
    let idle = TcpListener::bind("127.0.0.1:0").unwrap();
    let idle_addr = idle.local_addr().unwrap();
    let idle_thread = thread::spawn(move || {
        let (mut s, _) = idle.accept().unwrap();
        let mut buf = [0u8; 1];
        // Returns when the client closes the connection: it sent nothing.
        assert_eq!(
            s.read(&mut buf).unwrap(),
            0,
            "the idle connection sends nothing"
        );
    });
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let u = UdpSocket::bind(bind).unwrap();
        addrs.push(u.local_addr().unwrap());
        threads.push(thread::spawn(move || {
            // Generous: under software emulation (QEMU TCG) the TCP
            // transfers before the datagrams can take minutes.
            u.set_read_timeout(Some(Duration::from_secs(240))).unwrap();
            let mut buf = vec![0u8; 65536];
            let mut seen = Vec::new();
            for _ in 0..udp_datagrams {
                let (n, peer) = u
                    .recv_from(&mut buf)
                    .expect("every UDP datagram arrives on loopback");
                seen.push((u.local_addr().unwrap(), peer, n, 0));
            }
            seen
        }));
    }
    Servers {
        tcp4: addrs[0],
        tcp6: addrs[1],
        udp4: addrs[2],
        udp6: addrs[3],
        idle: idle_addr,
        threads,
        idle_thread,
    }
}

/// A workload child that is killed if the test fails before reaping it,
/// so a failed run never leaves a process holding the guest open.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Worker {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn spawn_child(role: &str, s: &Servers) -> Worker {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "workload_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("NETWATCH_WORKLOAD_ROLE", role)
        .env("TCP4", s.tcp4.to_string())
        .env("TCP6", s.tcp6.to_string())
        .env("UDP4", s.udp4.to_string())
        .env("UDP6", s.udp6.to_string())
        .env("IDLE", s.idle.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-executing the test binary as a workload child");
    Worker(child)
}

/// Read a child's report lines up to DONE.
fn report(child: &mut Child) -> Vec<String> {
    let out = child.stdout.as_mut().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line.unwrap();
        if line == "DONE" {
            break;
        }
        if line.starts_with("TCP ") || line.starts_with("UDP ") || line.starts_with("IDLE ") {
            lines.push(line);
        }
    }
    lines
}

fn conn<'a>(
    a: &'a Attributed,
    proto: &str,
    local: SocketAddr,
    remote: Option<SocketAddr>,
) -> Vec<&'a ConnectionDetail> {
    let remote = remote.map_or("*:*".to_string(), |r| r.to_string());
    a.connections
        .iter()
        .filter(|c| {
            c.protocol == proto && c.local_addr == local.to_string() && c.remote_addr == remote
        })
        .collect()
}

fn proc_bytes(a: &Attributed, pid: u32) -> (u64, u64) {
    a.processes
        .iter()
        .filter(|p| p.pid == Some(pid))
        .fold((0, 0), |acc, p| (acc.0 + p.rx_bytes, acc.1 + p.tx_bytes))
}

/// Run the workload under `src` and check every number exactly.
fn exact_bytes(tier: Tier, mut src: EbpfSource) {
    let stats_fd = aya::sys::enable_stats(aya::sys::Stats::RunTime).ok();
    let mut attribution = Attribution::new(Instant::now());
    attribution.apply(&src.read().unwrap()); // baseline: nothing of ours yet

    let servers = start_servers(
        [TCP_SIZES.len(), TCP_SIZES.len() + SHORT_CONNS],
        UDP_SIZES.len(),
    );
    let mut bulk = spawn_child("bulk", &servers);
    let mut short = spawn_child("short", &servers);
    let bulk_lines = report(&mut bulk);
    let short_lines = report(&mut short);
    assert!(bulk.wait().unwrap().success(), "bulk workload child failed");
    let mut server_seen = Vec::new();
    let Servers {
        threads,
        idle_thread,
        idle: idle_server,
        ..
    } = servers;
    for t in threads {
        server_seen.extend(t.join().unwrap());
    }

    let batch = src.read().unwrap();
    let a = attribution.apply(&batch);
    short.stdin.take().unwrap().write_all(b"\n").unwrap();
    assert!(
        short.wait().unwrap().success(),
        "short workload child failed"
    );
    idle_thread.join().unwrap();

    let me = std::process::id();
    let (bulk_pid, short_pid) = (bulk.id(), short.id());
    let tcp_total: usize = TCP_SIZES.iter().sum::<usize>() * 2;
    let udp_each: u64 = UDP_SIZES.iter().sum::<usize>() as u64;
    let udp_total = udp_each as usize * 2;
    let bulk_replies = REPLY * TCP_SIZES.len() * 2;
    let (short_tx, short_rx) = (SHORT_CONNS * SHORT_SEND, SHORT_CONNS * SHORT_REPLY);

    // Per process, both ends of every loopback exchange.
    assert_eq!(
        proc_bytes(&a, bulk_pid),
        (bulk_replies as u64, (tcp_total + udp_total) as u64),
        "[{tier}] bulk child (pid {bulk_pid}) rx/tx"
    );
    assert_eq!(
        proc_bytes(&a, short_pid),
        (short_rx as u64, short_tx as u64),
        "[{tier}] short-lived child (pid {short_pid}) rx/tx: connections closed before the read count in full"
    );
    assert_eq!(
        proc_bytes(&a, me),
        (
            (tcp_total + udp_total + short_tx) as u64,
            (bulk_replies + short_rx) as u64
        ),
        "[{tier}] server (this process, pid {me}) rx/tx"
    );

    // Per connection, with the exact 5-tuple on both ends.
    let mut checked = 0;
    for line in bulk_lines.iter().chain(&short_lines) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local: SocketAddr = f[1].parse().unwrap();
        match f[0] {
            "TCP" => {
                let server: SocketAddr = f[2].parse().unwrap();
                let (sent, reply): (u64, u64) = (f[3].parse().unwrap(), f[4].parse().unwrap());
                let client = conn(&a, "TCP", local, Some(server));
                assert_eq!(
                    client.len(),
                    1,
                    "[{tier}] client socket {local}->{server}: {client:?}"
                );
                assert_eq!(
                    (client[0].tx_bytes, client[0].rx_bytes),
                    (Some(sent), Some(reply)),
                    "[{tier}] client {local}->{server}"
                );
                // The kernel's smoothed RTT, read at the socket's events.
                assert!(
                    client[0].kernel_rtt_us.is_some_and(|r| r > 0.0),
                    "[{tier}] client {local}->{server} kernel_rtt_us: {:?}",
                    client[0].kernel_rtt_us
                );
                let srv = conn(&a, "TCP", server, Some(local));
                assert_eq!(
                    srv.len(),
                    1,
                    "[{tier}] server socket {server}<-{local}: {srv:?}"
                );
                assert_eq!(
                    (srv[0].rx_bytes, srv[0].tx_bytes),
                    (Some(sent), Some(reply)),
                    "[{tier}] server {server}<-{local}"
                );
                assert_eq!(srv[0].pid, Some(me), "[{tier}] server socket owner");
                checked += 1;
            }
            "UDP" => {
                let server: SocketAddr = f[2].parse().unwrap();
                let client = conn(&a, "UDP", local, None);
                assert_eq!(
                    client.len(),
                    1,
                    "[{tier}] UDP client socket {local}: {:?}",
                    a.connections
                );
                assert_eq!(
                    client[0].tx_bytes,
                    Some(udp_each),
                    "[{tier}] UDP client {local}"
                );
                assert_eq!(client[0].pid, Some(bulk_pid), "[{tier}] UDP client owner");
                let srv = conn(&a, "UDP", server, None);
                assert_eq!(srv.len(), 1, "[{tier}] UDP server socket {server}");
                assert_eq!(
                    srv[0].rx_bytes,
                    Some(udp_each),
                    "[{tier}] UDP server {server}"
                );
                checked += 1;
            }
            "IDLE" => {
                let moved: u64 = conn(&a, "TCP", local, Some(idle_server))
                    .iter()
                    .map(|c| c.rx_bytes.unwrap_or(0) + c.tx_bytes.unwrap_or(0))
                    .sum();
                assert_eq!(moved, 0, "[{tier}] the idle connection moved no bytes");
            }
            other => panic!("unexpected report line {other}"),
        }
    }
    assert_eq!(
        checked,
        2 * TCP_SIZES.len() + SHORT_CONNS + 2,
        "[{tier}] every reported socket was checked"
    );
    assert_eq!(
        server_seen.len(),
        2 * TCP_SIZES.len() + SHORT_CONNS + 2 * UDP_SIZES.len()
    );
    assert_eq!(batch.lost_records, 0, "[{tier}] no record may be lost");

    // Per-event cost, from the kernel's own statistics.
    if stats_fd.is_some() {
        for (name, prog) in src
            .ebpf()
            .expect("loaded, not continued from pins")
            .programs()
        {
            if let Ok(info) = prog.info() {
                let (ns, cnt) = (info.run_time().as_nanos() as u64, info.run_count());
                if let Some(per_event) = ns.checked_div(cnt) {
                    println!(
                        "NETWATCH-BPFSTATS tier={tier} program={name} run_cnt={cnt} run_time_ns={ns} ns_per_event={per_event}"
                    );
                }
            }
        }
    }
    println!(
        "NETWATCH-TIER {tier}: exact per-process and per-connection bytes OK ({checked} sockets)"
    );
}

#[test]
fn exact_bytes_tracepoint_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Tracepoint) {
        exact_bytes(Tier::Tracepoint, src);
    }
}

#[test]
fn exact_bytes_kprobe_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Kprobe) {
        exact_bytes(Tier::Kprobe, src);
    }
}

#[test]
fn exact_bytes_fentry_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Fentry) {
        exact_bytes(Tier::Fentry, src);
    }
}

/// Every program of every tier passes the verifier wherever its hook exists.
#[test]
fn verifier_accepts_every_program() {
    let _serial = serial();
    require_root!("loads BPF programs");
    let offsets = SockOffsets::from_kernel().unwrap();
    let btf = aya::Btf::from_sys_fs().unwrap();
    let mut loaded = 0;
    for t in Tier::ALL {
        let mut ebpf = tier::open(t, &LoadOptions::default(), &offsets).unwrap();
        for hook in t.hooks(&offsets) {
            match tier::load_program(&mut ebpf, t, hook, &btf) {
                Ok(()) => {
                    println!("NETWATCH-VERIFIER {hook} ({t} tier): loaded");
                    loaded += 1;
                }
                Err(e) => {
                    let required = required_tiers().iter().any(|r| r == t.name());
                    match genuinely_unavailable(t, &e) {
                        Some(why) if !required => {
                            println!("NETWATCH-VERIFIER {hook} ({t} tier): SKIPPED, {why}")
                        }
                        _ => panic!("{hook} ({t} tier) was rejected: {e}"),
                    }
                }
            }
        }
    }
    assert!(
        loaded >= 3,
        "at least one tier and the lifecycle program must load"
    );
}

/// Field offsets of a tracepoint record, from its tracefs `format` file.
fn tracepoint_format(event: &str) -> (String, HashMap<String, usize>) {
    let dir = std::path::Path::new("/sys/kernel/tracing");
    if !dir.join("events").exists() {
        let _ = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status();
    }
    let format = std::fs::read_to_string(dir.join("events").join(event).join("format"))
        .unwrap_or_else(|e| panic!("tracefs format of {event}: {e}"));
    let offsets = format
        .lines()
        .filter_map(|l| {
            let decl = l.split("field:").nth(1)?.split(';').next()?;
            let name = decl
                .split_whitespace()
                .last()?
                .split('[')
                .next()?
                .to_string();
            let off = l.split("offset:").nth(1)?.split(';').next()?.parse().ok()?;
            Some((name, off))
        })
        .collect();
    (format, offsets)
}

/// The lifecycle programs' hard-coded field offsets match this kernel's formats.
#[test]
fn lifecycle_tracepoint_formats_match() {
    require_root!("loads BPF programs");
    let (format, offsets) = tracepoint_format("sock/inet_sock_set_state");
    for (field, want) in [
        ("skaddr", 8),
        ("newstate", 20),
        ("sport", 24),
        ("dport", 26),
        ("family", 28),
        ("protocol", 30),
        ("saddr", 32),
        ("daddr", 36),
        ("saddr_v6", 40),
        ("daddr_v6", 56),
    ] {
        assert_eq!(
            offsets.get(field),
            Some(&want),
            "inet_sock_set_state field {field}:\n{format}"
        );
    }
    let (format, offsets) = tracepoint_format("tcp/tcp_destroy_sock");
    assert_eq!(
        offsets.get("skaddr"),
        Some(&8),
        "tcp_destroy_sock skaddr:\n{format}"
    ); // The TCP events program's fixed offsets (`oldstate` besides the above).
    let (format, offsets) = tracepoint_format("sock/inet_sock_set_state");
    assert_eq!(offsets.get("oldstate"), Some(&16), "{format}");
    let (format, offsets) = tracepoint_format("tcp/tcp_receive_reset");
    for (field, want) in [
        ("skaddr", 8),
        ("sport", 16),
        ("dport", 18),
        ("family", 20),
        ("saddr", 22),
        ("daddr", 26),
        ("saddr_v6", 30),
        ("daddr_v6", 46),
    ] {
        assert_eq!(
            offsets.get(field),
            Some(&want),
            "tcp_receive_reset field {field}:\n{format}"
        );
    }
    // The retransmit program's (`netwatch-ebpf/src/retrans.rs`).
    let (format, offsets) = tracepoint_format("tcp/tcp_retransmit_skb");
    for (field, want) in [("skaddr", 16), ("state", 24), ("family", 32)] {
        assert_eq!(
            offsets.get(field),
            Some(&want),
            "tcp_retransmit_skb field {field}:\n{format}"
        );
    }
    // `tcp_send_reset`'s are read from the format at load: it must be one
    // of the two known layouts.
    let (format, _) = tracepoint_format("tcp/tcp_send_reset");
    let parsed = netwatch::source::ebpf::tcp_events::SendResetFormat::parse(&format);
    assert_ne!(
        parsed.layout,
        netwatch_common::send_reset::NONE,
        "unknown tcp_send_reset layout:\n{format}"
    );
    assert_eq!(
        parsed.sees_closed_ports(),
        kernel_traces_closed_port_resets(),
        "{format}"
    );
}

/// Load the best tier this kernel allows with custom map sizes, or skip.
fn load_best_with(max_sockets: u32, ringbuf_bytes: u32, drain_thread: bool) -> Option<EbpfSource> {
    if !common::root_or_skip("loads BPF programs") {
        return None;
    }
    let opts = LoadOptions {
        tier: TierChoice::Auto,
        max_sockets,
        ringbuf_bytes,
        drain_thread,
        pin: None,
    };
    Some(EbpfSource::load(&opts).unwrap_or_else(|e| panic!("no tier loads on this kernel: {e}")))
}

/// A ring buffer too small for the closed-socket records costs memory,
/// never bytes: the records that do not fit stay in the map, marked
/// destroyed, and are read from there.
#[test]
fn full_ring_buffer_loses_no_bytes() {
    let _serial = serial();
    // One page holds ~30 records; 200 connections close between two reads,
    // and the ring is drained only on read, so it must overflow.
    let Some(mut src) = load_best_with(65536, 4096, false) else {
        return;
    };
    let mut attribution = Attribution::new(Instant::now());
    attribution.apply(&src.read().unwrap());
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    const CONNS: usize = 200;
    const EACH: usize = 3000;
    let server = thread::spawn(move || {
        for _ in 0..CONNS {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            assert_eq!(got.len(), EACH);
        }
    });
    for _ in 0..CONNS {
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(&pattern(EACH)).unwrap();
    }
    server.join().unwrap();
    let batch = src.read().unwrap();
    let a = attribution.apply(&batch);
    let k = src.kernel_counters();
    assert!(
        k.ringbuf_drops > 0,
        "the test must overflow the ring buffer: {k:?}"
    );
    let want = (CONNS * EACH) as u64;
    assert_eq!(
        proc_bytes(&a, std::process::id()),
        (want, want),
        "every byte despite {} dropped records",
        k.ringbuf_drops
    );
    assert_eq!(batch.lost_records, 0);
    println!(
        "NETWATCH-TIER {}: {} records overflowed the ring buffer, bytes exact",
        src.tier(),
        k.ringbuf_drops
    );
}

/// Sockets evicted from a full LRU map are counted as lost, not hidden.
#[test]
fn lru_evictions_are_counted() {
    let _serial = serial();
    let Some(mut src) = load_best_with(16, 256 * 1024, true) else {
        return;
    };
    src.read().unwrap();
    let target = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = target.local_addr().unwrap();
    let senders: Vec<UdpSocket> = (0..200)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for s in &senders {
        s.send_to(b"x", to).unwrap();
    }
    let batch = src.read().unwrap();
    assert!(
        batch.lost_records > 0,
        "200 sockets through a 16-entry map must report evictions: {:?}",
        src.kernel_counters()
    );
    println!(
        "NETWATCH-TIER {}: {} LRU evictions reported",
        src.tier(),
        batch.lost_records
    );
}

// ---------- the cases real servers hit (issue 7) ----------

/// Each case runs in a child process (the test binary re-executed) that
/// moves a known number of bytes through one kernel path and prints, per
/// process it used, `EXPECT <pid> <rx> <tx>` with what its calls returned.
/// The collector's per-process bytes over the reads that follow must equal
/// those exactly, with nothing lost.
mod cases {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::thread;
    use std::time::Duration;

    use super::pattern;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Case {
        ParentChild,
        WaitAll,
        RcvLowat,
        PeekThenRead,
        Sendfile,
        Splice,
        ReadvWritev,
        Mmsg,
        UdpTruncPeek,
        Churn,
        /// Not in [`Case::ALL`]: 300 connections open at once (600 sockets),
        /// for a collector whose map holds fewer.
        ManyOpen,
        /// Not in [`Case::ALL`]: sends 5,000 UDP bytes to `$TARGET`, then
        /// exits when told on stdin.
        UdpExit,
    }

    impl Case {
        pub const ALL: [Case; 10] = [
            Case::ParentChild,
            Case::WaitAll,
            Case::RcvLowat,
            Case::PeekThenRead,
            Case::Sendfile,
            Case::Splice,
            Case::ReadvWritev,
            Case::Mmsg,
            Case::UdpTruncPeek,
            Case::Churn,
        ];
        pub fn role(self) -> String {
            format!("case-{self:?}")
        }
        pub fn from_role(role: &str) -> Option<Case> {
            Case::ALL
                .into_iter()
                .chain([Case::ManyOpen, Case::UdpExit])
                .find(|c| c.role() == role)
        }
    }

    /// A connected loopback TCP pair (client, server side).
    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    fn check(ret: isize, what: &str) -> usize {
        assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
        ret as usize
    }

    /// Write `total` bytes in 4 KiB pieces every 2 ms.
    fn trickle(mut w: TcpStream, total: usize) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let chunk = pattern(4096);
            let mut sent = 0;
            while sent < total {
                let n = chunk.len().min(total - sent);
                w.write_all(&chunk[..n]).unwrap();
                sent += n;
                thread::sleep(Duration::from_millis(2));
            }
        })
    }

    /// Read `n` bytes from `r` with plain reads.
    fn drain(mut r: TcpStream, n: usize) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut got = 0;
            while got < n {
                let k = r.read(&mut buf).unwrap();
                assert!(k > 0, "early EOF");
                got += k;
            }
        })
    }

    /// Scale for slow guests (QEMU TCG).
    pub fn guest() -> bool {
        std::env::var_os("NETWATCH_GUEST").is_some()
    }

    pub fn child(case: Case, out: &mut impl Write) {
        let me = std::process::id();
        let mut expect = |pid: u32, rx: usize, tx: usize| {
            writeln!(out, "EXPECT {pid} {rx} {tx}").unwrap();
        };
        match case {
            Case::ParentChild => {
                // One connected socket written and read by this process and
                // by its forked child in the same interval.
                let (c, s) = pair();
                let (q_tx, q_rx, p_tx, p_back) =
                    (700_009usize, 200_003usize, 300_001usize, 200_003usize);
                // SAFETY: the child only writes/reads sockets and _exits.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork");
                if pid == 0 {
                    let mut c2 = &c;
                    let ok = c2.write_all(&pattern(q_tx)).is_ok() && {
                        let mut buf = vec![0u8; q_rx];
                        c2.read_exact(&mut buf).is_ok()
                    };
                    // SAFETY: leaving the forked child without running destructors.
                    unsafe { libc::_exit(if ok { 0 } else { 1 }) };
                }
                let reader = drain(s.try_clone().unwrap(), q_tx + p_tx);
                (&c).write_all(&pattern(p_tx)).unwrap();
                reader.join().unwrap();
                (&s).write_all(&pattern(p_back)).unwrap();
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                assert_eq!(status, 0, "forked child failed");
                expect(pid as u32, q_rx, q_tx);
                expect(me, q_tx + p_tx, p_tx + p_back);
            }
            Case::WaitAll => {
                let total = 256 * 1024;
                let (c, s) = pair();
                let w = trickle(c, total);
                let mut buf = vec![0u8; total];
                // SAFETY: recv into our buffer of `total` bytes.
                let n = check(
                    unsafe {
                        libc::recv(
                            s.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            total,
                            libc::MSG_WAITALL,
                        )
                    },
                    "recv(MSG_WAITALL)",
                );
                assert_eq!(n, total);
                w.join().unwrap();
                expect(me, n, total);
            }
            Case::RcvLowat => {
                let total = 256 * 1024;
                let (c, mut s) = pair();
                let lowat: libc::c_int = 64 * 1024;
                // SAFETY: setsockopt with an int option value.
                let r = unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVLOWAT,
                        (&lowat as *const libc::c_int).cast(),
                        4,
                    )
                };
                assert_eq!(r, 0, "SO_RCVLOWAT");
                let w = trickle(c, total);
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                while got < total {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0);
                    got += n;
                }
                w.join().unwrap();
                expect(me, got, total);
            }
            Case::PeekThenRead => {
                let total = 300_007;
                let (mut c, s) = pair();
                let w = thread::spawn(move || c.write_all(&pattern(total)).unwrap());
                let mut buf = vec![0u8; 8192];
                let mut got = 0;
                while got < total {
                    // SAFETY: recv into our buffer (100 of its bytes).
                    check(
                        unsafe {
                            libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), 100, libc::MSG_PEEK)
                        },
                        "recv(MSG_PEEK)",
                    );
                    got += (&s).read(&mut buf).unwrap();
                }
                w.join().unwrap();
                expect(me, got, total);
            }
            Case::Sendfile => {
                let total = 2_000_003;
                let mut f = tempfile::tempfile().unwrap();
                f.write_all(&pattern(total)).unwrap();
                let (c, s) = pair();
                let r = drain(s, total);
                let mut off: libc::off_t = 0;
                let mut sent = 0;
                while sent < total {
                    // SAFETY: sendfile between two fds we own.
                    sent += check(
                        unsafe {
                            libc::sendfile(c.as_raw_fd(), f.as_raw_fd(), &mut off, total - sent)
                        },
                        "sendfile",
                    );
                }
                r.join().unwrap();
                expect(me, total, sent);
            }
            Case::Splice => {
                // splice a pipe into one socket (tx) and the peer socket
                // into a pipe (rx).
                let total = 1_000_003;
                let (c, s) = pair();
                let pipe = || {
                    let mut fds = [0; 2];
                    // SAFETY: pipe fills two fds.
                    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
                    fds
                };
                let (tx_pipe, rx_pipe) = (pipe(), pipe());
                let sfd = s.as_raw_fd();
                let reader = thread::spawn(move || {
                    let mut got = 0;
                    let mut buf = vec![0u8; 65536];
                    while got < total {
                        // SAFETY: splice socket -> pipe, then empty the pipe.
                        let n = check(
                            unsafe {
                                libc::splice(
                                    sfd,
                                    std::ptr::null_mut(),
                                    rx_pipe[1],
                                    std::ptr::null_mut(),
                                    65536,
                                    0,
                                )
                            },
                            "splice read",
                        );
                        assert!(n > 0);
                        let mut left = n;
                        while left > 0 {
                            // SAFETY: read from our pipe into our buffer.
                            left -= check(
                                unsafe {
                                    libc::read(rx_pipe[0], buf.as_mut_ptr().cast(), left.min(65536))
                                },
                                "pipe read",
                            );
                        }
                        got += n;
                    }
                    got
                });
                let data = pattern(65536);
                let mut sent = 0;
                while sent < total {
                    let k = data.len().min(total - sent);
                    // SAFETY: write into our pipe from our buffer.
                    let w = check(
                        unsafe { libc::write(tx_pipe[1], data.as_ptr().cast(), k) },
                        "pipe write",
                    );
                    let mut left = w;
                    while left > 0 {
                        // SAFETY: splice pipe -> socket.
                        left -= check(
                            unsafe {
                                libc::splice(
                                    tx_pipe[0],
                                    std::ptr::null_mut(),
                                    c.as_raw_fd(),
                                    std::ptr::null_mut(),
                                    left,
                                    0,
                                )
                            },
                            "splice write",
                        );
                    }
                    sent += w;
                }
                let got = reader.join().unwrap();
                expect(me, got, sent);
            }
            Case::ReadvWritev => {
                let parts = [1000usize, 30_000, 7];
                let rounds = 20;
                let (c, s) = pair();
                let bufs: Vec<Vec<u8>> = parts.iter().map(|&n| pattern(n)).collect();
                let total = parts.iter().sum::<usize>() * rounds;
                let w = thread::spawn(move || {
                    let mut sent = 0;
                    for _ in 0..rounds {
                        let iov: Vec<libc::iovec> = bufs
                            .iter()
                            .map(|b| libc::iovec {
                                iov_base: b.as_ptr() as *mut _,
                                iov_len: b.len(),
                            })
                            .collect();
                        // SAFETY: writev from our buffers.
                        let n = check(
                            unsafe { libc::writev(c.as_raw_fd(), iov.as_ptr(), 3) },
                            "writev",
                        );
                        assert_eq!(
                            n,
                            iov.iter().map(|v| v.iov_len).sum::<usize>(),
                            "short writev"
                        );
                        sent += n;
                    }
                    sent
                });
                let mut a = vec![0u8; 500];
                let mut b = vec![0u8; 20_000];
                let mut got = 0;
                while got < total {
                    let iov = [
                        libc::iovec {
                            iov_base: a.as_mut_ptr().cast(),
                            iov_len: a.len(),
                        },
                        libc::iovec {
                            iov_base: b.as_mut_ptr().cast(),
                            iov_len: b.len(),
                        },
                    ];
                    // SAFETY: readv into our buffers.
                    let n = check(
                        unsafe { libc::readv(s.as_raw_fd(), iov.as_ptr(), 2) },
                        "readv",
                    );
                    assert!(n > 0);
                    got += n;
                }
                let sent = w.join().unwrap();
                expect(me, got, sent);
            }
            Case::Mmsg => {
                let sizes = [1usize, 512, 1400, 8000, 3, 9000];
                let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                tx.connect(rx.local_addr().unwrap()).unwrap();
                let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| pattern(n)).collect();
                let mut iovs: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    })
                    .collect();
                // SAFETY: zeroed mmsghdr is valid; fields set below.
                let mut msgs: Vec<libc::mmsghdr> = (0..sizes.len())
                    .map(|_| unsafe { std::mem::zeroed() })
                    .collect();
                for (m, v) in msgs.iter_mut().zip(iovs.iter_mut()) {
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                }
                // SAFETY: sendmmsg of our messages.
                let n = check(
                    unsafe {
                        libc::sendmmsg(tx.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0)
                    } as isize,
                    "sendmmsg",
                );
                assert_eq!(n, sizes.len());
                let sent: usize = msgs.iter().map(|m| m.msg_len as usize).sum();
                let mut rbufs: Vec<Vec<u8>> = sizes.iter().map(|_| vec![0u8; 65536]).collect();
                let mut riovs: Vec<libc::iovec> = rbufs
                    .iter_mut()
                    .map(|b| libc::iovec {
                        iov_base: b.as_mut_ptr().cast(),
                        iov_len: b.len(),
                    })
                    .collect();
                // SAFETY: as above.
                let mut rmsgs: Vec<libc::mmsghdr> = (0..sizes.len())
                    .map(|_| unsafe { std::mem::zeroed() })
                    .collect();
                for (m, v) in rmsgs.iter_mut().zip(riovs.iter_mut()) {
                    m.msg_hdr.msg_iov = v;
                    m.msg_hdr.msg_iovlen = 1;
                }
                let mut got = 0;
                let mut datagrams = 0;
                while datagrams < sizes.len() {
                    // SAFETY: recvmmsg into our buffers.
                    let k = check(
                        unsafe {
                            libc::recvmmsg(
                                rx.as_raw_fd(),
                                rmsgs.as_mut_ptr(),
                                (sizes.len() - datagrams) as u32,
                                libc::MSG_WAITFORONE,
                                std::ptr::null_mut(),
                            )
                        } as isize,
                        "recvmmsg",
                    );
                    got += rmsgs[..k].iter().map(|m| m.msg_len as usize).sum::<usize>();
                    datagrams += k;
                }
                expect(me, got, sent);
            }
            Case::UdpTruncPeek => {
                // recv(MSG_PEEK) then recv(MSG_TRUNC) into a short buffer:
                // the call returns the datagram's full length, which is what counts.
                let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
                let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
                let sizes = [5000usize, 70, 1];
                let mut sent = 0;
                for n in sizes {
                    sent += tx.send_to(&pattern(n), rx.local_addr().unwrap()).unwrap();
                }
                let mut buf = [0u8; 100];
                let mut got = 0;
                for _ in sizes {
                    // SAFETY: recv into our 100-byte buffer.
                    check(
                        unsafe {
                            libc::recv(rx.as_raw_fd(), buf.as_mut_ptr().cast(), 10, libc::MSG_PEEK)
                        },
                        "recv(MSG_PEEK)",
                    );
                    // SAFETY: as above.
                    got += check(
                        unsafe {
                            libc::recv(
                                rx.as_raw_fd(),
                                buf.as_mut_ptr().cast(),
                                100,
                                libc::MSG_TRUNC,
                            )
                        },
                        "recv(MSG_TRUNC)",
                    );
                }
                assert_eq!(got, sent, "MSG_TRUNC returns full lengths");
                expect(me, got, sent);
            }
            Case::Churn => {
                // Short connections (both ends here): connect, 100 bytes
                // up, 50 down, the server closes first (as HTTP servers do,
                // so time-wait stays on the server's side and the client's
                // ephemeral ports never run out), then the client.
                // 5,000 a second for 10 s (100 a second for 3 s in a TCG guest).
                let (rate, secs) = if guest() {
                    (100.0, 3.0)
                } else {
                    (5000.0, 10.0)
                };
                let conns = (rate * secs) as usize;
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = l.local_addr().unwrap();
                let server = thread::spawn(move || {
                    for _ in 0..conns {
                        let (mut s, _) = l.accept().unwrap();
                        let mut b = [0u8; 100];
                        s.read_exact(&mut b).unwrap();
                        s.write_all(&b[..50]).unwrap();
                    }
                });
                let started = std::time::Instant::now();
                for i in 0..conns {
                    let due = Duration::from_secs_f64(i as f64 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        thread::sleep(wait);
                    }
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.write_all(&pattern(100)).unwrap();
                    let mut b = [0u8; 51];
                    c.read_exact(&mut b[..50]).unwrap();
                    // EOF: the server has closed; now the client does.
                    assert_eq!(c.read(&mut b).unwrap(), 0, "server closes first");
                }
                server.join().unwrap();
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "NETWATCH-CHURN {conns} connections in {secs:.2} s ({:.0}/s)",
                    conns as f64 / secs
                );
                expect(me, conns * 150, conns * 150);
            }
            Case::ManyOpen => {
                let n = 300;
                let pairs: Vec<(TcpStream, TcpStream)> = (0..n).map(|_| pair()).collect();
                for (c, s) in &pairs {
                    let mut c = c;
                    let mut s = s;
                    c.write_all(&pattern(1000)).unwrap();
                    let mut b = vec![0u8; 1000];
                    s.read_exact(&mut b).unwrap();
                }
                expect(me, n * 1000, n * 1000);
            }
            Case::UdpExit => {
                let target: std::net::SocketAddr =
                    std::env::var("TARGET").unwrap().parse().unwrap();
                let u = UdpSocket::bind("127.0.0.1:0").unwrap();
                let mut sent = 0;
                for _ in 0..5 {
                    sent += u.send_to(&pattern(1000), target).unwrap();
                }
                expect(me, 0, sent);
                writeln!(out, "DONE").unwrap();
                out.flush().unwrap();
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            }
        }
    }
}

/// Per-process (rx, tx) the child reported.
fn expectations(lines: &[String]) -> Vec<(u32, u64, u64)> {
    lines
        .iter()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"EXPECT")).then(|| {
                (
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )
            })
        })
        .collect()
}

/// Run `case` in a child and compare its processes' bytes over the reads
/// that follow. Returns an error line instead of panicking so one tier's
/// table lists every case.
fn run_case(
    tier: Tier,
    case: cases::Case,
    src: &mut EbpfSource,
    attribution: &mut Attribution,
    blind: bool,
) -> Result<String, String> {
    let lost_before = src.read().unwrap().lost_records;
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "workload_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("NETWATCH_WORKLOAD_ROLE", case.role())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-executing the test binary as a workload child");
    let mut child = Worker(child);
    let stdout = child.stdout.take().unwrap();
    // To EOF: the harness prints its summary after DONE.
    let lines = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // Read at a realistic pace while the workload runs (churn happens
    // between and during reads), then until the bytes are in (final records
    // come through the drain thread), then once more: it must add nothing.
    let mut got: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut lost = 0;
    let mut read = |got: &mut HashMap<u32, (u64, u64)>| {
        thread::sleep(Duration::from_millis(200));
        let batch = src.read().unwrap();
        let a = attribution.apply(&batch);
        for p in &a.processes {
            if let Some(pid) = p.pid {
                let e = got.entry(pid).or_default();
                e.0 += p.rx_bytes;
                e.1 += p.tx_bytes;
            }
        }
        batch.lost_records - lost_before
    };
    while child.try_wait().unwrap().is_none() {
        lost = read(&mut got);
    }
    let lines = lines.join().unwrap();
    if !child.wait().unwrap().success() {
        return Err(format!("workload child failed: {lines:?}"));
    }
    let mut want = expectations(&lines);
    if blind {
        for w in &mut want {
            w.1 = 0;
        }
    }
    for round in 0..30 {
        lost = read(&mut got);
        let done = want
            .iter()
            .all(|&(pid, rx, tx)| got.get(&pid).is_some_and(|g| g.0 >= rx && g.1 >= tx));
        if done && round > 0 {
            break;
        }
    }
    let mut problems = Vec::new();
    for &(pid, rx, tx) in &want {
        let g = got.get(&pid).copied().unwrap_or_default();
        if g != (rx, tx) {
            problems.push(format!(
                "pid {pid}: counted (rx, tx) {g:?}, moved ({rx}, {tx})"
            ));
        }
    }
    if lost != 0 {
        problems.push(format!("lost_records +{lost}"));
    }
    if want.is_empty() {
        problems.push("the child reported nothing".into());
    }
    if problems.is_empty() {
        Ok(format!("exact {want:?}"))
    } else {
        Err(format!("[{tier}] {}", problems.join("; ")))
    }
}

/// What `tier` cannot see of `case`, with the kernel function that explains it.
fn expected_blind_spot(tier: Tier, case: cases::Case) -> Option<&'static str> {
    (tier == Tier::Tracepoint && case == cases::Case::Splice).then_some(
        "splice from a socket calls tcp_splice_read, not sock_recvmsg, so sock:sock_recv_length never fires; counted as 0, never wrong",
    )
}

fn all_cases(tier: Tier, mut src: EbpfSource) {
    let mut attribution = Attribution::new(Instant::now());
    attribution.apply(&src.read().unwrap());
    let mut failures = Vec::new();
    for case in cases::Case::ALL {
        let blind = expected_blind_spot(tier, case);
        let result = run_case(tier, case, &mut src, &mut attribution, blind.is_some());
        match (&result, blind) {
            (Ok(detail), None) => println!("NETWATCH-CASE {tier} {case:?}: {detail}"),
            (Ok(detail), Some(why)) => println!(
                "NETWATCH-CASE {tier} {case:?}: receive side NOT SEEN ({why}); rest {detail}"
            ),
            (Err(e), _) => {
                println!("NETWATCH-CASE {tier} {case:?}: FAILED {e}");
                failures.push(format!("{case:?}: {e}"));
            }
        }
    }
    match udp_sender_exits(tier, &mut src, &mut attribution) {
        Ok(d) => println!("NETWATCH-CASE {tier} UdpSenderExits: {d}"),
        Err(e) => {
            println!("NETWATCH-CASE {tier} UdpSenderExits: FAILED {e}");
            failures.push(format!("UdpSenderExits: {e}"));
        }
    }
    drop(src);
    match past_capacity(tier) {
        Ok(d) => println!("NETWATCH-CASE {tier} PastCapacity: {d}"),
        Err(e) => {
            println!("NETWATCH-CASE {tier} PastCapacity: FAILED {e}");
            failures.push(format!("PastCapacity: {e}"));
        }
    }
    assert!(failures.is_empty(), "[{tier}] {failures:#?}");
}

/// A UDP sender that exits: its bytes counted once, and gone from
/// processes and connections by the second read after its exit.
fn udp_sender_exits(
    tier: Tier,
    src: &mut EbpfSource,
    attribution: &mut Attribution,
) -> Result<String, String> {
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let lost_before = src.read().unwrap().lost_records;
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "workload_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("NETWATCH_WORKLOAD_ROLE", cases::Case::UdpExit.role())
        .env("TARGET", rx.local_addr().unwrap().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-executing the test binary as a workload child");
    let mut child = Worker(child);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 || line.trim() == "DONE" {
            break;
        }
        lines.push(line.trim().to_string());
    }
    let want = expectations(&lines);
    let &[(pid, _, sent)] = want.as_slice() else {
        return Err(format!("child reported {lines:?}"));
    };
    let mut buf = [0u8; 2000];
    for _ in 0..5 {
        rx.recv_from(&mut buf).unwrap();
    }
    let mut tx = 0;
    let row = |a: &Attributed| {
        let p = a.processes.iter().any(|p| p.pid == Some(pid));
        let c = a.connections.iter().any(|c| c.pid == Some(pid));
        (p, c)
    };
    // While it lives: listed, with its socket.
    thread::sleep(Duration::from_millis(200));
    let a = attribution.apply(&src.read().unwrap());
    tx += proc_bytes(&a, pid).1;
    let alive = row(&a);
    child.stdin.take().unwrap().write_all(b"\n").unwrap();
    if !child.wait().unwrap().success() {
        return Err("udp child failed".into());
    }
    let mut after = Vec::new();
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(200));
        let batch = src.read().unwrap();
        let a = attribution.apply(&batch);
        tx += proc_bytes(&a, pid).1;
        after.push((row(&a), batch.lost_records - lost_before));
    }
    let mut problems = Vec::new();
    if alive != (true, true) {
        problems.push(format!(
            "while alive: (in processes, in connections) = {alive:?}"
        ));
    }
    if tx != sent {
        problems.push(format!("tx counted {tx}, sent {sent}"));
    }
    // By the second read after its exit, and from then on: gone.
    if after[1].0 != (false, false) || after[2].0 != (false, false) {
        problems.push(format!(
            "after exit (processes, connections) per read: {after:?}"
        ));
    }
    if after[2].1 != 0 {
        problems.push(format!("lost_records +{}", after[2].1));
    }
    if problems.is_empty() {
        Ok(format!(
            "exact: pid {pid} tx {tx}; after exit {:?}",
            after.iter().map(|a| a.0).collect::<Vec<_>>()
        ))
    } else {
        Err(format!("[{tier}] {}", problems.join("; ")))
    }
}

/// More sockets at once than the map holds: the loss is counted, and what
/// is counted is never more than what moved.
fn past_capacity(tier: Tier) -> Result<String, String> {
    let opts = LoadOptions {
        tier: TierChoice::Only(tier),
        max_sockets: 64,
        ..LoadOptions::default()
    };
    let mut src = EbpfSource::load(&opts).map_err(|e| e.to_string())?;
    let mut attribution = Attribution::new(Instant::now());
    attribution.apply(&src.read().unwrap());
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "workload_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("NETWATCH_WORKLOAD_ROLE", cases::Case::ManyOpen.role())
        .stdout(Stdio::piped())
        .output()
        .map_err(|e| e.to_string())?;
    let lines: Vec<String> = String::from_utf8_lossy(&child.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let want = expectations(&lines);
    let &[(pid, rx, tx)] = want.as_slice() else {
        return Err(format!("child reported {lines:?}"));
    };
    let mut got = (0, 0);
    let mut lost = 0;
    for _ in 0..3 {
        thread::sleep(Duration::from_millis(200));
        let batch = src.read().unwrap();
        lost = batch.lost_records;
        let (r, t) = proc_bytes(&attribution.apply(&batch), pid);
        got.0 += r;
        got.1 += t;
    }
    if lost > 0 && got.0 <= rx && got.1 <= tx {
        Ok(format!(
            "600 sockets through a 64-entry map: lost_records {lost}, counted (rx, tx) {got:?} of ({rx}, {tx})"
        ))
    } else {
        Err(format!(
            "[{tier}] lost_records {lost}, counted (rx, tx) {got:?} of ({rx}, {tx})"
        ))
    }
}

#[test]
fn cases_tracepoint_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Tracepoint) {
        all_cases(Tier::Tracepoint, src);
    }
}

#[test]
fn cases_kprobe_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Kprobe) {
        all_cases(Tier::Kprobe, src);
    }
}

#[test]
fn cases_fentry_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Fentry) {
        all_cases(Tier::Fentry, src);
    }
}

// ---------- MPTCP (issue 21) ----------

/// MPTCP sockets (`socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP)`): the
/// application's calls go to `mptcp_sendmsg`/`mptcp_recvmsg` on the MPTCP
/// socket, and its TCP subflows are driven inside the kernel
/// (`tcp_sendmsg_locked`, the subflow's receive queue), never through
/// `tcp_sendmsg`/`tcp_recvmsg`.
mod mptcp {
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::os::fd::{FromRawFd, OwnedFd};

    /// `IPPROTO_MPTCP`.
    pub const IPPROTO_MPTCP: i32 = 262;
    /// Bytes the client sends, and the server's reply (odd sizes: no
    /// multiple of any buffer).
    pub const SEND: usize = 3_000_017;
    pub const REPLY: usize = 1_000_003;

    /// A fresh IPv4 MPTCP stream socket.
    fn socket() -> std::io::Result<OwnedFd> {
        // SAFETY: plain syscall; the fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, IPPROTO_MPTCP) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn sockaddr(addr: SocketAddr) -> libc::sockaddr_in {
        let SocketAddr::V4(a) = addr else {
            panic!("IPv4 only: {addr}")
        };
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }

    fn check(ret: i32, what: &str) -> std::io::Result<()> {
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(e.kind(), format!("{what}: {e}")));
        }
        Ok(())
    }

    /// Why this kernel has no MPTCP, if it has none: `net.mptcp.enabled`
    /// off, or the socket call refused (`EPROTONOSUPPORT` without
    /// `CONFIG_MPTCP`, `EINVAL`/`ENOPROTOOPT` on older kernels).
    pub fn unavailable() -> Option<String> {
        if let Ok(v) = std::fs::read_to_string("/proc/sys/net/mptcp/enabled") {
            if v.trim() == "0" {
                return Some("net.mptcp.enabled is 0".into());
            }
        }
        match socket() {
            Ok(_) => None,
            Err(e)
                if [libc::EPROTONOSUPPORT, libc::EINVAL, libc::ENOPROTOOPT]
                    .contains(&e.raw_os_error().unwrap_or(0)) =>
            {
                Some(format!(
                    "socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP) failed: {e}"
                ))
            }
            Err(e) => panic!("socket(AF_INET, SOCK_STREAM, IPPROTO_MPTCP): {e}"),
        }
    }

    /// An MPTCP listener on 127.0.0.1, port chosen by the kernel.
    pub fn listen() -> std::io::Result<TcpListener> {
        use std::os::fd::AsRawFd;
        let fd = socket()?;
        with_addr(&fd, "127.0.0.1:0".parse().unwrap(), libc::bind, "bind")?;
        // SAFETY: plain syscall on our fd.
        check(unsafe { libc::listen(fd.as_raw_fd(), 8) }, "listen")?;
        Ok(TcpListener::from(fd))
    }

    /// An MPTCP connection to `server`.
    pub fn connect(server: SocketAddr) -> std::io::Result<TcpStream> {
        let fd = socket()?;
        with_addr(&fd, server, libc::connect, "connect")?;
        Ok(TcpStream::from(fd))
    }

    /// `bind` or `connect` of `fd` to the IPv4 address `addr`.
    fn with_addr(
        fd: &std::os::fd::OwnedFd,
        addr: SocketAddr,
        call: unsafe extern "C" fn(
            libc::c_int,
            *const libc::sockaddr,
            libc::socklen_t,
        ) -> libc::c_int,
        name: &str,
    ) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let sa = sockaddr(addr);
        // SAFETY: sa is a valid sockaddr_in of the size passed; `call` is
        // bind(2) or connect(2), which only read it.
        check(
            unsafe {
                call(
                    fd.as_raw_fd(),
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of_val(&sa) as libc::socklen_t,
                )
            },
            name,
        )
    }

    /// The socket's protocol (`SO_PROTOCOL`).
    pub fn protocol(s: &impl std::os::fd::AsRawFd) -> i32 {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for the kernel to write.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PROTOCOL,
                &mut v as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(r, 0, "SO_PROTOCOL: {}", std::io::Error::last_os_error());
        v
    }
}

/// One MPTCP connection on loopback, client in a child process: the
/// client sends [`mptcp::SEND`] bytes and reads [`mptcp::REPLY`] back; the
/// server (this process) the reverse. Both processes' rows and both
/// connection rows (listed as `TCP`: MPTCP is TCP on the wire) must show
/// exactly those bytes, counted once (the subflows' own TCP sockets never
/// add to them), with no RTT of their own, and nothing may be lost; once
/// both ends are closed, neither is listed any more.
fn mptcp_exact(tier: Tier, mut src: EbpfSource) {
    let mut attribution = Attribution::new(Instant::now());
    attribution.apply(&src.read().unwrap());
    let listener = mptcp::listen().expect("an MPTCP listener on 127.0.0.1");
    let server = listener.local_addr().unwrap();
    let serve = thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        assert_eq!(
            mptcp::protocol(&s),
            mptcp::IPPROTO_MPTCP,
            "the accepted socket is MPTCP"
        );
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&pattern(mptcp::REPLY)).unwrap();
        drop(s);
        (peer, got.len())
    });
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "workload_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("NETWATCH_WORKLOAD_ROLE", "mptcp-client")
        .env("MPTCP", server.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-executing the test binary as the MPTCP client");
    let mut child = Worker(child);
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(
        child.wait().unwrap().success(),
        "MPTCP client child failed: {lines:?}"
    );
    let (peer, received) = serve.join().unwrap();
    assert_eq!(received, mptcp::SEND, "the server read everything");
    let line = lines
        .iter()
        .find(|l| l.starts_with("MPTCP "))
        .unwrap_or_else(|| panic!("the client reported nothing: {lines:?}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    let local: SocketAddr = f[1].parse().unwrap();
    assert_eq!(local, peer, "the client's address as the server saw it");
    assert_eq!(
        (
            f[3].parse::<usize>().unwrap(),
            f[4].parse::<usize>().unwrap()
        ),
        (mptcp::SEND, mptcp::REPLY)
    );

    let (me, client_pid) = (std::process::id(), child.id());
    let (send, reply) = (mptcp::SEND as u64, mptcp::REPLY as u64);
    let mut procs: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut conns: Vec<ConnectionDetail> = Vec::new();
    let mut lost = 0;
    for round in 0..30 {
        thread::sleep(Duration::from_millis(200));
        let batch = src.read().unwrap();
        lost += batch.lost_records;
        let a = attribution.apply(&batch);
        for p in &a.processes {
            if let Some(pid) = p.pid {
                let e = procs.entry(pid).or_default();
                e.0 += p.rx_bytes;
                e.1 += p.tx_bytes;
            }
        }
        conns.extend(
            a.connections
                .iter()
                .filter(|c| {
                    [local.to_string(), server.to_string()].contains(&c.local_addr)
                        || [local.to_string(), server.to_string()].contains(&c.remote_addr)
                })
                .cloned(),
        );
        let done = procs.get(&client_pid) == Some(&(reply, send))
            && procs.get(&me) == Some(&(send, reply));
        if done && round > 0 {
            break;
        }
    }
    let got = |pid: u32| procs.get(&pid).copied().unwrap_or_default();
    assert_eq!(
        got(client_pid),
        (reply, send),
        "[{tier}] MPTCP client (pid {client_pid}) rx/tx"
    );
    assert_eq!(
        got(me),
        (send, reply),
        "[{tier}] MPTCP server (pid {me}) rx/tx"
    );
    assert_eq!(lost, 0, "[{tier}] no record may be lost");
    // Per connection: each end's bytes, summed over the reads (a row per
    // read while open, its final record after), on one TCP row each.
    let sum = |from: SocketAddr, to: SocketAddr| {
        let rows: Vec<&ConnectionDetail> = conns
            .iter()
            .filter(|c| c.local_addr == from.to_string() && c.remote_addr == to.to_string())
            .collect();
        let protocols: Vec<&str> = rows.iter().map(|c| c.protocol.as_str()).collect();
        let bytes = rows.iter().fold((0, 0), |acc, c| {
            (
                acc.0 + c.rx_bytes.unwrap_or(0),
                acc.1 + c.tx_bytes.unwrap_or(0),
            )
        });
        let pids: Vec<Option<u32>> = rows.iter().map(|c| c.pid).filter(|p| p.is_some()).collect();
        (bytes, protocols, pids)
    };
    let (client_bytes, client_protos, client_pids) = sum(local, server);
    let (server_bytes, server_protos, server_pids) = sum(server, local);
    assert_eq!(
        client_bytes,
        (reply, send),
        "[{tier}] client connection {local}->{server} (rx, tx): {conns:?}"
    );
    assert_eq!(
        server_bytes,
        (send, reply),
        "[{tier}] server connection {server}<-{local} (rx, tx): {conns:?}"
    );
    assert!(
        client_protos
            .iter()
            .chain(&server_protos)
            .all(|p| *p == "TCP"),
        "[{tier}] MPTCP rows are listed as TCP: {conns:?}"
    );
    assert!(
        client_pids.iter().all(|p| *p == Some(client_pid))
            && server_pids.iter().all(|p| *p == Some(me)),
        "[{tier}] each end's owner: {conns:?}"
    );
    // The MPTCP socket has no RTT of its own (no `tcp_sock`: its subflows
    // have theirs, on their own rows, which carry no bytes).
    let with_bytes: Vec<&ConnectionDetail> = conns
        .iter()
        .filter(|c| c.rx_bytes.unwrap_or(0) + c.tx_bytes.unwrap_or(0) != 0)
        .collect();
    assert!(
        with_bytes.iter().all(|c| c.kernel_rtt_us.is_none()),
        "[{tier}] MPTCP rows carry no kernel_rtt_us: {with_bytes:?}"
    );
    // Both ends are closed: their entries end at release (no
    // `tcp_destroy_sock` fires for an MPTCP socket), so by the second read
    // from here neither is listed with an owner.
    let owned = |a: &Attributed| -> Vec<ConnectionDetail> {
        a.connections
            .iter()
            .filter(|c| {
                c.pid.is_some()
                    && ((c.local_addr == local.to_string() && c.remote_addr == server.to_string())
                        || (c.local_addr == server.to_string()
                            && c.remote_addr == local.to_string()))
            })
            .cloned()
            .collect()
    };
    let mut still = Vec::new();
    for _ in 0..2 {
        thread::sleep(Duration::from_millis(200));
        still = owned(&attribution.apply(&src.read().unwrap()));
    }
    assert!(
        still.is_empty(),
        "[{tier}] closed MPTCP sockets still listed: {still:?}"
    );
    let ownerless = conns.iter().filter(|c| c.pid.is_none()).count();
    println!(
        "NETWATCH-CASE {tier} Mptcp: exact client (rx {reply}, tx {send}), server (rx {send}, tx {reply}); \
         connection rows exact, protocol TCP; {ownerless} ownerless 0-byte row(s) of subflows over the reads"
    );
}

/// Load `tier` and run [`mptcp_exact`], or skip with one line when the
/// kernel has no MPTCP.
fn mptcp_case(tier: Tier) {
    require_root!("loads BPF programs");
    let _serial = serial();
    if let Some(why) = mptcp::unavailable() {
        println!("NETWATCH-CASE {tier} Mptcp: SKIPPED, this kernel has no MPTCP: {why}");
        return;
    }
    if let Some(src) = load_or_skip(tier) {
        mptcp_exact(tier, src);
    }
}

#[test]
fn mptcp_tracepoint_tier() {
    mptcp_case(Tier::Tracepoint);
}

#[test]
fn mptcp_kprobe_tier() {
    mptcp_case(Tier::Kprobe);
}

#[test]
fn mptcp_fentry_tier() {
    mptcp_case(Tier::Fentry);
}

// ---------- UDP GSO/GRO (issue 21) ----------

/// UDP segmentation offload on send (`UDP_SEGMENT`: one `sendmsg` the
/// kernel splits into many datagrams) and generic receive offload on
/// receive (`UDP_GRO`: one `recvmsg` returns several coalesced datagrams),
/// as QUIC stacks use them. The send still goes through
/// `udp_sendmsg`/`udpv6_sendmsg` (returning the whole payload) and each
/// receive through `skb_consume_udp` (its `len` is what `recvmsg`
/// returns), so each call is counted once with what it returned.
mod udp_gso {
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    /// `UDP_SEGMENT` (socket option and cmsg type at `SOL_UDP`).
    pub const UDP_SEGMENT: libc::c_int = 103;
    /// `UDP_GRO` (socket option and cmsg type at `SOL_UDP`).
    pub const UDP_GRO: libc::c_int = 104;
    /// The first send: `UDP_SEGMENT` set on the socket, 51 datagrams (50 of
    /// 1,200 bytes and one of 1).
    pub const OPT_SEGMENT: u16 = 1200;
    pub const OPT_SEND: usize = 60_001;
    /// The second send: a `UDP_SEGMENT` cmsg on the call, 41 datagrams (40
    /// of 1,000 bytes and one of 7).
    pub const CMSG_SEGMENT: u16 = 1000;
    pub const CMSG_SEND: usize = 40_007;
    /// What each receiver gets: both sends.
    pub const PER_RECEIVER: usize = OPT_SEND + CMSG_SEND;

    fn check(ret: isize, what: &str) -> usize {
        assert!(ret >= 0, "{what}: {}", std::io::Error::last_os_error());
        ret as usize
    }

    fn set_int(s: &UdpSocket, level: libc::c_int, opt: libc::c_int, v: libc::c_int, what: &str) {
        // SAFETY: v is a valid int of the size passed.
        let r = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                level,
                opt,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        check(r as isize, what);
    }

    /// A receiver on `bind` (loopback, port 0) with a 4 MiB receive buffer
    /// (no datagram may be dropped), `UDP_GRO` on if `gro`.
    pub fn receiver(bind: &str, gro: bool) -> UdpSocket {
        let s = UdpSocket::bind(bind).unwrap();
        set_int(
            &s,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            4 << 20,
            "SO_RCVBUFFORCE",
        );
        if gro {
            set_int(&s, libc::SOL_UDP, UDP_GRO, 1, "setsockopt(UDP_GRO)");
        }
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Send both GSO payloads from a fresh socket connected to `to`:
    /// returns the socket's address and what the two calls returned.
    pub fn send(to: SocketAddr) -> (SocketAddr, usize) {
        let bind = if to.is_ipv4() {
            "127.0.0.1:0"
        } else {
            "[::1]:0"
        };
        let s = UdpSocket::bind(bind).unwrap();
        s.connect(to).unwrap();
        set_int(
            &s,
            libc::SOL_UDP,
            UDP_SEGMENT,
            OPT_SEGMENT as libc::c_int,
            "setsockopt(UDP_SEGMENT)",
        );
        let first = s.send(&super::pattern(OPT_SEND)).unwrap();
        assert_eq!(first, OPT_SEND, "one GSO send takes the whole payload");
        // The second call carries its own segment size in a cmsg.
        let mut data = super::pattern(CMSG_SEND);
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut control = [0u64; 4];
        // SAFETY: zeroed msghdr is valid; its pointers are set to our
        // buffers below, which outlive the call.
        let second = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as usize;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), CMSG_SEGMENT);
            check(
                libc::sendmsg(s.as_raw_fd(), &msg, 0),
                "sendmsg(UDP_SEGMENT cmsg)",
            )
        };
        assert_eq!(second, CMSG_SEND, "one GSO sendmsg takes the whole payload");
        (s.local_addr().unwrap(), first + second)
    }

    /// What one receiver saw: bytes its calls returned, the number of
    /// calls, and the `UDP_GRO` segment sizes the kernel reported.
    #[derive(Debug, Default)]
    pub struct Received {
        pub bytes: usize,
        pub calls: usize,
        pub largest: usize,
        pub gro_sizes: Vec<u16>,
    }

    /// Read `s` with a 64 KiB buffer (room for every coalesced datagram)
    /// until [`PER_RECEIVER`] bytes are in.
    pub fn receive(s: &UdpSocket) -> Received {
        let mut r = Received::default();
        let mut buf = vec![0u8; 65536];
        while r.bytes < PER_RECEIVER {
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut control = [0u64; 8];
            // SAFETY: as in `send`; the kernel writes into our buffers.
            unsafe {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&control);
                let n = check(libc::recvmsg(s.as_raw_fd(), &mut msg, 0), "recvmsg");
                assert_eq!(msg.msg_flags & libc::MSG_TRUNC, 0, "no datagram truncated");
                r.bytes += n;
                r.calls += 1;
                r.largest = r.largest.max(n);
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                        let size = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u16>());
                        if !r.gro_sizes.contains(&size) {
                            r.gro_sizes.push(size);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
        }
        assert_eq!(r.bytes, PER_RECEIVER, "every byte sent arrives, no more");
        r
    }
}

/// UDP GSO and GRO on loopback, IPv4 and IPv6: a child process sends,
/// from one connected socket per receiver, one `UDP_SEGMENT` payload set
/// by socket option and one set by cmsg (92 datagrams in two calls); this
/// process receives them on a plain socket (one `recvmsg` per datagram)
/// and on a `UDP_GRO` socket (coalesced datagrams per `recvmsg`). The
/// sender's tx and the receiver's rx must be exactly what their calls
/// returned, each connection row exact, nothing lost.
fn udp_gso_exact(tier: Tier, mut src: EbpfSource) {
    let mut attribution = Attribution::new(Instant::now());
    attribution.apply(&src.read().unwrap());
    // plain v4, GRO v4, plain v6, GRO v6
    let receivers: Vec<(UdpSocket, bool)> = [("127.0.0.1:0", false), ("127.0.0.1:0", true)]
        .into_iter()
        .chain([("[::1]:0", false), ("[::1]:0", true)])
        .map(|(bind, gro)| (udp_gso::receiver(bind, gro), gro))
        .collect();
    let addrs: Vec<SocketAddr> = receivers
        .iter()
        .map(|(s, _)| s.local_addr().unwrap())
        .collect();
    let readers: Vec<thread::JoinHandle<(bool, udp_gso::Received)>> = receivers
        .into_iter()
        .map(|(s, gro)| thread::spawn(move || (gro, udp_gso::receive(&s))))
        .collect();
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "workload_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("NETWATCH_WORKLOAD_ROLE", "udp-gso-sender")
        .env("UDPGSO", list.join(","))
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-executing the test binary as the UDP GSO sender");
    let mut child = Worker(child);
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(
        child.wait().unwrap().success(),
        "UDP GSO sender child failed: {lines:?}"
    );
    let received: Vec<(bool, udp_gso::Received)> =
        readers.into_iter().map(|t| t.join().unwrap()).collect();
    // The senders' sockets, one per receiver, in order.
    let senders: Vec<(SocketAddr, SocketAddr, usize)> = lines
        .iter()
        .filter(|l| l.starts_with("GSO "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        senders.iter().map(|s| s.1).collect::<Vec<_>>(),
        addrs,
        "one sender socket per receiver: {lines:?}"
    );
    let total = (udp_gso::PER_RECEIVER * addrs.len()) as u64;
    assert_eq!(
        senders.iter().map(|s| s.2 as u64).sum::<u64>(),
        total,
        "what the sends returned"
    );

    let (me, sender_pid) = (std::process::id(), child.id());
    let mut procs: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut conns: Vec<ConnectionDetail> = Vec::new();
    let mut lost = 0;
    let ours: Vec<String> = addrs
        .iter()
        .chain(senders.iter().map(|s| &s.0))
        .map(|a| a.to_string())
        .collect();
    for round in 0..30 {
        thread::sleep(Duration::from_millis(200));
        let batch = src.read().unwrap();
        lost += batch.lost_records;
        let a = attribution.apply(&batch);
        for p in &a.processes {
            if let Some(pid) = p.pid {
                let e = procs.entry(pid).or_default();
                e.0 += p.rx_bytes;
                e.1 += p.tx_bytes;
            }
        }
        conns.extend(
            a.connections
                .iter()
                .filter(|c| c.protocol == "UDP" && ours.contains(&c.local_addr))
                .cloned(),
        );
        let done =
            procs.get(&sender_pid) == Some(&(0, total)) && procs.get(&me) == Some(&(total, 0));
        if done && round > 0 {
            break;
        }
    }
    let got = |pid: u32| procs.get(&pid).copied().unwrap_or_default();
    assert_eq!(
        got(sender_pid),
        (0, total),
        "[{tier}] UDP GSO sender (pid {sender_pid}) rx/tx"
    );
    assert_eq!(
        got(me),
        (total, 0),
        "[{tier}] UDP GSO/GRO receiver (pid {me}) rx/tx"
    );
    assert_eq!(lost, 0, "[{tier}] no record may be lost");
    // Per connection, summed over the reads.
    let sum = |local: SocketAddr, remote: &str| {
        conns
            .iter()
            .filter(|c| c.local_addr == local.to_string() && c.remote_addr == remote)
            .fold((0, 0, Vec::new()), |mut acc, c| {
                acc.0 += c.rx_bytes.unwrap_or(0);
                acc.1 += c.tx_bytes.unwrap_or(0);
                acc.2.push(c.pid);
                acc
            })
    };
    let each = udp_gso::PER_RECEIVER as u64;
    for (local, remote, _) in &senders {
        let (rx, tx, pids) = sum(*local, &remote.to_string());
        assert_eq!(
            (rx, tx),
            (0, each),
            "[{tier}] sender socket {local}->{remote} (rx, tx): {conns:?}"
        );
        assert!(
            pids.iter().all(|p| *p == Some(sender_pid)),
            "[{tier}] sender socket {local} owner: {conns:?}"
        );
    }
    for a in &addrs {
        let (rx, tx, pids) = sum(*a, "*:*");
        assert_eq!(
            (rx, tx),
            (each, 0),
            "[{tier}] receiver socket {a} (rx, tx): {conns:?}"
        );
        assert!(
            pids.iter().all(|p| *p == Some(me)),
            "[{tier}] receiver socket {a} owner: {conns:?}"
        );
    }
    // The paths under test were taken: loopback carries each GSO payload
    // as one skb (`lo` has `NETIF_F_GSO_UDP_L4`), which `udp_queue_rcv_skb`
    // hands whole to a `UDP_GRO` socket (one `recvmsg` per `sendmsg`, with
    // the `UDP_GRO` cmsg) and segments for a plain one (one per datagram).
    for (gro, r) in &received {
        let want = if *gro {
            (2, vec![udp_gso::OPT_SEGMENT, udp_gso::CMSG_SEGMENT])
        } else {
            (92, Vec::new())
        };
        assert_eq!(
            (r.calls, r.gro_sizes.clone()),
            want,
            "[{tier}] recvmsg calls and UDP_GRO sizes of a {} receiver",
            if *gro { "UDP_GRO" } else { "plain" }
        );
    }
    let describe = |gro: bool| {
        received
            .iter()
            .filter(|r| r.0 == gro)
            .map(|(_, r)| {
                format!(
                    "{} recvmsg, largest {} B, UDP_GRO sizes {:?}",
                    r.calls, r.largest, r.gro_sizes
                )
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    println!(
        "NETWATCH-CASE {tier} UdpGsoGro: exact sender (rx 0, tx {total}) in 8 sendmsg calls (368 datagrams), \
         receiver (rx {total}, tx 0); 4 sender and 4 receiver rows exact; \
         plain receivers (v4 / v6): {}; GRO receivers (v4 / v6): {}",
        describe(false),
        describe(true)
    );
}

/// Load `tier` and run [`udp_gso_exact`].
fn udp_gso_case(tier: Tier) {
    require_root!("loads BPF programs");
    let _serial = serial();
    if let Some(src) = load_or_skip(tier) {
        udp_gso_exact(tier, src);
    }
}

#[test]
fn udp_gso_tracepoint_tier() {
    udp_gso_case(Tier::Tracepoint);
}

#[test]
fn udp_gso_kprobe_tier() {
    udp_gso_case(Tier::Kprobe);
}

#[test]
fn udp_gso_fentry_tier() {
    udp_gso_case(Tier::Fentry);
}

// ---------- TCP events (SYNs and resets for the port-scan detector) ----------

/// Linux ≥ 6.10: `tcp:tcp_send_reset` fires for resets answering segments
/// to closed ports (it carries the segment's addresses).
fn kernel_traces_closed_port_resets() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    (major, minor) >= (6, 10)
}

/// A port nothing listens on: bound by a listener just closed.
fn closed_port(ip: std::net::IpAddr) -> u16 {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

type Rec = (netwatch_common::TcpEventRecord, std::time::Duration);

fn rec_addrs(r: &netwatch_common::TcpEventRecord) -> (SocketAddr, SocketAddr) {
    let a = |raw: &[u8; 16], port| {
        let ip = if r.family == netwatch_common::AF_INET {
            std::net::IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
        } else {
            std::net::IpAddr::from(*raw)
        };
        SocketAddr::new(ip, port)
    };
    (a(&r.saddr, r.sport), a(&r.daddr, r.dport))
}

/// The records of `recs` that involve `port` on either side, as
/// (kind, flags, src, dst, tgid).
fn involving(recs: &[Rec], port: u16) -> Vec<(u8, u8, SocketAddr, SocketAddr, u32)> {
    recs.iter()
        .filter(|(r, _)| r.sport == port || r.dport == port)
        .map(|(r, _)| {
            let (s, d) = rec_addrs(r);
            (r.kind, r.flags, s, d, (r.pid_tgid >> 32) as u32)
        })
        .collect()
}

/// Exact kernel records for an accepted connect (SYN_SENT by this process,
/// SYN_RECV of the listener's child), a refused connect (SYN_SENT, the
/// reset received, and the reset sent for the closed port), then the same refused connect as the detectors see it:
/// one SYN and one RST.
fn tcp_events(tier: Tier, mut src: EbpfSource) {
    use netwatch::source::TcpEventKind;
    use netwatch_common::tcp_event::*;
    let pid = std::process::id();
    let closed_visible = kernel_traces_closed_port_resets();
    println!(
        "NETWATCH-TCP-EVENTS {tier}: tcp:tcp_send_reset sees closed ports on this kernel: {closed_visible}"
    );
    for ip in ["127.0.0.1", "::1"] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        src.take_tcp_records();
        let started = netwatch::clock::mono_now();
        // Accepted.
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
        let server = listener.local_addr().unwrap();
        let client = TcpStream::connect(server).unwrap();
        let client_addr = client.local_addr().unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // Refused.
        let port = closed_port(ip);
        let refused = SocketAddr::new(ip, port);
        let err = TcpStream::connect(refused).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
        let recs = src.take_tcp_records();
        let ended = netwatch::clock::mono_now();
        for (r, at) in &recs {
            if r.sport == server.port() || r.dport == server.port() || r.dport == port {
                // The kernel's monotonic stamps, on the agent's monotonic
                // clock: within the calls that made them.
                assert!(
                    *at >= started && *at <= ended,
                    "{tier}: record time {at:?} outside [{started:?}, {ended:?}]"
                );
            }
        }
        let got = involving(&recs, server.port());
        assert_eq!(
            got,
            // In causal order: the client is established (SYN_SENT
            // recorded) when the SYN-ACK arrives; its ACK creates the child.
            [
                (SYN_SENT, 0, client_addr, server, pid),
                (SYN_RECV, 0, client_addr, server, 0),
            ],
            "{tier} {ip}: accepted connect"
        );
        let got = involving(&recs, port);
        // The refused connect's own port is only in its records.
        let rport = got
            .iter()
            .find(|g| g.0 == SYN_SENT)
            .map(|g| g.2)
            .unwrap_or_else(|| panic!("{tier} {ip}: no SYN_SENT for the refused connect: {got:?}"));
        assert_eq!(rport.ip(), ip, "{tier}");
        // The reset for the closed port: from `tcp_send_reset` (≥ 6.10) or
        // from `tcp_v*_send_reset` (fentry/kprobe tiers, older kernels).
        let want = vec![
            (
                RST_SENT,
                FLAG_NO_SOCKET | FLAG_ANSWERED_SYN,
                refused,
                rport,
                0,
            ),
            (RST_RECEIVED, 0, refused, rport, 0),
            // Recorded when the socket leaves SYN_SENT (its port known then).
            (SYN_SENT, 0, rport, refused, pid),
        ];
        assert_eq!(got, want, "{tier} {ip}: refused connect");
        // How each connect ended: established, and refused (`sk_err`
        // ECONNREFUSED when the reset closed the socket).
        let ends: Vec<_> = recs
            .iter()
            .filter(|(r, _)| r.kind == SYN_SENT && (r.dport == server.port() || r.dport == port))
            .map(|(r, _)| (r.dport, r.end, r.err))
            .collect();
        assert_eq!(
            ends,
            [
                (server.port(), END_ESTABLISHED, 0),
                (port, END_CLOSED, libc::ECONNREFUSED)
            ],
            "{tier} {ip}: connect ends"
        );
        drop((client, accepted, listener));

        // As the detectors see it: the segments on the wire, each once.
        src.take_tcp_events();
        let port = closed_port(ip);
        let refused = SocketAddr::new(ip, port);
        TcpStream::connect(refused).unwrap_err();
        let events: Vec<_> = src
            .take_tcp_events()
            .expect("the eBPF source reports TCP events")
            .into_iter()
            .filter(|e| e.src.port() == port || e.dst.port() == port)
            .map(|e| (e.kind, e.src, e.dst, e.src_local, e.dst_local))
            .collect();
        let rport = events
            .first()
            .map(|e| e.1)
            .unwrap_or_else(|| panic!("{tier} {ip}: no events"));
        assert_eq!(
            events,
            [
                (TcpEventKind::Syn, rport, refused, true, true),
                (TcpEventKind::Reset, refused, rport, true, true),
            ],
            "{tier} {ip}: refused connect as TcpEvents"
        );
    }
}

/// A full TCP events ring is counted, never silent: 10,000 refused
/// connects (3 records each) between two reads overflow its 13,107 slots,
/// and every one of our records not read is among those counted lost.
#[test]
fn tcp_events_overflow_is_counted() {
    let _serial = serial();
    let Some(mut src) = load_best_with(65536, 1024 * 1024, true) else {
        return;
    };
    src.take_tcp_records();
    let port = closed_port("127.0.0.1".parse().unwrap());
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    const CONNECTS: u64 = 10_000;
    for _ in 0..CONNECTS {
        TcpStream::connect(target).unwrap_err();
    }
    let recs = src.take_tcp_records();
    let ours = involving(&recs, port).len() as u64;
    let lost = src.tcp_events_lost();
    let capacity = u64::from(netwatch::source::ebpf::TCP_EVENTS_BYTES)
        / (std::mem::size_of::<netwatch_common::TcpEventRecord>() as u64 + 8);
    println!("NETWATCH-TCP-EVENTS overflow: {ours} of ours read, {lost} lost, capacity {capacity}");
    assert!(recs.len() as u64 <= capacity, "{} > {capacity}", recs.len());
    assert!(lost > 0, "the ring cannot hold {} records", 3 * CONNECTS);
    assert!(
        ours + lost >= 3 * CONNECTS,
        "{ours} read + {lost} lost < {} written: records lost silently",
        3 * CONNECTS
    );
}

#[test]
fn tcp_events_tracepoint_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Tracepoint) {
        tcp_events(Tier::Tracepoint, src);
    }
}

#[test]
fn tcp_events_kprobe_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Kprobe) {
        tcp_events(Tier::Kprobe, src);
    }
}

#[test]
fn tcp_events_fentry_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Fentry) {
        tcp_events(Tier::Fentry, src);
    }
}

/// Sets the wall clock by `by_secs` (negative: back) with
/// `clock_settime(CLOCK_REALTIME)`.
fn step_wall_clock(by_secs: i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime/clock_settime read and write one timespec we own.
    unsafe {
        assert_eq!(libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts), 0);
        ts.tv_sec += by_secs;
        assert_eq!(
            libc::clock_settime(libc::CLOCK_REALTIME, &ts),
            0,
            "setting the guest's wall clock: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Puts the wall clock back where the test found it, even if it fails.
struct WallClockStep(i64);

impl WallClockStep {
    fn by(&mut self, secs: i64) {
        step_wall_clock(secs);
        self.0 += secs;
    }
}

impl Drop for WallClockStep {
    fn drop(&mut self) {
        step_wall_clock(-self.0);
    }
}

/// The wall clock really stepped (guest only: it sets the clock, which on
/// the host would disturb everything else): the kernel collector's TCP
/// events raise a port-scan alert after the clock went back an hour, the
/// alert is stamped with the stepped wall clock, and it stays active for
/// exactly its window (4 s here) across a step two hours forward. With
/// wall-clock windows it expired on the tick that raised it.
#[test]
fn an_alert_keeps_its_window_when_the_guest_wall_clock_steps() {
    use netwatch::alerts::{AlertConfig, Detectors};
    use netwatch::engine::Engine;
    use netwatch_common::wire::{AlertCategory, CollectorInfo};
    let _serial = serial();
    if !cases::guest() {
        println!("skipped on the host: it sets the wall clock (runs in the QEMU guest)");
        return;
    }
    let Some(src) = load_best_with(65536, 1 << 20, true) else {
        return;
    };
    let info = CollectorInfo {
        source: "ebpf".into(),
        ebpf_tier: None,
        estimated: false,
        fallback_reason: None,
        lost_records: None,
        connections_truncated: None,
        processes_folded: None,
    };
    let active = Duration::from_secs(4);
    let cfg = AlertConfig {
        active,
        ..AlertConfig::default()
    };
    let mut agent = Engine::new(
        Box::new(src),
        info,
        netwatch::snapshot::HostCollectors::new(),
        Instant::now(),
    )
    .with_alerts(Detectors::new(cfg));
    agent.prime();
    let mut wall = WallClockStep(0);
    wall.by(-3600);
    // 20 refused connects to distinct closed ports of 127.0.0.1.
    let mut ports = std::collections::BTreeSet::new();
    while ports.len() < 20 {
        let port = closed_port("127.0.0.1".parse().unwrap());
        if ports.insert(port) {
            TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap_err();
        }
    }
    let scanned = Instant::now();
    let ours = |snap: &netwatch_common::wire::Snapshot| -> Vec<netwatch_common::wire::Alert> {
        snap.alerts
            .iter()
            .flatten()
            .filter(|a| {
                a.category == AlertCategory::PortScan && a.message == "Port scan from 127.0.0.1"
            })
            .cloned()
            .collect()
    };
    let snap = agent.snapshot();
    let raised = ours(&snap);
    assert_eq!(raised.len(), 1, "one scan alert: {:#?}", snap.alerts);
    let lag = (chrono::Utc::now() - raised[0].timestamp).num_milliseconds();
    assert!(
        (0..5_000).contains(&lag),
        "stamped with the stepped wall clock: {} is {lag} ms before now",
        raised[0].timestamp
    );
    wall.by(7200);
    let mut seen_until = Duration::ZERO;
    loop {
        thread::sleep(Duration::from_millis(200));
        let snap = agent.snapshot();
        let age = scanned.elapsed();
        let now = ours(&snap);
        if now.is_empty() {
            assert!(
                age >= active - Duration::from_millis(500),
                "the alert went after {age:?}, before its {active:?} window"
            );
            break;
        }
        assert_eq!(now[0].timestamp, raised[0].timestamp, "its timestamp stays");
        seen_until = age;
        assert!(
            age < active + Duration::from_secs(3),
            "the alert outlived its window: still active after {age:?}"
        );
    }
    println!("NETWATCH-CLOCK-STEP: the alert stayed {seen_until:?} of its {active:?} window across steps of -1 h and +2 h");
}

// ---------- nested and skipped program runs (issue 15) ----------
//
// Programs nest: a softirq's `inet_sock_set_state` can run on a CPU in the
// middle of a program running there in process context. The tests make it
// happen for real: in a network namespace of their own whose loopback
// hands every received packet to CPU 1 (RPS), connections are opened and
// closed from CPU 0, so their handshakes and closes are processed in
// softirqs on CPU 1, which interrupt whatever runs there:
// - UDP senders making a new socket per datagram (each socket's first send
//   builds a new entry in the `tp_sock_send_length`/`fexit_udp_sendmsg`/...
//   program): every entry must keep its own 5-tuple and bytes, exactly;
// - a thread updating a BPF map in a loop: while the kernel copies the
//   value it holds the CPU's `bpf_prog_active`, and a classic tracepoint
//   program (the lifecycle ones) due in a softirq then is skipped and
//   counted by the kernel in the program's `recursion_misses`: every
//   skipped run must be in the read's `lost_records`, and the figure read
//   must be the kernel's (as `bpftool prog show` reports it).
// A machine with one CPU runs the same traffic without RPS (whatever nests
// there is checked the same way; nothing is provoked).

/// The loopback addresses of the nesting tests: unique to them, so their
/// sockets are told apart from any other on the machine (the socket map
/// sees every namespace).
const NEST_TCP_SERVER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 86, 1, 1);
const NEST_UDP_RECEIVER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 86, 0, 1);
const NEST_UDP_SENDER: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 86, 0, 2);
/// Bytes each TCP client sends, each UDP sender's one datagram.
const NEST_TCP_BYTES: usize = 1000;
const NEST_UDP_BYTES: usize = 7;

/// A network namespace of the test's own: named (`ip netns`, removed on
/// drop) where iproute2 is there, else (BusyBox in the QEMU guests)
/// unnamed, made by a thread's `unshare` and kept by a descriptor.
struct NestNs {
    name: Option<String>,
    file: std::fs::File,
}

impl NestNs {
    fn new(test: &str) -> Self {
        let name = format!("nw-nesting-{test}-{}", std::process::id());
        // A namespace left by a killed earlier run of this pid is ours.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let named = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|st| st.success());
        let ns = if named {
            let file = std::fs::File::open(format!("/run/netns/{name}"))
                .unwrap_or_else(|e| panic!("opening /run/netns/{name}: {e}"));
            Self {
                name: Some(name),
                file,
            }
        } else {
            let file = thread::spawn(|| {
                // SAFETY: unshare(2) with CLONE_NEWNET moves only this
                // thread, which ends once the namespace is opened.
                let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
                std::fs::File::open("/proc/thread-self/ns/net").expect("opening the new namespace")
            })
            .join()
            .unwrap();
            Self { name: None, file }
        };
        thread::scope(|s| {
            s.spawn(|| {
                ns.enter();
                let st = Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .expect("running ip");
                assert!(st.success(), "ip link set lo up: {st}");
            });
        });
        ns
    }

    /// Move the calling thread into the namespace.
    fn enter(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on a namespace fd this test holds; it moves
        // only the calling thread.
        let r = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Have the namespace's loopback receive every packet on `cpu` (RPS):
    /// written through a sysfs mounted by a thread in the namespace, in a
    /// private mount namespace of its own that ends with it.
    fn receive_on(&self, cpu: usize) {
        thread::scope(|s| {
            s.spawn(|| {
                self.enter();
                let dir = tempfile::tempdir().expect("a temporary directory");
                // SAFETY: unshare(2) and mount(2) with valid C strings; the
                // new mount namespace is this thread's only, and private,
                // so nothing mounted here is seen outside it.
                unsafe {
                    let r = libc::unshare(libc::CLONE_NEWNS);
                    assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
                    let root = c"/";
                    let r = libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    );
                    assert_eq!(
                        r,
                        0,
                        "making / private: {}",
                        std::io::Error::last_os_error()
                    );
                    let target =
                        std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
                    let sysfs = c"sysfs";
                    let r = libc::mount(
                        sysfs.as_ptr(),
                        target.as_ptr(),
                        sysfs.as_ptr(),
                        0,
                        std::ptr::null(),
                    );
                    assert_eq!(r, 0, "mounting sysfs: {}", std::io::Error::last_os_error());
                }
                let file = dir.path().join("class/net/lo/queues/rx-0/rps_cpus");
                let wrote = std::fs::write(&file, format!("{:x}\n", 1u64 << cpu));
                // SAFETY: umount2(2) of the sysfs mounted above.
                unsafe {
                    let target =
                        std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
                    libc::umount2(target.as_ptr(), libc::MNT_DETACH);
                }
                wrote.unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
            });
        });
    }
}

impl Drop for NestNs {
    fn drop(&mut self) {
        if let Some(name) = &self.name {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Keep the calling thread on `cpu`.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_setaffinity(0) only touch it and the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            r,
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The CPUs this test may use.
fn nest_cpus() -> usize {
    thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The CPU the softirqs run on (1 when there are two, else the only one),
/// and the one the connections are opened from.
fn nest_layout() -> (usize, usize) {
    if nest_cpus() >= 2 {
        (1, 0)
    } else {
        (0, 0)
    }
}

/// Open and close `n` TCP connections from `cpu` in `ns`, each client
/// sending [`NEST_TCP_BYTES`]; returns the server's address and every
/// (client, server) pair.
fn nest_tcp_churn(
    ns: &NestNs,
    cpu: usize,
    n: usize,
) -> (SocketAddr, Vec<(SocketAddr, SocketAddr)>) {
    thread::scope(|s| {
        ns.enter();
        pin_to_cpu(cpu);
        let l = TcpListener::bind((NEST_TCP_SERVER, 0)).unwrap();
        let server = l.local_addr().unwrap();
        let accepting = s.spawn(move || {
            ns.enter();
            pin_to_cpu(cpu);
            for _ in 0..n {
                let (mut c, _) = l.accept().unwrap();
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                assert_eq!(got.len(), NEST_TCP_BYTES);
            }
        });
        let pairs = (0..n)
            .map(|_| {
                let mut c = TcpStream::connect(server).unwrap();
                c.write_all(&pattern(NEST_TCP_BYTES)).unwrap();
                (c.local_addr().unwrap(), server)
            })
            .collect();
        accepting.join().unwrap();
        (server, pairs)
    })
}

/// A thread in `ns` on `cpu` that makes a new UDP socket per datagram (one
/// [`NEST_UDP_BYTES`] datagram each, connected, then closed) until told to
/// stop; returns the receiver's address and every (sender, receiver) pair.
fn nest_udp_churn(
    ns: &NestNs,
    cpu: usize,
    stop: &std::sync::atomic::AtomicBool,
) -> (SocketAddr, Vec<(SocketAddr, SocketAddr)>) {
    ns.enter();
    pin_to_cpu(cpu);
    let rx = UdpSocket::bind((NEST_UDP_RECEIVER, 0)).unwrap();
    let to = rx.local_addr().unwrap();
    let mut pairs = Vec::new();
    // Bounded: each closed socket's final record goes through the ring.
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && pairs.len() < 20_000 {
        let s = UdpSocket::bind((NEST_UDP_SENDER, 0)).unwrap();
        s.connect(to).unwrap();
        assert_eq!(s.send(&pattern(NEST_UDP_BYTES)).unwrap(), NEST_UDP_BYTES);
        pairs.push((s.local_addr().unwrap(), to));
    }
    (to, pairs)
}

/// A thread on `cpu` that updates a 1 MiB BPF array map value in a loop:
/// the kernel holds the CPU's `bpf_prog_active` while it copies the value,
/// so a kprobe or classic tracepoint program due on that CPU meanwhile (in
/// an interrupt's softirq) is skipped.
struct MapUpdater {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl MapUpdater {
    const VALUE: usize = 1 << 20;

    fn start(cpu: usize) -> Self {
        use std::os::fd::FromRawFd;
        // `union bpf_attr` for BPF_MAP_CREATE: type, key size, value size,
        // entries (the rest zero).
        let mut create = [0u32; 32];
        create[0] = 2; // BPF_MAP_TYPE_ARRAY
        create[1] = 4;
        create[2] = Self::VALUE as u32;
        create[3] = 1;
        // SAFETY: bpf(2) BPF_MAP_CREATE with a zero-padded attr.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                0,
                create.as_mut_ptr(),
                std::mem::size_of_val(&create) as u32,
            )
        };
        assert!(
            fd >= 0,
            "BPF_MAP_CREATE: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor the kernel just returned.
        let map = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            use std::os::fd::AsRawFd;
            pin_to_cpu(cpu);
            let key = 0u32;
            let value = vec![0x5au8; Self::VALUE];
            let mut updates = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // map_fd, pad, key, value, flags (BPF_ANY).
                let mut attr: [u64; 4] = [
                    map.as_raw_fd() as u64,
                    &key as *const u32 as u64,
                    value.as_ptr() as u64,
                    0,
                ];
                // SAFETY: bpf(2) BPF_MAP_UPDATE_ELEM with pointers to a
                // live key and a value of the map's value size.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_bpf,
                        2,
                        attr.as_mut_ptr(),
                        std::mem::size_of_val(&attr) as u32,
                    )
                };
                assert_eq!(
                    r,
                    0,
                    "BPF_MAP_UPDATE_ELEM: {}",
                    std::io::Error::last_os_error()
                );
                updates += 1;
            }
            updates
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

impl Drop for MapUpdater {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `recursion_misses` of program `id` as `bpftool prog show` reports it
/// (it leaves the field out while it is 0).
fn bpftool_recursion_misses(id: u32) -> u64 {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show", "id", &id.to_string()])
        .output()
        .expect("running bpftool (installed by `cargo xtask setup`)");
    assert!(out.status.success(), "bpftool prog show id {id}: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    v.get("recursion_misses")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// The workload sizes: smaller under software emulation.
fn nest_sizes() -> usize {
    if std::env::var_os("NETWATCH_GUEST").is_some() {
        300
    } else {
        3000
    }
}

/// Every entry keeps its own socket's 5-tuple and bytes while softirqs'
/// state changes build entries in the middle of the UDP senders' first
/// sends on the same CPU: each UDP sender is listed once, with its own
/// addresses, protocol and exactly its bytes; every TCP row is one of the
/// connections the test opened, TCP, and the TCP bytes add up exactly; and
/// nothing else carries the test's addresses. (Per TCP connection, rows can
/// merge: a connection's final record then holds the bytes of an earlier
/// socket at the same kernel address, whose `tcp_destroy_sock` did not end
/// its entry, and whose successor's birth did not finish it either (that
/// run skipped too). On the kprobe tier that is the kernel skipping the lifecycle
/// programs while a kprobe-tier program runs on the CPU (counted in
/// `lost_records` from Linux 6.7; 6.1 counts nothing); on the host's
/// tracepoint tier it is also seen, rarely, with no skipped run counted,
/// before and after the nesting fix: left open.)
fn nested_programs_keep_their_entries(tier: Tier, mut src: EbpfSource) {
    let ns = NestNs::new(&format!("keep-{tier}"));
    let (softirq_cpu, conn_cpu) = nest_layout();
    let rps = softirq_cpu != conn_cpu;
    if rps {
        ns.receive_on(softirq_cpu);
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ((udp_to, udp_pairs), (tcp_server, tcp_pairs)) = thread::scope(|s| {
        let udp = s.spawn(|| nest_udp_churn(&ns, softirq_cpu, &stop));
        let tcp = s.spawn(|| nest_tcp_churn(&ns, conn_cpu, nest_sizes()));
        let tcp = tcp.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (udp.join().unwrap(), tcp)
    });
    // The last closes' final records reach the ring.
    thread::sleep(Duration::from_millis(300));
    let batch = src.read().unwrap();
    assert_eq!(batch.omitted, None, "a first read lists every socket");
    let mut udp_got: HashMap<(SocketAddr, SocketAddr), (u64, u64, usize)> = HashMap::new();
    let mut tcp_got: HashMap<(SocketAddr, SocketAddr), (u64, u64, usize)> = HashMap::new();
    let mut stray = Vec::new();
    for sm in &batch.samples {
        let (Some(l), Some(r)) = (sm.local, sm.remote) else {
            continue;
        };
        if r.port() == 0 {
            // The listener.
            continue;
        }
        let ours = |a: SocketAddr| matches!(a.ip(), std::net::IpAddr::V4(v4) if v4.octets()[..2] == [127, 86]);
        if !ours(l) && !ours(r) {
            continue;
        }
        let slot = if r == udp_to && sm.protocol == netwatch::source::Protocol::Udp {
            udp_got.entry((l, r)).or_default()
        } else if r == tcp_server && sm.protocol == netwatch::source::Protocol::Tcp {
            tcp_got.entry((l, r)).or_default()
        } else if l == tcp_server && sm.protocol == netwatch::source::Protocol::Tcp {
            // A server end: keyed as its client.
            tcp_got.entry((r, l)).or_default()
        } else {
            stray.push(format!("{sm:?}"));
            continue;
        };
        slot.0 += sm.tx_bytes;
        slot.1 += sm.rx_bytes;
        slot.2 += 1;
    }
    assert!(
        stray.is_empty(),
        "entries with another socket's addresses or protocol: {stray:#?}"
    );
    // A closed socket's port can be taken again by a later one: summed.
    let mut udp_want: HashMap<(SocketAddr, SocketAddr), (u64, u64, usize)> = HashMap::new();
    for &p in &udp_pairs {
        let w = udp_want.entry(p).or_default();
        *w = (w.0 + NEST_UDP_BYTES as u64, 0, w.2 + 1);
    }
    // Each pair twice: the client (sent) and the server end (received).
    let mut tcp_want: HashMap<(SocketAddr, SocketAddr), (u64, u64, usize)> = HashMap::new();
    for &p in &tcp_pairs {
        let w = tcp_want.entry(p).or_default();
        let n = NEST_TCP_BYTES as u64;
        *w = (w.0 + n, w.1 + n, w.2 + 2);
    }
    let diff = |want: &HashMap<(SocketAddr, SocketAddr), (u64, u64, usize)>,
                got: &HashMap<(SocketAddr, SocketAddr), (u64, u64, usize)>| {
        let mut d: Vec<String> = want
            .iter()
            .filter(|(k, v)| got.get(k) != Some(v))
            .map(|(k, v)| format!("{k:?}: want {v:?}, got {:?}", got.get(k)))
            .chain(
                got.iter()
                    .filter(|(k, _)| !want.contains_key(k))
                    .map(|(k, v)| format!("{k:?}: not opened by the test, got {v:?}")),
            )
            .collect();
        d.sort();
        let n = d.len();
        d.truncate(10);
        if n > 10 {
            d.push(format!("and {} more", n - 10));
        }
        d
    };
    let k = src.kernel_counters();
    let programs = src.program_misses();
    let skipped: u64 = programs
        .iter()
        .map(|p| p.recursion_misses + p.kprobe_missed)
        .sum();
    let why = format!("{skipped} skipped runs: {programs:?}, {k:?}");
    assert_eq!(
        diff(&udp_want, &udp_got),
        Vec::<String>::new(),
        "UDP senders (tx, rx, rows); {why}"
    );
    let strays: Vec<_> = tcp_got
        .keys()
        .filter(|k| !tcp_want.contains_key(k))
        .collect();
    assert_eq!(
        strays,
        Vec::<&(SocketAddr, SocketAddr)>::new(),
        "TCP rows with addresses of no connection the test opened; {why}"
    );
    let total = |m: &HashMap<(SocketAddr, SocketAddr), (u64, u64, usize)>| {
        m.values().fold((0, 0), |(t, r), v| (t + v.0, r + v.1))
    };
    assert_eq!(
        total(&tcp_got),
        total(&tcp_want),
        "TCP bytes (tx, rx); {why}"
    );
    let merged = tcp_want
        .iter()
        .filter(|(k, v)| tcp_got.get(k) != Some(v))
        .count();
    assert_eq!(
        batch.lost_records,
        skipped + k.insert_failed + k.final_lost + k.owner_full + k.missed_return,
        "{k:?}"
    );
    println!(
        "NETWATCH-TIER {tier}: {} UDP sockets and {} TCP connections with softirqs on CPU {softirq_cpu} (connections from CPU {conn_cpu}): every UDP entry exact, TCP addresses and totals exact ({merged} connections' rows merged with another's); {skipped} skipped runs; {k:?}",
        udp_pairs.len(),
        tcp_pairs.len()
    );
}

/// Program runs the kernel skips are read and counted: each program's
/// figure is the kernel's (`bpftool prog show`), and the read's
/// `lost_records` holds their sum. With two CPUs the test makes the kernel
/// skip lifecycle tracepoint runs for real (a map update holding
/// `bpf_prog_active` on the CPU their softirqs run on), and requires some
/// where the kernel counts them (Linux ≥ 6.7; 6.1 skips them uncounted).
fn skipped_runs_are_counted(tier: Tier, mut src: EbpfSource) {
    let ns = NestNs::new(&format!("skip-{tier}"));
    let (softirq_cpu, conn_cpu) = nest_layout();
    let rps = softirq_cpu != conn_cpu;
    if rps {
        ns.receive_on(softirq_cpu);
    }
    let programs = src.program_misses();
    // Every program the tier attached is found (names as the kernel keeps
    // them: 15 bytes).
    let offsets = SockOffsets::from_kernel().unwrap();
    let found: Vec<&str> = programs.iter().map(|p| p.name.as_str()).collect();
    for hook in tier.hooks(&offsets) {
        let name = &hook.program[..hook.program.len().min(15)];
        assert!(found.contains(&name), "{name} not found among {found:?}");
    }
    let updater = MapUpdater::start(softirq_cpu);
    let (_, pairs) = thread::scope(|s| {
        s.spawn(|| nest_tcp_churn(&ns, conn_cpu, nest_sizes()))
            .join()
            .unwrap()
    });
    let updates = updater.stop();
    thread::sleep(Duration::from_millis(300));
    let batch = src.read().unwrap();
    let k = src.kernel_counters();
    let programs = src.program_misses();
    let skipped: u64 = programs
        .iter()
        .map(|p| p.recursion_misses + p.kprobe_missed)
        .sum();
    assert_eq!(
        batch.lost_records,
        skipped + k.insert_failed + k.final_lost + k.owner_full + k.missed_return,
        "lost_records holds every skipped run: {programs:?} {k:?}"
    );
    // The figures are the kernel's. Other work on the machine can make a
    // program skip a run between two looks: compare when two reads of ours
    // around bpftool's agree.
    for attempt in 0.. {
        let before = src.program_misses();
        let kernel: Vec<u64> = before
            .iter()
            .map(|p| bpftool_recursion_misses(p.id))
            .collect();
        src.read().unwrap();
        let after = src.program_misses();
        let ours: Vec<u64> = after.iter().map(|p| p.recursion_misses).collect();
        if before == after || attempt == 5 {
            let names: Vec<&str> = after.iter().map(|p| p.name.as_str()).collect();
            assert_eq!(
                ours, kernel,
                "recursion_misses of {names:?}: ours, bpftool's"
            );
            break;
        }
    }
    // Linux counts a skipped kprobe or classic tracepoint run only since
    // 6.7 (`bpf_prog_inc_misses_counters` in `trace_call_bpf`).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut version = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let counts = (version.next().unwrap_or(0), version.next().unwrap_or(0)) >= (6, 7);
    if rps && counts {
        assert!(
            skipped > 0,
            "{} connections while {updates} map updates held CPU {softirq_cpu}'s bpf_prog_active: the kernel skipped no program run ({programs:?})",
            pairs.len()
        );
    }
    println!(
        "NETWATCH-TIER {tier}: {skipped} program runs skipped by the kernel ({}), all in lost_records; {} connections, {updates} map updates",
        programs
            .iter()
            .filter(|p| p.recursion_misses + p.kprobe_missed > 0)
            .map(|p| format!("{} {}+{}", p.name, p.recursion_misses, p.kprobe_missed))
            .collect::<Vec<_>>()
            .join(", "),
        pairs.len()
    );
}

#[test]
fn nested_programs_keep_their_entries_tracepoint_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Tracepoint) {
        nested_programs_keep_their_entries(Tier::Tracepoint, src);
    }
}

#[test]
fn nested_programs_keep_their_entries_kprobe_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Kprobe) {
        nested_programs_keep_their_entries(Tier::Kprobe, src);
    }
}

#[test]
fn nested_programs_keep_their_entries_fentry_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Fentry) {
        nested_programs_keep_their_entries(Tier::Fentry, src);
    }
}

#[test]
fn skipped_runs_are_counted_tracepoint_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Tracepoint) {
        skipped_runs_are_counted(Tier::Tracepoint, src);
    }
}

#[test]
fn skipped_runs_are_counted_kprobe_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Kprobe) {
        skipped_runs_are_counted(Tier::Kprobe, src);
    }
}

#[test]
fn skipped_runs_are_counted_fentry_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Fentry) {
        skipped_runs_are_counted(Tier::Fentry, src);
    }
}
