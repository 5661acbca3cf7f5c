//! Reloading when files change: the configuration file and local plugin sources (component
//! files, and the `Cargo.toml` or `package.json`, `src/` and `wit/` of plugin folders, or the
//! `.go` files and `go.mod` of Go filters) and the data files it reads (GeoIP databases, address
//! list files) are watched, and a change triggers a reload once the writes settle.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Reloader;

/// Editors and build tools write a file in several steps; one reload follows the last of them.
const SETTLE: Duration = Duration::from_millis(300);

/// What to watch for one snapshot: folders (with recursion or not) and which paths under them
/// count.
#[derive(Debug, Default, PartialEq, Eq)]
struct WatchSet {
    folders: BTreeSet<(PathBuf, bool)>,
    files: BTreeSet<PathBuf>,
    trees: BTreeSet<PathBuf>,
    /// Go filters' folders: their `.go` files (at any depth) count, nothing else there does
    /// (builds write under them).
    go_modules: BTreeSet<PathBuf>,
}

impl WatchSet {
    fn of(config: &Path, plugin_sources: &[PathBuf], data_files: &[PathBuf]) -> Self {
        let mut set = Self::default();
        // Folders, not files: editors replace a file by renaming a new one over it, which ends a
        // watch on the file itself.
        set.add_file(config);
        for file in data_files {
            set.add_file(file);
        }
        for source in plugin_sources {
            if source.join("go.mod").is_file()
                && let Ok(folder) = source.canonicalize()
            {
                set.add_file(&folder.join("go.mod"));
                set.add_file(&folder.join("sluice.toml"));
                set.folders.insert((folder.clone(), true));
                set.go_modules.insert(folder);
            } else if source.is_dir() {
                // A Rust crate, or a JavaScript package.
                set.add_file(&source.join("Cargo.toml"));
                set.add_file(&source.join("package.json"));
                for tree in ["src", "wit"] {
                    let folder = source.join(tree);
                    if let Ok(folder) = folder.canonicalize()
                        && folder.is_dir()
                    {
                        set.folders.insert((folder.clone(), true));
                        set.trees.insert(folder);
                    }
                }
            } else {
                set.add_file(source);
            }
        }
        set
    }

    fn add_file(&mut self, file: &Path) {
        let file = file.canonicalize().unwrap_or_else(|_| file.to_owned());
        if let Some(folder) = file.parent() {
            self.folders.insert((folder.to_owned(), false));
        }
        self.files.insert(file);
    }

    fn matters(&self, path: &Path) -> bool {
        self.files.contains(path)
            || self.trees.iter().any(|tree| path.starts_with(tree))
            || path.extension().is_some_and(|extension| extension == "go")
                && self.go_modules.iter().any(|module| path.starts_with(module))
    }
}

/// Watches the running configuration's files and reloads on change, until `stop`.
pub(crate) fn spawn(
    reloader: Arc<Reloader>,
    snapshot: Arc<arc_swap::ArcSwap<crate::config::Snapshot>>,
    stop: CancellationToken,
) {
    let Some(config) = reloader.source().cloned() else { return };
    let (events, mut changes) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            for path in event.paths {
                let _ = events.send(path);
            }
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(error = %error, "cannot watch files; reload with SIGHUP or POST /reload");
            return;
        }
    };
    // The first watches are in place before Sluice reports that it started: a change made right
    // after that is seen.
    let mut watching = WatchSet::default();
    rewatch(
        &mut watcher,
        &mut watching,
        WatchSet::of(&config, &snapshot.load().plugin_sources, &snapshot.load().data_files),
    );
    tokio::spawn(async move {
        loop {
            rewatch(
                &mut watcher,
                &mut watching,
                WatchSet::of(&config, &snapshot.load().plugin_sources, &snapshot.load().data_files),
            );
            // Wait for a change that matters, then for the writes to settle.
            loop {
                let path = tokio::select! {
                    () = stop.cancelled() => return,
                    path = changes.recv() => match path { Some(path) => path, None => return },
                };
                if watching.matters(&path) {
                    tracing::info!(path = %path.display(), "file changed; reloading");
                    break;
                }
            }
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(SETTLE) => break,
                    more = changes.recv() => if more.is_none() { return },
                }
            }
            // Failures are logged and kept for /status by the reloader; keep watching either way.
            let _ = reloader.reload_from_source().await;
        }
    });
}

/// Moves the watches to what `wanted` names (plugins come and go with reloads).
fn rewatch(watcher: &mut notify::RecommendedWatcher, watching: &mut WatchSet, wanted: WatchSet) {
    if wanted == *watching {
        return;
    }
    for (folder, _) in &watching.folders {
        let _ = watcher.unwatch(folder);
    }
    for (folder, recursive) in &wanted.folders {
        let mode = if *recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        if let Err(error) = watcher.watch(folder, mode) {
            tracing::warn!(folder = %folder.display(), error = %error, "cannot watch");
        }
    }
    *watching = wanted;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_sources_are_watched_but_not_their_build_output() {
        let root = std::env::temp_dir().join(format!("sluice-watch-{}", std::process::id()));
        let plugin = root.join("filter");
        std::fs::create_dir_all(plugin.join("src")).unwrap();
        std::fs::create_dir_all(plugin.join("target")).unwrap();
        let config = root.join("sluice.toml");
        std::fs::write(&config, "").unwrap();
        let set = WatchSet::of(&config, &[plugin.clone(), root.join("other.wasm")], &[root.join("lists/deny.txt")]);
        let root = root.canonicalize().unwrap();
        assert!(set.matters(&root.join("sluice.toml")));
        assert!(set.matters(&plugin.join("src/lib.rs")));
        assert!(set.matters(&plugin.join("src/deep/mod.rs")));
        assert!(!set.matters(&plugin.join("target/release/x.wasm")), "build output never triggers a reload");
        assert!(!set.matters(&root.join("notes.txt")));
        assert!(set.matters(&root.join("lists/deny.txt")), "data files the configuration reads are watched");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn go_filters_are_watched_by_their_go_files() {
        let root = std::env::temp_dir().join(format!("sluice-watch-go-{}", std::process::id()));
        let plugin = root.join("gate");
        std::fs::create_dir_all(plugin.join("internal/rules")).unwrap();
        std::fs::create_dir_all(plugin.join("target/sluice")).unwrap();
        std::fs::write(plugin.join("go.mod"), "module example.com/gate\n").unwrap();
        let config = root.join("sluice.toml");
        std::fs::write(&config, "").unwrap();
        let set = WatchSet::of(&config, std::slice::from_ref(&plugin), &[]);
        let plugin = plugin.canonicalize().unwrap();
        assert!(set.matters(&plugin.join("go.mod")));
        assert!(set.matters(&plugin.join("sluice.toml")));
        assert!(set.matters(&plugin.join("main.go")));
        assert!(set.matters(&plugin.join("internal/rules/rules.go")));
        assert!(!set.matters(&plugin.join("target/sluice/gate.wasm")), "build output never triggers a reload");
        assert!(!set.matters(&plugin.join("README.md")));
        let _ = std::fs::remove_dir_all(&root);
    }
}
