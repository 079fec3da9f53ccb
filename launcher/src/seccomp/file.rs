//! Profiles from files (`--seccomp FILE`): reading, JSON syntax, then [`super::parse`]. The
//! parsing half, [`parse_profile`], touches nothing but its input: the entry point a fuzzer
//! drives.
use std::path::{Path, PathBuf};

use super::{CompileError, Host, Profile, parse};
use crate::json::{self, Field, FieldError};

/// A profile that cannot be used, or a filter that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "cannot read the seccomp profile {}: {source} (give `default`, `unconfined` or a readable JSON file)",
        path.display()
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{}:{}: invalid JSON: {source}", path.display(), source.line(), source.column())]
    Syntax {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// A field of the profile, named by its JSON path.
    #[error("seccomp profile {}: {source}", path.display())]
    Field { path: PathBuf, source: FieldError },
    /// The filter the launcher's init confines itself with.
    #[error("seccomp (the init's filter): {0}")]
    InitFilter(#[source] CompileError),
    /// The workload's filter.
    #[error("seccomp: {0}")]
    Compile(#[source] CompileError),
}

/// Parses the text of an OCI `linux.seccomp` object or a Docker/moby profile; `path` names it
/// in messages. Docker's `includes`/`excludes` are evaluated against `host`.
pub fn parse_profile(text: &str, path: &Path, host: &Host) -> Result<Profile, SeccompError> {
    let value = json::parse(text).map_err(|source| SeccompError::Syntax {
        path: path.to_owned(),
        source,
    })?;
    parse(Field::root(value), &path.display().to_string(), host).map_err(|source| {
        SeccompError::Field {
            path: path.to_owned(),
            source,
        }
    })
}

/// Reads and parses a profile file.
pub fn read_profile(path: &Path, host: &Host) -> Result<Profile, SeccompError> {
    let text = std::fs::read_to_string(path).map_err(|source| SeccompError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_profile(&text, path, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host {
            caps: 0,
            goarch: "amd64",
            kernel: (6, 18),
        }
    }

    #[test]
    fn errors_say_where() {
        let p = Path::new("p.json");
        let e = parse_profile("{\"defaultAction\": ", p, &host()).unwrap_err();
        assert!(
            e.to_string().starts_with("p.json:1:18: invalid JSON: "),
            "{e}"
        );
        let e = parse_profile(r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, p, &host()).unwrap_err();
        let SeccompError::Field { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.path, "defaultAction");
        assert_eq!(source.value.as_deref(), Some("\"SCMP_ACT_NOPE\""));
        assert_eq!(
            e.to_string(),
            "seccomp profile p.json: defaultAction: unknown action `SCMP_ACT_NOPE` (SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL_PROCESS, ...)"
        );
        let e = read_profile(Path::new("/nonexistent/p.json"), &host()).unwrap_err();
        assert!(matches!(e, SeccompError::Read { .. }), "{e:?}");
    }
}
