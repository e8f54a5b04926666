//! The table for people (`cargo xtask run`, `--output table`): on a
//! terminal, the full-screen live view ([`live`] drives the terminal,
//! [`view`] draws); when stdout is not a terminal, each snapshot's
//! interfaces and top processes as plain text ([`render`]), appended.
//! Rendering stays a pure function of its inputs so it is tested as text.
//! It must never write escape sequences to a stdout that is not a terminal,
//! and never outside text (process and interface names) as it is: those go
//! through [`crate::text::visible`], so a process named `"\e[2J\r"` shows
//! as `\x1b[2J\r` and cannot clear a screen or fake a row.

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};

use netwatch_common::wire::Snapshot;

use super::{Emitted, Sink};

pub mod live;
pub mod view;

/// The table sink for stdout: the live view when stdout is a terminal,
/// plain periodic text (at most `max_rows` processes) otherwise.
pub fn stdout_sink(max_rows: usize) -> anyhow::Result<Box<dyn Sink>> {
    if io::stdout().is_terminal() {
        Ok(Box::new(live::LiveTable::start(hostname())?))
    } else {
        Ok(Box::new(Table::stdout(max_rows)))
    }
}

/// This host's name (the kernel's nodename).
pub fn hostname() -> String {
    #[cfg(target_os = "linux")]
    {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    }
    #[cfg(not(target_os = "linux"))]
    {
        "-".to_string()
    }
}

/// Human-readable bytes per second.
pub fn rate(bytes_per_sec: f64) -> String {
    const UNITS: [&str; 5] = ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"];
    let mut v = bytes_per_sec.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Render one snapshot as the table text (at most `max_rows` processes).
pub fn render(s: &Snapshot, max_rows: usize) -> String {
    let mut out = String::new();
    let source = s.collector.as_ref().map_or("-".to_string(), |c| {
        let mut t = c.source.clone();
        if let Some(tier) = &c.ebpf_tier {
            t.push_str(&format!(" ({tier})"));
        }
        if c.estimated {
            t.push_str(", estimated");
        }
        t
    });
    let _ = writeln!(
        out,
        "netwatch  {}  source: {source}  connections: {}",
        s.timestamp.format("%Y-%m-%d %H:%M:%S UTC"),
        s.connection_count.map_or("-".into(), |c| c.to_string())
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>4} {:>14} {:>14}",
        "INTERFACE", "UP", "RX", "TX"
    );
    for i in &s.interfaces {
        let _ = writeln!(
            out,
            "{:<16} {:>4} {:>14} {:>14}",
            cell(&i.name, 16),
            if i.is_up { "up" } else { "down" },
            rate(i.rx_rate.unwrap_or(0.0)),
            rate(i.tx_rate.unwrap_or(0.0))
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>8} {:<16} {:>14} {:>14} {:>12} {:>12} {:>5}",
        "PID", "PROCESS", "RX", "TX", "RX BYTES", "TX BYTES", "CONNS"
    );
    let procs = s.processes.as_deref().unwrap_or_default();
    for p in procs.iter().take(max_rows) {
        let _ = writeln!(
            out,
            "{:>8} {:<16} {:>14} {:>14} {:>12} {:>12} {:>5}",
            p.pid.map_or("-".into(), |p| p.to_string()),
            cell(&p.process_name, 16),
            rate(p.rx_rate),
            rate(p.tx_rate),
            p.rx_bytes,
            p.tx_bytes,
            p.connection_count
        );
    }
    if procs.len() > max_rows {
        // The last row, when folded ones are, stands for all of them.
        let folded = s
            .collector
            .as_ref()
            .and_then(|c| c.processes_folded)
            .filter(|_| procs.last().is_some_and(|p| p.pid.is_none()))
            .map_or(0, |n| n.saturating_sub(1));
        let more = (procs.len() - max_rows) as u64 + folded;
        let _ = writeln!(out, "… {more} more processes");
    }
    out
}

/// Outside text for a column of `n` characters: cut to `n` characters of
/// the original (the last one `…` when cut), then escaped. An escaped name
/// is wider than `n` (its row's later columns move right) rather than cut
/// inside an escape.
fn cell(s: &str, n: usize) -> String {
    let cut: std::borrow::Cow<'_, str> = if s.chars().count() <= n {
        s.into()
    } else {
        s.chars()
            .take(n - 1)
            .chain(['…'])
            .collect::<String>()
            .into()
    };
    crate::text::visible(&cut, n).into_owned()
}

/// Appends the plain-text table to stdout (not a terminal).
pub struct Table {
    max_rows: usize,
}

impl Table {
    pub fn stdout(max_rows: usize) -> Self {
        Self { max_rows }
    }
}

