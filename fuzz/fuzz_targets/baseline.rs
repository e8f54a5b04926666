//! The pin baseline file (source::ebpf::generation): bytes as found on disk,
//! and bodies given a valid magic and CRC (so the fuzzer reaches the
//! sections). A file that decodes encodes back to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::source::ebpf::generation::decode;

const MAGIC: &[u8; 8] = b"NWBASE03";

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    // The instance tag the agent compares: taken from the file itself half
    // of the time, so the fuzzer gets past the comparison.
    let bytes = if which & 1 == 0 {
        rest.to_vec()
    } else {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(rest);
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    };
    let instance = if which & 2 == 0 {
        "pins-1".to_string()
    } else {
        let len = bytes
            .get(8..10)
            .map_or(0, |l| usize::from(u16::from_le_bytes([l[0], l[1]])));
        String::from_utf8_lossy(bytes.get(10..10 + len).unwrap_or_default()).into_owned()
    };
    let Ok(sections) = decode(&bytes, &instance) else {
        return;
    };
    let tag_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    if std::str::from_utf8(&bytes[10..10 + tag_len]).is_ok() && sections.len() < 256 {
        let again = netwatch::fuzzing::encode_baseline(&instance, &sections);
        // Byte-exact, except that any nonzero UDP flag reads back as 1.
        assert_eq!(
            decode(&again, &instance).expect("its own bytes decode"),
            sections
        );
        assert_eq!(again.len(), bytes.len());
    }
});
