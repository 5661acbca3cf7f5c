//! One request's journey, as phases in order over one [`RequestState`](state::RequestState):
//!
//! 1. [`admission`]: refuse what no route may see, normalise the path; [`access`]: the
//!    listener's address lists and operators' bans;
//! 2. [`route_match`]: pick the route, then [`access`] again: its address and country lists
//!    and the bans on its tenant;
//! 3. [`request_phase`]: the route's filters over the request head and body;
//! 4. the route's action: a redirect answers here;
//! 5. [`caching`]: answer from the cache, or note how the origin's answer is stored;
//! 6. [`upstream`]: send it to a server of the route's upstream;
//! 7. [`response_phase`]: the filters over the response, in reverse order;
//! 8. [`finish`]: compression, cache fill, `Cache-Status`, request id; the access log line
//!    and metrics once the body has gone.
//!
//! Errors from any phase become a response in one place ([`errors::respond`]).

mod access;
mod admission;
mod caching;
mod errors;
mod filters;
mod finish;
pub mod forwarding;
mod request_phase;
mod response_phase;
mod route_match;
pub mod shadow;
mod state;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use sluice_cache::HttpCache;
use sluice_http::ConnectionActivity;
use sluice_http::body::ProxyBody;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use errors::{ProxyError, Side, error_response, local_response};

use crate::config::Snapshot;
use crate::routing::{Forward, RouteAction};
use crate::telemetry::metrics::Metrics;
use admission::{Admission, ClientBody};
use caching::{Answer, Lookup};
use request_phase::{Outbound, RequestPhase};
use state::RequestState;

