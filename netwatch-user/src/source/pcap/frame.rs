//! Pure decoding of one captured frame down to its TCP/UDP 5-tuple and
//! transport payload length. It never touches libpcap, never allocates and
//! never panics: every read is bounds-checked, and a truncated or malformed
//! frame is a typed [`FrameError`].
//!
//! # Which bytes are counted
//! [`Packet::payload_len`] is the **transport payload**, the bytes the
//! application wrote into the socket, taken from the headers' length fields,
//! never from the captured length, so the snapshot length does not matter:
//! - IPv4: `total_length − IHL·4`, minus the TCP data offset (TCP) — or the
//!   UDP length field minus 8 (UDP).
//! - IPv6: `payload_length` minus the extension headers, then as above.
//! - A length field of 0 (IPv4 TSO/BIG TCP super-packets, IPv6 jumbograms
//!   and BIG TCP, UDP in a jumbogram) means "the rest of the frame on the
//!   wire", taken from the original (not captured) frame length.
//!
//! So a TCP stream of N bytes counts N plus any retransmitted bytes, and a
//! UDP datagram counts exactly its payload.
//!
//! # Fragments
//! Only the first fragment carries the ports. For UDP it also carries the
//! UDP length field, which covers the whole datagram, so a fragmented UDP
//! datagram is counted in full, once, from its first fragment. A fragmented
//! TCP segment (rare: TCP sets DF) counts only its first fragment's part.
//! Later fragments decode to [`FrameError::LaterFragment`], which is not a
//! malformed frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::source::Protocol;

/// Link-layer header types netwatch decodes (libpcap `DLT_*`/`LINKTYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// `DLT_EN10MB` (1): Ethernet II, with any number (up to 4) of
    /// 802.1Q / 802.1ad VLAN tags.
    Ethernet,
    /// `DLT_LINUX_SLL` (113): Linux cooked capture v1 (16-byte header), what
    /// the `any` device gives by default.
    LinuxSll,
    /// `DLT_LINUX_SLL2` (276): Linux cooked capture v2 (20-byte header).
    LinuxSll2,
    /// `DLT_NULL` (0): BSD loopback; a 4-byte address family in the
    /// *capturing* host's byte order (both orders accepted).
    Null,
    /// `DLT_LOOP` (108): OpenBSD loopback; the family in network byte order
    /// (both orders accepted).
    Loop,
    /// `DLT_RAW` (12 on Linux, 14 on OpenBSD) / `LINKTYPE_RAW` (101): a bare
    /// IPv4 or IPv6 packet, told apart by its version nibble.
    Raw,
    /// `LINKTYPE_IPV4` (228): a bare IPv4 packet.
    Ipv4,
    /// `LINKTYPE_IPV6` (229): a bare IPv6 packet.
    Ipv6,
}

impl LinkType {
    /// Every link type decoded.
    pub const ALL: [LinkType; 8] = [
        LinkType::Ethernet,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::Null,
        LinkType::Loop,
        LinkType::Raw,
        LinkType::Ipv4,
        LinkType::Ipv6,
    ];

    /// The type for a value of `pcap_datalink()`; `None` if not decodable.
    /// 12 is taken as `DLT_RAW` (its meaning everywhere but OpenBSD, where
    /// it is `DLT_LOOP`, and this module is Linux-only).
    pub fn from_dlt(dlt: i32) -> Option<Self> {
        Some(match dlt {
            0 => Self::Null,
            1 => Self::Ethernet,
            12 | 14 | 101 => Self::Raw,
            108 => Self::Loop,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            228 => Self::Ipv4,
            229 => Self::Ipv6,
            _ => return None,
        })
    }
}

/// The header a [`FrameError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Link,
    Vlan,
    Ipv4,
    Ipv6,
    Ipv6Extension,
    Tcp,
    Udp,
}

/// Why a frame yielded no [`Packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame ends before a header does (captured or, for the IP length
    /// fields, original length too short).
    #[error("{layer:?} header truncated: needs {need} bytes, frame has {have}")]
    Truncated {
        layer: Layer,
        need: usize,
        have: usize,
    },
    /// A header field is impossible.
    #[error("malformed {layer:?} header: {what}")]
    Malformed { layer: Layer, what: &'static str },
    /// Not IPv4/IPv6 (ARP, LLC, other address families): skipped, not an error.
    #[error("not IP (ethertype or address family {0:#x})")]
    NotIp(u32),
    /// IP carrying neither TCP nor UDP (ICMP, ESP, …): skipped, not an error.
    #[error("IP protocol {0} is neither TCP nor UDP")]
    OtherTransport(u8),
    /// A non-first IP fragment: no ports (see the module docs).
    #[error("non-first IP fragment")]
    LaterFragment,
}

