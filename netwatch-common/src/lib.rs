//! Types shared by netwatch's BPF programs and its userspace agent.
//!
//! The crate root is `no_std` and holds only the kernel ABI: `#[repr(C)]`
//! structs with explicit padding, laid out identically on both sides of the
//! map boundary. The NetWatch Cloud JSON wire format lives in [`wire`] behind
//! the `wire` feature so that a server can depend on it without aya, and so
//! that nothing here ever pulls `std` into the BPF object.
#![no_std]

#[cfg(feature = "wire")]
extern crate std;

#[cfg(feature = "wire")]
pub mod wire;

/// Length of `task_struct->comm`.
pub const COMM_LEN: usize = 16;

/// `AF_INET` as the kernel stores it in `sk_family`.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel stores it in `sk_family`.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;
/// The kernel's `TCP_CLOSE` state number (`include/net/tcp_states.h`).
pub const TCP_CLOSE: u8 = 7;

/// Which hook tier a program belongs to. Stored in every socket record so
/// userspace can tell which programs counted it.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Tier {
    /// `fentry`/`fexit` on `tcp_sendmsg`, `tcp_recvmsg`, `tcp_sendpage` (< 6.5), `tcp_splice_read`, `udp*_sendmsg`, `udp_sendpage` (< 6.5), `skb_consume_udp`.
    Fentry = 1,
    /// `kprobe`/`kretprobe` on the same functions.
    Kprobe = 2,
    /// `tp_btf` on `sock:sock_send_length` / `sock:sock_recv_length` (Linux ≥ 6.3).
    Tracepoint = 3,
}

/// The key of the per-socket map: the kernel address of `struct sock`.
///
/// A socket address can be reused after the socket is freed, so userspace
/// identifies a socket by (`SockKey`, [`SockStats::first_ns`]).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    /// `struct sock *` as an integer.
    pub sk: u64,
}

/// How many processes can own one socket's counters at once (a parent and
/// its forked children, a pre-fork server's workers). A further process
/// moving bytes on a socket whose slots are all taken is counted in
/// [`counter::OWNER_FULL`] (lost), never attributed to another process.
pub const OWNERS: usize = 4;

/// The bytes one process moved on one socket.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id (the userspace pid); 0 while the slot is free.
    pub tgid: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// `comm` of the process's thread-group leader (the process name, not a
    /// thread's), read when the slot was claimed, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// cgroup v2 id of that task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// Payload bytes sent (return value of the send path, > 0 only).
    pub tx_bytes: u64,
    /// Payload bytes received (return value of the receive path, > 0 only).
    pub rx_bytes: u64,
    /// The interval of this owner's last counted call: the `EPOCH` value
    /// then, plus one (0: no call counted yet, e.g. a seeded holder). Orders
    /// a socket's owners, most recent first, without a clock read per call.
    pub last_epoch: u32,
    /// Explicit padding; always zero.
    pub _pad2: u32,
}

impl Owner {
    /// A free slot.
    pub const fn zeroed() -> Self {
        Self {
            tgid: 0,
            _pad: 0,
            comm: [0; COMM_LEN],
            cgroup_id: 0,
            tx_bytes: 0,
            rx_bytes: 0,
            last_epoch: 0,
            _pad2: 0,
        }
    }
}

