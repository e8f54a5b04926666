//! The socket table: every TCP/UDP socket in `/proc/net/{tcp,tcp6,udp,udp6}`
//! (5-tuple, state, inode) joined with its owner (pid, comm) found through
//! `/proc/<pid>/fd` links (`socket:[N]`), and looked up by 5-tuple or, for
//! unconnected UDP, by local port. It reads `/proc`; it never counts bytes
//! and never decides attribution.
//!
//! The tables are those of the reader's network namespace. Addresses are
//! canonical: an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, a dual-stack
//! socket talking IPv4) is stored as the IPv4 address, so a packet's
//! addresses can be looked up as they are on the wire.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use procfs::net::{TcpNetEntries, TcpState, UdpNetEntries, UdpState};
use procfs::process::{FDTarget, ProcessesIter};
use procfs::{FromReadSI, ProcError};

use crate::net::{self, Protocol};

/// Reading the socket table failed as a whole (a single process vanishing
/// mid-scan is not an error; its sockets are just left without owner).
#[derive(Debug, thiserror::Error)]
pub enum SocketTableError {
    /// A `/proc/net/*` table could not be read or parsed.
    #[error("reading socket table {path}: {error}")]
    NetTable { path: PathBuf, error: ProcError },
    /// The process list could not be read at all.
    #[error("listing processes under {path}: {error} (is /proc mounted?)")]
    Processes { path: PathBuf, error: ProcError },
}

/// The process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOwner {
    /// Thread-group id.
    pub pid: u32,
    /// `/proc/<pid>/comm` without its trailing newline (it may contain
    /// spaces, tabs, even newlines, or be empty: it is kept as is).
    pub comm: String,
}

/// One socket from `/proc/net/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    pub protocol: Protocol,
    /// Socket inode; 0 for sockets no file refers to (`TIME_WAIT`, orphans).
    pub inode: u64,
    /// Local endpoint, canonical (IPv4-mapped IPv6 shown as IPv4).
    pub local: SocketAddr,
    /// Remote endpoint; `None` when unconnected (`0.0.0.0:0` / `[::]:0`).
    pub remote: Option<SocketAddr>,
    /// Normalized state: [`tcp_state_name`] for TCP; `ESTABLISHED` (connected)
    /// or `UNCONN` for UDP.
    pub state: &'static str,
    /// Owner; `None` for inode 0, or when no readable process holds the inode.
    /// A socket shared by several processes (inherited across `fork`) is
    /// given to the lowest pid among them.
    pub owner: Option<SocketOwner>,
}

/// Normalized name of a procfs TCP state, from the one table in
/// [`crate::net`] (`TCP_CLOSE` is `UNCONN`, as `ss` says).
pub fn tcp_state_name(state: &TcpState) -> &'static str {
    net::tcp_state_name(state.to_u8()).unwrap_or(net::state::UNKNOWN)
}

/// `a` with an IPv4-mapped IPv6 address turned into the IPv4 address.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Every socket of the namespace with its owner, indexed for packet lookup.
#[derive(Debug, Clone, Default)]
pub struct SocketTable {
    entries: Vec<SocketEntry>,
    /// (protocol, local, remote) → index, for connected sockets.
    by_tuple: HashMap<(Protocol, SocketAddr, SocketAddr), usize>,
    /// (protocol, local port) → indexes of unconnected sockets on that port.
    by_port: HashMap<(Protocol, u16), Vec<usize>>,
    by_inode: HashMap<u64, usize>,
}

impl SocketTable {
    /// Scan the live `/proc`.
    pub fn scan() -> Result<Self, SocketTableError> {
        Self::scan_at(Path::new("/proc"))
    }

