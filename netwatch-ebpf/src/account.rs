//! The one accounting function every program calls: find or create the
//! socket's entry, claim the current process's owner slot in it, add the
//! bytes. A tier shim only decides which socket, which direction and how
//! many bytes. [`seed`] enters a socket that existed before attach with its
//! holders as owners and 0 bytes; it never counts. Counters only ever change
//! by atomic adds; an entry is never overwritten in place while other CPUs
//! may be adding to it.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_get_current_task, bpf_ktime_get_ns,
};
use netwatch_common::{
    counter, seeded, ClosedSock, DestroyedKey, Owner, SockKey, SockStats, AF_INET, AF_INET6,
    COMM_LEN, IPPROTO_TCP, IPPROTO_UDP, OWNERS,
};

use crate::maps::{
    self, bump, ClaimKey, ACTIVE0, ACTIVE1, CLAIMS, CLOSED, DESTROYED, EPOCH, SCRATCH, SOCKETS,
};
use crate::sk::{self, read_at};

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

/// Fill `st` with the socket's family, ports and addresses: IPv4 ones from
/// the [`sk::Head`] of `sock_common`, IPv6 ones from their own fields.
#[inline(always)]
unsafe fn fill_addresses(sk: *const u8, family: u16, st: &mut SockStats) {
    st.family = family;
    if let Ok(head) = sk::head(sk) {
        st.rport = head.rport();
        st.lport = head.lport();
        if family == AF_INET {
            st.raddr[..4].copy_from_slice(&head.daddr);
            st.laddr[..4].copy_from_slice(&head.rcv_saddr);
        }
    }
    if family == AF_INET6 {
        if let Ok(a) = sk::v6_daddr(sk) {
            st.raddr = a;
        }
        if let Ok(a) = sk::v6_rcv_saddr(sk) {
            st.laddr = a;
        }
    }
}

/// A fresh entry for `sk` with its addresses, built in this CPU's scratch
/// slot of the calling program (`maps::scratch`: a `SockStats` does not
/// fit on the BPF stack, and a program that nests in this one on this CPU
/// builds in a slot of its own).
#[inline(always)]
unsafe fn fresh(sk: *const u8, family: u16, protocol: u8, slot: u32) -> Option<&'static SockStats> {
    let p = SCRATCH.get_ptr_mut(slot)?;
    core::ptr::write_bytes(p, 0, 1);
    let st = &mut *p;
    st.protocol = protocol;
    st.tier = maps::tier();
    st.first_ns = bpf_ktime_get_ns();
    fill_addresses(sk, family, st);
    Some(&*p)
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

/// `bpf_ringbuf_submit` flags: no wakeup while the ring is less than a
/// quarter full (the drain thread polls it every 100 ms anyway), a forced
/// one past that. The default (wake the reader whenever it has caught up)
/// woke it for nearly every record, and a wakeup from a tracepoint costs
/// an interrupt-work self-IPI, the bulk of a close's cost in a VM.
#[inline(always)]
fn wakeup_flags() -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_RING_SIZE: u64 = 1;
    if CLOSED.query(BPF_RB_AVAIL_DATA) > CLOSED.query(BPF_RB_RING_SIZE) / 4 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Hand an entry's final counters to userspace: through the ring buffer, or
/// if it is full through the `DESTROYED` map. Counted as lost only if both
/// are full. Copied with `bpf_probe_read_kernel`: the record does not fit
/// on the stack.
#[inline(always)]
pub unsafe fn emit_final(key: SockKey, st: *const SockStats) -> Final {
    if let Some(mut slot) = CLOSED.reserve::<ClosedSock>(0) {
        let rec = slot.as_mut_ptr();
        (*rec).key = key;
        let dst = core::ptr::addr_of_mut!((*rec).stats);
        if aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst as *mut _,
            core::mem::size_of::<SockStats>() as u32,
            st as *const _,
        ) != 0
        {
            slot.discard(0);
            bump(counter::FINAL_LOST);
            return Final::Lost;
        }
        slot.submit(wakeup_flags());
        return Final::Ring;
    }
    bump(counter::RINGBUF_DROPS);
    let dkey = DestroyedKey {
        sk: key.sk,
        first_ns: (*st).first_ns,
    };
    // By reference: a `SockStats` by value would not fit on the BPF stack.
    #[allow(clippy::needless_borrows_for_generic_args)]
    let inserted = DESTROYED.insert(dkey, &*st, 0);
    if inserted.is_err() {
        bump(counter::FINAL_LOST);
        return Final::Lost;
    }
    Final::Overflow
}

