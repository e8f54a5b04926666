//! Counters survive agent restarts: the real agent binary (eBPF source,
//! tracepoint tier, `--output json`, `--pin`) with its maps and links pinned
//! under a BPF-filesystem directory of this test's own. This process streams
//! exactly T bytes to itself over one loopback TCP connection while the
//! agent is stopped (SIGTERM, or SIGKILL) and restarted mid-transfer: the
//! per-interval bytes of this pid summed over both agents' snapshots equal T
//! exactly, in both directions. Incompatible pins (a `SOCKETS` map of
//! another value size, a directory of another build) are replaced with a
//! log line; `--no-pin` leaves nothing pinned. Pinning is opt-in: a run
//! without `--pin` leaves no program loaded when it exits, and `--unpin`
//! removes what a pinned run left (only netwatch's own entries). A pin
//! directory that is a filesystem's root or holds a foreign map is refused
//! and the foreign map survives. Pins removed under a running agent are
//! pinned again and counting goes on exactly. A baseline write that fails
//! (a full filesystem) never makes a restart count bytes twice. With `--output prometheus`
//! the per-process counters on `/metrics` continue exactly across the
//! restart and never go down. Needs root.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::agent::{self, AGENT};
use common::{serial, transfer};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const BPFTOOL: &str = "/usr/sbin/bpftool";
/// Give up waiting for the agent after this long (a hang, not a measure).
const PATIENCE: Duration = Duration::from_secs(90);

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
        pinned(&self.dir, &self.state_file())
    }

    /// The directory and state file, without turning pinning on.
    fn paths(&self) -> Vec<String> {
        pin_paths(&self.dir, &self.state_file())
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

/// `--pin-dir dir --pin-state-file state`, without turning pinning on.
fn pin_paths(dir: &Path, state: &Path) -> Vec<String> {
    vec![
        "--pin-dir".into(),
        dir.display().to_string(),
        "--pin-state-file".into(),
        state.display().to_string(),
    ]
}

/// `--pin` with this directory and state file.
fn pinned(dir: &Path, state: &Path) -> Vec<String> {
    let mut a = pin_paths(dir, state);
    a.insert(0, "--pin".into());
    a
}

/// The agent on the eBPF source's tracepoint tier, with this output and
/// interval (seconds).
fn agent_command(output: &str, interval: &str) -> Command {
    let mut c = Command::new(AGENT);
    c.args([
        "--mode",
        "ebpf",
        "--ebpf-tier",
        "tracepoint",
        "--output",
        output,
        "--interval",
        interval,
    ]);
    c
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
        let mut cmd = agent_command("json", "0.3");
        cmd.args(extra);
        Self::spawn(cmd)
    }

    /// Start `cmd` (the agent, or something that execs it last).
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
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
        agent::terminate(&mut self.child);
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
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
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

/// `bpftool map create` at `path` with these sizes, named `name`.
fn bpftool_map(path: &Path, kind: &str, key: u32, value: u32, entries: u32, name: &str) {
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
            name,
        ])
        .output()
        .expect("running bpftool (install bpftool for this test)");
    assert!(
        out.status.success(),
        "bpftool map create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn incompatible_pins_are_replaced_with_a_log_line_never_read() {
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
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
    bpftool_map(&sockets, "lru_hash", 8, 16, 64, "SOCKETS");
    let foreign = pins.dir.join("v1-0000000000000000");
    std::fs::create_dir_all(foreign.join("maps")).expect("another build's set directory");
    bpftool_map(
        &foreign.join("maps").join("SOCKETS"),
        "hash",
        8,
        8,
        16,
        "SOCKETS",
    );

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
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
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
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _serial = serial();
    let pins = Pins::new("nopin");
    std::fs::create_dir_all(&pins.dir).expect("creating the pin directory");
    let mut args = pins.paths();
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
        let (child, log, url) = agent::start_attached(
            agent_command("prometheus", "0.3")
                .args([
                    "--metrics-listen",
                    "127.0.0.1:0",
                    // Other processes on this host must not crowd this one out.
                    "--metrics-top-processes",
                    "100000",
                ])
                .args(extra)
                .stdout(Stdio::null()),
            PATIENCE,
        )
        .serving();
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
        agent::scrape(&self.url)
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
        agent::terminate(&mut self.child);
        // The reader ends at EOF.
        while let Ok(l) = self.log.recv_timeout(PATIENCE) {
            self.seen_log.push(l);
        }
        std::mem::take(&mut self.seen_log)
    }
}

