//! The resolver as a whole: precedence across sections, the refusals and
//! their exact messages, and a property test that no value of any numeric
//! setting panics. Each section's own tests are beside its resolver.

use super::test_input::args;
use super::*;
use clap::Parser;
use std::path::Path;

fn file(text: &str) -> Option<(PathBuf, FileConfig)> {
    Some((PathBuf::from("/test.toml"), parse_file(text).unwrap()))
}

fn err(r: Result<Config, ConfigError>) -> String {
    r.map(|_| ()).unwrap_err().to_string()
}

#[test]
fn defaults_are_json_every_second() {
    let c = resolve(&args(&[]), None, None).unwrap();
    assert_eq!(c.outputs, vec![Output::Json]);
    assert_eq!(c.interval, Duration::from_secs(1));
    assert_eq!(c.mode, Mode::Auto);
    assert!(c.ingest.is_none());
}

#[test]
fn the_dns_capture_is_on_unless_the_flag_or_the_file_turns_it_off() {
    let on = |a: &[&str], f: Option<&str>| {
        resolve(&args(a), None, f.and_then(file))
            .unwrap()
            .dns_capture
    };
    assert!(on(&[], None));
    assert!(on(&[], Some("dns_capture = true\n")));
    assert!(!on(&[], Some("dns_capture = false\n")));
    assert!(!on(&["--no-dns-capture"], None));
    assert!(!on(&["--no-dns-capture"], Some("dns_capture = true\n")));
    assert!(parse_file("dns_capture = \"no\"\n").is_err());
}

#[test]
fn delivering_defaults_to_fifteen_seconds_and_full_limits() {
    let c = resolve(
        &args(&["--output", "ingest", "--endpoint", "https://cloud.example"]),
        Some("k3y"),
        None,
    )
    .unwrap();
    assert_eq!(c.interval, Duration::from_secs(15));
    let i = c.ingest.unwrap();
    assert_eq!(i.url, "https://cloud.example/api/v1/ingest");
    assert_eq!(i.batch_max_snapshots, 100);
    assert_eq!(i.batch_max_bytes, 5_000_000);
    assert_eq!(i.retry_max, Duration::from_secs(300));
    assert_eq!(i.spool_dir, PathBuf::from(DEFAULT_SPOOL_DIR));
    assert_eq!(i.payment_recheck, Duration::from_secs(3600));
    assert_eq!(i.ca_file, None);
}

