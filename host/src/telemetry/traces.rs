//! Distributed tracing: the W3C trace context a request brings and sends on, its spans, and
//! their export over OTLP.
//!
//! A traced request has a server span from its head to the end of its response body, with
//! children for the route match, each filter call, the cache lookup and each upstream try
//! (retries are siblings, and each try carries its own span id upstream in `traceparent`).
//! Spans are made with the OpenTelemetry API and SDK directly rather than through `tracing`
//! spans: the proxy decides per request whether it records (once, at the server span, before the
//! SDK is involved), a request that is not recorded makes no span at all and only passes its
//! context on, and the upstream try's span context is at hand to inject. Ended spans go to the SDK's batch processor, which exports them
//! from a thread of its own; the OTLP clients it drives (reqwest, tonic) need a tokio reactor,
//! which that thread lacks, so the exporter brings a small runtime of its own
//! ([`OwnRuntimeExporter`]). When `[tracing]` is absent nothing here runs: no span, no id, no
//! header touched.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider};

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    HttpProtobuf,
    /// OTLP/gRPC.
    Grpc,
}

/// `[tracing]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// Where spans are sent (for HTTP, the full URL of the traces endpoint).
    pub endpoint: String,
    /// How.
    pub protocol: OtlpProtocol,
    /// The share of traces starting here that are recorded.
    pub sampling_ratio: f64,
    /// `service.name`.
    pub service_name: String,
    /// Headers (gRPC metadata) sent with every export.
    pub headers: Vec<(String, String)>,
    /// How long one export may take.
    pub export_timeout: Duration,
    /// How long ended spans wait before they are sent.
    pub export_interval: Duration,
    /// Ended spans kept while they wait.
    pub max_queue: usize,
    /// Most spans in one export.
    pub max_batch: usize,
}

/// The tracer of one `[tracing]` configuration; kept across reloads while it is unchanged.
pub struct Tracing {
    settings: TracingSettings,
    tracer: SdkTracer,
    /// Taken when the tracer is dropped, to be shut down (its last spans flushed) off the
    /// async runtime, since shutting down waits for the export thread.
    provider: Option<SdkTracerProvider>,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Tracing {
    /// A tracer exporting as `settings` say. Fails when the exporter cannot be built (an
    /// endpoint that is not a URL, say).
    pub fn new(settings: TracingSettings) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-trace-export")
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the export runtime: {err}"))?;
        let exporter = {
            // tonic's channel is made inside the runtime that will drive it.
            let _inside = runtime.enter();
            build_exporter(&settings)?
        };
        let exporter = OwnRuntimeExporter { exporter, runtime: Some(runtime) };
        let batching = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue)
            .with_max_export_batch_size(settings.max_batch.min(settings.max_queue))
            .with_scheduled_delay(settings.export_interval)
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batching).build();
        // `start_request` decides which requests are sampled and hands only those to the SDK.
        let sampler = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("sluice");
        Ok(Self { settings, tracer, provider: Some(provider) })
    }

    /// What it was made from.
    pub fn settings(&self) -> &TracingSettings {
        &self.settings
    }

    /// Sends every ended span now, waiting for the export (shutdown, tests).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            let _ = provider.force_flush();
        }
    }

    /// The server span of a request whose head carries `headers`: a child of the client's trace
    /// context when it sent a valid one, else the root of a new trace.
    ///
    /// The sampling decision is made here, before the SDK is asked for anything: a valid parent's
    /// decides, else the ratio does. An unsampled request never reaches the SDK (no span, no
    /// processor, no id generator), since it is most requests at a low ratio; it keeps only the
    /// context it passes on. A sampled one is handed to the SDK, whose sampler then follows the
    /// decision made here (parent-based over always-on).
    pub(crate) fn start_request(self: &Arc<Self>, headers: &HeaderMap, method: &http::Method) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&HeaderReader(headers));
        let remote = parent.span().span_context().clone();
        let sampled = if remote.is_valid() {
            remote.is_sampled()
        } else {
            self.settings.sampling_ratio >= 1.0 || rand::random::<f64>() < self.settings.sampling_ratio
        };
        if !sampled {
            let context = if remote.is_valid() {
                remote
            } else {
                let trace_id = TraceId::from(random_nonzero::<u128>(128));
                SpanContext::new(trace_id, SpanId::INVALID, TraceFlags::default(), false, TraceState::default())
            };
            return RequestTrace(SharedTrace(Trace::Unrecorded(next_hop(&context))));
        }
        let span = self
            .tracer
            .span_builder(Cow::Owned(method.as_str().to_owned()))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        RequestTrace(SharedTrace(Trace::Recorded { cx: parent.with_span(span), tracing: self.clone() }))
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else { return };
        // Waits for the last export: never on an async worker.
        let _ = std::thread::Builder::new().name("sluice-trace-shutdown".into()).spawn(move || {
            let _ = provider.shutdown();
        });
    }
}

