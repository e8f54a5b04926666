//! DNS analytics from captured port-53 UDP payloads: a pure parser for the
//! header and first question (bounded, never panics), and [`DnsTracker`],
//! which counts queries, responses, NXDOMAINs, response latency and the most
//! queried domains per interval, with the semantics of netwatch-sdk 0.3.2's
//! `NetworkIntelCollector` (same latency buckets, same base-domain rule,
//! top 20). It sees only payload bytes; it never reads the system.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use netwatch_common::wire::DnsAnalytics;

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

/// netwatch-sdk's base domain: the last two labels (`a.b.example.com` →
/// `example.com`); a single label as is.
pub fn base_domain(name: &str) -> String {
    let parts: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    match parts.as_slice() {
        [.., a, b] => format!("{a}.{b}"),
        _ => name.to_string(),
    }
}

/// Latency bucket for a response `latency` after its query:
/// <5, <10, <25, <50, <100, <250, <500, ≥500 ms.
pub fn latency_bucket(latency: Duration) -> usize {
    const UPPER_MS: [f64; 7] = [5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0];
    let ms = latency.as_secs_f64() * 1000.0;
    UPPER_MS.iter().position(|&u| ms < u).unwrap_or(7)
}

/// Domains listed in [`DnsAnalytics::top_domains`].
pub const TOP_DOMAINS: usize = 20;
/// Queries waiting for a response longer than this are forgotten.
pub const OUTSTANDING_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on per-interval state, so a flood cannot grow memory without end.
const MAX_OUTSTANDING: usize = 65_536;
const MAX_DOMAINS: usize = 10_000;

/// Per-interval DNS counters fed one message at a time.
///
/// A query (QR = 0) is matched to its response (QR = 1) by transaction id
/// and the client's endpoint (the query's source, the response's
/// destination); latency is the difference of the two packets' capture
/// timestamps. Counts cover the interval since the last [`Self::take`];
/// queries still waiting are carried over.
#[derive(Debug, Default)]
pub struct DnsTracker {
    outstanding: HashMap<(u16, SocketAddr), Duration>,
    domains: HashMap<String, u32>,
    analytics: DnsAnalytics,
    latest: Duration,
    malformed: u64,
}

impl DnsTracker {
    /// Feed one UDP payload seen from `src` to `dst` at capture time `ts`
    /// (since the Unix epoch). Payloads that are not DNS are counted in
    /// [`Self::malformed`] and otherwise ignored.
    pub fn observe(&mut self, payload: &[u8], src: SocketAddr, dst: SocketAddr, ts: Duration) {
        let header = match parse_header(payload) {
            Ok(h) => h,
            Err(_) => {
                self.malformed += 1;
                return;
            }
        };
        self.latest = self.latest.max(ts);
        let a = &mut self.analytics;
        if header.is_response {
            a.total_responses += 1;
            if header.rcode == 3 {
                a.nxdomain_count += 1;
            }
            if let Some(sent) = self.outstanding.remove(&(header.id, dst)) {
                a.latency_buckets[latency_bucket(ts.saturating_sub(sent))] += 1;
            }
            return;
        }
        a.total_queries += 1;
        let key = (header.id, src);
        if self.outstanding.len() < MAX_OUTSTANDING || self.outstanding.contains_key(&key) {
            self.outstanding.insert(key, ts);
        }
        // A query whose name cannot be read still counts as a query.
        match parse(payload) {
            Ok(DnsMessage {
                question: Some(q), ..
            }) => {
                let d = base_domain(&q.name);
                if let Some(n) = self.domains.get_mut(&d) {
                    *n = n.saturating_add(1);
                } else if self.domains.len() < MAX_DOMAINS {
                    self.domains.insert(d, 1);
                }
            }
            Ok(_) => {}
            Err(_) => self.malformed += 1,
        }
    }

