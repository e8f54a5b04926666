//! The per-process quality figures of a snapshot: TCP retransmits, resets
//! and connects, and DNS lookups, each credited to the process that owns
//! the socket. Inputs are what the source already yields: each socket's
//! cumulative [`TcpCounters`] (their deltas, like the bytes'), the
//! interval's [`TcpEvent`]s with a connect result, and the DNS tracker's
//! per-client-endpoint counts, joined to the owner of the socket with that
//! local endpoint. It never reads the system and never builds rows: it
//! fills the `tcp_quality`/`dns` fields of the rows attribution built.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use netwatch_common::wire::{ProcessBandwidth, ProcessDns, ProcessTcpQuality};

use super::dns::{ClientDns, ClientKey};
use crate::source::{
    ConnectOutcome, CountOrigin, Protocol, SampleBatch, SocketId, TcpCounters, TcpEvent,
};

/// How long a socket's local endpoint stays known to the DNS join after
/// the last batch that listed it: long enough for a response or a timeout
/// ([`super::dns::OUTSTANDING_TIMEOUT`]) that comes after its socket
/// closed, and for capture lag.
pub const OWNER_MEMORY: Duration = Duration::from_secs(10);
/// Endpoints remembered for the DNS join, at most (7/8 of a power of two).
/// When full, a new one is not remembered (its lookups count in the
/// analytics, not per process), counted in [`crate::drops`] as
/// `dns_owners`; entries leave after [`OWNER_MEMORY`].
pub const MAX_OWNERS: usize = 57_344;

/// Everything kept from one tick to the next.
#[derive(Debug, Default)]
pub struct QualityTracker {
    /// Each open socket's counters as last seen (cumulative).
    last: HashMap<SocketId, TcpCounters>,
    /// Local endpoint → (owner pid, when last listed), for the DNS join.
    owners: HashMap<ClientKey, (u32, Duration)>,
    /// Batches read so far (a baseline first read: [`CountOrigin::SinceSocketOpen`]).
    reads: u64,
}

/// One process's TCP figures while they are summed.
#[derive(Debug, Clone, Default, PartialEq)]
struct TcpSum {
    q: ProcessTcpQuality,
    connected: u64,
    connect_ms_sum: f64,
    rtt_sum: f64,
    rtts: u64,
}

/// The interval's per-process figures, by pid.
#[derive(Debug, Default)]
pub struct Figures {
    tcp: HashMap<u32, TcpSum>,
    dns: HashMap<u32, ClientDns>,
}

impl QualityTracker {
    /// Take in one batch and the interval's TCP events: the TCP figures of
    /// every process that has a socket with counters or a connect result,
    /// and the batch's endpoints for [`Self::dns`]. `now` is the tick's
    /// monotonic time.
    pub fn tcp(&mut self, batch: &SampleBatch, events: &[TcpEvent], now: Duration) -> Figures {
        let mut fig = Figures::default();
        let first = self.reads == 0;
        self.reads += 1;
        for s in &batch.samples {
            let pid = s.pid.filter(|&p| p != 0);
            if let (Some(pid), Some(local)) = (pid, s.local) {
                self.remember(s.protocol, local, pid, now);
            }
            let Some(now_c) = s.tcp else { continue };
            let before = match self.last.get(&s.id) {
                Some(b) => *b,
                // Counts that predate the agent are a baseline.
                None if first && s.origin == CountOrigin::SinceSocketOpen => now_c,
                None => TcpCounters::default(),
            };
            if s.closed {
                self.last.remove(&s.id);
            } else {
                self.last.insert(s.id, now_c);
            }
            let Some(pid) = pid else { continue };
            let sum = fig.tcp.entry(pid).or_default();
            let q = &mut sum.q;
            q.retransmits += now_c.retrans_segs.saturating_sub(before.retrans_segs);
            q.retransmitted_bytes += now_c.retrans_bytes.saturating_sub(before.retrans_bytes);
            q.resets_sent += now_c.resets_sent.saturating_sub(before.resets_sent);
            q.resets_received += now_c.resets_received.saturating_sub(before.resets_received);
            if let (Some(rtt), false) = (s.rtt_us, s.closed) {
                sum.rtt_sum += rtt;
                sum.rtts += 1;
            }
        }
        if batch.omitted.is_none() {
            // A full batch lists every socket: the others are gone.
            let seen: std::collections::HashSet<SocketId> =
                batch.samples.iter().map(|s| s.id).collect();
            self.last.retain(|id, _| seen.contains(id));
        }
        let cutoff = now.saturating_sub(OWNER_MEMORY);
        self.owners.retain(|_, (_, at)| *at >= cutoff);
        for e in events {
            let (Some(pid), Some(c)) = (e.pid.filter(|&p| p != 0), e.connect) else {
                continue;
            };
            let sum = fig.tcp.entry(pid).or_default();
            sum.q.connects += 1;
            match c.outcome {
                ConnectOutcome::Established => {
                    let ms = c.took.as_secs_f64() * 1000.0;
                    sum.connected += 1;
                    sum.connect_ms_sum += ms;
                    sum.q.connect_ms_max = Some(sum.q.connect_ms_max.map_or(ms, |m| m.max(ms)));
                }
                ConnectOutcome::Refused => sum.q.connects_refused += 1,
                ConnectOutcome::TimedOut => sum.q.connects_timed_out += 1,
                ConnectOutcome::Unreachable => sum.q.connects_unreachable += 1,
                ConnectOutcome::Other(_) => sum.q.connects_failed_other += 1,
            }
        }
        fig
    }

