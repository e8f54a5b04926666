//! Host-wide TCP socket counts by state, for the snapshot's
//! `connection_count`, `tcp_time_wait` and `tcp_close_wait`: from a
//! `sock_diag` netlink dump filtered by the kernel to those three states
//! (replies counted in place, nothing built per socket), with `/proc/net/tcp`
//! and `/proc/net/tcp6` parsed only when netlink fails. It counts; it must
//! never attribute sockets to processes (that is the sources' and
//! attribution's job), and never panics on what netlink returns.

use anyhow::Context;
use procfs::net::{TcpNetEntry, TcpState};
use procfs::ProcError;

/// TCP sockets of the agent's network namespace, counted by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStates {
    /// Sockets in `ESTABLISHED` (the SDK's `connection_count`).
    pub connection_count: u32,
    pub time_wait: u32,
    pub close_wait: u32,
}

impl TcpStates {
    /// Count the sockets: by `sock_diag` netlink, or, when that fails, from
    /// `/proc/net/tcp` and `/proc/net/tcp6`.
    pub fn read() -> anyhow::Result<Self> {
        match Self::read_netlink(|_, _| true) {
            Ok(s) => Ok(s),
            Err(e) => {
                log::debug!("sock_diag TCP state dump failed ({e}); parsing /proc/net/tcp");
                Self::read_proc()
            }
        }
    }

    /// Count the sockets in `/proc/net/tcp` and `/proc/net/tcp6`.
    pub fn read_proc() -> anyhow::Result<Self> {
        Ok(Self::count(&read_entries()?))
    }

    /// Count the sockets of both families with a `sock_diag` dump per
    /// family that the kernel filters to the three states; `keep(local
    /// port, remote port)` selects which replies count (a test counts only
    /// its own ports). One buffer per call, nothing allocated per socket.
    pub fn read_netlink(keep: impl Fn(u16, u16) -> bool) -> Result<Self, NetlinkError> {
        use rustix::net::{self, netlink, AddressFamily, SocketFlags, SocketType};
        let fd = net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .map_err(|e| NetlinkError::Io(e.into()))?;
        let mut buf = vec![0u8; DUMP_BUF_BYTES];
        let mut s = Self::default();
        for (seq, family) in [(1, d::AF_INET), (2, d::AF_INET6)] {
            let req = d::dump_request(family, STATE_MASK, seq);
            net::sendto(
                &fd,
                &req,
                net::SendFlags::empty(),
                &netlink::SocketAddrNetlink::new(0, 0),
            )
            .map_err(|e| NetlinkError::Io(e.into()))?;
            loop {
                let (n, _) = net::recv(&fd, &mut buf, net::RecvFlags::empty())
                    .map_err(|e| NetlinkError::Io(e.into()))?;
                let got = buf.get(..n).unwrap_or_default();
                match count_dump(got, seq, &mut s, &keep)? {
                    Dump::More => {}
                    Dump::Done => break,
                }
            }
        }
        Ok(s)
    }

    /// Count already-parsed entries (any subset: a test counts only its own).
    pub fn count<'a>(entries: impl IntoIterator<Item = &'a TcpNetEntry>) -> Self {
        let mut s = Self::default();
        for e in entries {
            let slot = match e.state {
                TcpState::Established => &mut s.connection_count,
                TcpState::TimeWait => &mut s.time_wait,
                TcpState::CloseWait => &mut s.close_wait,
                _ => continue,
            };
            *slot = slot.saturating_add(1);
        }
        s
    }
}

use crate::net::sock_diag as d;

/// Kernel TCP state numbers (`include/net/tcp_states.h`).
const TCP_ESTABLISHED: u8 = 1;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE_WAIT: u8 = 8;
/// The states the dump asks the kernel for.
const STATE_MASK: u32 = (1 << TCP_ESTABLISHED) | (1 << TCP_TIME_WAIT) | (1 << TCP_CLOSE_WAIT);
/// The receive buffer of one dump read: the kernel fills what fits (each
/// bare reply is 88 bytes), the rest comes in the next reads.
const DUMP_BUF_BYTES: usize = 64 << 10;
/// Where the state and ports sit in a reply (after the netlink header):
/// `inet_diag_msg` = family, state, timer, retrans, then `id.sport`, `id.dport`.
const STATE_AT: usize = 1;
const SPORT_AT: usize = 4;
const DPORT_AT: usize = 6;

