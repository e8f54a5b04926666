//! Every payload in `tests/fixtures/wire/` (the project's copy of the wire
//! payloads NetWatch Cloud publishes) must parse into our types and survive a
//! round trip: value after one serialize/parse cycle == value after two.
#![cfg(feature = "wire")]

use std::path::{Path, PathBuf};

use netwatch_common::wire::{IngestEnvelope, IngestResponse, Snapshot};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

fn wire_dir() -> PathBuf {
    // Inside the repository: a fresh clone must pass on its own.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire")
}

fn read(name: &str) -> String {
    let path = wire_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading wire fixture {}: {e}", path.display()))
}

/// Parse, serialize, parse, serialize; the two serialized values must match,
/// and every field the first parse kept must equal the source's.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(name: &str) -> Value {
    let text = read(name);
    let first: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let v1 = serde_json::to_value(&first).unwrap();
    let second: T = serde_json::from_value(v1.clone()).unwrap();
    assert_eq!(
        first, second,
        "{name}: typed values differ after a round trip"
    );
    let v2 = serde_json::to_value(&second).unwrap();
    assert_eq!(v1, v2, "{name}: JSON differs after a second round trip");
    v1
}

/// Every key the typed value serialized must carry the source's value: no
/// field silently changes meaning or type on the way through.
fn assert_subset(source: &Value, ours: &Value, path: &str) {
    match (source, ours) {
        (Value::Object(s), Value::Object(o)) => {
            for (k, v) in o {
                let sv = s
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} was invented by serialization"));
                assert_subset(sv, v, &format!("{path}.{k}"));
            }
        }
        (Value::Array(s), Value::Array(o)) => {
            assert_eq!(s.len(), o.len(), "{path}: array length changed");
            for (i, (a, b)) in s.iter().zip(o).enumerate() {
                assert_subset(a, b, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a.as_f64(), b.as_f64(), "{path}: number changed")
        }
        _ => assert_eq!(source, ours, "{path}: value changed"),
    }
}

fn source(name: &str) -> Value {
    serde_json::from_str(&read(name)).unwrap()
}

#[test]
fn every_fixture_is_covered() {
    let mut names: Vec<String> = std::fs::read_dir(wire_dir())
        .expect("tests/fixtures/wire holds the wire payloads")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ingest-envelope-v1.json",
            "ingest-response-207.json",
            "snapshot-minimal.json",
            "snapshot-newer-peer.json",
            "snapshot-older-agent.json"
        ],
        "a new wire fixture appeared: add a round-trip test for it"
    );
}

#[test]
fn envelope_v1_round_trips_losslessly() {
    let name = "ingest-envelope-v1.json";
    let ours = round_trip::<IngestEnvelope>(name);
    // Nothing in this payload is unknown to us, so the round trip is lossless.
    assert_eq!(ours, source(name));
    let env: IngestEnvelope = serde_json::from_value(ours).unwrap();
    assert_eq!(env.schema_version, 1);
    assert_eq!(
        env.request.snapshots[0].processes.as_ref().unwrap()[0].pid,
        Some(812)
    );
    let conns = env.request.snapshots[0].connections.as_ref().unwrap();
    assert_eq!(conns[0].tx_bytes, Some(190000));
    assert_eq!(conns[1].pid, None);
    assert_eq!(env.agent_health.queue_depth, 0);
}

#[test]
fn response_207_round_trips_losslessly() {
    let name = "ingest-response-207.json";
    let ours = round_trip::<IngestResponse>(name);
    assert_eq!(ours, source(name));
    let r: IngestResponse = serde_json::from_value(ours).unwrap();
    assert_eq!((r.accepted, r.rejected, r.results[1].status), (2, 1, 422));
}

#[test]
fn minimal_snapshot_round_trips_losslessly() {
    let name = "snapshot-minimal.json";
    let ours = round_trip::<Snapshot>(name);
    assert_eq!(ours, source(name));
}

#[test]
fn older_agent_snapshot_parses() {
    let name = "snapshot-older-agent.json";
    let ours = round_trip::<Snapshot>(name);
    // An older agent sends no rates or history: they stay absent.
    assert_eq!(ours, source(name));
    let s: Snapshot = serde_json::from_value(ours).unwrap();
    assert_eq!(s.interfaces[0].rx_rate, None);
    assert_eq!(s.processes.unwrap()[0].ppid, None);
}

#[test]
fn newer_peer_snapshot_parses_and_drops_unknown_fields() {
    let name = "snapshot-newer-peer.json";
    let ours = round_trip::<Snapshot>(name);
    let src = source(name);
    assert_subset(&src, &ours, "$");
    assert!(ours.get("some_future_field").is_none());
    assert!(ours["processes"][0]
        .get("a_field_from_a_later_schema")
        .is_none());
    assert_eq!(ours["processes"][0]["process_name"], "envoy");
}
