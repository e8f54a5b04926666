//! `cargo xtask bench` (root): measurements, never tests. Runs netwatch in
//! each mode it can run here side by side with the peers users would pick
//! instead (bandwhich, nethogs, a bpftrace one-liner, tcptop), repeated and
//! interleaved, on loopback-only workloads whose bytes are known exactly
//! (`netwatch-user/examples/bench_load.rs`), and writes `BENCHMARKS.md`,
//! `bench/plots/*.svg` and `bench/results.json`. Sections: accuracy,
//! overhead and monitor cost, scale, per-event BPF cost, cold start.
//! `--vm` adds the per-event cost of the fentry/kprobe tiers in the QEMU
//! guest (software emulation: compare tiers there with each other only).
//! No figure here is asserted anywhere; `cargo xtask test` never runs this.

mod dns;
mod flood;
pub(crate) mod monitor;
pub(crate) mod procfs;
mod report;
mod stats;
mod tools;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::vm::{self, workspace_root, GuestCommand, VmOptions};
use monitor::{Kind, Running, Tools};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A short smoke run: 2 repetitions, smaller workloads, shorter windows.
    #[arg(long)]
    pub quick: bool,
    /// Repetitions of every comparison (interleaved) [default: 5, quick: 2].
    #[arg(long)]
    pub reps: Option<usize>,
    /// Send/receive calls per protocol in the per-event cost workload.
    #[arg(long, default_value_t = 50_000)]
    pub calls: u32,
    /// Sections to run (comma-separated: overhead, scale, cost, cold;
    /// `flood` alone runs only the agent's memory under the issue-16 flood,
    /// writing `bench/flood.json`; `dns` alone only the DNS capture's cost,
    /// writing `bench/dns_capture.json`).
    #[arg(long, default_value = "overhead,scale,cost,cold")]
    pub only: String,
    /// Also measure the fentry and kprobe tiers' per-event cost in the QEMU guest.
    #[arg(long)]
    pub vm: bool,
}

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub quick: bool,
    pub reps: usize,
    pub transfer_bytes: u64,
    pub small_bytes: u64,
    pub conns: u64,
    pub udp_datagrams: u64,
    pub window_s: u64,
    pub sockets: Vec<u64>,
    pub rates: Vec<u64>,
    pub active_per_s: u64,
    pub calls: u32,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let q = args.quick;
        Plan {
            quick: q,
            reps: args.reps.unwrap_or(if q { 2 } else { 5 }),
            transfer_bytes: if q { 512 << 20 } else { 4 << 30 },
            small_bytes: 16 << 20,
            conns: 200,
            udp_datagrams: 2000,
            window_s: if q { 3 } else { 4 },
            sockets: vec![100, 1_000, 10_000, 50_000],
            rates: vec![500, 2_000, 5_000],
            active_per_s: 500,
            calls: args.calls,
        }
    }
}

/// What a workload reported: its own wall time and CPU, and the exact
/// application bytes per process.
#[derive(Debug, Clone, Default)]
pub struct Truth {
    pub wall: f64,
    pub cpu: f64,
    pub procs: Vec<(u32, String, u64, u64)>,
    pub achieved: Option<f64>,
}

fn parse_truth(line: &str) -> Result<Truth> {
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).with_context(|| format!("workload said {line:?}"))?;
    let procs = v["procs"]
        .as_array()
        .context("procs")?
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().unwrap_or(0) as u32,
                p["comm"].as_str().unwrap_or("").to_string(),
                p["tx"].as_u64().unwrap_or(0),
                p["rx"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    Ok(Truth {
        wall: v["wall_s"].as_f64().unwrap_or(f64::NAN),
        cpu: v["cpu_s"].as_f64().unwrap_or(f64::NAN),
        procs,
        achieved: v["achieved_per_s"].as_f64(),
    })
}

/// The accuracy workloads: (label, symlink stem, bench_load arguments).
fn workloads(p: &Plan) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let small = p.small_bytes.to_string();
    let conns = p.conns.to_string();
    vec![
        (
            "bulk transfer (TCP, 4 KiB writes)",
            "xfer",
            s(&["transfer", &p.transfer_bytes.to_string(), "v4"]),
        ),
        (
            "long transfer paced over 3 s",
            "paced",
            s(&["paced", &(64u64 << 20).to_string(), "3", "v4"]),
        ),
        (
            "connections shorter than an interval",
            "short",
            s(&["short", &conns, "2000"]),
        ),
        (
            "server replies and closes",
            "reply",
            s(&["reply-close", &conns, "300", "5000"]),
        ),
        (
            "UDP (echoed datagrams)",
            "udp",
            s(&["udp", &p.udp_datagrams.to_string(), "1000", "v4"]),
        ),
        ("IPv6 transfer", "ipv6", s(&["transfer", &small, "v6"])),
        ("both ends in one process", "same", s(&["same", &small])),
    ]
}

