//! What a source that survives restarts tells the sinks: the tag of the
//! pinned kernel maps it counts in and where its delivered baseline lives,
//! so a sink keeps its own state beside it and restores it only with the
//! same maps. Shared vocabulary: it sits below `source` (which makes it)
//! and `sink` (which reads it), imports neither, and does no I/O.

/// A source whose counts survive agent restarts: the tag of the set of
/// kernel maps it counts in, and the file its delivered baseline lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuity {
    /// Names one set of pinned maps; another set (replaced, re-created
    /// after a reboot) has another tag.
    pub instance: String,
    /// The source's baseline file; sinks keep their state beside it.
    pub state_file: std::path::PathBuf,
    /// True when this agent continued from pins an earlier agent left
    /// (their counts go on); false when it created them now.
    pub continued: bool,
}
