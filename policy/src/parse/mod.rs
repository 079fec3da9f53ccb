//! YAML → validated [`Policy`]s, every error with `file:line:column`.
//!
//! Two stages: serde-saphyr reads the documents into raw structs (`deny_unknown_fields`, so a
//! typo is an error at its position), keeping the position of each value that needs checking
//! ([`Spanned`]); then each value is validated and the first problem of each document is
//! reported at the position of the value at fault.
use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use self::{exec::exec_rules, files::file_rules, network::direction, syscalls::syscall_rules};
use crate::{
    model::{
        Diagnostic, Glob, Loc, Mode, Network, Policy, PolicyErrors, PolicySet, Resources, Selector,
    },
    raw::{RawDoc, RawResources, RawSize},
};

mod exec;
mod files;
mod network;
mod syscalls;

pub use exec::{ExecPatternError, exec_pattern};
pub use files::{FilePatternError, file_pattern};
pub use network::{CidrError, PortError, parse_cidr};

pub const API_VERSION: &str = "palisade.dev/v1";
pub const KIND: &str = "Policy";

/// Collects the problems of one document; the validated value is built alongside.
pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a str,
    pub(crate) errors: Vec<Diagnostic>,
}

impl Ctx<'_> {
    pub(crate) fn loc<T>(&self, s: &Spanned<T>) -> Loc {
        Loc {
            file: self.file.to_owned(),
            line: s.referenced.line(),
            column: s.referenced.column(),
        }
    }

    pub(crate) fn err<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        let loc = self.loc(at);
        self.errors.push(Diagnostic {
            loc,
            message: message.into(),
        });
    }

    fn glob(&mut self, s: &Option<Spanned<String>>) -> Option<Glob> {
        let s = s.as_ref()?;
        match Glob::new(&s.value) {
            Ok(g) => Some(g),
            Err(e) => {
                self.err(s, e.to_string());
                None
            }
        }
    }
}

/// Parses the text of one file (one or more `---`-separated documents).
pub fn parse_str(text: &str, file: &str) -> Result<Vec<Policy>, PolicyErrors> {
    let docs: Vec<Spanned<RawDoc>> = serde_saphyr::from_multiple(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        PolicyErrors(vec![Diagnostic {
            loc: Loc {
                file: file.to_owned(),
                line,
                column,
            },
            message: first_message_line(&e.to_string()),
        }])
    })?;
    let mut ctx = Ctx {
        file,
        errors: Vec::new(),
    };
    let mut out = Vec::new();
    if docs.is_empty() {
        ctx.errors.push(Diagnostic {
            loc: Loc {
                file: file.to_owned(),
                line: 1,
                column: 1,
            },
            message: format!("no policy in this file (a document needs apiVersion: {API_VERSION} and kind: {KIND})"),
        });
    }
    for d in docs {
        let loc = ctx.loc(&d);
        if let Some(p) = document(&mut ctx, d.value, loc) {
            out.push(p);
        }
    }
    if ctx.errors.is_empty() {
        Ok(out)
    } else {
        Err(PolicyErrors(ctx.errors))
    }
}

/// serde-saphyr renders `error: line L column C: message` and a snippet; keep the message.
fn first_message_line(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered).trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((pos, rest)) if pos.starts_with("line ") => rest.to_owned(),
        _ => first.to_owned(),
    }
}

