//! The last-resort per-process estimate: the interval's interface traffic
//! split across processes by how many ESTABLISHED connections each holds,
//! as netwatch-sdk 0.3.2 `attribute()` does. Used only when no source can
//! count bytes per socket; the caller must mark the snapshot `estimated`.
//! It reads nothing and never pretends to be a measurement.

use std::collections::BTreeMap;

use netwatch_common::wire::{ConnectionDetail, InterfaceMetric, ProcessBandwidth};

/// Split the interval's interface traffic across processes by their share
/// of ESTABLISHED connections.
///
/// Semantics follow netwatch-sdk 0.3.2 `attribute()`, with three deliberate
/// differences:
/// - Bytes are the interval's `rx_bytes_delta`/`tx_bytes_delta`, since a
///   [`ProcessBandwidth`] holds bytes *during the interval*; the SDK split
///   the interfaces' cumulative counters into that field.
/// - Bytes are split in whole bytes with the largest-remainder rule, so the
///   shares add up to the interface total exactly (the SDK truncated each
///   share). Ties go to the smaller `(name, pid)` key.
/// - Connections without a pid take their share of the denominator (the
///   traffic is not spread over the processes that are known) but produce
///   no row, as in [`crate::attribution`]; their share stays unattributed.
///   The SDK emitted them as a `pid:0` row.
///
/// As in the SDK: only connections whose state is `ESTABLISHED` count (TCP
/// and connected UDP); a process is keyed by `(process_name, pid)`, a
/// missing name becoming `pid:<pid>`; rates are the interfaces' `rx_rate`/
/// `tx_rate` (absent rates count as 0) times the same share; the caller
/// chooses the interfaces (the SDK's collectors leave out `lo`). Rows are
/// ordered by rx+tx bytes, most first, then by `(name, pid)`; no rows when
/// nothing is established. Truncate to a top N at the caller.
///
/// ```
/// use netwatch::estimate::split_by_connections;
/// # use netwatch_common::wire::{ConnectionDetail, InterfaceMetric};
/// # let conn = |pid: u32| ConnectionDetail { protocol: "TCP".into(), local_addr: "10.0.0.1:1".into(),
/// #     remote_addr: "10.0.0.2:2".into(), state: "ESTABLISHED".into(), pid: Some(pid),
/// #     process_name: Some(format!("p{pid}")), kernel_rtt_us: None, rx_bytes: None, tx_bytes: None,
/// #     tcp_quality: None };
/// # let eth0 = InterfaceMetric { name: "eth0".into(), is_up: true, rx_bytes: 0, tx_bytes: 0,
/// #     rx_bytes_delta: 1000, tx_bytes_delta: 10, rx_packets: 0, tx_packets: 0, rx_errors: 0,
/// #     tx_errors: 0, rx_drops: 0, tx_drops: 0, rx_rate: Some(1000.0), tx_rate: Some(10.0),
/// #     rx_history: None, tx_history: None };
/// // p1 holds three connections, p2 one: 3/4 and 1/4 of eth0's 1000 + 10 bytes.
/// let rows = split_by_connections(&[conn(1), conn(1), conn(1), conn(2)], &[eth0]);
/// assert_eq!((rows[0].pid, rows[0].rx_bytes, rows[0].tx_bytes, rows[0].connection_count), (Some(1), 750, 8, 3));
/// assert_eq!((rows[1].pid, rows[1].rx_bytes, rows[1].tx_bytes, rows[1].rx_rate), (Some(2), 250, 2, 250.0));
/// ```
pub fn split_by_connections(
    connections: &[ConnectionDetail],
    interfaces: &[InterfaceMetric],
) -> Vec<ProcessBandwidth> {
    // (name, pid) -> established connections; pid None = unowned. BTreeMap
    // for a deterministic remainder order.
    let mut counts: BTreeMap<(String, Option<u32>), u64> = BTreeMap::new();
    for c in connections
        .iter()
        .filter(|c| c.state == crate::net::state::ESTABLISHED)
    {
        let name = c
            .process_name
            .clone()
            .unwrap_or_else(|| format!("pid:{}", c.pid.unwrap_or(0)));
        *counts.entry((name, c.pid)).or_default() += 1;
    }
    let total: u64 = counts.values().sum();
    if total == 0 {
        return Vec::new();
    }

    let rx_total: u64 = interfaces.iter().map(|i| i.rx_bytes_delta).sum();
    let tx_total: u64 = interfaces.iter().map(|i| i.tx_bytes_delta).sum();
    let rx_rate: f64 = interfaces.iter().filter_map(|i| i.rx_rate).sum();
    let tx_rate: f64 = interfaces.iter().filter_map(|i| i.tx_rate).sum();
    let weights: Vec<u64> = counts.values().copied().collect();
    let rx = split_exact(rx_total, &weights);
    let tx = split_exact(tx_total, &weights);

    let mut rows: Vec<ProcessBandwidth> = counts
        .into_iter()
        .zip(rx.into_iter().zip(tx))
        .filter_map(|(((name, pid), count), (rx, tx))| {
            let pid = pid.filter(|&p| p != 0)?;
            let share = count as f64 / total as f64;
            Some(ProcessBandwidth::network_only(
                name,
                Some(pid),
                rx,
                tx,
                rx_rate * share,
                tx_rate * share,
                u32::try_from(count).unwrap_or(u32::MAX),
            ))
        })
        .collect();
    // Stable sort: equal totals keep the (name, pid) order.
    rows.sort_by_key(|r| std::cmp::Reverse(r.rx_bytes.saturating_add(r.tx_bytes)));
    rows
}

