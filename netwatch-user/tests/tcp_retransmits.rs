//! Retransmits per TCP connection from the kernel collector, on every hook
//! tier, against the kernel's own count for the same socket. The test makes
//! the loss itself: two network namespaces of its own joined by a veth pair
//! (`common/netns.rs`), and an nftables rule on the server side that drops
//! 3% of the segments to the test's port at random. A client in the client
//! namespace (a socket of this process) sends until the kernel has
//! retransmitted at least once, waits until every byte is acknowledged, and
//! reads its socket's `TCP_INFO`; the collector's sample for that socket
//! must carry exactly `tcpi_total_retrans` segments and `tcpi_bytes_retrans`
//! bytes, and exactly the bytes sent; so must the socket's final record once
//! it is closed (with the drop rule gone, so nothing more is retransmitted).
//! A connection that retransmitted before the programs were attached counts
//! only what it retransmits after, as its bytes do.
//!
//! Needs root (BPF programs, network namespaces, nftables), `ip` and `nft`.
//! A tier the kernel genuinely lacks is skipped with the reason printed;
//! `NETWATCH_REQUIRE_TIERS` (comma separated) turns that skip into a
//! failure, as in `ebpf_tiers.rs`. `NETWATCH_GUEST` (set in the QEMU
//! guests, software emulation) sizes the transfer down.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use common::netns;

use common::tiers;
use tiers::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

use netns::{random_drop, tcp_info, Side, VethPair};
use netwatch::attribution::Attribution;
use netwatch::source::ebpf::tier::Tier;
use netwatch::source::ebpf::{EbpfSource, LoadOptions};
use netwatch::source::{SocketSample, SocketSource, TcpCounters};

// ---------- environment (as in ebpf_tiers.rs) ----------

// ---------- retransmits (h/retrans) ----------

/// Bytes written to `s` and not yet acknowledged by the peer (`SIOCOUTQ`).
fn unacknowledged(s: &TcpStream) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    n
}

/// Bytes each transfer sends at least: less in the guests (TCG).
fn transfer_size() -> u64 {
    if guest() {
        1 << 20
    } else {
        8 << 20
    }
}

/// Send in chunks until at least `min` bytes went out and the kernel has
/// retransmitted once more than before (3% loss makes that certain well
/// before the cap), then wait until everything is acknowledged, so that
/// no retransmit can follow. Returns the bytes sent.
fn send_until_retransmitted(client: &mut TcpStream, min: u64, what: &str) -> u64 {
    let before = tcp_info(client).tcpi_total_retrans;
    let cap: u64 = 64 << 20;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut sent = 0u64;
    while sent < min || tcp_info(client).tcpi_total_retrans == before {
        assert!(
            sent < cap,
            "[{what}] {sent} bytes through a 3% drop rule and no retransmit"
        );
        client.write_all(&chunk).expect("client write");
        sent += chunk.len() as u64;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while unacknowledged(client) != 0 || tcp_info(client).tcpi_unacked != 0 {
        assert!(
            Instant::now() < deadline,
            "[{what}] still {} bytes unacknowledged after 180 s",
            unacknowledged(client)
        );
        thread::sleep(Duration::from_millis(20));
    }
    sent
}

/// The kernel's (`tcpi_total_retrans`, `tcpi_bytes_retrans`) of `s`.
fn totals(s: &TcpStream) -> (u64, u64) {
    let info = tcp_info(s);
    (u64::from(info.tcpi_total_retrans), info.tcpi_bytes_retrans)
}

/// A server in `pair`'s server namespace behind a 3% drop rule, reading
/// everything until the client closes (returns the byte count), and a
/// client connected to it from the client namespace.
fn lossy_connection(pair: &VethPair) -> (TcpStream, thread::JoinHandle<u64>) {
    let listener = pair
        .enter(Side::Server, || {
            TcpListener::bind((pair.ip(Side::Server), 0))
        })
        .expect("binding the server in its namespace");
    let server_addr = listener.local_addr().expect("server address");
    pair.nft(Side::Server, &random_drop(server_addr.port(), 3));
    let server = thread::spawn(move || -> u64 {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("server read: {e}"),
            }
        }
    });
    let client = pair
        .enter(Side::Client, || TcpStream::connect(server_addr))
        .expect("connecting from the client namespace");
    let local = client.local_addr().expect("client address");
    assert_eq!(local.ip(), std::net::IpAddr::V4(pair.ip(Side::Client)));
    (client, server)
}

/// The samples of the socket `local` -> `remote` in a batch.
fn samples_of(
    samples: &[SocketSample],
    local: SocketAddr,
    remote: SocketAddr,
) -> Vec<&SocketSample> {
    samples
        .iter()
        .filter(|s| s.local == Some(local) && s.remote == Some(remote))
        .collect()
}

/// The one sample of the socket that carries its TCP counters, checked to
/// be the only one that does.
fn counters_of(samples: &[&SocketSample], what: &str) -> (TcpCounters, u64) {
    let with: Vec<_> = samples.iter().filter(|s| s.tcp.is_some()).collect();
    assert_eq!(
        with.len(),
        1,
        "{what}: exactly one sample carries the TCP counters: {samples:?}"
    );
    let tx: u64 = samples.iter().map(|s| s.tx_bytes).sum();
    (with[0].tcp.expect("filtered on Some"), tx)
}

