//! DNS messages in captured port-53 packets: a pure parser for the header
//! and first question (bounded, never panics), [`event`], which turns a UDP
//! payload into the source's [`DnsEvent`], [`TcpDns`], which finds the
//! messages of DNS over TCP in captured segments, and [`DnsReader`], which
//! does both for a capture (the pcap source and the DNS-only capture beside
//! the kernel collector, `crate::source::dns_capture`). The analytics built
//! from the events belong to the snapshot (`crate::snapshot::dns`). It sees
//! only packet bytes; it never reads the system and never builds wire rows.
//!
//! # DNS over TCP (RFC 1035 4.2.2, RFC 7766)
//! Each message is preceded by its length (2 bytes, big-endian); a segment
//! may hold several messages, and a message may span several segments.
//! [`TcpDns`] follows each direction of a connection by sequence number:
//! - the stream starts after the SYN (when the capture saw it), else at the
//!   first segment with payload, taken to start a message (a capture opened
//!   mid-connection; a wrong guess is counted malformed, not a panic);
//! - a segment is read only from where the direction's stream has got to:
//!   a retransmitted segment, or one captured twice, adds nothing (so no
//!   message is counted twice);
//! - a message is read once its first [`TCP_HEAD`] bytes (all of it, if
//!   shorter) have arrived; the rest of it is skipped by its length, so
//!   a large answer costs no memory. Only [`TCP_HEAD`] bytes are kept per
//!   direction;
//! - a hole (a segment the capture missed, or bytes cut off by the snapshot
//!   length where a message's length or head was) loses the framing: the
//!   direction is *desynchronised* ([`TcpDns::desyncs`]) and read no more
//!   until it ends or expires; a length below the 12-byte header is a
//!   malformed message, skipped; a stream that ends (FIN, RST) inside a
//!   message's head counts one malformed message and no event;
//! - at most [`MAX_TCP_DIRECTIONS`] directions are followed; a new one past
//!   that is refused ([`TcpDns::refused`], reported by the capture as drops
//!   of `dns_tcp_streams`). Ended directions are kept [`TCP_END_GRACE`] for
//!   late copies, idle ones forgotten after [`TCP_IDLE`] (monotonic time).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::frame::{Packet, TcpSegment};
use crate::source::{DnsEvent, DnsEventKind, Protocol};

/// Why a payload is not a DNS message we can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("DNS message truncated: needs {need} bytes, has {have}")]
    Truncated { need: usize, have: usize },
    #[error("DNS name longer than 255 bytes")]
    NameTooLong,
    #[error("DNS name uses reserved label type {0:#04x}")]
    BadLabelType(u8),
    #[error("DNS name follows more than {MAX_POINTERS} compression pointers")]
    TooManyPointers,
}

/// The fixed 12-byte DNS header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsHeader {
    /// Transaction id.
    pub id: u16,
    /// QR bit: a response.
    pub is_response: bool,
    pub opcode: u8,
    /// Response code (3 = NXDOMAIN); extended RCODE bits (EDNS) are ignored.
    pub rcode: u8,
    pub question_count: u16,
}

/// One question: its name, lower-cased, labels joined by `.`, without the
/// trailing dot (the root is `.`); bytes outside `[a-z0-9-_]` are escaped as
/// `\DDD`, like `dig` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuestion {
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// A parsed message: its header and its first question, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsMessage {
    pub header: DnsHeader,
    pub question: Option<DnsQuestion>,
}

/// Compression pointers followed in one name before giving up.
pub const MAX_POINTERS: usize = 16;
const MAX_NAME_LEN: usize = 255;
const HEADER_LEN: usize = 12;

/// Parse the 12-byte header.
pub fn parse_header(msg: &[u8]) -> Result<DnsHeader, DnsError> {
    let h: [u8; HEADER_LEN] = msg
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(DnsError::Truncated {
            need: HEADER_LEN,
            have: msg.len(),
        })?;
    Ok(DnsHeader {
        id: u16::from_be_bytes([h[0], h[1]]),
        is_response: h[2] & 0x80 != 0,
        opcode: (h[2] >> 3) & 0x0f,
        rcode: h[3] & 0x0f,
        question_count: u16::from_be_bytes([h[4], h[5]]),
    })
}

/// Parse the header and the first question.
pub fn parse(msg: &[u8]) -> Result<DnsMessage, DnsError> {
    let header = parse_header(msg)?;
    let question = if header.question_count == 0 {
        None
    } else {
        let (name, end) = read_name(msg, HEADER_LEN)?;
        let t = msg.get(end..end + 4).ok_or(DnsError::Truncated {
            need: end + 4,
            have: msg.len(),
        })?;
        Some(DnsQuestion {
            name,
            qtype: u16::from_be_bytes([t[0], t[1]]),
            qclass: u16::from_be_bytes([t[2], t[3]]),
        })
    };
    Ok(DnsMessage { header, question })
}

