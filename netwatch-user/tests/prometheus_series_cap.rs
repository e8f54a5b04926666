//! The Prometheus process series under a flood of processes: at most
//! `top_processes` series, the rest folded into `comm="other"` so the
//! totals stay exact, and every series refused or evicted counted in
//! `netwatch_agent_table_dropped_total{table="prometheus_series"}`.
//!
//! Two tests: the library object fed 200,000 processes with distinct names
//! (exact counts), and the real agent (`--mode ss`, `--output json
//! --output prometheus --metrics-top-processes 5`) in a network namespace
//! of its own with 12 real processes of distinct names moving bytes over
//! its loopback: the scrape holds 5 process series, series plus `other`
//! add up to exactly the bytes of the snapshots the agent printed, and the
//! drop count is exactly the refusals and evictions those snapshots imply.
//! The namespace keeps the host's other sockets (other tests, other
//! users) out of the agent's view, so the counts are exact; it is made
//! with `unshare(CLONE_NEWNET)` on a thread of this test (nothing to clean
//! up: it goes with its last process). The agent test needs root.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::serial;

use common::netns;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use netwatch::sink::prometheus::{parse_cgroup, render, MetricsState, ProcessKey, SeriesLimits};
use netwatch_common::wire::{ProcessBandwidth, Snapshot};

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
const PATIENCE: Duration = Duration::from_secs(60);
const TABLE: &str = "prometheus_series";

/// The workload processes: with `NWCAP_NAME` set, name this process so and
/// move bytes to itself over loopback until stdin closes.
#[test]
fn workload_child() {
    let Ok(name) = std::env::var("NWCAP_NAME") else {
        return;
    };
    // The process's name (its main thread's, which `ss -p` shows; the
    // harness runs this test on a thread of its own).
    std::fs::write("/proc/self/comm", &name).expect("naming the process");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    println!("READY");
    std::io::stdout().flush().expect("stdout");
    let chunk = [7u8; 1000];
    let mut buf = [0u8; 1000];
    loop {
        client.write_all(&chunk).expect("write");
        server.read_exact(&mut buf).expect("read");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of `name{labels}` exactly as printed on `page`.
fn sample(page: &str, name_and_labels: &str) -> Option<u64> {
    page.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == name_and_labels).then(|| value.parse().ok())?
    })
}

/// Every process series of `counter` on `page`: labels → value (`other` included).
fn series(page: &str, counter: &str) -> BTreeMap<String, u64> {
    page.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(counter)?.strip_prefix('{')?;
            let (labels, value) = rest.rsplit_once(' ')?;
            Some((labels.to_string(), value.parse().expect("a counter value")))
        })
        .collect()
}

fn is_other(labels: &str) -> bool {
    labels.contains("comm=\"other\"")
}

fn snap(rows: impl Iterator<Item = (u32, String, u64, u64)>) -> Snapshot {
    let mut s = Snapshot::empty(Utc::now());
    s.processes = Some(
        rows.map(|(pid, comm, rx, tx)| {
            ProcessBandwidth::network_only(comm, Some(pid), rx, tx, 0.0, 0.0, 1)
        })
        .collect(),
    );
    s
}

