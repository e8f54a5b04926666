//! The joiner ([`FlowJoiner`]): turns the flow counters drained on each
//! read into cumulative per-socket samples, by the socket tables of the
//! scans. Pure: it is given the tables and a locality test, so it is
//! tested without a capture.
//!
//! It must never drop a byte silently: a side of a flow with no socket is a
//! socket-less sample (`pid: None`) when its address is local, else counted
//! as not local; past [`MAX_UNOWNED_FLOWS`] socket-less flows per read are
//! summed into one row per protocol. It never keeps more than
//! `MAX_OWNERS` remembered owners.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::flows::{FlowCount, FlowKey};
use crate::procinfo::sockets::{SocketEntry, SocketTable};
use crate::source::{CountOrigin, Protocol, SocketId, SocketSample};

/// Socket-less flows given a row of their own per read; the bytes of the
/// others are summed into one row per protocol ([`SocketKey::Overflow`]).
pub const MAX_UNOWNED_FLOWS: usize = 1_024;

/// Which socket a side of a flow belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SocketKey {
    /// The socket-less flows past [`MAX_UNOWNED_FLOWS`] of one read.
    Overflow(Protocol),
    /// A socket of the table, or one a scan saw and that is gone now.
    Inode(u64),
    /// A local endpoint of a socket no scan saw.
    Flow {
        protocol: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
    },
}

#[derive(Debug, Clone)]
struct Counted {
    id: SocketId,
    protocol: Protocol,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    state: &'static str,
    pid: Option<u32>,
    comm: Option<String>,
    rx_bytes: u64,
    tx_bytes: u64,
    /// Bytes were credited on the current read.
    active: bool,
}

impl Counted {
    fn refresh(&mut self, e: &SocketEntry) {
        self.local = e.local;
        self.remote = e.remote;
        self.state = e.state;
        if let Some(o) = &e.owner {
            self.pid = Some(o.pid);
            self.comm = Some(o.comm.clone());
        }
    }

    fn own(&mut self, m: &Remembered) {
        if self.pid.is_none() {
            self.pid = Some(m.pid);
            self.comm = Some(m.comm.clone());
        }
    }
}

/// The owner a scan saw for a socket, kept after the socket is gone.
#[derive(Debug, Clone)]
struct Remembered {
    inode: u64,
    pid: u32,
    comm: String,
    /// The last read whose scans saw the socket.
    seen: u64,
    /// The read in which its flow was seen ending (FIN or RST).
    ended: Option<u64>,
}

/// An owner is kept this many reads after its flow ended (late packets of
/// the other direction, capture lag).
const END_GRACE_READS: u64 = 3;
/// An owner whose socket no scan saw and whose flow did not end is kept
/// this many reads (a lost FIN, a connected UDP socket closed).
const IDLE_READS: u64 = 60;
/// Owners kept at most; the least recently seen go first.
const MAX_OWNERS: usize = 1 << 18;

/// Where the joiner's bytes went, since the source started.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct JoinStats {
    pub(super) unowned_bytes: u64,
    pub(super) remembered_owner_bytes: u64,
    pub(super) listener_owner_bytes: u64,
    pub(super) not_local_bytes: u64,
}

/// Turns drained flow counters into cumulative per-socket counters. Pure:
/// it is given the socket tables and a locality test, so it is tested
/// without a capture.
///
/// A side of a flow belongs, in order, to: the socket of the current table
/// with its 5-tuple; the one of the previous table (closed since); the
/// socket a scan saw with that 5-tuple, whose owner is remembered until its
/// flow ends (FIN/RST) plus [`END_GRACE_READS`]; for TCP, the owner of the
/// listening socket on its local address and port (an accepted connection
/// that closed before any scan saw it); else a socket-less flow with no
/// owner, counted in [`JoinStats::unowned_bytes`] (if its address is local;
/// forwarded traffic is counted in [`JoinStats::not_local_bytes`]).
#[derive(Debug, Default)]
pub(super) struct FlowJoiner {
    sockets: HashMap<SocketKey, Counted>,
    previous: SocketTable,
    owners: HashMap<(Protocol, SocketAddr, SocketAddr), Remembered>,
    listeners: HashMap<(Protocol, SocketAddr), Remembered>,
    reads: u64,
    next_id: u64,
    pub(super) stats: JoinStats,
    /// Socket-less flows given a row of their own in this read.
    unowned: usize,
    /// Socket-less flow sides summed into an overflow row in this read.
    folded: u64,
}

