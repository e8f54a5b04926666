//! Counters survive agent restarts: the real agent binary (eBPF source,
//! tracepoint tier, `--output json`) with its maps and links pinned under a
//! BPF-filesystem directory of this test's own. This process streams
//! exactly T bytes to itself over one loopback TCP connection while the
//! agent is stopped (SIGTERM, or SIGKILL) and restarted mid-transfer: the
//! per-interval bytes of this pid summed over both agents' snapshots equal T
//! exactly, in both directions. Incompatible pins (a `SOCKETS` map of
//! another value size, a directory of another build) are replaced with a
//! log line; `--no-pin` leaves nothing pinned. With `--output prometheus`
//! the per-process counters on `/metrics` continue exactly across the
//! restart and never go down. Needs root.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
const BPFTOOL: &str = "/usr/sbin/bpftool";
/// Give up waiting for the agent after this long (a hang, not a measure).
const PATIENCE: Duration = Duration::from_secs(90);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the pinning tests load BPF programs and pin them: run as root"
    );
}

/// Every test counts this process's own bytes: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pin directory and a baseline file of this test's own, removed (the
/// programs detached) when dropped.
struct Pins {
    dir: PathBuf,
    state_dir: tempfile::TempDir,
}

impl Pins {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/nwtest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self {
            dir,
            state_dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    fn state_file(&self) -> PathBuf {
        self.state_dir.path().join("baseline")
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--pin-dir".into(),
            self.dir.display().to_string(),
            "--pin-state-file".into(),
            self.state_file().display().to_string(),
        ]
    }

    /// The one directory of pinned objects (`<dir>/v1-…`).
    fn set(&self) -> PathBuf {
        let entries: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("the pin directory")
            .map(|e| e.expect("an entry").path())
            .collect();
        assert_eq!(entries.len(), 1, "one pinned set: {entries:?}");
        entries[0].clone()
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent; its per-snapshot (rx, tx) of this pid and its log lines.
struct Agent {
    child: Child,
    snaps: mpsc::Receiver<(u64, u64)>,
    log: mpsc::Receiver<String>,
    seen_log: Vec<String>,
}

impl Agent {
    fn start(extra: &[String]) -> Self {
        let mut child = Command::new(AGENT)
            .args([
                "--mode",
                "ebpf",
                "--ebpf-tier",
                "tracepoint",
                "--output",
                "json",
                "--interval",
                "0.3",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting netwatch-agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let me = std::process::id();
        let (snap_tx, snaps) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value =
                    serde_json::from_str(&line).expect("a JSON snapshot per line");
                let mut sum = (0, 0);
                for p in v["processes"].as_array().into_iter().flatten() {
                    if p["pid"].as_u64() == Some(u64::from(me)) {
                        sum.0 += p["rx_bytes"].as_u64().expect("rx_bytes");
                        sum.1 += p["tx_bytes"].as_u64().expect("tx_bytes");
                    }
                }
                let _ = snap_tx.send(sum);
            }
        });
        let (log_tx, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = log_tx.send(line);
            }
        });
        Self {
            child,
            snaps,
            log,
            seen_log: Vec::new(),
        }
    }

    /// Wait for the next snapshot; its (rx, tx) for this pid.
    fn next(&mut self) -> (u64, u64) {
        match self.snaps.recv_timeout(PATIENCE) {
            Ok(s) => s,
            Err(e) => panic!("no snapshot from the agent ({e}); log: {:?}", self.logs()),
        }
    }

    fn logs(&mut self) -> &[String] {
        self.seen_log.extend(self.log.try_iter());
        &self.seen_log
    }

    fn logged(&mut self, needle: &str) -> bool {
        self.logs().iter().any(|l| l.contains(needle))
    }

    /// Send `sig`, wait for the exit, and return the (rx, tx) of this pid
    /// summed over every snapshot it wrote that was not yet taken.
    fn stop(mut self, sig: i32) -> ((u64, u64), Vec<String>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let _ = self.child.wait();
        let mut sum = (0, 0);
        // The reader ends at EOF: every line written is taken.
        while let Ok(s) = self.snaps.recv_timeout(PATIENCE) {
            sum.0 += s.0;
            sum.1 += s.1;
        }
        let log = self.logs().to_vec();
        (sum, log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn add(a: &mut (u64, u64), b: (u64, u64)) {
    a.0 += b.0;
    a.1 += b.1;
}

/// Stream `chunks` × 16 KiB to ourselves over one connection, paced so it
/// spans the restart; `half` is told when half is written. Returns the
/// writer and the reader (bytes read) threads.
fn stream(
    chunks: usize,
    half: mpsc::Sender<()>,
) -> (thread::JoinHandle<usize>, thread::JoinHandle<usize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener");
    let addr = l.local_addr().expect("listener address");
    let reader = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accepting");
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        loop {
            match s.read(&mut buf).expect("reading") {
                0 => return n,
                k => n += k,
            }
        }
    });
    let writer = thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connecting");
        let chunk = vec![5u8; 16 * 1024];
        for i in 0..chunks {
            c.write_all(&chunk).expect("writing");
            if i == chunks / 2 {
                let _ = half.send(());
            }
            thread::sleep(Duration::from_millis(4));
        }
        chunks * chunk.len()
    });
    (writer, reader)
}

