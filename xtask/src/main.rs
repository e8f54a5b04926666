//! `cargo xtask`: the project's developer commands. This file only parses the
//! command line and dispatches; each command's logic lives in its module.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "netwatch developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the BPF toolchain and test dependencies (apt + crates.io); idempotent.
    Setup,
    /// Build the agent and run it as root with the live table.
    Run(xtask::run::RunArgs),
    /// The whole test suite: lint, host tests, macOS check, guest kernel tests.
    Test(xtask::test::TestArgs),
    /// Measurements: BPF per-event cost on the host and guest tiers.
    Bench(xtask::bench::BenchArgs),
    /// A long run under churn with a flapping ingest endpoint: RSS, fds and
    /// threads over time, lost records, bytes against truth (RELIABILITY.md).
    Soak(xtask::soak::SoakArgs),
    /// Build the cargo-fuzz targets (fuzz/) and run each for --time SECS over
    /// its seed corpus; prints target, seconds, executions, crashes.
    Fuzz(xtask::fuzz::FuzzArgs),
    /// Run binaries in a QEMU guest on Debian's stock kernel.
    Vm(xtask::vm::cli::VmArgs),
    /// The library checks of `cargo xtask test` alone: the shipped BPF
    /// object, the feature combinations, the examples, cargo package, and
    /// a crate outside the workspace that depends on netwatch (default
    /// features and none).
    Library {
        /// Only these checks (bpf-object, features, examples, package,
        /// scratch); all when none is named.
        only: Vec<String>,
    },
    /// Rebuild the BPF object shipped with the netwatch crate
    /// (netwatch-user/bpf/) from netwatch-ebpf and record its sources;
    /// with --check, only check it matches them (as `cargo xtask test` does).
    BpfObject {
        /// Check, do not write.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => xtask::setup::ensure()
            .map(|t| eprintln!("xtask setup: ready (BPF toolchain: {})", t.rustup_name())),
        Command::Run(args) => xtask::run::run(args),
        Command::Test(args) => xtask::test::run(args),
        Command::Bench(args) => xtask::bench::run(args),
        Command::Soak(args) => xtask::soak::run(args),
        Command::Fuzz(args) => xtask::fuzz::run(args).map(|_| ()),
        Command::Vm(args) => xtask::vm::cli::run(args),
        Command::Library { only } => xtask::library::checks_named(&only).map(|t| {
            for (name, d) in t {
                eprintln!("  {name:<34} {d:.1?}");
            }
        }),
        Command::BpfObject { check: false } => xtask::bpf_object::update(),
        Command::BpfObject { check: true } => xtask::bpf_object::check(),
    }
}
