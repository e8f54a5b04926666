//! Tests that keep README.md and docs/ true to the code: the configuration
//! example is accepted by the agent's own loader and names every key it
//! knows; the metrics table lists exactly the families `/metrics` renders;
//! every relative link points to a file that exists; the README stays
//! short; every refusal message troubleshooting.md quotes still occurs in
//! the source. They read files and call library functions only: they must
//! never need root, the network or a kernel feature.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use netwatch::config::{self, Args, Output};
use netwatch::sink::prometheus::{self, DeliveryReport, DeliveryView, MetricsState, SeriesLimits};
use netwatch_common::wire::{
    Alert, AlertCategory, AlertSeverity, CollectorInfo, InterfaceMetric, ProcessBandwidth,
    ProcessDns, ProcessTcpQuality, Snapshot,
};

/// The repository's root (this crate's parent).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("netwatch-user sits in the repository")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The body of the first fenced block of `lang` whose first line starts
/// with `first`.
fn fenced(page: &str, lang: &str, first: &str) -> String {
    page.split(&format!("```{lang}\n"))
        .skip(1)
        .find(|b| b.starts_with(first))
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("no ```{lang} block starting with {first:?}"))
        .to_string()
}

/// The names between backticks in `text`.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

// ---- (a) the configuration example ------------------------------------

const EXAMPLE_HEAD: &str = "# /etc/netwatch-agent/config.toml";

/// The keys the loader knows in `section` (`None`: the top level), as its
/// own error for an unknown key lists them.
fn loader_keys(section: Option<&str>) -> Option<BTreeSet<String>> {
    let text = match section {
        None => "nw_docs_probe = 1\n".to_string(),
        Some(s) => format!("[{s}]\nnw_docs_probe = 1\n"),
    };
    let err = config::parse_file(&text).expect_err("an unknown key is refused");
    // A key that is not a table: "wrong type, expected …".
    let (_, expected) = err.split_once("unknown field `nw_docs_probe`, expected")?;
    Some(backticked(expected).into_iter().collect())
}

/// Every (section, key) the loader knows; "" is the top level.
fn every_loader_key() -> BTreeSet<(String, String)> {
    let top = loader_keys(None).expect("the top level refuses unknown keys");
    let mut all = BTreeSet::new();
    for key in top {
        match loader_keys(Some(&key)) {
            Some(inner) => all.extend(inner.into_iter().map(|k| (key.clone(), k))),
            None => {
                all.insert((String::new(), key));
            }
        }
    }
    all
}

/// Every (section, key) the example shows, set or commented out
/// (`# key = …` at the start of a line).
fn example_keys(block: &str) -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in block.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix('[') {
            section = rest.split(']').next().unwrap_or_default().to_string();
            continue;
        }
        let line = line.strip_prefix('#').map(str::trim_start).unwrap_or(line);
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            keys.insert((section.clone(), key.to_string()));
        }
    }
    keys
}

