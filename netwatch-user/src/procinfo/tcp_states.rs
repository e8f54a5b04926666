//! Host-wide TCP socket counts by state from `/proc/net/tcp` and
//! `/proc/net/tcp6`, for the snapshot's `connection_count`,
//! `tcp_time_wait` and `tcp_close_wait`. It counts; it must never attribute
//! sockets to processes (that is the sources' and attribution's job).

use anyhow::Context;
use procfs::net::{TcpNetEntry, TcpState};
use procfs::ProcError;

/// TCP sockets of the agent's network namespace, counted by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStates {
    /// Sockets in `ESTABLISHED` (the SDK's `connection_count`).
    pub connection_count: u32,
    pub time_wait: u32,
    pub close_wait: u32,
}

impl TcpStates {
    /// Count the sockets in `/proc/net/tcp` and `/proc/net/tcp6`.
    pub fn read() -> anyhow::Result<Self> {
        Ok(Self::count(&read_entries()?))
    }

    /// Count already-parsed entries (any subset: a test counts only its own).
    pub fn count<'a>(entries: impl IntoIterator<Item = &'a TcpNetEntry>) -> Self {
        let mut s = Self::default();
        for e in entries {
            let slot = match e.state {
                TcpState::Established => &mut s.connection_count,
                TcpState::TimeWait => &mut s.time_wait,
                TcpState::CloseWait => &mut s.close_wait,
                _ => continue,
            };
            *slot = slot.saturating_add(1);
        }
        s
    }
}

/// Every TCP socket, IPv4 then IPv6. A kernel without IPv6 has no
/// `/proc/net/tcp6`; that is an empty table, not an error.
pub fn read_entries() -> anyhow::Result<Vec<TcpNetEntry>> {
    let mut entries = procfs::net::tcp().context("reading /proc/net/tcp")?;
    match procfs::net::tcp6() {
        Ok(v6) => entries.extend(v6),
        Err(ProcError::NotFound(_)) => {}
        Err(e) => return Err(e).context("reading /proc/net/tcp6"),
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use procfs::FromBufReadSI;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn line(state: u8) -> String {
        format!("   0: 0100007F:1F90 0100007F:C350 {state:02X} 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n")
    }

    fn parse(text: &str) -> Vec<TcpNetEntry> {
        let si = procfs::ExplicitSystemInfo {
            boot_time_secs: 0,
            ticks_per_second: 100,
            page_size: 4096,
            is_little_endian: cfg!(target_endian = "little"),
        };
        match procfs::net::TcpNetEntries::from_buf_read(text.as_bytes(), &si) {
            Ok(e) => e.0,
            Err(e) => panic!("fixture must parse: {e}"),
        }
    }

    #[test]
    fn counts_established_time_wait_and_close_wait_only() {
        let mut text = HEADER.to_string();
        for st in [0x01, 0x01, 0x06, 0x08, 0x08, 0x08, 0x0A, 0x02, 0x09, 0x05] {
            text.push_str(&line(st));
        }
        let s = TcpStates::count(&parse(&text));
        assert_eq!(
            s,
            TcpStates {
                connection_count: 2,
                time_wait: 1,
                close_wait: 3
            }
        );
    }

    #[test]
    fn empty_table_counts_zero() {
        assert_eq!(TcpStates::count(&parse(HEADER)), TcpStates::default());
    }

    proptest::proptest! {
        #[test]
        fn prop_proc_net_tcp_parser_never_panics(s in "(.{0,160}\n){0,5}") {
            let si = procfs::ExplicitSystemInfo {
                boot_time_secs: 0,
                ticks_per_second: 100,
                page_size: 4096,
                is_little_endian: true,
            };
            if let Ok(e) = procfs::net::TcpNetEntries::from_buf_read(s.as_bytes(), &si) {
                let _ = TcpStates::count(&e.0);
            }
        }

        /// Rows of the kernel's shape with fields gone wrong.
        #[test]
        fn prop_proc_net_tcp_parser_never_panics_near_the_kernel_shape(
            rows in proptest::collection::vec(
                " *[0-9]{1,3}: [0-9A-Fé]{0,33}:[0-9A-F]{0,5} [0-9A-F]{0,33}:[0-9A-Fé]{0,5} [0-9A-Fé]{0,3} [0-9A-F]{0,8}:[0-9A-F]{0,8} [0-9:A-F]{0,12} [0-9]{0,8} [0-9é]{0,6} [0-9]{0,3} [0-9é]{0,8}",
                0..5,
            )
        ) {
            let text = format!("{HEADER}{}\n", rows.join("\n"));
            let si = procfs::ExplicitSystemInfo {
                boot_time_secs: 0,
                ticks_per_second: 100,
                page_size: 4096,
                is_little_endian: true,
            };
            if let Ok(e) = procfs::net::TcpNetEntries::from_buf_read(text.as_bytes(), &si) {
                let _ = TcpStates::count(&e.0);
            }
        }

        #[test]
        fn prop_counts_add_up(states in proptest::collection::vec(1u8..=0x0C, 0..40)) {
            let mut text = HEADER.to_string();
            for &st in &states {
                text.push_str(&line(st));
            }
            let s = TcpStates::count(&parse(&text));
            let n = |x: u8| states.iter().filter(|&&v| v == x).count() as u32;
            proptest::prop_assert_eq!(s.connection_count, n(0x01));
            proptest::prop_assert_eq!(s.time_wait, n(0x06));
            proptest::prop_assert_eq!(s.close_wait, n(0x08));
        }
    }
}
