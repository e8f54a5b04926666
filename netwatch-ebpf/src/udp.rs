//! UDP byte counting on the fentry and kprobe tiers: the return values of
//! `udp_sendmsg`/`udpv6_sendmsg` and the `len` of `skb_consume_udp` (bytes
//! copied to userspace by `udp_recvmsg`/`udpv6_recvmsg`, whose own argument
//! lists changed across kernel versions).
//!
//! `udpv6_sendmsg` hands IPv4-mapped destinations to `udp_sendmsg`; the
//! IPv4 hook skips AF_INET6 sockets so such a send is counted once.
//! `skb_consume_udp`'s `len` is what `recvmsg` returns: the copied length,
//! or the datagram's full length with `MSG_TRUNC`; with `MSG_PEEK` the
//! callers pass a negated length, which is never counted.

use aya_ebpf::{
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use netwatch_common::{AF_INET6, IPPROTO_UDP};

use crate::{
    account::{account, Dir},
    maps::scratch,
    sk,
    tcp::{stash_send, take_send, Send},
};

/// `int udp_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)`.
#[fexit(function = "udp_sendmsg")]
pub fn fexit_udp_sendmsg(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: sk is the traced function's socket argument.
    unsafe {
        if sk::family(sk) == AF_INET6 {
            return 0;
        }
        account(
            sk,
            Dir::Tx,
            ctx.arg::<i64>(3) as i32 as i64,
            IPPROTO_UDP,
            scratch::FEXIT_UDP_SENDMSG,
        );
    }
    0
}

/// `int udpv6_sendmsg(struct sock *sk, struct msghdr *msg, size_t len)`.
#[fexit(function = "udpv6_sendmsg")]
pub fn fexit_udpv6_sendmsg(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: as above.
    unsafe {
        account(
            sk,
            Dir::Tx,
            ctx.arg::<i64>(3) as i32 as i64,
            IPPROTO_UDP,
            scratch::FEXIT_UDPV6_SENDMSG,
        )
    };
    0
}

/// `void skb_consume_udp(struct sock *sk, struct sk_buff *skb, int len)`.
#[fentry(function = "skb_consume_udp")]
pub fn fentry_skb_consume_udp(ctx: FEntryContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: as above.
    unsafe {
        account(
            sk,
            Dir::Rx,
            ctx.arg::<i64>(2) as i32 as i64,
            IPPROTO_UDP,
            scratch::FENTRY_SKB_CONSUME_UDP,
        )
    };
    0
}

#[kprobe(function = "udp_sendmsg")]
pub fn kprobe_udp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        // SAFETY: sk is the probed function's socket argument.
        if unsafe { sk::family(sk as *const u8) } != AF_INET6 {
            stash_send(sk, Send::Msg);
        }
    }
    0
}

#[kretprobe(function = "udp_sendmsg")]
pub fn kretprobe_udp_sendmsg(ctx: RetProbeContext) -> u32 {
    udp_send_return(&ctx, Send::Msg, scratch::KRETPROBE_UDP_SENDMSG)
}

/// `int udp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)`
/// (< 6.5): `sendfile`/`splice` to a UDP socket. It calls `udp_sendmsg`
/// with no data to start a cork, which returns 0 and counts nothing.
#[fexit(function = "udp_sendpage")]
pub fn fexit_udp_sendpage(ctx: FExitContext) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: sk is the traced function's socket argument.
    unsafe {
        account(
            sk,
            Dir::Tx,
            ctx.arg::<i64>(5) as i32 as i64,
            IPPROTO_UDP,
            scratch::FEXIT_UDP_SENDPAGE,
        )
    };
    0
}

#[kprobe(function = "udp_sendpage")]
pub fn kprobe_udp_sendpage(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        stash_send(sk, Send::Page);
    }
    0
}

#[kretprobe(function = "udp_sendpage")]
pub fn kretprobe_udp_sendpage(ctx: RetProbeContext) -> u32 {
    udp_send_return(&ctx, Send::Page, scratch::KRETPROBE_UDP_SENDPAGE)
}

#[kprobe(function = "udpv6_sendmsg")]
pub fn kprobe_udpv6_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        stash_send(sk, Send::Msg6);
    }
    0
}

#[kretprobe(function = "udpv6_sendmsg")]
pub fn kretprobe_udpv6_sendmsg(ctx: RetProbeContext) -> u32 {
    udp_send_return(&ctx, Send::Msg6, scratch::KRETPROBE_UDPV6_SENDMSG)
}

#[inline(always)]
fn udp_send_return(ctx: &RetProbeContext, kind: Send, slot: u32) -> u32 {
    let ret: i64 = ctx.ret::<i64>() as i32 as i64;
    if let Some(sk) = take_send(kind) {
        // SAFETY: sk was the socket argument of this thread's send.
        unsafe { account(sk, Dir::Tx, ret, IPPROTO_UDP, slot) };
    }
    0
}

#[kprobe(function = "skb_consume_udp")]
pub fn kprobe_skb_consume_udp(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(len)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(2)) else {
        return 0;
    };
    // SAFETY: sk is the probed function's socket argument.
    unsafe {
        account(
            sk as *const u8,
            Dir::Rx,
            len as i32 as i64,
            IPPROTO_UDP,
            scratch::KPROBE_SKB_CONSUME_UDP,
        )
    };
    0
}