#[test]
fn the_configuration_example_is_accepted_by_the_agents_loader() {
    use std::os::unix::fs::PermissionsExt;
    let block = fenced(&read("docs/configuration.md"), "toml", EXAMPLE_HEAD);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &block).expect("writing the example");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod 600 the example");
    let args = Args::try_parse_from(["netwatch-agent", "--config", path.to_str().unwrap()])
        .expect("the command line");
    let file = config::load_file(&args).expect("the example loads");
    assert_eq!(file.as_ref().map(|(p, _)| p), Some(&path));
    // The key comes from the environment here: the example's key file is
    // a path on a deployed host.
    let c = config::resolve(&args, Some("docs-test-key"), file).expect("the example resolves");

    assert_eq!(c.mode, netwatch::source::select::Mode::Auto);
    assert_eq!(c.outputs, vec![Output::Ingest, Output::Prometheus]);
    assert_eq!(c.interval, Duration::from_secs(15));
    assert_eq!(
        (c.rows, c.max_connections, c.max_processes),
        (20, 1000, 1000)
    );
    assert!(c.dns_capture);
    assert_eq!(c.interface, None);
    assert_eq!(c.ebpf.tier, netwatch::config::TierChoice::Auto);
    assert_eq!((c.ebpf.max_sockets, c.ebpf.ringbuf_bytes), (65536, 1 << 20));
    assert_eq!(c.ebpf.pin_dir, None);
    assert_eq!(
        c.ebpf.pin_state_file,
        PathBuf::from("/var/lib/netwatch-agent/ebpf-baseline")
    );
    let i = c.ingest.expect("ingest settings");
    assert_eq!(i.url, "https://cloud.netwatch.example/api/v1/ingest");
    assert_eq!(i.ca_file, None);
    assert_eq!(
        i.host_id_file,
        PathBuf::from("/var/lib/netwatch-agent/host-id")
    );
    assert_eq!(i.spool_dir, PathBuf::from("/var/lib/netwatch-agent/spool"));
    assert_eq!(i.spool_max_bytes, 268_435_456);
    assert_eq!((i.batch_max_snapshots, i.batch_max_bytes), (100, 5_000_000));
    assert_eq!(
        (
            i.retry_initial,
            i.retry_max,
            i.request_timeout,
            i.flush_timeout
        ),
        (
            Duration::from_secs(1),
            Duration::from_secs(300),
            Duration::from_secs(30),
            Duration::from_secs(10)
        )
    );
    assert_eq!(i.payment_recheck, Duration::from_secs(3600));
    let p = c.prometheus.expect("prometheus settings");
    assert_eq!(p.listen, "127.0.0.1:9464".parse().unwrap());
    assert_eq!(p.process_expiry, Duration::from_secs(300));
    assert_eq!(p.top_processes, 100);
    // The example spells out the defaults of the probes and the detectors.
    assert_eq!(c.health, Some(netwatch::health::HealthConfig::default()));
    assert_eq!(c.alerts, Some(netwatch::alerts::AlertConfig::default()));
}

#[test]
fn the_configuration_example_names_every_key_the_loader_knows() {
    let known = every_loader_key();
    // The loader lists its keys: the probe found the sections.
    assert!(
        known.contains(&("ingest".into(), "endpoint".into())),
        "{known:?}"
    );
    let block = fenced(&read("docs/configuration.md"), "toml", EXAMPLE_HEAD);
    let shown = example_keys(&block);
    let missing: Vec<_> = known.difference(&shown).collect();
    let unknown: Vec<_> = shown.difference(&known).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/configuration.md's example lacks {missing:?} and names keys the loader does not know: {unknown:?}"
    );
}

// ---- (b) the metrics table ----------------------------------------------

#[derive(Debug)]
struct FixedDelivery(DeliveryView);

impl DeliveryReport for FixedDelivery {
    fn view(&self) -> DeliveryView {
        self.0.clone()
    }
}

/// A snapshot in which every kind of figure `/metrics` shows is present.
fn full_snapshot() -> Snapshot {
    let mut s = Snapshot::empty(chrono::Utc::now());
    s.interfaces = vec![InterfaceMetric {
        name: "eth0".into(),
        is_up: true,
        rx_bytes: 1000,
        tx_bytes: 2000,
        rx_bytes_delta: 10,
        tx_bytes_delta: 20,
        rx_packets: 3,
        tx_packets: 4,
        rx_errors: 0,
        tx_errors: 0,
        rx_drops: 0,
        tx_drops: 0,
        rx_rate: None,
        tx_rate: None,
        rx_history: None,
        tx_history: None,
    }];
    s.connection_count = Some(2);
    s.tcp_time_wait = Some(1);
    s.tcp_close_wait = Some(0);
    s.collector = Some(CollectorInfo {
        source: "ebpf".into(),
        ebpf_tier: Some("tracepoint".into()),
        estimated: false,
        fallback_reason: None,
        lost_records: Some(0),
        connections_truncated: None,
        processes_folded: None,
    });
    let mut p = ProcessBandwidth::network_only("curl".into(), Some(42), 100, 200, 0.0, 0.0, 1);
    p.tcp_quality = Some(ProcessTcpQuality {
        retransmits: 1,
        retransmitted_bytes: 1448,
        connects: 1,
        connect_ms_avg: Some(2.0),
        connect_ms_max: Some(2.0),
        resets_sent: 1,
        rtt_us_avg: Some(50.0),
        ..Default::default()
    });
    p.dns = Some(ProcessDns {
        queries: 2,
        responses: 1,
        failures: 1,
        nxdomain: 1,
        latency_ms_avg: Some(1.0),
        latency_ms_max: Some(1.0),
        ..Default::default()
    });
    s.processes = Some(vec![p]);
    s.alerts = Some(vec![Alert {
        severity: AlertSeverity::Warning,
        category: AlertCategory::PortScan,
        message: "port scan".into(),
        detail: "docs test".into(),
        timestamp: chrono::Utc::now(),
    }]);
    s
}