impl FrameError {
    /// True for truncated or malformed frames (counted as lost records);
    /// false for frames that are fine but not ours to count.
    pub fn is_malformed(&self) -> bool {
        matches!(self, Self::Truncated { .. } | Self::Malformed { .. })
    }
}

/// One decoded TCP or UDP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Transport payload bytes, from the header length fields (module docs).
    pub payload_len: u32,
    /// The captured part of the payload (shorter than `payload_len` when
    /// the snapshot length cut the frame).
    pub payload: &'a [u8],
    /// The packet is the first fragment of a fragmented IP datagram.
    pub first_fragment: bool,
    /// TCP only: the sequence number and flags, so a retransmitted or
    /// twice-captured segment can be told from new data.
    pub tcp: Option<TcpSegment>,
}

/// The parts of a TCP header that say where a segment's payload sits in
/// the stream and how the stream starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment {
    /// Sequence number of the first byte (of the SYN, when set).
    pub seq: u32,
    /// The flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
}

impl TcpSegment {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;

    pub fn syn(&self) -> bool {
        self.flags & Self::SYN != 0
    }
    pub fn fin(&self) -> bool {
        self.flags & Self::FIN != 0
    }
    pub fn rst(&self) -> bool {
        self.flags & Self::RST != 0
    }
    pub fn ack(&self) -> bool {
        self.flags & Self::ACK != 0
    }
}

/// Decode a whole frame (its original length is its length).
pub fn decode(link: LinkType, frame: &[u8]) -> Result<Packet<'_>, FrameError> {
    decode_captured(link, frame, frame.len())
}

/// Decode a captured frame whose original length was `wire_len`
/// (`pcap_pkthdr.len`; `captured` is `caplen` bytes).
pub fn decode_captured(
    link: LinkType,
    captured: &[u8],
    wire_len: usize,
) -> Result<Packet<'_>, FrameError> {
    let wire_len = wire_len.max(captured.len());
    let (net, offset) = link_header(link, captured)?;
    let ip = captured.get(offset..).unwrap_or(&[]);
    let ip_wire = wire_len.saturating_sub(offset);
    match net {
        Net::V4 => ipv4(ip, ip_wire),
        Net::V6 => ipv6(ip, ip_wire),
        Net::ByVersion => match ip.first().map(|b| b >> 4) {
            Some(4) => ipv4(ip, ip_wire),
            Some(6) => ipv6(ip, ip_wire),
            Some(_) => Err(FrameError::Malformed {
                layer: Layer::Link,
                what: "raw IP packet with a version other than 4 or 6",
            }),
            None => Err(truncated(Layer::Link, 1, 0)),
        },
    }
}

enum Net {
    V4,
    V6,
    ByVersion,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const ETHERTYPE_VLAN: [u16; 3] = [0x8100, 0x88A8, 0x9100];
const MAX_VLAN_TAGS: usize = 4;
/// `AF_INET6` on Linux, NetBSD/OpenBSD, FreeBSD and macOS.
const AF_INET6: [u32; 4] = [10, 24, 28, 30];
const AF_INET: u32 = 2;

fn truncated(layer: Layer, need: usize, have: usize) -> FrameError {
    FrameError::Truncated { layer, need, have }
}

fn bytes<const N: usize>(d: &[u8], at: usize, layer: Layer) -> Result<[u8; N], FrameError> {
    let end = at.saturating_add(N);
    d.get(at..end)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| truncated(layer, end, d.len()))
}

fn u8_at(d: &[u8], at: usize, layer: Layer) -> Result<u8, FrameError> {
    bytes::<1>(d, at, layer).map(|[b]| b)
}

fn be16(d: &[u8], at: usize, layer: Layer) -> Result<u16, FrameError> {
    bytes::<2>(d, at, layer).map(u16::from_be_bytes)
}

