//! Supervised worker threads and liveness, end to end: the real agent
//! binary (a debug build, whose test-only fault hook
//! `NETWATCH_FAULT_INJECT` makes a chosen worker panic or the tick stall),
//! scraped over real HTTP on loopback. Each worker kind the agent runs
//! (ingest sender, health prober, `/metrics` server, eBPF ring drain,
//! sock_diag destroy listener, pcap capture and rescan) is made to panic
//! once: the agent logs it, `/metrics` shows `component_up` 0 then 1 and
//! `component_restarts_total` 1, snapshots keep coming, and the ingest
//! envelope's `collectors_ok` is false while it is down. A part that keeps
//! failing is given up on: `/healthz` says so with 503 and the agent exits
//! non-zero naming it. A stalled tick turns `/healthz` to 503 until it
//! ticks again, and starves systemd's watchdog (`NOTIFY_SOCKET`, a datagram
//! socket of the test's own standing in for systemd). Needs root (BPF
//! programs, sock_diag, capture; root-owned config files).
#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[macro_use]
mod common;
use common::serial;

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
const KEY: &str = "nwk_test_supervision_0123456789";
/// Give up waiting after this long (a hang, not a measure).
const PATIENCE: Duration = Duration::from_secs(90);

/// The rest of what these tests need, beside root.
fn require_debug_build() {
    if !cfg!(debug_assertions) {
        panic!(
            "these tests use the fault hook NETWATCH_FAULT_INJECT, which only debug builds \
             have: run them without --release"
        );
    }
}

// ------------------------------------------------------------ ingest stand-in

/// A minimal NetWatch Cloud stand-in on 127.0.0.1: answers every POST with
/// 200 and keeps each envelope's `agent_health.collectors_ok`.
struct Ingest {
    addr: std::net::SocketAddr,
    collectors_ok: Arc<Mutex<Vec<bool>>>,
}

impl Ingest {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let collectors_ok = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&collectors_ok);
        // Ends with the test process.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Some(ok) = answer_post(stream) {
                    seen.lock().unwrap().push(ok);
                }
            }
        });
        Self {
            addr,
            collectors_ok,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn collectors_ok(&self) -> Vec<bool> {
        self.collectors_ok.lock().unwrap().clone()
    }
}

/// Read one request (headers, then `Content-Length` bytes), answer 200,
/// close; the envelope's `collectors_ok`.
fn answer_post(mut stream: TcpStream) -> Option<bool> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let (_, _, body) = common::read_request(&mut reader)?;
    let _ =
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
    let env: serde_json::Value = serde_json::from_slice(&body).ok()?;
    env["agent_health"]["collectors_ok"].as_bool()
}

// ------------------------------------------------------------------- agent

