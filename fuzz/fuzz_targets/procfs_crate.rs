//! The /proc files the agent has the procfs crate parse: /proc/net/tcp(6),
//! /proc/net/udp(6), /proc/net/dev, /proc/<pid>/status, /proc/stat and
//! /proc/loadavg. A panic in the crate is a panic in the agent, so each is
//! fuzzed through the same entry point the agent calls.
#![no_main]
use libfuzzer_sys::fuzz_target;
use procfs::{FromBufRead, FromBufReadSI, FromRead};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let si = procfs::ExplicitSystemInfo {
        boot_time_secs: 1_700_000_000,
        ticks_per_second: 100,
        page_size: 4096,
        is_little_endian: cfg!(target_endian = "little"),
    };
    match which % 6 {
        0 => {
            let _ = procfs::net::TcpNetEntries::from_buf_read(rest, &si);
        }
        1 => {
            let _ = procfs::net::UdpNetEntries::from_buf_read(rest, &si);
        }
        2 => {
            let _ = procfs::net::InterfaceDeviceStatus::from_buf_read(rest);
        }
        3 => {
            let _ = procfs::process::Status::from_buf_read(rest);
        }
        4 => {
            let _ = procfs::KernelStats::from_buf_read(rest, &si);
        }
        _ => {
            let _ = procfs::LoadAverage::from_read(rest);
        }
    }
});
