//! Exact per-process network bandwidth for Linux (eBPF, with `ss`,
//! libpcap and `/proc` fallbacks) and macOS (`nettop`, `lsof`), as
//! [`wire::Snapshot`]s: the NetWatch Cloud wire format of netwatch-sdk
//! 0.3.2, which this crate implements.
//!
//! # Quick start
//!
//! One snapshot as JSON (root, or the capabilities in the table below):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // The best source this host allows: eBPF, else `ss`, else libpcap.
//!     let mut collector = netwatch::Collector::builder().build()?;
//!     println!("counting with {}", collector.info().source);
//!     std::thread::sleep(Duration::from_secs(1));
//!     // The interval since build(); the source settles first.
//!     let snapshot = collector.finish();
//!     for p in snapshot.processes.iter().flatten() {
//!         // Process names are anyone's to choose: escape them.
//!         let name = netwatch::text::visible(&p.process_name, 32);
//!         eprintln!("{name}: {} bytes in, {} out", p.rx_bytes, p.tx_bytes);
//!     }
//!     println!("{}", serde_json::to_string(&snapshot)?);
//!     Ok(())
//! }
//! ```
//!
//! Host metrics need no privilege at all ([`host::Host`]):
//!
//! ```
//! let mut host = netwatch::host::Host::new();
//! let snap = host.snapshot();
//! assert!(snap.processes.is_none()); // process rows need a Collector
//! ```
//!
//! A program that stores or sends its snapshots, with
//! `CollectorBuilder::pin`, takes each with [`Collector::collect`] and
//! calls [`Collector::kept`] once it is safe: a restart after a lost
//! snapshot then counts its bytes again. [`Collector::problems`] says what
//! could not be read for the latest snapshot.
//!
//! The pieces alone: [`host`] (one-shot host collectors: interfaces, TCP
//! states, connections, CPU and memory, disks) and [`intel`] (the alert
//! detectors and DNS analytics, fed with events you give them).
//!
//! More in `examples/`: `snapshot_json` (the above), `host_metrics`,
//! `snapshot_stream` (an iterator of snapshots), `alert_thresholds`,
//! `intel_events` (the detectors fed by hand), `tokio_ebpf` (a
//! `futures_core::Stream` in a tokio program, feature `tokio`).
//!
//! # What each mode needs and gives
//!
//! | [`Mode`] | counts | needs (capabilities) | kernel / tools |
//! |---|---|---|---|
//! | `Ebpf` | every byte of every TCP and UDP socket, exact, closed sockets included | `CAP_BPF`, `CAP_PERFMON`, `CAP_DAC_READ_SEARCH`, `CAP_SYS_PTRACE` | Linux ≥ 5.8 with BTF; fentry, kprobe or tracepoint tier, whichever loads |
//! | `Ss` | TCP exact (`ss -i` counters); sockets that close between two reads are read from their destroy event | `CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH` | `ss` (iproute2) |
//! | `Pcap` | packets on the wire joined to the socket table (what a capture sees: no loopback offloads, no drops) | `CAP_NET_RAW`, `CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH` | libpcap |
//! | `Proc` | connections from `/proc/net`, bytes **estimated** from interface counters | `CAP_SYS_PTRACE`, `CAP_DAC_READ_SEARCH` | — |
//! | `Auto` | eBPF, else `ss`, else libpcap (those compiled in; `Proc` in a build with none); [`Collector::info`] says why | | macOS: `nettop` and `lsof` |
//!
//! A missing capability is refused before anything is loaded, as
//! [`Error::PermissionDenied`] naming what is missing. Beside eBPF and
//! `ss`, a DNS-only capture (libpcap, `port 53`, `CAP_NET_RAW`) fills
//! `dns_analytics` (`CollectorBuilder::dns_capture`, feature `pcap`).
//!
//! | platform | process rows | host metrics |
//! |---|---|---|
//! | Linux | all modes | interfaces, TCP states, CPU, memory, swap, load, disks (`/proc`, `/sys`) |
//! | macOS | `nettop` + `lsof` (`Auto`) | interfaces and TCP states (`netstat`) |
//!
//! How this maps to netwatch-sdk's collectors, function by function:
//! `docs/sdk.md` in the repository.
//!
//! # Cargo features
//!
//! Pay for what you use: with `default-features = false` the crate is the
//! wire types, the host collectors and [`Collector`] with [`Mode::Proc`],
//! built on stable Rust with no BPF toolchain and no libpcap.
//!
//! | feature | adds | needs |
//! |---|---|---|
//! | `ebpf` (default) | [`Mode::Ebpf`], pins (`CollectorBuilder::pin`, `unpin`), tiers | crates `aya`, `aya-log`, `btf-rs`; the BPF object shipped with the crate (no toolchain); Linux ≥ 5.8 with BTF; `CAP_BPF` + `CAP_PERFMON` at run time |
//! | `pcap` (default) | [`Mode::Pcap`], the DNS capture (`CollectorBuilder::dns_capture`, `CollectorBuilder::interface`) | crate `pcap`: links the system's libpcap (`libpcap-dev` to build); `CAP_NET_RAW` at run time |
//! | `ss` (default) | [`Mode::Ss`] | no crate; iproute2's `ss` at run time |
//! | `macos` (default) | the macOS process rows (`nettop` + `lsof`, what `Auto` opens there) | no crate; macOS only (nothing on Linux) |
//! | `tokio` (default) | `Collector::into_stream` (a `Stream` of snapshots) | crates `tokio` (its timer), `futures-core` |
//! | `agent` (default) | the `netwatch-agent` binary's own parts (not an API) | `clap`, `toml`, `hyper`, `prometheus-client`, `ureq` (rustls), `ratatui`, `crossterm`, `env_logger`, `tokio` |
//!
//! A mode whose feature is off is refused at run time
//! ([`Error::Unsupported`], naming the feature), so code asking for it
//! compiles against every build; builder methods that only mean something
//! with a feature exist only with it (marked on docs.rs).

