//! Least privilege (Linux): which capabilities each source needs to start
//! and which it still needs once it runs, a clear refusal when a needed one
//! is missing, and the drop itself: after the source is opened and before
//! the tick loop, every thread of the agent keeps only the steady-state set
//! (effective, permitted, inheritable, ambient and, with `CAP_SETPCAP`, the
//! bounding set) and gets `no_new_privs`. It must never raise a capability,
//! and the agent must never run on when the drop cannot be verified on
//! every thread (`/proc/self/task/*/status`).
//!
//! The sets, measured on kernel 6.18 as an unprivileged uid with only
//! ambient capabilities (see docs/deployment.md, "Least privilege"):
//!
//! | source | start-up                                   | steady: agent          | steady: for `ss` |
//! |--------|--------------------------------------------|------------------------|------------------|
//! | ebpf   | BPF, PERFMON, DAC_READ_SEARCH, SYS_PTRACE  | SYS_PTRACE             | —                |
//! | ss     | SYS_PTRACE, DAC_READ_SEARCH                | SYS_PTRACE             | SYS_PTRACE, DAC_READ_SEARCH |
//! | pcap   | NET_RAW, SYS_PTRACE, DAC_READ_SEARCH       | SYS_PTRACE, DAC_READ_SEARCH | —           |
//! | proc   | SYS_PTRACE, DAC_READ_SEARCH                | SYS_PTRACE, DAC_READ_SEARCH | —           |
//!
//! - `SYS_PTRACE`: `/proc/<pid>/exe` of processes of other users, or with
//!   more capabilities than the agent (the kernel's ptrace access check),
//!   and `/proc/<pid>/fd/*` links.
//! - `DAC_READ_SEARCH`: listing `/proc/<pid>/fd` of other users' processes
//!   (mode 0500), and, at eBPF start-up, tracefs (`/sys/kernel/tracing`,
//!   mode 0700) where tracepoint ids are read.
//! - eBPF maps and the ring buffer are read through the fds opened at
//!   start-up: no capability on kernels ≥ 5.19 (measured on 6.18). Before
//!   5.19 (commit c8644cd0efe7, "bpf: refine kernel.unprivileged_bpf_disabled
//!   behaviour") every `bpf()` command asks for `CAP_BPF` when
//!   `kernel.unprivileged_bpf_disabled` is set, so `CAP_BPF` stays effective there.
//! - `ss` runs as a child: it gets the "for `ss`" set through the ambient
//!   set (a non-root agent), or the bounding set (root, with
//!   `no_new_privs` capping it at the agent's permitted set).
//! - Capabilities belong to threads. The threads the sources started before
//!   the drop (ring-buffer drain, destroy events, capture, delivery) get it
//!   from a real-time signal whose handler makes the same raw syscalls (the
//!   way glibc makes `setuid` process-wide); a blocking call such a thread
//!   was in may see one `EINTR` (the readers retry; one `ss` FIN lookup in
//!   flight at that instant would answer "unknown").
//! - Debian's and Ubuntu's kernels patch `perf_event_open` so that
//!   `kernel.perf_event_paranoid` ≥ 3 (their default) lets only
//!   `CAP_SYS_ADMIN` open perf events, which attaching tracepoints and
//!   kprobes needs (measured on Debian 6.1: EACCES with `CAP_PERFMON`). The
//!   eBPF source refuses, naming the sysctl, when that is the case.
//! - `CAP_NET_ADMIN` (joining the sock_diag destroy groups on older kernels,
//!   cgroup programs) and `CAP_SETPCAP` (shrinking the bounding set) are
//!   start-up only: dropped with the rest when held.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use caps::{CapSet, Capability};

/// Capabilities as a kernel bit mask (bit n = capability n).
pub type CapMask = u64;

fn mask(caps: &[Capability]) -> CapMask {
    caps.iter().fold(0, |m, c| m | c.bitmask())
}

/// `CAP_A, CAP_B` (or `none`).
pub fn names(m: CapMask) -> String {
    let set: BTreeSet<String> = caps::all()
        .into_iter()
        .filter(|c| m & c.bitmask() != 0)
        .map(|c| c.to_string())
        .collect();
    if set.is_empty() {
        "none".to_string()
    } else {
        set.into_iter().collect::<Vec<_>>().join(", ")
    }
}

/// What a source needs once it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteadyState {
    /// Effective (and permitted) in the agent.
    pub effective: CapMask,
    /// Passed to child tools (`ss`): permitted, inheritable and ambient.
    pub children: CapMask,
}

impl SteadyState {
    /// Permitted: what the agent keeps at all.
    pub fn permitted(&self) -> CapMask {
        self.effective | self.children
    }

