//! Tests across the macOS source's parts: the lsof + nettop join, two and
//! three reads through attribution, property tests of every parser, and
//! `MacSource` end to end against stand-in scripts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::fixtures::{sa, AN_TCP, IBN, LSOF_1, LSOF_2, NETTOP_1, NETTOP_2, NETTOP_COLUMNS};
use super::*;
use crate::attribution::{Attributed, Attribution};
use crate::source::{CountOrigin, Protocol, SampleBatch, SocketSample, SocketSource};

/// Process names in the lsof fixtures too long to write out each time.
const CHROME: &str = "Google Chrome Helper";
const SRV: &str = "My Server (dev) 2.0";
const LONG: &str = "com.example.very-long-background-synchronisation-agent-process-name-x1";

fn join(c: &mut Correlator, lsof: &str, nettop: &str) -> Vec<SocketSample> {
    c.join(&parse_lsof(lsof.as_bytes()), &parse_nettop(nettop))
}

// ───────────────────────────── the join ─────────────────────────────

#[test]
fn join_of_the_fixtures_gives_every_socket_once_with_nettop_bytes() {
    let samples = join(&mut Correlator::new(), LSOF_1, NETTOP_1);
    // (pid, comm, protocol, local, remote, state, rx, tx, rtt_us)
    type Want<'a> = (
        u32,
        &'a str,
        Protocol,
        &'a str,
        Option<&'a str>,
        &'a str,
        u64,
        u64,
        Option<f64>,
    );
    use Protocol::{Tcp, Udp};
    let want: Vec<Want<'_>> = vec![
        (1, "launchd", Tcp, "[::]:22", None, "LISTEN", 0, 0, None),
        (1, "launchd", Tcp, "0.0.0.0:22", None, "LISTEN", 0, 0, None),
        (
            272,
            "mDNSResponder",
            Udp,
            "0.0.0.0:5353",
            None,
            "UNCONN",
            700000,
            100000,
            None,
        ),
        (
            272,
            "mDNSResponder",
            Udp,
            "[::]:5353",
            None,
            "UNCONN",
            280000,
            20000,
            None,
        ),
        (
            272,
            "mDNSResponder",
            Udp,
            "192.168.1.23:60123",
            Some("192.168.1.1:53"),
            "ESTABLISHED",
            7654,
            3456,
            None,
        ),
        (
            600,
            "sharingd",
            Tcp,
            "192.168.1.23:52500",
            Some("17.248.128.5:443"),
            "SYN_SENT",
            0,
            0,
            None,
        ),
        (4242, SRV, Tcp, "127.0.0.1:5000", None, "LISTEN", 0, 0, None),
        (
            4242,
            SRV,
            Tcp,
            "127.0.0.1:5000",
            Some("127.0.0.1:6000"),
            "ESTABLISHED",
            6000,
            1500000,
            Some(60.0),
        ),
        (
            4242,
            SRV,
            Tcp,
            "[::1]:5000",
            Some("[::1]:6000"),
            "ESTABLISHED",
            2048,
            4194304,
            Some(80.0),
        ),
        (4242, SRV, Tcp, "[::1]:5000", None, "LISTEN", 0, 0, None),
        // fd 7, a dup of fd 4, is the same socket: not listed twice.
        (
            4300,
            "curl",
            Tcp,
            "127.0.0.1:6000",
            Some("127.0.0.1:5000"),
            "ESTABLISHED",
            1500000,
            6000,
            Some(50.0),
        ),
        (
            5555,
            LONG,
            Tcp,
            "[fe80::1c2b:3c4d:5e6f:7a8b]:49152",
            Some("[fe80::aede:48ff:fe00:1122]:49153"),
            "ESTABLISHED",
            123456,
            654321,
            Some(1500.0),
        ),
        // The parent holds the socket too; nettop charges the child.
        (
            7010,
            "sshd-session",
            Tcp,
            "[2001:db8:1c2b::23]:22",
            Some("[2001:db8:ffff::99]:61234"),
            "ESTABLISHED",
            0,
            0,
            None,
        ),
        (
            7011,
            "sshd-session",
            Tcp,
            "[2001:db8:1c2b::23]:22",
            Some("[2001:db8:ffff::99]:61234"),
            "ESTABLISHED",
            34567,
            456789,
            Some(41870.0),
        ),
        (
            8123,
            CHROME,
            Tcp,
            "192.168.1.23:52344",
            Some("142.250.72.14:443"),
            "ESTABLISHED",
            5242880,
            102400,
            Some(23450.0),
        ),
        (
            8123,
            CHROME,
            Tcp,
            "[2001:db8:1c2b::23]:52345",
            Some("[2607:f8b0:4005:80e::200e]:443"),
            "ESTABLISHED",
            1048576,
            65536,
            Some(18020.0),
        ),
        (
            8123,
            CHROME,
            Udp,
            "192.168.1.23:61000",
            Some("142.250.72.14:443"),
            "ESTABLISHED",
            3145728,
            262144,
            None,
        ),
        (
            8123,
            CHROME,
            Tcp,
            "192.168.1.23:52350",
            Some("142.250.72.14:443"),
            "CLOSE_WAIT",
            4096,
            1024,
            Some(25100.0),
        ),
        (
            9001,
            "哔哩哔哩",
            Tcp,
            "192.168.1.23:52400",
            Some("203.0.113.80:443"),
            "ESTABLISHED",
            9876543,
            54321,
            Some(120330.0),
        ),
        (
            9002,
            "Café Sync",
            Tcp,
            "[::1]:6000",
            Some("[::1]:5000"),
            "ESTABLISHED",
            4194304,
            2048,
            Some(70.0),
        ),
        // Opened between the two runs: only nettop saw it.
        (
            412,
            "nsurlsessiond",
            Tcp,
            "192.168.1.23:52600",
            Some("17.253.144.10:80"),
            "ESTABLISHED",
            65536,
            1200,
            Some(30000.0),
        ),
    ];
    assert_eq!(samples.len(), want.len());
    for (s, w) in samples.iter().zip(&want) {
        let local = sa(w.3);
        let remote = w.4.map(sa);
        let expected = SocketSample {
            id: socket_id(w.2, local, remote, w.0),
            protocol: w.2,
            local: Some(local),
            remote,
            state: w.5.to_string().into(),
            pid: Some(w.0),
            comm: Some(w.1.into()),
            cgroup_id: None,
            rx_bytes: w.6,
            tx_bytes: w.7,
            rtt_us: w.8,
            tcp: None,
            closed: false,
            origin: CountOrigin::SinceSocketOpen,
        };
        assert_eq!(*s, expected);
    }
    // Every sample is a distinct socket.
    let mut ids: Vec<_> = samples.iter().map(|s| s.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), samples.len());
}

