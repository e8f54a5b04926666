//! Hook tiers and the loader that picks one: fentry/fexit, then
//! kprobe/kretprobe, then tp_btf on `sock:sock_*_length`. Each attempt loads
//! a fresh copy of the object, so a failed tier leaves nothing behind. The
//! lifecycle tracepoints (`sock:inet_sock_set_state`, `tcp:tcp_destroy_sock`),
//! the reset tracepoints (`tcp:tcp_{receive,send}_reset`, TCP events for the
//! alert detectors), the retransmit tracepoint (`tcp:tcp_retransmit_skb`,
//! per-socket retransmit totals) and the UDP release program (`cgroup/sock_release` on the root cgroup v2)
//! go with every tier.

use std::fmt;
use std::io;

use aya::programs::links::FdLink;
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSock, FEntry, FExit, KProbe, Program, ProgramError,
    TracePoint,
};
use aya::{Btf, Ebpf, EbpfLoader};
use log::{info, warn};
use netwatch_common::{names, Tier as AbiTier};
use thiserror::Error;

use super::btf::{BtfError, SockOffsets};
use super::BPF_OBJECT;
use crate::error_chain::Once;

/// A hook tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// fentry/fexit on the kernel's socket functions (BTF trampolines):
    /// the cheapest; needs a kernel that allows them (5.5+, not every
    /// sandbox).
    Fentry,
    /// kprobes/kretprobes on the same functions, for kernels without
    /// fentry.
    Kprobe,
    /// BTF-typed tracepoints and cgroup socket hooks, for kernels
    /// without kprobes (e.g. hardened or sandboxed ones).
    Tracepoint,
}

impl Tier {
    /// Best first.
    pub const ALL: [Tier; 3] = [Tier::Fentry, Tier::Kprobe, Tier::Tracepoint];

