//! The live view's model and drawing: [`UiState`] (sort, selection, bytes
//! since the view started, cgroup labels, which columns the process table
//! shows: bandwidth or TCP quality and DNS, `t` switches) and [`draw`], a pure function of
//! (snapshot, state, area) so it is tested cell by cell with ratatui's
//! `TestBackend`. It must never touch the terminal, read `/proc` or block:
//! whatever it shows arrives in the snapshot or in the state.
//!
//! Every text from outside (process, user and host names, cgroup labels,
//! addresses, alert messages) goes through [`shown`] before it reaches a
//! cell: ratatui 0.29 puts a control character into a cell as it is (its
//! `Span` rendering filters none, and unicode-width 0.2 gives them width
//! 1), and crossterm then writes that cell's text raw to the terminal.

use std::cmp::Ordering;
use std::collections::HashMap;

use netwatch_common::wire::{ConnectionDetail, ProcessBandwidth, Snapshot};
use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, StatefulWidget, Table, TableState, Widget};

use super::rate;
use crate::text::visible;

/// The most characters of one outside text a cell shows (before escaping).
pub const MAX_SHOWN_CHARS: usize = 64;

/// Outside text as a cell may show it: control characters, terminal escapes
/// and invisible formatting characters shown as visible escapes (`\x1b`),
/// at most [`MAX_SHOWN_CHARS`] characters of it.
pub fn shown(s: &str) -> String {
    visible(s, MAX_SHOWN_CHARS).into_owned()
}

/// The order of the process rows; `s` cycles through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// rx + tx rate, highest first.
    #[default]
    Total,
    /// Receive rate, highest first.
    Rx,
    /// Transmit rate, highest first.
    Tx,
    /// Pid, lowest first.
    Pid,
    /// Name, alphabetical.
    Name,
    /// Retransmitted segments in the interval, most first (rows without
    /// TCP figures last).
    Retransmits,
    /// Failed connects in the interval, most first.
    FailedConnects,
}

impl SortKey {
    /// The next order in the cycle.
    pub fn next(self) -> Self {
        match self {
            Self::Total => Self::Rx,
            Self::Rx => Self::Tx,
            Self::Tx => Self::Pid,
            Self::Pid => Self::Name,
            Self::Name => Self::Retransmits,
            Self::Retransmits => Self::FailedConnects,
            Self::FailedConnects => Self::Total,
        }
    }

    /// As shown in the footer.
    pub fn label(self) -> &'static str {
        match self {
            Self::Total => "total rate",
            Self::Rx => "rx rate",
            Self::Tx => "tx rate",
            Self::Pid => "pid",
            Self::Name => "name",
            Self::Retransmits => "retransmits",
            Self::FailedConnects => "failed connects",
        }
    }
}

/// What the process table shows; `t` switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Columns {
    /// Rates, bytes since the view started, connections.
    #[default]
    Bandwidth,
    /// Per interval: retransmits, failed connects, mean connect time, mean
    /// RTT, DNS queries and failed lookups; the connection pane shows each
    /// connection's RTT, retransmits, connect time and resets.
    Quality,
}

impl Columns {
    /// The other one.
    pub fn next(self) -> Self {
        match self {
            Self::Bandwidth => Self::Quality,
            Self::Quality => Self::Bandwidth,
        }
    }

    /// As shown in the footer.
    pub fn label(self) -> &'static str {
        match self {
            Self::Bandwidth => "bandwidth",
            Self::Quality => "quality",
        }
    }
}

/// What a key asks of the view (the terminal layer maps real keys to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    CycleSort,
    /// Switch the process table between bandwidth and quality columns.
    ToggleColumns,
}

/// A process row's identity across snapshots (the sources group rows by it).
pub type ProcKey = (Option<u32>, String);

/// Forget a process this many snapshots after its last row (its totals
/// start again from zero if it comes back).
pub const FORGET_AFTER_SNAPSHOTS: u64 = 300;

#[derive(Debug, Clone, Default)]
struct Seen {
    rx_bytes: u64,
    tx_bytes: u64,
    last_seen: u64,
    cgroup: Option<String>,
}

/// Everything the view shows besides the snapshot itself.
#[derive(Debug, Clone, Default)]
pub struct UiState {
    /// The host's name, for the header.
    pub host: String,
    /// The process order.
    pub sort: SortKey,
    /// What the process table shows.
    pub columns: Columns,
    /// The latest log line, for the footer.
    pub status: Option<String>,
    selected: Option<ProcKey>,
    selected_index: usize,
    seen: HashMap<ProcKey, Seen>,
    total_rx_bytes: u64,
    total_tx_bytes: u64,
    snapshots: u64,
}

impl UiState {
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            ..Default::default()
        }
    }

    /// Take in one snapshot: add its interval bytes to the totals, label
    /// new processes with `cgroup_of(pid)`, keep the selection on the same
    /// process (or at the same place if it is gone).
    pub fn apply(&mut self, s: &Snapshot, mut cgroup_of: impl FnMut(u32) -> Option<String>) {
        self.snapshots += 1;
        for p in s.processes.as_deref().unwrap_or_default() {
            let key = (p.pid, p.process_name.clone());
            let seen = self.seen.entry(key).or_insert_with(|| Seen {
                cgroup: p.pid.and_then(&mut cgroup_of),
                ..Default::default()
            });
            seen.rx_bytes = seen.rx_bytes.saturating_add(p.rx_bytes);
            seen.tx_bytes = seen.tx_bytes.saturating_add(p.tx_bytes);
            seen.last_seen = self.snapshots;
            self.total_rx_bytes = self.total_rx_bytes.saturating_add(p.rx_bytes);
            self.total_tx_bytes = self.total_tx_bytes.saturating_add(p.tx_bytes);
        }
        let now = self.snapshots;
        self.seen
            .retain(|_, v| now.saturating_sub(v.last_seen) <= FORGET_AFTER_SNAPSHOTS);
        self.settle(s);
    }

    /// Act on a key.
    pub fn act(&mut self, action: Action, s: Option<&Snapshot>, page: usize) {
        if action == Action::ToggleColumns {
            // Same rows, same order: the selection stays where it is.
            self.columns = self.columns.next();
            return;
        }
        if action == Action::CycleSort {
            self.sort = self.sort.next();
            if let Some(s) = s {
                // Stay on the same process, wherever it now sorts.
                self.settle(s);
            }
            return;
        }
        let Some(s) = s else { return };
        let rows = sorted_rows(s, self);
        let Some(cur) = selected_row(&rows, self) else {
            return;
        };
        let last = rows.len() - 1;
        let page = page.max(1);
        let to = match action {
            Action::Up => cur.saturating_sub(1),
            Action::Down => (cur + 1).min(last),
            Action::PageUp => cur.saturating_sub(page),
            Action::PageDown => (cur + page).min(last),
            Action::Home => 0,
            Action::End => last,
            Action::CycleSort | Action::ToggleColumns => cur,
        };
        self.select(&rows, to);
    }

    /// Bytes the process moved since the view first saw it: (rx, tx).
    pub fn totals(&self, key: &ProcKey) -> (u64, u64) {
        self.seen
            .get(key)
            .map_or((0, 0), |s| (s.rx_bytes, s.tx_bytes))
    }

    /// Bytes all processes moved since the view started: (rx, tx).
    pub fn grand_totals(&self) -> (u64, u64) {
        (self.total_rx_bytes, self.total_tx_bytes)
    }

    fn cgroup(&self, key: &ProcKey) -> Option<&str> {
        self.seen.get(key).and_then(|s| s.cgroup.as_deref())
    }

    fn settle(&mut self, s: &Snapshot) {
        let rows = sorted_rows(s, self);
        if let Some(i) = selected_row(&rows, self) {
            self.select(&rows, i);
        }
    }

    fn select(&mut self, rows: &[&ProcessBandwidth], i: usize) {
        if let Some(p) = rows.get(i) {
            self.selected = Some((p.pid, p.process_name.clone()));
            self.selected_index = i;
        }
    }
}

