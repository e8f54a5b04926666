//! The tracepoint tier's byte counters: `tp_btf` programs on
//! `sock:sock_send_length` and `sock:sock_recv_length` (Linux ≥ 6.3), the
//! tier for kernels without trampolines or kprobes. They fire in the
//! sending or receiving task for every socket family with the bytes moved;
//! this shim only picks the socket, direction and byte count and hands them
//! to [`account_lazy`]. They fire on an MPTCP socket itself (its
//! application's calls), never on its subflows. Peeks (`MSG_PEEK`) are
//! skipped: the same bytes are read again later. It never counts anything
//! but the call's own bytes.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use netwatch_common::IPPROTO_TCP;

use crate::{
    account::{account_lazy, Dir},
    lifecycle::IPPROTO_MPTCP,
    maps, sk,
};

/// `MSG_PEEK`.
const MSG_PEEK: i32 = 2;

/// The protocol an entry of a socket with `sk_protocol` `p` carries: an
/// MPTCP socket's is TCP (as on the fentry and kprobe tiers, [`crate::mptcp`]:
/// MPTCP is TCP on the wire), anything else not a `u8` none.
#[inline(always)]
fn entry_protocol(p: u16) -> u8 {
    if p == IPPROTO_MPTCP {
        IPPROTO_TCP
    } else {
        u8::try_from(p).unwrap_or(0)
    }
}

/// `TP_PROTO(struct sock *sk, int ret, int flags)` for both tracepoints.
#[inline(always)]
fn on_length(ctx: &BtfTracePointContext, dir: Dir, slot: u32) -> i32 {
    let sk: *const u8 = ctx.arg(0);
    let ret = ctx.arg::<i64>(1) as i32 as i64;
    let flags = ctx.arg::<i64>(2) as i32;
    if ret <= 0 || (dir == Dir::Rx && flags & MSG_PEEK != 0) || sk.is_null() {
        return 0;
    }
    // SAFETY: sk is the tracepoint's socket argument; its protocol is
    // read only for a socket without an entry yet.
    unsafe {
        account_lazy(sk, dir, ret, slot, || entry_protocol(sk::protocol(sk)));
    }
    0
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn tp_sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_length(&ctx, Dir::Tx, maps::scratch::TP_SOCK_SEND_LENGTH)
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn tp_sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_length(&ctx, Dir::Rx, maps::scratch::TP_SOCK_RECV_LENGTH)
}
