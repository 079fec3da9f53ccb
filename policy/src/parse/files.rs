//! File rules: the action, and deny entries of absolute paths (`/exact`, `/dir/**`) with the
//! accesses they refuse. Anything the kernel matcher cannot do is an error that says what it
//! can do.
use palisade_syscalls::errno;
use serde_saphyr::Spanned;

use super::Ctx;
use crate::{
    files::{FileAccess, FileAction, FileRule, Files, PathKind, PathPattern},
    raw::{RawErrno, RawFiles},
};

/// A file path pattern the matcher cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilePatternError {
    #[error("`{0}`: the kernel matcher does {FORMS}")]
    Form(String),
    #[error(
        "`{0}`: `/dir/*` (files directly in a directory) is not supported for file rules; the kernel matcher does {FORMS}"
    )]
    Dir(String),
    #[error(
        "`{0}` is not an absolute path: file rules match the path the kernel resolves (with BPF-LSM) or the path as given to the call, never relative to a directory; the kernel matcher does {FORMS}"
    )]
    Relative(String),
    #[error(
        "`{0}` is not a canonical path (an empty, `.` or `..` component): the kernel matches resolved paths, so it could never match"
    )]
    NotCanonical(String),
    #[error("`{0}` is longer than the 255 bytes the kernel compares")]
    TooLong(String),
}

const FORMS: &str = "exact paths (/etc/shadow) and trees (/root/**: anything below /root); list the files, or use the tree of their directory";

/// `/x/y` exact, `/x/**` tree, `/**` everything.
pub fn file_pattern(text: &str) -> Result<(PathKind, String), FilePatternError> {
    let wild = |s: &str| s.contains(['*', '?', '[', ']', '{', '}']);
    if text.starts_with("**/") {
        return Err(FilePatternError::Form(text.to_owned()));
    }
    if !text.starts_with('/') {
        return Err(FilePatternError::Relative(text.to_owned()));
    }
    let (kind, key) = match text.strip_suffix("/**") {
        Some(dir) => (PathKind::Tree, dir),
        None => (PathKind::Exact, text),
    };
    if wild(key) {
        return Err(match key.strip_suffix("/*") {
            Some(d) if kind == PathKind::Exact && !wild(d) => {
                FilePatternError::Dir(text.to_owned())
            }
            _ => FilePatternError::Form(text.to_owned()),
        });
    }
    if kind == PathKind::Exact && text == "/" {
        return Err(FilePatternError::Form(text.to_owned()));
    }
    if !key.is_empty()
        && !key
            .split('/')
            .skip(1)
            .all(|c| !matches!(c, "" | "." | ".."))
    {
        return Err(FilePatternError::NotCanonical(text.to_owned()));
    }
    if text.len() >= palisade_common::policy::POLICY_PATH_MAX {
        return Err(FilePatternError::TooLong(text.to_owned()));
    }
    Ok((kind, key.to_owned()))
}

fn errno_value(e: &RawErrno) -> Option<u16> {
    let n = match e {
        RawErrno::Number(n) => Some(*n),
        RawErrno::Name(s) => errno::number(s),
    };
    n.and_then(|n| u16::try_from(n).ok())
        .filter(|n| (1..4096).contains(n))
}

pub(super) fn file_rules(ctx: &mut Ctx<'_>, f: &Spanned<RawFiles>) -> Option<Files> {
    let r = &f.value;
    if let Some(a) = &r.allow {
        ctx.err(
            a,
            "file rules are deny-lists (`deny:` entries of paths and the accesses refused on them); there is no `allow`",
        );
        return None;
    }
    let action = match &r.action {
        None => FileAction::Errno(1),
        Some(a) => match a.value.as_str() {
            "errno" => FileAction::Errno(1),
            "kill" => FileAction::Kill,
            "log" => FileAction::Log,
            other => {
                ctx.err(
                    a,
                    format!("unknown file action `{other}` (errno, kill or log)"),
                );
                return None;
            }
        },
    };
    let action = match (&r.errno, action) {
        (None, a) => a,
        (Some(e), FileAction::Errno(_)) => match errno_value(&e.value) {
            Some(n) => FileAction::Errno(n),
            None => {
                ctx.err(
                    e,
                    "unknown errno (a name like EPERM, EACCES, or a number from 1 to 4095)",
                );
                return None;
            }
        },
        (Some(e), _) => {
            ctx.err(e, "`errno` goes with `action: errno` only");
            return None;
        }
    };
    let Some(entries) = &r.deny else {
        ctx.err(
            f,
            "give `deny`: entries like {paths: [/etc/shadow, /root/**], access: [read, write]}",
        );
        return None;
    };
    let mut deny = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let loc = ctx.loc(e);
        let rule = match &e.value.name {
            None => format!("files.deny[{i}]"),
            Some(n) if super::valid_name(&n.value) => n.value.clone(),
            Some(n) => {
                ctx.err(
                    n,
                    format!(
                        "invalid rule name `{}` (letters, digits, `-`, `_`, `.`)",
                        n.value
                    ),
                );
                continue;
            }
        };
        let mut paths = Vec::new();
        match &e.value.paths {
            None => ctx.err(
                e,
                "a file rule needs `paths` (absolute paths: /etc/shadow, /root/**)",
            ),
            Some(v) if v.is_empty() => ctx.err(e, "`paths` is empty: the rule would match nothing"),
            Some(v) => {
                for p in v {
                    match file_pattern(&p.value) {
                        Ok((kind, key)) => paths.push(PathPattern {
                            text: p.value.clone(),
                            kind,
                            key,
                            loc: ctx.loc(p),
                        }),
                        Err(m) => ctx.err(p, m.to_string()),
                    }
                }
            }
        }
        let mut mask = 0;
        let kinds = || {
            FileAccess::ALL
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &e.value.access {
            None => ctx.err(
                e,
                format!("a file rule needs `access` (any of {})", kinds()),
            ),
            Some(v) if v.is_empty() => ctx.err(
                e,
                format!(
                    "`access` is empty: the rule would refuse nothing (any of {})",
                    kinds()
                ),
            ),
            Some(v) => {
                for a in v {
                    match FileAccess::parse(&a.value) {
                        Some(k) => mask |= k.bit(),
                        None => ctx.err(
                            a,
                            format!("unknown access `{}` (any of {})", a.value, kinds()),
                        ),
                    }
                }
            }
        }
        deny.push(FileRule {
            rule,
            paths,
            access: FileAccess::of_mask(mask),
            loc,
        });
    }
    Some(Files {
        action,
        deny,
        loc: ctx.loc(f),
    })
}
