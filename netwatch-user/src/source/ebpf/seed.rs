//! Seeds the kernel's socket table with the sockets that exist before the
//! programs attach, so the first read lists idle connections, listeners and
//! unconnected UDP sockets with their owners, as `ss -p` does. It resolves
//! the iterator's field offsets from the running kernel's BTF (given to the
//! object as load-time globals by [`super::tier::open`]) and runs the BPF
//! iterator `iter/task_file` once after the tier's programs are attached.
//! It never counts bytes (seeded entries hold 0) and never fails the load:
//! a kernel without BPF iterators (< 5.8) loses only the seeding, which is
//! reported as an error for the caller to log.

use std::io::{self, Read};
use std::path::Path;
use std::sync::OnceLock;

use aya::programs::{Iter, ProgramError};
use aya::Ebpf;
use btf_rs::Btf;
use netwatch_common::seeded;
use thiserror::Error;

use super::btf::{find_struct, offset, BtfError, VMLINUX_BTF};

/// The iterator program's name in the object.
pub const PROGRAM: &str = "iter_task_file";
/// The iterator target it attaches to (`bpf_iter_task_file` in kernel BTF).
pub const TARGET: &str = "task_file";

/// Byte offsets the iterator needs, from kernel BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedOffsets {
    pub file_f_inode: u32,
    pub file_private_data: u32,
    pub inode_i_mode: u32,
    pub socket_sk: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    pub skc_state: u32,
}

impl SeedOffsets {
    /// Resolve from a BTF file (the kernel's, or a saved copy).
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let off = |strukt: &'static str, member: &'static str| -> Result<u32, BtfError> {
            offset(&btf, &find_struct(&btf, strukt)?, strukt, member)
        };
        Ok(Self {
            file_f_inode: off("file", "f_inode")?,
            file_private_data: off("file", "private_data")?,
            inode_i_mode: off("inode", "i_mode")?,
            socket_sk: off("socket", "sk")?,
            task_tgid: off("task_struct", "tgid")?,
            task_comm: off("task_struct", "comm")?,
            task_cgroups: off("task_struct", "cgroups")?,
            css_set_dfl_cgrp: off("css_set", "dfl_cgrp")?,
            cgroup_kn: off("cgroup", "kn")?,
            kernfs_node_id: off("kernfs_node", "id")?,
            skc_state: off("sock_common", "skc_state")?,
        })
    }

    /// The object's global names and values.
    fn globals(&self) -> Vec<(&'static str, u32)> {
        vec![
            ("OFF_FILE_F_INODE", self.file_f_inode),
            ("OFF_FILE_PRIVATE_DATA", self.file_private_data),
            ("OFF_INODE_I_MODE", self.inode_i_mode),
            ("OFF_SOCKET_SK", self.socket_sk),
            ("OFF_TASK_TGID", self.task_tgid),
            ("OFF_TASK_COMM", self.task_comm),
            ("OFF_TASK_CGROUPS", self.task_cgroups),
            ("OFF_CSS_SET_DFL_CGRP", self.css_set_dfl_cgrp),
            ("OFF_CGROUP_KN", self.cgroup_kn),
            ("OFF_KERNFS_NODE_ID", self.kernfs_node_id),
            ("OFF_SKC_STATE", self.skc_state),
        ]
    }
}

/// The running kernel's offsets, resolved once per process.
fn kernel_offsets() -> &'static Result<SeedOffsets, String> {
    static OFFSETS: OnceLock<Result<SeedOffsets, String>> = OnceLock::new();
    OFFSETS
        .get_or_init(|| SeedOffsets::from_file(Path::new(VMLINUX_BTF)).map_err(|e| e.to_string()))
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
    /// Entries created for sockets the programs had not seen.
    pub created: u64,
    /// Sockets that already had an entry (moved bytes since attach, or
    /// shared with a process seen first).
    pub tracked: u64,
    /// Entries the map refused (full).
    pub failed: u64,
}

impl SeedReport {
    fn tally(&mut self, codes: &[u8]) {
        for &c in codes {
            match c {
                seeded::CREATED => self.created += 1,
                seeded::TRACKED => self.tracked += 1,
                _ => self.failed += 1,
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum SeedError {
    #[error("resolving the iterator's field offsets from kernel BTF: {0}")]
    Offsets(String),
    #[error("reading kernel BTF: {0}")]
    KernelBtf(#[source] aya::BtfError),
    #[error("the BPF object has no program {PROGRAM}")]
    Missing,
    #[error("{action} the iter/{TARGET} program (BPF iterators need Linux ≥ 5.8): {source}")]
    Program {
        action: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("creating the iter/{TARGET} iterator: {0}")]
    Link(#[source] aya::programs::links::LinkError),
    #[error("reading the iter/{TARGET} iterator: {0}")]
    Read(#[source] io::Error),
}

/// Most consecutive EAGAIN reads tolerated: the kernel stops a read after a
/// million objects without output (files that are not sockets), and the
/// next read resumes where it stopped.
const MAX_EAGAIN: u32 = 1000;

/// Load the iterator into `ebpf` (whose tier programs are attached), run it
/// once to the end, and unload it.
pub fn run(ebpf: &mut Ebpf) -> Result<SeedReport, SeedError> {
    kernel_offsets()
        .as_ref()
        .map_err(|e| SeedError::Offsets(e.clone()))?;
    let btf = aya::Btf::from_sys_fs().map_err(SeedError::KernelBtf)?;
    let prog: &mut Iter = ebpf
        .program_mut(PROGRAM)
        .ok_or(SeedError::Missing)?
        .try_into()
        .map_err(|source| SeedError::Program {
            action: "finding",
            source,
        })?;
    let err = |action| move |source| SeedError::Program { action, source };
    prog.load(TARGET, &btf).map_err(err("loading"))?;
    let result = iterate(prog);
    // The program is needed once: free it whatever happened.
    let _ = prog.unload();
    result
}

fn iterate(prog: &mut Iter) -> Result<SeedReport, SeedError> {
    let err = |action| move |source| SeedError::Program { action, source };
    let link_id = prog.attach().map_err(err("attaching"))?;
    let link = prog.take_link(link_id).map_err(err("taking the link of"))?;
    let mut file = link.into_file().map_err(SeedError::Link)?;
    let mut report = SeedReport::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eagain = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(report),
            Ok(n) => {
                eagain = 0;
                report.tally(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && eagain < MAX_EAGAIN => eagain += 1,
            Err(e) => return Err(SeedError::Read(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_offsets_from_running_kernel() {
        let o = SeedOffsets::from_file(Path::new(VMLINUX_BTF)).expect("this kernel publishes BTF");
        // skc_state follows skc_family (u16 at 16) in sock_common on every kernel.
        assert_eq!(o.skc_state, 18, "{o:?}");
        assert_ne!(o.file_private_data, o.file_f_inode, "{o:?}");
        assert!(o.task_comm > o.task_tgid, "{o:?}");
    }

    #[test]
    fn tally_counts_each_code() {
        let mut r = SeedReport::default();
        r.tally(&[seeded::CREATED, seeded::CREATED, seeded::TRACKED, 9]);
        assert_eq!(
            r,
            SeedReport {
                created: 2,
                tracked: 1,
                failed: 1
            }
        );
    }
}
