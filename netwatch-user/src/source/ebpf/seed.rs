//! Seeds the kernel's socket table with the sockets that exist before the
//! programs attach, so the first read lists idle connections, listeners and
//! unconnected UDP sockets with their owners, as `ss -p` does. It resolves
//! the iterators' field offsets from the running kernel's BTF (given to the
//! object as load-time globals by [`super::tier::open`]) and runs the BPF
//! iterators once after the tier's programs are attached: `iter/task_file`
//! (every socket a process holds, with that owner), then `iter/tcp` and
//! `iter/udp` (sockets no process holds, listed without owner as `ss` does).
//! It never counts bytes (seeded entries hold 0) and never fails the load:
//! a kernel without BPF iterators (< 5.8) loses only the seeding, which is
//! reported as an error for the caller to log.

use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use aya::programs::{Iter, ProgramError};
use aya::Ebpf;
use btf_rs::Btf;
use netwatch_common::seeded;
use thiserror::Error;

use crate::error_chain::Once;

use super::btf::{find_struct, kernel_btf, kernel_btf_aya, offset, read_btf, BtfError};

/// The iterators, in the order they run: (program name in the object,
/// iterator target, needed). `task_file` gives sockets their owners and must
/// work; `tcp` and `udp` (Linux ≥ 5.9) add sockets no task holds.
pub const PASSES: [(&str, &str, bool); 3] = [
    ("iter_task_file", "task_file", true),
    ("iter_tcp", "tcp", false),
    ("iter_udp", "udp", false),
];

/// Byte offsets the iterator needs, from kernel BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedOffsets {
    pub file_f_inode: u32,
    pub file_private_data: u32,
    pub inode_i_mode: u32,
    pub socket_type: u32,
    pub task_tgid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub skc_state: u32,
    /// `inet_timewait_sock.tw_substate`: the state a time-wait socket
    /// reports (`iter_tcp_states`), as `sock_diag` and `/proc` do.
    pub tw_substate: u32,
}

impl SeedOffsets {
    /// Resolve from a BTF file (the kernel's, or a saved copy).
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        Self::from_btf(&read_btf(path)?)
    }

    /// Resolve from parsed BTF.
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        let off = |strukt: &'static str, member: &'static str| -> Result<u32, BtfError> {
            offset(btf, &find_struct(btf, strukt)?, strukt, member)
        };
        Ok(Self {
            file_f_inode: off("file", "f_inode")?,
            file_private_data: off("file", "private_data")?,
            inode_i_mode: off("inode", "i_mode")?,
            socket_type: off("socket", "type")?,
            task_tgid: off("task_struct", "tgid")?,
            task_cgroups: off("task_struct", "cgroups")?,
            css_set_dfl_cgrp: off("css_set", "dfl_cgrp")?,
            cgroup_kn: off("cgroup", "kn")?,
            kernfs_node_id: off("kernfs_node", "id")?,
            skc_state: off("sock_common", "skc_state")?,
            tw_substate: off("inet_timewait_sock", "tw_substate")?,
        })
    }

    /// The object's global names and values.
    fn globals(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("OFF_FILE_F_INODE", self.file_f_inode),
            ("OFF_FILE_PRIVATE_DATA", self.file_private_data),
            ("OFF_INODE_I_MODE", self.inode_i_mode),
            ("OFF_SOCKET_TYPE", self.socket_type),
            ("OFF_TASK_TGID", self.task_tgid),
            ("OFF_TASK_CGROUPS", self.task_cgroups),
            ("OFF_CSS_SET_DFL_CGRP", self.css_set_dfl_cgrp),
            ("OFF_CGROUP_KN", self.cgroup_kn),
            ("OFF_KERNFS_NODE_ID", self.kernfs_node_id),
            ("OFF_SKC_STATE", self.skc_state),
            ("OFF_TW_SUBSTATE", self.tw_substate),
        ]
    }
}

/// The global holding the most entries seeding may create.
pub const LIMIT_GLOBAL: &str = "SEED_LIMIT";

/// Seeding may fill at most half the socket map: the rest stays free for
/// sockets that move bytes, and seeding never makes the LRU evict.
pub fn limit(max_sockets: u32) -> u32 {
    max_sockets / 2
}

/// The running kernel's offsets, resolved once per process.
fn kernel_offsets() -> &'static Result<SeedOffsets, Arc<BtfError>> {
    static OFFSETS: OnceLock<Result<SeedOffsets, Arc<BtfError>>> = OnceLock::new();
    OFFSETS.get_or_init(|| {
        kernel_btf()
            .and_then(|btf| SeedOffsets::from_btf(&btf))
            .map_err(Arc::new)
    })
}

/// The load-time globals to set on the object: empty (defaults kept, and
/// [`run`] then refuses to seed) if the kernel's BTF lacks a field.
pub fn globals() -> &'static [(&'static str, u32)] {
    static GLOBALS: OnceLock<Vec<(&'static str, u32)>> = OnceLock::new();
    GLOBALS.get_or_init(|| {
        kernel_offsets()
            .as_ref()
            .map(SeedOffsets::globals)
            .unwrap_or_default()
    })
}

/// What the seeding did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Entries created for sockets a process holds, with that owner.
    pub created: u64,
    /// Entries created for sockets no visible process holds (no owner).
    pub ownerless: u64,
    /// Sockets that already had an entry when the owners' pass met them
    /// (moved bytes since attach, or shared with a process seen first).
    pub tracked: u64,
    /// Entries the map refused (full).
    pub failed: u64,
    /// Sockets not seeded because seeding had filled half the map.
    pub skipped: u64,
    /// Holders not listed as owners of a socket whose `OWNERS` slots other
    /// holders had taken (a listener inherited by many pre-fork workers).
    /// No bytes are lost: a holder that later moves bytes on it is counted
    /// in `OWNER_FULL` like any process past the slot limit.
    pub owners_full: u64,
}

