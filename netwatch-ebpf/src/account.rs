//! The one accounting function every program calls: find or create the
//! socket's entry, stamp the current owner, add the bytes. A tier shim only
//! decides which socket, which direction and how many bytes. [`seed`] enters
//! a socket that existed before attach, with 0 bytes; it never counts.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
    bpf_probe_read_kernel,
};
use netwatch_common::{
    counter, ClosedSock, DestroyedKey, SockKey, SockStats, AF_INET, AF_INET6, IPPROTO_TCP,
    IPPROTO_UDP,
};

use crate::maps::{self, bump, CLOSED, DESTROYED, SOCKETS};

/// Which way the bytes went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Tx,
    Rx,
}

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;
/// `-EEXIST`.
const EEXIST: i32 = -17;

/// Read a `T` at `base + off` from kernel memory.
#[inline(always)]
pub unsafe fn read_at<T>(base: *const u8, off: usize) -> Result<T, i32> {
    bpf_probe_read_kernel(base.add(off) as *const T)
}

/// The socket's address family, from the BTF-resolved `skc_family` offset.
#[inline(always)]
pub unsafe fn sk_family(sk: *const u8) -> u16 {
    read_at::<u16>(sk, maps::off_skc_family()).unwrap_or(0)
}

/// Fill `st` with the socket's family and addresses, read from `struct sock`.
/// IPv4 addresses and ports sit in the first 16 bytes of `sock_common`
/// (identical on every kernel); IPv6 addresses at BTF-resolved offsets.
#[inline(always)]
unsafe fn fill_addresses(sk: *const u8, family: u16, st: &mut SockStats) {
    st.family = family;
    // skc_daddr @0, skc_rcv_saddr @4, skc_dport @12 (network order), skc_num @14 (host order)
    if let Ok(pair) = read_at::<[u8; 16]>(sk, 0) {
        st.rport = u16::from_be_bytes([pair[12], pair[13]]);
        st.lport = u16::from_ne_bytes([pair[14], pair[15]]);
        if family == AF_INET {
            st.raddr[..4].copy_from_slice(&pair[0..4]);
            st.laddr[..4].copy_from_slice(&pair[4..8]);
        }
    }
    if family == AF_INET6 {
        if let Ok(a) = read_at::<[u8; 16]>(sk, maps::off_skc_v6_daddr()) {
            st.raddr = a;
        }
        if let Ok(a) = read_at::<[u8; 16]>(sk, maps::off_skc_v6_rcv_saddr()) {
            st.laddr = a;
        }
    }
}

/// A fresh entry for `sk` with its addresses.
#[inline(always)]
unsafe fn fresh(sk: *const u8, family: u16, protocol: u8) -> SockStats {
    let mut st = SockStats::zeroed();
    st.protocol = protocol;
    st.tier = maps::tier();
    st.first_ns = bpf_ktime_get_ns();
    fill_addresses(sk, family, &mut st);
    st
}

/// Where a final record went.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Final {
    /// The `CLOSED` ring buffer.
    Ring,
    /// The `DESTROYED` map (the ring buffer was full).
    Overflow,
    /// Nowhere: both were full (counted in `FINAL_LOST`).
    Lost,
}

/// Hand an entry's final counters to userspace: through the ring buffer, or
/// if it is full through the `DESTROYED` map. Counted as lost only if both
/// are full.
#[inline(always)]
pub fn emit_final(key: SockKey, st: &SockStats) -> Final {
    if let Some(mut slot) = CLOSED.reserve::<ClosedSock>(0) {
        slot.write(ClosedSock { key, stats: *st });
        slot.submit(0);
        return Final::Ring;
    }
    bump(counter::RINGBUF_DROPS);
    let dkey = DestroyedKey {
        sk: key.sk,
        first_ns: st.first_ns,
    };
    if DESTROYED.insert(dkey, *st, 0).is_err() {
        bump(counter::FINAL_LOST);
        return Final::Lost;
    }
    Final::Overflow
}

/// UDP has no destroy hook we can rely on, so a freed UDP socket's entry
/// stays; when the kernel reuses its memory for a new socket, the ports or
/// IPv4 addresses differ. Then the old entry's final counters go out as a
/// record and the entry starts over for the new socket.
#[inline(always)]
unsafe fn replace_if_reused(sk: *const u8, key: SockKey, st: *mut SockStats) {
    let Ok(pair) = read_at::<[u8; 16]>(sk, 0) else {
        return;
    };
    let rport = u16::from_be_bytes([pair[12], pair[13]]);
    let lport = u16::from_ne_bytes([pair[14], pair[15]]);
    let old = &*st;
    let same_v4 =
        old.family != AF_INET || (old.raddr[..4] == pair[0..4] && old.laddr[..4] == pair[4..8]);
    if old.lport == lport && old.rport == rport && same_v4 {
        return;
    }
    if old.tx_bytes != 0 || old.rx_bytes != 0 {
        let _ = emit_final(key, old);
    }
    *st = fresh(sk, old.family, old.protocol);
}