#[test]
fn a_flood_of_distinct_processes_keeps_the_cap_exact_totals_and_counts_drops() {
    let _one = serial();
    const TOP: usize = 1_000;
    const FLOOD: u32 = 100_000;
    let state = Arc::new(Mutex::new(MetricsState::new(SeriesLimits {
        expiry: Duration::from_secs(300),
        top_processes: TOP,
    })));
    let before = netwatch::drops::total(TABLE);
    let t0 = Instant::now();
    let mut cgroup = |pid: u32| format!("/user.slice/flood-{}", pid % 7);
    // 100,000 processes, each moving (i % 997 + 1) bytes in and 3 out.
    let rows = |base: u32| {
        (0..FLOOD).map(move |i| {
            (
                base + i,
                format!("flood{}-{i}", base),
                u64::from(i % 997 + 1),
                3,
            )
        })
    };
    let first = snap(rows(1_000_000));
    let bytes_of = |s: &Snapshot| {
        s.processes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .fold((0u64, 0u64), |a, p| (a.0 + p.rx_bytes, a.1 + p.tx_bytes))
    };
    let (rx1, tx1) = bytes_of(&first);
    state.lock().expect("state").apply(&first, t0, &mut cgroup);
    let page = render(&state, None);
    let rx = series(&page, "netwatch_process_receive_bytes_total");
    let tx = series(&page, "netwatch_process_transmit_bytes_total");
    assert_eq!(rx.keys().filter(|k| !is_other(k)).count(), TOP);
    assert_eq!(rx.values().sum::<u64>(), rx1, "every byte in one series");
    assert_eq!(tx.values().sum::<u64>(), tx1);
    assert_eq!(
        netwatch::drops::total(TABLE) - before,
        u64::from(FLOOD) - TOP as u64
    );
    let other_rx1 = rx
        .iter()
        .find(|(k, _)| is_other(k))
        .map(|(_, v)| *v)
        .expect("other");
    let other_tx1 = tx
        .iter()
        .find(|(k, _)| is_other(k))
        .map(|(_, v)| *v)
        .expect("other");

    // 100,000 new processes while the first ones are gone: the 1,000
    // series (idle now) are evicted for the busiest newcomers, the rest of
    // the newcomers go to other.
    let second = snap(rows(2_000_000));
    let (rx2, tx2) = bytes_of(&second);
    state
        .lock()
        .expect("state")
        .apply(&second, t0 + Duration::from_secs(1), &mut cgroup);
    let page = render(&state, None);
    let rx = series(&page, "netwatch_process_receive_bytes_total");
    let tx = series(&page, "netwatch_process_transmit_bytes_total");
    assert_eq!(rx.keys().filter(|k| !is_other(k)).count(), TOP);
    assert!(rx
        .keys()
        .all(|k| is_other(k) || k.contains("flood2000000-")));
    // The evicted series ended with their counts; what is left is the
    // second snapshot's bytes and what other held before.
    assert_eq!(rx.values().sum::<u64>(), rx2 + other_rx1);
    assert_eq!(tx.values().sum::<u64>(), tx2 + other_tx1);
    assert_eq!(
        sample(
            &page,
            "netwatch_process_series_removed_total{reason=\"evicted\"}"
        ),
        Some(TOP as u64)
    );
    let dropped = 2 * u64::from(FLOOD) - TOP as u64;
    assert_eq!(netwatch::drops::total(TABLE) - before, dropped);
    assert_eq!(
        sample(
            &page,
            &format!("netwatch_agent_table_dropped_total{{table=\"{TABLE}\"}}")
        ),
        Some(before + dropped)
    );
}

/// A workload process, killed when dropped.
struct Mover(Child);

