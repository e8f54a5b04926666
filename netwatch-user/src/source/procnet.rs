//! The last-resort source (`--mode proc`): sockets and owners from
//! `/proc/net/{tcp,udp}{,6}` and `/proc/<pid>/fd`, with no byte counters.
//! Its batches are marked `estimated`, and the agent splits the interfaces'
//! bytes by connection count (`crate::estimate`). It never invents bytes.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::time::Instant;

use crate::procinfo::sockets::SocketTable;

use super::{CountOrigin, SampleBatch, SocketId, SocketSample, SocketSource};

/// Socket table without byte counters.
#[derive(Debug, Default)]
pub struct ProcNetSource {
    _private: (),
}

impl ProcNetSource {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Convert the socket table into zero-byte samples.
pub fn samples(table: &SocketTable) -> Vec<SocketSample> {
    table
        .entries()
        .iter()
        .map(|e| {
            let mut h = DefaultHasher::new();
            (e.protocol, e.local, e.remote).hash(&mut h);
            SocketSample {
                id: SocketId {
                    primary: e.inode,
                    secondary: h.finish(),
                },
                protocol: e.protocol,
                local: Some(e.local),
                remote: e.remote,
                state: e.state.into(),
                pid: e.owner.as_ref().map(|o| o.pid),
                comm: e.owner.as_ref().map(|o| o.comm.as_str().into()),
                cgroup_id: None,
                rx_bytes: 0,
                tx_bytes: 0,
                rtt_us: None,
                tcp: None,
                closed: false,
                origin: CountOrigin::SinceSocketOpen,
            }
        })
        .collect()
}

impl SocketSource for ProcNetSource {
    fn name(&self) -> &'static str {
        "proc"
    }

    fn read(&mut self) -> anyhow::Result<SampleBatch> {
        let table = SocketTable::scan()?;
        Ok(SampleBatch {
            taken_at: Instant::now(),
            samples: samples(&table),
            lost_records: 0,
            estimated: true,
            omitted: None,
        })
    }
}
