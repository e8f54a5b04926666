//! TCP control events from the kernel (the `TCP_EVENTS` ring buffer written
//! by the BPF crate's `tcp_events` module) turned into the [`TcpEvent`]s the
//! alert detectors read, in packet direction as the pcap source reports
//! them: a SYN from the connecting side, a RST from the side that sent it.
//! Also reads `tcp:tcp_send_reset`'s format so the program reads its fields
//! where this kernel puts them. It reads the ring only when asked (a record
//! written just before a take is in that take) and never blocks.
//!
//! Both ends of a local connection are traced (and, with network
//! namespaces, both ends of a veth pair): the connecting side's SYN_SENT and
//! the listener's SYN_RECV (or the reset answering it) are one SYN on the
//! wire, a reset sent and the same reset received are one RST. Events with
//! the same kind, source and destination within [`SAME_SEGMENT`] are
//! therefore reported once.
//!
//! What each kernel shows (also logged once at load, [`coverage`]):
//! outbound SYNs, completed inbound handshakes and received resets on every
//! kernel and tier; resets answering segments to closed ports from Linux
//! 6.10 on from `tcp_send_reset` (its record has the segment's addresses),
//! before that from `tcp_v4/v6_send_reset` on the fentry and kprobe tiers
//! (the tracepoint tier, Linux ≥ 6.3, misses them on 6.3-6.9). Half-open
//! SYNs to open ports (`nmap -sS`) create no socket and are never seen.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use netwatch_common::{send_reset, tcp_event, TcpEventRecord, AF_INET, AF_INET6};

use crate::source::{ConnectOutcome, ConnectResult, TcpEvent, TcpEventKind};

/// Two traced halves of one segment are this close in time at most.
pub const SAME_SEGMENT: Duration = Duration::from_secs(2);
/// Bound on the remembered recent segments (for [`SAME_SEGMENT`]; about 90
/// bytes each: 6 MiB). When it is full, the segments older than
/// [`SAME_SEGMENT`] before the newest are forgotten first (once per take);
/// if it is still full, a new segment is reported but not remembered (its
/// traced twin, if any, is then reported too), counted as
/// `netwatch_agent_table_dropped_total{table="tcp_event_dedup"}`.
pub const MAX_RECENT: usize = 1 << 16;
/// Records taken per call at most (the ring holds fewer).
const MAX_TAKE: usize = 1 << 16;

/// The `tcp:tcp_send_reset` layout and field offsets (globals of the programs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendResetFormat {
    pub layout: u32,
    pub skbaddr: u32,
    pub skaddr: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

/// `sizeof(struct sockaddr_in6)`: the 6.10+ `saddr`/`daddr` fields.
const SOCKADDR_IN6: usize = 28;

impl SendResetFormat {
    /// From the running kernel's tracefs; `NONE` layout if unreadable.
    pub fn from_kernel() -> Self {
        ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|d| {
                std::fs::read_to_string(format!("{d}/events/tcp/tcp_send_reset/format")).ok()
            })
            .map(|f| Self::parse(&f))
            .unwrap_or_default()
    }

    /// From the text of a `format` file.
    pub fn parse(format: &str) -> Self {
        // name -> (offset, size)
        let fields: HashMap<&str, (u32, usize)> = format
            .lines()
            .filter_map(|l| {
                let decl = l.split("field:").nth(1)?.split(';').next()?;
                let name = decl.split_whitespace().last()?.split('[').next()?;
                let off = l.split("offset:").nth(1)?.split(';').next()?.parse().ok()?;
                let size = l.split("size:").nth(1)?.split(';').next()?.parse().ok()?;
                Some((name, (off, size)))
            })
            .collect();
        let off = |n: &str| fields.get(n).map(|f| f.0);
        let (Some(skbaddr), Some(skaddr)) = (off("skbaddr"), off("skaddr")) else {
            return Self::default();
        };
        let base = Self {
            skbaddr,
            skaddr,
            ..Self::default()
        };
        match (fields.get("saddr"), fields.get("daddr")) {
            (Some(&(saddr, SOCKADDR_IN6)), Some(&(daddr, SOCKADDR_IN6))) => Self {
                layout: send_reset::SOCKADDR,
                saddr,
                daddr,
                ..base
            },
            (Some(&(saddr, 4)), Some(&(daddr, 4))) => {
                let all = (
                    off("sport"),
                    off("dport"),
                    off("family"),
                    off("saddr_v6"),
                    off("daddr_v6"),
                );
                let (Some(sport), Some(dport), Some(family), Some(saddr_v6), Some(daddr_v6)) = all
                else {
                    return Self::default();
                };
                Self {
                    layout: send_reset::FIELDS,
                    sport,
                    dport,
                    family,
                    saddr,
                    daddr,
                    saddr_v6,
                    daddr_v6,
                    ..base
                }
            }
            _ => Self::default(),
        }
    }

    /// (global name, value) pairs for the loader.
    pub fn globals(&self) -> [(&'static str, u32); 10] {
        use netwatch_common::names::*;
        [
            (SEND_RESET_LAYOUT, self.layout),
            (SEND_RESET_SKBADDR, self.skbaddr),
            (SEND_RESET_SKADDR, self.skaddr),
            (SEND_RESET_SPORT, self.sport),
            (SEND_RESET_DPORT, self.dport),
            (SEND_RESET_FAMILY, self.family),
            (SEND_RESET_SADDR, self.saddr),
            (SEND_RESET_DADDR, self.daddr),
            (SEND_RESET_SADDR_V6, self.saddr_v6),
            (SEND_RESET_DADDR_V6, self.daddr_v6),
        ]
    }

    /// Resets answering segments no socket took (closed ports) are traced.
    pub fn sees_closed_ports(&self) -> bool {
        self.layout == send_reset::SOCKADDR
    }
}

