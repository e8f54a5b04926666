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
    Vm(xtask::vm::cli::VmArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Vm(args) => xtask::vm::cli::run(args),
    }
}
