//! A cache of compiled filters, so a profile is compiled once per host rather than on every
//! launch: libseccomp needs ~15 ms for Docker's profile (three ABIs), longer than everything
//! else `palisade run` does together.
//!
//! Entries live in a root-only directory (`/run/palisade/seccomp-cache`, mode 0700, on tmpfs:
//! gone at reboot, when the kernel or libseccomp may have changed). The key is the whole
//! profile as parsed (rules, actions, arguments, ABIs, flags) plus libseccomp's version, the
//! architecture and the kernel release; the file holds the key itself, compared byte for byte
//! on load, so a hash collision can only cause a miss. A directory not owned by root or open to
//! others is not used at all: nobody else may plant a filter.
use std::{
    hash::{Hash as _, Hasher as _},
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use super::{CompileError, Compiled, Profile, compile};

pub const DIR: &str = "/run/palisade/seccomp-cache";
const MAGIC: &[u8] = b"palisade-seccomp-cache v1\n";

/// What identifies a compiled filter: everything compile() reads, and the tools it used.
fn key(p: &Profile) -> String {
    let version = libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_default();
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "libseccomp {version}; kernel {kernel}; arch {}; default {:?}; arches {:?}; log {}; spec_allow {}; rules {:?}",
        std::env::consts::ARCH,
        p.default_action,
        p.arches,
        p.log,
        p.spec_allow,
        p.rules
    )
}

fn file_name(key: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    format!("{:016x}.bpf", h.finish())
}

/// The directory, if it is safe to use (created root-only when missing).
fn usable_dir(dir: &Path) -> Option<PathBuf> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).ok()?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).ok()?;
    }
    let md = std::fs::symlink_metadata(dir).ok()?;
    (md.is_dir() && md.uid() == nix::unistd::geteuid().as_raw() && md.mode() & 0o077 == 0)
        .then(|| dir.to_owned())
}

fn encode(key: &str, c: &Compiled) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let unknown = c.unknown.join(" ");
    for part in [key.as_bytes(), unknown.as_bytes()] {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&c.flags.to_le_bytes());
    for i in &c.program {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.extend_from_slice(&[i.jt, i.jf]);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

fn decode(key: &str, bytes: &[u8]) -> Option<Compiled> {
    let mut rest = bytes.strip_prefix(MAGIC)?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = (rest.get(..n)?, rest.get(n..)?);
        rest = b;
        Some(a)
    };
    let mut field = || -> Option<Vec<u8>> {
        let len = u64::from_le_bytes(take(8)?.try_into().ok()?) as usize;
        Some(take(len)?.to_vec())
    };
    if field()? != key.as_bytes() {
        return None;
    }
    let unknown = String::from_utf8(field()?).ok()?;
    let flags = libc::c_ulong::from_le_bytes(take(8)?.try_into().ok()?);
    if rest.len() % 8 != 0 || rest.is_empty() {
        return None;
    }
    let program = rest
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    Some(Compiled {
        program,
        flags,
        unknown: unknown.split_whitespace().map(str::to_owned).collect(),
    })
}

/// `compile(p)`, through the cache in `dir`. Cache trouble only ever costs a compile.
pub fn compile_cached(p: &Profile, dir: &Path) -> Result<Compiled, CompileError> {
    let Some(dir) = usable_dir(dir) else {
        return compile(p);
    };
    let key = key(p);
    let path = dir.join(file_name(&key));
    if let Some(c) = std::fs::read(&path).ok().and_then(|b| decode(&key, &b)) {
        return Ok(c);
    }
    let c = compile(p)?;
    let tmp = dir.join(format!(".{}.{}", file_name(&key), std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&encode(&key, &c)))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::palisade_default;

    #[test]
    fn a_cached_filter_is_the_compiled_one() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let p = palisade_default(0);
        let fresh = compile(&p).unwrap();
        let first = compile_cached(&p, &dir).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let second = compile_cached(&p, &dir).unwrap();
        for c in [&first, &second] {
            assert_eq!(c.program.len(), fresh.program.len());
            assert!(
                c.program
                    .iter()
                    .zip(&fresh.program)
                    .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k))
            );
            assert_eq!(c.flags, fresh.flags);
        }
        // another profile is another entry; a tampered or foreign entry is a miss
        let mut q = p.clone();
        q.log = true;
        let c = compile_cached(&q, &dir).unwrap();
        assert_eq!(c.flags, 2);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
        let k = key(&p);
        assert!(decode(&key(&q), &encode(&k, &fresh)).is_none());
        assert!(decode(&k, b"garbage").is_none());
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_directory_open_to_others_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(usable_dir(d.path()).is_none());
        compile_cached(&palisade_default(0), d.path()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
