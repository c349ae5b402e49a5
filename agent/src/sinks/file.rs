//! The JSON-lines sinks: stdout, and a file rotated by size
//! (`path` -> `path.1` -> ... -> `path.N`, the oldest dropped). Blocking
//! I/O, on the sink worker's own thread.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes one line to stdout and flushes.
pub(super) fn write_stdout(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).map_err(|e| format!("writing to stdout: {e}"))
}

/// An append-only JSON-lines file that rotates past `max_size` bytes.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    max_files: u32,
    file: Option<(File, u64)>,
}

impl RotatingFile {
    /// A writer for `path` (opened on the first line).
    pub fn new(path: PathBuf, max_size: u64, max_files: u32) -> Self {
        Self { path, max_size, max_files: max_files.max(1), file: None }
    }

    /// Appends `line` and a newline, rotating first when the file would grow
    /// past the size limit (a line longer than the limit gets a file of its
    /// own), then `fdatasync`s: a line written is a line kept.
    pub fn write_line(&mut self, line: &str) -> Result<(), String> {
        let len = u64::try_from(line.len()).unwrap_or(u64::MAX).saturating_add(1);
        let (_, size) = self.open()?;
        if *size > 0 && size.saturating_add(len) > self.max_size {
            self.rotate()?;
        }
        let (file, size) = self.open()?;
        let r = file.write_all(format!("{line}\n").as_bytes()).and_then(|()| file.sync_data());
        match r {
            Ok(()) => {
                *size += len;
                Ok(())
            }
            Err(e) => {
                // Reopen next time: the file may have been removed or the disk freed.
                self.file = None;
                Err(format!("writing alert file {}: {e}", self.path.display()))
            }
        }
    }

    fn open(&mut self) -> Result<&mut (File, u64), String> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
            let f = OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| {
                format!("opening alert file {}: {e}; check the path and permissions", self.path.display())
            })?;
            let size = f.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some((f, size));
        }
        // Just set above when it was None.
        self.file.as_mut().ok_or_else(|| format!("alert file {} is not open", self.path.display()))
    }

    fn rotate(&mut self) -> Result<(), String> {
        self.file = None;
        let numbered = |n: u32| -> PathBuf {
            let mut s = self.path.clone().into_os_string();
            s.push(format!(".{n}"));
            PathBuf::from(s)
        };
        let _ = std::fs::remove_file(numbered(self.max_files));
        for n in (1..self.max_files).rev() {
            rename_if_exists(&numbered(n), &numbered(n + 1))?;
        }
        rename_if_exists(&self.path, &numbered(1))
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), String> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("rotating {} to {}: {e}", from.display(), to.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/alerts.jsonl");
        let mut f = RotatingFile::new(path.clone(), 25, 2);
        for i in 0..7 {
            f.write_line(&format!("{{\"n\":{i:05}}}")).unwrap(); // 11 bytes + newline
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        // Two lines per file; the oldest (0, 1) fell off the end.
        assert_eq!(read(&path), "{\"n\":00006}\n");
        assert_eq!(read(&dir.path().join("sub/alerts.jsonl.1")), "{\"n\":00004}\n{\"n\":00005}\n");
        assert_eq!(read(&dir.path().join("sub/alerts.jsonl.2")), "{\"n\":00002}\n{\"n\":00003}\n");
        assert!(!dir.path().join("sub/alerts.jsonl.3").exists());
        // Reopening continues the current file's size.
        let mut g = RotatingFile::new(path.clone(), 25, 2);
        g.write_line("{\"n\":00007}").unwrap();
        assert_eq!(read(&path).lines().count(), 2);
    }
}
