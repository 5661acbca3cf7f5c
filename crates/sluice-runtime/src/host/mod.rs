//! The store's data ([`FilterState`]: the call's context, the heads lent to it, its limits) and
//! the host side of every `sluice:filter` import, one file per WIT interface: the request and
//! response handles (`handles`), `log`, `kv`, `metrics`, `callout`, `clock`, `random` and
//! `client`. Every
//! capability is checked against the calling filter's tenant.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, StatusCode, Uri};
use http_body_util::BodyExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rand::RngCore;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::Plugin as Filter;
use super::bindings::sluice::filter::{http as wit_http, types};
pub(crate) use super::bindings::{RequestHandle, ResponseHandle};
use super::kv::{KvError, KvStore};
use super::long_calls::{CallClock, LongCallPermits, LongCallThreads};
use super::tenant::Tenant;
use crate::callouts::CalloutUpstreams;
use sluice_http::body;

mod callout;
pub(crate) mod client;
mod clock;
pub(crate) mod handles;
mod kv;
pub(crate) mod log;
pub(crate) mod metrics;
mod random;
pub(crate) mod trace;

#[cfg(test)]
mod fuzz;

/// Largest callout response body a filter receives.
const CALLOUT_BODY_LIMIT: usize = 1 << 20;
/// Callout timeout when the filter gives none.
const CALLOUT_DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Labels of metrics written by filters: tenant, plugin and metric name, then the filter's own.
pub(crate) type PluginMetricLabels = Vec<(String, String)>;

/// The services host calls reach, one set per [`Runtime`](crate::Runtime).
#[derive(Debug)]
pub struct HostServices {
    /// Every tenant's key-value namespace.
    pub kv: KvStore,
    /// Counters written by filters (`sluice_filter_counter_total`).
    pub counters: Family<PluginMetricLabels, Counter>,
    /// Gauges written by filters (`sluice_filter_gauge`).
    pub gauges: Family<PluginMetricLabels, Gauge>,
    /// Histograms written by filters (`sluice_filter_histogram`).
    pub histograms: Family<PluginMetricLabels, Histogram, fn() -> Histogram>,
    /// Failed filter calls by route, filter, tenant and kind (`sluice_filter_failures_total`).
    pub failures: Family<PluginMetricLabels, Counter>,
    /// Warm instances retired near their memory limit, by route, filter and tenant
    /// (`sluice_filter_instances_retired_total`).
    pub retirements: Family<PluginMetricLabels, Counter>,
    /// Calls that became long calls and moved to the long-call threads, by route, filter and
    /// tenant (`sluice_filter_long_calls_total`).
    pub long_calls: Family<PluginMetricLabels, Counter>,
    /// Where long calls run.
    pub long_call_threads: Arc<LongCallThreads>,
    /// The metric series each tenant's filters have created.
    pub metric_series: metrics::SeriesBudget,
    /// Observations filters wrote that were not recorded, by tenant and reason
    /// (`sluice_filter_metrics_dropped_total`).
    pub metrics_dropped: Family<PluginMetricLabels, Counter>,
    /// Guest log lines (and WASI output lines) dropped at an instance's rate, by route, filter and
    /// tenant (`sluice_filter_log_lines_dropped_total`).
    pub log_lines_dropped: Family<PluginMetricLabels, Counter>,
    /// Key-value calls that failed because the tenant's backend was unavailable, by tenant
    /// (`sluice_filter_kv_unavailable_total`).
    pub kv_unavailable: Family<PluginMetricLabels, Counter>,
    /// Clients banned for a while, by operators and by filters; it outlives reloads with the
    /// runtime.
    pub blocks: Arc<sluice_access::BlockList>,
    /// What each tenant's filters and routes used; it outlives reloads with the runtime.
    pub usage: Arc<crate::metering::UsageLedger>,
    /// The origin of the guests' monotonic clock.
    started: Instant,
}

impl Default for HostServices {
    fn default() -> Self {
        Self {
            kv: KvStore::default(),
            counters: Family::default(),
            gauges: Family::default(),
            histograms: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 4.0, 12))
            }),
            failures: Family::default(),
            retirements: Family::default(),
            long_calls: Family::default(),
            long_call_threads: Arc::new(LongCallThreads::new()),
            metric_series: metrics::SeriesBudget::default(),
            metrics_dropped: Family::default(),
            log_lines_dropped: Family::default(),
            kv_unavailable: Family::default(),
            blocks: Arc::default(),
            usage: Arc::default(),
            started: Instant::now(),
        }
    }
}

/// Who is calling: set on an instance when a request checks it out.
#[derive(Debug, Clone)]
pub struct CallContext {
    /// The route's name.
    pub route: Arc<str>,
    /// The filter's name in the route (its plugin's name).
    pub filter: Arc<str>,
    /// The tenant whose grants apply.
    pub tenant: Arc<Tenant>,
    /// The request's id.
    pub request_id: Arc<str>,
    /// The client's address, as the proxy sees it (the forwarded one from trusted proxies).
    pub client_ip: IpAddr,
    /// Where the client is, from the GeoIP databases (all unknown without them).
    pub client_location: sluice_access::Location,
    /// The verified client certificate's identity, with mutual TLS.
    pub client_identity: Option<Arc<str>>,
    /// Upstreams of the configuration the request runs on, for callouts.
    pub upstreams: Arc<dyn CalloutUpstreams>,
    /// When the request's time is up (its route's timeout after it arrived): no filter call of
    /// it runs past this, whatever its tenant's `call_timeout`.
    pub deadline: Option<Instant>,
}

