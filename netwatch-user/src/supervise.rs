//! Supervision of the agent's worker threads, and the agent's liveness.
//!
//! Every thread the agent starts besides the tick (ingest sender, `/metrics`
//! server, health prober, ring-buffer drain, sock_diag destroy listener,
//! pcap capture and rescan, live view) runs as a [`Worker`]: its body runs
//! under `catch_unwind`, and a body that panics or returns an error is
//! either run again on the same thread after a backoff ([`Policy::Restart`],
//! logged and counted; past [`MAX_RESTARTS`] failures within
//! [`RESTART_WINDOW`] the supervisor gives up) or not at all
//! ([`Policy::Exit`]: the part cannot be restarted safely). A part given up
//! on is *down for good*: the tick loop ends the agent with a non-zero exit
//! status naming it, so systemd or Kubernetes restart the whole agent. The
//! body is an `FnMut` kept across runs, so what it owns (a capture handle,
//! a socket, a listener) survives its panic and the next run reuses it: no
//! restart needs privileges the agent has already dropped.
//!
//! Which part is down is visible: [`components`] (rendered on `/metrics` as
//! `netwatch_agent_component_up` and `netwatch_agent_component_restarts_total`)
//! and [`all_up`] (the ingest envelope's `agent_health.collectors_ok`). The
//! tick reports each completed tick ([`tick_completed`]); [`liveness`] (the
//! `/healthz` answer) is healthy only while ticks keep completing within
//! [`stale_after`] and no part is down for good; under systemd each
//! completed tick also feeds the unit's watchdog (`sd_notify`).
//!
//! Poisoned mutexes: a lock poisoned by a panicking holder is taken over
//! with [`lock`], which logs it once and clears the poison. The supervisor
//! has already seen (and counted) the panic; the data is kept because every
//! worker's shared state stays consistent across a panic at any point:
//! counters and queues of whole values (ring-buffer records, destroy
//! events, pcap flows: at worst one packet or record is missing or
//! counted twice), the last health round (replaced whole), and the ingest
//! spool, whose in-memory index heals against the disk (a record whose file
//! is gone is forgotten when read; a file missing from the index is found
//! at the next start).
//!
//! It must never restart a part in a loop without bound, never keep the
//! agent running with a part that is down for good, and never hold a lock
//! while a worker body runs.
//!
//! Test-only fault injection (debug builds only, compiled out of release
//! builds): see [`fault`].

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Failures tolerated within [`RESTART_WINDOW`]; one more and the
/// supervisor gives up on the part.
pub const MAX_RESTARTS: usize = 5;
/// The window [`MAX_RESTARTS`] counts failures in.
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// Wait before the first restart; doubled after each failure, up to
/// [`BACKOFF_MAX`], and back to this after a run that lasted
/// [`RESTART_WINDOW`].
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest wait before a restart.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// `/healthz` fails when no tick completed for this long, whatever the
/// interval (see [`stale_after`]).
pub const STALE_FLOOR: Duration = Duration::from_secs(10);

/// What the supervisor does when a worker's body panics or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Run the body again after a backoff.
    Restart,
    /// The part cannot be restarted safely: its first failure is final and
    /// the agent exits non-zero.
    Exit,
}

/// One supervised part, as the registry holds it.
#[derive(Debug)]
struct Component {
    name: &'static str,
    up: AtomicBool,
    restarts: AtomicU64,
    gave_up: AtomicBool,
    last_failure: Mutex<Option<String>>,
    /// Set when the owner stops the worker: no more restarts, a backoff
    /// wait ends at once.
    stopping: Mutex<bool>,
    wake: Condvar,
}

/// A supervised part's state, for reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    /// The `component` label: `ingest`, `metrics`, `health`, `ringbuf`,
    /// `ss_destroy`, `pcap_capture`, `pcap_rescan`, `live_view`.
    pub name: &'static str,
    /// Running (false while it waits for a restart, and for good once given up).
    pub up: bool,
    /// Restarts since the agent started.
    pub restarts: u64,
    /// The supervisor gave up on it: the agent is about to exit.
    pub gave_up: bool,
    /// Why it last failed.
    pub last_failure: Option<String>,
}

impl Component {
    /// Its state now, for reporting.
    fn status(&self) -> ComponentStatus {
        ComponentStatus {
            name: self.name,
            up: self.up.load(Ordering::SeqCst),
            restarts: self.restarts.load(Ordering::SeqCst),
            gave_up: self.gave_up.load(Ordering::SeqCst),
            last_failure: lock(&self.last_failure, "a worker's last failure").clone(),
        }
    }
}

