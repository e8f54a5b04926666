//! `nettop -L 1 -x -J …` CSV and column output (source::macos::nettop):
//! never panics, every line lands in one bucket.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::source::macos::nettop::parse_nettop;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let out = parse_nettop(&text);
    assert!(out.lines.is_consistent(), "{:?}", out.lines);
    assert_eq!(out.lines.total, text.lines().count());
});
