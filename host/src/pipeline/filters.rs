//! A route's filter chain for one request: request phases in chain order, response phases in
//! reverse, body phases only for the filters that asked, and each failure handled by its filter's
//! policy (fail-closed ends the request with an error, fail-open skips the filter).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tracing::Instrument;

use super::shadow::{Input, ShadowRun, copy_request, copy_response};
use crate::routing::Route;
use crate::telemetry::live::FilterLive;
use crate::telemetry::shadows::Outcome;
use crate::telemetry::traces::{ChildSpan, SharedTrace};
use sluice_http::body::{self, BoxError, ProxyBody};
use sluice_runtime::{
    BodyOutcome, CallContext, FailurePolicy, FilterError, FilterErrorKind, FilterInstance, HeadOutcome, HostServices,
    Phases, RequestHead,
};

/// One filter's place in the chain for this request.
struct Link {
    instance: Option<FilterInstance>,
    phases: Phases,
    policy: FailurePolicy,
    /// The live figures of the version that serves this request.
    live: Arc<FilterLive>,
    /// Its shadow's run for this request, when the filter has a shadow and this request is in
    /// its share.
    shadow: Option<ShadowRun>,
}

impl Link {
    /// Hands the shadow this phase's input and the real call's outcome (made by `outcome`); a
    /// failed real call ends the shadow's run uncompared.
    fn shadow_step<T>(
        &mut self,
        input: Option<Input>,
        result: &Result<T, FilterError>,
        outcome: impl FnOnce(&T) -> Outcome,
    ) {
        let (Some(run), Some(input)) = (&self.shadow, input) else { return };
        let handed = match result {
            Ok(real) => run.send(input, outcome(real)),
            Err(_) => {
                run.skip();
                false
            }
        };
        if !handed {
            self.shadow = None;
        }
    }
}

/// The checked-out instances of a route's filters for one request.
pub(crate) struct FilterChain {
    links: Vec<Link>,
    request_id: Arc<str>,
    /// Where failures are counted.
    services: Arc<HostServices>,
    /// The request's trace, when it is recorded: each call gets a span under it.
    trace: Option<SharedTrace>,
}

/// How a body phase ended for the chain.
pub(crate) enum ChainBody {
    /// The body to pass on.
    Body(Bytes),
    /// A filter answered instead.
    Respond(Response<ProxyBody>),
}

impl FilterChain {
    /// Checks out an instance of every filter of `route`. A filter that cannot get one fails by
    /// its policy.
    pub(crate) async fn checkout(
        route: &Route,
        context: &CallContext,
        services: &Arc<HostServices>,
    ) -> Result<Self, FilterError> {
        let mut links = Vec::with_capacity(route.filters.len());
        for (configured, figures) in route.filters.iter().zip(&route.filter_live) {
            let filter = configured.choose(context.client_ip);
            let live = match &figures.canary {
                Some(canary) if !std::ptr::eq(filter, configured) => canary.clone(),
                _ => figures.filter.clone(),
            };
            let shadow = match (configured.shadow_for_this_request(), &figures.shadow) {
                (Some(shadow), Some(tally)) => shadow.pool().and_then(|pool| {
                    let mut shadow_context = context.clone();
                    shadow_context.filter = shadow.spec.name.clone();
                    ShadowRun::start(pool.clone(), shadow_context, tally.clone())
                }),
                _ => None,
            };
            let Some(pool) = filter.pool() else {
                return Err(FilterError {
                    route: route.name.clone(),
                    filter: filter.spec.name.clone(),
                    kind: FilterErrorKind::Trap("the filter was never prepared".into()),
                    guest_message: None,
                });
            };
            let mut filter_context = context.clone();
            filter_context.filter = filter.spec.name.clone();
            let policy = filter.spec.on_error;
            match pool.checkout(filter_context).await {
                Ok(instance) => {
                    links.push(Link { instance: Some(instance), phases: pool.phases(), policy, live, shadow });
                }
                Err(error) => {
                    log_failure(services, &error, &filter.spec.tenant.name, &context.request_id, policy);
                    live.record_call(std::time::Duration::ZERO, true);
                    if policy == FailurePolicy::FailClosed {
                        return Err(error);
                    }
                    links.push(Link { instance: None, phases: Phases::empty(), policy, live, shadow: None });
                }
            }
        }
        Ok(Self { links, request_id: context.request_id.clone(), services: services.clone(), trace: None })
    }

