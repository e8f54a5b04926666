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

/// What one sink did with one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Emitted {
    /// The sink kept the snapshot: delivered it, spooled it durably,
    /// wrote it out or showed it. `false`: it is lost to this sink (which
    /// counted it). The agent moves the source's persisted baseline past
    /// a snapshot only when at least one sink kept it.
    pub kept: bool,
    /// What the sink wants from the agent next.
    pub flow: Flow,
}

impl Emitted {
    /// Kept; carry on.
    pub const KEPT: Self = Self {
        kept: true,
        flow: Flow::Continue,
    };
    /// Not kept (counted by the sink); carry on.
    pub const LOST: Self = Self {
        kept: false,
        flow: Flow::Continue,
    };
    /// Not kept: the sink's consumer is gone; stop the agent.
    pub const STOP: Self = Self {
        kept: false,
        flow: Flow::Stop,
    };
}

/// A destination for snapshots.
pub trait Sink: Send {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Deliver one snapshot and say whether it was kept. An error means
    /// it was not kept; the agent logs it.
    fn emit(&mut self, snapshot: &Snapshot) -> anyhow::Result<Emitted>;
    /// Called once before the first snapshot with the source's
    /// continuity: a sink that accumulates the snapshots' bytes takes back
    /// the totals an earlier agent on the same pins saved, and keeps them
    /// from now on. `None`: counts restart with the agent, nothing kept.
    fn resume(&mut self, _continuity: Option<&crate::continuity::Continuity>) {}
    /// At least one sink kept the latest snapshot and the source stored
    /// its baseline: save what a restarted agent continues from. Not
    /// called for a snapshot no sink kept.
    fn delivered(&mut self) {}
}