    /// The health probes (opt-in) open an ICMP socket each round: an
    /// unprivileged ICMP datagram socket where `net.ipv4.ping_group_range`
    /// admits the agent's group, a raw socket (`CAP_NET_RAW`) otherwise. So
    /// `CAP_NET_RAW` stays when they are on, and only then.
    pub fn with_health_probes(mut self) -> Self {
        self.effective |= Capability::CAP_NET_RAW.bitmask();
        self
    }
}

/// Why a source cannot start, or why the drop failed.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "the {mode} source needs {needed}; missing from the effective set: {missing}. \
         Run as root, or grant them (systemd: AmbientCapabilities=, see packaging/netwatch-agent.service; \
         Kubernetes: securityContext.capabilities.add)"
    )]
    Missing {
        mode: &'static str,
        needed: String,
        missing: String,
    },
    #[error(
        "the ebpf source attaches tracepoints and kprobes with perf_event_open, which \
         kernel.perf_event_paranoid={level} (a Debian/Ubuntu patch) allows only with CAP_SYS_ADMIN; \
         set kernel.perf_event_paranoid=2 (sysctl.d) so CAP_PERFMON suffices, or run as root"
    )]
    PerfParanoid { level: i32 },
    #[error("reading this process's capabilities: {0}")]
    Read(String),
    #[error("dropping capabilities: {what}: {error}")]
    Drop { what: String, error: std::io::Error },
    #[error("dropping capabilities: thread {tid} still holds {field} {found:016x}, expected {expected:016x}; refusing to run")]
    Verify {
        tid: String,
        field: &'static str,
        found: u64,
        expected: u64,
    },
}

/// The capabilities the source named `source` (as `SocketSource::name`)
/// needs to start. `None`: it needs none (or is not a Linux source).
fn start_needs(source: &str) -> Option<(&'static str, Vec<Capability>)> {
    use Capability::*;
    match source {
        "ebpf" => Some((
            "ebpf",
            vec![CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE],
        )),
        "ss" => Some(("ss", vec![CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH])),
        "pcap" => Some((
            "pcap",
            vec![CAP_NET_RAW, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH],
        )),
        "proc" => Some(("proc", vec![CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH])),
        _ => None,
    }
}

/// Refuse, naming what is missing, when this process cannot give the
/// source what it needs to start and to run (a source that would run but
/// silently see only this user's processes is refused too).
pub fn check_start(source: &str) -> Result<(), PrivilegeError> {
    let Some((name, needed)) = start_needs(source) else {
        return Ok(());
    };
    let have =
        caps::read(None, CapSet::Effective).map_err(|e| PrivilegeError::Read(e.to_string()))?;
    let mut missing: Vec<Capability> = needed
        .iter()
        .copied()
        .filter(|c| !have.contains(c))
        .collect();
    // Kernels before 5.8 have no CAP_BPF/CAP_PERFMON: CAP_SYS_ADMIN covers both.
    if have.contains(&Capability::CAP_SYS_ADMIN) {
        missing.retain(|c| !matches!(c, Capability::CAP_BPF | Capability::CAP_PERFMON));
    }
    if missing.is_empty() {
        if name == "ebpf" {
            let level = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .unwrap_or(2);
            if perf_needs_sys_admin(level, have.contains(&Capability::CAP_SYS_ADMIN)) {
                return Err(PrivilegeError::PerfParanoid { level });
            }
        }
        return Ok(());
    }
    Err(PrivilegeError::Missing {
        mode: name,
        needed: names(mask(&needed)),
        missing: names(mask(&missing)),
    })
}

/// Whether `perf_event_open` is closed to this process: Debian's and
/// Ubuntu's kernels allow it at `perf_event_paranoid` ≥ 3 only with
/// `CAP_SYS_ADMIN` (mainline has no level above 2).
fn perf_needs_sys_admin(perf_event_paranoid: i32, has_sys_admin: bool) -> bool {
    perf_event_paranoid > 2 && !has_sys_admin
}

/// Whether reading BPF maps through an open fd still needs `CAP_BPF`:
/// kernels before 5.19 check `unprivileged_bpf_disabled` on every `bpf()`
/// command.
fn bpf_reads_need_cap(osrelease: &str, unprivileged_bpf_disabled: &str) -> bool {
    let mut parts = osrelease
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next().flatten().unwrap_or(0);
    let minor = parts.next().flatten().unwrap_or(0);
    let disabled = unprivileged_bpf_disabled.trim() != "0";
    (major, minor) < (5, 19) && disabled
}

