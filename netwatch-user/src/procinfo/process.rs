//! Who and what a pid is, for the optional fields of [`ProcessBandwidth`]:
//! parent, owner, CPU share, memory, state, start time and executable path,
//! from `/proc/<pid>/{stat,status,exe}`. It must never read or emit argv
//! (`/proc/<pid>/cmdline` can carry secrets and these rows leave the host),
//! must never give a row the metadata of a process other than the one whose
//! sockets the row counts, and a pid that is gone only leaves its fields empty.
//!
//! **Identity.** A process is its pid *and* its start time (`stat` field 22,
//! `starttime`, clock ticks after boot): the kernel reuses pids. Everything
//! is keyed by the pair. `stat` is read every fill (one small file per pid:
//! CPU, memory, state, parent, `comm` and the start time, read in one go),
//! and each use re-validates the start time against it. A row (pid, name) is
//! bound to the start time of the process that held the pid when the row
//! was first filled; when the pid later shows another start time, the row's
//! sockets were (at least partly) seen under the old process, so:
//! - the row keeps its bytes and name (they come from the source) but gets
//!   no metadata, never the new process's;
//! - unless the row's name is the new process's `comm` and the old process
//!   had another `comm`: then the row is the new process's own sockets (the
//!   sources group rows by (pid, name)) and is rebound to it.
//!
//! **What is left (the window).** The sources do not say the start time of
//! a socket's owner: `ss`/`/proc` resolve the owner moments before this
//! reads `stat`, but the eBPF maps hold the tgid from the last event, and
//! the kernel cannot cheaply add the start time there. So a row seen for
//! the *first* time is bound to whichever process holds the pid at that
//! fill: if the owner exited and its pid was reused between the socket's
//! last event and that first fill (less than one interval, and a reuse needs
//! the kernel to cycle through `pid_max` pids), the row gets the new process's
//! metadata once and stays bound to it. A binding is forgotten after
//! [`FORGET_BINDING_AFTER_FILLS`] fills without its row. Rows whose name
//! equals both processes' `comm` (the same program restarted on the same
//! pid) stay empty while bound to the old one. Start times have clock-tick
//! resolution (`CLK_TCK`, 10 ms): two processes started on one pid within one
//! tick cannot be told apart (the kernel would have to cycle through every
//! pid within 10 ms).
//!
//! **Cadence.** `status` (effective uid) and the `exe` link change only at
//! `setuid`/`exec`, so they are cached per (pid, start time) and re-read
//! every [`ProcessMetaTracker::refresh`] (default [`META_REFRESH`]) or at once
//! when `comm` changes (an `exec`). CPU % and memory come from `stat` each
//! fill, as the rows report them per interval.
//!
//! **Bounds.** Both tables are keyed by what any local user controls (pids
//! by forking, row names by naming threads): at most
//! [`MAX_CACHED_PROCESSES`] processes cached, [`MAX_BINDINGS`] bindings and
//! [`MAX_NAMES_PER_PID`] names per pid; past them the least recently seen
//! go first, counted in `netwatch_agent_table_dropped_total` (tables
//! `process_meta` and `process_bindings`).
//!
//! Where it differs from netwatch-sdk 0.3.2 (one `ps` fork per poll): CPU %
//! is the share of one CPU the process used since the previous
//! [`ProcessMetaTracker::fill`] (like `top`, so a busy multi-threaded
//! process can exceed 100), not `ps`'s lifetime average; a reused pid is
//! not diffed against its predecessor; and `user` is the effective uid's
//! name from `/etc/passwd`, or the number.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use netwatch_common::wire::ProcessBandwidth;
use procfs::process::{Process, Stat};
use procfs::FromRead;

use super::round_to;

/// How often `status` and `exe` of a live process are re-read.
pub const META_REFRESH: Duration = Duration::from_secs(30);

/// A process's cached metadata is dropped after this many fills without a
/// row for it (its CPU baseline with it).
pub const FORGET_META_AFTER_FILLS: u64 = 5;

/// A row's binding to its process is dropped after this many fills without
/// the row. Longer than the metadata: a socket that moves nothing for a
/// while must still not be handed to the next holder of its pid.
pub const FORGET_BINDING_AFTER_FILLS: u64 = 600;

/// Processes whose metadata is cached at most (about 200 bytes each: 3 MiB).
/// Past it, after a fill, the ones filled least recently are dropped (ties:
/// lowest pid first), counted as
/// `netwatch_agent_table_dropped_total{table="process_meta"}`; a dropped
/// process's `status`/`exe` are read again and its CPU % starts over at its
/// next row. A host rarely has this many processes moving bytes at once;
/// a fork flood of more only costs re-reads.
pub const MAX_CACHED_PROCESSES: usize = 16_384;

/// Row bindings kept at most (about 100 bytes each: 3 MiB), over all pids.
/// Past it, after a fill, the ones whose rows were seen least recently are
/// forgotten first (ties: lowest pid, then name), as
/// [`FORGET_BINDING_AFTER_FILLS`] would later, counted as
/// `netwatch_agent_table_dropped_total{table="process_bindings"}`.
pub const MAX_BINDINGS: usize = 32_768;

