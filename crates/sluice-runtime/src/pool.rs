//! One filter of one route: its plugin, config and tenant, a bounded pool of warm configured
//! instances, and the calls into them with their CPU deadline and failure classification.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{ComponentNamedList, ComponentType, Lift, Lower, Resource, TypedFunc};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::AsyncStdoutStream;

use super::bindings::sluice::filter::types::{self as wit, Phases};
use super::bindings::{Plugin as Filter, PluginPre};
use super::host::handles::{is_hop_by_hop, set_header};
use super::host::log::{GuestLog, escape_line};
use super::host::{
    CallContext, CallTimedOut, CpuLimitExceeded, FilterState, MemoryLimitExceeded, RequestHandle, RequestSlot,
    ResponseHandle, ResponseSlot,
};
use super::long_calls::{self, LongCallPermits};
use super::plugin::Plugin;
use super::tenant::Tenant;
use super::{EPOCH_TICK, Runtime};
use crate::{CallTrace, TraceNotes};
use sluice_http::body::{self, ProxyBody};

/// How long a request waits for a free instance when the tenant's instance limit is reached.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a failing filter does to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer with an error (500; 503 when no instance is free).
    FailClosed,
    /// Skip the filter for this request and go on.
    FailOpen,
}

/// How instances are shared between requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Warm instances are reused by later requests (one request at a time).
    Instance,
    /// Every request gets a fresh instance, thrown away afterwards.
    Request,
}

/// A filter as configured on a route.
#[derive(Debug, Clone)]
pub struct FilterSpec {
    /// The route's name.
    pub route: Arc<str>,
    /// The filter's name (its plugin's name).
    pub name: Arc<str>,
    /// The plugin.
    pub plugin: Arc<Plugin>,
    /// The route's config for it, as JSON.
    pub config: String,
    /// What a failure does.
    pub on_error: FailurePolicy,
    /// Instance sharing.
    pub isolation: Isolation,
    /// Whose grants apply.
    pub tenant: Arc<Tenant>,
}

impl FilterSpec {
    /// Whether `other` is the same filter in every respect an instance depends on.
    pub fn same_filter_as(&self, other: &FilterSpec) -> bool {
        self.route == other.route
            && self.name == other.name
            && self.plugin.digest == other.plugin.digest
            && self.config == other.config
            && self.on_error == other.on_error
            && self.isolation == other.isolation
            && *self.tenant == *other.tenant
    }
}

/// A filter pool's instances at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceCount {
    /// Idle, ready for a request.
    pub warm: usize,
    /// Serving a request.
    pub busy: usize,
}

/// Why a filter failed a request.
#[derive(Debug, thiserror::Error)]
#[error("filter {filter} on route {route}: {kind}")]
pub struct FilterError {
    /// The route.
    pub route: Arc<str>,
    /// The filter.
    pub filter: Arc<str>,
    /// What happened.
    pub kind: FilterErrorKind,
    /// The guest's last error-level log line during the call (a panic message, usually).
    pub guest_message: Option<String>,
}

/// The kinds of filter failure.
#[derive(Debug, thiserror::Error)]
pub enum FilterErrorKind {
    /// The guest trapped; the text has the backtrace with function names.
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past the tenant's CPU grant.
    #[error("{0}")]
    CpuLimit(String),
    /// The call ran past its wall-clock bound (the tenant's `call_timeout` or the request's
    /// deadline), callouts and pauses included.
    #[error("{0}")]
    CallTimeout(String),
    /// The guest tried to grow memory past the tenant's grant.
    #[error("{0}")]
    MemoryLimit(String),
    /// The filter refused its config.
    #[error("config refused: {0}")]
    ConfigRefused(String),
    /// The filter answered with something the host cannot send.
    #[error("invalid answer: {0}")]
    InvalidAnswer(String),
    /// No instance became free in time.
    #[error("no free instance (the tenant's limit is {0} per filter)")]
    Busy(usize),
}

impl FilterError {
    /// The status a fail-closed request gets.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            FilterErrorKind::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short name for metrics labels.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            FilterErrorKind::Trap(_) => "trap",
            FilterErrorKind::CpuLimit(_) => "cpu_limit",
            FilterErrorKind::CallTimeout(_) => "call_timeout",
            FilterErrorKind::MemoryLimit(_) => "memory_limit",
            FilterErrorKind::ConfigRefused(_) => "config_refused",
            FilterErrorKind::InvalidAnswer(_) => "invalid_answer",
            FilterErrorKind::Busy(_) => "busy",
        }
    }
}

/// What a header phase decided.
#[derive(Debug)]
pub enum HeadOutcome {
    /// Go on.
    Continue,
    /// Answer with this instead.
    Respond(Response<ProxyBody>),
}

/// What a body phase decided.
#[derive(Debug)]
pub enum BodyOutcome {
    /// The chunk passes unchanged.
    Pass,
    /// These bytes pass instead.
    Replace(Bytes),
    /// Answer with this instead.
    Respond(Response<ProxyBody>),
}

struct Instance {
    store: Store<FilterState>,
    filter: Filter,
}

