//! TCP control events for the port-scan and connection detectors: connection
//! attempts (`inet_sock_set_state` into SYN_SENT / SYN_RECV) and resets
//! (`tcp:tcp_receive_reset`, `tcp:tcp_send_reset`), one fixed-size
//! `TcpEventRecord` each in the bounded `TCP_EVENTS` ring buffer; a record
//! that does not fit is counted (`counter::TCP_EVENTS_LOST`), never dropped
//! silently. It reads tracepoint fields (and, for a reset, the first TCP
//! header bytes of the answered segment; for a failed connect, the
//! socket's `sk_err`). Of the accounting maps it only ever adds to an
//! existing `SOCKETS` entry's reset counters (and marks it active); it
//! never creates or deletes an entry.
//!
//! A connect's record says how it ended (`end`: ESTABLISHED, or CLOSE with
//! the socket's `sk_err`) and how long after its first SYN (`took_ns`), and
//! its connect time is handed back to the lifecycle program, which stores it
//! in the entry it creates at ESTABLISHED (`SockStats::connect_us`).
//!
//! What each kernel shows:
//! - SYN_SENT fires in `connect`, before the ephemeral port is chosen: the
//!   SYN is remembered (`PENDING_SYNS`, by socket) and recorded with its
//!   original time and process once the socket leaves SYN_SENT and its port
//!   is known (answered, refused or timed out).
//! - SYN_RECV fires when a listener's child socket is created, i.e. when the
//!   handshake completes: a half-open SYN to an open port (`nmap -sS`) never
//!   creates one and is not seen here. On older kernels (6.1) the child's
//!   remote address is still zero then: it is remembered the same way and
//!   recorded when the child becomes ESTABLISHED, right after.
//! - `tcp_send_reset` has the answered segment's addresses only from
//!   Linux 6.10 on (`SOCKADDR` layout): there a SYN to a closed port is seen
//!   as a reset with no socket. Before 6.10 (`FIELDS` layout) the tracepoint
//!   fires only for resets of full sockets; there the fentry and kprobe
//!   tiers attach to `tcp_v4_send_reset`/`tcp_v6_send_reset` and record
//!   the resets no socket took from the answered segment's headers. The
//!   tracepoint tier needs Linux ≥ 6.3, so every tier sees closed ports.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{fentry, kprobe, map, tracepoint},
    maps::{LruHashMap, RingBuf},
    programs::{FEntryContext, ProbeContext, TracePointContext},
};
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use netwatch_common::{
    counter, send_reset, tcp_event, SockKey, SockStats, TcpEventRecord, AF_INET, AF_INET6,
};

use crate::account::mark_active;
use crate::maps::{bump, SOCKETS};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

/// The events, for userspace (read at every `take_tcp_events`).
#[map(name = "TCP_EVENTS")]
pub static TCP_EVENTS: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// A connect's SYN until its socket leaves SYN_SENT (port then known).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingSyn {
    pub ts_ns: u64,
    pub pid_tgid: u64,
    /// `tcp_event::SYN_SENT` or `SYN_RECV`.
    pub kind: u64,
}

#[map(name = "PENDING_SYNS")]
pub static PENDING_SYNS: LruHashMap<u64, PendingSyn> = LruHashMap::with_max_entries(8192, 0);

// `tcp:tcp_send_reset`'s layout and field offsets, from the running
// kernel's format file (set by the loader; `NONE` records nothing).
#[unsafe(no_mangle)]
static SEND_RESET_LAYOUT: u32 = send_reset::NONE;
#[unsafe(no_mangle)]
static SEND_RESET_SKBADDR: u32 = 8;
#[unsafe(no_mangle)]
static SEND_RESET_SKADDR: u32 = 16;
#[unsafe(no_mangle)]
static SEND_RESET_SPORT: u32 = 0;
#[unsafe(no_mangle)]
static SEND_RESET_DPORT: u32 = 0;
#[unsafe(no_mangle)]
static SEND_RESET_FAMILY: u32 = 0;
#[unsafe(no_mangle)]
static SEND_RESET_SADDR: u32 = 32;
#[unsafe(no_mangle)]
static SEND_RESET_DADDR: u32 = 60;
#[unsafe(no_mangle)]
static SEND_RESET_SADDR_V6: u32 = 0;
#[unsafe(no_mangle)]
static SEND_RESET_DADDR_V6: u32 = 0;
/// Offset of `data` in `struct sk_buff` (0: unknown, SYNs not told apart).
#[unsafe(no_mangle)]
static OFF_SKB_DATA: u32 = 0;
/// Offsets of `head`, `network_header` and `transport_header` in `struct
/// sk_buff` (0: unknown, the `tcp_v*_send_reset` programs record nothing).
#[unsafe(no_mangle)]
static OFF_SKB_HEAD: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SKB_NETWORK_HEADER: u32 = 0;
#[unsafe(no_mangle)]
static OFF_SKB_TRANSPORT_HEADER: u32 = 0;

