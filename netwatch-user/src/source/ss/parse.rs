//! Pure parser for the text `ss -tunapi` (iproute2) prints, optionally with
//! `-e`. It turns text into [`ParsedSocket`]s and counts what it cannot read;
//! it never runs `ss`, touches the system, or panics on any input.
//!
//! The format, as iproute2 6.1 writes it (one record per socket):
//! ```text
//! Netid State  Recv-Q Send-Q Local Address:Port Peer Address:Port Process
//! tcp   ESTAB  0      0      127.0.0.1:46592    127.0.0.1:51403   users:(("py fixture",pid=12157,fd=6)) ino:20656 sk:103d cgroup:/ <->
//! \t ts sack bbr wscale:10,10 rto:204 rtt:0.009/0.004 … bytes_sent:12345 bytes_acked:12346 bytes_received:678 …
//! ```
//! - The socket line has six whitespace-separated columns, then the process
//!   field `users:(("name",pid=N,fd=M),…)` (`-p`), then the `-e` details
//!   (`uid:`, `ino:`, `sk:` = the kernel socket cookie in hex, `cgroup:`,
//!   `v6only:`, a shutdown marker such as `<->`).
//! - `-i` puts the `tcp_info` on the next line, indented with a tab. TIME-WAIT
//!   sockets get a blank one, UDP sockets none.
//! - `ss` does not escape process names: they are the `comm` from
//!   `/proc/<pid>/stat`, cut at the first `)` (so they never contain one) and
//!   may hold spaces, commas, quotes, tabs, UTF-8 and even newlines. An owner
//!   entry is therefore read up to its `",pid=N,fd=M)` terminator, and a name
//!   with a newline is read across lines.
//! - Counters that are zero are omitted by `ss` (`bytes_sent` is absent on a
//!   socket that has sent nothing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::source::Protocol;
use crate::text::Visible;

/// How many skipped lines keep their reason in [`ParseOutcome::first_skips`].
pub const MAX_SKIP_REASONS: usize = 8;

/// How many following lines a process name with newlines may span.
const MAX_NAME_LINES: usize = 16;

/// A name read across lines is a `comm`: at most 15 bytes in the kernel
/// (`TASK_COMM_LEN` − 1), so at most 15 characters even after invalid UTF-8
/// is replaced. Anything longer is not a name but a broken process field
/// followed by other records, and is not joined.
const MAX_MULTILINE_NAME_CHARS: usize = 15;

/// How much of the offending text an error keeps.
const MAX_EXCERPT_CHARS: usize = 80;

/// One process that holds the socket open (one `("name",pid=N,fd=M)` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The process `comm` exactly as `ss` printed it.
    pub name: String,
    pub pid: u32,
    pub fd: u32,
}

/// One socket record of `ss -tunapi[e]` output, with nothing inferred.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSocket {
    pub protocol: Protocol,
    /// Normalized state (see [`normalize_state`]).
    pub state: String,
    /// `Recv-Q`: unread bytes (established) or the accept queue (listening).
    pub recv_q: u64,
    /// `Send-Q`: unacknowledged bytes (established) or the backlog (listening).
    pub send_q: u64,
    /// Local endpoint. `*` (IPv6 any, dual-stack) is `[::]`; a `*` port is 0.
    pub local: SocketAddr,
    /// The device the socket is bound to or scoped to (`%lo`, `%eth0`).
    pub local_interface: Option<String>,
    /// Remote endpoint; `None` when the peer port is `*` (not connected).
    pub remote: Option<SocketAddr>,
    /// Every process holding the socket, in the order `ss` printed them
    /// (its hash-chain order, which is not meaningful).
    pub owners: Vec<Owner>,
    /// `uid:` (`-e`; `ss` omits it for root).
    pub uid: Option<u32>,
    /// `ino:` socket inode (`-e`; 0 for TIME-WAIT).
    pub inode: Option<u64>,
    /// `sk:` kernel socket cookie (`-e`): unique per socket while the system
    /// runs, and kept when a TCP socket moves into TIME-WAIT.
    pub cookie: Option<u64>,
    /// `cgroup:` path of the owning cgroup v2, relative to its mount (`-e`).
    pub cgroup_path: Option<String>,
    /// Smoothed RTT (`rtt:<srtt ms>/<rttvar ms>`), in whole microseconds as
    /// the kernel keeps it.
    pub rtt_us: Option<f64>,
    /// `bytes_sent:` payload bytes transmitted, retransmissions included (kernel ≥ 4.19).
    pub bytes_sent: Option<u64>,
    /// `bytes_retrans:` payload bytes retransmitted (kernel ≥ 4.19).
    pub bytes_retrans: Option<u64>,
    /// `retrans:<in flight>/<total>`: segments retransmitted over the
    /// socket's life (`tcpi_total_retrans`); absent while none were.
    pub retrans_total: Option<u64>,
    /// `bytes_acked:` sequence space acknowledged by the peer (kernel ≥ 4.1;
    /// includes the SYN on the active side and a FIN once acknowledged).
    pub bytes_acked: Option<u64>,
    /// `bytes_received:` sequence space received in order (kernel ≥ 4.1;
    /// includes the peer's FIN once received).
    pub bytes_received: Option<u64>,
}

impl ParsedSocket {
    /// The owner the socket is attributed to when several processes share it:
    /// the lowest pid (then the lowest fd). `ss` lists owners in hash-chain
    /// order, which changes as processes come and go; the lowest pid is
    /// usually the process that created the socket before forking, and the
    /// same on every read.
    pub fn owner(&self) -> Option<&Owner> {
        self.owners.iter().min_by_key(|o| (o.pid, o.fd))
    }
}

