//! The pin baseline, stored so that a restart can never count an interval
//! twice. A one-entry array map pinned with the set (`maps/GENERATION`,
//! made by the agent, not by the BPF object) holds the generation of the
//! last delivered snapshot's baseline, in kernel memory. The baseline file
//! holds up to two sections, each stamped with a generation: the committed
//! one (the kernel's generation) and the pending one (the read now going to
//! the sinks, a generation never used before). Per tick:
//!
//! 1. after the read, before the sinks: the file is rewritten (temporary
//!    file, then rename) with the committed and the pending section;
//! 2. once the sinks kept the snapshot ([`BaselineStore::commit`]): the
//!    kernel's generation becomes the pending one's.
//!
//! A restarted agent uses the section whose generation equals the kernel's.
//! If the pending write failed (disk full, read-only), no section carries
//! the generation the kernel moves to, so a restart starts from the
//! kernel's counts now and says so: the bytes since the last delivered
//! snapshot are then not counted, and never counted twice. The next write
//! that succeeds stores the committed section again. The file goes through
//! [`crate::files::write_atomically`] (a temporary file of a random name,
//! `O_EXCL|O_NOFOLLOW`, mode 0600, renamed into place), without `fsync`
//! ([`crate::files::Durability::Volatile`]): the pins live in memory
//! (bpffs) and do not survive what loses the page cache (a reboot), and a
//! baseline is only ever used with the pins it was written for (the
//! instance tag includes the boot id).
//!
//! The file is written on a thread of its own ([`BoundedIo`]); the read
//! waits for it at most [`IO_BOUND`]. A write not done by then (a hung
//! filesystem), or asked for while an earlier one is still stuck, is a
//! failed write. One that completes later is harmless: the worker runs one
//! write at a time, in order, so a late file never replaces a newer one,
//! and every section in it holds the baseline of the read its generation
//! was given to. The kernel names a generation only once the sinks kept
//! that read's snapshot, so a restart that finds the late section uses
//! the baseline of the last kept snapshot: exact, as with a write in time.
//!
//! It must never wait on the file for longer than [`IO_BOUND`], never reuse a generation number, never let the kernel's
//! generation name a section that holds anything but the baseline of the
//! snapshot the sinks kept last, and never panic on a file it reads.

use std::io;
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapType};
use log::warn;

use super::pin::BaselineEntry;
use crate::bounded_io::{BoundedIo, Claim, Outcome, IO_BOUND};

/// The generation map's name under `maps/` of a pin set.
pub const MAP: &str = "GENERATION";
/// Its name in the kernel (`bpftool map show`).
const KERNEL_NAME: &[u8] = b"nw_generation";

/// Make a new generation map (generation 0) and pin it at `path`.
pub fn create(path: &Path) -> io::Result<()> {
    let fd = super::sys::create_array(KERNEL_NAME, 8, 1)
        .map_err(|e| io::Error::new(e.kind(), format!("creating the generation map: {e}")))?;
    super::sys::obj_pin(std::os::fd::AsFd::as_fd(&fd), path)
        .map_err(|e| io::Error::new(e.kind(), format!("pinning {}: {e}", path.display())))
}

/// Open the generation map pinned at `path`, checked to be one (an array
/// of one `u64`): anything else is refused, never read.
pub fn open(path: &Path) -> Result<Array<MapData, u64>, String> {
    let data = MapData::from_pin(path).map_err(|e| format!("{MAP}: opening the pin: {e}"))?;
    let info = data
        .info()
        .map_err(|e| format!("{MAP}: reading its info: {e}"))?;
    let ty = info.map_type().map_err(|e| format!("{MAP}: {e}"))?;
    let shape = (ty, info.key_size(), info.value_size(), info.max_entries());
    if shape != (MapType::Array, 4, 8, 1) {
        return Err(format!(
            "{MAP}: {shape:?}, expected an array of one 8-byte value"
        ));
    }
    Array::try_from(Map::Array(data)).map_err(|e| format!("{MAP}: {e}"))
}

