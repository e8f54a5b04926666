//! Files an attacker cannot aim: the real agent binary, with its state in a
//! temporary directory of this test's own, against what another local user
//! could do to the files it writes and trusts.
//!
//! - Symlinks planted at the names the agent writes through (the spool's,
//!   the pin baseline's and the `/metrics` counters' temporary names, a
//!   record's name) point at files this test owns: they stay untouched,
//!   and what the agent writes is a regular file of mode 0600.
//! - A spool, host id or baseline directory that is world-writable without
//!   the sticky bit, owned by another user (`nobody`) or a symlink, and a
//!   CA file that is group-writable or another user's, stop the agent at
//!   start (exit status 1) with a message naming the path, the owner and
//!   mode, and what to do.
//! - Records planted in the spool (another user's, group-writable, a
//!   symlink to a valid record) are never sent: a real HTTP endpoint on
//!   loopback receives only the agent's own snapshots.
//! - Under umask 000 every file the agent creates is 0600 and every
//!   directory 0700.
//!
//! Needs root (files of another user, BPF pins for the baseline).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::{chown, symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use netwatch_common::wire::Snapshot;

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
/// Give up waiting for the agent after this long (a hang, not a measure).
const PATIENCE: Duration = Duration::from_secs(60);
/// `nobody`: another user.
const NOBODY: u32 = 65534;
const KEY: &str = "nwk_file_safety_test_key";

// ---------------------------------------------------------------- endpoint

/// An ingest endpoint on loopback that answers every request with one
/// status and keeps the timestamps of the snapshots it was sent.
struct Endpoint {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
}