impl Drop for Mover {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent, stopped when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// GET `path` from `addr` (HTTP/1.1, one request, connection closed).
fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[test]
fn the_agent_under_a_process_flood_keeps_the_cap_exact_totals_and_counts_drops() {
    require_root!("runs the agent in a network namespace of its own");
    let _one = serial();
    std::thread::spawn(agent_in_a_namespace)
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn agent_in_a_namespace() {
    const TOP: usize = 5;
    const MOVERS: usize = 12;
    // SAFETY: unshare on this thread only; the processes it starts inherit
    // its namespace, nothing else of the test binary runs on it.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    netns::loopback_up();

    let mut child = Command::new(AGENT)
        .args([
            "--mode",
            "ss",
            "--output",
            "json",
            "--output",
            "prometheus",
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-top-processes",
            &TOP.to_string(),
            "--interval",
            "0.3",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netwatch-agent");
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let agent = Agent(child);
    let (url_tx, url_rx) = mpsc::channel();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    std::thread::spawn({
        let log = Arc::clone(&log);
        move || {
            for line in BufReader::new(stderr.expect("stderr"))
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("serving Prometheus metrics on http://").nth(1) {
                    let _ = url_tx.send(rest.trim().trim_end_matches("/metrics").to_string());
                }
                log.lock().expect("log").push(line);
            }
        }
    });
    let snapshots = Arc::new(Mutex::new(Vec::<Snapshot>::new()));
    std::thread::spawn({
        let snapshots = Arc::clone(&snapshots);
        move || {
            for line in BufReader::new(stdout.expect("stdout"))
                .lines()
                .map_while(Result::ok)
            {
                let s: Snapshot = serde_json::from_str(&line).expect("a Snapshot per line");
                snapshots.lock().expect("snapshots").push(s);
            }
        }
    });
    let addr = url_rx
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("the agent did not serve /metrics; log: {:?}", log.lock()));

    let mut movers = Vec::new();
    for i in 0..MOVERS {
        let mut c = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "workload_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env("NWCAP_NAME", format!("nwcap-{i:02}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("re-executing the test binary");
        let out = c.stdout.take().expect("stdout");
        let mover = Mover(c);
        let ready = BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.trim() == "READY");
        assert!(ready, "mover {i} did not start");
        movers.push(mover);
    }

    // Ten snapshots with every mover moving bytes.
    let deadline = Instant::now() + PATIENCE;
    let start = snapshots.lock().expect("snapshots").len();
    let page = loop {
        let page = get(&addr, "/metrics");
        let taken = sample(&page, "netwatch_agent_snapshots_total").expect("snapshots_total");
        if taken as usize >= start + 10 {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "too few snapshots; log: {:?}",
            log.lock()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let taken = sample(&page, "netwatch_agent_snapshots_total").expect("snapshots_total") as usize;
    while snapshots.lock().expect("snapshots").len() < taken {
        assert!(Instant::now() < deadline, "the JSON lags the page");
        std::thread::sleep(Duration::from_millis(20));
    }
    let printed: Vec<Snapshot> = snapshots.lock().expect("snapshots")[..taken].to_vec();
    // The movers and the agent stay until the replay below has read each
    // pid's cgroup (as the agent did).

    // The page: the cap, and every byte of the first `taken` snapshots.
    let rx = series(&page, "netwatch_process_receive_bytes_total");
    let tx = series(&page, "netwatch_process_transmit_bytes_total");
    let procs = rx.keys().filter(|k| !is_other(k)).count();
    assert_eq!(procs, TOP, "process series on the page:\n{page}");
    assert_eq!(sample(&page, "netwatch_process_series"), Some(TOP as u64));
    let rows = || {
        printed
            .iter()
            .flat_map(|s| s.processes.as_deref().unwrap_or_default())
    };
    let names: BTreeSet<&str> = rows().map(|p| p.process_name.as_str()).collect();
    let ours = names.iter().filter(|n| n.starts_with("nwcap-")).count();
    assert_eq!(ours, MOVERS, "every mover has rows: {names:?}");
    let evicted = sample(
        &page,
        "netwatch_process_series_removed_total{reason=\"evicted\"}",
    )
    .expect("evicted count");
    let rx_sum: u64 = rows().map(|p| p.rx_bytes).sum();
    let tx_sum: u64 = rows().map(|p| p.tx_bytes).sum();
    assert!(rx_sum > 0 && tx_sum > 0, "the movers moved bytes");
    // Series evicted ended with their counts; the page holds the rest.
    // Replaying the printed snapshots through the same state gives the
    // evicted series' totals (and the same page).
    let mut replay = MetricsState::new(SeriesLimits {
        expiry: Duration::from_secs(300),
        top_processes: TOP,
    });
    let t0 = Instant::now();
    let mut cgroup = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|t| parse_cgroup(&t))
            .unwrap_or_default()
    };
    // What the snapshots imply, independently of the drop counting: per
    // snapshot, the keys (with a pid) left without a series, plus the
    // series that went away (evicted: nothing expires within 300 s).
    let (mut implied, mut gone_rx, mut gone_tx) = (0u64, 0u64, 0u64);
    for (i, s) in printed.iter().enumerate() {
        let before: BTreeMap<ProcessKey, (u64, u64)> = replay
            .processes()
            .iter()
            .map(|(k, v)| (k.clone(), (v.rx_bytes_total, v.tx_bytes_total)))
            .collect();
        replay.apply(s, t0 + Duration::from_millis(300 * i as u64), &mut cgroup);
        let after = replay.processes();
        let keys: BTreeSet<ProcessKey> = s
            .processes
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some(ProcessKey {
                    pid: p.pid?,
                    comm: p.process_name.clone(),
                    cgroup: cgroup(p.pid?),
                })
            })
            .collect();
        implied += keys.iter().filter(|k| !after.contains_key(k)).count() as u64;
        for (k, (r, t)) in &before {
            if !after.contains_key(k) {
                implied += 1;
                gone_rx += r;
                gone_tx += t;
            }
        }
    }
    assert_eq!(
        rx.values().sum::<u64>() + gone_rx,
        rx_sum,
        "rx: series + other + evicted"
    );
    assert_eq!(
        tx.values().sum::<u64>() + gone_tx,
        tx_sum,
        "tx: series + other + evicted"
    );
    let replayed = render(&Arc::new(Mutex::new(replay)), None);
    assert_eq!(
        series(&replayed, "netwatch_process_receive_bytes_total"),
        rx
    );
    assert_eq!(
        sample(
            &replayed,
            "netwatch_process_series_removed_total{reason=\"evicted\"}"
        ),
        Some(evicted)
    );
    assert!(implied > evicted, "the flood refused newcomers: {implied}");
    assert_eq!(
        sample(
            &page,
            &format!("netwatch_agent_table_dropped_total{{table=\"{TABLE}\"}}")
        ),
        Some(implied),
        "the agent's count of series refused or evicted"
    );
    drop(movers);
    drop(agent);
}
