//! MPTCP byte counting on the fentry and kprobe tiers: an MPTCP socket's
//! `sendmsg`/`recvmsg` are `mptcp_sendmsg`/`mptcp_recvmsg`, counted at
//! their return from their return value (what the application was told),
//! on the MPTCP socket itself, `MSG_PEEK` never. Its TCP subflows are
//! in-kernel sockets driven with `tcp_sendmsg_locked` and read straight
//! from their receive queues, never through `tcp_sendmsg`/`tcp_recvmsg`,
//! so no hook counts their bytes a second time. The entry is stored as TCP
//! (MPTCP is TCP on the wire; the tracepoint tier does the same) and ends
//! at the socket's release ([`crate::lifecycle::sock_release`]):
//! `tcp:tcp_destroy_sock` fires for the subflows, never the MPTCP socket.
//! The loader attaches these only where the kernel's BTF has the functions
//! (`CONFIG_MPTCP`), the `fexit_mptcp_recvmsg*` variant that matches the
//! kernel's signature, and the kprobes only where `mptcp_recvmsg` takes
//! its `flags` where `tcp_recvmsg` does (one load-time global for both).
//! `mptcp_sendmsg` and `mptcp_recvmsg` never call each other, nor the TCP
//! functions the kprobe stashes belong to.

use aya_ebpf::{
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use netwatch_common::IPPROTO_TCP;

use crate::{
    account::{account, Dir},
    maps::scratch,
    tcp::{recv_exit_in, recv_return, send_return, stash_recvmsg_entry, stash_send, Send},
};

/// `int mptcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)`.
#[fexit(function = "mptcp_sendmsg")]
pub fn fexit_mptcp_sendmsg(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg::<i64>(3) as i32 as i64;
    // SAFETY: sk is the traced function's socket argument.
    unsafe { account(sk, Dir::Tx, ret, IPPROTO_TCP, scratch::FEXIT_MPTCP_SENDMSG) };
    0
}

/// `int mptcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)`
/// (Linux 5.19 ..): the return value follows the five arguments.
#[fexit(function = "mptcp_recvmsg")]
pub fn fexit_mptcp_recvmsg(ctx: FExitContext) -> i32 {
    let flags: u64 = ctx.arg(3);
    let ret: i64 = ctx.arg(5);
    recv_exit_in(ctx.arg(0), flags, ret, scratch::FEXIT_MPTCP_RECVMSG)
}

/// `int mptcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags)`
/// (the newest kernels, without `addr_len`).
#[fexit(function = "mptcp_recvmsg")]
pub fn fexit_mptcp_recvmsg_4(ctx: FExitContext) -> i32 {
    let flags: u64 = ctx.arg(3);
    let ret: i64 = ctx.arg(4);
    recv_exit_in(ctx.arg(0), flags, ret, scratch::FEXIT_MPTCP_RECVMSG)
}

/// `int mptcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int nonblock, int flags, int *addr_len)`
/// (Linux < 5.19).
#[fexit(function = "mptcp_recvmsg")]
pub fn fexit_mptcp_recvmsg_nonblock(ctx: FExitContext) -> i32 {
    let flags: u64 = ctx.arg(4);
    let ret: i64 = ctx.arg(6);
    recv_exit_in(ctx.arg(0), flags, ret, scratch::FEXIT_MPTCP_RECVMSG)
}

#[kprobe(function = "mptcp_sendmsg")]
pub fn kprobe_mptcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        stash_send(sk, Send::Mptcp);
    }
    0
}

#[kretprobe(function = "mptcp_sendmsg")]
pub fn kretprobe_mptcp_sendmsg(ctx: RetProbeContext) -> u32 {
    send_return(&ctx, Send::Mptcp, scratch::KRETPROBE_MPTCP_SENDMSG)
}

#[kprobe(function = "mptcp_recvmsg")]
pub fn kprobe_mptcp_recvmsg(ctx: ProbeContext) -> u32 {
    stash_recvmsg_entry(&ctx)
}

#[kretprobe(function = "mptcp_recvmsg")]
pub fn kretprobe_mptcp_recvmsg(ctx: RetProbeContext) -> u32 {
    recv_return(&ctx, scratch::KRETPROBE_MPTCP_RECVMSG)
}