impl Endpoint {
    fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let addr = listener.local_addr().expect("its address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::clone(&received);
        // Threads end with the test process; the listener lives as long.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let got = Arc::clone(&got);
                thread::spawn(move || {
                    let Ok(mut w) = stream.try_clone() else {
                        return;
                    };
                    let mut r = BufReader::new(stream);
                    while let Some((_, _, body)) = common::read_request(&mut r) {
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).expect("an ingest envelope");
                        for s in v["snapshots"].as_array().into_iter().flatten() {
                            let ts = s["timestamp"].as_str().expect("a timestamp").to_string();
                            got.lock().unwrap().push(ts);
                        }
                        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                        if w.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, received }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- files

/// A root directory of this test's own (0700), with the config and key
/// files the agent needs for `--output ingest`.
struct State {
    dir: tempfile::TempDir,
}

impl State {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let s = Self { dir };
        s.write(
            "config.toml",
            "[ingest]\nretry_initial_secs = 0.1\nretry_max_secs = 0.5\n\
             request_timeout_secs = 2\nflush_timeout_secs = 2\n",
            0o600,
        );
        s.write("api-key", &format!("{KEY}\n"), 0o600);
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn mkdir(&self, name: &str, mode: u32) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    /// `--output ingest` (and json) to `endpoint`, spool `spool`, host id
    /// `host_id`, proc source, one snapshot every 0.2 s.
    fn ingest_args(&self, endpoint: &str, spool: &Path, host_id: &Path) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            "--config".into(),
            p("config.toml"),
            "--mode".into(),
            "proc".into(),
            "--output".into(),
            "ingest".into(),
            "--output".into(),
            "json".into(),
            "--interval".into(),
            "0.2".into(),
            "--endpoint".into(),
            endpoint.into(),
            "--api-key-file".into(),
            p("api-key"),
            "--spool-dir".into(),
            spool.display().to_string(),
            "--host-id-file".into(),
            host_id.display().to_string(),
            "--max-connections".into(),
            "5".into(),
        ]
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// A valid spool record of a snapshot stamped `unix_secs` (a time no
/// agent snapshot has), as the agent frames them.
fn record(unix_secs: i64) -> (Vec<u8>, String) {
    use chrono::TimeZone;
    let t = chrono::Utc.timestamp_opt(unix_secs, 0).unwrap();
    let snap = Snapshot::empty(t);
    let json = serde_json::to_vec(&snap).unwrap();
    let ts = serde_json::to_value(&snap).unwrap()["timestamp"]
        .as_str()
        .unwrap()
        .to_string();
    (netwatch::sink::spool::encode(&json), ts)
}

// ---------------------------------------------------------------- agent

/// The agent, its stderr collected; killed when dropped.
struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    snapshots: Arc<Mutex<usize>>,
}

impl Agent {
    fn spawn(args: &[String], umask: Option<libc::mode_t>) -> Self {
        let mut cmd = Command::new(AGENT);
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env_remove("NETWATCH_API_KEY")
            .env_remove("NETWATCH_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(m) = umask {
            // SAFETY: umask is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(m);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("starting netwatch-agent");
        let log = Arc::new(Mutex::new(Vec::new()));
        let snapshots = Arc::new(Mutex::new(0));
        let stderr = child.stderr.take().unwrap();
        let l = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let n = Arc::clone(&snapshots);
        thread::spawn(move || {
            for _ in BufReader::new(stdout).lines().map_while(Result::ok) {
                *n.lock().unwrap() += 1;
            }
        });
        Self {
            child,
            log,
            snapshots,
        }
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Wait until `done` holds (checked every 50 ms), or fail the test.
    fn wait_for(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the agent exited ({status}) before {what}; log: {:#?}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for {what}; log: {:#?}",
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then its exit status.
    fn stop(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                // Let the readers take the last lines.
                thread::sleep(Duration::from_millis(100));
                return s.code();
            }
            assert!(start.elapsed() < PATIENCE, "the agent did not stop");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the agent to exit on its own: its status and log.
    fn exit(mut self) -> (Option<i32>, Vec<String>) {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                return (s.code(), self.log());
            }
            if start.elapsed() > Duration::from_secs(15) {
                return (None, self.log());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pin directory of this test's own under /sys/fs/bpf, removed (the
/// programs detached) when dropped, even when the test fails.
struct Pins(PathBuf);

impl Pins {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/nwtest-h-files-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    /// The eBPF source (tracepoint tier), pinned here, baseline at `state_file`.
    fn args(&self, state_file: &Path) -> Vec<String> {
        vec![
            "--mode".into(),
            "ebpf".into(),
            "--ebpf-tier".into(),
            "tracepoint".into(),
            "--pin".into(),
            "--pin-dir".into(),
            self.0.display().to_string(),
            "--pin-state-file".into(),
            state_file.display().to_string(),
            "--output".into(),
            "prometheus".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ]
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `base` with `--mode proc` replaced by the pinned eBPF source's flags.
fn pinned_ingest(base: Vec<String>, pins: &Pins, state_file: &Path) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut it = base.into_iter();
    while let Some(a) = it.next() {
        if a == "--mode" {
            it.next();
            continue;
        }
        args.push(a);
    }
    args.extend(pins.args(state_file));
    args
}

// ---------------------------------------------------------------- tests

/// Symlinks at every temporary and final name the agent writes through,
/// each pointing at a file this test owns: none is followed. On main the
/// baseline's `ebpf-baseline.tmp` and the counters' `.prometheus.tmp` were
/// fixed names opened through the link (the test's file overwritten), and
/// a symlinked record was read and sent.
#[test]
fn symlinks_planted_at_the_names_the_agent_writes_are_never_followed() {
    require_root!("makes files of another user (nobody) and pins BPF maps");
    let endpoint = Endpoint::start(200);
    let st = State::new();
    let spool = st.mkdir("spool", 0o700);
    let victims = st.mkdir("victims", 0o700);
    let (planted_record, planted_ts) = record(1_000_000_000);
    let mut planted: Vec<(PathBuf, PathBuf, Vec<u8>)> = Vec::new();
    let mut plant = |link: PathBuf, content: &[u8]| {
        let target = victims.join(format!("victim-{}", planted.len()));
        std::fs::write(&target, content).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&target, &link).unwrap();
        planted.push((link, target, content.to_vec()));
    };
    let baseline = st.path("ebpf-baseline");
    // The names main wrote through.
    plant(st.path("ebpf-baseline.tmp"), b"the test's own file\n");
    plant(
        st.path("ebpf-baseline.prometheus.tmp"),
        b"the test's own file\n",
    );
    plant(
        spool.join(".tmp-00000000000000000001"),
        b"the test's own file\n",
    );
    // A record's own name, pointing at a valid record elsewhere.
    plant(spool.join("00000000000000000000.nws"), &planted_record);

    let pins = Pins::new("symlinks");
    let args = pinned_ingest(
        st.ingest_args(&endpoint.url(), &spool, &st.path("host-id")),
        &pins,
        &baseline,
    );
    let mut agent = Agent::spawn(&args, None);
    let counters = st.path("ebpf-baseline.prometheus");
    agent.wait_for(
        "5 snapshots delivered, the baseline and counters written",
        |_| endpoint.received().len() >= 5 && baseline.exists() && counters.exists(),
    );
    let log = agent.log();
    assert_eq!(agent.stop(), Some(0), "{log:#?}");

    for (link, target, content) in &planted {
        assert_eq!(
            std::fs::read(target).unwrap(),
            *content,
            "{} was written through the link at {}",
            target.display(),
            link.display()
        );
        assert_eq!(mode(target), 0o644, "{}", target.display());
    }
    for p in [&baseline, &counters, &st.path("host-id")] {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert!(m.is_file(), "{} is a regular file", p.display());
        assert_eq!(m.mode() & 0o7777, 0o600, "{}", p.display());
    }
    assert!(
        !endpoint.received().contains(&planted_ts),
        "the symlinked record was sent: {:?}",
        endpoint.received()
    );
}

/// Directories another user could write, another user's, or symlinks,
/// and a CA file another user could change: the agent refuses to start
/// (status 1) and says which path, its owner and mode, and what to do.
/// On main each of these started.
#[test]
fn unsafe_directories_and_ca_files_are_refused_at_start() {
    require_root!("makes files of another user (nobody) and pins BPF maps");
    // Nothing listens there: the agent is never meant to get that far.
    let endpoint = "http://127.0.0.1:9";
    let run = |args: Vec<String>| -> (Option<i32>, String) {
        let (code, log) = Agent::spawn(&args, None).exit();
        (code, log.join("\n"))
    };

    // Spool: world-writable without the sticky bit.
    let st = State::new();
    let spool = st.mkdir("spool", 0o777);
    let (code, log) = run(st.ingest_args(endpoint, &spool, &st.path("host-id")));
    assert_eq!(code, Some(1), "{log}");
    let expect = format!(
        "spool directory {} is group- or world-writable (mode 0777) without the sticky bit; owner uid 0",
        spool.display()
    );
    assert!(log.contains(&expect), "{log}");
    assert!(
        log.contains(&format!("chmod go-w {}", spool.display())),
        "{log}"
    );

    // Spool: another user's.
    let st = State::new();
    let spool = st.mkdir("spool", 0o700);
    chown(&spool, Some(NOBODY), Some(NOBODY)).unwrap();
    let (code, log) = run(st.ingest_args(endpoint, &spool, &st.path("host-id")));
    assert_eq!(code, Some(1), "{log}");
    let expect = format!(
        "spool directory {} is owned by uid {NOBODY}, not by root or the agent's user (uid 0); mode 0700",
        spool.display()
    );
    assert!(log.contains(&expect), "{log}");
    assert!(
        log.contains(&format!("chown 0 {}", spool.display())),
        "{log}"
    );

    // Spool: a symlink to a directory of the agent's own.
    let st = State::new();
    let real = st.mkdir("real-spool", 0o700);
    let spool = st.path("spool");
    symlink(&real, &spool).unwrap();
    let (code, log) = run(st.ingest_args(endpoint, &spool, &st.path("host-id")));
    assert_eq!(code, Some(1), "{log}");
    let expect = format!(
        "spool directory {} is a symbolic link: refused",
        spool.display()
    );
    assert!(log.contains(&expect), "{log}");
    assert!(log.contains(&real.display().to_string()), "{log}");
    assert_eq!(
        std::fs::read_dir(&real).unwrap().count(),
        0,
        "nothing written there"
    );

    // Host id: its directory world-writable; the spool under it refused too.
    let st = State::new();
    let ids = st.mkdir("ids", 0o777);
    let spool = st.mkdir("spool", 0o700);
    let (code, log) = run(st.ingest_args(endpoint, &spool, &ids.join("host-id")));
    assert_eq!(code, Some(1), "{log}");
    let expect = format!(
        "host id directory {} is group- or world-writable (mode 0777) without the sticky bit",
        ids.display()
    );
    assert!(log.contains(&expect), "{log}");
    assert!(!ids.join("host-id").exists());

    // Host id: a symlink at its name, never read nor written through.
    let st = State::new();
    let spool = st.mkdir("spool", 0o700);
    let victim = st.write("victim", "the test's own file\n", 0o644);
    symlink(&victim, st.path("host-id")).unwrap();
    let (code, log) = run(st.ingest_args(endpoint, &spool, &st.path("host-id")));
    assert_eq!(code, Some(1), "{log}");
    let expect = format!(
        "host id file {} is a symbolic link: refused",
        st.path("host-id").display()
    );
    assert!(log.contains(&expect), "{log}");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "the test's own file\n"
    );

    // Pin baseline directory: another user's (refused before anything is
    // loaded or pinned).
    let st = State::new();
    let base_dir = st.mkdir("pins-state", 0o700);
    chown(&base_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let pins = Pins::new("refused");
    let args: Vec<String> = [
        "--mode",
        "proc",
        "--once",
        "--output",
        "json",
        "--pin",
        "--pin-dir",
        &pins.0.display().to_string(),
        "--pin-state-file",
        &base_dir.join("ebpf-baseline").display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let (code, log) = run(args);
    assert_eq!(code, Some(1), "{log}");
    let expect = format!(
        "pin baseline directory {} is owned by uid {NOBODY}",
        base_dir.display()
    );
    assert!(log.contains(&expect), "{log}");
    assert!(!pins.0.exists(), "nothing pinned");

    // CA file: group-writable, then another user's.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.self_signed(&ca_key).unwrap().pem();
    for (what, mode_bits, owner, expect) in [
        (
            "group-writable",
            0o664,
            0,
            "is group- or world-writable (mode 0664); owner uid 0",
        ),
        (
            "another user's",
            0o644,
            NOBODY,
            "is owned by uid 65534, not by root or the agent's user (uid 0); mode 0644",
        ),
    ] {
        let st = State::new();
        let spool = st.mkdir("spool", 0o700);
        let ca = st.write("ca.pem", &pem, mode_bits);
        chown(&ca, Some(owner), None).unwrap();
        let mut args = st.ingest_args("https://127.0.0.1:9", &spool, &st.path("host-id"));
        args.extend(["--ingest-ca-file".into(), ca.display().to_string()]);
        let (code, log) = run(args);
        assert_eq!(code, Some(1), "CA {what}: {log}");
        let expect = format!("ingest CA file {} {expect}", ca.display());
        assert!(log.contains(&expect), "CA {what}: {log}");
        assert!(
            log.contains("another user could change what the agent reads from it"),
            "{log}"
        );
    }
}

/// The API key file checked and then read by path (main) lets a swap in
/// between win: a link flipped between the real key and another user's
/// file (which the check refuses) is read as that file. Opened once and
/// checked on the open file, every read is the real key or refused, never
/// the other user's text. 20,000 reads against a thread flipping the link.
#[test]
fn a_key_file_swapped_between_check_and_read_is_never_read() {
    require_root!("makes files of another user (nobody) and pins BPF maps");
    let st = State::new();
    let good = st.write("good-key", "nwk_the_real_key\n", 0o600);
    let evil = st.write("evil-key", "nwk_another_users_text\n", 0o600);
    chown(&evil, Some(NOBODY), Some(NOBODY)).unwrap();
    let link = st.path("api-key-link");
    symlink(&good, &link).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let (stop, link, good, evil) =
            (Arc::clone(&stop), link.clone(), good.clone(), evil.clone());
        let tmp = st.path("api-key-link.new");
        thread::spawn(move || {
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::remove_file(&tmp);
                symlink(if flip { &good } else { &evil }, &tmp).unwrap();
                std::fs::rename(&tmp, &link).unwrap();
                flip = !flip;
            }
        })
    };
    let (mut real, mut refused, mut other) = (0, 0, 0);
    for _ in 0..20_000 {
        match netwatch::config::read_api_key_file(&link) {
            Ok(k) if k.expose() == "nwk_the_real_key" => real += 1,
            Ok(_) => other += 1,
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("owned by uid 65534"), "{e}");
                refused += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    println!("NETWATCH-KEY-SWAP: {real} real, {refused} refused, {other} another user's");
    assert_eq!(
        other, 0,
        "{other} of 20000 reads returned the other user's file"
    );
    assert!(
        real > 0 && refused > 0,
        "the link flipped: {real} real, {refused} refused"
    );
}

/// A key or CA file named through a directory another user can write (a
/// link there can be aimed anywhere) is refused, though the file itself
/// is root's and 0600. On main both were used.
#[test]
fn a_key_or_ca_named_through_a_directory_others_can_write_is_refused() {
    require_root!("makes files of another user (nobody) and pins BPF maps");
    let endpoint = "http://127.0.0.1:9";
    let st = State::new();
    let spool = st.mkdir("spool", 0o700);
    let open = st.mkdir("open", 0o777);
    symlink(st.path("api-key"), open.join("api-key")).unwrap();
    let mut args = st.ingest_args(endpoint, &spool, &st.path("host-id"));
    let at = args.iter().position(|a| a == "--api-key-file").unwrap();
    args[at + 1] = open.join("api-key").display().to_string();
    let (code, log) = Agent::spawn(&args, None).exit();
    let log = log.join("\n");
    assert_eq!(code, Some(2), "{log}");
    let expect = format!(
        "API key file {}: the directory {} above it is group- or world-writable (mode 0777) without the sticky bit",
        open.join("api-key").display(),
        open.display()
    );
    assert!(log.contains(&expect), "{log}");

    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = st.write("ca.pem", &params.self_signed(&ca_key).unwrap().pem(), 0o644);
    symlink(&ca, open.join("ca.pem")).unwrap();
    let mut args = st.ingest_args("https://127.0.0.1:9", &spool, &st.path("host-id"));
    args.extend([
        "--ingest-ca-file".into(),
        open.join("ca.pem").display().to_string(),
    ]);
    let (code, log) = Agent::spawn(&args, None).exit();
    let log = log.join("\n");
    assert_eq!(code, Some(1), "{log}");
    let expect = format!(
        "ingest CA file {}: the directory {} above it is group- or world-writable",
        open.join("ca.pem").display(),
        open.display()
    );
    assert!(log.contains(&expect), "{log}");
}

/// Records planted in the spool while it was open to others (another
/// user's, group-writable, a symlink to a valid record) are skipped,
/// removed and said, never sent: the endpoint receives the agent's own
/// snapshots only. On main all three were sent.
#[test]
fn records_planted_by_another_user_are_not_shipped() {
    require_root!("makes files of another user (nobody) and pins BPF maps");
    let endpoint = Endpoint::start(200);
    let st = State::new();
    let spool = st.mkdir("spool", 0o700);
    let (nobodys, nobodys_ts) = record(1_000_000_000);
    let p0 = spool.join("00000000000000000000.nws");
    std::fs::write(&p0, &nobodys).unwrap();
    std::fs::set_permissions(&p0, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown(&p0, Some(NOBODY), Some(NOBODY)).unwrap();
    let (writable, writable_ts) = record(1_000_000_001);
    let p1 = spool.join("00000000000000000001.nws");
    std::fs::write(&p1, &writable).unwrap();
    std::fs::set_permissions(&p1, std::fs::Permissions::from_mode(0o664)).unwrap();
    let (linked, linked_ts) = record(1_000_000_002);
    let elsewhere = st.write("elsewhere.nws", "", 0o600);
    std::fs::write(&elsewhere, &linked).unwrap();
    symlink(&elsewhere, spool.join("00000000000000000002.nws")).unwrap();

    let mut agent = Agent::spawn(
        &st.ingest_args(&endpoint.url(), &spool, &st.path("host-id")),
        None,
    );
    agent.wait_for("5 snapshots delivered", |_| endpoint.received().len() >= 5);
    let log = agent.log();
    assert_eq!(agent.stop(), Some(0), "{log:#?}");
    let got = endpoint.received();
    for ts in [&nobodys_ts, &writable_ts, &linked_ts] {
        assert!(!got.contains(ts), "planted record {ts} was sent: {got:?}");
    }
    let skipped: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("not a record of the agent's"))
        .collect();
    assert_eq!(skipped.len(), 3, "{log:#?}");
    assert!(
        skipped[0].contains(&p0.display().to_string()) && skipped[0].contains("owned by uid 65534")
    );
    assert!(skipped[1].contains(&p1.display().to_string()) && skipped[1].contains("mode 0664"));
    assert!(skipped[2].contains("symbolic link"));
    assert!(!p0.exists() && !p1.exists());
    assert_eq!(
        std::fs::read(&elsewhere).unwrap(),
        linked,
        "the link's target untouched"
    );
}

/// Under umask 000, every file the agent creates is 0600 and every
/// directory it creates 0700: spool records, host id, pin baseline, its
/// lock and the `/metrics` counters, and their directories, and the BPF
/// pin directory. On main the
/// host id, baseline, lock and counters were 0666 and their directories
/// 0777.
#[test]
fn created_files_are_0600_and_directories_0700_whatever_the_umask() {
    require_root!("makes files of another user (nobody) and pins BPF maps");
    // 503: records stay in the spool, to be looked at.
    let endpoint = Endpoint::start(503);
    let st = State::new();
    let spool = st.path("made/spool/inner");
    let host_id = st.path("made/id/host-id");
    let baseline = st.path("made/pins/ebpf-baseline");
    let pins = Pins::new("umask");
    let args = pinned_ingest(
        st.ingest_args(&endpoint.url(), &spool, &host_id),
        &pins,
        &baseline,
    );
    let mut agent = Agent::spawn(&args, Some(0));
    let counters = st.path("made/pins/ebpf-baseline.prometheus");
    agent.wait_for(
        "3 records spooled, the baseline and counters written",
        |a| {
            *a.snapshots.lock().unwrap() >= 3
                && std::fs::read_dir(&spool).is_ok_and(|d| {
                    d.filter_map(Result::ok)
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".nws"))
                        .count()
                        >= 3
                })
                && baseline.exists()
                && counters.exists()
        },
    );
    let log = agent.log();
    assert_eq!(agent.stop(), Some(0), "{log:#?}");

    for d in [
        "made",
        "made/spool",
        "made/spool/inner",
        "made/id",
        "made/pins",
    ] {
        assert_eq!(mode(&st.path(d)), 0o700, "{d}");
    }
    // The BPF pin directory too (on main: 0777 under umask 000).
    assert_eq!(mode(&pins.0), 0o700, "{}", pins.0.display());
    let mut files = vec![
        host_id.clone(),
        baseline.clone(),
        counters.clone(),
        st.path("made/pins/ebpf-baseline.lock"),
    ];
    let records: Vec<PathBuf> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(records.len() >= 3, "{records:?}");
    files.extend(records);
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
}