/// Row names bound per pid at most (the eBPF source names rows by thread,
/// and a process may name its threads at will). A new name past it makes
/// the pid's least recently seen binding forgotten (counted the same way).
pub const MAX_NAMES_PER_PID: usize = 64;

/// The caps of a [`ProcessMetaTracker`]'s tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaCaps {
    /// [`MAX_CACHED_PROCESSES`].
    pub processes: usize,
    /// [`MAX_BINDINGS`].
    pub bindings: usize,
    /// [`MAX_NAMES_PER_PID`].
    pub names_per_pid: usize,
}

impl Default for MetaCaps {
    fn default() -> Self {
        Self {
            processes: MAX_CACHED_PROCESSES,
            bindings: MAX_BINDINGS,
            names_per_pid: MAX_NAMES_PER_PID,
        }
    }
}

/// A process: its pid and its start time in clock ticks after boot.
pub type ProcessKey = (u32, u64);

/// What one read of `/proc/<pid>/stat` found.
#[derive(Debug, Clone, PartialEq)]
struct StatNow {
    /// Start time after boot, in clock ticks; with the pid, the process.
    starttime: u64,
    comm: String,
    ppid: Option<u32>,
    /// `utime + stime`, in clock ticks.
    cpu_ticks: u64,
    /// When `stat` was read: the CPU interval's end, exact per pid.
    read_at: Instant,
    rss_bytes: u64,
    vsz_bytes: u64,
    state: char,
}

/// What changes only at `exec`/`setuid`, cached per [`ProcessKey`].
#[derive(Debug, Clone, PartialEq)]
struct SlowMeta {
    euid: Option<u32>,
    exe: Option<String>,
    /// `comm` when these were read: another `comm` now means an `exec`.
    comm: String,
    read_at: Instant,
}

/// One process's cache entry.
#[derive(Debug, Clone)]
struct Cached {
    slow: SlowMeta,
    /// CPU counter and when it was read, at the previous fill.
    cpu: Option<(u64, Instant)>,
    last_fill: u64,
}

/// The process a row (pid, name) was first filled from.
#[derive(Debug, Clone)]
struct Binding {
    /// The row's name (its pid is the map key).
    name: String,
    starttime: u64,
    /// That process's `comm` at the time.
    comm: String,
    last_fill: u64,
}

/// Fills process metadata into bandwidth rows, caching it per process
/// (pid, start time) and remembering which process each row belongs to.
#[derive(Debug)]
pub struct ProcessMetaTracker {
    cache: HashMap<ProcessKey, Cached>,
    /// pid → the bindings of its rows (a few names at most; a list, so a
    /// lookup by `&str` allocates nothing).
    bound: HashMap<u32, Vec<Binding>>,
    caps: MetaCaps,
    /// Bindings forgotten for room during the current fill.
    bindings_dropped: u64,
    refresh: Duration,
    fills: u64,
    /// `status`+`exe` reads so far (for tests and the cost bench).
    slow_reads: u64,
    users: UserTable,
    boot_time_secs: Option<u64>,
    ticks_per_second: u64,
    page_size: u64,
}

impl Default for ProcessMetaTracker {
    fn default() -> Self {
        Self::new()
    }
}

/// What the rows of one pid get in one fill.
#[derive(Debug, Clone)]
struct Filled {
    stat: StatNow,
    slow: SlowMeta,
    cpu_pct: Option<f64>,
}

impl ProcessMetaTracker {
    pub fn new() -> Self {
        Self::with_refresh(META_REFRESH)
    }

    /// A tracker that re-reads `status`/`exe` every `refresh`.
    pub fn with_refresh(refresh: Duration) -> Self {
        Self {
            cache: HashMap::new(),
            bound: HashMap::new(),
            caps: MetaCaps::default(),
            bindings_dropped: 0,
            refresh,
            fills: 0,
            slow_reads: 0,
            users: UserTable::default(),
            boot_time_secs: None,
            ticks_per_second: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
        }
    }

    /// The same tracker with other caps on its tables.
    pub fn with_caps(mut self, caps: MetaCaps) -> Self {
        self.caps = caps;
        self
    }

    /// Processes whose metadata is cached now.
    pub fn cached_processes(&self) -> usize {
        self.cache.len()
    }

    /// Row bindings kept now, over all pids.
    pub fn bindings(&self) -> usize {
        self.bound.values().map(Vec::len).sum()
    }

    /// How often `status` and `exe` are re-read.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// `status`+`exe` reads so far.
    pub fn slow_reads(&self) -> u64 {
        self.slow_reads
    }

