//! Line bookkeeping shared by the macOS tool parsers: every input line lands
//! in exactly one bucket, so a parser can be checked for having looked at
//! everything. It never decides what a line means.

/// What a parser did with each line of its input.
///
/// Invariant: `total == used + blank + header + ignored + malformed`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineCounts {
    /// Lines in the input (`str::lines`).
    pub total: usize,
    /// Lines that were understood and fed the output.
    pub used: usize,
    /// Empty or whitespace-only lines.
    pub blank: usize,
    /// Title and column-header lines.
    pub header: usize,
    /// Well-formed lines this parser has no use for (an lsof field it did not
    /// ask for, a netstat address row beside the link row).
    pub ignored: usize,
    /// Lines that should have meant something and did not parse.
    pub malformed: usize,
}

impl LineCounts {
    /// Lines that did not feed the output, for whatever reason.
    pub fn skipped(&self) -> usize {
        self.total - self.used
    }

    /// The invariant holds.
    pub fn is_consistent(&self) -> bool {
        self.total == self.used + self.blank + self.header + self.ignored + self.malformed
    }

    pub(crate) fn count(&mut self, kind: Line) {
        self.total += 1;
        match kind {
            Line::Used => self.used += 1,
            Line::Blank => self.blank += 1,
            Line::Header => self.header += 1,
            Line::Ignored => self.ignored += 1,
            Line::Malformed => self.malformed += 1,
        }
    }
}

/// The bucket one line goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    Used,
    Blank,
    Header,
    Ignored,
    Malformed,
}
