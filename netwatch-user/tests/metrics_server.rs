//! The `/metrics` server under a local attacker, end to end: the real agent
//! (`--mode proc --output prometheus`, so no BPF is loaded) on a free
//! loopback port, and real TCP clients of this process. Idle connections
//! that each sent half a request line do not starve a scrape (200 held,
//! the scrape answers 200 within 1 s); past the connection cap the
//! connections idle the longest are closed first (and counted in
//! `netwatch_agent_table_dropped_total{table="metrics_connections"}`), also
//! under a flood of 3000; a client that drips its headers is cut at the
//! header timeout; oversized
//! headers get 431. Needs root (the agent's proc source starts with
//! CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::agent;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
/// Give up waiting for the agent after this long (a hang, not a measure).
const PATIENCE: Duration = Duration::from_secs(60);
/// The agent's header timeout (`sink::prometheus::HEADER_READ_TIMEOUT`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent, stopped when dropped (also when a test fails).
struct Agent {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        agent::terminate(&mut self.child);
    }
}

impl Agent {
    /// Start the agent serving /metrics on a free loopback port; returns
    /// once a scrape is answered.
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "").unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut child = Command::new(AGENT)
            .arg("--config")
            .arg(&config)
            .args([
                "--mode",
                "proc",
                "--output",
                "prometheus",
                "--interval",
                "1",
            ])
            .args(["--metrics-listen", "127.0.0.1:0", "--max-connections", "20"])
            .env("RUST_LOG", "info")
            .env_remove("NETWATCH_API_KEY")
            .env_remove("NETWATCH_CONFIG")
            .env_remove("NETWATCH_ENDPOINT")
            .env_remove("NETWATCH_INTERVAL")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting netwatch-agent");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = Arc::clone(&log);
            let err = child.stderr.take().unwrap();
            thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let started = Instant::now();
        let addr = loop {
            let found = log.lock().unwrap().iter().find_map(|l| {
                let rest = l.split("serving Prometheus metrics on http://").nth(1)?;
                rest.trim().trim_end_matches("/metrics").parse().ok()
            });
            if let Some(a) = found {
                break a;
            }
            if started.elapsed() > PATIENCE || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                panic!(
                    "the agent did not serve /metrics; log: {:#?}",
                    log.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        let agent = Self {
            child,
            addr,
            log,
            _dir: dir,
        };
        // The server answers once the first snapshot was taken.
        let (status, _, _) = agent.get("/metrics", PATIENCE);
        assert_eq!(status, Some(200), "log: {:#?}", agent.log());
        agent
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The connection cap the agent logged (`None`: it logged none).
    fn cap(&self) -> Option<usize> {
        self.log().iter().find_map(|l| {
            let rest = l.split("/metrics: at most ").nth(1)?;
            rest.split(' ').next()?.parse().ok()
        })
    }

    /// `GET path` on a new connection: (status, body, time to the answer),
    /// status `None` when the connection was closed without one.
    fn get(&self, path: &str, within: Duration) -> (Option<u16>, String, Duration) {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(self.addr).expect("connecting to /metrics");
        s.set_read_timeout(Some(within)).unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return (None, String::new(), t0.elapsed());
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok());
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body, took)
    }

    /// A connection that sent half a request line and waits.
    fn idle(&self) -> TcpStream {
        let mut s = TcpStream::connect(self.addr).expect("connecting to /metrics");
        s.write_all(b"GET /metr")
            .expect("sending half a request line");
        s
    }
}

/// Whether the server closed `s` (EOF or reset), waiting at most `wait`
/// for it; data before the close is skipped.
fn closed(s: &mut TcpStream, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Which of `conns` the server has closed, by index: a close already made
/// is seen at once (a non-blocking read), so this takes no time per
/// connection.
fn closed_ones(conns: &mut [TcpStream]) -> Vec<usize> {
    let mut buf = [0u8; 64];
    let mut out = Vec::new();
    for (i, s) in conns.iter_mut().enumerate() {
        s.set_nonblocking(true).unwrap();
        match s.read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            // EOF, an answer (none is due), or a reset.
            _ => out.push(i),
        }
        s.set_nonblocking(false).unwrap();
    }
    out
}

/// The value of `series` (name and labels as printed) on a page.
fn sample(page: &str, series: &str) -> Option<u64> {
    page.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().ok())?
    })
}

/// Raise this process's open-files limit (the agent inherits it) toward
/// `n` (the hard limit too where the kernel lets us: root with
/// CAP_SYS_RESOURCE); the soft limit now.
fn enough_files(n: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            let want = libc::rlimit {
                rlim_cur: n,
                rlim_max: lim.rlim_max.max(n),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) != 0 {
                lim.rlim_cur = n.min(lim.rlim_max);
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
            }
        }
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
    }
    lim.rlim_cur
}

/// The agent's connection cap for an open-files limit of `files`
/// (`sink::prometheus::connection_cap`): half of it, 16 to 1024.
fn cap_for(files: u64) -> usize {
    ((files / 2) as usize).clamp(16, 1024)
}

#[test]
fn a_scrape_is_answered_within_1s_while_200_idle_connections_are_held() {
    require_root!("the agent's proc source needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH");
    let agent = Agent::start();
    let mut held: Vec<TcpStream> = (0..200).map(|_| agent.idle()).collect();
    // Let the agent accept them all.
    thread::sleep(Duration::from_millis(300));
    let (status, body, took) = agent.get("/metrics", Duration::from_secs(5));
    assert_eq!(status, Some(200), "log: {:#?}", agent.log());
    assert!(body.contains("netwatch_agent_snapshots_total"), "{body}");
    assert!(took < Duration::from_secs(1), "the scrape took {took:?}");
    // None of the idle ones was closed to make room: under the cap.
    assert_eq!(closed_ones(&mut held), Vec::<usize>::new());
    assert_eq!(
        sample(
            &body,
            "netwatch_agent_table_dropped_total{table=\"metrics_connections\"}"
        ),
        None
    );
}

