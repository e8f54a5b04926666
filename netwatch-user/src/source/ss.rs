//! The `ss` source: runs iproute2's `ss -tunapie` once per read and turns
//! each socket into a [`SocketSample`] with the kernel's own cumulative TCP
//! byte counters (`tcp_info` via `-i`). It must never build wire rows or
//! compute per-interval deltas; [`crate::attribution`] does that.
//!
//! What the counters mean, and their limits:
//! - `tx_bytes` is `bytes_sent − bytes_retrans`: payload bytes sent, each
//!   once, like the eBPF source's `tcp_sendmsg` count (kernel ≥ 4.19). On
//!   older kernels there is no `bytes_sent` and the source falls back to
//!   `bytes_acked` (see [`TxCounter`]).
//! - `rx_bytes` is `bytes_received`, less the one sequence number of the
//!   peer's FIN in the states that have received it (`CLOSE_WAIT`,
//!   `LAST_ACK`, `CLOSING`), so the count stays payload-only and monotonic.
//! - UDP sockets have no counters in `ss`: they appear with 0 bytes.
//! - The counters run from the socket's opening ([`CountOrigin::SinceSocketOpen`]),
//!   and `ss` says nothing about a socket's age. On the first read they are
//!   only a baseline; a socket first seen on a later read is taken to have
//!   opened within the interval, so the interval is the bound on when its
//!   bytes moved.
//!
//! Sockets that close between two reads (see [`destroy`]): polling alone
//! cannot see the bytes a socket moves after its last read, and a TCP socket
//! that closes first becomes a TIME-WAIT entry that `ss` shows without
//! counters or owner. So the source also reads the kernel's `sock_diag`
//! destroy events (TCP and UDP, IPv4 and IPv6; needs `CAP_NET_ADMIN`, else a
//! warning and polling alone) on a thread, and turns each into a `closed`
//! sample with the socket's final counters:
//! - Owner: the last owner a read saw for that cookie. A socket opened and
//!   closed between two reads was never seen; if its local address is that
//!   of a TCP listener whose every owner is one process (in this read or the
//!   last), it goes to that process (the one that accepted it, unless a
//!   listener shared across a fork between reads accepted it elsewhere);
//!   otherwise it has no owner and its bytes go to no process (a connection
//!   row only): under truth, never above it.
//! - `rx_bytes` is `bytes_received` less the peer's FIN (which it counts
//!   as one byte; the SYN it does not). The destroy message cannot say
//!   whether the FIN arrived: the socket is `CLOSE` by then, and an orphan
//!   whose own FIN was acknowledged becomes a time-wait socket (and is
//!   destroyed) before the peer's FIN comes, the usual end of a server that
//!   replies and closes. The one sure sign that it did not is the socket's
//!   time-wait successor still in `FIN-WAIT-2`: looked up by endpoints as
//!   soon as the event is read, and again (same cookie, or same endpoints
//!   when the socket was never listed) in the `ss` output read after it.
//!   Then nothing is subtracted, otherwise one byte is. So a socket
//!   destroyed before the FIN whose successor got it before both looks
//!   (on loopback, where the peer closes within microseconds, that is
//!   usual) is counted one byte short: at most one byte per connection,
//!   never over.
//! - `tx_bytes` is `bytes_sent − bytes_retrans` as for live sockets (on
//!   kernels before 4.19, the last polled value).
//! - Final counters never go below the socket's last reported ones.
//! - A time-wait entry in a later read carries the last reported counters
//!   of its socket until the destroy event is counted, and none after, and
//!   is left out of the read that counts the event, so the socket's bytes
//!   are counted once and it has one row. Events are drained before `ss` runs:
//!   a socket `ss` lists alive cannot have been counted closed already.
//! - Lost events (kernel buffer overruns, unreadable messages) are counted
//!   in `lost_records`.
//!
//! Bounds (a local user can open and close sockets at will, and `ss` can
//! fail or print without end): at most [`MAX_PENDING_EVENTS`] destroy events
//! wait for a successful read (the newest past it are dropped), at most
//! [`output_limit_bytes`] of `ss` output are read (more is refused), both
//! counted in `netwatch_agent_table_dropped_total`; a never-seen socket's
//! listener is one lookup in an index ([`listeners`]), never a scan.
//!
//! Live sockets `ss` lists without an owner: an orphan (closed by its
//! process, still sending or waiting for the peer) keeps the owner a read
//! saw; a socket accepted from a single-owner listener gets that owner; a
//! brand-new socket `ss -p` missed (it maps inodes to processes before it
//! lists sockets) reports its last counters for up to
//! `HOLD_OWNERLESS_READS` reads, so its bytes wait for its owner instead of
//! going to nobody.
//!
//! A sample's [`SocketId`] is the kernel socket cookie (`sk:` from `-e`):
//! unique per socket for the system's uptime, never reused, and kept when a
//! TCP socket enters TIME-WAIT. The 5-tuple is reused by the next connection
//! between the same ports and the inode is 32 bits, recycled, and 0 in
//! TIME-WAIT, so they are only the fallback when an `ss` prints no cookie.

pub mod destroy;
pub mod listeners;
mod parse;

pub use parse::{
    normalize_state, parse_ss, LineError, Owner, ParseOutcome, ParsedSocket, Skipped,
    MAX_SKIP_REASONS,
};

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::source::GRACE_READS;
use crate::source::{
    CountOrigin, Protocol, SampleBatch, SocketId, SocketSample, SocketSource, TcpCounters,
};
use crate::tool::{ToolCommand, ToolError};
use destroy::{DestroyEvent, DestroyListener};
use listeners::{Listeners, Owned};

/// The arguments the source passes to `ss`: TCP and UDP (`-tu`), numeric
/// (`-n`), all states (`-a`), owning processes (`-p`), `tcp_info` (`-i`) and
/// socket details (`-e`: inode, cookie, cgroup).
pub const SS_ARGS: &str = "-tunapie";