/// A route filter's instances.
///
/// A call enters the guest one of two ways. On a fiber (wasmtime's async call), the call can
/// pause: for a callout or a key-value call to finish, for its tenant's CPU rate, or to move to a
/// long-call thread once it has run long. Directly (a synchronous call on the worker's own
/// stack), it cannot pause, but it costs a fraction of a fiber's entry and exit. A filter's
/// calls are direct while all of these hold: every host function it imports answers at once
/// ([`Plugin`]'s `answers_at_once`: no `kv`, `callout` or WASI), and none of its calls, its start
/// and `configure` included, has yet run long. The first call that runs long on the worker
/// (past `LONG_CALL_CPU`) finishes there, within its CPU and wall-clock limits as every call
/// does, and turns the filter's later calls to fibers, which move when they run long.
pub struct FilterPool {
    /// The filter as configured.
    pub spec: FilterSpec,
    runtime: Arc<Runtime>,
    phases: Phases,
    idle: Mutex<Vec<Instance>>,
    permits: Arc<Semaphore>,
    /// Whether calls enter directly (see above); shared with every instance's epoch callback,
    /// which clears it when a call runs long.
    direct: Arc<AtomicBool>,
}

impl std::fmt::Debug for FilterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterPool").field("spec", &self.spec).field("phases", &self.phases).finish_non_exhaustive()
    }
}

impl FilterPool {
    /// Starts one instance and configures it, which checks the route's config against the
    /// filter; that instance becomes the first warm one.
    pub async fn prepare(runtime: Arc<Runtime>, spec: FilterSpec) -> Result<Arc<Self>, FilterError> {
        let permits = Arc::new(Semaphore::new(spec.tenant.max_instances.max(1)));
        // The first instance starts on a fiber whatever the filter imports: how long its start
        // and `configure` take is not known yet, and one that runs long moves off the worker
        // (and clears `direct`, so the filter's later starts and calls stay on fibers).
        let direct = Arc::new(AtomicBool::new(spec.plugin.answers_at_once));
        let (instance, phases) = instantiate(&runtime, &spec, &direct, Entry::Fiber).await?;
        let idle = if spec.isolation == Isolation::Instance { vec![instance] } else { Vec::new() };
        Ok(Arc::new(Self { spec, runtime, phases, idle: Mutex::new(idle), permits, direct }))
    }

    /// The phases the filter takes part in.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// Its instances now: warm (idle, ready for a request) and busy (serving one).
    pub fn instances(&self) -> InstanceCount {
        let warm = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len();
        let busy = self.spec.tenant.max_instances.max(1).saturating_sub(self.permits.available_permits());
        InstanceCount { warm, busy }
    }

    /// Whether its calls enter the guest directly rather than on a fiber (see [`FilterPool`]).
    pub fn calls_directly(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    fn entry(&self) -> Entry {
        if self.calls_directly() { Entry::Direct } else { Entry::Fiber }
    }

    /// An instance for one request: a warm one, or a new one within the tenant's limit.
    pub async fn checkout(self: &Arc<Self>, context: CallContext) -> Result<FilterInstance, FilterError> {
        // Usually a permit is free: take it without arming a timer.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match tokio::time::timeout(CHECKOUT_TIMEOUT, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => return Err(self.error(FilterErrorKind::Busy(self.spec.tenant.max_instances), None)),
            },
        };
        self.instance_under(permit, context).await
    }

    /// An instance for a shadow run: like [`FilterPool::checkout`], but `None` at once when the
    /// tenant's instances are all busy, rather than waiting for one.
    pub async fn checkout_if_free(
        self: &Arc<Self>,
        context: CallContext,
    ) -> Option<Result<FilterInstance, FilterError>> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.instance_under(permit, context).await)
    }

    /// A warm instance, or a new one, held under `permit`.
    async fn instance_under(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        context: CallContext,
    ) -> Result<FilterInstance, FilterError> {
        let warm = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
        let mut instance = match warm {
            Some(instance) => instance,
            None => instantiate(&self.runtime, &self.spec, &self.direct, self.entry()).await?.0,
        };
        instance.store.data_mut().call = Some(context);
        Ok(FilterInstance {
            pool: self.clone(),
            instance: Some(instance),
            _permit: permit,
            next_trace: None,
            last_call: CallReport::default(),
        })
    }

    fn error(&self, kind: FilterErrorKind, guest_message: Option<String>) -> FilterError {
        FilterError { route: self.spec.route.clone(), filter: self.spec.name.clone(), kind, guest_message }
    }
}