    /// Scan a `/proc`-shaped tree at `proc_root` (`net/{tcp,tcp6,udp,udp6}`,
    /// `<pid>/fd/*`, `<pid>/comm`). A missing `tcp6`/`udp6` (IPv6 disabled)
    /// is an empty table; a missing `tcp`/`udp` is an error.
    pub fn scan_at(proc_root: &Path) -> Result<Self, SocketTableError> {
        let mut entries = Vec::new();
        let info = procfs::current_system_info();
        for (file, required) in [("tcp", true), ("tcp6", false)] {
            let path = proc_root.join("net").join(file);
            match TcpNetEntries::from_file(&path, info) {
                Ok(t) => entries.extend(t.0.into_iter().map(|e| SocketEntry {
                    protocol: Protocol::Tcp,
                    inode: e.inode,
                    local: canonical(e.local_address),
                    remote: connected(e.remote_address),
                    state: tcp_state_name(&e.state),
                    owner: None,
                })),
                Err(ProcError::NotFound(_)) if !required => {}
                Err(source) => {
                    return Err(SocketTableError::NetTable {
                        path,
                        error: source,
                    })
                }
            }
        }
        for (file, required) in [("udp", true), ("udp6", false)] {
            let path = proc_root.join("net").join(file);
            match UdpNetEntries::from_file(&path, info) {
                Ok(t) => entries.extend(t.0.into_iter().map(|e| {
                    let remote = connected(e.remote_address);
                    SocketEntry {
                        protocol: Protocol::Udp,
                        inode: e.inode,
                        local: canonical(e.local_address),
                        state: net::udp_state(matches!(
                            (e.state, remote),
                            (UdpState::Established, Some(_))
                        )),
                        remote,
                        owner: None,
                    }
                })),
                Err(ProcError::NotFound(_)) if !required => {}
                Err(source) => {
                    return Err(SocketTableError::NetTable {
                        path,
                        error: source,
                    })
                }
            }
        }

        let wanted: HashSet<u64> = entries
            .iter()
            .map(|e| e.inode)
            .filter(|&i| i != 0)
            .collect();
        let owners = inode_owners(proc_root, &wanted)?;
        for e in &mut entries {
            e.owner = owners.get(&e.inode).cloned();
        }
        Ok(Self::from_entries(entries))
    }

    /// Build a table from entries (addresses are canonicalized here too).
    ///
    /// One socket, one entry: `/proc/net/*` is read a page at a time, and a
    /// table that changes between two reads (sockets opened or closed
    /// meanwhile) lists some entries twice. Later copies of an inode, or of
    /// an inode-0 entry's protocol, tuple and state, are dropped.
    pub fn from_entries(mut entries: Vec<SocketEntry>) -> Self {
        let mut seen_inodes = HashSet::new();
        let mut seen_orphans = HashSet::new();
        entries.retain(|e| {
            if e.inode != 0 {
                seen_inodes.insert(e.inode)
            } else {
                seen_orphans.insert((
                    e.protocol,
                    canonical(e.local),
                    e.remote.map(canonical),
                    e.state,
                ))
            }
        });
        let mut by_tuple = HashMap::new();
        let mut by_port: HashMap<(Protocol, u16), Vec<usize>> = HashMap::new();
        let mut by_inode = HashMap::new();
        for (i, e) in entries.iter_mut().enumerate() {
            e.local = canonical(e.local);
            e.remote = e.remote.map(canonical);
            if e.inode != 0 {
                by_inode.entry(e.inode).or_insert(i);
            }
            match e.remote {
                Some(remote) => {
                    // Two entries with one tuple: a TIME_WAIT (inode 0)
                    // beside a new connection. Keep the live one.
                    let key = (e.protocol, e.local, remote);
                    if !(e.inode == 0 && by_tuple.contains_key(&key)) {
                        by_tuple.insert(key, i);
                    }
                }
                None => by_port
                    .entry((e.protocol, e.local.port()))
                    .or_default()
                    .push(i),
            }
        }
        Self {
            entries,
            by_tuple,
            by_port,
            by_inode,
        }
    }

    /// All sockets, in `/proc/net` order (tcp, tcp6, udp, udp6).
    pub fn entries(&self) -> &[SocketEntry] {
        &self.entries
    }

    /// The socket with this inode.
    pub fn by_inode(&self, inode: u64) -> Option<&SocketEntry> {
        self.by_inode.get(&inode).map(|&i| &self.entries[i])
    }

