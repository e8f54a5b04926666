//! The `ss` fallback's TCP quality figures against the kernel's own: a
//! transfer over a veth pair whose far side drops 3% of the segments at
//! random (nftables, namespaces of the test's own), then the client
//! socket's retransmission counters as the ss source reports them equal
//! `TCP_INFO`'s, and the per-process figures of a snapshot built from two
//! reads carry exactly the retransmits between them. Needs root
//! (namespaces, nftables).

#[macro_use]
mod common;

use common::netns;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netns::{Side, VethPair};
use netwatch::snapshot::quality::QualityTracker;
use netwatch::source::ss::SsSource;
use netwatch::source::{SampleBatch, SocketSource as _};
use netwatch_common::wire::ProcessBandwidth;

/// A read of the ss source in the client namespace, where `ss` sees `c`.
fn read(pair: &VethPair, src: &mut SsSource) -> SampleBatch {
    pair.enter(Side::Client, || src.read().expect("ss source read"))
}

/// The sample of `c` in `batch`.
fn sample_of(batch: &SampleBatch, c: &TcpStream) -> netwatch::source::TcpCounters {
    let key = (
        c.local_addr().expect("local address"),
        c.peer_addr().expect("peer address"),
    );
    let s = batch
        .samples
        .iter()
        .find(|s| s.local == Some(key.0) && s.remote == Some(key.1))
        .unwrap_or_else(|| panic!("no ss sample for {key:?}"));
    assert_eq!(s.pid, Some(std::process::id()));
    s.tcp
        .expect("a TCP sample from ss carries quality counters")
}

#[test]
fn ss_retransmits_equal_the_kernels_count() {
    require_root!("makes network namespaces and nftables rules");
    let pair = VethPair::new("ssq");
    let port = 7100;
    let server = SocketAddr::from((pair.server_ip, port));
    let listener = pair.enter(Side::Server, || TcpListener::bind(server).expect("bind"));
    let mut c = pair.enter(Side::Client, || {
        TcpStream::connect(server).expect("connect")
    });
    let mut src = SsSource::new();
    let mut tracker = QualityTracker::default();
    // The first read is the baseline the per-process figures start from.
    tracker.tcp(&read(&pair, &mut src), &[], Duration::ZERO);
    pair.nft(Side::Server, &netns::random_drop(port, 3));
    let n = if std::env::var_os("NETWATCH_GUEST").is_some() {
        1 << 20
    } else {
        8 << 20
    };
    let started = Instant::now();
    let (mut srv, _) = listener.accept().expect("accept");
    netns::send_all(&mut c, &mut srv, n);
    let info = netns::wait_all_acked(&c, Duration::from_secs(60));
    assert!(
        info.tcpi_total_retrans > 0,
        "3% loss over {n} bytes made no retransmission ({:?}): the fault did not work",
        started.elapsed()
    );
    let batch = read(&pair, &mut src);
    let t = sample_of(&batch, &c);
    assert_eq!(
        (t.retrans_segs, t.retrans_bytes),
        (u64::from(info.tcpi_total_retrans), info.tcpi_bytes_retrans),
        "ss's counters against TCP_INFO"
    );
    // The process's row: exactly the retransmits of the interval.
    let figures = tracker.tcp(&batch, &[], Duration::from_secs(1));
    let mut rows = [ProcessBandwidth::network_only(
        "ss_quality".into(),
        Some(std::process::id()),
        0,
        0,
        0.0,
        0.0,
        1,
    )];
    figures.fill(&mut rows);
    let q = rows[0]
        .tcp_quality
        .clone()
        .expect("our row has TCP figures");
    assert_eq!(
        (q.retransmits, q.retransmitted_bytes),
        (u64::from(info.tcpi_total_retrans), info.tcpi_bytes_retrans)
    );
    assert_eq!(q.rtt_us_avg.map(|r| r > 0.0), Some(true));
}
