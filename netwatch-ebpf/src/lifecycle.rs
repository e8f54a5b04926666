//! TCP socket lifecycle on every tier. `sock:inet_sock_set_state` keeps an
//! entry's state and addresses current (from the tracepoint's own fields,
//! valid on every kernel) and creates the entry when a connection is
//! established. `tcp:tcp_destroy_sock` is the end: the final counters go to
//! the `CLOSED` ring buffer and the entry is deleted. Not `TCP_CLOSE`: an
//! active closer enters TIME_WAIT (and `TCP_CLOSE`) in softirq before its
//! application has read the last bytes. If the ring buffer is full the
//! record goes to the `DESTROYED` map instead: a full buffer costs memory,
//! never bytes. The owner is never set here: state changes run in softirq
//! context, where the current task is unrelated.
//!
//! UDP sockets have no destroy tracepoint: they end at release (the last
//! `close` of the file), seen by a `cgroup/sock_release` program attached to
//! the root cgroup v2 on every tier (it needs no kprobes), which emits the
//! final record and deletes the entry the same way.

use aya_ebpf::{
    macros::{cgroup_sock, tracepoint},
    programs::{SockContext, TracePointContext},
};
use aya_log_ebpf::{debug, warn};
use netwatch_common::{counter, SockKey, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    account::{entry, finish, mark_active, Final},
    maps::{self, bump, SOCKETS},
    retrans::{forget_base, record_retrans},
    sk,
};

/// TCP states (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

/// A socket comes to be at `sk` (connect, listen, a listener's child): an
/// entry already there is a dead socket's whose `tcp_destroy_sock` run the
/// kernel skipped (another program was running on that CPU: counted in
/// the program's `recursion_misses` from Linux 6.7 on), or this socket's
/// own from before a disconnect. Either way it is finished (its final
/// record goes out), so the new socket never inherits its counters.
#[inline(always)]
fn born(oldstate: i32, newstate: i32) -> bool {
    match newstate {
        TCP_SYN_SENT | TCP_LISTEN => oldstate == TCP_CLOSE,
        TCP_SYN_RECV => oldstate == TCP_LISTEN,
        _ => false,
    }
}

/// An entry last seen closing (FIN_WAIT1 .. CLOSING, not LISTEN) when its
/// socket becomes ESTABLISHED: the dead socket's, as in [`born`] (whose
/// own event may have been skipped too).
#[inline(always)]
fn closing(state: u8) -> bool {
    matches!(state, 4..=9 | 11)
}

// Field offsets of the tracepoint records (`format` in tracefs), stable
// since the IPv6 fields were added (4.16); the integration tests check them
// against the running kernel's format files.
mod set_state {
    pub const SKADDR: usize = 8;
    pub const OLDSTATE: usize = 16;
    pub const NEWSTATE: usize = 20;
    pub const SPORT: usize = 24;
    pub const DPORT: usize = 26;
    pub const FAMILY: usize = 28;
    pub const PROTOCOL: usize = 30;
    pub const SADDR: usize = 32;
    pub const DADDR: usize = 36;
    pub const SADDR_V6: usize = 40;
    pub const DADDR_V6: usize = 56;
}
mod destroy {
    pub const SKADDR: usize = 8;
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record at its documented offsets.
    unsafe { on_state(&ctx) }.unwrap_or(0)
}