/// Why the netlink count failed (the caller falls back to `/proc`).
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// A leaf: the message carries the OS error, which is not chained.
    #[error("sock_diag socket: {0}")]
    Io(std::io::Error),
    #[error("sock_diag answered with error {0}")]
    Kernel(i32),
    #[error("sock_diag reply malformed")]
    Malformed,
    #[error("sock_diag dump interrupted or overrun")]
    Interrupted,
}

impl From<std::io::Error> for NetlinkError {
    fn from(error: std::io::Error) -> Self {
        NetlinkError::Io(error)
    }
}

/// Whether a dump continues after one datagram.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dump {
    More,
    Done,
}

/// Count the replies to dump `seq` in one datagram into `s`. Messages of
/// other sequence numbers (stale replies) are skipped. Never panics.
pub(crate) fn count_dump(
    buf: &[u8],
    seq: u32,
    s: &mut TcpStates,
    keep: &impl Fn(u16, u16) -> bool,
) -> Result<Dump, NetlinkError> {
    /// `NLM_F_DUMP_INTR`: the socket tables changed during the dump.
    const NLM_F_DUMP_INTR: u16 = 0x10;
    let mut at = 0;
    while at < buf.len() {
        let (Some(len), Some(kind), Some(flags), Some(mseq)) = (
            d::u32_ne(buf, at),
            d::u16_ne(buf, at + 4),
            d::u16_ne(buf, at + 6),
            d::u32_ne(buf, at + 8),
        ) else {
            return Err(NetlinkError::Malformed);
        };
        let len = len as usize;
        if len < d::NLMSG_HDRLEN || len > buf.len() - at {
            return Err(NetlinkError::Malformed);
        }
        let body = &buf[at + d::NLMSG_HDRLEN..at + len];
        at += d::align4(len);
        if mseq != seq {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            return Err(NetlinkError::Interrupted);
        }
        match kind {
            d::SOCK_DIAG_BY_FAMILY => {
                let (Some(&state), Some(sport), Some(dport)) = (
                    body.get(STATE_AT),
                    d::port_be(body, SPORT_AT),
                    d::port_be(body, DPORT_AT),
                ) else {
                    return Err(NetlinkError::Malformed);
                };
                if !keep(sport, dport) {
                    continue;
                }
                let slot = match state {
                    TCP_ESTABLISHED => &mut s.connection_count,
                    TCP_TIME_WAIT => &mut s.time_wait,
                    TCP_CLOSE_WAIT => &mut s.close_wait,
                    _ => continue,
                };
                *slot = slot.saturating_add(1);
            }
            d::NLMSG_DONE => return Ok(Dump::Done),
            d::NLMSG_ERROR => {
                let errno = d::u32_ne(body, 0).map_or(0, |e| e as i32);
                // An IPv6-less kernel has no AF_INET6 handler: no sockets.
                if errno == 0 || errno == -2 || errno == -97 {
                    return Ok(Dump::Done);
                }
                return Err(NetlinkError::Kernel(errno));
            }
            d::NLMSG_OVERRUN => return Err(NetlinkError::Interrupted),
            _ => {}
        }
    }
    Ok(Dump::More)
}

