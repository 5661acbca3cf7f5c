//! The filter runtime: a wasmtime [`Engine`] (one [`Runtime`], made by the CLI and handed
//! down), compiled plugins, warm instance pools, host capabilities and the limits that keep each
//! tenant's filters to what they were granted. Callouts go through [`CalloutUpstreams`], which
//! the proxy implements: this crate knows no upstream code.
//!
//! - The engine uses the component model, async calls (a filter waiting on a callout or yielding
//!   at its CPU tick never blocks a worker thread), epoch interruption and the pooling allocator.
//! - Compiled components are cached on disk by wasmtime, keyed by the component's bytes and the
//!   engine's settings, so a restart does not recompile.
//! - Each filter in a route is a [`FilterPool`]: an `InstancePre` and a bounded pool of warm,
//!   configured instances. A trapped or over-limit instance is thrown away, never reused.
//! - A call that runs past its first milliseconds leaves the proxy's workers for low-priority
//!   long-call threads (`long_calls`), one at a time per tenant ([`LongCallLane`]).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod bindings;
mod callouts;
mod host;
pub mod kv;
mod long_calls;
pub mod metering;
mod plugin;
mod pool;
mod tenant;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use callouts::{CalloutExchange, CalloutUpstreams, NoUpstreams};
pub use host::metrics::SeriesBudget;
pub use host::trace::{CallTrace, TraceEvent, TraceNotes};
pub use host::{CallContext, HostServices};

/// The bounds the host keeps a guest to, whatever its tenant's grants (see docs/operations.md,
/// "Limits and abuse").
pub mod limits {
    pub use crate::host::client::MAX_BAN_REASON_BYTES;
    pub use crate::host::handles::{
        MAX_CACHE_KEY_BYTES, MAX_HEAD_BYTES, MAX_HEAD_FIELDS, MAX_HEADER_VALUE_BYTES, MAX_PATH_BYTES,
    };
    pub use crate::host::log::MAX_LINE_BYTES;
    pub use crate::host::metrics::{MAX_LABEL_VALUE_BYTES, MAX_LABELS, MAX_NAME_BYTES};
    pub use crate::host::trace::{
        MAX_EVENT_ATTRIBUTES, MAX_TRACE_ATTRIBUTES, MAX_TRACE_EVENTS, MAX_TRACE_KEY_BYTES, MAX_TRACE_VALUE_BYTES,
    };
    pub use crate::kv::MAX_KEY_BYTES;
}
pub use long_calls::{LongCallPriority, LongCallThreads};
pub use plugin::{Plugin, PluginError, WIT_PACKAGE, WIT_VERSION};
pub use pool::{
    BodyOutcome, CallReport, Canary, FailurePolicy, FilterError, FilterErrorKind, FilterInstance, FilterPool,
    FilterSpec, HeadOutcome, InstanceCount, Isolation, RequestHead, RouteFilter, Shadow,
};
pub use tenant::{
    BanGrant, CpuRate, DEFAULT_BAN_ENTRIES, DEFAULT_CALL_TIMEOUT, DEFAULT_LOG_LINES_PER_SECOND, DEFAULT_METRIC_SERIES,
    LongCallLane, Tenant,
};

pub use bindings::sluice::filter::types::Phases;

use host::FilterState;

/// How often the epoch advances: the granularity of CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Instances the pooling allocator keeps slots for across all filters.
const POOLED_INSTANCES: u32 = 1000;

/// Linear memory kept resident per pooled slot: covers a typical Rust filter's whole memory.
const KEEP_RESIDENT_BYTES: usize = 2 << 20;

/// The engine, its linker and the services host calls reach. The CLI makes one per process;
/// two make two independent runtimes (their own engines, long-call threads and metrics).
pub struct Runtime {
    engine: Engine,
    linker: Linker<FilterState>,
    services: Arc<HostServices>,
    cache_dir: Option<PathBuf>,
    /// Started with the first filter: a proxy without filters has no thread waking every tick.
    epoch_ticker: std::sync::Once,
    /// Lanes for long calls, all tenants together: one per long-call thread (see `LongCallLane`
    /// and `long_calls`).
    pub(crate) long_call_lanes: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache_dir", &self.cache_dir).finish_non_exhaustive()
    }
}

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the filter runtime: {0}")]
pub struct RuntimeError(String);

