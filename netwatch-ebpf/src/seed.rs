//! Seeding: BPF iterators run once by the loader after the tier's programs
//! are attached, that create a `SOCKETS` entry (0 bytes) for each IPv4/IPv6
//! TCP/UDP socket that already exists, so idle sockets opened before the
//! agent started are listed from the first read. First every open file of
//! every task (`iter/task_file`, Linux ≥ 5.8), which gives each socket its
//! owners (one owner slot per holding process, up to `OWNERS`); then the TCP and UDP socket tables (`iter/tcp`, `iter/udp`,
//! Linux ≥ 5.9) for sockets no task holds (no owner, as `ss` shows them;
//! time-wait and request sockets excluded). It never counts bytes and never
//! replaces an entry the counting programs (or an earlier pass) made.
//!
//! Every offset into `file`, `inode`, `socket`, `task_struct` and the cgroup
//! chain comes from the running kernel's BTF through the load-time globals
//! below (rustc emits no CO-RE relocations); the defaults are placeholders.
//! The socket's own fields are read through [`crate::sk`].
//! For each socket it writes one byte to the iterator's output
//! (`netwatch_common::seeded`) so userspace can tally what was seeded, and
//! the kernel never walks a million objects without output (it would stop
//! the read with EAGAIN).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use aya_ebpf::{macros::map, maps::Array};
use netwatch_common::{seeded, SockKey, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, TCP_CLOSE};

use crate::maps;
use crate::sk::{self, read_at};

/// `S_IFMT` and `S_IFSOCK` from `include/uapi/linux/stat.h`.
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
/// `SOCK_STREAM` and `SOCK_DGRAM` (`socket->type`).
const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;

// Load-time globals, set by the loader from BTF (netwatch-user's
// `source::ebpf::seed`, which names each one).
#[unsafe(no_mangle)]
static OFF_FILE_F_INODE: u32 = 32;
#[unsafe(no_mangle)]
static OFF_FILE_PRIVATE_DATA: u32 = 200;
#[unsafe(no_mangle)]
static OFF_INODE_I_MODE: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SOCKET_TYPE: u32 = 4;
#[unsafe(no_mangle)]
static OFF_TASK_TGID: u32 = 0;
#[unsafe(no_mangle)]
static OFF_TASK_CGROUPS: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CSS_SET_DFL_CGRP: u32 = 0;
#[unsafe(no_mangle)]
static OFF_CGROUP_KN: u32 = 0;
#[unsafe(no_mangle)]
static OFF_KERNFS_NODE_ID: u32 = 0;
/// Most entries seeding may create (the loader sets half the capacity of
/// `SOCKETS`), so existing idle sockets never make the LRU evict entries.
#[unsafe(no_mangle)]
static SEED_LIMIT: u32 = 0;

/// Entries seeding created so far (slot 0). The iterators run one object at
/// a time in the reading task, so a plain read-modify-write is enough.
#[map(name = "SEEDED")]
static SEEDED: Array<u32> = Array::with_max_entries(1, 0);

/// `account::seed` within the budget, else `seeded::SKIPPED`. Once the
/// budget is used up, a holder of a socket that already has an entry still
/// gets its owner slot (that creates no entry).
#[inline(always)]
unsafe fn seed_within_limit(
    sk: *const u8,
    family: u16,
    protocol: u8,
    task: *const u8,
    tgid: u32,
    cgroup_id: u64,
) -> u8 {
    let Some(count) = SEEDED.get_ptr_mut(0) else {
        return seeded::SKIPPED;
    };
    if *count as usize >= global(&SEED_LIMIT)
        && (task.is_null() || maps::SOCKETS.get_ptr(SockKey { sk: sk as u64 }).is_none())
    {
        return seeded::SKIPPED;
    }
    let outcome = crate::account::seed(sk, family, protocol, task, tgid, cgroup_id);
    if outcome == seeded::CREATED {
        *count += 1;
    }
    outcome
}

#[inline(always)]
fn global(v: &'static u32) -> usize {
    // SAFETY: reading an initialised static; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(v) as usize }
}

/// Read a kernel pointer at `base + off`; null if unreadable.
#[inline(always)]
unsafe fn ptr_at(base: *const u8, off: usize) -> *const u8 {
    read_at::<u64>(base, off).unwrap_or(0) as *const u8
}

/// The cgroup v2 id of `task`: `task->cgroups->dfl_cgrp->kn->id`, 0 if any
/// link is unreadable.
#[inline(always)]
unsafe fn task_cgroup_id(task: *const u8) -> u64 {
    let cset = ptr_at(task, global(&OFF_TASK_CGROUPS));
    if cset.is_null() {
        return 0;
    }
    let cgrp = ptr_at(cset, global(&OFF_CSS_SET_DFL_CGRP));
    if cgrp.is_null() {
        return 0;
    }
    let kn = ptr_at(cgrp, global(&OFF_CGROUP_KN));
    if kn.is_null() {
        return 0;
    }
    read_at::<u64>(kn, global(&OFF_KERNFS_NODE_ID)).unwrap_or(0)
}

/// `TCP_TIME_WAIT` and `TCP_NEW_SYN_RECV`: not full sockets (no
/// `tcp_destroy_sock` ever ends them), never seeded.
pub(crate) const TCP_TIME_WAIT: u8 = 6;
const TCP_NEW_SYN_RECV: u8 = 12;

