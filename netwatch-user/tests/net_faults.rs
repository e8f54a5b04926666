//! Network faults the tests make themselves, checked against what the
//! kernel then does: two network namespaces of the test's own joined by a
//! veth link ([`netns::VethPair`]), nftables rules on the server's side
//! ([`netns::nft`]) that reject one port with a TCP reset, another with an
//! ICMP host-unreachable, drop everything to a third, only the first SYN to
//! a fourth, and one packet in ten to a fifth. The quality tests
//! (retransmits, connect failures, resets) build on the same helpers; this
//! file proves the faults themselves are what those tests assume, on the
//! host and in both QEMU guests (`cargo xtask test`'s guest step loads the
//! modules and copies the host's `ip` and `nft` in).
//!
//! Needs root (namespaces, nftables). Linux only.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use common::netns;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddrV4, TcpListener};
use std::time::{Duration, Instant};

use netns::{connect_with_syn_retries, nft, nft_counter, tcp_info, NftCounter, VethPair};

/// Bytes the lossy transfer sends.
const PAYLOAD_BYTES: usize = 1 << 20;
/// Percent of the client's packets to the lossy port the rule drops.
const LOSS_PERCENT: u32 = 10;
/// The nft table the rules live in (in the server's namespace).
const TABLE: &str = "faults";

/// The byte at `offset` of the lossy transfer's stream.
fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// The size of each SYN the client sends: IPv4 (20) and TCP (20) headers
/// and the options Linux puts on a SYN by default (MSS 4, SACK-permitted 2,
/// timestamps 10, window scale 3, one NOP: 20). nft counts from the IP
/// header on.
const SYN_BYTES: u64 = 60;

