//! Phase 7, the response phase: the route's filters, in reverse chain order, see the response
//! head and may change it or answer instead; then its body, buffered whole for the filters that
//! asked for that, streamed through the others.

use http::Response;
use http::header;
use sluice_http::body::{self, ProxyBody};
use sluice_runtime::{HeadOutcome, Phases};

use super::errors::ProxyError;
use super::filters::{self, ChainBody};
use super::state::RequestState;
use super::upstream::Upstreamed;

/// Runs the response phase over the upstream's answer.
pub(crate) async fn run(upstreamed: Upstreamed, state: &mut RequestState) -> Result<Response<ProxyBody>, ProxyError> {
    let Upstreamed { response, request_head } = upstreamed;
    let (Some(chain), Some(request_head)) = (state.filters.take(), request_head) else {
        return Ok(response.map(body::boxed));
    };
    // On the heap, as the request phase's filters are: only routes with filters pay for it.
    Box::pin(run_filters(response, chain, request_head, state)).await
}

async fn run_filters(
    response: Response<sluice_upstream::ServerBody>,
    mut chain: filters::FilterChain,
    mut request_head: sluice_runtime::RequestHead,
    state: &mut RequestState,
) -> Result<Response<ProxyBody>, ProxyError> {
    let server = state.server.clone().unwrap_or_default();
    let max_filter_body_bytes = state.route.as_ref().map_or(0, |route| route.max_filter_body_bytes);
    let (mut response_parts, upstream_body) = response.into_parts();
    if let HeadOutcome::Respond(local) = chain.on_response(&mut request_head, &mut response_parts).await? {
        return Ok(local);
    }
    let mut body = body::boxed(upstream_body);
    if chain.wants_buffered_response_body() {
        let bytes = match filters::collect_limited(body, max_filter_body_bytes).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return Err(ProxyError::UpstreamFailed {
                    server,
                    reason: format!("response body exceeds the filter body limit of {max_filter_body_bytes} bytes"),
                });
            }
            Err(error) => return Err(ProxyError::UpstreamFailed { server, reason: error.to_string() }),
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
