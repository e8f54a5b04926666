//! NDJSON sink: one `Snapshot` per line on a writer (stdout by default), the
//! stable machine interface of `--output json`. It serializes; it never
//! reshapes the snapshot.

use std::io::{self, Write};

use netwatch_common::wire::Snapshot;

use super::{Emitted, Sink};

/// Writes each snapshot as one JSON line and flushes.
pub struct JsonLines<W: Write + Send> {
    out: W,
}

impl JsonLines<io::Stdout> {
    pub fn stdout() -> Self {
        Self { out: io::stdout() }
    }
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write + Send> Sink for JsonLines<W> {
    fn name(&self) -> &'static str {
        "json"
    }

    fn emit(&mut self, snapshot: &Snapshot) -> anyhow::Result<Emitted> {
        let mut line = serde_json::to_vec(snapshot)?;
        line.push(b'\n');
        match self.out.write_all(&line).and_then(|()| self.out.flush()) {
            Ok(()) => Ok(Emitted::KEPT),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Emitted::STOP),
            Err(e) => Err(anyhow::Error::new(e).context("writing a snapshot to stdout")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn one_parseable_line_per_snapshot() {
        let mut buf = Vec::new();
        {
            let mut sink = JsonLines::new(&mut buf);
            let snap = Snapshot::empty(Utc.with_ymd_and_hms(2026, 11, 24, 19, 0, 0).unwrap());
            assert_eq!(sink.emit(&snap).unwrap(), Emitted::KEPT);
            assert_eq!(sink.emit(&snap).unwrap(), Emitted::KEPT);
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: Snapshot = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(back.timestamp.to_rfc3339(), "2026-11-24T19:00:00+00:00");
    }

    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn closed_stdout_stops_the_agent_instead_of_erroring() {
        let mut sink = JsonLines::new(Closed);
        let snap = Snapshot::empty(Utc::now());
        assert_eq!(sink.emit(&snap).unwrap(), Emitted::STOP);
    }
}
