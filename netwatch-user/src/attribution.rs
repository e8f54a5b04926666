//! Turns per-socket samples into the interval's wire rows: per-socket deltas
//! against the previous read, summed per process into [`ProcessBandwidth`],
//! and one [`ConnectionDetail`] per socket. Every source feeds this one step,
//! so its rules are the same everywhere. It never reads the system itself.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use netwatch_common::wire::{ConnectionDetail, ProcessBandwidth};

use crate::counter::counter_delta;
use crate::net::state;
use crate::source::{CountOrigin, SampleBatch, SocketId, SocketSample};

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

/// A socket missing from a read without a final record keeps its last
/// counters for this many reads: a partial read (a map walk cut short, a
/// line a parser skipped) must not make it look new, and counted twice, when
/// it is seen again.
pub const GRACE_READS: u64 = 5;

/// A socket's last cumulative counters and the read that saw them.
#[derive(Debug, Clone, Copy)]
struct Last {
    rx: u64,
    tx: u64,
    read: u64,
}

/// One process's sums over the interval's samples.
#[derive(Debug, Clone, Copy, Default)]
struct ProcessSums {
    rx: u64,
    tx: u64,
    /// Sockets still open, in any state: a process holding one keeps its row.
    open: u32,
    /// Open sockets in `ESTABLISHED`: the row's `connection_count`.
    established: u32,
}

/// Per-socket delta tracker. Keeps each live socket's last cumulative counters.
#[derive(Debug)]
pub struct Attribution {
    prev: HashMap<SocketId, Last>,
    last_read: Instant,
    reads: u64,
}

/// Set in `SocketId::secondary` by a source that splits one socket between
/// the processes that used it (the eBPF source): such shares of one socket
/// come adjacent in a batch, with one `primary` and the same low 32 bits of
/// `secondary`, and make one connection row. Other sources (one sample per
/// row, as ss; or one row per socket and pid, as macOS) never set it.
pub const SHARED_SOCKET_TAG: u64 = 1 << 62;

/// `s` is another owner's share of the socket `prev` describes.
fn same_socket(prev: Option<&SocketSample>, s: &SocketSample) -> bool {
    let tagged = |x: &SocketSample| x.id.secondary & SHARED_SOCKET_TAG != 0;
    prev.is_some_and(|p| {
        tagged(p)
            && tagged(s)
            && p.id.primary == s.id.primary
            && p.id != s.id
            && (p.id.secondary ^ s.id.secondary) & 0xffff_ffff == 0
            && p.closed == s.closed
            && p.protocol == s.protocol
            && p.local == s.local
            && p.remote == s.remote
    })
}

impl Attribution {
    /// `started_at` is when the source began counting: the first interval
    /// runs from there to the first read.
    pub fn new(started_at: Instant) -> Self {
        Self {
            prev: HashMap::new(),
            last_read: started_at,
            reads: 0,
        }
    }

    /// The bytes `s` moved since the previous read, as (rx, tx).
    fn socket_delta(&self, s: &SocketSample) -> (u64, u64) {
        match self.prev.get(&s.id) {
            // A counter that went backwards: the socket id was reused, so
            // everything it holds is new.
            Some(last) => (
                counter_delta(last.rx, s.rx_bytes),
                counter_delta(last.tx, s.tx_bytes),
            ),
            None => match s.origin {
                CountOrigin::SinceAttach => (s.rx_bytes, s.tx_bytes),
                // First read: the counters predate us and are only a baseline.
                CountOrigin::SinceSocketOpen if self.reads == 0 => (0, 0),
                // Later reads: the socket opened within the interval.
                CountOrigin::SinceSocketOpen => (s.rx_bytes, s.tx_bytes),
            },
        }
    }

