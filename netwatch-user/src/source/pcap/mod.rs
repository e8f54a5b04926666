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
//!
//! [`CountOrigin::SinceAttach`]: crate::source::CountOrigin::SinceAttach
//! [`DnsEvent`]: crate::source::DnsEvent
//! [`SocketSample`]: crate::source::SocketSample
//! [`SocketSource::read`]: crate::source::SocketSource::read
//! [`SocketSource::take_dns_events`]: crate::source::SocketSource::take_dns_events
//! [`SocketSource::take_tcp_events`]: crate::source::SocketSource::take_tcp_events
//! [`TcpEvent`]: crate::source::TcpEvent

pub mod dns;
pub mod frame;
pub mod stream;

mod capture;
mod flows;
mod joiner;
mod rescan;
mod socket_source;

pub(crate) use capture::{open_capture, run_capture, CaptureSink};
pub use capture::{PcapConfig, PcapError};
pub use flows::{CaptureStats, FlowCount, FlowKey, MAX_DNS_EVENTS, MAX_FLOWS, MAX_TCP_EVENTS};
pub use joiner::MAX_UNOWNED_FLOWS;
pub use socket_source::PcapSource;
