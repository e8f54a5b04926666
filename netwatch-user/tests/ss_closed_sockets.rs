//! The `ss` source on servers that reply and close (the HTTP pattern): a
//! server process accepts N connections, reads a request of known size,
//! replies with a known size and closes at once; clients are other
//! processes. The bytes moved after the last `ss` read reach the source only
//! through the kernel's sock_diag destroy events, so this checks that each
//! process is given its bytes within 1% and never more than it moved.
//!
//! The processes are this test binary re-executed (`workload_child`). Only
//! their pids are asserted on. Needs root (joining the destroy groups needs
//! `CAP_NET_ADMIN`) and `ss` on `PATH`. Linux only.
#![cfg(target_os = "linux")]

#[macro_use]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use netwatch::attribution::{Attributed, Attribution};
use netwatch::source::ss::SsSource;
use netwatch::source::SocketSource;

const REQUEST: usize = 3_001;
const REPLY: usize = 70_007;
const CLIENTS: usize = 3;
const PER_CLIENT: usize = 20;

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"))
}

/// The workload processes: `NETWATCH_SS_ROLE` picks the role.
#[test]
fn workload_child() {
    let Ok(role) = std::env::var("NETWATCH_SS_ROLE") else {
        return;
    };
    let mut out = std::io::stdout();
    match role.as_str() {
        // Accept N connections; read each request, reply, close at once.
        // With HOLD=1: first read every request, say READY and wait for a
        // line on stdin, then reply and close each (so a read sees them alive).
        "server" => {
            let listener = TcpListener::bind(env("BIND")).unwrap();
            writeln!(out, "PORT {}", listener.local_addr().unwrap().port()).unwrap();
            out.flush().unwrap();
            let n: usize = env("N").parse().unwrap();
            let hold = env("HOLD") == "1";
            let mut held = Vec::new();
            for _ in 0..n {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = vec![0u8; REQUEST];
                s.read_exact(&mut req).unwrap();
                if hold {
                    held.push(s);
                } else {
                    s.write_all(&vec![b'r'; REPLY]).unwrap();
                    drop(s);
                }
            }
            if hold {
                writeln!(out, "READY").unwrap();
                out.flush().unwrap();
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).unwrap();
                for mut s in held {
                    s.write_all(&vec![b'r'; REPLY]).unwrap();
                    drop(s);
                }
            }
            // Keep the listener (and the pid) until told to exit.
            writeln!(out, "SERVED").unwrap();
            out.flush().unwrap();
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
        }
        // M connections, all opened and sent on first, then each read to EOF and closed.
        "client" => {
            let server: SocketAddr = env("SERVER").parse().unwrap();
            let m: usize = env("M").parse().unwrap();
            let together = env("HOLD") == "1";
            let exchange_one = |mut c: TcpStream| {
                let mut got = Vec::new();
                c.read_to_end(&mut got).unwrap();
                assert_eq!(got.len(), REPLY);
            };
            let mut open = Vec::new();
            for _ in 0..m {
                let mut c = TcpStream::connect(server).unwrap();
                c.write_all(&vec![b'q'; REQUEST]).unwrap();
                if together {
                    open.push(c);
                } else {
                    exchange_one(c);
                }
            }
            open.into_iter().for_each(exchange_one);
        }
        other => panic!("unknown role {other}"),
    }
    writeln!(out, "DONE").unwrap();
}

