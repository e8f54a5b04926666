//! The monitors the bench runs side by side: netwatch in each mode it can
//! run here, and the peers users would pick instead (bandwhich, nethogs, a
//! bpftrace one-liner, libbpf-tools tcptop). Starts one, tells when it is
//! ready, samples its cost, stops it, and parses what it attributed to which
//! process. Never signals any process it did not start.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::procfs;

/// The one-liner users would write: application bytes per pid, on the same
/// tracepoints netwatch's tracepoint tier uses.
pub const BPFTRACE_SCRIPT: &str = "tracepoint:sock:sock_send_length /args->ret > 0/ { @tx[pid] = sum(args->ret); } tracepoint:sock:sock_recv_length /args->ret > 0/ { @rx[pid] = sum(args->ret); }";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Baseline,
    NetwatchEbpf,
    NetwatchSs,
    NetwatchPcap,
    NetwatchProc,
    Bandwhich,
    Nethogs,
    Bpftrace,
    Tcptop,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Baseline => "no monitor",
            Kind::NetwatchEbpf => "netwatch ebpf (tracepoint)",
            Kind::NetwatchSs => "netwatch --mode ss",
            Kind::NetwatchPcap => "netwatch --mode pcap",
            Kind::NetwatchProc => "netwatch --mode proc",
            Kind::Bandwhich => "bandwhich",
            Kind::Nethogs => "nethogs",
            Kind::Bpftrace => "bpftrace one-liner",
            Kind::Tcptop => "tcptop (libbpf-tools)",
        }
    }
    pub fn slug(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline",
            Kind::NetwatchEbpf => "nw-ebpf",
            Kind::NetwatchSs => "nw-ss",
            Kind::NetwatchPcap => "nw-pcap",
            Kind::NetwatchProc => "nw-proc",
            Kind::Bandwhich => "bandwhich",
            Kind::Nethogs => "nethogs",
            Kind::Bpftrace => "bpftrace",
            Kind::Tcptop => "tcptop",
        }
    }
    pub fn is_netwatch(self) -> bool {
        matches!(
            self,
            Kind::NetwatchEbpf | Kind::NetwatchSs | Kind::NetwatchPcap | Kind::NetwatchProc
        )
    }
}

/// Where each tool lives.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub agent: PathBuf,
    pub bandwhich: Option<PathBuf>,
    pub nethogs: Option<PathBuf>,
    pub bpftrace: Option<PathBuf>,
    pub tcptop: Option<PathBuf>,
}

/// netwatch agent arguments for a mode, JSON lines on stdout.
/// Where the bench's eBPF agents pin their maps and baseline: their own,
/// emptied when a bench starts ([`reset_pins`]), so a run never continues
/// from (or reports the lost records of) pins some earlier agent left.
pub const PIN_DIR: &str = "/sys/fs/bpf/netwatch-bench";
pub const PIN_STATE_DIR: &str = "/run/netwatch-bench";

