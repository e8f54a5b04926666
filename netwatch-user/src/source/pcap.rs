//! The libpcap source: captures packets (on `any` or one interface) in a
//! background thread, counts transport payload bytes per 5-tuple and
//! direction, and on each [`SocketSource::read`] joins those flows to
//! sockets through the `/proc` socket table, yielding one [`SocketSample`]
//! per socket, and the DNS messages it saw as [`DnsEvent`]s. It never
//! builds wire rows and never decides per-process totals.
//!
//! # What is counted
//! Transport payload bytes from the IP/TCP/UDP length fields (see
//! [`frame`]); snapshot length does not matter. TCP payload is counted
//! once per byte of the stream, by sequence number ([`stream`]): a
//! retransmitted segment, a tail-loss probe or a packet captured twice adds
//! nothing (those bytes are in [`CaptureStats::repeated_bytes`]), and SYN,
//! FIN and pure ACKs carry no payload. So a TCP stream counts exactly what
//! the application wrote; a UDP datagram counts exactly its payload.
//! Counts start when the capture opens ([`CountOrigin::SinceAttach`]).
//!
//! # How flows become sockets
//! A packet from `src` to `dst` is sent by the socket whose local end is
//! `src` and received by the socket whose local end is `dst`; each side is
//! looked up on its own, so a loopback packet credits the sender's `tx` and
//! the receiver's `rx`. A side belongs, in order, to:
//! 1. the socket of the read's scan with that 5-tuple (or, for UDP, the
//!    unconnected socket bound to the port);
//! 2. the socket of the previous read's scan (closed since; its sample is
//!    then `closed`);
//! 3. the socket any scan saw with that 5-tuple, closed since: owners seen
//!    by scans are remembered per 5-tuple until the flow ends (FIN or RST)
//!    plus three reads, or 60 reads without a scan seeing them. Besides the
//!    scan at each read, a SYN wakes a rescan thread (at most one scan per
//!    [`PcapConfig::rescan_gap`]), so sockets that live a little while
//!    between two reads are seen too;
//! 4. TCP: the owner of the listening socket on the local address and port,
//!    for an accepted connection that closed before any scan saw it (the
//!    reply-and-close server). A listener shared by several processes
//!    (pre-fork servers) gives the lowest pid;
//! 5. none: a socket-less flow (`pid: None`, state `UNKNOWN`, closed after
//!    a read with no bytes) if its address is local, counted in
//!    [`CaptureStats::unowned_bytes`]; bytes of flows with no local end
//!    (forwarded traffic) are counted in [`CaptureStats::not_local_bytes`].
//!    Never silently dropped.
//!
//! What stays without an owner: the connecting side of a connection that
//! opened and closed before any scan could see it (a client process doing
//! one short request per connection, sub-millisecond on loopback; a scan of
//! `/proc` takes longer than that), sockets in another network namespace,
//! and sockets no process holds (orphans, `TIME_WAIT`) that no scan saw
//! while they had an owner.
//!
//! # DNS
//! Port-53 UDP payloads and the messages of DNS over TCP (port 53, framed
//! by their length prefix and read once per stream byte, see [`dns`])
//! become [`DnsEvent`]s, handed out by [`SocketSource::take_dns_events`];
//! the snapshot builds the analytics. Only the first
//! [`PcapConfig::snaplen`] bytes of a packet are captured: a DNS-over-TCP
//! segment cut where a message's length or head lies loses that
//! connection's framing (counted in [`CaptureStats::dns_tcp_desyncs`]).
//!
//! # TCP events
//! SYNs (without ACK) and resets become [`TcpEvent`]s, handed out by
//! [`SocketSource::take_tcp_events`] for the alert detectors (port scans,
//! beaconing); at most 65536 between two reads.
//!
//! # Bounded under floods
//! Every table keyed by packets has a fixed cap, an eviction rule and
//! counts what it refused in [`crate::drops`] (`netwatch_agent_table_dropped_total`):
//! - flows between two reads (`pcap_flows`): [`MAX_FLOWS`] of 5-tuples no
//!   socket of the last scan has; a new one past that is refused (its
//!   bytes are lost records, [`CaptureStats::flow_overflow`]), one without
//!   payload (a bare SYN or reset) already past half of it. Flows of the
//!   sockets the last read's scan saw are always kept, so a flood of
//!   forged flows cannot take a known connection's bytes;
//! - TCP stream directions (`pcap_tcp_streams`, see [`stream`]): a new one
//!   past the cap is counted without the sequence rule; a reset never
//!   starts one, a bare SYN only below [`stream::MAX_HALF_OPEN`]
//!   (`pcap_half_open`);
//! - DNS messages and TCP events between two reads (`pcap_dns_events`,
//!   `pcap_tcp_events`): [`MAX_DNS_EVENTS`], [`MAX_TCP_EVENTS`], the rest
//!   refused;
//! - DNS-over-TCP directions (`dns_tcp_streams`):
//!   [`dns::MAX_TCP_DIRECTIONS`], a new one past that is not read;
//! - socket-less flows per read (`pcap_unowned_flows`):
//!   [`MAX_UNOWNED_FLOWS`] get a row each, the bytes of the others are
//!   summed into one row per protocol (no address, no owner): kept, not
//!   itemised;
//! - remembered owners (`pcap_owners`): the least recently seen go first.
//!
//! # Limits
//! Every socket in the table is reported, with zero counters if no payload
//! was seen. On `any`, UDP crossing several interfaces of this host
//! (bridges, veth, tunnels) is seen once per interface, and so is TCP whose
//! 5-tuple is rewritten on the way (NAT); a DNS message is one event
//! however many interfaces it was captured on ([`dns::DnsReader`]).

pub mod dns;
pub mod frame;
pub mod stream;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pcap::{Active, BreakLoop, Capture, Device};

use self::frame::{decode_captured, LinkType};
use self::stream::Streams;
use crate::procinfo::sockets::{canonical, SocketEntry, SocketTable};
use crate::source::{
    CountOrigin, DnsEvent, Protocol, SampleBatch, SocketId, SocketSample, SocketSource, TcpEvent,
    TcpEventKind,
};

/// How to open the capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapConfig {
    /// Interface to capture on; `None` for all of them (`any`).
    pub device: Option<String>,
    /// Bytes captured per packet. Byte counts never depend on it; DNS
    /// analytics need the question, which fits well within the default.
    pub snaplen: i32,
    /// Kernel capture buffer, bytes.
    pub buffer_size: i32,
    /// The libpcap read timeout: about the longest a captured packet waits
    /// in the kernel buffer before netwatch sees it. (Shutdown does not
    /// depend on it: dropping the source breaks the capture loop.)
    pub timeout_ms: i32,
    /// Deliver each packet at once instead of in buffered blocks.
    pub immediate: bool,
    /// Optional BPF filter (`tcpdump` syntax) applied in the kernel.
    pub filter: Option<String>,
    /// Scan the socket table again when a new connection (a SYN) is seen,
    /// so sockets that open and close between two reads still get an
    /// owner; at most once per this gap, and never more often than keeps
    /// the rescans to a tenth of one core (the wait after a scan is at least
    /// nine times what it took). `None`: only the scan of each read.
    pub rescan_gap: Option<Duration>,
}

