//! Turns what the agent sees each tick into detector [`Event`]s: the
//! source's TCP control events (SYNs and resets: captured by pcap, or traced
//! by the kernel collector, `source::ebpf::tcp_events`), new connection rows
//! (closed-socket samples included), DNS queries, and process and interface
//! rates. It never reads the system, and never looks at every socket: it
//! takes typed rows ([`Conn`]), only the ones new this tick (attribution
//! flags them: [`crate::attribution::Row::new`]) and the listening ones.
//!
//! Directions: a SYN arriving at a local address is an inbound attempt; a
//! SYN leaving one is a connection this host opened; a reset sent in answer
//! to an inbound SYN is a refused attempt. A new row whose local port
//! listens is an inbound attempt, any other new TCP row an outbound
//! connection. A connection already fed from a SYN is not fed again from
//! its row (the SYN's capture time is the better clock), but lends it its
//! owner.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use netwatch_common::wire::{InterfaceMetric, ProcessBandwidth};

use super::{Event, Subject};
use crate::net::state;
use crate::source::{DnsEvent, DnsEventKind, Protocol, SocketSample, TcpEvent, TcpEventKind};

/// How long an inbound SYN is remembered to match the reset refusing it,
/// and a fed connection to skip its row.
const REMEMBER: Duration = Duration::from_secs(10);
/// Bound on remembered SYNs and on remembered connections, each (7/8 of a
/// power of two: a full map does not grow its buckets). When full, new
/// ones are not remembered until old ones pass [`REMEMBER`], counted in
/// [`crate::drops`] as `alert_inbound_syns` and `alert_fed_connections`:
/// a reset refusing a SYN not remembered is not an attempt, a row whose
/// SYN was not remembered is fed again (with the row's time).
pub const MAX_REMEMBERED: usize = 3_584;

type Tuple = (SocketAddr, SocketAddr);

/// One connection row as the feed reads it: typed, borrowed from the
/// sample it was made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conn<'a> {
    pub protocol: Protocol,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// A name from [`crate::net::state`].
    pub state: &'a str,
    pub pid: Option<u32>,
    pub process: Option<&'a str>,
    /// The socket was first seen this tick (see [`crate::attribution::Row::new`]).
    pub new: bool,
}

impl<'a> Conn<'a> {
    /// The row of sample `s` (a connection row's first sample).
    pub fn of(s: &'a SocketSample, new: bool) -> Self {
        Self {
            protocol: s.protocol,
            local: s.local,
            remote: s.remote,
            state: &s.state,
            pid: s.pid.filter(|&p| p != 0),
            process: s.comm.as_deref(),
            new,
        }
    }

    /// The rows the feed needs to see: new ones and TCP listeners.
    pub fn wanted(s: &SocketSample, new: bool) -> bool {
        new || (s.protocol == Protocol::Tcp && s.state == state::LISTEN)
    }
}

/// What the agent saw in one tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tick<'a> {
    /// The tick's monotonic time ([`crate::clock::Clock::mono`]): the
    /// scale of every event time.
    pub now: Duration,
    /// The tick's wall-clock time, read with `now`: for alert timestamps
    /// only, never for a window.
    pub wall: chrono::DateTime<chrono::Utc>,
    pub tcp: &'a [TcpEvent],
    /// The tick's connection rows that are new ([`Conn::new`]) or listen
    /// ([`Conn::wanted`]); others may be present and are ignored.
    pub connections: &'a [Conn<'a>],
    pub dns: &'a [DnsEvent],
    pub processes: &'a [ProcessBandwidth],
    pub interfaces: &'a [InterfaceMetric],
}

/// Whether a tick came before, and the recent SYNs.
#[derive(Debug, Default)]
pub struct Feed {
    /// A tick came before: the first tick's rows predate the agent and are
    /// a baseline.
    primed: bool,
    /// Inbound SYNs: (remote, local) → when.
    inbound_syns: HashMap<Tuple, Duration>,
    /// Connections fed from a SYN: (local, remote) → when, and whether
    /// its owner was known then.
    fed: HashMap<Tuple, (Duration, bool)>,
}

