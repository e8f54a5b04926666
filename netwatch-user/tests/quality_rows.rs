//! The default mode's per-process quality figures, end to end, on every
//! hook tier: the real agent (the library's `Engine` on the kernel
//! collector forced to one tier, with the DNS capture beside it) builds
//! snapshots while this process makes faults of its own over a veth pair
//! (nftables in namespaces of the test's own) and asks a DNS server of its
//! own: its row's `tcp_quality` carries exactly the retransmits `TCP_INFO`
//! counted, the connects it made and the refused ones, its `dns` exactly
//! its lookups, its connection row the socket's own figures, and the
//! snapshots still read in netwatch-sdk 0.3.2. Runs on the host and in
//! both QEMU guests (`cargo xtask test`). Needs root (BPF, namespaces,
//! nftables, a capture).

#[macro_use]
mod common;

use common::netns;
use common::tiers;

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns::{Side, VethPair};
use netwatch::engine::Engine;
use netwatch::snapshot::quality;
use netwatch::source::dns_capture::DnsCapture;
use netwatch::source::ebpf::tier::Tier;
use netwatch::source::ebpf::EbpfSource;
use netwatch::source::pcap::dns;
use netwatch_common::wire::{
    CollectorInfo, ProcessBandwidth, ProcessDns, ProcessTcpQuality, Snapshot,
};

/// The agent on `src`, with a DNS capture opened in the client's namespace.
fn agent(src: EbpfSource, pair: &VethPair) -> Engine {
    let capture = pair
        .enter(Side::Client, || DnsCapture::open(None))
        .unwrap_or_else(|e| panic!("the DNS capture: {e}"));
    let info = CollectorInfo {
        source: "ebpf".into(),
        ebpf_tier: None,
        estimated: false,
        fallback_reason: None,
        lost_records: None,
        connections_truncated: None,
        processes_folded: None,
    };
    Engine::new(
        Box::new(src),
        info,
        netwatch::snapshot::HostCollectors::new(),
        Instant::now(),
    )
    .with_dns_feed(Box::new(capture))
}

/// A DNS server on UDP port 53 of `pair`'s server end, answering NXDOMAIN
/// for names under `nx.` and an empty answer otherwise, until dropped.
struct DnsServer {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    fn start(pair: &VethPair) -> Self {
        let addr = SocketAddr::from((pair.server_ip, 53));
        let udp = pair.enter(Side::Server, || {
            UdpSocket::bind(addr).expect("binding the DNS server")
        });
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("a read timeout");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = udp.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(m) = dns::parse(&buf[..n]) else {
                    continue;
                };
                let Some(q) = m.question else { continue };
                let rcode = if q.name.starts_with("nx.") { 3 } else { 0 };
                let answer = dns::build_message(m.header.id, true, rcode, &q.name, q.qtype);
                let _ = udp.send_to(&answer, from);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// This process's figures summed over snapshots (by the same sum the
/// folded `(others)` row uses), and how many of its rows had a connect
/// time and an RTT.
struct Own {
    row: ProcessBandwidth,
    rtt_rows: u64,
    connect_ms: usize,
    rtt: usize,
}

impl Own {
    fn new() -> Self {
        Self {
            row: ProcessBandwidth::network_only("sum".into(), None, 0, 0, 0.0, 0.0, 0),
            rtt_rows: 0,
            connect_ms: 0,
            rtt: 0,
        }
    }

    fn add(&mut self, snap: &Snapshot) {
        let me = std::process::id();
        for p in snap
            .processes
            .iter()
            .flatten()
            .filter(|p| p.pid == Some(me))
        {
            if let Some(q) = &p.tcp_quality {
                self.connect_ms += usize::from(q.connect_ms_avg.is_some());
                self.rtt += usize::from(q.rtt_us_avg.is_some());
            }
            quality::merge(&mut self.row, p, &mut self.rtt_rows);
        }
    }

    fn tcp(&self) -> ProcessTcpQuality {
        self.row.tcp_quality.clone().unwrap_or_default()
    }

