//! Parser for `nettop -L 1 -n -x` (CSV) and `nettop -l 1 -n -x` (aligned
//! columns) output: bytes in and out and RTT of every socket flow, each
//! joined to the process line above it. Pure: it parses text handed to it and
//! never runs nettop.
//!
//! The output is one process line (`name.pid`, its totals) followed by one
//! line per flow of that process (`tcp4 127.0.0.1:5000<->127.0.0.1:6000`,
//! interface, state, bytes_in, bytes_out, …, rtt_avg like `1.23 ms`), under a
//! header naming the columns:
//! ```text
//! time,,interface,state,bytes_in,bytes_out,rx_dupe,rx_ooo,re-tx,rtt_avg,rcvsize,tx_win,tc_class,tc_mgt,cc_algo,P,C,R,W,arch,
//! 10:15:42.512020,mDNSResponder.272,,,987654,123456,0,0,0,,,,,,,,,,,,
//! 10:15:42.511300,udp4 *:5353<->*:*,en0,,700000,100000,,,,,786896,,CTL,,,,,,,so,
//! ```
//! Columns are found by their header names, so added or reordered columns
//! do not break it. A process name may hold dots, spaces and even commas:
//! the pid is what follows the last dot. nettop does not quote CSV fields, so
//! a row with more fields than the header has commas in its name.
//!
//! Byte counts are per-flow cumulative since the socket opened; `-x` makes
//! them plain integers (a row with `1.2 MiB` is counted malformed).

use std::net::SocketAddr;

use super::addr::{self, normalize_tcp_state, parse_endpoint, Endpoint, Family};
use super::lines::{Line, LineCounts};
use crate::source::Protocol;

/// A process line: the owner of the flow lines under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NettopProcess {
    pub pid: u32,
    /// As nettop prints it (it may be cut short), surrounding spaces trimmed.
    pub name: String,
    /// The process's totals, closed sockets included.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// One socket flow with its counters.
#[derive(Debug, Clone, PartialEq)]
pub struct NettopFlow {
    /// Owner: the process line above the flow.
    pub pid: u32,
    pub process_name: String,
    pub protocol: Protocol,
    pub local: SocketAddr,
    /// `None` for listening and unconnected sockets (`*:*`, `*.*`).
    pub remote: Option<SocketAddr>,
    /// `None` when nettop printed none (listening sockets).
    pub interface: Option<String>,
    /// Normalized TCP state (`UNKNOWN` when missing); for UDP `ESTABLISHED`
    /// when connected, else `UNCONN`.
    pub state: String,
    /// Cumulative bytes received since the socket opened.
    pub rx_bytes: u64,
    /// Cumulative bytes sent since the socket opened.
    pub tx_bytes: u64,
    /// Average RTT in microseconds; `None` when nettop printed none or 0.
    pub rtt_us: Option<f64>,
}

/// Everything one nettop run said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NettopOutput {
    pub processes: Vec<NettopProcess>,
    pub flows: Vec<NettopFlow>,
    pub lines: LineCounts,
}

/// Where the columns are in a CSV row.
#[derive(Debug, Clone, Copy)]
struct CsvLayout {
    /// Fields in a row, not counting the empty one after a trailing comma.
    width: usize,
    time: Option<usize>,
    name: usize,
    interface: Option<usize>,
    state: Option<usize>,
    bytes_in: Option<usize>,
    bytes_out: Option<usize>,
    rtt: Option<usize>,
}

/// The header nettop 2.x prints, used when the output has none.
const DEFAULT_HEADER: &str = "time,,interface,state,bytes_in,bytes_out,rx_dupe,rx_ooo,re-tx,\
                              rtt_avg,rcvsize,tx_win,tc_class,tc_mgt,cc_algo,P,C,R,W,arch,";

