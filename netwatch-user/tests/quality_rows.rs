//! The default mode's per-process quality figures, end to end: the real
//! agent (the library's `Agent` on the kernel collector, the best tier this
//! kernel allows) builds a snapshot while this process makes faults of its
//! own over a veth pair (nftables in namespaces of the test's own): its
//! row's `tcp_quality` carries exactly the retransmits `TCP_INFO` counted,
//! the connects it made and the refused ones, its connection row the
//! socket's own figures, and the snapshot still reads in netwatch-sdk 0.3.2.
//! Needs root (BPF, namespaces, nftables).

#[path = "common/netns.rs"]
mod netns;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netns::{Side, VethPair};
use netwatch::agent::Agent;
use netwatch::source::ebpf::{EbpfSource, LoadOptions, TierChoice};
use netwatch_common::wire::{CollectorInfo, Snapshot};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test NEEDS ROOT: it loads BPF programs and makes namespaces; run it as root"
    );
}

fn agent() -> Agent {
    let src = EbpfSource::load(&LoadOptions {
        tier: TierChoice::Auto,
        max_sockets: 65536,
        ringbuf_bytes: 1 << 20,
        drain_thread: true,
        pin: None,
    })
    .unwrap_or_else(|e| panic!("no eBPF tier loads on this kernel: {e}"));
    let info = CollectorInfo {
        source: "ebpf".into(),
        ebpf_tier: None,
        estimated: false,
        fallback_reason: None,
        lost_records: None,
        connections_truncated: None,
        processes_folded: None,
    };
    Agent::new(
        Box::new(src),
        info,
        netwatch::snapshot::HostCollectors::new(),
        Vec::new(),
        Instant::now(),
    )
}

/// Send `n` bytes over `c` while a thread reads them all from `listener`'s
/// connection `srv`.
fn send_all(c: &mut TcpStream, srv: &mut TcpStream, n: usize) {
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < n {
                match srv.read(&mut buf).expect("server read") {
                    0 => break,
                    k => got += k,
                }
            }
            got
        });
        let chunk = vec![0xa5u8; 1 << 16];
        let mut sent = 0;
        while sent < n {
            let k = (n - sent).min(chunk.len());
            c.write_all(&chunk[..k]).expect("client write");
            sent += k;
        }
        assert_eq!(reader.join().expect("reader"), n);
    });
}

#[test]
fn a_process_row_carries_its_retransmits_and_connects_exactly() {
    require_root();
    let mut agent = agent();
    agent.prime();
    let pair = VethPair::new("qrow");
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
    let n = if std::env::var_os("NETWATCH_GUEST").is_some() {
        1 << 20
    } else {
        8 << 20
    };
    send_all(&mut c, &mut srv, n);
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
    // The connect results and retransmit counts reach the agent through
    // ring buffers and maps read at the tick: one snapshot covers them.
    let snap = agent.snapshot();
    let me = std::process::id();
    let row = snap
        .processes
        .iter()
        .flatten()
        .find(|p| p.pid == Some(me))
        .unwrap_or_else(|| panic!("no row for this process ({me})"));
    let q = row
        .tcp_quality
        .clone()
        .unwrap_or_else(|| panic!("no tcp_quality on our row: {row:?}"));
    assert_eq!(
        (q.retransmits, q.retransmitted_bytes),
        (u64::from(info.tcpi_total_retrans), info.tcpi_bytes_retrans),
        "our row's retransmits against the socket's TCP_INFO"
    );
    assert_eq!(
        (q.connects, q.connects_refused, q.connect_failures()),
        (1 + REFUSED, REFUSED, REFUSED),
        "{q:?}"
    );
    assert!(
        q.connect_ms_avg.is_some() && q.rtt_us_avg.is_some(),
        "{q:?}"
    );
    // The client connection's own row.
    let local = c.local_addr().expect("local address").to_string();
    let conn = snap
        .connections
        .iter()
        .flatten()
        .find(|k| k.local_addr == local && k.pid == Some(me))
        .unwrap_or_else(|| panic!("no connection row for {local}"));
    let cq = conn.tcp_quality.clone().expect("the connection's quality");
    assert_eq!(
        (cq.retransmits, cq.retransmitted_bytes),
        (u64::from(info.tcpi_total_retrans), info.tcpi_bytes_retrans)
    );
    assert!(cq.connect_ms.is_some(), "{cq:?}");
    sdk_reads(&snap);
}

/// netwatch-sdk 0.3.2 reads the snapshot, additive fields and all.
fn sdk_reads(snap: &Snapshot) {
    let text = serde_json::to_string(snap).expect("a snapshot serializes");
    let _: netwatch_sdk::types::Snapshot =
        serde_json::from_str(&text).expect("netwatch-sdk 0.3.2 reads our snapshot");
}