impl Drop for MetricsAgent {
    fn drop(&mut self) {
        agent::terminate(&mut self.child);
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
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
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

/// The ids of the BPF programs `pid` holds open (programs, links), from
/// `/proc/<pid>/fdinfo`.
fn prog_ids_of(pid: u32) -> std::collections::BTreeSet<u32> {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.strip_prefix("prog_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether the kernel still has the BPF program `id` (loaded, whether or
/// not attached): `BPF_PROG_GET_FD_BY_ID`.
fn prog_exists(id: u32) -> bool {
    #[repr(C)]
    struct Attr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = Attr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: bpf(2) BPF_PROG_GET_FD_BY_ID with an attr of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            13,
            &mut attr as *mut Attr,
            std::mem::size_of::<Attr>() as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: the fd the kernel just returned, ours to close.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    let e = std::io::Error::last_os_error();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOENT),
        "BPF_PROG_GET_FD_BY_ID {id}: {e}"
    );
    false
}

/// The programs of `ids` the kernel still has after waiting up to 10 s
/// for the release of the last reference (a bound, not a measure).
fn still_loaded(ids: &std::collections::BTreeSet<u32>) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = ids.iter().copied().filter(|&id| prog_exists(id)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// An agent run to the end with `--once`, its programs read from
/// `/proc/<pid>/fdinfo` once it is attached; (exit success, stdout,
/// stderr, program ids).
fn run_once(extra: &[String]) -> (bool, String, Vec<String>, std::collections::BTreeSet<u32>) {
    let mut child = agent_command("json", "1.5")
        .arg("--once")
        .args(extra)
        // Debug for the source: it logs the ids of the programs it loaded.
        .env("RUST_LOG", "info,netwatch::source::ebpf=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netwatch-agent");
    let pid = child.id();
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let lines = thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("process rows from the") {
                let _ = tx.send(());
            }
            all.push(line);
        }
        all
    });
    // Attached (or ended early): read its fds before the interval ends.
    let ids = match rx.recv_timeout(PATIENCE) {
        Ok(()) => prog_ids_of(pid),
        Err(_) => Default::default(),
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .expect("reading the agent's stdout");
    let status = child.wait().expect("waiting for the agent");
    let log = lines.join().expect("stderr reader");
    (status.success(), stdout, log, ids)
}

/// Entries left under `dir` (none if it is gone).
fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("an entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_run_by_hand_leaves_no_program_loaded_when_it_exits() {
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _serial = serial();
    let pins = Pins::new("byhand");
    // The paths are given (so nothing could land in the shared default
    // place), but not --pin: pinning is opt-in.
    let (ok, stdout, log, ids) = run_once(&pins.paths());
    assert!(ok, "the agent failed: {log:?}");
    assert_eq!(stdout.lines().count(), 1, "one snapshot: {stdout}");
    assert!(
        ids.len() >= 8,
        "the agent's programs while it ran: {ids:?}; log: {log:?}"
    );
    assert_eq!(
        still_loaded(&ids),
        Vec::<u32>::new(),
        "programs of the agent still loaded after it exited (of {ids:?}); pins: {:?}",
        entries(&pins.dir)
    );
    assert_eq!(entries(&pins.dir), Vec::<PathBuf>::new());
    assert!(!log.iter().any(|l| l.contains("pinned at")), "{log:?}");
    // The ids it logged are the programs it held.
    let logged: std::collections::BTreeSet<u32> = log
        .iter()
        .find_map(|l| l.split("BPF programs loaded, ids [").nth(1))
        .and_then(|rest| rest.split(']').next())
        .unwrap_or_else(|| panic!("no program ids logged: {log:?}"))
        .split(", ")
        .map(|id| id.parse().expect("a program id"))
        .collect();
    assert_eq!(logged, ids);
}

/// `bpftool map create` of a small hash map named `foreign` at `path`:
/// another program's pin.
fn foreign_map(path: &Path) {
    bpftool_map(path, "hash", 4, 4, 4, "foreign");
}

/// `netwatch-agent --unpin` with these arguments: (success, stdout, stderr).
fn unpin(args: &[String]) -> (bool, String, String) {
    let out = Command::new(AGENT)
        .arg("--unpin")
        .args(args)
        .output()
        .expect("running netwatch-agent --unpin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unpin_removes_what_a_pinned_run_left_and_nothing_else() {
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _serial = serial();
    let pins = Pins::new("unpin");
    let mut a = Agent::start(&pins.args());
    a.next();
    let ids = prog_ids_of(a.child.id());
    assert!(ids.len() >= 8, "{ids:?}");
    // Not while an agent runs on them (it would pin them again).
    let (ok, _, err) = unpin(&pins.paths());
    assert!(
        !ok && err.contains("an agent is running on these pins"),
        "{err}"
    );
    a.stop(libc::SIGTERM);
    // Pinned: the programs go on counting without the agent.
    assert!(ids.iter().all(|&id| prog_exists(id)), "{ids:?}");
    let set = pins.set();
    let foreign = pins.dir.join("foreign");
    foreign_map(&foreign);
    let (ok, out, err) = unpin(&pins.paths());
    assert!(ok, "--unpin failed: {out}{err}");
    assert!(out.contains(&format!("removed {}", set.display())), "{out}");
    assert!(
        out.contains(&format!("left {}", foreign.display())),
        "{out}"
    );
    assert_eq!(still_loaded(&ids), Vec::<u32>::new(), "after --unpin");
    assert_eq!(entries(&pins.dir), vec![foreign.clone()]);
    // Nothing left to remove is not an error.
    let (ok, out, err) = unpin(&pins.paths());
    assert!(
        ok && out.contains("nothing of netwatch's is pinned"),
        "{out}{err}"
    );
    assert!(foreign.exists());
}

#[test]
fn a_pin_dir_holding_a_foreign_map_is_refused_and_the_map_survives() {
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _serial = serial();
    let pins = Pins::new("foreign");
    std::fs::create_dir_all(&pins.dir).expect("creating the pin directory");
    let foreign = pins.dir.join("foreign");
    foreign_map(&foreign);
    let (ok, _, log, _) = run_once(&pins.args());
    assert!(
        !ok,
        "the agent ran on a pin dir holding a foreign map: {log:?}"
    );
    let text = log.join("\n");
    assert!(
        text.contains("holds 1 entry netwatch did not make (foreign)"),
        "{text}"
    );
    assert!(foreign.exists(), "the foreign map was removed: {text}");
    assert_eq!(entries(&pins.dir), vec![foreign]);
}

/// A filesystem (a BPF filesystem, a small tmpfs) mounted at a directory
/// of this test's own, unmounted when dropped.
struct Mounted(PathBuf);

impl Mounted {
    fn bpffs(name: &str) -> Self {
        Self::mount("bpf", name, None)
    }

    /// 16 MiB; `fill` takes all its space.
    fn tmpfs(name: &str) -> Self {
        Self::mount("tmpfs", name, Some("size=16m,mode=0700"))
    }

    fn mount(fstype: &str, name: &str, opts: Option<&str>) -> Self {
        let dir = PathBuf::from(format!(
            "/run/nwtest-{fstype}-{name}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("creating the mount point");
        let m = Self(dir);
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
        let target = c(m.0.to_str().expect("a UTF-8 path"));
        let fstype_c = c(fstype);
        let opts = opts.map(c);
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let r = unsafe {
            libc::mount(
                fstype_c.as_ptr(),
                target.as_ptr(),
                fstype_c.as_ptr(),
                0,
                opts.as_ref()
                    .map_or(std::ptr::null(), |o| o.as_ptr().cast()),
            )
        };
        assert_eq!(
            r,
            0,
            "mounting {fstype}: {}",
            std::io::Error::last_os_error()
        );
        m
    }

    fn filler(&self) -> PathBuf {
        self.0.join("filler")
    }

    /// Write until the filesystem is full (ENOSPC).
    fn fill(&self) {
        let mut f = std::fs::File::create(self.filler()).expect("creating the filler");
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.0.display()),
            }
        }
    }

    fn unfill(&self) {
        std::fs::remove_file(self.filler()).expect("removing the filler");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Ok(p) = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2(2) on a NUL-terminated path.
            unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_pin_dir_that_is_a_bpffs_root_is_refused_and_other_pins_survive() {
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _serial = serial();
    let fs = Mounted::bpffs("root");
    let foreign = fs.0.join("foreign");
    foreign_map(&foreign);
    let state = tempfile::tempdir().expect("a temporary directory");
    let args = pinned(&fs.0, &state.path().join("baseline"));
    let (ok, _, log, _) = run_once(&args);
    assert!(!ok, "the agent pinned in a bpffs root: {log:?}");
    let text = log.join("\n");
    assert!(
        text.contains("is the root of a mounted filesystem"),
        "{text}"
    );
    assert!(foreign.exists(), "the foreign map was removed: {text}");
    // Nothing of ours was made beside it (a new bpffs also holds the
    // kernel's own `maps.debug` and `progs.debug`).
    let ours: Vec<PathBuf> = entries(&fs.0)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("v1-"))
        .collect();
    assert_eq!(ours, Vec::<PathBuf>::new());
}

#[test]
fn pins_removed_under_a_running_agent_are_pinned_again_and_every_byte_counts() {
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _serial = serial();
    let pins = Pins::new("removed");
    let mut a = Agent::start(&pins.args());
    a.next();
    let mut sum = (0, 0);
    transfer(111_111);
    add(&mut sum, a.next());
    add(&mut sum, a.next());
    // What `rm -r` of the pin directory does, while the agent runs.
    std::fs::remove_dir_all(&pins.dir).expect("removing the pins");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let noticed = loop {
        if a.logged("were removed while the agent ran") {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(20));
    };
    transfer(222_222);
    add(&mut sum, a.next());
    add(&mut sum, a.next());
    let (rest, log) = a.stop(libc::SIGTERM);
    add(&mut sum, rest);
    assert_eq!(sum, (333_333, 333_333), "{log:?}");
    assert!(noticed, "not noticed within 3 s (10 intervals): {log:?}");
    let set = pins.set();
    // The set made again is complete: the next agent continues from it.
    let mut b = Agent::start(&pins.args());
    b.next();
    assert!(
        b.logged("continuing from the maps and links pinned at")
            && !b.logged("replacing incompatible"),
        "{:?}",
        b.logs()
    );
    assert_eq!(pins.set(), set);
    b.stop(libc::SIGTERM);
}

/// One loopback TCP connection of this process, kept open: `send(n)`
/// moves exactly `n` bytes over it (counted as tx on one end, rx on the
/// other, both this pid's).
struct Conn {
    client: TcpStream,
    server: TcpStream,
}

impl Conn {
    fn open() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback listener");
        let client =
            TcpStream::connect(l.local_addr().expect("listener address")).expect("connecting");
        let (server, _) = l.accept().expect("accepting");
        Self { client, server }
    }

    fn send(&mut self, n: usize) {
        let mut server = self.server.try_clone().expect("cloning the socket");
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; n];
            server.read_exact(&mut buf).expect("reading");
        });
        self.client.write_all(&vec![3u8; n]).expect("writing");
        reader.join().expect("reader thread");
    }
}

