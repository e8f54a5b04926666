//! The pcap source against real loopback traffic. Every test here NEEDS
//! ROOT (CAP_NET_RAW to capture, root to bind port 53): as another user each
//! skips with one line (`require_root!`), in CI it fails. The tests run one
//! at a time (they share this process's pid, which is what the per-process
//! assertions are about).
//!
//! The byte bound: the source counts transport payload from the IP/TCP/UDP
//! length fields. A TCP stream of N bytes therefore counts N + retransmitted
//! bytes; loopback does not lose segments, so the assertions are exact.
//! UDP datagrams count exactly their payload.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::serial;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netwatch::attribution::Attribution;
use netwatch::source::pcap::{dns, PcapConfig, PcapError, PcapSource};
use netwatch::source::{CountOrigin, SampleBatch, SocketSample, SocketSource};

fn open(device: &str, filter: Option<String>) -> PcapSource {
    PcapSource::with_config(PcapConfig {
        device: Some(device.to_string()),
        filter,
        ..PcapConfig::default()
    })
    .unwrap_or_else(|e| panic!("opening the capture: {e}"))
}

fn our_comm() -> String {
    let c = std::fs::read_to_string("/proc/self/comm").unwrap();
    c.strip_suffix('\n').unwrap_or(&c).to_string()
}

/// The sample of the socket with these endpoints.
fn sample(b: &SampleBatch, local: SocketAddr, remote: Option<SocketAddr>) -> Option<&SocketSample> {
    b.samples
        .iter()
        .find(|s| s.local == Some(local) && s.remote == remote)
}

fn counts(b: &SampleBatch, local: SocketAddr, remote: Option<SocketAddr>) -> (u64, u64) {
    sample(b, local, remote).map_or((0, 0), |s| (s.tx_bytes, s.rx_bytes))
}

/// Read until `want` holds for a batch (packets reach the capture thread
/// within one capture timeout), then once more after a pause, so late
/// over-counting would show. Every batch also goes through `attribution`.
/// Returns the last batch and the per-process (rx, tx) deltas summed for our pid.
fn settle(
    src: &mut PcapSource,
    attribution: &mut Attribution,
    want: impl Fn(&SampleBatch) -> bool,
) -> (SampleBatch, (u64, u64)) {
    let pid = std::process::id();
    let mut ours = (0, 0);
    let mut apply = |b: &SampleBatch| {
        let a = attribution.apply(b);
        if let Some(p) = a.processes.iter().find(|p| p.pid == Some(pid)) {
            ours.0 += p.rx_bytes;
            ours.1 += p.tx_bytes;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = src.read().expect("read");
        apply(&b);
        if want(&b) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(400));
    let b = src.read().expect("read");
    apply(&b);
    (b, ours)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Client sends `up` bytes, server answers `down` bytes, over TCP on `ip`,
/// captured on `lo`; both sockets stay open until the counts are read.
fn tcp_exact(ip: &str) {
    const UP: usize = 1_000_003;
    const DOWN: usize = 70_001;
    require_root!("captures with libpcap (CAP_NET_RAW) and binds UDP port 53");
    let _serial = serial();
    let mut src = open("lo", None);
    let mut attribution = Attribution::new(Instant::now());

    let listener = TcpListener::bind((ip, 0)).unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server_thread = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; UP];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, pattern(UP));
        s.write_all(&pattern(DOWN)).unwrap();
        s // kept open until the test is done
    });
    let mut client = TcpStream::connect(server_addr).unwrap();
    let client_addr = client.local_addr().unwrap();
    client.write_all(&pattern(UP)).unwrap();
    let mut back = vec![0u8; DOWN];
    client.read_exact(&mut back).unwrap();
    let server = server_thread.join().unwrap();

    let (c, s) = (client_addr, server_addr);
    let (b, ours) = settle(&mut src, &mut attribution, |b| {
        counts(b, c, Some(s)) == (UP as u64, DOWN as u64)
            && counts(b, s, Some(c)) == (DOWN as u64, UP as u64)
    });
    let stats = src.stats();
    let bound = "bound: counted = transport payload from IP/TCP length fields = bytes written \
                 + retransmitted bytes; loopback retransmits nothing, so exactly the bytes written";
    let cs = sample(&b, c, Some(s)).expect("a sample for the client socket");
    let ss = sample(&b, s, Some(c)).expect("a sample for the server socket");
    assert_eq!(
        (cs.tx_bytes, cs.rx_bytes),
        (UP as u64, DOWN as u64),
        "client (tx, rx); {bound}; capture stats {stats:?}"
    );
    assert_eq!(
        (ss.tx_bytes, ss.rx_bytes),
        (DOWN as u64, UP as u64),
        "server (tx, rx); {bound}; capture stats {stats:?}"
    );
    for x in [cs, ss] {
        assert_eq!(x.pid, Some(std::process::id()));
        assert_eq!(x.comm.as_deref(), Some(our_comm().as_str()));
        assert_eq!(x.state, "ESTABLISHED");
        assert_eq!(x.origin, CountOrigin::SinceAttach);
        assert!(!x.closed);
    }
    let total = (UP + DOWN) as u64;
    assert_eq!(
        ours,
        (total, total),
        "our process row (rx, tx) summed over the reads; {bound}"
    );
    assert_eq!(stats.decode_errors, 0, "{stats:?}");
    assert_eq!(src.name(), "pcap");
    drop((client, server));
}

