//! NetWatch Cloud delivery. The tick hands each snapshot to [`IngestSink`],
//! which writes it to the on-disk [`Spool`] and returns; a sender thread of
//! its own POSTs the oldest spooled snapshots, in order, as versioned
//! envelopes (`schema_version` 1, the request flattened, `agent_health`
//! from real counters) and removes them once the cloud has answered for
//! them.
//!
//! Only a 200 or a 207 from the endpoint itself is an answer: redirects
//! are never followed (a client that follows a 302 turns the POST into a
//! body-less GET, and the 200 of the page it lands on would count as
//! delivered); a 3xx is a failure like a 5xx, counted by its status.
//!
//! Answers: 200 all accepted; 207 per-snapshot verdicts (accepted and
//! rejected ones are both done: rejected ones are logged by index and
//! counted, never resent; ones without a verdict are resent after a
//! backoff); 413 the batch is split in halves (a single
//! snapshot too large is rejected and counted); 401/403 said once, kept in
//! the spool, retried with backoff; 402 said once, sending stops while
//! collection goes on into the spool, and one batch is sent again every
//! `payment_recheck` (default 1 h) until one is accepted; 5xx, other answers and
//! transport errors: exponential backoff with jitter, capped at
//! `retry_max` (5 minutes at most).
//!
//! The tick never waits on the filesystem for long either: the spool
//! write runs on a writer thread of its own ([`BoundedIo`]), and the tick
//! waits for it at most [`crate::bounded_io::IO_BOUND`]. A write not done
//! by then (a hung mount), or asked for while an earlier one is still
//! stuck, is a snapshot not kept: counted as dropped, said once per run of
//! failures. A write that completes after its deadline is removed, never
//! sent: its snapshot was reported not kept. The tick takes no lock that
//! the sender or the writer can hold across a filesystem call.
//!
//! It must never block the tick on the network or a filesystem, never lose a snapshot it
//! did not get an answer for, never count as delivered what the endpoint
//! did not accept with 200 or 207, and never print the API key. What the
//! server says (207 messages, error bodies, `Location`, error texts) is
//! logged only through [`crate::text::visible`], capped at
//! [`MAX_LOGGED_SERVER_CHARS`] characters: never raw.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{debug, error, info, warn};
use netwatch_common::wire::{
    AgentHealth, HostInfo, IngestEnvelope, IngestRequest, IngestResponse, Snapshot, SCHEMA_VERSION,
};

use super::spool::{Spool, SpoolStats, SpoolWriter, Spooled};
use super::{Emitted, Sink};
use crate::bounded_io::{BoundedIo, Claim, Outcome, IO_BOUND};
use crate::config::IngestConfig;
/// The host this agent reports as (its id file, created on first use).
pub use crate::procinfo::host::host_info;
use crate::text::visible;

/// The most characters of one text from the server (a 207 message, an
/// error body, a `Location`) that a log line shows, escaped.
pub const MAX_LOGGED_SERVER_CHARS: usize = 200;

/// Delivery counters, shared with whoever reports them (logs, `/metrics`).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Requests sent (any answer, or none).
    pub requests: AtomicU64,
    /// Snapshots the cloud accepted.
    pub delivered: AtomicU64,
    /// Snapshots the cloud rejected (207 verdicts, a single snapshot too large).
    pub rejected: AtomicU64,
    /// Unix seconds of the last request the cloud answered with 200 or 207.
    pub last_success_unix_secs: AtomicU64,
    /// Failed requests by cause: an HTTP status (`"503"`, `"302"`),
    /// `"transport"` (no answer, or half of one), or a 207 the agent cannot
    /// use (`"207_unreadable"`, `"207_incomplete"`).
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// The spool's own counters (depth, bytes, dropped).
    pub spool: Arc<SpoolStats>,
}

impl DeliveryStats {
    fn error(&self, cause: &str) {
        let mut m = crate::supervise::lock(&self.errors, "ingest error counters");
        *m.entry(cause.to_string()).or_default() += 1;
    }
}

