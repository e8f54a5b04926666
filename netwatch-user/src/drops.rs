//! What the bounded tables dropped: one place every table keyed by outside
//! data (DNS names, alert keys, scan sources, pcap flows, destroy events,
//! process metadata, Prometheus series) reports the entries it refused or
//! evicted because it was full.
//!
//! Each report adds to a per-table total, exported on `/metrics` as
//! `netwatch_agent_table_dropped_total{table="…"}`, and is logged at most
//! once a minute per table (a flood must not become a log flood). This module
//! never decides what to drop: each table keeps its own cap and eviction
//! rule and says them in its own docs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a table's drops are logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Table {
    total: u64,
    /// Dropped since the last log line.
    unlogged: u64,
    last_log: Option<Instant>,
}

static TABLES: Mutex<BTreeMap<&'static str, Table>> = Mutex::new(BTreeMap::new());

/// Counts `n` entries that table `table` (capped at `cap`: entries, or bytes
/// for a table that caps its size) refused
/// or evicted. Logs a warning at most once a minute per table.
pub fn dropped(table: &'static str, cap: usize, n: u64) {
    if n == 0 {
        return;
    }
    let mut tables = crate::supervise::lock(&TABLES, "dropped-entry counters");
    let t = tables.entry(table).or_default();
    t.total += n;
    t.unlogged += n;
    let now = Instant::now();
    if t.last_log
        .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
    {
        log::warn!(
            "{table}: at its cap ({cap}), dropped {} (total {}); \
             counted in netwatch_agent_table_dropped_total{{table=\"{table}\"}}",
            t.unlogged,
            t.total
        );
        t.unlogged = 0;
        t.last_log = Some(now);
    }
}

/// Every table that dropped something since start, with its total.
pub fn totals() -> Vec<(&'static str, u64)> {
    crate::supervise::lock(&TABLES, "dropped-entry counters")
        .iter()
        .map(|(name, t)| (*name, t.total))
        .collect()
}

/// The total `table` dropped since start (0 when it never did).
pub fn total(table: &str) -> u64 {
    crate::supervise::lock(&TABLES, "dropped-entry counters")
        .get(table)
        .map_or(0, |t| t.total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_add_up_per_table() {
        dropped("test_table_a", 10, 3);
        dropped("test_table_a", 10, 4);
        dropped("test_table_b", 10, 0);
        assert_eq!(total("test_table_a"), 7);
        assert_eq!(total("test_table_b"), 0);
        assert!(totals().iter().any(|&(n, t)| n == "test_table_a" && t == 7));
        assert!(!totals().iter().any(|&(n, _)| n == "test_table_b"));
    }
}