static REGISTRY: Mutex<Vec<Arc<Component>>> = Mutex::new(Vec::new());

/// Every supervised part now running (or waiting for a restart, or given
/// up on), in start order.
pub fn components() -> Vec<ComponentStatus> {
    lock(&REGISTRY, "the worker registry")
        .iter()
        .map(|c| c.status())
        .collect()
}

/// Whether every supervised part is up.
pub fn all_up() -> bool {
    lock(&REGISTRY, "the worker registry")
        .iter()
        .all(|c| c.up.load(Ordering::SeqCst))
}

/// The first part the supervisor gave up on, if any.
pub fn down_for_good() -> Option<ComponentStatus> {
    // Called on every tick: the flags only, a status for the one found.
    lock(&REGISTRY, "the worker registry")
        .iter()
        .find(|c| c.gave_up.load(Ordering::SeqCst))
        .map(|c| c.status())
}

/// Lock `m`, taking over a lock poisoned by a panicking holder: logged
/// once (the poison is cleared), the data kept (see the module docs for
/// why every worker's shared state is still consistent).
pub fn lock<'a, T>(m: &'a Mutex<T>, what: &str) -> MutexGuard<'a, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => {
            log::warn!(
                "{what}: a thread panicked while holding its lock; the supervisor restarts \
                 that thread and the data is kept (it stays consistent across a panic)"
            );
            m.clear_poison();
            poisoned.into_inner()
        }
    }
}

thread_local! {
    /// Set on a thread whose panics a [`Policy::Restart`] supervisor catches.
    static RESTARTABLE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a panic on the current thread will be caught and the thread's
/// work restarted (panic hooks that tear things down skip those).
pub fn panic_is_restarted() -> bool {
    RESTARTABLE.with(|r| r.get())
}

/// A supervised worker thread. Stopping it is the owner's business (its own
/// stop flag or channel) plus [`Worker::stop`], which ends a restart wait;
/// dropping it stops restarts and joins the thread.
#[derive(Debug)]
pub struct Worker {
    component: Arc<Component>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Start `body` on a thread named `thread_name`, supervised as
    /// `component` under `policy`. `body` returns `Ok(())` when it was asked
    /// to stop, `Err(why)` when it failed; a panic is a failure too.
    pub fn spawn<F>(
        component: &'static str,
        thread_name: &str,
        policy: Policy,
        body: F,
    ) -> std::io::Result<Self>
    where
        F: FnMut() -> Result<(), String> + Send + 'static,
    {
        let c = Arc::new(Component {
            name: component,
            up: AtomicBool::new(true),
            restarts: AtomicU64::new(0),
            gave_up: AtomicBool::new(false),
            last_failure: Mutex::new(None),
            stopping: Mutex::new(false),
            wake: Condvar::new(),
        });
        let supervised = Arc::clone(&c);
        lock(&REGISTRY, "the worker registry").push(Arc::clone(&c));
        let thread = std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || supervise(&supervised, policy, body));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                lock(&REGISTRY, "the worker registry").retain(|r| !Arc::ptr_eq(r, &c));
                return Err(e);
            }
        };
        Ok(Self {
            component: c,
            thread: Some(thread),
        })
    }

    /// No more restarts; a restart wait in progress ends now. The owner
    /// still has to make the body itself return.
    pub fn stop(&self) {
        *lock(&self.component.stopping, "a worker's stop flag") = true;
        self.component.wake.notify_all();
    }

    /// Whether the thread has ended (asked to stop, or given up on).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The part's state now.
    pub fn status(&self) -> ComponentStatus {
        self.component.status()
    }

    /// Leave the thread running without waiting for it (a shutdown that
    /// cannot wait); it leaves the registry.
    pub fn detach(mut self) {
        self.stop();
        self.thread = None;
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut reg = lock(&REGISTRY, "the worker registry");
        reg.retain(|c| !Arc::ptr_eq(c, &self.component));
    }
}

