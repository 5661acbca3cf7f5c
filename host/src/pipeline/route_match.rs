//! Phase 2, routing: the route table picks the route that takes the request (host, then path,
//! then method and header conditions), and the route's body limit applies at once to the length
//! the client declared.

use std::sync::Arc;

use http::header;

use super::admission::Admitted;
use super::errors::ProxyError;
use super::state::RequestState;
use crate::routing::{RequestFacts, Route};

/// The route for `admitted`, recorded in `state`.
pub(crate) fn match_route(admitted: &Admitted, state: &mut RequestState) -> Result<Arc<Route>, ProxyError> {
    let facts = RequestFacts {
        host: &admitted.host,
        path: &admitted.path,
        method: &admitted.parts.method,
        headers: &admitted.parts.headers,
    };
    let route = state.snapshot.routes.match_request(&facts).ok_or(ProxyError::NoRoute)?.clone();
    state.routed(&route);
    let declared_length = admitted
        .parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > route.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge { limit: route.max_body_bytes });
    }
    Ok(route)
}
