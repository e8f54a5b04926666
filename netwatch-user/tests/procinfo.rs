//! `netwatch::procinfo` against this machine's real /proc and /sys: real
//! traffic, real sockets, real processes, compared with ground truth read
//! independently (the kernel's own files, `df`, the shell). Everything sits
//! in `mod procinfo` so that `cargo test procinfo` selects these too.
//!
//! Tests that need root start with `require_root!` (tests/common): as
//! another user they skip with one line, in CI they fail.
//! Assertions are built so other activity on the box cannot break them:
//! counts over the test's own sockets only, lower bounds on shared counters.

#![cfg(target_os = "linux")]

#[macro_use]
mod common;

mod procinfo {
    use std::fs;
    use std::time::{Duration, Instant};

    /// A `KEY:  value kB` field of /proc/meminfo, in bytes.
    pub fn meminfo_bytes(key: &str) -> u64 {
        let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let line = text.lines().find(|l| l.starts_with(&format!("{key}:")));
        let kb = line
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok());
        match kb {
            Some(kb) => kb * 1024,
            None => panic!("/proc/meminfo has no {key}"),
        }
    }

    /// Poll `f` until it returns `want` or `timeout` passes; returns the last value.
    pub fn poll<T: PartialEq>(timeout: Duration, want: &T, mut f: impl FnMut() -> T) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let v = f();
            if &v == want || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    mod interfaces {
        use std::collections::BTreeSet;
        use std::fs;
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::time::Instant;

        use netwatch::procinfo::interfaces::InterfaceTracker;
        use netwatch_common::wire::InterfaceMetric;

        fn lo(m: &[InterfaceMetric]) -> InterfaceMetric {
            match m.iter().find(|i| i.name == "lo") {
                Some(i) => i.clone(),
                None => panic!(
                    "no `lo` among {:?}",
                    m.iter().map(|i| &i.name).collect::<Vec<_>>()
                ),
            }
        }

        #[test]
        fn loopback_counters_move_by_at_least_the_bytes_sent_and_delta_rate_match(
        ) -> anyhow::Result<()> {
            const N: usize = 4 << 20;
            let mut t = InterfaceTracker::new();
            let before_first = Instant::now();
            let s1 = t.sample()?;
            let after_first = Instant::now();
            let lo1 = lo(&s1);
            assert_eq!((lo1.rx_bytes_delta, lo1.tx_bytes_delta), (0, 0));
            assert_eq!((lo1.rx_rate, lo1.tx_rate), (Some(0.0), Some(0.0)));
            assert_eq!(
                (lo1.rx_history.clone(), lo1.tx_history.clone()),
                (None, None)
            );
            assert!(lo1.is_up, "lo is up (operstate unknown, IFF_UP set)");

            let listener = TcpListener::bind("127.0.0.1:0")?;
            let addr = listener.local_addr()?;
            let reader = std::thread::spawn(move || -> std::io::Result<usize> {
                let (mut s, _) = listener.accept()?;
                let mut buf = Vec::new();
                s.read_to_end(&mut buf)?;
                Ok(buf.len())
            });
            let mut c = TcpStream::connect(addr)?;
            c.write_all(&vec![0x5a; N])?;
            drop(c);
            let received = match reader.join() {
                Ok(r) => r?,
                Err(_) => panic!("reader thread panicked"),
            };
            assert_eq!(received, N);

            let before_second = Instant::now();
            let s2 = t.sample()?;
            let after_second = Instant::now();
            let lo2 = lo(&s2);

            assert!(
                lo2.tx_bytes - lo1.tx_bytes >= N as u64,
                "lo tx moved {} < {N}",
                lo2.tx_bytes - lo1.tx_bytes
            );
            assert!(
                lo2.rx_bytes - lo1.rx_bytes >= N as u64,
                "lo rx moved {} < {N}",
                lo2.rx_bytes - lo1.rx_bytes
            );
            assert_eq!(lo2.tx_bytes_delta, lo2.tx_bytes - lo1.tx_bytes);
            assert_eq!(lo2.rx_bytes_delta, lo2.rx_bytes - lo1.rx_bytes);

            // The tracker's interval lies between these two bounds.
            let longest = after_second.duration_since(before_first).as_secs_f64();
            let shortest = before_second.duration_since(after_first).as_secs_f64();
            let tx_rate = lo2.tx_rate.unwrap_or(f64::NAN);
            let tx = lo2.tx_bytes_delta as f64;
            assert!(
                tx / longest <= tx_rate && tx_rate <= tx / shortest,
                "{tx} B: rate {tx_rate} outside [{}, {}]",
                tx / longest,
                tx / shortest
            );
            assert_eq!(lo2.tx_history, Some(vec![tx_rate as u64]));
            assert_eq!(lo2.rx_history, lo2.rx_rate.map(|r| vec![r as u64]));
            Ok(())
        }

        #[test]
        fn every_interface_once_sorted_by_name_with_sysfs_link_state() -> anyhow::Result<()> {
            let m = InterfaceTracker::new().sample()?;
            let names: Vec<&str> = m.iter().map(|i| i.name.as_str()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(names, sorted, "sorted, no duplicates");
            let sysfs: BTreeSet<String> = fs::read_dir("/sys/class/net")?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let ours: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
            assert_eq!(ours, sysfs);
            for i in &m {
                let operstate = fs::read_to_string(format!("/sys/class/net/{}/operstate", i.name))?;
                if operstate.trim() == "up" {
                    assert!(i.is_up, "{} is up", i.name);
                }
                if operstate.trim() == "down" {
                    assert!(!i.is_up, "{} is down", i.name);
                }
            }
            Ok(())
        }
    }

    mod tcp_states {
        use std::net::{SocketAddr, TcpListener, TcpStream};
        use std::time::Duration;

        use netwatch::procinfo::tcp_states::{read_entries, TcpStates};

        use super::poll;

        /// Both ends of one connection, as (local, remote) pairs.
        struct Conn {
            client: TcpStream,
            server: TcpStream,
        }

        fn connect(listener: &TcpListener, n: usize) -> std::io::Result<Vec<Conn>> {
            let addr = listener.local_addr()?;
            (0..n)
                .map(|_| {
                    let client = TcpStream::connect(addr)?;
                    let (server, _) = listener.accept()?;
                    Ok(Conn { client, server })
                })
                .collect()
        }

        fn tuples(conns: &[Conn]) -> std::io::Result<Vec<(SocketAddr, SocketAddr)>> {
            let mut t = Vec::new();
            for c in conns {
                t.push((c.client.local_addr()?, c.client.peer_addr()?));
                t.push((c.server.local_addr()?, c.server.peer_addr()?));
            }
            Ok(t)
        }

        /// Counts over exactly our own sockets.
        fn ours(tuples: &[(SocketAddr, SocketAddr)]) -> TcpStates {
            let entries = match read_entries() {
                Ok(e) => e,
                Err(e) => panic!("{e:#}"),
            };
            TcpStates::count(
                entries
                    .iter()
                    .filter(|e| tuples.contains(&(e.local_address, e.remote_address))),
            )
        }

        fn states(est: u32, tw: u32, cw: u32) -> TcpStates {
            TcpStates {
                connection_count: est,
                time_wait: tw,
                close_wait: cw,
            }
        }

        fn time_wait_and_close_wait_are_counted_exactly(loopback: &str) -> anyhow::Result<()> {
            const TW: usize = 3;
            const CW: usize = 2;
            let listener = match TcpListener::bind(loopback) {
                Ok(l) => l,
                Err(e) => panic!("this test needs loopback {loopback} to bind: {e}"),
            };

            // TIME_WAIT: we close first (active close), then the peer closes.
            let tw = connect(&listener, TW)?;
            let tw_tuples = tuples(&tw)?;
            assert_eq!(
                ours(&tw_tuples),
                states(2 * TW as u32, 0, 0),
                "all established"
            );
            for c in tw {
                drop(c.client);
                drop(c.server);
            }
            let got = poll(Duration::from_secs(5), &states(0, TW as u32, 0), || {
                ours(&tw_tuples)
            });
            assert_eq!(
                got,
                states(0, TW as u32, 0),
                "one TIME_WAIT per actively closed connection"
            );

            // CLOSE_WAIT: the peer closed, we hold our end open.
            let cw = connect(&listener, CW)?;
            let cw_tuples = tuples(&cw)?;
            assert_eq!(
                ours(&cw_tuples),
                states(2 * CW as u32, 0, 0),
                "all established"
            );
            let held: Vec<TcpStream> = cw.into_iter().map(|c| c.server).collect();
            let got = poll(Duration::from_secs(5), &states(0, 0, CW as u32), || {
                ours(&cw_tuples)
            });
            assert_eq!(
                got,
                states(0, 0, CW as u32),
                "one CLOSE_WAIT per connection the peer closed"
            );

            // Host-wide counts include ours (TIME_WAIT lasts 60 s; we hold the CLOSE_WAITs).
            let all = TcpStates::read()?;
            assert!(
                all.time_wait >= TW as u32 && all.close_wait >= CW as u32,
                "{all:?}"
            );
            drop(held);
            Ok(())
        }

        #[test]
        fn ipv4_time_wait_and_close_wait_are_counted_exactly() -> anyhow::Result<()> {
            time_wait_and_close_wait_are_counted_exactly("127.0.0.1:0")
        }

        #[test]
        fn ipv6_time_wait_and_close_wait_are_counted_exactly() -> anyhow::Result<()> {
            time_wait_and_close_wait_are_counted_exactly("[::1]:0")
        }
    }

    mod system {
        use std::fs;
        use std::time::Duration;

        use netwatch::procinfo::system::SystemTracker;

        use super::meminfo_bytes;

        #[test]
        fn cpu_is_none_first_then_diffed_and_memory_matches_meminfo() {
            let mut t = SystemTracker::new();
            let m1 = t.sample();
            assert_eq!((m1.cpu_usage_pct, m1.cpu_per_core.clone()), (None, None));
            std::thread::sleep(Duration::from_millis(200));
            let m2 = t.sample();
            let pct = m2.cpu_usage_pct.unwrap_or(f64::NAN);
            assert!((0.0..=100.0).contains(&pct), "{pct}");
            let online = fs::read_to_string("/proc/stat")
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit)
                })
                .count();
            let cores = m2.cpu_per_core.unwrap_or_default();
            assert_eq!(cores.len(), online);
            assert!(cores.iter().all(|c| (0.0..=100.0).contains(c)), "{cores:?}");

            let total = meminfo_bytes("MemTotal");
            assert_eq!(m2.memory_total_bytes, Some(total));
            let (used, avail) = (
                m2.memory_used_bytes.unwrap_or(0),
                m2.memory_available_bytes.unwrap_or(u64::MAX),
            );
            assert_eq!(used + avail, total);
            assert_eq!(m2.swap_total_bytes, Some(meminfo_bytes("SwapTotal")));
            assert!(m2.swap_used_bytes <= m2.swap_total_bytes);
            for l in [m2.load_avg_1m, m2.load_avg_5m, m2.load_avg_15m] {
                let l = l.unwrap_or(f64::NAN);
                assert!(
                    l >= 0.0 && (l * 100.0).round() / 100.0 == l,
                    "load {l} has two decimals"
                );
            }
        }
    }

    mod disk {
        use std::collections::HashSet;
        use std::fs;
        use std::io::Write;
        use std::process::Command;

        use netwatch::procinfo::disk::DiskTracker;

        #[test]
        fn usage_totals_match_df_and_mounts_are_unique() -> anyhow::Result<()> {
            let (usage, _) = DiskTracker::new().sample();
            let devices: HashSet<&str> = usage.iter().map(|u| u.device.as_str()).collect();
            let points: HashSet<&str> = usage.iter().map(|u| u.mount_point.as_str()).collect();
            assert_eq!(devices.len(), usage.len(), "each device once");
            assert_eq!(points.len(), usage.len(), "each mount point once");
            for u in &usage {
                assert!(u.device.starts_with("/dev/"));
                assert!(u.used_bytes <= u.total_bytes && u.available_bytes <= u.total_bytes);
                assert!((0.0..=100.0).contains(&u.usage_pct));
                let out = Command::new("df")
                    .args(["-B1", "--output=size", &u.mount_point])
                    .output()?;
                assert!(
                    out.status.success(),
                    "df {}: {}",
                    u.mount_point,
                    String::from_utf8_lossy(&out.stderr)
                );
                let df_size: Option<u64> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .nth(1)
                    .and_then(|l| l.trim().parse().ok());
                assert_eq!(Some(u.total_bytes), df_size, "size of {}", u.mount_point);
            }
            Ok(())
        }

        #[test]
        fn io_is_none_first_then_counts_a_synced_write() -> anyhow::Result<()> {
            const N: usize = 8 << 20;
            let mut t = DiskTracker::new();
            assert_eq!(t.sample().1, None);
            // In the target dir: unlike /tmp, it is on a real disk wherever cargo builds.
            let dir = match tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")) {
                Ok(dir) => dir,
                // The build's target/tmp belongs to whoever built it (root,
                // under `cargo xtask test`); /tmp may be a tmpfs.
                Err(e)
                    if e.kind() == std::io::ErrorKind::PermissionDenied
                        && !crate::common::root_or_skip(
                            "writes in the build's target/tmp, which root made",
                        ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            };
            let mut f = fs::File::create(dir.path().join("blob"))?;
            // Incompressible, so no filesystem can shrink what reaches the disk.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let data: Vec<u8> = (0..N)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            f.write_all(&data)?;
            f.sync_all()?;
            let io = t.sample().1;
            let written = io.as_ref().map(|io| io.write_bytes).unwrap_or(0);
            assert!(
                written >= N as u64,
                "{io:?}: a synced {N}-byte write must reach a whole disk (is {} on a real block device?)",
                env!("CARGO_TARGET_TMPDIR")
            );
            Ok(())
        }
    }

    mod host {
        use std::fs;
        use std::process::Command;

        use netwatch::procinfo::host::host_info;

        use super::meminfo_bytes;

        fn trimmed(path: &str) -> String {
            fs::read_to_string(path)
                .unwrap_or_default()
                .trim()
                .to_string()
        }

        #[test]
        fn host_id_persists_and_fields_match_the_kernel() -> anyhow::Result<()> {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("state/host_id");
            let up_before = trimmed("/proc/uptime")
                .split('.')
                .next()
                .and_then(|s| s.parse::<u64>().ok());
            let a = host_info(&path)?;
            let up_after = trimmed("/proc/uptime")
                .split('.')
                .next()
                .and_then(|s| s.parse::<u64>().ok());
            let b = host_info(&path)?;
            assert_eq!(a.host_id, b.host_id, "reused across calls");
            assert_eq!(trimmed(&path.to_string_lossy()), a.host_id.to_string());

            assert_eq!(a.hostname, trimmed("/proc/sys/kernel/hostname"));
            assert_eq!(
                a.kernel.as_deref(),
                Some(trimmed("/proc/sys/kernel/osrelease").as_str())
            );
            assert!(
                up_before <= a.uptime_secs && a.uptime_secs <= up_after,
                "{up_before:?} {:?} {up_after:?}",
                a.uptime_secs
            );
            assert_eq!(a.memory_total_bytes, Some(meminfo_bytes("MemTotal")));
            let processors = fs::read_to_string("/proc/cpuinfo")?
                .lines()
                .filter(|l| l.starts_with("processor"))
                .count();
            assert_eq!(a.cpu_cores, u32::try_from(processors).ok());

            // PRETTY_NAME as the shell sees it.
            let out = Command::new("sh")
                .args(["-c", ". /etc/os-release && printf %s \"$PRETTY_NAME\""])
                .output()?;
            assert!(out.status.success(), "sourcing /etc/os-release failed");
            let shell = String::from_utf8_lossy(&out.stdout).into_owned();
            assert_eq!(a.os, Some(shell).filter(|s| !s.is_empty()));
            Ok(())
        }
    }

    mod process {
        use std::process::Command;
        use std::time::{Duration, Instant};

        use chrono::Utc;
        use netwatch::procinfo::process::ProcessMetaTracker;
        use netwatch_common::wire::ProcessBandwidth;

        use super::poll;

        fn row(pid: u32) -> ProcessBandwidth {
            ProcessBandwidth::network_only("t".into(), Some(pid), 0, 0, 0.0, 0.0, 1)
        }

        /// utime + stime of this process, in ticks.
        fn my_cpu_ticks() -> u64 {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<u64> = after_comm
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            f.iter().sum()
        }

        #[test]
        fn own_process_metadata_matches_the_process() -> anyhow::Result<()> {
            if !crate::common::root_or_skip("asserts the owner is `root`") {
                return Ok(());
            }
            let me = std::process::id();
            let mut t = ProcessMetaTracker::new();
            let mut rows = vec![row(me)];
            t.fill(&mut rows);
            let r = &rows[0];
            assert_eq!(r.cpu_pct, None, "first sight has no CPU figure");
            assert_eq!(
                r.cmd.as_deref(),
                Some(std::env::current_exe()?.to_string_lossy().as_ref())
            );
            assert_eq!(r.user.as_deref(), Some("root"));
            assert_eq!(r.ppid, Some(std::os::unix::process::parent_id()));
            assert!(
                matches!(r.state.as_deref(), Some("R" | "S")),
                "{:?}",
                r.state
            );
            let rss = r.mem_rss_bytes.unwrap_or(0);
            assert!(rss > 0 && r.mem_virt_bytes.unwrap_or(0) >= rss);
            let boot = procfs::boot_time_secs()? as i64;
            let started = r.started_at.map(|s| s.timestamp()).unwrap_or(i64::MIN);
            assert!(
                boot - 1 <= started && started <= Utc::now().timestamp() + 1,
                "started {started}, boot {boot}"
            );

            // Burn at least 20 ticks of CPU, then the second fill sees them.
            let (start, deadline) = (my_cpu_ticks(), Instant::now() + Duration::from_secs(10));
            let mut x = 0u64;
            while my_cpu_ticks() < start + 20 && Instant::now() < deadline {
                for i in 0..100_000u64 {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            }
            t.fill(&mut rows);
            let cpu = rows[0].cpu_pct.unwrap_or(f64::NAN);
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64;
            // Upper bound: every core busy, plus a quarter for the tick
            // granularity of utime/stime over a short interval.
            assert!(cpu > 0.0 && cpu <= 125.0 * cores, "cpu {cpu}");
            Ok(())
        }

        /// Field 22 of `/proc/<pid>/stat`, read here without the tracker.
        fn starttime_ticks(pid: u32) -> Option<u64> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, after_comm) = stat.rsplit_once(')')?;
            // Fields after the comm start at field 3 (state).
            after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
        }

        fn named(name: &str, pid: u32) -> ProcessBandwidth {
            ProcessBandwidth::network_only(name.into(), Some(pid), 0, 0, 0.0, 0.0, 1)
        }

        fn expected_start(pid: u32) -> anyhow::Result<i64> {
            let ticks = starttime_ticks(pid).ok_or_else(|| anyhow::anyhow!("no stat for {pid}"))?;
            let boot = procfs::boot_time_secs()? as i64;
            let tps = procfs::ticks_per_second() as i64;
            Ok(boot * 1000 + ticks as i64 * 1000 / tps)
        }

        /// Real pid reuse: a child runs on a pid and exits, then another
        /// program is started on the very same pid (the next pid is chosen
        /// through `/proc/sys/kernel/ns_last_pid`). The row of the first
        /// program must never get the second one's metadata, and the second
        /// one's own row gets its own.
        #[test]
        fn a_reused_pid_never_gets_another_process_metadata() -> anyhow::Result<()> {
            if !crate::common::root_or_skip(
                "writes /proc/sys/kernel/ns_last_pid to start a child on a chosen pid",
            ) {
                return Ok(());
            }
            let mut t = ProcessMetaTracker::new();
            let mut first = Command::new("/bin/sleep").arg("30").spawn()?;
            let pid = first.id();
            let mut rows = vec![named("sleep", pid)];
            t.fill(&mut rows);
            let sleep_start = expected_start(pid)?;
            assert_eq!(rows[0].cmd.as_deref(), Some("/usr/bin/sleep"));
            assert_eq!(
                rows[0].started_at.map(|s| s.timestamp_millis()),
                Some(sleep_start)
            );
            assert_eq!(rows[0].ppid, Some(std::process::id()));
            first.kill()?;
            first.wait()?;
            // Start times have clock-tick resolution: let at least one pass.
            std::thread::sleep(Duration::from_millis(50));

            // Other processes on this host fork too: retry until we win the pid.
            let mut second = None;
            for _ in 0..200 {
                std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())?;
                let mut c = Command::new("/bin/cat")
                    .stdin(std::process::Stdio::piped())
                    .spawn()?;
                if c.id() == pid {
                    second = Some(c);
                    break;
                }
                c.kill()?;
                c.wait()?;
            }
            let Some(mut second) = second else {
                panic!("could not start a process on pid {pid} in 200 tries");
            };
            let cat_start = expected_start(pid)?;
            assert!(cat_start > sleep_start, "{cat_start} vs {sleep_start}");

            // The old row and the new process's row, on one fill and the next.
            let mut rows = vec![named("sleep", pid), named("cat", pid)];
            for _ in 0..2 {
                t.fill(&mut rows);
                assert_eq!(rows[0], named("sleep", pid), "old row got metadata");
                assert_eq!(rows[1].cmd.as_deref(), Some("/usr/bin/cat"));
                assert_eq!(
                    rows[1].started_at.map(|s| s.timestamp_millis()),
                    Some(cat_start)
                );
                assert_eq!(rows[1].ppid, Some(std::process::id()));
            }
            // A tracker that never saw the first process gives the pid's
            // only process to a row first seen now (the documented window).
            let mut fresh = ProcessMetaTracker::new();
            let mut rows = vec![named("cat", pid)];
            fresh.fill(&mut rows);
            assert_eq!(rows[0].cmd.as_deref(), Some("/usr/bin/cat"));
            second.kill()?;
            second.wait()?;
            Ok(())
        }

        #[test]
        fn zombie_then_vanished_child_and_never_argv() -> anyhow::Result<()> {
            const SECRET: &str = "s3cr3t-token-in-argv";
            let mut t = ProcessMetaTracker::new();

            // A live child whose argv holds a secret: nothing we emit may carry it.
            let mut live = Command::new("sh").args(["-c", "sleep 5", SECRET]).spawn()?;
            let mut rows = vec![row(live.id())];
            t.fill(&mut rows);
            let json = serde_json::to_string(&rows)?;
            assert!(!json.contains(SECRET), "argv leaked: {json}");
            let sh = std::fs::canonicalize("/bin/sh")?;
            assert_eq!(rows[0].cmd.as_deref(), Some(sh.to_string_lossy().as_ref()));
            assert_eq!(rows[0].ppid, Some(std::process::id()));
            live.kill()?;
            live.wait()?;

            // An exited, unreaped child is a zombie: state Z, no exe.
            let mut child = Command::new("true").spawn()?;
            let pid = child.id();
            let state = poll(Duration::from_secs(5), &Some("Z".to_string()), || {
                let mut r = vec![row(pid)];
                t.fill(&mut r);
                r[0].state.clone()
            });
            assert_eq!(state.as_deref(), Some("Z"));
            // First seen as a zombie: its exe link is gone. (A tracker that
            // saw it alive keeps the exe it read then: the same process.)
            let mut rows = vec![row(pid)];
            ProcessMetaTracker::new().fill(&mut rows);
            assert_eq!(rows[0].cmd, None);
            assert_eq!(rows[0].state.as_deref(), Some("Z"));
            assert_eq!(rows[0].ppid, Some(std::process::id()));

            // Reaped: the pid is gone, every field empty, no panic.
            child.wait()?;
            let mut rows = vec![row(pid)];
            t.fill(&mut rows);
            assert_eq!(rows[0], row(pid));
            Ok(())
        }
    }
}
