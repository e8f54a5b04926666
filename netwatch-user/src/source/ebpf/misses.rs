//! The program runs the kernel skipped, read back so they are counted: a
//! program that would have run on a CPU where it (fentry/fexit, `tp_btf`)
//! or any kprobe/tracepoint program (kprobes, kretprobes, classic
//! tracepoints) was already running is not run, and the kernel counts it in
//! the program's `recursion_misses` (`bpf_prog_info`); a kprobe the kprobe
//! machinery itself missed (re-entered, or a kretprobe past `maxactive`) is
//! counted in its perf link's `missed` (`bpf_link_info`, Linux ≥ 6.7).
//! Each skipped run is an event the agent never saw (a state change, a
//! socket's end, a call's bytes), so the source adds these to its
//! `lost_records`.
//!
//! What each kernel tells: `recursion_misses` exists since Linux 5.12 for
//! trampoline and `tp_btf` programs; kprobes and classic tracepoints skipped
//! because another program was running count there only since 6.7 (before,
//! `trace_call_bpf` skips them silently: on 6.1 a nested kprobe-tier or
//! lifecycle program is lost uncounted), and so does a link's `missed`.
//!
//! It only reads: it never changes a program or a link. It finds the
//! programs once, at load (every loaded program that uses this source's
//! `COUNTERS` map: each of ours bumps a counter), which needs
//! `CAP_SYS_ADMIN`; then each read costs one `BPF_OBJ_GET_INFO_BY_FD` per
//! program and per kprobe link, on descriptors it holds.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::sys::{self, fd_by_id, next_id, Object};

/// `BPF_LINK_TYPE_PERF_EVENT`, `BPF_PERF_EVENT_KPROBE`, `_KRETPROBE`.
const BPF_LINK_TYPE_PERF_EVENT: u32 = 7;
const BPF_PERF_EVENT_KPROBE: u32 = 3;
const BPF_PERF_EVENT_KRETPROBE: u32 = 4;

/// `struct bpf_prog_info` up to `recursion_misses` (the kernel fills what
/// fits in the length given, and leaves out what it does not have).
#[repr(C)]
#[derive(Default)]
pub(crate) struct ProgInfo {
    pub type_: u32,
    pub id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    pub name: [u8; 16],
    ifindex: u32,
    gpl_compatible: u32,
    netns_dev: u64,
    netns_ino: u64,
    nr_jited_ksyms: u32,
    nr_jited_func_lens: u32,
    jited_ksyms: u64,
    jited_func_lens: u64,
    btf_id: u32,
    func_info_rec_size: u32,
    func_info: u64,
    nr_func_info: u32,
    nr_line_info: u32,
    line_info: u64,
    jited_line_info: u64,
    nr_jited_line_info: u32,
    line_info_rec_size: u32,
    jited_line_info_rec_size: u32,
    nr_prog_tags: u32,
    prog_tags: u64,
    run_time_ns: u64,
    run_cnt: u64,
    pub recursion_misses: u64,
}

// The UAPI layout (include/uapi/linux/bpf.h).
const _: () = assert!(std::mem::offset_of!(ProgInfo, name) == 64);
const _: () = assert!(std::mem::offset_of!(ProgInfo, recursion_misses) == 208);

/// `struct bpf_link_info` with its `perf_event.kprobe` member.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    type_: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    perf_type: u32,
    _pad2: u32,
    func_name: u64,
    name_len: u32,
    offset: u32,
    addr: u64,
    missed: u64,
    cookie: u64,
}

const _: () = assert!(std::mem::offset_of!(LinkInfo, perf_type) == 16);
const _: () = assert!(std::mem::offset_of!(LinkInfo, missed) == 48);

/// A program's info, and with `map_ids` the ids of the maps it uses
/// (as many as fit).
pub(crate) fn prog_info(fd: &OwnedFd, map_ids: Option<&mut [u32]>) -> io::Result<ProgInfo> {
    let mut info = ProgInfo::default();
    if let Some(ids) = map_ids {
        info.nr_map_ids = ids.len() as u32;
        info.map_ids = ids.as_mut_ptr() as u64;
    }
    sys::obj_info(fd.as_fd(), &mut info)?;
    Ok(info)
}

/// One of our programs, and what it reported last.
struct Prog {
    id: u32,
    name: String,
    fd: OwnedFd,
    misses: u64,
}

/// One kprobe link of one of our programs, and its last `missed`.
struct KprobeLink {
    prog_id: u32,
    fd: OwnedFd,
    missed: u64,
}

