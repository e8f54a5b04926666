//! File operations the tick must not wait on for long: a write to a
//! directory that may sit on a hung filesystem (a dead NFS server, a FUSE
//! mount whose server is stopped) blocks in the kernel for as long as the
//! hang lasts, and nothing can interrupt it. [`BoundedIo`] runs such an
//! operation on a worker thread of its own and lets the caller wait for it
//! at most [`IO_BOUND`]. Past that, the caller goes on without the result;
//! the job itself learns, when it finishes, whether its caller still took
//! the result ([`Claim::deliver`]), so it can undo what the caller was told
//! did not happen (a spool record written after its deadline is removed).
//!
//! One worker per user, one job at a time: while a job is stuck, a new
//! request fails at once ([`Outcome::Busy`]), so a hang never piles up
//! threads or queued work. A job whose result was taken no longer counts
//! as outstanding (its caller may ask again at once); what it still does
//! after delivering runs before the next job, which at most waits for it. The worker is never joined (not at exit
//! either): a thread stuck in the kernel would hold the process forever.
//!
//! It must never block its caller past the bound, never run two jobs of
//! one user at once, and never lose track of whether a result was taken.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest the tick waits for one bounded file operation (a spool
/// record, the pin baseline). A local disk answers in milliseconds even
/// with an `fsync`; one that takes longer than this is hung or badly
/// stalled, and the operation counts as failed for that tick.
pub const IO_BOUND: Duration = Duration::from_millis(500);

/// A worker's stack: it runs file writes, no deep recursion.
const WORKER_STACK_BYTES: usize = 256 * 1024;

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The job delivered its result within the bound.
    Done(T),
    /// The job did not deliver within the bound; it goes on, and when it
    /// delivers it is told the result was not taken.
    TimedOut,
    /// An earlier job is still running (stuck): this one was not started.
    Busy,
    /// The worker thread is gone, or the job ended (panicked) without a
    /// result: nothing was done that the caller can count on.
    Failed,
}

/// Where one job's result meets its caller.
#[derive(Debug)]
enum Slot<T> {
    Waiting,
    Ready(T),
    /// The caller stopped waiting.
    Abandoned,
    /// The job ended without delivering.
    Dropped,
}

struct Meeting<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
    /// The user's busy flag, cleared once per job ([`Meeting::release`]).
    busy: Arc<AtomicBool>,
    released: AtomicBool,
}

