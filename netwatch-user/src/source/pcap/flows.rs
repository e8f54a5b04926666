//! What the capture thread counts ([`Shared`]): payload bytes per flow
//! direction (TCP once per stream byte, see [`super::stream`]), the DNS
//! messages (see [`super::dns`]), SYNs and resets for the alert
//! detectors, and the capture's counters; the source's `read` drains it.
//! Pure: frames in, counters out, the time given by the caller.
//!
//! It must never grow without bound under a flood: each table has its cap
//! ([`MAX_FLOWS`], [`MAX_DNS_EVENTS`], [`MAX_TCP_EVENTS`]) and counts what
//! it refused; flows of the sockets the last scan saw are always kept.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::dns;
use super::frame::{decode_captured, LinkType};
use super::stream::Streams;
use crate::procinfo::sockets::canonical;
use crate::source::{Protocol, TcpEvent, TcpEventKind};

/// Counters of the capture since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// TCP/UDP packets decoded.
    pub packets: u64,
    /// Truncated or malformed frames (lost records).
    pub decode_errors: u64,
    /// Frames that were fine but not countable (ARP, ICMP, later fragments).
    pub skipped: u64,
    /// Packets the kernel dropped because the buffer was full (`ps_drop`).
    pub kernel_drops: u64,
    /// Packets not counted because too many distinct flows arrived
    /// between two reads (lost records).
    pub flow_overflow: u64,
    /// Port-53 UDP payloads and DNS-over-TCP messages that were not
    /// readable DNS.
    pub dns_malformed: u64,
    /// DNS-over-TCP directions whose framing was lost (a segment missed
    /// or cut by the snapshot length): read no more.
    pub dns_tcp_desyncs: u64,
    /// Copies of a DNS message captured on another interface (the same
    /// bytes within [`dns::DUPLICATE_WINDOW`]): one event only.
    pub dns_duplicates: u64,
    /// DNS messages not reported because too many arrived between two
    /// reads (lost records).
    pub dns_overflow: u64,
    /// SYNs and resets not handed to the alert detectors because too many
    /// arrived between two reads.
    pub tcp_events_overflow: u64,
    /// TCP payload bytes captured but not counted because their stream had
    /// already counted them (retransmissions, a packet captured twice).
    pub repeated_bytes: u64,
    /// Socket-table scans started by a new connection (a SYN), beside the
    /// one per read.
    pub rescans: u64,
    /// Bytes of local flows whose socket was gone before any scan saw it
    /// and that no listener explains: reported on socket-less samples
    /// (`pid: None`), never dropped.
    pub unowned_bytes: u64,
    /// Bytes credited to the remembered owner of a socket already gone.
    pub remembered_owner_bytes: u64,
    /// Bytes credited to the owner of the listening socket a closed
    /// accepted socket came from.
    pub listener_owner_bytes: u64,
    /// Bytes of flows whose end is not an address of this host (forwarded
    /// traffic): no socket here moved them.
    pub not_local_bytes: u64,
}

impl CaptureStats {
    /// Records lost since the capture opened: decode errors, kernel drops
    /// and flow-table or DNS-queue overflow.
    pub fn lost_records(&self) -> u64 {
        self.decode_errors + self.kernel_drops + self.flow_overflow + self.dns_overflow
    }
}

/// A direction of a 5-tuple: bytes sent from `src` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// What one direction of a flow did between two reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCount {
    /// Payload bytes new to the stream (TCP: see [`super::stream`]).
    pub bytes: u64,
    /// A connection opened in this direction (a SYN without ACK).
    pub opened: bool,
    /// The direction ended (FIN or RST).
    pub ended: bool,
}

/// Distinct flows of no known socket kept between two reads (7/8 of a power
/// of two: a full map does not grow its buckets); flows without payload
/// only up to half of it.
pub const MAX_FLOWS: usize = 28_672;
/// DNS messages kept between two reads.
pub const MAX_DNS_EVENTS: usize = 16_384;
/// TCP SYNs and resets kept between two reads.
pub const MAX_TCP_EVENTS: usize = 16_384;