/// Why one line was not turned into a socket. The texts quoted from the
/// line (`ss` prints process names as they are) are shown escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("expected 6 columns (Netid State Recv-Q Send-Q Local Peer), found {0}")]
    TooFewColumns(usize),
    #[error("netid `{}` is neither tcp nor udp", Visible(.0))]
    UnknownNetid(String),
    #[error("state `{}` is not an ss state name", Visible(.0))]
    BadState(String),
    #[error("{column} `{}` is not a byte count", Visible(.text))]
    BadQueue { column: &'static str, text: String },
    #[error("{column} address `{}`: {why}", Visible(.text))]
    BadAddress {
        column: &'static str,
        text: String,
        why: &'static str,
    },
    #[error("process field `{}` is not users:((\"name\",pid=N,fd=M),…)", Visible(.0))]
    BadUsers(String),
    #[error("`{key}` has an invalid value `{}`", Visible(.text))]
    BadField { key: &'static str, text: String },
    #[error("indented tcp_info line with no socket line before it")]
    OrphanInfo,
}

/// One skipped line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// 1-based line number in the parsed text.
    pub line: usize,
    pub error: LineError,
}

/// What [`parse_ss`] made of a text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParseOutcome {
    /// Every socket record read in full, in output order.
    pub sockets: Vec<ParsedSocket>,
    /// Lines (socket lines, or stray info lines) that could not be read. A
    /// socket whose info line is unreadable is dropped and counted once.
    pub skipped: u64,
    /// The reasons for the first [`MAX_SKIP_REASONS`] skips.
    pub first_skips: Vec<Skipped>,
}

impl ParseOutcome {
    fn skip(&mut self, line: usize, error: LineError) {
        self.skipped += 1;
        if self.first_skips.len() < MAX_SKIP_REASONS {
            self.first_skips.push(Skipped { line, error });
        }
    }
}

/// Parse the output of `ss -tunapi` (or `ss -tunapie`). Never panics;
/// unreadable records are counted in [`ParseOutcome::skipped`].
///
/// ```
/// use netwatch::source::ss::parse_ss;
/// let text = "Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process\n\
///     tcp ESTAB 0 0 [::1]:40000 [::1]:22 users:((\"a b\",pid=7,fd=3))\n\
///     \t cubic rtt:0.25/0.1 bytes_sent:10 bytes_acked:11 bytes_received:20\n";
/// let out = parse_ss(text);
/// assert_eq!(out.skipped, 0);
/// let s = &out.sockets[0];
/// assert_eq!(s.state, "ESTABLISHED");
/// assert_eq!(s.owner().map(|o| (o.name.as_str(), o.pid)), Some(("a b", 7)));
/// assert_eq!((s.bytes_sent, s.bytes_received, s.rtt_us), (Some(10), Some(20), Some(250.0)));
/// ```
pub fn parse_ss(text: &str) -> ParseOutcome {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = ParseOutcome::default();
    let mut current: Option<ParsedSocket> = None;
    // The last socket line failed: its info line belongs to that one skip.
    let mut in_failed_record = false;
    let mut i = 0;
    while i < lines.len() {
        let line_no = i + 1;
        let line = lines[i];
        i += 1;
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            if let Some(sock) = current.as_mut() {
                if let Err(e) = apply_info_line(sock, line) {
                    current = None;
                    in_failed_record = true;
                    out.skip(line_no, e);
                }
            } else if !in_failed_record {
                out.skip(line_no, LineError::OrphanInfo);
            }
            continue;
        }
        out.sockets.extend(current.take());
        in_failed_record = false;
        if is_header(line) {
            continue;
        }
        match parse_socket_line(line, &lines[i..]) {
            Ok((sock, extra_lines)) => {
                current = Some(sock);
                i += extra_lines;
            }
            Err(e) => {
                in_failed_record = true;
                out.skip(line_no, e);
            }
        }
    }
    out.sockets.extend(current);
    out
}

/// Map an `ss` state name to the wire spelling: the kernel's own names
/// (`TCP_FIN_WAIT1` → `FIN_WAIT1`), `ESTABLISHED` for `ESTAB`, and `UNCONN`
/// kept for unconnected sockets. Unknown names keep their letters with `-`
/// turned into `_`. Returns `None` for text that is not a state name.
///
/// ```
/// use netwatch::source::ss::normalize_state;
/// assert_eq!(normalize_state("ESTAB").as_deref(), Some("ESTABLISHED"));
/// assert_eq!(normalize_state("FIN-WAIT-2").as_deref(), Some("FIN_WAIT2"));
/// assert_eq!(normalize_state("TIME-WAIT").as_deref(), Some("TIME_WAIT"));
/// assert_eq!(normalize_state("users:"), None);
/// ```
pub fn normalize_state(ss_state: &str) -> Option<String> {
    let known = match crate::net::state_from_ss(ss_state) {
        Some(name) => name,
        None => {
            let other = ss_state;
            let plausible = !other.is_empty()
                && other.len() <= 32
                && other
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
                && other.as_bytes()[0].is_ascii_uppercase();
            return plausible.then(|| other.replace('-', "_"));
        }
    };
    Some(known.to_string())
}

fn is_header(line: &str) -> bool {
    matches!(line.split_whitespace().next(), Some("Netid" | "State"))
}

