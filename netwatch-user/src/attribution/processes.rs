//! The process rows of one read: the bytes each process's samples moved
//! (step 2, [`MovedBytes`]) joined with the open and established sockets it
//! holds ([`HeldCounts`]) into one [`ProcessBandwidth`] per process and
//! name (step 4, [`process_rows`]). Exact sums from every socket; cutting
//! to the top N is [`super::fold_processes`]'s job, never this one's.

use std::time::Duration;

use netwatch_common::wire::ProcessBandwidth;
use smallvec::SmallVec;

use super::sockets::HeldCounts;
use super::FastMap;

/// One process's bytes over one read's samples, under one name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moved<'a> {
    name: Option<&'a str>,
    rx: u64,
    tx: u64,
    /// Already in a row (its process holds an open socket under this name).
    listed: bool,
}

/// Step 2: per pid, the bytes its samples moved this read, by name,
/// borrowed from the batch (no `String` per socket).
#[derive(Debug, Default)]
pub(super) struct MovedBytes<'a>(FastMap<u32, SmallVec<[Moved<'a>; 1]>>);

impl<'a> MovedBytes<'a> {
    /// Add what one sample of process `pid`, named `name`, moved. Nothing
    /// moved, nothing noted: a process with no bytes and no open socket
    /// gets no row.
    pub(super) fn add(&mut self, pid: u32, name: Option<&'a str>, rx: u64, tx: u64) {
        if rx == 0 && tx == 0 {
            return;
        }
        let names = self.0.entry(pid).or_default();
        match names.iter_mut().find(|m| m.name == name) {
            Some(m) => {
                m.rx += rx;
                m.tx += tx;
            }
            None => names.push(Moved {
                name,
                rx,
                tx,
                listed: false,
            }),
        }
    }
}

/// One process row before it is built for the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcessSum<'a> {
    pid: u32,
    name: Option<&'a str>,
    rx: u64,
    tx: u64,
    /// Its open sockets in `ESTABLISHED`: the row's `connection_count`.
    established: u32,
}

/// Step 4: a row per process and name that holds an open socket (`held`)
/// or moved bytes (`moved`), its rates over `interval` (0 when it is 0),
/// most bytes first; equal totals in (pid, name) order. A process's row
/// is named `pid:<pid>` when its source knows no name.
pub(super) fn process_rows(
    held: &HeldCounts,
    moved: &mut MovedBytes<'_>,
    interval: Duration,
) -> Vec<ProcessBandwidth> {
    let secs = interval.as_secs_f64();
    let rate = |bytes: u64| if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
    let mut sums: Vec<ProcessSum<'_>> = Vec::new();
    for (pid, h) in held.iter() {
        let name = h.name.as_deref();
        let (rx, tx) = moved
            .0
            .get_mut(&pid)
            .and_then(|v| v.iter_mut().find(|m| m.name == name))
            .map_or((0, 0), |m| {
                m.listed = true;
                (m.rx, m.tx)
            });
        sums.push(ProcessSum {
            pid,
            name,
            rx,
            tx,
            established: h.established,
        });
    }
    for (&pid, names) in &moved.0 {
        for m in names.iter().filter(|m| !m.listed) {
            sums.push(ProcessSum {
                pid,
                name: m.name,
                rx: m.rx,
                tx: m.tx,
                established: 0,
            });
        }
    }
    // (pid, name) order first, then most bytes first (a stable sort):
    // equal totals keep a stable order.
    sums.sort_unstable_by_key(|p| (p.pid, p.name));
    let mut processes: Vec<ProcessBandwidth> = sums
        .into_iter()
        .map(|p| {
            ProcessBandwidth::network_only(
                p.name
                    .map_or_else(|| format!("pid:{}", p.pid), str::to_string),
                Some(p.pid),
                p.rx,
                p.tx,
                rate(p.rx),
                rate(p.tx),
                p.established,
            )
        })
        .collect();
    processes.sort_by_key(|p| std::cmp::Reverse(p.rx_bytes + p.tx_bytes));
    processes
}

#[cfg(test)]
mod tests {
    use super::super::sockets::{Holding, Owner};
    use super::*;

    fn holding(pid: u32, name: Option<&str>, established: bool) -> Option<Holding> {
        Some(Holding {
            owner: Some(Owner {
                pid,
                name: name.map(Into::into),
            }),
            established,
        })
    }

    /// (pid, name, rx, tx, rx_rate, tx_rate, connection_count).
    type Brief<'a> = (Option<u32>, &'a str, u64, u64, f64, f64, u32);

    fn brief(rows: &[ProcessBandwidth]) -> Vec<Brief<'_>> {
        rows.iter()
            .map(|r| {
                (
                    r.pid,
                    r.process_name.as_str(),
                    r.rx_bytes,
                    r.tx_bytes,
                    r.rx_rate,
                    r.tx_rate,
                    r.connection_count,
                )
            })
            .collect()
    }

    #[test]
    fn moved_bytes_sum_per_process_and_name_and_skip_nothing_moved() {
        let mut m = MovedBytes::default();
        m.add(10, Some("a"), 5, 1);
        m.add(10, Some("a"), 7, 0);
        m.add(10, Some("b"), 0, 3);
        m.add(11, None, 0, 0);
        m.add(12, None, 1, 0);
        let mut got: Vec<_> =
            m.0.iter()
                .flat_map(|(&pid, v)| v.iter().map(move |x| (pid, x.name, x.rx, x.tx)))
                .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                (10, Some("a"), 12, 1),
                (10, Some("b"), 0, 3),
                (12, None, 1, 0)
            ]
        );
    }

    #[test]
    fn rows_join_held_sockets_and_moved_bytes_most_bytes_first() {
        let mut held = HeldCounts::default();
        let mut slots = [
            holding(10, Some("a"), true),
            holding(10, Some("a"), false),
            holding(11, None, false),
            holding(13, Some("idle"), true),
        ];
        for slot in &mut slots {
            let now = slot.take();
            held.restate(slot, now);
        }
        let mut moved = MovedBytes::default();
        moved.add(10, Some("a"), 100, 50);
        // A renamed thread of pid 10, holding nothing under that name.
        moved.add(10, Some("b"), 1, 1);
        // A socket that closed: bytes, no open socket.
        moved.add(12, Some("c"), 7, 0);
        let rows = process_rows(&held, &mut moved, Duration::from_secs(2));
        assert_eq!(
            brief(&rows),
            vec![
                (Some(10), "a", 100, 50, 50.0, 25.0, 1),
                (Some(12), "c", 7, 0, 3.5, 0.0, 0),
                (Some(10), "b", 1, 1, 0.5, 0.5, 0),
                // Equal (0 bytes): pid order. No name: named by its pid.
                (Some(11), "pid:11", 0, 0, 0.0, 0.0, 0),
                (Some(13), "idle", 0, 0, 0.0, 0.0, 1),
            ]
        );
    }

    #[test]
    fn a_zero_interval_has_zero_rates() {
        let mut moved = MovedBytes::default();
        moved.add(10, Some("a"), 100, 50);
        let rows = process_rows(&HeldCounts::default(), &mut moved, Duration::ZERO);
        assert_eq!(brief(&rows), vec![(Some(10), "a", 100, 50, 0.0, 0.0, 0)]);
    }
}