/// What the capture thread fills and `read` drains.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) flows: HashMap<FlowKey, FlowCount>,
    pub(super) streams: Streams,
    pub(super) dns: dns::DnsReader,
    /// SYNs and resets, for the alert detectors (locality filled at read).
    pub(super) tcp_events: Vec<TcpEvent>,
    /// Both directions of the connected sockets the last read's scan saw
    /// with an owner: always given a flow, whatever the flood.
    pub(super) known: HashSet<FlowKey>,
    /// New flows refused (the table was full) since the last read.
    pub(super) refused_flows: u64,
    /// TCP events refused since the last read.
    pub(super) refused_tcp_events: u64,
    /// Half-open directions refused, as last reported.
    pub(super) reported_half_open: u64,
    pub(super) stats: CaptureStats,
    /// A SYN was seen since the resolver last looked.
    pub(super) opened: bool,
}

impl Shared {
    /// Count one captured frame. `arrival` is when the capture thread read
    /// it (monotonic, [`crate::clock::mono_now`]): the time every window
    /// and expiry uses. `captured` is libpcap's timestamp (wall clock),
    /// kept only for DNS latency.
    pub(super) fn observe(
        &mut self,
        link: LinkType,
        data: &[u8],
        wire_len: usize,
        arrival: Duration,
        captured: Duration,
    ) {
        let p = match decode_captured(link, data, wire_len) {
            Ok(p) => p,
            Err(e) if e.is_malformed() => {
                self.stats.decode_errors += 1;
                return;
            }
            Err(_) => {
                self.stats.skipped += 1;
                return;
            }
        };
        self.stats.packets += 1;
        let (src, dst) = (canonical(p.src), canonical(p.dst));
        let key = FlowKey {
            protocol: p.protocol,
            src,
            dst,
        };
        let (bytes, opened, ended) = match p.tcp {
            Some(seg) => {
                let new = self.streams.count(key, seg, p.payload_len, arrival);
                if !seg.rst() {
                    self.stats.repeated_bytes += u64::from(p.payload_len).saturating_sub(new);
                }
                (new, seg.syn() && !seg.ack(), seg.fin() || seg.rst())
            }
            None => (u64::from(p.payload_len), false, false),
        };
        if opened {
            self.opened = true;
        }
        if let Some(seg) = p.tcp {
            let kind = if seg.rst() {
                Some(TcpEventKind::Reset)
            } else if opened {
                Some(TcpEventKind::Syn)
            } else {
                None
            };
            if let Some(kind) = kind {
                if self.tcp_events.len() >= MAX_TCP_EVENTS {
                    self.refused_tcp_events += 1;
                } else {
                    self.tcp_events
                        .push(TcpEvent::seen(arrival, src, dst, kind));
                }
            }
        }
        if bytes > 0 || opened || ended {
            match self.flows.get_mut(&key) {
                Some(f) => {
                    f.bytes += bytes;
                    f.opened |= opened;
                    f.ended |= ended;
                }
                None => {
                    let room = if bytes > 0 { MAX_FLOWS } else { MAX_FLOWS / 2 };
                    if self.flows.len() < room || self.known.contains(&key) {
                        self.flows.insert(
                            key,
                            FlowCount {
                                bytes,
                                opened,
                                ended,
                            },
                        );
                    } else {
                        self.refused_flows += 1;
                        if bytes > 0 {
                            self.stats.flow_overflow += 1;
                        }
                    }
                }
            }
        }
        self.dns.packet(&p, src, dst, arrival, captured);
        self.stats.dns_malformed = self.dns.malformed;
        self.stats.dns_overflow = self.dns.overflow;
        self.stats.dns_tcp_desyncs = self.dns.tcp().desyncs();
        self.stats.dns_duplicates = self.dns.duplicates;
    }
}

impl Shared {
    /// Forget TCP streams that ended or went idle, as of monotonic time
    /// `now` (on the scale of the arrival times).
    pub(super) fn expire(&mut self, now: Duration) {
        self.streams.expire(now);
        self.dns.expire(now);
    }
}

pub(super) fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Poisoned only if the capture thread panicked mid-update (the
    // supervisor restarts it); flows and counters stay usable, at worst one
    // packet is missing.
    crate::supervise::lock(m, "pcap flows")
}

