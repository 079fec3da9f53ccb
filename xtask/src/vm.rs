//! `cargo xtask vm-test [--kernel 6.1|6.12|all] [-- FILTER...]`: the privileged suites on
//! Debian's 6.1 and 6.12 kernels, booted under qemu (TCG) with virtme-ng and the host's own
//! files (read-only), BPF-LSM on and pure cgroup v2.
//!
//! The host builds everything (debug `palisade`, the workload binaries, the test executables,
//! found through `cargo test --no-run --message-format=json`), writes a guest script into a
//! results directory (`target/vm-test/KERNEL/`, the guest's only writable host folder), boots
//! the kernel with `vng --exec` on that script, then reads what the guest wrote: per suite its
//! libtest output, exit status and time, and `palisade doctor`'s table. One result table per
//! kernel; the task fails when any test failed or any suite did not finish.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    agent_bin, root, step,
    vm_report::{self, Suite},
    vm_setup::{self, KERNELS, Kernel},
};

/// Suites run when no FILTER names others: policy, launcher and telemetry.
pub const DEFAULT_SUITES: &[&str] = &["policy_*", "launcher*", "agent", "containers", "network"];

#[derive(Args, Debug, Clone)]
pub struct VmTest {
    /// `6.1`, `6.12` or `all`.
    #[arg(long, default_value = "all")]
    pub kernel: String,
    /// Time limit of one suite inside the guest, in minutes (TCG runs code ~10× slower).
    #[arg(long, default_value_t = 15)]
    pub suite_timeout: u64,
    /// Multiplies the test harness's wait timeouts (`PALISADE_TEST_TIME_SCALE`) in the guest.
    #[arg(long, default_value_t = 10)]
    pub time_scale: u32,
    /// Guest memory (qemu syntax), per VM.
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// VMs booted at once per kernel, the suites split between them (default: one per host
    /// CPU, at most 4). Each runs its two vCPUs on one host thread (`-accel tcg,thread=single`).
    #[arg(long)]
    pub vms: Option<usize>,
    /// Leave out the tests of SUITE whose name contains NAME (`SUITE:NAME`, repeatable).
    #[arg(long, value_name = "SUITE:NAME")]
    pub skip: Vec<String>,
    /// `SUITE` (a test binary of tests/tests, `*` globs: `policy_*`) runs that suite,
    /// `SUITE:NAME` its tests whose name contains NAME, and any other word is a test name
    /// filter for the default suites (policy_*, launcher*, agent, containers, network).
    #[arg(last = true)]
    pub filter: Vec<String>,
}

