//! The `ss` source's bounds under hostile conditions, with real tools and
//! real sockets: destroy events piling up while `ss` keeps failing stay at
//! their cap with every drop counted, and an `ss` that prints more than the
//! output limit is refused with a clear error and a counted drop.
//!
//! The destroy-event test runs on a thread of its own in a network
//! namespace of its own (`unshare(CLONE_NEWNET)` on that thread: nothing to
//! clean up, the namespace goes with its last socket), so the sock_diag
//! destroy events it counts are exactly those of its own connections,
//! whatever else runs on the machine. Needs root (a new network namespace,
//! and joining the destroy groups needs `CAP_NET_ADMIN`). Linux only.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use common::netns;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use netwatch::source::ss::{output_limit_bytes, SsError, SsSource};
use netwatch::source::SocketSource;

/// A stand-in `ss` (a real executable, run the way the real one is).
fn fake_ss(dir: &tempfile::TempDir, name: &str, script: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// Close with a reset: the socket is destroyed at once (no FIN exchange,
/// no time-wait), so its destroy event comes right away.
fn close_now(s: TcpStream) {
    common::reset_on_close(&s);
    drop(s);
}

#[test]
fn ss_pending_destroy_events_stay_at_their_cap_while_ss_fails() {
    require_root!("makes a network namespace and joins sock_diag multicast groups");
    const CAP: usize = 100;
    const CONNECTIONS: usize = 150;
    // Two destroyed sockets per connection: the client's and the accepted one.
    const EVENTS: u64 = 2 * CONNECTIONS as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let failing = fake_ss(
        &dir,
        "ss",
        "echo 'Cannot open netlink socket: Protocol not supported' >&2; exit 1",
    );
    let real_ss =
        netwatch::tool::system_tool("ss").expect("iproute2's ss (apt-get install iproute2)");
    let before = netwatch::drops::total("ss_pending_destroys");
    std::thread::spawn(move || {
        // SAFETY: unshare on this thread only; no other thread of the test
        // binary uses this thread's namespaces.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        netns::loopback_up();
        let mut source = SsSource::new()
            .with_program(&failing)
            .with_max_pending_events(CAP);
        assert!(
            source.destroy_events_enabled(),
            "the destroy-event listener did not start (CAP_NET_ADMIN?)"
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind in the namespace");
        let addr = listener.local_addr().expect("local addr");
        let mut opened = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Real connections open and close between failing reads.
            for _ in 0..50.min(CONNECTIONS - opened) {
                let mut c = TcpStream::connect(addr).expect("connect");
                let (s, _) = listener.accept().expect("accept");
                c.write_all(b"x").expect("write");
                close_now(s);
                close_now(c);
                opened += 1;
            }
            let err = source.read().expect_err("the stand-in ss fails");
            assert!(
                matches!(err.downcast_ref::<SsError>(), Some(SsError::Failed { .. })),
                "{err:#}"
            );
            assert!(
                source.pending_events() <= CAP,
                "{}",
                source.pending_events()
            );
            let dropped = netwatch::drops::total("ss_pending_destroys") - before;
            if opened == CONNECTIONS && source.pending_events() as u64 + dropped == EVENTS {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "destroy events: {} pending + {dropped} dropped of {EVENTS}",
                source.pending_events()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(source.pending_events(), CAP);
        assert_eq!(
            netwatch::drops::total("ss_pending_destroys") - before,
            EVENTS - CAP as u64
        );
        // `ss` works again: the events kept become closed samples, the
        // dropped ones are in lost_records.
        let mut source = source.with_program(&real_ss);
        let batch = source.read().expect("the real ss");
        assert_eq!(batch.samples.iter().filter(|s| s.closed).count(), CAP);
        assert_eq!(batch.lost_records, EVENTS - CAP as u64);
        assert_eq!(source.pending_events(), 0);
        drop(listener);
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn ss_output_over_the_limit_is_refused_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One socket record, 150 bytes; printed 7,100 times: 1,065,000 bytes,
    // more than the limit for 16 sockets (1 MiB + 16 KiB = 1,064,960).
    let line = "tcp ESTAB 0 0 127.0.0.1:1 127.0.0.1:2 users:((\"x\",pid=1,fd=3)) ino:9 sk:ab\n\t rtt:0.5/0.2 bytes_sent:11 bytes_received:22 padpadpadpadpadpadpadpadpadp\n";
    assert_eq!(line.len(), 150);
    let printing = |name: &str, n: u32| {
        fake_ss(
            &dir,
            name,
            &format!("i=0; while [ $i -lt {n} ]; do printf '%s' '{line}'; i=$((i+1)); done"),
        )
    };
    let limit = output_limit_bytes(16);
    assert_eq!(limit, 1_064_960);
    let before = netwatch::drops::total("ss_output");
    let err = SsSource::without_destroy_events()
        .with_program(printing("ss-over", 7100))
        .with_max_sockets(16)
        .run()
        .expect_err("too much output");
    assert!(
        matches!(err, SsError::TooMuchOutput { limit_bytes, .. } if limit_bytes == limit),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("more than 1064960 bytes") && msg.contains("raise --max-sockets"),
        "{msg}"
    );
    assert_eq!(netwatch::drops::total("ss_output") - before, 1);
    // Within the limit (7,000 records, 1,050,000 bytes): read and parsed.
    let mut source = SsSource::without_destroy_events()
        .with_program(printing("ss-within", 7000))
        .with_max_sockets(16);
    let batch = source.read().expect("within the limit");
    assert_eq!(batch.samples.len(), 7000);
    assert_eq!(netwatch::drops::total("ss_output") - before, 1);
}
