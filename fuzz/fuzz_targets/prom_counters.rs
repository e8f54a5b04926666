//! The Prometheus counters file kept beside the pin baseline
//! (sink::prometheus::SavedCounters): text as found on disk, and bodies
//! given a valid header and CRC (so the fuzzer reaches the JSON). A file
//! that decodes encodes to a file that decodes to the same counters.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::sink::prometheus::SavedCounters;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    // The agent reads the file with read_to_string.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let file = if which & 1 == 0 {
        text.to_string()
    } else {
        format!(
            "netwatch-prometheus-counters 1 {:08x}\n{text}",
            crc32fast::hash(text.as_bytes())
        )
    };
    let instance = if which & 2 == 0 {
        "pins-1".to_string()
    } else {
        // The instance the body names, so the fuzzer gets past the comparison.
        serde_json::from_str::<serde_json::Value>(file.split_once('\n').map_or("", |x| x.1))
            .ok()
            .and_then(|v| {
                v.get("instance")
                    .and_then(|i| i.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    };
    let Ok(saved) = SavedCounters::decode(&file, &instance) else {
        return;
    };
    let again = saved.encode();
    assert_eq!(
        SavedCounters::decode(&again, &instance).expect("its own file decodes"),
        saved
    );
});
