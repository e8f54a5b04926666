//! `cargo xtask soak --minutes N` (root): a long run of the release agent
//! under churn, with an ingest endpoint that flaps, to show what a day on a
//! server would: resident memory, open descriptors and threads over time
//! (with their slope per hour), records lost, and the bytes the agent
//! attributed (on stdout and as the endpoint accepted them) against the
//! bytes the workloads moved. A measurement, never a test: nothing here is
//! asserted by `cargo xtask test`; it writes `bench/soak.json` and prints a
//! summary for RELIABILITY.md.
//!
//! The workloads are `bench_load`'s, run one after the other in new
//! processes (process churn): short connections, bulk and paced (long)
//! transfers over IPv4 and IPv6, UDP datagrams, replies that close, and a
//! burst of new connections. The endpoint cycles through
//! answering 200, answering 503, refusing connections and closing them
//! without an answer; for the last minute it answers 200 so the spool can
//! drain before the agent is stopped. Traffic stays on 127.0.0.1.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::bench::{self, monitor, procfs, Truth};
use crate::vm::workspace_root;

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long the workloads run.
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Seconds each endpoint phase (200, 503, refused, closed) lasts.
    #[arg(long, default_value_t = 30)]
    pub flap_secs: u64,
    /// Seconds between two samples of the agent's RSS, descriptors and threads.
    #[arg(long, default_value_t = 10)]
    pub sample_secs: u64,
    /// Pause between two workload runs (milliseconds): the load's duty cycle.
    #[arg(long, default_value_t = 2000)]
    pub pause_ms: u64,
    /// The agent's `request_timeout_secs` (an answer later than this is a
    /// failure to the agent, which sends those snapshots again).
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Where the figures go (JSON), relative to the workspace root.
    #[arg(long, default_value = "bench/soak.json")]
    pub out: PathBuf,
}

/// What the endpoint does with a request in the current phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Accept = 0,
    Fail503 = 1,
    /// Not listening: connections are refused.
    Refuse = 2,
    /// The request is read, then the connection is closed without an answer.
    Drop = 3,
}

impl Phase {
    const CYCLE: [Phase; 4] = [Phase::Accept, Phase::Fail503, Phase::Refuse, Phase::Drop];

    fn from_u8(v: u8) -> Phase {
        Phase::CYCLE[usize::from(v) % Phase::CYCLE.len()]
    }
}

/// What the endpoint accepted: every snapshot once by its timestamp, with
/// the bytes of its process rows.
#[derive(Debug, Default)]
struct Received {
    requests: u64,
    /// Snapshot timestamp → times accepted, and how long the request that
    /// first accepted it took to answer (from its arrival).
    accepted: HashMap<String, (u32, Duration)>,
    /// pid → (tx, rx), from each snapshot the first time it was accepted.
    by_pid: HashMap<u32, (u64, u64)>,
    unreadable: u64,
}

struct Endpoint {
    addr: SocketAddr,
    rt: tokio::runtime::Runtime,
    phase: Arc<AtomicU8>,
    received: Arc<Mutex<Received>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// While refusing: the port, bound and not listening.
    held: Option<tokio::net::TcpSocket>,
}

async fn handle(
    req: Request<Incoming>,
    phase: Arc<AtomicU8>,
    received: Arc<Mutex<Received>>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let arrived = Instant::now();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
    r.requests += 1;
    match Phase::from_u8(phase.load(Ordering::Relaxed)) {
        // An error from the service makes hyper close the connection
        // without an answer.
        Phase::Drop | Phase::Refuse => {
            return Err(std::io::Error::other("soak: closing without an answer"))
        }
        Phase::Fail503 => {
            return Ok(Response::builder()
                .status(503)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default())
        }
        Phase::Accept => {}
    }
    let Ok(env) = serde_json::from_slice::<serde_json::Value>(&body) else {
        r.unreadable += 1;
        return Ok(Response::builder()
            .status(400)
            .body(Full::new(Bytes::new()))
            .unwrap_or_default());
    };
    // The envelope carries the request's fields flattened beside
    // `schema_version` and `agent_health`.
    for snap in env["snapshots"].as_array().into_iter().flatten() {
        let ts = snap["timestamp"].as_str().unwrap_or_default().to_string();
        let seen = r.accepted.entry(ts).or_insert((0, arrived.elapsed()));
        seen.0 += 1;
        if seen.0 > 1 {
            continue;
        }
        for p in snap["processes"].as_array().into_iter().flatten() {
            let Some(pid) = p["pid"].as_u64() else {
                continue;
            };
            let e = r.by_pid.entry(pid as u32).or_default();
            e.0 += p["tx_bytes"].as_u64().unwrap_or(0);
            e.1 += p["rx_bytes"].as_u64().unwrap_or(0);
        }
    }
    Ok(Response::builder()
        .status(200)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default())
}

