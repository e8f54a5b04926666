//! The library's front door refuses what the agent refuses: a pin
//! directory an embedder names is checked before anything is loaded or
//! removed (the bpffs root, where other software's pins live, is refused),
//! and the error says which setting and why, each cause once.

#[macro_use]
mod common;

use common::serial;

#[test]
fn a_pin_directory_at_the_bpffs_root_is_refused_before_loading() {
    require_root!("would load BPF programs if the check let it through");
    let _kernel = serial();
    let state = std::env::temp_dir().join(format!("nw-collector-api-{}", std::process::id()));
    let err = match netwatch::Collector::builder()
        .mode(netwatch::Mode::Ebpf)
        .dns_capture(false)
        .pin("/sys/fs/bpf", state.join("baseline"))
        .build()
    {
        Ok(_) => panic!("the bpffs root was accepted as a pin directory"),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            netwatch::Error::Refused {
                what: "pin directory",
                ..
            }
        ),
        "{err:?}"
    );
    let shown = format!("{:#}", anyhow::Error::from(err));
    assert!(shown.starts_with("refused the pin directory: "), "{shown}");
    // The cause, once (it is the error's source, not repeated in it).
    assert_eq!(
        shown.matches("is the root of a mounted filesystem").count(),
        1,
        "{shown}"
    );
    assert!(!state.exists(), "nothing was created for a refused setting");
}

/// This process's (rx, tx) bytes in `snap`.
fn ours(snap: &netwatch::wire::Snapshot) -> (u64, u64) {
    let pid = std::process::id();
    snap.processes
        .iter()
        .flatten()
        .filter(|p| p.pid == Some(pid))
        .fold((0, 0), |(rx, tx), p| (rx + p.rx_bytes, tx + p.tx_bytes))
}

/// Pins of this test, removed (programs detached) even when it fails.
struct Pins {
    dir: std::path::PathBuf,
    state: tempfile::TempDir,
}

impl Pins {
    fn baseline(&self) -> std::path::PathBuf {
        self.state.path().join("baseline")
    }

    fn collector(&self) -> netwatch::Collector {
        netwatch::Collector::builder()
            .mode(netwatch::Mode::Ebpf)
            .dns_capture(false)
            .pin(&self.dir, self.baseline())
            .build()
            .expect("building a pinned eBPF collector")
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = netwatch::unpin(&self.dir, self.baseline());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `collect` without `kept`: a program that lost the snapshot and
/// restarts counts its bytes again, exactly; after `kept` (what
/// `snapshot` does) a restart continues past it. Over one loopback TCP
/// connection that stays open across the restarts, so the pinned per-socket
/// counters carry every byte.
#[test]
fn bytes_of_a_snapshot_not_kept_are_counted_again_after_a_restart() {
    use std::io::{Read, Write};
    require_root!("loads BPF programs and pins them under /sys/fs/bpf");
    let _kernel = serial();
    let pins = Pins {
        dir: format!("/sys/fs/bpf/nwtest-collector-api-{}", std::process::id()).into(),
        state: tempfile::tempdir().unwrap(),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut c = pins.collector();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    // Exactly `n` bytes one way, read whole on the other end.
    let mut send = |n: usize| {
        client.write_all(&vec![5u8; n]).unwrap();
        let mut got = vec![0u8; n];
        server.read_exact(&mut got).unwrap();
    };

    send(100_003);
    let lost = c.collect();
    assert_eq!(ours(&lost), (100_003, 100_003), "the first interval");
    drop(c); // never kept: the saved baseline stays before it

    let mut c = pins.collector();
    send(20_011);
    let again = c.snapshot(); // kept
    assert_eq!(
        ours(&again),
        (120_014, 120_014),
        "the snapshot not kept is counted again, with the new bytes"
    );
    drop(c);

    let c = pins.collector();
    send(3_001);
    let after = c.finish();
    assert_eq!(
        ours(&after),
        (3_001, 3_001),
        "a kept snapshot is not counted again"
    );
}
