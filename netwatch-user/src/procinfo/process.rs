//! Who and what a pid is, for the optional fields of [`ProcessBandwidth`]:
//! parent, owner, CPU share, memory, state, start time and executable path,
//! from `/proc/<pid>/{stat,status,exe}`. It must never read or emit argv
//! (`/proc/<pid>/cmdline` can carry secrets and these rows leave the host),
//! and a pid that is gone only leaves its fields empty.
//!
//! Where it differs from netwatch-sdk 0.3.2 (one `ps` fork per poll): CPU %
//! is the share of one CPU the process used since the previous
//! [`ProcessMetaTracker::fill`] (like `top`, so a busy multi-threaded
//! process can exceed 100), not `ps`'s lifetime average; a reused pid (same
//! number, new start time) is not diffed against its predecessor; and
//! `user` is the effective uid's name from `/etc/passwd`, or the number.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use netwatch_common::wire::ProcessBandwidth;
use procfs::process::{Process, Stat};
use procfs::FromRead;

use super::round_to;

/// What one read of a pid found; `None` fields could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
struct ProcMeta {
    ppid: Option<u32>,
    euid: Option<u32>,
    /// `utime + stime`, in clock ticks.
    cpu_ticks: Option<u64>,
    /// When `stat` was read: the CPU interval's end, exact per pid.
    stat_read_at: Option<Instant>,
    /// Start time after boot, in clock ticks; with the pid, identifies the process.
    starttime: Option<u64>,
    rss_bytes: Option<u64>,
    vsz_bytes: Option<u64>,
    state: Option<char>,
    exe: Option<String>,
}

/// A pid's CPU counter at the previous fill.
#[derive(Debug, Clone, Copy)]
struct CpuSeen {
    starttime: u64,
    cpu_ticks: u64,
    at: Instant,
}

/// Fills process metadata into bandwidth rows, remembering each pid's CPU
/// counter from the previous call.
#[derive(Debug)]
pub struct ProcessMetaTracker {
    prev: HashMap<u32, CpuSeen>,
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

impl ProcessMetaTracker {
    pub fn new() -> Self {
        Self {
            prev: HashMap::new(),
            users: UserTable::default(),
            boot_time_secs: None,
            ticks_per_second: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
        }
    }

