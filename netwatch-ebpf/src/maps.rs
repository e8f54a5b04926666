//! The maps and load-time globals shared by every program. Userspace finds
//! them by the names in `netwatch_common::names`; sizes set here are
//! defaults the loader overrides.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use netwatch_common::{counter, DestroyedKey, SockKey, SockStats};

/// Every socket's counters, keyed by its `struct sock` address.
#[map(name = "SOCKETS")]
pub static SOCKETS: LruHashMap<SockKey, SockStats> = LruHashMap::with_max_entries(65536, 0);

/// Final records of sockets that were destroyed or replaced (`netwatch_common::ClosedSock`).
#[map(name = "CLOSED")]
pub static CLOSED: RingBuf = RingBuf::with_byte_size(1024 * 1024, 0);

/// Final records the ring buffer had no room for, until userspace reads them.
/// Kept apart from `SOCKETS` so a new socket at the same address never
/// inherits a dead one's counters.
#[map(name = "DESTROYED")]
pub static DESTROYED: HashMap<DestroyedKey, SockStats> = HashMap::with_max_entries(16384, 0);

/// The programs' own accounting (`netwatch_common::counter`).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// kprobe tier: the socket of a send in flight, by `pid_tgid`, until its kretprobe.
#[map(name = "SEND_ARGS")]
pub static SEND_ARGS: HashMap<u64, u64> = HashMap::with_max_entries(16384, 0);

// Offsets into `struct sock` resolved from the running kernel's BTF by the
// loader. The defaults are those of x86_64 6.x kernels built with IPv6.
#[unsafe(no_mangle)]
static OFF_SKC_FAMILY: u32 = 16;
#[unsafe(no_mangle)]
static OFF_SKC_V6_DADDR: u32 = 56;
#[unsafe(no_mangle)]
static OFF_SKC_V6_RCV_SADDR: u32 = 72;
#[unsafe(no_mangle)]
static OFF_SK_PROTOCOL: u32 = 0x204;
#[unsafe(no_mangle)]
static OFF_TCP_SRTT_US: u32 = 0;
/// The `netwatch_common::Tier` the loader attached, stamped on new entries.
#[unsafe(no_mangle)]
static TIER: u32 = 0;

/// Read a load-time global. `read_volatile` keeps the compiler from folding
/// in the default, so the loader's value is the one used.
#[inline(always)]
fn global(v: &'static u32) -> usize {
    // SAFETY: reading an initialised static.
    unsafe { core::ptr::read_volatile(v) as usize }
}

#[inline(always)]
pub fn tier() -> u8 {
    global(&TIER) as u8
}
#[inline(always)]
pub fn off_skc_family() -> usize {
    global(&OFF_SKC_FAMILY)
}
#[inline(always)]
pub fn off_skc_v6_daddr() -> usize {
    global(&OFF_SKC_V6_DADDR)
}
#[inline(always)]
pub fn off_skc_v6_rcv_saddr() -> usize {
    global(&OFF_SKC_V6_RCV_SADDR)
}
#[inline(always)]
pub fn off_sk_protocol() -> usize {
    global(&OFF_SK_PROTOCOL)
}
#[inline(always)]
pub fn off_tcp_srtt_us() -> usize {
    global(&OFF_TCP_SRTT_US)
}

/// Add one to a `COUNTERS` slot.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
