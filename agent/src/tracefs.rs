//! tracefs: find or mount it, and read tracepoint record layouts from `format` files.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {0} (mount it: `mount -t tracefs tracefs /sys/kernel/tracing`)"
    )]
    Mount(nix::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no field `{field}` in the tracepoint format")]
    MissingField { path: PathBuf, field: String },
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Returns the tracefs mount, mounting it at /sys/kernel/tracing when no mount exists.
/// The second value says whether this call mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    let found = || {
        [TRACEFS, DEBUGFS_TRACING]
            .into_iter()
            .find(|dir| Path::new(dir).join("events").is_dir())
            .map(PathBuf::from)
    };
    if let Some(dir) = found() {
        return Ok((dir, false));
    }
    match nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        Ok(()) => Ok((PathBuf::from(TRACEFS), true)),
        // Another process (a second agent starting beside this one, systemd, a tracing
        // tool) mounted it between the look and the mount: mounting tracefs again on its own
        // root is EBUSY. What counts is that it is there now.
        Err(e) => found()
            .map(|dir| (dir, false))
            .ok_or(TracefsError::Mount(e)),
    }
}

/// Field offsets of one tracepoint record.
#[derive(Debug, Clone, Default)]
pub struct Format {
    offsets: HashMap<String, u32>,
    path: PathBuf,
}

impl Format {
    /// Reads `events/<category>/<name>/format` under `tracefs`.
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Self, TracefsError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Self::parse(&text, path))
    }

    /// Parses the text of a `format` file.
    pub fn parse(text: &str, path: PathBuf) -> Self {
        let mut offsets = HashMap::new();
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix("field:") else {
                continue;
            };
            let mut decl = None;
            let mut offset = None;
            for part in rest.split(';') {
                let part = part.trim();
                if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.trim().parse::<u32>().ok();
                } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                    decl = Some(part);
                }
            }
            // `unsigned short common_type`, `__data_loc char[] path`, `char comm[16]`
            let name = decl
                .and_then(|d| d.split_whitespace().last())
                .map(|n| n.split('[').next().unwrap_or(n).to_owned());
            if let (Some(name), Some(offset)) = (name, offset) {
                offsets.insert(name, offset);
            }
        }
        Self { offsets, path }
    }

    pub fn offset(&self, field: &str) -> Result<u32, TracefsError> {
        self.offsets
            .get(field)
            .copied()
            .ok_or_else(|| TracefsError::MissingField {
                path: self.path.clone(),
                field: field.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MKDIR: &str = "name: cgroup_mkdir
ID: 544
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int root;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int level;\toffset:12;\tsize:4;\tsigned:1;
\tfield:u64 id;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] path;\toffset:24;\tsize:4;\tsigned:0;

print fmt: \"root=%d id=%llu level=%d path=%s\", REC->root, REC->id, REC->level, __get_str(path)
";

    #[test]
    fn parses_cgroup_mkdir_format() {
        let f = Format::parse(MKDIR, PathBuf::from("format"));
        assert_eq!(f.offset("common_type").unwrap(), 0);
        assert_eq!(f.offset("root").unwrap(), 8);
        assert_eq!(f.offset("level").unwrap(), 12);
        assert_eq!(f.offset("id").unwrap(), 16);
        assert_eq!(f.offset("path").unwrap(), 24);
        let e = f.offset("nope").unwrap_err().to_string();
        assert!(e.contains("no field `nope`"), "{e}");
    }

    #[test]
    fn parses_array_fields() {
        let f = Format::parse(
            "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n",
            PathBuf::from("x"),
        );
        assert_eq!(f.offset("comm").unwrap(), 8);
    }
}