impl Sink for Table {
    fn name(&self) -> &'static str {
        "table"
    }

    fn emit(&mut self, snapshot: &Snapshot) -> anyhow::Result<Emitted> {
        let text = render(snapshot, self.max_rows);
        let mut out = io::stdout().lock();
        let res = writeln!(out, "{text}").and_then(|()| out.flush());
        match res {
            Ok(()) => Ok(Emitted::KEPT),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(Emitted::STOP),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use netwatch_common::wire::{CollectorInfo, InterfaceMetric, ProcessBandwidth};

    #[test]
    fn rates_are_human_readable() {
        assert_eq!(rate(0.0), "0 B/s");
        assert_eq!(rate(1023.0), "1023 B/s");
        assert_eq!(rate(1536.0), "1.5 KiB/s");
        assert_eq!(rate(10.0 * 1024.0 * 1024.0), "10.0 MiB/s");
        assert_eq!(rate(-5.0), "0 B/s");
    }

    #[test]
    fn renders_interfaces_and_top_processes() {
        let mut s = Snapshot::empty(Utc.with_ymd_and_hms(2026, 11, 24, 19, 0, 0).unwrap());
        s.connection_count = Some(3);
        s.collector = Some(CollectorInfo {
            source: "ebpf".into(),
            ebpf_tier: Some("tracepoint".into()),
            estimated: false,
            fallback_reason: None,
            lost_records: Some(0),
            connections_truncated: None,
            processes_folded: None,
        });
        s.interfaces.push(InterfaceMetric {
            name: "lo".into(),
            is_up: true,
            rx_bytes: 10,
            tx_bytes: 10,
            rx_bytes_delta: 2048,
            tx_bytes_delta: 2048,
            rx_packets: 1,
            tx_packets: 1,
            rx_errors: 0,
            tx_errors: 0,
            rx_drops: 0,
            tx_drops: 0,
            rx_rate: Some(2048.0),
            tx_rate: Some(2048.0),
            rx_history: None,
            tx_history: None,
        });
        s.processes = Some(vec![
            ProcessBandwidth::network_only(
                "a-very-long-process-name".into(),
                Some(42),
                1000,
                2000,
                1000.0,
                2000.0,
                2,
            ),
            ProcessBandwidth::network_only("curl".into(), Some(7), 1, 2, 1.0, 2.0, 1),
        ]);
        let text = render(&s, 1);
        let expected = "\
netwatch  2026-11-24 19:00:00 UTC  source: ebpf (tracepoint)  connections: 3

INTERFACE          UP             RX             TX
lo                 up      2.0 KiB/s      2.0 KiB/s

     PID PROCESS                      RX             TX     RX BYTES     TX BYTES CONNS
      42 a-very-long-pro…       1000 B/s      2.0 KiB/s         1000         2000     2
… 1 more processes
";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_folded_row_shows_without_a_pid_and_counts_as_its_processes_when_cut() {
        let mut s = Snapshot::empty(Utc.with_ymd_and_hms(2026, 11, 24, 19, 0, 0).unwrap());
        let mut rows: Vec<ProcessBandwidth> = (1..=5u32)
            .map(|pid| {
                let b = u64::from(pid) * 100;
                ProcessBandwidth::network_only(format!("p{pid}"), Some(pid), b, b, 0.0, 0.0, 1)
            })
            .collect();
        let folded = crate::attribution::fold_processes(&mut rows, 2);
        s.collector = Some(CollectorInfo {
            source: "ebpf".into(),
            ebpf_tier: None,
            estimated: false,
            fallback_reason: None,
            lost_records: None,
            connections_truncated: None,
            processes_folded: Some(folded),
        });
        s.processes = Some(rows);
        let table = |max_rows| {
            render(&s, max_rows)
                .lines()
                .skip(5)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            table(3),
            [
                "       5 p5                        0 B/s          0 B/s          500          500     1",
                "       4 p4                        0 B/s          0 B/s          400          400     1",
                "       - (others)                  0 B/s          0 B/s          600          600     3",
            ]
        );
        // Cut before it: the three processes it holds are the ones not shown.
        assert_eq!(table(2)[2], "… 3 more processes");
        assert_eq!(table(1)[1], "… 4 more processes");
    }

    #[test]
    fn hostile_names_are_printed_escaped_and_other_rows_intact() {
        let mut s = Snapshot::empty(Utc.with_ymd_and_hms(2026, 11, 24, 19, 0, 0).unwrap());
        s.processes = Some(vec![
            ProcessBandwidth::network_only("curl".into(), Some(7), 1, 2, 1.0, 2.0, 1),
            ProcessBandwidth::network_only(
                "\x1b[2J\r\x08\x07evil".into(),
                Some(666),
                3,
                4,
                3.0,
                4.0,
                2,
            ),
            ProcessBandwidth::network_only("sshd".into(), Some(8), 5, 6, 5.0, 6.0, 1),
        ]);
        let text = render(&s, 10);
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        let rows: Vec<&str> = text.lines().skip(5).collect();
        assert_eq!(
            rows,
            [
                "       7 curl                      1 B/s          2 B/s            1            2     1",
                "     666 \\x1b[2J\\r\\x08\\x07evil          3 B/s          4 B/s            3            4     2",
                "       8 sshd                      5 B/s          6 B/s            5            6     1",
            ]
        );
    }
}