impl Default for PcapConfig {
    fn default() -> Self {
        Self {
            device: None,
            snaplen: 512,
            buffer_size: 8 << 20,
            timeout_ms: 100,
            immediate: false,
            filter: None,
            rescan_gap: Some(Duration::from_millis(100)),
        }
    }
}

/// Opening the capture failed.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("opening pcap capture on `{device}`: {error}{hint}")]
    Open {
        device: String,
        error: pcap::Error,
        /// What to do about it, when the message says.
        hint: &'static str,
    },
    #[error("pcap capture on `{device}` has link type {dlt} ({name}), which netwatch cannot decode; capture on `any` or another interface")]
    UnsupportedLinkType {
        device: String,
        dlt: i32,
        name: String,
    },
    #[error("setting capture filter `{filter}` on `{device}`: {error}")]
    Filter {
        device: String,
        filter: String,
        error: pcap::Error,
    },
    #[error("starting a pcap source thread: {0}")]
    Thread(std::io::Error),
}

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
    /// Payload bytes new to the stream (TCP: see [`stream`]).
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
/// How often a capture thread reads the kernel's drop count.
pub(crate) const STATS_EVERY: Duration = Duration::from_millis(250);
/// How often ended and idle TCP streams are forgotten.
pub(crate) const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// What the capture thread fills and `read` drains.
#[derive(Debug, Default)]
struct Shared {
    flows: HashMap<FlowKey, FlowCount>,
    streams: Streams,
    dns: dns::DnsReader,
    /// SYNs and resets, for the alert detectors (locality filled at read).
    tcp_events: Vec<TcpEvent>,
    /// Both directions of the connected sockets the last read's scan saw
    /// with an owner: always given a flow, whatever the flood.
    known: HashSet<FlowKey>,
    /// New flows refused (the table was full) since the last read.
    refused_flows: u64,
    /// TCP events refused since the last read.
    refused_tcp_events: u64,
    /// Half-open directions refused, as last reported.
    reported_half_open: u64,
    stats: CaptureStats,
    /// A SYN was seen since the resolver last looked.
    opened: bool,
}

impl Shared {
    /// Count one captured frame. `arrival` is when the capture thread read
    /// it (monotonic, [`crate::clock::mono_now`]): the time every window
    /// and expiry uses. `captured` is libpcap's timestamp (wall clock),
    /// kept only for DNS latency.
    fn observe(
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
                    self.tcp_events.push(TcpEvent {
                        at: arrival,
                        src,
                        dst,
                        kind,
                        src_local: false,
                        dst_local: false,
                        pid: None,
                        connect: None,
                    });
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
    fn expire(&mut self, now: Duration) {
        self.streams.expire(now);
        self.dns.expire(now);
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Poisoned only if the capture thread panicked mid-update (the
    // supervisor restarts it); flows and counters stay usable, at worst one
    // packet is missing.
    crate::supervise::lock(m, "pcap flows")
}

/// Per-socket sample source over a live libpcap capture (Linux).
pub struct PcapSource {
    device: String,
    link: LinkType,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    /// Wakes the capture thread out of `poll` (libpcap's timeout does not
    /// fire while no packet arrives with TPACKET_V3).
    breaker: BreakLoop,
    /// The capture thread, supervised as `pcap_capture` (restarted: the
    /// capture handle belongs to its body and outlives a panic).
    thread: Option<crate::supervise::Worker>,
    resolver: Arc<Resolver>,
    /// The rescan thread, supervised as `pcap_rescan` (restarted).
    resolver_thread: Option<crate::supervise::Worker>,
    joiner: FlowJoiner,
    local_ips: HashSet<IpAddr>,
    /// The capture's read timeout: the longest a captured packet waits in
    /// libpcap's buffer before the capture thread sees it.
    timeout: Duration,
    /// Untracked TCP segments, DNS overflow and refused DNS-over-TCP
    /// directions already reported as drops.
    reported: (u64, u64, u64),
}

impl std::fmt::Debug for PcapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapSource")
            .field("device", &self.device)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl PcapSource {
    /// Capture on `device` (`None`: all interfaces, `any`) with the default
    /// [`PcapConfig`]. Counting starts now.
    ///
    /// Needs root or `CAP_NET_RAW`; the error says so when that is the cause.
    pub fn open(device: Option<&str>) -> Result<Self, PcapError> {
        Self::with_config(PcapConfig {
            device: device.map(str::to_string),
            ..PcapConfig::default()
        })
    }

    /// Open the capture as `config` says and start the capture thread.
    /// Counting starts now.
    pub fn with_config(config: PcapConfig) -> Result<Self, PcapError> {
        let (mut cap, link, device) = open_capture(&config)?;
        let breaker = cap.breakloop_handle();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let resolver = Arc::new(Resolver::default());
        // Started first: if it cannot start, no capture thread is left running.
        let resolver_thread = match config.rescan_gap {
            Some(gap) => {
                let r = Arc::clone(&resolver);
                Some(
                    crate::supervise::Worker::spawn(
                        "pcap_rescan",
                        "netwatch-pcap-scan",
                        crate::supervise::Policy::Restart,
                        move || {
                            r.run(gap);
                            Ok(())
                        },
                    )
                    .map_err(PcapError::Thread)?,
                )
            }
            None => None,
        };
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            let wake = resolver_thread.is_some().then(|| Arc::clone(&resolver));
            let mut cap = cap;
            crate::supervise::Worker::spawn(
                "pcap_capture",
                "netwatch-pcap",
                crate::supervise::Policy::Restart,
                move || {
                    let mut sink = FlowSink {
                        link,
                        shared: &shared,
                        resolver: wake.as_deref(),
                    };
                    run_capture(&mut cap, "pcap_capture", "the capture", &stop, &mut sink)
                },
            )
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                resolver.stop();
                drop(resolver_thread);
                return Err(PcapError::Thread(e));
            }
        };
        let mut source = Self {
            device,
            link,
            shared,
            stop,
            breaker,
            thread: Some(thread),
            resolver,
            resolver_thread,
            joiner: FlowJoiner::default(),
            local_ips: HashSet::new(),
            timeout: Duration::from_millis(config.timeout_ms.max(1) as u64),
            reported: (0, 0, 0),
        };
        source.refresh_local_ips();
        Ok(source)
    }

    /// The device captured on (`any` when none was named).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The capture's link type.
    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// Capture counters since the capture opened.
    pub fn stats(&self) -> CaptureStats {
        let mut st = lock(&self.shared).stats;
        st.rescans = self.resolver.scans();
        let j = &self.joiner.stats;
        st.unowned_bytes = j.unowned_bytes;
        st.remembered_owner_bytes = j.remembered_owner_bytes;
        st.listener_owner_bytes = j.listener_owner_bytes;
        st.not_local_bytes = j.not_local_bytes;
        st
    }

    /// Addresses of this host's interfaces, for telling which end of a
    /// socket-less flow is local. Kept as is if listing fails.
    fn refresh_local_ips(&mut self) {
        if let Ok(devices) = Device::list() {
            self.local_ips = devices
                .iter()
                .flat_map(|d| d.addresses.iter().map(|a| a.addr.to_canonical()))
                .collect();
        }
    }
}

impl SocketSource for PcapSource {
    fn name(&self) -> &'static str {
        "pcap"
    }

