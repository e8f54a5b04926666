//! macOS `netstat -ibn` and `netstat -an -p tcp` (source::macos::netstat),
//! and `netstat -rn` for the health probe's gateway (health::targets).
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::health::targets::parse_netstat_rn;
use netwatch::source::macos::netstat::{parse_netstat_interfaces, parse_netstat_tcp};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 3 {
        0 => {
            let out = parse_netstat_interfaces(&text);
            assert!(out.lines.is_consistent(), "{:?}", out.lines);
            assert_eq!(out.lines.total, text.lines().count());
            assert!(out.interfaces.len() <= out.lines.used);
        }
        1 => {
            let out = parse_netstat_tcp(&text);
            assert!(out.lines.is_consistent(), "{:?}", out.lines);
            assert_eq!(out.lines.total, text.lines().count());
            assert!(out.total() as usize <= out.lines.used);
        }
        _ => {
            let _ = parse_netstat_rn(&text);
        }
    }
});