/// The steady-state set of the source named `source` on this kernel.
pub fn steady_state(source: &str) -> SteadyState {
    use Capability::*;
    match source {
        "ebpf" => {
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
                .unwrap_or_else(|_| "1".into());
            let mut effective = mask(&[CAP_SYS_PTRACE]);
            if bpf_reads_need_cap(&release, &disabled) {
                effective |= CAP_BPF.bitmask();
            }
            SteadyState {
                effective,
                children: 0,
            }
        }
        "ss" => SteadyState {
            effective: mask(&[CAP_SYS_PTRACE]),
            children: mask(&[CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]),
        },
        "pcap" | "proc" => SteadyState {
            effective: mask(&[CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]),
            children: 0,
        },
        _ => SteadyState {
            effective: 0,
            children: 0,
        },
    }
}

/// What every thread holds after [`drop_to`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub effective: CapMask,
    pub permitted: CapMask,
    pub inheritable: CapMask,
    pub ambient: CapMask,
    /// `None`: left as given (no `CAP_SETPCAP` to shrink it).
    pub bounding: Option<CapMask>,
    /// Threads the drop was applied to.
    pub threads: usize,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "effective: {}; for child tools: {}; bounding: {}; no_new_privs; {} thread(s)",
            names(self.effective),
            names(self.ambient | self.inheritable),
            match self.bounding {
                Some(b) => names(b),
                None => "left as given (no CAP_SETPCAP)".to_string(),
            },
            self.threads
        )
    }
}

// What the signal handler applies on each thread. Plain atomics: a handler
// may only touch async-signal-safe state.
static T_EFF: AtomicU64 = AtomicU64::new(0);
static T_PRM: AtomicU64 = AtomicU64::new(0);
static T_INH: AtomicU64 = AtomicU64::new(0);
static T_AMB: AtomicU64 = AtomicU64::new(0);
static T_BND_KEEP: AtomicU64 = AtomicU64::new(0);
static T_DROP_BND: AtomicBool = AtomicBool::new(false);
static T_LAST_CAP: AtomicU32 = AtomicU32::new(40);
static T_DONE: AtomicUsize = AtomicUsize::new(0);
static T_FAILED: AtomicUsize = AtomicUsize::new(0);
static T_ERRNO: AtomicI32 = AtomicI32::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The errno of the last failed call on this thread.
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Apply the target sets to the calling thread; only raw syscalls, so it
/// may run in a signal handler. Returns 0 or the failing step (1 bounding,
/// 2 capset, 3 ambient, 4 no_new_privs) with the errno in `T_ERRNO`.
fn apply_to_this_thread() -> u32 {
    let last = T_LAST_CAP.load(Ordering::SeqCst);
    if T_DROP_BND.load(Ordering::SeqCst) {
        let keep = T_BND_KEEP.load(Ordering::SeqCst);
        for cap in 0..=last.min(63) {
            // Already out of this thread's bounding set: a thread started
            // by one that had dropped it inherits the smaller set, and
            // dropping again needs the CAP_SETPCAP it no longer has.
            // SAFETY: prctl with integer arguments only.
            let held = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
            if keep & (1 << cap) == 0 && held != 0 {
                // SAFETY: prctl with integer arguments only.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if r != 0 && errno() != libc::EINVAL {
                    T_ERRNO.store(errno(), Ordering::SeqCst);
                    return 1;
                }
            }
        }
    }
    let (e, p, i) = (
        T_EFF.load(Ordering::SeqCst),
        T_PRM.load(Ordering::SeqCst),
        T_INH.load(Ordering::SeqCst),
    );
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        CapData {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: capset(2) with a version-3 header and the two data words it
    // reads; both live on this stack for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if r != 0 {
        T_ERRNO.store(errno(), Ordering::SeqCst);
        return 2;
    }
    let amb = T_AMB.load(Ordering::SeqCst);
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if r != 0 {
        T_ERRNO.store(errno(), Ordering::SeqCst);
        return 3;
    }
    for cap in 0..=last.min(63) {
        if amb & (1 << cap) != 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r != 0 {
                T_ERRNO.store(errno(), Ordering::SeqCst);
                return 3;
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        T_ERRNO.store(errno(), Ordering::SeqCst);
        return 4;
    }
    0
}

