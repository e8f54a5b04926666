//! Disk usage of device-backed mounts (`/proc/self/mounts` + `statvfs`) and
//! bytes read/written by whole physical disks since the previous call
//! (`/proc/diskstats`). It must never count the same I/O twice (a partition
//! and its disk, a device-mapper volume and the disk under it) nor report
//! one filesystem twice.
//!
//! It must never let a filesystem stall the tick: `statvfs` on a hung mount
//! (a FUSE server stopped, a dead NFS server) blocks until the filesystem
//! answers, so every `statvfs` runs on a worker thread ([`StatvfsWorkers`])
//! and the tick waits for them at most [`STATVFS_BUDGET`] in total. A mount
//! that has not answered by then loses its row (logged once until it
//! answers again) and is not asked again while its call is stuck.
//!
//! Where it differs from netwatch-sdk 0.3.2: the SDK sums every diskstats
//! row but `loop*`/`ram*`/`dm-*`, so partitions count on top of their disk;
//! here only whole disks backed by a device (`/sys/block/<name>/device`)
//! count, which also leaves out `zram`, `md` and `nbd`. Mounts of the same
//! device (bind mounts) are reported once, and a mount hidden under a later
//! mount on the same path is dropped, since `statvfs` would report the top one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netwatch_common::wire::{DiskIo, DiskUsage};
use procfs::{DiskStat, FromBufRead, MountEntry};

use super::round_to;
use crate::counter::counter_delta;
use crate::text::Visible;

/// Filesystems that live in the kernel and have no meaningful usage (the SDK's list).
const VIRTUAL_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "tmpfs",
    "devtmpfs",
    "cgroup",
    "cgroup2",
    "pstore",
    "securityfs",
    "debugfs",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "autofs",
    "rpc_pipefs",
    "nfsd",
    "binfmt_misc",
    "tracefs",
    "squashfs",
    "overlay",
    "ramfs",
    "efivarfs",
];

/// `/proc/diskstats` counts in 512-byte sectors whatever the device's own sector size.
const DISKSTATS_SECTOR_BYTES: u64 = 512;

/// A mount whose usage is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageMount {
    pub device: String,
    pub mount_point: String,
}

/// Cumulative sectors (read, written) of one disk.
type Sectors = (u64, u64);

/// Samples disk usage and I/O; keeps the previous per-disk counters, and
/// what changes only with the system's configuration: the mounts to report
/// (parsed again only when the kernel says the mount table changed) and
/// the whole disks of `/sys/block` (listed again when the disks in
/// `/proc/diskstats` change).
#[derive(Debug, Default)]
pub struct DiskTracker {
    prev: Option<HashMap<String, Sectors>>,
    mounts: Option<Mounts>,
    /// The whole disks, and the diskstats names they were listed for.
    whole: Option<(Vec<String>, HashSet<String>)>,
    statvfs: StatvfsWorkers,
}

/// The longest a tick waits, in total, for the `statvfs` calls of its
/// mounts. A local filesystem answers in microseconds; one that takes
/// longer than this is hung or behind a stalled network, and its row is
/// left out of this tick.
pub const STATVFS_BUDGET: Duration = Duration::from_millis(200);
/// `statvfs` worker threads at most, hung ones included: past this many
/// hung mounts, further mounts wait for a worker (within the budget).
pub const MAX_STATVFS_WORKERS: usize = 16;
/// A worker's stack: it only calls `statvfs`.
const WORKER_STACK_BYTES: usize = 64 * 1024;

/// `statvfs` figures: (fragment size, blocks, free blocks, blocks
/// available to unprivileged users).
type Figures = (u64, u64, u64, u64);

/// A worker's answer for one mount point.
struct Done {
    mount_point: String,
    figures: Result<Figures, rustix::io::Errno>,
}

/// A worker thread, waiting for mount points to `statvfs`.
#[derive(Debug)]
struct Worker {
    jobs: mpsc::Sender<String>,
}

