//! The kernel collector: loads netwatch's BPF programs on the best hook tier
//! the running kernel allows, and turns the per-socket map and the
//! closed-socket ring buffer into [`SocketSample`]s. It reads maps; it never
//! builds wire rows or decides attribution.

pub mod btf;
pub mod tier;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::Ebpf;
use log::{debug, warn};
use netwatch_common::{
    counter, names, ClosedSock, SockKey, SockStats, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP,
    STATE_DESTROYED,
};

use super::{CountOrigin, Protocol, SampleBatch, SocketId, SocketSample, SocketSource};
pub use tier::{LoadError, LoadOptions, TierChoice};

/// The BPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch"));

/// A TCP state number as the wire spells it.
fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        // Seen moving bytes before any state change was traced: it is connected.
        _ => "ESTABLISHED",
    }
}

fn ip(family: u16, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}

/// Convert one kernel record into a sample. `None` for records of a family
/// or protocol the programs should never have produced.
pub fn to_sample(key: &SockKey, st: &SockStats, closed: bool) -> Option<SocketSample> {
    let protocol = match st.protocol {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        _ => return None,
    };
    let local = ip(st.family, &st.laddr).map(|a| SocketAddr::new(a, st.lport));
    let remote_ip = ip(st.family, &st.raddr)?;
    let remote = (st.rport != 0 || !remote_ip.is_unspecified())
        .then(|| SocketAddr::new(remote_ip, st.rport));
    let state = match protocol {
        Protocol::Tcp => tcp_state_name(st.state),
        Protocol::Udp if remote.is_some() => "ESTABLISHED",
        Protocol::Udp => "UNCONN",
    };
    let comm_len = st
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(st.comm.len());
    let comm = (comm_len > 0).then(|| String::from_utf8_lossy(&st.comm[..comm_len]).into_owned());
    Some(SocketSample {
        id: SocketId {
            primary: key.sk,
            secondary: st.first_ns,
        },
        protocol,
        local,
        remote,
        state: if closed {
            "CLOSE".to_string()
        } else {
            state.to_string()
        },
        pid: (st.tgid != 0).then_some(st.tgid),
        comm,
        cgroup_id: (st.cgroup_id != 0).then_some(st.cgroup_id),
        rx_bytes: st.rx_bytes,
        tx_bytes: st.tx_bytes,
        rtt_us: None,
        closed,
        origin: CountOrigin::SinceAttach,
    })
}

/// The programs' own counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub created: u64,
    pub closed: u64,
    pub ringbuf_drops: u64,
    pub insert_failed: u64,
    pub replaced_lost: u64,
}

/// The loaded and attached programs and their maps.
pub struct EbpfSource {
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    tier: tier::Tier,
    sockets: BpfHashMap<MapData, SockKey, SockStats>,
    closed: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Entries userspace deleted (closed sockets left in the map by a full ring buffer).
    user_deleted: u64,
}

