//! `SsSource` against the real `ss` (iproute2) on this machine: loopback
//! connections the test opens itself, found by port, with exact byte counts.
//!
//! Needs `ss` on `PATH` (a test fails with the source's error if it is
//! missing). Needs no root: `ss -p` shows the owner of the caller's own
//! sockets to any user. Linux only.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::thread;
use std::time::{Duration, Instant};

use netwatch::source::ss::{SsError, SsSource};
use netwatch::source::{CountOrigin, Protocol, SampleBatch, SocketSample, SocketSource};

/// One loopback TCP connection: both ends and the listener, kept open.
struct Pair {
    _listener: TcpListener,
    client: TcpStream,
    server: TcpStream,
}

impl Pair {
    fn open(ip: &str) -> Pair {
        let listener = TcpListener::bind((ip, 0)).expect("bind loopback listener");
        let client = TcpStream::connect(listener.local_addr().expect("listener address"))
            .expect("connect over loopback");
        let (server, _) = listener.accept().expect("accept");
        Pair {
            _listener: listener,
            client,
            server,
        }
    }

    /// Write exactly `n` bytes from `from` and read all `n` on `to`.
    fn send(from: &TcpStream, to: &TcpStream, n: usize) {
        let mut reader = to.try_clone().expect("clone receiving end");
        let receiving = thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < n {
                let k = reader.read(&mut buf).expect("read");
                assert!(k > 0, "peer closed after {got} of {n} bytes");
                got += k;
            }
            got
        });
        let mut writer = from.try_clone().expect("clone sending end");
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            writer.write_all(&chunk[..k]).expect("write");
            left -= k;
        }
        assert_eq!(receiving.join().expect("receiver thread"), n);
    }

    fn client_to_server(&self, n: usize) {
        Pair::send(&self.client, &self.server, n);
    }

    fn server_to_client(&self, n: usize) {
        Pair::send(&self.server, &self.client, n);
    }

    fn client_end(&self) -> (SocketAddr, SocketAddr) {
        ends(&self.client)
    }

    fn server_end(&self) -> (SocketAddr, SocketAddr) {
        ends(&self.server)
    }
}

fn ends(s: &TcpStream) -> (SocketAddr, SocketAddr) {
    (
        s.local_addr().expect("local address"),
        s.peer_addr().expect("peer address"),
    )
}

fn read_ss() -> SampleBatch {
    SsSource::new()
        .read()
        .unwrap_or_else(|e| panic!("SsSource::read failed (is iproute2's `ss` installed?): {e:#}"))
}

fn find(batch: &SampleBatch, (local, remote): (SocketAddr, SocketAddr)) -> &SocketSample {
    let found: Vec<_> = batch
        .samples
        .iter()
        .filter(|s| s.local == Some(local) && s.remote == Some(remote))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one ss socket {local} -> {remote}, found {found:?}"
    );
    found[0]
}

/// This process's `comm`, as `ss` reports it.
fn our_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("read /proc/self/comm")
        .trim_end_matches('\n')
        .to_string()
}

fn assert_ours(s: &SocketSample) {
    assert_eq!(s.pid, Some(std::process::id()), "{s:?}");
    assert_eq!(s.comm.as_deref(), Some(our_comm().as_str()), "{s:?}");
    assert_eq!(s.origin, CountOrigin::SinceSocketOpen);
    assert!(!s.closed);
}

fn exact_bytes_over(ip: &str) {
    const SIZES: [usize; 3] = [1, 65_536, 10_000_000];
    let pairs: Vec<Pair> = SIZES
        .iter()
        .map(|&n| {
            let p = Pair::open(ip);
            p.client_to_server(n);
            p
        })
        .collect();
    let batch = read_ss();
    for (p, &n) in pairs.iter().zip(&SIZES) {
        let sender = find(&batch, p.client_end());
        let receiver = find(&batch, p.server_end());
        for s in [sender, receiver] {
            assert_ours(s);
            assert_eq!((s.protocol, &*s.state), (Protocol::Tcp, "ESTABLISHED"));
            assert!(s.rtt_us.is_some_and(|r| r >= 0.0), "rtt of {s:?}");
        }
        assert_eq!(
            (sender.tx_bytes, sender.rx_bytes),
            (n as u64, 0),
            "sender of {n} B"
        );
        assert_eq!(
            (receiver.rx_bytes, receiver.tx_bytes),
            (n as u64, 0),
            "receiver of {n} B"
        );
        assert_ne!(sender.id, receiver.id);
    }
}

#[test]
fn ss_exact_bytes_over_ipv4_loopback() {
    exact_bytes_over("127.0.0.1");
}

#[test]
fn ss_exact_bytes_over_ipv6_loopback() {
    exact_bytes_over("::1");
}