#[inline(always)]
fn global(v: &'static u32) -> usize {
    // SAFETY: reading an initialised static; volatile so the loader's value is used.
    unsafe { core::ptr::read_volatile(v) as usize }
}

// `sock:inet_sock_set_state` offsets beyond those lifecycle.rs reads.
const SET_STATE_OLDSTATE: usize = 16;
const SET_STATE_SPORT: usize = 24;
const SET_STATE_DPORT: usize = 26;
const SET_STATE_SADDR: usize = 32;
const SET_STATE_DADDR: usize = 36;
const SET_STATE_SADDR_V6: usize = 40;
const SET_STATE_DADDR_V6: usize = 56;

// `tcp:tcp_receive_reset` (class `tcp_event_sk`), stable since 5.x; the
// integration tests check them against the running kernel's format file.
mod receive_reset {
    pub const SKADDR: usize = 8;
    pub const SPORT: usize = 16;
    pub const DPORT: usize = 18;
    pub const FAMILY: usize = 20;
    pub const SADDR: usize = 22;
    pub const DADDR: usize = 26;
    pub const SADDR_V6: usize = 30;
    pub const DADDR_V6: usize = 46;
}

/// `BPF_RB_NO_WAKEUP`: userspace reads this ring at every snapshot and
/// never waits on it, so a wakeup (an interrupt-work self-IPI from a
/// tracepoint) would buy nothing.
const BPF_RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
fn emit(rec: &TcpEventRecord) {
    if TCP_EVENTS
        .output::<TcpEventRecord>(rec, BPF_RB_NO_WAKEUP)
        .is_err()
    {
        bump(counter::TCP_EVENTS_LOST);
    }
}

/// The addresses of a `tcp_event_sk`-style record: `(local, remote)` from
/// the v4 or v6 fields by family.
#[inline(always)]
unsafe fn addrs(
    ctx: &TracePointContext,
    family: u16,
    s4: usize,
    d4: usize,
    s6: usize,
    d6: usize,
) -> Result<([u8; 16], [u8; 16]), i64> {
    let mut s = [0u8; 16];
    let mut d = [0u8; 16];
    if family == AF_INET {
        let a: [u8; 4] = ctx.read_at(s4)?;
        let b: [u8; 4] = ctx.read_at(d4)?;
        s[..4].copy_from_slice(&a);
        d[..4].copy_from_slice(&b);
    } else if family == AF_INET6 {
        s = ctx.read_at(s6)?;
        d = ctx.read_at(d6)?;
    } else {
        return Err(0);
    }
    Ok((s, d))
}