unsafe fn on_state(ctx: &TracePointContext) -> Result<u32, i64> {
    use set_state::*;
    if ctx.read_at::<u16>(PROTOCOL)? != IPPROTO_TCP as u16 {
        return Ok(0);
    }
    let sk: u64 = ctx.read_at(SKADDR)?;
    if in_loader_netns(sk as *const u8) {
        bump(counter::STATE_CHANGES);
    }
    let newstate: i32 = ctx.read_at(NEWSTATE)?;
    let family: u16 = ctx.read_at(FAMILY)?;
    let connect_us = crate::tcp_events::on_state(ctx, sk, newstate, family)
        .ok()
        .flatten();
    let oldstate: i32 = ctx.read_at(OLDSTATE)?;
    if born(oldstate, newstate) {
        let _ = finish(SockKey { sk });
    } else if newstate == TCP_ESTABLISHED {
        if let Some(st) = SOCKETS.get_ptr(SockKey { sk }) {
            if closing((*st).state) {
                let _ = finish(SockKey { sk });
            }
        }
    }
    let st = match SOCKETS.get_ptr_mut(SockKey { sk }) {
        Some(p) => p,
        None if newstate == TCP_ESTABLISHED => match entry(
            sk as *const u8,
            family,
            IPPROTO_TCP,
            maps::scratch::TP_INET_SOCK_SET_STATE,
        ) {
            Some(p) => p,
            None => return Ok(0),
        },
        None => return Ok(0),
    };
    if newstate == TCP_ESTABLISHED {
        // A connection seen from its start: every retransmit counts, the
        // handshake's too (SYNs; a passive socket's SYN-ACKs), already in
        // the kernel's totals: see `crate::retrans`.
        forget_base(sk, (*st).first_ns);
        record_retrans(sk as *const u8, st);
    }
    let st = &mut *st;
    if let Some(us) = connect_us {
        // Written with the entry's creation, in this same run: a connected
        // socket's entry always carries its connect time.
        st.connect_us = us;
    }
    st.state = newstate as u8;
    st.family = family;
    st.lport = ctx.read_at(SPORT)?;
    st.rport = ctx.read_at(DPORT)?;
    if family == AF_INET {
        let s: [u8; 4] = ctx.read_at(SADDR)?;
        let d: [u8; 4] = ctx.read_at(DADDR)?;
        st.laddr = [0; 16];
        st.raddr = [0; 16];
        st.laddr[..4].copy_from_slice(&s);
        st.raddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        st.laddr = ctx.read_at(SADDR_V6)?;
        st.raddr = ctx.read_at(DADDR_V6)?;
    }
    // A state change is news for userspace even when no byte moved.
    mark_active(SockKey { sk }, st);
    Ok(0)
}

/// `sk` is in the loader's network namespace (`sk->__sk_common.skc_net`'s
/// `ns.inum`), or the loader could not tell (then every namespace counts).
#[inline(always)]
unsafe fn in_loader_netns(sk: *const u8) -> bool {
    let want = maps::netns_inum();
    want == 0 || sk::netns_inum(sk).is_none_or(|inum| inum == want)
}

#[tracepoint(category = "tcp", name = "tcp_destroy_sock")]
pub fn tp_tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    // SAFETY: reads within the tracepoint record at its documented offset.
    unsafe { on_destroy(&ctx) }.unwrap_or(0)
}

unsafe fn on_destroy(ctx: &TracePointContext) -> Result<u32, i64> {
    let sk: u64 = ctx.read_at(destroy::SKADDR)?;
    if let Some(st) = SOCKETS.get_ptr_mut(SockKey { sk }) {
        if (*st).protocol == IPPROTO_TCP {
            // The final record carries the kernel's final totals.
            record_retrans(sk as *const u8, st);
        }
    }
    match finish(SockKey { sk }) {
        Some(Final::Overflow) => debug!(
            ctx,
            "netwatch: CLOSED ring buffer full; final record of socket {:x} kept in DESTROYED", sk
        ),
        Some(Final::Lost) => warn!(
            ctx,
            "netwatch: CLOSED ring buffer and DESTROYED map full; final record of socket {:x} lost",
            sk
        ),
        _ => {}
    }
    Ok(0)
}

/// `IPPROTO_MPTCP`: `sk_protocol` of an MPTCP socket (not a `u8`).
pub const IPPROTO_MPTCP: u16 = 262;

/// A socket's release (its last file reference closed). UDP sockets end
/// here, and so do MPTCP sockets: `tcp:tcp_destroy_sock` fires for their
/// subflows (in-kernel TCP sockets, released by the kernel, never seen
/// here), never for the MPTCP socket, and once its file is closed no call
/// of the application can move its bytes. TCP sockets live on in the
/// kernel (FIN_WAIT, TIME_WAIT) and end at `tcp_destroy_sock`. The context
/// is the kernel's `struct sock` itself, so its address is the map key.
/// Always allows the release.
#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: ctx.sock is the released socket's context; protocol is a
    // field every cgroup/sock program may read.
    let protocol = unsafe { (*ctx.sock).protocol };
    if protocol == IPPROTO_UDP as u32 || protocol == IPPROTO_MPTCP as u32 {
        // SAFETY: only the address is used, as the map key.
        let _ = unsafe {
            finish(SockKey {
                sk: ctx.sock as u64,
            })
        };
    }
    1
}