    /// Set every metadata field of each row that has a pid: `Some` where
    /// the pid's process is the row's and its files could be read, `None`
    /// where not (the process exited, the pid now belongs to another
    /// process, a kernel thread has no exe, permission denied). Rows
    /// without a pid are left as they are. `cpu_pct` is `None` the first
    /// time a process is seen.
    pub fn fill(&mut self, rows: &mut [ProcessBandwidth]) {
        self.fills += 1;
        let now_fill = self.fills;
        self.users.refresh("/etc/passwd");
        if self.boot_time_secs.is_none() {
            self.boot_time_secs = procfs::boot_time_secs()
                .map_err(|e| {
                    log::debug!("reading btime from /proc/stat: {e}; started_at left empty")
                })
                .ok();
        }
        // One `stat` read and one decision per pid, whatever its row count.
        let mut per_pid: HashMap<u32, Option<Filled>> = HashMap::new();
        for row in rows.iter_mut() {
            let Some(pid) = row.pid else { continue };
            if let std::collections::hash_map::Entry::Vacant(v) = per_pid.entry(pid) {
                v.insert(self.read_process(pid, now_fill));
            }
            let filled = per_pid.get(&pid).and_then(Option::as_ref);
            let Some(f) = filled else {
                clear_meta(row);
                continue;
            };
            if self.bind(pid, &row.process_name, &f.stat, now_fill) {
                self.set_meta(row, f);
            } else {
                clear_meta(row);
            }
        }
        self.cache
            .retain(|_, c| now_fill - c.last_fill < FORGET_META_AFTER_FILLS);
        for list in self.bound.values_mut() {
            list.retain(|b| now_fill - b.last_fill < FORGET_BINDING_AFTER_FILLS);
        }
        self.bound.retain(|_, list| !list.is_empty());
        self.enforce_caps();
    }

    /// Bring the cache and the bindings back under their caps, least
    /// recently filled first, and count what went.
    fn enforce_caps(&mut self) {
        let over = self.cache.len().saturating_sub(self.caps.processes);
        if over > 0 {
            let mut by_age: Vec<(u64, ProcessKey)> =
                self.cache.iter().map(|(k, c)| (c.last_fill, *k)).collect();
            by_age.sort_unstable();
            for (_, k) in by_age.into_iter().take(over) {
                self.cache.remove(&k);
            }
            crate::drops::dropped("process_meta", self.caps.processes, over as u64);
        }
        let over = self.bindings().saturating_sub(self.caps.bindings);
        if over > 0 {
            let mut by_age: Vec<(u64, u32, &str)> = self
                .bound
                .iter()
                .flat_map(|(pid, list)| list.iter().map(|b| (b.last_fill, *pid, b.name.as_str())))
                .collect();
            by_age.sort_unstable();
            let mut gone: HashMap<u32, Vec<String>> = HashMap::new();
            for (_, pid, name) in by_age.into_iter().take(over) {
                gone.entry(pid).or_default().push(name.to_string());
            }
            for (pid, names) in gone {
                if let Some(list) = self.bound.get_mut(&pid) {
                    list.retain(|b| !names.contains(&b.name));
                    if list.is_empty() {
                        self.bound.remove(&pid);
                    }
                }
            }
            self.bindings_dropped += over as u64;
        }
        let dropped = std::mem::take(&mut self.bindings_dropped);
        crate::drops::dropped("process_bindings", self.caps.bindings, dropped);
    }

    /// Whether row (pid, `name`) belongs to the process `stat` describes,
    /// binding it on first sight and rebinding it per the module's rules.
    fn bind(&mut self, pid: u32, name: &str, stat: &StatNow, now_fill: u64) -> bool {
        let list = self.bound.entry(pid).or_default();
        let Some(b) = list.iter_mut().find(|b| b.name == name) else {
            if list.len() >= self.caps.names_per_pid.max(1) {
                // The pid's least recently seen name goes (the first on a tie).
                let oldest = (0..list.len()).min_by_key(|&i| list[i].last_fill);
                if let Some(i) = oldest {
                    list.remove(i);
                    self.bindings_dropped += 1;
                }
            }
            list.push(Binding {
                name: name.to_string(),
                starttime: stat.starttime,
                comm: stat.comm.clone(),
                last_fill: now_fill,
            });
            return true;
        };
        b.last_fill = now_fill;
        if b.starttime == stat.starttime {
            // Same process; after an `exec` it has a new comm.
            if b.comm != stat.comm {
                b.comm.clone_from(&stat.comm);
            }
            return true;
        }
        // The pid was reused while this row was being reported.
        if name == stat.comm && b.comm != stat.comm {
            log::debug!(
                "pid {pid}: row `{}` moves from the process started at tick {} to the one started at {}",
                crate::text::Visible(name),
                b.starttime,
                stat.starttime
            );
            b.starttime = stat.starttime;
            b.comm = stat.comm.clone();
            return true;
        }
        log::debug!(
            "pid {pid} was reused (start tick {} -> {}): row `{}` gets no metadata",
            b.starttime,
            stat.starttime,
            crate::text::Visible(name)
        );
        false
    }