/// What the sender, the spool writer and shutdown share. The sender holds
/// this lock while it reads records, so the tick never takes it.
struct State {
    spool: Spool,
    /// Set on shutdown: flush until then, then stop.
    shutdown_deadline: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stats: Arc<DeliveryStats>,
    /// From the latest snapshot: every collector produced data.
    collectors_ok: AtomicBool,
    /// From the latest snapshot: records the source lost since start.
    source_lost: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::supervise::lock(&self.state, "ingest spool")
    }
}

/// The ingest sink: spool on emit, deliver on its own thread.
pub struct IngestSink {
    shared: Arc<Shared>,
    /// The sender thread, supervised as `ingest` (restarted: everything it
    /// has not delivered is in the spool on disk).
    sender: Option<crate::supervise::Worker>,
    /// Disconnects when the sender thread ends.
    sender_gone: std::sync::mpsc::Receiver<()>,
    flush_timeout: Duration,
    /// Writes the spool's records, on a thread of its own.
    writer: SpoolWriter,
    /// The writer's thread: the tick waits for it at most [`IO_BOUND`].
    io: BoundedIo,
}

/// Did every collector produce its section, and is every supervised part
/// of the agent up? Read from the snapshot the tick built: the socket
/// source fills `processes`, the interface collector `interfaces` (Linux
/// always has `lo`), the TCP state collector `connection_count`; a failure
/// leaves its section empty. A worker thread waiting for its restart (or
/// given up on) makes it false too ([`crate::supervise::all_up`]).
pub fn collectors_ok(s: &Snapshot) -> bool {
    s.processes.is_some()
        && !s.interfaces.is_empty()
        && s.connection_count.is_some()
        && crate::supervise::all_up()
}

impl IngestSink {
    /// Open the spool and start the sender thread.
    pub fn start(cfg: IngestConfig, host: HostInfo) -> anyhow::Result<Self> {
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes)?;
        if !spool.is_empty() {
            info!(
                "ingest: {} snapshots ({} bytes) waiting in the spool {} from an earlier run",
                spool.len(),
                spool.bytes(),
                cfg.spool_dir.display()
            );
        }
        let stats = Arc::new(DeliveryStats {
            spool: spool.stats(),
            ..Default::default()
        });
        let writer = spool.writer();
        let io = BoundedIo::new("spool-writer", IO_BOUND).map_err(|e| {
            anyhow::anyhow!("starting the spool writer thread: {e}; the system is out of threads")
        })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                spool,
                shutdown_deadline: None,
            }),
            wake: Condvar::new(),
            stats,
            collectors_ok: AtomicBool::new(true),
            source_lost: AtomicU64::new(0),
        });
        let flush_timeout = cfg.flush_timeout;
        let roots = root_certs(cfg.ca_file.as_deref())?;
        let mut sender = Sender::new(cfg, host, roots, Arc::clone(&shared));
        let (alive, sender_gone) = std::sync::mpsc::channel::<()>();
        let handle = crate::supervise::Worker::spawn(
            "ingest",
            "ingest",
            crate::supervise::Policy::Restart,
            move || {
                // Disconnects `sender_gone` when the thread ends.
                let _alive = &alive;
                sender.run();
                Ok(())
            },
        )?;
        Ok(Self {
            shared,
            sender: Some(handle),
            sender_gone,
            flush_timeout,
            writer,
            io,
        })
    }

    /// Counters for reporting.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Ask the sender to deliver what it can within the flush timeout, and
    /// wait for it, never longer than the flush timeout (plus a second's
    /// grace): a request still in flight then is abandoned, and its
    /// snapshots stay in the spool, as does whatever else is undelivered.
    pub fn shutdown(&mut self) {
        let Some(handle) = self.sender.take() else {
            return;
        };
        // The sender (reading a record) or the spool writer (removing
        // one) may hold the lock while stuck on a hung filesystem: exit
        // waits for it at most the flush timeout.
        let deadline = Instant::now() + self.flush_timeout;
        let st = loop {
            match self.shared.state.try_lock() {
                Ok(g) => break Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => break Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(std::sync::TryLockError::WouldBlock) => break None,
            }
        };
        let Some(mut st) = st else {
            warn!(
                "ingest: the spool is stuck on its filesystem ({}) past the {} s flush \
                 timeout; leaving it (undelivered snapshots stay in the spool)",
                self.writer.dir().display(),
                self.flush_timeout.as_secs_f64()
            );
            handle.stop();
            handle.detach();
            return;
        };
        st.shutdown_deadline = Some(deadline);
        drop(st);
        self.shared.wake.notify_all();
        // A sender waiting for its restart is not restarted to flush.
        handle.stop();
        let grace = self.flush_timeout + Duration::from_secs(1);
        match self.sender_gone.recv_timeout(grace) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                warn!(
                    "ingest: a request is still in flight after the {} s flush timeout; \
                     leaving it (its snapshots stay in the spool)",
                    self.flush_timeout.as_secs_f64()
                );
                handle.detach();
                return;
            }
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        }
        if handle.status().gave_up {
            error!("ingest: the sender thread was given up on; undelivered snapshots stay in the spool");
        }
        drop(handle);
        // The spool writer may hold this lock while stuck on a hung
        // filesystem: exit never waits for it.
        let Ok(st) = self.shared.state.try_lock() else {
            return;
        };
        if !st.spool.is_empty() {
            info!(
                "ingest: {} snapshots stay in the spool for the next start",
                st.spool.len()
            );
        }
    }
}

