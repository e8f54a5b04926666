//! Parsers for two netstat reports on macOS: `netstat -ibn` (cumulative
//! interface counters) and `netstat -an -p tcp` (TCP sockets by state).
//! Pure: they parse text handed to them and never run netstat.
//!
//! `netstat -ibn` prints each interface once per address: the `<Link#N>`
//! row, whose error columns are numbers, and one row per IPv4/IPv6 address
//! with the same packet and byte counters and `-` for errors. Only the link
//! row is read, so each interface is counted once. A `*` after the name
//! means the interface is down. The address column is empty on interfaces
//! without a link-layer address (`lo0`, `utun0`), so the counters are taken
//! from the end of the row.

use super::addr::normalize_tcp_state;
use crate::net::InterfaceCounters;
use super::lines::{Line, LineCounts};

/// `netstat -ibn`, read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetstatInterfaces {
    /// One per interface, in netstat's order, from its `<Link#N>` row.
    /// netstat `-ibn` has no input-drop column (`rx_drops` is 0);
    /// `tx_drops` is the `Drop` column when present (`-d`), else 0.
    pub interfaces: Vec<InterfaceCounters>,
    /// How each line was read.
    pub lines: LineCounts,
}


/// The counter columns in the order the header gives them.
const DEFAULT_COUNTERS: [&str; 7] = [
    "Ipkts", "Ierrs", "Ibytes", "Opkts", "Oerrs", "Obytes", "Coll",
];

/// Parse `netstat -ibn`. Never panics; every line is counted.
pub fn parse_netstat_interfaces(text: &str) -> NetstatInterfaces {
    let mut out = NetstatInterfaces::default();
    let mut counters: Vec<String> = DEFAULT_COUNTERS.iter().map(|s| s.to_string()).collect();
    for line in text.lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let kind = match toks.first() {
            None => Line::Blank,
            Some(&"Name") if toks.contains(&"Ibytes") => {
                // The counters are the columns after `Address`.
                if let Some(at) = toks.iter().position(|t| *t == "Address") {
                    counters = toks[at + 1..].iter().map(|s| s.to_string()).collect();
                }
                Line::Header
            }
            Some(_) => interface_row(&toks, &counters, &mut out.interfaces),
        };
        out.lines.count(kind);
    }
    out
}

fn interface_row(toks: &[&str], counters: &[String], out: &mut Vec<InterfaceCounters>) -> Line {
    // Name, Mtu, Network, [Address], counters…
    if toks.len() < 3 + counters.len() || toks.len() > 4 + counters.len() {
        return Line::Malformed;
    }
    let is_link = toks.get(2).is_some_and(|n| n.starts_with("<Link#"));
    if !is_link {
        // An address row: the same counters again, errors as `-`.
        return Line::Ignored;
    }
    let values = &toks[toks.len() - counters.len()..];
    let get = |name: &str| -> Result<u64, ()> {
        match counters.iter().position(|c| c == name) {
            None => Ok(0),
            Some(i) => values.get(i).and_then(|v| v.parse().ok()).ok_or(()),
        }
    };
    let read = (|| {
        Ok::<_, ()>((
            get("Ipkts")?,
            get("Ierrs")?,
            get("Ibytes")?,
            get("Opkts")?,
            get("Oerrs")?,
            get("Obytes")?,
            get("Drop")?,
        ))
    })();
    let Ok((rx_packets, rx_errors, rx_bytes, tx_packets, tx_errors, tx_bytes, tx_drops)) = read
    else {
        return Line::Malformed;
    };
    let (name, is_up) = match toks[0].strip_suffix('*') {
        Some(name) => (name, false),
        None => (toks[0], true),
    };
    if name.is_empty() || out.iter().any(|i| i.name == name) {
        // A second link row for one interface: keep the first.
        return Line::Ignored;
    }
    out.push(InterfaceCounters {
        name: name.to_string(),
        is_up,
        rx_bytes,
        tx_bytes,
        rx_packets,
        tx_packets,
        rx_errors,
        tx_errors,
        rx_drops: 0,
        tx_drops,
    });
    Line::Used
}

/// `netstat -an -p tcp`, counted by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStateCounts {
    pub established: u32,
    pub time_wait: u32,
    pub close_wait: u32,
    pub listen: u32,
    /// Every other state (`SYN_SENT`, `FIN_WAIT_2`, `LAST_ACK`, …).
    pub other: u32,
    pub lines: LineCounts,
}

impl TcpStateCounts {
    /// Every TCP socket counted.
    pub fn total(&self) -> u32 {
        self.established + self.time_wait + self.close_wait + self.listen + self.other
    }
}

/// Parse `netstat -an -p tcp`. Never panics; every line is counted.
pub fn parse_netstat_tcp(text: &str) -> TcpStateCounts {
    let mut out = TcpStateCounts::default();
    for line in text.lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let kind = match toks.first() {
            None => Line::Blank,
            Some(&"Active") | Some(&"Proto") => Line::Header,
            Some(p) if p.starts_with("tcp") => tcp_row(&toks, &mut out),
            // Another protocol's section (without `-p tcp`).
            Some(p) if p.starts_with("udp") || p.starts_with("icm") => Line::Ignored,
            Some(_) => Line::Malformed,
        };
        out.lines.count(kind);
    }
    out
}