    /// Gives every call from now on a span in `trace`, when it is recorded.
    pub(crate) fn trace_in(&mut self, trace: Option<SharedTrace>) {
        self.trace = trace.filter(SharedTrace::recording);
    }

    /// Whether any live filter takes part in `phase`.
    pub(crate) fn wants(&self, phase: Phases) -> bool {
        self.links.iter().any(|link| link.instance.is_some() && link.phases.contains(phase))
    }

    /// Handles a failed call by the filter's policy: fail-open drops the filter for the rest of
    /// the request, fail-closed ends the request.
    fn failed(&mut self, index: usize, error: FilterError) -> Result<(), FilterError> {
        let link = &mut self.links[index];
        let tenant =
            link.instance.as_ref().map(|instance| instance.pool().spec.tenant.name.clone()).unwrap_or_default();
        log_failure(&self.services, &error, &tenant, &self.request_id, link.policy);
        link.instance = None;
        link.shadow = None;
        match link.policy {
            FailurePolicy::FailOpen => Ok(()),
            FailurePolicy::FailClosed => Err(error),
        }
    }

    /// The request head, through every filter in chain order.
    pub(crate) async fn on_request(&mut self, head: &mut RequestHead) -> Result<HeadOutcome, FilterError> {
        for index in 0..self.links.len() {
            let link = &mut self.links[index];
            let Some(instance) = link.instance.as_mut().filter(|_| link.phases.contains(Phases::REQUEST_HEADERS))
            else {
                continue;
            };
            let span = call_span(instance, "request_headers");
            let traced = trace_call(self.trace.as_ref(), instance, "request_headers");
            let shadow_input = link.shadow.as_ref().map(|_| Input::Request(copy_request(head)));
            let started = Instant::now();
            let outcome = instance.on_request(head).instrument(span).await;
            end_call(&link.live, started, traced, instance, &outcome);
            link.shadow_step(shadow_input, &outcome, |real| Outcome::of_head(real, &head.parts.headers));
            match outcome {
                Ok(HeadOutcome::Continue) => {}
                Ok(respond @ HeadOutcome::Respond(_)) => return Ok(respond),
                Err(error) => self.failed(index, error)?,
            }
        }
        Ok(HeadOutcome::Continue)
    }

    /// The whole request body, through every filter that asked for it, in chain order.
    pub(crate) async fn on_request_body(
        &mut self,
        head: &mut RequestHead,
        mut body: Bytes,
    ) -> Result<ChainBody, FilterError> {
        for index in 0..self.links.len() {
            let link = &mut self.links[index];
            let Some(instance) = link.instance.as_mut().filter(|_| link.phases.contains(Phases::REQUEST_BODY)) else {
                continue;
            };
            let span = call_span(instance, "request_body");
            let traced = trace_call(self.trace.as_ref(), instance, "request_body");
            let shadow_input = link.shadow.as_ref().map(|_| Input::RequestBody(copy_request(head), body.clone()));
            let started = Instant::now();
            let outcome = instance.on_request_body(head, body.clone()).instrument(span).await;
            end_call(&link.live, started, traced, instance, &outcome);
            link.shadow_step(shadow_input, &outcome, |real| Outcome::of_body(real, &head.parts.headers));
            match outcome {
                Ok(BodyOutcome::Pass) => {}
                Ok(BodyOutcome::Replace(replacement)) => body = replacement,
                Ok(BodyOutcome::Respond(response)) => return Ok(ChainBody::Respond(response)),
                Err(error) => self.failed(index, error)?,
            }
        }
        Ok(ChainBody::Body(body))
    }