/// The value of the per-socket map: what the socket connects, and the bytes
/// each process that used it moved, since the programs first saw it.
///
/// Addresses are in network byte order as the kernel stores them; IPv4
/// addresses sit in the first 4 bytes of the 16-byte arrays. Ports are in
/// host byte order. Owner slots are claimed in order by an atomic add on
/// [`SockStats::claimed`]; two threads of one process may claim two slots
/// (userspace sums slots of one tgid), and counters are only ever changed by
/// atomic adds, so no update can be lost to a race.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SockStats {
    /// Local port, host byte order.
    pub lport: u16,
    /// Remote port, host byte order.
    pub rport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    /// Last TCP state seen by the lifecycle tracepoint (0 if none).
    pub state: u8,
    /// [`Tier`] the loader attached when the entry was created.
    pub tier: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
    /// Owner slots claimed so far (may exceed [`OWNERS`]: those were lost).
    pub claimed: u32,
    /// Local address.
    pub laddr: [u8; 16],
    /// Remote address.
    pub raddr: [u8; 16],
    /// `bpf_ktime_get_ns()` when the entry was created: with the key, the
    /// socket's identity (an address reused by a new socket gets a new entry).
    pub first_ns: u64,
    /// Smoothed RTT in µs (`tcp_sock.srtt_us >> 3`) at the last TCP event; 0 if unknown.
    pub srtt_us: u32,
    /// The interval this entry was last entered in the active set, plus
    /// one (0 for an entry never marked), see [`names::EPOCH`]. Userspace
    /// ignores it.
    pub epoch: u32,
    /// TCP segments the kernel retransmitted on the socket: a copy of its
    /// `tcp_sock.total_retrans` (`tcpi_total_retrans`), refreshed at each
    /// `tcp:tcp_retransmit_skb`, at ESTABLISHED and before the final record.
    pub retrans_segs: u32,
    /// TCP resets this host sent on the socket (`tcp:tcp_send_reset`).
    pub resets_sent: u16,
    /// TCP resets the socket received (`tcp:tcp_receive_reset`).
    pub resets_received: u16,
    /// Bytes in the retransmitted segments: a copy of `tcp_sock.bytes_retrans`
    /// (`tcpi_bytes_retrans`), refreshed with [`Self::retrans_segs`].
    pub retrans_bytes: u64,
    /// For a socket this host connected: microseconds from its first SYN to
    /// ESTABLISHED (0: not seen).
    pub connect_us: u32,
    /// Explicit padding; always zero.
    pub _pad2: u32,
    /// The processes that moved bytes on the socket.
    pub owners: [Owner; OWNERS],
}

impl SockStats {
    /// An all-zero record, the starting point for a new socket.
    pub const fn zeroed() -> Self {
        Self {
            lport: 0,
            rport: 0,
            family: 0,
            protocol: 0,
            state: 0,
            tier: 0,
            _pad: [0; 3],
            claimed: 0,
            laddr: [0; 16],
            raddr: [0; 16],
            first_ns: 0,
            srtt_us: 0,
            epoch: 0,
            retrans_segs: 0,
            resets_sent: 0,
            resets_received: 0,
            retrans_bytes: 0,
            connect_us: 0,
            _pad2: 0,
            owners: [Owner::zeroed(); OWNERS],
        }
    }

    /// Total (rx, tx) over every owner.
    pub fn totals(&self) -> (u64, u64) {
        self.owners
            .iter()
            .fold((0, 0), |(r, t), o| (r + o.rx_bytes, t + o.tx_bytes))
    }
}

/// The key of the `DESTROYED` overflow map: a destroyed socket's address and
/// creation time, unique even after the kernel reuses the address.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestroyedKey {
    pub sk: u64,
    pub first_ns: u64,
}

/// A socket's final record, with every owner's counters, written to the
/// `CLOSED` ring buffer when the kernel destroys a TCP socket or releases a
/// UDP socket (or, as a fallback, a UDP socket's address is reused by a new
/// one) and its map entry is deleted, so the last bytes are never lost
/// between two reads and nothing can add to a finished entry.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ClosedSock {
    /// The socket's map key.
    pub key: SockKey,
    /// Its counters at close.
    pub stats: SockStats,
}

