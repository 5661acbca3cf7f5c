//! Phase 8, finishing: the one function that completes every response, the client's and a
//! background cache refresh's alike (compression, cache fill, `Cache-Status`, the request id,
//! HSTS), and the access log line and metrics, written once per client request when its response
//! body has gone, whatever became of it.

use std::sync::Arc;

use http::header;
use http::{HeaderName, Response};
use sluice_http::body::{self, BodyOutcome, BoxError, ObservedBody, ProxyBody};
use sluice_http::{X_REQUEST_ID, compression};

use super::errors::{ProxyError, Side};
use super::state::RequestState;
use crate::telemetry::metrics::{CacheLabels, ErrorLabels, Metrics, Name};

/// Completes `response` for the request `state` describes.
pub(crate) fn finish_response(mut response: Response<ProxyBody>, state: &mut RequestState) -> Response<ProxyBody> {
    // The filters' instances go back to their pools now; only a streaming response body keeps
    // the ones it runs through.
    state.filters = None;
    let compression = state.route.as_ref().and_then(|route| route.compression.as_ref()).filter(|_| !state.from_cache);
    if let Some(settings) = compression {
        response = compression::compress(response, settings, &state.method, state.accept_encoding.as_ref());
    }
    if let Some(ticket) = state.fill.take() {
        let stored;
        (response, stored) = ticket.store(response);
        if let Some(status) = &mut state.cache {
            status.stored = stored.is_ok();
            status.detail = stored.err().map(sluice_cache::policy::NotStored::detail);
        }
    }
    if let Some(status) = &state.cache {
        response.headers_mut().insert(HeaderName::from_static("cache-status"), status.header_value());
    }
    response.headers_mut().insert(X_REQUEST_ID, state.id.header_value());
    if let Some(alt_svc) = &state.connection.alt_svc
        && state.route.as_ref().is_none_or(|route| route.alt_svc)
        && !response.headers().contains_key(header::ALT_SVC)
    {
        response.headers_mut().insert(header::ALT_SVC, alt_svc.clone());
    }
    if let Some(hsts) = &state.connection.hsts {
        response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    response
}

/// A request until its response is handed to the client. When the client leaves before that,
/// its connection drops the request midway, and with it this: dropping it writes the request's
/// log line and metrics all the same (status 499, `client_closed`), so every request is logged
/// once whatever becomes of it.
pub(crate) struct Unanswered {
    state: Option<RequestState>,
    metrics: Arc<Metrics>,
}

impl Unanswered {
    pub(crate) fn new(state: RequestState, metrics: Arc<Metrics>) -> Self {
        Self { state: Some(state), metrics }
    }

    /// The request's state, while it is unanswered.
    pub(crate) fn state(&mut self) -> &mut RequestState {
        self.state.as_mut().expect("an unanswered request has its state until delivered")
    }

    /// Hands `response` over (see [`deliver`]).
    pub(crate) fn deliver(mut self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        let state = self.state.take().expect("a request is delivered once");
        deliver(response, state, &self.metrics)
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(mut state) = self.state.take() {
            state.filters = None;
            state.fill = None;
            state.error = Some(ProxyError::ClientClosed);
            let status = ProxyError::ClientClosed.status().as_u16();
            record(&self.metrics, &mut state, status, BodyOutcome { bytes: 0, complete: false });
        }
    }
}

/// What a response body's failure after its head had gone was, for the log line.
fn stream_failure(error: &BoxError) -> ProxyError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**error);
    while let Some(error) = cause {
        if let Some(filter) = error.downcast_ref::<sluice_runtime::FilterError>() {
            return ProxyError::ResponseBodyFailed { side: Side::Filter, kind: "filter", message: filter.to_string() };
        }
        cause = error.source();
    }
    ProxyError::ResponseBodyFailed { side: Side::Upstream, kind: "upstream_body", message: error.to_string() }
}

