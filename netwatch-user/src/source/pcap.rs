//! The libpcap source: captures packets (on `any` or one interface) in a
//! background thread, counts transport payload bytes per 5-tuple and
//! direction, and on each [`SocketSource::read`] joins those flows to
//! sockets through the `/proc` socket table, yielding one [`SocketSample`]
//! per socket. It also keeps DNS analytics from port-53 UDP payloads. It
//! never builds wire rows and never decides per-process totals.
//!
//! # What is counted
//! Transport payload bytes from the IP/TCP/UDP length fields (see
//! [`frame`]): what the application wrote, plus, for TCP, any retransmitted
//! bytes (a capture cannot tell them apart cheaply). Snapshot length does
//! not matter. Counts start when the capture opens
//! ([`CountOrigin::SinceAttach`]).
//!
//! # How flows become sockets
//! A packet from `src` to `dst` is sent by the socket whose local end is
//! `src` and received by the socket whose local end is `dst`; each side is
//! looked up on its own (exact 5-tuple, then unconnected UDP by port), so a
//! loopback packet credits the sender's `tx` and the receiver's `rx`. A
//! socket that closed since the previous read is still found through the
//! previous table, and its final sample is `closed`. A side with no socket
//! (one opened and closed between two reads, one in another network
//! namespace) is counted on a socket-less flow (`pid: None`, state
//! `UNKNOWN`, closed after a read with no bytes) if its address is local,
//! and dropped if not (forwarded traffic).
//!
//! # DNS
//! Port-53 UDP payloads feed a [`dns::DnsTracker`]; the interval's
//! analytics come out of [`SocketSource::take_dns`].
//!
//! # Limits
//! Every socket in the table is reported, with zero counters if no payload
//! was seen. On `any`, traffic crossing several interfaces of this host
//! (bridges, veth, tunnels) is seen once per interface. DNS over TCP is not
//! parsed.

pub mod dns;
pub mod frame;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use netwatch_common::wire::DnsAnalytics;
use pcap::{Active, BreakLoop, Capture, Device};

use self::dns::DnsTracker;
use self::frame::{decode_captured, LinkType};
use crate::procinfo::sockets::{canonical, SocketEntry, SocketTable};
use crate::source::{CountOrigin, Protocol, SampleBatch, SocketId, SocketSample, SocketSource};

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
        }
    }
}

/// Opening the capture failed.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("opening pcap capture on `{device}`: {source}{hint}")]
    Open {
        device: String,
        #[source]
        source: pcap::Error,
        /// What to do about it, when the message says.
        hint: &'static str,
    },
    #[error("pcap capture on `{device}` has link type {dlt} ({name}), which netwatch cannot decode; capture on `any` or another interface")]
    UnsupportedLinkType {
        device: String,
        dlt: i32,
        name: String,
    },
    #[error("setting capture filter `{filter}` on `{device}`: {source}")]
    Filter {
        device: String,
        filter: String,
        #[source]
        source: pcap::Error,
    },
    #[error("starting the pcap capture thread: {0}")]
    Thread(#[source] std::io::Error),
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
    /// Port-53 UDP payloads that were not readable DNS.
    pub dns_malformed: u64,
}

impl CaptureStats {
    /// Records lost since the capture opened: decode errors, kernel drops
    /// and flow-table overflow.
    pub fn lost_records(&self) -> u64 {
        self.decode_errors + self.kernel_drops + self.flow_overflow
    }
}

/// A direction of a 5-tuple: bytes sent from `src` to `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Distinct flows kept between two reads before packets are dropped.
const MAX_FLOWS: usize = 1 << 18;
const STATS_EVERY: Duration = Duration::from_millis(250);

/// What the capture thread fills and `read` drains.
#[derive(Debug, Default)]
struct Shared {
    flows: HashMap<FlowKey, u64>,
    dns: DnsTracker,
    stats: CaptureStats,
    /// The capture failed and the thread stopped.
    fatal: Option<String>,
}