/// How long one `ss` run may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Destroy events kept for the next successful read at most: while `ss`
/// keeps failing, the events drained each tick wait in the source. Past
/// this, the newest are dropped (the ones already waiting are kept, the
/// rule of the listener's own queue), counted in `lost_records` and as
/// `netwatch_agent_table_dropped_total{table="ss_pending_destroys"}`. One
/// drain holds at most as many ([`destroy::MAX_QUEUED_EVENTS`]), so a
/// source whose reads succeed never drops here. 144 bytes each: 36 MiB
/// at most, held only while `ss` fails.
pub const MAX_PENDING_EVENTS: usize = destroy::MAX_QUEUED_EVENTS;

/// Bytes of `ss -tunapie` output allowed per socket: a real record (two
/// lines: addresses, owners, inode, cookie, cgroup path, `tcp_info`) is
/// 600 to 700 bytes (`testdata/ss/`); this leaves room for long cgroup
/// paths and listeners shared by many processes.
pub const OUTPUT_BYTES_PER_SOCKET: u64 = 1024;

/// Bytes of `ss` output allowed on top of the per-socket share (the header
/// line, and a host with few sockets but long records).
pub const OUTPUT_BASE_BYTES: u64 = 1 << 20;

/// The most `ss` output read for a host of `max_sockets` sockets:
/// [`OUTPUT_BASE_BYTES`] + `max_sockets` × [`OUTPUT_BYTES_PER_SOCKET`]
/// (65 MiB for the default 65,536). More is refused with
/// [`SsError::TooMuchOutput`], counted as
/// `netwatch_agent_table_dropped_total{table="ss_output"}` (one per refused
/// read), and the read fails (its destroy events wait for the next one).
///
/// ```
/// use netwatch::source::ss::output_limit_bytes;
/// assert_eq!(output_limit_bytes(65_536), (1 << 20) + (64 << 20));
/// ```
pub fn output_limit_bytes(max_sockets: u32) -> u64 {
    OUTPUT_BASE_BYTES + u64::from(max_sockets) * OUTPUT_BYTES_PER_SOCKET
}

/// Tags a [`SocketId`] built from the 5-tuple (no cookie) so it can never
/// equal a cookie id, whose `secondary` is 0.
const TUPLE_ID_TAG: u64 = 1 << 63;

/// Which `tcp_info` counter becomes `tx_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxCounter {
    /// `bytes_sent − bytes_retrans` (kernel ≥ 4.19): exact payload bytes.
    BytesSent,
    /// `bytes_acked` (kernels 4.1–4.18, which have no `bytes_sent`): lags by
    /// the data in flight and counts the SYN (active opener) and an
    /// acknowledged FIN as one byte each. Only chosen by kernel version,
    /// because `ss` omits zero counters: a missing `bytes_sent` on a new
    /// kernel means "sent nothing", not "unsupported".
    BytesAcked,
}

impl TxCounter {
    /// The counter to use on a kernel with this release string
    /// (`/proc/sys/kernel/osrelease`, e.g. `6.1.0-18-amd64`). Unreadable
    /// releases get [`TxCounter::BytesSent`].
    ///
    /// ```
    /// use netwatch::source::ss::TxCounter;
    /// assert_eq!(TxCounter::for_kernel_release("4.18.0-553.el8.x86_64"), TxCounter::BytesAcked);
    /// assert_eq!(TxCounter::for_kernel_release("4.19.0"), TxCounter::BytesSent);
    /// assert_eq!(TxCounter::for_kernel_release("6.18.44-fc"), TxCounter::BytesSent);
    /// ```
    pub fn for_kernel_release(release: &str) -> Self {
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().ok());
        match (nums.next().flatten(), nums.next().flatten()) {
            (Some(major), Some(minor)) if (major, minor) < (4, 19) => TxCounter::BytesAcked,
            _ => TxCounter::BytesSent,
        }
    }
}

impl ParsedSocket {
    /// The sample's identity: the cookie when `ss` printed one, else a hash
    /// of protocol and endpoints with the inode (see the module doc).
    pub fn socket_id(&self) -> SocketId {
        match self.cookie.filter(|&c| c != 0) {
            Some(cookie) => SocketId {
                primary: cookie,
                secondary: 0,
            },
            None => {
                // DefaultHasher::new() has fixed keys: stable for the life of
                // the process, which is all a SocketId promises.
                let mut h = DefaultHasher::new();
                (
                    self.protocol,
                    self.local,
                    self.remote,
                    &self.local_interface,
                )
                    .hash(&mut h);
                SocketId {
                    primary: h.finish(),
                    secondary: TUPLE_ID_TAG | (self.inode.unwrap_or(0) & !TUPLE_ID_TAG),
                }
            }
        }
    }

    /// Payload bytes received since the socket opened (see the module doc).
    pub fn rx_bytes(&self) -> u64 {
        let received = self.bytes_received.unwrap_or(0);
        let fin_received = matches!(self.state.as_str(), "CLOSE_WAIT" | "LAST_ACK" | "CLOSING");
        if fin_received {
            received.saturating_sub(1)
        } else {
            received
        }
    }

    /// Payload bytes sent since the socket opened, by `counter`.
    pub fn tx_bytes(&self, counter: TxCounter) -> u64 {
        match counter {
            TxCounter::BytesSent => self
                .bytes_sent
                .unwrap_or(0)
                .saturating_sub(self.bytes_retrans.unwrap_or(0)),
            TxCounter::BytesAcked => self.bytes_acked.unwrap_or(0),
        }
    }