/// Remove the bench's pins and baseline (a missing one is fine).
pub fn reset_pins() -> std::io::Result<()> {
    for d in [PIN_DIR, PIN_STATE_DIR] {
        match std::fs::remove_dir_all(d) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

pub fn agent_args(kind: Kind, interval: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["--interval".into(), interval.into()];
    // Pinned, as the packaged service runs.
    a.extend([
        "--pin".into(),
        "--pin-dir".into(),
        PIN_DIR.into(),
        "--pin-state-file".into(),
        format!("{PIN_STATE_DIR}/ebpf-baseline"),
    ]);
    a.extend(
        match kind {
            Kind::NetwatchSs => vec!["--mode", "ss"],
            Kind::NetwatchPcap => vec!["--mode", "pcap", "-i", "lo"],
            Kind::NetwatchProc => vec!["--mode", "proc"],
            _ => vec!["--mode", "ebpf", "--ebpf-tier", "tracepoint"],
        }
        .into_iter()
        .map(String::from),
    );
    a.extend(["--output".into(), "json".into()]);
    a
}

pub struct Running {
    pub kind: Kind,
    child: Child,
    pub out: PathBuf,
    err: PathBuf,
    pub started: Instant,
}

/// The last `n` non-empty lines of `s`, joined with " / ".
fn last_lines(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    l[l.len().saturating_sub(n)..].join(" / ")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start(kind: Kind, tools: &Tools, dir: &Path, tag: &str) -> Result<Option<Running>> {
        let (prog, args): (PathBuf, Vec<String>) = match kind {
            Kind::Baseline => return Ok(None),
            k if k.is_netwatch() => (tools.agent.clone(), agent_args(k, "1")),
            Kind::Bandwhich => (
                tools.bandwhich.clone().context("bandwhich not installed")?,
                ["--raw", "--processes", "--no-resolve", "--interface", "lo"]
                    .map(String::from)
                    .to_vec(),
            ),
            Kind::Nethogs => (
                tools.nethogs.clone().context("nethogs not installed")?,
                ["-t", "-a", "-v", "2", "-d", "1", "lo"]
                    .map(String::from)
                    .to_vec(),
            ),
            Kind::Bpftrace => (
                tools.bpftrace.clone().context("bpftrace not installed")?,
                vec!["-e".into(), BPFTRACE_SCRIPT.into()],
            ),
            _ => (
                tools.tcptop.clone().context("tcptop not installed")?,
                ["-C", "-S", "1"].map(String::from).to_vec(),
            ),
        };
        let out = dir.join(format!("{}-{tag}.out", kind.slug()));
        let err = dir.join(format!("{}-{tag}.err", kind.slug()));
        let child = Command::new(&prog)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(File::create(&out)?)
            .stderr(File::create(&err)?)
            .spawn()
            .with_context(|| format!("starting {}", prog.display()))?;
        let mut r = Running {
            kind,
            child,
            out,
            err,
            started: Instant::now(),
        };
        r.wait_ready()?;
        Ok(Some(r))
    }

    /// Time from launch until the monitor shows it is collecting.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = self.started + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{} exited before it was ready ({st}): {}",
                    self.kind.label(),
                    last_lines(&read(&self.err), 2)
                );
            }
            let out = read(&self.out);
            let ready = match self.kind {
                k if k.is_netwatch() => out.contains('\n'),
                Kind::Bpftrace => out.contains("Attaching"),
                Kind::Nethogs | Kind::Bandwhich => out.contains("Refreshing"),
                _ => self.started.elapsed() > Duration::from_secs(2),
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} not ready after 20 s", self.kind.label());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn cpu(&self) -> f64 {
        procfs::cpu_seconds(self.pid()).unwrap_or(f64::NAN)
    }

    /// Stop with SIGINT (bpftrace prints its maps then), SIGKILL after 5 s.
    pub fn stop(mut self) -> Result<String> {
        // SAFETY: signalling the child this struct started and still owns.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let t = Instant::now();
        while self.child.try_wait()?.is_none() {
            if t.elapsed() > Duration::from_secs(5) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(read(&self.out))
    }
}

/// Bytes a monitor attributed: by pid, or by process name for tools that
/// only print names (bandwhich).
#[derive(Debug, Default)]
pub struct Attributed {
    by_pid: HashMap<u32, (u64, u64)>,
    by_comm: HashMap<String, (u64, u64)>,
    pub lost_records: u64,
}

impl Attributed {
    /// (tx, rx) attributed to this process.
    pub fn get(&self, pid: u32, comm: &str) -> (u64, u64) {
        if let Some(v) = self.by_pid.get(&pid) {
            return *v;
        }
        self.by_comm.get(comm).copied().unwrap_or((0, 0))
    }
}