#[derive(Clone, Copy)]
enum Side {
    Tx,
    Rx,
}

impl FlowJoiner {
    /// One read: `learned` are sockets seen by rescans since the previous
    /// read, `table` the read's own scan.
    pub(super) fn apply(
        &mut self,
        flows: &HashMap<FlowKey, FlowCount>,
        learned: Vec<SocketEntry>,
        table: SocketTable,
        is_local: impl Fn(IpAddr) -> bool,
    ) -> Vec<SocketSample> {
        self.reads += 1;
        self.unowned = 0;
        for c in self.sockets.values_mut() {
            c.active = false;
        }
        for e in learned.iter().chain(table.entries()) {
            self.learn(e);
        }
        for e in table.entries().iter().filter(|e| e.inode != 0) {
            let c = self.counted(SocketKey::Inode(e.inode), e.protocol, e.local, e.remote);
            c.refresh(e);
        }
        for (f, c) in flows {
            if c.bytes == 0 {
                continue;
            }
            let opened = c.opened || flows.get(&reverse(f)).is_some_and(|r| r.opened);
            self.credit(
                &table,
                f.protocol,
                f.src,
                f.dst,
                Side::Tx,
                c.bytes,
                opened,
                &is_local,
            );
            self.credit(
                &table,
                f.protocol,
                f.dst,
                f.src,
                Side::Rx,
                c.bytes,
                opened,
                &is_local,
            );
        }

        let mut samples = Vec::with_capacity(self.sockets.len());
        let mut gone = Vec::new();
        for (key, c) in &self.sockets {
            let closed = match key {
                SocketKey::Inode(inode) => table.by_inode(*inode).is_none(),
                SocketKey::Flow { .. } | SocketKey::Overflow(_) => !c.active,
            };
            if closed {
                gone.push(*key);
            }
            samples.push(SocketSample {
                id: c.id,
                protocol: c.protocol,
                local: (!matches!(key, SocketKey::Overflow(_))).then_some(c.local),
                remote: c.remote.filter(|_| !matches!(key, SocketKey::Overflow(_))),
                state: if closed { "CLOSED" } else { c.state }.into(),
                pid: c.pid,
                comm: c.comm.as_deref().map(Into::into),
                cgroup_id: None,
                rx_bytes: c.rx_bytes,
                tx_bytes: c.tx_bytes,
                rtt_us: None,
                tcp: None,
                closed,
                origin: CountOrigin::SinceAttach,
            });
        }
        for key in gone {
            self.sockets.remove(&key);
        }
        self.previous = table;
        // A flood's read left a big map: give the memory back.
        if self.sockets.capacity() > 4 * self.sockets.len() + 4_096 {
            self.sockets.shrink_to_fit();
        }
        self.forget(flows);
        crate::drops::dropped(
            "pcap_unowned_flows",
            MAX_UNOWNED_FLOWS,
            std::mem::take(&mut self.folded),
        );
        samples.sort_by_key(|s| s.id);
        samples
    }

    /// Remember the owner of a connected or listening socket a scan saw.
    fn learn(&mut self, e: &SocketEntry) {
        let Some(o) = e.owner.as_ref().filter(|_| e.inode != 0) else {
            return;
        };
        let fresh = |ended| Remembered {
            inode: e.inode,
            pid: o.pid,
            comm: o.comm.clone(),
            seen: self.reads,
            ended,
        };
        match e.remote {
            Some(remote) => {
                let key = (e.protocol, e.local, remote);
                let ended = self
                    .owners
                    .get(&key)
                    .filter(|m| m.inode == e.inode)
                    .and_then(|m| m.ended);
                self.owners.insert(key, fresh(ended));
            }
            None if e.protocol == Protocol::Tcp && e.state == "LISTEN" => {
                self.listeners.insert((e.protocol, e.local), fresh(None));
            }
            None => {}
        }
    }

