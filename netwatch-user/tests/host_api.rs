//! `netwatch::host`'s one-shot collectors, through the public API only,
//! against ground truth the test makes or reads itself: its own sockets
//! (a listener and connections on a port of its own), the kernel's own
//! files read independently (`/proc/meminfo`, `/proc/stat`,
//! `/proc/net/dev`, `/proc/diskstats`, `statvfs`). None needs a privilege:
//! `cargo xtask test` runs them again as nobody.
//!
//! Assertions that other activity on the box could move are bounded by two
//! independent readings (before ≤ ours ≤ after); counts over the test's own
//! ports are exact.

#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use netwatch::host::{self, TcpStates};
use netwatch::wire::ConnectionDetail;

/// Poll `f` until it returns `want` or 5 s pass; returns the last value.
fn poll<T: PartialEq>(want: &T, mut f: impl FnMut() -> T) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = f();
        if &v == want || Instant::now() >= deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn own_comm() -> String {
    let comm = fs::read_to_string("/proc/self/comm").unwrap_or_default();
    comm.trim_end_matches('\n').to_string()
}

/// The rows of `rows` whose local or remote address is `addr`.
fn touching(rows: &[ConnectionDetail], addr: SocketAddr) -> Vec<ConnectionDetail> {
    let a = addr.to_string();
    let mut v: Vec<_> = rows
        .iter()
        .filter(|r| r.local_addr == a || r.remote_addr == a)
        .cloned()
        .collect();
    v.sort_by(|x, y| (&x.state, &x.local_addr).cmp(&(&y.state, &y.local_addr)));
    v
}

fn row(
    protocol: &str,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    state: &str,
) -> ConnectionDetail {
    ConnectionDetail {
        protocol: protocol.into(),
        local_addr: local.to_string(),
        remote_addr: remote.map_or_else(|| "*:*".to_string(), |r| r.to_string()),
        state: state.into(),
        pid: Some(std::process::id()),
        process_name: Some(own_comm()),
        kernel_rtt_us: None,
        rx_bytes: None,
        tx_bytes: None,
        tcp_quality: None,
    }
}

#[test]
fn connections_list_the_tests_own_sockets_with_their_state_and_owner() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let at = listener.local_addr()?;
    let client = TcpStream::connect(at)?;
    let (server, _) = listener.accept()?;
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let (c, s) = (client.local_addr()?, server.peer_addr()?);
    assert_eq!(c, s);

    let rows = host::connections()?;
    let mut want = vec![
        row("TCP", c, Some(at), "ESTABLISHED"),
        row("TCP", at, Some(c), "ESTABLISHED"),
        row("TCP", at, None, "LISTEN"),
    ];
    want.sort_by(|x, y| (&x.state, &x.local_addr).cmp(&(&y.state, &y.local_addr)));
    assert_eq!(touching(&rows, at), want);
    assert_eq!(
        touching(&rows, udp.local_addr()?),
        vec![row("UDP", udp.local_addr()?, None, "UNCONN")]
    );
    drop((client, server, listener, udp));
    Ok(())
}

#[test]
fn tcp_states_count_the_tests_own_connections_through_their_closing() -> anyhow::Result<()> {
    const N: u32 = 3;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let mine = move |local: u16, remote: u16| local == port || remote == port;
    let mut clients = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..N {
        clients.push(TcpStream::connect(("127.0.0.1", port))?);
        servers.push(listener.accept()?.0);
    }
    let open = TcpStates {
        established: 2 * N,
        time_wait: 0,
        close_wait: 0,
    };
    assert_eq!(
        poll(&Some(open), || host::tcp_states_where(mine).ok()),
        Some(open)
    );
    // Host-wide counts include them (other sockets may come and go).
    assert!(host::tcp_states()?.established >= 2 * N);
    assert!(host::established_connections()? >= 2 * N);

    // The clients close: the server ends wait for their owner to close.
    drop(clients);
    let half = TcpStates {
        established: 0,
        time_wait: 0,
        close_wait: N,
    };
    assert_eq!(
        poll(&Some(half), || host::tcp_states_where(mine).ok()),
        Some(half)
    );

    // Then the servers: the clients' ends linger in TIME_WAIT.
    drop(servers);
    let closed = TcpStates {
        established: 0,
        time_wait: N,
        close_wait: 0,
    };
    assert_eq!(
        poll(&Some(closed), || host::tcp_states_where(mine).ok()),
        Some(closed)
    );
    drop(listener);
    Ok(())
}

/// `lo`'s (rx_bytes, tx_bytes) in /proc/net/dev.
fn lo_dev() -> (u64, u64) {
    let text = fs::read_to_string("/proc/net/dev").unwrap_or_default();
    for line in text.lines() {
        if let Some((name, rest)) = line.split_once(':') {
            if name.trim() == "lo" {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                return (f[0], f[8]);
            }
        }
    }
    panic!("no lo in /proc/net/dev");
}

fn lo(m: &[netwatch::wire::InterfaceMetric]) -> netwatch::wire::InterfaceMetric {
    match m.iter().find(|i| i.name == "lo") {
        Some(i) => i.clone(),
        None => panic!(
            "no lo among {:?}",
            m.iter().map(|i| &i.name).collect::<Vec<_>>()
        ),
    }
}