/// Called by the `inet_sock_set_state` program for every TCP state change.
/// Returns the connect time in µs (first SYN to ESTABLISHED) when this
/// change is a connect's SYN_SENT → ESTABLISHED, for the caller to store in
/// the socket's entry (which it creates at ESTABLISHED, in the same run: so
/// the entry always has it).
#[inline(always)]
pub unsafe fn on_state(
    ctx: &TracePointContext,
    sk: u64,
    newstate: i32,
    family: u16,
) -> Result<Option<u32>, i64> {
    let entering = newstate == TCP_SYN_SENT || newstate == TCP_SYN_RECV;
    if !entering {
        // The common case (every other state change) costs one read.
        let old: i32 = ctx.read_at(SET_STATE_OLDSTATE)?;
        if old != TCP_SYN_SENT && old != TCP_SYN_RECV {
            return Ok(None);
        }
    }
    let lport: u16 = ctx.read_at(SET_STATE_SPORT)?;
    let rport: u16 = ctx.read_at(SET_STATE_DPORT)?;
    // SYN_SENT is entered before the local port is chosen, and on older
    // kernels (6.1) a listener's child enters SYN_RECV before its remote
    // address is copied: remember the event until the socket leaves that
    // state (immediately after, for a child).
    let (kind, ts_ns, pid_tgid) = if entering {
        let inbound = newstate == TCP_SYN_RECV;
        let kind = if inbound {
            tcp_event::SYN_RECV
        } else {
            tcp_event::SYN_SENT
        };
        // Only a connect runs in its process's context.
        let pid_tgid = if inbound {
            0
        } else {
            bpf_get_current_pid_tgid()
        };
        if !inbound || rport == 0 {
            let pending = PendingSyn {
                ts_ns: bpf_ktime_get_ns(),
                pid_tgid,
                kind: u64::from(kind),
            };
            if PENDING_SYNS.insert(sk, pending, 0).is_err() {
                bump(counter::TCP_EVENTS_LOST);
            }
            return Ok(None);
        }
        (kind, bpf_ktime_get_ns(), pid_tgid)
    } else {
        let Some(p) = PENDING_SYNS.get(sk) else {
            return Ok(None);
        };
        let p = *p;
        let _ = PENDING_SYNS.remove(sk);
        (p.kind as u8, p.ts_ns, p.pid_tgid)
    };
    // A connect leaving SYN_SENT: how it ended and how long it took (the
    // kernel's own time, so a non-blocking connect counts the same).
    let (mut took_ns, mut err, mut end, mut connect_us) = (0u64, 0i32, tcp_event::END_NONE, None);
    if !entering && kind == tcp_event::SYN_SENT {
        took_ns = bpf_ktime_get_ns().saturating_sub(ts_ns);
        if newstate == TCP_ESTABLISHED {
            end = tcp_event::END_ESTABLISHED;
            connect_us = Some(u32::try_from(took_ns / 1000).unwrap_or(u32::MAX));
        } else if newstate == TCP_CLOSE {
            end = tcp_event::END_CLOSED;
            // Every kernel path that ends a connect sets `sk_err` before
            // `tcp_done` moves the socket to CLOSE (`tcp_reset`,
            // `tcp_write_err`, `tcp_v4_err`/`tcp_v6_err`, or
            // `tcp_done_with_error` for all three since 6.10 and in the
            // stable kernels); a process closing its connecting socket
            // leaves it 0.
            err = crate::sk::err(sk as *const u8);
        }
    }
    if lport == 0 || rport == 0 {
        // Left SYN_SENT without a port: `connect` failed before any SYN.
        return Ok(connect_us);
    }
    let inbound = kind == tcp_event::SYN_RECV;
    let (local, remote) = addrs(
        ctx,
        family,
        SET_STATE_SADDR,
        SET_STATE_DADDR,
        SET_STATE_SADDR_V6,
        SET_STATE_DADDR_V6,
    )?;
    let rec = if inbound {
        TcpEventRecord {
            ts_ns,
            pid_tgid,
            saddr: remote,
            daddr: local,
            sport: rport,
            dport: lport,
            family,
            kind: tcp_event::SYN_RECV,
            flags: 0,
            ..TcpEventRecord::zeroed()
        }
    } else {
        TcpEventRecord {
            ts_ns,
            pid_tgid,
            saddr: local,
            daddr: remote,
            sport: lport,
            dport: rport,
            family,
            kind: tcp_event::SYN_SENT,
            flags: 0,
            took_ns,
            err,
            end,
            _pad: [0; 3],
        }
    };
    emit(&rec);
    Ok(connect_us)
}

// The two reset counters are adjacent `u16`s in one aligned `u32` (BPF
// atomics are 32 or 64 bits wide): sent in its low half, received in its
// high half (little-endian BPF).
const _: () = assert!(core::mem::offset_of!(SockStats, resets_sent) % 4 == 0);
const _: () = assert!(
    core::mem::offset_of!(SockStats, resets_received)
        == core::mem::offset_of!(SockStats, resets_sent) + 2
);

