//! Least privilege, end to end: the real agent binary, started as root and
//! as an unprivileged uid holding only the ambient capabilities of
//! `packaging/netwatch-agent.service` (via util-linux `setpriv`), drops to
//! exactly the documented steady-state set on every thread (read from
//! `/proc/<agent>/task/*/status` once it prints snapshots), still counts a
//! known transfer exactly, and refuses clearly when a needed capability is
//! missing. Needs root.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::serial;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use netwatch_common::wire::Snapshot;

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");
const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/netwatch-agent.service"
);
const SETPRIV: &str = "/usr/bin/setpriv";
const NOBODY: &str = "65534";

const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_BPF: u64 = 1 << 39;

/// The documented steady state of one source (README "Least privilege").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sets {
    eff: u64,
    prm: u64,
    inh: u64,
    amb: u64,
    bnd: u64,
    no_new_privs: bool,
}

fn documented(source: &str) -> Sets {
    match source {
        "ebpf" => {
            // Before 5.19, bpf() map reads need CAP_BPF when
            // unprivileged_bpf_disabled is set.
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
            let mut v = release
                .trim()
                .split(|c: char| !c.is_ascii_digit())
                .map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
            let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
                .map(|s| s.trim() != "0")
                .unwrap_or(true);
            let bpf = if (major, minor) < (5, 19) && disabled {
                CAP_BPF
            } else {
                0
            };
            let keep = CAP_SYS_PTRACE | bpf;
            Sets {
                eff: keep,
                prm: keep,
                inh: 0,
                amb: 0,
                bnd: keep,
                no_new_privs: true,
            }
        }
        "ss" => {
            let child = CAP_SYS_PTRACE | CAP_DAC_READ_SEARCH;
            Sets {
                eff: CAP_SYS_PTRACE,
                prm: child,
                inh: child,
                amb: child,
                bnd: child,
                no_new_privs: true,
            }
        }
        other => panic!("no documented set for source {other}"),
    }
}

fn parse_status(text: &str) -> Sets {
    let field = |key: &str| -> &str {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("{key} missing from status"))
            .trim()
    };
    let hex = |key: &str| u64::from_str_radix(field(key), 16).unwrap();
    Sets {
        eff: hex("CapEff"),
        prm: hex("CapPrm"),
        inh: hex("CapInh"),
        amb: hex("CapAmb"),
        bnd: hex("CapBnd"),
        no_new_privs: field("NoNewPrivs") == "1",
    }
}

/// Every thread of `pid`: (thread name, its sets).
fn thread_sets(pid: u32) -> Vec<(String, Sets)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = e.unwrap().path().join("status");
        let Ok(text) = std::fs::read_to_string(&status) else {
            continue; // the thread exited
        };
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .unwrap_or("")
            .trim()
            .to_string();
        out.push((name, parse_status(&text)));
    }
    assert!(!out.is_empty());
    out
}

/// The capabilities the unit grants (`AmbientCapabilities=`), as names.
fn unit_ambient() -> Vec<String> {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("AmbientCapabilities="))
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert!(!caps.is_empty(), "the unit grants ambient capabilities");
    caps
}

/// `+bpf,+perfmon,…` for setpriv.
fn setpriv_list(caps: &[String]) -> String {
    caps.iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A copy of the agent binary an unprivileged uid can execute.
fn agent_copy() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("netwatch-agent");
    std::fs::copy(AGENT, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, bin)
}

/// How to start the agent: as root, or as nobody with only `ambient`.
fn command(agent: &Path, ambient: Option<&[String]>, args: &[&str]) -> Command {
    let mut c = match ambient {
        None => Command::new(agent),
        Some(caps) => {
            assert!(
                Path::new(SETPRIV).exists(),
                "{SETPRIV} (util-linux) is needed to start the agent unprivileged"
            );
            let list = setpriv_list(caps);
            let mut c = Command::new(SETPRIV);
            c.args([
                "--reuid",
                NOBODY,
                "--regid",
                NOBODY,
                "--clear-groups",
                "--inh-caps",
                &list,
                "--ambient-caps",
                &list,
                "--bounding-set",
                &list,
            ])
            .arg(agent);
            c
        }
    };
    c.args(args)
        .current_dir("/")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

struct Running {
    child: Child,
    snapshots: mpsc::Receiver<Snapshot>,
    log: mpsc::Receiver<String>,
}

impl Running {
    fn start(mut c: Command) -> Self {
        let mut child = c.spawn().expect("starting the agent");
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (snap_tx, snapshots) = mpsc::channel();
        let (log_tx, log) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let snap: Snapshot = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a Snapshot ({e}): {line}"));
                let _ = snap_tx.send(snap);
            }
        });
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = log_tx.send(line);
            }
        });
        Self {
            child,
            snapshots,
            log,
        }
    }

    fn next_snapshot(&mut self) -> Snapshot {
        self.snapshots
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = self.child.kill();
                panic!(
                    "no snapshot from the agent; log: {:#?}",
                    self.log.try_iter().collect::<Vec<_>>()
                )
            })
    }

    /// SIGINT, then every snapshot left (the final partial one included).
    fn stop(mut self) -> Vec<Snapshot> {
        // SAFETY: kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "agent exits cleanly on SIGINT: {status}");
        thread::sleep(Duration::from_millis(100));
        self.snapshots.try_iter().collect()
    }
}