/// Creates and configures an instance, entering it as `entry` says; the phases come from its
/// `configure`. `direct` is the pool's flag, which its epoch callback clears when a call runs long.
async fn instantiate(
    runtime: &Runtime,
    spec: &FilterSpec,
    direct: &Arc<AtomicBool>,
    entry: Entry,
) -> Result<(Instance, Phases), FilterError> {
    let fail =
        |kind, guest_message| FilterError { route: spec.route.clone(), filter: spec.name.clone(), kind, guest_message };
    let mut state = FilterState::new(runtime.services.clone(), spec.route.clone(), spec.name.clone(), &spec.tenant);
    let stderr_kept = spec.plugin.uses_wasi.then(|| Arc::new(Mutex::new(String::new())));
    let guest_lines = spec.plugin.uses_wasi.then(|| {
        Arc::new(GuestLines {
            route: spec.route.clone(),
            filter: spec.name.clone(),
            log: state.log.clone(),
            pending: Mutex::new(Vec::new()),
        })
    });
    state.wasi = guest_lines.as_ref().map(|lines| {
        let stream = |stream_name: &'static str, kept: Option<Arc<Mutex<String>>>| {
            AsyncStdoutStream::new(8192, GuestOutput::new(stream_name, kept, lines.clone()))
        };
        // Nothing ambient: no files, no environment, no sockets.
        WasiCtxBuilder::new()
            .stdout(stream("stdout", None))
            .stderr(stream("stderr", stderr_kept.clone()))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build()
    });
    state.guest_stderr = stderr_kept;
    state.guest_lines = guest_lines;
    // Deadlines count epochs: the ticker must run before a guest does.
    runtime.start_epoch_ticker();
    let mut store = Store::new(runtime.engine(), state);
    store.limiter(|state| state);
    store.epoch_deadline_callback(epoch_callback(runtime, spec, direct.clone()));
    // Starting and configuring an instance happens once per instance, not per request: it may
    // take longer than a call (compiling a WAF's rules, say).
    let limits = CallLimits {
        cpu: spec.tenant.cpu_per_call * SETUP_CPU_FACTOR,
        wall: spec.tenant.call_timeout * SETUP_CPU_FACTOR,
    };
    let pre = spec.plugin.pre.clone();
    let config = spec.config.clone();
    let (mut store, outcome) = match entry {
        Entry::Direct => start_instance(store, pre, config, limits, entry).await,
        Entry::Fiber => {
            let clock = store.data().clock.clone();
            long_calls::run(clock, true, start_instance(store, pre, config, limits, entry)).await
        }
    };
    let state = store.data_mut();
    let guest_message = outcome.is_err().then(|| state.take_guest_message()).flatten();
    // What it wrote while starting belongs to no request.
    if let Some(lines) = &state.guest_lines {
        lines.flush(None, outcome.is_err());
    }
    match outcome {
        Ok((filter, Ok(phases))) => Ok((Instance { store, filter }, phases)),
        Ok((_, Err(refusal))) => Err(fail(FilterErrorKind::ConfigRefused(refusal), None)),
        Err(err) => Err(fail(classify(&err), guest_message)),
    }
}

/// Instantiates the component in `store` and runs its `configure`.
async fn start_instance(
    mut store: Store<FilterState>,
    pre: PluginPre<FilterState>,
    config: String,
    limits: CallLimits,
    entry: Entry,
) -> (Store<FilterState>, wasmtime::Result<(Filter, Result<Phases, String>)>) {
    start_call(&mut store, limits, entry);
    let instantiated = match entry {
        Entry::Direct => {
            pre.instance_pre().instantiate(&mut store).and_then(|instance| Filter::new(&mut store, &instance))
        }
        Entry::Fiber => pre.instantiate_async(&mut store).await,
    };
    end_call(&mut store);
    let mut cpu = store.data().clock.finish();
    let filter = match instantiated {
        Ok(filter) => filter,
        Err(err) => {
            store.data().usage.record_instance_start(cpu);
            return (store, Err(err));
        }
    };
    start_call(&mut store, limits, entry);
    let configure = filter.sluice_filter_filter().func_configure();
    let configured = invoke(&mut store, configure, (config.as_str(),), entry).await;
    end_call(&mut store);
    cpu += store.data().clock.finish();
    store.data().usage.record_instance_start(cpu);
    (store, configured.map(|answer| (filter, answer)))
}