/// Threads that run `statvfs` for the tick, each one call at a time, and
/// what they are doing. A worker whose call hangs stays with its mount
/// (`busy`) until the call returns; the tick never waits for it beyond the
/// budget and never joins it, so neither a tick nor the agent's exit
/// waits on a hung filesystem. At most one call per mount is outstanding,
/// and at most [`MAX_STATVFS_WORKERS`] workers exist.
#[derive(Debug)]
pub struct StatvfsWorkers {
    idle: Vec<Worker>,
    /// Mount point → the worker whose call for it has not returned.
    busy: HashMap<String, Worker>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    /// Mount points whose call missed the budget and has not answered in
    /// time since (logged once).
    hung: HashSet<String>,
    /// Mounts were left unasked for want of a worker (logged once).
    starved: bool,
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Done")
            .field("mount_point", &self.mount_point)
            .finish_non_exhaustive()
    }
}

impl Default for StatvfsWorkers {
    fn default() -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        Self {
            idle: Vec::new(),
            busy: HashMap::new(),
            done_tx,
            done_rx,
            hung: HashSet::new(),
            starved: false,
        }
    }
}

impl StatvfsWorkers {
    /// The usage of each of `mounts` (in their order) whose `statvfs`
    /// answered within `budget`; the others are left out, and logged once
    /// until they answer again.
    pub fn usage(&mut self, mounts: &[UsageMount], budget: Duration) -> Vec<DiskUsage> {
        let deadline = Instant::now() + budget;
        let mut answers: HashMap<String, Result<Figures, rustix::io::Errno>> = HashMap::new();
        let mut asked: HashSet<&str> = HashSet::new();
        // A mount whose earlier call is still stuck is not asked again.
        let mut queue: VecDeque<&UsageMount> = mounts
            .iter()
            .filter(|m| !self.busy.contains_key(&m.mount_point))
            .collect();
        let mut waiting = 0usize;
        loop {
            while let Some(m) = queue.front() {
                let Some(w) = self.worker() else { break };
                if w.jobs.send(m.mount_point.clone()).is_err() {
                    // Its thread is gone (it cannot panic; but never trust
                    // a dead worker): forget it and try another.
                    continue;
                }
                self.busy.insert(m.mount_point.clone(), w);
                asked.insert(&m.mount_point);
                waiting += 1;
                queue.pop_front();
            }
            if waiting == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.done_rx.recv_timeout(left) {
                Ok(done) => {
                    if let Some(w) = self.busy.remove(&done.mount_point) {
                        self.idle.push(w);
                    }
                    if asked.contains(done.mount_point.as_str()) {
                        waiting -= 1;
                        answers.insert(done.mount_point, done.figures);
                    }
                }
                Err(_) => break,
            }
        }
        if !queue.is_empty() {
            if !std::mem::replace(&mut self.starved, true) {
                log::warn!(
                    "statvfs: {} calls are stuck on hung filesystems; {} more mounts get no \
                     disk row until one returns",
                    self.busy.len(),
                    queue.len()
                );
            }
        } else {
            self.starved = false;
        }
        self.hung
            .retain(|p| mounts.iter().any(|m| &m.mount_point == p));
        let mut rows = Vec::with_capacity(mounts.len());
        for m in mounts {
            match answers.remove(&m.mount_point) {
                Some(figures) => {
                    if self.hung.remove(&m.mount_point) {
                        log::info!(
                            "statvfs {} ({}) answers again; its disk row is back",
                            Visible(&m.mount_point),
                            Visible(&m.device)
                        );
                    }
                    match figures {
                        Ok((frsize, blocks, bfree, bavail)) => {
                            rows.extend(usage(m, frsize, blocks, bfree, bavail));
                        }
                        Err(e) => {
                            log::debug!("statvfs {}: {e}; mount skipped", Visible(&m.mount_point))
                        }
                    }
                }
                None if asked.contains(m.mount_point.as_str())
                    && self.hung.insert(m.mount_point.clone()) =>
                {
                    log::warn!(
                        "statvfs {} ({}) did not answer within {} ms (a hung FUSE or network \
                         filesystem?): its disk row is left out, and it is not asked again \
                         until that call returns",
                        Visible(&m.mount_point),
                        Visible(&m.device),
                        budget.as_millis()
                    );
                }
                None => {}
            }
        }
        rows
    }