fn tcp_row(toks: &[&str], out: &mut TcpStateCounts) -> Line {
    // Proto Recv-Q Send-Q Local Foreign (state)
    let queues_ok = toks
        .get(1..3)
        .is_some_and(|q| q.iter().all(|n| n.parse::<u64>().is_ok()));
    let state = toks.get(5).and_then(|s| normalize_tcp_state(s));
    let (true, Some(state)) = (queues_ok, state) else {
        return Line::Malformed;
    };
    let slot = match state {
        "ESTABLISHED" => &mut out.established,
        "TIME_WAIT" => &mut out.time_wait,
        "CLOSE_WAIT" => &mut out.close_wait,
        "LISTEN" => &mut out.listen,
        _ => &mut out.other,
    };
    *slot = slot.saturating_add(1);
    Line::Used
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{AN_TCP, IBN};
    use super::*;

    /// (name, up, rx_bytes, tx_bytes, rx_packets, tx_packets, rx_errors, tx_errors)
    type Row = (&'static str, bool, u64, u64, u64, u64, u64, u64);

    #[test]
    fn interfaces_fixture_takes_each_link_row_once() {
        let out = parse_netstat_interfaces(IBN);
        let expected: [Row; 11] = [
            ("lo0", true, 987264513, 987264513, 2289871, 2289871, 0, 0),
            ("gif0", false, 0, 0, 0, 0, 0, 0),
            ("stf0", false, 0, 0, 0, 0, 0, 0),
            (
                "en0",
                true,
                61234567890,
                4123456789,
                48211934,
                21876543,
                0,
                12,
            ),
            ("en1", true, 0, 0, 0, 0, 0, 0),
            ("ap1", false, 0, 0, 0, 0, 0, 0),
            ("awdl0", true, 234567, 1234567, 1234, 5678, 0, 0),
            ("llw0", true, 0, 0, 0, 0, 0, 0),
            ("utun0", true, 8720, 12480, 98, 156, 0, 0),
            ("utun1", true, 8720, 12480, 98, 157, 0, 0),
            ("bridg", false, 0, 0, 0, 0, 0, 0),
        ];
        assert_eq!(out.interfaces.len(), expected.len());
        for (got, want) in out.interfaces.iter().zip(&expected) {
            let got_row = (
                got.name.as_str(),
                got.is_up,
                got.rx_bytes,
                got.tx_bytes,
                got.rx_packets,
                got.tx_packets,
                got.rx_errors,
                got.tx_errors,
            );
            assert_eq!(got_row, *want);
            assert_eq!((got.rx_drops, got.tx_drops), (0, 0));
        }
        let l = out.lines;
        assert_eq!(
            (l.total, l.used, l.header, l.ignored, l.malformed, l.blank),
            (20, 11, 1, 8, 0, 0)
        );
    }

    #[test]
    fn interfaces_with_drop_column_and_bad_rows() {
        let text = "Name  Mtu   Network       Address            Ipkts Ierrs     Ibytes    Opkts Oerrs     Obytes  Coll Drop\n\
                    en0   1500  <Link#4>    a4:83:e7:12:34:56      10     1       1000       20     2       2000     0    7\n\
                    en0   1500  <Link#4>    a4:83:e7:12:34:56      11     1       1100       21     2       2100     0    7\n\
                    en9   1500  <Link#9>    a4:83:e7:12:34:56      x     1       1000       20     2       2000     0    7\n\
                    en8   1500  <Link#8>\n\
                    \n";
        let out = parse_netstat_interfaces(text);
        assert_eq!(out.interfaces.len(), 1);
        let en0 = &out.interfaces[0];
        assert_eq!((en0.rx_packets, en0.rx_errors, en0.rx_bytes), (10, 1, 1000));
        assert_eq!(
            (en0.tx_packets, en0.tx_errors, en0.tx_bytes, en0.tx_drops),
            (20, 2, 2000, 7)
        );
        let l = out.lines;
        assert!(l.is_consistent());
        assert_eq!(
            (l.total, l.used, l.header, l.ignored, l.malformed, l.blank),
            (6, 1, 1, 1, 2, 1)
        );
    }

    #[test]
    fn tcp_states_fixture_counts_exactly() {
        let c = parse_netstat_tcp(AN_TCP);
        assert_eq!(
            (c.established, c.time_wait, c.close_wait, c.listen, c.other),
            (10, 3, 2, 7, 3)
        );
        assert_eq!(c.total(), 25);
        let l = c.lines;
        assert_eq!(
            (l.total, l.used, l.header, l.ignored, l.malformed, l.blank),
            (27, 25, 2, 0, 0, 0)
        );
    }

    #[test]
    fn tcp_rows_without_state_or_with_bad_queues_are_malformed() {
        let text = "tcp4 0 0 1.2.3.4.5 6.7.8.9.10\n\
                    tcp4 x 0 1.2.3.4.5 6.7.8.9.10 ESTABLISHED\n\
                    tcp4 0 0 1.2.3.4.5 6.7.8.9.10 NONSENSE\n\
                    udp4 0 0 *.5353 *.*\n\
                    tcp6 0 0 ::1.5 ::1.6 ESTABLISHED\n";
        let c = parse_netstat_tcp(text);
        assert_eq!(c.established, 1);
        assert_eq!(
            (c.lines.malformed, c.lines.ignored, c.lines.used),
            (3, 1, 1)
        );
    }
}
