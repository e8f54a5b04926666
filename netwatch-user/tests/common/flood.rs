//! A hostile flood on loopback, written as raw IPv4 packets (IP_HDRINCL)
//! from this process in a tight loop: forged DNS queries (UDP to port 53,
//! random 60-character labels under many parent domains) and TCP SYNs to
//! closed ports from many forged `127.x.y.z` sources. Shared by the flood
//! test (`tests/hostile_floods.rs`) and the RSS bench
//! (`examples/flood_rss.rs`). Test and bench code only: never built into
//! the agent. Sends nothing anywhere but `127.0.0.1` (run it in a network
//! namespace of its own).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netwatch::health::icmp::checksum;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// DNS queries, `per_parent` consecutive ones under each parent domain.
    pub dns_queries: u32,
    pub per_parent: u32,
    /// SYN sources: the first `scanners` send `scan_ports` SYNs each (to
    /// distinct ports), the others one each.
    pub syn_sources: u32,
    pub scanners: u32,
    pub scan_ports: u16,
    /// Packets per second at most, about (the sender sleeps between
    /// bursts of 500).
    pub rate_pps: u32,
    /// Packets between two calls of the sender's `after_batch` (which may
    /// wait for the agent to have seen them).
    pub batch: u32,
}

impl Plan {
    /// The issue's flood: 200,000 DNS queries under 100,000 parent
    /// domains; 100,000 SYNs from 50,000 sources (2,500 of them scanning
    /// 21 ports each, 47,500 sending one SYN).
    pub const ISSUE: Plan = Plan {
        dns_queries: 200_000,
        per_parent: 2,
        syn_sources: 50_000,
        scanners: 2_500,
        scan_ports: 21,
        rate_pps: 30_000,
        batch: 9_000,
    };

    pub fn parents(&self) -> u32 {
        self.dns_queries.div_ceil(self.per_parent)
    }

    pub fn syns(&self) -> u32 {
        self.scanners * u32::from(self.scan_ports) + (self.syn_sources - self.scanners)
    }
}

/// What was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub dns: u32,
    pub syns: u32,
    pub took: Duration,
}

/// A 60-character label that looks random (xorshift from `i`).
pub fn label(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..60)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize] as char
        })
        .collect()
}

/// The parent domain of query `q`: `p000123.com`.
pub fn parent(plan: &Plan, q: u32) -> String {
    format!("p{:06}.com", q / plan.per_parent)
}

/// Forged source number `s`: 127.10.x.y.
pub fn source(s: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 10, (s >> 8) as u8, (s & 0xff) as u8)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// The checksum of a UDP or TCP segment: over the IPv4 pseudo-header
/// (addresses, protocol, length) and the segment.
fn segment_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut all = Vec::with_capacity(12 + segment.len());
    all.extend_from_slice(&src.octets());
    all.extend_from_slice(&dst.octets());
    all.extend_from_slice(&[0, proto]);
    all.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    all.extend_from_slice(segment);
    checksum(&all)
}

/// One DNS query (id `id`, name `name`, type A) from `src:sport` to
/// `127.0.0.1:53`.
pub fn dns_packet(src: Ipv4Addr, sport: u16, id: u16, name: &str) -> Vec<u8> {
    let mut dns = Vec::with_capacity(100);
    dns.extend_from_slice(&id.to_be_bytes());
    dns.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for l in name.split('.') {
        dns.push(l.len() as u8);
        dns.extend_from_slice(l.as_bytes());
    }
    dns.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut udp = Vec::with_capacity(8 + dns.len());
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&53u16.to_be_bytes());
    udp.extend_from_slice(&((8 + dns.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&dns);
    let dst = Ipv4Addr::LOCALHOST;
    let c = segment_checksum(src, dst, 17, &udp);
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    ipv4(src, dst, 17, &udp)
}

/// One SYN from `src:sport` to `127.0.0.1:dport`.
pub fn syn_packet(src: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let dst = Ipv4Addr::LOCALHOST;
    let c = segment_checksum(src, dst, 6, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ipv4(src, dst, 6, &tcp)
}

/// A raw IPv4 socket that sends whole packets (IPPROTO_RAW implies
/// IP_HDRINCL). Needs root.
pub struct RawSender(i32);

impl RawSender {
    pub fn open() -> std::io::Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Send one packet to the destination its header names (127.0.0.1).
    pub fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        loop {
            // SAFETY: the buffer and address outlive the call; sizes match.
            let n = unsafe {
                libc::sendto(
                    self.0,
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                _ => return Err(e),
            }
        }
    }
}

impl Drop for RawSender {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Send the whole plan: two DNS queries, then one SYN, and so on, paced
/// at about `plan.rate_pps`, calling `after_batch` every `plan.batch`
/// packets and at the end. A scanner's SYNs are consecutive.
pub fn run(plan: &Plan, after_batch: &mut dyn FnMut(&Sent)) -> std::io::Result<Sent> {
    let raw = RawSender::open()?;
    let started = Instant::now();
    let total = plan.dns_queries + plan.syns();
    // (source, port) of every SYN, in order.
    let mut syns = (0..plan.syn_sources).flat_map(|s| {
        let ports = if s < plan.scanners {
            plan.scan_ports
        } else {
            1
        };
        (0..ports).map(move |k| {
            let port = if s < plan.scanners {
                1_000 + k
            } else {
                2_000 + (s % 1_000) as u16
            };
            (s, port)
        })
    });
    let mut sent = Sent::default();
    let mut n = 0u32;
    while n < total {
        let want_dns = sent.dns < plan.dns_queries
            && (sent.syns >= plan.syns() || sent.dns < 2 * (sent.syns + 1));
        if want_dns {
            let q = sent.dns;
            let name = format!("{}.{}", label(u64::from(q)), parent(plan, q));
            let sport = 10_000 + (q % 50_000) as u16;
            raw.send(&dns_packet(Ipv4Addr::LOCALHOST, sport, q as u16, &name))?;
            sent.dns += 1;
        } else if let Some((s, port)) = syns.next() {
            let sport = 40_000 + (sent.syns % 20_000) as u16;
            raw.send(&syn_packet(
                source(s),
                sport,
                port,
                sent.syns.wrapping_mul(2_654_435_761),
            ))?;
            sent.syns += 1;
        } else {
            break;
        }
        n += 1;
        if n.is_multiple_of(plan.batch) {
            after_batch(&sent);
        }
        if n.is_multiple_of(500) {
            let due = Duration::from_secs_f64(f64::from(n) / f64::from(plan.rate_pps));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    after_batch(&sent);
    sent.took = started.elapsed();
    Ok(sent)
}

/// The agent's (VmHWM, VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Run `f` on a thread of its own in a new network namespace, its loopback
/// up: processes and threads it starts are in that namespace too, and the
/// namespace goes when the last of them ends. Needs root.
pub fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let t = std::thread::spawn(move || {
        // SAFETY: unshare(2) moves only this thread into a new namespace.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "unshare(CLONE_NEWNET): {} (needs root)",
            std::io::Error::last_os_error()
        );
        let st = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("running ip(8)");
        assert!(st.success(), "ip link set lo up: {st}");
        f()
    });
    t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}