impl Drop for IngestSink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Sink for IngestSink {
    fn name(&self) -> &'static str {
        "ingest"
    }

    /// Kept once durably spooled within [`IO_BOUND`]. A snapshot the
    /// spool cannot write in time (an error, a hung filesystem, or the
    /// writer still stuck with an earlier one) is not kept: it is counted
    /// (in `dropped_count` and `/metrics`) and said once per run of
    /// failures, so it is not an error here. Takes no lock a filesystem
    /// call can hold.
    fn emit(&mut self, snapshot: &Snapshot) -> anyhow::Result<Emitted> {
        self.shared
            .collectors_ok
            .store(collectors_ok(snapshot), Ordering::Relaxed);
        self.shared.source_lost.store(
            snapshot
                .collector
                .as_ref()
                .and_then(|c| c.lost_records)
                .unwrap_or(0),
            Ordering::Relaxed,
        );
        let writer = self.writer.clone();
        let shared = Arc::clone(&self.shared);
        let snapshot = snapshot.clone();
        let outcome = self.io.run(move |claim: Claim<bool>| {
            match writer.write(&snapshot) {
                Ok((seq, size)) => {
                    // Decided under the index lock: once the tick hears
                    // "kept", the record is in the index for anyone who
                    // takes the lock after it (the shutdown flush).
                    let mut st = shared.lock();
                    if claim.deliver(true) {
                        writer.succeeded();
                        st.spool.add(seq, size);
                        drop(st);
                        shared.wake.notify_all();
                    } else {
                        drop(st);
                        // Reported not kept and counted when its deadline
                        // passed: it must never be sent.
                        warn!(
                            "spool: a record written to {} after its {} ms deadline is removed \
                             (its snapshot was already counted as dropped)",
                            writer.dir().display(),
                            IO_BOUND.as_millis()
                        );
                        writer.discard(seq);
                    }
                }
                Err(e) => {
                    // Counted here only if the tick still waited; past
                    // its deadline the tick counted it already.
                    if claim.deliver(false) {
                        writer.failed(&e);
                    }
                }
            }
        });
        let dir = self.writer.dir().display();
        let bound = IO_BOUND.as_millis();
        match outcome {
            Outcome::Done(true) => Ok(Emitted::KEPT),
            Outcome::Done(false) => Ok(Emitted::LOST),
            Outcome::TimedOut => {
                self.writer.not_written(&format!(
                    "writing a record to {dir} did not finish within {bound} ms (a hung \
                     filesystem?); the snapshot is dropped (counted): check that filesystem"
                ));
                Ok(Emitted::LOST)
            }
            Outcome::Busy => {
                self.writer.not_written(&format!(
                    "an earlier write to {dir} is still stuck (a hung filesystem?); the \
                     snapshot is dropped (counted): check that filesystem"
                ));
                Ok(Emitted::LOST)
            }
            Outcome::Failed => {
                self.writer.not_written(&format!(
                    "the spool writer for {dir} failed without an answer; the snapshot is \
                     dropped (counted)"
                ));
                Ok(Emitted::LOST)
            }
        }
    }
}

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    #[error("ingest CA file {path}: {error}")]
    Read {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("ingest CA file {path}: not PEM ({why})")]
    Pem {
        path: std::path::PathBuf,
        why: String,
    },
    #[error("ingest CA file {path}: holds no CERTIFICATE block")]
    Empty { path: std::path::PathBuf },
    /// The file (or a directory on its way) could be changed by another
    /// user, who would then choose who receives the API key.
    #[error(transparent)]
    Refused(#[from] crate::files::FileError),
}

