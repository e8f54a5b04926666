//! The kernel collector: loads netwatch's BPF programs on the best hook tier
//! the running kernel allows, and turns the per-socket map and the
//! closed-socket ring buffer into [`SocketSample`]s, and the TCP events ring
//! into [`TcpEvent`]s ([`tcp_events`]). It reads maps; it never builds wire
//! rows or decides attribution.

pub mod active;
pub mod btf;
pub mod finals;
pub mod generation;
pub mod held;
pub mod misses;
pub mod pin;
pub mod pinning;
pub mod reader;
pub mod seed;
pub mod states;
pub mod sys;
pub mod tcp_events;
pub mod tier;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::Ebpf;
use log::{debug, info, warn};
use netwatch_common::{
    counter, names, SockKey, SockStats, AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, OWNERS,
};
use smallvec::SmallVec;

use crate::net;

use super::{
    CountOrigin, Protocol, SampleBatch, SocketId, SocketSample, SocketSource, TcpEvent,
    TcpStateCounts,
};
pub use reader::Refresh;
pub use tier::{LoadError, LoadOptions, TierChoice};

/// The BPF object built by `build.rs` (empty when built with `AYA_BUILD_SKIP=1`).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netwatch"));

/// Size of the `TCP_EVENTS` ring buffer, as the BPF object defines it
/// (13,107 records: 72 bytes and an 8-byte header each; drained every tick).
pub const TCP_EVENTS_BYTES: u32 = 1024 * 1024;

/// A TCP state number as the wire spells it, the same names every Linux
/// source uses ([`net::tcp_state_name`]).
fn tcp_state(kernel_state: u8) -> &'static str {
    // 0: seen moving bytes before any state change was traced: it is connected.
    net::tcp_state_name(kernel_state).unwrap_or(net::state::ESTABLISHED)
}

fn ip(family: u16, raw: &[u8; 16]) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(*raw))),
        _ => None,
    }
}

/// The id of one owner's share of one socket: the socket is (`key`,
/// `first_ns`); owners are told apart by their tgid in the high half;
/// tagged so attribution makes one connection row of the shares.
fn owner_id(key: &SockKey, first_ns: u64, tgid: u32) -> SocketId {
    SocketId::shared(key.sk, first_ns, tgid)
}

fn comm_of(raw: &[u8; netwatch_common::COMM_LEN]) -> Option<Arc<str>> {
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    (len > 0).then(|| Arc::from(String::from_utf8_lossy(&raw[..len])))
}

/// A TCP socket's quality counters as the kernel programs keep them.
pub fn tcp_counters(st: &SockStats) -> crate::source::TcpCounters {
    crate::source::TcpCounters {
        retrans_segs: u64::from(st.retrans_segs),
        retrans_bytes: st.retrans_bytes,
        resets_sent: u64::from(st.resets_sent),
        resets_received: u64::from(st.resets_received),
        connect: (st.connect_us != 0)
            .then(|| std::time::Duration::from_micros(u64::from(st.connect_us))),
    }
}