/// Read the (possibly compressed) name at `start`; returns it and the
/// offset just past it in the message (past the first pointer, if any).
/// Terminates: at most [`MAX_POINTERS`] jumps and 255 name bytes.
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), DnsError> {
    let mut name = String::new();
    let mut pos = start;
    let mut end = None;
    let mut jumps = 0;
    let mut wire_len = 1; // the root label
    loop {
        let len = *msg.get(pos).ok_or(DnsError::Truncated {
            need: pos + 1,
            have: msg.len(),
        })?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                let end = end.unwrap_or(pos + 1);
                if name.is_empty() {
                    name.push('.');
                }
                return Ok((name, end));
            }
            0x00 => {
                let label_len = usize::from(len);
                wire_len += label_len + 1;
                if wire_len > MAX_NAME_LEN {
                    return Err(DnsError::NameTooLong);
                }
                let label = msg
                    .get(pos + 1..pos + 1 + label_len)
                    .ok_or(DnsError::Truncated {
                        need: pos + 1 + label_len,
                        have: msg.len(),
                    })?;
                if !name.is_empty() {
                    name.push('.');
                }
                push_label(&mut name, label);
                pos += 1 + label_len;
            }
            0xc0 => {
                let low = *msg.get(pos + 1).ok_or(DnsError::Truncated {
                    need: pos + 2,
                    have: msg.len(),
                })?;
                jumps += 1;
                if jumps > MAX_POINTERS {
                    return Err(DnsError::TooManyPointers);
                }
                end.get_or_insert(pos + 2);
                pos = usize::from(len & 0x3f) << 8 | usize::from(low);
            }
            other => return Err(DnsError::BadLabelType(other)),
        }
    }
}

fn push_label(name: &mut String, label: &[u8]) {
    for &b in label {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => name.push(char::from(b)),
            b'A'..=b'Z' => name.push(char::from(b.to_ascii_lowercase())),
            _ => name.push_str(&format!("\\{b:03}")),
        }
    }
}

/// The DNS event of one port-53 UDP payload seen from `src` to `dst`, read
/// by the capture thread at monotonic time `at` and stamped `captured` by
/// the kernel (wall clock, since the Unix epoch), and whether part of it
/// was unreadable. A payload without a readable header is no event; a
/// query whose name cannot be read is still a query (without a name).
pub fn event(
    payload: &[u8],
    src: SocketAddr,
    dst: SocketAddr,
    at: Duration,
    captured: Duration,
) -> (Option<DnsEvent>, bool) {
    message_event(payload, src, dst, at, captured, Protocol::Udp)
}

/// As [`event`], for one DNS message carried over `protocol`.
pub fn message_event(
    payload: &[u8],
    src: SocketAddr,
    dst: SocketAddr,
    at: Duration,
    captured: Duration,
    protocol: Protocol,
) -> (Option<DnsEvent>, bool) {
    let header = match parse_header(payload) {
        Ok(h) => h,
        Err(_) => return (None, true),
    };
    if header.is_response {
        let e = DnsEvent {
            at,
            captured,
            client: dst,
            id: header.id,
            protocol,
            kind: DnsEventKind::Response {
                rcode: header.rcode,
            },
        };
        return (Some(e), false);
    }
    let (name, malformed) = match parse(payload) {
        Ok(DnsMessage {
            question: Some(q), ..
        }) => (Some(q.name), false),
        Ok(_) => (None, false),
        Err(_) => (None, true),
    };
    let e = DnsEvent {
        at,
        captured,
        client: src,
        id: header.id,
        protocol,
        kind: DnsEventKind::Query { name },
    };
    (Some(e), malformed)
}

/// Bytes of each DNS-over-TCP message read (and kept while it arrives):
/// the header and a first question of the longest name fit.
pub const TCP_HEAD: usize = 512;
/// TCP directions followed at most (about [`TCP_HEAD`] bytes each at worst).
pub const MAX_TCP_DIRECTIONS: usize = 4_096;
/// A direction idle this long is forgotten.
pub const TCP_IDLE: Duration = Duration::from_secs(120);
/// A direction that ended (FIN or RST) is kept this long, so a late or
/// retransmitted copy of its segments is not taken for a new stream.
pub const TCP_END_GRACE: Duration = Duration::from_secs(10);

/// One direction of a DNS-over-TCP connection.
#[derive(Debug, Clone)]
struct Direction {
    /// The initial sequence number, when the SYN was seen.
    isn: Option<u32>,
    /// Sequence number of the next stream byte not yet read.
    next: u32,
    /// The length prefix read so far (`prefix_len` of 2 bytes).
    prefix: [u8; 2],
    prefix_len: u8,
    /// The current message's length, once its prefix is read.
    msg_len: Option<usize>,
    /// Bytes of the current message consumed so far.
    consumed: usize,
    /// Its first bytes, up to [`TCP_HEAD`].
    head: Vec<u8>,
    /// The framing was lost (see the module docs): read no more.
    desynced: bool,
    /// When a FIN or RST ended it.
    ended: Option<Duration>,
    /// When a segment last arrived.
    last: Duration,
}

impl Direction {
    fn new(next: u32, isn: Option<u32>, at: Duration) -> Self {
        Self {
            isn,
            next,
            prefix: [0; 2],
            prefix_len: 0,
            msg_len: None,
            consumed: 0,
            head: Vec::new(),
            desynced: false,
            ended: None,
            last: at,
        }
    }

