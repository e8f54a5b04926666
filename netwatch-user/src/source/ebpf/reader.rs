//! The read logic of the per-socket map: which live sockets changed since
//! the last read (the active set's marks, or a walk of the whole map),
//! which went without a final record, and every live socket's samples as
//! of its last change. It reaches the kernel only through [`SocketMap`]
//! and [`Marks`] (the real maps through [`super::sys`] and aya; in-memory
//! fakes in the tests), so its rules are tested without root or a kernel.
//!
//! It must never read the closed-socket ring or the counters itself (the
//! caller hands it what they say), and never decide what a sample's bytes
//! mean past turning one map entry into samples ([`super::to_samples`]).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{HashMap as BpfHashMap, MapData};
use log::debug;
use netwatch_common::{SockKey, SockStats};

use super::{active, sys, to_samples, KernelCounters, Samples};
use crate::source::SocketSample;

/// The per-socket map as the read logic uses it.
pub trait SocketMap {
    /// Every live entry, each once, to `each` (`BPF_MAP_LOOKUP_BATCH`). An
    /// error (batches unsupported, or one failed half way) leaves the
    /// caller to start over with [`Self::walk_by_key`].
    fn lookup_batch(&mut self, each: &mut dyn FnMut(&SockKey, &SockStats)) -> io::Result<()>;
    /// Entries by `get_next_key` from the first, at most `limit` steps: one
    /// deleted under the walk restarts it from the first key, so entries
    /// can come more than once; unreadable ones are skipped.
    fn walk_by_key(&mut self, limit: usize, each: &mut dyn FnMut(&SockKey, &SockStats));
    /// The entry of `key` into `value`; false if the map has none.
    fn lookup(&mut self, key: &SockKey, value: &mut SockStats) -> io::Result<bool>;
}

/// The active set as the read logic uses it ([`active::ActiveSet`]).
pub trait Marks {
    /// Start a new interval; the generation the programs just left.
    fn advance(&mut self) -> io::Result<usize>;
    /// Take every key of generation `gen` into `out` (cleared first).
    fn drain(&mut self, gen: usize, out: &mut Vec<SockKey>) -> io::Result<()>;
}

impl Marks for active::ActiveSet {
    fn advance(&mut self) -> io::Result<usize> {
        active::ActiveSet::advance(self)
    }

    fn drain(&mut self, gen: usize, out: &mut Vec<SockKey>) -> io::Result<()> {
        active::ActiveSet::drain(self, gen, out)
    }
}

/// The kernel's `SOCKETS` map: aya's handle for walks by key, and a second
/// descriptor for the batch and element lookups of [`sys`].
pub struct KernelSockets {
    map: BpfHashMap<MapData, SockKey, SockStats>,
    /// `None` if duplicating the map's descriptor failed: every read then
    /// walks by key, and lookups find nothing.
    fd: Option<OwnedFd>,
}

impl KernelSockets {
    /// From the map and a duplicate of its descriptor.
    pub fn new(map: BpfHashMap<MapData, SockKey, SockStats>, fd: Option<OwnedFd>) -> Self {
        Self { map, fd }
    }
}

impl SocketMap for KernelSockets {
    fn lookup_batch(&mut self, each: &mut dyn FnMut(&SockKey, &SockStats)) -> io::Result<()> {
        let Some(fd) = &self.fd else {
            return Err(io::Error::other("no descriptor of its own for SOCKETS"));
        };
        let mut keys = vec![SockKey::default(); 256];
        let mut values = vec![SockStats::zeroed(); 256];
        sys::batch_read(
            fd.as_fd(),
            sys::Batch::Lookup,
            &mut keys,
            &mut values,
            |k, v| {
                for (k, v) in k.iter().zip(v) {
                    each(k, v);
                }
            },
        )
    }

    fn walk_by_key(&mut self, limit: usize, each: &mut dyn FnMut(&SockKey, &SockStats)) {
        // An entry deleted while we iterate is simply gone: its record is
        // in the ring buffer for the next read.
        for (key, st) in self.map.iter().take(limit).filter_map(Result::ok) {
            each(&key, &st);
        }
    }