/// What the store does at each epoch tick of a call: charge the guest's CPU time, fail the call
/// past its CPU or wall-clock limit, and on a fiber pause it for its tenant's CPU rate or move it
/// to a long-call thread once it has run long. A call that runs long turns the pool's later
/// calls to fibers (`direct`).
fn epoch_callback(
    runtime: &Runtime,
    spec: &FilterSpec,
    direct: Arc<AtomicBool>,
) -> impl FnMut(wasmtime::StoreContextMut<'_, FilterState>) -> wasmtime::Result<UpdateDeadline> + Send + Sync + 'static
{
    let cpu_rate = spec.tenant.cpu_rate.clone();
    let tenant_lane = spec.tenant.long_calls.0.clone();
    let everyones_lanes = runtime.long_call_lanes.clone();
    let (route, filter) = (spec.route.clone(), spec.name.clone());
    move |mut context| {
        let state = context.data_mut();
        state.cpu_ticks += 1;
        let used = state.clock.charge();
        state.cpu_used += used;
        // One tick of slack: the first tick may land just after the call starts.
        if state.cpu_used > state.cpu_limit + EPOCH_TICK {
            return Err(wasmtime::Error::new(CpuLimitExceeded { limit_ms: state.cpu_limit.as_millis() }));
        }
        let deadline = state.call_deadline;
        if std::time::Instant::now() >= deadline {
            let limit_ms = deadline.saturating_duration_since(state.call_started).as_millis();
            return Err(wasmtime::Error::new(CallTimedOut { limit_ms }));
        }
        // Past its tenant's CPU rate the guest sleeps before going on, which frees the thread
        // for everyone else.
        let pause = cpu_rate.as_ref().map_or(Duration::ZERO, |rate| rate.charge(used));
        let on_worker = state.long_call.lock().is_ok_and(|held| held.is_none());
        // A call that has used 2 ms of CPU (its first tick counted as a whole one) is a long
        // call: it moves to a long-call thread and waits for its lanes before going on (see
        // `long_calls` and `LongCallLane`). Its CPU is what the kernel counted, so a short call
        // that was merely preempted on a busy machine stays; one held up that long in wall time
        // moves all the same.
        let becomes_long = on_worker && (state.cpu_used >= LONG_CALL_CPU || state.cpu_ticks >= LONG_CALL_MAX_TICKS);
        if becomes_long {
            direct.store(false, Ordering::Relaxed);
        }
        if state.direct_call {
            // A direct call cannot pause: it runs on to its end or its limits, and pays what it
            // owes its tenant's CPU rate once it has returned.
            if becomes_long && state.clock.request_move() {
                state.count_long_call();
                tracing::warn!(
                    route = %route,
                    filter = %filter,
                    "a filter call ran long on a worker thread; the filter's later calls run where they can move to the long-call threads"
                );
            }
            state.owed_pause = pause;
            return Ok(UpdateDeadline::Continue(1));
        }
        if pause.is_zero() && !becomes_long {
            // On a worker the call runs on without pausing until it is long, so that its CPU
            // is measured on one thread; on a long-call thread it lets the others take turns.
            return Ok(if on_worker { UpdateDeadline::Continue(1) } else { UpdateDeadline::Yield(1) });
        }
        if becomes_long && state.clock.request_move() {
            state.count_long_call();
        }
        let slot = state.long_call.clone();
        let lanes = becomes_long.then(|| (tenant_lane.clone(), everyones_lanes.clone()));
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                if lanes.is_some() {
                    // Pause once, so that the call moves before it waits or runs on.
                    tokio::task::yield_now().await;
                }
                // The pause and the wait for lanes end at the call's deadline at the latest; the
                // next tick then fails the call.
                let paused = async {
                    tokio::time::sleep(pause).await;
                    if let Some((tenant, everyone)) = lanes {
                        let permits = LongCallPermits::acquire(tenant, everyone).await;
                        if let Ok(mut held) = slot.lock() {
                            *held = permits;
                        }
                    }
                };
                let _ = tokio::time::timeout_at(deadline.into(), paused).await;
            }),
        ))
    }
}

/// CPU time after which a call is a long call and needs its lanes.
const LONG_CALL_CPU: Duration = Duration::from_millis(2);

/// Epoch ticks after which a call is a long call whatever its CPU time.
const LONG_CALL_MAX_TICKS: u64 = 4;

/// Gives back the lanes a call took, once it has returned.
fn end_call(store: &mut Store<FilterState>) {
    if let Ok(mut held) = store.data().long_call.lock() {
        *held = None;
    }
}

/// How many times its tenant's CPU time per call an instance's start and `configure` may take.
const SETUP_CPU_FACTOR: u32 = 10;

/// How a call enters the guest (see [`FilterPool`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A synchronous call on the caller's stack: it cannot pause.
    Direct,
    /// An async call on a fiber: it can pause, and move to a long-call thread.
    Fiber,
}

/// What one call may take.
#[derive(Debug, Clone, Copy)]
struct CallLimits {
    /// CPU time.
    cpu: Duration,
    /// Wall-clock time (and no later than the request's deadline).
    wall: Duration,
}

/// Readies the store for a call within `limits`.
fn start_call(store: &mut Store<FilterState>, limits: CallLimits, entry: Entry) {
    let state = store.data_mut();
    let now = std::time::Instant::now();
    let request_deadline = state.call.as_ref().and_then(|context| context.deadline);
    state.call_started = now;
    state.call_deadline = request_deadline.map_or(now + limits.wall, |deadline| deadline.min(now + limits.wall));
    state.cpu_limit = limits.cpu;
    state.cpu_ticks = 0;
    state.cpu_used = Duration::ZERO;
    state.guest_error = None;
    state.direct_call = entry == Entry::Direct;
    if state.direct_call {
        // A call on a fiber has its clock set when it starts (`long_calls::run`).
        state.clock.restart(now, state.usage.measures_exactly());
    }
    if let Some(written) = &state.guest_stderr
        && let Ok(mut written) = written.lock()
    {
        written.clear();
    }
    store.set_epoch_deadline(1);
}

/// Sleeps off what a direct call owes its tenant's CPU rate (a call on a fiber paused for it
/// while it ran), until the call's deadline at the latest.
async fn pay_owed_pause(store: &mut Store<FilterState>) {
    let state = store.data_mut();
    let owed = std::mem::take(&mut state.owed_pause);
    if !owed.is_zero() {
        let _ = tokio::time::timeout_at(state.call_deadline.into(), tokio::time::sleep(owed)).await;
    }
}

/// Calls an export with one result, directly or on a fiber.
async fn invoke<Params, Answer>(
    store: &mut Store<FilterState>,
    export: TypedFunc<Params, (Answer,)>,
    params: Params,
    entry: Entry,
) -> wasmtime::Result<Answer>
where
    Params: ComponentNamedList + Lower + Send + Sync,
    Answer: ComponentType + Lift + Send + Sync + 'static,
{
    let answer = match entry {
        Entry::Direct => export.call(&mut *store, params),
        Entry::Fiber => export.call_async(&mut *store, params).await,
    };
    answer.map(|(answer,)| answer)
}

