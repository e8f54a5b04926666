//! DNS messages in captured port-53 UDP payloads: a pure parser for the
//! header and first question (bounded, never panics) and [`event`], which
//! turns a payload into the source's [`DnsEvent`]. The analytics built from
//! the events belong to the snapshot (`crate::snapshot::dns`). It sees only
//! payload bytes; it never reads the system and never builds wire rows.

use std::net::SocketAddr;
use std::time::Duration;

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
            protocol: Protocol::Udp,
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
        protocol: Protocol::Udp,
        kind: DnsEventKind::Query { name },
    };
    (Some(e), malformed)
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&data);
            let _ = event(&data, "1.1.1.1:1".parse().unwrap(), "2.2.2.2:53".parse().unwrap(), Duration::ZERO, Duration::ZERO);
        }

        #[test]
        fn names_round_trip(labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..6)) {
            let name = labels.join(".");
            let m = build_message(1, false, 0, &name, 1);
            prop_assert_eq!(parse(&m).unwrap().question.unwrap().name, name);
        }
    }
}