    /// Read `stat`, and `status`/`exe` when the cache for this (pid, start
    /// time) is missing or due; compute CPU % against this process's own
    /// previous fill. `None` when `stat` cannot be read (the pid is gone).
    fn read_process(&mut self, pid: u32, now_fill: u64) -> Option<Filled> {
        let stat = read_stat(pid, self.page_size)?;
        let key = (pid, stat.starttime);
        let due = |c: &Cached| {
            c.slow.comm != stat.comm
                || stat.read_at.saturating_duration_since(c.slow.read_at) >= self.refresh
        };
        let slow = match self.cache.get(&key) {
            Some(c) if !due(c) => None,
            _ => Some(read_slow(pid, &stat)),
        };
        if slow.is_some() {
            self.slow_reads += 1;
        }
        let tps = self.ticks_per_second;
        let entry = match (self.cache.entry(key), slow) {
            (std::collections::hash_map::Entry::Occupied(mut o), s) => {
                if let Some(s) = s {
                    o.get_mut().slow = s;
                }
                o.into_mut()
            }
            (std::collections::hash_map::Entry::Vacant(v), s) => v.insert(Cached {
                slow: s.unwrap_or_else(|| read_slow(pid, &stat)),
                cpu: None,
                last_fill: now_fill,
            }),
        };
        let cpu_pct = entry.cpu.and_then(|(ticks, at)| {
            cpu_pct(
                ticks,
                stat.cpu_ticks,
                tps,
                stat.read_at.saturating_duration_since(at),
            )
        });
        entry.cpu = Some((stat.cpu_ticks, stat.read_at));
        entry.last_fill = now_fill;
        let slow = entry.slow.clone();
        Some(Filled {
            stat,
            slow,
            cpu_pct,
        })
    }

    fn set_meta(&self, row: &mut ProcessBandwidth, f: &Filled) {
        row.ppid = f.stat.ppid;
        row.user = f.slow.euid.map(|uid| self.users.name(uid));
        row.cpu_pct = f.cpu_pct;
        row.mem_rss_bytes = Some(f.stat.rss_bytes);
        row.mem_virt_bytes = Some(f.stat.vsz_bytes);
        row.state = Some(String::from(f.stat.state));
        row.started_at = self
            .boot_time_secs
            .and_then(|boot| started_at(boot, f.stat.starttime, self.ticks_per_second));
        row.cmd = f.slow.exe.clone();
    }
}

/// Every metadata field empty.
fn clear_meta(row: &mut ProcessBandwidth) {
    row.ppid = None;
    row.user = None;
    row.cpu_pct = None;
    row.mem_rss_bytes = None;
    row.mem_virt_bytes = None;
    row.state = None;
    row.started_at = None;
    row.cmd = None;
}

/// Read `/proc/<pid>/stat`; `None` when the pid is gone or the text is not
/// of the kernel's shape.
fn read_stat(pid: u32, page_size: u64) -> Option<StatNow> {
    let mut raw = Vec::with_capacity(512);
    let path = format!("/proc/{pid}/stat");
    fs::File::open(path).ok()?.read_to_end(&mut raw).ok()?;
    let read_at = Instant::now();
    let s = parse_stat(&raw)?;
    Some(StatNow {
        starttime: s.starttime,
        comm: s.comm,
        ppid: u32::try_from(s.ppid).ok(),
        cpu_ticks: s.utime.saturating_add(s.stime),
        read_at,
        rss_bytes: s.rss.saturating_mul(page_size),
        vsz_bytes: s.vsize,
        state: s.state,
    })
}

/// The longest `cmd` a row carries, in characters. Any user can run a
/// program from a path of 4095 bytes, each a control character that JSON
/// writes as 6 (`\u0001`): uncut, one such row is 25 KB, and a thousand
/// processes of one such program would take a snapshot past the ingest's
/// 5 MB limit. Cut, a row stays under 2 KB of JSON whatever the names.
pub const MAX_CMD_CHARS: usize = 256;

/// `exe` as a row's `cmd`: whole when it has at most [`MAX_CMD_CHARS`]
/// characters, else `…` and its last `MAX_CMD_CHARS - 1` characters (the
/// end names the program).
fn cmd_of(exe: &str) -> String {
    let n = exe.chars().count();
    if n <= MAX_CMD_CHARS {
        return exe.to_string();
    }
    let tail: String = exe.chars().skip(n - (MAX_CMD_CHARS - 1)).collect();
    format!("…{tail}")
}

/// Read `/proc/<pid>/{status,exe}`; each file that cannot be read leaves
/// its field `None`. Never touches `cmdline` or `environ`. The result is
/// for the process `stat` described only if the pid still has its start
/// time afterwards: otherwise the pid was reused mid-read and nothing is kept.
fn read_slow(pid: u32, stat: &StatNow) -> SlowMeta {
    let empty = SlowMeta {
        euid: None,
        exe: None,
        comm: stat.comm.clone(),
        read_at: stat.read_at,
    };
    let Ok(ipid) = i32::try_from(pid) else {
        return empty;
    };
    let Ok(p) = Process::new(ipid) else {
        return empty;
    };
    let euid = p.status().ok().map(|s| s.euid);
    let exe = p.exe().ok().map(|e| cmd_of(&e.to_string_lossy()));
    // Re-validate: the same process still holds the pid.
    let same = read_stat(pid, 1).is_some_and(|s| s.starttime == stat.starttime);
    if !same {
        return empty;
    }
    SlowMeta {
        euid,
        exe,
        comm: stat.comm.clone(),
        read_at: stat.read_at,
    }
}

