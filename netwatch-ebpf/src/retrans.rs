//! Retransmitted TCP segments and bytes per socket, on every tier, from the
//! classic tracepoint `tcp:tcp_retransmit_skb` (Linux 4.15 on, needs no
//! kprobes or trampolines). It never counts on its own: it copies the
//! kernel's own per-socket totals, `tcp_sock.total_retrans` and
//! `tcp_sock.bytes_retrans` (what `TCP_INFO`'s `tcpi_total_retrans` /
//! `tcpi_bytes_retrans` and `ss -ti` show), into the socket's entry, at
//! BTF-resolved offsets. It must never touch the send/receive path.
//!
//! Why copy and not add `tcp_skb_pcount(skb)` / `skb->len` per event:
//! `__tcp_retransmit_skb` adds to the totals *before* it transmits, and
//! the tracepoint fires only when the transmit succeeded up to Linux 6.17
//! (a retransmit that failed locally is counted by the kernel, not traced),
//! while from 6.18 on it fires for every attempt, also for those that gave
//! up before counting (`err` -EBUSY, -ENOMEM, -EAGAIN, ...). Retransmitted
//! SYNs happen before the lifecycle creates the entry, and a passive
//! socket starts with `total_retrans` = its SYN-ACK retransmits
//! (`tcp_create_openreq_child`), which fire no `tcp_retransmit_skb`. A
//! copy of the totals is exact in every one of these cases; the copy is
//! refreshed here, when the lifecycle creates the entry at ESTABLISHED
//! ([`crate::lifecycle`]) and right before the final record.
//!
//! A retransmit on a socket without an entry: in a synchronized state
//! (ESTABLISHED and the closing states) the entry is created here as the
//! lifecycle does at ESTABLISHED (an entry evicted from the full LRU map, or
//! a socket seeding missed), with no owner; in SYN_SENT / SYN_RECV none is
//! created (the lifecycle creates it at ESTABLISHED and copies the totals
//! then, the handshake's retransmits included); a connect that never gets
//! there has no connection row to carry them.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use netwatch_common::{SockKey, SockStats, AF_INET, AF_INET6, IPPROTO_TCP};

use crate::{
    account::{entry, mark_active, read_at},
    maps::{self, SOCKETS},
};

// Field offsets of the `tcp:tcp_retransmit_skb` record (`format` in
// tracefs), the same on 6.1, 6.12 and 6.18 (6.18 appends `err` at 76); the
// integration tests check them against the running kernel's format file.
mod record {
    pub const SKADDR: usize = 16;
    pub const STATE: usize = 24;
    pub const FAMILY: usize = 32;
}

/// ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING: the
/// states in which a socket carries data (`include/net/tcp_states.h`).
#[inline(always)]
fn synchronized(state: i32) -> bool {
    matches!(state, 1 | 4 | 5 | 8 | 9 | 11)
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tp_tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record at its documented offsets.
    unsafe { on_retransmit(&ctx) }.unwrap_or(0)
}

unsafe fn on_retransmit(ctx: &TracePointContext) -> Result<u32, i64> {
    let sk: u64 = ctx.read_at(record::SKADDR)?;
    if sk == 0 {
        return Ok(0);
    }
    let key = SockKey { sk };
    let st = match SOCKETS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let state: i32 = ctx.read_at(record::STATE)?;
            let family: u16 = ctx.read_at(record::FAMILY)?;
            if !synchronized(state) || (family != AF_INET && family != AF_INET6) {
                return Ok(0);
            }
            match entry(
                sk as *const u8,
                family,
                IPPROTO_TCP,
                maps::scratch::TP_TCP_RETRANSMIT_SKB,
            ) {
                Some(p) => p,
                None => return Ok(0),
            }
        }
    };
    if (*st).protocol != IPPROTO_TCP {
        return Ok(0);
    }
    record_retrans(sk as *const u8, st);
    // After the copy: see `mark_active`.
    mark_active(key, st);
    Ok(0)
}

/// Copy the kernel's retransmit totals of TCP socket `sk` into its entry
/// (nothing when the loader found no offsets). The totals only grow while
/// the socket lives (`tcp_disconnect` zeroes them, but a reconnect starts a
/// new entry, see `lifecycle::born`), and every writer holds the socket
/// (its lock or its last reference), so a copy never goes backwards.
#[inline(always)]
pub unsafe fn record_retrans(sk: *const u8, st: *mut SockStats) {
    let (off_segs, off_bytes) = (maps::off_total_retrans(), maps::off_bytes_retrans());
    if off_segs == 0 || off_bytes == 0 {
        return;
    }
    if let Ok(segs) = read_at::<u32>(sk, off_segs) {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).retrans_segs), segs);
    }
    if let Ok(bytes) = read_at::<u64>(sk, off_bytes) {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).retrans_bytes), bytes);
    }
}