    /// Packets captured before the stop wait up to one read timeout in the
    /// kernel's capture block, then the capture thread counts them: twice
    /// that, and a margin for scheduling.
    fn settle(&mut self) {
        std::thread::sleep(2 * self.timeout + Duration::from_millis(50));
    }

    fn read(&mut self) -> anyhow::Result<SampleBatch> {
        let (flows, refused_flows, refused_tcp, untracked, dns_overflow, dns_tcp_refused) = {
            let mut sh = lock(&self.shared);
            let refused = (
                std::mem::take(&mut sh.refused_flows),
                std::mem::take(&mut sh.refused_tcp_events),
            );
            sh.stats.tcp_events_overflow += refused.1;
            let untracked = sh.streams.untracked();
            let half_open = sh.streams.refused_half_open();
            crate::drops::dropped(
                "pcap_half_open",
                stream::MAX_HALF_OPEN,
                half_open.saturating_sub(std::mem::replace(&mut sh.reported_half_open, half_open)),
            );
            let dns_overflow = sh.stats.dns_overflow;
            (
                std::mem::take(&mut sh.flows),
                refused.0,
                refused.1,
                untracked,
                dns_overflow,
                sh.dns.tcp().refused(),
            )
        };
        crate::drops::dropped("pcap_flows", MAX_FLOWS, refused_flows);
        crate::drops::dropped("pcap_tcp_events", MAX_TCP_EVENTS, refused_tcp);
        crate::drops::dropped(
            "pcap_tcp_streams",
            stream::MAX_STREAMS,
            untracked.saturating_sub(self.reported.0),
        );
        crate::drops::dropped(
            "pcap_dns_events",
            MAX_DNS_EVENTS,
            dns_overflow.saturating_sub(self.reported.1),
        );
        crate::drops::dropped(
            "dns_tcp_streams",
            dns::MAX_TCP_DIRECTIONS,
            dns_tcp_refused.saturating_sub(self.reported.2),
        );
        self.reported = (untracked, dns_overflow, dns_tcp_refused);
        // The capture thread ends only when stopped or given up on.
        if let Some(t) = self.thread.as_ref().filter(|t| t.is_finished()) {
            anyhow::bail!(
                "pcap capture on `{}` stopped: {}",
                self.device,
                t.status()
                    .last_failure
                    .unwrap_or_else(|| "the capture thread ended".into())
            );
        }
        let table = SocketTable::scan()
            .context("pcap: reading the socket table to attribute captured flows")?;
        self.refresh_local_ips();
        let learned = self.resolver.take_learned();
        let local = &self.local_ips;
        let known: HashSet<FlowKey> = table
            .entries()
            .iter()
            .filter(|e| e.inode != 0 && e.owner.is_some())
            .filter_map(|e| {
                let (local, remote) = (canonical(e.local), canonical(e.remote?));
                Some([
                    FlowKey {
                        protocol: e.protocol,
                        src: local,
                        dst: remote,
                    },
                    FlowKey {
                        protocol: e.protocol,
                        src: remote,
                        dst: local,
                    },
                ])
            })
            .flatten()
            .collect();
        lock(&self.shared).known = known;
        let samples = self.joiner.apply(&flows, learned, table, |ip| {
            ip.is_loopback() || local.contains(&ip)
        });
        Ok(SampleBatch {
            taken_at: Instant::now(),
            samples,
            lost_records: self.stats().lost_records(),
            estimated: false,
            omitted: None,
        })
    }

    /// The DNS messages captured since the previous call (the first call:
    /// since the capture opened). Always `Some`: a capture sees DNS.
    fn take_dns_events(&mut self) -> Option<Vec<DnsEvent>> {
        Some(lock(&self.shared).dns.take())
    }

    fn sees_packets(&self) -> bool {
        true
    }

    /// The SYNs and resets captured since the previous call, each side
    /// marked local when it is loopback or one of this host's addresses.
    fn take_tcp_events(&mut self) -> Option<Vec<TcpEvent>> {
        // `read` refreshed the local addresses this tick.
        let mut events = std::mem::take(&mut lock(&self.shared).tcp_events);
        let local = |ip: IpAddr| ip.is_loopback() || self.local_ips.contains(&ip);
        for e in &mut events {
            e.src_local = local(e.src.ip());
            e.dst_local = local(e.dst.ip());
        }
        Some(events)
    }
}

impl Drop for PcapSource {
    fn drop(&mut self) {
        self.resolver.stop();
        drop(self.resolver_thread.take());
        self.stop.store(true, Ordering::Relaxed);
        // pcap_breakloop wakes a blocked pcap_next_ex (an eventfd on Linux,
        // libpcap ≥ 1.10) and stays armed if the thread is not blocked yet.
        self.breaker.breakloop();
        drop(self.thread.take());
    }
}

/// Open a live capture as `config` says (device, snapshot length, buffer,
/// timeout, filter; never promiscuous): the handle, its link type and the
/// device's name. Shared by this source and the DNS-only capture
/// (`crate::source::dns_capture`).
pub(crate) fn open_capture(
    config: &PcapConfig,
) -> Result<(Capture<Active>, LinkType, String), PcapError> {
    let device = config.device.clone().unwrap_or_else(|| "any".to_string());
    let open_err = |source: pcap::Error| {
        let hint = open_hint(&source.to_string());
        PcapError::Open {
            device: device.clone(),
            error: source,
            hint,
        }
    };
    let mut cap = Capture::from_device(device.as_str())
        .map_err(open_err)?
        .snaplen(config.snaplen.max(128))
        .buffer_size(config.buffer_size)
        .timeout(config.timeout_ms.max(1))
        .immediate_mode(config.immediate)
        .promisc(false)
        .open()
        .map_err(open_err)?;
    let dlt = cap.get_datalink();
    let link = LinkType::from_dlt(dlt.0).ok_or_else(|| PcapError::UnsupportedLinkType {
        device: device.clone(),
        dlt: dlt.0,
        name: dlt.get_name().unwrap_or_else(|_| "unknown".into()),
    })?;
    if let Some(filter) = &config.filter {
        cap.filter(filter, true)
            .map_err(|source| PcapError::Filter {
                device: device.clone(),
                filter: filter.clone(),
                error: source,
            })?;
    }
    Ok((cap, link, device))
}