    fn lookup(&mut self, key: &SockKey, value: &mut SockStats) -> io::Result<bool> {
        match &self.fd {
            Some(fd) => sys::lookup_elem(fd.as_fd(), key, value),
            None => Ok(false),
        }
    }
}

/// Every this many reads the whole map is walked even when the active set
/// worked: entries the LRU evicted leave `tracked` then, and a mark lost
/// to a race (see `mark_active` in the programs) is bounded in time.
pub const FULL_WALK_EVERY: u64 = 60;

/// How a read found the live sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Refresh {
    /// No read yet, or a restarted agent's baseline.
    #[default]
    None,
    /// The whole socket map was walked.
    Walk,
    /// Only the sockets of the active set were looked up (how many).
    Active(usize),
}

/// What one [`Reader::refresh`] found.
#[derive(Debug)]
pub struct Found {
    /// How it found the live sockets.
    pub how: Refresh,
    /// Live entries: those the map held (a walk, each once, finished ones
    /// included), or those tracked after the lookups.
    pub live: u64,
    /// The keys drained from the active set: the sockets looked up (a
    /// walk drains too, and lists every socket anyway).
    pub changed: Vec<SockKey>,
    /// Sockets that left the map without a final record (they never moved
    /// a byte), as closed samples.
    pub gone: Vec<SocketSample>,
}

impl Found {
    /// Whether the read changed what the pin baseline holds, given how
    /// many final samples (closed sockets) it has besides: a socket
    /// closed, went, was looked up, or the map was walked. Listeners and
    /// filler rows of a partial batch are unchanged ones.
    pub fn changes_baseline(&self, final_samples: usize) -> bool {
        final_samples > 0
            || !self.gone.is_empty()
            || !self.changed.is_empty()
            || self.how == Refresh::Walk
    }
}

/// One live socket as its last change left it.
struct Tracked {
    first_ns: u64,
    samples: Samples,
}

/// Every live socket's samples, and which of them listen (a partial batch
/// lists every listener: the alert feed reads them each tick).
#[derive(Default)]
struct Tracker {
    by_sk: HashMap<u64, Tracked>,
    listeners: HashSet<u64>,
}

impl Tracker {
    /// Remember one live entry's samples (or forget it, if it yields none).
    fn insert(&mut self, key: &SockKey, st: &SockStats) {
        let samples = to_samples(key, st, false);
        if samples.is_empty() {
            self.remove(key.sk);
            return;
        }
        if samples.iter().any(|s| s.state == crate::net::state::LISTEN) {
            self.listeners.insert(key.sk);
        } else {
            self.listeners.remove(&key.sk);
        }
        self.by_sk.insert(
            key.sk,
            Tracked {
                first_ns: st.first_ns,
                samples,
            },
        );
    }

    fn remove(&mut self, sk: u64) {
        self.by_sk.remove(&sk);
        self.listeners.remove(&sk);
    }

    fn clear(&mut self) {
        self.by_sk.clear();
        self.listeners.clear();
    }

    fn len(&self) -> usize {
        self.by_sk.len()
    }
}

/// `tracked` rebuilt by a walk: every live entry met is counted, and kept
/// unless its final record is in this read.
struct Rebuild<'a> {
    tracked: &'a mut Tracker,
    finished: &'a HashSet<(u64, u64)>,
    live: u64,
}

impl Rebuild<'_> {
    fn restart(&mut self) {
        self.tracked.clear();
        self.live = 0;
    }

    fn take(&mut self, key: &SockKey, st: &SockStats) {
        self.live += 1;
        if !self.finished.contains(&(key.sk, st.first_ns)) {
            self.tracked.insert(key, st);
        }
    }
}

