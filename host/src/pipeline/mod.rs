//! One request's journey: snapshot, request id, route, forward (or redirect), response hygiene,
//! then the access log line and metrics once the response body has gone.

mod caching;
pub mod compression;
mod errors;
mod filters;
pub mod forwarding;
mod request_id;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use errors::{ProxyError, Side, error_response, local_response};
pub use request_id::{new_request_id, request_id};

use crate::admin::metrics::CacheLabels;
use crate::admin::metrics::{ErrorLabels, Metrics, Name, RequestLabels, RouteLabels};
use crate::body::{self, BodyOutcome, LimitedBody, ObservedBody, ProxyBody};
use crate::cache::{self, CacheStatus, FillTicket, HttpCache};
use crate::config::Snapshot;
use crate::routing::{Mirror, RequestFacts, Route, RouteAction, normalize_host};
use crate::runtime::{CallContext, HeadOutcome, Phases, RequestHead};
use crate::server::ConnectionActivity;
use crate::upstream::{Outgoing, SendError};
use caching::{Answer, Lookup};
use filters::{ChainBody, FilterChain};
use forwarding::{ClientSide, X_REQUEST_ID};

/// What the pipeline knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The verified client certificate's identity (mutual TLS).
    pub client_identity: Option<Arc<str>>,
    /// `Strict-Transport-Security` for every response on this connection.
    pub hsts: Option<HeaderValue>,
    /// Redirect every request to HTTPS on this port.
    pub redirect_to_https: Option<u16>,
    /// In-flight and idle tracking for the connection.
    pub activity: Arc<ConnectionActivity>,
}

/// Tunnels (upgraded connections) outlive their request; they are tracked so that shutdown can
/// wait for them and, past its deadline, cut them.
#[derive(Debug, Clone, Default)]
pub struct Tunnels {
    /// Every open tunnel.
    pub tracker: TaskTracker,
    /// Cancelled when open tunnels must close now.
    pub close_now: CancellationToken,
}

/// The request handler shared by every connection.
#[derive(Debug, Clone)]
pub struct Proxy {
    snapshot: Arc<ArcSwap<Snapshot>>,
    metrics: Arc<Metrics>,
    tunnels: Tunnels,
    cache: Arc<HttpCache>,
}

/// What the access log and metrics record about a request, filled in along the way.
struct Outcome {
    request_id: String,
    route: Option<Arc<str>>,
    /// The matched route's compression settings.
    compression: Option<Arc<compression::CompressionSettings>>,
    upstream: Option<Arc<str>>,
    server: Option<String>,
    error: Option<ProxyError>,
    /// How the cache handled it, on caching routes.
    cache: Option<CacheStatus>,
    /// Stores the response as it streams, when it fills the cache.
    fill: Option<FillTicket>,
}

impl Outcome {
    fn new(request_id: String) -> Self {
        Self {
            request_id,
            route: None,
            compression: None,
            upstream: None,
            server: None,
            error: None,
            cache: None,
            fill: None,
        }
    }

    /// The response came from the cache: it was compressed, if at all, before it was stored.
    fn answered_from_cache(&mut self, status: CacheStatus) {
        self.compression = None;
        self.cache = Some(status);
    }
}

/// A request past its request phase, with what it needs to go upstream and come back through
/// the response phase, on this task or (refreshing a stale cache entry) a background one.
struct Leg {
    snapshot: Arc<Snapshot>,
    route: Arc<Route>,
    connection: Arc<ConnectionInfo>,
    head: RequestHead,
    body: ProxyBody,
    chain: Option<FilterChain>,
    authority: Option<String>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    too_large: Arc<AtomicBool>,
}

