//! The pcap source itself ([`PcapSource`]): opens the capture, starts the
//! capture thread and the rescan thread, and on each read drains what the
//! capture counted, scans the socket table and hands both to the joiner,
//! reporting what the bounded tables refused.
//!
//! It must never build wire rows or decide per-process totals, never
//! leave a thread running once dropped, and never hide a stopped capture:
//! a capture thread that ended makes the next read fail, saying why.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use pcap::{BreakLoop, Device};

use super::capture::{open_capture, run_capture, FlowSink, PcapConfig, PcapError};
use super::flows::{
    lock, CaptureStats, FlowKey, Shared, MAX_DNS_EVENTS, MAX_FLOWS, MAX_TCP_EVENTS,
};
use super::frame::LinkType;
use super::joiner::FlowJoiner;
use super::rescan::Resolver;
use super::{dns, stream};
use crate::procinfo::sockets::{canonical, SocketTable};
use crate::source::{DnsEvent, SampleBatch, SocketSource, TcpEvent};

/// Per-socket sample source over a live libpcap capture (Linux).
pub struct PcapSource {
    device: String,
    link: LinkType,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    /// Wakes the capture thread out of `poll` (libpcap's timeout does not
    /// fire while no packet arrives with TPACKET_V3).
    breaker: BreakLoop,
    /// The capture thread, supervised as `pcap_capture` (restarted: the
    /// capture handle belongs to its body and outlives a panic).
    thread: Option<crate::supervise::Worker>,
    resolver: Arc<Resolver>,
    /// The rescan thread, supervised as `pcap_rescan` (restarted).
    resolver_thread: Option<crate::supervise::Worker>,
    joiner: FlowJoiner,
    local_ips: HashSet<IpAddr>,
    /// The capture's read timeout: the longest a captured packet waits in
    /// libpcap's buffer before the capture thread sees it.
    timeout: Duration,
    /// Untracked TCP segments, DNS overflow and refused DNS-over-TCP
    /// directions already reported as drops.
    reported: (u64, u64, u64),
}

impl std::fmt::Debug for PcapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapSource")
            .field("device", &self.device)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl PcapSource {
    /// Capture on `device` (`None`: all interfaces, `any`) with the default
    /// [`PcapConfig`]. Counting starts now.
    ///
    /// Needs root or `CAP_NET_RAW`; the error says so when that is the cause.
    pub fn open(device: Option<&str>) -> Result<Self, PcapError> {
        Self::with_config(PcapConfig {
            device: device.map(str::to_string),
            ..PcapConfig::default()
        })
    }

    /// Open the capture as `config` says and start the capture thread.
    /// Counting starts now.
    pub fn with_config(config: PcapConfig) -> Result<Self, PcapError> {
        let (mut cap, link, device) = open_capture(&config)?;
        let breaker = cap.breakloop_handle();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let resolver = Arc::new(Resolver::default());
        // Started first: if it cannot start, no capture thread is left running.
        let resolver_thread = match config.rescan_gap {
            Some(gap) => {
                let r = Arc::clone(&resolver);
                Some(
                    crate::supervise::Worker::spawn(
                        "pcap_rescan",
                        "netwatch-pcap-scan",
                        crate::supervise::Policy::Restart,
                        move || {
                            r.run(gap);
                            Ok(())
                        },
                    )
                    .map_err(PcapError::Thread)?,
                )
            }
            None => None,
        };
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            let wake = resolver_thread.is_some().then(|| Arc::clone(&resolver));
            let mut cap = cap;
            crate::supervise::Worker::spawn(
                "pcap_capture",
                "netwatch-pcap",
                crate::supervise::Policy::Restart,
                move || {
                    let mut sink = FlowSink {
                        link,
                        shared: &shared,
                        resolver: wake.as_deref(),
                    };
                    run_capture(&mut cap, "pcap_capture", "the capture", &stop, &mut sink)
                },
            )
        };
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                resolver.stop();
                drop(resolver_thread);
                return Err(PcapError::Thread(e));
            }
        };
        let mut source = Self {
            device,
            link,
            shared,
            stop,
            breaker,
            thread: Some(thread),
            resolver,
            resolver_thread,
            joiner: FlowJoiner::default(),
            local_ips: HashSet::new(),
            timeout: Duration::from_millis(config.timeout_ms.max(1) as u64),
            reported: (0, 0, 0),
        };
        source.refresh_local_ips();
        Ok(source)
    }

    /// The device captured on (`any` when none was named).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The capture's link type.
    pub fn link_type(&self) -> LinkType {
        self.link
    }

    /// Capture counters since the capture opened.
    pub fn stats(&self) -> CaptureStats {
        let mut st = lock(&self.shared).stats;
        st.rescans = self.resolver.scans();
        let j = &self.joiner.stats;
        st.unowned_bytes = j.unowned_bytes;
        st.remembered_owner_bytes = j.remembered_owner_bytes;
        st.listener_owner_bytes = j.listener_owner_bytes;
        st.not_local_bytes = j.not_local_bytes;
        st
    }

    /// Addresses of this host's interfaces, for telling which end of a
    /// socket-less flow is local. Kept as is if listing fails.
    fn refresh_local_ips(&mut self) {
        if let Ok(devices) = Device::list() {
            self.local_ips = devices
                .iter()
                .flat_map(|d| d.addresses.iter().map(|a| a.addr.to_canonical()))
                .collect();
        }
    }
}