    /// Expire remembered owners: flows that ended past the grace, sockets
    /// no scan saw for a long time, the oldest past the bound.
    fn forget(&mut self, flows: &HashMap<FlowKey, FlowCount>) {
        let now = self.reads;
        for f in flows.iter().filter(|(_, c)| c.ended).map(|(f, _)| f) {
            for key in [(f.protocol, f.src, f.dst), (f.protocol, f.dst, f.src)] {
                if let Some(m) = self.owners.get_mut(&key) {
                    m.ended.get_or_insert(now);
                }
            }
        }
        self.owners.retain(|_, m| match m.ended {
            Some(e) => now - e < END_GRACE_READS,
            None => now - m.seen < IDLE_READS,
        });
        self.listeners.retain(|_, m| now - m.seen < IDLE_READS);
        if self.owners.len() > MAX_OWNERS {
            let mut by_age: Vec<(u64, (Protocol, SocketAddr, SocketAddr))> =
                self.owners.iter().map(|(k, m)| (m.seen, *k)).collect();
            by_age.sort_unstable();
            let excess = self.owners.len() - MAX_OWNERS;
            crate::drops::dropped("pcap_owners", MAX_OWNERS, excess as u64);
            for (_, k) in by_age.into_iter().take(excess) {
                self.owners.remove(&k);
            }
        }
    }

    /// The listening TCP socket an accepted connection on `local` came
    /// from: bound to exactly `local`, else to the wildcard of its family,
    /// else to the IPv6 wildcard (dual-stack).
    fn listener(&self, local: SocketAddr) -> Option<&Remembered> {
        let port = local.port();
        let wildcard = if local.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        [
            local,
            SocketAddr::new(wildcard, port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ]
        .iter()
        .find_map(|a| self.listeners.get(&(Protocol::Tcp, *a)))
    }

    fn counted(
        &mut self,
        key: SocketKey,
        protocol: Protocol,
        local: SocketAddr,
        remote: Option<SocketAddr>,
    ) -> &mut Counted {
        let next_id = &mut self.next_id;
        self.sockets.entry(key).or_insert_with(|| {
            *next_id += 1;
            Counted {
                id: SocketId {
                    primary: *next_id,
                    secondary: match key {
                        SocketKey::Inode(i) => i,
                        SocketKey::Flow { .. } | SocketKey::Overflow(_) => 0,
                    },
                },
                protocol,
                local,
                remote,
                state: "UNKNOWN",
                pid: None,
                comm: None,
                rx_bytes: 0,
                tx_bytes: 0,
                active: false,
            }
        })
    }

    /// Credit `bytes` to the socket whose local end is `local` talking to
    /// `remote`. `opened`: the flow's SYN was seen in this read.
    #[allow(clippy::too_many_arguments)]
    fn credit(
        &mut self,
        table: &SocketTable,
        protocol: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
        side: Side,
        bytes: u64,
        opened: bool,
        is_local: &impl Fn(IpAddr) -> bool,
    ) {
        let live = |t: &SocketTable| {
            t.lookup(protocol, local, remote)
                .filter(|e| e.inode != 0)
                .map(|e| e.inode)
        };
        let now = self.reads;
        // A remembered owner of an earlier connection on this tuple does not
        // own a connection that opened after it ended.
        let remembered = self
            .owners
            .get(&(protocol, local, remote))
            .filter(|m| !(opened && m.ended.is_some_and(|e| e < now)))
            .cloned();
        let key = if let Some(inode) = live(table) {
            Some(SocketKey::Inode(inode))
        } else if let Some(inode) =
            live(&self.previous).filter(|i| self.sockets.contains_key(&SocketKey::Inode(*i)))
        {
            // Closed since the previous read: its last bytes are its own.
            Some(SocketKey::Inode(inode))
        } else {
            remembered.as_ref().map(|m| SocketKey::Inode(m.inode))
        };
        // A socket the scans saw without an owner (its fd closed between
        // reading /proc/net and the fd walk) is still owned as below.
        let owned = key
            .and_then(|k| self.sockets.get(&k))
            .is_some_and(|c| c.pid.is_some());
        let listener = match protocol {
            Protocol::Tcp => self.listener(local).cloned(),
            Protocol::Udp => None,
        };
        let (key, owner) = match (key, owned, remembered, listener) {
            (Some(k), true, ..) => (k, None),
            (Some(k), false, Some(m), _) => {
                self.stats.remembered_owner_bytes += bytes;
                (k, Some(m))
            }
            (k, false, _, Some(l)) => {
                self.stats.listener_owner_bytes += bytes;
                let k = k.unwrap_or(SocketKey::Flow {
                    protocol,
                    local,
                    remote,
                });
                (k, Some(l))
            }
            (Some(k), ..) => {
                self.stats.unowned_bytes += bytes;
                (k, None)
            }
            (None, ..) if is_local(local.ip()) => {
                self.stats.unowned_bytes += bytes;
                let k = SocketKey::Flow {
                    protocol,
                    local,
                    remote,
                };
                if self.sockets.contains_key(&k) {
                    (k, None)
                } else if self.unowned < MAX_UNOWNED_FLOWS {
                    self.unowned += 1;
                    (k, None)
                } else {
                    self.folded += 1;
                    (SocketKey::Overflow(protocol), None)
                }
            }
            (None, ..) => {
                self.stats.not_local_bytes += bytes;
                return;
            }
        };
        let c = self.counted(key, protocol, local, Some(remote));
        if let Some(m) = &owner {
            c.own(m);
        }
        c.active = true;
        match side {
            Side::Tx => c.tx_bytes += bytes,
            Side::Rx => c.rx_bytes += bytes,
        }
    }
}

fn reverse(f: &FlowKey) -> FlowKey {
    FlowKey {
        protocol: f.protocol,
        src: f.dst,
        dst: f.src,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procinfo::sockets::SocketOwner;
    use std::collections::HashSet;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn entry(
        protocol: Protocol,
        inode: u64,
        local: &str,
        remote: Option<&str>,
        pid: u32,
    ) -> SocketEntry {
        SocketEntry {
            protocol,
            inode,
            local: sa(local),
            remote: remote.map(sa),
            state: if remote.is_some() {
                "ESTABLISHED"
            } else {
                "UNCONN"
            },
            owner: Some(SocketOwner {
                pid,
                comm: format!("p{pid}"),
            }),
        }
    }

    fn flows(list: &[(Protocol, &str, &str, u64)]) -> HashMap<FlowKey, FlowCount> {
        list.iter()
            .map(|&(protocol, s, d, n)| {
                (
                    FlowKey {
                        protocol,
                        src: sa(s),
                        dst: sa(d),
                    },
                    FlowCount {
                        bytes: n,
                        ..FlowCount::default()
                    },
                )
            })
            .collect()
    }

    fn find<'a>(s: &'a [SocketSample], local: &str, remote: Option<&str>) -> &'a SocketSample {
        s.iter()
            .find(|x| x.local == Some(sa(local)) && x.remote == remote.map(sa))
            .unwrap_or_else(|| panic!("no sample {local} -> {remote:?} in {s:#?}"))
    }