    /// The sample this socket yields; `cgroup_id` is left for the caller.
    pub fn to_sample(&self, counter: TxCounter) -> SocketSample {
        let owner = self.owner();
        SocketSample {
            id: self.socket_id(),
            protocol: self.protocol,
            local: Some(self.local),
            remote: self.remote,
            state: super::state_name(&self.state),
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.name.as_str().into()),
            cgroup_id: None,
            rx_bytes: self.rx_bytes(),
            tx_bytes: self.tx_bytes(counter),
            rtt_us: self.rtt_us,
            // `ss -i` shows the kernel's retransmission counters (zero
            // ones omitted); resets and connect times it does not show.
            tcp: (self.protocol == Protocol::Tcp).then(|| TcpCounters {
                retrans_segs: self.retrans_total.unwrap_or(0),
                retrans_bytes: self.bytes_retrans.unwrap_or(0),
                ..TcpCounters::default()
            }),
            closed: false,
            origin: CountOrigin::SinceSocketOpen,
        }
    }
}

/// Running `ss` failed.
#[derive(Debug, thiserror::Error)]
pub enum SsError {
    #[error("running `{program} {SS_ARGS}`: not found; install iproute2 (it provides `ss`) or use another source")]
    NotFound { program: String },
    #[error("running `{program} {SS_ARGS}`: {error}")]
    Spawn { program: String, error: io::Error },
    #[error("`{program} {SS_ARGS}` exited with {status}: {}", crate::text::Visible(.stderr.trim()))]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{program} {SS_ARGS}` did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("reading the output of `{program} {SS_ARGS}`: {error}")]
    Read { program: String, error: io::Error },
    /// More output than [`output_limit_bytes`] allows.
    #[error("`{program} {SS_ARGS}` printed more than {limit_bytes} bytes (the limit for --max-sockets sockets), refusing to parse it; raise --max-sockets if this host really has that many sockets")]
    TooMuchOutput { program: String, limit_bytes: u64 },
    /// The program is not one the agent may run with privileges.
    #[error("{0}")]
    Refused(String),
}

impl From<ToolError> for SsError {
    fn from(e: ToolError) -> Self {
        match e {
            e @ (ToolError::NotAbsolute { .. } | ToolError::Unsafe { .. }) => {
                SsError::Refused(e.to_string())
            }
            ToolError::NotFound { program } => SsError::NotFound {
                program: program.display().to_string(),
            },
            ToolError::Spawn {
                program,
                error: source,
            } => SsError::Spawn {
                program: program.display().to_string(),
                error: source,
            },
            ToolError::Wait {
                program,
                error: source,
            }
            | ToolError::Read {
                program,
                error: source,
            } => SsError::Read {
                program: program.display().to_string(),
                error: source,
            },
            ToolError::Timeout { program, timeout } => SsError::Timeout {
                program: program.display().to_string(),
                timeout,
            },
            ToolError::TooMuchOutput {
                program,
                limit_bytes,
            } => SsError::TooMuchOutput {
                program: program.display().to_string(),
                limit_bytes,
            },
        }
    }
}

/// What the source remembers of a socket a read listed, by cookie, until
/// its destroy event is counted (or it has been missing for
/// [`GRACE_READS`] reads).
#[derive(Debug, Clone)]
struct Seen {
    owner: Option<Owned>,
    /// The last polled cumulative counters.
    rx: u64,
    tx: u64,
    /// The read that last listed it (or its time-wait successor).
    read: u64,
    /// Reads that listed it without an owner and held its counters.
    held: u64,
}

/// How many reads a socket listed with no owner known keeps reporting its
/// last counters, waiting for its owner to show (see [`SsSource::samples`]).
const HOLD_OWNERLESS_READS: u64 = 3;

/// A time-wait entry (or closed socket) by cookie or by its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TwKey {
    Cookie(u64),
    Ends(SocketAddr, SocketAddr),
}

/// The `ss` socket source. See the module documentation.
#[derive(Debug)]
pub struct SsSource {
    program: PathBuf,
    timeout: Duration,
    tx_counter: TxCounter,
    /// Where cgroup v2 is mounted, to turn `cgroup:` paths into ids.
    cgroup2_root: Option<PathBuf>,
    /// Unparseable lines since the source started.
    lost_lines: u64,
    reads: u64,
    /// The destroy-event reader; `None` when it could not start.
    destroy: Option<DestroyListener>,
    /// Events drained and not yet turned into samples (kept if `ss` fails).
    pending: Vec<DestroyEvent>,
    /// Events the reader lost, as of the last drain.
    lost_events: u64,
    /// Events this source could not use (no cookie).
    unusable_events: u64,
    /// Events dropped because `pending` was full.
    dropped_events: u64,
    /// Sockets seen by reads, by cookie.
    seen: HashMap<u64, Seen>,
    /// The TCP listeners of the last read.
    listeners: Listeners,
    /// At most this many destroy events wait in `pending` (see
    /// [`MAX_PENDING_EVENTS`]).
    max_pending: usize,
    /// The largest `ss` output read (see [`output_limit_bytes`]).
    max_output_bytes: u64,
}

impl Default for SsSource {
    fn default() -> Self {
        Self::new()
    }
}

