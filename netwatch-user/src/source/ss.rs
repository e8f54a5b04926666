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
//!   bytes moved. Bytes a socket moves between the last read and its close
//!   are never seen (a polling limit).
//!
//! A sample's [`SocketId`] is the kernel socket cookie (`sk:` from `-e`):
//! unique per socket for the system's uptime, never reused, and kept when a
//! TCP socket enters TIME-WAIT. The 5-tuple is reused by the next connection
//! between the same ports and the inode is 32 bits, recycled, and 0 in
//! TIME-WAIT, so they are only the fallback when an `ss` prints no cookie.

mod parse;

pub use parse::{
    normalize_state, parse_ss, LineError, Owner, ParseOutcome, ParsedSocket, Skipped,
    MAX_SKIP_REASONS,
};

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::source::{CountOrigin, SampleBatch, SocketId, SocketSample, SocketSource};
use crate::tool::{ToolCommand, ToolError};

/// The arguments the source passes to `ss`: TCP and UDP (`-tu`), numeric
/// (`-n`), all states (`-a`), owning processes (`-p`), `tcp_info` (`-i`) and
/// socket details (`-e`: inode, cookie, cgroup).
pub const SS_ARGS: &str = "-tunapie";

/// How long one `ss` run may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

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
            state: self.state.clone(),
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.name.clone()),
            cgroup_id: None,
            rx_bytes: self.rx_bytes(),
            tx_bytes: self.tx_bytes(counter),
            rtt_us: self.rtt_us,
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
    #[error("running `{program} {SS_ARGS}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("`{program} {SS_ARGS}` exited with {status}: {stderr}")]
    Failed {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{program} {SS_ARGS}` did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("reading the output of `{program} {SS_ARGS}`: {source}")]
    Read {
        program: String,
        #[source]
        source: io::Error,
    },
    /// Only with an output limit, which [`SsSource`] does not set.
    #[error("`{program} {SS_ARGS}` printed more than {limit_bytes} bytes, refusing to parse it")]
    TooMuchOutput { program: String, limit_bytes: u64 },
}

impl From<ToolError> for SsError {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::NotFound { program } => SsError::NotFound {
                program: program.display().to_string(),
            },
            ToolError::Spawn { program, source } => SsError::Spawn {
                program: program.display().to_string(),
                source,
            },
            ToolError::Wait { program, source } | ToolError::Read { program, source } => {
                SsError::Read {
                    program: program.display().to_string(),
                    source,
                }
            }
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
}

impl Default for SsSource {
    fn default() -> Self {
        Self::new()
    }
}

impl SsSource {
    /// A source running `ss` from `PATH`, with [`DEFAULT_TIMEOUT`], the
    /// [`TxCounter`] for the running kernel and the first cgroup v2 mount.
    pub fn new() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self {
            program: PathBuf::from("ss"),
            timeout: DEFAULT_TIMEOUT,
            tx_counter: TxCounter::for_kernel_release(release.trim()),
            cgroup2_root: std::fs::read_to_string("/proc/self/mounts")
                .ok()
                .and_then(|m| cgroup2_mount(&m)),
            lost_lines: 0,
            reads: 0,
        }
    }

    /// Run this program instead of `ss` from `PATH`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
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
    /// names are raw bytes and may be cut mid-character).
    pub fn run(&self) -> Result<String, SsError> {
        // No output limit: `ss` is read in full however many sockets the
        // host has.
        let out = ToolCommand::new(&self.program, &[SS_ARGS], self.timeout)
            .max_output_bytes(None)
            .run()?;
        if !out.status.success() {
            return Err(SsError::Failed {
                program: self.program.display().to_string(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The samples for one `ss` output, with cgroup ids resolved (one
    /// `stat` per distinct cgroup path per read).
    fn samples(&mut self, outcome: &ParseOutcome) -> Vec<SocketSample> {
        let mut cgroup_ids: HashMap<&str, Option<u64>> = HashMap::new();
        outcome
            .sockets
            .iter()
            .map(|sock| {
                let mut sample = sock.to_sample(self.tx_counter);
                if let (Some(root), Some(path)) = (&self.cgroup2_root, &sock.cgroup_path) {
                    sample.cgroup_id = *cgroup_ids
                        .entry(path.as_str())
                        .or_insert_with(|| cgroup_id(root, path));
                }
                sample
            })
            .collect()
    }
}

impl SocketSource for SsSource {
    fn name(&self) -> &'static str {
        "ss"
    }

    fn read(&mut self) -> anyhow::Result<SampleBatch> {
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
        self.reads += 1;
        let samples = self.samples(&outcome);
        Ok(SampleBatch {
            taken_at: Instant::now(),
            samples,
            lost_records: self.lost_lines,
            estimated: false,
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