/// Split off the next whitespace-separated token.
fn next_token(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// At most [`MAX_EXCERPT_CHARS`] characters of `s`, for error messages.
fn excerpt(s: &str) -> String {
    match s.char_indices().nth(MAX_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// Parse one socket line; `following` are the lines after it, which a
/// process name with newlines may continue into. Returns the socket and how
/// many of `following` it consumed.
fn parse_socket_line(line: &str, following: &[&str]) -> Result<(ParsedSocket, usize), LineError> {
    let mut cols = [""; 6];
    let mut rest = line;
    for (n, col) in cols.iter_mut().enumerate() {
        let (tok, r) = next_token(rest).ok_or(LineError::TooFewColumns(n))?;
        *col = tok;
        rest = r;
    }
    let [netid, state, recv_q, send_q, local, peer] = cols;
    let protocol = match netid {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => return Err(LineError::UnknownNetid(excerpt(other))),
    };
    let state = normalize_state(state).ok_or_else(|| LineError::BadState(excerpt(state)))?;
    let queue = |column: &'static str, text: &str| {
        text.parse::<u64>().map_err(|_| LineError::BadQueue {
            column,
            text: excerpt(text),
        })
    };
    let recv_q = queue("Recv-Q", recv_q)?;
    let send_q = queue("Send-Q", send_q)?;
    let local_ep = parse_endpoint(local).map_err(|why| LineError::BadAddress {
        column: "local",
        text: excerpt(local),
        why,
    })?;
    let peer_ep = parse_endpoint(peer).map_err(|why| LineError::BadAddress {
        column: "peer",
        text: excerpt(peer),
        why,
    })?;

    let mut sock = ParsedSocket {
        protocol,
        state,
        recv_q,
        send_q,
        local: SocketAddr::new(
            local_ep.ip.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            local_ep.port.unwrap_or(0),
        ),
        local_interface: local_ep.interface,
        remote: match (peer_ep.ip, peer_ep.port) {
            (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
            _ => None,
        },
        owners: Vec::new(),
        uid: None,
        inode: None,
        cookie: None,
        cgroup_path: None,
        rtt_us: None,
        bytes_sent: None,
        bytes_retrans: None,
        retrans_total: None,
        bytes_acked: None,
        bytes_received: None,
    };

    let rest = rest.trim_start();
    let mut consumed = 0;
    let details = if rest.starts_with(USERS_PREFIX) {
        let (owners, after, extra) = parse_users_across_lines(rest, following)?;
        sock.owners = owners;
        consumed = extra;
        after
    } else {
        rest.to_string()
    };
    apply_details(&mut sock, &details)?;
    Ok((sock, consumed))
}

const USERS_PREFIX: &str = "users:(";

/// Read the process field starting at `rest`, joining following lines while
/// a name with newlines leaves it unterminated. Returns the owners, the text
/// after the field, and how many following lines were used.
fn parse_users_across_lines(
    rest: &str,
    following: &[&str],
) -> Result<(Vec<Owner>, String, usize), LineError> {
    if let Some((owners, len)) = parse_users(rest) {
        return Ok((owners, rest[len..].to_string(), 0));
    }
    let mut joined = rest.to_string();
    for (n, next) in following.iter().take(MAX_NAME_LINES).enumerate() {
        joined.push('\n');
        joined.push_str(next);
        if let Some((owners, len)) = parse_users(&joined) {
            let names_fit = owners.iter().all(|o| {
                !o.name.contains('\n') || o.name.chars().count() <= MAX_MULTILINE_NAME_CHARS
            });
            if names_fit {
                return Ok((owners, joined[len..].to_string(), n + 1));
            }
            break;
        }
    }
    let field = rest.split_whitespace().next().unwrap_or(rest);
    Err(LineError::BadUsers(excerpt(field)))
}

/// Parse `users:(("name",pid=N,fd=M),…)` at the start of `s`: the owners
/// and the byte length of the field, or `None` if it is not complete.
fn parse_users(s: &str) -> Option<(Vec<Owner>, usize)> {
    let mut pos = USERS_PREFIX.len();
    let mut owners = Vec::new();
    loop {
        let entry = s.get(pos..)?.strip_prefix("(\"")?;
        let name_start = pos + 2;
        let (name_len, pid, fd, entry_len) = entry_terminator(entry)?;
        owners.push(Owner {
            name: entry[..name_len].to_string(),
            pid,
            fd,
        });
        pos = name_start + entry_len;
        match s.as_bytes().get(pos)? {
            b',' => pos += 1,
            b')' => return Some((owners, pos + 1)),
            _ => return None,
        }
    }
}

/// In `name",pid=N,fd=M)…`, find the first `",pid=N,fd=M)` (the name cannot
/// hold a `)`, so the first complete terminator is the real one). Returns
/// the name's length, pid, fd and the length through the `)`.
fn entry_terminator(entry: &str) -> Option<(usize, u32, u32, usize)> {
    const PID: &str = "\",pid=";
    for (at, _) in entry.match_indices(PID) {
        let after = &entry[at + PID.len()..];
        let Some((pid, r)) = leading_number(after) else {
            continue;
        };
        let Some(r) = r.strip_prefix(",fd=") else {
            continue;
        };
        let Some((fd, r)) = leading_number(r) else {
            continue;
        };
        if r.starts_with(')') {
            let total = entry.len() - r.len() + 1;
            return Some((at, pid, fd, total));
        }
    }
    None
}

/// A leading decimal `u32` and the text after it.
fn leading_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, &s[end..]))
}

/// An endpoint as printed: address (`None` for `*`), port (`None` for `*`)
/// and the `%iface` suffix.
struct Endpoint {
    ip: Option<IpAddr>,
    port: Option<u16>,
    interface: Option<String>,
}

/// Parse `127.0.0.1:80`, `0.0.0.0%lo:53`, `*:22`, `*%lo:22`, `[::1]:80`,
/// `[fe80::1]%eth0:22`, `[::ffff:1.2.3.4]:80`, `[::]:*`, `*:*`, and the
/// unbracketed IPv6 of older iproute2 (`:::22`).
fn parse_endpoint(text: &str) -> Result<Endpoint, &'static str> {
    let (host, port) = text.rsplit_once(':').ok_or("no `:port`")?;
    let port = match port {
        "*" => None,
        p => Some(
            p.parse::<u16>()
                .map_err(|_| "port is neither 0-65535 nor *")?,
        ),
    };
    let (addr, interface) = if let Some(inner) = host.strip_prefix('[') {
        let (v6, after) = inner.split_once(']').ok_or("`[` without `]`")?;
        let ip: Ipv6Addr = v6.parse().map_err(|_| "not an IPv6 address")?;
        (Some(IpAddr::V6(ip)), parse_interface(after)?)
    } else {
        let (addr, iface) = match host.split_once('%') {
            Some((a, _)) => (a, parse_interface(&host[a.len()..])?),
            None => (host, None),
        };
        let ip = match addr {
            "*" => None,
            a => Some(
                a.parse::<Ipv4Addr>()
                    .map(IpAddr::V4)
                    .or_else(|_| a.parse::<Ipv6Addr>().map(IpAddr::V6))
                    .map_err(|_| "not an IP address or *")?,
            ),
        };
        (ip, iface)
    };
    Ok(Endpoint {
        ip: addr,
        port,
        interface,
    })
}