#[test]
fn a_baseline_write_that_fails_never_makes_a_restart_count_twice() {
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _serial = serial();
    let pins = Pins::new("full");
    let fs = Mounted::tmpfs("full");
    let args = pinned(&pins.dir, &fs.0.join("baseline"));
    let mut total = (0, 0);
    let mut a = Agent::start(&args);
    a.next();
    // A connection that stays open across the restart: its counters are
    // what the baseline carries.
    let mut conn = Conn::open();
    conn.send(111_111);
    add(&mut total, a.next());
    add(&mut total, a.next());
    // The baseline's filesystem is full from here on: delivered snapshots
    // whose baseline cannot be stored.
    fs.fill();
    conn.send(222_222);
    add(&mut total, a.next());
    add(&mut total, a.next());
    assert!(a.logged("storing the baseline at"), "{:?}", a.logs());
    let (rest, _) = a.stop(libc::SIGTERM);
    add(&mut total, rest);
    assert_eq!(total, (333_333, 333_333), "the first agent's count");
    // Space again; a restart on the same pins.
    fs.unfill();
    let mut b = Agent::start(&args);
    let first = b.next();
    conn.send(33_333);
    add(&mut total, first);
    add(&mut total, b.next());
    add(&mut total, b.next());
    let (rest, log) = b.stop(libc::SIGTERM);
    add(&mut total, rest);
    assert_eq!(
        first,
        (0, 0),
        "the restarted agent's first snapshot counted bytes again; log: {log:?}"
    );
    // Nothing moved while no agent ran: every byte once.
    assert_eq!(total, (366_666, 366_666), "log: {log:?}");
    let said = |needle: &str| log.iter().any(|l| l.contains(needle));
    assert!(
        said("continuing from the maps and links pinned at")
            && said("has no section of generation"),
        "{log:?}"
    );
}

