//! NetWatch Cloud delivery end to end: the real `netwatch-agent` binary
//! (`--mode proc`, so no BPF is loaded) against a real HTTP server (hyper)
//! that this test runs on 127.0.0.1. The agent writes every snapshot to the
//! spool before printing it (`--output ingest --output json`), so its stdout
//! is the ground truth: every printed snapshot, identified by timestamp,
//! must reach the server exactly once and in order. Needs root (the config
//! and key files must be owned by root, as the agent demands).
#![cfg(target_os = "linux")]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use netwatch_common::wire::{IngestEnvelope, Snapshot};

#[macro_use]
mod common;

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
const KEY: &str = "nwk_test_5e3f9a1c7b2d4e6f8a0b";

// ---------------------------------------------------------------- server

/// What the server answers: status and body for the n-th request (0-based).
type Script = Box<dyn FnMut(usize, &IngestEnvelope) -> (u16, String) + Send>;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Received {
    auth: Option<String>,
    path: String,
    status: u16,
    env: IngestEnvelope,
    /// Timestamps the answer accepted (200: all; 207: the 2xx verdicts).
    accepted: Vec<String>,
}

struct ServerState {
    script: Script,
    requests: Vec<Received>,
    bad_bodies: usize,
    /// Take requests and never answer them.
    hang: bool,
}

struct Server {
    addr: SocketAddr,
    rt: tokio::runtime::Runtime,
    state: Arc<Mutex<ServerState>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Serve HTTPS with this (`None`: plain HTTP).
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// While down: the port, bound but not listening (connections are
    /// refused), so no other test's server can take it meanwhile and
    /// receive this test's agent's snapshots.
    held: Option<tokio::net::TcpSocket>,
}

fn ts(s: &Snapshot) -> String {
    s.timestamp.to_rfc3339()
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<ServerState>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if state.lock().unwrap().hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let path = req.uri().path().to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let env: IngestEnvelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(_) => {
            state.lock().unwrap().bad_bodies += 1;
            return Ok(Response::builder()
                .status(400)
                .body(Full::new(Bytes::new()))
                .unwrap());
        }
    };
    let mut st = state.lock().unwrap();
    let n = st.requests.len();
    let (status, text) = (st.script)(n, &env);
    let accepted = match status {
        200 => env.request.snapshots.iter().map(ts).collect(),
        207 => {
            let r: netwatch_common::wire::IngestResponse = serde_json::from_str(&text).unwrap();
            r.results
                .iter()
                .filter(|v| (200..300).contains(&v.status))
                .map(|v| ts(&env.request.snapshots[v.index]))
                .collect()
        }
        _ => Vec::new(),
    };
    st.requests.push(Received {
        auth,
        path,
        status,
        env,
        accepted,
    });
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap())
}

impl Server {
    /// A server that answers 200 to everything, listening.
    fn start() -> Self {
        Self::start_with(None)
    }

    /// The same over HTTPS with `tls`'s certificate.
    fn start_tls(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Self {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(tls)))
    }

    fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ServerState {
            script: Box::new(|_, _| (200, String::new())),
            requests: Vec::new(),
            bad_bodies: 0,
            hang: false,
        }));
        let mut s = Self {
            addr,
            rt,
            state,
            task: None,
            tls,
            held: None,
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let state = Arc::clone(&self.state);
        let tls = self.tls.clone();
        self.task = Some(self.rt.spawn(async move {
            // Dropping this set (when the task is aborted) closes every connection.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let state = Arc::clone(&state);
                let tls = tls.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| handle(req, Arc::clone(&state)));
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                        Some(tls) => {
                            // A client that refuses the certificate ends here.
                            let Ok(stream) = tls.accept(stream).await else {
                                return;
                            };
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        }
                    }
                });
            }
        }));
    }

    /// Stop listening and close every connection: the endpoint is down
    /// (connections are refused). The port stays this server's.
    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.rt.block_on(t);
        }
        let _guard = self.rt.enter();
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.set_reuseaddr(true).unwrap();
        held.bind(self.addr).unwrap();
        self.held = Some(held);
    }

    /// Listen again on the same port.
    fn up(&mut self) {
        let held = self.held.take().expect("up() follows down()");
        let listener = {
            let _guard = self.rt.enter();
            held.listen(1024).unwrap()
        };
        self.serve(listener);
    }

    fn script(&self, f: impl FnMut(usize, &IngestEnvelope) -> (u16, String) + Send + 'static) {
        self.state.lock().unwrap().script = Box::new(f);
    }

    fn requests(&self) -> Vec<Received> {
        self.state.lock().unwrap().requests.clone()
    }

    fn accepted(&self) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|r| r.accepted.clone())
            .collect()
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

// ---------------------------------------------------------------- agent

/// A test's files: config, key, spool, host id.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(extra_ingest: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "mode = \"proc\"\n[ingest]\nretry_initial_secs = 0.1\nretry_max_secs = 1.0\n\
             request_timeout_secs = 5\nflush_timeout_secs = 5\n{extra_ingest}\n"
        );
        let c = dir.path().join("config.toml");
        std::fs::write(&c, config).unwrap();
        std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o600)).unwrap();
        let k = dir.path().join("api-key");
        std::fs::write(&k, format!("{KEY}\n")).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spool(&self) -> PathBuf {
        self.path("spool")
    }

    /// Spool record files, oldest first.
    fn records(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.spool())
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "nws"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn args(&self, server: &Server) -> Vec<String> {
        self.args_for(&server.endpoint())
    }

    fn args_for(&self, endpoint: &str) -> Vec<String> {
        let p = |n: &str| self.path(n).to_string_lossy().into_owned();
        vec![
            "--config".into(),
            p("config.toml"),
            "--output".into(),
            "ingest".into(),
            "--output".into(),
            "json".into(),
            "--interval".into(),
            "0.2".into(),
            "--endpoint".into(),
            endpoint.to_string(),
            "--api-key-file".into(),
            p("api-key"),
            "--spool-dir".into(),
            p("spool"),
            "--host-id-file".into(),
            p("host-id"),
            // Snapshots of a bounded size whatever else this host runs (a
            // busy host's thousands of sockets would make each one larger
            // than these tests' batch and spool bounds assume).
            "--max-connections".into(),
            "20".into(),
        ]
    }
}

struct Agent {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

fn collect(
    r: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<Vec<String>>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    })
}

impl Agent {
    /// Start the agent with `args` and, besides `RUST_LOG`, only the
    /// `NETWATCH_*` variables in `env`.
    fn start(args: &[String], rust_log: &str, env: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(AGENT);
        cmd.args(args);
        Self::spawn(cmd, rust_log, env)
    }

    /// Start `cmd` (the agent, or something that execs it as its last
    /// step) as [`Agent::start`] does.
    fn spawn(mut cmd: Command, rust_log: &str, env: &[(&str, String)]) -> Self {
        cmd.env("RUST_LOG", rust_log)
            .env_remove("NETWATCH_API_KEY")
            .env_remove("NETWATCH_CONFIG")
            .env_remove("NETWATCH_ENDPOINT")
            .env_remove("NETWATCH_INTERVAL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().expect("starting netwatch-agent");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&stdout)),
            collect(child.stderr.take().unwrap(), Arc::clone(&stderr)),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Timestamps of the snapshots printed so far.
    fn printed(&self) -> Vec<String> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| {
                let s: Snapshot = serde_json::from_str(l).unwrap();
                ts(&s)
            })
            .collect()
    }