impl Endpoint {
    fn start() -> Result<Endpoint> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let mut e = Endpoint {
            addr,
            rt,
            phase: Arc::new(AtomicU8::new(Phase::Accept as u8)),
            received: Arc::default(),
            task: None,
            held: None,
        };
        e.serve(listener);
        Ok(e)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let phase = Arc::clone(&self.phase);
        let received = Arc::clone(&self.received);
        self.task = Some(self.rt.spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                while conns.try_join_next().is_some() {}
                let (phase, received) = (Arc::clone(&phase), Arc::clone(&received));
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        handle(req, Arc::clone(&phase), Arc::clone(&received))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }));
    }

    fn set(&mut self, next: Phase) -> Result<()> {
        let was = Phase::from_u8(self.phase.swap(next as u8, Ordering::Relaxed));
        if was == Phase::Refuse && next != Phase::Refuse {
            let held = self.held.take().context("refusing without a held port")?;
            let listener = {
                let _guard = self.rt.enter();
                held.listen(1024)?
            };
            self.serve(listener);
        } else if was != Phase::Refuse && next == Phase::Refuse {
            if let Some(t) = self.task.take() {
                t.abort();
                let _ = self.rt.block_on(t);
            }
            let _guard = self.rt.enter();
            let held = tokio::net::TcpSocket::new_v4()?;
            held.set_reuseaddr(true)?;
            held.bind(self.addr)?;
            self.held = Some(held);
        }
        Ok(())
    }
}

/// One sample of the agent's own resources.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t_s: f64,
    rss: u64,
    fds: u64,
    threads: u64,
    cpu_s: f64,
}

fn sample(pid: u32, t0: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())?;
    Some(Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss: procfs::status_kb(pid, "VmRSS")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64,
        threads,
        cpu_s: procfs::cpu_seconds(pid)?,
    })
}

/// Least-squares slope of `y` over `t` (per second); `None` under 2 points.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (st, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t, b + y));
    let (mt, my) = (st / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (t, y)| {
        (a + (t - mt) * (y - my), b + (t - mt) * (t - mt))
    });
    (den > 0.0).then(|| num / den)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Where the soak agent pins (its own, removed before and after).
const PIN_DIR: &str = "/sys/fs/bpf/netwatch-soak";

fn remove_pins() {
    let _ = std::fs::remove_dir_all(PIN_DIR);
}

struct AgentProc {
    child: Child,
}

impl AgentProc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (one final snapshot, a flush), SIGKILL after `grace`.
    fn stop(mut self, grace: Duration) -> Result<std::process::ExitStatus> {
        // SAFETY: signalling the child this struct started and still owns.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if t.elapsed() > grace {
                let _ = self.child.kill();
                return Ok(self.child.wait()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The workloads of one round: (symlink stem, bench_load arguments).
fn round() -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        ("churn", s(&["short", "300", "2000"])),
        ("xfer", s(&["transfer", &(128u64 << 20).to_string(), "v4"])),
        ("udp", s(&["udp", "2000", "1000", "v4"])),
        // A long transfer: 64 MiB spread over 20 intervals.
        (
            "paced",
            s(&["paced", &(64u64 << 20).to_string(), "20", "v4"]),
        ),
        ("rate", s(&["rate", "200", "3"])),
        ("reply", s(&["reply-close", "200", "300", "5000"])),
        ("ipv6", s(&["transfer", &(16u64 << 20).to_string(), "v6"])),
    ]
}

