//! The one place that reads a kernel socket: named accessors for every
//! field the programs take from `struct sock` (with its `sock_common` head,
//! and the `tcp_sock` and `inet_timewait_sock` that extend it), from
//! `struct socket` (its `sk`) and from the socket's `struct net`. Each reads
//! with `bpf_probe_read_kernel` at the offset the loader resolved from the
//! running kernel's BTF (load-time globals below; rustc emits no CO-RE
//! relocations), except the first 16 bytes of `sock_common` ([`Head`]),
//! whose layout every kernel shares. It never writes kernel memory, never
//! touches a map, and never bakes in another offset: a field whose offset
//! the loader could not resolve (0) reads as absent.

use aya_ebpf::helpers::bpf_probe_read_kernel;

// Offsets resolved from the running kernel's BTF by the loader (netwatch-user's
// `source::ebpf::btf::SockOffsets` and, for `OFF_SKC_STATE` and
// `OFF_TW_SUBSTATE`, `source::ebpf::seed::SeedOffsets`, which name each one).
// The defaults are those of x86_64 6.x kernels built with IPv6; 0 means
// "unknown" for the fields read only when resolved.

/// `sock_common.skc_family`.
#[unsafe(no_mangle)]
static OFF_SKC_FAMILY: u32 = 16;
/// `sock_common.skc_state`.
#[unsafe(no_mangle)]
static OFF_SKC_STATE: u32 = 18;
/// `sock_common.skc_v6_daddr`.
#[unsafe(no_mangle)]
static OFF_SKC_V6_DADDR: u32 = 56;
/// `sock_common.skc_v6_rcv_saddr`.
#[unsafe(no_mangle)]
static OFF_SKC_V6_RCV_SADDR: u32 = 72;
/// `sock_common.skc_net`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_SKC_NET: u32 = 0;
/// `sock.sk_protocol`.
#[unsafe(no_mangle)]
static OFF_SK_PROTOCOL: u32 = 0x204;
/// `sock.sk_err`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_SK_ERR: u32 = 0;
/// `tcp_sock.srtt_us`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_SRTT_US: u32 = 0;
/// `tcp_sock.total_retrans`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_TOTAL_RETRANS: u32 = 0;
/// `tcp_sock.bytes_retrans`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_BYTES_RETRANS: u32 = 0;
/// `inet_timewait_sock.tw_substate`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_TW_SUBSTATE: u32 = 0;
/// `socket.sk`.
#[unsafe(no_mangle)]
static OFF_SOCKET_SK: u32 = 24;
/// `net.ns.inum`; 0 when unknown.
#[unsafe(no_mangle)]
static OFF_NET_INUM: u32 = 0;

/// Read a load-time global. `read_volatile` keeps the compiler from folding
/// in the default, so the loader's value is the one used.
#[inline(always)]
fn global(v: &'static u32) -> usize {
    // SAFETY: reading an initialised static.
    unsafe { core::ptr::read_volatile(v) as usize }
}

/// Read a `T` at `base + off` from kernel memory (any kernel object: the
/// accessors below, and the task, file and inode reads of the seeding).
///
/// # Safety
/// `base` must be a kernel pointer the program was given or read; the read
/// itself is checked by the kernel (`bpf_probe_read_kernel`).
#[inline(always)]
pub unsafe fn read_at<T>(base: *const u8, off: usize) -> Result<T, i32> {
    bpf_probe_read_kernel(base.add(off) as *const T)
}

/// The first 16 bytes of `sock_common`, the same on every kernel (so read
/// at fixed offsets, in one read): `skc_daddr` @0, `skc_rcv_saddr` @4,
/// `skc_hash` @8, `skc_dport` @12 (network order), `skc_num` @14 (host
/// order). Full, time-wait and request sockets all start with it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Head {
    /// `skc_daddr`: the remote IPv4 address, as on the wire.
    pub daddr: [u8; 4],
    /// `skc_rcv_saddr`: the local IPv4 address, as on the wire.
    pub rcv_saddr: [u8; 4],
    /// `skc_hash`.
    _hash: [u8; 4],
    /// `skc_dport`, network order.
    pub dport: [u8; 2],
    /// `skc_num`, host order.
    pub num: [u8; 2],
}

impl Head {
    /// The remote port, host order.
    #[inline(always)]
    pub fn rport(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }

    /// The local port, host order.
    #[inline(always)]
    pub fn lport(&self) -> u16 {
        u16::from_ne_bytes(self.num)
    }
}

/// [`Head`] of `sk`; `Err` if unreadable.
///
/// # Safety
/// `sk` must be a kernel `struct sock *` (or `sock_common *`).
#[inline(always)]
pub unsafe fn head(sk: *const u8) -> Result<Head, i32> {
    read_at::<Head>(sk, 0)
}

/// `skc_num`, the local port (host order) alone: 0 if unbound or unreadable.
///
/// # Safety
/// As [`head`].
#[inline(always)]
pub unsafe fn local_port(sk: *const u8) -> u16 {
    read_at::<u16>(sk, 14).unwrap_or(0)
}

