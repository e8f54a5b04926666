//! The per-process TCP quality and DNS counters of `/metrics`: what each
//! process series accumulates from the snapshot rows' `tcp_quality` and
//! `dns` (per-interval figures), and how they are rendered.
//!
//! They live and die with the process byte series of the parent module:
//! the same labels (`pid`, `comm`, `cgroup`), the same cap (a process
//! without a byte series has its figures counted in the `comm="other"`
//! series), the same expiry, and they are saved and restored with the byte
//! counters across a restart on the same pins. They must never go down
//! while their series lives, and never make a series of their own: a
//! process gets quality series only beside its byte series, and only for
//! the kind of figures (TCP, DNS) its rows ever carried.

use netwatch_common::wire::{ProcessDns, ProcessTcpQuality};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use super::{Labels, Text};

/// TCP figures of one series, summed over the snapshots (eBPF mode).
/// A counter missing from a saved file reads as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TcpTotals {
    pub retransmits: u64,
    pub retransmitted_bytes: u64,
    /// Connects that reached ESTABLISHED.
    pub connects_established: u64,
    pub connects_refused: u64,
    pub connects_timed_out: u64,
    pub connects_unreachable: u64,
    pub connects_failed_other: u64,
    /// Microseconds from first SYN to ESTABLISHED, summed over the
    /// established connects (each interval's mean times its count).
    pub connect_us: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
}

/// DNS figures of one series, summed over the snapshots.
/// A counter missing from a saved file reads as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DnsTotals {
    pub queries: u64,
    pub responses: u64,
    /// Responses with an error RCODE other than NXDOMAIN.
    pub error_rcode: u64,
    pub nxdomain: u64,
    pub unanswered: u64,
    /// Microseconds from query to response, summed over the responses.
    pub latency_us: u64,
}

/// The quality counters of one process series (or of `other`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QualityTotals {
    /// Set once a row of the process carried `tcp_quality`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpTotals>,
    /// Set once a row of the process carried `dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsTotals>,
}

/// `mean_ms × n` in whole microseconds; 0 for a mean that is not a
/// finite non-negative number.
fn sum_us(mean_ms: Option<f64>, n: u64) -> u64 {
    match mean_ms {
        // `as` saturates (and a NaN is excluded above): never a panic.
        Some(ms) if ms.is_finite() && ms >= 0.0 => (ms * 1000.0 * n as f64).round() as u64,
        _ => 0,
    }
}

impl TcpTotals {
    fn add_interval(&mut self, q: &ProcessTcpQuality) {
        let failed = q
            .connects_refused
            .saturating_add(q.connects_timed_out)
            .saturating_add(q.connects_unreachable)
            .saturating_add(q.connects_failed_other);
        let established = q.connects.saturating_sub(failed);
        self.retransmits = self.retransmits.saturating_add(q.retransmits);
        self.retransmitted_bytes = self
            .retransmitted_bytes
            .saturating_add(q.retransmitted_bytes);
        self.connects_established = self.connects_established.saturating_add(established);
        self.connects_refused = self.connects_refused.saturating_add(q.connects_refused);
        self.connects_timed_out = self.connects_timed_out.saturating_add(q.connects_timed_out);
        self.connects_unreachable = self
            .connects_unreachable
            .saturating_add(q.connects_unreachable);
        self.connects_failed_other = self
            .connects_failed_other
            .saturating_add(q.connects_failed_other);
        self.connect_us = self
            .connect_us
            .saturating_add(sum_us(q.connect_ms_avg, established));
        self.resets_sent = self.resets_sent.saturating_add(q.resets_sent);
        self.resets_received = self.resets_received.saturating_add(q.resets_received);
    }

    fn merge(&mut self, o: &Self) {
        self.retransmits = self.retransmits.saturating_add(o.retransmits);
        self.retransmitted_bytes = self
            .retransmitted_bytes
            .saturating_add(o.retransmitted_bytes);
        self.connects_established = self
            .connects_established
            .saturating_add(o.connects_established);
        self.connects_refused = self.connects_refused.saturating_add(o.connects_refused);
        self.connects_timed_out = self.connects_timed_out.saturating_add(o.connects_timed_out);
        self.connects_unreachable = self
            .connects_unreachable
            .saturating_add(o.connects_unreachable);
        self.connects_failed_other = self
            .connects_failed_other
            .saturating_add(o.connects_failed_other);
        self.connect_us = self.connect_us.saturating_add(o.connect_us);
        self.resets_sent = self.resets_sent.saturating_add(o.resets_sent);
        self.resets_received = self.resets_received.saturating_add(o.resets_received);
    }
}

impl DnsTotals {
    fn add_interval(&mut self, d: &ProcessDns) {
        self.queries = self.queries.saturating_add(d.queries);
        self.responses = self.responses.saturating_add(d.responses);
        self.error_rcode = self
            .error_rcode
            .saturating_add(d.failures.saturating_sub(d.nxdomain));
        self.nxdomain = self.nxdomain.saturating_add(d.nxdomain);
        self.unanswered = self.unanswered.saturating_add(d.unanswered);
        self.latency_us = self
            .latency_us
            .saturating_add(sum_us(d.latency_ms_avg, d.responses));
    }