/// The per-socket map's reader: the map, the active set, every live
/// socket's samples, and when to walk the whole map.
pub struct Reader<M, A> {
    map: M,
    /// `None`: the loaded object has no active set; every read walks.
    active: Option<A>,
    /// Every live socket's samples as of its last change, by `struct sock`
    /// address: an idle socket's come from here, not from the kernel.
    tracked: Tracker,
    /// Capacity of `SOCKETS`, which bounds a walk by key.
    max_sockets: u32,
    /// Reads so far.
    reads: u64,
    /// The `ACTIVE_FULL` count the last read saw.
    active_full_seen: u64,
    /// The next read walks the whole map (a lookup failed).
    walk_next: bool,
    /// Per active-set generation, its `ACTIVE_MARKS` count read just before
    /// its last drain (`None`: drain it next time).
    drained_marks: [Option<u64>; 2],
    /// A `SOCKETS` value to look up into, reused.
    scratch: Box<SockStats>,
    /// The last [`Found::changed`], given back to be reused.
    spare: Vec<SockKey>,
    /// Unchanged sockets a partial batch adds to fill the snapshot's
    /// connection list.
    row_budget: usize,
}

impl<M: SocketMap, A: Marks> Reader<M, A> {
    /// A reader of `map` whose capacity is `max_sockets`, with the active
    /// set if the loaded object has one.
    pub fn new(map: M, active: Option<A>, max_sockets: u32) -> Self {
        Self {
            map,
            active,
            tracked: Tracker::default(),
            max_sockets,
            reads: 0,
            active_full_seen: 0,
            walk_next: false,
            drained_marks: [None; 2],
            scratch: Box::new(SockStats::zeroed()),
            spare: Vec::new(),
            row_budget: 0,
        }
    }

    /// Set (or replace) the active set.
    pub fn set_active(&mut self, active: Option<A>) {
        self.active = active;
    }

    /// Unchanged sockets a partial batch adds ([`Self::list`]).
    pub fn set_row_budget(&mut self, rows: usize) {
        self.row_budget = rows;
    }

    /// Every tracked socket's samples.
    pub fn samples(&self) -> impl Iterator<Item = &SocketSample> {
        self.tracked.by_sk.values().flat_map(|t| t.samples.iter())
    }

    /// Bring the tracked sockets up to date and say what it found. First
    /// the sockets whose final record is in this read (`finished`, by
    /// address and `first_ns`) are forgotten. Then the sockets of the
    /// active set are looked up, or (first read, a full set per
    /// `before.active_full`, a failed drain or lookup, a map near full per
    /// `before.created - before.closed`, and every [`FULL_WALK_EVERY`]
    /// reads) the whole map is walked. `marks` are the `ACTIVE_MARKS`
    /// counts of the two generations, read just before: a generation
    /// nothing entered since its last drain is not drained. The interval
    /// advances before anything is read, so an event after the read marks
    /// its socket for the next one.
    pub fn refresh(
        &mut self,
        before: &KernelCounters,
        marks: [u64; 2],
        finished: &HashSet<(u64, u64)>,
    ) -> Found {
        for &(sk, first_ns) in finished {
            if self
                .tracked
                .by_sk
                .get(&sk)
                .is_some_and(|t| t.first_ns == first_ns)
            {
                self.tracked.remove(sk);
            }
        }
        let near_full =
            before.created.saturating_sub(before.closed) >= u64::from(self.max_sockets) / 8 * 7;
        let mut walk = self.reads == 0
            || self.walk_next
            || near_full
            || before.active_full > self.active_full_seen
            || self.reads.is_multiple_of(FULL_WALK_EVERY);
        self.reads += 1;
        self.active_full_seen = before.active_full;
        self.walk_next = false;
        let mut keys = std::mem::take(&mut self.spare);
        keys.clear();
        match self.active.as_mut() {
            Some(a) => match a.advance() {
                // Nothing entered this generation since its last drain:
                // skip the drain, a walk of every bucket of the set.
                Ok(g) if self.drained_marks[g & 1] == Some(marks[g & 1]) => {}
                Ok(g) => match a.drain(g, &mut keys) {
                    Ok(()) => self.drained_marks[g & 1] = Some(marks[g & 1]),
                    Err(e) => {
                        debug!("draining the active set: {e}; walking the socket map");
                        self.drained_marks = [None; 2];
                        walk = true;
                    }
                },
                Err(e) => {
                    debug!("advancing the active set: {e}; walking the socket map");
                    walk = true;
                }
            },
            None => walk = true,
        }
        if walk {
            return Found {
                how: Refresh::Walk,
                live: self.walk(finished),
                changed: keys,
                gone: Vec::new(),
            };
        }
        let mut gone = Vec::new();
        for key in &keys {
            match self.map.lookup(key, &mut self.scratch) {
                Ok(true) if !finished.contains(&(key.sk, self.scratch.first_ns)) => {
                    self.tracked.insert(key, &self.scratch);
                }
                // Finished (its final record is in this read or the next)
                // or evicted: gone either way. One that never moved a byte
                // gets no final record: its samples go out closed now, or
                // its process would count it open until the next walk.
                Ok(_) => {
                    if let Some(t) = self.tracked.by_sk.get(&key.sk) {
                        if t.samples.iter().all(|s| s.rx_bytes == 0 && s.tx_bytes == 0) {
                            gone.extend(t.samples.iter().cloned().map(|mut s| {
                                s.closed = true;
                                s.state = crate::net::state::CLOSED.into();
                                s
                            }));
                        }
                    }
                    self.tracked.remove(key.sk);
                }
                Err(e) => {
                    debug!("looking up socket {:x}: {e}; walking next read", key.sk);
                    self.walk_next = true;
                }
            }
        }
        Found {
            how: Refresh::Active(keys.len()),
            live: self.tracked.len() as u64,
            changed: keys,
            gone,
        }
    }