impl EbpfSource {
    /// Load and attach on the tier `opts` asks for (or the best available).
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        let (mut ebpf, tier) = tier::load_best(opts)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                debug!("aya-log not available for the BPF programs: {e}");
                None
            }
        };
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(LoadError::MissingMap(name))
        };
        let sockets = BpfHashMap::try_from(take(&mut ebpf, names::SOCKETS)?)
            .map_err(|e| LoadError::Map(names::SOCKETS, e))?;
        let closed = RingBuf::try_from(take(&mut ebpf, names::CLOSED)?)
            .map_err(|e| LoadError::Map(names::CLOSED, e))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, names::COUNTERS)?)
            .map_err(|e| LoadError::Map(names::COUNTERS, e))?;
        Ok(Self {
            ebpf,
            tier,
            sockets,
            closed,
            counters,
            logger,
            user_deleted: 0,
        })
    }

    /// The tier in use.
    pub fn tier(&self) -> tier::Tier {
        self.tier
    }

    /// The loaded programs, for statistics (`run_time_ns / run_cnt`).
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The programs' own counters, summed over CPUs.
    pub fn kernel_counters(&self) -> KernelCounters {
        let get = |i: u32| -> u64 {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            created: get(counter::CREATED),
            closed: get(counter::CLOSED),
            ringbuf_drops: get(counter::RINGBUF_DROPS),
            insert_failed: get(counter::INSERT_FAILED),
            replaced_lost: get(counter::REPLACED_LOST),
        }
    }

    /// Read everything: closed-socket records first, then the live map, so a
    /// socket that closes in between is counted by its record next time.
    pub fn read_samples(&mut self) -> SampleBatch {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
        let mut samples = Vec::new();
        let mut malformed = 0u64;
        while let Some(item) = self.closed.next() {
            let bytes: &[u8] = &item;
            if bytes.len() < std::mem::size_of::<ClosedSock>() {
                malformed += 1;
                continue;
            }
            // SAFETY: the record is a ClosedSock written by our programs (length
            // checked above); read_unaligned copes with any alignment.
            let rec: ClosedSock = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            if let Some(s) = to_sample(&rec.key, &rec.stats, true) {
                samples.push(s);
            }
        }
        let mut live = 0u64;
        let mut finished = Vec::new();
        let mut seen = HashSet::new();
        for entry in self.sockets.iter() {
            // An entry deleted while we iterate is simply gone: its record
            // is in the ring buffer for the next read.
            let Ok((key, st)) = entry else { continue };
            if !seen.insert(key.sk) {
                continue;
            }
            live += 1;
            let closed = st.state == STATE_DESTROYED;
            if closed {
                finished.push(key);
            }
            if let Some(s) = to_sample(&key, &st, closed) {
                samples.push(s);
            }
        }
        for key in finished {
            // Destroyed, final counters read: make room.
            if self.sockets.remove(&key).is_ok() {
                self.user_deleted += 1;
            }
        }
        let k = self.kernel_counters();
        // Entries the LRU evicted: created, minus every way an entry leaves, minus those still here.
        let evicted = k
            .created
            .saturating_sub(k.closed + self.user_deleted + live);
        if malformed > 0 {
            warn!("{malformed} malformed closed-socket records from the kernel");
        }
        SampleBatch {
            taken_at: Instant::now(),
            samples,
            lost_records: evicted + k.insert_failed + k.replaced_lost + malformed,
            estimated: false,
        }
    }
}

impl SocketSource for EbpfSource {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn detail(&self) -> Option<String> {
        Some(self.tier.name().to_string())
    }

    fn read(&mut self) -> anyhow::Result<SampleBatch> {
        Ok(self.read_samples())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> SockStats {
        let mut st = SockStats::zeroed();
        st.family = AF_INET;
        st.protocol = IPPROTO_TCP;
        st.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        st.raddr[..4].copy_from_slice(&[10, 1, 2, 3]);
        st.lport = 5000;
        st.rport = 443;
        st.tgid = 42;
        st.comm[..4].copy_from_slice(b"curl");
        st.tx_bytes = 10;
        st.rx_bytes = 20;
        st.first_ns = 99;
        st
    }

    #[test]
    fn kernel_record_becomes_sample() {
        let s = to_sample(&SockKey { sk: 7 }, &stats(), false).unwrap();
        assert_eq!(
            s.id,
            SocketId {
                primary: 7,
                secondary: 99
            }
        );
        assert_eq!(s.local, Some("127.0.0.1:5000".parse().unwrap()));
        assert_eq!(s.remote, Some("10.1.2.3:443".parse().unwrap()));
        assert_eq!(s.pid, Some(42));
        assert_eq!(s.comm.as_deref(), Some("curl"));
        assert_eq!((s.rx_bytes, s.tx_bytes), (20, 10));
        assert_eq!(s.state, "ESTABLISHED");
        assert_eq!(s.origin, CountOrigin::SinceAttach);
    }

    #[test]
    fn ipv6_and_unconnected_udp() {
        let mut st = stats();
        st.family = AF_INET6;
        st.protocol = IPPROTO_UDP;
        st.laddr = Ipv6Addr::LOCALHOST.octets();
        st.raddr = [0; 16];
        st.rport = 0;
        let s = to_sample(&SockKey { sk: 1 }, &st, false).unwrap();
        assert_eq!(s.local, Some("[::1]:5000".parse().unwrap()));
        assert_eq!(s.remote, None);
        assert_eq!(s.state, "UNCONN");
    }

    #[test]
    fn garbage_records_are_rejected_not_panicked_on() {
        let mut st = stats();
        st.protocol = 99;
        assert!(to_sample(&SockKey { sk: 1 }, &st, false).is_none());
        let mut st = stats();
        st.family = 1; // AF_UNIX
        assert!(to_sample(&SockKey { sk: 1 }, &st, false).is_none());
        let mut st = stats();
        st.comm = [0xff; 16];
        assert!(to_sample(&SockKey { sk: 1 }, &st, true).unwrap().closed);
    }
}