impl Feed {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events of one tick, oldest first where times are known.
    pub fn events(&mut self, t: Tick<'_>) -> Vec<Event> {
        let mut out = Vec::new();
        // Owners of the new rows: a SYN sent this tick is of a socket first
        // seen this tick (or of a row a later tick brings: `Owner`).
        let owners: HashMap<Tuple, (Option<u32>, Option<&str>)> = t
            .connections
            .iter()
            .filter(|c| c.protocol == Protocol::Tcp && c.new)
            .filter_map(|c| Some(((c.local?, c.remote?), (c.pid, c.process))))
            .collect();
        let mut tcp: Vec<&TcpEvent> = t.tcp.iter().collect();
        tcp.sort_by_key(|e| e.at);
        let mut refused = (0u64, 0u64);
        for e in tcp {
            match e.kind {
                TcpEventKind::Syn => {
                    if e.dst_local {
                        let key = (e.src, e.dst);
                        if self.inbound_syns.len() < MAX_REMEMBERED
                            || self.inbound_syns.contains_key(&key)
                        {
                            self.inbound_syns.insert(key, e.at);
                        } else {
                            refused.0 += 1;
                        }
                        out.push(Event::InboundAttempt {
                            at: e.at,
                            remote: e.src.ip(),
                            local: e.dst,
                            failed: false,
                        });
                    }
                    if e.src_local {
                        let (pid, process) =
                            owners.get(&(e.src, e.dst)).copied().unwrap_or_default();
                        let process = process.map(str::to_string);
                        let key = (e.src, e.dst);
                        if self.fed.len() < MAX_REMEMBERED || self.fed.contains_key(&key) {
                            self.fed.insert(key, (e.at, pid.is_some()));
                        } else {
                            refused.1 += 1;
                        }
                        out.push(Event::Connect {
                            at: e.at,
                            pid,
                            process,
                            local: Some(e.src),
                            remote: e.dst,
                        });
                    }
                }
                TcpEventKind::Reset => {
                    // A reset from local `src` to `dst` refusing `dst`'s SYN.
                    if e.src_local && self.inbound_syns.contains_key(&(e.dst, e.src)) {
                        out.push(Event::InboundAttempt {
                            at: e.at,
                            remote: e.dst.ip(),
                            local: e.src,
                            failed: true,
                        });
                    }
                }
            }
        }
        crate::drops::dropped("alert_inbound_syns", MAX_REMEMBERED, refused.0);
        crate::drops::dropped("alert_fed_connections", MAX_REMEMBERED, refused.1);
        self.rows_events(&t, &mut out);
        for d in t.dns {
            if let DnsEventKind::Query { name: Some(name) } = &d.kind {
                out.push(Event::DnsQuery {
                    at: d.at,
                    client: d.client,
                    name: name.clone(),
                });
            }
        }
        for p in t.processes {
            out.push(Event::Rate {
                at: t.now,
                subject: Subject::Process {
                    pid: p.pid,
                    name: p.process_name.clone(),
                },
                rx_bps: p.rx_rate,
                tx_bps: p.tx_rate,
            });
        }
        for i in t.interfaces {
            if let (Some(rx), Some(tx)) = (i.rx_rate, i.tx_rate) {
                out.push(Event::Rate {
                    at: t.now,
                    subject: Subject::Interface(i.name.clone()),
                    rx_bps: rx,
                    tx_bps: tx,
                });
            }
        }
        let now = t.now;
        self.inbound_syns
            .retain(|_, at| now.saturating_sub(*at) < REMEMBER);
        self.fed
            .retain(|_, (at, _)| now.saturating_sub(*at) < REMEMBER);
        out
    }