/// Convert one kernel record into samples: one per process that moved
/// bytes on the socket (slots of one tgid summed), the most recent mover
/// first, adjacent and with the same `id.primary` so that attribution makes
/// one connection row of them. A socket no process has moved bytes on yet
/// is one sample without an owner. Empty for records of a family or
/// protocol the programs should never have produced.
pub fn to_samples(key: &SockKey, st: &SockStats, closed: bool) -> Samples {
    let protocol = match st.protocol {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        _ => return Samples::new(),
    };
    let local = ip(st.family, &st.laddr).map(|a| SocketAddr::new(a, st.lport));
    let Some(remote_ip) = ip(st.family, &st.raddr) else {
        return Samples::new();
    };
    let remote = (st.rport != 0 || !remote_ip.is_unspecified())
        .then(|| SocketAddr::new(remote_ip, st.rport));
    let state = if closed {
        net::state::CLOSED
    } else {
        match protocol {
            Protocol::Tcp => tcp_state(st.state),
            Protocol::Udp => net::udp_state(remote.is_some()),
        }
    };
    // (tgid, comm, cgroup, rx, tx, last interval), slots of one process summed.
    type OwnerSums = (u32, Option<Arc<str>>, u64, u64, u64, u32);
    let mut owners: SmallVec<[OwnerSums; OWNERS]> = SmallVec::new();
    for o in st.owners.iter().filter(|o| o.tgid != 0) {
        match owners.iter_mut().find(|x| x.0 == o.tgid) {
            Some(x) => {
                x.3 += o.rx_bytes;
                x.4 += o.tx_bytes;
                if o.last_epoch > x.5 {
                    x.5 = o.last_epoch;
                    x.1 = comm_of(&o.comm).or(x.1.take());
                }
            }
            None => owners.push((
                o.tgid,
                comm_of(&o.comm),
                o.cgroup_id,
                o.rx_bytes,
                o.tx_bytes,
                o.last_epoch,
            )),
        }
    }
    owners.sort_by_key(|o| std::cmp::Reverse(o.5));
    if owners.is_empty() {
        owners.push((0, None, 0, 0, 0, 0));
    }
    // The socket's TCP counters go on one sample only, so that per-process
    // sums never count a retransmit twice: the owner of the first slot (the
    // socket's first mover, which never changes while the entry lives),
    // or the one ownerless sample.
    let first_slot = st.owners[0].tgid;
    let tcp = (protocol == Protocol::Tcp).then(|| tcp_counters(st));
    owners
        .into_iter()
        .map(|(tgid, comm, cgroup_id, rx, tx, _)| SocketSample {
            id: owner_id(key, st.first_ns, tgid),
            protocol,
            local,
            remote,
            state: state.into(),
            pid: (tgid != 0).then_some(tgid),
            comm,
            cgroup_id: (cgroup_id != 0).then_some(cgroup_id),
            rx_bytes: rx,
            tx_bytes: tx,
            rtt_us: (protocol == Protocol::Tcp && st.srtt_us != 0).then_some(f64::from(st.srtt_us)),
            tcp: if tgid == first_slot { tcp } else { None },
            closed,
            origin: CountOrigin::SinceAttach,
        })
        .collect()
}

/// The programs' own counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub created: u64,
    pub closed: u64,
    pub ringbuf_drops: u64,
    pub insert_failed: u64,
    pub final_lost: u64,
    pub owner_full: u64,
    pub missed_return: u64,
    /// TCP events the kernel could not hand over (ring full).
    pub tcp_events_lost: u64,
    /// Active-set inserts that failed (not a loss: the next read walks).
    pub active_full: u64,
    /// TCP state changes in the loader's network namespace.
    pub state_changes: u64,
}

/// The loaded and attached programs and their maps. A read is done by
/// its parts: [`finals::Finals`] takes the closed sockets' final records,
/// [`reader::Reader`] the live sockets that changed or went (and keeps
/// every live one's samples); this struct joins them into a batch, keeps
/// the pins and their baseline, and reads the programs' counters, TCP
/// events and state counts.
pub struct EbpfSource {
    /// Owns the programs and their links: dropping it detaches everything
    /// not pinned. `None` when continuing from pins (the pins hold them).
    ebpf: Option<Ebpf>,
    tier: tier::Tier,
    /// The per-socket map's reader: the sockets that changed or went,
    /// and every live one's samples.
    reader: reader::Reader<reader::KernelSockets, active::ActiveSet>,
    /// The final records of closed sockets.
    finals: finals::Finals,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Highest eviction count estimated so far (kept monotonic).
    evicted: u64,
    /// What seeding found at load (`None`: it could not run).
    seeded: Option<seed::SeedReport>,
    /// The pins, their baseline and its lock (empty unpinned).
    pins: pinning::Pinning,
    /// The TCP events ring, read at every [`SocketSource::take_tcp_events`].
    tcp_events: Option<tcp_events::TcpEvents>,
    /// Lost TCP events already warned about, and when (at most once a minute).
    tcp_events_lost_logged: (u64, Option<Instant>),
    /// How the last read found its sockets.
    last_refresh: Refresh,
    /// The TCP state iterator, loaded (`states::prepare`) or reopened from
    /// its pin; `None` when neither worked or it failed (sock_diag then).
    states_iter: Option<states::Loaded>,
    /// The last counts of every TCP socket, the (state changes, time-wait
    /// count) they were taken at, and reads since the last walk.
    states_last: Option<((u64, Option<u64>), TcpStateCounts, u32)>,
    /// Its output, reused.
    states_buf: Vec<u8>,
    /// The programs' skipped runs (`None`: they could not be found).
    misses: Option<misses::Misses>,
    /// Skipped runs already warned about, and when (at most once a minute).
    misses_logged: (u64, Option<Instant>),
}

