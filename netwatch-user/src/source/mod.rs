//! Per-socket sources: every way netwatch can learn how many bytes each
//! socket moved (eBPF maps, `ss -i`, libpcap, macOS tools) yields the same
//! [`SocketSample`], so attribution and everything after it never know which
//! source is in use. Sources that see packets also yield [`DnsEvent`]s. A
//! source must never build wire rows itself.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(all(target_os = "linux", feature = "pcap"))]
pub mod dns_capture;
#[cfg(all(target_os = "linux", feature = "ebpf"))]
pub mod ebpf;
// On Linux the macOS parsers are compiled for the crate's tests and fuzz
// targets only.
#[cfg(any(target_os = "macos", feature = "internals", test))]
pub mod macos;
#[cfg(all(target_os = "linux", feature = "pcap"))]
pub mod pcap;
#[cfg(target_os = "linux")]
pub mod procnet;
pub mod select;
pub mod socket_id;
#[cfg(feature = "ss")]
pub mod ss;

/// The transport protocol lives in [`crate::net`], below both sources and
/// `procinfo`; re-exported here for the sources.
pub use crate::net::Protocol;

/// A socket's identity within one source; its own module holds the one
/// layout of the eBPF source's shared-socket ids.
pub use socket_id::SocketId;

/// Where the eBPF source pins its maps and links unless told (`--pin-dir`,
/// `[ebpf] pin_dir`). Lives here, below the configuration and the loader
/// that both read it, so neither imports the other.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netwatch";
/// The per-socket baseline a restarted eBPF source continues from unless
/// told (`--pin-state-file`, `[ebpf] pin_state_file`).
pub const DEFAULT_PIN_STATE_FILE: &str = "/var/lib/netwatch-agent/ebpf-baseline";

/// A socket missing from a full batch without a final record keeps its last
/// counters for this many full reads: an incomplete read (a map walk cut
/// short, a line a parser skipped) must not make it look new, and counted
/// twice, when it is seen again. Shared by attribution (deltas) and the
/// `ss` source (which sockets it has seen). Partial batches ([`SampleBatch::omitted`])
/// leave unchanged sockets out on purpose and do not count.
pub const GRACE_READS: u64 = 5;

/// The sockets a source is sized for unless told (`--max-sockets`,
/// `[ebpf] max_sockets`): the capacity of the eBPF per-socket map, and the
/// host size `ss` output is bounded for. The one home of this default (the
/// config, the eBPF loader and the `ss` source read it from here).
pub const DEFAULT_MAX_SOCKETS: u32 = 65_536;

/// The eBPF closed-socket ring buffer's size in bytes unless told
/// (`--ringbuf-bytes`, `[ebpf] ringbuf_bytes`): 1 MiB. The one home of this
/// default (the config and the eBPF loader read it from here).
pub const DEFAULT_RINGBUF_BYTES: u32 = 1 << 20;

pub use crate::continuity::Continuity;

/// Since when a sample's cumulative counters count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountOrigin {
    /// Since the source started watching (eBPF maps, a pcap capture): every
    /// byte happened while the agent ran, so a socket's first sample counts in full.
    SinceAttach,
    /// Since the socket opened (`ss` `bytes_sent`): on the source's first read
    /// the counters predate the agent and are only a baseline; a socket first
    /// seen on a later read is taken to have opened within the interval
    /// (`ss` does not say socket age, so the interval is the bound).
    SinceSocketOpen,
}

/// One socket as one source saw it on one read.
#[derive(Debug, Clone, PartialEq)]
pub struct SocketSample {
    pub id: SocketId,
    pub protocol: Protocol,
    /// Local endpoint; `None` when the source does not know it.
    pub local: Option<SocketAddr>,
    /// Remote endpoint; `None` for unconnected sockets.
    pub remote: Option<SocketAddr>,
    /// Normalized state, a name from [`crate::net::state`] (`ESTABLISHED`,
    /// `LISTEN`, `TIME_WAIT`, `UNCONN`, …; [`crate::net::state::CLOSED`] when `closed`).
    /// Borrowed for every name netwatch knows ([`state_name`]): a sample
    /// is cloned and compared per socket per tick without allocating.
    pub state: Cow<'static, str>,
    /// Owning process (thread-group id), when known.
    pub pid: Option<u32>,
    /// Its `comm` (or the best name the source has); shared, so cloning a
    /// cached sample does not allocate.
    pub comm: Option<Arc<str>>,
    /// cgroup v2 id of the owner, when the source knows it.
    pub cgroup_id: Option<u64>,
    /// Cumulative payload bytes received, counted from [`Self::origin`].
    pub rx_bytes: u64,
    /// Cumulative payload bytes sent, counted from [`Self::origin`].
    pub tx_bytes: u64,
    /// Kernel smoothed RTT in microseconds, when the source has it.
    pub rtt_us: Option<f64>,
    /// TCP quality counters, cumulative from [`Self::origin`] like the
    /// bytes, for sources that count them (the kernel collector); `None`
    /// otherwise.
    pub tcp: Option<TcpCounters>,
    /// The socket is gone: these are its final counters, and it will not be seen again.
    pub closed: bool,
    pub origin: CountOrigin,
}