impl CsvLayout {
    fn from_header(header: &str) -> Self {
        let fields = csv_fields(header);
        let find = |name: &str| fields.iter().position(|f| f.trim() == name);
        let time = find("time");
        // The name column has no header: the first empty one.
        let name = fields
            .iter()
            .position(|f| f.trim().is_empty())
            .unwrap_or(time.map_or(0, |t| t + 1));
        Self {
            width: fields.len(),
            time,
            name,
            interface: find("interface"),
            state: find("state"),
            bytes_in: find("bytes_in"),
            bytes_out: find("bytes_out"),
            rtt: find("rtt_avg"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Format {
    Csv(CsvLayout),
    Columns,
}

/// What the name column of a row holds.
enum RowName {
    Flow {
        protocol: Protocol,
        family: Family,
        local: Endpoint,
        remote: Endpoint,
    },
    Process {
        name: String,
        pid: u32,
    },
}

/// A row's values, whichever format it came in.
struct Row<'a> {
    name: RowName,
    interface: Option<&'a str>,
    state: Option<&'a str>,
    rx_bytes: u64,
    tx_bytes: u64,
    rtt_us: Option<f64>,
}

/// The parser's state between lines.
#[derive(Default)]
struct Parser {
    out: NettopOutput,
    format: Option<Format>,
    /// The process line the next flow lines belong to.
    owner: Option<(u32, String)>,
}

/// Parse nettop logging output, CSV (`-L`) or aligned columns (`-l`).
/// Never panics; every line is counted.
pub fn parse_nettop(text: &str) -> NettopOutput {
    let mut p = Parser::default();
    for raw in text.lines() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let kind = p.line(line);
        p.out.lines.count(kind);
    }
    p.out
}

impl Parser {
    fn line(&mut self, line: &str) -> Line {
        if line.trim().is_empty() {
            return Line::Blank;
        }
        if is_header(line) {
            self.format = Some(if line.contains(',') {
                Format::Csv(CsvLayout::from_header(line))
            } else {
                Format::Columns
            });
            return Line::Header;
        }
        let csv = match self.format {
            Some(Format::Csv(layout)) if line.contains(',') => Some(layout),
            // A CSV row always has commas: this line is no row at all.
            Some(Format::Csv(_)) => return Line::Malformed,
            Some(Format::Columns) => None,
            None if line.contains(',') => Some(CsvLayout::from_header(DEFAULT_HEADER)),
            None => None,
        };
        match csv {
            Some(layout) => match csv_row(line, &layout) {
                Some(row) => self.row(row),
                None => {
                    // A row we cannot read may be a process line: the flows
                    // under it must not go to the process above it.
                    self.owner = None;
                    Line::Malformed
                }
            },
            // Aligned columns give no sure way to tell a bad row from noise;
            // the owner is kept.
            None => columns_row(line).map_or(Line::Malformed, |row| self.row(row)),
        }
    }

    fn row(&mut self, row: Row<'_>) -> Line {
        match row.name {
            RowName::Process { name, pid } => {
                self.owner = Some((pid, name.clone()));
                self.out.processes.push(NettopProcess {
                    pid,
                    name,
                    rx_bytes: row.rx_bytes,
                    tx_bytes: row.tx_bytes,
                });
                Line::Used
            }
            RowName::Flow {
                protocol,
                family,
                local,
                remote,
            } => {
                let Some((pid, process_name)) = self.owner.clone() else {
                    // A flow with no process line above it has no owner.
                    return Line::Malformed;
                };
                let remote = (!remote.is_wildcard()).then(|| remote.resolve(family));
                let state = match protocol {
                    Protocol::Tcp => row
                        .state
                        .and_then(normalize_tcp_state)
                        .unwrap_or(addr::UNKNOWN_STATE),
                    Protocol::Udp => addr::udp_state(remote.is_some()),
                };
                self.out.flows.push(NettopFlow {
                    pid,
                    process_name,
                    protocol,
                    local: local.resolve(family),
                    remote,
                    interface: row.interface.map(str::to_string),
                    state: state.to_string(),
                    rx_bytes: row.rx_bytes,
                    tx_bytes: row.tx_bytes,
                    rtt_us: row.rtt_us,
                });
                Line::Used
            }
        }
    }
}

/// A header line names `bytes_in` and `bytes_out`.
fn is_header(line: &str) -> bool {
    let names = || line.split(|c: char| c == ',' || c.is_whitespace());
    names().any(|f| f == "bytes_in") && names().any(|f| f == "bytes_out")
}

/// Split a CSV line, dropping the empty field after a trailing comma.
fn csv_fields(line: &str) -> Vec<&str> {
    let line = line.strip_suffix(',').unwrap_or(line);
    line.split(',').collect()
}

/// Read a CSV row. `None` when it is not a process or flow row with
/// readable counters.
fn csv_row<'a>(line: &'a str, layout: &CsvLayout) -> Option<Row<'a>> {
    let mut fields = csv_fields(line);
    // A row without the time column (some callers cut it off).
    if layout.time.is_some() && !fields.first().is_some_and(|f| looks_like_time(f.trim())) {
        fields.insert(0, "");
    }
    // nettop does not quote: extra fields are commas in the process name.
    let extra = fields.len().saturating_sub(layout.width);
    let name_field = fields.get(layout.name..=layout.name + extra)?.join(",");
    let col = |i: Option<usize>| -> Option<&'a str> {
        let i = i?;
        let i = if i > layout.name { i + extra } else { i };
        fields.get(i).map(|f| f.trim()).filter(|f| !f.is_empty())
    };
    Some(Row {
        name: classify(&name_field)?,
        interface: col(layout.interface),
        state: col(layout.state),
        rx_bytes: parse_count(col(layout.bytes_in))?,
        tx_bytes: parse_count(col(layout.bytes_out))?,
        rtt_us: col(layout.rtt).and_then(parse_rtt_us),
    })
}