impl SsSource {
    /// A source running `ss` from the system directories
    /// ([`crate::tool::system_tool`], never `PATH`), with [`DEFAULT_TIMEOUT`], the
    /// [`TxCounter`] for the running kernel and the first cgroup v2 mount,
    /// reading destroy events from now on (a warning if it cannot).
    pub fn new() -> Self {
        let destroy = match DestroyListener::start() {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("ss: {e}");
                None
            }
        };
        Self::without_destroy_events().with_destroy_listener(destroy)
    }

    /// A source that only polls: the bytes a socket moves after its last
    /// read are not counted.
    pub fn without_destroy_events() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self {
            // Never from PATH: the agent may hold capabilities when it runs `ss`.
            program: crate::tool::system_tool("ss").unwrap_or_else(|e| {
                log::warn!("ss: {e}");
                PathBuf::from("/usr/bin/ss")
            }),
            timeout: DEFAULT_TIMEOUT,
            tx_counter: TxCounter::for_kernel_release(release.trim()),
            cgroup2_root: std::fs::read_to_string("/proc/self/mounts")
                .ok()
                .and_then(|m| cgroup2_mount(&m)),
            lost_lines: 0,
            reads: 0,
            destroy: None,
            pending: Vec::new(),
            lost_events: 0,
            unusable_events: 0,
            dropped_events: 0,
            seen: HashMap::new(),
            listeners: Listeners::default(),
            max_pending: MAX_PENDING_EVENTS,
            // Sized for the default of `--max-sockets` unless told
            // (`with_max_sockets`).
            max_output_bytes: output_limit_bytes(super::DEFAULT_MAX_SOCKETS),
        }
    }

    fn with_destroy_listener(mut self, destroy: Option<DestroyListener>) -> Self {
        self.destroy = destroy;
        self
    }

    /// Whether destroy events are being read.
    pub fn destroy_events_enabled(&self) -> bool {
        self.destroy.is_some()
    }

    /// Run this program (an absolute path) instead of the system's `ss`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    /// Size the output limit for a host of `max_sockets` sockets
    /// ([`output_limit_bytes`]; `--max-sockets`).
    pub fn with_max_sockets(mut self, max_sockets: u32) -> Self {
        self.max_output_bytes = output_limit_bytes(max_sockets);
        self
    }

    /// Refuse `ss` output longer than this many bytes (instead of
    /// [`output_limit_bytes`] of the socket count).
    pub fn with_max_output_bytes(mut self, limit: u64) -> Self {
        self.max_output_bytes = limit;
        self
    }

    /// Keep at most this many destroy events for the next successful read
    /// (instead of [`MAX_PENDING_EVENTS`]).
    pub fn with_max_pending_events(mut self, max: usize) -> Self {
        self.max_pending = max;
        self
    }

    /// Destroy events drained and waiting for a successful read.
    pub fn pending_events(&self) -> usize {
        self.pending.len()
    }

    /// Kill `ss` if it runs longer than this.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The counter used for `tx_bytes`.
    pub fn tx_counter(&self) -> TxCounter {
        self.tx_counter
    }

    /// Run `ss -tunapie` and return its output, lossily decoded (process
    /// names are raw bytes and may be cut mid-character). Output longer
    /// than the limit ([`output_limit_bytes`]) is refused, read to its end
    /// and not kept, and counted as a drop of table `ss_output`.
    pub fn run(&self) -> Result<String, SsError> {
        let out = ToolCommand::new(&self.program, &[SS_ARGS], self.timeout)
            .max_output_bytes(Some(self.max_output_bytes))
            .run()
            .map_err(SsError::from)
            .inspect_err(|e| {
                if matches!(e, SsError::TooMuchOutput { .. }) {
                    let cap = usize::try_from(self.max_output_bytes).unwrap_or(usize::MAX);
                    crate::drops::dropped("ss_output", cap, 1);
                }
            })?;
        if !out.status.success() {
            return Err(SsError::Failed {
                program: self.program.display().to_string(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The samples for one `ss` output and the destroy events drained just
    /// before it ran: a closed sample per event first, then one per listed
    /// socket, with cgroup ids resolved (one `stat` per distinct cgroup path
    /// per read). Updates what the source remembers of each socket.
    fn samples(&mut self, events: Vec<DestroyEvent>, outcome: &ParseOutcome) -> Vec<SocketSample> {
        let mut cgroup_ids: HashMap<String, Option<u64>> = HashMap::new();
        let root = self.cgroup2_root.clone();
        let mut cgroup_of = |path: &Option<String>| -> Option<u64> {
            let (root, path) = (root.as_ref()?, path.as_ref()?);
            *cgroup_ids
                .entry(path.clone())
                .or_insert_with(|| cgroup_id(root, path))
        };

        // This read's listeners and time-wait entries (by cookie, and by
        // endpoints: a socket whose cookie no read asked for before it closed
        // gets a fresh cookie in its time-wait successor).
        let listeners = Listeners::from_parsed(outcome, &mut cgroup_of);
        let mut tw_state: HashMap<TwKey, &str> = HashMap::new();
        for sock in &outcome.sockets {
            if is_time_wait_entry(sock) {
                if let Some(c) = sock.cookie {
                    tw_state.insert(TwKey::Cookie(c), sock.state.as_str());
                }
                if let Some(r) = sock.remote {
                    tw_state.insert(TwKey::Ends(sock.local, r), sock.state.as_str());
                }
            }
        }

        let mut samples = Vec::with_capacity(events.len() + outcome.sockets.len());
        let mut closed_now: HashSet<TwKey> = HashSet::new();
        for ev in &events {
            if ev.cookie == 0 {
                self.unusable_events += 1;
                continue;
            }
            if !closed_now.insert(TwKey::Cookie(ev.cookie)) {
                continue;
            }
            if let Some(r) = ev.remote {
                closed_now.insert(TwKey::Ends(ev.local, r));
            }
            let sample = self.closed_sample(ev, &tw_state, &listeners);
            samples.push(sample);
        }

        for sock in &outcome.sockets {
            let mut sample = sock.to_sample(self.tx_counter);
            sample.cgroup_id = cgroup_of(&sock.cgroup_path);
            let Some(cookie) = sock.cookie.filter(|&c| c != 0) else {
                samples.push(sample);
                continue;
            };
            if is_time_wait_entry(sock) {
                let ends = sock.remote.map(|r| TwKey::Ends(sock.local, r));
                if closed_now.contains(&TwKey::Cookie(cookie))
                    || ends.is_some_and(|e| closed_now.contains(&e))
                {
                    // Its socket's closed sample is in this batch: one row per socket.
                    continue;
                }
                // Until the destroy event is counted, carry the last reported
                // counters (no delta); after it, none.
                if let Some(seen) = self.seen.get_mut(&cookie) {
                    sample.rx_bytes = seen.rx;
                    sample.tx_bytes = seen.tx;
                    seen.read = self.reads;
                }
            } else {
                let listed = sample.pid.map(|pid| Owned {
                    pid,
                    comm: sample.comm.clone().unwrap_or_else(|| "".into()),
                    cgroup_id: sample.cgroup_id,
                });
                let first_read = self.reads == 0;
                let entry = self.seen.entry(cookie).or_insert(Seen {
                    owner: None,
                    rx: 0,
                    tx: 0,
                    read: self.reads,
                    held: 0,
                });
                let owner = listed
                    .or_else(|| entry.owner.clone())
                    .or_else(|| live_listener_owner(&sample, &listeners));
                match owner {
                    Some(o) => {
                        sample.pid = Some(o.pid);
                        sample.comm = Some(o.comm.clone());
                        sample.cgroup_id = o.cgroup_id;
                        entry.owner = Some(o);
                    }
                    // No owner yet (`ss -p` maps inodes to processes before it
                    // lists sockets, so a brand-new socket can miss its owner):
                    // report the last counters for a few reads so its bytes
                    // wait for the owner instead of going to nobody.
                    None if !first_read && entry.held < HOLD_OWNERLESS_READS => {
                        entry.held += 1;
                        sample.rx_bytes = entry.rx;
                        sample.tx_bytes = entry.tx;
                    }
                    None => {}
                }
                entry.rx = sample.rx_bytes;
                entry.tx = sample.tx_bytes;
                entry.read = self.reads;
            }
            samples.push(sample);
        }
        self.listeners = listeners;
        let now = self.reads;
        self.seen.retain(|_, s| now - s.read < GRACE_READS);
        samples
    }

    /// The closed sample for one destroy event (see the module doc).
    fn closed_sample(
        &mut self,
        ev: &DestroyEvent,
        tw_state: &HashMap<TwKey, &str>,
        listeners: &Listeners,
    ) -> SocketSample {
        let seen = self.seen.remove(&ev.cookie);
        let (last_rx, last_tx) = seen.as_ref().map_or((0, 0), |s| (s.rx, s.tx));
        let owner = seen
            .and_then(|s| s.owner)
            .or_else(|| listeners::owner_of(ev, &[listeners, &self.listeners]));
        let (rx, tx) = match ev.tcp {
            Some(t) => {
                let received = t.bytes_received.unwrap_or(0);
                let successor = tw_state.get(&TwKey::Cookie(ev.cookie)).or_else(|| {
                    ev.remote
                        .and_then(|r| tw_state.get(&TwKey::Ends(ev.local, r)))
                });
                let no_fin = ev.successor_in_fin_wait2 || successor == Some(&"FIN_WAIT2");
                let rx = if no_fin {
                    received
                } else {
                    received.saturating_sub(1)
                };
                let tx = match (self.tx_counter, t.bytes_sent) {
                    (TxCounter::BytesSent, Some(sent)) => {
                        sent.saturating_sub(t.bytes_retrans.unwrap_or(0))
                    }
                    _ => last_tx,
                };
                (rx.max(last_rx), tx.max(last_tx))
            }
            None => (last_rx, last_tx),
        };
        SocketSample {
            id: SocketId {
                primary: ev.cookie,
                secondary: 0,
            },
            protocol: ev.protocol,
            local: Some(ev.local),
            remote: ev.remote,
            state: crate::net::state::CLOSED.into(),
            pid: owner.as_ref().map(|o| o.pid),
            comm: owner.as_ref().map(|o| o.comm.clone()),
            cgroup_id: owner.and_then(|o| o.cgroup_id),
            rx_bytes: rx,
            tx_bytes: tx,
            tcp: ev.tcp.map(|t| TcpCounters {
                retrans_segs: u64::from(t.total_retrans.unwrap_or(0)),
                retrans_bytes: t.bytes_retrans.unwrap_or(0),
                ..TcpCounters::default()
            }),
            rtt_us: None,
            closed: true,
            origin: CountOrigin::SinceSocketOpen,
        }
    }
}

/// A TCP time-wait entry: `ss` lists it with no owner, no inode and no
/// `tcp_info` (the kernel keeps no counters for it).
fn is_time_wait_entry(sock: &ParsedSocket) -> bool {
    sock.protocol == Protocol::Tcp
        && matches!(sock.state.as_str(), "TIME_WAIT" | "FIN_WAIT2")
        && sock.owners.is_empty()
        && sock.inode.unwrap_or(0) == 0
        && sock.bytes_received.is_none()
        && sock.bytes_sent.is_none()
        && sock.bytes_acked.is_none()
        && sock.rtt_us.is_none()
}

/// [`listeners::owner_of`] for a live connected TCP socket `ss` listed
/// without owner, over this read's listeners.
fn live_listener_owner(sample: &SocketSample, listeners: &Listeners) -> Option<Owned> {
    let (Some(local), Some(remote)) = (sample.local, sample.remote) else {
        return None;
    };
    if sample.protocol != Protocol::Tcp {
        return None;
    }
    let probe = DestroyEvent {
        protocol: Protocol::Tcp,
        cookie: 0,
        local,
        remote: Some(remote),
        rqueue: 0,
        tcp: None,
        successor_in_fin_wait2: false,
    };
    listeners::owner_of(&probe, &[listeners])
}

impl SsSource {
    /// Keep drained events for the next successful read, at most
    /// `max_pending` of them (see [`MAX_PENDING_EVENTS`]).
    fn queue_events(&mut self, events: Vec<DestroyEvent>) {
        let dropped = crate::source::append_bounded(&mut self.pending, events, self.max_pending);
        if dropped > 0 {
            self.dropped_events += dropped;
            crate::drops::dropped("ss_pending_destroys", self.max_pending, dropped);
        }
    }
}

impl SocketSource for SsSource {
    fn name(&self) -> &'static str {
        "ss"
    }

    fn read(&mut self) -> anyhow::Result<SampleBatch> {
        // Events first: a socket `ss` then lists alive cannot be among them.
        if let Some(l) = &self.destroy {
            let (events, lost) = l.drain();
            self.lost_events = lost;
            self.queue_events(events);
        }
        let text = self.run()?;
        let outcome = parse_ss(&text);
        if outcome.skipped > 0 {
            let reasons: Vec<String> = outcome
                .first_skips
                .iter()
                .map(|s| format!("line {}: {}", s.line, s.error))
                .collect();
            if self.reads == 0 || self.lost_lines == 0 {
                log::warn!(
                    "ss: skipped {} unparseable lines ({})",
                    outcome.skipped,
                    reasons.join("; ")
                );
            } else {
                log::debug!(
                    "ss: skipped {} unparseable lines ({})",
                    outcome.skipped,
                    reasons.join("; ")
                );
            }
        }
        self.lost_lines += outcome.skipped;
        let events = std::mem::take(&mut self.pending);
        let samples = self.samples(events, &outcome);
        self.reads += 1;
        Ok(SampleBatch {
            taken_at: Instant::now(),
            samples,
            lost_records: self.lost_lines
                + self.lost_events
                + self.unusable_events
                + self.dropped_events,
            estimated: false,
            omitted: None,
        })
    }
}

/// The first cgroup v2 mount point in `/proc/self/mounts` text: the root
/// `ss` prints `cgroup:` paths against.
fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split(' ');
        let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
        // Mount points with spaces are octal-escaped; skip those rather than unescape.
        (fstype == "cgroup2" && !dir.contains('\\')).then(|| PathBuf::from(dir))
    })
}