/// The TCP state counts are walked again after this many reads even when
/// nothing seemed to change.
const STATES_WALK_EVERY: u32 = 30;

/// One socket's samples, one per owner: inline for the usual single owner,
/// so a tracked socket costs no allocation of its own.
pub type Samples = SmallVec<[SocketSample; 1]>;

impl EbpfSource {
    /// Load and attach on the tier `opts` asks for (or the best available);
    /// with `opts.pin`, continue from this build's pins if there are some.
    pub fn load(opts: &LoadOptions) -> Result<Self, LoadError> {
        let loaded = Self::load_inner(opts);
        // Loaded or not, the kernel's parsed BTF is not needed any more.
        btf::release_kernel_btf();
        loaded
    }

    fn load_inner(opts: &LoadOptions) -> Result<Self, LoadError> {
        let Some(pin_opts) = &opts.pin else {
            return Self::load_fresh(opts);
        };
        match Self::load_pinned(opts, pin_opts) {
            Err(LoadError::Pin(e)) => {
                // Whatever this attempt pinned half-way goes.
                let _ = pin::remove(&pin::staging(pin_opts, opts));
                warn!(
                    "pinning under {} is not possible ({e}): running without pins, counters restart with the agent (without --pin or `pin = true` it is not tried)",
                    pin_opts.dir.display()
                );
                Self::load_fresh(&LoadOptions {
                    pin: None,
                    ..opts.clone()
                })
            }
            other => other,
        }
    }

    /// [`Self::load`] with pins: continue from them, or load and pin.
    fn load_pinned(opts: &LoadOptions, pin_opts: &pin::PinOptions) -> Result<Self, LoadError> {
        let Some(lock) = pin::lock(pin_opts).map_err(LoadError::Pin)? else {
            warn!(
                "another agent holds the pins at {} (lock {}.lock): running without pinning",
                pin_opts.dir.display(),
                pin_opts.state_file.display()
            );
            return Self::load_fresh(&LoadOptions {
                pin: None,
                ..opts.clone()
            });
        };
        let pinned = pin::open_existing(pin_opts, opts).map_err(LoadError::Pin)?;
        let Some(pinned) = pinned else {
            let mut source = Self::load_fresh(opts)?;
            source.pins.lock = Some(lock);
            return Ok(source);
        };
        info!(
            "continuing from the maps and links pinned at {} ({} tier): the programs kept counting",
            pin_opts.dir.display(),
            pinned.tier
        );
        let held = held::Held::open(&pinned.root).map_err(LoadError::Pin)?;
        let (store, restore) = generation::BaselineStore::resume(
            &pin_opts.state_file,
            &pinned.instance,
            pinned.generation,
        );
        if let Some(r) = &restore {
            info!(
                "baseline of {} sockets restored from {}",
                r.len(),
                pin_opts.state_file.display()
            );
        }
        let mut maps = pinned.maps;
        let mut take = |name: &'static str| maps.remove(name).ok_or(LoadError::MissingMap(name));
        let mut source = Self::from_maps(
            None,
            pinned.tier,
            opts,
            None,
            [
                take(names::SOCKETS)?,
                take(names::CLOSED)?,
                take(names::DESTROYED)?,
                take(names::COUNTERS)?,
            ],
            None,
        )?;
        let tcp_ring = take(names::TCP_EVENTS)?;
        source.reader.set_active(active::ActiveSet::from_maps(
            [names::EPOCH, names::ACTIVE[0], names::ACTIVE[1]].map(|n| maps.remove(n)),
        ));
        source.pins.pinned = Some((pinned.instance, pin_opts.state_file.clone()));
        source.pins.restore = restore;
        source.pins.store = Some(store);
        source.pins.held = Some(held);
        source.pins.lock = Some(lock);
        source.pins.continued = true;
        source.states_iter = pinned.states.map(|p| states::Loaded::Pinned(Box::new(p)));
        source.start_tcp_events(tcp_ring)?;
        Ok(source)
    }