/// Read an aligned-columns row (`nettop -l`). Counters are the integer
/// tokens; the flow's interface is the word before its state and numbers.
fn columns_row(line: &str) -> Option<Row<'_>> {
    let mut toks: Vec<&str> = line.split_whitespace().collect();
    if toks.first().is_some_and(|t| looks_like_time(t)) {
        toks.remove(0);
    }
    if let (Some(first), Some(tuple)) = (toks.first(), toks.get(1)) {
        if protocol_token(first).is_some() && tuple.contains("<->") {
            return columns_flow(&format!("{first} {tuple}"), &toks[2..]);
        }
    }
    // A process line: `name with spaces.pid` then its integer counters.
    // Runs of spaces inside the name come back as one space.
    let counters_from = toks
        .iter()
        .rposition(|t| !is_integer(t))
        .map_or(0, |i| i + 1);
    let (name_toks, counters) = toks.split_at(counters_from);
    Some(Row {
        name: process_name(&name_toks.join(" "))?,
        interface: None,
        state: None,
        rx_bytes: parse_count(counters.first().copied())?,
        tx_bytes: parse_count(counters.get(1).copied())?,
        rtt_us: None,
    })
}

fn columns_flow<'a>(name: &str, rest: &[&'a str]) -> Option<Row<'a>> {
    let name = classify_flow(name)??;
    let (mut interface, mut state, mut rtt_us) = (None, None, None);
    let mut numbers: Vec<&str> = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let t = rest[i];
        let unit_next = rest.get(i + 1).is_some_and(|u| rtt_unit(u).is_some());
        if state.is_none() && normalize_tcp_state(t).is_some() {
            state = Some(t);
        } else if unit_next && t.parse::<f64>().is_ok() {
            if rtt_us.is_none() {
                rtt_us = rest.get(i..i + 2).and_then(|p| parse_rtt_us(&p.join(" ")));
            }
            i += 1;
        } else if is_integer(t) {
            numbers.push(t);
        } else if interface.is_none() && state.is_none() && numbers.is_empty() {
            interface = Some(t);
        }
        i += 1;
    }
    Some(Row {
        name,
        interface,
        state,
        rx_bytes: parse_count(numbers.first().copied())?,
        tx_bytes: parse_count(numbers.get(1).copied())?,
        rtt_us,
    })
}

/// A flow (`tcp4 a<->b`) or a process (`name.pid`) name field.
fn classify(field: &str) -> Option<RowName> {
    match classify_flow(field) {
        Some(flow) => flow,
        None => process_name(field),
    }
}

/// `None` when the field is not a flow at all; `Some(None)` when it starts
/// like one and does not parse.
fn classify_flow(field: &str) -> Option<Option<RowName>> {
    let (proto, tuple) = field.trim().split_once(' ')?;
    let (protocol, family) = protocol_token(proto)?;
    let parsed = tuple.trim().split_once("<->").and_then(|(l, r)| {
        Some(RowName::Flow {
            protocol,
            family,
            local: parse_endpoint(l)?,
            remote: parse_endpoint(r)?,
        })
    });
    Some(parsed)
}

fn protocol_token(t: &str) -> Option<(Protocol, Family)> {
    Some(match t {
        "tcp4" => (Protocol::Tcp, Family::V4),
        "tcp6" | "tcp46" => (Protocol::Tcp, Family::V6),
        "udp4" => (Protocol::Udp, Family::V4),
        "udp6" | "udp46" => (Protocol::Udp, Family::V6),
        _ => return None,
    })
}

/// `name.pid`: the pid is after the last dot; the name is trimmed (nettop
/// pads a name it cut short: `Microsoft Edge .772`).
fn process_name(field: &str) -> Option<RowName> {
    let (name, pid) = field.rsplit_once('.')?;
    if !is_integer(pid) {
        return None;
    }
    Some(RowName::Process {
        name: name.trim().to_string(),
        pid: pid.parse().ok()?,
    })
}