impl<T> Meeting<T> {
    /// The job no longer counts as outstanding: when its result is taken
    /// (the caller may ask again at once, and the next job runs after
    /// whatever this one does after delivering), or when it ends.
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.busy.store(false, Ordering::Release);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slot<T>> {
        // Never held across anything that can panic: a poisoned lock's
        // data is still consistent.
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handed to a job: how it gives its result to the caller.
pub struct Claim<T> {
    meeting: Arc<Meeting<T>>,
    delivered: bool,
}

impl<T> Claim<T> {
    /// Give `result` to the caller. `true`: the caller was still waiting
    /// and takes it; `false`: the caller gave up (its bound passed), the
    /// result is dropped, and the job must undo whatever the caller now
    /// believes did not happen. Decided once, atomically with the caller's
    /// giving up.
    pub fn deliver(mut self, result: T) -> bool {
        self.delivered = true;
        let mut slot = self.meeting.lock();
        match *slot {
            Slot::Waiting => {
                *slot = Slot::Ready(result);
                drop(slot);
                self.meeting.release();
                self.meeting.ready.notify_all();
                true
            }
            _ => false,
        }
    }
}

impl<T> Drop for Claim<T> {
    fn drop(&mut self) {
        if self.delivered {
            return;
        }
        let mut slot = self.meeting.lock();
        if matches!(*slot, Slot::Waiting) {
            *slot = Slot::Dropped;
            drop(slot);
            self.meeting.ready.notify_all();
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One worker thread that runs one job at a time for one user, and a
/// caller's wait for it bounded by `bound`.
pub struct BoundedIo {
    name: &'static str,
    bound: Duration,
    jobs: mpsc::Sender<Job>,
    /// A job is running (set by the caller, cleared by the worker).
    busy: Arc<AtomicBool>,
}

impl std::fmt::Debug for BoundedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedIo")
            .field("name", &self.name)
            .field("bound", &self.bound)
            .field("busy", &self.busy.load(Ordering::Relaxed))
            .finish()
    }
}

impl BoundedIo {
    /// Start the worker thread (`nw-<name>`), detached: it ends when this
    /// value is dropped and its current job, if any, returns.
    pub fn new(name: &'static str, bound: Duration) -> std::io::Result<Self> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let busy = Arc::new(AtomicBool::new(false));
        std::thread::Builder::new()
            .name(format!("nw-{name}"))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                for job in rx {
                    job();
                }
            })?;
        Ok(Self {
            name,
            bound,
            jobs,
            busy,
        })
    }

    /// The bound a caller waits at most.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Whether a job is running now (possibly stuck).
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Run `job` on the worker and wait at most the bound for the result
    /// it delivers through its [`Claim`]. Fails at once ([`Outcome::Busy`])
    /// while an earlier job is still running.
    pub fn run<T, F>(&self, job: F) -> Outcome<T>
    where
        T: Send + 'static,
        F: FnOnce(Claim<T>) + Send + 'static,
    {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Outcome::Busy;
        }
        let meeting = Arc::new(Meeting {
            slot: Mutex::new(Slot::Waiting),
            ready: Condvar::new(),
            busy: Arc::clone(&self.busy),
            released: AtomicBool::new(false),
        });
        let claim = Claim {
            meeting: Arc::clone(&meeting),
            delivered: false,
        };
        let ended = Arc::clone(&meeting);
        let name = self.name;
        let wrapped = move || {
            // A panicking job drops its claim (the caller sees `Failed`);
            // the worker stays for the next job.
            if catch_unwind(AssertUnwindSafe(move || job(claim))).is_err() {
                log::error!("{name}: a file operation panicked; it counts as failed");
            }
            ended.release();
        };
        if self.jobs.send(Box::new(wrapped)).is_err() {
            self.busy.store(false, Ordering::Release);
            return Outcome::Failed;
        }
        let deadline = Instant::now() + self.bound;
        let mut slot = meeting.lock();
        loop {
            match std::mem::replace(&mut *slot, Slot::Waiting) {
                Slot::Ready(t) => return Outcome::Done(t),
                Slot::Dropped | Slot::Abandoned => return Outcome::Failed,
                Slot::Waiting => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                *slot = Slot::Abandoned;
                return Outcome::TimedOut;
            }
            slot = meeting
                .ready
                .wait_timeout(slot, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_in_time_is_done_a_late_one_is_told_and_a_stuck_one_refuses_the_next() {
        let io = BoundedIo::new("test-io", Duration::from_millis(100)).unwrap();
        assert_eq!(
            io.run(|c: Claim<u32>| assert!(c.deliver(7))),
            Outcome::Done(7)
        );

        let (release_tx, release_rx) = mpsc::channel::<()>();
        let (told_tx, told_rx) = mpsc::channel::<bool>();
        let started = Instant::now();
        let late = io.run(move |c: Claim<u32>| {
            release_rx.recv().unwrap();
            told_tx.send(c.deliver(8)).unwrap();
        });
        assert_eq!(late, Outcome::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(io.busy());
        // Stuck: refused at once, nothing queued behind it.
        assert_eq!(
            io.run(|c: Claim<u32>| {
                let _ = c.deliver(9);
            }),
            Outcome::Busy
        );
        release_tx.send(()).unwrap();
        assert!(
            !told_rx.recv().unwrap(),
            "the late job learns it was not taken"
        );
        while io.busy() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            io.run(|c: Claim<u32>| {
                let _ = c.deliver(10);
            }),
            Outcome::Done(10)
        );
    }

    #[test]
    fn a_job_that_panics_or_never_delivers_fails_and_the_worker_stays() {
        let io = BoundedIo::new("test-io", Duration::from_secs(5)).unwrap();
        assert_eq!(io.run(|_c: Claim<u32>| panic!("boom")), Outcome::Failed);
        while io.busy() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(io.run(|c: Claim<u32>| drop(c)), Outcome::Failed);
        while io.busy() {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            io.run(|c: Claim<u32>| {
                let _ = c.deliver(1);
            }),
            Outcome::Done(1)
        );
    }
}
