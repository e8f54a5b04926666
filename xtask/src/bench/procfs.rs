//! What the bench reads from /proc about a monitor: CPU seconds, peak and
//! current RSS, BPF map memory and BPF program run statistics from fdinfo.
//! Read-only; never writes to /proc.

use std::collections::BTreeMap;

/// Clock ticks per second for /proc/<pid>/stat.
fn ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of `pid` (all its threads) in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks())
}

/// A `kB` field of /proc/<pid>/status, in bytes.
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn fdinfos(pid: u32) -> Vec<BTreeMap<String, String>> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .collect()
}

/// Sum of `memlock` over the BPF maps `pid` holds open (bytes), each map
/// once: a pinned agent holds several descriptors of one map (the one it
/// loaded or reopened from its pin, and those its readers keep), and
/// memory is per map, not per descriptor.
pub fn map_memlock(pid: u32) -> u64 {
    unique_map_memlock(&fdinfos(pid))
}

/// [`map_memlock`] over parsed fdinfo records.
fn unique_map_memlock(infos: &[BTreeMap<String, String>]) -> u64 {
    let maps: BTreeMap<&str, u64> = infos
        .iter()
        .filter(|m| m.contains_key("map_type"))
        .filter_map(|m| {
            let id = m.get("map_id")?.as_str();
            Some((id, m.get("memlock")?.parse::<u64>().ok()?))
        })
        .collect();
    maps.values().sum()
}

/// (prog_id, run_time_ns, run_cnt) of each BPF program `pid` holds open.
pub fn prog_stats(pid: u32) -> Vec<(u32, u64, u64)> {
    fdinfos(pid)
        .iter()
        .filter(|m| m.contains_key("prog_type"))
        .filter_map(|m| {
            Some((
                m.get("prog_id")?.parse().ok()?,
                m.get("run_time_ns")?.parse().ok()?,
                m.get("run_cnt")?.parse().ok()?,
            ))
        })
        .collect()
}

/// Machine facts for the report header.
pub fn machine() -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    m.insert(
        "kernel",
        read("/proc/sys/kernel/osrelease").trim().to_string(),
    );
    m.insert(
        "nproc",
        std::thread::available_parallelism()
            .map(|n| n.get().to_string())
            .unwrap_or_default(),
    );
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1048576.0))
        .unwrap_or_default();
    m.insert("memory", mem);
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    m.insert("cpu", cpu);
    m
}

/// The 1-minute load average now.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_map_held_through_several_descriptors_counts_once() {
        let sockets = info(&[("map_type", "9"), ("map_id", "7"), ("memlock", "1000")]);
        let ring = info(&[("map_type", "27"), ("map_id", "8"), ("memlock", "24")]);
        let prog = info(&[("prog_type", "5"), ("prog_id", "3"), ("memlock", "4096")]);
        let infos = [sockets.clone(), ring, sockets.clone(), prog, sockets];
        assert_eq!(unique_map_memlock(&infos), 1024);
    }
}
