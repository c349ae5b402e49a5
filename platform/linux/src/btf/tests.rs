#![allow(clippy::print_stderr, reason = "tests say why they skipped")]

use super::*;
use proptest::prelude::*;
use std::process::Command;

/// Builds a BTF blob from type records (already encoded) and a string table.
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn new() -> Self {
        Self { types: Vec::new(), strings: vec![0] }
    }

    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }

    fn rec(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size_or_type: u32) {
        let name = self.s(name);
        let info = vlen | (kind << 24) | (u32::from(kind_flag) << 31);
        for v in [name, info, size_or_type] {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn u32s(&mut self, vs: &[u32]) {
        for v in vs {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn member(&mut self, name: &str, type_id: u32, offset: u32) {
        let name = self.s(name);
        self.u32s(&[name, type_id, offset]);
    }

    fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
        out.push(1);
        out.push(0);
        let tl = self.types.len() as u32;
        for v in [24, 0, tl, tl, self.strings.len() as u32] {
            out.extend_from_slice(&u32::to_le_bytes(v));
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A small but representative blob:
/// 1 int; 2 struct inner { int a; int b; }; 3 union (anon) { struct inner; int u; };
/// 4 struct outer { int x; union (anon) @64; int bits:3 @ 160 (kind_flag) };
/// 5 func_proto (int, int); 6 ptr -> 5; 7 typedef btf_trace_x -> 6;
/// 8 const -> 4; 9 struct plain { int p @ 8 bits } (not byte aligned).
fn sample() -> Vec<u8> {
    let mut b = Builder::new();
    b.rec("int", 1, 0, false, 4);
    b.u32s(&[32]);
    b.rec("inner", 4, 2, false, 8);
    b.member("a", 1, 0);
    b.member("b", 1, 32);
    b.rec("", 5, 2, false, 8);
    b.member("", 2, 0);
    b.member("u", 1, 0);
    b.rec("outer", 4, 3, true, 24);
    b.member("x", 1, 0);
    b.member("", 3, 64);
    b.member("bits", 1, (3 << 24) | 160);
    b.rec("", 13, 2, false, 0);
    b.u32s(&[0, 1, 0, 1]);
    b.rec("", 2, 0, false, 5);
    b.rec("btf_trace_x", 8, 0, false, 6);
    b.rec("", 10, 0, false, 4);
    b.rec("plain", 4, 1, false, 4);
    b.member("p", 1, 4);
    b.build()
}

#[test]
fn members_are_found_through_anonymous_unions_and_structs() {
    let btf = Btf::parse(&sample()).unwrap();
    assert_eq!(btf.len(), 10);
    assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
    assert_eq!(btf.member_offset("outer", "u").unwrap(), 8);
    assert_eq!(btf.member_offset("outer", "a").unwrap(), 8);
    assert_eq!(btf.member_offset("outer", "b").unwrap(), 12);
    assert_eq!(btf.member_offset("inner", "b").unwrap(), 4);
    let bits = btf.member("outer", "bits").unwrap();
    assert_eq!((bits.bit_offset, bits.bitfield_size), (160, 3));
    assert!(matches!(btf.member_offset("outer", "bits"), Err(BtfError::NotByteAligned { .. })));
    assert!(matches!(btf.member_offset("plain", "p"), Err(BtfError::NotByteAligned { .. })));
    assert!(matches!(btf.member_offset("outer", "nope"), Err(BtfError::NoSuchMember { .. })));
    assert!(matches!(btf.member_offset("nope", "x"), Err(BtfError::NoSuchType { .. })));
    assert_eq!(btf.fn_typedef_params("btf_trace_x").unwrap(), 2);
    assert!(btf.fn_typedef_params("int").is_err());
    assert_eq!(btf.resolve(8), 4);
    assert_eq!(btf.name(4), "outer");
    assert_eq!(btf.string(10_000), "");
}

#[test]
fn malformed_blobs_are_errors() {
    let good = sample();
    assert!(Btf::parse(&[]).is_err());
    assert!(Btf::parse(&good[..10]).is_err());
    let mut bad_magic = good.clone();
    bad_magic[0] = 0;
    assert!(matches!(Btf::parse(&bad_magic), Err(BtfError::Malformed { offset: 0, .. })));
    let mut big_endian = good.clone();
    big_endian.swap(0, 1);
    let err = Btf::parse(&big_endian).unwrap_err().to_string();
    assert!(err.contains("big-endian"), "{err}");
    let mut past_end = good.clone();
    past_end[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Btf::parse(&past_end).is_err());
    let mut unknown_kind = good.clone();
    unknown_kind[24 + 4..24 + 8].copy_from_slice(&(31u32 << 24).to_le_bytes());
    let err = Btf::parse(&unknown_kind).unwrap_err().to_string();
    assert!(err.contains("unknown type kind 31"), "{err}");
}

#[test]
fn self_referencing_anonymous_members_do_not_recurse_forever() {
    let mut b = Builder::new();
    b.rec("loop", 4, 1, false, 4);
    b.member("", 1, 0); // member of its own type
    let btf = Btf::parse(&b.build()).unwrap();
    assert!(matches!(btf.member("loop", "x"), Err(BtfError::NoSuchMember { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn truncated_or_corrupt_blobs_never_panic(
        cut in 0usize..400,
        flips in proptest::collection::vec((0usize..400, any::<u8>()), 0..8),
    ) {
        let mut blob = sample();
        for (at, byte) in flips {
            if let Some(b) = blob.get_mut(at) {
                *b = byte;
            }
        }
        blob.truncate(cut.min(blob.len()));
        if let Ok(btf) = Btf::parse(&blob) {
            for (s, m) in [("outer", "a"), ("outer", "bits"), ("loop", "x"), ("inner", "b")] {
                let _ = btf.member_offset(s, m);
            }
            let _ = btf.fn_typedef_params("btf_trace_x");
            for id in 0..btf.len() as u32 + 2 {
                let _ = btf.name(id);
                let _ = btf.resolve(id);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(blob in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Btf::parse(&blob);
    }
}

/// One type of `bpftool btf dump ... format raw`.
#[derive(Debug, Default)]
struct Dumped {
    kind: String,
    name: String,
    /// (name, type_id, bits_offset, bitfield_size) for STRUCT/UNION members.
    members: Vec<(String, u32, u32, u32)>,
}

fn field(line: &str, key: &str) -> Option<u32> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.parse().ok())
}

fn quoted(line: &str) -> String {
    line.split('\'').nth(1).unwrap_or("").to_owned()
}

fn parse_dump(text: &str) -> Vec<Dumped> {
    let mut out: Vec<Dumped> = vec![Dumped { kind: "VOID".into(), ..Default::default() }];
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('[') {
            let (id, rest) = rest.split_once("] ").unwrap();
            assert_eq!(id.parse::<usize>().unwrap(), out.len(), "ids are dense");
            let kind = rest.split_whitespace().next().unwrap().to_owned();
            let name = quoted(rest);
            out.push(Dumped { kind, name, members: Vec::new() });
        } else if line.starts_with('\t') {
            let last = out.last_mut().unwrap();
            if last.kind == "STRUCT" || last.kind == "UNION" {
                last.members.push((
                    quoted(line),
                    field(line, "type_id=").unwrap(),
                    field(line, "bits_offset=").unwrap(),
                    field(line, "bitfield_size=").unwrap_or(0),
                ));
            }
        }
    }
    out
}

/// Differential test: every type's kind and name, and every struct/union
/// member's name, type, bit offset and bitfield size, as bpftool reads them.
#[test]
fn matches_bpftool_on_the_running_kernel() {
    let path = std::path::Path::new(VMLINUX_BTF);
    if !path.exists() {
        eprintln!("skipped: {VMLINUX_BTF} does not exist (kernel without CONFIG_DEBUG_INFO_BTF)");
        return;
    }
    let dump = match Command::new("bpftool").args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"]).output() {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
        Ok(o) => {
            eprintln!("skipped: bpftool failed: {}", String::from_utf8_lossy(&o.stderr));
            return;
        }
        Err(e) => {
            eprintln!("skipped: bpftool is not installed ({e})");
            return;
        }
    };
    let expected = parse_dump(&dump);
    let btf = Btf::from_sys_fs().unwrap();
    assert_eq!(btf.len(), expected.len(), "type count");
    let anon = |s: &str| {
        if s == "(anon)" { String::new() } else { s.to_owned() }
    };
    let mut structs = 0;
    for (id, want) in expected.iter().enumerate() {
        let id = id as u32;
        let got = btf.type_by_id(id).unwrap();
        assert_eq!(got.kind.bpftool_name(), want.kind, "kind of [{id}]");
        if id > 0 {
            assert_eq!(btf.name(id), anon(&want.name), "name of [{id}]");
        }
        if matches!(got.kind, Kind::Struct | Kind::Union) {
            structs += 1;
            let members: Vec<_> = got
                .members
                .iter()
                .map(|m| (btf.string(m.name_off).to_owned(), m.type_id, m.bit_offset, m.bitfield_size))
                .collect();
            let want: Vec<_> = want.members.iter().map(|(n, t, o, b)| (anon(n), *t, *o, *b)).collect();
            assert_eq!(members, want, "members of [{id}] {}", btf.name(id));
        }
    }
    assert!(structs > 1000, "a kernel has thousands of structs, saw {structs}");
    // And the lookups the eBPF programs depend on resolve.
    for (s, m) in [("task_struct", "tgid"), ("mm_struct", "arg_start"), ("signal_struct", "live")] {
        btf.member_offset(s, m).unwrap();
    }
}
