//! The `palisade` program as a library: every subsystem is a private module here; the binary
//! (`main.rs`) only calls [`main`]. The one other public module, [`fuzzing`], hands the
//! parsers that read untrusted bytes (cgroupfs and procfs files, DNS payloads, BTF, control
//! socket subscriptions) to the cargo-fuzz targets in `fuzz/`.
mod agent;
mod benchmark;
mod btf;
mod cli;
mod config;
mod control;
mod doctor;
mod events;
mod features;
pub mod fuzzing;
mod identity;
mod kernel;
mod logging;
mod metrics;
mod model;
mod net;
mod otlp;
mod otlp_metrics;
mod policy;
mod procs;
mod resources;
mod server;
mod state;
mod tracefs;

/// Runs the command line (`palisade agent|run|policy|events|doctor`) and returns its status.
pub fn main() -> std::process::ExitCode {
    cli::main()
}