/// One pass's outcome codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Tally {
    created: u64,
    tracked: u64,
    failed: u64,
    skipped: u64,
    owners_full: u64,
}

impl Tally {
    fn add(&mut self, codes: &[u8]) {
        for &c in codes {
            match c {
                seeded::CREATED => self.created += 1,
                seeded::TRACKED => self.tracked += 1,
                seeded::SKIPPED => self.skipped += 1,
                seeded::OWNERS_FULL => self.owners_full += 1,
                _ => self.failed += 1,
            }
        }
    }
}

/// Why seeding did not run. A leaf: each message carries its cause once
/// (aya's errors repeat their own causes, so they are rendered with
/// [`Once`]); the causes stay typed, none is chained as `source`.
#[derive(Debug, Error)]
pub enum SeedError {
    #[error("resolving the iterator's field offsets from kernel BTF: {0}")]
    Offsets(Arc<BtfError>),
    #[error("reading kernel BTF: {}", Once(.0))]
    KernelBtf(aya::BtfError),
    #[error("the BPF object has no program {0}")]
    Missing(&'static str),
    #[error("{action} the iter/{target} program (BPF iterators need Linux ≥ 5.8, iter/tcp and iter/udp ≥ 5.9): {}", Once(.error))]
    Program {
        action: &'static str,
        target: &'static str,
        error: ProgramError,
    },
    #[error("creating the iter/{target} iterator: {}", Once(.error))]
    Link {
        target: &'static str,
        error: aya::programs::links::LinkError,
    },
    #[error("reading the iter/{target} iterator: {error}")]
    Read {
        target: &'static str,
        error: io::Error,
    },
}

/// Most consecutive EAGAIN reads tolerated: the kernel stops a read after a
/// million objects without output (files that are not sockets), and the
/// next read resumes where it stopped.
const MAX_EAGAIN: u32 = 1000;

/// Run every pass once, in order, against `ebpf` (whose tier programs are
/// attached), unloading each iterator after use. Fails only if the owners'
/// pass fails; a later pass that fails is logged and skipped.
pub fn run(ebpf: &mut Ebpf) -> Result<SeedReport, SeedError> {
    kernel_offsets()
        .as_ref()
        .map_err(|e| SeedError::Offsets(e.clone()))?;
    let btf = kernel_btf_aya().map_err(SeedError::KernelBtf)?;
    let mut report = SeedReport::default();
    for (program, target, needed) in PASSES {
        match run_pass(ebpf, &btf, program, target) {
            Ok(t) if needed => {
                report.created += t.created;
                report.tracked += t.tracked;
                report.failed += t.failed;
                report.skipped += t.skipped;
                report.owners_full += t.owners_full;
            }
            Ok(t) => {
                report.ownerless += t.created;
                report.failed += t.failed;
                report.skipped += t.skipped;
            }
            Err(e) if needed => return Err(e),
            Err(e) => {
                log::warn!("sockets no process holds are not listed until they move bytes: {e}")
            }
        }
    }
    Ok(report)
}

fn run_pass(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    program: &'static str,
    target: &'static str,
) -> Result<Tally, SeedError> {
    let err = |action| {
        move |error| SeedError::Program {
            action,
            target,
            error,
        }
    };
    let prog: &mut Iter = ebpf
        .program_mut(program)
        .ok_or(SeedError::Missing(program))?
        .try_into()
        .map_err(err("finding"))?;
    prog.load(target, btf).map_err(err("loading"))?;
    let result = iterate(prog, target);
    // Each iterator runs once: free it whatever happened.
    let _ = prog.unload();
    result
}

fn iterate(prog: &mut Iter, target: &'static str) -> Result<Tally, SeedError> {
    let err = |action| {
        move |error| SeedError::Program {
            action,
            target,
            error,
        }
    };
    let link_id = prog.attach().map_err(err("attaching"))?;
    let link = prog.take_link(link_id).map_err(err("taking the link of"))?;
    let mut file = link
        .into_file()
        .map_err(|error| SeedError::Link { target, error })?;
    let mut tally = Tally::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eagain = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(tally),
            Ok(n) => {
                eagain = 0;
                tally.add(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && eagain < MAX_EAGAIN => eagain += 1,
            Err(error) => return Err(SeedError::Read { target, error }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_offsets_from_running_kernel() {
        let o = SeedOffsets::from_file(Path::new(super::super::btf::VMLINUX_BTF))
            .expect("this kernel publishes BTF");
        // skc_state follows skc_family (u16 at 16) in sock_common on every kernel.
        assert_eq!(o.skc_state, 18, "{o:?}");
        assert_ne!(o.file_private_data, o.file_f_inode, "{o:?}");
        assert!(o.task_cgroups > o.task_tgid, "{o:?}");
    }

    #[test]
    fn tally_counts_each_code() {
        let mut t = Tally::default();
        t.add(&[
            seeded::CREATED,
            seeded::CREATED,
            seeded::TRACKED,
            seeded::SKIPPED,
            seeded::OWNERS_FULL,
            9,
        ]);
        assert_eq!(
            t,
            Tally {
                created: 2,
                tracked: 1,
                failed: 1,
                skipped: 1,
                owners_full: 1,
            }
        );
    }
}
