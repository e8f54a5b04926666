//! The agent binary end to end, as outside checks use it: `--output json`
//! streams one `Snapshot` per line, `--once` prints exactly one after one
//! interval, and the process rows carry a transfer's exact bytes under the
//! transferring process's pid. Needs root (the agent loads BPF programs).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::agent::{self, AGENT};
use common::{serial, transfer};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use netwatch_common::wire::Snapshot;

/// Start the agent; returns it once it says it has attached (stderr) and
/// had time to prime its baselines.
fn start_agent(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    agent::start_primed(args, Duration::from_millis(300))
}

fn my_bytes(s: &Snapshot) -> (u64, u64) {
    let me = std::process::id();
    s.processes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|p| p.pid == Some(me))
        .fold((0, 0), |a, p| (a.0 + p.rx_bytes, a.1 + p.tx_bytes))
}

#[test]
fn once_prints_one_snapshot_with_the_transfer_exact() {
    require_root!("the agent loads BPF programs");
    let _serial = serial();
    let (mut agent, _log) = start_agent(&["--output", "json", "--once", "--interval", "4"]);
    transfer(1_234_567);
    let mut out = String::new();
    agent
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(agent.wait().unwrap().success(), "agent --once exits 0");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "--once prints exactly one snapshot: {out}");
    let snap: Snapshot = serde_json::from_str(lines[0]).expect("a Snapshot");
    assert_eq!(
        my_bytes(&snap),
        (1_234_567, 1_234_567),
        "this process sent and received the transfer"
    );
    let c = snap.collector.as_ref().expect("collector info");
    assert_eq!(c.source, "ebpf");
    assert!(c.ebpf_tier.is_some());
    assert!(!snap.interfaces.is_empty(), "interfaces are collected");
    let me = snap
        .processes
        .unwrap()
        .into_iter()
        .find(|p| p.pid == Some(std::process::id()))
        .unwrap();
    assert_eq!(
        me.cmd.as_deref(),
        std::env::current_exe().unwrap().to_str(),
        "cmd is the exe path, never argv"
    );
}

#[test]
fn json_stream_carries_every_byte_across_intervals() {
    require_root!("the agent loads BPF programs");
    let _serial = serial();
    let (mut agent, _log) = start_agent(&["--output", "json", "--interval", "0.5"]);
    let stdout = agent.stdout.take().unwrap();
    let lines = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // Spread over several intervals; the last transfer ends right before
    // SIGINT, so only the agent's final partial snapshot can carry it.
    for n in [1, 65_536, 3_000_000] {
        transfer(n);
        if n != 3_000_000 {
            thread::sleep(Duration::from_millis(700));
        }
    }
    // No waiting for ticks: on SIGINT the agent delivers the partial interval.
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let status = agent.wait().unwrap();
    assert!(status.success(), "agent stops cleanly on SIGINT: {status}");
    let snaps = snapshots(lines);
    assert!(
        snaps.len() >= 3,
        "one snapshot per interval plus the final one, got {}",
        snaps.len()
    );
    let total = snaps
        .iter()
        .map(my_bytes)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let want = (1 + 65_536 + 3_000_000) as u64;
    assert_eq!(
        total,
        (want, want),
        "every byte, exactly once, over all intervals"
    );
}

/// Every `--output json` line the agent printed, parsed.
fn snapshots(lines: thread::JoinHandle<Vec<String>>) -> Vec<Snapshot> {
    lines
        .join()
        .unwrap()
        .into_iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("not a Snapshot ({e}): {l}")))
        .collect()
}

/// A connection every mode has seen (and knows the owner of) finishes a
/// 3 MB transfer and closes right before SIGINT: the final snapshot of the
/// partial interval carries all of it, whether the bytes wait in a ring
/// buffer (eBPF), a destroy event (ss) or the capture buffer (pcap).
fn bytes_of_a_connection_closed_just_before_stop_are_delivered(mode: &str) {
    require_root!("the agent loads BPF programs");
    let _serial = serial();
    let (mut agent, log) = start_agent(&["--mode", mode, "--output", "json", "--interval", "0.5"]);
    let stdout = agent.stdout.take().unwrap();
    let lines = thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    const N: usize = 3_000_000;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut c = TcpStream::connect(addr).unwrap();
    let (mut s, _) = l.accept().unwrap();
    // Two ticks see both ends idle (and, for ss and pcap, their owner).
    thread::sleep(Duration::from_millis(1_200));
    let reader = thread::spawn(move || {
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        buf.len()
    });
    c.write_all(&vec![7u8; N]).unwrap();
    drop(c);
    assert_eq!(reader.join().unwrap(), N);
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let status = agent.wait().unwrap();
    assert!(status.success(), "agent stops cleanly on SIGINT: {status}");
    let snaps = snapshots(lines);
    let source = snaps
        .last()
        .and_then(|s| s.collector.as_ref())
        .map(|c| c.source.clone());
    assert_eq!(
        source.as_deref(),
        Some(mode),
        "the agent ran the mode asked for"
    );
    let total = snaps
        .iter()
        .map(my_bytes)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(
        total,
        (N as u64, N as u64),
        "{mode}: the transfer, exactly, by the time the agent stopped; log: {:?}",
        log.try_iter().collect::<Vec<_>>()
    );
}

#[test]
fn ebpf_delivers_a_connection_closed_just_before_stop() {
    bytes_of_a_connection_closed_just_before_stop_are_delivered("ebpf");
}

#[test]
fn ss_delivers_a_connection_closed_just_before_stop() {
    bytes_of_a_connection_closed_just_before_stop_are_delivered("ss");
}

#[test]
fn pcap_delivers_a_connection_closed_just_before_stop() {
    bytes_of_a_connection_closed_just_before_stop_are_delivered("pcap");
}

/// SIGTERM while the agent is still loading its source (systemd stopping
/// a unit that just started): it finishes starting, delivers one snapshot
/// and exits 0, instead of being killed half-way by the default action.
#[test]
fn sigterm_during_start_up_still_ends_cleanly_with_one_snapshot() {
    require_root!("the agent loads BPF programs");
    let _serial = serial();
    let mut child = Command::new(AGENT)
        .args(["--no-pin", "--output", "json", "--interval", "30"])
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netwatch-agent");
    let stderr = child.stderr.take().unwrap();
    let (loading_tx, loading_rx) = mpsc::channel();
    let log = thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // The first line the eBPF loader logs: the source is loading.
            if line.contains("netwatch::source") {
                let _ = loading_tx.send(());
            }
            lines.push(line);
        }
        lines
    });
    loading_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the agent logs while loading its source");
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert!(
        status.success(),
        "a stop during start-up ends the agent cleanly: {status}; log: {log:?}"
    );
    let snaps: Vec<Snapshot> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a Snapshot"))
        .collect();
    assert_eq!(snaps.len(), 1, "the final snapshot, and only it: {out}");
    assert!(
        log.iter().any(|l| l.contains("process rows from the")),
        "it finished starting first: {log:?}"
    );
}
