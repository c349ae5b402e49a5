//! SHA-256 of executables, with a bounded cache and no TOCTOU.
//!
//! [`Hasher::hash_path`] opens the file with `O_NOFOLLOW | O_CLOEXEC |
//! O_NONBLOCK | O_NOCTTY`, `fstat`s the open descriptor, refuses anything that
//! is not a regular file or is larger than the configured maximum, then reads
//! and hashes it and `fstat`s again: if the size, mtime or ctime moved during
//! the read, the digest describes no version of the file that ever existed on
//! disk, so it is discarded ([`HashError::Changed`]; try again later).
//!
//! The cache is keyed by `(device, inode, size, mtime, ctime)` taken from the
//! open descriptor, so a rewritten, touched or replaced file is re-hashed and
//! two paths to the same inode share one entry.
//!
//! `O_NOFOLLOW` only guards the last path component: intermediate symlinks
//! (`/bin -> usr/bin` on merged-usr systems) are followed, as the kernel
//! followed them when it ran the program.
//!
//! `/proc/<pid>/exe` is opened *without* `O_NOFOLLOW`: it is not a user
//! symlink but a kernel "magic link" to the file the process is actually
//! running, which resolves even after that file was deleted or replaced. It
//! is the only way to hash the real image, and `O_NOFOLLOW` would refuse it
//! with `ELOOP`.
//!
//! Hashing is blocking file I/O: call it from `spawn_blocking` or a dedicated
//! thread, never on a runtime worker.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The algorithm name stored in `hash_algorithm`.
pub const SHA256: &str = "sha256";

/// A computed (or cached) digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashOutcome {
    /// Lowercase hex digest.
    pub hex: String,
    /// Always [`SHA256`].
    pub algorithm: &'static str,
    /// True when the digest came from the cache without reading the file.
    pub from_cache: bool,
}

/// Why a file was not hashed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// The last path component is a symbolic link (`O_NOFOLLOW`).
    #[error("not hashing {}: it is a symbolic link", path.display())]
    Symlink {
        /// The path given.
        path: PathBuf,
    },
    /// A directory, FIFO, socket or device.
    #[error("not hashing {}: it is a {kind}, not a regular file", path.display())]
    NotRegular {
        /// The path given.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// Larger than the configured maximum.
    #[error("not hashing {}: {size} bytes is more than the {max} byte limit (raise hash max_size)", path.display())]
    TooLarge {
        /// The path given.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The file changed (size, mtime or ctime, or was swapped) while it was
    /// read; the digest was discarded. Transient: a later attempt may work.
    #[error("not hashing {}: it changed while it was read", path.display())]
    Changed {
        /// The path given.
        path: PathBuf,
    },
    /// Opening, `fstat` or reading failed.
    #[error("cannot hash {}: {source}", path.display())]
    Io {
        /// The path given.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl HashError {
    /// True when retrying later may succeed ([`HashError::Changed`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Changed { .. })
    }
}

/// Counters of a [`Hasher`], for health and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HashStats {
    /// Files read and hashed.
    pub hashed: u64,
    /// Bytes read for hashing.
    pub bytes_hashed: u64,
    /// Answers from the cache.
    pub cache_hits: u64,
    /// Refusals: symlinks, non-regular and oversized files.
    pub refused: u64,
    /// Digests discarded because the file changed during the read.
    pub changed: u64,
    /// I/O errors (including files that vanished).
    pub errors: u64,
    /// Entries in the cache now.
    pub cache_entries: usize,
}

/// Hashes executables; thread-safe (`&self`), with a bounded cache.
#[derive(Debug)]
pub struct Hasher {
    max_size: u64,
    cache: Mutex<Cache>,
    hashed: AtomicU64,
    bytes_hashed: AtomicU64,
    cache_hits: AtomicU64,
    refused: AtomicU64,
    changed: AtomicU64,
    errors: AtomicU64,
}

