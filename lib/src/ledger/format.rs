//! The on-disk encoding: segment headers, records, hashes, checkpoint and
//! audit payloads, segment file names. `docs/ledger-format.md` is the
//! normative description; this file must match it byte for byte.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{LedgerError, RecordKind};

/// Segment file magic (8 bytes).
pub(crate) const MAGIC: &[u8; 8] = b"DEYELDGR";
/// Format version written in every segment header.
pub(crate) const VERSION: u32 = 1;
/// magic (8) + version (4) + first seq (8) + prev hash (32).
pub(crate) const HEADER_LEN: usize = 52;
/// Domain tag prefixed to every entry hash input.
pub(crate) const HASH_DOMAIN: &[u8] = b"daemoneye.ledger.v1";
/// Domain tag prefixed to every checkpoint signature input.
pub(crate) const SIGN_DOMAIN: &[u8] = b"daemoneye.ledger.v1.checkpoint";
/// The largest payload a record may carry. Bounds the allocation a corrupt
/// length field can cause.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// `len` of a record with an empty payload: seq 8 + time 8 + kind 1 +
/// payload_len 4 + prev_hash 32 + entry_hash 32.
pub(crate) const MIN_BODY: usize = 85;
/// Checkpoint payload: seq 8 + entry hash 32 + signature 64.
pub(crate) const CHECKPOINT_LEN: usize = 104;
/// The prev hash of the first record.
pub(crate) const ZERO_HASH: [u8; 32] = [0; 32];

/// A parsed segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) first_seq: u64,
    pub(crate) prev_hash: [u8; 32],
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_be_bytes());
        out[12..20].copy_from_slice(&self.first_seq.to_be_bytes());
        out[20..52].copy_from_slice(&self.prev_hash);
        out
    }

    /// Decodes a header; `Err` says what is wrong with it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Header, String> {
        let mut c = Cursor(bytes);
        let short = || format!("header shorter than {HEADER_LEN} bytes");
        let magic = c.take::<8>().ok_or_else(short)?;
        if magic != MAGIC {
            return Err(format!("magic {} is not {}", hex::encode(magic), hex::encode(MAGIC)));
        }
        let version = u32::from_be_bytes(*c.take::<4>().ok_or_else(short)?);
        if version != VERSION {
            return Err(format!("format version {version}, this build reads version {VERSION}"));
        }
        let first_seq = u64::from_be_bytes(*c.take::<8>().ok_or_else(short)?);
        let prev_hash = *c.take::<32>().ok_or_else(short)?;
        if first_seq == 0 {
            return Err("first seq is 0 (seqs start at 1)".into());
        }
        Ok(Header { first_seq, prev_hash })
    }
}

/// A record decoded in place from a buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRecord<'a> {
    /// The whole record, `len` field included.
    pub(crate) bytes: &'a [u8],
    pub(crate) seq: u64,
    pub(crate) time_ns: i64,
    pub(crate) kind: u8,
    pub(crate) payload: &'a [u8],
    pub(crate) prev_hash: &'a [u8; 32],
    pub(crate) entry_hash: &'a [u8; 32],
}

impl RawRecord<'_> {
    /// Recomputes the entry hash from the record's own bytes: the hashed
    /// fields are contiguous on disk, from `seq` to the end of `prev_hash`.
    pub(crate) fn computed_hash(&self) -> [u8; 32] {
        let end = self.bytes.len().saturating_sub(32);
        hash_body(self.bytes.get(4..end).unwrap_or_default())
    }
}

/// The outcome of decoding the bytes at a record position.
#[derive(Debug)]
pub(crate) enum Parsed<'a> {
    /// A complete record whose length fields agree (hashes not yet checked).
    Record(RawRecord<'a>),
    /// The bytes are a consistent prefix of a record: more may be coming.
    Incomplete,
    /// The bytes cannot be the start of a valid record.
    Invalid(String),
}

