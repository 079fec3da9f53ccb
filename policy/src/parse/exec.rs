//! Exec rules: the action, and patterns (`/exact`, `/dir/*`, `/dir/**`, `**/name`) written as
//! canonical paths, since the kernel matches them against the resolved path of the file
//! executed.
use serde_saphyr::Spanned;

use super::Ctx;
use crate::{
    model::{Exec, ExecAction, ExecKind, ExecPattern},
    raw::RawExec,
};

/// An exec pattern the matcher cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecPatternError {
    #[error("`{0}`: {FORMS}")]
    Form(String),
    #[error(
        "`{0}` is not an absolute path ({FORMS}); exec rules match the resolved path of the file executed"
    )]
    Relative(String),
    #[error(
        "`{0}` is not a canonical path (an empty, `.` or `..` component): exec rules match the resolved path of the file executed, so it could never match"
    )]
    NotCanonical(String),
    #[error("`{0}` is longer than the 255 bytes the kernel compares")]
    TooLong(String),
}

const FORMS: &str = "supported forms: /path/to/file, /dir/* (files in /dir), /dir/** (anything below /dir), **/name (any path ending in /name)";

/// `/x/y` exact, `/x/*` directory, `/x/**` tree, `**/name` file name.
pub fn exec_pattern(text: &str) -> Result<(ExecKind, String), ExecPatternError> {
    let wild = |s: &str| s.contains(['*', '?', '[', ']', '{', '}']);
    let form = || ExecPatternError::Form(text.to_owned());
    let canonical = |path: &str| {
        path.split('/')
            .skip(1)
            .all(|c| !matches!(c, "" | "." | ".."))
    };
    if let Some(name) = text.strip_prefix("**/") {
        if name.is_empty() || name.contains('/') || wild(name) {
            return Err(form());
        }
        if name == "." || name == ".." {
            return Err(ExecPatternError::NotCanonical(text.to_owned()));
        }
        return Ok((ExecKind::Basename, name.to_owned()));
    }
    if !text.starts_with('/') {
        return Err(ExecPatternError::Relative(text.to_owned()));
    }
    // what is hashed: the directory of `/dir/*` and `/dir/**` (empty for `/*`), or the path
    let key = text
        .strip_suffix("/**")
        .or_else(|| text.strip_suffix("/*"))
        .unwrap_or(text);
    if !key.is_empty() && !canonical(key) {
        return Err(ExecPatternError::NotCanonical(text.to_owned()));
    }
    if let Some(dir) = text.strip_suffix("/**") {
        if wild(dir) {
            return Err(form());
        }
        return Ok((ExecKind::Tree, dir.to_owned()));
    }
    if let Some(dir) = text.strip_suffix("/*") {
        if wild(dir) {
            return Err(form());
        }
        return Ok((ExecKind::Dir, dir.to_owned()));
    }
    if wild(text) || text.ends_with('/') {
        return Err(form());
    }
    if text.len() >= palisade_common::policy::POLICY_PATH_MAX {
        return Err(ExecPatternError::TooLong(text.to_owned()));
    }
    Ok((ExecKind::Exact, text.to_owned()))
}

pub(super) fn exec_rules(ctx: &mut Ctx<'_>, e: &Spanned<RawExec>) -> Option<Exec> {
    let r = &e.value;
    let action = match &r.action {
        None => ExecAction::Kill,
        Some(a) => match a.value.as_str() {
            "errno" => ExecAction::Errno,
            "kill" => ExecAction::Kill,
            "log" => ExecAction::Log,
            other => {
                ctx.err(
                    a,
                    format!("unknown exec action `{other}` (errno, kill or log)"),
                );
                return None;
            }
        },
    };
    if r.allow.is_none() && r.deny.is_none() {
        ctx.err(
            e,
            "give `allow` (only these may run) and/or `deny` (these may not)",
        );
        return None;
    }
    let mut patterns = |list: &Option<Vec<Spanned<String>>>| -> Vec<ExecPattern> {
        let mut out = Vec::new();
        for p in list.iter().flatten() {
            match exec_pattern(&p.value) {
                Ok((kind, key)) => out.push(ExecPattern {
                    text: p.value.clone(),
                    kind,
                    key,
                    loc: ctx.loc(p),
                }),
                Err(m) => ctx.err(p, m.to_string()),
            }
        }
        out
    };
    let allow = r.allow.is_some().then(|| patterns(&r.allow));
    let deny = patterns(&r.deny);
    Some(Exec {
        allow,
        deny,
        action,
        loc: ctx.loc(e),
        action_loc: match &r.action {
            Some(a) => ctx.loc(a),
            None => ctx.loc(e),
        },
    })
}
