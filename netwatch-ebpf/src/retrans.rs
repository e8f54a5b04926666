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
//! Counted from the entry's creation, like the bytes: an entry made for a
//! socket already under way (entered by seeding, by its first counted
//! call, or here) keeps the socket's totals at that moment in
//! [`RETRANS_BASE`], and its copies are taken less that baseline; the
//! lifecycle drops the baseline of a connection it saw become ESTABLISHED
//! (all of its retransmits happened while attached). A baseline the full
//! LRU map evicted is lost: that socket's earlier retransmits then show in
//! its counts.
//!
//! A retransmit on a socket without an entry: in a synchronized state
//! (ESTABLISHED and the closing states) the entry is created here as the
//! lifecycle does at ESTABLISHED (an entry evicted from the full LRU map, or
//! a socket seeding missed), with no owner, counting from the next
//! retransmit (its baseline holds this one); in SYN_SENT / SYN_RECV none is
//! created (the lifecycle creates it at ESTABLISHED and copies the totals
//! then, the handshake's retransmits included); a connect that never gets
//! there has no connection row to carry them.

use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use netwatch_common::{DestroyedKey, SockKey, SockStats, AF_INET, AF_INET6, IPPROTO_TCP};

use crate::{
    account::{entry, mark_active},
    maps::{self, SOCKETS},
    sk,
};

// Field offsets of the `tcp:tcp_retransmit_skb` record (`format` in
// tracefs), the same on 6.1, 6.12 and 6.18 (6.18 appends `err` at 76); the
// integration tests check them against the running kernel's format file.
mod record {
    pub const SKADDR: usize = 16;
    pub const STATE: usize = 24;
    pub const FAMILY: usize = 32;
}

/// The kernel's retransmit totals of a TCP socket when its entry was
/// created, by entry (socket address and `first_ns`), only where nonzero;
/// removed when the entry finishes or the lifecycle sees it become
/// ESTABLISHED.
#[map(name = "RETRANS_BASE")]
pub static RETRANS_BASE: LruHashMap<DestroyedKey, Totals> = LruHashMap::with_max_entries(16384, 0);

/// A socket's retransmit totals as the kernel keeps them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Totals {
    pub segs: u32,
    pub _pad: u32,
    pub bytes: u64,
}

/// The kernel's totals for `sk` ([`sk::retrans_totals`]: `None` when the
/// loader found no offsets or the memory is unreadable).
#[inline(always)]
unsafe fn totals(sk: *const u8) -> Option<Totals> {
    let (segs, bytes) = sk::retrans_totals(sk)?;
    Some(Totals {
        segs,
        _pad: 0,
        bytes,
    })
}

/// A new entry `st` for TCP socket `sk`: remember the socket's totals so
/// far (retransmits before the entry existed), so that its counts start at 0.
#[inline(always)]
pub unsafe fn remember_base(sk: *const u8, st: *const SockStats) {
    if let Some(t) = totals(sk) {
        if t.segs != 0 || t.bytes != 0 {
            let key = DestroyedKey {
                sk: sk as u64,
                first_ns: (*st).first_ns,
            };
            let _ = RETRANS_BASE.insert(key, t, 0);
        }
    }
}

/// Forget a finished entry's baseline.
#[inline(always)]
pub unsafe fn forget_base(sk: u64, first_ns: u64) {
    let _ = RETRANS_BASE.remove(DestroyedKey { sk, first_ns });
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
    let Some(mut t) = totals(sk) else {
        return;
    };
    let key = DestroyedKey {
        sk: sk as u64,
        first_ns: (*st).first_ns,
    };
    if let Some(base) = RETRANS_BASE.get_ptr(key) {
        t.segs = t.segs.saturating_sub((*base).segs);
        t.bytes = t.bytes.saturating_sub((*base).bytes);
    }
    core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).retrans_segs), t.segs);
    core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).retrans_bytes), t.bytes);
}