#[test]
fn socket_ids_are_fixed_values_not_per_run_hashes() {
    let id = socket_id(
        Protocol::Tcp,
        sa("127.0.0.1:5000"),
        Some(sa("127.0.0.1:6000")),
        4242,
    );
    assert_eq!(id.secondary, 4242);
    assert_eq!(id.primary, PINNED_ID);
    // Each part of the 5-tuple matters.
    let others = [
        socket_id(
            Protocol::Udp,
            sa("127.0.0.1:5000"),
            Some(sa("127.0.0.1:6000")),
            4242,
        ),
        socket_id(
            Protocol::Tcp,
            sa("127.0.0.1:5001"),
            Some(sa("127.0.0.1:6000")),
            4242,
        ),
        socket_id(
            Protocol::Tcp,
            sa("127.0.0.1:5000"),
            Some(sa("127.0.0.2:6000")),
            4242,
        ),
        socket_id(Protocol::Tcp, sa("127.0.0.1:5000"), None, 4242),
        socket_id(
            Protocol::Tcp,
            sa("[::ffff:127.0.0.1]:5000"),
            Some(sa("127.0.0.1:6000")),
            4242,
        ),
    ];
    for o in others {
        assert_ne!(o.primary, id.primary);
    }
}

/// FNV-1a 64 of the bytes 6 (TCP), 4, 127.0.0.1, 5000 (big-endian), 4,
/// 127.0.0.1, 6000, computed independently of this crate.
const PINNED_ID: u64 = 0x26d4_fe32_786d_1b8f;

