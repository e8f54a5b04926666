//! The capture thread: opening a live libpcap capture ([`open_capture`],
//! as [`PcapConfig`] says) and reading it until stopped ([`run_capture`]),
//! handing each packet to a [`CaptureSink`]: the pcap source's
//! ([`FlowSink`]: counts flows, wakes the rescan thread on a SYN) or the
//! DNS-only capture's (`crate::source::dns_capture`).
//!
//! It must never block shutdown (dropping the source breaks the loop) and
//! never panic on a failing capture: opening fails with a [`PcapError`]
//! that says what to do, reading fails with an `Err` the supervisor
//! retries. It never opens the interface in promiscuous mode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pcap::{Active, Capture};

use super::flows::{lock, Shared};
use super::frame::LinkType;
use super::rescan::Resolver;

/// How to open the capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcapConfig {
    /// Interface to capture on; `None` for all of them (`any`).
    pub device: Option<String>,
    /// Bytes captured per packet. Byte counts never depend on it; DNS
    /// analytics need the question, which fits well within the default.
    pub snaplen: i32,
    /// Kernel capture buffer, bytes.
    pub buffer_size: i32,
    /// The libpcap read timeout: about the longest a captured packet waits
    /// in the kernel buffer before netwatch sees it. (Shutdown does not
    /// depend on it: dropping the source breaks the capture loop.)
    pub timeout_ms: i32,
    /// Deliver each packet at once instead of in buffered blocks.
    pub immediate: bool,
    /// Optional BPF filter (`tcpdump` syntax) applied in the kernel.
    pub filter: Option<String>,
    /// Scan the socket table again when a new connection (a SYN) is seen,
    /// so sockets that open and close between two reads still get an
    /// owner; at most once per this gap, and never more often than keeps
    /// the rescans to a tenth of one core (the wait after a scan is at least
    /// nine times what it took). `None`: only the scan of each read.
    pub rescan_gap: Option<Duration>,
}

impl Default for PcapConfig {
    fn default() -> Self {
        Self {
            device: None,
            snaplen: 512,
            buffer_size: 8 << 20,
            timeout_ms: 100,
            immediate: false,
            filter: None,
            rescan_gap: Some(Duration::from_millis(100)),
        }
    }
}

/// Opening the capture failed.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("opening pcap capture on `{device}`: {error}{hint}")]
    Open {
        device: String,
        error: pcap::Error,
        /// What to do about it, when the message says.
        hint: &'static str,
    },
    #[error("pcap capture on `{device}` has link type {dlt} ({name}), which netwatch cannot decode; capture on `any` or another interface")]
    UnsupportedLinkType {
        device: String,
        dlt: i32,
        name: String,
    },
    #[error("setting capture filter `{filter}` on `{device}`: {error}")]
    Filter {
        device: String,
        filter: String,
        error: pcap::Error,
    },
    #[error("starting a pcap source thread: {0}")]
    Thread(std::io::Error),
}
/// How often a capture thread reads the kernel's drop count.
pub(crate) const STATS_EVERY: Duration = Duration::from_millis(250);
/// How often ended and idle TCP streams are forgotten.
pub(crate) const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// Open a live capture as `config` says (device, snapshot length, buffer,
/// timeout, filter; never promiscuous): the handle, its link type and the
/// device's name. Shared by this source and the DNS-only capture
/// (`crate::source::dns_capture`).
pub(crate) fn open_capture(
    config: &PcapConfig,
) -> Result<(Capture<Active>, LinkType, String), PcapError> {
    let device = config.device.clone().unwrap_or_else(|| "any".to_string());
    let open_err = |source: pcap::Error| {
        let hint = open_hint(&source.to_string());
        PcapError::Open {
            device: device.clone(),
            error: source,
            hint,
        }
    };
    let mut cap = Capture::from_device(device.as_str())
        .map_err(open_err)?
        .snaplen(config.snaplen.max(128))
        .buffer_size(config.buffer_size)
        .timeout(config.timeout_ms.max(1))
        .immediate_mode(config.immediate)
        .promisc(false)
        .open()
        .map_err(open_err)?;
    let dlt = cap.get_datalink();
    let link = LinkType::from_dlt(dlt.0).ok_or_else(|| PcapError::UnsupportedLinkType {
        device: device.clone(),
        dlt: dlt.0,
        name: dlt.get_name().unwrap_or_else(|_| "unknown".into()),
    })?;
    if let Some(filter) = &config.filter {
        cap.filter(filter, true)
            .map_err(|source| PcapError::Filter {
                device: device.clone(),
                filter: filter.clone(),
                error: source,
            })?;
    }
    Ok((cap, link, device))
}