fn retransmits(tier: Tier, mut src: EbpfSource) {
    let mut attribution = Attribution::new(Instant::now());
    attribution.apply(&src.read().expect("baseline read"));

    let pair = VethPair::new("rt");
    let (mut client, server) = lossy_connection(&pair);
    let (client_addr, server_addr) = (
        client.local_addr().expect("client address"),
        client.peer_addr().expect("server address"),
    );

    let sent = send_until_retransmitted(&mut client, transfer_size(), &tier.to_string());
    let kernel = totals(&client);
    println!(
        "NETWATCH-RETRANS tier={tier} sent={sent} total_retrans={} bytes_retrans={}",
        kernel.0, kernel.1
    );

    // The live socket: the sample and the connection row.
    let batch = src.read().expect("read after the transfer");
    let live = samples_of(&batch.samples, client_addr, server_addr);
    let (tcp, tx) = counters_of(&live, &format!("[{tier}] live client socket"));
    assert_eq!(
        (tcp.retrans_segs, tcp.retrans_bytes),
        kernel,
        "[{tier}] retransmitted segments and bytes, collector vs TCP_INFO"
    );
    assert_eq!(tx, sent, "[{tier}] bytes sent, exactly");
    let a = attribution.apply(&batch);
    let row: Vec<_> = a
        .connections
        .iter()
        .filter(|c| {
            c.local_addr == client_addr.to_string() && c.remote_addr == server_addr.to_string()
        })
        .collect();
    assert_eq!(row.len(), 1, "[{tier}] one connection row: {row:?}");
    let q = row[0].tcp_quality.as_ref().expect("tcp_quality on the row");
    assert_eq!(
        (q.retransmits, q.retransmitted_bytes),
        kernel,
        "[{tier}] ConnectionDetail.tcp_quality"
    );
    assert_eq!(row[0].tx_bytes, Some(sent), "[{tier}] row tx_bytes");

    // The final record: no more loss, close both ends, wait for it.
    pair.nft_flush(Side::Server);
    drop(client);
    assert_eq!(server.join().expect("server thread"), sent);
    let deadline = Instant::now() + Duration::from_secs(30);
    let closed = loop {
        let batch = src.read().expect("read after close");
        let found: Vec<SocketSample> = samples_of(&batch.samples, client_addr, server_addr)
            .into_iter()
            .filter(|s| s.closed)
            .cloned()
            .collect();
        if !found.is_empty() {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "[{tier}] no final record of {client_addr} within 30 s"
        );
        thread::sleep(Duration::from_millis(100));
    };
    let closed: Vec<&SocketSample> = closed.iter().collect();
    let (tcp, tx) = counters_of(&closed, &format!("[{tier}] final record"));
    assert_eq!(
        (tcp.retrans_segs, tcp.retrans_bytes),
        kernel,
        "[{tier}] final record's retransmits"
    );
    assert_eq!(tx, sent, "[{tier}] final record's bytes sent");
    println!(
        "NETWATCH-TIER {tier}: retransmits match TCP_INFO ({} segments, {} bytes)",
        kernel.0, kernel.1
    );
}

#[test]
fn tcp_retransmits_tracepoint_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Tracepoint) {
        retransmits(Tier::Tracepoint, src);
    }
}

#[test]
fn tcp_retransmits_kprobe_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Kprobe) {
        retransmits(Tier::Kprobe, src);
    }
}

#[test]
fn tcp_retransmits_fentry_tier() {
    let _serial = serial();
    if let Some(src) = load_or_skip(Tier::Fentry) {
        retransmits(Tier::Fentry, src);
    }
}

/// A connection that retransmitted before the programs were attached:
/// seeding enters it with the kernel's totals then as a baseline, so its
/// counts, like its bytes, start at 0 and then follow the kernel's exactly.
/// Loads the best tier the kernel allows.
#[test]
fn tcp_retransmits_before_attach_are_not_counted() {
    let _serial = serial();
    require_root!("loads BPF programs, makes network namespaces and nftables rules");
    let pair = VethPair::new("rs");
    let (mut client, server) = lossy_connection(&pair);
    let (client_addr, server_addr) = (
        client.local_addr().expect("client address"),
        client.peer_addr().expect("server address"),
    );
    send_until_retransmitted(&mut client, transfer_size() / 4, "before attach");
    let before = totals(&client);

    let mut src = EbpfSource::load(&LoadOptions::default()).expect("loading the best tier");
    let tier = src.tier();
    let batch = src.read().expect("first read");
    let seeded = samples_of(&batch.samples, client_addr, server_addr);
    let (tcp, tx) = counters_of(&seeded, &format!("[{tier}] seeded socket"));
    assert_eq!(
        ((tcp.retrans_segs, tcp.retrans_bytes), tx),
        ((0, 0), 0),
        "[{tier}] a seeded socket starts at 0 (the kernel had {before:?})"
    );

    let sent = send_until_retransmitted(&mut client, transfer_size() / 4, &tier.to_string());
    let after = totals(&client);
    let batch = src.read().expect("read after the transfer");
    let live = samples_of(&batch.samples, client_addr, server_addr);
    let (tcp, tx) = counters_of(&live, &format!("[{tier}] seeded socket after"));
    assert_eq!(
        (tcp.retrans_segs, tcp.retrans_bytes),
        (after.0 - before.0, after.1 - before.1),
        "[{tier}] retransmits since attach: TCP_INFO went from {before:?} to {after:?}"
    );
    assert_eq!(tx, sent, "[{tier}] bytes since attach");
    pair.nft_flush(Side::Server);
    drop(client);
    server.join().expect("server thread");
    println!(
        "NETWATCH-TIER {tier}: seeded socket counts {} of the kernel's {} retransmits (those since attach)",
        after.0 - before.0,
        after.0
    );
}
