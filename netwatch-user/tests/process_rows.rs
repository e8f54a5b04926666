//! Process rows per snapshot are bounded (issue 16: a local user forking
//! thousands of socket holders must not grow a snapshot past the ingest's
//! batch limit). The real agent (eBPF, here the tracepoint tier) runs with
//! `--max-processes 20` while 60 real processes of this test each move an
//! exact, distinct number of bytes over loopback: the 20 busiest keep their
//! rows with their exact bytes, the other 40 are one `(others)` row without
//! a pid holding exactly their sums, counted as 40 drops (the collector's
//! `processes_folded` and the `snapshot_processes` drop line), and the real
//! netwatch-sdk 0.3.2 reads the snapshot. Needs root (the agent loads BPF
//! programs). It assumes no other process on the host moves bytes during
//! its few seconds (any that does shows in the failure message).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::agent;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netwatch_common::wire::Snapshot;

/// The test's movers, and how many of them keep their rows.
const MOVERS: usize = 60;
const MAX_PROCESSES: usize = 20;
/// The name each mover gives itself (its `comm`, as any user may).
const MOVER_NAME: &str = "nwrows-mover";
/// The env variable that makes this binary a mover of that many bytes.
const MOVER_ENV: &str = "NETWATCH_PROCROWS_BYTES";

/// Mover `i`'s bytes: distinct, so the busiest 20 are movers 40..60.
fn bytes_of(i: usize) -> u64 {
    100_000 + 997 * i as u64
}

/// Entry point of the movers; a no-op unless re-executed as one. Names
/// itself, moves exactly `NETWATCH_PROCROWS_BYTES` bytes from one loopback
/// TCP socket of its own to another (rx and tx of this one process, on
/// this one thread), says `MOVED`, and holds both sockets (2 ESTABLISHED)
/// until its stdin closes.
#[test]
fn mover_child() {
    let Ok(n) = std::env::var(MOVER_ENV) else {
        return;
    };
    let n: usize = n.parse().expect("a byte count");
    // The process's name is its main thread's (the eBPF source names a
    // row by it), not the test thread's: written through /proc/self.
    std::fs::write("/proc/self/comm", MOVER_NAME).expect("naming the mover");
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = l.accept().expect("accept");
    // In chunks smaller than any socket buffer: one thread, no deadlock.
    let chunk = vec![7u8; 8192];
    let mut buf = vec![0u8; 8192];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        client.write_all(&chunk[..k]).expect("write");
        server.read_exact(&mut buf[..k]).expect("read");
        left -= k;
    }
    println!("MOVED {}", std::process::id());
    std::io::stdout().flush().expect("stdout");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop((client, server, l));
}

/// The movers, killed on drop (pass or fail).
struct Movers(Vec<Child>);

impl Drop for Movers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The agent, killed on drop (pass or fail).
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the agent; returns it once it says it has attached and had time
/// to prime, with its log lines.
fn start_agent(args: &[&str]) -> (Agent, mpsc::Receiver<String>) {
    let (child, log) = agent::start_primed(args, Duration::from_millis(500));
    (Agent(child), log)
}