    fn log(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    /// Stop with `sig`; wait for exit and for all output. Returns
    /// (exit code, printed timestamps, log).
    fn stop(mut self, sig: i32) -> (Option<i32>, Vec<String>, Vec<String>) {
        self.signal(sig);
        let status = self.child.wait().unwrap();
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let printed = self.printed();
        let log = self.log();
        assert_no_key(&log);
        (status.code(), printed, log)
    }

    fn wait_for(&self, what: &str, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "gave up waiting for {what}; agent log: {:#?}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn assert_no_key(log: &[String]) {
    for line in log {
        assert!(
            !line.contains(KEY),
            "the API key leaked into a log line: {line}"
        );
        assert!(
            !line.contains("5e3f9a1c"),
            "part of the API key leaked: {line}"
        );
    }
}

fn count(log: &[String], needle: &str) -> usize {
    log.iter().filter(|l| l.contains(needle)).count()
}

/// Run an agent with the endpoint answering 503 until it has spooled at
/// least `n` snapshots; stop it with SIGTERM. Returns the printed timestamps.
fn prefill(files: &Files, server: &Server, n: usize) -> Vec<String> {
    server.script(|_, _| (503, "maintenance".into()));
    let a = Agent::start(&files.args(server), "info", &[]);
    a.wait_for("snapshots to spool", |a| a.printed().len() >= n);
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    assert_eq!(
        files.records().len(),
        printed.len(),
        "every snapshot spooled"
    );
    assert_eq!(server.accepted(), Vec::<String>::new());
    assert_eq!(count(&log, "(HTTP 503)"), 1, "503 said once: {log:#?}");
    // The next run's requests are numbered from 0 again.
    server.state.lock().unwrap().requests.clear();
    printed
}

// ---------------------------------------------------------------- tests

#[test]
fn normal_delivery_every_snapshot_once_in_order_with_auth_envelope_and_host_id() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    // trace: even ureq's and rustls's own logging must not show the key.
    let a = Agent::start(&files.args(&server), "trace", &[]);
    a.wait_for("5 accepted snapshots", |_| server.accepted().len() >= 5);
    let (code, printed, _log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert_eq!(
        server.accepted(),
        printed,
        "exactly the printed snapshots, in order"
    );
    let host_id = std::fs::read_to_string(files.path("host-id")).unwrap();
    for r in server.requests() {
        assert_eq!(r.path, "/api/v1/ingest");
        assert_eq!(r.auth.as_deref(), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(r.env.schema_version, 1);
        assert_eq!(r.env.request.host.host_id.to_string(), host_id.trim());
        assert!(r.env.agent_health.collectors_ok);
        assert_eq!(r.env.agent_health.dropped_count, 0);
        assert!(!r.env.request.snapshots.is_empty() && r.env.request.snapshots.len() <= 100);
    }
    assert_eq!(server.state.lock().unwrap().bad_bodies, 0);
    assert!(files.records().is_empty(), "nothing left in the spool");
}

#[test]
fn key_from_the_environment_is_used_and_never_logged() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    // The environment overrides the file: this endpoint and interval lose.
    let cfg = std::fs::read_to_string(files.path("config.toml")).unwrap();
    let cfg = format!("interval_secs = 30\n{cfg}endpoint = \"http://127.0.0.1:9\"\n");
    write_private(&files.path("config.toml"), &cfg, 0o600);
    let mut args = files.args(&server);
    for flag in ["--api-key-file", "--endpoint", "--config", "--interval"] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args.drain(at..at + 2);
    }
    args.push("--once".into());
    let env = [
        ("NETWATCH_API_KEY", KEY.to_string()),
        ("NETWATCH_ENDPOINT", server.endpoint()),
        ("NETWATCH_INTERVAL", "0.3".to_string()),
        (
            "NETWATCH_CONFIG",
            files.path("config.toml").to_string_lossy().into_owned(),
        ),
    ];
    let mut a = Agent::start(&args, "debug", &env);
    let status = a.child.wait().unwrap();
    for r in a.readers.drain(..) {
        r.join().unwrap();
    }
    assert_no_key(&a.log());
    assert!(status.success(), "{:#?}", a.log());
    assert_eq!(server.accepted(), a.printed());
    assert!(
        a.log()
            .iter()
            .any(|l| l.contains("every 0.3 s") && l.contains(&server.endpoint())),
        "{:#?}",
        a.log()
    );
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].auth.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[test]
fn endpoint_down_20s_then_back_every_snapshot_arrives_once_in_order() {
    require_root!("writes root-owned config and key files");
    let mut server = Server::start();
    let files = Files::new("batch_max_snapshots = 10");
    server.down();
    let a = Agent::start(&files.args(&server), "info", &[]);
    a.wait_for("a first snapshot", |a| !a.printed().is_empty());
    // Down for 20 s at least, and until more than one batch has waited: on a
    // loaded machine ticks come late, so the count is waited for, not assumed.
    let down_since = Instant::now();
    a.wait_for("20 s down and more than a batch spooled", |a| {
        down_since.elapsed() >= Duration::from_secs(20) && a.printed().len() > 10
    });
    let spooled = a.printed().len();
    assert!(
        files.records().len() >= spooled,
        "all printed snapshots are on disk"
    );
    assert!(spooled > 10, "more than a batch waited: {spooled}");
    server.up();
    a.wait_for("the backlog and 3 more", |_| {
        server.accepted().len() >= spooled + 3
    });
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert_eq!(server.accepted(), printed, "exactly once, in order");
    let sizes: Vec<usize> = server
        .requests()
        .iter()
        .map(|r| r.env.request.snapshots.len())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
    assert_eq!(sizes[0], 10, "the backlog goes in full batches: {sizes:?}");
    assert_eq!(
        count(&log, "snapshots stay in the spool, retrying"),
        1,
        "{log:#?}"
    );
    assert!(files.records().is_empty());
}

#[test]
fn sigkill_while_down_then_restart_delivers_every_spooled_snapshot() {
    require_root!("writes root-owned config and key files");
    let mut server = Server::start();
    let files = Files::new("");
    server.down();
    let a = Agent::start(&files.args(&server), "info", &[]);
    a.wait_for("10 snapshots", |a| a.printed().len() >= 10);
    let (code, first, _) = a.stop(libc::SIGKILL);
    assert_eq!(code, None, "killed");
    server.up();
    let b = Agent::start(&files.args(&server), "info", &[]);
    b.wait_for("the first run's snapshots and 3 more", |_| {
        server.accepted().len() >= first.len() + 3
    });
    let (code, second, _) = b.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let got = server.accepted();
    // A SIGKILL between spooling a snapshot and printing it leaves one
    // spooled snapshot that stdout never showed: it must arrive too, in place.
    let extra = got.len() - first.len() - second.len();
    assert!(extra <= 1, "{extra} unexpected snapshots");
    assert_eq!(&got[..first.len()], &first[..]);
    assert_eq!(&got[first.len() + extra..], &second[..]);
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, got, "in order, none twice");
    let ids: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.env.request.host.host_id)
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one persisted host id"
    );
    assert!(files.records().is_empty());
}

#[test]
fn a_corrupt_spool_record_is_skipped_and_counted() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    let first = prefill(&files, &server, 5);
    let victim = &files.records()[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(victim, bytes).unwrap();

    server.script(|_, _| (200, String::new()));
    let b = Agent::start(&files.args(&server), "info", &[]);
    b.wait_for("the good spooled snapshots and 3 more", |_| {
        server.accepted().len() >= first.len() - 1 + 3
    });
    let (code, second, log) = b.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let mut expected: Vec<String> = first.clone();
    expected.remove(1);
    expected.extend(second);
    assert_eq!(server.accepted(), expected);
    assert_eq!(count(&log, "skipping corrupt record"), 1, "{log:#?}");
    let reqs = server.requests();
    let first_ok = reqs.iter().find(|r| r.status == 200).unwrap();
    assert_eq!(
        first_ok.env.agent_health.dropped_count, 1,
        "the corrupt record is counted"
    );
    assert!(reqs.iter().all(|r| r.env.agent_health.dropped_count == 1));
}