    /// Load and attach anew (pinning everything when asked).
    fn load_fresh(opts: &LoadOptions) -> Result<Self, LoadError> {
        let (mut ebpf, tier) = tier::load_best(opts)?;
        // After attach, so a socket is either seen by the programs or seeded.
        let started = Instant::now();
        let seeded = seed::run(&mut ebpf);
        // Before pinning, so the pins carry it for a restarted agent.
        let states_iter = match states::prepare(&mut ebpf) {
            Ok(()) => Some(states::Loaded::InObject),
            Err(e) => {
                debug!("TCP states come from sock_diag: {e}");
                None
            }
        };
        match &seeded {
            Ok(r) => {
                info!(
                    "seeded {} existing sockets and {} no process holds in {:.1?} ({} already tracked, {} refused by a full map, {} holders past the {} owner slots)",
                    r.created,
                    r.ownerless,
                    started.elapsed(),
                    r.tracked,
                    r.failed,
                    r.owners_full,
                    netwatch_common::OWNERS
                );
                if r.skipped > 0 {
                    warn!("{} existing sockets are not listed until they move bytes: seeding may fill at most half the socket map ({} entries; raise it with --max-sockets)", r.skipped, seed::limit(opts.max_sockets));
                }
            }
            Err(e) => warn!("existing sockets are not listed until they move bytes: {e}"),
        }
        let published = match &opts.pin {
            Some(p) => {
                let fail = |e: String| {
                    LoadError::Pin(std::io::Error::other(format!(
                        "pinning under {}: {e}",
                        p.dir.display()
                    )))
                };
                let published =
                    pin::publish(&mut ebpf, &pin::staging(p, opts), p, opts).map_err(fail)?;
                let held = held::Held::open(&published.root).map_err(|e| {
                    // Not left attached behind an agent that runs unpinned.
                    let _ = pin::remove(&published.root);
                    LoadError::Pin(e)
                })?;
                let store = generation::BaselineStore::fresh(
                    &p.state_file,
                    &published.instance,
                    published.generation,
                );
                Some(((published.instance, p.state_file.clone()), store, held))
            }
            None => None,
        };
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
        let maps = [
            take(&mut ebpf, names::SOCKETS)?,
            take(&mut ebpf, names::CLOSED)?,
            take(&mut ebpf, names::DESTROYED)?,
            take(&mut ebpf, names::COUNTERS)?,
        ];
        let tcp_ring = take(&mut ebpf, names::TCP_EVENTS)?;
        let active = [names::EPOCH, names::ACTIVE[0], names::ACTIVE[1]].map(|n| ebpf.take_map(n));
        if log::log_enabled!(log::Level::Debug) {
            let ids: Vec<u32> = ebpf
                .programs()
                .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
                .collect();
            debug!(
                "BPF programs loaded, ids {ids:?} ({}: `bpftool prog show id N`)",
                if opts.pin.is_some() {
                    "pinned: they stay after the agent exits, until `netwatch-agent --unpin`"
                } else {
                    "not pinned: they go when the agent exits"
                }
            );
        }
        let mut source = Self::from_maps(Some(ebpf), tier, opts, logger, maps, seeded.ok())?;
        source.states_iter = states_iter;
        source
            .reader
            .set_active(active::ActiveSet::from_maps(active));
        if let Some((pinned, store, held)) = published {
            source.pins.pinned = Some(pinned);
            source.pins.store = Some(store);
            source.pins.held = Some(held);
        }
        source.start_tcp_events(tcp_ring)?;
        Ok(source)
    }