    /// The response head, through every filter in reverse chain order.
    pub(crate) async fn on_response(
        &mut self,
        head: &mut RequestHead,
        response: &mut http::response::Parts,
    ) -> Result<HeadOutcome, FilterError> {
        for index in (0..self.links.len()).rev() {
            let link = &mut self.links[index];
            let Some(instance) = link.instance.as_mut().filter(|_| link.phases.contains(Phases::RESPONSE_HEADERS))
            else {
                continue;
            };
            let span = call_span(instance, "response_headers");
            let traced = trace_call(self.trace.as_ref(), instance, "response_headers");
            let shadow_input =
                link.shadow.as_ref().map(|_| Input::Response(copy_request(head), copy_response(response)));
            let started = Instant::now();
            let outcome = instance.on_response(head, response).instrument(span).await;
            end_call(&link.live, started, traced, instance, &outcome);
            link.shadow_step(shadow_input, &outcome, |real| Outcome::of_head(real, &response.headers));
            match outcome {
                Ok(HeadOutcome::Continue) => {}
                Ok(respond @ HeadOutcome::Respond(_)) => return Ok(respond),
                Err(error) => self.failed(index, error)?,
            }
        }
        Ok(HeadOutcome::Continue)
    }

    /// Whether some filter wants the response body buffered whole.
    pub(crate) fn wants_buffered_response_body(&self) -> bool {
        self.wants(Phases::RESPONSE_BODY | Phases::BUFFER_RESPONSE_BODY)
    }

    /// The whole response body (head still writable), through the body filters in reverse order.
    pub(crate) async fn on_response_body_buffered(
        &mut self,
        head: &mut RequestHead,
        response: &mut http::response::Parts,
        mut body: Bytes,
    ) -> Result<ChainBody, FilterError> {
        for index in (0..self.links.len()).rev() {
            let link = &mut self.links[index];
            let Some(instance) = link.instance.as_mut().filter(|_| link.phases.contains(Phases::RESPONSE_BODY)) else {
                continue;
            };
            let span = call_span(instance, "response_body");
            let traced = trace_call(self.trace.as_ref(), instance, "response_body");
            let shadow_input = link
                .shadow
                .as_ref()
                .map(|_| Input::ResponseBody(copy_request(head), copy_response(response), body.clone()));
            let started = Instant::now();
            let outcome = instance.on_response_body(head, response, true, body.clone(), true).instrument(span).await;
            end_call(&link.live, started, traced, instance, &outcome);
            link.shadow_step(shadow_input, &outcome, |real| Outcome::of_body(real, &response.headers));
            match outcome {
                Ok(BodyOutcome::Pass) => {}
                Ok(BodyOutcome::Replace(replacement)) => body = replacement,
                Ok(BodyOutcome::Respond(local)) => return Ok(ChainBody::Respond(local)),
                Err(error) => self.failed(index, error)?,
            }
        }
        Ok(ChainBody::Body(body))
    }

    /// One streamed response chunk through the body filters in reverse order. The head has gone
    /// to the client, so a filter can no longer answer instead: that counts as a failure.
    async fn on_response_chunk(
        &mut self,
        head: &mut RequestHead,
        response: &mut http::response::Parts,
        mut chunk: Bytes,
        end_of_stream: bool,
    ) -> Result<Bytes, FilterError> {
        for index in (0..self.links.len()).rev() {
            let link = &mut self.links[index];
            let Some(instance) = link.instance.as_mut().filter(|_| link.phases.contains(Phases::RESPONSE_BODY)) else {
                continue;
            };
            let span = call_span(instance, "response_body");
            let traced = trace_call(self.trace.as_ref(), instance, "response_body");
            let started = Instant::now();
            let outcome =
                instance.on_response_body(head, response, false, chunk.clone(), end_of_stream).instrument(span).await;
            end_call(&link.live, started, traced, instance, &outcome);
            match outcome {
                Ok(BodyOutcome::Pass) => {}
                Ok(BodyOutcome::Replace(replacement)) => chunk = replacement,
                Ok(BodyOutcome::Respond(_)) => {
                    let pool = instance.pool().clone();
                    let error = FilterError {
                        route: pool.spec.route.clone(),
                        filter: pool.spec.name.clone(),
                        kind: FilterErrorKind::InvalidAnswer(
                            "answered from a streamed response body, after the head was sent".into(),
                        ),
                        guest_message: None,
                    };
                    self.failed(index, error)?;
                }
                Err(error) => self.failed(index, error)?,
            }
        }
        Ok(chunk)
    }