    /// The name used on the command line, in logs and in snapshots.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Fentry => "fentry",
            Tier::Kprobe => "kprobe",
            Tier::Tracepoint => "tracepoint",
        }
    }

    fn abi(self) -> AbiTier {
        match self {
            Tier::Fentry => AbiTier::Fentry,
            Tier::Kprobe => AbiTier::Kprobe,
            Tier::Tracepoint => AbiTier::Tracepoint,
        }
    }

    /// The tier's programs, as (program name in the object, hook kind, kernel target).
    pub fn programs(self) -> &'static [Hook] {
        use HookKind::*;
        match self {
            Tier::Fentry => &[
                Hook {
                    program: "fexit_tcp_sendmsg",
                    kind: Fexit,
                    target: "tcp_sendmsg",
                },
                Hook {
                    program: "fexit_tcp_splice_read",
                    kind: Fexit,
                    target: "tcp_splice_read",
                },
                Hook {
                    program: "fexit_udp_sendmsg",
                    kind: Fexit,
                    target: "udp_sendmsg",
                },
                Hook {
                    program: "fexit_udpv6_sendmsg",
                    kind: Fexit,
                    target: "udpv6_sendmsg",
                },
                Hook {
                    program: "fentry_skb_consume_udp",
                    kind: Fentry,
                    target: "skb_consume_udp",
                },
            ],
            Tier::Kprobe => &[
                Hook {
                    program: "kprobe_tcp_sendmsg",
                    kind: Kprobe,
                    target: "tcp_sendmsg",
                },
                Hook {
                    program: "kretprobe_tcp_sendmsg",
                    kind: Kretprobe,
                    target: "tcp_sendmsg",
                },
                Hook {
                    program: "kprobe_tcp_recvmsg",
                    kind: Kprobe,
                    target: "tcp_recvmsg",
                },
                Hook {
                    program: "kretprobe_tcp_recvmsg",
                    kind: Kretprobe,
                    target: "tcp_recvmsg",
                },
                Hook {
                    program: "kprobe_tcp_splice_read",
                    kind: Kprobe,
                    target: "tcp_splice_read",
                },
                Hook {
                    program: "kretprobe_tcp_splice_read",
                    kind: Kretprobe,
                    target: "tcp_splice_read",
                },
                Hook {
                    program: "kprobe_udp_sendmsg",
                    kind: Kprobe,
                    target: "udp_sendmsg",
                },
                Hook {
                    program: "kretprobe_udp_sendmsg",
                    kind: Kretprobe,
                    target: "udp_sendmsg",
                },
                Hook {
                    program: "kprobe_udpv6_sendmsg",
                    kind: Kprobe,
                    target: "udpv6_sendmsg",
                },
                Hook {
                    program: "kretprobe_udpv6_sendmsg",
                    kind: Kretprobe,
                    target: "udpv6_sendmsg",
                },
                Hook {
                    program: "kprobe_skb_consume_udp",
                    kind: Kprobe,
                    target: "skb_consume_udp",
                },
            ],
            Tier::Tracepoint => &[
                Hook {
                    program: "tp_sock_send_length",
                    kind: TpBtf,
                    target: "sock_send_length",
                },
                Hook {
                    program: "tp_sock_recv_length",
                    kind: TpBtf,
                    target: "sock_recv_length",
                },
            ],
        }
    }

    /// Programs attached only where `sendfile`/`splice` to a socket go
    /// through `tcp_sendpage`/`udp_sendpage` (Linux < 6.5, recognised by
    /// `do_tcp_sendpages` in BTF). From 6.5 on they go through `*_sendmsg`,
    /// already counted. The tracepoint tier sees both paths through
    /// `sock_sendmsg` and needs none.
    pub fn sendpage_programs(self) -> &'static [Hook] {
        use HookKind::*;
        match self {
            Tier::Fentry => &[
                Hook {
                    program: "fexit_tcp_sendpage",
                    kind: Fexit,
                    target: "tcp_sendpage",
                },
                Hook {
                    program: "fexit_udp_sendpage",
                    kind: Fexit,
                    target: "udp_sendpage",
                },
            ],
            Tier::Kprobe => &[
                Hook {
                    program: "kprobe_tcp_sendpage",
                    kind: Kprobe,
                    target: "tcp_sendpage",
                },
                Hook {
                    program: "kretprobe_tcp_sendpage",
                    kind: Kretprobe,
                    target: "tcp_sendpage",
                },
                Hook {
                    program: "kprobe_udp_sendpage",
                    kind: Kprobe,
                    target: "udp_sendpage",
                },
                Hook {
                    program: "kretprobe_udp_sendpage",
                    kind: Kretprobe,
                    target: "udp_sendpage",
                },
            ],
            Tier::Tracepoint => &[],
        }
    }

    /// Programs attached where `tcp:tcp_send_reset` misses resets to
    /// closed ports (Linux < 6.10): they read the answered segment. The
    /// tracepoint tier needs Linux ≥ 6.3 and has no kprobes to rely on.
    pub fn reset_programs(self) -> &'static [Hook] {
        use HookKind::*;
        match self {
            Tier::Fentry => &[
                Hook {
                    program: "fentry_tcp_v4_send_reset",
                    kind: Fentry,
                    target: "tcp_v4_send_reset",
                },
                Hook {
                    program: "fentry_tcp_v6_send_reset",
                    kind: Fentry,
                    target: "tcp_v6_send_reset",
                },
            ],
            Tier::Kprobe => &[
                Hook {
                    program: "kprobe_tcp_v4_send_reset",
                    kind: Kprobe,
                    target: "tcp_v4_send_reset",
                },
                Hook {
                    program: "kprobe_tcp_v6_send_reset",
                    kind: Kprobe,
                    target: "tcp_v6_send_reset",
                },
            ],
            Tier::Tracepoint => &[],
        }
    }

    /// The programs that count an MPTCP socket's own calls, where the
    /// kernel has MPTCP (its BTF lists `mptcp_sendmsg`/`mptcp_recvmsg`):
    /// the application's calls on an MPTCP socket never reach
    /// `tcp_sendmsg`/`tcp_recvmsg` (its subflows are driven inside the
    /// kernel), so without these its bytes go unseen. The fexit variant
    /// matches `mptcp_recvmsg`'s parameters; the kprobe pair on it reads
    /// `flags` at `tcp_recvmsg`'s index (one load-time global) and is
    /// attached only where the two agree. The tracepoint tier needs none:
    /// `sock:sock_{send,recv}_length` fire on the MPTCP socket.
    pub fn mptcp_programs(self, offsets: &SockOffsets) -> Vec<Hook> {
        use HookKind::*;
        let mut hooks = Vec::new();
        match self {
            Tier::Fentry => {
                if offsets.mptcp_send {
                    hooks.push(Hook {
                        program: "fexit_mptcp_sendmsg",
                        kind: Fexit,
                        target: "mptcp_sendmsg",
                    });
                }
                if let Some((_, nargs)) = offsets.mptcp_recv {
                    hooks.push(Hook {
                        program: match nargs {
                            6 => "fexit_mptcp_recvmsg_nonblock",
                            4 => "fexit_mptcp_recvmsg_4",
                            _ => "fexit_mptcp_recvmsg",
                        },
                        kind: Fexit,
                        target: "mptcp_recvmsg",
                    });
                }
            }
            Tier::Kprobe => {
                if offsets.mptcp_send {
                    hooks.extend([
                        Hook {
                            program: "kprobe_mptcp_sendmsg",
                            kind: Kprobe,
                            target: "mptcp_sendmsg",
                        },
                        Hook {
                            program: "kretprobe_mptcp_sendmsg",
                            kind: Kretprobe,
                            target: "mptcp_sendmsg",
                        },
                    ]);
                }
                match offsets.mptcp_recv {
                    Some((flags, _)) if flags == offsets.recv_flags_arg => hooks.extend([
                        Hook {
                            program: "kprobe_mptcp_recvmsg",
                            kind: Kprobe,
                            target: "mptcp_recvmsg",
                        },
                        Hook {
                            program: "kretprobe_mptcp_recvmsg",
                            kind: Kretprobe,
                            target: "mptcp_recvmsg",
                        },
                    ]),
                    Some((flags, _)) => warn!(
                        "mptcp_recvmsg takes flags as argument {flags}, tcp_recvmsg as {}: \
                         MPTCP receives are not counted on the kprobe tier",
                        offsets.recv_flags_arg
                    ),
                    None => {}
                }
            }
            Tier::Tracepoint => {}
        }
        hooks
    }

    /// Every program the tier attaches on a kernel with these facts.
    pub fn hooks(self, offsets: &SockOffsets) -> Vec<Hook> {
        let mut hooks = self.programs().to_vec();
        if self == Tier::Fentry {
            // fexit reads the return value after the arguments, so the
            // program must match the kernel's `tcp_recvmsg` signature.
            hooks.push(Hook {
                program: match offsets.recv_nargs {
                    6 => "fexit_tcp_recvmsg_nonblock",
                    4 => "fexit_tcp_recvmsg_4",
                    _ => "fexit_tcp_recvmsg",
                },
                kind: HookKind::Fexit,
                target: "tcp_recvmsg",
            });
        }
        if offsets.sendpage_path {
            hooks.extend_from_slice(self.sendpage_programs());
        }
        hooks.extend(self.mptcp_programs(offsets));
        if !super::tcp_events::SendResetFormat::from_kernel().sees_closed_ports() {
            hooks.extend_from_slice(self.reset_programs());
        }
        hooks.extend_from_slice(&LIFECYCLE);
        hooks
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The lifecycle programs attached with every tier.
pub const LIFECYCLE: [Hook; 6] = [
    Hook {
        program: "tp_inet_sock_set_state",
        kind: HookKind::Tracepoint,
        target: "sock/inet_sock_set_state",
    },
    Hook {
        program: "tp_tcp_destroy_sock",
        kind: HookKind::Tracepoint,
        target: "tcp/tcp_destroy_sock",
    },
    Hook {
        program: "sock_release",
        kind: HookKind::CgroupSockRelease,
        target: "sock_release",
    },
    // TCP control events for the alert detectors (`super::tcp_events`).
    Hook {
        program: "tp_tcp_receive_reset",
        kind: HookKind::Tracepoint,
        target: "tcp/tcp_receive_reset",
    },
    Hook {
        program: "tp_tcp_send_reset",
        kind: HookKind::Tracepoint,
        target: "tcp/tcp_send_reset",
    },
    // Per-socket retransmit totals (TCP quality).
    Hook {
        program: "tp_tcp_retransmit_skb",
        kind: HookKind::Tracepoint,
        target: "tcp/tcp_retransmit_skb",
    },
];

/// How a program hooks the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Fentry,
    Fexit,
    Kprobe,
    Kretprobe,
    TpBtf,
    Tracepoint,
    /// `cgroup/sock_release` on the root cgroup v2.
    CgroupSockRelease,
}

