//! `lsof -F` field output (source::macos::lsof) and its `\xNN`-escaped
//! command names: never panics, every line lands in one bucket.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::source::macos::lsof::{decode_command, parse_lsof};

fuzz_target!(|data: &[u8]| {
    let out = parse_lsof(data);
    assert!(out.lines.is_consistent(), "{:?}", out.lines);
    assert!(out.sockets.len() <= out.lines.used);
    let _ = decode_command(data);
});