#[test]
fn past_the_cap_the_connections_idle_longest_are_closed_first() {
    require_root!("the agent's proc source needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH");
    let files = enough_files(4096);
    let agent = Agent::start();
    // The cap with 4096 open files, 1024 (fewer where the hard limit is
    // lower); checked last: the eviction is the point.
    let cap = cap_for(files);
    let logged = agent.cap();
    // The three oldest, accepted in this order (the agent accepts in
    // microseconds; 50 ms apart leaves no doubt), then the rest at once.
    let mut held = Vec::with_capacity(cap + 1);
    for _ in 0..3 {
        held.push(agent.idle());
        thread::sleep(Duration::from_millis(50));
    }
    while held.len() < cap {
        held.push(agent.idle());
    }
    thread::sleep(Duration::from_millis(300));
    // All `cap` held (the readiness scrape closed its own).
    assert_eq!(closed_ones(&mut held), Vec::<usize>::new());

    // A scrape gets in: the oldest idle one makes room.
    let (status, _, took) = agent.get("/metrics", Duration::from_secs(5));
    assert_eq!(status, Some(200), "log: {:#?}", agent.log());
    assert!(took < Duration::from_secs(1), "the scrape took {took:?}");
    assert!(closed(&mut held[0], Duration::from_secs(1)));
    assert_eq!(closed_ones(&mut held[1..]), Vec::<usize>::new());

    // Full again with one more idle one; the next scrape closes the next oldest.
    held.push(agent.idle());
    thread::sleep(Duration::from_millis(100));
    let (status, page, _) = agent.get("/metrics", Duration::from_secs(5));
    assert_eq!(status, Some(200));
    assert!(closed(&mut held[1], Duration::from_secs(1)));
    assert_eq!(closed_ones(&mut held[2..]), Vec::<usize>::new());
    assert_eq!(
        sample(
            &page,
            "netwatch_agent_table_dropped_total{table=\"metrics_connections\"}"
        ),
        Some(2),
        "{page}"
    );
    assert_eq!(logged, Some(cap));
}

#[test]
fn a_flood_of_connections_past_the_cap_still_lets_a_scrape_in() {
    require_root!("the agent's proc source needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH");
    let files = enough_files(8192);
    let agent = Agent::start();
    let cap = cap_for(files);
    assert_eq!(agent.cap(), Some(cap));
    // Each connect returns once the connection is in the accept queue, so
    // the agent accepts them (and the scrape after them) in this order.
    // 3000, or what this process's files allow.
    let flood = 3000.min(files as usize - 64);
    let mut held: Vec<TcpStream> = (0..flood).map(|_| agent.idle()).collect();
    let (status, page, took) = agent.get("/metrics", Duration::from_secs(5));
    assert_eq!(status, Some(200), "log: {:#?}", agent.log());
    assert!(took < Duration::from_secs(1), "the scrape took {took:?}");
    // Room for the scrape: the oldest of the flood, and only those, closed.
    let evicted = flood - cap + 1;
    assert_eq!(
        sample(
            &page,
            "netwatch_agent_table_dropped_total{table=\"metrics_connections\"}"
        ),
        Some(evicted as u64)
    );
    assert_eq!(
        closed_ones(&mut held),
        (0..evicted).collect::<Vec<_>>(),
        "the {evicted} oldest closed, the newest {} held",
        flood - evicted
    );
    assert!(agent
        .log()
        .iter()
        .any(|l| l.contains(&format!("metrics_connections: at its cap ({cap}), dropped"))));
}

#[test]
fn a_client_dripping_its_headers_is_cut_at_the_header_timeout() {
    require_root!("the agent's proc source needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH");
    let agent = Agent::start();
    let mut s = TcpStream::connect(agent.addr).unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // One header byte every 250 ms: never idle, never done.
    let cut = loop {
        if t0.elapsed() > HEADER_TIMEOUT * 2 {
            break None;
        }
        if s.write_all(b"a").is_err() {
            break Some(t0.elapsed());
        }
        match s.read(&mut buf) {
            Ok(0) => break Some(t0.elapsed()),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break Some(t0.elapsed()),
        }
    };
    let cut = cut.unwrap_or_else(|| panic!("still open after {:?}", HEADER_TIMEOUT * 2));
    assert!(
        cut >= HEADER_TIMEOUT - Duration::from_millis(300)
            && cut <= HEADER_TIMEOUT + Duration::from_millis(1500),
        "cut after {cut:?}, not at the {HEADER_TIMEOUT:?} header timeout"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408 "),
        "{answer}"
    );
}

#[test]
fn oversized_request_headers_are_refused_with_431() {
    require_root!("the agent's proc source needs CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH");
    let agent = Agent::start();
    let exchange = |filler: usize| {
        let mut s = TcpStream::connect(agent.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(filler)
        );
        // The server may close before taking it all.
        let _ = s.write_all(req.as_bytes());
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).into_owned();
        text.lines().next().unwrap_or_default().to_string()
    };
    // Within 8 KiB: served.
    assert_eq!(exchange(7 * 1024), "HTTP/1.1 200 OK");
    // 16 KiB and 1 MiB of header: refused.
    assert_eq!(
        exchange(16 * 1024),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(
        exchange(1024 * 1024),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}
