//! The on-disk spool: every snapshot not yet accepted by the cloud, one
//! checksummed record per file, oldest first, bounded by bytes.
//!
//! A record is written through [`crate::files::write_atomically`] (durable: a hidden
//! temporary file of a random name created `O_EXCL|O_NOFOLLOW`, mode 0600,
//! fsynced, renamed to `<seq>.nws` and the directory fsynced), so after a
//! crash (SIGKILL, power loss) a record is either whole or absent; a
//! leftover temporary file is a torn write and is removed and counted. The
//! directory is checked at open ([`crate::files::ensure_dir`]: refused if
//! another user could write it, or a symlink); a record is read through
//! `O_NOFOLLOW` and checked with `fstat`, and one that is a symlink, not
//! owned by the agent's user (or root) or group/world-writable was planted
//! by someone else: skipped, removed and counted (`foreign`), never sent. Only
//! after a write succeeded are the oldest records past the byte bound
//! dropped (counted), so a write that fails (disk full, read-only, EIO)
//! never costs an older record too; the snapshot it could not write is
//! counted as dropped and said once per run of failures. A record whose
//! frame or checksum is wrong is skipped, removed and counted: it must
//! never crash the agent nor stop the records behind it. A record that
//! cannot be read for an I/O reason (EMFILE, EIO, ENOMEM, EACCES, …) is
//! never removed: it stays and is read again later.
//!
//! This module stores and reads records; it never talks to the network,
//! never deletes a record it could not read for a reason other than its
//! content, and never loses a snapshot without counting it.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use log::{info, warn};
use netwatch_common::wire::Snapshot;
use thiserror::Error;

/// First bytes of every record.
pub const MAGIC: [u8; 4] = *b"NWSP";
/// Record format version.
pub const VERSION: u8 = 1;
/// magic (4) · version (1) · reserved (3) · payload length u32 LE · CRC-32 of payload u32 LE.
pub const HEADER_LEN: usize = 16;
const EXT: &str = "nws";
const TMP_PREFIX: &str = crate::files::TMP_PREFIX;

/// Why a record could not be read back.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("{0} bytes: shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("bad magic {0:02x?}")]
    Magic([u8; 4]),
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("header says {header} payload bytes, file holds {actual}")]
    Length { header: u64, actual: u64 },
    #[error("checksum mismatch (header {header:08x}, payload {actual:08x})")]
    Checksum { header: u32, actual: u32 },
    /// The JSON error quotes the payload (a planted record's text):
    /// shown escaped.
    #[error("payload is not a snapshot: {}", crate::text::Visible(.0))]
    Payload(String),
}

/// Frame `payload` as one record.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of one whole record, or why `bytes` is not one.
pub fn decode(bytes: &[u8]) -> Result<&[u8], FrameError> {
    let Some((header, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Short(bytes.len()));
    };
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    if header[4] != VERSION {
        return Err(FrameError::Version(header[4]));
    }
    let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if u64::from(len) != payload.len() as u64 {
        return Err(FrameError::Length {
            header: u64::from(len),
            actual: payload.len() as u64,
        });
    }
    let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let actual = crc32fast::hash(payload);
    if crc != actual {
        return Err(FrameError::Checksum {
            header: crc,
            actual,
        });
    }
    Ok(payload)
}

/// Why the spool could not do its job.
#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("spool directory {dir}: {error}")]
    Dir { dir: PathBuf, error: io::Error },
    /// The directory is refused (a symlink, another user's, writable by
    /// others), or could not be checked; the error says what to do.
    #[error(transparent)]
    Unsafe(#[from] crate::files::FileError),
    #[error(
        "writing spool record {path}: {error}; the snapshot is dropped (counted): \
         free space on that filesystem or make it writable"
    )]
    Write { path: PathBuf, error: io::Error },
    #[error("serializing a snapshot for the spool: {0}")]
    Serialize(serde_json::Error),
    #[error(
        "a snapshot of {size} bytes is larger than the whole spool bound of {max} bytes: \
         dropped (counted); raise [spool] max_bytes"
    )]
    TooLarge { size: u64, max: u64 },
    #[error("reading spool record {path}: {error}; the record is kept and read again later")]
    Read { path: PathBuf, error: io::Error },
}