#[test]
fn tcp_over_ipv4_loopback_counts_exact_payload_per_socket_and_process() {
    tcp_exact("127.0.0.1");
}

#[test]
fn tcp_over_ipv6_loopback_counts_exact_payload_per_socket_and_process() {
    tcp_exact("::1");
}

/// UDP datagrams of known sizes, captured on `any` (Linux cooked headers):
/// a connected client and an unconnected server, IPv4 and IPv6, including
/// a 65527-byte IPv6 datagram that exceeds lo's MTU and is fragmented.
#[test]
fn udp_datagrams_on_any_count_exactly_including_ipv6_fragments() {
    require_root!("captures with libpcap (CAP_NET_RAW) and binds UDP port 53");
    let _serial = serial();
    for (ip, sizes) in [
        ("127.0.0.1", &[0usize, 1, 100, 1472, 9000, 65507][..]),
        ("::1", &[1usize, 512, 65000, 65527][..]),
    ] {
        let server = UdpSocket::bind((ip, 0)).unwrap();
        let client = UdpSocket::bind((ip, 0)).unwrap();
        let (s, c) = (server.local_addr().unwrap(), client.local_addr().unwrap());
        client.connect(s).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // No filter: libpcap's `udp` does not follow IPv6 extension
        // headers, so it would drop the fragments this test is about.
        let mut src = open("any", None);
        let mut attribution = Attribution::new(Instant::now());

        let mut buf = vec![0u8; 70_000];
        for &n in sizes {
            client.send(&pattern(n)).unwrap();
            let (got, from) = server.recv_from(&mut buf).unwrap();
            assert_eq!((got, from), (n, c));
            // Answer with half.
            server.send_to(&pattern(n / 2), c).unwrap();
            assert_eq!(client.recv(&mut buf).unwrap(), n / 2);
        }
        let up: u64 = sizes.iter().map(|&n| n as u64).sum();
        let down: u64 = sizes.iter().map(|&n| (n / 2) as u64).sum();
        let (b, ours) = settle(&mut src, &mut attribution, |b| {
            counts(b, c, Some(s)) == (up, down) && counts(b, s, None) == (down, up)
        });
        let stats = src.stats();
        let cs = sample(&b, c, Some(s)).expect("client sample");
        let ss = sample(&b, s, None).expect("unconnected server sample");
        assert_eq!(
            (cs.tx_bytes, cs.rx_bytes),
            (up, down),
            "{ip} client (tx, rx): UDP payload is exact; {stats:?}"
        );
        assert_eq!(
            (ss.tx_bytes, ss.rx_bytes),
            (down, up),
            "{ip} server (tx, rx): UDP payload is exact; {stats:?}"
        );
        assert_eq!((&*cs.state, &*ss.state), ("ESTABLISHED", "UNCONN"));
        assert_eq!(
            (cs.pid, ss.pid),
            (Some(std::process::id()), Some(std::process::id()))
        );
        assert_eq!(
            ours,
            (up + down, up + down),
            "{ip} our process row (rx, tx)"
        );
        assert_eq!(stats.decode_errors, 0, "{stats:?}");
        if ip == "::1" {
            // The 65527-byte datagram went as fragments; the later ones are skipped.
            assert!(
                stats.skipped >= 1,
                "expected IPv6 later fragments to be skipped: {stats:?}"
            );
        }
    }
}