extern "C" fn on_signal(_sig: libc::c_int) {
    // SAFETY: __errno_location returns this thread's errno slot; saved and
    // restored so the interrupted code sees its own errno.
    let saved = unsafe { *libc::__errno_location() };
    if apply_to_this_thread() == 0 {
        T_DONE.fetch_add(1, Ordering::SeqCst);
    } else {
        T_FAILED.fetch_add(1, Ordering::SeqCst);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// The thread ids of this process.
fn task_ids() -> Result<Vec<i32>, PrivilegeError> {
    let dir = std::fs::read_dir("/proc/self/task").map_err(|source| PrivilegeError::Drop {
        what: "listing /proc/self/task".into(),
        error: source,
    })?;
    Ok(dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .collect())
}

/// One task's capability sets, from its `status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCaps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

/// Parse the `Cap*:` and `NoNewPrivs:` lines of a `/proc/<pid>/status`.
pub fn parse_status(status: &str) -> Option<TaskCaps> {
    let mut t = TaskCaps::default();
    let mut seen = 0;
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let hex = || u64::from_str_radix(value, 16).ok();
        match key {
            "CapInh" => t.inheritable = hex()?,
            "CapPrm" => t.permitted = hex()?,
            "CapEff" => t.effective = hex()?,
            "CapBnd" => t.bounding = hex()?,
            "CapAmb" => t.ambient = hex()?,
            "NoNewPrivs" => t.no_new_privs = value == "1",
            _ => continue,
        }
        seen += 1;
    }
    (seen == 6).then_some(t)
}

/// Keep only `steady` (intersected with what the process holds) on every
/// thread, shrink the bounding set when `CAP_SETPCAP` allows, set
/// `no_new_privs`, and verify every thread. Call after the source is
/// opened, before the tick loop starts its threads.
pub fn drop_to(steady: SteadyState) -> Result<Dropped, PrivilegeError> {
    let read = |set| {
        caps::read(None, set)
            .map(|s| s.iter().fold(0u64, |m, c| m | c.bitmask()))
            .map_err(|e| PrivilegeError::Read(e.to_string()))
    };
    let held = read(CapSet::Permitted)?;
    let bounding_now = read(CapSet::Bounding)?;
    let can_setpcap = read(CapSet::Effective)? & Capability::CAP_SETPCAP.bitmask() != 0;
    let permitted = steady.permitted() & held;
    let effective = steady.effective & held;
    let children = steady.children & held;
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
    let bounding = can_setpcap.then_some(permitted & bounding_now);
    T_EFF.store(effective, Ordering::SeqCst);
    T_PRM.store(permitted, Ordering::SeqCst);
    T_INH.store(children, Ordering::SeqCst);
    T_AMB.store(children, Ordering::SeqCst);
    T_BND_KEEP.store(permitted, Ordering::SeqCst);
    T_DROP_BND.store(can_setpcap, Ordering::SeqCst);
    T_LAST_CAP.store(last_cap, Ordering::SeqCst);
    T_DONE.store(0, Ordering::SeqCst);
    T_FAILED.store(0, Ordering::SeqCst);

    // Other threads first (the signal handler runs on each), then this one:
    // capabilities are per thread, and threads the sources started (ring
    // buffer drain, destroy events, capture, delivery) still hold the
    // start-up set. The same approach as glibc's setuid broadcast.
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    let sig = libc::SIGRTMIN() + 7;
    // SAFETY: installing a handler that only makes raw syscalls and touches
    // atomics; the previous action is restored below.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a zeroed sigaction is a valid value to fill in.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
    act.sa_flags = libc::SA_RESTART;
    // SAFETY: valid pointers to two sigaction values for the call.
    if unsafe { libc::sigaction(sig, &act, &mut old) } != 0 {
        return Err(PrivilegeError::Drop {
            what: "installing the per-thread drop signal handler".into(),
            error: std::io::Error::last_os_error(),
        });
    }
    let result = broadcast(me, sig);
    // SAFETY: restores the action saved above.
    unsafe { libc::sigaction(sig, &old, std::ptr::null_mut()) };
    let threads = result?;
    if apply_to_this_thread() != 0 {
        return Err(PrivilegeError::Drop {
            what: "capset/prctl on the main thread".into(),
            error: std::io::Error::from_raw_os_error(T_ERRNO.load(Ordering::SeqCst)),
        });
    }
    let expected = TaskCaps {
        inheritable: children,
        permitted,
        effective,
        bounding: bounding.unwrap_or(bounding_now),
        ambient: children,
        no_new_privs: true,
    };
    verify(&expected)?;
    Ok(Dropped {
        effective,
        permitted,
        inheritable: children,
        ambient: children,
        bounding,
        threads: threads + 1,
    })
}

/// Signal every thread but `me` and wait until each has applied the drop.
/// Returns how many threads were done.
fn broadcast(me: i32, sig: libc::c_int) -> Result<usize, PrivilegeError> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut done: BTreeSet<i32> = BTreeSet::new();
    // A thread may start while we signal: list again until nothing is new.
    for _ in 0..16 {
        let new: Vec<i32> = task_ids()?
            .into_iter()
            .filter(|t| *t != me && !done.contains(t))
            .collect();
        if new.is_empty() {
            return Ok(done.len());
        }
        let before = T_DONE.load(Ordering::SeqCst);
        let mut sent = 0;
        for &tid in &new {
            // SAFETY: tgkill to a thread of this process with a signal whose
            // handler is installed.
            let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
            if r == 0 {
                sent += 1;
            }
            // ESRCH: the thread exited; nothing left to drop.
            done.insert(tid);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while T_DONE.load(Ordering::SeqCst) + T_FAILED.load(Ordering::SeqCst) < before + sent {
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if T_FAILED.load(Ordering::SeqCst) > 0 {
            return Err(PrivilegeError::Drop {
                what: "capset/prctl on a worker thread".into(),
                error: std::io::Error::from_raw_os_error(T_ERRNO.load(Ordering::SeqCst)),
            });
        }
    }
    Ok(done.len())
}

/// Every thread's sets equal `expected`, else an error naming the thread.
fn verify(expected: &TaskCaps) -> Result<(), PrivilegeError> {
    for tid in task_ids()? {
        let path = format!("/proc/self/task/{tid}/status");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // exited
        };
        let Some(found) = parse_status(&text) else {
            return Err(PrivilegeError::Read(format!("{path}: no capability lines")));
        };
        let pairs = [
            ("CapEff", found.effective, expected.effective),
            ("CapPrm", found.permitted, expected.permitted),
            ("CapInh", found.inheritable, expected.inheritable),
            ("CapAmb", found.ambient, expected.ambient),
            ("CapBnd", found.bounding, expected.bounding),
            ("NoNewPrivs", found.no_new_privs as u64, 1),
        ];
        for (field, found, expected) in pairs {
            if found != expected {
                return Err(PrivilegeError::Verify {
                    tid: tid.to_string(),
                    field,
                    found,
                    expected,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_reads_need_cap_only_before_5_19_with_unprivileged_bpf_disabled() {
        assert!(!bpf_reads_need_cap("6.1.0-27-cloud-amd64", "2"));
        assert!(bpf_reads_need_cap("5.15.0", "1"));
        assert!(bpf_reads_need_cap("5.18.19", "2"));
        assert!(!bpf_reads_need_cap("5.15.0", "0"));
        assert!(!bpf_reads_need_cap("5.19.0", "2"));
        assert!(!bpf_reads_need_cap("6.18.0-rc1", "2"));
        assert!(bpf_reads_need_cap("garbage", "2"));
    }

    #[test]
    fn health_probes_keep_net_raw_and_nothing_else() {
        let base = steady_state("ss");
        let h = base.with_health_probes();
        assert_eq!(
            h.effective,
            base.effective | Capability::CAP_NET_RAW.bitmask()
        );
        assert_eq!(h.children, base.children);
        assert_eq!(base.effective & Capability::CAP_NET_RAW.bitmask(), 0);
    }

    #[test]
    fn perf_paranoid_above_2_needs_sys_admin() {
        assert!(perf_needs_sys_admin(3, false));
        assert!(perf_needs_sys_admin(4, false));
        assert!(!perf_needs_sys_admin(3, true));
        assert!(!perf_needs_sys_admin(2, false));
        assert!(!perf_needs_sys_admin(-1, false));
        let e = PrivilegeError::PerfParanoid { level: 3 }.to_string();
        assert!(
            e.contains("kernel.perf_event_paranoid=3") && e.contains("=2"),
            "{e}"
        );
    }

    #[test]
    fn status_lines_parse_and_garbage_is_refused() {
        let text = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t0000000000080004\n\
                    CapEff:\t0000000000080000\nCapBnd:\t0000000000080004\n\
                    CapAmb:\t0000000000000004\nNoNewPrivs:\t1\n";
        let t = parse_status(text).unwrap();
        assert_eq!(t.permitted, 0x80004);
        assert_eq!(t.effective, 0x80000);
        assert_eq!(t.ambient, 4);
        assert!(t.no_new_privs);
        assert_eq!(parse_status("CapEff:\tzz\n"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn steady_sets_name_the_measured_capabilities() {
        let ss = steady_state("ss");
        assert_eq!(names(ss.effective), "CAP_SYS_PTRACE");
        assert_eq!(names(ss.children), "CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE");
        assert_eq!(
            names(steady_state("pcap").permitted()),
            "CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE"
        );
        assert_eq!(steady_state("macos").permitted(), 0);
        assert_eq!(names(0), "none");
    }
}