/// Symlinks `nwb-<stem>-c` / `-s` to bench_load so each role has its own
/// process name (bandwhich attributes by name only).
pub(crate) fn links(bench_load: &Path, dir: &Path, stems: &[&str]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for stem in stems {
        for end in ["c", "s"] {
            let l = dir.join(format!("nwb-{stem}-{end}"));
            let _ = std::fs::remove_file(&l);
            std::os::unix::fs::symlink(bench_load, &l)
                .with_context(|| format!("linking {}", l.display()))?;
        }
    }
    Ok(())
}

pub(crate) fn run_workload(dir: &Path, stem: &str, args: &[String]) -> Result<Truth> {
    let exe = dir.join(format!("nwb-{stem}-c"));
    let out = Command::new(&exe)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!("workload {stem} {args:?} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse_truth(text.lines().last().unwrap_or(""))
}

pub(crate) fn build(root: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let rel = build_release(root, &["bpf_cost", "bench_load"])?;
    Ok((
        rel.join("netwatch-agent"),
        rel.join("examples/bpf_cost"),
        rel.join("examples/bench_load"),
    ))
}

/// Build the release agent and the named examples of netwatch-user; the
/// release directory they are in.
pub(crate) fn build_release(root: &Path, examples: &[&str]) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut args = vec![
        "build",
        "--release",
        "-p",
        "netwatch-user",
        "--bin",
        "netwatch-agent",
    ];
    for e in examples {
        args.extend(["--example", e]);
    }
    eprintln!("xtask bench: cargo {}", args.join(" "));
    let st = Command::new(cargo)
        .current_dir(root)
        .args(&args)
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!(
            "building the agent and the examples {} failed ({st})",
            examples.join(", ")
        );
    }
    Ok(root.join("target/release"))
}

