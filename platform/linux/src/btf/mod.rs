//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! rustc emits no CO-RE relocations for eBPF, so the loader resolves the
//! struct member offsets its programs need here, at load time, and passes
//! them in as read-only globals. This reader parses what that takes and no
//! more: the header, the type section (every kind is walked so type ids stay
//! right; struct/union members and function prototype parameters are kept)
//! and the string section. Member lookup recurses into anonymous struct and
//! union members (`mm_struct` keeps nearly everything in one) and honours
//! the bitfield encoding (`kind_flag`).
//!
//! Malformed input is a [`BtfError`], never a panic: every read is bounds
//! checked and recursion is depth-limited.

mod parse;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// How deep [`Btf::member`] follows anonymous members and type modifiers.
const MAX_DEPTH: usize = 32;

/// Errors from reading BTF or looking things up in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("reading BTF from {path}: {source} (is the kernel built with CONFIG_DEBUG_INFO_BTF?)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The blob is not valid BTF.
    #[error("malformed BTF at byte {offset}: {what}")]
    Malformed {
        /// Byte offset in the blob where the problem was found.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// No struct or union has this name.
    #[error("BTF has no struct or union named {name:?}")]
    NoSuchType {
        /// The name looked for.
        name: String,
    },
    /// The struct has no member of this name (also not in anonymous members).
    #[error("BTF struct {struct_name} has no member {member:?}")]
    NoSuchMember {
        /// The struct.
        struct_name: String,
        /// The member looked for.
        member: String,
    },
    /// The member is a bitfield or not byte aligned, so it has no byte
    /// offset.
    #[error(
        "BTF member {struct_name}.{member} is at bit {bit_offset} (bitfield size {bitfield_size}), not a byte offset"
    )]
    NotByteAligned {
        /// The struct.
        struct_name: String,
        /// The member.
        member: String,
        /// Its offset in bits.
        bit_offset: u32,
        /// Its bitfield size (0: not a bitfield).
        bitfield_size: u32,
    },
    /// A type exists but is not what the caller needs (e.g. a typedef that
    /// is not a pointer to a function prototype).
    #[error("BTF type {name:?} is not {expected}")]
    UnexpectedKind {
        /// The type.
        name: String,
        /// What was expected.
        expected: &'static str,
    },
}

/// The kind of a BTF type (`BTF_KIND_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// Type id 0.
    Void,
    /// `BTF_KIND_INT`.
    Int,
    /// `BTF_KIND_PTR`.
    Ptr,
    /// `BTF_KIND_ARRAY`.
    Array,
    /// `BTF_KIND_STRUCT`.
    Struct,
    /// `BTF_KIND_UNION`.
    Union,
    /// `BTF_KIND_ENUM`.
    Enum,
    /// `BTF_KIND_FWD`.
    Fwd,
    /// `BTF_KIND_TYPEDEF`.
    Typedef,
    /// `BTF_KIND_VOLATILE`.
    Volatile,
    /// `BTF_KIND_CONST`.
    Const,
    /// `BTF_KIND_RESTRICT`.
    Restrict,
    /// `BTF_KIND_FUNC`.
    Func,
    /// `BTF_KIND_FUNC_PROTO`.
    FuncProto,
    /// `BTF_KIND_VAR`.
    Var,
    /// `BTF_KIND_DATASEC`.
    Datasec,
    /// `BTF_KIND_FLOAT`.
    Float,
    /// `BTF_KIND_DECL_TAG`.
    DeclTag,
    /// `BTF_KIND_TYPE_TAG`.
    TypeTag,
    /// `BTF_KIND_ENUM64`.
    Enum64,
}

impl Kind {
    /// The name `bpftool btf dump ... format raw` prints for the kind.
    pub fn bpftool_name(self) -> &'static str {
        match self {
            Kind::Void => "VOID",
            Kind::Int => "INT",
            Kind::Ptr => "PTR",
            Kind::Array => "ARRAY",
            Kind::Struct => "STRUCT",
            Kind::Union => "UNION",
            Kind::Enum => "ENUM",
            Kind::Fwd => "FWD",
            Kind::Typedef => "TYPEDEF",
            Kind::Volatile => "VOLATILE",
            Kind::Const => "CONST",
            Kind::Restrict => "RESTRICT",
            Kind::Func => "FUNC",
            Kind::FuncProto => "FUNC_PROTO",
            Kind::Var => "VAR",
            Kind::Datasec => "DATASEC",
            Kind::Float => "FLOAT",
            Kind::DeclTag => "DECL_TAG",
            Kind::TypeTag => "TYPE_TAG",
            Kind::Enum64 => "ENUM64",
        }
    }

    fn is_modifier(self) -> bool {
        matches!(self, Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag)
    }
}

/// One BTF type (what this reader keeps of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtfType {
    /// The kind.
    pub kind: Kind,
    /// Offset of the name in the string section (0: anonymous).
    pub name_off: u32,
    /// The `kind_flag` bit (for structs and unions: members carry bitfield
    /// sizes).
    pub kind_flag: bool,
    /// The `vlen` field (members, parameters, enumerators, ...).
    pub vlen: u16,
    /// `size` for sized kinds, `type` for the referring kinds.
    pub size_or_type: u32,
    /// Members of a struct or union (empty for other kinds).
    pub members: Vec<Member>,
    /// Parameter type ids of a function prototype (empty for other kinds).
    pub params: Vec<u32>,
}