    const A: &str = "127.0.0.1:40000";
    const B: &str = "127.0.0.1:8080";

    fn loopback_table() -> SocketTable {
        SocketTable::from_entries(vec![
            entry(Protocol::Tcp, 1, A, Some(B), 10),
            entry(Protocol::Tcp, 2, B, Some(A), 20),
            entry(Protocol::Udp, 3, "0.0.0.0:53", None, 30),
            entry(Protocol::Tcp, 4, "0.0.0.0:22", None, 40),
        ])
    }

    fn nothing_local(_: IpAddr) -> bool {
        false
    }

    #[test]
    fn loopback_flow_credits_sender_tx_and_receiver_rx() {
        let mut j = FlowJoiner::default();
        let f = flows(&[(Protocol::Tcp, A, B, 1000), (Protocol::Tcp, B, A, 30)]);
        let s = j.apply(&f, Vec::new(), loopback_table(), nothing_local);
        let client = find(&s, A, Some(B));
        assert_eq!((client.tx_bytes, client.rx_bytes), (1000, 30));
        assert_eq!(
            (client.pid, client.comm.as_deref()),
            (Some(10), Some("p10"))
        );
        assert_eq!(client.origin, CountOrigin::SinceAttach);
        let server = find(&s, B, Some(A));
        assert_eq!((server.tx_bytes, server.rx_bytes), (30, 1000));
        assert_eq!(server.pid, Some(20));
        // Every table socket is reported, idle ones with zero counters.
        let listener = find(&s, "0.0.0.0:22", None);
        assert_eq!(
            (listener.rx_bytes, listener.tx_bytes, listener.closed),
            (0, 0, false)
        );
        assert_eq!(s.len(), 4);

        // Cumulative across reads, same ids.
        let f = flows(&[(Protocol::Tcp, A, B, 5)]);
        let s2 = j.apply(&f, Vec::new(), loopback_table(), nothing_local);
        let client2 = find(&s2, A, Some(B));
        assert_eq!((client2.tx_bytes, client2.rx_bytes), (1005, 30));
        assert_eq!(client2.id, client.id);
    }