/// A cgroup v2 id is the inode number of its directory.
fn cgroup_id(root: &Path, path: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return None;
    }
    std::fs::metadata(root.join(rel)).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUNAPIE: &str = include_str!("../../testdata/ss/tunapie-loopback.txt");
    const TUNAPI: &str = include_str!("../../testdata/ss/tunapi-loopback.txt");

    fn find<'a>(samples: &'a [SocketSample], local: &str, remote: &str) -> &'a SocketSample {
        let (l, r) = (local.parse().ok(), remote.parse().ok());
        samples
            .iter()
            .find(|s| s.local == l && s.remote == r)
            .unwrap_or_else(|| panic!("sample {local} -> {remote}"))
    }

    fn samples(text: &str) -> Vec<SocketSample> {
        parse_ss(text)
            .sockets
            .iter()
            .map(|s| s.to_sample(TxCounter::BytesSent))
            .collect()
    }

    #[test]
    fn ss_sample_fields_from_fixture() {
        let all = samples(TUNAPIE);
        let c = find(&all, "127.0.0.1:46592", "127.0.0.1:51403");
        assert_eq!((c.rx_bytes, c.tx_bytes), (678, 12345));
        assert_eq!(
            (c.pid, c.comm.as_deref()),
            (Some(12157), Some("py fixture"))
        );
        assert_eq!(
            c.id,
            SocketId {
                primary: 0x103d,
                secondary: 0
            }
        );
        assert_eq!(c.origin, CountOrigin::SinceSocketOpen);
        assert_eq!(c.state, "ESTABLISHED");
        assert!(!c.closed);
        // CLOSE-WAIT after the peer's FIN: bytes_received:1 is the FIN, not data.
        let cw = find(&all, "127.0.0.1:53887", "127.0.0.1:56776");
        assert_eq!((cw.rx_bytes, cw.tx_bytes), (0, 0));
        // The shared socket goes to the lowest pid.
        let shared = find(&all, "127.0.0.1:40494", "127.0.0.1:49297");
        assert_eq!(
            (shared.pid, shared.comm.as_deref()),
            (Some(12158), Some("a,b \"c\" (d"))
        );
        assert_eq!(shared.tx_bytes, 7);
    }

    #[test]
    fn ss_ids_are_unique_with_and_without_cookies() {
        for text in [TUNAPIE, TUNAPI] {
            let all = samples(text);
            let mut ids: Vec<_> = all.iter().map(|s| s.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), all.len());
        }
        // Without -e the id is the tagged tuple hash, stable across parses.
        let a = samples(TUNAPI);
        let b = samples(TUNAPI);
        assert_eq!(
            a.iter().map(|s| s.id).collect::<Vec<_>>(),
            b.iter().map(|s| s.id).collect::<Vec<_>>()
        );
        assert!(a.iter().all(|s| s.id.secondary & TUPLE_ID_TAG != 0));
    }

    #[test]
    fn ss_tx_counter_choice_and_retransmissions() {
        let text = "tcp ESTAB 0 0 10.0.0.1:1 10.0.0.2:2\n\
                    \t rtt:1/1 bytes_sent:1500 bytes_retrans:500 bytes_acked:900 bytes_received:7\n";
        let s = &parse_ss(text).sockets[0];
        assert_eq!(s.tx_bytes(TxCounter::BytesSent), 1000);
        assert_eq!(s.tx_bytes(TxCounter::BytesAcked), 900);
        assert_eq!(s.rx_bytes(), 7);
        assert_eq!(
            TxCounter::for_kernel_release("3.10.0-1160.el7.x86_64"),
            TxCounter::BytesAcked
        );
        assert_eq!(TxCounter::for_kernel_release("5.4"), TxCounter::BytesSent);
        assert_eq!(TxCounter::for_kernel_release(""), TxCounter::BytesSent);
        assert_eq!(
            TxCounter::for_kernel_release("garbage"),
            TxCounter::BytesSent
        );
    }

    fn event(cookie: u64, received: u64, sent: u64, rqueue: u32) -> DestroyEvent {
        DestroyEvent {
            protocol: Protocol::Tcp,
            cookie,
            local: "127.0.0.1:8080".parse().unwrap(),
            remote: Some("127.0.0.1:40000".parse().unwrap()),
            rqueue,
            tcp: Some(destroy::TcpFinal {
                bytes_received: Some(received),
                bytes_sent: Some(sent),
                bytes_retrans: Some(0),
                total_retrans: Some(0),
                bytes_acked: None,
            }),
            successor_in_fin_wait2: false,
        }
    }

    const LISTENER: &str = "tcp LISTEN 0 8 127.0.0.1:8080 0.0.0.0:* \
        users:((\"srv\",pid=100,fd=3)) ino:90 sk:2 <->\n\t cubic cwnd:10\n";
    const ALIVE: &str = "tcp ESTAB 0 0 127.0.0.1:8080 127.0.0.1:40000 \
        users:((\"srv\",pid=100,fd=5)) ino:91 sk:1a <->\n\t rtt:0.1/0.05 \
        bytes_sent:200 bytes_acked:201 bytes_received:100\n";
    const TIME_WAIT: &str = "tcp TIME-WAIT 0 0 127.0.0.1:8080 127.0.0.1:40000 ino:0 sk:1a\n\t\n";
    const FIN_WAIT2_TW: &str =
        "tcp FIN-WAIT-2 0 0 127.0.0.1:8080 127.0.0.1:40000 ino:0 sk:1a\n\t\n";

    fn read(src: &mut SsSource, events: Vec<DestroyEvent>, text: &str) -> Vec<SocketSample> {
        let out = parse_ss(text);
        assert_eq!(out.skipped, 0, "{:?}", out.first_skips);
        let s = src.samples(events, &out);
        src.reads += 1;
        s
    }

    #[test]
    fn ss_destroyed_socket_gets_its_owner_final_bytes_less_the_fin() {
        let mut src = SsSource::without_destroy_events();
        let first = read(&mut src, vec![], ALIVE);
        assert_eq!((first[0].rx_bytes, first[0].tx_bytes), (100, 200));
        // Closed after the read: 150 bytes and the FIN received, 300 sent.
        let s = read(&mut src, vec![event(0x1a, 151, 300, 1)], TIME_WAIT);
        assert_eq!(
            s.len(),
            1,
            "the time-wait entry of a socket closed now is no second row"
        );
        let c = &s[0];
        assert!(c.closed);
        assert_eq!((c.pid, c.comm.as_deref()), (Some(100), Some("srv")));
        assert_eq!((c.rx_bytes, c.tx_bytes), (150, 300));
        assert_eq!(
            c.id,
            SocketId {
                primary: 0x1a,
                secondary: 0
            }
        );
        // Its time-wait entry later: no owner, no counters, no second count.
        let s = read(&mut src, vec![], TIME_WAIT);
        assert_eq!((s[0].pid, s[0].rx_bytes, s[0].tx_bytes), (None, 0, 0));
    }

    #[test]
    fn ss_time_wait_successor_in_fin_wait2_means_no_fin_was_received() {
        let mut src = SsSource::without_destroy_events();
        read(&mut src, vec![], ALIVE);
        let s = read(&mut src, vec![event(0x1a, 151, 300, 0)], FIN_WAIT2_TW);
        assert_eq!(s[0].rx_bytes, 151);
    }

    #[test]
    fn ss_time_wait_entry_before_its_event_carries_the_last_counters() {
        let mut src = SsSource::without_destroy_events();
        read(&mut src, vec![], ALIVE);
        // The event is late: the read lists only the time-wait entry.
        let s = read(&mut src, vec![], TIME_WAIT);
        assert_eq!((s[0].pid, s[0].rx_bytes, s[0].tx_bytes), (None, 100, 200));
        assert!(!s[0].closed);
        let s = read(&mut src, vec![event(0x1a, 101, 250, 1)], TIME_WAIT);
        assert_eq!(s.len(), 1);
        assert_eq!(
            (s[0].pid, s[0].rx_bytes, s[0].tx_bytes),
            (Some(100), 100, 250)
        );
    }

    #[test]
    fn ss_final_counters_never_go_below_the_last_polled_ones() {
        let mut src = SsSource::without_destroy_events();
        read(&mut src, vec![], ALIVE);
        // No FIN came (reset), yet one byte is taken off: clamped to the poll.
        let s = read(&mut src, vec![event(0x1a, 100, 150, 0)], "");
        assert_eq!((s[0].rx_bytes, s[0].tx_bytes), (100, 200));
    }

    #[test]
    fn ss_never_seen_socket_goes_to_its_listeners_single_owner_only() {
        let mut src = SsSource::without_destroy_events();
        read(&mut src, vec![], LISTENER);
        let s = read(&mut src, vec![event(0x77, 11, 22, 1)], LISTENER);
        assert_eq!(
            (s[0].pid, s[0].rx_bytes, s[0].tx_bytes),
            (Some(100), 10, 22)
        );
        // The listener is gone by this read: the last read's still counts.
        let s = read(&mut src, vec![event(0x78, 11, 22, 1)], "");
        assert_eq!(s[0].pid, Some(100));
        // Shared by two processes: no owner.
        let shared = "tcp LISTEN 0 8 0.0.0.0:8080 0.0.0.0:* \
            users:((\"a\",pid=100,fd=3),(\"b\",pid=101,fd=3)) ino:90 sk:2 <->\n\t cwnd:10\n";
        read(&mut src, vec![], shared);
        let s = read(&mut src, vec![event(0x79, 11, 22, 1)], shared);
        assert_eq!(s[0].pid, None);
        // Another port, or no peer: no owner.
        let mut other = event(0x7a, 11, 22, 1);
        other.local = "127.0.0.1:9090".parse().unwrap();
        let s = read(&mut src, vec![other], LISTENER);
        assert_eq!(s[0].pid, None);
        // A dual-stack listener's sockets have IPv4-mapped addresses.
        let v6 = "tcp LISTEN 0 8 [::ffff:127.0.0.1]:8080 *:* \
            users:((\"srv6\",pid=102,fd=3)) ino:92 sk:3 <->\n\t cwnd:10\n";
        read(&mut src, vec![], v6);
        let mut mapped = event(0x7b, 1, 2, 0);
        mapped.local = "[::ffff:127.0.0.1]:8080".parse().unwrap();
        let s = read(&mut src, vec![mapped], v6);
        assert_eq!(s[0].pid, Some(102));
    }

    #[test]
    fn ss_events_without_cookie_are_counted_as_lost_and_duplicates_dropped() {
        let mut src = SsSource::without_destroy_events();
        read(&mut src, vec![], ALIVE);
        let s = read(
            &mut src,
            vec![
                event(0, 5, 5, 0),
                event(0x1a, 101, 200, 1),
                event(0x1a, 101, 200, 1),
            ],
            "",
        );
        assert_eq!(s.len(), 1);
        assert_eq!(src.unusable_events, 1);
    }

    #[test]
    fn ss_socket_listed_without_owner_waits_for_it_and_an_orphan_keeps_its_owner() {
        let ownerless = "tcp ESTAB 0 0 127.0.0.1:40000 127.0.0.1:9999 ino:93 sk:1b <->\n\t \
            rtt:0.1/0.05 bytes_sent:70 bytes_received:30\n";
        let owned = "tcp ESTAB 0 0 127.0.0.1:40000 127.0.0.1:9999 \
            users:((\"cli\",pid=200,fd=4)) ino:93 sk:1b <->\n\t \
            rtt:0.1/0.05 bytes_sent:80 bytes_received:40\n";
        let orphan = "tcp FIN-WAIT-1 0 5 127.0.0.1:40000 127.0.0.1:9999 ino:0 sk:1b <->\n\t \
            rtt:0.1/0.05 bytes_sent:90 bytes_received:40\n";
        let mut src = SsSource::without_destroy_events();
        read(&mut src, vec![], "");
        // Brand new, owner not found by `ss -p`: its counters wait.
        let s = read(&mut src, vec![], ownerless);
        assert_eq!((s[0].pid, s[0].rx_bytes, s[0].tx_bytes), (None, 0, 0));
        let s = read(&mut src, vec![], owned);
        assert_eq!(
            (s[0].pid, s[0].rx_bytes, s[0].tx_bytes),
            (Some(200), 40, 80)
        );
        // Closed by its process, still sending: still its process's.
        let s = read(&mut src, vec![], orphan);
        assert_eq!((s[0].pid, s[0].tx_bytes), (Some(200), 90));
        // Never owned, past the hold: real counters, no owner.
        let mut src = SsSource::without_destroy_events();
        read(&mut src, vec![], "");
        for _ in 0..HOLD_OWNERLESS_READS {
            assert_eq!(read(&mut src, vec![], ownerless)[0].rx_bytes, 0);
        }
        let s = read(&mut src, vec![], ownerless);
        assert_eq!((s[0].pid, s[0].rx_bytes), (None, 30));
    }

    #[test]
    fn ss_time_wait_entry_with_a_new_cookie_is_matched_by_its_endpoints() {
        let mut src = SsSource::without_destroy_events();
        read(&mut src, vec![], LISTENER);
        // Never listed alive: the successor's cookie (0x99) is not the socket's.
        let tw = "tcp FIN-WAIT-2 0 0 127.0.0.1:8080 127.0.0.1:40000 ino:0 sk:99\n\t\n";
        let s = read(
            &mut src,
            vec![event(0x77, 11, 22, 0)],
            &format!("{LISTENER}{tw}"),
        );
        let ours: Vec<_> = s.iter().filter(|x| x.remote.is_some()).collect();
        assert_eq!(ours.len(), 1, "one row for the socket: {ours:?}");
        assert_eq!(
            (ours[0].pid, ours[0].rx_bytes),
            (Some(100), 11),
            "no FIN taken off"
        );
    }

    #[test]
    fn ss_udp_destroy_is_a_closed_sample_with_its_owner() {
        let mut src = SsSource::without_destroy_events();
        let udp = "udp UNCONN 0 0 127.0.0.1:5353 0.0.0.0:* \
            users:((\"dns\",pid=7,fd=3)) ino:5 sk:9 <->\n";
        read(&mut src, vec![], udp);
        let ev = DestroyEvent {
            protocol: Protocol::Udp,
            cookie: 9,
            local: "127.0.0.1:5353".parse().unwrap(),
            remote: None,
            rqueue: 0,
            tcp: None,
            successor_in_fin_wait2: false,
        };
        let s = read(&mut src, vec![ev], "");
        assert!(s[0].closed);
        assert_eq!(
            (s[0].pid, s[0].rx_bytes, s[0].tx_bytes, s[0].remote),
            (Some(7), 0, 0, None)
        );
    }

    #[test]
    fn ss_cgroup2_mount_from_mounts_text() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(cgroup2_mount("cgroup2 /a\\040b cgroup2 rw 0 0\n"), None);
        assert_eq!(cgroup2_mount(""), None);
        assert_eq!(cgroup_id(Path::new("/"), "/../etc"), None);
    }
}
