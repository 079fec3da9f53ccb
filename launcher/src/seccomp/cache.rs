//! A cache of compiled filters, so a profile is compiled once per host rather than on every
//! launch: libseccomp needs ~15 ms for Docker's profile (three ABIs), longer than everything
//! else `palisade run` does together.
//!
//! Entries live in a root-only directory (`/run/palisade/seccomp-cache`, mode 0700, on tmpfs:
//! gone at reboot, when the kernel or libseccomp may have changed). The key is the whole
//! profile as parsed (rules, actions, arguments, ABIs, flags) plus libseccomp's version, the
//! architecture and the kernel release; the file holds the key itself, compared byte for byte
//! on load, so a hash collision can only cause a miss.
//!
//! A filter read back is loaded into a workload, so nothing in the cache is taken on trust:
//! - the directory is opened without following a symlink and used only if it is root's and
//!   0700 (a missing one is created so); entries are opened relative to it, without following
//!   symlinks, and used only if they are regular files of root's, mode 0600, with one link;
//! - every entry ends with an HMAC-SHA-256 of everything before it (key, flags, program)
//!   under a per-host secret (`.key`: 32 random bytes, 0600, made by the first launch). An
//!   entry planted with the right key and another program fails the check, and the profile is
//!   compiled again (and the entry replaced).
//!
//! The secret is only as safe as the directory: whoever can read the cache can forge entries.
//! Workloads never see it: it is masked (with all of `/run/palisade`) on the host's tree, and a
//! `--rootfs` or bundle workload has its own root.
use std::{
    ffi::CString,
    fs::File,
    hash::{Hash as _, Hasher as _},
    io::{Read as _, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::Path,
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::{CompileError, Compiled, Profile, compile};

pub const DIR: &str = "/run/palisade/seccomp-cache";
const MAGIC: &[u8] = b"palisade-seccomp-cache v3\n";
/// The per-host secret's file name in the cache directory.
const SECRET: &str = ".key";
const SECRET_LEN: usize = 32;
const TAG_LEN: usize = 32;

type Tag = Hmac<Sha256>;

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

/// root's (this process's user), not open to group or others.
fn private(md: &std::fs::Metadata) -> bool {
    md.uid() == nix::unistd::geteuid().as_raw() && md.mode() & 0o077 == 0
}

/// The directory, opened, if it is safe to use (created root-only when missing).
fn open_dir(dir: &Path) -> Option<File> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ok()?;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .ok()?;
    let md = f.metadata().ok()?;
    (md.is_dir() && private(&md)).then_some(f)
}

/// `name` in `dir`, opened with `flags | O_NOFOLLOW | O_CLOEXEC` (and `mode` when created).
fn open_at(dir: &File, name: &str, flags: libc::c_int, mode: libc::c_uint) -> Option<File> {
    let c = CString::new(name).ok()?;
    // SAFETY: a directory descriptor, a NUL-terminated name and integer flags; the result is
    // checked before it is owned.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    // SAFETY: a fresh descriptor, owned by nobody else.
    (fd >= 0).then(|| unsafe { File::from_raw_fd(fd) })
}

/// The contents of `name` in `dir` if it is a private regular file with one link.
fn read_private(dir: &File, name: &str) -> Option<Vec<u8>> {
    let mut f = open_at(dir, name, libc::O_RDONLY, 0)?;
    let md = f.metadata().ok()?;
    if !(md.is_file() && private(&md) && md.nlink() == 1) {
        return None;
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Writes `bytes` to `name` in `dir` atomically (a private temporary file renamed over it,
/// or, with `keep_existing`, linked to it unless it exists).
fn write_private(dir: &File, name: &str, bytes: &[u8], keep_existing: bool) -> Option<()> {
    let tmp = format!(".{name}.{}", std::process::id());
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let written = open_at(dir, &tmp, flags, 0o600).and_then(|mut f| f.write_all(bytes).ok());
    let (t, n) = (CString::new(tmp).ok()?, CString::new(name).ok()?);
    let d = dir.as_raw_fd();
    // SAFETY: a directory descriptor and NUL-terminated names; results are checked.
    let placed = written.is_some()
        && unsafe {
            if keep_existing {
                libc::linkat(d, t.as_ptr(), d, n.as_ptr(), 0) == 0
            } else {
                libc::renameat(d, t.as_ptr(), d, n.as_ptr()) == 0
            }
        };
    // SAFETY: as above; the temporary name is ours (gone already after a rename).
    unsafe { libc::unlinkat(d, t.as_ptr(), 0) };
    placed.then_some(())
}

/// The per-host secret, made on first use (the first writer wins a race).
fn secret(dir: &File) -> Option<Vec<u8>> {
    if let Some(s) = read_private(dir, SECRET) {
        return (s.len() == SECRET_LEN).then_some(s);
    }
    let mut fresh = vec![0u8; SECRET_LEN];
    // SAFETY: getrandom fills the buffer it is given, of the length given.
    let n = unsafe { libc::getrandom(fresh.as_mut_ptr().cast(), fresh.len(), 0) };
    if usize::try_from(n).ok()? != SECRET_LEN {
        return None;
    }
    let _ = write_private(dir, SECRET, &fresh, true);
    read_private(dir, SECRET).filter(|s| s.len() == SECRET_LEN)
}

fn tag(secret: &[u8], bytes: &[u8]) -> Option<Tag> {
    let mut m = Tag::new_from_slice(secret).ok()?;
    m.update(bytes);
    Some(m)
}

fn encode(secret: &[u8], key: &str, c: &Compiled) -> Option<Vec<u8>> {
    let mut out = MAGIC.to_vec();
    let unknown = c.unknown.join(" ");
    for part in [key.as_bytes(), unknown.as_bytes()] {
        out.extend_from_slice(&(part.len() as u64).to_le_bytes());
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&c.flags.to_le_bytes());
    // each program: its instruction count, then its instructions
    for program in &c.programs {
        out.extend_from_slice(&(program.len() as u64).to_le_bytes());
        for i in program {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.extend_from_slice(&[i.jt, i.jf]);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
    }
    let t = tag(secret, &out)?.finalize().into_bytes();
    out.extend_from_slice(&t);
    Some(out)
}

fn decode(secret: &[u8], key: &str, bytes: &[u8]) -> Option<Compiled> {
    let (body, t) = bytes.split_at_checked(bytes.len().checked_sub(TAG_LEN)?)?;
    // constant time; nothing of an entry is read before it checks out
    tag(secret, body)?.verify_slice(t).ok()?;
    /// The next `n` bytes of `rest`.
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (a, b) = rest.split_at_checked(n)?;
        *rest = b;
        Some(a)
    }
    /// A length (u64), then that many bytes.
    fn field<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u64::from_le_bytes(take(rest, 8)?.try_into().ok()?) as usize;
        take(rest, len)
    }
    let rest = &mut body.strip_prefix(MAGIC)?;
    if field(rest)? != key.as_bytes() {
        return None;
    }
    let unknown = std::str::from_utf8(field(rest)?).ok()?;
    let flags = libc::c_ulong::from_le_bytes(take(rest, 8)?.try_into().ok()?);
    let mut programs = Vec::new();
    while !rest.is_empty() {
        let len = u64::from_le_bytes(take(rest, 8)?.try_into().ok()?) as usize;
        if len == 0 {
            return None;
        }
        let program = take(rest, len.checked_mul(8)?)?
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        programs.push(program);
    }
    if programs.is_empty() {
        return None;
    }
    Some(Compiled {
        programs,
        flags,
        unknown: unknown.split_whitespace().map(str::to_owned).collect(),
    })
}

/// Entries kept at most. Each holds one profile's filters (a few hundred bytes; about 30 KB
/// for Docker's profile over three ABIs) in a tmpfs, that is in memory, so a host that launches
/// many generated profiles must not grow it without end: past this, a miss that writes a new
/// entry removes the oldest written. A profile in use is at worst compiled once more.
const MAX_ENTRIES: usize = 256;

/// Whether `name` is an entry's (`file_name`): not the secret, not a temporary.
fn is_entry(name: &str) -> bool {
    name.len() == 20
        && name
            .strip_suffix(".bpf")
            .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Removes the oldest entries (by modification time) beyond `max`, never `keep`. Listed
/// through `/proc/self/fd` (the directory as opened, not its path again), removed with
/// `unlinkat` relative to it.
fn evict(dir: &File, keep: &str, max: usize) {
    let Ok(list) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, String)> = list
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let mtime = e.metadata().ok()?.modified().ok()?;
            (is_entry(&name) && name != keep).then_some((mtime, name))
        })
        .collect();
    // `keep` counts towards `max` too
    let excess = (entries.len() + 1).saturating_sub(max);
    if excess == 0 {
        return;
    }
    entries.sort();
    for (_, name) in entries.into_iter().take(excess) {
        let Ok(c) = CString::new(name) else { continue };
        // SAFETY: a directory descriptor and a NUL-terminated name; the result is not needed
        // (another launcher may have removed it first).
        unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) };
    }
}

