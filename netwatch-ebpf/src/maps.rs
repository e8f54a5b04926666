//! The maps and load-time globals shared by every program. Userspace finds
//! them by the names in `netwatch_common::names`; sizes set here are
//! defaults the loader overrides. The offsets into a socket live with
//! their one reader, [`crate::sk`].

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use netwatch_common::{counter, DestroyedKey, SockKey, SockStats};

/// One owner slot of one socket entry (`SockKey` + `first_ns`), in `CLAIMS`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ClaimKey {
    pub sk: u64,
    pub first_ns: u64,
    pub slot: u32,
    pub _pad: u32,
}

/// kprobe tier: a receive in flight, stashed at `tcp_recvmsg` entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RecvArgs {
    pub sk: u64,
    pub flags: u64,
}

/// Every socket's counters, keyed by its `struct sock` address.
#[map(name = "SOCKETS")]
pub static SOCKETS: LruHashMap<SockKey, SockStats> = LruHashMap::with_max_entries(65536, 0);

/// Which process holds each owner slot of each entry: created with
/// `BPF_NOEXIST`, so exactly one process wins a slot. Sized by the loader
/// to `OWNERS` × the `SOCKETS` capacity; removed when the entry finishes.
#[map(name = "CLAIMS")]
pub static CLAIMS: LruHashMap<ClaimKey, u32> = LruHashMap::with_max_entries(4 * 65536, 0);

/// Final records of sockets that were destroyed or replaced (`netwatch_common::ClosedSock`).
#[map(name = "CLOSED")]
pub static CLOSED: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Final records the ring buffer had no room for, until userspace reads them.
/// Kept apart from `SOCKETS` so a new socket at the same address never
/// inherits a dead one's counters.
#[map(name = "DESTROYED")]
pub static DESTROYED: HashMap<DestroyedKey, SockStats> = HashMap::with_max_entries(16384, 0);

/// The current interval number (`netwatch_common::names::EPOCH`), advanced
/// by userspace once per read.
#[map(name = "EPOCH")]
pub static EPOCH: Array<u32> = Array::with_max_entries(1, 0);

/// The sockets that moved bytes or changed state in an even interval…
#[map(name = "ACTIVE0")]
pub static ACTIVE0: HashMap<SockKey, u32> = HashMap::with_max_entries(65536, 0);

/// …and in an odd one. Userspace drains the generation the events have
/// just left with `BPF_MAP_LOOKUP_AND_DELETE_BATCH`. Sized like `SOCKETS`.
#[map(name = "ACTIVE1")]
pub static ACTIVE1: HashMap<SockKey, u32> = HashMap::with_max_entries(65536, 0);

/// The programs' own accounting (`netwatch_common::counter`).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// kprobe tier: the socket of a send in flight, by `pid_tgid`, until its kretprobe.
#[map(name = "SEND_ARGS")]
pub static SEND_ARGS: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

/// kprobe tier: the socket and flags of a `tcp_recvmsg` in flight, by `pid_tgid`.
#[map(name = "RECV_ARGS")]
pub static RECV_ARGS: HashMap<u64, RecvArgs> = HashMap::with_max_entries(16384, 0);

/// Per-CPU room to build a new entry in (a `SockStats` with the rest of a
/// program's frame does not fit the 512-byte BPF stack): one slot per
/// program that builds entries, see [`scratch`].
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<SockStats> = PerCpuArray::with_max_entries(scratch::LEN, 0);