/// Decodes the record at the start of `buf`. Length fields are checked
/// against each other as soon as both are present, so a corrupt length at
/// the tail reads as `Invalid`, never as a record still being written.
pub(crate) fn parse_record(buf: &[u8]) -> Parsed<'_> {
    let Some(len_bytes) = buf.first_chunk::<4>() else {
        return Parsed::Incomplete;
    };
    let len = u32::from_be_bytes(*len_bytes) as usize;
    if !(MIN_BODY..=MIN_BODY + MAX_PAYLOAD).contains(&len) {
        return Parsed::Invalid(format!("record length {len} outside {MIN_BODY}..={}", MIN_BODY + MAX_PAYLOAD));
    }
    let mut c = Cursor(&buf[4..]);
    let (Some(seq), Some(time_ns), Some(kind), Some(payload_len)) =
        (c.take::<8>(), c.take::<8>(), c.take::<1>(), c.take::<4>())
    else {
        return Parsed::Incomplete;
    };
    let payload_len = u32::from_be_bytes(*payload_len) as usize;
    if len != MIN_BODY + payload_len {
        return Parsed::Invalid(format!(
            "record length {len} disagrees with payload length {payload_len} (expected {})",
            MIN_BODY + payload_len
        ));
    }
    let (Some(payload), Some(prev_hash), Some(entry_hash)) =
        (c.take_slice(payload_len), c.take::<32>(), c.take::<32>())
    else {
        return Parsed::Incomplete;
    };
    Parsed::Record(RawRecord {
        bytes: &buf[..4 + len],
        seq: u64::from_be_bytes(*seq),
        time_ns: i64::from_be_bytes(*time_ns),
        kind: kind[0],
        payload,
        prev_hash,
        entry_hash,
    })
}

/// BLAKE3(domain || body) where body is seq..prev_hash as laid out on disk.
pub(crate) fn hash_body(body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(HASH_DOMAIN);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Appends one encoded record to `out` and returns its entry hash.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    seq: u64,
    time_ns: i64,
    kind: RecordKind,
    payload: &[u8],
    prev_hash: &[u8; 32],
) -> Result<[u8; 32], LedgerError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(LedgerError::PayloadTooLarge { len: payload.len(), max: MAX_PAYLOAD });
    }
    let start = out.len();
    out.reserve(4 + MIN_BODY + payload.len());
    // Both fit in u32: payload.len() <= MAX_PAYLOAD was checked above.
    out.extend_from_slice(&((MIN_BODY + payload.len()) as u32).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time_ns.to_be_bytes());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(prev_hash);
    let hash = hash_body(&out[start + 4..]);
    out.extend_from_slice(&hash);
    Ok(hash)
}

/// A checkpoint: the writer's signature over the seq and entry hash of the
/// record just before the checkpoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// Seq of the checkpointed record.
    pub seq: u64,
    /// Entry hash of the checkpointed record.
    pub entry_hash: [u8; 32],
    /// ed25519 signature over `SIGN_DOMAIN || seq (u64 BE) || entry_hash`.
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// Signs (seq, entry_hash).
    pub(crate) fn sign(key: &SigningKey, seq: u64, entry_hash: [u8; 32]) -> Checkpoint {
        let sig = key.sign(&signed_message(seq, &entry_hash));
        Checkpoint { seq, entry_hash, signature: sig.to_bytes() }
    }

    /// The record payload (104 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_LEN);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.entry_hash);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes a checkpoint record's payload.
    pub fn decode(payload: &[u8]) -> Option<Checkpoint> {
        if payload.len() != CHECKPOINT_LEN {
            return None;
        }
        let mut c = Cursor(payload);
        Some(Checkpoint {
            seq: u64::from_be_bytes(*c.take::<8>()?),
            entry_hash: *c.take::<32>()?,
            signature: *c.take::<64>()?,
        })
    }

    /// Checks the signature (strict ed25519: no malleable signatures).
    pub fn verify(&self, key: &VerifyingKey) -> bool {
        let sig = Signature::from_bytes(&self.signature);
        key.verify_strict(&signed_message(self.seq, &self.entry_hash), &sig).is_ok()
    }
}

fn signed_message(seq: u64, entry_hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_DOMAIN.len() + 40);
    m.extend_from_slice(SIGN_DOMAIN);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(entry_hash);
    m
}

