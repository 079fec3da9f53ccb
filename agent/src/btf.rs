//! A minimal reader of the kernel's BTF (/sys/kernel/btf/vmlinux): enough to find the byte
//! offset of a struct member, including members inside anonymous structs and unions.
//!
//! The eBPF programs do not use CO-RE relocations (the Rust toolchain does not emit them), so the
//! few kernel struct fields they read (`task_struct.exit_code`, `mm_struct.arg_start`, …) are
//! located here at load time and passed in as globals. When BTF is missing, the programs are told
//! so and skip those reads; the agent then falls back to /proc.
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("not a BTF blob: {0}")]
    Format(&'static str),
    #[error("no struct `{0}` in the kernel BTF")]
    NoStruct(String),
    #[error("no member `{member}` in struct `{ty}`")]
    NoMember { ty: String, member: String },
    #[error("member `{member}` of struct `{ty}` is a bitfield")]
    Bitfield { ty: String, member: String },
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// The kernel's BTF blob, indexed without being unpacked: the byte offset of each type's
/// record, and the ids of the named structs. Names and members are read from the blob when a
/// lookup asks for them. (Unpacking every member into an owned string made the three parses of
/// vmlinux at start-up, 126,000 types and 67,000 members on 6.18, a third of a debug agent's
/// start-up CPU.)
#[derive(Debug)]
pub struct Btf {
    data: Vec<u8>,
    /// The type section's byte range in `data`.
    types: std::ops::Range<usize>,
    /// The string section's byte range in `data`.
    strings: std::ops::Range<usize>,
    /// Type id `n` (from 1; 0 is `void`) starts at `records[n - 1]` in the type section.
    records: Vec<u32>,
    /// Ids of the named structs, in id order (the first of a name is the one looked up).
    structs: Vec<u32>,
}

/// One type's record: its 12-byte header and where what follows it starts.
#[derive(Debug, Clone, Copy)]
struct Record {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    size_or_type: u32,
    /// Offset of the data that follows the header, in the type section.
    body: usize,
}

impl Record {
    /// Decodes the header at `at` in the type section.
    fn at(section: &[u8], at: usize) -> Result<Self, BtfError> {
        let info = u32_at(section, at.saturating_add(4))?;
        Ok(Self {
            name_off: u32_at(section, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(section, at.saturating_add(8))?,
            body: at.saturating_add(12),
        })
    }
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    off.checked_add(4)
        .and_then(|end| b.get(off..end))
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Format("truncated"))
}

/// Bytes that follow a record's header, by kind.
fn trailing(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        1 => 4,  // INT
        3 => 12, // ARRAY
        KIND_STRUCT | KIND_UNION => vlen * 12,
        6 => vlen * 8,        // ENUM
        13 => vlen * 8,       // FUNC_PROTO
        14 => 4,              // VAR
        15 => vlen * 12,      // DATASEC
        17 => 4,              // DECL_TAG
        19 => vlen * 12,      // ENUM64
        2 | 7 | 12 | 16 => 0, // PTR, FWD, FUNC, FLOAT
        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => 0,
        _ => return Err(BtfError::Format("unknown type kind")),
    })
}