#[test]
fn ca_file_and_payment_recheck_from_flags_and_file() {
    let base = ["--output", "ingest", "--endpoint", "https://cloud.example"];
    let c = resolve(
        &args(&base),
        Some("k3y"),
        file("[ingest]\nca_file = \"/etc/ca.pem\"\npayment_recheck_secs = 60\n"),
    )
    .unwrap();
    let i = c.ingest.unwrap();
    assert_eq!(i.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    assert_eq!(i.payment_recheck, Duration::from_secs(60));
    let mut flags = base.to_vec();
    flags.extend(["--ingest-ca-file", "/other.pem"]);
    let c = resolve(
        &args(&flags),
        Some("k3y"),
        file("[ingest]\nca_file = \"/etc/ca.pem\"\n"),
    )
    .unwrap();
    assert_eq!(c.ingest.unwrap().ca_file, Some(PathBuf::from("/other.pem")));
    let e = resolve(
        &args(&base),
        Some("k3y"),
        file("[ingest]\npayment_recheck_secs = 0\n"),
    )
    .map(|_| ())
    .unwrap_err()
    .to_string();
    assert!(e.contains("payment_recheck_secs 0"), "{e}");
}

#[test]
fn pinning_is_off_by_default_and_pin_or_the_file_turns_it_on() {
    let c = resolve(&args(&[]), None, None).unwrap();
    assert_eq!(c.ebpf.pin_dir, None);
    assert_eq!(c.ebpf.pin_state_file, PathBuf::from(DEFAULT_PIN_STATE_FILE));
    let c = resolve(&args(&["--pin"]), None, None).unwrap();
    assert_eq!(c.ebpf.pin_dir, Some(PathBuf::from(DEFAULT_PIN_DIR)));
    let c = resolve(&args(&["--pin", "--pin-dir", "/sys/fs/bpf/x"]), None, None).unwrap();
    assert_eq!(c.ebpf.pin_dir, Some(PathBuf::from("/sys/fs/bpf/x")));
    // A directory alone does not pin.
    let c = resolve(&args(&["--pin-dir", "/sys/fs/bpf/x"]), None, None).unwrap();
    assert_eq!(c.ebpf.pin_dir, None);
    let f = "[ebpf]\npin = true\npin_dir = \"/sys/fs/bpf/f\"\npin_state_file = \"/s/b\"\n";
    let c = resolve(&args(&[]), None, file(f)).unwrap();
    assert_eq!(c.ebpf.pin_dir, Some(PathBuf::from("/sys/fs/bpf/f")));
    assert_eq!(c.ebpf.pin_state_file, PathBuf::from("/s/b"));
    let c = resolve(&args(&["--pin-dir", "/sys/fs/bpf/a"]), None, file(f)).unwrap();
    assert_eq!(c.ebpf.pin_dir, Some(PathBuf::from("/sys/fs/bpf/a")));
    // --no-pin beats the file (a run by hand with the packaged config).
    let c = resolve(&args(&["--no-pin"]), None, file(f)).unwrap();
    assert_eq!(c.ebpf.pin_dir, None);
    let c = resolve(&args(&[]), None, file("[ebpf]\npin = false\n")).unwrap();
    assert_eq!(c.ebpf.pin_dir, None);
    assert!(Args::try_parse_from(["netwatch-agent", "--pin", "--no-pin"]).is_err());
    assert!(Args::try_parse_from(["netwatch-agent", "--unpin", "--pin"]).is_err());
}

#[test]
fn command_line_beats_file() {
    let c = resolve(
        &args(&["--interval", "2", "--mode", "ss"]),
        None,
        file("interval_secs = 5\nmode = \"proc\"\noutputs = [\"json\"]\n"),
    )
    .unwrap();
    assert_eq!(c.interval, Duration::from_secs(2));
    assert_eq!(c.mode, Mode::Ss);
    let c = resolve(
        &args(&[]),
        None,
        file("interval_secs = 5\nmode = \"proc\"\n"),
    )
    .unwrap();
    assert_eq!(c.interval, Duration::from_secs(5));
    assert_eq!(c.mode, Mode::Proc);
}

#[test]
fn output_may_repeat_and_ingest_comes_first() {
    let c = resolve(
        &args(&[
            "--output",
            "json",
            "--output",
            "ingest",
            "--output",
            "json",
            "--endpoint",
            "http://127.0.0.1:9",
        ]),
        Some("k"),
        None,
    )
    .unwrap();
    assert_eq!(c.outputs, vec![Output::Ingest, Output::Json]);
}

#[test]
fn bad_values_are_refused_naming_the_value() {
    let e = err(resolve(&args(&["--interval", "0"]), None, None));
    assert!(e.contains("interval 0"), "{e}");
    let e = err(resolve(&args(&["--ringbuf-bytes", "1000000"]), None, None));
    assert!(
        e.contains("ringbuf_bytes 1000000 is not a power of two"),
        "{e}"
    );
    let e = err(resolve(&args(&[]), None, file("mode = \"turbo\"\n")));
    assert!(e.contains("\"turbo\""), "{e}");
    let e = err(resolve(
        &args(&[]),
        None,
        file("[ebpf]\ntier = \"fexit\"\n"),
    ));
    assert!(e.contains("\"fexit\""), "{e}");
    let e = err(resolve(
        &args(&[
            "--output",
            "prometheus",
            "--metrics-listen",
            "localhost:9464",
        ]),
        None,
        None,
    ));
    assert!(e.contains("\"localhost:9464\" is not an IP address"), "{e}");
    let e = err(resolve(
        &args(&["--output", "prometheus"]),
        None,
        file("[prometheus]\ntop_processes = 0\n"),
    ));
    assert!(e.contains("top_processes 0"), "{e}");
    let e = err(resolve(
        &args(&["--output", "prometheus", "--metrics-process-expiry", "0"]),
        None,
        None,
    ));
    assert!(e.contains("process_expiry_secs 0"), "{e}");
    let e = err(resolve(&args(&["--interval", "NaN"]), None, None));
    assert!(e.contains("interval NaN"), "{e}");
    assert!(Args::try_parse_from(["a", "--mode", "turbo"])
        .unwrap_err()
        .to_string()
        .contains("turbo"));
    assert!(Args::try_parse_from(["a", "--output", "csv"])
        .unwrap_err()
        .to_string()
        .contains("csv"));
}

#[test]
fn prometheus_defaults_and_overrides() {
    let c = resolve(&args(&["--output", "prometheus"]), None, None).unwrap();
    assert_eq!(
        c.prometheus,
        Some(PrometheusConfig {
            listen: "127.0.0.1:9464".parse().unwrap(),
            process_expiry: Duration::from_secs(300),
            top_processes: 100,
        })
    );
    let c = resolve(
        &args(&["--output", "prometheus", "--metrics-top-processes", "7"]),
        None,
        file("[prometheus]\nlisten = \"[::1]:0\"\nprocess_expiry_secs = 30\ntop_processes = 9\n"),
    )
    .unwrap();
    let p = c.prometheus.unwrap();
    assert_eq!(p.listen, "[::1]:0".parse().unwrap());
    assert_eq!(p.process_expiry, Duration::from_secs(30));
    assert_eq!(p.top_processes, 7);
    assert!(resolve(&args(&[]), None, None)
        .unwrap()
        .prometheus
        .is_none());
}

#[test]
fn unknown_output_in_file_is_named() {
    let e = parse_file("outputs = [\"csv\"]\n").unwrap_err();
    assert!(e.contains("csv"), "{e}");
    assert!(e.starts_with("line 1:"), "{e}");
}

#[test]
fn unknown_keys_and_an_inline_api_key_are_refused_without_echoing_values() {
    let e = parse_file("[ingest]\napi_key = \"s3cr3t-value\"\n").unwrap_err();
    assert!(e.contains("api_key"), "{e}");
    assert!(!e.contains("s3cr3t"), "{e}");
    let e = parse_file("interval_secs = \"s3cr3t-value\"\n").unwrap_err();
    assert!(!e.contains("s3cr3t"), "{e}");
    let e = parse_file("[ingest]\nendpoint = \"s3cr3t-value\n").unwrap_err();
    assert!(!e.contains("s3cr3t"), "{e}");
}

#[test]
fn plain_http_only_to_loopback() {
    assert!(ingest_url("http://127.0.0.1:8080", false).is_ok());
    assert!(ingest_url("http://[::1]:8080/", false).is_ok());
    assert!(ingest_url("http://localhost", false).is_ok());
    let e = ingest_url("http://10.0.0.1", false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--allow-insecure-http"), "{e}");
    assert_eq!(
        ingest_url("http://10.0.0.1/", true).unwrap(),
        "http://10.0.0.1/api/v1/ingest"
    );
    assert_eq!(
        ingest_url("https://c.example/api/v1/ingest", false).unwrap(),
        "https://c.example/api/v1/ingest"
    );
    assert!(ingest_url("ftp://c.example", false).is_err());
    assert!(ingest_url("not a url", false).is_err());
}

#[test]
fn an_endpoint_with_credentials_is_refused_and_never_echoed() {
    for (url, shown) in [
        (
            "https://operator:pw-9f1@cloud.example/x",
            "https://<redacted>@cloud.example/x",
        ),
        ("http://pw-9f1@127.0.0.1:9", "http://<redacted>@127.0.0.1:9"),
        // Not a URL at all: still not echoed.
        ("https://u:p w-9f1@h", "https://<redacted>@h"),
        ("u:pw-9f1@h/p", "<redacted>@h/p"),
        // '@' in the path or query is not user information.
        ("https://h/a@pw-9f1", "https://h/a@pw-9f1"),
        ("https://h?x=a@b", "https://h?x=a@b"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
        if shown.contains("<redacted>") {
            let e = ingest_url(url, true).unwrap_err().to_string();
            assert!(!e.contains("pw-9f1") && !e.contains("operator"), "{e}");
            assert!(e.contains("credentials in the URL are refused"), "{e}");
        }
    }
    let e = err(resolve(
        &args(&[
            "--output",
            "ingest",
            "--endpoint",
            "https://user:pw-9f1@c.example",
        ]),
        Some("k"),
        None,
    ));
    assert_eq!(
        e,
        "endpoint \"https://<redacted>@c.example\" holds a user name or password: \
         credentials in the URL are refused (they would be logged); give the base URL \
         and put the API key in --api-key-file or [ingest] api_key_file"
    );
}

#[test]
fn ingest_without_key_or_endpoint_is_refused() {
    let e = err(resolve(&args(&["--output", "ingest"]), Some("k"), None));
    assert!(e.contains("needs an endpoint"), "{e}");
    let e = err(resolve(
        &args(&["--output", "ingest", "--endpoint", "https://c.example"]),
        None,
        None,
    ));
    assert!(e.contains("needs an API key"), "{e}");
}

#[test]
fn the_key_never_prints() {
    let k = ApiKey::new(" nw_live_abc123\n").unwrap();
    assert_eq!(k.expose(), "nw_live_abc123");
    assert_eq!(format!("{k}"), "<redacted>");
    assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
    let c = resolve(
        &args(&["--output", "ingest", "--endpoint", "https://c.example"]),
        Some("nw_live_abc123"),
        None,
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("abc123"));
    let e = ApiKey::new("nw live").unwrap_err().to_string();
    assert!(!e.contains("nw live"), "{e}");
    assert!(ApiKey::new("  \n").is_err());
}

#[test]
fn health_is_opt_in_and_alerts_default_to_the_sdk() {
    let c = resolve(&args(&[]), None, None).unwrap();
    assert!(c.health.is_none(), "the bare command line probes nothing");
    assert_eq!(c.alerts, Some(crate::alerts::AlertConfig::default()));
    let c = resolve(&args(&["--health"]), None, None).unwrap();
    assert_eq!(c.health, Some(crate::health::HealthConfig::default()));
    let c = resolve(
        &args(&[]),
        None,
        file(
            "[health]\nenabled = true\ninterval_secs = 5\ngateway = \"10.1.2.3\"\n\
             dns_server = \"10.1.2.4:5353\"\n[alerts]\nport_scan_ports = 10\n\
             beacon_min_interval_secs = 0.1\nbandwidth_interface_bps = 1e6\n",
        ),
    )
    .unwrap();
    let h = c.health.unwrap();
    assert_eq!(h.interval, Duration::from_secs(5));
    assert_eq!(h.gateway, Some("10.1.2.3".parse().unwrap()));
    assert_eq!(h.dns_server, Some("10.1.2.4:5353".parse().unwrap()));
    let a = c.alerts.unwrap();
    assert_eq!(a.port_scan.distinct_ports, 10);
    assert_eq!(a.beacon.min_interval, Duration::from_millis(100));
    assert_eq!(a.bandwidth.interface_bps, 1e6);
    let c = resolve(&args(&[]), None, file("[alerts]\nenabled = false\n")).unwrap();
    assert!(c.alerts.is_none());
    let e = err(resolve(
        &args(&["--health"]),
        None,
        file("[health]\ngateway = \"gw\"\n"),
    ));
    assert!(e.contains("gateway \"gw\""), "{e}");
    let e = err(resolve(
        &args(&[]),
        None,
        file("[alerts]\nbeacon_max_jitter = -1\n"),
    ));
    assert!(e.contains("beacon_max_jitter -1"), "{e}");
    assert!(parse_file("[alerts]\nport_scan = 3\n").is_err());
}

#[test]
fn the_readme_config_example_parses_with_health_and_alerts() {
    let readme = include_str!("../../../README.md");
    let block = readme
        .split("```toml\n")
        .find(|b| b.starts_with("# /etc/netwatch-agent/config.toml"))
        .and_then(|b| b.split("```").next())
        .unwrap();
    let f = parse_file(block).unwrap();
    assert_eq!(
        resolve_health(false, &f.health).unwrap(),
        Some(crate::health::HealthConfig::default())
    );
    assert_eq!(
        resolve_alerts(&f.alerts).unwrap(),
        Some(crate::alerts::AlertConfig::default())
    );
}

#[test]
fn api_key_is_not_an_argument() {
    assert!(Args::try_parse_from(["a", "--api-key", "x"]).is_err());
}

#[test]
fn files_others_can_change_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    std::fs::write(&p, "interval_secs = 3\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
    let a = args(&["--config", p.to_str().unwrap()]);
    let e = load_file(&a).unwrap_err().to_string();
    assert!(e.contains("group- or world-writable (mode 0664)"), "{e}");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, f) = load_file(&a).unwrap().unwrap();
    assert_eq!(f.interval_secs, Some(3.0));
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
        let e = load_file(&a).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534, not by root"), "{e}");
    }
}

#[test]
fn a_named_config_must_exist_the_default_may_not() {
    let a = args(&["--config", "/nonexistent/netwatch.toml"]);
    let e = load_file(&a).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/netwatch.toml"), "{e}");
    if !Path::new(DEFAULT_CONFIG_PATH).exists() {
        assert!(load_file(&args(&[])).unwrap().is_none());
    }
}

/// Every numeric setting has a range, and its message names the
/// setting, the value and the range.
#[test]
fn every_numeric_setting_is_range_checked_with_a_clear_message() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["--interval", "1e300"],
            "",
            "interval 1e300: must be between 0.05 and 86400 seconds",
        ),
        (
            &["--interval", "inf"],
            "",
            "interval inf: must be between 0.05 and 86400 seconds",
        ),
        (
            &[],
            "interval_secs = 86400.5\n",
            "interval 86400.5: must be between 0.05 and 86400 seconds",
        ),
        (
            &["--max-sockets", "0"],
            "",
            "max_sockets 0: must be between 1 and 16777216",
        ),
        (
            &[],
            "[ebpf]\nmax_sockets = 4294967295\n",
            "max_sockets 4294967295: must be between 1 and 16777216",
        ),
        (
            &["--ringbuf-bytes", "2147483648"],
            "",
            "ringbuf_bytes 2147483648: must be between 4096 and 1073741824",
        ),
        (&["--rows", "0"], "", "rows 0: must be between 1 and 10000"),
        (
            &["--max-connections", "18446744073709551615"],
            "",
            "max_connections 18446744073709551615: must be between 0 and 1000000",
        ),
        (
            &["--max-processes", "1000001"],
            "",
            "max_processes 1000001: must be between 0 and 1000000",
        ),
        (
            &[],
            "max_processes = 18446744073709551615\n",
            "max_processes 18446744073709551615: must be between 0 and 1000000",
        ),
        (
            &[
                "--output",
                "prometheus",
                "--metrics-process-expiry",
                "1e300",
            ],
            "",
            "process_expiry_secs 1e300: must be between 1 and 604800 seconds",
        ),
        (
            &["--health"],
            "[health]\nprobes = 11\n",
            "[health] probes 11: must be between 1 and 10",
        ),
        (
            &["--health"],
            "[health]\ninterval_secs = nan\n",
            "[health] interval_secs NaN: must be between 0.1 and 3600 seconds",
        ),
        (
            &[],
            "[alerts]\nactive_secs = -inf\n",
            "[alerts] active_secs -inf: must be between 1 and 86400 seconds",
        ),
        (
            &[],
            "[alerts]\nhistory = 100001\n",
            "[alerts] history 100001: must be between 1 and 100000",
        ),
        (
            &[],
            "[alerts]\nport_scan_ports = 70000\n",
            "[alerts] port_scan_ports 70000: must be between 1 and 65535",
        ),
        (
            &[],
            "[alerts]\nport_scan_failed = 2000000\n",
            "[alerts] port_scan_failed 2000000: must be between 0 and 1000000",
        ),
        (
            &[],
            "[alerts]\nbeacon_min_intervals = 5000\n",
            "[alerts] beacon_min_intervals 5000: must be between 1 and 1000",
        ),
        (
            &[],
            "[alerts]\nbeacon_max_jitter = 0\n",
            "[alerts] beacon_max_jitter 0: must be above 0 and at most 10",
        ),
        (
            &[],
            "[alerts]\ndns_max_name_bytes = 256\n",
            "[alerts] dns_max_name_bytes 256: must be between 1 and 255",
        ),
        (
            &[],
            "[alerts]\ndns_max_subdomains = 1000001\n",
            "[alerts] dns_max_subdomains 1000001: must be between 0 and 1000000",
        ),
        (
            &[],
            "[alerts]\ndns_entropy_bits = 9\n",
            "[alerts] dns_entropy_bits 9: must be between 0 and 8",
        ),
        (
            &[],
            "[alerts]\nbandwidth_process_bps = 1e300\n",
            "[alerts] bandwidth_process_bps 1e300: must be above 0 and at most 1e15",
        ),
        (
            &[],
            "[alerts]\nbandwidth_consecutive = 0\n",
            "[alerts] bandwidth_consecutive 0: must be between 1 and 10000",
        ),
        (
            &[],
            "[alerts]\nbandwidth_baseline_multiple = nan\n",
            "[alerts] bandwidth_baseline_multiple NaN: must be between 0 and 1000000",
        ),
    ];
    for (argv, text, want) in cases {
        let f = (!text.is_empty()).then(|| file(text)).flatten();
        let e = err(resolve(&args(argv), None, f));
        assert_eq!(&e, want, "{argv:?} {text:?}");
    }
    let ingest = ["--output", "ingest", "--endpoint", "https://cloud.example"];
    let e = err(resolve(
        &args(&[&ingest[..], &["--spool-max-bytes", "18446744073709551615"]].concat()),
        Some("k3y"),
        None,
    ));
    assert_eq!(
        e,
        "spool max_bytes 18446744073709551615: must be between 65536 and 1099511627776"
    );
    let e = err(resolve(
        &args(&ingest),
        Some("k3y"),
        file("[ingest]\nrequest_timeout_secs = 1e300\n"),
    ));
    assert_eq!(
        e,
        "request_timeout_secs 1e300: must be between 0.1 and 600 seconds"
    );
}