/// `meta` and the socket of a `bpf_iter__tcp` / `bpf_iter__udp` context
/// (both start `{ meta, sock }`); `None` when either is null.
///
/// # Safety
/// `ctx` must be the kernel's iterator context for `iter/tcp` or `iter/udp`.
#[inline(always)]
pub(crate) unsafe fn iter_sock(ctx: *mut c_void) -> Option<(*const u8, *const u8)> {
    let ctx = ctx as *const u8;
    let meta = core::ptr::read(ctx as *const *const u8);
    let sk = core::ptr::read(ctx.add(8) as *const *const u8);
    (!meta.is_null() && !sk.is_null()).then_some((meta, sk))
}

/// Write one outcome byte to the iterator's output.
#[inline(always)]
unsafe fn emit(meta: *const u8, outcome: u8) {
    // `meta->seq` is the first field of `struct bpf_iter_meta`.
    let seq = core::ptr::read(meta as *const *mut c_void);
    bpf_seq_write(seq.cast(), &outcome as *const u8 as *const c_void, 1);
}

/// Seed `sk` with no owner (found by `iter/tcp` or `iter/udp` after
/// `iter/task_file` has seeded every socket some task holds open): sockets
/// no visible process holds, as `ss` lists them without `users:`.
#[inline(always)]
unsafe fn seed_ownerless(meta: *const u8, sk: *const u8, protocol: u8) {
    let family = sk::family(sk);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let outcome = seed_within_limit(sk, family, protocol, core::ptr::null(), 0, 0);
    emit(meta, outcome);
}

/// Called for each TCP socket of the agent's network namespace
/// (`struct bpf_iter__tcp { meta, sk_common, uid }`, Linux ≥ 5.9).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn iter_tcp(ctx: *mut c_void) -> i32 {
    // SAFETY: `ctx` is the kernel's `bpf_iter__tcp`; the socket pointer is
    // null-checked and read with bpf_probe_read_kernel.
    unsafe {
        let Some((meta, sk)) = iter_sock(ctx) else {
            return 0;
        };
        // `sock_common` heads full, time-wait and request sockets alike.
        let state = sk::state(sk).unwrap_or(TCP_TIME_WAIT);
        if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
            return 0;
        }
        seed_ownerless(meta, sk, IPPROTO_TCP);
    }
    0
}

/// Called for each UDP socket of the agent's network namespace
/// (`struct bpf_iter__udp { meta, udp_sk, uid, bucket }`, Linux ≥ 5.9).
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub fn iter_udp(ctx: *mut c_void) -> i32 {
    // SAFETY: `ctx` is the kernel's `bpf_iter__udp`; the socket pointer
    // (a `udp_sock`, which starts with its `struct sock`) is null-checked
    // and read with bpf_probe_read_kernel.
    unsafe {
        let Some((meta, sk)) = iter_sock(ctx) else {
            return 0;
        };
        seed_ownerless(meta, sk, IPPROTO_UDP);
    }
    0
}

/// `struct bpf_iter__task_file`: one 8-byte slot per argument of
/// `bpf_iter_task_file(meta, task, fd, file)`.
mod ctx {
    pub const META: usize = 0;
    pub const TASK: usize = 8;
    pub const FILE: usize = 24;
}

/// Called by the kernel for each (task, open file), and once more with a
/// null task at the end.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn iter_task_file(ctx: *mut c_void) -> i32 {
    // SAFETY: `ctx` is the kernel's `bpf_iter__task_file`; its pointer
    // fields are null-checked before use and everything behind them is read
    // with bpf_probe_read_kernel.
    unsafe { on_file(ctx as *const u8) };
    0
}

#[inline(always)]
unsafe fn on_file(ctx: *const u8) {
    let meta = core::ptr::read(ctx.add(ctx::META) as *const *const u8);
    let task = core::ptr::read(ctx.add(ctx::TASK) as *const *const u8);
    let file = core::ptr::read(ctx.add(ctx::FILE) as *const *const u8);
    if meta.is_null() || task.is_null() || file.is_null() {
        return;
    }
    let inode = ptr_at(file, global(&OFF_FILE_F_INODE));
    if inode.is_null() {
        return;
    }
    let mode = read_at::<u16>(inode, global(&OFF_INODE_I_MODE)).unwrap_or(0);
    if mode & S_IFMT != S_IFSOCK {
        return;
    }
    let socket = ptr_at(file, global(&OFF_FILE_PRIVATE_DATA));
    if socket.is_null() {
        return;
    }
    // Raw sockets may carry IPPROTO_TCP/UDP too: only stream and datagram.
    let kind = read_at::<u16>(socket, global(&OFF_SOCKET_TYPE)).unwrap_or(0);
    let sk = sk::of_socket(socket).unwrap_or(core::ptr::null());
    if sk.is_null() {
        return;
    }
    let family = sk::family(sk);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    // Compared as the kernel's u16: IPPROTO_MPTCP (262) is not TCP.
    let protocol = sk::protocol(sk);
    let protocol = match (protocol, kind) {
        (p, SOCK_STREAM) if p == IPPROTO_TCP as u16 => IPPROTO_TCP,
        (p, SOCK_DGRAM) if p == IPPROTO_UDP as u16 => IPPROTO_UDP,
        _ => return,
    };
    // `ss` lists no TCP socket in CLOSE (never connected, or bound and not
    // listening: neither is in the tables it dumps), and neither do we.
    if protocol == IPPROTO_TCP && sk::state(sk).unwrap_or(TCP_CLOSE) == TCP_CLOSE {
        return;
    }
    // Nor a UDP socket never bound (local port 0: in no table).
    if protocol == IPPROTO_UDP && sk::local_port(sk) == 0 {
        return;
    }
    let tgid = read_at::<u32>(task, global(&OFF_TASK_TGID)).unwrap_or(0);
    let cgroup_id = task_cgroup_id(task);
    let outcome = seed_within_limit(sk, family, protocol, task, tgid, cgroup_id);
    emit(meta, outcome);
}