/// The agent with `/metrics` and `/healthz`, killed when dropped.
struct Agent {
    child: Child,
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    /// When each snapshot line arrived on stdout.
    snapshots: Arc<Mutex<Vec<Instant>>>,
    readers: Vec<thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Start the agent with `args` (and `config` as its config file), with
/// `--output json --output prometheus` on a free port and `faults` in
/// `NETWATCH_FAULT_INJECT`; returns once it serves `/metrics`.
fn start(args: &[&str], config: &str, faults: &str) -> Agent {
    start_with_env(args, config, faults, &[])
}

/// [`start`] with more environment variables.
fn start_with_env(args: &[&str], config: &str, faults: &str, env: &[(&str, &str)]) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    for (name, text) in [("config.toml", config), ("api-key", KEY)] {
        std::fs::write(path(name), text).unwrap();
        std::fs::set_permissions(path(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut cmd = Command::new(AGENT);
    cmd.args(["--no-pin", "--config", &path("config.toml")])
        .args(["--output", "json", "--output", "prometheus"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--max-connections", "20"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NETWATCH_FAULT_INJECT", faults)
        .env_remove("NETWATCH_API_KEY")
        .env_remove("NETWATCH_CONFIG")
        .env_remove("NETWATCH_ENDPOINT")
        .env_remove("NETWATCH_INTERVAL")
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if args.contains(&"ingest") {
        cmd.args(["--api-key-file", &path("api-key")])
            .args(["--spool-dir", &path("spool")])
            .args(["--host-id-file", &path("host-id")]);
    }
    let mut child = cmd.spawn().expect("starting netwatch-agent");
    let log = Arc::new(Mutex::new(Vec::new()));
    let snapshots = Arc::new(Mutex::new(Vec::new()));
    let (err, out) = (child.stderr.take().unwrap(), child.stdout.take().unwrap());
    let readers = vec![
        {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            })
        },
        {
            let snapshots = Arc::clone(&snapshots);
            thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if line.starts_with('{') {
                        snapshots.lock().unwrap().push(Instant::now());
                    }
                }
            })
        },
    ];
    let mut agent = Agent {
        child,
        base: String::new(),
        log,
        snapshots,
        readers,
        _dir: dir,
    };
    let started = Instant::now();
    loop {
        let url = agent.log().iter().find_map(|l| {
            l.split("serving Prometheus metrics on ")
                .nth(1)
                .map(|u| u.trim().trim_end_matches("/metrics").to_string())
        });
        if let Some(url) = url {
            agent.base = url;
            return agent;
        }
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!("the agent exited ({status}) at start: {:#?}", agent.log());
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the agent did not serve /metrics: {:#?}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

impl Agent {
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// `GET path`: status and body, `None` when no answer came.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let addr = self.base.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    }

    /// Every supervised part on the page: name → (up, restarts).
    fn components(&self) -> Option<BTreeMap<String, (i64, u64)>> {
        let (status, page) = self.get("/metrics")?;
        assert_eq!(status, 200, "{page}");
        let mut out: BTreeMap<String, (i64, u64)> = BTreeMap::new();
        for line in page.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name_of = |prefix: &str| {
                series
                    .strip_prefix(prefix)?
                    .strip_suffix("\"}")
                    .map(str::to_string)
            };
            if let Some(c) = name_of("netwatch_agent_component_up{component=\"") {
                out.entry(c).or_default().0 = value.parse().unwrap();
            } else if let Some(c) = name_of("netwatch_agent_component_restarts_total{component=\"")
            {
                out.entry(c).or_default().1 = value.parse().unwrap();
            }
        }
        Some(out)
    }

    /// Wait for the agent to exit; its exit code and log.
    fn wait_exit(mut self, within: Duration) -> (Option<i32>, Vec<String>) {
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < within,
                "the agent did not exit within {within:?}: {:#?}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        (status.code(), self.log())
    }

    /// The longest wait between two snapshots after the first.
    fn longest_gap(&self) -> Duration {
        let s = self.snapshots.lock().unwrap();
        s.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
    }

    fn snapshot_count(&self) -> usize {
        self.snapshots.lock().unwrap().len()
    }
}

/// Scrape until every part of `faulted` was seen down (up 0, or for
/// `metrics` a scrape without an answer) and then back up with exactly one
/// restart; returns the page's parts then.
fn watch_restarts(agent: &Agent, faulted: &[&str]) -> BTreeMap<String, (i64, u64)> {
    let started = Instant::now();
    let mut seen_down: BTreeSet<String> = BTreeSet::new();
    loop {
        match agent.components() {
            None => {
                seen_down.insert("metrics".into());
            }
            Some(parts) => {
                for (name, (up, restarts)) in &parts {
                    if *up == 0 {
                        assert_eq!(*restarts, 0, "{name} is down before its one restart");
                        seen_down.insert(name.clone());
                    }
                }
                let done = faulted.iter().all(|f| {
                    seen_down.contains(*f)
                        && parts.get(*f).is_some_and(|&(up, r)| up == 1 && r == 1)
                });
                if done {
                    return parts;
                }
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "not every part of {faulted:?} was seen down and back (seen down: {seen_down:?}); \
             page parts: {:?}; log: {:#?}",
            agent.components(),
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The restart's log lines: the failure (with the panic) and the restart,
/// once each for every part of `faulted`.
fn assert_logged_once_each(log: &[String], faulted: &[&str]) {
    for f in faulted {
        let failed = format!("{f} failed: panicked: fault injection: {f} panics");
        let restarted = format!("{f} restarted (1 restarts so far)");
        for needle in [&failed, &restarted] {
            let n = log.iter().filter(|l| l.contains(needle.as_str())).count();
            assert_eq!(n, 1, "`{needle}` logged once: {log:#?}");
        }
    }
}

fn ingest_and_health_config(ingest: &Ingest) -> String {
    format!(
        "[ingest]\nendpoint = \"{}\"\nretry_initial_secs = 0.1\nretry_max_secs = 0.5\n\
         [health]\ninterval_secs = 0.5\ntimeout_ms = 200\ngateway = \"127.0.0.1\"\n\
         dns_server = \"127.0.0.1\"\n",
        ingest.endpoint()
    )
}

// ------------------------------------------------------------------- tests

/// eBPF source with ingest, `/metrics` and health probes: the ring drain,
/// the health prober, the ingest sender and the `/metrics` server each
/// panic once (a few seconds apart). Each is restarted once and counted;
/// snapshots never stop; `collectors_ok` is false while a part is down and
/// true once all are back.
#[test]
fn ebpf_ingest_health_and_metrics_workers_that_panic_once_are_restarted_and_counted() {
    require_root!(
        "loads BPF programs, opens sock_diag and a capture, writes root-owned config files"
    );
    require_debug_build();
    let _serial = serial();
    let ingest = Ingest::start();
    let agent = start(
        &[
            "--mode",
            "ebpf",
            "--output",
            "ingest",
            "--health",
            "--interval",
            "1",
        ],
        &ingest_and_health_config(&ingest),
        "panic:health:after=6,panic:ringbuf:after=9,panic:ingest:after=12,panic:metrics:after=15",
    );
    let faulted = ["health", "ringbuf", "ingest", "metrics"];
    let parts = watch_restarts(&agent, &faulted);
    let mut expected: BTreeMap<String, (i64, u64)> =
        faulted.iter().map(|f| (f.to_string(), (1, 1))).collect();
    // Beside the eBPF source runs the DNS capture: up, never restarted.
    expected.insert("dns_capture".to_string(), (1, 0));
    assert_eq!(
        parts, expected,
        "every part up, each faulted one restarted once"
    );
    // Snapshots kept coming through every restart: never three intervals
    // without one.
    let before = agent.snapshot_count();
    thread::sleep(Duration::from_secs(3));
    assert!(agent.snapshot_count() > before, "snapshots stopped");
    assert!(
        agent.longest_gap() < Duration::from_secs(3),
        "a gap of {:?} between snapshots",
        agent.longest_gap()
    );
    assert_eq!(agent.get("/healthz").map(|r| r.0), Some(200));
    let oks = ingest.collectors_ok();
    assert!(
        oks.contains(&false),
        "an envelope sent while a part was down says collectors_ok = false: {oks:?}"
    );
    assert_eq!(
        oks.last(),
        Some(&true),
        "all back: collectors_ok again: {oks:?}"
    );
    assert_logged_once_each(&agent.log(), &faulted);
}

/// The `ss` source's sock_diag destroy listener panics once: restarted and
/// counted, snapshots keep coming.
#[test]
fn the_ss_destroy_listener_that_panics_once_is_restarted_and_counted() {
    require_root!(
        "loads BPF programs, opens sock_diag and a capture, writes root-owned config files"
    );
    require_debug_build();
    let _serial = serial();
    let agent = start(
        &["--mode", "ss", "--interval", "1"],
        "",
        "panic:ss_destroy:after=4",
    );
    let parts = watch_restarts(&agent, &["ss_destroy"]);
    assert_eq!(parts.get("ss_destroy"), Some(&(1, 1)), "{parts:?}");
    assert_eq!(parts.get("metrics"), Some(&(1, 0)), "{parts:?}");
    let before = agent.snapshot_count();
    thread::sleep(Duration::from_secs(3));
    assert!(agent.snapshot_count() > before, "snapshots stopped");
    assert!(agent.longest_gap() < Duration::from_secs(3));
    assert_logged_once_each(&agent.log(), &["ss_destroy"]);
}

/// The pcap source's capture thread and its rescan thread each panic once
/// (the scrapes' connections on `lo` are the packets and SYNs that reach
/// their fault points): restarted and counted, the capture handle kept.
#[test]
fn pcap_capture_and_rescan_threads_that_panic_once_are_restarted_and_counted() {
    require_root!(
        "loads BPF programs, opens sock_diag and a capture, writes root-owned config files"
    );
    require_debug_build();
    let _serial = serial();
    let agent = start(
        &["--mode", "pcap", "-i", "lo", "--interval", "1"],
        "",
        "panic:pcap_capture:after=4,panic:pcap_rescan:after=8",
    );
    let faulted = ["pcap_capture", "pcap_rescan"];
    let parts = watch_restarts(&agent, &faulted);
    assert_eq!(parts.get("metrics"), Some(&(1, 0)), "{parts:?}");
    let before = agent.snapshot_count();
    thread::sleep(Duration::from_secs(3));
    assert!(agent.snapshot_count() > before, "snapshots stopped");
    assert!(agent.longest_gap() < Duration::from_secs(3));
    // The capture still counts: a scrape's bytes show in a later snapshot's
    // source counters is the pcap tests' business; here the capture thread
    // is up and read() reports no error.
    let log = agent.log();
    assert!(
        !log.iter().any(|l| l.contains("reading the pcap source")),
        "{log:#?}"
    );
    assert_logged_once_each(&log, &faulted);
}

/// The DNS capture beside the eBPF source panics once (the health
/// probe's DNS queries to 127.0.0.1 are the packets that reach its fault
/// point): restarted and counted with its capture handle, snapshots keep
/// coming.
#[test]
fn the_dns_capture_thread_that_panics_once_is_restarted_and_counted() {
    require_root!(
        "loads BPF programs, opens sock_diag and a capture, writes root-owned config files"
    );
    require_debug_build();
    let _serial = serial();
    let agent = start(
        &["--mode", "ebpf", "--health", "--interval", "1"],
        "[health]\ninterval_secs = 0.5\ntimeout_ms = 200\ngateway = \"127.0.0.1\"\n\
         dns_server = \"127.0.0.1\"\n",
        "panic:dns_capture:after=4",
    );
    let parts = watch_restarts(&agent, &["dns_capture"]);
    assert_eq!(parts.get("dns_capture"), Some(&(1, 1)), "{parts:?}");
    assert_eq!(parts.get("metrics"), Some(&(1, 0)), "{parts:?}");
    let before = agent.snapshot_count();
    thread::sleep(Duration::from_secs(3));
    assert!(agent.snapshot_count() > before, "snapshots stopped");
    assert!(agent.longest_gap() < Duration::from_secs(3));
    assert_logged_once_each(&agent.log(), &["dns_capture"]);
}

/// A part that fails on every run is given up on after the restart cap:
/// `/healthz` answers 503 naming it, and the agent exits with status 1 and
/// a message naming it (so systemd or Kubernetes restart it).
#[test]
fn a_part_failing_past_the_restart_cap_fails_healthz_and_exits_non_zero() {
    require_root!(
        "loads BPF programs, opens sock_diag and a capture, writes root-owned config files"
    );
    require_debug_build();
    let _serial = serial();
    let ingest = Ingest::start();
    let agent = start(
        // A long interval: the agent exits at the tick after giving up.
        &["--mode", "proc", "--output", "ingest", "--interval", "10"],
        &format!("[ingest]\nendpoint = \"{}\"\n", ingest.endpoint()),
        "backoff:0.1,panic:ingest:times=always",
    );
    let started = Instant::now();
    let body = loop {
        match agent.get("/healthz") {
            Some((503, body)) if body.starts_with("down:") => break body,
            // Up, or (for an instant) before the tick loop starts.
            Some((200, _)) | Some((503, _)) => {}
            other => panic!("/healthz: {other:?}; log: {:#?}", agent.log()),
        }
        assert!(
            started.elapsed() < PATIENCE,
            "/healthz never said the part is down: {:#?}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        body,
        "down: ingest failed for good (panicked: fault injection: ingest panics)\n"
    );
    let parts = agent.components().expect("/metrics answers");
    assert_eq!(parts.get("ingest"), Some(&(0, 5)), "{parts:?}");
    let (code, log) = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log:#?}");
    assert!(
        log.iter()
            .any(|l| l.contains("6 failures within 600 s: giving up on it")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains(
            "the agent's ingest part failed for good (panicked: fault injection: ingest \
             panics): exiting so that the service manager"
        )),
        "{log:#?}"
    );
}

/// `/healthz` answers 200 while the tick advances, 503 (`stale`) once no
/// tick completed for 10 s (three 1 s intervals, floored at 10 s), and 200
/// again when the tick goes on. `/metrics` answers throughout.
#[test]
fn healthz_fails_while_the_tick_is_stuck_and_recovers_after() {
    require_root!(
        "loads BPF programs, opens sock_diag and a capture, writes root-owned config files"
    );
    require_debug_build();
    let _serial = serial();
    let agent = start(
        &["--mode", "proc", "--interval", "1"],
        "",
        "stall:tick:after=3:for=14",
    );
    let started = Instant::now();
    let mut seen: Vec<u16> = Vec::new();
    let mut stale_body = None;
    while started.elapsed() < PATIENCE {
        let (status, body) = agent.get("/healthz").expect("/healthz answers");
        if seen.is_empty() && status == 503 {
            // Still starting (the source primes before the tick loop):
            // not ticking yet, which is not what this test watches.
            assert!(!body.starts_with("stale"), "stale before any tick: {body}");
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        if status == 503 && stale_body.is_none() {
            stale_body = Some(body);
            assert!(agent.components().is_some(), "/metrics answers while stuck");
        }
        if seen == [200, 503, 200] {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen, [200, 503, 200], "log: {:#?}", agent.log());
    let body = stale_body.unwrap();
    // Past the 10 s limit, and within the 14 s stall (and the tick after it).
    let since: f64 = body
        .strip_prefix("stale: no tick completed for ")
        .and_then(|r| r.strip_suffix(" s (limit 10 s)\n"))
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("{body}"));
    assert!((10.0..16.0).contains(&since), "{body}");
    // Snapshots resume.
    let before = agent.snapshot_count();
    thread::sleep(Duration::from_secs(3));
    assert!(agent.snapshot_count() > before, "snapshots resumed");
}

/// Under systemd (`NOTIFY_SOCKET`): `READY=1` with the watchdog limit
/// (10 s at a 1 s interval) when the tick loop starts, then `WATCHDOG=1`
/// after every tick; none while the tick is stuck, and again after.
#[test]
fn systemd_gets_ready_and_a_keep_alive_per_tick_and_none_while_the_tick_is_stuck() {
    require_root!(
        "loads BPF programs, opens sock_diag and a capture, writes root-owned config files"
    );
    require_debug_build();
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let agent = start_with_env(
        &["--mode", "proc", "--interval", "1"],
        "",
        "stall:tick:after=5:for=8",
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let stall = Duration::from_secs(8);
    let started = Instant::now();
    let mut got: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 512];
    // Until two keep-alives came after a silence as long as the stall.
    let after_stall = |got: &[(Instant, String)]| {
        got.windows(2)
            .position(|w| w[1].0 - w[0].0 >= stall)
            .map(|i| got.len() - i - 2)
    };
    while after_stall(&got).is_none_or(|n| n < 2) {
        assert!(
            started.elapsed() < PATIENCE,
            "no silence of {stall:?} followed by keep-alives: {got:?}; log: {:#?}",
            agent.log()
        );
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts.first().copied(),
        Some("READY=1\nWATCHDOG_USEC=10000000\nSTATUS=collecting"),
        "{texts:?}"
    );
    assert!(
        texts[1..].iter().all(|t| *t == "WATCHDOG=1"),
        "only keep-alives after READY: {texts:?}"
    );
    // Keep-alives came before the stall too (one per tick).
    let before = got
        .windows(2)
        .position(|w| w[1].0 - w[0].0 >= stall)
        .unwrap_or_default();
    assert!(
        before >= 3,
        "READY and keep-alives before the stall: {texts:?}"
    );
    drop(agent);
}