    #[test]
    fn unconnected_udp_is_found_by_port_and_sums_peers() {
        let mut j = FlowJoiner::default();
        let f = flows(&[
            (Protocol::Udp, "127.0.0.1:5000", "127.0.0.1:53", 40),
            (Protocol::Udp, "127.0.0.1:53", "127.0.0.1:5000", 100),
            (Protocol::Udp, "10.0.0.9:7000", "10.0.0.1:53", 33),
        ]);
        let s = j.apply(&f, Vec::new(), loopback_table(), |ip| ip.is_loopback());
        let srv = find(&s, "0.0.0.0:53", None);
        assert_eq!((srv.rx_bytes, srv.tx_bytes, srv.pid), (73, 100, Some(30)));
        // The client has no socket in the table but is local: a socket-less flow.
        let cli = find(&s, "127.0.0.1:5000", Some("127.0.0.1:53"));
        assert_eq!((cli.tx_bytes, cli.rx_bytes, cli.pid), (40, 100, None));
        // The remote 10.0.0.9 is not local: no sample for its side.
        assert!(!s.iter().any(|x| x.local == Some(sa("10.0.0.9:7000"))));
        // The socket-less flow closes when it goes idle, and is then forgotten.
        let s = j.apply(&HashMap::new(), Vec::new(), loopback_table(), |ip| {
            ip.is_loopback()
        });
        let cli = find(&s, "127.0.0.1:5000", Some("127.0.0.1:53"));
        assert!(cli.closed);
        assert_eq!(cli.tx_bytes, 40);
        let s = j.apply(&HashMap::new(), Vec::new(), loopback_table(), |ip| {
            ip.is_loopback()
        });
        assert!(!s.iter().any(|x| x.local == Some(sa("127.0.0.1:5000"))));
    }

    #[test]
    fn socket_closed_since_last_read_gets_its_final_bytes_then_is_forgotten() {
        let mut j = FlowJoiner::default();
        j.apply(
            &flows(&[(Protocol::Tcp, A, B, 10)]),
            Vec::new(),
            loopback_table(),
            nothing_local,
        );
        // Both ends closed before this read; their last bytes still arrive.
        let after =
            SocketTable::from_entries(vec![entry(Protocol::Tcp, 4, "0.0.0.0:22", None, 40)]);
        let s = j.apply(
            &flows(&[(Protocol::Tcp, A, B, 7), (Protocol::Tcp, B, A, 3)]),
            Vec::new(),
            after.clone(),
            nothing_local,
        );
        let client = find(&s, A, Some(B));
        assert!(client.closed);
        assert_eq!(client.state, "CLOSED");
        assert_eq!(
            (client.tx_bytes, client.rx_bytes, client.pid),
            (17, 3, Some(10))
        );
        let server = find(&s, B, Some(A));
        assert_eq!(
            (server.tx_bytes, server.rx_bytes, server.closed),
            (3, 17, true)
        );
        let s = j.apply(&HashMap::new(), Vec::new(), after, nothing_local);
        assert_eq!(s.len(), 1);
    }

    fn listening(inode: u64, local: &str, pid: u32) -> SocketEntry {
        SocketEntry {
            state: "LISTEN",
            ..entry(Protocol::Tcp, inode, local, None, pid)
        }
    }

    fn sample_of(s: &[SocketSample], local: &str, remote: &str) -> (u64, u64, Option<u32>, bool) {
        let x = find(s, local, Some(remote));
        (x.tx_bytes, x.rx_bytes, x.pid, x.closed)
    }