/// One TCP control event from the kernel, written to the `TCP_EVENTS` ring
/// buffer: a connection attempt (SYN) or a reset (RST), its addresses in
/// packet direction (`src` sent the segment). Addresses are IPv4 in the
/// first 4 bytes or IPv6; ports in host byte order.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TcpEventRecord {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when it happened.
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid` where the kernel ran in the process that
    /// caused it (a `connect`); 0 otherwise (softirq).
    pub pid_tgid: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// One of [`tcp_event`]'s kinds.
    pub kind: u8,
    /// [`tcp_event`]'s `FLAG_*` bits.
    pub flags: u8,
    /// `SYN_SENT` with an `end`: nanoseconds from the socket entering
    /// SYN_SENT (its first SYN) to leaving it. 0 otherwise.
    pub took_ns: u64,
    /// `SYN_SENT` ending in [`tcp_event::END_CLOSED`]: the socket's
    /// `sk_err` then (`ECONNREFUSED`, `ETIMEDOUT`, `EHOSTUNREACH`, …; 0 when
    /// its process closed it). 0 otherwise.
    pub err: i32,
    /// `SYN_SENT`: how the connect ended, one of [`tcp_event`]'s `END_*`.
    pub end: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

impl TcpEventRecord {
    /// An all-zero record, the starting point for a new event.
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            pid_tgid: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            sport: 0,
            dport: 0,
            family: 0,
            kind: 0,
            flags: 0,
            took_ns: 0,
            err: 0,
            end: 0,
            _pad: [0; 3],
        }
    }
}

/// Kinds and flags of [`TcpEventRecord`].
pub mod tcp_event {
    /// A local socket entered SYN_SENT: `connect` sent a SYN (src = local).
    pub const SYN_SENT: u8 = 1;
    /// A listener's child entered SYN_RECV: a remote's SYN was accepted and
    /// the handshake completed (src = remote, dst = local).
    pub const SYN_RECV: u8 = 2;
    /// A local socket received a RST (`tcp:tcp_receive_reset`; src = remote).
    pub const RST_RECEIVED: u8 = 3;
    /// This host sent a RST (`tcp:tcp_send_reset`; src = local).
    pub const RST_SENT: u8 = 4;
    /// `RST_SENT` answering a segment no socket took (a closed port).
    pub const FLAG_NO_SOCKET: u8 = 1;
    /// `RST_SENT` answering a SYN without ACK (a connection attempt refused).
    pub const FLAG_ANSWERED_SYN: u8 = 2;
    /// A `SYN_SENT` record whose end was not seen (another state than
    /// ESTABLISHED or CLOSE followed SYN_SENT: a simultaneous open).
    pub const END_NONE: u8 = 0;
    /// The socket left SYN_SENT for ESTABLISHED: the handshake completed.
    pub const END_ESTABLISHED: u8 = 1;
    /// The socket left SYN_SENT for CLOSE: the connect failed (the cause is
    /// in `err`) or its process closed it.
    pub const END_CLOSED: u8 = 2;
}

/// Indexes into the `COUNTERS` per-CPU array: the programs' own accounting,
/// summed over CPUs by userspace.
pub mod counter {
    /// Socket entries created.
    pub const CREATED: u32 = 0;
    /// Entries deleted when their socket was destroyed or replaced (final record written).
    pub const CLOSED: u32 = 1;
    /// Final records that did not fit in the ring buffer (moved to the `DESTROYED` map instead).
    pub const RINGBUF_DROPS: u32 = 2;
    /// Map inserts that failed (other than "already exists").
    pub const INSERT_FAILED: u32 = 3;
    /// Final records lost because both the ring buffer and the `DESTROYED` map were full.
    pub const FINAL_LOST: u32 = 4;
    /// Calls whose bytes were not counted because all [`super::OWNERS`] slots of the socket were taken.
    pub const OWNER_FULL: u32 = 5;
    /// kprobe tier: calls whose return probe never ran (a new entry found the
    /// previous one still stashed: the kretprobe was missed, e.g. `maxactive`
    /// exhausted) or whose arguments could not be stashed.
    pub const MISSED_RETURN: u32 = 6;
    /// TCP control events ([`super::TcpEventRecord`]) lost: the `TCP_EVENTS`
    /// ring buffer was full, or a connect's SYN could not be remembered
    /// until its local port was known.
    pub const TCP_EVENTS_LOST: u32 = 7;
    /// Inserts into the active set (`ACTIVE0`/`ACTIVE1`) that failed (a full
    /// map): the socket is not in the set, so userspace walks the whole
    /// socket map on its next read. Not a loss.
    pub const ACTIVE_FULL: u32 = 8;
    /// TCP state changes (`sock:inet_sock_set_state`) in the loader's
    /// network namespace (every namespace when its offsets are unknown):
    /// while it and the time-wait count stand still, the TCP
    /// state counts cannot have changed, and userspace skips its walk.
    pub const STATE_CHANGES: u32 = 9;
    /// Sockets entered in the active set `ACTIVE0` (index + 1: `ACTIVE1`):
    /// while a generation's count stands still since userspace last
    /// drained it, the drain (a walk of every bucket) is skipped.
    pub const ACTIVE_MARKS0: u32 = 10;
    /// Number of counters.
    pub const LEN: u32 = 12;
}

/// What a seeding iterator (`iter/task_file`, `iter/tcp`, `iter/udp`) did
/// with one existing socket: the one byte it writes to its output per
/// IPv4/IPv6 TCP/UDP socket (per holder: a socket several processes hold is
/// met once per holder).
pub mod seeded {
    /// A new entry was created (0 bytes), with this holder as its first owner
    /// (none for a socket no process holds).
    pub const CREATED: u8 = 0;
    /// The socket already had an entry (it moved bytes since attach, or
    /// another holder was met first): this holder has (or now has) an owner
    /// slot in it, 0 bytes.
    pub const TRACKED: u8 = 1;
    /// The map refused the entry.
    pub const FAILED: u8 = 2;
    /// Not seeded: the seeding budget (half the map) was used up.
    pub const SKIPPED: u8 = 3;
    /// The entry exists but all [`super::OWNERS`] slots were taken by other
    /// holders: this holder is not listed as an owner. Not a loss (seeding
    /// counts no bytes; not in [`super::counter::OWNER_FULL`]); should this
    /// process later move bytes on the socket, those are counted in
    /// `OWNER_FULL` like any process past the slot limit.
    pub const OWNERS_FULL: u8 = 4;
}

/// Names of the maps and globals the programs define, shared with the loader.
pub mod names {
    /// LRU hash `SockKey -> SockStats`.
    pub const SOCKETS: &str = "SOCKETS";
    /// Ring buffer of [`super::ClosedSock`].
    pub const CLOSED: &str = "CLOSED";
    /// Hash `DestroyedKey -> SockStats`: final records the ring buffer had no room for.
    pub const DESTROYED: &str = "DESTROYED";
    /// Per-CPU array of `u64` counters, see [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Array of one `u32`: the current interval number, which userspace
    /// advances once per read. Events of interval `e` mark their socket in
    /// [`ACTIVE`]`[e & 1]` (once per socket and interval, through
    /// [`super::SockStats::epoch`]), so a read drains the other generation
    /// and looks up only the sockets that moved bytes or changed state.
    pub const EPOCH: &str = "EPOCH";
    /// The two generations of the active set: hash `SockKey -> u32` (the
    /// value is unused), each sized like `SOCKETS`.
    pub const ACTIVE: [&str; 2] = ["ACTIVE0", "ACTIVE1"];
    /// Global `u32`: offset of `skc_family` in `struct sock_common`.
    pub const OFF_SKC_FAMILY: &str = "OFF_SKC_FAMILY";
    /// Global `u32`: offset of `skc_v6_daddr` in `struct sock_common`.
    pub const OFF_SKC_V6_DADDR: &str = "OFF_SKC_V6_DADDR";
    /// Global `u32`: offset of `skc_v6_rcv_saddr` in `struct sock_common`.
    pub const OFF_SKC_V6_RCV_SADDR: &str = "OFF_SKC_V6_RCV_SADDR";
    /// Global `u32`: offset of `sk_protocol` in `struct sock`.
    pub const OFF_SK_PROTOCOL: &str = "OFF_SK_PROTOCOL";
    /// Global `u32`: the [`super::Tier`] attached, stamped on new entries.
    pub const TIER: &str = "TIER";
    /// Map `u64 pid_tgid -> u64 sk` used by the kprobe tier between entry and return.
    pub const SEND_ARGS: &str = "SEND_ARGS";
    /// LRU hash of owner-slot claims, sized `OWNERS` × the `SOCKETS` capacity.
    pub const CLAIMS: &str = "CLAIMS";
    /// Global `u32`: index of `flags` among `tcp_recvmsg`'s arguments (4 before Linux 5.19, 3 since).
    pub const RECV_FLAGS_ARG: &str = "RECV_FLAGS_ARG";
    /// Global `u32`: offset of `sk` in `struct socket`.
    pub const OFF_SOCKET_SK: &str = "OFF_SOCKET_SK";
    /// Global `u32`: offset of `srtt_us` in `struct tcp_sock`.
    pub const OFF_SRTT_US: &str = "OFF_SRTT_US";
    /// Global `u32`: offset of `sk_err` in `struct sock` (0: unknown, a
    /// failed connect's cause is then not read).
    pub const OFF_SK_ERR: &str = "OFF_SK_ERR";
    /// Global `u32`: offset of `total_retrans` in `struct tcp_sock` (0: unknown).
    pub const OFF_TOTAL_RETRANS: &str = "OFF_TOTAL_RETRANS";
    /// Global `u32`: offset of `bytes_retrans` in `struct tcp_sock` (0: unknown).
    pub const OFF_BYTES_RETRANS: &str = "OFF_BYTES_RETRANS";
    /// Global `u32`: offset of `group_leader` in `struct task_struct`.
    pub const OFF_TASK_GROUP_LEADER: &str = "OFF_TASK_GROUP_LEADER";
    /// Global `u32`: offset of `comm` in `struct task_struct`.
    pub const OFF_TASK_COMM: &str = "OFF_TASK_COMM";
    /// Ring buffer of [`super::TcpEventRecord`].
    pub const TCP_EVENTS: &str = "TCP_EVENTS";
    /// Global `u32`: offset of `skc_net` (a `possible_net_t`, whose first
    /// member is the `struct net *`) in `struct sock_common` (0: unknown).
    pub const OFF_SKC_NET: &str = "OFF_SKC_NET";
    /// Global `u32`: offset of `ns.inum` in `struct net` (0: unknown).
    pub const OFF_NET_INUM: &str = "OFF_NET_INUM";
    /// Global `u32`: the inode number of the loader's network namespace
    /// (0: count every namespace).
    pub const NETNS_INUM: &str = "NETNS_INUM";
    /// Global `u32`: offset of `data` in `struct sk_buff` (0: unknown).
    pub const OFF_SKB_DATA: &str = "OFF_SKB_DATA";
    /// Globals `u32`: offsets of `head`, `network_header`, `transport_header` in `struct sk_buff`.
    pub const OFF_SKB_HEAD: &str = "OFF_SKB_HEAD";
    pub const OFF_SKB_NETWORK_HEADER: &str = "OFF_SKB_NETWORK_HEADER";
    pub const OFF_SKB_TRANSPORT_HEADER: &str = "OFF_SKB_TRANSPORT_HEADER";
    /// Global `u32`: the `tcp:tcp_send_reset` record's layout, one of
    /// [`super::send_reset`]'s values.
    pub const SEND_RESET_LAYOUT: &str = "SEND_RESET_LAYOUT";
    /// Globals `u32`: offsets of `tcp:tcp_send_reset`'s fields in its record,
    /// from the running kernel's tracefs `format` file.
    pub const SEND_RESET_SKBADDR: &str = "SEND_RESET_SKBADDR";
    pub const SEND_RESET_SKADDR: &str = "SEND_RESET_SKADDR";
    pub const SEND_RESET_SPORT: &str = "SEND_RESET_SPORT";
    pub const SEND_RESET_DPORT: &str = "SEND_RESET_DPORT";
    pub const SEND_RESET_FAMILY: &str = "SEND_RESET_FAMILY";
    pub const SEND_RESET_SADDR: &str = "SEND_RESET_SADDR";
    pub const SEND_RESET_DADDR: &str = "SEND_RESET_DADDR";
    pub const SEND_RESET_SADDR_V6: &str = "SEND_RESET_SADDR_V6";
    pub const SEND_RESET_DADDR_V6: &str = "SEND_RESET_DADDR_V6";
}

/// Layouts of the `tcp:tcp_send_reset` record ([`names::SEND_RESET_LAYOUT`]).
pub mod send_reset {
    /// Unknown format: the program records nothing.
    pub const NONE: u32 = 0;
    /// Linux < 6.10: `sport`, `dport`, `family`, `saddr[4]`, `daddr[4]`,
    /// `saddr_v6`, `daddr_v6` from the (full) socket; fires only for resets
    /// of a full socket.
    pub const FIELDS: u32 = 1;
    /// Linux ≥ 6.10: `saddr`/`daddr` are `struct sockaddr_in6`-sized
    /// (`sockaddr_in` or `sockaddr_in6`, port in network order), filled from
    /// the socket or, without one, from the answered segment: fires for
    /// resets to closed ports too.
    pub const SOCKADDR: u32 = 2;
}

#[cfg(all(feature = "user", target_os = "linux"))]
mod pod {
    // SAFETY: both are #[repr(C)], made only of integers and byte arrays, with
    // every padding byte spelled out as a field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClosedSock {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DestroyedKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Owner {}
    // SAFETY: as above (no padding: 8 + 8 + 16 + 16 + 2 + 2 + 2 + 1 + 1,
    // then 8 + 4 + 1 + 3).
    unsafe impl aya::Pod for super::TcpEventRecord {}
}

// The layout is the ABI: pin it so a field change cannot go unnoticed.
const _: () = assert!(core::mem::size_of::<Owner>() == 56);
const _: () = assert!(core::mem::size_of::<TcpEventRecord>() == 72);
const _: () = assert!(core::mem::size_of::<SockStats>() == 88 + 56 * OWNERS);
const _: () = assert!(core::mem::size_of::<ClosedSock>() == 8 + 88 + 56 * OWNERS);
