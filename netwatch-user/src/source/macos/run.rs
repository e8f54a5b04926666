//! Runs lsof, nettop and netstat and hands their output to the parsers: the
//! only part of the macOS source that touches the system. Compiled for macOS,
//! and for tests, which point it at stand-in scripts.

use std::path::Path;
use std::thread;
use std::time::Instant;

use anyhow::anyhow;

use super::{
    parse_lsof, parse_netstat_interfaces, parse_netstat_tcp, parse_nettop, Correlator, LineCounts,
    LsofOutput, MacError, MacTools, NetstatInterfaces, NettopOutput, TcpStateCounts, LSOF_ARGS,
    NETSTAT_INTERFACE_ARGS, NETSTAT_TCP_ARGS, NETTOP_ARGS,
};
use crate::source::{SampleBatch, SocketSource};
use crate::tool::{ToolCommand, ToolOutput};

impl MacTools {
    /// Run `lsof -i -n -P -F pcPtTn` (in the C locale, so that every
    /// non-ASCII byte of a command name comes escaped) and parse it.
    ///
    /// lsof exits 1 both when it lists nothing and when it could not look
    /// into some processes; whatever it listed is still good, so only an
    /// empty listing with complaints on stderr is a failure.
    pub fn lsof_sockets(&self) -> Result<LsofOutput, MacError> {
        let out = ToolCommand::new(&self.lsof, LSOF_ARGS, self.timeout)
            .env(&[("LC_ALL", "C")])
            .run()?;
        if !out.status.success() && out.stdout.is_empty() && !out.stderr.is_empty() {
            return Err(failed(&self.lsof, &out));
        }
        if !out.stderr.is_empty() {
            log::debug!("{}: {}", self.lsof.display(), out.stderr_excerpt());
        }
        let parsed = parse_lsof(&out.stdout);
        recognized(&self.lsof, &parsed.lines, parsed.lines.used > 0)?;
        Ok(parsed)
    }

    /// Run `nettop -L 1 -n -x` and parse it.
    pub fn nettop_flows(&self) -> Result<NettopOutput, MacError> {
        let out = self.run_ok(&self.nettop, NETTOP_ARGS)?;
        let parsed = parse_nettop(&String::from_utf8_lossy(&out.stdout));
        // nettop prints its header even when there is nothing to list.
        let l = &parsed.lines;
        recognized(&self.nettop, l, l.header > 0 || l.used > 0)?;
        Ok(parsed)
    }

    /// Run `netstat -ibn` and parse it.
    pub fn interfaces(&self) -> Result<NetstatInterfaces, MacError> {
        let out = self.run_ok(&self.netstat, NETSTAT_INTERFACE_ARGS)?;
        let parsed = parse_netstat_interfaces(&String::from_utf8_lossy(&out.stdout));
        recognized(&self.netstat, &parsed.lines, parsed.lines.used > 0)?;
        Ok(parsed)
    }

    /// Run `netstat -an -p tcp` and parse it.
    pub fn tcp_states(&self) -> Result<TcpStateCounts, MacError> {
        let out = self.run_ok(&self.netstat, NETSTAT_TCP_ARGS)?;
        let parsed = parse_netstat_tcp(&String::from_utf8_lossy(&out.stdout));
        let l = &parsed.lines;
        recognized(&self.netstat, l, l.header > 0 || l.used > 0)?;
        Ok(parsed)
    }

    fn run_ok(&self, tool: &Path, args: &[&str]) -> Result<ToolOutput, MacError> {
        let out = ToolCommand::new(tool, args, self.timeout).run()?;
        if !out.status.success() {
            return Err(failed(tool, &out));
        }
        Ok(out)
    }
}

fn failed(tool: &Path, out: &ToolOutput) -> MacError {
    MacError::Failed {
        tool: tool.to_path_buf(),
        status: out.status.to_string(),
        stderr: out.stderr_excerpt(),
    }
}

/// Output with lines in it of which none had the expected form is a
/// changed format, not an idle host.
fn recognized(tool: &Path, lines: &LineCounts, looks_right: bool) -> Result<(), MacError> {
    if looks_right || lines.malformed == 0 {
        return Ok(());
    }
    Err(MacError::Unrecognized {
        tool: tool.to_path_buf(),
        lines: lines.total,
        malformed: lines.malformed,
    })
}

/// The macOS [`SocketSource`]: lsof and nettop, run side by side on each
/// read, joined by the [`Correlator`].
#[derive(Debug)]
pub struct MacSource {
    tools: MacTools,
    correlator: Correlator,
    lost_records: u64,
}

impl MacSource {
    /// A source using `tools`. Fails when lsof or nettop is not there.
    pub fn new(tools: MacTools) -> Result<Self, MacError> {
        for tool in [&tools.lsof, &tools.nettop] {
            if !tool.is_file() {
                return Err(MacError::ToolMissing { tool: tool.clone() });
            }
        }
        Ok(Self {
            tools,
            correlator: Correlator::new(),
            lost_records: 0,
        })
    }

    /// The tools this source runs (netstat included, for the host collectors).
    pub fn tools(&self) -> &MacTools {
        &self.tools
    }
}

impl SocketSource for MacSource {
    fn name(&self) -> &'static str {
        "macos"
    }

    /// Runs lsof and nettop at once. Fails when either fails: a read
    /// without nettop's counters would zero every socket, which attribution
    /// would take for new sockets and count again in full on the next read.
    fn read(&mut self) -> anyhow::Result<SampleBatch> {
        let started = Instant::now();
        let tools = &self.tools;
        let (lsof, nettop) = thread::scope(|s| {
            let lsof = s.spawn(|| tools.lsof_sockets());
            let nettop = tools.nettop_flows();
            (lsof.join(), nettop)
        });
        let lsof = lsof.map_err(|_| anyhow!("macOS source: the lsof thread panicked"))??;
        let nettop = nettop?;
        let taken_at = Instant::now();

        let lost = lsof.lines.malformed + lsof.incomplete_records + nettop.lines.malformed;
        self.lost_records = self.lost_records.saturating_add(lost as u64);
        let samples = self.correlator.join(&lsof, &nettop);
        log::debug!(
            "macos: {} lsof sockets, {} nettop flows -> {} samples in {:?} ({} lines lost)",
            lsof.sockets.len(),
            nettop.flows.len(),
            samples.len(),
            taken_at.duration_since(started),
            lost
        );
        Ok(SampleBatch {
            taken_at,
            samples,
            lost_records: self.lost_records,
            estimated: false,
            omitted: None,
        })
    }
}