    /// Rebuild the tracked sockets from every live entry, each once (those
    /// whose final record is in this read left out), and return how many
    /// live entries the map held. By batch, whose cursor is a hash bucket:
    /// deletions and insertions meanwhile never restart or skip it, so
    /// every entry that lives through the walk is seen; taken a chunk at a
    /// time, so a walk never holds a copy of the whole map. Kernels
    /// without batch lookups on hash maps (< 5.6) fall back to
    /// `get_next_key`, which restarts from the first key when the current
    /// one is deleted: bounded, and deduplicated.
    fn walk(&mut self, finished: &HashSet<(u64, u64)>) -> u64 {
        let mut rebuild = Rebuild {
            tracked: &mut self.tracked,
            finished,
            live: 0,
        };
        rebuild.restart();
        match self.map.lookup_batch(&mut |k, st| rebuild.take(k, st)) {
            Ok(()) => return rebuild.live,
            Err(e) => debug!("BPF_MAP_LOOKUP_BATCH on SOCKETS: {e}; walking by key"),
        }
        // Start over: the batch walk may have stopped half way.
        rebuild.restart();
        let mut seen = HashSet::new();
        let max_steps = 2 * self.max_sockets as usize + 1024;
        self.map.walk_by_key(max_steps, &mut |key, st| {
            if seen.insert(key.sk) {
                rebuild.take(key, st);
            }
        });
        rebuild.live
    }

    /// The samples a read lists besides its final ones, into `samples`;
    /// returns how many live sockets it left out (`None`: none, a full
    /// batch). After a walk, every socket. After lookups, a partial batch:
    /// the sockets they found (changed since the last read), every
    /// listener, and up to the row budget of unchanged ones, each socket
    /// once. Gives `found`'s buffer back for the next read.
    pub fn list(&mut self, found: Found, samples: &mut Vec<SocketSample>) -> Option<u64> {
        let omitted = if found.how == Refresh::Walk {
            samples.reserve(self.tracked.len());
            samples.extend(self.samples().cloned());
            None
        } else {
            Some(self.list_changed(&found.changed, samples))
        };
        self.spare = found.changed;
        omitted
    }