fn open_hint(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("permission") || m.contains("not permitted") {
        " (capturing needs root or CAP_NET_RAW)"
    } else if m.contains("no such device") || m.contains("doesn't exist") {
        " (no such interface; list them with `ip link`)"
    } else {
        ""
    }
}

/// What a capture thread does with what it reads ([`run_capture`]).
pub(crate) trait CaptureSink {
    /// One packet, read from the capture at `arrival` (the monotonic
    /// clock: libpcap's own stamp, `captured`, is wall-clock time, which a
    /// clock step moves); `wire_len` is its length on the wire.
    fn packet(&mut self, data: &[u8], wire_len: usize, arrival: Duration, captured: Duration);
    /// The kernel's count of packets it dropped for this capture.
    fn kernel_drops(&mut self, dropped: u64);
    /// Forget state older than its window, as of monotonic `now`.
    fn expire(&mut self, now: Duration);
}

/// Read packets into `sink` until stopped (`Ok`) or the capture fails
/// (`Err`, naming `what`: the supervisor tries the same capture again after
/// a backoff). `point` names the thread for fault injection. Kernel drops
/// are read every [`STATS_EVERY`], state expired every [`EXPIRE_EVERY`].
pub(crate) fn run_capture(
    cap: &mut Capture<Active>,
    point: &'static str,
    what: &str,
    stop: &AtomicBool,
    sink: &mut impl CaptureSink,
) -> Result<(), String> {
    let mut last_stats = Instant::now();
    let mut last_expiry = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        crate::supervise::fault::point(point);
        match cap.next_packet() {
            Ok(p) => {
                let arrival = crate::clock::mono_now();
                let captured = timestamp(p.header.ts);
                let wire_len = usize::try_from(p.header.len).unwrap_or(usize::MAX);
                sink.packet(p.data, wire_len, arrival, captured);
            }
            Err(pcap::Error::TimeoutExpired) => {}
            // Woken by pcap_breakloop (reported as "no more packets").
            Err(_) if stop.load(Ordering::Relaxed) => return Ok(()),
            Err(e) => return Err(format!("reading {what}: {e}")),
        }
        if last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            if let Ok(s) = cap.stats() {
                sink.kernel_drops(u64::from(s.dropped));
            }
        }
        if last_expiry.elapsed() >= EXPIRE_EVERY {
            last_expiry = Instant::now();
            sink.expire(crate::clock::mono_now());
        }
    }
    Ok(())
}

/// The pcap source's capture thread: counts flows, wakes the rescan
/// thread when a connection opens.
struct FlowSink<'a> {
    link: LinkType,
    shared: &'a Mutex<Shared>,
    resolver: Option<&'a Resolver>,
}

impl CaptureSink for FlowSink<'_> {
    fn packet(&mut self, data: &[u8], wire_len: usize, arrival: Duration, captured: Duration) {
        let opened = {
            let mut s = lock(self.shared);
            s.observe(self.link, data, wire_len, arrival, captured);
            std::mem::take(&mut s.opened)
        };
        if let (true, Some(r)) = (opened, self.resolver) {
            r.wake();
        }
    }

    fn kernel_drops(&mut self, dropped: u64) {
        lock(self.shared).stats.kernel_drops = dropped;
    }

    fn expire(&mut self, now: Duration) {
        lock(self.shared).expire(now);
    }
}

/// Socket tables learned from rescans, kept between two reads.
const MAX_LEARNED: usize = 1 << 18;
/// After a rescan that took `t`, the next waits at least `t` times this.
const RESCAN_IDLE_FACTOR: u32 = 9;

/// The rescan thread's state: woken by the capture thread when a SYN is
/// seen, it scans the socket table (at most once per gap) and keeps every
/// owned connected or listening socket it saw until the next read.
#[derive(Debug, Default)]
struct Resolver {
    state: Mutex<ResolverState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct ResolverState {
    pending: bool,
    stop: bool,
    learned: HashMap<(Protocol, SocketAddr, Option<SocketAddr>), SocketEntry>,
    scans: u64,
}

impl Resolver {
    fn lock(&self) -> MutexGuard<'_, ResolverState> {
        crate::supervise::lock(&self.state, "pcap rescans")
    }

    fn wake(&self) {
        self.lock().pending = true;
        self.cv.notify_one();
    }

    fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    fn scans(&self) -> u64 {
        self.lock().scans
    }

    fn take_learned(&self) -> Vec<SocketEntry> {
        std::mem::take(&mut self.lock().learned)
            .into_values()
            .collect()
    }