impl VmTest {
    /// What `cargo xtask test` (CI) runs: the default suites on 6.1.
    pub fn ci() -> Self {
        Self {
            kernel: "6.1".to_owned(),
            suite_timeout: 15,
            time_scale: 10,
            memory: "2G".to_owned(),
            vms: None,
            skip: CI_SKIP
                .iter()
                .map(|(suite, test, _)| format!("{suite}:{test}"))
                .collect(),
            filter: CI_SUITES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// Suites CI runs in the 6.1 VM. `network` is left out: 6.1 does not offer
/// `bpf_get_current_cgroup_id` to sock_ops programs, so the TCP program (connections, RTT,
/// the ends of flow records) does not load there (`palisade doctor`: sock_ops no, with the
/// verifier's words; the agent warns it runs degraded) and flow records never end; 6.12 has it.
pub const CI_SUITES: &[&str] = &["policy_*", "launcher*", "agent", "containers"];

/// Tests CI's VM run leaves out, each with why; `cargo xtask vm-test` runs them all.
/// (suite, test, reason)
pub const CI_SKIP: &[(&str, &str, &str)] = &[
    (
        "containers",
        "cpu_time_of_a_busy_workload_is_within_ten_percent",
        "TCG: exec over 9p costs 0.1-0.7 s of CPU in the workload's cgroup before its 500 ms burn; the kernel's cpu.stat agrees with the agent",
    ),
    (
        "containers",
        "five_hundred_short_lived_containers_leave_no_stale_series",
        "TCG: creating 500 cgroups takes longer than the test's 15 s grace period",
    ),
    (
        "launcher_bundle",
        "bad_input_is_one_clear_line_and_leaves_nothing_behind",
        "the guest's root holds CAP_SYS_RESOURCE, so an RLIMIT_NOFILE above fs.nr_open passes validation and fails at setrlimit (product)",
    ),
    (
        "launcher_seccomp",
        "without_the_filter_the_same_calls_reach_the_kernel",
        "6.1: open_by_handle_at without CAP_DAC_READ_SEARCH is EPERM from the kernel itself",
    ),
];

/// qemu's accelerator. One host thread runs both vCPUs in turn: with qemu 7.2's default
/// multi-threaded TCG, a vCPU that runs kernel text while the other vCPU patches it (a static
/// key or static call flipped when a tracepoint gains or loses its first program, an fentry or
/// LSM trampoline attached) can keep executing its stale translation of the int3 the kernel
/// wrote there, and the guest freezes: both vCPUs spinning at that address, RCU stalled (CI
/// runs of stops 18 and 20). A guest toggling `raw_syscalls` tracing while two `dd` loops
/// make syscalls froze in each of three runs with multi-threaded TCG (after 6 and 95 toggles in
/// two of them), and ran all 400 toggles with `thread=single` (`xtask/vm/tcg-freeze.sh`
/// repeats this). One host thread per guest makes a guest ~1.8× slower, so the suites are
/// split between VMs booted at once (`shards`), one per host CPU.
pub const TCG: &str = "tcg,thread=single";

/// Seconds each suite took in CI's 6.1 guest (stop 31: one host thread per VM, the binary
/// under test from a tmpfs; `network`, which CI leaves out, from stop 20), to split a plan
/// between VMs; a suite not listed counts as a minute. Only the balance depends on them: with
/// stop 20's figures the two VMs of stop 31's run got 806 and 904 s of suites, with these the
/// same plan splits 815 / 808 (`policy_launch` at 275 s once its learning windows end early).
const SUITE_SECONDS: &[(&str, u64)] = &[
    ("agent", 163),
    ("containers", 81),
    ("launcher", 28),
    ("launcher_bundle", 10),
    ("launcher_isolation", 17),
    ("launcher_seccomp", 10),
    ("network", 120),
    ("policy_bypass", 237),
    ("policy_exec", 61),
    ("policy_files", 27),
    ("policy_files_lsm", 68),
    ("policy_launch", 275),
    ("policy_lsm", 105),
    ("policy_ops", 110),
    ("policy_runtime", 202),
    ("policy_unenforced", 229),
];

/// A suite's expected seconds (`SUITE_SECONDS`).
fn seconds(suite: &str) -> u64 {
    SUITE_SECONDS
        .iter()
        .find(|(s, _)| *s == suite)
        .map_or(60, |(_, t)| *t)
}

/// Splits `plan` into at most `n` non-empty parts of about equal expected time: longest suite
/// first, each to the part with the least time so far.
pub fn shards(plan: &Plan, n: usize) -> Vec<Plan> {
    let mut suites: Vec<(&String, &Vec<String>)> = plan.iter().collect();
    suites.sort_by_key(|(name, _)| std::cmp::Reverse(seconds(name)));
    let mut parts: Vec<(u64, Plan)> = vec![(0, Plan::new()); n.clamp(1, plan.len().max(1))];
    for (name, filters) in suites {
        if let Some(least) = parts.iter_mut().min_by_key(|(t, _)| *t) {
            least.0 += seconds(name);
            least.1.insert(name.clone(), filters.clone());
        }
    }
    parts
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| !p.is_empty())
        .collect()
}

/// Suites to run, each with its test name filters (empty: every test).
pub type Plan = BTreeMap<String, Vec<String>>;

/// One kernel's run.
pub struct Outcome {
    pub title: String,
    pub suites: Vec<Suite>,
    pub doctor: String,
    /// A guest froze twice (see `watch`).
    pub hung: bool,
}

impl Outcome {
    pub fn bad(&self) -> bool {
        self.hung || self.suites.is_empty() || self.suites.iter().any(Suite::bad)
    }
}

/// `*` glob over a whole name.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => {
            let Some(rest) = name.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

/// Suites to run and, per suite, the test name filters (empty: every test).
pub fn plan(suites: &[&str], filter: &[String]) -> Result<Plan> {
    let matching = |pattern: &str| -> Vec<String> {
        suites
            .iter()
            .filter(|s| glob(pattern, s))
            .map(|s| (*s).to_owned())
            .collect()
    };
    let mut out = Plan::new();
    let mut names = Vec::new();
    for word in filter {
        if let Some((suite, name)) = word.split_once(':') {
            let m = matching(suite);
            if m.is_empty() {
                bail!("no suite matches {suite:?} (suites: {})", suites.join(", "));
            }
            for s in m {
                out.entry(s).or_default().push(name.to_owned());
            }
        } else {
            let m = matching(word);
            if m.is_empty() {
                names.push(word.clone());
            }
            for s in m {
                out.insert(s, Vec::new());
            }
        }
    }
    if out.is_empty() || !names.is_empty() {
        for pattern in DEFAULT_SUITES {
            for s in matching(pattern) {
                out.entry(s).or_default().extend(names.iter().cloned());
            }
        }
    }
    Ok(out)
}

/// The test executables of palisade-tests by suite name, built on the host. Built as the
/// host's `cargo test` builds them (the workspace's default members): with `--package
/// palisade-tests` alone cargo unifies the dependencies' features differently and compiled
/// some thirty crates again (49 s of every CI run).
fn test_binaries() -> Result<BTreeMap<String, PathBuf>> {
    step("building the test executables (cargo test --no-run)");
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "test",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    Ok(executables(&String::from_utf8_lossy(&out.stdout)))
}

/// palisade-tests' `[[test]]` executables in cargo's JSON messages, by target name.
pub fn executables(json_lines: &str) -> BTreeMap<String, PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter(|m| {
            m["package_id"]
                .as_str()
                .is_some_and(|id| id.contains("#palisade-tests@"))
        })
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .filter_map(|m| {
            Some((
                m["target"]["name"].as_str()?.to_owned(),
                PathBuf::from(m["executable"].as_str()?),
            ))
        })
        .collect()
}

/// Single-quoted for sh.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn sh_path(p: &Path) -> String {
    sh(&p.to_string_lossy())
}