/// `amount` split in proportion to `weights` (not all zero), in whole
/// units that add up to `amount`: each gets the floor of its share, and the
/// units left over go one each to the largest remainders (earlier first on ties).
fn split_exact(amount: u64, weights: &[u64]) -> Vec<u64> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<(u64, u128)> = weights
        .iter()
        .map(|&w| {
            let exact = u128::from(amount) * u128::from(w);
            // exact / total <= amount, so it fits in u64.
            ((exact / total) as u64, exact % total)
        })
        .collect();
    let given: u64 = parts.iter().map(|p| p.0).sum();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| parts[b].1.cmp(&parts[a].1).then(a.cmp(&b)));
    for &i in order.iter().take((amount - given) as usize) {
        parts[i].0 += 1;
    }
    parts.into_iter().map(|p| p.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn conn(name: Option<&str>, pid: Option<u32>, state: &str) -> ConnectionDetail {
        ConnectionDetail {
            protocol: "TCP".into(),
            local_addr: "10.0.0.1:1000".into(),
            remote_addr: "10.0.0.2:443".into(),
            state: state.into(),
            pid,
            process_name: name.map(str::to_string),
            kernel_rtt_us: None,
            rx_bytes: None,
            tx_bytes: None,
            tcp_quality: None,
        }
    }

    fn est(name: &str, pid: u32) -> ConnectionDetail {
        conn(Some(name), Some(pid), "ESTABLISHED")
    }

    fn iface(
        name: &str,
        rx_delta: u64,
        tx_delta: u64,
        rates: Option<(f64, f64)>,
    ) -> InterfaceMetric {
        InterfaceMetric {
            name: name.into(),
            is_up: true,
            // Cumulative counters, deliberately huge: they must not be split.
            rx_bytes: 1 << 40,
            tx_bytes: 1 << 40,
            rx_bytes_delta: rx_delta,
            tx_bytes_delta: tx_delta,
            rx_packets: 0,
            tx_packets: 0,
            rx_errors: 0,
            tx_errors: 0,
            rx_drops: 0,
            tx_drops: 0,
            rx_rate: rates.map(|r| r.0),
            tx_rate: rates.map(|r| r.1),
            rx_history: None,
            tx_history: None,
        }
    }

    fn row(rows: &[ProcessBandwidth], pid: u32) -> (u64, u64, f64, f64, u32) {
        let r = rows.iter().find(|r| r.pid == Some(pid)).expect("row");
        (
            r.rx_bytes,
            r.tx_bytes,
            r.rx_rate,
            r.tx_rate,
            r.connection_count,
        )
    }

    #[test]
    fn estimate_nothing_established_means_no_rows() {
        let ifs = [iface("eth0", 1000, 500, Some((1000.0, 500.0)))];
        assert!(split_by_connections(&[], &ifs).is_empty());
        let waiting = [
            conn(Some("a"), Some(1), "TIME_WAIT"),
            conn(Some("a"), Some(1), "LISTEN"),
            conn(Some("a"), Some(1), "ESTAB"), // not normalized: not counted
        ];
        assert!(split_by_connections(&waiting, &ifs).is_empty());
    }

    #[test]
    fn estimate_single_process_gets_everything() {
        let rows = split_by_connections(
            &[est("curl", 7), conn(Some("curl"), Some(7), "LISTEN")],
            &[iface("eth0", 1000, 500, Some((100.0, 50.0)))],
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].process_name, "curl");
        assert_eq!(row(&rows, 7), (1000, 500, 100.0, 50.0, 1));
        assert_eq!((rows[0].cpu_pct, rows[0].cmd.as_deref()), (None, None));
    }

    #[test]
    fn estimate_split_by_connection_count_across_interfaces() {
        let conns = [
            est("firefox", 100),
            est("firefox", 100),
            est("firefox", 100),
            est("curl", 200),
        ];
        let ifs = [
            iface("eth0", 600, 200, Some((600.0, 200.0))),
            iface("wlan0", 400, 200, Some((400.0, 200.0))),
        ];
        let rows = split_by_connections(&conns, &ifs);
        assert_eq!(row(&rows, 100), (750, 300, 750.0, 300.0, 3));
        assert_eq!(row(&rows, 200), (250, 100, 250.0, 100.0, 1));
        assert_eq!(rows[0].pid, Some(100), "most bytes first");
    }

    #[test]
    fn estimate_whole_bytes_add_up_exactly() {
        // 10 bytes over three equal processes: 4, 3, 3, the extra byte to
        // the smallest (name, pid) key.
        let conns = [est("b", 2), est("a", 1), est("c", 3)];
        let rows = split_by_connections(&conns, &[iface("eth0", 10, 2, None)]);
        assert_eq!(row(&rows, 1).0, 4);
        assert_eq!(row(&rows, 2).0, 3);
        assert_eq!(row(&rows, 3).0, 3);
        assert_eq!(
            (row(&rows, 1).1, row(&rows, 2).1, row(&rows, 3).1),
            (1, 1, 0)
        );
        // Absent interface rates count as 0.
        assert!(rows.iter().all(|r| r.rx_rate == 0.0 && r.tx_rate == 0.0));
        assert_eq!(
            rows.iter()
                .map(|r| r.process_name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn estimate_unowned_connections_dilute_but_get_no_row() {
        let conns = [
            est("sshd", 9),
            conn(None, None, "ESTABLISHED"),
            conn(Some("x"), Some(0), "ESTABLISHED"),
        ];
        let rows = split_by_connections(&conns, &[iface("eth0", 300, 30, Some((3.0, 0.3)))]);
        assert_eq!(rows.len(), 1);
        let (rx, tx, rx_rate, _, n) = row(&rows, 9);
        assert_eq!((rx, tx, n), (100, 10, 1));
        assert!((rx_rate - 1.0).abs() < 1e-12);
    }

    #[test]
    fn estimate_missing_name_becomes_pid_name() {
        let rows = split_by_connections(
            &[conn(None, Some(42), "ESTABLISHED")],
            &[iface("eth0", 5, 5, None)],
        );
        assert_eq!(rows[0].process_name, "pid:42");
        assert_eq!(row(&rows, 42), (5, 5, 0.0, 0.0, 1));
    }

    #[test]
    fn estimate_split_exact_edges() {
        assert_eq!(split_exact(0, &[1, 2]), [0, 0]);
        assert_eq!(split_exact(7, &[0, 0]), [0, 0]);
        assert_eq!(split_exact(7, &[]), Vec::<u64>::new());
        assert_eq!(
            split_exact(u64::MAX, &[1, 1]),
            [u64::MAX / 2 + 1, u64::MAX / 2]
        );
        assert_eq!(split_exact(5, &[u64::MAX, 1]), [5, 0]);
        assert_eq!(split_exact(2, &[1, 1, 1]), [1, 1, 0]);
    }

    proptest! {
        #[test]
        fn estimate_split_exact_sums_and_is_proportional(
            amount in any::<u64>(),
            weights in prop::collection::vec(0u64..1_000_000, 1..12),
        ) {
            let parts = split_exact(amount, &weights);
            let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
            prop_assert_eq!(parts.len(), weights.len());
            if total == 0 {
                prop_assert!(parts.iter().all(|&p| p == 0));
            } else {
                prop_assert_eq!(parts.iter().map(|&p| u128::from(p)).sum::<u128>(), u128::from(amount));
                for (&p, &w) in parts.iter().zip(&weights) {
                    let floor = (u128::from(amount) * u128::from(w)).checked_div(total);
                    let floor = floor.unwrap_or_default();
                    prop_assert!(u128::from(p) == floor || u128::from(p) == floor + 1);
                }
            }
        }
    }
}