/// `compile(p)`, through the cache in `dir`. Cache trouble only ever costs a compile.
pub fn compile_cached(p: &Profile, dir: &Path) -> Result<Compiled, CompileError> {
    compile_cached_max(p, dir, MAX_ENTRIES)
}

/// [`compile_cached`] with a cache of at most `max` entries.
fn compile_cached_max(p: &Profile, dir: &Path, max: usize) -> Result<Compiled, CompileError> {
    let Some(dir) = open_dir(dir) else {
        return compile(p);
    };
    let Some(secret) = secret(&dir) else {
        return compile(p);
    };
    let key = key(p);
    let name = file_name(&key);
    if let Some(c) = read_private(&dir, &name).and_then(|b| decode(&secret, &key, &b)) {
        return Ok(c);
    }
    let c = compile(p)?;
    if let Some(bytes) = encode(&secret, &key, &c)
        && write_private(&dir, &name, &bytes, false).is_some()
    {
        evict(&dir, &name, max);
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::seccomp::palisade_default;

    fn same(a: &Compiled, b: &Compiled) -> bool {
        a.flags == b.flags
            && a.programs.len() == b.programs.len()
            && a.programs.iter().zip(&b.programs).all(|(a, b)| {
                a.len() == b.len()
                    && a.iter()
                        .zip(b)
                        .all(|(a, b)| (a.code, a.jt, a.jf, a.k) == (b.code, b.jt, b.jf, b.k))
            })
    }

    /// The one entry (not the secret) in `dir`.
    fn entry(dir: &Path) -> std::path::PathBuf {
        let found: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "bpf"))
            .collect();
        assert_eq!(found.len(), 1, "{found:?}");
        found[0].clone()
    }

    #[test]
    fn a_cached_filter_is_the_compiled_one() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let p = palisade_default(0);
        let fresh = compile(&p).unwrap();
        let first = compile_cached(&p, &dir).unwrap();
        let second = compile_cached(&p, &dir).unwrap();
        assert!(same(&first, &fresh) && same(&second, &fresh));
        let e = entry(&dir);
        assert_eq!(std::fs::metadata(&e).unwrap().mode() & 0o777, 0o600);
        let key_file = dir.join(SECRET);
        assert_eq!(std::fs::metadata(&key_file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&key_file).unwrap().len(), SECRET_LEN);
        // another profile is another entry; a foreign key or garbage is a miss
        let mut q = p.clone();
        q.log = true;
        let c = compile_cached(&q, &dir).unwrap();
        assert_eq!(c.flags, 2);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
        let s = std::fs::read(&key_file).unwrap();
        let k = key(&p);
        let bytes = encode(&s, &k, &fresh).unwrap();
        assert!(decode(&s, &k, &bytes).is_some());
        assert!(decode(&s, &key(&q), &bytes).is_none());
        assert!(decode(&s, &k, b"garbage").is_none());
        assert!(
            decode(&[7u8; SECRET_LEN], &k, &bytes).is_none(),
            "another host's secret"
        );
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_planted_entry_with_the_right_key_and_another_program_is_compiled_again() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let p = palisade_default(0);
        let fresh = compile_cached(&p, &dir).unwrap();
        let e = entry(&dir);
        let good = std::fs::read(&e).unwrap();
        // the same key, the program replaced by "allow everything", the old tag kept (and,
        // second, a tag made without the secret)
        let allow = Compiled {
            programs: vec![vec![libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }]],
            flags: 0,
            unknown: Vec::new(),
        };
        let forged = encode(&[0u8; SECRET_LEN], &key(&p), &allow).unwrap();
        let mut kept_tag = forged[..forged.len() - TAG_LEN].to_vec();
        kept_tag.extend_from_slice(&good[good.len() - TAG_LEN..]);
        for plant in [forged, kept_tag] {
            std::fs::write(&e, &plant).unwrap();
            let got = compile_cached(&p, &dir).unwrap();
            assert!(same(&got, &fresh), "the planted program was used");
            assert_eq!(
                std::fs::read(&e).unwrap(),
                good,
                "the entry is written again"
            );
        }
    }

    #[test]
    fn entries_that_are_links_or_open_to_others_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let p = palisade_default(0);
        let fresh = compile_cached(&p, &dir).unwrap();
        let e = entry(&dir);
        let good = std::fs::read(&e).unwrap();
        let dirf = open_dir(&dir).unwrap();
        let name = e.file_name().unwrap().to_str().unwrap().to_owned();
        // group-readable: refused
        std::fs::set_permissions(&e, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_private(&dirf, &name).is_none());
        // a symlink to a good copy: refused (O_NOFOLLOW)
        std::fs::remove_file(&e).unwrap();
        let elsewhere = d.path().join("copy");
        std::fs::write(&elsewhere, &good).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &e).unwrap();
        assert!(read_private(&dirf, &name).is_none());
        // a hard link (two names): refused
        std::fs::remove_file(&e).unwrap();
        std::fs::hard_link(&elsewhere, &e).unwrap();
        assert!(read_private(&dirf, &name).is_none());
        // and in each case the launch still gets the right filter
        assert!(same(&compile_cached(&p, &dir).unwrap(), &fresh));
    }

    #[test]
    fn past_its_size_the_cache_drops_the_oldest_entries() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let profiles: Vec<Profile> = ["read", "write", "close", "openat"]
            .iter()
            .map(|n| crate::seccomp::init_profile(&[n]))
            .collect();
        let path = |p: &Profile| dir.join(file_name(&key(p)));
        let entries = || {
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_str().is_some_and(is_entry))
                .count()
        };
        compile_cached_max(&profiles[0], &dir, 2).unwrap();
        compile_cached_max(&profiles[1], &dir, 2).unwrap();
        assert_eq!(entries(), 2);
        // the first written is the oldest
        let past = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        File::options()
            .write(true)
            .open(path(&profiles[0]))
            .and_then(|f| f.set_modified(past))
            .unwrap();
        compile_cached_max(&profiles[2], &dir, 2).unwrap();
        assert_eq!(entries(), 2, "at most 2");
        assert!(!path(&profiles[0]).exists(), "the oldest went");
        assert!(path(&profiles[1]).exists() && path(&profiles[2]).exists());
        assert!(dir.join(SECRET).exists(), "the secret is not an entry");
        // a hit writes nothing and removes nothing
        compile_cached_max(&profiles[1], &dir, 1).unwrap();
        assert_eq!(entries(), 2);
        // a miss at a smaller size keeps the one it wrote
        compile_cached_max(&profiles[3], &dir, 1).unwrap();
        assert_eq!(entries(), 1);
        assert!(path(&profiles[3]).exists());
    }

    #[test]
    fn a_directory_open_to_others_or_a_symlink_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(open_dir(d.path()).is_none());
        compile_cached(&palisade_default(0), d.path()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        let real = d.path().join("real");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&real)
            .unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(open_dir(&link).is_none());
        assert!(open_dir(&real).is_some());
    }
}
