//! The project's developer tasks as a library, so that one task can call
//! another (`cargo xtask test` runs guest tests through [`vm::run_in_vm`]).
//! `main.rs` only parses the command line and dispatches here.

pub mod bench;
pub mod bpf_object;
pub mod fuzz;
pub mod host;
pub mod library;
pub mod run;
pub mod scratch;
pub mod setup;
pub mod soak;
pub mod test;
pub mod vm;
