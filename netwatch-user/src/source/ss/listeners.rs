//! The TCP listeners of one `ss` read, indexed by port and address, so the
//! owner of a connected socket nobody saw alive (a destroy event of a socket
//! opened and closed between two reads, or a live one `ss -p` listed without
//! owner) is one hash lookup per event instead of a scan of every listener
//! (a scan per close event is quadratic on a host with many listeners under
//! a flood of short connections).
//!
//! The rule ([`owner_of`]): the listeners that could have accepted the
//! socket are those on its local port whose address is the socket's, the
//! wildcard (`0.0.0.0`, `::`), or, for a socket with an IPv4-mapped IPv6
//! address, that IPv4 address. The socket gets an owner only when every such
//! listener (of every read asked) names one single process; it gets the
//! owner of the first such listener in read order (this read's first, then
//! the last read's). This module only answers that question; it never
//! decides when listeners are read or forgotten. [`owner_of_by_scan`] is the
//! same rule as a scan, kept as the reference the index is tested and
//! measured against.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::destroy::DestroyEvent;
use super::parse::ParseOutcome;
use crate::source::Protocol;

/// The process a socket belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub pid: u32,
    pub comm: Arc<str>,
    pub cgroup_id: Option<u64>,
}

/// A TCP listener's address and, when all its owners are one process, that process.
pub type Listener = (SocketAddr, Option<Owned>);

/// What the listeners on one (port, address) say about an owner.
#[derive(Debug, Clone, Default)]
enum Agreement {
    /// No listener.
    #[default]
    Empty,
    /// Every listener names the process `owner`; `first` is the position
    /// (in read order) of the first of them.
    One { first: usize, owner: Owned },
    /// A listener with no single owner, or two listeners of two processes.
    Conflict,
}

impl Agreement {
    /// Both sets of listeners together; on agreement, the owner listed
    /// first (the lower position; `self` before `other` on a tie).
    fn and(self, other: &Agreement) -> Agreement {
        match (self, other) {
            (Agreement::Conflict, _) | (_, Agreement::Conflict) => Agreement::Conflict,
            (Agreement::Empty, o) => o.clone(),
            (a, Agreement::Empty) => a,
            (
                Agreement::One { first, owner },
                Agreement::One {
                    first: f2,
                    owner: o2,
                },
            ) => {
                if owner.pid != o2.pid {
                    Agreement::Conflict
                } else if *f2 < first {
                    Agreement::One {
                        first: *f2,
                        owner: o2.clone(),
                    }
                } else {
                    Agreement::One { first, owner }
                }
            }
        }
    }

    fn add(&mut self, at: usize, owner: &Option<Owned>) {
        let one = match owner {
            Some(o) => Agreement::One {
                first: at,
                owner: o.clone(),
            },
            None => Agreement::Conflict,
        };
        *self = std::mem::take(self).and(&one);
    }

    fn owner(self) -> Option<Owned> {
        match self {
            Agreement::One { owner, .. } => Some(owner),
            Agreement::Empty | Agreement::Conflict => None,
        }
    }
}

/// The listeners of one port.
#[derive(Debug, Clone, Default)]
struct Port {
    /// Listeners on `0.0.0.0` or `::`.
    wildcard: Agreement,
    /// Listeners on one address.
    by_ip: HashMap<IpAddr, Agreement>,
}

/// The TCP listeners of one read, in the order `ss` listed them, and their
/// index by port and address.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    list: Vec<Listener>,
    by_port: HashMap<u16, Port>,
}

impl Listeners {
    /// The TCP listeners of `outcome` (sockets in `LISTEN`), each with its
    /// owner when all its owners are one process; `cgroup_of` turns a
    /// listener's `cgroup:` path into an id.
    pub fn from_parsed(
        outcome: &ParseOutcome,
        cgroup_of: &mut dyn FnMut(&Option<String>) -> Option<u64>,
    ) -> Self {
        let mut out = Listeners::default();
        for sock in &outcome.sockets {
            if sock.protocol == Protocol::Tcp && sock.state == "LISTEN" {
                let owner = sock
                    .owner()
                    .filter(|o| sock.owners.iter().all(|x| x.pid == o.pid))
                    .map(|o| Owned {
                        pid: o.pid,
                        comm: o.name.as_str().into(),
                        cgroup_id: cgroup_of(&sock.cgroup_path),
                    });
                out.push(sock.local, owner);
            }
        }
        out
    }