/// Parse `/proc/<pid>/stat`. procfs 0.17's parser slices around the
/// parentheses unchecked and panics on text the kernel never writes, so it
/// only gets text of the kernel's shape, `<pid> (<comm>) <state> …`: a
/// space before the first `(`, and a space after the last `)`.
pub(crate) fn parse_stat(raw: &[u8]) -> Option<Stat> {
    let text = String::from_utf8_lossy(raw);
    let t = text.trim();
    let open = t.find('(')?;
    let close = t.rfind(')')?;
    let b = t.as_bytes();
    let shaped = open >= 1
        && b.get(open - 1) == Some(&b' ')
        && close > open
        && b.get(close + 1) == Some(&b' ');
    if !shaped {
        return None;
    }
    Stat::from_read(t.as_bytes()).ok()
}

/// CPU share of one CPU, in percent rounded to 0.1: ticks used over the
/// wall time elapsed. `None` without elapsed time or a tick rate; a counter
/// that went backwards gives `None` rather than a bogus figure.
pub fn cpu_pct(
    prev_ticks: u64,
    cur_ticks: u64,
    ticks_per_second: u64,
    wall: Duration,
) -> Option<f64> {
    let secs = wall.as_secs_f64();
    if secs <= 0.0 || ticks_per_second == 0 || cur_ticks < prev_ticks {
        return None;
    }
    let cpu_secs = (cur_ticks - prev_ticks) as f64 / ticks_per_second as f64;
    Some(round_to(cpu_secs / secs * 100.0, 1))
}