    fn dns(&self) -> ProcessDns {
        self.row.dns.clone().unwrap_or_default()
    }
}

fn quality_rows(tier: Tier) {
    let _serial = tiers::serial();
    let Some(src) = tiers::load_or_skip(tier) else {
        return;
    };
    let pair = VethPair::new("qrow");
    let _dns = DnsServer::start(&pair);
    let mut agent = agent(src, &pair);
    agent.prime();
    let (data_port, refused_port) = (7200, 7201);
    let server = SocketAddr::from((pair.server_ip, data_port));
    let listener = pair.enter(Side::Server, || TcpListener::bind(server).expect("bind"));
    let mut c = pair.enter(Side::Client, || {
        TcpStream::connect(server).expect("connect")
    });
    let (mut srv, _) = listener.accept().expect("accept");
    // Loss on the client's data only (segments to the port), after the
    // handshake: only the client socket retransmits.
    pair.nft(
        Side::Server,
        &format!(
            "table inet q {{\n chain input {{\n type filter hook input priority 0;\n \
             tcp dport {data_port} numgen random mod 100 < 3 drop\n \
             tcp dport {refused_port} reject with tcp reset\n }}\n}}\n"
        ),
    );
    let n = if tiers::guest() { 1 << 20 } else { 8 << 20 };
    netns::send_all(&mut c, &mut srv, n);
    let info = netns::wait_all_acked(&c, Duration::from_secs(60));
    assert!(
        info.tcpi_total_retrans > 0,
        "the 3% loss made no retransmission"
    );
    const REFUSED: u64 = 3;
    for _ in 0..REFUSED {
        let e = pair
            .enter(Side::Client, || {
                TcpStream::connect(SocketAddr::from((pair.server_ip, refused_port)))
            })
            .expect_err("a connect to the rejected port");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    // Four lookups, one of them NXDOMAIN, from one UDP socket.
    const NAMES: [&str; 4] = [
        "a.example.com",
        "nx.example.com",
        "b.example.net",
        "c.example.org",
    ];
    pair.enter(Side::Client, || {
        let udp = UdpSocket::bind("0.0.0.0:0").expect("a client socket");
        udp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        for (id, name) in (1u16..).zip(NAMES) {
            let to = SocketAddr::from((pair.server_ip, 53));
            udp.send_to(&dns::build_message(id, false, 0, name, 1), to)
                .expect("a query");
            let mut buf = [0u8; 1500];
            udp.recv(&mut buf)
                .unwrap_or_else(|e| panic!("no answer to {name}: {e}"));
        }
    });
    // Counters reach the agent through maps, ring buffers and the capture
    // thread: snapshots until the lookups are in (each interval's figures
    // are its own, so they add up), then one more.
    let mut own = Own::new();
    let mut snaps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = agent.snapshot();
        own.add(&snap);
        snaps.push(snap);
        if own.dns().responses >= NAMES.len() as u64 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = agent.snapshot();
    own.add(&last);
    snaps.push(last);
    let q = &own.tcp();
    assert_eq!(
        (q.retransmits, q.retransmitted_bytes),
        (u64::from(info.tcpi_total_retrans), info.tcpi_bytes_retrans),
        "{tier}: our row's retransmits against the socket's TCP_INFO"
    );
    assert_eq!(
        (q.connects, q.connects_refused, q.connect_failures()),
        (1 + REFUSED, REFUSED, REFUSED),
        "{tier}: {q:?}"
    );
    assert!(
        own.connect_ms >= 1 && own.rtt >= 1,
        "{tier}: {} rows with a connect time, {} with an RTT",
        own.connect_ms,
        own.rtt
    );
    let d = &own.dns();
    assert_eq!(
        (d.queries, d.responses, d.failures, d.nxdomain, d.unanswered),
        (4, 4, 1, 1, 0),
        "{tier}: our row's DNS figures"
    );
    let a = snaps.iter().filter_map(|s| s.dns_analytics.as_ref());
    assert_eq!(
        a.map(|a| a.total_queries).sum::<u64>(),
        4,
        "{tier}: dns_analytics"
    );
    // The client connection's own row (cumulative), in the last snapshot
    // that listed it.
    let local = c.local_addr().expect("local address").to_string();
    let cq = snaps
        .iter()
        .rev()
        .flat_map(|s| s.connections.iter().flatten())
        .find(|k| k.local_addr == local && k.pid == Some(std::process::id()))
        .and_then(|k| k.tcp_quality.clone())
        .unwrap_or_else(|| panic!("{tier}: no connection row with quality for {local}"));
    assert_eq!(
        (cq.retransmits, cq.retransmitted_bytes),
        (u64::from(info.tcpi_total_retrans), info.tcpi_bytes_retrans)
    );
    assert!(cq.connect_ms.is_some(), "{cq:?}");
    for snap in &snaps {
        sdk_reads(snap);
    }
}

#[test]
fn quality_rows_tracepoint_tier() {
    quality_rows(Tier::Tracepoint);
}

#[test]
fn quality_rows_kprobe_tier() {
    quality_rows(Tier::Kprobe);
}

#[test]
fn quality_rows_fentry_tier() {
    quality_rows(Tier::Fentry);
}

/// netwatch-sdk 0.3.2 reads the snapshot, additive fields and all.
fn sdk_reads(snap: &Snapshot) {
    let text = serde_json::to_string(snap).expect("a snapshot serializes");
    let _: netwatch_sdk::types::Snapshot =
        serde_json::from_str(&text).expect("netwatch-sdk 0.3.2 reads our snapshot");
}