fn document(ctx: &mut Ctx<'_>, d: RawDoc, loc: Loc) -> Option<Policy> {
    let before = ctx.errors.len();
    if d.api_version.value != API_VERSION {
        ctx.err(
            &d.api_version,
            format!(
                "unsupported apiVersion `{}` (this Palisade reads {API_VERSION})",
                d.api_version.value
            ),
        );
    }
    if d.kind.value != KIND {
        ctx.err(
            &d.kind,
            format!("unsupported kind `{}` (expected {KIND})", d.kind.value),
        );
    }
    let name = d.metadata.name.value.clone();
    if !valid_name(&name) {
        ctx.err(
            &d.metadata.name,
            format!("invalid policy name `{name}` (letters, digits, `-`, `_`, `.`; at most 63)"),
        );
    }
    let spec_loc = d.spec.referenced;
    let spec = d.spec.value;
    let mode = match &spec.mode {
        None => Mode::Enforce,
        Some(m) => Mode::parse(&m.value).unwrap_or_else(|| {
            ctx.err(m, format!("unknown mode `{}` (audit or enforce)", m.value));
            Mode::Audit
        }),
    };
    let s = &spec.selector.value;
    let selector = Selector {
        workload: ctx.glob(&s.workload),
        container: ctx.glob(&s.container),
        runtime: ctx.glob(&s.runtime),
        namespace: ctx.glob(&s.namespace),
        pod: ctx.glob(&s.pod),
        cgroup: ctx.glob(&s.cgroup),
    };
    if [
        &s.workload,
        &s.container,
        &s.runtime,
        &s.namespace,
        &s.pod,
        &s.cgroup,
    ]
    .iter()
    .all(|f| f.is_none())
    {
        ctx.err(
            &spec.selector,
            "an empty selector would select every cgroup, the host's included; say what it selects (use `cgroup: \"/*\"` if you mean everything)",
        );
    }
    let syscalls = spec.syscalls.as_ref().and_then(|s| syscall_rules(ctx, s));
    let exec = spec.exec.as_ref().and_then(|e| exec_rules(ctx, e));
    let files = spec.files.as_ref().and_then(|f| file_rules(ctx, f));
    let network = match &spec.network {
        None => Network::default(),
        Some(n) => Network {
            egress: n.egress.as_ref().and_then(|d| direction(ctx, d, "egress")),
            ingress: n
                .ingress
                .as_ref()
                .and_then(|d| direction(ctx, d, "ingress")),
        },
    };
    let resources = spec
        .resources
        .as_ref()
        .map(|r| resources(ctx, r))
        .unwrap_or_default();
    if spec.syscalls.is_none()
        && spec.exec.is_none()
        && spec.files.is_none()
        && network.egress.is_none()
        && network.ingress.is_none()
        && resources.is_empty()
    {
        ctx.errors.push(Diagnostic {
            loc: Loc {
                file: ctx.file.to_owned(),
                line: spec_loc.line(),
                column: spec_loc.column(),
            },
            message: "the policy has no rules (give syscalls, exec, files, network or resources)"
                .into(),
        });
    }
    (ctx.errors.len() == before).then(|| Policy {
        name,
        mode,
        selector,
        syscalls,
        exec,
        files,
        network,
        resources,
        loc,
    })
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < palisade_common::policy::RULE_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn resources(ctx: &mut Ctx<'_>, r: &RawResources) -> Resources {
    let mut out = Resources::default();
    if let Some(m) = &r.memory {
        let bytes = match &m.value {
            RawSize::Bytes(b) => Ok(*b),
            RawSize::Text(t) => parse_size(t),
        };
        match bytes {
            Ok(b) if b >= 6 << 20 => out.memory = Some(b),
            Ok(_) => ctx.err(
                m,
                "memory below the 6 MiB minimum (the workload could not start)",
            ),
            Err(e) => ctx.err(m, e.to_string()),
        }
    }
    if let Some(c) = &r.cpu {
        let q = (c.value * 100_000.0).round();
        if !c.value.is_finite() || !(1_000.0..=100_000_000.0).contains(&q) {
            ctx.err(c, "cpu must be from 0.01 to 1000 CPUs");
        } else {
            out.cpu_quota_us = Some(q as u64);
        }
    }
    if let Some(p) = &r.pids {
        if p.value < 2 {
            ctx.err(p, "pids must be at least 2");
        } else {
            out.pids = Some(p.value);
        }
    }
    out
}

/// A size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}`: unknown unit (use K, M or G)")]
    Unit(String),
    #[error("`{0}` is not a size (e.g. 256M)")]
    NotASize(String),
    #[error("`{0}` is out of range")]
    Range(String),
}

/// `256M`, `1G`, `512Ki`, `1048576`: binary multiples.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(end);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "ki" | "kib" | "kb" => 10,
        "m" | "mi" | "mib" | "mb" => 20,
        "g" | "gi" | "gib" | "gb" => 30,
        _ => return Err(SizeError::Unit(s.to_owned())),
    };
    let n: f64 = num.parse().map_err(|_| SizeError::NotASize(s.to_owned()))?;
    let b = n * (1u64 << shift) as f64;
    if !b.is_finite() || !(0.0..9.0e18).contains(&b) {
        return Err(SizeError::Range(s.to_owned()));
    }
    Ok(b as u64)
}

/// Reads files and directories (every `*.yaml`/`*.yml` inside, sorted) into one set, checking
/// the set as a whole too (names unique).
pub fn load_paths(paths: &[PathBuf]) -> Result<PolicySet, PolicyErrors> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(rd) => {
                    let mut v: Vec<PathBuf> = rd
                        .flatten()
                        .map(|e| e.path())
                        .filter(|f| f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                        .collect();
                    v.sort();
                    files.extend(v);
                }
                Err(e) => errors.push(io_diag(p, &e)),
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut set = PolicySet::default();
    for f in &files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => match parse_str(&text, &name) {
                Ok(ps) => set.policies.extend(ps),
                Err(e) => errors.extend(e.0),
            },
            Err(e) => errors.push(io_diag(f, &e)),
        }
        set.files.push(name);
    }
    errors.extend(crate::check::set_errors(&set));
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(PolicyErrors(errors))
    }
}

fn io_diag(p: &Path, e: &std::io::Error) -> Diagnostic {
    Diagnostic {
        loc: Loc {
            file: p.display().to_string(),
            line: 0,
            column: 0,
        },
        message: format!("cannot read: {e}"),
    }
}
