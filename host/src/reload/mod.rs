//! Reloading the configuration while traffic flows.
//!
//! A reload compiles the new configuration off the request path (unchanged upstreams and
//! plugins are taken over, not rebuilt), starts and configures every new filter, adopts the warm
//! instance pools of unchanged ones, and only then swaps the snapshot in one atomic store.
//! Requests already running finish on the snapshot they started with; the old snapshot is freed
//! when the last of them ends. A reload that fails at any step changes nothing: the running
//! configuration keeps serving, and the error is logged and kept for `GET /status`.
//!
//! Listeners, the admin listener and `max_connections` are bound when Sluice starts; a reload
//! that changes them applies everything else and says that those need a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::config::{ConfigError, Snapshot};

pub(crate) mod watch;

/// What `GET /status` reports about configuration generations.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    /// 1 for the configuration Sluice started with, one more for each successful reload.
    pub generation: u64,
    /// When the running generation was loaded (Unix seconds).
    pub loaded_at: u64,
    /// The last reload that failed, if the latest attempt failed: why, and when.
    pub last_error: Option<ReloadFailure>,
    /// Attempts so far, successful or not.
    pub attempts: u64,
    /// Settings the running configuration changed that take effect only on restart.
    pub pending_restart: Vec<String>,
}

/// A failed reload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadFailure {
    /// The error, with file, line and key where there is one.
    pub error: String,
    /// When it happened (Unix seconds).
    pub at: u64,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_secs()).unwrap_or_default()
}

/// Swaps configurations: one at a time, atomically, keeping what did not change.
#[derive(Debug)]
pub struct Reloader {
    snapshot: Arc<ArcSwap<Snapshot>>,
    status: Mutex<ReloadStatus>,
    generations: tokio::sync::watch::Sender<u64>,
    /// One reload at a time: two at once would both build on the same old snapshot.
    running: tokio::sync::Mutex<()>,
    /// A background reload is waiting for the running one: a further request needs no other,
    /// as that one reads the file when its turn comes.
    queued: std::sync::atomic::AtomicBool,
    source: Option<PathBuf>,
}

impl Reloader {
    pub(crate) fn new(snapshot: Arc<ArcSwap<Snapshot>>) -> Self {
        let source = snapshot.load().source.clone();
        let status = ReloadStatus { generation: 1, loaded_at: now_unix(), ..ReloadStatus::default() };
        Self {
            snapshot,
            status: Mutex::new(status),
            generations: tokio::sync::watch::channel(1).0,
            running: tokio::sync::Mutex::new(()),
            queued: std::sync::atomic::AtomicBool::new(false),
            source,
        }
    }

    /// The configuration file reloads read, if Sluice was started from one.
    pub fn source(&self) -> Option<&PathBuf> {
        self.source.as_ref()
    }