/// The request head lent to the store for a phase.
#[derive(Debug)]
pub(crate) struct RequestSlot {
    pub(crate) parts: http::request::Parts,
    /// False once the head has gone upstream.
    pub(crate) writable: bool,
    pub(crate) cache_key: Option<String>,
}

/// The response head lent to the store for a phase.
#[derive(Debug)]
pub(crate) struct ResponseSlot {
    pub(crate) parts: http::response::Parts,
    /// False once the head has gone to the client.
    pub(crate) writable: bool,
}

/// A guest passed the memory its tenant grants.
#[derive(Debug, thiserror::Error)]
#[error("memory limit of {limit} bytes exceeded (tried to grow to {desired} bytes)")]
pub(crate) struct MemoryLimitExceeded {
    /// The grant.
    pub limit: usize,
    /// What the guest asked for.
    pub desired: usize,
}

/// A guest call ran past its wall-clock bound (its tenant's `call_timeout`, or its request's
/// deadline).
#[derive(Debug, thiserror::Error)]
#[error("call still running after {limit_ms} ms of wall-clock time")]
pub(crate) struct CallTimedOut {
    /// The time the call had.
    pub limit_ms: u128,
}

/// A guest call ran past its CPU grant.
#[derive(Debug, thiserror::Error)]
#[error("CPU time limit of {limit_ms} ms per call exceeded")]
pub(crate) struct CpuLimitExceeded {
    /// The grant.
    pub limit_ms: u128,
}

/// Everything one instance's store holds.
pub(crate) struct FilterState {
    table: ResourceTable,
    pub(crate) wasi: Option<WasiCtx>,
    services: Arc<HostServices>,
    memory_limit: usize,
    /// Route, filter and tenant of the instance, for what it logs outside a request (in
    /// `configure`).
    owner: [Arc<str>; 3],
    pub(crate) call: Option<CallContext>,
    pub(crate) request: Option<RequestSlot>,
    pub(crate) response: Option<ResponseSlot>,
    /// Epoch ticks the current call has run through.
    pub(crate) cpu_ticks: u64,
    /// Guest time the current call has been charged.
    pub(crate) cpu_used: Duration,
    /// Guest time the current call may take.
    pub(crate) cpu_limit: Duration,
    /// Shared with the current call's future: where it runs and its CPU time there.
    pub(crate) clock: Arc<CallClock>,
    /// The last error-level line the guest logged in the current call (a panic message, usually).
    pub(crate) guest_error: Option<String>,
    /// What the guest wrote to WASI stderr in the current call (its first 4 KiB): the message of
    /// a runtime that reports a panic there and exits, as Go's does.
    pub(crate) guest_stderr: Option<Arc<std::sync::Mutex<String>>>,
    /// What a WASI guest wrote during the call, logged when it ends.
    pub(crate) guest_lines: Option<Arc<crate::pool::GuestLines>>,
    /// Linear memory the instance has (all its memories), in bytes.
    pub(crate) memory_bytes: usize,
    /// The lanes the current call holds once it has become a long call (tenant's, then
    /// everyone's), filled by the epoch callback's wait and emptied when the call returns.
    pub(crate) long_call: Arc<std::sync::Mutex<Option<LongCallPermits>>>,
    /// The instance's log budget, shared with its WASI output streams.
    pub(crate) log: Arc<log::GuestLog>,
    /// When the current call must have returned (its tenant's `call_timeout`, or sooner its
    /// request's deadline).
    pub(crate) call_deadline: Instant,
    /// When the current call started.
    pub(crate) call_started: Instant,
    /// Whether the current call entered directly (it cannot pause; see `FilterPool`).
    pub(crate) direct_call: bool,
    /// What the current direct call owes its tenant's CPU rate: it sleeps that long once it has
    /// returned.
    pub(crate) owed_pause: Duration,
    /// The filter's meter (tenant, route, filter): what its calls, memory, callouts and
    /// key-value operations cost.
    pub(crate) usage: Arc<crate::metering::Usage>,
    /// The current call's trace, when its request is traced.
    pub(crate) trace: Option<crate::CallTrace>,
    /// What the guest added to its call's span.
    pub(crate) trace_notes: Option<Box<crate::TraceNotes>>,
}

impl Drop for FilterState {
    fn drop(&mut self) {
        self.usage.memory_released(self.memory_bytes as u64);
    }
}