    /// The socket whose local end is `local` and that talks to `remote`: the
    /// connected socket with exactly this 5-tuple or, for UDP, the
    /// unconnected socket bound to `local` (preferring one bound to exactly
    /// `local`'s address over a wildcard of the same family over an IPv6
    /// wildcard, which also receives IPv4 unless `IPV6_V6ONLY`). Of several
    /// sockets bound alike (`SO_REUSEPORT`) the first is returned: which one
    /// the kernel picked is not visible in `/proc`.
    pub fn lookup(
        &self,
        protocol: Protocol,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Option<&SocketEntry> {
        let (local, remote) = (canonical(local), canonical(remote));
        if let Some(&i) = self.by_tuple.get(&(protocol, local, remote)) {
            return Some(&self.entries[i]);
        }
        if protocol != Protocol::Udp {
            return None;
        }
        self.unconnected(protocol, local)
    }

    /// The unconnected socket of `protocol` bound to `local` (see [`Self::lookup`]).
    pub fn unconnected(&self, protocol: Protocol, local: SocketAddr) -> Option<&SocketEntry> {
        let local = canonical(local);
        let candidates = self.by_port.get(&(protocol, local.port()))?;
        let rank = |e: &SocketEntry| -> Option<u8> {
            let ip = e.local.ip();
            if ip == local.ip() {
                Some(0)
            } else if ip.is_unspecified() && ip.is_ipv4() == local.ip().is_ipv4() {
                Some(1)
            } else if ip == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
                Some(2)
            } else {
                None
            }
        };
        candidates
            .iter()
            .map(|&i| &self.entries[i])
            .filter_map(|e| rank(e).map(|r| (r, e)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, e)| e)
    }
}

/// `None` for the all-zero remote of an unconnected socket.
fn connected(remote: SocketAddr) -> Option<SocketAddr> {
    if remote.port() == 0 && remote.ip().is_unspecified() {
        None
    } else {
        Some(canonical(remote))
    }
}

/// Owners of the `wanted` socket inodes, from `<root>/<pid>/fd/*` links and
/// `<root>/<pid>/comm`. Processes that vanish or cannot be read mid-scan are
/// skipped.
fn inode_owners(
    proc_root: &Path,
    wanted: &HashSet<u64>,
) -> Result<HashMap<u64, SocketOwner>, SocketTableError> {
    let mut pid_of: HashMap<u64, u32> = HashMap::new();
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let processes: ProcessesIter =
        procfs::process::all_processes_with_root(proc_root).map_err(|source| {
            SocketTableError::Processes {
                path: proc_root.to_path_buf(),
                error: source,
            }
        })?;
    for process in processes.flatten() {
        let Ok(pid) = u32::try_from(process.pid) else {
            continue;
        };
        // A process that exited (or that we may not read) has no fds for us.
        let Ok(fds) = process.fd() else { continue };
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                if wanted.contains(&inode) {
                    pid_of
                        .entry(inode)
                        .and_modify(|p| *p = (*p).min(pid))
                        .or_insert(pid);
                }
            }
        }
    }
    let mut comms: HashMap<u32, Option<String>> = HashMap::new();
    let mut owners = HashMap::with_capacity(pid_of.len());
    for (inode, pid) in pid_of {
        let comm = comms
            .entry(pid)
            .or_insert_with(|| read_comm(proc_root, pid))
            .clone();
        // No comm: the process exited between the fd scan and now.
        if let Some(comm) = comm {
            owners.insert(inode, SocketOwner { pid, comm });
        }
    }
    Ok(owners)
}

