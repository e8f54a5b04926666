//! What [`super::Attribution`] keeps between reads about each socket: its
//! last cumulative counters, the read that last listed it, and what it adds
//! to its owner's row; and the open and established counts every owner
//! holds, kept in step with the sockets by one method
//! ([`HeldCounts::restate`]). It turns one sample into the bytes it moved
//! (step 1 of a read, [`Sockets::update`]) and lets go of the sockets a full
//! read missed (step 3, [`Sockets::expire`], on the clock of [`Grace`]).
//! It never builds rows, and allocates per sample only a new socket's entry.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;

use smallvec::SmallVec;

use super::{FastMap, GRACE_READS};
use crate::counter::counter_delta;
use crate::net::state;
use crate::source::{CountOrigin, SocketId, SocketSample};

/// The owner a sample names: its pid, unless the source says 0 or nothing
/// (no process: the sample makes a connection row but no process row).
pub(super) fn owner_pid(s: &SocketSample) -> Option<u32> {
    s.pid.filter(|&p| p != 0)
}

/// A process as its rows are keyed: a pid (never 0) and the name it is
/// counted under (a thread renamed makes another row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) pid: u32,
    pub(super) name: Option<Arc<str>>,
}

/// What one open socket adds to its owner's row while it is counted: one
/// open socket, and one connection if it is in `ESTABLISHED` (netwatch-sdk
/// 0.3.2 counts exactly those, connected UDP included, as `ss` names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Holding {
    /// `None`: a socket no process owns; it adds to no row.
    pub(super) owner: Option<Owner>,
    pub(super) established: bool,
}

impl Holding {
    /// What `s` (owner `pid`, see [`owner_pid`]) adds.
    pub(super) fn of(s: &SocketSample, pid: Option<u32>) -> Self {
        Self {
            owner: pid.map(|pid| Owner {
                pid,
                name: s.comm.clone(),
            }),
            established: s.state == state::ESTABLISHED,
        }
    }

    /// It is what `s` (owner `pid`) adds: same owner, same name, same
    /// `ESTABLISHED` or not. Compares without cloning the name.
    fn is_of(&self, s: &SocketSample, pid: Option<u32>) -> bool {
        let same_owner = match (&self.owner, pid) {
            (Some(o), Some(pid)) => o.pid == pid && o.name == s.comm,
            (None, None) => true,
            _ => false,
        };
        same_owner && self.established == (s.state == state::ESTABLISHED)
    }
}

/// The open sockets one process holds under one name, as [`Sockets`]
/// holds them: kept up to date from the sockets each read lists, so a
/// socket a read leaves out (a partial batch omits unchanged ones) still
/// counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) name: Option<Arc<str>>,
    /// Sockets still open, in any state: a process holding one keeps its row.
    pub(super) open: u32,
    /// Open sockets in `ESTABLISHED`: the row's `connection_count`.
    pub(super) established: u32,
}

/// Per pid, its [`Held`] counts per name (nearly always one). Changed only
/// through [`Self::restate`], which keeps them in step with the sockets.
#[derive(Debug, Default)]
pub(super) struct HeldCounts(FastMap<u32, SmallVec<[Held; 1]>>);

impl HeldCounts {
    /// Keep the counts in step with one socket: it was counted as `*slot`
    /// (`None`: in no row) and is now counted as `now`. What it added is
    /// taken back, what it adds now is added, and `*slot` becomes `now`.
    /// The one way the counts change.
    pub(super) fn restate(&mut self, slot: &mut Option<Holding>, now: Option<Holding>) {
        if let Some(Holding {
            owner: Some(owner),
            established,
        }) = slot.take()
        {
            self.take_back(&owner, established);
        }
        if let Some(Holding {
            owner: Some(owner),
            established,
        }) = &now
        {
            self.add(owner, *established);
        }
        *slot = now;
    }

    fn add(&mut self, owner: &Owner, established: bool) {
        let names = self.0.entry(owner.pid).or_default();
        let at = match names.iter().position(|h| h.name == owner.name) {
            Some(at) => at,
            None => {
                names.push(Held {
                    name: owner.name.clone(),
                    ..Held::default()
                });
                names.len() - 1
            }
        };
        let h = &mut names[at];
        h.open += 1;
        if established {
            h.established += 1;
        }
    }

