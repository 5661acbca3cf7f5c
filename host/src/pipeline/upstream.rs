//! Phase 6, the upstream: the route's backends pick an upstream, the request gets its forwarding
//! headers and rewritten path, a copy may go to the mirror, and the upstream's balancer, pool and
//! retries carry it to a server. A protocol switch both sides agreed to becomes a tunnel.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use sluice_http::X_REQUEST_ID;
use sluice_http::body;
use sluice_runtime::RequestHead;
use sluice_upstream::{Outgoing, SendError, ServerBody, TryEnd};
use tracing::Instrument;

use super::Tunnels;
use super::errors::ProxyError;
use super::filters;
use super::forwarding::{self, ClientSide};
use super::request_phase::Outbound;
use super::state::RequestState;
use crate::routing::{Forward, Mirror};
use crate::telemetry::traces::{ChildSpan, SharedTrace};

/// The upstream's response head with its body still streaming, and the request head the response
/// phase reads (kept only when a filter runs in it).
pub(crate) struct Upstreamed {
    pub(crate) response: Response<ServerBody>,
    pub(crate) request_head: Option<RequestHead>,
}

/// Sends `outbound` where `forward` says and waits for the response head.
pub(crate) async fn send(
    outbound: Outbound,
    forward: &Forward,
    state: &mut RequestState,
    tunnels: &Tunnels,
) -> Result<Upstreamed, ProxyError> {
    let Outbound { head, body, authority, client_upgrade, too_large, .. } = outbound;
    let upstream = forward.backends.pick();
    state.upstream = Some(upstream.name.clone());
    let span = tracing::debug_span!("upstream", upstream = %upstream.name, server.address = tracing::field::Empty);

    let path_and_query = PathAndQuery::try_from(forward.rewrite.apply(head.parts.uri.path(), head.parts.uri.query()))
        .map_err(|_| ProxyError::BadRequest("invalid path after rewrite"))?;
    // Response phases read the request head, which goes upstream: keep a copy, only if asked.
    let request_head = state
        .filters
        .as_ref()
        .filter(|chain| {
            chain.wants(sluice_runtime::Phases::RESPONSE_HEADERS) || chain.wants(sluice_runtime::Phases::RESPONSE_BODY)
        })
        .map(|_| filters::copy_request_head(&head));
    let mut parts = head.parts;
    parts.version = Version::HTTP_11;
    let client_side = ClientSide {
        peer: state.connection.peer.ip(),
        scheme: state.connection.scheme,
        host: authority.as_deref(),
        peer_header: Some(&state.connection.peer_header),
    };
    forwarding::prepare_upstream_request(&mut parts.headers, &client_side, &state.snapshot.server);
    let preserve_host = match (&authority, forward.preserve_host) {
        (Some(authority), true) => match HeaderValue::try_from(authority.as_str()) {
            Ok(host_header) => {
                parts.headers.insert(header::HOST, host_header);
                true
            }
            Err(_) => false,
        },
        _ => false,
    };
    parts.headers.insert(X_REQUEST_ID, state.id.header_value());
    if let Some(mirror) =
        forward.mirror.as_ref().filter(|mirror| http_body::Body::is_end_stream(&body) && mirror.takes_this_one())
    {
        mirror_request(mirror, &parts, &path_and_query, preserve_host, state, forward.timeout);
    }
    // The protocols the request asks to switch to: the only ones the upstream may switch to.
    let asked_upgrade = parts.headers.get(header::UPGRADE).cloned();
    let watcher = state.trace.as_ref().map(|trace| {
        Box::new(TracedTries { trace: trace.share(), method: parts.method.clone(), current: None })
            as Box<dyn sluice_upstream::TryWatcher>
    });
    let outgoing = Outgoing { parts, path_and_query, body, preserve_host, watcher };
    let deadline = Instant::now() + forward.timeout;
    let client_ip = state.client;
    // The send (retries, the client's exchange) is a large future: built in place on the heap
    // rather than moved through the request's own future, which the compiler would copy it into.
    let sent = Box::pin(upstream.send(outgoing, client_ip, deadline)).instrument(span.clone()).await;
    let (mut response, server) = match sent {
        Ok(answer) => answer,
        Err(error) => {
            return Err(match error {
                SendError::Overflow { limit } => ProxyError::UpstreamOverflow { limit },
                _ if too_large.load(Ordering::Relaxed) => {
                    ProxyError::BodyTooLarge { limit: state.route.as_ref().map_or(0, |route| route.max_body_bytes) }
                }
                SendError::Timeout { server, timeout_ms } => {
                    state.server = Some(server.clone());
                    ProxyError::UpstreamTimeout { server, timeout_ms }
                }
                SendError::Connect { server, reason } => {
                    state.server = Some(server.clone());
                    ProxyError::UpstreamConnect { server, reason }
                }
                SendError::Failed { server, reason } => {
                    state.server = Some(server.clone());
                    ProxyError::UpstreamFailed { server, reason }
                }
                SendError::ClientBodyTimeout { server, timeout_ms } => {
                    state.server = Some(server);
                    ProxyError::RequestBodyTimeout { timeout_ms }
                }
                SendError::ClientBody { server, reason } => {
                    state.server = Some(server);
                    ProxyError::ClientBody { reason }
                }
            });
        }
    };
    span.record("server.address", server.as_str());
    state.server = Some(server.clone());

    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::UpstreamFailed {
                server,
                reason: "switched protocols without being asked to".into(),
            });
        };
        let chosen = response.headers().get(header::UPGRADE);
        if !chosen.is_some_and(|chosen| forwarding::offered_protocol(asked_upgrade.as_ref(), chosen)) {
            return Err(ProxyError::UpstreamFailed {
                server,
                reason: "switched to a protocol the request did not ask for".into(),
            });
        }
        open_tunnel(client_upgrade, hyper::upgrade::on(&mut response), state, tunnels);
    }
    forwarding::prepare_client_response(response.headers_mut(), switching, &state.snapshot.server);
    Ok(Upstreamed { response, request_head })
}

