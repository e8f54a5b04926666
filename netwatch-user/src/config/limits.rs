//! The bounds of the numeric settings that have no constant of their own:
//! each is `(lowest, highest)`, both accepted unless the check says
//! otherwise. A setting's resolver refuses a value outside them with the
//! setting, the value and the range (`config/check.rs`).
//!
//! Nothing here may be changed without the message tests in
//! `config/tests.rs` (they quote the ranges users see).

/// `max_sockets`: the kernel socket map's entries (the claims map
/// holds 4 per socket).
pub const MAX_SOCKETS: (u32, u32) = (1, 1 << 24);
/// `ringbuf_bytes`: a power of two from a page to 1 GiB.
pub const RINGBUF_BYTES: (u32, u32) = (4096, 1 << 30);
/// `rows` of the live table.
pub const ROWS: (usize, usize) = (1, 10_000);
/// `max_connections` per snapshot (0: none listed).
pub const MAX_CONNECTIONS: (usize, usize) = (0, 1_000_000);
/// `max_processes` per snapshot (0: every process in the one folded row).
pub const MAX_PROCESSES: (usize, usize) = (0, 1_000_000);
/// The spool's bound, bytes (64 KiB to 1 TiB).
pub const SPOOL_MAX_BYTES: (u64, u64) = (64 * 1024, 1 << 40);
/// `[health] probes` per round.
pub const HEALTH_PROBES: (u32, u32) = (1, 10);
/// `[alerts] history`.
pub const ALERT_HISTORY: (usize, usize) = (1, 100_000);
/// `[alerts] port_scan_ports` (a source cannot touch more ports).
pub const PORT_SCAN_PORTS: (usize, usize) = (1, 65_535);
/// `[alerts] port_scan_failed` (0: off).
pub const PORT_SCAN_FAILED: (u32, u32) = (0, 1_000_000);
/// `[alerts] beacon_min_intervals` (each destination keeps this many).
pub const BEACON_MIN_INTERVALS: (usize, usize) = (1, 1_000);
/// `[alerts] beacon_max_jitter` (stddev / mean).
pub const BEACON_MAX_JITTER: (f64, f64) = (0.0, 10.0);
/// `[alerts] dns_max_name_bytes` (a DNS name has at most 255).
pub const DNS_MAX_NAME_BYTES: (usize, usize) = (1, 255);
/// `[alerts] dns_max_queries_per_min`.
pub const DNS_MAX_QUERIES_PER_MIN: (usize, usize) = (1, 1_000_000);
/// `[alerts] dns_max_subdomains`.
pub const DNS_MAX_SUBDOMAINS: (usize, usize) = (0, 1_000_000);
/// `[alerts] dns_entropy_bits`, bits per character (0: off).
pub const DNS_ENTROPY_BITS: (f64, f64) = (0.0, 8.0);
/// `[alerts] bandwidth_*_bps` thresholds, bytes per second (1 PB/s).
pub const BANDWIDTH_BPS: (f64, f64) = (0.0, 1e15);
/// `[alerts] bandwidth_consecutive` samples.
pub const BANDWIDTH_CONSECUTIVE: (u32, u32) = (1, 10_000);
/// `[alerts] bandwidth_baseline_multiple` (0: off).
pub const BANDWIDTH_BASELINE_MULTIPLE: (f64, f64) = (0.0, 1e6);
/// `[ingest] batch_max_bytes` at least (the top is
/// [`super::MAX_BATCH_BYTES`], the cloud's limit).
pub const BATCH_MIN_BYTES: usize = 64 * 1024;
/// `[ingest] retry_initial_secs` and `retry_max_secs` (5 minutes at most;
/// the cap is also at least the first delay).
pub const RETRY_SECS: (f64, f64) = (0.01, 300.0);
/// `[ingest] request_timeout_secs`.
pub const REQUEST_TIMEOUT_SECS: (f64, f64) = (0.1, 600.0);
/// `[ingest] flush_timeout_secs` (0: exit without waiting).
pub const FLUSH_TIMEOUT_SECS: (f64, f64) = (0.0, 600.0);
/// `[ingest] payment_recheck_secs` (a week at most).
pub const PAYMENT_RECHECK_SECS: (f64, f64) = (0.1, 7.0 * 86_400.0);
/// `[prometheus] process_expiry_secs` (a week at most).
pub const PROCESS_EXPIRY_SECS: (f64, f64) = (1.0, 7.0 * 86_400.0);
/// `[prometheus] top_processes`.
pub const TOP_PROCESSES: (usize, usize) = (1, 100_000);
/// `[health] interval_secs` (an hour at most).
pub const HEALTH_INTERVAL_SECS: (f64, f64) = (0.1, 3_600.0);
/// `[health] timeout_ms` of one probe.
pub const HEALTH_TIMEOUT_MS: (u64, u64) = (10, 10_000);
/// `[alerts] active_secs`.
pub const ALERT_ACTIVE_SECS: (f64, f64) = (1.0, 86_400.0);
/// `[alerts] port_scan_window_secs`.
pub const PORT_SCAN_WINDOW_SECS: (f64, f64) = (0.1, 86_400.0);
/// `[alerts] beacon_min_interval_secs` and `beacon_max_interval_secs` (the
/// longest is also at least the shortest).
pub const BEACON_INTERVAL_SECS: (f64, f64) = (0.0, 86_400.0);
