//! Turns per-socket samples into the interval's wire rows: per-socket deltas
//! against the previous read, summed per process into [`ProcessBandwidth`],
//! and one connection row per socket. Every source feeds this one step,
//! so its rules are the same everywhere. It never reads the system itself.
//!
//! Per socket per tick it must never allocate, format or parse: a read
//! ([`Attribution::read`]) yields compact [`Row`]s that point into the
//! batch, and wire [`ConnectionDetail`]s are built only for the rows that
//! go out ([`Interval::top_connections`]).
//!
//! What goes out is bounded; what is counted is not: the top N connection
//! rows ([`Interval::top`]) and the top N process rows ([`fold_processes`],
//! the rest summed into one row) are cut from complete per-process sums.
//!
//! The steps of a read live in submodules: `sockets` (what is kept per
//! socket between reads, deltas, the grace), `rows` (connection rows, the
//! shares of a socket merged), `processes` (process rows).

mod processes;
mod rows;
mod sockets;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use netwatch_common::wire::{ConnectionDetail, ProcessBandwidth};

use crate::net::state;
use crate::source::SampleBatch;
use processes::{process_rows, MovedBytes};
use rows::Rows;
use sockets::{owner_pid, Grace, Pass, Sockets};

/// Maps hashed once per socket per read: a fast hasher (the keys are
/// kernel addresses, inodes and tuples, not attacker-chosen strings).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The interval's rows, ready for the snapshot.
#[derive(Debug, Clone, Default)]
pub struct Attributed {
    /// One row per process that moved bytes or holds a socket, most bytes
    /// first. Its `connection_count` is, as in netwatch-sdk 0.3.2, the
    /// number of its open sockets whose state is `ESTABLISHED`.
    pub processes: Vec<ProcessBandwidth>,
    /// One row per socket in the batch.
    pub connections: Vec<ConnectionDetail>,
    /// The bytes (rx + tx) each row of `connections` moved this interval,
    /// index for index: what [`truncate_connections`] ranks by.
    pub connection_bytes: Vec<u64>,
    /// The interval the deltas cover.
    pub interval: Duration,
}

/// One socket's connection row of one read, before it is built for the
/// wire: where it is in the batch and what it counted. Small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Index in the batch of the row's first sample (a shared socket's
    /// most recent owner): its endpoints, state, owner and RTT.
    pub sample: usize,
    /// Cumulative counters, summed over the socket's shares.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// The bytes (rx + tx) it moved this interval: what the top N ranks by.
    pub bytes: u64,
    /// The socket was first seen on this read: in no earlier read (within
    /// [`GRACE_READS`]), under none of its owners' ids. Never set on the
    /// first read, whose sockets predate it and are a baseline.
    pub new: bool,
}

/// One read's result: per-process rows (exact, from every socket) and one
/// compact [`Row`] per socket the batch lists, in batch order, pointing
/// into the batch.
#[derive(Debug, Clone, Default)]
pub struct Interval {
    /// As [`Attributed::processes`].
    pub processes: Vec<ProcessBandwidth>,
    pub rows: Vec<Row>,
    /// The interval the deltas cover.
    pub interval: Duration,
}

pub use crate::source::GRACE_READS;

/// Per-socket delta tracker. Keeps each live socket's last cumulative
/// counters and owner, and every process's open and established counts.
#[derive(Debug)]
pub struct Attribution {
    /// What earlier reads left: each socket's last counters and what its
    /// owners hold.
    prev: Sockets,
    last_read: Instant,
    reads: u64,
    /// The clock the grace counts in.
    grace: Grace,
    /// The rows of an [`Interval`] handed back ([`Self::recycle`]): the
    /// next read fills them again instead of allocating.
    spare_rows: Vec<Row>,
}

impl Attribution {
    /// `started_at` is when the source began counting: the first interval
    /// runs from there to the first read.
    pub fn new(started_at: Instant) -> Self {
        Self {
            prev: Sockets::default(),
            last_read: started_at,
            reads: 0,
            grace: Grace::new(),
            spare_rows: Vec::new(),
        }
    }

    /// Hand an interval's rows back once they are used: the next
    /// [`Self::read`] reuses their memory.
    pub fn recycle(&mut self, iv: Interval) {
        self.spare_rows = iv.rows;
    }

    /// Consume one batch: compute deltas, group by process, remember
    /// counters, and build every connection row (the convenience form of
    /// [`Self::read`] + [`Interval::all_connections`]; the agent builds
    /// only the top N).
    pub fn apply(&mut self, batch: &SampleBatch) -> Attributed {
        let iv = self.read(batch);
        let connections = iv.all_connections(batch);
        Attributed {
            connection_bytes: iv.rows.iter().map(|r| r.bytes).collect(),
            connections,
            processes: iv.processes,
            interval: iv.interval,
        }
    }

