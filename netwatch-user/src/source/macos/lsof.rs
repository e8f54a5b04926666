//! Parser for `lsof -i -n -P -F pcPtTn` field output: which process holds
//! which internet socket, in which state. Pure: it parses text handed to it
//! and never runs lsof. It reports what lsof printed; merging duplicate
//! descriptors and joining byte counts is the correlator's job.
//!
//! Field output is one field per line, tagged by its first character. lsof
//! prints the fields in its own fixed order whatever `-F` asked for: a
//! process set (`p` pid, `c` command) and then one file set per descriptor
//! (`f` fd — always printed —, `t` type, `P` protocol, `n` name, and `T`
//! TCP/TPI info lines such as `TST=ESTABLISHED`, `TQR=0`, `TQS=0`, which come
//! *after* `n`). A file set ends at the next `f` or `p`, or at the end.

use std::net::SocketAddr;

use super::addr::{self, normalize_tcp_state, parse_endpoint, Endpoint, Family};
use super::lines::{Line, LineCounts};
use crate::source::Protocol;

/// One internet socket as lsof listed it under one process and descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct LsofSocket {
    pub pid: u32,
    /// The `c` field, with lsof's `\xNN` escapes of non-ASCII bytes decoded
    /// back to UTF-8 when they form valid UTF-8.
    pub command: String,
    /// The descriptor number; `None` when lsof printed something else.
    pub fd: Option<u32>,
    pub protocol: Protocol,
    pub local: SocketAddr,
    /// `None` for listening and unconnected sockets.
    pub remote: Option<SocketAddr>,
    /// Normalized TCP state (`UNKNOWN` when lsof printed none); for UDP
    /// `ESTABLISHED` when connected, else `UNCONN`.
    pub state: String,
    /// `TQR=`: bytes waiting in the receive queue.
    pub recv_queue_bytes: Option<u64>,
    /// `TQS=`: bytes waiting in the send queue.
    pub send_queue_bytes: Option<u64>,
}

/// Everything one lsof run said.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LsofOutput {
    pub sockets: Vec<LsofSocket>,
    pub lines: LineCounts,
    /// File sets that could not become a socket: no valid pid above them, or
    /// no parseable `n` name.
    pub incomplete_records: usize,
    /// File sets of a protocol other than TCP and UDP (lsof `-i` can list
    /// raw and ICMP sockets); well-formed, just not counted.
    pub other_protocol_records: usize,
}

/// The descriptor being read.
#[derive(Debug, Default)]
struct FileSet {
    fd: Option<u32>,
    family: Option<Family>,
    protocol: Option<Result<Protocol, ()>>,
    name: Option<(Endpoint, Option<Endpoint>)>,
    state: Option<&'static str>,
    recv_queue: Option<u64>,
    send_queue: Option<u64>,
}

/// Parse `lsof -i -n -P -F pcPtTn` output. Never panics; every line is counted.
///
/// Takes bytes, not text: lsof prints a command name's bytes raw or as `\xNN`
/// escapes depending on the locale (a UTF-8 locale can give a mix of both
/// within one name), and only the raw bytes can be put back together.
pub fn parse_lsof(output: &[u8]) -> LsofOutput {
    let mut out = LsofOutput::default();
    let mut pid: Option<u32> = None;
    let mut command = String::new();
    let mut file: Option<FileSet> = None;

    for raw in byte_lines(output) {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Some((&tag, value)) = line.split_first() else {
            out.lines.count(Line::Blank);
            continue;
        };
        let kind = match (tag, std::str::from_utf8(value)) {
            (b'c', _) => {
                command = decode_command(value);
                Line::Used
            }
            // `p` and `f` start a new set even when their value is garbage,
            // so the fields after them never land in the previous set.
            (b'p', value) => {
                finish(&mut out, file.take(), pid, &command);
                command.clear();
                pid = value.ok().and_then(parse_u32);
                if pid.is_some() {
                    Line::Used
                } else {
                    Line::Malformed
                }
            }
            (b'f', value) => {
                finish(&mut out, file.take(), pid, &command);
                file = Some(FileSet {
                    fd: value.ok().and_then(parse_u32),
                    ..FileSet::default()
                });
                Line::Used
            }
            (b't' | b'P' | b'n' | b'T', Ok(value)) => match file.as_mut() {
                // A file field with no `f` above it belongs to nothing.
                None => Line::Malformed,
                Some(f) => file_field(f, tag, value),
            },
            _ if line.iter().all(u8::is_ascii_whitespace) => Line::Blank,
            // A field lsof prints that we did not ask for (`g`, `R`, `u`, `L`,
            // `a`, `l`, `d`, `o`, …).
            (t, Ok(_)) if t.is_ascii_alphabetic() && !b"pftPnT".contains(&t) => Line::Ignored,
            _ => Line::Malformed,
        };
        out.lines.count(kind);
    }
    finish(&mut out, file.take(), pid, &command);
    out
}

