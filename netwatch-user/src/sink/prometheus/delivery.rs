//! What `/metrics` shows of the delivery to NetWatch Cloud: the ingest
//! sink's counters, copied into a [`DeliveryView`] on each scrape through
//! the [`DeliveryReport`] trait, so the Prometheus sink never holds the
//! ingest sink itself. It must never change a counter, only read them.

/// Delivery counters as `/metrics` shows them (from the ingest sink).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryView {
    pub requests: u64,
    pub delivered: u64,
    pub rejected: u64,
    /// 0: never.
    pub last_success_unix_secs: u64,
    /// Failed requests by cause: an HTTP status or `transport`.
    pub errors: Vec<(String, u64)>,
    pub spool_depth: u64,
    pub spool_bytes: u64,
    pub spool_evicted: u64,
    pub spool_corrupt: u64,
    pub spool_torn: u64,
    /// Snapshots the spool could not write (full, read-only, I/O error).
    pub spool_write_failed: u64,
    /// Record reads that failed for an I/O reason (records kept).
    pub spool_read_errors: u64,
    /// Records in the spool another user could have written (owned by
    /// someone else, group/world-writable, a symlink): removed, never sent.
    pub spool_foreign: u64,
}

/// Something that reports delivery counters (the ingest sink's stats).
pub trait DeliveryReport: Send + Sync + std::fmt::Debug {
    fn view(&self) -> DeliveryView;
}

#[cfg(target_os = "linux")]
impl DeliveryReport for crate::sink::ingest::DeliveryStats {
    fn view(&self) -> DeliveryView {
        use std::sync::atomic::Ordering::Relaxed;
        let errors = crate::supervise::lock(&self.errors, "ingest error counters")
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        DeliveryView {
            requests: self.requests.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            last_success_unix_secs: self.last_success_unix_secs.load(Relaxed),
            errors,
            spool_depth: self.spool.depth.load(Relaxed),
            spool_bytes: self.spool.bytes.load(Relaxed),
            spool_evicted: self.spool.evicted.load(Relaxed),
            spool_corrupt: self.spool.corrupt.load(Relaxed),
            spool_torn: self.spool.torn.load(Relaxed),
            spool_write_failed: self.spool.write_failed.load(Relaxed),
            spool_read_errors: self.spool.read_errors.load(Relaxed),
            spool_foreign: self.spool.foreign.load(Relaxed),
        }
    }
}