/// A tiny DNS responder on 127.0.0.1:53: NXDOMAIN for `nx.*`, a 150 ms
/// delay for `slow.*`, silence for `drop.*`, NOERROR otherwise.
fn responder(sock: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Ok(m) = dns::parse(&buf[..n]) else {
                continue;
            };
            let Some(q) = m.question else { continue };
            if q.name.starts_with("drop.") {
                continue;
            }
            if q.name.starts_with("slow.") {
                std::thread::sleep(Duration::from_millis(150));
            }
            let rcode = if q.name.starts_with("nx.") { 3 } else { 0 };
            let reply = dns::build_message(m.header.id, true, rcode, &q.name, q.qtype);
            sock.send_to(&reply, from).unwrap();
        }
    })
}

#[test]
fn dns_over_loopback_port_53_is_counted_exactly() {
    require_root!("captures with libpcap (CAP_NET_RAW) and binds UDP port 53");
    let _serial = serial();
    let server = UdpSocket::bind("127.0.0.1:53").unwrap_or_else(|e| {
        panic!("binding 127.0.0.1:53 for the test responder (needs root and a free port): {e}")
    });
    let s = server.local_addr().unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let c = client.local_addr().unwrap();
    let mut src = open(
        "lo",
        Some(format!(
            "udp and host 127.0.0.1 and port 53 and port {}",
            c.port()
        )),
    );
    let mut attribution = Attribution::new(Instant::now());
    let stop = Arc::new(AtomicBool::new(false));
    let thread = responder(server.try_clone().unwrap(), Arc::clone(&stop));

    let queries = [
        (1u16, "www.example.com"),
        (2, "api.Example.com"),
        (3, "nx.example.org"),
        (4, "slow.test.net"),
        (5, "drop.example.com"),
    ];
    let mut up = 0u64;
    let mut down = 0u64;
    for (id, name) in queries {
        let q = dns::build_message(id, false, 0, name, 1);
        up += q.len() as u64;
        client.send_to(&q, s).unwrap();
    }
    let mut buf = [0u8; 1500];
    let mut rcodes = Vec::new();
    for _ in 0..4 {
        let n = client.recv(&mut buf).expect("a DNS response");
        down += n as u64;
        let m = dns::parse(&buf[..n]).unwrap();
        rcodes.push((m.header.id, m.header.rcode));
    }
    rcodes.sort();
    assert_eq!(rcodes, vec![(1, 0), (2, 0), (3, 3), (4, 0)]);

    let (b, _) = settle(&mut src, &mut attribution, |b| {
        counts(b, c, None) == (up, down) && counts(b, s, None) == (down, up)
    });
    assert_eq!(
        counts(&b, c, None),
        (up, down),
        "client (tx, rx): exact UDP payload"
    );
    assert_eq!(
        counts(&b, s, None),
        (down, up),
        "responder (tx, rx): exact UDP payload"
    );

    // The analytics are built where snapshots are, from the source's events.
    let mut host = netwatch::snapshot::HostCollectors::new();
    let mut snap = netwatch_common::wire::Snapshot::empty(chrono::Utc::now());
    host.fill_dns(
        &mut snap,
        src.take_dns_events().as_deref(),
        netwatch::clock::mono_now(),
    );
    let a = snap
        .dns_analytics
        .expect("pcap always yields DNS events, so the snapshot has analytics");
    assert_eq!(a.total_queries, 5, "{a:?}");
    assert_eq!(a.total_responses, 4, "{a:?}");
    assert_eq!(a.nxdomain_count, 1, "{a:?}");
    assert_eq!(
        a.latency_buckets.iter().sum::<u64>(),
        4,
        "one latency per answered query: {a:?}"
    );
    assert!(
        a.latency_buckets[5..].iter().sum::<u64>() >= 1,
        "the 150 ms answer lands at ≥100 ms: {a:?}"
    );
    assert_eq!(
        a.top_domains,
        vec![
            ("example.com".to_string(), 3),
            ("example.org".to_string(), 1),
            ("test.net".to_string(), 1),
        ]
    );
    // The interval restarts.
    let mut snap = netwatch_common::wire::Snapshot::empty(chrono::Utc::now());
    host.fill_dns(
        &mut snap,
        src.take_dns_events().as_deref(),
        netwatch::clock::mono_now(),
    );
    let again = snap.dns_analytics.unwrap_or_default();
    assert_eq!((again.total_queries, again.total_responses), (0, 0));
    assert_eq!(src.stats().dns_malformed, 0);

    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();
}