    fn from_maps(
        ebpf: Option<Ebpf>,
        tier: tier::Tier,
        opts: &LoadOptions,
        logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
        [sockets_map, closed, destroyed, counters]: [aya::maps::Map; 4],
        seeded: Option<seed::SeedReport>,
    ) -> Result<Self, LoadError> {
        let sockets_fd = active::fd_of(&sockets_map);
        let sockets =
            BpfHashMap::try_from(sockets_map).map_err(|e| LoadError::Map(names::SOCKETS, e))?;
        let closed = RingBuf::try_from(closed).map_err(|e| LoadError::Map(names::CLOSED, e))?;
        let destroyed =
            BpfHashMap::try_from(destroyed).map_err(|e| LoadError::Map(names::DESTROYED, e))?;
        // Pinned: records stay in the kernel's ring until a read takes
        // them, so a killed agent loses none it had not delivered.
        let finals =
            finals::Finals::start(closed, destroyed, opts.drain_thread && opts.pin.is_none())
                .map_err(LoadError::DrainThread)?;
        // Every program of ours bumps a counter: the users of this
        // `COUNTERS` map are this object's programs.
        let misses = match &counters {
            aya::maps::Map::PerCpuArray(d) => d
                .info()
                .map_err(std::io::Error::other)
                .and_then(|i| misses::Misses::find(i.id())),
            _ => Err(std::io::Error::other("not a per-CPU array")),
        };
        let misses = match misses {
            Ok(m) => Some(m),
            Err(e) => {
                warn!("finding the loaded programs by their {} map: {e}; program runs the kernel skips are not counted in lost_records (run as root, or with CAP_SYS_ADMIN at start)", names::COUNTERS);
                None
            }
        };
        let counters =
            PerCpuArray::try_from(counters).map_err(|e| LoadError::Map(names::COUNTERS, e))?;
        Ok(Self {
            ebpf,
            tier,
            reader: reader::Reader::new(
                reader::KernelSockets::new(sockets, sockets_fd),
                None,
                opts.max_sockets,
            ),
            finals,
            counters,
            logger,
            evicted: 0,
            seeded,
            pins: pinning::Pinning::default(),
            tcp_events: None,
            tcp_events_lost_logged: (0, None),
            last_refresh: Refresh::None,
            states_iter: None,
            states_last: None,
            states_buf: Vec::new(),
            misses,
            misses_logged: (0, None),
        })
    }

    /// Each program's skipped runs as the last read found them (empty when
    /// the programs could not be found).
    pub fn program_misses(&self) -> Vec<misses::ProgramMisses> {
        self.misses
            .as_ref()
            .map(misses::Misses::programs)
            .unwrap_or_default()
    }