#[test]
fn nettop_name_is_used_only_when_lsof_has_none_for_the_pid() {
    let lsof =
        "p50\ncLong Real Name Of It\nf3\ntIPv4\nPTCP\nn10.0.0.1:1->10.0.0.2:2\nTST=ESTABLISHED\n";
    let nettop = "time,,interface,state,bytes_in,bytes_out,\n\
                  1:00:00,Long Real Name.50,,,0,0,\n\
                  1:00:00,tcp4 10.0.0.1:3<->10.0.0.2:4,en0,Established,5,6,\n\
                  1:00:00,other.51,,,0,0,\n\
                  1:00:00,tcp4 10.0.0.1:5<->10.0.0.2:6,en0,Established,7,8,\n";
    let s = join(&mut Correlator::new(), lsof, nettop);
    let names: Vec<_> = s
        .iter()
        .map(|s| (s.pid, s.comm.as_deref().map(str::to_string), s.rx_bytes))
        .collect();
    assert_eq!(
        names,
        vec![
            (Some(50), Some("Long Real Name Of It".to_string()), 0),
            (Some(50), Some("Long Real Name Of It".to_string()), 5),
            (Some(51), Some("other".to_string()), 7),
        ]
    );
}

#[test]
fn tcp_state_lsof_did_not_print_comes_from_nettop() {
    let lsof = "p50\ncx\nf3\ntIPv4\nPTCP\nn10.0.0.1:1->10.0.0.2:2\n";
    let nettop = "time,,interface,state,bytes_in,bytes_out,\n1:00:00,x.50,,,0,0,\n\
                  1:00:00,tcp4 10.0.0.1:1<->10.0.0.2:2,en0,FinWait2,5,6,\n";
    let s = join(&mut Correlator::new(), lsof, nettop);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].state, "FIN_WAIT2");
}

// ──────────────────────── through attribution ────────────────────────

fn batch(at: Instant, samples: Vec<SocketSample>) -> SampleBatch {
    SampleBatch::exact(at, samples)
}

/// A process's row: (name, rx, tx, open sockets).
type Row = (String, u64, u64, u32);

/// pid → its row.
fn rows(a: &Attributed) -> BTreeMap<u32, Row> {
    let mut m = BTreeMap::new();
    for p in &a.processes {
        let pid = p.pid.unwrap();
        let old = m.insert(
            pid,
            (
                p.process_name.clone(),
                p.rx_bytes,
                p.tx_bytes,
                p.connection_count,
            ),
        );
        assert!(old.is_none(), "two rows for pid {pid}");
    }
    m
}

/// `established`: the row's `connection_count`, its ESTABLISHED sockets.
fn row(name: &str, rx: u64, tx: u64, established: u32) -> Row {
    (name.to_string(), rx, tx, established)
}

/// The rows of read 1 (`LSOF_1` + `NETTOP_1`): counters that predate the
/// agent are a baseline only, so no bytes.
fn read_1_rows() -> BTreeMap<u32, Row> {
    [
        // Listening only: a row, no connection.
        (1, row("launchd", 0, 0, 0)),
        // Two unconnected UDP sockets and one connected one.
        (272, row("mDNSResponder", 0, 0, 1)),
        (412, row("nsurlsessiond", 0, 0, 1)),
        // SYN_SENT is not ESTABLISHED yet.
        (600, row("sharingd", 0, 0, 0)),
        // Two listeners, two connections.
        (4242, row(SRV, 0, 0, 2)),
        (4300, row("curl", 0, 0, 1)),
        (5555, row(LONG, 0, 0, 1)),
        (7010, row("sshd-session", 0, 0, 1)),
        (7011, row("sshd-session", 0, 0, 1)),
        // Three connections and one in CLOSE_WAIT.
        (8123, row(CHROME, 0, 0, 3)),
        (9001, row("哔哩哔哩", 0, 0, 1)),
        (9002, row("Café Sync", 0, 0, 1)),
    ]
    .into_iter()
    .collect()
}

