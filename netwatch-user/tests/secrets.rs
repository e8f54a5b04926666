//! The API key stays secret, end to end with the real agent binary
//! (`--mode proc`, so no BPF is loaded): given in `NETWATCH_API_KEY`, it is
//! absent from the running agent's `/proc/<pid>/environ` and `cmdline`
//! while deliveries to a real HTTP server on 127.0.0.1 still carry
//! `Authorization: Bearer <key>`; the agent is not dumpable (run as an
//! unprivileged uid, its `/proc/<pid>/*` entries belong to root); and an
//! endpoint URL holding a user name or password stops it at start with
//! status 2 and a message that does not repeat them. Needs root (root-owned
//! config files, and `setpriv` to start the agent as another uid).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::agent;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
const SETPRIV: &str = "/usr/bin/setpriv";
const NOBODY: u32 = 65534;
/// Give up waiting for the agent after this long (a hang, not a measure).
const PATIENCE: Duration = Duration::from_secs(60);

/// A secret no other test or process uses.
fn unique_secret(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("nwk_{what}_{}_{nanos}", std::process::id())
}

/// A directory (0755, so an unprivileged agent can read it) with a config
/// file (root's, 0644) of `config`.
fn files(config: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let c = dir.path().join("config.toml");
    std::fs::write(&c, config).unwrap();
    std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, c)
}

/// The agent, stopped when dropped (also when a test fails).
struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    stdout: mpsc::Receiver<String>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        agent::terminate(&mut self.child);
    }
}

impl Agent {
    fn start(mut cmd: Command, env: &[(&str, &str)]) -> Self {
        cmd.env("RUST_LOG", "info")
            .env_remove("NETWATCH_API_KEY")
            .env_remove("NETWATCH_CONFIG")
            .env_remove("NETWATCH_ENDPOINT")
            .env_remove("NETWATCH_INTERVAL")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting netwatch-agent");
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
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, log, stdout }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// A stand-in ingest endpoint on 127.0.0.1: answers 200 to every request
/// and passes each request's `Authorization` header on.
fn ingest_server() -> (String, mpsc::Receiver<Option<String>>) {
    ingest_server_answering("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
}

/// The same, answering `answer` (a whole HTTP response) to every request.
fn ingest_server_answering(answer: &'static str) -> (String, mpsc::Receiver<Option<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let tx = tx.clone();
            thread::spawn(move || serve(conn, tx, answer));
        }
    });
    (url, rx)
}

/// Requests on one connection until it closes: headers, a
/// `Content-Length` body, then `answer`.
fn serve(conn: TcpStream, tx: mpsc::Sender<Option<String>>, answer: &str) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut len, mut auth) = (0usize, None);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("authorization") {
                    auth = Some(v.trim().to_string());
                }
            }
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let _ = tx.send(auth);
        if w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// `/proc/<pid>/<file>` as bytes.
fn proc_file(pid: u32, file: &str) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/{file}: {e}"))
}

fn holds(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The agent delivering to `url` every 0.2 s, with its config, spool and
/// host id in `dir`.
fn ingest_agent(config: &std::path::Path, dir: &std::path::Path, url: &str) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.arg("--config")
        .arg(config)
        .args(["--output", "ingest", "--interval", "0.2", "--endpoint", url])
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .arg("--host-id-file")
        .arg(dir.join("host-id"))
        .args(["--max-connections", "20"]);
    cmd
}

#[test]
fn a_key_from_the_environment_is_absent_from_proc_and_still_delivered() {
    require_root!("writes root-owned config files and starts the agent as another uid");
    let secret = unique_secret("env");
    let (url, auths) = ingest_server();
    let (dir, config) = files(
        "mode = \"proc\"\n[ingest]\nretry_initial_secs = 0.1\nretry_max_secs = 1.0\n\
         request_timeout_secs = 5\nflush_timeout_secs = 2\n",
    );
    let cmd = ingest_agent(&config, dir.path(), &url);
    let agent = Agent::start(
        cmd,
        &[
            ("NETWATCH_API_KEY", secret.as_str()),
            ("NETWATCH_SECRETS_TEST_MARK", "kept"),
        ],
    );
    // Deliveries carry the key.
    let auth = auths
        .recv_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("no delivery; log:\n{}", agent.log()));
    assert_eq!(auth, Some(format!("Bearer {secret}")));

    // While it runs: not in the kernel's view of its environment or
    // command line, on any thread; the other variables are intact.
    let environ = proc_file(agent.pid(), "environ");
    assert!(
        !holds(&environ, &secret),
        "the key is in /proc/<pid>/environ"
    );
    assert!(!holds(&environ, "NETWATCH_API_KEY="), "{environ:?}");
    assert!(holds(&environ, "NETWATCH_SECRETS_TEST_MARK=kept\0"));
    assert!(holds(&environ, "RUST_LOG=info"));
    for task in std::fs::read_dir(format!("/proc/{}/task", agent.pid())).unwrap() {
        let tid = task.unwrap().file_name().to_string_lossy().into_owned();
        let env = proc_file(agent.pid(), &format!("task/{tid}/environ"));
        assert!(!holds(&env, &secret), "the key is in task {tid}'s environ");
    }
    assert!(!holds(&proc_file(agent.pid(), "cmdline"), &secret));
    // A second delivery after the look: still the key.
    let auth = auths.recv_timeout(PATIENCE).unwrap();
    assert_eq!(auth, Some(format!("Bearer {secret}")));
    assert!(!agent.log().contains(&secret), "the key is in the log");
}