    fn merge(&mut self, o: &Self) {
        self.queries = self.queries.saturating_add(o.queries);
        self.responses = self.responses.saturating_add(o.responses);
        self.error_rcode = self.error_rcode.saturating_add(o.error_rcode);
        self.nxdomain = self.nxdomain.saturating_add(o.nxdomain);
        self.unanswered = self.unanswered.saturating_add(o.unanswered);
        self.latency_us = self.latency_us.saturating_add(o.latency_us);
    }
}

impl QualityTotals {
    /// Nothing was ever carried (the default; left out of the saved file).
    pub fn is_empty(&self) -> bool {
        self.tcp.is_none() && self.dns.is_none()
    }

    /// Some counter is not zero (an event was counted; an RTT alone, or
    /// a figure that is all zeros, is none).
    pub fn any_events(&self) -> bool {
        let tcp = self.tcp.as_ref().is_some_and(|t| {
            t.retransmits
                | t.retransmitted_bytes
                | t.connects_established
                | t.connects_refused
                | t.connects_timed_out
                | t.connects_unreachable
                | t.connects_failed_other
                | t.resets_sent
                | t.resets_received
                != 0
        });
        let dns = self.dns.as_ref().is_some_and(|d| {
            d.queries | d.responses | d.error_rcode | d.nxdomain | d.unanswered != 0
        });
        tcp || dns
    }

    /// Add one row's per-interval figures.
    pub fn add_interval(&mut self, tcp: Option<&ProcessTcpQuality>, dns: Option<&ProcessDns>) {
        if let Some(q) = tcp {
            self.tcp
                .get_or_insert_with(Default::default)
                .add_interval(q);
        }
        if let Some(d) = dns {
            self.dns
                .get_or_insert_with(Default::default)
                .add_interval(d);
        }
    }

    /// Add another series' totals (a tick's rows of one key, a newcomer
    /// refused into `other`, a key twice in a saved file).
    pub fn merge(&mut self, o: &Self) {
        if let Some(t) = &o.tcp {
            self.tcp.get_or_insert_with(Default::default).merge(t);
        }
        if let Some(d) = &o.dns {
            self.dns.get_or_insert_with(Default::default).merge(d);
        }
    }
}

/// One series to render: its labels (`pid`, `comm`, `cgroup`), its
/// totals, and its latest mean RTT in microseconds (a gauge).
pub(super) struct Shown<'a> {
    pub pid: &'a str,
    pub comm: &'a str,
    pub cgroup: &'a str,
    pub totals: &'a QualityTotals,
    pub rtt_us: Option<u64>,
}

impl<'a> Shown<'a> {
    fn labels(&self) -> Labels<'a, 3> {
        Labels([
            ("pid", Text(self.pid)),
            ("comm", Text(self.comm)),
            ("cgroup", Text(self.cgroup)),
        ])
    }

    fn labels_and(&self, name: &'static str, value: &'static str) -> Labels<'a, 4> {
        Labels([
            ("pid", Text(self.pid)),
            ("comm", Text(self.comm)),
            ("cgroup", Text(self.cgroup)),
            (name, Text(value)),
        ])
    }
}