/// Hands `response` to the client; the access log line and metrics are written when its body
/// has gone (or the client left), with the body's failure if it failed.
pub(crate) fn deliver(
    response: Response<ProxyBody>,
    state: RequestState,
    metrics: &Arc<Metrics>,
) -> Response<ProxyBody> {
    let status = response.status();
    state.span.record("http.response.status_code", status.as_u16());
    if let Some(cache) = &state.cache {
        let route = route_label(&state);
        metrics.cache_lookups.get_or_create(&CacheLabels { route, result: cache.result() }).inc();
        if let Some(taken) = &state.route {
            taken.live.record_cache(cache.result());
        }
    }
    let metrics = metrics.clone();
    let (parts, body) = response.into_parts();
    let mut state = state;
    let activity = state.connection.activity.clone();
    let observed = ObservedBody::new(body, move |end: BodyOutcome, failure: Option<&BoxError>| {
        drop(state.in_flight.take());
        if let Some(failure) = failure
            && state.error.is_none()
        {
            state.error = Some(stream_failure(failure));
        }
        record(&metrics, &mut state, status.as_u16(), end);
    })
    .reporting_to(activity);
    Response::from_parts(parts, body::boxed(observed))
}

/// The empty label value, for a request no route or upstream took; shared, not made per request.
fn no_name() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// The route label: the route's own name, shared.
fn route_label(state: &RequestState) -> Name {
    Name(state.route.as_ref().map_or_else(no_name, |route| route.name.clone()))
}

/// Writes the access log line and the request's metrics, and ends its trace.
fn record(metrics: &Metrics, state: &mut RequestState, status: u16, end: BodyOutcome) {
    if let Some(trace) = state.trace.take() {
        trace.annotate(|| {
            let mut attributes = vec![opentelemetry::KeyValue::new(
                "http.response.body.size",
                i64::try_from(end.bytes).unwrap_or(i64::MAX),
            )];
            if let Some(cache) = &state.cache {
                attributes.push(opentelemetry::KeyValue::new("sluice.cache.result", cache.result()));
            }
            attributes
        });
        trace.end(status, state.error.as_ref().map(ProxyError::kind));
    }
    let state = &*state;
    let _in_request = state.span.enter();
    let elapsed = state.started.elapsed();
    let route = route_label(state);
    let upstream = Name(state.upstream.clone().unwrap_or_else(no_name));
    match &state.route {
        Some(taken) => {
            taken.figures.record(metrics, &route, &upstream, status, elapsed.as_secs_f64());
            taken.usage.record_request(end.bytes);
            taken.live.record_request(status, elapsed);
        }
        None => metrics.record_request(&route, &upstream, status, elapsed.as_secs_f64()),
    }

    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let error = state.error.as_ref();
    if let Some(error) = error {
        metrics.errors.get_or_create(&ErrorLabels { route, kind: error.kind() }).inc();
    }
    let side = error.map(|error| match error.side() {
        Side::Client => "client",
        Side::Upstream => "upstream",
        Side::Filter => "filter",
        Side::Internal => "internal",
    });
    // `None` fields are left out of the event: successful requests carry no error fields.
    tracing::event!(
        target: "sluice::access",
        tracing::Level::INFO,
        http.request.method = %state.method,
        network.protocol.version = protocol_version(state.version),
        url.path = state.path,
        http.response.status_code = status,
        http.response.body.size = end.bytes,
        complete = end.complete,
        duration_ms,
        route = state.route_name(),
        upstream = state.upstream.as_deref().unwrap_or(""),
        server.address = state.server.as_deref().unwrap_or(""),
        client.address = %state.client,
        network.peer.address = %state.connection.peer.ip(),
        client.geo.country_iso_code = state.location.country.as_ref().map(|country| country.as_str()),
        client.as.number = state.location.asn,
        request_id = %state.id,
        error.kind = error.map(ProxyError::kind),
        error.side = side,
        // One line: a filter's trap carries its wasm backtrace, which its own failure event has
        // already logged.
        error.message = error.map(|error| error.to_string().lines().next().unwrap_or_default().to_owned()),
        "{}",
        if error.is_some() { "request failed" } else { "request" }
    );
}

/// The HTTP version as OpenTelemetry's `network.protocol.version` writes it.
pub(super) fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