impl From<serde_json::Error> for SpoolError {
    fn from(error: serde_json::Error) -> Self {
        SpoolError::Serialize(error)
    }
}

/// Why one record could not be read back: its content is bad (it is
/// removed and counted), or the read itself failed (it is kept).
#[derive(Debug, Error)]
enum ReadError {
    #[error(transparent)]
    Corrupt(#[from] FrameError),
    #[error("{0}")]
    Io(io::Error),
    /// Not the agent's record: a symlink, or a file another user could
    /// have written (the reason says which).
    #[error("{0}")]
    Foreign(String),
}

/// Counters shared with the delivery side and (later) `/metrics`.
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Records dropped because the spool was past its bound.
    pub evicted: AtomicU64,
    /// Records found corrupt and skipped.
    pub corrupt: AtomicU64,
    /// Temporary files of torn writes found at start.
    pub torn: AtomicU64,
    /// Snapshots that could not be written (disk full, read-only, EIO,
    /// serialization): lost, counted here.
    pub write_failed: AtomicU64,
    /// Record reads that failed for an I/O reason (the record was kept and
    /// is read again later); not a loss.
    pub read_errors: AtomicU64,
    /// Files at a record's name the agent did not write (a symlink, or
    /// owned by another user, or group/world-writable): skipped, removed,
    /// never sent. Not the agent's snapshots, so not in [`Self::dropped`].
    pub foreign: AtomicU64,
    /// Records waiting now.
    pub depth: AtomicU64,
    /// Bytes on disk now (headers included).
    pub bytes: AtomicU64,
}

impl SpoolStats {
    /// Everything the spool lost: evicted, corrupt and torn records, and
    /// snapshots it could not write.
    pub fn dropped(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
            + self.corrupt.load(Ordering::Relaxed)
            + self.torn.load(Ordering::Relaxed)
            + self.write_failed.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    size: u64,
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub seq: u64,
    pub snapshot: Snapshot,
    /// Length of the snapshot's JSON.
    pub json_len: usize,
}

/// The spool directory and its index (sequence number and size per record).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    entries: VecDeque<Entry>,
    bytes: u64,
    stats: Arc<SpoolStats>,
    /// Writes records (and numbers them); shared with a writer thread.
    writer: SpoolWriter,
    /// The latest evicted sequence numbers: one may be in flight, and if
    /// the cloud then answers for it, it was not dropped after all.
    evicted_recently: VecDeque<u64>,
    /// Records already answered for or evicted whose file could not be
    /// removed (a read-only filesystem): removal is tried again at every
    /// push and remove; they are never sent again by this run.
    undeleted: Vec<u64>,
    /// Reads are failing for an I/O reason: said once until a batch reads
    /// without one.
    read_failing: bool,
}

/// At most this many records that fail to read (I/O) are tried per batch,
/// so a spool of many records on a failing disk is not read whole each round.
const MAX_READ_FAILURES_PER_BATCH: usize = 8;

/// How many evicted sequence numbers to remember (batches hold at most 100).
const EVICTED_MEMORY: usize = 1024;

fn record_name(seq: u64) -> String {
    format!("{seq:020}.{EXT}")
}

fn parse_record_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(&format!(".{EXT}"))?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

