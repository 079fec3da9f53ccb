//! `palisade`: wiring only; each subsystem lives in its own module, the command line in `cli`.
mod agent;
mod benchmark;
mod btf;
mod cli;
mod config;
mod control;
mod doctor;
mod events;
mod features;
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

fn main() -> std::process::ExitCode {
    cli::main()
}
