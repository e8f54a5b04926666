//! ICMP echo sent by the agent itself (never by running `ping`): an
//! unprivileged ICMP datagram socket where `net.ipv4.ping_group_range`
//! admits the agent's group, a raw socket (root / CAP_NET_RAW) otherwise.
//! It sends echo requests to one target and matches replies by
//! identifier, sequence and a random token; it never sends anything else.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::net::{
    ipproto, recvfrom, sendto, socket, sockopt, AddressFamily, RecvFlags, SendFlags, SocketType,
};
use thiserror::Error;

/// Why an echo socket could not be used.
#[derive(Debug, Error)]
pub enum IcmpError {
    #[error(
        "opening an ICMP socket for {target}: datagram socket refused ({dgram}; \
         net.ipv4.ping_group_range does not admit this group) and raw socket refused \
         ({raw}; needs root or CAP_NET_RAW)"
    )]
    Open {
        target: IpAddr,
        dgram: rustix::io::Errno,
        raw: rustix::io::Errno,
    },
    #[error("sending an ICMP echo to {target}: {errno}")]
    Send {
        target: IpAddr,
        errno: rustix::io::Errno,
    },
}

/// Which kind of socket carries the echoes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_DGRAM` + `IPPROTO_ICMP`: unprivileged; the kernel sets the identifier.
    Datagram,
    /// `SOCK_RAW`: privileged; IPv4 replies arrive with their IP header.
    Raw,
}

/// An echo socket for one target.
#[derive(Debug)]
pub struct Echo {
    fd: OwnedFd,
    kind: SocketKind,
    target: IpAddr,
    ident: u16,
    token: [u8; 8],
}

/// The Internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request: type, code, checksum, identifier, sequence, token.
pub fn request(v6: bool, ident: u16, seq: u16, token: &[u8; 8]) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(token);
    if !v6 {
        // ICMPv6 checksums cover a pseudo-header; the kernel fills them.
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// Whether `reply` (ICMP header first) answers our request `seq`.
/// `ident` is `None` for datagram sockets (the kernel rewrites it and
/// delivers only replies to this socket).
pub fn is_reply(reply: &[u8], v6: bool, ident: Option<u16>, seq: u16, token: &[u8; 8]) -> bool {
    reply.len() >= 16
        && reply[0] == if v6 { 129 } else { 0 }
        && ident.is_none_or(|i| reply[4..6] == i.to_be_bytes())
        && reply[6..8] == seq.to_be_bytes()
        && reply[8..16] == token[..]
}

impl Echo {
    /// Open the socket for `target`: datagram first, raw if refused.
    pub fn open(target: IpAddr) -> Result<Self, IcmpError> {
        let (family, proto) = match target {
            IpAddr::V4(_) => (AddressFamily::INET, ipproto::ICMP),
            IpAddr::V6(_) => (AddressFamily::INET6, ipproto::ICMPV6),
        };
        let (fd, kind) = match socket(family, SocketType::DGRAM, Some(proto)) {
            Ok(fd) => (fd, SocketKind::Datagram),
            Err(dgram) => match socket(family, SocketType::RAW, Some(proto)) {
                Ok(fd) => (fd, SocketKind::Raw),
                Err(raw) => return Err(IcmpError::Open { target, dgram, raw }),
            },
        };
        let mut token = [0u8; 8];
        token.iter_mut().for_each(|b| *b = fastrand::u8(..));
        Ok(Self {
            fd,
            kind,
            target,
            ident: fastrand::u16(..),
            token,
        })
    }

    pub fn kind(&self) -> SocketKind {
        self.kind
    }

    /// Send echo `seq` and wait up to `timeout` for its reply: the round
    /// trip, or `None` when no reply came in time.
    pub fn ping(&mut self, seq: u16, timeout: Duration) -> Result<Option<Duration>, IcmpError> {
        let v6 = self.target.is_ipv6();
        let req = request(v6, self.ident, seq, &self.token);
        let to = SocketAddr::new(self.target, 0);
        let sent = Instant::now();
        sendto(&self.fd, &req, SendFlags::empty(), &to).map_err(|errno| IcmpError::Send {
            target: self.target,
            errno,
        })?;
        let deadline = sent + timeout;
        let mut buf = [0u8; 1500];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // At least 1 ms: a zero timeout would mean "block forever".
            let wait = left.max(Duration::from_millis(1));
            if sockopt::set_socket_timeout(&self.fd, sockopt::Timeout::Recv, Some(wait)).is_err() {
                return Ok(None);
            }
            let (n, from) = match recvfrom(&self.fd, &mut buf, RecvFlags::empty()) {
                Ok((n, _, from)) => (n, from),
                // Timeout (EAGAIN), or an ICMP error queued for the socket.
                Err(_) => continue,
            };
            let at = Instant::now();
            let from_target = from
                .and_then(|a| SocketAddr::try_from(a).ok())
                .is_some_and(|a| a.ip() == self.target);
            if !from_target {
                continue;
            }
            let mut icmp = &buf[..n];
            if self.kind == SocketKind::Raw && !v6 {
                let ihl = usize::from(icmp.first().copied().unwrap_or(0) & 0x0f) * 4;
                icmp = icmp.get(ihl..).unwrap_or(&[]);
            }
            let ident = (self.kind == SocketKind::Raw).then_some(self.ident);
            if is_reply(icmp, v6, ident, seq, &self.token) {
                return Ok(Some(at - sent));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_echo_request() {
        // 08 00 [cksum] 12 34 00 01 + "abcdefgh"
        let p = request(false, 0x1234, 1, b"abcdefgh");
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[..2], &[8, 0]);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 1]);
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn replies_match_on_type_ident_sequence_and_token() {
        let t = *b"tok12345";
        let mut r = request(false, 7, 3, &t);
        r[0] = 0;
        assert!(is_reply(&r, false, Some(7), 3, &t));
        assert!(is_reply(&r, false, None, 3, &t));
        assert!(!is_reply(&r, false, Some(8), 3, &t));
        assert!(!is_reply(&r, false, Some(7), 4, &t));
        assert!(!is_reply(&r, false, Some(7), 3, b"other123"));
        assert!(!is_reply(&r[..10], false, Some(7), 3, &t));
        let req = request(false, 7, 3, &t);
        assert!(
            !is_reply(&req, false, Some(7), 3, &t),
            "our own request is not a reply"
        );
        let mut r6 = request(true, 7, 3, &t);
        r6[0] = 129;
        assert!(is_reply(&r6, true, None, 3, &t));
    }
}