impl Shared {
    fn observe(&mut self, link: LinkType, data: &[u8], wire_len: usize, ts: Duration) {
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
        if p.payload_len > 0 {
            let key = FlowKey {
                protocol: p.protocol,
                src,
                dst,
            };
            if let Some(n) = self.flows.get_mut(&key) {
                *n += u64::from(p.payload_len);
            } else if self.flows.len() < MAX_FLOWS {
                self.flows.insert(key, u64::from(p.payload_len));
            } else {
                self.stats.flow_overflow += 1;
            }
        }
        if p.protocol == Protocol::Udp && (src.port() == 53 || dst.port() == 53) {
            self.dns.observe(p.payload, src, dst, ts);
            self.stats.dns_malformed = self.dns.malformed();
        }
    }
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Poisoned only if our own thread panicked mid-update; counters stay usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    thread: Option<JoinHandle<()>>,
    joiner: FlowJoiner,
    local_ips: HashSet<IpAddr>,
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
        let device = config.device.clone().unwrap_or_else(|| "any".to_string());
        let open_err = |source: pcap::Error| {
            let hint = open_hint(&source.to_string());
            PcapError::Open {
                device: device.clone(),
                source,
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
                    source,
                })?;
        }
        let breaker = cap.breakloop_handle();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("netwatch-pcap".into())
                .spawn(move || capture_loop(cap, link, &shared, &stop))
                .map_err(PcapError::Thread)?
        };
        let mut source = Self {
            device,
            link,
            shared,
            stop,
            breaker,
            thread: Some(thread),
            joiner: FlowJoiner::default(),
            local_ips: HashSet::new(),
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
        lock(&self.shared).stats
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

    fn read(&mut self) -> anyhow::Result<SampleBatch> {
        let (flows, stats, fatal) = {
            let mut s = lock(&self.shared);
            (std::mem::take(&mut s.flows), s.stats, s.fatal.take())
        };
        if let Some(e) = fatal {
            anyhow::bail!("pcap capture on `{}` stopped: {e}", self.device);
        }
        if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            anyhow::bail!(
                "pcap capture thread on `{}` ended unexpectedly",
                self.device
            );
        }
        let table = SocketTable::scan()
            .context("pcap: reading the socket table to attribute captured flows")?;
        self.refresh_local_ips();
        let local = &self.local_ips;
        let samples = self
            .joiner
            .apply(&flows, table, |ip| ip.is_loopback() || local.contains(&ip));
        Ok(SampleBatch {
            taken_at: Instant::now(),
            samples,
            lost_records: stats.lost_records(),
            estimated: false,
        })
    }

    /// DNS analytics for the interval since the previous call (the first
    /// call covers everything since the capture opened). Always `Some`: a
    /// capture that saw no DNS reports zeros.
    fn take_dns(&mut self) -> Option<DnsAnalytics> {
        Some(lock(&self.shared).dns.take())
    }
}

impl Drop for PcapSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // pcap_breakloop wakes a blocked pcap_next_ex (an eventfd on Linux,
        // libpcap ≥ 1.10) and stays armed if the thread is not blocked yet.
        self.breaker.breakloop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

fn capture_loop(
    mut cap: Capture<Active>,
    link: LinkType,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
) {
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match cap.next_packet() {
            Ok(p) => {
                let ts = timestamp(p.header.ts);
                let wire_len = usize::try_from(p.header.len).unwrap_or(usize::MAX);
                lock(shared).observe(link, p.data, wire_len, ts);
            }
            Err(pcap::Error::TimeoutExpired) => {}
            // Woken by pcap_breakloop (reported as "no more packets").
            Err(_) if stop.load(Ordering::Relaxed) => return,
            Err(e) => {
                lock(shared).fatal = Some(e.to_string());
                return;
            }
        }
        if last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            if let Ok(s) = cap.stats() {
                lock(shared).stats.kernel_drops = u64::from(s.dropped);
            }
        }
    }
}