    /// Consume one batch: per-socket deltas against the previous read
    /// (the map updated in place, one lookup per sample), per-process sums,
    /// and one compact [`Row`] per listed socket. Nothing per socket
    /// allocates. A partial batch ([`SampleBatch::omitted`]) costs only
    /// what it lists: the sockets it leaves out are unchanged, still open
    /// and still counted in their processes' rows.
    ///
    /// In four steps, each in its own module: per sample, (1) the bytes it
    /// moved since its socket's last read (`sockets`), (2) added to its
    /// process's bytes (`processes`) and to its connection row, the shares
    /// of one shared socket merged (`rows`); then, after a full batch, (3)
    /// the sockets it missed leave their owners' rows and are forgotten
    /// once out of their grace (`sockets`); (4) one row per process
    /// (`processes`).
    pub fn read(&mut self, batch: &SampleBatch) -> Interval {
        let interval = batch.taken_at.saturating_duration_since(self.last_read);
        let mut pass = Pass::new(self.reads);
        let mut moved = MovedBytes::default();
        let mut rows = Rows::new(std::mem::take(&mut self.spare_rows), batch.samples.len());
        for (i, s) in batch.samples.iter().enumerate() {
            let pid = owner_pid(s);
            // Step 1: what it moved since its socket's last read.
            let delta = self.prev.update(&mut pass, s, pid);
            // Never on the first read, whose sockets are a baseline. A
            // shared socket's owner seen for the first time: the socket
            // itself is not new when its ownerless sample was seen before.
            let new = pass.read > 0 && !delta.known && !self.prev.knows_socket_of(s, pid);
            // Step 2: its process's bytes and its connection row.
            if let Some(pid) = pid {
                moved.add(pid, s.comm.as_deref(), delta.rx, delta.tx);
            }
            rows.push(i, s, delta.rx.saturating_add(delta.tx), new);
        }
        // Step 3: a full batch's missing sockets leave their processes'
        // rows, and are forgotten once out of their grace. Partial batches
        // leave unchanged sockets out on purpose.
        if batch.omitted.is_none() {
            let oldest = self.grace.full_read(pass.read);
            self.prev.expire(&pass, oldest);
        }
        // Step 4: a row per process that holds an open socket or moved bytes.
        let processes = process_rows(self.prev.held(), &mut moved, interval);

        self.last_read = batch.taken_at;
        self.reads += 1;
        Interval {
            processes,
            rows: rows.into_rows(),
            interval,
        }
    }
}

/// The wire row of `row`, whose samples are in `batch`; `None` if `row`
/// is not of this batch.
pub fn connection_detail(batch: &SampleBatch, row: &Row) -> Option<ConnectionDetail> {
    let s = batch.samples.get(row.sample)?;
    Some(ConnectionDetail {
        protocol: s.protocol.as_wire().to_string(),
        local_addr: s.local.map_or_else(|| "*:*".to_string(), |a| a.to_string()),
        remote_addr: s
            .remote
            .map_or_else(|| "*:*".to_string(), |a| a.to_string()),
        state: s.state.to_string(),
        pid: s.pid.filter(|&p| p != 0),
        process_name: s.comm.as_deref().map(str::to_string),
        kernel_rtt_us: s.rtt_us,
        rx_bytes: Some(row.rx_bytes),
        tx_bytes: Some(row.tx_bytes),
        tcp_quality: socket_counters(batch, row.sample).map(|t| connection_quality(&t)),
    })
}

/// The TCP counters of the socket whose sample is `at`: a source puts them
/// on one sample of a shared socket only (so per-process sums count them
/// once), and that socket's samples are adjacent with one `id.primary`.
fn socket_counters(batch: &SampleBatch, at: usize) -> Option<crate::source::TcpCounters> {
    let samples = &batch.samples;
    let primary = samples.get(at)?.id.primary;
    let after = samples[at..].iter().take_while(|s| s.id.primary == primary);
    let before = samples[..at]
        .iter()
        .rev()
        .take_while(|s| s.id.primary == primary);
    after.chain(before).find_map(|s| s.tcp)
}

/// A socket's quality counters as its wire row carries them.
pub fn connection_quality(
    t: &crate::source::TcpCounters,
) -> netwatch_common::wire::ConnectionQuality {
    netwatch_common::wire::ConnectionQuality {
        retransmits: t.retrans_segs,
        retransmitted_bytes: t.retrans_bytes,
        connect_ms: t.connect.map(|d| d.as_secs_f64() * 1000.0),
        resets_sent: t.resets_sent,
        resets_received: t.resets_received,
    }
}