fn source_of(s: &Snapshot) -> String {
    s.collector.as_ref().expect("collector info").source.clone()
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

/// Assert every thread of the agent holds exactly the documented set.
fn assert_dropped(agent: &Running, source: &str) {
    let want = documented(source);
    // The drop happens before the tick loop: the first snapshot is after it.
    for (name, got) in thread_sets(agent.child.id()) {
        assert_eq!(
            got, want,
            "thread {name:?} of the {source} agent: CapEff/CapPrm/CapInh/CapAmb/CapBnd/NoNewPrivs"
        );
    }
}

/// A TCP connection of this process that stays open, so `ss` sees it.
struct Held {
    client: TcpStream,
    server: TcpStream,
}

impl Held {
    fn open() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        Self { client, server }
    }

    /// Exactly `n` bytes client → server.
    fn send(&mut self, n: usize) {
        let data = vec![5u8; n];
        let mut server = self.server.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; n];
            server.read_exact(&mut buf).unwrap();
        });
        self.client.write_all(&data).unwrap();
        reader.join().unwrap();
    }
}

/// Run the agent (`ambient`: as nobody with those capabilities), check the
/// drop, move `n` bytes over a held connection, and return the source and
/// this process's bytes summed over every snapshot.
fn run_and_count(mode: &str, ambient: Option<&[String]>, n: usize) -> (String, (u64, u64)) {
    let (_dir, bin) = agent_copy();
    let mut held = Held::open();
    let mut agent = Running::start(command(
        &bin,
        ambient,
        &[
            "--no-pin",
            "--mode",
            mode,
            "--output",
            "json",
            "--interval",
            "1",
        ],
    ));
    let first = agent.next_snapshot();
    let source = source_of(&first);
    assert_dropped(&agent, &source);
    held.send(n);
    // Two more ticks so the bytes are read while the connection is open.
    let mut snaps = vec![first, agent.next_snapshot(), agent.next_snapshot()];
    assert_dropped(&agent, &source);
    snaps.extend(agent.stop());
    let me = std::process::id();
    let exe = std::env::current_exe().unwrap();
    let row = snaps
        .iter()
        .flat_map(|s| s.processes.as_deref().unwrap_or_default())
        .find(|p| p.pid == Some(me))
        .unwrap_or_else(|| panic!("{mode} as {ambient:?}: no row for this process"));
    // Kept CAP_SYS_PTRACE: the exe link of a root process is still read.
    assert_eq!(
        row.cmd.as_deref(),
        exe.to_str(),
        "{mode}: exe after the drop"
    );
    assert_eq!(
        row.user.as_deref(),
        Some("root"),
        "{mode}: owner after the drop"
    );
    let total = snaps
        .iter()
        .map(my_bytes)
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    drop(held);
    let who = if ambient.is_some() { "nobody" } else { "root" };
    eprintln!("--mode {mode} as {who}: source {source}, this process {total:?} bytes");
    (source, total)
}

#[test]
fn as_root_the_agent_keeps_exactly_the_documented_set_on_every_thread() {
    require_root!("starts the agent as root and switches uids");
    let _serial = serial();
    // auto: eBPF if it loads here, else ss.
    let (source, total) = run_and_count("auto", None, 300_001);
    assert!(source == "ebpf" || source == "ss", "source {source}");
    assert_eq!(total, (300_001, 300_001), "{source}: the transfer, exactly");
    let (source, total) = run_and_count("ss", None, 200_003);
    assert_eq!(source, "ss");
    assert_eq!(total, (200_003, 200_003), "ss: the transfer, exactly");
}

#[test]
fn unprivileged_with_the_units_ambient_set_every_mode_counts_exactly() {
    require_root!("starts the agent as root and switches uids");
    let _serial = serial();
    let unit = unit_ambient();
    // eBPF when it loads on this kernel (it needs the same set as root).
    let (source, total) = run_and_count("auto", Some(&unit), 400_009);
    assert!(source == "ebpf" || source == "ss", "source {source}");
    assert_eq!(total, (400_009, 400_009), "{source} as nobody");
    // ss as nobody: its child `ss` reads root's /proc/<pid>/fd through the
    // ambient set, so this root process's socket still has its owner.
    let (source, total) = run_and_count("ss", Some(&unit), 100_007);
    assert_eq!(source, "ss");
    assert_eq!(total, (100_007, 100_007), "ss as nobody");
}

/// Start the agent as nobody with `caps`, expect a refusal naming `missing`.
fn assert_refused(mode: &str, caps: &[String], missing: &str) {
    let (_dir, bin) = agent_copy();
    let out = command(
        &bin,
        Some(caps),
        &["--no-pin", "--mode", mode, "--output", "json", "--once"],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{mode} without {missing} must refuse to start; stderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{mode}: no snapshot when refused");
    let want = format!("missing from the effective set: {missing}");
    assert!(stderr.contains(&want), "{mode}: {want:?} in {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_missing_capability_is_refused_by_name() {
    require_root!("starts the agent as root and switches uids");
    let _serial = serial();
    let without =
        |name: &str| -> Vec<String> { unit_ambient().into_iter().filter(|c| c != name).collect() };
    assert_refused("ss", &without("CAP_SYS_PTRACE"), "CAP_SYS_PTRACE");
    assert_refused("ss", &without("CAP_DAC_READ_SEARCH"), "CAP_DAC_READ_SEARCH");
    assert_refused("ebpf", &without("CAP_BPF"), "CAP_BPF");
    assert_refused("pcap", &without("CAP_NET_RAW"), "CAP_NET_RAW");
}