/// The certificates in a PEM text (`CERTIFICATE` blocks; keys and other
/// blocks are skipped).
pub fn pem_certificates(
    path: &std::path::Path,
    pem: &[u8],
) -> Result<Vec<ureq::tls::Certificate<'static>>, CaFileError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(CaFileError::Pem {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                })
            }
        }
    }
    if certs.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The roots the endpoint's certificate must chain to: the Mozilla roots,
/// plus the certificates of `ca_file` if given. The CA file decides who
/// receives the API key, so it gets the key file's checks: opened once
/// and checked on the open descriptor ([`crate::files::open_trusted`]:
/// owned by root or the agent's user, not group- or world-writable, in
/// directories only they can change), else refused.
pub fn root_certs(ca_file: Option<&std::path::Path>) -> Result<ureq::tls::RootCerts, CaFileError> {
    use std::io::Read;
    let Some(path) = ca_file else {
        return Ok(ureq::tls::RootCerts::WebPki);
    };
    let (file, _) = crate::files::open_trusted(path, "ingest CA file")?;
    let mut pem = Vec::new();
    // A CA bundle is a few hundred KiB; 16 MiB is not one.
    file.take(16 << 20)
        .read_to_end(&mut pem)
        .map_err(|source| CaFileError::Read {
            path: path.to_path_buf(),
            error: source,
        })?;
    let private = pem_certificates(path, &pem)?;
    info!(
        "ingest: trusting {} certificate(s) from {} besides the Mozilla roots",
        private.len(),
        path.display()
    );
    let mut all: Vec<ureq::tls::Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    all.extend(private);
    Ok(ureq::tls::RootCerts::new_with_certs(&all))
}

/// Retry delays: `initial · 2^failures`, capped at `max`, with equal jitter
/// (half fixed, half random) so a fleet does not retry in step.
#[derive(Debug)]
struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let half = exp / 2;
        half + half.mul_f64(fastrand::f64())
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Why a request did not finish its snapshots.
#[derive(Debug)]
enum Failure {
    /// 5xx, an unexpected answer, or no answer: back off and resend.
    Retry { cause: String, detail: String },
    /// 401/403: the key is refused.
    Auth(u16),
    /// 402: stop sending.
    Payment,
    /// No spooled record could be read (an I/O error; the spool said so
    /// once and kept them): back off and read again.
    SpoolRead,
}

/// The cloud's answer to one request.
enum Reply {
    Accepted,
    Partial(IngestResponse),
    TooLarge,
    Failed(Failure),
}

struct Sender {
    cfg: IngestConfig,
    host: HostInfo,
    started: Instant,
    client: ureq::Agent,
    shared: Arc<Shared>,
    backoff: Backoff,
    auth_said: bool,
    retry_said: bool,
    /// A 402 stopped sending: only one batch per `payment_recheck`.
    payment_stopped: bool,
    /// When the next batch may be sent while stopped by a 402.
    payment_recheck_at: Instant,
}