/// The baseline store's steps against a real generation map (on a BPF
/// filesystem of this test's own): only the section of the snapshot the
/// sinks kept last is ever named by the kernel's generation; a failed
/// write leaves the kernel naming no section until a write succeeds; a
/// read whose snapshot was not kept is never used.
#[test]
fn the_baseline_generation_names_only_what_the_sinks_kept() {
    use netwatch::source::ebpf::generation::{self, BaselineStore};
    use netwatch::source::ebpf::pin::BaselineEntry;
    use netwatch::source::SocketId;

    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let fs = Mounted::bpffs("generation");
    let map = fs.0.join("GENERATION");
    generation::create(&map).expect("creating the generation map");
    let open = || generation::open(&map).expect("opening the generation map");
    // A full filesystem makes every write fail (the temporary file has a
    // new random name each time: nothing can stand in its way).
    let store = Mounted::tmpfs("generation-store");
    let path = store.0.join("baseline");
    let block = |on: bool| {
        if on {
            store.fill();
        } else {
            store.unfill();
        }
    };
    let base = |rx: u64| {
        vec![BaselineEntry {
            id: SocketId {
                primary: 1,
                secondary: 2,
            },
            pid: 7,
            udp: false,
            rx,
            tx: rx / 2,
        }]
    };
    let resumed = || BaselineStore::resume(&path, "inst", open()).1;

    let mut s = BaselineStore::fresh(&path, "inst", open());
    // Nothing delivered yet: the kernel's generation 0 names nothing.
    s.prepare(&base(10));
    assert_eq!(resumed(), None);
    s.commit();
    assert_eq!(resumed(), Some(base(10)));
    // A read whose snapshot no sink kept (no commit), then one kept.
    s.prepare(&base(20));
    assert_eq!(resumed(), Some(base(10)));
    s.prepare(&base(30));
    s.commit();
    assert_eq!(resumed(), Some(base(30)));
    // The same baseline again: nothing to write, the generation stays.
    let g = s.kernel_generation();
    s.prepare(&base(30));
    s.commit();
    assert_eq!((s.kernel_generation(), resumed()), (g, Some(base(30))));
    // The write fails (a full or read-only disk), the snapshot is kept:
    // the kernel names a section no file holds, so a restart uses none.
    block(true);
    s.prepare(&base(40));
    s.commit();
    assert_eq!(resumed(), None);
    // The next write that succeeds stores the committed baseline again,
    // even when the read did not change it.
    block(false);
    s.prepare(&base(40));
    assert_eq!(resumed(), Some(base(40)));
    // A failed write of a snapshot no sink kept changes nothing.
    block(true);
    s.prepare(&base(50));
    block(false);
    assert_eq!(resumed(), Some(base(40)));
    // Another agent's instance never reads this file.
    assert_eq!(BaselineStore::resume(&path, "other", open()).1, None);
}

