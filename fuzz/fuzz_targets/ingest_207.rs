//! The ingest endpoint's HTTP 207 body (sink::ingest reads it as an
//! `IngestResponse`): parse, then serialise and parse back to the same
//! value; the verdict messages go through the log escaper.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch_common::wire::IngestResponse;

fuzz_target!(|data: &[u8]| {
    // The sink reads the body with read_to_string (lossless UTF-8 or empty).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = serde_json::from_str::<IngestResponse>(text) else {
        return;
    };
    let again = serde_json::to_string(&r).expect("an IngestResponse serialises");
    let back: IngestResponse = serde_json::from_str(&again).expect("its own JSON parses");
    assert_eq!(back, r);
    for v in &r.results {
        let shown = netwatch::text::visible(&v.message, 200);
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
    }
});
