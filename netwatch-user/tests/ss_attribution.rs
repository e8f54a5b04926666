//! `SsSource` through `Attribution`: two reads around a transfer give this
//! process exactly the bytes it moved in between, counting a connection
//! opened after the first read in full and an older one by its delta.
//!
//! Its own test binary (so its own process) because it asserts on the whole
//! process's row: no other test may move bytes in this pid meanwhile. Needs
//! `ss` on `PATH`; no root. Linux only.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Instant;

use netwatch::attribution::{Attributed, Attribution};
use netwatch::source::ss::SsSource;
use netwatch::source::SocketSource;

fn open(ip: &str) -> (TcpListener, TcpStream, TcpStream) {
    let listener = TcpListener::bind((ip, 0)).expect("bind loopback listener");
    let client = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (listener, client, server)
}

/// Write exactly `n` bytes on `from` and read all of them on `to`.
fn send(from: &TcpStream, to: &TcpStream, n: usize) {
    let mut reader = to.try_clone().expect("clone");
    let receiving = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < n {
            let k = reader.read(&mut buf).expect("read");
            assert!(k > 0, "peer closed early");
            got += k;
        }
    });
    from.try_clone()
        .expect("clone")
        .write_all(&vec![7u8; n])
        .expect("write");
    receiving.join().expect("receiver");
}

fn our_row(a: &Attributed) -> (u64, u64, u32) {
    let pid = std::process::id();
    let rows: Vec<_> = a.processes.iter().filter(|p| p.pid == Some(pid)).collect();
    assert_eq!(rows.len(), 1, "one row for pid {pid}: {:?}", a.processes);
    (rows[0].rx_bytes, rows[0].tx_bytes, rows[0].connection_count)
}

#[test]
fn ss_two_reads_around_a_transfer_give_exact_interval_bytes() {
    let mut source = SsSource::new();
    let mut attribution = Attribution::new(Instant::now());
    let read = |source: &mut SsSource| {
        source
            .read()
            .unwrap_or_else(|e| panic!("SsSource::read (is iproute2's `ss` installed?): {e:#}"))
    };

    // Open before the first read and already used: its bytes so far are a baseline.
    let (_l_old, old_client, old_server) = open("127.0.0.1");
    send(&old_client, &old_server, 123_456);
    let first = attribution.apply(&read(&mut source));
    // Listener, client and server: two ESTABLISHED sockets (the SDK's
    // `connection_count`; the listener is not one), no bytes counted yet.
    assert_eq!(our_row(&first), (0, 0, 2));

    // Between the reads: 5,000 more on the old connection, and a new
    // connection over IPv6 carrying 1,000,000 out and 4,321 back.
    send(&old_client, &old_server, 5_000);
    let (_l_new, new_client, new_server) = open("::1");
    send(&new_client, &new_server, 1_000_000);
    send(&new_server, &new_client, 4_321);
    let second = attribution.apply(&read(&mut source));
    // Both ends of every connection are ours: rx == tx == everything sent.
    let moved = 5_000 + 1_000_000 + 4_321;
    // Four ESTABLISHED sockets; the two listeners are not connections.
    assert_eq!(our_row(&second), (moved, moved, 4));
    assert!(second.interval > std::time::Duration::ZERO);
    let pid = std::process::id();
    let row = second
        .processes
        .iter()
        .find(|p| p.pid == Some(pid))
        .expect("our row");
    assert!(row.tx_rate > 0.0 && row.rx_rate > 0.0);
    // The per-socket rows carry the cumulative counters.
    let new_addr = new_client.local_addr().expect("address").to_string();
    let conn = second
        .connections
        .iter()
        .find(|c| c.local_addr == new_addr)
        .expect("the new connection's row");
    assert_eq!(
        (conn.tx_bytes, conn.rx_bytes),
        (Some(1_000_000), Some(4_321))
    );
    assert_eq!(
        (conn.protocol.as_str(), conn.state.as_str()),
        ("TCP", "ESTABLISHED")
    );

    // Nothing moves: nothing is counted.
    let third = attribution.apply(&read(&mut source));
    assert_eq!(our_row(&third), (0, 0, 4));
}