/// `skc_family` (`AF_INET`, `AF_INET6`, ...); 0 if unreadable.
///
/// # Safety
/// As [`head`].
#[inline(always)]
pub unsafe fn family(sk: *const u8) -> u16 {
    read_at::<u16>(sk, global(&OFF_SKC_FAMILY)).unwrap_or(0)
}

/// `skc_state` (a TCP state, `include/net/tcp_states.h`); `Err` if
/// unreadable (each caller picks what that means).
///
/// # Safety
/// As [`head`].
#[inline(always)]
pub unsafe fn state(sk: *const u8) -> Result<u8, i32> {
    read_at::<u8>(sk, global(&OFF_SKC_STATE))
}

/// `tw_substate` of a time-wait socket (the state `sock_diag` reports for
/// it); `None` when the loader found no offset or it is unreadable.
///
/// # Safety
/// `sk` must be a kernel `inet_timewait_sock *` (a socket in TIME_WAIT).
#[inline(always)]
pub unsafe fn tw_substate(sk: *const u8) -> Option<u8> {
    let off = global(&OFF_TW_SUBSTATE);
    if off == 0 {
        return None;
    }
    read_at::<u8>(sk, off).ok()
}

/// `skc_v6_daddr`, the remote IPv6 address; `Err` if unreadable.
///
/// # Safety
/// As [`head`].
#[inline(always)]
pub unsafe fn v6_daddr(sk: *const u8) -> Result<[u8; 16], i32> {
    read_at::<[u8; 16]>(sk, global(&OFF_SKC_V6_DADDR))
}

/// `skc_v6_rcv_saddr`, the local IPv6 address; `Err` if unreadable.
///
/// # Safety
/// As [`head`].
#[inline(always)]
pub unsafe fn v6_rcv_saddr(sk: *const u8) -> Result<[u8; 16], i32> {
    read_at::<[u8; 16]>(sk, global(&OFF_SKC_V6_RCV_SADDR))
}

/// `sk_protocol` (a `u16` since Linux 5.6: `IPPROTO_MPTCP` is 262); 0 if
/// unreadable.
///
/// # Safety
/// `sk` must be a kernel `struct sock *`.
#[inline(always)]
pub unsafe fn protocol(sk: *const u8) -> u16 {
    read_at::<u16>(sk, global(&OFF_SK_PROTOCOL)).unwrap_or(0)
}

/// `sk_err`, the socket's pending error (a positive errno); 0 when the
/// loader found no offset or it is unreadable.
///
/// # Safety
/// As [`protocol`].
#[inline(always)]
pub unsafe fn err(sk: *const u8) -> i32 {
    let off = global(&OFF_SK_ERR);
    if off == 0 {
        return 0;
    }
    read_at::<i32>(sk, off).unwrap_or(0)
}

/// The smoothed RTT in µs (`tcp_sock.srtt_us`, which the kernel keeps ×8,
/// shifted back); `None` when the loader found no offset or it is
/// unreadable.
///
/// # Safety
/// `sk` must be a kernel `tcp_sock *` (a TCP `struct sock`).
#[inline(always)]
pub unsafe fn srtt_us(sk: *const u8) -> Option<u32> {
    let off = global(&OFF_SRTT_US);
    if off == 0 {
        return None;
    }
    read_at::<u32>(sk, off).ok().map(|srtt| srtt >> 3)
}

/// The kernel's retransmit totals of a TCP socket: (`tcp_sock.total_retrans`
/// segments, `tcp_sock.bytes_retrans` bytes); `None` when the loader found
/// no offsets or either is unreadable.
///
/// # Safety
/// As [`srtt_us`].
#[inline(always)]
pub unsafe fn retrans_totals(sk: *const u8) -> Option<(u32, u64)> {
    let (off_segs, off_bytes) = (global(&OFF_TOTAL_RETRANS), global(&OFF_BYTES_RETRANS));
    if off_segs == 0 || off_bytes == 0 {
        return None;
    }
    let segs = read_at::<u32>(sk, off_segs).ok()?;
    let bytes = read_at::<u64>(sk, off_bytes).ok()?;
    Some((segs, bytes))
}

/// The inode number of the socket's network namespace
/// (`skc_net->ns.inum`); `None` when the loader found no offsets, a link is
/// unreadable or the socket has no namespace.
///
/// # Safety
/// As [`head`].
#[inline(always)]
pub unsafe fn netns_inum(sk: *const u8) -> Option<u32> {
    let (off_net, off_inum) = (global(&OFF_SKC_NET), global(&OFF_NET_INUM));
    if off_net == 0 || off_inum == 0 {
        return None;
    }
    let net = read_at::<u64>(sk, off_net).ok()?;
    if net == 0 {
        return None;
    }
    read_at::<u32>(net as *const u8, off_inum).ok()
}

/// The `struct sock` of a `struct socket` (`socket->sk`); `Err` if
/// unreadable (may be null).
///
/// # Safety
/// `sock` must be a kernel `struct socket *`.
#[inline(always)]
pub unsafe fn of_socket(sock: *const u8) -> Result<*const u8, i32> {
    read_at::<u64>(sock, global(&OFF_SOCKET_SK)).map(|p| p as *const u8)
}