impl Runtime {
    /// A runtime with the compiled-component cache in `$SLUICE_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/sluice/compiled`, else `~/.cache/sluice/compiled`. The CLI makes one
    /// per process and hands it down; nothing in Sluice keeps one of its own.
    pub fn with_default_cache() -> Result<Self, RuntimeError> {
        Self::new(default_cache_dir())
    }

    /// A runtime caching compiled components in `cache_dir` (none: no disk cache).
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, RuntimeError> {
        let fail = |what: &str, err: wasmtime::Error| RuntimeError(format!("{what}: {err:#}"));
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // Function names in traps, so a failure log says where the guest was.
        config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(32));
        // `SLUICE_WASM_PROFILER=perfmap`: guest functions by name in `perf` profiles (a map file
        // in /tmp per process); see docs/operations.md.
        if std::env::var_os("SLUICE_WASM_PROFILER").is_some_and(|value| value == "perfmap") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if let Some(dir) = &cache_dir {
            let mut cache_config = wasmtime::CacheConfig::new();
            cache_config.with_directory(dir);
            let cache = wasmtime::Cache::new(cache_config).map_err(|err| fail("compiled-component cache", err))?;
            config.cache(Some(cache));
        }
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_component_instances(POOLED_INSTANCES)
            .total_core_instances(POOLED_INSTANCES * 4)
            .total_memories(POOLED_INSTANCES * 2)
            .total_tables(POOLED_INSTANCES * 4)
            .max_memories_per_component(4)
            .max_tables_per_component(8)
            .max_core_instances_per_component(32)
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            .max_memory_size(tenant::MAX_MEMORY_BYTES)
            // Reusing a slot is the cost of a fresh instance: reset small memories, tables and
            // fiber stacks in place (memset) instead of handing pages back to the kernel and
            // faulting them in again.
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(128 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling.clone()));
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            Err(err) => {
                // Some hosts limit virtual memory below what the pool reserves: serve anyway,
                // allocating each instance on demand.
                tracing::warn!(error = %err, "pooling allocator unavailable; allocating instances on demand");
                config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
                Engine::new(&config).map_err(|err| fail("engine", err))?
            }
        };
        let linker = host::linker(&engine).map_err(|err| fail("linker", err))?;
        Ok(Self {
            engine,
            linker,
            services: Arc::new(HostServices::default()),
            cache_dir,
            epoch_ticker: std::sync::Once::new(),
            long_call_lanes: Arc::new(tokio::sync::Semaphore::new(long_calls::LongCallThreads::count())),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts advancing the epoch, which CPU deadlines count in; needed before any guest runs.
    pub(crate) fn start_epoch_ticker(&self) {
        self.epoch_ticker.call_once(|| start_epoch_ticker(&self.engine));
    }

    /// The services host calls reach (key-value store, metrics, callout upstreams).
    pub fn services(&self) -> &Arc<HostServices> {
        &self.services
    }

    /// Sets the CPU priority of this runtime's long-call threads (see
    /// [`LongCallThreads::set_priority`]); false when they already run at another one.
    pub fn set_long_call_priority(&self, priority: LongCallPriority) -> bool {
        self.services.long_call_threads.set_priority(priority)
    }

    /// Where compiled components are cached.
    pub fn cache_dir(&self) -> Option<&std::path::Path> {
        self.cache_dir.as_deref()
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    // A folder of its own: wasmtime's cache clean-up removes whatever else it finds in its
    // directory, and Sluice's cache home also holds the package store and the Go toolchain.
    std::env::var_os("SLUICE_CACHE_DIR").map(PathBuf::from).or_else(|| Some(sluice_cache_home()?.join("compiled")))
}

/// Sluice's folder in the user's cache: `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`.
pub fn sluice_cache_home() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("sluice"))
}

/// Advances the engine's epoch every tick, on a thread of its own so that a busy async runtime
/// cannot delay deadlines. It holds only a weak handle: it ends when the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    if let Err(err) = spawned {
        tracing::error!(error = %err, "cannot start the epoch thread: filter CPU deadlines will not fire");
    }
}