impl Proxy {
    /// A handler serving whatever snapshot `snapshot` holds when each request starts.
    pub fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        metrics: Arc<Metrics>,
        tunnels: Tunnels,
        cache: Arc<HttpCache>,
    ) -> Self {
        Self { snapshot, metrics, tunnels, cache }
    }

    /// Serves one request to completion of its response head; the body streams afterwards.
    pub async fn handle(self, request: Request<Incoming>, connection: Arc<ConnectionInfo>) -> Response<ProxyBody> {
        let started = Instant::now();
        let in_flight = connection.activity.request_started();
        let snapshot = self.snapshot.load_full();
        let method = request.method().clone();
        let version = request.version();
        let path = request.uri().path().to_owned();
        let accept_encoding = request.headers().get(header::ACCEPT_ENCODING).cloned();
        let mut outcome = Outcome::new(request_id(request.headers()));

        let mut response = match self.route_and_forward(&snapshot, request, &connection, &mut outcome).await {
            Ok(response) => response,
            Err(error) => {
                let mut response = error_response(&error, &outcome.request_id);
                // After a malformed request the connection's framing cannot be trusted: close it.
                if matches!(error, ProxyError::BadRequest(_) | ProxyError::MethodNotAllowed)
                    && version < Version::HTTP_2
                {
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                outcome.error = Some(error);
                outcome.fill = None;
                response
            }
        };
        if let Some(settings) = &outcome.compression {
            response = compression::compress(response, settings, &method, accept_encoding.as_ref());
        }
        if let Some(ticket) = outcome.fill.take() {
            let stored;
            (response, stored) = ticket.store(response);
            if let Some(status) = &mut outcome.cache {
                status.stored = stored.is_ok();
                status.detail = stored.err().map(cache::policy::NotStored::detail);
            }
        }
        if let Some(status) = &outcome.cache {
            response.headers_mut().insert(http::HeaderName::from_static("cache-status"), status.header_value());
            let route = Name(outcome.route.clone().unwrap_or_else(|| Arc::from("")));
            self.metrics.cache_lookups.get_or_create(&CacheLabels { route, result: status.result() }).inc();
        }
        if let Ok(id) = HeaderValue::try_from(outcome.request_id.as_str()) {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        if let Some(hsts) = &connection.hsts {
            response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }

        let status = response.status();
        let metrics = self.metrics.clone();
        let peer = connection.peer;
        let (parts, body) = response.into_parts();
        let observed = ObservedBody::new(body, move |end: BodyOutcome| {
            drop(in_flight);
            record(&metrics, &outcome, &method, &path, status, peer, started, end);
        });
        Response::from_parts(parts, body::boxed(observed))
    }

    async fn route_and_forward(
        &self,
        snapshot: &Arc<Snapshot>,
        mut request: Request<Incoming>,
        connection: &Arc<ConnectionInfo>,
        outcome: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if request.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed);
        }
        let authority = request_authority(&request)?;
        if let Some(port) = connection.redirect_to_https {
            let host = authority.as_deref().map(normalize_host).unwrap_or_else(|| "localhost".to_owned());
            let host = if port == 443 { host } else { format!("{host}:{port}") };
            let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
            return Ok(redirect_response(StatusCode::PERMANENT_REDIRECT, &format!("https://{host}{path_and_query}")));
        }
        let host = authority.as_deref().map(normalize_host).unwrap_or_default();
        let path = normalize_path(request.uri().path()).ok_or(ProxyError::BadRequest("invalid path"))?;
        let query = request.uri().query().map(str::to_owned);

        let facts = RequestFacts { host: &host, path: &path, method: request.method(), headers: request.headers() };
        let route = snapshot.routes.match_request(&facts).ok_or(ProxyError::NoRoute)?.clone();
        outcome.route = Some(route.name.clone());
        outcome.compression = route.compression.clone();

        let declared_length = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared_length.is_some_and(|length| length > route.max_body_bytes) {
            return Err(ProxyError::BodyTooLarge { limit: route.max_body_bytes });
        }

        let client_upgrade = forwarding::requested_upgrade(request.headers())
            .filter(|_| request.version() == Version::HTTP_11)
            .map(|_| hyper::upgrade::on(&mut request));

        let (mut parts, incoming) = request.into_parts();
        // Filters and the upstream see the path that routing saw.
        if parts.uri.path() != path {
            let with_query = match &query {
                Some(query) => format!("{path}?{query}"),
                None => path.clone(),
            };
            let mut uri_parts = std::mem::take(&mut parts.uri).into_parts();
            uri_parts.path_and_query =
                Some(PathAndQuery::try_from(with_query).map_err(|_| ProxyError::BadRequest("invalid path"))?);
            parts.uri = Uri::from_parts(uri_parts).map_err(|_| ProxyError::BadRequest("invalid path"))?;
        }
        let mut head = RequestHead { parts, cache_key: None };
        let too_large = Arc::new(AtomicBool::new(false));
        let mut body = body::boxed(LimitedBody::new(incoming, route.max_body_bytes, too_large.clone()));

        let mut chain = None;
        if !route.filters.is_empty() {
            let context = CallContext {
                route: route.name.clone(),
                filter: Arc::from(""),
                tenant: route.tenant.clone(),
                request_id: Arc::from(outcome.request_id.as_str()),
                client_ip: connection.peer.ip(),
                client_identity: connection.client_identity.clone(),
                upstreams: snapshot.upstreams.clone(),
            };
            let mut filters = FilterChain::checkout(&route, &context).await?;
            if let HeadOutcome::Respond(response) = filters.on_request(&mut head).await? {
                return Ok(response);
            }
            if filters.wants(Phases::REQUEST_BODY) {
                let bytes = match filters::collect_limited(body, route.max_filter_body_bytes).await {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => return Err(ProxyError::BodyTooLarge { limit: route.max_filter_body_bytes as u64 }),
                    Err(_) if too_large.load(Ordering::Relaxed) => {
                        return Err(ProxyError::BodyTooLarge { limit: route.max_body_bytes });
                    }
                    Err(_) => return Err(ProxyError::BadRequest("the request body could not be read")),
                };
                match filters.on_request_body(&mut head, bytes).await? {
                    ChainBody::Respond(response) => return Ok(response),
                    ChainBody::Body(bytes) => {
                        filters::set_content_length(&mut head.parts.headers, bytes.len());
                        body = body::full(bytes);
                    }
                }
            }
            chain = Some(filters);
        }

        if let RouteAction::Redirect(redirect) = &route.action {
            let host_for_location = authority.as_deref().unwrap_or("localhost");
            let location = redirect.location(connection.scheme, host_for_location, &path, query.as_deref());
            return Ok(redirect_response(redirect.status, &location));
        }

        let mut leg = Leg {
            snapshot: snapshot.clone(),
            route,
            connection: connection.clone(),
            head,
            body,
            chain,
            authority,
            client_upgrade,
            too_large,
        };
        let Some(settings) = leg.route.cache.clone() else {
            return self.forward(leg, outcome).await;
        };
        let default_key =
            cache::default_key(&host, leg.head.parts.uri.path_and_query().map_or("/", PathAndQuery::as_str));
        let forwarding = match caching::lookup(&self.cache, &settings, &leg.route, &mut leg.head, default_key).await {
            Lookup::Answer(response, status) => {
                outcome.answered_from_cache(status);
                return Ok(response);
            }
            Lookup::StaleAndRefresh { response, status, refresh } => {
                outcome.answered_from_cache(status);
                if let Some(ticket) = refresh {
                    self.refresh_in_background(leg, ticket, outcome.request_id.clone());
                }
                return Ok(response);
            }
            Lookup::Forward(forwarding) => forwarding,
        };
        let head_only = leg.head.parts.method == Method::HEAD;
        let forwarded = self.forward(leg, outcome).await;
        match caching::after_forward(forwarded, forwarding, head_only)? {
            Answer::FromCache(response, status) => {
                outcome.answered_from_cache(status);
                Ok(response)
            }
            Answer::FromOrigin(response, status, ticket) => {
                outcome.cache = Some(status);
                outcome.fill = ticket;
                Ok(response)
            }
        }
    }

    /// Sends the request on to the route's upstream and runs the response phase.
    async fn forward(&self, leg: Leg, outcome: &mut Outcome) -> Result<Response<ProxyBody>, ProxyError> {
        let Leg { snapshot, route, connection, head, body, chain, authority, client_upgrade, too_large } = leg;
        let RouteAction::Forward { backends, mirror, rewrite, timeout, preserve_host } = &route.action else {
            unreachable!("redirects are answered before forwarding")
        };
        let (upstream, timeout, preserve_host) = (backends.pick(), *timeout, *preserve_host);
        outcome.upstream = Some(upstream.name.clone());

        let upstream_path = head.parts.uri.path().to_owned();
        let path_and_query = PathAndQuery::try_from(rewrite.apply(&upstream_path, head.parts.uri.query()))
            .map_err(|_| ProxyError::BadRequest("invalid path after rewrite"))?;

        // Response phases read the request head, which goes upstream: keep a copy, only if asked.
        let head_for_response = chain
            .as_ref()
            .filter(|chain| chain.wants(Phases::RESPONSE_HEADERS) || chain.wants(Phases::RESPONSE_BODY))
            .map(|_| filters::copy_request_head(&head));
        let mut parts = head.parts;
        parts.version = Version::HTTP_11;
        let client_side =
            ClientSide { peer: connection.peer.ip(), scheme: connection.scheme, host: authority.as_deref() };
        forwarding::prepare_upstream_request(&mut parts.headers, &client_side, &snapshot.server);
        let preserve_host = match (&authority, preserve_host) {
            (Some(authority), true) => match HeaderValue::try_from(authority.as_str()) {
                Ok(host_header) => {
                    parts.headers.insert(header::HOST, host_header);
                    true
                }
                Err(_) => false,
            },
            _ => false,
        };
        if let Ok(id) = HeaderValue::try_from(outcome.request_id.as_str()) {
            parts.headers.insert(X_REQUEST_ID, id);
        }
        if let Some(mirror) =
            mirror.as_ref().filter(|mirror| http_body::Body::is_end_stream(&body) && mirror.takes_this_one())
        {
            mirror_request(mirror, &parts, &path_and_query, preserve_host, connection.peer.ip(), timeout);
        }
        let outgoing = Outgoing { parts, path_and_query, body, preserve_host };
        let deadline = Instant::now() + timeout;
        let (mut response, server_name) = match upstream.send(outgoing, connection.peer.ip(), deadline).await {
            Ok(answer) => answer,
            Err(error) => {
                return Err(match error {
                    SendError::Overflow { limit } => ProxyError::UpstreamOverflow { limit },
                    _ if too_large.load(Ordering::Relaxed) => ProxyError::BodyTooLarge { limit: route.max_body_bytes },
                    SendError::Timeout { server, timeout_ms } => {
                        outcome.server = Some(server.clone());
                        ProxyError::UpstreamTimeout { server, timeout_ms }
                    }
                    SendError::Connect { server, reason } => {
                        outcome.server = Some(server.clone());
                        ProxyError::UpstreamConnect { server, reason }
                    }
                    SendError::Failed { server, reason } => {
                        outcome.server = Some(server.clone());
                        ProxyError::UpstreamFailed { server, reason }
                    }
                });
            }
        };
        outcome.server = Some(server_name.clone());

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            match client_upgrade {
                Some(client_upgrade) => {
                    self.open_tunnel(client_upgrade, hyper::upgrade::on(&mut response), &route, outcome)
                }
                None => {
                    return Err(ProxyError::UpstreamFailed {
                        server: server_name,
                        reason: "switched protocols without being asked to".into(),
                    });
                }
            }
        }
        forwarding::prepare_client_response(response.headers_mut(), switching, &snapshot.server);
        let (Some(mut chain), Some(mut request_head)) = (chain, head_for_response) else {
            return Ok(response.map(body::boxed));
        };
        let (mut response_parts, upstream_body) = response.into_parts();
        if let HeadOutcome::Respond(local) = chain.on_response(&mut request_head, &mut response_parts).await? {
            return Ok(local);
        }
        let mut body = body::boxed(upstream_body);
        if chain.wants_buffered_response_body() {
            let bytes = match filters::collect_limited(body, route.max_filter_body_bytes).await {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    return Err(ProxyError::UpstreamFailed {
                        server: server_name,
                        reason: format!(
                            "response body exceeds the filter body limit of {} bytes",
                            route.max_filter_body_bytes
                        ),
                    });
                }
                Err(error) => {
                    return Err(ProxyError::UpstreamFailed { server: server_name, reason: error.to_string() });
                }
            };
            match chain.on_response_body_buffered(&mut request_head, &mut response_parts, bytes).await? {
                ChainBody::Respond(local) => return Ok(local),
                ChainBody::Body(bytes) => {
                    filters::set_content_length(&mut response_parts.headers, bytes.len());
                    body = body::full(bytes);
                }
            }
        } else if chain.wants(Phases::RESPONSE_BODY) {
            // Filters may change the body's length as it streams.
            response_parts.headers.remove(header::CONTENT_LENGTH);
            let response_head = filters::copy_response_head(&response_parts);
            body = chain.stream_response_body(request_head, response_head, body);
        }
        Ok(Response::from_parts(response_parts, body))
    }

    /// Refreshes a stale entry served to the client already: the request goes upstream on its
    /// own task, and its answer runs through the response phase and compression as a client's
    /// would before it is stored.
    fn refresh_in_background(&self, leg: Leg, forwarding: caching::Forwarding, request_id: String) {
        let proxy = self.clone();
        let accept_encoding = leg.head.parts.headers.get(header::ACCEPT_ENCODING).cloned();
        let compression = leg.route.compression.clone();
        tokio::spawn(async move {
            let mut outcome = Outcome::new(request_id);
            let forwarded = proxy.forward(leg, &mut outcome).await;
            let (mut response, ticket) = match caching::after_forward(forwarded, forwarding, false) {
                Ok(Answer::FromOrigin(response, _, Some(ticket))) => (response, ticket),
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(request_id = %outcome.request_id, %error, "background cache refresh failed");
                    return;
                }
            };
            if let Some(settings) = &compression {
                response = compression::compress(response, settings, &Method::GET, accept_encoding.as_ref());
            }
            let (response, _) = ticket.store(response);
            // Reading the body to its end is what stores it.
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        });
    }

    /// Once both sides have switched protocols, copies bytes both ways until either side closes.
    fn open_tunnel(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        route: &Route,
        outcome: &Outcome,
    ) {
        let close_now = self.tunnels.close_now.clone();
        let route = route.name.clone();
        let request_id = outcome.request_id.clone();
        self.tunnels.tracker.spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(err) => {
                    tracing::warn!(route = %route, request_id = %request_id, error = %err, "protocol switch failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    if let Err(err) = copied {
                        tracing::debug!(route = %route, request_id = %request_id, error = %err, "tunnel closed with an error");
                    }
                }
                () = close_now.cancelled() => {}
            }
        });
    }
}