#[test]
fn opening_a_missing_interface_says_what_is_wrong() {
    require_root!("captures with libpcap (CAP_NET_RAW) and binds UDP port 53");
    let _serial = serial();
    let err = PcapSource::open(Some("netwatch-nope0")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PcapError::Open { .. }), "{msg}");
    assert!(
        msg.contains("netwatch-nope0") && msg.contains("ip link"),
        "{msg}"
    );
    let err = PcapSource::with_config(PcapConfig {
        device: Some("lo".into()),
        filter: Some("this is not bpf".into()),
        ..PcapConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, PcapError::Filter { .. }), "{err}");
}

#[test]
fn dropping_the_source_stops_the_capture_thread_promptly() {
    require_root!("captures with libpcap (CAP_NET_RAW) and binds UDP port 53");
    let _serial = serial();
    let src = PcapSource::open(None).expect("capture on any");
    assert_eq!(src.device(), "any");
    assert_eq!(src.detail(), None, "detail() is the eBPF tier slot");
    let t = Instant::now();
    drop(src);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "drop took {:?}",
        t.elapsed()
    );
}

// ---------- servers that reply and close, clients in other processes ----------

/// Request and reply sizes of the reply-and-close workload.
const RC_REQUEST: usize = 12_345;
const RC_REPLY: usize = 54_321;
/// Connections per client process, and client processes.
const RC_CONNS: usize = 150;
const RC_CLIENTS: usize = 2;