/// The network protocol and where its header starts.
fn link_header(link: LinkType, d: &[u8]) -> Result<(Net, usize), FrameError> {
    match link {
        LinkType::Ethernet => ethertype(be16(d, 12, Layer::Link)?, 14, d),
        LinkType::LinuxSll => ethertype(be16(d, 14, Layer::Link)?, 16, d),
        LinkType::LinuxSll2 => {
            // The protocol comes first, but the header is 20 bytes.
            let proto = be16(d, 0, Layer::Link)?;
            bytes::<20>(d, 0, Layer::Link)?;
            ethertype(proto, 20, d)
        }
        LinkType::Null | LinkType::Loop => {
            let raw = bytes::<4>(d, 0, Layer::Link)?;
            let (le, be) = (u32::from_le_bytes(raw), u32::from_be_bytes(raw));
            if le == AF_INET || be == AF_INET {
                Ok((Net::V4, 4))
            } else if AF_INET6.contains(&le) || AF_INET6.contains(&be) {
                Ok((Net::V6, 4))
            } else {
                Err(FrameError::NotIp(le.min(be)))
            }
        }
        LinkType::Raw => Ok((Net::ByVersion, 0)),
        LinkType::Ipv4 => Ok((Net::V4, 0)),
        LinkType::Ipv6 => Ok((Net::V6, 0)),
    }
}

/// Follow VLAN tags from an ethertype at `offset` (the tag itself starts there).
fn ethertype(mut et: u16, mut offset: usize, d: &[u8]) -> Result<(Net, usize), FrameError> {
    for _ in 0..=MAX_VLAN_TAGS {
        match et {
            ETHERTYPE_IPV4 => return Ok((Net::V4, offset)),
            ETHERTYPE_IPV6 => return Ok((Net::V6, offset)),
            t if ETHERTYPE_VLAN.contains(&t) => {
                // TCI (2 bytes), then the inner ethertype.
                et = be16(d, offset + 2, Layer::Vlan)?;
                offset += 4;
            }
            other => return Err(FrameError::NotIp(u32::from(other))),
        }
    }
    Err(FrameError::Malformed {
        layer: Layer::Vlan,
        what: "more than 4 VLAN tags",
    })
}

fn ipv4(d: &[u8], wire: usize) -> Result<Packet<'_>, FrameError> {
    const L: Layer = Layer::Ipv4;
    let b0 = u8_at(d, 0, L)?;
    bytes::<20>(d, 0, L)?;
    if b0 >> 4 != 4 {
        return Err(FrameError::Malformed {
            layer: L,
            what: "version is not 4",
        });
    }
    let ihl = usize::from(b0 & 0x0f) * 4;
    if ihl < 20 {
        return Err(FrameError::Malformed {
            layer: L,
            what: "IHL below 5",
        });
    }
    if d.len() < ihl {
        return Err(truncated(L, ihl, d.len()));
    }
    let total = match usize::from(be16(d, 2, L)?) {
        // TSO / BIG TCP super-packet: the length is the frame's.
        0 => wire,
        t if t < ihl => {
            return Err(FrameError::Malformed {
                layer: L,
                what: "total length below header length",
            })
        }
        t if t > wire => return Err(truncated(L, t, wire)),
        t => t,
    };
    let frag = be16(d, 6, L)?;
    if frag & 0x1fff != 0 {
        return Err(FrameError::LaterFragment);
    }
    let more_fragments = frag & 0x2000 != 0;
    let proto = u8_at(d, 9, L)?;
    let [a, b, c, e] = bytes::<4>(d, 12, L)?;
    let src = IpAddr::V4(Ipv4Addr::new(a, b, c, e));
    let [a, b, c, e] = bytes::<4>(d, 16, L)?;
    let dst = IpAddr::V4(Ipv4Addr::new(a, b, c, e));
    let rest = d.get(ihl..).unwrap_or(&[]);
    transport(proto, src, dst, rest, total - ihl, more_fragments)
}

/// Extension headers walked before giving up (each is at least 8 bytes).
const MAX_IPV6_EXTENSIONS: usize = 16;

fn ipv6(d: &[u8], wire: usize) -> Result<Packet<'_>, FrameError> {
    const L: Layer = Layer::Ipv6;
    let hdr = bytes::<40>(d, 0, L)?;
    if hdr[0] >> 4 != 6 {
        return Err(FrameError::Malformed {
            layer: L,
            what: "version is not 6",
        });
    }
    let avail = wire.saturating_sub(40);
    let payload = match usize::from(u16::from_be_bytes([hdr[4], hdr[5]])) {
        // Jumbogram / BIG TCP: the length is the frame's.
        0 => avail,
        p if p > avail => return Err(truncated(L, 40 + p, wire)),
        p => p,
    };
    let src = IpAddr::V6(Ipv6Addr::from(bytes::<16>(d, 8, L)?));
    let dst = IpAddr::V6(Ipv6Addr::from(bytes::<16>(d, 24, L)?));

    let mut next = hdr[6];
    let mut off = 40usize;
    let mut remaining = payload;
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        const X: Layer = Layer::Ipv6Extension;
        let len = match next {
            6 | 17 => {
                let rest = d.get(off..).unwrap_or(&[]);
                return transport(next, src, dst, rest, remaining, first_fragment);
            }
            // Hop-by-Hop, Routing, Destination Options, Mobility, HIP, Shim6.
            0 | 43 | 60 | 135 | 139 | 140 => (usize::from(u8_at(d, off + 1, X)?) + 1) * 8,
            // Authentication Header: length in 4-octet units, minus 2.
            51 => (usize::from(u8_at(d, off + 1, X)?) + 2) * 4,
            44 => {
                let fo = be16(d, off + 2, X)?;
                if fo >> 3 != 0 {
                    return Err(FrameError::LaterFragment);
                }
                first_fragment = fo & 1 != 0;
                8
            }
            other => return Err(FrameError::OtherTransport(other)),
        };
        if len > remaining {
            return Err(FrameError::Malformed {
                layer: X,
                what: "extension header runs past the payload length",
            });
        }
        next = u8_at(d, off, X)?;
        off += len;
        remaining -= len;
    }
    Err(FrameError::Malformed {
        layer: Layer::Ipv6Extension,
        what: "more than 16 extension headers",
    })
}