fn classify(error: &wasmtime::Error) -> FilterErrorKind {
    if let Some(cpu) = error.downcast_ref::<CpuLimitExceeded>() {
        return FilterErrorKind::CpuLimit(cpu.to_string());
    }
    if let Some(timed_out) = error.downcast_ref::<CallTimedOut>() {
        return FilterErrorKind::CallTimeout(timed_out.to_string());
    }
    if let Some(memory) = error.downcast_ref::<MemoryLimitExceeded>() {
        return FilterErrorKind::MemoryLimit(memory.to_string());
    }
    // `{:?}` keeps the guest backtrace with function names.
    FilterErrorKind::Trap(format!("{error:?}"))
}

/// One instance checked out for one request. Dropping it returns a healthy instance to the pool
/// (unless the route isolates requests); a failed one is thrown away.
pub struct FilterInstance {
    pool: Arc<FilterPool>,
    /// `None` once a call has failed (or was cut short): its instance is gone.
    instance: Option<Instance>,
    _permit: OwnedSemaphorePermit,
    /// The trace of the next call, when its request is traced.
    next_trace: Option<CallTrace>,
    /// What the last call cost and added to its span.
    last_call: CallReport,
}

/// What one filter call cost, and what the guest added to its span.
#[derive(Debug, Default)]
pub struct CallReport {
    /// Guest CPU time: the kernel's count for the call's thread once it has run through an epoch
    /// tick, wall-clock time for a shorter call (see `long_calls::CallClock`). It is also charged
    /// to the filter's meter.
    pub guest_cpu: Duration,
    /// What the guest added to its span (`sluice:filter/trace`), when the call was traced.
    pub trace_notes: Option<Box<TraceNotes>>,
}

impl std::fmt::Debug for FilterInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterInstance").field("filter", &self.pool.spec.name).finish_non_exhaustive()
    }
}

impl Drop for FilterInstance {
    fn drop(&mut self) {
        let Some(mut instance) = self.instance.take() else { return };
        if self.pool.spec.isolation == Isolation::Request {
            return;
        }
        let state = instance.store.data_mut();
        state.call = None;
        state.request = None;
        state.response = None;
        // Linear memory never shrinks: an instance whose heap has crept up (a leak, or a garbage
        // collector that lets its heap grow, as JavaScript engines do) is replaced by a fresh one
        // before it reaches its tenant's limit, rather than failing a request there.
        let limit = self.pool.spec.tenant.memory_bytes;
        if state.memory_bytes > limit / 4 * 3 {
            self.pool.runtime.services().retirements.get_or_create(&state.owner_labels()).inc();
            tracing::debug!(
                route = %self.pool.spec.route,
                filter = %self.pool.spec.name,
                memory_bytes = state.memory_bytes,
                limit,
                "instance retired: its memory neared the tenant's limit"
            );
            return;
        }
        self.pool.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(instance);
    }
}

/// A request head lent to filters, with what they set on it besides headers.
#[derive(Debug)]
pub struct RequestHead {
    /// The head.
    pub parts: http::request::Parts,
    /// The cache key a filter chose.
    pub cache_key: Option<String>,
}

fn empty_request_parts() -> http::request::Parts {
    http::Request::new(()).into_parts().0
}

fn empty_response_parts() -> http::response::Parts {
    Response::new(()).into_parts().0
}