#[cfg(test)]
mod tests {
    use super::super::{frame, stream};
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn shared_counts_payload_per_direction_and_drops_on_malformed() {
        use frame::tests::{ethernet, ipv4, tcp, udp, TCP, UDP};
        let mut s = Shared::default();
        let f = ethernet(
            0x0800,
            &[],
            &ipv4(
                [127, 0, 0, 1],
                [127, 0, 0, 1],
                TCP,
                0,
                0,
                &tcp(1, 2, 0, &[0; 300]),
            ),
        );
        s.observe(
            LinkType::Ethernet,
            &f,
            f.len(),
            Duration::ZERO,
            Duration::ZERO,
        );
        s.observe(
            LinkType::Ethernet,
            &f[..40],
            40,
            Duration::ZERO,
            Duration::ZERO,
        );
        s.observe(
            LinkType::Ethernet,
            &f[..64],
            f.len(),
            Duration::ZERO,
            Duration::ZERO,
        );
        let q = dns::build_message(1, false, 0, "a.example.com", 1);
        let d = ethernet(
            0x0800,
            &[],
            &ipv4([127, 0, 0, 1], [127, 0, 0, 1], UDP, 0, 0, &udp(999, 53, &q)),
        );
        s.observe(
            LinkType::Ethernet,
            &d,
            d.len(),
            Duration::ZERO,
            Duration::ZERO,
        );
        let key = FlowKey {
            protocol: Protocol::Tcp,
            src: sa("127.0.0.1:1"),
            dst: sa("127.0.0.1:2"),
        };
        // The second copy of the segment (same sequence numbers) is not new.
        assert_eq!(s.flows.get(&key).map(|f| f.bytes), Some(300));
        assert_eq!(s.stats.repeated_bytes, 300);
        assert_eq!(s.stats.decode_errors, 1);
        assert_eq!(s.stats.packets, 3);
        assert_eq!(s.stats.lost_records(), 1);
        let events = s.dns.take();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].kind,
            crate::source::DnsEventKind::Query {
                name: Some("a.example.com".into())
            }
        );
    }

    /// `--mode pcap` reads DNS over TCP too: two messages in one segment,
    /// a retransmission of it (not counted again), and the answers; the
    /// stream's bytes count once as before.
    #[test]
    fn pcap_mode_reads_dns_over_tcp_once_per_message() {
        use frame::tests::{ethernet, ipv4, tcp, TCP};
        let framed = |id: u16, response: bool, name: &str| {
            let m = dns::build_message(
                id,
                response,
                if name.starts_with("nx.") { 3 } else { 0 },
                name,
                1,
            );
            let mut v = (m.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(&m);
            v
        };
        let segment = |sport: u16, dport: u16, seq: u32, payload: &[u8]| {
            let mut t = tcp(sport, dport, 0, payload);
            t[4..8].copy_from_slice(&seq.to_be_bytes());
            ethernet(
                0x0800,
                &[],
                &ipv4([127, 0, 0, 1], [127, 0, 0, 1], TCP, 0, 0, &t),
            )
        };
        let mut s = Shared::default();
        let mut see = |f: &[u8]| {
            s.observe(
                LinkType::Ethernet,
                f,
                f.len(),
                Duration::ZERO,
                Duration::ZERO,
            )
        };
        let mut queries = framed(1, false, "a.example.com");
        queries.extend(framed(2, false, "nx.example.com"));
        let answers = [
            framed(1, true, "a.example.com"),
            framed(2, true, "nx.example.com"),
        ]
        .concat();
        see(&segment(40000, 53, 100, &queries));
        see(&segment(40000, 53, 100, &queries));
        see(&segment(53, 40000, 700, &answers));
        let got: Vec<_> = s
            .dns
            .take()
            .into_iter()
            .map(|e| (e.id, e.protocol, e.kind))
            .collect();
        use crate::source::DnsEventKind::{Query, Response};
        assert_eq!(
            got,
            [
                (
                    1,
                    Protocol::Tcp,
                    Query {
                        name: Some("a.example.com".into())
                    }
                ),
                (
                    2,
                    Protocol::Tcp,
                    Query {
                        name: Some("nx.example.com".into())
                    }
                ),
                (1, Protocol::Tcp, Response { rcode: 0 }),
                (2, Protocol::Tcp, Response { rcode: 3 }),
            ]
        );
        assert_eq!(s.stats.dns_malformed, 0);
        assert_eq!(s.stats.repeated_bytes, queries.len() as u64);
    }

    /// A UDP datagram of `n` payload bytes from 127.0.0.1:`sport` to
    /// 127.0.0.1:9.
    fn datagram(sport: u16, n: usize) -> Vec<u8> {
        use frame::tests::{ethernet, ipv4, udp, UDP};
        ethernet(
            0x0800,
            &[],
            &ipv4(
                [127, 0, 0, 1],
                [127, 0, 0, 1],
                UDP,
                0,
                0,
                &udp(sport, 9, &vec![1; n]),
            ),
        )
    }

    #[test]
    fn a_flow_flood_is_refused_past_the_cap_but_known_sockets_keep_their_flows() {
        let mut s = Shared::default();
        let known = FlowKey {
            protocol: Protocol::Udp,
            src: sa("127.0.0.1:65000"),
            dst: sa("127.0.0.1:9"),
        };
        s.known.insert(known);
        let see = |s: &mut Shared, f: &[u8]| {
            s.observe(
                LinkType::Ethernet,
                f,
                f.len(),
                Duration::ZERO,
                Duration::ZERO,
            )
        };
        // Bare SYNs (no payload) fill only half the table.
        for i in 0..MAX_FLOWS as u32 {
            see(&mut s, &segment(1 + (i % 60_000) as u16, i, 0x02, 0));
        }
        assert_eq!(s.flows.len(), MAX_FLOWS / 2);
        // Datagrams with payload fill the rest; further ones are refused.
        for sport in 1..=(MAX_FLOWS as u16) {
            see(&mut s, &datagram(sport, 10));
        }
        assert_eq!(s.flows.len(), MAX_FLOWS);
        // Half the SYNs and half the datagrams.
        assert_eq!(s.refused_flows, MAX_FLOWS as u64);
        assert_eq!(s.stats.flow_overflow, (MAX_FLOWS / 2) as u64);
        // A known socket's flow still gets its entry and every byte.
        see(&mut s, &datagram(65_000, 1_234));
        assert_eq!(s.flows.get(&known).map(|f| f.bytes), Some(1_234));
        assert_eq!(s.flows.len(), MAX_FLOWS + 1);
    }

    /// The test clock's wall part as a libpcap timestamp would carry it.
    fn stamp(c: &crate::clock::TestClock) -> Duration {
        use crate::clock::Clock;
        let w = c.wall();
        Duration::new(
            u64::try_from(w.timestamp()).unwrap(),
            w.timestamp_subsec_nanos(),
        )
    }

    fn test_clock() -> crate::clock::TestClock {
        let wall = chrono::DateTime::<chrono::Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        crate::clock::TestClock::new(Duration::from_secs(5_000), wall)
    }

    /// A frame as captured now: arrival from the clock's monotonic part,
    /// libpcap's stamp from its wall part.
    fn capture(s: &mut Shared, c: &crate::clock::TestClock, f: &[u8]) {
        use crate::clock::Clock;
        s.observe(LinkType::Ethernet, f, f.len(), c.mono(), stamp(c));
    }

    /// One second of the capture thread: time passes, streams expire.
    fn second(s: &mut Shared, c: &crate::clock::TestClock) {
        use crate::clock::Clock;
        c.advance(Duration::from_secs(1));
        s.expire(c.mono());
    }

    /// A TCP segment from 127.0.0.1:`sport` to 127.0.0.1:80.
    fn segment(sport: u16, seq: u32, flags: u8, len: usize) -> Vec<u8> {
        use frame::tests::{ethernet, ipv4, tcp, TCP};
        let mut t = tcp(sport, 80, 0, &vec![0x5a; len]);
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[13] = flags;
        ethernet(
            0x0800,
            &[],
            &ipv4([127, 0, 0, 1], [127, 0, 0, 1], TCP, 0, 0, &t),
        )
    }

    /// The wall clock stepped back an hour, then forward two, while
    /// monotonic time runs on: no stream expires early, so retransmitted
    /// segments count nothing, and every byte counts once (exact totals).
    /// With libpcap's stamps as the streams' clock, the streams opened after
    /// the step back expired on the next second and the ones before it on
    /// the step forward, and each retransmission counted again.
    #[test]
    fn clock_steps_neither_expire_streams_nor_count_retransmissions_twice() {
        const SYN: u8 = 0x02;
        const ACK: u8 = 0x10;
        let c = test_clock();
        let mut s = Shared::default();
        // Stream A before the step.
        capture(&mut s, &c, &segment(1000, 100, SYN, 0));
        capture(&mut s, &c, &segment(1000, 101, ACK, 1000));
        second(&mut s, &c);
        c.step_wall(chrono::TimeDelta::hours(-1));
        // Stream B after it.
        capture(&mut s, &c, &segment(1001, 500, SYN, 0));
        capture(&mut s, &c, &segment(1001, 501, ACK, 700));
        for _ in 0..3 {
            second(&mut s, &c);
        }
        // Both retransmit their data.
        capture(&mut s, &c, &segment(1000, 101, ACK, 1000));
        capture(&mut s, &c, &segment(1001, 501, ACK, 700));
        c.step_wall(chrono::TimeDelta::hours(2));
        // Stream C after the step forward; A and B retransmit again.
        capture(&mut s, &c, &segment(1002, 9, ACK, 300));
        for _ in 0..3 {
            second(&mut s, &c);
        }
        capture(&mut s, &c, &segment(1000, 101, ACK, 1000));
        capture(&mut s, &c, &segment(1001, 501, ACK, 700));
        let bytes = |port: u16| {
            s.flows
                .get(&FlowKey {
                    protocol: Protocol::Tcp,
                    src: SocketAddr::from(([127, 0, 0, 1], port)),
                    dst: sa("127.0.0.1:80"),
                })
                .map(|f| f.bytes)
        };
        assert_eq!(
            (bytes(1000), bytes(1001), bytes(1002)),
            (Some(1000), Some(700), Some(300))
        );
        assert_eq!(s.stats.repeated_bytes, 2 * 1000 + 2 * 700);
        assert_eq!(s.streams.len(), 3, "no stream expired");
        assert_eq!(s.streams.resyncs(), 0);
        // Monotonic time alone ends them: idle for IDLE.
        c.advance(stream::IDLE);
        s.expire(crate::clock::Clock::mono(&c));
        assert!(s.streams.is_empty());
    }

    /// DNS queries match their answers across wall-clock steps, and the
    /// latency is the real one: a query waiting across a tick after the
    /// wall clock went back an hour is not forgotten (with capture stamps
    /// as the clock it was: older than the newest stamp by an hour), and a
    /// step between a query and its answer does not make it an hour long.
    #[test]
    fn clock_steps_neither_lose_pending_dns_queries_nor_skew_latency() {
        use crate::clock::Clock;
        use crate::snapshot::dns::DnsTracker;
        use frame::tests::{ethernet, ipv4, udp, UDP};
        let c = test_clock();
        let mut s = Shared::default();
        let mut tracker = DnsTracker::default();
        let mut buckets = [0u64; 8];
        let (mut queries, mut responses) = (0, 0);
        let dns = |id: u16, response: bool| {
            let m = dns::build_message(id, response, 0, "www.example.com", 1);
            let (sp, dp) = if response {
                (53, 40000 + id)
            } else {
                (40000 + id, 53)
            };
            ethernet(
                0x0800,
                &[],
                &ipv4([127, 0, 0, 1], [127, 0, 0, 1], UDP, 0, 0, &udp(sp, dp, &m)),
            )
        };
        let mut tick = |s: &mut Shared, t: &mut DnsTracker| {
            for e in s.dns.take() {
                t.observe(&e);
            }
            let a = t.take(c.mono());
            for (b, n) in buckets.iter_mut().zip(a.latency_buckets) {
                *b += n;
            }
            queries += a.total_queries;
            responses += a.total_responses;
        };
        // 1: the wall clock goes back an hour between query and answer.
        capture(&mut s, &c, &dns(1, false));
        tick(&mut s, &mut tracker);
        c.step_wall(chrono::TimeDelta::hours(-1));
        c.advance(Duration::from_millis(20));
        capture(&mut s, &c, &dns(1, true));
        tick(&mut s, &mut tracker);
        // 2: after the step, a query waits across a tick.
        capture(&mut s, &c, &dns(2, false));
        c.advance(Duration::from_millis(15));
        tick(&mut s, &mut tracker);
        c.advance(Duration::from_millis(15));
        capture(&mut s, &c, &dns(2, true));
        tick(&mut s, &mut tracker);
        // 3: the wall clock goes forward two hours between query and answer.
        capture(&mut s, &c, &dns(3, false));
        tick(&mut s, &mut tracker);
        c.step_wall(chrono::TimeDelta::hours(2));
        c.advance(Duration::from_millis(40));
        capture(&mut s, &c, &dns(3, true));
        tick(&mut s, &mut tracker);
        // 4: no step: the capture stamps give the latency.
        capture(&mut s, &c, &dns(4, false));
        c.advance(Duration::from_millis(3));
        capture(&mut s, &c, &dns(4, true));
        tick(&mut s, &mut tracker);
        assert_eq!((queries, responses), (4, 4));
        // 20 ms, 30 ms, 40 ms, 3 ms.
        assert_eq!(buckets, [1, 0, 1, 2, 0, 0, 0, 0]);
        assert_eq!(tracker.outstanding(), 0);
    }
}
