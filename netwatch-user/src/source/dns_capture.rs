//! The DNS-only capture beside a source that sees no packets (the kernel
//! collector, `ss`, `/proc`): libpcap on `any` with a kernel-side filter
//! `port 53`, so only DNS (UDP and TCP, IPv4 and IPv6, loopback included)
//! ever reaches the agent; each message becomes a [`DnsEvent`] (the pcap
//! source's frame decoder and DNS reader, [`crate::source::pcap::frame`]
//! and [`crate::source::pcap::dns`]), handed to the agent's tick, which
//! builds `dns_analytics` and feeds the DNS-tunnel detector from them
//! exactly as from the pcap source's. It must never count bytes, never
//! attribute anything to a process, and never stop the agent when it
//! cannot open: the agent then runs on without DNS analytics.
//!
//! # What is seen
//! - Loopback: on `any`, Linux hands a packet socket each loopback packet
//!   twice (outgoing and incoming); libpcap drops the outgoing copy of
//!   packets on `lo` (`linux_check_direction` in `pcap-linux.c`), so each
//!   message counts once, and queries to a local resolver (systemd-resolved
//!   at 127.0.0.53) are seen; a lookup it forwards is seen twice (the
//!   application's query and the resolver's own). A message crossing several
//!   interfaces of this host (a veth and its bridge, before and after NAT)
//!   is captured on each and counts once: copies with the same bytes within
//!   [`crate::source::pcap::dns::DUPLICATE_WINDOW`] are dropped
//!   ([`DnsCaptureStats::duplicates`]).
//! - Only the agent's network namespace: a packet socket sees the
//!   interfaces of the namespace it was opened in. Containers in their own
//!   namespaces that talk to a resolver on the host are seen on the host's
//!   side of their veth; DNS entirely inside another namespace is not.
//! - DNS over TCP: the snapshot length ([`SNAPLEN`]) holds a whole segment of
//!   up to 64 KiB, so every message's length prefix and head are captured.
//!
//! # Bounded
//! Events between two ticks: [`crate::source::pcap::MAX_DNS_EVENTS`], the
//! rest refused and counted (`dns_capture_events` drops); DNS-over-TCP
//! directions: [`crate::source::pcap::dns::MAX_TCP_DIRECTIONS`]
//! (`dns_tcp_streams` drops). The kernel buffer is [`BUFFER_BYTES`];
//! packets it dropped are in [`DnsCaptureStats::kernel_drops`].
//!
//! # Privileges
//! Opening needs `CAP_NET_RAW`. The capture is opened before the agent drops
//! its capabilities and its handle lives in the supervised thread's body
//! (restarts reuse it), so nothing here needs `CAP_NET_RAW` afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pcap::BreakLoop;

use crate::procinfo::sockets::canonical;
use crate::source::pcap::dns::{DnsReader, MAX_TCP_DIRECTIONS};
use crate::source::pcap::frame::{decode_captured, LinkType};
use crate::source::pcap::{
    open_capture, run_capture, CaptureSink, PcapConfig, PcapError, MAX_DNS_EVENTS,
};
use crate::source::{DnsEvent, DnsFeed, SocketSource};

/// The kernel-side filter: DNS only.
pub const FILTER: &str = "port 53";
/// Bytes captured per packet: a whole TCP segment on loopback (64 KiB MTU).
pub const SNAPLEN: i32 = 65_535;
/// The kernel capture buffer (DNS only: small).
pub const BUFFER_BYTES: i32 = 4 << 20;
/// libpcap's read timeout: the longest a message waits in the kernel buffer.
pub const TIMEOUT_MS: i32 = 100;

/// Counters of the DNS capture since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsCaptureStats {
    /// Packets that passed the filter and were decoded.
    pub packets: u64,
    /// Truncated or malformed frames.
    pub decode_errors: u64,
    /// Port-53 payloads and DNS-over-TCP messages that were not readable DNS.
    pub malformed: u64,
    /// Events refused because too many waited between two ticks.
    pub overflow: u64,
    /// DNS-over-TCP directions whose framing was lost.
    pub tcp_desyncs: u64,
    /// Copies of a message captured on another interface: counted once.
    pub duplicates: u64,
    /// Packets the kernel dropped because the buffer was full (`ps_drop`).
    pub kernel_drops: u64,
}

/// What the capture thread fills and the tick drains.
#[derive(Debug, Default)]
struct Shared {
    reader: DnsReader,
    packets: u64,
    decode_errors: u64,
    kernel_drops: u64,
}