/// The rows of read 2 (`LSOF_2` + `NETTOP_2`) after read 1.
fn read_2_rows() -> BTreeMap<u32, Row> {
    [
        (1, row("launchd", 0, 0, 0)),
        (272, row("mDNSResponder", 1600, 350, 1)),
        (412, row("nsurlsessiond", 65536, 0, 1)),
        (600, row("sharingd", 5000, 600, 1)),
        (4242, row(SRV, 1000, 504096, 2)),
        (4300, row("curl", 500000, 1000, 1)),
        (5555, row(LONG, 1000, 2000, 1)),
        (7010, row("sshd-session", 0, 0, 1)),
        (7011, row("sshd-session", 100, 2000, 1)),
        // 52344 +1 MiB/+2 KiB, QUIC +1 MiB/+8 KiB, new 52360 in full; 52350 closed.
        (8123, row(CHROME, 2117152, 13240, 4)),
        // nettop missed its flow this time: counters carried, no delta.
        (9001, row("哔哩哔哩", 0, 0, 1)),
        (9002, row("Café Sync", 4096, 0, 1)),
        // New since read 1: all its bytes are new.
        (9100, row("Slack Helper (Renderer)", 777, 333, 1)),
    ]
    .into_iter()
    .collect()
}

#[test]
fn three_reads_through_attribution_give_exact_per_process_deltas() {
    let t0 = Instant::now();
    let mut corr = Correlator::new();
    let mut attr = Attribution::new(t0);

    // Read 1: counters predate the agent; a baseline only.
    let r1 = attr.apply(&batch(
        t0 + Duration::from_secs(1),
        join(&mut corr, LSOF_1, NETTOP_1),
    ));
    assert_eq!(rows(&r1), read_1_rows());
    assert_eq!(r1.connections.len(), 21);

    // Read 2, two seconds later.
    let r2 = attr.apply(&batch(
        t0 + Duration::from_secs(3),
        join(&mut corr, LSOF_2, NETTOP_2),
    ));
    assert_eq!(rows(&r2), read_2_rows());
    assert_eq!(r2.interval, Duration::from_secs(2));
    let chrome_row = r2.processes.iter().find(|p| p.pid == Some(8123)).unwrap();
    assert_eq!(
        (chrome_row.rx_rate, chrome_row.tx_rate),
        (1058576.0, 6620.0)
    );
    // Most bytes first.
    assert_eq!(r2.processes[0].pid, Some(8123));

    // Read 3: nettop sees the bilibili flow again, 100 bytes further on.
    // Without the carried counters it would count all 9.8 MB again.
    let nettop_3 = NETTOP_2.replace(
        "10:15:43.514699,哔哩哔哩.9001,,,9876543,54321,15,40,2,,,,,,,,,,,,\n",
        "10:15:44.514699,哔哩哔哩.9001,,,9876643,54321,15,40,2,,,,,,,,,,,,\n\
         10:15:44.514836,tcp4 192.168.1.23:52400<->203.0.113.80:443,en0,Established,9876643,54321,15,40,2,120.33 ms,4194304,65535,BE,-,cubic,-,-,-,-,so,\n",
    );
    assert_ne!(nettop_3, NETTOP_2);
    let r3 = attr.apply(&batch(
        t0 + Duration::from_secs(4),
        join(&mut corr, LSOF_2, &nettop_3),
    ));
    let r3 = rows(&r3);
    assert_eq!(r3[&9001], row("哔哩哔哩", 100, 0, 1));
    for (pid, (_, rx, tx, _)) in &r3 {
        if *pid != 9001 {
            assert_eq!((*rx, *tx), (0, 0), "pid {pid}");
        }
    }
}