fn restart_mid_transfer(name: &str, sig: i32) {
    require_root();
    let _serial = serial();
    let pins = Pins::new(name);
    let mut first = Agent::start(&pins.args());
    first.next(); // primed and delivering
    assert!(
        first.logged("maps and links pinned at"),
        "{:?}",
        first.logs()
    );
    let mut total = (0, 0);
    let (half_tx, half) = mpsc::channel();
    let (writer, reader) = stream(600, half_tx);
    half.recv_timeout(PATIENCE)
        .expect("the writer got half way");
    // Mid-transfer: stop the agent, start another on the same pins.
    let (sum, _) = first.stop(sig);
    add(&mut total, sum);
    let by_first = total;
    let mut second = Agent::start(&pins.args());
    add(&mut total, second.next());
    let written = writer.join().expect("writer thread");
    let read = reader.join().expect("reader thread");
    assert_eq!(written, read, "loopback lost bytes?");
    // Two more snapshots: the second read the kernel entirely after the
    // transfer ended.
    add(&mut total, second.next());
    add(&mut total, second.next());
    assert!(
        second.logged("continuing from the maps and links pinned at"),
        "{:?}",
        second.logs()
    );
    assert!(second.logged("baseline of"), "{:?}", second.logs());
    let (sum, log) = second.stop(libc::SIGTERM);
    add(&mut total, sum);
    let expected = written as u64;
    eprintln!(
        "{name}: {expected} bytes each way; first agent counted {by_first:?}, in all {total:?}"
    );
    // The restart really was mid-transfer: each agent counted some.
    assert!(
        by_first.1 > 0 && by_first.1 < expected,
        "{by_first:?} of {expected}"
    );
    assert_eq!(
        total,
        (expected, expected),
        "(rx, tx) of this pid over both agents' snapshots; second agent's log: {log:?}"
    );
}

#[test]
fn sigterm_mid_transfer_then_restart_counts_every_byte_once() {
    restart_mid_transfer("term", libc::SIGTERM);
}

#[test]
fn sigkill_mid_transfer_then_restart_counts_every_byte_once() {
    restart_mid_transfer("kill", libc::SIGKILL);
}

/// `bpftool map create` at `path` with these sizes.
fn bpftool_map(path: &Path, kind: &str, key: u32, value: u32, entries: u32) {
    let out = Command::new(BPFTOOL)
        .args(["map", "create"])
        .arg(path)
        .args([
            "type",
            kind,
            "key",
            &key.to_string(),
            "value",
            &value.to_string(),
            "entries",
            &entries.to_string(),
            "name",
            "SOCKETS",
        ])
        .output()
        .expect("running bpftool (install bpftool for this test)");
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Move exactly `n` bytes from this process to itself over loopback TCP.
fn transfer(n: usize) {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener");
    let addr = l.local_addr().expect("listener address");
    let reader = thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accepting");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).expect("reading");
        buf.len()
    });
    let mut c = TcpStream::connect(addr).expect("connecting");
    c.write_all(&vec![7u8; n]).expect("writing");
    drop(c);
    assert_eq!(reader.join().expect("reader thread"), n);
}

#[test]
fn incompatible_pins_are_replaced_with_a_log_line_never_read() {
    require_root();
    let _serial = serial();
    let pins = Pins::new("compat");
    let (_, log) = {
        let mut a = Agent::start(&pins.args());
        a.next();
        a.stop(libc::SIGTERM)
    };
    assert!(
        log.iter().any(|l| l.contains("maps and links pinned at")),
        "{log:?}"
    );
    // Another build's set beside ours, and our SOCKETS swapped for a map
    // of another value size.
    let set = pins.set();
    let sockets = set.join("maps").join("SOCKETS");
    std::fs::remove_file(&sockets).expect("unpinning SOCKETS");
    bpftool_map(&sockets, "lru_hash", 8, 16, 64);
    let foreign = pins.dir.join("v0-0000000000000000");
    std::fs::create_dir(&foreign).expect("a foreign set directory");
    bpftool_map(&foreign.join("SOCKETS"), "hash", 8, 8, 16);

    let mut b = Agent::start(&pins.args());
    b.next();
    assert!(
        b.logged("removing pins of another netwatch build or layout"),
        "{:?}",
        b.logs()
    );
    assert!(
        b.logged("replacing incompatible pins at") && b.logged("SOCKETS: value size 16"),
        "{:?}",
        b.logs()
    );
    assert!(b.logged("maps and links pinned at"), "{:?}", b.logs());
    assert!(!foreign.exists());
    // The new set counts exactly.
    transfer(123_457);
    let mut sum = b.next();
    add(&mut sum, b.next());
    let (rest, _) = b.stop(libc::SIGTERM);
    add(&mut sum, rest);
    assert_eq!(sum, (123_457, 123_457));
}