    fn run(&self, gap: Duration) {
        loop {
            {
                let mut g = self.lock();
                while !g.pending && !g.stop {
                    g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                if g.stop {
                    return;
                }
                g.pending = false;
            }
            crate::supervise::fault::point("pcap_rescan");
            // A failed scan only means fewer owners learned; the read's own
            // scan reports errors.
            let started = Instant::now();
            let table = SocketTable::scan().ok();
            let took = started.elapsed();
            let mut g = self.lock();
            g.scans += 1;
            for e in table.iter().flat_map(|t| t.entries()) {
                let wanted = e.inode != 0
                    && e.owner.is_some()
                    && (e.remote.is_some() || e.state == "LISTEN");
                let key = (e.protocol, e.local, e.remote);
                if wanted && (g.learned.len() < MAX_LEARNED || g.learned.contains_key(&key)) {
                    g.learned.insert(key, e.clone());
                }
            }
            let until = Instant::now() + gap.max(took * RESCAN_IDLE_FACTOR);
            loop {
                let now = Instant::now();
                if g.stop {
                    return;
                }
                if now >= until {
                    break;
                }
                g = self
                    .cv
                    .wait_timeout(g, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}

/// A capture timestamp as time since the Unix epoch (0 if before it).
pub(crate) fn timestamp(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0).min(999_999);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

/// Socket-less flows given a row of their own per read; the bytes of the
/// others are summed into one row per protocol ([`SocketKey::Overflow`]).
pub const MAX_UNOWNED_FLOWS: usize = 1_024;

/// Which socket a side of a flow belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SocketKey {
    /// The socket-less flows past [`MAX_UNOWNED_FLOWS`] of one read.
    Overflow(Protocol),
    /// A socket of the table, or one a scan saw and that is gone now.
    Inode(u64),
    /// A local endpoint of a socket no scan saw.
    Flow {
        protocol: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
    },
}

#[derive(Debug, Clone)]
struct Counted {
    id: SocketId,
    protocol: Protocol,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    state: &'static str,
    pid: Option<u32>,
    comm: Option<String>,
    rx_bytes: u64,
    tx_bytes: u64,
    /// Bytes were credited on the current read.
    active: bool,
}

impl Counted {
    fn refresh(&mut self, e: &SocketEntry) {
        self.local = e.local;
        self.remote = e.remote;
        self.state = e.state;
        if let Some(o) = &e.owner {
            self.pid = Some(o.pid);
            self.comm = Some(o.comm.clone());
        }
    }

    fn own(&mut self, m: &Remembered) {
        if self.pid.is_none() {
            self.pid = Some(m.pid);
            self.comm = Some(m.comm.clone());
        }
    }
}

/// The owner a scan saw for a socket, kept after the socket is gone.
#[derive(Debug, Clone)]
struct Remembered {
    inode: u64,
    pid: u32,
    comm: String,
    /// The last read whose scans saw the socket.
    seen: u64,
    /// The read in which its flow was seen ending (FIN or RST).
    ended: Option<u64>,
}

/// An owner is kept this many reads after its flow ended (late packets of
/// the other direction, capture lag).
const END_GRACE_READS: u64 = 3;
/// An owner whose socket no scan saw and whose flow did not end is kept
/// this many reads (a lost FIN, a connected UDP socket closed).
const IDLE_READS: u64 = 60;
/// Owners kept at most; the least recently seen go first.
const MAX_OWNERS: usize = 1 << 18;

/// Where the joiner's bytes went, since the source started.
#[derive(Debug, Clone, Copy, Default)]
struct JoinStats {
    unowned_bytes: u64,
    remembered_owner_bytes: u64,
    listener_owner_bytes: u64,
    not_local_bytes: u64,
}

/// Turns drained flow counters into cumulative per-socket counters. Pure:
/// it is given the socket tables and a locality test, so it is tested
/// without a capture.
///
/// A side of a flow belongs, in order, to: the socket of the current table
/// with its 5-tuple; the one of the previous table (closed since); the
/// socket a scan saw with that 5-tuple, whose owner is remembered until its
/// flow ends (FIN/RST) plus [`END_GRACE_READS`]; for TCP, the owner of the
/// listening socket on its local address and port (an accepted connection
/// that closed before any scan saw it); else a socket-less flow with no
/// owner, counted in [`JoinStats::unowned_bytes`] (if its address is local;
/// forwarded traffic is counted in [`JoinStats::not_local_bytes`]).
#[derive(Debug, Default)]
struct FlowJoiner {
    sockets: HashMap<SocketKey, Counted>,
    previous: SocketTable,
    owners: HashMap<(Protocol, SocketAddr, SocketAddr), Remembered>,
    listeners: HashMap<(Protocol, SocketAddr), Remembered>,
    reads: u64,
    next_id: u64,
    stats: JoinStats,
    /// Socket-less flows given a row of their own in this read.
    unowned: usize,
    /// Socket-less flow sides summed into an overflow row in this read.
    folded: u64,
}

#[derive(Clone, Copy)]
enum Side {
    Tx,
    Rx,
}

impl FlowJoiner {
    /// One read: `learned` are sockets seen by rescans since the previous
    /// read, `table` the read's own scan.
    fn apply(
        &mut self,
        flows: &HashMap<FlowKey, FlowCount>,
        learned: Vec<SocketEntry>,
        table: SocketTable,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Vec<SocketSample> {
        self.reads += 1;
        self.unowned = 0;
        for c in self.sockets.values_mut() {
            c.active = false;
        }
        for e in learned.iter().chain(table.entries()) {
            self.learn(e);
        }
        for e in table.entries().iter().filter(|e| e.inode != 0) {
            let c = self.counted(SocketKey::Inode(e.inode), e.protocol, e.local, e.remote);
            c.refresh(e);
        }
        for (f, c) in flows {
            if c.bytes == 0 {
                continue;
            }
            let opened = c.opened || flows.get(&reverse(f)).is_some_and(|r| r.opened);
            self.credit(
                &table,
                f.protocol,
                f.src,
                f.dst,
                Side::Tx,
                c.bytes,
                opened,
                &is_local,
            );
            self.credit(
                &table,
                f.protocol,
                f.dst,
                f.src,
                Side::Rx,
                c.bytes,
                opened,
                &is_local,
            );
        }

        let mut samples = Vec::with_capacity(self.sockets.len());
        let mut gone = Vec::new();
        for (key, c) in &self.sockets {
            let closed = match key {
                SocketKey::Inode(inode) => table.by_inode(*inode).is_none(),
                SocketKey::Flow { .. } | SocketKey::Overflow(_) => !c.active,
            };
            if closed {
                gone.push(*key);
            }
            samples.push(SocketSample {
                id: c.id,
                protocol: c.protocol,
                local: (!matches!(key, SocketKey::Overflow(_))).then_some(c.local),
                remote: c.remote.filter(|_| !matches!(key, SocketKey::Overflow(_))),
                state: if closed { "CLOSED" } else { c.state }.into(),
                pid: c.pid,
                comm: c.comm.as_deref().map(Into::into),
                cgroup_id: None,
                rx_bytes: c.rx_bytes,
                tx_bytes: c.tx_bytes,
                rtt_us: None,
                tcp: None,
                closed,
                origin: CountOrigin::SinceAttach,
            });
        }
        for key in gone {
            self.sockets.remove(&key);
        }
        self.previous = table;
        // A flood's read left a big map: give the memory back.
        if self.sockets.capacity() > 4 * self.sockets.len() + 4_096 {
            self.sockets.shrink_to_fit();
        }
        self.forget(flows);
        crate::drops::dropped(
            "pcap_unowned_flows",
            MAX_UNOWNED_FLOWS,
            std::mem::take(&mut self.folded),
        );
        samples.sort_by_key(|s| s.id);
        samples
    }

    /// Remember the owner of a connected or listening socket a scan saw.
    fn learn(&mut self, e: &SocketEntry) {
        let Some(o) = e.owner.as_ref().filter(|_| e.inode != 0) else {
            return;
        };
        let fresh = |ended| Remembered {
            inode: e.inode,
            pid: o.pid,
            comm: o.comm.clone(),
            seen: self.reads,
            ended,
        };
        match e.remote {
            Some(remote) => {
                let key = (e.protocol, e.local, remote);
                let ended = self
                    .owners
                    .get(&key)
                    .filter(|m| m.inode == e.inode)
                    .and_then(|m| m.ended);
                self.owners.insert(key, fresh(ended));
            }
            None if e.protocol == Protocol::Tcp && e.state == "LISTEN" => {
                self.listeners.insert((e.protocol, e.local), fresh(None));
            }
            None => {}
        }
    }

    /// Expire remembered owners: flows that ended past the grace, sockets
    /// no scan saw for a long time, the oldest past the bound.
    fn forget(&mut self, flows: &HashMap<FlowKey, FlowCount>) {
        let now = self.reads;
        for f in flows.iter().filter(|(_, c)| c.ended).map(|(f, _)| f) {
            for key in [(f.protocol, f.src, f.dst), (f.protocol, f.dst, f.src)] {
                if let Some(m) = self.owners.get_mut(&key) {
                    m.ended.get_or_insert(now);
                }
            }
        }
        self.owners.retain(|_, m| match m.ended {
            Some(e) => now - e < END_GRACE_READS,
            None => now - m.seen < IDLE_READS,
        });
        self.listeners.retain(|_, m| now - m.seen < IDLE_READS);
        if self.owners.len() > MAX_OWNERS {
            let mut by_age: Vec<(u64, (Protocol, SocketAddr, SocketAddr))> =
                self.owners.iter().map(|(k, m)| (m.seen, *k)).collect();
            by_age.sort_unstable();
            let excess = self.owners.len() - MAX_OWNERS;
            crate::drops::dropped("pcap_owners", MAX_OWNERS, excess as u64);
            for (_, k) in by_age.into_iter().take(excess) {
                self.owners.remove(&k);
            }
        }
    }

    /// The listening TCP socket an accepted connection on `local` came
    /// from: bound to exactly `local`, else to the wildcard of its family,
    /// else to the IPv6 wildcard (dual-stack).
    fn listener(&self, local: SocketAddr) -> Option<&Remembered> {
        let port = local.port();
        let wildcard = if local.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        [
            local,
            SocketAddr::new(wildcard, port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ]
        .iter()
        .find_map(|a| self.listeners.get(&(Protocol::Tcp, *a)))
    }

    fn counted(
        &mut self,
        key: SocketKey,
        protocol: Protocol,
        local: SocketAddr,
        remote: Option<SocketAddr>,
    ) -> &mut Counted {
        let next_id = &mut self.next_id;
        self.sockets.entry(key).or_insert_with(|| {
            *next_id += 1;
            Counted {
                id: SocketId {
                    primary: *next_id,
                    secondary: match key {
                        SocketKey::Inode(i) => i,
                        SocketKey::Flow { .. } | SocketKey::Overflow(_) => 0,
                    },
                },
                protocol,
                local,
                remote,
                state: "UNKNOWN",
                pid: None,
                comm: None,
                rx_bytes: 0,
                tx_bytes: 0,
                active: false,
            }
        })
    }

    /// Credit `bytes` to the socket whose local end is `local` talking to
    /// `remote`. `opened`: the flow's SYN was seen in this read.
    #[allow(clippy::too_many_arguments)]
    fn credit(
        &mut self,
        table: &SocketTable,
        protocol: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
        side: Side,
        bytes: u64,
        opened: bool,
        is_local: &impl Fn(IpAddr) -> bool,
    ) {
        let live = |t: &SocketTable| {
            t.lookup(protocol, local, remote)
                .filter(|e| e.inode != 0)
                .map(|e| e.inode)
        };
        let now = self.reads;
        // A remembered owner of an earlier connection on this tuple does not
        // own a connection that opened after it ended.
        let remembered = self
            .owners
            .get(&(protocol, local, remote))
            .filter(|m| !(opened && m.ended.is_some_and(|e| e < now)))
            .cloned();
        let key = if let Some(inode) = live(table) {
            Some(SocketKey::Inode(inode))
        } else if let Some(inode) =
            live(&self.previous).filter(|i| self.sockets.contains_key(&SocketKey::Inode(*i)))
        {
            // Closed since the previous read: its last bytes are its own.
            Some(SocketKey::Inode(inode))
        } else {
            remembered.as_ref().map(|m| SocketKey::Inode(m.inode))
        };
        // A socket the scans saw without an owner (its fd closed between
        // reading /proc/net and the fd walk) is still owned as below.
        let owned = key
            .and_then(|k| self.sockets.get(&k))
            .is_some_and(|c| c.pid.is_some());
        let listener = match protocol {
            Protocol::Tcp => self.listener(local).cloned(),
            Protocol::Udp => None,
        };
        let (key, owner) = match (key, owned, remembered, listener) {
            (Some(k), true, ..) => (k, None),
            (Some(k), false, Some(m), _) => {
                self.stats.remembered_owner_bytes += bytes;
                (k, Some(m))
            }
            (k, false, _, Some(l)) => {
                self.stats.listener_owner_bytes += bytes;
                let k = k.unwrap_or(SocketKey::Flow {
                    protocol,
                    local,
                    remote,
                });
                (k, Some(l))
            }
            (Some(k), ..) => {
                self.stats.unowned_bytes += bytes;
                (k, None)
            }
            (None, ..) if is_local(local.ip()) => {
                self.stats.unowned_bytes += bytes;
                let k = SocketKey::Flow {
                    protocol,
                    local,
                    remote,
                };
                if self.sockets.contains_key(&k) {
                    (k, None)
                } else if self.unowned < MAX_UNOWNED_FLOWS {
                    self.unowned += 1;
                    (k, None)
                } else {
                    self.folded += 1;
                    (SocketKey::Overflow(protocol), None)
                }
            }
            (None, ..) => {
                self.stats.not_local_bytes += bytes;
                return;
            }
        };
        let c = self.counted(key, protocol, local, Some(remote));
        if let Some(m) = &owner {
            c.own(m);
        }
        c.active = true;
        match side {
            Side::Tx => c.tx_bytes += bytes,
            Side::Rx => c.rx_bytes += bytes,
        }
    }
}

fn reverse(f: &FlowKey) -> FlowKey {
    FlowKey {
        protocol: f.protocol,
        src: f.dst,
        dst: f.src,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procinfo::sockets::SocketOwner;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn entry(
        protocol: Protocol,
        inode: u64,
        local: &str,
        remote: Option<&str>,
        pid: u32,
    ) -> SocketEntry {
        SocketEntry {
            protocol,
            inode,
            local: sa(local),
            remote: remote.map(sa),
            state: if remote.is_some() {
                "ESTABLISHED"
            } else {
                "UNCONN"
            },
            owner: Some(SocketOwner {
                pid,
                comm: format!("p{pid}"),
            }),
        }
    }

    fn flows(list: &[(Protocol, &str, &str, u64)]) -> HashMap<FlowKey, FlowCount> {
        list.iter()
            .map(|&(protocol, s, d, n)| {
                (
                    FlowKey {
                        protocol,
                        src: sa(s),
                        dst: sa(d),
                    },
                    FlowCount {
                        bytes: n,
                        ..FlowCount::default()
                    },
                )
            })
            .collect()
    }

    fn find<'a>(s: &'a [SocketSample], local: &str, remote: Option<&str>) -> &'a SocketSample {
        s.iter()
            .find(|x| x.local == Some(sa(local)) && x.remote == remote.map(sa))
            .unwrap_or_else(|| panic!("no sample {local} -> {remote:?} in {s:#?}"))
    }

    const A: &str = "127.0.0.1:40000";
    const B: &str = "127.0.0.1:8080";

    fn loopback_table() -> SocketTable {
        SocketTable::from_entries(vec![
            entry(Protocol::Tcp, 1, A, Some(B), 10),
            entry(Protocol::Tcp, 2, B, Some(A), 20),
            entry(Protocol::Udp, 3, "0.0.0.0:53", None, 30),
            entry(Protocol::Tcp, 4, "0.0.0.0:22", None, 40),
        ])
    }

    fn nothing_local(_: IpAddr) -> bool {
        false
    }

    #[test]
    fn loopback_flow_credits_sender_tx_and_receiver_rx() {
        let mut j = FlowJoiner::default();
        let f = flows(&[(Protocol::Tcp, A, B, 1000), (Protocol::Tcp, B, A, 30)]);
        let s = j.apply(&f, Vec::new(), loopback_table(), nothing_local);
        let client = find(&s, A, Some(B));
        assert_eq!((client.tx_bytes, client.rx_bytes), (1000, 30));
        assert_eq!(
            (client.pid, client.comm.as_deref()),
            (Some(10), Some("p10"))
        );
        assert_eq!(client.origin, CountOrigin::SinceAttach);
        let server = find(&s, B, Some(A));
        assert_eq!((server.tx_bytes, server.rx_bytes), (30, 1000));
        assert_eq!(server.pid, Some(20));
        // Every table socket is reported, idle ones with zero counters.
        let listener = find(&s, "0.0.0.0:22", None);
        assert_eq!(
            (listener.rx_bytes, listener.tx_bytes, listener.closed),
            (0, 0, false)
        );
        assert_eq!(s.len(), 4);

        // Cumulative across reads, same ids.
        let f = flows(&[(Protocol::Tcp, A, B, 5)]);
        let s2 = j.apply(&f, Vec::new(), loopback_table(), nothing_local);
        let client2 = find(&s2, A, Some(B));
        assert_eq!((client2.tx_bytes, client2.rx_bytes), (1005, 30));
        assert_eq!(client2.id, client.id);
    }

    #[test]
    fn unconnected_udp_is_found_by_port_and_sums_peers() {
        let mut j = FlowJoiner::default();
        let f = flows(&[
            (Protocol::Udp, "127.0.0.1:5000", "127.0.0.1:53", 40),
            (Protocol::Udp, "127.0.0.1:53", "127.0.0.1:5000", 100),
            (Protocol::Udp, "10.0.0.9:7000", "10.0.0.1:53", 33),
        ]);
        let s = j.apply(&f, Vec::new(), loopback_table(), |ip| ip.is_loopback());
        let srv = find(&s, "0.0.0.0:53", None);
        assert_eq!((srv.rx_bytes, srv.tx_bytes, srv.pid), (73, 100, Some(30)));
        // The client has no socket in the table but is local: a socket-less flow.
        let cli = find(&s, "127.0.0.1:5000", Some("127.0.0.1:53"));
        assert_eq!((cli.tx_bytes, cli.rx_bytes, cli.pid), (40, 100, None));
        // The remote 10.0.0.9 is not local: no sample for its side.
        assert!(!s.iter().any(|x| x.local == Some(sa("10.0.0.9:7000"))));
        // The socket-less flow closes when it goes idle, and is then forgotten.
        let s = j.apply(&HashMap::new(), Vec::new(), loopback_table(), |ip| {
            ip.is_loopback()
        });
        let cli = find(&s, "127.0.0.1:5000", Some("127.0.0.1:53"));
        assert!(cli.closed);
        assert_eq!(cli.tx_bytes, 40);
        let s = j.apply(&HashMap::new(), Vec::new(), loopback_table(), |ip| {
            ip.is_loopback()
        });
        assert!(!s.iter().any(|x| x.local == Some(sa("127.0.0.1:5000"))));
    }

    #[test]
    fn socket_closed_since_last_read_gets_its_final_bytes_then_is_forgotten() {
        let mut j = FlowJoiner::default();
        j.apply(
            &flows(&[(Protocol::Tcp, A, B, 10)]),
            Vec::new(),
            loopback_table(),
            nothing_local,
        );
        // Both ends closed before this read; their last bytes still arrive.
        let after =
            SocketTable::from_entries(vec![entry(Protocol::Tcp, 4, "0.0.0.0:22", None, 40)]);
        let s = j.apply(
            &flows(&[(Protocol::Tcp, A, B, 7), (Protocol::Tcp, B, A, 3)]),
            Vec::new(),
            after.clone(),
            nothing_local,
        );
        let client = find(&s, A, Some(B));
        assert!(client.closed);
        assert_eq!(client.state, "CLOSED");
        assert_eq!(
            (client.tx_bytes, client.rx_bytes, client.pid),
            (17, 3, Some(10))
        );
        let server = find(&s, B, Some(A));
        assert_eq!(
            (server.tx_bytes, server.rx_bytes, server.closed),
            (3, 17, true)
        );
        let s = j.apply(&HashMap::new(), Vec::new(), after, nothing_local);
        assert_eq!(s.len(), 1);
    }

    fn listening(inode: u64, local: &str, pid: u32) -> SocketEntry {
        SocketEntry {
            state: "LISTEN",
            ..entry(Protocol::Tcp, inode, local, None, pid)
        }
    }

    fn sample_of(s: &[SocketSample], local: &str, remote: &str) -> (u64, u64, Option<u32>, bool) {
        let x = find(s, local, Some(remote));
        (x.tx_bytes, x.rx_bytes, x.pid, x.closed)
    }

    #[test]
    fn closed_sockets_keep_their_remembered_owner_for_late_bytes() {
        let mut j = FlowJoiner::default();
        let both = SocketTable::from_entries(vec![
            entry(Protocol::Tcp, 1, A, Some(B), 10),
            entry(Protocol::Tcp, 2, B, Some(A), 20),
        ]);
        j.apply(&HashMap::new(), Vec::new(), both, nothing_local);
        // Both closed; their bytes arrive over two reads (capture lag).
        let f = flows(&[(Protocol::Tcp, A, B, 100), (Protocol::Tcp, B, A, 50)]);
        let s = j.apply(&f, Vec::new(), SocketTable::default(), nothing_local);
        assert_eq!(sample_of(&s, A, B), (100, 50, Some(10), true));
        assert_eq!(sample_of(&s, B, A), (50, 100, Some(20), true));
        let f = flows(&[(Protocol::Tcp, B, A, 7)]);
        let s = j.apply(&f, Vec::new(), SocketTable::default(), nothing_local);
        assert_eq!(sample_of(&s, A, B), (0, 7, Some(10), true));
        assert_eq!(sample_of(&s, B, A), (7, 0, Some(20), true));
        assert_eq!(j.stats.remembered_owner_bytes, 14);
        assert_eq!(j.stats.unowned_bytes, 0);
    }

    #[test]
    fn sockets_only_a_rescan_saw_are_owned() {
        let mut j = FlowJoiner::default();
        let learned = vec![entry(Protocol::Tcp, 5, A, Some(B), 10)];
        let f = flows(&[(Protocol::Tcp, A, B, 30)]);
        let s = j.apply(&f, learned, SocketTable::default(), |ip| ip.is_loopback());
        assert_eq!(sample_of(&s, A, B), (30, 0, Some(10), true));
        // The server side was never seen and no listener explains it.
        assert_eq!(sample_of(&s, B, A), (0, 30, None, false));
        assert_eq!(j.stats.unowned_bytes, 30);
    }

    #[test]
    fn accepted_connections_no_scan_saw_belong_to_the_listener() {
        let mut j = FlowJoiner::default();
        let c6 = "127.0.0.1:40001";
        let s6 = "127.0.0.1:9090";
        let table = SocketTable::from_entries(vec![
            listening(7, "0.0.0.0:8080", 20),
            // Dual-stack: an IPv6 wildcard listener accepts IPv4 too.
            listening(8, "[::]:9090", 30),
            // Seen by the scan, but its fd was already closed: no owner.
            SocketEntry {
                owner: None,
                ..entry(
                    Protocol::Tcp,
                    9,
                    "127.0.0.1:8080",
                    Some("127.0.0.1:40002"),
                    0,
                )
            },
        ]);
        let f = flows(&[
            (Protocol::Tcp, A, B, 100),
            (Protocol::Tcp, B, A, 1000),
            (Protocol::Tcp, c6, s6, 5),
            (Protocol::Tcp, "127.0.0.1:8080", "127.0.0.1:40002", 3),
        ]);
        let s = j.apply(&f, Vec::new(), table, |ip| ip.is_loopback());
        assert_eq!(sample_of(&s, B, A), (1000, 100, Some(20), false));
        assert_eq!(sample_of(&s, s6, c6), (0, 5, Some(30), false));
        let orphan = find(&s, "127.0.0.1:8080", Some("127.0.0.1:40002"));
        assert_eq!((orphan.tx_bytes, orphan.pid), (3, Some(20)));
        assert_eq!(orphan.id.secondary, 9, "still the scanned socket's row");
        // The clients had no socket any scan saw: counted, without owner.
        assert_eq!(sample_of(&s, A, B), (100, 1000, None, false));
        assert_eq!(j.stats.listener_owner_bytes, 1108);
        assert_eq!(j.stats.unowned_bytes, 1108);
    }

    #[test]
    fn remembered_owners_expire_after_the_flow_ends_and_never_own_a_new_connection() {
        let mut j = FlowJoiner::default();
        let learned = vec![entry(Protocol::Tcp, 5, A, Some(B), 10)];
        let mut f = flows(&[(Protocol::Tcp, A, B, 1)]);
        f.values_mut().for_each(|c| c.ended = true);
        let s = j.apply(&f, learned, SocketTable::default(), nothing_local);
        assert_eq!(find(&s, A, Some(B)).pid, Some(10));
        // Late bytes within the grace still have the owner...
        let s = j.apply(
            &flows(&[(Protocol::Tcp, A, B, 2)]),
            Vec::new(),
            SocketTable::default(),
            nothing_local,
        );
        assert_eq!(find(&s, A, Some(B)).pid, Some(10));
        // ...but a new connection on the same tuple (its SYN seen) does not.
        let mut f = flows(&[(Protocol::Tcp, A, B, 3)]);
        f.values_mut().for_each(|c| c.opened = true);
        let s = j.apply(&f, Vec::new(), SocketTable::default(), |ip| {
            ip.is_loopback()
        });
        assert_eq!(find(&s, A, Some(B)).pid, None);
        for _ in 0..END_GRACE_READS {
            j.apply(
                &HashMap::new(),
                Vec::new(),
                SocketTable::default(),
                nothing_local,
            );
        }
        assert!(
            j.owners.is_empty(),
            "forgotten after the grace: {:?}",
            j.owners
        );
        // Owners whose flow never ended are forgotten after IDLE_READS.
        let learned = vec![entry(Protocol::Tcp, 6, A, Some(B), 10)];
        j.apply(
            &HashMap::new(),
            learned,
            SocketTable::default(),
            nothing_local,
        );
        for _ in 0..IDLE_READS {
            assert_eq!(j.owners.len(), 1);
            j.apply(
                &HashMap::new(),
                Vec::new(),
                SocketTable::default(),
                nothing_local,
            );
        }
        assert!(j.owners.is_empty());
    }

    #[test]
    fn ids_are_unique_and_a_reused_tuple_gets_a_new_id() {
        let mut j = FlowJoiner::default();
        let s1 = j.apply(&HashMap::new(), Vec::new(), loopback_table(), nothing_local);
        let ids: HashSet<_> = s1.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), s1.len());
        // Same 5-tuple, new socket (new inode).
        let t = SocketTable::from_entries(vec![entry(Protocol::Tcp, 99, A, Some(B), 10)]);
        let s2 = j.apply(
            &flows(&[(Protocol::Tcp, A, B, 1)]),
            Vec::new(),
            t,
            nothing_local,
        );
        let new = s2.iter().find(|s| s.id.secondary == 99).unwrap();
        assert!(!ids.contains(&new.id));
        assert_eq!(new.tx_bytes, 1);
    }

    #[test]
    fn open_hints_name_the_cause() {
        assert!(open_hint("socket: Operation not permitted").contains("root"));
        assert!(
            open_hint("You don't have permission to capture on that device")
                .contains("CAP_NET_RAW")
        );
        assert!(open_hint("nope0: No such device exists").contains("ip link"));
        assert_eq!(open_hint("something else"), "");
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

    #[test]
    fn socket_less_flows_past_the_cap_are_summed_into_one_row_per_protocol() {
        let mut j = FlowJoiner::default();
        let before = crate::drops::total("pcap_unowned_flows");
        let list: Vec<(Protocol, String, String, u64)> = (0..5_000u32)
            .map(|i| {
                (
                    Protocol::Udp,
                    format!("127.10.{}.{}:5353", i >> 8, i & 0xff),
                    "127.0.0.1:53".to_string(),
                    100,
                )
            })
            .collect();
        let refs: Vec<(Protocol, &str, &str, u64)> = list
            .iter()
            .map(|(p, a, b, n)| (*p, a.as_str(), b.as_str(), *n))
            .collect();
        let samples = j.apply(
            &flows(&refs),
            Vec::new(),
            SocketTable::from_entries(Vec::new()),
            |ip| ip.is_loopback(),
        );
        // Each flow has two local sides: 10,000 sides, 1,024 rows of their
        // own, the other 8,976 summed into one row.
        assert_eq!(samples.len(), MAX_UNOWNED_FLOWS + 1);
        let (rx, tx) = samples
            .iter()
            .fold((0, 0), |a, s| (a.0 + s.rx_bytes, a.1 + s.tx_bytes));
        assert_eq!((rx, tx), (500_000, 500_000), "every byte kept");
        let overflow: Vec<_> = samples.iter().filter(|s| s.local.is_none()).collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(overflow[0].rx_bytes + overflow[0].tx_bytes, 8_976 * 100);
        assert_eq!(crate::drops::total("pcap_unowned_flows") - before, 8_976);
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