/// A reset sent or received on `sk`: counted in its entry, if it has one
/// (a socket the programs never saw has none; a reset answering a segment
/// no socket took has no `sk`). By an atomic add, so a reset on another
/// CPU is never lost; a counter stops at `u16::MAX` instead of carrying
/// into the other (a socket gets one reset and dies, so it never gets there).
#[inline(always)]
unsafe fn count_reset(sk: u64, received: bool) {
    let key = SockKey { sk };
    let Some(st) = SOCKETS.get_ptr_mut(key) else {
        return;
    };
    let word = core::ptr::addr_of_mut!((*st).resets_sent).cast::<u32>();
    let (shift, add) = if received {
        (16, 1u32 << 16)
    } else {
        (0, 1u32)
    };
    if (core::ptr::read_volatile(word) >> shift) & 0xffff == 0xffff {
        return;
    }
    atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(word, add);
    // News for userspace even when no byte moved.
    mark_active(key, st);
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tp_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record at its documented offsets.
    let _ = unsafe { on_receive_reset(&ctx) };
    0
}

unsafe fn on_receive_reset(ctx: &TracePointContext) -> Result<(), i64> {
    use receive_reset::*;
    let family: u16 = ctx.read_at(FAMILY)?;
    let (local, remote) = addrs(ctx, family, SADDR, DADDR, SADDR_V6, DADDR_V6)?;
    emit(&TcpEventRecord {
        ts_ns: bpf_ktime_get_ns(),
        pid_tgid: 0,
        saddr: remote,
        daddr: local,
        sport: ctx.read_at(DPORT)?,
        dport: ctx.read_at(SPORT)?,
        family,
        kind: tcp_event::RST_RECEIVED,
        flags: 0,
        ..TcpEventRecord::zeroed()
    });
    let sk: u64 = ctx.read_at(SKADDR)?;
    count_reset(sk, true);
    Ok(())
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tp_tcp_send_reset(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record at the offsets the loader
    // took from this kernel's format file, and kernel memory by probe read.
    let _ = unsafe { on_send_reset(&ctx) };
    0
}

/// One address of a `struct sockaddr_in6`-sized field: (family, port, addr).
#[inline(always)]
unsafe fn sockaddr(ctx: &TracePointContext, off: usize) -> Result<(u16, u16, [u8; 16]), i64> {
    let family: u16 = ctx.read_at(off)?;
    let port = u16::from_be(ctx.read_at::<u16>(off + 2)?);
    let mut a = [0u8; 16];
    if family == AF_INET {
        let v4: [u8; 4] = ctx.read_at(off + 4)?;
        a[..4].copy_from_slice(&v4);
    } else if family == AF_INET6 {
        a = ctx.read_at(off + 8)?;
    } else {
        return Err(0);
    }
    Ok((family, port, a))
}

unsafe fn on_send_reset(ctx: &TracePointContext) -> Result<(), i64> {
    let layout = global(&SEND_RESET_LAYOUT) as u32;
    let mut rec = TcpEventRecord {
        ts_ns: bpf_ktime_get_ns(),
        pid_tgid: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        kind: tcp_event::RST_SENT,
        flags: 0,
        ..TcpEventRecord::zeroed()
    };
    if layout == send_reset::SOCKADDR {
        let (family, sport, s) = sockaddr(ctx, global(&SEND_RESET_SADDR))?;
        let (_, dport, d) = sockaddr(ctx, global(&SEND_RESET_DADDR))?;
        rec.family = family;
        rec.sport = sport;
        rec.dport = dport;
        rec.saddr = s;
        rec.daddr = d;
    } else if layout == send_reset::FIELDS {
        rec.family = ctx.read_at(global(&SEND_RESET_FAMILY))?;
        rec.sport = ctx.read_at(global(&SEND_RESET_SPORT))?;
        rec.dport = ctx.read_at(global(&SEND_RESET_DPORT))?;
        let (s, d) = addrs(
            ctx,
            rec.family,
            global(&SEND_RESET_SADDR),
            global(&SEND_RESET_DADDR),
            global(&SEND_RESET_SADDR_V6),
            global(&SEND_RESET_DADDR_V6),
        )?;
        rec.saddr = s;
        rec.daddr = d;
    } else {
        return Ok(());
    }
    let sk: u64 = ctx.read_at(global(&SEND_RESET_SKADDR))?;
    if sk == 0 {
        rec.flags |= tcp_event::FLAG_NO_SOCKET;
    } else {
        count_reset(sk, false);
    }
    let skb: u64 = ctx.read_at(global(&SEND_RESET_SKBADDR))?;
    let off_data = global(&OFF_SKB_DATA);
    if skb != 0 && off_data != 0 {
        // The answered segment: `skb->data` is its TCP header here.
        if let Ok(th) = bpf_probe_read_kernel((skb as usize + off_data) as *const u64) {
            if let Ok(flags) = bpf_probe_read_kernel((th as usize + 13) as *const u8) {
                // SYN set, ACK clear.
                if flags & 0x12 == 0x02 {
                    rec.flags |= tcp_event::FLAG_ANSWERED_SYN;
                }
            }
        }
    }
    emit(&rec);
    Ok(())
}

/// `void tcp_v4_send_reset(const struct sock *sk, struct sk_buff *skb)`
/// (fentry tier, kernels whose `tcp_send_reset` misses closed ports).
#[fentry(function = "tcp_v4_send_reset")]
pub fn fentry_tcp_v4_send_reset(ctx: FEntryContext) -> i32 {
    // SAFETY: the traced function's arguments; kernel memory by probe read.
    let _ = unsafe { on_reset_skb(ctx.arg(0), ctx.arg(1), AF_INET) };
    0
}

/// `void tcp_v6_send_reset(const struct sock *sk, struct sk_buff *skb)`.
#[fentry(function = "tcp_v6_send_reset")]
pub fn fentry_tcp_v6_send_reset(ctx: FEntryContext) -> i32 {
    // SAFETY: as above.
    let _ = unsafe { on_reset_skb(ctx.arg(0), ctx.arg(1), AF_INET6) };
    0
}

/// kprobe tier: as [`fentry_tcp_v4_send_reset`].
#[kprobe]
pub fn kprobe_tcp_v4_send_reset(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    // SAFETY: as above.
    let _ = unsafe { on_reset_skb(sk, skb, AF_INET) };
    0
}

/// kprobe tier: as [`fentry_tcp_v6_send_reset`].
#[kprobe]
pub fn kprobe_tcp_v6_send_reset(ctx: ProbeContext) -> u32 {
    let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return 0;
    };
    // SAFETY: as above.
    let _ = unsafe { on_reset_skb(sk, skb, AF_INET6) };
    0
}