/// `d` starts at the transport header; `ip_payload` is its length per IP.
fn transport(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    d: &[u8],
    ip_payload: usize,
    first_fragment: bool,
) -> Result<Packet<'_>, FrameError> {
    let (protocol, layer, header_len, payload_len) = match proto {
        6 => {
            const L: Layer = Layer::Tcp;
            if ip_payload < 20 {
                return Err(FrameError::Malformed {
                    layer: L,
                    what: "IP payload shorter than a TCP header",
                });
            }
            let off = usize::from(u8_at(d, 12, L)? >> 4) * 4;
            if off < 20 || off > ip_payload {
                return Err(FrameError::Malformed {
                    layer: L,
                    what: "data offset outside the segment",
                });
            }
            (Protocol::Tcp, L, off, ip_payload - off)
        }
        17 => {
            const L: Layer = Layer::Udp;
            if ip_payload < 8 {
                return Err(FrameError::Malformed {
                    layer: L,
                    what: "IP payload shorter than a UDP header",
                });
            }
            let len = match usize::from(be16(d, 4, L)?) {
                // In a jumbogram the IPv6 length rules.
                0 => ip_payload,
                l if l < 8 => {
                    return Err(FrameError::Malformed {
                        layer: L,
                        what: "UDP length below 8",
                    })
                }
                // A first fragment holds only part of the datagram the
                // UDP length covers.
                l if l > ip_payload && !first_fragment => {
                    return Err(FrameError::Malformed {
                        layer: L,
                        what: "UDP length beyond the IP payload",
                    })
                }
                l => l,
            };
            (Protocol::Udp, L, 8, len - 8)
        }
        other => return Err(FrameError::OtherTransport(other)),
    };
    let [a, b, c, e] = bytes::<4>(d, 0, layer)?;
    let src = SocketAddr::new(src, u16::from_be_bytes([a, b]));
    let dst = SocketAddr::new(dst, u16::from_be_bytes([c, e]));
    let tcp = match protocol {
        Protocol::Tcp => Some(TcpSegment {
            seq: u32::from_be_bytes(bytes::<4>(d, 4, layer)?),
            flags: u8_at(d, 13, layer)?,
        }),
        Protocol::Udp => None,
    };
    let payload = d.get(header_len..).unwrap_or(&[]);
    let payload = payload.get(..payload_len).unwrap_or(payload);
    Ok(Packet {
        protocol,
        src,
        dst,
        payload_len: u32::try_from(payload_len).unwrap_or(u32::MAX),
        payload,
        first_fragment,
        tcp,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const TCP: u8 = 6;
    pub(crate) const UDP: u8 = 17;

    /// A TCP header (20 bytes + `opts` option bytes) followed by `payload`.
    pub(crate) fn tcp(sport: u16, dport: u16, opts: usize, payload: &[u8]) -> Vec<u8> {
        assert_eq!(opts % 4, 0);
        let mut h = vec![0u8; 20 + opts];
        h[0..2].copy_from_slice(&sport.to_be_bytes());
        h[2..4].copy_from_slice(&dport.to_be_bytes());
        h[12] = (((20 + opts) / 4) as u8) << 4;
        h[13] = 0x18; // PSH|ACK
        for o in h.iter_mut().skip(20) {
            *o = 1; // NOP
        }
        h.extend_from_slice(payload);
        h
    }

    pub(crate) fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::with_capacity(8 + payload.len());
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(payload);
        h
    }

    /// IPv4 header (with `opts` bytes of options) + `l4`; `frag` is the
    /// flags/fragment-offset word.
    pub(crate) fn ipv4(
        src: [u8; 4],
        dst: [u8; 4],
        proto: u8,
        frag: u16,
        opts: usize,
        l4: &[u8],
    ) -> Vec<u8> {
        let ihl = 20 + opts;
        let mut h = vec![0u8; ihl];
        h[0] = 0x40 | (ihl / 4) as u8;
        h[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        h.extend_from_slice(l4);
        h
    }

    /// IPv6 header + extension headers (each `(type, bytes)` with its next
    /// header byte filled in here) + `l4`.
    pub(crate) fn ipv6(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        proto: u8,
        ext: &[(u8, Vec<u8>)],
        l4: &[u8],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (_, e)) in ext.iter().enumerate() {
            let mut e = e.clone();
            e[0] = ext.get(i + 1).map_or(proto, |n| n.0);
            body.extend_from_slice(&e);
        }
        body.extend_from_slice(l4);
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(body.len() as u16).to_be_bytes());
        h[6] = ext.first().map_or(proto, |e| e.0);
        h[7] = 64;
        h[8..24].copy_from_slice(&src.octets());
        h[24..40].copy_from_slice(&dst.octets());
        h.extend_from_slice(&body);
        h
    }

    /// A generic extension header of `units` 8-octet units (beyond the first).
    fn ext(units: u8) -> Vec<u8> {
        let mut e = vec![0u8; (usize::from(units) + 1) * 8];
        e[1] = units;
        e
    }

    fn frag_hdr(offset_units: u16, more: bool) -> Vec<u8> {
        let mut e = vec![0u8; 8];
        e[2..4].copy_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
        e
    }

    fn ah(len_field: u8) -> Vec<u8> {
        let mut e = vec![0u8; (usize::from(len_field) + 2) * 4];
        e[1] = len_field;
        e
    }

    pub(crate) fn ethernet(ethertype: u16, vlans: &[u16], ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        for tpid in vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]); // VLAN 42
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    fn sll(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 16];
        f[0..2].copy_from_slice(&4u16.to_be_bytes()); // PACKET_OUTGOING
        f[2..4].copy_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
        f[4..6].copy_from_slice(&6u16.to_be_bytes());
        f[14..16].copy_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    fn sll2(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 20];
        f[0..2].copy_from_slice(&ethertype.to_be_bytes());
        f[4..8].copy_from_slice(&1u32.to_be_bytes()); // ifindex
        f[8..10].copy_from_slice(&772u16.to_be_bytes()); // ARPHRD_LOOPBACK
        f[11] = 6;
        f.extend_from_slice(ip);
        f
    }

    fn null(family: [u8; 4], ip: &[u8]) -> Vec<u8> {
        let mut f = family.to_vec();
        f.extend_from_slice(ip);
        f
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const PAYLOAD: &[u8] = b"hello, netwatch!";

    fn v4_tcp() -> Vec<u8> {
        ipv4(
            [10, 0, 0, 1],
            [10, 0, 0, 2],
            TCP,
            0x4000,
            0,
            &tcp(40000, 443, 0, PAYLOAD),
        )
    }

    fn v6_udp() -> Vec<u8> {
        ipv6(
            v6("fe80::1"),
            v6("2001:db8::2"),
            UDP,
            &[],
            &udp(5353, 53, PAYLOAD),
        )
    }

    /// A valid frame: (name, link type, bytes, protocol, src, dst, payload length).
    type Case = (
        &'static str,
        LinkType,
        Vec<u8>,
        Protocol,
        &'static str,
        &'static str,
        u32,
    );

    /// Every (link type, frame, expected) case the decoder must get right.
    fn valid_frames() -> Vec<Case> {
        let t4 = (Protocol::Tcp, "10.0.0.1:40000", "10.0.0.2:443");
        let u6 = (Protocol::Udp, "[fe80::1]:5353", "[2001:db8::2]:53");
        let n = PAYLOAD.len() as u32;
        let mut v = Vec::new();
        let mut add =
            |name, link, f: Vec<u8>, (p, s, d): (Protocol, &'static str, &'static str), len| {
                v.push((name, link, f, p, s, d, len))
            };
        add(
            "eth/v4/tcp",
            LinkType::Ethernet,
            ethernet(0x0800, &[], &v4_tcp()),
            t4,
            n,
        );
        add(
            "eth/v6/udp",
            LinkType::Ethernet,
            ethernet(0x86dd, &[], &v6_udp()),
            u6,
            n,
        );
        add(
            "eth/vlan/v4",
            LinkType::Ethernet,
            ethernet(0x0800, &[0x8100], &v4_tcp()),
            t4,
            n,
        );
        add(
            "eth/qinq/v6",
            LinkType::Ethernet,
            ethernet(0x86dd, &[0x88a8, 0x8100], &v6_udp()),
            u6,
            n,
        );
        add("sll/v4", LinkType::LinuxSll, sll(0x0800, &v4_tcp()), t4, n);
        add(
            "sll/vlan/v6",
            LinkType::LinuxSll,
            sll(0x8100, &{
                let mut t = vec![0x00, 0x2a, 0x86, 0xdd];
                t.extend_from_slice(&v6_udp());
                t
            }),
            u6,
            n,
        );
        add(
            "sll2/v4",
            LinkType::LinuxSll2,
            sll2(0x0800, &v4_tcp()),
            t4,
            n,
        );
        add(
            "sll2/v6",
            LinkType::LinuxSll2,
            sll2(0x86dd, &v6_udp()),
            u6,
            n,
        );
        add(
            "null-le/v4",
            LinkType::Null,
            null(2u32.to_le_bytes(), &v4_tcp()),
            t4,
            n,
        );
        add(
            "null-be/v4",
            LinkType::Null,
            null(2u32.to_be_bytes(), &v4_tcp()),
            t4,
            n,
        );
        for fam in AF_INET6 {
            add(
                "null-le/v6",
                LinkType::Null,
                null(fam.to_le_bytes(), &v6_udp()),
                u6,
                n,
            );
            add(
                "null-be/v6",
                LinkType::Null,
                null(fam.to_be_bytes(), &v6_udp()),
                u6,
                n,
            );
        }
        add(
            "loop-be/v4",
            LinkType::Loop,
            null(2u32.to_be_bytes(), &v4_tcp()),
            t4,
            n,
        );
        add(
            "loop-le/v6",
            LinkType::Loop,
            null(30u32.to_le_bytes(), &v6_udp()),
            u6,
            n,
        );
        add("raw/v4", LinkType::Raw, v4_tcp(), t4, n);
        add("raw/v6", LinkType::Raw, v6_udp(), u6, n);
        add("ipv4", LinkType::Ipv4, v4_tcp(), t4, n);
        add("ipv6", LinkType::Ipv6, v6_udp(), u6, n);
        // IPv4 options and TCP options are skipped by their lengths.
        add(
            "v4 options + tcp options",
            LinkType::Raw,
            ipv4(
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                TCP,
                0,
                12,
                &tcp(40000, 443, 20, PAYLOAD),
            ),
            t4,
            n,
        );
        // IPv6 with every common extension header before TCP.
        add(
            "v6 ext chain",
            LinkType::Raw,
            ipv6(
                v6("fe80::1"),
                v6("2001:db8::2"),
                TCP,
                &[
                    (0, ext(0)),
                    (43, ext(2)),
                    (60, ext(1)),
                    (51, ah(4)),
                    (44, frag_hdr(0, false)),
                    (135, ext(0)),
                ],
                &tcp(5353, 53, 8, PAYLOAD),
            ),
            (Protocol::Tcp, "[fe80::1]:5353", "[2001:db8::2]:53"),
            n,
        );
        // First fragment of a 3000-byte UDP datagram: counted in full.
        add(
            "v4 first fragment",
            LinkType::Raw,
            ipv4([10, 0, 0, 1], [10, 0, 0, 2], UDP, 0x2000, 0, &{
                let mut u = udp(1000, 2000, &[7u8; 1472]);
                u[4..6].copy_from_slice(&3008u16.to_be_bytes());
                u
            }),
            (Protocol::Udp, "10.0.0.1:1000", "10.0.0.2:2000"),
            3000,
        );
        add(
            "v6 first fragment",
            LinkType::Raw,
            ipv6(v6("::1"), v6("::1"), UDP, &[(44, frag_hdr(0, true))], &{
                let mut u = udp(1000, 2000, &[7u8; 1440]);
                u[4..6].copy_from_slice(&5008u16.to_be_bytes());
                u
            }),
            (Protocol::Udp, "[::1]:1000", "[::1]:2000"),
            5000,
        );
        v
    }

    #[test]
    fn every_link_type_and_ip_version_decodes() {
        for (name, link, f, proto, src, dst, len) in valid_frames() {
            let p = decode(link, &f).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(p.protocol, proto, "{name}");
            assert_eq!(p.src, sa(src), "{name}");
            assert_eq!(p.dst, sa(dst), "{name}");
            assert_eq!(p.payload_len, len, "{name}");
            if len == PAYLOAD.len() as u32 {
                assert_eq!(p.payload, PAYLOAD, "{name}");
            }
        }
    }

    #[test]
    fn tcp_sequence_and_flags_are_decoded_udp_has_none() {
        let mut seg = tcp(1, 2, 4, b"abc");
        seg[4..8].copy_from_slice(&0xfedc_ba98u32.to_be_bytes());
        seg[13] = TcpSegment::SYN | TcpSegment::ACK;
        let f = ipv4([127, 0, 0, 1], [127, 0, 0, 1], TCP, 0, 0, &seg);
        let p = decode(LinkType::Ipv4, &f).unwrap();
        let t = p.tcp.unwrap();
        assert_eq!(t.seq, 0xfedc_ba98);
        assert!(t.syn() && t.ack() && !t.fin() && !t.rst());
        assert_eq!(p.payload_len, 3);
        let f = ipv4([127, 0, 0, 1], [127, 0, 0, 1], UDP, 0, 0, &udp(1, 2, b"x"));
        assert_eq!(decode(LinkType::Ipv4, &f).unwrap().tcp, None);
    }

    #[test]
    fn every_proper_prefix_of_a_valid_frame_is_a_typed_error() {
        for (name, link, f, ..) in valid_frames() {
            for cut in 0..f.len() {
                match decode(link, &f[..cut]) {
                    Err(e) => assert!(
                        e.is_malformed(),
                        "{name} cut at {cut}: {e:?} is not truncated/malformed"
                    ),
                    Ok(p) => panic!("{name} cut at {cut}/{} decoded: {p:?}", f.len()),
                }
            }
        }
    }

    #[test]
    fn snaplen_does_not_change_the_count() {
        let f = ethernet(
            0x0800,
            &[],
            &ipv4(
                [10, 0, 0, 1],
                [10, 0, 0, 2],
                TCP,
                0,
                0,
                &tcp(1, 2, 12, &[0u8; 60000]),
            ),
        );
        for snap in [14 + 20 + 32, 96, 1500, f.len()] {
            let p = decode_captured(LinkType::Ethernet, &f[..snap], f.len()).unwrap();
            assert_eq!(p.payload_len, 60000, "snaplen {snap}");
            assert_eq!(p.payload.len(), snap - (14 + 20 + 32));
        }
        // Headers cut by the snaplen: truncated.
        let e = decode_captured(LinkType::Ethernet, &f[..14 + 20 + 10], f.len()).unwrap_err();
        assert!(
            matches!(
                e,
                FrameError::Truncated {
                    layer: Layer::Tcp,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut f = ethernet(
            0x0800,
            &[],
            &ipv4([1, 1, 1, 1], [2, 2, 2, 2], UDP, 0, 0, &udp(1, 2, b"ab")),
        );
        f.resize(60, 0);
        let p = decode(LinkType::Ethernet, &f).unwrap();
        assert_eq!((p.payload_len, p.payload), (2, &b"ab"[..]));
    }

    #[test]
    fn zero_length_fields_take_the_wire_length() {
        let mut f = ipv4(
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            TCP,
            0,
            0,
            &tcp(1, 2, 0, &[0u8; 100]),
        );
        f[2..4].copy_from_slice(&[0, 0]);
        assert_eq!(
            decode_captured(LinkType::Raw, &f[..60], f.len())
                .unwrap()
                .payload_len,
            100
        );
        let mut f = ipv6(v6("::1"), v6("::2"), UDP, &[], &udp(1, 2, &[0u8; 100]));
        f[4..6].copy_from_slice(&[0, 0]);
        f[44..46].copy_from_slice(&[0, 0]);
        assert_eq!(decode(LinkType::Ipv6, &f).unwrap().payload_len, 100);
    }

    #[test]
    fn skipped_frames_are_not_malformed() {
        let arp = ethernet(0x0806, &[], &[0u8; 28]);
        assert_eq!(
            decode(LinkType::Ethernet, &arp),
            Err(FrameError::NotIp(0x0806))
        );
        let icmp = ipv4(
            [1, 1, 1, 1],
            [2, 2, 2, 2],
            1,
            0,
            0,
            &[8, 0, 0, 0, 0, 0, 0, 0],
        );
        assert_eq!(
            decode(LinkType::Raw, &icmp),
            Err(FrameError::OtherTransport(1))
        );
        let later = ipv4([1, 1, 1, 1], [2, 2, 2, 2], UDP, 185, 0, &[0u8; 100]);
        assert_eq!(
            decode(LinkType::Raw, &later),
            Err(FrameError::LaterFragment)
        );
        let later6 = ipv6(
            v6("::1"),
            v6("::2"),
            UDP,
            &[(44, frag_hdr(185, false))],
            &[0u8; 64],
        );
        assert_eq!(
            decode(LinkType::Raw, &later6),
            Err(FrameError::LaterFragment)
        );
        let esp = ipv6(v6("::1"), v6("::2"), 50, &[], &[0u8; 64]);
        assert_eq!(
            decode(LinkType::Raw, &esp),
            Err(FrameError::OtherTransport(50))
        );
        let appletalk = null(7u32.to_le_bytes(), &v4_tcp());
        assert_eq!(
            decode(LinkType::Null, &appletalk),
            Err(FrameError::NotIp(7))
        );
        for e in [
            FrameError::NotIp(1),
            FrameError::OtherTransport(1),
            FrameError::LaterFragment,
        ] {
            assert!(!e.is_malformed());
        }
    }

    #[test]
    fn impossible_fields_are_malformed() {
        let good = v4_tcp();
        type Mutation = (&'static str, fn(&mut Vec<u8>));
        let cases: [Mutation; 6] = [
            ("version 5", |f| f[0] = 0x55),
            ("ihl 4", |f| f[0] = 0x44),
            ("total < ihl", |f| {
                f[2..4].copy_from_slice(&10u16.to_be_bytes())
            }),
            ("total > frame", |f| {
                f[2..4].copy_from_slice(&9000u16.to_be_bytes())
            }),
            ("tcp offset 4", |f| f[20 + 12] = 0x40),
            ("tcp offset past end", |f| f[20 + 12] = 0xf0),
        ];
        for (name, mutate) in cases {
            let mut f = good.clone();
            mutate(&mut f);
            let e = decode(LinkType::Raw, &f).unwrap_err();
            assert!(e.is_malformed(), "{name}: {e:?}");
        }
        let mut u = ipv4([1, 1, 1, 1], [2, 2, 2, 2], UDP, 0, 0, &udp(1, 2, b"abc"));
        u[24..26].copy_from_slice(&100u16.to_be_bytes());
        assert!(decode(LinkType::Raw, &u).unwrap_err().is_malformed());
        u[24..26].copy_from_slice(&7u16.to_be_bytes());
        assert!(decode(LinkType::Raw, &u).unwrap_err().is_malformed());
        let vlans = ethernet(0x0800, &[0x8100; 5], &v4_tcp());
        assert!(decode(LinkType::Ethernet, &vlans)
            .unwrap_err()
            .is_malformed());
        let too_long_ext = ipv6(v6("::1"), v6("::2"), TCP, &[(0, ext(0))], &[]);
        let mut f = too_long_ext;
        f[41] = 200;
        assert!(decode(LinkType::Raw, &f).unwrap_err().is_malformed());
        assert!(decode(LinkType::Raw, &[0x70; 40])
            .unwrap_err()
            .is_malformed());
    }

    #[test]
    fn dlt_values_map_to_link_types() {
        assert_eq!(LinkType::from_dlt(0), Some(LinkType::Null));
        assert_eq!(LinkType::from_dlt(1), Some(LinkType::Ethernet));
        assert_eq!(LinkType::from_dlt(12), Some(LinkType::Raw));
        assert_eq!(LinkType::from_dlt(101), Some(LinkType::Raw));
        assert_eq!(LinkType::from_dlt(108), Some(LinkType::Loop));
        assert_eq!(LinkType::from_dlt(113), Some(LinkType::LinuxSll));
        assert_eq!(LinkType::from_dlt(276), Some(LinkType::LinuxSll2));
        assert_eq!(LinkType::from_dlt(228), Some(LinkType::Ipv4));
        assert_eq!(LinkType::from_dlt(229), Some(LinkType::Ipv6));
        assert_eq!(LinkType::from_dlt(127), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), extra in 0usize..70000) {
            for link in LinkType::ALL {
                let _ = decode(link, &data);
                let _ = decode_captured(link, &data, data.len() + extra);
            }
        }

        /// Valid frames with random bytes flipped: no panic, and any packet
        /// decoded stays within the frame's claims.
        #[test]
        fn mutated_frames_never_panic(case in 0usize..40, flips in proptest::collection::vec((any::<u16>(), any::<u8>()), 1..8)) {
            let frames = valid_frames();
            let (_, link, mut f, ..) = frames[case % frames.len()].clone();
            for (at, b) in flips {
                let i = usize::from(at) % f.len();
                f[i] = b;
            }
            if let Ok(p) = decode(link, &f) {
                prop_assert!(p.payload.len() <= p.payload_len as usize);
            }
        }
    }
}