impl FilterInstance {
    /// The instance's linear memory (all its memories together), in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.instance.as_ref().map_or(0, |instance| instance.store.data().memory_bytes)
    }

    /// The filter's pool (and so its spec and phases).
    pub fn pool(&self) -> &Arc<FilterPool> {
        &self.pool
    }

    /// Makes the next call part of `trace`: the guest can read its trace id and add to its span,
    /// and its callouts carry it.
    pub fn trace_next_call(&mut self, trace: CallTrace) {
        self.next_trace = Some(trace);
    }

    /// What the last call cost and added to its span.
    pub fn take_last_call(&mut self) -> CallReport {
        std::mem::take(&mut self.last_call)
    }

    /// Lends the heads to the store, makes `call`, and takes them back whatever happened.
    async fn with_heads(
        &mut self,
        request: &mut RequestHead,
        request_writable: bool,
        response: Option<(&mut http::response::Parts, bool)>,
        call: PhaseCall,
    ) -> Result<PhaseAnswer, FilterError> {
        // A failed call drops its instance: the request's later phases skip the filter.
        let Some(mut instance) = self.instance.take() else {
            let failed_before = FilterErrorKind::Trap("the instance failed earlier in this request".into());
            return Err(self.pool.error(failed_before, None));
        };
        let state = instance.store.data_mut();
        state.trace = self.next_trace.take();
        state.request = Some(RequestSlot {
            parts: std::mem::replace(&mut request.parts, empty_request_parts()),
            writable: request_writable,
            cache_key: request.cache_key.take(),
        });
        let mut response_parts = None;
        if let Some((parts, writable)) = response {
            state.response = Some(ResponseSlot { parts: std::mem::replace(parts, empty_response_parts()), writable });
            response_parts = Some(parts);
        }
        // The call owns the instance while it runs (on a fiber it may move to a long-call
        // thread). A call cut short (its request dropped while the guest runs) drops it there,
        // midway: such an instance is never reused.
        let limits = CallLimits { cpu: self.pool.spec.tenant.cpu_per_call, wall: self.pool.spec.tenant.call_timeout };
        let entry = self.pool.entry();
        let (instance, (request_slot, response_slot), report, result) = match entry {
            Entry::Direct => run_phase(instance, call, limits, entry).await,
            Entry::Fiber => {
                let clock = instance.store.data().clock.clone();
                let exact = instance.store.data().usage.measures_exactly();
                long_calls::run(clock, exact, run_phase(instance, call, limits, entry)).await
            }
        };
        if let Some(slot) = request_slot {
            request.parts = slot.parts;
            request.cache_key = slot.cache_key;
        }
        if let (Some(parts), Some(slot)) = (response_parts, response_slot) {
            *parts = slot.parts;
        }
        self.instance = instance;
        self.last_call = report;
        result.map_err(|(kind, guest_message)| self.pool.error(kind, guest_message))
    }

    /// `on-request`.
    pub async fn on_request(&mut self, request: &mut RequestHead) -> Result<HeadOutcome, FilterError> {
        match self.with_heads(request, true, None, PhaseCall::Request).await? {
            PhaseAnswer::Decision(decision) => self.head_outcome(decision),
            PhaseAnswer::Action(_) => unreachable!("on-request answers with a decision"),
        }
    }

    /// `on-request-body` with the whole body.
    pub async fn on_request_body(
        &mut self,
        request: &mut RequestHead,
        body: Bytes,
    ) -> Result<BodyOutcome, FilterError> {
        match self.with_heads(request, true, None, PhaseCall::RequestBody(body)).await? {
            PhaseAnswer::Action(action) => self.body_outcome(action),
            PhaseAnswer::Decision(_) => unreachable!("on-request-body answers with a body action"),
        }
    }

    /// `on-response`; the request head is read-only by now.
    pub async fn on_response(
        &mut self,
        request: &mut RequestHead,
        response: &mut http::response::Parts,
    ) -> Result<HeadOutcome, FilterError> {
        match self.with_heads(request, false, Some((response, true)), PhaseCall::Response).await? {
            PhaseAnswer::Decision(decision) => self.head_outcome(decision),
            PhaseAnswer::Action(_) => unreachable!("on-response answers with a decision"),
        }
    }

    /// `on-response-body` with one chunk (`head_writable`: the head has not been sent yet, as
    /// with a buffered body).
    pub async fn on_response_body(
        &mut self,
        request: &mut RequestHead,
        response: &mut http::response::Parts,
        head_writable: bool,
        chunk: Bytes,
        end_of_stream: bool,
    ) -> Result<BodyOutcome, FilterError> {
        let call = PhaseCall::ResponseBody(chunk, end_of_stream);
        match self.with_heads(request, false, Some((response, head_writable)), call).await? {
            PhaseAnswer::Action(action) => self.body_outcome(action),
            PhaseAnswer::Decision(_) => unreachable!("on-response-body answers with a body action"),
        }
    }

    fn head_outcome(&mut self, decision: wit::Decision) -> Result<HeadOutcome, FilterError> {
        match decision {
            wit::Decision::Continue => Ok(HeadOutcome::Continue),
            wit::Decision::Respond(local) => Ok(HeadOutcome::Respond(self.local_response(local)?)),
        }
    }

    fn body_outcome(&mut self, action: wit::BodyAction) -> Result<BodyOutcome, FilterError> {
        match action {
            wit::BodyAction::Pass => Ok(BodyOutcome::Pass),
            wit::BodyAction::Replace(bytes) => Ok(BodyOutcome::Replace(Bytes::from(bytes))),
            wit::BodyAction::Respond(local) => Ok(BodyOutcome::Respond(self.local_response(local)?)),
        }
    }

    fn local_response(&mut self, local: wit::LocalResponse) -> Result<Response<ProxyBody>, FilterError> {
        let invalid = |message: String| self.pool.error(FilterErrorKind::InvalidAnswer(message), None);
        let status = StatusCode::from_u16(local.status)
            .ok()
            .filter(|status| (200..600).contains(&status.as_u16()))
            .ok_or_else(|| invalid(format!("status {} is not 200 to 599", local.status)))?;
        // A 204 or 304 has no body (RFC 9110 sections 15.3.5 and 15.4.5).
        let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
        let body = if bodiless { body::empty() } else { body::full(Bytes::from(local.body)) };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        // Hop-by-hop headers, and those a `Connection` header names, are dropped (as the WIT says).
        let named_by_connection: Vec<String> = local
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, value)| {
                String::from_utf8_lossy(value)
                    .split(',')
                    .map(|token| token.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .collect();
        for (name, value) in local.headers {
            let lower = name.to_ascii_lowercase();
            if is_hop_by_hop(&lower) || named_by_connection.contains(&lower) {
                continue;
            }
            set_header(response.headers_mut(), &name, &value, true).map_err(invalid)?;
        }
        Ok(response)
    }
}

/// Which export to call.
enum PhaseCall {
    Request,
    RequestBody(Bytes),
    Response,
    ResponseBody(Bytes, bool),
}

/// What the export answered.
enum PhaseAnswer {
    Decision(wit::Decision),
    Action(wit::BodyAction),
}