fn build_exporter(settings: &TracingSettings) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match settings.protocol {
        OtlpProtocol::HttpProtobuf => {
            let headers: HashMap<String, String> = settings.headers.iter().cloned().collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.export_timeout)
                .with_headers(headers)
                .build()
        }
        OtlpProtocol::Grpc => {
            let mut headers = HeaderMap::new();
            for (name, value) in &settings.headers {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("header {name:?} is not a valid gRPC metadata key"))?;
                let value =
                    HeaderValue::try_from(value).map_err(|_| format!("the value of header {name} is not valid"))?;
                headers.insert(name, value);
            }
            let metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.export_timeout)
                .with_metadata(metadata)
                .build()
        }
    };
    built.map_err(|err| err.to_string())
}

/// The OTLP exporter, run on a runtime of its own: the batch processor calls it from its own
/// thread, where no tokio reactor is.
#[derive(Debug)]
struct OwnRuntimeExporter {
    exporter: opentelemetry_otlp::SpanExporter,
    /// Dropped on the export thread, where dropping a runtime is allowed.
    runtime: Option<tokio::runtime::Runtime>,
}

impl opentelemetry_sdk::trace::SpanExporter for OwnRuntimeExporter {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let result = match &self.runtime {
            Some(runtime) => runtime.block_on(self.exporter.export(batch)),
            None => Ok(()),
        };
        std::future::ready(result)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.exporter.set_resource(resource);
    }
}

/// One request's trace: its server span, which its other spans are children of.
pub(crate) struct RequestTrace(SharedTrace);

impl RequestTrace {
    /// Whether its spans are recorded (sampled); an unrecorded trace still gives upstream tries
    /// their own span ids, with the client's decision.
    pub(crate) fn recording(&self) -> bool {
        self.0.recording()
    }

    /// Sets attributes on the server span, built only when it records.
    pub(crate) fn annotate(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Trace::Recorded { cx, .. } = &self.0.0 {
            cx.span().set_attributes(attributes());
        }
    }

    /// Renames the server span (`GET route`, once the route is known).
    pub(crate) fn rename(&self, name: impl FnOnce() -> String) {
        if let Trace::Recorded { cx, .. } = &self.0.0 {
            cx.span().update_name(name());
        }
    }

    /// A child of the server span, started now.
    pub(crate) fn child(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind) -> ChildSpan {
        self.0.child(name, kind)
    }

    /// A child of the server span that started at `started` (a phase timed before it knew it
    /// would be recorded).
    pub(crate) fn child_from(&self, name: impl Into<Cow<'static, str>>, started: SystemTime) -> ChildSpan {
        match &self.0.0 {
            Trace::Recorded { cx, tracing } => {
                let tracer = &tracing.tracer;
                ChildSpan(Child::Recorded(
                    tracer
                        .span_builder(name)
                        .with_kind(SpanKind::Internal)
                        .with_start_time(started)
                        .start_with_context(tracer, cx),
                ))
            }
            Trace::Unrecorded(context) => ChildSpan(Child::Unrecorded(next_hop(context))),
        }
    }

