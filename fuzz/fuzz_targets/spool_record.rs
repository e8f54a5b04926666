//! Spool records (sink::spool): the frame as read from a file, and a
//! payload framed with a valid header (so the fuzzer reaches the JSON):
//! decode(encode(p)) == p, and a payload that parses as a Snapshot
//! serialises and parses back to the same Snapshot.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::sink::spool::{decode, encode};
use netwatch_common::wire::Snapshot;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let payload = if which & 1 == 0 {
        // A file as found in the spool directory.
        match decode(rest) {
            Ok(p) => p,
            Err(_) => return,
        }
    } else {
        let framed = encode(rest);
        assert_eq!(decode(&framed).expect("a framed payload decodes"), rest);
        rest
    };
    // What Spool::read does with the payload.
    let Ok(snapshot) = serde_json::from_slice::<Snapshot>(payload) else {
        return;
    };
    let json = serde_json::to_vec(&snapshot).expect("a Snapshot serialises");
    let back: Snapshot = serde_json::from_slice(&json).expect("its own JSON parses");
    assert_eq!(serde_json::to_vec(&back).expect("serialises"), json);
});
