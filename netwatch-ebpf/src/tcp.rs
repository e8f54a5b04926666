//! TCP byte counting on the fentry and kprobe tiers, always at a call's
//! return and from its return value (what the application was told):
//! - sends: `tcp_sendmsg` (`write`, `send*`, `writev`, `sendmmsg`, and
//!   `sendfile`/`splice` since Linux 6.5), plus `tcp_sendpage` where
//!   `sendfile`/`splice` still go through it (< 6.5; the loader attaches it
//!   only when `do_tcp_sendpages` exists, so nothing is counted twice);
//! - receives: `tcp_recvmsg` (`read`, `recv*`, `readv`, `recvmmsg`), never
//!   `MSG_PEEK`: counting at return sees one total however often the call
//!   slept (`MSG_WAITALL`, `SO_RCVLOWAT`), unlike `tcp_cleanup_rbuf`, which
//!   runs before every sleep with the running total; and `tcp_splice_read`
//!   for `splice` from a socket, which does not go through `tcp_recvmsg`.
//!
//! The kprobe tier stashes the arguments by thread at entry and takes them
//! at return; a stash found still present at the next entry means a missed
//! return probe, counted as lost. The stashes (`SEND_ARGS`, `RECV_ARGS`) are
//! hash maps keyed by `pid_tgid` (not per-CPU scratch), so a pair can only
//! meet another pair of the same thread: none of the stashing functions
//! runs in softirq or hardirq context (where `pid_tgid` would be the
//! interrupted thread's), and the nested calls one thread makes have keys of
//! their own ([`Send`]: `udp_sendpage` calls `udp_sendmsg` to start a cork,
//! `udpv6_sendmsg` calls `udp_sendmsg` for an IPv4-mapped destination).
//! `tcp_recvmsg` and `tcp_splice_read` never call each other.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use netwatch_common::{counter, IPPROTO_TCP};

use crate::{
    account::{account, Dir},
    maps::{self, bump, scratch, RecvArgs, RECV_ARGS, SEND_ARGS},
    sk,
};

/// `MSG_PEEK`.
const MSG_PEEK: u64 = 2;

/// `BPF_NOEXIST`.
const BPF_NOEXIST: u64 = 1;

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`: the
/// return value follows the three arguments.
#[fexit(function = "tcp_sendmsg")]
pub fn fexit_tcp_sendmsg(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg::<i64>(3) as i32 as i64;
    // SAFETY: sk is the traced function's socket argument.
    unsafe { account(sk, Dir::Tx, ret, IPPROTO_TCP, scratch::FEXIT_TCP_SENDMSG) };
    0
}

/// `int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)` (< 6.5).
#[fexit(function = "tcp_sendpage")]
pub fn fexit_tcp_sendpage(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg::<i64>(5) as i32 as i64;
    // SAFETY: as above.
    unsafe { account(sk, Dir::Tx, ret, IPPROTO_TCP, scratch::FEXIT_TCP_SENDPAGE) };
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)`
/// (Linux ≥ 5.19): the return value follows the five arguments.
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg(ctx: FExitContext) -> i32 {
    let flags: u64 = ctx.arg(3);
    let ret: i64 = ctx.arg(5);
    recv_exit(ctx.arg(0), flags, ret)
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags)`
/// (the newest kernels, without `addr_len`).
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg_4(ctx: FExitContext) -> i32 {
    let flags: u64 = ctx.arg(3);
    let ret: i64 = ctx.arg(4);
    recv_exit(ctx.arg(0), flags, ret)
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int nonblock, int flags, int *addr_len)`
/// (Linux < 5.19). The loader attaches one of the three, from the
/// parameters BTF lists: the verifier rejects a read past a traced
/// function's arguments, so each program reads only its own.
#[fexit(function = "tcp_recvmsg")]
pub fn fexit_tcp_recvmsg_nonblock(ctx: FExitContext) -> i32 {
    let flags: u64 = ctx.arg(4);
    let ret: i64 = ctx.arg(6);
    recv_exit(ctx.arg(0), flags, ret)
}