    /// Inside a message (or its prefix) whose head is not complete.
    fn mid_head(&self) -> bool {
        match self.msg_len {
            None => self.prefix_len > 0,
            // A length below the header was counted when it was read.
            Some(len) => len >= HEADER_LEN && self.consumed < len.min(TCP_HEAD),
        }
    }
}

/// What [`TcpDns::segment`] found in one segment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpRead {
    /// Messages that were not readable DNS (a length below the header, a
    /// cut-off head, an unreadable header or question).
    pub malformed: u32,
}

/// The DNS messages of TCP port-53 streams (see the module docs). Bounded
/// and pure: fed decoded segments, never reads the system, never panics.
#[derive(Debug, Default)]
pub struct TcpDns {
    directions: HashMap<(SocketAddr, SocketAddr), Direction>,
    refused: u64,
    desyncs: u64,
}

impl TcpDns {
    /// Read one captured segment from `src` to `dst` whose TCP payload is
    /// `payload_len` bytes, of which `payload` were captured; each message
    /// whose head is complete becomes an event passed to `emit` with the
    /// bytes it was read from. `at` is the monotonic arrival time,
    /// `captured` libpcap's stamp.
    #[allow(clippy::too_many_arguments)]
    pub fn segment(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        seg: TcpSegment,
        payload: &[u8],
        payload_len: u32,
        at: Duration,
        captured: Duration,
        emit: &mut dyn FnMut(DnsEvent, &[u8]),
    ) -> TcpRead {
        let mut read = TcpRead::default();
        let key = (src, dst);
        // The stream byte the payload starts at.
        let start = if seg.syn() {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        if !self.directions.contains_key(&key) {
            if seg.rst() || (!seg.syn() && payload_len == 0) {
                return read;
            }
            if self.directions.len() >= MAX_TCP_DIRECTIONS {
                self.refused += 1;
                return read;
            }
        }
        let d = self
            .directions
            .entry(key)
            .or_insert_with(|| Direction::new(start, seg.syn().then_some(seg.seq), at));
        if seg.syn() && !seg.rst() && d.isn != Some(seg.seq) {
            // A new connection on the same 5-tuple.
            *d = Direction::new(start, Some(seg.seq), at);
        }
        d.last = at;
        if d.ended.is_some() {
            return read;
        }
        if payload_len > 0 && !d.desynced {
            let offset = start.wrapping_sub(d.next) as i32;
            if offset > 0 {
                // A hole: bytes the capture never saw.
                d.desynced = true;
                self.desyncs += 1;
            } else {
                let skip = offset.unsigned_abs();
                if skip < payload_len {
                    let new = (payload_len - skip) as usize;
                    let have = payload.get(skip as usize..).unwrap_or(&[]);
                    let have = &have[..have.len().min(new)];
                    d.next = start.wrapping_add(payload_len);
                    let ok = feed(
                        d,
                        have,
                        new - have.len(),
                        src,
                        dst,
                        at,
                        captured,
                        &mut read,
                        emit,
                    );
                    if !ok {
                        d.desynced = true;
                        self.desyncs += 1;
                    }
                }
            }
        }
        if seg.fin() || seg.rst() {
            if !d.desynced && d.mid_head() {
                read.malformed += 1;
            }
            d.ended = Some(at);
        }
        read
    }

    /// Forget directions that ended more than [`TCP_END_GRACE`] or went
    /// idle for [`TCP_IDLE`] before monotonic time `now`.
    pub fn expire(&mut self, now: Duration) {
        self.directions.retain(|_, d| {
            let ended = d
                .ended
                .is_some_and(|e| now.saturating_sub(e) >= TCP_END_GRACE);
            !ended && now.saturating_sub(d.last) < TCP_IDLE
        });
    }

    /// Directions followed now.
    pub fn len(&self) -> usize {
        self.directions.len()
    }

    /// True when no direction is followed.
    pub fn is_empty(&self) -> bool {
        self.directions.is_empty()
    }

    /// New directions refused because [`MAX_TCP_DIRECTIONS`] were followed
    /// (cumulative).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Directions whose framing was lost (cumulative).
    pub fn desyncs(&self) -> u64 {
        self.desyncs
    }
}

/// Read `data`, the next captured bytes of `d`'s stream, then `missing`
/// bytes the capture cut off. Returns false when the framing is lost (the
/// missing bytes held a length or a head).
#[allow(clippy::too_many_arguments)]
fn feed(
    d: &mut Direction,
    mut data: &[u8],
    mut missing: usize,
    src: SocketAddr,
    dst: SocketAddr,
    at: Duration,
    captured: Duration,
    read: &mut TcpRead,
    emit: &mut dyn FnMut(DnsEvent, &[u8]),
) -> bool {
    loop {
        let Some(len) = d.msg_len else {
            // The length prefix.
            let Some((&b, rest)) = data.split_first() else {
                return missing == 0;
            };
            data = rest;
            d.prefix[usize::from(d.prefix_len)] = b;
            d.prefix_len += 1;
            if d.prefix_len == 2 {
                let len = usize::from(u16::from_be_bytes(d.prefix));
                d.prefix_len = 0;
                if len < HEADER_LEN {
                    // Shorter than a header: not a message; skipped by its length.
                    read.malformed += 1;
                }
                d.msg_len = Some(len);
                d.consumed = 0;
                d.head.clear();
            }
            continue;
        };
        let head_len = len.min(TCP_HEAD);
        if d.consumed < head_len {
            let n = (head_len - d.consumed).min(data.len());
            d.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            d.consumed += n;
            if d.consumed < head_len {
                // The head goes on in the next segment, or was cut off.
                return missing == 0;
            }
            if len >= HEADER_LEN {
                let (e, malformed) = message_event(&d.head, src, dst, at, captured, Protocol::Tcp);
                if malformed {
                    read.malformed += 1;
                }
                if let Some(e) = e {
                    emit(e, &d.head);
                }
            }
        }
        // Skip the rest of the message: captured bytes first, then missing ones.
        let rest = len - d.consumed;
        let n = rest.min(data.len());
        data = &data[n..];
        d.consumed += n;
        let m = (len - d.consumed).min(missing);
        missing -= m;
        d.consumed += m;
        if d.consumed < len {
            return true;
        }
        d.msg_len = None;
        d.head.clear();
        if data.is_empty() && missing == 0 {
            return true;
        }
        if data.is_empty() {
            // The next length prefix was cut off.
            return false;
        }
    }
}

impl Default for DnsReader {
    /// A reader holding at most [`super::MAX_DNS_EVENTS`] events.
    fn default() -> Self {
        Self::new(super::MAX_DNS_EVENTS)
    }
}

/// Copies of one message (the same bytes, the same transport) read within
/// this long of each other count once: one packet captured on several
/// interfaces of this host (a veth and its bridge, before and after NAT).
pub const DUPLICATE_WINDOW: Duration = Duration::from_millis(100);
/// Messages remembered for [`DUPLICATE_WINDOW`] at most (the oldest are
/// forgotten first: a copy of one of them would then count again).
pub const MAX_RECENT: usize = 16_384;

/// Fingerprints of the messages read in the last [`DUPLICATE_WINDOW`].
#[derive(Debug, Default)]
struct Recent {
    order: std::collections::VecDeque<(Duration, u64)>,
    live: HashMap<u64, u32>,
    keys: std::collections::hash_map::RandomState,
}

impl Recent {
    /// Whether a message with fingerprint `key` was read within the window
    /// before `at`; if not, it is remembered.
    fn seen(&mut self, key: u64, at: Duration) -> bool {
        while let Some(&(t, k)) = self.order.front() {
            if at.saturating_sub(t) < DUPLICATE_WINDOW && self.order.len() < MAX_RECENT {
                break;
            }
            self.order.pop_front();
            if let Some(n) = self.live.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.live.remove(&k);
                }
            }
        }
        if self.live.contains_key(&key) {
            return true;
        }
        self.order.push_back((at, key));
        *self.live.entry(key).or_default() += 1;
        false
    }

    fn key(&self, protocol: Protocol, bytes: &[u8]) -> u64 {
        use std::hash::BuildHasher as _;
        self.keys.hash_one((protocol == Protocol::Tcp, bytes))
    }
}

