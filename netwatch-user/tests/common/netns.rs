//! Network-namespace helpers shared by test files that run the agent in a
//! namespace of their own, or make network faults in namespaces of their
//! own (`use common::netns;`): [`VethPair`] (two
//! namespaces and a veth link), [`in_netns`] (run code, open sockets, in
//! one), [`nft`] and [`nft_counter`] (rules and what they counted),
//! [`connect_with_syn_retries`] and [`tcp_info`]. They work the same on the
//! host and in the QEMU guests (`cargo xtask vm --net-faults` gives the
//! guest the modules and the host's `ip`, `tc` and `nft`). Test code only;
//! it never touches a namespace, link or rule it did not make.

// Each test file uses a part of these helpers.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Bring `lo` up in the calling thread's network namespace.
pub fn loopback_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo"; the
    // descriptor is closed below.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let got = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr);
        assert_eq!(
            got,
            0,
            "SIOCGIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let set = libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr);
        assert_eq!(
            set,
            0,
            "SIOCSIFFLAGS lo: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// How many [`VethPair`]s this process made: part of each pair's names and
/// addresses, so pairs made side by side never collide.
static PAIRS: AtomicU32 = AtomicU32::new(0);

/// Two network namespaces of the test's own, `client_ns` and `server_ns`,
/// joined by a veth link: `client_ip/24` on the client's end (`client_dev`),
/// `server_ip/24` on the server's (`server_dev`), `lo` up in both. Made
/// with the `ip` command (iproute2, on the host and in the QEMU guests);
/// nothing is made in the caller's namespace. Both ends send each TCP
/// segment as its own packet (`gso_max_segs 1`), as a wire would, so an
/// nft rule that drops one packet in N drops one segment in N. Dropping the
/// pair deletes both namespaces (and with them the link, the sockets'
/// routes and every nft rule in them), also when the test fails.
///
/// Names are `nw-<tag>-<pid>-<n>-c`/`-s`; addresses are
/// `10.<100 + pid % 100>.<n % 256>.1` (client) and `.2` (server), so pairs
/// of one process (up to 256) never share an address and pairs of two
/// processes rarely do (each pair has its own namespaces, so that matters
/// only to a test that looks for its address in a machine-wide view, such
/// as the eBPF socket map).
#[derive(Debug)]
pub struct VethPair {
    pub client_ns: String,
    pub server_ns: String,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    /// The client end's interface name, in `client_ns`.
    pub client_dev: String,
    /// The server end's interface name, in `server_ns`.
    pub server_dev: String,
}

impl VethPair {
    /// Makes the pair; `tag` (letters, digits, `-`; a few characters)
    /// names it. Panics, saying which `ip` command failed, when it cannot
    /// (not root, no veth in the kernel, no iproute2).
    pub fn new(tag: &str) -> Self {
        assert!(
            !tag.is_empty()
                && tag.len() <= 16
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "VethPair tag {tag:?}: 1 to 16 letters, digits or '-'"
        );
        let n = PAIRS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let base = format!("nw-{tag}-{pid}-{n}");
        let octet = |v: u32| u8::try_from(v % 256).unwrap_or(0);
        let (a, b) = (octet(100 + pid % 100), octet(n));
        let pair = Self {
            client_ns: format!("{base}-c"),
            server_ns: format!("{base}-s"),
            client_ip: Ipv4Addr::new(10, a, b, 1),
            server_ip: Ipv4Addr::new(10, a, b, 2),
            client_dev: "nwc0".into(),
            server_dev: "nws0".into(),
        };
        for ns in [&pair.client_ns, &pair.server_ns] {
            // A namespace left by a killed earlier run of this pid is ours.
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // From here on, Drop removes whatever was made.
        ip(&["netns", "add", &pair.client_ns]);
        ip(&["netns", "add", &pair.server_ns]);
        ip(&[
            "-n",
            &pair.client_ns,
            "link",
            "add",
            &pair.client_dev,
            "type",
            "veth",
            "peer",
            "name",
            &pair.server_dev,
            "netns",
            &pair.server_ns,
        ]);
        for (ns, dev, addr) in [
            (&pair.client_ns, &pair.client_dev, pair.client_ip),
            (&pair.server_ns, &pair.server_dev, pair.server_ip),
        ] {
            ip(&["-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "dev", dev, "up"]);
            ip(&["-n", ns, "link", "set", "dev", "lo", "up"]);
        }
        pair
    }

    /// Runs `f` on a thread inside the client namespace (see [`in_netns`]).
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.client_ns, f)
    }

    /// Runs `f` on a thread inside the server namespace (see [`in_netns`]).
    pub fn in_server<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_netns(&self.server_ns, f)
    }

    /// The namespace of `side`.
    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Client => &self.client_ns,
            Side::Server => &self.server_ns,
        }
    }

    /// The address of `side`'s end.
    pub fn ip(&self, side: Side) -> Ipv4Addr {
        match side {
            Side::Client => self.client_ip,
            Side::Server => self.server_ip,
        }
    }

    /// Runs `f` on a thread inside `side`'s namespace (see [`in_netns`]).
    pub fn enter<T: Send>(&self, side: Side, f: impl FnOnce() -> T + Send) -> T {
        in_netns(self.ns(side), f)
    }

    /// Loads `rules` in `side`'s namespace (see [`nft`]).
    pub fn nft(&self, side: Side, rules: &str) {
        nft(self.ns(side), rules);
    }

    /// Removes every nft rule in `side`'s namespace.
    pub fn nft_flush(&self, side: Side) {
        nft(self.ns(side), "flush ruleset\n");
    }
}