/// Entry point of the workload processes; a no-op unless re-executed as one.
/// `server`: accept `RC_CONNS * RC_CLIENTS` connections, each: read exactly
/// the request, write the reply, close at once. `client`: `RC_CONNS` times
/// connect, send the request, read the reply to EOF, then close (`HOLD`
/// unset) or keep the socket until stdin closes (`HOLD=1`).
#[test]
fn reply_and_close_child() {
    let Ok(role) = std::env::var("NETWATCH_PCAP_ROLE") else {
        return;
    };
    let mut out = std::io::stdout();
    match role.as_str() {
        "server" => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            writeln!(out, "PORT {}", l.local_addr().unwrap().port()).unwrap();
            out.flush().unwrap();
            for _ in 0..RC_CONNS * RC_CLIENTS {
                let (mut s, _) = l.accept().unwrap();
                let mut req = vec![0u8; RC_REQUEST];
                s.read_exact(&mut req).unwrap();
                assert_eq!(req, pattern(RC_REQUEST));
                s.write_all(&pattern(RC_REPLY)).unwrap();
                drop(s);
            }
        }
        "client" => {
            let server: SocketAddr = std::env::var("SERVER").unwrap().parse().unwrap();
            let hold = std::env::var("HOLD").is_ok();
            let mut held = Vec::new();
            for _ in 0..RC_CONNS {
                let mut s = TcpStream::connect(server).unwrap();
                s.write_all(&pattern(RC_REQUEST)).unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                assert_eq!(got.len(), RC_REPLY);
                if hold {
                    held.push(s);
                }
            }
            if hold {
                writeln!(out, "HELD").unwrap();
                out.flush().unwrap();
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
            }
        }
        // In its own network namespace: a server on a bridge, captured on
        // `any`, where every packet is seen twice (on the bridge and on the
        // veth enslaved to it). Reports its own process row.
        "bridge-server" => {
            let l = TcpListener::bind("10.99.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            // The listener stays open until the last read: the accepted
            // connections are owned through it, and a run that ends before
            // any scan saw the listener (the 100 exchanges can finish in
            // less than one read on a loaded machine) would test attribution
            // after the owner is gone, not the double capture.
            let keep = l.try_clone().unwrap();
            let mut src = open("any", Some(format!("tcp port {port}")));
            let mut attribution = Attribution::new(Instant::now());
            let mut tally = Tally::default();
            writeln!(out, "PORT {port}").unwrap();
            out.flush().unwrap();
            let server = std::thread::spawn(move || {
                for _ in 0..RC_CONNS {
                    let (mut s, _) = l.accept().unwrap();
                    let mut req = vec![0u8; RC_REQUEST];
                    s.read_exact(&mut req).unwrap();
                    s.write_all(&pattern(RC_REPLY)).unwrap();
                }
            });
            while !server.is_finished() {
                std::thread::sleep(Duration::from_millis(300));
                let b = src.read().expect("read");
                tally.add(&mut attribution, &b, port);
            }
            server.join().unwrap();
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(400));
                let b = src.read().expect("read");
                tally.add(&mut attribution, &b, port);
            }
            drop(keep);
            let (rx, tx) = tally.of(std::process::id());
            let st = src.stats();
            writeln!(
                out,
                "RESULT {rx} {tx} {} {} {}",
                st.repeated_bytes, st.not_local_bytes, st.decode_errors
            )
            .unwrap();
        }
        other => panic!("unknown role {other}"),
    }
    writeln!(out, "DONE").unwrap();
    out.flush().unwrap();
}

/// A workload process, killed if the test fails before reaping it.
struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn spawn_worker(role: &str, server: Option<SocketAddr>, hold: bool) -> Worker {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    if hold {
        cmd.env("HOLD", "1").stdin(std::process::Stdio::piped());
    }
    cmd.args([
        "reply_and_close_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("NETWATCH_PCAP_ROLE", role)
    .stdout(std::process::Stdio::piped());
    if let Some(s) = server {
        cmd.env("SERVER", s.to_string());
    }
    Worker(
        cmd.spawn()
            .expect("re-executing the test binary as a worker"),
    )
}

/// The worker's next report line starting with `prefix` (its rest), or
/// `None` when it ends first.
fn report_line(w: &mut Worker, prefix: &str) -> Option<String> {
    use std::io::BufRead;
    let out = w.0.stdout.as_mut()?;
    let mut r = std::io::BufReader::new(out);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return Some(rest.to_string());
        }
    }
}

/// Per-pid (rx, tx) summed over every read, and the bytes of our port's
/// flows left without an owner, summed over every read.
#[derive(Debug, Default)]
struct Tally {
    per_pid: std::collections::HashMap<u32, (u64, u64)>,
    /// Sockets without owner whose local port is the server's.
    ownerless_servers: (u64, u64),
    /// Sockets without owner talking to the server's port.
    ownerless_clients: (u64, u64),
    ownerless_prev: std::collections::HashMap<netwatch::source::SocketId, (u64, u64)>,
}

impl Tally {
    fn add(&mut self, attribution: &mut Attribution, b: &SampleBatch, port: u16) {
        let a = attribution.apply(b);
        for p in &a.processes {
            if let Some(pid) = p.pid {
                let e = self.per_pid.entry(pid).or_default();
                e.0 += p.rx_bytes;
                e.1 += p.tx_bytes;
            }
        }
        for s in b.samples.iter().filter(|s| s.pid.is_none()) {
            let sum = if s.local.map(|a| a.port()) == Some(port) {
                &mut self.ownerless_servers
            } else if s.remote.map(|a| a.port()) == Some(port) {
                &mut self.ownerless_clients
            } else {
                continue;
            };
            let (rx0, tx0) = self.ownerless_prev.get(&s.id).copied().unwrap_or((0, 0));
            sum.0 += s.rx_bytes - rx0;
            sum.1 += s.tx_bytes - tx0;
            self.ownerless_prev.insert(s.id, (s.rx_bytes, s.tx_bytes));
        }
    }

