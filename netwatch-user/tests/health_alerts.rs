//! Health probes and alert detectors against real traffic in a network
//! namespace each test creates (a veth pair: this host's end 10.23x.N.1,
//! the namespace's 10.23x.N.2). Nothing here touches this machine's real
//! gateway or resolver, and every assertion is about the test's own
//! addresses, interface and pid (other tests share the host).
//!
//! Every test NEEDS ROOT (namespaces, libpcap capture, raw ICMP, port 53):
//! as another user each skips with one line (`require_root!`), in CI it fails.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;
use common::serial;

use std::collections::HashSet;
use std::io::{BufRead, Read, Write};

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netwatch::alerts::{AlertConfig, Detectors};
use netwatch::engine::Engine;
use netwatch::health::{HealthConfig, Prober};
use netwatch::snapshot::HostCollectors;
use netwatch::source::pcap::{PcapConfig, PcapSource};
use netwatch_common::wire::{Alert, AlertCategory, CollectorInfo};

fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("running ip(8)");
    assert!(st.success(), "ip {args:?} failed: {st}");
}

/// A namespace with a veth pair to this host, deleted when dropped.
struct Peer {
    ns: String,
    host_dev: String,
    host_ip: String,
    peer_ip: String,
}

impl Peer {
    fn new(tag: &str, second_octet: u8) -> Self {
        let id = std::process::id();
        let n = (id % 250) as u8 + 1;
        let ns = format!("nw{tag}{id}");
        let host_dev = format!("nw{tag}{}", id % 100_000);
        let peer = Self {
            ns: ns.clone(),
            host_dev: host_dev.clone(),
            host_ip: format!("10.{second_octet}.{n}.1"),
            peer_ip: format!("10.{second_octet}.{n}.2"),
        };
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_dev, "type", "veth", "peer", "name", "p0", "netns", &ns,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", peer.host_ip),
            "dev",
            &host_dev,
        ]);
        ip(&["link", "set", &host_dev, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", peer.peer_ip),
            "dev",
            "p0",
        ]);
        ip(&["-n", &ns, "link", "set", "p0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let v6 = |h: u8| format!("fd00:{second_octet}:{n}::{h}/64");
        ip(&["-6", "addr", "add", &v6(1), "dev", &host_dev, "nodad"]);
        ip(&["-n", &ns, "-6", "addr", "add", &v6(2), "dev", "p0", "nodad"]);
        peer
    }

    fn peer_ip6(&self) -> std::net::IpAddr {
        let v4: std::net::Ipv4Addr = self.peer_ip.parse().unwrap();
        let [_, b, n, _] = v4.octets();
        format!("fd00:{b}:{n}::2").parse().unwrap()
    }

    fn peer(&self, port: u16) -> SocketAddr {
        format!("{}:{port}", self.peer_ip).parse().unwrap()
    }

    /// Run this test binary's `peer_worker` in the namespace.
    fn spawn(&self, role: &str, target: &str) -> Worker {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(std::env::current_exe().unwrap())
            .args([
                "peer_worker",
                "--exact",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env("NW_ROLE", role)
            .env("NW_BIND", &self.peer_ip)
            .env("NW_TARGET", target)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ip netns exec of the test binary");
        let out = std::io::BufReader::new(child.stdout.take().expect("worker stdout"));
        let mut w = Worker(child, out);
        w.wait_for("READY");
        w
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns])
            .status();
        // Gone with the namespace, normally.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A worker process in the namespace, killed if still running when dropped.
struct Worker(
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
);

impl Worker {
    /// Read lines until one is `word` (or starts with it): that line.
    fn wait_for(&mut self, word: &str) -> String {
        loop {
            let mut line = String::new();
            let n = self.1.read_line(&mut line).expect("reading the worker");
            assert!(n > 0, "the worker ended before saying {word}");
            if line.trim().starts_with(word) {
                return line.trim().to_string();
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The namespace side. `servers`: a TCP sink on :7000 (reads each
/// connection to EOF) and a DNS responder on :53 (answers every query with
/// QR set). `scan`: connects to 50 consecutive ports of `NW_TARGET`.
#[test]
fn peer_worker() {
    let Ok(role) = std::env::var("NW_ROLE") else {
        return;
    };
    let bind = std::env::var("NW_BIND").unwrap();
    let mut out = std::io::stdout();
    match role.as_str() {
        "servers" => {
            let l = TcpListener::bind(format!("{bind}:7000")).unwrap();
            std::thread::spawn(move || {
                for s in l.incoming() {
                    let Ok(mut s) = s else { continue };
                    std::thread::spawn(move || {
                        let mut buf = vec![0u8; 1 << 16];
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                    });
                }
            });
            let u = UdpSocket::bind(format!("{bind}:53")).unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = u.recv_from(&mut buf) {
                    if n >= 12 {
                        buf[2] |= 0x80;
                        let _ = u.send_to(&buf[..n], from);
                    }
                }
            });
            writeln!(out, "READY").unwrap();
            out.flush().unwrap();
            // Until the test closes stdin.
            let _ = std::io::stdin().read(&mut [0u8; 1]);
        }
        "scan" => {
            writeln!(out, "READY").unwrap();
            out.flush().unwrap();
            let target = std::env::var("NW_TARGET").unwrap();
            for port in 20_000..20_050u16 {
                let a: SocketAddr = format!("{target}:{port}").parse().unwrap();
                // Closed ports: refused at once.
                let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
            }
            writeln!(out, "DONE").unwrap();
            out.flush().unwrap();
        }
        // Connects to 25 ports of `NW_TARGET` from 21000 and holds them
        // until stdin closes.
        "connect-hold" => {
            let target = std::env::var("NW_TARGET").unwrap();
            let held: Vec<TcpStream> = (21_000..21_025u16)
                .map(|p| TcpStream::connect(format!("{target}:{p}")).unwrap())
                .collect();
            writeln!(out, "READY").unwrap();
            out.flush().unwrap();
            let _ = std::io::stdin().read(&mut [0u8; 1]);
            drop(held);
        }
        // In a namespace whose ping_group_range admits root's group: the
        // unprivileged datagram socket, pinging this host's end.
        "echo-dgram" => {
            let target = std::env::var("NW_TARGET").unwrap().parse().unwrap();
            let mut e = netwatch::health::icmp::Echo::open(target).unwrap();
            assert_eq!(e.kind(), netwatch::health::icmp::SocketKind::Datagram);
            let answered = (0..3)
                .filter(|&seq| matches!(e.ping(seq, Duration::from_secs(1)), Ok(Some(_))))
                .count();
            writeln!(out, "READY").unwrap();
            writeln!(out, "ANSWERED {answered}").unwrap();
            out.flush().unwrap();
        }
        other => panic!("unknown role {other}"),
    }
}

/// The agent on this host's veth end, with the detectors, collecting every
/// alert it raises.
struct Watch {
    agent: Engine,
    seen: HashSet<(String, String)>,
    alerts: Vec<Alert>,
}

impl Watch {
    fn new(dev: &str, cfg: AlertConfig) -> Self {
        let src = PcapSource::with_config(PcapConfig {
            device: Some(dev.to_string()),
            ..PcapConfig::default()
        })
        .unwrap_or_else(|e| panic!("opening the capture on {dev}: {e}"));
        Self::with_source(Box::new(src), cfg)
    }

    fn with_source(src: Box<dyn netwatch::source::SocketSource>, cfg: AlertConfig) -> Self {
        let info = CollectorInfo {
            source: src.name().into(),
            ebpf_tier: None,
            estimated: false,
            fallback_reason: None,
            lost_records: None,
            connections_truncated: None,
            processes_folded: None,
        };
        let mut agent = Engine::new(src, info, HostCollectors::new(), Instant::now())
            .with_alerts(Detectors::new(cfg));
        agent.prime();
        Self {
            agent,
            seen: HashSet::new(),
            alerts: Vec::new(),
        }
    }

    /// One tick: the alerts new in this snapshot.
    fn tick(&mut self) -> Vec<Alert> {
        std::thread::sleep(Duration::from_millis(100));
        let snap = self.agent.snapshot();
        let mut new = Vec::new();
        for a in snap.alerts.unwrap_or_default() {
            let key = (a.timestamp.to_rfc3339(), a.message.clone());
            if self.seen.insert(key) {
                new.push(a.clone());
                self.alerts.push(a);
            }
        }
        new
    }

    /// Tick while `busy` runs, then `settle` more ticks; the alerts raised
    /// meanwhile that mention any of `ours`.
    fn during(&mut self, busy: std::thread::JoinHandle<()>, ours: &[&str]) -> Vec<Alert> {
        let mut got = Vec::new();
        while !busy.is_finished() {
            got.extend(self.tick());
        }
        busy.join().expect("the traffic thread panicked");
        for _ in 0..8 {
            got.extend(self.tick());
        }
        mine(got, ours)
    }
}

fn mine(alerts: Vec<Alert>, ours: &[&str]) -> Vec<Alert> {
    alerts
        .into_iter()
        .filter(|a| {
            ours.iter()
                .any(|o| a.message.contains(o) || a.detail.contains(o))
        })
        .collect()
}

fn only(alerts: &[Alert], category: AlertCategory, what: &str) {
    assert_eq!(
        alerts.len(),
        1,
        "{what}: exactly one alert of ours expected, got {alerts:#?}"
    );
    assert_eq!(alerts[0].category, category, "{what}: {alerts:#?}");
}

/// Four kinds of traffic, one after the other, each watched by one agent:
/// each raises exactly one alert of its own category and none of the others.
#[test]
fn real_traffic_raises_exactly_the_right_alert() {
    require_root!("makes a network namespace and a veth pair, captures with libpcap, sends raw ICMP and binds UDP port 53");
    let _serial = serial();
    let peer = Peer::new("a", 231);
    let servers = peer.spawn("servers", "");
    let mut cfg = AlertConfig::default();
    // The beacon below ticks every 500 ms; the SDK only counts 5 s or more.
    cfg.beacon.min_interval = Duration::from_millis(100);
    // The burst must outrun the threshold on a shared 2-core machine.
    cfg.bandwidth.interface_bps = 20e6;
    cfg.bandwidth.process_bps = 20e6;
    let mut w = Watch::new(&peer.host_dev, cfg);
    let pid = std::process::id();
    let pid_tag = format!("(pid {pid})");
    let ours = [
        peer.peer_ip.as_str(),
        peer.host_ip.as_str(),
        peer.host_dev.as_str(),
        pid_tag.as_str(),
    ];

    // 1. A scan of 50 closed ports of this host from the namespace.
    let mut scanner = peer.spawn("scan", &peer.host_ip);
    let busy = std::thread::spawn(move || {
        scanner.wait_for("DONE");
    });
    let got = w.during(busy, &ours);
    only(&got, AlertCategory::PortScan, "port scan");
    assert_eq!(got[0].message, format!("Port scan from {}", peer.peer_ip));
    assert!(got[0].detail.contains("(20000-20"), "{}", got[0].detail);

    // 2. A beacon: a connection to the peer every 500 ms, 10 times (long
    // enough that a loaded machine's scheduling delays stay well inside the
    // 15 % jitter bound).
    let target = peer.peer(7000);
    let busy = std::thread::spawn(move || {
        let start = Instant::now();
        for i in 0..10u32 {
            let due = start + Duration::from_millis(500) * i;
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let mut s = TcpStream::connect(target).expect("beacon connect");
            s.write_all(b"beacon").unwrap();
            // Held a little, so a socket-table scan can see its owner.
            std::thread::sleep(Duration::from_millis(60));
        }
    });
    let got = w.during(busy, &ours);
    only(&got, AlertCategory::Beaconing, "beacon");
    assert!(
        got[0].message.ends_with(&format!("→ {target}")),
        "{}",
        got[0].message
    );

    // 3. Long random names to the peer's UDP port 53.
    let dns = peer.peer(53);
    let busy = std::thread::spawn(move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        for id in 0..5u16 {
            let label = |n: usize| -> String {
                (0..n)
                    .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
                    .collect()
            };
            let name = format!("{}.{}.exfil.test", label(60), label(40));
            let mut q = id.to_be_bytes().to_vec();
            q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
            for l in name.split('.') {
                q.push(l.len() as u8);
                q.extend_from_slice(l.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 16, 0, 1]);
            u.send_to(&q, dns).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let got = w.during(busy, &ours);
    only(&got, AlertCategory::DnsTunnel, "DNS tunnel");
    assert!(got[0].detail.contains("exfil.test"), "{}", got[0].detail);

    // 4. A burst: one connection sending as fast as it can until the alerts
    //    are raised (at most 20 s).
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let busy = std::thread::spawn(move || {
        let mut s = TcpStream::connect(target).expect("burst connect");
        let chunk = vec![0x5au8; 1 << 16];
        while !s2.load(Ordering::Relaxed) {
            s.write_all(&chunk).unwrap();
        }
    });
    let mut got = Vec::new();
    let t0 = Instant::now();
    while mine(got.clone(), &ours).len() < 2 && t0.elapsed() < Duration::from_secs(20) {
        got.extend(w.tick());
    }
    stop.store(true, Ordering::Relaxed);
    let got = {
        let mut rest = w.during(busy, &ours);
        rest.extend(mine(got, &ours));
        rest
    };
    let iface: Vec<Alert> = got
        .iter()
        .filter(|a| a.message.starts_with(&format!("{}:", peer.host_dev)))
        .cloned()
        .collect();
    let proc_: Vec<Alert> = got
        .iter()
        .filter(|a| a.message.contains(&pid_tag))
        .cloned()
        .collect();
    only(&iface, AlertCategory::Bandwidth, "burst, interface");
    only(&proc_, AlertCategory::Bandwidth, "burst, process");
    assert_eq!(got.len(), 2, "only the two bandwidth alerts: {got:#?}");

    let total = mine(w.alerts.clone(), &ours);
    for a in &total {
        eprintln!(
            "{:?} {:?}: {} — {}",
            a.severity, a.category, a.message, a.detail
        );
    }
    assert_eq!(total.len(), 5, "{total:#?}");
    drop(servers);
}

/// Without a packet source (`ss` rows only), connections accepted on many
/// local ports from one remote are a port scan too: 25 ports held open from
/// the namespace raise exactly one alert.
#[test]
fn ss_rows_alone_reveal_a_scan_of_open_ports() {
    require_root!("makes a network namespace and a veth pair, captures with libpcap, sends raw ICMP and binds UDP port 53");
    let _serial = serial();
    let peer = Peer::new("s", 236);
    let listeners: Vec<TcpListener> = (21_000..21_025u16)
        .map(|p| TcpListener::bind(format!("{}:{p}", peer.host_ip)).unwrap())
        .collect();
    let mut w = Watch::with_source(
        Box::new(netwatch::source::ss::SsSource::new()),
        AlertConfig::default(),
    );
    let scanner = peer.spawn("connect-hold", &peer.host_ip);
    let mut got = Vec::new();
    for _ in 0..5 {
        got.extend(w.tick());
    }
    let got = mine(got, &[peer.peer_ip.as_str()]);
    only(&got, AlertCategory::PortScan, "ss port scan");
    // Rows come in no particular order: the alert names the first 20 seen.
    assert!(
        got[0].detail.contains("20 unique ports (210"),
        "{}",
        got[0].detail
    );
    assert!(
        got[0].detail.contains(&format!("on {}", peer.host_ip)),
        "{}",
        got[0].detail
    );
    drop(scanner);
    drop(listeners);
}

/// With the kernel collector (eBPF, the default on servers) a scan of 50
/// ports, 3 of them open, from the namespace raises exactly one port-scan
/// alert, from the SYNs and resets the kernel traced; ordinary connections
/// before it raise none.
#[test]
fn ebpf_tcp_events_reveal_a_port_scan() {
    require_root!("makes a network namespace and a veth pair, captures with libpcap, sends raw ICMP and binds UDP port 53");
    let _serial = serial();
    let peer = Peer::new("e", 237);
    let servers = peer.spawn("servers", "");
    let src = netwatch::source::ebpf::EbpfSource::load(&netwatch::source::ebpf::LoadOptions {
        pin: None,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("loading the eBPF collector: {e}"));
    let mut w = Watch::with_source(Box::new(src), AlertConfig::default());
    let pid_tag = format!("(pid {})", std::process::id());
    let ours = [
        peer.peer_ip.as_str(),
        peer.host_ip.as_str(),
        peer.host_dev.as_str(),
        pid_tag.as_str(),
    ];

    // Ordinary traffic: three connections to the peer's sink, one refused
    // connect to the peer, and one over loopback.
    let target = peer.peer(7000);
    let closed = peer.peer(7001);
    let busy = std::thread::spawn(move || {
        for _ in 0..3 {
            let mut s = TcpStream::connect(target).expect("connect to the peer");
            s.write_all(b"hello").unwrap();
        }
        assert!(TcpStream::connect(closed).is_err());
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _a = l.accept().unwrap();
    });
    let got = w.during(busy, &ours);
    assert!(got.is_empty(), "ordinary traffic raised {got:#?}");

    // The scan: ports 20000-20049 of this side, 20005, 20030 and 20045 open.
    let open: Vec<TcpListener> = [20_005u16, 20_030, 20_045]
        .iter()
        .map(|p| TcpListener::bind(format!("{}:{p}", peer.host_ip)).unwrap())
        .collect();
    let mut scanner = peer.spawn("scan", &peer.host_ip);
    let busy = std::thread::spawn(move || {
        scanner.wait_for("DONE");
    });
    let got = w.during(busy, &ours);
    only(&got, AlertCategory::PortScan, "eBPF port scan");
    assert_eq!(got[0].message, format!("Port scan from {}", peer.peer_ip));
    // The 20th distinct port raises it: 20000-20019, one of them open, and
    // the resets of the 18 closed ones before the 20th.
    assert!(
        got[0].detail.starts_with(&format!(
            "{} → 20 unique ports (20000-20019) on {}, 18 refused or reset, in ",
            peer.peer_ip, peer.host_ip
        )),
        "{}",
        got[0].detail
    );
    let total = mine(w.alerts.clone(), &ours);
    assert_eq!(total.len(), 1, "{total:#?}");
    drop(open);
    drop(servers);
}

/// Without raw-socket rights the echo goes over an unprivileged ICMP
/// datagram socket: run in the test's namespace with
/// `net.ipv4.ping_group_range` (per namespace) admitting group 0.
#[test]
fn icmp_echo_over_an_unprivileged_datagram_socket() {
    require_root!("makes a network namespace and a veth pair, captures with libpcap, sends raw ICMP and binds UDP port 53");
    let _serial = serial();
    let peer = Peer::new("d", 233);
    let st = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &peer.ns,
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 0",
        ])
        .status()
        .expect("sysctl in the namespace");
    assert!(st.success(), "setting ping_group_range in {}", peer.ns);
    let mut w = peer.spawn("echo-dgram", &peer.host_ip);
    assert_eq!(w.wait_for("ANSWERED"), "ANSWERED 3");
    assert!(w.0.wait().unwrap().success());
}

/// ICMPv6 echo (here over the raw socket: this host's ping_group_range
/// admits nobody) to a namespace peer's ULA address.
#[test]
fn icmpv6_echo_to_a_namespace_peer() {
    require_root!("makes a network namespace and a veth pair, captures with libpcap, sends raw ICMP and binds UDP port 53");
    let _serial = serial();
    let peer = Peer::new("v", 235);
    let mut e = netwatch::health::icmp::Echo::open(peer.peer_ip6()).expect("an ICMPv6 socket");
    let answered = (0..3)
        .filter(|&seq| matches!(e.ping(seq, Duration::from_secs(2)), Ok(Some(_))))
        .count();
    assert_eq!(answered, 3, "{:?} socket to {}", e.kind(), peer.peer_ip6());
    ip(&["-n", &peer.ns, "link", "set", "p0", "down"]);
    assert_eq!(e.ping(9, Duration::from_millis(300)).unwrap(), None);
}

/// The agent binary: `--health` with the probe targets in the config file
/// fills `health` from a namespace peer; without it `health` stays empty;
/// `alerts` is always there (empty when nothing fired).
#[test]
fn the_agent_reports_health_only_when_asked() {
    require_root!("makes a network namespace and a veth pair, captures with libpcap, sends raw ICMP and binds UDP port 53");
    let _serial = serial();
    let peer = Peer::new("b", 234);
    let _servers = peer.spawn("servers", "");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[health]\ninterval_secs = 0.2\ntimeout_ms = 300\ngateway = \"{}\"\ndns_server = \"{}\"\n",
            peer.peer_ip, peer.peer_ip
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| -> Vec<netwatch_common::wire::Snapshot> {
        let mut args = vec![
            "--config",
            cfg.to_str().unwrap(),
            "--mode",
            "pcap",
            "-i",
            &peer.host_dev,
            "--output",
            "json",
            "--interval",
            "0.3",
        ];
        args.extend_from_slice(extra);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_netwatch-agent"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting the agent");
        let out = child.stdout.take().unwrap();
        let snaps: Vec<_> = std::io::BufReader::new(out)
            .lines()
            .take(6)
            .map(|l| serde_json::from_str(&l.expect("agent output")).expect("a snapshot"))
            .collect();
        let _ = child.kill();
        let _ = child.wait();
        snaps
    };
    let without = run(&[]);
    assert!(
        without.iter().all(|s| s.health.is_none()),
        "health without --health"
    );
    assert!(without.iter().all(|s| s.alerts.is_some()));
    let with = run(&["--health"]);
    let h = with
        .iter()
        .rev()
        .find_map(|s| s.health.clone())
        .expect("health in one of six snapshots with --health");
    assert_eq!(h.gateway_ip.as_deref(), Some(peer.peer_ip.as_str()));
    assert_eq!(h.gateway_loss_pct, Some(0.0));
    assert_eq!(h.dns_loss_pct, Some(0.0));
    assert!(
        h.gateway_rtt_ms.is_some() && h.dns_rtt_ms.is_some(),
        "{h:?}"
    );
}

/// The probe measures a namespace peer's RTT (ICMP echo and a DNS query to
/// its port 53), then reports loss and `None` history slots once the peer
/// is down.
#[test]
fn health_probe_measures_a_peer_and_reports_loss_when_it_goes_down() {
    require_root!("makes a network namespace and a veth pair, captures with libpcap, sends raw ICMP and binds UDP port 53");
    let _serial = serial();
    let peer = Peer::new("h", 232);
    let _servers = peer.spawn("servers", "");
    let prober = Prober::start(HealthConfig {
        interval: Duration::from_millis(200),
        probes: 3,
        timeout: Duration::from_millis(300),
        gateway: Some(peer.peer_ip.parse().unwrap()),
        dns_server: Some(peer.peer(53)),
        dns_query_name: ".".into(),
    })
    .expect("starting the prober");
    let wait_rounds = |n: u64| {
        let t0 = Instant::now();
        while prober.rounds() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the prober stalled at {} rounds",
                prober.rounds()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_rounds(2);
    let up = prober.latest().expect("a health metric after two rounds");
    eprintln!("peer up: {up:?}");
    assert_eq!(up.gateway_ip.as_deref(), Some(peer.peer_ip.as_str()));
    assert_eq!(up.dns_ip.as_deref(), Some(peer.peer_ip.as_str()));
    assert_eq!(up.gateway_loss_pct, Some(0.0));
    assert_eq!(up.dns_loss_pct, Some(0.0));
    let g = up.gateway_rtt_ms.expect("gateway RTT");
    let d = up.dns_rtt_ms.expect("DNS RTT");
    assert!(g > 0.0 && g < 300.0, "{g}");
    assert!(d > 0.0 && d < 300.0, "{d}");
    let h = up.gateway_rtt_history.clone().unwrap();
    assert!(h.len() >= 2 && h.iter().all(Option::is_some), "{h:?}");

    ip(&["-n", &peer.ns, "link", "set", "p0", "down"]);
    let r = prober.rounds();
    wait_rounds(r + 2);
    let down = prober.latest().unwrap();
    eprintln!("peer down: {down:?}");
    assert_eq!(down.gateway_rtt_ms, None);
    assert_eq!(down.gateway_loss_pct, Some(100.0));
    assert_eq!(down.dns_rtt_ms, None);
    assert_eq!(down.dns_loss_pct, Some(100.0));
    let gh = down.gateway_rtt_history.unwrap();
    let dh = down.dns_rtt_history.unwrap();
    assert_eq!(gh.last(), Some(&None), "{gh:?}");
    assert_eq!(dh.last(), Some(&None), "{dh:?}");
    assert!(
        gh.iter().any(Option::is_some),
        "the up rounds are kept: {gh:?}"
    );
    assert!(gh.len() <= 60);
}