struct Worker {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Worker {
    fn spawn(role: &str, vars: &[(&str, String)]) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "workload_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("NETWATCH_SS_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("re-executing the test binary");
        let out = BufReader::new(child.stdout.take().unwrap());
        Worker { child, out }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line that starts with `prefix` (other lines are the harness's).
    fn expect(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "worker {} ended before {prefix}", self.pid());
            if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                return rest.trim().to_string();
            }
        }
    }

    fn finish(mut self) {
        self.expect("DONE");
        let status = self.child.wait().unwrap();
        assert!(status.success(), "worker {} failed: {status}", self.pid());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Bytes counted per pid over every read.
#[derive(Default)]
struct Counted(HashMap<u32, (u64, u64)>);

impl Counted {
    fn add(&mut self, a: &Attributed) {
        for p in &a.processes {
            if let Some(pid) = p.pid {
                let e = self.0.entry(pid).or_default();
                e.0 += p.rx_bytes;
                e.1 += p.tx_bytes;
            }
        }
    }
    fn get(&self, pid: u32) -> (u64, u64) {
        self.0.get(&pid).copied().unwrap_or_default()
    }
}

fn read(source: &mut SsSource, attribution: &mut Attribution, counted: &mut Counted) {
    let batch = source
        .read()
        .unwrap_or_else(|e| panic!("SsSource::read (is iproute2's `ss` installed?): {e:#}"));
    counted.add(&attribution.apply(&batch));
}

/// `counted` is within 1% of `truth` and not above it.
fn close_enough(counted: u64, truth: u64) -> bool {
    counted <= truth && counted * 100 >= truth * 99
}

/// Read until every `expect`ed (pid, rx, tx) is reached within 1%, or 50
/// reads: the destroy events of sockets the server closed arrive when the
/// peer acknowledges, a little after the processes finish.
fn settle(
    source: &mut SsSource,
    attribution: &mut Attribution,
    counted: &mut Counted,
    expect: &[(u32, u64, u64)],
) {
    for _ in 0..50 {
        read(source, attribution, counted);
        if expect.iter().all(|&(pid, rx, tx)| {
            let (r, t) = counted.get(pid);
            close_enough(r, rx) && close_enough(t, tx)
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn report_and_check(what: &str, counted: &Counted, truth: &[(&str, u32, u64, u64)]) {
    let mut failures = Vec::new();
    for &(name, pid, rx, tx) in truth {
        let (r, t) = counted.get(pid);
        eprintln!("{what}: {name} pid {pid}: rx {r} of {rx}, tx {t} of {tx}");
        if !close_enough(r, rx) || !close_enough(t, tx) {
            failures.push(format!("{name} rx {r}/{rx} tx {t}/{tx}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{what}: not within 1% or above truth: {failures:?}"
    );
}

/// Server plus clients; `hold` makes every connection live through one read.
fn servers_reply_and_close(ip: &str, hold: bool) {
    require_root!("joins sock_diag multicast groups (CAP_NET_ADMIN)");
    let mut source = SsSource::new();
    assert!(
        source.destroy_events_enabled(),
        "the ss source could not join the sock_diag destroy groups"
    );
    let mut attribution = Attribution::new(Instant::now());
    let mut counted = Counted::default();
    read(&mut source, &mut attribution, &mut counted);

    let n = CLIENTS * PER_CLIENT;
    let hold_var = if hold { "1" } else { "0" }.to_string();
    let bind = SocketAddr::new(ip.parse().unwrap(), 0).to_string();
    let mut server = Worker::spawn(
        "server",
        &[
            ("BIND", bind),
            ("N", n.to_string()),
            ("HOLD", hold_var.clone()),
        ],
    );
    let port: u16 = server.expect("PORT").parse().unwrap();
    let target = SocketAddr::new(ip.parse().unwrap(), port).to_string();
    let clients: Vec<Worker> = (0..CLIENTS)
        .map(|_| {
            Worker::spawn(
                "client",
                &[
                    ("SERVER", target.clone()),
                    ("M", PER_CLIENT.to_string()),
                    ("HOLD", hold_var.clone()),
                ],
            )
        })
        .collect();
    if hold {
        server.expect("READY");
        // Every connection alive with its owner, requests received.
        read(&mut source, &mut attribution, &mut counted);
        writeln!(server.child.stdin.as_mut().unwrap(), "GO").unwrap();
    }
    let server_pid = server.pid();
    let client_pids: Vec<u32> = clients.iter().map(Worker::pid).collect();
    server.expect("SERVED");
    clients.into_iter().for_each(Worker::finish);

    let (req, rep) = (REQUEST as u64, REPLY as u64);
    let mut truth = vec![("server", server_pid, n as u64 * req, n as u64 * rep)];
    for &pid in &client_pids {
        let m = PER_CLIENT as u64;
        truth.push(("client", pid, m * rep, m * req));
    }
    let what = format!(
        "{ip} {}",
        if hold {
            "seen alive"
        } else {
            "never seen alive"
        }
    );
    if hold {
        let expect: Vec<_> = truth.iter().map(|&(_, p, r, t)| (p, r, t)).collect();
        settle(&mut source, &mut attribution, &mut counted, &expect);
        report_and_check(&what, &counted, &truth);
    } else {
        // Connections opened and closed between two reads: the server's go
        // to it through its listener; a client's have no known owner and
        // must not be given to anyone (0, never above truth).
        let (_, pid, rx, tx) = truth[0];
        settle(
            &mut source,
            &mut attribution,
            &mut counted,
            &[(pid, rx, tx)],
        );
        report_and_check(&what, &counted, &truth[..1]);
        for &(_, pid, rx, tx) in &truth[1..] {
            let (r, t) = counted.get(pid);
            eprintln!("{what}: client pid {pid}: rx {r} of {rx}, tx {t} of {tx} (owner unknown)");
            assert!(r <= rx && t <= tx, "client {pid} counted above truth");
        }
    }
    writeln!(server.child.stdin.as_mut().unwrap(), "EXIT").unwrap();
    server.finish();
}

#[test]
fn ss_servers_that_reply_and_close_ipv4_seen_alive() {
    servers_reply_and_close("127.0.0.1", true);
}

#[test]
fn ss_servers_that_reply_and_close_ipv6_seen_alive() {
    servers_reply_and_close("::1", true);
}

#[test]
fn ss_servers_that_reply_and_close_ipv4_between_reads() {
    servers_reply_and_close("127.0.0.1", false);
}

#[test]
fn ss_servers_that_reply_and_close_ipv6_between_reads() {
    servers_reply_and_close("::1", false);
}

/// A UDP socket seen by a read and then closed gets a closed sample with its owner.
#[test]
fn ss_closed_udp_socket_yields_a_closed_sample() {
    require_root!("joins sock_diag multicast groups (CAP_NET_ADMIN)");
    let mut source = SsSource::new();
    assert!(source.destroy_events_enabled());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let first = source.read().unwrap();
    assert!(first
        .samples
        .iter()
        .any(|s| s.local == Some(local) && !s.closed && s.pid == Some(std::process::id())));
    drop(sock);
    for _ in 0..50 {
        let batch = source.read().unwrap();
        if let Some(s) = batch.samples.iter().find(|s| s.local == Some(local)) {
            assert!(s.closed, "{s:?}");
            assert_eq!(s.pid, Some(std::process::id()));
            assert_eq!((s.rx_bytes, s.tx_bytes), (0, 0));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no closed sample for UDP {local}");
}

/// A server socket closed while its peer keeps the connection open: the
/// peer's FIN never comes, the time-wait successor stays in FIN-WAIT-2, and
/// the event says so (its final bytes_received holds no FIN).
#[test]
fn ss_destroy_event_of_a_server_whose_peer_stays_open_has_no_fin() {
    use netwatch::source::ss::destroy::DestroyListener;
    require_root!("joins sock_diag multicast groups (CAP_NET_ADMIN)");
    let listener = DestroyListener::start().expect("joining the destroy groups");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut server, _) = l.accept().unwrap();
    let server_end = (server.local_addr().unwrap(), server.peer_addr().unwrap());
    client.write_all(&[1u8; 1234]).unwrap();
    let mut req = [0u8; 1234];
    server.read_exact(&mut req).unwrap();
    server.write_all(&[2u8; 4321]).unwrap();
    drop(server);
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 4321);
    for _ in 0..100 {
        let (events, _) = listener.drain();
        if let Some(ev) = events
            .iter()
            .find(|e| (e.local, e.remote) == (server_end.0, Some(server_end.1)))
        {
            let t = ev.tcp.expect("tcp_info");
            assert_eq!(t.bytes_received, Some(1234), "no FIN: {ev:?}");
            assert_eq!(t.bytes_sent, Some(4321));
            assert!(ev.successor_in_fin_wait2, "{ev:?}");
            drop(client);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no destroy event for the server socket {server_end:?}");
}