    /// The current status.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Follows the generation number: it changes after each successful reload.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generations.subscribe()
    }

    /// Re-reads the configuration file and swaps it in.
    pub async fn reload_from_source(&self) -> Result<u64, ConfigError> {
        let Some(path) = self.source.clone() else {
            return Err(ConfigError::at("", None, "", "Sluice was not started from a file: nothing to re-read"));
        };
        let _one_at_a_time = self.running.lock().await;
        self.reload_file(path).await
    }

    /// Compiles `path` against the running snapshot and swaps it in; the caller holds `running`.
    async fn reload_file(&self, path: PathBuf) -> Result<u64, ConfigError> {
        let previous = self.snapshot.load_full();
        // Compiling may build plugin crates and compile components: keep it off the workers.
        let compiled = tokio::task::spawn_blocking(move || Snapshot::from_file_after(&path, &previous))
            .await
            .unwrap_or_else(|panic| Err(ConfigError::at("", None, "", format!("the reload panicked: {panic}"))));
        self.finish(compiled).await
    }

    /// Starts re-reading the configuration file in the background and returns at once; its
    /// outcome shows in [`status`](Self::status). Requests made while one waits to start are
    /// covered by it. False when Sluice was not started from a file.
    pub fn reload_from_source_in_background(self: &Arc<Self>) -> bool {
        use std::sync::atomic::Ordering;
        let Some(path) = self.source.clone() else {
            return false;
        };
        if self.queued.swap(true, Ordering::AcqRel) {
            return true;
        }
        let reloader = self.clone();
        tokio::spawn(async move {
            let _one_at_a_time = reloader.running.lock().await;
            reloader.queued.store(false, Ordering::Release);
            // The outcome is logged and kept for `/status` by the reload itself.
            let _ = reloader.reload_file(path).await;
        });
        true
    }

    /// Whether a reload is running or waiting to start.
    pub fn reload_in_progress(&self) -> bool {
        self.running.try_lock().is_err() || self.queued.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Swaps in configuration text (compiled here against the running snapshot): for tests and
    /// for embedding Sluice.
    pub async fn reload_from_toml(&self, source: &str) -> Result<u64, ConfigError> {
        let _one_at_a_time = self.running.lock().await;
        let previous = self.snapshot.load_full();
        let source = source.to_owned();
        let compiled = tokio::task::spawn_blocking(move || Snapshot::from_toml_after(&source, &previous))
            .await
            .unwrap_or_else(|panic| Err(ConfigError::at("", None, "", format!("the reload panicked: {panic}"))));
        self.finish(compiled).await
    }

    async fn finish(&self, compiled: Result<Snapshot, ConfigError>) -> Result<u64, ConfigError> {
        let previous = self.snapshot.load_full();
        let outcome = match compiled {
            Ok(next) => self.swap(next, &previous).await,
            Err(error) => Err(error),
        };
        let mut status = self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        status.attempts += 1;
        match &outcome {
            Ok((generation, pending_restart)) => {
                status.generation = *generation;
                status.loaded_at = now_unix();
                status.last_error = None;
                status.pending_restart.clone_from(pending_restart);
                tracing::info!(generation, "configuration reloaded");
                for setting in pending_restart {
                    tracing::warn!(setting = %setting, "changed in the configuration; takes effect on restart");
                }
                let _ = self.generations.send(*generation);
            }
            Err(error) => {
                status.last_error = Some(ReloadFailure { error: error.to_string(), at: now_unix() });
                tracing::error!(error = %error, generation = status.generation, "reload failed; the running configuration keeps serving");
            }
        }
        outcome.map(|(generation, _)| generation)
    }

    async fn swap(&self, next: Snapshot, previous: &Snapshot) -> Result<(u64, Vec<String>), ConfigError> {
        next.adopt_filter_pools(previous);
        next.prepare_filters().await?;
        for upstream in next.upstreams.values() {
            upstream.start_health_checks();
        }
        let mut pending_restart = restart_only_changes(previous, &next);
        // The long-call threads keep the priority they started with (they may not raise it).
        if !next.services.runtime.set_long_call_priority(next.server.long_call_priority) {
            pending_restart.push("server.long_call_priority".to_owned());
        }
        let generation = self.status().generation + 1;
        let places = next.live_places();
        next.services.live.keep_only(&places);
        next.services.shadows.keep_only(&places);
        self.snapshot.store(Arc::new(next));
        Ok((generation, pending_restart))
    }
}

/// Settings bound at start that differ between `running` and `next`.
fn restart_only_changes(running: &Snapshot, next: &Snapshot) -> Vec<String> {
    let mut changed = Vec::new();
    let listeners = |snapshot: &Snapshot| -> Vec<String> {
        snapshot
            .listeners
            .iter()
            .map(|listener| format!("{}={}{}", listener.name, listener.bind, listener.tls.is_some()))
            .collect()
    };
    if listeners(running) != listeners(next) {
        changed.push("listener".to_owned());
    }
    // A listener's QUIC endpoint is bound with its HTTP/3 settings at start.
    let http3 = |snapshot: &Snapshot| -> Vec<_> {
        snapshot.listeners.iter().map(|listener| (listener.name.clone(), listener.http3.clone())).collect()
    };
    if http3(running) != http3(next) {
        changed.push("listener.http3".to_owned());
    }
    if running.admin != next.admin {
        changed.push("admin.bind".to_owned());
    }
    if running.server.max_connections != next.server.max_connections {
        changed.push("server.max_connections".to_owned());
    }
    if running.cache_max_bytes != next.cache_max_bytes {
        changed.push("cache.max_bytes".to_owned());
    }
    let cluster = |snapshot: &Snapshot| snapshot.cluster.as_ref().map(|redis| redis.settings().clone());
    if cluster(running) != cluster(next) {
        changed.push("cluster".to_owned());
    }
    changed
}