/// `""` → no interface; `"%name"` → the name. Linux device names are 1-15
/// bytes without `/`, `:`, `%` or whitespace.
fn parse_interface(suffix: &str) -> Result<Option<String>, &'static str> {
    if suffix.is_empty() {
        return Ok(None);
    }
    let name = suffix.strip_prefix('%').ok_or("junk after the address")?;
    let valid = !name.is_empty()
        && name.len() < 16
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '%' || c.is_whitespace());
    if valid {
        Ok(Some(name.to_string()))
    } else {
        Err("not a device name after `%`")
    }
}

/// The `-e` details after the process field: `uid:`, `ino:`, `sk:`, `cgroup:`.
/// Unknown tokens (`v6only:1`, `<->`, `timer:(…)`) are ignored; the first
/// occurrence of each key wins.
fn apply_details(sock: &mut ParsedSocket, details: &str) -> Result<(), LineError> {
    for tok in details.split_whitespace() {
        if let Some(v) = tok.strip_prefix("uid:") {
            if sock.uid.is_none() {
                sock.uid = Some(parse_field("uid", v, |v| v.parse().ok())?);
            }
        } else if let Some(v) = tok.strip_prefix("ino:") {
            if sock.inode.is_none() {
                sock.inode = Some(parse_field("ino", v, |v| v.parse().ok())?);
            }
        } else if let Some(v) = tok.strip_prefix("sk:") {
            if sock.cookie.is_none() {
                sock.cookie = Some(parse_field("sk", v, |v| u64::from_str_radix(v, 16).ok())?);
            }
        } else if let Some(v) = tok.strip_prefix("cgroup:") {
            if sock.cgroup_path.is_none() && v.starts_with('/') {
                sock.cgroup_path = Some(v.to_string());
            }
        }
    }
    Ok(())
}

/// The fields of a `-i` info line this parser keeps; everything else
/// (`cwnd:`, `bbr:(…)`, `send 1bps`, …) is ignored.
fn apply_info_line(sock: &mut ParsedSocket, line: &str) -> Result<(), LineError> {
    let count = |key: &'static str, v: &str| parse_field(key, v, |v| v.parse::<u64>().ok());
    for tok in line.split_whitespace() {
        if let Some(v) = tok.strip_prefix("rtt:") {
            sock.rtt_us = Some(parse_field("rtt", v, srtt_us)?);
        } else if let Some(v) = tok.strip_prefix("bytes_sent:") {
            sock.bytes_sent = Some(count("bytes_sent", v)?);
        } else if let Some(v) = tok.strip_prefix("bytes_retrans:") {
            sock.bytes_retrans = Some(count("bytes_retrans", v)?);
        } else if let Some(v) = tok.strip_prefix("retrans:") {
            let total = |v: &str| v.split_once('/').and_then(|(_, t)| t.parse::<u64>().ok());
            sock.retrans_total = Some(parse_field("retrans", v, total)?);
        } else if let Some(v) = tok.strip_prefix("bytes_acked:") {
            sock.bytes_acked = Some(count("bytes_acked", v)?);
        } else if let Some(v) = tok.strip_prefix("bytes_received:") {
            sock.bytes_received = Some(count("bytes_received", v)?);
        }
    }
    Ok(())
}

/// `<srtt ms>/<rttvar ms>` → srtt in whole microseconds. The kernel keeps
/// the RTT in microseconds and `ss` divides by 1000, so rounding restores it.
fn srtt_us(v: &str) -> Option<f64> {
    let (srtt, _var) = v.split_once('/')?;
    let ms: f64 = srtt.parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| (ms * 1000.0).round())
}