/// The host the client asked for, with port: the URI's authority (HTTP/2, absolute-form) or the
/// Host header. HTTP/1.1 requires one (RFC 9112 section 3.2).
fn request_authority(request: &Request<Incoming>) -> Result<Option<String>, ProxyError> {
    if let Some(authority) = request.uri().authority() {
        return Ok(Some(authority.as_str().to_owned()));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("more than one Host header")),
        (Some(host), None) => {
            let host = host.to_str().map_err(|_| ProxyError::BadRequest("invalid Host header"))?;
            if host.parse::<http::uri::Authority>().is_err() {
                return Err(ProxyError::BadRequest("invalid Host header"));
            }
            Ok(Some(host.to_owned()))
        }
        (None, _) if request.version() == Version::HTTP_11 => Err(ProxyError::BadRequest("missing Host header")),
        (None, _) => Ok(None),
    }
}

/// Resolves `.` and `..` segments (RFC 3986 section 5.2.4) so that routes cannot be bypassed with
/// `/public/../admin`. `None` for a path that is not absolute or climbs above the root.
fn normalize_path(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    if !path.split('/').any(|segment| segment == "." || segment == "..") {
        return Some(path.to_owned());
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                segments.pop()?;
                trailing_slash = true;
            }
            other => segments.push(other),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if trailing_slash && !normalized.ends_with('/') {
        normalized.push('/');
    }
    Some(normalized)
}