/// A phase call's instance (`None` once it has failed), the heads it was lent, what it cost, and
/// its answer.
type PhaseRun = (
    Option<Instance>,
    (Option<RequestSlot>, Option<ResponseSlot>),
    CallReport,
    Result<PhaseAnswer, (FilterErrorKind, Option<String>)>,
);

/// Runs one phase call within `limits` and takes the heads back from the store.
async fn run_phase(mut instance: Instance, call: PhaseCall, limits: CallLimits, entry: Entry) -> PhaseRun {
    start_call(&mut instance.store, limits, entry);
    let result = call_phase(&mut instance.store, &instance.filter, call, entry).await;
    // Measured here, on the thread the call ended on, before any pause it owes.
    let guest_cpu = instance.store.data().clock.finish();
    end_call(&mut instance.store);
    let state = instance.store.data_mut();
    state.usage.record_call(guest_cpu);
    state.trace = None;
    let report = CallReport { guest_cpu, trace_notes: state.trace_notes.take() };
    pay_owed_pause(&mut instance.store).await;
    let state = instance.store.data_mut();
    let heads = (state.request.take(), state.response.take());
    let result = result.map_err(|err| (classify(&err), state.take_guest_message()));
    if let Some(lines) = &state.guest_lines {
        lines.flush(state.call.as_ref().map(|context| &*context.request_id), result.is_err());
    }
    // A failed instance is never reused. It is dropped here, where it failed: for a call on a
    // fiber that spun or grew to its limit that is a long-call thread, which also takes the cost
    // of handing its memory back.
    (result.is_ok().then_some(instance), heads, report, result)
}

/// Makes handles for the lent heads, calls the export, and drops the handles.
async fn call_phase(
    store: &mut Store<FilterState>,
    filter: &Filter,
    call: PhaseCall,
    entry: Entry,
) -> wasmtime::Result<PhaseAnswer> {
    let state = store.data_mut();
    let request_rep = state.new_request_handle()?.rep();
    let response_rep = if state.response.is_some() { Some(state.new_response_handle()?.rep()) } else { None };
    // The exports take `borrow<..>`: lend borrowed handles. An owned handle would be moved into
    // the guest's table for good, and a warm instance would run out of handles after about
    // 100,000 calls.
    let request = Resource::<RequestHandle>::new_borrow(request_rep);
    let response = response_rep.map(Resource::<ResponseHandle>::new_borrow);
    let exports = filter.sluice_filter_filter();
    let answer = match (call, response) {
        (PhaseCall::Request, _) => {
            invoke(store, exports.func_on_request(), (request,), entry).await.map(PhaseAnswer::Decision)
        }
        (PhaseCall::RequestBody(body), _) => {
            let export = exports.func_on_request_body();
            invoke(store, export, (request, &body[..], true), entry).await.map(PhaseAnswer::Action)
        }
        (PhaseCall::Response, Some(response)) => {
            invoke(store, exports.func_on_response(), (request, response), entry).await.map(PhaseAnswer::Decision)
        }
        (PhaseCall::ResponseBody(chunk, end), Some(response)) => {
            let export = exports.func_on_response_body();
            invoke(store, export, (request, response, &chunk[..], end), entry).await.map(PhaseAnswer::Action)
        }
        (PhaseCall::Response | PhaseCall::ResponseBody(..), None) => {
            Err(wasmtime::Error::msg("a response phase needs the response head"))
        }
    };
    store.data_mut().drop_handles(
        Resource::<RequestHandle>::new_own(request_rep),
        response_rep.map(Resource::<ResponseHandle>::new_own),
    );
    answer
}

/// Where a guest's WASI stdout and stderr go: gathered into whole lines (Go's runtime, for one,
/// writes a panic in pieces) and held as the call's [`GuestLines`], logged when the call ends;
/// for stderr also the start of what the call wrote, kept as the guest's message should the call
/// fail.
struct GuestOutput {
    stream_name: &'static str,
    kept: Option<Arc<Mutex<String>>>,
    lines: Arc<GuestLines>,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
}

/// How much of a call's stderr is kept for its failure message.
const STDERR_KEPT_BYTES: usize = 4096;

/// The longest line gathered; a longer one is held in pieces of this size.
const GUEST_LINE_BYTES: usize = 4096;

/// Lines one call may leave to be logged; past it they are dropped and counted as the log
/// budget's drops are.
const GUEST_LINES_PER_CALL: usize = 256;

/// What a guest wrote during a call, a line at a time, logged when the call ends
/// ([`GuestLines::flush`]): with the call's request id, within the instance's log budget and
/// escaped as its log lines are. A failed call's stderr is not logged line by line: it is the
/// failure's message, so a panic is one event (the failure's), not one per line of its stack.
pub(crate) struct GuestLines {
    route: Arc<str>,
    filter: Arc<str>,
    log: Arc<GuestLog>,
    pending: Mutex<Vec<(&'static str, String)>>,
}

impl std::fmt::Debug for GuestLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestLines").field("route", &self.route).field("filter", &self.filter).finish_non_exhaustive()
    }
}

impl GuestLines {
    fn push(&self, stream: &'static str, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let line = text.trim_end();
        if line.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if pending.len() >= GUEST_LINES_PER_CALL {
            self.log.count_dropped();
            return;
        }
        pending.push((stream, escape_line(line)));
    }