/// Every TCP socket, IPv4 then IPv6. A kernel without IPv6 has no
/// `/proc/net/tcp6`; that is an empty table, not an error.
pub fn read_entries() -> anyhow::Result<Vec<TcpNetEntry>> {
    let mut entries = procfs::net::tcp().context("reading /proc/net/tcp")?;
    match procfs::net::tcp6() {
        Ok(v6) => entries.extend(v6),
        Err(ProcError::NotFound(_)) => {}
        Err(e) => return Err(e).context("reading /proc/net/tcp6"),
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use procfs::FromBufReadSI;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn line(state: u8) -> String {
        format!("   0: 0100007F:1F90 0100007F:C350 {state:02X} 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n")
    }

    fn parse(text: &str) -> Vec<TcpNetEntry> {
        let si = procfs::ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: cfg!(target_endian = "little"),
        };
        match procfs::net::TcpNetEntries::from_buf_read(text.as_bytes(), &si) {
            Ok(e) => e.0,
            Err(e) => panic!("fixture must parse: {e}"),
        }
    }

    #[test]
    fn counts_established_time_wait_and_close_wait_only() {
        let mut text = HEADER.to_string();
        for st in [0x01, 0x01, 0x06, 0x08, 0x08, 0x08, 0x0A, 0x02, 0x09, 0x05] {
            text.push_str(&line(st));
        }
        let s = TcpStates::count(&parse(&text));
        assert_eq!(
            s,
            TcpStates {
                connection_count: 2,
                time_wait: 1,
                close_wait: 3
            }
        );
    }

    /// One netlink message: header then `body`.
    fn nlmsg(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = d::NLMSG_HDRLEN + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize(d::align4(m.len()), 0);
        m
    }

    /// A bare `inet_diag_msg` reply in `state` with these ports.
    fn diag(state: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut b = vec![0u8; 72];
        b[0] = d::AF_INET;
        b[1] = state;
        b[4..6].copy_from_slice(&sport.to_be_bytes());
        b[6..8].copy_from_slice(&dport.to_be_bytes());
        b
    }

    #[test]
    fn netlink_dump_counts_three_states_and_stops_at_done() {
        let mut buf = Vec::new();
        for st in [0x01, 0x01, 0x06, 0x08, 0x08, 0x08, 0x0A, 0x02] {
            buf.extend(nlmsg(d::SOCK_DIAG_BY_FAMILY, 2, 7, &diag(st, 80, 5000)));
        }
        // A stale reply to another dump does not count.
        buf.extend(nlmsg(d::SOCK_DIAG_BY_FAMILY, 2, 6, &diag(1, 80, 5000)));
        let mut s = TcpStates::default();
        assert_eq!(
            count_dump(&buf, 7, &mut s, &|_, _| true).ok(),
            Some(Dump::More)
        );
        let done = nlmsg(d::NLMSG_DONE, 2, 7, &0i32.to_ne_bytes());
        assert_eq!(
            count_dump(&done, 7, &mut s, &|_, _| true).ok(),
            Some(Dump::Done)
        );
        assert_eq!(
            s,
            TcpStates {
                connection_count: 2,
                time_wait: 1,
                close_wait: 3
            }
        );
        // The port filter.
        let mut f = TcpStates::default();
        let two = [diag(1, 80, 1), diag(1, 81, 1)].concat();
        let mut b = nlmsg(d::SOCK_DIAG_BY_FAMILY, 2, 1, &two[..72]);
        b.extend(nlmsg(d::SOCK_DIAG_BY_FAMILY, 2, 1, &two[72..]));
        let _ = count_dump(&b, 1, &mut f, &|sp, _| sp == 81);
        assert_eq!(f.connection_count, 1);
    }

    #[test]
    fn netlink_dump_errors_and_garbage_are_errors_never_panics() {
        let mut s = TcpStates::default();
        let err = nlmsg(d::NLMSG_ERROR, 0, 3, &(-1i32).to_ne_bytes());
        assert!(matches!(
            count_dump(&err, 3, &mut s, &|_, _| true),
            Err(NetlinkError::Kernel(-1))
        ));
        // No AF_INET6 in this kernel: an empty family, not an error.
        let noent = nlmsg(d::NLMSG_ERROR, 0, 3, &(-2i32).to_ne_bytes());
        assert_eq!(
            count_dump(&noent, 3, &mut s, &|_, _| true).ok(),
            Some(Dump::Done)
        );
        let intr = nlmsg(d::SOCK_DIAG_BY_FAMILY, 0x12, 3, &diag(1, 1, 1));
        assert!(matches!(
            count_dump(&intr, 3, &mut s, &|_, _| true),
            Err(NetlinkError::Interrupted)
        ));
        let short = nlmsg(d::SOCK_DIAG_BY_FAMILY, 2, 3, &[0u8; 3]);
        assert!(matches!(
            count_dump(&short, 3, &mut s, &|_, _| true),
            Err(NetlinkError::Malformed)
        ));
        assert!(count_dump(&[1, 2, 3], 3, &mut s, &|_, _| true).is_err());
        assert_eq!(s, TcpStates::default());
    }

    /// Real sockets on this test's own listening ports: `N` connections
    /// kept open (2N established ends), `M` the client closed first (M
    /// time-wait ends), `K` the server closed first (K close-wait ends on
    /// the clients). The netlink dump, filtered to these ports, counts them
    /// exactly, and so does the `/proc` parse at the same moment.
    #[test]
    fn netlink_counts_own_established_time_wait_and_close_wait_sockets() {
        use std::io::Read;
        use std::net::{TcpListener, TcpStream};
        const N: usize = 5;
        const M: usize = 3;
        const K: usize = 4;
        let bind = || match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(e) => panic!("bind loopback listener: {e}"),
        };
        let port = |l: &TcpListener| match l.local_addr() {
            Ok(a) => a.port(),
            Err(e) => panic!("listener address: {e}"),
        };
        let pair = |l: &TcpListener| {
            let c = TcpStream::connect(("127.0.0.1", port(l)))
                .unwrap_or_else(|e| panic!("connect: {e}"));
            let (s, _) = l.accept().unwrap_or_else(|e| panic!("accept: {e}"));
            (c, s)
        };
        let (le, lt, lc) = (bind(), bind(), bind());
        let (pe, pt, pc) = (port(&le), port(&lt), port(&lc));
        let open: Vec<_> = (0..N).map(|_| pair(&le)).collect();
        // Time-wait: the client closes first, the server reads EOF and
        // closes; the client end lingers in TIME_WAIT.
        for _ in 0..M {
            let (c, mut s) = pair(&lt);
            drop(c);
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).ok(), Some(0), "EOF on the server end");
            drop(s);
        }
        // Close-wait: the server closes; the client never does.
        let mut half_closed = Vec::new();
        for _ in 0..K {
            let (mut c, s) = pair(&lc);
            drop(s);
            let mut b = [0u8; 1];
            assert_eq!(c.read(&mut b).ok(), Some(0), "EOF on the client end");
            half_closed.push(c);
        }
        let mine = |sp: u16, dp: u16| [pe, pt, pc].iter().any(|&p| p == sp || p == dp);
        let want = TcpStates {
            connection_count: (2 * N) as u32,
            time_wait: M as u32,
            close_wait: K as u32,
        };
        // The last FIN-ACK of the time-wait pairs may still be in flight on
        // loopback: read until the counts settle (bounded, not timed).
        let mut got = TcpStates::default();
        for _ in 0..200 {
            got = match TcpStates::read_netlink(mine) {
                Ok(s) => s,
                Err(e) => panic!("sock_diag dump: {e}"),
            };
            if got == want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got, want);
        let proc = match read_entries() {
            Ok(e) => TcpStates::count(
                e.iter()
                    .filter(|e| mine(e.local_address.port(), e.remote_address.port())),
            ),
            Err(e) => panic!("/proc/net/tcp: {e}"),
        };
        assert_eq!(proc, got, "/proc parse and netlink agree");
        drop((open, half_closed));
    }

    #[test]
    fn empty_table_counts_zero() {
        assert_eq!(TcpStates::count(&parse(HEADER)), TcpStates::default());
    }

    proptest::proptest! {
        #[test]
        fn prop_proc_net_tcp_parser_never_panics(s in "(.{0,160}\n){0,5}") {
            let si = procfs::ExplicitSystemInfo {
                boot_time_secs: 0,
                ticks_per_second: 100,
                page_size: 4096,
                is_little_endian: true,
            };
            if let Ok(e) = procfs::net::TcpNetEntries::from_buf_read(s.as_bytes(), &si) {
                let _ = TcpStates::count(&e.0);
            }
        }

        /// Rows of the kernel's shape with fields gone wrong.
        #[test]
        fn prop_proc_net_tcp_parser_never_panics_near_the_kernel_shape(
            rows in proptest::collection::vec(
                " *[0-9]{1,3}: [0-9A-Fé]{0,33}:[0-9A-F]{0,5} [0-9A-F]{0,33}:[0-9A-Fé]{0,5} [0-9A-Fé]{0,3} [0-9A-F]{0,8}:[0-9A-F]{0,8} [0-9:A-F]{0,12} [0-9]{0,8} [0-9é]{0,6} [0-9]{0,3} [0-9é]{0,8}",
                0..5,
            )
        ) {
            let text = format!("{HEADER}{}\n", rows.join("\n"));
            let si = procfs::ExplicitSystemInfo {
                boot_time_secs: 0,
                ticks_per_second: 100,
                page_size: 4096,
                is_little_endian: true,
            };
            if let Ok(e) = procfs::net::TcpNetEntries::from_buf_read(text.as_bytes(), &si) {
                let _ = TcpStates::count(&e.0);
            }
        }

        #[test]
        fn prop_counts_add_up(states in proptest::collection::vec(1u8..=0x0C, 0..40)) {
            let mut text = HEADER.to_string();
            for &st in &states {
                text.push_str(&line(st));
            }
            let s = TcpStates::count(&parse(&text));
            let n = |x: u8| states.iter().filter(|&&v| v == x).count() as u32;
            proptest::prop_assert_eq!(s.connection_count, n(0x01));
            proptest::prop_assert_eq!(s.time_wait, n(0x06));
            proptest::prop_assert_eq!(s.close_wait, n(0x08));
        }
    }
}