/// What the pipeline knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The peer's IP address as a header value (`X-Forwarded-For`), made once per connection.
    pub peer_header: HeaderValue,
    /// The listener's name.
    pub listener: Arc<str>,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The verified client certificate's identity (mutual TLS).
    pub client_identity: Option<Arc<str>>,
    /// `Strict-Transport-Security` for every response on this connection.
    pub hsts: Option<HeaderValue>,
    /// `Alt-Svc` for every response on this connection: the listener also speaks HTTP/3.
    pub alt_svc: Option<HeaderValue>,
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

    /// Serves one request from hyper's server (HTTP/1.1, HTTP/2) to completion of its response
    /// head; the body streams afterwards.
    pub async fn handle(self, request: Request<Incoming>, connection: Arc<ConnectionInfo>) -> Response<ProxyBody> {
        self.serve(request.map(ClientBody::Hyper), connection).await
    }

    /// [`Proxy::handle`] for a request another server brought (HTTP/3).
    pub async fn handle_boxed(
        self,
        request: Request<ProxyBody>,
        connection: Arc<ConnectionInfo>,
    ) -> Response<ProxyBody> {
        self.serve(request.map(ClientBody::Boxed), connection).await
    }

    async fn serve(self, request: Request<ClientBody>, connection: Arc<ConnectionInfo>) -> Response<ProxyBody> {
        let state = RequestState::new(self.snapshot.load_full(), connection, &request);
        let span = state.span.clone();
        // Logged when dropped unanswered: the client left before the response head was ready.
        let mut unanswered = finish::Unanswered::new(state, self.metrics.clone());
        async move {
            let response = match self.process(request, unanswered.state()).await {
                Ok(response) => response,
                Err(error) => errors::respond(error, unanswered.state()),
            };
            let response = finish::finish_response(response, unanswered.state());
            unanswered.deliver(response)
        }
        .instrument(span)
        .await
    }

    /// Phases 1 to 7, in order; each may answer early.
    async fn process(
        &self,
        request: Request<ClientBody>,
        state: &mut RequestState,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let admitted = match admission::admit(request, state)? {
            Admission::Admitted(admitted) => admitted,
            Admission::Answered(response) => return Ok(response),
        };
        access::check_listener(state, &self.metrics)?;
        let matching_since = state.trace.as_ref().filter(|trace| trace.recording()).map(|_| SystemTime::now());
        let matched = route_match::match_route(&admitted, state);
        if let (Some(trace), Some(since)) = (&state.trace, matching_since) {
            let mut span = trace.child_from("route match", since);
            match &matched {
                Ok(route) => span.annotate(|| vec![KeyValue::new("http.route", route.name.to_string())]),
                Err(error) => span.annotate(|| vec![KeyValue::new("error.type", error.kind())]),
            }
        }
        let route = matched?;
        access::check_route(&route, state, &self.metrics)?;
        let host = admitted.host.clone();
        let outbound = match request_phase::run(admitted, &route, state).await? {
            RequestPhase::Continue(outbound) => outbound,
            RequestPhase::Respond(response) => return Ok(response),
        };
        let forward = match &route.action {
            RouteAction::Forward(forward) => forward,
            RouteAction::Redirect(redirect) => {
                let host = outbound.authority.as_deref().unwrap_or("localhost");
                let location =
                    redirect.location(state.connection.scheme, host, &outbound.path, outbound.query.as_deref());
                return Ok(admission::redirect_response(redirect.status, &location));
            }
        };
        let Some(settings) = route.cache.clone() else {
            return self.forward(outbound, forward, state).await;
        };
        let mut outbound = outbound;
        let default_key = sluice_cache::default_key(
            &host,
            outbound.head.parts.uri.path_and_query().map_or("/", PathAndQuery::as_str),
        );
        let mut lookup_span = state.trace.as_ref().map(|trace| trace.child("cache lookup", SpanKind::Internal));
        let looked_up = caching::lookup(&self.cache, &settings, &route, &mut outbound.head, &host, default_key).await;
        if let Some(span) = lookup_span.as_mut() {
            let result = match &looked_up {
                Lookup::Answer(_, status) | Lookup::StaleAndRefresh { status, .. } => status.result(),
                Lookup::Forward(forwarding) => forwarding.result(),
            };
            span.annotate(|| vec![KeyValue::new("sluice.cache.result", result)]);
        }
        drop(lookup_span);
        let forwarding = match looked_up {
            Lookup::Answer(response, status) => {
                state.answered_from_cache(status);
                return Ok(response);
            }
            Lookup::StaleAndRefresh { response, status, refresh } => {
                state.answered_from_cache(status);
                if let Some(refresh) = refresh {
                    self.refresh_in_background(outbound, refresh, state);
                }
                return Ok(response);
            }
            Lookup::Forward(forwarding) => forwarding,
        };
        let head_only = outbound.head.parts.method == Method::HEAD;
        let forwarded = self.forward(outbound, forward, state).await;
        match caching::after_forward(forwarded, forwarding, head_only)? {
            Answer::FromCache(response, status) => {
                state.answered_from_cache(status);
                Ok(response)
            }
            Answer::FromOrigin(response, status, ticket) => {
                state.cache = Some(status);
                state.fill = ticket;
                Ok(response)
            }
        }
    }

    /// Phases 6 and 7: the upstream, then the response phase.
    async fn forward(
        &self,
        outbound: Outbound,
        forward: &Forward,
        state: &mut RequestState,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upstreamed = upstream::send(outbound, forward, state, &self.tunnels).await?;
        response_phase::run(upstreamed, state).await
    }

    /// Refreshes a stale entry served to the client already: the request goes upstream on its
    /// own task, through the response phase, and is finished as a client's response would be
    /// before its body is read to the end, which stores it.
    fn refresh_in_background(&self, outbound: Outbound, forwarding: caching::Forwarding, client: &mut RequestState) {
        let proxy = self.clone();
        let accept_encoding = outbound.head.parts.headers.get(http::header::ACCEPT_ENCODING).cloned();
        let mut state = RequestState::refresh_of(client, accept_encoding);
        let span = state.span.clone();
        tokio::spawn(
            async move {
                let Some(route) = state.route.clone() else { return };
                let RouteAction::Forward(forward) = &route.action else { return };
                let forwarded = proxy.forward(outbound, forward, &mut state).await;
                match caching::after_forward(forwarded, forwarding, false) {
                    Ok(Answer::FromOrigin(response, status, Some(ticket))) => {
                        state.cache = Some(status);
                        state.fill = Some(ticket);
                        let response = finish::finish_response(response, &mut state);
                        // Reading the body to its end is what stores it.
                        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::debug!(%error, "background cache refresh failed"),
                }
            }
            .instrument(span),
        );
    }
}