/// A capture timestamp as time since the Unix epoch (0 if before it).
fn timestamp(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0).min(999_999);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

/// Which socket a side of a flow belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SocketKey {
    /// A socket of the table.
    Inode(u64),
    /// A local endpoint no socket in the table owns.
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
}

/// Turns drained flow counters into cumulative per-socket counters. Pure:
/// it is given the socket table and a locality test, so it is tested
/// without a capture.
#[derive(Debug, Default)]
struct FlowJoiner {
    sockets: HashMap<SocketKey, Counted>,
    previous: SocketTable,
    next_id: u64,
}

#[derive(Clone, Copy)]
enum Side {
    Tx,
    Rx,
}

impl FlowJoiner {
    fn apply(
        &mut self,
        flows: &HashMap<FlowKey, u64>,
        table: SocketTable,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Vec<SocketSample> {
        for c in self.sockets.values_mut() {
            c.active = false;
        }
        for e in table.entries().iter().filter(|e| e.inode != 0) {
            let c = self.counted(SocketKey::Inode(e.inode), e.protocol, e.local, e.remote);
            c.refresh(e);
        }
        for (f, &bytes) in flows {
            self.credit(&table, f.protocol, f.src, f.dst, Side::Tx, bytes, &is_local);
            self.credit(&table, f.protocol, f.dst, f.src, Side::Rx, bytes, &is_local);
        }

        let mut samples = Vec::with_capacity(self.sockets.len());
        let mut gone = Vec::new();
        for (key, c) in &self.sockets {
            let closed = match key {
                SocketKey::Inode(inode) => table.by_inode(*inode).is_none(),
                SocketKey::Flow { .. } => !c.active,
            };
            if closed {
                gone.push(*key);
            }
            samples.push(SocketSample {
                id: c.id,
                protocol: c.protocol,
                local: Some(c.local),
                remote: c.remote,
                state: if closed { "CLOSED" } else { c.state }.to_string(),
                pid: c.pid,
                comm: c.comm.clone(),
                cgroup_id: None,
                rx_bytes: c.rx_bytes,
                tx_bytes: c.tx_bytes,
                rtt_us: None,
                closed,
                origin: CountOrigin::SinceAttach,
            });
        }
        for key in gone {
            self.sockets.remove(&key);
        }
        self.previous = table;
        samples.sort_by_key(|s| s.id);
        samples
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
                        SocketKey::Flow { .. } => 0,
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

    /// Credit `bytes` to the socket whose local end is `local` talking to `remote`.
    #[allow(clippy::too_many_arguments)]
    fn credit(
        &mut self,
        table: &SocketTable,
        protocol: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
        side: Side,
        bytes: u64,
        is_local: &impl Fn(IpAddr) -> bool,
    ) {
        let live = |t: &SocketTable| {
            t.lookup(protocol, local, remote)
                .filter(|e| e.inode != 0)
                .map(|e| e.inode)
        };
        let key = match live(table) {
            Some(inode) => SocketKey::Inode(inode),
            // Closed since the previous read: its last bytes are its own.
            None => match live(&self.previous)
                .filter(|i| self.sockets.contains_key(&SocketKey::Inode(*i)))
            {
                Some(inode) => SocketKey::Inode(inode),
                None if is_local(local.ip()) => SocketKey::Flow {
                    protocol,
                    local,
                    remote,
                },
                None => return,
            },
        };
        let c = self.counted(key, protocol, local, Some(remote));
        c.active = true;
        match side {
            Side::Tx => c.tx_bytes += bytes,
            Side::Rx => c.rx_bytes += bytes,
        }
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

    fn flows(list: &[(Protocol, &str, &str, u64)]) -> HashMap<FlowKey, u64> {
        list.iter()
            .map(|&(protocol, s, d, n)| {
                (
                    FlowKey {
                        protocol,
                        src: sa(s),
                        dst: sa(d),
                    },
                    n,
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
        let s = j.apply(&f, loopback_table(), nothing_local);
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
        let s2 = j.apply(&f, loopback_table(), nothing_local);
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
        let s = j.apply(&f, loopback_table(), |ip| ip.is_loopback());
        let srv = find(&s, "0.0.0.0:53", None);
        assert_eq!((srv.rx_bytes, srv.tx_bytes, srv.pid), (73, 100, Some(30)));
        // The client has no socket in the table but is local: a socket-less flow.
        let cli = find(&s, "127.0.0.1:5000", Some("127.0.0.1:53"));
        assert_eq!((cli.tx_bytes, cli.rx_bytes, cli.pid), (40, 100, None));
        // The remote 10.0.0.9 is not local: no sample for its side.
        assert!(!s.iter().any(|x| x.local == Some(sa("10.0.0.9:7000"))));
        // The socket-less flow closes when it goes idle, and is then forgotten.
        let s = j.apply(&HashMap::new(), loopback_table(), |ip| ip.is_loopback());
        let cli = find(&s, "127.0.0.1:5000", Some("127.0.0.1:53"));
        assert!(cli.closed);
        assert_eq!(cli.tx_bytes, 40);
        let s = j.apply(&HashMap::new(), loopback_table(), |ip| ip.is_loopback());
        assert!(!s.iter().any(|x| x.local == Some(sa("127.0.0.1:5000"))));
    }

    #[test]
    fn socket_closed_since_last_read_gets_its_final_bytes_then_is_forgotten() {
        let mut j = FlowJoiner::default();
        j.apply(
            &flows(&[(Protocol::Tcp, A, B, 10)]),
            loopback_table(),
            nothing_local,
        );
        // Both ends closed before this read; their last bytes still arrive.
        let after =
            SocketTable::from_entries(vec![entry(Protocol::Tcp, 4, "0.0.0.0:22", None, 40)]);
        let s = j.apply(
            &flows(&[(Protocol::Tcp, A, B, 7), (Protocol::Tcp, B, A, 3)]),
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
        let s = j.apply(&HashMap::new(), after, nothing_local);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn ids_are_unique_and_a_reused_tuple_gets_a_new_id() {
        let mut j = FlowJoiner::default();
        let s1 = j.apply(&HashMap::new(), loopback_table(), nothing_local);
        let ids: HashSet<_> = s1.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), s1.len());
        // Same 5-tuple, new socket (new inode).
        let t = SocketTable::from_entries(vec![entry(Protocol::Tcp, 99, A, Some(B), 10)]);
        let s2 = j.apply(&flows(&[(Protocol::Tcp, A, B, 1)]), t, nothing_local);
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
        s.observe(LinkType::Ethernet, &f, f.len(), Duration::ZERO);
        s.observe(LinkType::Ethernet, &f[..40], 40, Duration::ZERO);
        s.observe(LinkType::Ethernet, &f[..64], f.len(), Duration::ZERO);
        let q = dns::build_message(1, false, 0, "a.example.com", 1);
        let d = ethernet(
            0x0800,
            &[],
            &ipv4([127, 0, 0, 1], [127, 0, 0, 1], UDP, 0, 0, &udp(999, 53, &q)),
        );
        s.observe(LinkType::Ethernet, &d, d.len(), Duration::ZERO);
        let key = FlowKey {
            protocol: Protocol::Tcp,
            src: sa("127.0.0.1:1"),
            dst: sa("127.0.0.1:2"),
        };
        assert_eq!(s.flows.get(&key), Some(&600));
        assert_eq!(s.stats.decode_errors, 1);
        assert_eq!(s.stats.packets, 3);
        assert_eq!(s.stats.lost_records(), 1);
        let a = s.dns.take();
        assert_eq!(a.total_queries, 1);
        assert_eq!(a.top_domains, vec![("example.com".to_string(), 1)]);
    }
}