/// The baseline file's first bytes (format 3: generations; 2 had none).
const MAGIC: &[u8; 8] = b"NWBASE03";
/// Bytes per entry: primary, secondary (u64), pid (u32), udp (u8), rx, tx (u64).
const ENTRY_LEN: usize = 8 + 8 + 4 + 1 + 8 + 8;

/// One section: a generation and the baseline it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub generation: u64,
    pub entries: Vec<BaselineEntry>,
}

/// A section's bytes: generation, entry count (u64), fixed-size entries,
/// all little-endian.
pub(crate) fn encode_section(generation: u64, entries: &[BaselineEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.id.primary.to_le_bytes());
        out.extend_from_slice(&e.id.secondary.to_le_bytes());
        out.extend_from_slice(&e.pid.to_le_bytes());
        out.push(u8::from(e.udp));
        out.extend_from_slice(&e.rx.to_le_bytes());
        out.extend_from_slice(&e.tx.to_le_bytes());
    }
    out
}

/// The file's bytes: the magic, the pins' instance tag (u16 length, then
/// its bytes), the section count (u8), the sections (already encoded), and
/// a CRC-32 of everything before it, so a torn or altered file is refused.
pub(crate) fn encode(instance: &str, sections: &[&[u8]]) -> Vec<u8> {
    let tag = instance.as_bytes();
    let tag = &tag[..tag.len().min(usize::from(u16::MAX))];
    let len = sections.iter().map(|s| s.len()).sum::<usize>();
    let mut out = Vec::with_capacity(8 + 2 + tag.len() + 1 + len + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(tag.len() as u16).to_le_bytes());
    out.extend_from_slice(tag);
    out.push(sections.len() as u8);
    for s in sections {
        out.extend_from_slice(s);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Little-endian reader over a byte slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }
}

/// Parse a baseline file written for `instance`; `Err` says why it is not used.
pub fn decode(bytes: &[u8], instance: &str) -> Result<Vec<Section>, String> {
    if !bytes.starts_with(MAGIC) {
        return Err("not a baseline file of this version".into());
    }
    let Some((body, crc)) = bytes.split_last_chunk::<4>() else {
        return Err("truncated".into());
    };
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err("checksum mismatch (torn or altered)".into());
    }
    let mut r = Reader(body.get(MAGIC.len()..).unwrap_or_default());
    let torn = || "truncated".to_string();
    let tag_len = usize::from(r.u16().ok_or_else(torn)?);
    let tag = String::from_utf8_lossy(r.take(tag_len).ok_or_else(torn)?).into_owned();
    if tag != instance {
        return Err(format!("written for other pins ({tag})"));
    }
    let count = r.u8().ok_or_else(torn)?;
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let generation = r.u64().ok_or_else(torn)?;
        let n = r.u64().ok_or_else(torn)?;
        let len = n
            .checked_mul(ENTRY_LEN as u64)
            .filter(|&l| l <= r.0.len() as u64)
            .ok_or_else(|| "entry count does not match".to_string())?;
        let mut entries = Vec::with_capacity(len as usize / ENTRY_LEN);
        for _ in 0..n {
            let primary = r.u64().ok_or_else(torn)?;
            let secondary = r.u64().ok_or_else(torn)?;
            let pid = r.u32().ok_or_else(torn)?;
            let udp = r.u8().ok_or_else(torn)? != 0;
            let rx = r.u64().ok_or_else(torn)?;
            let tx = r.u64().ok_or_else(torn)?;
            entries.push(BaselineEntry {
                id: crate::source::SocketId { primary, secondary },
                pid,
                udp,
                rx,
                tx,
            });
        }
        out.push(Section {
            generation,
            entries,
        });
    }
    if !r.0.is_empty() {
        return Err("bytes after the last section".into());
    }
    Ok(out)
}

/// A section with its encoded bytes, kept so that rewriting the committed
/// section costs a copy, not an encoding.
struct Stored {
    generation: u64,
    entries: Vec<BaselineEntry>,
    bytes: Vec<u8>,
}

impl Stored {
    fn new(generation: u64, entries: &[BaselineEntry]) -> Self {
        Self {
            generation,
            entries: entries.to_vec(),
            bytes: encode_section(generation, entries),
        }
    }
}

