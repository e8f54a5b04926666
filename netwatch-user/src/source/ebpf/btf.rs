//! Resolves the `struct sock` field offsets the BPF programs need from the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`), since rustc emits no
//! CO-RE relocations for BPF. Only reads BTF; never guesses an offset.

use std::path::Path;
use std::sync::{Arc, Mutex};

use btf_rs::{Btf, Type};
use thiserror::Error;

use crate::error_chain::Once;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Byte offsets into `struct sock` (which starts with `struct sock_common`),
/// and the other kernel facts the programs depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOffsets {
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub sk_protocol: u32,
    /// `struct socket.sk`.
    pub socket_sk: u32,
    /// `struct tcp_sock.srtt_us`; 0 if the kernel has none.
    pub srtt_us: u32,
    /// `struct sock.sk_err` (a failed connect's cause).
    pub sk_err: u32,
    /// `struct tcp_sock.total_retrans` and `.bytes_retrans` (the kernel's
    /// per-socket retransmit totals); 0 if the kernel has none.
    pub total_retrans: u32,
    pub bytes_retrans: u32,
    /// `struct task_struct.group_leader` (the owner's name is its leader's `comm`).
    pub task_group_leader: u32,
    /// `struct task_struct.comm`.
    pub task_comm: u32,
    /// Index of `flags` among `tcp_recvmsg`'s parameters (4 before 5.19, 3 since).
    pub recv_flags_arg: u32,
    /// Number of `tcp_recvmsg` parameters.
    pub recv_nargs: u32,
    /// `do_tcp_sendpages` exists (Linux < 6.5): `sendfile`/`splice` to a
    /// socket go through `tcp_sendpage`/`udp_sendpage`, not `*_sendmsg`.
    pub sendpage_path: bool,
    /// `mptcp_sendmsg` exists (`CONFIG_MPTCP`): an MPTCP socket's sends.
    pub mptcp_send: bool,
    /// (index of `flags`, number of parameters) of `mptcp_recvmsg`, an
    /// MPTCP socket's receives; `None` without MPTCP.
    pub mptcp_recv: Option<(u32, u32)>,
    /// `struct sk_buff.data` (a reset's answered segment); 0 if unknown.
    pub skb_data: u32,
    /// `struct sk_buff.{head, network_header, transport_header}`; 0 if unknown.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// `struct sock_common.skc_net` (its first member is the `struct net *`); 0 if unknown.
    pub skc_net: u32,
    /// `struct net.ns` + `struct ns_common.inum`; 0 if unknown.
    pub net_inum: u32,
}

