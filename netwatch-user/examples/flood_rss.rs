//! The agent's memory under the issue-16 flood, for `cargo xtask bench
//! --only flood`: runs the given agent binary (`--mode pcap -i lo`,
//! `--interval 1`, JSON out) in a network namespace of its own, sends
//! 200,000 forged DNS queries under 100,000 parent domains and 100,000 SYNs
//! from 50,000 forged sources on its loopback (paced by what the agent's
//! snapshots counted, so nothing is lost), and prints one JSON line: the
//! agent's VmHWM and VmRSS before and after, the largest snapshot and the
//! most alerts in one. A measurement, never a test: nothing is asserted.
//!
//! Usage (root): `flood_rss PATH/TO/netwatch-agent`

// Shared with the flood test, which uses parts this bench does not.
#[allow(dead_code)]
#[path = "../tests/common/flood.rs"]
mod flood;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use netwatch_common::wire::Snapshot;

fn main() {
    let agent = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/netwatch-agent".into());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("flood_rss needs root (a network namespace, a raw socket, libpcap)");
        std::process::exit(2);
    }
    let line = flood::in_new_netns(move || measure(&agent));
    println!("{line}");
}

fn measure(agent: &str) -> String {
    let mut child = Command::new(agent)
        .args([
            "--no-pin",
            "--mode",
            "pcap",
            "-i",
            "lo",
            "--interval",
            "1",
            "--output",
            "json",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {agent}: {e}"));
    let pid = child.id();
    let seen = Arc::new(AtomicU64::new(0));
    let snapshots = Arc::new(AtomicUsize::new(0));
    let max_json = Arc::new(AtomicUsize::new(0));
    let max_alerts = Arc::new(AtomicUsize::new(0));
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = {
        let (seen, snapshots, max_json, max_alerts) = (
            Arc::clone(&seen),
            Arc::clone(&snapshots),
            Arc::clone(&max_json),
            Arc::clone(&max_alerts),
        );
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(s) = serde_json::from_str::<Snapshot>(&line) else {
                    continue;
                };
                snapshots.fetch_add(1, Ordering::SeqCst);
                max_json.fetch_max(line.len(), Ordering::SeqCst);
                max_alerts.fetch_max(s.alerts.map_or(0, |a| a.len()), Ordering::SeqCst);
                let dns = s.dns_analytics.map_or(0, |d| d.total_queries);
                seen.fetch_add(dns, Ordering::SeqCst);
            }
        })
    };
    // Started and settled: two snapshots out.
    let until = Instant::now() + Duration::from_secs(60);
    while snapshots.load(Ordering::SeqCst) < 2 && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    let before = flood::rss_kib(pid);
    let started = Instant::now();
    let sent = flood::run(&flood::Plan::ISSUE, &mut |s: &flood::Sent| {
        let until = Instant::now() + Duration::from_secs(20);
        while seen.load(Ordering::SeqCst) < u64::from(s.dns) && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
    })
    .expect("sending the flood");
    let flood_s = started.elapsed().as_secs_f64();
    thread::sleep(Duration::from_secs(3));
    let after = flood::rss_kib(pid);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let _ = child.wait();
    let _ = reader.join();
    let mib = |kib: u64| kib as f64 / 1024.0;
    serde_json::json!({
        "dns_queries": sent.dns,
        "syns": sent.syns,
        "dns_counted": seen.load(Ordering::SeqCst),
        "flood_s": (flood_s * 10.0).round() / 10.0,
        "before_hwm_mib": mib(before.0),
        "before_rss_mib": mib(before.1),
        "after_hwm_mib": mib(after.0),
        "after_rss_mib": mib(after.1),
        "hwm_growth_mib": mib(after.0.saturating_sub(before.0)),
        "rss_growth_mib": mib(after.1.saturating_sub(before.1)),
        "snapshots": snapshots.load(Ordering::SeqCst),
        "max_snapshot_json_bytes": max_json.load(Ordering::SeqCst),
        "max_alerts": max_alerts.load(Ordering::SeqCst),
    })
    .to_string()
}