/// The end of a socket: its final counters go out (if it moved any bytes
/// or retransmitted) and its entry is deleted, so nothing can add to it
/// afterwards and a new socket at the same address starts a new entry.
#[inline(always)]
pub unsafe fn finish(key: SockKey) -> Option<Final> {
    let st = SOCKETS.get_ptr_mut(key)?;
    let (rx, tx) = (*st).totals();
    let out = if rx != 0 || tx != 0 || (*st).retrans_segs != 0 {
        Some(emit_final(key, st))
    } else {
        // No final record: the active set tells userspace it is gone.
        mark_active(key, st);
        None
    };
    release_claims(key, (*st).first_ns, (*st).claimed);
    if (*st).protocol == IPPROTO_TCP {
        crate::retrans::forget_base(key.sk, (*st).first_ns);
    }
    let _ = SOCKETS.remove(key);
    bump(counter::CLOSED);
    out
}

/// UDP sockets end at release (`cgroup/sock_release`); should that program
/// not run for one (a cgroup that overrides it), a freed socket's entry
/// stays, and when the kernel reuses its memory for a new socket the ports
/// or IPv4 addresses differ. Then the old entry is finished (final record,
/// deleted) and the caller creates a new one. True if it was replaced.
#[inline(always)]
unsafe fn replace_if_reused(sk: *const u8, key: SockKey, st: *const SockStats) -> bool {
    let Ok(head) = sk::head(sk) else {
        return false;
    };
    let (rport, lport) = (head.rport(), head.lport());
    let old = &*st;
    let same_v4 =
        old.family != AF_INET || (old.raddr[..4] == head.daddr && old.laddr[..4] == head.rcv_saddr);
    if old.lport == lport && old.rport == rport && same_v4 {
        return false;
    }
    let _ = finish(key);
    true
}

/// Look up the socket's entry, creating it (with its addresses, built in
/// the caller's `maps::scratch` slot) if new.
#[inline(always)]
pub unsafe fn entry(sk: *const u8, family: u16, protocol: u8, slot: u32) -> Option<*mut SockStats> {
    entry_new(sk, family, protocol, slot).map(|(st, _)| st)
}

/// [`entry`], and whether this call created it.
#[inline(always)]
unsafe fn entry_new(
    sk: *const u8,
    family: u16,
    protocol: u8,
    slot: u32,
) -> Option<(*mut SockStats, bool)> {
    let key = SockKey { sk: sk as u64 };
    if let Some(p) = SOCKETS.get_ptr_mut(key) {
        if !(protocol == IPPROTO_UDP
            && (*p).protocol == IPPROTO_UDP
            && replace_if_reused(sk, key, p))
        {
            return Some((p, false));
        }
    }
    let st = fresh(sk, family, protocol, slot)?;
    let created = match SOCKETS.insert(key, st, BPF_NOEXIST) {
        Ok(()) => {
            bump(counter::CREATED);
            if protocol == IPPROTO_TCP {
                // Retransmits count from here, like the bytes (the
                // lifecycle forgets this for a connection it saw begin).
                crate::retrans::remember_base(sk, st as *const SockStats);
            }
            true
        }
        Err(e) if e == EEXIST => false,
        Err(_) => {
            bump(counter::INSERT_FAILED);
            return None;
        }
    };
    SOCKETS.get_ptr_mut(key).map(|p| (p, created))
}