/// Numeric settings of the config file, by section ("" for top level).
const FLOAT_KEYS: &[(&str, &str)] = &[
    ("", "interval_secs"),
    ("ingest", "retry_initial_secs"),
    ("ingest", "retry_max_secs"),
    ("ingest", "request_timeout_secs"),
    ("ingest", "flush_timeout_secs"),
    ("ingest", "payment_recheck_secs"),
    ("prometheus", "process_expiry_secs"),
    ("health", "interval_secs"),
    ("alerts", "active_secs"),
    ("alerts", "port_scan_window_secs"),
    ("alerts", "beacon_max_jitter"),
    ("alerts", "beacon_min_interval_secs"),
    ("alerts", "beacon_max_interval_secs"),
    ("alerts", "dns_entropy_bits"),
    ("alerts", "bandwidth_interface_bps"),
    ("alerts", "bandwidth_process_bps"),
    ("alerts", "bandwidth_baseline_multiple"),
    ("alerts", "bandwidth_baseline_min_bps"),
];
const INT_KEYS: &[(&str, &str)] = &[
    ("", "rows"),
    ("", "max_connections"),
    ("", "max_processes"),
    ("ebpf", "max_sockets"),
    ("ebpf", "ringbuf_bytes"),
    ("ingest", "batch_max_snapshots"),
    ("ingest", "batch_max_bytes"),
    ("spool", "max_bytes"),
    ("prometheus", "top_processes"),
    ("health", "probes"),
    ("health", "timeout_ms"),
    ("alerts", "history"),
    ("alerts", "port_scan_ports"),
    ("alerts", "port_scan_failed"),
    ("alerts", "beacon_min_intervals"),
    ("alerts", "dns_max_name_bytes"),
    ("alerts", "dns_max_queries_per_min"),
    ("alerts", "dns_max_subdomains"),
    ("alerts", "bandwidth_consecutive"),
];
/// Command-line flags that take a number.
const NUMERIC_FLAGS: &[&str] = &[
    "--interval",
    "--max-sockets",
    "--ringbuf-bytes",
    "--rows",
    "--max-connections",
    "--max-processes",
    "--spool-max-bytes",
    "--metrics-process-expiry",
    "--metrics-top-processes",
];