impl FilterState {
    /// Fresh state for an instance of a filter of `tenant` (its `wasi` is set after, for a plugin
    /// that imports WASI).
    pub(crate) fn new(services: Arc<HostServices>, route: Arc<str>, filter: Arc<str>, tenant: &Tenant) -> Self {
        let usage = services.usage.meter(crate::metering::MeterKey {
            tenant: tenant.name.clone(),
            route: route.clone(),
            filter: Some(filter.clone()),
        });
        let owner = [route, filter, tenant.name.clone()];
        let log =
            log::GuestLog::new(tenant.log_lines_per_second, services.log_lines_dropped.clone(), labels_of(&owner));
        Self {
            table: ResourceTable::new(),
            wasi: None,
            clock: Arc::new(CallClock::new(services.long_call_threads.clone())),
            log: Arc::new(log),
            call_deadline: Instant::now(),
            call_started: Instant::now(),
            services,
            memory_limit: tenant.memory_bytes,
            owner,
            call: None,
            request: None,
            response: None,
            cpu_ticks: 0,
            cpu_used: Duration::ZERO,
            cpu_limit: tenant.cpu_per_call,
            guest_error: None,
            guest_stderr: None,
            guest_lines: None,
            memory_bytes: 0,
            long_call: Arc::default(),
            direct_call: false,
            owed_pause: Duration::ZERO,
            usage,
            trace: None,
            trace_notes: None,
        }
    }

    /// The instance's route, filter and tenant as metric labels.
    pub(crate) fn owner_labels(&self) -> PluginMetricLabels {
        labels_of(&self.owner)
    }

    /// Counts the current call as a long call (`sluice_filter_long_calls_total`).
    pub(crate) fn count_long_call(&self) {
        self.services.long_calls.get_or_create(&self.owner_labels()).inc();
    }

    /// Why the current call failed, in the guest's words: what it logged at error level, else what
    /// it wrote to stderr.
    pub(crate) fn take_guest_message(&mut self) -> Option<String> {
        self.guest_error.take().or_else(|| {
            let mut written = self.guest_stderr.as_ref()?.lock().ok()?;
            let message = std::mem::take(&mut *written);
            let message = message.trim();
            (!message.is_empty()).then(|| message.to_owned())
        })
    }

    pub(crate) fn new_request_handle(&mut self) -> wasmtime::Result<Resource<RequestHandle>> {
        Ok(self.table.push(RequestHandle)?)
    }

    pub(crate) fn new_response_handle(&mut self) -> wasmtime::Result<Resource<ResponseHandle>> {
        Ok(self.table.push(ResponseHandle)?)
    }

    pub(crate) fn drop_handles(
        &mut self,
        request: Resource<RequestHandle>,
        response: Option<Resource<ResponseHandle>>,
    ) {
        let _ = self.table.delete(request);
        if let Some(response) = response {
            let _ = self.table.delete(response);
        }
    }

    fn request_slot(&mut self) -> wasmtime::Result<&mut RequestSlot> {
        self.request.as_mut().ok_or_else(|| wasmtime::Error::msg("request handle used outside a filter phase"))
    }

    fn response_slot(&mut self) -> wasmtime::Result<&mut ResponseSlot> {
        self.response.as_mut().ok_or_else(|| wasmtime::Error::msg("response handle used outside a response phase"))
    }

    fn writable_request(&mut self) -> wasmtime::Result<Result<&mut RequestSlot, String>> {
        let slot = self.request_slot()?;
        Ok(if slot.writable { Ok(slot) } else { Err("the request head has already been sent upstream".to_owned()) })
    }

    fn writable_response(&mut self) -> wasmtime::Result<Result<&mut ResponseSlot, String>> {
        let slot = self.response_slot()?;
        Ok(if slot.writable {
            Ok(slot)
        } else {
            Err("the response head has already been sent to the client".to_owned())
        })
    }

    fn context(&self) -> wasmtime::Result<&CallContext> {
        self.call.as_ref().ok_or_else(|| wasmtime::Error::msg("host call outside a request"))
    }
}

/// Route, filter and tenant as metric labels.
fn labels_of([route, filter, tenant]: &[Arc<str>; 3]) -> PluginMetricLabels {
    vec![
        ("route".to_owned(), route.to_string()),
        ("filter".to_owned(), filter.to_string()),
        ("tenant".to_owned(), tenant.to_string()),
    ]
}

impl WasiView for FilterState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self.wasi.as_mut().expect("WASI state exists for every plugin that imports WASI"),
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for FilterState {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            return Err(wasmtime::Error::new(MemoryLimitExceeded { limit: self.memory_limit, desired }));
        }
        let grown = desired.saturating_sub(current);
        self.memory_bytes += grown;
        self.usage.memory_grew(grown as u64);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The linker with every `sluice:filter` import and WASI (for guests that import it).
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<FilterState>> {
    let mut linker = Linker::new(engine);
    Filter::add_to_linker::<FilterState, HasSelf<FilterState>>(&mut linker, |state| state)?;
    // Host calls whose generated form would copy a guest's list before checking its size.
    linker.allow_shadowing(true);
    kv::link_unlifted(&mut linker.instance(&format!("sluice:filter/kv@{}", crate::WIT_VERSION))?)?;
    linker.allow_shadowing(false);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Ok(linker)
}