/// The payload of an audit record: a security-relevant action and its
/// details, in order. Encoded as protobuf (see `docs/ledger-format.md`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditRecord {
    /// What happened: `start`, `privilege_drop`, `backend`, `config_change`,
    /// `ledger.recovered`, ...
    pub action: String,
    /// Key/value details, in the order given.
    pub details: Vec<(String, String)>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AuditWire {
    #[prost(string, tag = "1")]
    action: String,
    #[prost(message, repeated, tag = "2")]
    details: Vec<DetailWire>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DetailWire {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

impl AuditRecord {
    /// The action of procmond's capability drop and sandbox: details
    /// `<set>_before` and `<set>_after` for the effective, permitted,
    /// inheritable, ambient and bounding sets (capability names joined by
    /// commas, `none` when empty), then `no_new_privs` and `seccomp`.
    pub const PRIVILEGE_DROP: &'static str = "privilege_drop";

    /// Builds a record from borrowed strings.
    pub fn new(action: &str, details: &[(&str, &str)]) -> AuditRecord {
        AuditRecord {
            action: action.to_owned(),
            details: details.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    /// The protobuf encoding (fields in tag order, details in order: the
    /// same record always encodes to the same bytes).
    pub fn encode(&self) -> Vec<u8> {
        use prost::Message;
        AuditWire {
            action: self.action.clone(),
            details: self.details.iter().map(|(k, v)| DetailWire { key: k.clone(), value: v.clone() }).collect(),
        }
        .encode_to_vec()
    }

    /// Decodes an audit record's payload.
    pub fn decode(payload: &[u8]) -> Result<AuditRecord, prost::DecodeError> {
        use prost::Message;
        let w = AuditWire::decode(payload)?;
        Ok(AuditRecord { action: w.action, details: w.details.into_iter().map(|d| (d.key, d.value)).collect() })
    }
}

/// `<dir>/NNNNNNNNNNNNNNNNNNNN.log`.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

/// The segment files of `dir`, sorted by first seq. Other files (the
/// public key, the lock, preserved cut tails) are ignored.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LedgerError> {
    let rd = std::fs::read_dir(dir).map_err(|e| LedgerError::io("list", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| LedgerError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(seq) = stem.parse::<u64>() {
            out.push((seq, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(out)
}

/// Fsyncs a directory so that a file created in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LedgerError> {
    #[cfg(unix)]
    {
        let d = std::fs::File::open(dir).map_err(|e| LedgerError::io("open", dir, e))?;
        d.sync_all().map_err(|e| LedgerError::io("fsync", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Sequential fixed-size reads from a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take<const N: usize>(&mut self) -> Option<&'a [u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(head)
    }

    fn take_slice(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_hash_covers_fields() {
        let mut buf = Vec::new();
        let h = encode_record(&mut buf, 7, -3, RecordKind::Event, b"abc", &[9; 32]).unwrap();
        assert_eq!(buf.len(), 4 + MIN_BODY + 3);
        let Parsed::Record(r) = parse_record(&buf) else { panic!("not a record") };
        assert_eq!((r.seq, r.time_ns, r.kind, r.payload), (7, -3, 1, &b"abc"[..]));
        assert_eq!(r.entry_hash, &h);
        assert_eq!(r.computed_hash(), h);
        // Every strict prefix is Incomplete, never Invalid or a record.
        for n in 0..buf.len() {
            assert!(matches!(parse_record(&buf[..n]), Parsed::Incomplete), "prefix {n}");
        }
        // The hash input is exactly domain || seq..prev_hash.
        let mut manual = blake3::Hasher::new();
        manual.update(b"daemoneye.ledger.v1");
        manual.update(&7u64.to_be_bytes());
        manual.update(&(-3i64).to_be_bytes());
        manual.update(&[1]);
        manual.update(&3u32.to_be_bytes());
        manual.update(b"abc");
        manual.update(&[9; 32]);
        assert_eq!(*manual.finalize().as_bytes(), h);
    }

    #[test]
    fn inconsistent_lengths_are_invalid_even_when_short() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 0, RecordKind::Event, b"abc", &ZERO_HASH).unwrap();
        buf[3] ^= 1;
        assert!(matches!(parse_record(&buf[..30]), Parsed::Invalid(_)));
        assert!(matches!(parse_record(&[0, 0, 0, 0]), Parsed::Invalid(_)));
    }

    #[test]
    fn header_and_audit_round_trip() {
        let h = Header { first_seq: 42, prev_hash: [3; 32] };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert!(Header::decode(&h.encode()[..51]).is_err());
        let a = AuditRecord::new("privilege_drop", &[("before", "cap_bpf"), ("after", "")]);
        assert_eq!(AuditRecord::decode(&a.encode()).unwrap(), a);
    }
}
