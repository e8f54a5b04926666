//! The TOML config file (config::parse_file) and its validation into the
//! agent's settings (config::resolve, with default arguments and a key
//! from the environment; key files named by the text are not read).
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::config::{parse_file, resolve, Args};

fuzz_target!(|data: &[u8]| {
    // load_file reads the file with read_to_string: only UTF-8 reaches it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut file = match parse_file(text) {
        Ok(f) => f,
        Err(e) => {
            // The error names a line, never the text of one.
            assert!(!e.is_empty());
            return;
        }
    };
    file.ingest.api_key_file = None;
    let Ok(args) = <Args as clap::Parser>::try_parse_from(["netwatch-agent"]) else {
        return;
    };
    let _ = resolve(&args, Some("fuzz-key"), Some(("fuzz.toml".into(), file)));
});