    /// The response body streamed through the body filters, chunk by chunk; after the last
    /// chunk each filter is called once more with `end_of_stream` so it can flush what it held.
    pub(crate) fn stream_response_body(
        self,
        head: RequestHead,
        response: http::response::Parts,
        body: ProxyBody,
    ) -> ProxyBody {
        let state = StreamState { chain: self, head, response, body, done: false };
        let stream = futures_util::stream::unfold(state, next_chunk);
        body::boxed(StreamBody::new(stream))
    }
}

/// What a streamed response body carries between chunks.
struct StreamState {
    chain: FilterChain,
    head: RequestHead,
    response: http::response::Parts,
    body: ProxyBody,
    done: bool,
}

/// Reads the next upstream chunk and passes it through the body filters.
async fn next_chunk(mut state: StreamState) -> Option<(Result<Frame<Bytes>, BoxError>, StreamState)> {
    if state.done {
        return None;
    }
    loop {
        let (chunk, end) = match state.body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => (data, false),
                // Trailers are not passed through filters; drop them.
                Err(_) => continue,
            },
            Some(Err(error)) => {
                state.done = true;
                return Some((Err(error), state));
            }
            None => (Bytes::new(), true),
        };
        let filtered = state.chain.on_response_chunk(&mut state.head, &mut state.response, chunk, end).await;
        state.done = end;
        match filtered {
            Ok(data) if data.is_empty() && !end => continue,
            Ok(data) => return Some((Ok(Frame::data(data)), state)),
            Err(error) => {
                state.done = true;
                return Some((Err(Box::new(error) as BoxError), state));
            }
        }
    }
}

/// The span of one filter call, inside the request's span.
fn call_span(instance: &FilterInstance, phase: &'static str) -> tracing::Span {
    let spec = &instance.pool().spec;
    tracing::debug_span!("filter", filter = %spec.name, tenant = %spec.tenant.name, phase)
}

/// The trace span of one filter call, when the request's trace is recorded.
fn trace_call(trace: Option<&SharedTrace>, instance: &mut FilterInstance, phase: &'static str) -> Option<ChildSpan> {
    use opentelemetry::KeyValue;
    let trace = trace?;
    let spec = &instance.pool().spec;
    let mut span = trace.child(format!("filter {}", spec.name), opentelemetry::trace::SpanKind::Internal);
    span.annotate(|| {
        vec![
            KeyValue::new("sluice.filter.name", spec.name.to_string()),
            KeyValue::new("sluice.filter.phase", phase),
            KeyValue::new("sluice.plugin.name", spec.plugin.name.to_string()),
            KeyValue::new("sluice.plugin.digest", spec.plugin.digest.clone()),
            KeyValue::new("sluice.tenant", spec.tenant.name.to_string()),
        ]
    });
    if let Some(trace) = span.call_trace() {
        instance.trace_next_call(trace);
    }
    Some(span)
}