/// The process name of `task`: `task->group_leader->comm`, so that every
/// thread of a process (named apart with `PR_SET_NAME` or not) gives the
/// same name, as netwatch-sdk names processes. `None` when the loader found
/// no offsets or the kernel memory is unreadable.
#[inline(always)]
unsafe fn leader_comm(task: *const u8) -> Option<[u8; COMM_LEN]> {
    let (off_leader, off_comm) = (maps::off_task_group_leader(), maps::off_task_comm());
    if task.is_null() || off_leader == 0 || off_comm == 0 {
        return None;
    }
    let leader = read_at::<u64>(task, off_leader).ok()? as *const u8;
    if leader.is_null() {
        return None;
    }
    read_at::<[u8; COMM_LEN]>(leader, off_comm).ok()
}

/// Whose owner slot to find or claim.
#[derive(Clone, Copy)]
pub enum Holder {
    /// The task running the program (a counted call).
    Current,
    /// A task met by a seeding iterator (`struct task_struct *`).
    Task(*const u8),
}

impl Holder {
    /// The process name to store in a newly claimed slot.
    #[inline(always)]
    unsafe fn comm(self) -> [u8; COMM_LEN] {
        match self {
            Holder::Current => leader_comm(bpf_get_current_task() as *const u8)
                .or_else(|| bpf_get_current_comm().ok())
                .unwrap_or([0; COMM_LEN]),
            Holder::Task(task) => leader_comm(task)
                .or_else(|| read_at::<[u8; COMM_LEN]>(task, maps::off_task_comm()).ok())
                .unwrap_or([0; COMM_LEN]),
        }
    }
}

/// The owner slot of process `tgid` in `st`, claiming a free one if it has
/// none. A slot is claimed by creating its key in `CLAIMS` with
/// `BPF_NOEXIST`, which only one CPU can win, so two processes never share
/// a slot (the BPF target here has no fetching atomics to do it in place);
/// two threads of one process see each other's claim. The slot's name is
/// the holder's process name, read only when the slot is claimed. `None`
/// when every slot is taken (the caller decides whether that lost bytes).
#[inline(always)]
pub unsafe fn owner(
    key: SockKey,
    st: *mut SockStats,
    tgid: u32,
    holder: Holder,
    cgroup_id: u64,
) -> Option<*mut Owner> {
    if let Some(o) = slot_of(st, tgid) {
        return Some(o);
    }
    let owners = core::ptr::addr_of_mut!((*st).owners) as *mut Owner;
    let first_ns = (*st).first_ns;
    for i in 0..OWNERS {
        let ck = ClaimKey {
            sk: key.sk,
            first_ns,
            slot: i as u32,
            _pad: 0,
        };
        let won = match CLAIMS.insert(ck, tgid, BPF_NOEXIST) {
            Ok(()) => true,
            // SAFETY: a plain value copy out of the map.
            Err(_) => CLAIMS.get(ck).copied() == Some(tgid),
        };
        if won {
            let o = owners.add(i);
            (*o).comm = holder.comm();
            (*o).cgroup_id = cgroup_id;
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*o).tgid), tgid);
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(
                core::ptr::addr_of_mut!((*st).claimed),
                1,
            );
            return Some(o);
        }
    }
    None
}

/// Forget the slot claims of a finished entry: slots are claimed in order
/// (each claimer takes the first free one), so the `claimed` first ones;
/// a claim still in flight on another CPU is left to the LRU (its key
/// carries `first_ns`, so no later entry can mistake it for its own).
#[inline(always)]
unsafe fn release_claims(key: SockKey, first_ns: u64, claimed: u32) {
    for i in 0..OWNERS {
        if i as u32 >= claimed {
            break;
        }
        let _ = CLAIMS.remove(ClaimKey {
            sk: key.sk,
            first_ns,
            slot: i as u32,
            _pad: 0,
        });
    }
}

/// Create (or find) the entry of `sk` and the owner slot of `tgid` in it:
/// the one place an entry and an owner come to be, used by the byte
/// counters ([`account`]) and by seeding ([`seed`]). Also returns whether
/// this call created the entry; `Some((st, created, None))` when every
/// owner slot is taken. A new entry is built in `maps::scratch` slot `slot`.
#[inline(always)]
pub unsafe fn claim(
    sk: *const u8,
    family: u16,
    protocol: u8,
    tgid: u32,
    holder: Holder,
    cgroup_id: u64,
    slot: u32,
) -> Option<(*mut SockStats, bool, Option<*mut Owner>)> {
    let (st, created) = entry_new(sk, family, protocol, slot)?;
    let o = owner(SockKey { sk: sk as u64 }, st, tgid, holder, cgroup_id);
    Some((st, created, o))
}