/// Reads the DNS messages of a capture's port-53 packets, UDP and TCP, into
/// a queue of events the capture's reader drains. A message read again
/// within [`DUPLICATE_WINDOW`] (the same bytes over the same transport) is a
/// copy and counts once ([`Self::duplicates`]). Bounded: at most `cap`
/// events wait, further ones are refused and counted ([`Self::overflow`]).
#[derive(Debug)]
pub struct DnsReader {
    tcp: TcpDns,
    events: Vec<DnsEvent>,
    cap: usize,
    recent: Recent,
    /// Port-53 UDP payloads and TCP messages that were not readable DNS.
    pub malformed: u64,
    /// Events refused because `cap` were waiting.
    pub overflow: u64,
    /// Copies of a message read within [`DUPLICATE_WINDOW`]: not counted again.
    pub duplicates: u64,
}

impl DnsReader {
    /// A reader holding at most `cap` events between two [`Self::take`]s.
    pub fn new(cap: usize) -> Self {
        Self {
            tcp: TcpDns::default(),
            events: Vec::new(),
            cap,
            recent: Recent::default(),
            malformed: 0,
            overflow: 0,
            duplicates: 0,
        }
    }

    /// Read one decoded packet whose (canonical) ends are `src` and `dst`,
    /// if it is to or from port 53.
    pub fn packet(
        &mut self,
        p: &Packet<'_>,
        src: SocketAddr,
        dst: SocketAddr,
        at: Duration,
        captured: Duration,
    ) {
        if src.port() != 53 && dst.port() != 53 {
            return;
        }
        let (events, cap, overflow) = (&mut self.events, self.cap, &mut self.overflow);
        let (recent, duplicates) = (&mut self.recent, &mut self.duplicates);
        let mut push = |e: DnsEvent, bytes: &[u8]| {
            if recent.seen(recent.key(e.protocol, bytes), e.at) {
                *duplicates += 1;
            } else if events.len() < cap {
                events.push(e);
            } else {
                *overflow += 1;
            }
        };
        match (p.protocol, p.tcp) {
            (Protocol::Udp, _) => {
                let (e, malformed) = event(p.payload, src, dst, at, captured);
                self.malformed += u64::from(malformed);
                if let Some(e) = e {
                    push(e, p.payload);
                }
            }
            (Protocol::Tcp, Some(seg)) => {
                let r = self.tcp.segment(
                    src,
                    dst,
                    seg,
                    p.payload,
                    p.payload_len,
                    at,
                    captured,
                    &mut push,
                );
                self.malformed += u64::from(r.malformed);
            }
            (Protocol::Tcp, None) => {}
        }
    }

