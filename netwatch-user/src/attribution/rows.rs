//! The connection rows of one read (step 2 of [`super::Attribution::read`],
//! beside the deltas): one compact [`Row`] per socket, in batch order, the
//! adjacent shares of one shared socket merged into one. It never builds
//! wire rows and never allocates per sample.

use super::Row;
use crate::source::SocketSample;

/// `s` is another owner's share of the socket `prev` describes: a source
/// that splits one socket between the processes that used it (the eBPF
/// source, [`crate::source::SocketId::shared`]) lists the shares adjacent
/// in a batch, and they make one connection row. Other sources (one sample
/// per row, as ss; or one row per socket and pid, as macOS) build plain
/// ids and never merge.
fn same_socket(prev: Option<&SocketSample>, s: &SocketSample) -> bool {
    prev.is_some_and(|p| {
        p.id.is_other_share_of(s.id)
            && p.closed == s.closed
            && p.protocol == s.protocol
            && p.local == s.local
            && p.remote == s.remote
    })
}

/// One read's connection rows as they are built, sample by sample.
#[derive(Debug)]
pub(super) struct Rows<'b> {
    rows: Vec<Row>,
    /// The sample pushed last: the next is merged into its row if it is
    /// another share of the same socket.
    last: Option<&'b SocketSample>,
}

impl<'b> Rows<'b> {
    /// Build into `rows` (emptied; its memory reused), room for `samples`.
    pub(super) fn new(mut rows: Vec<Row>, samples: usize) -> Self {
        rows.clear();
        rows.reserve(samples);
        Self { rows, last: None }
    }

    /// Add sample `s`, at index `at` of the batch, which moved `bytes`
    /// (rx + tx) this interval and is `new` (see [`Row::new`]). Another
    /// share of the socket just pushed joins its row: counters and bytes
    /// summed, new only if every share is; the row keeps its first (most
    /// recent) owner's sample. Any other sample starts a row.
    pub(super) fn push(&mut self, at: usize, s: &'b SocketSample, bytes: u64, new: bool) {
        let merge = same_socket(self.last, s);
        self.last = Some(s);
        if merge {
            if let Some(r) = self.rows.last_mut() {
                r.rx_bytes = r.rx_bytes.saturating_add(s.rx_bytes);
                r.tx_bytes = r.tx_bytes.saturating_add(s.tx_bytes);
                r.bytes = r.bytes.saturating_add(bytes);
                r.new &= new;
                return;
            }
        }
        self.rows.push(Row {
            sample: at,
            rx_bytes: s.rx_bytes,
            tx_bytes: s.tx_bytes,
            bytes,
            new,
        });
    }

    /// The rows, in batch order.
    pub(super) fn into_rows(self) -> Vec<Row> {
        self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::tests::sample;
    use crate::source::{CountOrigin, SocketId};

    fn share(pid: u32, rx: u64, tx: u64) -> SocketSample {
        let mut s = sample(7, pid, rx, tx, CountOrigin::SinceAttach);
        s.id = SocketId::shared(7, 99, pid);
        s
    }

    fn row(sample: usize, rx_bytes: u64, tx_bytes: u64, bytes: u64, new: bool) -> Row {
        Row {
            sample,
            rx_bytes,
            tx_bytes,
            bytes,
            new,
        }
    }

    #[test]
    fn two_shares_of_one_socket_merge_into_one_row() {
        let (a, b) = (share(2, 10, 700), share(1, 5, 300));
        let mut rows = Rows::new(vec![row(9, 9, 9, 9, true)], 2);
        rows.push(0, &a, 30, true);
        rows.push(1, &b, 40, false);
        // Cumulative counters and this interval's bytes summed; new only
        // if both were; the first share's sample names the row.
        assert_eq!(rows.into_rows(), vec![row(0, 15, 1000, 70, false)]);
    }

    #[test]
    fn three_shares_make_one_row_and_new_needs_every_share_new() {
        let v = [share(3, 1, 2), share(2, 3, 4), share(1, 5, 6)];
        let mut rows = Rows::new(Vec::new(), 3);
        for (i, s) in v.iter().enumerate() {
            rows.push(i, s, 1, true);
        }
        assert_eq!(rows.into_rows(), vec![row(0, 9, 12, 3, true)]);
    }

    #[test]
    fn other_sockets_and_plain_ids_start_their_own_rows() {
        let first = share(2, 10, 10);
        // The same share twice (same id): not another owner.
        let again = share(2, 10, 10);
        // Another owner, but the final record while the first is open.
        let mut closed = share(1, 1, 1);
        closed.closed = true;
        // Another owner on other endpoints.
        let mut moved = share(4, 1, 1);
        moved.remote = Some("127.0.0.1:2001".parse().unwrap());
        // Plain ids with one primary (macOS: a row per socket and pid).
        let plain = sample(8, 3, 1, 1, CountOrigin::SinceAttach);
        let mut plain2 = sample(8, 4, 1, 1, CountOrigin::SinceAttach);
        plain2.id.secondary = 4;
        let v = [first, again, closed, moved, plain, plain2];
        let mut rows = Rows::new(Vec::new(), v.len());
        for (i, s) in v.iter().enumerate() {
            rows.push(i, s, 2, false);
        }
        assert_eq!(
            rows.into_rows(),
            vec![
                row(0, 10, 10, 2, false),
                row(1, 10, 10, 2, false),
                row(2, 1, 1, 2, false),
                row(3, 1, 1, 2, false),
                row(4, 1, 1, 2, false),
                row(5, 1, 1, 2, false),
            ]
        );
    }

    #[test]
    fn a_share_after_another_socket_is_not_merged_back() {
        let (a, b) = (share(2, 10, 10), share(1, 5, 5));
        let other = sample(8, 3, 1, 1, CountOrigin::SinceAttach);
        let mut rows = Rows::new(Vec::new(), 3);
        rows.push(0, &a, 20, false);
        rows.push(1, &other, 2, true);
        rows.push(2, &b, 10, false);
        assert_eq!(
            rows.into_rows(),
            vec![
                row(0, 10, 10, 20, false),
                row(1, 1, 1, 2, true),
                row(2, 5, 5, 10, false)
            ]
        );
    }
}