/// The script the guest runs: mounts, cgroup controllers, loopback, environment, then
/// `palisade doctor` and each suite, everything written to `out`.
pub fn guest_script(
    opts: &VmTest,
    out: &Path,
    plan: &Plan,
    bins: &BTreeMap<String, PathBuf>,
    tag: &str,
) -> String {
    let workspace = root();
    let path = std::env::var("PATH").unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "#!/bin/sh\n# Written by `cargo xtask vm-test`; runs as pid 1's child in the guest.\nset -u\nout={}\ntag={}",
        sh_path(out),
        sh(tag)
    );
    s.push_str(
        r#"cut -d' ' -f1 /proc/uptime > "$out/boot-seconds"
uname -r > "$out/uname"
echo "$tag: $(uname -r) up after $(cat "$out/boot-seconds") s"
"#,
    );
    // virtme-ng gives /tmp as an overlay on the host's /tmp; a tmpfs is what hosts have,
    // unless the workspace itself lives under /tmp (it would be hidden).
    if workspace.starts_with("/tmp") || out.starts_with("/tmp") {
        s.push_str("echo \"$tag: workspace under /tmp: keeping the overlay /tmp\"\n");
    } else {
        s.push_str("mount -t tmpfs -o mode=1777 tmpfs /tmp\n");
    }
    // Tests that need a scratch directory on the host's own filesystems (not /tmp, which a
    // sandbox replaces) take it under CARGO_TARGET_TMPDIR, read-only in the guest: a tmpfs
    // there, a submount of the host's tree as such a directory is on a host.
    let target_tmp = workspace.join("target").join("tmp");
    let _ = writeln!(
        s,
        "[ -d {t} ] && mount -t tmpfs -o mode=1777 palisade-vm-scratch {t}",
        t = sh_path(&target_tmp)
    );
    s.push_str(
        r#"# podman's overlay driver cannot stack on virtme's overlay /var: its store on a tmpfs.
mkdir -p /var/lib/containers && mount -t tmpfs tmpfs /var/lib/containers
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
grep -q ' /sys/kernel/tracing tracefs ' /proc/mounts || mount -t tracefs tracefs /sys/kernel/tracing
# Pure cgroup v2, as systemd leaves it: every controller enabled for the root's children.
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control || echo "$tag: cannot enable the $c controller"
done
ip link set lo up
# virtme's guest has only loopback; hosts have a NIC (`palisade run --net host` tests count
# the host's interfaces). A dummy one, no traffic leaves the guest.
ip link add palisade-vm0 type dummy && ip link set palisade-vm0 up
# Every 30 s, what runs (threads carry libtest's test names) and the kernel log, readable from
# the host while the guest runs: the evidence when a suite hangs.
while sleep 30; do
    { date; free -m; ps -eLo pid,tid,etime,stat,wchan:28,comm,args --sort=start_time; } > "$out/ps.txt" 2>&1
    dmesg > "$out/dmesg.txt" 2>&1
done &
cat /sys/kernel/security/lsm > "$out/lsm"; echo >> "$out/lsm"
cat /sys/fs/cgroup/cgroup.subtree_control > "$out/controllers"
grep cgroup /proc/mounts > "$out/cgroup-mounts"
"#,
    );
    let _ = writeln!(
        s,
        "export HOME=/root LANG=C.UTF-8 RUST_BACKTRACE=0 PATH={} PALISADE_BIN={} PALISADE_TEST_TIME_SCALE={}\n\
         # the launcher's wait for the agent's answer, scaled as the harness's waits (TCG)\n\
         export PALISADE_AGENT_TIMEOUT={}s",
        sh(&path),
        sh_path(&agent_bin(false)),
        opts.time_scale,
        30 * opts.time_scale
    );
    // Started from 9p, every start of the binary reads its pages through the host again (9p
    // keeps no page cache here): `palisade --version` of the debug binary took 1.0-1.2 s in a
    // 6.1 guest, 0.3 s from a tmpfs. Without its debug info it is 55 MB of the guest's memory
    // instead of 217 (symbols stay, for backtraces).
    s.push_str(
        r#"mkdir -p /run/palisade-vm && mount -t tmpfs -o mode=0755 palisade-vm-bin /run/palisade-vm \
    && objcopy --strip-debug "$PALISADE_BIN" /run/palisade-vm/palisade \
    && export PALISADE_BIN=/run/palisade-vm/palisade \
    || echo "$tag: cannot copy the binary to a tmpfs: running $PALISADE_BIN over 9p"
"#,
    );
    s.push_str(
        r#""$PALISADE_BIN" doctor > "$out/doctor.txt" 2>&1; echo "(exit status $?)" >> "$out/doctor.txt"
suite() {
    name=$1; shift
    echo "$tag: suite $name"
    start=$(date +%s)
"#,
    );
    let _ = writeln!(
        s,
        "    timeout -k 30 {}m \"$@\" > \"$out/$name.log\" 2>&1; echo $? > \"$out/$name.rc\"",
        opts.suite_timeout
    );
    s.push_str(
        r#"    echo $(( $(date +%s) - start )) > "$out/$name.seconds"
    echo "$tag: suite $name: exit $(cat "$out/$name.rc") after $(cat "$out/$name.seconds") s"
    grep -E '^test result|FAILED$' "$out/$name.log" | sed "s/^/$tag: /"
}
"#,
    );
    // cargo runs tests in their package's directory
    let _ = writeln!(s, "cd {}", sh_path(&workspace.join("tests")));
    for (suite, names) in plan {
        let Some(bin) = bins.get(suite) else { continue };
        // panic messages as they happen: a suite killed by its time limit still has them
        let mut filters = vec!["--nocapture".to_owned()];
        filters.extend(names.iter().map(|f| sh(f)));
        for skip in &opts.skip {
            if let Some((s, name)) = skip.split_once(':')
                && glob(s, suite)
            {
                filters.push(format!("--skip {}", sh(name)));
            }
        }
        let _ = writeln!(
            s,
            "suite {} {} {}",
            sh(suite),
            sh_path(bin),
            filters.join(" ")
        );
    }
    s.push_str("echo \"$tag: done\"\n");
    s
}