/// A set pinned before the TCP events ring existed (no `TCP_EVENTS` pin)
/// is incompatible: replaced, with a log line naming the missing map.
#[test]
fn pins_without_the_tcp_events_ring_are_replaced() {
    require_root();
    let _serial = serial();
    let pins = Pins::new("tcpev");
    let (_, log) = {
        let mut a = Agent::start(&pins.args());
        a.next();
        a.stop(libc::SIGTERM)
    };
    assert!(
        log.iter().any(|l| l.contains("maps and links pinned at")),
        "{log:?}"
    );
    let set = pins.set();
    std::fs::remove_file(set.join("maps").join("TCP_EVENTS")).expect("unpinning TCP_EVENTS");
    let mut b = Agent::start(&pins.args());
    b.next();
    assert!(
        b.logged("replacing incompatible pins at") && b.logged("TCP_EVENTS: opening the pin"),
        "{:?}",
        b.logs()
    );
    assert!(b.logged("maps and links pinned at"), "{:?}", b.logs());
    b.stop(libc::SIGTERM);
    assert!(pins.set().join("maps").join("TCP_EVENTS").exists());
}

#[test]
fn no_pin_leaves_nothing_pinned() {
    require_root();
    let _serial = serial();
    let pins = Pins::new("nopin");
    std::fs::create_dir_all(&pins.dir).expect("creating the pin directory");
    let mut args = pins.args();
    args.push("--no-pin".into());
    let mut a = Agent::start(&args);
    a.next();
    transfer(4321);
    let mut sum = a.next();
    add(&mut sum, a.next());
    let (rest, log) = a.stop(libc::SIGTERM);
    add(&mut sum, rest);
    assert_eq!(sum, (4321, 4321));
    assert!(
        !log.iter().any(|l| l.contains("pinned")),
        "no pinning with --no-pin: {log:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&pins.dir)
        .expect("the pin directory")
        .collect();
    assert!(left.is_empty(), "left under the pin dir: {left:?}");
    assert!(!pins.state_file().exists());
}

/// An agent serving `/metrics` (Prometheus output) on a free loopback port,
/// stopped with SIGTERM when dropped.
struct MetricsAgent {
    child: Child,
    url: String,
    log: mpsc::Receiver<String>,
    seen_log: Vec<String>,
}

impl MetricsAgent {
    /// Start; returns once it serves /metrics and its source is attached.
    fn start(extra: &[String]) -> Self {
        let mut child = Command::new(AGENT)
            .args([
                "--mode",
                "ebpf",
                "--ebpf-tier",
                "tracepoint",
                "--output",
                "prometheus",
                "--interval",
                "0.3",
                "--metrics-listen",
                "127.0.0.1:0",
                // Other processes on this host must not crowd this one out.
                "--metrics-top-processes",
                "100000",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting netwatch-agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let (url_tx, url_rx) = mpsc::channel();
        let (log_tx, log) = mpsc::channel();
        thread::spawn(move || {
            let mut url = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving Prometheus metrics on ").nth(1) {
                    url = Some(rest.trim().to_string());
                }
                if line.contains("process rows from the") {
                    let _ = url_tx.send(url.clone());
                }
                let _ = log_tx.send(line);
            }
        });
        let Some(url) = url_rx.recv_timeout(PATIENCE).ok().flatten() else {
            let _ = child.kill();
            panic!(
                "the agent did not serve /metrics and attach; log: {:?}",
                log.try_iter().collect::<Vec<_>>()
            );
        };
        Self {
            child,
            url,
            log,
            seen_log: Vec::new(),
        }
    }

    fn logs(&mut self) -> &[String] {
        self.seen_log.extend(self.log.try_iter());
        &self.seen_log
    }

    fn logged(&mut self, needle: &str) -> bool {
        self.logs().iter().any(|l| l.contains(needle))
    }

    /// One scrape, by a `curl` child process (its bytes are not ours).
    fn scrape(&self) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", &self.url])
            .output()
            .expect("running curl (install curl for this test)");
        assert!(
            out.status.success(),
            "scraping {}: {}",
            self.url,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("/metrics is UTF-8")
    }

    /// Scrape until the agent took two more snapshots than at the call: the
    /// second of them read the kernel entirely after the call.
    fn after_two_snapshots(&self) -> String {
        let snapshots = |page: &str| {
            page.lines()
                .find_map(|l| l.strip_prefix("netwatch_agent_snapshots_total "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no netwatch_agent_snapshots_total in\n{page}"))
        };
        let want = snapshots(&self.scrape()) + 2;
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let page = self.scrape();
            if snapshots(&page) >= want {
                return page;
            }
            assert!(std::time::Instant::now() < deadline, "no snapshots");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, wait for the exit; the log.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // The reader ends at EOF.
        while let Ok(l) = self.log.recv_timeout(PATIENCE) {
            self.seen_log.push(l);
        }
        std::mem::take(&mut self.seen_log)
    }
}

impl Drop for MetricsAgent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// This pid's (rx, tx) counters on a page, summed over its series (one).
fn pid_counters(page: &str, pid: u32) -> (u64, u64) {
    let total = |name: &str| -> u64 {
        let prefix = format!("{name}{{pid=\"{pid}\",");
        page.lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| {
                l.rsplit_once(' ')
                    .and_then(|(_, v)| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("not a counter sample: {l}"))
            })
            .sum()
    };
    (
        total("netwatch_process_receive_bytes_total"),
        total("netwatch_process_transmit_bytes_total"),
    )
}

/// Every scrape's (rx, tx) of this pid, checked never to go down.
struct Monotonic {
    pid: u32,
    last: (u64, u64),
    scrapes: usize,
}

impl Monotonic {
    fn see(&mut self, page: &str, when: &str) -> (u64, u64) {
        let now = pid_counters(page, self.pid);
        assert!(
            now.0 >= self.last.0 && now.1 >= self.last.1,
            "a counter went down {when}: {:?} then {now:?}; page:\n{page}",
            self.last
        );
        self.last = now;
        self.scrapes += 1;
        now
    }
}

#[test]
fn sigterm_mid_transfer_then_restart_metrics_counters_continue_exactly() {
    require_root();
    let _serial = serial();
    let pins = Pins::new("metrics");
    let me = std::process::id();
    let mut seen = Monotonic {
        pid: me,
        last: (0, 0),
        scrapes: 0,
    };
    let mut first = MetricsAgent::start(&pins.args());
    first.after_two_snapshots(); // primed and counting
    assert!(
        first.logged("maps and links pinned at") && first.logged("new pins: /metrics"),
        "{:?}",
        first.logs()
    );
    let (half_tx, half) = mpsc::channel();
    let (writer, reader) = stream(1000, half_tx);
    // Scrape the first agent until the writer is half way.
    loop {
        seen.see(&first.scrape(), "during the first agent");
        if half.try_recv().is_ok() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let by_first = seen.see(&first.scrape(), "during the first agent");
    // Mid-transfer: SIGTERM, and another agent on the same pins and state.
    let log = first.stop();
    assert!(
        pins.state_dir.path().join("baseline.prometheus").exists(),
        "counters file beside the baseline; log: {log:?}"
    );
    let mut second = MetricsAgent::start(&pins.args());
    // Its very first answer already carries the restored counters.
    let resumed = seen.see(&second.scrape(), "across the restart");
    assert!(
        second.logged("continuing from the maps and links pinned at")
            && second.logged("/metrics process counters continue from"),
        "{:?}",
        second.logs()
    );
    while !writer.is_finished() {
        seen.see(&second.scrape(), "during the second agent");
        thread::sleep(Duration::from_millis(100));
    }
    let written = writer.join().expect("writer thread");
    let read = reader.join().expect("reader thread");
    assert_eq!(written, read, "loopback lost bytes?");
    let expected = written as u64;
    let end = seen.see(&second.after_two_snapshots(), "after the transfer");
    let log = second.stop();
    eprintln!(
        "metrics: {expected} bytes each way; first agent's last scrape {by_first:?}, \
         second's first {resumed:?}, end {end:?}, {} scrapes",
        seen.scrapes
    );
    // The restart really was mid-transfer.
    assert!(
        by_first.1 > 0 && by_first.1 < expected,
        "{by_first:?} of {expected}"
    );
    assert!(resumed.1 < expected, "{resumed:?} of {expected}");
    assert_eq!(
        end,
        (expected, expected),
        "(rx, tx) of this pid on /metrics after the restart; second agent's log: {log:?}"
    );
}