#[test]
fn partial_207_accepted_are_not_resent_rejected_are_logged_and_not_retried() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    let first = prefill(&files, &server, 4);
    server.script(|n, env| {
        if n > 0 {
            return (200, String::new());
        }
        let results: Vec<_> = (0..env.request.snapshots.len())
            .map(|i| {
                let (status, message) = if i == 1 {
                    (422, "bad snapshot")
                } else {
                    (200, "ok")
                };
                serde_json::json!({"index": i, "status": status, "message": message})
            })
            .collect();
        let body = serde_json::json!({
            "accepted": env.request.snapshots.len() - 1,
            "rejected": 1,
            "host_id": env.request.host.host_id,
            "results": results,
        });
        (207, body.to_string())
    });
    let b = Agent::start(&files.args(&server), "info", &[]);
    b.wait_for("3 more after the 207", |_| server.requests().len() >= 4);
    let (code, second, log) = b.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let rejected = first[1].clone();
    let mut expected = first.clone();
    expected.remove(1);
    expected.extend(second);
    assert_eq!(server.accepted(), expected, "accepted ones once, in order");
    let sent: Vec<String> = server
        .requests()
        .iter()
        .flat_map(|r| r.env.request.snapshots.iter().map(ts).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        sent.iter().filter(|t| **t == rejected).count(),
        1,
        "the rejected snapshot is not resent"
    );
    assert_eq!(
        count(&log, "rejected snapshot 1 of the batch"),
        1,
        "{log:#?}"
    );
    assert!(files.records().is_empty());
}

/// A hostile endpoint (issue 16): a 503 whose ~1 MB body is terminal
/// escapes, a forged log record and a bidi override, then a 207 whose
/// verdicts carry the same (one of ~600 KB) plus one for no snapshot. The
/// agent's log holds no raw control character and no forged record; each
/// server text is shown escaped (`netwatch::text::visible`) and capped at
/// 200 characters of the original.
#[test]
fn hostile_server_texts_reach_the_log_escaped_and_capped() {
    use netwatch::text::visible;
    require_root!("writes root-owned config and key files");
    const EVIL: &str =
        "\x1b[2J\x1b[31mroot\x07\r\x08\n[2026-12-07T00:00:00Z ERROR netwatch] forged\u{202e}txt ";
    let body = EVIL.repeat((1 << 20) / EVIL.len());
    let message = EVIL.repeat(600_000 / EVIL.len());
    let server = Server::start();
    let files = Files::new("");
    let (body2, message2) = (body.clone(), message.clone());
    server.script(move |n, env| match n {
        0 => (503, body2.clone()),
        1 => {
            let mut results: Vec<_> = (0..env.request.snapshots.len())
                .map(|i| {
                    let m = if i == 0 { message2.as_str() } else { EVIL };
                    serde_json::json!({"index": i, "status": 422, "message": m})
                })
                .collect();
            results.push(serde_json::json!({"index": 9999, "status": 422, "message": EVIL}));
            let r = serde_json::json!({
                "accepted": 0,
                "rejected": env.request.snapshots.len(),
                "host_id": env.request.host.host_id,
                "results": results,
            });
            (207, r.to_string())
        }
        _ => (200, String::new()),
    });
    let a = Agent::start(&files.args(&server), "info", &[]);
    a.wait_for("a 200 after the 503 and the 207", |_| {
        server.requests().len() >= 3
    });
    let (code, _, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    for line in &log {
        assert!(
            !line.chars().any(char::is_control),
            "a raw control character in the log: {line:?}"
        );
        assert!(!line.contains("\u{202e}"), "a raw bidi override: {line:?}");
        assert!(
            !line.trim_start().starts_with("[2026-12-07T00:00:00Z"),
            "a forged log record: {line:?}"
        );
        assert!(line.chars().count() < 3000, "an uncapped line: {line:?}");
    }
    // The 503: said once, its body escaped and capped.
    let shown_body = visible(body.trim(), 200);
    assert_eq!(
        count(&log, &format!("answered 503: {shown_body} (HTTP 503)")),
        1,
        "{log:#?}"
    );
    // The 207: one line per rejected snapshot, each message escaped and
    // capped; the verdict for no snapshot said once.
    let batch = server.requests()[1].env.request.snapshots.len();
    assert_eq!(
        count(&log, "the cloud rejected snapshot "),
        batch,
        "{log:#?}"
    );
    assert_eq!(
        count(
            &log,
            &format!(
                "the cloud rejected snapshot 0 of the batch (taken at {}): 422 {}; it is not resent",
                ts(&server.requests()[1].env.request.snapshots[0]),
                visible(&message, 200)
            )
        ),
        1,
        "{log:#?}"
    );
    assert_eq!(
        count(
            &log,
            &format!("): 422 {}; it is not resent", visible(EVIL, 200))
        ),
        batch - 1,
        "{log:#?}"
    );
    assert_eq!(
        count(
            &log,
            &format!("207 named 1 verdicts for no snapshot of the batch of {batch} (the first for index 9999)")
        ),
        1,
        "{log:#?}"
    );
}

#[test]
fn past_its_byte_bound_the_spool_drops_the_oldest_and_counts_them() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    server.script(|_, _| (503, String::new()));
    let mut args = files.args(&server);
    // The smallest bound allowed: one or two snapshots of this host.
    args.extend(["--spool-max-bytes".into(), "65536".into()]);
    let a = Agent::start(&args, "info", &[]);
    a.wait_for("3 snapshots dropped", |a| {
        count(&a.log(), "dropped the oldest") >= 3
    });
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    let dropped = count(&log, "dropped the oldest");
    let kept = files.records();
    assert_eq!(
        kept.len() + dropped,
        printed.len(),
        "each snapshot kept or counted"
    );
    // The last envelope (the SIGTERM flush, after the last snapshot) says so.
    let reqs = server.requests();
    let last = reqs.last().unwrap();
    assert_eq!(last.env.agent_health.dropped_count, dropped as u64);
    assert_eq!(last.env.agent_health.queue_depth, kept.len() as u64);
    // What is kept is the newest, and it is delivered once the cloud is back.
    server.state.lock().unwrap().requests.clear();
    server.script(|_, _| (200, String::new()));
    let mut args = files.args(&server);
    args.push("--once".into());
    let mut b = Agent::start(&args, "info", &[]);
    assert!(b.child.wait().unwrap().success());
    for r in b.readers.drain(..) {
        r.join().unwrap();
    }
    let mut expected: Vec<String> = printed[printed.len() - kept.len()..].to_vec();
    expected.extend(b.printed());
    assert_eq!(server.accepted(), expected);
}

#[test]
fn payment_402_stops_sending_once_and_keeps_collecting() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    server.script(|_, _| (402, String::new()));
    let a = Agent::start(&files.args(&server), "info", &[]);
    a.wait_for("the first request", |_| !server.requests().is_empty());
    let at_402 = a.printed().len();
    a.wait_for("10 more snapshots", |a| a.printed().len() >= at_402 + 10);
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert_eq!(server.requests().len(), 1, "no request after the 402");
    assert_eq!(count(&log, "HTTP 402"), 1, "said once: {log:#?}");
    assert_eq!(
        files.records().len(),
        printed.len(),
        "every snapshot still spooled"
    );
}