/// Once both sides have switched protocols, copies bytes both ways until either side closes.
fn open_tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    state: &RequestState,
    tunnels: &Tunnels,
) {
    let close_now = tunnels.close_now.clone();
    let route: Arc<str> = state.route_name().into();
    let tunnel = async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(err) => {
                tracing::warn!(route = %route, error = %err, "protocol switch failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                if let Err(err) = copied {
                    tracing::debug!(route = %route, error = %err, "tunnel closed with an error");
                }
            }
            () = close_now.cancelled() => {}
        }
    };
    tunnels.tracker.spawn(tunnel.instrument(state.span.clone()));
}

/// Sends a copy of a body-less request to the route's mirror, in the background; its answer is
/// read to the end (so the connection is reused) and thrown away, and its failures are only logged
/// at debug level: the shadow upstream never affects the client's request.
fn mirror_request(
    mirror: &Mirror,
    parts: &http::request::Parts,
    path_and_query: &PathAndQuery,
    preserve_host: bool,
    state: &RequestState,
    timeout: std::time::Duration,
) {
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = parts.method.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    let (copy_parts, copy_body) = copy.into_parts();
    let outgoing = Outgoing {
        parts: copy_parts,
        path_and_query: path_and_query.clone(),
        body: copy_body,
        preserve_host,
        watcher: None,
    };
    let upstream = mirror.upstream.clone();
    let client_ip = state.client;
    let mirrored = async move {
        match upstream.send(outgoing, client_ip, Instant::now() + timeout).await {
            Ok((response, _server)) => {
                let _ = http_body_util::BodyExt::collect(response.into_body()).await;
            }
            Err(error) => tracing::debug!(upstream = %upstream.name, ?error, "mirrored request failed"),
        }
    };
    tokio::spawn(mirrored.instrument(tracing::debug_span!(parent: &state.span, "mirror")));
}

/// Gives each upstream try of a traced request a client span of its own (retries are siblings
/// under the server span) and sends that span's context upstream in `traceparent`.
struct TracedTries {
    trace: SharedTrace,
    method: http::Method,
    /// The try under way.
    current: Option<ChildSpan>,
}

impl sluice_upstream::TryWatcher for TracedTries {
    fn starting(&mut self, server: &str, attempt: usize, request: &mut Request<body::ProxyBody>) {
        // An unrecorded try's span has no name to show: none is made.
        let name = if self.trace.recording() { self.method.as_str().to_owned() } else { String::new() };
        let mut span = self.trace.child(name, SpanKind::Client);
        span.annotate(|| {
            let uri = request.uri();
            let mut attributes = vec![
                KeyValue::new("http.request.method", self.method.as_str().to_owned()),
                KeyValue::new("server.address", uri.host().unwrap_or(server).to_owned()),
                KeyValue::new("url.full", uri.to_string()),
                KeyValue::new("network.protocol.version", "1.1"),
            ];
            if let Some(port) = uri.port_u16() {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
            if attempt > 0 {
                attributes.push(KeyValue::new("http.request.resend_count", attempt as i64));
            }
            attributes
        });
        span.inject(request.headers_mut());
        self.current = Some(span);
    }

    fn ended(&mut self, end: TryEnd<'_>) {
        let Some(mut span) = self.current.take() else { return };
        match end {
            TryEnd::Answered(status) => {
                span.annotate(|| vec![KeyValue::new("http.response.status_code", i64::from(status.as_u16()))]);
                // For a client span a 4xx is an error too (semantic conventions).
                if status.as_u16() >= 400 {
                    span.annotate(|| vec![KeyValue::new("error.type", status.as_str().to_owned())]);
                    span.fail(|| format!("the server answered {status}"));
                }
            }
            TryEnd::Failed { kind, reason } => {
                span.annotate(|| vec![KeyValue::new("error.type", kind)]);
                span.fail(|| reason.to_string());
            }
        }
    }
}
