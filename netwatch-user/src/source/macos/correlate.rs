//! Joins one lsof listing with one nettop listing into [`SocketSample`]s:
//! lsof says which process holds which socket, nettop says how many bytes
//! each flow moved. It never runs a tool and never builds wire rows.
//!
//! The two meet on the socket's 5-tuple (protocol, local, remote) and the
//! pid. lsof lists a socket once per descriptor and once per process holding
//! it (a dup'd descriptor, a socket inherited across fork), nettop once,
//! under the process it charges. So: a socket's bytes go with the pid nettop
//! names; an lsof entry for the same 5-tuple under another pid is a socket
//! row with no bytes of its own; duplicate descriptors of one socket in one
//! process are one socket. A nettop flow lsof did not list (a socket opened
//! between the two runs) is a socket all the same, named after lsof's name
//! for that pid when lsof has one (nettop cuts names short).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::lsof::LsofOutput;
use super::nettop::NettopOutput;
use crate::source::{CountOrigin, Protocol, SocketId, SocketSample};

/// A socket's identity across reads: see [`socket_id`].
type Key = (Protocol, SocketAddr, Option<SocketAddr>, u32);

/// The stable [`SocketId`] of a macOS socket: FNV-1a 64 of its 5-tuple in
/// `primary`, the owning pid in `secondary`.
///
/// Why this: the 5-tuple is the only identity lsof and nettop share (neither
/// prints an inode or a kernel socket address that the other prints), and a
/// TCP connection keeps its 5-tuple for life, so the id is stable across
/// reads for as long as the socket lives. The pid keeps apart sockets that
/// share a 5-tuple in different processes (`SO_REUSEPORT` listeners, one
/// inherited socket listed under parent and child). FNV rather than std's
/// `DefaultHasher`: the same socket gets the same id in every run and build,
/// so ids can be compared in tests and logs. A reused 5-tuple (a new socket
/// on a port just freed) gets the same id; attribution already treats a
/// counter that went backwards as a new socket.
pub fn socket_id(
    protocol: Protocol,
    local: SocketAddr,
    remote: Option<SocketAddr>,
    pid: u32,
) -> SocketId {
    let mut h = Fnv::new();
    h.write(&[match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
    }]);
    endpoint(&mut h, Some(local));
    endpoint(&mut h, remote);
    SocketId {
        primary: h.0,
        secondary: u64::from(pid),
    }
}

fn endpoint(h: &mut Fnv, addr: Option<SocketAddr>) {
    match addr {
        None => h.write(&[0]),
        Some(a) => {
            match a.ip() {
                IpAddr::V4(ip) => {
                    h.write(&[4]);
                    h.write(&ip.octets());
                }
                IpAddr::V6(ip) => {
                    h.write(&[6]);
                    h.write(&ip.octets());
                }
            }
            h.write(&a.port().to_be_bytes());
        }
    }
}

/// FNV-1a, 64-bit.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// nettop's view of one socket (flows with the same key summed).
struct Counted {
    key: Key,
    process_name: String,
    state: String,
    rx_bytes: u64,
    tx_bytes: u64,
    rtt_us: Option<f64>,
    matched: bool,
}

/// Joins lsof and nettop reads into samples, remembering each socket's last
/// counters so that a socket nettop skipped on one read (it lists flows as
/// it walks them; a flow can slip between two runs) keeps its counters
/// instead of dropping to zero, which attribution would take for a new
/// socket and count again in full on the next read.
#[derive(Debug, Default)]
pub struct Correlator {
    last: HashMap<SocketId, (u64, u64)>,
}

impl Correlator {
    pub fn new() -> Self {
        Self::default()
    }

    /// One read's samples: every lsof socket (duplicates merged) and every
    /// nettop flow lsof did not list. Counts are since the socket opened.
    pub fn join(&mut self, lsof: &LsofOutput, nettop: &NettopOutput) -> Vec<SocketSample> {
        let mut counted: Vec<Counted> = Vec::with_capacity(nettop.flows.len());
        let mut index: HashMap<Key, usize> = HashMap::with_capacity(nettop.flows.len());
        for f in &nettop.flows {
            let key = (f.protocol, f.local, f.remote, f.pid);
            match index.get(&key) {
                // Two flows, one 5-tuple, one process: two sockets lsof
                // shows as one (`SO_REUSEPORT` twice in one process).
                Some(&i) => {
                    let c = &mut counted[i];
                    c.rx_bytes = c.rx_bytes.saturating_add(f.rx_bytes);
                    c.tx_bytes = c.tx_bytes.saturating_add(f.tx_bytes);
                    c.rtt_us = c.rtt_us.or(f.rtt_us);
                }
                None => {
                    index.insert(key, counted.len());
                    counted.push(Counted {
                        key,
                        process_name: f.process_name.clone(),
                        state: f.state.clone(),
                        rx_bytes: f.rx_bytes,
                        tx_bytes: f.tx_bytes,
                        rtt_us: f.rtt_us,
                        matched: false,
                    });
                }
            }
        }

        let mut names: HashMap<u32, &str> = HashMap::new();
        let mut samples = Vec::with_capacity(lsof.sockets.len() + counted.len());
        let mut listed: HashSet<Key> = HashSet::with_capacity(lsof.sockets.len());
        for s in &lsof.sockets {
            names.entry(s.pid).or_insert(&s.command);
            let key = (s.protocol, s.local, s.remote, s.pid);
            if !listed.insert(key) {
                continue; // another descriptor of a socket already listed
            }
            let id = socket_id(s.protocol, s.local, s.remote, s.pid);
            let found_at = index.get(&key).copied();
            if let Some(i) = found_at {
                counted[i].matched = true;
            }
            let found = found_at.and_then(|i| counted.get(i));
            let (rx_bytes, tx_bytes) = match found {
                Some(c) => (c.rx_bytes, c.tx_bytes),
                None => self.last.get(&id).copied().unwrap_or((0, 0)),
            };
            let state = match found {
                Some(c) if s.state == super::addr::UNKNOWN_STATE => c.state.clone(),
                _ => s.state.clone(),
            };
            samples.push(sample(
                id,
                key,
                state,
                &s.command,
                rx_bytes,
                tx_bytes,
                found.and_then(|c| c.rtt_us),
            ));
        }
        for c in counted.iter().filter(|c| !c.matched) {
            let (protocol, local, remote, pid) = c.key;
            let id = socket_id(protocol, local, remote, pid);
            let name = names.get(&pid).copied().unwrap_or(&c.process_name);
            samples.push(sample(
                id,
                c.key,
                c.state.clone(),
                name,
                c.rx_bytes,
                c.tx_bytes,
                c.rtt_us,
            ));
        }

        self.last = samples
            .iter()
            .map(|s| (s.id, (s.rx_bytes, s.tx_bytes)))
            .collect();
        samples
    }
}

fn sample(
    id: SocketId,
    key: Key,
    state: String,
    name: &str,
    rx_bytes: u64,
    tx_bytes: u64,
    rtt_us: Option<f64>,
) -> SocketSample {
    let (protocol, local, remote, pid) = key;
    SocketSample {
        id,
        protocol,
        local: Some(local),
        remote,
        state: crate::source::state_name(&state),
        pid: Some(pid),
        comm: Some(name.into()),
        cgroup_id: None,
        rx_bytes,
        tx_bytes,
        rtt_us,
        tcp: None,
        // A polled socket is never known to be gone: nettop's `Closed` and
        // `TimeWait` flows can show up again on the next read.
        closed: false,
        origin: CountOrigin::SinceSocketOpen,
    }
}
