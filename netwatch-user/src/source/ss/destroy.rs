//! Socket destroy events from the kernel's `sock_diag` netlink multicast
//! groups (what `ss -E` listens to): every TCP and UDP socket, IPv4 and
//! IPv6, announces its end with its final `tcp_info`, so the `ss` source can
//! count the bytes a socket moved after its last poll. This module only
//! reads and decodes those messages; it never attributes bytes, never runs
//! `ss`, and never panics on what the kernel (or anything else) sends: a
//! message it cannot read is counted as lost.
//!
//! The message (kernel `inet_diag_handler_get_info`, sent from the socket's
//! destructor): a `struct inet_diag_msg` (72 bytes: family, state, the
//! socket id with ports, addresses and the 64-bit cookie, the queues,
//! uid and inode, the last two always 0 here), then netlink attributes:
//! `INET_DIAG_PROTOCOL` (u8) and, for TCP, `INET_DIAG_INFO` (`struct
//! tcp_info`, as long as the running kernel's). `idiag_rqueue` is
//! `rcv_nxt − copied_seq`: bytes and a FIN received that the process never
//! read.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
#[cfg(target_os = "linux")]
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(target_os = "linux")]
use std::time::Duration;

use crate::source::Protocol;

// The netlink and sock_diag vocabulary, shared with the TCP state counts
// (`procinfo::tcp_states`), lives below both.
pub(crate) use crate::net::sock_diag::{
    align4, port_be, u16_ne, u32_ne, u64_ne, AF_INET, AF_INET6, INET_DIAG_REQ_V2_LEN, IPPROTO_TCP,
    IPPROTO_UDP, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_REQUEST,
    SOCK_DIAG_BY_FAMILY,
};

/// `sizeof(struct inet_diag_msg)`.
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_PROTOCOL: u16 = 10;
/// `NLA_F_NESTED | NLA_F_NET_BYTEORDER`: flags, not part of the type.
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000);

/// `SKNLGRP_INET_TCP_DESTROY`, `_INET_UDP_`, `_INET6_TCP_`, `_INET6_UDP_`
/// (groups 1–4) as a bind mask.
pub const DESTROY_GROUPS_MASK: u32 = 0b1111;

/// Offsets in `struct tcp_info` (stable ABI: fields are only appended).
const TCPI_TOTAL_RETRANS: usize = 100;
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;
const TCPI_BYTES_SENT: usize = 200;
const TCPI_BYTES_RETRANS: usize = 208;

/// How many decoded events wait for [`DestroyListener::drain`] at most;
/// past that the newest are dropped and counted (the agent stopped
/// reading): in `lost_records` and as
/// `netwatch_agent_table_dropped_total{table="ss_destroy_queue"}`.
pub const MAX_QUEUED_EVENTS: usize = 1 << 18;

/// The receive buffer asked for the netlink socket. Bursts of closes beyond
/// it are lost by the kernel (`ENOBUFS`) and counted.
pub const RCVBUF_BYTES: usize = 8 << 20;

/// The final byte counters of a TCP socket (`tcp_info`). A counter is `None`
/// when the kernel's `tcp_info` is too short to hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFinal {
    /// `tcpi_bytes_received`: sequence space received in order, the peer's
    /// FIN included once received (the SYN is not).
    pub bytes_received: Option<u64>,
    /// `tcpi_bytes_sent`: payload sent, retransmissions included (≥ 4.19).
    pub bytes_sent: Option<u64>,
    /// `tcpi_bytes_retrans` (≥ 4.19).
    pub bytes_retrans: Option<u64>,
    /// `tcpi_bytes_acked` (≥ 4.1).
    pub bytes_acked: Option<u64>,
    /// `tcpi_total_retrans`: segments retransmitted over the socket's life.
    pub total_retrans: Option<u32>,
}