// docs.rs (`--cfg docsrs`): each item says which Cargo feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

// The public API: what is declared `pub` here and re-exported below.
pub mod host;
pub mod intel;
pub mod text;

mod collector;
mod error;

// The agent's own parts (`netwatch-agent`: its configuration, sinks, tick
// loop, least privilege). Public for the agent binary only: not an API,
// not covered by semver, hidden from the docs; their doc comments are for
// maintainers and link to the private modules they build on.
macro_rules! agent_part {
    ($($(#[$m:meta])* mod $name:ident;)*) => {$(
        $(#[$m])*
        #[doc(hidden)]
        #[allow(rustdoc::private_intra_doc_links)]
        pub mod $name;
    )*};
}

agent_part! {
    #[cfg(feature = "agent")]
    mod agent;
    #[cfg(feature = "agent")]
    mod config;
    // Not agent-only: the sources' start checks and the supervisor's
    // watchdog use them.
    #[cfg(target_os = "linux")]
    mod privilege;
    #[cfg(target_os = "linux")]
    mod sd_notify;
    #[cfg(feature = "agent")]
    mod secrets;
    #[cfg(feature = "agent")]
    mod sink;
}

/// The crate's inner modules: private, except to the crate's own tests,
/// benchmarks and fuzz targets, which turn on the `internals` feature (a
/// dev-dependency of the crate on itself; never for embedders).
macro_rules! internal {
    ($($(#[$m:meta])* mod $name:ident;)*) => {$(
        $(#[$m])*
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$m])*
        #[cfg(not(feature = "internals"))]
        // What only the tests reach (the macOS parsers on Linux, test
        // clocks, inspection methods) is unused in this build.
        #[allow(dead_code, unused_imports)]
        mod $name;
    )*};
}

internal! {
    mod alerts;
    mod attribution;
    mod bounded_io;
    mod clock;
    mod continuity;
    mod counter;
    mod drops;
    mod engine;
    mod error_chain;
    mod estimate;
    mod files;
    mod health;
    mod net;
    mod procinfo;
    mod snapshot;
    mod source;
    mod supervise;
    mod tool;
}
#[cfg(all(feature = "fuzzing", feature = "ebpf", target_os = "linux"))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod root_check;

#[cfg(feature = "tokio")]
pub use collector::SnapshotStream;
#[cfg(all(target_os = "linux", feature = "ebpf"))]
pub use collector::{unpin, UnpinError, Unpinned};
pub use collector::{
    AlertConfig, Collector, CollectorBuilder, HealthConfig, Mode, Problem, Snapshots,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PROCESSES,
};
pub use continuity::Continuity;
pub use error::{Cause, Error};
/// The NetWatch Cloud wire format (netwatch-sdk 0.3.2's `Snapshot` and
/// every type in it), as the collector emits it.
pub use netwatch_common::wire;
/// The eBPF hook tiers ([`CollectorBuilder::ebpf_tier`]).
#[cfg(all(target_os = "linux", feature = "ebpf"))]
pub use source::ebpf::{tier::Tier, TierChoice};
