//! The one value a request carries through its phases: who it is (id, connection, the snapshot
//! it runs on), what the phases have decided so far (route, filters, cache, upstream attempt,
//! error), and what its access log line will say.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Version};
use sluice_cache::{CacheStatus, FillTicket};
use sluice_http::InFlight;

use super::ConnectionInfo;
use super::errors::ProxyError;
use super::filters::FilterChain;
use crate::config::Snapshot;
use crate::routing::Route;
use crate::telemetry::traces::RequestTrace;

/// Everything the phases know about one request.
pub(crate) struct RequestState {
    /// The request's id: the client's `X-Request-Id` when usable, else a new one.
    pub(crate) id: sluice_http::RequestId,
    /// When its head arrived.
    pub(crate) started: Instant,
    /// The configuration it runs on, loaded once: it finishes on it whatever reloads happen.
    pub(crate) snapshot: Arc<Snapshot>,
    /// The connection it came on.
    pub(crate) connection: Arc<ConnectionInfo>,
    /// The client's address as Sluice sees it: the peer's, or the forwarded one when the peer is
    /// a trusted proxy.
    pub(crate) client: std::net::IpAddr,
    /// Where the client is, when `[geoip]` is configured (looked up in the access phase).
    pub(crate) location: sluice_access::Location,
    /// The method, path and version the client sent, for the log.
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) version: Version,
    /// What the client accepts, for response compression.
    pub(crate) accept_encoding: Option<HeaderValue>,
    /// The route that took it.
    pub(crate) route: Option<Arc<Route>>,
    /// The route's filters, checked out for this request.
    pub(crate) filters: Option<FilterChain>,
    /// The upstream it was sent to and the server that answered (or failed).
    pub(crate) upstream: Option<Arc<str>>,
    pub(crate) server: Option<String>,
    /// How the cache handled it, on caching routes.
    pub(crate) cache: Option<CacheStatus>,
    /// Stores the response as it streams, when it fills the cache.
    pub(crate) fill: Option<FillTicket>,
    /// The response is a stored one: compressed, if at all, before it was stored.
    pub(crate) from_cache: bool,
    /// Why it failed, when it did.
    pub(crate) error: Option<ProxyError>,
    /// The request's span: every event of its phases is recorded inside it.
    pub(crate) span: tracing::Span,
    /// Its distributed trace, when `[tracing]` is configured (ended with its log line).
    pub(crate) trace: Option<RequestTrace>,
    /// Counts the request as in flight on its connection until the response body has gone.
    pub(crate) in_flight: Option<InFlight>,
}

impl RequestState {
    /// The state of a request whose head just arrived.
    pub(crate) fn new<B>(snapshot: Arc<Snapshot>, connection: Arc<ConnectionInfo>, request: &Request<B>) -> Self {
        let id = sluice_http::request_id(request.headers());
        let client = super::forwarding::client_address(
            connection.peer.ip(),
            request.headers(),
            &snapshot.server.trusted_proxies,
        );
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let span = tracing::info_span!(
            "request",
            otel.kind = "server",
            http.request.method = %method,
            url.path = %path,
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            request_id = %id,
        );
        let trace = snapshot.tracing.as_ref().map(|tracing| {
            let trace = tracing.start_request(request.headers(), &method);
            trace.annotate(|| server_span_attributes(request, &connection, client, &id));
            trace
        });
        Self {
            in_flight: Some(connection.activity.request_started()),
            id,
            started: Instant::now(),
            snapshot,
            connection,
            client,
            location: sluice_access::Location::default(),
            method,
            path,
            version: request.version(),
            accept_encoding: request.headers().get(header::ACCEPT_ENCODING).cloned(),
            route: None,
            filters: None,
            upstream: None,
            server: None,
            cache: None,
            fill: None,
            from_cache: false,
            error: None,
            span,
            trace,
        }
    }

    /// The state of a background refresh of a stale cache entry served to `client`: the same
    /// request, id and route, going upstream on its own. It takes the client request's filters,
    /// which run its response phase, and stores the variant `accept_encoding` (the filtered
    /// request's) asks for.
    pub(crate) fn refresh_of(client: &mut Self, accept_encoding: Option<HeaderValue>) -> Self {
        let span = tracing::info_span!(parent: &client.span, "cache refresh", request_id = %client.id);
        Self {
            id: client.id.clone(),
            started: Instant::now(),
            snapshot: client.snapshot.clone(),
            connection: client.connection.clone(),
            client: client.client,
            location: client.location.clone(),
            method: Method::GET,
            path: client.path.clone(),
            version: client.version,
            accept_encoding,
            route: client.route.clone(),
            filters: client.filters.take(),
            upstream: None,
            server: None,
            cache: None,
            fill: None,
            from_cache: false,
            error: None,
            span,
            trace: None,
            in_flight: None,
        }
    }

    /// The route took the request.
    pub(crate) fn routed(&mut self, route: &Arc<Route>) {
        self.span.record("http.route", &*route.name);
        if let Some(trace) = &self.trace {
            trace.rename(|| format!("{} {}", self.method, route.name));
            trace.annotate(|| {
                vec![
                    opentelemetry::KeyValue::new("http.route", route.name.to_string()),
                    opentelemetry::KeyValue::new("sluice.tenant", route.tenant.name.to_string()),
                ]
            });
        }
        self.route = Some(route.clone());
    }

    /// The cache answered with a stored response.
    pub(crate) fn answered_from_cache(&mut self, status: CacheStatus) {
        self.from_cache = true;
        self.cache = Some(status);
    }

    /// The route's name, or empty before one matched.
    pub(crate) fn route_name(&self) -> &str {
        self.route.as_ref().map_or("", |route| &route.name)
    }
}

/// The server span's attributes (HTTP semantic conventions), for a recorded request.
fn server_span_attributes<B>(
    request: &Request<B>,
    connection: &ConnectionInfo,
    client: std::net::IpAddr,
    id: &sluice_http::RequestId,
) -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::KeyValue;
    let version = super::finish::protocol_version(request.version());
    let mut attributes = vec![
        KeyValue::new("http.request.method", request.method().as_str().to_owned()),
        KeyValue::new("url.path", request.uri().path().to_owned()),
        KeyValue::new("url.scheme", connection.scheme),
        KeyValue::new("network.protocol.name", "http"),
        KeyValue::new("network.protocol.version", version),
        KeyValue::new("client.address", client.to_string()),
        KeyValue::new("network.peer.address", connection.peer.ip().to_string()),
        KeyValue::new("network.peer.port", i64::from(connection.peer.port())),
        KeyValue::new("sluice.listener", connection.listener.to_string()),
        KeyValue::new("sluice.request_id", id.to_string()),
    ];
    if let Some(agent) = request.headers().get(header::USER_AGENT).and_then(|agent| agent.to_str().ok()) {
        attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
    }
    if let Some(host) = request.uri().host().or_else(|| {
        request.headers().get(header::HOST).and_then(|host| host.to_str().ok()).map(|host| {
            host.rsplit_once(':').filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h)
        })
    }) {
        attributes.push(KeyValue::new("server.address", host.to_owned()));
    }
    attributes
}