/// The metric names a `/metrics` page holds, as a query names them: a
/// counter's with `_total`, an info's with `_info`.
fn rendered_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|rest| {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap_or_default();
            match it.next() {
                Some("counter") => format!("{name}_total"),
                Some("info") => format!("{name}_info"),
                _ => name.to_string(),
            }
        })
        .collect()
}

/// The metric names in the first column of docs/metrics.md's table.
fn documented_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("| `netwatch_").map(|_| l))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(backticked)
        .filter(|n| n.starts_with("netwatch_"))
        .collect()
}

#[test]
fn the_metrics_table_lists_exactly_what_metrics_renders() {
    // Every collector writes its families: a supervised part, a bounded
    // table that dropped something, delivery counters, one snapshot with
    // every figure.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = Arc::clone(&stop);
        netwatch::supervise::Worker::spawn(
            "docs_probe",
            "docs-probe",
            netwatch::supervise::Policy::Restart,
            move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            },
        )
        .expect("spawning a supervised thread")
    };
    netwatch::drops::dropped("docs_probe", 1, 1);
    let mut state = MetricsState::new(SeriesLimits {
        expiry: Duration::from_secs(300),
        top_processes: 10,
    });
    state.apply(&full_snapshot(), Instant::now(), &mut |_| "/docs".into());
    let delivery = DeliveryView {
        requests: 1,
        delivered: 1,
        errors: vec![("503".into(), 1)],
        ..Default::default()
    };
    let page = prometheus::render(
        &Arc::new(Mutex::new(state)),
        Some(Arc::new(FixedDelivery(delivery)) as Arc<dyn DeliveryReport>),
    );
    stop.store(true, Ordering::SeqCst);
    drop(worker);

    let rendered = rendered_names(&page);
    let documented = documented_names(&read("docs/metrics.md"));
    let undocumented: Vec<_> = rendered.difference(&documented).collect();
    let not_rendered: Vec<_> = documented.difference(&rendered).collect();
    assert!(
        undocumented.is_empty() && not_rendered.is_empty(),
        "docs/metrics.md's table lacks {undocumented:?} and lists {not_rendered:?}, which /metrics does not render:\n{page}"
    );
    assert_eq!(rendered.len(), 43, "{rendered:#?}");
}

// ---- (c) links, (d) the README's length ---------------------------------