#[inline(always)]
unsafe fn kread<T>(addr: u64) -> Result<T, i64> {
    bpf_probe_read_kernel(addr as *const T).map_err(i64::from)
}

/// A reset about to answer `skb` when no socket took it (`sk` NULL): this
/// host (the segment's destination) to its sender. Resets of sockets are
/// the tracepoint's; a received RST is never answered (the function
/// returns at once) and is skipped.
#[inline(always)]
unsafe fn on_reset_skb(sk: u64, skb: u64, family: u16) -> Result<(), i64> {
    let (off_head, off_nh, off_th) = (
        global(&OFF_SKB_HEAD),
        global(&OFF_SKB_NETWORK_HEADER),
        global(&OFF_SKB_TRANSPORT_HEADER),
    );
    if sk != 0 || skb == 0 || off_head == 0 || off_nh == 0 || off_th == 0 {
        return Ok(());
    }
    let head: u64 = kread(skb + off_head as u64)?;
    let nh: u16 = kread(skb + off_nh as u64)?;
    let th_off: u16 = kread(skb + off_th as u64)?;
    let th = head + u64::from(th_off);
    let iph = head + u64::from(nh);
    let flags: u8 = kread(th + 13)?;
    if flags & 0x04 != 0 {
        return Ok(());
    }
    let mut rec = TcpEventRecord {
        ts_ns: bpf_ktime_get_ns(),
        pid_tgid: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        // The segment's destination port is the reset's source.
        sport: u16::from_be(kread::<u16>(th + 2)?),
        dport: u16::from_be(kread::<u16>(th)?),
        family,
        kind: tcp_event::RST_SENT,
        flags: tcp_event::FLAG_NO_SOCKET,
        ..TcpEventRecord::zeroed()
    };
    if flags & 0x12 == 0x02 {
        rec.flags |= tcp_event::FLAG_ANSWERED_SYN;
    }
    if family == AF_INET {
        let seg_src: [u8; 4] = kread(iph + 12)?;
        let seg_dst: [u8; 4] = kread(iph + 16)?;
        rec.saddr[..4].copy_from_slice(&seg_dst);
        rec.daddr[..4].copy_from_slice(&seg_src);
    } else {
        rec.daddr = kread(iph + 8)?;
        rec.saddr = kread(iph + 24)?;
    }
    emit(&rec);
    Ok(())
}
