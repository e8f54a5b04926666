//! The shipped deployment files agree with what the agent was shown to
//! need (docs/deployment.md, "Least privilege"): the systemd unit (a notify service
//! with a watchdog the tick feeds) grants exactly the
//! start-up set to a dedicated user under `ProtectSystem=strict` (and
//! `systemd-analyze verify` accepts it where systemd is installed), and the
//! Kubernetes DaemonSet grants the same capabilities without
//! `privileged: true`, with the host mounts the collectors read, and probes
//! the agent's liveness on `/healthz` where the packaged configuration
//! serves it.

use std::collections::BTreeSet;

use yaml_rust2::{Yaml, YamlLoader};

const UNIT: &str = include_str!("../../packaging/netwatch-agent.service");
const DAEMONSET: &str = include_str!("../../packaging/netwatch-agent-daemonset.yaml");
const CONFIG: &str = include_str!("../../packaging/config.toml");

/// The start-up set: the union of every source's needs, plus CAP_NET_ADMIN
/// (sock_diag destroy groups on older kernels) and CAP_SETPCAP (shrinking
/// the bounding set).
const START_SET: &[&str] = &[
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_DAC_READ_SEARCH",
    "CAP_SYS_PTRACE",
    "CAP_NET_RAW",
    "CAP_NET_ADMIN",
    "CAP_SETPCAP",
];

fn start_set() -> BTreeSet<String> {
    START_SET.iter().map(|s| s.to_string()).collect()
}