impl Shared {
    fn observe(
        &mut self,
        link: LinkType,
        data: &[u8],
        wire_len: usize,
        at: Duration,
        captured: Duration,
    ) {
        match decode_captured(link, data, wire_len) {
            Ok(p) => {
                self.packets += 1;
                let (src, dst) = (canonical(p.src), canonical(p.dst));
                self.reader.packet(&p, src, dst, at, captured);
            }
            Err(e) if e.is_malformed() => self.decode_errors += 1,
            // ARP, ICMP, later fragments: not for the filter to pass, not ours.
            Err(_) => {}
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    crate::supervise::lock(m, "the DNS capture's events")
}

/// A running DNS-only capture (Linux). Dropping it stops the thread.
pub struct DnsCapture {
    device: String,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    breaker: BreakLoop,
    /// The capture thread, supervised as `dns_capture` (restarted with the
    /// same handle).
    thread: Option<crate::supervise::Worker>,
    /// Overflow and refused TCP directions already reported as drops.
    reported: (u64, u64),
}

impl std::fmt::Debug for DnsCapture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsCapture")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl DnsCapture {
    /// Capture DNS on `device` (`None`: every interface, `any`) and start
    /// the capture thread. Needs root or `CAP_NET_RAW`; the error says so
    /// when that is the cause.
    pub fn open(device: Option<&str>) -> Result<Self, PcapError> {
        let config = PcapConfig {
            device: device.map(str::to_string),
            snaplen: SNAPLEN,
            buffer_size: BUFFER_BYTES,
            timeout_ms: TIMEOUT_MS,
            immediate: false,
            filter: Some(FILTER.to_string()),
            rescan_gap: None,
        };
        let (mut cap, link, device) = open_capture(&config)?;
        let breaker = cap.breakloop_handle();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            let mut cap = cap;
            crate::supervise::Worker::spawn(
                "dns_capture",
                "netwatch-dns",
                crate::supervise::Policy::Restart,
                move || {
                    let mut sink = DnsSink {
                        link,
                        shared: &shared,
                    };
                    run_capture(&mut cap, "dns_capture", "the DNS capture", &stop, &mut sink)
                },
            )
            .map_err(PcapError::Thread)?
        };
        Ok(Self {
            device,
            shared,
            stop,
            breaker,
            thread: Some(thread),
            reported: (0, 0),
        })
    }

    /// The device captured on.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Counters since the capture opened.
    pub fn stats(&self) -> DnsCaptureStats {
        let s = lock(&self.shared);
        DnsCaptureStats {
            packets: s.packets,
            decode_errors: s.decode_errors,
            malformed: s.reader.malformed,
            overflow: s.reader.overflow,
            tcp_desyncs: s.reader.tcp().desyncs(),
            duplicates: s.reader.duplicates,
            kernel_drops: s.kernel_drops,
        }
    }

    /// The DNS messages captured since the previous call (the first call:
    /// since the capture opened); reports what the bounds refused.
    pub fn take_events(&mut self) -> Vec<DnsEvent> {
        let (events, overflow, refused) = {
            let mut s = lock(&self.shared);
            (s.reader.take(), s.reader.overflow, s.reader.tcp().refused())
        };
        crate::drops::dropped(
            "dns_capture_events",
            MAX_DNS_EVENTS,
            overflow.saturating_sub(self.reported.0),
        );
        crate::drops::dropped(
            "dns_tcp_streams",
            MAX_TCP_DIRECTIONS,
            refused.saturating_sub(self.reported.1),
        );
        self.reported = (overflow, refused);
        events
    }
}

impl DnsFeed for DnsCapture {
    fn take_dns_events(&mut self) -> Vec<DnsEvent> {
        self.take_events()
    }
}

impl Drop for DnsCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes a blocked pcap_next_ex (and stays armed if not blocked yet).
        self.breaker.breakloop();
        drop(self.thread.take());
    }
}

/// Why the agent runs without the DNS capture.
#[derive(Debug, thiserror::Error)]
pub enum NotStarted {
    /// `--no-dns-capture` or `dns_capture = false`.
    #[error("the DNS capture is off (--no-dns-capture or dns_capture = false): no DNS analytics")]
    Disabled,
    /// The source sees packets itself (pcap): it yields DNS already.
    #[error("the {0} source reads DNS itself")]
    SourceSeesPackets(&'static str),
    /// Opening the capture failed.
    #[error(
        "DNS analytics off: the DNS capture beside the {source_name} source could not open \
         ({error}); the agent runs on without dns_analytics. Give it CAP_NET_RAW (or run as \
         root), or pass --no-dns-capture to say it is meant"
    )]
    Open {
        source_name: &'static str,
        error: PcapError,
    },
}

/// The DNS capture the agent runs beside `source`, when `enabled` and the
/// source does not see packets itself; otherwise why not. Call it before
/// the agent drops its capabilities.
pub fn beside(source: &dyn SocketSource, enabled: bool) -> Result<DnsCapture, NotStarted> {
    if !enabled {
        return Err(NotStarted::Disabled);
    }
    if source.sees_packets() {
        return Err(NotStarted::SourceSeesPackets(source.name()));
    }
    DnsCapture::open(None).map_err(|error| NotStarted::Open {
        source_name: source.name(),
        error,
    })
}

/// The DNS capture's thread: every packet to the DNS reader.
struct DnsSink<'a> {
    link: LinkType,
    shared: &'a Mutex<Shared>,
}

impl CaptureSink for DnsSink<'_> {
    fn packet(&mut self, data: &[u8], wire_len: usize, arrival: Duration, captured: Duration) {
        lock(self.shared).observe(self.link, data, wire_len, arrival, captured);
    }

    fn kernel_drops(&mut self, dropped: u64) {
        lock(self.shared).kernel_drops = dropped;
    }

    fn expire(&mut self, now: Duration) {
        lock(self.shared).reader.expire(now);
    }
}
