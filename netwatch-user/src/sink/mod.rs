//! Sinks: where finished snapshots go. Each receives every snapshot as a
//! value and must never reach back into a source; a sink that fails reports
//! an error and the agent decides (stdout gone: stop; a network sink: retry
//! later). `ingest` delivers to NetWatch Cloud through the on-disk `spool`;
//! `prometheus` serves `/metrics`.

#[cfg(target_os = "linux")]
pub mod ingest;
pub mod json;
pub mod prometheus;
pub mod spool;
pub mod table;

use netwatch_common::wire::Snapshot;

/// What a sink wants from the agent after an emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The sink's consumer is gone (e.g. stdout closed): stop the agent.
    Stop,
}

/// A destination for snapshots.
pub trait Sink: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Deliver one snapshot.
    fn emit(&mut self, snapshot: &Snapshot) -> anyhow::Result<Flow>;
    /// Called once before the first snapshot with the source's
    /// continuity: a sink that accumulates the snapshots' bytes takes back
    /// the totals an earlier agent on the same pins saved, and keeps them
    /// from now on. `None`: counts restart with the agent, nothing kept.
    fn resume(&mut self, _continuity: Option<&crate::source::Continuity>) {}
    /// Every sink took the latest snapshot and the source stored its
    /// baseline: save what a restarted agent continues from.
    fn delivered(&mut self) {}
}