/// Split like `str::lines` does: on `\n`, with no empty line after a final `\n`.
fn byte_lines(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = b.strip_suffix(b"\n").unwrap_or(b);
    body.split(|&c| c == b'\n')
        .take(if b.is_empty() { 0 } else { usize::MAX })
}

/// Read one field of the current file set.
fn file_field(f: &mut FileSet, tag: u8, value: &str) -> Line {
    match tag {
        b't' => {
            f.family = match value {
                "IPv4" => Some(Family::V4),
                "IPv6" => Some(Family::V6),
                _ => None,
            };
            Line::Used
        }
        b'P' => {
            f.protocol = Some(match value {
                "TCP" => Ok(Protocol::Tcp),
                "UDP" => Ok(Protocol::Udp),
                _ => Err(()),
            });
            Line::Used
        }
        b'n' => match parse_name(value) {
            Some(name) => {
                f.name = Some(name);
                Line::Used
            }
            None => Line::Malformed,
        },
        _ => tcp_info(f, value),
    }
}

/// A `T` line: `ST=<state>`, `QR=<n>`, `QS=<n>`; other keys are ignored.
fn tcp_info(f: &mut FileSet, value: &str) -> Line {
    let Some((key, val)) = value.split_once('=') else {
        return Line::Malformed;
    };
    match key {
        "ST" => match normalize_tcp_state(val) {
            Some(st) => {
                f.state = Some(st);
                Line::Used
            }
            None => Line::Malformed,
        },
        "QR" | "QS" => match val.parse::<u64>() {
            Ok(n) => {
                if key == "QR" {
                    f.recv_queue = Some(n);
                } else {
                    f.send_queue = Some(n);
                }
                Line::Used
            }
            Err(_) => Line::Malformed,
        },
        _ => Line::Ignored,
    }
}

/// `local` or `local->remote`.
fn parse_name(value: &str) -> Option<(Endpoint, Option<Endpoint>)> {
    match value.split_once("->") {
        Some((local, remote)) => {
            let remote = parse_endpoint(remote)?;
            Some((
                parse_endpoint(local)?,
                (!remote.is_wildcard()).then_some(remote),
            ))
        }
        None => Some((parse_endpoint(value)?, None)),
    }
}