impl Hasher {
    /// A hasher that refuses files above `max_size` bytes and caches up to
    /// `cache_entries` digests (0 disables the cache).
    pub fn new(max_size: u64, cache_entries: usize) -> Self {
        Self {
            max_size,
            cache: Mutex::new(Cache::new(cache_entries)),
            hashed: AtomicU64::new(0),
            bytes_hashed: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            changed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// The SHA-256 of the regular file at `path` (see the module docs for
    /// the rules). Blocking.
    pub fn hash_path(&self, path: &Path) -> Result<HashOutcome, HashError> {
        self.hash_path_with(path, &mut || {})
    }

    /// The counters so far.
    pub fn stats(&self) -> HashStats {
        HashStats {
            hashed: self.hashed.load(Ordering::Relaxed),
            bytes_hashed: self.bytes_hashed.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            changed: self.changed.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            cache_entries: self.lock_cache().len(),
        }
    }

    /// The digest of the file at `path` when the cache already has it (one
    /// `stat`, no read): `Ok(None)` when it does not, `Err` when the file
    /// cannot be stat'ed. Lets the exec event carry the hash at once
    /// instead of a later `update`. `/proc/<pid>/exe` is followed (the
    /// running image); any other symlink is not, as in [`Hasher::hash_path`].
    pub fn cached(&self, path: &Path) -> io::Result<Option<HashOutcome>> {
        let meta = if is_proc_exe_link(path) { std::fs::metadata(path) } else { std::fs::symlink_metadata(path) }?;
        if !meta.file_type().is_file() || meta.len() > self.max_size {
            return Ok(None);
        }
        let Some(hex) = self.lock_cache().get(&FileIdentity::of(&meta)) else { return Ok(None) };
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        Ok(Some(HashOutcome { hex, algorithm: SHA256, from_cache: true }))
    }

    /// The digest for the file version `id` when the cache has it (no
    /// system call). A miss is no error: the caller hashes the file later.
    pub fn cached_identity(&self, id: &FileIdentity) -> Option<HashOutcome> {
        if id.size > self.max_size {
            return None;
        }
        let hex = self.lock_cache().get(id)?;
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(HashOutcome { hex, algorithm: SHA256, from_cache: true })
    }

    /// Hashes, into the cache, the distinct running images
    /// (`/proc/<pid>/exe`) of `pids` that are at most `max_bytes` long, on
    /// up to `threads` threads. Blocking.
    ///
    /// For the start-up snapshot: with the digests cached, the snapshot
    /// events carry their hashes, so 10,000 processes on 100 executables
    /// are 10,000 events rather than 10,000 more `update`s. Larger images
    /// and any that fail are left to the hash workers.
    pub fn warm_running_images(&self, pids: &[u32], max_bytes: u64, threads: usize) {
        let mut images: HashMap<FileIdentity, PathBuf> = HashMap::new();
        for pid in pids {
            let link = PathBuf::from(format!("/proc/{pid}/exe"));
            let Ok(meta) = std::fs::metadata(&link) else { continue };
            if meta.file_type().is_file() && meta.len() <= max_bytes.min(self.max_size) {
                images.entry(FileIdentity::of(&meta)).or_insert(link);
            }
        }
        let links: Vec<PathBuf> = images.into_values().collect();
        let per_thread = links.len().div_ceil(threads.max(1)).max(1);
        std::thread::scope(|scope| {
            for chunk in links.chunks(per_thread) {
                let work = move || {
                    for link in chunk {
                        // A failure is counted and logged by `hash_path`; the
                        // hash worker tries that process again.
                        let _ = self.hash_path(link);
                    }
                };
                if let Err(e) = std::thread::Builder::new().name("hash-warm".into()).spawn_scoped(scope, work) {
                    tracing::debug!(error = %e, "no thread for snapshot hashing; left to the hash workers");
                }
            }
        });
    }

    /// [`Hasher::hash_path`] with a hook run after the first `fstat`, before
    /// the read (tests use it to change the file mid-hash).
    fn hash_path_with(&self, path: &Path, mid_read: &mut dyn FnMut()) -> Result<HashOutcome, HashError> {
        let result = self.hash_inner(path, mid_read);
        let counter = match &result {
            Ok(o) if o.from_cache => &self.cache_hits,
            Ok(_) => &self.hashed,
            Err(HashError::Symlink { .. } | HashError::NotRegular { .. } | HashError::TooLarge { .. }) => &self.refused,
            Err(HashError::Changed { .. }) => &self.changed,
            Err(HashError::Io { .. }) => &self.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::debug!(path = %path.display(), error = %e, "executable not hashed");
        }
        result
    }

    fn hash_inner(&self, path: &Path, mid_read: &mut dyn FnMut()) -> Result<HashOutcome, HashError> {
        let io_err = |source: io::Error| HashError::Io { path: path.to_owned(), source };
        let file = open_no_follow(path)
            .map_err(|e| if is_eloop(&e) { HashError::Symlink { path: path.to_owned() } } else { io_err(e) })?;
        let before = file.metadata().map_err(io_err)?;
        let kind = file_kind(&before);
        if kind != "regular file" {
            return Err(HashError::NotRegular { path: path.to_owned(), kind });
        }
        if before.len() > self.max_size {
            return Err(HashError::TooLarge { path: path.to_owned(), size: before.len(), max: self.max_size });
        }
        let key = FileIdentity::of(&before);
        if let Some(hex) = self.lock_cache().get(&key) {
            return Ok(HashOutcome { hex, algorithm: SHA256, from_cache: true });
        }
        mid_read();
        let (hex, read) = sha256_of(&file, self.max_size).map_err(io_err)?;
        let after = file.metadata().map_err(io_err)?;
        if FileIdentity::of(&after) != key || read != before.len() {
            return Err(HashError::Changed { path: path.to_owned() });
        }
        self.bytes_hashed.fetch_add(read, Ordering::Relaxed);
        self.lock_cache().insert(key, hex.clone());
        Ok(HashOutcome { hex, algorithm: SHA256, from_cache: false })
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while the lock was held cannot leave the map inconsistent
        // (every mutation is a single std call), so a poisoned lock is usable.
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// True for `/proc/<pid>/exe`, `/proc/self/exe` and `/proc/thread-self/exe`.
pub fn is_proc_exe_link(path: &Path) -> bool {
    let Some(s) = path.to_str() else { return false };
    let Some(rest) = s.strip_prefix("/proc/").and_then(|r| r.strip_suffix("/exe")) else {
        return false;
    };
    rest == "self"
        || rest == "thread-self"
        || (!rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
        || rest
            .split_once("/task/")
            .is_some_and(|(p, t)| [p, t].iter().all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit())))
}

fn open_no_follow(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused
        // right after the fstat). O_NOCTTY: a terminal never becomes ours.
        let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
        if !is_proc_exe_link(path) {
            flags |= libc::O_NOFOLLOW;
        }
        opts.custom_flags(flags);
    }
    opts.open(path)
}

/// `ELOOP`: `O_NOFOLLOW` met a symbolic link.
fn is_eloop(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_file() {
        return "regular file";
    }
    if ft.is_dir() {
        return "directory";
    }
    if ft.is_symlink() {
        return "symbolic link";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "FIFO";
        }
        if ft.is_socket() {
            return "socket";
        }
        if ft.is_block_device() || ft.is_char_device() {
            return "device";
        }
    }
    "special file"
}

/// Reads at most `max + 1` bytes (so growth past the limit is noticed) and
/// returns the digest and the number of bytes read.
fn sha256_of(file: &File, max: u64) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut reader = file.take(max.saturating_add(1));
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// Identity of one version of a file: the hash cache's key. Taken from
/// `fstat` of the open file when hashing; an event source that knows the
/// running image's inode (the eBPF exec record) builds one to find the hash
/// without a `stat` ([`Hasher::cached_identity`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// The device, as `stat`'s `st_dev` encodes it.
    pub dev: u64,
    /// The inode number.
    pub ino: u64,
    /// The size in bytes.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Status change time (seconds, nanoseconds).
    pub ctime: (i64, i64),
}

