//! The store's data and the host side of every `sluice:filter` import: request and response
//! handles over the live heads, log, key-value, metrics, callouts, clock and randomness. Every
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
use super::bindings::sluice::filter::{callout, clock, http as wit_http, kv, log, metrics, random, types};
use super::kv::{KvError, KvStore};
use super::long_calls::{CallClock, LongCallPermits, LongCallThreads};
use super::tenant::Tenant;
use crate::callouts::CalloutUpstreams;
use sluice_http::body;

/// Marker for the `request` resource: the handle always refers to the request slot of the store
/// it was given to.
#[allow(unreachable_pub)]
pub struct RequestHandle;
/// Marker for the `response` resource.
#[allow(unreachable_pub)]
pub struct ResponseHandle;

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
    /// The client's address.
    pub client_ip: IpAddr,
    /// The verified client certificate's identity, with mutual TLS.
    pub client_identity: Option<Arc<str>>,
    /// Upstreams of the configuration the request runs on, for callouts.
    pub upstreams: Arc<dyn CalloutUpstreams>,
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
    wasi: Option<WasiCtx>,
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
    /// Linear memory the instance has (all its memories), in bytes.
    pub(crate) memory_bytes: usize,
    /// The lanes the current call holds once it has become a long call (tenant's, then
    /// everyone's), filled by the epoch callback's wait and emptied when the call returns.
    pub(crate) long_call: Arc<std::sync::Mutex<Option<LongCallPermits>>>,
}

impl FilterState {
    /// Fresh state for an instance of a filter of `tenant`; `wasi` when the plugin imports WASI.
    pub(crate) fn new(
        services: Arc<HostServices>,
        route: Arc<str>,
        filter: Arc<str>,
        tenant: &Tenant,
        wasi: Option<WasiCtx>,
    ) -> Self {
        Self {
            table: ResourceTable::new(),
            wasi,
            clock: Arc::new(CallClock::new(services.long_call_threads.clone())),
            services,
            memory_limit: tenant.memory_bytes,
            owner: [route, filter, tenant.name.clone()],
            call: None,
            request: None,
            response: None,
            cpu_ticks: 0,
            cpu_used: Duration::ZERO,
            cpu_limit: tenant.cpu_per_call,
            guest_error: None,
            guest_stderr: None,
            memory_bytes: 0,
            long_call: Arc::default(),
        }
    }

    /// The instance's route, filter and tenant as metric labels.
    pub(crate) fn owner_labels(&self) -> PluginMetricLabels {
        let [route, filter, tenant] = &self.owner;
        vec![
            ("route".to_owned(), route.to_string()),
            ("filter".to_owned(), filter.to_string()),
            ("tenant".to_owned(), tenant.to_string()),
        ]
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

    fn metric_labels(&self, name: String, labels: Vec<(String, String)>) -> wasmtime::Result<PluginMetricLabels> {
        let context = self.context()?;
        let mut all = Vec::with_capacity(labels.len() + 3);
        all.push(("tenant".to_owned(), context.tenant.name.to_string()));
        all.push(("plugin".to_owned(), context.filter.to_string()));
        all.push(("name".to_owned(), name));
        // The filter's labels may not pose as the host's.
        all.extend(labels.into_iter().filter(|(key, _)| !matches!(key.as_str(), "tenant" | "plugin" | "name")));
        Ok(all)
    }
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
        self.memory_bytes += desired.saturating_sub(current);
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
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    Ok(linker)
}

// --- header helpers shared by request and response ---

fn header_first(headers: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    headers.get(name).map(|value| value.as_bytes().to_vec())
}

fn header_all(headers: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    headers.get_all(name).iter().map(|value| value.as_bytes().to_vec()).collect()
}

fn header_list(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers.iter().map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec())).collect()
}

/// Validates a header a guest wants to set. Framing headers stay the host's business.
fn guest_header(name: &str, value: &[u8]) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?;
    if matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection" | "upgrade" | "te" | "trailer") {
        return Err(format!("header {name} is managed by the host"));
    }
    let value = HeaderValue::from_bytes(value).map_err(|_| format!("invalid value for header {name}"))?;
    Ok((name, value))
}

fn set_header(headers: &mut HeaderMap, name: &str, value: &[u8], append: bool) -> Result<(), String> {
    let (name, value) = guest_header(name, value)?;
    if append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
    Ok(())
}

fn remove_header(headers: &mut HeaderMap, name: &str) {
    if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
        && guest_header(name.as_str(), b"").is_ok()
    {
        headers.remove(name);
    }
}

impl types::Host for FilterState {}
impl wit_http::Host for FilterState {}