    /// An idle worker, or a new one while fewer than the cap exist.
    fn worker(&mut self) -> Option<Worker> {
        if let Some(w) = self.idle.pop() {
            return Some(w);
        }
        if self.idle.len() + self.busy.len() >= MAX_STATVFS_WORKERS {
            return None;
        }
        let (jobs, rx) = mpsc::channel::<String>();
        let done = self.done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("netwatch-statvfs".into())
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                // Ends when the tracker is dropped (its job sender with it)
                // or, for a call still stuck then, once that call returns.
                for mount_point in rx {
                    let figures = rustix::fs::statvfs(mount_point.as_str())
                        .map(|s| (s.f_frsize, s.f_blocks, s.f_bfree, s.f_bavail));
                    let answer = Done {
                        mount_point,
                        figures,
                    };
                    if done.send(answer).is_err() {
                        return;
                    }
                }
            });
        match spawned {
            Ok(_) => Some(Worker { jobs }),
            Err(e) => {
                log::debug!("starting a statvfs worker thread: {e}; disk rows left out this tick");
                None
            }
        }
    }
}

/// `/proc/self/mounts`, kept open: polling it reports a change of the
/// mount table (`POLLPRI`, proc(5)), so an unchanged table is not read.
#[derive(Debug)]
struct Mounts {
    file: fs::File,
    usage: Vec<UsageMount>,
}

impl Mounts {
    fn open() -> std::io::Result<Self> {
        let file = fs::File::open("/proc/self/mounts")?;
        let mut m = Self {
            file,
            usage: Vec::new(),
        };
        m.read()?;
        Ok(m)
    }

    /// Parse the table again, from its start.
    fn read(&mut self) -> std::io::Result<()> {
        use std::io::{Read, Seek};
        self.file.rewind()?;
        let mut text = String::new();
        self.file.read_to_string(&mut text)?;
        let (mounts, skipped) = parse_mounts(&text);
        if skipped > 0 {
            log::debug!("/proc/self/mounts: skipped {skipped} malformed lines");
        }
        self.usage = usage_mounts(&mounts);
        Ok(())
    }

    /// The table changed since it was last read.
    fn changed(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags};
        let mut fds = [PollFd::new(&self.file, PollFlags::PRI)];
        match poll(&mut fds, Some(&rustix::event::Timespec::default())) {
            Ok(0) => false,
            Ok(_) => fds[0].revents().intersects(PollFlags::PRI | PollFlags::ERR),
            Err(_) => true,
        }
    }
}

impl DiskTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Usage of every device-backed mount, and the I/O since the previous
    /// call (`None` on the first call, or when diskstats or /sys/block
    /// could not be read; the next call then starts a new baseline).
    pub fn sample(&mut self) -> (Vec<DiskUsage>, Option<DiskIo>) {
        (self.read_usage(), self.read_io())
    }

    fn read_usage(&mut self) -> Vec<DiskUsage> {
        let fresh = match self.mounts.take() {
            Some(mut m) if m.changed() => m.read().map(|()| m),
            Some(m) => Ok(m),
            None => Mounts::open(),
        };
        match fresh {
            Ok(m) => {
                let mounts = &self.mounts.insert(m).usage;
                self.statvfs.usage(mounts, STATVFS_BUDGET)
            }
            Err(e) => {
                log::debug!("reading /proc/self/mounts: {e}; disk usage left empty");
                Vec::new()
            }
        }
    }

    fn read_io(&mut self) -> Option<DiskIo> {
        let cur = match self.read_disk_sectors() {
            Ok(c) => c,
            Err(e) => {
                log::debug!("{e}; disk I/O left empty");
                self.prev = None;
                return None;
            }
        };
        let io = self.prev.as_ref().map(|prev| io_since(prev, &cur));
        self.prev = Some(cur);
        io
    }

    fn read_disk_sectors(&mut self) -> Result<HashMap<String, Sectors>, String> {
        let text = fs::read_to_string("/proc/diskstats")
            .map_err(|e| format!("reading /proc/diskstats: {e}"))?;
        let (stats, skipped) = parse_diskstats(&text);
        if skipped > 0 {
            log::debug!("/proc/diskstats: skipped {skipped} malformed rows");
        }
        // A disk added or removed shows in diskstats: only then list
        // /sys/block again.
        let listed = stats.iter().map(|s| s.name.as_str());
        let whole = match self.whole.take() {
            Some((names, whole)) if names.iter().map(String::as_str).eq(listed) => whole,
            _ => whole_disks(Path::new("/sys/block"))
                .map_err(|e| format!("listing /sys/block: {e}"))?,
        };
        let sectors = whole_disk_sectors(&stats, &whole);
        self.whole = Some((stats.into_iter().map(|s| s.name).collect(), whole));
        Ok(sectors)
    }
}