/// What a call decided, as its span says it.
trait Decision {
    /// `continue`, `respond`, `pass` or `replace`, and the status of a local response.
    fn decision(&self) -> (&'static str, Option<u16>);
}

impl Decision for HeadOutcome {
    fn decision(&self) -> (&'static str, Option<u16>) {
        match self {
            Self::Continue => ("continue", None),
            Self::Respond(response) => ("respond", Some(response.status().as_u16())),
        }
    }
}

impl Decision for BodyOutcome {
    fn decision(&self) -> (&'static str, Option<u16>) {
        match self {
            Self::Pass => ("pass", None),
            Self::Replace(_) => ("replace", None),
            Self::Respond(response) => ("respond", Some(response.status().as_u16())),
        }
    }
}

/// Counts a filter call that began at `started` in its live figures, and ends its span, when
/// traced, with its guest CPU time, what the guest added to it, and its decision or failure.
fn end_call<T: Decision>(
    live: &FilterLive,
    started: Instant,
    span: Option<ChildSpan>,
    instance: &mut FilterInstance,
    outcome: &Result<T, FilterError>,
) {
    use opentelemetry::KeyValue;
    live.record_call(started.elapsed(), outcome.is_err());
    let Some(mut span) = span else { return };
    let report = instance.take_last_call();
    span.annotate(|| {
        let cpu_us = i64::try_from(report.guest_cpu.as_micros()).unwrap_or(i64::MAX);
        let mut attributes = vec![KeyValue::new("sluice.filter.guest_cpu_us", cpu_us)];
        if let Some(notes) = &report.trace_notes {
            // The guest's own attributes, under names it chose (never `sluice.`: the runtime
            // drops those).
            attributes.extend(notes.attributes.iter().map(|(key, value)| KeyValue::new(key.clone(), value.clone())));
            if notes.dropped > 0 {
                attributes.push(KeyValue::new("sluice.filter.trace_dropped", i64::from(notes.dropped)));
            }
        }
        attributes
    });
    if let Some(notes) = report.trace_notes {
        for event in notes.events {
            let attributes = event.attributes.into_iter().map(|(key, value)| KeyValue::new(key, value)).collect();
            span.add_event(event.name, attributes);
        }
    }
    match outcome {
        Ok(outcome) => {
            let (decision, status) = outcome.decision();
            span.annotate(|| {
                let mut attributes = vec![KeyValue::new("sluice.filter.decision", decision)];
                if let Some(status) = status {
                    attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
                }
                attributes
            });
        }
        Err(error) => {
            span.annotate(|| {
                vec![KeyValue::new("sluice.filter.decision", "error"), KeyValue::new("error.type", error.kind_name())]
            });
            span.fail(|| error.kind.to_string());
        }
    }
}

fn log_failure(services: &HostServices, error: &FilterError, tenant: &str, request_id: &str, policy: FailurePolicy) {
    let policy = match policy {
        FailurePolicy::FailClosed => "fail-closed",
        FailurePolicy::FailOpen => "fail-open",
    };
    let labels = vec![
        ("route".to_owned(), error.route.to_string()),
        ("filter".to_owned(), error.filter.to_string()),
        ("tenant".to_owned(), tenant.to_owned()),
        ("kind".to_owned(), error.kind_name().to_owned()),
    ];
    services.failures.get_or_create(&labels).inc();
    tracing::error!(
        target: "sluice::filter",
        route = %error.route,
        filter = %error.filter,
        tenant = tenant,
        request_id = request_id,
        policy,
        error.kind = error.kind_name(),
        guest_message = error.guest_message.as_deref().unwrap_or(""),
        "filter failed: {}", error.kind
    );
}

/// Collects a body up to `limit` bytes; `None` past it.
pub(crate) async fn collect_limited(mut body: ProxyBody, limit: usize) -> Result<Option<Bytes>, BoxError> {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if collected.len() + data.len() > limit {
                return Ok(None);
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(Some(collected.freeze()))
}

/// Sets `Content-Length` for a body the host now holds whole.
pub(crate) fn set_content_length(headers: &mut http::HeaderMap, length: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// A copy of the request head for the response phases, made only when some filter has them
/// (the original goes upstream).
pub(crate) fn copy_request_head(head: &RequestHead) -> RequestHead {
    let mut copy = Request::new(());
    *copy.method_mut() = head.parts.method.clone();
    *copy.uri_mut() = head.parts.uri.clone();
    *copy.version_mut() = head.parts.version;
    *copy.headers_mut() = head.parts.headers.clone();
    RequestHead { parts: copy.into_parts().0, cache_key: head.cache_key.clone() }
}

/// A copy of the response head for streamed body phases.
pub(crate) fn copy_response_head(parts: &http::response::Parts) -> http::response::Parts {
    let mut copy = Response::new(());
    *copy.status_mut() = parts.status;
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    copy.into_parts().0
}
