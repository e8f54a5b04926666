//! Turns what the agent sees each tick into detector [`Event`]s: the
//! source's TCP control events (SYNs and resets: captured by pcap, or traced
//! by the kernel collector, `source::ebpf::tcp_events`), new connection rows
//! (closed-socket samples included), DNS queries, and process and interface
//! rates. It never reads the system; it only compares this tick's rows with
//! the previous tick's.
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

use netwatch_common::wire::{ConnectionDetail, InterfaceMetric, ProcessBandwidth};

use super::{Event, Subject};
use crate::net::state;
use crate::source::{DnsEvent, DnsEventKind, TcpEvent, TcpEventKind};

/// How long an inbound SYN is remembered to match the reset refusing it,
/// and a fed connection to skip its row.
const REMEMBER: Duration = Duration::from_secs(10);
/// Bound on remembered SYNs and connections.
const MAX_REMEMBERED: usize = 1 << 16;

type Tuple = (SocketAddr, SocketAddr);

/// What the agent saw in one tick.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tick<'a> {
    /// The tick's time since the Unix epoch.
    pub now: Duration,
    pub tcp: &'a [TcpEvent],
    pub connections: &'a [ConnectionDetail],
    pub dns: &'a [DnsEvent],
    pub processes: &'a [ProcessBandwidth],
    pub interfaces: &'a [InterfaceMetric],
}

/// The previous tick's rows and the recent SYNs.
#[derive(Debug, Default)]
pub struct Feed {
    /// (local, remote) of the previous tick's TCP rows; `None` before the
    /// first tick (whose rows predate the agent and are a baseline).
    rows: Option<HashSet<Tuple>>,
    /// Inbound SYNs: (remote, local) → when.
    inbound_syns: HashMap<Tuple, Duration>,
    /// Connections fed from a SYN: (local, remote) → when, and whether
    /// its owner was known then.
    fed: HashMap<Tuple, (Duration, bool)>,
}

fn parse(a: &str) -> Option<SocketAddr> {
    a.parse().ok()
}

impl Feed {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events of one tick, oldest first where times are known.
    pub fn events(&mut self, t: Tick<'_>) -> Vec<Event> {
        let mut out = Vec::new();
        let owners: HashMap<Tuple, (Option<u32>, Option<String>)> = t
            .connections
            .iter()
            .filter(|c| c.protocol == "TCP")
            .filter_map(|c| {
                Some((
                    (parse(&c.local_addr)?, parse(&c.remote_addr)?),
                    (c.pid, c.process_name.clone()),
                ))
            })
            .collect();
        let mut tcp: Vec<&TcpEvent> = t.tcp.iter().collect();
        tcp.sort_by_key(|e| e.at);
        for e in tcp {
            match e.kind {
                TcpEventKind::Syn => {
                    if e.dst_local {
                        if self.inbound_syns.len() < MAX_REMEMBERED {
                            self.inbound_syns.insert((e.src, e.dst), e.at);
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
                            owners.get(&(e.src, e.dst)).cloned().unwrap_or_default();
                        if self.fed.len() < MAX_REMEMBERED {
                            self.fed.insert((e.src, e.dst), (e.at, pid.is_some()));
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
        let listening: HashSet<u16> = t
            .connections
            .iter()
            .filter(|c| c.protocol == "TCP" && c.state == state::LISTEN)
            .filter_map(|c| parse(&c.local_addr).map(|a| a.port()))
            .collect();
        let mut rows = HashSet::new();
        for c in t.connections {
            if c.protocol != "TCP" || c.state == state::LISTEN {
                continue;
            }
            let (Some(local), Some(remote)) = (parse(&c.local_addr), parse(&c.remote_addr)) else {
                continue;
            };
            if remote.port() == 0 || remote.ip().is_unspecified() {
                continue;
            }
            rows.insert((local, remote));
            let Some(prev) = &self.rows else { continue };
            if prev.contains(&(local, remote)) || self.inbound_syns.contains_key(&(remote, local)) {
                continue;
            }
            if let Some((_, known)) = self.fed.get(&(local, remote)) {
                // Its SYN was fed; the row may name the owner the SYN lacked.
                if let (false, Some(pid)) = (known, c.pid) {
                    out.push(Event::Owner {
                        at: t.now,
                        pid,
                        process: c.process_name.clone(),
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
                    process: c.process_name.clone(),
                    local: Some(local),
                    remote,
                });
            }
        }
        self.rows = Some(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn row(local: &str, remote: &str, st: &str, pid: u32) -> ConnectionDetail {
        ConnectionDetail {
            protocol: "TCP".into(),
            local_addr: local.into(),
            remote_addr: remote.into(),
            state: st.into(),
            pid: Some(pid),
            process_name: Some("p".into()),
            kernel_rtt_us: None,
            rx_bytes: None,
            tx_bytes: None,
        }
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
        }
    }

    #[test]
    fn first_tick_is_a_baseline_then_new_rows_are_classified() {
        let mut f = Feed::new();
        let listen = row("0.0.0.0:22", "0.0.0.0:0", "LISTEN", 1);
        let old = row("10.0.0.1:40000", "192.0.2.1:443", "ESTABLISHED", 5);
        let rows = vec![listen.clone(), old.clone()];
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
            row("10.0.0.1:22", "198.51.100.9:5555", "ESTABLISHED", 1),
            row("10.0.0.1:40001", "192.0.2.1:443", "CLOSED", 5),
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
        let rows = vec![row("10.0.0.1:40003", "192.0.2.1:443", "ESTABLISHED", 77)];
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
        let rows = vec![row("10.0.0.1:40004", "192.0.2.1:443", "CLOSED", 78)];
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