fn family<S: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    series: Vec<(S, M)>,
) -> std::fmt::Result {
    // A kind of figure no series carries (TCP in ss mode, DNS without a
    // capture) leaves no empty family on the page.
    if series.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in series {
        v.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// Write the quality families for `series` (sorted by the caller).
pub(super) fn encode(enc: &mut DescriptorEncoder, series: &[Shown<'_>]) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};
    let tcp: Vec<(&Shown<'_>, &TcpTotals)> = series
        .iter()
        .filter_map(|s| s.totals.tcp.as_ref().map(|t| (s, t)))
        .collect();
    let dns: Vec<(&Shown<'_>, &DnsTotals)> = series
        .iter()
        .filter_map(|s| s.totals.dns.as_ref().map(|d| (s, d)))
        .collect();
    let c = ConstCounter::new;
    let bytes = Some(&Unit::Bytes);
    let seconds = Some(&Unit::Seconds);

    family(
        enc,
        "netwatch_process_tcp_retransmits",
        "TCP segments the kernel retransmitted on a process's connections (tcp:tcp_retransmit_skb)",
        None,
        Counter,
        tcp.iter()
            .map(|(s, t)| (s.labels(), c(t.retransmits)))
            .collect(),
    )?;
    family(
        enc,
        "netwatch_process_tcp_retransmitted",
        "Bytes in the TCP segments retransmitted on a process's connections",
        bytes,
        Counter,
        tcp.iter()
            .map(|(s, t)| (s.labels(), c(t.retransmitted_bytes)))
            .collect(),
    )?;
    let mut connects = Vec::with_capacity(tcp.len() * 5);
    for (s, t) in &tcp {
        for (result, n) in [
            ("established", t.connects_established),
            ("refused", t.connects_refused),
            ("timed_out", t.connects_timed_out),
            ("unreachable", t.connects_unreachable),
            ("other", t.connects_failed_other),
        ] {
            connects.push((s.labels_and("result", result), c(n)));
        }
    }
    family(
        enc,
        "netwatch_process_tcp_connects",
        "Outbound TCP connects of a process that ended, by result: established, refused (a reset \
         answered the SYN), timed_out (every SYN retry unanswered), unreachable (an ICMP error), \
         other (closed while connecting, another error)",
        None,
        Counter,
        connects,
    )?;
    family(
        enc,
        "netwatch_process_tcp_connect",
        "Seconds from first SYN to ESTABLISHED summed over a process's established connects \
         (divide by netwatch_process_tcp_connects_total{result=\"established\"} for the mean)",
        seconds,
        Counter,
        tcp.iter()
            .map(|(s, t)| (s.labels(), ConstCounter::new(secs(t.connect_us))))
            .collect(),
    )?;
    let mut resets = Vec::with_capacity(tcp.len() * 2);
    for (s, t) in &tcp {
        resets.push((s.labels_and("direction", "sent"), c(t.resets_sent)));
        resets.push((s.labels_and("direction", "received"), c(t.resets_received)));
    }
    family(
        enc,
        "netwatch_process_tcp_resets",
        "TCP resets sent and received on a process's connections",
        None,
        Counter,
        resets,
    )?;
    family(
        enc,
        "netwatch_process_tcp_rtt",
        "Mean kernel smoothed RTT of a process's TCP connections in the latest snapshot (absent \
         when the latest snapshot had none)",
        seconds,
        Gauge,
        series
            .iter()
            .filter_map(|s| s.rtt_us.map(|us| (s.labels(), ConstGauge::new(secs(us)))))
            .collect(),
    )?;

    family(
        enc,
        "netwatch_process_dns_queries",
        "DNS queries a process sent (matched by the socket that sent them)",
        None,
        Counter,
        dns.iter()
            .map(|(s, d)| (s.labels(), c(d.queries)))
            .collect(),
    )?;
    family(
        enc,
        "netwatch_process_dns_responses",
        "DNS responses to a process's queries",
        None,
        Counter,
        dns.iter()
            .map(|(s, d)| (s.labels(), c(d.responses)))
            .collect(),
    )?;
    let mut failures = Vec::with_capacity(dns.len() * 3);
    for (s, d) in &dns {
        failures.push((s.labels_and("reason", "nxdomain"), c(d.nxdomain)));
        failures.push((s.labels_and("reason", "error_rcode"), c(d.error_rcode)));
        failures.push((s.labels_and("reason", "unanswered"), c(d.unanswered)));
    }
    family(
        enc,
        "netwatch_process_dns_failures",
        "Failed DNS lookups of a process: nxdomain, error_rcode (another non-zero RCODE: \
         SERVFAIL, REFUSED, ...), unanswered (no response within 5 seconds)",
        None,
        Counter,
        failures,
    )?;
    family(
        enc,
        "netwatch_process_dns_response",
        "Seconds from query to response summed over a process's DNS responses (divide by \
         netwatch_process_dns_responses_total for the mean)",
        seconds,
        Counter,
        dns.iter()
            .map(|(s, d)| (s.labels(), ConstCounter::new(secs(d.latency_us))))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use chrono::Utc;
    use netwatch_common::wire::{ProcessBandwidth, ProcessDns, ProcessTcpQuality, Snapshot};

    use super::super::{render, MetricsState, SavedCounters, SeriesLimits};

    /// A row of `pid` moving `bytes` each way, with these figures.
    fn row(
        pid: Option<u32>,
        comm: &str,
        bytes: u64,
        tcp: Option<ProcessTcpQuality>,
        dns: Option<ProcessDns>,
    ) -> ProcessBandwidth {
        let mut p = ProcessBandwidth::network_only(comm.into(), pid, bytes, bytes, 0.0, 0.0, 1);
        p.tcp_quality = tcp;
        p.dns = dns;
        p
    }

    fn snap(rows: Vec<ProcessBandwidth>) -> Snapshot {
        let mut s = Snapshot::empty(Utc::now());
        s.processes = Some(rows);
        s
    }

    fn state(top: usize, expiry_secs: u64) -> MetricsState {
        MetricsState::new(SeriesLimits {
            expiry: Duration::from_secs(expiry_secs),
            top_processes: top,
        })
    }

    fn cg(pid: u32) -> String {
        format!("/test/{pid}")
    }

    fn page(st: &MetricsState) -> String {
        render(&Arc::new(Mutex::new(st.clone())), None)
    }

    /// The sample lines of `page` whose metric name starts with `prefix`.
    fn lines(page: &str, prefix: &str) -> Vec<String> {
        page.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    /// (retransmits, bytes), (connects, refused, timed out), mean connect
    /// ms, (resets sent, received), mean RTT µs.
    fn tcp(
        (retransmits, retransmitted_bytes): (u64, u64),
        (connects, refused, timed_out): (u64, u64, u64),
        connect_ms_avg: Option<f64>,
        resets: (u64, u64),
        rtt_us_avg: Option<f64>,
    ) -> ProcessTcpQuality {
        ProcessTcpQuality {
            retransmits,
            retransmitted_bytes,
            connects,
            connects_refused: refused,
            connects_timed_out: timed_out,
            connect_ms_avg,
            resets_sent: resets.0,
            resets_received: resets.1,
            rtt_us_avg,
            ..Default::default()
        }
    }

    fn dns(queries: u64, responses: u64, failures: u64, nxdomain: u64, ms: f64) -> ProcessDns {
        ProcessDns {
            queries,
            responses,
            failures,
            nxdomain,
            unanswered: queries.saturating_sub(responses),
            latency_ms_avg: Some(ms),
            latency_ms_max: Some(ms),
        }
    }

    #[test]
    fn quality_counters_are_exact_after_a_few_snapshots() {
        let mut st = state(10, 300);
        let t0 = Instant::now();
        // curl: 3 intervals of TCP figures and DNS; sshd: TCP only;
        // a row without a pid (the folded row): into `other`.
        let ticks = [
            vec![
                row(
                    Some(42),
                    "curl",
                    100,
                    Some(tcp((3, 4344), (2, 1, 0), Some(12.5), (0, 1), Some(800.0))),
                    Some(dns(4, 4, 1, 1, 2.0)),
                ),
                row(
                    Some(7),
                    "sshd",
                    10,
                    Some(tcp((0, 0), (0, 0, 0), None, (1, 0), Some(250.0))),
                    None,
                ),
            ],
            vec![row(
                Some(42),
                "curl",
                100,
                Some(tcp((5, 7240), (3, 0, 1), Some(20.0), (0, 0), None)),
                Some(dns(3, 2, 0, 0, 5.0)),
            )],
            vec![
                row(Some(42), "curl", 0, None, None),
                row(
                    None,
                    "(others)",
                    5,
                    Some(tcp((1, 1448), (1, 1, 0), None, (0, 0), None)),
                    Some(dns(2, 2, 2, 0, 1.0)),
                ),
            ],
        ];
        for (i, rows) in ticks.into_iter().enumerate() {
            st.apply(&snap(rows), t0 + Duration::from_secs(i as u64), &mut cg);
        }
        let p = page(&st);
        let curl = "pid=\"42\",comm=\"curl\",cgroup=\"/test/42\"";
        let sshd = "pid=\"7\",comm=\"sshd\",cgroup=\"/test/7\"";
        let other = "pid=\"\",comm=\"other\",cgroup=\"\"";
        assert_eq!(
            lines(&p, "netwatch_process_tcp_retransmits_total"),
            [
                format!("netwatch_process_tcp_retransmits_total{{{sshd}}} 0"),
                format!("netwatch_process_tcp_retransmits_total{{{curl}}} 8"),
                format!("netwatch_process_tcp_retransmits_total{{{other}}} 1"),
            ]
        );
        assert_eq!(
            lines(&p, "netwatch_process_tcp_retransmitted_bytes_total"),
            [
                format!("netwatch_process_tcp_retransmitted_bytes_total{{{sshd}}} 0"),
                format!("netwatch_process_tcp_retransmitted_bytes_total{{{curl}}} 11584"),
                format!("netwatch_process_tcp_retransmitted_bytes_total{{{other}}} 1448"),
            ]
        );
        // curl: 2 connects (1 refused) then 3 (1 timed out): 3 established,
        // 1×12.5 ms + 2×20 ms = 52.5 ms.
        let connects: Vec<String> = lines(&p, "netwatch_process_tcp_connects_total")
            .into_iter()
            .filter(|l| l.contains("comm=\"curl\""))
            .collect();
        assert_eq!(
            connects,
            [
                format!("netwatch_process_tcp_connects_total{{{curl},result=\"established\"}} 3"),
                format!("netwatch_process_tcp_connects_total{{{curl},result=\"refused\"}} 1"),
                format!("netwatch_process_tcp_connects_total{{{curl},result=\"timed_out\"}} 1"),
                format!("netwatch_process_tcp_connects_total{{{curl},result=\"unreachable\"}} 0"),
                format!("netwatch_process_tcp_connects_total{{{curl},result=\"other\"}} 0"),
            ]
        );
        assert!(
            p.contains(&format!(
                "netwatch_process_tcp_connects_total{{{other},result=\"refused\"}} 1\n"
            )),
            "{p}"
        );
        assert_eq!(
            lines(&p, "netwatch_process_tcp_connect_seconds_total"),
            [
                format!("netwatch_process_tcp_connect_seconds_total{{{sshd}}} 0.0"),
                format!("netwatch_process_tcp_connect_seconds_total{{{curl}}} 0.0525"),
                format!("netwatch_process_tcp_connect_seconds_total{{{other}}} 0.0"),
            ]
        );
        assert_eq!(
            lines(&p, "netwatch_process_tcp_resets_total"),
            [
                format!("netwatch_process_tcp_resets_total{{{sshd},direction=\"sent\"}} 1"),
                format!("netwatch_process_tcp_resets_total{{{sshd},direction=\"received\"}} 0"),
                format!("netwatch_process_tcp_resets_total{{{curl},direction=\"sent\"}} 0"),
                format!("netwatch_process_tcp_resets_total{{{curl},direction=\"received\"}} 1"),
                format!("netwatch_process_tcp_resets_total{{{other},direction=\"sent\"}} 0"),
                format!("netwatch_process_tcp_resets_total{{{other},direction=\"received\"}} 0"),
            ]
        );
        // RTT is a gauge of the latest snapshot: none carried one.
        assert_eq!(
            lines(&p, "netwatch_process_tcp_rtt_seconds"),
            Vec::<String>::new()
        );
        assert!(!p.contains("netwatch_process_tcp_rtt"), "{p}");
        // DNS: curl 4+3 queries, 4+2 responses, 1 NXDOMAIN, 1 unanswered;
        // latency 4×2 ms + 2×5 ms = 18 ms. sshd carried no DNS: no series.
        assert_eq!(
            lines(&p, "netwatch_process_dns_queries_total"),
            [
                format!("netwatch_process_dns_queries_total{{{curl}}} 7"),
                format!("netwatch_process_dns_queries_total{{{other}}} 2"),
            ]
        );
        assert_eq!(
            lines(&p, "netwatch_process_dns_responses_total"),
            [
                format!("netwatch_process_dns_responses_total{{{curl}}} 6"),
                format!("netwatch_process_dns_responses_total{{{other}}} 2"),
            ]
        );
        assert_eq!(
            lines(&p, "netwatch_process_dns_failures_total"),
            [
                format!("netwatch_process_dns_failures_total{{{curl},reason=\"nxdomain\"}} 1"),
                format!("netwatch_process_dns_failures_total{{{curl},reason=\"error_rcode\"}} 0"),
                format!("netwatch_process_dns_failures_total{{{curl},reason=\"unanswered\"}} 1"),
                format!("netwatch_process_dns_failures_total{{{other},reason=\"nxdomain\"}} 0"),
                format!("netwatch_process_dns_failures_total{{{other},reason=\"error_rcode\"}} 2"),
                format!("netwatch_process_dns_failures_total{{{other},reason=\"unanswered\"}} 0"),
            ]
        );
        assert_eq!(
            lines(&p, "netwatch_process_dns_response_seconds_total"),
            [
                format!("netwatch_process_dns_response_seconds_total{{{curl}}} 0.018"),
                format!("netwatch_process_dns_response_seconds_total{{{other}}} 0.002"),
            ]
        );
        for line in [
            "# TYPE netwatch_process_tcp_retransmits counter\n",
            "# TYPE netwatch_process_tcp_connect_seconds counter\n",
            "# UNIT netwatch_process_tcp_connect_seconds seconds\n",
            "# UNIT netwatch_process_tcp_retransmitted_bytes bytes\n",
            "# TYPE netwatch_process_dns_failures counter\n",
        ] {
            assert!(p.contains(line), "missing {line:?} in\n{p}");
        }
    }

    /// A mean that is not a finite non-negative number (a NaN or an
    /// infinity from a broken division upstream) adds nothing and never
    /// panics; the counts beside it still count.
    #[test]
    fn non_finite_means_add_nothing() {
        let mut st = state(10, 300);
        for (i, ms) in [f64::NAN, f64::INFINITY, -5.0, 1e300]
            .into_iter()
            .enumerate()
        {
            st.apply(
                &snap(vec![row(
                    Some(42),
                    "curl",
                    1,
                    Some(tcp((1, 0), (1, 0, 0), Some(ms), (0, 0), Some(ms))),
                    Some(dns(1, 1, 0, 0, ms)),
                )]),
                Instant::now() + Duration::from_secs(i as u64),
                &mut cg,
            );
        }
        let s = &st.processes()[&super::super::ProcessKey {
            pid: 42,
            comm: "curl".into(),
            cgroup: cg(42),
        }];
        let t = s.quality.tcp.as_ref().expect("tcp");
        // 1e300 ms saturates (the counter is full, not wrapped).
        assert_eq!(
            (t.retransmits, t.connects_established, t.connect_us),
            (4, 4, u64::MAX)
        );
        assert_eq!(
            s.quality.dns.as_ref().map(|d| (d.queries, d.latency_us)),
            Some((4, u64::MAX))
        );
        assert_eq!(s.rtt_us, Some(u64::MAX));
    }

    #[test]
    fn rtt_is_the_latest_snapshots_mean_and_disappears_without_one() {
        let mut st = state(10, 300);
        let t0 = Instant::now();
        let with_rtt = |us| {
            row(
                Some(42),
                "curl",
                1,
                Some(tcp((0, 0), (0, 0, 0), None, (0, 0), Some(us))),
                None,
            )
        };
        st.apply(&snap(vec![with_rtt(800.0)]), t0, &mut cg);
        st.apply(
            &snap(vec![with_rtt(1500.0)]),
            t0 + Duration::from_secs(1),
            &mut cg,
        );
        let p = page(&st);
        assert_eq!(
            lines(&p, "netwatch_process_tcp_rtt_seconds"),
            ["netwatch_process_tcp_rtt_seconds{pid=\"42\",comm=\"curl\",cgroup=\"/test/42\"} 0.0015"]
        );
        assert!(
            p.contains("# TYPE netwatch_process_tcp_rtt_seconds gauge\n"),
            "{p}"
        );
        st.apply(
            &snap(vec![row(Some(42), "curl", 1, None, None)]),
            t0 + Duration::from_secs(2),
            &mut cg,
        );
        assert_eq!(
            lines(&page(&st), "netwatch_process_tcp_rtt_seconds"),
            Vec::<String>::new()
        );
    }

    /// Quality figures follow the byte series' cap: a process refused a
    /// series counts in `other`; an evicted or expired series takes its
    /// quality series with it; at most `top` process series per family.
    #[test]
    fn quality_series_are_bounded_like_the_byte_series() {
        let mut st = state(2, 60);
        let t0 = Instant::now();
        let q = |r| Some(tcp((r, 0), (0, 0, 0), None, (0, 0), None));
        let d = |n| Some(dns(n, n, 0, 0, 1.0));
        st.apply(
            &snap(vec![
                row(Some(1), "small", 10, q(1), d(1)),
                row(Some(2), "big", 1000, q(2), d(2)),
                row(Some(3), "mid", 100, q(4), d(4)),
            ]),
            t0,
            &mut cg,
        );
        let retrans = |st: &MetricsState| {
            lines(&page(st), "netwatch_process_tcp_retransmits_total")
                .into_iter()
                .map(|l| l.split_once("comm=\"").unwrap().1.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            retrans(&st),
            [
                "big\",cgroup=\"/test/2\"} 2",
                "mid\",cgroup=\"/test/3\"} 4",
                "other\",cgroup=\"\"} 1",
            ]
        );
        assert_eq!(st.other_quality().dns.as_ref().map(|d| d.queries), Some(1));
        // "mid" idles; the busy newcomer takes its place: mid's quality
        // series ends with its byte series.
        let t1 = t0 + Duration::from_secs(1);
        st.apply(
            &snap(vec![
                row(Some(2), "big", 1, q(1), None),
                row(Some(3), "mid", 0, None, None),
                row(Some(4), "new", 50, q(8), d(3)),
            ]),
            t1,
            &mut cg,
        );
        assert_eq!(
            retrans(&st),
            [
                "big\",cgroup=\"/test/2\"} 3",
                "new\",cgroup=\"/test/4\"} 8",
                "other\",cgroup=\"\"} 1",
            ]
        );
        for family in [
            "netwatch_process_tcp_retransmits_total",
            "netwatch_process_dns_queries_total",
            "netwatch_process_dns_response_seconds_total",
        ] {
            assert!(lines(&page(&st), family).len() <= 3, "{family}");
        }
        // Both expire after 60 s without a row: their quality goes too.
        st.apply(&snap(vec![]), t1 + Duration::from_secs(60), &mut cg);
        assert_eq!(retrans(&st), ["other\",cgroup=\"\"} 1"]);
        assert_eq!(
            lines(&page(&st), "netwatch_process_dns_queries_total"),
            ["netwatch_process_dns_queries_total{pid=\"\",comm=\"other\",cgroup=\"\"} 1"]
        );
    }

    /// A series whose process moved no bytes but counted DNS queries (or
    /// TCP events) in this snapshot is not idle: a busy newcomer does not
    /// evict it (that would drop the queries unseen); it goes to `other`.
    #[test]
    fn a_series_with_events_but_no_bytes_is_not_evicted() {
        let mut st = state(1, 300);
        let t0 = Instant::now();
        st.apply(
            &snap(vec![row(Some(6), "resolver", 0, None, None)]),
            t0,
            &mut cg,
        );
        st.apply(
            &snap(vec![
                row(Some(6), "resolver", 0, None, Some(dns(3, 3, 0, 0, 1.0))),
                row(Some(2), "busy", 500, None, Some(dns(1, 1, 0, 0, 1.0))),
            ]),
            t0 + Duration::from_secs(1),
            &mut cg,
        );
        assert_eq!(
            lines(&page(&st), "netwatch_process_dns_queries_total"),
            [
                "netwatch_process_dns_queries_total{pid=\"6\",comm=\"resolver\",cgroup=\"/test/6\"} 3",
                "netwatch_process_dns_queries_total{pid=\"\",comm=\"other\",cgroup=\"\"} 1",
            ]
        );
        assert_eq!(st.other_bytes_total(), (500, 500));
    }

    /// Under a flood of distinct processes each with quality figures, the
    /// families hold at most `top` process series and nothing is lost:
    /// every retransmit is in a series or in `other`.
    #[test]
    fn a_flood_of_processes_keeps_quality_families_bounded_and_counts_all() {
        let mut st = state(5, 300);
        let t0 = Instant::now();
        let rows: Vec<ProcessBandwidth> = (1..=1000u32)
            .map(|pid| {
                row(
                    Some(pid),
                    "flood",
                    u64::from(pid),
                    Some(tcp((1, 100), (0, 0, 0), None, (0, 0), None)),
                    None,
                )
            })
            .collect();
        st.apply(&snap(rows), t0, &mut cg);
        let p = page(&st);
        let got = lines(&p, "netwatch_process_tcp_retransmits_total");
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!(
            got.last().map(String::as_str),
            Some("netwatch_process_tcp_retransmits_total{pid=\"\",comm=\"other\",cgroup=\"\"} 995")
        );
        let sum: u64 = got
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(sum, 1000);
    }

    /// Saved and restored with the byte counters: a restarted agent on the
    /// same pins continues each quality counter from its total.
    #[test]
    fn a_restart_keeps_quality_totals() {
        let mut st = state(10, 300);
        let t0 = Instant::now();
        let q = Some(tcp((3, 300), (2, 1, 0), Some(10.0), (1, 2), Some(500.0)));
        st.apply(
            &snap(vec![
                row(Some(42), "curl", 10, q.clone(), Some(dns(5, 4, 1, 1, 3.0))),
                row(None, "(others)", 1, q.clone(), None),
            ]),
            t0,
            &mut cg,
        );
        let text = st.saved("pins-q", t0, 1_000).encode();
        let back = SavedCounters::decode(&text, "pins-q").expect("decodes");
        let mut next = state(10, 300);
        let t1 = Instant::now();
        next.restore(&back, t1, 2_000);
        next.apply(
            &snap(vec![row(
                Some(42),
                "curl",
                10,
                q.clone(),
                Some(dns(1, 1, 0, 0, 3.0)),
            )]),
            t1,
            &mut cg,
        );
        let p = page(&next);
        let curl = "pid=\"42\",comm=\"curl\",cgroup=\"/test/42\"";
        for line in [
            format!("netwatch_process_tcp_retransmits_total{{{curl}}} 6\n"),
            format!("netwatch_process_tcp_retransmitted_bytes_total{{{curl}}} 600\n"),
            format!("netwatch_process_tcp_connects_total{{{curl},result=\"established\"}} 2\n"),
            format!("netwatch_process_tcp_connects_total{{{curl},result=\"refused\"}} 2\n"),
            format!("netwatch_process_tcp_connect_seconds_total{{{curl}}} 0.02\n"),
            format!("netwatch_process_tcp_resets_total{{{curl},direction=\"received\"}} 4\n"),
            format!("netwatch_process_dns_queries_total{{{curl}}} 6\n"),
            format!("netwatch_process_dns_failures_total{{{curl},reason=\"nxdomain\"}} 1\n"),
            format!("netwatch_process_dns_response_seconds_total{{{curl}}} 0.015\n"),
            "netwatch_process_tcp_retransmits_total{pid=\"\",comm=\"other\",cgroup=\"\"} 3\n"
                .to_string(),
            format!("netwatch_process_receive_bytes_total{{{curl}}} 20\n"),
        ] {
            assert!(p.contains(&line), "missing {line:?} in\n{p}");
        }
        // A file of an agent before these counters: read, quality from 0.
        let old = r#"{"instance":"pins-q","saved_unix_ms":1,"processes":[{"pid":9,"comm":"a","cgroup":"","rx_bytes_total":5,"tx_bytes_total":6,"seen_ms_ago":0,"active_ms_ago":0}],"other_rx_bytes_total":0,"other_tx_bytes_total":0,"series_expired_total":0,"series_evicted_total":0}"#;
        let old = format!(
            "netwatch-prometheus-counters 1 {:08x}\n{old}",
            crc32fast::hash(old.as_bytes())
        );
        let saved = SavedCounters::decode(&old, "pins-q").expect("an older file decodes");
        assert!(saved.processes[0].quality.is_empty());
        assert!(saved.other_quality.is_empty());
        // The fuzz seed with quality counters (some left out: read as 0)
        // decodes, and encodes back to the same counters.
        let seed = include_str!("../../../../fuzz/corpus/prom_counters/body_quality");
        let body = seed.trim_start_matches('\u{1}');
        let file = format!(
            "netwatch-prometheus-counters 1 {:08x}\n{body}",
            crc32fast::hash(body.as_bytes())
        );
        let saved = SavedCounters::decode(&file, "pins-1").expect("the seed decodes");
        assert_eq!(
            saved.other_quality.dns,
            Some(super::DnsTotals {
                queries: 1,
                ..Default::default()
            })
        );
        assert_eq!(
            saved.processes[0]
                .quality
                .tcp
                .as_ref()
                .map(|t| t.connect_us),
            Some(25_000)
        );
        let again = SavedCounters::decode(&saved.encode(), "pins-1").expect("decodes");
        assert_eq!(again, saved);
    }

    #[test]
    fn a_hostile_process_name_stays_escaped_in_quality_series() {
        const COMM: &str = "a\"b\\c\nd\x1b[2J";
        let mut st = state(10, 300);
        st.apply(
            &snap(vec![row(
                Some(9),
                COMM,
                1,
                Some(tcp((2, 0), (1, 1, 0), None, (0, 0), Some(100.0))),
                Some(dns(1, 1, 0, 0, 1.0)),
            )]),
            Instant::now(),
            &mut |_| "/x\"y".to_string(),
        );
        let p = page(&st);
        let labels = "pid=\"9\",comm=\"a\\\"b\\\\c\\nd\x1b[2J\",cgroup=\"/x\\\"y\"";
        for line in [
            format!("netwatch_process_tcp_retransmits_total{{{labels}}} 2\n"),
            format!("netwatch_process_tcp_connects_total{{{labels},result=\"refused\"}} 1\n"),
            format!("netwatch_process_tcp_rtt_seconds{{{labels}}} 0.0001\n"),
            format!("netwatch_process_dns_queries_total{{{labels}}} 1\n"),
        ] {
            assert!(p.contains(&line), "missing {line:?} in\n{p}");
        }
        // No line of the page starts inside a label value.
        assert!(
            p.lines()
                .all(|l| l.starts_with("netwatch_") || l.starts_with("# ")),
            "{p}"
        );
    }

    proptest::proptest! {
        /// Whatever the rows, the cap and the clock: a live series'
        /// quality counters never go down, `other`'s never go down, and
        /// every retransmit and DNS query fed in is in a live series, in
        /// `other`, or in a series that ended (expired or evicted).
        #[test]
        fn quality_counters_are_monotonic_and_conserved(
            top in 1usize..5,
            ticks in proptest::collection::vec(
                (0u64..40, proptest::collection::vec(
                    (0u32..8, 0u64..1000, 0u64..50, proptest::option::of(0u64..20)),
                    0..8,
                )),
                1..30,
            ),
        ) {
            let mut st = state(top, 60);
            let mut now = Instant::now();
            let (mut fed_r, mut fed_q) = (0u64, 0u64);
            let (mut gone_r, mut gone_q) = (0u64, 0u64);
            let r = |q: &super::QualityTotals| q.tcp.as_ref().map_or(0, |t| t.retransmits);
            let d = |q: &super::QualityTotals| q.dns.as_ref().map_or(0, |d| d.queries);
            for (step, rows) in ticks {
                now += Duration::from_secs(step);
                let mut seen = std::collections::HashSet::new();
                let rows: Vec<ProcessBandwidth> = rows
                    .into_iter()
                    .filter(|r| seen.insert(r.0))
                    .map(|(pid, bytes, retrans, queries)| {
                        fed_r += retrans;
                        fed_q += queries.unwrap_or(0);
                        row(
                            Some(pid),
                            "p",
                            bytes,
                            Some(tcp((retrans, 0), (0, 0, 0), None, (0, 0), None)),
                            queries.map(|n| dns(n, n, 0, 0, 1.0)),
                        )
                    })
                    .collect();
                let before = st.clone();
                st.apply(&snap(rows), now, &mut cg);
                proptest::prop_assert!(st.processes().len() <= top);
                proptest::prop_assert!(r(st.other_quality()) >= r(before.other_quality()));
                proptest::prop_assert!(d(st.other_quality()) >= d(before.other_quality()));
                for (k, old) in before.processes() {
                    match st.processes().get(k) {
                        Some(new) => {
                            proptest::prop_assert!(r(&new.quality) >= r(&old.quality));
                            proptest::prop_assert!(d(&new.quality) >= d(&old.quality));
                        }
                        None => {
                            gone_r += r(&old.quality);
                            gone_q += d(&old.quality);
                        }
                    }
                }
                let live_r: u64 = st.processes().values().map(|s| r(&s.quality)).sum();
                let live_q: u64 = st.processes().values().map(|s| d(&s.quality)).sum();
                proptest::prop_assert_eq!(live_r + gone_r + r(st.other_quality()), fed_r);
                proptest::prop_assert_eq!(live_q + gone_q + d(st.other_quality()), fed_q);
            }
        }
    }
}