pub fn parse(kind: Kind, out: &str) -> Attributed {
    let mut a = Attributed::default();
    match kind {
        k if k.is_netwatch() => {
            // Snapshots can carry every connection (megabytes a line at
            // 50,000 sockets): parse only the `processes` array and the
            // `collector` object, each as the first value of a stream.
            let first = |s: &str| {
                serde_json::Deserializer::from_str(s)
                    .into_iter::<serde_json::Value>()
                    .next()
                    .and_then(|r| r.ok())
                    .unwrap_or_default()
            };
            for line in out.lines() {
                if let Some(i) = line.rfind("\"collector\":") {
                    let c = first(&line[i + 12..]);
                    if let Some(l) = c["lost_records"].as_u64() {
                        a.lost_records = a.lost_records.max(l);
                    }
                }
                let Some(i) = line.find("\"processes\":") else {
                    continue;
                };
                let procs = first(&line[i + 12..]);
                for p in procs.as_array().into_iter().flatten() {
                    let Some(pid) = p["pid"].as_u64() else {
                        continue;
                    };
                    let e = a.by_pid.entry(pid as u32).or_default();
                    e.0 += p["tx_bytes"].as_u64().unwrap_or(0);
                    e.1 += p["rx_bytes"].as_u64().unwrap_or(0);
                }
            }
        }
        Kind::Bandwhich => {
            // process: <ts> "name" up/down Bps: UP/DOWN connections: N
            for line in out.lines().filter(|l| l.starts_with("process:")) {
                let mut q = line.splitn(3, '"');
                let (Some(_), Some(name), Some(rest)) = (q.next(), q.next(), q.next()) else {
                    continue;
                };
                let Some(nums) = rest.split_whitespace().nth(2) else {
                    continue;
                };
                let mut it = nums.split('/').map(|x| x.parse::<u64>().unwrap_or(0));
                let e = a.by_comm.entry(name.to_string()).or_default();
                e.0 += it.next().unwrap_or(0);
                e.1 += it.next().unwrap_or(0);
            }
        }
        Kind::Nethogs => {
            // name/pid/uid \t sent \t received (cumulative bytes with -v 2)
            for line in out.lines() {
                let f: Vec<&str> = line.split('\t').collect();
                if f.len() < 3 {
                    continue;
                }
                let mut ids = f[0].rsplitn(3, '/');
                let (_uid, pid) = (ids.next(), ids.next());
                let Some(Ok(pid)) = pid.map(str::parse::<u32>) else {
                    continue;
                };
                let tx = f[1].trim().parse::<f64>().unwrap_or(0.0) as u64;
                let rx = f[2].trim().parse::<f64>().unwrap_or(0.0) as u64;
                let e = a.by_pid.entry(pid).or_default();
                e.0 = e.0.max(tx);
                e.1 = e.1.max(rx);
            }
        }
        Kind::Bpftrace => {
            // @tx[1234]: 5678
            for line in out.lines() {
                let (dir, rest) = if let Some(r) = line.strip_prefix("@tx[") {
                    (0, r)
                } else if let Some(r) = line.strip_prefix("@rx[") {
                    (1, r)
                } else {
                    continue;
                };
                let Some((pid, val)) = rest.split_once("]:") else {
                    continue;
                };
                let (Ok(pid), Ok(val)) = (pid.parse::<u32>(), val.trim().parse::<u64>()) else {
                    continue;
                };
                let e = a.by_pid.entry(pid).or_default();
                if dir == 0 {
                    e.0 += val
                } else {
                    e.1 += val
                }
            }
        }
        Kind::Tcptop => {
            // PID COMM LADDR RADDR RX_KB TX_KB
            for line in out.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 6 {
                    continue;
                }
                let (Ok(pid), Ok(rx), Ok(tx)) = (
                    f[0].parse::<u32>(),
                    f[4].parse::<u64>(),
                    f[5].parse::<u64>(),
                ) else {
                    continue;
                };
                let e = a.by_pid.entry(pid).or_default();
                e.0 += tx * 1024;
                e.1 += rx * 1024;
            }
        }
        Kind::Baseline => {}
        _ => {}
    }
    a
}
