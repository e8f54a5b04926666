//! TCP byte counting on the fentry and kprobe tiers: `tcp_sendmsg`'s return
//! value (bytes actually queued, never the requested size) and
//! `tcp_cleanup_rbuf`'s `copied` (bytes handed to userspace).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use netwatch_common::IPPROTO_TCP;

use crate::{
    account::{account, Dir},
    maps::SEND_ARGS,
};

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`: the
/// return value follows the three arguments.
#[fexit(function = "tcp_sendmsg")]
pub fn fexit_tcp_sendmsg(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg::<i64>(3) as i32 as i64;
    // SAFETY: sk is the traced function's socket argument.
    unsafe { account(sk, Dir::Tx, ret, IPPROTO_TCP) };
    0
}

/// `void tcp_cleanup_rbuf(struct sock *sk, int copied)`.
#[fentry(function = "tcp_cleanup_rbuf")]
pub fn fentry_tcp_cleanup_rbuf(ctx: FEntryContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let copied: i64 = ctx.arg::<i64>(1) as i32 as i64;
    // SAFETY: as above.
    unsafe { account(sk, Dir::Rx, copied, IPPROTO_TCP) };
    0
}

/// Remember the socket of a send until its return probe fires.
#[inline(always)]
pub fn stash_send(sk: u64) {
    let _ = SEND_ARGS.insert(bpf_get_current_pid_tgid(), sk, 0);
}

/// Take the socket stashed by [`stash_send`] for this thread.
#[inline(always)]
pub fn take_send() -> Option<*const u8> {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: a plain value copy out of the map.
    let sk = unsafe { SEND_ARGS.get(id) }.copied();
    let _ = SEND_ARGS.remove(id);
    sk.map(|s| s as *const u8)
}

#[kprobe(function = "tcp_sendmsg")]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        stash_send(sk);
    }
    0
}

#[kretprobe(function = "tcp_sendmsg")]
pub fn kretprobe_tcp_sendmsg(ctx: RetProbeContext) -> u32 {
    let ret: i64 = ctx.ret::<i64>() as i32 as i64;
    if let Some(sk) = take_send() {
        // SAFETY: sk was the socket argument of this thread's tcp_sendmsg.
        unsafe { account(sk, Dir::Tx, ret, IPPROTO_TCP) };
    }
    0
}

#[kprobe(function = "tcp_cleanup_rbuf")]
pub fn kprobe_tcp_cleanup_rbuf(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(copied)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    // SAFETY: sk is the probed function's socket argument.
    unsafe { account(sk as *const u8, Dir::Rx, copied as i32 as i64, IPPROTO_TCP) };
    0
}