/// The baseline file and the kernel's generation, kept in step (see the
/// module's documentation).
pub struct BaselineStore {
    path: PathBuf,
    instance: String,
    kernel: Array<MapData, u64>,
    /// The section the kernel's generation names.
    committed: Option<Stored>,
    /// Whether the file holds `committed` (its last write succeeded).
    file_current: bool,
    /// The latest read's section, and whether its write succeeded.
    pending: Option<(Stored, bool)>,
    /// The next generation to hand out: above every one used before.
    next: u64,
    /// A failed write was logged (logged again after a success).
    failing: bool,
    /// The thread that writes the file (`None`: it could not be started,
    /// and every write fails).
    io: Option<BoundedIo>,
}

impl BaselineStore {
    /// For pins made now: nothing delivered yet.
    pub fn fresh(path: &Path, instance: &str, kernel: Array<MapData, u64>) -> Self {
        let next = kernel.get(&0, 0).unwrap_or(0).saturating_add(1);
        // Temporary files a crash left mid-write (never read).
        crate::files::remove_leftovers(path);
        Self {
            path: path.to_path_buf(),
            instance: instance.to_string(),
            kernel,
            committed: None,
            file_current: false,
            pending: None,
            next,
            failing: false,
            io: BoundedIo::new("baseline-writer", IO_BOUND)
                .map_err(|e| {
                    warn!("starting the baseline writer thread: {e}; the baseline is not stored")
                })
                .ok(),
        }
    }