impl FileIdentity {
    /// `st_dev` for a device number split into major and minor, encoded as
    /// glibc's `makedev` does (what [`std::os::unix::fs::MetadataExt::dev`]
    /// returns).
    pub fn encode_dev(major: u32, minor: u32) -> u64 {
        let (major, minor) = (u64::from(major), u64::from(minor));
        ((major & 0x0000_0fff) << 8)
            | ((major & 0xffff_f000) << 32)
            | (minor & 0x0000_00ff)
            | ((minor & 0xffff_ff00) << 12)
    }

    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |t: io::Result<std::time::SystemTime>| {
            t.ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), i64::from(d.subsec_nanos())))
        };
        Self { dev: 0, ino: 0, size: meta.len(), mtime: ns(meta.modified()), ctime: ns(meta.created()) }
    }
}

/// A bounded map with second-chance ("clock") eviction: an entry used since
/// the hand last passed survives one more round. O(1) amortized, close to LRU
/// for this workload (a few hot binaries, a long tail).
#[derive(Debug)]
struct Cache {
    capacity: usize,
    entries: HashMap<FileIdentity, (String, bool)>,
    order: VecDeque<FileIdentity>,
}

impl Cache {
    fn new(capacity: usize) -> Self {
        Self { capacity, entries: HashMap::new(), order: VecDeque::new() }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&mut self, key: &FileIdentity) -> Option<String> {
        let (hex, referenced) = self.entries.get_mut(key)?;
        *referenced = true;
        Some(hex.clone())
    }

    fn insert(&mut self, key: FileIdentity, hex: String) {
        if self.capacity == 0 {
            return;
        }
        if let Some(e) = self.entries.get_mut(&key) {
            *e = (hex, true);
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some(victim) = self.order.pop_front() else {
                break;
            };
            match self.entries.get_mut(&victim) {
                Some((_, referenced)) if *referenced => {
                    *referenced = false;
                    self.order.push_back(victim);
                }
                Some(_) => {
                    self.entries.remove(&victim);
                }
                None => {}
            }
        }
        self.entries.insert(key, (hex, false));
        self.order.push_back(key);
    }
}

#[cfg(test)]
#[path = "hash_tests.rs"]
mod tests;
