//! The active set on a real kernel: after the first read, a read looks up
//! only the sockets that moved bytes or changed state since the last one
//! and lists only those (a partial batch), listeners, and as many
//! unchanged sockets as its row budget asks for, with their exact
//! cumulative counts; a socket that closes, with or without bytes, leaves
//! the listing. Needs
//! root; the kernel is shared with other tests, so every assert is about
//! this test's own ports, never about global totals.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use netwatch::source::ebpf::{EbpfSource, LoadOptions, Refresh, TierChoice};
use netwatch::source::{SampleBatch, SocketSource};

/// (rx, tx, closed) of the samples of the socket `(local, remote)`.
fn find(batch: &SampleBatch, (local, remote): (SocketAddr, SocketAddr)) -> Vec<(u64, u64, bool)> {
    batch
        .samples
        .iter()
        .filter(|s| s.local == Some(local) && s.remote == Some(remote))
        .map(|s| (s.rx_bytes, s.tx_bytes, s.closed))
        .collect()
}

fn read(src: &mut EbpfSource) -> SampleBatch {
    src.read().expect("reading the eBPF source")
}

#[test]
fn idle_sockets_are_left_out_of_partial_batches_yet_listed_exactly_on_budget() {
    require_root!("loads BPF programs");
    let opts = LoadOptions {
        tier: TierChoice::Auto,
        pin: None,
        ..LoadOptions::default()
    };
    // Listening before the programs load: seeding finds it.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut src = EbpfSource::load(&opts).unwrap_or_else(|e| panic!("no tier loads: {e}"));
    let first = read(&mut src);
    assert_eq!(src.last_refresh(), Refresh::Walk, "the first read walks");
    drop(first);

    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    let c_addr = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let s_addr = (server.local_addr().unwrap(), server.peer_addr().unwrap());
    client.write_all(&[7u8; 1000]).unwrap();
    let mut buf = vec![0u8; 1000];
    server.read_exact(&mut buf).unwrap();

    // A connection that never moves a byte: listed once established, and
    // gone once closed, though no final record is written for it.
    let quiet = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (quiet_server, _) = l.accept().unwrap();
    let quiet_addr = (quiet.local_addr().unwrap(), quiet.peer_addr().unwrap());

    let b = read(&mut src);
    assert!(
        matches!(src.last_refresh(), Refresh::Active(n) if n >= 3),
        "the second read looks up the active sockets only: {:?}",
        src.last_refresh()
    );
    assert_eq!(find(&b, c_addr), vec![(0, 1000, false)]);
    assert_eq!(find(&b, s_addr), vec![(1000, 0, false)]);
    assert_eq!(
        find(&b, quiet_addr).len(),
        1,
        "an idle new connection is listed"
    );

    // Idle reads: nothing of ours in the active set. A partial batch
    // leaves them out and counts them as omitted (no row budget: only
    // what changed, and listeners, is listed)...
    for _ in 0..3 {
        let b = read(&mut src);
        assert!(matches!(src.last_refresh(), Refresh::Active(_)));
        assert!(
            b.omitted.is_some_and(|n| n >= 4),
            "our four idle sockets are omitted: {:?}",
            b.omitted
        );
        for a in [c_addr, s_addr, quiet_addr] {
            assert_eq!(find(&b, a), vec![], "idle socket {a:?} listed");
        }
        // The listener is listed every read, idle or not.
        let port = l.local_addr().unwrap().port();
        let listener: Vec<_> = b
            .samples
            .iter()
            .filter(|s| s.local.is_some_and(|a| a.port() == port) && s.state == "LISTEN")
            .map(|s| (s.local, s.remote, s.state.to_string()))
            .collect();
        assert_eq!(listener.len(), 1, "the listener, every read: {listener:?}");
    }
    // ...and, given a row budget, fills the listing with unchanged
    // sockets, with their exact cumulative counts.
    src.set_row_budget(usize::MAX);
    let b = read(&mut src);
    assert!(matches!(src.last_refresh(), Refresh::Active(_)));
    assert_eq!(find(&b, c_addr), vec![(0, 1000, false)]);
    assert_eq!(find(&b, s_addr), vec![(1000, 0, false)]);
    assert_eq!(find(&b, quiet_addr).len(), 1);
    assert_eq!(b.omitted, Some(0), "a budget past every socket omits none");
    src.set_row_budget(0);

    // Active again: the new cumulative counts.
    server.write_all(&[1u8; 250]).unwrap();
    let mut back = vec![0u8; 250];
    client.read_exact(&mut back).unwrap();
    let b = read(&mut src);
    assert_eq!(find(&b, c_addr), vec![(250, 1000, false)]);
    assert_eq!(find(&b, s_addr), vec![(1000, 250, false)]);

    // Closed: the final record once, then never again; the quiet pair
    // (no bytes, so no final record) leaves the listing too, even when
    // every unchanged socket is listed.
    src.set_row_budget(usize::MAX);
    drop(quiet);
    drop(quiet_server);
    drop(client);
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    drop(server);
    let mut finals = Vec::new();
    let mut quiet_finals = Vec::new();
    let mut still_open = Vec::new();
    // Two reads: a socket destroyed just after a read is in the next one.
    for _ in 0..2 {
        let b = read(&mut src);
        finals.extend(find(&b, c_addr).into_iter().filter(|x| x.2));
        finals.extend(find(&b, s_addr).into_iter().filter(|x| x.2));
        quiet_finals.extend(find(&b, quiet_addr).into_iter().filter(|x| x.2));
        let quiet_server_addr = (quiet_addr.1, quiet_addr.0);
        quiet_finals.extend(find(&b, quiet_server_addr).into_iter().filter(|x| x.2));
        still_open = [c_addr, s_addr, quiet_addr]
            .iter()
            .flat_map(|a| find(&b, *a))
            .filter(|x| !x.2)
            .collect();
    }
    finals.sort();
    assert_eq!(finals, vec![(250, 1000, true), (1000, 250, true)]);
    // The quiet pair has no final record, yet both ends are reported
    // closed once, with nothing moved: a process does not keep counting
    // them as open until the next walk.
    assert_eq!(quiet_finals, vec![(0, 0, true), (0, 0, true)]);
    assert!(
        still_open.is_empty(),
        "closed sockets still listed as open: {still_open:?}"
    );
}