fn redirect_response(status: StatusCode, location: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    match HeaderValue::try_from(location) {
        Ok(location) => {
            response.headers_mut().insert(header::LOCATION, location);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

/// Sends a copy of a body-less request to the route's mirror, in the background; its answer is
/// read to the end (so the connection is reused) and thrown away, and its failures are only logged
/// at debug level: the shadow upstream never affects the client's request.
fn mirror_request(
    mirror: &Mirror,
    parts: &http::request::Parts,
    path_and_query: &PathAndQuery,
    preserve_host: bool,
    client_ip: std::net::IpAddr,
    timeout: std::time::Duration,
) {
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = parts.method.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    let (copy_parts, copy_body) = copy.into_parts();
    let outgoing =
        Outgoing { parts: copy_parts, path_and_query: path_and_query.clone(), body: copy_body, preserve_host };
    let upstream = mirror.upstream.clone();
    tokio::spawn(async move {
        match upstream.send(outgoing, client_ip, Instant::now() + timeout).await {
            Ok((response, _server)) => {
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            }
            Err(error) => tracing::debug!(upstream = %upstream.name, ?error, "mirrored request failed"),
        }
    });
}

/// Writes the access log line and the request's metrics.
#[allow(clippy::too_many_arguments)]
fn record(
    metrics: &Metrics,
    outcome: &Outcome,
    method: &Method,
    path: &str,
    status: StatusCode,
    peer: SocketAddr,
    started: Instant,
    end: BodyOutcome,
) {
    let elapsed = started.elapsed();
    let route = Name(outcome.route.clone().unwrap_or_else(|| Arc::from("")));
    let upstream = Name(outcome.upstream.clone().unwrap_or_else(|| Arc::from("")));
    metrics
        .requests
        .get_or_create(&RequestLabels { route: route.clone(), upstream: upstream.clone(), code: status.as_u16() })
        .inc();
    metrics
        .request_duration
        .get_or_create(&RouteLabels { route: route.clone(), upstream })
        .observe(elapsed.as_secs_f64());

    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let route_name = outcome.route.as_deref().unwrap_or("");
    let upstream_name = outcome.upstream.as_deref().unwrap_or("");
    let server = outcome.server.as_deref().unwrap_or("");
    let error = outcome.error.as_ref();
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
        http.request.method = %method,
        url.path = path,
        http.response.status_code = status.as_u16(),
        http.response.body.size = end.bytes,
        complete = end.complete,
        duration_ms,
        route = route_name,
        upstream = upstream_name,
        server.address = server,
        client.address = %peer.ip(),
        request_id = %outcome.request_id,
        error.kind = error.map(ProxyError::kind),
        error.side = side,
        error.message = error.map(tracing::field::display),
        "{}",
        if error.is_some() { "request failed" } else { "request" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved() {
        assert_eq!(normalize_path("/a/b").as_deref(), Some("/a/b"));
        assert_eq!(normalize_path("/public/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize_path("/a/./b/").as_deref(), Some("/a/b/"));
        assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize_path("/..").as_deref(), None);
        assert_eq!(normalize_path("*"), None);
    }
}