impl HookKind {
    fn prefix(self) -> &'static str {
        match self {
            HookKind::Fentry => "fentry",
            HookKind::Fexit => "fexit",
            HookKind::Kprobe => "kprobe",
            HookKind::Kretprobe => "kretprobe",
            HookKind::TpBtf => "tp_btf",
            HookKind::Tracepoint => "tracepoint",
            HookKind::CgroupSockRelease => "cgroup",
        }
    }
}

/// One program and where it hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hook {
    pub program: &'static str,
    pub kind: HookKind,
    pub target: &'static str,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.prefix(), self.target)
    }
}

/// Which tier to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TierChoice {
    /// The best the kernel allows, in [`Tier::ALL`] order.
    #[default]
    Auto,
    /// Exactly this tier, or an error.
    Only(Tier),
}

impl std::str::FromStr for TierChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(TierChoice::Auto),
            other => Tier::ALL
                .into_iter()
                .find(|t| t.name() == other)
                .map(TierChoice::Only)
                .ok_or_else(|| {
                    format!(
                        "unknown eBPF tier {other:?}: expected auto, fentry, kprobe or tracepoint"
                    )
                }),
        }
    }
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub tier: TierChoice,
    /// Capacity of the per-socket LRU map.
    pub max_sockets: u32,
    /// Size of the closed-socket ring buffer in bytes (a power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Drain the ring buffer on a thread of its own as records arrive (the
    /// default), rather than only when the source is read.
    pub drain_thread: bool,
    /// Pin maps and links here and reuse them across restarts (`None`:
    /// everything goes with the agent, `--no-pin`).
    pub pin: Option<super::pin::PinOptions>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            tier: TierChoice::Auto,
            max_sockets: crate::source::DEFAULT_MAX_SOCKETS,
            ringbuf_bytes: crate::source::DEFAULT_RINGBUF_BYTES,
            drain_thread: true,
            pin: None,
        }
    }
}