fn open_hint(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("permission") || m.contains("not permitted") {
        " (capturing needs root or CAP_NET_RAW)"
    } else if m.contains("no such device") || m.contains("doesn't exist") {
        " (no such interface; list them with `ip link`)"
    } else {
        ""
    }
}

/// What a capture thread does with what it reads ([`run_capture`]).
pub(crate) trait CaptureSink {
    /// One packet, read from the capture at `arrival` (the monotonic
    /// clock: libpcap's own stamp, `captured`, is wall-clock time, which a
    /// clock step moves); `wire_len` is its length on the wire.
    fn packet(&mut self, data: &[u8], wire_len: usize, arrival: Duration, captured: Duration);
    /// The kernel's count of packets it dropped for this capture.
    fn kernel_drops(&mut self, dropped: u64);
    /// Forget state older than its window, as of monotonic `now`.
    fn expire(&mut self, now: Duration);
}

/// Read packets into `sink` until stopped (`Ok`) or the capture fails
/// (`Err`, naming `what`: the supervisor tries the same capture again after
/// a backoff). `point` names the thread for fault injection. Kernel drops
/// are read every [`STATS_EVERY`], state expired every [`EXPIRE_EVERY`].
pub(crate) fn run_capture(
    cap: &mut Capture<Active>,
    point: &'static str,
    what: &str,
    stop: &AtomicBool,
    sink: &mut impl CaptureSink,
) -> Result<(), String> {
    let mut last_stats = Instant::now();
    let mut last_expiry = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        crate::supervise::fault::point(point);
        match cap.next_packet() {
            Ok(p) => {
                let arrival = crate::clock::mono_now();
                let captured = timestamp(p.header.ts);
                let wire_len = usize::try_from(p.header.len).unwrap_or(usize::MAX);
                sink.packet(p.data, wire_len, arrival, captured);
            }
            Err(pcap::Error::TimeoutExpired) => {}
            // Woken by pcap_breakloop (reported as "no more packets").
            Err(_) if stop.load(Ordering::Relaxed) => return Ok(()),
            Err(e) => return Err(format!("reading {what}: {e}")),
        }
        if last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            if let Ok(s) = cap.stats() {
                sink.kernel_drops(u64::from(s.dropped));
            }
        }
        if last_expiry.elapsed() >= EXPIRE_EVERY {
            last_expiry = Instant::now();
            sink.expire(crate::clock::mono_now());
        }
    }
    Ok(())
}

/// The pcap source's capture thread: counts flows, wakes the rescan
/// thread when a connection opens.
pub(super) struct FlowSink<'a> {
    pub(super) link: LinkType,
    pub(super) shared: &'a Mutex<Shared>,
    pub(super) resolver: Option<&'a Resolver>,
}

impl CaptureSink for FlowSink<'_> {
    fn packet(&mut self, data: &[u8], wire_len: usize, arrival: Duration, captured: Duration) {
        let opened = {
            let mut s = lock(self.shared);
            s.observe(self.link, data, wire_len, arrival, captured);
            std::mem::take(&mut s.opened)
        };
        if let (true, Some(r)) = (opened, self.resolver) {
            r.wake();
        }
    }

    fn kernel_drops(&mut self, dropped: u64) {
        lock(self.shared).stats.kernel_drops = dropped;
    }

    fn expire(&mut self, now: Duration) {
        lock(self.shared).expire(now);
    }
}

/// A capture timestamp as time since the Unix epoch (0 if before it).
pub(crate) fn timestamp(tv: libc::timeval) -> Duration {
    let secs = u64::try_from(tv.tv_sec).unwrap_or(0);
    let micros = u64::try_from(tv.tv_usec).unwrap_or(0).min(999_999);
    Duration::from_secs(secs) + Duration::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_hints_name_the_cause() {
        assert!(open_hint("socket: Operation not permitted").contains("root"));
        assert!(
            open_hint("You don't have permission to capture on that device")
                .contains("CAP_NET_RAW")
        );
        assert!(open_hint("nope0: No such device exists").contains("ip link"));
        assert_eq!(open_hint("something else"), "");
    }
}