impl Sender {
    fn new(
        cfg: IngestConfig,
        host: HostInfo,
        roots: ureq::tls::RootCerts,
        shared: Arc<Shared>,
    ) -> Self {
        let client: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .http_status_as_error(false)
            // ureq follows up to 10 by default, a 302 as a body-less GET.
            // 0: no redirect is followed and the 3xx itself is returned
            // (never a TooManyRedirects error: ureq-3 run.rs).
            .max_redirects(0)
            .timeout_global(Some(cfg.request_timeout))
            .user_agent(format!("netwatch-agent/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let backoff = Backoff {
            initial: cfg.retry_initial,
            max: cfg.retry_max,
            failures: 0,
        };
        Self {
            cfg,
            host,
            started: Instant::now(),
            client,
            shared,
            backoff,
            auth_said: false,
            retry_said: false,
            payment_stopped: false,
            payment_recheck_at: Instant::now(),
        }
    }

    /// Deliver until shutdown. Run again by the supervisor after a panic:
    /// what it had not finished is still in the spool.
    fn run(&mut self) {
        let mut next_attempt = Instant::now();
        loop {
            crate::supervise::fault::point("ingest");
            let mut st = self.shared.lock();
            let deadline = loop {
                if let Some(d) = st.shutdown_deadline {
                    break Some(d);
                }
                let now = Instant::now();
                // Stopped by a 402: the next batch waits for the recheck.
                let due = if self.payment_stopped {
                    next_attempt.max(self.payment_recheck_at)
                } else {
                    next_attempt
                };
                if !st.spool.is_empty() && now >= due {
                    break None;
                }
                st = if st.spool.is_empty() {
                    self.shared.wake.wait(st).unwrap_or_else(|p| p.into_inner())
                } else {
                    self.shared
                        .wake
                        .wait_timeout(st, due - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                };
            };
            drop(st);
            match deadline {
                None => {
                    if let Err(f) = self.round(self.cfg.request_timeout) {
                        let delay = self.failed(f);
                        next_attempt = Instant::now() + delay;
                    }
                }
                Some(deadline) => {
                    self.flush(deadline);
                    return;
                }
            }
        }
    }

    /// Shutdown: deliver until the spool is empty, the deadline passes or a
    /// request fails; backoff is not waited out.
    fn flush(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if self.payment_stopped || now >= deadline || self.shared.lock().spool.is_empty() {
                return;
            }
            let timeout = (deadline - now).min(self.cfg.request_timeout);
            if let Err(f) = self.round(timeout) {
                self.failed(f);
                return;
            }
        }
    }

    /// Log a failure (each kind once until a success) and pick the delay.
    fn failed(&mut self, f: Failure) -> Duration {
        let delay = self.backoff.next();
        match f {
            Failure::Auth(status) => {
                if !self.auth_said {
                    error!(
                        "ingest: the endpoint refused the API key (HTTP {status}); snapshots stay \
                         in the spool and delivery is retried with backoff (up to {} s)",
                        self.cfg.retry_max.as_secs()
                    );
                    self.auth_said = true;
                }
            }
            Failure::Payment => {
                let recheck = self.cfg.payment_recheck;
                if self.payment_stopped {
                    debug!(
                        "ingest: HTTP 402 again; next try in {:.0} s",
                        recheck.as_secs_f64()
                    );
                } else {
                    error!(
                        "ingest: HTTP 402 Payment Required: sending stopped; snapshots are still \
                         collected into the spool (bounded; the oldest are dropped and counted \
                         past {} bytes); one batch is sent again every {:.0} s until the \
                         endpoint accepts it",
                        self.cfg.spool_max_bytes,
                        recheck.as_secs_f64()
                    );
                    self.payment_stopped = true;
                }
                self.payment_recheck_at = Instant::now() + recheck;
            }
            Failure::SpoolRead => {
                debug!(
                    "ingest: no spooled record readable; next try in {:.1} s",
                    delay.as_secs_f64()
                );
            }
            Failure::Retry { cause, detail } => {
                if self.retry_said {
                    debug!("ingest: {detail}; retrying in {:.1} s", delay.as_secs_f64());
                } else {
                    warn!(
                        "ingest: {detail} ({cause}); snapshots stay in the spool, retrying with \
                         backoff (next in {:.1} s, at most {} s apart)",
                        delay.as_secs_f64(),
                        self.cfg.retry_max.as_secs()
                    );
                    self.retry_said = true;
                }
            }
        }
        delay
    }

    /// Send the oldest batch; remove what the cloud answered for.
    fn round(&mut self, timeout: Duration) -> Result<(), Failure> {
        // Envelope overhead (host, health, brackets) stays well under 64 KiB.
        let json_budget = self.cfg.batch_max_bytes.saturating_sub(64 * 1024).max(1);
        let batch = self
            .shared
            .lock()
            .spool
            .oldest(self.cfg.batch_max_snapshots, json_budget)
            .map_err(|_| Failure::SpoolRead)?;
        if batch.is_empty() {
            return Ok(());
        }
        let mut done = Vec::with_capacity(batch.len());
        let result = self.send_all(&batch, &mut done, timeout);
        self.shared.lock().spool.remove(&done);
        if result.is_ok() {
            if self.payment_stopped {
                info!(
                    "ingest: the endpoint accepted a batch again after HTTP 402: delivery resumed"
                );
                self.payment_stopped = false;
            } else if self.auth_said || self.retry_said {
                info!("ingest: delivering again");
            }
            self.auth_said = false;
            self.retry_said = false;
            self.backoff.reset();
        }
        result
    }

    /// Deliver `batch`, splitting on 413; `done` collects the sequence
    /// numbers the cloud answered for (accepted or rejected).
    fn send_all(
        &mut self,
        batch: &[Spooled],
        done: &mut Vec<u64>,
        timeout: Duration,
    ) -> Result<(), Failure> {
        match self.post(batch, timeout) {
            Reply::Accepted => {
                done.extend(batch.iter().map(|s| s.seq));
                self.succeeded(batch.len() as u64, 0);
                Ok(())
            }
            Reply::Partial(resp) => {
                let mut accepted = 0;
                let mut rejected = 0;
                // Verdicts for no snapshot of the batch: said once per
                // answer, however many the server sent.
                let mut stray = 0usize;
                let mut first_stray = None;
                for r in &resp.results {
                    let Some(s) = batch.get(r.index) else {
                        stray += 1;
                        first_stray.get_or_insert(r.index);
                        continue;
                    };
                    if done.contains(&s.seq) {
                        continue;
                    }
                    if (200..300).contains(&r.status) {
                        accepted += 1;
                    } else {
                        rejected += 1;
                        warn!(
                            "ingest: the cloud rejected snapshot {} of the batch (taken at {}): {} {}; \
                             it is not resent",
                            r.index,
                            s.snapshot.timestamp.to_rfc3339(),
                            r.status,
                            visible(&r.message, MAX_LOGGED_SERVER_CHARS)
                        );
                    }
                    done.push(s.seq);
                }
                if let Some(first) = first_stray {
                    warn!(
                        "ingest: 207 named {stray} verdicts for no snapshot of the batch of {} \
                         (the first for index {first}); ignored",
                        batch.len()
                    );
                }
                self.succeeded(accepted, rejected);
                let missing = batch.len() - (accepted + rejected) as usize;
                if missing > 0 {
                    // Resent after a backoff, so a server that never gives
                    // a verdict is not hammered.
                    self.shared.stats.error("207_incomplete");
                    return Err(Failure::Retry {
                        cause: "207 incomplete".into(),
                        detail: format!("HTTP 207 gave no verdict for {missing} snapshots"),
                    });
                }
                Ok(())
            }
            Reply::TooLarge if batch.len() > 1 => {
                let mid = batch.len() / 2;
                debug!(
                    "ingest: 413 for {} snapshots: splitting into {mid} and {}",
                    batch.len(),
                    batch.len() - mid
                );
                self.send_all(&batch[..mid], done, timeout)?;
                self.send_all(&batch[mid..], done, timeout)
            }
            Reply::TooLarge => {
                let s = &batch[0];
                warn!(
                    "ingest: 413 for a single snapshot (taken at {}, {} bytes of JSON): rejected, not resent",
                    s.snapshot.timestamp.to_rfc3339(),
                    s.json_len
                );
                self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                done.push(s.seq);
                Ok(())
            }
            Reply::Failed(f) => Err(f),
        }
    }

    fn succeeded(&self, accepted: u64, rejected: u64) {
        let st = &self.shared.stats;
        st.delivered.fetch_add(accepted, Ordering::Relaxed);
        st.rejected.fetch_add(rejected, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        st.last_success_unix_secs.store(now, Ordering::Relaxed);
    }

    fn envelope(&self, batch: &[Spooled]) -> IngestEnvelope {
        let agent_health = AgentHealth {
            collectors_ok: self.shared.collectors_ok.load(Ordering::Relaxed),
            dropped_count: self.shared.stats.spool.dropped()
                + self.shared.source_lost.load(Ordering::Relaxed),
            queue_depth: self.shared.stats.spool.depth.load(Ordering::Relaxed),
        };
        let mut host = self.host.clone();
        host.uptime_secs = host
            .uptime_secs
            .map(|u| u + self.started.elapsed().as_secs());
        IngestEnvelope {
            schema_version: SCHEMA_VERSION,
            request: IngestRequest {
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                host,
                snapshots: batch.iter().map(|s| s.snapshot.clone()).collect(),
            },
            agent_health,
        }
    }

    fn post(&mut self, batch: &[Spooled], timeout: Duration) -> Reply {
        let body = match serde_json::to_vec(&self.envelope(batch)) {
            Ok(b) => b,
            Err(e) => {
                return Reply::Failed(Failure::Retry {
                    cause: "serialize".into(),
                    detail: format!("serializing the envelope: {e}"),
                })
            }
        };
        self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self
            .client
            .post(&self.cfg.url)
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("Content-Type", "application/json")
            .header(
                "Authorization",
                format!("Bearer {}", self.cfg.api_key.expose()),
            )
            .send(&body[..]);
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.shared.stats.error("transport");
                let raw = e.to_string();
                let text = visible(&raw, crate::text::DEFAULT_MAX_CHARS);
                let detail = if raw.contains("invalid peer certificate") {
                    format!(
                        "POST {}: TLS certificate verification failed ({text}); nothing was sent \
                         (a private CA: --ingest-ca-file or [ingest] ca_file)",
                        self.cfg.url
                    )
                } else {
                    format!("POST {} failed: {text}", self.cfg.url)
                };
                return Reply::Failed(Failure::Retry {
                    cause: "transport".into(),
                    detail,
                });
            }
        };
        let status = resp.status().as_u16();
        // The server's text: a user and password in it are not logged.
        let location = resp.headers().get("location").map(|v| {
            visible(
                &crate::config::redact_url(&String::from_utf8_lossy(v.as_bytes())),
                MAX_LOGGED_SERVER_CHARS,
            )
            .into_owned()
        });
        let text = resp
            .body_mut()
            .with_config()
            .limit(4 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        if status != 200 && status != 207 {
            self.shared.stats.error(&status.to_string());
        }
        match status {
            200 => Reply::Accepted,
            207 => match serde_json::from_str::<IngestResponse>(&text) {
                Ok(r) => Reply::Partial(r),
                Err(e) => {
                    // The verdicts are unknown: every snapshot is resent.
                    self.shared.stats.error("207_unreadable");
                    Reply::Failed(Failure::Retry {
                        cause: "207 unreadable".into(),
                        detail: format!(
                            "HTTP 207 with a body that is not an IngestResponse ({}; \
                             over 4 MiB reads as empty)",
                            visible(&e.to_string(), MAX_LOGGED_SERVER_CHARS)
                        ),
                    })
                }
            },
            300..=399 => Reply::Failed(Failure::Retry {
                cause: format!("HTTP {status}"),
                detail: format!(
                    "POST {} answered {status}, a redirect{}, which is not followed (a \
                     redirect is not an acceptance): set the endpoint to the ingest \
                     address itself",
                    self.cfg.url,
                    location.map_or(String::new(), |l| format!(" to {l}"))
                ),
            }),
            413 => Reply::TooLarge,
            401 | 403 => Reply::Failed(Failure::Auth(status)),
            402 => Reply::Failed(Failure::Payment),
            _ => Reply::Failed(Failure::Retry {
                cause: format!("HTTP {status}"),
                detail: format!(
                    "POST {} answered {status}: {}",
                    self.cfg.url,
                    visible(text.trim(), MAX_LOGGED_SERVER_CHARS)
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let mut b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            failures: 0,
        };
        for n in 0..40u32 {
            let d = b.next();
            let exp = Duration::from_secs(1u64 << n.min(20)).min(Duration::from_secs(300));
            assert!(d >= exp / 2 && d <= exp, "failure {n}: {d:?} vs {exp:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_secs(1));
    }
}