    /// Read the programs' skipped runs (one syscall per program and kprobe
    /// link) and warn, at most once a minute, when there are new ones.
    fn read_misses(&mut self) -> u64 {
        let Some(m) = self.misses.as_mut() else {
            return 0;
        };
        let total = m.read();
        let (logged, when) = self.misses_logged;
        if total > logged && when.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60))
        {
            warn!(
                "{total} program runs skipped by the kernel since load ({}): a program was already running on that CPU, so those events (bytes, state changes, socket ends) were not seen; counted in lost_records",
                m.summary()
            );
            self.misses_logged = (total, Some(Instant::now()));
        }
        total
    }

    /// Take the TCP events ring and say once what this kernel shows.
    fn start_tcp_events(&mut self, ring: aya::maps::Map) -> Result<(), LoadError> {
        let ring = RingBuf::try_from(ring).map_err(|e| LoadError::Map(names::TCP_EVENTS, e))?;
        info!(
            "{}",
            tcp_events::coverage(&tcp_events::SendResetFormat::from_kernel(), self.tier)
        );
        self.tcp_events = Some(tcp_events::TcpEvents::new(ring));
        Ok(())
    }

    /// The kernel's TCP event records now in the ring, raw, with their
    /// monotonic time (`bpf_ktime_get_ns`; what
    /// [`SocketSource::take_tcp_events`] reads).
    pub fn take_tcp_records(
        &mut self,
    ) -> Vec<(netwatch_common::TcpEventRecord, std::time::Duration)> {
        self.tcp_events
            .as_mut()
            .map(tcp_events::TcpEvents::take_records)
            .unwrap_or_default()
    }

    /// TCP events lost since load: the kernel's count (ring full) and
    /// malformed records.
    pub fn tcp_events_lost(&self) -> u64 {
        self.kernel_counters().tcp_events_lost
            + self
                .tcp_events
                .as_ref()
                .map_or(0, tcp_events::TcpEvents::malformed)
    }

    /// What seeding found at load, if it ran.
    pub fn seed_report(&self) -> Option<seed::SeedReport> {
        self.seeded
    }

    /// The tier in use.
    pub fn tier(&self) -> tier::Tier {
        self.tier
    }

    /// The loaded programs, for statistics (`run_time_ns / run_cnt`);
    /// `None` when continuing from pins.
    pub fn ebpf(&self) -> Option<&Ebpf> {
        self.ebpf.as_ref()
    }

    /// The snapshot of the last read was kept by the sinks: a restarted
    /// agent continues from its baseline.
    pub fn store_baseline(&mut self) {
        self.pins.commit();
    }

    /// Pinned objects pinned again since start, after their pins were
    /// removed while the agent ran (0 unpinned).
    pub fn pins_restored(&self) -> u64 {
        self.pins.restored()
    }

    /// The programs' own counters, summed over CPUs.
    pub fn kernel_counters(&self) -> KernelCounters {
        let get = |i: u32| self.kernel_counter(i);
        KernelCounters {
            created: get(counter::CREATED),
            closed: get(counter::CLOSED),
            ringbuf_drops: get(counter::RINGBUF_DROPS),
            insert_failed: get(counter::INSERT_FAILED),
            final_lost: get(counter::FINAL_LOST),
            owner_full: get(counter::OWNER_FULL),
            missed_return: get(counter::MISSED_RETURN),
            tcp_events_lost: get(counter::TCP_EVENTS_LOST),
            active_full: get(counter::ACTIVE_FULL),
            state_changes: get(counter::STATE_CHANGES),
        }
    }

    /// Read everything: closed-socket records first, then the live map, so a
    /// socket that closes in between is counted by its record next time.
    pub fn read_samples(&mut self) -> SampleBatch {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
        // Pins removed while the agent runs are made again (the held
        // descriptors kept everything attached meanwhile).
        self.pins.check();
        // A restarted agent's first read (its priming read, never
        // delivered) is exactly what the previous agent last delivered:
        // the next read's deltas then count everything after it, once.
        // Nothing is drained here: closed records wait in the kernel.
        if let Some(restore) = self.pins.take_restore() {
            return SampleBatch {
                taken_at: Instant::now(),
                samples: restore.iter().map(pin::BaselineEntry::sample).collect(),
                lost_records: 0,
                estimated: false,
                omitted: None,
            };
        }
        // Counters before the walk: see `evicted_estimate`.
        let before = self.kernel_counters();
        let finals::Closed {
            mut samples,
            finished,
        } = self.finals.take(before.ringbuf_drops);
        let marks = [
            self.kernel_counter(counter::ACTIVE_MARKS0),
            self.kernel_counter(counter::ACTIVE_MARKS0 + 1),
        ];
        let mut found = self.reader.refresh(&before, marks, &finished);
        let live = found.live;
        self.last_refresh = found.how;
        // What the pin baseline holds changed: see `Found::changes_baseline`.
        let changed = found.changes_baseline(samples.len());
        samples.append(&mut found.gone);
        let omitted = self.reader.list(found, &mut samples);
        let after = self.kernel_counters();
        let estimate = evicted_estimate(&before, &after, live);
        self.evicted = self.evicted.max(estimate);
        self.pins.prepare(changed, self.reader.samples());
        let skipped = self.read_misses();
        SampleBatch {
            taken_at: Instant::now(),
            samples,
            lost_records: self.evicted
                + after.insert_failed
                + after.final_lost
                + after.owner_full
                + after.missed_return
                + skipped
                + self.finals.dropped(),
            estimated: false,
            omitted,
        }
    }
}

impl EbpfSource {
    /// How the last read found the live sockets.
    pub fn last_refresh(&self) -> Refresh {
        self.last_refresh
    }

    /// Count the TCP sockets `keep(local port, remote port)` selects by
    /// state with the BPF iterator; `None` when it is not loaded (pins of
    /// an older agent) or failed (logged once).
    pub fn count_tcp_states(&mut self, keep: impl Fn(u16, u16) -> bool) -> Option<TcpStateCounts> {
        let loaded = self.states_iter.as_mut()?;
        match states::count(loaded, self.ebpf.as_mut(), &mut self.states_buf, keep) {
            Ok(c) => Some(c),
            Err(e) => {
                info!("TCP states come from sock_diag from now on: {e}");
                self.states_iter = None;
                None
            }
        }
    }

