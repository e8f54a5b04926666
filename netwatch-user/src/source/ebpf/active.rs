//! The active set: which sockets moved bytes or changed state since the
//! last read. The programs mark a socket in `ACTIVE[epoch & 1]` on its
//! first event of an interval (`netwatch_common::names::EPOCH`); a read
//! advances `EPOCH`, drains the generation the events just left with
//! `BPF_MAP_LOOKUP_AND_DELETE_BATCH` and looks up only those sockets. It
//! never decides what a socket's counters mean, and never loses a mark: a
//! failed drain leaves the caller to walk the whole socket map.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use aya::maps::{Array, MapData};
use netwatch_common::SockKey;

use super::sys;

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
    /// (cleared first), by `BPF_MAP_LOOKUP_AND_DELETE_BATCH`. Marks added
    /// meanwhile stay for a later drain. On an error `out` holds the keys
    /// taken before it (out of the set already).
    pub fn drain(&mut self, gen: usize, out: &mut Vec<SockKey>) -> io::Result<()> {
        out.clear();
        sys::batch_read(
            self.sets[gen & 1].as_fd(),
            sys::Batch::LookupAndDelete,
            &mut self.keys,
            &mut self.values,
            |keys, _| out.extend_from_slice(keys),
        )
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