/// Why loading failed. Each cause appears once under `{:#}`: our own
/// causes ([`BtfError`], the OS errors of the drain thread and the pins) are
/// chained as `source` and left out of the message; aya's errors, which
/// repeat their own causes (`ProgramError::LoadError` prints its `io_error`
/// and also chains it), are kept typed and rendered once in the message
/// ([`Once`]), with no `source`. Render one with `{:#}` (anyhow) or
/// [`Once`] to see its causes.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("this agent was built without its BPF object (AYA_BUILD_SKIP); rebuild with the BPF toolchain (`cargo xtask setup`)")]
    NoObject,
    #[error("resolving struct sock offsets")]
    Btf(#[from] BtfError),
    #[error("reading kernel BTF for BTF-typed programs: {}", Once(.0))]
    KernelBtf(aya::BtfError),
    #[error("loading the BPF object (maps, globals): {}", Once(.0.as_ref()))]
    Object(Box<aya::EbpfError>),
    #[error("{action} {hook} ({tier} tier): {failure}")]
    Program {
        tier: Tier,
        hook: Hook,
        action: &'static str,
        failure: ProgramFailure,
    },
    /// Every tier tried, each with why it failed, in the order tried.
    #[error("no eBPF tier could be attached: {}", tiers(.0))]
    NoTier(Vec<LoadError>),
    #[error("the BPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("starting the ring buffer drain thread")]
    DrainThread(#[source] io::Error),
    #[error("pinned maps and links")]
    Pin(#[source] io::Error),
    #[error("opening map {}: {}", .0, Once(.1))]
    Map(&'static str, aya::maps::MapError),
}

/// The failures of [`LoadError::NoTier`], each with its causes, `; `-separated.
fn tiers(failures: &[LoadError]) -> String {
    let texts: Vec<String> = failures.iter().map(|e| Once(e).to_string()).collect();
    texts.join("; ")
}

/// Why one program could not be loaded or attached. A leaf: the message
/// carries the cause (typed here), so it has no `source`.
#[derive(Debug, Error)]
pub enum ProgramFailure {
    #[error("program missing from the BPF object")]
    Missing,
    /// aya's error with its causes once, then what the errno usually means.
    #[error("{}{hint}", Once(.error.as_ref()))]
    Aya {
        error: Box<ProgramError>,
        hint: &'static str,
    },
    #[error(
        "`{}` is absent: this kernel has no kprobes (CONFIG_KPROBES off)",
        KPROBE_PMU_TYPE
    )]
    NoKprobes,
    #[error("finding or mounting the root cgroup v2: {error}")]
    Cgroup2Root { error: io::Error },
    #[error("opening {}: {error}", .path.display())]
    Cgroup2Open {
        path: std::path::PathBuf,
        error: io::Error,
    },
}

/// What a program error's errno usually means here, as a parenthesis to
/// append (empty when nothing useful can be said).
fn hint(hook: Hook, e: &ProgramError) -> &'static str {
    if matches!(hook.kind, HookKind::Kprobe | HookKind::Kretprobe)
        && !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists()
    {
        return " (this kernel has no kprobes: CONFIG_KPROBES is not set)";
    }
    let io = match e {
        ProgramError::LoadError { io_error, .. } => Some(io_error),
        ProgramError::SyscallError(s) => Some(&s.io_error),
        _ => None,
    };
    match io.and_then(io::Error::raw_os_error) {
        Some(libc::EPERM) => {
            " (EPERM: the kernel refuses this program type here, e.g. no BPF trampolines)"
        }
        Some(libc::ENOENT) => " (ENOENT: the hook does not exist on this kernel)",
        Some(libc::ESRCH) => " (ESRCH: the hook does not exist on this kernel)",
        Some(libc::EINVAL) => " (EINVAL: the kernel rejected the program or attach type)",
        _ => "",
    }
}

fn program_error(tier: Tier, hook: Hook, action: &'static str, e: ProgramError) -> LoadError {
    if let ProgramError::LoadError { verifier_log, .. } = &e {
        log::debug!("verifier log for {hook}:\n{verifier_log}");
    }
    LoadError::Program {
        tier,
        hook,
        action,
        failure: ProgramFailure::Aya {
            hint: hint(hook, &e),
            error: Box::new(e),
        },
    }
}

