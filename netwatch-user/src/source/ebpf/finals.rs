//! The final records of closed sockets: the `CLOSED` ring buffer (emptied
//! by a thread of its own, or at each read) and the `DESTROYED` map the
//! programs write to when the ring is full, turned into closed
//! [`SocketSample`]s with the set of sockets they finish. It must never
//! read the live socket map, and never drop a record uncounted: a record
//! past `MAX_PENDING` or malformed is counted in [`Finals::dropped`].

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aya::maps::{HashMap as BpfHashMap, MapData, RingBuf};
use netwatch_common::{ClosedSock, DestroyedKey, SockKey, SockStats};

use super::to_samples;
use crate::source::SocketSample;

/// The closed sockets of one read.
#[derive(Debug, Default)]
pub struct Closed {
    /// Their final samples.
    pub samples: Vec<SocketSample>,
    /// Each socket they finish, by (`struct sock` address, `first_ns`): a
    /// live entry of one of them seen in the same read (deleted just after
    /// its record was written) must not be counted a second time.
    pub finished: HashSet<(u64, u64)>,
}

/// Where final records come from.
pub struct Finals {
    drain: Drain,
    destroyed: BpfHashMap<MapData, DestroyedKey, SockStats>,
    /// The `RINGBUF_DROPS` count read before the last look at `DESTROYED`,
    /// which emptied it: while it stands still, nothing is there to read.
    destroyed_seen_drops: Option<u64>,
}

impl Finals {
    /// From the `CLOSED` ring and the `DESTROYED` map; `on_thread`: the
    /// ring is emptied by a thread of its own as the kernel writes.
    pub fn start(
        closed: RingBuf<MapData>,
        destroyed: BpfHashMap<MapData, DestroyedKey, SockStats>,
        on_thread: bool,
    ) -> std::io::Result<Self> {
        Ok(Self {
            drain: Drain::start(closed, on_thread)?,
            destroyed,
            destroyed_seen_drops: None,
        })
    }

    /// Every final record since the last call: the ring's, then those the
    /// ring had no room for (only ever written when it was full, which
    /// `ringbuf_drops`, the kernel's `RINGBUF_DROPS` count read before,
    /// counts: while it stands still since the last look emptied the map,
    /// there is none).
    pub fn take(&mut self, ringbuf_drops: u64) -> Closed {
        let mut closed = Closed::default();
        for rec in self.drain.take() {
            closed.finished.insert((rec.key.sk, rec.stats.first_ns));
            closed
                .samples
                .extend(to_samples(&rec.key, &rec.stats, true));
        }
        if self.destroyed_seen_drops != Some(ringbuf_drops) {
            let overflowed: Vec<(DestroyedKey, SockStats)> =
                self.destroyed.iter().filter_map(Result::ok).collect();
            let mut emptied = true;
            for (dkey, st) in overflowed {
                if closed.finished.insert((dkey.sk, st.first_ns)) {
                    closed
                        .samples
                        .extend(to_samples(&SockKey { sk: dkey.sk }, &st, true));
                }
                // Read once: make room.
                emptied &= self.destroyed.remove(&dkey).is_ok();
            }
            self.destroyed_seen_drops = emptied.then_some(ringbuf_drops);
        }
        closed
    }

    /// Records dropped since start (malformed, or over `MAX_PENDING`).
    pub fn dropped(&self) -> u64 {
        self.drain.dropped()
    }
}

/// Records waiting for the next read at most (128 B each: 32 MiB); past
/// it the newest are dropped, counted in `lost_records` and as
/// `netwatch_agent_table_dropped_total{table="ebpf_closed_pending"}`.
const MAX_PENDING: usize = 256 * 1024;