    /// The interval's analytics; counters restart, outstanding queries
    /// older than [`OUTSTANDING_TIMEOUT`] (by capture time) are dropped.
    pub fn take(&mut self) -> DnsAnalytics {
        let cutoff = self.latest.saturating_sub(OUTSTANDING_TIMEOUT);
        self.outstanding.retain(|_, sent| *sent >= cutoff);
        let mut top: Vec<(String, u32)> = self.domains.drain().collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_DOMAINS);
        let mut out = std::mem::take(&mut self.analytics);
        out.top_domains = top;
        out
    }

    /// Port-53 payloads (or query names) that could not be parsed, since start.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Queries waiting for their response.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
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
    fn base_domain_matches_the_sdk() {
        assert_eq!(base_domain("a.b.c.d."), "c.d");
        assert_eq!(base_domain("host"), "host");
        assert_eq!(base_domain("example.com"), "example.com");
        assert_eq!(base_domain("."), ".");
    }

    #[test]
    fn latency_buckets_match_the_sdk() {
        let ms = Duration::from_micros;
        let cases = [
            (0, 0),
            (4_999, 0),
            (5_000, 1),
            (9_999, 1),
            (10_000, 2),
            (24_999, 2),
            (25_000, 3),
            (50_000, 4),
            (100_000, 5),
            (250_000, 6),
            (499_999, 6),
            (500_000, 7),
            (60_000_000, 7),
        ];
        for (us, b) in cases {
            assert_eq!(latency_bucket(ms(us)), b, "{us}us");
        }
    }

    #[test]
    fn tracker_counts_matches_and_resets_per_interval() {
        let c1 = sa("10.0.0.5:40001");
        let c2 = sa("10.0.0.5:40002");
        let srv = sa("10.0.0.53:53");
        let t = |ms: u64| Duration::from_secs(1_700_000_000) + Duration::from_millis(ms);
        let mut d = DnsTracker::default();
        d.observe(
            &build_message(1, false, 0, "www.example.com", 1),
            c1,
            srv,
            t(0),
        );
        d.observe(
            &build_message(1, false, 0, "api.example.com", 28),
            c2,
            srv,
            t(1),
        );
        d.observe(
            &build_message(2, false, 0, "nope.test.org", 1),
            c1,
            srv,
            t(2),
        );
        d.observe(
            &build_message(3, false, 0, "lost.example.net", 1),
            c1,
            srv,
            t(3),
        );
        // Same txid, other client: matched to c2's query, not c1's.
        d.observe(
            &build_message(1, true, 0, "api.example.com", 28),
            srv,
            c2,
            t(31),
        );
        d.observe(
            &build_message(1, true, 0, "www.example.com", 1),
            srv,
            c1,
            t(3),
        );
        d.observe(
            &build_message(2, true, 3, "nope.test.org", 1),
            srv,
            c1,
            t(702),
        );
        // A response nobody asked for: counted, no latency.
        d.observe(&build_message(9, true, 0, "x.y", 1), srv, c1, t(800));
        d.observe(b"not dns", c1, srv, t(900));
        let a = d.take();
        assert_eq!(a.total_queries, 4);
        assert_eq!(a.total_responses, 4);
        assert_eq!(a.nxdomain_count, 1);
        assert_eq!(a.latency_buckets, [1, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(
            a.top_domains,
            vec![
                ("example.com".to_string(), 2),
                ("example.net".to_string(), 1),
                ("test.org".to_string(), 1)
            ]
        );
        assert_eq!(d.malformed(), 1);
        assert_eq!(d.outstanding(), 1);
        // Next interval starts from zero; the late answer still matches.
        d.observe(
            &build_message(3, true, 0, "lost.example.net", 1),
            srv,
            c1,
            t(1003),
        );
        let a = d.take();
        assert_eq!((a.total_queries, a.total_responses), (0, 1));
        assert_eq!(a.latency_buckets, [0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(a.top_domains.is_empty());
        // Queries never answered are forgotten after 5 s of capture time.
        d.observe(&build_message(4, false, 0, "a.b", 1), c1, srv, t(2000));
        d.observe(&build_message(5, false, 0, "a.b", 1), c1, srv, t(8000));
        d.take();
        assert_eq!(d.outstanding(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&data);
            let mut t = DnsTracker::default();
            t.observe(&data, "1.1.1.1:1".parse().unwrap(), "2.2.2.2:53".parse().unwrap(), Duration::ZERO);
            let _ = t.take();
        }

        #[test]
        fn names_round_trip(labels in proptest::collection::vec("[a-z0-9-]{1,20}", 1..6)) {
            let name = labels.join(".");
            let m = build_message(1, false, 0, &name, 1);
            prop_assert_eq!(parse(&m).unwrap().question.unwrap().name, name);
        }
    }
}