#[test]
fn faults_made_by_nft_rules_behave_exactly() {
    require_root!("makes network namespaces and nftables rules");
    let pair = VethPair::new("faults");
    let server_ip = pair.server_ip;
    // A listener on each port: without the rules each connect would be
    // accepted, so whatever fails below fails because of a rule.
    let [dropped, rejected, unreachable, first_syn, lossy] = pair.in_server(|| {
        [(); 5]
            .map(|()| TcpListener::bind((server_ip, 0)).expect("listening in the server namespace"))
    });
    let port = |l: &TcpListener| l.local_addr().expect("a bound listener").port();
    let (dropped_port, rejected_port, unreachable_port, first_syn_port, lossy_port) = (
        port(&dropped),
        port(&rejected),
        port(&unreachable),
        port(&first_syn),
        port(&lossy),
    );

    // Before any rule, the link carries a connect to the port the rule will reject.
    let before =
        pair.in_client(|| connect_with_syn_retries(SocketAddrV4::new(server_ip, rejected_port), 1));
    before
        .unwrap_or_else(|e| panic!("connect before the rules to {server_ip}:{rejected_port}: {e}"));
    drop(
        rejected
            .accept()
            .expect("accepting the connect made before the rules"),
    );

    nft(
        &pair.server_ns,
        &format!(
            "table inet {TABLE} {{
                counter dropped {{ }}
                counter rejected {{ }}
                counter unreachable {{ }}
                counter first_syn {{ }}
                counter lossy {{ }}
                chain input {{
                    type filter hook input priority filter; policy accept;
                    tcp dport {dropped_port} counter name \"dropped\" drop
                    tcp dport {rejected_port} counter name \"rejected\" reject with tcp reset
                    tcp dport {unreachable_port} counter name \"unreachable\" reject with icmpx type host-unreachable
                    tcp dport {first_syn_port} tcp flags & (syn | ack) == syn numgen inc mod 2 == 0 counter name \"first_syn\" drop
                    tcp dport {lossy_port} numgen random mod 100 < {LOSS_PERCENT} counter name \"lossy\" drop
                }}
            }}"
        ),
    );

    // Rejected with a reset: the one SYN is answered by an RST and the
    // connect fails with ECONNREFUSED at once, with no SYN retransmitted.
    let refused =
        pair.in_client(|| connect_with_syn_retries(SocketAddrV4::new(server_ip, rejected_port), 1));
    let failure = refused.expect_err("a connect to the rejected port must fail");
    assert_eq!(
        failure.error.raw_os_error(),
        Some(libc::ECONNREFUSED),
        "connect to the rejected port: {}",
        failure.error
    );
    let retransmitted = failure.info.map(|i| i.tcpi_total_retrans);
    assert_eq!(
        retransmitted,
        Some(0),
        "SYNs retransmitted before the reset"
    );
    assert_eq!(
        nft_counter(&pair.server_ns, "inet", TABLE, "rejected"),
        NftCounter {
            packets: 1,
            bytes: SYN_BYTES
        },
        "the reject rule saw exactly the one SYN"
    );

    // Dropped: with TCP_SYNCNT=1 the kernel gives up after its SYN retry
    // budget with ETIMEDOUT; the drop rule saw every SYN the client's
    // kernel sent: the first and each it says it retransmitted (1 on 6.1;
    // kernels with linear SYN timeouts fit one more in the same budget).
    let started = Instant::now();
    let timed_out =
        pair.in_client(|| connect_with_syn_retries(SocketAddrV4::new(server_ip, dropped_port), 1));
    let waited = started.elapsed();
    let failure = timed_out.expect_err("a connect to the dropped port must fail");
    assert_eq!(
        failure.error.raw_os_error(),
        Some(libc::ETIMEDOUT),
        "connect to the dropped port: {}",
        failure.error
    );
    let retransmitted = failure
        .info
        .map(|i| u64::from(i.tcpi_total_retrans))
        .expect("the failed socket's TCP_INFO");
    println!(
        "net_faults: the dropped connect gave up after {waited:?} and {retransmitted} SYN retransmit(s)"
    );
    assert!(
        retransmitted >= 1,
        "TCP_SYNCNT=1 allows one SYN retransmit at least"
    );
    let syns = 1 + retransmitted;
    assert_eq!(
        nft_counter(&pair.server_ns, "inet", TABLE, "dropped"),
        NftCounter {
            packets: syns,
            bytes: syns * SYN_BYTES
        },
        "the drop rule saw exactly the SYN and each retransmit"
    );

    // Unreachable: the SYN is answered by an ICMP host-unreachable, which
    // ends a connect in SYN-SENT at once with EHOSTUNREACH.
    let unreached = pair
        .in_client(|| connect_with_syn_retries(SocketAddrV4::new(server_ip, unreachable_port), 1));
    let failure = unreached.expect_err("a connect to the unreachable port must fail");
    assert_eq!(
        failure.error.raw_os_error(),
        Some(libc::EHOSTUNREACH),
        "connect to the unreachable port: {}",
        failure.error
    );
    let retransmitted = failure.info.map(|i| i.tcpi_total_retrans);
    assert_eq!(
        retransmitted,
        Some(0),
        "SYNs retransmitted before the ICMP error"
    );
    assert_eq!(
        nft_counter(&pair.server_ns, "inet", TABLE, "unreachable"),
        NftCounter {
            packets: 1,
            bytes: SYN_BYTES
        },
        "the unreachable rule saw exactly the one SYN"
    );

    // The first SYN dropped: the connect succeeds on the kernel's first SYN
    // retransmit (1 s later), and the established socket counts that one
    // retransmit.
    let started = Instant::now();
    let delayed = pair
        .in_client(|| connect_with_syn_retries(SocketAddrV4::new(server_ip, first_syn_port), 3))
        .unwrap_or_else(|e| panic!("connect with its first SYN dropped: {e}"));
    let connect_time = started.elapsed();
    assert_eq!(
        tcp_info(&delayed).tcpi_total_retrans,
        1,
        "SYN retransmits of the connect whose first SYN was dropped"
    );
    assert_eq!(
        nft_counter(&pair.server_ns, "inet", TABLE, "first_syn"),
        NftCounter {
            packets: 1,
            bytes: SYN_BYTES
        },
        "the first-SYN rule dropped exactly one SYN"
    );
    drop(first_syn.accept().expect("accepting the delayed connect"));
    println!("net_faults: the connect whose first SYN was dropped took {connect_time:?}");

    // Lossy: one client packet in ten dropped at random. The whole stream
    // arrives, intact, and the client's kernel says it retransmitted.
    let receiver = std::thread::spawn(move || -> Result<usize, String> {
        let (mut stream, _) = lossy.accept().map_err(|e| format!("accept: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| format!("set_read_timeout: {e}"))?;
        let mut received = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream
                .read(&mut buf)
                .map_err(|e| format!("read after {received} bytes: {e}"))?;
            if n == 0 {
                return Ok(received);
            }
            if let Some(bad) = (0..n).find(|i| buf[*i] != pattern(received + i)) {
                return Err(format!("byte {} of the stream is wrong", received + bad));
            }
            received += n;
        }
    });
    let payload: Vec<u8> = (0..PAYLOAD_BYTES).map(pattern).collect();
    // SYNs are dropped too: allow six retransmits.
    let mut sender = pair
        .in_client(|| connect_with_syn_retries(SocketAddrV4::new(server_ip, lossy_port), 6))
        .unwrap_or_else(|e| panic!("connect to the lossy port: {e}"));
    sender
        .write_all(&payload)
        .expect("sending over the lossy link");
    sender
        .shutdown(Shutdown::Write)
        .expect("shutting down the sending side");
    let received = receiver
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        .unwrap_or_else(|e| panic!("the receiver failed: {e}"));
    assert_eq!(
        received, PAYLOAD_BYTES,
        "bytes received over the lossy link"
    );
    let info = tcp_info(&sender);
    let lost = nft_counter(&pair.server_ns, "inet", TABLE, "lossy");
    println!(
        "net_faults: {PAYLOAD_BYTES} bytes over a {LOSS_PERCENT}% lossy link: the rule dropped {} packet(s), the sender retransmitted {} segment(s)",
        lost.packets, info.tcpi_total_retrans
    );
    assert!(
        lost.packets > 0,
        "the numgen rule dropped nothing: {lost:?}"
    );
    assert!(
        info.tcpi_total_retrans > 0,
        "the sender retransmitted nothing although the rule dropped {} packet(s)",
        lost.packets
    );
}

#[test]
fn nft_counter_listings_are_parsed() {
    let listing = "table inet faults {\n\tcounter dropped {\n\t\tpackets 2 bytes 120\n\t}\n}\n";
    assert_eq!(
        netns::parse_nft_counter(listing),
        Some(NftCounter {
            packets: 2,
            bytes: 120
        })
    );
    assert_eq!(netns::parse_nft_counter("table inet faults {\n}\n"), None);
}