/// What the drain thread shares with the reader.
struct Pending {
    /// The ring itself: the thread empties it as soon as the kernel writes,
    /// and a read empties it too, so a record written just before a read
    /// (a socket closed right before the agent's final snapshot) is in that
    /// read whether or not the thread has woken yet.
    ring: Mutex<RingBuf<MapData>>,
    records: Mutex<Vec<ClosedSock>>,
    /// Records dropped: malformed, or over [`MAX_PENDING`].
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl Pending {
    /// Move what the ring holds into `records`. Lock order: ring, records.
    fn drain(&self) {
        let mut ring = crate::supervise::lock(&self.ring, "the closed-socket ring buffer");
        let mut batch = Vec::new();
        let malformed = drain_ring(&mut ring, &mut batch);
        self.dropped.fetch_add(malformed, Ordering::Relaxed);
        if batch.is_empty() {
            return;
        }
        let mut records = crate::supervise::lock(&self.records, "closed-socket records");
        let dropped = crate::source::append_bounded(&mut records, batch, MAX_PENDING);
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        crate::drops::dropped("ebpf_closed_pending", MAX_PENDING, dropped);
    }
}

/// Empties the `CLOSED` ring buffer: by default on a thread of its own,
/// woken by `poll` on the ring's fd as soon as the kernel writes, so bursts
/// of closing sockets between two ticks do not overflow it; or, when asked,
/// only when the source is read.
enum Drain {
    Thread {
        pending: Arc<Pending>,
        /// Supervised as `ringbuf` (restarted: the ring and the records
        /// live in `pending`; meanwhile each read drains the ring itself).
        thread: Option<crate::supervise::Worker>,
    },
    OnRead {
        ring: RingBuf<MapData>,
        dropped: u64,
    },
}

/// Move every record the ring holds into `out`; returns the malformed count.
fn drain_ring(ring: &mut RingBuf<MapData>, out: &mut Vec<ClosedSock>) -> u64 {
    let mut malformed = 0;
    while let Some(item) = ring.next() {
        let bytes: &[u8] = &item;
        if bytes.len() < std::mem::size_of::<ClosedSock>() {
            malformed += 1;
            continue;
        }
        // SAFETY: a ClosedSock written by our programs (length checked);
        // read_unaligned copes with any alignment.
        out.push(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ClosedSock>()) });
    }
    malformed
}

impl Drain {
    fn start(ring: RingBuf<MapData>, on_thread: bool) -> std::io::Result<Self> {
        if !on_thread {
            return Ok(Drain::OnRead { ring, dropped: 0 });
        }
        let fd = ring.as_raw_fd();
        let pending = Arc::new(Pending {
            ring: Mutex::new(ring),
            records: Mutex::default(),
            dropped: AtomicU64::default(),
            stop: AtomicBool::default(),
        });
        let shared = Arc::clone(&pending);
        let thread = crate::supervise::Worker::spawn(
            "ringbuf",
            "netwatch-ringbuf",
            crate::supervise::Policy::Restart,
            move || {
                while !shared.stop.load(Ordering::Relaxed) {
                    crate::supervise::fault::point("ringbuf");
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the ring buffer's fd, which
                    // `shared.ring` keeps open for the life of this thread.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                    shared.drain();
                }
                Ok(())
            },
        )?;
        Ok(Drain::Thread {
            pending,
            thread: Some(thread),
        })
    }

    /// Everything written to the ring so far and not taken before.
    fn take(&mut self) -> Vec<ClosedSock> {
        match self {
            Drain::Thread { pending, .. } => {
                pending.drain();
                std::mem::take(&mut *crate::supervise::lock(
                    &pending.records,
                    "closed-socket records",
                ))
            }
            Drain::OnRead { ring, dropped } => {
                let mut out = Vec::new();
                *dropped += drain_ring(ring, &mut out);
                out
            }
        }
    }

    /// Records dropped since start (malformed, or over `MAX_PENDING`).
    fn dropped(&self) -> u64 {
        match self {
            Drain::Thread { pending, .. } => pending.dropped.load(Ordering::Relaxed),
            Drain::OnRead { dropped, .. } => *dropped,
        }
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Drain::Thread { pending, thread } = self {
            pending.stop.store(true, Ordering::Relaxed);
            // Stops restarts and joins.
            drop(thread.take());
        }
    }
}