/// Wall-clock start: boot time plus `starttime` ticks (millisecond precision).
pub fn started_at(
    boot_time_secs: u64,
    starttime_ticks: u64,
    ticks_per_second: u64,
) -> Option<DateTime<Utc>> {
    if ticks_per_second == 0 {
        return None;
    }
    let after_boot_ms = u128::from(starttime_ticks) * 1000 / u128::from(ticks_per_second);
    let ms = u128::from(boot_time_secs)
        .checked_mul(1000)?
        .checked_add(after_boot_ms)?;
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// uid → user name from `/etc/passwd`, re-read when the file changes.
/// `/etc/passwd` rather than NSS (`getpwuid`): no `unsafe`, and it works in
/// static builds; users only known to LDAP/SSSD show as their number.
#[derive(Debug, Default)]
struct UserTable {
    names: HashMap<u32, String>,
    /// (mtime, len) of the file the table was read from.
    version: Option<(SystemTime, u64)>,
}

impl UserTable {
    fn refresh(&mut self, path: &str) {
        let version = fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        if version.is_some() && version == self.version {
            return;
        }
        self.names = fs::read_to_string(path)
            .map_err(|e| log::debug!("reading {path}: {e}; users shown as uids"))
            .map(|t| parse_passwd(&t))
            .unwrap_or_default();
        self.version = version;
    }

    fn name(&self, uid: u32) -> String {
        self.names
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }
}

/// uid → name from passwd(5) text (`name:x:uid:gid:…`). Malformed lines and
/// comments are skipped; the first entry for a uid wins, as getpwuid does.
pub fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(_pw), Some(uid)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        if let Ok(uid) = uid.parse::<u32>() {
            out.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_pct_exact_values() {
        // 50 ticks at 100 Hz = 0.5 s of CPU over 2 s.
        assert_eq!(cpu_pct(100, 150, 100, Duration::from_secs(2)), Some(25.0));
        // Two threads busy for a whole second: 200 %.
        assert_eq!(cpu_pct(0, 200, 100, Duration::from_secs(1)), Some(200.0));
        assert_eq!(cpu_pct(0, 1, 100, Duration::from_secs(3)), Some(0.3));
        assert_eq!(cpu_pct(7, 7, 100, Duration::from_secs(1)), Some(0.0));
    }

    #[test]
    fn cpu_pct_none_without_time_ticks_or_with_a_backwards_counter() {
        assert_eq!(cpu_pct(0, 10, 100, Duration::ZERO), None);
        assert_eq!(cpu_pct(0, 10, 0, Duration::from_secs(1)), None);
        assert_eq!(cpu_pct(10, 5, 100, Duration::from_secs(1)), None);
    }

    #[test]
    fn started_at_is_boot_plus_ticks() {
        let t = started_at(1_700_000_000, 12_345, 100);
        assert_eq!(t.map(|t| t.timestamp_millis()), Some(1_700_000_123_450));
        assert_eq!(started_at(1, 1, 0), None);
        assert_eq!(started_at(u64::MAX, u64::MAX, 1), None);
    }

    #[test]
    fn passwd_parsing() {
        let text = "root:x:0:0:root:/root:/bin/bash\n\
                    # comment:x:5:5\n\
                    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
                    broken line\n\
                    :x:7:7::/:/bin/false\n\
                    bad:x:notanumber:0::/:/bin/false\n\
                    toor:x:0:0:second root:/root:/bin/sh\n";
        let m = parse_passwd(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&0).map(String::as_str), Some("root"));
        assert_eq!(m.get(&1).map(String::as_str), Some("daemon"));
    }

    #[test]
    fn user_table_falls_back_to_the_number_and_rereads_a_changed_file() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("passwd");
        let p = path.to_string_lossy().into_owned();
        let mut t = UserTable::default();
        t.refresh(&p);
        assert_eq!(t.name(1000), "1000");
        fs::write(&path, "alice:x:1000:1000::/home/alice:/bin/sh\n")?;
        t.refresh(&p);
        assert_eq!(t.name(1000), "alice");
        fs::write(
            &path,
            "bob:x:1001:1001::/home/bob:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )?;
        t.refresh(&p);
        assert_eq!(t.name(1001), "bob");
        Ok(())
    }

    impl ProcessMetaTracker {
        fn binding(&self, pid: u32, name: &str) -> Option<&Binding> {
            self.bound.get(&pid)?.iter().find(|b| b.name == name)
        }
    }

    fn row(name: &str, pid: Option<u32>) -> ProcessBandwidth {
        ProcessBandwidth::network_only(name.into(), pid, 0, 0, 0.0, 0.0, 1)
    }

    fn my_stat() -> StatNow {
        match read_stat(std::process::id(), 4096) {
            Some(s) => s,
            None => panic!("/proc/self/stat must be readable"),
        }
    }

    #[test]
    fn rows_without_pid_are_untouched_and_vanished_pids_are_forgotten() {
        let mut t = ProcessMetaTracker::new();
        let me = std::process::id();
        let mut no_pid = row("x", None);
        no_pid.user = Some("kept".into());
        let mut rows = vec![row("me", Some(me)), no_pid];
        t.fill(&mut rows);
        assert_eq!(rows[1].user.as_deref(), Some("kept"));
        let key = (me, my_stat().starttime);
        assert!(t.cache.contains_key(&key));
        for _ in 0..FORGET_META_AFTER_FILLS {
            t.fill(&mut rows[1..]);
        }
        assert!(
            t.cache.is_empty(),
            "a process without rows for {FORGET_META_AFTER_FILLS} fills must be forgotten"
        );
        assert!(t.binding(me, "me").is_some());
    }

    /// Real processes that stay alive for the test (`sleep`), killed on drop.
    struct Sleepers(Vec<std::process::Child>);

    impl Drop for Sleepers {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    #[test]
    fn a_hostile_exe_path_is_cut_so_the_row_stays_small() {
        // A program run from a path of 3,800 bytes, all but the slashes and
        // its name control characters (any user can make one).
        let dir = tempfile::tempdir().expect("tempdir");
        let mut deep = dir.path().to_path_buf();
        let component: String = "\u{1}\u{1b}".repeat(125);
        while deep.as_os_str().len() < 3_500 {
            deep.push(&component);
        }
        std::fs::create_dir_all(&deep).expect("a deep directory");
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("a sleep binary");
        let exe = deep.join("hostile-sleep");
        std::fs::copy(sleep, &exe).expect("copying sleep");
        let long = exe.to_string_lossy().into_owned();
        assert!(long.chars().count() > 3_500);
        let child = std::process::Command::new(&exe)
            .arg("60")
            .spawn()
            .expect("running sleep from the deep path");
        let sleepers = Sleepers(vec![child]);
        let pid = sleepers.0[0].id();
        let mut t = ProcessMetaTracker::new();
        let comm = read_stat(pid, 4096).expect("its stat").comm;
        let mut rows = vec![row(&comm, Some(pid))];
        t.fill(&mut rows);
        let cmd = rows[0].cmd.clone().expect("its exe");
        assert_eq!(cmd.chars().count(), MAX_CMD_CHARS);
        let tail: String = long.chars().skip(long.chars().count() - 255).collect();
        assert_eq!(cmd, format!("…{tail}"));
        assert!(cmd.ends_with("/hostile-sleep"));
        let json = serde_json::to_string(&rows[0]).expect("json");
        assert!(json.len() < 2_048, "{} bytes", json.len());
        // A usual path is whole.
        assert_eq!(cmd_of("/usr/bin/curl"), "/usr/bin/curl");
        let exact: String = "a".repeat(MAX_CMD_CHARS);
        assert_eq!(cmd_of(&exact), exact);
    }

    #[test]
    fn caps_hold_under_a_flood_of_processes_and_thread_names_and_count_drops() {
        // One test for all three tables: the drop counters are process-wide.
        let caps = MetaCaps {
            processes: 20,
            bindings: 25,
            names_per_pid: 16,
        };
        let (meta0, bind0) = (
            crate::drops::total("process_meta"),
            crate::drops::total("process_bindings"),
        );
        let sleepers = Sleepers(
            (0..30)
                .map(|_| {
                    std::process::Command::new("sleep")
                        .arg("60")
                        .spawn()
                        .expect("running sleep")
                })
                .collect(),
        );
        let pids: Vec<u32> = sleepers.0.iter().map(|c| c.id()).collect();

        // 30 live processes, one row each: 20 cached, 25 bound.
        let mut t = ProcessMetaTracker::new().with_caps(caps);
        let mut rows: Vec<ProcessBandwidth> = pids.iter().map(|&p| row("sleep", Some(p))).collect();
        t.fill(&mut rows);
        assert!(rows.iter().all(|r| r.state.is_some()), "every row filled");
        assert_eq!(t.cached_processes(), 20);
        assert_eq!(t.bindings(), 25);
        assert_eq!(crate::drops::total("process_meta") - meta0, 10);
        assert_eq!(crate::drops::total("process_bindings") - bind0, 5);
        // The lowest pids went on the tie (all filled in this fill).
        let mut sorted = pids.clone();
        sorted.sort_unstable();
        assert!(sorted[..5].iter().all(|&p| t.binding(p, "sleep").is_none()));
        assert!(sorted[5..].iter().all(|&p| t.binding(p, "sleep").is_some()));

        // The least recently filled go first: a fill of the 10 lowest pids
        // (dropped above) brings them back, and the others filled longest
        // ago (the next lowest, on the tie) make room.
        let cached = |t: &ProcessMetaTracker, p: u32| {
            let start = read_stat(p, 4096).map(|s| s.starttime);
            start.is_some_and(|s| t.cache.contains_key(&(p, s)))
        };
        let mut low: Vec<ProcessBandwidth> = sorted[..10]
            .iter()
            .map(|&p| row("sleep", Some(p)))
            .collect();
        t.fill(&mut low);
        assert!(low.iter().all(|r| r.state.is_some()));
        assert_eq!(t.cached_processes(), 20);
        assert!(sorted[..10].iter().all(|&p| cached(&t, p)));
        assert!(sorted[10..20].iter().all(|&p| !cached(&t, p)));
        assert!(sorted[20..].iter().all(|&p| cached(&t, p)));
        assert_eq!(t.bindings(), 25);
        assert!(sorted[..10]
            .iter()
            .all(|&p| t.binding(p, "sleep").is_some()));
        assert!(sorted[10..15]
            .iter()
            .all(|&p| t.binding(p, "sleep").is_none()));
        assert!(sorted[15..]
            .iter()
            .all(|&p| t.binding(p, "sleep").is_some()));
        assert_eq!(crate::drops::total("process_meta") - meta0, 20);
        assert_eq!(crate::drops::total("process_bindings") - bind0, 10);

        // One process under 100 thread names (the eBPF source's rows):
        // at most 16 bound to its pid, every row still filled.
        let me = std::process::id();
        let mut t = ProcessMetaTracker::new().with_caps(caps);
        let mut named: Vec<ProcessBandwidth> = (0..100)
            .map(|i| row(&format!("thread-{i}"), Some(me)))
            .collect();
        let before = crate::drops::total("process_bindings");
        t.fill(&mut named);
        assert!(named.iter().all(|r| r.state.is_some()));
        assert_eq!(t.bindings(), 16);
        assert_eq!(crate::drops::total("process_bindings") - before, 84);
        assert!(t.binding(me, "thread-99").is_some());
        assert!(t.binding(me, "thread-83").is_none());
        drop(sleepers);
    }

    #[test]
    fn a_binding_is_forgotten_only_after_its_row_is_long_gone() {
        let me = std::process::id();
        let mut t = ProcessMetaTracker::new();
        t.fill(&mut [row("me", Some(me))]);
        for _ in 1..FORGET_BINDING_AFTER_FILLS {
            t.fill(&mut []);
        }
        assert!(t.binding(me, "me").is_some());
        t.fill(&mut []);
        assert!(t.binding(me, "me").is_none());
        assert!(t.bound.is_empty());
    }

    #[test]
    fn the_same_pid_on_two_rows_gets_the_same_fields() {
        let mut t = ProcessMetaTracker::new();
        let me = std::process::id();
        let mut rows = vec![row("a", Some(me)), row("b", Some(me))];
        t.fill(&mut rows);
        std::thread::sleep(Duration::from_millis(20));
        t.fill(&mut rows);
        assert!(rows[0].cpu_pct.is_some());
        assert_eq!(rows[0].cpu_pct, rows[1].cpu_pct);
        assert_eq!(rows[0].cmd, rows[1].cmd);
        assert!(rows[0].cmd.is_some());
    }

    /// Plant a predecessor of this process on our own pid: another start
    /// time, another exe, user and comm, cached and bound to row `name`.
    fn plant_predecessor(t: &mut ProcessMetaTracker, name: &str, comm: &str) -> u64 {
        let me = std::process::id();
        let now = my_stat();
        let old_start = now.starttime.wrapping_sub(1);
        t.cache.insert(
            (me, old_start),
            Cached {
                slow: SlowMeta {
                    euid: Some(4242),
                    exe: Some("/old/exe".into()),
                    comm: comm.into(),
                    read_at: now.read_at,
                },
                cpu: Some((0, now.read_at)),
                last_fill: t.fills,
            },
        );
        t.bound.entry(me).or_default().push(Binding {
            name: name.into(),
            starttime: old_start,
            comm: comm.into(),
            last_fill: t.fills,
        });
        old_start
    }

    #[test]
    fn a_reused_pid_gives_the_new_metadata_and_never_the_old() {
        let me = std::process::id();
        let my_comm = my_stat().comm;
        let my_exe = std::env::current_exe()
            .map(|e| e.to_string_lossy().into_owned())
            .ok();
        let mut t = ProcessMetaTracker::new();
        plant_predecessor(&mut t, "old-name", "old-name");

        // A row first seen now is this process's: fresh metadata, never
        // the cached predecessor's, and no CPU diff against it.
        let mut rows = vec![row(&my_comm, Some(me))];
        t.fill(&mut rows);
        assert_eq!(rows[0].cmd, my_exe);
        assert_ne!(rows[0].user.as_deref(), Some("4242"));
        assert_eq!(rows[0].cpu_pct, None);
        assert!(rows[0].started_at.is_some());
        // ...and the predecessor's cache entry stays its own.
        let old = t.cache.get(&(me, my_stat().starttime.wrapping_sub(1)));
        assert_eq!(
            old.and_then(|c| c.slow.exe.clone()).as_deref(),
            Some("/old/exe")
        );

        // The row the predecessor owned: the pid is someone else's now, so
        // no metadata at all, on this fill and the next.
        let mut stale = vec![row("old-name", Some(me))];
        stale[0].cmd = Some("garbage".into());
        for _ in 0..2 {
            t.fill(&mut stale);
            assert_eq!(stale[0], row("old-name", Some(me)));
        }
    }

    #[test]
    fn a_row_named_like_the_new_process_is_rebound_to_it() {
        let me = std::process::id();
        let my_comm = my_stat().comm;
        let mut t = ProcessMetaTracker::new();
        // The predecessor had another comm, and the row carries ours: the
        // row is this process's own sockets (rows are per pid and name).
        plant_predecessor(&mut t, &my_comm, "old-name");
        let mut rows = vec![row(&my_comm, Some(me))];
        t.fill(&mut rows);
        assert!(rows[0].cmd.is_some() && rows[0].started_at.is_some());
        assert_eq!(
            t.binding(me, &my_comm).map(|b| b.starttime),
            Some(my_stat().starttime)
        );
    }

    #[test]
    fn same_name_on_both_sides_of_a_reuse_stays_empty() {
        let me = std::process::id();
        let my_comm = my_stat().comm;
        let mut t = ProcessMetaTracker::new();
        // The same program restarted on the same pid: which one the row's
        // sockets belong to is unknowable, so nothing is claimed.
        plant_predecessor(&mut t, &my_comm, &my_comm);
        let mut rows = vec![row(&my_comm, Some(me))];
        t.fill(&mut rows);
        assert_eq!(rows[0], row(&my_comm, Some(me)));
    }

    #[test]
    fn status_and_exe_are_read_once_per_refresh_and_again_after_exec() {
        let me = std::process::id();
        let mut t = ProcessMetaTracker::with_refresh(Duration::from_secs(3600));
        let mut rows = vec![row("me", Some(me)), row("me too", Some(me))];
        for _ in 0..5 {
            t.fill(&mut rows);
        }
        assert_eq!(t.slow_reads(), 1, "one status+exe read for five fills");
        assert!(rows[0].mem_rss_bytes.is_some() && rows[1].cmd.is_some());
        // A comm change is an exec: read again at once.
        let key = (me, my_stat().starttime);
        if let Some(c) = t.cache.get_mut(&key) {
            c.slow.comm = "before-exec".into();
        }
        t.fill(&mut rows);
        assert_eq!(t.slow_reads(), 2);
        // Refresh due: read again.
        let mut t = ProcessMetaTracker::with_refresh(Duration::ZERO);
        t.fill(&mut rows);
        t.fill(&mut rows);
        assert_eq!(t.slow_reads(), 2);
    }

    #[test]
    fn stat_guard_accepts_kernel_text_and_rejects_what_procfs_would_panic_on() {
        let real = "4242 (my (weird) comm) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 12345 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(real.as_bytes());
        assert_eq!(
            s.as_ref().map(|s| (s.pid, s.comm.as_str(), s.state)),
            Some((4242, "my (weird) comm", 'S'))
        );
        assert_eq!(
            s.as_ref()
                .map(|s| (s.ppid, s.utime + s.stime, s.starttime, s.vsize, s.rss)),
            Some((1, 10, 12345, 1000000, 250))
        );
        for bad in ["(x) S 1", "é(x) S 1", "1 )x( S 1", "1 (x)é", "1 (x)", ""] {
            assert!(parse_stat(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn pid_beyond_i32_reads_nothing() {
        assert_eq!(read_stat(u32::MAX, 4096), None);
        let mut t = ProcessMetaTracker::new();
        let mut rows = vec![row("x", Some(u32::MAX))];
        rows[0].cmd = Some("stale".into());
        t.fill(&mut rows);
        assert_eq!(rows[0], row("x", Some(u32::MAX)));
    }

    proptest::proptest! {
        #[test]
        fn prop_passwd_parser_never_panics(s in "(.{0,80}\n){0,6}") {
            let _ = parse_passwd(&s);
        }

        #[test]
        fn prop_proc_pid_stat_and_status_parsers_never_panic(s in "(.{0,200}\n){0,4}") {
            use procfs::FromBufRead;
            let _ = parse_stat(s.as_bytes());
            let _ = procfs::process::Status::from_buf_read(s.as_bytes());
        }

        /// Text near the kernel's shape, where procfs's own slicing breaks.
        #[test]
        fn prop_stat_guard_never_panics_near_the_kernel_shape(
            s in "[0-9é ]{0,3}[( é)]{0,3}[a-zé() ]{0,8}[) é]{0,3}[RSé]?( [0-9-]{1,4}){0,60}"
        ) {
            let _ = parse_stat(s.as_bytes());
        }

        #[test]
        fn prop_started_at_never_panics(b: u64, s: u64, tps: u64) {
            let _ = started_at(b, s, tps);
        }
    }
}