/// Enter a socket that existed before the programs were attached (met by
/// a seeding iterator in [`crate::seed`]): create its entry if it has none
/// (0 bytes, its current TCP state and smoothed RTT) and, for a socket a
/// process holds (`task` not null), claim that process's owner slot, 0
/// bytes. A socket several processes hold (inherited across `fork`) is met
/// once per holder and gets each as an owner, up to [`OWNERS`]; a holder
/// past that is reported as `seeded::OWNERS_FULL` and not listed (no bytes
/// were lost: nothing is added to `OWNER_FULL`). Counters are never
/// touched, and an entry the counting programs made is kept as it is.
/// Entries created here count in `CREATED` like any other, so the eviction
/// identity (created = closed + evicted + live) holds. Returns a
/// `netwatch_common::seeded` code.
#[inline(always)]
pub unsafe fn seed(
    sk: *const u8,
    family: u16,
    protocol: u8,
    task: *const u8,
    tgid: u32,
    cgroup_id: u64,
) -> u8 {
    let slot = crate::maps::scratch::SEED;
    let found = if task.is_null() || tgid == 0 {
        entry_new(sk, family, protocol, slot).map(|(st, created)| (st, created, None))
    } else {
        claim(
            sk,
            family,
            protocol,
            tgid,
            Holder::Task(task),
            cgroup_id,
            slot,
        )
        .map(|(st, created, o)| (st, created, Some(o)))
    };
    let Some((st, created, slot)) = found else {
        return seeded::FAILED;
    };
    if protocol == IPPROTO_TCP {
        if created {
            (*st).state = sk::state(sk).unwrap_or(0);
        }
        record_rtt(sk, st);
    }
    match (created, slot) {
        (_, Some(None)) => seeded::OWNERS_FULL,
        (true, _) => seeded::CREATED,
        (false, _) => seeded::TRACKED,
    }
}

/// Count `bytes` moved on `sk` in direction `dir` by the current task.
/// `protocol` is the hook's protocol; the family is read from the socket,
/// and anything but IPv4/IPv6 TCP/UDP is ignored. `slot` is the calling
/// program's `maps::scratch` slot.
#[inline(always)]
pub unsafe fn account(sk: *const u8, dir: Dir, bytes: i64, protocol: u8, slot: u32) {
    account_lazy(sk, dir, bytes, slot, || protocol)
}

/// [`account`], with the protocol read only when the socket has no entry
/// yet (`protocol` may cost a kernel read: the tracepoint tier's hooks fire
/// for every socket family). The common case, a known socket whose process
/// already has its slot, costs one map lookup, the slot scan, one atomic
/// add and two compares: the process's name, cgroup, the socket's family
/// and addresses are read when an entry or a slot is created, the RTT once
/// per interval (when the socket enters the active set).
#[inline(always)]
pub unsafe fn account_lazy(
    sk: *const u8,
    dir: Dir,
    bytes: i64,
    slot: u32,
    protocol: impl FnOnce() -> u8,
) {
    if bytes <= 0 || sk.is_null() {
        return;
    }
    let key = SockKey { sk: sk as u64 };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let (st, o) = match known_slot(sk, key, tgid) {
        Some(found) => found,
        None => {
            let protocol = protocol();
            if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
                return;
            }
            let family = sk::family(sk);
            if family != AF_INET && family != AF_INET6 {
                return;
            }
            let Some((st, _, o)) = claim(
                sk,
                family,
                protocol,
                tgid,
                Holder::Current,
                bpf_get_current_cgroup_id(),
                slot,
            ) else {
                return;
            };
            let Some(o) = o else {
                bump(counter::OWNER_FULL);
                return;
            };
            (st, o)
        }
    };
    let mark = current_mark();
    let last = core::ptr::addr_of_mut!((*o).last_epoch);
    if core::ptr::read_volatile(last) != mark {
        core::ptr::write_volatile(last, mark);
    }
    let n = bytes as u64;
    match dir {
        Dir::Tx => {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                core::ptr::addr_of_mut!((*o).tx_bytes),
                n,
            );
        }
        Dir::Rx => {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
                core::ptr::addr_of_mut!((*o).rx_bytes),
                n,
            );
        }
    }
    // After the adds: see `mark_active`.
    mark_active_at(key, st, mark);
}