// ───────────────────────────── properties ─────────────────────────────

/// Lines no parser can take for anything: no digits, dots, commas or
/// colons, and a first character that is no lsof field tag.
fn noise_line() -> impl Strategy<Value = String> {
    "~[a-zA-Z ~!@#]{0,40}"
}

/// Line-level edits of a fixture.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    Truncate(usize, usize),
    Replace(usize, String),
    Insert(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Truncate(a, b)),
        (any::<usize>(), "\\PC{0,60}").prop_map(|(a, s)| Edit::Replace(a, s)),
        (any::<usize>(), "\\PC{0,60}").prop_map(|(a, s)| Edit::Insert(a, s)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Delete(i) if !lines.is_empty() => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) if !lines.is_empty() => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            Edit::Swap(a, b) if !lines.is_empty() => lines.swap(a % n, b % n),
            Edit::Truncate(i, at) if !lines.is_empty() => {
                let l = &mut lines[i % n];
                let cut = l
                    .char_indices()
                    .map(|(c, _)| c)
                    .nth(at % (l.len() + 1))
                    .unwrap_or(l.len());
                l.truncate(cut);
            }
            Edit::Replace(i, s) if !lines.is_empty() => lines[i % n] = s.replace(['\n', '\r'], ""),
            Edit::Insert(i, s) => lines.insert(i % (lines.len() + 1), s.replace(['\n', '\r'], "")),
            _ => {}
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

