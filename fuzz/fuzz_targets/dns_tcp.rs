//! DNS over TCP (source::pcap::dns::TcpDns): segments of two directions
//! of a port-53 connection, in any order, retransmitted, cut short by the
//! snapshot length, with lying length prefixes. Never panics, stays
//! bounded, and reads a stream cut anywhere (without loss) exactly as the
//! same stream in one segment.
//!
//! Input: segments, each a 1-byte flags (bit 7 picks the direction), a
//! 2-byte little-endian signed offset from where the direction's stream
//! has got to, a 1-byte count of bytes not captured, a 1-byte payload
//! length, and the payload.
#![no_main]
use std::net::SocketAddr;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netwatch::source::pcap::dns::{TcpDns, MAX_TCP_DIRECTIONS, TCP_IDLE};
use netwatch::source::pcap::frame::TcpSegment;
use netwatch::source::DnsEvent;

fuzz_target!(|data: &[u8]| {
    let client: SocketAddr = "10.0.0.1:40000".parse().unwrap();
    let server: SocketAddr = "10.0.0.2:53".parse().unwrap();
    let mut t = TcpDns::default();
    let mut whole = TcpDns::default();
    let mut next = [1000u32, 5000u32];
    let mut at = Duration::from_secs(1);
    let mut events: Vec<DnsEvent> = Vec::new();
    // The client's bytes as sent in order without loss, for the
    // one-segment comparison.
    let mut in_order: Vec<u8> = Vec::new();
    let mut clean = true;
    let mut rest = data;
    while rest.len() >= 5 {
        let flags = rest[0];
        let offset = i16::from_le_bytes([rest[1], rest[2]]);
        let missing = u32::from(rest[3]);
        let len = usize::from(rest[4]);
        rest = &rest[5..];
        let payload = &rest[..len.min(rest.len())];
        rest = &rest[payload.len()..];
        let dir = usize::from(flags >> 7);
        let (src, dst) = if dir == 0 {
            (client, server)
        } else {
            (server, client)
        };
        let seq = next[dir].wrapping_add(offset as u32);
        let tcp_flags = flags & 0x17;
        let wire = payload.len() as u32 + missing;
        if dir == 0 {
            if offset == 0 && missing == 0 && tcp_flags & 0x07 == 0 {
                in_order.extend_from_slice(payload);
            } else if offset != 0 || missing != 0 || tcp_flags & 0x07 != 0 {
                clean = false;
            }
        }
        at += Duration::from_millis(1);
        t.segment(
            src,
            dst,
            TcpSegment {
                seq,
                flags: tcp_flags,
            },
            payload,
            wire,
            at,
            at,
            &mut |e, _| events.push(e),
        );
        if offset >= 0 && tcp_flags & 0x02 == 0 {
            next[dir] = seq.wrapping_add(wire);
        }
        assert!(t.len() <= MAX_TCP_DIRECTIONS);
    }
    if clean {
        // The same client stream in one segment gives the same client events.
        let mut once = Vec::new();
        whole.segment(
            client,
            server,
            TcpSegment {
                seq: 1000,
                flags: 0x10,
            },
            &in_order,
            in_order.len() as u32,
            at,
            at,
            &mut |e, _| once.push(e),
        );
        let from_client = |e: &DnsEvent| {
            matches!(e.kind, netwatch::source::DnsEventKind::Query { .. }) && e.client == client
        };
        let split: Vec<_> = events
            .iter()
            .filter(|e| from_client(e))
            .map(|e| e.id)
            .collect();
        let joined: Vec<_> = once
            .iter()
            .filter(|e| from_client(e))
            .map(|e| e.id)
            .collect();
        assert_eq!(split, joined);
    }
    t.expire(at + TCP_IDLE);
    assert!(t.is_empty());
});