/// Create the maps and set the globals for `tier` (no program loaded yet).
pub fn open(tier: Tier, opts: &LoadOptions, offsets: &SockOffsets) -> Result<Ebpf, LoadError> {
    if BPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let tier_value = tier.abi() as u32;
    // The TCP state-change counter counts this namespace only (0: all).
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| {
            use std::os::unix::fs::MetadataExt;
            u32::try_from(m.ino()).unwrap_or(0)
        })
        .unwrap_or(0);
    let seed_limit = super::seed::limit(opts.max_sockets);
    let mut loader = EbpfLoader::new();
    for (name, value) in super::seed::globals() {
        loader.override_global(name, value, true);
    }
    loader.override_global(super::seed::LIMIT_GLOBAL, &seed_limit, true);
    let send_reset = super::tcp_events::SendResetFormat::from_kernel().globals();
    for (name, value) in &send_reset {
        loader.override_global(name, value, true);
    }
    loader
        .override_global(names::OFF_SKB_DATA, &offsets.skb_data, true)
        .override_global(names::OFF_SKB_HEAD, &offsets.skb_head, true)
        .override_global(
            names::OFF_SKB_NETWORK_HEADER,
            &offsets.skb_network_header,
            true,
        )
        .override_global(
            names::OFF_SKB_TRANSPORT_HEADER,
            &offsets.skb_transport_header,
            true,
        );
    loader
        .override_global(names::OFF_SKC_FAMILY, &offsets.skc_family, true)
        .override_global(names::OFF_SKC_V6_DADDR, &offsets.skc_v6_daddr, true)
        .override_global(names::OFF_SKC_V6_RCV_SADDR, &offsets.skc_v6_rcv_saddr, true)
        .override_global(names::OFF_SK_PROTOCOL, &offsets.sk_protocol, true)
        .override_global(names::TIER, &tier_value, true)
        .override_global(names::RECV_FLAGS_ARG, &offsets.recv_flags_arg, true)
        .override_global(names::OFF_SOCKET_SK, &offsets.socket_sk, true)
        .override_global(names::OFF_SRTT_US, &offsets.srtt_us, true)
        .override_global(names::OFF_SK_ERR, &offsets.sk_err, true)
        .override_global(names::OFF_TOTAL_RETRANS, &offsets.total_retrans, true)
        .override_global(names::OFF_BYTES_RETRANS, &offsets.bytes_retrans, true)
        .override_global(
            names::OFF_TASK_GROUP_LEADER,
            &offsets.task_group_leader,
            true,
        )
        .override_global(names::OFF_TASK_COMM, &offsets.task_comm, true)
        .override_global(names::OFF_SKC_NET, &offsets.skc_net, true)
        .override_global(names::OFF_NET_INUM, &offsets.net_inum, true)
        .override_global(names::NETNS_INUM, &netns, true)
        .map_max_entries(names::SOCKETS, opts.max_sockets)
        .map_max_entries(
            names::CLAIMS,
            opts.max_sockets
                .saturating_mul(netwatch_common::OWNERS as u32),
        )
        .map_max_entries(names::CLOSED, opts.ringbuf_bytes)
        .map_max_entries(names::ACTIVE[0], opts.max_sockets)
        .map_max_entries(names::ACTIVE[1], opts.max_sockets)
        .load(BPF_OBJECT)
        .map_err(|e| LoadError::Object(Box::new(e)))
}

/// The program `hook` names, from the loaded object.
fn find_program(ebpf: &mut Ebpf, tier: Tier, hook: Hook) -> Result<&mut Program, LoadError> {
    ebpf.program_mut(hook.program)
        .ok_or_else(|| LoadError::Program {
            tier,
            hook,
            action: "finding",
            failure: ProgramFailure::Missing,
        })
}

/// Load (verify) one program without attaching it.
pub fn load_program(ebpf: &mut Ebpf, tier: Tier, hook: Hook, btf: &Btf) -> Result<(), LoadError> {
    let prog = find_program(ebpf, tier, hook)?;
    let err = |e| program_error(tier, hook, "loading", e);
    match hook.kind {
        HookKind::Fentry => {
            let p: &mut FEntry = prog.try_into().map_err(err)?;
            p.load(hook.target, btf).map_err(err)
        }
        HookKind::Fexit => {
            let p: &mut FExit = prog.try_into().map_err(err)?;
            p.load(hook.target, btf).map_err(err)
        }
        HookKind::Kprobe | HookKind::Kretprobe => {
            let p: &mut KProbe = prog.try_into().map_err(err)?;
            p.load().map_err(err)
        }
        HookKind::TpBtf => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(err)?;
            p.load(hook.target, btf).map_err(err)
        }
        HookKind::Tracepoint => {
            let p: &mut TracePoint = prog.try_into().map_err(err)?;
            p.load().map_err(err)
        }
        HookKind::CgroupSockRelease => {
            let p: &mut CgroupSock = prog.try_into().map_err(err)?;
            p.load().map_err(err)
        }
    }
}

/// Pin a freshly made link at `dir/<program>` (nothing without `dir`).
fn pin_link<L>(link: L, dir: &std::path::Path, tier: Tier, hook: Hook) -> Result<(), LoadError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: fmt::Display,
{
    let fail = |reason: String| {
        LoadError::Pin(io::Error::other(format!(
            "pinning the {tier} tier's link for {hook}: {reason}"
        )))
    };
    let fd = FdLink::try_from(link).map_err(|e| fail(format!("not a BPF link: {e}")))?;
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    fd.pin(dir.join(hook.program))
        .map(drop)
        .map_err(|e| fail(e.to_string()))
}

