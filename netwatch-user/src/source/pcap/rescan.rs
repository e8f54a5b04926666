//! The rescan thread ([`Resolver`]): woken by the capture thread when a
//! connection opens (a SYN), it scans the socket table (at most once per
//! gap, and never more than a tenth of one core) so that sockets which
//! live a little while between two reads still get an owner.
//!
//! It must never hold more than [`MAX_LEARNED`] sockets between two reads,
//! and never report a failed scan as an error (the read's own scan does):
//! a failed rescan only means fewer owners learned.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::procinfo::sockets::{SocketEntry, SocketTable};
use crate::source::Protocol;

/// Socket tables learned from rescans, kept between two reads.
const MAX_LEARNED: usize = 1 << 18;
/// After a rescan that took `t`, the next waits at least `t` times this.
const RESCAN_IDLE_FACTOR: u32 = 9;

/// The rescan thread's state: woken by the capture thread when a SYN is
/// seen, it scans the socket table (at most once per gap) and keeps every
/// owned connected or listening socket it saw until the next read.
#[derive(Debug, Default)]
pub(super) struct Resolver {
    state: Mutex<ResolverState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct ResolverState {
    pending: bool,
    stop: bool,
    learned: HashMap<(Protocol, SocketAddr, Option<SocketAddr>), SocketEntry>,
    scans: u64,
}

impl Resolver {
    fn lock(&self) -> MutexGuard<'_, ResolverState> {
        crate::supervise::lock(&self.state, "pcap rescans")
    }

    pub(super) fn wake(&self) {
        self.lock().pending = true;
        self.cv.notify_one();
    }

    pub(super) fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    pub(super) fn scans(&self) -> u64 {
        self.lock().scans
    }

    pub(super) fn take_learned(&self) -> Vec<SocketEntry> {
        std::mem::take(&mut self.lock().learned)
            .into_values()
            .collect()
    }

    pub(super) fn run(&self, gap: Duration) {
        loop {
            {
                let mut g = self.lock();
                while !g.pending && !g.stop {
                    g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                if g.stop {
                    return;
                }
                g.pending = false;
            }
            crate::supervise::fault::point("pcap_rescan");
            // A failed scan only means fewer owners learned; the read's own
            // scan reports errors.
            let started = Instant::now();
            let table = SocketTable::scan().ok();
            let took = started.elapsed();
            let mut g = self.lock();
            g.scans += 1;
            for e in table.iter().flat_map(|t| t.entries()) {
                let wanted = e.inode != 0
                    && e.owner.is_some()
                    && (e.remote.is_some() || e.state == "LISTEN");
                let key = (e.protocol, e.local, e.remote);
                if wanted && (g.learned.len() < MAX_LEARNED || g.learned.contains_key(&key)) {
                    g.learned.insert(key, e.clone());
                }
            }
            let until = Instant::now() + gap.max(took * RESCAN_IDLE_FACTOR);
            loop {
                let now = Instant::now();
                if g.stop {
                    return;
                }
                if now >= until {
                    break;
                }
                g = self
                    .cv
                    .wait_timeout(g, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
    }
}