#[test]
fn twenty_busiest_keep_their_rows_and_forty_fold_into_one_exact_row() {
    require_root!("the agent loads BPF programs");
    let (mut agent, log) = start_agent(&[
        "--output",
        "json",
        "--once",
        "--interval",
        "4",
        "--max-processes",
        &MAX_PROCESSES.to_string(),
    ]);
    let started = Instant::now();
    let mut movers = Movers(Vec::new());
    for i in 0..MOVERS {
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "mover_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(MOVER_ENV, bytes_of(i).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("re-executing the test binary as a mover");
        movers.0.push(child);
    }
    // Mover i's pid, once it has moved its bytes.
    let pids: Vec<u32> = movers
        .0
        .iter_mut()
        .map(|c| {
            let out = c.stdout.as_mut().expect("mover stdout");
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .find_map(|l| l.strip_prefix("MOVED ").map(str::to_string))
                .expect("a mover says MOVED")
                .parse()
                .expect("a pid")
        })
        .collect();
    let moved_in = started.elapsed();
    let moved_at = chrono::Utc::now();
    for (i, c) in movers.0.iter().enumerate() {
        assert_eq!(pids[i], c.id(), "mover {i} reports its own pid");
    }

    let mut out = String::new();
    agent
        .0
        .stdout
        .take()
        .expect("agent stdout")
        .read_to_string(&mut out)
        .expect("reading the agent's output");
    let status = agent.0.wait().expect("agent exit");
    let log: Vec<String> = log.try_iter().collect();
    assert!(status.success(), "agent --once exits 0; log: {log:#?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "--once prints one snapshot: {out}");
    let snap: Snapshot = serde_json::from_str(lines[0]).expect("a Snapshot");
    assert!(
        snap.timestamp > moved_at,
        "the movers took {moved_in:?}, past the agent's 4 s interval: a loaded \
         machine, not a finding; run again"
    );

    let rows = snap.processes.as_deref().expect("process rows");
    let brief: Vec<(Option<u32>, &str, u64, u64, u32)> = rows
        .iter()
        .map(|p| {
            (
                p.pid,
                p.process_name.as_str(),
                p.rx_bytes,
                p.tx_bytes,
                p.connection_count,
            )
        })
        .collect();
    // The busiest first: movers 59 down to 40, each its exact bytes and
    // its two ESTABLISHED sockets; then the 40 others in one row.
    let folded: u64 = (0..MOVERS - MAX_PROCESSES).map(bytes_of).sum();
    let mut expected: Vec<(Option<u32>, &str, u64, u64, u32)> = (MOVERS - MAX_PROCESSES..MOVERS)
        .rev()
        .map(|i| (Some(pids[i]), MOVER_NAME, bytes_of(i), bytes_of(i), 2))
        .collect();
    expected.push((
        None,
        netwatch::attribution::FOLDED_PROCESS_NAME,
        folded,
        folded,
        2 * (MOVERS - MAX_PROCESSES) as u32,
    ));
    assert_eq!(
        brief, expected,
        "20 rows of the busiest, then the others folded (another process moving \
         bytes on this host meanwhile would show here)"
    );
    assert_eq!(folded, 4_777_660, "the 40 smaller movers' bytes, each way");
    let c = snap.collector.as_ref().expect("collector info");
    assert_eq!(c.source, "ebpf");
    assert_eq!(c.processes_folded, Some(40));
    let drop_line = "snapshot_processes: at its cap (20), dropped 40 (total 40)";
    assert_eq!(
        log.iter().filter(|l| l.contains(drop_line)).count(),
        1,
        "one drop line: {log:#?}"
    );
    // The kept rows have their metadata; the folded row has none.
    for p in &rows[..MAX_PROCESSES] {
        assert!(p.user.is_some() && p.cmd.is_some(), "metadata of {p:?}");
    }
    let other = &rows[MAX_PROCESSES];
    assert_eq!((other.user.as_ref(), other.cmd.as_ref()), (None, None));

    // The real netwatch-sdk 0.3.2 reads it: the same rows, the folded one
    // without a pid.
    let sdk: netwatch_sdk::types::Snapshot =
        serde_json::from_str(lines[0]).expect("netwatch-sdk 0.3.2 reads the snapshot");
    let sdk_rows = sdk.processes.expect("the SDK sees the process rows");
    let sdk_brief: Vec<(Option<u32>, &str, u64, u64, u32)> = sdk_rows
        .iter()
        .map(|p| {
            (
                p.pid,
                p.process_name.as_str(),
                p.rx_bytes,
                p.tx_bytes,
                p.connection_count,
            )
        })
        .collect();
    assert_eq!(sdk_brief, expected);

    // The measurement behind the default of 1000 rows: a row's JSON size.
    let sizes: Vec<usize> = rows[..MAX_PROCESSES]
        .iter()
        .map(|p| serde_json::to_string(p).map_or(0, |s| s.len()))
        .collect();
    eprintln!(
        "process row JSON: {}..{} bytes (with every metadata field); the whole \
         snapshot {} bytes; the movers took {moved_in:?}",
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
        lines[0].len()
    );
    drop(movers);
}