fn section(data: &[u8], start: usize, len: usize) -> Option<std::ops::Range<usize>> {
    let end = start.checked_add(len)?;
    (end <= data.len()).then_some(start..end)
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(data)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        Self::from_bytes(data.to_vec())
    }

    fn from_bytes(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Format(
                "bad magic (big-endian BTF is not supported)",
            ));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let type_off = u32_at(&data, 8)? as usize;
        let type_len = u32_at(&data, 12)? as usize;
        let str_off = u32_at(&data, 16)? as usize;
        let str_len = u32_at(&data, 20)? as usize;
        let types = hdr_len
            .checked_add(type_off)
            .and_then(|start| section(&data, start, type_len))
            .ok_or(BtfError::Format("type section out of range"))?;
        let strings = hdr_len
            .checked_add(str_off)
            .and_then(|start| section(&data, start, str_len))
            .ok_or(BtfError::Format("string section out of range"))?;
        let mut btf = Self {
            data,
            types,
            strings,
            records: Vec::new(),
            structs: Vec::new(),
        };
        let section = &btf.data[btf.types.clone()];
        let mut p = 0usize;
        while p < section.len() {
            let r = Record::at(section, p)?;
            let end = r.body + trailing(r.kind, r.vlen)?;
            if end > section.len() {
                return Err(BtfError::Format("truncated"));
            }
            btf.records
                .push(u32::try_from(p).map_err(|_| BtfError::Format("type section too large"))?);
            if r.kind == KIND_STRUCT && !btf.name(r.name_off).is_empty() {
                btf.structs.push(btf.records.len() as u32);
            }
            p = end;
        }
        Ok(btf)
    }

    /// The string at `off` (empty when out of range).
    fn name(&self, off: u32) -> &[u8] {
        let s = self.data[self.strings.clone()]
            .get(off as usize..)
            .unwrap_or_default();
        let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        &s[..end]
    }

    /// Type `id`'s record (none for `void` and unknown ids). Every record was bounds-checked
    /// when the blob was indexed.
    fn record(&self, id: u32) -> Option<Record> {
        let at = *self.records.get((id as usize).checked_sub(1)?)? as usize;
        Record::at(&self.data[self.types.clone()], at).ok()
    }

    /// Follows typedef/const/volatile/restrict/type tag to a struct or union.
    fn composite(&self, mut id: u32) -> Option<Record> {
        for _ in 0..32 {
            let r = self.record(id)?;
            match r.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = r.size_or_type;
                }
                KIND_STRUCT | KIND_UNION => return Some(r),
                _ => return None,
            }
        }
        None
    }

    /// Member `i` of a struct or union: (name offset, type id, bit offset, bitfield).
    fn member(&self, r: &Record, i: usize) -> Option<(u32, u32, u32, bool)> {
        let section = &self.data[self.types.clone()];
        let m = r.body + i * 12;
        let off = u32_at(section, m + 8).ok()?;
        let (bit_offset, bitfield) = if r.kind_flag {
            (off & 0x00ff_ffff, off >> 24 != 0)
        } else {
            (off, false)
        };
        Some((
            u32_at(section, m).ok()?,
            u32_at(section, m + 4).ok()?,
            bit_offset,
            bitfield,
        ))
    }

    /// Byte offset of `member` in `struct ty`, looking through anonymous struct/union members.
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        let id = self
            .structs
            .iter()
            .copied()
            .find(|id| {
                self.record(*id)
                    .is_some_and(|r| self.name(r.name_off) == ty.as_bytes())
            })
            .ok_or_else(|| BtfError::NoStruct(ty.to_owned()))?;
        let bits = self
            .find(id, member.as_bytes(), 0, 0)
            .ok_or_else(|| BtfError::NoMember {
                ty: ty.to_owned(),
                member: member.to_owned(),
            })?;
        match bits {
            (b, false) if b % 8 == 0 => Ok(b / 8),
            _ => Err(BtfError::Bitfield {
                ty: ty.to_owned(),
                member: member.to_owned(),
            }),
        }
    }

    fn find(&self, id: u32, member: &[u8], base: u32, depth: u32) -> Option<(u32, bool)> {
        if depth > 8 {
            return None;
        }
        let r = self.composite(id)?;
        let members = || (0..r.vlen).filter_map(|i| self.member(&r, i));
        // an offset past u32 is a malformed blob: not found (never a wrapped offset)
        for (name, _, bit_offset, bitfield) in members() {
            if self.name(name) == member {
                return Some((base.checked_add(bit_offset)?, bitfield));
            }
        }
        // anonymous members: search inside
        for (_, type_id, bit_offset, _) in members().filter(|m| self.name(m.0).is_empty()) {
            let Some(at) = base.checked_add(bit_offset) else {
                continue;
            };
            if let Some(found) = self.find(type_id, member, at, depth + 1) {
                return Some(found);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: struct outer { int a; union { long b; int c; }; const inner d; }
    /// with struct inner { int x; int y; } — offsets in bits.
    fn blob() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut s = |n: &str| {
            let off = strings.len() as u32;
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
            off
        };
        let (n_int, n_outer, n_inner, n_a, n_b, n_c, n_d, n_x, n_y) = (
            s("int"),
            s("outer"),
            s("inner"),
            s("a"),
            s("b"),
            s("c"),
            s("d"),
            s("x"),
            s("y"),
        );
        let mut t = Vec::new();
        let mut put = |v: u32| t.extend_from_slice(&v.to_le_bytes());
        // 1: int
        put(n_int);
        put(1 << 24);
        put(4);
        put(32);
        // 2: struct inner { int x @0; int y @32 }
        put(n_inner);
        put((4 << 24) | 2);
        put(8);
        put(n_x);
        put(1);
        put(0);
        put(n_y);
        put(1);
        put(32);
        // 3: const inner
        put(0);
        put(10 << 24);
        put(2);
        // 4: anonymous union { int b @0; int c @0 }
        put(0);
        put((5 << 24) | 2);
        put(8);
        put(n_b);
        put(1);
        put(0);
        put(n_c);
        put(1);
        put(0);
        // 5: struct outer { int a @0; union @64; const inner d @128 }
        put(n_outer);
        put((4 << 24) | 3);
        put(24);
        put(n_a);
        put(1);
        put(0);
        put(0);
        put(4);
        put(64);
        put(n_d);
        put(3);
        put(128);
        // 6: struct { int x @0 } whose name is the empty string at a non-zero offset (the NUL
        // that ends "int"): nameless, as if its offset were 0
        put(n_int + 3);
        put((4 << 24) | 1);
        put(4);
        put(n_x);
        put(1);
        put(0);
        let mut out = Vec::new();
        out.extend_from_slice(&[0x9f, 0xeb, 1, 0]);
        out.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
        out.extend_from_slice(&0u32.to_le_bytes()); // type_off
        out.extend_from_slice(&(t.len() as u32).to_le_bytes());
        out.extend_from_slice(&(t.len() as u32).to_le_bytes()); // str_off
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "d").unwrap(), 16);
        assert_eq!(btf.member_offset("inner", "y").unwrap(), 4);
        assert!(matches!(
            btf.member_offset("outer", "zz"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct(_))
        ));
        // nameless structs are not indexed, whatever their name offset
        assert!(matches!(
            btf.member_offset("", "x"),
            Err(BtfError::NoStruct(_))
        ));
        assert!(Btf::parse(b"nope").is_err());
    }

    /// Found by the `btf` fuzz target: member offsets that add past u32 inside nested
    /// anonymous members (an overflow panic, or a wrapped offset in a release build).
    #[test]
    fn offsets_that_overflow_are_not_found() {
        let blob = include_bytes!("testdata/btf-offset-overflow.bin");
        let btf = Btf::parse(blob).unwrap();
        for (ty, m) in [
            ("outer", "a"),
            ("outer", "in"),
            ("outer", "x"),
            ("outer", "zz"),
        ] {
            let _ = btf.member_offset(ty, m);
        }
    }

    #[test]
    fn reads_this_kernels_task_struct() {
        // The development and CI kernels ship BTF. A host without it must say so on purpose
        // (PALISADE_TEST_NO_BTF=1): a silent skip would pass without checking anything. A BTF
        // file that is there but does not parse is always a failure.
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            assert!(
                std::env::var_os("PALISADE_TEST_NO_BTF").is_some(),
                "{} is missing: this test reads the live kernel's BTF; set PALISADE_TEST_NO_BTF=1 to run without it",
                path.display()
            );
            return;
        }
        let btf = Btf::from_sys_fs().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (ty, m) in [
            ("task_struct", "exit_code"),
            ("task_struct", "tgid"),
            ("task_struct", "real_parent"),
            ("task_struct", "start_time"),
            ("task_struct", "mm"),
            ("mm_struct", "arg_start"),
            ("mm_struct", "arg_end"),
        ] {
            let off = btf.member_offset(ty, m).unwrap();
            assert!(off > 0 && off < 16384, "{ty}.{m} at {off}");
        }
    }
}