    #[test]
    fn closed_sockets_keep_their_remembered_owner_for_late_bytes() {
        let mut j = FlowJoiner::default();
        let both = SocketTable::from_entries(vec![
            entry(Protocol::Tcp, 1, A, Some(B), 10),
            entry(Protocol::Tcp, 2, B, Some(A), 20),
        ]);
        j.apply(&HashMap::new(), Vec::new(), both, nothing_local);
        // Both closed; their bytes arrive over two reads (capture lag).
        let f = flows(&[(Protocol::Tcp, A, B, 100), (Protocol::Tcp, B, A, 50)]);
        let s = j.apply(&f, Vec::new(), SocketTable::default(), nothing_local);
        assert_eq!(sample_of(&s, A, B), (100, 50, Some(10), true));
        assert_eq!(sample_of(&s, B, A), (50, 100, Some(20), true));
        let f = flows(&[(Protocol::Tcp, B, A, 7)]);
        let s = j.apply(&f, Vec::new(), SocketTable::default(), nothing_local);
        assert_eq!(sample_of(&s, A, B), (0, 7, Some(10), true));
        assert_eq!(sample_of(&s, B, A), (7, 0, Some(20), true));
        assert_eq!(j.stats.remembered_owner_bytes, 14);
        assert_eq!(j.stats.unowned_bytes, 0);
    }

    #[test]
    fn sockets_only_a_rescan_saw_are_owned() {
        let mut j = FlowJoiner::default();
        let learned = vec![entry(Protocol::Tcp, 5, A, Some(B), 10)];
        let f = flows(&[(Protocol::Tcp, A, B, 30)]);
        let s = j.apply(&f, learned, SocketTable::default(), |ip| ip.is_loopback());
        assert_eq!(sample_of(&s, A, B), (30, 0, Some(10), true));
        // The server side was never seen and no listener explains it.
        assert_eq!(sample_of(&s, B, A), (0, 30, None, false));
        assert_eq!(j.stats.unowned_bytes, 30);
    }

    #[test]
    fn accepted_connections_no_scan_saw_belong_to_the_listener() {
        let mut j = FlowJoiner::default();
        let c6 = "127.0.0.1:40001";
        let s6 = "127.0.0.1:9090";
        let table = SocketTable::from_entries(vec![
            listening(7, "0.0.0.0:8080", 20),
            // Dual-stack: an IPv6 wildcard listener accepts IPv4 too.
            listening(8, "[::]:9090", 30),
            // Seen by the scan, but its fd was already closed: no owner.
            SocketEntry {
                owner: None,
                ..entry(
                    Protocol::Tcp,
                    9,
                    "127.0.0.1:8080",
                    Some("127.0.0.1:40002"),
                    0,
                )
            },
        ]);
        let f = flows(&[
            (Protocol::Tcp, A, B, 100),
            (Protocol::Tcp, B, A, 1000),
            (Protocol::Tcp, c6, s6, 5),
            (Protocol::Tcp, "127.0.0.1:8080", "127.0.0.1:40002", 3),
        ]);
        let s = j.apply(&f, Vec::new(), table, |ip| ip.is_loopback());
        assert_eq!(sample_of(&s, B, A), (1000, 100, Some(20), false));
        assert_eq!(sample_of(&s, s6, c6), (0, 5, Some(30), false));
        let orphan = find(&s, "127.0.0.1:8080", Some("127.0.0.1:40002"));
        assert_eq!((orphan.tx_bytes, orphan.pid), (3, Some(20)));
        assert_eq!(orphan.id.secondary, 9, "still the scanned socket's row");
        // The clients had no socket any scan saw: counted, without owner.
        assert_eq!(sample_of(&s, A, B), (100, 1000, None, false));
        assert_eq!(j.stats.listener_owner_bytes, 1108);
        assert_eq!(j.stats.unowned_bytes, 1108);
    }

