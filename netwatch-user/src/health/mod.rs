//! Health probes: gateway and DNS reachability for the snapshot's `health`
//! ([`HealthMetric`], as netwatch-sdk 0.3.2 defines it: average RTT and
//! loss of the latest probe round, and a 60-slot RTT history with `None`
//! for a round with no answer). The gateway is probed with ICMP echo sent
//! by the agent itself ([`icmp`]), the DNS server with a real query
//! ([`dns_probe`]); targets come from the host ([`targets`]) unless the
//! configuration names them.
//!
//! Probing is opt-in (`--health` or `[health] enabled = true`): an agent
//! that sends packets on its own must be something an operator chose. The
//! probes run on their own thread and cadence, so a snapshot never waits on
//! one: [`Prober::latest`] only copies the last result. It never shells out
//! to `ping`, and sends nothing but echo requests and DNS queries to the
//! two targets.

pub mod dns_probe;
#[cfg(target_os = "linux")]
pub mod icmp;
pub mod targets;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use netwatch_common::wire::HealthMetric;

/// Slots of RTT history (netwatch-sdk `RTT_HISTORY_LEN`).
pub const RTT_HISTORY_LEN: usize = 60;
/// Seconds between probe rounds when not configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// The name the DNS probe asks for (root NS) when not configured.
pub const DEFAULT_QUERY_NAME: &str = ".";

/// What to probe and how often.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Time between two probe rounds (default 30 s).
    pub interval: Duration,
    /// Echo requests (and DNS queries) per round (SDK: `ping -c 3`).
    pub probes: u32,
    /// How long each waits for its answer (SDK: `-W 1`).
    pub timeout: Duration,
    /// Gateway to probe; `None`: the host's default gateway.
    pub gateway: Option<IpAddr>,
    /// DNS server to query (port 53 unless given); `None`: the host's.
    pub dns_server: Option<SocketAddr>,
    /// The name the DNS probe asks for (default `.`, the root's NS).
    pub dns_query_name: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_INTERVAL,
            probes: 3,
            timeout: Duration::from_secs(1),
            gateway: None,
            dns_server: None,
            dns_query_name: DEFAULT_QUERY_NAME.into(),
        }
    }
}

/// The outcome of probing one target `probes` times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Mean RTT of the answered probes, milliseconds; `None` if none answered.
    pub rtt_ms: Option<f64>,
    /// Unanswered probes, percent.
    pub loss_pct: f64,
}

impl Round {
    /// A round from each probe's RTT (`None`: unanswered).
    pub fn from_rtts(rtts: &[Option<Duration>]) -> Self {
        let got: Vec<f64> = rtts
            .iter()
            .flatten()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        let n = rtts.len().max(1) as f64;
        Self {
            rtt_ms: (!got.is_empty()).then(|| got.iter().sum::<f64>() / got.len() as f64),
            loss_pct: (rtts.len() - got.len()) as f64 / n * 100.0,
        }
    }

    /// A round that could not probe at all (no socket, no route): all lost.
    pub fn failed() -> Self {
        Self {
            rtt_ms: None,
            loss_pct: 100.0,
        }
    }
}

/// One target's latest round and its RTT history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Target {
    pub ip: Option<IpAddr>,
    pub last: Option<Round>,
    pub history: VecDeque<Option<f64>>,
}

impl Target {
    /// Record a round; the history keeps the last [`RTT_HISTORY_LEN`].
    pub fn record(&mut self, ip: Option<IpAddr>, round: Option<Round>) {
        self.ip = ip;
        self.last = round;
        self.history.push_back(round.and_then(|r| r.rtt_ms));
        while self.history.len() > RTT_HISTORY_LEN {
            self.history.pop_front();
        }
    }
}

/// Both targets; becomes the wire [`HealthMetric`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthState {
    pub gateway: Target,
    pub dns: Target,
    pub rounds: u64,
}

impl HealthState {
    /// The wire form: `None` before the first round.
    pub fn metric(&self) -> Option<HealthMetric> {
        (self.rounds > 0).then(|| HealthMetric {
            gateway_ip: self.gateway.ip.map(|i| i.to_string()),
            gateway_rtt_ms: self.gateway.last.and_then(|r| r.rtt_ms),
            gateway_loss_pct: self.gateway.last.map(|r| r.loss_pct),
            dns_ip: self.dns.ip.map(|i| i.to_string()),
            dns_rtt_ms: self.dns.last.and_then(|r| r.rtt_ms),
            dns_loss_pct: self.dns.last.map(|r| r.loss_pct),
            gateway_rtt_history: Some(self.gateway.history.iter().copied().collect()),
            dns_rtt_history: Some(self.dns.history.iter().copied().collect()),
        })
    }
}