/// Which end of a [`VethPair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Wait until everything `s` sent is acknowledged (no segment left to
/// retransmit), at most `limit`; returns the `TCP_INFO` then.
pub fn wait_all_acked(s: &impl AsRawFd, limit: std::time::Duration) -> libc::tcp_info {
    let start = std::time::Instant::now();
    loop {
        let i = tcp_info(s);
        if i.tcpi_unacked == 0 {
            return i;
        }
        assert!(
            start.elapsed() < limit,
            "segments still unacknowledged after {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A ruleset for a namespace's input that drops `percent`% of the TCP
/// segments to or from `port`, at random (`numgen random`).
pub fn random_drop(port: u16, percent: u32) -> String {
    format!(
        "table inet nwloss {{\n chain input {{\n type filter hook input priority 0; policy accept;\n \
         tcp dport {port} numgen random mod 100 < {percent} drop\n \
         tcp sport {port} numgen random mod 100 < {percent} drop\n }}\n}}\n"
    )
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `ip <args>`, panicking with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `ip {}`: {e} (is iproute2 installed?)",
                args.join(" ")
            )
        });
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `f` on a new thread moved into the named namespace `ns` (made by
/// `ip netns add`, as [`VethPair`] does) and returns what it returns. A
/// socket `f` opens belongs to `ns` for its whole life, whichever thread
/// uses it afterwards: open listeners and clients here, use them anywhere.
/// Threads `f` spawns start in the namespace too.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) on a namespace descriptor this function
            // holds; it moves only this thread, which ends with `f`.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns into {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Loads `rules` (an nft script, as `nft -f` reads it) in namespace `ns`,
/// panicking with nft's message when it refuses them. Tables live in the
/// namespace, so a table name needs to be unique only there.
pub fn nft(ns: &str, rules: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running `ip netns exec {ns} nft -f -`: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .unwrap_or_else(|e| panic!("writing the rules to nft in {ns}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for nft in {ns}: {e}"));
    assert!(
        out.status.success(),
        "nft in {ns} refused the rules ({}): {}\nrules:\n{rules}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// What a named nft counter counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NftCounter {
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the named counter `name` of table `family table` (e.g. `"inet"`,
/// `"faults"`) in namespace `ns`: declared in the table as
/// `counter NAME { }` and counted by rules with `counter name "NAME"`.
pub fn nft_counter(ns: &str, family: &str, table: &str, name: &str) -> NftCounter {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "list", "counter", family, table, name,
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running nft list counter in {ns}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nft list counter {family} {table} {name} in {ns} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    parse_nft_counter(&text)
        .unwrap_or_else(|| panic!("no `packets N bytes M` in nft's listing of {name}:\n{text}"))
}

/// `packets N bytes M` in an `nft list counter` listing.
pub fn parse_nft_counter(text: &str) -> Option<NftCounter> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets")?;
    match words.get(at..at + 4)? {
        [_, packets, "bytes", bytes] => Some(NftCounter {
            packets: packets.parse().ok()?,
            bytes: bytes.parse().ok()?,
        }),
        _ => None,
    }
}

/// The kernel's `TCP_INFO` for a TCP socket (`tcpi_total_retrans`,
/// `tcpi_retrans`, `tcpi_rtt`, ...), as `libc::tcp_info` lays it out.
pub fn tcp_info(fd: &impl AsRawFd) -> libc::tcp_info {
    // SAFETY: a zeroed tcp_info is valid (plain integers); getsockopt
    // writes at most `len` bytes into it and sets `len`.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(
            r,
            0,
            "getsockopt(TCP_INFO): {}",
            std::io::Error::last_os_error()
        );
        info
    }
}

/// Why [`connect_with_syn_retries`] failed, and what the kernel says the
/// socket did before it failed.
#[derive(Debug)]
pub struct ConnectFailure {
    /// The error as the kernel gave it (`ETIMEDOUT`, `ECONNREFUSED`,
    /// `EHOSTUNREACH`, ...; see `raw_os_error()`).
    pub error: std::io::Error,
    /// `TCP_INFO` of the failed socket (`tcpi_total_retrans` is the SYNs it
    /// retransmitted); `None` when the socket could not even be made.
    /// (Boxed: `tcp_info` is a few hundred bytes.)
    pub info: Option<Box<libc::tcp_info>>,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.info {
            Some(info) => write!(
                f,
                "{} (after {} SYN retransmit(s))",
                self.error, info.tcpi_total_retrans
            ),
            None => write!(f, "{} (no socket)", self.error),
        }
    }
}

/// A blocking TCP connect to `to`, made in the calling thread's namespace
/// (run it in [`in_netns`]), from a socket with `TCP_SYNCNT` =
/// `syn_retries`: the kernel retransmits the SYN at most that many times
/// (after 1 s, then 2 s, 4 s, ...; on Linux >= 6.7 the first
/// `net.ipv4.tcp_syn_linear_timeouts` retransmits come 1 s apart) and then
/// fails with `ETIMEDOUT`. Returns the connected stream, or the error with
/// the failed socket's `TCP_INFO`.
pub fn connect_with_syn_retries(
    to: SocketAddrV4,
    syn_retries: i32,
) -> Result<TcpStream, ConnectFailure> {
    let failed = |info| ConnectFailure {
        error: std::io::Error::last_os_error(),
        info,
    };
    // SAFETY: plain socket/setsockopt/connect calls on a descriptor this
    // function owns (wrapped in an OwnedFd at once, so it is closed on
    // every path); the sockaddr_in is fully initialised.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(failed(None));
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let r = libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&syn_retries as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
        if r != 0 {
            return Err(failed(None));
        }
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*to.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // Non-blocking, so the socket is still as the kernel left it when
        // the connect fails (a blocking connect that fails resets it,
        // TCP_INFO and all, with tcp_disconnect).
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) != 0 {
            return Err(failed(None));
        }
        let r = libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if r != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(ConnectFailure {
                    error,
                    info: Some(Box::new(tcp_info(&fd))),
                });
            }
            // The kernel's own SYN budget ends the wait.
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            while libc::poll(&mut pfd, 1, -1) < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(ConnectFailure {
                        error: e,
                        info: Some(Box::new(tcp_info(&fd))),
                    });
                }
            }
            let info = Box::new(tcp_info(&fd));
            let mut so_error: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let r = libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut so_error as *mut libc::c_int).cast(),
                &mut len,
            );
            if r != 0 {
                return Err(failed(Some(info)));
            }
            if so_error != 0 {
                return Err(ConnectFailure {
                    error: std::io::Error::from_raw_os_error(so_error),
                    info: Some(info),
                });
            }
        }
        if libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) != 0 {
            return Err(failed(None));
        }
        Ok(TcpStream::from(fd))
    }
}

/// Send `n` bytes over `c` while a thread reads them all from its peer
/// `srv`; panics unless exactly `n` arrive.
pub fn send_all(c: &mut TcpStream, srv: &mut TcpStream, n: usize) {
    use std::io::{Read as _, Write as _};
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < n {
                match srv.read(&mut buf).expect("server read") {
                    0 => break,
                    k => got += k,
                }
            }
            got
        });
        let chunk = vec![0xa5u8; 1 << 16];
        let mut sent = 0;
        while sent < n {
            let k = (n - sent).min(chunk.len());
            c.write_all(&chunk[..k]).expect("client write");
            sent += k;
        }
        assert_eq!(reader.join().expect("reader"), n);
    });
}