/// A struct or union member, its offset decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Offset of the name in the string section (0: anonymous).
    pub name_off: u32,
    /// The member's type id.
    pub type_id: u32,
    /// Offset from the start of the struct, in bits.
    pub bit_offset: u32,
    /// Bitfield size in bits; 0 when the member is not a bitfield.
    pub bitfield_size: u32,
}

/// Where a member is, relative to the outermost struct it was looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberLocation {
    /// The member's type id.
    pub type_id: u32,
    /// Offset in bits (anonymous containers' offsets included).
    pub bit_offset: u32,
    /// Bitfield size in bits; 0 when the member is not a bitfield.
    pub bitfield_size: u32,
}

/// Parsed BTF: types by id (id 0 is `void`) and the string section.
#[derive(Debug, Clone)]
pub struct Btf {
    types: Vec<BtfType>,
    strings: Vec<u8>,
}

impl Btf {
    /// Reads and parses the running kernel's BTF ([`VMLINUX_BTF`]).
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads and parses a raw BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io { path: path.to_owned(), source })?;
        Self::parse(&bytes)
    }

    /// Parses a raw (little-endian) BTF blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let (types, strings) = parse::parse(bytes)?;
        Ok(Self { types, strings })
    }

    /// Number of type ids, `void` included (the highest id plus one).
    pub fn len(&self) -> usize {
        self.types.len()
    }

    /// True when the blob had no types (only `void`).
    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    /// The type with id `id`.
    pub fn type_by_id(&self, id: u32) -> Option<&BtfType> {
        self.types.get(usize::try_from(id).ok()?)
    }

    /// The string at `off` in the string section (`""` when out of range or
    /// not UTF-8).
    pub fn string(&self, off: u32) -> &str {
        let Some(rest) = usize::try_from(off).ok().and_then(|o| self.strings.get(o..)) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// The name of type `id` (`""` when anonymous).
    pub fn name(&self, id: u32) -> &str {
        self.type_by_id(id).map_or("", |t| self.string(t.name_off))
    }

    /// The id of the first type of `kind` named `name`.
    pub fn find(&self, kind: Kind, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| t.kind == kind && self.string(t.name_off) == name)
            .and_then(|i| u32::try_from(i).ok())
    }

    /// The id of the struct (or else union) named `name`.
    pub fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.find(Kind::Struct, name)
            .or_else(|| self.find(Kind::Union, name))
            .ok_or_else(|| BtfError::NoSuchType { name: name.to_owned() })
    }

    /// Follows typedefs, `const`, `volatile`, `restrict` and type tags.
    pub fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..MAX_DEPTH {
            match self.type_by_id(id) {
                Some(t) if t.kind.is_modifier() => id = t.size_or_type,
                _ => return id,
            }
        }
        id
    }

    /// Finds `member` in the struct or union `struct_name`, looking into
    /// anonymous struct and union members too.
    pub fn member(&self, struct_name: &str, member: &str) -> Result<MemberLocation, BtfError> {
        let id = self.struct_id(struct_name)?;
        self.member_in(id, member, 0, 0)
            .ok_or_else(|| BtfError::NoSuchMember { struct_name: struct_name.to_owned(), member: member.to_owned() })
    }

    /// The byte offset of `member` in `struct_name` (see [`Btf::member`]);
    /// an error for bitfields and members that are not byte aligned.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32, BtfError> {
        let loc = self.member(struct_name, member)?;
        if loc.bitfield_size != 0 || loc.bit_offset % 8 != 0 {
            return Err(BtfError::NotByteAligned {
                struct_name: struct_name.to_owned(),
                member: member.to_owned(),
                bit_offset: loc.bit_offset,
                bitfield_size: loc.bitfield_size,
            });
        }
        Ok(loc.bit_offset / 8)
    }

    /// The parameter count of the function prototype a typedef names
    /// through a pointer, e.g. `btf_trace_sched_process_exit` (whose first
    /// parameter is the tracepoint's `void *` context).
    pub fn fn_typedef_params(&self, typedef: &str) -> Result<usize, BtfError> {
        let unexpected = || BtfError::UnexpectedKind {
            name: typedef.to_owned(),
            expected: "a typedef of a pointer to a function prototype",
        };
        let id = self.find(Kind::Typedef, typedef).ok_or_else(|| BtfError::NoSuchType { name: typedef.to_owned() })?;
        let ptr = self.type_by_id(self.resolve(id)).ok_or_else(unexpected)?;
        if ptr.kind != Kind::Ptr {
            return Err(unexpected());
        }
        let proto = self.type_by_id(self.resolve(ptr.size_or_type)).ok_or_else(unexpected)?;
        if proto.kind != Kind::FuncProto {
            return Err(unexpected());
        }
        Ok(proto.params.len())
    }

    fn member_in(&self, id: u32, name: &str, base_bits: u32, depth: usize) -> Option<MemberLocation> {
        if depth >= MAX_DEPTH {
            return None;
        }
        let t = self.type_by_id(id)?;
        if !matches!(t.kind, Kind::Struct | Kind::Union) {
            return None;
        }
        for m in &t.members {
            let bit_offset = base_bits.checked_add(m.bit_offset)?;
            if m.name_off != 0 && self.string(m.name_off) == name {
                return Some(MemberLocation { type_id: m.type_id, bit_offset, bitfield_size: m.bitfield_size });
            }
        }
        // Anonymous members, after the direct ones.
        t.members.iter().filter(|m| m.name_off == 0 || self.string(m.name_off).is_empty()).find_map(|m| {
            let bit_offset = base_bits.checked_add(m.bit_offset)?;
            self.member_in(self.resolve(m.type_id), name, bit_offset, depth + 1)
        })
    }
}
