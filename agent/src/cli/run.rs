//! What each subcommand does, and the exit status it ends with.
use std::process::ExitCode;

use clap::Parser as _;

use super::{AgentArgs, Cli, Command, DebugCommand, Output, PolicyCommand};
use crate::{
    agent, benchmark,
    config::{Config, ConfigError, NodeName, Pattern},
    doctor, features, logging, policy,
};

/// Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration (as clap uses).
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// Parses the command line and runs the subcommand; the process exit status.
pub fn main() -> ExitCode {
    if let Some(args) = run_args() {
        return launch(&args);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `palisade run` keeps 0-124 for the workload's own status (as Docker does)
            let run = std::env::args().nth(1).as_deref() == Some("run");
            if run && e.use_stderr() {
                let _ = e.print();
                return ExitCode::from(palisade_launcher::EXIT_USAGE);
            }
            e.exit()
        }
    };
    match cli.command {
        Command::Agent(args) => agent_main(args),
        Command::Doctor { output } => doctor_main(output),
        Command::Debug(DebugCommand::ScrapeBench {
            containers,
            scrapes,
        }) => match benchmark::run(containers, scrapes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(EXIT_FAILURE, e),
        },
        Command::Debug(DebugCommand::EmptyHooks { ready_file, hook }) => {
            let hooks = match hook {
                super::EmptyHookPair::RawTracepoint => benchmark::EmptyHooks::RawPair,
                super::EmptyHookPair::RawTracepointExit => benchmark::EmptyHooks::RawExit,
                super::EmptyHookPair::Fentry => benchmark::EmptyHooks::Fentry,
            };
            match benchmark::empty_hooks(&ready_file, hooks) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_FAILURE, e),
            }
        }
        Command::Debug(DebugCommand::Completions { shell }) => {
            use std::io::Write as _;
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // into memory first: clap_complete panics when its writer fails (a closed pipe)
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "palisade", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_FAILURE, format!("cannot write the completions: {e}")),
            }
        }
        Command::Debug(DebugCommand::ManPages { dir }) => match super::man::write_all(&dir) {
            Ok(n) => {
                println!("{n} man pages in {}", dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_FAILURE, e),
        },
        Command::Events(args) => {
            match super::events::run(&args.socket, args.containers, args.types) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(EXIT_FAILURE, e),
            }
        }
        Command::Run(args) => launch(&args),
        Command::Policy(cmd) => policy_main(cmd),
    }
}

/// `palisade run`'s command line alone, parsed without the rest of the tree.
#[derive(clap::Parser)]
#[command(name = "palisade", version, propagate_version = true)]
struct RunOnly {
    #[command(subcommand)]
    command: RunOnlyCommand,
}

#[derive(clap::Subcommand)]
enum RunOnlyCommand {
    Run(palisade_launcher::RunArgs),
}

/// The arguments of `palisade run` when the command line is a valid one, parsed by a tree that
/// holds only `run`. clap builds every subcommand's arguments before it parses (the agent's,
/// the policy and event commands'): with the whole tree a launch that fails right after the
/// parse took about 0.15 ms and 20 page faults more (`perf stat -r 300`, three interleaved
/// pairs). `None` for any other command line, and for anything the small tree does not accept
/// (an error, `--help`, `--version`): the whole tree then parses it again, so what the user
/// reads is the whole tree's (the help with its examples, the error with its usage).
fn run_args() -> Option<palisade_launcher::RunArgs> {
    run_args_from(std::env::args_os())
}

fn run_args_from(
    argv: impl IntoIterator<Item = std::ffi::OsString>,
) -> Option<palisade_launcher::RunArgs> {
    let argv: Vec<std::ffi::OsString> = argv.into_iter().collect();
    if argv.get(1)? != "run" {
        return None;
    }
    match RunOnly::try_parse_from(argv) {
        Ok(RunOnly {
            command: RunOnlyCommand::Run(args),
        }) => Some(args),
        Err(_) => None,
    }
}

fn launch(args: &palisade_launcher::RunArgs) -> ExitCode {
    match palisade_launcher::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(e.exit_code(), e),
    }
}

