//! TCP sockets counted by state (the snapshot's `connection_count`,
//! `tcp_time_wait`, `tcp_close_wait`) by the `iter_tcp_states` BPF
//! iterator: the kernel writes 5 bytes per socket of the agent's network
//! namespace instead of a `sock_diag` netlink message, and nothing is
//! allocated per socket here. The walk runs only when something changed:
//! the source keeps the last counts while the kernel's count of TCP state
//! changes (`counter::STATE_CHANGES`) and the time-wait count of
//! `/proc/thread-self/net/sockstat` ([`sockstat_tw`]) stand still. It counts; it never
//! attributes, and a failure only sends the caller back to `sock_diag`.

use std::io::{self, Read};

use aya::programs::Iter;
use aya::Ebpf;

use crate::source::TcpStateCounts;

/// The iterator program in the object.
pub const PROGRAM: &str = "iter_tcp_states";

/// Kernel TCP state numbers (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u8 = 1;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE_WAIT: u8 = 8;
/// Bytes the iterator writes per socket.
const RECORD: usize = 5;
/// Reads that may return EAGAIN in a row before giving up.
const MAX_EAGAIN: u32 = 1000;

fn other(what: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {PROGRAM}: {e}"))
}

/// Load the iterator (once, at start).
pub fn prepare(ebpf: &mut Ebpf) -> io::Result<()> {
    // The copy parsed once while the source loads (not a parse of its own).
    let btf = super::btf::kernel_btf_aya().map_err(|e| other("kernel BTF for", e))?;
    let prog: &mut Iter = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| other("finding", "not in the object"))?
        .try_into()
        .map_err(|e| other("finding", e))?;
    prog.load("tcp", &btf).map_err(|e| other("loading", e))
}

/// The loaded iterator: in the object this agent loaded, or reopened from
/// its pin by a restarted agent.
pub enum Loaded {
    InObject,
    Pinned(Box<Iter>),
}

impl Loaded {
    fn program<'a>(&'a mut self, ebpf: Option<&'a mut Ebpf>) -> io::Result<&'a mut Iter> {
        match self {
            Loaded::Pinned(p) => Ok(p),
            Loaded::InObject => ebpf
                .ok_or_else(|| other("finding", "no object"))?
                .program_mut(PROGRAM)
                .ok_or_else(|| other("finding", "not in the object"))?
                .try_into()
                .map_err(|e| other("finding", e)),
        }
    }
}

/// Run the iterator once and count the sockets `keep(local port, remote
/// port)` selects (a test counts only its own). `buf` is reused.
pub fn count(
    loaded: &mut Loaded,
    ebpf: Option<&mut Ebpf>,
    buf: &mut Vec<u8>,
    keep: impl Fn(u16, u16) -> bool,
) -> io::Result<TcpStateCounts> {
    let prog = loaded.program(ebpf)?;
    let link_id = prog.attach().map_err(|e| other("attaching", e))?;
    let link = prog
        .take_link(link_id)
        .map_err(|e| other("taking the link of", e))?;
    let mut file = link.into_file().map_err(|e| other("opening", e))?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let mut eagain = 0;
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                eagain = 0;
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && eagain < MAX_EAGAIN => eagain += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(tally(buf, keep))
}

/// The time-wait sockets of the calling thread's network namespace (the
/// one the iterator walks), from the `tw` field of
/// `/proc/thread-self/net/sockstat` (IPv4 and IPv6 share the count): O(1)
/// to read, so a read can tell that no time-wait socket expired without
/// walking them. `None` if the file or the field is missing.
pub fn sockstat_tw() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").ok()?;
    parse_sockstat_tw(&text)
}

pub(crate) fn parse_sockstat_tw(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "tw" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// Count the records in `bytes` (a torn tail is ignored).
pub fn tally(bytes: &[u8], keep: impl Fn(u16, u16) -> bool) -> TcpStateCounts {
    let mut s = TcpStateCounts::default();
    for r in bytes.chunks_exact(RECORD) {
        let slot = match r[0] {
            TCP_ESTABLISHED => &mut s.established,
            TCP_TIME_WAIT => &mut s.time_wait,
            TCP_CLOSE_WAIT => &mut s.close_wait,
            _ => continue,
        };
        let local = u16::from_ne_bytes([r[1], r[2]]);
        let remote = u16::from_be_bytes([r[3], r[4]]);
        if keep(local, remote) {
            *slot = slot.saturating_add(1);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_tw_is_read_from_the_tcp_line_only() {
        let text =
            "sockets: used 301\nTCP: inuse 9 orphan 1 tw 42 alloc 12 mem 3\nUDP: inuse 4 mem 2\n";
        assert_eq!(parse_sockstat_tw(text), Some(42));
        assert_eq!(parse_sockstat_tw("TCP: inuse 9 orphan 1 tw\n"), None);
        assert_eq!(parse_sockstat_tw("TCP: inuse 9 tw x\n"), None);
        assert_eq!(parse_sockstat_tw("UDP: inuse 4 tw 3\n"), None);
        assert!(
            sockstat_tw().is_some(),
            "this kernel's /proc/net/sockstat has tw"
        );
    }

    #[test]
    fn tally_counts_three_states_by_port_and_ignores_a_torn_tail() {
        let rec = |state: u8, l: u16, r: u16| {
            let mut v = vec![state];
            v.extend_from_slice(&l.to_ne_bytes());
            v.extend_from_slice(&r.to_be_bytes());
            v
        };
        let mut b = Vec::new();
        for (st, l, r) in [
            (1, 80, 5000),
            (1, 81, 5001),
            (6, 80, 5002),
            (8, 80, 1),
            (10, 80, 0),
        ] {
            b.extend(rec(st, l, r));
        }
        b.extend([1, 2]);
        let all = tally(&b, |_, _| true);
        assert_eq!(
            all,
            TcpStateCounts {
                established: 2,
                time_wait: 1,
                close_wait: 1
            }
        );
        let port80 = tally(&b, |l, _| l == 80);
        assert_eq!((port80.established, port80.time_wait), (1, 1));
        assert_eq!(tally(&b, |_, r| r == 5001).established, 1);
    }
}
