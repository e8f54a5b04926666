//! The `/metrics` page: renders a [`MetricsState`] (and the delivery,
//! drop and supervision counters) in the OpenMetrics text format with
//! `prometheus-client`, one function per group of metric families, in the
//! page's order: processes, their series, interfaces, TCP states, the
//! agent, alerts, delivery and spool.
//!
//! It must never hold the state's lock while encoding (a scrape copies the
//! state and lets go), never write a label value unescaped (names come from
//! outside: process names, cgroups, interfaces), and never expose
//! configuration: no API key, no endpoint.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use netwatch_common::wire::InterfaceMetric;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelSetEncoder,
    LabelValueEncoder,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::delivery::{DeliveryReport, DeliveryView};
use super::lock;
use super::quality;
use super::series::{MetricsState, ProcessKey, ProcessSeries};

/// The `comm` label of the series that counts processes without a series.
pub const OTHER_COMM: &str = "other";

/// A label value, escaped as the text format requires (`\`, `"`, newline).
/// prometheus-client writes label values as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Text<'a>(pub(super) &'a str);

impl EncodeLabelValue for Text<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// A set of `(name, value)` labels with escaped values.
#[derive(Debug)]
pub(super) struct Labels<'a, const N: usize>(pub(super) [(&'static str, Text<'a>); N]);

impl<const N: usize> EncodeLabelSet for Labels<'_, N> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.as_slice().encode(encoder)
    }
}

/// The registered collector: copies the state under the lock, encodes
/// outside it.
#[derive(Debug)]
struct StateCollector {
    state: Arc<Mutex<MetricsState>>,
    delivery: Option<Arc<dyn DeliveryReport>>,
}

fn counter<S: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(S, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<S: EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(S, i64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A counter without labels.
fn counter1(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: u64,
) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

/// A gauge without labels.
fn gauge1(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: i64,
) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let st = lock(&self.state).clone();
        let delivery = self.delivery.as_ref().map(|d| d.view());
        encode_state(&mut enc, &st, delivery.as_ref())
    }
}

fn encode_state(
    enc: &mut DescriptorEncoder,
    st: &MetricsState,
    delivery: Option<&DeliveryView>,
) -> std::fmt::Result {
    // Processes, sorted for a stable page.
    let mut procs: Vec<(&ProcessKey, &ProcessSeries)> = st.processes.iter().collect();
    procs.sort_by(|a, b| a.0.cmp(b.0));
    let pids: Vec<String> = procs.iter().map(|(k, _)| k.pid.to_string()).collect();
    encode_process_bytes(enc, st, &procs, &pids)?;
    encode_process_quality(enc, st, &procs, &pids)?;
    encode_series(enc, st)?;
    encode_interfaces(enc, &st.interfaces)?;
    encode_tcp_states(enc, st.tcp)?;
    encode_agent(enc, st)?;
    encode_alerts(enc, st)?;
    if let Some(d) = delivery {
        encode_delivery(enc, d)?;
        encode_spool(enc, d)?;
    }
    Ok(())
}

/// `netwatch_process_{receive,transmit}_bytes_total`: one series per
/// process (`procs`, sorted, with their pids as text), then `other`.
fn encode_process_bytes(
    enc: &mut DescriptorEncoder,
    st: &MetricsState,
    procs: &[(&ProcessKey, &ProcessSeries)],
    pids: &[String],
) -> std::fmt::Result {
    let bytes = Some(&Unit::Bytes);
    let mut rx = Vec::with_capacity(procs.len() + 1);
    let mut tx = Vec::with_capacity(procs.len() + 1);
    for ((k, s), pid) in procs.iter().zip(pids) {
        let labels = || {
            Labels([
                ("pid", Text(pid)),
                ("comm", Text(&k.comm)),
                ("cgroup", Text(&k.cgroup)),
            ])
        };
        rx.push((labels(), s.rx_bytes_total));
        tx.push((labels(), s.tx_bytes_total));
    }
    let other = || {
        Labels([
            ("pid", Text("")),
            ("comm", Text(OTHER_COMM)),
            ("cgroup", Text("")),
        ])
    };
    rx.push((other(), st.other_rx_bytes_total));
    tx.push((other(), st.other_tx_bytes_total));
    counter(
        enc,
        "netwatch_process_receive",
        "Bytes received by a process's sockets (comm=\"other\": processes without a series of their own)",
        bytes,
        &rx,
    )?;
    counter(
        enc,
        "netwatch_process_transmit",
        "Bytes sent by a process's sockets (comm=\"other\": processes without a series of their own)",
        bytes,
        &tx,
    )
}