/// The entry of a socket already known, and the slot `tgid` already holds
/// in it. `None` sends the caller to [`claim`]: no entry, no slot yet, or a
/// UDP entry whose socket was freed and reused (finished here).
#[inline(always)]
unsafe fn known_slot(
    sk: *const u8,
    key: SockKey,
    tgid: u32,
) -> Option<(*mut SockStats, *mut Owner)> {
    let st = SOCKETS.get_ptr_mut(key)?;
    if (*st).protocol == IPPROTO_UDP && replace_if_reused(sk, key, st) {
        return None;
    }
    slot_of(st, tgid).map(|o| (st, o))
}

/// The owner slot process `tgid` already holds in `st`, if any.
#[inline(always)]
unsafe fn slot_of(st: *mut SockStats, tgid: u32) -> Option<*mut Owner> {
    let owners = core::ptr::addr_of_mut!((*st).owners) as *mut Owner;
    for i in 0..OWNERS {
        let o = owners.add(i);
        if core::ptr::read_volatile(core::ptr::addr_of!((*o).tgid)) == tgid {
            return Some(o);
        }
    }
    None
}

/// This interval's mark: the `EPOCH` userspace advances at each read, plus
/// one (so 0 means "never"); 0 if the global cannot be read.
#[inline(always)]
unsafe fn current_mark() -> u32 {
    match EPOCH.get_ptr(0) {
        Some(e) => core::ptr::read_volatile(e).wrapping_add(1),
        None => 0,
    }
}

/// Enter the socket in this interval's active set, once per interval: only
/// the first event of a socket in an interval pays the insert, the others
/// one compare. Called after the counters changed, so that a read which
/// found the socket in the set also finds the change: an event that read
/// the old interval number had already added its bytes before userspace
/// advanced it (x86's atomic add is a full barrier), and one that reads the
/// new number marks the socket in the new generation. A mark that lands in
/// the old generation after userspace drained it is read one interval
/// later; the counters are cumulative, so nothing is lost, only delayed. A
/// full set is counted in `ACTIVE_FULL`, which makes userspace walk the
/// whole socket map.
#[inline(always)]
pub unsafe fn mark_active(key: SockKey, st: *mut SockStats) {
    mark_active_at(key, st, current_mark());
}

/// [`mark_active`] with the mark already read. The socket's first event of
/// an interval also refreshes a TCP socket's smoothed RTT (so a connection
/// row's RTT is at most one interval old).
#[inline(always)]
unsafe fn mark_active_at(key: SockKey, st: *mut SockStats, mark: u32) {
    if mark == 0 {
        return;
    }
    let at = core::ptr::addr_of_mut!((*st).epoch);
    if core::ptr::read_volatile(at) == mark {
        return;
    }
    if (*st).protocol == IPPROTO_TCP {
        record_rtt(key.sk as *const u8, st);
    }
    let gen = mark.wrapping_sub(1) & 1;
    let set = if gen == 0 { &ACTIVE0 } else { &ACTIVE1 };
    if set.insert(key, 0u32, 0).is_ok() {
        core::ptr::write_volatile(at, mark);
        bump(counter::ACTIVE_MARKS0 + gen);
    } else {
        bump(counter::ACTIVE_FULL);
    }
}

/// Keep the entry's smoothed RTT current ([`sk::srtt_us`]; left as it is
/// when the loader found no offset). Not for an MPTCP socket, entered as
/// TCP but no `tcp_sock` (its RTTs are its subflows'): its entry has none.
#[inline(always)]
unsafe fn record_rtt(sk: *const u8, st: *mut SockStats) {
    if sk::protocol(sk) != IPPROTO_TCP as u16 {
        return;
    }
    if let Some(us) = sk::srtt_us(sk) {
        (*st).srtt_us = us;
    }
}