    fn take_back(&mut self, owner: &Owner, established: bool) {
        let Some(names) = self.0.get_mut(&owner.pid) else {
            return;
        };
        let Some(at) = names.iter().position(|h| h.name == owner.name) else {
            return;
        };
        let h = &mut names[at];
        h.open = h.open.saturating_sub(1);
        if established {
            h.established = h.established.saturating_sub(1);
        }
        if h.open == 0 {
            names.swap_remove(at);
            if names.is_empty() {
                self.0.remove(&owner.pid);
            }
        }
    }

    /// Every process and name holding an open socket, in no set order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Held)> {
        self.0
            .iter()
            .flat_map(|(&pid, names)| names.iter().map(move |h| (pid, h)))
            .filter(|(_, h)| h.open > 0)
    }
}

/// A socket's last cumulative counters, the read that last listed it, and
/// what it adds to its owner's row.
#[derive(Debug, Clone)]
struct Last {
    rx: u64,
    tx: u64,
    /// The read (its index) that last listed it.
    seen: u64,
    /// What it adds to its owner's [`Held`] counts: `Some` from the read
    /// that lists it until a full read does not.
    holding: Option<Holding>,
}

/// One read's pass over its batch: which read it is, and how many entries
/// of [`Sockets`] it listed (and kept). When it listed every entry, none
/// can have outlived the grace and [`Sockets::expire`] has nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pass {
    /// The read's index: 0 for the first.
    pub(super) read: u64,
    /// Entries listed so far this read (each once).
    pub(super) listed: usize,
}

impl Pass {
    pub(super) fn new(read: u64) -> Self {
        Self { read, listed: 0 }
    }
}

/// What one sample moved since its socket's previous read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delta {
    pub(super) rx: u64,
    pub(super) tx: u64,
    /// An earlier read (or a sample before it in this one) listed the id.
    pub(super) known: bool,
}

/// Every socket earlier reads listed and that is not gone (closed, or out
/// of its grace), and the counts their owners hold.
#[derive(Debug, Default)]
pub(super) struct Sockets {
    last: FastMap<SocketId, Last>,
    held: HeldCounts,
}

impl Sockets {
    /// No socket is remembered.
    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// The counts every owner holds.
    pub(super) fn held(&self) -> &HeldCounts {
        &self.held
    }

    /// Step 1 of a read, for one sample `s` of owner `pid` ([`owner_pid`]):
    /// the bytes it moved since its socket's last counters, and its entry
    /// and its owner's counts brought up to date (one map lookup).
    ///
    /// - A known socket moved the difference of its counters; one that went
    ///   backwards was reused by a new socket, so all it holds is new.
    /// - A closed socket's final counters are counted and it is forgotten:
    ///   it never returns.
    /// - A socket first seen moved everything it counted, unless its
    ///   counters count since the socket opened and this is the first read
    ///   (they predate the agent: a baseline, nothing moved).
    pub(super) fn update(&mut self, pass: &mut Pass, s: &SocketSample, pid: Option<u32>) -> Delta {
        match self.last.entry(s.id) {
            Entry::Occupied(mut e) => {
                let last = e.get_mut();
                let delta = Delta {
                    rx: counter_delta(last.rx, s.rx_bytes),
                    tx: counter_delta(last.tx, s.tx_bytes),
                    known: true,
                };
                let listed_before = last.seen == pass.read;
                if s.closed {
                    let mut last = e.remove();
                    self.held.restate(&mut last.holding, None);
                    if listed_before {
                        pass.listed = pass.listed.saturating_sub(1);
                    }
                } else {
                    if !last.holding.as_ref().is_some_and(|h| h.is_of(s, pid)) {
                        self.held
                            .restate(&mut last.holding, Some(Holding::of(s, pid)));
                    }
                    last.rx = s.rx_bytes;
                    last.tx = s.tx_bytes;
                    last.seen = pass.read;
                    if !listed_before {
                        pass.listed += 1;
                    }
                }
                delta
            }
            Entry::Vacant(e) => {
                if !s.closed {
                    let mut holding = None;
                    self.held.restate(&mut holding, Some(Holding::of(s, pid)));
                    e.insert(Last {
                        rx: s.rx_bytes,
                        tx: s.tx_bytes,
                        seen: pass.read,
                        holding,
                    });
                    pass.listed += 1;
                }
                let (rx, tx) = match s.origin {
                    CountOrigin::SinceAttach => (s.rx_bytes, s.tx_bytes),
                    // First read: the counters predate us and are only a baseline.
                    CountOrigin::SinceSocketOpen if pass.read == 0 => (0, 0),
                    // Later reads: the socket opened within the interval.
                    CountOrigin::SinceSocketOpen => (s.rx_bytes, s.tx_bytes),
                };
                Delta {
                    rx,
                    tx,
                    known: false,
                }
            }
        }
    }

