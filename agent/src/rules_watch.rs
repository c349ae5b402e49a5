//! Rule hot reload: watches `rules.dir` and swaps the loaded rule set when a
//! rule file is added, changed or removed; `daemoneye-cli rules reload`
//! triggers the same reload through the API.
//!
//! Policy: a reload re-reads the **whole directory** and replaces the rule
//! set at once (one `Arc` swap in [`Shared::rules`]). A broken file or rule
//! is reported (an `error` log line naming the file, the rule id and the
//! position, and the `rules_failed` health counter) and skipped; the rules of
//! every other file keep running. The previous version of a broken file is
//! *not* kept: what runs is always exactly what the directory holds, and the
//! agent's health says `degraded` until the file is fixed.
//!
//! File events arrive on notify's thread and are coalesced: after the first
//! event the watcher waits for [`SETTLE`] without further events (editors
//! write a file in several steps) and then reloads once. The event queue is
//! bounded; when it is full the event is dropped, which loses nothing because
//! a reload is already pending.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use daemoneye_lib::detection::{RuleSet, load_rules_dir};
use daemoneye_lib::models::time::now_ms;
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Shared;

/// How long the directory must be quiet after a change before reloading.
pub const SETTLE: Duration = Duration::from_millis(250);

/// Where the rules come from and when they were last loaded.
#[derive(Debug)]
pub struct RulesSource {
    /// The rules directory (`rules.dir`).
    pub dir: PathBuf,
    /// When the current rule set was loaded (Unix ms).
    pub loaded_ms: AtomicI64,
}

impl RulesSource {
    /// A source for `dir`, loaded now.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, loaded_ms: AtomicI64::new(now_ms()) }
    }
}

/// Loads the rules directory, logs every error with its file, and returns
/// the set (used at start-up and by every reload).
pub fn load_and_report(dir: &Path) -> RuleSet {
    let set = load_rules_dir(dir);
    for err in &set.errors {
        tracing::error!(file = %err.path().display(), "{err}; the file's other rules and the other files still load");
    }
    set
}

/// Re-reads the rules directory and replaces the running rule set; updates
/// the health counters. Blocking (file I/O and SQL compilation): call from a
/// blocking thread.
pub fn reload(shared: &Shared) -> Arc<RuleSet> {
    let dir = &shared.rules_source.dir;
    let mut set = load_and_report(dir);
    // The operator's `rules enable|disable` choices outlive every reload.
    crate::api_rules::apply_overrides(&mut set, &shared.store);
    let set = Arc::new(set);
    shared.health.rules_loaded.store(u32::try_from(set.rules.len()).unwrap_or(u32::MAX), Relaxed);
    shared.health.rules_failed.store(u32::try_from(set.errors.len()).unwrap_or(u32::MAX), Relaxed);
    shared.set_rules(Arc::clone(&set));
    shared.rules_source.loaded_ms.store(now_ms(), Relaxed);
    tracing::info!(
        dir = %dir.display(),
        loaded = set.rules.len(),
        failed = set.errors.len(),
        "rules reloaded"
    );
    set
}

/// Watches the rules directory until `cancel` and reloads on every change.
/// When the directory cannot be watched (it does not exist, inotify limits)
/// it logs why and returns: the rules loaded at start keep running and
/// `daemoneye-cli rules reload` still works.
pub async fn watch(shared: Arc<Shared>, cancel: CancellationToken) {
    let dir = shared.rules_source.dir.clone();
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let handler = move |res: notify::Result<notify::Event>| match res {
        Ok(ev) if is_relevant(&ev) => {
            // Full means a reload is already pending; nothing is lost.
            let _ = tx.try_send(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "rules directory watch reported an error"),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot start the rules watcher; rules reload only on `daemoneye-cli rules reload`");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(
            dir = %dir.display(),
            error = %e,
            "cannot watch the rules directory (does it exist?); rules reload only on `daemoneye-cli rules reload`"
        );
        return;
    }
    tracing::info!(dir = %dir.display(), "watching the rules directory for changes");
    loop {
        tokio::select! {
            got = rx.recv() => if got.is_none() { break },
            () = cancel.cancelled() => break,
        }
        // Coalesce a burst of events (write, chmod, rename) into one reload.
        loop {
            tokio::select! {
                got = tokio::time::timeout(SETTLE, rx.recv()) => match got {
                    Ok(Some(())) => continue,
                    Ok(None) | Err(_) => break,
                },
                () = cancel.cancelled() => return,
            }
        }
        let shared = Arc::clone(&shared);
        if let Err(e) = tokio::task::spawn_blocking(move || reload(&shared)).await {
            tracing::error!(error = %e, "rule reload task failed");
        }
    }
    drop(watcher);
}

/// Whether a file event can change the rule set: a create, write, rename or
/// removal of a `*.yaml`/`*.yml` file (editor swap and backup files are
/// ignored), or of the directory itself.
fn is_relevant(ev: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode};
    // Reads are not changes; a close after writing is (the write is complete).
    if matches!(ev.kind, EventKind::Access(k) if k != AccessKind::Close(AccessMode::Write)) {
        return false;
    }
    ev.paths.iter().any(|p| is_rule_file(p)) || ev.paths.is_empty()
}

fn is_rule_file(p: &Path) -> bool {
    let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
    !hidden && p.extension().is_some_and(|x| x == "yaml" || x == "yml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rule_files_count() {
        assert!(is_rule_file(Path::new("/r/a.yaml")));
        assert!(is_rule_file(Path::new("/r/b.yml")));
        assert!(!is_rule_file(Path::new("/r/.a.yaml.swp")));
        assert!(!is_rule_file(Path::new("/r/.a.yaml")));
        assert!(!is_rule_file(Path::new("/r/a.yaml~")));
        assert!(!is_rule_file(Path::new("/r/notes.txt")));
        let ev = notify::Event::new(EventKind::Access(notify::event::AccessKind::Any)).add_path("/r/a.yaml".into());
        assert!(!is_relevant(&ev));
        let ev = notify::Event::new(EventKind::Remove(notify::event::RemoveKind::File)).add_path("/r/a.yaml".into());
        assert!(is_relevant(&ev));
    }
}
