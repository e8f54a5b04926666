//! The /proc, /sys and /etc files the agent parses itself (besides procfs),
//! and its API key and CA files: the first byte picks the parser, the rest
//! is the file's text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use netwatch::health::targets::{
    parse_nameservers, parse_netstat_rn, parse_proc_ipv6_route, parse_proc_route,
};
use netwatch::procinfo::{disk, host, interfaces, process, system};
use netwatch::source::ebpf::tcp_events::SendResetFormat;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    // The agent reads these files with read_to_string (invalid UTF-8 is an
    // error there) or decodes them lossily; both reach the parser as &str.
    let text = String::from_utf8_lossy(rest);
    let text = text.as_ref();
    match which % 19 {
        0 => {
            let _ = netwatch::fuzzing::parse_proc_stat(rest);
        }
        1 => {
            let _ = system::parse_meminfo(text);
        }
        2 => {
            let (stats, bad) = disk::parse_diskstats(text);
            assert!(stats.len() + bad <= text.lines().count());
        }
        3 => {
            let (mounts, bad) = disk::parse_mounts(text);
            assert!(mounts.len() + bad <= text.lines().count());
            let _ = disk::usage_mounts(&mounts);
        }
        4 => {
            let users = process::parse_passwd(text);
            assert!(users.len() <= text.lines().count());
        }
        5 => {
            let _ = netwatch::fuzzing::parse_sockstat_tw(text);
        }
        6 => {
            let _ = netwatch::sink::prometheus::parse_cgroup(text);
        }
        7 => {
            let _ = parse_proc_route(text);
        }
        8 => {
            let _ = parse_proc_ipv6_route(text);
        }
        9 => {
            let _ = parse_nameservers(text);
        }
        10 => {
            let _ = netwatch::privilege::parse_status(text);
        }
        11 => {
            let _ = host::parse_host_id(text);
        }
        12 => {
            let _ = host::pretty_name(text);
        }
        13 => {
            // sysfs operstate and flags, split at the first NUL.
            let (a, b) = text.split_once('\0').unwrap_or((text, ""));
            let _ = interfaces::is_up(Some(a), Some(b));
            let _ = interfaces::is_up(None, Some(a));
        }
        14 => {
            let f = SendResetFormat::parse(text);
            let _ = f.globals();
        }
        15 => {
            let _ = parse_netstat_rn(text);
        }
        17 => {
            // The API key file: a key is one header-safe token, and an error
            // never repeats the text.
            match netwatch::config::ApiKey::new(text) {
                Ok(k) => assert!(
                    !k.expose().is_empty() && k.expose().bytes().all(|b| b.is_ascii_graphic())
                ),
                Err(e) => {
                    // The error is one of the fixed texts, whatever the key
                    // (a key may itself spell part of one, so "does not
                    // contain the key" would be the wrong rule).
                    let fixed = [
                        netwatch::config::ApiKey::new("").err(),
                        netwatch::config::ApiKey::new("a b").err(),
                    ]
                    .map(|e| e.map(|e| e.to_string()));
                    assert!(fixed.contains(&Some(e.to_string())), "{e}");
                }
            }
        }
        18 => {
            // The CA file (`[ingest] ca_file`), PEM.
            let _ = netwatch::sink::ingest::pem_certificates(std::path::Path::new("ca.pem"), rest);
        }
        _ => {
            let _ = process::started_at(
                u64::from_le_bytes(pad(rest, 0)),
                u64::from_le_bytes(pad(rest, 8)),
                u64::from_le_bytes(pad(rest, 16)),
            );
        }
    }
});

fn pad(b: &[u8], at: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (o, v) in out.iter_mut().zip(b.iter().skip(at)) {
        *o = *v;
    }
    out
}
