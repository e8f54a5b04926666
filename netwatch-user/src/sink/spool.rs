//! The on-disk spool: every snapshot not yet accepted by the cloud, one
//! checksummed record per file, oldest first, bounded by bytes.
//!
//! A record is written to a hidden temporary file, fsynced, renamed to
//! `<seq>.nws` and the directory fsynced, so after a crash (SIGKILL, power
//! loss) a record is either whole or absent; a leftover temporary file is a
//! torn write and is removed and counted. A record whose frame or checksum
//! is wrong is skipped, removed and counted: it must never crash the agent
//! nor stop the records behind it. Past the byte bound the oldest records
//! are dropped and counted. This module stores and reads records; it never
//! talks to the network.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::warn;
use netwatch_common::wire::Snapshot;
use thiserror::Error;

/// First bytes of every record.
pub const MAGIC: [u8; 4] = *b"NWSP";
/// Record format version.
pub const VERSION: u8 = 1;
/// magic (4) · version (1) · reserved (3) · payload length u32 LE · CRC-32 of payload u32 LE.
pub const HEADER_LEN: usize = 16;
const EXT: &str = "nws";
const TMP_PREFIX: &str = ".tmp-";

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
    #[error("payload is not a snapshot: {0}")]
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
    #[error("spool directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("writing spool record {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("serializing a snapshot: {0}")]
    Serialize(#[from] serde_json::Error),
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
    /// Records waiting now.
    pub depth: AtomicU64,
    /// Bytes on disk now (headers included).
    pub bytes: AtomicU64,
}

impl SpoolStats {
    /// Everything the spool lost: evicted, corrupt and torn records.
    pub fn dropped(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
            + self.corrupt.load(Ordering::Relaxed)
            + self.torn.load(Ordering::Relaxed)
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
    next_seq: u64,
    stats: Arc<SpoolStats>,
    /// The latest evicted sequence numbers: one may be in flight, and if
    /// the cloud then answers for it, it was not dropped after all.
    evicted_recently: VecDeque<u64>,
}

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
    /// Open (creating it, mode 0700) the spool in `dir`: index the records
    /// there, remove torn temporary files (counted).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir_err = |source| SpoolError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        let stats = Arc::new(SpoolStats::default());
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(dir_err)? {
            let item = item.map_err(dir_err)?;
            let name = item.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TMP_PREFIX) {
                warn!(
                    "spool: removing {name}, a record whose write was interrupted (counted as dropped)"
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
            next_seq,
            stats,
            evicted_recently: VecDeque::new(),
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
            self.bytes -= e.size;
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

    fn unlink(&self, seq: u64) {
        match fs::remove_file(self.path(seq)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => warn!("spool: removing record {seq}: {e}"),
        }
    }

    /// Append `snapshot` durably. Past the bound the oldest records are
    /// dropped (counted); a snapshot larger than the whole bound is dropped
    /// itself (counted).
    pub fn push(&mut self, snapshot: &Snapshot) -> Result<(), SpoolError> {
        let record = encode(&serde_json::to_vec(snapshot)?);
        let size = record.len() as u64;
        if size > self.max_bytes {
            let n = self.stats.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(
                "spool: a snapshot of {size} bytes is larger than the whole spool bound of {} bytes: dropped ({n} dropped so far)",
                self.max_bytes
            );
            return Ok(());
        }
        self.evict_to(self.max_bytes - size);
        let seq = self.next_seq;
        let path = self.path(seq);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{seq:020}"));
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&record)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        if let Err(source) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(SpoolError::Write { path, source });
        }
        self.next_seq += 1;
        self.entries.push_back(Entry { seq, size });
        self.bytes += size;
        self.publish();
        Ok(())
    }

    /// The oldest records, in order: at most `max_count`, and at most
    /// `max_json_bytes` of snapshot JSON (but always at least one record
    /// when any is readable). Corrupt or unreadable records met on the way
    /// are removed and counted.
    pub fn oldest(&mut self, max_count: usize, max_json_bytes: usize) -> Vec<Spooled> {
        let mut out: Vec<Spooled> = Vec::new();
        let mut total = 0usize;
        let mut i = 0;
        while i < self.entries.len() && out.len() < max_count {
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
                    self.bytes -= e.size;
                    let _ = self.entries.remove(i);
                }
                Err(why) => {
                    let n = self.stats.corrupt.fetch_add(1, Ordering::Relaxed) + 1;
                    warn!(
                        "spool: skipping corrupt record {} ({why}); {n} corrupt so far, counted as dropped",
                        self.path(e.seq).display()
                    );
                    self.unlink(e.seq);
                    self.bytes -= e.size;
                    let _ = self.entries.remove(i);
                }
            }
        }
        self.publish();
        out
    }

    fn read(&self, seq: u64) -> Result<Option<(Snapshot, usize)>, FrameError> {
        let bytes = match fs::read(self.path(seq)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FrameError::Payload(format!("unreadable: {e}"))),
        };
        let payload = decode(&bytes)?;
        let snapshot: Snapshot =
            serde_json::from_slice(payload).map_err(|e| FrameError::Payload(e.to_string()))?;
        Ok(Some((snapshot, payload.len())))
    }

    /// Forget records the cloud answered for (accepted, or rejected for
    /// good) and delete their files. A record evicted while its request was
    /// in flight is no longer counted as dropped: the cloud has it.
    pub fn remove(&mut self, seqs: &[u64]) {
        for &seq in seqs {
            if let Some(pos) = self.entries.iter().position(|e| e.seq == seq) {
                if let Some(e) = self.entries.remove(pos) {
                    self.bytes -= e.size;
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
            let got = s.oldest(100, 1 << 20);
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
            let first = s.oldest(2, 1 << 20);
            assert_eq!(times(&first), [1_700_000_000, 1_700_000_001]);
            s.remove(&[first[0].seq, first[1].seq]);
        }
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 3);
        s.push(&snap(5)).unwrap();
        let rest = s.oldest(100, 1 << 20);
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
            times(&s.oldest(100, 1 << 20)),
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
        let in_flight = s.oldest(100, 1 << 20);
        s.push(&snap(2)).unwrap(); // evicts record 0, which is in flight
        assert_eq!(s.stats().evicted.load(Ordering::Relaxed), 1);
        s.remove(&[in_flight[0].seq, in_flight[1].seq]);
        assert_eq!(s.stats().evicted.load(Ordering::Relaxed), 0);
        assert_eq!(times(&s.oldest(100, 1 << 20)), [1_700_000_002]);
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
        let got = s.oldest(100, 1 << 20);
        assert_eq!(times(&got), [1_700_000_000, 1_700_000_003]);
        assert_eq!(s.stats().corrupt.load(Ordering::Relaxed), 2);
        assert_eq!(s.stats().dropped(), 3);
        assert!(!p1.exists() && !p2.exists());
        // New records continue after the highest sequence number.
        s.push(&snap(9)).unwrap();
        assert!(dir.path().join(record_name(4)).exists());
    }

    #[test]
    fn batches_respect_the_byte_limit_but_take_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..4 {
            s.push(&snap(i)).unwrap();
        }
        let one = serde_json::to_vec(&snap(0)).unwrap().len();
        assert_eq!(s.oldest(100, one * 2).len(), 2);
        assert_eq!(s.oldest(100, 1).len(), 1);
        assert_eq!(s.oldest(3, 1 << 20).len(), 3);
    }
}