/// How long the guest may go without rewriting `ps.txt` (every 30 s) before it counts as hung.
const GUEST_SILENCE: Duration = Duration::from_secs(300);

/// Waits for the VM; kills it (`timeout` passes the signal to vng's process group) when the
/// guest stops showing signs of life: a TCG guest has been seen to freeze, its own per-suite
/// timeouts then never fire. Before the kill, the kernel is asked through the qemu monitor
/// (magic SysRq keys) for its blocked tasks and CPU backtraces, which land in `console.log`.
/// Returns the exit status and whether it hung.
fn watch(
    child: &mut std::process::Child,
    out: &Path,
    start: Instant,
) -> Result<(std::process::ExitStatus, bool)> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, false));
        }
        let last = std::fs::metadata(out.join("ps.txt"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_else(|| start.elapsed());
        if last > GUEST_SILENCE {
            eprintln!(
                "    the guest wrote nothing for {} s: hung; asking its kernel for blocked tasks and CPU backtraces, then killing the VM",
                last.as_secs()
            );
            if let Err(e) = sysrq(&out.join(MONITOR), &["w", "l"]) {
                eprintln!("    (the qemu monitor did not take the SysRq keys: {e:#})");
            }
            // `timeout` passes the signal on to vng's process group (qemu included)
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait()?;
            report_hang(out);
            return Ok((status, true));
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// The qemu monitor's socket, in the results directory.
const MONITOR: &str = "monitor.sock";

/// Presses Alt+SysRq+KEY on the guest's keyboard for each key (the guest boots with
/// `sysrq_always_enabled=1`); the kernel prints what the key asks for on its console.
fn sysrq(socket: &Path, keys: &[&str]) -> Result<()> {
    use std::io::{Read as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connect {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut banner = [0u8; 4096];
    let _ = s.read(&mut banner);
    for key in keys {
        writeln!(s, "sendkey alt-sysrq-{key}")?;
        // the kernel prints while the key is handled; a frozen CPU answers the NMI later
        std::thread::sleep(Duration::from_secs(10));
        let _ = s.read(&mut banner);
    }
    Ok(())
}

/// What a hung guest left, on stderr where CI's log keeps it: the last `ps.txt` (threads carry
/// libtest's test names), and the end of the kernel console (hung-task and lockup reports,
/// the SysRq dumps).
fn report_hang(out: &Path) {
    eprintln!(
        "    --- the guest's last ps.txt ---\n{}",
        tail(&read_in(out, "ps.txt"), 80)
    );
    eprintln!(
        "    --- the end of the guest's kernel console ({}) ---\n{}",
        out.join("console.log").display(),
        tail(&read_in(out, "console.log"), 200)
    );
}

/// A file of the results directory, empty when absent.
fn read_in(out: &Path, file: &str) -> String {
    std::fs::read_to_string(out.join(file)).unwrap_or_default()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What one VM reported.
struct Shard {
    suites: Vec<Suite>,
    doctor: String,
    /// Seconds from qemu's start to the guest's script.
    boot: String,
    lsm: String,
    controllers: String,
    /// Killed after this many seconds because the guest froze, twice.
    hung: Option<u64>,
}

/// One VM: `plan` run on `release`, everything written to `out` (the guest's only writable
/// host folder); `tag` names it in the lines its guest prints.
struct Vm<'a> {
    opts: &'a VmTest,
    release: &'a str,
    plan: &'a Plan,
    bins: &'a BTreeMap<String, PathBuf>,
    out: PathBuf,
    tag: String,
}

impl Vm<'_> {
    /// Boots the VM and returns what the guest reported. A guest that freezes is booted once
    /// more, its files kept in `out.hung`.
    fn run(&self) -> Result<Shard> {
        let (out, tag, release) = (&self.out, &self.tag, self.release);
        let mut wall = self.boot_once()?;
        if let Some(w) = wall {
            let kept = out.with_extension("hung");
            let _ = std::fs::remove_dir_all(&kept);
            std::fs::rename(out, &kept)
                .with_context(|| format!("mv {} {}", out.display(), kept.display()))?;
            eprintln!(
                "    {tag}: the guest hung (killed after {w} s); its files are kept in {}; booting {release} once more",
                kept.display()
            );
            wall = self.boot_once()?;
        }
        let read = |f: &str| read_in(out, f).trim().to_owned();
        Ok(Shard {
            suites: vm_report::read(out, &self.plan.keys().cloned().collect::<Vec<_>>()),
            doctor: read_in(out, "doctor.txt"),
            boot: read("boot-seconds"),
            lsm: read("lsm"),
            controllers: read("controllers"),
            hung: wall,
        })
    }

    /// One boot; returns after how many seconds the VM was killed if the guest froze.
    fn boot_once(&self) -> Result<Option<u64>> {
        let Self {
            opts,
            release,
            plan,
            bins,
            out,
            tag,
        } = self;
        std::fs::create_dir_all(out).with_context(|| format!("mkdir {}", out.display()))?;
        let script = out.join("run.sh");
        std::fs::write(&script, guest_script(opts, out, plan, bins, tag))
            .with_context(|| format!("write {}", script.display()))?;
        step(&format!(
            "{tag}: booting {release} (qemu TCG, BPF-LSM on, pure cgroup v2): {}",
            plan.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        let venv_bin = vm_setup::venv()?.join("bin");
        let path = std::env::join_paths(std::iter::once(venv_bin).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))?;
        // Whole-VM limit: every suite at its limit plus boots; `timeout` signals vng's process
        // group (qemu included).
        let limit = opts.suite_timeout * plan.len() as u64 + 10;
        let start = Instant::now();
        // The kernel's console (`--verbose`: every message) goes to console.log, the guest
        // script's stdout to ours; a qemu monitor socket lets `watch` press SysRq keys.
        let console =
            std::fs::File::create(out.join("console.log")).context("create console.log")?;
        let mut child = Command::new("timeout")
            .args(["-k", "30", &format!("{limit}m"), "vng", "--verbose"])
            .args(["--disable-kvm", "--disable-microvm", "-r"])
            .arg(format!("/boot/vmlinuz-{release}"))
            .args([
                "--append",
                "lsm=lockdown,capability,bpf sysrq_always_enabled=1",
            ])
            .args(["--memory", &opts.memory, "--cpus", "2"])
            .arg(format!(
                "--qemu-opts=-monitor unix:{},server,nowait -accel {TCG}",
                out.join(MONITOR).display()
            ))
            .arg("--rwdir")
            .arg(out)
            .arg("--exec")
            .arg(format!("sh {}", sh_path(&script)))
            .env("PATH", path)
            .current_dir(out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(console)
            .spawn()
            .context("cannot start vng (timeout from coreutils)")?;
        // The guest's lines reach our stdout through a pipe, whole: qemu opens its stdout anew
        // (`/proc/self/fd/1`, truncating a file there), and VMs run side by side.
        let relay = child.stdout.take().map(|pipe| {
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    println!("{line}");
                }
            })
        });
        let (status, hung) = watch(&mut child, out, start)?;
        if let Some(relay) = relay {
            let _ = relay.join();
        }
        if hung {
            return Ok(Some(start.elapsed().as_secs()));
        }
        if !status.success() {
            eprintln!(
                "    {tag}: vng ended with {status}; the end of {}:\n{}",
                out.join("console.log").display(),
                tail(&read_in(out, "console.log"), 30)
            );
        }
        Ok(None)
    }
}

/// Runs `plan` on `release`, split between VMs booted at once (`shards`), each in
/// `target/vm-test/KERNEL/vmN/`; one outcome for the kernel.
fn run_kernel(
    opts: &VmTest,
    kernel: Kernel,
    release: &str,
    plan: &Plan,
    bins: &BTreeMap<String, PathBuf>,
) -> Result<Outcome> {
    let dir = root().join("target/vm-test").join(kernel.label);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("rm -r {}", dir.display()))?;
    }
    let vms = opts.vms.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(4)
    });
    let parts = shards(plan, vms);
    let start = Instant::now();
    let results: Vec<Result<Shard>> = std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let vm = Vm {
                    opts,
                    release,
                    plan,
                    bins,
                    out: dir.join(format!("vm{}", i + 1)),
                    tag: format!("vm{}", i + 1),
                };
                scope.spawn(move || vm.run())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a VM's thread panicked")))
            .collect()
    });
    let wall = start.elapsed().as_secs();
    let shards = results.into_iter().collect::<Result<Vec<Shard>>>()?;
    Ok(outcome(kernel, release, &shards, wall))
}