    fn of(&self, pid: u32) -> (u64, u64) {
        self.per_pid.get(&pid).copied().unwrap_or((0, 0))
    }
}

#[test]
fn servers_that_reply_and_close_keep_their_bytes_per_process() {
    require_root!("captures with libpcap (CAP_NET_RAW) and binds UDP port 53");
    let _serial = serial();
    let mut server = spawn_worker("server", None, false);
    let port: u16 = report_line(&mut server, "PORT ")
        .expect("the server reports its port")
        .parse()
        .unwrap();
    let server_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut src = open("lo", Some(format!("tcp port {port}")));
    let mut attribution = Attribution::new(Instant::now());
    let mut tally = Tally::default();
    // The agent's first read, before any client exists.
    let b = src.read().expect("read");
    tally.add(&mut attribution, &b, port);

    // One client keeps its sockets until we have read (as a client with
    // a connection pool would); the other closes each at once.
    let mut holder = spawn_worker("client", Some(server_addr), true);
    let mut closer = spawn_worker("client", Some(server_addr), false);
    let (holder_pid, closer_pid, server_pid) = (holder.0.id(), closer.0.id(), server.0.id());
    let held_flag = Arc::new(AtomicBool::new(false));
    let held = {
        let out = holder.0.stdout.take().unwrap();
        let flag = Arc::clone(&held_flag);
        // Reads to EOF: the holder's later lines must not hit a closed pipe.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if l == "HELD" {
                    flag.store(true, Ordering::SeqCst);
                }
            }
            flag.load(Ordering::SeqCst)
        })
    };
    // Read as the agent does while the workload runs; release the holder
    // once a read happened after it held everything.
    let mut held_seen = false;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let b = src.read().expect("read");
        tally.add(&mut attribution, &b, port);
        if held_seen {
            drop(holder.0.stdin.take());
        }
        held_seen |= held_flag.load(Ordering::SeqCst);
        let mut running = 0;
        for w in [&mut holder, &mut closer, &mut server] {
            if !matches!(w.0.try_wait(), Ok(Some(_))) {
                running += 1;
            }
        }
        if running == 0 {
            break;
        }
    }
    assert!(held.join().unwrap(), "the holding client reported HELD");
    for w in [&mut holder, &mut closer, &mut server] {
        let st = w.0.wait().unwrap();
        assert!(st.success(), "a workload process failed: {st}");
    }
    // Every packet reaches the capture within its timeout.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let b = src.read().expect("read");
        tally.add(&mut attribution, &b, port);
    }
    let stats = src.stats();
    let n = (RC_CONNS * RC_CLIENTS) as u64;
    let client_truth = ((RC_CONNS * RC_REPLY) as u64, (RC_CONNS * RC_REQUEST) as u64);
    let server_truth = (n * RC_REQUEST as u64, n * RC_REPLY as u64);
    let closer_with_ownerless = (
        tally.of(closer_pid).0 + tally.ownerless_clients.0,
        tally.of(closer_pid).1 + tally.ownerless_clients.1,
    );
    let report = format!(
        "truth (rx, tx): server {server_truth:?}, each client {client_truth:?}; counted: \
         server {:?}, holding client {:?}, closing client {:?} + ownerless client sides {:?}; \
         ownerless server sides {:?}; stats {stats:?}",
        tally.of(server_pid),
        tally.of(holder_pid),
        tally.of(closer_pid),
        tally.ownerless_clients,
        tally.ownerless_servers,
    );
    eprintln!("{report}");
    let bound = "bound: counted = new TCP payload by sequence number = bytes written; \
                 owners of closed sockets from remembered scans or the listener";
    assert_eq!(
        tally.of(server_pid),
        server_truth,
        "server; {bound}; {report}"
    );
    assert_eq!(tally.ownerless_servers, (0, 0), "{report}");
    assert_eq!(
        tally.of(holder_pid),
        client_truth,
        "holding client; {report}"
    );
    // A client socket that opened and closed between two scans has no owner
    // a capture can know: its bytes are reported without one, never lost
    // and never counted twice.
    assert_eq!(
        closer_with_ownerless, client_truth,
        "closing client + ownerless client sides; {report}"
    );
}