/// Why a BTF offset could not be resolved. A leaf: btf-rs's error repeats
/// its own cause (`Error::IO` prints the `io::Error` and chains it), so it is
/// kept typed and rendered once in the message ([`Once`]), not chained.
#[derive(Debug, Error)]
pub enum BtfError {
    #[error("reading kernel BTF from {path}: {} (is CONFIG_DEBUG_INFO_BTF enabled?)", Once(.error))]
    Read { path: String, error: btf_rs::Error },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember {
        strukt: &'static str,
        member: &'static str,
    },
    #[error("kernel BTF: {strukt}.{member} is a bitfield or not byte aligned (bit offset {bits})")]
    Unaligned {
        strukt: &'static str,
        member: &'static str,
        bits: u32,
    },
    #[error("kernel BTF: function {0} has no parameter named flags (unknown signature)")]
    NoFlags(&'static str),
    #[error("kernel BTF: {}", Once(.0))]
    Btf(btf_rs::Error),
}

impl From<btf_rs::Error> for BtfError {
    fn from(error: btf_rs::Error) -> Self {
        BtfError::Btf(error)
    }
}

/// Bit offset of `member` in the struct or union `ty`, looking through
/// anonymous struct/union members as C does.
fn member_bits(btf: &Btf, ty: &Type, member: &str, depth: u32) -> Result<Option<u32>, BtfError> {
    let (Type::Struct(s) | Type::Union(s)) = ty else {
        return Ok(None);
    };
    if depth > 8 {
        return Ok(None);
    }
    for m in &s.members {
        let name = btf.resolve_name(m).unwrap_or_default();
        if name == member {
            if m.bitfield_size().is_some_and(|b| b != 0) {
                return Ok(Some(u32::MAX));
            }
            return Ok(Some(m.bit_offset()));
        }
        if name.is_empty() {
            let inner = btf.resolve_chained_type(m)?;
            if let Some(bits) = member_bits(btf, &inner, member, depth + 1)? {
                return Ok(Some(if bits == u32::MAX {
                    bits
                } else {
                    m.bit_offset() + bits
                }));
            }
        }
    }
    Ok(None)
}

pub(super) fn find_struct(btf: &Btf, name: &'static str) -> Result<Type, BtfError> {
    btf.resolve_types_by_name(name)
        .map_err(|_| BtfError::NoStruct(name))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or(BtfError::NoStruct(name))
}

pub(super) fn offset(
    btf: &Btf,
    ty: &Type,
    strukt: &'static str,
    member: &'static str,
) -> Result<u32, BtfError> {
    let bits = member_bits(btf, ty, member, 0)?.ok_or(BtfError::NoMember { strukt, member })?;
    if bits == u32::MAX || bits % 8 != 0 {
        return Err(BtfError::Unaligned {
            strukt,
            member,
            bits,
        });
    }
    Ok(bits / 8)
}

/// The kernel has a function `name`.
fn has_func(btf: &Btf, name: &str) -> bool {
    btf.resolve_types_by_name(name)
        .is_ok_and(|ts| ts.iter().any(|t| matches!(t, Type::Func(_))))
}

/// (index of parameter `param`, number of parameters) of function `func`.
fn func_param(btf: &Btf, func: &'static str, param: &str) -> Result<(u32, u32), BtfError> {
    let types = btf
        .resolve_types_by_name(func)
        .map_err(|_| BtfError::NoFlags(func))?;
    for t in types {
        let Type::Func(f) = t else { continue };
        let Type::FuncProto(proto) = btf.resolve_chained_type(&f)? else {
            continue;
        };
        let n = proto.parameters.len() as u32;
        for (i, p) in proto.parameters.iter().enumerate() {
            if btf.resolve_name(p).unwrap_or_default() == param {
                return Ok((i as u32, n));
            }
        }
    }
    Err(BtfError::NoFlags(func))
}

/// Parse a BTF file, read whole first (the kernel's is ~5 MB; parsing it
/// through small buffered reads and seeks costs twice the time).
pub(super) fn read_btf(path: &Path) -> Result<Btf, BtfError> {
    let read_err = |error| BtfError::Read {
        path: path.display().to_string(),
        error,
    };
    let bytes = std::fs::read(path).map_err(|e| read_err(btf_rs::Error::from(e)))?;
    Btf::from_bytes(&bytes).map_err(read_err)
}

/// A value parsed once and shared until [`release_kernel_btf`].
struct Cached<T>(Mutex<Option<Arc<T>>>);

impl<T> Cached<T> {
    const fn new() -> Self {
        Self(Mutex::new(None))
    }

    fn get_or_try<E>(&self, parse: impl FnOnce() -> Result<T, E>) -> Result<Arc<T>, E> {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = slot.as_ref() {
            return Ok(Arc::clone(v));
        }
        let v = Arc::new(parse()?);
        *slot = Some(Arc::clone(&v));
        Ok(v)
    }