    /// The parent for spans made elsewhere (filter calls, upstream tries).
    pub(crate) fn share(&self) -> SharedTrace {
        self.0.clone()
    }

    /// Ends the server span with the response's status and the request's error, if any.
    pub(crate) fn end(self, status: u16, error: Option<&str>) {
        let Trace::Recorded { cx, .. } = &self.0.0 else { return };
        let span = cx.span();
        span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
        if let Some(kind) = error {
            span.set_attribute(KeyValue::new("error.type", kind.to_owned()));
        }
        // For a server span only a 5xx is an error (semantic conventions).
        if status >= 500 {
            span.set_status(Status::error(error.unwrap_or("server error").to_owned()));
        }
        span.end();
    }
}

/// A request's trace as the parts of its path that make spans keep it.
#[derive(Clone)]
pub(crate) struct SharedTrace(Trace);

/// Whether a request's trace is recorded, and what it needs either way.
#[derive(Clone)]
enum Trace {
    /// Sampled: its spans are made by the SDK and exported.
    Recorded { cx: Context, tracing: Arc<Tracing> },
    /// Not sampled: no span is made and nothing reaches the SDK; only the context is passed on,
    /// with a new span id for each hop (this is the request's own span context, never
    /// exported).
    Unrecorded(SpanContext),
}

impl SharedTrace {
    /// Whether the request's spans are recorded.
    pub(crate) fn recording(&self) -> bool {
        matches!(self.0, Trace::Recorded { .. })
    }

    /// A child of the request's server span, started now.
    pub(crate) fn child(&self, name: impl Into<Cow<'static, str>>, kind: SpanKind) -> ChildSpan {
        match &self.0 {
            Trace::Recorded { cx, tracing } => {
                let tracer = &tracing.tracer;
                ChildSpan(Child::Recorded(tracer.span_builder(name).with_kind(kind).start_with_context(tracer, cx)))
            }
            Trace::Unrecorded(context) => ChildSpan(Child::Unrecorded(next_hop(context))),
        }
    }
}

/// A random id that is not all zeros (the W3C invalid id).
fn random_nonzero<T: TryFrom<u128>>(bits: u32) -> T {
    loop {
        let value = rand::random::<u128>() >> (128 - bits);
        if value != 0
            && let Ok(id) = T::try_from(value)
        {
            return id;
        }
    }
}

/// The same trace and decision under a new span id: the context a hop of an unrecorded trace
/// sends on.
fn next_hop(context: &SpanContext) -> SpanContext {
    let span_id = SpanId::from(random_nonzero::<u64>(64));
    SpanContext::new(context.trace_id(), span_id, context.trace_flags(), false, context.trace_state().clone())
}

/// A span under the server span; ended when dropped.
pub(crate) struct ChildSpan(Child);

// Not boxed: a recorded span was this size before there was an unrecorded variant, and boxing
// would add an allocation to every recorded child span to save stack on unrecorded ones.
#[allow(clippy::large_enum_variant)]
enum Child {
    /// An SDK span of a recorded trace.
    Recorded(opentelemetry_sdk::trace::Span),
    /// A hop of an unrecorded trace: only its context, to pass on.
    Unrecorded(SpanContext),
}

impl ChildSpan {
    /// Sets attributes, built only when it records.
    pub(crate) fn annotate(&mut self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Child::Recorded(span) = &mut self.0
            && span.is_recording()
        {
            span.set_attributes(attributes());
        }
    }

    /// Adds an event.
    pub(crate) fn add_event(&mut self, name: String, attributes: Vec<KeyValue>) {
        if let Child::Recorded(span) = &mut self.0
            && span.is_recording()
        {
            span.add_event(name, attributes);
        }
    }

    fn span_context(&self) -> &SpanContext {
        match &self.0 {
            Child::Recorded(span) => span.span_context(),
            Child::Unrecorded(context) => context,
        }
    }