/// The TCP quality and DNS families of each process series and of
/// `other` ([`quality::encode`]).
fn encode_process_quality(
    enc: &mut DescriptorEncoder,
    st: &MetricsState,
    procs: &[(&ProcessKey, &ProcessSeries)],
    pids: &[String],
) -> std::fmt::Result {
    let mut shown: Vec<quality::Shown<'_>> = procs
        .iter()
        .zip(pids)
        .map(|((k, s), pid)| quality::Shown {
            pid,
            comm: &k.comm,
            cgroup: &k.cgroup,
            totals: &s.quality,
            rtt_us: s.rtt_us,
        })
        .collect();
    shown.push(quality::Shown {
        pid: "",
        comm: OTHER_COMM,
        cgroup: "",
        totals: &st.other_quality,
        rtt_us: None,
    });
    quality::encode(enc, &shown)
}

/// How many process series there are, and how many were removed.
fn encode_series(enc: &mut DescriptorEncoder, st: &MetricsState) -> std::fmt::Result {
    gauge1(
        enc,
        "netwatch_process_series",
        "Process series now shown (bounded by top_processes)",
        None,
        signed(st.processes.len() as u64),
    )?;
    counter(
        enc,
        "netwatch_process_series_removed",
        "Process series removed: expired (process gone) or evicted (room for a busier one)",
        None,
        &[
            (
                Labels([("reason", Text("expired"))]),
                st.series_expired_total,
            ),
            (
                Labels([("reason", Text("evicted"))]),
                st.series_evicted_total,
            ),
        ],
    )
}

/// The interfaces' counters and whether each is up.
fn encode_interfaces(
    enc: &mut DescriptorEncoder,
    interfaces: &[InterfaceMetric],
) -> std::fmt::Result {
    let bytes = Some(&Unit::Bytes);
    type Field = fn(&InterfaceMetric) -> u64;
    let iface: [(&str, &str, Option<&Unit>, Field); 8] = [
        (
            "netwatch_interface_receive",
            "Bytes received by the interface",
            bytes,
            |i| i.rx_bytes,
        ),
        (
            "netwatch_interface_transmit",
            "Bytes sent by the interface",
            bytes,
            |i| i.tx_bytes,
        ),
        (
            "netwatch_interface_receive_packets",
            "Packets received by the interface",
            None,
            |i| i.rx_packets,
        ),
        (
            "netwatch_interface_transmit_packets",
            "Packets sent by the interface",
            None,
            |i| i.tx_packets,
        ),
        (
            "netwatch_interface_receive_errors",
            "Receive errors of the interface",
            None,
            |i| i.rx_errors,
        ),
        (
            "netwatch_interface_transmit_errors",
            "Transmit errors of the interface",
            None,
            |i| i.tx_errors,
        ),
        (
            "netwatch_interface_receive_drops",
            "Received packets the interface dropped",
            None,
            |i| i.rx_drops,
        ),
        (
            "netwatch_interface_transmit_drops",
            "Packets to send the interface dropped",
            None,
            |i| i.tx_drops,
        ),
    ];
    for (name, help, unit, field) in iface {
        let series: Vec<_> = interfaces
            .iter()
            .map(|i| (Labels([("interface", Text(&i.name))]), field(i)))
            .collect();
        counter(enc, name, help, unit, &series)?;
    }
    let up: Vec<_> = interfaces
        .iter()
        .map(|i| (Labels([("interface", Text(&i.name))]), i64::from(i.is_up)))
        .collect();
    gauge(
        enc,
        "netwatch_interface_up",
        "1 if the interface is up",
        None,
        &up,
    )
}

/// The host's TCP sockets by state: (established, time_wait, close_wait),
/// nothing when the snapshot had no count.
fn encode_tcp_states(
    enc: &mut DescriptorEncoder,
    tcp: Option<(u32, u32, u32)>,
) -> std::fmt::Result {
    let Some((est, tw, cw)) = tcp else {
        return Ok(());
    };
    gauge(
        enc,
        "netwatch_tcp_connections",
        "TCP sockets of the host by state",
        None,
        &[
            (Labels([("state", Text("established"))]), i64::from(est)),
            (Labels([("state", Text("time_wait"))]), i64::from(tw)),
            (Labels([("state", Text("close_wait"))]), i64::from(cw)),
        ],
    )
}