impl wit_http::HostRequest for FilterState {
    fn method(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.request_slot()?.parts.method.as_str().to_owned())
    }

    fn set_method(&mut self, _: Resource<RequestHandle>, method: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_request()?.and_then(|slot| {
            slot.parts.method =
                Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method {method:?}"))?;
            Ok(())
        }))
    }

    fn path_with_query(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        let uri = &self.request_slot()?.parts.uri;
        Ok(uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned()))
    }

    fn set_path_with_query(
        &mut self,
        _: Resource<RequestHandle>,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_request()?.and_then(|slot| {
            if !value.starts_with('/') {
                return Err("the path must start with /".to_owned());
            }
            let path_and_query =
                PathAndQuery::try_from(value.as_str()).map_err(|_| format!("invalid path {value:?}"))?;
            let mut uri_parts = std::mem::take(&mut slot.parts.uri).into_parts();
            uri_parts.path_and_query = Some(path_and_query);
            slot.parts.uri = Uri::from_parts(uri_parts).map_err(|err| err.to_string())?;
            Ok(())
        }))
    }

    fn authority(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        let parts = &self.request_slot()?.parts;
        let authority =
            parts.uri.authority().map(|authority| authority.as_str().to_owned()).or_else(|| {
                parts.headers.get(http::header::HOST).and_then(|host| host.to_str().ok()).map(str::to_owned)
            });
        Ok(authority.unwrap_or_default())
    }

    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(header_first(&self.request_slot()?.parts.headers, &name))
    }

    fn header_all(&mut self, _: Resource<RequestHandle>, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(header_all(&self.request_slot()?.parts.headers, &name))
    }

    fn headers(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        Ok(header_list(&self.request_slot()?.parts.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_request()?.and_then(|slot| set_header(&mut slot.parts.headers, &name, &value, false)))
    }

    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_request()?.and_then(|slot| set_header(&mut slot.parts.headers, &name, &value, true)))
    }

    fn remove_header(&mut self, _: Resource<RequestHandle>, name: String) -> wasmtime::Result<()> {
        if let Ok(slot) = self.writable_request()? {
            remove_header(&mut slot.parts.headers, &name);
        }
        Ok(())
    }

    fn client_ip(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.context()?.client_ip.to_string())
    }

    fn client_identity(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<String>> {
        Ok(self.context()?.client_identity.as_deref().map(str::to_owned))
    }

    fn request_id(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.context()?.request_id.to_string())
    }

    fn route(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.context()?.route.to_string())
    }

    fn set_cache_key(&mut self, _: Resource<RequestHandle>, key: String) -> wasmtime::Result<()> {
        self.request_slot()?.cache_key = Some(key);
        Ok(())
    }

    fn drop(&mut self, handle: Resource<RequestHandle>) -> wasmtime::Result<()> {
        let _ = self.table.delete(handle);
        Ok(())
    }
}

impl wit_http::HostResponse for FilterState {
    fn status(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<u16> {
        Ok(self.response_slot()?.parts.status.as_u16())
    }

    fn set_status(&mut self, _: Resource<ResponseHandle>, status: u16) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_response()?.and_then(|slot| {
            slot.parts.status = StatusCode::from_u16(status)
                .ok()
                .filter(|status| !status.is_informational())
                .ok_or_else(|| format!("invalid status {status}"))?;
            Ok(())
        }))
    }

    fn header(&mut self, _: Resource<ResponseHandle>, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(header_first(&self.response_slot()?.parts.headers, &name))
    }

    fn header_all(&mut self, _: Resource<ResponseHandle>, name: String) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(header_all(&self.response_slot()?.parts.headers, &name))
    }

    fn headers(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        Ok(header_list(&self.response_slot()?.parts.headers))
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_response()?.and_then(|slot| set_header(&mut slot.parts.headers, &name, &value, false)))
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(self.writable_response()?.and_then(|slot| set_header(&mut slot.parts.headers, &name, &value, true)))
    }

    fn remove_header(&mut self, _: Resource<ResponseHandle>, name: String) -> wasmtime::Result<()> {
        if let Ok(slot) = self.writable_response()? {
            remove_header(&mut slot.parts.headers, &name);
        }
        Ok(())
    }

    fn drop(&mut self, handle: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        let _ = self.table.delete(handle);
        Ok(())
    }
}

impl log::Host for FilterState {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        // In `configure` there is no request: the line names the instance's route and filter.
        let (route, filter, tenant, request_id): (&str, &str, &str, &str) = match &self.call {
            Some(context) => (&context.route, &context.filter, &context.tenant.name, &context.request_id),
            None => (&self.owner[0], &self.owner[1], &self.owner[2], ""),
        };
        macro_rules! guest_log {
            ($level:expr) => {
                tracing::event!(target: "sluice::filter", $level, route = %route, filter = %filter, tenant = %tenant, request_id = %request_id, "{message}")
            };
        }
        match level {
            types::Level::Trace => guest_log!(tracing::Level::TRACE),
            types::Level::Debug => guest_log!(tracing::Level::DEBUG),
            types::Level::Info => guest_log!(tracing::Level::INFO),
            types::Level::Warn => guest_log!(tracing::Level::WARN),
            types::Level::Error => guest_log!(tracing::Level::ERROR),
        }
        if level == types::Level::Error {
            self.guest_error = Some(message);
        }
        Ok(())
    }
}

fn kv_error(error: KvError) -> kv::KvError {
    match error {
        KvError::QuotaExceeded => kv::KvError::QuotaExceeded,
        KvError::NotANumber => kv::KvError::NotANumber,
    }
}

