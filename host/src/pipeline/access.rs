//! Phase 1b, access control, before any filter runs: the listener's address lists and the
//! operator's bans right after admission, then, once a route matched, the route's address and
//! country lists and the bans on the route's tenant. Deny wins at every level; a refusal is a
//! `403` naming the request id, counted per route (or listener) and list.

use sluice_access::Refusal;

use super::errors::ProxyError;
use super::state::RequestState;
use crate::routing::Route;
use crate::telemetry::metrics::{AccessLabels, Metrics, Name};

/// The listener's lists and the bans that close every route.
pub(crate) fn check_listener(state: &mut RequestState, metrics: &Metrics) -> Result<(), ProxyError> {
    if let Some(geoip) = &state.snapshot.geoip {
        state.location = geoip.locate(state.client);
    }
    let listener = state.snapshot.listeners.iter().find(|listener| listener.name == state.connection.listener);
    let refusal = listener
        .and_then(|listener| listener.access.refuses(state.client, &state.location))
        .or_else(|| banned(state, None));
    match refusal {
        None => Ok(()),
        Some(refusal) => Err(refused(refusal, "listener", &state.connection.listener, metrics)),
    }
}

/// The route's lists and the bans on its tenant.
pub(crate) fn check_route(route: &Route, state: &RequestState, metrics: &Metrics) -> Result<(), ProxyError> {
    let refusal =
        route.access.refuses(state.client, &state.location).or_else(|| banned(state, Some(&route.tenant.name)));
    match refusal {
        None => Ok(()),
        Some(refusal) => Err(refused(refusal, "route", &route.name, metrics)),
    }
}

fn banned(state: &RequestState, tenant: Option<&str>) -> Option<Refusal> {
    let blocks = &state.snapshot.services.runtime.services().blocks;
    let ban = blocks.banned(state.client, tenant)?;
    tracing::debug!(client.address = %state.client, reason = %ban.reason, "client is banned");
    Some(Refusal::Banned)
}

fn refused(refusal: Refusal, scope: &'static str, name: &std::sync::Arc<str>, metrics: &Metrics) -> ProxyError {
    let labels = AccessLabels { scope, name: Name(name.clone()), list: refusal.as_str() };
    metrics.access_refused.get_or_create(&labels).inc();
    ProxyError::Forbidden { refusal }
}