/// How TOML writes `v` (`nan`, `inf`, `1e300`).
fn toml_float(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:?}")
    }
}

/// Resolve with every section in use (ingest, prometheus, health,
/// alerts), so every key is validated.
fn resolve_all(extra: &[&str], text: &str) -> Result<Config, ConfigError> {
    let mut argv = vec![
        "netwatch-agent",
        "--output",
        "ingest",
        "--output",
        "prometheus",
        "--endpoint",
        "https://cloud.example",
        "--health",
    ];
    argv.extend_from_slice(extra);
    let Ok(a) = Args::try_parse_from(argv) else {
        return Err(invalid("refused by the command-line parser"));
    };
    let f = match parse_file(text) {
        Ok(f) => Some((PathBuf::from("/test.toml"), f)),
        Err(e) => return Err(invalid(e)),
    };
    resolve(&a, Some("k3y"), f)
}

/// A resolved config holds only what its users can take: durations
/// that `Duration` arithmetic and timers accept.
fn usable(c: &Config) {
    assert!(c.interval >= Duration::from_millis(50));
    assert!(c.interval <= Duration::from_secs(86_400));
    if let Some(i) = &c.ingest {
        assert!(i.retry_initial <= i.retry_max);
        assert!(i.request_timeout <= Duration::from_secs(600));
    }
}