    fn release(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

static KERNEL_BTF: Cached<Btf> = Cached::new();
static KERNEL_BTF_AYA: Cached<aya::Btf> = Cached::new();

/// The running kernel's BTF, parsed once while the source loads: the
/// offsets of every program, of seeding and of the pin layout check come
/// from it, and a start-up spends tens of milliseconds per parse.
pub(super) fn kernel_btf() -> Result<Arc<Btf>, BtfError> {
    KERNEL_BTF.get_or_try(|| read_btf(Path::new(VMLINUX_BTF)))
}

/// The running kernel's BTF as aya reads it (to load fentry, tp_btf and
/// iterator programs), parsed once while the source loads.
pub(super) fn kernel_btf_aya() -> Result<Arc<aya::Btf>, aya::BtfError> {
    KERNEL_BTF_AYA.get_or_try(aya::Btf::from_sys_fs)
}

/// Free the btf-rs copy (offsets resolved): the next use parses again.
pub(super) fn release_btf_rs() {
    KERNEL_BTF.release();
}

/// Loading is over: free both parsed copies (tens of MB the agent would
/// otherwise keep resident for its whole life) and hand the memory back.
pub fn release_kernel_btf() {
    KERNEL_BTF.release();
    KERNEL_BTF_AYA.release();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Offset of `member` in `struct sk_buff`, 0 if unknown.
fn skb_offset(btf: &Btf, member: &'static str) -> u32 {
    find_struct(btf, "sk_buff")
        .and_then(|t| offset(btf, &t, "sk_buff", member))
        .unwrap_or(0)
}

/// Offset of `ns.inum` in `struct net`.
fn net_inum_offset(btf: &Btf) -> Result<u32, BtfError> {
    let net = find_struct(btf, "net")?;
    let ns = offset(btf, &net, "net", "ns")?;
    let common = find_struct(btf, "ns_common")?;
    Ok(ns + offset(btf, &common, "ns_common", "inum")?)
}

impl SockOffsets {
    /// Resolve from the running kernel.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_btf(&*kernel_btf()?)
    }

    /// Resolve from a BTF file (the kernel's, or a saved copy).
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        Self::from_btf(&read_btf(path)?)
    }

    /// Resolve from parsed BTF.
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let common = find_struct(btf, "sock_common")?;
        let sock = find_struct(btf, "sock")?;
        let socket = find_struct(btf, "socket")?;
        let task = find_struct(btf, "task_struct")?;
        let tcp_sock = |member| {
            find_struct(btf, "tcp_sock")
                .and_then(|t| offset(btf, &t, "tcp_sock", member))
                .unwrap_or(0)
        };
        let srtt_us = tcp_sock("srtt_us");
        let (recv_flags_arg, recv_nargs) = func_param(btf, "tcp_recvmsg", "flags")?;
        Ok(Self {
            skc_family: offset(btf, &common, "sock_common", "skc_family")?,
            skc_v6_daddr: offset(btf, &common, "sock_common", "skc_v6_daddr")?,
            skc_v6_rcv_saddr: offset(btf, &common, "sock_common", "skc_v6_rcv_saddr")?,
            sk_protocol: offset(btf, &sock, "sock", "sk_protocol")?,
            socket_sk: offset(btf, &socket, "socket", "sk")?,
            srtt_us,
            sk_err: offset(btf, &sock, "sock", "sk_err")?,
            total_retrans: tcp_sock("total_retrans"),
            bytes_retrans: tcp_sock("bytes_retrans"),
            task_group_leader: offset(btf, &task, "task_struct", "group_leader")?,
            task_comm: offset(btf, &task, "task_struct", "comm")?,
            recv_flags_arg,
            recv_nargs,
            sendpage_path: has_func(btf, "do_tcp_sendpages"),
            mptcp_send: has_func(btf, "mptcp_sendmsg"),
            mptcp_recv: func_param(btf, "mptcp_recvmsg", "flags").ok(),
            skb_data: skb_offset(btf, "data"),
            skb_head: skb_offset(btf, "head"),
            skb_network_header: skb_offset(btf, "network_header"),
            skb_transport_header: skb_offset(btf, "transport_header"),
            skc_net: offset(btf, &common, "sock_common", "skc_net").unwrap_or(0),
            net_inum: net_inum_offset(btf).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF gives offsets inside `struct sock_common`
    /// where the stable IPv4 part (first 16 bytes) ends.
    #[test]
    fn resolves_offsets_from_running_kernel() {
        let o = SockOffsets::from_kernel().expect("this kernel publishes BTF");
        assert_eq!(
            o.skc_family, 16,
            "skc_family follows the 16-byte address/port block"
        );
        assert!(
            o.skc_v6_daddr > 16 && o.skc_v6_daddr.is_multiple_of(4),
            "{o:?}"
        );
        assert_eq!(o.skc_v6_rcv_saddr, o.skc_v6_daddr + 16, "{o:?}");
        assert!(o.sk_protocol > o.skc_v6_rcv_saddr, "{o:?}");
        assert!(o.sk_err > o.skc_v6_rcv_saddr, "{o:?}");
        assert!(o.socket_sk > 0 && o.srtt_us > 0, "{o:?}");
        assert!(o.total_retrans > 0 && o.bytes_retrans > 0, "{o:?}");
        assert!(o.bytes_retrans.is_multiple_of(8), "{o:?}");
        assert!(
            o.task_comm > o.task_group_leader && o.task_group_leader > 0,
            "{o:?}"
        );
        // Linux ≥ 5.19 (this host is newer): `nonblock` is gone (and
        // `addr_len` too on the newest), and since 6.5 sendfile goes
        // through tcp_sendmsg.
        assert_eq!(o.recv_flags_arg, 3, "{o:?}");
        assert!((4..=5).contains(&o.recv_nargs), "{o:?}");
        assert!(!o.sendpage_path, "{o:?}");
        assert!(o.skc_net > o.skc_family && o.net_inum > 0, "{o:?}");
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let e = SockOffsets::from_file(Path::new("/nonexistent/btf")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/btf"), "{e}");
    }
}