    /// The events read since the last call.
    pub fn take(&mut self) -> Vec<DnsEvent> {
        std::mem::take(&mut self.events)
    }

    /// Forget ended and idle TCP directions (monotonic `now`).
    pub fn expire(&mut self, now: Duration) {
        self.tcp.expire(now);
    }

    /// The TCP framing state (its counters).
    pub fn tcp(&self) -> &TcpDns {
        &self.tcp
    }
}

/// Build a DNS message with one question (for tests and tools).
pub fn build_message(id: u16, response: bool, rcode: u8, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + name.len() + 6);
    m.extend_from_slice(&id.to_be_bytes());
    m.push(if response { 0x81 } else { 0x01 }); // QR, RD
    m.push(if response { 0x80 | (rcode & 0x0f) } else { 0 }); // RA, RCODE
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    for label in name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
    {
        let label = label.as_bytes().iter().take(63);
        m.push(label.len() as u8);
        m.extend(label);
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_header_and_question() {
        let m = build_message(0xbeef, false, 0, "WWW.Example.COM.", 28);
        let p = parse(&m).unwrap();
        assert_eq!(
            p,
            DnsMessage {
                header: DnsHeader {
                    id: 0xbeef,
                    is_response: false,
                    opcode: 0,
                    rcode: 0,
                    question_count: 1
                },
                question: Some(DnsQuestion {
                    name: "www.example.com".into(),
                    qtype: 28,
                    qclass: 1
                }),
            }
        );
        let r = parse(&build_message(7, true, 3, "nope.test", 1)).unwrap();
        assert!(r.header.is_response);
        assert_eq!(r.header.rcode, 3);
        assert_eq!(
            parse(&build_message(1, false, 0, ".", 2))
                .unwrap()
                .question
                .unwrap()
                .name,
            "."
        );
    }

    #[test]
    fn odd_bytes_in_labels_are_escaped() {
        let mut m = build_message(1, false, 0, "ab", 1);
        m[13] = b'.';
        m[14] = 0xff;
        assert_eq!(parse(&m).unwrap().question.unwrap().name, "\\046\\255");
    }

    #[test]
    fn compression_pointers_are_followed_and_bounded() {
        // Header, then at 12: "example.com" (13 bytes), then at 25 a name
        // "www" + pointer to 12.
        let mut m = build_message(1, false, 0, "example.com", 1);
        m.truncate(12 + 13);
        m.extend_from_slice(&[3, b'w', b'w', b'w', 0xc0, 12]);
        assert_eq!(read_name(&m, 25).unwrap(), ("www.example.com".into(), 31));
        // A pointer to itself: a loop, stopped.
        let mut m = build_message(1, false, 0, "", 1);
        m.truncate(12);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse(&m), Err(DnsError::TooManyPointers));
        // Two labels pointing at each other, growing the name each time.
        let mut m = build_message(1, false, 0, "", 1);
        m.truncate(12);
        m.extend_from_slice(&[1, b'a', 0xc0, 12]);
        assert!(matches!(
            parse(&m),
            Err(DnsError::TooManyPointers | DnsError::NameTooLong)
        ));
        // Pointer past the end.
        let mut m = build_message(1, false, 0, "", 1);
        m.truncate(12);
        m.extend_from_slice(&[0xc3, 0xff]);
        assert!(matches!(parse(&m), Err(DnsError::Truncated { .. })));
        // Extended label types are refused.
        let mut m = build_message(1, false, 0, "", 1);
        m.truncate(12);
        m.extend_from_slice(&[0x41, 0]);
        assert_eq!(parse(&m), Err(DnsError::BadLabelType(0x40)));
    }

    #[test]
    fn overlong_names_are_refused() {
        let mut m = build_message(1, false, 0, "", 1);
        m.truncate(12);
        for _ in 0..5 {
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse(&m), Err(DnsError::NameTooLong));
    }

    #[test]
    fn every_prefix_of_a_message_is_an_error() {
        let m = build_message(9, false, 0, "a.b.example.org", 1);
        for cut in 0..m.len() {
            assert!(
                matches!(parse(&m[..cut]), Err(DnsError::Truncated { .. })),
                "cut {cut}"
            );
        }
        assert!(parse(&m).is_ok());
    }

    #[test]
    fn payloads_become_events() {
        let c = sa("10.0.0.5:40001");
        let srv = sa("10.0.0.53:53");
        let at = Duration::from_millis(7);
        let q = build_message(1, false, 0, "WWW.example.com", 1);
        assert_eq!(
            event(&q, c, srv, at, at),
            (
                Some(DnsEvent {
                    at,
                    captured: at,
                    client: c,
                    id: 1,
                    protocol: Protocol::Udp,
                    kind: DnsEventKind::Query {
                        name: Some("www.example.com".into())
                    }
                }),
                false
            )
        );
        let r = build_message(1, true, 3, "www.example.com", 1);
        assert_eq!(
            event(&r, srv, c, at, at).0.map(|e| (e.client, e.kind)),
            Some((c, DnsEventKind::Response { rcode: 3 }))
        );
        // A query whose name is cut off is still a query, and malformed.
        let (e, malformed) = event(&q[..q.len() - 3], c, srv, at, at);
        assert!(malformed);
        assert_eq!(e.map(|e| e.kind), Some(DnsEventKind::Query { name: None }));
        // Not DNS at all: no event.
        assert_eq!(event(b"not dns", c, srv, at, at), (None, true));
    }

    /// A DNS message framed for TCP: its 2-byte length, then it.
    fn framed(m: &[u8]) -> Vec<u8> {
        let mut v = (m.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(m);
        v
    }

    const ACK: u8 = TcpSegment::ACK;
    const SYN: u8 = TcpSegment::SYN;
    const FIN: u8 = TcpSegment::FIN | TcpSegment::ACK;

    /// Feeds segments of one client→server direction (the client's ISN is
    /// 1000, so its stream starts at 1001).
    struct Feed {
        t: TcpDns,
        events: Vec<DnsEvent>,
        malformed: u32,
    }

    impl Feed {
        fn new() -> Self {
            Self {
                t: TcpDns::default(),
                events: Vec::new(),
                malformed: 0,
            }
        }
        /// A segment at stream offset `off` (0 = the first byte after the SYN).
        fn seg(&mut self, off: u32, flags: u8, payload: &[u8]) {
            self.cut(off, flags, payload, payload.len());
        }
        /// As `seg`, of which only `captured` bytes were captured.
        fn cut(&mut self, off: u32, flags: u8, payload: &[u8], captured: usize) {
            let seq = if flags & SYN != 0 { 1000 } else { 1001 + off };
            let mut events = Vec::new();
            let r = self.t.segment(
                sa("10.0.0.5:40001"),
                sa("10.0.0.53:53"),
                TcpSegment { seq, flags },
                &payload[..captured],
                payload.len() as u32,
                Duration::ZERO,
                Duration::ZERO,
                &mut |e, _| events.push(e),
            );
            self.malformed += r.malformed;
            self.events.extend(events);
        }
        fn names(&self) -> Vec<String> {
            self.events
                .iter()
                .map(|e| match &e.kind {
                    DnsEventKind::Query { name } => name.clone().unwrap_or_default(),
                    DnsEventKind::Response { rcode } => format!("rcode {rcode}"),
                })
                .collect()
        }
    }

    fn query(id: u16, name: &str) -> Vec<u8> {
        framed(&build_message(id, false, 0, name, 1))
    }

    #[test]
    fn tcp_two_messages_in_one_segment_are_two_events() {
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        let mut both = query(1, "a.example.com");
        both.extend(query(2, "b.example.com"));
        f.seg(0, ACK, &both);
        assert_eq!(f.names(), ["a.example.com", "b.example.com"]);
        assert_eq!(f.malformed, 0);
        assert!(f.events.iter().all(|e| e.protocol == Protocol::Tcp));
        assert_eq!(f.events[1].id, 2);
        assert_eq!(f.events[0].client, sa("10.0.0.5:40001"));
    }

    #[test]
    fn tcp_a_message_split_over_segments_is_one_event_when_its_head_is_complete() {
        let m = query(7, "split.example.com");
        // Cut in the length prefix, in the header, and in the name.
        for cuts in [vec![1], vec![5], vec![20], vec![1, 2, 9, 20]] {
            let mut f = Feed::new();
            f.seg(0, SYN, &[]);
            let mut at = 0;
            for &c in cuts.iter().chain([m.len()].iter()) {
                assert!(f.events.is_empty(), "{cuts:?}: not before the last piece");
                f.seg(at as u32, ACK, &m[at..c]);
                at = c;
            }
            assert_eq!(f.names(), ["split.example.com"], "{cuts:?}");
            assert_eq!(f.malformed, 0);
        }
        // Without the SYN (a capture opened mid-connection) the first
        // segment with payload starts the stream.
        let mut f = Feed::new();
        f.seg(0, ACK, &m[..10]);
        f.seg(10, ACK, &m[10..]);
        assert_eq!(f.names(), ["split.example.com"]);
    }

    #[test]
    fn tcp_retransmitted_segments_are_not_counted_twice() {
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        let a = query(1, "a.example.com");
        let b = query(2, "b.example.com");
        f.seg(0, ACK, &a);
        f.seg(0, ACK, &a); // the same segment again
        f.seg(0, SYN, &[]); // the SYN again
        assert_eq!(f.events.len(), 1);
        // A retransmission that overlaps the old message and brings half
        // of the next one, then the rest.
        let mut ab = a.clone();
        ab.extend_from_slice(&b[..9]);
        f.seg(0, ACK, &ab);
        f.seg(a.len() as u32 + 4, ACK, &b[4..]); // overlaps 5 bytes of it
        assert_eq!(f.names(), ["a.example.com", "b.example.com"]);
        // After the FIN, late copies are still not new.
        let end = (a.len() + b.len()) as u32;
        f.seg(end, FIN, &[]);
        f.seg(0, ACK, &a);
        f.seg(a.len() as u32, ACK, &b);
        assert_eq!(f.events.len(), 2);
        assert_eq!(f.malformed, 0);
    }

    #[test]
    fn tcp_a_new_connection_on_the_same_tuple_starts_afresh() {
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        f.seg(0, ACK, &query(1, "a.example.com")[..5]);
        // A SYN with another ISN: the old partial message is gone.
        let mut t = std::mem::take(&mut f.t);
        let mut events = Vec::new();
        let (c, s) = (sa("10.0.0.5:40001"), sa("10.0.0.53:53"));
        let m = query(9, "c.example.com");
        let seg = |seq, flags| TcpSegment { seq, flags };
        let z = Duration::ZERO;
        t.segment(c, s, seg(50, SYN), &[], 0, z, z, &mut |e, _| events.push(e));
        t.segment(c, s, seg(51, ACK), &m, m.len() as u32, z, z, &mut |e, _| {
            events.push(e)
        });
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, 9);
    }

    #[test]
    fn tcp_length_prefixes_that_lie_are_counted_and_never_panic() {
        // Shorter than a header: malformed, skipped by its length; the next
        // message is read.
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        let mut s = vec![0, 5, 1, 2, 3, 4, 5];
        s.extend(query(3, "ok.example.com"));
        f.seg(0, ACK, &s);
        assert_eq!((f.names(), f.malformed), (vec!["ok.example.com".into()], 1));
        // Longer than what the stream carries before it ends: no event,
        // one malformed message.
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        let m = build_message(4, false, 0, "long.example.com", 1);
        let mut s = 300u16.to_be_bytes().to_vec();
        s.extend_from_slice(&m);
        f.seg(0, ACK, &s);
        f.seg(s.len() as u32, FIN, &[]);
        assert_eq!((f.events.len(), f.malformed), (0, 1));
        // A zero length, then a header that does not parse as a question.
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        let mut bad = build_message(5, false, 0, "", 1);
        bad.truncate(12);
        bad.extend_from_slice(&[0xc3, 0xff, 0, 1, 0, 1]);
        let mut s = vec![0, 0];
        s.extend(framed(&bad));
        f.seg(0, ACK, &s);
        assert_eq!(f.malformed, 2, "the empty message and the bad question");
        assert_eq!(
            f.events.iter().map(|e| &e.kind).collect::<Vec<_>>(),
            [&DnsEventKind::Query { name: None }]
        );
    }

    #[test]
    fn tcp_a_hole_or_a_cut_off_length_desynchronises_the_direction() {
        // A segment the capture missed.
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        let a = query(1, "a.example.com");
        f.seg(a.len() as u32, ACK, &query(2, "b.example.com"));
        assert_eq!((f.events.len(), f.t.desyncs()), (0, 1));
        f.seg(0, ACK, &a); // the hole, late: still not read
        assert_eq!(f.events.len(), 0);
        // The snapshot length cut a segment where the next length was.
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        let mut both = query(1, "a.example.com");
        let first = both.len();
        both.extend(query(2, "b.example.com"));
        f.cut(0, ACK, &both, first + 1);
        assert_eq!(
            (f.names(), f.t.desyncs()),
            (vec!["a.example.com".into()], 1)
        );
        // A cut inside a long message's tail, past its head, is fine.
        let mut f = Feed::new();
        f.seg(0, SYN, &[]);
        let mut big = build_message(3, true, 0, "big.example.com", 1);
        big.resize(3000, 0);
        let big = framed(&big);
        f.cut(0, ACK, &big, 600);
        f.seg(big.len() as u32, ACK, &query(4, "next.example.com"));
        assert_eq!(f.names(), ["rcode 0", "next.example.com"]);
        assert_eq!(f.t.desyncs(), 0);
    }

    /// A UDP DNS query from `c` to `s` as a decoded packet's parts.
    fn udp_query(id: u16, c: &str, s: &str) -> Vec<u8> {
        use super::super::frame::tests::{ipv4, udp, UDP};
        let q = build_message(id, false, 0, "a.example.com", 1);
        let (c, s) = (sa(c), sa(s));
        let ip = |a: SocketAddr| match a.ip() {
            std::net::IpAddr::V4(v) => v.octets(),
            std::net::IpAddr::V6(_) => unreachable!(),
        };
        ipv4(ip(c), ip(s), UDP, 0, 0, &udp(c.port(), s.port(), &q))
    }

    fn read(r: &mut DnsReader, frame: &[u8], at: Duration) {
        use super::super::frame::{decode, LinkType};
        let p = decode(LinkType::Ipv4, frame).unwrap();
        r.packet(&p, p.src, p.dst, at, at);
    }

    #[test]
    fn the_reader_holds_at_most_its_cap_and_counts_the_rest() {
        let mut r = DnsReader::new(2);
        for id in 0..5 {
            read(
                &mut r,
                &udp_query(id, "10.0.0.5:40001", "10.0.0.53:53"),
                Duration::ZERO,
            );
        }
        assert_eq!((r.take().len(), r.overflow, r.malformed), (2, 3, 0));
        // Not port 53: not read.
        read(
            &mut r,
            &udp_query(9, "10.0.0.5:40001", "10.0.0.53:5353"),
            Duration::ZERO,
        );
        assert_eq!(r.take().len(), 0);
    }

    #[test]
    fn copies_of_a_message_on_several_interfaces_count_once() {
        let mut r = DnsReader::new(100);
        let ms = Duration::from_millis;
        // The same query on a veth, then on a bridge, then after NAT (its
        // addresses rewritten, its bytes the same): one event.
        read(
            &mut r,
            &udp_query(7, "10.0.0.5:40001", "10.0.0.53:53"),
            ms(1000),
        );
        read(
            &mut r,
            &udp_query(7, "10.0.0.5:40001", "10.0.0.53:53"),
            ms(1000),
        );
        read(
            &mut r,
            &udp_query(7, "192.168.1.2:61000", "10.0.0.53:53"),
            ms(1020),
        );
        assert_eq!((r.take().len(), r.duplicates), (1, 2));
        // Another id: another message.
        read(
            &mut r,
            &udp_query(8, "10.0.0.5:40001", "10.0.0.53:53"),
            ms(1030),
        );
        assert_eq!(r.take().len(), 1);
        // The same bytes again after the window: the client asked again.
        read(
            &mut r,
            &udp_query(7, "10.0.0.5:40001", "10.0.0.53:53"),
            ms(1000) + DUPLICATE_WINDOW,
        );
        assert_eq!((r.take().len(), r.duplicates), (1, 2));
    }

    #[test]
    fn tcp_directions_are_bounded_and_expire() {
        let mut t = TcpDns::default();
        let z = Duration::ZERO;
        let m = query(1, "a.example.com");
        let dst = sa("10.0.0.53:53");
        let mut n = 0;
        for i in 0..=MAX_TCP_DIRECTIONS as u32 {
            let src = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 1000));
            let seg = TcpSegment { seq: 1, flags: ACK };
            t.segment(src, dst, seg, &m, m.len() as u32, z, z, &mut |_, _| n += 1);
        }
        assert_eq!(
            (t.len(), t.refused(), n),
            (MAX_TCP_DIRECTIONS, 1, MAX_TCP_DIRECTIONS)
        );
        t.expire(TCP_IDLE);
        assert!(t.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&data);
            let _ = event(&data, "1.1.1.1:1".parse().unwrap(), "2.2.2.2:53".parse().unwrap(), Duration::ZERO, Duration::ZERO);
        }

        /// A stream of messages cut anywhere, each piece sent once or
        /// twice (a retransmission), gives each message once.
        #[test]
        fn tcp_streams_cut_anywhere_give_each_message_once(
            n in 1usize..6,
            cuts in proptest::collection::vec(1usize..40, 0..30),
            again in proptest::collection::vec(any::<bool>(), 30),
        ) {
            let mut stream = Vec::new();
            for i in 0..n {
                stream.extend(query(i as u16, &format!("m{i}.example.com")));
            }
            let mut f = Feed::new();
            f.seg(0, SYN, &[]);
            let mut at = 0;
            let mut k = 0;
            while at < stream.len() {
                let end = (at + cuts.get(k).copied().unwrap_or(stream.len())).min(stream.len());
                f.seg(at as u32, ACK, &stream[at..end]);
                if again[k % again.len()] {
                    f.seg(at as u32, ACK, &stream[at..end]);
                }
                at = end;
                k += 1;
            }
            let ids: Vec<u16> = f.events.iter().map(|e| e.id).collect();
            prop_assert_eq!(ids, (0..n as u16).collect::<Vec<_>>());
            prop_assert_eq!(f.malformed, 0);
        }

        #[test]
        fn tcp_arbitrary_segments_never_panic(
            segs in proptest::collection::vec((any::<u32>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..80), 0u32..200), 0..20),
        ) {
            let mut t = TcpDns::default();
            let z = Duration::ZERO;
            for (seq, flags, payload, extra) in segs {
                let len = payload.len() as u32 + extra;
                t.segment(sa("1.1.1.1:1"), sa("2.2.2.2:53"), TcpSegment { seq, flags }, &payload, len, z, z, &mut |_, _| {});
            }
        }

        #[test]
        fn names_round_trip(labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..6)) {
            let name = labels.join(".");
            let m = build_message(1, false, 0, &name, 1);
            prop_assert_eq!(parse(&m).unwrap().question.unwrap().name, name);
        }
    }
}
