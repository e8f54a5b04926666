//! Network faults a test makes for itself: two network namespaces of its
//! own joined by a veth pair, and nftables rules inside either (this host's
//! kernel has no netem; nftables drops, rejects and counts). Used by the
//! TCP-quality and DNS tests (`#[path = "common/faults.rs"] mod faults;`).
//! Test code only: it panics with the failing command's output.
//!
//! The BPF programs see every namespace, so a test finds its own sockets
//! by the addresses below and the ports it chose.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The client end's address (in every pair: each pair has namespaces of its own).
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// The server end's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

/// Which end of a [`VethPair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Two named network namespaces (`ip netns`) joined by a veth link,
/// [`CLIENT_IP`] on one end and [`SERVER_IP`] on the other, loopback up in
/// both. Removed on drop (the veth goes with them).
pub struct VethPair {
    client: String,
    server: String,
}

/// Run `cmd`, panicking with its output if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

impl VethPair {
    /// A new pair; `tag` (a few characters) names its namespaces, unique
    /// per process and call.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let base = format!("nw{}{}-{n}", tag, std::process::id() % 100_000);
        let pair = Self {
            client: format!("{base}c"),
            server: format!("{base}s"),
        };
        ip(&["netns", "add", &pair.client]);
        ip(&["netns", "add", &pair.server]);
        // Interface names are at most 15 bytes: short, and local to each
        // namespace once moved, so the same names in every pair.
        let (vc, vs) = (
            format!("v{n}c{}", std::process::id() % 10_000),
            format!("v{n}s{}", std::process::id() % 10_000),
        );
        ip(&["link", "add", &vc, "type", "veth", "peer", "name", &vs]);
        ip(&["link", "set", &vc, "netns", &pair.client, "name", "veth0"]);
        ip(&["link", "set", &vs, "netns", &pair.server, "name", "veth0"]);
        for (ns, addr) in [(&pair.client, CLIENT_IP), (&pair.server, SERVER_IP)] {
            let cidr = format!("{addr}/24");
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "veth0"]);
            ip(&["-n", ns, "link", "set", "veth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// The namespace's name (`ip netns` / `/run/netns/<name>`).
    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Client => &self.client,
            Side::Server => &self.server,
        }
    }

    /// Run `f` on a thread inside `side`'s namespace: sockets it creates
    /// live there (and may be used from any thread afterwards).
    pub fn enter<T: Send>(&self, side: Side, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns(side));
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns(2) on a namespace descriptor we hold; it
                // moves only this thread, which ends with the scope.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Load an nftables ruleset (`nft -f -` syntax) in `side`'s namespace.
    pub fn nft(&self, side: Side, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns(side), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec nft");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(rules.as_bytes())
            .expect("writing the ruleset");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft in {}: {}\n{}\nruleset:\n{rules}",
            self.ns(side),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Remove every nftables rule in `side`'s namespace.
    pub fn nft_flush(&self, side: Side) {
        self.nft(side, "flush ruleset\n");
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
