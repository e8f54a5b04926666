//! The wire JSON (netwatch-common `wire`): a Snapshot, an IngestEnvelope or
//! an IngestRequest as a peer writes it parses, serialises, and parses back
//! to JSON that serialises identically (the first byte picks the type).
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch_common::wire::{IngestEnvelope, IngestRequest, Snapshot};
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(data: &[u8]) {
    let Ok(v) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let json = serde_json::to_vec(&v).expect("a parsed value serialises");
    let back: T = serde_json::from_slice(&json).expect("its own JSON parses");
    let again = serde_json::to_vec(&back).expect("serialises");
    assert_eq!(
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(&json),
        "{back:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => round_trip::<Snapshot>(rest),
        1 => round_trip::<IngestEnvelope>(rest),
        _ => round_trip::<IngestRequest>(rest),
    }
});