/// One kernel's outcome from its VMs' reports.
fn outcome(kernel: Kernel, release: &str, shards: &[Shard], wall: u64) -> Outcome {
    let mut suites: Vec<Suite> = shards.iter().flat_map(|s| s.suites.clone()).collect();
    suites.sort_by(|a, b| a.name.cmp(&b.name));
    let tests: u64 = suites.iter().filter_map(|s| s.seconds).sum();
    let first = shards.first();
    let field = |f: fn(&Shard) -> &String| first.map(f).cloned().unwrap_or_default();
    let boots: Vec<String> = shards
        .iter()
        .map(|s| s.boot.split('.').next().unwrap_or("?").to_owned())
        .collect();
    let mut title = format!(
        "kernel {} ({}): {} VM(s), boot {} s, suites {}, wall {} — LSMs {}, cgroup2 controllers: {}",
        kernel.label,
        release,
        shards.len(),
        boots.join("/"),
        vm_report::duration(tests),
        vm_report::duration(wall),
        field(|s| &s.lsm),
        field(|s| &s.controllers)
    );
    let hung: Vec<String> = shards
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.hung.map(|w| format!("vm{} (killed after {w} s)", i + 1)))
        .collect();
    if !hung.is_empty() {
        let _ = write!(title, "; the guest hung twice in {}", hung.join(", "));
    }
    Outcome {
        title,
        suites,
        doctor: field(|s| &s.doctor),
        hung: !hung.is_empty(),
    }
}