/// One destroyed socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestroyEvent {
    pub protocol: Protocol,
    /// The kernel socket cookie, as `ss -e` prints it in `sk:`.
    pub cookie: u64,
    pub local: SocketAddr,
    /// `None` when the socket had no peer (port 0).
    pub remote: Option<SocketAddr>,
    /// `idiag_rqueue`: received sequence space the process never read
    /// (unread bytes and an unread FIN).
    pub rqueue: u32,
    /// TCP only; `None` for UDP or when the message carried no `tcp_info`.
    pub tcp: Option<TcpFinal>,
    /// The socket's time-wait successor was in `FIN-WAIT-2` when the event
    /// was read: the peer's FIN had not come, so `bytes_received` holds none.
    pub successor_in_fin_wait2: bool,
}

/// What one netlink datagram held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decoded {
    pub events: Vec<DestroyEvent>,
    /// Messages that could not be read (short, inconsistent lengths,
    /// unknown family, no protocol attribute).
    pub malformed: u64,
    /// `NLMSG_OVERRUN` or error messages: events the kernel lost.
    pub overruns: u64,
}

fn addr(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        AF_INET => {
            let o: [u8; 4] = b.get(..4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        AF_INET6 => {
            let o: [u8; 16] = b.get(..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// Decode one datagram read from the destroy groups. Never panics.
///
/// ```
/// use netwatch::source::ss::destroy::decode;
/// let d = decode(&[0u8; 7]);
/// assert_eq!((d.events.len(), d.malformed), (0, 1));
/// ```
pub fn decode(buf: &[u8]) -> Decoded {
    let mut out = Decoded::default();
    let mut at = 0;
    while at < buf.len() {
        let (Some(len), Some(kind)) = (u32_ne(buf, at), u16_ne(buf, at + 4)) else {
            out.malformed += 1;
            break;
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > buf.len() - at {
            out.malformed += 1;
            break;
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            SOCK_DIAG_BY_FAMILY => match decode_inet(body) {
                Some(Some(ev)) => out.events.push(ev),
                Some(None) => {}
                None => out.malformed += 1,
            },
            NLMSG_OVERRUN | NLMSG_ERROR => out.overruns += 1,
            NLMSG_NOOP | NLMSG_DONE => {}
            _ => out.malformed += 1,
        }
        at += align4(len);
    }
    out
}

/// One `inet_diag_msg` with its attributes: `None` when malformed,
/// `Some(None)` for a protocol this source does not watch (UDP-Lite, …).
fn decode_inet(body: &[u8]) -> Option<Option<DestroyEvent>> {
    let msg = body.get(..INET_DIAG_MSG_LEN)?;
    let family = msg[0];
    let local_ip = addr(family, &msg[8..24])?;
    let remote_ip = addr(family, &msg[24..40])?;
    let (sport, dport) = (port_be(msg, 4)?, port_be(msg, 6)?);
    let cookie = u64::from(u32_ne(msg, 44)?) | (u64::from(u32_ne(msg, 48)?) << 32);
    let rqueue = u32_ne(msg, 56)?;

    let mut protocol = None;
    let mut info: Option<&[u8]> = None;
    let mut at = INET_DIAG_MSG_LEN;
    while at < body.len() {
        let alen = usize::from(u16_ne(body, at)?);
        let atype = u16_ne(body, at + 2)? & NLA_TYPE_MASK;
        if alen < 4 || alen > body.len() - at {
            return None;
        }
        let payload = &body[at + 4..at + alen];
        match atype {
            INET_DIAG_PROTOCOL => protocol = Some(*payload.first()?),
            INET_DIAG_INFO => info = Some(payload),
            _ => {}
        }
        at += align4(alen);
    }
    let protocol = match protocol? {
        IPPROTO_TCP => Protocol::Tcp,
        IPPROTO_UDP => Protocol::Udp,
        _ => return Some(None),
    };
    let tcp = match (protocol, info) {
        (Protocol::Tcp, Some(i)) => Some(TcpFinal {
            bytes_received: u64_ne(i, TCPI_BYTES_RECEIVED),
            bytes_sent: u64_ne(i, TCPI_BYTES_SENT),
            bytes_retrans: u64_ne(i, TCPI_BYTES_RETRANS),
            bytes_acked: u64_ne(i, TCPI_BYTES_ACKED),
            total_retrans: i
                .get(TCPI_TOTAL_RETRANS..TCPI_TOTAL_RETRANS + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes),
        }),
        _ => None,
    };
    Some(Some(DestroyEvent {
        protocol,
        cookie,
        local: SocketAddr::new(local_ip, sport),
        remote: (dport != 0).then(|| SocketAddr::new(remote_ip, dport)),
        rqueue,
        tcp,
        successor_in_fin_wait2: false,
    }))
}

/// `TCP_FIN_WAIT2` and `TCP_TIME_WAIT`, the kernel's state numbers.
const TCP_FIN_WAIT2: u8 = 5;
const TCP_TIME_WAIT: u8 = 6;

/// An exact `SOCK_DIAG_BY_FAMILY` lookup of the TCP socket with `ev`'s
/// endpoints in time-wait states (its successor), as netlink bytes.
pub fn successor_query(ev: &DestroyEvent, seq: u32) -> Option<Vec<u8>> {
    let remote = ev.remote?;
    let (family, src, dst) = match (ev.local.ip(), remote.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s[..4].copy_from_slice(&a.octets());
            d[..4].copy_from_slice(&b.octets());
            (AF_INET, s, d)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (AF_INET6, a.octets(), b.octets()),
        _ => return None,
    };
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN);
    m.extend_from_slice(&((NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, IPPROTO_TCP, 0, 0]);
    let states: u32 = (1 << TCP_FIN_WAIT2) | (1 << TCP_TIME_WAIT);
    m.extend_from_slice(&states.to_ne_bytes());
    m.extend_from_slice(&ev.local.port().to_be_bytes());
    m.extend_from_slice(&remote.port().to_be_bytes());
    m.extend_from_slice(&src);
    m.extend_from_slice(&dst);
    m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    Some(m)
}

/// The state of the socket in a reply to [`successor_query`] number `seq`:
/// `None` for an error (no such socket), another message, or garbage.
pub fn successor_state(reply: &[u8], seq: u32) -> Option<u8> {
    let len = u32_ne(reply, 0)? as usize;
    if len < NLMSG_HDRLEN + 2 || len > reply.len() || u32_ne(reply, 8)? != seq {
        return None;
    }
    (u16_ne(reply, 4)? == SOCK_DIAG_BY_FAMILY).then(|| reply[NLMSG_HDRLEN + 1])
}

/// Events decoded by the reader thread and not yet drained.
#[derive(Debug, Default)]
struct Queue {
    events: Vec<DestroyEvent>,
    /// Events lost since the start: kernel overruns (`ENOBUFS`, one per
    /// overrun: the kernel does not say how many), truncated or malformed
    /// messages, and events dropped because the queue was full.
    lost: u64,
}

/// A thread that reads the destroy groups continuously (so the socket buffer
/// does not overflow between the agent's reads) and queues the events.
/// [`DestroyListener::drain`] reads the socket too, so an event the kernel
/// sent just before (a socket closed right before the agent's final
/// snapshot) is in what it returns whether or not the thread has woken yet.
/// Dropping it stops the thread.
#[derive(Debug)]
pub struct DestroyListener {
    shared: Arc<Shared>,
    /// The reader thread, supervised as `ss_destroy` (restarted: the socket
    /// lives in `shared`; meanwhile each drain reads it itself).
    thread: Option<crate::supervise::Worker>,
}

/// What the thread and [`DestroyListener::drain`] share. Lock order:
/// `reader`, then `queue`.
#[derive(Debug)]
struct Shared {
    #[cfg(target_os = "linux")]
    reader: Mutex<Reader>,
    queue: Mutex<Queue>,
    stop: AtomicBool,
}

/// The netlink sockets and buffers; one reader at a time.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Reader {
    events: OwnedFd,
    query: OwnedFd,
    buf: Vec<u8>,
    reply: Vec<u8>,
    seq: u32,
    /// Set once reading failed for good.
    failed: bool,
}

/// Opening the netlink socket failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("opening a NETLINK_SOCK_DIAG socket: {0}")]
    Socket(io::Error),
    #[error(
        "joining the sock_diag destroy groups: {0} (needs CAP_NET_ADMIN); \
         bytes a socket moves after the last `ss` read are not counted"
    )]
    Bind(io::Error),
    #[error("starting the destroy-event reader thread: {0}")]
    Thread(io::Error),
    #[error("sock_diag destroy events exist only on Linux")]
    Unsupported,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    crate::supervise::lock(m, "sock_diag destroy events")
}

impl DestroyListener {
    /// Join the four destroy groups of this network namespace and start
    /// reading them.
    #[cfg(not(target_os = "linux"))]
    pub fn start() -> Result<Self, ListenError> {
        Err(ListenError::Unsupported)
    }

    /// Join the four destroy groups of this network namespace and start
    /// reading them.
    #[cfg(target_os = "linux")]
    pub fn start() -> Result<Self, ListenError> {
        use rustix::net::{self, netlink, sockopt, AddressFamily, SocketFlags, SocketType};
        let fd = net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .map_err(|e| ListenError::Socket(e.into()))?;
        // As root the limit rmem_max does not apply; otherwise take what is allowed.
        if sockopt::set_socket_recv_buffer_size_force(&fd, RCVBUF_BYTES).is_err() {
            let _ = sockopt::set_socket_recv_buffer_size(&fd, RCVBUF_BYTES);
        }
        net::bind(
            &fd,
            &netlink::SocketAddrNetlink::new(0, DESTROY_GROUPS_MASK),
        )
        .map_err(|e| ListenError::Bind(e.into()))?;
        // A second socket for lookups (replies must not mix with events).
        let query = net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )
        .and_then(|q| {
            sockopt::set_socket_timeout(&q, sockopt::Timeout::Recv, Some(QUERY_TIMEOUT))?;
            Ok(q)
        })
        .map_err(|e| ListenError::Socket(e.into()))?;
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        let shared = Arc::new(Shared {
            reader: Mutex::new(Reader {
                events: fd,
                query,
                // One message per datagram; a tcp_info message is well under 1 KiB.
                buf: vec![0u8; 64 * 1024],
                reply: vec![0u8; 8 * 1024],
                seq: 0,
                failed: false,
            }),
            queue: Mutex::new(Queue::default()),
            stop: AtomicBool::new(false),
        });
        let thread = crate::supervise::Worker::spawn(
            "ss_destroy",
            "ss-destroy-events",
            crate::supervise::Policy::Restart,
            {
                let shared = Arc::clone(&shared);
                move || {
                    // A restart tries the socket again.
                    lock(&shared.reader).failed = false;
                    while !shared.stop.load(Ordering::Relaxed) {
                        crate::supervise::fault::point("ss_destroy");
                        let mut pfd = libc::pollfd {
                            fd: raw,
                            events: libc::POLLIN,
                            revents: 0,
                        };
                        // SAFETY: one valid pollfd; `shared.reader` keeps the
                        // socket open for the life of this thread. Wakes up
                        // now and then to notice `stop`.
                        unsafe { libc::poll(&mut pfd, 1, 200) };
                        if !shared.read_available() {
                            return Err("reading the sock_diag destroy events failed".into());
                        }
                    }
                    Ok(())
                }
            },
        )
        .map_err(ListenError::Thread)?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Take the queued events (reading what the kernel has sent so far
    /// first), and the events lost since the start.
    pub fn drain(&self) -> (Vec<DestroyEvent>, u64) {
        self.shared.read_available();
        let mut q = lock(&self.shared.queue);
        (std::mem::take(&mut q.events), q.lost)
    }
}

impl Drop for DestroyListener {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Stops restarts and joins.
        drop(self.thread.take());
    }
}

impl Shared {
    /// Read and queue every event waiting in the socket, without blocking.
    /// `false` once reading has failed for good.
    #[cfg(target_os = "linux")]
    fn read_available(&self) -> bool {
        let mut reader = lock(&self.reader);
        let r = &mut *reader;
        if r.failed {
            return false;
        }
        while let Some(read) = r.read_one() {
            let mut q = lock(&self.queue);
            match read {
                Ok((decoded, lost)) => {
                    q.lost += lost + decoded.malformed + decoded.overruns;
                    let dropped = crate::source::append_bounded(
                        &mut q.events,
                        decoded.events,
                        MAX_QUEUED_EVENTS,
                    );
                    q.lost += dropped;
                    crate::drops::dropped("ss_destroy_queue", MAX_QUEUED_EVENTS, dropped);
                }
                Err(e) => {
                    log::warn!("ss: reading sock_diag destroy events failed: {e}");
                    r.failed = true;
                    return false;
                }
            }
        }
        true
    }

    #[cfg(not(target_os = "linux"))]
    fn read_available(&self) -> bool {
        false
    }
}

#[cfg(target_os = "linux")]
impl Reader {
    /// One datagram, decoded, and how many events it lost; `None` when
    /// nothing is waiting.
    fn read_one(&mut self) -> Option<Result<(Decoded, u64), rustix::io::Errno>> {
        use rustix::io::Errno;
        use rustix::net::{recv, RecvFlags};
        loop {
            let (mut decoded, lost) = match recv(
                &self.events,
                &mut self.buf[..],
                RecvFlags::TRUNC | RecvFlags::DONTWAIT,
            ) {
                Ok((_, n)) if n > self.buf.len() => (Decoded::default(), 1),
                Ok((got, _)) => (decode(self.buf.get(..got).unwrap_or_default()), 0),
                Err(Errno::NOBUFS) => (Decoded::default(), 1),
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return None,
                Err(e) => return Some(Err(e)),
            };
            for ev in &mut decoded.events {
                let received = ev.tcp.and_then(|t| t.bytes_received).unwrap_or(0);
                if ev.protocol == Protocol::Tcp && ev.rqueue == 0 && received > 0 {
                    self.seq = self.seq.wrapping_add(1);
                    ev.successor_in_fin_wait2 =
                        successor_in_fin_wait2(&self.query, ev, self.seq, &mut self.reply);
                }
            }
            return Some(Ok((decoded, lost)));
        }
    }
}

/// How long a successor lookup may take.
#[cfg(target_os = "linux")]
const QUERY_TIMEOUT: Duration = Duration::from_millis(50);

/// Whether the time-wait successor of `ev` is in `FIN-WAIT-2` now. Only
/// asked for a TCP socket with no unread sequence space (an unread FIN
/// would show in `rqueue`) that received something.
#[cfg(target_os = "linux")]
fn successor_in_fin_wait2(query: &OwnedFd, ev: &DestroyEvent, seq: u32, buf: &mut [u8]) -> bool {
    use rustix::net::{netlink::SocketAddrNetlink, recv, sendto, RecvFlags, SendFlags};
    let Some(msg) = successor_query(ev, seq) else {
        return false;
    };
    if sendto(
        query,
        &msg,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )
    .is_err()
    {
        return false;
    }
    // Skip stale replies to earlier lookups that timed out.
    for _ in 0..4 {
        match recv(query, &mut *buf, RecvFlags::empty()) {
            Ok((n, _)) => {
                let reply = buf.get(..n).unwrap_or_default();
                if u32_ne(reply, 8) == Some(seq) {
                    return successor_state(reply, seq) == Some(TCP_FIN_WAIT2);
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One destroy message as the kernel lays it out.
    fn message(family: u8, proto: Option<u8>, info: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![0u8; INET_DIAG_MSG_LEN];
        body[0] = family;
        body[1] = 7; // TCP_CLOSE
        body[4..6].copy_from_slice(&8080u16.to_be_bytes());
        body[6..8].copy_from_slice(&40000u16.to_be_bytes());
        if family == AF_INET {
            body[8..12].copy_from_slice(&[127, 0, 0, 1]);
            body[24..28].copy_from_slice(&[127, 0, 0, 2]);
        } else {
            body[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
            body[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        }
        body[44..48].copy_from_slice(&0x1234u32.to_ne_bytes());
        body[48..52].copy_from_slice(&0x5u32.to_ne_bytes());
        body[56..60].copy_from_slice(&1u32.to_ne_bytes());
        if let Some(p) = proto {
            body.extend_from_slice(&5u16.to_ne_bytes());
            body.extend_from_slice(&INET_DIAG_PROTOCOL.to_ne_bytes());
            body.extend_from_slice(&[p, 0, 0, 0]);
        }
        if let Some(i) = info {
            // The kernel pads 64-bit attributes with an INET_DIAG_PAD first.
            body.extend_from_slice(&4u16.to_ne_bytes());
            body.extend_from_slice(&8u16.to_ne_bytes());
            body.extend_from_slice(&((4 + i.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&INET_DIAG_INFO.to_ne_bytes());
            body.extend_from_slice(i);
            body.resize(align4(body.len()), 0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&body);
        m
    }

    fn tcp_info(received: u64, sent: u64, retrans: u64) -> Vec<u8> {
        let mut i = vec![0u8; 232];
        i[TCPI_BYTES_RECEIVED..TCPI_BYTES_RECEIVED + 8].copy_from_slice(&received.to_ne_bytes());
        i[TCPI_BYTES_SENT..TCPI_BYTES_SENT + 8].copy_from_slice(&sent.to_ne_bytes());
        i[TCPI_BYTES_RETRANS..TCPI_BYTES_RETRANS + 8].copy_from_slice(&retrans.to_ne_bytes());
        // One segment per 1000 retransmitted bytes.
        i[TCPI_TOTAL_RETRANS..TCPI_TOTAL_RETRANS + 4]
            .copy_from_slice(&((retrans / 1000) as u32).to_ne_bytes());
        i
    }

    proptest::proptest! {
        /// Any bytes, and any single-byte change to a valid message: no
        /// panic, and never more events than messages.
        #[test]
        fn prop_destroy_decode_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            at in 0usize..400,
            value in proptest::prelude::any::<u8>(),
        ) {
            let _ = decode(&bytes);
            let mut m = message(AF_INET6, Some(IPPROTO_TCP), Some(&tcp_info(5, 6, 1)));
            let i = at % m.len();
            m[i] = value;
            let d = decode(&m);
            proptest::prop_assert!(d.events.len() <= 1);
        }
    }

    #[test]
    fn destroy_decodes_tcp_v4_and_v6_with_final_counters() {
        let info = tcp_info(123_457, 54_321, 21_000);
        let mut buf = message(AF_INET, Some(IPPROTO_TCP), Some(&info));
        buf.extend(message(AF_INET6, Some(IPPROTO_TCP), Some(&info)));
        let d = decode(&buf);
        assert_eq!((d.malformed, d.overruns, d.events.len()), (0, 0, 2));
        let e = &d.events[0];
        assert_eq!(e.protocol, Protocol::Tcp);
        assert_eq!(e.cookie, 0x5_0000_1234);
        assert_eq!(e.local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e.remote, Some("127.0.0.2:40000".parse().unwrap()));
        assert_eq!(e.rqueue, 1);
        let t = e.tcp.unwrap();
        assert_eq!(
            (
                t.bytes_received,
                t.bytes_sent,
                t.bytes_retrans,
                t.total_retrans
            ),
            (Some(123_457), Some(54_321), Some(21_000), Some(21))
        );
        assert_eq!(d.events[1].local, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn destroy_successor_lookup_request_and_reply() {
        let d = decode(&message(
            AF_INET6,
            Some(IPPROTO_TCP),
            Some(&tcp_info(1, 2, 0)),
        ));
        let q = successor_query(&d.events[0], 7).unwrap();
        assert_eq!(q.len(), NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN);
        assert_eq!(u32_ne(&q, 0), Some(q.len() as u32));
        assert_eq!((q[16], q[17]), (AF_INET6, IPPROTO_TCP));
        assert_eq!(port_be(&q, 24), Some(8080));
        assert_eq!(port_be(&q, 26), Some(40000));
        assert_eq!(&q[64..72], &[0xff; 8]);
        // A reply: the message header with our seq, then the state byte.
        let mut r = message(AF_INET, Some(IPPROTO_TCP), None);
        r[8..12].copy_from_slice(&7u32.to_ne_bytes());
        r[NLMSG_HDRLEN + 1] = TCP_FIN_WAIT2;
        assert_eq!(successor_state(&r, 7), Some(TCP_FIN_WAIT2));
        assert_eq!(successor_state(&r, 8), None, "another lookup's reply");
        assert_eq!(successor_state(&r[..10], 7), None);
        r[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert_eq!(successor_state(&r, 7), None, "no such socket");
        // No peer, or mixed families: no lookup.
        let mut ev = d.events[0].clone();
        ev.remote = None;
        assert_eq!(successor_query(&ev, 1), None);
    }

    #[test]
    fn destroy_udp_has_no_counters_and_other_protocols_are_ignored() {
        let d = decode(&message(AF_INET, Some(IPPROTO_UDP), None));
        assert_eq!(d.events.len(), 1);
        assert_eq!(
            (d.events[0].protocol, d.events[0].tcp),
            (Protocol::Udp, None)
        );
        // UDP-Lite: not an error, not an event.
        let d = decode(&message(AF_INET, Some(136), None));
        assert_eq!((d.events.len(), d.malformed), (0, 0));
    }

    #[test]
    fn destroy_short_tcp_info_gives_only_the_counters_it_holds() {
        // A 4.18 kernel's tcp_info ends before bytes_sent.
        let info = &tcp_info(10, 20, 0)[..192];
        let d = decode(&message(AF_INET, Some(IPPROTO_TCP), Some(info)));
        let t = d.events[0].tcp.unwrap();
        assert_eq!((t.bytes_received, t.bytes_sent), (Some(10), None));
        assert_eq!(t.total_retrans, Some(0));
    }

    #[test]
    fn destroy_malformed_input_is_counted_never_panics() {
        let good = message(AF_INET, Some(IPPROTO_TCP), Some(&tcp_info(1, 2, 0)));
        // Every truncation of a valid message.
        for cut in 0..good.len() {
            let d = decode(&good[..cut]);
            assert!(d.events.is_empty(), "cut at {cut}");
            assert_eq!(d.malformed, u64::from(cut > 0), "cut at {cut}");
        }
        // Header length beyond the buffer, and below the header size.
        let mut bad = good.clone();
        bad[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(decode(&bad).malformed, 1);
        bad[..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(decode(&bad).malformed, 1);
        // An attribute longer than the message.
        let mut bad = good.clone();
        let attr = NLMSG_HDRLEN + INET_DIAG_MSG_LEN;
        bad[attr..attr + 2].copy_from_slice(&0xfff0u16.to_ne_bytes());
        assert_eq!(decode(&bad).malformed, 1);
        // A zero-length attribute (would loop forever if accepted).
        bad[attr..attr + 2].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(decode(&bad).malformed, 1);
        // Unknown family; no protocol attribute.
        assert_eq!(decode(&message(1, Some(IPPROTO_TCP), None)).malformed, 1);
        assert_eq!(decode(&message(AF_INET, None, None)).malformed, 1);
        // Overrun and unknown message types.
        let mut m = vec![0u8; 16];
        m[..4].copy_from_slice(&16u32.to_ne_bytes());
        m[4..6].copy_from_slice(&NLMSG_OVERRUN.to_ne_bytes());
        let d = decode(&m);
        assert_eq!((d.overruns, d.malformed), (1, 0));
        m[4..6].copy_from_slice(&999u16.to_ne_bytes());
        assert_eq!(decode(&m).malformed, 1);
        // A message of unknown type is skipped; the next one is still read.
        let mut two = m.clone();
        two.extend(&good);
        let d = decode(&two);
        assert_eq!((d.malformed, d.events.len()), (1, 1));
        // Random bytes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let len = (x % 300) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
    }
}