fn key(p: &ProcessBandwidth) -> ProcKey {
    (p.pid, p.process_name.clone())
}

/// The snapshot's process rows in the state's order.
pub fn sorted_rows<'a>(s: &'a Snapshot, ui: &UiState) -> Vec<&'a ProcessBandwidth> {
    let mut rows: Vec<&ProcessBandwidth> =
        s.processes.as_deref().unwrap_or_default().iter().collect();
    let by_pid = |a: &&ProcessBandwidth, b: &&ProcessBandwidth| {
        a.pid
            .cmp(&b.pid)
            .then_with(|| a.process_name.cmp(&b.process_name))
    };
    let desc = |x: f64, y: f64| y.total_cmp(&x);
    rows.sort_by(|a, b| {
        let primary = match ui.sort {
            SortKey::Total => desc(a.rx_rate + a.tx_rate, b.rx_rate + b.tx_rate),
            SortKey::Rx => desc(a.rx_rate, b.rx_rate),
            SortKey::Tx => desc(a.tx_rate, b.tx_rate),
            SortKey::Pid => Ordering::Equal,
            SortKey::Name => a
                .process_name
                .to_lowercase()
                .cmp(&b.process_name.to_lowercase()),
            SortKey::Retransmits => {
                let n = |p: &ProcessBandwidth| p.tcp_quality.as_ref().map(|q| q.retransmits);
                n(b).cmp(&n(a))
            }
            SortKey::FailedConnects => {
                let n = |p: &ProcessBandwidth| p.tcp_quality.as_ref().map(connect_failures);
                n(b).cmp(&n(a))
            }
        };
        primary.then_with(|| by_pid(a, b))
    });
    rows
}

/// The selected row: the selected process, else the row at the selected
/// place (clamped); `None` only without rows.
pub fn selected_row(rows: &[&ProcessBandwidth], ui: &UiState) -> Option<usize> {
    if rows.is_empty() {
        return None;
    }
    ui.selected
        .as_ref()
        .and_then(|k| rows.iter().position(|p| key(p) == *k))
        .or(Some(ui.selected_index.min(rows.len() - 1)))
}

/// Compact binary units for table cells, at most five characters:
/// `512B`, `1.5K`, `10.0M`, `512K` (no decimal from 100 up).
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = if bytes.is_finite() {
        bytes.max(0.0)
    } else {
        0.0
    };
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 99.95 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// Human-readable byte count for the header: `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    rate(n as f64).trim_end_matches("/s").to_string()
}

/// A short name for a cgroup v2 path: the container id (12 hex digits)
/// behind the runtime for container scopes, else the last path component
/// (`ssh.service`, `session-3.scope`); `/` for the root.
pub fn cgroup_label(path: &str) -> String {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if last.is_empty() {
        return "/".into();
    }
    let scoped = last.strip_suffix(".scope").unwrap_or(last);
    for (prefix, runtime) in [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "crio"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = scoped.strip_prefix(prefix) {
            if is_container_id(id) {
                return format!("{runtime}:{}", &id[..12]);
            }
        }
    }
    // cgroupfs drivers: /docker/<id>, /kubepods/.../<id>.
    if is_container_id(last) {
        let parent = path.trim_end_matches('/').rsplit('/').nth(1).unwrap_or("");
        let runtime = if parent == "docker" { "docker" } else { "ctr" };
        return format!("{runtime}:{}", &last[..12]);
    }
    last.to_string()
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The cgroup v2 path from the text of `/proc/<pid>/cgroup` (the `0::`
/// line), or the first hierarchy's path on a v1-only host.
pub fn cgroup_path(text: &str) -> Option<&str> {
    let mut first = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_ctrl), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            return Some(path);
        }
        first.get_or_insert(path);
    }
    first
}

/// A log line for the footer: env_logger's `[time LEVEL target] message`
/// becomes `LEVEL message`; other text is kept as it is.
pub fn status_text(line: &str) -> String {
    let parsed = line.strip_prefix('[').and_then(|rest| {
        let (head, msg) = rest.split_once("] ")?;
        let level = head.split_whitespace().nth(1)?;
        Some(format!("{level} {msg}"))
    });
    parsed.unwrap_or_else(|| line.to_string())
}

const BOLD: Style = Style::new().add_modifier(Modifier::BOLD);
const REVERSED: Style = Style::new().add_modifier(Modifier::REVERSED);

fn right(s: impl Into<String>) -> Cell<'static> {
    Cell::from(Line::from(s.into()).alignment(Alignment::Right))
}

fn dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Milliseconds for a cell of at most seven characters: `42µs`,
/// `14.2ms`, `250ms`, `3012ms`, `12.5s`; `-` for none (or not a number).
pub fn millis(ms: Option<f64>) -> String {
    match ms {
        Some(v) if v.is_finite() && v >= 0.0 => {
            if v < 0.9995 {
                format!("{:.0}µs", v * 1000.0)
            } else if v < 99.95 {
                format!("{v:.1}ms")
            } else if v < 9999.5 {
                format!("{v:.0}ms")
            } else {
                format!("{:.1}s", v / 1000.0)
            }
        }
        _ => "-".into(),
    }
}

/// Connects of a row that failed, whatever the cause (never overflows).
fn connect_failures(q: &netwatch_common::wire::ProcessTcpQuality) -> u64 {
    q.connects_refused
        .saturating_add(q.connects_timed_out)
        .saturating_add(q.connects_unreachable)
        .saturating_add(q.connects_failed_other)
}