    /// Consume one batch: compute deltas, group by process, remember counters.
    pub fn apply(&mut self, batch: &SampleBatch) -> Attributed {
        let interval = batch.taken_at.saturating_duration_since(self.last_read);
        let secs = interval.as_secs_f64();
        let rate = |bytes: u64| if secs > 0.0 { bytes as f64 / secs } else { 0.0 };

        // (pid, name) -> its sums; BTreeMap for a stable order. The name is
        // borrowed from the batch (no String per socket); a missing comm is
        // named `pid:N` once per row below.
        let mut per_process: BTreeMap<(u32, Option<&str>), ProcessSums> = BTreeMap::new();
        let mut connections: Vec<ConnectionDetail> = Vec::with_capacity(batch.samples.len());
        let mut connection_bytes: Vec<u64> = Vec::with_capacity(batch.samples.len());
        let mut updates: Vec<(SocketId, Option<Last>)> = Vec::with_capacity(batch.samples.len());
        let mut prev_sample: Option<&SocketSample> = None;

        for s in &batch.samples {
            let (rx, tx) = self.socket_delta(s);
            let last = (!s.closed).then_some(Last {
                rx: s.rx_bytes,
                tx: s.tx_bytes,
                read: self.reads,
            });
            updates.push((s.id, last));
            if let Some(pid) = s.pid.filter(|&p| p != 0) {
                let row = per_process.entry((pid, s.comm.as_deref())).or_default();
                row.rx += rx;
                row.tx += tx;
                if !s.closed {
                    row.open += 1;
                    // netwatch-sdk 0.3.2 counts a process's connections whose
                    // state is exactly `ESTABLISHED` (connected UDP included,
                    // as `ss` names it), nothing else.
                    if s.state == state::ESTABLISHED {
                        row.established += 1;
                    }
                }
            }
            // One socket shared by several processes comes as adjacent
            // samples with one `id.primary` and endpoints (the eBPF source's
            // owners): one connection row, its bytes summed, the first
            // (most recent) owner named.
            if let Some(prev) = connections.last_mut() {
                if same_socket(prev_sample, s) {
                    prev.rx_bytes = Some(prev.rx_bytes.unwrap_or(0) + s.rx_bytes);
                    prev.tx_bytes = Some(prev.tx_bytes.unwrap_or(0) + s.tx_bytes);
                    if let Some(b) = connection_bytes.last_mut() {
                        *b = b.saturating_add(rx.saturating_add(tx));
                    }
                    prev_sample = Some(s);
                    continue;
                }
            }
            prev_sample = Some(s);
            connection_bytes.push(rx.saturating_add(tx));
            connections.push(ConnectionDetail {
                protocol: s.protocol.as_wire().to_string(),
                local_addr: s.local.map_or_else(|| "*:*".to_string(), |a| a.to_string()),
                remote_addr: s
                    .remote
                    .map_or_else(|| "*:*".to_string(), |a| a.to_string()),
                state: s.state.clone(),
                pid: s.pid.filter(|&p| p != 0),
                process_name: s.comm.clone(),
                kernel_rtt_us: s.rtt_us,
                rx_bytes: Some(s.rx_bytes),
                tx_bytes: Some(s.tx_bytes),
            });
        }

        let mut processes: Vec<ProcessBandwidth> = per_process
            .into_iter()
            .filter(|(_, s)| s.rx + s.tx > 0 || s.open > 0)
            .map(|((pid, name), s)| {
                ProcessBandwidth::network_only(
                    name.map_or_else(|| format!("pid:{pid}"), str::to_string),
                    Some(pid),
                    s.rx,
                    s.tx,
                    rate(s.rx),
                    rate(s.tx),
                    s.established,
                )
            })
            .collect();
        processes.sort_by_key(|p| std::cmp::Reverse(p.rx_bytes + p.tx_bytes));

        for (id, last) in updates {
            match last {
                Some(l) => self.prev.insert(id, l),
                // Closed: its final counters were counted; it never returns.
                None => self.prev.remove(&id),
            };
        }
        // Sockets gone without a final record for longer than the grace are
        // forgotten: a polling source cannot see their last bytes.
        let now = self.reads;
        self.prev.retain(|_, l| now - l.read < GRACE_READS);
        self.last_read = batch.taken_at;
        self.reads += 1;
        Attributed {
            processes,
            connections,
            connection_bytes,
            interval,
        }
    }
}

/// Keep the `max` connection rows that moved the most bytes this interval
/// (`bytes`, index for index with `rows`; ties: `ESTABLISHED` first, as
/// netwatch-sdk 0.3.2's `top_connections` prefers, then batch order), and
/// say how many were left out. Per-process totals are computed from every
/// socket before this and are not touched.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Protocol;

    fn sample(id: u64, pid: u32, rx: u64, tx: u64, origin: CountOrigin) -> SocketSample {
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
            comm: Some(format!("p{pid}")),
            cgroup_id: None,
            rx_bytes: rx,
            tx_bytes: tx,
            rtt_us: None,
            closed: false,
            origin,
        }
    }

    fn batch(at: Instant, samples: Vec<SocketSample>) -> SampleBatch {
        SampleBatch {
            taken_at: at,
            samples,
            lost_records: 0,
            estimated: false,
        }
    }

    #[test]
    fn shares_of_one_socket_make_one_connection_row_and_one_process_row_each() {
        let t0 = Instant::now();
        let mut attr = Attribution::new(t0);
        let share = |pid: u32, rx, tx| {
            let mut s = sample(7, pid, rx, tx, CountOrigin::SinceAttach);
            s.id.secondary = SHARED_SOCKET_TAG | (u64::from(pid) << 32) | 99;
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
    fn connection_count_is_the_established_sockets_only() {
        let t0 = Instant::now();
        let mut a = Attribution::new(t0);
        let with = |id, pid, protocol, st: &str, closed| {
            let mut s = sample(id, pid, 1, 2, CountOrigin::SinceAttach);
            s.protocol = protocol;
            s.state = st.to_string();
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

    impl Attribution {
        fn processes_rate_check(&self, a: &Attributed, pid: u32) -> (f64, f64) {
            let p = a.processes.iter().find(|p| p.pid == Some(pid)).unwrap();
            (p.rx_rate, p.tx_rate)
        }
    }
}