impl Interval {
    /// The indices (into [`Self::rows`]) of the `max` rows that moved the
    /// most bytes this interval, in the order they go out, and how many
    /// were left out. The same choice and order as [`truncate_connections`]
    /// (ties: `ESTABLISHED` first, then batch order; nothing to cut: all,
    /// in batch order).
    pub fn top(&self, batch: &SampleBatch, max: usize) -> (Vec<usize>, u64) {
        let n = self.rows.len();
        // Sockets a partial batch left out (unchanged, no bytes this
        // interval) are left out of the snapshot too, and counted.
        let omitted = batch.omitted.unwrap_or(0);
        if n <= max {
            return ((0..n).collect(), omitted);
        }
        // Each row's rank as one integer, smallest first: (most bytes,
        // then ESTABLISHED, then batch order) packed as (!bytes, not
        // established, index), so selecting compares integers only.
        let mut keys: Vec<u128> = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let established = batch
                    .samples
                    .get(r.sample)
                    .is_some_and(|s| s.state == state::ESTABLISHED);
                (u128::from(!r.bytes) << 64) | (u128::from(!established) << 63) | i as u128
            })
            .collect();
        if max > 0 {
            keys.select_nth_unstable(max - 1);
        }
        keys.truncate(max);
        keys.sort_unstable();
        let order = keys
            .into_iter()
            .map(|k| (k & u128::from(u64::MAX >> 1)) as usize)
            .collect();
        (order, (n - max) as u64 + omitted)
    }

    /// The wire rows of the top `max` (see [`Self::top`]), built only for
    /// them, and how many rows were left out.
    pub fn top_connections(&self, batch: &SampleBatch, max: usize) -> (Vec<ConnectionDetail>, u64) {
        let (order, left_out) = self.top(batch, max);
        let rows = order
            .into_iter()
            .filter_map(|i| self.rows.get(i))
            .filter_map(|r| connection_detail(batch, r))
            .collect();
        (rows, left_out)
    }

    /// Every row's wire row, in batch order.
    pub fn all_connections(&self, batch: &SampleBatch) -> Vec<ConnectionDetail> {
        self.rows
            .iter()
            .filter_map(|r| connection_detail(batch, r))
            .collect()
    }
}

/// Keep the `max` connection rows that moved the most bytes this interval
/// (`bytes`, index for index with `rows`; ties: `ESTABLISHED` first, as
/// netwatch-sdk 0.3.2's `top_connections` prefers, then batch order), and
/// say how many were left out. Per-process totals are computed from every
/// socket before this and are not touched.
///
/// The agent does not call it: it picks with [`Interval::top`] before any
/// row is built. This straightforward form over built rows is the reference
/// the tests check `Interval::top` against, and the old path
/// `examples/attribution_cost.rs` measures beside it.
pub fn truncate_connections(rows: &mut Vec<ConnectionDetail>, bytes: &[u64], max: usize) -> u64 {
    if rows.len() <= max {
        return 0;
    }
    let dropped = (rows.len() - max) as u64;
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let key = |i: usize| {
        (
            std::cmp::Reverse(bytes.get(i).copied().unwrap_or(0)),
            rows[i].state != state::ESTABLISHED,
            i,
        )
    };
    if max > 0 {
        order.select_nth_unstable_by_key(max - 1, |&i| key(i));
    }
    order.truncate(max);
    order.sort_unstable_by_key(|&i| key(i));
    let mut keep: Vec<Option<ConnectionDetail>> =
        std::mem::take(rows).into_iter().map(Some).collect();
    rows.extend(
        order
            .into_iter()
            .filter_map(|i| keep.get_mut(i).and_then(Option::take)),
    );
    dropped
}

/// The `process_name` of the one row [`fold_processes`] adds for the
/// processes it leaves out. That row is the only one without a pid (every
/// row of a source has one), which is what tells it apart from a process
/// that names itself so.
pub const FOLDED_PROCESS_NAME: &str = "(others)";

