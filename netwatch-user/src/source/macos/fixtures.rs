//! The tool output fixtures the macOS tests read (one imaginary host; see
//! `tests/fixtures/macos/README.md`), each file named once, and [`sa`] for
//! writing socket addresses in expectations. Test-only; it states no
//! expectation of its own.

use std::net::SocketAddr;

/// `lsof -i -n -P -F pcPtTn`: read 1.
pub(super) const LSOF_1: &str = include_str!("../../../tests/fixtures/macos/lsof.txt");
/// `lsof` on the same host, a read later: read 2.
pub(super) const LSOF_2: &str = include_str!("../../../tests/fixtures/macos/lsof_read2.txt");
/// `nettop -L 1 -n -x` (CSV) on the same host as [`LSOF_1`]: read 1.
pub(super) const NETTOP_1: &str = include_str!("../../../tests/fixtures/macos/nettop.csv");
/// `nettop` with [`LSOF_2`]: read 2.
pub(super) const NETTOP_2: &str = include_str!("../../../tests/fixtures/macos/nettop_read2.csv");
/// The data of [`NETTOP_1`] in aligned columns (`nettop -l 1`).
pub(super) const NETTOP_COLUMNS: &str =
    include_str!("../../../tests/fixtures/macos/nettop_columns.txt");
/// `netstat -ibn`.
pub(super) const IBN: &str = include_str!("../../../tests/fixtures/macos/netstat_ibn.txt");
/// `netstat -an -p tcp`.
pub(super) const AN_TCP: &str = include_str!("../../../tests/fixtures/macos/netstat_an_tcp.txt");

/// A socket address written in a test; panics on a typo.
pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