/// The text of a panic payload.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// The supervisor: runs `body` until it returns `Ok`, is stopped, or is
/// given up on.
fn supervise<F>(c: &Component, policy: Policy, mut body: F)
where
    F: FnMut() -> Result<(), String>,
{
    RESTARTABLE.with(|r| r.set(policy == Policy::Restart));
    let mut failures: VecDeque<Instant> = VecDeque::new();
    let (initial, max) = match fault::backoff() {
        Some(b) => (b, b),
        None => (BACKOFF_INITIAL, BACKOFF_MAX),
    };
    let mut backoff = initial;
    loop {
        c.up.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let why = match catch_unwind(AssertUnwindSafe(&mut body)) {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(p) => format!("panicked: {}", panic_message(p.as_ref())),
        };
        c.up.store(false, Ordering::SeqCst);
        *lock(&c.last_failure, "a worker's last failure") = Some(why.clone());
        if *lock(&c.stopping, "a worker's stop flag") {
            log::debug!("{}: failed while stopping: {why}", c.name);
            return;
        }
        let now = Instant::now();
        if now.duration_since(started) >= RESTART_WINDOW {
            backoff = initial;
        }
        failures.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        failures.push_back(now);
        if policy == Policy::Exit || failures.len() > MAX_RESTARTS {
            let reason = match policy {
                Policy::Exit => "it cannot be restarted safely".to_string(),
                Policy::Restart => format!(
                    "{} failures within {} s",
                    failures.len(),
                    RESTART_WINDOW.as_secs()
                ),
            };
            log::error!(
                "{} failed: {why}; {reason}: giving up on it, the agent exits with an error \
                 so that its service manager (systemd, Kubernetes) restarts it",
                c.name
            );
            c.gave_up.store(true, Ordering::SeqCst);
            return;
        }
        log::error!(
            "{} failed: {why}; restarting it in {:.0} s (failure {} of at most {} within {} s)",
            c.name,
            backoff.as_secs_f64(),
            failures.len(),
            MAX_RESTARTS,
            RESTART_WINDOW.as_secs()
        );
        let stopping = lock(&c.stopping, "a worker's stop flag");
        let (stopping, _) = c
            .wake
            .wait_timeout_while(stopping, backoff, |s| !*s)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *stopping {
            return;
        }
        drop(stopping);
        backoff = (backoff * 2).min(max);
        let n = c.restarts.fetch_add(1, Ordering::SeqCst) + 1;
        log::warn!("{} restarted ({n} restarts so far)", c.name);
    }
}

