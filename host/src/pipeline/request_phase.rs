//! Phase 3, the request phase: the route's filters, in chain order, see the request head and
//! may change it or answer instead; those that asked for it get the whole body, buffered up to
//! the route's filter body limit. What comes out is the request as it will go upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Response;
use sluice_http::body::{self, LimitedBody, ProxyBody};
use sluice_runtime::{CallContext, HeadOutcome, Phases, RequestHead};

use super::admission::Admitted;
use super::errors::ProxyError;
use super::filters::{self, ChainBody, FilterChain};
use super::state::RequestState;
use crate::routing::{Route, RouteAction};
use crate::telemetry::traces::RequestTrace;

/// The request on its way out, after the request phase.
pub(crate) struct Outbound {
    /// The head as the filters left it.
    pub(crate) head: RequestHead,
    /// The body, limited to the route's `max_body_bytes`.
    pub(crate) body: ProxyBody,
    /// The host the client asked for, with port, as it sent it.
    pub(crate) authority: Option<String>,
    /// The path and query the route matched (before any filter changed them).
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    /// The client's side of a protocol switch it asked for.
    pub(crate) client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// Set once the body has turned out larger than the route allows.
    pub(crate) too_large: Arc<AtomicBool>,
}

/// How the request phase ended.
// Made and taken apart once per request: boxing the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RequestPhase {
    /// On towards the upstream.
    Continue(Outbound),
    /// A filter answered.
    Respond(Response<ProxyBody>),
}

/// Runs the route's filters over the request. The filters stay checked out in `state` for the
/// response phase.
pub(crate) async fn run(
    admitted: Admitted,
    route: &Arc<Route>,
    state: &mut RequestState,
) -> Result<RequestPhase, ProxyError> {
    let outbound = outbound(admitted, route);
    if route.filters.is_empty() {
        return Ok(RequestPhase::Continue(outbound));
    }
    // The filters' part of the phase is a large future: on the heap, so that the request's own
    // future, which every request moves around, stays small where a route has no filters.
    Box::pin(run_filters(outbound, route, state)).await
}

/// The request as it goes on, before any filter.
fn outbound(admitted: Admitted, route: &Route) -> Outbound {
    let Admitted { parts, body: incoming, authority, host: _, path, query, client_upgrade } = admitted;
    let too_large = Arc::new(AtomicBool::new(false));
    Outbound {
        head: RequestHead { parts, cache_key: None },
        // Most requests have no body: nothing to limit, and no wrapper to allocate.
        body: if http_body::Body::is_end_stream(&incoming) {
            body::empty()
        } else {
            body::boxed(LimitedBody::new(incoming, route.max_body_bytes, too_large.clone()))
        },
        authority,
        path,
        query,
        client_upgrade,
        too_large,
    }
}

async fn run_filters(
    mut outbound: Outbound,
    route: &Arc<Route>,
    state: &mut RequestState,
) -> Result<RequestPhase, ProxyError> {
    let context = CallContext {
        route: route.name.clone(),
        filter: Arc::from(""),
        tenant: route.tenant.clone(),
        request_id: Arc::from(state.id.as_str()),
        client_ip: state.client,
        client_location: state.location.clone(),
        client_identity: state.connection.client_identity.clone(),
        upstreams: state.snapshot.upstreams.clone(),
        // The route's timeout bounds its filters' calls too, counted from the request's arrival.
        deadline: match &route.action {
            RouteAction::Forward(forward) => Some(state.started + forward.timeout),
            RouteAction::Redirect(_) => None,
        },
    };
    let filters =
        state.filters.insert(FilterChain::checkout(route, &context, state.snapshot.services.runtime.services()).await?);
    filters.trace_in(state.trace.as_ref().map(RequestTrace::share));
    if let HeadOutcome::Respond(response) = filters.on_request(&mut outbound.head).await? {
        return Ok(RequestPhase::Respond(response));
    }
    if filters.wants(Phases::REQUEST_BODY) {
        let body = std::mem::replace(&mut outbound.body, body::empty());
        let bytes = match filters::collect_limited(body, route.max_filter_body_bytes).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(ProxyError::BodyTooLarge { limit: route.max_filter_body_bytes as u64 }),
            Err(_) if outbound.too_large.load(Ordering::Relaxed) => {
                return Err(ProxyError::BodyTooLarge { limit: route.max_body_bytes });
            }
            Err(_) => return Err(ProxyError::BadRequest("the request body could not be read")),
        };
        match filters.on_request_body(&mut outbound.head, bytes).await? {
            ChainBody::Respond(response) => return Ok(RequestPhase::Respond(response)),
            ChainBody::Body(bytes) => {
                filters::set_content_length(&mut outbound.head.parts.headers, bytes.len());
                outbound.body = body::full(bytes);
            }
        }
    }
    Ok(RequestPhase::Continue(outbound))
}