impl Spool {
    /// Open (creating it, mode 0700 exactly) the spool in `dir`: index the
    /// records there, remove torn temporary files (counted). A directory
    /// another user could write, or a symlink, is refused
    /// ([`SpoolError::Unsafe`] says why and what to do).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let dir_err = |source| SpoolError::Dir {
            dir: dir.to_path_buf(),
            error: source,
        };
        crate::files::ensure_dir(dir, "spool directory")?;
        let stats = Arc::new(SpoolStats::default());
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(dir_err)? {
            let item = item.map_err(dir_err)?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                warn!(
                    "spool: removing {}, a record whose write was interrupted (counted as dropped)",
                    crate::text::Visible(name)
                );
                if let Err(e) = fs::remove_file(item.path()) {
                    warn!("spool: removing {}: {e}", item.path().display());
                }
                stats.torn.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(seq) = parse_record_name(name) else {
                continue;
            };
            let size = item.metadata().map(|m| m.len()).unwrap_or(0);
            entries.push(Entry { seq, size });
        }
        entries.sort_by_key(|e| e.seq);
        let bytes = entries.iter().map(|e| e.size).sum();
        let next_seq = entries.last().map_or(0, |e| e.seq + 1);
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            entries: entries.into(),
            bytes,
            writer: SpoolWriter {
                dir: dir.to_path_buf(),
                max_bytes,
                next_seq: Arc::new(AtomicU64::new(next_seq)),
                stats: Arc::clone(&stats),
                failing: Arc::new(AtomicBool::new(false)),
            },
            stats,
            evicted_recently: VecDeque::new(),
            undeleted: Vec::new(),
            read_failing: false,
        };
        spool.evict_to(max_bytes);
        spool.publish();
        Ok(spool)
    }

    /// Shared counters.
    pub fn stats(&self) -> Arc<SpoolStats> {
        Arc::clone(&self.stats)
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes on disk (headers included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(record_name(seq))
    }

    fn publish(&self) {
        self.stats
            .depth
            .store(self.entries.len() as u64, Ordering::Relaxed);
        self.stats.bytes.store(self.bytes, Ordering::Relaxed);
    }

    /// Drop the oldest records until at most `limit` bytes remain.
    fn evict_to(&mut self, limit: u64) {
        while self.bytes > limit {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            self.unlink(e.seq);
            self.bytes = self.bytes.saturating_sub(e.size);
            if self.evicted_recently.len() == EVICTED_MEMORY {
                self.evicted_recently.pop_front();
            }
            self.evicted_recently.push_back(e.seq);
            let n = self.stats.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(
                "spool: past its bound of {} bytes, dropped the oldest snapshot (record {}; {n} dropped so far)",
                self.max_bytes, e.seq
            );
        }
    }

    /// Remove a record's file; one that cannot be removed now is tried
    /// again later (never sent again meanwhile).
    fn unlink(&mut self, seq: u64) {
        match fs::remove_file(self.path(seq)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                if self.undeleted.is_empty() {
                    warn!(
                        "spool: cannot remove {} ({e}), a record already delivered or dropped; \
                         removal is retried (a restart before it succeeds sends it again)",
                        self.path(seq).display()
                    );
                }
                if !self.undeleted.contains(&seq) {
                    self.undeleted.push(seq);
                }
            }
        }
    }

    /// Try again to remove the files of records already done with.
    fn retry_unlinks(&mut self) {
        if self.undeleted.is_empty() {
            return;
        }
        let dir = self.dir.clone();
        self.undeleted
            .retain(|&seq| match fs::remove_file(dir.join(record_name(seq))) {
                Ok(()) => false,
                Err(e) => e.kind() != io::ErrorKind::NotFound,
            });
        if self.undeleted.is_empty() {
            info!("spool: removed the records whose removal had failed");
        }
    }

    /// Append `snapshot` durably, then drop the oldest records past the
    /// bound (counted). A snapshot that cannot be written (the error says
    /// why: no space, read-only, I/O error, larger than the whole bound)
    /// is dropped and counted, and no older record is touched; failures
    /// are logged once until a write succeeds again. Runs the file calls
    /// on the caller's thread: the agent's tick goes through
    /// [`SpoolWriter`] on a bounded worker instead.
    pub fn push(&mut self, snapshot: &Snapshot) -> Result<(), SpoolError> {
        self.retry_unlinks();
        match self.writer.write(snapshot) {
            Ok((seq, size)) => {
                self.writer.succeeded();
                self.add(seq, size);
                Ok(())
            }
            Err(e) => {
                self.writer.failed(&e);
                Err(e)
            }
        }
    }

    /// The writer of this spool's records, for a thread of its own: it
    /// writes record files without this index, which [`Spool::add`] then
    /// takes them into.
    pub fn writer(&self) -> SpoolWriter {
        self.writer.clone()
    }

    /// Take a record [`SpoolWriter::write`] wrote into the index (it can
    /// be sent from now on), then drop the oldest records past the bound
    /// (counted). Records are added in the order they were written.
    pub fn add(&mut self, seq: u64, size: u64) {
        self.retry_unlinks();
        self.entries.push_back(Entry { seq, size });
        self.bytes += size;
        self.evict_to(self.max_bytes);
        self.publish();
    }

    /// The oldest records, in order: at most `max_count`, and at most
    /// `max_json_bytes` of snapshot JSON (but always at least one record
    /// when any is readable). Corrupt records met on the way are removed
    /// and counted. A record that cannot be read for an I/O reason is kept
    /// and skipped this time (the records behind it still go); when no
    /// record could be read for that reason the error says which and why,
    /// so the caller backs off.
    pub fn oldest(
        &mut self,
        max_count: usize,
        max_json_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        self.retry_unlinks();
        let mut out: Vec<Spooled> = Vec::new();
        let mut total = 0usize;
        let mut failed: Option<SpoolError> = None;
        let mut failures = 0usize;
        let mut i = 0;
        while i < self.entries.len()
            && out.len() < max_count
            && failures < MAX_READ_FAILURES_PER_BATCH
        {
            let e = self.entries[i];
            match self.read(e.seq) {
                Ok(Some((snapshot, json_len))) => {
                    if !out.is_empty() && total + json_len > max_json_bytes {
                        break;
                    }
                    total += json_len;
                    out.push(Spooled {
                        seq: e.seq,
                        snapshot,
                        json_len,
                    });
                    i += 1;
                }
                Ok(None) => {
                    // Gone from disk (removed by hand): forget it.
                    self.bytes = self.bytes.saturating_sub(e.size);
                    let _ = self.entries.remove(i);
                }
                Err(ReadError::Io(source)) => {
                    self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    let err = SpoolError::Read {
                        path: self.path(e.seq),
                        error: source,
                    };
                    if !self.read_failing {
                        warn!("spool: {err}; said once until records read again");
                        self.read_failing = true;
                    }
                    failed.get_or_insert(err);
                    i += 1;
                }
                Err(ReadError::Foreign(why)) => {
                    let n = self.stats.foreign.fetch_add(1, Ordering::Relaxed) + 1;
                    warn!(
                        "spool: skipping {}, not a record of the agent's ({why}): removed, never \
                         sent; {n} such files so far",
                        self.path(e.seq).display()
                    );
                    self.unlink(e.seq);
                    self.bytes = self.bytes.saturating_sub(e.size);
                    let _ = self.entries.remove(i);
                }
                Err(ReadError::Corrupt(why)) => {
                    let n = self.stats.corrupt.fetch_add(1, Ordering::Relaxed) + 1;
                    warn!(
                        "spool: skipping corrupt record {} ({why}); {n} corrupt so far, counted as dropped",
                        self.path(e.seq).display()
                    );
                    self.unlink(e.seq);
                    self.bytes = self.bytes.saturating_sub(e.size);
                    let _ = self.entries.remove(i);
                }
            }
        }
        self.publish();
        match failed {
            None => {
                if self.read_failing {
                    info!("spool: records read again");
                    self.read_failing = false;
                }
                Ok(out)
            }
            Some(e) if out.is_empty() => Err(e),
            Some(_) => Ok(out),
        }
    }

    fn read(&self, seq: u64) -> Result<Option<(Snapshot, usize)>, ReadError> {
        use std::io::Read;
        let mut file = match crate::files::open_own(&self.path(seq), "spool record") {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(crate::files::FileError::Io { error: source, .. }) => {
                return Err(ReadError::Io(source))
            }
            Err(e) => return Err(ReadError::Foreign(e.to_string())),
        };
        // What was opened is what is checked (fstat): no swap in between.
        let meta = file.metadata().map_err(ReadError::Io)?;
        if meta.is_file() {
            if let Some(why) = crate::files::foreign(&meta) {
                return Err(ReadError::Foreign(why));
            }
        }
        let mut bytes = Vec::with_capacity(meta.len().min(64 << 20) as usize);
        file.read_to_end(&mut bytes).map_err(ReadError::Io)?;
        let payload = decode(&bytes)?;
        let snapshot: Snapshot = serde_json::from_slice(payload)
            .map_err(|e| ReadError::Corrupt(FrameError::Payload(e.to_string())))?;
        Ok(Some((snapshot, payload.len())))
    }

    /// Forget records the cloud answered for (accepted, or rejected for
    /// good) and delete their files. A record evicted while its request was
    /// in flight is no longer counted as dropped: the cloud has it.
    pub fn remove(&mut self, seqs: &[u64]) {
        self.retry_unlinks();
        for &seq in seqs {
            if let Some(pos) = self.entries.iter().position(|e| e.seq == seq) {
                if let Some(e) = self.entries.remove(pos) {
                    self.bytes = self.bytes.saturating_sub(e.size);
                }
                self.unlink(seq);
            } else if let Some(pos) = self.evicted_recently.iter().position(|&s| s == seq) {
                self.evicted_recently.remove(pos);
                self.stats.evicted.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.publish();
    }
}

/// Writes spool records, without the index: the part of the spool a
/// writer thread runs, so that a write stuck on a hung filesystem holds no
/// lock the tick or the sender needs. Numbers are taken from a counter
/// shared with the [`Spool`] it came from.
#[derive(Debug, Clone)]
pub struct SpoolWriter {
    dir: PathBuf,
    max_bytes: u64,
    next_seq: Arc<AtomicU64>,
    stats: Arc<SpoolStats>,
    /// Writes are failing: said once until one succeeds.
    failing: Arc<AtomicBool>,
}

impl SpoolWriter {
    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write one record durably (temporary file, fsync, rename, directory
    /// fsync) and return its number and size; the caller adds it to the
    /// index ([`Spool::add`]) or, if it must not be sent, [`Self::discard`]s it.
    /// On an error nothing is left behind (what was made is removed).
    pub fn write(&self, snapshot: &Snapshot) -> Result<(u64, u64), SpoolError> {
        let record = encode(&serde_json::to_vec(snapshot)?);
        let size = record.len() as u64;
        if size > self.max_bytes {
            return Err(SpoolError::TooLarge {
                size,
                max: self.max_bytes,
            });
        }
        // Every attempt takes a new number: a record an earlier failed
        // attempt could not remove never collides with this one.
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(record_name(seq));
        // Durable: a record is a snapshot the cloud has not accepted;
        // nothing can rebuild it after a power loss.
        match crate::files::write_atomically(&path, &record, crate::files::Durability::Durable) {
            Ok(()) => Ok((seq, size)),
            Err(e) => {
                // Renamed but not durable: take it back whole, so it is
                // neither counted kept nor found by the next start.
                if e.renamed {
                    if let Err(rm) = fs::remove_file(&path) {
                        if rm.kind() != io::ErrorKind::NotFound {
                            warn!(
                                "spool: removing {} after a failed write: {rm}",
                                path.display()
                            );
                        }
                    }
                }
                Err(SpoolError::Write {
                    path: e.path,
                    error: e.source,
                })
            }
        }
    }

    /// Remove record `seq`, written but never added to the index: its
    /// snapshot was already reported not kept (and counted as dropped),
    /// so it must never be sent.
    pub fn discard(&self, seq: u64) {
        let path = self.dir.join(record_name(seq));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!(
                "spool: cannot remove {} ({e}), written after its deadline and already \
                 counted as dropped: a restart before it is removed by hand sends it",
                path.display()
            ),
        }
    }

    /// A write succeeded: say so if writes were failing.
    pub fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            info!(
                "spool: writing records to {} again ({} snapshots dropped so far)",
                self.dir.display(),
                self.stats.dropped()
            );
        }
    }

    /// A write failed with `e`: count the snapshot as dropped, and say so
    /// once until a write succeeds.
    pub fn failed(&self, e: &SpoolError) {
        if let SpoolError::TooLarge { .. } = e {
            let n = self.stats.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            warn!("spool: {e} ({n} evicted so far)");
        } else {
            self.not_written(&e.to_string());
        }
    }

    /// A snapshot was not written (`why`, which names what was tried):
    /// count it as dropped and say so once until a write succeeds.
    pub fn not_written(&self, why: &str) {
        let n = self.stats.write_failed.fetch_add(1, Ordering::Relaxed) + 1;
        if !self.failing.swap(true, Ordering::Relaxed) {
            warn!(
                "spool: {why}; every snapshot is dropped and counted until a write \
                 succeeds ({n} so far)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn snap(i: u32) -> Snapshot {
        Snapshot::empty(Utc.timestamp_opt(1_700_000_000 + i64::from(i), 0).unwrap())
    }

    fn times(v: &[Spooled]) -> Vec<i64> {
        v.iter().map(|s| s.snapshot.timestamp.timestamp()).collect()
    }

    #[test]
    fn frame_round_trips() {
        let r = encode(b"hello");
        assert_eq!(r.len(), HEADER_LEN + 5);
        assert_eq!(decode(&r).unwrap(), b"hello");
        assert_eq!(decode(&encode(b"")).unwrap(), b"");
    }

    #[test]
    fn every_damage_is_named() {
        let r = encode(b"hello");
        assert_eq!(decode(&r[..10]), Err(FrameError::Short(10)));
        let mut m = r.clone();
        m[0] = b'X';
        assert!(matches!(decode(&m), Err(FrameError::Magic(_))));
        let mut v = r.clone();
        v[4] = 9;
        assert_eq!(decode(&v), Err(FrameError::Version(9)));
        assert!(matches!(
            decode(&r[..r.len() - 1]),
            Err(FrameError::Length {
                header: 5,
                actual: 4
            })
        ));
        let mut c = r.clone();
        c[HEADER_LEN] ^= 1;
        assert!(matches!(decode(&c), Err(FrameError::Checksum { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn a_flipped_bit_is_always_caught(payload in proptest::collection::vec(any::<u8>(), 0..256), pos in any::<usize>(), bit in 0u8..8) {
            let mut r = encode(&payload);
            let i = pos % r.len();
            r[i] ^= 1 << bit;
            // Reserved header bytes are not checked; every other bit is.
            if !(5..8).contains(&i) {
                prop_assert!(decode(&r).is_err());
            }
        }

        #[test]
        fn arbitrary_files_in_the_spool_never_panic(files in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..6)) {
            let dir = tempfile::tempdir().unwrap();
            for (i, f) in files.iter().enumerate() {
                fs::write(dir.path().join(record_name(i as u64)), f).unwrap();
            }
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            let got = s.oldest(100, 1 << 20).unwrap();
            prop_assert!(got.is_empty());
            prop_assert_eq!(s.stats().corrupt.load(Ordering::Relaxed), files.len() as u64);
            prop_assert!(s.is_empty());
        }
    }

    #[test]
    fn records_come_back_in_order_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 0..5 {
                s.push(&snap(i)).unwrap();
            }
            let first = s.oldest(2, 1 << 20).unwrap();
            assert_eq!(times(&first), [1_700_000_000, 1_700_000_001]);
            s.remove(&[first[0].seq, first[1].seq]);
        }
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 3);
        s.push(&snap(5)).unwrap();
        let rest = s.oldest(100, 1 << 20).unwrap();
        assert_eq!(
            times(&rest),
            [1_700_000_002, 1_700_000_003, 1_700_000_004, 1_700_000_005]
        );
    }

    #[test]
    fn past_the_bound_the_oldest_go_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let one = encode(&serde_json::to_vec(&snap(0)).unwrap()).len() as u64;
        let mut s = Spool::open(dir.path(), one * 3).unwrap();
        for i in 0..5 {
            s.push(&snap(i)).unwrap();
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.bytes(), one * 3);
        assert_eq!(s.stats().evicted.load(Ordering::Relaxed), 2);
        assert_eq!(
            times(&s.oldest(100, 1 << 20).unwrap()),
            [1_700_000_002, 1_700_000_003, 1_700_000_004]
        );
    }

    #[test]
    fn a_record_evicted_in_flight_and_then_accepted_is_not_counted_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let one = encode(&serde_json::to_vec(&snap(0)).unwrap()).len() as u64;
        let mut s = Spool::open(dir.path(), one * 2).unwrap();
        s.push(&snap(0)).unwrap();
        s.push(&snap(1)).unwrap();
        let in_flight = s.oldest(100, 1 << 20).unwrap();
        s.push(&snap(2)).unwrap(); // evicts record 0, which is in flight
        assert_eq!(s.stats().evicted.load(Ordering::Relaxed), 1);
        s.remove(&[in_flight[0].seq, in_flight[1].seq]);
        assert_eq!(s.stats().evicted.load(Ordering::Relaxed), 0);
        assert_eq!(times(&s.oldest(100, 1 << 20).unwrap()), [1_700_000_002]);
        assert_eq!(s.bytes(), one);
    }

    #[test]
    fn corrupt_and_torn_records_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 0..4 {
                s.push(&snap(i)).unwrap();
            }
        }
        // Flip a payload byte of the second record, truncate the third.
        let p1 = dir.path().join(record_name(1));
        let mut b = fs::read(&p1).unwrap();
        b[HEADER_LEN + 3] ^= 0x20;
        fs::write(&p1, b).unwrap();
        let p2 = dir.path().join(record_name(2));
        let b = fs::read(&p2).unwrap();
        fs::write(&p2, &b[..b.len() / 2]).unwrap();
        fs::write(dir.path().join(format!("{TMP_PREFIX}{:020}", 4)), b"half").unwrap();

        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.stats().torn.load(Ordering::Relaxed), 1);
        let got = s.oldest(100, 1 << 20).unwrap();
        assert_eq!(times(&got), [1_700_000_000, 1_700_000_003]);
        assert_eq!(s.stats().corrupt.load(Ordering::Relaxed), 2);
        assert_eq!(s.stats().dropped(), 3);
        assert!(!p1.exists() && !p2.exists());
        // New records continue after the highest sequence number.
        s.push(&snap(9)).unwrap();
        assert!(dir.path().join(record_name(4)).exists());
    }

    /// A record whose read fails for an I/O reason (here EISDIR: a
    /// directory stands where its file was) is kept, not counted corrupt,
    /// and the records behind it still go; once readable it goes too.
    #[test]
    fn a_record_that_cannot_be_read_is_kept_and_read_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..3 {
            s.push(&snap(i)).unwrap();
        }
        let p1 = dir.path().join(record_name(1));
        let good = fs::read(&p1).unwrap();
        fs::remove_file(&p1).unwrap();
        fs::create_dir(&p1).unwrap();

        let got = s.oldest(100, 1 << 20).unwrap();
        assert_eq!(times(&got), [1_700_000_000, 1_700_000_002]);
        assert_eq!(s.stats().read_errors.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats().corrupt.load(Ordering::Relaxed), 0);
        assert_eq!(s.stats().dropped(), 0);
        s.remove(&[got[0].seq, got[1].seq]);
        assert_eq!(s.len(), 1, "the unreadable record is kept");
        // Nothing else to send: the caller is told why, to back off.
        match s.oldest(100, 1 << 20) {
            Err(SpoolError::Read {
                path,
                error: source,
            }) => {
                assert_eq!(path, p1);
                assert_eq!(source.kind(), io::ErrorKind::IsADirectory);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
        assert_eq!(s.stats().read_errors.load(Ordering::Relaxed), 2);
        assert!(p1.exists());

        fs::remove_dir(&p1).unwrap();
        fs::write(&p1, good).unwrap();
        assert_eq!(times(&s.oldest(100, 1 << 20).unwrap()), [1_700_000_001]);
        assert_eq!(s.stats().dropped(), 0);
    }

    /// Out of file descriptors (EMFILE), in a child process of this test
    /// binary so the lowered limit touches no other test: every record is
    /// kept and comes back, in order, once descriptors are free again.
    #[test]
    fn out_of_file_descriptors_deletes_nothing() {
        const CHILD: &str = "NETWATCH_SPOOL_EMFILE_CHILD";
        let Some(dir) = std::env::var_os(CHILD) else {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
                for i in 0..4 {
                    s.push(&snap(i)).unwrap();
                }
            }
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "sink::spool::tests::out_of_file_descriptors_deletes_nothing",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(CHILD, dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "child: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed"));
            // Nothing was removed by the child.
            let records = fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(records, 4);
            return;
        };
        let mut s = Spool::open(Path::new(&dir), 1 << 20).unwrap();
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
        // The lowest free descriptor is the limit: no new file opens.
        let probe = fs::File::open("/dev/null").unwrap();
        let lowest = std::os::fd::AsRawFd::as_raw_fd(&probe) as libc::rlim_t;
        drop(probe);
        let low = libc::rlimit {
            rlim_cur: lowest,
            rlim_max: old.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        let starved = s.oldest(100, 1 << 20);
        // SAFETY: as above; the soft limit goes back up to where it was.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }, 0);
        match starved {
            Err(SpoolError::Read { error: source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EMFILE));
            }
            other => panic!("expected EMFILE, got {other:?}"),
        }
        assert_eq!(s.stats().corrupt.load(Ordering::Relaxed), 0);
        assert_eq!(s.len(), 4);
        assert_eq!(
            times(&s.oldest(100, 1 << 20).unwrap()),
            [1_700_000_000, 1_700_000_001, 1_700_000_002, 1_700_000_003]
        );
    }

    /// A write that fails (here a directory stands at the record's name,
    /// so the rename fails) drops that snapshot, counted, and evicts
    /// nothing: the full spool keeps its older records. The next write
    /// works and only then evicts the oldest.
    #[test]
    fn a_failed_write_is_counted_and_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let one = encode(&serde_json::to_vec(&snap(0)).unwrap()).len() as u64;
        let mut s = Spool::open(dir.path(), one * 2).unwrap();
        s.push(&snap(0)).unwrap();
        s.push(&snap(1)).unwrap();
        let blocker = dir.path().join(record_name(2));
        fs::create_dir(&blocker).unwrap();
        match s.push(&snap(2)) {
            Err(SpoolError::Write {
                path,
                error: source,
            }) => {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    name.starts_with(&format!("{TMP_PREFIX}{}.", record_name(2))),
                    "{name}"
                );
                assert_eq!(source.kind(), io::ErrorKind::IsADirectory);
            }
            other => panic!("expected a write error, got {other:?}"),
        }
        // The temporary file went with the failure.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);
        assert_eq!(s.stats().write_failed.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats().evicted.load(Ordering::Relaxed), 0);
        assert_eq!(s.stats().dropped(), 1);
        assert_eq!(s.len(), 2);
        assert!(blocker.is_dir(), "not someone else's to remove");

        s.push(&snap(3)).unwrap();
        assert_eq!(s.stats().evicted.load(Ordering::Relaxed), 1);
        assert_eq!(s.stats().dropped(), 2);
        assert_eq!(
            times(&s.oldest(100, 1 << 20).unwrap()),
            [1_700_000_001, 1_700_000_003]
        );
        assert_eq!(s.bytes(), one * 2);
    }

    /// Files at record names the agent did not write (a group-writable
    /// record, a symlink to a valid record elsewhere) are skipped, removed
    /// and counted as foreign, never read back as snapshots; what a link
    /// points to stays untouched.
    #[test]
    fn planted_records_are_skipped_counted_and_never_sent() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
            for i in 0..3 {
                s.push(&snap(i)).unwrap();
            }
        }
        let planted = fs::read(dir.path().join(record_name(1))).unwrap();
        fs::set_permissions(
            dir.path().join(record_name(1)),
            fs::Permissions::from_mode(0o620),
        )
        .unwrap();
        let target = elsewhere.path().join("record");
        fs::write(&target, &planted).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(record_name(5))).unwrap();

        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let got = s.oldest(100, 1 << 20).unwrap();
        assert_eq!(times(&got), [1_700_000_000, 1_700_000_002]);
        assert_eq!(s.stats().foreign.load(Ordering::Relaxed), 2);
        assert_eq!(s.stats().corrupt.load(Ordering::Relaxed), 0);
        assert_eq!(s.stats().dropped(), 0);
        assert!(!dir.path().join(record_name(1)).exists());
        assert!(fs::symlink_metadata(dir.path().join(record_name(5))).is_err());
        assert_eq!(
            fs::read(&target).unwrap(),
            planted,
            "the link's target is untouched"
        );
    }

    #[test]
    fn batches_respect_the_byte_limit_but_take_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..4 {
            s.push(&snap(i)).unwrap();
        }
        let one = serde_json::to_vec(&snap(0)).unwrap().len();
        assert_eq!(s.oldest(100, one * 2).unwrap().len(), 2);
        assert_eq!(s.oldest(100, 1).unwrap().len(), 1);
        assert_eq!(s.oldest(3, 1 << 20).unwrap().len(), 3);
    }
}