/// The values of `key=` in the unit (all occurrences, words split).
fn unit_values(key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    UNIT.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[test]
fn the_unit_grants_the_start_set_to_a_dedicated_user_in_a_strict_sandbox() {
    let ambient: BTreeSet<String> = unit_values("AmbientCapabilities").into_iter().collect();
    let bounding: BTreeSet<String> = unit_values("CapabilityBoundingSet").into_iter().collect();
    assert_eq!(ambient, start_set());
    assert_eq!(bounding, start_set());
    assert_eq!(unit_values("User"), ["netwatch"]);
    assert_eq!(unit_values("ProtectSystem"), ["strict"]);
    assert_eq!(unit_values("StateDirectory"), ["netwatch-agent"]);
    assert_eq!(unit_values("NoNewPrivileges"), ["yes"]);
    let exec = unit_values("ExecStart");
    assert!(exec.first().is_some_and(|p| p.starts_with('/')), "{exec:?}");
    // The service pins (a run by hand does not).
    assert!(exec.iter().any(|a| a == "--pin"), "{exec:?}");
    // Readiness and the watchdog come from the tick (sd_notify).
    assert_eq!(unit_values("Type"), ["notify"]);
    assert_eq!(unit_values("NotifyAccess"), ["main"]);
    assert_eq!(unit_values("WatchdogSec"), ["60s"]);
    assert_eq!(unit_values("Restart"), ["on-failure"]);
    // The agent must see every process.
    assert!(unit_values("ProtectProc").is_empty() && unit_values("ProcSubset").is_empty());
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let tool = std::path::Path::new("/usr/bin/systemd-analyze");
    if !tool.exists() {
        eprintln!(
            "SKIPPED: {} is not installed; the unit was not verified",
            tool.display()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("netwatch-agent.service");
    // The binary this build made stands in for /usr/bin/netwatch-agent.
    let text = UNIT.replace(
        "/usr/bin/netwatch-agent",
        env!("CARGO_BIN_EXE_netwatch-agent"),
    );
    std::fs::write(&unit, text).unwrap();
    let out = std::process::Command::new(tool)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        !stderr.contains("netwatch-agent.service"),
        "warnings about the unit: {stderr}"
    );
}

fn get<'a>(v: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(v, |v, k| &v[*k])
}

/// Whether any mapping anywhere sets `privileged: true`.
fn privileged_anywhere(v: &Yaml) -> bool {
    match v {
        Yaml::Hash(m) => m.iter().any(|(k, v)| {
            (k.as_str() == Some("privileged") && v.as_bool() == Some(true))
                || privileged_anywhere(v)
        }),
        Yaml::Array(s) => s.iter().any(privileged_anywhere),
        _ => false,
    }
}

#[test]
fn the_daemonset_parses_and_grants_the_same_set_without_privileged() {
    let docs = YamlLoader::load_from_str(DAEMONSET).expect("the DaemonSet manifest is YAML");
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet document");
    assert_eq!(ds["apiVersion"].as_str(), Some("apps/v1"));
    assert!(!docs.iter().any(privileged_anywhere), "no privileged: true");
    let pod = get(ds, &["spec", "template", "spec"]);
    assert_eq!(pod["hostPID"].as_bool(), Some(true));
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let labels = get(ds, &["spec", "template", "metadata", "labels"]);
    assert!(
        labels.as_hash().is_some_and(|h| !h.is_empty()),
        "pod labels: {labels:?}"
    );
    assert_eq!(get(ds, &["spec", "selector", "matchLabels"]), labels);
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let args: Vec<&str> = c["args"]
        .as_vec()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(args.contains(&"--pin"), "the DaemonSet pins: {args:?}");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    let list = |v: &Yaml| -> BTreeSet<String> {
        v.as_vec()
            .expect("a list")
            .iter()
            .map(|s| s.as_str().expect("a name").to_string())
            .collect()
    };
    assert_eq!(
        list(&sc["capabilities"]["drop"]),
        ["ALL".to_string()].into()
    );
    let added: BTreeSet<String> = list(&sc["capabilities"]["add"])
        .into_iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    assert_eq!(added, start_set(), "the DaemonSet adds the unit's set");
    // Host mounts: path → read-only.
    let mounts: Vec<(String, bool)> = c["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            (
                m["mountPath"].as_str().unwrap().to_string(),
                m["readOnly"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    for (path, read_only) in [
        ("/sys/fs/bpf", false),
        ("/sys/kernel/btf", true),
        ("/sys/kernel/tracing", true),
        ("/sys/fs/cgroup", true),
        ("/var/lib/netwatch-agent", false),
        ("/etc/netwatch-agent", true),
    ] {
        assert!(
            mounts.contains(&(path.to_string(), read_only)),
            "{path} mounted (read-only: {read_only}): {mounts:?}"
        );
    }
    // Every mount has its volume.
    let volumes: BTreeSet<&str> = pod["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for m in c["volumeMounts"].as_vec().unwrap() {
        assert!(volumes.contains(m["name"].as_str().unwrap()), "{m:?}");
    }
}

#[test]
fn the_daemonset_probes_healthz_on_the_packaged_metrics_listener() {
    let cfg: toml::Table = CONFIG.parse().expect("packaging/config.toml is TOML");
    let outputs: Vec<&str> = cfg["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| o.as_str().expect("an output name"))
        .collect();
    assert!(
        outputs.contains(&"prometheus"),
        "/healthz is served beside /metrics: {outputs:?}"
    );
    let listen: std::net::SocketAddr = cfg["prometheus"]["listen"]
        .as_str()
        .expect("[prometheus] listen")
        .parse()
        .expect("an address:port");
    let docs = YamlLoader::load_from_str(DAEMONSET).expect("the DaemonSet manifest is YAML");
    let ds = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .expect("a DaemonSet document");
    let pod = get(ds, &["spec", "template", "spec"]);
    // The kubelet reaches a loopback listener only in the node's namespace.
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let probe = &pod["containers"][0]["livenessProbe"];
    let http = &probe["httpGet"];
    assert_eq!(http["path"].as_str(), Some("/healthz"), "{probe:?}");
    assert_eq!(http["port"].as_i64(), Some(i64::from(listen.port())));
    assert_eq!(
        http["host"].as_str(),
        Some(listen.ip().to_string().as_str())
    );
    // A scrape that waits past the probe's timeout is a failure too: it
    // answers well within it (the server never waits on the tick).
    let period = probe["periodSeconds"].as_i64().expect("periodSeconds");
    let timeout = probe["timeoutSeconds"].as_i64().expect("timeoutSeconds");
    assert!(0 < timeout && timeout < period, "{probe:?}");
    assert!(probe["initialDelaySeconds"]
        .as_i64()
        .is_some_and(|d| d >= 10));
}