/// Which `SCRATCH` slot each program builds its new entries in.
///
/// Programs nest: a softirq (`sock:inet_sock_set_state` when a SYN-ACK or
/// the handshake's last ACK arrives, `tcp:tcp_destroy_sock`) can run on a
/// CPU in the middle of any program running in process context there, and
/// a trampoline program (fentry/fexit), the `cgroup/sock_release` program
/// and the iterators run with only migration disabled, so another task can
/// preempt them on their CPU (a preemptible kernel) and run its own
/// programs. One shared slot per CPU let the inner program overwrite the
/// entry the outer one was building (another socket's addresses, protocol
/// and `first_ns` in the outer socket's new entry).
///
/// A program never runs nested inside itself on one CPU, and keeps its CPU
/// from entry to exit:
/// - fentry/fexit and `tp_btf` programs: the kernel's per-program recursion
///   guard (`prog->active`, per CPU, held across preemption: the trampoline
///   and `__bpf_trace_run` skip a nested run and count it in the program's
///   `recursion_misses`), with migration disabled throughout;
/// - kprobes, kretprobes and classic tracepoints: `trace_call_bpf` runs no
///   such program while another one is running on the CPU
///   (`bpf_prog_active`, preemption disabled); a skipped run is counted in
///   `recursion_misses` from Linux 6.7 on, not counted on older kernels;
/// - the seeding iterators: run one after another by the loader's thread.
///
/// So a slot of its own per program is never shared by two runs in flight.
/// The `cgroup/sock_release` program (no guard) builds no entry and uses
/// no slot. The three `fexit_tcp_recvmsg*` variants share one slot: the
/// loader attaches exactly one (so do the `fexit_mptcp_recvmsg*` ones). aya-log's per-CPU buffer is used by
/// `tp_tcp_destroy_sock` alone. `COUNTERS` is per CPU too and shared by
/// every program: [`bump`] adds atomically, so a nested bump is never lost.
pub mod scratch {
    pub const FEXIT_TCP_SENDMSG: u32 = 0;
    pub const FEXIT_TCP_SENDPAGE: u32 = 1;
    pub const FEXIT_TCP_RECVMSG: u32 = 2;
    pub const FEXIT_TCP_SPLICE_READ: u32 = 3;
    pub const FEXIT_UDP_SENDMSG: u32 = 4;
    pub const FEXIT_UDPV6_SENDMSG: u32 = 5;
    pub const FEXIT_UDP_SENDPAGE: u32 = 6;
    pub const FENTRY_SKB_CONSUME_UDP: u32 = 7;
    pub const KRETPROBE_TCP_SENDMSG: u32 = 8;
    pub const KRETPROBE_TCP_SENDPAGE: u32 = 9;
    pub const KRETPROBE_TCP_RECVMSG: u32 = 10;
    pub const KRETPROBE_TCP_SPLICE_READ: u32 = 11;
    pub const KRETPROBE_UDP_SENDMSG: u32 = 12;
    pub const KRETPROBE_UDPV6_SENDMSG: u32 = 13;
    pub const KRETPROBE_UDP_SENDPAGE: u32 = 14;
    pub const KPROBE_SKB_CONSUME_UDP: u32 = 15;
    pub const TP_SOCK_SEND_LENGTH: u32 = 16;
    pub const TP_SOCK_RECV_LENGTH: u32 = 17;
    pub const TP_INET_SOCK_SET_STATE: u32 = 18;
    pub const SEED: u32 = 19;
    pub const TP_TCP_RETRANSMIT_SKB: u32 = 20;
    pub const FEXIT_MPTCP_SENDMSG: u32 = 21;
    pub const FEXIT_MPTCP_RECVMSG: u32 = 22;
    pub const KRETPROBE_MPTCP_SENDMSG: u32 = 23;
    pub const KRETPROBE_MPTCP_RECVMSG: u32 = 24;
    /// Number of slots.
    pub const LEN: u32 = 25;
}

/// The `netwatch_common::Tier` the loader attached, stamped on new entries.
#[unsafe(no_mangle)]
static TIER: u32 = 0;
/// Index of `flags` among `tcp_recvmsg`'s arguments: 4 before Linux 5.19
/// (`nonblock` came first), 3 since. Resolved from BTF by the loader.
#[unsafe(no_mangle)]
static RECV_FLAGS_ARG: u32 = 3;
/// Offset of `group_leader` in `struct task_struct`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_TASK_GROUP_LEADER: u32 = 0;
/// Offset of `comm` in `struct task_struct`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_TASK_COMM: u32 = 0;

/// The loader's network namespace inode number; 0 when unknown.
#[unsafe(no_mangle)]
static NETNS_INUM: u32 = 0;

/// Read a load-time global. `read_volatile` keeps the compiler from folding
/// in the default, so the loader's value is the one used.
#[inline(always)]
fn global(v: &'static u32) -> usize {
    // SAFETY: reading an initialised static.
    unsafe { core::ptr::read_volatile(v) as usize }
}

/// The tier the loader attached ([`TIER`]).
#[inline(always)]
pub fn tier() -> u8 {
    global(&TIER) as u8
}

/// [`RECV_FLAGS_ARG`].
#[inline(always)]
pub fn recv_flags_arg() -> usize {
    global(&RECV_FLAGS_ARG)
}

/// Offset of `group_leader` in `struct task_struct`; 0 when unknown.
#[inline(always)]
pub fn off_task_group_leader() -> usize {
    global(&OFF_TASK_GROUP_LEADER)
}

/// Offset of `comm` in `struct task_struct`; 0 when unknown.
#[inline(always)]
pub fn off_task_comm() -> usize {
    global(&OFF_TASK_COMM)
}

/// The loader's network namespace inode number; 0 when unknown.
#[inline(always)]
pub fn netns_inum() -> u32 {
    global(&NETNS_INUM) as u32
}

/// Add one to a `COUNTERS` slot. Atomically: the slot is per CPU, but a
/// program that interrupts or preempts another on this CPU (see
/// [`scratch`]) may bump the same slot between a plain load and store,
/// and one of the two counts would be lost.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a valid map value pointer; changed only by atomic adds.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
}
