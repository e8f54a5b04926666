//! The DNS probe: one real query over UDP to the DNS server, timed until
//! its answer (any RCODE: the server answered). It sends nothing but the
//! query and reads nothing but answers from that server with its id.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Query type NS: a root NS query is answered by every recursive resolver.
pub const QTYPE_NS: u16 = 2;

/// A standard query (RD set) for `name` (`.` or empty: the root) of `qtype`, class IN.
/// `None` when a label is empty or longer than 63 bytes, or the name longer than 255.
pub fn query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut p = Vec::with_capacity(32 + name.len());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let trimmed = name.trim_end_matches('.');
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return None;
            }
            p.push(label.len() as u8);
            p.extend_from_slice(label.as_bytes());
        }
    }
    p.push(0);
    if p.len() - 12 > 255 {
        return None;
    }
    p.extend_from_slice(&qtype.to_be_bytes());
    p.extend_from_slice(&1u16.to_be_bytes());
    Some(p)
}

/// Whether `msg` is a response (QR set) with transaction id `id`.
pub fn is_answer(msg: &[u8], id: u16) -> bool {
    msg.len() >= 12 && msg[..2] == id.to_be_bytes() && msg[2] & 0x80 != 0
}

/// Send one query for `name` to `server` and wait up to `timeout` for
/// its answer: the round trip, or `None` (no answer, or the query could
/// not be sent: the server is unreachable).
pub fn probe(
    server: SocketAddr,
    name: &str,
    timeout: Duration,
) -> std::io::Result<Option<Duration>> {
    let bind: SocketAddr = if server.is_ipv6() {
        "[::]:0".parse().map_err(std::io::Error::other)?
    } else {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(server)?;
    let id = fastrand::u16(..);
    let q = query(id, name, QTYPE_NS).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a DNS name"),
        )
    })?;
    let sent = Instant::now();
    if sock.send(&q).is_err() {
        return Ok(None);
    }
    let deadline = sent + timeout;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match sock.recv(&mut buf) {
            Ok(n) if is_answer(&buf[..n], id) => return Ok(Some(sent.elapsed())),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            // ICMP port unreachable and the like: the server did not answer.
            Err(_) => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_named_queries_encode() {
        let q = query(0xabcd, ".", QTYPE_NS).unwrap();
        assert_eq!(
            q,
            vec![0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1]
        );
        let q = query(1, "example.com", 1).unwrap();
        assert_eq!(&q[12..25], b"\x07example\x03com\x00");
        assert!(query(1, "a..b", 1).is_none());
        assert!(query(1, &"x".repeat(64), 1).is_none());
        let long = vec!["a".repeat(60); 5].join(".");
        assert!(query(1, &long, 1).is_none());
    }

    #[test]
    fn answers_need_the_id_and_qr() {
        let mut a = query(7, ".", QTYPE_NS).unwrap();
        assert!(!is_answer(&a, 7), "a query is not an answer");
        a[2] |= 0x80;
        assert!(is_answer(&a, 7));
        assert!(!is_answer(&a, 8));
        assert!(!is_answer(&a[..11], 7));
    }
}