/// The agent itself: its version, where its bytes come from, snapshots,
/// the latest snapshot's size and the records its source lost.
fn encode_agent(enc: &mut DescriptorEncoder, st: &MetricsState) -> std::fmt::Result {
    {
        let mut m = enc.encode_descriptor(
            "netwatch_agent_build",
            "The agent's version",
            None,
            MetricType::Info,
        )?;
        m.encode_info(&Labels([("version", Text(env!("CARGO_PKG_VERSION")))]))?;
    }
    if let Some(c) = &st.collector {
        let mut m = enc.encode_descriptor(
            "netwatch_agent_collector",
            "Where per-process bytes come from: source, eBPF tier, estimated",
            None,
            MetricType::Info,
        )?;
        let estimated = if c.estimated { "true" } else { "false" };
        m.encode_info(&Labels([
            ("source", Text(&c.source)),
            ("tier", Text(c.ebpf_tier.as_deref().unwrap_or(""))),
            ("estimated", Text(estimated)),
        ]))?;
    }
    counter1(
        enc,
        "netwatch_agent_snapshots",
        "Snapshots taken",
        None,
        st.snapshots_total,
    )?;
    gauge1(
        enc,
        "netwatch_agent_connections",
        "Connections (socket samples) in the latest snapshot",
        None,
        signed(st.connections),
    )?;
    gauge1(
        enc,
        "netwatch_agent_processes",
        "Process rows in the latest snapshot",
        None,
        signed(st.process_rows),
    )?;
    counter1(
        enc,
        "netwatch_agent_lost_records",
        "Records the source lost since the agent started (map eviction, full ring buffer, dropped packets)",
        None,
        st.lost_records_total,
    )
}

/// Alerts raised, by category and severity, each counted once.
fn encode_alerts(enc: &mut DescriptorEncoder, st: &MetricsState) -> std::fmt::Result {
    let alerts: Vec<_> = st
        .alerts
        .totals()
        .into_iter()
        .map(|(c, s, n)| {
            (
                Labels([
                    ("category", Text(crate::alerts::counter::category_label(c))),
                    ("severity", Text(crate::alerts::counter::severity_label(s))),
                ]),
                n,
            )
        })
        .collect();
    counter(
        enc,
        "netwatch_alerts",
        "Alerts raised (port scan, beaconing, DNS tunnel, bandwidth), each counted once",
        None,
        &alerts,
    )
}

/// The ingest requests and what NetWatch Cloud made of them.
fn encode_delivery(enc: &mut DescriptorEncoder, d: &DeliveryView) -> std::fmt::Result {
    counter1(
        enc,
        "netwatch_agent_delivery_requests",
        "Ingest requests sent",
        None,
        d.requests,
    )?;
    counter1(
        enc,
        "netwatch_agent_delivered_snapshots",
        "Snapshots NetWatch Cloud accepted",
        None,
        d.delivered,
    )?;
    counter1(
        enc,
        "netwatch_agent_rejected_snapshots",
        "Snapshots NetWatch Cloud rejected (not resent)",
        None,
        d.rejected,
    )?;
    let errors: Vec<_> = d
        .errors
        .iter()
        .map(|(k, v)| (Labels([("status", Text(k))]), *v))
        .collect();
    counter(
        enc,
        "netwatch_agent_delivery_errors",
        "Failed ingest requests by HTTP status (a 3xx included: redirects are not followed), status=\"transport\" (no or half an answer), or a 207 not usable (207_unreadable, 207_incomplete)",
        None,
        &errors,
    )?;
    gauge1(
        enc,
        "netwatch_agent_last_delivery_timestamp_seconds",
        "Unix time of the last request NetWatch Cloud answered with 200 or 207 (0: never)",
        None,
        signed(d.last_success_unix_secs),
    )
}

