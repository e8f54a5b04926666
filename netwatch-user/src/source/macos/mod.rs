//! The macOS source: per-socket byte counts from the tools every Mac ships,
//! `lsof` (which process holds which socket) joined with `nettop` (bytes
//! and RTT per flow), plus `netstat` for interface counters and TCP state
//! counts. It yields [`SocketSample`]s like every source; it never builds
//! wire rows and never reads anything but the tools' output.
//!
//! The parsers ([`lsof`], [`nettop`], [`netstat`]) and the join
//! ([`Correlator`]) are pure and compiled on every OS, so they are tested
//! everywhere; running the tools ([`MacTools`]' methods, `MacSource`) is
//! compiled for macOS only (and for tests, which run it against stand-in
//! scripts); the tools themselves run through [`crate::tool`].
//!
//! Counts are per socket since it opened ([`CountOrigin::SinceSocketOpen`]):
//! nettop's per-flow bytes are cumulative for the socket's life.
//!
//! [`SocketSample`]: crate::source::SocketSample
//! [`CountOrigin::SinceSocketOpen`]: crate::source::CountOrigin::SinceSocketOpen

use std::path::PathBuf;
use std::time::Duration;

use crate::tool::ToolError;

mod addr;
mod correlate;
#[cfg(test)]
mod fixtures;
mod lines;
pub mod lsof;
pub mod netstat;
pub mod nettop;
#[cfg(any(target_os = "macos", test))]
mod run;
#[cfg(test)]
mod tests;

pub use addr::normalize_tcp_state;
pub use correlate::{socket_id, Correlator};
pub use lines::LineCounts;
pub use lsof::{parse_lsof, LsofOutput, LsofSocket};
pub use netstat::{
    parse_netstat_interfaces, parse_netstat_tcp, NetstatInterfaces, TcpStateCounts,
};
pub use nettop::{parse_nettop, NettopFlow, NettopOutput, NettopProcess};
#[cfg(any(target_os = "macos", test))]
pub use run::MacSource;

/// `lsof` arguments: internet sockets, numeric hosts and ports, field output
/// with pid, command, protocol, type, TCP info and name.
pub const LSOF_ARGS: &[&str] = &["-i", "-n", "-P", "-F", "pcPtTn"];
/// `nettop` arguments: one sample (`-L 1`, CSV), numeric addresses (`-n`),
/// raw byte counts (`-x`). No `-m tcp`: UDP flows (QUIC, DNS) carry bytes too.
pub const NETTOP_ARGS: &[&str] = &["-L", "1", "-n", "-x"];
/// `netstat` arguments for interface counters.
pub const NETSTAT_INTERFACE_ARGS: &[&str] = &["-ibn"];
/// `netstat` arguments for TCP sockets by state.
pub const NETSTAT_TCP_ARGS: &[&str] = &["-an", "-p", "tcp"];

/// Where the tools are and how long each may take.
///
/// Absolute paths, not a `PATH` lookup: the agent often runs as root, and
/// must not run whatever `lsof` comes first in someone's `PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacTools {
    pub lsof: PathBuf,
    pub nettop: PathBuf,
    pub netstat: PathBuf,
    /// Per tool run. `nettop -L 1` takes one to four seconds on a busy Mac.
    pub timeout: Duration,
}

impl Default for MacTools {
    fn default() -> Self {
        Self {
            lsof: PathBuf::from("/usr/sbin/lsof"),
            nettop: PathBuf::from("/usr/bin/nettop"),
            netstat: PathBuf::from("/usr/sbin/netstat"),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a macOS tool gave nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum MacError {
    #[error(
        "running {tool}: not found (lsof, nettop and netstat ship with macOS at \
         /usr/sbin/lsof, /usr/bin/nettop, /usr/sbin/netstat; set the path if yours differs)"
    )]
    ToolMissing { tool: PathBuf },
    #[error("running {tool}: {error}")]
    Spawn {
        tool: PathBuf,
        error: std::io::Error,
    },
    #[error("running {tool}: no result within {timeout_ms} ms, killed it (raise the timeout on a busy host)")]
    Timeout { tool: PathBuf, timeout_ms: u64 },
    #[error("running {tool}: exited with {status}: {stderr}")]
    Failed {
        tool: PathBuf,
        status: String,
        stderr: String,
    },
    #[error("running {tool}: printed more than {limit_bytes} bytes, refusing to parse it")]
    TooMuchOutput { tool: PathBuf, limit_bytes: u64 },
    #[error(
        "reading {tool} output: none of its {lines} lines had the expected form \
         ({malformed} malformed); has its output format changed?"
    )]
    Unrecognized {
        tool: PathBuf,
        lines: usize,
        malformed: usize,
    },
}

impl From<ToolError> for MacError {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::NotFound { program } => MacError::ToolMissing { tool: program },
            ToolError::NotAbsolute { program } => MacError::Spawn {
                error: std::io::Error::other("not an absolute path (tools are never looked up in PATH)"),
                tool: program,
            },
            ToolError::Unsafe { program, uid, mode } => MacError::Spawn {
                error: std::io::Error::other(format!(
                    "owned by uid {uid} with mode {mode:o}; must be root's and writable by nobody else"
                )),
                tool: program,
            },
            ToolError::Spawn { program, error: source }
            | ToolError::Wait { program, error: source }
            | ToolError::Read { program, error: source } => MacError::Spawn {
                tool: program,
                error: source,
            },
            ToolError::Timeout { program, timeout } => MacError::Timeout {
                tool: program,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            },
            ToolError::TooMuchOutput {
                program,
                limit_bytes,
            } => MacError::TooMuchOutput {
                tool: program,
                limit_bytes,
            },
        }
    }
}