/// One TCP socket's quality counters as a source counts them: cumulative,
/// like a sample's bytes. The per-process figures are their deltas
/// (`crate::snapshot::quality`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// Segments retransmitted (as `tcpi_total_retrans` counts them).
    pub retrans_segs: u64,
    /// Bytes retransmitted (as `tcpi_bytes_retrans`).
    pub retrans_bytes: u64,
    /// Resets this host sent on the socket.
    pub resets_sent: u64,
    /// Resets the socket received.
    pub resets_received: u64,
    /// For a socket this host connected: first SYN to ESTABLISHED.
    pub connect: Option<Duration>,
}

/// A state as a sample holds it: the static name when `name` is one of
/// [`crate::net::state`]'s, else an owned copy (text a tool printed that no
/// table knows is kept as it was).
pub fn state_name(name: &str) -> Cow<'static, str> {
    use crate::net::state::*;
    const KNOWN: [&str; 15] = [
        ESTABLISHED,
        SYN_SENT,
        SYN_RECV,
        FIN_WAIT1,
        FIN_WAIT2,
        TIME_WAIT,
        CLOSE_WAIT,
        LAST_ACK,
        LISTEN,
        CLOSING,
        NEW_SYN_RECV,
        UNCONN,
        CLOSED,
        UNKNOWN,
        "",
    ];
    match KNOWN.iter().find(|k| **k == name) {
        Some(k) => Cow::Borrowed(*k),
        None => Cow::Owned(name.to_string()),
    }
}

/// Everything one source read on one tick.
#[derive(Debug, Clone)]
pub struct SampleBatch {
    /// When the read completed.
    pub taken_at: Instant,
    pub samples: Vec<SocketSample>,
    /// Records the source lost since it started (eviction, full buffers,
    /// unparseable lines, dropped packets), cumulative.
    pub lost_records: u64,
    /// True when byte counts are estimates rather than per-socket counts.
    pub estimated: bool,
    /// `None`: `samples` lists every socket (a full batch). `Some(n)`: a
    /// partial batch, which lists the sockets that changed since the
    /// source's previous batch (bytes, state, owner; closed ones with their
    /// final counters) and may add unchanged ones (listeners, rows to fill
    /// the snapshot's connection list); `n` more sockets, each listed in an
    /// earlier batch, are unchanged, still open, and left out. The first
    /// batch of a source is full.
    pub omitted: Option<u64>,
}

impl SampleBatch {
    /// A full batch of exact counts with nothing lost: every socket in
    /// `samples`, read at `taken_at`.
    pub fn exact(taken_at: Instant, samples: Vec<SocketSample>) -> Self {
        Self {
            taken_at,
            samples,
            lost_records: 0,
            estimated: false,
            omitted: None,
        }
    }
}

/// One DNS message a source saw on the wire; the snapshot's DNS analytics
/// are built from these (`crate::snapshot::dns`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEvent {
    /// When it was seen, on the monotonic clock
    /// ([`crate::clock::Clock::mono`]; pcap: when the capture thread read
    /// the packet): what windows and pending-query expiry use.
    pub at: Duration,
    /// The packet's own capture timestamp (wall clock, since the Unix
    /// epoch), finer than `at` but subject to clock steps: used only for
    /// the latency between a query and its response, and only when it
    /// agrees with `at` (`crate::snapshot::dns`).
    pub captured: Duration,
    /// The client's endpoint: a query's source, a response's destination.
    pub client: SocketAddr,
    /// Transaction id.
    pub id: u16,
    /// UDP, or TCP for DNS over TCP (the client endpoint is then a TCP one).
    pub protocol: Protocol,
    pub kind: DnsEventKind,
}

impl DnsEvent {
    /// A UDP message seen at `at` (its capture time the same): what
    /// events fed by hand or built in tests carry.
    pub fn udp(at: Duration, client: SocketAddr, id: u16, kind: DnsEventKind) -> Self {
        Self {
            at,
            captured: at,
            client,
            id,
            protocol: Protocol::Udp,
            kind,
        }
    }
}

/// DNS events from beside the socket source: the DNS-only capture the
/// agent runs when its source sees no packets (`dns_capture`).
pub trait DnsFeed: Send {
    /// The DNS messages seen since the last call.
    fn take_dns_events(&mut self) -> Vec<DnsEvent>;
}

/// What a [`DnsEvent`] was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsEventKind {
    /// A query; `name` is its first question's name (lower-cased), when
    /// it has one that could be read.
    Query { name: Option<String> },
    /// A response and its RCODE (3 = NXDOMAIN).
    Response { rcode: u8 },
}