/// The iterator's TCP state counts match the truth this test created and
/// `sock_diag`'s count of the same sockets: one connection left
/// ESTABLISHED (both ends), one whose client closed (the server end in
/// CLOSE_WAIT), one both closed (the client end in TIME_WAIT).
#[test]
fn tcp_states_from_the_iterator_are_exact() {
    use netwatch::procinfo::tcp_states::TcpStates;
    use netwatch::source::TcpStateCounts;

    require_root!("loads BPF programs");
    let opts = LoadOptions {
        tier: TierChoice::Auto,
        pin: None,
        ..LoadOptions::default()
    };
    let mut src = EbpfSource::load(&opts).unwrap_or_else(|e| panic!("no tier loads: {e}"));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // The half-closed connection's server end stays open: CLOSE_WAIT.
    let (_open, _half_s) = three_states(&l);
    let want = state_counts(2, 1, 1);
    let ours = |l: u16, r: u16| l == port || r == port;
    // The closes complete in softirq right after the calls return: wait
    // (bounded) until the kernel's own dump shows them, then compare.
    let mut last = None;
    for _ in 0..200 {
        let diag = TcpStates::read_netlink(ours).expect("sock_diag dump");
        let diag = TcpStateCounts {
            established: diag.connection_count,
            time_wait: diag.time_wait,
            close_wait: diag.close_wait,
        };
        let iter = src
            .count_tcp_states(ours)
            .expect("the TCP state iterator runs");
        if diag == want && iter == want {
            return;
        }
        last = Some((diag, iter));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("want {want:?}; (sock_diag, iterator) last saw {last:?}");
}

/// Three connections on `l`: the first left ESTABLISHED (both ends,
/// returned), the second closed by its client only (the server end is
/// returned, in CLOSE_WAIT: dropping it sends that client end to
/// TIME_WAIT too), the third closed by both (its client end in TIME_WAIT).
fn three_states(l: &TcpListener) -> ((TcpStream, TcpStream), TcpStream) {
    use std::net::Shutdown;
    let port = l.local_addr().unwrap().port();
    let pair = || {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    };
    let kept = pair();
    let (half_c, half_s) = pair();
    half_c.shutdown(Shutdown::Both).unwrap();
    drop(half_c);
    let (done_c, mut done_s) = pair();
    drop(done_c);
    let mut rest = Vec::new();
    done_s.read_to_end(&mut rest).unwrap();
    drop(done_s);
    (kept, half_s)
}

/// The counts a test expects: (ESTABLISHED, TIME_WAIT, CLOSE_WAIT).
fn state_counts(
    established: u32,
    time_wait: u32,
    close_wait: u32,
) -> netwatch::source::TcpStateCounts {
    netwatch::source::TcpStateCounts {
        established,
        time_wait,
        close_wait,
    }
}

/// Poll (bounded) until `counts()` gives `want`; the closes above complete
/// in softirq right after the calls return.
fn settle<F: FnMut() -> Option<netwatch::source::TcpStateCounts>>(
    mut counts: F,
    want: netwatch::source::TcpStateCounts,
) {
    let mut last = None;
    for _ in 0..300 {
        last = counts();
        if last == Some(want) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("want {want:?}, last saw {last:?}");
}

/// A restarted agent continuing from pins counts TCP states with the
/// pinned iterator too (before, it fell back to a `sock_diag` dump of
/// every socket each read).
#[test]
fn a_source_continued_from_pins_counts_states_with_the_pinned_iterator() {
    use netwatch::source::ebpf::pin::{self, PinOptions};

    require_root!("loads BPF programs");
    let dir = std::env::temp_dir().join(format!("netwatch-active-pins-{}", std::process::id()));
    let pins = PinOptions {
        dir: format!("/sys/fs/bpf/netwatch-test-active-{}", std::process::id()).into(),
        state_file: dir.join("baseline"),
    };
    let opts = LoadOptions {
        tier: TierChoice::Auto,
        pin: Some(pins.clone()),
        ..LoadOptions::default()
    };
    // Unpinned and removed however the test ends.
    struct Cleanup(PinOptions);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = pin::remove(&self.0.dir);
            if let Some(d) = self.0.state_file.parent() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let _cleanup = Cleanup(pins.clone());
    let first = EbpfSource::load(&opts).unwrap_or_else(|e| panic!("no tier loads: {e}"));
    drop(first);
    let mut again = EbpfSource::load(&opts).unwrap_or_else(|e| panic!("reloading from pins: {e}"));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (_kept, half_s) = three_states(&l);
    drop(half_s);
    let ours = |lp: u16, rp: u16| lp == port || rp == port;
    let want = state_counts(2, 2, 0);
    settle(|| again.count_tcp_states(ours), want);
}

/// The counts a read keeps between walks (skipped while no TCP state
/// changed and the time-wait count stood still) follow every change
/// exactly; and only changes in the agent's own network namespace count as
/// changes. In a namespace of this test's own (entered by one thread, where
/// the source is loaded too), so the counts are all this test's sockets:
/// the iterator and `/proc/thread-self/net` see the reading thread's
/// namespace.
#[test]
fn tcp_state_counts_kept_between_walks_follow_every_change() {
    use netwatch::source::TcpStateCounts;

    require_root!("loads BPF programs");
    // The namespace the test starts in (the process's), to go back to.
    let host_ns = std::fs::File::open("/proc/self/ns/net").expect("opening /proc/self/ns/net");
    std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET moves only this thread.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running ip");
        assert!(up.success(), "ip link set lo up: {up}");
        let opts = LoadOptions {
            tier: TierChoice::Auto,
            pin: None,
            ..LoadOptions::default()
        };
        let mut src = EbpfSource::load(&opts).unwrap_or_else(|e| panic!("no tier loads: {e}"));
        let none = TcpStateCounts::default();
        assert_eq!(
            src.tcp_states(),
            Some(none),
            "a new namespace has no socket"
        );
        assert_eq!(src.tcp_states(), Some(none), "and still none");

        // Connections in another namespace (the test process's own) are
        // not state changes of this one.
        let changes = src.kernel_counters().state_changes;
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on a namespace fd this test opened; it
            // moves only this (new) thread.
            let r = unsafe { libc::setns(host_ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            drop(three_states(&l));
        })
        .join()
        .unwrap();
        assert_eq!(
            src.kernel_counters().state_changes,
            changes,
            "state changes of another namespace counted"
        );

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (kept, half_s) = three_states(&l);
        drop(half_s);
        assert!(
            src.kernel_counters().state_changes > changes,
            "this namespace's state changes not counted"
        );
        let want = state_counts(2, 2, 0);
        settle(|| src.tcp_states(), want);
        assert_eq!(src.tcp_states(), Some(want), "kept while nothing changes");
        // One change more: the kept connection's client closes, its
        // server end sees the FIN (CLOSE_WAIT), then closes too.
        let (c, s) = kept;
        drop(c);
        let want = state_counts(0, 2, 1);
        settle(|| src.tcp_states(), want);
        drop(s);
        let want = state_counts(0, 3, 0);
        settle(|| src.tcp_states(), want);
    })
    .join()
    .expect("the namespace thread");
}