/// Keep a TCP socket's smoothed RTT (`tcp_sock->srtt_us`, BTF offset) in
/// its entry; 0 (not measured yet) leaves the last value.
#[inline(always)]
pub unsafe fn update_rtt(sk: *const u8, protocol: u8, st: &mut SockStats) {
    if protocol != IPPROTO_TCP {
        return;
    }
    if let Ok(srtt) = read_at::<u32>(sk, maps::off_tcp_srtt_us()) {
        if srtt != 0 {
            st.srtt_us = srtt;
        }
    }
}

/// Look up the socket's entry, creating it (with its addresses) if new.
#[inline(always)]
pub unsafe fn entry(sk: *const u8, family: u16, protocol: u8) -> Option<*mut SockStats> {
    let key = SockKey { sk: sk as u64 };
    if let Some(p) = SOCKETS.get_ptr_mut(key) {
        if protocol == IPPROTO_UDP && (*p).protocol == IPPROTO_UDP {
            replace_if_reused(sk, key, p);
        }
        return Some(p);
    }
    let st = fresh(sk, family, protocol);
    match SOCKETS.insert(key, st, BPF_NOEXIST) {
        Ok(()) => bump(counter::CREATED),
        Err(e) if e == EEXIST => {}
        Err(_) => {
            bump(counter::INSERT_FAILED);
            return None;
        }
    }
    SOCKETS.get_ptr_mut(key)
}

/// Count `bytes` moved on `sk` in direction `dir` by the current task.
/// `protocol` is the hook's protocol; the family is read from the socket,
/// and anything but IPv4/IPv6 TCP/UDP is ignored.
#[inline(always)]
pub unsafe fn account(sk: *const u8, dir: Dir, bytes: i64, protocol: u8) {
    if bytes <= 0 || sk.is_null() {
        return;
    }
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return;
    }
    let family = sk_family(sk);
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let Some(st) = entry(sk, family, protocol) else {
        return;
    };
    let st = &mut *st;
    st.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Ok(comm) = bpf_get_current_comm() {
        st.comm = comm;
    }
    st.cgroup_id = bpf_get_current_cgroup_id();
    st.last_ns = bpf_ktime_get_ns();
    update_rtt(sk, protocol, st);
    let n = bytes as u64;
    match dir {
        Dir::Tx => {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut st.tx_bytes, n);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut st.tx_calls, 1);
        }
        Dir::Rx => {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut st.rx_bytes, n);
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&mut st.rx_calls, 1);
        }
    }
}

/// Create the entry of a socket that existed before the programs were
/// attached (found by the `iter/task_file` iterator in [`crate::seed`]),
/// owned by `tgid`/`comm`/`cgroup_id`, with 0 bytes and its current TCP
/// state. An existing entry is left alone: it is newer than anything an
/// iterator can see. Counted in `CREATED` like any entry, so the eviction
/// identity (created = closed + evicted + live) still holds. Returns a
/// `netwatch_common::seeded` code.
#[inline(always)]
pub unsafe fn seed(
    sk: *const u8,
    family: u16,
    protocol: u8,
    tgid: u32,
    comm: [u8; netwatch_common::COMM_LEN],
    cgroup_id: u64,
) -> u8 {
    use netwatch_common::seeded;
    let key = SockKey { sk: sk as u64 };
    if SOCKETS.get_ptr_mut(key).is_some() {
        return seeded::TRACKED;
    }
    let mut st = fresh(sk, family, protocol);
    st.tgid = tgid;
    st.comm = comm;
    st.cgroup_id = cgroup_id;
    st.last_ns = st.first_ns;
    if protocol == IPPROTO_TCP {
        st.state = read_at::<u8>(sk, crate::seed::off_skc_state()).unwrap_or(0);
    }
    update_rtt(sk, protocol, &mut st);
    match SOCKETS.insert(key, st, BPF_NOEXIST) {
        Ok(()) => {
            bump(counter::CREATED);
            seeded::CREATED
        }
        Err(e) if e == EEXIST => seeded::TRACKED,
        Err(_) => seeded::FAILED,
    }
}
