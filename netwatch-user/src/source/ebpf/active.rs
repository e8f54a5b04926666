//! The active set: which sockets moved bytes or changed state since the
//! last read. The programs mark a socket in `ACTIVE[epoch & 1]` on its
//! first event of an interval (`netwatch_common::names::EPOCH`); a read
//! advances `EPOCH`, drains the generation the events just left with
//! `BPF_MAP_LOOKUP_AND_DELETE_BATCH` and looks up only those sockets. It
//! never decides what a socket's counters mean, and never loses a mark: a
//! failed drain leaves the caller to walk the whole socket map.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use aya::maps::{Array, MapData};
use netwatch_common::{SockKey, SockStats};

/// `BPF_MAP_LOOKUP_ELEM`, `BPF_MAP_LOOKUP_AND_DELETE_BATCH`.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The element member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// bpf(2) command `cmd` with `attr`, the `union bpf_attr` member of that
/// command's layout (its pointers set to live buffers of the sizes the
/// command reads or writes); the syscall's return value (an fd for the
/// commands that make one). The one wrapper of the syscall for this
/// source's own commands (`held`, `generation` and `misses` use it too).
pub(super) fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) with an attr of the command's layout, whose pointers
    // the caller made point at live buffers of the sizes the command uses.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The epoch map and the two generations, with buffers reused across reads.
pub struct ActiveSet {
    epoch_map: Array<MapData, u32>,
    sets: [OwnedFd; 2],
    epoch: u32,
    keys: Vec<SockKey>,
    values: Vec<u32>,
}

/// Keys taken per batch call (a hash bucket bigger than this grows it).
const CHUNK: usize = 4096;

impl ActiveSet {
    pub fn new(epoch_map: Array<MapData, u32>, sets: [OwnedFd; 2]) -> Self {
        let epoch = epoch_map.get(&0, 0).unwrap_or(0);
        Self {
            epoch_map,
            sets,
            epoch,
            keys: vec![SockKey::default(); CHUNK],
            values: vec![0; CHUNK],
        }
    }

    /// Start a new interval: the programs mark into the other generation
    /// from now on. Returns the generation they left, to [`Self::drain`].
    pub fn advance(&mut self) -> io::Result<usize> {
        let left = (self.epoch & 1) as usize;
        // Kept below 2^31: the programs store `epoch + 1`, never 0.
        let next = self.epoch.wrapping_add(1) & 0x7fff_ffff;
        self.epoch_map
            .set(0, next, 0)
            .map_err(|e| io::Error::other(format!("setting EPOCH: {e}")))?;
        self.epoch = next;
        Ok(left)
    }

    /// Take every key of generation `gen` out of the set, into `out`
    /// (cleared first). Marks added meanwhile stay for a later drain.
    pub fn drain(&mut self, gen: usize, out: &mut Vec<SockKey>) -> io::Result<()> {
        out.clear();
        let fd = self.sets[gen & 1].as_raw_fd() as u32;
        let mut cursor: u32 = 0;
        let mut next: u32 = 0;
        let mut first = true;
        loop {
            let chunk = self.keys.len();
            let mut attr = BatchAttr {
                in_batch: if first {
                    0
                } else {
                    &cursor as *const u32 as u64
                },
                out_batch: &mut next as *mut u32 as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: chunk as u32,
                map_fd: fd,
                ..BatchAttr::default()
            };
            let r = bpf(BPF_MAP_LOOKUP_AND_DELETE_BATCH, &mut attr);
            let n = (attr.count as usize).min(chunk);
            match r.as_ref().map_err(io::Error::raw_os_error) {
                Err(Some(libc::ENOSPC)) if chunk < 1 << 20 => {
                    self.keys.resize(chunk * 4, SockKey::default());
                    self.values.resize(chunk * 4, 0);
                    continue;
                }
                Ok(_) | Err(Some(libc::ENOENT)) => {}
                Err(_) => return r.map(drop),
            }
            out.extend_from_slice(&self.keys[..n]);
            if r.is_err() {
                return Ok(());
            }
            cursor = next;
            first = false;
        }
    }
}

/// One `SOCKETS` entry by key into `value`; false if it has none.
pub fn lookup(fd: BorrowedFd<'_>, key: &SockKey, value: &mut SockStats) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const SockKey as u64,
        value: value as *mut SockStats as u64,
        ..ElemAttr::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The fd of a map, duplicated.
pub fn fd_of(map: &aya::maps::Map) -> Option<OwnedFd> {
    match map {
        aya::maps::Map::HashMap(d) | aya::maps::Map::LruHashMap(d) => {
            d.fd().as_fd().try_clone_to_owned().ok()
        }
        _ => None,
    }
}

impl ActiveSet {
    /// From the `EPOCH`, `ACTIVE0` and `ACTIVE1` maps; `None` (every read
    /// walks the whole map) if any is missing or of another kind.
    pub fn from_maps(maps: [Option<aya::maps::Map>; 3]) -> Option<Self> {
        let [Some(epoch), Some(a0), Some(a1)] = maps else {
            return None;
        };
        let sets = [fd_of(&a0)?, fd_of(&a1)?];
        let epoch = Array::try_from(epoch).ok()?;
        Some(Self::new(epoch, sets))
    }
}