/// Turn a finished file set into a socket, or count why it is not one.
fn finish(out: &mut LsofOutput, file: Option<FileSet>, pid: Option<u32>, command: &str) {
    let Some(f) = file else { return };
    let protocol = match f.protocol {
        Some(Ok(p)) => p,
        Some(Err(())) => {
            out.other_protocol_records += 1;
            return;
        }
        None => {
            out.incomplete_records += 1;
            return;
        }
    };
    let (Some(pid), Some((local, remote))) = (pid, f.name) else {
        out.incomplete_records += 1;
        return;
    };
    // `*` means the unspecified address of the socket's family: from `t`, or
    // failing that from whichever endpoint has a literal address.
    let family = f
        .family
        .or_else(|| local.family())
        .or_else(|| remote.and_then(Endpoint::family))
        .unwrap_or(Family::V4);
    let remote = remote.map(|r| r.resolve(family));
    let state = match protocol {
        Protocol::Tcp => f.state.unwrap_or(addr::UNKNOWN_STATE),
        Protocol::Udp => addr::udp_state(remote.is_some()),
    };
    out.sockets.push(LsofSocket {
        pid,
        command: command.to_string(),
        fd: f.fd,
        protocol,
        local: local.resolve(family),
        remote,
        state: state.to_string(),
        recv_queue_bytes: f.recv_queue,
        send_queue_bytes: f.send_queue,
    });
}

fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Undo lsof's `\xNN` escaping of bytes it deems unprintable (every byte
/// of a non-ASCII name in the C locale, some of them in a UTF-8 locale).
/// lsof may cut a name inside a character; the cut character is dropped. A
/// name whose bytes are not UTF-8 even then is kept as lsof printed it
/// (escapes and all, any raw non-UTF-8 byte as U+FFFD).
pub fn decode_command(raw: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && raw.get(i + 1) == Some(&b'x') {
            let hex = raw
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                bytes.push(b);
                i += 4;
                continue;
            }
        }
        bytes.push(raw[i]);
        i += 1;
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let utf8 = e.utf8_error();
            match (utf8.error_len(), e.as_bytes().get(..utf8.valid_up_to())) {
                // Only the last character is incomplete: lsof truncated it.
                (None, Some(valid)) => String::from_utf8_lossy(valid).into_owned(),
                _ => String::from_utf8_lossy(raw).into_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{sa, LSOF_1};
    use super::*;

    /// (pid, command, fd, protocol, local, remote, state, TQR, TQS)
    type Row<'a> = (
        u32,
        &'a str,
        Option<u32>,
        Protocol,
        &'a str,
        Option<&'a str>,
        &'a str,
        Option<u64>,
        Option<u64>,
    );

    fn socket(r: Row<'_>) -> LsofSocket {
        LsofSocket {
            pid: r.0,
            command: r.1.to_string(),
            fd: r.2,
            protocol: r.3,
            local: sa(r.4),
            remote: r.5.map(sa),
            state: r.6.to_string(),
            recv_queue_bytes: r.7,
            send_queue_bytes: r.8,
        }
    }

    #[test]
    fn fixture_parses_every_field_exactly() {
        use Protocol::{Tcp, Udp};
        let long = "com.example.very-long-background-synchronisation-agent-process-name-x1";
        let z = Some(0);
        let expected: Vec<LsofSocket> = [
            (1, "launchd", Some(11), Tcp, "[::]:22", None, "LISTEN", z, z),
            (
                1,
                "launchd",
                Some(12),
                Tcp,
                "0.0.0.0:22",
                None,
                "LISTEN",
                z,
                z,
            ),
            (
                272,
                "mDNSResponder",
                Some(5),
                Udp,
                "0.0.0.0:5353",
                None,
                "UNCONN",
                None,
                None,
            ),
            (
                272,
                "mDNSResponder",
                Some(6),
                Udp,
                "[::]:5353",
                None,
                "UNCONN",
                None,
                None,
            ),
            (
                272,
                "mDNSResponder",
                Some(8),
                Udp,
                "192.168.1.23:60123",
                Some("192.168.1.1:53"),
                "ESTABLISHED",
                None,
                None,
            ),
            (
                600,
                "sharingd",
                Some(10),
                Tcp,
                "192.168.1.23:52500",
                Some("17.248.128.5:443"),
                "SYN_SENT",
                z,
                Some(517),
            ),
            (
                4242,
                "My Server (dev) 2.0",
                Some(3),
                Tcp,
                "127.0.0.1:5000",
                None,
                "LISTEN",
                z,
                z,
            ),
            (
                4242,
                "My Server (dev) 2.0",
                Some(4),
                Tcp,
                "127.0.0.1:5000",
                Some("127.0.0.1:6000"),
                "ESTABLISHED",
                z,
                z,
            ),
            (
                4242,
                "My Server (dev) 2.0",
                Some(5),
                Tcp,
                "[::1]:5000",
                Some("[::1]:6000"),
                "ESTABLISHED",
                z,
                Some(8192),
            ),
            (
                4242,
                "My Server (dev) 2.0",
                Some(6),
                Tcp,
                "[::1]:5000",
                None,
                "LISTEN",
                z,
                z,
            ),
            (
                4242,
                "My Server (dev) 2.0",
                Some(7),
                Tcp,
                "127.0.0.1:5000",
                Some("127.0.0.1:6000"),
                "ESTABLISHED",
                z,
                z,
            ),
            (
                4300,
                "curl",
                Some(5),
                Tcp,
                "127.0.0.1:6000",
                Some("127.0.0.1:5000"),
                "ESTABLISHED",
                Some(1024),
                z,
            ),
            (
                5555,
                long,
                Some(20),
                Tcp,
                "[fe80::1c2b:3c4d:5e6f:7a8b]:49152",
                Some("[fe80::aede:48ff:fe00:1122]:49153"),
                "ESTABLISHED",
                z,
                z,
            ),
            (
                7010,
                "sshd-session",
                Some(4),
                Tcp,
                "[2001:db8:1c2b::23]:22",
                Some("[2001:db8:ffff::99]:61234"),
                "ESTABLISHED",
                z,
                z,
            ),
            (
                7011,
                "sshd-session",
                Some(4),
                Tcp,
                "[2001:db8:1c2b::23]:22",
                Some("[2001:db8:ffff::99]:61234"),
                "ESTABLISHED",
                z,
                z,
            ),
            (
                8123,
                "Google Chrome Helper",
                Some(24),
                Tcp,
                "192.168.1.23:52344",
                Some("142.250.72.14:443"),
                "ESTABLISHED",
                z,
                z,
            ),
            (
                8123,
                "Google Chrome Helper",
                Some(25),
                Tcp,
                "[2001:db8:1c2b::23]:52345",
                Some("[2607:f8b0:4005:80e::200e]:443"),
                "ESTABLISHED",
                z,
                Some(31),
            ),
            (
                8123,
                "Google Chrome Helper",
                Some(27),
                Udp,
                "192.168.1.23:61000",
                Some("142.250.72.14:443"),
                "ESTABLISHED",
                None,
                None,
            ),
            (
                8123,
                "Google Chrome Helper",
                Some(28),
                Tcp,
                "192.168.1.23:52350",
                Some("142.250.72.14:443"),
                "CLOSE_WAIT",
                Some(1),
                z,
            ),
            (
                9001,
                "哔哩哔哩",
                Some(31),
                Tcp,
                "192.168.1.23:52400",
                Some("203.0.113.80:443"),
                "ESTABLISHED",
                z,
                z,
            ),
            (
                9002,
                "Café Sync",
                Some(9),
                Tcp,
                "[::1]:6000",
                Some("[::1]:5000"),
                "ESTABLISHED",
                z,
                z,
            ),
        ]
        .into_iter()
        .map(socket)
        .collect();

        let out = parse_lsof(LSOF_1.as_bytes());
        assert_eq!(out.sockets.len(), expected.len());
        for (got, want) in out.sockets.iter().zip(&expected) {
            assert_eq!(got, want);
        }
        assert_eq!(out.incomplete_records, 0);
        assert_eq!(out.other_protocol_records, 0);
        let total = LSOF_1.lines().count();
        assert_eq!(
            out.lines,
            LineCounts {
                total,
                used: total,
                ..LineCounts::default()
            }
        );
    }

    #[test]
    fn unasked_fields_blank_and_garbage_lines_are_counted_not_fatal() {
        let text = "p100\ng100\nR1\nccurl\nu501\nLalice\n\nf3\nau\ntIPv4\nG0x10007;0x0\n\
                    d0xcdf758597a6d43c3\nPTCP\nn10.0.0.1:1->10.0.0.2:2\nTST=ESTABLISHED\n\
                    TSO=65536\n#junk\n\u{e9}t\u{e9}\nTnoequals\nTST=BOGUS\n";
        let out = parse_lsof(text.as_bytes());
        assert_eq!(out.sockets.len(), 1);
        assert_eq!(out.sockets[0].command, "curl");
        assert_eq!(out.sockets[0].state, "ESTABLISHED");
        assert_eq!(out.sockets[0].local, sa("10.0.0.1:1"));
        let l = out.lines;
        assert!(l.is_consistent());
        assert_eq!((l.total, l.used, l.blank, l.header), (20, 7, 1, 0));
        // g R u L a G d TSO are fields we did not ask for.
        assert_eq!(l.ignored, 8);
        // `#junk`, `été`, `Tnoequals`, `TST=BOGUS`.
        assert_eq!(l.malformed, 4);
    }

    #[test]
    fn records_without_pid_name_or_known_protocol_are_counted() {
        let text = "pnotanumber\ncx\nf1\ntIPv4\nPTCP\nn1.2.3.4:5\n\
                    p7\ncy\nf2\ntIPv4\nPTCP\nTST=CLOSED\n\
                    f3\ntIPv4\nPICMP\nn*:*\n\
                    f4\ntIPv6\nPUDP\nnnot-an-address\n\
                    f5\nPTCP\nn*:80\nTST=LISTEN\n";
        let out = parse_lsof(text.as_bytes());
        assert_eq!(out.incomplete_records, 3);
        assert_eq!(out.other_protocol_records, 1);
        // No `t` and only `*`: taken as IPv4.
        assert_eq!(out.sockets.len(), 1);
        assert_eq!(out.sockets[0].local, sa("0.0.0.0:80"));
        assert_eq!(out.sockets[0].command, "y");
        assert_eq!(out.lines.malformed, 2);
        assert!(out.lines.is_consistent());
    }

    #[test]
    fn file_fields_before_any_f_line_are_malformed() {
        let out = parse_lsof("p1\ncx\nPTCP\nn1.2.3.4:5\n".as_bytes());
        assert!(out.sockets.is_empty());
        assert_eq!(out.lines.malformed, 2);
    }

    #[test]
    fn crlf_line_endings_are_tolerated() {
        let out = parse_lsof("p9\r\ncx y\r\nf1\r\ntIPv4\r\nPUDP\r\nn*:53\r\n".as_bytes());
        assert_eq!(out.sockets.len(), 1);
        assert_eq!(out.sockets[0].command, "x y");
        assert_eq!(out.sockets[0].local, sa("0.0.0.0:53"));
    }

    #[test]
    fn command_escapes_decode_to_utf8() {
        let d = |s: &[u8]| decode_command(s);
        assert_eq!(d(b"curl"), "curl");
        assert_eq!(d(br"\xe5\x93\x94"), "哔");
        assert_eq!(d(br"Caf\xc3\xa9 Sync"), "Café Sync");
        // A UTF-8 locale: lsof printed the bytes it took for Latin-1
        // letters raw and escaped the C1 ones.
        assert_eq!(d(b"\xe5\\x93\\x94!"), "哔!");
        // lsof cut the name inside a character: the partial character goes.
        assert_eq!(d(br"\xe5\x93\x94\xe5\x93"), "哔");
        // Not UTF-8 at all: kept as printed.
        assert_eq!(d(br"a\xffb"), r"a\xffb");
        assert_eq!(d(b"a\xffb"), "a\u{fffd}b");
        // Not an escape.
        assert_eq!(d(br"a\xZZ\x"), r"a\xZZ\x");
        assert_eq!(d(br"\x4"), r"\x4");
    }
}