/// 402 for the first three requests, then 200: with a short recheck
/// interval the agent sends one batch per recheck while stopped, resumes
/// when one is accepted, and every snapshot arrives exactly once, in order.
#[test]
fn payment_402_is_rechecked_and_delivery_resumes_once_accepted() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("payment_recheck_secs = 0.5");
    server.script(|n, _| {
        if n < 3 {
            (402, String::new())
        } else {
            (200, String::new())
        }
    });
    let a = Agent::start(&files.args(&server), "info", &[]);
    a.wait_for("delivery to resume", |_| {
        server.requests().iter().any(|r| r.status == 200)
    });
    let resumed = a.printed().len();
    a.wait_for("3 snapshots more than when it resumed", |_| {
        server.accepted().len() >= resumed + 3
    });
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    let reqs = server.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).take(4).collect::<Vec<_>>(),
        [402, 402, 402, 200],
        "one batch per recheck while stopped"
    );
    assert!(reqs[4..].iter().all(|r| r.status == 200));
    assert_eq!(
        count(&log, "HTTP 402 Payment Required"),
        1,
        "said once: {log:#?}"
    );
    assert_eq!(
        count(&log, "after HTTP 402: delivery resumed"),
        1,
        "{log:#?}"
    );
    assert_eq!(
        server.accepted(),
        printed,
        "every snapshot once, in order, across the stop"
    );
    assert!(files.records().is_empty(), "nothing left in the spool");
}

#[test]
fn too_large_413_splits_the_batch_until_it_fits() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    let first = prefill(&files, &server, 8);
    server.script(|_, env| {
        if env.request.snapshots.len() > 2 {
            (413, String::new())
        } else {
            (200, String::new())
        }
    });
    let b = Agent::start(&files.args(&server), "info", &[]);
    b.wait_for("the backlog and 3 more", |_| {
        server.accepted().len() >= first.len() + 3
    });
    let (code, second, _) = b.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    let mut expected = first.clone();
    expected.extend(second);
    assert_eq!(
        server.accepted(),
        expected,
        "split batches arrive once, in order"
    );
    let reqs = server.requests();
    assert!(reqs[0].status == 413 && reqs[0].env.request.snapshots.len() >= 8);
    assert!(reqs
        .iter()
        .filter(|r| r.status == 200)
        .all(|r| r.env.request.snapshots.len() <= 2));
    assert!(reqs
        .iter()
        .any(|r| r.status == 200 && r.env.request.snapshots.len() == 2));
}

#[test]
fn unauthorized_401_is_said_once_spooling_continues_and_delivery_resumes() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    let allow = Arc::new(Mutex::new(false));
    let gate = Arc::clone(&allow);
    server.script(move |_, _| {
        if *gate.lock().unwrap() {
            (200, String::new())
        } else {
            (401, String::new())
        }
    });
    let a = Agent::start(&files.args(&server), "info", &[]);
    a.wait_for("three refused requests", |_| server.requests().len() >= 3);
    assert_eq!(
        count(&a.log(), "refused the API key (HTTP 401)"),
        1,
        "{:#?}",
        a.log()
    );
    assert!(files.records().len() >= a.printed().len().saturating_sub(1));
    let before = a.printed().len();
    *allow.lock().unwrap() = true;
    a.wait_for("the backlog and 3 more", |_| {
        server.accepted().len() >= before + 3
    });
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0));
    assert_eq!(server.accepted(), printed);
    assert_eq!(count(&log, "HTTP 401"), 1, "{log:#?}");
}

#[test]
fn sigterm_exits_within_the_flush_timeout_even_with_a_request_hanging() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    // Requests may take 60 s; the flush may take 2 s.
    let files = Files::new("request_timeout_secs = 60\nflush_timeout_secs = 2");
    let cfg = std::fs::read_to_string(files.path("config.toml")).unwrap();
    let cfg = cfg
        .replace("request_timeout_secs = 5\n", "")
        .replace("flush_timeout_secs = 5\n", "");
    write_private(&files.path("config.toml"), &cfg, 0o600);
    server.state.lock().unwrap().hang = true;
    let a = Agent::start(&files.args(&server), "info", &[]);
    a.wait_for("5 snapshots", |a| a.printed().len() >= 5);
    let t = Instant::now();
    let (code, printed, log) = a.stop(libc::SIGTERM);
    let took = t.elapsed();
    println!("SIGTERM to exit with a hanging request: {took:?}");
    assert_eq!(code, Some(0), "{log:#?}");
    assert_eq!(
        count(&log, "still in flight after the 2 s flush timeout"),
        1,
        "{log:#?}"
    );
    assert_eq!(
        files.records().len(),
        printed.len(),
        "nothing unanswered was removed"
    );
    assert!(server.accepted().is_empty());
}

/// A real TLS server (`openssl s_server`) on 127.0.0.1 with a self-signed
/// certificate: rustls must refuse it (no trusted issuer) and nothing may be
/// sent; the snapshot stays spooled.
#[test]
fn https_verifies_certificates_and_refuses_a_self_signed_endpoint() {
    require_root!("writes root-owned config and key files");
    let files = Files::new("");
    let (key, cert) = (files.path("tls.key"), files.path("tls.crt"));
    let ok = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("running openssl req");
    assert!(ok.success(), "openssl req failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut tls = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-key")
        .arg(&key)
        .arg("-cert")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting openssl s_server");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "s_server did not listen"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The server answers every request with 200 and never sees a request here.
    let server = Server::start();
    let mut args = files.args(&server);
    let at = args.iter().position(|a| a == "--endpoint").unwrap();
    args[at + 1] = format!("https://127.0.0.1:{port}");
    args.push("--once".into());
    let mut a = Agent::start(&args, "info", &[]);
    let status = a.child.wait().unwrap();
    for r in a.readers.drain(..) {
        r.join().unwrap();
    }
    let _ = tls.kill();
    let _ = tls.wait();
    let log = a.log();
    assert_no_key(&log);
    assert!(status.success(), "{log:#?}");
    for l in log.iter().filter(|l| l.contains("certificate")) {
        println!("{l}");
    }
    assert!(
        log.iter()
            .any(|l| l.contains("invalid peer certificate: UnknownIssuer")
                && l.contains(&format!("127.0.0.1:{port}"))),
        "a certificate error is reported: {log:#?}"
    );
    assert_eq!(
        files.records().len(),
        a.printed().len(),
        "the snapshot stays spooled"
    );
    assert_eq!(a.printed().len(), 1);
}

