//! netwatch: per-process network bandwidth, counted in the kernel.
//!
//! Data flows one way: a [`source`] reads per-socket counters, [`attribution`]
//! turns them into the interval's rows, [`snapshot`] assembles the wire
//! `Snapshot` with the host collectors of [`procinfo`], and the agent hands
//! each snapshot, as a value, to every [`sink`]. Sources that read an
//! external tool (`ss`, the macOS tools) run it through [`tool`]. The
//! [`alerts`] detectors are fed each tick's rows and the source's events;
//! the opt-in [`health`] probes run on their own thread. Every thread besides
//! the tick is a [`supervise::Worker`]: restarted when it fails, or the agent
//! exits.

pub mod agent;
pub mod alerts;
pub mod attribution;
pub mod bounded_io;
pub mod clock;
pub mod config;
pub mod counter;
pub mod drops;
pub mod error_chain;
pub mod estimate;
pub mod files;
#[cfg(all(feature = "fuzzing", target_os = "linux"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod net;
#[cfg(target_os = "linux")]
pub mod privilege;
pub mod procinfo;
#[cfg(target_os = "linux")]
pub mod sd_notify;
pub mod secrets;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod supervise;
pub mod text;
pub mod tool;