    /// One `COUNTERS` slot summed over CPUs (0 if unreadable).
    fn kernel_counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Every TCP socket of the namespace by state, walked only when a
    /// state changed (the kernel's `STATE_CHANGES`, any namespace) or the
    /// time-wait count moved (a time-wait socket expiring is no state
    /// change), and at least every [`STATES_WALK_EVERY`] reads (a
    /// time-wait socket's substate can change silently). Read before the
    /// walk, so a change during it makes the next read walk again.
    fn all_tcp_states(&mut self) -> Option<TcpStateCounts> {
        let stamp = (
            self.kernel_counter(counter::STATE_CHANGES),
            states::sockstat_tw(),
        );
        if let Some((at, counts, age)) = &mut self.states_last {
            if *at == stamp && stamp.1.is_some() && *age < STATES_WALK_EVERY {
                *age += 1;
                return Some(*counts);
            }
        }
        let counts = self.count_tcp_states(|_, _| true).or_else(|| {
            // No iterator: the same rule spares sock_diag dumps.
            crate::procinfo::tcp_states::TcpStates::read()
                .map_err(|e| debug!("TCP states by sock_diag: {e:#}"))
                .ok()
                .map(|t| TcpStateCounts {
                    established: t.connection_count,
                    time_wait: t.time_wait,
                    close_wait: t.close_wait,
                })
        })?;
        self.states_last = Some((stamp, counts, 0));
        Some(counts)
    }
}