/// README.md and every page under docs/, relative to the repository.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("the docs directory")
        .map(|e| {
            e.expect("a docs entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The targets of the inline links `[text](target)` in `page`.
fn link_targets(page: &str) -> Vec<String> {
    page.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_relative_link_points_to_a_file_that_exists() {
    let pages = pages();
    assert!(
        pages.len() >= 11,
        "README.md and the 10 pages under docs/: {pages:?}"
    );
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let base = repo().join(page);
        let dir = base.parent().expect("a page has a directory");
        for target in link_targets(&read(page)) {
            if target.contains("://") || target.starts_with("mailto:") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            checked += 1;
            if !dir.join(file).exists() {
                broken.push(format!("{page}: {target}"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "links to files that do not exist: {broken:#?}"
    );
    assert!(
        checked >= 30,
        "only {checked} relative links found: is the parser broken?"
    );
}

#[test]
fn the_readme_is_at_most_200_lines() {
    let lines = read("README.md").lines().count();
    assert!(
        lines <= 200,
        "README.md has {lines} lines: move detail to docs/"
    );
}

// ---- (e) troubleshooting quotes the source ------------------------------

/// The agent's source, with string continuations (`\` at a line's end)
/// joined and `\"` unescaped, so a message reads as it is printed.
fn source_text() -> String {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("a source directory") {
            let p = e.expect("a source entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo().join("netwatch-user/src"), &mut files);
    let mut text = String::new();
    for f in files {
        let s = std::fs::read_to_string(&f).expect("a source file");
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' && chars.peek() == Some(&'\n') {
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
            } else if c == '\\' && chars.peek() == Some(&'"') {
                text.push('"');
                chars.next();
            } else {
                text.push(c);
            }
        }
        text.push('\n');
    }
    text
}

/// The messages troubleshooting.md quotes: each `### ` heading's code
/// span (between single backticks, or between double ones when the
/// message holds a backtick), `<…>` standing for what the agent fills in.
fn quoted_refusals(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("### "))
        .filter_map(|h| {
            h.strip_prefix("`` ")
                .and_then(|m| m.strip_suffix(" ``"))
                .or_else(|| h.strip_prefix('`').and_then(|m| m.strip_suffix('`')))
        })
        .map(str::to_string)
        .collect()
}

/// Where the agent joins the parts of a message: a context and its cause
/// (`: `), a problem and its fix (`; `), a refusal and its reason
/// (`, since `). Each part comes from its own string in the source.
const SEAMS: [&str; 3] = [": ", "; ", ", since "];

/// The fixed parts of a quoted message, each to be found in the source:
/// the text between its `<…>` placeholders, cut at the [`SEAMS`], trimmed,
/// without the parts too short to mean anything.
fn fixed_parts(message: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = message;
    while let Some(open) = rest.find('<') {
        parts.push(rest[..open].to_string());
        rest = match rest[open..].find('>') {
            Some(close) => &rest[open + close + 1..],
            None => "",
        };
    }
    parts.push(rest.to_string());
    for seam in SEAMS {
        parts = parts
            .iter()
            .flat_map(|p| p.split(seam).map(str::to_string))
            .collect();
    }
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| p.len() >= 4)
        .collect()
}

#[test]
fn every_refusal_troubleshooting_quotes_occurs_in_the_source() {
    let source = source_text();
    let quoted = quoted_refusals(&read("docs/troubleshooting.md"));
    assert!(quoted.len() >= 30, "only {} messages quoted", quoted.len());
    let mut drifted = Vec::new();
    for message in &quoted {
        let parts = fixed_parts(message);
        assert!(
            parts.iter().map(String::len).sum::<usize>() >= 15,
            "{message:?}: too little fixed text to find in the source"
        );
        for part in parts {
            if !source.contains(&part) {
                drifted.push(format!("{message:?}: {part:?}"));
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "troubleshooting.md quotes text the source no longer prints: {drifted:#?}"
    );
}

#[test]
fn the_helpers_read_what_they_should() {
    assert_eq!(
        fixed_parts("mode <value> is not a mode: expected auto, ebpf, ss, pcap or proc"),
        vec![
            "mode",
            "is not a mode",
            "expected auto, ebpf, ss, pcap or proc"
        ]
    );
    assert_eq!(
        fixed_parts("x <p> (<w>): refused, since a risk; fix it"),
        vec!["refused", "a risk", "fix it"]
    );
    assert_eq!(
        link_targets("a [b](docs/x.md) c [d](../y.md#z) e"),
        vec!["docs/x.md", "../y.md#z"]
    );
    assert_eq!(
        rendered_names("# TYPE a counter\n# TYPE b gauge\n# TYPE c info\na_total 1\n"),
        ["a_total", "b", "c_info"].map(String::from).into()
    );
    assert_eq!(
        documented_names("| `netwatch_a_total`, `netwatch_b` | counter | `pid` |\n| x | y |\n"),
        ["netwatch_a_total", "netwatch_b"].map(String::from).into()
    );
    assert_eq!(
        quoted_refusals("### `a <b> c`\n### `` d `e` ``\n## `f`\n### g\n"),
        vec!["a <b> c", "d `e`"]
    );
    let keys = example_keys("# head\nmode = \"auto\"\n[ebpf]\n# pin = true\ntier = 1 # x = 2\n");
    assert_eq!(
        keys,
        [("", "mode"), ("ebpf", "pin"), ("ebpf", "tier")]
            .map(|(s, k)| (s.to_string(), k.to_string()))
            .into()
    );
}
