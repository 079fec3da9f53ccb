//! The Debian package of `cargo xtask dist`, installed on this machine: it is built from the
//! binary under test, `dpkg -i` installs the binary, the systemd unit (running `/usr/bin`), the
//! default configuration (a conffile), the dashboards and alert rules, man pages and
//! completions; an agent started the way the installed unit starts it (its `ExecStart`, with a
//! test port, control socket and event log) serves `/metrics` and stops on SIGTERM; `dpkg -P`
//! leaves nothing behind.
//!
//! Privileged (dpkg, a real agent). Skipped, saying so, without dpkg or cargo-deb (`cargo xtask
//! setup` installs it). Refuses to run when a `palisade` package is already installed. The
//! package is built with `xtask dist --fast --binary $PALISADE_BIN` (`$PALISADE_XTASK`, set by
//! `cargo xtask test`, else `cargo run -p xtask` in a target directory of its own).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use palisade_tests::{Metrics, fleet::RawAgent, palisade_bin, require_root};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn succeeds(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Purges the package when dropped, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["-P", "palisade"]).output();
    }
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn gunzip(p: &str) -> String {
    succeeds(Command::new("gzip").args(["-dc", p]))
}

#[test]
fn the_deb_installs_runs_and_purges() {
    require_root();
    if !works("dpkg", &["--version"]) || !works("cargo", &["deb", "--version"]) {
        eprintln!(
            "SKIPPED: needs dpkg and cargo-deb (dpkg: {}, cargo deb: {}); `cargo xtask setup` installs cargo-deb",
            works("dpkg", &["--version"]),
            works("cargo", &["deb", "--version"])
        );
        return;
    }
    assert!(
        !works("dpkg-query", &["-W", "palisade"]),
        "a palisade package is installed on this machine already; remove it first"
    );
    let root = workspace();
    // `$PALISADE_XTASK` (set by `cargo xtask test`), else xtask built in a target directory of
    // its own: the one this test runs from may be locked (as in the image test)
    let mut xtask = match std::env::var_os("PALISADE_XTASK") {
        Some(x) => Command::new(x),
        None => {
            let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.args(["run", "--quiet", "--package", "xtask", "--target-dir"])
                .arg(root.join("target/xtask-for-tests"))
                .arg("--");
            c
        }
    };
    let out = succeeds(
        xtask
            .args(["dist", "--fast", "--binary"])
            .arg(palisade_bin())
            .current_dir(&root),
    );
    let deb = out
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb path printed:\n{out}"))
        .to_owned();

    let _installed = Installed;
    succeeds(Command::new("dpkg").args(["-i", &deb]));

    // The binary, the same one.
    let version = succeeds(Command::new("/usr/bin/palisade").arg("--version"));
    let ours = succeeds(Command::new(palisade_bin()).arg("--version"));
    assert_eq!(version, ours);
    // The unit: the repository's, running the packaged binary.
    let unit = read("/usr/lib/systemd/system/palisade.service");
    let source = read(&root.join("deploy/palisade.service").to_string_lossy());
    assert_eq!(
        unit,
        source.replace("/usr/local/bin/palisade", "/usr/bin/palisade")
    );
    // The default configuration, a conffile.
    assert_eq!(
        read("/etc/palisade/palisade.yaml"),
        read(&root.join("agent/palisade.yaml").to_string_lossy())
    );
    let conffiles =
        succeeds(Command::new("dpkg-query").args(["--control-show", "palisade", "conffiles"]));
    assert!(
        conffiles.contains("/etc/palisade/palisade.yaml"),
        "{conffiles}"
    );
    // Dashboards and alert rules.
    for d in [
        "palisade-containers",
        "palisade-syscalls",
        "palisade-policy",
    ] {
        assert_eq!(
            read(&format!("/usr/share/palisade/dashboards/{d}.json")),
            read(&root.join(format!("dashboards/{d}.json")).to_string_lossy())
        );
    }
    assert!(Path::new("/usr/share/palisade/alerts/palisade.rules.yml").is_file());
    // Man pages and completions, from the binary's own command line.
    let agent_page = gunzip("/usr/share/man/man1/palisade-agent.1.gz");
    assert!(
        agent_page.contains("node\\-name") && agent_page.contains("NODE_NAME"),
        "{agent_page}"
    );
    assert!(gunzip("/usr/share/man/man1/palisade-policy-status.1.gz").contains("output"));
    assert!(read("/usr/share/bash-completion/completions/palisade").contains("_palisade()"));
    assert!(read("/usr/share/zsh/vendor-completions/_palisade").contains("#compdef palisade"));
    assert!(
        read("/usr/share/fish/vendor_completions.d/palisade.fish").contains("complete -c palisade")
    );

    // Start the agent as the installed unit does (systemd is not PID 1 everywhere this runs):
    // its ExecStart's arguments, with a test port, control socket and event log.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart in\n{unit}"));
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/palisade"));
    assert_eq!(words.next(), Some("agent"));
    let events = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let events_log = events.path().join("events.jsonl");
    let mut args: Vec<String> = Vec::new();
    let mut it = words.map(str::to_owned);
    while let Some(w) = it.next() {
        if w == "--events" {
            it.next();
            args.push(w);
            args.push(events_log.to_string_lossy().into_owned());
        } else {
            args.push(w);
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert!(args.contains(&"/etc/palisade/palisade.yaml"), "{args:?}");
    let agent = RawAgent::start(Path::new("/usr/bin/palisade"), &args, &[]);
    let (code, body) = agent.get("/metrics");
    assert_eq!(code, 200, "{body}\n{}", agent.log());
    let m = Metrics::parse(&body);
    assert_eq!(m.value("palisade_build_info", &[]), Some(1.0), "{body}");
    assert!(agent.stop().success(), "exit 0 on SIGTERM");

    succeeds(Command::new("dpkg").args(["-P", "palisade"]));
    for gone in [
        "/usr/bin/palisade",
        "/usr/lib/systemd/system/palisade.service",
        "/etc/palisade/palisade.yaml",
        "/usr/share/palisade/dashboards/palisade-containers.json",
        "/usr/share/man/man1/palisade.1.gz",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after dpkg -P");
    }
}