/// The spool of snapshots waiting for delivery: its size and its losses.
fn encode_spool(enc: &mut DescriptorEncoder, d: &DeliveryView) -> std::fmt::Result {
    let bytes = Some(&Unit::Bytes);
    gauge1(
        enc,
        "netwatch_agent_spool_snapshots",
        "Snapshots waiting in the spool",
        None,
        signed(d.spool_depth),
    )?;
    gauge1(
        enc,
        "netwatch_agent_spool",
        "Bytes the spool holds on disk",
        bytes,
        signed(d.spool_bytes),
    )?;
    counter(
        enc,
        "netwatch_agent_spool_dropped_snapshots",
        "Snapshots the spool lost: evicted past the bound, corrupt, torn writes, writes that failed (full, read-only, I/O error), or records another user could have written (foreign: removed, never sent)",
        None,
        &[
            (Labels([("reason", Text("evicted"))]), d.spool_evicted),
            (Labels([("reason", Text("corrupt"))]), d.spool_corrupt),
            (Labels([("reason", Text("torn"))]), d.spool_torn),
            (Labels([("reason", Text("write_failed"))]), d.spool_write_failed),
            (Labels([("reason", Text("foreign"))]), d.spool_foreign),
        ],
    )?;
    counter1(
        enc,
        "netwatch_agent_spool_read_errors",
        "Spool record reads that failed for an I/O reason (EMFILE, EIO, ...); the records are kept and read again",
        None,
        d.spool_read_errors,
    )
}

/// Render `state` (and `delivery`) as one OpenMetrics page.
pub fn render(
    state: &Arc<Mutex<MetricsState>>,
    delivery: Option<Arc<dyn DeliveryReport>>,
) -> String {
    let registry = registry(state, delivery);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The registry `/metrics` encodes: one collector over the shared state.
pub(super) fn registry(
    state: &Arc<Mutex<MetricsState>>,
    delivery: Option<Arc<dyn DeliveryReport>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StateCollector {
        state: Arc::clone(state),
        delivery,
    }));
    registry.register_collector(Box::new(ComponentCollector));
    registry.register_collector(Box::new(DropsCollector));
    registry
}

/// What the bounded tables dropped ([`crate::drops`]). Nothing is written
/// while no table dropped anything.
#[derive(Debug)]
struct DropsCollector;

impl Collector for DropsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let tables = crate::drops::totals();
        if tables.is_empty() {
            return Ok(());
        }
        let dropped: Vec<_> = tables
            .iter()
            .map(|&(name, total)| (Labels([("table", Text(name))]), total))
            .collect();
        counter(
            &mut enc,
            "netwatch_agent_table_dropped",
            "Entries a bounded table (keyed by data from outside: DNS names, alert keys, \
             scan sources, flows, events, series) refused or evicted because it was full",
            None,
            &dropped,
        )
    }
}

/// The supervised parts ([`crate::supervise::components`]): up or not, and
/// their restarts. Nothing is written while no part runs.
#[derive(Debug)]
struct ComponentCollector;