proptest::proptest! {
    /// Any value of any numeric setting, in the file or on the command
    /// line, either resolves to a usable config or is refused with a
    /// message naming the setting; nothing panics.
    #[test]
    fn prop_numeric_settings_resolve_or_refuse_never_panic(
        fk in 0..FLOAT_KEYS.len(),
        fv in proptest::num::f64::ANY,
        ik in 0..INT_KEYS.len(),
        iv in proptest::prelude::any::<u64>(),
        flag in 0..NUMERIC_FLAGS.len(),
        small in proptest::prelude::any::<bool>(),
    ) {
        // Small values reach the interesting edges more often.
        let iv = if small { iv % 300_000 } else { iv };
        let (section, key) = FLOAT_KEYS[fk];
        let text = if section.is_empty() {
            format!("{key} = {}\n", toml_float(fv))
        } else {
            format!("[{section}]\n{key} = {}\n", toml_float(fv))
        };
        match resolve_all(&[], &text) {
            Ok(c) => usable(&c),
            Err(e) => {
                let e = e.to_string();
                let named = e.contains(key) || e.contains("interval") || e.contains("max_bytes");
                proptest::prop_assert!(named, "{text:?}: {e}");
            }
        }
        let (section, key) = INT_KEYS[ik];
        let text = if section.is_empty() {
            format!("{key} = {iv}\n")
        } else {
            format!("[{section}]\n{key} = {iv}\n")
        };
        if let Ok(c) = resolve_all(&[], &text) {
            usable(&c);
        }
        for v in [fv.to_string(), iv.to_string()] {
            if let Ok(c) = resolve_all(&[NUMERIC_FLAGS[flag], &v], "") {
                usable(&c);
            }
        }
    }
}