/// What this kernel and tier let the collector see, for the log.
pub fn coverage(format: &SendResetFormat, tier: super::tier::Tier) -> String {
    let base = "TCP events from the kernel: outbound SYNs, completed inbound handshakes (SYN_RECV; half-open SYNs to open ports are not seen), resets received";
    match format.layout {
        send_reset::SOCKADDR => format!("{base}, resets sent (closed ports included)"),
        send_reset::FIELDS if tier != super::tier::Tier::Tracepoint => format!(
            "{base}, resets sent (closed ports from tcp_v4/v6_send_reset, since this kernel's tcp:tcp_send_reset misses them)"
        ),
        send_reset::FIELDS => format!(
            "{base}, resets sent by full sockets only: this kernel's tcp:tcp_send_reset (Linux < 6.10) does not fire for SYNs to closed ports and the tracepoint tier has no kprobes, so a scan of closed ports is not seen"
        ),
        _ => format!(
            "{base}; resets sent are not traced (tcp:tcp_send_reset's format is unknown or unreadable)"
        ),
    }
}

/// The addresses of this host's interfaces (and loopback), for telling
/// which side of an event is local.
pub fn host_ips() -> std::collections::HashSet<IpAddr> {
    let mut out = std::collections::HashSet::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.insert(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.insert(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

fn addr(family: u16, raw: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(*raw)).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// How a connect ended, from its record's `end` and `err` (`sk_err` when
/// the socket closed): `None` when the end was not seen.
pub fn connect_outcome(end: u8, err: i32) -> Option<ConnectOutcome> {
    match end {
        tcp_event::END_ESTABLISHED => Some(ConnectOutcome::Established),
        tcp_event::END_CLOSED => Some(match err {
            // A reset answered the SYN (or an ICMP port unreachable).
            libc::ECONNREFUSED => ConnectOutcome::Refused,
            libc::ETIMEDOUT => ConnectOutcome::TimedOut,
            // The ICMP destination-unreachable codes (`icmp_err_convert`),
            // time exceeded, and their IPv6 counterparts.
            libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN | libc::ENONET => {
                ConnectOutcome::Unreachable
            }
            other => ConnectOutcome::Other(other),
        }),
        _ => None,
    }
}

/// The packets one record stands for, in wire order: a reset answering a
/// SYN to a closed port is that SYN and the reset. `at` is the record's
/// monotonic time (`bpf_ktime_get_ns`). Empty for a malformed record. A
/// connect's SYN carries its process and, when its end was seen, how it
/// ended and how long after the first SYN.
pub fn to_events(rec: &TcpEventRecord, at: Duration) -> Vec<TcpEvent> {
    let (Some(src), Some(dst)) = (
        addr(rec.family, &rec.saddr, rec.sport),
        addr(rec.family, &rec.daddr, rec.dport),
    ) else {
        return Vec::new();
    };
    let ev = |kind, src, dst| TcpEvent::seen(at, src, dst, kind);
    match rec.kind {
        tcp_event::SYN_SENT => {
            let mut e = ev(TcpEventKind::Syn, src, dst);
            // The upper half of `bpf_get_current_pid_tgid` is the tgid.
            e.pid = Some((rec.pid_tgid >> 32) as u32).filter(|p| *p != 0);
            e.connect = connect_outcome(rec.end, rec.err).map(|outcome| ConnectResult {
                took: Duration::from_nanos(rec.took_ns),
                outcome,
            });
            vec![e]
        }
        tcp_event::SYN_RECV => vec![ev(TcpEventKind::Syn, src, dst)],
        tcp_event::RST_RECEIVED => vec![ev(TcpEventKind::Reset, src, dst)],
        tcp_event::RST_SENT if rec.flags & tcp_event::FLAG_ANSWERED_SYN != 0 => vec![
            ev(TcpEventKind::Syn, dst, src),
            ev(TcpEventKind::Reset, src, dst),
        ],
        tcp_event::RST_SENT => vec![ev(TcpEventKind::Reset, src, dst)],
        _ => Vec::new(),
    }
}

/// The segments reported lately, to report each traced segment once
/// (see [`MAX_RECENT`] for its bound).
#[derive(Debug)]
pub struct Dedup {
    /// (is a SYN, src, dst) → time of the last event reported.
    recent: HashMap<(bool, SocketAddr, SocketAddr), Duration>,
    cap: usize,
}

impl Default for Dedup {
    fn default() -> Self {
        Self::with_cap(MAX_RECENT)
    }
}

impl Dedup {
    /// A dedup table of at most `cap` segments.
    pub fn with_cap(cap: usize) -> Self {
        Self {
            recent: HashMap::new(),
            cap,
        }
    }

    /// Segments remembered now.
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// The events of one take that are not a traced twin of one reported
    /// within [`SAME_SEGMENT`], in order; then forgets what is older than
    /// 10 × [`SAME_SEGMENT`] before the newest. A twin that knows more than
    /// the event reported (a connect's process and result, which only the
    /// connecting side's record has) gives it to that event when it is in
    /// this take, and is reported itself when that event went out in an
    /// earlier take (a connect result is never lost; the SYN is then seen
    /// twice, possible only when the listener's record came first, as with
    /// TCP Fast Open).
    pub fn filter(&mut self, events: Vec<TcpEvent>) -> Vec<TcpEvent> {
        let mut out: Vec<TcpEvent> = Vec::with_capacity(events.len());
        let (mut refused, mut pruned) = (0u64, false);
        for e in events {
            let key = (e.kind == TcpEventKind::Syn, e.src, e.dst);
            if let Some(prev) = self.recent.get(&key) {
                if prev.abs_diff(e.at) < SAME_SEGMENT {
                    if e.pid.is_none() && e.connect.is_none() {
                        continue;
                    }
                    let twin = out.iter_mut().rev().find(|o| {
                        (o.kind == TcpEventKind::Syn, o.src, o.dst) == key
                            && o.at.abs_diff(e.at) < SAME_SEGMENT
                    });
                    if let Some(twin) = twin {
                        twin.pid = twin.pid.or(e.pid);
                        twin.connect = twin.connect.or(e.connect);
                        continue;
                    }
                }
            }
            if self.recent.len() >= self.cap && !self.recent.contains_key(&key) && !pruned {
                // Full: what cannot be a twin of this event any more goes.
                let at = e.at;
                self.recent
                    .retain(|_, t| at.saturating_sub(*t) < SAME_SEGMENT);
                pruned = true;
            }
            if self.recent.len() < self.cap || self.recent.contains_key(&key) {
                self.recent.insert(key, e.at);
            } else {
                refused += 1;
            }
            out.push(e);
        }
        crate::drops::dropped("tcp_event_dedup", self.cap, refused);
        if let Some(newest) = out.iter().map(|e| e.at).max() {
            self.recent
                .retain(|_, at| newest.saturating_sub(*at) < 10 * SAME_SEGMENT);
        }
        out
    }
}

/// The ring and what is needed to report each segment once.
pub struct TcpEvents {
    ring: RingBuf<MapData>,
    dedup: Dedup,
    /// Records of the wrong size (never written by our programs).
    malformed: u64,
}

impl TcpEvents {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            dedup: Dedup::default(),
            malformed: 0,
        }
    }

    /// Malformed records seen so far.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Every record the ring holds now, with its monotonic time
    /// (`bpf_ktime_get_ns`, `CLOCK_MONOTONIC`: the scale of
    /// [`crate::clock::Clock::mono`], so no wall-clock step moves it).
    pub fn take_records(&mut self) -> Vec<(TcpEventRecord, Duration)> {
        let mut out = Vec::new();
        while out.len() < MAX_TAKE {
            let Some(item) = self.ring.next() else { break };
            let bytes: &[u8] = &item;
            if bytes.len() < std::mem::size_of::<TcpEventRecord>() {
                self.malformed += 1;
                continue;
            }
            // SAFETY: a TcpEventRecord written by our programs (length
            // checked); read_unaligned copes with any alignment.
            let rec = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<TcpEventRecord>()) };
            out.push((rec, Duration::from_nanos(rec.ts_ns)));
        }
        out
    }

    /// The segments seen since the last call, each once, sides marked local
    /// when loopback or one of `local_ips`.
    pub fn take(&mut self, local_ips: &std::collections::HashSet<IpAddr>) -> Vec<TcpEvent> {
        let records = self.take_records();
        let events = records
            .iter()
            .flat_map(|(rec, at)| to_events(rec, *at))
            .collect();
        let mut out = self.dedup.filter(events);
        let local = |ip: IpAddr| ip.is_loopback() || local_ips.contains(&ip);
        for e in &mut out {
            e.src_local = local(e.src.ip());
            e.dst_local = local(e.dst.ip());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT_6_18: &str = "name: tcp_send_reset
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;
";

    const FORMAT_OLD: &str = "name: tcp_send_reset
format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
";

    #[test]
    fn send_reset_formats_parse() {
        let new = SendResetFormat::parse(FORMAT_6_18);
        assert_eq!(
            new,
            SendResetFormat {
                layout: send_reset::SOCKADDR,
                skbaddr: 8,
                skaddr: 16,
                saddr: 32,
                daddr: 60,
                ..Default::default()
            }
        );
        assert!(new.sees_closed_ports());
        let old = SendResetFormat::parse(FORMAT_OLD);
        assert_eq!(
            old,
            SendResetFormat {
                layout: send_reset::FIELDS,
                skbaddr: 8,
                skaddr: 16,
                sport: 28,
                dport: 30,
                family: 32,
                saddr: 34,
                daddr: 38,
                saddr_v6: 42,
                daddr_v6: 58,
            }
        );
        assert!(!old.sees_closed_ports());
        assert_eq!(SendResetFormat::parse("garbage").layout, send_reset::NONE);
        assert_eq!(SendResetFormat::parse("").layout, send_reset::NONE);
    }

    fn rec(kind: u8, flags: u8) -> TcpEventRecord {
        let mut saddr = [0; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        TcpEventRecord {
            ts_ns: 0,
            pid_tgid: 0,
            saddr,
            daddr,
            sport: 80,
            dport: 40000,
            family: AF_INET,
            kind,
            flags,
            ..TcpEventRecord::zeroed()
        }
    }

    fn syn(src_port: u16, at_ms: u64) -> TcpEvent {
        TcpEvent::seen(
            Duration::from_millis(at_ms),
            SocketAddr::from(([10, 0, 0, 9], src_port)),
            SocketAddr::from(([127, 0, 0, 1], 22)),
            TcpEventKind::Syn,
        )
    }

    #[test]
    fn dedup_is_bounded_forgets_stale_segments_first_and_counts_what_it_refused() {
        // The only test of this binary that reports to this table.
        let before = crate::drops::total("tcp_event_dedup");
        let mut d = Dedup::with_cap(4);
        // Twins (both ends traced) within SAME_SEGMENT are reported once.
        let out = d.filter(vec![syn(1, 0), syn(1, 1), syn(2, 5)]);
        assert_eq!(out.len(), 2);
        assert_eq!(d.len(), 2);
        // A flood of 10 sources at 3 s: the two of 0 s are stale and go
        // first, then 4 are remembered and 6 refused, all 10 reported.
        let flood: Vec<TcpEvent> = (100..110).map(|p| syn(p, 3_000)).collect();
        let out = d.filter(flood);
        assert_eq!(out.len(), 10);
        assert_eq!(d.len(), 4);
        assert_eq!(crate::drops::total("tcp_event_dedup") - before, 6);
        // A remembered one's twin is still suppressed; an unremembered
        // one's twin is reported (the cost of the bound).
        let out = d.filter(vec![syn(100, 3_001), syn(109, 3_001)]);
        assert_eq!(out.iter().map(|e| e.src.port()).collect::<Vec<_>>(), [109]);
        assert_eq!(crate::drops::total("tcp_event_dedup") - before, 7);
        // 20 s later every entry is forgotten and the table takes new ones.
        let out = d.filter(vec![syn(200, 23_001)]);
        assert_eq!(out.len(), 1);
        assert_eq!(d.len(), 1);
        assert_eq!(crate::drops::total("tcp_event_dedup") - before, 7);
    }

    #[test]
    fn a_connect_record_carries_its_process_and_how_it_ended() {
        let at = Duration::from_secs(5);
        let mut r = rec(tcp_event::SYN_SENT, 0);
        r.pid_tgid = (4321u64 << 32) | 4325;
        r.took_ns = 1_003_456_789;
        let cases = [
            (
                tcp_event::END_ESTABLISHED,
                0,
                Some(ConnectOutcome::Established),
            ),
            (
                tcp_event::END_CLOSED,
                libc::ECONNREFUSED,
                Some(ConnectOutcome::Refused),
            ),
            (
                tcp_event::END_CLOSED,
                libc::ETIMEDOUT,
                Some(ConnectOutcome::TimedOut),
            ),
            (
                tcp_event::END_CLOSED,
                libc::EHOSTUNREACH,
                Some(ConnectOutcome::Unreachable),
            ),
            (
                tcp_event::END_CLOSED,
                libc::ENETUNREACH,
                Some(ConnectOutcome::Unreachable),
            ),
            (tcp_event::END_CLOSED, 0, Some(ConnectOutcome::Other(0))),
            (
                tcp_event::END_CLOSED,
                libc::EPROTO,
                Some(ConnectOutcome::Other(libc::EPROTO)),
            ),
            (tcp_event::END_NONE, 0, None),
            (77, 0, None),
        ];
        for (end, err, want) in cases {
            r.end = end;
            r.err = err;
            let ev = to_events(&r, at);
            assert_eq!(ev.len(), 1);
            assert_eq!(ev[0].pid, Some(4321), "the tgid, not the thread id");
            assert_eq!(
                ev[0].connect,
                want.map(|outcome| ConnectResult {
                    took: Duration::from_nanos(1_003_456_789),
                    outcome
                }),
                "end {end} err {err}"
            );
        }
        // Events that are not a connect's carry neither.
        r.pid_tgid = 0;
        assert_eq!(to_events(&r, at)[0].pid, None);
        for kind in [tcp_event::SYN_RECV, tcp_event::RST_RECEIVED] {
            let mut o = rec(kind, 0);
            o.end = tcp_event::END_ESTABLISHED;
            assert!(to_events(&o, at)
                .iter()
                .all(|e| e.pid.is_none() && e.connect.is_none()));
        }
    }

    #[test]
    fn a_twin_gives_its_connect_result_to_the_event_reported() {
        let result = Some(ConnectResult {
            took: Duration::from_millis(3),
            outcome: ConnectOutcome::Refused,
        });
        let with = |at_ms| {
            let mut e = syn(7, at_ms);
            e.pid = Some(9);
            e.connect = result;
            e
        };
        // The reset's SYN first (no process), then the connect's own record.
        let mut d = Dedup::default();
        let out = d.filter(vec![syn(7, 0), with(1)]);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].pid, out[0].connect, out[0].at),
            (Some(9), result, Duration::ZERO)
        );
        // Its twin in the next take is reported (the result is kept).
        let mut d = Dedup::default();
        assert_eq!(d.filter(vec![syn(7, 0)]).len(), 1);
        let out = d.filter(vec![with(1)]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].connect, result);
        // A twin with nothing more is dropped as before.
        assert!(d.filter(vec![syn(7, 2)]).is_empty());
    }

    #[test]
    fn records_become_packets_in_wire_direction() {
        let at = Duration::from_secs(5);
        let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let kinds = |r| {
            to_events(&r, at)
                .iter()
                .map(|e| (e.kind, e.src, e.dst))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kinds(rec(tcp_event::SYN_SENT, 0)),
            [(TcpEventKind::Syn, a, b)]
        );
        assert_eq!(
            kinds(rec(tcp_event::RST_RECEIVED, 0)),
            [(TcpEventKind::Reset, a, b)]
        );
        assert_eq!(
            kinds(rec(tcp_event::RST_SENT, tcp_event::FLAG_NO_SOCKET)),
            [(TcpEventKind::Reset, a, b)]
        );
        assert_eq!(
            kinds(rec(
                tcp_event::RST_SENT,
                tcp_event::FLAG_NO_SOCKET | tcp_event::FLAG_ANSWERED_SYN
            )),
            [(TcpEventKind::Syn, b, a), (TcpEventKind::Reset, a, b)]
        );
        let mut bad = rec(tcp_event::SYN_SENT, 0);
        bad.family = 1;
        assert!(to_events(&bad, at).is_empty());
        assert!(to_events(&rec(99, 0), at).is_empty());
    }
}