/// Attach a loaded program. The link lives as long as `ebpf`, or, pinned
/// under `pin` (a directory), until its pin is removed.
fn attach_program(
    ebpf: &mut Ebpf,
    tier: Tier,
    hook: Hook,
    pin: Option<&std::path::Path>,
) -> Result<(), LoadError> {
    let prog = find_program(ebpf, tier, hook)?;
    let err = |e| program_error(tier, hook, "attaching", e);
    macro_rules! done {
        ($p:expr, $id:expr) => {{
            let id = $id.map_err(err)?;
            match pin {
                Some(dir) => pin_link($p.take_link(id).map_err(err)?, dir, tier, hook),
                None => Ok(()),
            }
        }};
    }
    match hook.kind {
        HookKind::Fentry => {
            let p: &mut FEntry = prog.try_into().map_err(err)?;
            done!(p, p.attach())
        }
        HookKind::Fexit => {
            let p: &mut FExit = prog.try_into().map_err(err)?;
            done!(p, p.attach())
        }
        HookKind::Kprobe | HookKind::Kretprobe => {
            let p: &mut KProbe = prog.try_into().map_err(err)?;
            done!(p, p.attach(hook.target, 0))
        }
        HookKind::TpBtf => {
            let p: &mut BtfTracePoint = prog.try_into().map_err(err)?;
            done!(p, p.attach())
        }
        HookKind::Tracepoint => {
            let p: &mut TracePoint = prog.try_into().map_err(err)?;
            let (category, name) = hook.target.split_once('/').unwrap_or(("", hook.target));
            done!(p, p.attach(category, name))
        }
        HookKind::CgroupSockRelease => {
            let root = cgroup2_root().map_err(|error| LoadError::Program {
                tier,
                hook,
                action: "attaching",
                failure: ProgramFailure::Cgroup2Root { error },
            })?;
            let dir = std::fs::File::open(&root).map_err(|error| LoadError::Program {
                tier,
                hook,
                action: "attaching",
                failure: ProgramFailure::Cgroup2Open {
                    path: root.clone(),
                    error,
                },
            })?;
            let p: &mut CgroupSock = prog.try_into().map_err(err)?;
            // Attached as a BPF link (Linux ≥ 5.7), which always runs
            // alongside the root cgroup's other programs (systemd's, other
            // agents'); the kernel takes no attach flags for links.
            done!(p, p.attach(&dir, CgroupAttachMode::Single))
        }
    }
}

/// Where this agent mounts cgroup v2 when the system has not.
const OWN_CGROUP2: &str = "/run/netwatch/cgroup2";

/// The root of the cgroup v2 hierarchy: from `/proc/self/mountinfo` (a
/// pure v2 system at `/sys/fs/cgroup`, hybrid at `/sys/fs/cgroup/unified`),
/// or mounted at [`OWN_CGROUP2`] if there is none (a minimal guest).
pub fn cgroup2_root() -> io::Result<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options... - fstype source ...
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split_whitespace().collect();
        if right.split_whitespace().next() == Some("cgroup2") && fields.get(3) == Some(&"/") {
            if let Some(mp) = fields.get(4) {
                return Ok(std::path::PathBuf::from(mp));
            }
        }
    }
    std::fs::create_dir_all(OWN_CGROUP2)?;
    rustix::mount::mount(
        "cgroup2",
        OWN_CGROUP2,
        "cgroup2",
        rustix::mount::MountFlags::empty(),
        None,
    )?;
    info!("mounted cgroup v2 at {OWN_CGROUP2} (needed to see UDP sockets close)");
    Ok(std::path::PathBuf::from(OWN_CGROUP2))
}

/// Load and attach every program of `tier` plus the lifecycle tracepoint.
pub fn load_tier(tier: Tier, opts: &LoadOptions, offsets: &SockOffsets) -> Result<Ebpf, LoadError> {
    let mut ebpf = open(tier, opts, offsets)?;
    // Parsed after `open`, whose loader parses (and drops) a copy of its
    // own: never two copies at once.
    let btf = super::btf::kernel_btf_aya().map_err(LoadError::KernelBtf)?;
    let btf: &Btf = &btf;
    // Pinned links go to the staging directory's `links/<tier>/`.
    let links = opts
        .pin
        .as_ref()
        .map(|p| super::pin::staging(p, opts).join("links").join(tier.name()));
    if let Some(stage) = &links {
        // A tier that failed before left its links here: unpin them.
        if let Some(parent) = stage.parent().and_then(std::path::Path::parent) {
            let _ = super::pin::remove(parent);
        }
    }
    for hook in tier.hooks(offsets) {
        load_program(&mut ebpf, tier, hook, btf)?;
        attach_program(&mut ebpf, tier, hook, links.as_deref())?;
    }
    Ok(ebpf)
}