    /// Add a listener after the others.
    pub fn push(&mut self, local: SocketAddr, owner: Option<Owned>) {
        let at = self.list.len();
        let port = self.by_port.entry(local.port()).or_default();
        if local.ip().is_unspecified() {
            port.wildcard.add(at, &owner);
        } else {
            port.by_ip.entry(local.ip()).or_default().add(at, &owner);
        }
        self.list.push((local, owner));
    }

    /// How many listeners.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The listeners in the order they were listed.
    pub fn list(&self) -> &[Listener] {
        &self.list
    }

    /// What the listeners that could have accepted a socket on `local` say.
    fn agreement(&self, local: SocketAddr) -> Agreement {
        let Some(port) = self.by_port.get(&local.port()) else {
            return Agreement::Empty;
        };
        let mut a = port.wildcard.clone();
        if let Some(same) = port.by_ip.get(&local.ip()) {
            a = a.and(same);
        }
        // A dual-stack listener's sockets have IPv4-mapped addresses.
        if let IpAddr::V6(v6) = local.ip() {
            if let Some(v4) = v6.to_ipv4_mapped() {
                if let Some(same) = port.by_ip.get(&IpAddr::V4(v4)) {
                    a = a.and(same);
                }
            }
        }
        a
    }
}

/// The owner of the TCP listener a never-seen connected socket was accepted
/// from, over the listeners of `reads` in that order (see the module doc).
pub fn owner_of(ev: &DestroyEvent, reads: &[&Listeners]) -> Option<Owned> {
    if ev.protocol != Protocol::Tcp || ev.remote.is_none() {
        return None;
    }
    let mut all = Agreement::Empty;
    let mut offset = 0;
    for l in reads {
        let mut a = l.agreement(ev.local);
        if let Agreement::One { first, .. } = &mut a {
            *first += offset;
        }
        all = all.and(&a);
        offset += l.len();
    }
    all.owner()
}