/// Draw the whole view into `buf` within `area`. `None`: no snapshot yet.
pub fn draw(buf: &mut Buffer, area: Rect, snapshot: Option<&Snapshot>, ui: &UiState) {
    if area.height == 0 || area.width == 0 {
        return;
    }
    let [title, totals, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_title(buf, title, snapshot, ui);
    draw_footer(buf, footer, ui);
    let Some(s) = snapshot else {
        Paragraph::new("waiting for the first snapshot…").render(totals, buf);
        return;
    };
    draw_totals(buf, totals, s, ui);
    // Below ten lines there is no room for a useful connections pane.
    let conn_height = if area.height >= 10 {
        (body.height * 2 / 5).max(3)
    } else {
        0
    };
    let [procs, conns] =
        Layout::vertical([Constraint::Fill(1), Constraint::Length(conn_height)]).areas(body);
    let rows = sorted_rows(s, ui);
    let selected = selected_row(&rows, ui);
    draw_processes(buf, procs, &rows, selected, ui);
    if conn_height > 0 {
        let p = selected.and_then(|i| rows.get(i).copied());
        draw_connections(buf, conns, s, p, ui.columns);
    }
}

fn draw_title(buf: &mut Buffer, area: Rect, s: Option<&Snapshot>, ui: &UiState) {
    let mut spans = vec![
        Span::styled("netwatch", BOLD),
        Span::raw("  host "),
        Span::styled(shown(&ui.host), BOLD),
    ];
    if let Some(s) = s {
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
        spans.push(Span::raw("  source "));
        spans.push(Span::styled(shown(&source), BOLD));
        spans.push(Span::raw(format!(
            "  {}",
            s.timestamp.format("%Y-%m-%d %H:%M:%S UTC")
        )));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn draw_totals(buf: &mut Buffer, area: Rect, s: &Snapshot, ui: &UiState) {
    let procs = s.processes.as_deref().unwrap_or_default();
    let rx: f64 = procs.iter().map(|p| p.rx_rate).sum();
    let tx: f64 = procs.iter().map(|p| p.tx_rate).sum();
    let (rx_total, tx_total) = ui.grand_totals();
    let lost = s.collector.as_ref().and_then(|c| c.lost_records);
    let line = format!(
        "rx {}  tx {}  total {}  procs {}  conns {}  lost {}",
        rate(rx),
        rate(tx),
        bytes(rx_total.saturating_add(tx_total)),
        procs.len(),
        dash(s.connection_count),
        dash(lost),
    );
    let mut spans = vec![Span::raw(line)];
    // Active alerts (port scan, beaconing, DNS tunnel, bandwidth): how many,
    // and the newest one's message.
    let alerts = s.alerts.as_deref().unwrap_or_default();
    if let Some(newest) = alerts.iter().max_by_key(|a| a.timestamp) {
        spans.push(Span::styled(
            format!("  ALERTS {}: {}", alerts.len(), shown(&newest.message)),
            BOLD,
        ));
    }
    Paragraph::new(Line::from(spans)).render(area, buf);
}

fn draw_footer(buf: &mut Buffer, area: Rect, ui: &UiState) {
    let mut text = format!(
        " q quit  ↑↓ select  s sort: {}  t columns: {}",
        ui.sort.label(),
        ui.columns.label()
    );
    if let Some(status) = &ui.status {
        // Log lines arrive escaped (`LogWriter`); this keeps it so for any
        // other status text, and leaves escaped text as it is.
        text.push_str("  │ ");
        text.push_str(&crate::text::log_record(status));
    }
    Paragraph::new(text).style(REVERSED).render(area, buf);
}

/// Process columns for a width: wide screens split the totals and get
/// wider; narrow ones drop cgroup and user, then totals and connections.
/// The quality columns drop cgroup, then user, then connect time and DNS.
fn process_columns(width: u16, columns: Columns) -> Vec<(&'static str, Constraint, bool)> {
    use Constraint::{Fill, Length};
    if columns == Columns::Quality {
        return quality_columns(width);
    }
    // (header, width, right-aligned)
    if width >= 110 {
        vec![
            ("PID", Length(7), true),
            ("NAME", Length(16), false),
            ("USER", Length(10), false),
            ("CGROUP", Fill(1), false),
            ("RX/s", Length(7), true),
            ("TX/s", Length(7), true),
            ("RX TOTAL", Length(8), true),
            ("TX TOTAL", Length(8), true),
            ("CONN", Length(5), true),
        ]
    } else if width >= 72 {
        vec![
            ("PID", Length(7), true),
            ("NAME", Length(15), false),
            ("USER", Length(8), false),
            ("CGROUP", Fill(1), false),
            ("RX/s", Length(6), true),
            ("TX/s", Length(6), true),
            ("TOTAL", Length(6), true),
            ("CONN", Length(4), true),
        ]
    } else if width >= 48 {
        vec![
            ("PID", Length(7), true),
            ("NAME", Fill(1), false),
            ("RX/s", Length(6), true),
            ("TX/s", Length(6), true),
            ("TOTAL", Length(6), true),
            ("CONN", Length(4), true),
        ]
    } else {
        vec![
            ("PID", Length(7), true),
            ("NAME", Fill(1), false),
            ("RX/s", Length(6), true),
            ("TX/s", Length(6), true),
        ]
    }
}

/// The quality columns of the process table (see [`Columns::Quality`]).
fn quality_columns(width: u16) -> Vec<(&'static str, Constraint, bool)> {
    use Constraint::{Fill, Length};
    let mut cols = vec![("PID", Length(7), true)];
    if width >= 110 {
        cols.extend([
            ("NAME", Length(16), false),
            ("USER", Length(10), false),
            ("CGROUP", Fill(1), false),
            ("RETR", Length(6), true),
            ("CFAIL", Length(6), true),
            ("CONNECT", Length(8), true),
            ("RTT", Length(8), true),
            ("DNS", Length(6), true),
            ("DNSFAIL", Length(7), true),
        ]);
    } else if width >= 72 {
        cols.extend([
            ("NAME", Fill(1), false),
            ("USER", Length(8), false),
            ("RETR", Length(5), true),
            ("CFAIL", Length(5), true),
            ("CONNECT", Length(7), true),
            ("RTT", Length(7), true),
            ("DNS", Length(5), true),
            ("DNSFAIL", Length(7), true),
        ]);
    } else if width >= 48 {
        cols.extend([
            ("NAME", Fill(1), false),
            ("RETR", Length(5), true),
            ("CFAIL", Length(5), true),
            ("RTT", Length(7), true),
            ("DNS", Length(5), true),
        ]);
    } else {
        cols.extend([
            ("NAME", Fill(1), false),
            ("RETR", Length(5), true),
            ("CFAIL", Length(5), true),
        ]);
    }
    cols
}

fn header_row(cols: &[(&'static str, Constraint, bool)]) -> Row<'static> {
    Row::new(
        cols.iter()
            .map(|(h, _, r)| if *r { right(*h) } else { Cell::from(*h) }),
    )
    .style(BOLD)
}

fn draw_processes(
    buf: &mut Buffer,
    area: Rect,
    rows: &[&ProcessBandwidth],
    selected: Option<usize>,
    ui: &UiState,
) {
    let cols = process_columns(area.width, ui.columns);
    let body = rows.iter().map(|p| {
        let k = key(p);
        let (rx_total, tx_total) = ui.totals(&k);
        let tcp = p.tcp_quality.as_ref();
        let dns = p.dns.as_ref();
        Row::new(cols.iter().map(|(h, _, _)| match *h {
            "PID" => right(dash(p.pid)),
            "NAME" => Cell::from(shown(&p.process_name)),
            "USER" => Cell::from(shown(p.user.as_deref().unwrap_or("-"))),
            "CGROUP" => Cell::from(shown(ui.cgroup(&k).unwrap_or("-"))),
            "RX/s" => right(human(p.rx_rate)),
            "TX/s" => right(human(p.tx_rate)),
            "RX TOTAL" => right(human(rx_total as f64)),
            "TX TOTAL" => right(human(tx_total as f64)),
            "TOTAL" => right(human(rx_total.saturating_add(tx_total) as f64)),
            "CONN" => right(p.connection_count.to_string()),
            "RETR" => right(dash(tcp.map(|q| q.retransmits))),
            "CFAIL" => right(dash(tcp.map(connect_failures))),
            "CONNECT" => right(millis(tcp.and_then(|q| q.connect_ms_avg))),
            "RTT" => right(millis(tcp.and_then(|q| q.rtt_us_avg).map(|us| us / 1000.0))),
            "DNS" => right(dash(dns.map(|d| d.queries))),
            "DNSFAIL" => right(dash(dns.map(|d| d.failures.saturating_add(d.unanswered)))),
            _ => Cell::from(""),
        }))
    });
    let table = Table::new(body, cols.iter().map(|c| c.1))
        .header(header_row(&cols))
        .row_highlight_style(REVERSED);
    let mut state = TableState::default().with_selected(selected);
    StatefulWidget::render(table, area, buf, &mut state);
}

fn draw_connections(
    buf: &mut Buffer,
    area: Rect,
    s: &Snapshot,
    selected: Option<&ProcessBandwidth>,
    columns: Columns,
) {
    let [title, list] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    let mut conns: Vec<&ConnectionDetail> = match selected {
        Some(p) => s
            .connections
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|c| match p.pid {
                Some(pid) => c.pid == Some(pid),
                None => c.pid.is_none() && c.process_name.as_deref() == Some(&p.process_name),
            })
            .collect(),
        None => Vec::new(),
    };
    let moved = |c: &ConnectionDetail| {
        c.rx_bytes
            .unwrap_or(0)
            .saturating_add(c.tx_bytes.unwrap_or(0))
    };
    conns.sort_by(|a, b| {
        moved(b)
            .cmp(&moved(a))
            .then_with(|| a.remote_addr.cmp(&b.remote_addr))
            .then_with(|| a.local_addr.cmp(&b.local_addr))
    });
    let head = match selected {
        Some(p) => format!(
            "── connections of {} {}: {} ",
            dash(p.pid),
            shown(&p.process_name),
            conns.len()
        ),
        None => "── connections (no process selected) ".to_string(),
    };
    let fill = (area.width as usize).saturating_sub(head.chars().count());
    Paragraph::new(format!("{head}{}", "─".repeat(fill))).render(title, buf);

    use Constraint::{Fill, Length};
    let quality = columns == Columns::Quality;
    let cols: Vec<(&'static str, Constraint, bool)> = if quality && area.width >= 110 {
        vec![
            ("PROTO", Length(5), false),
            ("LOCAL", Fill(1), false),
            ("REMOTE", Fill(1), false),
            ("STATE", Length(11), false),
            ("RTT", Length(8), true),
            ("RETR", Length(6), true),
            ("CONNECT", Length(8), true),
            ("RST S/R", Length(9), true),
        ]
    } else if quality && area.width >= 72 {
        vec![
            ("PROTO", Length(5), false),
            ("LOCAL", Fill(1), false),
            ("REMOTE", Fill(1), false),
            ("STATE", Length(11), false),
            ("RTT", Length(7), true),
            ("RETR", Length(5), true),
        ]
    } else if quality {
        vec![
            ("PROTO", Length(5), false),
            ("REMOTE", Fill(1), false),
            ("RTT", Length(7), true),
            ("RETR", Length(5), true),
        ]
    } else if area.width >= 110 {
        vec![
            ("PROTO", Length(5), false),
            ("LOCAL", Fill(1), false),
            ("REMOTE", Fill(1), false),
            ("STATE", Length(11), false),
            ("RX", Length(6), true),
            ("TX", Length(6), true),
            ("RTT", Length(8), true),
            ("RETR", Length(6), true),
        ]
    } else if area.width >= 72 {
        vec![
            ("PROTO", Length(5), false),
            ("LOCAL", Fill(1), false),
            ("REMOTE", Fill(1), false),
            ("STATE", Length(11), false),
            ("RX", Length(6), true),
            ("TX", Length(6), true),
        ]
    } else {
        vec![
            ("PROTO", Length(5), false),
            ("REMOTE", Fill(1), false),
            ("STATE", Length(11), false),
        ]
    };
    let body = conns.iter().map(|c| {
        let q = c.tcp_quality.as_ref();
        Row::new(cols.iter().map(|(h, _, _)| match *h {
            "PROTO" => Cell::from(shown(&c.protocol)),
            "LOCAL" => Cell::from(shown(&c.local_addr)),
            "REMOTE" => Cell::from(shown(&c.remote_addr)),
            "STATE" => Cell::from(shown(&c.state)),
            "RX" => right(c.rx_bytes.map_or("-".into(), |b| human(b as f64))),
            "TX" => right(c.tx_bytes.map_or("-".into(), |b| human(b as f64))),
            "RTT" => right(millis(c.kernel_rtt_us.map(|us| us / 1000.0))),
            "RETR" => right(dash(q.map(|q| q.retransmits))),
            "CONNECT" => right(millis(q.and_then(|q| q.connect_ms))),
            "RST S/R" => right(q.map_or("-".into(), |q| {
                format!("{}/{}", q.resets_sent, q.resets_received)
            })),
            _ => Cell::from(""),
        }))
    });
    let table = Table::new(body, cols.iter().map(|c| c.1)).header(header_row(&cols));
    Widget::render(table, list, buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use netwatch_common::wire::CollectorInfo;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn proc(name: &str, pid: u32, rx: u64, tx: u64, conns: u32, user: &str) -> ProcessBandwidth {
        let mut p = ProcessBandwidth::network_only(
            name.into(),
            Some(pid),
            rx,
            tx,
            rx as f64,
            tx as f64,
            conns,
        );
        p.user = Some(user.into());
        p
    }

    fn conn(pid: u32, local: &str, remote: &str, rx: u64, tx: u64) -> ConnectionDetail {
        ConnectionDetail {
            protocol: "TCP".into(),
            local_addr: local.into(),
            remote_addr: remote.into(),
            state: "ESTABLISHED".into(),
            pid: Some(pid),
            process_name: None,
            kernel_rtt_us: Some(250.0),
            rx_bytes: Some(rx),
            tx_bytes: Some(tx),
            tcp_quality: None,
        }
    }

    /// One second's snapshot: rates equal interval bytes.
    fn fixture() -> Snapshot {
        let mut s = Snapshot::empty(Utc.with_ymd_and_hms(2026, 11, 24, 19, 0, 0).unwrap());
        s.connection_count = Some(17);
        s.collector = Some(CollectorInfo {
            source: "ebpf".into(),
            ebpf_tier: Some("tracepoint".into()),
            estimated: false,
            fallback_reason: None,
            lost_records: Some(3),
            connections_truncated: None,
            processes_folded: None,
        });
        s.processes = Some(vec![
            proc("sshd", 812, 2_048, 10_240, 1, "root"),
            proc("curl", 4242, 5 * 1024 * 1024, 30_000, 2, "alice"),
            proc("postgres", 1500, 700, 900, 4, "postgres"),
        ]);
        s.connections = Some(vec![
            conn(4242, "10.0.0.5:51514", "93.184.215.14:443", 6 << 20, 40_000),
            conn(4242, "10.0.0.5:51520", "93.184.215.14:443", 1024, 512),
            conn(812, "10.0.0.5:22", "10.0.0.9:50000", 4096, 20_000),
        ]);
        with_quality(&mut s);
        s
    }

    /// TCP quality and DNS figures: curl has all of them, sshd TCP only
    /// (an RTT), postgres none (ss mode, or no capture).
    fn with_quality(s: &mut Snapshot) {
        use netwatch_common::wire::{ConnectionQuality, ProcessDns, ProcessTcpQuality};
        for p in s.processes.iter_mut().flatten() {
            match p.pid {
                Some(4242) => {
                    p.tcp_quality = Some(ProcessTcpQuality {
                        retransmits: 12,
                        retransmitted_bytes: 17_376,
                        connects: 3,
                        connects_refused: 1,
                        connects_timed_out: 1,
                        connect_ms_avg: Some(14.4),
                        connect_ms_max: Some(20.0),
                        resets_received: 1,
                        rtt_us_avg: Some(2_500.0),
                        ..Default::default()
                    });
                    p.dns = Some(ProcessDns {
                        queries: 4,
                        responses: 3,
                        failures: 1,
                        nxdomain: 1,
                        unanswered: 1,
                        latency_ms_avg: Some(2.0),
                        latency_ms_max: Some(3.0),
                    });
                }
                Some(812) => {
                    p.tcp_quality = Some(ProcessTcpQuality {
                        rtt_us_avg: Some(250.0),
                        ..Default::default()
                    });
                }
                _ => {}
            }
        }
        if let Some(c) = s.connections.as_mut().and_then(|c| c.first_mut()) {
            c.kernel_rtt_us = Some(2_500.0);
            c.tcp_quality = Some(ConnectionQuality {
                retransmits: 12,
                retransmitted_bytes: 17_376,
                connect_ms: Some(1_250.0),
                resets_sent: 0,
                resets_received: 1,
            });
        }
    }

    fn state(s: &Snapshot) -> UiState {
        let mut ui = UiState::new("web-1");
        ui.apply(s, |pid| match pid {
            4242 => Some(cgroup_label(&format!(
                "/system.slice/docker-{}.scope",
                "ab12".repeat(16)
            ))),
            812 => Some("ssh.service".into()),
            _ => None,
        });
        ui
    }

    /// No cell of the rendered `w`×`h` screen holds a raw control character.
    fn assert_no_control_cells(s: &Snapshot, ui: &UiState, w: u16, h: u16) {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| {
            let area = f.area();
            draw(f.buffer_mut(), area, Some(s), ui)
        })
        .unwrap();
        let buf = t.backend().buffer();
        for y in 0..h {
            for x in 0..w {
                let sym = buf[(x, y)].symbol();
                assert!(
                    !sym.chars().any(char::is_control),
                    "a raw control character in cell ({x}, {y}): {sym:?}"
                );
            }
        }
    }

    fn screen(s: Option<&Snapshot>, ui: &UiState, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| {
            let area = f.area();
            draw(f.buffer_mut(), area, s, ui)
        })
        .unwrap();
        let buf = t.backend().buffer();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    const SCREEN_80X24: [&str; 24] = [
        "netwatch  host web-1  source ebpf (tracepoint)  2026-11-24 19:00:00 UTC",
        "rx 5.0 MiB/s  tx 40.2 KiB/s  total 5.0 MiB  procs 3  conns 17  lost 3",
        "    PID NAME            USER     CGROUP                  RX/s   TX/s  TOTAL CONN",
        "   4242 curl            alice    docker:ab12ab12ab12     5.0M  29.3K   5.0M    2",
        "    812 sshd            root     ssh.service             2.0K  10.0K  12.0K    1",
        "   1500 postgres        postgres -                       700B   900B   1.6K    4",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "── connections of 4242 curl: 2 ─────────────────────────────────────────────────",
        "PROTO LOCAL                    REMOTE                  STATE           RX     TX",
        "TCP   10.0.0.5:51514           93.184.215.14:443       ESTABLISHED   6.0M  39.1K",
        "TCP   10.0.0.5:51520           93.184.215.14:443       ESTABLISHED   1.0K   512B",
        "",
        "",
        "",
        "",
        " q quit  ↑↓ select  s sort: total rate  t columns: bandwidth",
    ];

    #[test]
    fn draws_80x24_cell_for_cell() {
        let s = fixture();
        let ui = state(&s);
        assert_eq!(screen(Some(&s), &ui, 80, 24), SCREEN_80X24);
    }

    #[test]
    fn active_alerts_show_their_count_and_the_newest_message() {
        use netwatch_common::wire::{Alert, AlertCategory, AlertSeverity};
        let mut s = fixture();
        let alert = |secs: i64, m: &str| Alert {
            severity: AlertSeverity::Critical,
            category: AlertCategory::PortScan,
            message: m.into(),
            detail: String::new(),
            timestamp: s.timestamp - chrono::Duration::seconds(secs),
        };
        s.alerts = Some(vec![
            alert(30, "older"),
            alert(1, "port scan from 10.0.0.9"),
        ]);
        let ui = state(&s);
        let got = screen(Some(&s), &ui, 120, 40);
        assert_eq!(
            got[1],
            "rx 5.0 MiB/s  tx 40.2 KiB/s  total 5.0 MiB  procs 3  conns 17  lost 3  \
             ALERTS 2: port scan from 10.0.0.9"
        );
    }

    /// What ratatui 0.29 does with a control character in a cell's text:
    /// it keeps it, as the cell's symbol, and crossterm writes a symbol to
    /// the terminal as it is. Hence [`shown`] on every outside text.
    #[test]
    fn ratatui_keeps_control_characters_in_cells() {
        let mut buf = Buffer::empty(Rect::new(0, 0, 10, 1));
        let table = Table::new(
            [Row::new([Cell::from("\x1b[2Jx")])],
            [Constraint::Length(10)],
        );
        Widget::render(table, buf.area, &mut buf);
        assert_eq!(buf[(0, 0)].symbol(), "\x1b");
        assert_eq!(buf[(1, 0)].symbol(), "[");
    }

    #[test]
    fn hostile_names_are_drawn_escaped_and_every_other_row_intact() {
        use netwatch_common::wire::{Alert, AlertCategory, AlertSeverity};
        const EVIL: &str = "\x1b[2J\r\x08\x07evil";
        let mut s = fixture();
        let mut evil = proc(EVIL, 666, 300, 200, 2, "mallory\x1b[31m");
        evil.rx_rate = 0.0;
        evil.tx_rate = 0.0;
        s.processes.as_mut().unwrap().push(evil);
        s.connections.as_mut().unwrap().push(conn(
            666,
            "10.0.0.5:4444",
            "evil\x1b]0;owned\x07:1",
            300,
            200,
        ));
        s.alerts = Some(vec![Alert {
            severity: AlertSeverity::Warning,
            category: AlertCategory::DnsTunnel,
            message: "DNS tunnel to a\x1b[2Jb.example".into(),
            detail: String::new(),
            timestamp: s.timestamp,
        }]);
        let mut ui = UiState::new("web-1");
        ui.apply(&s, |pid| match pid {
            4242 => Some(cgroup_label(&format!(
                "/system.slice/docker-{}.scope",
                "ab12".repeat(16)
            ))),
            812 => Some("ssh.service".into()),
            666 => Some(cgroup_label("/user.slice/x\x1b[2Jy.scope")),
            _ => None,
        });
        // Select the hostile row: its connections and name head the pane.
        ui.act(Action::End, Some(&s), 10);
        assert_no_control_cells(&s, &ui, 120, 40);
        let got = screen(Some(&s), &ui, 120, 40);
        assert_eq!(
            got[1],
            "rx 5.0 MiB/s  tx 40.2 KiB/s  total 5.0 MiB  procs 4  conns 17  lost 3  \
             ALERTS 1: DNS tunnel to a\\x1b[2Jb.example"
        );
        assert_eq!(
            got[6],
            "    666 \\x1b[2J\\r\\x08\\x0 mallory\\x1 x\\x1b[2Jy.scope                                   \
             0B      0B     300B     200B     2",
            "{got:#?}"
        );
        // Every other row as without it.
        let plain = screen(Some(&fixture()), &state(&fixture()), 120, 40);
        assert_eq!(got[2..6], plain[2..6]);
        let head = "── connections of 666 \\x1b[2J\\r\\x08\\x07evil: 1 ";
        assert_eq!(
            got[25],
            format!("{head}{}", "─".repeat(120 - head.chars().count()))
        );
        assert_eq!(
            got[27],
            "TCP   10.0.0.5:4444                        evil\\x1b]0;owned\\x07:1              \
             ESTABLISHED   300B   200B    250µs      -"
        );
    }

    /// The quality columns show every outside text escaped too: the
    /// hostile process's row, the pane's title and its connection's remote.
    #[test]
    fn hostile_names_stay_escaped_in_the_quality_columns() {
        use netwatch_common::wire::{ConnectionQuality, ProcessDns, ProcessTcpQuality};
        const EVIL: &str = "\x1b[2J\r\x08\x07evil";
        let mut s = fixture();
        let mut evil = proc(EVIL, 666, 300, 200, 2, "mallory\x1b[31m");
        evil.rx_rate = 0.0;
        evil.tx_rate = 0.0;
        evil.tcp_quality = Some(ProcessTcpQuality {
            retransmits: 7,
            connects: 5,
            connects_unreachable: 5,
            rtt_us_avg: Some(12_000.0),
            ..Default::default()
        });
        evil.dns = Some(ProcessDns {
            queries: 900,
            failures: 900,
            nxdomain: 900,
            ..Default::default()
        });
        s.processes.as_mut().unwrap().push(evil);
        let mut c = conn(666, "10.0.0.5:4444", "evil\x1b]0;owned\x07:1", 300, 200);
        c.tcp_quality = Some(ConnectionQuality {
            retransmits: 7,
            resets_sent: 2,
            ..Default::default()
        });
        s.connections.as_mut().unwrap().push(c);
        let mut ui = state(&s);
        ui.act(Action::ToggleColumns, Some(&s), 10);
        ui.act(Action::End, Some(&s), 10);
        assert_no_control_cells(&s, &ui, 120, 40);
        let got = screen(Some(&s), &ui, 120, 40);
        assert_eq!(
            got[6],
            "    666 \\x1b[2J\\r\\x08\\x0 mallory\\x1 -                                          \
             7      5        -   12.0ms    900     900",
            "{got:#?}"
        );
        let head = "── connections of 666 \\x1b[2J\\r\\x08\\x07evil: 1 ";
        assert_eq!(
            got[25],
            format!("{head}{}", "─".repeat(120 - head.chars().count()))
        );
        assert_eq!(
            got[27],
            "TCP   10.0.0.5:4444                     evil\\x1b]0;owned\\x07:1            \
             ESTABLISHED    250µs      7        -       2/0"
        );
        // At 80 columns too.
        let narrow = screen(Some(&s), &ui, 80, 24);
        assert_eq!(
            narrow[6],
            "    666 \\x1b[2J\\r\\x08\\x07evil mallory\\     7     5       -  12.0ms   900     900"
        );
    }

    /// `t` switches the process table to the quality columns and back; the
    /// selection stays on the same process; the footer names the columns.
    #[test]
    fn t_switches_to_the_quality_columns_80x24_cell_for_cell() {
        let s = fixture();
        let mut ui = state(&s);
        ui.act(Action::Down, Some(&s), 10);
        ui.act(Action::ToggleColumns, Some(&s), 10);
        assert_eq!(ui.columns, Columns::Quality);
        assert_eq!(ui.selected, Some((Some(812), "sshd".into())));
        ui.act(Action::Up, Some(&s), 10);
        let got = screen(Some(&s), &ui, 80, 24);
        let mut want: Vec<String> = vec![
            SCREEN_80X24[0].into(),
            SCREEN_80X24[1].into(),
            "    PID NAME                  USER      RETR CFAIL CONNECT     RTT   DNS DNSFAIL"
                .into(),
            "   4242 curl                  alice       12     2  14.4ms   2.5ms     4       2"
                .into(),
            "    812 sshd                  root         0     0       -   250µs     -       -"
                .into(),
            "   1500 postgres              postgres     -     -       -       -     -       -"
                .into(),
        ];
        want.resize(15, String::new());
        want.extend([
            SCREEN_80X24[15].into(),
            "PROTO LOCAL                    REMOTE                  STATE           RTT  RETR"
                .into(),
            "TCP   10.0.0.5:51514           93.184.215.14:443       ESTABLISHED   2.5ms    12"
                .into(),
            "TCP   10.0.0.5:51520           93.184.215.14:443       ESTABLISHED   250µs     -"
                .into(),
        ]);
        want.resize(23, String::new());
        want.push(" q quit  ↑↓ select  s sort: total rate  t columns: quality".into());
        assert_eq!(got, want);
        ui.act(Action::ToggleColumns, Some(&s), 10);
        assert_eq!(screen(Some(&s), &ui, 80, 24), SCREEN_80X24);
    }

    #[test]
    fn quality_columns_at_120x40_and_on_narrow_terminals() {
        let s = fixture();
        let mut ui = state(&s);
        ui.act(Action::ToggleColumns, Some(&s), 10);
        let got = screen(Some(&s), &ui, 120, 40);
        assert_eq!(
            got[2..6],
            [
                "    PID NAME             USER       CGROUP                                  RETR  CFAIL  CONNECT      RTT    DNS DNSFAIL",
                "   4242 curl             alice      docker:ab12ab12ab12                       12      2   14.4ms    2.5ms      4       2",
                "    812 sshd             root       ssh.service                                0      0        -    250µs      -       -",
                "   1500 postgres         postgres   -                                          -      -        -        -      -       -",
            ]
        );
        assert_eq!(
            got[26..29],
            [
                "PROTO LOCAL                             REMOTE                            STATE            RTT   RETR  CONNECT   RST S/R",
                "TCP   10.0.0.5:51514                    93.184.215.14:443                 ESTABLISHED    2.5ms     12   1250ms       0/1",
                "TCP   10.0.0.5:51520                    93.184.215.14:443                 ESTABLISHED    250µs      -        -         -",
            ]
        );
        let mid = screen(Some(&s), &ui, 60, 12);
        assert_eq!(
            mid[2..6],
            [
                "    PID NAME                        RETR CFAIL     RTT   DNS",
                "   4242 curl                          12     2   2.5ms     4",
                "    812 sshd                           0     0   250µs     -",
                "   1500 postgres                       -     -       -     -",
            ]
        );
        assert_eq!(
            mid[9..11],
            [
                "PROTO REMOTE                                       RTT  RETR",
                "TCP   93.184.215.14:443                          2.5ms    12",
            ]
        );
        let tiny = screen(Some(&s), &ui, 30, 6);
        assert_eq!(tiny[2], "    PID NAME        RETR CFAIL");
        assert_eq!(tiny[3], "   4242 curl          12     2");
    }

    #[test]
    fn milliseconds_fit_seven_characters() {
        assert_eq!(millis(None), "-");
        assert_eq!(millis(Some(0.042)), "42µs");
        assert_eq!(millis(Some(0.25)), "250µs");
        assert_eq!(millis(Some(0.9996)), "1.0ms");
        assert_eq!(millis(Some(14.4)), "14.4ms");
        assert_eq!(millis(Some(99.9)), "99.9ms");
        assert_eq!(millis(Some(250.0)), "250ms");
        assert_eq!(millis(Some(3012.4)), "3012ms");
        assert_eq!(millis(Some(12_500.0)), "12.5s");
        assert_eq!(millis(Some(f64::NAN)), "-");
        assert_eq!(millis(Some(-1.0)), "-");
    }

    #[test]
    fn draws_120x40_with_split_totals_and_rtt() {
        let s = fixture();
        let ui = state(&s);
        let got = screen(Some(&s), &ui, 120, 40);
        let mut want = vec![
            "netwatch  host web-1  source ebpf (tracepoint)  2026-11-24 19:00:00 UTC".to_string(),
            "rx 5.0 MiB/s  tx 40.2 KiB/s  total 5.0 MiB  procs 3  conns 17  lost 3".into(),
            "    PID NAME             USER       CGROUP                                          RX/s    TX/s RX TOTAL TX TOTAL  CONN".into(),
            "   4242 curl             alice      docker:ab12ab12ab12                             5.0M   29.3K     5.0M    29.3K     2".into(),
            "    812 sshd             root       ssh.service                                     2.0K   10.0K     2.0K    10.0K     1".into(),
            "   1500 postgres         postgres   -                                               700B    900B     700B     900B     4".into(),
        ];
        want.resize(25, String::new());
        want.extend([
            format!("── connections of 4242 curl: 2 {}", "─".repeat(89)),
            "PROTO LOCAL                                REMOTE                              STATE           RX     TX      RTT   RETR".into(),
            "TCP   10.0.0.5:51514                       93.184.215.14:443                   ESTABLISHED   6.0M  39.1K    2.5ms     12".into(),
            "TCP   10.0.0.5:51520                       93.184.215.14:443                   ESTABLISHED   1.0K   512B    250µs      -".into(),
        ]);
        want.resize(39, String::new());
        want.push(" q quit  ↑↓ select  s sort: total rate  t columns: bandwidth".into());
        assert_eq!(got, want);
    }

    #[test]
    fn selected_row_is_reversed_and_footer_too() {
        let s = fixture();
        let ui = state(&s);
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        t.draw(|f| {
            let area = f.area();
            draw(f.buffer_mut(), area, Some(&s), &ui)
        })
        .unwrap();
        let buf = t.backend().buffer();
        let reversed = |x: u16, y: u16| buf[(x, y)].modifier.contains(Modifier::REVERSED);
        assert!((0..80).all(|x| reversed(x, 3)), "the first row is selected");
        assert!(!(0..80).any(|x| reversed(x, 4)));
        assert!((0..80).all(|x| reversed(x, 23)), "the footer");
        assert!(buf[(4, 2)].modifier.contains(Modifier::BOLD), "the header");
    }

    fn names(s: &Snapshot, ui: &UiState) -> Vec<String> {
        sorted_rows(s, ui)
            .iter()
            .map(|p| p.process_name.clone())
            .collect()
    }

    #[test]
    fn s_cycles_the_sort_and_the_selection_follows_the_process() {
        let s = fixture();
        let mut ui = state(&s);
        assert_eq!(names(&s, &ui), ["curl", "sshd", "postgres"]);
        ui.act(Action::Down, Some(&s), 10);
        assert_eq!(ui.selected, Some((Some(812), "sshd".into())));
        let mut seen = vec![];
        for _ in 0..7 {
            ui.act(Action::CycleSort, Some(&s), 10);
            seen.push((ui.sort, names(&s, &ui)));
            // Still on sshd, wherever it sorts.
            let rows = sorted_rows(&s, &ui);
            assert_eq!(rows[selected_row(&rows, &ui).unwrap()].process_name, "sshd");
        }
        assert_eq!(
            seen,
            [
                (
                    SortKey::Rx,
                    vec!["curl".into(), "sshd".into(), "postgres".into()]
                ),
                (
                    SortKey::Tx,
                    vec!["curl".into(), "sshd".into(), "postgres".into()]
                ),
                (
                    SortKey::Pid,
                    vec!["sshd".into(), "postgres".into(), "curl".into()]
                ),
                (
                    SortKey::Name,
                    vec!["curl".into(), "postgres".into(), "sshd".into()]
                ),
                // curl 12, sshd 0, postgres no TCP figures: last.
                (
                    SortKey::Retransmits,
                    vec!["curl".into(), "sshd".into(), "postgres".into()]
                ),
                (
                    SortKey::FailedConnects,
                    vec!["curl".into(), "sshd".into(), "postgres".into()]
                ),
                (
                    SortKey::Total,
                    vec!["curl".into(), "sshd".into(), "postgres".into()]
                ),
            ]
        );
        let ui2 = ui.clone();
        assert_eq!(
            screen(Some(&s), &ui2, 80, 24)[15],
            format!("── connections of 812 sshd: 1 {}", "─".repeat(50))
        );
    }

    /// The quality sorts put the worst process first whatever its rate;
    /// a process without TCP figures sorts last.
    #[test]
    fn quality_sorts_put_the_worst_first() {
        use netwatch_common::wire::ProcessTcpQuality;
        let mut s = fixture();
        for p in s.processes.iter_mut().flatten() {
            match p.pid {
                Some(1500) => {
                    p.tcp_quality = Some(ProcessTcpQuality {
                        retransmits: 50,
                        ..Default::default()
                    })
                }
                Some(812) => {
                    p.tcp_quality = Some(ProcessTcpQuality {
                        connects: 3,
                        connects_timed_out: 3,
                        ..Default::default()
                    })
                }
                _ => p.tcp_quality = None,
            }
        }
        let mut ui = state(&s);
        ui.sort = SortKey::Retransmits;
        assert_eq!(names(&s, &ui), ["postgres", "sshd", "curl"]);
        ui.sort = SortKey::FailedConnects;
        assert_eq!(names(&s, &ui), ["sshd", "postgres", "curl"]);
        assert_eq!(
            screen(Some(&s), &ui, 80, 24)[23],
            " q quit  ↑↓ select  s sort: failed connects  t columns: bandwidth"
        );
    }

    #[test]
    fn arrows_stop_at_the_ends_and_a_gone_process_keeps_the_place() {
        let s = fixture();
        let mut ui = state(&s);
        ui.act(Action::Up, Some(&s), 10);
        assert_eq!(ui.selected_index, 0);
        ui.act(Action::End, Some(&s), 10);
        ui.act(Action::Down, Some(&s), 10);
        assert_eq!(ui.selected, Some((Some(1500), "postgres".into())));
        ui.act(Action::Home, Some(&s), 10);
        ui.act(Action::PageDown, Some(&s), 10);
        assert_eq!(ui.selected_index, 2);
        // postgres exits: the selection stays at the last place.
        let mut next = fixture();
        next.processes
            .as_mut()
            .unwrap()
            .retain(|p| p.process_name != "postgres");
        ui.apply(&next, |_| None);
        assert_eq!(ui.selected, Some((Some(812), "sshd".into())));
    }

    #[test]
    fn totals_add_up_across_snapshots() {
        let s = fixture();
        let mut ui = state(&s);
        ui.apply(&s, |_| None);
        assert_eq!(ui.totals(&(Some(4242), "curl".into())), (10 << 20, 60_000));
        let per_snapshot: u64 = s
            .processes
            .as_deref()
            .unwrap()
            .iter()
            .map(|p| p.rx_bytes + p.tx_bytes)
            .sum();
        let (rx, tx) = ui.grand_totals();
        assert_eq!(rx + tx, 2 * per_snapshot);
        // The cgroup was looked up once, when the process was first seen.
        assert_eq!(ui.cgroup(&(Some(812), "sshd".into())), Some("ssh.service"));
    }

    #[test]
    fn narrow_terminals_drop_columns_not_rows() {
        let s = fixture();
        let ui = state(&s);
        let got = screen(Some(&s), &ui, 60, 12);
        assert_eq!(
            got[..6],
            [
                "netwatch  host web-1  source ebpf (tracepoint)  2026-11-24 1",
                "rx 5.0 MiB/s  tx 40.2 KiB/s  total 5.0 MiB  procs 3  conns 1",
                "    PID NAME                         RX/s   TX/s  TOTAL CONN",
                "   4242 curl                         5.0M  29.3K   5.0M    2",
                "    812 sshd                         2.0K  10.0K  12.0K    1",
                "   1500 postgres                     700B   900B   1.6K    4",
            ]
        );
        assert_eq!(
            got[9],
            "PROTO REMOTE                                     STATE"
        );
        let tiny = screen(Some(&s), &ui, 30, 6);
        assert_eq!(tiny[2], "    PID NAME       RX/s   TX/s");
        assert_eq!(tiny[5], " q quit  ↑↓ select  s sort: to");
    }

    #[test]
    fn before_the_first_snapshot_it_says_so() {
        let ui = UiState::new("web-1");
        let got = screen(None, &ui, 80, 24);
        assert_eq!(got[0], "netwatch  host web-1");
        assert_eq!(got[1], "waiting for the first snapshot…");
    }

    #[test]
    fn log_lines_lose_time_and_target_in_the_footer() {
        assert_eq!(
            status_text("[2026-11-29T21:33:22Z INFO  netwatch::source::select] process rows from the ss source"),
            "INFO process rows from the ss source"
        );
        assert_eq!(status_text("plain"), "plain");
        assert_eq!(status_text("[unclosed"), "[unclosed");
    }

    #[test]
    fn units_are_compact() {
        assert_eq!(human(0.0), "0B");
        assert_eq!(human(1023.0), "1023B");
        assert_eq!(human(1536.0), "1.5K");
        assert_eq!(human(99.9 * 1024.0), "99.9K");
        assert_eq!(human(512.0 * 1024.0), "512K");
        assert_eq!(human(1023.99 * 1024.0 * 1024.0), "1024M");
        assert_eq!(human(f64::NAN), "0B");
        assert_eq!(bytes(5 << 20), "5.0 MiB");
    }

    #[test]
    fn cgroup_labels_name_the_container_or_the_unit() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            cgroup_label(&format!("/system.slice/docker-{id}.scope")),
            "docker:0123456789ab"
        );
        assert_eq!(
            cgroup_label(&format!("/docker/{id}")),
            "docker:0123456789ab"
        );
        assert_eq!(
            cgroup_label(&format!(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
            )),
            "containerd:0123456789ab"
        );
        assert_eq!(
            cgroup_label(&format!("/machine.slice/libpod-{id}.scope")),
            "podman:0123456789ab"
        );
        assert_eq!(cgroup_label("/system.slice/ssh.service"), "ssh.service");
        assert_eq!(cgroup_label("/"), "/");
        assert_eq!(cgroup_label("/docker-short.scope"), "docker-short.scope");
        assert_eq!(
            cgroup_path("12:cpu:/a\n0::/user.slice/session-3.scope\n"),
            Some("/user.slice/session-3.scope")
        );
        assert_eq!(cgroup_path("4:memory:/lxc/x\n"), Some("/lxc/x"));
        assert_eq!(cgroup_path("garbage"), None);
    }
}