    /// `s` (owner `pid`) is an owner's share of a shared socket whose
    /// sample without an owner is remembered: the socket is not new,
    /// though this share's id is.
    pub(super) fn knows_socket_of(&self, s: &SocketSample, pid: Option<u32>) -> bool {
        pid.and_then(|pid| s.id.ownerless(pid))
            .is_some_and(|socket| self.last.contains_key(&socket))
    }

    /// Step 3, after a full read (`pass`): a socket it did not list is no
    /// longer counted in its owner's row (a polling source cannot see a
    /// last byte or a close), and one no read since `oldest` listed is
    /// forgotten ([`Grace::full_read`]). Nothing to do when every entry
    /// was listed.
    pub(super) fn expire(&mut self, pass: &Pass, oldest: u64) {
        if self.last.len() <= pass.listed {
            return;
        }
        let held = &mut self.held;
        self.last.retain(|_, l| {
            if l.seen == pass.read {
                return true;
            }
            held.restate(&mut l.holding, None);
            l.seen >= oldest
        });
    }
}

/// The clock the grace ([`GRACE_READS`]) counts in: the indices of the
/// last full reads (every socket listed), as only a full read can miss a
/// socket.
#[derive(Debug)]
pub(super) struct Grace {
    recent_full: VecDeque<u64>,
}

impl Grace {
    pub(super) fn new() -> Self {
        Self {
            recent_full: VecDeque::with_capacity(GRACE_READS as usize + 1),
        }
    }

