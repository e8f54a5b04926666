//! `ss -tinpeHOM` output (source::ss::parse): never panics, every record is
//! either a socket or a counted skip, and the skip reasons are bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::source::ss::{parse_ss, MAX_SKIP_REASONS};

fuzz_target!(|data: &[u8]| {
    // The source reads ss's stdout as bytes and decodes it lossily.
    let text = String::from_utf8_lossy(data);
    let out = parse_ss(&text);
    assert!(out.first_skips.len() <= MAX_SKIP_REASONS);
    assert!(out.first_skips.len() as u64 <= out.skipped);
    // At most one socket or skip per line.
    let lines = text.lines().count() as u64;
    assert!(out.sockets.len() as u64 + out.skipped <= lines.max(1));
});