#[test]
fn ss_counters_are_cumulative_both_ways_and_ids_stable() {
    let p = Pair::open("127.0.0.1");
    p.client_to_server(1000);
    p.server_to_client(250);
    let first = read_ss();
    let c1 = find(&first, p.client_end()).clone();
    assert_eq!((c1.tx_bytes, c1.rx_bytes), (1000, 250));
    p.client_to_server(4000);
    let second = read_ss();
    let c2 = find(&second, p.client_end());
    let s2 = find(&second, p.server_end());
    assert_eq!((c2.tx_bytes, c2.rx_bytes), (5000, 250));
    assert_eq!((s2.rx_bytes, s2.tx_bytes), (5000, 250));
    assert_eq!(c2.id, c1.id, "the socket id is the same on every read");
}

#[test]
fn ss_shows_udp_sockets() {
    let unconnected = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let v6 = UdpSocket::bind("[::1]:0").expect("bind udp6");
    let connected = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let target = unconnected.local_addr().expect("udp address");
    connected.connect(target).expect("connect udp");
    connected.send(b"hello").expect("send udp");
    let batch = read_ss();
    let by_local = |a: SocketAddr| {
        batch
            .samples
            .iter()
            .find(|s| s.protocol == Protocol::Udp && s.local == Some(a))
            .unwrap_or_else(|| panic!("udp socket on {a}"))
    };
    for sock in [&unconnected, &v6] {
        let s = by_local(sock.local_addr().expect("udp address"));
        assert_ours(s);
        assert_eq!((&*s.state, s.remote), ("UNCONN", None));
        // ss has no byte counters for UDP.
        assert_eq!((s.rx_bytes, s.tx_bytes, s.rtt_us), (0, 0, None));
    }
    let c = by_local(connected.local_addr().expect("udp address"));
    assert_ours(c);
    assert_eq!((&*c.state, c.remote), ("ESTABLISHED", Some(target)));
}

#[test]
fn ss_cgroup_id_is_our_cgroup_v2_inode() {
    use std::os::unix::fs::MetadataExt;
    let p = Pair::open("127.0.0.1");
    let batch = read_ss();
    let s = find(&batch, p.client_end());
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("read mounts");
    let root = mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
    });
    let ours = std::fs::read_to_string("/proc/self/cgroup")
        .expect("read /proc/self/cgroup")
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string));
    match (root, ours) {
        (Some(root), Some(path)) => {
            let dir = format!("{root}/{}", path.trim_start_matches('/'));
            let ino = std::fs::metadata(&dir).expect("stat our cgroup").ino();
            assert_eq!(s.cgroup_id, Some(ino), "cgroup {dir}");
        }
        // No cgroup v2 here: nothing to resolve against.
        _ => assert_eq!(s.cgroup_id, None),
    }
}

/// A stand-in `ss` (a real executable, run the same way) in a temp dir.
fn fake_ss(dir: &tempfile::TempDir, script: &str) -> std::path::PathBuf {
    let path = dir.path().join("ss");
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn ss_missing_program_is_a_clear_error() {
    let err = SsSource::new()
        .with_program("/nonexistent/ss")
        .run()
        .expect_err("no such program");
    assert!(matches!(err, SsError::NotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("/nonexistent/ss -tunapie") && msg.contains("install iproute2"),
        "{msg}"
    );
}

#[test]
fn ss_nonzero_exit_is_an_error_with_its_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = fake_ss(
        &dir,
        "echo 'Cannot open netlink socket: Protocol not supported' >&2; exit 3",
    );
    let mut source = SsSource::new().with_program(&prog);
    let err = source.read().expect_err("exit 3");
    let ss_err = err.downcast_ref::<SsError>().expect("an SsError");
    assert!(
        matches!(ss_err, SsError::Failed { status, .. } if status.code() == Some(3)),
        "{ss_err:?}"
    );
    assert!(
        err.to_string().contains("Cannot open netlink socket"),
        "{err}"
    );
}

#[test]
fn ss_hung_program_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = fake_ss(&dir, "exec sleep 30");
    let started = Instant::now();
    let err = SsSource::new()
        .with_program(&prog)
        .with_timeout(Duration::from_millis(300))
        .run()
        .expect_err("timeout");
    assert!(matches!(err, SsError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn ss_lost_records_count_unparseable_lines_cumulatively() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prog = fake_ss(
        &dir,
        "printf 'Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\\n\
tcp ESTAB 0 0 127.0.0.1:1 127.0.0.1:2 users:((\"x\",pid=1,fd=3)) ino:9 sk:ab\\n\
\\t rtt:0.5/0.2 bytes_sent:11 bytes_received:22\\n\
garbage line\\n\
tcp ESTAB 0 0 not-an-address 127.0.0.1:2\\n'",
    );
    let mut source = SsSource::new().with_program(&prog);
    let first = source.read().expect("read");
    assert_eq!(first.lost_records, 2);
    assert_eq!(first.samples.len(), 1);
    let s = &first.samples[0];
    assert_eq!(
        (s.tx_bytes, s.rx_bytes, s.rtt_us, s.pid),
        (11, 22, Some(500.0), Some(1))
    );
    assert!(!first.estimated);
    let second = source.read().expect("read");
    assert_eq!(second.lost_records, 4);
}