#[inline(always)]
fn recv_exit(sk: *const u8, flags: u64, ret: i64) -> i32 {
    recv_exit_in(sk, flags, ret, scratch::FEXIT_TCP_RECVMSG)
}

/// [`recv_exit`] building a new entry in `maps::scratch` slot `slot`.
#[inline(always)]
pub fn recv_exit_in(sk: *const u8, flags: u64, ret: i64, slot: u32) -> i32 {
    if flags & MSG_PEEK != 0 {
        return 0;
    }
    // SAFETY: sk is the traced function's socket argument.
    unsafe { account(sk, Dir::Rx, ret as i32 as i64, IPPROTO_TCP, slot) };
    0
}

/// `ssize_t tcp_splice_read(struct socket *sock, loff_t *ppos, struct pipe_inode_info *pipe, size_t len, unsigned int flags)`.
#[fexit(function = "tcp_splice_read")]
pub fn fexit_tcp_splice_read(ctx: FExitContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(5);
    if ret <= 0 || sock.is_null() {
        return 0;
    }
    // SAFETY: sock is the traced function's `struct socket`.
    unsafe {
        if let Ok(sk) = sk::of_socket(sock) {
            account(
                sk,
                Dir::Rx,
                ret,
                IPPROTO_TCP,
                scratch::FEXIT_TCP_SPLICE_READ,
            );
        }
    }
    0
}

/// Which send function a stash belongs to: `udp_sendpage` calls
/// `udp_sendmsg` itself (to start a cork), and `udpv6_sendmsg` calls
/// `udp_sendmsg` for an IPv4-mapped destination, so no two of them share a
/// key: an inner pair never takes or overwrites the outer pair's stash.
#[derive(Clone, Copy)]
pub enum Send {
    /// `tcp_sendmsg`, `udp_sendmsg`.
    Msg,
    /// `tcp_sendpage`, `udp_sendpage`.
    Page,
    /// `udpv6_sendmsg`.
    Msg6,
    /// `mptcp_sendmsg` (drives its subflows with `tcp_sendmsg_locked`,
    /// never `tcp_sendmsg`: a key of its own all the same).
    Mptcp,
}

/// The `SEND_ARGS` key of this thread's `kind` of send (`pid_tgid` never
/// has its top bits set: a tgid is below 2^22).
#[inline(always)]
fn send_key(kind: Send) -> u64 {
    let id = bpf_get_current_pid_tgid();
    match kind {
        Send::Msg => id,
        Send::Page => id | (1 << 63),
        Send::Msg6 => id | (1 << 62),
        Send::Mptcp => id | (1 << 61),
    }
}

/// Remember the socket of a send in flight until its return probe fires.
#[inline(always)]
pub fn stash_send(sk: u64, kind: Send) {
    let id = send_key(kind);
    if SEND_ARGS.insert(id, sk, BPF_NOEXIST).is_err() {
        // Either the previous call's return probe never ran (its stash is
        // still here), or the map is full: a call's bytes go uncounted.
        bump(counter::MISSED_RETURN);
        let _ = SEND_ARGS.insert(id, sk, 0);
    }
}

/// Take the socket stashed by [`stash_send`] for this thread.
#[inline(always)]
pub fn take_send(kind: Send) -> Option<*const u8> {
    let id = send_key(kind);
    // SAFETY: a plain value copy out of the map.
    let sk = unsafe { SEND_ARGS.get(id) }.copied();
    let _ = SEND_ARGS.remove(id);
    sk.map(|s| s as *const u8)
}

#[inline(always)]
pub fn send_return(ctx: &RetProbeContext, kind: Send, slot: u32) -> u32 {
    let ret: i64 = ctx.ret::<i64>() as i32 as i64;
    if let Some(sk) = take_send(kind) {
        // SAFETY: sk was the socket argument of this thread's send.
        unsafe { account(sk, Dir::Tx, ret, IPPROTO_TCP, slot) };
    }
    0
}

#[kprobe(function = "tcp_sendmsg")]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        stash_send(sk, Send::Msg);
    }
    0
}

#[kretprobe(function = "tcp_sendmsg")]
pub fn kretprobe_tcp_sendmsg(ctx: RetProbeContext) -> u32 {
    send_return(&ctx, Send::Msg, scratch::KRETPROBE_TCP_SENDMSG)
}