fn parse_field<T>(
    key: &'static str,
    v: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, LineError> {
    parse(v).ok_or_else(|| LineError::BadField {
        key,
        text: excerpt(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Real `ss -tunapie` output from this project's capture script
    /// (testdata/ss/capture.py): loopback TCP over IPv4, IPv6, IPv4-mapped
    /// and link-local, UDP bound, connected and device-bound, TIME-WAIT,
    /// CLOSE-WAIT, FIN-WAIT-2, a socket shared by two processes, and
    /// processes named `a,b "c" (d`, `ü网 x`, `x",pid=9,fd=1)`, `nl\nname`,
    /// `tab\tname`, ` lead space` and the empty name.
    const TUNAPIE: &str = include_str!("../../../testdata/ss/tunapie-loopback.txt");
    /// The same moment without `-e`.
    const TUNAPI: &str = include_str!("../../../testdata/ss/tunapi-loopback.txt");

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The one socket on `local` without a peer (listening or unconnected).
    fn by_local<'a>(out: &'a ParseOutcome, local: &str) -> &'a ParsedSocket {
        let local = addr(local);
        let found: Vec<_> = out
            .sockets
            .iter()
            .filter(|s| s.local == local && s.remote.is_none())
            .collect();
        assert_eq!(found.len(), 1, "exactly one unconnected socket on {local}");
        found[0]
    }

    fn by_pair<'a>(out: &'a ParseOutcome, local: &str, remote: &str) -> &'a ParsedSocket {
        let (local, remote) = (addr(local), addr(remote));
        out.sockets
            .iter()
            .find(|s| s.local == local && s.remote == Some(remote))
            .unwrap_or_else(|| panic!("socket {local} -> {remote}"))
    }

    fn owner_of(s: &ParsedSocket) -> (&str, u32, u32) {
        let o = s.owner().expect("an owner");
        (o.name.as_str(), o.pid, o.fd)
    }

    #[test]
    fn ss_fixture_parses_every_record() {
        for (name, text) in [("tunapie", TUNAPIE), ("tunapi", TUNAPI)] {
            let out = parse_ss(text);
            assert_eq!(out.skipped, 0, "{name}: {:?}", out.first_skips);
            // 151 lines: the header, 76 socket records (3 with a name
            // spanning two lines), an info line for each of the 71 TCP ones.
            assert_eq!(out.sockets.len(), 76, "{name}");
            assert_eq!(
                out.sockets
                    .iter()
                    .filter(|s| s.protocol == Protocol::Udp)
                    .count(),
                5,
                "{name}"
            );
        }
    }

    #[test]
    fn retransmission_counters_are_read_and_a_bad_one_is_an_error() {
        let line = "tcp ESTAB 0 0 10.99.0.1:40000 10.99.0.2:7000 users:((\"nc\",pid=7,fd=3)) ino:9 sk:1 cgroup:/";
        let info = "\t cubic rtt:0.5/0.25 retrans:0/17 bytes_sent:90000 bytes_retrans:24616";
        let out = parse_ss(&format!("{line}\n{info}\n"));
        assert_eq!(out.skipped, 0);
        let sock = &out.sockets[0];
        assert_eq!(
            (sock.retrans_total, sock.bytes_retrans),
            (Some(17), Some(24616))
        );
        let out = parse_ss(&format!("{line}\n\t cubic retrans:0/x\n"));
        assert_eq!((out.skipped, out.sockets.len()), (1, 0));
    }

    #[test]
    fn ss_fixture_tcp_counters_rtt_and_ids() {
        let out = parse_ss(TUNAPIE);
        // The client side of a 12345-byte / 678-byte exchange.
        let c = by_pair(&out, "127.0.0.1:46592", "127.0.0.1:51403");
        assert_eq!(c.protocol, Protocol::Tcp);
        assert_eq!(c.state, "ESTABLISHED");
        assert_eq!((c.recv_q, c.send_q), (0, 0));
        assert_eq!(c.bytes_sent, Some(12345));
        assert_eq!(c.bytes_acked, Some(12346));
        assert_eq!(c.bytes_received, Some(678));
        assert_eq!(c.bytes_retrans, None);
        assert_eq!(c.rtt_us, Some(23.0)); // rtt:0.023/0.012
        assert_eq!(c.inode, Some(20656));
        assert_eq!(c.cookie, Some(0x103d));
        assert_eq!(c.cgroup_path.as_deref(), Some("/"));
        assert_eq!(c.uid, None);
        assert_eq!(c.local_interface, None);
        assert_eq!(owner_of(c), ("py fixture", 12157, 6));
        // Its server side.
        let s = by_pair(&out, "127.0.0.1:51403", "127.0.0.1:46592");
        assert_eq!(s.bytes_sent, Some(678));
        assert_eq!(s.bytes_acked, Some(678));
        assert_eq!(s.bytes_received, Some(12345));
        assert_eq!(s.rtt_us, Some(16.0)); // rtt:0.016/0.009
        assert_eq!(owner_of(s), ("py fixture", 12157, 7));
    }

    #[test]
    fn ss_fixture_states_are_normalized() {
        let out = parse_ss(TUNAPIE);
        let cw = by_pair(&out, "127.0.0.1:53887", "127.0.0.1:56776");
        assert_eq!(cw.state, "CLOSE_WAIT");
        assert_eq!(
            (cw.recv_q, cw.bytes_received, cw.bytes_sent),
            (1, Some(1), None)
        );
        let fw = by_pair(&out, "127.0.0.1:56776", "127.0.0.1:53887");
        assert_eq!(fw.state, "FIN_WAIT2");
        assert!(fw.owners.is_empty());
        let tw = by_pair(&out, "127.0.0.1:41929", "127.0.0.1:42734");
        assert_eq!(tw.state, "TIME_WAIT");
        assert_eq!((tw.inode, tw.cookie), (Some(0), Some(0x11)));
        assert_eq!(
            (tw.bytes_sent, tw.bytes_received, tw.rtt_us),
            (None, None, None)
        );
        let listen = by_local(&out, "127.0.0.1:51403");
        assert_eq!(listen.state, "LISTEN");
        assert_eq!(listen.remote, None);
        assert_eq!(listen.send_q, 8); // the backlog
        let unconn = by_local(&out, "127.0.0.1:37264");
        assert_eq!(
            (unconn.protocol, unconn.state.as_str(), unconn.recv_q),
            (Protocol::Udp, "UNCONN", 832)
        );
        let states: std::collections::BTreeSet<_> =
            out.sockets.iter().map(|s| s.state.as_str()).collect();
        assert_eq!(
            states.into_iter().collect::<Vec<_>>(),
            [
                "CLOSE_WAIT",
                "ESTABLISHED",
                "FIN_WAIT2",
                "LISTEN",
                "TIME_WAIT",
                "UNCONN"
            ]
        );
    }

    #[test]
    fn ss_fixture_ipv6_forms() {
        let out = parse_ss(TUNAPIE);
        // [::1] both ends, 1 byte sent.
        let v6 = by_pair(&out, "[::1]:34872", "[::1]:54967");
        assert_eq!(
            (v6.bytes_sent, v6.bytes_acked, v6.rtt_us),
            (Some(1), Some(2), Some(13.0))
        );
        // IPv4-mapped: kept as the IPv6 address the socket really has.
        let mapped = by_pair(&out, "[::ffff:127.0.0.1]:38029", "[::ffff:127.0.0.1]:36152");
        assert_eq!(mapped.bytes_received, Some(100));
        assert!(
            matches!(mapped.local.ip(), IpAddr::V6(ip) if ip.to_ipv4_mapped() == Some(Ipv4Addr::LOCALHOST))
        );
        // Link-local: the scope device is kept beside the address.
        let ll = by_pair(
            &out,
            "[fe80::fc:ff:fe00:1]:48266",
            "[fe80::fc:ff:fe00:1]:60083",
        );
        assert_eq!(ll.local_interface.as_deref(), Some("eth0"));
        assert_eq!(ll.bytes_sent, Some(4096));
        // `*` is IPv6 any (dual-stack); `[::]:*` and `*:*` peers are no peer.
        let dual = by_local(&out, "[::]:38029");
        assert_eq!((dual.state.as_str(), dual.remote), ("LISTEN", None));
        let scoped = by_local(&out, "[::]:32795");
        assert_eq!(scoped.local_interface.as_deref(), Some("lo"));
        let v6only = by_local(&out, "[::1]:54967");
        assert_eq!(v6only.remote, None);
        // Device-bound IPv4: `0.0.0.0%lo:48489`.
        let bound = by_local(&out, "0.0.0.0:48489");
        assert_eq!(bound.local_interface.as_deref(), Some("lo"));
        // Connected UDP over IPv6.
        let u6 = by_pair(&out, "[::1]:49034", "[::1]:40879");
        assert_eq!(
            (u6.protocol, u6.state.as_str()),
            (Protocol::Udp, "ESTABLISHED")
        );
        assert_eq!((u6.bytes_sent, u6.rtt_us), (None, None));
    }

    #[test]
    fn ss_fixture_odd_process_names() {
        let out = parse_ss(TUNAPIE);
        let name_at = |local: &str| {
            let l = addr(local);
            let s = out
                .sockets
                .iter()
                .find(|s| s.local == l && s.state == "ESTABLISHED")
                .unwrap_or_else(|| panic!("established socket on {l}"));
            owner_of(s).0
        };
        assert_eq!(name_at("127.0.0.1:33933"), "ü网 x");
        assert_eq!(name_at("127.0.0.1:45951"), "x\",pid=9,fd=1");
        assert_eq!(name_at("127.0.0.1:33155"), "nl\nname");
        assert_eq!(name_at("127.0.0.1:35701"), "tab\tname");
        assert_eq!(name_at("127.0.0.1:47511"), " lead space");
        assert_eq!(name_at("127.0.0.1:49739"), "");
        // x",pid=9,fd=1 is pid 12160, not 9.
        let x = by_local(&out, "127.0.0.1:45951");
        assert_eq!(owner_of(x), ("x\",pid=9,fd=1", 12160, 5));
        // The record after a two-line name is intact, with its info line.
        let nl = by_pair(&out, "127.0.0.1:51848", "127.0.0.1:33155");
        assert_eq!(owner_of(nl), ("nl\nname", 12161, 6));
        assert_eq!(nl.bytes_sent, Some(7));
        assert_eq!(nl.cookie, Some(0x1041));
    }

    #[test]
    fn ss_fixture_shared_socket_takes_lowest_pid() {
        let out = parse_ss(TUNAPIE);
        let shared = by_local(&out, "127.0.0.1:49297");
        assert_eq!(
            shared.owners,
            vec![
                Owner {
                    name: "shared child".into(),
                    pid: 12164,
                    fd: 5
                },
                Owner {
                    name: "a,b \"c\" (d".into(),
                    pid: 12158,
                    fd: 5
                },
            ]
        );
        assert_eq!(owner_of(shared), ("a,b \"c\" (d", 12158, 5));
        // Reversing ss's order does not change the choice.
        let mut flipped = shared.clone();
        flipped.owners.reverse();
        assert_eq!(owner_of(&flipped), ("a,b \"c\" (d", 12158, 5));
    }

    #[test]
    fn ss_fixture_without_e_has_no_inode_or_cookie() {
        let out = parse_ss(TUNAPI);
        assert!(out
            .sockets
            .iter()
            .all(|s| s.inode.is_none() && s.cookie.is_none()));
        let c = by_pair(&out, "127.0.0.1:46592", "127.0.0.1:51403");
        assert_eq!((c.bytes_sent, c.bytes_received), (Some(12345), Some(678)));
        assert_eq!(owner_of(c), ("py fixture", 12157, 6));
        // A socket of another PID namespace: no process field at all.
        let foreign = by_local(&out, "0.0.0.0:2024");
        assert!(foreign.owners.is_empty() && foreign.owner().is_none());
    }

    #[test]
    fn ss_endpoint_forms() {
        let ok = |t: &str| {
            let e = parse_endpoint(t).unwrap_or_else(|why| panic!("{t}: {why}"));
            (e.ip, e.port, e.interface)
        };
        let v4 = |s: &str| Some(IpAddr::V4(s.parse().unwrap()));
        let v6 = |s: &str| Some(IpAddr::V6(s.parse().unwrap()));
        assert_eq!(ok("10.1.2.3:443"), (v4("10.1.2.3"), Some(443), None));
        assert_eq!(ok("0.0.0.0:*"), (v4("0.0.0.0"), None, None));
        assert_eq!(ok("*:*"), (None, None, None));
        assert_eq!(ok("*%lo:22"), (None, Some(22), Some("lo".into())));
        assert_eq!(ok("[::1]:65535"), (v6("::1"), Some(65535), None));
        assert_eq!(
            ok("[fe80::1]%eth0:22"),
            (v6("fe80::1"), Some(22), Some("eth0".into()))
        );
        assert_eq!(
            ok("[::ffff:1.2.3.4]:80"),
            (v6("::ffff:1.2.3.4"), Some(80), None)
        );
        assert_eq!(ok(":::22"), (v6("::"), Some(22), None)); // old iproute2
        assert_eq!(ok("::1:631"), (v6("::1"), Some(631), None));
        for bad in [
            "",
            "80",
            "1.2.3.4",
            "1.2.3.4:65536",
            "1.2.3.4:-1",
            "[::1:80",
            "[::1]x:80",
            "[1.2.3.4]:80",
            "host:80",
            "1.2.3.4%:80",
            "1.2.3.4%a/b:80",
            "[::1]%:80",
            "1.2.3.4%waytoolongdevicename:1",
            "1.2.3.4: 80",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn ss_state_names() {
        for (ss, wire) in [
            ("ESTAB", "ESTABLISHED"),
            ("SYN-SENT", "SYN_SENT"),
            ("SYN-RECV", "SYN_RECV"),
            ("FIN-WAIT-1", "FIN_WAIT1"),
            ("FIN-WAIT-2", "FIN_WAIT2"),
            ("TIME-WAIT", "TIME_WAIT"),
            ("UNCONN", "UNCONN"),
            ("CLOSE-WAIT", "CLOSE_WAIT"),
            ("LAST-ACK", "LAST_ACK"),
            ("LISTEN", "LISTEN"),
            ("CLOSING", "CLOSING"),
            ("UNKNOWN", "UNKNOWN"),
            ("BOUND-INACTIVE", "BOUND_INACTIVE"),
        ] {
            assert_eq!(normalize_state(ss).as_deref(), Some(wire), "{ss}");
        }
        for bad in ["", "estab", "-X", "1ABC", "A B", "ÜBER"] {
            assert_eq!(normalize_state(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ss_users_field() {
        fn parse(s: &str) -> Option<(Vec<Owner>, &str)> {
            parse_users(s).map(|(o, len)| (o, &s[len..]))
        }
        let (owners, after) =
            parse("users:((\"a\",pid=1,fd=2),(\"b c\",pid=30,fd=4)) ino:5").unwrap();
        assert_eq!(
            owners
                .iter()
                .map(|o| (o.name.as_str(), o.pid, o.fd))
                .collect::<Vec<_>>(),
            [("a", 1, 2), ("b c", 30, 4)]
        );
        assert_eq!(after, " ino:5");
        // Names that look like the syntax around them.
        let (owners, _) = parse("users:((\"\"),(\",pid=1,fd=2\",pid=3,fd=4))").unwrap();
        assert_eq!(
            (owners[0].name.as_str(), owners[0].pid),
            ("\"),(\",pid=1,fd=2", 3)
        );
        for bad in [
            "users:(",
            "users:((",
            "users:((\"a\",pid=1,fd=2)",
            "users:((\"a\",pid=1,fd=2),",
            "users:((\"a\",pid=x,fd=2))",
            "users:((\"a\",pid=1,fd=))",
            "users:((\"a\",pid=99999999999,fd=1))",
            "users:((a,pid=1,fd=2))",
            "users:((\"a\",pid=1,fd=2)x",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ss_rtt_is_whole_microseconds() {
        assert_eq!(srtt_us("0.009/0.004"), Some(9.0));
        assert_eq!(srtt_us("6.477/12.549"), Some(6477.0));
        assert_eq!(srtt_us("1234.57/1"), Some(1_234_570.0));
        assert_eq!(srtt_us("0/0"), Some(0.0));
        for bad in ["", "1", "x/1", "-1/0", "inf/0", "NaN/0", "1e999/0"] {
            assert_eq!(srtt_us(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ss_bad_lines_are_counted_with_reasons_and_never_kill_neighbours() {
        let text = "\
Netid State Recv-Q Send-Q Local Address:Port Peer Address:Port Process
tcp ESTAB 0 0 127.0.0.1:1 127.0.0.1:2 users:((\"ok\",pid=1,fd=3))
\t rtt:1/1 bytes_sent:5 bytes_received:6
sctp ESTAB 0 0 127.0.0.1:1 127.0.0.1:2
\t rtt:1/1 bytes_sent:5
tcp WEIRD? 0 0 127.0.0.1:1 127.0.0.1:2
tcp ESTAB x 0 127.0.0.1:1 127.0.0.1:2
tcp ESTAB 0 0 300.0.0.1:1 127.0.0.1:2
tcp ESTAB 0 0 127.0.0.1:1
tcp ESTAB 0 0 127.0.0.1:3 127.0.0.1:4 users:((\"unterminated
tcp ESTAB 0 0 127.0.0.1:5 127.0.0.1:6 users:((\"b\",pid=2,fd=3)) ino:zz
tcp ESTAB 0 0 127.0.0.1:7 127.0.0.1:8
\t rtt:1/1 bytes_sent:-5
udp UNCONN 0 0 0.0.0.0:9 0.0.0.0:*
";
        let out = parse_ss(&format!("\t orphan bytes_sent:1\n{text}"));
        assert_eq!(out.sockets.len(), 2, "{:?}", out.first_skips);
        assert_eq!(out.sockets[0].bytes_sent, Some(5));
        assert_eq!(out.sockets[0].bytes_received, Some(6));
        assert_eq!(out.sockets[1].local, addr("0.0.0.0:9"));
        assert_eq!(out.skipped, 9);
        let reasons: Vec<_> = out
            .first_skips
            .iter()
            .map(|s| (s.line, s.error.clone()))
            .collect();
        assert_eq!(reasons.len(), MAX_SKIP_REASONS);
        assert_eq!(reasons[0], (1, LineError::OrphanInfo));
        assert_eq!(reasons[1], (5, LineError::UnknownNetid("sctp".into())));
        assert_eq!(reasons[2], (7, LineError::BadState("WEIRD?".into())));
        assert!(matches!(
            reasons[3],
            (
                8,
                LineError::BadQueue {
                    column: "Recv-Q",
                    ..
                }
            )
        ));
        assert!(matches!(
            reasons[4],
            (
                9,
                LineError::BadAddress {
                    column: "local",
                    ..
                }
            )
        ));
        assert_eq!(reasons[5], (10, LineError::TooFewColumns(5)));
        assert_eq!(
            reasons[6],
            (11, LineError::BadUsers("users:((\"unterminated".into()))
        );
        assert_eq!(
            reasons[7],
            (
                12,
                LineError::BadField {
                    key: "ino",
                    text: "zz".into()
                }
            )
        );
        // The ninth skip (bytes_sent:-5 on line 14) is counted but not kept.
        let msg = LineError::BadField {
            key: "bytes_sent",
            text: "-5".into(),
        }
        .to_string();
        assert_eq!(msg, "`bytes_sent` has an invalid value `-5`");
    }

    #[test]
    fn ss_multiline_name_does_not_swallow_the_next_record() {
        // A broken process field followed by a record whose name would
        // complete it: the join is refused (the "name" is far longer than a
        // comm), the broken line is counted and the next record survives.
        let text = format!(
            "tcp ESTAB 0 0 127.0.0.1:1 127.0.0.1:2 users:((\"broken\n\
             tcp ESTAB 0 0 127.0.0.1:3 127.0.0.1:4 users:((\"next{}\",pid=5,fd=6))\n",
            "x".repeat(60)
        );
        let out = parse_ss(&text);
        assert_eq!(out.skipped, 1);
        assert_eq!(out.sockets.len(), 1);
        assert_eq!(out.sockets[0].owner().map(|o| o.pid), Some(5));
    }

    #[test]
    fn ss_uid_and_a_name_whose_second_line_is_indented() {
        // The first record is real output for a non-root owner (ss prints
        // uid: only when it is not 0); the second has the name "a\n\tb",
        // whose second line looks like an info line.
        let text = "State  Recv-Q Send-Q Local Address:Port  Peer Address:PortProcess\n\
tcp LISTEN 0 128 127.0.0.1:37661 0.0.0.0:* users:((\"python3\",pid=27516,fd=3)) uid:65534 ino:46728 sk:1063 cgroup:/ <->\n\
\t cubic cwnd:10\n\
tcp ESTAB 0 0 127.0.0.1:1 127.0.0.1:2 users:((\"a\n\tb\",pid=5,fd=6)) uid:1000\n\
\t cubic rtt:2/1 bytes_sent:3\n";
        let out = parse_ss(text);
        assert_eq!(out.skipped, 0, "{:?}", out.first_skips);
        assert_eq!(out.sockets.len(), 2);
        let l = &out.sockets[0];
        assert_eq!(
            (l.uid, l.inode, l.cookie),
            (Some(65534), Some(46728), Some(0x1063))
        );
        assert_eq!(owner_of(l), ("python3", 27516, 3));
        let e = &out.sockets[1];
        assert_eq!(owner_of(e), ("a\n\tb", 5, 6));
        assert_eq!(
            (e.uid, e.bytes_sent, e.rtt_us),
            (Some(1000), Some(3), Some(2000.0))
        );
    }

    #[test]
    fn ss_empty_and_header_only() {
        assert_eq!(parse_ss(""), ParseOutcome::default());
        assert_eq!(parse_ss("\n\n  \n"), ParseOutcome::default());
        let header = TUNAPIE.split('\n').next().unwrap();
        assert_eq!(parse_ss(header), ParseOutcome::default());
    }

    /// Small edits a damaged or future `ss` could make to real output.
    #[derive(Debug, Clone)]
    enum Mutation {
        Delete(usize, usize),
        Insert(usize, String),
        Replace(usize, char),
        SwapLines(usize, usize),
        Truncate(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let text = prop_oneof![
            any::<String>(),
            prop::sample::select(vec![
                "\n",
                "\t",
                " ",
                ":",
                "*",
                "%",
                "[",
                "]",
                "(",
                ")",
                "\"",
                ",pid=",
                ",fd=",
                "users:((",
                "))",
                "bytes_sent:",
                "rtt:",
                "sk:",
                "ino:",
                "/",
                "é",
                "\u{0}",
            ])
            .prop_map(str::to_string),
        ];
        prop_oneof![
            (any::<usize>(), 0usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
            (any::<usize>(), text).prop_map(|(a, s)| Mutation::Insert(a, s)),
            (any::<usize>(), any::<char>()).prop_map(|(a, c)| Mutation::Replace(a, c)),
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
            any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn apply(text: &str, m: &Mutation) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Delete(a, n) => {
                let start = at(*a, chars.len());
                let end = (start + n).min(chars.len());
                chars.drain(start..end);
            }
            Mutation::Insert(a, s) => {
                let pos = at(*a, chars.len());
                chars.splice(pos..pos, s.chars());
            }
            Mutation::Replace(a, c) => {
                if !chars.is_empty() {
                    let pos = a % chars.len();
                    chars[pos] = *c;
                }
            }
            Mutation::SwapLines(a, b) => {
                let mut lines: Vec<&str> = text.split('\n').collect();
                let (x, y) = (a % lines.len(), b % lines.len());
                lines.swap(x, y);
                return lines.join("\n");
            }
            Mutation::Truncate(a) => chars.truncate(at(*a, chars.len())),
        }
        chars.into_iter().collect()
    }

    fn check_invariants(text: &str) -> Result<(), TestCaseError> {
        let out = parse_ss(text);
        let lines = text.split('\n').count() as u64;
        prop_assert!(out.sockets.len() as u64 + out.skipped <= lines);
        prop_assert!(out.first_skips.len() <= MAX_SKIP_REASONS);
        prop_assert!(out.first_skips.len() as u64 <= out.skipped);
        for s in &out.sockets {
            prop_assert!(matches!(s.protocol, Protocol::Tcp | Protocol::Udp));
            prop_assert!(!s.state.is_empty());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn ss_parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            check_invariants(&text)?;
        }

        #[test]
        fn ss_parse_never_panics_on_line_shaped_noise(
            lines in prop::collection::vec("[ \\ttcpudESTABLISN\\-0-9.:\\[\\]*%()\",=a-z/]{0,120}", 0..20)
        ) {
            check_invariants(&lines.join("\n"))?;
        }

        #[test]
        fn ss_parse_never_panics_on_mutated_real_output(
            which in any::<bool>(),
            ms in prop::collection::vec(mutation(), 1..8),
        ) {
            let mut text = if which { TUNAPIE } else { TUNAPI }.to_string();
            for m in &ms {
                text = apply(&text, m);
            }
            check_invariants(&text)?;
        }
    }
}