/// A CA made now, and a server certificate for 127.0.0.1 and localhost
/// that it signed.
struct Pki {
    ca_pem: String,
    server: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl Pki {
    fn new(name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        use tokio_rustls::rustls;
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("netwatch test CA {name}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "netwatch test endpoint");
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        Self {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

/// HTTPS to 127.0.0.1 with a certificate from a private CA made by the
/// test: with another CA configured the agent refuses the endpoint (the log
/// says so, once; nothing is sent or counted delivered; every snapshot stays
/// spooled); restarted with the right CA it delivers the backlog and what
/// follows, every snapshot once, in order, certificates verified.
#[test]
fn https_with_a_private_ca_delivers_verified_and_another_ca_is_refused() {
    require_root!("writes root-owned config and key files");
    let pki = Pki::new("right");
    let wrong = Pki::new("wrong");
    let server = Server::start_tls(Arc::clone(&pki.server));
    let files = Files::new("");
    write_private(&files.path("ca.pem"), &pki.ca_pem, 0o644);
    write_private(&files.path("wrong-ca.pem"), &wrong.ca_pem, 0o644);
    let with_ca = |ca: &str| {
        let mut args = files.args(&server);
        args.push("--ingest-ca-file".into());
        args.push(files.path(ca).to_string_lossy().into_owned());
        args
    };
    assert!(server.endpoint().starts_with("https://127.0.0.1:"));

    let a = Agent::start(&with_ca("wrong-ca.pem"), "info", &[]);
    a.wait_for("the refusal and 5 snapshots", |a| {
        a.printed().len() >= 5 && count(&a.log(), "certificate verification failed") > 0
    });
    let (code, first, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    assert_eq!(
        count(&log, "TLS certificate verification failed"),
        1,
        "said once: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("UnknownIssuer") && l.contains(&server.endpoint())),
        "{log:#?}"
    );
    assert!(server.requests().is_empty(), "no request got through");
    assert_eq!(files.records().len(), first.len(), "every snapshot spooled");

    let b = Agent::start(&with_ca("ca.pem"), "info", &[]);
    b.wait_for("the backlog and 3 more", |_| {
        server.accepted().len() >= first.len() + 3
    });
    let (code, second, log) = b.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    assert!(
        count(&log, "trusting 1 certificate(s) from") == 1
            && count(&log, "certificate verification failed") == 0,
        "{log:#?}"
    );
    let mut expected = first.clone();
    expected.extend(second);
    assert_eq!(
        server.accepted(),
        expected,
        "every snapshot once, in order, over verified TLS"
    );
    assert!(files.records().is_empty(), "nothing left in the spool");
}

#[test]
fn an_unusable_ca_file_is_refused_at_start_naming_it() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    write_private(&files.path("empty.pem"), "no certificate here\n", 0o644);
    let mut key_only = String::from("-----BEGIN PRIVATE KEY-----\n");
    key_only.push_str("MC4CAQAwBQYDK2VwBCIEIBKW4o0ZxEHRPYUMyYX6vVPFp0QRH8wFm6PaQTHSzXyO\n");
    key_only.push_str("-----END PRIVATE KEY-----\n");
    write_private(&files.path("key-only.pem"), &key_only, 0o644);
    for (name, why) in [
        ("missing.pem", "No such file"),
        ("empty.pem", "holds no CERTIFICATE block"),
        ("key-only.pem", "holds no CERTIFICATE block"),
    ] {
        let path = files.path(name).to_string_lossy().into_owned();
        let mut args = files.args(&server);
        args.push("--ingest-ca-file".into());
        args.push(path.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = refused(&args);
        assert!(
            err.contains(&format!("ingest CA file {path}")) && err.contains(why),
            "{name}: {err}"
        );
    }
    assert!(server.requests().is_empty());
}

// ------------------------------------------------------- refused at start

fn refused(args: &[&str]) -> String {
    let out = Command::new(AGENT)
        .args(args)
        .env_remove("NETWATCH_API_KEY")
        .env_remove("NETWATCH_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_private(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn bad_configuration_is_refused_at_start_naming_the_value() {
    require_root!("writes root-owned config and key files");
    let files = Files::new("");
    let c = files.path("c.toml");
    let cs = c.to_str().unwrap();

    let e = refused(&["--interval", "0"]);
    assert!(e.contains("interval 0"), "{e}");
    let e = refused(&["--ringbuf-bytes", "3000"]);
    assert!(
        e.contains("ringbuf_bytes 3000 is not a power of two"),
        "{e}"
    );
    let e = refused(&["--mode", "turbo"]);
    assert!(e.contains("turbo"), "{e}");
    let e = refused(&[
        "--output",
        "prometheus",
        "--metrics-listen",
        "localhost:9464",
    ]);
    assert!(e.contains("is not an IP address and port"), "{e}");

    write_private(&c, "mode = \"turbo\"\n", 0o600);
    let e = refused(&["--config", cs]);
    assert!(e.contains("\"turbo\""), "{e}");

    write_private(&c, "interval_secs = 2\n", 0o666);
    let e = refused(&["--config", cs]);
    assert!(e.contains("group- or world-writable (mode 0666)"), "{e}");

    let e = refused(&["--config", "/nonexistent/netwatch/config.toml"]);
    assert!(e.contains("/nonexistent/netwatch/config.toml"), "{e}");

    write_private(&c, "[ingest]\napi_key = \"nwk_inline_secret\"\n", 0o600);
    let e = refused(&["--config", cs]);
    assert!(
        e.contains("api_key") && !e.contains("nwk_inline_secret"),
        "{e}"
    );

    let e = refused(&[
        "--output",
        "ingest",
        "--endpoint",
        "http://192.0.2.1",
        "--api-key-file",
        files.path("api-key").to_str().unwrap(),
    ]);
    assert!(e.contains("--allow-insecure-http"), "{e}");
    assert_no_key(&[e]);
}

// ------------------------------------------- endpoint faults (raw HTTP/1.1)

/// What the raw server does with one ingest request, after reading it whole.
#[derive(Debug, Clone)]
enum Raw {
    /// Answer with this status and body (a 3xx adds `Location: /landing`).
    Answer(u16, String),
    /// Close the connection without a byte of answer.
    Close,
    /// Send half a status line, then close.
    HalfStatus,
    /// Send the status line and half the headers, then close.
    HalfHeaders,
    /// Say nothing for this long, then close.
    Hang(Duration),
}

/// A request to `/landing`, where every redirect points.
#[derive(Debug, Clone)]
struct Landing {
    method: String,
    body_len: usize,
}

struct RawState {
    script: Box<dyn FnMut(usize) -> Raw + Send>,
    /// Ingest requests in arrival order, with what was done to them.
    requests: Vec<(Raw, IngestEnvelope)>,
    /// Timestamps answered 200 (all of the request's) or 207 (the 2xx verdicts).
    accepted: Vec<String>,
    landing: Vec<Landing>,
}

/// An HTTP/1.1 endpoint on 127.0.0.1 written on plain TCP, so it can fail
/// in ways a server library will not: close after reading a request,
/// answer half a status line or half the headers, hang, redirect.
struct RawServer {
    addr: SocketAddr,
    state: Arc<Mutex<RawState>>,
}

fn answer(status: u16, body: &str) -> String {
    let location = if (300..400).contains(&status) {
        "Location: /landing\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status} X\r\n{location}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

impl RawServer {
    fn start(script: impl FnMut(usize) -> Raw + Send + 'static) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(RawState {
            script: Box::new(script),
            requests: Vec::new(),
            accepted: Vec::new(),
            landing: Vec::new(),
        }));
        let st = Arc::clone(&state);
        // Threads end with the test process; the listener lives as long.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let st = Arc::clone(&st);
                thread::spawn(move || Self::serve(stream, &st));
            }
        });
        Self { addr, state }
    }

    fn serve(stream: std::net::TcpStream, st: &Mutex<RawState>) {
        use std::io::Write;
        let mut w = stream.try_clone().unwrap();
        let mut r = BufReader::new(stream);
        while let Some((method, path, body)) = common::read_request(&mut r) {
            if path == "/landing" {
                st.lock().unwrap().landing.push(Landing {
                    method,
                    body_len: body.len(),
                });
                let _ = w.write_all(answer(200, "landed").as_bytes());
                continue;
            }
            let env: IngestEnvelope = serde_json::from_slice(&body).unwrap();
            let what = {
                let mut s = st.lock().unwrap();
                let n = s.requests.len();
                let what = (s.script)(n);
                s.requests.push((what.clone(), env.clone()));
                what
            };
            match what {
                Raw::Answer(status, text) => {
                    let accepted: Vec<String> = match status {
                        200 => env.request.snapshots.iter().map(ts).collect(),
                        207 => match serde_json::from_str::<netwatch_common::wire::IngestResponse>(
                            &text,
                        ) {
                            Ok(r) => r
                                .results
                                .iter()
                                .filter(|v| (200..300).contains(&v.status))
                                .map(|v| ts(&env.request.snapshots[v.index]))
                                .collect(),
                            Err(_) => Vec::new(),
                        },
                        _ => Vec::new(),
                    };
                    if w.write_all(answer(status, &text).as_bytes()).is_ok() {
                        st.lock().unwrap().accepted.extend(accepted);
                    }
                }
                Raw::Close => return,
                Raw::HalfStatus => {
                    let _ = w.write_all(b"HTTP/1.1 20");
                    return;
                }
                Raw::HalfHeaders => {
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: applic");
                    return;
                }
                Raw::Hang(d) => {
                    thread::sleep(d);
                    return;
                }
            }
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> Vec<String> {
        self.state.lock().unwrap().accepted.clone()
    }

    fn requests(&self) -> Vec<(Raw, IngestEnvelope)> {
        self.state.lock().unwrap().requests.clone()
    }

    fn landing(&self) -> Vec<Landing> {
        self.state.lock().unwrap().landing.clone()
    }
}

/// The agent's args for `endpoint`, with `/metrics` on a free port too
/// (found by [`Agent::metrics`] in its log).
fn args_with_metrics(files: &Files, endpoint: &str) -> Vec<String> {
    let mut args = files.args_for(endpoint);
    args.extend(["--output", "prometheus", "--metrics-listen", "127.0.0.1:0"].map(String::from));
    args
}

impl Agent {
    /// The agent's `/metrics` page (its address from the log).
    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut addr = None;
        self.wait_for("/metrics to listen", |a| {
            addr = a.log().iter().find_map(|l| {
                let at = l.find("serving Prometheus metrics on http://")?;
                let rest = &l[at + "serving Prometheus metrics on http://".len()..];
                Some(rest.trim_end_matches("/metrics").trim().to_string())
            });
            addr.is_some()
        });
        let mut s = std::net::TcpStream::connect(addr.unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        page
    }
}

/// The value of the series `name` (with its labels) on a `/metrics` page;
/// 0 when absent.
fn metric(page: &str, series: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Each of `got` once, in the order `printed` has them, and nothing else.
fn assert_once_in_order(got: &[String], printed: &[String]) {
    let mut sorted = got.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        got.len(),
        "a snapshot arrived twice: {got:#?}"
    );
    let mut it = printed.iter();
    for g in got {
        assert!(
            it.any(|p| p == g),
            "{g} was not printed, or arrived out of order"
        );
    }
}

/// A 302, 307 or 308 to `/landing` (which answers any method with 200) is
/// never followed: nothing reaches `/landing`, nothing counts as delivered,
/// every snapshot stays spooled, the redirect is said once and counted by
/// status in `/metrics`. Once the endpoint answers 200, every snapshot
/// arrives exactly once, in order.
#[test]
fn a_redirect_is_a_failure_never_followed_and_nothing_is_lost() {
    require_root!("writes root-owned config and key files");
    let redirecting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let r = Arc::clone(&redirecting);
    let server = RawServer::start(move |n| {
        if r.load(std::sync::atomic::Ordering::SeqCst) {
            Raw::Answer([302, 307, 308][n % 3], "moved".into())
        } else {
            Raw::Answer(200, String::new())
        }
    });
    let files = Files::new("");
    let a = Agent::start(&args_with_metrics(&files, &server.endpoint()), "info", &[]);
    a.wait_for("6 redirected requests", |_| server.requests().len() >= 6);
    // Every printed snapshot is still spooled (it is spooled before it is
    // printed, and nothing left).
    let printed = a.printed();
    let records = files.records().len();
    assert!(
        records >= printed.len() && !printed.is_empty(),
        "{records} records for {} printed",
        printed.len()
    );
    let page = a.metrics();
    let landing: Vec<String> = server
        .landing()
        .iter()
        .map(|l| format!("{} with {} bytes", l.method, l.body_len))
        .collect();
    assert_eq!(landing, Vec::<String>::new(), "a redirect was followed");
    assert_eq!(server.accepted(), Vec::<String>::new());
    assert_eq!(metric(&page, "netwatch_agent_delivered_snapshots_total"), 0);
    let by_status: Vec<u64> = [302, 307, 308]
        .iter()
        .map(|s| {
            metric(
                &page,
                &format!("netwatch_agent_delivery_errors_total{{status=\"{s}\"}}"),
            )
        })
        .collect();
    let sent = metric(&page, "netwatch_agent_delivery_requests_total");
    assert!(sent >= 6, "{page}");
    assert!(by_status.iter().all(|&n| n >= 2), "{by_status:?}\n{page}");
    // Every request but one possibly in flight was answered with a redirect.
    let redirects = by_status.iter().sum::<u64>();
    assert!(redirects == sent || redirects + 1 == sent, "{page}");

    redirecting.store(false, std::sync::atomic::Ordering::SeqCst);
    a.wait_for("the backlog and 3 more", |_| {
        server.accepted().len() >= printed.len() + 3
    });
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    assert_eq!(server.accepted(), printed, "every snapshot once, in order");
    assert_eq!(server.landing().len(), 0);
    assert_eq!(
        count(&log, "which is not followed"),
        1,
        "said once: {log:#?}"
    );
    assert!(
        log.iter().any(|l| l.contains("a redirect to /landing")),
        "{log:#?}"
    );
    assert!(files.records().is_empty());
}

/// An endpoint that reads the request and then closes, answers half a
/// status line or half its headers, hangs past `request_timeout_secs`: no
/// answer is an acceptance. Each request is resent after a backoff until
/// the endpoint answers 200, and every snapshot arrives exactly once.
#[test]
fn an_endpoint_that_closes_or_hangs_mid_answer_loses_nothing() {
    require_root!("writes root-owned config and key files");
    let faults = [
        Raw::Close,
        Raw::HalfStatus,
        Raw::HalfHeaders,
        Raw::Hang(Duration::from_secs(3)),
        Raw::Close,
        Raw::HalfStatus,
        Raw::HalfHeaders,
    ];
    let n_faults = faults.len();
    let server = RawServer::start(move |n| {
        faults
            .get(n)
            .cloned()
            .unwrap_or(Raw::Answer(200, String::new()))
    });
    let files = Files::new("");
    let cfg = std::fs::read_to_string(files.path("config.toml")).unwrap();
    write_private(
        &files.path("config.toml"),
        &cfg.replace("request_timeout_secs = 5", "request_timeout_secs = 1"),
        0o600,
    );
    let a = Agent::start(&args_with_metrics(&files, &server.endpoint()), "info", &[]);
    a.wait_for("the faults and 5 accepted snapshots", |_| {
        server.requests().len() > n_faults && server.accepted().len() >= 5
    });
    let page = a.metrics();
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    assert_eq!(server.accepted(), printed, "every snapshot once, in order");
    let reqs = server.requests();
    // The first answered request carries everything the faults left.
    let first_ok = &reqs[n_faults].1;
    assert_eq!(
        first_ok.request.snapshots.first().map(ts),
        printed.first().cloned()
    );
    assert_eq!(
        metric(
            &page,
            "netwatch_agent_delivery_errors_total{status=\"transport\"}"
        ),
        n_faults as u64,
        "{page}"
    );
    assert!(files.records().is_empty());
}

/// 500s, a 207 whose body is not JSON, a 207 of 5 MiB (past the 4 MiB the
/// agent reads), then 200s whose body is garbage: the 500s and the
/// unusable 207s are failures (counted, resent); a 200 is an acceptance
/// whatever its body. Every snapshot arrives exactly once.
#[test]
fn server_errors_and_unusable_207s_are_retried_and_garbage_200s_accepted() {
    require_root!("writes root-owned config and key files");
    let huge = "x".repeat(5 * 1024 * 1024);
    let server = RawServer::start(move |n| match n {
        0 | 1 => Raw::Answer(500, "oops".into()),
        2 => Raw::Answer(207, "<html>not json</html>".into()),
        3 => Raw::Answer(207, huge.clone()),
        _ => Raw::Answer(200, "\u{0}garbage{".into()),
    });
    let files = Files::new("");
    let a = Agent::start(&args_with_metrics(&files, &server.endpoint()), "info", &[]);
    a.wait_for("the faults and 5 accepted snapshots", |_| {
        server.requests().len() > 4 && server.accepted().len() >= 5
    });
    let page = a.metrics();
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    assert_eq!(server.accepted(), printed, "every snapshot once, in order");
    assert_eq!(
        metric(
            &page,
            "netwatch_agent_delivery_errors_total{status=\"500\"}"
        ),
        2,
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "netwatch_agent_delivery_errors_total{status=\"207_unreadable\"}"
        ),
        2,
        "{page}"
    );
    assert!(files.records().is_empty());
}

// ------------------------------------------------- spool filesystem faults

/// A tmpfs of `size` mounted on the test's spool directory; unmounted on
/// drop, even when the test fails.
struct SpoolFs {
    at: PathBuf,
}

impl SpoolFs {
    fn mount(files: &Files, size: &str) -> Self {
        let at = files.spool();
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("netwatch-test-spool")
            .arg(&at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs on {}", at.display());
        Self { at }
    }

    /// `mount -o remount,<how>`; a write in progress makes it EBUSY for a
    /// moment, so it is tried a few times.
    fn remount(&self, how: &str) {
        for _ in 0..50 {
            let ok = Command::new("mount")
                .args(["-o", &format!("remount,{how}")])
                .arg(&self.at)
                .status()
                .unwrap()
                .success();
            if ok {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("remount,{how} of {} failed", self.at.display());
    }

    /// Fill what is left of the filesystem with one file.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.at.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        // The last bytes, one at a time, so not a page is left.
        while let Ok(1) = f.write(&[0]) {}
        path
    }
}

impl Drop for SpoolFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

impl Agent {
    /// Wait until the first 3 snapshots printed from now on (after
    /// `when`) were all accepted by `server`.
    fn wait_for_three_accepted(&self, server: &Server, when: &str) {
        let back_at = self.printed().len();
        self.wait_for(&format!("3 accepted snapshots taken after {when}"), |a| {
            let printed = a.printed();
            let got = server.accepted();
            printed.len() > back_at + 3
                && printed[back_at..back_at + 3]
                    .iter()
                    .all(|p| got.contains(p))
        });
    }
}

/// What the run proves about snapshots the spool could not keep: each
/// printed snapshot either reached the endpoint once (in order) or was
/// dropped, and the agent's count of drops is exactly the printed ones
/// that never arrived. Returns that number.
fn assert_delivered_or_counted(server: &Server, printed: &[String], during: usize) -> usize {
    let got = server.accepted();
    assert_once_in_order(&got, printed);
    let missing = printed.iter().filter(|p| !got.contains(p)).count();
    assert!(
        missing >= during,
        "{missing} dropped, but {during} snapshots were taken while the spool could not write"
    );
    let reqs = server.requests();
    let last = reqs.last().expect("requests were sent");
    assert_eq!(
        last.env.agent_health.dropped_count, missing as u64,
        "dropped_count is exactly the snapshots that never arrived"
    );
    missing
}

/// The spool on a 1 MiB tmpfs, the endpoint failing (503) so records pile
/// up, then the filesystem filled: snapshots keep coming every interval
/// (on stdout), each one the spool cannot write is counted once (in
/// `dropped_count` and `/metrics`), no older record is evicted for it, and
/// the failure is said once. Space back and the endpoint up: every spooled
/// snapshot arrives once, in order, and nothing twice.
#[test]
fn a_full_spool_filesystem_drops_counted_and_delivery_resumes_without_duplicates() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    server.script(|_, _| (503, "maintenance".into()));
    let files = Files::new("");
    let fs = SpoolFs::mount(&files, "1m");
    let a = Agent::start(&args_with_metrics(&files, &server.endpoint()), "info", &[]);
    a.wait_for("3 spooled snapshots", |_| files.records().len() >= 3);
    let filler = fs.fill();
    // A write that had its pages before the filler took the rest lands now.
    thread::sleep(Duration::from_millis(500));
    let spooled = files.records().len();
    let full_at = a.printed().len();
    a.wait_for("5 snapshots on a full filesystem", |a| {
        a.printed().len() >= full_at + 5
    });
    assert_eq!(
        files.records().len(),
        spooled,
        "nothing evicted, nothing written"
    );
    let page = a.metrics();
    let failed = metric(
        &page,
        "netwatch_agent_spool_dropped_snapshots_total{reason=\"write_failed\"}",
    );
    assert!(failed >= 5, "{page}");
    assert_eq!(
        metric(
            &page,
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"evicted\"}"
        ),
        0
    );
    std::fs::remove_file(filler).unwrap();
    server.script(|_, _| (200, String::new()));
    a.wait_for_three_accepted(&server, "space returned");
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    let dropped = assert_delivered_or_counted(&server, &printed, 5);
    assert!(dropped as u64 >= failed);
    assert_eq!(
        count(&log, "until a write succeeds"),
        1,
        "said once: {log:#?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("No space left on device") && l.contains(".tmp-")),
        "the errno and the path are named: {log:#?}"
    );
    assert_eq!(count(&log, "writing records to"), 1, "{log:#?}");
    assert!(files.records().is_empty());
    drop(fs);
}

/// The spool's filesystem remounted read-only while the endpoint accepts:
/// records already spooled are delivered (their files cannot be removed
/// yet, and are not sent again), new snapshots cannot be spooled and are
/// counted, collection goes on. Remounted read-write: the leftover files
/// are removed, delivery continues, nothing arrives twice.
#[test]
fn a_read_only_spool_filesystem_drops_counted_and_nothing_is_delivered_twice() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    let fs = SpoolFs::mount(&files, "4m");
    // Failing first, so records wait in the spool when it turns read-only.
    server.script(|_, _| (503, "maintenance".into()));
    let a = Agent::start(&args_with_metrics(&files, &server.endpoint()), "info", &[]);
    a.wait_for("3 spooled snapshots", |_| files.records().len() >= 3);
    fs.remount("ro");
    let ro_at = a.printed().len();
    server.script(|_, _| (200, String::new()));
    a.wait_for(
        "5 snapshots on a read-only filesystem, the backlog accepted",
        |a| a.printed().len() >= ro_at + 5 && server.accepted().len() >= 3,
    );
    // Delivered, but their files could not be removed yet.
    assert!(!files.records().is_empty());
    let page = a.metrics();
    assert!(
        metric(
            &page,
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"write_failed\"}"
        ) >= 5,
        "{page}"
    );
    fs.remount("rw");
    a.wait_for_three_accepted(&server, "the remount");
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    assert_delivered_or_counted(&server, &printed, 5);
    assert_eq!(count(&log, "until a write succeeds"), 1, "{log:#?}");
    assert!(
        log.iter().any(|l| l.contains("Read-only file system")),
        "{log:#?}"
    );
    assert!(files.records().is_empty(), "leftover files removed");
    drop(fs);
}

// ---------------------------------------------------------------- hung spool

fn signal_pid(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions; a gone pid is ESRCH.
    unsafe { libc::kill(pid, sig) };
}

/// Ends what the hung-spool test started, even when it fails: the agent
/// (until the test stops it itself), then the FUSE server, continued first
/// so it can exit. Their private mount namespace, and the mount in it,
/// goes with them.
struct HungGuard {
    agent: Option<i32>,
    bindfs: Option<i32>,
}

impl Drop for HungGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.agent {
            signal_pid(pid, libc::SIGKILL);
        }
        if let Some(pid) = self.bindfs {
            signal_pid(pid, libc::SIGCONT);
            signal_pid(pid, libc::SIGTERM);
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while proc_dir.exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            signal_pid(pid, libc::SIGKILL);
        }
    }
}

/// The spool on a FUSE filesystem (bindfs, in a private mount namespace
/// that only the agent and bindfs share) whose server is stopped with
/// SIGSTOP: every spool write, and the sender's reads, block until it
/// resumes. Snapshots keep coming on stdout every interval; each one the
/// spool could not write in time is counted once (`dropped_count` in the
/// last accepted envelope is exactly the printed snapshots that never
/// arrived), said once naming the directory; after SIGCONT delivery
/// resumes and nothing arrives twice (the write that finished after its
/// deadline is removed, never sent). On main the tick waits in the spool
/// write (and for the lock the stuck sender holds): no snapshot at all
/// while the mount hangs.
#[test]
fn a_hung_spool_filesystem_costs_counted_drops_never_a_snapshot() {
    require_root!("writes root-owned config and key files");
    assert!(
        Command::new("bindfs")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "bindfs is missing: run `cargo xtask setup` (or apt-get install bindfs)"
    );
    let server = Server::start();
    let files = Files::new("");
    // The records live in `spool` (read here directly, never through the
    // hung mount); the agent sees them through bindfs at `mnt`.
    std::fs::create_dir(files.spool()).unwrap();
    let mnt = files.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let pid_file = files.path("bindfs.pid");
    let mut args = args_with_metrics(&files, &server.endpoint());
    let at = args.iter().position(|a| a == "--spool-dir").unwrap();
    args[at + 1] = mnt.display().to_string();
    // Intervals longer than the 500 ms write bound.
    let at = args.iter().position(|a| a == "--interval").unwrap();
    args[at + 1] = "0.6".into();
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "bindfs -f '{src}' '{mnt}' >/dev/null 2>&1 & echo $! > '{pid}'; \
         i=0; until mountpoint -q '{mnt}'; do i=$((i+1)); \
         [ $i -gt 100 ] && {{ echo 'bindfs did not mount' >&2; exit 1; }}; sleep 0.05; done; \
         exec '{AGENT}' {args}",
        src = files.spool().display(),
        mnt = mnt.display(),
        pid = pid_file.display(),
        args = quoted.join(" "),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let a = Agent::spawn(cmd, "info", &[]);
    let mut guard = HungGuard {
        agent: Some(a.child.id() as i32),
        bindfs: None,
    };
    a.wait_for_three_accepted(&server, "the start");
    let bindfs: i32 = std::fs::read_to_string(&pid_file)
        .expect("bindfs pid file")
        .trim()
        .parse()
        .expect("bindfs pid");
    guard.bindfs = Some(bindfs);

    // Hang it, with records waiting (the endpoint failing), so the sender
    // is stuck reading one.
    server.script(|_, _| (503, "maintenance".into()));
    thread::sleep(Duration::from_secs(2));
    signal_pid(bindfs, libc::SIGSTOP);
    let stopped = a.printed().len();
    thread::sleep(Duration::from_secs(1));
    let settled = a.printed().len();
    thread::sleep(Duration::from_secs(5));
    let during = a.printed().len() - settled;
    println!(
        "NETWATCH-HUNG-SPOOL: {} snapshots in the 6 s the spool's mount hung",
        a.printed().len() - stopped
    );
    // 8 intervals of 0.6 s in those 5 s; a generous bound for a loaded
    // machine. On main: 0 (the tick waits in the spool write).
    assert!(
        during >= 5,
        "{during} snapshots in the 5 s the spool's mount hung (expected about 8); log: {:#?}",
        a.log()
    );
    let spooled_while_hung = files.records().len();

    // It answers again; the endpoint accepts.
    signal_pid(bindfs, libc::SIGCONT);
    server.script(|_, _| (200, String::new()));
    a.wait_for_three_accepted(&server, "SIGCONT");
    guard.agent = None;
    let (code, printed, log) = a.stop(libc::SIGTERM);
    assert_eq!(code, Some(0), "{log:#?}");
    let dropped = assert_delivered_or_counted(&server, &printed, during);
    println!(
        "NETWATCH-HUNG-SPOOL: {dropped} snapshots dropped and counted, {} printed, \
         {spooled_while_hung} records on disk while hung",
        printed.len()
    );
    assert_eq!(
        count(&log, "until a write succeeds"),
        1,
        "said once: {log:#?}"
    );
    let mnt_text = mnt.display().to_string();
    assert!(
        log.iter()
            .any(|l| l.contains("until a write succeeds") && l.contains(&mnt_text)),
        "the line names the spool directory: {log:#?}"
    );
    assert_eq!(count(&log, "writing records to"), 1, "{log:#?}");
    assert!(files.records().is_empty(), "{:?}", files.records());
    drop(guard);
}

/// The spool's mount hung (bindfs stopped) with records waiting and the
/// endpoint failing, so the sender is stuck reading one while holding the
/// spool: SIGTERM still ends the agent, with exit 0, within the flush
/// timeout (5 s here) and its grace, never waiting on the filesystem.
#[test]
fn sigterm_while_the_spool_filesystem_hangs_exits() {
    require_root!("writes root-owned config and key files");
    let server = Server::start();
    let files = Files::new("");
    std::fs::create_dir(files.spool()).unwrap();
    let mnt = files.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let pid_file = files.path("bindfs.pid");
    let mut args = files.args(&server);
    let at = args.iter().position(|a| a == "--spool-dir").unwrap();
    args[at + 1] = mnt.display().to_string();
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "bindfs -f '{src}' '{mnt}' >/dev/null 2>&1 & echo $! > '{pid}'; \
         i=0; until mountpoint -q '{mnt}'; do i=$((i+1)); \
         [ $i -gt 100 ] && {{ echo 'bindfs did not mount' >&2; exit 1; }}; sleep 0.05; done; \
         exec '{AGENT}' {args}",
        src = files.spool().display(),
        mnt = mnt.display(),
        pid = pid_file.display(),
        args = quoted.join(" "),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    server.script(|_, _| (503, "maintenance".into()));
    let mut a = Agent::spawn(cmd, "info", &[]);
    let mut guard = HungGuard {
        agent: Some(a.child.id() as i32),
        bindfs: None,
    };
    a.wait_for("3 spooled snapshots", |_| files.records().len() >= 3);
    let bindfs: i32 = std::fs::read_to_string(&pid_file)
        .expect("bindfs pid file")
        .trim()
        .parse()
        .expect("bindfs pid");
    guard.bindfs = Some(bindfs);
    signal_pid(bindfs, libc::SIGSTOP);
    thread::sleep(Duration::from_secs(2));
    a.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = a.child.try_wait().expect("waiting for the agent") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit within 15 s of SIGTERM while its spool hung; log: {:#?}",
            a.log()
        );
        thread::sleep(Duration::from_millis(50));
    };
    guard.agent = None;
    assert!(
        status.success(),
        "exit 0 on SIGTERM: {status}; log: {:#?}",
        a.log()
    );
    drop(guard);
}