    /// For pins an earlier agent left: the baseline of the last snapshot
    /// it delivered, if the file holds the section the kernel's generation
    /// names (`None` logged: counting starts from the kernel's counts now).
    pub fn resume(
        path: &Path,
        instance: &str,
        kernel: Array<MapData, u64>,
    ) -> (Self, Option<Vec<BaselineEntry>>) {
        let mut store = Self::fresh(path, instance, kernel);
        let current = match store.kernel.get(&0, 0) {
            Ok(g) => g,
            Err(e) => {
                warn!("reading the pins' baseline generation: {e}; counting starts from the kernel's counts now");
                return (store, None);
            }
        };
        let sections = match crate::files::read_own(path, "pin baseline") {
            Ok(Some(bytes)) => decode(&bytes, instance),
            Ok(None) => Err("no such file".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let sections = match sections {
            Ok(s) => s,
            Err(e) => {
                warn!(
                    "no baseline at {} ({e}): counting starts from the kernel's counts now",
                    path.display()
                );
                return (store, None);
            }
        };
        let highest = sections.iter().map(|s| s.generation).max().unwrap_or(0);
        store.next = current.max(highest).saturating_add(1);
        let Some(found) = sections.into_iter().find(|s| s.generation == current) else {
            warn!(
                "baseline {} has no section of generation {current}, the last one the previous agent delivered (its write failed): counting starts from the kernel's counts now; bytes moved since that agent's last delivered snapshot are not counted (never counted twice)",
                path.display()
            );
            return (store, None);
        };
        store.committed = Some(Stored::new(found.generation, &found.entries));
        store.file_current = true;
        (store, Some(found.entries))
    }

    /// The generation the kernel holds now.
    pub fn kernel_generation(&self) -> Option<u64> {
        self.kernel.get(&0, 0).ok()
    }

    /// After a read, before its snapshot goes to the sinks: store its
    /// baseline as the pending section beside the committed one. Nothing
    /// is written when it equals the committed one and the file holds that.
    pub fn prepare(&mut self, entries: &[BaselineEntry]) {
        let same = self
            .committed
            .as_ref()
            .is_some_and(|c| c.entries == entries);
        if same {
            self.pending = None;
            if self.file_current {
                return;
            }
        } else {
            let generation = self.next;
            self.next += 1;
            self.pending = Some((Stored::new(generation, entries), false));
        }
        let mut sections: Vec<&[u8]> = Vec::with_capacity(2);
        if let Some(c) = &self.committed {
            sections.push(&c.bytes);
        }
        if let Some((p, _)) = &self.pending {
            sections.push(&p.bytes);
        }
        let bytes = encode(&self.instance, &sections);
        match self.write_bounded(bytes) {
            Ok(()) => {
                self.file_current = true;
                if let Some((_, written)) = &mut self.pending {
                    *written = true;
                }
                if std::mem::take(&mut self.failing) {
                    warn!(
                        "the baseline at {} is stored again: restarts continue exactly",
                        self.path.display()
                    );
                }
            }
            Err(e) => {
                if !self.failing {
                    self.failing = true;
                    warn!(
                        "storing the baseline at {}: {e}; until a write succeeds, an agent restarted on these pins does not count the bytes moved since this agent's last delivered snapshot (never counts them twice)",
                        self.path.display()
                    );
                }
            }
        }
    }

    /// Write the file on the writer thread, waiting at most [`IO_BOUND`].
    fn write_bounded(&self, bytes: Vec<u8>) -> Result<(), String> {
        let Some(io) = &self.io else {
            return Err("no writer thread".into());
        };
        let path = self.path.clone();
        let outcome = io.run(move |claim: Claim<io::Result<()>>| {
            // A late result is dropped: a late file is harmless (see the
            // module's documentation).
            claim.deliver(write(&path, &bytes));
        });
        match outcome {
            Outcome::Done(r) => r.map_err(|e| e.to_string()),
            Outcome::TimedOut => Err(format!(
                "the write did not finish within {} ms (a hung filesystem?)",
                IO_BOUND.as_millis()
            )),
            Outcome::Busy => Err("an earlier write is still stuck (a hung filesystem?)".into()),
            Outcome::Failed => Err("the writer thread failed without an answer".into()),
        }
    }

    /// The sinks kept the snapshot of the latest read: the kernel's
    /// generation moves to its section (one the file does not hold if its
    /// write failed, so a restart never uses an older one).
    pub fn commit(&mut self) {
        let Some((pending, written)) = self.pending.take() else {
            return;
        };
        match self.kernel.set(0, pending.generation, 0) {
            Ok(()) => {
                self.committed = Some(pending);
                self.file_current = written;
            }
            Err(e) => warn!(
                "moving the pins' baseline generation to {}: {e}; a restart may count the last interval twice",
                pending.generation
            ),
        }
    }
}

/// Write `bytes` to `path`, whole or not at all (the old file stays whole).
fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // Volatile: only ever used with the pins it was written for, which a
    // power loss takes away (a restart then re-seeds); rewritten every tick.
    crate::files::write_atomically(path, bytes, crate::files::Durability::Volatile).map_err(|e| {
        let why = e.to_string();
        io::Error::new(e.source.kind(), why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SocketId;

    fn entry(primary: u64, rx: u64) -> BaselineEntry {
        BaselineEntry {
            id: SocketId {
                primary,
                secondary: 7,
            },
            pid: 42,
            udp: primary.is_multiple_of(2),
            rx,
            tx: 3,
        }
    }

    #[test]
    fn sections_round_trip_and_torn_or_foreign_files_are_refused() {
        let a = vec![entry(u64::MAX, 1 << 40), entry(2, 0)];
        let b = vec![entry(5, 9)];
        let (sa, sb) = (encode_section(3, &a), encode_section(4, &b));
        let bytes = encode("tag:a", &[&sa, &sb]);
        assert_eq!(
            decode(&bytes, "tag:a").unwrap(),
            vec![
                Section {
                    generation: 3,
                    entries: a
                },
                Section {
                    generation: 4,
                    entries: b
                }
            ]
        );
        assert_eq!(decode(&encode("tag:a", &[]), "tag:a").unwrap(), vec![]);
        assert!(decode(&bytes, "tag:b").unwrap_err().contains("other pins"));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], "tag:a").is_err(), "torn at {cut}");
        }
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x10;
            assert!(decode(&altered, "tag:a").is_err(), "altered byte {i}");
        }
        // The format before generations is not read as this one.
        let mut old = b"NWBASE02".to_vec();
        old.extend_from_slice(&bytes[8..]);
        assert!(decode(&old, "tag:a").is_err());
    }
}