/// An absent or empty counter is 0; anything but digits is unreadable.
fn parse_count(field: Option<&str>) -> Option<u64> {
    match field {
        None => Some(0),
        Some(f) if is_integer(f) => f.parse().ok(),
        Some(_) => None,
    }
}

/// `1.23 ms` → 1230 µs. `None` for an empty, zero or unreadable value:
/// nettop prints `0.00 ms` and nothing alike for "no sample".
fn parse_rtt_us(field: &str) -> Option<f64> {
    let mut parts = field.split_whitespace();
    let value = parts.next()?;
    let unit_exp = rtt_unit(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    let us = decimal_times_pow10(value, unit_exp)?;
    (us.is_finite() && us > 0.0).then_some(us)
}

/// Decimal exponent of one unit in microseconds.
fn rtt_unit(unit: &str) -> Option<i32> {
    match unit {
        "ms" => Some(3),
        "us" | "µs" | "μs" => Some(0),
        "s" => Some(6),
        _ => None,
    }
}

/// `digits[.digits]` × 10^`exp`, shifting the decimal point rather than
/// multiplying floats, so `23.45` ms is exactly 23450 µs.
fn decimal_times_pow10(value: &str, exp: i32) -> Option<f64> {
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    if int.is_empty() || !is_integer(int) || !(frac.is_empty() || is_integer(frac)) {
        return None;
    }
    let digits: u64 = format!("{int}{frac}").parse().ok()?;
    let shift = exp - i32::try_from(frac.len()).ok()?;
    let scale = 10f64.powi(shift.abs());
    Some(if shift >= 0 {
        digits as f64 * scale
    } else {
        digits as f64 / scale
    })
}

fn is_integer(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `10:15:42.512001`.
fn looks_like_time(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_digit())
        && s.contains(':')
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b == b':' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{sa, NETTOP_1, NETTOP_COLUMNS};
    use super::*;

    /// (pid, name, protocol, local, remote, interface, state, rx, tx, rtt_us)
    type Row<'a> = (
        u32,
        &'a str,
        Protocol,
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        &'a str,
        u64,
        u64,
        Option<f64>,
    );

    fn flow(r: Row<'_>) -> NettopFlow {
        NettopFlow {
            pid: r.0,
            process_name: r.1.to_string(),
            protocol: r.2,
            local: sa(r.3),
            remote: r.4.map(sa),
            interface: r.5.map(str::to_string),
            state: r.6.to_string(),
            rx_bytes: r.7,
            tx_bytes: r.8,
            rtt_us: r.9,
        }
    }

    fn expected_flows() -> Vec<NettopFlow> {
        use Protocol::{Tcp, Udp};
        let srv = "My Server (dev) 2.0";
        let chrome = "Google Chrome He";
        let en0 = Some("en0");
        let lo0 = Some("lo0");
        let rows: Vec<Row<'_>> = vec![
            (
                1,
                "launchd",
                Tcp,
                "0.0.0.0:22",
                None,
                None,
                "LISTEN",
                0,
                0,
                None,
            ),
            (
                1, "launchd", Tcp, "[::]:22", None, None, "LISTEN", 0, 0, None,
            ),
            (
                272,
                "mDNSResponder",
                Udp,
                "0.0.0.0:5353",
                None,
                en0,
                "UNCONN",
                700000,
                100000,
                None,
            ),
            (
                272,
                "mDNSResponder",
                Udp,
                "[::]:5353",
                None,
                en0,
                "UNCONN",
                280000,
                20000,
                None,
            ),
            (
                272,
                "mDNSResponder",
                Udp,
                "192.168.1.23:60123",
                Some("192.168.1.1:53"),
                en0,
                "ESTABLISHED",
                7654,
                3456,
                None,
            ),
            (
                600,
                "sharingd",
                Tcp,
                "192.168.1.23:52500",
                Some("17.248.128.5:443"),
                en0,
                "SYN_SENT",
                0,
                0,
                None,
            ),
            (
                4242,
                srv,
                Tcp,
                "127.0.0.1:5000",
                None,
                None,
                "LISTEN",
                0,
                0,
                None,
            ),
            (
                4242,
                srv,
                Tcp,
                "127.0.0.1:5000",
                Some("127.0.0.1:6000"),
                lo0,
                "ESTABLISHED",
                6000,
                1500000,
                Some(60.0),
            ),
            (
                4242,
                srv,
                Tcp,
                "[::1]:5000",
                Some("[::1]:6000"),
                lo0,
                "ESTABLISHED",
                2048,
                4194304,
                Some(80.0),
            ),
            (
                4242,
                srv,
                Tcp,
                "[::1]:5000",
                None,
                None,
                "LISTEN",
                0,
                0,
                None,
            ),
            (
                4300,
                "curl",
                Tcp,
                "127.0.0.1:6000",
                Some("127.0.0.1:5000"),
                lo0,
                "ESTABLISHED",
                1500000,
                6000,
                Some(50.0),
            ),
            (
                5555,
                "com.example.very-long-background",
                Tcp,
                "[fe80::1c2b:3c4d:5e6f:7a8b]:49152",
                Some("[fe80::aede:48ff:fe00:1122]:49153"),
                en0,
                "ESTABLISHED",
                123456,
                654321,
                Some(1500.0),
            ),
            (
                7011,
                "sshd-session",
                Tcp,
                "[2001:db8:1c2b::23]:22",
                Some("[2001:db8:ffff::99]:61234"),
                en0,
                "ESTABLISHED",
                34567,
                456789,
                Some(41870.0),
            ),
            (
                8123,
                chrome,
                Tcp,
                "192.168.1.23:52344",
                Some("142.250.72.14:443"),
                en0,
                "ESTABLISHED",
                5242880,
                102400,
                Some(23450.0),
            ),
            (
                8123,
                chrome,
                Tcp,
                "[2001:db8:1c2b::23]:52345",
                Some("[2607:f8b0:4005:80e::200e]:443"),
                en0,
                "ESTABLISHED",
                1048576,
                65536,
                Some(18020.0),
            ),
            (
                8123,
                chrome,
                Udp,
                "192.168.1.23:61000",
                Some("142.250.72.14:443"),
                en0,
                "ESTABLISHED",
                3145728,
                262144,
                None,
            ),
            (
                8123,
                chrome,
                Tcp,
                "192.168.1.23:52350",
                Some("142.250.72.14:443"),
                en0,
                "CLOSE_WAIT",
                4096,
                1024,
                Some(25100.0),
            ),
            (
                9001,
                "哔哩哔哩",
                Tcp,
                "192.168.1.23:52400",
                Some("203.0.113.80:443"),
                en0,
                "ESTABLISHED",
                9876543,
                54321,
                Some(120330.0),
            ),
            (
                9002,
                "Café Sync",
                Tcp,
                "[::1]:6000",
                Some("[::1]:5000"),
                lo0,
                "ESTABLISHED",
                4194304,
                2048,
                Some(70.0),
            ),
            (
                412,
                "nsurlsessiond",
                Tcp,
                "192.168.1.23:52600",
                Some("17.253.144.10:80"),
                en0,
                "ESTABLISHED",
                65536,
                1200,
                Some(30000.0),
            ),
        ];
        rows.into_iter().map(flow).collect()
    }

    fn expected_processes() -> Vec<NettopProcess> {
        [
            (1, "launchd", 0, 0),
            (0, "kernel_task", 0, 0),
            (272, "mDNSResponder", 987654, 123456),
            (600, "sharingd", 0, 0),
            (4242, "My Server (dev) 2.0", 8200, 5700000),
            (4300, "curl", 1500000, 6000),
            (5555, "com.example.very-long-background", 123456, 654321),
            (7011, "sshd-session", 34567, 456789),
            (8123, "Google Chrome He", 12000000, 500000),
            (9001, "哔哩哔哩", 9876543, 54321),
            (9002, "Café Sync", 4194304, 2048),
            (412, "nsurlsessiond", 65536, 1200),
        ]
        .into_iter()
        .map(|(pid, name, rx_bytes, tx_bytes)| NettopProcess {
            pid,
            name: name.to_string(),
            rx_bytes,
            tx_bytes,
        })
        .collect()
    }

    #[test]
    fn csv_fixture_parses_every_field_exactly() {
        let out = parse_nettop(NETTOP_1);
        let expected = expected_flows();
        assert_eq!(out.flows.len(), expected.len());
        for (got, want) in out.flows.iter().zip(&expected) {
            assert_eq!(got, want);
        }
        assert_eq!(out.processes, expected_processes());
        let total = NETTOP_1.lines().count();
        assert_eq!(
            out.lines,
            LineCounts {
                total,
                used: total - 1,
                header: 1,
                ..LineCounts::default()
            }
        );
    }

    #[test]
    fn aligned_columns_fixture_reads_the_same_as_csv() {
        let out = parse_nettop(NETTOP_COLUMNS);
        let csv = parse_nettop(NETTOP_1);
        assert_eq!(out.flows.len(), csv.flows.len());
        for (got, want) in out.flows.iter().zip(&csv.flows) {
            assert_eq!(got, want);
        }
        assert_eq!(out.processes, csv.processes);
        assert_eq!(out.lines, csv.lines);
    }

    #[test]
    fn names_with_dots_spaces_and_commas_keep_the_pid_after_the_last_dot() {
        let text = "time,,interface,state,bytes_in,bytes_out,\n\
                    1:00:00.1,Acme, Inc. Agent 1.2.77,,,5,6,\n\
                    1:00:00.2,tcp4 10.0.0.1:1<->10.0.0.2:2,en0,Established,7,8,\n\
                    1:00:00.3,Microsoft Edge .772,,,1,2,\n";
        let out = parse_nettop(text);
        assert_eq!(out.processes[0].name, "Acme, Inc. Agent 1.2");
        assert_eq!(out.processes[0].pid, 77);
        assert_eq!(
            (out.processes[0].rx_bytes, out.processes[0].tx_bytes),
            (5, 6)
        );
        assert_eq!(out.flows[0].pid, 77);
        assert_eq!(out.flows[0].process_name, "Acme, Inc. Agent 1.2");
        assert_eq!((out.flows[0].rx_bytes, out.flows[0].tx_bytes), (7, 8));
        assert_eq!(out.processes[1].name, "Microsoft Edge");
        assert_eq!(out.processes[1].pid, 772);
    }

    #[test]
    fn rows_without_the_time_column_and_without_a_header() {
        let out = parse_nettop(
            "curl.4300,,,10,20,0,0,0,,,,,,,,,,,,\n\
             tcp4 127.0.0.1:6000<->127.0.0.1:5000,lo0,Established,10,20,0,0,0,1.5 ms,,,,,,,,,,\n",
        );
        assert_eq!(out.lines.used, 2, "{:?}", out.lines);
        assert_eq!(out.flows[0].pid, 4300);
        assert_eq!((out.flows[0].rx_bytes, out.flows[0].tx_bytes), (10, 20));
        assert_eq!(out.flows[0].rtt_us, Some(1500.0));
    }

    #[test]
    fn unreadable_rows_are_counted_and_never_misattributed() {
        let text = "time,,interface,state,bytes_in,bytes_out,rtt_avg\n\
                    1:00:00,a.1,,,1,1,\n\
                    1:00:00,tcp4 10.0.0.1:1<->10.0.0.2:2,en0,Established,1.2 MiB,8,\n\
                    1:00:00,no pid here,,,1,1,\n\
                    1:00:00,tcp4 10.0.0.1:3<->10.0.0.2:4,en0,Established,1,1,\n\
                    1:00:00,tcp4 not-an-address<->10.0.0.2:4,en0,Established,1,1,\n\
                    no commas at all\n\
                    1:00:00,b.2,,,1,1,\n\
                    1:00:00,udp4 10.0.0.1:5<->*:*,en0,,3,4,0.00 ms\n";
        let out = parse_nettop(text);
        // The flow under the unreadable process line is not given to `a`.
        assert_eq!(out.flows.len(), 1);
        assert_eq!(out.flows[0].pid, 2);
        assert_eq!(out.flows[0].state, "UNCONN");
        assert_eq!(out.flows[0].rtt_us, None);
        let l = out.lines;
        assert!(l.is_consistent());
        assert_eq!((l.total, l.used, l.header, l.malformed), (9, 3, 1, 5));
    }

    #[test]
    fn rtt_spellings() {
        assert_eq!(parse_rtt_us("1.23 ms"), Some(1230.0));
        assert_eq!(parse_rtt_us("23.45 ms"), Some(23450.0));
        assert_eq!(parse_rtt_us("120.33 ms"), Some(120330.0));
        assert_eq!(parse_rtt_us("0.0625 ms"), Some(62.5));
        assert_eq!(parse_rtt_us("850 us"), Some(850.0));
        assert_eq!(parse_rtt_us("2 s"), Some(2_000_000.0));
        for bad in [
            "", "0.00 ms", "1.2", "ms", "1.2 ms x", "-1 ms", "1e3 ms", ".5 ms", "nan ms",
        ] {
            assert_eq!(parse_rtt_us(bad), None, "{bad:?}");
        }
    }
}
