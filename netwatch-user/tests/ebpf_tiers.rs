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

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use netwatch::attribution::{Attributed, Attribution};
use netwatch::source::ebpf::tier::{self, Tier};
use netwatch::source::ebpf::{btf::SockOffsets, EbpfSource, LoadError, LoadOptions, TierChoice};
use netwatch::source::SocketSource;
use netwatch_common::wire::ConnectionDetail;

// ---------- environment ----------

/// The kernel (and this process's pid, whose bytes the tests count) is
/// shared state: tests that load programs or move bytes run one at a time
/// even when the harness runs tests in parallel.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    KERNEL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the eBPF tests load BPF programs and must run as root (run `cargo xtask test`)"
    );
}

fn required_tiers() -> Vec<String> {
    std::env::var("NETWATCH_REQUIRE_TIERS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Why `tier` cannot exist on this kernel, if it cannot.
fn genuinely_unavailable(tier: Tier, err: &LoadError) -> Option<String> {
    let msg = err.to_string();
    match tier {
        Tier::Tracepoint => {
            let btf = btf_rs::Btf::from_file("/sys/kernel/btf/vmlinux").ok()?;
            btf.resolve_ids_by_name("btf_trace_sock_send_length")
                .map_or(true, |ids| ids.is_empty())
                .then(|| format!("sock:sock_send_length does not exist (Linux < 6.3): {msg}"))
        }
        Tier::Kprobe => (!std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists())
            .then(|| "the kernel has no kprobe PMU (CONFIG_KPROBES is not set)".to_string()),
        Tier::Fentry => msg
            .contains("EPERM")
            .then(|| format!("the kernel refuses BPF trampolines: {msg}")),
    }
}

/// Load `tier`, or return None (skip) if the kernel genuinely lacks it and
/// the tier is not required here.
fn load_or_skip(tier: Tier) -> Option<EbpfSource> {
    require_root();
    let opts = LoadOptions {
        tier: TierChoice::Only(tier),
        ..LoadOptions::default()
    };
    match EbpfSource::load(&opts) {
        Ok(src) => {
            println!("NETWATCH-TIER {tier}: loaded and attached");
            Some(src)
        }
        Err(e) => {
            let required = required_tiers().iter().any(|t| t == tier.name());
            match genuinely_unavailable(tier, &e) {
                Some(why) if !required => {
                    println!("NETWATCH-TIER {tier}: SKIPPED, unavailable on this kernel: {why}");
                    None
                }
                _ => panic!("{tier} tier failed to load on a kernel that should allow it: {e}"),
            }
        }
    }
}

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
        other => panic!("unknown workload role {other}"),
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
        for (name, prog) in src.ebpf().programs() {
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
    require_root();
    let offsets = SockOffsets::from_kernel().unwrap();
    let btf = aya::Btf::from_sys_fs().unwrap();
    let mut loaded = 0;
    for t in Tier::ALL {
        let mut ebpf = tier::open(t, &LoadOptions::default(), &offsets).unwrap();
        for &hook in t.programs().iter().chain(&tier::LIFECYCLE) {
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
    require_root();
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
    );
}

/// Load the best tier this kernel allows with custom map sizes, or skip.
fn load_best_with(max_sockets: u32, ringbuf_bytes: u32, drain_thread: bool) -> Option<EbpfSource> {
    require_root();
    let opts = LoadOptions {
        tier: TierChoice::Auto,
        max_sockets,
        ringbuf_bytes,
        drain_thread,
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