    fn list_changed(&self, changed: &[SockKey], samples: &mut Vec<SocketSample>) -> u64 {
        let mut listed: HashSet<u64> = HashSet::with_capacity(changed.len());
        let mut list = |sk: u64, samples: &mut Vec<SocketSample>| {
            if let Some(t) = self.tracked.by_sk.get(&sk) {
                if listed.insert(sk) {
                    samples.extend(t.samples.iter().cloned());
                }
            }
        };
        for key in changed {
            list(key.sk, samples);
        }
        for &sk in &self.tracked.listeners {
            list(sk, samples);
        }
        let mut fill = self.row_budget;
        for (&sk, t) in &self.tracked.by_sk {
            if fill == 0 {
                break;
            }
            if listed.insert(sk) {
                samples.extend(t.samples.iter().cloned());
                fill -= 1;
            }
        }
        (self.tracked.len() - listed.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use netwatch_common::{AF_INET, IPPROTO_TCP};

    use super::*;

    /// `SOCKETS` in memory, by `struct sock` address.
    struct FakeMap {
        entries: BTreeMap<u64, SockStats>,
        /// The batch read fails (`EINTR`-like, any errno) after handing
        /// over this many entries; `Some(0)`: a kernel without batches.
        batch_fails_after: Option<usize>,
        /// A walk by key hands every entry over this many times (each
        /// delete under it restarts it from the first key).
        by_key_rounds: usize,
        /// Lookups of these addresses fail.
        lookup_fails: HashSet<u64>,
        /// Calls made: batch reads, walks by key, lookups.
        calls: (usize, usize, usize),
    }

    impl SocketMap for FakeMap {
        fn lookup_batch(&mut self, each: &mut dyn FnMut(&SockKey, &SockStats)) -> io::Result<()> {
            self.calls.0 += 1;
            for (i, (&sk, st)) in self.entries.iter().enumerate() {
                if self.batch_fails_after == Some(i) {
                    return Err(io::Error::from_raw_os_error(libc::EINVAL));
                }
                each(&SockKey { sk }, st);
            }
            match self.batch_fails_after {
                Some(n) if n >= self.entries.len() => {
                    Err(io::Error::from_raw_os_error(libc::EINVAL))
                }
                _ => Ok(()),
            }
        }

        fn walk_by_key(&mut self, limit: usize, each: &mut dyn FnMut(&SockKey, &SockStats)) {
            self.calls.1 += 1;
            let all = self.entries.iter().cycle();
            let steps = self.entries.len() * self.by_key_rounds;
            for (&sk, st) in all.take(steps.min(limit)) {
                each(&SockKey { sk }, st);
            }
        }

        fn lookup(&mut self, key: &SockKey, value: &mut SockStats) -> io::Result<bool> {
            self.calls.2 += 1;
            if self.lookup_fails.contains(&key.sk) {
                return Err(io::Error::from_raw_os_error(libc::EFAULT));
            }
            Ok(self.entries.get(&key.sk).map(|st| *value = *st).is_some())
        }
    }

    /// The active set in memory: the programs mark into `sets[epoch & 1]`.
    #[derive(Default)]
    struct FakeMarks {
        epoch: u32,
        sets: [Vec<SockKey>; 2],
        /// `ACTIVE_MARKS` per generation.
        counts: [u64; 2],
        fail_drain: bool,
        drains: usize,
    }

    impl Marks for FakeMarks {
        fn advance(&mut self) -> io::Result<usize> {
            let left = (self.epoch & 1) as usize;
            self.epoch += 1;
            Ok(left)
        }

        fn drain(&mut self, gen: usize, out: &mut Vec<SockKey>) -> io::Result<()> {
            self.drains += 1;
            out.clear();
            if self.fail_drain {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            out.append(&mut self.sets[gen & 1]);
            Ok(())
        }
    }

    type Fake = Reader<FakeMap, FakeMarks>;

    fn marks(r: &mut Fake) -> &mut FakeMarks {
        r.active.as_mut().expect("an active set")
    }

    fn reader(max_sockets: u32) -> Fake {
        let map = FakeMap {
            entries: BTreeMap::new(),
            batch_fails_after: None,
            by_key_rounds: 1,
            lookup_fails: HashSet::new(),
            calls: (0, 0, 0),
        };
        Reader::new(map, Some(FakeMarks::default()), max_sockets)
    }

    /// A TCP socket of pid 42 that received `rx` bytes, in kernel state
    /// `state` (1 established, 10 listen).
    fn stats(rx: u64, first_ns: u64, state: u8) -> SockStats {
        let mut st = SockStats::zeroed();
        st.family = AF_INET;
        st.protocol = IPPROTO_TCP;
        st.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        st.raddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        st.lport = 5000;
        st.rport = 443;
        st.state = state;
        st.first_ns = first_ns;
        st.owners[0].tgid = 42;
        st.owners[0].rx_bytes = rx;
        st
    }

    /// What the programs do on a socket's event: write its entry, mark it.
    fn event(r: &mut Fake, sk: u64, st: Option<SockStats>) {
        match st {
            Some(st) => r.map.entries.insert(sk, st),
            None => r.map.entries.remove(&sk),
        };
        let m = r.active.as_mut().expect("an active set");
        let g = (m.epoch & 1) as usize;
        if !m.sets[g].iter().any(|k| k.sk == sk) {
            m.sets[g].push(SockKey { sk });
            m.counts[g] += 1;
        }
    }

    /// One read as `EbpfSource::read_samples` makes it, summed up.
    #[derive(Debug, PartialEq)]
    struct Read {
        how: Refresh,
        live: u64,
        changed: Vec<u64>,
        /// (rx, state, closed) of each gone sample.
        gone: Vec<(u64, String, bool)>,
        /// (address's rx, state) of each listed sample, sorted.
        listed: Vec<(u64, String)>,
        omitted: Option<u64>,
        baseline: bool,
    }

    fn read(r: &mut Fake, before: &KernelCounters, finished: &[(u64, u64)]) -> Read {
        let marks = r.active.as_ref().map_or([0; 2], |m| m.counts);
        let finished: HashSet<(u64, u64)> = finished.iter().copied().collect();
        let found = r.refresh(before, marks, &finished);
        let baseline = found.changes_baseline(0);
        let (how, live) = (found.how, found.live);
        let changed = found.changed.iter().map(|k| k.sk).collect();
        let gone = found
            .gone
            .iter()
            .map(|s| (s.rx_bytes, s.state.to_string(), s.closed))
            .collect();
        let mut samples = Vec::new();
        let omitted = r.list(found, &mut samples);
        let mut listed: Vec<(u64, String)> = samples
            .iter()
            .map(|s| (s.rx_bytes, s.state.to_string()))
            .collect();
        listed.sort();
        Read {
            how,
            live,
            changed,
            gone,
            listed,
            omitted,
            baseline,
        }
    }

    fn est(rx: u64) -> (u64, String) {
        (rx, "ESTABLISHED".into())
    }

    #[test]
    fn a_socket_appears_grows_and_goes() {
        let mut r = reader(1024);
        let none = KernelCounters::default();
        // Two sockets the programs knew before the first read (seeded).
        r.map.entries.insert(1, stats(0, 11, 1));
        r.map.entries.insert(2, stats(100, 22, 1));
        let first = read(&mut r, &none, &[]);
        assert_eq!(
            first,
            Read {
                how: Refresh::Walk,
                live: 2,
                changed: vec![],
                gone: vec![],
                listed: vec![est(0), est(100)],
                omitted: None,
                baseline: true,
            }
        );
        // A third appears, the second grows: only they are looked up.
        event(&mut r, 3, Some(stats(5, 33, 1)));
        event(&mut r, 2, Some(stats(250, 22, 1)));
        let grew = read(&mut r, &none, &[]);
        assert_eq!(
            grew,
            Read {
                how: Refresh::Active(2),
                live: 3,
                changed: vec![3, 2],
                gone: vec![],
                listed: vec![est(5), est(250)],
                omitted: Some(1),
                baseline: true,
            }
        );
        assert_eq!(r.map.calls, (1, 0, 2));
        // Nothing moved: the generation left has no new mark, not drained.
        let drains = r.active.as_ref().map(|m| m.drains);
        let idle = read(&mut r, &none, &[]);
        assert_eq!(
            (idle.how, idle.live, idle.omitted),
            (Refresh::Active(0), 3, Some(3))
        );
        assert!(idle.listed.is_empty() && !idle.baseline);
        assert_eq!(r.active.as_ref().map(|m| m.drains), drains);
        // The first, which never moved a byte, leaves the map without a
        // final record: one closed sample now.
        event(&mut r, 1, None);
        let gone = read(&mut r, &none, &[]);
        assert_eq!(gone.gone, [(0, "CLOSED".to_string(), true)]);
        assert_eq!(
            (gone.how, gone.live, gone.omitted),
            (Refresh::Active(1), 2, Some(2))
        );
        assert!(gone.baseline);
        // The second closes with its final record in this read (its entry
        // still in the map): neither tracked nor a closed sample of ours.
        event(&mut r, 2, Some(stats(300, 22, 7)));
        let closed = read(&mut r, &none, &[(2, 22)]);
        assert_eq!((closed.live, closed.gone.len()), (1, 0));
        assert_eq!(closed.listed, Vec::<(u64, String)>::new());
        let mut left: Vec<u64> = r.samples().map(|s| s.rx_bytes).collect();
        left.sort();
        assert_eq!(left, [5]);
        // Gone with bytes and no record yet (it is in the next read's
        // ring): untracked, no closed sample from here.
        event(&mut r, 3, None);
        let went = read(&mut r, &none, &[]);
        assert_eq!((went.live, went.gone.len(), r.samples().count()), (0, 0, 0));
    }

    #[test]
    fn a_final_record_in_this_read_untracks_its_socket_before_the_walk() {
        let mut r = reader(1024);
        r.map.entries.insert(1, stats(7, 11, 1));
        r.map.entries.insert(2, stats(8, 22, 1));
        // Socket 1's record is in this read: counted live (the map held
        // it), not listed. Socket 2's record is of an earlier socket at
        // the same address (another first_ns): the live one stays.
        let walk = read(&mut r, &KernelCounters::default(), &[(1, 11), (2, 99)]);
        assert_eq!((walk.live, walk.listed), (2, vec![est(8)]));
    }

    #[test]
    fn an_interrupted_batch_read_starts_over_by_key_and_counts_each_socket_once() {
        let mut r = reader(1024);
        for sk in 1..=5 {
            r.map.entries.insert(sk, stats(sk * 10, sk, 1));
        }
        r.map.batch_fails_after = Some(3);
        // Deletions under the walk by key restart it: each entry twice.
        r.map.by_key_rounds = 2;
        let walk = read(&mut r, &KernelCounters::default(), &[(4, 4)]);
        assert_eq!((walk.how, walk.live), (Refresh::Walk, 5));
        assert_eq!(walk.listed, [est(10), est(20), est(30), est(50)]);
        assert_eq!(r.map.calls, (1, 1, 0));
        // A batch read that works needs no walk by key.
        r.map.batch_fails_after = None;
        r.active = None;
        let walk = read(&mut r, &KernelCounters::default(), &[]);
        assert_eq!((walk.live, walk.listed.len()), (5, 5));
        assert_eq!(r.map.calls, (2, 1, 0));
    }

    #[test]
    fn a_walk_by_key_stops_at_twice_the_map_and_1024_steps() {
        // Capacity 8: at most 2 * 8 + 1024 = 1040 steps of a walk that
        // keeps restarting (a kernel without batches, under churn).
        let mut r = reader(8);
        for sk in 1..=600 {
            r.map.entries.insert(sk, stats(1, sk, 1));
        }
        r.map.batch_fails_after = Some(0);
        r.map.by_key_rounds = 1000;
        let walk = read(&mut r, &KernelCounters::default(), &[]);
        // 1040 steps over 600 distinct keys: each counted once.
        assert_eq!((walk.live, walk.listed.len()), (600, 600));
        let mut r = reader(8);
        for sk in 1..=1500 {
            r.map.entries.insert(sk, stats(1, sk, 1));
        }
        r.map.batch_fails_after = Some(0);
        let walk = read(&mut r, &KernelCounters::default(), &[]);
        assert_eq!((walk.live, walk.listed.len()), (1040, 1040));
    }

    #[test]
    fn when_a_read_walks_the_whole_map() {
        let counters = |created, closed, active_full| KernelCounters {
            created,
            closed,
            active_full,
            ..KernelCounters::default()
        };
        let mut r = reader(64);
        r.map.entries.insert(1, stats(1, 1, 1));
        let none = counters(0, 0, 0);
        assert_eq!(
            read(&mut r, &none, &[]).how,
            Refresh::Walk,
            "the first read"
        );
        assert_eq!(read(&mut r, &none, &[]).how, Refresh::Active(0));
        // Near full: 56 of 64 (7/8) live by the kernel's counts.
        assert_eq!(read(&mut r, &counters(60, 4, 0), &[]).how, Refresh::Walk);
        assert_eq!(
            read(&mut r, &counters(60, 5, 0), &[]).how,
            Refresh::Active(0)
        );
        // The active set refused a mark since the last read.
        assert_eq!(read(&mut r, &counters(0, 0, 1), &[]).how, Refresh::Walk);
        assert_eq!(
            read(&mut r, &counters(0, 0, 1), &[]).how,
            Refresh::Active(0)
        );
        // A lookup failed: this read is partial, the next one walks.
        r.map.lookup_fails.insert(1);
        event(&mut r, 1, Some(stats(9, 1, 1)));
        let failed = read(&mut r, &none, &[]);
        assert_eq!(
            (failed.how, failed.listed),
            (Refresh::Active(1), vec![est(1)])
        );
        r.map.lookup_fails.clear();
        let walk = read(&mut r, &none, &[]);
        assert_eq!((walk.how, walk.listed), (Refresh::Walk, vec![est(9)]));
        // A failed drain walks now, and drains the generation next time
        // even though no mark entered it since.
        marks(&mut r).fail_drain = true;
        event(&mut r, 1, Some(stats(9, 1, 1)));
        assert_eq!(read(&mut r, &none, &[]).how, Refresh::Walk);
        marks(&mut r).fail_drain = false;
        let drains = r.active.as_ref().map_or(0, |m| m.drains);
        assert_eq!(read(&mut r, &none, &[]).how, Refresh::Active(0));
        assert_eq!(r.active.as_ref().map_or(0, |m| m.drains), drains + 1);
        // Reads so far: 10. Every 60th read walks (those with 60 and 120
        // reads before them).
        let mut walks = Vec::new();
        for i in 10..=120u64 {
            if read(&mut r, &none, &[]).how == Refresh::Walk {
                walks.push(i);
            }
        }
        assert_eq!(walks, [60, 120]);
        // No active set: every read walks.
        r.active = None;
        assert_eq!(read(&mut r, &none, &[]).how, Refresh::Walk);
        assert_eq!(read(&mut r, &none, &[]).how, Refresh::Walk);
    }

    #[test]
    fn the_baseline_changes_exactly_when_a_socket_closed_went_moved_or_all_were_walked() {
        let found = |how, changed: &[u64], gone: usize| Found {
            how,
            live: 0,
            changed: changed.iter().map(|&sk| SockKey { sk }).collect(),
            gone: to_samples(&SockKey { sk: 1 }, &stats(0, 1, 1), true)
                .into_iter()
                .cycle()
                .take(gone)
                .collect(),
        };
        assert!(!found(Refresh::Active(0), &[], 0).changes_baseline(0));
        assert!(found(Refresh::Active(0), &[], 0).changes_baseline(1));
        assert!(found(Refresh::Active(1), &[7], 0).changes_baseline(0));
        assert!(found(Refresh::Active(0), &[], 1).changes_baseline(0));
        assert!(found(Refresh::Walk, &[], 0).changes_baseline(0));
        assert!(!found(Refresh::None, &[], 0).changes_baseline(0));
    }

    #[test]
    fn a_partial_batch_lists_changed_sockets_every_listener_and_the_row_budget() {
        let mut r = reader(1024);
        r.map.entries.insert(1, stats(0, 1, 10));
        for sk in 2..=6 {
            r.map.entries.insert(sk, stats(sk, sk, 1));
        }
        assert_eq!(read(&mut r, &KernelCounters::default(), &[]).live, 6);
        r.set_row_budget(2);
        event(&mut r, 4, Some(stats(40, 4, 1)));
        let partial = read(&mut r, &KernelCounters::default(), &[]);
        // Socket 4 (changed), the listener, and 2 unchanged of the other 4.
        assert_eq!(partial.listed.len(), 4);
        assert!(partial.listed.contains(&est(40)));
        assert!(partial.listed.contains(&(0, "LISTEN".to_string())));
        assert_eq!(partial.omitted, Some(2));
        // A listener is listed once even when it also changed.
        r.set_row_budget(0);
        event(&mut r, 1, Some(stats(0, 1, 10)));
        let again = read(&mut r, &KernelCounters::default(), &[]);
        assert_eq!(
            (again.listed, again.omitted),
            (vec![(0, "LISTEN".to_string())], Some(5))
        );
    }
}
