//! What the unit tests of the Prometheus sink's modules share: snapshots
//! of process rows, a state with given limits, a fixed cgroup per pid and
//! the rendered page. Test code only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use netwatch_common::wire::{ProcessBandwidth, Snapshot};

use super::{render, DeliveryReport, DeliveryView, MetricsState, ProcessKey, SeriesLimits};

pub(super) fn snap(rows: &[(u32, &str, u64, u64)]) -> Snapshot {
    let mut s = Snapshot::empty(Utc::now());
    s.processes = Some(
        rows.iter()
            .map(|&(pid, comm, rx, tx)| {
                ProcessBandwidth::network_only(comm.into(), Some(pid), rx, tx, 0.0, 0.0, 1)
            })
            .collect(),
    );
    s
}

pub(super) fn state(top: usize, expiry_secs: u64) -> MetricsState {
    MetricsState::new(SeriesLimits {
        expiry: Duration::from_secs(expiry_secs),
        top_processes: top,
    })
}

pub(super) fn cg(pid: u32) -> String {
    format!("/test/{pid}")
}

pub(super) fn key(pid: u32, comm: &str) -> ProcessKey {
    ProcessKey {
        pid,
        comm: comm.into(),
        cgroup: cg(pid),
    }
}

pub(super) fn totals(st: &MetricsState, pid: u32, comm: &str) -> Option<(u64, u64)> {
    st.processes()
        .get(&key(pid, comm))
        .map(|s| (s.rx_bytes_total, s.tx_bytes_total))
}

pub(super) fn page(st: &MetricsState, delivery: Option<DeliveryView>) -> String {
    #[derive(Debug)]
    struct Fixed(DeliveryView);
    impl DeliveryReport for Fixed {
        fn view(&self) -> DeliveryView {
            self.0.clone()
        }
    }
    let d = delivery.map(|d| Arc::new(Fixed(d)) as Arc<dyn DeliveryReport>);
    render(&Arc::new(Mutex::new(st.clone())), d)
}
