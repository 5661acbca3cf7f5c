//! `sluice:filter/callout`: HTTP requests to upstreams the tenant was granted, sent through [`CalloutUpstreams`](crate::CalloutUpstreams).

use super::handles::{self, header_list, set_header};
use super::*;
use crate::bindings::sluice::filter::callout;

impl callout::Host for FilterState {
    async fn send(
        &mut self,
        upstream_name: String,
        request: callout::CalloutRequest,
    ) -> wasmtime::Result<Result<callout::CalloutResponse, callout::CalloutError>> {
        let context = self.context()?.clone();
        if !context.tenant.callouts.contains(&upstream_name) {
            tracing::warn!(
                route = %context.route, filter = %context.filter, tenant = %context.tenant.name,
                request_id = %context.request_id, upstream = %upstream_name,
                "callout refused: upstream not granted to the tenant"
            );
            return Ok(Err(callout::CalloutError::NotGranted(format!(
                "tenant {} may not call upstream {upstream_name:?}",
                context.tenant.name
            ))));
        }
        if !context.upstreams.contains(&upstream_name) {
            return Ok(Err(callout::CalloutError::UnknownUpstream(format!("no upstream named {upstream_name:?}"))));
        }
        // The callout counts against the call's time: it may wait only what the call has left.
        let left = self.call_deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Err(callout::CalloutError::Failed("the filter call's time is up".to_owned())));
        }
        // A call waiting on the network uses no CPU: it gives its long-call lanes back meanwhile
        // (at its next tick after the answer it waits for them again), so that callouts to a slow
        // upstream cannot hold every lane while the CPU sits idle.
        if let Ok(mut held) = self.long_call.lock() {
            held.take();
        }
        let sent_bytes = request.body.len() as u64;
        let trace = self.trace.clone();
        let exchange = send_callout(context.upstreams.clone(), upstream_name, context.client_ip, request, trace, left);
        let answer = match self.clock.home() {
            // From a long-call thread, the exchange runs on the proxy's workers: the connection it
            // may open joins the upstream's pool and must be driven from there.
            Some(home) => home.spawn(exchange).await.unwrap_or_else(|err| Err(format!("callout task failed: {err}"))),
            None => exchange.await,
        };
        let received_bytes = answer.as_ref().map_or(0, |response| response.body.len() as u64);
        self.usage.record_callout(sent_bytes + received_bytes);
        Ok(answer.map_err(callout::CalloutError::Failed))
    }
}

async fn send_callout(
    upstreams: Arc<dyn CalloutUpstreams>,
    upstream_name: String,
    client_ip: std::net::IpAddr,
    request: callout::CalloutRequest,
    trace: Option<crate::CallTrace>,
    left: Duration,
) -> Result<callout::CalloutResponse, String> {
    let method =
        Method::from_bytes(request.method.as_bytes()).map_err(|_| format!("invalid method {:?}", request.method))?;
    if request.path_with_query.len() > handles::MAX_PATH_BYTES {
        return Err(format!("the path is longer than {} bytes", handles::MAX_PATH_BYTES));
    }
    let uri = Uri::builder()
        .path_and_query(request.path_with_query.as_str())
        .build()
        .map_err(|err| format!("invalid path: {err}"))?;
    let mut outgoing = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(body::full(Bytes::from(request.body)))
        .map_err(|err| err.to_string())?;
    // Within the same bounds as the heads a filter changes.
    for (name, value) in &request.headers {
        set_header(outgoing.headers_mut(), name, value, true)?;
    }
    // The callout belongs to the filter call's span, unless the filter set a trace of its own.
    if let Some(trace) = trace
        && !outgoing.headers().contains_key("traceparent")
    {
        let headers = outgoing.headers_mut();
        headers.insert(HeaderName::from_static("traceparent"), trace.traceparent);
        if let Some(state) = trace.tracestate {
            headers.insert(HeaderName::from_static("tracestate"), state);
        }
    }
    let asked = if request.timeout_ms == 0 {
        CALLOUT_DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(u64::from(request.timeout_ms))
    };
    let timeout = asked.min(left);
    let exchange = async {
        let sent = upstreams.send(&upstream_name, client_ip, outgoing);
        let response = sent.ok_or_else(|| format!("no upstream named {upstream_name:?}"))?.await?;
        let (parts, incoming) = response.into_parts();
        let body = read_callout_body(incoming).await?;
        Ok::<_, String>(callout::CalloutResponse {
            status: parts.status.as_u16(),
            headers: header_list(&parts.headers),
            body: body.to_vec(),
        })
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| format!("no answer within {} ms", timeout.as_millis()))?
}

/// A callout's response body, up to [`CALLOUT_BODY_LIMIT`].
async fn read_callout_body(mut body: body::ProxyBody) -> Result<Bytes, String> {
    let mut collected = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| format!("reading the response: {err}"))?;
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > CALLOUT_BODY_LIMIT {
                return Err("reading the response: length limit exceeded".to_owned());
            }
            collected.extend_from_slice(&data);
        }
    }
    Ok(collected.freeze())
}
