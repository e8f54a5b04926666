//! netwatch's BPF programs: count every payload byte each TCP/UDP socket
//! sends and receives, per socket, tagged with the owning process.
//!
//! Three hook tiers count the same thing through one accounting function
//! ([`account::account`]), so they cannot drift apart:
//! - `fentry`/`fexit` ([`tcp`], [`udp`], [`mptcp`]): cheapest, needs BPF trampolines;
//! - `kprobe`/`kretprobe` ([`tcp`], [`udp`], [`mptcp`]): for kernels without trampolines;
//! - `tp_btf` on `sock:sock_{send,recv}_length` ([`tracepoint_tier`]): Linux ≥ 6.3.
//!
//! [`retrans`] copies the kernel's per-socket retransmit totals into the
//! socket's entry at each `tcp:tcp_retransmit_skb`, on every tier.
//! [`lifecycle`] follows TCP state changes on every tier and hands a
//! socket's final counters to userspace when it closes; it also hands
//! [`tcp_events`] the connection attempts, which with the reset tracepoints
//! feed userspace's port-scan detector. [`seed`] runs once
//! at load (BPF iterators) and enters the sockets that already exist, with
//! their owners and 0 bytes, through [`account::seed`]. [`states`] counts
//! TCP sockets by state once per read, for the snapshot. Every read of a
//! kernel socket goes through [`sk`], which bakes in no `struct sock`
//! offset beyond the first 16 bytes of `sock_common`: the rest comes from
//! the running kernel's BTF through load-time globals.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod account;
mod lifecycle;
mod maps;
mod mptcp;
mod retrans;
mod seed;
mod sk;
mod states;
mod tcp;
mod tcp_events;
mod tracepoint_tier;
mod udp;

/// The kernel only lets GPL programs call the helpers we need.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier proves no panic path is reachable; this is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}