/// `<root>/<pid>/comm` without the one trailing newline the kernel adds.
fn read_comm(proc_root: &Path, pid: u32) -> Option<String> {
    let raw = std::fs::read(proc_root.join(pid.to_string()).join("comm")).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(raw).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    const TCP_HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    const UDP_HEADER: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n";

    /// `a.b.c.d:port` in `/proc/net/tcp` hex (host byte order of the IP word).
    fn hex4(ip: [u8; 4], port: u16) -> String {
        format!("{:08X}:{:04X}", u32::from_ne_bytes(ip), port)
    }

    /// An IPv6 address in `/proc/net/tcp6` hex (four host-order words).
    fn hex6(ip: std::net::Ipv6Addr, port: u16) -> String {
        let o = ip.octets();
        let mut s = String::new();
        for w in o.chunks(4) {
            s.push_str(&format!(
                "{:08X}",
                u32::from_ne_bytes([w[0], w[1], w[2], w[3]])
            ));
        }
        format!("{s}:{port:04X}")
    }

    fn line(sl: u32, local: &str, remote: &str, st: u8, inode: u64) -> String {
        format!("{sl:4}: {local} {remote} {st:02X} 00000000:00000000 00:00000000 00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n")
    }

    struct FakeProc(tempfile::TempDir);

    impl FakeProc {
        fn new() -> Self {
            let d = tempfile::tempdir().unwrap();
            fs::create_dir(d.path().join("net")).unwrap();
            Self(d)
        }
        fn net(&self, file: &str, header: &str, lines: &[String]) {
            fs::write(
                self.0.path().join("net").join(file),
                format!("{header}{}", lines.concat()),
            )
            .unwrap();
        }
        fn process(&self, pid: u32, comm: &[u8], socket_inodes: &[u64]) {
            let dir = self.0.path().join(pid.to_string());
            fs::create_dir_all(dir.join("fd")).unwrap();
            fs::write(dir.join("comm"), comm).unwrap();
            symlink("/dev/null", dir.join("fd").join("0")).unwrap();
            for (n, inode) in socket_inodes.iter().enumerate() {
                symlink(
                    format!("socket:[{inode}]"),
                    dir.join("fd").join((n + 3).to_string()),
                )
                .unwrap();
            }
        }
    }

    /// A table read while it changed lists an entry twice (the kernel's
    /// page-at-a-time walk): each socket comes out once, and a TIME_WAIT
    /// beside a live connection of the same tuple is still kept apart.
    #[test]
    fn an_entry_listed_twice_is_one_socket() {
        let p = FakeProc::new();
        let lo = [127, 0, 0, 1];
        let established = line(1, &hex4(lo, 8080), &hex4(lo, 40000), 0x01, 102);
        let time_wait = line(2, &hex4(lo, 40001), &hex4(lo, 8080), 0x06, 0);
        p.net(
            "tcp",
            TCP_HEADER,
            &[
                line(0, &hex4(lo, 8080), &hex4([0; 4], 0), 0x0A, 100),
                established.clone(),
                established.clone(),
                time_wait.clone(),
                established,
                time_wait,
                line(3, &hex4(lo, 40000), &hex4(lo, 8080), 0x06, 0),
            ],
        );
        p.net("udp", UDP_HEADER, &[]);
        p.process(10, b"server\n", &[100, 102]);
        let t = SocketTable::scan_at(p.0.path()).unwrap();
        let got: Vec<(u64, String, Option<String>, &str)> = t
            .entries()
            .iter()
            .map(|e| {
                (
                    e.inode,
                    e.local.to_string(),
                    e.remote.map(|r| r.to_string()),
                    e.state,
                )
            })
            .collect();
        let s = |x: &str| x.to_string();
        assert_eq!(
            got,
            [
                (100, s("127.0.0.1:8080"), None, "LISTEN"),
                (102, s("127.0.0.1:8080"), Some(s("127.0.0.1:40000")), "ESTABLISHED"),
                (0, s("127.0.0.1:40001"), Some(s("127.0.0.1:8080")), "TIME_WAIT"),
                (0, s("127.0.0.1:40000"), Some(s("127.0.0.1:8080")), "TIME_WAIT"),
            ]
        );
    }

    #[test]
    fn scan_joins_sockets_to_owners_and_looks_them_up() {
        let p = FakeProc::new();
        let lo = [127, 0, 0, 1];
        p.net(
            "tcp",
            TCP_HEADER,
            &[
                line(0, &hex4(lo, 8080), &hex4([0; 4], 0), 0x0A, 100),
                line(1, &hex4(lo, 40000), &hex4(lo, 8080), 0x01, 101),
                line(2, &hex4(lo, 8080), &hex4(lo, 40000), 0x01, 102),
                line(3, &hex4(lo, 40001), &hex4(lo, 8080), 0x06, 0),
            ],
        );
        let mapped: std::net::Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
        p.net(
            "tcp6",
            TCP_HEADER,
            &[line(
                0,
                &hex6(mapped, 9000),
                &hex6(mapped, 50000),
                0x01,
                103,
            )],
        );
        p.net(
            "udp",
            UDP_HEADER,
            &[
                line(0, &hex4([0; 4], 53), &hex4([0; 4], 0), 0x07, 200),
                line(1, &hex4(lo, 53), &hex4([0; 4], 0), 0x07, 201),
                line(2, &hex4(lo, 5000), &hex4(lo, 6000), 0x01, 202),
            ],
        );
        // no udp6: IPv6 disabled is an empty table, not an error
        p.process(10, b"server\n", &[100, 102, 201]);
        p.process(11, b"nl\nname\n", &[101, 103]);
        p.process(12, b" lead space\n", &[200, 202]);
        // A forked child sharing the listener: the lowest pid keeps it.
        p.process(13, b"child\n", &[100]);
        // A process whose fd dir cannot be read is skipped.
        fs::create_dir(p.0.path().join("14")).unwrap();

        let t = SocketTable::scan_at(p.0.path()).unwrap();
        assert_eq!(t.entries().len(), 8);
        let owner = |e: &SocketEntry| e.owner.as_ref().map(|o| (o.pid, o.comm.clone()));

        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let client = t.lookup(Protocol::Tcp, a, b).unwrap();
        assert_eq!((client.inode, client.state), (101, "ESTABLISHED"));
        assert_eq!(owner(client), Some((11, "nl\nname".into())));
        let server = t.lookup(Protocol::Tcp, b, a).unwrap();
        assert_eq!(owner(server), Some((10, "server".into())));
        assert_eq!(owner(t.by_inode(100).unwrap()), Some((10, "server".into())));
        assert_eq!(t.by_inode(100).unwrap().state, "LISTEN");
        // TCP never falls back to a listener by port.
        assert!(t
            .lookup(Protocol::Tcp, b, "127.0.0.1:1".parse().unwrap())
            .is_none());
        // TIME_WAIT has no inode and no owner.
        let tw = t
            .lookup(Protocol::Tcp, "127.0.0.1:40001".parse().unwrap(), b)
            .unwrap();
        assert_eq!(
            (tw.inode, tw.state, tw.owner.clone()),
            (0, "TIME_WAIT", None)
        );
        // Dual-stack socket talking IPv4: found by the IPv4 addresses.
        let ds = t
            .lookup(
                Protocol::Tcp,
                "127.0.0.1:9000".parse().unwrap(),
                "127.0.0.1:50000".parse().unwrap(),
            )
            .unwrap();
        assert_eq!(ds.inode, 103);
        assert_eq!(ds.local, "127.0.0.1:9000".parse::<SocketAddr>().unwrap());

        // UDP: exact bind beats the wildcard, the wildcard takes the rest.
        let any_peer: SocketAddr = "127.0.0.1:33333".parse().unwrap();
        let u = t
            .lookup(Protocol::Udp, "127.0.0.1:53".parse().unwrap(), any_peer)
            .unwrap();
        assert_eq!((u.inode, u.state), (201, "UNCONN"));
        let u = t
            .lookup(Protocol::Udp, "10.1.2.3:53".parse().unwrap(), any_peer)
            .unwrap();
        assert_eq!(u.inode, 200);
        assert_eq!(owner(u), Some((12, " lead space".into())));
        let u = t
            .lookup(
                Protocol::Udp,
                "127.0.0.1:5000".parse().unwrap(),
                "127.0.0.1:6000".parse().unwrap(),
            )
            .unwrap();
        assert_eq!((u.inode, u.state), (202, "ESTABLISHED"));
        assert!(t
            .lookup(Protocol::Udp, "127.0.0.1:5001".parse().unwrap(), any_peer)
            .is_none());
    }

    #[test]
    fn ipv6_wildcard_receives_ipv4_but_ranks_after_ipv4_wildcard() {
        let e = |inode, local: &str| SocketEntry {
            protocol: Protocol::Udp,
            inode,
            local: local.parse().unwrap(),
            remote: None,
            state: "UNCONN",
            owner: None,
        };
        let t = SocketTable::from_entries(vec![e(1, "[::]:53"), e(2, "0.0.0.0:53")]);
        let peer: SocketAddr = "10.0.0.9:1000".parse().unwrap();
        assert_eq!(
            t.unconnected(Protocol::Udp, "10.0.0.1:53".parse().unwrap())
                .unwrap()
                .inode,
            2
        );
        assert_eq!(
            t.lookup(Protocol::Udp, "[fe80::1]:53".parse().unwrap(), peer)
                .unwrap()
                .inode,
            1
        );
        let t = SocketTable::from_entries(vec![e(1, "[::]:53")]);
        assert_eq!(
            t.lookup(Protocol::Udp, "10.0.0.1:53".parse().unwrap(), peer)
                .unwrap()
                .inode,
            1
        );
    }

    #[test]
    fn missing_ipv4_table_is_an_error_that_names_the_file() {
        let p = FakeProc::new();
        let err = SocketTable::scan_at(p.0.path()).unwrap_err().to_string();
        assert!(err.contains("net/tcp"), "{err}");
    }

    #[test]
    fn live_scan_finds_our_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = SocketTable::scan().unwrap();
        let e = t
            .entries()
            .iter()
            .find(|e| e.protocol == Protocol::Tcp && e.local == addr && e.state == "LISTEN")
            .expect("our listener in /proc/net/tcp");
        let o = e.owner.as_ref().expect("owner of our own socket");
        assert_eq!(o.pid, std::process::id());
    }
}