fn insert_lines(text: &str, at: &[usize], new: &[String]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for (i, l) in at.iter().zip(new) {
        lines.insert(i % (lines.len() + 1), l.clone());
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Every parser's own invariants, on any input.
fn check_all(text: &str) -> Result<(), TestCaseError> {
    let lines = text.lines().count();

    let l = parse_lsof(text.as_bytes());
    prop_assert!(l.lines.is_consistent());
    prop_assert_eq!(l.lines.total, lines);
    let file_sets = text.lines().filter(|x| x.starts_with('f')).count();
    prop_assert_eq!(
        l.sockets.len() + l.incomplete_records + l.other_protocol_records,
        file_sets
    );

    let n = parse_nettop(text);
    prop_assert!(n.lines.is_consistent());
    prop_assert_eq!(n.lines.total, lines);
    prop_assert_eq!(n.lines.used, n.flows.len() + n.processes.len());
    for f in &n.flows {
        if let Some(rtt) = f.rtt_us {
            prop_assert!(rtt.is_finite() && rtt > 0.0);
        }
        prop_assert!(f.remote.is_some() || f.state != "ESTABLISHED" || f.protocol == Protocol::Tcp);
    }

    let i = parse_netstat_interfaces(text);
    prop_assert!(i.lines.is_consistent());
    prop_assert_eq!(i.lines.total, lines);
    prop_assert_eq!(i.lines.used, i.interfaces.len());

    let t = parse_netstat_tcp(text);
    prop_assert!(t.lines.is_consistent());
    prop_assert_eq!(t.lines.total, lines);
    prop_assert_eq!(t.lines.used, t.total() as usize);
    Ok(())
}

const FIXTURES: [&str; 7] = [
    LSOF_1,
    LSOF_2,
    NETTOP_1,
    NETTOP_2,
    NETTOP_COLUMNS,
    IBN,
    AN_TCP,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics_and_every_line_is_counted(s in "\\PC{0,3000}") {
        check_all(&s)?;
    }

    #[test]
    fn arbitrary_lines_of_field_like_text(lines in proptest::collection::vec("[pcftPTnGgu#~ ]?[\\x20-\\x7e]{0,50}", 0..60)) {
        let mut s = lines.join("\n");
        s.push('\n');
        check_all(&s)?;
    }

    #[test]
    fn arbitrary_bytes_through_lsof(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let out = parse_lsof(&bytes);
        prop_assert!(out.lines.is_consistent());
    }

    #[test]
    fn edited_fixtures_never_panic(which in 0..FIXTURES.len(), edits in proptest::collection::vec(edit(), 1..12)) {
        check_all(&apply(FIXTURES[which], &edits))?;
    }

    #[test]
    fn noise_lines_change_nothing_but_the_skipped_count(
        which in 0..FIXTURES.len(),
        at in proptest::collection::vec(any::<usize>(), 1..8),
        noise in proptest::collection::vec(noise_line(), 8),
    ) {
        let text = FIXTURES[which];
        let k = at.len();
        let noisy = insert_lines(text, &at, &noise);

        let (a, b) = (parse_lsof(text.as_bytes()), parse_lsof(noisy.as_bytes()));
        prop_assert_eq!(&a.sockets, &b.sockets);
        prop_assert_eq!(a.lines.used, b.lines.used);
        prop_assert_eq!(a.lines.skipped() + k, b.lines.skipped());

        let (a, b) = (parse_nettop(text), parse_nettop(&noisy));
        prop_assert_eq!(&a.flows, &b.flows);
        prop_assert_eq!(&a.processes, &b.processes);
        prop_assert_eq!(a.lines.skipped() + k, b.lines.skipped());

        let (a, b) = (parse_netstat_interfaces(text), parse_netstat_interfaces(&noisy));
        prop_assert_eq!(&a.interfaces, &b.interfaces);
        prop_assert_eq!(a.lines.skipped() + k, b.lines.skipped());

        let (a, b) = (parse_netstat_tcp(text), parse_netstat_tcp(&noisy));
        prop_assert_eq!(
            (a.established, a.time_wait, a.close_wait, a.listen, a.other),
            (b.established, b.time_wait, b.close_wait, b.listen, b.other)
        );
        prop_assert_eq!(a.lines.skipped() + k, b.lines.skipped());
    }

    #[test]
    fn blank_lines_change_nothing_but_the_blank_count(
        which in 0..FIXTURES.len(),
        at in proptest::collection::vec(any::<usize>(), 1..8),
        blanks in proptest::collection::vec("[ \t]{0,3}", 8),
    ) {
        let text = FIXTURES[which];
        let k = at.len();
        let spaced = insert_lines(text, &at, &blanks);
        let (a, b) = (parse_lsof(text.as_bytes()), parse_lsof(spaced.as_bytes()));
        prop_assert_eq!(&a.sockets, &b.sockets);
        prop_assert_eq!(a.lines.blank + k, b.lines.blank);
        let (a, b) = (parse_nettop(text), parse_nettop(&spaced));
        prop_assert_eq!(&a.flows, &b.flows);
        prop_assert_eq!(a.lines.blank + k, b.lines.blank);
        let (a, b) = (parse_netstat_interfaces(text), parse_netstat_interfaces(&spaced));
        prop_assert_eq!(&a.interfaces, &b.interfaces);
        prop_assert_eq!(a.lines.blank + k, b.lines.blank);
        let (a, b) = (parse_netstat_tcp(text), parse_netstat_tcp(&spaced));
        prop_assert_eq!(a.total(), b.total());
        prop_assert_eq!(a.lines.blank + k, b.lines.blank);
    }

    #[test]
    fn the_join_never_panics_and_never_lists_a_socket_twice(
        le in proptest::collection::vec(edit(), 0..6),
        ne in proptest::collection::vec(edit(), 0..6),
    ) {
        let samples = join(&mut Correlator::new(), &apply(LSOF_1, &le), &apply(NETTOP_1, &ne));
        let mut ids: Vec<_> = samples.iter().map(|s| s.id).collect();
        ids.sort();
        let n = ids.len();
        ids.dedup();
        prop_assert_eq!(ids.len(), n);
    }
}

// ─────────────────────── MacSource, end to end ───────────────────────

mod end_to_end {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    /// A directory of stand-in tools that print what the test puts in
    /// `<tool>.out` and note their arguments and locale in `<tool>.args`.
    struct Bench {
        dir: tempfile::TempDir,
    }

    impl Bench {
        fn new() -> Self {
            let b = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            for tool in ["lsof", "nettop", "netstat"] {
                b.script(
                    tool,
                    &format!(
                        "#!/bin/sh\nd=$(dirname \"$0\")\necho \"$* LC_ALL=$LC_ALL\" > \"$d/{tool}.args\"\n\
                         [ -f \"$d/{tool}.$1.out\" ] && exec cat \"$d/{tool}.$1.out\"\nexec cat \"$d/{tool}.out\"\n"
                    ),
                );
            }
            b
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn script(&self, tool: &str, body: &str) {
            let p = self.path(tool);
            fs::write(&p, body).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn put(&self, file: &str, text: &str) {
            fs::write(self.path(file), text).unwrap();
        }

        fn tools(&self) -> MacTools {
            MacTools {
                lsof: self.path("lsof"),
                nettop: self.path("nettop"),
                netstat: self.path("netstat"),
                timeout: Duration::from_secs(20),
            }
        }

        fn args(&self, tool: &str) -> String {
            fs::read_to_string(self.path(&format!("{tool}.args"))).unwrap()
        }
    }

    /// A script just written can be "busy" for a moment if another test
    /// thread forked while it was open for writing (ETXTBSY): retry then.
    fn retry<T, E: std::fmt::Display>(mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
        for _ in 0..20 {
            match f() {
                // ETXTBSY only: a timeout's message says "busy host" too.
                Err(e) if e.to_string().contains("os error 26") => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                other => return other,
            }
        }
        f()
    }

    #[test]
    fn reads_twice_and_attributes_exactly() {
        let b = Bench::new();
        b.put("lsof.out", LSOF_1);
        b.put("nettop.out", NETTOP_1);
        let mut src = MacSource::new(b.tools()).unwrap();
        assert_eq!(src.name(), "macos");
        let t0 = Instant::now();
        let mut attr = Attribution::new(t0);

        let first = retry(|| src.read()).unwrap();
        assert_eq!(first.samples.len(), 21);
        assert_eq!((first.lost_records, first.estimated), (0, false));
        assert_eq!(b.args("lsof").trim(), "-i -n -P -F pcPtTn LC_ALL=C");
        assert!(b.args("nettop").starts_with("-L 1 -n -x LC_ALL="));
        let r1 = attr.apply(&first);
        assert!(r1.processes.iter().all(|p| p.rx_bytes + p.tx_bytes == 0));
        assert_eq!(rows(&r1), read_1_rows());

        b.put("lsof.out", LSOF_2);
        b.put("nettop.out", NETTOP_2);
        let second = retry(|| src.read()).unwrap();
        assert_eq!(rows(&attr.apply(&second)), read_2_rows());
    }

    #[test]
    fn unreadable_lines_are_reported_as_lost_cumulatively() {
        let b = Bench::new();
        b.put("lsof.out", &format!("{LSOF_1}#junk\n"));
        b.put("nettop.out", &format!("{NETTOP_1}junk without commas\n"));
        let mut src = MacSource::new(b.tools()).unwrap();
        assert_eq!(retry(|| src.read()).unwrap().lost_records, 2);
        assert_eq!(retry(|| src.read()).unwrap().lost_records, 4);
    }

    #[test]
    fn a_missing_tool_is_a_clear_error() {
        let b = Bench::new();
        let mut tools = b.tools();
        tools.nettop = PathBuf::from("/nonexistent/nettop");
        let err = MacSource::new(tools).unwrap_err();
        assert!(matches!(err, MacError::ToolMissing { .. }));
        assert!(err.to_string().contains("/nonexistent/nettop"), "{err}");
        assert!(err.to_string().contains("not found"), "{err}");
    }

    #[test]
    fn runner_errors_become_the_mac_errors_that_name_the_tool() {
        use crate::tool::ToolCommand;
        use std::path::Path;

        let missing = ToolCommand::new(Path::new("/nonexistent/lsof"), &[], Duration::from_secs(1));
        let err = MacError::from(missing.run().unwrap_err());
        assert!(matches!(err, MacError::ToolMissing { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/lsof"), "{err}");

        let slow = ToolCommand::new(
            Path::new("/bin/sh"),
            &["-c", "exec sleep 30"],
            Duration::from_millis(200),
        );
        let err = MacError::from(slow.run().unwrap_err());
        assert!(
            matches!(
                err,
                MacError::Timeout {
                    timeout_ms: 200,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_failing_nettop_fails_the_read() {
        let b = Bench::new();
        b.put("lsof.out", LSOF_1);
        b.script(
            "nettop",
            "#!/bin/sh\necho 'nettop: must be run as root' >&2\nexit 1\n",
        );
        let mut src = MacSource::new(b.tools()).unwrap();
        let err = retry(|| src.read()).unwrap_err().to_string();
        assert!(
            err.contains("nettop") && err.contains("must be run as root"),
            "{err}"
        );
    }

    #[test]
    fn lsof_exit_1_with_output_is_still_read() {
        let b = Bench::new();
        b.put("nettop.out", NETTOP_1);
        b.put("lsof.out", LSOF_1);
        b.script(
            "lsof",
            "#!/bin/sh\ncat \"$(dirname \"$0\")/lsof.out\"\necho 'lsof: WARNING: can't stat() fuse' >&2\nexit 1\n",
        );
        let out = retry(|| b.tools().lsof_sockets()).unwrap();
        assert_eq!(out.sockets.len(), 21);
        // Nothing listed and a complaint: that is a failure.
        b.script(
            "lsof",
            "#!/bin/sh\necho 'lsof: no permission' >&2\nexit 1\n",
        );
        let err = retry(|| b.tools().lsof_sockets()).unwrap_err();
        assert!(matches!(err, MacError::Failed { .. }), "{err}");
        // Nothing listed, nothing said: no sockets.
        b.script("lsof", "#!/bin/sh\nexit 1\n");
        assert!(retry(|| b.tools().lsof_sockets())
            .unwrap()
            .sockets
            .is_empty());
    }

    #[test]
    fn output_in_an_unknown_format_is_an_error_not_zero_bytes() {
        let b = Bench::new();
        b.put("lsof.out", LSOF_1);
        b.put(
            "nettop.out",
            "Some new nettop format\nwith lines we cannot read\n",
        );
        let mut src = MacSource::new(b.tools()).unwrap();
        let err = retry(|| src.read()).unwrap_err().to_string();
        assert!(err.contains("format"), "{err}");
    }

    #[test]
    fn a_hung_tool_is_killed_at_the_timeout() {
        let b = Bench::new();
        b.put("lsof.out", LSOF_1);
        b.script("nettop", "#!/bin/sh\nexec sleep 30\n");
        let mut tools = b.tools();
        // Long enough for the lsof script to finish on a loaded machine;
        // the hung nettop never does.
        tools.timeout = Duration::from_millis(2_000);
        let mut src = MacSource::new(tools).unwrap();
        let err = retry(|| src.read()).unwrap_err().to_string();
        assert!(
            err.contains("nettop") && err.contains("no result within 2000 ms, killed it"),
            "{err}"
        );
    }

    #[test]
    fn netstat_reports() {
        let b = Bench::new();
        b.put("netstat.-ibn.out", IBN);
        b.put("netstat.-an.out", AN_TCP);
        let tools = b.tools();
        let ifaces = retry(|| tools.interfaces()).unwrap();
        assert_eq!(ifaces.interfaces.len(), 11);
        assert!(b.args("netstat").starts_with("-ibn LC_ALL="));
        let tcp = retry(|| tools.tcp_states()).unwrap();
        assert_eq!((tcp.established, tcp.time_wait, tcp.close_wait), (10, 3, 2));
        assert!(b.args("netstat").starts_with("-an -p tcp LC_ALL="));
    }
}