    /// What a filter call in this span sees of the trace: its id, and the span's context for
    /// the call's callouts.
    pub(crate) fn call_trace(&self) -> Option<sluice_runtime::CallTrace> {
        let mut headers = HeaderMap::new();
        self.inject(&mut headers);
        let traceparent = headers.remove("traceparent")?;
        let trace_id = Arc::from(self.span_context().trace_id().to_string());
        Some(sluice_runtime::CallTrace { trace_id, traceparent, tracestate: headers.remove("tracestate") })
    }

    /// Marks it failed.
    pub(crate) fn fail(&mut self, message: impl FnOnce() -> String) {
        if let Child::Recorded(span) = &mut self.0
            && span.is_recording()
        {
            span.set_status(Status::error(message()));
        }
    }

    /// Writes its context into `headers` as `traceparent` (and `tracestate` when there is
    /// one), replacing the client's: the next hop's parent is this span.
    pub(crate) fn inject(&self, headers: &mut HeaderMap) {
        write_trace_context(self.span_context(), headers);
    }
}

/// Writes `context` as W3C `traceparent` (`00-TRACE-SPAN-FLAGS`) and, when it has one,
/// `tracestate`, replacing the request's. Written here rather than by the SDK's propagator,
/// which makes a `Context` and formats through `format!` for every hop: this runs for every
/// upstream try of every request while tracing is on, sampled or not.
fn write_trace_context(context: &SpanContext, headers: &mut HeaderMap) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = [0u8; 55];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        for &byte in bytes {
            text[at] = HEX[usize::from(byte >> 4)];
            text[at + 1] = HEX[usize::from(byte & 0x0f)];
            at += 2;
        }
    };
    put(&[0]);
    put(&context.trace_id().to_bytes());
    put(&context.span_id().to_bytes());
    put(&[context.trace_flags().to_u8()]);
    // The dashes between the fields: version (2), trace id (32), span id (16), flags (2).
    let mut traceparent = [0u8; 55];
    traceparent[..2].copy_from_slice(&text[..2]);
    traceparent[2] = b'-';
    traceparent[3..35].copy_from_slice(&text[2..34]);
    traceparent[35] = b'-';
    traceparent[36..52].copy_from_slice(&text[34..50]);
    traceparent[52] = b'-';
    traceparent[53..55].copy_from_slice(&text[50..52]);
    let value = HeaderValue::from_bytes(&traceparent).expect("hex digits and dashes are a valid header value");
    headers.insert(HeaderName::from_static("traceparent"), value);
    let state = context.trace_state().header();
    match HeaderValue::try_from(state) {
        Ok(value) if !value.is_empty() => {
            headers.insert(HeaderName::from_static("tracestate"), value);
        }
        _ => {
            headers.remove("tracestate");
        }
    }
}

