//! The parsers of outside input that are private to their modules, made
//! callable for the `cargo fuzz` targets in `fuzz/` (feature `fuzzing`,
//! never enabled by the agent). Each item here only forwards to the
//! agent's own function, so a target fuzzes exactly what the agent runs; it
//! must never hold a parser of its own or change what one does.

use crate::procinfo::tcp_states::{self, NetlinkError, TcpStates};
use crate::source::ebpf::generation::{self, Section};

/// `/proc/<pid>/stat` as the process collector parses it (`procinfo::process`).
pub fn parse_proc_stat(raw: &[u8]) -> Option<procfs::process::Stat> {
    crate::procinfo::process::parse_stat(raw)
}

/// The `tw` field of `/proc/net/sockstat` (`source::ebpf::states`).
pub fn parse_sockstat_tw(text: &str) -> Option<u64> {
    crate::source::ebpf::states::parse_sockstat_tw(text)
}

/// One datagram of a `sock_diag` TCP state dump number `seq`, counted into
/// `s` (`procinfo::tcp_states`); `Ok(true)` when the dump is done.
pub fn count_tcp_state_dump(buf: &[u8], seq: u32, s: &mut TcpStates) -> Result<bool, NetlinkError> {
    tcp_states::count_dump(buf, seq, s, &|_, _| true).map(|d| d == tcp_states::Dump::Done)
}

/// The pin baseline file's bytes for `sections` written for `instance`
/// (`source::ebpf::generation`), the inverse of [`generation::decode`].
pub fn encode_baseline(instance: &str, sections: &[Section]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = sections
        .iter()
        .map(|s| generation::encode_section(s.generation, &s.entries))
        .collect();
    let refs: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    generation::encode(instance, &refs)
}