/// Entries the LRU evicted, from the identity
/// `created = deleted by the kernel + evicted + live`.
/// The map is walked while sockets come and go, so creations are taken from
/// before the walk and kernel deletions from after it: sockets created or
/// deleted during the walk can only make the estimate low, never invent a
/// loss. The caller keeps the highest estimate seen.
pub fn evicted_estimate(before: &KernelCounters, after: &KernelCounters, live: u64) -> u64 {
    before.created.saturating_sub(after.closed + live)
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

    fn set_row_budget(&mut self, rows: usize) {
        self.reader.set_row_budget(rows);
    }

    fn delivered(&mut self) {
        self.store_baseline();
    }

    fn continuity(&self) -> Option<crate::source::Continuity> {
        self.pins.continuity()
    }

    /// The SYNs and resets the kernel traced since the last call, read
    /// from the ring now. Lost ones (a full ring) are logged as they grow.
    fn take_tcp_events(&mut self) -> Option<Vec<TcpEvent>> {
        let lost = self.tcp_events_lost();
        let (logged, when) = self.tcp_events_lost_logged;
        if lost > logged && when.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
            warn!(
                "{lost} TCP events (SYNs, resets) lost since start: the kernel's ring buffer was full between two reads; port-scan and connection alerts may miss attempts"
            );
            self.tcp_events_lost_logged = (lost, Some(Instant::now()));
        }
        let t = self.tcp_events.as_mut()?;
        Some(t.take(&tcp_events::host_ips()))
    }

    fn tcp_states(&mut self) -> Option<TcpStateCounts> {
        self.all_tcp_states()
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
        st.owners[0].tgid = 42;
        st.owners[0].comm[..4].copy_from_slice(b"curl");
        st.owners[0].tx_bytes = 10;
        st.owners[0].rx_bytes = 20;
        st.first_ns = 99;
        st
    }

    #[test]
    fn kernel_record_becomes_sample() {
        let all = to_samples(&SockKey { sk: 7 }, &stats(), false);
        assert_eq!(all.len(), 1);
        let s = &all[0];
        assert_eq!(s.id, owner_id(&SockKey { sk: 7 }, 99, 42));
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
        let s = to_samples(&SockKey { sk: 1 }, &st, false).remove(0);
        assert_eq!(s.local, Some("[::1]:5000".parse().unwrap()));
        assert_eq!(s.remote, None);
        assert_eq!(s.state, "UNCONN");
    }

    #[test]
    fn eviction_estimate_never_invents_a_loss_from_churn() {
        let c = |created, closed| KernelCounters {
            created,
            closed,
            ..Default::default()
        };
        // 10 created, 4 closed, 6 live: nothing evicted.
        assert_eq!(evicted_estimate(&c(10, 4), &c(10, 4), 6), 0);
        // During the walk 3 sockets were created (2 seen live) and 1 closed.
        assert_eq!(evicted_estimate(&c(10, 4), &c(13, 5), 7), 0);
        // 200 created through a 16-entry map, none closed.
        assert_eq!(evicted_estimate(&c(200, 0), &c(200, 0), 16), 184);
    }

    #[test]
    fn garbage_records_are_rejected_not_panicked_on() {
        let mut st = stats();
        st.protocol = 99;
        assert!(to_samples(&SockKey { sk: 1 }, &st, false).is_empty());
        let mut st = stats();
        st.family = 1; // AF_UNIX
        assert!(to_samples(&SockKey { sk: 1 }, &st, false).is_empty());
        let mut st = stats();
        st.owners[0].comm = [0xff; 16];
        assert!(to_samples(&SockKey { sk: 1 }, &st, true)[0].closed);
    }

    #[test]
    fn each_owner_is_a_sample_and_slots_of_one_process_sum() {
        let mut st = stats();
        st.owners[0].last_epoch = 5;
        st.owners[1] = st.owners[0];
        st.owners[1].tgid = 43;
        st.owners[1].tx_bytes = 7;
        st.owners[1].last_epoch = 9;
        // A second slot of pid 42 (two of its threads claimed at once).
        st.owners[2] = st.owners[0];
        st.owners[2].tx_bytes = 1;
        let s = to_samples(&SockKey { sk: 3 }, &st, false);
        assert_eq!(s.len(), 2);
        // The most recent mover first.
        assert_eq!((s[0].pid, s[0].tx_bytes, s[0].rx_bytes), (Some(43), 7, 20));
        assert_eq!((s[1].pid, s[1].tx_bytes, s[1].rx_bytes), (Some(42), 11, 40));
        assert_ne!(s[0].id, s[1].id);
        assert_eq!(s[0].id.primary, s[1].id.primary);
        // No owner yet: one sample, no pid.
        let mut st = stats();
        st.owners[0] = netwatch_common::Owner::zeroed();
        let s = to_samples(&SockKey { sk: 3 }, &st, false);
        assert_eq!((s.len(), s[0].pid), (1, None));
    }

    /// A shared TCP socket's quality counters ride on the first slot's
    /// owner only (not the most recent mover), every field mapped; UDP
    /// samples carry none; an ownerless TCP entry carries them itself.
    #[test]
    fn tcp_counters_ride_on_the_first_slots_sample_only() {
        let mut st = stats();
        st.retrans_segs = 17;
        st.retrans_bytes = 24_616;
        st.resets_sent = 1;
        st.resets_received = 2;
        st.connect_us = 1_500;
        st.owners[0].last_epoch = 5;
        st.owners[1] = st.owners[0];
        st.owners[1].tgid = 43;
        st.owners[1].last_epoch = 9;
        let s = to_samples(&SockKey { sk: 3 }, &st, false);
        assert_eq!((s[0].pid, s[0].tcp), (Some(43), None));
        let want = super::super::TcpCounters {
            retrans_segs: 17,
            retrans_bytes: 24_616,
            resets_sent: 1,
            resets_received: 2,
            connect: Some(std::time::Duration::from_micros(1_500)),
        };
        assert_eq!((s[1].pid, s[1].tcp), (Some(42), Some(want)));
        // Final records the same way; no connect time seen: `None`.
        st.connect_us = 0;
        let s = to_samples(&SockKey { sk: 3 }, &st, true);
        let tcp = s[1].tcp.expect("first slot's sample");
        assert_eq!((tcp.retrans_segs, tcp.connect), (17, None));
        // No owner yet.
        let mut lone = st;
        lone.owners = [netwatch_common::Owner::zeroed(); OWNERS];
        let s = to_samples(&SockKey { sk: 3 }, &lone, false);
        assert_eq!(s[0].tcp.map(|t| t.retrans_bytes), Some(24_616));
        // UDP: none.
        st.protocol = IPPROTO_UDP;
        let s = to_samples(&SockKey { sk: 3 }, &st, false);
        assert!(s.iter().all(|x| x.tcp.is_none()), "{s:?}");
    }
}