/// Raise RLIMIT_MEMLOCK for kernels that still charge BPF memory to it.
/// Current kernels charge the cgroup instead, so failure is only a warning.
fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass; no memory is retained.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        log::debug!(
            "raising RLIMIT_MEMLOCK: {} (fine on kernels ≥ 5.11, which charge BPF memory to the cgroup)",
            io::Error::last_os_error()
        );
    }
}

/// Where tracepoints are attached from.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Classic tracepoints are attached through tracefs, which a fresh system
/// may not have mounted: mount it (we are root) and say so. Failure is a
/// warning; attaching then fails with its own error.
pub fn ensure_tracefs() {
    let events = std::path::Path::new(TRACEFS).join("events");
    if events.exists() || std::path::Path::new("/sys/kernel/debug/tracing/events").exists() {
        return;
    }
    match rustix::mount::mount("nodev", TRACEFS, "tracefs", rustix::mount::MountFlags::empty(), None) {
        Ok(()) => info!("mounted tracefs at {TRACEFS} (needed to attach tracepoints)"),
        Err(e) => warn!("tracefs is not mounted and mounting it at {TRACEFS} failed: {e}; tracepoints cannot attach"),
    }
}

/// aya attaches kprobes through the kprobe PMU (Linux >= 4.17), whose type
/// it reads from here: a kernel built without kprobes has no such file.
const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

/// Why `tier` cannot attach on this kernel, when that is known without
/// trying.
fn unavailable(tier: Tier) -> Option<LoadError> {
    if tier == Tier::Kprobe && !std::path::Path::new(KPROBE_PMU_TYPE).exists() {
        let hook = tier.programs().first().copied()?;
        return Some(LoadError::Program {
            tier,
            hook,
            action: "attaching",
            failure: ProgramFailure::NoKprobes,
        });
    }
    None
}

