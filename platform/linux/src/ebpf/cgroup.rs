//! Cgroup v2 ids (what `bpf_get_current_cgroup_id` returns: the inode
//! number of the cgroup's directory) to cgroup paths, as `/proc/<pid>/cgroup`
//! shows them (`/user.slice/...`).
//!
//! The map is built by walking the cgroup2 mount and rebuilt on a miss, at
//! most once per [`RESCAN_AFTER`], so a storm of execs in a new cgroup costs
//! one walk. An id not found stays unknown (`None`), never guessed.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup v2 is mounted on systemd hosts.
const CGROUP2_ROOT: &str = "/sys/fs/cgroup";
/// Least time between two walks.
const RESCAN_AFTER: Duration = Duration::from_secs(1);
/// Most directories one walk visits.
const MAX_DIRS: usize = 100_000;

/// A cache of cgroup id to path.
#[derive(Debug)]
pub(crate) struct CgroupPaths {
    root: PathBuf,
    paths: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

impl CgroupPaths {
    /// A resolver for the cgroup2 tree at `root` (not walked until needed).
    pub(crate) fn new(root: &Path) -> Self {
        Self { root: root.to_owned(), paths: HashMap::new(), last_scan: None }
    }

    /// The resolver for the host's cgroup2 mount (from
    /// `/proc/self/mountinfo`: `/sys/fs/cgroup` on unified hosts,
    /// `/sys/fs/cgroup/unified` on hybrid ones).
    pub(crate) fn host() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = cgroup2_mount(&mountinfo).unwrap_or_else(|| PathBuf::from(CGROUP2_ROOT));
        Self::new(&root)
    }

    /// The path of cgroup `id`, walking the tree again on a miss unless it
    /// was walked less than [`RESCAN_AFTER`] ago.
    pub(crate) fn resolve(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        if self.last_scan.is_some_and(|t| t.elapsed() < RESCAN_AFTER) {
            return None;
        }
        self.scan();
        self.paths.get(&id).cloned()
    }

    fn scan(&mut self) {
        self.last_scan = Some(Instant::now());
        self.paths.clear();
        let mut stack = vec![(self.root.clone(), String::from("/"))];
        let mut visited = 0;
        while let Some((dir, rel)) = stack.pop() {
            visited += 1;
            if visited > MAX_DIRS {
                tracing::warn!(root = %self.root.display(), "cgroup tree larger than {MAX_DIRS} directories; walk cut");
                break;
            }
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            self.paths.insert(meta.ino(), rel.clone());
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = if rel == "/" { format!("/{name}") } else { format!("{rel}/{name}") };
                    stack.push((entry.path(), child));
                }
            }
        }
    }
}

/// The mount point of the first cgroup2 file system in a mountinfo text
/// (`id parent dev root mountpoint opts ... - fstype source superopts`).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cgroup2_mount_is_found_in_hybrid_layouts() {
        let info = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(info), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("30 25 0:26 / /x rw - tmpfs tmpfs rw\n"), None);
    }

    use super::*;

    #[test]
    fn ids_are_directory_inodes_and_misses_are_rate_limited() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a.slice/b.scope")).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let mut c = CgroupPaths::new(dir.path());
        assert_eq!(c.resolve(ino(dir.path())).as_deref(), Some("/"));
        assert_eq!(c.resolve(ino(&dir.path().join("a.slice/b.scope"))).as_deref(), Some("/a.slice/b.scope"));
        // A new cgroup right after a walk is not found until the next walk.
        std::fs::create_dir(dir.path().join("new")).unwrap();
        let new = ino(&dir.path().join("new"));
        assert_eq!(c.resolve(new), None);
        c.last_scan = None;
        assert_eq!(c.resolve(new).as_deref(), Some("/new"));
    }
}