/// Network namespaces of one test, deleted when dropped.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("running ip(8)");
    assert!(st.success(), "ip {args:?} failed: {st}");
}

fn spawn_in(ns: &str, role: &str, server: Option<SocketAddr>) -> Worker {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(std::env::current_exe().unwrap())
        .args([
            "reply_and_close_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("NETWATCH_PCAP_ROLE", role)
        .stdout(std::process::Stdio::piped());
    if let Some(s) = server {
        cmd.env("SERVER", s.to_string());
    }
    Worker(cmd.spawn().expect("ip netns exec of the test binary"))
}

/// Every packet of these connections is captured twice (`any` sees it on
/// the bridge and on the veth port): TCP still counts each byte once, and
/// the second copies are counted as repeated, not as traffic. All of it
/// runs in two network namespaces this test creates.
#[test]
fn tcp_captured_twice_on_a_bridge_counts_each_byte_once() {
    require_root!("captures with libpcap (CAP_NET_RAW) and binds UDP port 53");
    let _serial = serial();
    let id = std::process::id();
    let (srv_ns, cli_ns) = (format!("nwpcap-s{id}"), format!("nwpcap-c{id}"));
    ip(&["netns", "add", &srv_ns]);
    let _ns = Netns(vec![srv_ns.clone()]);
    ip(&["netns", "add", &cli_ns]);
    let _ns2 = Netns(vec![cli_ns.clone()]);
    ip(&["-n", &srv_ns, "link", "add", "br0", "type", "bridge"]);
    ip(&[
        "-n", &srv_ns, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", &cli_ns,
    ]);
    ip(&["-n", &srv_ns, "link", "set", "vs", "master", "br0"]);
    ip(&["-n", &srv_ns, "addr", "add", "10.99.0.1/24", "dev", "br0"]);
    ip(&["-n", &cli_ns, "addr", "add", "10.99.0.2/24", "dev", "vc"]);
    for (ns, dev) in [(&srv_ns, "br0"), (&srv_ns, "vs"), (&cli_ns, "vc")] {
        ip(&["-n", ns, "link", "set", dev, "up"]);
    }

    let mut server = spawn_in(&srv_ns, "bridge-server", None);
    let port: u16 = report_line(&mut server, "PORT ")
        .expect("the bridge server reports its port")
        .parse()
        .unwrap();
    let mut client = spawn_in(&cli_ns, "client", Some(([10, 99, 0, 1], port).into()));
    let st = client.0.wait().unwrap();
    assert!(st.success(), "the client failed: {st}");
    let result = report_line(&mut server, "RESULT ").expect("the bridge server's result");
    let st = server.0.wait().unwrap();
    assert!(st.success(), "the bridge server failed: {st}");
    let v: Vec<u64> = result
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let up = (RC_CONNS * RC_REQUEST) as u64;
    let down = (RC_CONNS * RC_REPLY) as u64;
    let report = format!(
        "server (rx, tx) = ({}, {}), truth ({up}, {down}); repeated {}; not local {}; decode errors {}",
        v[0], v[1], v[2], v[3], v[4]
    );
    eprintln!("{report}");
    assert_eq!((v[0], v[1]), (up, down), "{report}");
    assert_eq!(
        v[2],
        up + down,
        "every byte's second copy is repeated: {report}"
    );
    // The client's side is in another namespace: not this host's socket.
    assert_eq!(v[3], up + down, "{report}");
    assert_eq!(v[4], 0, "{report}");
}