/// One monitor session of the overhead + accuracy section.
#[derive(Debug, Clone)]
pub struct Session {
    pub kind: Kind,
    pub rep: usize,
    pub wall: f64,
    pub cpu: f64,
    /// Monitor CPU seconds during the long transfer.
    pub mon_cpu: f64,
    pub mon_hwm: f64,
    /// Monitor CPU seconds over the whole session, and the session's length.
    pub mon_cpu_session: f64,
    pub session_s: f64,
    /// (workload label, tx ratio, rx ratio)
    pub accuracy: Vec<(&'static str, f64, f64)>,
    pub error: Option<String>,
}

fn overhead(plan: &Plan, tools: &Tools, kinds: &[Kind], dir: &Path, out: &Path) -> Vec<Session> {
    let wls = workloads(plan);
    let mut all = Vec::new();
    for rep in 0..plan.reps {
        let mut order = kinds.to_vec();
        order.rotate_left(rep % kinds.len());
        for &kind in &order {
            eprintln!("xtask bench: overhead rep {} {}", rep + 1, kind.label());
            let r = session(tools, kind, rep, &wls, dir, out);
            let s = r.unwrap_or_else(|e| Session {
                kind,
                rep,
                wall: f64::NAN,
                cpu: f64::NAN,
                mon_cpu: f64::NAN,
                mon_hwm: f64::NAN,
                mon_cpu_session: f64::NAN,
                session_s: f64::NAN,
                accuracy: Vec::new(),
                error: Some(format!("{e:#}")),
            });
            if let Some(e) = &s.error {
                eprintln!("xtask bench:   {}: {e}", kind.label());
            }
            all.push(s);
        }
    }
    all
}

type Wl = (&'static str, &'static str, Vec<String>);

fn session(
    tools: &Tools,
    kind: Kind,
    rep: usize,
    wls: &[Wl],
    dir: &Path,
    out: &Path,
) -> Result<Session> {
    let mon = Running::start(kind, tools, out, &format!("r{rep}"))?;
    // Let the monitor settle past its start-up work.
    std::thread::sleep(Duration::from_millis(500));
    let c0 = mon.as_ref().map(|m| m.cpu()).unwrap_or(f64::NAN);
    let (label, stem, args) = &wls[0];
    let xfer = run_workload(dir, stem, args)?;
    let c1 = mon.as_ref().map(|m| m.cpu()).unwrap_or(f64::NAN);
    let mut truths = vec![(*label, xfer.clone())];
    if mon.is_some() {
        for (label, stem, args) in &wls[1..] {
            truths.push((label, run_workload(dir, stem, args)?));
        }
        // Two more intervals so the last bytes reach an output.
        std::thread::sleep(Duration::from_millis(2500));
    }
    let hwm = mon
        .as_ref()
        .and_then(|m| procfs::status_kb(m.pid(), "VmHWM"))
        .map(|b| b as f64)
        .unwrap_or(f64::NAN);
    let (cpu_all, secs_all) = mon
        .as_ref()
        .map(|m| (m.cpu(), m.started.elapsed().as_secs_f64()))
        .unwrap_or((f64::NAN, f64::NAN));
    let mut accuracy = Vec::new();
    if let Some(m) = mon {
        let text = m.stop()?;
        let a = monitor::parse(kind, &text);
        for (label, t) in &truths {
            let (mut tx, mut rx, mut ttx, mut trx) = (0u64, 0u64, 0u64, 0u64);
            for (pid, comm, ptx, prx) in &t.procs {
                let (gtx, grx) = a.get(*pid, comm);
                tx += gtx;
                rx += grx;
                ttx += ptx;
                trx += prx;
            }
            let r = |got: u64, want: u64| {
                if want == 0 {
                    f64::NAN
                } else {
                    got as f64 / want as f64
                }
            };
            accuracy.push((*label, r(tx, ttx), r(rx, trx)));
        }
    }
    Ok(Session {
        kind,
        rep,
        wall: xfer.wall,
        cpu: xfer.cpu,
        mon_cpu: c1 - c0,
        mon_hwm: hwm,
        mon_cpu_session: cpu_all,
        session_s: secs_all,
        accuracy,
        error: None,
    })
}

/// One scale measurement.
#[derive(Debug, Clone)]
pub struct ScalePoint {
    pub kind: Kind,
    pub sockets: u64,
    pub rate: u64,
    pub rep: usize,
    pub cpu_per_interval: f64,
    pub rss: f64,
    pub hwm: f64,
    pub memlock: f64,
    pub lost: u64,
    pub exact_tx: f64,
    pub exact_rx: f64,
    pub achieved: f64,
    pub error: Option<String>,
}

/// The scale rows: (agent, open sockets, new connections/s). (ebpf, 0, 0)
/// is the idle agent: the workload holds no socket and moves nothing.
fn scale_rows(plan: &Plan) -> Vec<(Kind, u64, u64)> {
    let mut rows: Vec<(Kind, u64, u64)> = vec![(Kind::NetwatchEbpf, 0, 0)];
    rows.extend(plan.sockets.iter().map(|&n| (Kind::NetwatchEbpf, n, 0)));
    rows.extend(plan.rates.iter().map(|&r| (Kind::NetwatchEbpf, 0, r)));
    rows.push((Kind::NetwatchSs, 10_000, 0));
    rows
}

fn scale(plan: &Plan, tools: &Tools, dir: &Path, out: &Path) -> Vec<ScalePoint> {
    let rows = scale_rows(plan);
    let mut all = Vec::new();
    for rep in 0..plan.reps {
        for &(kind, sockets, rate) in &rows {
            eprintln!(
                "xtask bench: scale rep {} {} sockets={sockets} rate={rate}",
                rep + 1,
                kind.label()
            );
            let p =
                scale_point(plan, tools, kind, sockets, rate, rep, dir, out).unwrap_or_else(|e| {
                    ScalePoint {
                        kind,
                        sockets,
                        rate,
                        rep,
                        cpu_per_interval: f64::NAN,
                        rss: f64::NAN,
                        hwm: f64::NAN,
                        memlock: f64::NAN,
                        lost: 0,
                        exact_tx: f64::NAN,
                        exact_rx: f64::NAN,
                        achieved: f64::NAN,
                        error: Some(format!("{e:#}")),
                    }
                });
            if let Some(e) = &p.error {
                eprintln!("xtask bench:   {e}");
            }
            all.push(p);
        }
    }
    all
}

#[allow(clippy::too_many_arguments)]
fn scale_point(
    plan: &Plan,
    tools: &Tools,
    kind: Kind,
    sockets: u64,
    rate: u64,
    rep: usize,
    dir: &Path,
    out: &Path,
) -> Result<ScalePoint> {
    let tag = format!("scale-s{sockets}-r{rate}-{rep}");
    if (sockets, rate) == (0, 0) {
        quiet_time_wait();
    }
    let mon = Running::start(kind, tools, out, &tag)?.context("no agent")?;
    // Open sockets: measured once their creation burst is over (two
    // intervals), since the rate rows measure creation. Idle: a longer
    // window, as CPU time comes in 10 ms ticks (0.25 % of a 4 s window).
    let (settle_ms, window_s) = match (sockets, rate) {
        (0, 0) => (1_500, plan.window_s * 5),
        (_, 0) => (2_500, plan.window_s),
        _ => (500, plan.window_s),
    };
    let secs = (window_s + settle_ms / 1000 + 2).to_string();
    let active = if sockets == 0 { 0 } else { plan.active_per_s };
    let args: Vec<String> = if rate == 0 {
        vec!["idle".into(), sockets.to_string(), active.to_string(), secs]
    } else {
        vec!["rate".into(), rate.to_string(), secs]
    };
    let mut child = Command::new(dir.join("nwb-scale-c"))
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the scale workload")?;
    let mut stdout = BufReader::new(child.stdout.take().context("workload stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        mon.stop()?;
        bail!("scale workload did not start: {line:?}");
    }
    std::thread::sleep(Duration::from_millis(settle_ms));
    let c0 = mon.cpu();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(window_s));
    let c1 = mon.cpu();
    let elapsed = t0.elapsed().as_secs_f64();
    let pid = mon.pid();
    let rss = procfs::status_kb(pid, "VmRSS").unwrap_or(0) as f64;
    let memlock = procfs::map_memlock(pid) as f64;
    let mut rest = String::new();
    stdout.read_to_string(&mut rest)?;
    let st = child.wait()?;
    if !st.success() {
        mon.stop()?;
        bail!("scale workload failed ({st})");
    }
    let truth = parse_truth(rest.lines().last().unwrap_or(""))?;
    std::thread::sleep(Duration::from_millis(2500));
    let hwm = procfs::status_kb(pid, "VmHWM").unwrap_or(0) as f64;
    let out_file = mon.out.clone();
    let text = mon.stop()?;
    let a = monitor::parse(kind, &text);
    // The agent's output at 50,000 sockets is large: keep only the figures.
    let _ = std::fs::remove_file(out_file);
    let (mut gtx, mut grx, mut ttx, mut trx) = (0u64, 0u64, 0u64, 0u64);
    for (pid, comm, tx, rx) in &truth.procs {
        let (g, r) = a.get(*pid, comm);
        gtx += g;
        grx += r;
        ttx += tx;
        trx += rx;
    }
    Ok(ScalePoint {
        kind,
        sockets,
        rate,
        rep,
        cpu_per_interval: (c1 - c0) / elapsed,
        rss,
        hwm,
        memlock,
        lost: a.lost_records,
        // Nothing to attribute (the idle row): no ratio.
        exact_tx: if ttx == 0 {
            f64::NAN
        } else {
            gtx as f64 / ttx as f64
        },
        exact_rx: if trx == 0 {
            f64::NAN
        } else {
            grx as f64 / trx as f64
        },
        achieved: truth.achieved.unwrap_or(f64::NAN),
        error: None,
    })
}

/// Wait (at most 70 s) until the TIME_WAIT sockets earlier rows left
/// behind have expired (the kernel keeps them 60 s): the idle row measures
/// a quiet server, not one whose thousands of TIME_WAIT sockets are
/// expiring, which is TCP state churn the agent follows.
fn quiet_time_wait() {
    let tw = || {
        std::fs::read_to_string("/proc/net/sockstat")
            .ok()
            .and_then(|t| {
                let line = t.lines().find(|l| l.starts_with("TCP:"))?.to_string();
                let mut it = line.split_whitespace();
                it.position(|w| w == "tw")?;
                it.next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    while tw() > 64 && t0.elapsed() < Duration::from_secs(70) {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Seconds from launch to the first snapshot, minus the 1 s interval.
fn cold_start(plan: &Plan, agent: &Path) -> BTreeMap<Kind, Vec<f64>> {
    let mut res: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
    for rep in 0..plan.reps {
        for kind in [Kind::NetwatchEbpf, Kind::NetwatchSs] {
            eprintln!("xtask bench: cold start rep {} {}", rep + 1, kind.label());
            let t0 = Instant::now();
            let child = Command::new(agent)
                .args(monitor::agent_args(kind, "1"))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else { continue };
            let Some(out) = child.stdout.take() else {
                continue;
            };
            let mut line = String::new();
            let ok = BufReader::new(out).read_line(&mut line).is_ok() && !line.is_empty();
            let dt = t0.elapsed().as_secs_f64() - 1.0;
            // SAFETY: signalling the child started just above.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let _ = child.wait();
            if ok {
                res.entry(kind).or_default().push(dt);
            }
        }
    }
    res
}

/// Per-event cost, ns: (program, hook) → values over repetitions.
#[derive(Debug, Default)]
pub struct Cost {
    pub netwatch: BTreeMap<String, Vec<f64>>,
    pub bpftrace: BTreeMap<String, Vec<f64>>,
    pub tier: String,
    pub notes: Vec<String>,
}

fn prog_name(bpftool: Option<&PathBuf>, id: u32) -> String {
    let Some(bt) = bpftool else {
        return format!("prog {id}");
    };
    Command::new(bt)
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["name"].as_str().map(String::from))
        .unwrap_or_else(|| format!("prog {id}"))
}

fn bpf_cost(plan: &Plan, tools: &Tools, bpftool: Option<&PathBuf>, bin: &Path, out: &Path) -> Cost {
    let mut cost = Cost::default();
    let sysctl = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let before = std::fs::read_to_string(sysctl).unwrap_or_default();
    if std::fs::write(sysctl, "1").is_err() {
        cost.notes
            .push("could not set kernel.bpf_stats_enabled=1".into());
    }
    for rep in 0..plan.reps {
        eprintln!("xtask bench: per-event cost rep {}", rep + 1);
        let bt = match Running::start(Kind::Bpftrace, tools, out, &format!("cost{rep}")) {
            Ok(b) => b,
            Err(e) => {
                cost.notes.push(format!("bpftrace: {e:#}"));
                None
            }
        };
        let s0 = bt
            .as_ref()
            .map(|b| procfs::prog_stats(b.pid()))
            .unwrap_or_default();
        let o = Command::new(bin)
            .args(["auto", &plan.calls.to_string()])
            .output();
        let s1 = bt
            .as_ref()
            .map(|b| procfs::prog_stats(b.pid()))
            .unwrap_or_default();
        match o {
            Ok(o) if o.status.success() => {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    if line.starts_with("retransmit workload skipped") {
                        cost.notes.push(line.to_string());
                    }
                    let kv: BTreeMap<&str, &str> = line
                        .split_whitespace()
                        .filter_map(|f| f.split_once('='))
                        .collect();
                    if let Some(t) = kv.get("tier") {
                        cost.tier = t.to_string();
                    }
                    if let (Some(p), Some(ns)) = (kv.get("program"), kv.get("ns_per_event")) {
                        if let Ok(ns) = ns.parse::<f64>() {
                            cost.netwatch.entry(p.to_string()).or_default().push(ns);
                        }
                    }
                }
            }
            Ok(o) => cost.notes.push(format!(
                "bpf_cost failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => cost.notes.push(format!("bpf_cost: {e}")),
        }
        for (id, ns1, n1) in &s1 {
            let (ns0, n0) = s0
                .iter()
                .find(|(i, _, _)| i == id)
                .map(|(_, a, b)| (*a, *b))
                .unwrap_or((0, 0));
            if n1 > &n0 {
                let per = (ns1 - ns0) as f64 / (n1 - n0) as f64;
                cost.bpftrace
                    .entry(prog_name(bpftool, *id))
                    .or_default()
                    .push(per);
            }
        }
        if let Some(b) = bt {
            let _ = b.stop();
        }
    }
    if before.trim() == "0" {
        let _ = std::fs::write(sysctl, "0");
    }
    cost
}

/// tcptop: does it attach on this kernel?
fn tcptop_attach(tools: &Tools, out: &Path) -> String {
    if tools.tcptop.is_none() {
        return "not installed".into();
    }
    match Running::start(Kind::Tcptop, tools, out, "probe") {
        Ok(Some(r)) => {
            let _ = r.stop();
            "attached".into()
        }
        Ok(None) => "not started".into(),
        Err(e) => format!("does not attach: {e:#}"),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench loads BPF programs and captures packets: run it as root");
    }
    crate::setup::ensure()?;
    if args.only.trim() == "flood" {
        return flood::run(&workspace_root());
    }
    if args.only.trim() == "dns" {
        return dns::run(&workspace_root(), args.quick);
    }
    let plan = Plan::new(&args);
    let root = workspace_root();
    let started = chrono_now();
    let peers = tools::ensure();
    let (agent, bpf_cost_bin, bench_load) = build(&root)?;
    let tools = Tools {
        agent: agent.clone(),
        bandwhich: peers.bandwhich.clone(),
        nethogs: peers.nethogs.clone(),
        bpftrace: peers.bpftrace.clone(),
        tcptop: peers.tcptop.clone(),
    };
    let work = root.join("target/bench");
    let dir = work.join("bin");
    let out = work.join("out");
    std::fs::create_dir_all(&out)?;
    let stems: Vec<&str> = workloads(&plan)
        .iter()
        .map(|w| w.1)
        .chain(["scale"])
        .collect();
    links(&bench_load, &dir, &stems)?;
    let sections: Vec<&str> = args.only.split(',').map(str::trim).collect();
    monitor::reset_pins().context("removing the bench's old pins")?;
    let mut load = vec![procfs::loadavg()];
    let t_start = Instant::now();

    let tcptop = tcptop_attach(&tools, &out);
    let mut kinds = vec![
        Kind::Baseline,
        Kind::NetwatchEbpf,
        Kind::NetwatchSs,
        Kind::NetwatchPcap,
        Kind::NetwatchProc,
    ];
    if tools.bandwhich.is_some() {
        kinds.push(Kind::Bandwhich);
    }
    if tools.nethogs.is_some() {
        kinds.push(Kind::Nethogs);
    }
    if tools.bpftrace.is_some() {
        kinds.push(Kind::Bpftrace);
    }
    if tcptop == "attached" {
        kinds.push(Kind::Tcptop);
    }
    let sessions = if sections.contains(&"overhead") {
        overhead(&plan, &tools, &kinds, &dir, &out)
    } else {
        Vec::new()
    };
    load.push(procfs::loadavg());
    let scale = if sections.contains(&"scale") {
        scale(&plan, &tools, &dir, &out)
    } else {
        Vec::new()
    };
    load.push(procfs::loadavg());
    let cost = if sections.contains(&"cost") {
        bpf_cost(&plan, &tools, peers.bpftool.as_ref(), &bpf_cost_bin, &out)
    } else {
        Cost::default()
    };
    load.push(procfs::loadavg());
    let cold = if sections.contains(&"cold") {
        cold_start(&plan, &agent)
    } else {
        BTreeMap::new()
    };
    load.push(procfs::loadavg());
    let duration = t_start.elapsed();

    let cmd = std::iter::once("cargo xtask bench".to_string())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");
    let ctx = report::Context {
        command: cmd,
        started,
        duration,
        load,
        machine: procfs::machine(),
        plan: plan.clone(),
        peer_notes: peers.notes.clone(),
        tcptop,
        kinds,
    };
    report::write(&root, &ctx, &sessions, &scale, &cost, &cold)?;
    eprintln!(
        "xtask bench: wrote BENCHMARKS.md, bench/plots/*.svg and bench/results.json in {:.0} s",
        duration.as_secs_f64()
    );

    if args.vm {
        let guest_bin = vm::guest_path(&bpf_cost_bin)?;
        let calls = args.calls.to_string();
        let commands: Vec<GuestCommand> = ["fentry", "kprobe"]
            .iter()
            .map(|t| {
                GuestCommand::new(
                    format!("bpf_cost_{t}"),
                    [guest_bin.clone(), t.to_string(), calls.clone()],
                )
            })
            .collect();
        let opts = VmOptions {
            timeout: Duration::from_secs(900),
            ..VmOptions::default()
        };
        let report = vm::run_in_vm(&opts, &[bpf_cost_bin], &commands)?;
        report.ensure_success()?;
    }
    Ok(())
}

/// UTC date and time now, from `date` (xtask carries no date crate).
fn chrono_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