    #[test]
    fn remembered_owners_expire_after_the_flow_ends_and_never_own_a_new_connection() {
        let mut j = FlowJoiner::default();
        let learned = vec![entry(Protocol::Tcp, 5, A, Some(B), 10)];
        let mut f = flows(&[(Protocol::Tcp, A, B, 1)]);
        f.values_mut().for_each(|c| c.ended = true);
        let s = j.apply(&f, learned, SocketTable::default(), nothing_local);
        assert_eq!(find(&s, A, Some(B)).pid, Some(10));
        // Late bytes within the grace still have the owner...
        let s = j.apply(
            &flows(&[(Protocol::Tcp, A, B, 2)]),
            Vec::new(),
            SocketTable::default(),
            nothing_local,
        );
        assert_eq!(find(&s, A, Some(B)).pid, Some(10));
        // ...but a new connection on the same tuple (its SYN seen) does not.
        let mut f = flows(&[(Protocol::Tcp, A, B, 3)]);
        f.values_mut().for_each(|c| c.opened = true);
        let s = j.apply(&f, Vec::new(), SocketTable::default(), |ip| {
            ip.is_loopback()
        });
        assert_eq!(find(&s, A, Some(B)).pid, None);
        for _ in 0..END_GRACE_READS {
            j.apply(
                &HashMap::new(),
                Vec::new(),
                SocketTable::default(),
                nothing_local,
            );
        }
        assert!(
            j.owners.is_empty(),
            "forgotten after the grace: {:?}",
            j.owners
        );
        // Owners whose flow never ended are forgotten after IDLE_READS.
        let learned = vec![entry(Protocol::Tcp, 6, A, Some(B), 10)];
        j.apply(
            &HashMap::new(),
            learned,
            SocketTable::default(),
            nothing_local,
        );
        for _ in 0..IDLE_READS {
            assert_eq!(j.owners.len(), 1);
            j.apply(
                &HashMap::new(),
                Vec::new(),
                SocketTable::default(),
                nothing_local,
            );
        }
        assert!(j.owners.is_empty());
    }

    #[test]
    fn ids_are_unique_and_a_reused_tuple_gets_a_new_id() {
        let mut j = FlowJoiner::default();
        let s1 = j.apply(&HashMap::new(), Vec::new(), loopback_table(), nothing_local);
        let ids: HashSet<_> = s1.iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), s1.len());
        // Same 5-tuple, new socket (new inode).
        let t = SocketTable::from_entries(vec![entry(Protocol::Tcp, 99, A, Some(B), 10)]);
        let s2 = j.apply(
            &flows(&[(Protocol::Tcp, A, B, 1)]),
            Vec::new(),
            t,
            nothing_local,
        );
        let new = s2.iter().find(|s| s.id.secondary == 99).unwrap();
        assert!(!ids.contains(&new.id));
        assert_eq!(new.tx_bytes, 1);
    }

    #[test]
    fn socket_less_flows_past_the_cap_are_summed_into_one_row_per_protocol() {
        let mut j = FlowJoiner::default();
        let before = crate::drops::total("pcap_unowned_flows");
        let list: Vec<(Protocol, String, String, u64)> = (0..5_000u32)
            .map(|i| {
                (
                    Protocol::Udp,
                    format!("127.10.{}.{}:5353", i >> 8, i & 0xff),
                    "127.0.0.1:53".to_string(),
                    100,
                )
            })
            .collect();
        let refs: Vec<(Protocol, &str, &str, u64)> = list
            .iter()
            .map(|(p, a, b, n)| (*p, a.as_str(), b.as_str(), *n))
            .collect();
        let samples = j.apply(
            &flows(&refs),
            Vec::new(),
            SocketTable::from_entries(Vec::new()),
            |ip| ip.is_loopback(),
        );
        // Each flow has two local sides: 10,000 sides, 1,024 rows of their
        // own, the other 8,976 summed into one row.
        assert_eq!(samples.len(), MAX_UNOWNED_FLOWS + 1);
        let (rx, tx) = samples
            .iter()
            .fold((0, 0), |a, s| (a.0 + s.rx_bytes, a.1 + s.tx_bytes));
        assert_eq!((rx, tx), (500_000, 500_000), "every byte kept");
        let overflow: Vec<_> = samples.iter().filter(|s| s.local.is_none()).collect();
        assert_eq!(overflow.len(), 1);
        assert_eq!(overflow[0].rx_bytes + overflow[0].tx_bytes, 8_976 * 100);
        assert_eq!(crate::drops::total("pcap_unowned_flows") - before, 8_976);
    }
}
