//! DNS messages: captured port-53 payloads (source::pcap::dns, and the base
//! domain the snapshot and the tunnel detector group them by) and the
//! health probe's answers (health::dns_probe); ICMP echo replies of the
//! health probe (health::icmp).
#![no_main]
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netwatch::health::{dns_probe, icmp};
use netwatch::snapshot::dns::base_domain;
use netwatch::source::pcap::dns::{event, parse, parse_header, MAX_POINTERS};

fuzz_target!(|data: &[u8]| {
    let _ = MAX_POINTERS;
    if let Ok(h) = parse_header(data) {
        let m = parse(data);
        if let Ok(m) = &m {
            assert_eq!(m.header, h);
            if let Some(q) = &m.question {
                // 255 bytes on the wire, each shown as at most `\DDD`.
                assert!(q.name.len() <= 4 * 255, "{}", q.name.len());
                assert!(q.name.is_ascii());
                let b = base_domain(&q.name);
                assert!(b.len() <= q.name.len() + 1);
            }
        }
        let src = "10.0.0.1:5353".parse().unwrap();
        let dst = "10.0.0.2:53".parse().unwrap();
        let (e, malformed) = event(data, src, dst, Duration::ZERO, Duration::ZERO);
        assert!(e.is_some());
        if !h.is_response {
            assert_eq!(malformed, m.is_err());
        }
        assert_eq!(dns_probe::is_answer(data, h.id), h.is_response);
    } else {
        assert!(parse(data).is_err());
    }
    let token = *b"netwatch";
    for v6 in [false, true] {
        let _ = icmp::is_reply(data, v6, None, 1, &token);
        let _ = icmp::is_reply(data, v6, Some(7), 1, &token);
    }
    let _ = icmp::checksum(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = base_domain(s);
    }
});
