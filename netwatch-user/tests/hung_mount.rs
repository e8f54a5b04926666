//! A hung mount never stalls the tick: the real agent runs beside a real
//! FUSE filesystem (bindfs) whose source looks like a disk (`/dev/shm/…`,
//! so the agent reports its usage), and the test stops the FUSE server
//! with SIGSTOP. Every `statvfs` on that mount then blocks until the server
//! resumes. Snapshots must keep coming every interval, the hung mount's
//! row must be left out with a log line naming it, the row must come back
//! once the server resumes, and the agent must exit on SIGTERM while a
//! `statvfs` is still stuck.
//!
//! The mount lives in a private mount namespace (`unshare -m`) that only
//! the agent and bindfs share, so no other process on the host (other
//! agents under test included) ever sees the hung mount. The namespace,
//! and the mount with it, goes away when both processes are gone; the
//! guard below makes sure they are, even when an assertion fails.
//!
//! Needs root (mount namespaces, FUSE) and bindfs (`cargo xtask setup`
//! installs it).
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use netwatch_common::wire::Snapshot;

const AGENT: &str = env!("CARGO_BIN_EXE_netwatch-agent");

/// The rest of what these tests need, beside root.
fn require_bindfs() {
    assert!(
        Command::new("bindfs")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "bindfs is missing: run `cargo xtask setup` (or apt-get install bindfs)"
    );
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions; a gone pid is ESRCH.
    unsafe { libc::kill(pid, sig) };
}

/// Stops everything the test started: the agent, then the FUSE server
/// (continued first, so it can exit). Their mount namespace, and the mount
/// in it, dies with them. Removes the source directory.
struct Guard {
    agent: Child,
    bindfs: Option<i32>,
    source: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        if let Some(pid) = self.bindfs {
            signal(pid, libc::SIGCONT);
            signal(pid, libc::SIGTERM);
            let proc_dir = PathBuf::from(format!("/proc/{pid}"));
            let deadline = Instant::now() + Duration::from_secs(5);
            while proc_dir.exists() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            signal(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.source);
    }
}

/// One snapshot line, parsed, with when it arrived.
type Line = (Instant, Snapshot);

fn has_row(s: &Snapshot, device: &str) -> bool {
    s.disk_usage
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|d| d.device == device)
}

/// Wait up to `secs` seconds (counted from `from`, for the failure
/// message) for a snapshot with a disk row for `device`.
fn wait_for_row(
    snaps: &mpsc::Receiver<Line>,
    logs: &mpsc::Receiver<String>,
    device: &str,
    secs: u64,
    from: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match snaps.recv_timeout(left) {
            Ok((_, s)) if has_row(&s, device) => return,
            Ok(_) => {}
            Err(_) => panic!(
                "no snapshot with a disk row for {device} within {secs} s {from}; log: {:?}",
                logs.try_iter().collect::<Vec<_>>()
            ),
        }
    }
}

#[test]
fn a_hung_fuse_mount_costs_its_row_never_a_snapshot() {
    require_root!("mounts a FUSE filesystem in a mount namespace");
    require_bindfs();
    let name = format!("nwtest-hung-{}", std::process::id());
    let source = PathBuf::from(format!("/dev/shm/{name}"));
    std::fs::create_dir_all(&source).expect("creating the FUSE source under /dev/shm");
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("creating the mount point");
    let pid_file = dir.path().join("bindfs.pid");
    // bindfs in the foreground (so `$!` is its pid), in the background of
    // the shell; the shell then becomes the agent, in the same namespace.
    let script = format!(
        "bindfs -f '{src}' '{mnt}' & echo $! > '{pid}'; \
         i=0; until mountpoint -q '{mnt}'; do i=$((i+1)); \
         [ $i -gt 100 ] && {{ echo 'bindfs did not mount' >&2; exit 1; }}; sleep 0.05; done; \
         exec '{agent}' --no-pin --mode proc --output json --interval 0.5",
        src = source.display(),
        mnt = mnt.display(),
        pid = pid_file.display(),
        agent = AGENT,
    );
    let mut agent = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting unshare + bindfs + netwatch-agent");
    let stdout = agent.stdout.take().expect("stdout");
    let stderr = agent.stderr.take().expect("stderr");
    let mut guard = Guard {
        agent,
        bindfs: None,
        source: source.clone(),
        dir,
    };
    let (snap_tx, snaps) = mpsc::channel::<Line>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(s) = serde_json::from_str::<Snapshot>(&line) {
                let _ = snap_tx.send((Instant::now(), s));
            }
        }
    });
    let (log_tx, logs) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });
    let device = source.display().to_string();

    // The mount is reported while its server runs.
    wait_for_row(&snaps, &logs, &device, 30, "of the start");
    let bindfs: i32 = std::fs::read_to_string(guard.dir.path().join("bindfs.pid"))
        .expect("bindfs pid file")
        .trim()
        .parse()
        .expect("bindfs pid");
    guard.bindfs = Some(bindfs);

    // Hang it.
    signal(bindfs, libc::SIGSTOP);
    let stopped_at = Instant::now();
    let _: Vec<Line> = snaps.try_iter().collect();
    thread::sleep(Duration::from_secs(4));
    let during: Vec<Line> = snaps.try_iter().collect();
    let log: Vec<String> = logs.try_iter().collect();
    println!(
        "NETWATCH-HUNG-MOUNT: {} snapshots in the 4 s the mount hung",
        during.len()
    );
    // 8 intervals of 0.5 s; a generous bound for a loaded machine. On the
    // old code this is 0: the tick waits in statvfs.
    assert!(
        during.len() >= 5,
        "{} snapshots in the 4 s the mount hung (expected about 8); log: {log:?}",
        during.len()
    );
    // The tick that was under way when the server stopped may still have
    // had its answer; every later one leaves the row out.
    let late: Vec<&Line> = during
        .iter()
        .filter(|(at, _)| at.duration_since(stopped_at) > Duration::from_secs(1))
        .collect();
    assert!(!late.is_empty(), "no snapshot after the first second");
    for (_, s) in &late {
        assert!(
            !has_row(s, &device),
            "the hung mount {device} still has a fresh row: {:?}",
            s.disk_usage
        );
    }
    let mnt_text = mnt.display().to_string();
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("statvfs") && l.contains(&mnt_text))
            .count(),
        1,
        "exactly one log line names the hung mount; log: {log:?}"
    );

    // It answers again: the row comes back, and a line says so.
    signal(bindfs, libc::SIGCONT);
    wait_for_row(&snaps, &logs, &device, 5, "of SIGCONT");
    let log: Vec<String> = logs.try_iter().collect();
    assert!(
        log.iter()
            .any(|l| l.contains(&mnt_text) && l.contains("answers again")),
        "a log line says the mount answers again; log: {log:?}"
    );

    // Hung again, the agent still stops on SIGTERM: the stuck statvfs
    // thread is never joined.
    signal(bindfs, libc::SIGSTOP);
    thread::sleep(Duration::from_secs(1));
    signal(guard.agent.id() as i32, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = guard.agent.try_wait().expect("waiting for the agent") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit within 10 s of SIGTERM while a statvfs hung"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the agent exits 0 on SIGTERM: {status}");
}