#[test]
fn interface_tracker_takes_a_baseline_then_lo_moves_by_the_bytes_sent() -> anyhow::Result<()> {
    const N: usize = 1 << 20;
    let mut t = host::InterfaceTracker::new();
    let before = lo_dev();
    let first = lo(&t.sample()?);
    let after = lo_dev();
    assert!(before.0 <= first.rx_bytes && first.rx_bytes <= after.0);
    assert_eq!((first.rx_bytes_delta, first.tx_bytes_delta), (0, 0));
    assert_eq!((first.rx_rate, first.tx_rate), (Some(0.0), Some(0.0)));
    assert_eq!((first.rx_history, first.tx_history), (None, None));

    // N bytes over loopback: at least N more each way on lo.
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = l.accept()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf.len())
    });
    let mut c = TcpStream::connect(addr)?;
    c.write_all(&vec![7u8; N])?;
    drop(c);
    let got = match reader.join() {
        Ok(r) => r?,
        Err(_) => panic!("reader thread panicked"),
    };
    assert_eq!(got, N);

    let second = lo(&t.sample()?);
    assert_eq!(
        second.rx_bytes_delta,
        second.rx_bytes - first.rx_bytes,
        "delta is the difference of the two readings"
    );
    assert!(second.rx_bytes_delta >= N as u64, "{second:?}");
    assert!(second.tx_bytes_delta >= N as u64, "{second:?}");
    assert_eq!(second.rx_history.as_ref().map(Vec::len), Some(1));
    assert!(second.rx_rate.unwrap_or(0.0) > 0.0);

    // The one-shot reads the same counters.
    let before = lo_dev();
    let once = lo(&host::interfaces()?);
    let after = lo_dev();
    assert!(before.0 <= once.rx_bytes && once.rx_bytes <= after.0);
    assert!(before.1 <= once.tx_bytes && once.tx_bytes <= after.1);
    assert_eq!(once.rx_rate, Some(0.0));
    Ok(())
}

/// A `KEY:  value kB` field of /proc/meminfo, in bytes.
fn meminfo_bytes(key: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with(&format!("{key}:")));
    match line
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(kb) => kb * 1024,
        None => panic!("/proc/meminfo has no {key}"),
    }
}

#[test]
fn system_reads_the_kernels_totals_and_cpu_needs_two_readings() {
    let s = host::system();
    assert_eq!(s.memory_total_bytes, Some(meminfo_bytes("MemTotal")));
    assert_eq!(s.swap_total_bytes, Some(meminfo_bytes("SwapTotal")));
    assert_eq!((s.cpu_usage_pct, s.cpu_per_core), (None, None));

    let cores = fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .count();
    let mut t = host::SystemTracker::new();
    assert_eq!(t.sample().cpu_usage_pct, None);
    std::thread::sleep(Duration::from_millis(50));
    let s = t.sample();
    let pct = s.cpu_usage_pct.unwrap_or(-1.0);
    assert!((0.0..=100.0).contains(&pct), "{pct}");
    assert_eq!(s.cpu_per_core.map(|c| c.len()), Some(cores));
}

/// Sum of the whole disks' (sectors read, sectors written) × 512, read
/// from /proc/diskstats and /sys/block independently.
fn diskstats_bytes() -> (u64, u64) {
    let whole: HashSet<String> = fs::read_dir("/sys/block")
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join("device").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let text = fs::read_to_string("/proc/diskstats").unwrap_or_default();
    let (mut r, mut w) = (0, 0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 9 && whole.contains(f[2]) {
            r += f[5].parse::<u64>().unwrap_or(0);
            w += f[9].parse::<u64>().unwrap_or(0);
        }
    }
    (r * 512, w * 512)
}

#[test]
fn disk_io_since_boot_is_the_whole_disks_sectors() -> anyhow::Result<()> {
    let before = diskstats_bytes();
    let io = host::disk_io_since_boot()?;
    let after = diskstats_bytes();
    assert!(
        before.0 <= io.read_bytes && io.read_bytes <= after.0,
        "{io:?}"
    );
    assert!(
        before.1 <= io.write_bytes && io.write_bytes <= after.1,
        "{io:?}"
    );

    let mut t = host::DiskTracker::new();
    assert_eq!(t.sample().1, None, "the first call is the baseline");
    assert!(t.sample().1.is_some());
    Ok(())
}

#[test]
fn disk_usage_rows_are_the_device_mounts_with_statvfs_totals() {
    let devices: HashSet<(String, String)> = fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[0].starts_with("/dev/")).then(|| (f[0].to_string(), f[1].to_string()))
        })
        .collect();
    let rows = host::disk_usage();
    let mut seen = HashSet::new();
    for r in &rows {
        assert!(
            devices.contains(&(r.device.clone(), r.mount_point.clone())),
            "{r:?} is not a device mount"
        );
        assert!(seen.insert(r.device.clone()), "{} listed twice", r.device);
        let path = std::ffi::CString::new(r.mount_point.clone()).unwrap_or_default();
        // SAFETY: statvfs into a zeroed struct of its own type, with a
        // NUL-terminated path.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        assert_eq!(r.total_bytes, st.f_blocks * st.f_frsize, "{r:?}");
    }
    // This machine's root filesystem, when it is on a device, is listed.
    let root = devices.iter().find(|(_, m)| m == "/");
    if let Some((dev, _)) = root {
        assert!(rows.iter().any(|r| &r.device == dev), "{rows:?}");
    }
}
