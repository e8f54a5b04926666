//! The counters file: the process series of `/metrics` as kept on disk
//! beside a pinned source's baseline, so an agent restarted on the same
//! pins goes on counting from where the last one stopped. The format: a
//! header line naming it and its version with the CRC-32 of the body, then
//! the JSON body.
//!
//! It must never hand back a file that is torn, altered, of another format
//! or version, or saved for other pins: [`SavedCounters::decode`] says why
//! and the counters start at 0. It does no I/O itself (the sink reads and
//! writes the file).

use super::quality::QualityTotals;

/// One process series as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedProcess {
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub rx_bytes_total: u64,
    pub tx_bytes_total: u64,
    /// Its TCP quality and DNS counters (absent in files of older agents:
    /// read as none).
    #[serde(default, skip_serializing_if = "QualityTotals::is_empty")]
    pub quality: QualityTotals,
    /// Milliseconds between its last snapshot row and the save.
    pub seen_ms_ago: u64,
    /// Milliseconds between its last bytes and the save.
    pub active_ms_ago: u64,
}

/// The counters `/metrics` accumulates from the snapshots' bytes, as kept
/// on disk beside the pinned source's baseline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedCounters {
    /// The pins' instance tag: restored only by an agent on the same pins.
    pub instance: String,
    /// Wall-clock time of the save (Unix milliseconds).
    pub saved_unix_ms: u64,
    pub processes: Vec<SavedProcess>,
    pub other_rx_bytes_total: u64,
    pub other_tx_bytes_total: u64,
    /// Quality counters of `other` (absent in files of older agents).
    #[serde(default, skip_serializing_if = "QualityTotals::is_empty")]
    pub other_quality: QualityTotals,
    pub series_expired_total: u64,
    pub series_evicted_total: u64,
}

/// The first line of a counters file: this, the CRC-32 of the rest (8 hex
/// digits), a newline, then the JSON body.
const COUNTERS_HEADER: &str = "netwatch-prometheus-counters 1";

impl SavedCounters {
    /// The file's text: header line with the body's checksum, JSON body.
    pub fn encode(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail.
        let body = serde_json::to_string(self).unwrap_or_default();
        format!(
            "{COUNTERS_HEADER} {:08x}\n{body}",
            crc32fast::hash(body.as_bytes())
        )
    }

    /// Parse a counters file saved for `instance`; `Err` says why it is
    /// not used (not such a file, torn or altered, other pins).
    pub fn decode(text: &str, instance: &str) -> Result<Self, String> {
        let (header, body) = text.split_once('\n').ok_or("no header line")?;
        let crc = header
            .strip_prefix(COUNTERS_HEADER)
            .map(str::trim)
            .ok_or("not a counters file")?;
        let crc = u32::from_str_radix(crc, 16).map_err(|e| format!("bad checksum field: {e}"))?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return Err("checksum mismatch (torn or altered)".into());
        }
        let saved: Self = serde_json::from_str(body).map_err(|e| format!("bad body: {e}"))?;
        if saved.instance != instance {
            return Err(format!("saved for other pins ({})", saved.instance));
        }
        Ok(saved)
    }
}

/// Where the counters are kept beside the source's baseline file.
pub fn counters_file(baseline: &std::path::Path) -> std::path::PathBuf {
    let mut name = baseline
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".prometheus");
    baseline.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{cg, snap, state};
    use super::*;
    use std::time::Instant;

    #[test]
    fn saved_counters_refuse_other_pins_torn_and_altered_files() {
        let mut st = state(10, 300);
        st.apply(&snap(&[(1, "a", 100, 7)]), Instant::now(), &mut cg);
        let text = st.saved("pins-1", Instant::now(), 5).encode();
        let err = |t: &str, i: &str| SavedCounters::decode(t, i).unwrap_err();
        assert!(err(&text, "pins-2").contains("other pins"));
        assert!(err(&text[..text.len() - 3], "pins-1").contains("checksum"));
        assert!(err(&text.replace("100", "900"), "pins-1").contains("checksum"));
        assert!(err("", "pins-1").contains("no header"));
        assert!(err("netwatch-ebpf-baseline 1 x\n", "pins-1").contains("not a counters file"));
        assert!(err("netwatch-prometheus-counters 1 zz\n{}", "pins-1").contains("checksum field"));
    }
}