/// Milliseconds since [`base`] of the last completed tick; 0: none yet.
static LAST_TICK_MS: AtomicU64 = AtomicU64::new(0);
/// The tick interval in milliseconds; 0: no tick loop (liveness unknown).
static INTERVAL_MS: AtomicU64 = AtomicU64::new(0);

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(base().elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// How long the tick may go without completing before the agent is not
/// live: three intervals, and at least [`STALE_FLOOR`] (a tick on a busy
/// host can take a few hundred milliseconds; a stuck one takes forever).
pub fn stale_after(interval: Duration) -> Duration {
    (interval.saturating_mul(3)).max(STALE_FLOOR)
}

/// The tick loop starts with this interval: liveness is judged from now
/// (and, under systemd, the agent is ready and its watchdog armed with
/// [`stale_after`]).
pub fn ticks_start(interval: Duration) {
    INTERVAL_MS.store(
        u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
        Ordering::SeqCst,
    );
    LAST_TICK_MS.store(now_ms(), Ordering::SeqCst);
    #[cfg(target_os = "linux")]
    crate::sd_notify::ready(stale_after(interval));
}

/// A tick completed (its snapshot was handed to every sink).
pub fn tick_completed() {
    LAST_TICK_MS.store(now_ms(), Ordering::SeqCst);
    #[cfg(target_os = "linux")]
    crate::sd_notify::keep_alive();
}

/// The agent's liveness (the `/healthz` answer).
#[derive(Debug, Clone, PartialEq)]
pub enum Liveness {
    /// Ticking; the last tick completed this long ago.
    Live { since_tick: Duration },
    /// No tick loop in this process (yet).
    NotTicking,
    /// No tick completed for `since_tick`, past `limit`.
    Stale {
        since_tick: Duration,
        limit: Duration,
    },
    /// A part is down for good.
    Down(ComponentStatus),
}

impl Liveness {
    /// Whether `/healthz` answers 200.
    pub fn is_live(&self) -> bool {
        matches!(self, Liveness::Live { .. })
    }

    /// One line for the `/healthz` body.
    pub fn describe(&self) -> String {
        match self {
            Liveness::Live { since_tick } => {
                format!("ok: last tick {:.1} s ago", since_tick.as_secs_f64())
            }
            Liveness::NotTicking => "not ticking: the tick loop has not started".into(),
            Liveness::Stale { since_tick, limit } => format!(
                "stale: no tick completed for {:.1} s (limit {:.0} s)",
                since_tick.as_secs_f64(),
                limit.as_secs_f64()
            ),
            Liveness::Down(c) => format!(
                "down: {} failed for good ({})",
                c.name,
                c.last_failure.as_deref().unwrap_or("no reason recorded")
            ),
        }
    }
}

/// The agent's liveness now.
pub fn liveness() -> Liveness {
    if let Some(c) = down_for_good() {
        return Liveness::Down(c);
    }
    let interval = INTERVAL_MS.load(Ordering::SeqCst);
    if interval == 0 {
        return Liveness::NotTicking;
    }
    let since_tick =
        Duration::from_millis(now_ms().saturating_sub(LAST_TICK_MS.load(Ordering::SeqCst)));
    let limit = stale_after(Duration::from_millis(interval));
    if since_tick > limit {
        Liveness::Stale { since_tick, limit }
    } else {
        Liveness::Live { since_tick }
    }
}

/// Test-only fault injection, read from `NETWATCH_FAULT_INJECT` in debug
/// builds (`cargo build`, `cargo test`); in release builds every hook is an
/// empty function and the variable is never read.
///
/// The value is a comma-separated list of `ACTION:TARGET[:KEY=VALUE]...`:
/// - `panic:<component>`: the worker panics at its next fault point;
///   `after=SECS` (default 0, counted from the first fault point of the
///   process) and `times=N|always` (default 1).
/// - `stall:tick`: the tick sleeps before building its snapshot;
///   `after=SECS`, `for=SECS` (default 60), once.
/// - `backoff:SECS`: every restart waits SECS instead of the backoff
///   (tests that make a part fail until it is given up on).
///
/// Example: `NETWATCH_FAULT_INJECT=panic:ingest:after=3,stall:tick:after=5:for=30`.
pub mod fault {
    /// The environment variable read (debug builds only).
    pub const ENV: &str = "NETWATCH_FAULT_INJECT";

    /// A worker's fault point: panics if a `panic:<component>` fault is due.
    #[cfg(not(debug_assertions))]
    #[inline(always)]
    pub fn point(_component: &str) {}

    /// The tick's fault point: sleeps if a `stall:tick` fault is due.
    #[cfg(not(debug_assertions))]
    #[inline(always)]
    pub fn stall(_target: &str) {}

    /// The restart wait a `backoff:SECS` fault sets, if any.
    #[cfg(not(debug_assertions))]
    #[inline(always)]
    pub fn backoff() -> Option<std::time::Duration> {
        None
    }

    #[cfg(debug_assertions)]
    pub use imp::{backoff, point, stall};

    #[cfg(debug_assertions)]
    mod imp {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::OnceLock;
        use std::time::{Duration, Instant};

        #[derive(Debug)]
        struct Fault {
            panic: bool,
            target: String,
            after: Duration,
            /// `None`: always.
            times: Option<u32>,
            stall: Duration,
            fired: AtomicU32,
        }

        struct Faults {
            start: Instant,
            list: Vec<Fault>,
            backoff: Option<Duration>,
        }

        fn seconds(item: &str, v: &str) -> Result<Duration, String> {
            v.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e6)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("`{item}`: `{v}` is not seconds"))
        }

        fn parse(spec: &str) -> Result<(Vec<Fault>, Option<Duration>), String> {
            let mut out = Vec::new();
            let mut backoff = None;
            for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let mut parts = item.split(':');
                let action = parts.next().unwrap_or_default();
                let target = parts
                    .next()
                    .ok_or_else(|| format!("`{item}`: no target"))?
                    .to_string();
                if action == "backoff" {
                    backoff = Some(seconds(item, &target)?);
                    continue;
                }
                let mut f = Fault {
                    panic: match action {
                        "panic" => true,
                        "stall" => false,
                        other => return Err(format!("`{item}`: unknown action `{other}`")),
                    },
                    target,
                    after: Duration::ZERO,
                    times: Some(1),
                    stall: Duration::from_secs(60),
                    fired: AtomicU32::new(0),
                };
                for kv in parts {
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| format!("`{item}`: `{kv}` is not KEY=VALUE"))?;
                    let secs = || seconds(item, v);
                    match k {
                        "after" => f.after = secs()?,
                        "for" => f.stall = secs()?,
                        "times" if v == "always" => f.times = None,
                        "times" => {
                            f.times = Some(
                                v.parse()
                                    .map_err(|_| format!("`{item}`: `{v}` is not a count"))?,
                            )
                        }
                        _ => return Err(format!("`{item}`: unknown key `{k}`")),
                    }
                }
                out.push(f);
            }
            Ok((out, backoff))
        }

        fn faults() -> &'static Faults {
            static FAULTS: OnceLock<Faults> = OnceLock::new();
            FAULTS.get_or_init(|| {
                let (list, backoff) = match std::env::var(super::ENV) {
                    Ok(spec) => match parse(&spec) {
                        Ok(l) => {
                            log::warn!("{}: fault injection armed: {spec}", super::ENV);
                            l
                        }
                        Err(e) => {
                            log::error!("{}: {e}; no fault injected", super::ENV);
                            (Vec::new(), None)
                        }
                    },
                    Err(_) => (Vec::new(), None),
                };
                Faults {
                    start: Instant::now(),
                    list,
                    backoff,
                }
            })
        }

        /// The due fault of this kind on `target`, marked fired.
        fn due(panic: bool, target: &str) -> Option<&'static Fault> {
            let fs = faults();
            let f = fs
                .list
                .iter()
                .find(|f| f.panic == panic && f.target == target)?;
            if fs.start.elapsed() < f.after {
                return None;
            }
            let n = f.fired.fetch_add(1, Ordering::SeqCst);
            if f.times.is_some_and(|t| n >= t) {
                f.fired.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
            Some(f)
        }

        /// The restart wait a `backoff:SECS` fault sets, if any.
        pub fn backoff() -> Option<Duration> {
            faults().backoff
        }

        /// A worker's fault point: panics if a `panic:<component>` fault is due.
        pub fn point(component: &str) {
            if due(true, component).is_some() {
                panic!("fault injection: {component} panics");
            }
        }

        /// The tick's fault point: sleeps if a `stall:tick` fault is due.
        pub fn stall(target: &str) {
            if let Some(f) = due(false, target) {
                log::warn!(
                    "fault injection: {target} stalls for {:.0} s",
                    f.stall.as_secs_f64()
                );
                std::thread::sleep(f.stall);
            }
        }

        #[cfg(test)]
        mod tests {
            use super::*;

            #[test]
            fn specs_parse_and_bad_ones_are_named() {
                let (l, b) =
                    parse("panic:ingest:after=3:times=always, stall:tick:for=20,backoff:0.2")
                        .unwrap();
                assert_eq!(l.len(), 2);
                assert_eq!(b, Some(Duration::from_millis(200)));
                assert!(l[0].panic && l[0].target == "ingest" && l[0].times.is_none());
                assert_eq!(l[0].after, Duration::from_secs(3));
                assert!(!l[1].panic && l[1].stall == Duration::from_secs(20));
                assert_eq!(l[1].times, Some(1));
                for bad in [
                    "boom:ingest",
                    "panic",
                    "panic:x:after",
                    "panic:x:times=y",
                    "backoff:soon",
                ] {
                    assert!(parse(bad).is_err(), "{bad}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn a_panicking_body_is_run_again_and_counted() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let w = Worker::spawn("test_restart", "t-restart", Policy::Restart, move || {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first run fails");
            }
            Ok(())
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !w.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = w.status();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!((s.up, s.restarts, s.gave_up), (true, 1, false));
        assert_eq!(s.last_failure.as_deref(), Some("panicked: first run fails"));
    }

    #[test]
    fn an_exit_policy_part_is_given_up_on_its_first_failure() {
        let w = Worker::spawn("test_exit", "t-exit", Policy::Exit, || {
            Err("the terminal is gone".into())
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !w.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = w.status();
        assert_eq!((s.up, s.restarts, s.gave_up), (false, 0, true));
        assert!(components()
            .iter()
            .any(|c| c.name == "test_exit" && c.gave_up));
        drop(w);
        assert!(!components().iter().any(|c| c.name == "test_exit"));
    }

    #[test]
    fn stop_ends_a_restart_wait_at_once() {
        let w = Worker::spawn("test_stop", "t-stop", Policy::Restart, || {
            Err("always fails".into())
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        drop(w);
        assert!(t.elapsed() < BACKOFF_INITIAL, "{:?}", t.elapsed());
    }

    #[test]
    fn a_poisoned_lock_is_taken_over_with_its_data() {
        let m = Arc::new(Mutex::new(7u32));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("holder panics");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m, "test"), 7);
        assert!(!m.is_poisoned(), "the poison is cleared once reported");
    }

    #[test]
    fn staleness_is_three_intervals_and_at_least_the_floor() {
        assert_eq!(stale_after(Duration::from_secs(1)), STALE_FLOOR);
        assert_eq!(
            stale_after(Duration::from_secs(60)),
            Duration::from_secs(180)
        );
    }
}