/// Load the tier `opts` asks for, or the best one that attaches.
pub fn load_best(opts: &LoadOptions) -> Result<(Ebpf, Tier), LoadError> {
    if BPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    raise_memlock();
    ensure_tracefs();
    let offsets = SockOffsets::from_kernel()?;
    // Everything the btf-rs parse gives is resolved now (the seeding
    // offsets are kept once resolved): free it before aya parses its own,
    // so start-up never holds both (~40 MB and ~25 MB).
    let _ = super::seed::globals();
    super::btf::release_btf_rs();
    let candidates: Vec<Tier> = match opts.tier {
        TierChoice::Auto => Tier::ALL.to_vec(),
        TierChoice::Only(t) => vec![t],
    };
    let mut reasons = Vec::new();
    for (i, &tier) in candidates.iter().enumerate() {
        // Known not to attach: skip creating the tier's maps and loading
        // its programs only to learn it (start-up time).
        let attempt = match unavailable(tier) {
            Some(e) => Err(e),
            None => load_tier(tier, opts, &offsets),
        };
        match attempt {
            Ok(ebpf) => {
                info!("eBPF collector attached on the {tier} tier");
                return Ok((ebpf, tier));
            }
            // Not the tier's fault: the caller goes on without pins.
            Err(e @ LoadError::Pin(_)) => return Err(e),
            Err(e) if opts.tier == TierChoice::Auto => {
                match candidates.get(i + 1) {
                    Some(next) => warn!("{}; falling back to the {next} tier", Once(&e)),
                    None => warn!("{}; no tier left", Once(&e)),
                }
                reasons.push(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(LoadError::NoTier(reasons))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real failure of the load's first step, resolving the socket
    /// offsets from a BTF file (`load_best` reads the kernel's the same
    /// way), rendered as the agent does (`{:#}`): each cause appears once.
    /// btf-rs's I/O error prints its `io::Error` and also chains it; before
    /// this, `BtfError` and `LoadError` did the same, and the OS error's
    /// text came four times.
    #[test]
    fn a_load_error_shows_each_cause_once() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("vmlinux");
        let err = LoadError::from(SockOffsets::from_file(&missing).expect_err("no such file"));
        let rendered = format!("{:#}", anyhow::Error::from(err));
        let os = io::Error::from_raw_os_error(libc::ENOENT).to_string();
        assert_eq!(
            rendered,
            format!(
                "resolving struct sock offsets: reading kernel BTF from {}: i/o error: {os} \
                 (is CONFIG_DEBUG_INFO_BTF enabled?)",
                missing.display()
            )
        );
        assert_eq!(rendered.matches(&os).count(), 1, "{rendered}");
        assert_eq!(
            rendered.matches("reading kernel BTF").count(),
            1,
            "{rendered}"
        );

        // Not BTF at all: btf-rs's format error, a leaf, once too.
        let garbage = dir.path().join("not-btf");
        std::fs::write(&garbage, b"not BTF at all").expect("writing the file");
        let err = LoadError::from(SockOffsets::from_file(&garbage).expect_err("not BTF"));
        assert_eq!(
            format!("{:#}", anyhow::Error::from(err)),
            format!(
                "resolving struct sock offsets: reading kernel BTF from {}: \
                 Invalid BTF magic: 0x6f6e (is CONFIG_DEBUG_INFO_BTF enabled?)",
                garbage.display()
            )
        );
    }

    #[test]
    fn tier_choice_parses() {
        assert_eq!("auto".parse::<TierChoice>(), Ok(TierChoice::Auto));
        assert_eq!(
            "kprobe".parse::<TierChoice>(),
            Ok(TierChoice::Only(Tier::Kprobe))
        );
        assert!("xdp".parse::<TierChoice>().unwrap_err().contains("fentry"));
    }

    /// Which MPTCP programs each tier attaches, from the kernel's BTF facts:
    /// this host's (6.18: `mptcp_recvmsg(sk, msg, len, flags)`), Debian 6.1's
    /// and 6.12's (`addr_len` after `flags`), a kernel before 5.19
    /// (`nonblock` before `flags`), one where `mptcp_recvmsg` took `flags`
    /// elsewhere than `tcp_recvmsg`, and one without MPTCP.
    #[test]
    fn mptcp_programs_follow_btf() {
        let host = SockOffsets::from_kernel().expect("this kernel publishes BTF");
        assert_eq!(
            (host.mptcp_send, host.mptcp_recv),
            (true, Some((3, 4))),
            "this host's kernel has MPTCP with a 4-parameter mptcp_recvmsg"
        );
        let names = |tier: Tier, o: &SockOffsets| -> Vec<String> {
            tier.mptcp_programs(o)
                .iter()
                .map(|h| format!("{h} {}", h.program))
                .collect()
        };
        let kprobes = [
            "kprobe/mptcp_sendmsg kprobe_mptcp_sendmsg",
            "kretprobe/mptcp_sendmsg kretprobe_mptcp_sendmsg",
            "kprobe/mptcp_recvmsg kprobe_mptcp_recvmsg",
            "kretprobe/mptcp_recvmsg kretprobe_mptcp_recvmsg",
        ];
        assert_eq!(
            names(Tier::Fentry, &host),
            ["fexit/mptcp_sendmsg fexit_mptcp_sendmsg", "fexit/mptcp_recvmsg fexit_mptcp_recvmsg_4"]
        );
        assert_eq!(names(Tier::Kprobe, &host), kprobes);
        assert!(names(Tier::Tracepoint, &host).is_empty());

        let debian = SockOffsets {
            recv_flags_arg: 3,
            recv_nargs: 5,
            mptcp_recv: Some((3, 5)),
            ..host
        };
        assert_eq!(
            names(Tier::Fentry, &debian),
            ["fexit/mptcp_sendmsg fexit_mptcp_sendmsg", "fexit/mptcp_recvmsg fexit_mptcp_recvmsg"]
        );
        assert_eq!(names(Tier::Kprobe, &debian), kprobes);

        let old = SockOffsets {
            recv_flags_arg: 4,
            recv_nargs: 6,
            mptcp_recv: Some((4, 6)),
            ..host
        };
        assert_eq!(
            names(Tier::Fentry, &old),
            [
                "fexit/mptcp_sendmsg fexit_mptcp_sendmsg",
                "fexit/mptcp_recvmsg fexit_mptcp_recvmsg_nonblock"
            ]
        );
        assert_eq!(names(Tier::Kprobe, &old), kprobes);

        // The kprobe reads `flags` at `tcp_recvmsg`'s index: not attached
        // where they differ (its sends still are).
        let apart = SockOffsets {
            mptcp_recv: Some((4, 6)),
            ..host
        };
        assert_eq!(names(Tier::Kprobe, &apart), kprobes[..2]);

        let none = SockOffsets {
            mptcp_send: false,
            mptcp_recv: None,
            ..host
        };
        for tier in Tier::ALL {
            assert!(names(tier, &none).is_empty(), "{tier}");
            assert_eq!(
                tier.hooks(&none).len() + tier.mptcp_programs(&host).len(),
                tier.hooks(&host).len(),
                "{tier}: hooks() attaches the MPTCP programs"
            );
        }
    }

    #[test]
    fn every_tier_counts_both_directions() {
        let offsets = SockOffsets::from_kernel().expect("this kernel publishes BTF");
        for tier in Tier::ALL {
            let names: Vec<_> = tier.hooks(&offsets).iter().map(|h| h.program).collect();
            assert!(
                names.iter().any(|n| n.contains("send")),
                "{tier}: {names:?}"
            );
            assert!(
                names.iter().any(|n| n.contains("recv")),
                "{tier}: {names:?}"
            );
        }
    }
}