    fn remember(&mut self, protocol: Protocol, local: SocketAddr, pid: u32, now: Duration) {
        let key = (protocol, local);
        if self.owners.len() >= MAX_OWNERS && !self.owners.contains_key(&key) {
            crate::drops::dropped("dns_owners", MAX_OWNERS, 1);
            return;
        }
        self.owners.insert(key, (pid, now));
    }

    /// The owner of the socket whose local end is `client`: that exact
    /// endpoint, else a socket bound to the wildcard address on its port
    /// (an unconnected UDP socket).
    fn owner(&self, (protocol, client): ClientKey) -> Option<u32> {
        let wildcard = |ip: IpAddr| match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let any = SocketAddr::new(wildcard(client.ip()), client.port());
        let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), client.port());
        [client, any, any6]
            .iter()
            .find_map(|a| self.owners.get(&(protocol, *a)).map(|(pid, _)| *pid))
    }

    /// Credit each client endpoint's lookups to its socket's owner (the
    /// endpoints of the batches of the last [`OWNER_MEMORY`]). Endpoints no
    /// known socket has (another host's, a socket no batch listed) count in
    /// the analytics only.
    pub fn dns(&self, fig: &mut Figures, clients: HashMap<ClientKey, ClientDns>) {
        for (key, c) in clients {
            let Some(pid) = self.owner(key) else { continue };
            let d = fig.dns.entry(pid).or_default();
            d.queries += c.queries;
            d.responses += c.responses;
            d.failures += c.failures;
            d.nxdomain += c.nxdomain;
            d.unanswered += c.unanswered;
            d.timed += c.timed;
            d.latency_ms_sum += c.latency_ms_sum;
            d.latency_ms_max = d.latency_ms_max.max(c.latency_ms_max);
        }
    }

    /// Open sockets whose counters are remembered.
    pub fn sockets(&self) -> usize {
        self.last.len()
    }
}

impl Figures {
    /// Set `tcp_quality` and `dns` on every row whose pid has figures.
    pub fn fill(&self, rows: &mut [ProcessBandwidth]) {
        for r in rows {
            let Some(pid) = r.pid else { continue };
            if let Some(t) = self.tcp.get(&pid) {
                r.tcp_quality = Some(t.finish());
            }
            if let Some(d) = self.dns.get(&pid) {
                r.dns = Some(process_dns(d));
            }
        }
    }
}

impl TcpSum {
    fn finish(&self) -> ProcessTcpQuality {
        let mut q = self.q.clone();
        q.connect_ms_avg =
            (self.connected > 0).then(|| self.connect_ms_sum / self.connected as f64);
        q.rtt_us_avg = (self.rtts > 0).then(|| self.rtt_sum / self.rtts as f64);
        q
    }
}