/// A copy of the agent binary an unprivileged uid can execute (the build's
/// directories may not be searchable by it).
fn agent_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("netwatch-agent");
    std::fs::copy(AGENT, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// A field of `/proc/<pid>/status` (`Uid:` → its first number).
fn status_field(pid: u32, field: &str) -> String {
    let status = String::from_utf8(proc_file(pid, "status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .to_string()
}

#[test]
fn the_agent_is_not_dumpable_so_its_own_uid_cannot_read_its_memory() {
    require_root!("writes root-owned config files and starts the agent as another uid");
    assert!(
        Path::new(SETPRIV).exists(),
        "{SETPRIV} (util-linux) is needed to start the agent as another uid"
    );
    let secret = unique_secret("dump");
    let (dir, config) = files("");
    let bin = agent_copy(dir.path());
    // As packaging/netwatch-agent.service runs it: an unprivileged uid with
    // ambient capabilities (those the proc source starts with).
    let caps = "+sys_ptrace,+dac_read_search";
    let mut cmd = Command::new(SETPRIV);
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args([
            "--inh-caps",
            caps,
            "--ambient-caps",
            caps,
            "--bounding-set",
            caps,
        ])
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .args(["--mode", "proc", "--output", "json", "--interval", "0.2"])
        .args(["--max-connections", "20"]);
    let agent = Agent::start(cmd, &[("NETWATCH_API_KEY", secret.as_str())]);
    // It works non-dumpable: snapshots come (it reads its own /proc).
    for _ in 0..2 {
        let line = agent
            .stdout
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no snapshot; log:\n{}", agent.log()));
        assert!(line.starts_with('{'), "{line}");
    }
    let pid = agent.pid();
    assert_eq!(status_field(pid, "Uid:"), NOBODY.to_string());
    // The kernel gives a non-dumpable process's /proc entries to root
    // (a dumpable one's belong to its uid, here 65534; the world-readable
    // directory /proc/<pid> itself always shows the uid).
    for entry in ["environ", "mem", "fd", "maps"] {
        let m = std::fs::metadata(format!("/proc/{pid}/{entry}")).unwrap();
        assert_eq!(m.uid(), 0, "/proc/{pid}/{entry} belongs to uid {}", m.uid());
    }
    // Another process of the agent's uid cannot read its environment.
    let out = Command::new(SETPRIV)
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["--inh-caps", "-all", "--bounding-set", "-all"])
        .args(["cat", &format!("/proc/{pid}/environ")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!holds(&out.stdout, &secret));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run the agent to its end (at most 30 s; killed after): (status, stderr).
fn run_to_end(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting netwatch-agent");
    let mut err = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        thread::sleep(Duration::from_millis(50));
    };
    (status.code(), reader.join().unwrap())
}

#[test]
fn an_endpoint_with_a_user_and_password_stops_the_agent_without_echoing_them() {
    require_root!("writes root-owned config files and starts the agent as another uid");
    let password = unique_secret("pw");
    // Everything else the agent needs to deliver, so only the URL can stop it.
    let (dir, config) = files("[ingest]\nrequest_timeout_secs = 1\nflush_timeout_secs = 1\n");
    let p = |n: &str| dir.path().join(n);
    let agent = |endpoint: Option<&str>, env_endpoint: Option<&str>| {
        let mut cmd = Command::new(AGENT);
        cmd.arg("--config")
            .arg(&config)
            .args([
                "--once",
                "--mode",
                "proc",
                "--output",
                "ingest",
                "--interval",
                "0.2",
            ])
            .arg("--spool-dir")
            .arg(p("spool"))
            .arg("--host-id-file")
            .arg(p("host-id"))
            .env("RUST_LOG", "info")
            .env("NETWATCH_API_KEY", "nwk_not_the_secret")
            .env_remove("NETWATCH_CONFIG")
            .env_remove("NETWATCH_ENDPOINT")
            .env_remove("NETWATCH_INTERVAL");
        if let Some(e) = endpoint {
            cmd.args(["--endpoint", e]);
        }
        if let Some(e) = env_endpoint {
            cmd.env("NETWATCH_ENDPOINT", e);
        }
        run_to_end(&mut cmd)
    };
    let refusal = |shown: &str| {
        format!(
            "netwatch-agent: endpoint \"{shown}\" holds a user name or password: credentials \
             in the URL are refused (they would be logged); give the base URL and put the \
             API key in --api-key-file or [ingest] api_key_file"
        )
    };

    let url = format!("http://operator:{password}@127.0.0.1:9/");
    let (code, err) = agent(Some(&url), None);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim(), refusal("http://<redacted>@127.0.0.1:9/"));

    let url = format!("https://{password}@cloud.example");
    let (code, err) = agent(None, Some(&url));
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim(), refusal("https://<redacted>@cloud.example"));

    // Not even a valid URL (a space in the password): still not echoed.
    let url = format!("https://operator:a {password}@cloud.example");
    let (code, err) = agent(Some(&url), None);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err.trim(), refusal("https://<redacted>@cloud.example"));
    assert!(
        !err.contains(&password) && !err.contains("operator"),
        "{err}"
    );
}

