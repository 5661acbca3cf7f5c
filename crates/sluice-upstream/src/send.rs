//! Sending one proxied request upstream: the request limit, choosing a server, the try itself,
//! passive outlier detection on its outcome, and retrying on another server when the failure,
//! the method, the body and the retry budget all allow it.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, SET_COOKIE};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::balancer::cookie;
use super::h1;
use super::retry::TryFailure;
use super::server::Availability;
use super::{ConnectionLimitReached, PickContext, Upstream};
use sluice_http::body::{self, ProxyBody};

/// Most tries of one request (`retry.retries` is capped below this).
pub const MAX_TRIES: usize = 16;

/// Why no response came back.
#[derive(Debug)]
pub enum SendError {
    /// The upstream's request limit was reached: answer 503 at once.
    Overflow {
        /// The limit.
        limit: usize,
    },
    /// No connection could be made to the last server tried.
    Connect {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The last server tried sent no response head in time.
    Timeout {
        /// The server.
        server: String,
        /// The time allowed, in milliseconds.
        timeout_ms: u128,
    },
    /// The client's request body broke off (bad framing, too large, or the client left) while
    /// it was being sent: the client's failure, not counted against the server.
    ClientBody {
        /// The server it was being sent to.
        server: String,
        /// Why.
        reason: String,
    },
    /// The route's time ran out while the client was still sending its request body: the
    /// client's slowness, not counted against the server.
    ClientBodyTimeout {
        /// The server it was being sent to.
        server: String,
        /// The time allowed, in milliseconds.
        timeout_ms: u128,
    },
    /// The exchange with the last server tried broke.
    Failed {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
}

/// A response body from a server; while it lives the request counts as in flight.
pub struct ServerBody {
    inner: Answer,
    _in_flight: InFlight,
    _slot: Option<RequestSlot>,
}

/// The body as the client that carried the request reads it.
enum Answer {
    Hyper(Incoming),
    Own(h1::ResponseBody),
}

impl Body for ServerBody {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.inner {
            Answer::Hyper(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Answer::Own(own) => Pin::new(own).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Answer::Hyper(incoming) => incoming.is_end_stream(),
            Answer::Own(own) => own.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Answer::Hyper(incoming) => incoming.size_hint(),
            Answer::Own(own) => own.size_hint(),
        }
    }
}

/// Why a try got no response, from whichever client carried it.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error(transparent)]
    Hyper(#[from] hyper_util::client::legacy::Error),
    #[error(transparent)]
    Own(#[from] h1::H1Error),
}

impl ClientError {
    fn is_connect(&self) -> bool {
        match self {
            Self::Hyper(error) => error.is_connect(),
            Self::Own(error) => error.is_connect(),
        }
    }
}

/// A request body that notes when it has all arrived.
struct TrackedBody {
    inner: ProxyBody,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || (polled.is_ready() && self.inner.is_end_stream()) {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One request in flight to one server of an upstream.
struct InFlight {
    upstream: Arc<Upstream>,
    server: usize,
}

impl InFlight {
    fn new(upstream: Arc<Upstream>, server: usize) -> Self {
        upstream.servers[server].start_request();
        Self { upstream, server }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.servers[self.server].finish_request();
    }
}

/// Holds one of the upstream's request slots (for `max_requests`).
struct RequestSlot(Arc<Upstream>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Hears about every try of one request, in order: tracing gives each try a span of its own and
/// sends its trace context with it. Tries that are retried are siblings, each with its own start
/// and end.
pub trait TryWatcher: Send {
    /// Try number `attempt` (0 for the first) is about to go to `server`; headers may be added
    /// to `request`.
    fn starting(&mut self, server: &str, attempt: usize, request: &mut Request<ProxyBody>);
    /// The try that started last has ended.
    fn ended(&mut self, end: TryEnd<'_>);
}

/// How one try ended, for a [`TryWatcher`].
#[derive(Clone, Copy)]
pub enum TryEnd<'a> {
    /// The server answered with this status (a 5xx may still be retried).
    Answered(http::StatusCode),
    /// No response head came back.
    Failed {
        /// `timeout`, `connect`, `reset`, `client_body` or `overflow`.
        kind: &'static str,
        /// What went wrong.
        reason: &'a dyn std::fmt::Display,
    },
}

/// What is sent: the request head (its URI is completed per server), the body, and whether the
/// client's `Host` header goes upstream unchanged.
pub struct Outgoing {
    /// The head; `uri` is replaced by the server's.
    pub parts: http::request::Parts,
    /// The path and query to ask the server for.
    pub path_and_query: PathAndQuery,
    /// The body.
    pub body: ProxyBody,
    /// Keep the client's `Host`; otherwise send the server's address.
    pub preserve_host: bool,
    /// Told about each try, when the request is traced.
    pub watcher: Option<Box<dyn TryWatcher>>,
}

/// How a try's result reads to a [`TryWatcher`].
fn try_end<T>(result: &Result<Result<Response<T>, ClientError>, tokio::time::error::Elapsed>) -> TryEnd<'_> {
    match result {
        Ok(Ok(response)) => TryEnd::Answered(response.status()),
        Err(elapsed) => TryEnd::Failed { kind: "timeout", reason: elapsed },
        Ok(Err(error)) => {
            let kind = if caused_by_connection_limit(error) {
                "overflow"
            } else if body::caused_by_client_body(error) {
                "client_body"
            } else if error.is_connect() {
                "connect"
            } else {
                "reset"
            };
            TryEnd::Failed { kind, reason: error }
        }
    }
}

impl Upstream {
    /// Sends `outgoing` to a server of this upstream, retrying on another server by the retry
    /// policy, until `deadline`. Returns the response (its body keeps the request counted in
    /// flight) and the server that answered.
    pub async fn send(
        self: &Arc<Self>,
        outgoing: Outgoing,
        client_ip: IpAddr,
        deadline: Instant,
    ) -> Result<(Response<ServerBody>, String), SendError> {
        let slot = self.take_request_slot()?;
        self.retry_budget.deposit();
        let Outgoing { mut parts, path_and_query, body, preserve_host, mut watcher } = outgoing;
        // Only a request whose body is known to be empty can be sent again: a streamed body is
        // gone once the first try has read it.
        let replayable = body.is_end_stream();
        let max_tries = if replayable { (self.policy.retry.retries as usize + 1).min(self.servers.len()) } else { 1 };
        // Whether the client's body has all arrived: a timeout before it has is the client's.
        // A body known to be empty (most requests) needs no tracking.
        let (body, body_done) = if replayable {
            (body, None)
        } else {
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            (body::boxed(TrackedBody { inner: body, done: done.clone() }), Some(done))
        };
        let mut body = Some(body);
        // Servers tried so far; on the stack, as nearly every request makes one try.
        let mut tried_buffer = [0usize; MAX_TRIES];
        let mut tried_count = 0;
        // Balancers and sticky sessions read the request's own headers (hop-by-hop ones are gone,
        // cookies and the rest are as the client sent them).
        let sticky = self.sticky_server(&PickContext { client_ip, headers: &parts.headers });
        loop {
            let tried = &tried_buffer[..tried_count];
            let index = match sticky.filter(|index| !tried.contains(index)) {
                Some(index) => index,
                None => {
                    let context = PickContext { client_ip, headers: &parts.headers };
                    self.balancer.pick(&self.servers, &context, tried).expect("an untried server remains")
                }
            };
            tried_buffer[tried_count] = index;
            tried_count += 1;
            let server = &self.servers[index].server;
            let server_name = server.authority.to_string();
            let uri = Uri::builder()
                .scheme(self.scheme())
                .authority(server.authority.clone())
                .path_and_query(path_and_query.clone())
                .build()
                .map_err(|err| SendError::Failed { server: server_name.clone(), reason: err.to_string() })?;
            let mut request = Request::new(body.take().unwrap_or_else(body::empty));
            *request.method_mut() = parts.method.clone();
            *request.uri_mut() = uri;
            *request.version_mut() = parts.version;
            // The head is copied only while another try may need it.
            *request.headers_mut() =
                if tried_count < max_tries { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
            if !preserve_host && let Ok(host) = HeaderValue::try_from(server.authority.as_str()) {
                request.headers_mut().insert(HOST, host);
            }
            if let Some(watcher) = watcher.as_deref_mut() {
                watcher.starting(&server_name, tried_count - 1, &mut request);
            }

            let in_flight = InFlight::new(self.clone(), index);
            let now = Instant::now();
            let allowed = deadline.saturating_duration_since(now);
            let timeout = self.policy.retry.per_try_timeout.map_or(allowed, |per_try| per_try.min(allowed));
            let result = tokio::time::timeout(timeout, self.exchange(index, request)).await;
            if let Some(watcher) = watcher.as_deref_mut() {
                watcher.ended(try_end(&result));
            }
            if let Ok(Err(error)) = &result
                && caused_by_connection_limit(error)
            {
                self.metrics.overflowed(&self.name);
                return Err(SendError::Overflow { limit: self.policy.max_connections.unwrap_or_default() });
            }
            if result.is_err() && body_done.as_ref().is_some_and(|done| !done.load(Ordering::Acquire)) {
                return Err(SendError::ClientBodyTimeout { server: server_name, timeout_ms: timeout.as_millis() });
            }
            // A request whose own body broke off says nothing about the server: it is neither
            // counted by outlier detection nor retried.
            if let Ok(Err(error)) = &result
                && body::caused_by_client_body(error)
            {
                return Err(SendError::ClientBody { server: server_name, reason: error_chain(error) });
            }
            let failure = match &result {
                Err(_) => Some(TryFailure::Timeout),
                Ok(Err(error)) if error.is_connect() => Some(TryFailure::Connect),
                Ok(Err(_)) => Some(TryFailure::Reset),
                Ok(Ok(response)) if response.status().is_server_error() => Some(TryFailure::Status(response.status())),
                Ok(Ok(_)) => None,
            };
            if let Ok(Ok(_)) = &result {
                self.servers[index].record_latency(now.elapsed());
            }
            self.record_outcome(index, failure.is_some());

            let retry = failure.is_some_and(|failure| {
                tried_count < max_tries
                    && Instant::now() < deadline
                    && self.policy.retry.retries_after(failure, &parts.method)
            });
            if retry {
                if self.retry_budget.withdraw(Instant::now()) {
                    self.metrics.retried(&self.name);
                    tracing::debug!(upstream = %self.name, server = %server_name, ?failure, "retrying on another server");
                    continue;
                }
                self.metrics.retry_refused(&self.name);
            }
            return match result {
                Ok(Ok(mut response)) => {
                    if sticky != Some(index) {
                        self.set_sticky_cookie(&mut response, index);
                    }
                    let body = |inner| ServerBody { inner, _in_flight: in_flight, _slot: slot };
                    Ok((response.map(body), server_name))
                }
                Err(_) => Err(SendError::Timeout { server: server_name, timeout_ms: timeout.as_millis() }),
                Ok(Err(error)) if error.is_connect() => {
                    Err(SendError::Connect { server: server_name, reason: error_chain(&error) })
                }
                Ok(Err(error)) => Err(SendError::Failed { server: server_name, reason: error_chain(&error) }),
            };
        }
    }

    /// One try with server `index`: on Sluice's own HTTP/1.1 client where it carries the
    /// request, else on hyper's (protocol switches, TLS, connection limits).
    async fn exchange(&self, index: usize, request: Request<ProxyBody>) -> Result<Response<Answer>, ClientError> {
        let switches =
            request.method() == http::Method::CONNECT || request.headers().contains_key(http::header::UPGRADE);
        match &self.own_clients {
            Some(clients) if !switches => Ok(clients.get().send(index, request).await?.map(Answer::Own)),
            _ => Ok(self.client().request(request).await?.map(Answer::Hyper)),
        }
    }

    /// The server the client's sticky-session cookie names, while it is available.
    fn sticky_server(&self, context: &PickContext<'_>) -> Option<usize> {
        let name = self.policy.sticky_cookie.as_deref()?;
        let id = cookie(context.headers, name)?;
        let now = Instant::now();
        self.servers
            .iter()
            .position(|server| server.sticky_id == id && server.availability(now) == Availability::Available)
    }

    /// Tells the client which server to come back to.
    fn set_sticky_cookie<B>(&self, response: &mut Response<B>, index: usize) {
        let Some(name) = self.policy.sticky_cookie.as_deref() else {
            return;
        };
        let value = format!("{name}={}; Path=/; HttpOnly; SameSite=Lax", self.servers[index].sticky_id);
        if let Ok(value) = HeaderValue::try_from(value) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }

    fn take_request_slot(self: &Arc<Self>) -> Result<Option<RequestSlot>, SendError> {
        let Some(limit) = self.policy.max_requests else {
            return Ok(None);
        };
        let taken = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| (current < limit).then_some(current + 1));
        match taken {
            Ok(_) => Ok(Some(RequestSlot(self.clone()))),
            Err(_) => {
                self.metrics.overflowed(&self.name);
                Err(SendError::Overflow { limit })
            }
        }
    }

    /// Passive outlier detection: a failed try counts against the server, a good one clears its
    /// streak. Ejections are capped at the configured share of the upstream's servers.
    fn record_outcome(&self, index: usize, failed: bool) {
        let Some(policy) = &self.policy.outlier else {
            return;
        };
        let now = Instant::now();
        let may_eject = failed && {
            let ejected =
                self.servers.iter().filter(|server| server.availability(now) == Availability::Ejected).count();
            ejected == 0 || (ejected + 1) * 100 <= policy.max_ejected_percent as usize * self.servers.len()
        };
        if let Some(length) = self.servers[index].record_outcome(failed, policy, may_eject, now) {
            tracing::warn!(
                upstream = %self.name,
                server = %self.servers[index].server.authority,
                ejected_for_ms = length.as_millis() as u64,
                "server ejected after failing {} requests in a row",
                policy.consecutive_failures
            );
        }
    }
}

fn caused_by_connection_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<ConnectionLimitReached>() {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The error and its causes on one line: hyper's outer errors alone ("client error (Connect)")
/// say too little to act on.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