/// The trace context headers of a request, read.
struct HeaderReader<'a>(&'a HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // A header sent twice is ambiguous: W3C says to treat several traceparents as invalid.
        let mut values = self.0.get_all(key).iter();
        let first = values.next()?;
        if key == "traceparent" && values.next().is_some() {
            return None;
        }
        first.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(ratio: f64) -> TracingSettings {
        TracingSettings {
            endpoint: "http://127.0.0.1:9/v1/traces".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            sampling_ratio: ratio,
            service_name: "test".into(),
            headers: Vec::new(),
            export_timeout: Duration::from_millis(100),
            export_interval: Duration::from_secs(60),
            max_queue: 16,
            max_batch: 16,
        }
    }

    fn traceparent(headers: &HeaderMap) -> &str {
        headers.get("traceparent").and_then(|value| value.to_str().ok()).unwrap()
    }

    #[test]
    fn a_sampled_parent_is_continued_with_a_new_span_id_for_each_hop() {
        let tracing = Arc::new(Tracing::new(settings(0.0)).unwrap());
        let mut headers = HeaderMap::new();
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        headers.insert("traceparent", HeaderValue::from_static(parent));
        let trace = tracing.start_request(&headers, &http::Method::GET);
        // The parent sampled it: the ratio (0 here) does not apply.
        assert!(trace.recording());
        let attempt = trace.child("GET", SpanKind::Client);
        let mut upstream = headers.clone();
        attempt.inject(&mut upstream);
        let sent = traceparent(&upstream);
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"), "{sent}");
        assert!(sent.ends_with("-01"));
        assert_ne!(&sent[36..52], "b7ad6b7169203331");
    }

    #[test]
    fn an_unsampled_parent_stays_unsampled_and_is_still_passed_on() {
        let tracing = Arc::new(Tracing::new(settings(1.0)).unwrap());
        let mut headers = HeaderMap::new();
        headers
            .insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"));
        let trace = tracing.start_request(&headers, &http::Method::GET);
        assert!(!trace.recording());
        let attempt = trace.child("GET", SpanKind::Client);
        let mut upstream = HeaderMap::new();
        attempt.inject(&mut upstream);
        let sent = traceparent(&upstream);
        assert!(sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && sent.ends_with("-00"), "{sent}");
    }

    #[test]
    fn without_a_valid_parent_the_ratio_decides_and_a_new_trace_starts() {
        let never = Arc::new(Tracing::new(settings(0.0)).unwrap());
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("00-not-a-trace-context-01"));
        assert!(!never.start_request(&headers, &http::Method::GET).recording());
        let always = Arc::new(Tracing::new(settings(1.0)).unwrap());
        let trace = always.start_request(&headers, &http::Method::GET);
        assert!(trace.recording());
        let mut upstream = HeaderMap::new();
        trace.child("GET", SpanKind::Client).inject(&mut upstream);
        assert!(!traceparent(&upstream).contains("not-a-trace"));
    }

    #[test]
    fn an_unsampled_new_trace_still_sends_a_context_and_the_ratio_holds() {
        let half = Arc::new(Tracing::new(settings(0.5)).unwrap());
        let headers = HeaderMap::new();
        let mut sampled = 0;
        for _ in 0..10_000 {
            let trace = half.start_request(&headers, &http::Method::GET);
            if trace.recording() {
                sampled += 1;
                continue;
            }
            let mut upstream = HeaderMap::new();
            trace.child("GET", SpanKind::Client).inject(&mut upstream);
            let sent = traceparent(&upstream).to_owned();
            assert!(sent.starts_with("00-") && sent.ends_with("-00") && sent.len() == 55, "{sent}");
            assert!(!sent.contains("00000000000000000000000000000000"), "a valid trace id: {sent}");
        }
        // Binomial(10,000, 0.5): outside 4,500..5,500 happens with odds far below one in a billion.
        assert!((4_500..5_500).contains(&sampled), "{sampled} of 10,000 sampled at 0.5");
    }

    #[test]
    fn the_trace_context_is_written_as_the_w3c_propagator_writes_it() {
        for (flags, state) in [(TraceFlags::SAMPLED, "vendor=abc,other=1"), (TraceFlags::default(), "")] {
            let state: TraceState = state.parse().unwrap();
            let context = SpanContext::new(
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                flags,
                false,
                state,
            );
            let mut expected = HashMap::new();
            TraceContextPropagator::new()
                .inject_context(&Context::new().with_remote_span_context(context.clone()), &mut expected);
            let mut headers = HeaderMap::new();
            headers.insert("tracestate", HeaderValue::from_static("client=stale"));
            write_trace_context(&context, &mut headers);
            assert_eq!(Some(traceparent(&headers)), expected.get("traceparent").map(String::as_str));
            let written = headers.get("tracestate").map(|value| value.to_str().unwrap().to_owned());
            let wanted = expected.get("tracestate").filter(|state| !state.is_empty()).cloned();
            assert_eq!(written, wanted, "the client's tracestate is replaced, an empty one not sent");
        }
    }

    #[test]
    fn two_traceparent_headers_are_no_parent() {
        let tracing = Arc::new(Tracing::new(settings(0.0)).unwrap());
        let mut headers = HeaderMap::new();
        let sampled = HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        headers.append("traceparent", sampled.clone());
        headers.append("traceparent", sampled);
        assert!(!tracing.start_request(&headers, &http::Method::GET).recording());
    }
}