#[test]
fn a_redirect_to_a_url_with_a_password_is_logged_redacted() {
    require_root!("writes root-owned config files and starts the agent as another uid");
    // The server's own text: the agent logs the redirect it does not follow.
    let (url, requests) = ingest_server_answering(
        "HTTP/1.1 307 Temporary Redirect\r\nlocation: https://operator:pw-r3d1rect@other.example/in\r\n\
         content-length: 0\r\n\r\n",
    );
    let (dir, config) = files(
        "mode = \"proc\"\n[ingest]\nretry_initial_secs = 0.1\nretry_max_secs = 0.2\n\
         request_timeout_secs = 5\nflush_timeout_secs = 1\n",
    );
    let cmd = ingest_agent(&config, dir.path(), &url);
    let agent = Agent::start(cmd, &[("NETWATCH_API_KEY", "nwk_redirect_test")]);
    for _ in 0..2 {
        requests
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no delivery; log:\n{}", agent.log()));
    }
    let started = Instant::now();
    let line = loop {
        let log = agent.log();
        if let Some(l) = log.lines().find(|l| l.contains("a redirect to")) {
            break l.to_string();
        }
        assert!(started.elapsed() < PATIENCE, "no redirect logged:\n{log}");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(
        line.contains("a redirect to https://<redacted>@other.example/in,"),
        "{line}"
    );
    assert!(!agent.log().contains("pw-r3d1rect"), "{}", agent.log());
}

/// A regression guard (it passes on the code before the scrub too): the
/// scrub's read-back of `/proc/self/environ` happens while the process is
/// still dumpable, so an unprivileged uid without `CAP_DAC_READ_SEARCH`
/// (which cannot read a non-dumpable process's root-owned environ) gets
/// past it to the usual refusal of missing capabilities.
#[test]
fn an_agent_without_capabilities_still_scrubs_and_refuses_by_capability() {
    require_root!("writes root-owned config files and starts the agent as another uid");
    assert!(
        Path::new(SETPRIV).exists(),
        "{SETPRIV} (util-linux) is needed to start the agent as another uid"
    );
    let (dir, config) = files("");
    let bin = agent_copy(dir.path());
    let mut cmd = Command::new(SETPRIV);
    cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["--inh-caps", "-all", "--bounding-set", "-all"])
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .args(["--mode", "proc", "--output", "json", "--once"])
        .current_dir("/")
        .env("RUST_LOG", "info")
        .env("NETWATCH_API_KEY", unique_secret("nocaps"))
        .env_remove("NETWATCH_CONFIG")
        .env_remove("NETWATCH_ENDPOINT")
        .env_remove("NETWATCH_INTERVAL");
    let (code, err) = run_to_end(&mut cmd);
    assert_ne!(code, Some(0), "{err}");
    assert!(!err.contains("scrubbing"), "{err}");
    assert!(err.contains("missing from the effective set"), "{err}");
}
