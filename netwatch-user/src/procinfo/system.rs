//! Host CPU, memory, load and swap for the snapshot's [`SystemMetric`]. CPU
//! utilisation is the busy share of the jiffies `/proc/stat` counted since
//! the previous call: it must never sleep to measure (the agent's tick is
//! the interval), and an unreadable file only blanks its own fields.
//!
//! Where it differs from netwatch-sdk 0.3.2: `iowait` counts as idle and
//! `guest`/`guest_nice` are left out of the total (the kernel already counts
//! them inside `user`/`nice`), as top and htop do; the SDK counted guest
//! time twice and iowait as busy. An interval with no jiffies gives `None`
//! rather than a made-up 0 %.

use std::fs;

use netwatch_common::wire::SystemMetric;
use procfs::{CpuTime, Current, CurrentSI, FromBufRead, KernelStats, LoadAverage, Meminfo};

use super::round_to;

/// Jiffies one CPU (or all of them) spent idle and in total, since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// `idle + iowait`.
    pub idle: u64,
    /// `user + nice + system + idle + iowait + irq + softirq + steal`.
    pub total: u64,
}

impl From<&CpuTime> for CpuTicks {
    fn from(c: &CpuTime) -> Self {
        let iowait = c.iowait.unwrap_or(0);
        let idle = c.idle.saturating_add(iowait);
        let total = [
            c.user,
            c.nice,
            c.system,
            c.irq.unwrap_or(0),
            c.softirq.unwrap_or(0),
            c.steal.unwrap_or(0),
        ]
        .iter()
        .fold(idle, |acc, &v| acc.saturating_add(v));
        Self { idle, total }
    }
}

/// Busy percentage (0–100, rounded to 0.1 like the SDK) between two reads;
/// `None` when no jiffies elapsed. Counters that went backwards (the kernel
/// documents that iowait can) clamp to zero instead of underflowing.
pub fn cpu_pct(before: CpuTicks, after: CpuTicks) -> Option<f64> {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return None;
    }
    let idle = after.idle.saturating_sub(before.idle).min(total);
    Some(round_to((total - idle) as f64 / total as f64 * 100.0, 1))
}

/// Per-core percentages; `None` when the number of cores changed between
/// the reads (a CPU went on- or offline: `/proc/stat` lists online CPUs
/// only, so rows can no longer be matched) or no jiffies elapsed.
pub fn per_core_pct(before: &[CpuTicks], after: &[CpuTicks]) -> Option<Vec<f64>> {
    if before.len() != after.len() || after.is_empty() {
        return None;
    }
    before
        .iter()
        .zip(after)
        .map(|(&b, &a)| cpu_pct(b, a))
        .collect()
}

/// Memory in bytes: (total, used, available), used = total − available.
/// Without `MemAvailable` (kernels before 3.14) available is
/// `MemFree + Buffers + Cached`, as in the SDK.
pub fn memory(m: &Meminfo) -> (u64, u64, u64) {
    let available = m.mem_available.unwrap_or_else(|| {
        m.mem_free
            .saturating_add(m.buffers)
            .saturating_add(m.cached)
    });
    (
        m.mem_total,
        m.mem_total.saturating_sub(available),
        available,
    )
}

/// Parse `/proc/meminfo` text. procfs 0.17 slices each key's last byte off
/// unchecked and panics on a key ending in a multi-byte character; the
/// kernel writes ASCII only, so anything else is refused up front.
pub fn parse_meminfo(text: &str) -> Result<Meminfo, String> {
    if !text.is_ascii() {
        return Err("not ASCII, so not what the kernel writes".into());
    }
    // procfs 0.17 also multiplies each value by its unit unchecked (a panic
    // with overflow checks, a wrapped figure without): refuse a value whose
    // bytes do not fit in 64 bits (found by the fuzz target `proc_files`).
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(field), Some(value), Some(unit)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let scale: u64 = match unit {
            "KiB" | "kiB" | "kB" | "KB" => 1 << 10,
            "MiB" | "miB" | "MB" | "mB" => 1 << 20,
            "GiB" | "giB" | "GB" | "gB" => 1 << 30,
            _ => 1,
        };
        if value
            .parse::<u64>()
            .is_ok_and(|v| v.checked_mul(scale).is_none())
        {
            return Err(format!(
                "{field} {value} {unit} is more bytes than 64 bits hold"
            ));
        }
    }
    Meminfo::from_buf_read(text.as_bytes()).map_err(|e| e.to_string())
}