fn policy_main(cmd: PolicyCommand) -> ExitCode {
    use super::policy as cli;
    use PolicyCommand as P;
    let r = match cmd {
        P::Check { files } => return ExitCode::from(cli::check(&files)),
        P::Status { socket, output } => cli::status(&socket, output),
        P::Mode { name, mode, socket } => cli::mode(&socket, &name, &mode),
        P::Reload { socket } => cli::reload(&socket),
        P::Learn {
            container,
            duration,
            format,
            output,
            name,
            socket,
        } => cli::learn(&cli::LearnArgs {
            socket: &socket,
            container: &container,
            duration,
            format,
            output: output.as_deref(),
            name: name.as_deref(),
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_FAILURE, e),
    }
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("palisade: error: {msg}");
    ExitCode::from(code)
}

/// The configuration from the file (or defaults) with command-line overrides applied.
fn effective_config(args: &AgentArgs) -> Result<Config, ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(path) = &args.control_socket {
        config.control_socket = path.clone();
    }
    if let Some(url) = &args.otlp_endpoint {
        config.otlp.endpoint = Some(url.clone());
        config.otlp.event_types().map_err(|e| ConfigError::Flag {
            flag: "--otlp-endpoint",
            source: e.into(),
        })?;
    }
    if let Some(name) = &args.node_name {
        config.node_name = Some(NodeName::new(name).map_err(|e| ConfigError::Flag {
            flag: "--node-name",
            source: e.into(),
        })?);
    }
    if config.node_name.is_none() {
        config.node_name = Some(NodeName::from_hostname());
    }
    if let Some(events) = &args.events {
        config.events.output = Some(events.clone());
    }
    if let Some(format) = args.log_format {
        config.log_format = format;
    }
    if !args.cgroups.is_empty() {
        config.syscalls.cgroups = args
            .cgroups
            .iter()
            .map(|g| {
                Pattern::new(g).map_err(|e| ConfigError::Flag {
                    flag: "--cgroup",
                    source: e.into(),
                })
            })
            .collect::<Result<_, _>>()?;
    }
    Ok(config)
}

fn agent_main(args: AgentArgs) -> ExitCode {
    if args.print_config {
        print!("{}", Config::DEFAULT_YAML);
        return ExitCode::SUCCESS;
    }
    let config = match effective_config(&args) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if args.cleanup {
        return match policy::cleanup(&config.policy) {
            Ok(report) => {
                println!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(EXIT_FAILURE, e),
        };
    }
    if let Err(e) = policy::load_initial(&config.policy) {
        return fail(EXIT_USAGE, format!("policy files rejected:\n{e}"));
    }
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    logging::init(config.log_format);
    one_malloc_arena();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the async runtime: {e}")),
    };
    match runtime.block_on(agent::run(config, args.ready_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_FAILURE, e),
    }
}

fn doctor_main(output: Output) -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "palisade: warning: not root; most probes need CAP_BPF/CAP_SYS_ADMIN and will fail"
        );
    }
    let report = features::probe_all();
    match output {
        Output::Text => print!("{}", doctor::render(&report)),
        Output::Json => println!("{}", doctor::json(&report)),
    }
    ExitCode::from(doctor::exit_code(&report) as u8)
}

/// One glibc malloc arena for the whole agent, set before its threads start. By default every
/// thread that allocates gets an arena of its own, and memory freed in one is not reused by the
/// others: a collection built in one thread, rendered in another and freed in a third left the
/// agent at 113 MiB RSS with 1,000 containers, against 52 MiB with one arena
/// (`cargo xtask bench scale`). The agent allocates from few threads at a time, so the shared
/// arena's lock is not contended.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; it has no memory-safety preconditions.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<std::ffi::OsString> {
        line.split(' ').map(Into::into).collect()
    }

    /// The whole tree's parse of `line`, as the small tree's would be written.
    fn whole(line: &str) -> Result<String, clap::error::ErrorKind> {
        match Cli::try_parse_from(argv(line)) {
            Ok(Cli {
                command: Command::Run(args),
            }) => Ok(format!("{args:?}")),
            Ok(other) => panic!("{line}: not run: {other:?}"),
            Err(e) => Err(e.kind()),
        }
    }

    #[test]
    fn the_run_tree_parses_a_run_command_line_as_the_whole_tree_does() {
        for line in [
            "palisade run -- /bin/true",
            "palisade run",
            "palisade run --seccomp unconfined --rootfs /r -- /bin/true -x",
            "palisade run --name web --memory 64M --pids 10 --cpus 0.5 -- sh -c x",
            "palisade run --bundle /b --replicas 3",
            "palisade run --net host --hostname h --env A=1 --env B=2 --cwd / -- env",
            "palisade run --require-agent --agent-socket /s --policy /p.yaml -- /bin/true",
        ] {
            let small = run_args_from(argv(line)).map(|a| format!("{a:?}"));
            assert_eq!(small.as_deref(), whole(line).ok().as_deref(), "{line}");
            assert!(small.is_some(), "{line}: the small tree must take it");
        }
    }

    #[test]
    fn what_the_run_tree_does_not_take_is_left_to_the_whole_tree() {
        // errors, help and version: the whole tree prints them, with its usage and examples
        for line in [
            "palisade run /bin/true",
            "palisade run --bogus -- /bin/true",
            "palisade run --bundle /b --rootfs /r",
            "palisade run --replicas 0 -- /bin/true",
            "palisade run --help",
            "palisade run -h",
            "palisade run --version",
            "palisade agent",
            "palisade doctor",
            "palisade",
        ] {
            assert!(run_args_from(argv(line)).is_none(), "{line}");
        }
        for line in ["palisade run --help", "palisade run --bogus -- /bin/true"] {
            assert!(whole(line).is_err(), "{line}");
        }
    }
}