pub fn run(args: SoakArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask soak loads BPF programs: run it as root");
    }
    if !(args.minutes > 0.0 && args.minutes.is_finite()) || args.flap_secs == 0 {
        bail!("--minutes must be positive and --flap-secs at least 1");
    }
    crate::setup::ensure()?;
    let root = workspace_root();
    let (agent_bin, _, bench_load) = bench::build(&root)?;
    let dir = root.join("target/soak");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let stems: Vec<&str> = round().iter().map(|r| r.0).collect();
    bench::links(&bench_load, &dir.join("bin"), &stems)?;
    remove_pins();

    let mut endpoint = Endpoint::start()?;
    let config = dir.join("config.toml");
    write_private(
        &config,
        &format!(
            "[ingest]\nretry_initial_secs = 0.5\nretry_max_secs = 10\n\
             request_timeout_secs = {}\nflush_timeout_secs = 30\n",
            args.request_timeout_secs
        ),
    )?;
    let key = dir.join("api-key");
    write_private(&key, "soak-key\n")?;
    let out_path = dir.join("agent.out");
    let err_path = dir.join("agent.err");
    let p = |x: &Path| x.to_string_lossy().into_owned();
    let agent_args: Vec<String> = vec![
        "--config".into(),
        p(&config),
        "--mode".into(),
        "ebpf".into(),
        "--ebpf-tier".into(),
        "tracepoint".into(),
        "--interval".into(),
        "1".into(),
        "--output".into(),
        "json".into(),
        "--output".into(),
        "ingest".into(),
        "--endpoint".into(),
        format!("http://{}", endpoint.addr),
        "--api-key-file".into(),
        p(&key),
        "--spool-dir".into(),
        p(&dir.join("spool")),
        "--host-id-file".into(),
        p(&dir.join("host-id")),
        // Pinned, as the packaged service runs.
        "--pin".into(),
        "--pin-dir".into(),
        PIN_DIR.into(),
        "--pin-state-file".into(),
        p(&dir.join("baseline")),
    ];
    eprintln!(
        "xtask soak: {} {}",
        agent_bin.display(),
        agent_args.join(" ")
    );
    let agent = AgentProc {
        child: Command::new(&agent_bin)
            .args(&agent_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?)
            .spawn()
            .with_context(|| format!("starting {}", agent_bin.display()))?,
    };
    let pid = agent.pid();
    let t0 = Instant::now();
    // Ready: the first snapshot on stdout.
    while std::fs::metadata(&out_path).map_or(0, |m| m.len()) == 0 {
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "the agent printed no snapshot in 30 s: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, sampling) = (Arc::clone(&samples), Arc::clone(&sampling));
        let every = Duration::from_secs(args.sample_secs.max(1));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Some(s) = sample(pid, t0) {
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                }
                let t = Instant::now();
                while t.elapsed() < every && sampling.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };

    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let calm = Duration::from_secs(60).min(run_for / 4);
    let flap = Duration::from_secs(args.flap_secs);
    let mut truth: BTreeMap<u32, (String, u64, u64)> = BTreeMap::new();
    let mut runs = 0u64;
    let mut failed_runs = Vec::new();
    let mut phase_changes = 0u64;
    let mut current = Phase::Accept;
    while t0.elapsed() < run_for {
        for (stem, wargs) in round() {
            let elapsed = t0.elapsed();
            if elapsed >= run_for {
                break;
            }
            // The endpoint's phase for this moment: flapping, then calm.
            let want = if elapsed + calm >= run_for {
                Phase::Accept
            } else {
                Phase::CYCLE[(elapsed.as_secs() / flap.as_secs()) as usize % 4]
            };
            if want != current {
                endpoint.set(want)?;
                current = want;
                phase_changes += 1;
            }
            match bench::run_workload(&dir.join("bin"), stem, &wargs) {
                Ok(Truth { procs, .. }) => {
                    runs += 1;
                    for (pid, comm, tx, rx) in procs {
                        let e = truth.entry(pid).or_insert((comm, 0, 0));
                        e.1 += tx;
                        e.2 += rx;
                    }
                }
                Err(e) => failed_runs.push(format!("{stem}: {e:#}")),
            }
            std::thread::sleep(Duration::from_millis(args.pause_ms));
        }
    }
    endpoint.set(Phase::Accept)?;
    // Two intervals for the last bytes to be read, then a clean stop.
    std::thread::sleep(Duration::from_secs(2));
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let exit = agent.stop(Duration::from_secs(60))?;
    let wall = t0.elapsed();
    remove_pins();

    let out = std::fs::read_to_string(&out_path)?;
    let printed: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let i = l.find("\"timestamp\":\"")? + 13;
            Some(l[i..i + l[i..].find('"')?].to_string())
        })
        .collect();
    let attributed = monitor::parse(monitor::Kind::NetwatchEbpf, &out);
    let received = endpoint.received.lock().unwrap_or_else(|p| p.into_inner());
    let spool_left = std::fs::read_dir(dir.join("spool"))
        .map(|d| d.filter_map(|e| e.ok()).count())
        .unwrap_or(0);

    let (mut t_tx, mut t_rx, mut a_tx, mut a_rx, mut c_tx, mut c_rx) = (0u64, 0, 0, 0, 0, 0);
    let mut mismatched = Vec::new();
    for (pid, (comm, tx, rx)) in &truth {
        let (atx, arx) = attributed.get(*pid, comm);
        let (ctx, crx) = received.by_pid.get(pid).copied().unwrap_or_default();
        t_tx += tx;
        t_rx += rx;
        a_tx += atx;
        a_rx += arx;
        c_tx += ctx;
        c_rx += crx;
        if (atx, arx) != (*tx, *rx) {
            mismatched.push(format!("{pid} {comm}: truth {tx}/{rx}, agent {atx}/{arx}"));
        }
    }
    let duplicates = received.accepted.values().filter(|(n, _)| *n > 1).count();
    // A request answered after the agent's timeout was accepted
    // here but is a failure to the agent, which sends its snapshots again:
    // at-least-once delivery, the ingest side deduplicates by timestamp.
    let late = |d: &Duration| *d >= Duration::from_secs(args.request_timeout_secs);
    let duplicates_after_late_answer = received
        .accepted
        .values()
        .filter(|(n, d)| *n > 1 && late(d))
        .count();
    let slowest_answer_s = received
        .accepted
        .values()
        .map(|(_, d)| d.as_secs_f64())
        .fold(0.0, f64::max);
    let never_accepted = printed
        .iter()
        .filter(|t| !received.accepted.contains_key(*t))
        .count();

    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // The first minute is warm-up (maps, caches, spool directory).
    let steady: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.t_s >= 60.0_f64.min(wall.as_secs_f64() / 4.0))
        .collect();
    let per_hour = |f: fn(&Sample) -> f64| {
        slope(&steady.iter().map(|s| (s.t_s, f(s))).collect::<Vec<_>>()).map(|v| v * 3600.0)
    };
    // The second half alone: a step early on (the first long outage's
    // batch) is not a trend; a leak grows in both halves.
    let half = wall.as_secs_f64() / 2.0;
    let late_per_hour = |f: fn(&Sample) -> f64| {
        slope(
            &steady
                .iter()
                .filter(|s| s.t_s >= half)
                .map(|s| (s.t_s, f(s)))
                .collect::<Vec<_>>(),
        )
        .map(|v| v * 3600.0)
    };
    let range = |f: fn(&Sample) -> u64| {
        let v: Vec<u64> = steady.iter().map(f).collect();
        (
            v.iter().copied().min().unwrap_or(0),
            v.iter().copied().max().unwrap_or(0),
        )
    };
    let (rss_lo, rss_hi) = range(|s| s.rss);
    let (fd_lo, fd_hi) = range(|s| s.fds);
    let (th_lo, th_hi) = range(|s| s.threads);
    let cpu = samples.last().map_or(0.0, |s| s.cpu_s);
    let figures = serde_json::json!({
        "minutes": wall.as_secs_f64() / 60.0,
        "request_timeout_secs": args.request_timeout_secs,
        "workload_runs": runs,
        "workload_failures": failed_runs,
        "processes": truth.len(),
        "endpoint_phase_changes": phase_changes,
        "agent_exit": exit.code(),
        "truth_bytes": {"tx": t_tx, "rx": t_rx},
        "agent_stdout_bytes": {"tx": a_tx, "rx": a_rx},
        "endpoint_accepted_bytes": {"tx": c_tx, "rx": c_rx},
        "processes_not_exact": mismatched,
        "lost_records": attributed.lost_records,
        "snapshots_printed": printed.len(),
        "endpoint_requests": received.requests,
        "snapshots_accepted": received.accepted.len(),
        "snapshots_accepted_twice": duplicates,
        "snapshots_accepted_twice_after_an_answer_past_the_timeout": duplicates_after_late_answer,
        "slowest_accepting_answer_s": slowest_answer_s,
        "snapshots_printed_never_accepted": never_accepted,
        "spool_records_left": spool_left,
        "rss_bytes": {"min": rss_lo, "max": rss_hi, "slope_per_hour": per_hour(|s| s.rss as f64), "second_half_slope_per_hour": late_per_hour(|s| s.rss as f64)},
        "open_fds": {"min": fd_lo, "max": fd_hi, "slope_per_hour": per_hour(|s| s.fds as f64), "second_half_slope_per_hour": late_per_hour(|s| s.fds as f64)},
        "threads": {"min": th_lo, "max": th_hi, "slope_per_hour": per_hour(|s| s.threads as f64), "second_half_slope_per_hour": late_per_hour(|s| s.threads as f64)},
        "agent_cpu_s": cpu,
        "samples": samples.iter().map(|s| serde_json::json!({
            "t_s": s.t_s, "rss": s.rss, "fds": s.fds, "threads": s.threads, "cpu_s": s.cpu_s,
        })).collect::<Vec<_>>(),
    });
    let out_file = root.join(&args.out);
    if let Some(parent) = out_file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out_file, serde_json::to_string_pretty(&figures)?)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let fmt_slope =
        |v: Option<f64>, unit: f64| v.map_or("n/a".to_string(), |v| format!("{:+.2}", v / unit));
    println!(
        "soak: {:.1} min, {runs} workload runs ({} failed), {} processes, endpoint phase changes {phase_changes}, agent exit {:?}",
        wall.as_secs_f64() / 60.0,
        failed_runs.len(),
        truth.len(),
        exit.code()
    );
    println!("| figure | value |\n|---|---|");
    println!("| bytes moved (truth) tx / rx | {t_tx} / {t_rx} |");
    println!(
        "| agent stdout tx / rx | {a_tx} / {a_rx} ({} processes not exact) |",
        mismatched.len()
    );
    println!("| endpoint accepted tx / rx | {c_tx} / {c_rx} |");
    println!("| lost records | {} |", attributed.lost_records);
    println!(
        "| accepted twice after an answer later than the agent's {} s timeout | {duplicates_after_late_answer} (slowest accepting answer {slowest_answer_s:.1} s) |",
        args.request_timeout_secs
    );
    println!(
        "| snapshots printed / accepted / accepted twice / never accepted / left in spool | {} / {} / {duplicates} / {never_accepted} / {spool_left} |",
        printed.len(),
        received.accepted.len()
    );
    println!(
        "| RSS MiB (steady min–max; slope/h over the steady run, over its second half) | {:.1}–{:.1}; {}, {} MiB/h |",
        mib(rss_lo),
        mib(rss_hi),
        fmt_slope(per_hour(|s| s.rss as f64), 1024.0 * 1024.0),
        fmt_slope(late_per_hour(|s| s.rss as f64), 1024.0 * 1024.0)
    );
    println!(
        "| open fds (min–max; slope/h, second half) | {fd_lo}–{fd_hi}; {}, {} /h |",
        fmt_slope(per_hour(|s| s.fds as f64), 1.0),
        fmt_slope(late_per_hour(|s| s.fds as f64), 1.0)
    );
    println!(
        "| threads (min–max; slope/h, second half) | {th_lo}–{th_hi}; {}, {} /h |",
        fmt_slope(per_hour(|s| s.threads as f64), 1.0),
        fmt_slope(late_per_hour(|s| s.threads as f64), 1.0)
    );
    println!(
        "| agent CPU | {cpu:.1} s over {:.0} s |",
        wall.as_secs_f64()
    );
    for m in mismatched.iter().take(10) {
        println!("not exact: {m}");
    }
    for f in failed_runs.iter().take(10) {
        println!("workload failed: {f}");
    }
    eprintln!("xtask soak: wrote {}", out_file.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_is_its_gradient_and_of_a_flat_series_zero() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 5.0)).collect();
        assert_eq!(slope(&flat), Some(0.0));
        assert_eq!(slope(&[(1.0, 1.0)]), None);
    }

    #[test]
    fn phases_cycle_through_all_four() {
        let seen: Vec<Phase> = (0..8).map(Phase::from_u8).collect();
        assert_eq!(&seen[..4], &Phase::CYCLE);
        assert_eq!(&seen[4..], &Phase::CYCLE);
    }
}