    /// Record that read `read` was full; returns the oldest read still in
    /// the grace: a socket no read since listed is forgotten.
    pub(super) fn full_read(&mut self, read: u64) -> u64 {
        if self.recent_full.len() == GRACE_READS as usize {
            self.recent_full.pop_front();
        }
        self.recent_full.push_back(read);
        self.recent_full.front().copied().unwrap_or(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::tests::sample;

    fn s(id: u64, pid: u32, rx: u64, tx: u64) -> SocketSample {
        sample(id, pid, rx, tx, CountOrigin::SinceAttach)
    }

    /// (pid, name, open, established), sorted.
    fn counts(h: &HeldCounts) -> Vec<(u32, Option<String>, u32, u32)> {
        let mut v: Vec<_> = h
            .iter()
            .map(|(pid, h)| {
                (
                    pid,
                    h.name.as_deref().map(str::to_string),
                    h.open,
                    h.established,
                )
            })
            .collect();
        v.sort();
        v
    }

    fn name(n: &str) -> Option<String> {
        Some(n.to_string())
    }

    /// Run one read of `samples` (read index `read`): the deltas and the pass.
    fn read(sockets: &mut Sockets, read: u64, samples: &[SocketSample]) -> (Vec<Delta>, Pass) {
        let mut pass = Pass::new(read);
        let deltas = samples
            .iter()
            .map(|s| sockets.update(&mut pass, s, owner_pid(s)))
            .collect();
        (deltas, pass)
    }

    fn d(rx: u64, tx: u64, known: bool) -> Delta {
        Delta { rx, tx, known }
    }

    #[test]
    fn deltas_across_a_counter_reset_count_the_new_counters_whole() {
        let mut so = Sockets::default();
        assert_eq!(
            read(&mut so, 0, &[s(1, 10, 100, 100)]).0,
            vec![d(100, 100, false)]
        );
        assert_eq!(
            read(&mut so, 1, &[s(1, 10, 130, 100)]).0,
            vec![d(30, 0, true)]
        );
        // rx went backwards (the id was reused), tx went on: 4 new, 2 more.
        assert_eq!(read(&mut so, 2, &[s(1, 10, 4, 102)]).0, vec![d(4, 2, true)]);
        assert_eq!(
            read(&mut so, 3, &[s(1, 10, 10, 102)]).0,
            vec![d(6, 0, true)]
        );
    }

    #[test]
    fn counts_since_socket_open_are_a_baseline_on_the_first_read_only() {
        let mut so = Sockets::default();
        let open = |id, rx, tx| sample(id, 10, rx, tx, CountOrigin::SinceSocketOpen);
        assert_eq!(
            read(&mut so, 0, &[open(1, 1000, 500)]).0,
            vec![d(0, 0, false)]
        );
        assert_eq!(
            read(&mut so, 1, &[open(1, 1100, 500), open(2, 50, 60)]).0,
            vec![d(100, 0, true), d(50, 60, false)]
        );
    }

    #[test]
    fn a_closed_socket_counts_its_last_bytes_and_is_forgotten() {
        let mut so = Sockets::default();
        read(&mut so, 0, &[s(1, 10, 10, 10), s(2, 10, 1, 1)]);
        let mut last = s(1, 10, 15, 30);
        last.closed = true;
        let (deltas, pass) = read(&mut so, 1, &[last.clone()]);
        assert_eq!(deltas, vec![d(5, 20, true)]);
        assert_eq!(pass.listed, 0);
        assert_eq!(counts(&so.held), vec![(10, name("p10"), 1, 1)]);
        // Opened and closed within the interval: counted, never remembered.
        let mut brief = s(3, 11, 7, 8);
        brief.closed = true;
        let (deltas, pass) = read(&mut so, 2, &[brief]);
        assert_eq!((deltas, pass.listed), (vec![d(7, 8, false)], 0));
        assert_eq!(so.last.len(), 1);
        // The id again: a new socket, all its bytes new.
        assert_eq!(read(&mut so, 3, &[s(1, 11, 3, 4)]).0, vec![d(3, 4, false)]);
    }

    #[test]
    fn listed_counts_each_entry_once_per_read() {
        let mut so = Sockets::default();
        // Twice in one read: listed once, the second sample moved nothing.
        let (deltas, pass) = read(
            &mut so,
            0,
            &[s(1, 10, 5, 5), s(1, 10, 5, 5), s(2, 10, 0, 0)],
        );
        assert_eq!(deltas, vec![d(5, 5, false), d(0, 0, true), d(0, 0, false)]);
        assert_eq!(pass, Pass { read: 0, listed: 2 });
        // Listed, then its final record in the same read: no longer listed.
        let mut gone = s(1, 10, 6, 5);
        gone.closed = true;
        let (_, pass) = read(&mut so, 1, &[s(1, 10, 5, 5), s(2, 10, 0, 0), gone]);
        assert_eq!(pass.listed, 1);
        assert_eq!(so.last.len(), 1);
    }

    #[test]
    fn restate_keeps_the_owners_counts_in_step_with_each_socket() {
        let mut h = HeldCounts::default();
        let mut a = s(1, 10, 0, 0);
        let b = s(2, 10, 0, 0);
        let (mut slot_a, mut slot_b) = (None, None);
        h.restate(&mut slot_a, Some(Holding::of(&a, Some(10))));
        h.restate(&mut slot_b, Some(Holding::of(&b, Some(10))));
        assert_eq!(counts(&h), vec![(10, name("p10"), 2, 2)]);
        // a leaves ESTABLISHED: still open, no longer a connection.
        a.state = state::CLOSE_WAIT.into();
        assert!(!slot_a.as_ref().is_some_and(|x| x.is_of(&a, Some(10))));
        h.restate(&mut slot_a, Some(Holding::of(&a, Some(10))));
        assert_eq!(counts(&h), vec![(10, name("p10"), 2, 1)]);
        // a is passed to pid 11 (renamed as it goes).
        a.comm = Some("worker".into());
        h.restate(&mut slot_a, Some(Holding::of(&a, Some(11))));
        assert_eq!(
            counts(&h),
            vec![(10, name("p10"), 1, 1), (11, name("worker"), 1, 0)]
        );
        // No owner: counted nowhere.
        h.restate(&mut slot_b, Some(Holding::of(&b, None)));
        assert_eq!(counts(&h), vec![(11, name("worker"), 1, 0)]);
        assert_eq!(
            slot_b,
            Some(Holding {
                owner: None,
                established: true
            })
        );
        // Let go of both: nothing held, nothing left behind.
        h.restate(&mut slot_a, None);
        h.restate(&mut slot_b, None);
        assert_eq!((slot_a, slot_b), (None, None));
        assert!(h.0.is_empty());
    }

    #[test]
    fn a_socket_in_grace_that_comes_back_counts_only_its_new_bytes() {
        let mut so = Sockets::default();
        let mut grace = Grace::new();
        let (_, pass) = read(&mut so, 0, &[s(1, 10, 100, 0), s(2, 10, 7, 7)]);
        so.expire(&pass, grace.full_read(0));
        assert_eq!(counts(&so.held), vec![(10, name("p10"), 2, 2)]);
        // A full read misses socket 2: out of its owner's counts, but
        // remembered.
        let (_, pass) = read(&mut so, 1, &[s(1, 10, 100, 0)]);
        so.expire(&pass, grace.full_read(1));
        assert_eq!(counts(&so.held), vec![(10, name("p10"), 1, 1)]);
        assert_eq!(so.last.len(), 2);
        // Back with 5 more bytes: known, only those 5, counted again.
        let (deltas, pass) = read(&mut so, 2, &[s(1, 10, 100, 0), s(2, 10, 12, 7)]);
        assert_eq!(deltas, vec![d(0, 0, true), d(5, 0, true)]);
        so.expire(&pass, grace.full_read(2));
        assert_eq!(counts(&so.held), vec![(10, name("p10"), 2, 2)]);
    }

    #[test]
    fn the_grace_is_the_last_five_full_reads() {
        let mut grace = Grace::new();
        let oldest: Vec<u64> = [0, 1, 2, 3, 4, 5, 6, 9]
            .into_iter()
            .map(|r| grace.full_read(r))
            .collect();
        // Read 9 comes after partial reads 7 and 8, which do not count.
        assert_eq!(oldest, vec![0, 0, 0, 0, 0, 1, 2, 3]);
    }

    #[test]
    fn a_socket_no_full_read_of_the_grace_listed_is_forgotten() {
        let mut so = Sockets::default();
        let mut grace = Grace::new();
        let (_, pass) = read(&mut so, 0, &[s(1, 10, 1, 1), s(2, 20, 1, 1)]);
        so.expire(&pass, grace.full_read(0));
        // Socket 2 is in every read; socket 1 in none after read 0.
        for r in 1..=GRACE_READS {
            let (_, pass) = read(&mut so, r, &[s(2, 20, 1, 1)]);
            so.expire(&pass, grace.full_read(r));
            let forgotten = r == GRACE_READS;
            assert_eq!(
                so.last.contains_key(&s(1, 10, 0, 0).id),
                !forgotten,
                "read {r}"
            );
            assert_eq!(counts(&so.held), vec![(20, name("p20"), 1, 1)], "read {r}");
        }
        assert_eq!(so.last.len(), 1);
    }

    #[test]
    fn a_share_is_known_by_its_sockets_ownerless_sample() {
        let mut so = Sockets::default();
        let share = |pid: u32| {
            let mut x = s(7, pid, 1, 1);
            x.id = SocketId::shared(7, 99, pid);
            x
        };
        read(&mut so, 0, &[share(0)]);
        assert!(so.knows_socket_of(&share(5), Some(5)));
        // Not a share (plain id), or no owner to undo: not known this way.
        assert!(!so.knows_socket_of(&s(7, 5, 1, 1), Some(5)));
        assert!(!so.knows_socket_of(&share(5), None));
        // Another socket at the same address.
        let mut other = share(5);
        other.id = SocketId::shared(7, 100, 5);
        assert!(!so.knows_socket_of(&other, Some(5)));
    }
}