/// Continues and stops a FUSE server (bindfs) this test started, even
/// when the test fails; its private mount namespace goes with it.
struct FuseServer(Option<i32>);

impl Drop for FuseServer {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        // SAFETY: kill(2) on the pid of the bindfs this test started.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGTERM);
        }
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while proc_dir.exists() && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// The baseline file on a FUSE filesystem (bindfs, in a private mount
/// namespace only the agent and bindfs share) whose server is stopped
/// with SIGSTOP: every baseline write blocks until it resumes. Snapshots
/// keep coming every interval (each write fails after its bound); the
/// agent is stopped while the mount still hangs, and a restart on the same
/// pins counts every byte once: the kernel's generation names no section
/// the file holds, so the restart starts from the kernel's counts. On main
/// the read waits in the baseline write: no snapshot while the mount hangs.
#[test]
fn a_hung_baseline_filesystem_costs_no_snapshot_and_a_restart_never_counts_twice() {
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _serial = serial();
    assert!(
        Command::new("bindfs")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "bindfs is missing: run `cargo xtask setup` (or apt-get install bindfs)"
    );
    let pins = Pins::new("hungfs");
    // The baseline lives in `src` (read here and by the restarted agent
    // directly); the first agent writes it through bindfs at `mnt`.
    let src = pins.state_dir.path().join("src");
    let mnt = pins.state_dir.path().join("mnt");
    std::fs::create_dir(&src).expect("creating the FUSE source");
    std::fs::create_dir(&mnt).expect("creating the mount point");
    let pid_file = pins.state_dir.path().join("bindfs.pid");
    let args = pinned(&pins.dir, &mnt.join("baseline"));
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "bindfs -f '{src}' '{mnt}' >/dev/null 2>&1 & echo $! > '{pid}'; \
         i=0; until mountpoint -q '{mnt}'; do i=$((i+1)); \
         [ $i -gt 100 ] && {{ echo 'bindfs did not mount' >&2; exit 1; }}; sleep 0.05; done; \
         exec '{AGENT}' --mode ebpf --ebpf-tier tracepoint --output json --interval 0.3 {args}",
        src = src.display(),
        mnt = mnt.display(),
        pid = pid_file.display(),
        args = quoted.join(" "),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let mut a = Agent::spawn(cmd);
    let mut fuse = FuseServer(None);
    let mut total = (0, 0);
    a.next();
    let bindfs: i32 = std::fs::read_to_string(&pid_file)
        .expect("bindfs pid file")
        .trim()
        .parse()
        .expect("bindfs pid");
    fuse.0 = Some(bindfs);
    let mut conn = Conn::open();
    conn.send(111_111);
    add(&mut total, a.next());
    add(&mut total, a.next());
    assert!(
        src.join("baseline").exists(),
        "the baseline was written through the mount: {:?}",
        a.logs()
    );
    // Hang it.
    // SAFETY: kill(2) on the pid of the bindfs this test started.
    unsafe { libc::kill(bindfs, libc::SIGSTOP) };
    conn.send(222_222);
    // 10 intervals of 0.3 s: at least 6 snapshots (on main: none, the read
    // waits in the baseline write).
    let hung_at = std::time::Instant::now();
    let mut during = 0;
    while hung_at.elapsed() < Duration::from_secs(3) {
        if let Ok(s) = a.snaps.recv_timeout(Duration::from_millis(100)) {
            add(&mut total, s);
            during += 1;
        }
    }
    assert!(
        during >= 6,
        "{during} snapshots in the 3 s the baseline's mount hung; log: {:?}",
        a.logs()
    );
    assert!(a.logged("storing the baseline at"), "{:?}", a.logs());
    // Stopped while the write is still stuck.
    let (rest, log) = a.stop(libc::SIGTERM);
    add(&mut total, rest);
    assert_eq!(
        total,
        (333_333, 333_333),
        "the first agent's count: {log:?}"
    );
    drop(fuse);
    // A restart on the same pins, the baseline file read directly.
    let mut b = Agent::start(&pinned(&pins.dir, &src.join("baseline")));
    let first = b.next();
    conn.send(33_333);
    add(&mut total, first);
    add(&mut total, b.next());
    add(&mut total, b.next());
    let (rest, log) = b.stop(libc::SIGTERM);
    add(&mut total, rest);
    eprintln!("hungfs: {during} snapshots while hung; in all {total:?}");
    assert_eq!(
        first,
        (0, 0),
        "the restarted agent's first snapshot counted bytes again; log: {log:?}"
    );
    assert_eq!(total, (366_666, 366_666), "every byte once; log: {log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains("continuing from the maps and links pinned at")),
        "{log:?}"
    );
}
