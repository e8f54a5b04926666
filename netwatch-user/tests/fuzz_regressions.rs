//! Inputs the fuzz targets (`fuzz/`, `cargo xtask fuzz`) found crashing a
//! parser, fed byte for byte to that parser: each must now give a clear
//! error (or a value) and never panic. The files are the crash inputs as
//! libFuzzer wrote them (`tests/fixtures/fuzz/<target>/`), so the first byte
//! is the target's selector; `cargo xtask test` also runs each through its
//! fuzz target. Pure parsing: no root needed.

use std::panic::{catch_unwind, UnwindSafe};
use std::path::PathBuf;

fn fixture(path: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(path);
    std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// The parser's result, or the test fails saying it panicked.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T + UnwindSafe) -> T {
    catch_unwind(f).unwrap_or_else(|_| panic!("{what} panicked on the fuzz input"))
}

/// `/proc/meminfo` with `M21 39650520989738367 kB`: procfs multiplied the
/// value by 1024 unchecked (overflow panic with overflow checks on, a
/// wrapped total without). Now refused, naming the field.
#[test]
fn meminfo_whose_bytes_overflow_64_bits_is_refused() {
    let input = fixture("proc_files/meminfo-unit-overflow");
    assert_eq!(input[0] % 19, 1, "selector 1 of proc_files: parse_meminfo");
    let text = String::from_utf8_lossy(&input[1..]).into_owned();
    let r = no_panic("parse_meminfo", || {
        netwatch::procinfo::system::parse_meminfo(&text)
    });
    assert_eq!(
        r.err().as_deref(),
        Some("M21 39650520989738367 kB is more bytes than 64 bits hold")
    );
}

/// An ingest envelope whose `cpu_usage_pct` is `1e89`: serde_json's default
/// float parsing read `1e+89` back one unit in the last place off
/// (`1.0000000000000001e+89`), so a snapshot kept in the spool (JSON) was
/// not what was written, and JSON → value → JSON did not settle. With
/// `float_roundtrip` every float reads back exactly.
#[test]
fn wire_json_floats_read_back_exactly() {
    use netwatch_common::wire::{IngestEnvelope, Snapshot};
    let input = fixture("wire_json/float-1e89-not-read-back-exactly");
    assert_eq!(input[0] % 3, 1, "selector 1 of wire_json: IngestEnvelope");
    let env: IngestEnvelope = serde_json::from_slice(&input[1..]).expect("the input parses");
    let json = serde_json::to_string(&env).expect("serialises");
    let back: IngestEnvelope = serde_json::from_str(&json).expect("its own JSON parses");
    assert_eq!(back, env);
    assert_eq!(serde_json::to_string(&back).expect("serialises"), json);

    // The spool's path: a snapshot written as JSON and read back.
    let snapshot = &env.request.snapshots[0];
    let cpu = snapshot.system.as_ref().and_then(|s| s.cpu_usage_pct);
    assert_eq!(cpu, Some(1e89));
    let record = netwatch::sink::spool::encode(&serde_json::to_vec(snapshot).expect("serialises"));
    let payload = netwatch::sink::spool::decode(&record).expect("a whole record");
    let read: Snapshot = serde_json::from_slice(payload).expect("its own JSON parses");
    assert_eq!(&read, snapshot);
}