#[kprobe(function = "tcp_sendpage")]
pub fn kprobe_tcp_sendpage(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        stash_send(sk, Send::Page);
    }
    0
}

#[kretprobe(function = "tcp_sendpage")]
pub fn kretprobe_tcp_sendpage(ctx: RetProbeContext) -> u32 {
    send_return(&ctx, Send::Page, scratch::KRETPROBE_TCP_SENDPAGE)
}

/// Stash a receive: its socket, and its flags (or `MSG_PEEK` for a
/// `tcp_splice_read`, whose first argument is the `struct socket`: marked
/// by the high bit so the return probe knows to follow `sock->sk`).
#[inline(always)]
pub fn stash_recv(args: RecvArgs) {
    let id = bpf_get_current_pid_tgid();
    if RECV_ARGS.insert(id, args, BPF_NOEXIST).is_err() {
        bump(counter::MISSED_RETURN);
        let _ = RECV_ARGS.insert(id, args, 0);
    }
}

/// Flag marking a stashed `struct socket *` (splice) rather than a `struct sock *`.
const SPLICE: u64 = 1 << 63;

#[kprobe(function = "tcp_recvmsg")]
pub fn kprobe_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    stash_recvmsg_entry(&ctx)
}

/// The entry of a `recvmsg` whose `flags` sit where `tcp_recvmsg`'s do
/// (argument 3, or 4 before 5.19: [`maps::recv_flags_arg`]): its socket
/// and flags stashed for the return probe. Shared by `tcp_recvmsg` and
/// `mptcp_recvmsg`.
#[inline(always)]
pub fn stash_recvmsg_entry(ctx: &ProbeContext) -> u32 {
    let Some(sk) = ctx.arg::<u64>(0) else {
        return 0;
    };
    // Both registers are read at constant offsets, then one is chosen:
    // the verifier refuses a context read at a variable offset.
    let (a3, a4) = (ctx.arg::<u64>(3), ctx.arg::<u64>(4));
    let flags = if maps::recv_flags_arg() == 4 { a4 } else { a3 };
    stash_recv(RecvArgs {
        sk,
        flags: flags.unwrap_or(0) & 0xffff_ffff,
    });
    0
}

#[kprobe(function = "tcp_splice_read")]
pub fn kprobe_tcp_splice_read(ctx: ProbeContext) -> u32 {
    if let Some(sock) = ctx.arg::<u64>(0) {
        stash_recv(RecvArgs {
            sk: sock,
            flags: SPLICE,
        });
    }
    0
}

#[kretprobe(function = "tcp_recvmsg")]
pub fn kretprobe_tcp_recvmsg(ctx: RetProbeContext) -> u32 {
    recv_return(&ctx, scratch::KRETPROBE_TCP_RECVMSG)
}

#[kretprobe(function = "tcp_splice_read")]
pub fn kretprobe_tcp_splice_read(ctx: RetProbeContext) -> u32 {
    recv_return(&ctx, scratch::KRETPROBE_TCP_SPLICE_READ)
}

#[inline(always)]
pub fn recv_return(ctx: &RetProbeContext, slot: u32) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: a plain value copy out of the map.
    let Some(args) = (unsafe { RECV_ARGS.get(id) }).copied() else {
        return 0;
    };
    let _ = RECV_ARGS.remove(id);
    let ret: i64 = ctx.ret::<i64>();
    if args.flags & SPLICE != 0 {
        // SAFETY: args.sk is this thread's tcp_splice_read `struct socket`.
        unsafe {
            if let Ok(sk) = sk::of_socket(args.sk as *const u8) {
                account(sk, Dir::Rx, ret, IPPROTO_TCP, slot);
            }
        }
        return 0;
    }
    if args.flags & MSG_PEEK != 0 {
        return 0;
    }
    // SAFETY: args.sk was the socket argument of this thread's tcp_recvmsg.
    unsafe {
        account(
            args.sk as *const u8,
            Dir::Rx,
            ret as i32 as i64,
            IPPROTO_TCP,
            slot,
        )
    };
    0
}