/// Bytes read and written by the whole disks since boot (or since each
/// disk appeared): netwatch-sdk's cumulative `collect_disk_io`, with the
/// same whole-disk rule as [`DiskTracker`] (partitions and virtual stacks
/// not counted twice). Reads `/proc/diskstats` and lists `/sys/block`
/// each call (no cache).
pub fn io_since_boot() -> Result<DiskIo, String> {
    let text = fs::read_to_string("/proc/diskstats")
        .map_err(|e| format!("reading /proc/diskstats: {e}"))?;
    let (stats, skipped) = parse_diskstats(&text);
    if skipped > 0 {
        log::debug!("/proc/diskstats: skipped {skipped} malformed rows");
    }
    let whole =
        whole_disks(Path::new("/sys/block")).map_err(|e| format!("listing /sys/block: {e}"))?;
    let cur = whole_disk_sectors(&stats, &whole);
    let zero: HashMap<String, Sectors> = cur.keys().map(|k| (k.clone(), (0, 0))).collect();
    Ok(io_since(&zero, &cur))
}

/// Bytes moved between two per-disk counter sets. A disk absent from
/// `prev` (hot-plugged) starts its baseline now; a counter that went
/// backwards (the disk was re-attached) counts from its reset.
pub fn io_since(prev: &HashMap<String, Sectors>, cur: &HashMap<String, Sectors>) -> DiskIo {
    let (mut read, mut written) = (0u64, 0u64);
    for (name, &(r, w)) in cur {
        if let Some(&(pr, pw)) = prev.get(name) {
            read = read.saturating_add(counter_delta(pr, r));
            written = written.saturating_add(counter_delta(pw, w));
        }
    }
    DiskIo {
        read_bytes: read.saturating_mul(DISKSTATS_SECTOR_BYTES),
        write_bytes: written.saturating_mul(DISKSTATS_SECTOR_BYTES),
    }
}

/// Per-disk cumulative sectors of the rows naming a whole disk.
pub fn whole_disk_sectors(
    stats: &[DiskStat],
    whole_disks: &HashSet<String>,
) -> HashMap<String, Sectors> {
    stats
        .iter()
        .filter(|s| whole_disks.contains(&s.name))
        .map(|s| (s.name.clone(), (s.sectors_read, s.sectors_written)))
        .collect()
}

/// Parse `/proc/diskstats` text line by line with procfs's row parser; a
/// malformed row is skipped and counted instead of failing the whole read.
pub fn parse_diskstats(text: &str) -> (Vec<DiskStat>, usize) {
    let mut skipped = 0;
    let stats = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| DiskStat::from_line(l).map_err(|_| skipped += 1).ok())
        .collect();
    (stats, skipped)
}