    /// Logs what the call that just ended wrote (`failed`: it failed, and its stderr is the
    /// failure's message instead).
    pub(crate) fn flush(&self, request_id: Option<&str>, failed: bool) {
        let lines = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for (stream, line) in lines {
            if (failed && stream == "stderr") || !self.log.admit() {
                continue;
            }
            tracing::info!(
                target: "sluice::filter",
                route = %self.route,
                filter = %self.filter,
                stream,
                request_id = request_id.unwrap_or(""),
                "{line}"
            );
        }
    }
}

impl GuestOutput {
    fn new(stream_name: &'static str, kept: Option<Arc<Mutex<String>>>, lines: Arc<GuestLines>) -> Self {
        Self { stream_name, kept, lines, partial: Vec::new() }
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..end]);
            self.lines.push(self.stream_name, &line);
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() >= GUEST_LINE_BYTES {
            let line = std::mem::take(&mut self.partial);
            self.lines.push(self.stream_name, &line);
        }
        if let Some(kept) = &self.kept
            && let Ok(mut kept) = kept.lock()
            && kept.len() < STDERR_KEPT_BYTES
        {
            // The start of what it wrote: a panic's message comes first, its stack after.
            let end = bytes.len().min(STDERR_KEPT_BYTES - kept.len());
            kept.push_str(&String::from_utf8_lossy(&bytes[..end]));
        }
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let line = std::mem::take(&mut self.partial);
        self.lines.push(self.stream_name, &line);
        Poll::Ready(Ok(()))
    }
}

/// A filter in a route's chain: its spec from the configuration, and its pool once prepared.
#[derive(Debug)]
pub struct RouteFilter {
    /// The filter as configured.
    pub spec: FilterSpec,
    /// Where it is written (`route[2].filters[0]`), for errors found when preparing it.
    pub key: String,
    /// Its line and column in the configuration file.
    pub position: Option<(usize, usize)>,
    pool: std::sync::OnceLock<Arc<FilterPool>>,
    /// Another version taking a share of the requests.
    pub canary: Option<Canary>,
    /// Another version that runs beside this one on a copy of what it sees, with no effect.
    pub shadow: Option<Shadow>,
}

/// A shadow version of a filter: another plugin (or config) that runs on a copy of a share of
/// the filter's calls, whose decisions are compared with the filter's and never applied.
#[derive(Debug)]
pub struct Shadow {
    /// The shadow filter.
    pub filter: Box<RouteFilter>,
    /// Share of requests shadowed, 1 to 100.
    pub percent: u32,
}

/// A canary version of a filter: another plugin that serves `percent` of its requests.
#[derive(Debug)]
pub struct Canary {
    /// The canary filter.
    pub filter: Box<RouteFilter>,
    /// Share of requests, 1 to 99.
    pub percent: u32,
    /// Whether a client (by IP) always gets the same version.
    pub sticky: bool,
}

impl RouteFilter {
    /// A filter not yet prepared.
    pub fn new(spec: FilterSpec, key: String, position: Option<(usize, usize)>) -> Self {
        Self { spec, key, position, pool: std::sync::OnceLock::new(), canary: None, shadow: None }
    }

    /// The same filter with a shadow version.
    pub fn with_shadow(mut self, shadow: Shadow) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// The shadow version, when this request is one of its share.
    pub fn shadow_for_this_request(&self) -> Option<&RouteFilter> {
        let shadow = self.shadow.as_ref()?;
        (shadow.percent >= 100 || rand::random_range(0..100) < shadow.percent).then_some(&*shadow.filter)
    }

    /// The same filter with a canary version.
    pub fn with_canary(mut self, canary: Canary) -> Self {
        self.canary = Some(canary);
        self
    }

    /// This filter, its canary and its shadow, where it has them: everything that must be
    /// prepared.
    pub fn versions(&self) -> impl Iterator<Item = &RouteFilter> {
        std::iter::once(self)
            .chain(self.canary.as_ref().map(|canary| &*canary.filter))
            .chain(self.shadow.as_ref().map(|shadow| &*shadow.filter))
    }

    /// The version that serves a request from `client`: the canary for its share of requests
    /// (the same clients every time when sticky), else this one.
    pub fn choose(&self, client: std::net::IpAddr) -> &RouteFilter {
        let Some(canary) = &self.canary else { return self };
        let roll = if canary.sticky {
            // A stable hash of the client and the filter: each client lands on one side, and
            // different filters split clients independently.
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (client, &*self.key).hash(&mut hasher);
            (hasher.finish() % 100) as u32
        } else {
            rand::random_range(0..100)
        };
        if roll < canary.percent { &canary.filter } else { self }
    }

    /// Starts its first instance and configures it (see [`FilterPool::prepare`]).
    pub async fn prepare(&self, runtime: &Arc<Runtime>) -> Result<(), FilterError> {
        if self.pool.get().is_none() {
            let pool = FilterPool::prepare(runtime.clone(), self.spec.clone()).await?;
            let _ = self.pool.set(pool);
        }
        Ok(())
    }

    /// Takes over a running pool of the same filter (see [`FilterSpec::same_filter_as`]).
    pub fn adopt(&self, pool: Arc<FilterPool>) {
        let _ = self.pool.set(pool);
    }

    /// Its pool, once prepared.
    pub fn pool(&self) -> Option<&Arc<FilterPool>> {
        self.pool.get()
    }
}