    fn rows_events(&mut self, t: &Tick<'_>, out: &mut Vec<Event>) {
        let primed = std::mem::replace(&mut self.primed, true);
        if !primed {
            return;
        }
        let listening: HashSet<u16> = t
            .connections
            .iter()
            .filter(|c| c.protocol == Protocol::Tcp && c.state == state::LISTEN)
            .filter_map(|c| c.local.map(|a| a.port()))
            .collect();
        for c in t.connections {
            if !c.new || c.protocol != Protocol::Tcp || c.state == state::LISTEN {
                continue;
            }
            let (Some(local), Some(remote)) = (c.local, c.remote) else {
                continue;
            };
            if remote.port() == 0 || remote.ip().is_unspecified() {
                continue;
            }
            if self.inbound_syns.contains_key(&(remote, local)) {
                continue;
            }
            if let Some((_, known)) = self.fed.get(&(local, remote)) {
                // Its SYN was fed; the row may name the owner the SYN lacked.
                if let (false, Some(pid)) = (known, c.pid) {
                    out.push(Event::Owner {
                        at: t.now,
                        pid,
                        process: c.process.map(str::to_string),
                        local,
                        remote,
                    });
                }
                continue;
            }
            if listening.contains(&local.port()) {
                out.push(Event::InboundAttempt {
                    at: t.now,
                    remote: remote.ip(),
                    local,
                    failed: false,
                });
            } else {
                out.push(Event::Connect {
                    at: t.now,
                    pid: c.pid,
                    process: c.process.map(str::to_string),
                    local: Some(local),
                    remote,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn row(local: &str, remote: &str, st: &'static str, pid: u32) -> Conn<'static> {
        Conn {
            protocol: Protocol::Tcp,
            local: Some(sa(local)),
            remote: Some(sa(remote)),
            state: st,
            pid: Some(pid),
            process: Some("p"),
            new: false,
        }
    }

    /// `c`, first seen this tick.
    fn new(c: Conn<'static>) -> Conn<'static> {
        Conn { new: true, ..c }
    }

    fn tcp(
        at_ms: u64,
        src: &str,
        dst: &str,
        kind: TcpEventKind,
        src_local: bool,
        dst_local: bool,
    ) -> TcpEvent {
        TcpEvent {
            at: Duration::from_millis(at_ms),
            src: sa(src),
            dst: sa(dst),
            kind,
            src_local,
            dst_local,
            pid: None,
            connect: None,
        }
    }

    #[test]
    fn first_tick_is_a_baseline_then_new_rows_are_classified() {
        let mut f = Feed::new();
        let listen = row("0.0.0.0:22", "0.0.0.0:0", "LISTEN", 1);
        let old = row("10.0.0.1:40000", "192.0.2.1:443", "ESTABLISHED", 5);
        // Flagged new on the first tick too: the feed's own baseline holds.
        let rows = vec![new(listen), new(old)];
        assert!(f
            .events(Tick {
                now: Duration::from_secs(1),
                connections: &rows,
                ..Default::default()
            })
            .is_empty());
        let rows = vec![
            listen,
            old,
            new(row("10.0.0.1:22", "198.51.100.9:5555", "ESTABLISHED", 1)),
            new(row("10.0.0.1:40001", "192.0.2.1:443", "CLOSED", 5)),
        ];
        let ev = f.events(Tick {
            now: Duration::from_secs(2),
            connections: &rows,
            ..Default::default()
        });
        assert_eq!(
            ev,
            vec![
                Event::InboundAttempt {
                    at: Duration::from_secs(2),
                    remote: "198.51.100.9".parse().unwrap(),
                    local: sa("10.0.0.1:22"),
                    failed: false
                },
                Event::Connect {
                    at: Duration::from_secs(2),
                    pid: Some(5),
                    process: Some("p".into()),
                    local: Some(sa("10.0.0.1:40001")),
                    remote: sa("192.0.2.1:443")
                },
            ]
        );
        // Seen again: nothing new.
        let rows: Vec<_> = rows.into_iter().map(|c| Conn { new: false, ..c }).collect();
        assert!(f
            .events(Tick {
                now: Duration::from_secs(3),
                connections: &rows,
                ..Default::default()
            })
            .is_empty());
    }

    #[test]
    fn syns_and_refusing_resets_become_attempts_and_lend_rows_their_time() {
        let mut f = Feed::new();
        f.events(Tick::default());
        let ev = [
            tcp(
                5,
                "198.51.100.9:5000",
                "10.0.0.1:81",
                TcpEventKind::Syn,
                false,
                true,
            ),
            tcp(
                6,
                "10.0.0.1:81",
                "198.51.100.9:5000",
                TcpEventKind::Reset,
                true,
                false,
            ),
            // A reset nobody's SYN asked for: an ordinary abort, not counted.
            tcp(
                7,
                "10.0.0.1:40002",
                "192.0.2.1:443",
                TcpEventKind::Reset,
                true,
                false,
            ),
            tcp(
                3,
                "10.0.0.1:40003",
                "192.0.2.1:443",
                TcpEventKind::Syn,
                true,
                false,
            ),
        ];
        let rows = vec![new(row(
            "10.0.0.1:40003",
            "192.0.2.1:443",
            "ESTABLISHED",
            77,
        ))];
        let out = f.events(Tick {
            now: Duration::from_secs(9),
            tcp: &ev,
            connections: &rows,
            ..Default::default()
        });
        assert_eq!(
            out,
            vec![
                Event::Connect {
                    at: Duration::from_millis(3),
                    pid: Some(77),
                    process: Some("p".into()),
                    local: Some(sa("10.0.0.1:40003")),
                    remote: sa("192.0.2.1:443")
                },
                Event::InboundAttempt {
                    at: Duration::from_millis(5),
                    remote: "198.51.100.9".parse().unwrap(),
                    local: sa("10.0.0.1:81"),
                    failed: false
                },
                Event::InboundAttempt {
                    at: Duration::from_millis(6),
                    remote: "198.51.100.9".parse().unwrap(),
                    local: sa("10.0.0.1:81"),
                    failed: true
                },
            ]
        );
        // A SYN whose row comes a tick later: the row lends its owner only.
        let rows = vec![row("10.0.0.1:40003", "192.0.2.1:443", "ESTABLISHED", 77)];
        let syn = [tcp(
            9_500,
            "10.0.0.1:40004",
            "192.0.2.1:443",
            TcpEventKind::Syn,
            true,
            false,
        )];
        let out = f.events(Tick {
            now: Duration::from_secs(10),
            tcp: &syn,
            connections: &rows,
            ..Default::default()
        });
        assert!(
            matches!(out[..], [Event::Connect { pid: None, .. }]),
            "{out:?}"
        );
        let rows = vec![new(row("10.0.0.1:40004", "192.0.2.1:443", "CLOSED", 78))];
        let out = f.events(Tick {
            now: Duration::from_secs(11),
            connections: &rows,
            ..Default::default()
        });
        assert_eq!(
            out,
            vec![Event::Owner {
                at: Duration::from_secs(11),
                pid: 78,
                process: Some("p".into()),
                local: sa("10.0.0.1:40004"),
                remote: sa("192.0.2.1:443")
            }]
        );
    }
}