impl SocketSource for PcapSource {
    fn name(&self) -> &'static str {
        "pcap"
    }

    /// Packets captured before the stop wait up to one read timeout in the
    /// kernel's capture block, then the capture thread counts them: twice
    /// that, and a margin for scheduling.
    fn settle(&mut self) {
        std::thread::sleep(2 * self.timeout + Duration::from_millis(50));
    }

    fn read(&mut self) -> anyhow::Result<SampleBatch> {
        let (flows, refused_flows, refused_tcp, untracked, dns_overflow, dns_tcp_refused) = {
            let mut sh = lock(&self.shared);
            let refused = (
                std::mem::take(&mut sh.refused_flows),
                std::mem::take(&mut sh.refused_tcp_events),
            );
            sh.stats.tcp_events_overflow += refused.1;
            let untracked = sh.streams.untracked();
            let half_open = sh.streams.refused_half_open();
            crate::drops::dropped(
                "pcap_half_open",
                stream::MAX_HALF_OPEN,
                half_open.saturating_sub(std::mem::replace(&mut sh.reported_half_open, half_open)),
            );
            let dns_overflow = sh.stats.dns_overflow;
            (
                std::mem::take(&mut sh.flows),
                refused.0,
                refused.1,
                untracked,
                dns_overflow,
                sh.dns.tcp().refused(),
            )
        };
        crate::drops::dropped("pcap_flows", MAX_FLOWS, refused_flows);
        crate::drops::dropped("pcap_tcp_events", MAX_TCP_EVENTS, refused_tcp);
        crate::drops::dropped(
            "pcap_tcp_streams",
            stream::MAX_STREAMS,
            untracked.saturating_sub(self.reported.0),
        );
        crate::drops::dropped(
            "pcap_dns_events",
            MAX_DNS_EVENTS,
            dns_overflow.saturating_sub(self.reported.1),
        );
        crate::drops::dropped(
            "dns_tcp_streams",
            dns::MAX_TCP_DIRECTIONS,
            dns_tcp_refused.saturating_sub(self.reported.2),
        );
        self.reported = (untracked, dns_overflow, dns_tcp_refused);
        // The capture thread ends only when stopped or given up on.
        if let Some(t) = self.thread.as_ref().filter(|t| t.is_finished()) {
            anyhow::bail!(
                "pcap capture on `{}` stopped: {}",
                self.device,
                t.status()
                    .last_failure
                    .unwrap_or_else(|| "the capture thread ended".into())
            );
        }
        let table = SocketTable::scan()
            .context("pcap: reading the socket table to attribute captured flows")?;
        self.refresh_local_ips();
        let learned = self.resolver.take_learned();
        let local = &self.local_ips;
        let known: HashSet<FlowKey> = table
            .entries()
            .iter()
            .filter(|e| e.inode != 0 && e.owner.is_some())
            .filter_map(|e| {
                let (local, remote) = (canonical(e.local), canonical(e.remote?));
                Some([
                    FlowKey {
                        protocol: e.protocol,
                        src: local,
                        dst: remote,
                    },
                    FlowKey {
                        protocol: e.protocol,
                        src: remote,
                        dst: local,
                    },
                ])
            })
            .flatten()
            .collect();
        lock(&self.shared).known = known;
        let samples = self.joiner.apply(&flows, learned, table, |ip| {
            ip.is_loopback() || local.contains(&ip)
        });
        Ok(SampleBatch {
            taken_at: Instant::now(),
            samples,
            lost_records: self.stats().lost_records(),
            estimated: false,
            omitted: None,
        })
    }

    /// The DNS messages captured since the previous call (the first call:
    /// since the capture opened). Always `Some`: a capture sees DNS.
    fn take_dns_events(&mut self) -> Option<Vec<DnsEvent>> {
        Some(lock(&self.shared).dns.take())
    }

    fn sees_packets(&self) -> bool {
        true
    }

    /// The SYNs and resets captured since the previous call, each side
    /// marked local when it is loopback or one of this host's addresses.
    fn take_tcp_events(&mut self) -> Option<Vec<TcpEvent>> {
        // `read` refreshed the local addresses this tick.
        let mut events = std::mem::take(&mut lock(&self.shared).tcp_events);
        let local = |ip: IpAddr| ip.is_loopback() || self.local_ips.contains(&ip);
        for e in &mut events {
            e.src_local = local(e.src.ip());
            e.dst_local = local(e.dst.ip());
        }
        Some(events)
    }
}

impl Drop for PcapSource {
    fn drop(&mut self) {
        self.resolver.stop();
        drop(self.resolver_thread.take());
        self.stop.store(true, Ordering::Relaxed);
        // pcap_breakloop wakes a blocked pcap_next_ex (an eventfd on Linux,
        // libpcap ≥ 1.10) and stays armed if the thread is not blocked yet.
        self.breaker.breakloop();
        drop(self.thread.take());
    }
}