/// One program's figures, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramMisses {
    /// The kernel's program id.
    pub id: u32,
    /// Its name as the kernel keeps it (at most 15 bytes).
    pub name: String,
    /// `bpf_prog_info.recursion_misses`.
    pub recursion_misses: u64,
    /// The sum of `missed` over its kprobe links (0 where the kernel does
    /// not report it).
    pub kprobe_missed: u64,
}

/// The programs of one loaded object and their skipped runs.
pub struct Misses {
    progs: Vec<Prog>,
    links: Vec<KprobeLink>,
}

/// Most maps a program of ours uses (the buffer `find` reads ids into).
const MAX_MAPS: usize = 64;

impl Misses {
    /// Find every loaded program that uses the map `map_id` (this object's
    /// `COUNTERS`), and the kprobe links attaching them. Needs
    /// `CAP_SYS_ADMIN` (walking the ids).
    pub fn find(map_id: u32) -> io::Result<Self> {
        let mut progs = Vec::new();
        let mut id = 0;
        let mut ids = [0u32; MAX_MAPS];
        while let Some(next) = next_id(Object::Prog, id)? {
            id = next;
            let Some(fd) = fd_by_id(Object::Prog, id)? else {
                continue;
            };
            // Another program's info that cannot be read is not ours to
            // count; ours always can be (we hold the maps it uses).
            let Ok(info) = prog_info(&fd, Some(&mut ids)) else {
                continue;
            };
            let used = (info.nr_map_ids as usize).min(MAX_MAPS);
            if ids[..used].contains(&map_id) {
                let end = info.name.iter().position(|&b| b == 0).unwrap_or(16);
                progs.push(Prog {
                    id,
                    name: String::from_utf8_lossy(&info.name[..end]).into_owned(),
                    fd,
                    misses: info.recursion_misses,
                });
            }
        }
        let links = match kprobe_links(&progs) {
            Ok(l) => l,
            Err(e) => {
                // The links only add the kprobes' own missed counts.
                log::warn!(
                    "walking the BPF links for the kprobes' missed counts: {e}; those are not counted"
                );
                Vec::new()
            }
        };
        Ok(Self { progs, links })
    }

    /// Read every program's and link's figure again and return their sum:
    /// runs skipped since the programs were loaded. A figure that cannot
    /// be read keeps its last value (it never goes down).
    pub fn read(&mut self) -> u64 {
        for p in &mut self.progs {
            if let Ok(info) = prog_info(&p.fd, None) {
                p.misses = p.misses.max(info.recursion_misses);
            }
        }
        for l in &mut self.links {
            let mut info = LinkInfo::default();
            if sys::obj_info(l.fd.as_fd(), &mut info).is_ok() {
                l.missed = l.missed.max(info.missed);
            }
        }
        self.total()
    }

    /// The sum of the figures as last read.
    pub fn total(&self) -> u64 {
        self.progs.iter().map(|p| p.misses).sum::<u64>()
            + self.links.iter().map(|l| l.missed).sum::<u64>()
    }

    /// Each program's figures as last read.
    pub fn programs(&self) -> Vec<ProgramMisses> {
        self.progs
            .iter()
            .map(|p| ProgramMisses {
                id: p.id,
                name: p.name.clone(),
                recursion_misses: p.misses,
                kprobe_missed: self
                    .links
                    .iter()
                    .filter(|l| l.prog_id == p.id)
                    .map(|l| l.missed)
                    .sum(),
            })
            .collect()
    }

    /// The programs with a non-zero figure, `name count` each, for a log line.
    pub fn summary(&self) -> String {
        self.programs()
            .into_iter()
            .filter(|p| p.recursion_misses + p.kprobe_missed > 0)
            .map(|p| format!("{} {}", p.name, p.recursion_misses + p.kprobe_missed))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The kprobe links (perf-event links; Linux ≥ 6.6 tells their kind)
/// attaching `progs`.
fn kprobe_links(progs: &[Prog]) -> io::Result<Vec<KprobeLink>> {
    let mut links = Vec::new();
    let mut id = 0;
    while let Some(next) = next_id(Object::Link, id)? {
        id = next;
        let Some(fd) = fd_by_id(Object::Link, id)? else {
            continue;
        };
        let mut info = LinkInfo::default();
        if sys::obj_info(fd.as_fd(), &mut info).is_err() {
            continue;
        }
        let kprobe = info.type_ == BPF_LINK_TYPE_PERF_EVENT
            && matches!(
                info.perf_type,
                BPF_PERF_EVENT_KPROBE | BPF_PERF_EVENT_KRETPROBE
            );
        if kprobe && progs.iter().any(|p| p.id == info.prog_id) {
            links.push(KprobeLink {
                prog_id: info.prog_id,
                fd,
                missed: info.missed,
            });
        }
    }
    Ok(links)
}