    /// Set every metadata field of each row that has a pid: `Some` where
    /// the pid's files could be read, `None` where not (the process exited,
    /// a kernel thread has no exe, permission denied). Rows without a pid
    /// are left as they are. `cpu_pct` is `None` the first time a process
    /// is seen. Pids not in `rows` are forgotten.
    pub fn fill(&mut self, rows: &mut [ProcessBandwidth]) {
        self.users.refresh("/etc/passwd");
        if self.boot_time_secs.is_none() {
            self.boot_time_secs = procfs::boot_time_secs()
                .map_err(|e| {
                    log::debug!("reading btime from /proc/stat: {e}; started_at left empty")
                })
                .ok();
        }
        let mut next: HashMap<u32, CpuSeen> = HashMap::new();
        let mut metas: HashMap<u32, (ProcMeta, Option<f64>)> = HashMap::new();
        for pid in rows.iter().filter_map(|r| r.pid) {
            if metas.contains_key(&pid) {
                continue;
            }
            let meta = read_meta(pid, self.page_size);
            let cpu = match (meta.starttime, meta.cpu_ticks, meta.stat_read_at) {
                (Some(starttime), Some(cpu_ticks), Some(at)) => {
                    let seen = CpuSeen {
                        starttime,
                        cpu_ticks,
                        at,
                    };
                    next.insert(pid, seen);
                    self.prev
                        .get(&pid)
                        .filter(|p| p.starttime == starttime)
                        .and_then(|p| {
                            cpu_pct(
                                p.cpu_ticks,
                                cpu_ticks,
                                self.ticks_per_second,
                                at.saturating_duration_since(p.at),
                            )
                        })
                }
                _ => None,
            };
            metas.insert(pid, (meta, cpu));
        }
        for row in rows.iter_mut() {
            let Some((m, cpu)) = row.pid.and_then(|pid| metas.get(&pid)) else {
                continue;
            };
            row.ppid = m.ppid;
            row.user = m.euid.map(|uid| self.users.name(uid));
            row.cpu_pct = *cpu;
            row.mem_rss_bytes = m.rss_bytes;
            row.mem_virt_bytes = m.vsz_bytes;
            row.state = m.state.map(String::from);
            row.started_at = match (self.boot_time_secs, m.starttime) {
                (Some(boot), Some(start)) => started_at(boot, start, self.ticks_per_second),
                _ => None,
            };
            row.cmd = m.exe.clone();
        }
        self.prev = next;
    }
}

/// Read `/proc/<pid>/{stat,status,exe}`; each file that cannot be read
/// leaves its fields `None`. Never touches `cmdline` or `environ`.
fn read_meta(pid: u32, page_size: u64) -> ProcMeta {
    let Ok(pid) = i32::try_from(pid) else {
        return ProcMeta::default();
    };
    let Ok(p) = Process::new(pid) else {
        return ProcMeta::default();
    };
    let mut m = ProcMeta::default();
    let mut raw = Vec::with_capacity(512);
    let stat = p
        .open_relative("stat")
        .ok()
        .and_then(|mut f| f.read_to_end(&mut raw).ok())
        .and_then(|_| parse_stat(&raw));
    m.stat_read_at = Some(Instant::now());
    if let Some(s) = stat {
        m.ppid = u32::try_from(s.ppid).ok();
        m.cpu_ticks = Some(s.utime.saturating_add(s.stime));
        m.starttime = Some(s.starttime);
        m.rss_bytes = Some(s.rss.saturating_mul(page_size));
        m.vsz_bytes = Some(s.vsize);
        m.state = Some(s.state);
    }
    m.euid = p.status().ok().map(|s| s.euid);
    m.exe = p.exe().ok().map(|e| e.to_string_lossy().into_owned());
    m
}

/// Parse `/proc/<pid>/stat`. procfs 0.17's parser slices around the
/// parentheses unchecked and panics on text the kernel never writes, so it
/// only gets text of the kernel's shape, `<pid> (<comm>) <state> …`: a
/// space before the first `(`, and a space after the last `)`.
fn parse_stat(raw: &[u8]) -> Option<Stat> {
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

    #[test]
    fn rows_without_pid_are_untouched_and_vanished_pids_are_forgotten() {
        let mut t = ProcessMetaTracker::new();
        let me = std::process::id();
        let mut no_pid = ProcessBandwidth::network_only("x".into(), None, 0, 0, 0.0, 0.0, 1);
        no_pid.user = Some("kept".into());
        let mut rows = vec![
            ProcessBandwidth::network_only("me".into(), Some(me), 0, 0, 0.0, 0.0, 1),
            no_pid,
        ];
        t.fill(&mut rows);
        assert_eq!(rows[1].user.as_deref(), Some("kept"));
        assert!(t.prev.contains_key(&me));
        t.fill(&mut rows[1..]);
        assert!(
            t.prev.is_empty(),
            "a pid absent from this call must be forgotten"
        );
    }

    #[test]
    fn the_same_pid_on_two_rows_gets_the_same_fields() {
        let mut t = ProcessMetaTracker::new();
        let me = std::process::id();
        let mut rows = vec![
            ProcessBandwidth::network_only("a".into(), Some(me), 0, 0, 0.0, 0.0, 1),
            ProcessBandwidth::network_only("b".into(), Some(me), 0, 0, 0.0, 0.0, 1),
        ];
        t.fill(&mut rows);
        std::thread::sleep(Duration::from_millis(20));
        t.fill(&mut rows);
        assert!(rows[0].cpu_pct.is_some());
        assert_eq!(rows[0].cpu_pct, rows[1].cpu_pct);
        assert_eq!(rows[0].cmd, rows[1].cmd);
    }

    #[test]
    fn a_reused_pid_is_not_diffed_against_its_predecessor() {
        let mut t = ProcessMetaTracker::new();
        let me = std::process::id();
        let mut rows = vec![ProcessBandwidth::network_only(
            "me".into(),
            Some(me),
            0,
            0,
            0.0,
            0.0,
            1,
        )];
        t.fill(&mut rows);
        // Pretend the previous holder of this pid started at another time.
        if let Some(p) = t.prev.get_mut(&me) {
            p.starttime = p.starttime.wrapping_add(1);
        }
        std::thread::sleep(Duration::from_millis(20));
        t.fill(&mut rows);
        assert_eq!(rows[0].cpu_pct, None);
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
        assert_eq!(read_meta(u32::MAX, 4096), ProcMeta::default());
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