/// Probe `gateway` with ICMP echo `cfg.probes` times.
pub fn probe_gateway(gateway: IpAddr, cfg: &HealthConfig) -> Round {
    #[cfg(target_os = "linux")]
    {
        let mut echo = match icmp::Echo::open(gateway) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("health probe: {e}");
                return Round::failed();
            }
        };
        let rtts: Vec<Option<Duration>> = (0..cfg.probes)
            .map(|seq| match echo.ping(seq as u16, cfg.timeout) {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("health probe: {e}");
                    None
                }
            })
            .collect();
        Round::from_rtts(&rtts)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (gateway, cfg);
        log::warn!("health probe: ICMP echo is implemented on Linux only");
        Round::failed()
    }
}

/// Query `server` `cfg.probes` times.
pub fn probe_dns(server: SocketAddr, cfg: &HealthConfig) -> Round {
    let rtts: Vec<Option<Duration>> = (0..cfg.probes)
        .map(
            |_| match dns_probe::probe(server, &cfg.dns_query_name, cfg.timeout) {
                Ok(r) => r,
                Err(e) => {
                    log::debug!("health DNS probe of {server}: {e}");
                    None
                }
            },
        )
        .collect();
    Round::from_rtts(&rtts)
}

/// One round over both targets (configured, else detected), into `state`.
pub fn probe_round(cfg: &HealthConfig, state: &mut HealthState) {
    let gw = cfg.gateway.or_else(targets::detect_gateway);
    let dns = cfg
        .dns_server
        .or_else(|| targets::detect_dns().map(|ip| SocketAddr::new(ip, 53)));
    state
        .gateway
        .record(gw, gw.map(|ip| probe_gateway(ip, cfg)));
    state
        .dns
        .record(dns.map(|s| s.ip()), dns.map(|s| probe_dns(s, cfg)));
    state.rounds += 1;
}

#[derive(Debug, Default)]
struct Shared {
    state: HealthState,
    stop: bool,
}

/// The probe thread, supervised as `health` (restarted after a failure:
/// it owns nothing but its history, which it keeps). Dropping it stops the
/// thread (promptly: it waits on a condition variable, not a sleep).
#[derive(Debug)]
pub struct Prober {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<crate::supervise::Worker>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    crate::supervise::lock(m, "health probe results")
}

impl Prober {
    /// Start probing: the first round at once, then one per `cfg.interval`.
    pub fn start(cfg: HealthConfig) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let s = shared.clone();
        // Kept across restarts: a restarted prober goes on with its history.
        let mut state = HealthState::default();
        let thread = crate::supervise::Worker::spawn(
            "health",
            "netwatch-health",
            crate::supervise::Policy::Restart,
            move || loop {
                crate::supervise::fault::point("health");
                probe_round(&cfg, &mut state);
                let (m, cv) = &*s;
                let mut g = lock(m);
                g.state = state.clone();
                let (g, _) = cv
                    .wait_timeout_while(g, cfg.interval, |g| !g.stop)
                    .unwrap_or_else(|e| e.into_inner());
                if g.stop {
                    return Ok(());
                }
            },
        )?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The latest result (never waits for a probe).
    pub fn latest(&self) -> Option<HealthMetric> {
        lock(&self.shared.0).state.metric()
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        lock(&self.shared.0).state.rounds
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        lock(&self.shared.0).stop = true;
        self.shared.1.notify_all();
        // Stops restarts and joins.
        drop(self.thread.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_average_answers_and_count_loss() {
        let ms = |m| Some(Duration::from_millis(m));
        let r = Round::from_rtts(&[ms(2), None, ms(4)]);
        assert_eq!(r.rtt_ms, Some(3.0));
        assert!((r.loss_pct - 100.0 / 3.0).abs() < 1e-9);
        let r = Round::from_rtts(&[None, None, None]);
        assert_eq!((r.rtt_ms, r.loss_pct), (None, 100.0));
        assert_eq!(Round::from_rtts(&[ms(1)]).loss_pct, 0.0);
    }

    #[test]
    fn history_keeps_sixty_slots_with_none_for_failed_rounds() {
        let mut s = HealthState::default();
        assert_eq!(s.metric(), None, "nothing before the first round");
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..65 {
            let round = if i % 2 == 0 {
                Round::from_rtts(&[Some(Duration::from_millis(i))])
            } else {
                Round::failed()
            };
            s.gateway.record(Some(gw), Some(round));
            s.dns.record(None, None);
            s.rounds += 1;
        }
        let m = s.metric().unwrap();
        let h = m.gateway_rtt_history.unwrap();
        assert_eq!(h.len(), 60);
        assert_eq!(h[0], None, "round 5 failed");
        assert_eq!(h[1], Some(6.0));
        assert_eq!(m.gateway_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(m.gateway_rtt_ms, Some(64.0));
        assert_eq!(m.gateway_loss_pct, Some(0.0));
        assert_eq!(m.dns_ip, None);
        assert_eq!((m.dns_rtt_ms, m.dns_loss_pct), (None, None));
        assert_eq!(m.dns_rtt_history.unwrap().len(), 60);
    }
}