/// A TCP control event a source saw: a connection attempt (SYN without
/// ACK) or a reset, with its capture time. The alert detectors are fed
/// from these (`crate::alerts::feed`); the pcap source yields them today,
/// and the kernel collector's `inet_sock_set_state` can (SYN_RECV for an
/// inbound SYN, SYN_SENT for an outbound one, a reset closing a socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpEvent {
    /// When it was seen, on the monotonic clock
    /// ([`crate::clock::Clock::mono`]: the BPF programs' `bpf_ktime_get_ns`,
    /// or when the capture thread read the packet).
    pub at: Duration,
    /// The packet's source and destination.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub kind: TcpEventKind,
    /// The source / destination address is one of this host's.
    pub src_local: bool,
    pub dst_local: bool,
    /// The process that caused it, when the source knows (the kernel
    /// collector knows who called `connect`).
    pub pid: Option<u32>,
    /// For a [`TcpEventKind::Syn`] this host sent (`src` local): how the
    /// connect ended, when the source saw it end (the kernel collector).
    pub connect: Option<ConnectResult>,
}

impl TcpEvent {
    /// A SYN or reset seen at `at` from `src` to `dst`, before anything
    /// else is known of it: which ends are local is filled in later (the
    /// agent knows its addresses), the pid and the connect result only by
    /// a source that saw them.
    pub fn seen(at: Duration, src: SocketAddr, dst: SocketAddr, kind: TcpEventKind) -> Self {
        Self {
            at,
            src,
            dst,
            kind,
            src_local: false,
            dst_local: false,
            pid: None,
            connect: None,
        }
    }
}

/// How an outbound connect ended and how long it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectResult {
    /// First SYN to the end (ESTABLISHED, or the failure).
    pub took: Duration,
    pub outcome: ConnectOutcome,
}

/// The end of an outbound connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// The handshake completed.
    Established,
    /// A reset answered the SYN (`ECONNREFUSED`).
    Refused,
    /// Every SYN retry went unanswered (`ETIMEDOUT`).
    TimedOut,
    /// An ICMP error ended it (`EHOSTUNREACH`, `ENETUNREACH`, …).
    Unreachable,
    /// Closed by the process while connecting, or another error (the errno, 0 if none).
    Other(i32),
}

/// What a [`TcpEvent`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEventKind {
    /// SYN without ACK: a connection attempt from `src` to `dst`.
    Syn,
    /// RST from `src` to `dst`.
    Reset,
}

/// TCP sockets of the agent's network namespace by state, for a source
/// that counts them itself (the snapshot's `connection_count`,
/// `tcp_time_wait`, `tcp_close_wait`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStateCounts {
    pub established: u32,
    pub time_wait: u32,
    pub close_wait: u32,
}

/// Append `batch` to a queue a reader drains, keeping it at most `max`
/// long: what is queued stays, the end of `batch` that does not fit is
/// dropped; returns how many were dropped (for the caller's loss counter).
pub(crate) fn append_bounded<T>(queue: &mut Vec<T>, batch: Vec<T>, max: usize) -> u64 {
    let room = max.saturating_sub(queue.len());
    let dropped = batch.len().saturating_sub(room) as u64;
    queue.extend(batch.into_iter().take(room));
    dropped
}

/// A per-socket source. `read` is called once per tick from the agent loop.
pub trait SocketSource: Send {
    /// Short name for logs and the snapshot (`ebpf`, `ss`, `pcap`, `macos`).
    fn name(&self) -> &'static str;
    /// Detail for the snapshot (the eBPF tier), if any.
    fn detail(&self) -> Option<String> {
        None
    }
    /// Read every socket's current counters.
    fn read(&mut self) -> anyhow::Result<SampleBatch>;
    /// The snapshot built from the last read went to the sinks: a source
    /// that persists what was delivered (pinned eBPF) stores it now.
    fn delivered(&mut self) {}

    /// How many connection rows the snapshot shows: a source that reads
    /// partial batches ([`SampleBatch::omitted`]) adds up to this many
    /// unchanged sockets to each, so the list is not only the busy ones.
    fn set_row_budget(&mut self, _rows: usize) {}
    /// Whether this source's counts survive agent restarts (pinned eBPF):
    /// what a sink that accumulates the snapshots' bytes needs to persist
    /// its totals beside the source's baseline. `None`: counts restart
    /// with the agent.
    fn continuity(&self) -> Option<Continuity> {
        None
    }
    /// The agent is stopping and takes one last read next: wait for what
    /// the source still holds in flight (packets in pcap's capture buffer)
    /// so that read carries it. Sources that read the kernel's counters
    /// directly have nothing to wait for.
    fn settle(&mut self) {}
    /// The DNS messages seen since the last call, for sources that see
    /// packets (`Some`, possibly empty); `None` for sources that cannot.
    fn take_dns_events(&mut self) -> Option<Vec<DnsEvent>> {
        None
    }
    /// Whether this source sees packets (and so yields DNS events itself):
    /// the agent runs the DNS-only capture beside the others
    /// (`dns_capture`).
    fn sees_packets(&self) -> bool {
        false
    }
    /// The host's TCP sockets counted by state, for sources that can count
    /// them more cheaply than the host collector's `sock_diag` dump (`None`:
    /// the host collector counts them).
    fn tcp_states(&mut self) -> Option<TcpStateCounts> {
        None
    }
    /// The TCP SYNs and resets seen since the last call, for sources that
    /// see them (`Some`); `None` for sources that cannot.
    fn take_tcp_events(&mut self) -> Option<Vec<TcpEvent>> {
        None
    }
}