/// Read and parse `/proc/meminfo`.
pub(crate) fn read_meminfo() -> Result<Meminfo, String> {
    let text =
        fs::read_to_string("/proc/meminfo").map_err(|e| format!("reading /proc/meminfo: {e}"))?;
    parse_meminfo(&text).map_err(|e| format!("parsing /proc/meminfo: {e}"))
}

/// Swap in bytes: (total, used).
pub fn swap(m: &Meminfo) -> (u64, u64) {
    (m.swap_total, m.swap_total.saturating_sub(m.swap_free))
}

/// Samples [`SystemMetric`]s, keeping the previous `/proc/stat` read for CPU.
#[derive(Debug, Default)]
pub struct SystemTracker {
    prev_total: Option<CpuTicks>,
    prev_cores: Vec<CpuTicks>,
}

impl SystemTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// One metric. The first call has no CPU figures (`None`); each later
    /// call covers the time since the previous one. Fields whose file could
    /// not be read are `None` (logged at debug level).
    pub fn sample(&mut self) -> SystemMetric {
        let (cpu_usage_pct, cpu_per_core) = match KernelStats::current() {
            Ok(ks) => self.update_cpu(&ks),
            Err(e) => {
                log::debug!("reading /proc/stat: {e}; CPU fields left empty");
                (None, None)
            }
        };
        let meminfo = read_meminfo()
            .map_err(|e| log::debug!("{e}; memory and swap left empty"))
            .ok();
        let mem = meminfo.as_ref().map(memory);
        let swp = meminfo.as_ref().map(swap);
        let load = LoadAverage::current()
            .map_err(|e| log::debug!("reading /proc/loadavg: {e}; load averages left empty"))
            .ok();
        // /proc/loadavg prints two decimals; f32 → f64 would add noise digits.
        let load2 =
            |f: fn(&LoadAverage) -> f32| load.as_ref().map(|l| round_to(f64::from(f(l)), 2));
        SystemMetric {
            cpu_usage_pct,
            memory_total_bytes: mem.map(|m| m.0),
            memory_used_bytes: mem.map(|m| m.1),
            memory_available_bytes: mem.map(|m| m.2),
            load_avg_1m: load2(|l| l.one),
            load_avg_5m: load2(|l| l.five),
            load_avg_15m: load2(|l| l.fifteen),
            swap_total_bytes: swp.map(|s| s.0),
            swap_used_bytes: swp.map(|s| s.1),
            cpu_per_core,
        }
    }

    /// Diff `ks` against the previous read and remember it.
    fn update_cpu(&mut self, ks: &KernelStats) -> (Option<f64>, Option<Vec<f64>>) {
        let total = CpuTicks::from(&ks.total);
        let cores: Vec<CpuTicks> = ks.cpu_time.iter().map(CpuTicks::from).collect();
        let pct = self.prev_total.and_then(|before| cpu_pct(before, total));
        let per_core = if self.prev_total.is_some() {
            per_core_pct(&self.prev_cores, &cores)
        } else {
            None
        };
        self.prev_total = Some(total);
        self.prev_cores = cores;
        (pct, per_core)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use procfs::FromBufReadSI;

    fn si() -> procfs::ExplicitSystemInfo {
        procfs::ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: true,
        }
    }

    fn stat(text: &str) -> KernelStats {
        match KernelStats::from_buf_read(text.as_bytes(), &si()) {
            Ok(k) => k,
            Err(e) => panic!("fixture must parse: {e}"),
        }
    }

    fn meminfo(text: &str) -> Meminfo {
        match parse_meminfo(text) {
            Ok(m) => m,
            Err(e) => panic!("fixture must parse: {e}"),
        }
    }

    const STAT_TAIL: &str =
        "intr 0\nctxt 1\nbtime 1700000000\nprocesses 5\nprocs_running 1\nprocs_blocked 0\n";

    #[test]
    fn ticks_count_iowait_as_idle_and_leave_guest_out() {
        let k = stat(&format!(
            "cpu  100 10 50 1000 40 1 2 3 70 7\ncpu0 100 10 50 1000 40 1 2 3 70 7\n{STAT_TAIL}"
        ));
        let t = CpuTicks::from(&k.total);
        assert_eq!(t.idle, 1040);
        assert_eq!(t.total, 100 + 10 + 50 + 1000 + 40 + 1 + 2 + 3);
    }

    #[test]
    fn ticks_from_a_short_pre_2_6_33_row() {
        let k = stat(&format!(
            "cpu  100 10 50 1000\ncpu0 100 10 50 1000\n{STAT_TAIL}"
        ));
        assert_eq!(
            CpuTicks::from(&k.total),
            CpuTicks {
                idle: 1000,
                total: 1160
            }
        );
    }

    #[test]
    fn cpu_pct_exact_values() {
        let b = CpuTicks {
            idle: 100,
            total: 200,
        };
        assert_eq!(
            cpu_pct(
                b,
                CpuTicks {
                    idle: 120,
                    total: 300
                }
            ),
            Some(80.0)
        );
        assert_eq!(
            cpu_pct(
                b,
                CpuTicks {
                    idle: 200,
                    total: 300
                }
            ),
            Some(0.0)
        );
        assert_eq!(
            cpu_pct(
                b,
                CpuTicks {
                    idle: 100,
                    total: 300
                }
            ),
            Some(100.0)
        );
        // 963 busy of 1000 → 96.3.
        assert_eq!(
            cpu_pct(
                CpuTicks { idle: 0, total: 0 },
                CpuTicks {
                    idle: 37,
                    total: 1000
                }
            ),
            Some(96.3)
        );
        // 1 of 3 busy → 33.333… → 33.3.
        assert_eq!(
            cpu_pct(
                CpuTicks { idle: 0, total: 0 },
                CpuTicks { idle: 2, total: 3 }
            ),
            Some(33.3)
        );
    }

    #[test]
    fn cpu_pct_none_without_elapsed_jiffies_and_clamped_when_going_backwards() {
        let s = CpuTicks {
            idle: 100,
            total: 200,
        };
        assert_eq!(cpu_pct(s, s), None);
        assert_eq!(
            cpu_pct(
                s,
                CpuTicks {
                    idle: 80,
                    total: 150
                }
            ),
            None
        );
        // iowait went backwards (idle fell) while total rose: all busy, not > 100.
        assert_eq!(
            cpu_pct(
                s,
                CpuTicks {
                    idle: 90,
                    total: 210
                }
            ),
            Some(100.0)
        );
        // idle rose more than total (inconsistent read): 0 %, not negative.
        assert_eq!(
            cpu_pct(
                s,
                CpuTicks {
                    idle: 150,
                    total: 210
                }
            ),
            Some(0.0)
        );
    }

    #[test]
    fn per_core_requires_matching_core_counts() {
        let a = [
            CpuTicks { idle: 0, total: 0 },
            CpuTicks { idle: 0, total: 0 },
        ];
        let b = [
            CpuTicks {
                idle: 50,
                total: 100,
            },
            CpuTicks {
                idle: 100,
                total: 100,
            },
        ];
        assert_eq!(per_core_pct(&a, &b), Some(vec![50.0, 0.0]));
        assert_eq!(per_core_pct(&a[..1], &b), None);
        assert_eq!(per_core_pct(&[], &[]), None);
    }

    #[test]
    fn tracker_gives_no_cpu_on_first_call_then_diffs_against_the_previous_call() {
        let mut t = SystemTracker::new();
        let k1 = stat(&format!(
            "cpu  0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\n{STAT_TAIL}"
        ));
        assert_eq!(t.update_cpu(&k1), (None, None));
        let k2 = stat(&format!(
            "cpu  30 0 10 160\ncpu0 30 0 10 60\ncpu1 0 0 0 100\n{STAT_TAIL}"
        ));
        assert_eq!(t.update_cpu(&k2), (Some(20.0), Some(vec![40.0, 0.0])));
        // Against k2, not k1.
        let k3 = stat(&format!(
            "cpu  30 0 10 360\ncpu0 30 0 10 160\ncpu1 0 0 0 200\n{STAT_TAIL}"
        ));
        assert_eq!(t.update_cpu(&k3), (Some(0.0), Some(vec![0.0, 0.0])));
        // A core went offline: total still diffs, per-core does not.
        let k4 = stat(&format!(
            "cpu  130 0 10 360\ncpu0 130 0 10 160\n{STAT_TAIL}"
        ));
        assert_eq!(t.update_cpu(&k4), (Some(100.0), None));
    }

    /// Keys procfs 0.17 requires besides the ones under test.
    const MEM_TAIL: &str = "SwapCached: 0 kB\nActive: 1 kB\nInactive: 1 kB\nDirty: 0 kB\nWriteback: 0 kB\nMapped: 0 kB\nShmem: 0 kB\nSlab: 0 kB\nCommitLimit: 0 kB\nCommitted_AS: 0 kB\nVmallocTotal: 0 kB\nVmallocUsed: 0 kB\nVmallocChunk: 0 kB\n";

    #[test]
    fn meminfo_that_would_panic_procfs_is_an_error() {
        assert!(parse_meminfo("MemTotalé 5 kB\n").is_err());
        assert!(parse_meminfo("é 5\n").is_err());
    }

    #[test]
    fn memory_uses_mem_available_and_falls_back_on_old_kernels() {
        let m = meminfo(
            &format!("MemTotal: 16384000 kB\nMemFree: 1024000 kB\nMemAvailable: 8192000 kB\nBuffers: 512000 kB\nCached: 2048000 kB\n{MEM_TAIL}SwapTotal: 4000 kB\nSwapFree: 1000 kB\n"),
        );
        assert_eq!(
            memory(&m),
            (16384000 * 1024, 8192000 * 1024, 8192000 * 1024)
        );
        assert_eq!(swap(&m), (4000 * 1024, 3000 * 1024));
        let old = meminfo(&format!("MemTotal: 8192000 kB\nMemFree: 500000 kB\nBuffers: 100000 kB\nCached: 400000 kB\n{MEM_TAIL}SwapTotal: 0 kB\nSwapFree: 0 kB\n"));
        assert_eq!(
            memory(&old),
            (8192000 * 1024, 7192000 * 1024, 1000000 * 1024)
        );
        assert_eq!(swap(&old), (0, 0));
    }

    proptest::proptest! {
        #[test]
        fn prop_proc_stat_parser_never_panics(s in "(.{0,100}\n){0,6}") {
            if let Ok(k) = KernelStats::from_buf_read(s.as_bytes(), &si()) {
                let mut t = SystemTracker::new();
                let _ = t.update_cpu(&k);
                let _ = t.update_cpu(&k);
            }
        }

        #[test]
        fn prop_meminfo_and_loadavg_parsers_never_panic(s in "(.{0,80}\n){0,8}|([A-Za-zé():_]{1,12} [0-9]{1,6}( kB)?\n){0,40}") {
            use procfs::FromRead;
            if let Ok(m) = parse_meminfo(&s) {
                let (total, used, avail) = memory(&m);
                proptest::prop_assert!(used <= total);
                let _ = (avail, swap(&m));
            }
            let _ = LoadAverage::from_read(s.as_bytes());
        }

        #[test]
        fn prop_cpu_pct_is_bounded(bi: u64, bt: u64, ai: u64, at: u64) {
            let p = cpu_pct(CpuTicks { idle: bi, total: bt }, CpuTicks { idle: ai, total: at });
            proptest::prop_assert!(p.is_none_or(|p| (0.0..=100.0).contains(&p)));
        }
    }
}