impl Collector for ComponentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let parts = crate::supervise::components();
        if parts.is_empty() {
            return Ok(());
        }
        let up: Vec<_> = parts
            .iter()
            .map(|c| (Labels([("component", Text(c.name))]), i64::from(c.up)))
            .collect();
        gauge(
            &mut enc,
            "netwatch_agent_component_up",
            "Whether the agent's part (a worker thread) runs: 0 while it waits for its \
             restart, and once given up on (the agent then exits)",
            None,
            &up,
        )?;
        let restarts: Vec<_> = parts
            .iter()
            .map(|c| (Labels([("component", Text(c.name))]), c.restarts))
            .collect();
        counter(
            &mut enc,
            "netwatch_agent_component_restarts",
            "Times the agent's part was restarted after a panic or a failure",
            None,
            &restarts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{cg, page, snap, state};
    use super::*;
    use chrono::Utc;
    use netwatch_common::wire::CollectorInfo;
    use std::time::Instant;

    #[test]
    fn label_values_are_escaped() {
        let mut st = state(10, 300);
        st.apply(
            &snap(&[(9, "we\"ird\\na\nme", 1, 1)]),
            Instant::now(),
            &mut |_| "/a\"b".to_string(),
        );
        let p = page(&st, None);
        assert!(
            p.contains(
                "netwatch_process_receive_bytes_total{pid=\"9\",comm=\"we\\\"ird\\\\na\\nme\",cgroup=\"/a\\\"b\"} 1\n"
            ),
            "{p}"
        );
    }

    /// Hostile names (a process named with `"`, `\`, a newline and an
    /// escape, a cgroup with the same) give a page that a strict OpenMetrics
    /// parser reads whole, with the exact names as the label values, and
    /// the other series intact.
    #[test]
    fn hostile_label_values_parse_back_exactly_with_a_real_parser() {
        const COMM: &str = "a\"b\\c\nd\x1b[2J";
        const CGROUP: &str = "/user.slice/x\"}\\\n\x1b]0;y\x07 z=\"1\",";
        let mut st = state(10, 300);
        // With TCP quality and DNS figures: their families parse too.
        let mut s = snap(&[(9, COMM, 111, 222), (10, "curl", 333, 444)]);
        for row in s.processes.iter_mut().flatten() {
            row.tcp_quality = Some(netwatch_common::wire::ProcessTcpQuality {
                retransmits: 3,
                connects: 2,
                connects_refused: 1,
                connect_ms_avg: Some(1.5),
                rtt_us_avg: Some(250.0),
                ..Default::default()
            });
            row.dns = Some(netwatch_common::wire::ProcessDns {
                queries: 2,
                responses: 1,
                latency_ms_avg: Some(3.0),
                ..Default::default()
            });
        }
        st.apply(&s, Instant::now(), &mut |pid| {
            if pid == 9 {
                CGROUP.to_string()
            } else {
                cg(pid)
            }
        });
        let page = page(&st, None);
        // openmetrics-parser 0.5.1 refuses a family with descriptors and no
        // sample (the spec allows it; this page has such families when
        // nothing was seen yet, e.g. no interfaces): parse every family
        // that has a sample, which is every label value on the page.
        let mut families: Vec<String> = Vec::new();
        for line in page.lines().filter(|l| *l != "# EOF") {
            if line.starts_with("# HELP ") || families.is_empty() {
                families.push(String::new());
            }
            let f = families.last_mut().expect("one family");
            f.push_str(line);
            f.push('\n');
        }
        let sampled: String = families
            .iter()
            .filter(|f| f.lines().any(|l| !l.starts_with('#')))
            .map(String::as_str)
            .collect();
        assert!(page.ends_with("# EOF\n"), "{page}");
        assert_eq!(
            sampled.lines().filter(|l| !l.starts_with('#')).count(),
            page.lines().filter(|l| !l.starts_with('#')).count()
        );
        let sampled = format!("{sampled}# EOF\n");
        let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&sampled)
            .unwrap_or_else(|e| panic!("the page does not parse: {e:?}\n{sampled}"));
        let family = &exposition.families["netwatch_process_receive_bytes"];
        let mut got: Vec<(String, String, String, f64)> = family
            .iter_samples()
            .map(|s| {
                let l = s.get_labelset().expect("labels");
                let v = match &s.value {
                    openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
                    other => panic!("not a counter: {other:?}"),
                };
                let get = |n: &str| l.get_label_value(n).unwrap_or("?").to_string();
                (get("pid"), get("comm"), get("cgroup"), v)
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("".into(), "other".into(), "".into(), 0.0),
                ("10".into(), "curl".into(), "/test/10".into(), 333.0),
                ("9".into(), COMM.into(), CGROUP.into(), 111.0),
            ]
        );
        let family = &exposition.families["netwatch_process_tcp_retransmits"];
        let mut comms: Vec<String> = family
            .iter_samples()
            .map(|s| {
                let l = s.get_labelset().expect("labels");
                l.get_label_value("comm").unwrap_or("?").to_string()
            })
            .collect();
        comms.sort();
        assert_eq!(comms, [COMM, "curl"]);
        assert_eq!(
            exposition.families["netwatch_process_tcp_connects"]
                .iter_samples()
                .count(),
            10
        );
    }

    #[test]
    fn interfaces_tcp_states_collector_and_delivery_are_rendered() {
        let mut st = state(10, 300);
        let mut s = snap(&[]);
        s.interfaces = vec![InterfaceMetric {
            name: "lo".into(),
            is_up: true,
            rx_bytes: 11,
            tx_bytes: 12,
            rx_bytes_delta: 0,
            tx_bytes_delta: 0,
            rx_packets: 13,
            tx_packets: 14,
            rx_errors: 15,
            tx_errors: 16,
            rx_drops: 17,
            tx_drops: 18,
            rx_rate: None,
            tx_rate: None,
            rx_history: None,
            tx_history: None,
        }];
        s.connection_count = Some(3);
        s.tcp_time_wait = Some(4);
        s.tcp_close_wait = Some(5);
        s.collector = Some(CollectorInfo {
            source: "ebpf".into(),
            ebpf_tier: Some("tracepoint".into()),
            estimated: false,
            fallback_reason: None,
            lost_records: Some(6),
            connections_truncated: None,
            processes_folded: None,
        });
        st.apply(&s, Instant::now(), &mut cg);
        let p = page(
            &st,
            Some(DeliveryView {
                requests: 9,
                delivered: 7,
                rejected: 1,
                last_success_unix_secs: 1_700_000_000,
                errors: vec![("503".into(), 2), ("transport".into(), 3)],
                spool_depth: 4,
                spool_bytes: 4096,
                spool_evicted: 1,
                spool_corrupt: 2,
                spool_torn: 0,
                spool_write_failed: 5,
                spool_read_errors: 6,
                spool_foreign: 7,
            }),
        );
        for line in [
            "netwatch_interface_receive_bytes_total{interface=\"lo\"} 11\n",
            "netwatch_interface_transmit_bytes_total{interface=\"lo\"} 12\n",
            "netwatch_interface_receive_packets_total{interface=\"lo\"} 13\n",
            "netwatch_interface_transmit_packets_total{interface=\"lo\"} 14\n",
            "netwatch_interface_receive_errors_total{interface=\"lo\"} 15\n",
            "netwatch_interface_transmit_errors_total{interface=\"lo\"} 16\n",
            "netwatch_interface_receive_drops_total{interface=\"lo\"} 17\n",
            "netwatch_interface_transmit_drops_total{interface=\"lo\"} 18\n",
            "netwatch_interface_up{interface=\"lo\"} 1\n",
            "netwatch_tcp_connections{state=\"established\"} 3\n",
            "netwatch_tcp_connections{state=\"time_wait\"} 4\n",
            "netwatch_tcp_connections{state=\"close_wait\"} 5\n",
            "netwatch_agent_collector_info{source=\"ebpf\",tier=\"tracepoint\",estimated=\"false\"} 1\n",
            "netwatch_agent_lost_records_total 6\n",
            "netwatch_agent_delivery_requests_total 9\n",
            "netwatch_agent_delivered_snapshots_total 7\n",
            "netwatch_agent_rejected_snapshots_total 1\n",
            "netwatch_agent_delivery_errors_total{status=\"503\"} 2\n",
            "netwatch_agent_delivery_errors_total{status=\"transport\"} 3\n",
            "netwatch_agent_last_delivery_timestamp_seconds 1700000000\n",
            "netwatch_agent_spool_snapshots 4\n",
            "netwatch_agent_spool_bytes 4096\n",
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"evicted\"} 1\n",
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"corrupt\"} 2\n",
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"write_failed\"} 5\n",
            "netwatch_agent_spool_read_errors_total 6\n",
            "netwatch_agent_spool_dropped_snapshots_total{reason=\"foreign\"} 7\n",
        ] {
            assert!(p.contains(line), "missing {line:?} in\n{p}");
        }
    }

    #[test]
    fn alerts_are_counted_once_by_category_and_severity() {
        use netwatch_common::wire::{Alert, AlertCategory, AlertSeverity};
        let mut st = state(10, 300);
        let scan = Alert {
            severity: AlertSeverity::Critical,
            category: AlertCategory::PortScan,
            message: "port scan from 10.0.0.9".into(),
            detail: "25 ports in 30 s".into(),
            timestamp: Utc::now(),
        };
        let mut s = snap(&[]);
        s.alerts = Some(vec![scan.clone()]);
        // An active alert rides along in consecutive snapshots: one count.
        for _ in 0..3 {
            st.apply(&s, Instant::now(), &mut cg);
        }
        let p = page(&st, None);
        for line in [
            "netwatch_alerts_total{category=\"port_scan\",severity=\"critical\"} 1\n",
            "netwatch_alerts_total{category=\"port_scan\",severity=\"warning\"} 0\n",
            "netwatch_alerts_total{category=\"bandwidth\",severity=\"warning\"} 0\n",
        ] {
            assert!(p.contains(line), "missing {line:?} in\n{p}");
        }
    }
}
