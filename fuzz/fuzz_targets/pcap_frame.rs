//! Captured frames of every link type the pcap source decodes
//! (source::pcap::frame), fed as the capture thread feeds them: decoded,
//! their TCP segments counted per stream (source::pcap::stream), port-53
//! UDP payloads and DNS-over-TCP segments turned into DNS events
//! (source::pcap::dns::DnsReader).
//!
//! Input: one byte picking the link type, then frames, each a 2-byte
//! little-endian captured length, a 2-byte extra original length, and the
//! captured bytes.
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netwatch::procinfo::sockets::canonical;
use netwatch::source::pcap::frame::{decode_captured, LinkType};
use netwatch::source::pcap::stream::Streams;
use netwatch::source::pcap::{dns, FlowKey};
use netwatch::source::Protocol;


fuzz_target!(|data: &[u8]| {
    let Some((&which, mut rest)) = data.split_first() else {
        return;
    };
    let link = LinkType::ALL[usize::from(which) % LinkType::ALL.len()];
    let mut streams = Streams::default();
    let mut reader = dns::DnsReader::new(64);
    let mut at = Duration::from_secs(1000);
    while rest.len() >= 4 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let extra = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        let frame = &rest[..len.min(rest.len())];
        rest = &rest[frame.len()..];
        at += Duration::from_millis(u64::from(which));
        let Ok(p) = decode_captured(link, frame, frame.len() + extra) else {
            continue;
        };
        assert!(p.payload.len() as u64 <= u64::from(p.payload_len));
        assert!(p.payload.len() <= frame.len());
        let (src, dst) = (canonical(p.src), canonical(p.dst));
        let key = FlowKey {
            protocol: p.protocol,
            src,
            dst,
        };
        if let Some(seg) = p.tcp {
            let new = streams.count(key, seg, p.payload_len, at);
            if seg.rst() {
                assert_eq!(new, 0);
            }
        }
        if p.protocol == Protocol::Udp && (src.port() == 53 || dst.port() == 53) {
            let _ = dns::event(p.payload, src, dst, at, at);
        }
        reader.packet(&p, src, dst, at, at);
        assert!(reader.take().len() <= 64);
    }
    streams.expire(at + Duration::from_secs(301));
    assert_eq!(streams.len(), 0);
    reader.expire(at + dns::TCP_IDLE);
    assert!(reader.tcp().is_empty());
});