/// [`owner_of`] by scanning every listener (one pass per event): the
/// reference the index is tested and measured against, not used by the
/// source.
#[doc(hidden)]
pub fn owner_of_by_scan(ev: &DestroyEvent, reads: &[&Listeners]) -> Option<Owned> {
    if ev.protocol != Protocol::Tcp || ev.remote.is_none() {
        return None;
    }
    let same_ip = |l: &SocketAddr| {
        l.ip().is_unspecified() || l.ip() == ev.local.ip() || {
            match (l.ip(), ev.local.ip()) {
                (IpAddr::V4(a), IpAddr::V6(b)) => b.to_ipv4_mapped() == Some(a),
                _ => false,
            }
        }
    };
    let mut found: Option<Owned> = None;
    let all = reads.iter().flat_map(|l| l.list.iter());
    for (_, owner) in all.filter(|(a, _)| a.port() == ev.local.port() && same_ip(a)) {
        match (owner, &found) {
            (None, _) => return None,
            (Some(o), Some(f)) if o.pid != f.pid => return None,
            (Some(o), None) => found = Some(o.clone()),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ss::parse_ss;

    fn close(local: SocketAddr) -> DestroyEvent {
        DestroyEvent {
            protocol: Protocol::Tcp,
            cookie: 1,
            local,
            remote: Some("127.0.0.1:40000".parse().unwrap()),
            rqueue: 0,
            tcp: None,
            successor_in_fin_wait2: false,
        }
    }

    fn from_text(text: &str) -> Listeners {
        let mut n = 0;
        Listeners::from_parsed(&parse_ss(text), &mut |p| {
            // Distinct ids per cgroup path, so a wrong pick would show.
            p.as_ref().map(|_| {
                n += 1;
                n
            })
        })
    }

    /// Every local address worth asking about for these listeners: each
    /// listener's own, the other family's wildcard and loopback, mapped
    /// forms, and a port nobody listens on.
    fn probes(reads: &[&Listeners]) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for l in reads {
            for (a, _) in l.list() {
                let p = a.port();
                out.push(*a);
                for ip in [
                    "127.0.0.1",
                    "::1",
                    "10.1.2.3",
                    "::ffff:127.0.0.1",
                    "::ffff:10.1.2.3",
                ] {
                    out.push(SocketAddr::new(ip.parse().unwrap(), p));
                }
                if let IpAddr::V4(v4) = a.ip() {
                    out.push(SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), p));
                }
                out.push(SocketAddr::new(a.ip(), p.wrapping_add(1)));
            }
        }
        out
    }

    fn assert_same_answers(reads: &[&Listeners]) -> usize {
        let mut owned = 0;
        for local in probes(reads) {
            let ev = close(local);
            let (indexed, scanned) = (owner_of(&ev, reads), owner_of_by_scan(&ev, reads));
            assert_eq!(indexed, scanned, "close on {local}");
            owned += usize::from(indexed.is_some());
            let mut udp = ev.clone();
            udp.protocol = Protocol::Udp;
            assert_eq!(owner_of(&udp, reads), None);
            let mut unconnected = ev;
            unconnected.remote = None;
            assert_eq!(owner_of(&unconnected, reads), None);
        }
        owned
    }

    #[test]
    fn index_answers_as_the_scan_on_captured_ss_output() {
        for text in [
            include_str!("../../../testdata/ss/tunapie-loopback.txt"),
            include_str!("../../../testdata/ss/tunapi-loopback.txt"),
        ] {
            let l = from_text(text);
            assert!(!l.is_empty());
            let owned = assert_same_answers(&[&l]);
            assert!(owned > 0, "the fixture's listeners have owners");
            // Against itself as the last read, and an empty read.
            assert_same_answers(&[&l, &l]);
            assert_same_answers(&[&Listeners::default(), &l]);
        }
    }

    #[test]
    fn index_answers_as_the_scan_on_this_hosts_ss() {
        // Real data of this machine: whatever `ss` lists now (as root with
        // owners; otherwise the owners of this user's processes only).
        let Ok(text) = crate::source::ss::SsSource::without_destroy_events().run() else {
            panic!("running ss failed: install iproute2");
        };
        let l = from_text(&text);
        assert_same_answers(&[&l]);
    }

    #[test]
    fn conflicts_and_first_owner_order() {
        let o = |pid: u32, comm: &str| {
            Some(Owned {
                pid,
                comm: comm.into(),
                cgroup_id: Some(u64::from(pid) * 10),
            })
        };
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let mut this = Listeners::default();
        // Same pid under two names: the first listed wins.
        this.push(a("127.0.0.1:80"), o(1, "first"));
        this.push(a("0.0.0.0:80"), o(1, "second"));
        // Two processes on one port and address: nobody.
        this.push(a("127.0.0.1:81"), o(1, "x"));
        this.push(a("[::]:81"), o(2, "y"));
        // A listener without a single owner spoils its port.
        this.push(a("10.0.0.1:82"), None);
        this.push(a("127.0.0.1:82"), o(3, "z"));
        let mut last = Listeners::default();
        last.push(a("0.0.0.0:83"), o(4, "last"));
        last.push(a("0.0.0.0:80"), o(9, "gone"));
        let reads = [&this, &last];
        let owner = |s: &str| owner_of(&close(a(s)), &reads).map(|o| (o.pid, o.comm.to_string()));
        assert_eq!(
            owner("127.0.0.1:80"),
            None,
            "pid 9 in the last read disagrees"
        );
        assert_eq!(
            owner_of(&close(a("127.0.0.1:80")), &[&this]).map(|o| o.comm.to_string()),
            Some("first".into())
        );
        assert_eq!(owner("127.0.0.1:81"), None);
        assert_eq!(owner("10.0.0.1:82"), None);
        assert_eq!(owner("127.0.0.1:82"), Some((3, "z".into())));
        assert_eq!(owner("[::ffff:127.0.0.1]:82"), Some((3, "z".into())));
        assert_eq!(owner("[::1]:83"), Some((4, "last".into())));
        assert_same_answers(&reads);
    }
}
