//! The netlink `sock_diag` vocabulary (`linux/netlink.h`,
//! `linux/sock_diag.h`, `linux/inet_diag.h`): message types, header
//! lengths, the bounds-checked integer readers every decoder uses, and the
//! dump request. Shared by the `ss` source's destroy events
//! (`source::ss::destroy`) and the TCP state counts
//! (`procinfo::tcp_states`); it sits below both, opens no socket and never
//! panics on short input (every reader returns `None`).

/// `SOCK_DIAG_BY_FAMILY`: the message type of a dump request, its replies
/// and a destroy event.
pub(crate) const SOCK_DIAG_BY_FAMILY: u16 = 20;
pub(crate) const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;
pub(crate) const NLMSG_HDRLEN: usize = 16;

pub(crate) const AF_INET: u8 = 2;
pub(crate) const AF_INET6: u8 = 10;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;

pub(crate) fn u16_ne(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) fn u32_ne(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub(crate) fn u64_ne(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(crate) fn port_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

pub(crate) const NLM_F_REQUEST: u16 = 1;
/// `sizeof(struct inet_diag_req_v2)`.
pub(crate) const INET_DIAG_REQ_V2_LEN: usize = 56;

/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
#[cfg(target_os = "linux")]
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// The length of [`dump_request`]'s message.
#[cfg(target_os = "linux")]
pub(crate) const DUMP_REQUEST_LEN: usize = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;

/// A `SOCK_DIAG_BY_FAMILY` dump of every TCP socket of `family` whose state
/// bit is set in `states` (bit `n` = kernel state `n`), asking for no
/// extensions: the replies are bare `inet_diag_msg`s.
#[cfg(target_os = "linux")]
pub(crate) fn dump_request(family: u8, states: u32, seq: u32) -> [u8; DUMP_REQUEST_LEN] {
    let mut m = [0u8; DUMP_REQUEST_LEN];
    m[0..4].copy_from_slice(&(DUMP_REQUEST_LEN as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // pid 0; then inet_diag_req_v2: family, protocol, ext = 0, pad.
    m[16] = family;
    m[17] = IPPROTO_TCP;
    m[20..24].copy_from_slice(&states.to_ne_bytes());
    // The socket id stays zero (any), cookie included: a dump ignores it.
    m
}