/// Keep the `max` process rows that moved the most bytes (rx + tx) this
/// interval and fold the rest into one row appended last: `pid` `None`,
/// `process_name` [`FOLDED_PROCESS_NAME`], the sums of their bytes, rates,
/// connection counts and quality figures (`crate::snapshot::quality::merge`),
/// no metadata. Returns how many rows were folded
/// (0: `rows` untouched, in their order, and no row added).
///
/// Ties on bytes go to the smaller pid, then the smaller name (a row
/// without a pid last), whatever order `rows` came in; the kept rows come
/// out in that order. Bytes are summed saturating (they cannot reach
/// `u64::MAX` in one interval), so the rows still add up exactly to what
/// every process moved. Only the rows of one snapshot are cut: the counters
/// they come from ([`Attribution`]) stay complete, so a process folded in
/// one interval has its own exact row again in the next one it is among
/// the busiest, and its bytes are counted once, in the interval that moved
/// them.
pub fn fold_processes(rows: &mut Vec<ProcessBandwidth>, max: usize) -> u64 {
    if rows.len() <= max {
        return 0;
    }
    let bytes = |p: &ProcessBandwidth| p.rx_bytes.saturating_add(p.tx_bytes);
    let rank = |a: &ProcessBandwidth, b: &ProcessBandwidth| {
        bytes(b)
            .cmp(&bytes(a))
            .then_with(|| match (a.pid, b.pid) {
                (Some(x), Some(y)) => x.cmp(&y),
                (x, y) => x.is_none().cmp(&y.is_none()),
            })
            .then_with(|| a.process_name.cmp(&b.process_name))
    };
    if max > 0 {
        rows.select_nth_unstable_by(max - 1, rank);
    }
    let rest = rows.split_off(max);
    rows.sort_unstable_by(rank);
    let folded = rest.len() as u64;
    let mut other =
        ProcessBandwidth::network_only(FOLDED_PROCESS_NAME.to_string(), None, 0, 0, 0.0, 0.0, 0);
    let mut rtt_rows = 0;
    for p in &rest {
        crate::snapshot::quality::merge(&mut other, p, &mut rtt_rows);
        other.rx_bytes = other.rx_bytes.saturating_add(p.rx_bytes);
        other.tx_bytes = other.tx_bytes.saturating_add(p.tx_bytes);
        other.rx_rate += p.rx_rate;
        other.tx_rate += p.tx_rate;
        other.connection_count = other.connection_count.saturating_add(p.connection_count);
    }
    rows.push(other);
    folded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{CountOrigin, Protocol, SocketId, SocketSample};

    pub(super) fn sample(id: u64, pid: u32, rx: u64, tx: u64, origin: CountOrigin) -> SocketSample {
        SocketSample {
            id: SocketId {
                primary: id,
                secondary: 0,
            },
            protocol: Protocol::Tcp,
            local: Some("127.0.0.1:1000".parse().unwrap()),
            remote: Some("127.0.0.1:2000".parse().unwrap()),
            state: "ESTABLISHED".into(),
            pid: Some(pid),
            comm: Some(format!("p{pid}").into()),
            cgroup_id: None,
            rx_bytes: rx,
            tx_bytes: tx,
            rtt_us: None,
            tcp: None,
            closed: false,
            origin,
        }
    }

    fn batch(at: Instant, samples: Vec<SocketSample>) -> SampleBatch {
        SampleBatch::exact(at, samples)
    }

    #[test]
    fn shares_of_one_socket_make_one_connection_row_and_one_process_row_each() {
        let t0 = Instant::now();
        let mut attr = Attribution::new(t0);
        let share = |pid: u32, rx, tx| {
            let mut s = sample(7, pid, rx, tx, CountOrigin::SinceAttach);
            s.id = SocketId::shared(7, 99, pid);
            s
        };
        // Untagged samples with one primary (macOS: one row per socket and pid) stay apart.
        let untagged = sample(8, 3, 1, 1, CountOrigin::SinceAttach);
        let mut untagged2 = sample(8, 4, 1, 1, CountOrigin::SinceAttach);
        untagged2.id.secondary = 4;
        let a = attr.apply(&batch(
            t0 + Duration::from_secs(1),
            vec![share(2, 10, 700), share(1, 5, 300), untagged, untagged2],
        ));
        assert_eq!(a.connections.len(), 3);
        assert_eq!(a.connections[0].pid, Some(2));
        assert_eq!(
            (a.connections[0].rx_bytes, a.connections[0].tx_bytes),
            (Some(15), Some(1000))
        );
        assert_eq!(row(&a, 1), (5, 300, 1));
        assert_eq!(row(&a, 2), (10, 700, 1));
    }

    fn row(a: &Attributed, pid: u32) -> (u64, u64, u32) {
        let p = a
            .processes
            .iter()
            .find(|p| p.pid == Some(pid))
            .expect("process row");
        (p.rx_bytes, p.tx_bytes, p.connection_count)
    }

    #[test]
    fn top_n_keeps_the_busiest_rows_and_per_process_totals_stay_exact() {
        let t0 = Instant::now();
        let mut at = Attribution::new(t0);
        // pid 1: ten sockets, moving 1..=10 bytes rx each; pid 2: one
        // socket moving 100 tx.
        let mut v: Vec<SocketSample> = (1..=10)
            .map(|i| sample(i, 1, i, 0, CountOrigin::SinceAttach))
            .collect();
        v.push(sample(11, 2, 0, 100, CountOrigin::SinceAttach));
        let mut a = at.apply(&batch(t0 + Duration::from_secs(1), v));
        assert_eq!(a.connections.len(), 11);
        let dropped = truncate_connections(&mut a.connections, &a.connection_bytes, 3);
        assert_eq!(dropped, 8);
        let kept: Vec<_> = a
            .connections
            .iter()
            .map(|c| (c.pid, c.rx_bytes.unwrap_or(0) + c.tx_bytes.unwrap_or(0)))
            .collect();
        assert_eq!(kept, vec![(Some(2), 100), (Some(1), 10), (Some(1), 9)]);
        // Totals come from every socket, truncated or not.
        assert_eq!(row(&a, 1), (55, 0, 10));
        assert_eq!(row(&a, 2), (0, 100, 1));
        // Nothing to cut: nothing left out.
        let mut b = a.connections.clone();
        assert_eq!(truncate_connections(&mut b, &[1, 2, 3], 3), 0);
        assert_eq!(truncate_connections(&mut b, &[1, 2, 3], 0), 3);
        assert!(b.is_empty());
    }

    #[test]
    fn since_attach_counts_first_sight_in_full_and_then_deltas() {
        let t0 = Instant::now();
        let mut a = Attribution::new(t0);
        let r = a.apply(&batch(
            t0 + Duration::from_secs(1),
            vec![sample(1, 10, 5, 7, CountOrigin::SinceAttach)],
        ));
        assert_eq!(row(&r, 10), (5, 7, 1));
        assert_eq!(a.processes_rate_check(&r, 10), (5.0, 7.0));
        let r = a.apply(&batch(
            t0 + Duration::from_secs(3),
            vec![sample(1, 10, 25, 7, CountOrigin::SinceAttach)],
        ));
        assert_eq!(row(&r, 10), (20, 0, 1));
        assert_eq!(r.processes[0].rx_rate, 10.0);
    }

    #[test]
    fn since_socket_open_baselines_first_read_then_counts_new_sockets_in_full() {
        let t0 = Instant::now();
        let mut a = Attribution::new(t0);
        let r = a.apply(&batch(
            t0,
            vec![sample(1, 10, 1000, 1000, CountOrigin::SinceSocketOpen)],
        ));
        assert_eq!(row(&r, 10), (0, 0, 1));
        let r = a.apply(&batch(
            t0 + Duration::from_secs(1),
            vec![
                sample(1, 10, 1100, 1000, CountOrigin::SinceSocketOpen),
                sample(2, 10, 50, 60, CountOrigin::SinceSocketOpen),
            ],
        ));
        assert_eq!(row(&r, 10), (150, 60, 2));
    }

    #[test]
    fn closed_socket_counts_its_final_bytes_once() {
        let t0 = Instant::now();
        let mut a = Attribution::new(t0);
        a.apply(&batch(
            t0,
            vec![sample(1, 10, 10, 10, CountOrigin::SinceAttach)],
        ));
        let mut last = sample(1, 10, 15, 30, CountOrigin::SinceAttach);
        last.closed = true;
        let r = a.apply(&batch(t0 + Duration::from_secs(1), vec![last]));
        assert_eq!(row(&r, 10), (5, 20, 0));
        // The id is reused by a new socket: its bytes are all new.
        let r = a.apply(&batch(
            t0 + Duration::from_secs(2),
            vec![sample(1, 11, 3, 4, CountOrigin::SinceAttach)],
        ));
        assert_eq!(row(&r, 11), (3, 4, 1));
        assert!(r.processes.iter().all(|p| p.pid != Some(10)));
    }

    #[test]
    fn counter_going_backwards_is_a_reset_not_a_huge_delta() {
        let t0 = Instant::now();
        let mut a = Attribution::new(t0);
        a.apply(&batch(
            t0,
            vec![sample(1, 10, 100, 100, CountOrigin::SinceAttach)],
        ));
        let r = a.apply(&batch(
            t0 + Duration::from_secs(1),
            vec![sample(1, 10, 4, 2, CountOrigin::SinceAttach)],
        ));
        assert_eq!(row(&r, 10), (4, 2, 1));
    }

    #[test]
    fn a_socket_missing_from_one_read_is_not_counted_twice() {
        let t0 = Instant::now();
        let mut a = Attribution::new(t0);
        a.apply(&batch(
            t0,
            vec![sample(1, 10, 100, 100, CountOrigin::SinceAttach)],
        ));
        // A partial read misses it...
        let r = a.apply(&batch(t0 + Duration::from_secs(1), vec![]));
        assert!(r.processes.is_empty());
        // ...and when it is back only its new bytes count.
        let r = a.apply(&batch(
            t0 + Duration::from_secs(2),
            vec![sample(1, 10, 130, 100, CountOrigin::SinceAttach)],
        ));
        assert_eq!(row(&r, 10), (30, 0, 1));
        // Gone for longer than the grace: forgotten.
        for i in 0..GRACE_READS {
            a.apply(&batch(t0 + Duration::from_secs(3 + i), vec![]));
        }
        assert!(a.prev.is_empty());
    }

    #[test]
    fn a_partial_batch_attributes_as_the_full_batch_would() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let open = |id, pid, rx, tx| sample(id, pid, rx, tx, CountOrigin::SinceAttach);
        let mut listen = open(3, 20, 0, 0);
        listen.state = state::LISTEN.into();
        listen.remote = None;
        let mut gone = open(4, 20, 10, 10);
        gone.state = state::CLOSED.into();
        gone.closed = true;
        let idle = vec![open(2, 10, 5, 5), listen.clone()];
        let first = vec![
            open(1, 10, 100, 0),
            open(2, 10, 5, 5),
            listen,
            open(4, 20, 7, 7),
        ];
        let mut full = Attribution::new(t0);
        let mut part = Attribution::new(t0);
        full.apply(&batch(at(1), first.clone()));
        part.apply(&batch(at(1), first));

        // Socket 1 moved 50 bytes and socket 4 closed with 3 more each
        // way; 2 and the listener did nothing. The partial batch lists the
        // changes only.
        let changed = vec![open(1, 10, 150, 0), gone];
        let partial = |samples: Vec<SocketSample>, omitted| SampleBatch {
            omitted: Some(omitted),
            ..batch(at(2), samples)
        };
        let f = full.read(&batch(at(2), [changed.clone(), idle.clone()].concat()));
        let p = part.read(&partial(changed, 2));
        assert_eq!(p.processes, f.processes);
        assert_eq!(
            p.processes
                .iter()
                .map(|r| (r.pid, r.rx_bytes, r.tx_bytes, r.connection_count))
                .collect::<Vec<_>>(),
            // pid 10: 50 B, two sockets ESTABLISHED; pid 20: 3 + 3 B from
            // the final record, its listener keeps the row.
            vec![(Some(10), 50, 0, 2), (Some(20), 3, 3, 0)]
        );
        // The connection list: what the batch listed, the rest counted as
        // left out.
        assert_eq!(p.rows.len(), 2);
        let (order, left_out) = p.top(&partial(vec![], 2), 10);
        assert_eq!((order.len(), left_out), (2, 2));

        // Nothing changed at all: an empty partial batch, same rows as a
        // full one of the same sockets.
        let f = full.read(&batch(at(3), [vec![open(1, 10, 150, 0)], idle].concat()));
        let p = part.read(&partial(vec![], 3));
        assert_eq!(p.processes, f.processes);
        assert_eq!(
            p.processes
                .iter()
                .map(|r| (r.pid, r.rx_bytes + r.tx_bytes, r.connection_count))
                .collect::<Vec<_>>(),
            vec![(Some(10), 0, 2), (Some(20), 0, 0)]
        );
        assert!(p.rows.is_empty());
    }

    #[test]
    fn connection_count_is_the_established_sockets_only() {
        let t0 = Instant::now();
        let mut a = Attribution::new(t0);
        let with = |id, pid, protocol, st: &str, closed| {
            let mut s = sample(id, pid, 1, 2, CountOrigin::SinceAttach);
            s.protocol = protocol;
            s.state = st.to_string().into();
            s.closed = closed;
            s
        };
        let r = a.apply(&batch(
            t0 + Duration::from_secs(1),
            vec![
                with(1, 10, Protocol::Tcp, "ESTABLISHED", false),
                with(2, 10, Protocol::Tcp, "ESTABLISHED", false),
                with(3, 10, Protocol::Tcp, "LISTEN", false),
                with(4, 10, Protocol::Tcp, "TIME_WAIT", false),
                with(5, 10, Protocol::Tcp, "CLOSE_WAIT", false),
                with(6, 10, Protocol::Tcp, "SYN_SENT", false),
                // Connected UDP is ESTABLISHED, as ss names it: counted.
                with(7, 10, Protocol::Udp, "ESTABLISHED", false),
                with(8, 10, Protocol::Udp, "UNCONN", false),
                // A final record is not a connection any more.
                with(9, 10, Protocol::Tcp, "CLOSED", true),
                // Only listening: the process keeps its row, with 0 connections.
                with(10, 11, Protocol::Tcp, "LISTEN", false),
                // Another process's established socket is not ours.
                with(11, 12, Protocol::Tcp, "ESTABLISHED", false),
            ],
        ));
        assert_eq!(row(&r, 10), (9, 18, 3));
        assert_eq!(row(&r, 11), (1, 2, 0));
        assert_eq!(row(&r, 12), (1, 2, 1));
        // Later: one ESTABLISHED socket closes, the listener stays.
        let r = a.apply(&batch(
            t0 + Duration::from_secs(2),
            vec![
                with(1, 10, Protocol::Tcp, "CLOSED", true),
                with(2, 10, Protocol::Tcp, "ESTABLISHED", false),
                with(3, 10, Protocol::Tcp, "LISTEN", false),
            ],
        ));
        assert_eq!(row(&r, 10), (0, 0, 1));
    }

    #[test]
    fn sockets_without_pid_make_connections_but_no_process_rows() {
        let t0 = Instant::now();
        let mut a = Attribution::new(t0);
        let mut s = sample(1, 0, 9, 9, CountOrigin::SinceAttach);
        s.pid = None;
        let r = a.apply(&batch(t0 + Duration::from_secs(1), vec![s]));
        assert!(r.processes.is_empty());
        assert_eq!(r.connections.len(), 1);
        assert_eq!(r.connections[0].rx_bytes, Some(9));
        assert_eq!(r.connections[0].local_addr, "127.0.0.1:1000");
    }

    #[test]
    fn top_n_chosen_before_building_rows_matches_building_all_then_truncating() {
        // Ties on bytes, states other than ESTABLISHED, shared sockets
        // (one row of several samples), closed and ownerless sockets.
        let t0 = Instant::now();
        let states = [
            "ESTABLISHED",
            "LISTEN",
            "TIME_WAIT",
            "ESTABLISHED",
            "UNCONN",
        ];
        let make = |tick: u64| {
            let mut v = Vec::new();
            for i in 0..60u64 {
                let moved = (i * 7 + tick * 3) % 5 * 10;
                if i % 9 == 0 {
                    // Two owners of one socket, the most recent first.
                    for pid in [20 + i as u32, 10] {
                        let mut s = sample(i, pid, moved * tick, tick, CountOrigin::SinceAttach);
                        s.id = SocketId::shared(i, i, pid);
                        v.push(s);
                    }
                    continue;
                }
                let mut s = sample(
                    i,
                    1 + (i % 4) as u32,
                    moved * tick,
                    0,
                    CountOrigin::SinceAttach,
                );
                s.state = states[(i % 5) as usize].into();
                if i % 11 == 0 {
                    s.pid = None;
                    s.comm = None;
                }
                s.closed = tick == 2 && i % 13 == 0;
                v.push(s);
            }
            v
        };
        for max in [0, 1, 5, 17, 30, 54, 60, 1000] {
            let (mut fast, mut full) = (Attribution::new(t0), Attribution::new(t0));
            for tick in 1..4 {
                let b = batch(t0 + Duration::from_secs(tick), make(tick));
                let iv = fast.read(&b);
                let (rows, left_out) = iv.top_connections(&b, max);
                let mut all = full.apply(&b);
                let expected_left_out =
                    truncate_connections(&mut all.connections, &all.connection_bytes, max);
                assert_eq!(rows, all.connections, "max {max}, tick {tick}");
                assert_eq!(left_out, expected_left_out, "max {max}, tick {tick}");
                assert_eq!(
                    left_out as usize,
                    iv.rows.len().saturating_sub(max),
                    "exactly the rows left out"
                );
                assert_eq!(iv.processes, all.processes);
            }
        }
    }

    fn p(name: &str, pid: u32, rx: u64, tx: u64, conns: u32) -> ProcessBandwidth {
        ProcessBandwidth::network_only(
            name.into(),
            Some(pid),
            rx,
            tx,
            rx as f64 / 2.0,
            tx as f64 / 2.0,
            conns,
        )
    }

    fn brief(rows: &[ProcessBandwidth]) -> Vec<(Option<u32>, &str, u64, u64, u32)> {
        rows.iter()
            .map(|r| {
                (
                    r.pid,
                    r.process_name.as_str(),
                    r.rx_bytes,
                    r.tx_bytes,
                    r.connection_count,
                )
            })
            .collect()
    }

    #[test]
    fn fold_keeps_the_busiest_rows_ties_by_pid_then_name_and_sums_the_rest() {
        // Given out of order: three rows tie at 30 bytes, two of them on
        // one pid (a thread renamed).
        let given = vec![
            p("c", 9, 10, 20, 1),
            p("z", 4, 0, 0, 2),
            p("b", 7, 15, 15, 1),
            p("a", 7, 30, 0, 0),
            p("big", 12, 1000, 1, 3),
            p("d", 5, 0, 30, 4),
            p("e", 3, 1, 1, 5),
        ];
        let mut rows = given.clone();
        assert_eq!(fold_processes(&mut rows, 3), 4);
        assert_eq!(
            brief(&rows),
            vec![
                (Some(12), "big", 1000, 1, 3),
                // 30 bytes each: pid 5 first, then pid 7's `a` before `b`.
                (Some(5), "d", 0, 30, 4),
                (Some(7), "a", 30, 0, 0),
                // Folded: b (7), c (9), e (3), z (4).
                (
                    None,
                    FOLDED_PROCESS_NAME,
                    15 + 10 + 1,
                    15 + 20 + 1,
                    1 + 1 + 5 + 2
                ),
            ]
        );
        let other = &rows[3];
        assert_eq!((other.rx_rate, other.tx_rate), (13.0, 18.0));
        assert_eq!((other.user.as_ref(), other.cmd.as_ref()), (None, None));
        // Every byte is in some row.
        let total = |r: &[ProcessBandwidth]| {
            r.iter()
                .fold((0, 0), |t, p| (t.0 + p.rx_bytes, t.1 + p.tx_bytes))
        };
        assert_eq!(total(&rows), total(&given));
        // The same rows in any order fold the same.
        let mut reversed: Vec<_> = given.iter().rev().cloned().collect();
        assert_eq!(fold_processes(&mut reversed, 3), 4);
        assert_eq!(reversed, rows);

        // Nothing to cut: untouched, in the given order, no row added.
        let mut same = given.clone();
        assert_eq!(fold_processes(&mut same, 7), 0);
        assert_eq!(same, given);
        // 0: only the folded row, holding everything.
        let mut none = given.clone();
        assert_eq!(fold_processes(&mut none, 0), 7);
        assert_eq!(
            brief(&none),
            vec![(None, FOLDED_PROCESS_NAME, 1056, 67, 16)]
        );
    }

    #[test]
    fn a_folded_process_has_its_exact_bytes_when_it_is_back_in_the_top_n() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut a = Attribution::new(t0);
        let s = |pid: u32, rx| sample(u64::from(pid), pid, rx, 0, CountOrigin::SinceAttach);
        let mut tick = |secs, v: Vec<SocketSample>| {
            let mut rows = a.read(&batch(at(secs), v)).processes;
            let folded = fold_processes(&mut rows, 2);
            (
                folded,
                brief(&rows)
                    .iter()
                    .map(|r| (r.0, r.2, r.4))
                    .collect::<Vec<_>>(),
            )
        };
        // Pid 1 is the smallest mover: folded.
        assert_eq!(
            tick(1, vec![s(1, 10), s(2, 100), s(3, 200)]),
            (1, vec![(Some(3), 200, 1), (Some(2), 100, 1), (None, 10, 1)])
        );
        // Next interval it moves 500 more: its row has exactly those (not
        // the 10 already counted in the folded row). Pids 2 and 3 moved
        // nothing: they tie at 0 and the smaller pid stays.
        assert_eq!(
            tick(2, vec![s(1, 510), s(2, 100), s(3, 200)]),
            (1, vec![(Some(1), 500, 1), (Some(2), 0, 1), (None, 0, 1)])
        );
        // Pid 3 moves again while folded, then is back: counted once each.
        assert_eq!(
            tick(3, vec![s(1, 610), s(2, 150), s(3, 207)]),
            (1, vec![(Some(1), 100, 1), (Some(2), 50, 1), (None, 7, 1)])
        );
        assert_eq!(
            tick(4, vec![s(1, 610), s(2, 150), s(3, 1207)]),
            (1, vec![(Some(3), 1000, 1), (Some(1), 0, 1), (None, 0, 1)])
        );
    }

    fn new_flags(a: &mut Attribution, at: Instant, v: Vec<SocketSample>) -> Vec<(u64, bool)> {
        let b = batch(at, v);
        let iv = a.read(&b);
        iv.rows
            .iter()
            .map(|r| (b.samples[r.sample].id.primary, r.new))
            .collect()
    }

    #[test]
    fn a_row_is_new_when_its_socket_was_not_seen_before() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut a = Attribution::new(t0);
        let s = |id| sample(id, 10, 1, 1, CountOrigin::SinceAttach);
        // The first read is a baseline: nothing new.
        assert_eq!(new_flags(&mut a, at(1), vec![s(1)]), vec![(1, false)]);
        assert_eq!(
            new_flags(&mut a, at(2), vec![s(1), s(2)]),
            vec![(1, false), (2, true)]
        );
        // Missing from one read, then back: not new (the grace keeps it).
        assert_eq!(new_flags(&mut a, at(3), vec![s(2)]), vec![(2, false)]);
        assert_eq!(
            new_flags(&mut a, at(4), vec![s(1), s(2)]),
            vec![(1, false), (2, false)]
        );
        // A socket opened and closed within the interval: new.
        let mut gone = s(3);
        gone.closed = true;
        assert_eq!(new_flags(&mut a, at(5), vec![gone]), vec![(3, true)]);
        // A shared socket first seen without an owner, then with one (a
        // new share id): the socket is not new. Another owner joining: not new.
        let share = |pid: u32| {
            let mut s = sample(7, pid, 1, 1, CountOrigin::SinceAttach);
            s.id = SocketId::shared(7, 99, pid);
            if pid == 0 {
                s.pid = None;
            }
            s
        };
        assert_eq!(new_flags(&mut a, at(6), vec![share(0)]), vec![(7, true)]);
        assert_eq!(new_flags(&mut a, at(7), vec![share(5)]), vec![(7, false)]);
        assert_eq!(
            new_flags(&mut a, at(8), vec![share(6), share(5)]),
            vec![(7, false)]
        );
        // A socket first seen with two owners at once: one row, new.
        let mut other = share(8);
        other.id.primary = 70;
        let mut other2 = share(9);
        other2.id.primary = 70;
        assert_eq!(
            new_flags(&mut a, at(9), vec![other, other2]),
            vec![(70, true)]
        );
    }

    impl Attribution {
        fn processes_rate_check(&self, a: &Attributed, pid: u32) -> (f64, f64) {
            let p = a.processes.iter().find(|p| p.pid == Some(pid)).unwrap();
            (p.rx_rate, p.tx_rate)
        }
    }
}