/// Names in `sys_block` that have a backing `device`: physical whole disks,
/// not partitions (never listed there) nor virtual stacks (`loop`, `dm-`,
/// `md`, `zram`, `nbd` have no `device` link).
pub fn whole_disks(sys_block: &Path) -> std::io::Result<HashSet<String>> {
    let mut out = HashSet::new();
    for entry in fs::read_dir(sys_block)? {
        let entry = entry?;
        if entry.path().join("device").exists() {
            out.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(out)
}

/// Parse `/proc/mounts` text line by line with procfs's parser, skipping
/// (and counting) malformed lines. procfs 0.17 leaves `\040` (space)
/// escaped in paths; it is undone here.
pub fn parse_mounts(text: &str) -> (Vec<MountEntry>, usize) {
    let mut skipped = 0;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match Vec::<MountEntry>::from_buf_read(line.as_bytes()) {
            Ok(v) => out.extend(v.into_iter().map(|mut m| {
                m.fs_spec = m.fs_spec.replace(r"\040", " ");
                m.fs_file = m.fs_file.replace(r"\040", " ");
                m
            })),
            Err(_) => skipped += 1,
        }
    }
    (out, skipped)
}

/// The mounts whose usage is reported, in mount order: backed by a
/// `/dev/…` device, not a virtual filesystem, not hidden by a later mount
/// on the same path, and only the first mount of each device.
pub fn usage_mounts(mounts: &[MountEntry]) -> Vec<UsageMount> {
    // Last mount on each path wins: earlier ones are hidden under it.
    let mut top: HashMap<&str, usize> = HashMap::new();
    for (i, m) in mounts.iter().enumerate() {
        top.insert(m.fs_file.as_str(), i);
    }
    let mut seen_devices = HashSet::new();
    mounts
        .iter()
        .enumerate()
        .filter(|(i, m)| top.get(m.fs_file.as_str()) == Some(i))
        .map(|(_, m)| m)
        .filter(|m| m.fs_spec.starts_with("/dev/") && !VIRTUAL_FS.contains(&m.fs_vfstype.as_str()))
        .filter(|m| seen_devices.insert(m.fs_spec.as_str()))
        .map(|m| UsageMount {
            device: m.fs_spec.clone(),
            mount_point: m.fs_file.clone(),
        })
        .collect()
}

/// Usage from `statvfs` figures, as the SDK computes it: used = total −
/// free, available = what unprivileged users may still use, percentage of
/// total rounded to 0.1. `None` for a zero-sized filesystem.
pub fn usage(
    mount: &UsageMount,
    frsize: u64,
    blocks: u64,
    bfree: u64,
    bavail: u64,
) -> Option<DiskUsage> {
    let total_bytes = blocks.saturating_mul(frsize);
    if total_bytes == 0 {
        return None;
    }
    let used_bytes = total_bytes.saturating_sub(bfree.saturating_mul(frsize));
    Some(DiskUsage {
        mount_point: mount.mount_point.clone(),
        device: mount.device.clone(),
        total_bytes,
        used_bytes,
        available_bytes: bavail.saturating_mul(frsize),
        usage_pct: round_to(used_bytes as f64 / total_bytes as f64 * 100.0, 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept-open table reports a real mount and unmount, and nothing
    /// while the table stands still. Needs root (it mounts a tmpfs).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_mount_table_is_read_again_only_when_it_changed() {
        crate::root_check::require_root!("mounts a tmpfs");
        let mut m = Mounts::open().expect("/proc/self/mounts");
        assert!(!m.changed(), "nothing changed since it was read");
        let dir = tempfile::tempdir().unwrap();
        rustix::mount::mount(
            "netwatch-test",
            dir.path(),
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .expect("mounting a tmpfs");
        let mounted = m.changed();
        m.read().unwrap();
        let still = m.changed();
        rustix::mount::unmount(dir.path(), rustix::mount::UnmountFlags::empty())
            .expect("unmounting the tmpfs");
        assert!(mounted, "a mount is a change");
        assert!(!still, "reading it again settles the change");
        assert!(m.changed(), "an unmount is a change");
    }

    /// Answers come back in mount order, a failing mount is skipped, and
    /// the workers are reused (none left busy, none added on the next tick).
    #[test]
    fn statvfs_workers_answer_in_mount_order_and_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let m = |device: &str, point: &str| UsageMount {
            device: device.into(),
            mount_point: point.into(),
        };
        let mounts = [
            m("/dev/a", "/"),
            m("/dev/b", "/nonexistent/netwatch-statvfs-test"),
            m("/dev/c", &dir.path().display().to_string()),
        ];
        let mut w = StatvfsWorkers::default();
        let devices = |rows: Vec<DiskUsage>| rows.into_iter().map(|r| r.device).collect::<Vec<_>>();
        let budget = Duration::from_secs(10);
        assert_eq!(devices(w.usage(&mounts, budget)), ["/dev/a", "/dev/c"]);
        let workers = w.idle.len();
        assert!((1..=3).contains(&workers), "{workers} workers");
        assert!(w.busy.is_empty() && w.hung.is_empty());
        assert_eq!(devices(w.usage(&mounts, budget)), ["/dev/a", "/dev/c"]);
        assert_eq!(w.idle.len(), workers, "no worker added");
    }

    fn mounts(text: &str) -> Vec<MountEntry> {
        let (m, skipped) = parse_mounts(text);
        assert_eq!(skipped, 0, "fixture must parse");
        m
    }

    fn points(text: &str) -> Vec<(String, String)> {
        usage_mounts(&mounts(text))
            .into_iter()
            .map(|m| (m.device, m.mount_point))
            .collect()
    }

    fn pair(d: &str, p: &str) -> (String, String) {
        (d.to_string(), p.to_string())
    }

    #[test]
    fn keeps_device_backed_mounts_and_skips_virtual_ones() {
        let got = points(
            "proc /proc proc rw,relatime 0 0\n\
             sysfs /sys sysfs rw 0 0\n\
             tmpfs /run tmpfs rw,size=1632400k 0 0\n\
             cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n\
             /dev/sda1 / ext4 rw,relatime 0 0\n\
             /dev/nvme0n1p2 /home xfs rw 0 0\n\
             /dev/mapper/vg0-var /var ext4 rw 0 0\n\
             /dev/loop12 /snap/core22/834 squashfs ro 0 0\n\
             overlay /var/lib/docker/overlay2/x/merged overlay rw,lowerdir=/x 0 0\n",
        );
        assert_eq!(
            got,
            [
                pair("/dev/sda1", "/"),
                pair("/dev/nvme0n1p2", "/home"),
                pair("/dev/mapper/vg0-var", "/var")
            ]
        );
    }

    #[test]
    fn bind_mounts_of_one_device_are_reported_once() {
        let got = points(
            "/dev/vda / ext4 rw 0 0\n\
             /dev/vda /etc/hosts ext4 rw 0 0\n\
             /dev/vda /etc/resolv.conf ext4 rw 0 0\n",
        );
        assert_eq!(got, [pair("/dev/vda", "/")]);
    }

    #[test]
    fn a_mount_hidden_under_a_later_one_is_dropped() {
        let got = points("/dev/sda1 /mnt ext4 rw 0 0\n/dev/sdb1 /mnt xfs rw 0 0\n");
        assert_eq!(got, [pair("/dev/sdb1", "/mnt")]);
    }

    #[test]
    fn escaped_spaces_in_mount_points_are_undone() {
        let got = points("/dev/sdc1 /media/My\\040Disk vfat rw 0 0\n");
        assert_eq!(got, [pair("/dev/sdc1", "/media/My Disk")]);
    }

    #[test]
    fn malformed_mount_lines_are_counted_and_skipped() {
        let (m, skipped) = parse_mounts("\n/dev/sda1\n/dev/sda2 /boot\n/dev/sda3 / ext4 rw 0 0\n");
        assert_eq!(skipped, 2);
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn usage_math_is_exact() {
        let m = UsageMount {
            device: "/dev/sda1".into(),
            mount_point: "/".into(),
        };
        let u = usage(&m, 4096, 1000, 250, 200);
        assert_eq!(
            u,
            Some(DiskUsage {
                mount_point: "/".into(),
                device: "/dev/sda1".into(),
                total_bytes: 4_096_000,
                used_bytes: 3_072_000,
                available_bytes: 819_200,
                usage_pct: 75.0,
            })
        );
        assert_eq!(usage(&m, 4096, 0, 0, 0), None);
        assert_eq!(usage(&m, 4096, 3, 2, 2).map(|u| u.usage_pct), Some(33.3));
    }

    const DISKSTATS: &str = "\
   7       0 loop0 100 0 200 10 50 0 400 20 0 10 10 0 0 0 0 0 0
 253       0 zram0 100 0 200 10 50 0 400 20 0 10 10 0 0 0 0 0 0
 254       0 dm-0 100 0 900 10 50 0 900 20 0 10 10 0 0 0 0 0 0
   8       0 sda 1000 0 2000 100 500 0 4000 200 0 100 100 0 0 0 0 0 0
   8       1 sda1 800 0 1500 80 400 0 3000 150 0 80 80 0 0 0 0 0 0
 259       0 nvme0n1 200 0 1000 50 100 0 500 25 0 50 50
 259       1 nvme0n1p1 200 0 1000 50 100 0 500 25 0 50 50
";

    fn whole(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_whole_disks_count_no_partition_or_stack_double_count() {
        let (stats, skipped) = parse_diskstats(DISKSTATS);
        assert_eq!((stats.len(), skipped), (7, 0));
        let s = whole_disk_sectors(&stats, &whole(&["sda", "nvme0n1"]));
        assert_eq!(s.len(), 2);
        assert_eq!(s.get("sda"), Some(&(2000, 4000)));
        assert_eq!(s.get("nvme0n1"), Some(&(1000, 500)));
    }

    #[test]
    fn malformed_diskstats_rows_are_counted_and_skipped() {
        let (stats, skipped) = parse_diskstats("short line\n   8 0 sda x 0 1 1 1 1 1 1 1 1 1\n   8       0 sda 1000 0 2000 100 500 0 4000 200 0 100 100\n");
        assert_eq!((stats.len(), skipped), (1, 2));
    }

    #[test]
    fn io_since_sums_sector_deltas_times_512() {
        let prev: HashMap<String, Sectors> = [
            ("sda".into(), (2000, 4000)),
            ("nvme0n1".into(), (1000, 500)),
        ]
        .into();
        let cur: HashMap<String, Sectors> = [
            ("sda".into(), (2100, 4010)),
            ("nvme0n1".into(), (1001, 500)),
        ]
        .into();
        assert_eq!(
            io_since(&prev, &cur),
            DiskIo {
                read_bytes: 101 * 512,
                write_bytes: 10 * 512
            }
        );
    }

    #[test]
    fn io_since_baselines_new_disks_and_counts_resets_from_zero() {
        let prev: HashMap<String, Sectors> = [("sda".into(), (5000, 5000))].into();
        let cur: HashMap<String, Sectors> =
            [("sda".into(), (10, 20)), ("sdb".into(), (999, 999))].into();
        assert_eq!(
            io_since(&prev, &cur),
            DiskIo {
                read_bytes: 10 * 512,
                write_bytes: 20 * 512
            }
        );
    }

    #[test]
    fn whole_disks_are_the_sys_block_entries_with_a_device() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        for (name, has_device) in [
            ("sda", true),
            ("vda", true),
            ("loop0", false),
            ("dm-0", false),
        ] {
            let d = dir.path().join(name);
            fs::create_dir(&d)?;
            if has_device {
                fs::create_dir(d.join("device"))?;
            }
        }
        assert_eq!(whole_disks(dir.path())?, whole(&["sda", "vda"]));
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn prop_mount_parsing_and_filtering_never_panic(s in "(.{0,100}\n){0,6}") {
            let (m, _) = parse_mounts(&s);
            let _ = usage_mounts(&m);
        }

        #[test]
        fn prop_diskstats_parsing_never_panics(s in "(.{0,120}\n){0,6}") {
            let (stats, _) = parse_diskstats(&s);
            let names: HashSet<String> = stats.iter().map(|d| d.name.clone()).collect();
            let cur = whole_disk_sectors(&stats, &names);
            let _ = io_since(&cur, &cur);
        }

        #[test]
        fn prop_usage_is_consistent(frsize in 0u64..1 << 20, blocks: u64, bfree: u64, bavail: u64) {
            let m = UsageMount { device: "/dev/x".into(), mount_point: "/".into() };
            if let Some(u) = usage(&m, frsize, blocks, bfree, bavail) {
                proptest::prop_assert!(u.used_bytes <= u.total_bytes);
                proptest::prop_assert!((0.0..=100.0).contains(&u.usage_pct));
            }
        }
    }
}