impl kv::Host for FilterState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(Ok(self.services.kv.get(&tenant.name, &key)))
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<Result<(), kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(self.services.kv.set(&tenant.name, tenant.kv, &key, value, ttl_ms).map_err(kv_error))
    }

    fn increment(&mut self, key: String, delta: i64, ttl_ms: u64) -> wasmtime::Result<Result<i64, kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(self.services.kv.increment(&tenant.name, tenant.kv, &key, delta, ttl_ms).map_err(kv_error))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(Ok(self.services.kv.delete(&tenant.name, &key)))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(self
            .services
            .kv
            .compare_and_swap(&tenant.name, tenant.kv, &key, expected.as_deref(), value, ttl_ms)
            .map_err(kv_error))
    }
}

impl metrics::Host for FilterState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) -> wasmtime::Result<()> {
        let labels = self.metric_labels(name, labels)?;
        self.services.counters.get_or_create(&labels).inc_by(value);
        Ok(())
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: i64) -> wasmtime::Result<()> {
        let labels = self.metric_labels(name, labels)?;
        self.services.gauges.get_or_create(&labels).set(value);
        Ok(())
    }

    fn histogram_record(&mut self, name: String, labels: Vec<(String, String)>, value: f64) -> wasmtime::Result<()> {
        let labels = self.metric_labels(name, labels)?;
        self.services.histograms.get_or_create(&labels).observe(value);
        Ok(())
    }
}

impl callout::Host for FilterState {
    async fn send(
        &mut self,
        upstream_name: String,
        request: callout::CalloutRequest,
    ) -> wasmtime::Result<Result<callout::CalloutResponse, callout::CalloutError>> {
        let context = self.context()?.clone();
        if !context.tenant.callouts.contains(&upstream_name) {
            tracing::warn!(
                route = %context.route, filter = %context.filter, tenant = %context.tenant.name,
                request_id = %context.request_id, upstream = %upstream_name,
                "callout refused: upstream not granted to the tenant"
            );
            return Ok(Err(callout::CalloutError::NotGranted(format!(
                "tenant {} may not call upstream {upstream_name:?}",
                context.tenant.name
            ))));
        }
        if !context.upstreams.contains(&upstream_name) {
            return Ok(Err(callout::CalloutError::UnknownUpstream(format!("no upstream named {upstream_name:?}"))));
        }
        let exchange = send_callout(context.upstreams.clone(), upstream_name, context.client_ip, request);
        let answer = match self.clock.home() {
            // From a long-call thread, the exchange runs on the proxy's workers: the connection it
            // may open joins the upstream's pool and must be driven from there.
            Some(home) => home.spawn(exchange).await.unwrap_or_else(|err| Err(format!("callout task failed: {err}"))),
            None => exchange.await,
        };
        Ok(answer.map_err(callout::CalloutError::Failed))
    }
}

async fn send_callout(
    upstreams: Arc<dyn CalloutUpstreams>,
    upstream_name: String,
    client_ip: std::net::IpAddr,
    request: callout::CalloutRequest,
) -> Result<callout::CalloutResponse, String> {
    let method =
        Method::from_bytes(request.method.as_bytes()).map_err(|_| format!("invalid method {:?}", request.method))?;
    let uri = Uri::builder()
        .path_and_query(request.path_with_query.as_str())
        .build()
        .map_err(|err| format!("invalid path: {err}"))?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for (name, value) in &request.headers {
        let (name, value) = guest_header(name, value)?;
        builder = builder.header(name, value);
    }
    let outgoing = builder.body(body::full(Bytes::from(request.body))).map_err(|err| err.to_string())?;
    let timeout = if request.timeout_ms == 0 {
        CALLOUT_DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(u64::from(request.timeout_ms))
    };
    let exchange = async {
        let sent = upstreams.send(&upstream_name, client_ip, outgoing);
        let response = sent.ok_or_else(|| format!("no upstream named {upstream_name:?}"))?.await?;
        let (parts, incoming) = response.into_parts();
        let body = read_callout_body(incoming).await?;
        Ok::<_, String>(callout::CalloutResponse {
            status: parts.status.as_u16(),
            headers: header_list(&parts.headers),
            body: body.to_vec(),
        })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

/// A callout's response body, up to [`CALLOUT_BODY_LIMIT`].
async fn read_callout_body(mut body: body::ProxyBody) -> Result<Bytes, String> {
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| format!("reading the response: {err}"))?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > CALLOUT_BODY_LIMIT {
                return Err("reading the response: length limit exceeded".to_owned());
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}

impl clock::Host for FilterState {
    fn now_unix_ms(&mut self) -> wasmtime::Result<u64> {
        let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        Ok(u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX))
    }

    fn monotonic_ns(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.services.started.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

impl random::Host for FilterState {
    fn bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        // Bounded so that a guest cannot make the host allocate without limit.
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(1 << 20);
        let mut bytes = vec![0; len];
        rand::rng().fill_bytes(&mut bytes);
        Ok(bytes)
    }

    fn next_u64(&mut self) -> wasmtime::Result<u64> {
        Ok(rand::rng().next_u64())
    }
}
