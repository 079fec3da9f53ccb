//! Developer tasks. `cargo xtask <task>`:
//!
//! - `setup`: everything a fresh machine needs (Debian packages, nightly rust-src, bpf-linker
//!   built against the nightly's own LLVM); idempotent and quick when already done.
//! - `build [--release]`, `run [-- AGENT ARGS]`, `test`, `lint`, `deps`, `fuzz`, `soak`,
//!   `bench syscalls|scrape|scale|net|launch|policy|exec`.
//! - `prometheus-rule [--check]`: the Kubernetes PrometheusRule from the alert rules file.
//! - `image [--binary PATH] [--tag TAG]`: the agent's container image (podman, offline).
//! - `vm-test [--kernel 6.1|6.12|all] [-- FILTER]`: the privileged suites on Debian's 6.1 and
//!   6.12 kernels under qemu (pure cgroup v2, BPF-LSM); `test` runs it on 6.1 unless
//!   `PALISADE_SKIP_VM=1`.
//! - `dist [--binary PATH]`: shell completions, man pages and a `.deb` (cargo-deb).
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod bench_agent;
mod bench_events;
mod bench_exec;
mod bench_launch;
mod bench_policy;
mod bench_rounds;
mod bench_scale;
mod bench_vm;
mod deps;
mod dist;
mod fuzz;
mod image;
mod prometheus_rule;
mod setup;
mod soak;
mod vm;
mod vm_report;
mod vm_setup;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Palisade developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: Debian packages, nightly rust-src, bpf-linker.
    Setup,
    /// Setup, then build the agent (debug unless --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Setup, release build, then run `palisade agent` with the default configuration.
    /// Arguments after `--` go to the agent (e.g. `-- --listen 0.0.0.0:9477`).
    Run {
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, then every check CI runs: formatting, clippy (eBPF crate too), unit tests, the
    /// privileged end-to-end tests (needs root) and, unless PALISADE_SKIP_VM=1 or a filter is
    /// given, the policy, launcher and telemetry suites in a 6.1 VM.
    Test {
        /// Only run tests whose name contains this filter (passed to the test harness).
        filter: Option<String>,
    },
    /// cargo fmt --check, clippy -D warnings on every crate (the eBPF crate included), the
    /// module dependency check and the generated PrometheusRule.
    Lint,
    /// Fails when the top-level modules of any crate import each other in a cycle.
    Deps,
    /// Build the agent's container image from deploy/Containerfile with podman, offline: the
    /// release binary and the shared libraries ldd lists for it, nothing else.
    Image {
        /// Put this binary in the image instead of building the release one.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Image tag [default: ghcr.io/palisade-dev/palisade:VERSION, what the DaemonSet runs].
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
    },
    /// Shell completions, man pages and a Debian package (cargo-deb) in target/dist/: the
    /// binary, the systemd unit, the default config, the dashboards, man pages, completions.
    Dist {
        /// Package this binary instead of building the release one.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Quicker, lighter compression (a bigger .deb; the tests use it for a debug build).
        #[arg(long)]
        fast: bool,
    },
    /// Write deploy/kubernetes/rules/prometheusrule.yaml from dashboards/alerts/palisade.rules.yml
    /// (the one file the alert rules are edited in).
    PrometheusRule {
        /// Fail instead of writing when the committed file differs.
        #[arg(long)]
        check: bool,
    },
    /// Run every fuzz target (cargo fuzz, nightly) for a bounded time each.
    Fuzz {
        #[arg(long, default_value_t = 20)]
        seconds: u32,
    },
    /// The long reliability runs (loss under load, churn, faults, fuzzing) against a release
    /// agent, with a markdown report (needs root).
    Soak {
        /// About how long to run (the fuzz targets get two fifths, the flood a quarter).
        #[arg(long, default_value_t = 10)]
        minutes: u32,
        /// Write the markdown report here (else to stdout).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Setup, build, then the privileged suites inside Debian kernels booted under qemu (TCG)
    /// with virtme-ng: pure cgroup v2, BTF, BPF-LSM on. One result table per kernel.
    VmTest(vm::VmTest),
    /// Benchmarks, reported as ratios to a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Bench,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.task {
        Task::Setup => setup::run(),
        Task::Build { release } => setup::run().and_then(|()| build(release)),
        Task::Run { args } => setup::run().and_then(|()| run_agent(&args)),
        Task::Test { filter } => setup::run().and_then(|()| test(filter.as_deref())),
        Task::Lint => setup::run().and_then(|()| lint()),
        Task::Deps => deps(),
        Task::PrometheusRule { check } => prometheus_rule::run(check),
        // With --binary nothing is compiled: only podman (and ldd) are needed.
        Task::Image { binary: None, tag } => setup::run().and_then(|()| image::run(None, tag)),
        Task::Image { binary, tag } => image::run(binary, tag),
        // With --binary nothing is compiled: only cargo-deb (installed by setup) is needed.
        Task::Dist { binary: None, fast } => setup::run().and_then(|()| dist::run(None, fast)),
        Task::Dist { binary, fast } => dist::run(binary, fast),
        Task::Fuzz { seconds } => setup::run().and_then(|()| fuzz::run(seconds).map(drop)),
        Task::Soak { minutes, report } => {
            setup::run().and_then(|()| soak::run(minutes, report.as_deref()))
        }
        Task::Bench { which } => setup::run().and_then(|()| bench::run(which)),
        Task::VmTest(opts) => setup::run().and_then(|()| vm::run(&opts)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Prints a step header.
pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Runs a command in the workspace root, failing with its name when it fails.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    eprintln!("    ({:.1} s)", start.elapsed().as_secs_f64());
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub fn build(release: bool) -> Result<()> {
    step(if release {
        "building palisade (release)"
    } else {
        "building palisade (debug)"
    });
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--package",
        "palisade",
        "--package",
        "palisade-tests",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    exec(&mut cmd)
}

pub fn agent_bin(release: bool) -> PathBuf {
    root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("palisade")
}

fn run_agent(args: &[String]) -> Result<()> {
    build(true)?;
    let bin = agent_bin(true);
    step(&format!(
        "starting {} agent {}",
        bin.display(),
        args.join(" ")
    ));
    eprintln!(
        "    metrics: http://127.0.0.1:9477/metrics (unless --listen says otherwise); Ctrl-C stops"
    );
    let status = Command::new(&bin)
        .arg("agent")
        .args(args)
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if !status.success() {
        bail!("palisade agent exited with {status}");
    }
    Ok(())
}

fn deps() -> Result<()> {
    step("module dependencies point one way (no cycle between top-level modules)");
    deps::check(&root())
}

fn lint() -> Result<()> {
    deps()?;
    prometheus_rule::run(true)?;
    step("cargo fmt --check");
    exec(cargo().args(["fmt", "--all", "--check"]))?;
    // Default members: every crate but the eBPF one, which only builds for the bpf target.
    step("clippy (host crates)");
    exec(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    step("clippy (eBPF crate, nightly, bpfel-unknown-none)");
    exec(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "palisade-ebpf",
        "--bins",
        "--release",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

/// Seconds each fuzz target runs in `cargo xtask test` (8 targets: under 3 minutes).
const FUZZ_SECONDS_IN_TEST: u32 = 20;

fn test(filter: Option<&str>) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc_geteuid() } == 0;
    if !root_user {
        bail!(
            "the privileged tests load eBPF programs and create cgroups: run `cargo xtask test` as root"
        );
    }
    lint()?;
    build(false)?;
    step("unit and end-to-end tests");
    let mut cmd = cargo();
    cmd.args(["test"]).env("PALISADE_BIN", agent_bin(false));
    // The image test builds its image with this very xtask (`image --binary`).
    if let Ok(me) = std::env::current_exe() {
        cmd.env("PALISADE_XTASK", me);
    }
    // policy_lsm requires BPF-LSM unless told the host has none: said here, from the host's
    // active LSMs, and never in the VM (its kernels boot with lsm=...,bpf)
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    if !lsms.split(',').any(|l| l.trim() == "bpf") {
        eprintln!(
            "    (no BPF-LSM on this host (active LSMs: {:?}): PALISADE_HOST_LSM=none, policy_lsm checks the fallbacks)",
            lsms.trim()
        );
        cmd.env("PALISADE_HOST_LSM", "none");
    }
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    exec(&mut cmd)?;
    if filter.is_none() {
        fuzz::run(FUZZ_SECONDS_IN_TEST)?;
    }
    if filter.is_some() {
        eprintln!("\n    (VM suites skipped: a filter was given; `cargo xtask vm-test -- FILTER`)");
    } else if std::env::var_os("PALISADE_SKIP_VM").is_some_and(|v| v == "1") {
        eprintln!("\n    (VM suites skipped: PALISADE_SKIP_VM=1)");
    } else {
        vm::run(&vm::VmTest::ci())?;
    }
    Ok(())
}

// libc is not a dependency of xtask; one extern declaration is enough.
unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
