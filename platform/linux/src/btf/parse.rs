//! The BTF binary format: header, type section, string section.
//!
//! Layout (`include/uapi/linux/btf.h`): a header (`magic 0xeB9F`, version,
//! flags, `hdr_len`, then offsets and lengths of the type and string
//! sections relative to the header's end), then `struct btf_type` records
//! (`name_off`, `info` = vlen | kind << 24 | kind_flag << 31,
//! `size`/`type`), each followed by kind-specific data.

use super::{BtfError, BtfType, Kind, Member};

const MAGIC: u16 = 0xeb9f;
/// The fixed part of the header (`struct btf_header`).
const HEADER_LEN: usize = 24;
/// Fewer types than this is not a kernel, but small blobs are valid BTF;
/// the cap only bounds memory on absurd input.
const MAX_TYPES: usize = 1 << 22;

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of `bytes[0]` in the whole blob (for error messages).
    base: usize,
}

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BtfError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| malformed(self.base + self.pos, format!("truncated: {n} more bytes needed")))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn skip(&mut self, n: usize) -> Result<(), BtfError> {
        self.take(n).map(|_| ())
    }

    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }
}

fn malformed(offset: usize, what: impl Into<String>) -> BtfError {
    BtfError::Malformed { offset, what: what.into() }
}

fn to_usize(v: u32) -> usize {
    // BTF is only read on 32- and 64-bit Linux, where u32 fits in usize.
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Parses a blob into its types (index = type id, 0 = void) and strings.
pub(super) fn parse(bytes: &[u8]) -> Result<(Vec<BtfType>, Vec<u8>), BtfError> {
    let mut h = Cursor { bytes, pos: 0, base: 0 };
    let magic = h.take(2)?;
    let magic = u16::from_le_bytes([magic[0], magic[1]]);
    if magic == MAGIC.swap_bytes() {
        return Err(malformed(0, "big-endian BTF is not supported"));
    }
    if magic != MAGIC {
        return Err(malformed(0, format!("bad magic {magic:#06x}, expected {MAGIC:#06x}")));
    }
    let version = h.take(1)?[0];
    if version != 1 {
        return Err(malformed(2, format!("unsupported version {version}")));
    }
    h.skip(1)?; // flags
    let hdr_len = to_usize(h.u32()?);
    let type_off = to_usize(h.u32()?);
    let type_len = to_usize(h.u32()?);
    let str_off = to_usize(h.u32()?);
    let str_len = to_usize(h.u32()?);
    if hdr_len < HEADER_LEN {
        return Err(malformed(4, format!("header length {hdr_len} < {HEADER_LEN}")));
    }
    let section = |off: usize, len: usize, what: &str| -> Result<(usize, &[u8]), BtfError> {
        let start = hdr_len.checked_add(off);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) if e <= bytes.len() => Ok((s, &bytes[s..e])),
            _ => Err(malformed(
                hdr_len,
                format!("{what} section {off}+{len} past the end of the {}-byte blob", bytes.len()),
            )),
        }
    };
    let (types_at, type_bytes) = section(type_off, type_len, "type")?;
    let (strings_at, strings) = section(str_off, str_len, "string")?;
    if strings.first().is_some_and(|&b| b != 0) {
        return Err(malformed(strings_at, "string section does not start with NUL"));
    }

    let mut types = vec![BtfType {
        kind: Kind::Void,
        name_off: 0,
        kind_flag: false,
        vlen: 0,
        size_or_type: 0,
        members: Vec::new(),
        params: Vec::new(),
    }];
    let mut c = Cursor { bytes: type_bytes, pos: 0, base: types_at };
    while !c.at_end() {
        if types.len() >= MAX_TYPES {
            return Err(malformed(types_at + c.pos, format!("more than {MAX_TYPES} types")));
        }
        types.push(parse_type(&mut c)?);
    }
    Ok((types, strings.to_vec()))
}

fn parse_type(c: &mut Cursor<'_>) -> Result<BtfType, BtfError> {
    let at = c.base + c.pos;
    let name_off = c.u32()?;
    let info = c.u32()?;
    let size_or_type = c.u32()?;
    let vlen = (info & 0xffff) as u16;
    let kind_flag = info >> 31 == 1;
    let n = usize::from(vlen);
    let mut members = Vec::new();
    let mut params = Vec::new();
    let kind = match (info >> 24) & 0x1f {
        0 => return Err(malformed(at, "type of kind UNKN (0)")),
        1 => {
            c.skip(4)?;
            Kind::Int
        }
        2 => Kind::Ptr,
        3 => {
            c.skip(12)?;
            Kind::Array
        }
        k @ (4 | 5) => {
            members.reserve(n);
            for _ in 0..n {
                let name_off = c.u32()?;
                let type_id = c.u32()?;
                let offset = c.u32()?;
                let (bit_offset, bitfield_size) =
                    if kind_flag { (offset & 0x00ff_ffff, offset >> 24) } else { (offset, 0) };
                members.push(Member { name_off, type_id, bit_offset, bitfield_size });
            }
            if k == 4 { Kind::Struct } else { Kind::Union }
        }
        6 => {
            c.skip(n * 8)?;
            Kind::Enum
        }
        7 => Kind::Fwd,
        8 => Kind::Typedef,
        9 => Kind::Volatile,
        10 => Kind::Const,
        11 => Kind::Restrict,
        12 => Kind::Func,
        13 => {
            params.reserve(n);
            for _ in 0..n {
                c.skip(4)?; // name_off
                params.push(c.u32()?);
            }
            Kind::FuncProto
        }
        14 => {
            c.skip(4)?;
            Kind::Var
        }
        15 => {
            c.skip(n * 12)?;
            Kind::Datasec
        }
        16 => Kind::Float,
        17 => {
            c.skip(4)?;
            Kind::DeclTag
        }
        18 => Kind::TypeTag,
        19 => {
            c.skip(n * 12)?;
            Kind::Enum64
        }
        k => return Err(malformed(at, format!("unknown type kind {k}"))),
    };
    Ok(BtfType { kind, name_off, kind_flag, vlen, size_or_type, members, params })
}