/// Runs the matrix; prints one table per kernel; fails when anything failed.
pub fn run(opts: &VmTest) -> Result<()> {
    let kernels: Vec<Kernel> = if opts.kernel == "all" {
        KERNELS.to_vec()
    } else {
        vec![
            Kernel::by_label(&opts.kernel)
                .with_context(|| format!("unknown kernel {:?}: 6.1, 6.12 or all", opts.kernel))?,
        ]
    };
    for skip in &opts.skip {
        if !skip.contains(':') {
            bail!("--skip {skip:?}: SUITE:NAME expected");
        }
    }
    if opts.vms == Some(0) {
        bail!("--vms 0: at least one VM");
    }
    for (suite, test, why) in CI_SKIP {
        if opts.skip.iter().any(|s| s == &format!("{suite}:{test}")) {
            eprintln!("    left out: {suite}::{test} ({why})");
        }
    }
    let releases = vm_setup::run(&kernels)?;
    crate::build(false)?;
    let bins = test_binaries()?;
    let names: Vec<&str> = bins.keys().map(String::as_str).collect();
    let plan = plan(&names, &opts.filter)?;
    let mut outcomes = Vec::new();
    for (kernel, release) in &releases {
        outcomes.push(run_kernel(opts, *kernel, release, &plan, &bins)?);
    }
    let mut summary = String::new();
    for o in &outcomes {
        summary.push_str(&vm_report::table(&o.title, &o.suites));
        let _ = writeln!(summary, "\npalisade doctor:\n{}", o.doctor.trim_end());
        summary.push('\n');
    }
    let file = root().join("target/vm-test/summary.txt");
    let _ = std::fs::write(&file, &summary);
    step(&format!(
        "VM matrix results (also in {}; logs per suite in target/vm-test/KERNEL/vmN/)",
        file.display()
    ));
    println!("{summary}");
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.bad())
        .map(|o| o.title.split(':').next().unwrap_or_default())
        .collect();
    if !bad.is_empty() {
        bail!("VM tests failed on {}", bad.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITES: &[&str] = &[
        "agent",
        "containers",
        "dashboards",
        "deploy",
        "exported_metrics",
        "launcher",
        "launcher_bundle",
        "launcher_seccomp",
        "network",
        "policy_launch",
        "policy_ops",
        "policy_runtime",
    ];

    fn keys(p: &Plan) -> Vec<&str> {
        p.keys().map(String::as_str).collect()
    }

    #[test]
    fn default_suites_and_filters() {
        let all = plan(SUITES, &[]).unwrap();
        assert_eq!(
            keys(&all),
            [
                "agent",
                "containers",
                "launcher",
                "launcher_bundle",
                "launcher_seccomp",
                "network",
                "policy_launch",
                "policy_ops",
                "policy_runtime"
            ]
        );
        assert!(all.values().all(Vec::is_empty));
        let p = plan(SUITES, &["policy_*".into(), "launcher:memory".into()]).unwrap();
        assert_eq!(
            keys(&p),
            ["launcher", "policy_launch", "policy_ops", "policy_runtime"]
        );
        assert_eq!(p["launcher"], ["memory"]);
        assert!(p["policy_ops"].is_empty());
        let names = plan(SUITES, &["oom".into()]).unwrap();
        assert_eq!(names.len(), all.len());
        assert!(names.values().all(|f| f == &["oom"]));
        assert!(plan(SUITES, &["nope:x".into()]).is_err());
    }

    fn expected(p: &Plan) -> u64 {
        p.keys().map(|s| seconds(s)).sum()
    }

    #[test]
    fn shards_hold_every_suite_once_with_its_filters() {
        let mut plan = plan(SUITES, &[]).unwrap();
        plan.get_mut("launcher").unwrap().push("rootfs".to_owned());
        for n in 1..=6 {
            let parts = shards(&plan, n);
            assert_eq!(parts.len(), n.min(plan.len()), "{n} VMs");
            assert!(parts.iter().all(|p| !p.is_empty()), "{n} VMs: {parts:?}");
            let mut merged = Plan::new();
            for p in &parts {
                for (suite, filters) in p {
                    assert!(
                        merged.insert(suite.clone(), filters.clone()).is_none(),
                        "{suite} twice"
                    );
                }
            }
            assert_eq!(merged, plan, "{n} VMs");
        }
        assert_eq!(shards(&plan, 1), [plan.clone()]);
        assert_eq!(shards(&plan, 0), [plan]);
    }

    #[test]
    fn ci_suites_split_evenly_between_two_vms() {
        let suites: Vec<&str> = SUITE_SECONDS.iter().map(|(s, _)| *s).collect();
        let ci: Vec<String> = CI_SUITES.iter().map(|s| (*s).to_owned()).collect();
        let plan = plan(&suites, &ci).unwrap();
        assert!(!plan.contains_key("network"));
        let parts = shards(&plan, 2);
        let (a, b) = (expected(&parts[0]), expected(&parts[1]));
        // policy_launch alone is 331 s of 1,477: no part waits on the other for long
        assert!(a.abs_diff(b) <= 30, "{a} s and {b} s: {parts:?}");
    }

    #[test]
    fn ci_skips_name_ci_suites() {
        for (suite, test, why) in CI_SKIP {
            assert!(
                CI_SUITES.iter().any(|p| glob(p, suite)),
                "{suite}::{test} ({why})"
            );
        }
        let ci = VmTest::ci();
        assert_eq!(ci.kernel, "6.1");
        assert_eq!(ci.skip.len(), CI_SKIP.len());
    }

    #[test]
    fn globs() {
        assert!(glob("policy_*", "policy_ops"));
        assert!(glob("launcher*", "launcher"));
        assert!(glob("*ops", "policy_ops"));
        assert!(!glob("launcher", "launcher_bundle"));
        assert!(!glob("policy_*", "agent"));
    }

    #[test]
    fn test_executables_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#palisade-tests@0.1.0","profile":{"test":true},"target":{"name":"agent","kind":["test"]},"executable":"/w/target/debug/deps/agent-1"}
{"reason":"compiler-artifact","package_id":"path+file:///w/tests#palisade-tests@0.1.0","profile":{"test":true},"target":{"name":"palisade_tests","kind":["lib"]},"executable":"/w/target/debug/deps/palisade_tests-2"}
{"reason":"compiler-artifact","package_id":"path+file:///w/launcher#palisade-launcher@0.1.0","profile":{"test":true},"target":{"name":"public_parsers","kind":["test"]},"executable":"/w/target/debug/deps/public_parsers-3"}
{"reason":"compiler-artifact","profile":{"test":false},"target":{"name":"libc","kind":["lib"]},"executable":null}
{"reason":"build-finished","success":true}"#;
        let e = executables(json);
        assert_eq!(e.len(), 1);
        assert_eq!(e["agent"], Path::new("/w/target/debug/deps/agent-1"));
    }
}
