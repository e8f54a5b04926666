//! What an agent running with pins keeps besides the maps: the pins' lock,
//! every pinned object held open, and the baseline (the owners' counters of
//! the last delivered read) a restarted agent continues from. It must never
//! read a map, and never store a baseline the sinks did not keep.

use std::path::PathBuf;

use super::{generation, held, pin};
use crate::source::{Continuity, SocketSample};

/// The pins and their baseline; all empty when the agent runs unpinned.
#[derive(Default)]
pub struct Pinning {
    /// Pinned: the pins' instance tag and the baseline file.
    pub(super) pinned: Option<(String, PathBuf)>,
    /// The baseline to prime deltas with at the first read (restarted agent).
    pub(super) restore: Option<Vec<pin::BaselineEntry>>,
    /// The owners' counters of the last read, stored once it is delivered.
    last_read: Vec<pin::BaselineEntry>,
    /// The baseline file and the pins' generation (pinned only).
    pub(super) store: Option<generation::BaselineStore>,
    /// Every pinned object held open, so removed pins detach nothing and
    /// are pinned again (pinned only).
    pub(super) held: Option<held::Held>,
    /// Held while this agent owns the pins.
    pub(super) lock: Option<std::fs::File>,
    /// True when continuing from pins an earlier agent left.
    pub(super) continued: bool,
    /// A read changed the tracked sockets since the baseline was last built.
    dirty: bool,
}

impl Pinning {
    /// Pin again what was removed while the agent runs (the held
    /// descriptors kept everything attached meanwhile).
    pub fn check(&mut self) {
        if let Some(h) = self.held.as_mut() {
            h.check();
        }
    }

    /// A restarted agent's first read: the baseline the previous agent
    /// last delivered, once, made the pending baseline as it is.
    pub fn take_restore(&mut self) -> Option<Vec<pin::BaselineEntry>> {
        let restore = self.restore.take()?;
        self.last_read = restore.clone();
        self.dirty = false;
        if let Some(store) = self.store.as_mut() {
            store.prepare(&self.last_read);
        }
        Some(restore)
    }

    /// After a read, before its snapshot goes to the sinks: store its
    /// counters as the pending baseline ([`generation`]); rebuilt from
    /// `samples` (every tracked socket's) only if this read or one before
    /// it since the last build changed them (`changed`).
    pub fn prepare<'a>(&mut self, changed: bool, samples: impl Iterator<Item = &'a SocketSample>) {
        self.dirty |= changed;
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if std::mem::take(&mut self.dirty) {
            // A socket missing from the baseline is counted in full by
            // the next agent: exact for those still at 0, which need
            // no line.
            self.last_read.clear();
            self.last_read.extend(
                samples
                    .filter(|s| s.rx_bytes != 0 || s.tx_bytes != 0)
                    .map(pin::BaselineEntry::of),
            );
        }
        store.prepare(&self.last_read);
    }

    /// The snapshot of the last read was kept by the sinks: a restarted
    /// agent continues from its baseline.
    pub fn commit(&mut self) {
        if let Some(store) = self.store.as_mut() {
            store.commit();
        }
    }

    /// Pinned objects pinned again since start (0 unpinned).
    pub fn restored(&self) -> u64 {
        self.held.as_ref().map_or(0, held::Held::restored)
    }

    /// The pins' instance and baseline file, if pinned.
    pub fn continuity(&self) -> Option<Continuity> {
        self.pinned
            .as_ref()
            .map(|(instance, state_file)| Continuity {
                instance: instance.clone(),
                state_file: state_file.clone(),
                continued: self.continued,
            })
    }
}
