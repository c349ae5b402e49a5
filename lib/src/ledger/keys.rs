//! The checkpoint signing key: created once, kept private, exported public.
//!
//! The private key is `<key_dir>/ledger.key`, the 32-byte ed25519 seed as 64
//! lowercase hex characters and a newline, mode 0600. It is written to a
//! temporary file created with `O_EXCL` and mode 0600 from the start (never
//! a moment world-readable), fsynced, then hard-linked into place: `link`
//! fails if the name exists, so two processes racing at first start cannot
//! overwrite each other's key, and a crash never leaves a half-written key
//! under the real name.
//!
//! The public key is exported as `<ledger_dir>/ledger.pub` in the same hex
//! form. [`read_public_key`] also accepts the raw 32 bytes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::LedgerError;
use super::format::sync_dir;

/// File name of the private key inside the key directory.
pub const PRIVATE_KEY_FILE: &str = "ledger.key";
/// File name of the exported public key inside the ledger directory.
pub const PUBLIC_KEY_FILE: &str = "ledger.pub";

/// Loads the signing key from `key_dir`, creating it (and the directory,
/// mode 0700) at first start.
pub(crate) fn load_or_create(key_dir: &Path) -> Result<SigningKey, LedgerError> {
    create_private_dir(key_dir)?;
    let path = key_dir.join(PRIVATE_KEY_FILE);
    match load_private(&path) {
        Err(LedgerError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| LedgerError::Key {
        path: path.clone(),
        what: format!("cannot get random bytes for a new key: {e}"),
    })?;
    let key = SigningKey::from_bytes(&seed);
    // The SigningKey zeroizes itself on drop; wipe the stack copy too.
    seed.fill(0);
    let tmp = key_dir.join(format!("{PRIVATE_KEY_FILE}.tmp.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp); // a stale one from a crashed earlier attempt
    let mut text = hex::encode(key.as_bytes());
    text.push('\n');
    let written = write_new_private(&tmp, text.as_bytes());
    // Best-effort wipe of the hex copy of the secret (same length: in place).
    text.replace_range(.., &"0".repeat(text.len()));
    written?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(key_dir)?;
            tracing::info!(path = %path.display(), "created ledger signing key");
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_private(&path),
        Err(e) => Err(LedgerError::io("create", &path, e)),
    }
}

/// Checks `<ledger_dir>/ledger.pub` against the writer's key: `Ok(true)` if
/// it is there and matches, `Ok(false)` if it is missing.
pub(crate) fn check_public(ledger_dir: &Path, key_dir: &Path, key: &VerifyingKey) -> Result<bool, LedgerError> {
    let path = ledger_dir.join(PUBLIC_KEY_FILE);
    if !path.exists() {
        return Ok(false);
    }
    if read_public_key(&path)? == *key {
        return Ok(true);
    }
    Err(LedgerError::KeyMismatch { public: path, private: key_dir.join(PRIVATE_KEY_FILE) })
}

/// Writes the public key to `<ledger_dir>/ledger.pub` (atomically: temp
/// file, fsync, rename, directory fsync).
pub(crate) fn write_public(ledger_dir: &Path, key: &VerifyingKey) -> Result<(), LedgerError> {
    let path = ledger_dir.join(PUBLIC_KEY_FILE);
    let tmp = ledger_dir.join(format!("{PUBLIC_KEY_FILE}.tmp.{}", std::process::id()));
    let text = format!("{}\n", hex::encode(key.as_bytes()));
    let mut f = File::create(&tmp).map_err(|e| LedgerError::io("create", &tmp, e))?;
    f.write_all(text.as_bytes()).map_err(|e| LedgerError::io("write", &tmp, e))?;
    f.sync_all().map_err(|e| LedgerError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| LedgerError::io("rename into place", &path, e))?;
    sync_dir(ledger_dir)
}

/// Reads an exported public key: 64 hex characters (surrounding whitespace
/// ignored) or the raw 32 bytes.
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, LedgerError> {
    let bytes = std::fs::read(path).map_err(|e| LedgerError::io("read", path, e))?;
    let raw: [u8; 32] = match <[u8; 32]>::try_from(bytes.as_slice()) {
        Ok(raw) => raw,
        Err(_) => decode_hex32(&bytes).ok_or_else(|| LedgerError::Key {
            path: path.to_path_buf(),
            what: "not an ed25519 public key (expected 64 hex characters or 32 raw bytes)".into(),
        })?,
    };
    VerifyingKey::from_bytes(&raw).map_err(|e| LedgerError::Key {
        path: path.to_path_buf(),
        what: format!("not a valid ed25519 public key: {e}"),
    })
}

fn load_private(path: &Path) -> Result<SigningKey, LedgerError> {
    let bytes = std::fs::read(path).map_err(|e| LedgerError::io("read", path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| LedgerError::io("stat", path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(LedgerError::Key {
                path: path.to_path_buf(),
                what: format!(
                    "mode {mode:o} lets other users read the signing key; run `chmod 600` on it (and consider the key compromised)"
                ),
            });
        }
    }
    let mut seed = decode_hex32(&bytes).ok_or_else(|| LedgerError::Key {
        path: path.to_path_buf(),
        what: "not a ledger signing key (expected 64 hex characters); restore it from backup".into(),
    })?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

fn decode_hex32(bytes: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn write_new_private(path: &Path, contents: &[u8]) -> Result<(), LedgerError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| LedgerError::io("create", path, e))?;
    f.write_all(contents).map_err(|e| LedgerError::io("write", path, e))?;
    f.sync_all().map_err(|e| LedgerError::io("fsync", path, e))
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), LedgerError> {
    create_dir(dir, 0o700)
}

/// Creates `dir` (and parents) with `mode` if it does not exist.
pub(crate) fn create_dir(dir: &Path, mode: u32) -> Result<(), LedgerError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    b.create(dir).map_err(|e| LedgerError::io("create directory", dir, e))
}