fn process_dns(c: &ClientDns) -> ProcessDns {
    ProcessDns {
        queries: c.queries,
        responses: c.responses,
        failures: c.failures,
        nxdomain: c.nxdomain,
        unanswered: c.unanswered,
        latency_ms_avg: (c.timed > 0).then(|| c.latency_ms_sum / c.timed as f64),
        latency_ms_max: (c.timed > 0).then_some(c.latency_ms_max),
    }
}

/// Add `p`'s figures into `into` (the folded `(others)` row): counters
/// summed; the connect mean weighted by successful connects, the DNS
/// latency mean by responses; the RTT mean over the rows that have one
/// (unweighted: rows do not carry their connection counts per RTT).
pub fn merge(into: &mut ProcessBandwidth, p: &ProcessBandwidth, rtt_rows: &mut u64) {
    if let Some(t) = &p.tcp_quality {
        let q = into.tcp_quality.get_or_insert_with(Default::default);
        let ok = |q: &ProcessTcpQuality| q.connects - q.connect_failures().min(q.connects);
        let (n0, n1) = (ok(q), ok(t));
        q.connect_ms_avg = mean(q.connect_ms_avg, n0, t.connect_ms_avg, n1);
        q.connect_ms_max = max(q.connect_ms_max, t.connect_ms_max);
        q.rtt_us_avg = mean(q.rtt_us_avg, *rtt_rows, t.rtt_us_avg, 1);
        if t.rtt_us_avg.is_some() {
            *rtt_rows += 1;
        }
        q.retransmits += t.retransmits;
        q.retransmitted_bytes += t.retransmitted_bytes;
        q.connects += t.connects;
        q.connects_refused += t.connects_refused;
        q.connects_timed_out += t.connects_timed_out;
        q.connects_unreachable += t.connects_unreachable;
        q.connects_failed_other += t.connects_failed_other;
        q.resets_sent += t.resets_sent;
        q.resets_received += t.resets_received;
    }
    if let Some(d) = &p.dns {
        let q = into.dns.get_or_insert_with(Default::default);
        q.latency_ms_avg = mean(q.latency_ms_avg, q.responses, d.latency_ms_avg, d.responses);
        q.latency_ms_max = max(q.latency_ms_max, d.latency_ms_max);
        q.queries += d.queries;
        q.responses += d.responses;
        q.failures += d.failures;
        q.nxdomain += d.nxdomain;
        q.unanswered += d.unanswered;
    }
}

fn mean(a: Option<f64>, na: u64, b: Option<f64>, nb: u64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if na + nb > 0 => {
            Some((a * na as f64 + b * nb as f64) / (na + nb) as f64)
        }
        (a, None) => a,
        (None, b) => b,
        (Some(a), Some(_)) => Some(a),
    }
}

fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{ConnectResult, SocketSample, TcpEventKind};
    use std::time::Instant;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sample(
        id: u64,
        pid: u32,
        local: &str,
        tcp: Option<TcpCounters>,
        closed: bool,
    ) -> SocketSample {
        SocketSample {
            id: SocketId {
                primary: id,
                secondary: 0,
            },
            protocol: if tcp.is_some() {
                Protocol::Tcp
            } else {
                Protocol::Udp
            },
            local: Some(sa(local)),
            remote: Some(sa("10.0.0.9:80")),
            state: "ESTABLISHED".into(),
            pid: Some(pid),
            comm: None,
            cgroup_id: None,
            rx_bytes: 0,
            tx_bytes: 0,
            rtt_us: tcp.map(|_| 100.0 * id as f64),
            tcp,
            closed,
            origin: CountOrigin::SinceAttach,
        }
    }

    fn batch(samples: Vec<SocketSample>, omitted: Option<u64>) -> SampleBatch {
        SampleBatch {
            taken_at: Instant::now(),
            samples,
            lost_records: 0,
            estimated: false,
            omitted,
        }
    }

    fn retrans(segs: u64, bytes: u64, rst_in: u64) -> Option<TcpCounters> {
        Some(TcpCounters {
            retrans_segs: segs,
            retrans_bytes: bytes,
            resets_sent: 0,
            resets_received: rst_in,
            connect: None,
        })
    }

    fn connect(pid: u32, ms: u64, outcome: ConnectOutcome) -> TcpEvent {
        TcpEvent {
            at: Duration::ZERO,
            src: sa("10.0.0.1:40000"),
            dst: sa("10.0.0.9:80"),
            kind: TcpEventKind::Syn,
            src_local: true,
            dst_local: false,
            pid: Some(pid),
            connect: Some(ConnectResult {
                took: Duration::from_millis(ms),
                outcome,
            }),
        }
    }

    fn row(pid: u32) -> ProcessBandwidth {
        ProcessBandwidth::network_only(format!("p{pid}"), Some(pid), 0, 0, 0.0, 0.0, 0)
    }

    fn quality(fig: &Figures, pid: u32) -> ProcessTcpQuality {
        let mut rows = [row(pid)];
        fig.fill(&mut rows);
        rows[0].tcp_quality.clone().expect("figures for the pid")
    }

    #[test]
    fn deltas_of_each_socket_go_to_its_owner_and_closed_sockets_are_forgotten() {
        let mut t = QualityTracker::default();
        let s = Duration::from_secs;
        let f = t.tcp(
            &batch(
                vec![
                    sample(1, 10, "10.0.0.1:1", retrans(3, 4000, 0), false),
                    sample(2, 10, "10.0.0.1:2", retrans(1, 100, 1), false),
                    sample(3, 20, "10.0.0.1:3", retrans(0, 0, 0), false),
                ],
                None,
            ),
            &[],
            s(1),
        );
        let q = quality(&f, 10);
        assert_eq!(
            (q.retransmits, q.retransmitted_bytes, q.resets_received),
            (4, 4100, 1)
        );
        assert_eq!(q.rtt_us_avg, Some(150.0));
        assert_eq!(quality(&f, 20).retransmits, 0);
        // Next interval: socket 1 retransmits 2 more and closes; socket 2
        // is left out of the partial batch (unchanged).
        let f = t.tcp(
            &batch(
                vec![sample(1, 10, "10.0.0.1:1", retrans(5, 6000, 0), true)],
                Some(2),
            ),
            &[],
            s(2),
        );
        let q = quality(&f, 10);
        assert_eq!((q.retransmits, q.retransmitted_bytes), (2, 2000));
        // A closed socket's RTT is not in the mean.
        assert_eq!(q.rtt_us_avg, None);
        assert_eq!(t.sockets(), 2);
        // A full batch without socket 3: it is gone.
        t.tcp(
            &batch(
                vec![sample(2, 10, "10.0.0.1:2", retrans(1, 100, 1), false)],
                None,
            ),
            &[],
            s(3),
        );
        assert_eq!(t.sockets(), 1);
    }

    #[test]
    fn a_first_read_of_counts_since_socket_open_is_a_baseline() {
        let mut t = QualityTracker::default();
        let mut s = sample(1, 10, "10.0.0.1:1", retrans(7, 700, 0), false);
        s.origin = CountOrigin::SinceSocketOpen;
        let f = t.tcp(&batch(vec![s.clone()], None), &[], Duration::ZERO);
        assert_eq!(quality(&f, 10).retransmits, 0);
        s.tcp = retrans(9, 900, 0);
        let f = t.tcp(&batch(vec![s], None), &[], Duration::ZERO);
        assert_eq!(quality(&f, 10).retransmits, 2);
    }

    #[test]
    fn connect_results_count_per_pid_by_cause() {
        let mut t = QualityTracker::default();
        let events = [
            connect(10, 2, ConnectOutcome::Established),
            connect(10, 1004, ConnectOutcome::Established),
            connect(10, 0, ConnectOutcome::Refused),
            connect(10, 3000, ConnectOutcome::TimedOut),
            connect(10, 5, ConnectOutcome::Unreachable),
            connect(10, 1, ConnectOutcome::Other(0)),
            // Not a process's (no pid): not in any row.
            TcpEvent {
                pid: None,
                ..connect(0, 1, ConnectOutcome::Refused)
            },
        ];
        let f = t.tcp(&batch(Vec::new(), None), &events, Duration::ZERO);
        let q = quality(&f, 10);
        assert_eq!(q.connects, 6);
        assert_eq!(
            (
                q.connects_refused,
                q.connects_timed_out,
                q.connects_unreachable,
                q.connects_failed_other
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(q.connect_failures(), 4);
        assert_eq!(q.connect_ms_avg, Some(503.0));
        assert_eq!(q.connect_ms_max, Some(1004.0));
        assert_eq!(f.tcp.len(), 1);
    }

    #[test]
    fn dns_clients_join_their_socket_owner_exactly_or_by_wildcard_port() {
        let mut t = QualityTracker::default();
        let mut udp_any = sample(5, 30, "0.0.0.0:5353", None, false);
        udp_any.protocol = Protocol::Udp;
        let connected = sample(6, 40, "127.0.0.1:41000", None, true);
        let mut f = t.tcp(
            &batch(vec![udp_any, connected], None),
            &[],
            Duration::from_secs(1),
        );
        let c = |q, r, fail, ms: f64| ClientDns {
            queries: q,
            responses: r,
            failures: fail,
            nxdomain: fail,
            unanswered: 0,
            timed: r,
            latency_ms_sum: ms * r as f64,
            latency_ms_max: ms,
        };
        let clients = HashMap::from([
            ((Protocol::Udp, sa("10.0.0.1:5353")), c(3, 2, 1, 4.0)),
            ((Protocol::Udp, sa("127.0.0.1:41000")), c(1, 1, 0, 1.0)),
            // Nobody's: left out.
            ((Protocol::Udp, sa("127.0.0.1:9")), c(8, 8, 0, 1.0)),
        ]);
        t.dns(&mut f, clients);
        let mut rows = [row(30), row(40)];
        f.fill(&mut rows);
        let d30 = rows[0].dns.clone().unwrap();
        assert_eq!(
            (d30.queries, d30.responses, d30.failures, d30.nxdomain),
            (3, 2, 1, 1)
        );
        assert_eq!(
            (d30.latency_ms_avg, d30.latency_ms_max),
            (Some(4.0), Some(4.0))
        );
        // A closed socket's endpoint is still known (its response came late).
        assert_eq!(rows[1].dns.as_ref().map(|d| d.queries), Some(1));
        // After OWNER_MEMORY without a batch listing them, endpoints are forgotten.
        let mut f = t.tcp(&batch(Vec::new(), None), &[], Duration::from_secs(12));
        t.dns(
            &mut f,
            HashMap::from([((Protocol::Udp, sa("10.0.0.1:5353")), c(1, 0, 0, 0.0))]),
        );
        assert!(f.dns.is_empty());
    }

    #[test]
    fn folding_sums_counters_and_weights_the_means() {
        let mut a = row(1);
        a.tcp_quality = Some(ProcessTcpQuality {
            connects: 2,
            connect_ms_avg: Some(10.0),
            connect_ms_max: Some(15.0),
            retransmits: 1,
            rtt_us_avg: Some(100.0),
            ..Default::default()
        });
        a.dns = Some(ProcessDns {
            queries: 1,
            responses: 1,
            latency_ms_avg: Some(2.0),
            latency_ms_max: Some(2.0),
            ..Default::default()
        });
        let mut b = row(2);
        b.tcp_quality = Some(ProcessTcpQuality {
            connects: 2,
            connects_refused: 1,
            connect_ms_avg: Some(40.0),
            connect_ms_max: Some(40.0),
            retransmits: 2,
            rtt_us_avg: Some(300.0),
            ..Default::default()
        });
        let mut into = ProcessBandwidth::network_only("(others)".into(), None, 0, 0, 0.0, 0.0, 0);
        let mut rtt_rows = 0;
        merge(&mut into, &a, &mut rtt_rows);
        merge(&mut into, &b, &mut rtt_rows);
        let q = into.tcp_quality.unwrap();
        assert_eq!((q.connects, q.connects_refused, q.retransmits), (4, 1, 3));
        // (10 × 2 + 40 × 1) / 3
        assert_eq!(q.connect_ms_avg, Some(20.0));
        assert_eq!(q.connect_ms_max, Some(40.0));
        assert_eq!(q.rtt_us_avg, Some(200.0));
        assert_eq!(into.dns.unwrap().latency_ms_avg, Some(2.0));
    }
}
